//! The no-equivocation guard: before any signature share for a transaction leaves the node, the
//! store records "this signer signs the spend of outpoint O by transaction T". A later,
//! different transaction spending O is refused unless it is a fee bump (RBF) of T that changes
//! nothing but the fee: it sweeps the same deposits, pays the same withdrawals (same recipients,
//! same amounts), sends its change to the same script as T, and pays strictly more fee than every
//! transaction approved for O so far. Every spend, the first included, must also stay within the
//! store's [`GuardPolicy`] (a most fee in satoshis and a most fee rate), so a run of bumps cannot
//! drain the peg into fees.

use std::fmt;

use bitcoin::{hashes::Hash as _, Amount, FeeRate, OutPoint, ScriptBuf, TxOut, Txid, Weight};
use sha2::{Digest, Sha256};

use super::model::{PaymentFingerprint, WithdrawalPayment};

/// What a signer is about to sign. The caller builds it from the transaction itself and its own
/// view of the inputs: every output is either a withdrawal payment or a change output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpendIntent {
    pub txid: Txid,
    /// Every input of the transaction (the signers' UTXO and the deposits).
    pub spends: Vec<OutPoint>,
    /// The deposit requests the transaction sweeps.
    pub deposits: Vec<OutPoint>,
    /// The withdrawals it pays, with their outputs.
    pub withdrawals: Vec<WithdrawalPayment>,
    /// The signers' own outputs (the new peg UTXO). Their scripts are recorded with the first
    /// approval; a fee bump must send its change to exactly the same scripts.
    pub change: Vec<TxOut>,
    /// What the transaction pays in fees: its inputs' value minus its outputs' value.
    pub fee: Amount,
    /// The transaction's weight, for the fee-rate cap.
    pub weight: Weight,
}

impl SpendIntent {
    /// SHA-256 over the swept deposits and the withdrawal payments, each sorted, so input and
    /// output order do not matter. The signers' change output is not in it (a fee bump lowers its
    /// value); its script is recorded and compared on its own (see [`SpendIntent::change_scripts`]).
    pub fn fingerprint(&self) -> PaymentFingerprint {
        let mut deposits = self.deposits.clone();
        deposits.sort();
        deposits.dedup();
        let mut withdrawals = self.withdrawals.clone();
        withdrawals.sort();
        withdrawals.dedup();
        let mut h = Sha256::new();
        h.update(b"sbtc-hsm-signer/payment-fingerprint/v1");
        h.update((deposits.len() as u64).to_be_bytes());
        for d in &deposits {
            h.update(d.txid.to_byte_array());
            h.update(d.vout.to_be_bytes());
        }
        h.update((withdrawals.len() as u64).to_be_bytes());
        for w in &withdrawals {
            h.update(w.request_id.to_be_bytes());
            h.update((w.recipient.len() as u64).to_be_bytes());
            h.update(w.recipient.as_bytes());
            h.update(w.amount.to_sat().to_be_bytes());
        }
        PaymentFingerprint(h.finalize().into())
    }

    /// The change outputs' scripts, sorted and without duplicates: what the guard records and
    /// compares.
    pub fn change_scripts(&self) -> Vec<ScriptBuf> {
        let mut scripts: Vec<ScriptBuf> = self
            .change
            .iter()
            .map(|o| o.script_pubkey.clone())
            .collect();
        scripts.sort();
        scripts.dedup();
        scripts
    }

    /// Refuses an intent that spends nothing (there would be nothing to guard) or that has no
    /// weight (its fee rate would be meaningless).
    pub(crate) fn validate(&self) -> super::Result<()> {
        let invalid = |detail: String| {
            Err(super::Error::new(
                super::ErrorKind::InvalidInput,
                "guard_spend",
                detail,
            ))
        };
        if self.spends.is_empty() {
            return invalid(format!(
                "spend intent for transaction {} lists no inputs",
                self.txid
            ));
        }
        if self.weight == Weight::ZERO {
            return invalid(format!(
                "spend intent for transaction {} has weight 0; pass the transaction's weight",
                self.txid
            ));
        }
        super::model::storable_sats(self.fee, "fee", "guard_spend")?;
        Ok(())
    }

    /// The inputs, sorted and without duplicates: rows are locked in this order, so two
    /// concurrent decisions never deadlock.
    pub fn sorted_spends(&self) -> Vec<OutPoint> {
        let mut spends = self.spends.clone();
        spends.sort();
        spends.dedup();
        spends
    }
}

/// The most fee the guard lets any spend pay: `[storage] guard_max_fee_sats` and
/// `guard_max_fee_rate_sat_per_vb`. Both limits apply; the defaults are 0.01 BTC and 500 sat/vB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuardPolicy {
    pub max_fee: Amount,
    pub max_fee_rate: FeeRate,
}

impl GuardPolicy {
    /// 0.01 BTC: a 25-deposit sweep (about 3,500 vB) at 285 sat/vB.
    pub const DEFAULT_MAX_FEE: Amount = Amount::from_sat(1_000_000);
    /// 500 sat/vB: above what the mempool asked for in every fee spike so far but a few blocks.
    pub const DEFAULT_MAX_FEE_RATE_SAT_PER_VB: u32 = 500;

    /// Refuses a fee above either limit.
    fn check(&self, intent: &SpendIntent) -> Option<Refusal> {
        // Rounded up, so a fee rate exactly at the limit passes.
        let by_rate = self
            .max_fee_rate
            .fee_wu(intent.weight)
            .unwrap_or(Amount::MAX);
        if intent.fee > self.max_fee || intent.fee > by_rate {
            return Some(Refusal::FeeAboveCap {
                txid: intent.txid,
                fee: intent.fee,
                vsize: intent.weight.to_vbytes_ceil(),
                max_fee: self.max_fee,
                max_fee_rate_sat_per_vb: self.max_fee_rate.to_sat_per_vb_floor(),
            });
        }
        None
    }
}

impl Default for GuardPolicy {
    fn default() -> Self {
        GuardPolicy {
            max_fee: Self::DEFAULT_MAX_FEE,
            max_fee_rate: FeeRate::from_sat_per_vb_u32(Self::DEFAULT_MAX_FEE_RATE_SAT_PER_VB),
        }
    }
}

impl GuardPolicy {
    /// The policy `[storage] guard_max_fee_sats` and `guard_max_fee_rate_sat_per_vb` give
    /// (None: the default).
    pub fn from_config(
        max_fee_sats: Option<u64>,
        max_fee_rate_sat_per_vb: Option<u64>,
    ) -> super::Result<Self> {
        let bad = |detail: &str| {
            Err(super::Error::new(
                super::ErrorKind::Config,
                "open",
                detail.to_string(),
            ))
        };
        let mut p = GuardPolicy::default();
        if let Some(sats) = max_fee_sats {
            if sats == 0 || i64::try_from(sats).is_err() {
                return bad(
                    "[storage] guard_max_fee_sats must be at least 1 and at most \
                     9223372036854775807 satoshis",
                );
            }
            p.max_fee = Amount::from_sat(sats);
        }
        if let Some(rate) = max_fee_rate_sat_per_vb {
            match FeeRate::from_sat_per_vb(rate) {
                Some(r) if rate > 0 => p.max_fee_rate = r,
                _ => {
                    return bad(
                        "[storage] guard_max_fee_rate_sat_per_vb must be a positive number of \
                         sat/vB (at most 73786976294838206)",
                    )
                }
            }
        }
        Ok(p)
    }
}

/// Why a spend was allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Approval {
    /// No decision existed for these outpoints; this one is now recorded.
    First,
    /// The same transaction was approved before (a retry or a second signing round).
    Repeat,
    /// A different transaction that changes only the fee, and raises it: a fee bump.
    FeeBump { original: Txid },
}

/// Why a spend was refused; its [`Display`](fmt::Display) is what the signer tells the coordinator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The fee is above the configured cap (amount or rate). Checked before any record.
    FeeAboveCap {
        txid: Txid,
        fee: Amount,
        vsize: u64,
        max_fee: Amount,
        max_fee_rate_sat_per_vb: u64,
    },
    /// `outpoint` is promised to `decided_txid`, which sweeps other deposits or pays other
    /// withdrawals (one dropped, added, or with another recipient or amount).
    PayoutsChanged {
        outpoint: OutPoint,
        decided_txid: Txid,
    },
    /// The change goes to other scripts than those of `decided_txid`.
    ForeignChange {
        outpoint: OutPoint,
        decided_txid: Txid,
        recorded: Vec<ScriptBuf>,
        proposed: Vec<ScriptBuf>,
    },
    /// A bump must pay strictly more than every spend of `outpoint` approved so far.
    FeeNotRaised {
        outpoint: OutPoint,
        decided_txid: Txid,
        fee: Amount,
        highest_approved_fee: Amount,
    },
    /// `outpoint` was decided by a release before the whole-transaction guard (schema version 3
    /// or older): no change script or fee was recorded, so no bump can be checked against it.
    DecidedBeforeUpgrade {
        outpoint: OutPoint,
        decided_txid: Txid,
    },
}

impl Refusal {
    /// A short, stable name for metrics and the coordinator.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::FeeAboveCap { .. } => "fee_above_cap",
            Refusal::PayoutsChanged { .. } => "payouts_changed",
            Refusal::ForeignChange { .. } => "foreign_change_script",
            Refusal::FeeNotRaised { .. } => "fee_not_raised",
            Refusal::DecidedBeforeUpgrade { .. } => "decided_before_upgrade",
        }
    }

    /// The guarded outpoint the refusal is about (None for the fee cap, which is about the
    /// transaction as a whole).
    pub fn outpoint(&self) -> Option<OutPoint> {
        match self {
            Refusal::FeeAboveCap { .. } => None,
            Refusal::PayoutsChanged { outpoint, .. }
            | Refusal::ForeignChange { outpoint, .. }
            | Refusal::FeeNotRaised { outpoint, .. }
            | Refusal::DecidedBeforeUpgrade { outpoint, .. } => Some(*outpoint),
        }
    }

    /// The transaction `outpoint` is promised to, if the refusal is about a recorded decision.
    pub fn decided_txid(&self) -> Option<Txid> {
        match self {
            Refusal::FeeAboveCap { .. } => None,
            Refusal::PayoutsChanged { decided_txid, .. }
            | Refusal::ForeignChange { decided_txid, .. }
            | Refusal::FeeNotRaised { decided_txid, .. }
            | Refusal::DecidedBeforeUpgrade { decided_txid, .. } => Some(*decided_txid),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::FeeAboveCap { txid, fee, vsize, max_fee, max_fee_rate_sat_per_vb } => write!(
                f,
                "fee above cap: transaction {txid} pays {} sat ({vsize} vB), above this signer's \
                 limit of {} sat or {max_fee_rate_sat_per_vb} sat/vB ([storage] guard_max_fee_sats, \
                 guard_max_fee_rate_sat_per_vb)",
                fee.to_sat(),
                max_fee.to_sat()
            ),
            Refusal::PayoutsChanged { outpoint, decided_txid } => write!(
                f,
                "payouts changed: {outpoint} is promised to transaction {decided_txid}, which \
                 sweeps other deposits or pays other withdrawals (a payout dropped, added or \
                 changed); a fee bump may change only the fee"
            ),
            Refusal::ForeignChange { outpoint, decided_txid, recorded, proposed } => write!(
                f,
                "foreign change script: {outpoint} is promised to transaction {decided_txid}, \
                 whose change goes to [{}], but this one sends change to [{}]",
                hex_list(recorded),
                hex_list(proposed)
            ),
            Refusal::FeeNotRaised { outpoint, decided_txid, fee, highest_approved_fee } => write!(
                f,
                "fee not raised: {outpoint} is promised to transaction {decided_txid}; a bump \
                 must pay more than {} sat, the highest fee approved for it, but pays {} sat",
                highest_approved_fee.to_sat(),
                fee.to_sat()
            ),
            Refusal::DecidedBeforeUpgrade { outpoint, decided_txid } => write!(
                f,
                "decided before upgrade: {outpoint} is promised to transaction {decided_txid} by \
                 a release that recorded no change script or fee, so no fee bump of it can be \
                 checked; only {decided_txid} itself may be signed again"
            ),
        }
    }
}

fn hex_list(scripts: &[ScriptBuf]) -> String {
    scripts
        .iter()
        .map(|s| s.to_hex_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The guard's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuardDecision {
    Approved(Approval),
    /// Nothing was recorded for any input of the refused transaction.
    Refused(Refusal),
}

impl GuardDecision {
    pub fn is_approved(&self) -> bool {
        matches!(self, GuardDecision::Approved(_))
    }

    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            GuardDecision::Refused(r) => Some(r),
            GuardDecision::Approved(_) => None,
        }
    }
}

/// The recorded decision for one outpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpendDecision {
    pub outpoint: OutPoint,
    /// The first transaction approved to spend it.
    pub txid: Txid,
    pub fingerprint: PaymentFingerprint,
    /// The first transaction's change scripts (sorted); None for a decision recorded before
    /// schema version 4.
    pub change_scripts: Option<Vec<ScriptBuf>>,
    /// The fee of the latest approved transaction, the highest (each bump raises it); None if
    /// any approval was recorded before schema version 4.
    pub highest_fee: Option<Amount>,
    /// Every approved transaction for this outpoint (the first one and its fee bumps), in order.
    pub approved_txids: Vec<Txid>,
}

/// What a store holds for one outpoint, as [`check`] needs it.
pub(crate) struct Recorded<'a> {
    pub txid: Txid,
    pub fingerprint: PaymentFingerprint,
    pub change_scripts: Option<&'a [ScriptBuf]>,
    pub highest_fee: Option<Amount>,
    /// Whether the intent's own txid is among the approvals.
    pub already_approved: bool,
}

/// The decision rule both stores share, for one input.
pub(crate) enum Check {
    Free,
    Same,
    FeeBump(Txid),
    Conflict(Refusal),
}

/// What is compared, computed once per intent.
pub(crate) struct Proposal<'a> {
    pub intent: &'a SpendIntent,
    pub fingerprint: PaymentFingerprint,
    pub change_scripts: Vec<ScriptBuf>,
}

impl<'a> Proposal<'a> {
    pub fn new(intent: &'a SpendIntent) -> Self {
        Proposal {
            intent,
            fingerprint: intent.fingerprint(),
            change_scripts: intent.change_scripts(),
        }
    }

    /// The answer that needs no record: a fee above the cap.
    pub fn precheck(&self, policy: &GuardPolicy) -> Option<GuardDecision> {
        policy.check(self.intent).map(GuardDecision::Refused)
    }

    pub fn check(&self, outpoint: OutPoint, existing: &Recorded<'_>) -> Check {
        let decided_txid = existing.txid;
        if existing.txid == self.intent.txid || existing.already_approved {
            return Check::Same;
        }
        let (Some(recorded), Some(highest)) = (existing.change_scripts, existing.highest_fee)
        else {
            return Check::Conflict(Refusal::DecidedBeforeUpgrade {
                outpoint,
                decided_txid,
            });
        };
        if existing.fingerprint != self.fingerprint {
            return Check::Conflict(Refusal::PayoutsChanged {
                outpoint,
                decided_txid,
            });
        }
        if recorded != self.change_scripts.as_slice() {
            return Check::Conflict(Refusal::ForeignChange {
                outpoint,
                decided_txid,
                recorded: recorded.to_vec(),
                proposed: self.change_scripts.clone(),
            });
        }
        if self.intent.fee <= highest {
            return Check::Conflict(Refusal::FeeNotRaised {
                outpoint,
                decided_txid,
                fee: self.intent.fee,
                highest_approved_fee: highest,
            });
        }
        Check::FeeBump(decided_txid)
    }
}

/// Combines the per-input checks of one intent into the answer.
pub(crate) fn combine(outcomes: &[(OutPoint, Check)]) -> GuardDecision {
    let mut approval = Approval::First;
    let mut any_free = false;
    for (_, c) in outcomes {
        match c {
            Check::Conflict(refusal) => return GuardDecision::Refused(refusal.clone()),
            Check::FeeBump(original) => {
                approval = Approval::FeeBump {
                    original: *original,
                }
            }
            Check::Same => {
                if approval == Approval::First {
                    approval = Approval::Repeat
                }
            }
            Check::Free => any_free = true,
        }
    }
    if any_free && approval == Approval::Repeat {
        // Some inputs were new and the rest were approved for this same tx before.
        approval = Approval::First;
    }
    GuardDecision::Approved(approval)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(b: u8, vout: u32) -> OutPoint {
        OutPoint {
            txid: Txid::from_byte_array([b; 32]),
            vout,
        }
    }

    #[test]
    fn fingerprint_ignores_order_but_not_payments() {
        let w = |id, amt| WithdrawalPayment {
            request_id: id,
            recipient: ScriptBuf::from_bytes(vec![0x51, id as u8]),
            amount: Amount::from_sat(amt),
        };
        let a = SpendIntent {
            txid: Txid::from_byte_array([1; 32]),
            spends: vec![op(9, 0), op(2, 0)],
            deposits: vec![op(2, 0), op(3, 1)],
            withdrawals: vec![w(1, 1000), w(2, 2000)],
            change: Vec::new(),
            fee: Amount::from_sat(1000),
            weight: Weight::from_vb_unchecked(200),
        };
        let mut b = a.clone();
        b.txid = Txid::from_byte_array([2; 32]);
        b.deposits.reverse();
        b.withdrawals.reverse();
        assert_eq!(a.fingerprint(), b.fingerprint());
        let mut c = a.clone();
        c.withdrawals[1].amount = Amount::from_sat(1999);
        assert_ne!(a.fingerprint(), c.fingerprint());
        let mut d = a.clone();
        d.withdrawals[0].recipient = ScriptBuf::from_bytes(vec![0x52]);
        assert_ne!(a.fingerprint(), d.fingerprint());
        let mut e = a.clone();
        e.deposits.pop();
        assert_ne!(a.fingerprint(), e.fingerprint());
    }

    /// Fingerprints are stored (`spend_decisions.payment_fingerprint`) and compared with those
    /// of later fee bumps, so their encoding must never change: txids in internal byte order,
    /// big-endian integers, satoshis. (Computed independently of this code.)
    #[test]
    fn fingerprint_encoding_is_stable() {
        let w = |id, amt| WithdrawalPayment {
            request_id: id,
            recipient: ScriptBuf::from_bytes(vec![0x51, id as u8]),
            amount: Amount::from_sat(amt),
        };
        let intent = SpendIntent {
            txid: Txid::from_byte_array([1; 32]),
            spends: vec![op(9, 0)],
            deposits: vec![op(3, 1), op(2, 0)],
            withdrawals: vec![w(2, 2000), w(1, 1000)],
            change: vec![TxOut {
                value: Amount::from_sat(5),
                script_pubkey: ScriptBuf::from_bytes(vec![0x51]),
            }],
            fee: Amount::from_sat(1000),
            weight: Weight::from_vb_unchecked(200),
        };
        assert_eq!(
            intent.fingerprint().to_string(),
            "145346a1459353f3913ca26e640661ad018285063b377241b49a2041051ec782"
        );
    }
}
