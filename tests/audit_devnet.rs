//! The audit log of a running node: after a devnet on PostgreSQL with a mixed signer set
//! (keystores and SoftHSM2 tokens), each signer's log holds one entry per private-key operation its
//! audited custody counted, and `audit verify` passes, both with a `[storage]`-only config and with
//! the signer's own config. Then, on one signer's database: an edited row, a deleted row and a
//! rewritten chain with every hash recomputed are each reported.

mod storage_support;

use std::{
    collections::BTreeMap,
    path::Path,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use sbtc_hsm_signer::{
    keys::audit::{self, HEAD_OPERATION},
    storage::{config::Target, postgres::PgStore, DbRead, StorageConfig},
};

const BIN: &str = env!("CARGO_BIN_EXE_sbtc-hsm-signer");

fn run(args: &[&str], config: Option<&Path>) -> Output {
    let mut cmd = Command::new(BIN);
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
        // A devnet signer on SoftHSM2 has its own token dir.
        let conf = c.with_file_name("softhsm2.conf");
        if conf.exists() {
            cmd.env("SOFTHSM2_CONF", conf);
        }
    }
    let mut child = cmd
        .args(args)
        .env_remove("SBTC_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sbtc-hsm-signer");
    let deadline = Instant::now() + Duration::from_secs(300);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{args:?} did not finish in time");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().expect("output")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn storage_url(config: &Path) -> String {
    std::fs::read_to_string(config)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("url = \""))
        .map(|u| u.trim_end_matches('"').to_string())
        .expect("the devnet config names its database")
}

async fn store(url: &str) -> PgStore {
    let config = StorageConfig {
        url: url.to_string(),
        ..StorageConfig::memory()
    };
    let Target::Postgres(settings) = config.target().unwrap() else {
        panic!("a PostgreSQL url")
    };
    PgStore::connect(*settings).await.unwrap()
}

/// Puts the log back as it was (the triggers are off in this session).
async fn restore(client: &tokio_postgres::Client, rows: &[audit::AuditEntry]) {
    client
        .batch_execute("DELETE FROM sbtc_signer.audit_log")
        .await
        .unwrap();
    for e in rows {
        client
            .execute(
                "INSERT INTO sbtc_signer.audit_log (seq, entry_id, at, key_label, operation, \
                 message, reason, outcome, prev_hash, hash) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                &[
                    &(e.seq as i64),
                    &e.record.entry_id.as_slice(),
                    &e.record.at,
                    &e.record.key_label,
                    &e.record.operation,
                    &e.record.message,
                    &e.record.reason,
                    &e.record.outcome,
                    &e.prev_hash.as_slice(),
                    &e.hash.as_slice(),
                ],
            )
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devnet_audit_log_matches_custody_counts_and_catches_rewrites() {
    let Some(admin_url) = storage_support::pg_url_or_skip("devnet_audit_log") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("devnet");
    let out = {
        let work = work.clone();
        let admin_url = admin_url.clone();
        tokio::task::spawn_blocking(move || {
            run(
                &[
                    "devnet",
                    "--signers",
                    "3",
                    "--threshold",
                    "2",
                    "--batch",
                    "4",
                    "--backend",
                    "mixed",
                    "--postgres",
                    &admin_url,
                    "--work-dir",
                    work.to_str().unwrap(),
                ],
                None,
            )
        })
        .await
        .unwrap()
    };
    assert!(out.status.success(), "devnet failed:\n{}", text(&out));

    for i in 0..3 {
        let dir = work.join(format!("signer-{i}"));
        let config = dir.join("signer.toml");
        let result: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("result.json")).unwrap()).unwrap();
        let mut counted: BTreeMap<String, u64> =
            serde_json::from_value(result["custody_calls"].clone()).unwrap();
        let url = storage_url(&config);
        let log = store(&url).await.get_audit_log().await.unwrap();
        let mut logged: BTreeMap<String, u64> = BTreeMap::new();
        for e in &log {
            *logged.entry(e.record.operation.clone()).or_default() += 1;
            assert_eq!(e.record.outcome, "ok", "signer {i}: {e:?}");
            assert_ne!(e.record.reason, "unattributed", "signer {i}: {e:?}");
        }
        counted.retain(|_, n| *n > 0);
        assert_eq!(logged, counted, "signer {i}: audit log vs custody counters");
        // Every signer endorsed a transport key, sealed its shares, unsealed them to sign, made
        // TLS handshakes and signed heads; the last entry is the head signed on shutdown.
        for op in [
            "sign_secp256k1_prehash",
            "sign_p256_prehash",
            "seal",
            "unseal",
            HEAD_OPERATION,
        ] {
            assert!(
                logged.get(op).copied().unwrap_or(0) > 0,
                "signer {i}: no {op} in {logged:?}"
            );
        }
        assert_eq!(log.last().unwrap().record.operation, HEAD_OPERATION);
        assert_eq!(log.last().unwrap().record.reason, "shutdown");

        // `audit verify` with the signer's own config checks the heads against its identity key.
        let verified = run(&["audit", "verify"], Some(&config));
        assert!(
            verified.status.success(),
            "signer {i}:\n{}",
            text(&verified)
        );
        let identity = result["identity"].as_str().unwrap();
        assert!(
            text(&verified).contains(&format!(
                "all signed by identity key {identity} (the identity key"
            )),
            "signer {i}:\n{}",
            text(&verified)
        );
        // With only [storage], against the key the log names, and it says so.
        let storage_only = dir.join("storage-only.toml");
        std::fs::write(&storage_only, format!("[storage]\nurl = \"{url}\"\n")).unwrap();
        let verified = run(&["audit", "verify"], Some(&storage_only));
        assert!(
            verified.status.success(),
            "signer {i}:\n{}",
            text(&verified)
        );
        assert!(
            text(&verified).contains("the key the log itself names"),
            "{}",
            text(&verified)
        );
        let verified = run(
            &["audit", "verify", "--identity", identity],
            Some(&storage_only),
        );
        assert!(verified.status.success(), "{}", text(&verified));
    }

    // Tampering with signer 0's log, as someone with write access to the database would.
    let dir = work.join("signer-0");
    let url = storage_url(&dir.join("signer.toml"));
    let storage_only = dir.join("storage-only.toml");
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    // The triggers keep the log append-only; a superuser switches them off for the session.
    client
        .batch_execute("SET session_replication_role = replica")
        .await
        .unwrap();
    let original = store(&url).await.get_audit_log().await.unwrap();
    let n = original.len() as i64;
    assert!(n > 4, "a devnet signer makes more than 4 key operations");
    let verify_fails = |what: &str, expect: &str| {
        let out = run(&["audit", "verify"], Some(&dir.join("signer.toml")));
        assert!(
            !out.status.success(),
            "{what} went unnoticed:\n{}",
            text(&out)
        );
        assert!(text(&out).contains(expect), "{what}:\n{}", text(&out));
    };

    // 1. An edited row.
    client
        .execute(
            "UPDATE sbtc_signer.audit_log SET reason = 'nothing to see' WHERE seq = 2",
            &[],
        )
        .await
        .unwrap();
    verify_fails("an edited row", "entry #2 does not match its hash");
    restore(&client, &original).await;
    assert!(run(&["audit", "verify"], Some(&storage_only))
        .status
        .success());

    // 2. A deleted row.
    client
        .execute("DELETE FROM sbtc_signer.audit_log WHERE seq = 3", &[])
        .await
        .unwrap();
    verify_fails("a deleted row", "expected entry #3 but found #4");
    restore(&client, &original).await;

    // 3. A row rewritten and every hash after it recomputed: the chain is consistent again, but
    // the identity key's head signatures no longer match it.
    let mut forged = original.clone();
    forged[1].record.reason = "nothing to see".into();
    let mut head = None;
    for e in forged.iter_mut() {
        *e = audit::next_entry(head, &e.record);
        head = Some((e.seq, e.hash));
    }
    assert!(audit::verify(&forged).is_intact());
    for e in &forged {
        client
            .execute(
                "UPDATE sbtc_signer.audit_log SET reason = $1, prev_hash = $2, hash = $3 WHERE seq = $4",
                &[
                    &e.record.reason,
                    &e.prev_hash.as_slice(),
                    &e.hash.as_slice(),
                    &(e.seq as i64),
                ],
            )
            .await
            .unwrap();
    }
    verify_fails("a recomputed chain", "was rewritten");
    let out = run(&["audit", "verify"], Some(&storage_only));
    assert!(!out.status.success(), "{}", text(&out));
    restore(&client, &original).await;
    assert!(run(&["audit", "verify"], Some(&storage_only))
        .status
        .success());
}
