//! The request decider against the in-memory store: each policy rule refuses with a reason an
//! operator can read, the peg and rolling caps fill in request order, votes survive the binary
//! encoding and a real signed statement over the peer links, and the threshold and signer bitmap
//! come from the votes stored for each member of the set.

mod common;
mod storage_support;

use std::{path::PathBuf, sync::Arc, time::Duration};

use bitcoin::{
    hashes::Hash as _, secp256k1::PublicKey, Amount, BlockHash, Network, OutPoint, ScriptBuf, Txid,
    WPubkeyHash,
};
use bytes::Bytes;
use rand::{Rng, SeedableRng};
use sbtc_hsm_signer::{
    chain::{
        bitcoin::deposit::{build_deposit_leaf, build_reclaim_leaf, standard_user_script},
        stacks::address::Principal,
    },
    coordination::{
        votes::{self, MAX_BALLOTS},
        BlockVotes, Blocklist, DecideContext, Decider, DepositBallot, FileBlocklist, Incoming,
        NoBlocklist, PeerTransport, PolicyConfig, Verdict, WithdrawalBallot,
    },
    keys::AggregateKey,
    peer::message::{ChainTip, StatementKind},
    signing::SignerSet,
    storage::{
        memory::MemoryStore, BitcoinBlock, DepositRequest, StacksBlock, StacksBlockHash,
        StacksTxid, Storage, SweepTransaction, WithdrawalPayment, WithdrawalRequest,
    },
};

const TIP: u64 = 200;

/// The cases that read and write the store run on both stores: the in-memory one, and a fresh
/// database on the PostgreSQL server SBTC_TEST_PG_URL names (skipped without one, outside CI).
macro_rules! both_stores {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(std::sync::Arc::new(super::MemoryStore::new())).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(db) = super::storage_support::TestDb::create(stringify!($case)).await
                    else {
                        return;
                    };
                    super::$case(std::sync::Arc::new(db.store().await)).await;
                }
            )*
        }
    };
}

both_stores!(
    each_deposit_rule_refuses_with_a_readable_reason_and_votes_are_stored,
    the_peg_cap_fills_in_outpoint_order_and_counts_earlier_acceptances,
    each_withdrawal_rule_refuses_with_a_readable_reason,
    the_rolling_cap_counts_paid_and_accepted_withdrawals_in_its_window,
    threshold_and_bitmap_come_from_the_stored_votes_of_the_set,
    a_deposit_whose_lock_time_runs_out_leaves_the_accepted_set,
);

fn bh(height: u64) -> BlockHash {
    let mut b = [0u8; 32];
    b[..8].copy_from_slice(&height.to_be_bytes());
    b[31] = 0xb1;
    BlockHash::from_byte_array(b)
}

fn block(height: u64) -> BitcoinBlock {
    BitcoinBlock {
        hash: bh(height),
        height,
        parent_hash: match height {
            0 => BlockHash::all_zeros(),
            h => bh(h - 1),
        },
    }
}

fn key(seed: u8) -> PublicKey {
    bitcoin::secp256k1::SecretKey::from_slice(&[seed; 32])
        .unwrap()
        .public_key(bitcoin::secp256k1::SECP256K1)
}

fn aggregate(seed: u8) -> AggregateKey {
    AggregateKey::new(key(seed))
}

/// The key the deposits here are locked to, and that the signer verified.
fn verified() -> AggregateKey {
    aggregate(77)
}

fn recipient(seed: u8) -> Principal {
    Principal::standard(26, [seed; 20]).unwrap()
}

fn blocked_recipient() -> Principal {
    recipient(0xee)
}

fn payout(seed: u8) -> ScriptBuf {
    ScriptBuf::new_p2wpkh(&WPubkeyHash::from_byte_array([seed; 20]))
}

fn payout_address(seed: u8) -> String {
    bitcoin::Address::from_script(&payout(seed), Network::Regtest)
        .unwrap()
        .to_string()
}

struct Blocked(Vec<String>);

impl Blocklist for Blocked {
    fn is_blocked(&self, who: &str) -> bool {
        self.0.iter().any(|b| b == who)
    }
}

/// Blocks 0..=TIP + 30 in `store`, canonical at TIP.
async fn chain(store: Arc<dyn Storage>) -> Arc<dyn Storage> {
    for h in 0..=TIP + 30 {
        store.write_bitcoin_block(&block(h)).await.unwrap();
    }
    store.set_bitcoin_canonical_tip(&bh(TIP)).await.unwrap();
    store
}

struct Deposit {
    seed: u8,
    amount: u64,
    max_fee: u64,
    lock: u16,
    confirmed_at: u64,
    to: Principal,
    key: AggregateKey,
}

impl Deposit {
    fn new(seed: u8, amount: u64) -> Deposit {
        Deposit {
            seed,
            amount,
            max_fee: 5_000,
            lock: 144,
            confirmed_at: TIP - 2,
            to: recipient(seed),
            key: verified(),
        }
    }

    fn outpoint(&self) -> OutPoint {
        OutPoint::new(Txid::from_byte_array([self.seed; 32]), 1)
    }

    async fn store(self, store: &Arc<dyn Storage>) -> OutPoint {
        let request = DepositRequest {
            outpoint: self.outpoint(),
            amount: Amount::from_sat(self.amount),
            max_fee: Amount::from_sat(self.max_fee),
            recipient: self.to.to_string(),
            deposit_script: build_deposit_leaf(
                Amount::from_sat(self.max_fee),
                &self.to,
                self.key.x_only(),
            ),
            reclaim_script: build_reclaim_leaf(
                self.lock,
                &standard_user_script(key(8).x_only_public_key().0),
            ),
            signers_public_key: self.key,
        };
        store
            .write_deposit_request(&request, &bh(self.confirmed_at))
            .await
            .unwrap();
        request.outpoint
    }
}

/// A withdrawal request made in a Stacks block anchored at Bitcoin height `anchored_at`.
async fn withdrawal(
    store: &Arc<dyn Storage>,
    id: u64,
    amount: u64,
    anchored_at: u64,
    to: ScriptBuf,
) -> WithdrawalRequest {
    let stacks = StacksBlock {
        hash: StacksBlockHash([anchored_at as u8; 32]),
        height: anchored_at + 1_000,
        parent_hash: StacksBlockHash([anchored_at as u8 ^ 0xff; 32]),
        bitcoin_anchor: bh(anchored_at),
        bitcoin_anchor_height: anchored_at,
    };
    store.write_stacks_block(&stacks).await.unwrap();
    let request = WithdrawalRequest {
        request_id: id,
        stacks_txid: StacksTxid([id as u8; 32]),
        stacks_block_hash: stacks.hash,
        recipient: to,
        amount: Amount::from_sat(amount),
        max_fee: Amount::from_sat(3_000),
        sender: recipient(3).to_string(),
    };
    store.write_withdrawal_request(&request).await.unwrap();
    request
}

fn decider(store: &Arc<dyn Storage>, policy: PolicyConfig, me: PublicKey) -> Decider {
    Decider::new(
        store.clone(),
        policy,
        Arc::new(Blocked(vec![
            blocked_recipient().to_string(),
            payout_address(0xee),
        ])),
        Network::Regtest,
        me,
    )
}

fn ctx(height: u64, peg: u64) -> DecideContext {
    DecideContext {
        tip: block(height),
        peg_balance: Amount::from_sat(peg),
        verified_keys: vec![verified()],
    }
}

fn deposit_verdict(votes: &BlockVotes, outpoint: OutPoint) -> &Verdict {
    &votes
        .deposits
        .iter()
        .find(|b| b.outpoint == outpoint)
        .unwrap_or_else(|| panic!("no ballot for {outpoint}"))
        .verdict
}

fn withdrawal_verdict(votes: &BlockVotes, id: u64) -> &Verdict {
    &votes
        .withdrawals
        .iter()
        .find(|b| b.request_id == id)
        .unwrap_or_else(|| panic!("no ballot for request {id}"))
        .verdict
}

fn assert_reject(v: &Verdict, words: &[&str]) {
    let Verdict::Reject(reason) = v else {
        panic!("expected a rejection mentioning {words:?}, got {v:?}");
    };
    for w in words {
        assert!(reason.contains(w), "{reason:?} does not mention {w:?}");
    }
}

fn assert_undecided(v: &Verdict, words: &[&str]) {
    let Verdict::Undecided(reason) = v else {
        panic!("expected an abstention mentioning {words:?}, got {v:?}");
    };
    for w in words {
        assert!(reason.contains(w), "{reason:?} does not mention {w:?}");
    }
}

async fn each_deposit_rule_refuses_with_a_readable_reason_and_votes_are_stored(
    store: Arc<dyn Storage>,
) {
    let store = chain(store).await;
    let me = key(1);
    let policy = PolicyConfig {
        deposit_min_sats: 10_000,
        deposit_max_sats: Some(1_000_000),
        ..Default::default()
    };
    let good = Deposit::new(1, 50_000).store(&store).await;
    let small = Deposit::new(2, 9_999).store(&store).await;
    let big = Deposit::new(3, 1_000_001).store(&store).await;
    // Confirmed at TIP - 2 with lock 5: reclaimable at TIP + 3, one block short of TIP + 4.
    let expiring = Deposit {
        lock: 5,
        ..Deposit::new(4, 50_000)
    }
    .store(&store)
    .await;
    // Exactly at the limit: reclaimable at TIP + 4.
    let just_in_time = Deposit {
        lock: 6,
        ..Deposit::new(5, 50_000)
    }
    .store(&store)
    .await;
    let blocked = Deposit {
        to: blocked_recipient(),
        ..Deposit::new(6, 50_000)
    }
    .store(&store)
    .await;
    let unverified = Deposit {
        key: aggregate(78),
        ..Deposit::new(7, 50_000)
    }
    .store(&store)
    .await;
    let no_fee = Deposit {
        max_fee: 0,
        ..Deposit::new(8, 50_000)
    }
    .store(&store)
    .await;
    // Confirmed only on a block past the tip: not on the tip's chain, so not pending there.
    let future = Deposit {
        confirmed_at: TIP + 5,
        ..Deposit::new(9, 50_000)
    }
    .store(&store)
    .await;

    let d = decider(&store, policy, me);
    let votes = d.decide(&ctx(TIP, 0)).await.unwrap();
    assert_eq!((votes.tip, votes.height), (bh(TIP), TIP));
    assert!(deposit_verdict(&votes, good).is_accept());
    assert!(deposit_verdict(&votes, just_in_time).is_accept());
    assert_reject(
        deposit_verdict(&votes, small),
        &["9999 sat", "minimum", "deposit_min_sats"],
    );
    assert_reject(
        deposit_verdict(&votes, big),
        &["1000001 sat", "deposit_max_sats"],
    );
    assert_reject(
        deposit_verdict(&votes, expiring),
        &["lock time about to expire", &format!("height {}", TIP + 3)],
    );
    assert_reject(deposit_verdict(&votes, blocked), &["blocklist"]);
    assert_reject(deposit_verdict(&votes, no_fee), &["max fee is 0"]);
    assert_undecided(
        deposit_verdict(&votes, unverified),
        &["not among", "verified"],
    );
    assert!(votes.deposits.iter().all(|b| b.outpoint != future));
    // Sorted by outpoint, as the encoding requires.
    assert!(votes
        .deposits
        .windows(2)
        .all(|w| w[0].outpoint < w[1].outpoint));

    // Accepts and rejects are stored under this signer's key; an abstention is no vote.
    let mine = |op: OutPoint| {
        let store = store.clone();
        async move {
            store
                .get_deposit_votes(&op)
                .await
                .unwrap()
                .into_iter()
                .find(|v| v.signer == me)
        }
    };
    let v = mine(good).await.unwrap();
    assert!(v.can_accept && v.can_sign);
    let v = mine(small).await.unwrap();
    assert!(!v.can_accept);
    assert!(mine(unverified).await.is_none());
}

async fn the_peg_cap_fills_in_outpoint_order_and_counts_earlier_acceptances(
    store: Arc<dyn Storage>,
) {
    let store = chain(store).await;
    let me = key(1);
    let policy = PolicyConfig {
        peg_cap_sats: Some(260_000),
        ..Default::default()
    };
    let a = Deposit::new(1, 100_000).store(&store).await;
    let b = Deposit::new(2, 100_000).store(&store).await;
    let c = Deposit::new(3, 100_000).store(&store).await;
    let d = decider(&store, policy.clone(), me);
    let votes = d.decide(&ctx(TIP, 50_000)).await.unwrap();
    assert!(deposit_verdict(&votes, a).is_accept());
    assert!(deposit_verdict(&votes, b).is_accept());
    assert_undecided(
        deposit_verdict(&votes, c),
        &["peg cap", "350000 sat", "260000 sat", "peg_cap_sats"],
    );
    // A new deposit with the smallest outpoint cannot push out the two already accepted: they
    // count first, and it waits too.
    let first = Deposit::new(0, 20_000).store(&store).await;
    let votes = d.decide(&ctx(TIP, 50_000)).await.unwrap();
    assert!(deposit_verdict(&votes, a).is_accept());
    assert!(deposit_verdict(&votes, b).is_accept());
    assert_undecided(deposit_verdict(&votes, first), &["peg cap"]);
    assert_undecided(deposit_verdict(&votes, c), &["peg cap"]);
    // With room (a smaller peg), the waiting ones are decided again and fill it in order.
    let votes = d.decide(&ctx(TIP, 0)).await.unwrap();
    assert!(deposit_verdict(&votes, first).is_accept());
    assert_undecided(deposit_verdict(&votes, c), &["peg cap"]);
}

async fn each_withdrawal_rule_refuses_with_a_readable_reason(store: Arc<dyn Storage>) {
    let store = chain(store).await;
    let me = key(1);
    let policy = PolicyConfig {
        withdrawal_max_sats: Some(500_000),
        ..Default::default()
    };
    let old_enough = TIP - 6;
    withdrawal(&store, 1, 100_000, old_enough, payout(1)).await;
    withdrawal(&store, 2, 546, old_enough, payout(2)).await;
    withdrawal(&store, 3, 500_001, old_enough, payout(3)).await;
    withdrawal(&store, 4, 100_000, old_enough, payout(0xee)).await;
    withdrawal(&store, 5, 100_000, TIP - 5, payout(5)).await;
    withdrawal(&store, 6, 100_000, TIP - 17, payout(6)).await;
    withdrawal(&store, 7, 100_000, TIP - 18, payout(7)).await;
    withdrawal(
        &store,
        8,
        100_000,
        old_enough - 1,
        ScriptBuf::from_bytes(vec![0x51]),
    )
    .await;
    // Expired (24 blocks): not pending at this tip at all.
    withdrawal(&store, 9, 100_000, TIP - 24, payout(9)).await;

    let d = decider(&store, policy, me);
    let votes = d.decide(&ctx(TIP, 0)).await.unwrap();
    assert!(withdrawal_verdict(&votes, 1).is_accept());
    assert_reject(withdrawal_verdict(&votes, 2), &["546 sat", "dust"]);
    assert_reject(
        withdrawal_verdict(&votes, 3),
        &["500001 sat", "withdrawal_max_sats"],
    );
    assert_reject(
        withdrawal_verdict(&votes, 4),
        &[&payout_address(0xee), "blocklist"],
    );
    assert_undecided(withdrawal_verdict(&votes, 5), &["not 6 blocks old yet"]);
    assert!(withdrawal_verdict(&votes, 6).is_accept());
    assert_reject(
        withdrawal_verdict(&votes, 7),
        &["18 blocks old", "expire at 24"],
    );
    assert_reject(withdrawal_verdict(&votes, 8), &["not a standard"]);
    assert!(votes.withdrawals.iter().all(|b| b.request_id != 9));

    let stored = |id: u64| {
        let store = store.clone();
        async move {
            store
                .get_withdrawal_votes(id)
                .await
                .unwrap()
                .into_iter()
                .find(|v| v.signer == me)
                .map(|v| v.is_accepted)
        }
    };
    assert_eq!(stored(1).await, Some(true));
    assert_eq!(stored(2).await, Some(false));
    assert_eq!(stored(5).await, None, "too young: decided again later");

    // Six blocks on, the young one is old enough, and the one that was 17 is now too old (its
    // stored acceptance stands, but no package may choose it any more).
    let later = d.decide(&ctx(TIP + 1, 0)).await.unwrap();
    assert!(withdrawal_verdict(&later, 5).is_accept());
    assert_reject(withdrawal_verdict(&later, 6), &["18 blocks old"]);
    let set = [me];
    let chosen: Vec<u64> = d
        .accepted_withdrawals(&block(TIP + 1), &set, 1)
        .await
        .unwrap()
        .into_iter()
        .map(|(w, _)| w.request_id)
        .collect();
    assert_eq!(chosen, vec![1, 5]);
}

async fn the_rolling_cap_counts_paid_and_accepted_withdrawals_in_its_window(
    store: Arc<dyn Storage>,
) {
    let store = chain(store).await;
    let me = key(1);
    let policy = PolicyConfig {
        rolling_withdrawal_cap_sats: Some(100_000),
        rolling_withdrawal_blocks: 50,
        ..Default::default()
    };
    // Paid 30 blocks ago (inside the window) and 60 blocks ago (outside it).
    let paid = withdrawal(&store, 1, 60_000, TIP - 30, payout(1)).await;
    let long_ago = withdrawal(&store, 2, 90_000, TIP - 60, payout(2)).await;
    store
        .write_sweep_transaction(&SweepTransaction {
            txid: Txid::from_byte_array([0x55; 32]),
            signers_prevout: OutPoint::new(Txid::from_byte_array([0x54; 32]), 0),
            deposits: vec![],
            withdrawals: [paid, long_ago]
                .iter()
                .map(|w| WithdrawalPayment {
                    request_id: w.request_id,
                    recipient: w.recipient.clone(),
                    amount: w.amount,
                })
                .collect(),
            fee: Amount::from_sat(1_000),
            chain_tip: bh(TIP - 20),
        })
        .await
        .unwrap();
    withdrawal(&store, 3, 30_000, TIP - 7, payout(3)).await;
    withdrawal(&store, 4, 30_000, TIP - 6, payout(4)).await;
    let d = decider(&store, policy, me);
    let votes = d.decide(&ctx(TIP, 0)).await.unwrap();
    assert!(
        withdrawal_verdict(&votes, 3).is_accept(),
        "60k + 30k fits 100k"
    );
    assert_undecided(
        withdrawal_verdict(&votes, 4),
        &["rolling cap", "last 50 blocks", "120000 sat", "100000 sat"],
    );
    // Deciding again does not count the accepted one twice, nor let the other in.
    let again = d.decide(&ctx(TIP, 0)).await.unwrap();
    assert!(withdrawal_verdict(&again, 3).is_accept());
    assert_undecided(withdrawal_verdict(&again, 4), &["rolling cap"]);
}

async fn threshold_and_bitmap_come_from_the_stored_votes_of_the_set(store: Arc<dyn Storage>) {
    let store = chain(store).await;
    // Four signers, sorted by their 33-byte keys as the contracts number them.
    let mut set: Vec<PublicKey> = (1..=4).map(key).collect();
    set.sort_by_key(|k| k.serialize());
    let me = set[2];
    let d = decider(&store, PolicyConfig::default(), me);
    let x = Deposit::new(1, 50_000).store(&store).await;
    let y = Deposit::new(2, 50_000).store(&store).await;
    withdrawal(&store, 7, 100_000, TIP - 8, payout(7)).await;
    withdrawal(&store, 8, 100_000, TIP - 8, payout(8)).await;
    let mine = d.decide(&ctx(TIP, 0)).await.unwrap();
    assert!(mine.deposits.iter().all(|b| b.verdict.is_accept()));

    let peer = |deposits: Vec<(OutPoint, Verdict)>, withdrawals: Vec<(u64, Verdict)>| BlockVotes {
        tip: bh(TIP),
        height: TIP,
        deposits: deposits
            .into_iter()
            .map(|(outpoint, verdict)| DepositBallot { outpoint, verdict })
            .collect(),
        withdrawals: withdrawals
            .into_iter()
            .map(|(request_id, verdict)| WithdrawalBallot {
                request_id,
                verdict,
            })
            .collect(),
    };
    let unknown = OutPoint::new(Txid::from_byte_array([0x99; 32]), 0);
    // Signer 0 accepts x (and votes on a deposit nobody here knows) and both withdrawals.
    let stored = d
        .record_peer_votes(
            set[0],
            &peer(
                vec![
                    (x, Verdict::Accept),
                    (y, Verdict::reject("too big for me")),
                    (unknown, Verdict::Accept),
                ],
                vec![
                    (7, Verdict::Accept),
                    (8, Verdict::Accept),
                    (99, Verdict::Accept),
                ],
            ),
        )
        .await
        .unwrap();
    assert_eq!(stored, 4);
    assert_eq!(d.ignored_ballots(), 2);
    // Signer 1 accepts x, abstains on y (stored as nothing) and rejects withdrawal 8.
    let stored = d
        .record_peer_votes(
            set[1],
            &peer(
                vec![(x, Verdict::Accept), (y, Verdict::undecided("peg cap"))],
                vec![(7, Verdict::Accept), (8, Verdict::reject("blocked"))],
            ),
        )
        .await
        .unwrap();
    assert_eq!(stored, 3);
    // Signer 3 never voted. A signer cannot pass its own votes off as a peer's.
    assert!(d.record_peer_votes(me, &mine).await.is_err());

    // x: signers 0, 1 and 2 (me) accepted; 3 did not vote: bit 3 set.
    let deposits = d.accepted_deposits(&block(TIP), &set, 3).await.unwrap();
    assert_eq!(
        deposits
            .iter()
            .map(|(r, bitmap)| (r.outpoint, *bitmap))
            .collect::<Vec<_>>(),
        vec![(x, 0b1000)]
    );
    // y has one accept (mine): below 3; at threshold 1 its bitmap shows 0, 1 and 3.
    let loose = d.accepted_deposits(&block(TIP), &set, 1).await.unwrap();
    assert_eq!(
        loose.iter().find(|(r, _)| r.outpoint == y).map(|(_, b)| *b),
        Some(0b1011)
    );
    let withdrawals = d.accepted_withdrawals(&block(TIP), &set, 3).await.unwrap();
    assert_eq!(
        withdrawals
            .iter()
            .map(|(w, bitmap)| (w.request_id, *bitmap))
            .collect::<Vec<_>>(),
        vec![(7, 0b1000)]
    );
    assert_eq!(d.withdrawal_bitmap(8, &set).await.unwrap(), 0b1010);
    // A set out of order would number signers wrongly: refused, not silently mis-mapped.
    let mut unsorted = set.clone();
    unsorted.swap(0, 1);
    let err = d
        .accepted_deposits(&block(TIP), &unsorted, 3)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("sorted"), "{err}");
    assert!(d.accepted_withdrawals(&block(TIP), &set, 5).await.is_err());
}

async fn a_deposit_whose_lock_time_runs_out_leaves_the_accepted_set(store: Arc<dyn Storage>) {
    let store = chain(store).await;
    let me = key(1);
    let d = decider(&store, PolicyConfig::default(), me);
    // Confirmed at TIP - 2, lock 10: fine at TIP (reclaim at TIP + 8), not at TIP + 5.
    let op = Deposit {
        lock: 10,
        ..Deposit::new(1, 50_000)
    }
    .store(&store)
    .await;
    d.decide(&ctx(TIP, 0)).await.unwrap();
    assert_eq!(
        d.accepted_deposits(&block(TIP), &[me], 1)
            .await
            .unwrap()
            .len(),
        1
    );
    let later = d
        .accepted_deposits(&block(TIP + 5), &[me], 1)
        .await
        .unwrap();
    assert!(later.is_empty(), "{later:?} still offers {op}");
}

fn sample_votes() -> BlockVotes {
    BlockVotes {
        tip: bh(TIP),
        height: TIP,
        deposits: vec![
            DepositBallot {
                outpoint: OutPoint::new(Txid::from_byte_array([1; 32]), 0),
                verdict: Verdict::Accept,
            },
            DepositBallot {
                outpoint: OutPoint::new(Txid::from_byte_array([1; 32]), 3),
                verdict: Verdict::reject("amount 9999 sat is below this signer's minimum"),
            },
        ],
        withdrawals: vec![WithdrawalBallot {
            request_id: 4,
            verdict: Verdict::undecided("not 6 blocks old yet"),
        }],
    }
}

#[test]
fn decoding_refuses_what_an_encoder_would_not_write() {
    let votes = sample_votes();
    let bytes = votes.to_bytes().unwrap();
    assert_eq!(BlockVotes::from_bytes(&bytes).unwrap(), votes);
    let err = |b: &[u8]| BlockVotes::from_bytes(b).unwrap_err().to_string();
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert!(err(&trailing).contains("trailing"), "{}", err(&trailing));
    let mut magic = bytes.clone();
    magic[3] = 2;
    assert!(err(&magic).contains("magic"));
    // Two ballots for one deposit, and ballots out of order.
    let mut dup = votes.clone();
    dup.deposits[1].outpoint = dup.deposits[0].outpoint;
    assert!(
        dup.to_bytes().is_err(),
        "the encoder refuses duplicates too"
    );
    let mut raw = bytes.clone();
    // Make the second outpoint's vout 0, equal to the first.
    let second_vout = 4 + 32 + 8 + 4 + (32 + 4 + 1) + 32;
    raw[second_vout..second_vout + 4].copy_from_slice(&0u32.to_be_bytes());
    assert!(err(&raw).contains("repeats"), "{}", err(&raw));
    let mut unsorted = votes.clone();
    unsorted.deposits.reverse();
    assert!(unsorted.to_bytes().is_err());
    // A count above the ballot limit is refused before anything is allocated for it.
    let mut many = bytes[..44].to_vec();
    many.extend_from_slice(&(MAX_BALLOTS as u32 + 1).to_be_bytes());
    assert!(err(&many).contains("10000"), "{}", err(&many));
}

#[test]
fn random_bytes_never_panic_the_decoder() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5b_5601);
    let valid = sample_votes().to_bytes().unwrap();
    for round in 0..20_000 {
        let bytes: Vec<u8> = match round % 3 {
            // Pure noise.
            0 => (0..rng.gen_range(0..300)).map(|_| rng.gen()).collect(),
            // The right magic, then noise.
            1 => {
                let mut b = votes::MAGIC.to_vec();
                b.extend((0..rng.gen_range(0..300)).map(|_| rng.gen::<u8>()));
                b
            }
            // A valid payload with a few bytes changed.
            _ => {
                let mut b = valid.clone();
                for _ in 0..rng.gen_range(1..4) {
                    let i = rng.gen_range(0..b.len());
                    b[i] = rng.gen();
                }
                b
            }
        };
        if let Ok(v) = BlockVotes::from_bytes(&bytes) {
            // Whatever reads is canonical: it encodes to the same bytes.
            assert_eq!(v.to_bytes().unwrap(), bytes);
        }
    }
}

#[test]
fn ten_thousand_ballots_fit_one_peer_message() {
    let votes = BlockVotes {
        tip: bh(TIP),
        height: TIP,
        deposits: (0..MAX_BALLOTS as u32)
            .map(|vout| DepositBallot {
                outpoint: OutPoint::new(Txid::from_byte_array([3; 32]), vout),
                verdict: Verdict::reject("r".repeat(votes::MAX_REASON_BYTES)),
            })
            .collect(),
        withdrawals: vec![],
    };
    assert!(
        votes.to_bytes().is_err(),
        "2.4 MB of reasons is over the limit"
    );
    let mut fitted = votes.clone();
    fitted.fit_reasons();
    let bytes = fitted.to_bytes().unwrap();
    assert!(bytes.len() <= votes::MAX_PAYLOAD_BYTES);
    let back = BlockVotes::from_bytes(&bytes).unwrap();
    assert_eq!(back.deposits.len(), MAX_BALLOTS);
    assert!(matches!(&back.deposits[0].verdict, Verdict::Reject(r) if !r.is_empty()));
}

#[test]
fn a_missing_blocklist_file_is_a_config_error_naming_it() {
    let policy = PolicyConfig {
        blocklist_file: Some(PathBuf::from("/nonexistent/blocklist.txt")),
        ..Default::default()
    };
    let err = policy.blocklist().err().unwrap().to_string();
    assert!(
        err.contains("blocklist_file") && err.contains("/nonexistent/blocklist.txt"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blocked.txt");
    std::fs::write(&path, format!("# OFAC\n{}\n", payout_address(0xee))).unwrap();
    let list = FileBlocklist::load(&path).unwrap();
    assert!(list.is_blocked(&payout_address(0xee)));
    assert!(!list.is_blocked(&payout_address(1)));
    assert!(!NoBlocklist.is_blocked(&payout_address(0xee)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn votes_travel_in_one_signed_statement_and_a_peer_stores_them() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let dir = tempfile::tempdir().unwrap();
        let custodies = vec![
            common::keystore(dir.path(), "a").await,
            common::keystore(dir.path(), "b").await,
        ];
        let nodes = common::mesh(&custodies, common::test_limits()).await;
        common::wait_full_mesh(&nodes, Duration::from_secs(20)).await;
        let nodes: Vec<Arc<_>> = nodes.into_iter().map(Arc::new).collect();
        let mut keys: Vec<PublicKey> = nodes.iter().map(|n| n.identity()).collect();
        keys.sort_by_key(|k| k.serialize());
        let set = Arc::new(SignerSet::from_keys(keys.iter().copied(), 2).unwrap());

        // Both signers see the same chain and requests, each in its own store.
        let mut deciders = Vec::new();
        let mut outpoints = Vec::new();
        for node in &nodes {
            let store = chain(Arc::new(MemoryStore::new())).await;
            outpoints = vec![
                Deposit::new(1, 50_000).store(&store).await,
                Deposit::new(2, 5_000).store(&store).await,
            ];
            withdrawal(&store, 7, 100_000, TIP - 8, payout(7)).await;
            deciders.push(decider(&store, PolicyConfig::default(), node.identity()));
        }
        let a = PeerTransport::new(nodes[0].clone(), set.clone(), bh(TIP), TIP).unwrap();
        let mut b = PeerTransport::new(nodes[1].clone(), set.clone(), bh(TIP), TIP).unwrap();

        let votes_a = deciders[0].decide(&ctx(TIP, 0)).await.unwrap();
        assert_eq!(votes_a.ballots(), 3);
        let envelope = votes::signed_statement(&nodes[0], a.chain_tip(), &votes_a)
            .await
            .unwrap();
        let down = a
            .broadcast_envelope(sbtc_hsm_signer::peer::message::encode(&envelope))
            .await;
        assert!(down.is_empty());
        let received = loop {
            match tokio::time::timeout(Duration::from_secs(10), b.recv_any())
                .await
                .unwrap()
                .unwrap()
            {
                Incoming::Statement(s) => break s,
                Incoming::Round(_) => continue,
            }
        };
        assert_eq!(received.kind, StatementKind::Votes);
        assert_eq!(received.from, set.index_of(&nodes[0].identity()).unwrap());
        let read = BlockVotes::from_statement(&received).unwrap();
        assert_eq!(read, votes_a);

        // A payload under a round id that is not its hash is refused.
        let mut forged = received.clone();
        forged.round_id = vec![0u8; 32];
        assert!(BlockVotes::from_statement(&forged)
            .unwrap_err()
            .contains("round id"));
        let mut other_kind = received.clone();
        other_kind.kind = StatementKind::Proposal;
        assert!(BlockVotes::from_statement(&other_kind).is_err());

        // B stores A's ballots and its own: the small deposit fails the minimum for both.
        let stored = deciders[1]
            .record_peer_votes(nodes[0].identity(), &read)
            .await
            .unwrap();
        assert_eq!(stored, 3);
        deciders[1].decide(&ctx(TIP, 0)).await.unwrap();
        let accepted = deciders[1]
            .accepted_deposits(&block(TIP), &keys, 2)
            .await
            .unwrap();
        assert_eq!(
            accepted
                .iter()
                .map(|(d, m)| (d.outpoint, *m))
                .collect::<Vec<_>>(),
            vec![(outpoints[0], 0)]
        );
        let paid = deciders[1]
            .accepted_withdrawals(&block(TIP), &keys, 2)
            .await
            .unwrap();
        assert_eq!(paid.len(), 1);

        // The statement must name the tip the votes were made at.
        let stale = ChainTip {
            height: TIP - 1,
            block_hash: Bytes::copy_from_slice(bh(TIP - 1).as_byte_array()),
        };
        assert!(votes::signed_statement(&nodes[0], stale, &votes_a)
            .await
            .unwrap_err()
            .to_string()
            .contains("decide again"));
    })
    .await
    .expect("test finished in time");
}
