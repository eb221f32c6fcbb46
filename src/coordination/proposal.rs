//! What a coordinator proposes in a tenure and what each signer answers, as the payloads of
//! signed statements (`Proposal` and `Ack`). JSON with every field named, versioned by its
//! `type`, bounded by the peer links' message size and refused whole when any field does not
//! read: a signer never acts on half a proposal.
//!
//! A proposal names what to do, never why: every signer rebuilds the transaction from its own
//! view of the chains and compares (a Stacks call's bytes go through `contracts::check`).

use bitcoin::BlockHash;
use serde::{Deserialize, Serialize};

/// Most bytes a proposal or an ack may take (the peer links bound messages too).
pub const MAX_PAYLOAD_BYTES: usize = 8 << 20;

/// A coordinator's proposal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Proposal {
    /// Sign this unsigned Stacks transaction from the signers' multisig account.
    StacksCall {
        /// The Bitcoin tip the coordinator built it on (display hex).
        tip: String,
        /// The SIP-005 transaction, hex, with empty signature fields.
        tx: String,
    },
    /// Sign the sweep package made of exactly these requests on this tip.
    Sweep {
        tip: String,
        /// The peg UTXO the package spends (`txid:vout`).
        peg: String,
        /// The deposits it sweeps (`txid:vout`), sorted.
        deposits: Vec<String>,
        /// The withdrawal requests it pays, sorted.
        withdrawals: Vec<u64>,
        /// The fee rate, in sat per 1,000 weight units.
        fee_rate_sat_per_kwu: u64,
    },
}

/// A signer's answer to a proposal, in an `Ack` statement on the proposal's round.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Answer {
    /// The signer's recoverable signature (hex, 65 bytes) over the Stacks transaction's
    /// presign sighash.
    StacksSignature { txid: String, signature: String },
    /// The signer rebuilt the same sweep package (these txids, in order), recorded it in its
    /// no-equivocation guard, and will sign exactly its sighashes.
    SweepAccepted { txids: Vec<String> },
    /// The signer will not sign, and why.
    Refused { reason: String },
}

/// Why a payload was dropped.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("payload of {0} bytes is over the {MAX_PAYLOAD_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("payload does not read: {0}")]
    Malformed(String),
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, PayloadError> {
    if bytes.len() > MAX_PAYLOAD_BYTES {
        return Err(PayloadError::TooLarge(bytes.len()));
    }
    serde_json::from_slice(bytes).map_err(|e| PayloadError::Malformed(e.to_string()))
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Strings, integers and vectors of them: serializing cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

impl Proposal {
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(self)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Proposal, PayloadError> {
        decode(bytes)
    }

    /// The tip the proposal was built on, or None when it does not read as a block hash.
    pub fn tip(&self) -> Option<BlockHash> {
        match self {
            Proposal::StacksCall { tip, .. } | Proposal::Sweep { tip, .. } => tip.parse().ok(),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Proposal::StacksCall { .. } => "stacks-call",
            Proposal::Sweep { .. } => "sweep",
        }
    }
}

impl Answer {
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(self)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Answer, PayloadError> {
        decode(bytes)
    }
}

/// A proposal's round id: the hash of its payload, so an ack names exactly what it answers.
pub fn round_id(payload: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::new()
        .chain_update(b"sbtc-hsm-signer/proposal/v1")
        .chain_update(payload)
        .finalize()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proposals_and_answers_round_trip_and_refuse_unknown_fields() {
        let p = Proposal::Sweep {
            tip: "00".repeat(32),
            peg: format!("{}:0", "11".repeat(32)),
            deposits: vec![format!("{}:1", "22".repeat(32))],
            withdrawals: vec![3, 9],
            fee_rate_sat_per_kwu: 2_500,
        };
        let bytes = p.to_bytes();
        assert_eq!(Proposal::from_bytes(&bytes).unwrap(), p);
        assert!(p.tip().is_some());
        let a = Answer::Refused {
            reason: "fee rate too high".into(),
        };
        assert_eq!(Answer::from_bytes(&a.to_bytes()).unwrap(), a);
        let extra = br#"{"type":"refused","reason":"x","sneaky":1}"#;
        assert!(matches!(
            Answer::from_bytes(extra),
            Err(PayloadError::Malformed(_))
        ));
        assert!(matches!(
            Proposal::from_bytes(&vec![b' '; MAX_PAYLOAD_BYTES + 1]),
            Err(PayloadError::TooLarge(_))
        ));
        assert_ne!(round_id(b"a"), round_id(b"b"));
    }
}
