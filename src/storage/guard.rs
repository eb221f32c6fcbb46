//! The no-equivocation guard: before any signature share for a transaction leaves the node, the
//! store records "this signer signs the spend of outpoint O by transaction T". A later,
//! different transaction spending O is refused, unless it is a fee bump (RBF) of T: it pays the
//! same requests to the same outputs, so its payment fingerprint is the same.

use bitcoin::{hashes::Hash as _, OutPoint, Txid};
use sha2::{Digest, Sha256};

use super::model::{PaymentFingerprint, WithdrawalPayment};

/// What a signer is about to sign.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpendIntent {
    pub txid: Txid,
    /// Every input of the transaction (the signers' UTXO and the deposits).
    pub spends: Vec<OutPoint>,
    /// The deposit requests the transaction sweeps.
    pub deposits: Vec<OutPoint>,
    /// The withdrawals it pays, with their outputs.
    pub withdrawals: Vec<WithdrawalPayment>,
}

impl SpendIntent {
    /// SHA-256 over the swept deposits and the withdrawal payments, each sorted, so input and
    /// output order do not matter. The signers' change output is left out on purpose: a fee bump
    /// lowers it and nothing else.
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

    /// Refuses an intent that spends nothing: there would be nothing to guard.
    pub(crate) fn validate(&self) -> super::Result<()> {
        if self.spends.is_empty() {
            return Err(super::Error::new(
                super::ErrorKind::InvalidInput,
                "guard_spend",
                format!("spend intent for transaction {} lists no inputs", self.txid),
            ));
        }
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

/// Why a spend was allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Approval {
    /// No decision existed for these outpoints; this one is now recorded.
    First,
    /// The same transaction was approved before (a retry or a second signing round).
    Repeat,
    /// A different transaction that pays the same requests to the same outputs: a fee bump.
    FeeBump { original: Txid },
}

/// The guard's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuardDecision {
    Approved(Approval),
    /// `outpoint` is already promised to `decided_txid`, which pays different requests or outputs.
    /// Nothing was recorded for any input of the refused transaction.
    Refused {
        outpoint: OutPoint,
        decided_txid: Txid,
    },
}

impl GuardDecision {
    pub fn is_approved(&self) -> bool {
        matches!(self, GuardDecision::Approved(_))
    }
}

/// The recorded decision for one outpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpendDecision {
    pub outpoint: OutPoint,
    /// The first transaction approved to spend it.
    pub txid: Txid,
    pub fingerprint: PaymentFingerprint,
    /// Every approved transaction for this outpoint (the first one and its fee bumps), in order.
    pub approved_txids: Vec<Txid>,
}

/// The decision rule both stores share. `existing` is the recorded decision for one input, if any.
pub(crate) enum Check {
    Free,
    Same,
    FeeBump(Txid),
    Conflict(Txid),
}

pub(crate) fn check(
    intent_txid: &Txid,
    fingerprint: &PaymentFingerprint,
    existing_txid: &Txid,
    existing_fingerprint: &PaymentFingerprint,
    already_approved: bool,
) -> Check {
    if existing_txid == intent_txid || already_approved {
        Check::Same
    } else if existing_fingerprint == fingerprint {
        Check::FeeBump(*existing_txid)
    } else {
        Check::Conflict(*existing_txid)
    }
}

/// Combines the per-input checks of one intent into the answer.
pub(crate) fn combine(outcomes: &[(OutPoint, Check)]) -> GuardDecision {
    let mut approval = Approval::First;
    let mut any_free = false;
    for (outpoint, c) in outcomes {
        match c {
            Check::Conflict(decided) => {
                return GuardDecision::Refused {
                    outpoint: *outpoint,
                    decided_txid: *decided,
                }
            }
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
    use bitcoin::{Amount, ScriptBuf};

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
        };
        assert_eq!(
            intent.fingerprint().to_string(),
            "145346a1459353f3913ca26e640661ad018285063b377241b49a2041051ec782"
        );
    }
}
