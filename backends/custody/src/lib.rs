//! The `Custody` trait and what every backend shares.
//!
//! Every use of a long-term private key in the signer goes through [`Custody`]. Nothing outside the
//! backends ever sees key material: callers hold labels, public keys, signatures and sealed blobs.

mod error;
mod info;
mod label;
mod pool;
mod sealed;
mod secret;
mod signature;

pub use error::{BackendKind, Error, ErrorKind, Operation, Result};
pub use info::{BackendInfo, Capabilities, Health, KeyInfo};
pub use label::{KeyKind, KeyLabel, Role};
pub use pool::BlockingPool;
pub use sealed::SealedBlob;
pub use secret::{check_private, SecretBytes, SecretSource, SecretString};
pub use signature::{
    normalize_secp256k1, P256Signature, PublicKey, RecoverableSignature, SignatureError,
};

use async_trait::async_trait;

/// One custody backend: a PKCS#11 token, a YubiHSM2, or an encrypted keystore file.
///
/// Keys are named by [`KeyLabel`]. Private keys are generated inside the backend and never leave it;
/// sealing keys never leave it either. All methods are async; backends run their blocking device calls
/// on a bounded [`BlockingPool`].
#[async_trait]
pub trait Custody: Send + Sync {
    /// Which backend this is (for logs and errors).
    fn backend(&self) -> BackendKind;

    /// Model, serial, versions and capabilities of the device or file.
    async fn info(&self) -> Result<BackendInfo>;

    /// Generates a new key of `kind` under `label`, inside the backend and non-extractable.
    /// Fails with [`ErrorKind::KeyExists`] if the label is taken.
    async fn generate(&self, label: &KeyLabel, kind: KeyKind) -> Result<KeyInfo>;

    /// The public key under `label` (sealing keys have none: [`ErrorKind::WrongKeyKind`]).
    async fn public_key(&self, label: &KeyLabel) -> Result<PublicKey>;

    /// Every key this signer manages in the backend.
    async fn list(&self) -> Result<Vec<KeyInfo>>;

    /// Signs a 32-byte digest with a secp256k1 key. The result is low-S and carries the recovery id.
    async fn sign_secp256k1_prehash(
        &self,
        label: &KeyLabel,
        digest: &[u8; 32],
    ) -> Result<RecoverableSignature>;

    /// Signs a 32-byte digest (SHA-256 of the message) with a P-256 key, for TLS.
    async fn sign_p256_prehash(&self, label: &KeyLabel, digest: &[u8; 32])
        -> Result<P256Signature>;

    /// Encrypts and authenticates `plaintext` bound to `aad` under the sealing key `label`.
    async fn seal(&self, label: &KeyLabel, plaintext: &[u8], aad: &[u8]) -> Result<SealedBlob>;

    /// Reverses [`Custody::seal`]. A wrong `aad`, a wrong key or any changed byte is
    /// [`ErrorKind::Tampered`]. The plaintext is zeroized when dropped.
    async fn unseal(
        &self,
        label: &KeyLabel,
        sealed: &SealedBlob,
        aad: &[u8],
    ) -> Result<SecretBytes>;

    /// Destroys the key under `label` for good.
    async fn destroy(&self, label: &KeyLabel) -> Result<()>;

    /// A cheap liveness check of the device or file (session open, logged in, reachable).
    async fn health(&self) -> Result<Health>;
}

#[async_trait]
impl<T: Custody + ?Sized> Custody for std::sync::Arc<T> {
    fn backend(&self) -> BackendKind {
        (**self).backend()
    }
    async fn info(&self) -> Result<BackendInfo> {
        (**self).info().await
    }
    async fn generate(&self, label: &KeyLabel, kind: KeyKind) -> Result<KeyInfo> {
        (**self).generate(label, kind).await
    }
    async fn public_key(&self, label: &KeyLabel) -> Result<PublicKey> {
        (**self).public_key(label).await
    }
    async fn list(&self) -> Result<Vec<KeyInfo>> {
        (**self).list().await
    }
    async fn sign_secp256k1_prehash(
        &self,
        label: &KeyLabel,
        digest: &[u8; 32],
    ) -> Result<RecoverableSignature> {
        (**self).sign_secp256k1_prehash(label, digest).await
    }
    async fn sign_p256_prehash(
        &self,
        label: &KeyLabel,
        digest: &[u8; 32],
    ) -> Result<P256Signature> {
        (**self).sign_p256_prehash(label, digest).await
    }
    async fn seal(&self, label: &KeyLabel, plaintext: &[u8], aad: &[u8]) -> Result<SealedBlob> {
        (**self).seal(label, plaintext, aad).await
    }
    async fn unseal(
        &self,
        label: &KeyLabel,
        sealed: &SealedBlob,
        aad: &[u8],
    ) -> Result<SecretBytes> {
        (**self).unseal(label, sealed, aad).await
    }
    async fn destroy(&self, label: &KeyLabel) -> Result<()> {
        (**self).destroy(label).await
    }
    async fn health(&self) -> Result<Health> {
        (**self).health().await
    }
}
