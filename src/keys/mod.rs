//! Keys as the rest of the signer sees them: opening custody ([`open`]), the handle that carries
//! a backend and the labels of the signer's three keys ([`Keys`]), the signer set and the
//! aggregate key. Nothing here sees private key material: that stays behind `Custody`.

pub mod aggregate_key;
pub mod audit;
mod audited;
mod config;
mod open;
pub mod signer_set;

use std::sync::Arc;

use sbtc_custody::{Custody, KeyLabel, PublicKey, Role};

pub use aggregate_key::{AggregateKey, InvalidAggregateKey};
pub use audited::{with_reason, AuditSink, AuditedCustody};
pub use config::{CustodyConfig, KeyLabels, KeystoreConfig, Pkcs11Config, YubiHsmConfig};
pub use open::{init, open};
pub use signer_set::{Member, SignerIndex, SignerSet, SignerSetError};

/// A custody backend and the labels of this signer's identity, TLS and seal keys: what every
/// layer that needs a key is handed, instead of the app config.
#[derive(Clone)]
pub struct Keys {
    /// The backend as every layer uses it: audited in the node and the CLI.
    pub custody: Arc<dyn Custody>,
    pub identity: KeyLabel,
    pub tls: KeyLabel,
    pub seal: KeyLabel,
    audited: Option<AuditedCustody>,
}

impl Keys {
    /// A backend without an audit log (tests and benchmarks that measure custody itself).
    pub fn new(custody: Arc<dyn Custody>, labels: &KeyLabels) -> Self {
        Keys {
            custody,
            identity: labels.label(Role::Identity),
            tls: labels.label(Role::Tls),
            seal: labels.label(Role::Seal),
            audited: None,
        }
    }

    /// An audited backend: what the node and every CLI command that uses keys hold.
    pub fn audited(audited: AuditedCustody, labels: &KeyLabels) -> Self {
        let mut keys = Keys::new(Arc::new(audited.clone()), labels);
        keys.audited = Some(audited);
        keys
    }

    /// The audit wrapper, if the backend is audited.
    pub fn audit(&self) -> Option<&AuditedCustody> {
        self.audited.as_ref()
    }

    /// Signs the audit log's head with the identity key (end of a round, shutdown); nothing
    /// without an audit log.
    pub async fn sign_audit_head(&self, reason: &str) -> Result<(), sbtc_custody::Error> {
        match &self.audited {
            Some(a) => a.sign_head(&self.identity, reason).await,
            None => Ok(()),
        }
    }

    /// The one door for identity-key signatures: signs `digest` with the identity key, recorded
    /// in the audit log under `reason`.
    pub async fn sign_identity(
        &self,
        digest: &[u8; 32],
        reason: impl Into<String>,
    ) -> Result<sbtc_custody::RecoverableSignature, sbtc_custody::Error> {
        with_reason(
            reason,
            self.custody.sign_secp256k1_prehash(&self.identity, digest),
        )
        .await
    }

    /// The identity public key (secp256k1), or an error naming the label if the key is missing or
    /// of the wrong kind.
    pub async fn identity_key(&self) -> Result<bitcoin::secp256k1::PublicKey, sbtc_custody::Error> {
        match self.custody.public_key(&self.identity).await? {
            PublicKey::Secp256k1(k) => Ok(k),
            PublicKey::P256(_) => Err(sbtc_custody::Error::new(
                self.custody.backend(),
                sbtc_custody::Operation::PublicKey,
                sbtc_custody::ErrorKind::WrongKeyKind,
            )
            .label(&self.identity)
            .detail("the identity key must be secp256k1; generate one with `keys generate --role identity`")),
        }
    }
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("backend", &self.custody.backend())
            .field("identity", &self.identity)
            .field("tls", &self.tls)
            .field("seal", &self.seal)
            .finish()
    }
}
