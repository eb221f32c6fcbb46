//! The devnet end to end: the real binary starts one `run` process per signer, they form a
//! threshold key over mTLS peer links, verify it through Bitcoin Core's script verifier, sign a
//! demo batch, and every child is gone afterwards. Plus a node's clean stop on SIGTERM and its
//! clear error when peers never come up.

use std::{
    io::Read,
    os::unix::fs::PermissionsExt,
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

mod storage_support;

const BIN: &str = env!("CARGO_BIN_EXE_sbtc-hsm-signer");

/// Waits for `child` at most `limit`; kills it and fails the test past that.
fn wait_bounded(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn read_pipe(p: Option<impl Read>) -> String {
    let mut s = String::new();
    if let Some(mut p) = p {
        p.read_to_string(&mut s).expect("read output");
    }
    s
}

/// Runs `devnet` with `args` in `work`; returns (status, stdout, stderr).
fn devnet(work: &Path, args: &[&str]) -> (ExitStatus, String, String) {
    let mut child = Command::new(BIN)
        .arg("devnet")
        .args(args)
        .arg("--work-dir")
        .arg(work)
        .env_remove("SBTC_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start devnet");
    // Output is small (a few KiB): the pipes cannot fill up before the process exits.
    let status = wait_bounded(&mut child, Duration::from_secs(240));
    (
        status,
        read_pipe(child.stdout.take()),
        read_pipe(child.stderr.take()),
    )
}

fn alive(pid: u32) -> bool {
    // A zombie still has a /proc entry; count only processes that can run.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

#[test]
fn devnet_forms_a_verified_threshold_key_signs_the_batch_and_leaves_no_process() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("devnet");
    let (status, out, err) = devnet(
        &work,
        // One set, both kinds of custody a devnet process can hold: keystores and SoftHSM2.
        &[
            "--signers",
            "3",
            "--threshold",
            "2",
            "--batch",
            "5",
            "--backend",
            "mixed",
        ],
    );
    assert!(status.success(), "devnet failed: {status}\n{out}\n{err}");

    let key = out
        .lines()
        .find_map(|l| l.strip_prefix("aggregate key: "))
        .unwrap_or_else(|| panic!("no aggregate key in:\n{out}"));
    assert_eq!(key.len(), 66, "{key}");
    assert!(key.starts_with("02") || key.starts_with("03"), "{key}");
    assert!(hex::decode(key).is_ok(), "{key}");
    assert!(out.contains("verified by all 3 signers"), "{out}");
    assert!(out.contains("signatures verified: 5/5"), "{out}");
    assert!(
        out.contains(
            "stacks: every signer read the sBTC registry's signer set (3 keys, threshold 2) from the Stacks node"
        ),
        "{out}"
    );
    // The peg's first tenure: the bootstrap rotate-keys-wrapper, signed by a threshold of the
    // signers' multisig over the peer links, mined by the Stacks node.
    assert!(
        out.contains(
            "stacks: rotate-keys-wrapper signed by the signers' multisig registered the key in the sBTC registry"
        ),
        "{out}"
    );

    // Every signer agrees on the key, and its shares were verified.
    for i in 0..3 {
        let result: serde_json::Value = serde_json::from_slice(
            &std::fs::read(work.join(format!("signer-{i}/result.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(result["aggregate_key"], key, "signer {i}");
        assert_eq!(result["dkg_status"], "verified", "signer {i}");
        // Each signer recorded the verification round and the batch round on disk before it
        // sent their nonces, so a restart cannot answer them again.
        let ledger =
            std::fs::read_to_string(work.join(format!("signer-{i}/nonce-ledger"))).unwrap();
        let rounds: std::collections::HashSet<&str> =
            ledger.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(rounds.len() >= 2, "signer {i} nonce ledger: {ledger:?}");
        // Even signers hold a keystore (passphrase file), odd ones a SoftHSM2 token (PIN file).
        let secret_file = if i % 2 == 0 {
            assert!(work.join(format!("signer-{i}/keystore.json")).is_file());
            work.join(format!("signer-{i}/passphrase"))
        } else {
            assert!(work.join(format!("signer-{i}/tokens")).is_dir());
            work.join(format!("signer-{i}/pin"))
        };
        let mode = std::fs::metadata(&secret_file)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o077,
            0,
            "secret file of signer {i} is readable by others"
        );
        // The passphrase or PIN never reaches a log.
        let passphrase = std::fs::read_to_string(&secret_file).unwrap();
        let log = std::fs::read_to_string(work.join(format!("signer-{i}/signer.log"))).unwrap();
        assert!(
            !log.contains(passphrase.trim()),
            "signer {i} logged its passphrase"
        );
        assert!(!out.contains(passphrase.trim()) && !err.contains(passphrase.trim()));
    }

    let pids: Vec<u32> = std::fs::read_to_string(work.join("pids"))
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 3);
    for pid in pids {
        assert!(!alive(pid), "signer process {pid} is still running");
    }
}

/// A devnet of 2 signers without a batch, only to get two ready-made signer configs.
fn two_signer_configs(work: &Path) {
    let (status, out, err) = devnet(
        work,
        &["--signers", "2", "--threshold", "2", "--batch", "0"],
    );
    assert!(status.success(), "devnet failed: {status}\n{out}\n{err}");
}

#[test]
fn a_node_whose_peers_never_come_up_fails_naming_them_and_stops_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("devnet");
    two_signer_configs(&work);
    let config = work.join("signer-0/signer.toml");
    // The devnet's regtest node stopped with the devnet: this signer runs without Bitcoin.
    let (head, tail) = split_off_bitcoin(&config);
    std::fs::write(&config, format!("{head}{tail}")).unwrap();
    let result: serde_json::Value =
        serde_json::from_slice(&std::fs::read(work.join("signer-1/result.json")).unwrap()).unwrap();
    let peer_identity = result["identity"].as_str().unwrap().to_string();

    // Without --ephemeral, in-memory state is refused before anything starts.
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .args(["run", "--connect-timeout", "1", "--exit-when-done"])
        .env_remove("SBTC_LOG")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("url = \"memory\" loses") && stderr.contains("--ephemeral"),
        "{stderr}"
    );
    assert!(!stderr.contains("listening"), "{stderr}");

    // Alone, with a short connect timeout: a clear error naming the missing peer.
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .args([
            "run",
            "--connect-timeout",
            "1",
            "--exit-when-done",
            "--ephemeral",
        ])
        .env_remove("SBTC_LOG")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no link to 1 of 1 peers"), "{stderr}");
    assert!(stderr.contains(&peer_identity), "{stderr}");

    // Waiting for peers, SIGTERM stops it promptly with the signal exit code.
    // It prints "listening" once custody is open and the signal handlers are in place.
    let (mut child, stderr_pipe, seen) = serve_until(&config, "listening");
    // SAFETY: plain kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let status = wait_bounded(&mut child, Duration::from_secs(20));
    let stderr = seen + &read_pipe(Some(stderr_pipe));
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("shutting down"), "{stderr}");
}

#[test]
fn devnet_on_softhsm_tokens_forms_and_verifies_a_key() {
    if !Path::new("/usr/lib/softhsm/libsofthsm2.so").exists() {
        storage_support::skip_or_fail(
            "devnet_on_softhsm_tokens_forms_and_verifies_a_key",
            "SoftHSM2 is not installed (apt-get install softhsm2)",
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("devnet");
    let (status, out, err) = devnet(
        &work,
        &[
            "--backend",
            "softhsm",
            "--signers",
            "3",
            "--threshold",
            "2",
            "--batch",
            "3",
        ],
    );
    assert!(status.success(), "devnet failed: {status}\n{out}\n{err}");
    assert!(out.contains("verified by all 3 signers"), "{out}");
    assert!(out.contains("signatures verified: 3/3"), "{out}");
    // Each signer used its own token, in its own token dir.
    for i in 0..3 {
        let log = std::fs::read_to_string(work.join(format!("signer-{i}/signer.log"))).unwrap();
        assert!(
            log.contains(&format!("devnet-signer-{i}")),
            "signer {i} did not log in to its token:\n{log}"
        );
        assert!(work.join(format!("signer-{i}/tokens")).is_dir());
    }
}

/// With `--postgres`, every signer keeps its shares in a database of its own, and the operators'
/// query finds the verified key there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devnet_on_postgres_stores_verified_shares_per_signer() {
    let Some(admin_url) =
        storage_support::pg_url_or_skip("devnet_on_postgres_stores_verified_shares_per_signer")
    else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("devnet");
    let (status, out, err) = {
        let work = work.clone();
        let admin_url = admin_url.clone();
        tokio::task::spawn_blocking(move || {
            devnet(
                &work,
                &[
                    "--postgres",
                    &admin_url,
                    "--signers",
                    "3",
                    "--threshold",
                    "2",
                    "--batch",
                    "2",
                ],
            )
        })
        .await
        .unwrap()
    };
    assert!(status.success(), "devnet failed: {status}\n{out}\n{err}");
    let key = out
        .lines()
        .find_map(|l| l.strip_prefix("aggregate key: "))
        .unwrap()
        .to_string();
    let (admin, conn) = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    for i in 0..3 {
        let config = std::fs::read_to_string(work.join(format!("signer-{i}/signer.toml"))).unwrap();
        let url = config
            .lines()
            .find_map(|l| l.strip_prefix("url = \""))
            .map(|u| u.trim_end_matches('"').to_string())
            .unwrap();
        let name = url.rsplit('/').next().unwrap().to_string();
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        let conn = tokio::spawn(conn);
        let rows = client
            .query(
                "SELECT aggregate_key FROM sbtc_signer.dkg_shares WHERE dkg_shares_status = 'verified' ORDER BY created_at DESC;",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(rows.len(), 1, "signer {i}");
        let stored: Vec<u8> = rows[0].get(0);
        assert_eq!(hex::encode(stored), key, "signer {i}");
        drop(client);
        let _ = conn.await;
        admin
            .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
            .await
            .unwrap();
    }
}

#[test]
fn ctrl_c_stops_the_devnet_and_every_signer() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("devnet");
    // A batch big enough that the signers are still busy when the signal comes.
    let mut child = Command::new(BIN)
        .args([
            "devnet",
            "--signers",
            "3",
            "--threshold",
            "2",
            "--batch",
            "5000",
        ])
        .arg("--work-dir")
        .arg(&work)
        .env_remove("SBTC_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pids_file = work.join("pids");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !pids_file.exists() {
        assert!(
            Instant::now() < deadline,
            "the devnet never started its signers"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the devnet exited early"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let pids: Vec<u32> = std::fs::read_to_string(&pids_file)
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 3);
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: plain kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let status = wait_bounded(&mut child, Duration::from_secs(30));
    let stderr = read_pipe(child.stderr.take());
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("stopping the signers"), "{stderr}");
    for pid in pids {
        assert!(!alive(pid), "signer process {pid} outlived the devnet");
    }
}

/// A devnet signer config cut around its `[bitcoin]` section: what comes before, and everything
/// from `[storage]` on.
fn split_off_bitcoin(config: &Path) -> (String, String) {
    let text = std::fs::read_to_string(config).unwrap();
    let (head, rest) = text.split_once("[bitcoin]").unwrap();
    let (_, tail) = rest.split_once("[storage]").unwrap();
    (head.to_string(), format!("[storage]{tail}"))
}

/// Starts `run --ephemeral` on `config` (peers never come: it waits) and reads its stderr until
/// `needle` (bounded); returns the child, the rest of its stderr and what was read.
fn serve_until(
    config: &Path,
    needle: &str,
) -> (
    std::process::Child,
    std::io::BufReader<std::process::ChildStderr>,
    String,
) {
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(config)
        .args(["run", "--connect-timeout", "600", "--ephemeral"])
        .env_remove("SBTC_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr_pipe = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !seen.contains(needle) {
        assert!(Instant::now() < deadline, "no `{needle}` in 60 s: {seen}");
        let mut line = String::new();
        if std::io::BufRead::read_line(&mut stderr_pipe, &mut line).unwrap() == 0 {
            panic!("node exited before `{needle}`: {seen}");
        }
        seen.push_str(&line);
    }
    (child, stderr_pipe, seen)
}

/// One HTTP/1.1 request to 127.0.0.1:`port`; returns the status line and the body.
fn http(port: u16, request: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

#[test]
fn a_running_signer_follows_its_bitcoind_and_serves_deposit_intake() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("devnet");
    two_signer_configs(&work);

    // A bitcoind stand-in of its own: the `regtest-node` command, cookie auth, 120 blocks.
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (rpc_port, api_port) = (free(), free());
    let cookie = tmp.path().join("node.cookie");
    let mut node = Command::new(BIN)
        .args([
            "regtest-node",
            "--rpc-bind",
            &format!("127.0.0.1:{rpc_port}"),
        ])
        .arg("--cookie-file")
        .arg(&cookie)
        .args(["--initial-blocks", "120"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut node_out = std::io::BufReader::new(node.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut node_out, &mut line).unwrap();
    assert!(line.contains("height 120"), "{line}");

    // Signer 0 on that node, with [api]; its peer never comes, so it serves while it waits.
    let config = work.join("signer-0/signer.toml");
    let (head, tail) = split_off_bitcoin(&config);
    std::fs::write(
        &config,
        format!(
            "{head}[bitcoin]\nnetwork = \"regtest\"\nrpc_url = \"http://127.0.0.1:{rpc_port}\"\n\
             rpc_cookie_file = \"{}\"\n[api]\nlisten = \"127.0.0.1:{api_port}\"\n{tail}",
            cookie.display()
        ),
    )
    .unwrap();
    let (mut child, _stderr, seen) = serve_until(&config, "deposit intake: POST");
    assert!(
        seen.contains("at height 120"),
        "it read the node's tip: {seen}"
    );

    let (status, body) = http(
        api_port,
        "GET /health HTTP/1.1\r\nHost: signer\r\nConnection: close\r\n\r\n",
    );
    assert!(status.contains("200"), "{status} {body}");
    // A wallet's announcement with a transaction that does not parse: refused, naming the field.
    let json = r#"{"bitcoinTxid":"00","bitcoinTxOutputIndex":0,"depositScript":"00","reclaimScript":"00","transactionHex":"zz"}"#;
    let (status, body) = http(
        api_port,
        &format!(
            "POST /deposit HTTP/1.1\r\nHost: signer\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{json}",
            json.len()
        ),
    );
    assert!(status.contains("400"), "{status} {body}");
    assert!(body.contains("\"error\""), "{body}");

    // SAFETY: plain kill(2) on our own children's pids.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
        libc::kill(node.id() as i32, libc::SIGTERM);
    }
    let status = wait_bounded(&mut child, Duration::from_secs(20));
    assert_eq!(status.code(), Some(130));
    wait_bounded(&mut node, Duration::from_secs(20));
    assert!(!cookie.exists(), "the node removed its cookie at stop");
}
