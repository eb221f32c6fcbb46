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
    /// Why verification failed, if it did.
    pub detail: Option<String>,
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
