//! Sweeps in a tenure (CHAIN.md sections 2 and 6): what the coordinator proposes, what every
//! signer rebuilds from its own view before it records anything in its no-equivocation guard,
//! and, once a sweep confirms, the Stacks calls that complete what it swept.
//!
//! A sweep proposal only names things: the peg UTXO, deposit outpoints, withdrawal ids and a fee
//! rate. Each signer finds the peg UTXO in its own store, takes each request from its own store
//! and its own vote, checks the rate against its own `estimatesmartfee`, and builds the package
//! itself; it signs only the sighashes of what it built.

use std::collections::BTreeSet;
use std::str::FromStr;
use std::sync::Arc;

use bitcoin::secp256k1::PublicKey;
use bitcoin::{Amount, FeeRate, OutPoint, Transaction, Txid};

use super::peg_utxo::{self, FoundPeg};
use super::sweep_config::SweepSettings;
use crate::chain::bitcoin::client::BitcoinClient;
use crate::chain::bitcoin::sweep::{
    self, ParsedSweep, PegUtxo, SweepDeposit, SweepPackage, SweepParams, SweepWithdrawal,
};
use crate::chain::stacks::{address::Principal, contracts::CompleteDeposit, observer};
use crate::keys::AggregateKey;
use crate::storage::{BitcoinBlock, DepositRequest, ObservedKind, Storage};

/// Blocks back from the tip searched for confirmed sweeps whose Stacks calls are still to make.
pub const COMPLETION_WINDOW: u32 = 1_000;
/// Most deposits one sweep proposal names (the contracts' batch limit is 500 per call; a
/// package of several transactions can hold more).
pub const MAX_PROPOSED_DEPOSITS: usize = 5_000;
pub const MAX_PROPOSED_WITHDRAWALS: usize = 1_000;

/// What a signer needs for sweeps.
#[derive(Clone)]
pub struct SweepSide {
    pub bitcoin: Arc<dyn BitcoinClient>,
    pub settings: SweepSettings,
}

/// What a sweep proposal names, read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Named {
    pub peg: OutPoint,
    pub deposits: Vec<OutPoint>,
    pub withdrawals: Vec<u64>,
    pub fee_rate: FeeRate,
}

impl Named {
    /// Reads the proposal's fields; refuses duplicates and unreadable outpoints.
    pub fn read(
        peg: &str,
        deposits: &[String],
        withdrawals: &[u64],
        fee_rate_sat_per_kwu: u64,
    ) -> Result<Named, String> {
        let peg = OutPoint::from_str(peg)
            .map_err(|e| format!("the peg UTXO {peg:?} is not txid:vout: {e}"))?;
        if deposits.len() > MAX_PROPOSED_DEPOSITS || withdrawals.len() > MAX_PROPOSED_WITHDRAWALS {
            return Err(format!(
                "the proposal names {} deposits and {} withdrawals; at most {MAX_PROPOSED_DEPOSITS} and {MAX_PROPOSED_WITHDRAWALS}",
                deposits.len(),
                withdrawals.len()
            ));
        }
        let mut seen = BTreeSet::new();
        let mut outpoints = Vec::with_capacity(deposits.len());
        for d in deposits {
            let op = OutPoint::from_str(d)
                .map_err(|e| format!("the deposit {d:?} is not txid:vout: {e}"))?;
            if !seen.insert(op) {
                return Err(format!("the deposit {op} is named twice"));
            }
            outpoints.push(op);
        }
        let ids: BTreeSet<u64> = withdrawals.iter().copied().collect();
        if ids.len() != withdrawals.len() {
            return Err("a withdrawal is named twice".into());
        }
        Ok(Named {
            peg,
            deposits: outpoints,
            withdrawals: ids.into_iter().collect(),
            fee_rate: FeeRate::from_sat_per_kwu(fee_rate_sat_per_kwu),
        })
    }
}

impl SweepSide {
    /// This signer's own fee rate: `estimatesmartfee` at the configured target, clamped; the
    /// minimum when the node has no estimate (regtest, a fresh node).
    pub async fn own_fee_rate(&self) -> Result<FeeRate, String> {
        let estimate = self
            .bitcoin
            .estimate_smart_fee(self.settings.conf_target)
            .await
            .map_err(|e| format!("estimatesmartfee failed: {e}"))?;
        Ok(self
            .settings
            .clamp(estimate.unwrap_or(self.settings.min_fee_rate)))
    }

    pub fn params(&self, fee_rate: FeeRate, key: &AggregateKey) -> SweepParams {
        SweepParams::new(self.settings.magic, fee_rate, key.x_only())
    }

    /// The package of `deposits` and `withdrawals` on `peg` at `fee_rate`, to `key`.
    pub fn package(
        &self,
        peg: &FoundPeg,
        deposits: &[DepositRequest],
        withdrawals: &[SweepWithdrawal],
        fee_rate: FeeRate,
        key: &AggregateKey,
    ) -> SweepPackage {
        let peg = PegUtxo {
            outpoint: peg.outpoint,
            amount: peg.amount(),
            key: peg.key.x_only(),
        };
        let deposits: Vec<SweepDeposit> = deposits.iter().map(SweepDeposit::from).collect();
        sweep::package(&peg, &deposits, withdrawals, &self.params(fee_rate, key))
    }

    /// Rebuilds a coordinator's sweep proposal from this signer's own view on `tip`: the peg
    /// UTXO its observer found, requests it holds and itself voted to accept, a fee rate within
    /// its band, and a package that leaves nothing named out. The package is what it may sign.
    pub async fn rebuild(
        &self,
        storage: &dyn Storage,
        me: &PublicKey,
        tip: &BitcoinBlock,
        key: &AggregateKey,
        named: &Named,
        deposit_window: u32,
    ) -> Result<SweepPackage, String> {
        let keys = verified_keys(storage).await?;
        let peg = peg_utxo::find(storage, &tip.hash, &keys)
            .await
            .map_err(|e| format!("cannot read this signer's peg UTXO: {e}"))?
            .ok_or_else(|| {
                format!(
                    "the proposal spends {}; this signer knows of no peg UTXO on tip {}",
                    named.peg, tip.hash
                )
            })?;
        if peg.outpoint != named.peg {
            return Err(format!(
                "the proposal spends {} as the peg UTXO; this signer's peg UTXO is {}",
                named.peg, peg.outpoint
            ));
        }
        if peg.key != *key {
            return Err(format!(
                "the peg UTXO {} is locked to key {}, not the current key {}; moving it to a new key is not served by this version",
                peg.outpoint, peg.key, key
            ));
        }
        let own = self.own_fee_rate().await?;
        self.settings.check_fee_rate(own, named.fee_rate)?;

        let pending = storage
            .get_pending_deposit_requests(&tip.hash, deposit_window)
            .await
            .map_err(|e| format!("cannot read pending deposits: {e}"))?;
        let mut deposits = Vec::with_capacity(named.deposits.len());
        for op in &named.deposits {
            let Some(request) = pending.iter().find(|d| d.outpoint == *op) else {
                return Err(format!(
                    "deposit {op} is not a pending deposit on this signer's chain (unknown, unconfirmed, or already swept)"
                ));
            };
            let votes = storage
                .get_deposit_votes(op)
                .await
                .map_err(|e| format!("cannot read the votes on {op}: {e}"))?;
            let accepted = votes.iter().any(|v| v.signer == *me && v.can_accept);
            if !accepted {
                return Err(format!(
                    "deposit {op} is not one this signer voted to accept"
                ));
            }
            if request.signers_public_key != *key {
                return Err(format!(
                    "deposit {op} is locked to key {}, not the current key {key}",
                    request.signers_public_key
                ));
            }
            deposits.push(request.clone());
        }
        if !named.withdrawals.is_empty() {
            return Err("withdrawal payouts are not served by this signer version".into());
        }
        let package = self.package(&peg, &deposits, &[], named.fee_rate, key);
        if let Some(left) = package.excluded.first() {
            return Err(format!(
                "the proposal names {:?}, which this signer's package leaves out: {}",
                left.request, left.reason
            ));
        }
        if package.txs.is_empty() {
            return Err("the proposal makes no transaction".into());
        }
        Ok(package)
    }
}

/// The aggregate keys of this signer's verified DKGs, newest first.
pub async fn verified_keys(storage: &dyn Storage) -> Result<Vec<AggregateKey>, String> {
    let shares = storage
        .get_all_dkg_shares()
        .await
        .map_err(|e| format!("cannot read the DKG shares: {e}"))?;
    let mut keys: Vec<(std::time::SystemTime, AggregateKey)> = shares
        .iter()
        .filter(|s| s.shares.status == crate::storage::DkgSharesStatus::Verified)
        .map(|s| (s.created_at, s.shares.aggregate_key))
        .collect();
    keys.sort_by_key(|k| std::cmp::Reverse(k.0));
    Ok(keys.into_iter().map(|(_, k)| k).collect())
}

/// A confirmed sweep and what it means on Stacks.
#[derive(Clone, Debug)]
pub struct ConfirmedSweep {
    pub txid: Txid,
    pub block: BitcoinBlock,
    pub tx: Transaction,
}

/// Every deposit swept by a sweep confirmed on the chain ending at `tip` whose completed-deposit
/// event this signer has not seen, as the complete-deposit call it must become: the amount
/// minted is the deposit less the fee the sweep assessed to it, recomputed from the sweep itself.
pub async fn pending_completions(
    storage: &dyn Storage,
    tip: &BitcoinBlock,
    magic: [u8; 2],
) -> Result<Vec<CompleteDeposit>, String> {
    let txs = storage
        .get_signer_transactions(&tip.hash, COMPLETION_WINDOW)
        .await
        .map_err(|e| format!("cannot read the signers' transactions: {e}"))?;
    let mut out = Vec::new();
    for (observed, block) in txs {
        if observed.kind != ObservedKind::Sweep {
            continue;
        }
        let sweep = ConfirmedSweep {
            txid: observed.txid(),
            block,
            tx: observed.tx,
        };
        out.extend(completions_of(storage, &sweep, magic, true).await?);
    }
    Ok(out)
}

/// The complete-deposit calls of one confirmed sweep (only the ones still to make when
/// `only_pending`).
pub async fn completions_of(
    storage: &dyn Storage,
    sweep: &ConfirmedSweep,
    magic: [u8; 2],
    only_pending: bool,
) -> Result<Vec<CompleteDeposit>, String> {
    let parsed = ParsedSweep::parse(&sweep.tx, magic)
        .map_err(|e| format!("sweep {} does not read as a sweep: {e}", sweep.txid))?;
    let mut deposits = Vec::new();
    for op in &parsed.deposits {
        // An input this signer never accepted as a deposit has nothing to complete.
        if let Some(request) = storage
            .get_deposit_request(op)
            .await
            .map_err(|e| format!("cannot read deposit {op}: {e}"))?
        {
            deposits.push(request);
        }
    }
    if deposits.is_empty() {
        return Ok(Vec::new());
    }
    let sweep_deposits: Vec<SweepDeposit> = deposits.iter().map(SweepDeposit::from).collect();
    // The fee is what went in less what came out: the spent peg UTXO's value is in the
    // transaction that made it, which this signer's observer stored.
    let peg_in = storage
        .get_observed_transactions(&[parsed.peg_in.txid])
        .await
        .map_err(|e| format!("cannot read the peg UTXO sweep {} spent: {e}", sweep.txid))?
        .into_iter()
        .next()
        .and_then(|o| {
            o.tx.output
                .get(parsed.peg_in.vout as usize)
                .map(|o| o.value)
        })
        .ok_or_else(|| {
            format!(
                "sweep {} spends the peg UTXO {}, which this signer did not observe",
                sweep.txid, parsed.peg_in
            )
        })?;
    let split = sweep::assessed_fees(&sweep.tx, peg_in, &sweep_deposits, &[])
        .map_err(|e| format!("cannot split sweep {}'s fee: {e}", sweep.txid))?;
    let mut out = Vec::new();
    for request in deposits {
        if only_pending
            && observer::completed_deposit_event(storage, &request.outpoint)
                .await
                .map_err(|e| e.to_string())?
                .is_some()
        {
            continue;
        }
        let fee = split.deposit(&request.outpoint).ok_or_else(|| {
            format!(
                "sweep {} assesses no fee to {}",
                sweep.txid, request.outpoint
            )
        })?;
        let minted = request.amount.checked_sub(fee).unwrap_or(Amount::ZERO);
        let recipient = Principal::from_str(&request.recipient).map_err(|e| {
            format!(
                "deposit {}'s recipient {} does not read: {e}",
                request.outpoint, request.recipient
            )
        })?;
        out.push(CompleteDeposit {
            outpoint: request.outpoint,
            amount: minted.to_sat(),
            recipient,
            burn_hash: sweep.block.hash,
            burn_height: sweep.block.height,
            sweep_txid: sweep.txid,
        });
    }
    Ok(out)
}

/// The confirmed sweep (on the chain ending at `tip`) that spent `outpoint`, if any.
pub async fn sweep_spending(
    storage: &dyn Storage,
    tip: &BitcoinBlock,
    outpoint: &OutPoint,
) -> Result<Option<ConfirmedSweep>, String> {
    let txs = storage
        .get_signer_transactions(&tip.hash, COMPLETION_WINDOW)
        .await
        .map_err(|e| format!("cannot read the signers' transactions: {e}"))?;
    Ok(txs
        .into_iter()
        .filter(|(o, _)| o.kind == ObservedKind::Sweep)
        .find(|(o, _)| o.tx.input.iter().any(|i| i.previous_output == *outpoint))
        .map(|(o, block)| ConfirmedSweep {
            txid: o.txid(),
            block,
            tx: o.tx,
        }))
}
