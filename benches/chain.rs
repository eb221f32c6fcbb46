//! Chain benchmark, against the devnet's regtest node (in-process, on 127.0.0.1) through the
//! signer's own JSON-RPC client, each figure next to the floor of the same work served from
//! memory (no HTTP, no JSON):
//! 1. the block observer storing blocks of 1,000 announced deposits each (one `poll`);
//! 2. deposit intake: `POST /deposit` to one signer's API from a few clients at once, each
//!    deposit validated against the node (`getblockchaininfo`, `gettxout`) and stored.
//!
//!   cargo bench --bench chain
//!
//! `CHAIN_BLOCKS` (default 20) blocks of `CHAIN_DEPOSITS` (default 1,000) deposits each,
//! `CHAIN_INTAKE` (default 2,000) deposits posted by `CHAIN_CLIENTS` (default 4) clients,
//! `CHAIN_ROUNDS` (default 3) alternating rounds, the median reported. Loopback only.
//! Figures go to docs/performance.md ("Chain: block observer and deposit intake").

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use bitcoin::{
    absolute::LockTime,
    hashes::Hash as _,
    key::{Keypair, TapTweak},
    secp256k1::{Message, SECP256K1},
    sighash::{Prevouts, SighashCache, TapSighashType},
    transaction::Version,
    Amount, Block, BlockHash, FeeRate, Network, OutPoint, ScriptBuf, Sequence, Transaction, TxIn,
    TxOut, Txid, Witness,
};
use sbtc_custody::SealedBlob;
use sbtc_hsm_signer::{
    api,
    chain::bitcoin::{
        client::{
            BitcoinClient, BlockHeaderInfo, BlockchainInfo, Error, ErrorKind, MempoolAcceptance,
            MempoolEntry, NetworkInfo, Result as ClientResult, TransactionInfo, TxOutInfo,
        },
        deposit,
        observer::{BlockObserver, ObserverParams},
        rpc::{BitcoindRpc, RpcAuth},
    },
    chain::stacks::address::Principal,
    devnet::regtest::{self, RegtestNode, RegtestOptions},
    keys::AggregateKey,
    signing::DkgId,
    storage::{
        memory::MemoryStore, BitcoinBlock, DbRead as _, DbWrite as _, DepositSubmissionRecord,
        DkgShares, DkgSharesStatus, Storage, SubmissionSource,
    },
};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&v| v > 0)
        .unwrap_or(default)
}

fn keypair(seed: u8) -> Keypair {
    Keypair::from_seckey_slice(SECP256K1, &[seed; 32]).expect("a seed of 1 to 255 is a key")
}

fn p2tr(key: &Keypair) -> ScriptBuf {
    ScriptBuf::new_p2tr(SECP256K1, key.x_only_public_key().0, None)
}

/// Signs input 0 of `tx` (a key-path spend of `spent` by `key`).
fn sign(key: &Keypair, mut tx: Transaction, spent: &TxOut) -> Transaction {
    let sighash = SighashCache::new(&tx)
        .taproot_key_spend_signature_hash(0, &Prevouts::All(&[spent]), TapSighashType::Default)
        .expect("one input, one prevout");
    let tweaked = key.tap_tweak(SECP256K1, None).to_keypair();
    let sig = SECP256K1
        .sign_schnorr_no_aux_rand(&Message::from_digest(sighash.to_byte_array()), &tweaked);
    tx.input[0].witness.push(sig.as_ref());
    tx
}

fn spend_tx(prevout: OutPoint, outputs: Vec<TxOut>) -> Transaction {
    Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: vec![TxIn {
            previous_output: prevout,
            script_sig: ScriptBuf::new(),
            sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
            witness: Witness::new(),
        }],
        output: outputs,
    }
}

/// The signers' key: a plain key the bench holds, stored as a verified DKG.
async fn store_signers_key(store: &dyn Storage, key: &Keypair) {
    store
        .write_dkg_shares(&DkgShares {
            aggregate_key: AggregateKey::new(key.public_key()),
            dkg_id: DkgId(1),
            signer_index: 0,
            sealed_private_shares: SealedBlob::from_bytes(vec![1, 2, 3]),
            public_shares: vec![0; 8],
            signer_set: vec![key.public_key()],
            threshold: 1,
            status: DkgSharesStatus::Verified,
            started_at_block_hash: BlockHash::all_zeros(),
            started_at_block_height: 0,
        })
        .await
        .expect("dkg shares");
}

/// One deposit: its own small transaction (one input, the deposit output), as a wallet makes it.
#[derive(Clone)]
struct Deposit {
    record: DepositSubmissionRecord,
}

impl Deposit {
    fn submission(&self) -> deposit::DepositSubmission {
        deposit::DepositSubmission {
            outpoint: self.record.outpoint,
            deposit_script: self.record.deposit_script.clone(),
            reclaim_script: self.record.reclaim_script.clone(),
            transaction: self.record.transaction.clone(),
        }
    }
}

const DEPOSIT_SATS: u64 = 100_000;
const DEPOSIT_TX_FEE: u64 = 1_000;

/// The chain the bench built: every block of the node's best chain, fetched once over RPC.
struct Chain {
    blocks: Vec<(BlockHeaderInfo, Block)>,
    /// Height of the last block before the deposit blocks.
    base_height: u64,
    /// Per deposit block, its deposits.
    deposits: Vec<Vec<Deposit>>,
}

/// Builds the chain on the node: coinbases to the funder, 100 blocks to mature them, one fan-out
/// transaction per coinbase (`per_block` outputs each, one block each), then `blocks` blocks each
/// confirming `per_block` deposit transactions, each spending one fan-out output.
async fn build_chain(
    node: &RegtestNode,
    rpc: &BitcoindRpc,
    signers: &Keypair,
    blocks: usize,
    per_block: usize,
) -> Chain {
    let funder = keypair(22);
    let funder_script = p2tr(&funder);
    let coinbase_blocks = node.mine_to(blocks as u32, &funder_script);
    node.mine(100);
    let mut fanouts = Vec::with_capacity(blocks);
    for hash in &coinbase_blocks {
        let block = rpc.get_block(hash).await.expect("getblock").expect("block");
        let coinbase = &block.txdata[0];
        let vout = coinbase
            .output
            .iter()
            .position(|o| o.script_pubkey == funder_script)
            .expect("coinbase pays the funder");
        let spent = coinbase.output[vout].clone();
        let each = Amount::from_sat(DEPOSIT_SATS + DEPOSIT_TX_FEE);
        let mut outputs = vec![
            TxOut {
                value: each,
                script_pubkey: funder_script.clone(),
            };
            per_block
        ];
        let change = spent.value - each * per_block as u64 - Amount::from_sat(200_000);
        outputs.push(TxOut {
            value: change,
            script_pubkey: funder_script.clone(),
        });
        let tx = sign(
            &funder,
            spend_tx(OutPoint::new(coinbase.compute_txid(), vout as u32), outputs),
            &spent,
        );
        node.submit(&tx).expect("fan-out accepted");
        node.mine(1);
        fanouts.push(tx);
    }
    let base_height = u64::from(node.tip().0);

    let (signers_x, _) = signers.x_only_public_key();
    let reclaim_user = deposit::standard_user_script(funder.x_only_public_key().0);
    let reclaim_leaf = deposit::build_reclaim_leaf(144, &reclaim_user);
    let mut deposits = Vec::with_capacity(blocks);
    for (b, fanout) in fanouts.iter().enumerate() {
        let fanout_txid = fanout.compute_txid();
        let mut in_block = Vec::with_capacity(per_block);
        for i in 0..per_block {
            let n = (b * per_block + i) as u64;
            let mut hash160 = [7u8; 20];
            hash160[..8].copy_from_slice(&n.to_be_bytes());
            let recipient = Principal::Standard {
                version: 26,
                hash160,
            };
            let max_fee = Amount::from_sat(1_000 + n % 9_000);
            let deposit_leaf = deposit::build_deposit_leaf(max_fee, &recipient, signers_x);
            let output = TxOut {
                value: Amount::from_sat(DEPOSIT_SATS),
                script_pubkey: deposit::deposit_output_script(&deposit_leaf, &reclaim_leaf),
            };
            let prevout = OutPoint::new(fanout_txid, i as u32);
            let tx = sign(&funder, spend_tx(prevout, vec![output]), &fanout.output[i]);
            node.submit(&tx).expect("deposit accepted");
            in_block.push(Deposit {
                record: DepositSubmissionRecord {
                    outpoint: OutPoint::new(tx.compute_txid(), 0),
                    deposit_script: deposit_leaf,
                    reclaim_script: reclaim_leaf.clone(),
                    transaction: tx,
                    source: SubmissionSource::Wallet,
                },
            });
        }
        let mined = node.mine(1);
        let block = rpc
            .get_block(&mined[0])
            .await
            .expect("getblock")
            .expect("block");
        assert_eq!(
            block.txdata.len(),
            per_block + 1,
            "every deposit of the round in its block"
        );
        deposits.push(in_block);
    }

    let tip = u64::from(node.tip().0);
    let mut all = Vec::with_capacity(tip as usize + 1);
    for height in 0..=tip {
        let hash = rpc
            .get_block_hash(height)
            .await
            .expect("getblockhash")
            .expect("on the best chain");
        let header = rpc
            .get_block_header(&hash)
            .await
            .expect("getblockheader")
            .expect("header");
        let block = rpc
            .get_block(&hash)
            .await
            .expect("getblock")
            .expect("block");
        all.push((header, block));
    }
    Chain {
        blocks: all,
        base_height,
        deposits,
    }
}

/// The floor's node: the same blocks, headers, tip and unspent outputs, served from memory.
struct MemoryNode {
    by_hash: HashMap<BlockHash, usize>,
    blocks: Vec<(BlockHeaderInfo, Block)>,
    tip: usize,
    /// The deposit outputs (unspent on the node), with the height that confirmed them.
    utxos: HashMap<OutPoint, (TxOut, u64)>,
}

impl MemoryNode {
    fn new(chain: &Chain) -> MemoryNode {
        let mut utxos = HashMap::new();
        for (height, (_, block)) in chain.blocks.iter().enumerate() {
            for tx in block.txdata.iter().skip(1) {
                let txid = tx.compute_txid();
                for (vout, out) in tx.output.iter().enumerate() {
                    utxos.insert(
                        OutPoint::new(txid, vout as u32),
                        (out.clone(), height as u64),
                    );
                }
            }
        }
        MemoryNode {
            by_hash: chain
                .blocks
                .iter()
                .enumerate()
                .map(|(i, (h, _))| (h.hash, i))
                .collect(),
            blocks: chain.blocks.clone(),
            tip: chain.blocks.len() - 1,
            utxos,
        }
    }

    fn tip(&self) -> usize {
        self.tip
    }

    /// On the chain up to the current tip.
    fn index(&self, hash: &BlockHash) -> Option<usize> {
        self.by_hash.get(hash).copied().filter(|&i| i <= self.tip())
    }
}

fn unsupported<T>(method: &'static str) -> ClientResult<T> {
    Err(Error::new(
        method,
        ErrorKind::BadResponse,
        "the bench's in-memory node does not serve this call",
    ))
}

#[async_trait]
impl BitcoinClient for MemoryNode {
    async fn get_best_block_hash(&self) -> ClientResult<BlockHash> {
        Ok(self.blocks[self.tip()].0.hash)
    }
    async fn get_block_header(&self, hash: &BlockHash) -> ClientResult<Option<BlockHeaderInfo>> {
        Ok(self.index(hash).map(|i| self.blocks[i].0.clone()))
    }
    async fn get_block(&self, hash: &BlockHash) -> ClientResult<Option<Block>> {
        Ok(self.index(hash).map(|i| self.blocks[i].1.clone()))
    }
    async fn get_block_hash(&self, height: u64) -> ClientResult<Option<BlockHash>> {
        Ok(usize::try_from(height)
            .ok()
            .filter(|&h| h <= self.tip())
            .map(|h| self.blocks[h].0.hash))
    }
    async fn get_raw_transaction(
        &self,
        _: &Txid,
        _: Option<&BlockHash>,
    ) -> ClientResult<Option<TransactionInfo>> {
        unsupported("getrawtransaction")
    }
    async fn get_tx_out(
        &self,
        outpoint: &OutPoint,
        _include_mempool: bool,
    ) -> ClientResult<Option<TxOutInfo>> {
        let tip = self.tip();
        Ok(self
            .utxos
            .get(outpoint)
            .filter(|(_, height)| *height as usize <= tip)
            .map(|(out, height)| TxOutInfo {
                best_block: self.blocks[tip].0.hash,
                confirmations: tip as u64 - height + 1,
                value: out.value,
                script_pubkey: out.script_pubkey.clone(),
                coinbase: false,
            }))
    }
    async fn estimate_smart_fee(&self, _: u16) -> ClientResult<Option<FeeRate>> {
        unsupported("estimatesmartfee")
    }
    async fn get_tx_spending_prevout(&self, _: &OutPoint) -> ClientResult<Option<Txid>> {
        unsupported("gettxspendingprevout")
    }
    async fn get_mempool_entry(&self, _: &Txid) -> ClientResult<Option<MempoolEntry>> {
        unsupported("getmempoolentry")
    }
    async fn get_mempool_descendants(&self, _: &Txid) -> ClientResult<Vec<Txid>> {
        unsupported("getmempooldescendants")
    }
    async fn send_raw_transaction(&self, _: &Transaction) -> ClientResult<Txid> {
        unsupported("sendrawtransaction")
    }
    async fn test_mempool_accept(&self, _: &[Transaction]) -> ClientResult<Vec<MempoolAcceptance>> {
        unsupported("testmempoolaccept")
    }
    async fn get_blockchain_info(&self) -> ClientResult<BlockchainInfo> {
        let tip = self.tip();
        Ok(BlockchainInfo {
            network: Network::Regtest,
            blocks: tip as u64,
            best_block_hash: self.blocks[tip].0.hash,
            initial_block_download: false,
            pruned: false,
        })
    }
    async fn get_network_info(&self) -> ClientResult<NetworkInfo> {
        unsupported("getnetworkinfo")
    }
}

/// A fresh store as the observer would have left it at the last block before the deposits (the
/// signers' key, the blocks up to there, the canonical tip), with every deposit announced.
async fn observer_store(chain: &Chain, signers: &Keypair) -> Arc<MemoryStore> {
    let store = Arc::new(MemoryStore::new());
    store_signers_key(store.as_ref(), signers).await;
    for (header, block) in &chain.blocks[..=chain.base_height as usize] {
        store
            .write_bitcoin_block(&BitcoinBlock {
                hash: header.hash,
                height: header.height,
                parent_hash: block.header.prev_blockhash,
            })
            .await
            .expect("block");
    }
    store
        .set_bitcoin_canonical_tip(&chain.blocks[chain.base_height as usize].0.hash)
        .await
        .expect("tip");
    for d in chain.deposits.iter().flatten() {
        assert!(store
            .write_deposit_submission(&d.record)
            .await
            .expect("submission"));
    }
    store
}

/// One measured poll: the observer stores every deposit block. Returns the time it took.
async fn observe(client: Arc<dyn BitcoinClient>, chain: &Chain, signers: &Keypair) -> Duration {
    let store = observer_store(chain, signers).await;
    let observer = BlockObserver::new(client, store.clone(), ObserverParams::new(Network::Regtest));
    let t = Instant::now();
    let change = observer.poll().await.expect("poll").expect("a new tip");
    let took = t.elapsed();
    let deposits: usize = chain.deposits.iter().map(Vec::len).sum();
    assert_eq!(
        change.new_blocks.len(),
        chain.deposits.len(),
        "every block stored"
    );
    assert_eq!(change.deposits, deposits, "every deposit recorded");
    assert!(
        change.refused_deposits.is_empty(),
        "{:?}",
        change.refused_deposits
    );
    let tip = change.tip.hash;
    let pending = store
        .get_pending_deposit_requests(&tip, chain.deposits.len() as u32)
        .await
        .expect("pending");
    assert_eq!(pending.len(), deposits, "every deposit pending on the tip");
    took
}

/// The wallet's `POST /deposit` body for `d`.
fn post_body(d: &Deposit) -> String {
    serde_json::json!({
        "bitcoinTxid": d.record.outpoint.txid.to_string(),
        "bitcoinTxOutputIndex": d.record.outpoint.vout,
        "depositScript": d.record.deposit_script.to_hex_string(),
        "reclaimScript": d.record.reclaim_script.to_hex_string(),
        "transactionHex": bitcoin::consensus::encode::serialize_hex(&d.record.transaction),
    })
    .to_string()
}

/// Runs `work(i)` for every `i < n` on `tasks` tasks (task k takes k, k + tasks, ...); returns
/// the wall time.
async fn on_tasks<F, Fut>(n: usize, tasks: usize, work: F) -> Duration
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let work = Arc::new(work);
    let t = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|k| {
            let work = work.clone();
            tokio::spawn(async move {
                let mut i = k;
                while i < n {
                    work(i).await;
                    i += tasks;
                }
            })
        })
        .collect();
    for h in handles {
        h.await.expect("task");
    }
    t.elapsed()
}

/// The floor of intake: `validate_with_node` against the in-memory node and
/// `write_deposit_submission`, for every deposit, on `tasks` tasks.
async fn intake_floor(
    node: Arc<MemoryNode>,
    deposits: Arc<Vec<Deposit>>,
    signers: &Keypair,
    tasks: usize,
) -> Duration {
    let store = Arc::new(MemoryStore::new());
    store_signers_key(store.as_ref(), signers).await;
    let known: Arc<Vec<_>> = Arc::new(
        store
            .get_all_dkg_shares()
            .await
            .expect("dkg")
            .iter()
            .map(|s| s.shares.aggregate_key.x_only())
            .collect(),
    );
    let submissions: Arc<Vec<_>> = Arc::new(deposits.iter().map(Deposit::submission).collect());
    let n = deposits.len();
    let (s, all) = (store.clone(), deposits.clone());
    let took = on_tasks(n, tasks, move |i| {
        let (node, deposits, submissions, known, store) = (
            node.clone(),
            all.clone(),
            submissions.clone(),
            known.clone(),
            s.clone(),
        );
        async move {
            deposit::validate_with_node(node.as_ref(), &submissions[i], Network::Regtest, &known)
                .await
                .expect("valid");
            assert!(store
                .write_deposit_submission(&deposits[i].record)
                .await
                .expect("stored"));
        }
    })
    .await;
    for d in deposits.iter().step_by(97) {
        assert!(store
            .get_deposit_submission(&d.record.outpoint)
            .await
            .expect("read")
            .is_some());
    }
    took
}

/// Intake without HTTP: `Intake::submit` (what `POST /deposit` calls) against `client`.
async fn intake_direct(
    client: Arc<dyn BitcoinClient>,
    deposits: Arc<Vec<Deposit>>,
    signers: &Keypair,
    tasks: usize,
) -> Duration {
    let store = Arc::new(MemoryStore::new());
    store_signers_key(store.as_ref(), signers).await;
    let intake = Arc::new(api::Intake::new(client, Network::Regtest, store, None));
    let submissions: Arc<Vec<_>> = Arc::new(deposits.iter().map(Deposit::submission).collect());
    let i2 = intake.clone();
    let took = on_tasks(deposits.len(), tasks, move |i| {
        let (intake, submissions) = (i2.clone(), submissions.clone());
        async move {
            let accepted = intake
                .submit(submissions[i].clone(), SubmissionSource::Wallet)
                .await
                .expect("accepted");
            assert!(accepted.new);
        }
    })
    .await;
    assert_eq!(intake.counts().stored, deposits.len() as u64);
    took
}

/// Intake over real HTTP: `POST /deposit` to one signer's API on 127.0.0.1, from `tasks`
/// clients at once, validation against the regtest node over RPC.
async fn intake_http(
    rpc: Arc<BitcoindRpc>,
    deposits: Arc<Vec<Deposit>>,
    signers: &Keypair,
    tasks: usize,
) -> Duration {
    let store = Arc::new(MemoryStore::new());
    store_signers_key(store.as_ref(), signers).await;
    let mut config = api::ApiConfig::new(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    // One client address sends everything: the per-client rate limit is not what is measured.
    config.rate_per_minute = u32::MAX;
    config.rate_burst = u32::MAX;
    let running = api::start(&config, rpc, Network::Regtest, store, None)
        .await
        .expect("api");
    let url = Arc::new(format!("http://{}/deposit", running.server.local_addr()));
    let bodies: Arc<Vec<String>> = Arc::new(deposits.iter().map(post_body).collect());
    let clients: Arc<Vec<reqwest::Client>> = Arc::new(
        (0..tasks)
            .map(|_| {
                reqwest::Client::builder()
                    .timeout(Duration::from_secs(60))
                    .build()
                    .expect("client")
            })
            .collect(),
    );
    let took = on_tasks(deposits.len(), tasks, move |i| {
        let (url, bodies, clients) = (url.clone(), bodies.clone(), clients.clone());
        async move {
            let r = clients[i % clients.len()]
                .post(url.as_str())
                .header("Content-Type", "application/json")
                .body(bodies[i].clone())
                .send()
                .await
                .expect("POST /deposit");
            let status = r.status().as_u16();
            let text = r.text().await.expect("answer");
            assert_eq!(status, 201, "{text}");
        }
    })
    .await;
    assert_eq!(running.intake.counts().stored, deposits.len() as u64);
    running.shutdown().await;
    took
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn per_sec(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

#[tokio::main]
async fn main() {
    let blocks = env_usize("CHAIN_BLOCKS", 20);
    let per_block = env_usize("CHAIN_DEPOSITS", 1_000);
    let rounds = env_usize("CHAIN_ROUNDS", 3);
    let intake = env_usize("CHAIN_INTAKE", 2_000);
    let clients = env_usize("CHAIN_CLIENTS", 4);

    let (user, password) = ("sbtc-bench", "regtest bench password");
    let node = RegtestNode::start(RegtestOptions {
        auth: regtest::RpcAuth {
            user_password: Some((user.into(), password.into())),
            cookie_file: None,
        },
        ..RegtestOptions::default()
    })
    .await
    .expect("regtest node");
    let rpc = Arc::new(
        BitcoindRpc::with_auth(
            &node.rpc_url(),
            RpcAuth::UserPassword {
                user: user.into(),
                password: zeroize::Zeroizing::new(password.into()),
            },
            Duration::from_secs(60),
            1,
        )
        .expect("rpc client"),
    );
    let signers = keypair(21);

    let t = Instant::now();
    let chain = build_chain(&node, &rpc, &signers, blocks, per_block).await;
    let memory = Arc::new(MemoryNode::new(&chain));
    println!(
        "set-up: {} blocks of {per_block} deposit transactions on the regtest node ({} blocks in all) in {:.1?}",
        blocks,
        chain.blocks.len(),
        t.elapsed()
    );

    // Part 1: the block observer.
    let deposits = blocks * per_block;
    let mut over_rpc = Vec::new();
    let mut floor = Vec::new();
    for round in 0..rounds {
        let f = observe(memory.clone(), &chain, &signers).await;
        let r = observe(rpc.clone(), &chain, &signers).await;
        println!(
            "observer round {}: floor {:.3?}, rpc {:.3?} ({:.2}x)",
            round + 1,
            f,
            r,
            r.as_secs_f64() / f.as_secs_f64()
        );
        floor.push(f);
        over_rpc.push(r);
    }
    let (f, r) = (median(floor), median(over_rpc));
    println!("== block observer: {blocks} blocks of {per_block} deposits, median of {rounds}");
    println!(
        "floor (in-memory node): {:>8.3?}  {:>8.1} blocks/s  {:>10.0} deposits/s",
        f,
        per_sec(blocks, f),
        per_sec(deposits, f)
    );
    println!(
        "regtest node over RPC:  {:>8.3?}  {:>8.1} blocks/s  {:>10.0} deposits/s",
        r,
        per_sec(blocks, r),
        per_sec(deposits, r)
    );
    println!("rpc / floor: {:.2}x", r.as_secs_f64() / f.as_secs_f64());

    // Part 2: deposit intake, on deposits of the blocks above (confirmed, unspent).
    let n = intake.min(deposits);
    let sample: Arc<Vec<Deposit>> =
        Arc::new(chain.deposits.iter().flatten().take(n).cloned().collect());
    let (mut floor, mut in_memory, mut direct, mut http) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let f = intake_floor(memory.clone(), sample.clone(), &signers, clients).await;
        let m = intake_direct(memory.clone(), sample.clone(), &signers, clients).await;
        let d = intake_direct(rpc.clone(), sample.clone(), &signers, clients).await;
        let h = intake_http(rpc.clone(), sample.clone(), &signers, clients).await;
        let x = |t: Duration| t.as_secs_f64() / f.as_secs_f64();
        println!(
            "intake round {}: floor {f:.3?}, Intake::submit in memory {m:.3?} ({:.2}x), over RPC {d:.3?} ({:.2}x), POST /deposit {h:.3?} ({:.2}x)",
            round + 1,
            x(m),
            x(d),
            x(h)
        );
        floor.push(f);
        in_memory.push(m);
        direct.push(d);
        http.push(h);
    }
    let (f, m, d, h) = (
        median(floor),
        median(in_memory),
        median(direct),
        median(http),
    );
    println!("== deposit intake: {n} deposits, {clients} clients, one signer, median of {rounds}");
    println!(
        "floor (validate_with_node + write, in-memory node): {:>8.3?}  {:>10.0} deposits/s",
        f,
        per_sec(n, f)
    );
    println!(
        "Intake::submit, in-memory node (no HTTP, no RPC):   {:>8.3?}  {:>10.0} deposits/s  {:.2}x",
        m,
        per_sec(n, m),
        m.as_secs_f64() / f.as_secs_f64()
    );
    println!(
        "Intake::submit, node over RPC (no HTTP API):        {:>8.3?}  {:>10.0} deposits/s  {:.2}x",
        d,
        per_sec(n, d),
        d.as_secs_f64() / f.as_secs_f64()
    );
    println!(
        "POST /deposit over HTTP, node over RPC:             {:>8.3?}  {:>10.0} deposits/s  {:.2}x",
        h,
        per_sec(n, h),
        h.as_secs_f64() / f.as_secs_f64()
    );

    node.stop().await;
}
