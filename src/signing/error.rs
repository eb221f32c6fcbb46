//! What can go wrong in a DKG or signing round, in terms the operator (or the caller) can act on.

use super::SignerIndex;

/// A failed DKG, verification or signing round.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    /// The custody backend refused or failed (endorsing a transport key, sealing, unsealing).
    #[error("custody: {0}")]
    Custody(#[from] sbtc_custody::Error),
    /// The signer set or threshold is unusable.
    #[error("signer set: {0}")]
    SignerSet(String),
    /// The transport is closed or a message could not be delivered.
    #[error("transport: {0}")]
    Transport(String),
    /// Some signers did not answer in time.
    #[error("{phase}: timed out waiting for signers {missing:?}; check that they are running and linked")]
    Timeout {
        phase: &'static str,
        missing: Vec<SignerIndex>,
    },
    /// A peer sent something it must not send (bad endorsement, bad share, wrong sender id).
    #[error("signer {signer} misbehaved: {detail}")]
    Misbehaving { signer: SignerIndex, detail: String },
    /// The DKG round did not produce a key.
    #[error("DKG failed: {0}")]
    Dkg(String),
    /// Fewer signers than the threshold took part (or approved a sighash).
    #[error("not enough signers: {0}")]
    InsufficientSigners(String),
    /// The nonce ledger could not record or refused a round.
    #[error("nonce ledger: {0}")]
    Ledger(String),
    /// The unsealed key shares are malformed or belong to another DKG.
    #[error("key shares: {0}")]
    Shares(String),
    /// A request this signer refuses to serve (unknown round, unapproved sighash, reused round).
    #[error("refused: {0}")]
    Refused(String),
    /// A bug or an impossible state.
    #[error("internal: {0}")]
    Internal(String),
}

impl From<crate::keys::SignerSetError> for SigningError {
    fn from(e: crate::keys::SignerSetError) -> Self {
        SigningError::SignerSet(e.0)
    }
}

pub type Result<T, E = SigningError> = std::result::Result<T, E>;
