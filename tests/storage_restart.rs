//! Faults against the real server: PostgreSQL down when the signer starts, and PostgreSQL
//! restarted while the signer writes. This stops and starts the shared test server, so it is a
//! test binary of its own with a single test: `cargo test` runs test binaries one after another,
//! so no other storage test sees the outage. (Under cargo-nextest, which runs binaries in
//! parallel, put this binary in a test group of its own.)
//!
//! Needs SBTC_TEST_PG_URL and SBTC_TEST_PG_CTL (both printed by `scripts/pg.sh start`).

mod storage_support;

use std::{
    collections::HashSet,
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use sbtc_hsm_signer::storage::{
    postgres::{migrations::latest_version, PgStore},
    *,
};
use storage_support::*;

fn pg_ctl_or_skip() -> Option<String> {
    match std::env::var("SBTC_TEST_PG_CTL") {
        Ok(c) if !c.is_empty() => Some(c),
        _ => {
            skip_or_fail(
                "storage_restart",
                "SBTC_TEST_PG_CTL is not set (`eval \"$(scripts/pg.sh start)\"` sets it)",
            );
            None
        }
    }
}

fn pg_ctl(prefix: &str, args: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("{prefix} {args}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Starts the server again however the test ends, so later tests find it up.
struct Restarter(String);

impl Drop for Restarter {
    fn drop(&mut self) {
        pg_ctl(&self.0, "start");
    }
}

async fn blocking_pg_ctl(prefix: &str, args: &'static str) {
    let prefix = prefix.to_owned();
    let ok = tokio::task::spawn_blocking(move || pg_ctl(&prefix, args))
        .await
        .unwrap();
    assert!(ok, "pg_ctl {args} failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_down_at_start_and_restarted_midway() {
    let Some(ctl) = pg_ctl_or_skip() else { return };
    let Some(db) = TestDb::create("server_down_at_start_and_restarted_midway").await else {
        return;
    };
    let _restarter = Restarter(ctl.clone());
    db.store().await; // migrated while the server is up

    // 1. The server is down when the signer starts: it waits, retrying, and connects once the
    //    server is back.
    blocking_pg_ctl(&ctl, "stop -m fast").await;
    let mut settings = db.settings();
    settings.connect_retry = Duration::from_secs(60);
    let connecting = tokio::spawn(PgStore::connect(settings));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !connecting.is_finished(),
        "connect must keep retrying while the server is down"
    );
    blocking_pg_ctl(&ctl, "start").await;
    let store = Arc::new(
        connecting
            .await
            .unwrap()
            .expect("connects once the server is up"),
    );
    assert_eq!(store.check_schema().await.unwrap(), latest_version());

    // 2. The server restarts while 8 tasks write: every operation is acknowledged, and each is
    //    stored exactly once.
    const TASKS: u64 = 8;
    const OPS: u64 = 150;
    let mut handles = Vec::new();
    for t in 0..TASKS {
        let s = store.clone();
        handles.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..OPS {
                let n = t * 100_000 + i + 1;
                let r = AuditRecord::new(
                    "identity",
                    "sign_secp256k1_prehash",
                    n.to_be_bytes().to_vec(),
                    "restart test",
                );
                s.append_audit(&r)
                    .await
                    .expect("append survives the restart");
                ids.push(r.entry_id);
                s.write_deposit_request(&deposit(n, 0), &bh(1))
                    .await
                    .expect("deposit write survives the restart");
                let intent = SpendIntent {
                    txid: txid(n + 7),
                    spends: vec![outpoint(n, 0)],
                    deposits: vec![outpoint(n, 0)],
                    withdrawals: vec![],
                    change: vec![],
                    fee: bitcoin::Amount::from_sat(1_000),
                    weight: bitcoin::Weight::from_wu(800),
                };
                let d = s
                    .guard_spend(&intent)
                    .await
                    .expect("guard survives the restart");
                // Repeat is fine: the first attempt committed but its acknowledgement was lost.
                assert!(d.is_approved(), "{d:?}");
            }
            ids
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        handles.iter().any(|h| !h.is_finished()),
        "the writers finished before the restart; raise OPS"
    );
    let stopped_at = Instant::now();
    blocking_pg_ctl(&ctl, "stop -m fast").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    blocking_pg_ctl(&ctl, "start").await;
    let mut acknowledged = HashSet::new();
    for h in handles {
        acknowledged.extend(h.await.expect("writer task"));
    }
    assert!(stopped_at.elapsed() >= Duration::from_secs(2));
    assert_eq!(acknowledged.len() as u64, TASKS * OPS);
    assert!(
        store.retry_count() > 0,
        "the restart must have interrupted some operations, which were retried"
    );

    let log = store.get_audit_log().await.unwrap();
    assert_eq!(
        log.len() as u64,
        TASKS * OPS,
        "no append lost, none stored twice"
    );
    let stored: HashSet<[u8; 16]> = log.iter().map(|e| e.record.entry_id).collect();
    assert_eq!(stored, acknowledged);
    let v = store.verify_audit_log().await.unwrap();
    assert!(v.is_intact(), "{:?}", v.first_break);

    let client = db.client().await;
    for (table, expected) in [
        ("deposit_requests", TASKS * OPS),
        ("spend_decisions", TASKS * OPS),
        ("spend_approvals", TASKS * OPS),
    ] {
        let n: i64 = client
            .query_one(&format!("SELECT count(*) FROM sbtc_signer.{table}"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n as u64, expected, "{table}");
    }
}
