//! Deposit intake over real HTTP on 127.0.0.1: the wallet's `POST /deposit` and
//! `GET /deposit/{txid}/{vout}`, every limit (body size, JSON, rate, connections, time), refusals
//! that store nothing, resubmission, and the relay to a second signer over real peer links, where
//! the receiver validates on its own node.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bitcoin::hashes::Hash as _;
use bitcoin::key::Secp256k1;
use bitcoin::opcodes::all::{OP_CHECKSIG, OP_CSV, OP_DROP};
use bitcoin::script::{Builder, PushBytesBuf};
use bitcoin::secp256k1::XOnlyPublicKey;
use bitcoin::taproot::TaprootBuilder;
use bitcoin::{
    absolute, transaction, Amount, Block, BlockHash, FeeRate, Network, OutPoint, ScriptBuf,
    Sequence, Transaction, TxIn, TxOut, Txid, Witness,
};
use common::*;
use sbtc_hsm_signer::api::{self, relay, ApiConfig, RunningApi};
use sbtc_hsm_signer::chain::bitcoin::client::{
    BitcoinClient, BlockHeaderInfo, BlockchainInfo, Error, ErrorKind, MempoolAcceptance,
    MempoolEntry, NetworkInfo, Result as ClientResult, TransactionInfo, TxOutInfo,
};
use sbtc_hsm_signer::chain::bitcoin::{BitcoinConfig, BitcoindRpc};
use sbtc_hsm_signer::coordination::PeerTransport;
use sbtc_hsm_signer::devnet::regtest::{RegtestNode, RegtestOptions, RpcAuth};
use sbtc_hsm_signer::keys::AggregateKey;
use sbtc_hsm_signer::peer::message::{self, Body, ChainTip};
use sbtc_hsm_signer::peer::PeerNode;
use sbtc_hsm_signer::signing::SignerSet as SigningSet;
use sbtc_hsm_signer::storage::{
    memory::MemoryStore, DbRead, DbWrite, DepositSubmissionRecord, DkgShares, DkgSharesStatus,
    SubmissionSource,
};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(30);

/// The BIP-341 NUMS point every deposit output's internal key is (CHAIN.md section 1).
const NUMS: &str = "50929b74c1a04954b78b4b6035e97a5e078a5a0f28ec96d547bfee9ace803ac0";

/// A Bitcoin node for intake to ask: the transactions put in its mempool, on regtest. It answers
/// as bitcoind does (`gettxout` with the mempool; -5 as None), or is down.
#[derive(Default)]
struct TestNode {
    mempool: Mutex<HashMap<Txid, Transaction>>,
    down: AtomicBool,
}

impl TestNode {
    fn add(&self, tx: &Transaction) {
        self.mempool
            .lock()
            .unwrap()
            .insert(tx.compute_txid(), tx.clone());
    }

    fn up(&self, method: &'static str) -> ClientResult<()> {
        if self.down.load(Ordering::Relaxed) {
            Err(Error::new(
                method,
                ErrorKind::Unreachable,
                "connection refused",
            ))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl BitcoinClient for TestNode {
    async fn get_best_block_hash(&self) -> ClientResult<BlockHash> {
        self.up("getbestblockhash")?;
        Ok(BlockHash::all_zeros())
    }
    async fn get_block_header(&self, _: &BlockHash) -> ClientResult<Option<BlockHeaderInfo>> {
        self.up("getblockheader")?;
        Ok(None)
    }
    async fn get_block(&self, _: &BlockHash) -> ClientResult<Option<Block>> {
        self.up("getblock")?;
        Ok(None)
    }
    async fn get_block_hash(&self, _: u64) -> ClientResult<Option<BlockHash>> {
        self.up("getblockhash")?;
        Ok(None)
    }
    async fn get_raw_transaction(
        &self,
        txid: &Txid,
        _: Option<&BlockHash>,
    ) -> ClientResult<Option<TransactionInfo>> {
        self.up("getrawtransaction")?;
        Ok(self
            .mempool
            .lock()
            .unwrap()
            .get(txid)
            .map(|tx| TransactionInfo {
                tx: tx.clone(),
                block_hash: None,
                confirmations: 0,
            }))
    }
    async fn get_tx_out(
        &self,
        outpoint: &OutPoint,
        mempool: bool,
    ) -> ClientResult<Option<TxOutInfo>> {
        self.up("gettxout")?;
        if !mempool {
            return Ok(None);
        }
        Ok(self
            .mempool
            .lock()
            .unwrap()
            .get(&outpoint.txid)
            .and_then(|tx| tx.output.get(outpoint.vout as usize))
            .map(|out| TxOutInfo {
                best_block: BlockHash::all_zeros(),
                confirmations: 0,
                value: out.value,
                script_pubkey: out.script_pubkey.clone(),
                coinbase: false,
            }))
    }
    async fn estimate_smart_fee(&self, _: u16) -> ClientResult<Option<FeeRate>> {
        self.up("estimatesmartfee")?;
        Ok(None)
    }
    async fn get_tx_spending_prevout(&self, _: &OutPoint) -> ClientResult<Option<Txid>> {
        self.up("gettxspendingprevout")?;
        Ok(None)
    }
    async fn get_mempool_entry(&self, _: &Txid) -> ClientResult<Option<MempoolEntry>> {
        self.up("getmempoolentry")?;
        Ok(None)
    }
    async fn get_mempool_descendants(&self, _: &Txid) -> ClientResult<Vec<Txid>> {
        self.up("getmempooldescendants")?;
        Ok(vec![])
    }
    async fn send_raw_transaction(&self, tx: &Transaction) -> ClientResult<Txid> {
        self.up("sendrawtransaction")?;
        self.add(tx);
        Ok(tx.compute_txid())
    }
    async fn test_mempool_accept(&self, _: &[Transaction]) -> ClientResult<Vec<MempoolAcceptance>> {
        self.up("testmempoolaccept")?;
        Ok(vec![])
    }
    async fn get_blockchain_info(&self) -> ClientResult<BlockchainInfo> {
        self.up("getblockchaininfo")?;
        Ok(BlockchainInfo {
            network: Network::Regtest,
            blocks: 101,
            best_block_hash: BlockHash::all_zeros(),
            initial_block_download: false,
            pruned: false,
        })
    }
    async fn get_network_info(&self) -> ClientResult<NetworkInfo> {
        self.up("getnetworkinfo")?;
        Err(Error::new(
            "getnetworkinfo",
            ErrorKind::BadResponse,
            "not served",
        ))
    }
}

/// A deposit as the wallet library builds it (CHAIN.md section 1): the deposit leaf for a
/// standard testnet principal, the reclaim leaf `<lock> OP_CSV OP_DROP <key> OP_CHECKSIG`, and a
/// transaction whose output 0 is P2TR(NUMS, both leaves).
struct TestDeposit {
    tx: Transaction,
    deposit_script: ScriptBuf,
    reclaim_script: ScriptBuf,
}

fn xonly(seed: u8) -> XOnlyPublicKey {
    let sk = bitcoin::secp256k1::SecretKey::from_slice(&[seed; 32]).unwrap();
    sk.x_only_public_key(bitcoin::secp256k1::SECP256K1).0
}

fn deposit(signers: XOnlyPublicKey, amount: u64, nonce: u8) -> TestDeposit {
    let mut data = Vec::new();
    data.extend_from_slice(&20_000u64.to_be_bytes());
    data.extend_from_slice(&[0x05, 26]);
    data.extend_from_slice(&[nonce; 20]);
    let deposit_script = Builder::new()
        .push_slice(PushBytesBuf::try_from(data).unwrap())
        .push_opcode(OP_DROP)
        .push_x_only_key(&signers)
        .push_opcode(OP_CHECKSIG)
        .into_script();
    let reclaim_script = Builder::new()
        .push_int(144)
        .push_opcode(OP_CSV)
        .push_opcode(OP_DROP)
        .push_x_only_key(&xonly(77))
        .push_opcode(OP_CHECKSIG)
        .into_script();
    let nums: XOnlyPublicKey = NUMS.parse().unwrap();
    let secp = Secp256k1::verification_only();
    let tree = TaprootBuilder::new()
        .add_leaf(1, deposit_script.clone())
        .unwrap()
        .add_leaf(1, reclaim_script.clone())
        .unwrap()
        .finalize(&secp, nums)
        .unwrap();
    let tx = Transaction {
        version: transaction::Version::TWO,
        lock_time: absolute::LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint {
                txid: Txid::from_byte_array([nonce; 32]),
                vout: 0,
            },
            script_sig: ScriptBuf::new(),
            sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
            witness: Witness::from_slice(&[[1u8; 64]]),
        }],
        output: vec![TxOut {
            value: Amount::from_sat(amount),
            script_pubkey: ScriptBuf::new_p2tr_tweaked(tree.output_key()),
        }],
    };
    TestDeposit {
        tx,
        deposit_script,
        reclaim_script,
    }
}

fn body(d: &TestDeposit) -> Value {
    json!({
        "bitcoinTxid": d.tx.compute_txid().to_string(),
        "bitcoinTxOutputIndex": 0,
        "depositScript": d.deposit_script.to_hex_string(),
        "reclaimScript": d.reclaim_script.to_hex_string(),
        "transactionHex": bitcoin::consensus::encode::serialize_hex(&d.tx),
    })
}

fn outpoint(d: &TestDeposit) -> OutPoint {
    OutPoint {
        txid: d.tx.compute_txid(),
        vout: 0,
    }
}

/// A store holding one DKG whose aggregate key is `key`'s (x-only `signers`).
async fn store_with_key(seed: u8) -> (Arc<MemoryStore>, XOnlyPublicKey) {
    let sk = bitcoin::secp256k1::SecretKey::from_slice(&[seed; 32]).unwrap();
    let pk = sk.public_key(bitcoin::secp256k1::SECP256K1);
    let store = Arc::new(MemoryStore::new());
    store
        .write_dkg_shares(&DkgShares {
            aggregate_key: AggregateKey::new(pk),
            dkg_id: sbtc_hsm_signer::signing::DkgId(1),
            signer_index: 0,
            sealed_private_shares: sbtc_custody::SealedBlob::from_bytes(vec![1, 2, 3]),
            public_shares: vec![],
            signer_set: vec![pk],
            threshold: 1,
            status: DkgSharesStatus::Verified,
            started_at_block_hash: BlockHash::all_zeros(),
            started_at_block_height: 1,
        })
        .await
        .unwrap();
    (store, pk.x_only_public_key().0)
}

fn config() -> ApiConfig {
    ApiConfig::new(loopback())
}

async fn start(
    config: &ApiConfig,
    node: Arc<TestNode>,
    store: Arc<MemoryStore>,
    peers: Option<Arc<PeerNode>>,
) -> RunningApi {
    api::start(config, node, Network::Regtest, store, peers)
        .await
        .unwrap()
}

fn url(api: &RunningApi, path: &str) -> String {
    format!("http://{}{}", api.server.local_addr(), path)
}

async fn post_json(api: &RunningApi, body: &Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(url(api, "/deposit"))
        .header("Content-Type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

async fn get(api: &RunningApi, path: &str) -> (u16, Value) {
    let r = reqwest::get(url(api, path)).await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

fn error_of(v: &Value) -> (&str, &str) {
    (
        v["error"]["rule"].as_str().unwrap_or_default(),
        v["error"]["message"].as_str().unwrap_or_default(),
    )
}

#[tokio::test]
async fn a_body_over_the_limit_gets_413_and_a_json_error() {
    let (store, _) = store_with_key(9).await;
    let mut cfg = config();
    cfg.max_body_bytes = 1024;
    let api = start(&cfg, Arc::new(TestNode::default()), store, None).await;
    let big = json!({ "transactionHex": "00".repeat(4096) });
    let (status, v) = post_json(&api, &big).await;
    assert_eq!(status, 413, "{v}");
    assert_eq!(error_of(&v).0, "body_too_large");
    assert!(error_of(&v).1.contains("max_body_bytes"), "{v}");
    api.shutdown().await;
}

#[tokio::test]
async fn malformed_bodies_get_400_naming_the_field_and_non_json_gets_415() {
    let (store, key) = store_with_key(9).await;
    let api = start(&config(), Arc::new(TestNode::default()), store, None).await;
    let good = body(&deposit(key, 100_000, 1));

    let r = reqwest::Client::new()
        .post(url(&api, "/deposit"))
        .header("Content-Type", "application/json")
        .body("{\"bitcoinTxid\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(error_of(&v).0, "malformed_json", "{v}");

    for (field, value) in [
        ("bitcoinTxid", json!("not-a-txid")),
        ("bitcoinTxOutputIndex", json!("zero")),
        ("bitcoinTxOutputIndex", json!(-1)),
        ("depositScript", json!("zz")),
        ("reclaimScript", json!(42)),
        ("transactionHex", json!("00ff")),
    ] {
        let mut b = good.clone();
        b[field] = value.clone();
        let (status, v) = post_json(&api, &b).await;
        assert_eq!(status, 400, "{field} = {value}: {v}");
        assert_eq!(v["error"]["field"], field, "{v}");
        assert!(error_of(&v).1.contains(field), "{v}");
    }
    let mut b = good.clone();
    b.as_object_mut().unwrap().remove("reclaimScript");
    let (status, v) = post_json(&api, &b).await;
    assert_eq!((status, error_of(&v).0), (400, "missing_field"), "{v}");
    assert_eq!(v["error"]["field"], "reclaimScript");

    // The txid must be the transaction's.
    let mut b = good.clone();
    b["bitcoinTxid"] = json!(Txid::from_byte_array([7; 32]).to_string());
    let (status, v) = post_json(&api, &b).await;
    assert_eq!(
        (status, v["error"]["field"].as_str()),
        (400, Some("bitcoinTxid")),
        "{v}"
    );

    let r = reqwest::Client::new()
        .post(url(&api, "/deposit"))
        .header("Content-Type", "text/plain")
        .body(good.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 415);
    let v: Value = r.json().await.unwrap();
    assert_eq!(error_of(&v).0, "not_json");
    assert_eq!(api.intake.counts().stored, 0);
    api.shutdown().await;
}

#[tokio::test]
async fn a_client_over_its_rate_gets_429_with_retry_after() {
    let (store, _) = store_with_key(9).await;
    let mut cfg = config();
    cfg.rate_per_minute = 1;
    cfg.rate_burst = 3;
    let api = start(&cfg, Arc::new(TestNode::default()), store, None).await;
    for _ in 0..3 {
        assert_eq!(get(&api, "/health").await.0, 200);
    }
    let r = reqwest::get(url(&api, "/health")).await.unwrap();
    assert_eq!(r.status().as_u16(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    let v: Value = r.json().await.unwrap();
    assert_eq!(error_of(&v).0, "rate_limited");
    // The deposit endpoints share the client's bucket.
    let (status, _) = get(&api, &format!("/deposit/{}/0", Txid::all_zeros())).await;
    assert_eq!(status, 429);
    api.shutdown().await;
}

#[tokio::test]
async fn unknown_deposits_get_404_and_bad_paths_400() {
    let (store, _) = store_with_key(9).await;
    let api = start(&config(), Arc::new(TestNode::default()), store, None).await;
    let (status, v) = get(
        &api,
        &format!("/deposit/{}/3", Txid::from_byte_array([5; 32])),
    )
    .await;
    assert_eq!((status, error_of(&v).0), (404, "unknown_deposit"), "{v}");
    let (status, v) = get(&api, "/deposit/abc/0").await;
    assert_eq!(
        (status, v["error"]["field"].as_str()),
        (400, Some("txid")),
        "{v}"
    );
    let (status, v) = get(&api, "/nothing-here").await;
    assert_eq!((status, error_of(&v).0), (404, "not_found"), "{v}");
    api.shutdown().await;
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_for_a_free_slot() {
    let (store, _) = store_with_key(9).await;
    let mut cfg = config();
    cfg.max_connections = 1;
    let api = start(&cfg, Arc::new(TestNode::default()), store, None).await;
    // An idle connection holds the one slot.
    let idle = TcpStream::connect(api.server.local_addr()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let health = url(&api, "/health");
    let waiting = tokio::spawn(async move { reqwest::get(health).await.map(|r| r.status()) });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !waiting.is_finished(),
        "a second connection was served beside the first"
    );
    drop(idle);
    let status = tokio::time::timeout(WAIT, waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(status.as_u16(), 200);
    api.shutdown().await;
}

#[tokio::test]
async fn a_request_that_stalls_gets_408() {
    let (store, _) = store_with_key(9).await;
    let mut cfg = config();
    cfg.request_timeout_secs = 1;
    let api = start(&cfg, Arc::new(TestNode::default()), store, None).await;
    let mut s = TcpStream::connect(api.server.local_addr()).await.unwrap();
    // Headers promise 100 bytes; 10 come, then nothing.
    s.write_all(
        b"POST /deposit HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"bitcoin",
    )
    .await
    .unwrap();
    let mut answer = vec![0u8; 1024];
    let n = tokio::time::timeout(WAIT, s.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&answer[..n]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"timeout\""), "{text}");
    api.shutdown().await;
}

#[tokio::test]
async fn a_refused_deposit_gets_422_with_its_rule_and_nothing_is_stored() {
    // The store knows one DKG key; the deposit locks to another.
    let (store, _) = store_with_key(9).await;
    let node = Arc::new(TestNode::default());
    let d = deposit(xonly(10), 100_000, 2);
    node.add(&d.tx);
    let api = start(&config(), node, store.clone(), None).await;
    let (status, v) = post_json(&api, &body(&d)).await;
    assert_eq!(status, 422, "{v}");
    let (rule, message) = error_of(&v);
    assert_eq!(rule, "unknown_signers_key", "{v}");
    assert!(!message.is_empty(), "{v}");
    assert!(store
        .get_deposit_submission(&outpoint(&d))
        .await
        .unwrap()
        .is_none());
    assert_eq!(api.intake.counts().stored, 0);
    // The status says why, from memory.
    let (status, g) = get(&api, &format!("/deposit/{}/0", d.tx.compute_txid())).await;
    assert_eq!(status, 200, "{g}");
    assert_eq!(g["status"], "failed");
    assert_eq!(g["reason"]["rule"], rule);
    api.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_node_gets_503_and_nothing_is_stored() {
    let (store, key) = store_with_key(9).await;
    let node = Arc::new(TestNode::default());
    let d = deposit(key, 100_000, 3);
    node.add(&d.tx);
    node.down.store(true, Ordering::Relaxed);
    let api = start(&config(), node, store.clone(), None).await;
    let r = reqwest::Client::new()
        .post(url(&api, "/deposit"))
        .header("Content-Type", "application/json")
        .body(body(&d).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert!(r.headers().contains_key("retry-after"));
    assert!(store
        .get_deposit_submission(&outpoint(&d))
        .await
        .unwrap()
        .is_none());
    api.shutdown().await;
}

#[tokio::test]
async fn an_accepted_deposit_is_stored_once_and_a_resubmission_is_idempotent() {
    let (store, key) = store_with_key(9).await;
    let node = Arc::new(TestNode::default());
    let d = deposit(key, 150_000, 4);
    node.add(&d.tx);
    let api = start(&config(), node, store.clone(), None).await;
    let (status, v) = post_json(&api, &body(&d)).await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["status"], "pending");
    assert_eq!(v["amount"], 150_000);
    assert_eq!(v["parameters"]["maxFee"], 20_000);
    assert_eq!(v["parameters"]["lockTime"], 144);
    assert_eq!(v["bitcoinTxid"], d.tx.compute_txid().to_string());
    let (status, again) = post_json(&api, &body(&d)).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again, v);
    let stored = store
        .get_deposit_submission(&outpoint(&d))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.source, SubmissionSource::Wallet);
    assert_eq!(api.intake.counts().stored, 1);
    let (status, g) = get(&api, &format!("/deposit/{}/0", d.tx.compute_txid())).await;
    assert_eq!((status, &g["status"]), (200, &json!("pending")));
    api.shutdown().await;
}

/// Two signers on real peer links; the second reads its links through a `PeerTransport` with
/// the intake's deposit sink, as the node does.
async fn two_signers(
    dir: &std::path::Path,
) -> (
    Vec<Arc<PeerNode>>,
    tokio::task::JoinHandle<()>,
    relay::PeerDeposits,
    relay::DepositSink,
) {
    let custodies = vec![keystore(dir, "a").await, keystore(dir, "b").await];
    let nodes = mesh(&custodies, test_limits()).await;
    wait_full_mesh(&nodes, WAIT).await;
    let nodes: Vec<Arc<PeerNode>> = nodes.into_iter().map(Arc::new).collect();
    let set = Arc::new(SigningSet::from_keys(nodes.iter().map(|n| n.identity()), 2).unwrap());
    let (sink, deposits) = relay::channel(relay::DEFAULT_QUEUE);
    let mut transport = PeerTransport::new(nodes[1].clone(), set, BlockHash::all_zeros(), 1)
        .unwrap()
        .with_deposit_sink(sink.clone());
    // Reads the links like the rounds would; deposits go to the sink on the way.
    let reader = tokio::spawn(async move { while transport.recv_any().await.is_some() {} });
    (nodes, reader, deposits, sink)
}

fn tip() -> ChainTip {
    ChainTip {
        height: 1,
        block_hash: bytes::Bytes::from_static(&[0u8; 32]),
    }
}

fn record(d: &TestDeposit) -> DepositSubmissionRecord {
    DepositSubmissionRecord {
        outpoint: outpoint(d),
        deposit_script: d.deposit_script.clone(),
        reclaim_script: d.reclaim_script.clone(),
        transaction: d.tx.clone(),
        source: SubmissionSource::Wallet,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_deposit_the_receivers_node_does_not_know_is_refused_counted_and_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let (nodes, reader, deposits, _sink) = two_signers(dir.path()).await;
    let (store_b, key) = store_with_key(9).await;
    let node_b = Arc::new(TestNode::default());
    let stats = deposits.stats();
    let intake_b = Arc::new(api::Intake::new(
        node_b,
        Network::Regtest,
        store_b.clone(),
        None,
    ));
    let stop = tokio_util::sync::CancellationToken::new();
    let consumer = tokio::spawn(deposits.run(intake_b.clone(), 600, stop.clone()));

    // A announces a deposit B's node has never seen.
    let d = deposit(key, 100_000, 5);
    assert_eq!(
        nodes[0]
            .broadcast(&relay::envelope(tip(), &record(&d)))
            .unwrap(),
        1
    );
    // And one whose transaction is not the announced txid.
    let mut bad = relay::envelope(tip(), &record(&deposit(key, 100_000, 6)));
    if let Some(Body::Deposit(a)) = &mut bad.body {
        a.txid = bytes::Bytes::copy_from_slice(&[1u8; 32]);
    }
    nodes[0].broadcast(&bad).unwrap();
    eventually("B handles both announcements", WAIT, || {
        stats.get(&stats.received) == 2
    })
    .await;
    assert_eq!(
        stats.refused().into_iter().collect::<Vec<_>>(),
        vec![("output_missing_or_spent", 1)]
    );
    assert_eq!(stats.get(&stats.malformed), 1);
    assert_eq!(stats.get(&stats.stored), 0);
    assert!(store_b
        .get_deposit_submission(&outpoint(&d))
        .await
        .unwrap()
        .is_none());
    stop.cancel();
    consumer.await.unwrap();
    reader.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_over_its_relay_rate_is_dropped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (nodes, reader, deposits, _sink) = two_signers(dir.path()).await;
    let (store_b, key) = store_with_key(9).await;
    let stats = deposits.stats();
    let intake_b = Arc::new(api::Intake::new(
        Arc::new(TestNode::default()),
        Network::Regtest,
        store_b,
        None,
    ));
    let stop = tokio_util::sync::CancellationToken::new();
    // 2 a minute, burst 4: of 10 announcements at once, 6 are dropped.
    let consumer = tokio::spawn(deposits.run(intake_b, 2, stop.clone()));
    for i in 0..10u8 {
        let env = relay::envelope(tip(), &record(&deposit(key, 100_000, 100 + i)));
        let bytes = message::encode(&env);
        assert!(nodes[0]
            .send_encoded(&nodes[1].identity(), bytes)
            .await
            .unwrap());
    }
    eventually("B handles all ten", WAIT, || {
        stats.get(&stats.received) == 10
    })
    .await;
    assert_eq!(stats.get(&stats.rate_limited), 6);
    stop.cancel();
    consumer.await.unwrap();
    reader.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wallet_deposit_reaches_the_second_signer_which_validates_it_on_its_own_node() {
    let dir = tempfile::tempdir().unwrap();
    let (nodes, reader, deposits, _sink) = two_signers(dir.path()).await;
    let (store_a, key) = store_with_key(9).await;
    let (store_b, _) = store_with_key(9).await;
    let (node_a, node_b) = (Arc::new(TestNode::default()), Arc::new(TestNode::default()));
    let d = deposit(key, 120_000, 7);
    node_a.add(&d.tx);
    node_b.add(&d.tx);
    let a = start(&config(), node_a, store_a, Some(nodes[0].clone())).await;
    let stats = deposits.stats();
    // B can relay too: it must not pass on what it got from a peer.
    let relay_b = api::Relay::new(nodes[1].clone(), node_b.clone());
    let intake_b = Arc::new(api::Intake::new(
        node_b,
        Network::Regtest,
        store_b.clone(),
        Some(relay_b),
    ));
    let stop = tokio_util::sync::CancellationToken::new();
    let consumer = tokio::spawn(deposits.run(intake_b.clone(), 600, stop.clone()));

    let (status, v) = post_json(&a, &body(&d)).await;
    assert_eq!(status, 201, "{v}");
    eventually("B stores the relayed deposit", WAIT, || {
        stats.get(&stats.stored) == 1
    })
    .await;
    let held = store_b
        .get_deposit_submission(&outpoint(&d))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(held.source, SubmissionSource::Peer(nodes[0].identity()));
    assert_eq!(held.transaction, d.tx);
    // A resubmission to A is not relayed again, and B never relays what it got from a peer.
    assert_eq!(post_json(&a, &body(&d)).await.0, 200);
    assert_eq!(a.intake.counts().relayed, 1);
    assert_eq!(intake_b.counts().relayed, 0);
    assert_eq!(intake_b.counts().stored, 1);
    stop.cancel();
    consumer.await.unwrap();
    reader.abort();
    a.shutdown().await;
}

/// A fake Emily on 127.0.0.1: two pages of pending deposits, linked by `nextToken`; it records
/// the query strings it was asked.
type EmilyState = (Arc<Vec<Value>>, Arc<Mutex<Vec<String>>>);

async fn fake_emily(pages: Vec<Value>) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    use axum::extract::{RawQuery, State};
    let asked = Arc::new(Mutex::new(Vec::new()));
    let state = (Arc::new(pages), asked.clone());
    let app = axum::Router::new()
        .route(
            "/deposit",
            axum::routing::get(
                |State((pages, asked)): State<EmilyState>, RawQuery(q): RawQuery| async move {
                    let q = q.unwrap_or_default();
                    asked.lock().unwrap().push(q.clone());
                    let page = if q.contains("nextToken=page2") { 1 } else { 0 };
                    (
                        [("content-type", "application/json")],
                        pages[page].to_string(),
                    )
                },
            ),
        )
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(loopback()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, asked)
}

fn emily_info(d: &TestDeposit) -> Value {
    json!({
        "bitcoinTxid": d.tx.compute_txid().to_string(),
        "bitcoinTxOutputIndex": 0,
        "recipient": "ST000000000000000000002AMW42H",
        "amount": d.tx.output[0].value.to_sat(),
        "lastUpdateHeight": 10,
        "lastUpdateBlockHash": "00".repeat(32),
        "status": "pending",
        "reclaimScript": d.reclaim_script.to_hex_string(),
        "depositScript": d.deposit_script.to_hex_string(),
    })
}

#[tokio::test]
async fn the_emily_poller_follows_pages_and_feeds_deposits_through_intake() {
    let (store, key) = store_with_key(9).await;
    let node = Arc::new(TestNode::default());
    let known = deposit(key, 110_000, 20);
    let unknown = deposit(key, 110_000, 21);
    node.add(&known.tx);
    let mut malformed = emily_info(&deposit(key, 1, 22));
    malformed["depositScript"] = json!("not hex");
    let (addr, asked) = fake_emily(vec![
        json!({ "nextToken": "page2", "deposits": [emily_info(&known), malformed] }),
        json!({ "deposits": [emily_info(&unknown)] }),
    ])
    .await;
    let intake = api::Intake::new(node, Network::Regtest, store.clone(), None);
    let emily = api::emily::EmilyClient::new(&format!("http://{addr}")).unwrap();
    emily.poll_once(&intake).await.unwrap();

    let asked = asked.lock().unwrap().clone();
    assert_eq!(asked.len(), 2, "{asked:?}");
    assert!(
        asked.iter().all(|q| q.contains("status=pending")),
        "{asked:?}"
    );
    assert!(asked[1].contains("nextToken=page2"), "{asked:?}");
    let s = emily.stats();
    let n = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    assert_eq!(n(&s.listed), 3);
    assert_eq!(n(&s.malformed), 1);
    // The node lacks the transaction: nothing reaches validation, nothing is stored.
    assert_eq!(n(&s.transaction_unknown), 1);
    assert!(store
        .get_deposit_submission(&outpoint(&unknown))
        .await
        .unwrap()
        .is_none());
    assert!(intake.recent_refusal(&outpoint(&unknown)).is_none());
    // The one the node has went through validation: stored, or refused with a reason.
    let c = intake.counts();
    assert_eq!(c.stored + c.refused, 1, "{c:?}");
    assert_eq!(n(&s.stored) + n(&s.refused), 1);
    let stored = store
        .get_deposit_submission(&outpoint(&known))
        .await
        .unwrap();
    assert_eq!(
        stored.is_some(),
        intake.recent_refusal(&outpoint(&known)).is_none()
    );
}

#[tokio::test]
async fn an_emily_that_answers_garbage_is_an_error_not_a_crash() {
    let (store, _) = store_with_key(9).await;
    let (addr, _) = fake_emily(vec![json!({ "unexpected": true }), json!({})]).await;
    let intake = api::Intake::new(Arc::new(TestNode::default()), Network::Regtest, store, None);
    let emily = api::emily::EmilyClient::new(&format!("http://{addr}")).unwrap();
    let e = emily.poll_once(&intake).await.unwrap_err();
    assert!(e.to_string().contains("not a deposit list"), "{e}");
    // Nothing listens here any more.
    let gone = tokio::net::TcpListener::bind(loopback()).await.unwrap();
    let dead = format!("http://{}", gone.local_addr().unwrap());
    drop(gone);
    let emily = api::emily::EmilyClient::new(&dead).unwrap();
    assert!(emily.poll_once(&intake).await.is_err());
}

/// Runs tests/npm/deposit.mjs (the official `sbtc` wallet library) with `input` on stdin.
async fn wallet_library(input: Value) -> Value {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    assert!(
        root.join("node_modules/sbtc/package.json").exists(),
        "the sbtc npm library is not installed: run `npm ci` at the repo root (scripts/test.sh does)"
    );
    let out = tokio::task::spawn_blocking(move || {
        use std::io::Write as _;
        let mut child = std::process::Command::new("node")
            .arg(root.join("tests/npm/deposit.mjs"))
            .current_dir(root)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("node runs (Node.js 18 or later)");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.to_string().as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "deposit.mjs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The key that funds the library's deposits, and its P2WPKH script.
fn funding_key() -> (bitcoin::secp256k1::SecretKey, ScriptBuf) {
    let sk = bitcoin::secp256k1::SecretKey::from_slice(&[1u8; 32]).unwrap();
    let pk = bitcoin::CompressedPublicKey(sk.public_key(bitcoin::secp256k1::SECP256K1));
    (sk, ScriptBuf::new_p2wpkh(&pk.wpubkey_hash()))
}

/// What the wallet library needs to build, fund and sign a deposit to `signers`, spending
/// `funding` (an output paying [`funding_key`]).
fn wallet_input(
    signers: &XOnlyPublicKey,
    amount: u64,
    max_fee: u64,
    lock_time: u32,
    recipient: &str,
    funding: (OutPoint, Amount),
) -> Value {
    let (sk, script) = funding_key();
    json!({
        "network": "regtest",
        "amount": amount,
        "maxFee": max_fee,
        "lockTime": lock_time,
        "recipient": recipient,
        "signersKey": signers.to_string(),
        "reclaimKey": xonly(77).to_string(),
        "funding": {
            "txid": funding.0.txid.to_string(),
            "vout": funding.0.vout,
            "value": funding.1.to_sat(),
            "scriptPubKey": script.to_hex_string(),
        },
        "privateKey": hex::encode(sk.secret_bytes()),
        "fee": 2_000,
    })
}

const STANDARD: &str = "ST1PQHQKV0RJXZFY1DGX8MNSNYVE3VGZJSRTPGZGM";
const CONTRACT: &str = "ST1PQHQKV0RJXZFY1DGX8MNSNYVE3VGZJSRTPGZGM.sbtc-receiver";

/// The library's own request and answer handling: what `notifySbtc` POSTs parses here field by
/// field (it reaches the deposit rules, not a 400), and what it gets back is JSON it returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wallet_librarys_notify_request_parses_and_its_answer_is_json() {
    let (store, key) = store_with_key(9).await;
    let node = Arc::new(TestNode::default());
    let api = start(&config(), node.clone(), store, None).await;
    let funding = (
        OutPoint {
            txid: Txid::from_byte_array([0x42; 32]),
            vout: 1,
        },
        Amount::from_sat(150_000),
    );
    let mut input = wallet_input(&key, 100_000, 20_000, 144, STANDARD, funding);
    input["apiUrl"] = json!(format!("http://{}", api.server.local_addr()));
    let out = wallet_library(input).await;
    let notified = &out["notified"];
    // The node never saw it: refused by the first node rule, so every field parsed.
    assert_eq!(
        notified["error"]["rule"], "output_missing_or_spent",
        "{out}"
    );
    api.shutdown().await;
}

/// The devnet's regtest node (Bitcoin Core's script verifier on every transaction) and the
/// signer's own RPC client to it, with a mature wallet.
async fn regtest(dir: &std::path::Path) -> (RegtestNode, Arc<BitcoindRpc>) {
    let cookie = dir.join("regtest.cookie");
    let node = RegtestNode::start(RegtestOptions {
        auth: RpcAuth {
            user_password: None,
            cookie_file: Some(cookie.clone()),
        },
        ..RegtestOptions::default()
    })
    .await
    .unwrap();
    // Ten mature coinbases: one for each payment the test makes.
    node.mine(110);
    let config: BitcoinConfig = toml::from_str(&format!(
        "network = \"regtest\"\nrpc_url = \"{}\"\nrpc_cookie_file = \"{}\"",
        node.rpc_url(),
        cookie.display()
    ))
    .unwrap();
    (node, Arc::new(BitcoindRpc::new(&config).unwrap()))
}

/// Pays `amount` from the node wallet to [`funding_key`]; returns the output.
async fn fund(node: &RegtestNode, rpc: &BitcoindRpc, amount: Amount) -> (OutPoint, Amount) {
    let script = funding_key().1;
    let address = bitcoin::Address::from_script(&script, Network::Regtest).unwrap();
    let txid = node.send_to_address(&address, amount).unwrap();
    let tx = rpc
        .get_raw_transaction(&txid, None)
        .await
        .unwrap()
        .unwrap()
        .tx;
    let vout = tx
        .output
        .iter()
        .position(|o| o.script_pubkey == script)
        .unwrap();
    (
        OutPoint {
            txid,
            vout: vout as u32,
        },
        amount,
    )
}

/// Deposits the library builds (several amounts, max fees, lock times, both kinds of
/// recipient), signed by it and accepted by the regtest node, are accepted through
/// `POST /deposit` by the library's own `notifySbtc`, in the mempool and confirmed; ones it
/// announces wrongly are refused with the rule that caught them, and nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deposits_built_by_the_wallet_library_are_accepted_and_malformed_ones_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (node, rpc) = regtest(dir.path()).await;
    let (store, key) = store_with_key(9).await;
    let cfg = config();
    let api = api::start(&cfg, rpc.clone(), Network::Regtest, store.clone(), None)
        .await
        .unwrap();
    let api_url = json!(format!("http://{}", api.server.local_addr()));
    let cases = [
        (10_000u64, 1_000u64, 6u32, STANDARD),
        (100_000, 80_000, 950, CONTRACT),
        (2_500_000, 20_000, 16, STANDARD),
        (1_000_000, 5_000, 17, CONTRACT),
        (50_000, 50_000, 65_535, STANDARD),
    ];
    for (i, (amount, max_fee, lock_time, recipient)) in cases.into_iter().enumerate() {
        let funding = fund(&node, &rpc, Amount::from_sat(amount + 10_000)).await;
        let input = wallet_input(&key, amount, max_fee, lock_time, recipient, funding);
        let built = wallet_library(input.clone()).await;
        let tx: Transaction =
            bitcoin::consensus::encode::deserialize_hex(built["transactionHex"].as_str().unwrap())
                .unwrap();
        // The node checks the library's signature with Bitcoin Core's verifier.
        rpc.send_raw_transaction(&tx).await.unwrap();
        let confirmed = i % 2 == 1;
        if confirmed {
            node.mine(1);
        }
        let mut notify = input;
        notify["apiUrl"] = api_url.clone();
        let out = wallet_library(notify).await;
        assert_eq!(
            out["txid"], built["txid"],
            "the library signs deterministically"
        );
        let n = &out["notified"];
        let case = format!("{amount} {max_fee} {lock_time} {recipient}");
        assert_eq!(n["status"], "pending", "{case}: {n}");
        assert_eq!(n["amount"], amount, "{case}");
        assert_eq!(n["parameters"]["maxFee"], max_fee, "{case}");
        assert_eq!(n["parameters"]["lockTime"], lock_time, "{case}");
        assert_eq!(n["recipient"], recipient, "{case}");
        assert_eq!(
            n["statusMessage"].as_str().unwrap().contains("mempool"),
            !confirmed,
            "{case}: {n}"
        );
        let op = OutPoint {
            txid: tx.compute_txid(),
            vout: 0,
        };
        let stored = store.get_deposit_submission(&op).await.unwrap().unwrap();
        assert_eq!(stored.transaction, tx);
    }
    // Announced wrongly: the deposit script of another deposit, a reclaim script that is not
    // the output's, the change output instead of the deposit.
    let funding = fund(&node, &rpc, Amount::from_sat(300_000)).await;
    let input = wallet_input(&key, 200_000, 10_000, 144, STANDARD, funding);
    let built = wallet_library(input.clone()).await;
    let other = wallet_library(wallet_input(&key, 200_000, 9_999, 144, STANDARD, funding)).await;
    let tx: Transaction =
        bitcoin::consensus::encode::deserialize_hex(built["transactionHex"].as_str().unwrap())
            .unwrap();
    rpc.send_raw_transaction(&tx).await.unwrap();
    for (o, expected) in [
        (
            json!({ "depositScript": other["depositScript"] }),
            "output_mismatch",
        ),
        (json!({ "reclaimScript": "51" }), "reclaim_script_shape"),
        (json!({ "vout": 1 }), "output_mismatch"),
    ] {
        let mut bad = input.clone();
        bad["apiUrl"] = api_url.clone();
        bad["override"] = o.clone();
        let out = wallet_library(bad).await;
        assert_eq!(
            out["notified"]["error"]["rule"], expected,
            "{o}: {}",
            out["notified"]
        );
        let op = OutPoint {
            txid: tx.compute_txid(),
            vout: o["vout"].as_u64().unwrap_or(0) as u32,
        };
        assert!(store.get_deposit_submission(&op).await.unwrap().is_none());
        let (status, g) = get(&api, &format!("/deposit/{}/{}", op.txid, op.vout)).await;
        assert_eq!(
            (status, &g["reason"]["rule"]),
            (200, &json!(expected)),
            "{g}"
        );
    }
    assert_eq!(api.intake.counts().stored, cases.len() as u64);
    api.shutdown().await;
}
