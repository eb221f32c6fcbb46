//! The request decider: at each Bitcoin tip, this signer votes on every pending deposit and
//! withdrawal from its own view of the chains and its own `[policy]`, stores its votes and its
//! peers', and says which requests a threshold accepted, with the real signer bitmap.
//!
//! Deciding signs nothing: the tenure signs all of a block's ballots once, in one `Votes`
//! statement (`votes::signed_statement`), so custody operations per block do not grow with the
//! number of requests.
//!
//! A stored vote is final (storage keeps the first vote per signer and request), so a rule time
//! may lift (a cap full for now, a request too young, a key not yet verified) gives
//! [`Verdict::Undecided`], which is stored as no vote and decided again at the next block. Rules
//! that depend on the tip's height (a deposit's lock time, a withdrawal's age window) are checked
//! again by [`Decider::accepted_deposits`] and [`Decider::accepted_withdrawals`] at the tip they
//! are asked about, so an old acceptance never carries a request past them.
//!
//! Left to the sweep's builder, which knows the package: the fee assessed to each request
//! (≤ min(max fee, amount), amount − fee above dust) and that a deposit is still unspent on the
//! node (this store knows only the sweeps it recorded).

use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use bitcoin::{secp256k1::PublicKey, Amount, BlockHash, Network, OutPoint, Txid};

use super::{
    policy::{Blocklist, PolicyConfig, DUST_LIMIT},
    votes::{BlockVotes, DepositBallot, Verdict, WithdrawalBallot, MAX_BALLOTS},
};
use crate::{
    chain::bitcoin::deposit::{parse_deposit_leaf, parse_reclaim_leaf},
    keys::AggregateKey,
    storage::{
        self, BitcoinBlock, DepositRequest, DepositVote, Storage, WithdrawalRequest, WithdrawalVote,
    },
};

/// Blocks a sweep needs, beyond the tip, before a deposit's reclaim path opens (the official
/// signer's `DEPOSIT_LOCKTIME_BLOCK_BUFFER`); CHAIN.md section 1: confirmation height + lock
/// time ≥ tip + 3 + 1.
pub const DEPOSIT_LOCKTIME_BLOCK_BUFFER: u64 = 3;
/// A withdrawal is paid no sooner than this many Bitcoin blocks after its request (CHAIN.md 3).
pub const WITHDRAWAL_MIN_AGE_BLOCKS: u64 = 6;
/// A withdrawal request expires this many Bitcoin blocks after it was made.
pub const WITHDRAWAL_EXPIRY_BLOCKS: u64 = 24;
/// Signers stop choosing a withdrawal this many blocks before it expires, so a sweep that pays
/// it has time to confirm.
pub const WITHDRAWAL_STOP_BEFORE_EXPIRY: u64 = 6;
/// The largest signer set a `uint` bitmap describes (rotate-keys takes at most 128 keys).
pub const MAX_SIGNERS: usize = 128;

/// Whether a withdrawal requested at Bitcoin height `request_height` has expired at
/// `tip_height` (24 blocks or more): the rule for `reject-withdrawal-request`, which every signer
/// computes the same way.
pub fn withdrawal_expired(request_height: u64, tip_height: u64) -> bool {
    tip_height.saturating_sub(request_height) >= WITHDRAWAL_EXPIRY_BLOCKS
}

/// What the decider needs from the tenure: the tip, the peg wallet's balance now (without
/// pending deposits), and the aggregate keys this signer verified.
#[derive(Clone, Debug)]
pub struct DecideContext {
    pub tip: BitcoinBlock,
    pub peg_balance: Amount,
    pub verified_keys: Vec<AggregateKey>,
}

#[derive(Debug, thiserror::Error)]
pub enum DecideError {
    #[error(transparent)]
    Storage(#[from] storage::Error),
    #[error("signer set: {0}")]
    SignerSet(String),
    #[error(
        "votes from {0} claim to be this signer's own; a peer's votes must come from its own key"
    )]
    OwnKey(PublicKey),
}

/// One signer's request decider.
pub struct Decider {
    storage: Arc<dyn Storage>,
    policy: PolicyConfig,
    blocklist: Arc<dyn Blocklist>,
    network: Network,
    me: PublicKey,
    ignored_ballots: AtomicU64,
}

impl Decider {
    /// `me` is this signer's identity key: its votes are stored under it.
    pub fn new(
        storage: Arc<dyn Storage>,
        policy: PolicyConfig,
        blocklist: Arc<dyn Blocklist>,
        network: Network,
        me: PublicKey,
    ) -> Decider {
        Decider {
            storage,
            policy,
            blocklist,
            network,
            me,
            ignored_ballots: AtomicU64::new(0),
        }
    }

    pub fn policy(&self) -> &PolicyConfig {
        &self.policy
    }

    /// Peer ballots ignored so far because this signer does not know the request.
    pub fn ignored_ballots(&self) -> u64 {
        self.ignored_ballots.load(Ordering::Relaxed)
    }

    /// Votes on every pending deposit and withdrawal at `ctx.tip` and stores this signer's
    /// accepts and rejects. Signs nothing. At most [`MAX_BALLOTS`] ballots go in the result
    /// (withdrawals first, then deposits in outpoint order); every vote is stored regardless.
    pub async fn decide(&self, ctx: &DecideContext) -> Result<BlockVotes, DecideError> {
        let mut votes = BlockVotes::empty(ctx.tip.hash, ctx.tip.height);
        let deposits = self.decide_deposits(ctx).await?;
        votes.withdrawals = self.decide_withdrawals(ctx).await?;
        for (b, can_sign) in &deposits {
            if !matches!(b.verdict, Verdict::Undecided(_)) {
                self.storage
                    .write_deposit_vote(&DepositVote {
                        outpoint: b.outpoint,
                        signer: self.me,
                        can_accept: b.verdict.is_accept(),
                        can_sign: *can_sign,
                    })
                    .await?;
            }
        }
        votes.deposits = deposits.into_iter().map(|(b, _)| b).collect();
        for b in &votes.withdrawals {
            if !matches!(b.verdict, Verdict::Undecided(_)) {
                self.storage
                    .write_withdrawal_vote(&WithdrawalVote {
                        request_id: b.request_id,
                        signer: self.me,
                        is_accepted: b.verdict.is_accept(),
                    })
                    .await?;
            }
        }
        let total = votes.ballots();
        if total > MAX_BALLOTS {
            votes.withdrawals.truncate(MAX_BALLOTS);
            votes
                .deposits
                .truncate(MAX_BALLOTS - votes.withdrawals.len());
            tracing::warn!(
                pending = total,
                shared = MAX_BALLOTS,
                "more pending requests than one votes statement carries; the rest were stored \
                 but not shared this block"
            );
        }
        votes.fit_reasons();
        let accepted = |v: &Verdict| v.is_accept();
        tracing::info!(
            tip = %ctx.tip.hash,
            height = ctx.tip.height,
            deposits = votes.deposits.len(),
            deposits_accepted = votes.deposits.iter().filter(|b| accepted(&b.verdict)).count(),
            withdrawals = votes.withdrawals.len(),
            withdrawals_accepted = votes.withdrawals.iter().filter(|b| accepted(&b.verdict)).count(),
            "votes decided"
        );
        Ok(votes)
    }

    /// Each ballot with whether this signer holds shares for the key that locks the deposit
    /// (stored as the vote's `can_sign`, a rejection included).
    async fn decide_deposits(
        &self,
        ctx: &DecideContext,
    ) -> Result<Vec<(DepositBallot, bool)>, DecideError> {
        let pending = self
            .storage
            .get_pending_deposit_requests(&ctx.tip.hash, self.policy.deposit_window_blocks)
            .await?;
        // What the peg will hold: its balance and the pending deposits this signer already
        // accepted (they will be swept); new ones fill what is left, in outpoint order.
        let mut committed = HashSet::new();
        let mut peg = ctx.peg_balance;
        for d in &pending {
            if self.voted_accept_deposit(&d.outpoint).await? {
                committed.insert(d.outpoint);
                peg = peg.checked_add(d.amount).unwrap_or(Amount::MAX);
            }
        }
        let mut ballots = Vec::with_capacity(pending.len());
        for d in &pending {
            let mut verdict = self.judge_deposit(d, ctx).await?;
            if verdict.is_accept() && !committed.contains(&d.outpoint) {
                let after = peg.checked_add(d.amount);
                match (self.policy.peg_cap(), after) {
                    (Some(cap), after) if after.is_none_or(|a| a > cap) => {
                        verdict = Verdict::undecided(format!(
                            "peg cap: the peg would hold {} sat with it, over this signer's cap \
                             of {} sat ([policy] peg_cap_sats); waits for room",
                            after.unwrap_or(Amount::MAX).to_sat(),
                            cap.to_sat()
                        ));
                    }
                    _ => peg = after.unwrap_or(Amount::MAX),
                }
            }
            ballots.push((
                DepositBallot {
                    outpoint: d.outpoint,
                    verdict,
                },
                locked_to(d, &ctx.verified_keys),
            ));
        }
        Ok(ballots)
    }

    async fn voted_accept_deposit(&self, outpoint: &OutPoint) -> Result<bool, DecideError> {
        Ok(self
            .storage
            .get_deposit_votes(outpoint)
            .await?
            .iter()
            .any(|v| v.signer == self.me && v.can_accept))
    }

    /// Every deposit rule but the peg cap (which depends on the deposits before it): rules time
    /// will not lift first, so a deposit that fails one is rejected, not merely postponed.
    async fn judge_deposit(
        &self,
        d: &DepositRequest,
        ctx: &DecideContext,
    ) -> Result<Verdict, DecideError> {
        let sats = d.amount.to_sat();
        if d.amount < self.policy.deposit_min() {
            return Ok(Verdict::reject(format!(
                "amount {sats} sat is below this signer's minimum of {} sat ([policy] deposit_min_sats)",
                self.policy.deposit_min_sats
            )));
        }
        if let Some(max) = self.policy.deposit_max() {
            if d.amount > max {
                return Ok(Verdict::reject(format!(
                    "amount {sats} sat is above this signer's per-deposit cap of {} sat ([policy] deposit_max_sats)",
                    max.to_sat()
                )));
            }
        }
        if d.max_fee == Amount::ZERO {
            return Ok(Verdict::reject(
                "max fee is 0 sat: the deposit cannot pay its share of any sweep's fee",
            ));
        }
        let leaf = match parse_deposit_leaf(&d.deposit_script) {
            Ok(leaf) => leaf,
            Err(e) => return Ok(Verdict::reject(format!("deposit script: {e}"))),
        };
        if leaf.max_fee != d.max_fee {
            return Ok(Verdict::reject(format!(
                "the request's max fee ({} sat) is not the one its deposit script commits to ({} sat)",
                d.max_fee.to_sat(),
                leaf.max_fee.to_sat()
            )));
        }
        if self.is_blocked(&d.recipient) {
            return Ok(Verdict::reject(format!(
                "recipient {} is on this signer's blocklist",
                d.recipient
            )));
        }
        if let Err(verdict) = self.lock_time_left(d, &ctx.tip).await? {
            return Ok(verdict);
        }
        if !locked_to(d, &ctx.verified_keys) {
            return Ok(Verdict::undecided(format!(
                "locked to key {}, which is not among this signer's verified aggregate keys",
                leaf.signers_key
            )));
        }
        Ok(Verdict::Accept)
    }

    /// The lock-time rule at `tip`: `Err` holds the verdict when it fails.
    async fn lock_time_left(
        &self,
        d: &DepositRequest,
        tip: &BitcoinBlock,
    ) -> Result<Result<(), Verdict>, DecideError> {
        let reclaim = match parse_reclaim_leaf(&d.reclaim_script) {
            Ok(r) => r,
            Err(e) => return Ok(Err(Verdict::reject(format!("reclaim script: {e}")))),
        };
        let Some(confirmed) = self
            .confirmation_height(&tip.hash, &d.outpoint.txid)
            .await?
        else {
            return Ok(Err(Verdict::undecided(format!(
                "not confirmed on the chain of tip {}",
                tip.hash
            ))));
        };
        let opens_at = confirmed + u64::from(reclaim.lock_time);
        let needed = tip.height + DEPOSIT_LOCKTIME_BLOCK_BUFFER + 1;
        if opens_at < needed {
            return Ok(Err(Verdict::reject(format!(
                "lock time about to expire: the depositor can reclaim it at height {opens_at} \
                 (confirmed at {confirmed}, lock {}), and a sweep needs until {needed}",
                reclaim.lock_time
            ))));
        }
        Ok(Ok(()))
    }

    /// The height of the block on `tip`'s chain that confirmed `txid`.
    async fn confirmation_height(
        &self,
        tip: &BlockHash,
        txid: &Txid,
    ) -> Result<Option<u64>, DecideError> {
        for block in self.storage.get_transaction_blocks(txid).await? {
            if self.storage.in_canonical_chain(tip, &block).await? {
                return Ok(self
                    .storage
                    .get_bitcoin_block(&block)
                    .await?
                    .map(|b| b.height));
            }
        }
        Ok(None)
    }

    /// Blocked by the hook; a contract principal is also blocked with its deployer.
    fn is_blocked(&self, who: &str) -> bool {
        self.blocklist.is_blocked(who)
            || who
                .split_once('.')
                .is_some_and(|(issuer, _)| self.blocklist.is_blocked(issuer))
    }

    async fn decide_withdrawals(
        &self,
        ctx: &DecideContext,
    ) -> Result<Vec<WithdrawalBallot>, DecideError> {
        let tip = &ctx.tip;
        let pending = self
            .storage
            .get_pending_withdrawal_requests(&tip.hash, WITHDRAWAL_EXPIRY_BLOCKS as u32)
            .await?;
        // The rolling cap: withdrawals requested in its window that were paid or that this
        // signer accepted count against it; new ones fill what is left, in request id order.
        let window = self.policy.rolling_withdrawal_blocks;
        let unpaid: HashSet<u64> = self
            .storage
            .get_pending_withdrawal_requests(&tip.hash, window)
            .await?
            .iter()
            .map(|w| w.request_id)
            .collect();
        let mut committed = HashSet::new();
        let mut rolling = Amount::ZERO;
        for w in self
            .storage
            .get_withdrawal_requests_in_window(&tip.hash, window)
            .await?
        {
            if !unpaid.contains(&w.request_id) || self.voted_accept_withdrawal(w.request_id).await?
            {
                committed.insert(w.request_id);
                rolling = rolling.checked_add(w.amount).unwrap_or(Amount::MAX);
            }
        }
        let mut ballots = Vec::with_capacity(pending.len());
        for w in &pending {
            let mut verdict = self.judge_withdrawal(w, tip).await?;
            if verdict.is_accept() && !committed.contains(&w.request_id) {
                let after = rolling.checked_add(w.amount);
                match (self.policy.rolling_withdrawal_cap(), after) {
                    (Some(cap), after) if after.is_none_or(|a| a > cap) => {
                        verdict = Verdict::undecided(format!(
                            "rolling cap: withdrawals over the last {window} blocks would reach \
                             {} sat, over this signer's cap of {} sat ([policy] \
                             rolling_withdrawal_cap_sats)",
                            after.unwrap_or(Amount::MAX).to_sat(),
                            cap.to_sat()
                        ));
                    }
                    _ => {
                        committed.insert(w.request_id);
                        rolling = after.unwrap_or(Amount::MAX);
                    }
                }
            }
            ballots.push(WithdrawalBallot {
                request_id: w.request_id,
                verdict,
            });
        }
        Ok(ballots)
    }

    async fn voted_accept_withdrawal(&self, request_id: u64) -> Result<bool, DecideError> {
        Ok(self
            .storage
            .get_withdrawal_votes(request_id)
            .await?
            .iter()
            .any(|v| v.signer == self.me && v.is_accepted))
    }

    /// Every withdrawal rule but the rolling cap: rules time will not lift first.
    async fn judge_withdrawal(
        &self,
        w: &WithdrawalRequest,
        tip: &BitcoinBlock,
    ) -> Result<Verdict, DecideError> {
        let sats = w.amount.to_sat();
        if w.amount <= DUST_LIMIT {
            return Ok(Verdict::reject(format!(
                "amount {sats} sat is not above the dust limit of {} sat",
                DUST_LIMIT.to_sat()
            )));
        }
        if let Some(max) = self.policy.withdrawal_max() {
            if w.amount > max {
                return Ok(Verdict::reject(format!(
                    "amount {sats} sat is above this signer's per-withdrawal cap of {} sat ([policy] withdrawal_max_sats)",
                    max.to_sat()
                )));
            }
        }
        if w.max_fee == Amount::ZERO {
            return Ok(Verdict::reject(
                "max fee is 0 sat: the withdrawal cannot pay its share of any sweep's fee",
            ));
        }
        let address = match bitcoin::Address::from_script(&w.recipient, self.network) {
            Ok(a) => a.to_string(),
            Err(_) => {
                return Ok(Verdict::reject(format!(
                    "recipient script {} is not a standard {} address",
                    hex::encode(w.recipient.as_bytes()),
                    self.network
                )))
            }
        };
        if self.is_blocked(&address) {
            return Ok(Verdict::reject(format!(
                "recipient {address} is on this signer's blocklist"
            )));
        }
        let Some(requested_at) = self.request_height(w).await? else {
            return Ok(Verdict::undecided(
                "its Stacks block is not stored here yet, so its age is unknown",
            ));
        };
        Ok(age_verdict(requested_at, tip.height))
    }

    /// The Bitcoin height a withdrawal request is anchored to (its Stacks block's anchor).
    async fn request_height(&self, w: &WithdrawalRequest) -> Result<Option<u64>, DecideError> {
        Ok(self
            .storage
            .get_stacks_block(&w.stacks_block_hash)
            .await?
            .map(|b| b.bitcoin_anchor_height))
    }

    /// Stores a peer's ballots, for requests this signer knows (the others are ignored and
    /// counted in [`Decider::ignored_ballots`]); an abstention is stored as no vote. Returns
    /// how many votes were stored.
    pub async fn record_peer_votes(
        &self,
        from: PublicKey,
        votes: &BlockVotes,
    ) -> Result<usize, DecideError> {
        if from == self.me {
            return Err(DecideError::OwnKey(from));
        }
        let mut stored = 0;
        let mut ignored = 0u64;
        for b in &votes.deposits {
            if matches!(b.verdict, Verdict::Undecided(_)) {
                continue;
            }
            if self
                .storage
                .get_deposit_request(&b.outpoint)
                .await?
                .is_none()
            {
                ignored += 1;
                continue;
            }
            let accept = b.verdict.is_accept();
            self.storage
                .write_deposit_vote(&DepositVote {
                    outpoint: b.outpoint,
                    signer: from,
                    can_accept: accept,
                    // A peer accepts only deposits locked to a key it verified.
                    can_sign: accept,
                })
                .await?;
            stored += 1;
        }
        for b in &votes.withdrawals {
            if matches!(b.verdict, Verdict::Undecided(_)) {
                continue;
            }
            if self
                .storage
                .get_withdrawal_request(b.request_id)
                .await?
                .is_none()
            {
                ignored += 1;
                continue;
            }
            self.storage
                .write_withdrawal_vote(&WithdrawalVote {
                    request_id: b.request_id,
                    signer: from,
                    is_accepted: b.verdict.is_accept(),
                })
                .await?;
            stored += 1;
        }
        if ignored > 0 {
            self.ignored_ballots.fetch_add(ignored, Ordering::Relaxed);
            tracing::info!(
                peer = %from,
                ignored,
                "ballots on requests this signer does not know were ignored"
            );
        }
        Ok(stored)
    }

    /// Pending deposits at `tip` that at least `threshold` members of `set` (sorted by their
    /// 33-byte keys) voted to accept and whose lock time still leaves room for a sweep, each
    /// with its signer bitmap (bit i set: member i did not accept).
    pub async fn accepted_deposits(
        &self,
        tip: &BitcoinBlock,
        set: &[PublicKey],
        threshold: usize,
    ) -> Result<Vec<(DepositRequest, u128)>, DecideError> {
        check_set(set, threshold)?;
        let pending = self
            .storage
            .get_pending_deposit_requests(&tip.hash, self.policy.deposit_window_blocks)
            .await?;
        let mut out = Vec::new();
        for d in pending {
            let votes = self.storage.get_deposit_votes(&d.outpoint).await?;
            let accepted: HashSet<PublicKey> = votes
                .iter()
                .filter(|v| v.can_accept && v.can_sign)
                .map(|v| v.signer)
                .collect();
            let (count, bitmap) = tally(set, &accepted);
            if count < threshold {
                continue;
            }
            if self.lock_time_left(&d, tip).await?.is_err() {
                continue;
            }
            out.push((d, bitmap));
        }
        Ok(out)
    }

    /// Pending withdrawals at `tip` inside their payment window (6 to 17 blocks old) that at
    /// least `threshold` members of `set` voted to accept, each with its signer bitmap.
    pub async fn accepted_withdrawals(
        &self,
        tip: &BitcoinBlock,
        set: &[PublicKey],
        threshold: usize,
    ) -> Result<Vec<(WithdrawalRequest, u128)>, DecideError> {
        check_set(set, threshold)?;
        let pending = self
            .storage
            .get_pending_withdrawal_requests(&tip.hash, WITHDRAWAL_EXPIRY_BLOCKS as u32)
            .await?;
        let mut out = Vec::new();
        for w in pending {
            let Some(at) = self.request_height(&w).await? else {
                continue;
            };
            if !age_verdict(at, tip.height).is_accept() {
                continue;
            }
            let (count, bitmap) = self.withdrawal_tally(w.request_id, set).await?;
            if count >= threshold {
                out.push((w, bitmap));
            }
        }
        Ok(out)
    }

    /// The signer bitmap of a withdrawal request over `set` (bit i set: member i did not vote
    /// to accept), for accept- and reject-withdrawal-request alike.
    pub async fn withdrawal_bitmap(
        &self,
        request_id: u64,
        set: &[PublicKey],
    ) -> Result<u128, DecideError> {
        check_set(set, 1)?;
        Ok(self.withdrawal_tally(request_id, set).await?.1)
    }

    async fn withdrawal_tally(
        &self,
        request_id: u64,
        set: &[PublicKey],
    ) -> Result<(usize, u128), DecideError> {
        let accepted: HashSet<PublicKey> = self
            .storage
            .get_withdrawal_votes(request_id)
            .await?
            .iter()
            .filter(|v| v.is_accepted)
            .map(|v| v.signer)
            .collect();
        Ok(tally(set, &accepted))
    }
}

/// Whether the deposit's script locks it to one of `keys` (by the key in the script itself, the
/// one a spend must sign with; CHAIN.md section 8, votes against the key that locks each deposit).
fn locked_to(d: &DepositRequest, keys: &[AggregateKey]) -> bool {
    parse_deposit_leaf(&d.deposit_script)
        .is_ok_and(|leaf| keys.iter().any(|k| k.x_only() == leaf.signers_key))
        && keys.contains(&d.signers_public_key)
}

/// The age rule: 6 ≤ age < 18 accepts, younger waits, older is refused.
fn age_verdict(requested_at: u64, tip_height: u64) -> Verdict {
    let Some(age) = tip_height.checked_sub(requested_at) else {
        return Verdict::undecided(format!(
            "requested at height {requested_at}, above this signer's tip ({tip_height})"
        ));
    };
    let last = WITHDRAWAL_EXPIRY_BLOCKS - WITHDRAWAL_STOP_BEFORE_EXPIRY;
    if age < WITHDRAWAL_MIN_AGE_BLOCKS {
        Verdict::undecided(format!(
            "not {WITHDRAWAL_MIN_AGE_BLOCKS} blocks old yet ({age} since height {requested_at})"
        ))
    } else if age >= last {
        Verdict::reject(format!(
            "{age} blocks old: requests expire at {WITHDRAWAL_EXPIRY_BLOCKS} and signers stop \
             choosing them {WITHDRAWAL_STOP_BEFORE_EXPIRY} blocks before"
        ))
    } else {
        Verdict::Accept
    }
}

/// A signer set as the contracts number it: sorted by the 33-byte keys, no repeats, at most
/// [`MAX_SIGNERS`], and a threshold it can reach.
fn check_set(set: &[PublicKey], threshold: usize) -> Result<(), DecideError> {
    let bad = |why: String| Err(DecideError::SignerSet(why));
    if set.len() > MAX_SIGNERS {
        return bad(format!(
            "{} keys, more than the {MAX_SIGNERS} a signer bitmap describes",
            set.len()
        ));
    }
    if let Some(w) = set
        .windows(2)
        .find(|w| w[0].serialize() >= w[1].serialize())
    {
        return bad(format!(
            "keys must be sorted by their 33-byte form without repeats; {} comes after {}",
            w[1], w[0]
        ));
    }
    if threshold == 0 || threshold > set.len() {
        return bad(format!(
            "threshold {threshold} cannot be met by {} signers",
            set.len()
        ));
    }
    Ok(())
}

/// How many members of `set` accepted, and the bitmap of those who did not.
fn tally(set: &[PublicKey], accepted: &HashSet<PublicKey>) -> (usize, u128) {
    let mut count = 0;
    let mut bitmap = 0u128;
    for (i, key) in set.iter().enumerate() {
        if accepted.contains(key) {
            count += 1;
        } else {
            bitmap |= 1 << i;
        }
    }
    (count, bitmap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_age_window_and_expiry_follow_chain_md() {
        assert!(matches!(age_verdict(100, 105), Verdict::Undecided(_)));
        assert!(age_verdict(100, 106).is_accept());
        assert!(age_verdict(100, 117).is_accept());
        assert!(matches!(age_verdict(100, 118), Verdict::Reject(_)));
        assert!(!withdrawal_expired(100, 123));
        assert!(withdrawal_expired(100, 124));
        assert!(!withdrawal_expired(100, 90));
    }
}
