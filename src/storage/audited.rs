//! Custody operations that use a private key, each appended to the audit log *before* it runs:
//! if the log cannot be written, the key is not used ("no record, no signature"). A crash between
//! the append and the operation leaves a record of an attempt, never an unrecorded signature.

use std::{fmt, sync::Arc};

use sbtc_custody::{
    Custody, KeyLabel, P256Signature, RecoverableSignature, SealedBlob, SecretBytes,
};
use sha2::{Digest, Sha256};

use super::{AuditEntry, AuditRecord, Storage};

/// Why an audited operation failed.
#[derive(Debug)]
pub enum AuditedError {
    /// The audit record could not be written; the key was not used.
    Audit(super::Error),
    /// The record was written; the custody backend then failed.
    Custody(sbtc_custody::Error),
}

impl fmt::Display for AuditedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuditedError::Audit(e) => {
                write!(
                    f,
                    "the key was not used because the audit log could not be written: {e}"
                )
            }
            AuditedError::Custody(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for AuditedError {}

/// A custody backend whose private-key operations are all recorded in the audit log.
#[derive(Clone)]
pub struct AuditedCustody {
    custody: Arc<dyn Custody>,
    store: Arc<dyn Storage>,
}

impl AuditedCustody {
    pub fn new(custody: Arc<dyn Custody>, store: Arc<dyn Storage>) -> Self {
        AuditedCustody { custody, store }
    }

    /// The backend itself, for operations that use no private key (info, list, health).
    pub fn custody(&self) -> &Arc<dyn Custody> {
        &self.custody
    }

    async fn record(
        &self,
        label: &KeyLabel,
        operation: &str,
        message: Vec<u8>,
        reason: &str,
    ) -> Result<AuditEntry, AuditedError> {
        self.store
            .append_audit(&AuditRecord::new(
                label.as_str(),
                operation,
                message,
                reason,
            ))
            .await
            .map_err(AuditedError::Audit)
    }

    /// Signs `digest` with a secp256k1 key; the audit record holds the digest and `reason`.
    pub async fn sign_secp256k1_prehash(
        &self,
        label: &KeyLabel,
        digest: &[u8; 32],
        reason: &str,
    ) -> Result<RecoverableSignature, AuditedError> {
        self.record(label, "sign_secp256k1_prehash", digest.to_vec(), reason)
            .await?;
        self.custody
            .sign_secp256k1_prehash(label, digest)
            .await
            .map_err(AuditedError::Custody)
    }

    /// Signs `digest` with a P-256 key (TLS); the audit record holds the digest and `reason`.
    pub async fn sign_p256_prehash(
        &self,
        label: &KeyLabel,
        digest: &[u8; 32],
        reason: &str,
    ) -> Result<P256Signature, AuditedError> {
        self.record(label, "sign_p256_prehash", digest.to_vec(), reason)
            .await?;
        self.custody
            .sign_p256_prehash(label, digest)
            .await
            .map_err(AuditedError::Custody)
    }

    /// Seals `plaintext`; the record holds SHA-256 of the AAD (never the plaintext).
    pub async fn seal(
        &self,
        label: &KeyLabel,
        plaintext: &[u8],
        aad: &[u8],
        reason: &str,
    ) -> Result<SealedBlob, AuditedError> {
        self.record(label, "seal", Sha256::digest(aad).to_vec(), reason)
            .await?;
        self.custody
            .seal(label, plaintext, aad)
            .await
            .map_err(AuditedError::Custody)
    }

    /// Unseals `sealed`; the record holds SHA-256 of the sealed blob.
    pub async fn unseal(
        &self,
        label: &KeyLabel,
        sealed: &SealedBlob,
        aad: &[u8],
        reason: &str,
    ) -> Result<SecretBytes, AuditedError> {
        self.record(
            label,
            "unseal",
            Sha256::digest(sealed.as_bytes()).to_vec(),
            reason,
        )
        .await?;
        self.custody
            .unseal(label, sealed, aad)
            .await
            .map_err(AuditedError::Custody)
    }
}
