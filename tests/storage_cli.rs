//! `migrate` and `audit verify` as an operator runs them: the real binary, a config file that has
//! only `[storage]` (neither command needs custody or peers), a fresh database on the real server.

mod storage_support;

use std::{path::PathBuf, process::Output};

use sbtc_hsm_signer::storage::*;
use storage_support::*;

struct Cli {
    _dir: tempfile::TempDir,
    config: PathBuf,
}

impl Cli {
    fn new(storage: &str) -> Cli {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("signer.toml");
        std::fs::write(&config, storage).unwrap();
        Cli { _dir: dir, config }
    }

    async fn run(&self, args: &[&str]) -> Output {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sbtc-hsm-signer"));
        cmd.arg("--config")
            .arg(&self.config)
            .args(args)
            .env_remove("PGPASSWORD");
        tokio::task::spawn_blocking(move || cmd.output().expect("run sbtc-hsm-signer"))
            .await
            .unwrap()
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test]
async fn migrate_then_audit_verify() {
    let Some(db) = TestDb::create("migrate_then_audit_verify").await else {
        return;
    };
    let cli = Cli::new(&format!("[storage]\nurl = \"{}\"\n", db.url));

    let out = cli.run(&["audit", "verify"]).await;
    assert!(!out.status.success());
    assert!(
        text(&out).contains("sbtc-hsm-signer migrate"),
        "{}",
        text(&out)
    );

    let out = cli.run(&["migrate"]).await;
    assert!(out.status.success(), "{}", text(&out));
    for applied in [
        "applied migration 1 (initial)",
        "applied migration 2 (dkg_shares_signer_position)",
        "applied migration 4 (whole_transaction_guard)",
        "applied migration 5 (chain_observer)",
        "applied migration 6 (stacks_events)",
        "now at version 6",
    ] {
        assert!(text(&out).contains(applied), "{}", text(&out));
    }
    let out = cli.run(&["migrate"]).await;
    assert!(
        out.status.success() && text(&out).contains("already current"),
        "{}",
        text(&out)
    );
    let out = cli.run(&["migrate", "--check"]).await;
    assert!(
        out.status.success() && text(&out).contains("is current (version 6)"),
        "{}",
        text(&out)
    );

    let out = cli.run(&["audit", "verify"]).await;
    assert!(
        out.status.success() && text(&out).contains("intact: 0 entries"),
        "{}",
        text(&out)
    );

    let store = db.store().await;
    for i in 0..3u8 {
        store
            .append_audit(&AuditRecord::new("identity", "sign", vec![i], "cli test"))
            .await
            .unwrap();
    }
    let out = cli.run(&["audit", "verify"]).await;
    assert!(
        out.status.success() && text(&out).contains("intact: 3 entries"),
        "{}",
        text(&out)
    );

    let log = store.get_audit_log().await.unwrap();
    let head = |i: usize| format!("{}:{}", log[i].seq, hex::encode(log[i].hash));
    assert!(text(&out).contains(&head(2)), "{}", text(&out));

    // The operator kept head 3; one more entry later, it must still be there.
    store
        .append_audit(&AuditRecord::new("identity", "sign", vec![9], "cli test"))
        .await
        .unwrap();
    let out = cli
        .run(&["audit", "verify", "--expect-head", &head(2)])
        .await;
    assert!(
        out.status.success() && text(&out).contains("intact: 4 entries"),
        "{}",
        text(&out)
    );
    let out = cli.run(&["audit", "verify", "--expect-head", "9:00"]).await;
    assert!(
        !out.status.success() && text(&out).contains("SEQ:HASH"),
        "{}",
        text(&out)
    );
    let wrong = format!("2:{}", hex::encode([0u8; 32]));
    let out = cli.run(&["audit", "verify", "--expect-head", &wrong]).await;
    assert!(
        !out.status.success() && text(&out).contains("entry #2 has hash"),
        "{}",
        text(&out)
    );

    let client = db.client().await;
    client
        .batch_execute("SET session_replication_role = replica")
        .await
        .unwrap();
    // Deleting the newest entries leaves a valid chain; only the kept head tells.
    client
        .execute("DELETE FROM sbtc_signer.audit_log WHERE seq >= 3", &[])
        .await
        .unwrap();
    let out = cli.run(&["audit", "verify"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let out = cli
        .run(&["audit", "verify", "--expect-head", &head(2)])
        .await;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("entry #3 is missing"), "{}", text(&out));
    client
        .execute(
            "UPDATE sbtc_signer.audit_log SET key_label = 'tls' WHERE seq = 2",
            &[],
        )
        .await
        .unwrap();
    let out = cli.run(&["audit", "verify"]).await;
    assert!(!out.status.success());
    assert!(text(&out).contains("BROKEN: entry #2"), "{}", text(&out));
}

#[tokio::test]
async fn newer_schema_is_refused_by_migrate() {
    let Some(db) = TestDb::create("newer_schema_is_refused_by_migrate").await else {
        return;
    };
    db.store().await;
    db.client()
        .await
        .execute(
            "INSERT INTO sbtc_signer.schema_migrations (version, name, checksum) VALUES (1000, 'next', '\\x00')",
            &[],
        )
        .await
        .unwrap();
    let cli = Cli::new(&format!("[storage]\nurl = \"{}\"\n", db.url));
    let out = cli.run(&["migrate"]).await;
    assert!(!out.status.success());
    let t = text(&out);
    assert!(
        t.contains("newer than this binary") && t.contains("never downgrade"),
        "{t}"
    );
}

#[tokio::test]
async fn errors_never_show_the_password() {
    let cli = Cli::new("[storage]\nurl = \"postgresql://signer:Sup3rSecret@127.0.0.1:1/signer\"\n");
    let out = cli.run(&["migrate"]).await;
    assert!(!out.status.success());
    let t = text(&out);
    assert!(
        t.contains("password_file") && !t.contains("Sup3rSecret"),
        "{t}"
    );

    // The server is down: a clear error naming the (redacted) url, after retrying.
    let cli = Cli::new(
        "[storage]\nurl = \"postgresql://signer@127.0.0.1:1/signer\"\nconnect_retry_secs = 1\n",
    );
    let out = cli.run(&["migrate"]).await;
    assert!(!out.status.success());
    let t = text(&out);
    assert!(
        t.contains("cannot reach PostgreSQL at postgresql://signer@127.0.0.1:1/signer"),
        "{t}"
    );
}

#[tokio::test]
async fn memory_storage_has_nothing_to_migrate() {
    let cli = Cli::new("[storage]\nurl = \"memory\"\n");
    let out = cli.run(&["migrate"]).await;
    assert!(
        out.status.success() && text(&out).contains("in-memory"),
        "{}",
        text(&out)
    );
}

/// `keys check` with `[storage]`: its self-test signatures, seal and unseal are in the audit log
/// with their reason and outcome, followed by a head signed with the identity key, and
/// `audit verify` with the same config checks the head against that key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_check_is_audited() {
    use std::os::unix::fs::PermissionsExt as _;
    let Some(db) = TestDb::create("keys_check_is_audited").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pass = dir.path().join("passphrase");
    std::fs::write(&pass, "correct horse battery staple\n").unwrap();
    std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = format!(
        "[custody]\nbackend = \"keystore\"\n[custody.keystore]\npath = \"{}\"\npassphrase_file = \"{}\"\n\
         [custody.keystore.kdf]\ninsecure_test_kdf = true\nmemory_kib = 1024\niterations = 1\nparallelism = 1\n\
         [storage]\nurl = \"{}\"\n",
        dir.path().join("keystore").display(),
        pass.display(),
        db.url
    );
    let cli = Cli::new(&config);
    for args in [
        &["keys", "init"][..],
        &["keys", "generate", "--role", "identity"],
        &["keys", "generate", "--role", "tls"],
        &["keys", "generate", "--role", "seal"],
        &["migrate"],
        &["keys", "check"],
    ] {
        let out = cli.run(args).await;
        assert!(out.status.success(), "{args:?}: {}", text(&out));
    }
    let log = db.store().await.get_audit_log().await.unwrap();
    let rows: Vec<(&str, &str, &str, &str)> = log
        .iter()
        .map(|e| {
            (
                e.record.key_label.as_str(),
                e.record.operation.as_str(),
                e.record.reason.as_str(),
                e.record.outcome.as_str(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            (
                "identity",
                "sign_secp256k1_prehash",
                "keys check: self-test of the identity key",
                "ok"
            ),
            (
                "tls",
                "sign_p256_prehash",
                "keys check: self-test of the tls key",
                "ok"
            ),
            (
                "seal",
                "seal",
                "keys check: self-test of the seal key",
                "ok"
            ),
            (
                "seal",
                "unseal",
                "keys check: self-test of the seal key",
                "ok"
            ),
            // The self-test also proves a wrong AAD is refused: a failed unseal, recorded too.
            (
                "seal",
                "unseal",
                "keys check: self-test of the seal key",
                "error: authentication of sealed data failed"
            ),
            ("identity", "sign_audit_head", "end of `keys check`", "ok"),
        ]
    );
    let out = cli.run(&["audit", "verify"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("1 signed heads, the newest covering entry #5"),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains("(the identity key 'identity' in [custody])"),
        "{}",
        text(&out)
    );
}
