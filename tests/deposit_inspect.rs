//! Black-box tests of `deposit inspect`: the real binary, deposits built with the library's own
//! builders (as the wallet library builds them), a loopback stand-in for bitcoind's JSON-RPC
//! where a node is needed, and the exit codes operators script against (0 accepted, 1 refused,
//! 2 cannot tell).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use bitcoin::consensus::encode::serialize_hex;
use bitcoin::{Amount, ScriptBuf};
use sbtc_hsm_signer::chain::bitcoin::deposit::testing::{
    submission, wallet_submission, x_only_key,
};
use sbtc_hsm_signer::chain::bitcoin::deposit::{
    build_deposit_leaf, build_reclaim_leaf, standard_user_script, DepositSubmission,
};
use sbtc_hsm_signer::chain::stacks::address::Principal;
use serde_json::{json, Value};

fn inspect(config: Option<&Path>, args: &[String]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sbtc-hsm-signer"));
    cmd.env_remove("SBTC_HSM_SIGNER_CONFIG")
        .env_remove("SBTC_LOG");
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    cmd.args(["deposit", "inspect"]).args(args);
    cmd.output().expect("run sbtc-hsm-signer")
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exited, not killed")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}{}", stdout(out), stderr(out)))
}

fn testnet() -> Principal {
    Principal::standard(26, [0x5a; 20]).unwrap()
}

fn deposit_to(recipient: &Principal) -> DepositSubmission {
    wallet_submission(
        Amount::from_sat(150_000),
        Amount::from_sat(3_000),
        recipient,
        x_only_key(1),
        500,
    )
}

/// The arguments for `s`, with `tx` as the transaction argument and `extra` after.
fn args_with(s: &DepositSubmission, tx: String, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "--tx".to_owned(),
        tx,
        "--vout".to_owned(),
        s.outpoint.vout.to_string(),
        "--deposit-script".to_owned(),
        hex::encode(s.deposit_script.as_bytes()),
        "--reclaim-script".to_owned(),
        hex::encode(s.reclaim_script.as_bytes()),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

fn args(s: &DepositSubmission, extra: &[&str]) -> Vec<String> {
    args_with(s, serialize_hex(&s.transaction), extra)
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("signer.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_good_deposit_without_a_node_is_accepted_and_the_skipped_checks_are_named() {
    let s = deposit_to(&testnet());
    let out = inspect(None, &args(&s, &["--network", "regtest"]));
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    for expected in [
        "150000 sats",
        "3000 sats",
        &testnet().to_string(),
        "500 blocks",
        &x_only_key(1).to_string(),
        "accepted",
        "unknown_signers_key",
        "output_missing_or_spent",
        "coinbase",
        "node_wrong_network",
    ] {
        assert!(text.contains(expected), "no {expected:?} in:\n{text}");
    }

    let out = inspect(None, &args(&s, &["--network", "testnet", "--json"]));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let j = json_of(&out);
    assert_eq!(j["verdict"], "accepted");
    assert_eq!(j["amount_sats"], 150_000);
    assert_eq!(j["max_fee_sats"], 3_000);
    assert_eq!(j["recipient"], testnet().to_string());
    assert!(j["recipient"].as_str().unwrap().starts_with("ST"));
    assert_eq!(j["lock_time_blocks"], 500);
    assert_eq!(j["signers_key"], x_only_key(1).to_string());
    assert_eq!(j["rule"], Value::Null);
    assert_eq!(
        j["skipped"],
        json!([
            "unknown_signers_key",
            "node_wrong_network",
            "output_missing_or_spent",
            "coinbase"
        ])
    );
}

#[test]
fn refused_deposits_exit_1_with_the_rule() {
    let good = deposit_to(&testnet());
    let disabled = {
        // 10 blocks with bit 31 set: the lock time is disabled.
        let mut reclaim = vec![0x05, 0x0a, 0x00, 0x00, 0x80, 0x00, 0xb2];
        reclaim.extend_from_slice(standard_user_script(x_only_key(8)).as_bytes());
        submission(
            Amount::from_sat(150_000),
            good.deposit_script.clone(),
            ScriptBuf::from_bytes(reclaim),
        )
    };
    let op_success = {
        let mut user = standard_user_script(x_only_key(8)).into_bytes();
        user.push(0x50);
        submission(
            Amount::from_sat(150_000),
            good.deposit_script.clone(),
            build_reclaim_leaf(500, &ScriptBuf::from_bytes(user)),
        )
    };
    let mut wrong_vout = good.clone();
    wrong_vout.outpoint.vout = 0;
    let contract = Principal::contract(22, [0x5a; 20], "vault").unwrap();
    let mainnet_contract = submission(
        Amount::from_sat(150_000),
        build_deposit_leaf(Amount::from_sat(3_000), &contract, x_only_key(1)),
        good.reclaim_script.clone(),
    );
    for (s, rule) in [
        (
            deposit_to(&Principal::standard(22, [1; 20]).unwrap()),
            "wrong_network",
        ),
        (mainnet_contract, "wrong_network"),
        (disabled, "lock_time_disabled"),
        (op_success, "op_success"),
        (wrong_vout, "output_mismatch"),
    ] {
        let out = inspect(None, &args(&s, &["--network", "regtest", "--json"]));
        assert_eq!(code(&out), 1, "{rule}: {}{}", stdout(&out), stderr(&out));
        let j = json_of(&out);
        assert_eq!(j["verdict"], "refused", "{j}");
        assert_eq!(j["rule"], rule, "{j}");
        assert!(!j["message"].as_str().unwrap().is_empty());
        let out = inspect(None, &args(&s, &["--network", "regtest"]));
        assert_eq!(code(&out), 1);
        assert!(
            stdout(&out).contains(&format!("refused by rule {rule}")),
            "{}",
            stdout(&out)
        );
    }
}

#[test]
fn usage_and_config_errors_exit_2_and_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let s = deposit_to(&testnet());

    let out = inspect(None, &args(&s, &[]));
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("--network"), "{}", stderr(&out));

    let txid = s.outpoint.txid.to_string();
    let out = inspect(None, &args_with(&s, txid, &["--network", "regtest"]));
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("[bitcoin]"), "{}", stderr(&out));

    let mut bad_script = args(&s, &["--network", "regtest"]);
    bad_script[5] = "not hex".into();
    let out = inspect(None, &bad_script);
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("--deposit-script"),
        "{}",
        stderr(&out)
    );

    let out = inspect(
        None,
        &args_with(&s, "00ff".into(), &["--network", "regtest"]),
    );
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("neither a txid"), "{}", stderr(&out));

    // A config without [bitcoin] and no --network.
    let config = write_config(dir.path(), "");
    let out = inspect(Some(&config), &args(&s, &[]));
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("[bitcoin]"), "{}", stderr(&out));

    let out = inspect(Some(&dir.path().join("missing.toml")), &args(&s, &[]));
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("cannot read config"),
        "{}",
        stderr(&out)
    );
}

/// A port on loopback that nothing listens on.
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn bitcoin_config(dir: &Path, port: u16) -> PathBuf {
    write_config(
        dir,
        &format!(
            "[bitcoin]\nnetwork = \"regtest\"\nrpc_url = \"http://127.0.0.1:{port}\"\n\
             rpc_retries = 0\nrpc_timeout_secs = 5\n"
        ),
    )
}

#[test]
fn an_unreachable_node_exits_2_and_the_config_gives_the_network() {
    let dir = tempfile::tempdir().unwrap();
    let config = bitcoin_config(dir.path(), closed_port());
    let out = inspect(Some(&config), &args(&deposit_to(&testnet()), &[]));
    assert_eq!(code(&out), 2, "{}{}", stdout(&out), stderr(&out));
    assert!(
        stderr(&out).contains("not the depositor's fault"),
        "{}",
        stderr(&out)
    );
    // The no-node checks run first, on the config's network: a mainnet recipient is refused.
    let out = inspect(
        Some(&config),
        &args(&deposit_to(&Principal::standard(22, [1; 20]).unwrap()), &[]),
    );
    assert_eq!(code(&out), 1, "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("wrong_network"), "{}", stdout(&out));
}

/// A loopback stand-in for bitcoind's JSON-RPC: regtest, the deposit transaction only in
/// `block` (no txindex), and its output unspent with 6 confirmations. Serves at most
/// `connections` connections within 60 seconds.
fn fake_bitcoind(s: &DepositSubmission, block: &str, connections: usize) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let tx_hex = serialize_hex(&s.transaction);
    let script = hex::encode(s.transaction.output[1].script_pubkey.as_bytes());
    let block = block.to_owned();
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut served = 0;
        while served < connections && Instant::now() < deadline {
            match listener.accept() {
                Ok((stream, _)) => {
                    served += 1;
                    let _ = answer(stream, &tx_hex, &script, &block);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    port
}

fn answer(mut stream: TcpStream, tx_hex: &str, script: &str, block: &str) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    let body = loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        request.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&request).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if request.len() >= end + 4 + length {
                break request[end + 4..end + 4 + length].to_vec();
            }
        }
        if request.len() > 1 << 20 {
            return Ok(());
        }
    };
    let call: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let params = call["params"].as_array().cloned().unwrap_or_default();
    let (result, error) = match call["method"].as_str().unwrap_or("") {
        "getblockchaininfo" => (
            json!({"chain": "regtest", "blocks": 120, "bestblockhash": "00".repeat(32),
                   "initialblockdownload": false, "pruned": false}),
            Value::Null,
        ),
        "getrawtransaction" if params.get(2).and_then(Value::as_str) == Some(block) => (
            json!({"hex": tx_hex, "blockhash": block, "confirmations": 6}),
            Value::Null,
        ),
        "getrawtransaction" => (
            Value::Null,
            json!({"code": -5, "message": "No such mempool transaction. Use -txindex or provide a block hash to enable blockchain transaction queries."}),
        ),
        "gettxout" => (
            json!({"bestblock": "00".repeat(32), "confirmations": 6, "value": 0.0015,
                   "scriptPubKey": {"hex": script}, "coinbase": false}),
            Value::Null,
        ),
        _ => (
            Value::Null,
            json!({"code": -32601, "message": "Method not found"}),
        ),
    };
    let body = json!({"result": result, "error": error, "id": call["id"]}).to_string();
    let status = if error.is_null() {
        "200 OK"
    } else {
        "500 Internal Server Error"
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

#[test]
fn a_txid_is_fetched_from_bitcoind_in_the_given_block() {
    let dir = tempfile::tempdir().unwrap();
    let s = deposit_to(&testnet());
    let block = "11".repeat(32);
    let port = fake_bitcoind(&s, &block, 16);
    let config = bitcoin_config(dir.path(), port);
    let txid = s.outpoint.txid.to_string();

    // Without --block: bitcoind without txindex cannot find it; the error says what to pass.
    let out = inspect(Some(&config), &args_with(&s, txid.clone(), &[]));
    assert_eq!(code(&out), 2, "{}{}", stdout(&out), stderr(&out));
    assert!(stderr(&out).contains("--block"), "{}", stderr(&out));

    let out = inspect(
        Some(&config),
        &args_with(&s, txid, &["--block", &block, "--json"]),
    );
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    let j = json_of(&out);
    assert_eq!(j["verdict"], "accepted");
    assert_eq!(j["confirmations"], 6);
    assert_eq!(j["amount_sats"], 150_000);
    // The node checks ran; only the key check (no [storage]) was skipped.
    assert_eq!(j["skipped"], json!(["unknown_signers_key"]));
}

/// The whole path against the devnet's regtest node: its wallet pays a wallet-built deposit,
/// and `deposit inspect --tx <txid>` finds it in the mempool, then (mined) only with --block.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposit_paid_on_the_regtest_node_is_inspected_by_txid() {
    use sbtc_hsm_signer::chain::bitcoin::deposit::deposit_output_script;
    use sbtc_hsm_signer::chain::bitcoin::BitcoinClient;
    use sbtc_hsm_signer::devnet::regtest::{RegtestNode, RegtestOptions, RpcAuth};

    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("rpc-password");
    std::fs::write(&password, "deposit inspect test\n").unwrap();
    std::fs::set_permissions(
        &password,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let node = RegtestNode::start(RegtestOptions {
        auth: RpcAuth {
            user_password: Some(("devnet".into(), "deposit inspect test".into())),
            cookie_file: None,
        },
        ..RegtestOptions::default()
    })
    .await
    .expect("the regtest node starts");
    node.mine(101);
    let config = write_config(
        dir.path(),
        &format!(
            "[bitcoin]\nnetwork = \"regtest\"\nrpc_url = \"{}\"\nrpc_user = \"devnet\"\n\
             rpc_password_file = \"{}\"\nrpc_retries = 0\n",
            node.rpc_url(),
            password.display()
        ),
    );

    let template = deposit_to(&testnet());
    let address = bitcoin::Address::from_script(
        &deposit_output_script(&template.deposit_script, &template.reclaim_script),
        bitcoin::Network::Regtest,
    )
    .unwrap();
    let txid = node
        .send_to_address(&address, Amount::from_sat(150_000))
        .expect("the node wallet pays the deposit");
    let loaded = sbtc_hsm_signer::config::Config::load(&config).unwrap();
    let client =
        sbtc_hsm_signer::chain::bitcoin::BitcoindRpc::new(loaded.bitcoin.as_ref().unwrap())
            .unwrap();
    let tx = client
        .get_raw_transaction(&txid, None)
        .await
        .unwrap()
        .expect("in the mempool")
        .tx;
    let vout = tx
        .output
        .iter()
        .position(|o| o.script_pubkey == address.script_pubkey())
        .unwrap() as u32;
    let mut paid = template.clone();
    paid.outpoint = bitcoin::OutPoint::new(txid, vout);

    let run = |extra: Vec<String>| {
        let config = config.clone();
        let args = args_with(&paid, txid.to_string(), &[]);
        tokio::task::spawn_blocking(move || {
            let mut args = args;
            args.extend(extra);
            inspect(Some(&config), &args)
        })
    };
    let out = run(vec!["--json".into()]).await.unwrap();
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    let j = json_of(&out);
    assert_eq!(j["verdict"], "accepted");
    assert_eq!(j["confirmations"], 0, "in the mempool");
    assert_eq!(j["amount_sats"], 150_000);

    let block = node.mine(1)[0];
    let out = run(vec![]).await.unwrap();
    assert_eq!(code(&out), 2, "{}{}", stdout(&out), stderr(&out));
    assert!(stderr(&out).contains("--block"), "{}", stderr(&out));
    let out = run(vec!["--block".into(), block.to_string(), "--json".into()])
        .await
        .unwrap();
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    assert_eq!(json_of(&out)["confirmations"], 1);
}
