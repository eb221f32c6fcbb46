//! The mempool: bitcoind's acceptance rules (`MemPoolAccept::PreChecks`, the standardness
//! rules of `IsStandardTx`, BIP-125 replacement as with `mempoolfullrbf=1`, the package limits)
//! in bitcoind's order and with its reject reasons, and block assembly by ancestor fee rate.

use std::collections::{HashMap, HashSet, VecDeque};

use bitcoin::{Amount, FeeRate, OutPoint, Transaction, Txid, Wtxid};

use super::chain::Chain;
use super::verify::{self, Coin, Reject};
use crate::chain::bitcoin::client::RPC_VERIFY_ERROR;

/// Default package limits (`-limitancestorcount`, `-limitancestorsize`, ...).
pub const MAX_ANCESTORS: usize = 25;
pub const MAX_DESCENDANTS: usize = 25;
pub const MAX_PACKAGE_VSIZE: u64 = 101_000;
/// BIP-125 rule 5: at most this many transactions replaced.
pub const MAX_REPLACEMENT_CANDIDATES: usize = 100;
/// Standard transactions weigh at most this (100 kvB).
pub const MAX_STANDARD_TX_WEIGHT: u64 = 400_000;
/// Non-witness size below which a transaction is refused (`tx-size-small`).
pub const MIN_STANDARD_TX_NONWITNESS_SIZE: usize = 65;
pub const MAX_STANDARD_SCRIPTSIG_SIZE: usize = 1650;
/// OP_RETURN outputs of at most this many script bytes are standard (`-datacarriersize` 83).
pub const MAX_OP_RETURN_RELAY: usize = 83;

/// One transaction in the mempool.
#[derive(Clone, Debug)]
pub struct Entry {
    pub tx: Transaction,
    pub txid: Txid,
    pub wtxid: Wtxid,
    pub fee: Amount,
    pub vsize: u64,
    pub weight: u64,
    /// UNIX time it entered.
    pub time: u64,
    /// The best chain's height when it entered.
    pub height: u32,
    /// Entry order: parents always enter before their children.
    pub seq: u64,
}

/// How a transaction is being offered.
#[derive(Clone, Copy, Debug)]
pub struct AcceptOptions {
    /// `testmempoolaccept`: check only.
    pub test_only: bool,
    /// Transactions from disconnected blocks: no fee or package limits, as bitcoind re-adds them.
    pub bypass_limits: bool,
    /// `maxfeerate`; None for no limit.
    pub max_fee_rate: Option<FeeRate>,
    /// Every in-mempool transaction is replaceable (`mempoolfullrbf=1`, v28's default).
    pub full_rbf: bool,
    pub min_relay_fee: FeeRate,
    pub incremental_fee: FeeRate,
    pub now: u64,
}

/// An accepted (or, in a test, acceptable) transaction.
#[derive(Clone, Debug)]
pub struct Accepted {
    pub txid: Txid,
    pub wtxid: Wtxid,
    pub vsize: u64,
    pub fee: Amount,
    pub replaced: Vec<Txid>,
}

#[derive(Clone, Default)]
pub struct Mempool {
    entries: HashMap<Txid, Entry>,
    /// Which mempool transaction spends each outpoint.
    spends: HashMap<OutPoint, Txid>,
    next_seq: u64,
}

/// `fee` for `vsize` at `rate`, rounded down as bitcoind's `CFeeRate::GetFee` does (sat/kvB).
pub fn fee_at(rate: FeeRate, vsize: u64) -> u64 {
    rate.to_sat_per_kwu() * 4 * vsize / 1000
}

/// A fee rate as bitcoind prints it: `0.00001000 BTC/kvB`.
pub fn format_rate(fee: u64, vsize: u64) -> String {
    let per_kvb = (fee * 1000).checked_div(vsize).unwrap_or(0);
    format!("{} BTC/kvB", verify::format_money(per_kvb))
}

impl Mempool {
    pub fn get(&self, txid: &Txid) -> Option<&Entry> {
        self.entries.get(txid)
    }

    pub fn contains(&self, txid: &Txid) -> bool {
        self.entries.contains_key(txid)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The transactions in entry order (parents first).
    pub fn entries(&self) -> Vec<&Entry> {
        let mut v: Vec<&Entry> = self.entries.values().collect();
        v.sort_by_key(|e| e.seq);
        v
    }

    /// The mempool transaction spending `outpoint`.
    pub fn spender(&self, outpoint: &OutPoint) -> Option<Txid> {
        self.spends.get(outpoint).copied()
    }

    /// The output `outpoint` of a mempool transaction.
    pub fn output(&self, outpoint: &OutPoint) -> Option<&bitcoin::TxOut> {
        self.entries
            .get(&outpoint.txid)
            .and_then(|e| e.tx.output.get(outpoint.vout as usize))
    }

    fn parents(&self, tx: &Transaction) -> HashSet<Txid> {
        tx.input
            .iter()
            .map(|i| i.previous_output.txid)
            .filter(|t| self.entries.contains_key(t))
            .collect()
    }

    fn children(&self, txid: &Txid) -> Vec<Txid> {
        let Some(e) = self.entries.get(txid) else {
            return vec![];
        };
        (0..e.tx.output.len() as u32)
            .filter_map(|vout| self.spends.get(&OutPoint::new(*txid, vout)).copied())
            .collect()
    }

    /// In-mempool ancestors of a transaction (not itself).
    pub fn ancestors_of(&self, tx: &Transaction) -> HashSet<Txid> {
        let mut seen = HashSet::new();
        let mut queue: VecDeque<Txid> = self.parents(tx).into_iter().collect();
        while let Some(t) = queue.pop_front() {
            if seen.insert(t) {
                queue.extend(self.parents(&self.entries[&t].tx));
            }
        }
        seen
    }

    /// In-mempool descendants of `txid` (not itself).
    pub fn descendants_of(&self, txid: &Txid) -> HashSet<Txid> {
        let mut seen = HashSet::new();
        let mut queue: VecDeque<Txid> = self.children(txid).into();
        while let Some(t) = queue.pop_front() {
            if seen.insert(t) {
                queue.extend(self.children(&t));
            }
        }
        seen
    }

    fn sum(&self, txids: &HashSet<Txid>) -> (Amount, u64) {
        txids.iter().fold((Amount::ZERO, 0), |(f, v), t| {
            let e = &self.entries[t];
            (f + e.fee, v + e.vsize)
        })
    }

    /// (fee, vsize) of the transaction and its ancestors.
    pub fn ancestor_totals(&self, txid: &Txid) -> (usize, Amount, u64) {
        let e = &self.entries[txid];
        let anc = self.ancestors_of(&e.tx);
        let (f, v) = self.sum(&anc);
        (anc.len() + 1, f + e.fee, v + e.vsize)
    }

    /// (count, fee, vsize) of the transaction and its descendants.
    pub fn descendant_totals(&self, txid: &Txid) -> (usize, Amount, u64) {
        let e = &self.entries[txid];
        let desc = self.descendants_of(txid);
        let (f, v) = self.sum(&desc);
        (desc.len() + 1, f + e.fee, v + e.vsize)
    }

    /// The coin an input spends: a mempool output, else the best chain's UTXO set.
    pub fn coin(&self, chain: &Chain, outpoint: &OutPoint) -> Option<Coin> {
        if let Some(out) = self.output(outpoint) {
            return Some(Coin {
                output: out.clone(),
                height: chain.tip_height() + 1,
                coinbase: false,
            });
        }
        chain.utxo(outpoint).cloned()
    }

    /// Checks a transaction as bitcoind's `AcceptToMemoryPool` does and, unless `test_only`,
    /// adds it (replacing what it conflicts with).
    pub fn accept(
        &mut self,
        chain: &Chain,
        tx: &Transaction,
        opts: AcceptOptions,
    ) -> Result<Accepted, Reject> {
        let accepted = self.check(chain, tx, opts)?;
        if opts.test_only {
            return Ok(accepted);
        }
        for t in &accepted.replaced {
            self.remove_one(t);
        }
        for input in &tx.input {
            self.spends.insert(input.previous_output, accepted.txid);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.entries.insert(
            accepted.txid,
            Entry {
                tx: tx.clone(),
                txid: accepted.txid,
                wtxid: accepted.wtxid,
                fee: accepted.fee,
                vsize: accepted.vsize,
                weight: tx.weight().to_wu(),
                time: opts.now,
                height: chain.tip_height(),
                seq,
            },
        );
        Ok(accepted)
    }

    /// The checks of [`Mempool::accept`], changing nothing.
    pub fn check(
        &self,
        chain: &Chain,
        tx: &Transaction,
        opts: AcceptOptions,
    ) -> Result<Accepted, Reject> {
        let txid = tx.compute_txid();
        let wtxid = tx.compute_wtxid();
        let rej = |reason: &str, debug: Option<String>| Err(Reject::rejected(reason, debug));

        verify::check_transaction(tx)?;
        if tx.is_coinbase() {
            return rej("coinbase", None);
        }
        check_standard(tx)?;
        if tx.base_size() < MIN_STANDARD_TX_NONWITNESS_SIZE {
            return rej("tx-size-small", None);
        }
        let next_height = chain.tip_height() + 1;
        let tip_mtp = chain.mtp(chain.tip_height());
        if !verify::is_final(tx, next_height, tip_mtp) {
            return rej("non-final", None);
        }
        if let Some(existing) = self.entries.get(&txid) {
            if existing.wtxid == wtxid {
                return rej("txn-already-in-mempool", None);
            }
            return rej("txn-same-nonwitness-data-in-mempool", None);
        }

        // Direct conflicts: mempool transactions spending the same outpoints.
        let mut conflicts: HashSet<Txid> = HashSet::new();
        for input in &tx.input {
            if let Some(other) = self.spends.get(&input.previous_output) {
                if !opts.full_rbf && !self.entries[other].tx.is_explicitly_rbf() {
                    return rej("txn-mempool-conflict", None);
                }
                conflicts.insert(*other);
            }
        }

        let mut coins = Vec::with_capacity(tx.input.len());
        for input in &tx.input {
            match self.coin(chain, &input.previous_output) {
                Some(c) => coins.push(c),
                None => {
                    let known = (0..tx.output.len() as u32)
                        .any(|v| chain.utxo(&OutPoint::new(txid, v)).is_some());
                    return Err(if known {
                        Reject::already_in_chain()
                    } else {
                        Reject::missing_inputs()
                    });
                }
            }
        }

        let mtp_before = |h: u32| chain.mtp(h.saturating_sub(1));
        if !verify::sequence_locks_met(tx, &coins, next_height, tip_mtp, mtp_before) {
            return rej("non-BIP68-final", None);
        }
        let fee = verify::check_tx_inputs(tx, &coins, next_height)?;
        let weight = tx.weight().to_wu();
        let vsize = weight.div_ceil(4);

        if !opts.bypass_limits {
            let min = fee_at(opts.min_relay_fee, vsize);
            if fee.to_sat() < min {
                return rej(
                    "min relay fee not met",
                    Some(format!("{} < {}", fee.to_sat(), min)),
                );
            }
        }
        if let Some(max) = opts.max_fee_rate {
            if fee.to_sat() > fee_at(max, vsize) {
                return Err(Reject {
                    code: RPC_VERIFY_ERROR,
                    reason: "max-fee-exceeded".into(),
                    debug: None,
                });
            }
        }

        let ancestors = self.ancestors_of(tx);
        if !opts.bypass_limits {
            self.check_package_limits(&ancestors, vsize)?;
        }

        let mut replaced = HashSet::new();
        if !conflicts.is_empty() {
            replaced =
                self.check_replacement(tx, &txid, fee, vsize, &conflicts, &ancestors, opts)?;
        }

        verify::verify_scripts(tx, &coins)?;

        Ok(Accepted {
            txid,
            wtxid,
            vsize,
            fee,
            replaced: replaced.into_iter().collect(),
        })
    }

    fn check_package_limits(&self, ancestors: &HashSet<Txid>, vsize: u64) -> Result<(), Reject> {
        let too_long = |debug: String| Err(Reject::rejected("too-long-mempool-chain", Some(debug)));
        if ancestors.len() + 1 > MAX_ANCESTORS {
            return too_long(format!(
                "too many unconfirmed ancestors [limit: {MAX_ANCESTORS}]"
            ));
        }
        let (_, anc_vsize) = self.sum(ancestors);
        if anc_vsize + vsize > MAX_PACKAGE_VSIZE {
            return too_long(format!(
                "exceeds ancestor size limit [limit: {MAX_PACKAGE_VSIZE}]"
            ));
        }
        let mut sorted: Vec<&Txid> = ancestors.iter().collect();
        sorted.sort_by_key(|t| self.entries[*t].seq);
        for a in sorted {
            let (count, _, desc_vsize) = self.descendant_totals(a);
            if count + 1 > MAX_DESCENDANTS {
                return too_long(format!(
                    "too many descendants for tx {a} [limit: {MAX_DESCENDANTS}]"
                ));
            }
            if desc_vsize + vsize > MAX_PACKAGE_VSIZE {
                return too_long(format!(
                    "exceeds descendant size limit for tx {a} [limit: {MAX_PACKAGE_VSIZE}]"
                ));
            }
        }
        Ok(())
    }

    /// BIP-125 as bitcoind v28 applies it (`ReplacementChecks`); returns every transaction the
    /// replacement evicts.
    #[allow(clippy::too_many_arguments)]
    fn check_replacement(
        &self,
        tx: &Transaction,
        txid: &Txid,
        fee: Amount,
        vsize: u64,
        conflicts: &HashSet<Txid>,
        ancestors: &HashSet<Txid>,
        opts: AcceptOptions,
    ) -> Result<HashSet<Txid>, Reject> {
        let mut all = HashSet::new();
        for c in conflicts {
            all.insert(*c);
            all.extend(self.descendants_of(c));
        }
        if all.len() > MAX_REPLACEMENT_CANDIDATES {
            return Err(Reject::rejected(
                "too many potential replacements",
                Some(format!(
                    "rejecting replacement {txid}; too many potential replacements ({} > {MAX_REPLACEMENT_CANDIDATES})",
                    all.len()
                )),
            ));
        }
        // Rule 2: no new unconfirmed inputs.
        let conflict_parents: HashSet<Txid> = conflicts
            .iter()
            .flat_map(|c| self.parents(&self.entries[c].tx))
            .collect();
        for (idx, input) in tx.input.iter().enumerate() {
            let parent = input.previous_output.txid;
            if self.entries.contains_key(&parent) && !conflict_parents.contains(&parent) {
                return Err(Reject::rejected(
                    "replacement-adds-unconfirmed",
                    Some(format!(
                        "replacement {txid} adds unconfirmed input, idx {idx}"
                    )),
                ));
            }
        }
        if let Some(c) = ancestors.iter().find(|a| all.contains(*a)) {
            return Err(Reject::rejected(
                "bad-txns-spends-conflicting-tx",
                Some(format!("{txid} spends conflicting transaction {c}")),
            ));
        }
        // Rule 6 (bitcoind's PaysMoreThanConflicts): a higher fee rate than each direct conflict.
        for c in conflicts {
            let e = &self.entries[c];
            if fee.to_sat() as u128 * e.vsize as u128 <= e.fee.to_sat() as u128 * vsize as u128 {
                return Err(Reject::rejected(
                    "insufficient fee",
                    Some(format!(
                        "rejecting replacement {txid}; new feerate {} <= old feerate {}",
                        format_rate(fee.to_sat(), vsize),
                        format_rate(e.fee.to_sat(), e.vsize)
                    )),
                ));
            }
        }
        // Rules 3 and 4: pays for everything it evicts, plus its own relay at the incremental rate.
        let (original, _) = self.sum(&all);
        if fee < original {
            return Err(Reject::rejected(
                "insufficient fee",
                Some(format!(
                    "rejecting replacement {txid}, less fees than conflicting txs; {} < {}",
                    verify::format_money(fee.to_sat()),
                    verify::format_money(original.to_sat())
                )),
            ));
        }
        let additional = fee - original;
        let required = fee_at(opts.incremental_fee, vsize);
        if additional.to_sat() < required {
            return Err(Reject::rejected(
                "insufficient fee",
                Some(format!(
                    "rejecting replacement {txid}, not enough additional fees to relay; {} < {}",
                    verify::format_money(additional.to_sat()),
                    verify::format_money(required)
                )),
            ));
        }
        Ok(all)
    }

    fn remove_one(&mut self, txid: &Txid) -> Option<Entry> {
        let e = self.entries.remove(txid)?;
        for input in &e.tx.input {
            if self.spends.get(&input.previous_output) == Some(txid) {
                self.spends.remove(&input.previous_output);
            }
        }
        Some(e)
    }

    /// Removes a transaction and everything that spends it.
    pub fn remove_with_descendants(&mut self, txid: &Txid) {
        let mut all = self.descendants_of(txid);
        all.insert(*txid);
        for t in all {
            self.remove_one(&t);
        }
    }

    /// After a block joins the best chain: its transactions leave, and so does whatever
    /// conflicted with them (with descendants).
    pub fn remove_for_block(&mut self, block: &bitcoin::Block) {
        for tx in &block.txdata {
            let txid = tx.compute_txid();
            self.remove_one(&txid);
            for input in &tx.input {
                if let Some(other) = self.spends.get(&input.previous_output).copied() {
                    self.remove_with_descendants(&other);
                }
            }
        }
    }

    /// Takes every transaction out, in entry order.
    pub fn drain(&mut self) -> Vec<Transaction> {
        let mut entries: Vec<Entry> = self.entries.drain().map(|(_, e)| e).collect();
        self.spends.clear();
        entries.sort_by_key(|e| e.seq);
        entries.into_iter().map(|e| e.tx).collect()
    }

    /// Transactions for the next block, by ancestor fee rate (each with the ancestors it needs,
    /// parents first), within `max_weight`. A package's rate is recomputed when it reaches the
    /// top of the queue, so the work is O(n log n) times the ancestor count, not O(n²).
    pub fn select_for_block(&self, max_weight: u64) -> (Vec<Transaction>, Amount) {
        let ancestors: HashMap<Txid, HashSet<Txid>> = self
            .entries
            .values()
            .map(|e| (e.txid, self.ancestors_of(&e.tx)))
            .collect();
        let package = |txid: &Txid, included: &HashSet<Txid>| -> Candidate {
            let mut fee = self.entries[txid].fee.to_sat();
            let mut vsize = self.entries[txid].vsize;
            for a in &ancestors[txid] {
                if !included.contains(a) {
                    fee += self.entries[a].fee.to_sat();
                    vsize += self.entries[a].vsize;
                }
            }
            Candidate {
                fee,
                vsize,
                seq: self.entries[txid].seq,
                txid: *txid,
            }
        };
        let mut included: HashSet<Txid> = HashSet::new();
        let mut queue: std::collections::BinaryHeap<Candidate> =
            self.entries.keys().map(|t| package(t, &included)).collect();
        let mut chosen = Vec::new();
        let mut weight = 0u64;
        let mut fees = Amount::ZERO;
        while let Some(top) = queue.pop() {
            if included.contains(&top.txid) {
                continue;
            }
            let now = package(&top.txid, &included);
            if (now.fee, now.vsize) != (top.fee, top.vsize) {
                // Some ancestors went into the block since: queue it at its current rate.
                queue.push(now);
                continue;
            }
            let mut members: Vec<Txid> = ancestors[&top.txid]
                .iter()
                .filter(|a| !included.contains(*a))
                .copied()
                .collect();
            members.push(top.txid);
            members.sort_by_key(|t| self.entries[t].seq);
            let w: u64 = members.iter().map(|t| self.entries[t].weight).sum();
            if weight + w > max_weight {
                continue;
            }
            weight += w;
            for t in members {
                let e = &self.entries[&t];
                fees += e.fee;
                chosen.push(e.tx.clone());
                included.insert(t);
            }
        }
        (chosen, fees)
    }
}

/// A package in the block-assembly queue, ordered by fee rate (then by entry order).
#[derive(PartialEq, Eq)]
struct Candidate {
    fee: u64,
    vsize: u64,
    seq: u64,
    txid: Txid,
}

impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let lhs = self.fee as u128 * other.vsize as u128;
        let rhs = other.fee as u128 * self.vsize as u128;
        lhs.cmp(&rhs).then(other.seq.cmp(&self.seq))
    }
}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// bitcoind's `IsStandardTx`.
fn check_standard(tx: &Transaction) -> Result<(), Reject> {
    let rej = |reason: &str| Err(Reject::rejected(reason, None));
    if !(1..=3).contains(&tx.version.0) {
        return rej("version");
    }
    if tx.weight().to_wu() > MAX_STANDARD_TX_WEIGHT {
        return rej("tx-size");
    }
    for input in &tx.input {
        if input.script_sig.len() > MAX_STANDARD_SCRIPTSIG_SIZE {
            return rej("scriptsig-size");
        }
        if !input.script_sig.is_push_only() {
            return rej("scriptsig-not-pushonly");
        }
    }
    let mut data_outputs = 0;
    for out in &tx.output {
        let s = &out.script_pubkey;
        if s.is_op_return() {
            if s.len() > MAX_OP_RETURN_RELAY {
                return rej("scriptpubkey");
            }
            data_outputs += 1;
            continue;
        }
        let standard =
            s.is_p2pkh() || s.is_p2sh() || s.is_witness_program() || s.is_p2pk() || s.is_multisig();
        if !standard {
            return rej("scriptpubkey");
        }
        if out.value < s.minimal_non_dust() {
            return rej("dust");
        }
    }
    if data_outputs > 1 {
        return rej("multi-op-return");
    }
    Ok(())
}
