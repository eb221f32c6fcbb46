//! One suite, two stores: every case runs against the in-memory store and against a fresh
//! database on a real PostgreSQL server (SBTC_TEST_PG_URL), so both keep the same semantics.
//! PostgreSQL-only behaviour (migrations, the seed's SQL, tampering) is at the end.

mod storage_support;

use std::{collections::HashSet, sync::Arc};

use sbtc_custody::SealedBlob;
use sbtc_hsm_signer::storage::{memory::MemoryStore, *};
use storage_support::*;

type Store = Arc<dyn Storage>;

macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    super::$case(std::sync::Arc::new(super::MemoryStore::new())).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let Some(db) = super::TestDb::create(stringify!($case)).await else { return };
                    super::$case(std::sync::Arc::new(db.store().await)).await;
                }
            )*
        }
    };
}

suite!(
    canonical_chain_follows_reorgs,
    deposits_and_votes,
    withdrawals_pending_until_swept,
    dkg_shares_latest_verified,
    sighashes_stacks_transactions_and_rotations,
    audit_log_chains_and_dedups,
    audit_log_concurrent_appends_do_not_fork,
    guard_refuses_conflicts_and_allows_fee_bumps,
    guard_is_all_or_nothing_across_inputs,
    guard_under_concurrent_attempts,
);

async fn canonical_chain_follows_reorgs(s: Store) {
    // genesis(1) <- a1(2) <- a2(3)
    //           \- b1(4) <- b2(5) <- b3(6)
    for b in [
        block(1, 0, 0),
        block(2, 1, 1),
        block(3, 2, 2),
        block(4, 1, 1),
        block(5, 2, 4),
        block(6, 3, 5),
    ] {
        s.write_bitcoin_block(&b).await.unwrap();
        s.write_bitcoin_block(&b).await.unwrap(); // idempotent
    }
    let tip = s.get_bitcoin_canonical_tip().await.unwrap().unwrap();
    assert_eq!(tip, block(6, 3, 5));
    let (a2, b3) = (BitcoinBlockHash(h(3)), BitcoinBlockHash(h(6)));
    assert!(s
        .in_canonical_chain(&b3, &BitcoinBlockHash(h(4)))
        .await
        .unwrap());
    assert!(s
        .in_canonical_chain(&b3, &BitcoinBlockHash(h(1)))
        .await
        .unwrap());
    assert!(!s
        .in_canonical_chain(&b3, &BitcoinBlockHash(h(2)))
        .await
        .unwrap());
    assert!(s
        .in_canonical_chain(&a2, &BitcoinBlockHash(h(2)))
        .await
        .unwrap());

    // d100 in a1 (and again in b2 after the reorg), d101 in b1, d102 in b2.
    s.write_deposit_request(&deposit(100, 0), &BitcoinBlockHash(h(2)))
        .await
        .unwrap();
    s.write_deposit_request(&deposit(101, 0), &BitcoinBlockHash(h(4)))
        .await
        .unwrap();
    s.write_deposit_request(&deposit(102, 3), &BitcoinBlockHash(h(5)))
        .await
        .unwrap();
    let ops = |v: Vec<DepositRequest>| v.into_iter().map(|d| d.outpoint).collect::<Vec<_>>();
    assert_eq!(
        ops(s.get_pending_deposit_requests(&a2, 10).await.unwrap()),
        vec![outpoint(100, 0)],
        "on fork a only d100 is confirmed"
    );
    assert_eq!(
        ops(s.get_pending_deposit_requests(&b3, 10).await.unwrap()),
        vec![outpoint(101, 0), outpoint(102, 3)]
    );
    s.write_bitcoin_transaction(&BitcoinTxid(h(100)), &BitcoinBlockHash(h(5)))
        .await
        .unwrap();
    assert_eq!(
        ops(s.get_pending_deposit_requests(&b3, 10).await.unwrap()),
        vec![outpoint(100, 0), outpoint(101, 0), outpoint(102, 3)]
    );
    // The window counts blocks from the tip: b3 and b2 only.
    assert_eq!(
        ops(s.get_pending_deposit_requests(&b3, 2).await.unwrap()),
        vec![outpoint(100, 0), outpoint(102, 3)]
    );
    assert!(s
        .get_pending_deposit_requests(&b3, 0)
        .await
        .unwrap()
        .is_empty());
    assert!(s
        .get_pending_deposit_requests(&BitcoinBlockHash(h(99)), 10)
        .await
        .unwrap()
        .is_empty());

    // Equal heights: the lowest hash wins, in both stores.
    s.write_bitcoin_block(&block(7, 3, 3)).await.unwrap();
    assert_eq!(
        s.get_bitcoin_canonical_tip().await.unwrap().unwrap().hash,
        b3
    );
}

async fn deposits_and_votes(s: Store) {
    let d = deposit(1, 2);
    s.write_deposit_request(&d, &BitcoinBlockHash(h(9)))
        .await
        .unwrap();
    let mut changed = d.clone();
    changed.amount = Amount(1);
    s.write_deposit_request(&changed, &BitcoinBlockHash(h(9)))
        .await
        .unwrap();
    assert_eq!(
        s.get_deposit_request(&d.outpoint).await.unwrap(),
        Some(d.clone()),
        "first write stands"
    );
    assert_eq!(s.get_deposit_request(&outpoint(1, 3)).await.unwrap(), None);

    for (signer, accept) in [(3u8, true), (1, false), (2, true)] {
        let v = DepositVote {
            outpoint: d.outpoint,
            signer: key(signer),
            can_accept: accept,
            can_sign: true,
        };
        s.write_deposit_vote(&v).await.unwrap();
        s.write_deposit_vote(&v).await.unwrap();
    }
    s.write_deposit_vote(&DepositVote {
        outpoint: outpoint(1, 3),
        signer: key(1),
        can_accept: true,
        can_sign: true,
    })
    .await
    .unwrap();
    let votes = s.get_deposit_votes(&d.outpoint).await.unwrap();
    assert_eq!(
        votes.iter().map(|v| v.signer).collect::<Vec<_>>(),
        vec![key(1), key(2), key(3)]
    );
    assert_eq!(
        votes.iter().map(|v| v.can_accept).collect::<Vec<_>>(),
        vec![false, true, true]
    );
}

async fn withdrawals_pending_until_swept(s: Store) {
    for b in [block(1, 0, 0), block(2, 1, 1), block(3, 2, 2)] {
        s.write_bitcoin_block(&b).await.unwrap();
    }
    let sb = StacksBlock {
        hash: StacksBlockHash(h(50)),
        height: 10,
        parent_hash: StacksBlockHash(h(49)),
        bitcoin_anchor: BitcoinBlockHash(h(2)),
    };
    s.write_stacks_block(&sb).await.unwrap();
    assert_eq!(
        s.get_stacks_block(&sb.hash).await.unwrap(),
        Some(sb.clone())
    );
    let w = |id: u64| WithdrawalRequest {
        request_id: id,
        stacks_txid: StacksTxid(h(1000 + id)),
        stacks_block_hash: sb.hash,
        recipient: Script(vec![0x00, 0x14, id as u8]),
        amount: Amount(10_000 * id),
        max_fee: Amount(3_000),
        sender: "ST1SENDER".into(),
    };
    for id in [3, 1, 2] {
        s.write_withdrawal_request(&w(id)).await.unwrap();
    }
    assert_eq!(s.get_withdrawal_request(2).await.unwrap(), Some(w(2)));
    s.write_withdrawal_vote(&WithdrawalVote {
        request_id: 2,
        signer: key(5),
        is_accepted: true,
    })
    .await
    .unwrap();
    assert_eq!(s.get_withdrawal_votes(2).await.unwrap().len(), 1);
    assert!(s.get_withdrawal_votes(1).await.unwrap().is_empty());

    let tip = BitcoinBlockHash(h(3));
    let ids = |v: Vec<WithdrawalRequest>| v.into_iter().map(|w| w.request_id).collect::<Vec<_>>();
    assert_eq!(
        ids(s.get_pending_withdrawal_requests(&tip, 2).await.unwrap()),
        vec![1, 2, 3]
    );
    assert!(
        s.get_pending_withdrawal_requests(&tip, 1)
            .await
            .unwrap()
            .is_empty(),
        "anchor is outside the window"
    );

    s.write_deposit_request(&deposit(7, 0), &BitcoinBlockHash(h(3)))
        .await
        .unwrap();
    let sweep = SweepTransaction {
        txid: BitcoinTxid(h(77)),
        signers_prevout: outpoint(70, 0),
        deposits: vec![outpoint(7, 0)],
        withdrawals: vec![payment(2, 20_000), payment(1, 10_000)],
        fee: Amount(1_234),
        chain_tip: tip,
    };
    s.write_sweep_transaction(&sweep).await.unwrap();
    s.write_sweep_transaction(&sweep).await.unwrap();
    assert_eq!(
        s.get_sweep_transaction(&sweep.txid).await.unwrap(),
        Some(sweep)
    );
    assert_eq!(
        ids(s.get_pending_withdrawal_requests(&tip, 2).await.unwrap()),
        vec![3]
    );
    assert!(
        s.get_pending_deposit_requests(&tip, 3)
            .await
            .unwrap()
            .is_empty(),
        "swept deposits are not pending"
    );
}

fn shares(n: u8, status: DkgSharesStatus) -> DkgShares {
    DkgShares {
        aggregate_key: key(n),
        sealed_private_shares: SealedBlob::from_bytes(vec![0x01, n, 0xaa, 0xbb]),
        public_shares: vec![n; 40],
        signer_set: vec![key(1), key(2), key(3)],
        threshold: 2,
        status,
        started_at_block_hash: BitcoinBlockHash(h(n as u64)),
        started_at_block_height: 100 + n as u64,
    }
}

async fn dkg_shares_latest_verified(s: Store) {
    assert_eq!(s.get_latest_verified_dkg_shares().await.unwrap(), None);
    s.write_dkg_shares(&shares(1, DkgSharesStatus::Verified))
        .await
        .unwrap();
    s.write_dkg_shares(&shares(2, DkgSharesStatus::Unverified))
        .await
        .unwrap();
    s.write_dkg_shares(&shares(3, DkgSharesStatus::Failed))
        .await
        .unwrap();
    let latest = s.get_latest_verified_dkg_shares().await.unwrap().unwrap();
    assert_eq!(latest.shares, shares(1, DkgSharesStatus::Verified));
    assert!(s
        .set_dkg_shares_status(&key(2), DkgSharesStatus::Verified)
        .await
        .unwrap());
    assert!(!s
        .set_dkg_shares_status(&key(9), DkgSharesStatus::Verified)
        .await
        .unwrap());
    let latest = s.get_latest_verified_dkg_shares().await.unwrap().unwrap();
    assert_eq!(
        latest.shares.aggregate_key,
        key(2),
        "the newer verified shares win"
    );
    let stored = s.get_dkg_shares(&key(3)).await.unwrap().unwrap();
    assert_eq!(stored.shares.status, DkgSharesStatus::Failed);
    assert_eq!(
        stored.shares.sealed_private_shares.as_bytes(),
        &[0x01, 3, 0xaa, 0xbb]
    );
    let oldest = s.get_dkg_shares(&key(1)).await.unwrap().unwrap();
    assert!(oldest.created_at <= latest.created_at);
}

async fn sighashes_stacks_transactions_and_rotations(s: Store) {
    let d = SighashDecision {
        sighash: Sighash(h(1)),
        txid: BitcoinTxid(h(2)),
        prevout: outpoint(3, 1),
        will_sign: true,
    };
    s.write_sighash_decision(&d).await.unwrap();
    s.write_sighash_decision(&SighashDecision {
        will_sign: false,
        ..d.clone()
    })
    .await
    .unwrap();
    assert_eq!(
        s.get_sighash_decision(&d.sighash).await.unwrap(),
        Some(d),
        "the first decision stands"
    );

    let t = StacksTransaction {
        txid: StacksTxid(h(5)),
        kind: "complete-deposit".into(),
        nonce: 42,
        raw: vec![1, 2, 3],
        bitcoin_chain_tip: BitcoinBlockHash(h(6)),
    };
    s.write_stacks_transaction(&t).await.unwrap();
    assert_eq!(s.get_stacks_transaction(&t.txid).await.unwrap(), Some(t));
    assert_eq!(
        s.get_stacks_transaction(&StacksTxid(h(0))).await.unwrap(),
        None
    );

    let r = |n: u8| SignerSetRotation {
        aggregate_key: key(n),
        signer_set: vec![key(n), key(n + 1)],
        threshold: 2,
        stacks_txid: StacksTxid(h(n as u64)),
        bitcoin_block_hash: BitcoinBlockHash(h(10 + n as u64)),
    };
    for n in [5, 3, 5, 9] {
        s.write_signer_set_rotation(&r(n)).await.unwrap();
    }
    assert_eq!(
        s.get_signer_set_history().await.unwrap(),
        vec![r(5), r(3), r(9)]
    );
}

async fn audit_log_chains_and_dedups(s: Store) {
    assert!(s.verify_audit_log().await.unwrap().is_intact());
    let mut entries = Vec::new();
    for i in 0..5u8 {
        let r = AuditRecord::new(
            "identity",
            "sign_secp256k1_prehash",
            vec![i; 32],
            format!("sweep {i} input 0"),
        );
        entries.push(s.append_audit(&r).await.unwrap());
    }
    let again = s.append_audit(&entries[2].record).await.unwrap();
    assert_eq!(
        again, entries[2],
        "a retried append returns the stored entry"
    );
    let log = s.get_audit_log().await.unwrap();
    assert_eq!(log, entries);
    assert_eq!(
        log.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    assert_eq!(log[0].prev_hash, [0; 32]);
    for w in log.windows(2) {
        assert_eq!(w[1].prev_hash, w[0].hash);
    }
    let v = s.verify_audit_log().await.unwrap();
    assert!(v.is_intact());
    assert_eq!((v.entries, v.head_hash), (5, log[4].hash));
}

async fn audit_log_concurrent_appends_do_not_fork(s: Store) {
    let mut tasks = Vec::new();
    for t in 0..8u8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..25u8 {
                let r =
                    AuditRecord::new(format!("key-{t}"), "sign", vec![t, i], "concurrency test");
                s.append_audit(&r).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let log = s.get_audit_log().await.unwrap();
    assert_eq!(log.len(), 200);
    let v = s.verify_audit_log().await.unwrap();
    assert!(v.is_intact(), "{:?}", v.first_break);
    assert_eq!(v.entries, 200);
}

fn intent(
    txid: u64,
    spends: &[OutPoint],
    deposits: &[OutPoint],
    withdrawals: &[WithdrawalPayment],
) -> SpendIntent {
    SpendIntent {
        txid: BitcoinTxid(h(txid)),
        spends: spends.to_vec(),
        deposits: deposits.to_vec(),
        withdrawals: withdrawals.to_vec(),
    }
}

async fn guard_refuses_conflicts_and_allows_fee_bumps(s: Store) {
    let utxo = outpoint(1, 0);
    let dep = outpoint(2, 0);
    let pays = [payment(7, 50_000)];
    let t1 = intent(100, &[utxo, dep], &[dep], &pays);
    assert_eq!(
        s.guard_spend(&t1).await.unwrap(),
        GuardDecision::Approved(Approval::First)
    );
    assert_eq!(
        s.guard_spend(&t1).await.unwrap(),
        GuardDecision::Approved(Approval::Repeat)
    );

    // Same inputs, different payments: equivocation.
    let evil = intent(101, &[utxo], &[], &[payment(7, 49_000)]);
    assert_eq!(
        s.guard_spend(&evil).await.unwrap(),
        GuardDecision::Refused {
            outpoint: utxo,
            decided_txid: t1.txid
        }
    );
    // A fee bump: another txid (lower change), same requests, same outputs, inputs in another order.
    let bump = intent(102, &[dep, utxo], &[dep], &pays);
    assert_eq!(
        s.guard_spend(&bump).await.unwrap(),
        GuardDecision::Approved(Approval::FeeBump { original: t1.txid })
    );
    assert_eq!(
        s.guard_spend(&bump).await.unwrap(),
        GuardDecision::Approved(Approval::Repeat)
    );
    assert!(
        !s.guard_spend(&evil).await.unwrap().is_approved(),
        "still refused after the bump"
    );

    let d = s.get_spend_decision(&utxo).await.unwrap().unwrap();
    assert_eq!(d.txid, t1.txid);
    assert_eq!(d.fingerprint, t1.fingerprint());
    assert_eq!(d.approved_txids, vec![t1.txid, bump.txid]);
    assert_eq!(s.get_spend_decision(&outpoint(9, 9)).await.unwrap(), None);

    let err = s
        .guard_spend(&intent(103, &[], &[dep], &pays))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
}

async fn guard_is_all_or_nothing_across_inputs(s: Store) {
    let a = outpoint(1, 0);
    let b = outpoint(1, 1);
    let c = outpoint(2, 0);
    assert!(s
        .guard_spend(&intent(10, &[a], &[], &[payment(1, 1)]))
        .await
        .unwrap()
        .is_approved());
    // b and c are free but a conflicts: nothing may be recorded for b or c.
    let refused = s
        .guard_spend(&intent(11, &[c, b, a], &[], &[payment(2, 2)]))
        .await
        .unwrap();
    assert_eq!(
        refused,
        GuardDecision::Refused {
            outpoint: a,
            decided_txid: BitcoinTxid(h(10))
        }
    );
    assert_eq!(s.get_spend_decision(&b).await.unwrap(), None);
    assert_eq!(s.get_spend_decision(&c).await.unwrap(), None);
    // So a transaction spending only b and c is still fine.
    assert_eq!(
        s.guard_spend(&intent(12, &[b, c], &[], &[payment(3, 3)]))
            .await
            .unwrap(),
        GuardDecision::Approved(Approval::First)
    );
}

async fn guard_under_concurrent_attempts(s: Store) {
    // 32 tasks race to spend the same two outpoints with 32 different transactions (listing the
    // inputs in different orders); exactly one may win. Each round uses fresh outpoints.
    for round in 0..5u64 {
        let a = outpoint(1000 + round, 0);
        let b = outpoint(2000 + round, 1);
        let mut tasks = Vec::new();
        for t in 0..32u64 {
            let s = s.clone();
            let spends = if t % 2 == 0 { vec![a, b] } else { vec![b, a] };
            let i = intent(round * 100 + t + 1, &spends, &[], &[payment(t, 1_000 + t)]);
            tasks.push(tokio::spawn(async move {
                (i.txid, s.guard_spend(&i).await.unwrap())
            }));
        }
        let mut winners = Vec::new();
        for t in tasks {
            let (txid, d) = t.await.unwrap();
            match d {
                GuardDecision::Approved(Approval::First) => winners.push(txid),
                GuardDecision::Refused { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(
            winners.len(),
            1,
            "round {round}: exactly one transaction may spend the outpoints"
        );
        let da = s.get_spend_decision(&a).await.unwrap().unwrap();
        let db = s.get_spend_decision(&b).await.unwrap().unwrap();
        assert_eq!((da.txid, db.txid), (winners[0], winners[0]));
    }
    // Fee bumps racing each other: all pay the same requests, so all are approved, once each.
    let u = outpoint(3000, 0);
    let mut tasks = Vec::new();
    for t in 0..16u64 {
        let s = s.clone();
        let i = intent(5000 + t, &[u], &[outpoint(3001, 0)], &[payment(9, 9_000)]);
        tasks.push(tokio::spawn(
            async move { s.guard_spend(&i).await.unwrap() },
        ));
    }
    let mut first = 0;
    for t in tasks {
        match t.await.unwrap() {
            GuardDecision::Approved(Approval::First) => first += 1,
            GuardDecision::Approved(Approval::FeeBump { .. }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(first, 1);
    let d = s.get_spend_decision(&u).await.unwrap().unwrap();
    assert_eq!(d.approved_txids.len(), 16);
    assert_eq!(d.approved_txids.iter().collect::<HashSet<_>>().len(), 16);
}

// ---- PostgreSQL only ----

use sbtc_hsm_signer::storage::postgres::{migrations::Migration, PgStore, MIGRATIONS};

#[tokio::test]
async fn pg_migrations_are_recorded_and_idempotent() {
    let Some(db) = TestDb::create("pg_migrations_are_recorded_and_idempotent").await else {
        return;
    };
    let store = PgStore::connect(db.settings()).await.unwrap();
    let err = store.check_schema().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::SchemaTooOld);
    assert!(err.to_string().contains("sbtc-hsm-signer migrate"), "{err}");
    let first = store.migrate().await.unwrap();
    assert_eq!(first.applied, vec![(1, "initial")]);
    let second = store.migrate().await.unwrap();
    assert!(second.applied.is_empty());
    assert_eq!(second.version, 1);
    assert_eq!(store.check_schema().await.unwrap(), 1);
    let rows = db
        .client()
        .await
        .query(
            "SELECT version, name FROM sbtc_signer.schema_migrations",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
}

#[tokio::test]
async fn pg_concurrent_migrations_apply_once() {
    let Some(db) = TestDb::create("pg_concurrent_migrations_apply_once").await else {
        return;
    };
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let settings = db.settings();
        tasks.push(tokio::spawn(async move {
            PgStore::connect(settings)
                .await
                .unwrap()
                .migrate()
                .await
                .unwrap()
                .applied
                .len()
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, 1, "exactly one migrator applied migration 1");
}

#[tokio::test]
async fn pg_newer_schema_is_refused() {
    let Some(db) = TestDb::create("pg_newer_schema_is_refused").await else {
        return;
    };
    let store = db.store().await;
    db.client()
        .await
        .execute(
            "INSERT INTO sbtc_signer.schema_migrations (version, name, checksum) VALUES (999, 'from the future', '\\x00')",
            &[],
        )
        .await
        .unwrap();
    for err in [
        store.check_schema().await.unwrap_err(),
        store.migrate().await.unwrap_err(),
    ] {
        assert_eq!(err.kind(), ErrorKind::SchemaTooNew);
        let text = err.to_string();
        assert!(text.contains("999") && text.contains("newer"), "{text}");
    }
    let err = match storage_open(&db, OnOpen::CheckSchema).await {
        Ok(_) => panic!("a newer schema must be refused"),
        Err(e) => e,
    };
    assert_eq!(err.kind(), ErrorKind::SchemaTooNew);
}

async fn storage_open(db: &TestDb, on_open: OnOpen) -> Result<Arc<dyn Storage>> {
    let mut c = StorageConfig::postgres(db.url.clone());
    c.connect_retry_secs = Some(5);
    open(&c, on_open).await
}

#[tokio::test]
async fn pg_changed_migration_is_refused() {
    let Some(db) = TestDb::create("pg_changed_migration_is_refused").await else {
        return;
    };
    let store = db.store().await;
    let changed = [Migration {
        version: 1,
        name: "initial",
        sql: "SELECT 1",
    }];
    let err = store.migrate_with(&changed).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::SchemaMismatch);
}

#[tokio::test]
async fn pg_failed_migration_rolls_back() {
    let Some(db) = TestDb::create("pg_failed_migration_rolls_back").await else {
        return;
    };
    let store = db.store().await;
    let mut list = MIGRATIONS.to_vec();
    list.push(Migration {
        version: 2,
        name: "half_broken",
        sql: "CREATE TABLE sbtc_signer.new_table (x INTEGER);
              ALTER TABLE sbtc_signer.deposit_requests ADD COLUMN note TEXT;
              INSERT INTO sbtc_signer.no_such_table VALUES (1);",
    });
    let err = store.migrate_with(&list).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Migration);
    let text = err.to_string();
    assert!(
        text.contains("half_broken")
            && text.contains("rolled back")
            && text.contains("no_such_table"),
        "{text}"
    );
    let client = db.client().await;
    let tables = client
        .query("SELECT 1 FROM information_schema.tables WHERE table_schema = 'sbtc_signer' AND table_name = 'new_table'", &[])
        .await
        .unwrap();
    assert!(
        tables.is_empty(),
        "the first statement of the failed migration was rolled back"
    );
    let cols = client
        .query("SELECT 1 FROM information_schema.columns WHERE table_name = 'deposit_requests' AND column_name = 'note'", &[])
        .await
        .unwrap();
    assert!(cols.is_empty());
    assert_eq!(store.check_schema().await.unwrap(), 1, "still at version 1");
}

#[tokio::test]
async fn pg_seed_query_works_verbatim() {
    let Some(db) = TestDb::create("pg_seed_query_works_verbatim").await else {
        return;
    };
    let store = db.store().await;
    store
        .write_dkg_shares(&shares(1, DkgSharesStatus::Verified))
        .await
        .unwrap();
    store
        .write_dkg_shares(&shares(2, DkgSharesStatus::Failed))
        .await
        .unwrap();
    store
        .write_dkg_shares(&shares(3, DkgSharesStatus::Verified))
        .await
        .unwrap();
    let rows = db
        .client()
        .await
        .query(
            "SELECT aggregate_key FROM sbtc_signer.dkg_shares WHERE dkg_shares_status = 'verified' ORDER BY created_at DESC;",
            &[],
        )
        .await
        .unwrap();
    let keys: Vec<Vec<u8>> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(keys, vec![key(3).0.to_vec(), key(1).0.to_vec()]);
}

#[tokio::test]
async fn pg_guard_decisions_survive_a_restart_of_the_signer() {
    let Some(db) = TestDb::create("pg_guard_decisions_survive_a_restart_of_the_signer").await
    else {
        return;
    };
    let t1 = intent(1, &[outpoint(1, 0)], &[], &[payment(1, 1_000)]);
    {
        let store = db.store().await;
        assert!(store.guard_spend(&t1).await.unwrap().is_approved());
    }
    // A new process: a new pool, new connections.
    let store = db.store().await;
    let conflicting = intent(2, &[outpoint(1, 0)], &[], &[payment(1, 999)]);
    assert_eq!(
        store.guard_spend(&conflicting).await.unwrap(),
        GuardDecision::Refused {
            outpoint: outpoint(1, 0),
            decided_txid: t1.txid
        }
    );
}

#[tokio::test]
async fn pg_audit_tampering_is_detected() {
    let Some(db) = TestDb::create("pg_audit_tampering_is_detected").await else {
        return;
    };
    let store = db.store().await;
    for i in 0..6u8 {
        store
            .append_audit(&AuditRecord::new(
                "identity",
                "sign_secp256k1_prehash",
                vec![i; 32],
                format!("test {i}"),
            ))
            .await
            .unwrap();
    }
    let client = db.client().await;
    // The table refuses edits from anyone who has not switched triggers off.
    let err = client
        .execute(
            "UPDATE sbtc_signer.audit_log SET reason = 'x' WHERE seq = 2",
            &[],
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("append-only") || format!("{err:?}").contains("append-only"),
        "{err:?}"
    );
    assert!(client
        .execute("DELETE FROM sbtc_signer.audit_log WHERE seq = 2", &[])
        .await
        .is_err());
    assert!(store.verify_audit_log().await.unwrap().is_intact());

    // A superuser can switch them off; the hash chain still tells.
    client
        .batch_execute("SET session_replication_role = replica")
        .await
        .unwrap();
    client
        .execute(
            "UPDATE sbtc_signer.audit_log SET reason = 'routine' WHERE seq = 4",
            &[],
        )
        .await
        .unwrap();
    let v = store.verify_audit_log().await.unwrap();
    assert_eq!(v.first_break, Some(ChainBreak::Edited { seq: 4 }));
    assert_eq!(v.entries, 3);
    client
        .execute(
            "UPDATE sbtc_signer.audit_log SET reason = 'test 3' WHERE seq = 4",
            &[],
        )
        .await
        .unwrap();
    assert!(
        store.verify_audit_log().await.unwrap().is_intact(),
        "restoring the row restores the chain"
    );

    client
        .execute("DELETE FROM sbtc_signer.audit_log WHERE seq = 2", &[])
        .await
        .unwrap();
    assert_eq!(
        store.verify_audit_log().await.unwrap().first_break,
        Some(ChainBreak::Missing {
            expected_seq: 2,
            found_seq: 3
        })
    );
    // Deleting and renumbering to hide the gap breaks the hashes instead.
    client
        .execute(
            "UPDATE sbtc_signer.audit_log SET seq = seq + 100 WHERE seq > 2",
            &[],
        )
        .await
        .unwrap();
    client
        .execute(
            "UPDATE sbtc_signer.audit_log SET seq = seq - 101 WHERE seq > 100",
            &[],
        )
        .await
        .unwrap();
    assert!(matches!(
        store.verify_audit_log().await.unwrap().first_break,
        Some(ChainBreak::Edited { seq: 2 })
    ));
}

#[tokio::test]
async fn pg_down_at_start_is_a_clear_error_after_retries() {
    // Nothing listens on port 1 of 127.0.0.1.
    let mut c = StorageConfig::postgres("postgresql://signer@127.0.0.1:1/signer");
    c.connect_retry_secs = Some(1);
    let started = std::time::Instant::now();
    let err = match open(&c, OnOpen::CheckSchema).await {
        Ok(_) => panic!("nothing listens there"),
        Err(e) => e,
    };
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    let text = err.to_string();
    assert!(
        text.contains("cannot reach PostgreSQL at postgresql://signer@127.0.0.1:1/signer"),
        "{text}"
    );
    assert!(text.contains("check that PostgreSQL is running"), "{text}");
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(500),
        "it retried before giving up"
    );
}

#[tokio::test]
async fn memory_store_opens_from_config() {
    let s = open(&StorageConfig::memory(), OnOpen::CheckSchema)
        .await
        .unwrap();
    assert!(s.get_bitcoin_canonical_tip().await.unwrap().is_none());
}

#[tokio::test]
async fn pg_password_file_reaches_the_server() {
    use std::os::unix::fs::PermissionsExt;
    let Some(db) = TestDb::create("pg_password_file_reaches_the_server").await else {
        return;
    };
    let admin = db.client().await;
    // scripts/pg.sh makes this role log in with scram-sha-256; on another server, skip.
    let rule = admin
        .query(
            "SELECT 1 FROM pg_hba_file_rules WHERE 'sbtc_password_test' = ANY(user_name) AND auth_method = 'scram-sha-256'",
            &[],
        )
        .await
        .unwrap();
    if rule.is_empty() {
        eprintln!(
            "SKIPPED: the server has no scram rule for sbtc_password_test (scripts/pg.sh adds one)"
        );
        return;
    }
    let password = hex::encode(rand::random::<[u8; 12]>());
    admin
        .batch_execute(&format!(
            "DO $$ BEGIN
               IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'sbtc_password_test') THEN
                 CREATE ROLE sbtc_password_test LOGIN;
               END IF;
             END $$;
             ALTER ROLE sbtc_password_test PASSWORD '{password}';"
        ))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, value: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, format!("{value}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    };
    let (_, rest) = db.url.split_once('@').unwrap();
    let mut c = StorageConfig::postgres(format!("postgresql://sbtc_password_test@{rest}"));
    c.connect_retry_secs = Some(1);

    c.password_file = Some(write("right", &password));
    let store = open(&c, OnOpen::CheckSchema).await;
    let err = match store {
        Ok(_) => panic!("the fresh database has no schema yet"),
        Err(e) => e,
    };
    // Authenticated: the server answered about the schema, not about the password.
    assert_eq!(err.kind(), ErrorKind::SchemaTooOld, "{err}");

    c.password_file = Some(write("wrong", "not-the-password"));
    let err = match open(&c, OnOpen::CheckSchema).await {
        Ok(_) => panic!("a wrong password must not connect"),
        Err(e) => e,
    };
    let text = err.to_string();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{text}");
    assert!(text.contains("password authentication failed"), "{text}");
    assert!(
        !text.contains("not-the-password") && !text.contains(&password),
        "{text}"
    );
}
