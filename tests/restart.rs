//! Restart-safe key shares: a 5-signer set on PostgreSQL (keystores and SoftHSM2 tokens mixed)
//! runs its DKG; the signers then run as long-lived nodes; one of them is killed with SIGKILL and
//! started again; the coordinator is killed and started again too; the set then signs a new batch
//! in which every signer, the restarted one included, signs from the shares it stored and
//! unsealed through custody.

mod storage_support;

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

const BIN: &str = env!("CARGO_BIN_EXE_sbtc-hsm-signer");
const BATCH: &str = "6";

/// One signer process; its stderr is collected as it arrives.
struct Node {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Node {
    fn start(dir: &Path, extra: &[&str]) -> Node {
        let mut cmd = Command::new(BIN);
        cmd.arg("--config")
            .arg(dir.join("signer.toml"))
            .args(["run", "--demo-batch", BATCH, "--demo-all"])
            .args(["--connect-timeout", "120", "--phase-timeout", "60"])
            .arg("--nonce-ledger")
            .arg(dir.join("nonce-ledger"))
            .arg("--chain-tip")
            .arg(std::fs::read_to_string(dir.join("chain-tip")).expect("the DKG's chain tip"))
            .args(extra)
            .env("SBTC_LOG", "info,cryptoki::mechanism=off")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let conf = dir.join("softhsm2.conf");
        if conf.exists() {
            cmd.env("SOFTHSM2_CONF", conf);
        }
        let mut child = cmd.spawn().expect("start signer");
        let log = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().expect("stderr");
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        Node { child, log }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits (bounded) until the log contains `text`.
    fn wait_for(&mut self, text: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.log().contains(text) {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("signer exited ({status}) before `{text}`:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "no `{text}` within {limit:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn signal(&self, signal: i32) {
        // SAFETY: plain kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, signal) }, 0);
    }

    fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!("signer did not exit within {limit:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn storage_url(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("signer.toml"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("url = \""))
        .map(|u| u.trim_end_matches('"').to_string())
        .expect("the devnet config names its database")
}

/// Audit entries of one operation whose reason starts with `prefix`, in a signer's database.
async fn audit_count(dir: &Path, operation: &str, prefix: &str) -> i64 {
    let (client, conn) = tokio_postgres::connect(&storage_url(dir), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .query_one(
            "SELECT count(*) FROM sbtc_signer.audit_log WHERE operation = $1 AND reason LIKE $2",
            &[&operation, &format!("{prefix}%")],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_signer_signs_again_from_its_stored_shares() {
    let Some(admin_url) = storage_support::pg_url_or_skip("restart") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let work: PathBuf = tmp.path().join("devnet");

    // 1. The DKG: a devnet of 5 on PostgreSQL forms and verifies the key, stores the sealed
    // shares in each signer's database, and stops.
    let devnet = {
        let work = work.clone();
        tokio::task::spawn_blocking(move || {
            Command::new(BIN)
                .args([
                    "devnet",
                    "--signers",
                    "5",
                    "--threshold",
                    "4",
                    "--batch",
                    "0",
                ])
                .args(["--backend", "mixed", "--postgres", &admin_url])
                .arg("--work-dir")
                .arg(&work)
                .env_remove("SBTC_LOG")
                .output()
                .unwrap()
        })
        .await
        .unwrap()
    };
    assert!(
        devnet.status.success(),
        "{}{}",
        String::from_utf8_lossy(&devnet.stdout),
        String::from_utf8_lossy(&devnet.stderr)
    );
    let dirs: Vec<PathBuf> = (0..5).map(|i| work.join(format!("signer-{i}"))).collect();
    let results: Vec<serde_json::Value> = dirs
        .iter()
        .map(|d| serde_json::from_slice(&std::fs::read(d.join("result.json")).unwrap()).unwrap())
        .collect();
    // The devnet's regtest node stopped with the devnet: the long-lived nodes below run without
    // Bitcoin, on the tip the DKG ran on.
    let tip = results[0]["chain_tip"].as_str().unwrap().to_string();
    for d in &dirs {
        let config = d.join("signer.toml");
        let text = std::fs::read_to_string(&config).unwrap();
        let (head, rest) = text.split_once("[bitcoin]").unwrap();
        let (_, tail) = rest.split_once("[storage]").unwrap();
        std::fs::write(&config, format!("{head}[storage]{tail}")).unwrap();
        std::fs::write(d.join("chain-tip"), &tip).unwrap();
    }
    let key = results[0]["aggregate_key"].as_str().unwrap().to_string();
    let dkg_id = results[0]["dkg_id"].as_u64().unwrap();
    let coordinator = results
        .iter()
        .position(|r| r["signer_index"] == r["coordinator"])
        .unwrap();
    // A signer that does not coordinate, and one that keeps a SoftHSM2 token (odd directories).
    let victim = (0..5).find(|i| *i != coordinator && i % 2 == 1).unwrap();

    let unseals_after_dkg = audit_count(&dirs[victim], "unseal", "round ").await;

    // 2. The set as long-lived nodes: each loads its stored shares (no new DKG); the coordinator
    // signs a batch with all five, then everyone keeps serving.
    let mut nodes: Vec<Option<Node>> = dirs.iter().map(|d| Some(Node::start(d, &[]))).collect();
    for n in nodes.iter_mut().flatten() {
        n.wait_for("signing with the stored shares", Duration::from_secs(120));
    }
    nodes[coordinator]
        .as_mut()
        .unwrap()
        .wait_for("demo batch signed", Duration::from_secs(120));
    let unseals_before = audit_count(&dirs[victim], "unseal", "round ").await;
    assert_eq!(
        unseals_before,
        unseals_after_dkg + 1,
        "the victim signed the first batch"
    );

    // 3. SIGKILL one signer mid-life and start it again: it comes back from its database.
    let mut v = nodes[victim].take().unwrap();
    v.signal(libc::SIGKILL);
    assert_eq!(
        v.wait(Duration::from_secs(10)).code(),
        None,
        "killed by a signal"
    );
    drop(v);
    let mut v = Node::start(&dirs[victim], &[]);
    v.wait_for("signing with the stored shares", Duration::from_secs(120));
    nodes[victim] = Some(v);

    // 4. The coordinator too, and when it comes back it signs a new batch with every signer.
    let mut c = nodes[coordinator].take().unwrap();
    c.signal(libc::SIGKILL);
    c.wait(Duration::from_secs(10));
    drop(c);
    let result_file = dirs[coordinator].join("restart-result.json");
    let mut c = Node::start(
        &dirs[coordinator],
        &[
            "--exit-when-done",
            "--result-file",
            result_file.to_str().unwrap(),
        ],
    );
    let status = {
        let limit = Duration::from_secs(180);
        tokio::task::spawn_blocking(move || {
            let s = c.wait(limit);
            (s, c.log())
        })
        .await
        .unwrap()
    };
    assert!(status.0.success(), "restarted coordinator:\n{}", status.1);
    let result: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&result_file).unwrap()).unwrap();
    assert_eq!(
        result["aggregate_key"],
        key.as_str(),
        "the same key as the DKG"
    );
    assert_eq!(result["dkg_id"], dkg_id);
    assert_eq!(result["shares_from_storage"], true);
    assert_eq!(result["dkg_status"], "verified");
    assert_eq!(
        result["signatures_verified"].as_u64(),
        Some(BATCH.parse().unwrap()),
        "{}",
        status.1
    );
    // The restarted signer took part: it unsealed its stored shares once more, for this batch.
    let unseals_after = audit_count(&dirs[victim], "unseal", "round ").await;
    assert_eq!(unseals_after, unseals_before + 1);
    assert!(nodes[victim]
        .as_ref()
        .unwrap()
        .log()
        .contains("signing with the stored shares"));

    // Everyone else stops cleanly on SIGTERM.
    for n in nodes.iter_mut().flatten() {
        n.signal(libc::SIGTERM);
        assert_eq!(
            n.wait(Duration::from_secs(30)).code(),
            Some(130),
            "{}",
            n.log()
        );
    }
}
