//! The coordinator's verdict on a DKG, sent to every signer as a signed Decision statement
//! (protobuf, `sbtc.rounds.v1.DkgDecision`; the statement signature covers these bytes).

use bytes::Bytes;

use super::wire::{self, WireError};

/// What the coordinator's verification of a DKG found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DkgDecision {
    /// The aggregate key, hex of the 33-byte compressed key.
    pub aggregate_key: String,
    pub verified: bool,
    /// Why verification failed, if it did, or who was left out of it.
    pub detail: Option<String>,
    /// The BIP-340 signature of the mock key spend (64 bytes) when `verified`: every signer runs
    /// Bitcoin Core's script verifier over it before it records the key as verified.
    pub signature: Option<Vec<u8>>,
}

impl DkgDecision {
    /// The statement payload.
    pub fn to_bytes(&self) -> Result<Bytes, WireError> {
        wire::encode_dkg_decision(self)
    }

    /// A received statement payload, checked.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, WireError> {
        wire::decode_dkg_decision(bytes)
    }
}

/// What a signer makes of the coordinator's decision, after checking it itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecisionVerdict {
    /// Verified, and the signature passed this signer's own run of the script verifier.
    Verified,
    /// The coordinator found the DKG failed (a signer may always record that).
    Failed(Option<String>),
    /// "Verified" without a signature that passes the script verifier here: not recorded.
    Forged(String),
}

impl DkgDecision {
    /// Never trusts the coordinator: a "verified" decision counts only if the signature it
    /// carries passes Bitcoin Core's script verifier over the mock spend this signer rebuilds
    /// from its own DKG id and aggregate key.
    pub fn judge(
        &self,
        dkg_id: crate::signing::DkgId,
        aggregate_key: &secp256k1::PublicKey,
    ) -> DecisionVerdict {
        use crate::signing::{check_verification, DkgVerification};
        if !self.verified {
            return DecisionVerdict::Failed(self.detail.clone());
        }
        match check_verification(dkg_id, aggregate_key, self.signature.as_deref()) {
            DkgVerification::Verified => DecisionVerdict::Verified,
            DkgVerification::Failed(why) => DecisionVerdict::Forged(why),
        }
    }
}
