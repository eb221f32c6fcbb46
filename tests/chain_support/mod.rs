//! Bitcoin nodes for the chain tests: the devnet's regtest node, always, and a real
//! `bitcoind -regtest` when BITCOIND_EXE points at one, each reached through the signer's own
//! RPC client. Plus keys and transactions the tests spend with.

#![allow(dead_code)]

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use bitcoin::{
    key::{Keypair, TapTweak},
    secp256k1::{Message, Secp256k1},
    sighash::{Prevouts, SighashCache, TapSighashType},
    transaction::Version,
    Address, Amount, Network, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Witness,
};
use sbtc_hsm_signer::chain::bitcoin::{
    client::BitcoinClient,
    rpc::{BitcoindRpc, RpcAuth},
};
use sbtc_hsm_signer::devnet::regtest::{self, RegtestNode, RegtestOptions};

/// One node under test.
pub struct TestNode {
    pub name: &'static str,
    pub rpc: std::sync::Arc<BitcoindRpc>,
    /// The devnet node, when it is ours (for what bitcoind has no RPC for).
    pub ours: Option<RegtestNode>,
    child: Option<(Child, tempfile::TempDir)>,
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some((child, _)) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl TestNode {
    pub fn is_ours(&self) -> bool {
        self.ours.is_some()
    }
}

/// Our regtest node on a free loopback port, user/password auth.
pub async fn ours() -> TestNode {
    let (user, password) = ("sbtc-test", "regtest node password");
    let node = RegtestNode::start(RegtestOptions {
        auth: regtest::RpcAuth {
            user_password: Some((user.into(), password.into())),
            cookie_file: None,
        },
        ..RegtestOptions::default()
    })
    .await
    .unwrap();
    let rpc = BitcoindRpc::with_auth(
        &node.rpc_url(),
        RpcAuth::UserPassword {
            user: user.into(),
            password: zeroize::Zeroizing::new(password.into()),
        },
        Duration::from_secs(10),
        1,
    )
    .unwrap();
    TestNode {
        name: "regtest node",
        rpc: std::sync::Arc::new(rpc),
        ours: Some(node),
        child: None,
    }
}

/// A real bitcoind, when BITCOIND_EXE is set.
pub async fn bitcoind() -> Option<TestNode> {
    let exe = std::env::var_os("BITCOIND_EXE")?;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = Command::new(exe)
        .arg("-regtest")
        .arg(format!("-datadir={}", dir.path().display()))
        .arg(format!("-rpcport={port}"))
        .arg("-rpcbind=127.0.0.1")
        .arg("-rpcallowip=127.0.0.1")
        .arg("-listen=0")
        .arg("-server=1")
        .arg("-fallbackfee=0.0002")
        .arg("-txindex=0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("BITCOIND_EXE does not start");
    let cookie = dir.path().join("regtest").join(".cookie");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cookie.exists() {
        assert!(
            Instant::now() < deadline,
            "bitcoind wrote no cookie in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rpc = BitcoindRpc::with_auth(
        &format!("http://127.0.0.1:{port}"),
        RpcAuth::Cookie(cookie),
        Duration::from_secs(30),
        20,
    )
    .unwrap();
    // Warm-up (-28) is retried by the client; a wallet is needed for the wallet calls.
    rpc.get_blockchain_info().await.unwrap();
    rpc.call_value("createwallet", vec![serde_json::json!("test")])
        .await
        .unwrap();
    Some(TestNode {
        name: "bitcoind",
        rpc: std::sync::Arc::new(rpc),
        ours: None,
        child: Some((child, dir)),
    })
}

/// Every node to run a client test against.
pub async fn all_nodes() -> Vec<TestNode> {
    let mut nodes = vec![ours().await];
    if let Some(b) = bitcoind().await {
        nodes.push(b);
    }
    nodes
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A key the test holds, and its key-path P2TR address.
pub struct TestKey {
    pub keypair: Keypair,
    pub address: Address,
}

impl TestKey {
    pub fn new(seed: u8) -> TestKey {
        let secp = Secp256k1::new();
        let keypair = Keypair::from_seckey_slice(&secp, &[seed.max(1); 32]).unwrap();
        let (x, _) = keypair.x_only_public_key();
        TestKey {
            keypair,
            address: Address::p2tr(&secp, x, None, Network::Regtest),
        }
    }

    pub fn script(&self) -> ScriptBuf {
        self.address.script_pubkey()
    }
}

/// Mines 101 blocks to the node's wallet, so it has a mature coinbase to spend.
pub async fn mature_wallet(node: &TestNode) {
    let to = node.rpc.get_new_address().await.unwrap();
    node.rpc.generate_to_address(101, &to).await.unwrap();
}

/// Sends `amount` from the node's wallet to `key`, mines it, and returns the output.
pub async fn fund(node: &TestNode, key: &TestKey, amount: Amount) -> (OutPoint, TxOut) {
    let txid = node
        .rpc
        .send_to_address(&key.address, amount)
        .await
        .unwrap();
    let miner = node.rpc.get_new_address().await.unwrap();
    let block = node.rpc.generate_to_address(1, &miner).await.unwrap()[0];
    let tx = node
        .rpc
        .get_raw_transaction(&txid, Some(&block))
        .await
        .unwrap()
        .unwrap()
        .tx;
    let vout = tx
        .output
        .iter()
        .position(|o| o.script_pubkey == key.script())
        .unwrap();
    (
        OutPoint {
            txid,
            vout: vout as u32,
        },
        tx.output[vout].clone(),
    )
}

/// A key-path spend of `prevout` by `key` paying `outputs`, signed (or, with `garbage`, with a
/// signature that does not verify).
pub fn spend(
    key: &TestKey,
    prevout: OutPoint,
    spent: &TxOut,
    outputs: Vec<TxOut>,
    garbage: bool,
) -> Transaction {
    let mut tx = Transaction {
        version: Version::TWO,
        lock_time: bitcoin::absolute::LockTime::ZERO,
        input: vec![TxIn {
            previous_output: prevout,
            script_sig: ScriptBuf::new(),
            sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
            witness: Witness::new(),
        }],
        output: outputs,
    };
    let secp = Secp256k1::new();
    let sighash = SighashCache::new(&tx)
        .taproot_key_spend_signature_hash(0, &Prevouts::All(&[spent]), TapSighashType::Default)
        .unwrap();
    let tweaked = key.keypair.tap_tweak(&secp, None);
    let mut msg = sighash.to_byte_array_for_test();
    if garbage {
        msg[0] ^= 1;
    }
    let sig = secp.sign_schnorr_no_aux_rand(&Message::from_digest(msg), &tweaked.to_keypair());
    tx.input[0].witness.push(sig.as_ref());
    tx
}

trait SighashBytes {
    fn to_byte_array_for_test(&self) -> [u8; 32];
}

impl SighashBytes for bitcoin::TapSighash {
    fn to_byte_array_for_test(&self) -> [u8; 32] {
        use bitcoin::hashes::Hash as _;
        self.to_byte_array()
    }
}
