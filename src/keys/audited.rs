//! [`AuditedCustody`]: a `Custody` that appends one audit entry per private-key operation (which
//! key, which operation, what was signed or sealed, why, and the outcome) and releases the result
//! only once that entry is stored. If the log cannot be written, the caller gets an error and
//! never the signature or plaintext: a key use without a record never leaves the process.
//!
//! Why an operation happened comes from the caller through [`with_reason`], a task-local scope
//! (`round <id>: ...`, `dkg <id>: ...`, `tls handshake`), so the `Custody` trait stays as it is and
//! every layer above keeps calling it unchanged.
//!
//! The chain head is signed with the identity key by [`AuditedCustody::sign_head`]: the node calls
//! it at the end of each round and on shutdown (see [`super::audit`]).

use std::{
    collections::BTreeMap,
    future::Future,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use async_trait::async_trait;
use sbtc_custody::{
    BackendInfo, BackendKind, Custody, Error, ErrorKind, Health, KeyInfo, KeyKind, KeyLabel,
    Operation, P256Signature, PublicKey, RecoverableSignature, SealedBlob, SecretBytes,
};
use sha2::{Digest, Sha256};

use super::audit::{AuditEntry, AuditRecord, HeadSignature, HEAD_OPERATION};

tokio::task_local! {
    static REASON: String;
}

/// Runs `f` with `reason` as the audit reason of every custody operation it makes.
pub async fn with_reason<F: Future>(reason: impl Into<String>, f: F) -> F::Output {
    REASON.scope(reason.into(), f).await
}

fn current_reason() -> String {
    REASON
        .try_with(|r| r.clone())
        .unwrap_or_else(|_| "unattributed".into())
}

/// Where audit entries go: the signer's storage (PostgreSQL or in memory).
#[async_trait]
pub trait AuditSink: Send + Sync {
    /// Appends one record; the stored entry comes back.
    async fn append(&self, record: &AuditRecord) -> Result<AuditEntry, String>;
    /// The newest entry's `(seq, hash)`, None for an empty log.
    async fn head(&self) -> Result<Option<(u64, [u8; 32])>, String>;
}

/// How many private-key operations went through the wrapper, by operation name (the names used
/// in the audit log's `operation` column).
#[derive(Debug, Default)]
struct Counters {
    sign_secp256k1: AtomicU64,
    sign_p256: AtomicU64,
    seal: AtomicU64,
    unseal: AtomicU64,
    sign_head: AtomicU64,
}

/// A custody backend whose private-key operations are all recorded in the audit log.
#[derive(Clone)]
pub struct AuditedCustody {
    inner: Arc<dyn Custody>,
    sink: Option<Arc<dyn AuditSink>>,
    counters: Arc<Counters>,
}

impl AuditedCustody {
    /// Records every private-key operation in `sink`.
    pub fn new(inner: Arc<dyn Custody>, sink: Arc<dyn AuditSink>) -> Self {
        AuditedCustody {
            inner,
            sink: Some(sink),
            counters: Arc::default(),
        }
    }

    /// For CLI commands run without `[storage]`: operations are counted but there is no log to
    /// write them to. The command says so to the operator.
    pub fn unrecorded(inner: Arc<dyn Custody>) -> Self {
        AuditedCustody {
            inner,
            sink: None,
            counters: Arc::default(),
        }
    }

    /// Whether operations are written to an audit log.
    pub fn is_recorded(&self) -> bool {
        self.sink.is_some()
    }

    /// Private-key operations so far, by audit-log operation name (failed ones included).
    pub fn counts(&self) -> BTreeMap<&'static str, u64> {
        let c = &self.counters;
        [
            ("sign_secp256k1_prehash", &c.sign_secp256k1),
            ("sign_p256_prehash", &c.sign_p256),
            ("seal", &c.seal),
            ("unseal", &c.unseal),
            (HEAD_OPERATION, &c.sign_head),
        ]
        .into_iter()
        .map(|(k, v)| (k, v.load(Ordering::Relaxed)))
        .collect()
    }

    /// Appends the record of an operation that already ran; on failure the result is withheld.
    async fn record(
        &self,
        op: Operation,
        label: &KeyLabel,
        operation: &'static str,
        message: Vec<u8>,
        reason: Option<&str>,
        outcome: String,
    ) -> Result<(), Error> {
        let Some(sink) = &self.sink else {
            return Ok(());
        };
        let reason = reason.map_or_else(current_reason, str::to_string);
        let record =
            AuditRecord::new(label.as_str(), operation, message, reason).with_outcome(outcome);
        sink.append(&record).await.map(|_| ()).map_err(|e| {
            Error::new(self.inner.backend(), op, ErrorKind::AuditUnavailable)
                .label(label)
                .detail(format!("cannot append to the audit log: {e}"))
        })
    }

    async fn audited<T>(
        &self,
        op: Operation,
        counter: &AtomicU64,
        label: &KeyLabel,
        operation: &'static str,
        message: Vec<u8>,
        result: Result<T, Error>,
    ) -> Result<T, Error> {
        counter.fetch_add(1, Ordering::Relaxed);
        let outcome = match &result {
            Ok(_) => "ok".to_string(),
            Err(e) => format!("error: {}", e.kind().describe()),
        };
        self.record(op, label, operation, message, None, outcome)
            .await?;
        result
    }

    /// Signs the audit chain's current head with the identity key `identity` and appends the
    /// signature as an entry of its own. `reason` says why now (end of a round, shutdown).
    /// Without a log (no `[storage]`) there is nothing to sign and this does nothing.
    pub async fn sign_head(&self, identity: &KeyLabel, reason: &str) -> Result<(), Error> {
        let Some(sink) = &self.sink else {
            return Ok(());
        };
        let unavailable = |e: String| {
            Error::new(
                self.inner.backend(),
                Operation::SignSecp256k1,
                ErrorKind::AuditUnavailable,
            )
            .label(identity)
            .detail(format!("cannot read the audit log's head: {e}"))
        };
        let Some((seq, hash)) = sink.head().await.map_err(unavailable)? else {
            return Ok(());
        };
        self.counters.sign_head.fetch_add(1, Ordering::Relaxed);
        let digest = super::audit::head_digest(seq, &hash);
        let signed = self.inner.sign_secp256k1_prehash(identity, &digest).await;
        let (message, outcome) = match &signed {
            Ok(sig) => (
                HeadSignature {
                    seq,
                    hash,
                    signature: sig.to_rsv(),
                }
                .encode(),
                "ok".to_string(),
            ),
            Err(e) => (digest.to_vec(), format!("error: {}", e.kind().describe())),
        };
        self.record(
            Operation::SignSecp256k1,
            identity,
            HEAD_OPERATION,
            message,
            Some(reason),
            outcome,
        )
        .await?;
        signed.map(|_| ())
    }
}

#[async_trait]
impl Custody for AuditedCustody {
    fn backend(&self) -> BackendKind {
        self.inner.backend()
    }

    async fn info(&self) -> sbtc_custody::Result<BackendInfo> {
        self.inner.info().await
    }

    async fn generate(&self, label: &KeyLabel, kind: KeyKind) -> sbtc_custody::Result<KeyInfo> {
        self.inner.generate(label, kind).await
    }

    async fn public_key(&self, label: &KeyLabel) -> sbtc_custody::Result<PublicKey> {
        self.inner.public_key(label).await
    }

    async fn list(&self) -> sbtc_custody::Result<Vec<KeyInfo>> {
        self.inner.list().await
    }

    /// The record holds the digest.
    async fn sign_secp256k1_prehash(
        &self,
        label: &KeyLabel,
        digest: &[u8; 32],
    ) -> sbtc_custody::Result<RecoverableSignature> {
        let result = self.inner.sign_secp256k1_prehash(label, digest).await;
        self.audited(
            Operation::SignSecp256k1,
            &self.counters.sign_secp256k1,
            label,
            "sign_secp256k1_prehash",
            digest.to_vec(),
            result,
        )
        .await
    }

    /// The record holds the digest.
    async fn sign_p256_prehash(
        &self,
        label: &KeyLabel,
        digest: &[u8; 32],
    ) -> sbtc_custody::Result<P256Signature> {
        let result = self.inner.sign_p256_prehash(label, digest).await;
        self.audited(
            Operation::SignP256,
            &self.counters.sign_p256,
            label,
            "sign_p256_prehash",
            digest.to_vec(),
            result,
        )
        .await
    }

    /// The record holds SHA-256 of the AAD (never the plaintext).
    async fn seal(
        &self,
        label: &KeyLabel,
        plaintext: &[u8],
        aad: &[u8],
    ) -> sbtc_custody::Result<SealedBlob> {
        let result = self.inner.seal(label, plaintext, aad).await;
        self.audited(
            Operation::Seal,
            &self.counters.seal,
            label,
            "seal",
            Sha256::digest(aad).to_vec(),
            result,
        )
        .await
    }

    /// The record holds SHA-256 of the sealed blob. The plaintext is released only once the
    /// record is stored, and wiped if it is not.
    async fn unseal(
        &self,
        label: &KeyLabel,
        sealed: &SealedBlob,
        aad: &[u8],
    ) -> sbtc_custody::Result<SecretBytes> {
        let result = self.inner.unseal(label, sealed, aad).await;
        self.audited(
            Operation::Unseal,
            &self.counters.unseal,
            label,
            "unseal",
            Sha256::digest(sealed.as_bytes()).to_vec(),
            result,
        )
        .await
    }

    async fn destroy(&self, label: &KeyLabel) -> sbtc_custody::Result<()> {
        self.inner.destroy(label).await
    }

    async fn health(&self) -> sbtc_custody::Result<Health> {
        self.inner.health().await
    }
}
