//! One suite, two stores: every case runs against the in-memory store and against a fresh
//! database on a real PostgreSQL server (SBTC_TEST_PG_URL), so both keep the same semantics.
//! PostgreSQL-only behaviour (migrations, the seed's SQL, tampering) is at the end.

mod storage_support;

use std::{collections::HashSet, sync::Arc};

use bitcoin::{
    hashes::Hash as _, Amount, OutPoint, ScriptBuf, TapNodeHash, TapSighash, TxOut, Weight,
};
use sbtc_custody::SealedBlob;
use sbtc_hsm_signer::{
    keys::AggregateKey,
    signing::{DkgId, SealedShares},
    storage::{memory::MemoryStore, *},
};
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
    marked_tip_observed_transactions_and_submissions,
    deposits_and_votes,
    withdrawals_pending_until_swept,
    dkg_shares_latest_verified,
    dkg_shares_carry_what_unsealing_needs,
    dkg_shares_for_output_key,
    amounts_above_i64_max_are_refused,
    sighashes_stacks_transactions_and_rotations,
    audit_log_chains_and_dedups,
    audit_log_concurrent_appends_do_not_fork,
    guard_refuses_conflicts_and_allows_fee_bumps,
    guard_is_all_or_nothing_across_inputs,
    guard_under_concurrent_attempts,
    guard_refuses_change_to_a_foreign_script,
    guard_refuses_a_dropped_or_changed_payout,
    guard_refuses_a_fee_above_the_cap,
    guard_refuses_a_fee_not_raised,
    guard_approves_a_proper_fee_bump,
    stacks_events_follow_the_canonical_chains,
    stacks_block_events_are_idempotent_and_checked,
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
    let (a2, b3) = (bh(3), bh(6));
    assert!(s.in_canonical_chain(&b3, &bh(4)).await.unwrap());
    assert!(s.in_canonical_chain(&b3, &bh(1)).await.unwrap());
    assert!(!s.in_canonical_chain(&b3, &bh(2)).await.unwrap());
    assert!(s.in_canonical_chain(&a2, &bh(2)).await.unwrap());

    // d100 in a1 (and again in b2 after the reorg), d101 in b1, d102 in b2.
    s.write_deposit_request(&deposit(100, 0), &bh(2))
        .await
        .unwrap();
    s.write_deposit_request(&deposit(101, 0), &bh(4))
        .await
        .unwrap();
    s.write_deposit_request(&deposit(102, 3), &bh(5))
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
    s.write_bitcoin_transaction(&txid(100), &bh(5))
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
        .get_pending_deposit_requests(&bh(99), 10)
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

fn simple_tx(lock_time: u32) -> bitcoin::Transaction {
    bitcoin::Transaction {
        version: bitcoin::transaction::Version::TWO,
        lock_time: bitcoin::absolute::LockTime::from_consensus(lock_time),
        input: vec![bitcoin::TxIn::default()],
        output: vec![TxOut {
            value: Amount::from_sat(10_000),
            script_pubkey: peg_script(),
        }],
    }
}

async fn marked_tip_observed_transactions_and_submissions(s: Store) {
    // genesis(1) <- a1(2) <- a2(3), and genesis <- b1(4): a is longer, but the node says b.
    for b in [
        block(1, 0, 0),
        block(2, 1, 1),
        block(3, 2, 2),
        block(4, 1, 1),
    ] {
        s.write_bitcoin_block(&b).await.unwrap();
    }
    assert_eq!(
        s.get_bitcoin_canonical_tip().await.unwrap().unwrap().hash,
        bh(3)
    );
    s.set_bitcoin_canonical_tip(&bh(4)).await.unwrap();
    assert_eq!(
        s.get_bitcoin_canonical_tip().await.unwrap().unwrap().hash,
        bh(4),
        "the marked tip is canonical even when a longer fork is stored"
    );
    let err = s.set_bitcoin_canonical_tip(&bh(77)).await.unwrap_err();
    assert!(err.to_string().contains("not stored"), "{err}");
    assert_eq!(
        s.get_bitcoin_canonical_tip().await.unwrap().unwrap().hash,
        bh(4)
    );

    // A sweep confirmed on fork a only: confirmed relative to a2, not relative to b1.
    let sweep = ObservedTransaction {
        kind: ObservedKind::Sweep,
        tx: simple_tx(1),
    };
    let txid = sweep.txid();
    s.write_observed_transaction(&sweep, &bh(2)).await.unwrap();
    s.write_observed_transaction(&sweep, &bh(2)).await.unwrap(); // idempotent
    assert!(s.is_confirmed_on(&bh(3), &txid).await.unwrap());
    assert!(!s.is_confirmed_on(&bh(4), &txid).await.unwrap());
    s.write_observed_transaction(&sweep, &bh(4)).await.unwrap();
    assert!(s.is_confirmed_on(&bh(4), &txid).await.unwrap());
    let mut blocks = vec![bh(2), bh(4)];
    blocks.sort();
    assert_eq!(s.get_transaction_blocks(&txid).await.unwrap(), blocks);
    let other = simple_tx(2).compute_txid();
    assert_eq!(
        s.get_observed_transactions(&[txid, other]).await.unwrap(),
        vec![sweep.clone()]
    );

    // Submissions: stored once, found by outpoint and by txid.
    let tx = simple_tx(3);
    let sub = DepositSubmissionRecord {
        outpoint: OutPoint {
            txid: tx.compute_txid(),
            vout: 0,
        },
        deposit_script: ScriptBuf::from_bytes(vec![1, 2, 3]),
        reclaim_script: ScriptBuf::from_bytes(vec![4, 5]),
        transaction: tx.clone(),
        source: SubmissionSource::Peer(key(3)),
    };
    assert!(s.write_deposit_submission(&sub).await.unwrap());
    let mut again = sub.clone();
    again.source = SubmissionSource::Wallet;
    assert!(
        !s.write_deposit_submission(&again).await.unwrap(),
        "a repeat is not new"
    );
    assert_eq!(
        s.get_deposit_submission(&sub.outpoint).await.unwrap(),
        Some(sub.clone())
    );
    assert_eq!(
        s.get_deposit_submissions_for_txids(&[other, tx.compute_txid()])
            .await
            .unwrap(),
        vec![sub.clone()]
    );
    assert!(s
        .get_deposit_submissions_for_txids(&[other])
        .await
        .unwrap()
        .is_empty());
}

async fn deposits_and_votes(s: Store) {
    let d = deposit(1, 2);
    s.write_deposit_request(&d, &bh(9)).await.unwrap();
    let mut changed = d.clone();
    changed.amount = Amount::from_sat(1);
    s.write_deposit_request(&changed, &bh(9)).await.unwrap();
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
        bitcoin_anchor: bh(2),
        bitcoin_anchor_height: 1,
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
        recipient: script(&[0x00, 0x14, id as u8]),
        amount: Amount::from_sat(10_000 * id),
        max_fee: Amount::from_sat(3_000),
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

    let tip = bh(3);
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

    s.write_deposit_request(&deposit(7, 0), &bh(3))
        .await
        .unwrap();
    let sweep = SweepTransaction {
        txid: txid(77),
        signers_prevout: outpoint(70, 0),
        deposits: vec![outpoint(7, 0)],
        withdrawals: vec![payment(2, 20_000), payment(1, 10_000)],
        fee: Amount::from_sat(1_234),
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

fn stacks_block(n: u64, height: u64, parent: u64, anchor: u64, anchor_height: u64) -> StacksBlock {
    StacksBlock {
        hash: StacksBlockHash(h(n)),
        height,
        parent_hash: StacksBlockHash(h(parent)),
        bitcoin_anchor: bh(anchor),
        bitcoin_anchor_height: anchor_height,
    }
}

/// Event `position` of Stacks block `block`: withdrawal events carry a request id, deposits an
/// outpoint; the raw value only has to come back as written.
fn registry_event(
    block: u64,
    position: u32,
    topic: RegistryTopic,
    request_id: Option<u64>,
    deposit: Option<OutPoint>,
) -> RegistryEventRecord {
    RegistryEventRecord {
        block_hash: StacksBlockHash(h(block)),
        txid: StacksTxid(h(block * 100 + u64::from(position))),
        event_index: 1,
        position,
        topic,
        request_id,
        deposit,
        raw_value: vec![0x0c, block as u8, position as u8],
    }
}

fn topics(events: &[StoredRegistryEvent]) -> Vec<(u64, RegistryTopic)> {
    events
        .iter()
        .map(|e| (e.block_height, e.event.topic))
        .collect()
}

async fn stacks_events_follow_the_canonical_chains(s: Store) {
    use RegistryTopic::*;
    // Bitcoin: b1 <- b2 <- b3, and b2 <- b13 (the other branch at height 3).
    for b in [
        block(1, 1, 0),
        block(2, 2, 1),
        block(3, 3, 2),
        block(13, 3, 2),
    ] {
        s.write_bitcoin_block(&b).await.unwrap();
    }
    s.set_bitcoin_canonical_tip(&bh(3)).await.unwrap();
    assert_eq!(s.get_stacks_canonical_tip().await.unwrap(), None);

    // Stacks: s10 <- s11 <- s120 (and later s11 <- s121 <- s131).
    let create1 = registry_event(11, 0, WithdrawalCreate, Some(1), None);
    let deposit = registry_event(11, 1, CompletedDeposit, None, Some(outpoint(100, 0)));
    s.write_stacks_block_events(&stacks_block(10, 10, 9, 1, 1), &[])
        .await
        .unwrap();
    // Written out of order: chain order is (height, position), not arrival.
    s.write_stacks_block_events(
        &stacks_block(11, 11, 10, 2, 2),
        &[deposit.clone(), create1.clone()],
    )
    .await
    .unwrap();
    let accept1 = registry_event(120, 0, WithdrawalAccept, Some(1), None);
    s.write_stacks_block_events(
        &stacks_block(120, 12, 11, 3, 3),
        std::slice::from_ref(&accept1),
    )
    .await
    .unwrap();
    assert_eq!(
        s.get_stacks_block(&StacksBlockHash(h(120))).await.unwrap(),
        Some(stacks_block(120, 12, 11, 3, 3))
    );
    assert_eq!(
        s.get_stacks_canonical_tip().await.unwrap().unwrap().hash,
        StacksBlockHash(h(120))
    );
    let w1 = s.get_withdrawal_events(1).await.unwrap();
    assert_eq!(
        topics(&w1),
        vec![(11, WithdrawalCreate), (12, WithdrawalAccept)]
    );
    assert_eq!(w1[0].event, create1);
    assert_eq!(
        topics(&s.get_registry_events_since(0).await.unwrap()),
        vec![
            (11, WithdrawalCreate),
            (11, CompletedDeposit),
            (12, WithdrawalAccept)
        ]
    );
    assert_eq!(
        topics(&s.get_registry_events_since(12).await.unwrap()),
        vec![(12, WithdrawalAccept)]
    );
    assert_eq!(
        s.get_deposit_events(&outpoint(100, 0)).await.unwrap()[0].event,
        deposit
    );
    assert!(s
        .get_deposit_events(&outpoint(100, 1))
        .await
        .unwrap()
        .is_empty());
    assert!(s.get_withdrawal_events(2).await.unwrap().is_empty());

    // A competing block at the same height, with a higher hash: the first branch stays.
    let reject1 = registry_event(121, 0, WithdrawalReject, Some(1), None);
    let rotation = registry_event(121, 1, KeyRotation, None, None);
    s.write_stacks_block_events(
        &stacks_block(121, 12, 11, 3, 3),
        &[reject1.clone(), rotation.clone()],
    )
    .await
    .unwrap();
    assert_eq!(
        s.get_stacks_canonical_tip().await.unwrap().unwrap().hash,
        StacksBlockHash(h(120))
    );
    assert_eq!(
        s.get_latest_registry_event(KeyRotation).await.unwrap(),
        None
    );

    // Its branch grows: the accept is no longer final, the reject is.
    let create2 = registry_event(131, 0, WithdrawalCreate, Some(2), None);
    s.write_stacks_block_events(
        &stacks_block(131, 13, 121, 3, 3),
        std::slice::from_ref(&create2),
    )
    .await
    .unwrap();
    assert_eq!(
        s.get_stacks_canonical_tip().await.unwrap().unwrap().hash,
        StacksBlockHash(h(131))
    );
    assert_eq!(
        topics(&s.get_withdrawal_events(1).await.unwrap()),
        vec![(11, WithdrawalCreate), (12, WithdrawalReject)]
    );
    assert_eq!(
        s.get_latest_registry_event(KeyRotation)
            .await
            .unwrap()
            .unwrap()
            .event,
        rotation
    );
    assert_eq!(
        topics(&s.get_registry_events_since(0).await.unwrap()),
        vec![
            (11, WithdrawalCreate),
            (11, CompletedDeposit),
            (12, WithdrawalReject),
            (12, KeyRotation),
            (13, WithdrawalCreate)
        ]
    );

    // A Stacks block anchored to a Bitcoin block this signer has not stored does not count yet.
    s.write_stacks_block_events(&stacks_block(140, 14, 131, 4, 4), &[])
        .await
        .unwrap();
    assert_eq!(
        s.get_stacks_canonical_tip().await.unwrap().unwrap().hash,
        StacksBlockHash(h(131))
    );

    // Bitcoin reorgs to b13: every Stacks block anchored to b3 drops out with its events.
    s.set_bitcoin_canonical_tip(&bh(13)).await.unwrap();
    assert_eq!(
        s.get_stacks_canonical_tip().await.unwrap().unwrap().hash,
        StacksBlockHash(h(11))
    );
    assert_eq!(
        topics(&s.get_withdrawal_events(1).await.unwrap()),
        vec![(11, WithdrawalCreate)]
    );
    assert!(s.get_withdrawal_events(2).await.unwrap().is_empty());
    assert_eq!(
        s.get_latest_registry_event(KeyRotation).await.unwrap(),
        None
    );
    assert_eq!(
        s.get_deposit_events(&outpoint(100, 0)).await.unwrap().len(),
        1
    );
    // The new branch on b13.
    let accept1b = registry_event(122, 0, WithdrawalAccept, Some(1), None);
    s.write_stacks_block_events(&stacks_block(122, 12, 11, 13, 3), &[accept1b])
        .await
        .unwrap();
    assert_eq!(
        topics(&s.get_withdrawal_events(1).await.unwrap()),
        vec![(11, WithdrawalCreate), (12, WithdrawalAccept)]
    );
    // And back: the marked tip decides, nothing was deleted.
    s.set_bitcoin_canonical_tip(&bh(3)).await.unwrap();
    assert_eq!(
        s.get_stacks_canonical_tip().await.unwrap().unwrap().hash,
        StacksBlockHash(h(131))
    );
}

async fn stacks_block_events_are_idempotent_and_checked(s: Store) {
    use RegistryTopic::*;
    s.write_bitcoin_block(&block(1, 1, 0)).await.unwrap();
    let b = stacks_block(20, 5, 19, 1, 1);
    let create = registry_event(20, 0, WithdrawalCreate, Some(9), None);
    s.write_stacks_block_events(&b, std::slice::from_ref(&create))
        .await
        .unwrap();
    // A repeat delivery stores nothing twice; a changed copy of an event keeps the first.
    let mut changed = create.clone();
    changed.raw_value = vec![0xff];
    changed.position = 7;
    s.write_stacks_block_events(&b, &[create.clone(), changed])
        .await
        .unwrap();
    s.write_stacks_block_events(&b, std::slice::from_ref(&create))
        .await
        .unwrap();
    let events = s.get_withdrawal_events(9).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event, create);
    assert_eq!(events[0].block_height, 5);

    // An event of another block, or a request id PostgreSQL cannot hold: nothing is written.
    let other = stacks_block(21, 6, 20, 1, 1);
    let err = s
        .write_stacks_block_events(
            &other,
            &[registry_event(22, 0, WithdrawalReject, Some(9), None)],
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.to_string().contains("names block"), "{err}");
    let err = s
        .write_stacks_block_events(
            &other,
            &[registry_event(
                21,
                0,
                WithdrawalReject,
                Some(u64::MAX),
                None,
            )],
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::OutOfRange);
    assert_eq!(s.get_stacks_block(&other.hash).await.unwrap(), None);
    assert_eq!(
        s.get_stacks_canonical_tip().await.unwrap().unwrap().hash,
        b.hash
    );
}

fn shares(n: u8, status: DkgSharesStatus) -> DkgShares {
    DkgShares {
        aggregate_key: agg(n),
        dkg_id: DkgId(1000 + u64::from(n)),
        signer_index: u32::from(n % 3),
        sealed_private_shares: SealedBlob::from_bytes(vec![0x01, n, 0xaa, 0xbb]),
        public_shares: vec![n; 40],
        signer_set: vec![key(1), key(2), key(3)],
        threshold: 2,
        status,
        started_at_block_hash: bh(n as u64),
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
        .set_dkg_shares_status(&agg(2), DkgSharesStatus::Verified)
        .await
        .unwrap());
    assert!(!s
        .set_dkg_shares_status(&agg(9), DkgSharesStatus::Verified)
        .await
        .unwrap());
    let latest = s.get_latest_verified_dkg_shares().await.unwrap().unwrap();
    assert_eq!(
        latest.shares.aggregate_key,
        agg(2),
        "the newer verified shares win"
    );
    let stored = s.get_dkg_shares(&agg(3)).await.unwrap().unwrap();
    assert_eq!(stored.shares.status, DkgSharesStatus::Failed);
    assert_eq!(
        stored.shares.sealed_private_shares.as_bytes(),
        &[0x01, 3, 0xaa, 0xbb]
    );
    let oldest = s.get_dkg_shares(&agg(1)).await.unwrap().unwrap();
    assert!(oldest.created_at <= latest.created_at);

    // Newer shares that are not verified (yet, or ever) do not replace the current key.
    s.write_dkg_shares(&shares(4, DkgSharesStatus::Unverified))
        .await
        .unwrap();
    s.write_dkg_shares(&shares(5, DkgSharesStatus::Failed))
        .await
        .unwrap();
    let latest = s.get_latest_verified_dkg_shares().await.unwrap().unwrap();
    assert_eq!(latest.shares, shares(2, DkgSharesStatus::Verified));
}

async fn dkg_shares_carry_what_unsealing_needs(s: Store) {
    // What `KeyShares::seal` hands over after a DKG; the seal is bound to all of it.
    let sealed = SealedShares {
        dkg_id: DkgId(42),
        signer: 2,
        aggregate_key: agg(4),
        blob: vec![0x5e, 0xa1, 0xed, 4, 2],
    };
    let row = DkgShares {
        aggregate_key: agg(4),
        dkg_id: sealed.dkg_id,
        signer_index: sealed.signer,
        sealed_private_shares: SealedBlob::from_bytes(sealed.blob.clone()),
        ..shares(4, DkgSharesStatus::Verified)
    };
    s.write_dkg_shares(&row).await.unwrap();
    let stored = s.get_dkg_shares(&agg(4)).await.unwrap().unwrap();
    assert_eq!(stored.shares, row);
    assert_eq!(
        (stored.shares.dkg_id, stored.shares.signer_index),
        (DkgId(42), 2)
    );
    assert_eq!(stored.shares.sealed_shares(), sealed);
    let latest = s.get_latest_verified_dkg_shares().await.unwrap().unwrap();
    assert_eq!(latest.shares.sealed_shares(), sealed);

    // The largest id and index the columns hold round-trip.
    let edge = DkgShares {
        dkg_id: DkgId(i64::MAX as u64),
        signer_index: i32::MAX as u32,
        ..shares(5, DkgSharesStatus::Unverified)
    };
    s.write_dkg_shares(&edge).await.unwrap();
    assert_eq!(
        s.get_dkg_shares(&agg(5)).await.unwrap().unwrap().shares,
        edge
    );

    // What no DKG produces is refused by both stores, and nothing is stored.
    for (dkg_id, signer_index, kind) in [
        (0, 0, ErrorKind::InvalidInput),
        (i64::MAX as u64 + 1, 0, ErrorKind::OutOfRange),
        (1, i32::MAX as u32 + 1, ErrorKind::OutOfRange),
    ] {
        let bad = DkgShares {
            dkg_id: DkgId(dkg_id),
            signer_index,
            ..shares(6, DkgSharesStatus::Unverified)
        };
        let err = s.write_dkg_shares(&bad).await.unwrap_err();
        assert_eq!(err.kind(), kind, "{err}");
        assert_eq!(s.get_dkg_shares(&agg(6)).await.unwrap(), None);
    }
}

async fn dkg_shares_for_output_key(s: Store) {
    let find = |key: bitcoin::secp256k1::XOnlyPublicKey| {
        let s = s.clone();
        async move {
            s.get_dkg_shares_for_output_key(&key)
                .await
                .unwrap()
                .map(|stored| stored.shares)
        }
    };
    let peg_output_key = |k: AggregateKey| k.tap_tweaked(None).to_x_only_public_key();
    assert_eq!(find(agg(1).x_only()).await, None);
    s.write_dkg_shares(&shares(1, DkgSharesStatus::Verified))
        .await
        .unwrap();
    s.write_dkg_shares(&shares(2, DkgSharesStatus::Failed))
        .await
        .unwrap();

    // A deposit names the x-only aggregate key in its script; the peg UTXO pays to the
    // key-path output key. Both find the shares; the status is not a filter.
    assert_eq!(
        find(agg(1).x_only()).await,
        Some(shares(1, DkgSharesStatus::Verified))
    );
    assert_eq!(
        find(peg_output_key(agg(1))).await,
        Some(shares(1, DkgSharesStatus::Verified))
    );
    assert_eq!(
        find(agg(2).x_only()).await,
        Some(shares(2, DkgSharesStatus::Failed))
    );
    assert_ne!(peg_output_key(agg(1)), agg(1).x_only());

    // Not ours: an unrelated key, and our key tweaked with a script tree.
    assert_eq!(find(agg(9).x_only()).await, None);
    let with_tree = agg(1)
        .tap_tweaked(Some(TapNodeHash::from_byte_array([7; 32])))
        .to_x_only_public_key();
    assert_eq!(find(with_tree).await, None);

    // The negated key has the same x-only key (and output key): the newest shares win.
    let mut negated = agg(1).serialize();
    negated[0] = 0x03;
    let negated = AggregateKey::from_slice(&negated).unwrap();
    assert_eq!(negated.x_only(), agg(1).x_only());
    let newer = DkgShares {
        aggregate_key: negated,
        dkg_id: DkgId(77),
        ..shares(1, DkgSharesStatus::Unverified)
    };
    s.write_dkg_shares(&newer).await.unwrap();
    assert_eq!(find(agg(1).x_only()).await, Some(newer.clone()));
    assert_eq!(find(peg_output_key(agg(1))).await, Some(newer.clone()));

    let all = s.get_all_dkg_shares().await.unwrap();
    assert_eq!(
        all.iter()
            .map(|s| s.shares.aggregate_key)
            .collect::<Vec<_>>(),
        vec![negated, agg(2), agg(1)],
        "newest first"
    );
}

async fn amounts_above_i64_max_are_refused(s: Store) {
    let too_much = Amount::from_sat(i64::MAX as u64 + 1);
    let refused = |err: Error| {
        assert_eq!(err.kind(), ErrorKind::OutOfRange, "{err}");
        assert!(err.to_string().contains("9223372036854775808 sat"), "{err}");
    };

    let mut d = deposit(1, 0);
    d.amount = too_much;
    refused(s.write_deposit_request(&d, &bh(1)).await.unwrap_err());
    let mut d = deposit(1, 0);
    d.max_fee = too_much;
    refused(s.write_deposit_request(&d, &bh(1)).await.unwrap_err());
    assert_eq!(s.get_deposit_request(&d.outpoint).await.unwrap(), None);

    let w = WithdrawalRequest {
        request_id: 1,
        stacks_txid: StacksTxid(h(1)),
        stacks_block_hash: StacksBlockHash(h(2)),
        recipient: script(&[0x51]),
        amount: too_much,
        max_fee: Amount::from_sat(1),
        sender: "ST1SENDER".into(),
    };
    refused(s.write_withdrawal_request(&w).await.unwrap_err());
    refused(
        s.write_withdrawal_request(&WithdrawalRequest {
            amount: Amount::from_sat(1),
            max_fee: too_much,
            ..w.clone()
        })
        .await
        .unwrap_err(),
    );
    assert_eq!(s.get_withdrawal_request(1).await.unwrap(), None);

    let sweep = SweepTransaction {
        txid: txid(5),
        signers_prevout: outpoint(6, 0),
        deposits: vec![outpoint(7, 0)],
        withdrawals: vec![payment(1, 1_000)],
        fee: too_much,
        chain_tip: bh(1),
    };
    refused(s.write_sweep_transaction(&sweep).await.unwrap_err());
    let mut bad_payment = sweep.clone();
    bad_payment.fee = Amount::from_sat(1_000);
    bad_payment.withdrawals.push(WithdrawalPayment {
        amount: too_much,
        ..payment(2, 0)
    });
    refused(s.write_sweep_transaction(&bad_payment).await.unwrap_err());
    assert_eq!(s.get_sweep_transaction(&sweep.txid).await.unwrap(), None);

    // The largest storable amount is kept exactly.
    let mut d = deposit(2, 0);
    d.amount = MAX_STORABLE_AMOUNT;
    d.max_fee = MAX_STORABLE_AMOUNT;
    s.write_deposit_request(&d, &bh(1)).await.unwrap();
    assert_eq!(s.get_deposit_request(&d.outpoint).await.unwrap(), Some(d));
}

async fn sighashes_stacks_transactions_and_rotations(s: Store) {
    let d = SighashDecision {
        sighash: TapSighash::from_byte_array(h(1)),
        txid: txid(2),
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
        bitcoin_chain_tip: bh(6),
    };
    s.write_stacks_transaction(&t).await.unwrap();
    assert_eq!(s.get_stacks_transaction(&t.txid).await.unwrap(), Some(t));
    assert_eq!(
        s.get_stacks_transaction(&StacksTxid(h(0))).await.unwrap(),
        None
    );

    let r = |n: u8| SignerSetRotation {
        aggregate_key: agg(n),
        signer_set: vec![key(n), key(n + 1)],
        threshold: 2,
        stacks_txid: StacksTxid(h(n as u64)),
        bitcoin_block_hash: bh(10 + n as u64),
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

/// The signers' peg script (a P2TR output to a fixed key) and the one an attacker would use.
fn peg_script() -> ScriptBuf {
    script(&[&[0x51, 0x20][..], &[0x77; 32]].concat())
}

fn foreign_script() -> ScriptBuf {
    script(&[&[0x51, 0x20][..], &[0x66; 32]].concat())
}

/// Transaction `n`: change of 100,000 sat to the peg script, a fee of 1,000 + n sat at 250 vB
/// (so a later `n` pays more).
fn intent(
    n: u64,
    spends: &[OutPoint],
    deposits: &[OutPoint],
    withdrawals: &[WithdrawalPayment],
) -> SpendIntent {
    SpendIntent {
        txid: txid(n),
        spends: spends.to_vec(),
        deposits: deposits.to_vec(),
        withdrawals: withdrawals.to_vec(),
        change: vec![TxOut {
            value: Amount::from_sat(100_000),
            script_pubkey: peg_script(),
        }],
        fee: Amount::from_sat(1_000 + n),
        weight: Weight::from_vb_unchecked(250),
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
        GuardDecision::Refused(Refusal::PayoutsChanged {
            outpoint: utxo,
            decided_txid: t1.txid
        })
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
    assert_eq!(d.change_scripts, Some(vec![peg_script()]));
    assert_eq!(d.highest_fee, Some(bump.fee));
    assert_eq!(d.approved_txids, vec![t1.txid, bump.txid]);
    assert_eq!(s.get_spend_decision(&outpoint(9, 9)).await.unwrap(), None);

    let err = s
        .guard_spend(&intent(103, &[], &[dep], &pays))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    // Messages show a txid the way users and block explorers do: byte-reversed hex.
    let mut shown = h(103);
    shown.reverse();
    assert!(err.to_string().contains(&hex::encode(shown)), "{err}");
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
        GuardDecision::Refused(Refusal::PayoutsChanged {
            outpoint: a,
            decided_txid: txid(10)
        })
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
    // Fee bumps racing each other: all pay the same requests, each with its own fee. A bump is
    // approved only if it pays more than every one approved before it, so the approvals, in the
    // order they were recorded, pay strictly rising fees, and the highest bidder always wins.
    let u = outpoint(3000, 0);
    let mut tasks = Vec::new();
    let mut fees = std::collections::HashMap::new();
    for t in 0..16u64 {
        let s = s.clone();
        let i = intent(5000 + t, &[u], &[outpoint(3001, 0)], &[payment(9, 9_000)]);
        fees.insert(i.txid, i.fee);
        tasks.push(tokio::spawn(
            async move { s.guard_spend(&i).await.unwrap() },
        ));
    }
    let (mut first, mut approved) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            GuardDecision::Approved(Approval::First) => first += 1,
            GuardDecision::Approved(Approval::FeeBump { .. }) => {}
            GuardDecision::Refused(Refusal::FeeNotRaised { .. }) => continue,
            other => panic!("unexpected {other:?}"),
        }
        approved += 1;
    }
    assert_eq!(first, 1);
    let d = s.get_spend_decision(&u).await.unwrap().unwrap();
    assert_eq!(d.approved_txids.len(), approved);
    assert_eq!(
        d.approved_txids.iter().collect::<HashSet<_>>().len(),
        approved
    );
    let approved_fees: Vec<Amount> = d.approved_txids.iter().map(|t| fees[t]).collect();
    assert!(
        approved_fees.windows(2).all(|w| w[0] < w[1]),
        "{approved_fees:?}"
    );
    assert_eq!(d.approved_txids.last(), Some(&txid(5015)));
    assert_eq!(d.highest_fee, Some(fees[&txid(5015)]));
}

/// Records `first`, then checks that `refused` is refused, leaves every record as it was, and
/// is refused again the same way; returns the refusal.
async fn refused_and_unrecorded(s: &Store, first: &SpendIntent, refused: &SpendIntent) -> Refusal {
    assert_eq!(
        s.guard_spend(first).await.unwrap(),
        GuardDecision::Approved(Approval::First)
    );
    let before: Vec<_> = {
        let mut v = Vec::new();
        for op in refused.spends.iter().chain(&first.spends) {
            v.push(s.get_spend_decision(op).await.unwrap());
        }
        v
    };
    let decision = s.guard_spend(refused).await.unwrap();
    let Some(refusal) = decision.refusal().cloned() else {
        panic!("{} was approved: {decision:?}", refused.txid)
    };
    let mut after = Vec::new();
    for op in refused.spends.iter().chain(&first.spends) {
        after.push(s.get_spend_decision(op).await.unwrap());
    }
    assert_eq!(before, after, "a refused intent left a record");
    // Refused again (nothing about it was remembered as approved).
    assert_eq!(s.guard_spend(refused).await.unwrap(), decision);
    refusal
}

async fn guard_refuses_change_to_a_foreign_script(s: Store) {
    let utxo = outpoint(1, 0);
    let t1 = intent(100, &[utxo], &[], &[payment(7, 50_000)]);
    // Same payouts, more fee, but the change goes to someone else's script.
    let mut evil = intent(101, &[utxo], &[], &[payment(7, 50_000)]);
    evil.change[0].script_pubkey = foreign_script();
    let r = refused_and_unrecorded(&s, &t1, &evil).await;
    assert_eq!(
        r,
        Refusal::ForeignChange {
            outpoint: utxo,
            decided_txid: t1.txid,
            recorded: vec![peg_script()],
            proposed: vec![foreign_script()],
        }
    );
    assert!(r.to_string().starts_with("foreign change script"), "{r}");
    assert_eq!(r.code(), "foreign_change_script");
    // An extra change output to a foreign script next to the peg one is just as foreign.
    let mut split = intent(102, &[utxo], &[], &[payment(7, 50_000)]);
    split.change.push(TxOut {
        value: Amount::from_sat(40_000),
        script_pubkey: foreign_script(),
    });
    assert_eq!(
        s.guard_spend(&split)
            .await
            .unwrap()
            .refusal()
            .map(Refusal::code),
        Some("foreign_change_script")
    );
    // No change at all (everything else to fees or payouts) is not the same peg script either.
    let mut none = intent(103, &[utxo], &[], &[payment(7, 50_000)]);
    none.change.clear();
    assert_eq!(
        s.guard_spend(&none)
            .await
            .unwrap()
            .refusal()
            .map(Refusal::code),
        Some("foreign_change_script")
    );
}

async fn guard_refuses_a_dropped_or_changed_payout(s: Store) {
    let utxo = outpoint(1, 0);
    let dep = outpoint(2, 0);
    let pays = [payment(7, 50_000), payment(8, 20_000)];
    let t1 = intent(100, &[utxo, dep], &[dep], &pays);
    // Withdrawal 8 dropped (its 20,000 sat would go to change): refused.
    let dropped = intent(101, &[utxo, dep], &[dep], &pays[..1]);
    let r = refused_and_unrecorded(&s, &t1, &dropped).await;
    assert_eq!(
        r,
        Refusal::PayoutsChanged {
            outpoint: utxo,
            decided_txid: t1.txid
        }
    );
    assert!(r.to_string().starts_with("payouts changed"), "{r}");
    // The same withdrawal to another recipient, or with another amount, or the deposit left out.
    let mut redirected = intent(102, &[utxo, dep], &[dep], &pays);
    redirected.withdrawals[1].recipient = foreign_script();
    let mut less = intent(103, &[utxo, dep], &[dep], &pays);
    less.withdrawals[0].amount = Amount::from_sat(49_999);
    let unswept = intent(104, &[utxo, dep], &[], &pays);
    for i in [redirected, less, unswept] {
        assert_eq!(
            s.guard_spend(&i)
                .await
                .unwrap()
                .refusal()
                .map(Refusal::code),
            Some("payouts_changed"),
            "{}",
            i.txid
        );
    }
    let d = s.get_spend_decision(&utxo).await.unwrap().unwrap();
    assert_eq!(d.approved_txids, vec![t1.txid]);
}

async fn guard_refuses_a_fee_above_the_cap(s: Store) {
    // The stores in this suite run with the default policy: 1,000,000 sat and 500 sat/vB.
    let policy = GuardPolicy::default();
    assert_eq!(policy.max_fee, Amount::from_sat(1_000_000));
    let utxo = outpoint(1, 0);
    let t1 = intent(100, &[utxo], &[], &[payment(7, 50_000)]);
    // A bump above the absolute cap: 1,000,001 sat over 100,000 vB is only 10 sat/vB.
    let mut big = intent(101, &[utxo], &[], &[payment(7, 50_000)]);
    big.fee = Amount::from_sat(1_000_001);
    big.weight = Weight::from_vb_unchecked(100_000);
    let r = refused_and_unrecorded(&s, &t1, &big).await;
    assert_eq!(
        r,
        Refusal::FeeAboveCap {
            txid: big.txid,
            fee: big.fee,
            vsize: 100_000,
            max_fee: Amount::from_sat(1_000_000),
            max_fee_rate_sat_per_vb: 500,
        }
    );
    assert!(r.to_string().contains("guard_max_fee_sats"), "{r}");
    // Above the rate cap: 250 vB at 501 sat/vB, far below the absolute cap.
    let mut steep = intent(102, &[utxo], &[], &[payment(7, 50_000)]);
    steep.fee = Amount::from_sat(250 * 501);
    assert_eq!(
        s.guard_spend(&steep)
            .await
            .unwrap()
            .refusal()
            .map(Refusal::code),
        Some("fee_above_cap")
    );
    // Exactly at the rate cap is fine.
    let mut at_cap = intent(103, &[utxo], &[], &[payment(7, 50_000)]);
    at_cap.fee = Amount::from_sat(250 * 500);
    assert_eq!(
        s.guard_spend(&at_cap).await.unwrap(),
        GuardDecision::Approved(Approval::FeeBump { original: t1.txid })
    );
    // The cap holds for a first spend too, and a refused first spend records nothing.
    let fresh = outpoint(5, 0);
    let mut greedy = intent(104, &[fresh], &[], &[payment(9, 1)]);
    greedy.fee = Amount::from_sat(2_000_000);
    greedy.weight = Weight::from_vb_unchecked(1_000_000);
    assert_eq!(
        s.guard_spend(&greedy)
            .await
            .unwrap()
            .refusal()
            .map(Refusal::code),
        Some("fee_above_cap")
    );
    assert_eq!(s.get_spend_decision(&fresh).await.unwrap(), None);
}

async fn guard_refuses_a_fee_not_raised(s: Store) {
    let utxo = outpoint(1, 0);
    let t1 = intent(100, &[utxo], &[], &[payment(7, 50_000)]);
    // Another transaction with the same payouts and change script and the same fee.
    let mut same_fee = intent(101, &[utxo], &[], &[payment(7, 50_000)]);
    same_fee.fee = t1.fee;
    let r = refused_and_unrecorded(&s, &t1, &same_fee).await;
    assert_eq!(
        r,
        Refusal::FeeNotRaised {
            outpoint: utxo,
            decided_txid: t1.txid,
            fee: t1.fee,
            highest_approved_fee: t1.fee,
        }
    );
    assert!(r.to_string().starts_with("fee not raised"), "{r}");
    let mut lower = intent(102, &[utxo], &[], &[payment(7, 50_000)]);
    lower.fee = t1.fee - Amount::from_sat(1);
    assert_eq!(
        s.guard_spend(&lower)
            .await
            .unwrap()
            .refusal()
            .map(Refusal::code),
        Some("fee_not_raised")
    );
}

async fn guard_approves_a_proper_fee_bump(s: Store) {
    let utxo = outpoint(1, 0);
    let dep = outpoint(2, 0);
    let pays = [payment(7, 50_000), payment(8, 20_000)];
    let t1 = intent(100, &[utxo, dep], &[dep], &pays);
    assert_eq!(
        s.guard_spend(&t1).await.unwrap(),
        GuardDecision::Approved(Approval::First)
    );
    // Inputs and outputs in another order, change lowered by what the fee rose.
    let mut bump = intent(
        101,
        &[dep, utxo],
        &[dep],
        &[pays[1].clone(), pays[0].clone()],
    );
    bump.fee = Amount::from_sat(3_000);
    bump.change[0].value = Amount::from_sat(100_000 + 1_100 - 3_000);
    assert_eq!(
        s.guard_spend(&bump).await.unwrap(),
        GuardDecision::Approved(Approval::FeeBump { original: t1.txid })
    );
    // The next bump must beat the bump, not only the original.
    let mut between = intent(102, &[utxo, dep], &[dep], &pays);
    between.fee = Amount::from_sat(2_000);
    assert_eq!(
        s.guard_spend(&between).await.unwrap(),
        GuardDecision::Refused(Refusal::FeeNotRaised {
            outpoint: utxo,
            decided_txid: t1.txid,
            fee: Amount::from_sat(2_000),
            highest_approved_fee: Amount::from_sat(3_000),
        })
    );
    let mut again = intent(103, &[utxo, dep], &[dep], &pays);
    again.fee = Amount::from_sat(3_001);
    assert!(s.guard_spend(&again).await.unwrap().is_approved());
    // The original may still be signed again (a retry), and so may the first bump.
    assert_eq!(
        s.guard_spend(&t1).await.unwrap(),
        GuardDecision::Approved(Approval::Repeat)
    );
    assert_eq!(
        s.guard_spend(&bump).await.unwrap(),
        GuardDecision::Approved(Approval::Repeat)
    );
    for op in [utxo, dep] {
        let d = s.get_spend_decision(&op).await.unwrap().unwrap();
        assert_eq!(d.approved_txids, vec![t1.txid, bump.txid, again.txid]);
        assert_eq!(d.highest_fee, Some(Amount::from_sat(3_001)));
        assert_eq!(d.change_scripts, Some(vec![peg_script()]));
    }
}

// ---- PostgreSQL only ----

use sbtc_hsm_signer::storage::postgres::{
    migrations::{latest_version, Migration},
    PgStore, MIGRATIONS,
};

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
    assert_eq!(
        first.applied,
        vec![
            (1, "initial"),
            (2, "dkg_shares_signer_position"),
            (3, "audit_outcome"),
            (4, "whole_transaction_guard"),
            (5, "chain_observer"),
            (6, "stacks_events")
        ]
    );
    let second = store.migrate().await.unwrap();
    assert!(second.applied.is_empty());
    assert_eq!(second.version, latest_version());
    assert_eq!(store.check_schema().await.unwrap(), 6);
    let rows = db
        .client()
        .await
        .query(
            "SELECT version, name FROM sbtc_signer.schema_migrations",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 6);
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
    assert_eq!(
        total,
        MIGRATIONS.len(),
        "each migration was applied by exactly one migrator"
    );
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
    // This binary's list with one applied migration edited, whichever it is.
    for i in 0..MIGRATIONS.len() {
        let mut changed = MIGRATIONS.to_vec();
        changed[i].sql = "SELECT 1";
        let err = store.migrate_with(&changed).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::SchemaMismatch, "{err}");
        assert!(
            err.to_string()
                .contains(&format!("migration {}", changed[i].version)),
            "{err}"
        );
    }
}

#[tokio::test]
async fn pg_failed_migration_rolls_back() {
    let Some(db) = TestDb::create("pg_failed_migration_rolls_back").await else {
        return;
    };
    let store = db.store().await;
    let mut list = MIGRATIONS.to_vec();
    list.push(Migration {
        version: latest_version() + 1,
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
    assert_eq!(
        store.check_schema().await.unwrap(),
        latest_version(),
        "still at the version before"
    );
}

/// A database at schema version 1 whose `dkg_shares` has a row: migration 2 cannot invent the DKG
/// id and signer index the row lacks, so it refuses with instructions and leaves everything as it
/// was; following them, it applies.
#[tokio::test]
async fn pg_migration_2_refuses_old_dkg_rows_until_they_are_moved_away() {
    let Some(db) =
        TestDb::create("pg_migration_2_refuses_old_dkg_rows_until_they_are_moved_away").await
    else {
        return;
    };
    let store = PgStore::connect(db.settings()).await.unwrap();
    assert_eq!(
        store.migrate_with(&MIGRATIONS[..1]).await.unwrap().version,
        1
    );
    store
        .write_deposit_request(&deposit(1, 0), &bh(1))
        .await
        .unwrap();
    let client = db.client().await;
    client
        .execute(
            "INSERT INTO sbtc_signer.dkg_shares (aggregate_key, encrypted_private_shares, public_shares, \
             signer_set_public_keys, signature_share_threshold, dkg_shares_status, \
             started_at_bitcoin_block_hash, started_at_bitcoin_block_height) \
             VALUES ($1, '\\x01', '\\x02', ARRAY[$2::BYTEA, $3::BYTEA], 2, 'verified', $4, 7)",
            &[
                &agg(1).serialize().as_slice(),
                &key(1).serialize().as_slice(),
                &key(2).serialize().as_slice(),
                &h(9).as_slice(),
            ],
        )
        .await
        .unwrap();

    let err = store.migrate().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Migration);
    let text = err.to_string();
    for part in [
        "migration 2 (dkg_shares_signer_position) failed and was rolled back",
        "sbtc_signer.dkg_shares holds 1 row(s) written before DKG ids and signer indexes were stored",
        "CREATE TABLE sbtc_signer.dkg_shares_before_v2 AS SELECT * FROM sbtc_signer.dkg_shares",
        "DELETE FROM sbtc_signer.dkg_shares",
        "run a new DKG",
    ] {
        assert!(text.contains(part), "missing {part:?} in: {text}");
    }
    assert_eq!(
        store.check_schema().await.unwrap_err().kind(),
        ErrorKind::SchemaTooOld
    );
    let count = |sql: &'static str| {
        let client = &client;
        async move { client.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    assert_eq!(
        count("SELECT count(*) FROM sbtc_signer.dkg_shares").await,
        1
    );
    assert_eq!(
        count("SELECT count(*) FROM information_schema.columns WHERE table_schema = 'sbtc_signer' AND table_name = 'dkg_shares' AND column_name IN ('dkg_id', 'signer_index')").await,
        0,
        "nothing of migration 2 was kept"
    );

    // What the message says to do.
    client
        .batch_execute(
            "CREATE TABLE sbtc_signer.dkg_shares_before_v2 AS SELECT * FROM sbtc_signer.dkg_shares;
             DELETE FROM sbtc_signer.dkg_shares;",
        )
        .await
        .unwrap();
    let report = store.migrate().await.unwrap();
    assert_eq!(
        report.applied,
        vec![
            (2, "dkg_shares_signer_position"),
            (3, "audit_outcome"),
            (4, "whole_transaction_guard"),
            (5, "chain_observer"),
            (6, "stacks_events")
        ]
    );
    assert_eq!(store.check_schema().await.unwrap(), latest_version());
    assert_eq!(
        count("SELECT count(*) FROM sbtc_signer.dkg_shares_before_v2").await,
        1,
        "the old row was kept aside"
    );
    assert_eq!(
        store.get_deposit_request(&outpoint(1, 0)).await.unwrap(),
        Some(deposit(1, 0)),
        "other tables are untouched"
    );
    let new = shares(3, DkgSharesStatus::Verified);
    store.write_dkg_shares(&new).await.unwrap();
    assert_eq!(
        store
            .get_latest_verified_dkg_shares()
            .await
            .unwrap()
            .unwrap()
            .shares,
        new
    );
    // The columns refuse what no DKG produces, even from a hand-written row.
    for (dkg_id, signer_index) in [(0i64, 0i32), (1, -1)] {
        let err = client
            .execute(
                "INSERT INTO sbtc_signer.dkg_shares (aggregate_key, dkg_id, signer_index, \
                 encrypted_private_shares, public_shares, signer_set_public_keys, \
                 signature_share_threshold, started_at_bitcoin_block_hash, \
                 started_at_bitcoin_block_height) \
                 VALUES ($1, $2, $3, '\\x01', '\\x02', ARRAY[]::BYTEA[], 1, $4, 7)",
                &[
                    &agg(8).serialize().as_slice(),
                    &dkg_id,
                    &signer_index,
                    &h(9).as_slice(),
                ],
            )
            .await
            .unwrap_err();
        assert!(format!("{err:?}").contains("check"), "{err:?}");
    }
}

/// A database at schema version 1 with no DKG shares yet migrates without a word.
#[tokio::test]
async fn pg_migration_2_applies_to_a_version_1_database_without_dkg_rows() {
    let Some(db) =
        TestDb::create("pg_migration_2_applies_to_a_version_1_database_without_dkg_rows").await
    else {
        return;
    };
    let store = PgStore::connect(db.settings()).await.unwrap();
    store.migrate_with(&MIGRATIONS[..1]).await.unwrap();
    store.write_bitcoin_block(&block(1, 0, 0)).await.unwrap();
    let report = store.migrate().await.unwrap();
    assert_eq!(
        report.applied,
        vec![
            (2, "dkg_shares_signer_position"),
            (3, "audit_outcome"),
            (4, "whole_transaction_guard"),
            (5, "chain_observer"),
            (6, "stacks_events")
        ]
    );
    assert_eq!(
        store.get_bitcoin_canonical_tip().await.unwrap(),
        Some(block(1, 0, 0))
    );
}

/// Stacks blocks stored before migration 6 get their anchor's height from the stored Bitcoin
/// block; one whose anchor was never stored stops the migration with what to do.
#[tokio::test]
async fn pg_migration_6_fills_anchor_heights_or_says_what_to_delete() {
    let Some(db) =
        TestDb::create("pg_migration_6_fills_anchor_heights_or_says_what_to_delete").await
    else {
        return;
    };
    let store = PgStore::connect(db.settings()).await.unwrap();
    store.migrate_with(&MIGRATIONS[..5]).await.unwrap();
    store.write_bitcoin_block(&block(1, 7, 0)).await.unwrap();
    let client = db.client().await;
    let insert = "INSERT INTO sbtc_signer.stacks_blocks (block_hash, block_height, parent_hash, \
                  bitcoin_anchor) VALUES ($1, 3, $2, $3)";
    client
        .execute(insert, &[&h(30).to_vec(), &h(29).to_vec(), &h(1).to_vec()])
        .await
        .unwrap();
    client
        .execute(insert, &[&h(31).to_vec(), &h(30).to_vec(), &h(99).to_vec()])
        .await
        .unwrap();
    let err = store.migrate().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Migration);
    assert!(
        err.to_string()
            .contains("1 block(s) anchored to Bitcoin blocks this signer never stored")
            && err
                .to_string()
                .contains("DELETE FROM sbtc_signer.stacks_blocks"),
        "{err}"
    );
    client
        .batch_execute(
            "DELETE FROM sbtc_signer.stacks_blocks WHERE bitcoin_anchor NOT IN \
             (SELECT block_hash FROM sbtc_signer.bitcoin_blocks)",
        )
        .await
        .unwrap();
    assert_eq!(
        store.migrate().await.unwrap().applied,
        vec![(6, "stacks_events")]
    );
    assert_eq!(
        store
            .get_stacks_block(&StacksBlockHash(h(30)))
            .await
            .unwrap(),
        Some(StacksBlock {
            hash: StacksBlockHash(h(30)),
            height: 3,
            parent_hash: StacksBlockHash(h(29)),
            bitcoin_anchor: bh(1),
            bitcoin_anchor_height: 7,
        })
    );
}

#[tokio::test]
async fn pg_dkg_shares_survive_a_restart_of_the_signer() {
    let Some(db) = TestDb::create("pg_dkg_shares_survive_a_restart_of_the_signer").await else {
        return;
    };
    let written = shares(2, DkgSharesStatus::Verified);
    {
        let store = db.store().await;
        store.write_dkg_shares(&written).await.unwrap();
    }
    // A new process: all it has is the database.
    let store = db.store().await;
    let latest = store
        .get_latest_verified_dkg_shares()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(latest.shares, written);
    assert_eq!(
        latest.shares.sealed_shares(),
        SealedShares {
            dkg_id: written.dkg_id,
            signer: written.signer_index,
            aggregate_key: written.aggregate_key,
            blob: written.sealed_private_shares.as_bytes().to_vec(),
        }
    );
    let by_output_key = store
        .get_dkg_shares_for_output_key(
            &written
                .aggregate_key
                .tap_tweaked(None)
                .to_x_only_public_key(),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(by_output_key.shares, written);
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
    assert_eq!(
        keys,
        vec![agg(3).serialize().to_vec(), agg(1).serialize().to_vec()]
    );
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
        GuardDecision::Refused(Refusal::PayoutsChanged {
            outpoint: outpoint(1, 0),
            decided_txid: t1.txid
        })
    );
}

/// A decision recorded by a release before migration 4 has no change script or fee: after the
/// upgrade its own transaction may be signed again, but no bump of it is approved.
#[tokio::test]
async fn pg_guard_decisions_from_before_migration_4_allow_no_bump() {
    let Some(db) = TestDb::create("pg_guard_decisions_from_before_migration_4_allow_no_bump").await
    else {
        return;
    };
    let store = PgStore::connect(db.settings()).await.unwrap();
    store.migrate_with(&MIGRATIONS[..3]).await.unwrap();
    let t1 = intent(1, &[outpoint(1, 0)], &[], &[payment(1, 1_000)]);
    // What the release before wrote for an approval of t1.
    let client = db.client().await;
    let (t, v) = (h(1).to_vec(), 0i64);
    client
        .execute(
            "INSERT INTO sbtc_signer.spend_decisions (prevout_txid, prevout_output_index, txid, \
             payment_fingerprint) VALUES ($1, $2, $3, $4)",
            &[
                &t,
                &v,
                &h(1).to_vec(),
                &t1.fingerprint().as_bytes().to_vec(),
            ],
        )
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO sbtc_signer.spend_approvals (prevout_txid, prevout_output_index, txid) \
             VALUES ($1, $2, $3)",
            &[&t, &v, &h(1).to_vec()],
        )
        .await
        .unwrap();
    assert_eq!(
        store.migrate().await.unwrap().applied,
        vec![
            (4, "whole_transaction_guard"),
            (5, "chain_observer"),
            (6, "stacks_events")
        ]
    );
    let d = store
        .get_spend_decision(&outpoint(1, 0))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((d.change_scripts, d.highest_fee), (None, None));
    assert_eq!(
        store.guard_spend(&t1).await.unwrap(),
        GuardDecision::Approved(Approval::Repeat)
    );
    let bump = intent(2, &[outpoint(1, 0)], &[], &[payment(1, 1_000)]);
    let r = store.guard_spend(&bump).await.unwrap();
    assert_eq!(
        r,
        GuardDecision::Refused(Refusal::DecidedBeforeUpgrade {
            outpoint: outpoint(1, 0),
            decided_txid: t1.txid
        })
    );
    assert_eq!(
        store
            .get_spend_decision(&outpoint(1, 0))
            .await
            .unwrap()
            .unwrap()
            .approved_txids,
        vec![t1.txid]
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
    let err = client
        .execute("DELETE FROM sbtc_signer.audit_log WHERE seq = 2", &[])
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("append-only"), "{err:?}");
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
        skip_or_fail(
            "pg_password_file_reaches_the_server",
            "the server has no scram rule for sbtc_password_test (scripts/pg.sh adds one)",
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
