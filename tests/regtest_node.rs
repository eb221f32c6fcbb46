//! The devnet's regtest node, driven as a signer drives bitcoind: raw JSON-RPC over loopback
//! HTTP. Each test starts its own node on a free port.

use std::time::Duration;

use base64::Engine;
use bitcoin::consensus::encode::serialize_hex;
use bitcoin::hashes::Hash;
use bitcoin::key::{Keypair, TapTweak};
use bitcoin::opcodes::all::{OP_CHECKSIG, OP_CSV, OP_DROP};
use bitcoin::script::Builder;
use bitcoin::secp256k1::{Message, Secp256k1, SecretKey};
use bitcoin::sighash::{Prevouts, SighashCache, TapSighashType};
use bitcoin::taproot::{LeafVersion, TaprootBuilder};
use bitcoin::{
    absolute, transaction, Address, Amount, FeeRate, Network, OutPoint, ScriptBuf, Sequence,
    Transaction, TxIn, TxOut, Txid, Witness,
};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use sbtc_hsm_signer::devnet::regtest::{RegtestNode, RegtestOptions, RpcAuth};
use serde_json::{json, Value};

const USER: &str = "devnet";
const PASSWORD: &str = "correct horse battery staple";

async fn start() -> RegtestNode {
    RegtestNode::start(RegtestOptions {
        auth: RpcAuth {
            user_password: Some((USER.into(), PASSWORD.into())),
            cookie_file: None,
        },
        ..RegtestOptions::default()
    })
    .await
    .expect("the regtest node starts")
}

/// One HTTP POST to the node; returns the status and the body.
async fn post(node: &RegtestNode, credentials: Option<&str>, body: &str) -> (u16, String) {
    let stream = tokio::net::TcpStream::connect(node.rpc_addr())
        .await
        .expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut request = hyper::Request::post("/")
        .header("host", node.rpc_addr().to_string())
        .header("content-type", "application/json");
    if let Some(c) = credentials {
        let token = base64::engine::general_purpose::STANDARD.encode(c);
        request = request.header("authorization", format!("Basic {token}"));
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request");
    let response = tokio::time::timeout(Duration::from_secs(30), sender.send_request(request))
        .await
        .expect("the node answers in time")
        .expect("response");
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A JSON-RPC 2.0 call with the right credentials: the result, or (code, message).
async fn call(node: &RegtestNode, method: &str, params: Value) -> Result<Value, (i64, String)> {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).to_string();
    let (status, text) = post(node, Some(&format!("{USER}:{PASSWORD}")), &body).await;
    assert_eq!(status, 200, "JSON-RPC 2.0 answers 200: {text}");
    let reply: Value = serde_json::from_str(&text).expect("a JSON reply");
    match reply.get("error") {
        Some(e) if !e.is_null() => Err((
            e["code"].as_i64().expect("code"),
            e["message"].as_str().expect("message").to_string(),
        )),
        _ => Ok(reply["result"].clone()),
    }
}

async fn ok(node: &RegtestNode, method: &str, params: Value) -> Value {
    match call(node, method, params).await {
        Ok(v) => v,
        Err(e) => panic!("{method} failed: {e:?}"),
    }
}

/// A key the test holds, and its key-path P2TR address.
struct Key {
    keypair: Keypair,
    address: Address,
}

fn key(seed: u8) -> Key {
    let secp = Secp256k1::new();
    let sk = SecretKey::from_slice(&[seed; 32]).expect("a valid key");
    let keypair = Keypair::from_secret_key(&secp, &sk);
    let (xonly, _) = keypair.x_only_public_key();
    let address = Address::p2tr(&secp, xonly, None, Network::Regtest);
    Key { keypair, address }
}

/// Spends `prevouts` (all key-path P2TR of `key`) to `outputs`, signed.
fn spend(
    key: &Key,
    prevouts: &[(OutPoint, TxOut)],
    outputs: Vec<TxOut>,
    sequence: Sequence,
) -> Transaction {
    let secp = Secp256k1::new();
    let mut tx = Transaction {
        version: transaction::Version::TWO,
        lock_time: absolute::LockTime::ZERO,
        input: prevouts
            .iter()
            .map(|(op, _)| TxIn {
                previous_output: *op,
                script_sig: ScriptBuf::new(),
                sequence,
                witness: Witness::new(),
            })
            .collect(),
        output: outputs,
    };
    let spent: Vec<TxOut> = prevouts.iter().map(|(_, o)| o.clone()).collect();
    let tweaked = key.keypair.tap_tweak(&secp, None).to_keypair();
    let mut witnesses = Vec::new();
    {
        let mut cache = SighashCache::new(&tx);
        for i in 0..prevouts.len() {
            let sighash = cache
                .taproot_key_spend_signature_hash(
                    i,
                    &Prevouts::All(&spent),
                    TapSighashType::Default,
                )
                .expect("sighash");
            let sig = secp.sign_schnorr(&Message::from_digest(sighash.to_byte_array()), &tweaked);
            witnesses.push(Witness::p2tr_key_spend(&bitcoin::taproot::Signature {
                signature: sig,
                sighash_type: TapSighashType::Default,
            }));
        }
    }
    for (input, w) in tx.input.iter_mut().zip(witnesses) {
        input.witness = w;
    }
    tx
}

fn pay(address: &Address, sats: u64) -> TxOut {
    TxOut {
        value: Amount::from_sat(sats),
        script_pubkey: address.script_pubkey(),
    }
}

/// The coinbase output of the best chain's block at `height`.
async fn coinbase_at(node: &RegtestNode, height: u64) -> (OutPoint, TxOut) {
    let hash = ok(node, "getblockhash", json!([height])).await;
    let block = ok(node, "getblock", json!([hash, 2])).await;
    let cb = &block["tx"][0];
    let txid: Txid = cb["txid"].as_str().unwrap().parse().unwrap();
    let value = Amount::from_btc(cb["vout"][0]["value"].as_f64().unwrap()).unwrap();
    let script =
        ScriptBuf::from_hex(cb["vout"][0]["scriptPubKey"]["hex"].as_str().unwrap()).unwrap();
    (
        OutPoint::new(txid, 0),
        TxOut {
            value,
            script_pubkey: script,
        },
    )
}

async fn send(node: &RegtestNode, tx: &Transaction) -> Result<Value, (i64, String)> {
    call(node, "sendrawtransaction", json!([serialize_hex(tx)])).await
}

/// Mines `n` blocks to `key` over RPC.
async fn generate(node: &RegtestNode, n: u64, key: &Key) -> Vec<String> {
    let hashes = ok(
        node,
        "generatetoaddress",
        json!([n, key.address.to_string()]),
    )
    .await;
    hashes
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap().to_string())
        .collect()
}

async fn mempool(node: &RegtestNode) -> Vec<String> {
    let v = ok(node, "getrawmempool", json!([])).await;
    v.as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn coinbase_spend_waits_for_maturity() {
    let node = start().await;
    let k = key(1);
    generate(&node, 99, &k).await;
    let (op, out) = coinbase_at(&node, 1).await;
    let tx = spend(
        &k,
        &[(op, out.clone())],
        vec![pay(&k.address, out.value.to_sat() - 1_000)],
        Sequence::MAX,
    );
    // Tip 99: the next block is 100, at depth 99.
    let err = send(&node, &tx).await.unwrap_err();
    assert_eq!(err.0, -26);
    assert_eq!(
        err.1,
        "bad-txns-premature-spend-of-coinbase, tried to spend coinbase at depth 99"
    );
    generate(&node, 1, &k).await;
    let txid = send(&node, &tx)
        .await
        .expect("a mature coinbase is spendable");
    assert_eq!(txid, json!(tx.compute_txid().to_string()));
    node.stop().await;
}

#[tokio::test]
async fn inflation_is_refused_in_mempool_and_blocks() {
    let node = start().await;
    let k = key(2);
    generate(&node, 101, &k).await;
    let (op, out) = coinbase_at(&node, 1).await;
    let tx = spend(
        &k,
        &[(op, out.clone())],
        vec![pay(&k.address, out.value.to_sat() + 1)],
        Sequence::MAX,
    );
    let err = send(&node, &tx).await.unwrap_err();
    assert_eq!(err.0, -26);
    assert_eq!(
        err.1,
        "bad-txns-in-belowout, value in (50.00000000) < value out (50.00000001)"
    );
    // Nor can a block carry it.
    let err = call(
        &node,
        "generateblock",
        json!([k.address.to_string(), [serialize_hex(&tx)]]),
    )
    .await
    .unwrap_err();
    assert_eq!(err.0, -25);
    assert!(
        err.1
            .starts_with("TestBlockValidity failed: bad-txns-in-belowout"),
        "{}",
        err.1
    );
    // Nor a coinbase that pays itself more than subsidy + fees.
    let tip_before = ok(&node, "getbestblockhash", json!([])).await;
    let block = node.with_state(|s| {
        s.chain.build_block(
            &k.address.script_pubkey(),
            vec![],
            Amount::from_sat(1),
            2_000_000_000,
        )
    });
    let verdict = ok(&node, "submitblock", json!([serialize_hex(&block)])).await;
    assert_eq!(verdict, json!("bad-cb-amount"));
    assert_eq!(ok(&node, "getbestblockhash", json!([])).await, tip_before);
    node.stop().await;
}

#[tokio::test]
async fn script_verifier_refuses_a_bad_taproot_signature() {
    let node = start().await;
    let k = key(3);
    generate(&node, 101, &k).await;
    let (op, out) = coinbase_at(&node, 1).await;
    let good = spend(
        &k,
        &[(op, out.clone())],
        vec![pay(&k.address, out.value.to_sat() - 1_000)],
        Sequence::MAX,
    );
    let mut bad = good.clone();
    let mut sig = bad.input[0].witness.to_vec();
    sig[0][10] ^= 0x01;
    bad.input[0].witness = Witness::from_slice(&sig);
    let verdict = ok(&node, "testmempoolaccept", json!([[serialize_hex(&bad)]])).await;
    assert_eq!(verdict[0]["allowed"], json!(false));
    let err = send(&node, &bad).await.unwrap_err();
    assert_eq!(err.0, -26);
    assert!(
        err.1.starts_with("mandatory-script-verify-flag-failed ("),
        "{}",
        err.1
    );
    // A signature by another key is refused too.
    let other = spend(
        &key(4),
        &[(op, out.clone())],
        good.output.clone(),
        Sequence::MAX,
    );
    assert_eq!(send(&node, &other).await.unwrap_err().0, -26);

    let verdict = ok(&node, "testmempoolaccept", json!([[serialize_hex(&good)]])).await;
    assert_eq!(verdict[0]["allowed"], json!(true), "{verdict}");
    assert_eq!(verdict[0]["fees"]["base"], json!(0.00001));
    assert_eq!(verdict[0]["vsize"], json!(good.vsize()));
    send(&node, &good)
        .await
        .expect("the good signature is accepted");
    assert_eq!(mempool(&node).await, vec![good.compute_txid().to_string()]);
    node.stop().await;
}

#[tokio::test]
async fn replacement_must_pay_for_itself() {
    let node = start().await;
    let k = key(5);
    generate(&node, 101, &k).await;
    let (op, out) = coinbase_at(&node, 1).await;
    let value = out.value.to_sat();
    let first = spend(
        &k,
        &[(op, out.clone())],
        vec![pay(&k.address, value - 1_000)],
        Sequence::MAX,
    );
    send(&node, &first).await.expect("the first spend");
    // Same size, 50 sats more: the fee rate rises but not by the incremental relay fee.
    let cheap = spend(
        &k,
        &[(op, out.clone())],
        vec![pay(&key(6).address, value - 1_050)],
        Sequence::MAX,
    );
    let err = send(&node, &cheap).await.unwrap_err();
    assert_eq!(err.0, -26);
    assert!(
        err.1.starts_with(&format!(
            "insufficient fee, rejecting replacement {}, not enough additional fees to relay; 0.00000050 < 0.00000",
            cheap.compute_txid()
        )),
        "{}",
        err.1
    );
    // Less than the original: refused as well.
    let lower = spend(
        &k,
        &[(op, out.clone())],
        vec![pay(&key(6).address, value - 500)],
        Sequence::MAX,
    );
    assert!(send(&node, &lower)
        .await
        .unwrap_err()
        .1
        .starts_with("insufficient fee"));
    // Enough: the original's fee plus 1 sat/vB of the replacement's own size.
    let bump = 1_000 + first.vsize() as u64;
    let good = spend(
        &k,
        &[(op, out.clone())],
        vec![pay(&key(6).address, value - bump)],
        Sequence::MAX,
    );
    send(&node, &good)
        .await
        .expect("the replacement pays enough");
    assert_eq!(mempool(&node).await, vec![good.compute_txid().to_string()]);
    let spender = ok(
        &node,
        "gettxspendingprevout",
        json!([[{"txid": op.txid.to_string(), "vout": 0}]]),
    )
    .await;
    assert_eq!(
        spender[0]["spendingtxid"],
        json!(good.compute_txid().to_string())
    );
    node.stop().await;
}

#[tokio::test]
async fn package_limit_stops_the_26th_in_a_chain() {
    let node = start().await;
    let k = key(7);
    generate(&node, 101, &k).await;
    let (mut op, mut out) = coinbase_at(&node, 1).await;
    let mut txids = Vec::new();
    for i in 0..26 {
        let tx = spend(
            &k,
            &[(op, out.clone())],
            vec![pay(&k.address, out.value.to_sat() - 500)],
            Sequence::MAX,
        );
        let result = send(&node, &tx).await;
        if i < 25 {
            result.unwrap_or_else(|e| panic!("transaction {} of the chain: {e:?}", i + 1));
            txids.push(tx.compute_txid());
        } else {
            let err = result.unwrap_err();
            assert_eq!(err.0, -26);
            assert_eq!(
                err.1,
                "too-long-mempool-chain, too many unconfirmed ancestors [limit: 25]"
            );
        }
        op = OutPoint::new(tx.compute_txid(), 0);
        out = tx.output[0].clone();
    }
    let entry = ok(&node, "getmempoolentry", json!([txids[24].to_string()])).await;
    assert_eq!(entry["ancestorcount"], json!(25));
    let desc = ok(
        &node,
        "getmempooldescendants",
        json!([txids[0].to_string()]),
    )
    .await;
    assert_eq!(desc.as_array().unwrap().len(), 24);
    node.stop().await;
}

#[tokio::test]
async fn invalidateblock_reorgs_and_reconsiderblock_restores() {
    let node = start().await;
    let k = key(8);
    generate(&node, 101, &k).await;
    let (op, out) = coinbase_at(&node, 1).await;
    let tx = spend(
        &k,
        &[(op, out.clone())],
        vec![pay(&k.address, out.value.to_sat() - 1_000)],
        Sequence::MAX,
    );
    let txid = tx.compute_txid().to_string();
    send(&node, &tx).await.expect("accepted");
    let blocks = generate(&node, 3, &k).await;
    let old_tip = blocks[2].clone();
    assert!(mempool(&node).await.is_empty(), "mined");
    let found = ok(&node, "getrawtransaction", json!([txid, 1, blocks[0]])).await;
    assert_eq!(found["confirmations"], json!(3));
    // Without a block hash only the mempool is searched, as bitcoind without txindex.
    let err = call(&node, "getrawtransaction", json!([txid]))
        .await
        .unwrap_err();
    assert_eq!(err.0, -5);
    assert!(err.1.starts_with("No such mempool transaction."));

    ok(&node, "invalidateblock", json!([blocks[0]])).await;
    assert_eq!(ok(&node, "getblockcount", json!([])).await, json!(101));
    assert_eq!(
        mempool(&node).await,
        vec![txid.clone()],
        "back in the mempool"
    );
    let header = ok(&node, "getblockheader", json!([blocks[0]])).await;
    assert_eq!(header["confirmations"], json!(-1));
    assert!(ok(&node, "gettxout", json!([txid, 0, false]))
        .await
        .is_null());
    let unconfirmed = ok(&node, "gettxout", json!([txid, 0, true])).await;
    assert_eq!(unconfirmed["confirmations"], json!(0));

    ok(&node, "reconsiderblock", json!([blocks[0]])).await;
    assert_eq!(
        ok(&node, "getbestblockhash", json!([])).await,
        json!(old_tip)
    );
    assert!(mempool(&node).await.is_empty(), "confirmed again");
    let utxo = ok(&node, "gettxout", json!([txid, 0])).await;
    assert_eq!(utxo["confirmations"], json!(3));
    assert_eq!(utxo["coinbase"], json!(false));
    assert_eq!(
        utxo["scriptPubKey"]["address"],
        json!(k.address.to_string())
    );
    node.stop().await;
}

#[tokio::test]
async fn csv_locked_spend_waits_for_its_lock_time() {
    let node = start().await;
    let k = key(9);
    let secp = Secp256k1::new();
    generate(&node, 101, &k).await;
    // A reclaim-style leaf: <5> OP_CSV OP_DROP <key> OP_CHECKSIG.
    let lock = 5u16;
    let (xonly, _) = k.keypair.x_only_public_key();
    let leaf = Builder::new()
        .push_int(i64::from(lock))
        .push_opcode(OP_CSV)
        .push_opcode(OP_DROP)
        .push_x_only_key(&xonly)
        .push_opcode(OP_CHECKSIG)
        .into_script();
    let internal = key(10).keypair.x_only_public_key().0;
    let info = TaprootBuilder::new()
        .add_leaf(0, leaf.clone())
        .unwrap()
        .finalize(&secp, internal)
        .unwrap();
    let locked = Address::p2tr(&secp, internal, info.merkle_root(), Network::Regtest);
    let (op, out) = coinbase_at(&node, 1).await;
    let change = out.value.to_sat() - 100_000_000 - 1_000;
    let fund = spend(
        &k,
        &[(op, out.clone())],
        vec![pay(&locked, 100_000_000), pay(&k.address, change)],
        Sequence::MAX,
    );
    send(&node, &fund).await.expect("funding");
    let funded_at = generate(&node, 1, &k).await;
    assert_eq!(funded_at.len(), 1);
    let confirmed_height = 102u32;
    let locked_op = OutPoint::new(fund.compute_txid(), 0);
    let locked_out = fund.output[0].clone();

    let reclaim = |sequence: u16| {
        let mut tx = Transaction {
            version: transaction::Version::TWO,
            lock_time: absolute::LockTime::ZERO,
            input: vec![TxIn {
                previous_output: locked_op,
                script_sig: ScriptBuf::new(),
                sequence: Sequence::from_height(sequence),
                witness: Witness::new(),
            }],
            output: vec![pay(&k.address, 100_000_000 - 1_000)],
        };
        let sighash = SighashCache::new(&tx)
            .taproot_script_spend_signature_hash(
                0,
                &Prevouts::All(std::slice::from_ref(&locked_out)),
                bitcoin::TapLeafHash::from_script(&leaf, LeafVersion::TapScript),
                TapSighashType::Default,
            )
            .unwrap();
        let sig = secp.sign_schnorr(&Message::from_digest(sighash.to_byte_array()), &k.keypair);
        let control = info
            .control_block(&(leaf.clone(), LeafVersion::TapScript))
            .unwrap();
        let mut w = Witness::new();
        w.push(sig.as_ref());
        w.push(leaf.as_bytes());
        w.push(control.serialize());
        tx.input[0].witness = w;
        tx
    };
    let tx = reclaim(lock);
    // A block cannot carry it early either.
    let err = call(
        &node,
        "generateblock",
        json!([k.address.to_string(), [serialize_hex(&tx)]]),
    )
    .await
    .unwrap_err();
    assert_eq!(
        err,
        (
            -25,
            "TestBlockValidity failed: bad-txns-nonfinal".to_string()
        )
    );
    // Confirmed at 102 with a 5-block lock: first valid in block 107, so refused while the tip
    // is below 106.
    for _ in 0..3 {
        let err = send(&node, &tx).await.unwrap_err();
        assert_eq!(err, (-26, "non-BIP68-final".to_string()));
        generate(&node, 1, &k).await;
    }
    assert_eq!(
        ok(&node, "getblockcount", json!([])).await,
        json!(confirmed_height + 3)
    );
    assert_eq!(send(&node, &tx).await.unwrap_err().1, "non-BIP68-final");
    generate(&node, 1, &k).await;
    // A sequence below the script's lock fails OP_CSV in the script verifier.
    let short = reclaim(lock - 1);
    let err = send(&node, &short).await.unwrap_err();
    assert!(
        err.1.starts_with("mandatory-script-verify-flag-failed"),
        "{}",
        err.1
    );
    send(&node, &tx).await.expect("the lock time has passed");
    node.stop().await;
}

#[tokio::test]
async fn wrong_credentials_get_401_without_body() {
    let dir = tempfile::tempdir().unwrap();
    let cookie_path = dir.path().join(".cookie");
    let node = RegtestNode::start(RegtestOptions {
        auth: RpcAuth {
            user_password: Some((USER.into(), PASSWORD.into())),
            cookie_file: Some(cookie_path.clone()),
        },
        ..RegtestOptions::default()
    })
    .await
    .unwrap();
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "getblockcount"}).to_string();
    let (status, text) = post(&node, Some(&format!("{USER}:wrong")), &body).await;
    assert_eq!((status, text.as_str()), (401, ""));
    let (status, text) = post(&node, None, &body).await;
    assert_eq!((status, text.as_str()), (401, ""));
    // The cookie works, and is private to its owner.
    let cookie = std::fs::read_to_string(&cookie_path).unwrap();
    assert!(
        cookie.starts_with("__cookie__:") && cookie.len() == 11 + 64,
        "{cookie}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&cookie_path)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let (status, text) = post(&node, Some(&cookie), &body).await;
    assert_eq!(status, 200, "{text}");
    let (status, _) = post(&node, Some(&format!("{USER}:{PASSWORD}")), &body).await;
    assert_eq!(status, 200);
    node.stop().await;
    assert!(!cookie_path.exists(), "the cookie goes at stop");
}

#[tokio::test]
async fn unknown_method_is_32601_in_both_protocol_versions() {
    let node = start().await;
    let err = call(&node, "nosuchmethod", json!([])).await.unwrap_err();
    assert_eq!(err, (-32601, "Method not found".to_string()));
    // JSON-RPC 1.0: bitcoind's legacy HTTP status 404, result and error both present.
    let body = json!({"id": "x", "method": "nosuchmethod", "params": []}).to_string();
    let (status, text) = post(&node, Some(&format!("{USER}:{PASSWORD}")), &body).await;
    assert_eq!(status, 404);
    let reply: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(reply["error"]["code"], json!(-32601));
    assert!(reply["result"].is_null() && reply["id"] == json!("x"));
    // A batch answers each request.
    let batch = json!([
        {"jsonrpc": "2.0", "id": 1, "method": "getblockcount"},
        {"jsonrpc": "2.0", "id": 2, "method": "nosuchmethod"},
    ])
    .to_string();
    let (status, text) = post(&node, Some(&format!("{USER}:{PASSWORD}")), &batch).await;
    assert_eq!(status, 200);
    let reply: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(reply[0]["result"], json!(0));
    assert_eq!(reply[1]["error"]["code"], json!(-32601));
    node.stop().await;
}

#[tokio::test]
async fn estimatesmartfee_reports_the_set_rate() {
    let node = start().await;
    node.set_fee_rate(Some(FeeRate::from_sat_per_kwu(7 * 250)));
    let fee = ok(&node, "estimatesmartfee", json!([6])).await;
    assert_eq!(fee["feerate"], json!(0.00007));
    assert_eq!(fee["blocks"], json!(6));
    ok(&node, "devnetsetfeerate", json!([0.0002])).await;
    let fee = ok(&node, "estimatesmartfee", json!({"conf_target": 2})).await;
    assert_eq!(fee["feerate"], json!(0.0002));
    node.set_fee_rate(None);
    let fee = ok(&node, "estimatesmartfee", json!([6])).await;
    assert!(fee.get("feerate").is_none());
    assert_eq!(
        fee["errors"][0],
        json!("Insufficient data or no feerate found")
    );
    let err = call(&node, "estimatesmartfee", json!([0]))
        .await
        .unwrap_err();
    assert_eq!(err.0, -8);
    node.stop().await;
}

#[tokio::test]
async fn wallet_funds_an_address() {
    let node = start().await;
    let wallet = ok(&node, "getnewaddress", json!([])).await;
    ok(&node, "generatetoaddress", json!([101, wallet])).await;
    assert_eq!(ok(&node, "getbalance", json!([])).await, json!(50.0));
    let k = key(11);
    let txid = ok(&node, "sendtoaddress", json!([k.address.to_string(), 1.5])).await;
    let entry = ok(&node, "getmempoolentry", json!([txid])).await;
    assert!(entry["fees"]["base"].as_f64().unwrap() > 0.0);
    ok(&node, "generatetoaddress", json!([1, wallet])).await;
    let tx = ok(
        &node,
        "getrawtransaction",
        json!([txid, 2, ok(&node, "getbestblockhash", json!([])).await]),
    )
    .await;
    let paid = tx["vout"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["scriptPubKey"]["address"] == json!(k.address.to_string()))
        .expect("the payment");
    assert_eq!(paid["value"], json!(1.5));
    assert!(tx["fee"].as_f64().unwrap() > 0.0);
    let unspent = ok(&node, "listunspent", json!([1])).await;
    assert!(unspent
        .as_array()
        .unwrap()
        .iter()
        .all(|u| u["confirmations"].as_u64().unwrap() >= 1));
    // More than the wallet has.
    let err = call(&node, "sendtoaddress", json!([k.address.to_string(), 1000]))
        .await
        .unwrap_err();
    assert_eq!(err.0, -6);
    node.stop().await;
}

#[tokio::test]
async fn mined_blocks_are_consensus_valid() {
    let node = start().await;
    let k = key(12);
    generate(&node, 150, &k).await;
    let (op, out) = coinbase_at(&node, 1).await;
    let tx = spend(
        &k,
        &[(op, out.clone())],
        vec![pay(&k.address, out.value.to_sat() - 2_000)],
        Sequence::MAX,
    );
    send(&node, &tx).await.unwrap();
    let hash = generate(&node, 1, &k).await.remove(0);
    let raw = ok(&node, "getblock", json!([hash, 0])).await;
    let block: bitcoin::Block =
        bitcoin::consensus::encode::deserialize(&hex::decode(raw.as_str().unwrap()).unwrap())
            .unwrap();
    assert_eq!(block.block_hash().to_string(), hash);
    assert!(block.check_merkle_root());
    assert!(block.check_witness_commitment());
    assert_eq!(block.bip34_block_height().unwrap(), 151);
    assert_eq!(block.header.bits.to_consensus(), 0x207f_ffff);
    block
        .header
        .validate_pow(bitcoin::Target::from_compact(block.header.bits))
        .expect("proof of work");
    assert_eq!(block.txdata.len(), 2);
    assert_eq!(block.txdata[1].compute_txid(), tx.compute_txid());
    // Block 151 is past the first halving (150): 25 BTC plus the fee.
    assert_eq!(
        block.txdata[0].output[0].value,
        Amount::from_sat(25 * 100_000_000 + 2_000)
    );
    // Heights 1..=149 pay 50 BTC: the coinbase at 149.
    assert_eq!(
        coinbase_at(&node, 149).await.1.value,
        Amount::from_int_btc(50)
    );
    let header = ok(&node, "getblockheader", json!([hash, true])).await;
    let prev = ok(
        &node,
        "getblockheader",
        json!([header["previousblockhash"]]),
    )
    .await;
    assert!(
        header["time"].as_u64() > prev["time"].as_u64(),
        "increasing timestamps"
    );
    assert_eq!(prev["nextblockhash"], json!(hash));
    assert_eq!(header["bits"], json!("207fffff"));
    assert_eq!(header["height"], json!(151));
    let verbose = ok(&node, "getblock", json!([hash, 2])).await;
    assert_eq!(verbose["tx"][1]["fee"], json!(0.00002));
    let info = ok(&node, "getblockchaininfo", json!([])).await;
    assert_eq!(info["chain"], json!("regtest"));
    assert_eq!(info["blocks"], json!(151));
    assert_eq!(info["initialblockdownload"], json!(false));
    let net = ok(&node, "getnetworkinfo", json!([])).await;
    assert_eq!(net["version"], json!(280000));
    assert_eq!(net["relayfee"], json!(0.00001));
    assert_eq!(net["incrementalfee"], json!(0.00001));
    // The genesis block is rust-bitcoin's regtest genesis.
    let genesis = bitcoin::blockdata::constants::genesis_block(Network::Regtest);
    assert_eq!(
        ok(&node, "getblockhash", json!([0])).await,
        json!(genesis.block_hash().to_string())
    );
    node.stop().await;
}

#[tokio::test]
async fn policy_refusals_use_bitcoinds_codes_and_reasons() {
    let node = start().await;
    let k = key(13);
    generate(&node, 103, &k).await;
    let (op, out) = coinbase_at(&node, 1).await;
    let value = out.value.to_sat();
    let refuse = |tx: &Transaction| {
        let hex = serialize_hex(tx);
        let node = &node;
        async move {
            call(node, "sendrawtransaction", json!([hex]))
                .await
                .unwrap_err()
        }
    };
    let err = call(&node, "sendrawtransaction", json!(["00ff"]))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        (
            -22,
            "TX decode failed. Make sure the tx has at least one input.".to_string()
        )
    );
    // Dust, version, fee.
    let dust = spend(
        &k,
        &[(op, out.clone())],
        vec![pay(&k.address, 329), pay(&k.address, value - 10_000)],
        Sequence::MAX,
    );
    assert_eq!(refuse(&dust).await, (-26, "dust".to_string()));
    let mut v4 = spend(
        &k,
        &[(op, out.clone())],
        vec![pay(&k.address, value - 1_000)],
        Sequence::MAX,
    );
    v4.version = transaction::Version(4);
    assert_eq!(refuse(&v4).await, (-26, "version".to_string()));
    let free = spend(
        &k,
        &[(op, out.clone())],
        vec![pay(&k.address, value - 100)],
        Sequence::MAX,
    );
    let err = refuse(&free).await;
    assert_eq!(err.0, -26);
    assert_eq!(
        err.1,
        format!("min relay fee not met, 100 < {}", free.vsize())
    );
    // Over 100 kvB: 2,500 outputs of 43 bytes.
    let big = spend(
        &k,
        &[(op, out.clone())],
        (0..2_500).map(|_| pay(&k.address, 1_000)).collect(),
        Sequence::MAX,
    );
    assert!(big.weight().to_wu() > 400_000);
    assert_eq!(refuse(&big).await, (-26, "tx-size".to_string()));
    // maxfeerate: 0.1 BTC/kvB by default; 0 lifts it.
    let greedy = spend(
        &k,
        &[(op, out.clone())],
        vec![pay(&k.address, value / 2)],
        Sequence::MAX,
    );
    let err = refuse(&greedy).await;
    assert_eq!(
        err,
        (
            -25,
            "Fee exceeds maximum configured by user (e.g. -maxtxfee, maxfeerate)".to_string()
        )
    );
    let verdict = ok(
        &node,
        "testmempoolaccept",
        json!([[serialize_hex(&greedy)]]),
    )
    .await;
    assert_eq!(verdict[0]["reject-reason"], json!("max-fee-exceeded"));
    // Missing inputs (-25), then already in the mempool, then already confirmed (-27).
    let orphan = spend(
        &k,
        &[(OutPoint::new(Txid::all_zeros(), 7), out.clone())],
        vec![pay(&k.address, value - 1_000)],
        Sequence::MAX,
    );
    assert_eq!(
        refuse(&orphan).await,
        (-25, "bad-txns-inputs-missingorspent".to_string())
    );
    let good = spend(
        &k,
        &[(op, out.clone())],
        vec![pay(&k.address, value - 1_000)],
        Sequence::MAX,
    );
    let txid = ok(&node, "sendrawtransaction", json!([serialize_hex(&good)])).await;
    // Sent again: bitcoind answers with the txid.
    assert_eq!(
        ok(&node, "sendrawtransaction", json!([serialize_hex(&good)])).await,
        txid
    );
    let verdict = ok(&node, "testmempoolaccept", json!([[serialize_hex(&good)]])).await;
    assert_eq!(verdict[0]["reject-reason"], json!("txn-already-in-mempool"));
    generate(&node, 1, &k).await;
    assert_eq!(
        refuse(&good).await,
        (-27, "Transaction already in block chain".to_string())
    );
    // Spent: gone from gettxout.
    assert!(ok(&node, "gettxout", json!([op.txid.to_string(), 0]))
        .await
        .is_null());
    node.stop().await;

    // Without full RBF, a conflict with a non-signalling transaction is refused outright.
    let node = RegtestNode::start(RegtestOptions {
        auth: RpcAuth {
            user_password: Some((USER.into(), PASSWORD.into())),
            cookie_file: None,
        },
        full_rbf: false,
        ..RegtestOptions::default()
    })
    .await
    .unwrap();
    generate(&node, 101, &k).await;
    let (op, out) = coinbase_at(&node, 1).await;
    let first = spend(
        &k,
        &[(op, out.clone())],
        vec![pay(&k.address, value - 1_000)],
        Sequence::MAX,
    );
    send(&node, &first).await.unwrap();
    let second = spend(
        &k,
        &[(op, out.clone())],
        vec![pay(&k.address, value - 10_000)],
        Sequence::MAX,
    );
    assert_eq!(
        send(&node, &second).await.unwrap_err(),
        (-26, "txn-mempool-conflict".to_string())
    );
    node.stop().await;
}

#[tokio::test]
async fn rpc_is_loopback_only_and_bodies_are_bounded() {
    let refused = RegtestNode::start(RegtestOptions {
        rpc_bind: "0.0.0.0:0".parse().unwrap(),
        auth: RpcAuth {
            user_password: Some((USER.into(), PASSWORD.into())),
            cookie_file: None,
        },
        ..RegtestOptions::default()
    })
    .await
    .unwrap_err();
    assert!(
        refused.to_string().contains("not a loopback address"),
        "{refused}"
    );
    let no_auth = RegtestNode::start(RegtestOptions::default())
        .await
        .unwrap_err();
    assert!(
        no_auth.to_string().contains("no RPC credentials"),
        "{no_auth}"
    );

    let node = RegtestNode::start(RegtestOptions {
        auth: RpcAuth {
            user_password: Some((USER.into(), PASSWORD.into())),
            cookie_file: None,
        },
        max_body_bytes: 4096,
        ..RegtestOptions::default()
    })
    .await
    .unwrap();
    let big = json!({"jsonrpc": "2.0", "id": 1, "method": "sendrawtransaction", "params": ["00".repeat(4096)]});
    let (status, _) = post(&node, Some(&format!("{USER}:{PASSWORD}")), &big.to_string()).await;
    assert_eq!(status, 413);
    // The node still serves.
    assert_eq!(ok(&node, "getblockcount", json!([])).await, json!(0));
    node.stop().await;
}

#[tokio::test]
async fn amounts_are_written_with_eight_decimals() {
    let node = start().await;
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "getnetworkinfo"}).to_string();
    let (_, text) = post(&node, Some(&format!("{USER}:{PASSWORD}")), &body).await;
    assert!(text.contains("\"relayfee\":0.00001000"), "{text}");
    node.stop().await;
}

/// `sbtc-hsm-signer regtest-node`: a process an operator can point a signer at.
#[tokio::test]
async fn regtest_node_command_serves_until_sigterm() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let cookie_path = dir.path().join("regtest.cookie");
    /// Kills the node if the test fails before it stops it.
    struct Guard(Option<std::process::Child>);
    impl Drop for Guard {
        fn drop(&mut self) {
            if let Some(mut c) = self.0.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sbtc-hsm-signer"))
        .args([
            "regtest-node",
            "--rpc-bind",
            "127.0.0.1:0",
            "--initial-blocks",
            "101",
            "--cookie-file",
        ])
        .arg(&cookie_path)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let stdout = child.stdout.take().unwrap();
    let pid = child.id() as i32;
    let mut guard = Guard(Some(child));
    let first = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .map(|_| line)
    });
    let line = tokio::time::timeout(Duration::from_secs(60), first)
        .await
        .expect("the node reports its address in time")
        .unwrap()
        .unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no url in {line:?}"));
    let addr: std::net::SocketAddr = url.trim_start_matches("http://").parse().unwrap();
    let cookie = std::fs::read_to_string(&cookie_path).unwrap();

    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "getbalance"}).to_string();
    let request = hyper::Request::post("/")
        .header("host", addr.to_string())
        .header(
            "authorization",
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(&cookie)
            ),
        )
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let text = response.into_body().collect().await.unwrap().to_bytes();
    let reply: Value = serde_json::from_slice(&text).unwrap();
    assert_eq!(
        reply["result"],
        json!(50.0),
        "101 initial blocks fund the wallet"
    );

    // SIGTERM: a clean stop that removes the cookie.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let mut status = None;
    for _ in 0..300 {
        status = guard.0.as_mut().unwrap().try_wait().unwrap();
        if status.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = status.expect("the node stops within 30 s of SIGTERM");
    guard.0 = None;
    assert!(status.success(), "{status}");
    assert!(!cookie_path.exists());
}

#[tokio::test]
async fn blocks_take_transactions_by_ancestor_fee_rate() {
    let node = start().await;
    let k = key(14);
    generate(&node, 102, &k).await;
    let (op1, out1) = coinbase_at(&node, 1).await;
    let (op2, out2) = coinbase_at(&node, 2).await;
    // A parent at ~2 sat/vB, an unrelated transaction at ~10 sat/vB, then the parent's child at
    // ~50 sat/vB: the parent and child together outbid the unrelated one.
    let parent = spend(
        &k,
        &[(op1, out1.clone())],
        vec![pay(&k.address, out1.value.to_sat() - 250)],
        Sequence::MAX,
    );
    let other = spend(
        &k,
        &[(op2, out2.clone())],
        vec![pay(&k.address, out2.value.to_sat() - 1_200)],
        Sequence::MAX,
    );
    let child_in = (
        OutPoint::new(parent.compute_txid(), 0),
        parent.output[0].clone(),
    );
    let child = spend(
        &k,
        std::slice::from_ref(&child_in),
        vec![pay(&k.address, child_in.1.value.to_sat() - 6_000)],
        Sequence::MAX,
    );
    for tx in [&parent, &other, &child] {
        send(&node, tx).await.unwrap();
    }
    let hash = generate(&node, 1, &k).await.remove(0);
    let block = ok(&node, "getblock", json!([hash, 1])).await;
    let order: Vec<String> = block["tx"].as_array().unwrap()[1..]
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    let expected: Vec<String> = [&parent, &child, &other]
        .iter()
        .map(|t| t.compute_txid().to_string())
        .collect();
    assert_eq!(order, expected);
    node.stop().await;
}

/// The signer's own bitcoind client (`BitcoindRpc`, cookie auth) reads everything it needs.
#[tokio::test]
async fn the_signers_bitcoind_client_works_against_the_node() {
    use sbtc_hsm_signer::chain::bitcoin::client::BitcoinClient;
    use sbtc_hsm_signer::chain::bitcoin::rpc::{BitcoindRpc, RpcAuth as ClientAuth};
    let dir = tempfile::tempdir().unwrap();
    let cookie = dir.path().join(".cookie");
    let node = RegtestNode::start(RegtestOptions {
        auth: RpcAuth {
            user_password: None,
            cookie_file: Some(cookie.clone()),
        },
        ..RegtestOptions::default()
    })
    .await
    .unwrap();
    let client = BitcoindRpc::with_auth(
        &node.rpc_url(),
        ClientAuth::Cookie(cookie),
        Duration::from_secs(10),
        0,
    )
    .unwrap();
    let k = key(15);
    node.mine_to(101, &k.address.script_pubkey());
    let (height, tip) = node.tip();
    assert_eq!(client.get_best_block_hash().await.unwrap(), tip);
    let header = client.get_block_header(&tip).await.unwrap().unwrap();
    assert_eq!(
        (header.height, header.confirmations),
        (u64::from(height), 1)
    );
    assert!(client
        .get_block_header(&bitcoin::BlockHash::all_zeros())
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        client.get_block(&tip).await.unwrap().unwrap().block_hash(),
        tip
    );
    assert_eq!(client.get_block_hash(101).await.unwrap(), Some(tip));
    assert_eq!(client.get_block_hash(102).await.unwrap(), None);

    let (op, out) = node.with_state(|s| {
        let hash = s.chain.hash_at(1).unwrap();
        let cb = &s.chain.record(&hash).unwrap().block.txdata[0];
        (OutPoint::new(cb.compute_txid(), 0), cb.output[0].clone())
    });
    let tx = spend(
        &k,
        &[(op, out.clone())],
        vec![pay(&k.address, out.value.to_sat() - 1_000)],
        Sequence::MAX,
    );
    let txid = tx.compute_txid();
    let accept = client
        .test_mempool_accept(std::slice::from_ref(&tx))
        .await
        .unwrap();
    assert!(accept[0].allowed, "{accept:?}");
    assert_eq!(accept[0].fee, Some(Amount::from_sat(1_000)));
    assert_eq!(client.send_raw_transaction(&tx).await.unwrap(), txid);
    let found = client
        .get_raw_transaction(&txid, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((found.tx.compute_txid(), found.block_hash), (txid, None));
    let entry = client.get_mempool_entry(&txid).await.unwrap().unwrap();
    assert_eq!(
        (entry.fee, entry.vsize),
        (Amount::from_sat(1_000), tx.vsize() as u64)
    );
    assert_eq!(
        client.get_tx_spending_prevout(&op).await.unwrap(),
        Some(txid)
    );
    assert!(client
        .get_mempool_descendants(&txid)
        .await
        .unwrap()
        .is_empty());
    let unconfirmed = client
        .get_tx_out(&OutPoint::new(txid, 0), true)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(unconfirmed.confirmations, 0);
    assert!(
        client.get_tx_out(&op, true).await.unwrap().is_none(),
        "spent in the mempool"
    );
    assert_eq!(
        client.estimate_smart_fee(6).await.unwrap(),
        Some(FeeRate::from_sat_per_kwu(250))
    );
    // A refusal keeps bitcoind's code.
    let thief = spend(
        &key(16),
        &[(op, out.clone())],
        vec![pay(&key(16).address, out.value.to_sat() - 5_000)],
        Sequence::MAX,
    );
    let err = client.send_raw_transaction(&thief).await.unwrap_err();
    assert_eq!(err.rpc_code(), Some(-26), "{err}");

    let mined = node.mine(1)[0];
    let confirmed = client
        .get_raw_transaction(&txid, Some(&mined))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (confirmed.block_hash, confirmed.confirmations),
        (Some(mined), 1)
    );
    assert!(client
        .get_raw_transaction(&txid, None)
        .await
        .unwrap()
        .is_none());
    let utxo = client
        .get_tx_out(&OutPoint::new(txid, 0), false)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (utxo.confirmations, utxo.value, utxo.coinbase),
        (1, out.value - Amount::from_sat(1_000), false)
    );
    let info = client.get_blockchain_info().await.unwrap();
    assert_eq!(
        (info.network, info.blocks, info.best_block_hash),
        (Network::Regtest, 102, mined)
    );
    let net = client.get_network_info().await.unwrap();
    assert_eq!(
        (net.version, net.relay_fee),
        (280_000, FeeRate::from_sat_per_kwu(250))
    );
    node.stop().await;
}

#[tokio::test]
async fn wallet_spends_its_own_change_and_sends_many() {
    let node = start().await;
    let wallet = ok(&node, "getnewaddress", json!([null, "bech32m"])).await;
    assert!(wallet.as_str().unwrap().starts_with("bcrt1p"), "{wallet}");
    // One spendable coinbase: the second payment must spend the first one's change.
    ok(&node, "generatetoaddress", json!([101, wallet])).await;
    let a = key(17).address.to_string();
    let b = key(18).address.to_string();
    let first = ok(&node, "sendtoaddress", json!([a, 1])).await;
    let second = ok(&node, "sendtoaddress", json!([b, 2])).await;
    let entry = ok(&node, "getmempoolentry", json!([second])).await;
    assert_eq!(entry["depends"], json!([first]));
    let many = ok(
        &node,
        "sendmany",
        json!(["", {a.clone(): 0.1, b.clone(): 0.2}]),
    )
    .await;
    let tx = ok(&node, "getrawtransaction", json!([many, 1])).await;
    assert_eq!(
        tx["vout"].as_array().unwrap().len(),
        3,
        "two payments and change"
    );
    let err = call(&node, "sendmany", json!(["", {a.clone(): 1000}]))
        .await
        .unwrap_err();
    assert_eq!(err.0, -6);
    // getbalance counts the wallet's own unconfirmed change.
    let balance = ok(&node, "getbalance", json!([])).await.as_f64().unwrap();
    assert!(balance > 46.69 && balance < 46.7, "{balance}");
    node.stop().await;
}
