//! The in-memory store: the devnet's and the unit tests' storage, with the same semantics as
//! PostgreSQL (tests/storage.rs runs one suite against both). Nothing survives a restart.

use std::{
    collections::{btree_map, hash_map::Entry, BTreeMap, HashMap, HashSet},
    sync::{Mutex, MutexGuard},
    time::SystemTime,
};

use async_trait::async_trait;
use bitcoin::{secp256k1::PublicKey, BlockHash, OutPoint, TapSighash, Txid};

use super::{
    audit::{self, AuditEntry, AuditRecord},
    guard::{
        self, Check, GuardDecision, GuardPolicy, Proposal, Recorded, SpendDecision, SpendIntent,
    },
    model::*,
    DbRead, DbWrite, Result,
};
use crate::keys::AggregateKey;

#[derive(Default)]
struct State {
    bitcoin_blocks: HashMap<BlockHash, BitcoinBlock>,
    txids_by_block: HashMap<BlockHash, Vec<Txid>>,
    tx_blocks: HashSet<(Txid, BlockHash)>,
    stacks_blocks: HashMap<StacksBlockHash, StacksBlock>,
    stacks_by_anchor: HashMap<BlockHash, Vec<StacksBlockHash>>,
    deposits: BTreeMap<OutPoint, DepositRequest>,
    deposit_vouts: HashMap<Txid, Vec<u32>>,
    deposit_votes: BTreeMap<OutPoint, BTreeMap<PublicKey, DepositVote>>,
    withdrawals: BTreeMap<u64, WithdrawalRequest>,
    withdrawals_by_block: HashMap<StacksBlockHash, Vec<u64>>,
    withdrawal_votes: BTreeMap<u64, BTreeMap<PublicKey, WithdrawalVote>>,
    /// Shares and their insertion number (ties in `created_at` are broken by it).
    dkg: HashMap<AggregateKey, (StoredDkgShares, u64)>,
    dkg_inserted: u64,
    sweeps: HashMap<Txid, SweepTransaction>,
    swept_deposits: HashSet<OutPoint>,
    swept_withdrawals: HashSet<u64>,
    sighashes: HashMap<TapSighash, SighashDecision>,
    spends: BTreeMap<OutPoint, SpendDecision>,
    stacks_txs: HashMap<StacksTxid, StacksTransaction>,
    rotations: Vec<SignerSetRotation>,
    audit: Vec<AuditEntry>,
    audit_ids: HashMap<[u8; 16], usize>,
    canonical_tip: Option<BlockHash>,
    observed: HashMap<Txid, ObservedTransaction>,
    submissions: BTreeMap<OutPoint, DepositSubmissionRecord>,
    /// Kept registry events per Stacks block, in their order in the block.
    registry_events: HashMap<StacksBlockHash, Vec<RegistryEventRecord>>,
}

impl State {
    /// The marked canonical Bitcoin tip, else the highest block (equal heights: lowest hash).
    fn bitcoin_tip(&self) -> Option<&BitcoinBlock> {
        if let Some(tip) = self.canonical_tip.and_then(|t| self.bitcoin_blocks.get(&t)) {
            return Some(tip);
        }
        self.bitcoin_blocks
            .values()
            .max_by(|a, b| a.height.cmp(&b.height).then(b.hash.cmp(&a.hash)))
    }

    /// See `DbRead::get_stacks_canonical_tip`.
    fn stacks_tip(&self) -> Option<&StacksBlock> {
        let mut canonical = HashSet::new();
        let mut next = self.bitcoin_tip();
        // Bounded by the number of blocks, so corrupt parent links cannot loop forever.
        for _ in 0..self.bitcoin_blocks.len() {
            let Some(b) = next else { break };
            canonical.insert(b.hash);
            next = self.bitcoin_blocks.get(&b.parent_hash);
        }
        self.stacks_blocks
            .values()
            .filter(|b| canonical.contains(&b.bitcoin_anchor))
            .max_by(|a, b| a.height.cmp(&b.height).then(b.hash.cmp(&a.hash)))
    }

    /// The canonical Stacks chain's events in blocks at `floor` or above that `keep` selects,
    /// in chain order.
    fn canonical_events(
        &self,
        floor: u64,
        keep: impl Fn(&RegistryEventRecord) -> bool,
    ) -> Vec<StoredRegistryEvent> {
        let mut out = Vec::new();
        let mut next = self.stacks_tip();
        for _ in 0..self.stacks_blocks.len() {
            let Some(b) = next else { break };
            if b.height < floor {
                break;
            }
            for e in self
                .registry_events
                .get(&b.hash)
                .into_iter()
                .flatten()
                .rev()
            {
                if keep(e) {
                    out.push(StoredRegistryEvent {
                        event: e.clone(),
                        block_height: b.height,
                    });
                }
            }
            next = self.stacks_blocks.get(&b.parent_hash);
        }
        out.reverse();
        out
    }

    /// `tip` and up to `window - 1` ancestors that the store knows.
    /// Withdrawals made in Stacks blocks anchored in the window, sorted by id; without the
    /// ones a recorded sweep paid when `unpaid_only`.
    fn withdrawals_in_window(
        &self,
        tip: &BlockHash,
        window: u32,
        unpaid_only: bool,
    ) -> Vec<WithdrawalRequest> {
        let mut out = Vec::new();
        for block in self.window(tip, window) {
            for stacks in self.stacks_by_anchor.get(&block).into_iter().flatten() {
                for id in self.withdrawals_by_block.get(stacks).into_iter().flatten() {
                    if unpaid_only && self.swept_withdrawals.contains(id) {
                        continue;
                    }
                    if let Some(w) = self.withdrawals.get(id) {
                        out.push(w.clone());
                    }
                }
            }
        }
        out.sort_by_key(|w| w.request_id);
        out.dedup_by_key(|w| w.request_id);
        out
    }

    fn window(&self, tip: &BlockHash, window: u32) -> Vec<BlockHash> {
        let mut out = Vec::new();
        let mut next = self.bitcoin_blocks.get(tip);
        while let Some(b) = next {
            if out.len() >= window as usize {
                break;
            }
            out.push(b.hash);
            next = self.bitcoin_blocks.get(&b.parent_hash);
        }
        out
    }
}

/// State in a mutex; every method holds it for one short, await-free step, which makes each
/// write atomic just like a PostgreSQL transaction.
#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<State>,
    policy: GuardPolicy,
}

impl MemoryStore {
    /// A store with the default [`GuardPolicy`].
    pub fn new() -> Self {
        MemoryStore::default()
    }

    /// A store whose guard applies `policy`.
    pub fn with_guard_policy(policy: GuardPolicy) -> Self {
        MemoryStore {
            state: Mutex::default(),
            policy,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-applied write: every write
        // checks first and mutates last.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl DbRead for MemoryStore {
    async fn get_bitcoin_block(&self, hash: &BlockHash) -> Result<Option<BitcoinBlock>> {
        Ok(self.state().bitcoin_blocks.get(hash).cloned())
    }

    async fn get_bitcoin_canonical_tip(&self) -> Result<Option<BitcoinBlock>> {
        Ok(self.state().bitcoin_tip().cloned())
    }

    async fn in_canonical_chain(&self, tip: &BlockHash, block: &BlockHash) -> Result<bool> {
        let s = self.state();
        let mut next = s.bitcoin_blocks.get(tip);
        // Bounded by the number of blocks, so corrupt parent links cannot loop forever.
        for _ in 0..s.bitcoin_blocks.len() {
            let Some(b) = next else { break };
            if &b.hash == block {
                return Ok(true);
            }
            next = s.bitcoin_blocks.get(&b.parent_hash);
        }
        Ok(false)
    }

    async fn get_stacks_block(&self, hash: &StacksBlockHash) -> Result<Option<StacksBlock>> {
        Ok(self.state().stacks_blocks.get(hash).cloned())
    }

    async fn get_stacks_canonical_tip(&self) -> Result<Option<StacksBlock>> {
        Ok(self.state().stacks_tip().cloned())
    }

    async fn get_registry_events_since(&self, height: u64) -> Result<Vec<StoredRegistryEvent>> {
        Ok(self.state().canonical_events(height, |_| true))
    }

    async fn get_withdrawal_events(&self, request_id: u64) -> Result<Vec<StoredRegistryEvent>> {
        Ok(self
            .state()
            .canonical_events(0, |e| e.request_id == Some(request_id)))
    }

    async fn get_deposit_events(&self, outpoint: &OutPoint) -> Result<Vec<StoredRegistryEvent>> {
        Ok(self
            .state()
            .canonical_events(0, |e| e.deposit.as_ref() == Some(outpoint)))
    }

    async fn get_latest_registry_event(
        &self,
        topic: RegistryTopic,
    ) -> Result<Option<StoredRegistryEvent>> {
        Ok(self.state().canonical_events(0, |e| e.topic == topic).pop())
    }

    async fn get_deposit_request(&self, outpoint: &OutPoint) -> Result<Option<DepositRequest>> {
        Ok(self.state().deposits.get(outpoint).cloned())
    }

    async fn get_pending_deposit_requests(
        &self,
        tip: &BlockHash,
        window: u32,
    ) -> Result<Vec<DepositRequest>> {
        let s = self.state();
        let mut out = Vec::new();
        for block in s.window(tip, window) {
            for txid in s.txids_by_block.get(&block).into_iter().flatten() {
                for vout in s.deposit_vouts.get(txid).into_iter().flatten() {
                    let op = OutPoint {
                        txid: *txid,
                        vout: *vout,
                    };
                    if s.swept_deposits.contains(&op) {
                        continue;
                    }
                    if let Some(d) = s.deposits.get(&op) {
                        out.push(d.clone());
                    }
                }
            }
        }
        out.sort_by_key(|d| d.outpoint);
        out.dedup_by_key(|d| d.outpoint);
        Ok(out)
    }

    async fn get_deposit_votes(&self, outpoint: &OutPoint) -> Result<Vec<DepositVote>> {
        // PublicKey orders by its compressed encoding, as PostgreSQL orders the BYTEA column.
        Ok(self
            .state()
            .deposit_votes
            .get(outpoint)
            .map(|votes| votes.values().cloned().collect())
            .unwrap_or_default())
    }

    async fn get_withdrawal_request(&self, request_id: u64) -> Result<Option<WithdrawalRequest>> {
        Ok(self.state().withdrawals.get(&request_id).cloned())
    }

    async fn get_pending_withdrawal_requests(
        &self,
        tip: &BlockHash,
        window: u32,
    ) -> Result<Vec<WithdrawalRequest>> {
        Ok(self.state().withdrawals_in_window(tip, window, true))
    }

    async fn get_withdrawal_requests_in_window(
        &self,
        tip: &BlockHash,
        window: u32,
    ) -> Result<Vec<WithdrawalRequest>> {
        Ok(self.state().withdrawals_in_window(tip, window, false))
    }

    async fn get_withdrawal_votes(&self, request_id: u64) -> Result<Vec<WithdrawalVote>> {
        Ok(self
            .state()
            .withdrawal_votes
            .get(&request_id)
            .map(|votes| votes.values().cloned().collect())
            .unwrap_or_default())
    }

    async fn get_dkg_shares(
        &self,
        aggregate_key: &AggregateKey,
    ) -> Result<Option<StoredDkgShares>> {
        Ok(self.state().dkg.get(aggregate_key).map(|(s, _)| s.clone()))
    }

    async fn get_all_dkg_shares(&self) -> Result<Vec<StoredDkgShares>> {
        let s = self.state();
        let mut all: Vec<&(StoredDkgShares, u64)> = s.dkg.values().collect();
        all.sort_by(|(a, ai), (b, bi)| b.created_at.cmp(&a.created_at).then(bi.cmp(ai)));
        Ok(all.into_iter().map(|(s, _)| s.clone()).collect())
    }

    async fn get_latest_verified_dkg_shares(&self) -> Result<Option<StoredDkgShares>> {
        Ok(self
            .state()
            .dkg
            .values()
            .filter(|(s, _)| s.shares.status == DkgSharesStatus::Verified)
            .max_by(|(a, ai), (b, bi)| a.created_at.cmp(&b.created_at).then(ai.cmp(bi)))
            .map(|(s, _)| s.clone()))
    }

    async fn get_sweep_transaction(&self, txid: &Txid) -> Result<Option<SweepTransaction>> {
        Ok(self.state().sweeps.get(txid).cloned())
    }

    async fn get_transaction_blocks(&self, txid: &Txid) -> Result<Vec<BlockHash>> {
        let s = self.state();
        let mut blocks: Vec<BlockHash> = s
            .tx_blocks
            .iter()
            .filter(|(t, _)| t == txid)
            .map(|(_, b)| *b)
            .collect();
        blocks.sort();
        Ok(blocks)
    }

    async fn get_observed_transactions(&self, txids: &[Txid]) -> Result<Vec<ObservedTransaction>> {
        let s = self.state();
        Ok(txids
            .iter()
            .filter_map(|t| s.observed.get(t).cloned())
            .collect())
    }

    async fn get_signer_transactions(
        &self,
        tip: &BlockHash,
        window: u32,
    ) -> Result<Vec<(ObservedTransaction, BitcoinBlock)>> {
        let s = self.state();
        let mut out = Vec::new();
        for hash in s.window(tip, window) {
            let Some(block) = s.bitcoin_blocks.get(&hash) else {
                continue;
            };
            let mut txids: Vec<Txid> = s
                .txids_by_block
                .get(&hash)
                .into_iter()
                .flatten()
                .copied()
                .collect();
            txids.sort();
            txids.dedup();
            for txid in txids {
                if let Some(o) = s.observed.get(&txid) {
                    if matches!(o.kind, ObservedKind::Sweep | ObservedKind::Donation) {
                        out.push((o.clone(), block.clone()));
                    }
                }
            }
        }
        out.sort_by(|a, b| {
            a.1.height
                .cmp(&b.1.height)
                .then(a.0.txid().cmp(&b.0.txid()))
        });
        Ok(out)
    }

    async fn get_deposit_submission(
        &self,
        outpoint: &OutPoint,
    ) -> Result<Option<DepositSubmissionRecord>> {
        Ok(self.state().submissions.get(outpoint).cloned())
    }

    async fn get_deposit_submissions_for_txids(
        &self,
        txids: &[Txid],
    ) -> Result<Vec<DepositSubmissionRecord>> {
        let s = self.state();
        let wanted: HashSet<&Txid> = txids.iter().collect();
        Ok(s.submissions
            .values()
            .filter(|d| wanted.contains(&d.outpoint.txid))
            .cloned()
            .collect())
    }

    async fn get_sighash_decision(&self, sighash: &TapSighash) -> Result<Option<SighashDecision>> {
        Ok(self.state().sighashes.get(sighash).cloned())
    }

    async fn get_spend_decision(&self, outpoint: &OutPoint) -> Result<Option<SpendDecision>> {
        Ok(self.state().spends.get(outpoint).cloned())
    }

    async fn get_stacks_transaction(&self, txid: &StacksTxid) -> Result<Option<StacksTransaction>> {
        Ok(self.state().stacks_txs.get(txid).cloned())
    }

    async fn get_signer_set_history(&self) -> Result<Vec<SignerSetRotation>> {
        Ok(self.state().rotations.clone())
    }

    async fn get_audit_log(&self) -> Result<Vec<AuditEntry>> {
        Ok(self.state().audit.clone())
    }
}

#[async_trait]
impl DbWrite for MemoryStore {
    async fn set_bitcoin_canonical_tip(&self, tip: &BlockHash) -> Result<()> {
        let mut s = self.state();
        if !s.bitcoin_blocks.contains_key(tip) {
            return Err(super::Error::new(
                super::ErrorKind::InvalidInput,
                "set_bitcoin_canonical_tip",
                format!("block {tip} is not stored; write it first"),
            ));
        }
        s.canonical_tip = Some(*tip);
        Ok(())
    }

    async fn write_observed_transaction(
        &self,
        tx: &ObservedTransaction,
        block: &BlockHash,
    ) -> Result<()> {
        let txid = tx.txid();
        let mut guard = self.state();
        let s = &mut *guard;
        s.observed.entry(txid).or_insert_with(|| tx.clone());
        if s.tx_blocks.insert((txid, *block)) {
            s.txids_by_block.entry(*block).or_default().push(txid);
        }
        Ok(())
    }

    async fn write_deposit_submission(&self, submission: &DepositSubmissionRecord) -> Result<bool> {
        match self.state().submissions.entry(submission.outpoint) {
            btree_map::Entry::Vacant(e) => {
                e.insert(submission.clone());
                Ok(true)
            }
            btree_map::Entry::Occupied(_) => Ok(false),
        }
    }

    async fn write_bitcoin_block(&self, block: &BitcoinBlock) -> Result<()> {
        self.state()
            .bitcoin_blocks
            .entry(block.hash)
            .or_insert_with(|| block.clone());
        Ok(())
    }

    async fn write_bitcoin_transaction(&self, txid: &Txid, block: &BlockHash) -> Result<()> {
        let mut s = self.state();
        if s.tx_blocks.insert((*txid, *block)) {
            s.txids_by_block.entry(*block).or_default().push(*txid);
        }
        Ok(())
    }

    async fn write_stacks_block(&self, block: &StacksBlock) -> Result<()> {
        let mut guard = self.state();
        let s = &mut *guard;
        if let Entry::Vacant(e) = s.stacks_blocks.entry(block.hash) {
            e.insert(block.clone());
            s.stacks_by_anchor
                .entry(block.bitcoin_anchor)
                .or_default()
                .push(block.hash);
        }
        Ok(())
    }

    async fn write_stacks_block_events(
        &self,
        block: &StacksBlock,
        events: &[RegistryEventRecord],
    ) -> Result<()> {
        for e in events {
            e.check(block, "write_stacks_block_events")?;
        }
        let mut guard = self.state();
        let s = &mut *guard;
        if let Entry::Vacant(e) = s.stacks_blocks.entry(block.hash) {
            e.insert(block.clone());
            s.stacks_by_anchor
                .entry(block.bitcoin_anchor)
                .or_default()
                .push(block.hash);
        }
        let kept = s.registry_events.entry(block.hash).or_default();
        for e in events {
            if !kept
                .iter()
                .any(|k| k.txid == e.txid && k.event_index == e.event_index)
            {
                kept.push(e.clone());
            }
        }
        // Ordered as PostgreSQL orders them: by position, then txid and index.
        kept.sort_by(|a, b| {
            (a.position, a.txid, a.event_index).cmp(&(b.position, b.txid, b.event_index))
        });
        Ok(())
    }

    async fn write_deposit_request(
        &self,
        request: &DepositRequest,
        confirmed_in: &BlockHash,
    ) -> Result<()> {
        storable_sats(request.amount, "amount", "write_deposit_request")?;
        storable_sats(request.max_fee, "max_fee", "write_deposit_request")?;
        let mut guard = self.state();
        let s = &mut *guard;
        let op = request.outpoint;
        if let btree_map::Entry::Vacant(e) = s.deposits.entry(op) {
            e.insert(request.clone());
            s.deposit_vouts.entry(op.txid).or_default().push(op.vout);
        }
        if s.tx_blocks.insert((op.txid, *confirmed_in)) {
            s.txids_by_block
                .entry(*confirmed_in)
                .or_default()
                .push(op.txid);
        }
        Ok(())
    }

    async fn write_deposit_vote(&self, vote: &DepositVote) -> Result<()> {
        self.state()
            .deposit_votes
            .entry(vote.outpoint)
            .or_default()
            .entry(vote.signer)
            .or_insert_with(|| vote.clone());
        Ok(())
    }

    async fn write_withdrawal_request(&self, request: &WithdrawalRequest) -> Result<()> {
        storable_sats(request.amount, "amount", "write_withdrawal_request")?;
        storable_sats(request.max_fee, "max_fee", "write_withdrawal_request")?;
        let mut guard = self.state();
        let s = &mut *guard;
        if let btree_map::Entry::Vacant(e) = s.withdrawals.entry(request.request_id) {
            e.insert(request.clone());
            s.withdrawals_by_block
                .entry(request.stacks_block_hash)
                .or_default()
                .push(request.request_id);
        }
        Ok(())
    }

    async fn write_withdrawal_vote(&self, vote: &WithdrawalVote) -> Result<()> {
        self.state()
            .withdrawal_votes
            .entry(vote.request_id)
            .or_default()
            .entry(vote.signer)
            .or_insert_with(|| vote.clone());
        Ok(())
    }

    async fn write_dkg_shares(&self, shares: &DkgShares) -> Result<()> {
        shares.storable_ids("write_dkg_shares")?;
        let mut s = self.state();
        if !s.dkg.contains_key(&shares.aggregate_key) {
            s.dkg_inserted += 1;
            let n = s.dkg_inserted;
            let stored = StoredDkgShares {
                shares: shares.clone(),
                created_at: audit::truncate_to_micros(SystemTime::now()),
            };
            s.dkg.insert(shares.aggregate_key, (stored, n));
        }
        Ok(())
    }

    async fn set_dkg_shares_status(
        &self,
        aggregate_key: &AggregateKey,
        status: DkgSharesStatus,
    ) -> Result<bool> {
        Ok(match self.state().dkg.get_mut(aggregate_key) {
            Some((stored, _)) => {
                stored.shares.status = status;
                true
            }
            None => false,
        })
    }

    async fn write_sweep_transaction(&self, sweep: &SweepTransaction) -> Result<()> {
        storable_sats(sweep.fee, "fee", "write_sweep_transaction")?;
        for w in &sweep.withdrawals {
            storable_sats(w.amount, "withdrawal amount", "write_sweep_transaction")?;
        }
        let mut guard = self.state();
        let s = &mut *guard;
        if let Entry::Vacant(e) = s.sweeps.entry(sweep.txid) {
            e.insert(sweep.clone());
            s.swept_deposits.extend(sweep.deposits.iter().copied());
            s.swept_withdrawals
                .extend(sweep.withdrawals.iter().map(|w| w.request_id));
        }
        Ok(())
    }

    async fn write_sighash_decision(&self, decision: &SighashDecision) -> Result<()> {
        self.state()
            .sighashes
            .entry(decision.sighash)
            .or_insert_with(|| decision.clone());
        Ok(())
    }

    async fn write_stacks_transaction(&self, tx: &StacksTransaction) -> Result<()> {
        self.state()
            .stacks_txs
            .entry(tx.txid)
            .or_insert_with(|| tx.clone());
        Ok(())
    }

    async fn write_signer_set_rotation(&self, rotation: &SignerSetRotation) -> Result<()> {
        let mut s = self.state();
        // Keyed by the Stacks transaction that rotated the keys, like the PostgreSQL table.
        if !s
            .rotations
            .iter()
            .any(|r| r.stacks_txid == rotation.stacks_txid)
        {
            s.rotations.push(rotation.clone());
        }
        Ok(())
    }

    async fn append_audit(&self, record: &AuditRecord) -> Result<AuditEntry> {
        let mut s = self.state();
        if let Some(&i) = s.audit_ids.get(&record.entry_id) {
            return Ok(s.audit[i].clone());
        }
        let head = s.audit.last().map(|e| (e.seq, e.hash));
        let entry = audit::next_entry(head, record);
        let index = s.audit.len();
        s.audit_ids.insert(record.entry_id, index);
        s.audit.push(entry.clone());
        Ok(entry)
    }

    async fn guard_spend(&self, intent: &SpendIntent) -> Result<GuardDecision> {
        intent.validate()?;
        let proposal = Proposal::new(intent);
        if let Some(refused) = proposal.precheck(&self.policy) {
            return Ok(refused);
        }
        let spends = intent.sorted_spends();
        let mut s = self.state();
        let outcomes: Vec<(OutPoint, Check)> = spends
            .iter()
            .map(|op| {
                let check = match s.spends.get(op) {
                    None => Check::Free,
                    Some(d) => proposal.check(
                        *op,
                        &Recorded {
                            txid: d.txid,
                            fingerprint: d.fingerprint,
                            change_scripts: d.change_scripts.as_deref(),
                            highest_fee: d.highest_fee,
                            already_approved: d.approved_txids.contains(&intent.txid),
                        },
                    ),
                };
                (*op, check)
            })
            .collect();
        let decision = guard::combine(&outcomes);
        if decision.is_approved() {
            for (op, check) in &outcomes {
                match check {
                    Check::Free => {
                        s.spends.insert(
                            *op,
                            SpendDecision {
                                outpoint: *op,
                                txid: intent.txid,
                                fingerprint: proposal.fingerprint,
                                change_scripts: Some(proposal.change_scripts.clone()),
                                highest_fee: Some(intent.fee),
                                approved_txids: vec![intent.txid],
                            },
                        );
                    }
                    Check::FeeBump(_) => {
                        if let Some(d) = s.spends.get_mut(op) {
                            d.approved_txids.push(intent.txid);
                            d.highest_fee = Some(intent.fee);
                        }
                    }
                    Check::Same | Check::Conflict(_) => {}
                }
            }
        }
        Ok(decision)
    }
}
