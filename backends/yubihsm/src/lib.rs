//! YubiHSM2 custody backend.
//!
//! Talks to the device over USB or through `yubihsm-connector` over HTTP, with the `yubihsm` crate.
//! Keys are generated on the device with the fewest capabilities that work and are never
//! exportable, unless the operator configures a backup wrap key (then they are exportable only
//! encrypted under that wrap key). See `keys.rs` for the capability policy, `seal.rs` for how data is
//! sealed, and `device.rs` for how the one session is kept alive.
//!
//! The authentication key the signer logs in with needs these capabilities:
//! `generate-asymmetric-key`, `generate-hmac-key`, `sign-ecdsa`, `sign-hmac`,
//! `delete-asymmetric-key`, `delete-hmac-key`, and for backups `export-wrapped` and
//! `import-wrapped`; its delegated capabilities must include `sign-ecdsa`, `sign-hmac` and (for
//! backups) `exportable-under-wrap`. Give the signer its own domain so that `list` shows only its
//! keys.

mod config;
mod device;
mod keys;
mod seal;

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use sbtc_custody::{
    BackendInfo, BackendKind, BlockingPool, Capabilities, Custody, Error, ErrorKind, Health,
    KeyInfo, KeyKind, KeyLabel, Operation, P256Signature, PublicKey, RecoverableSignature, Result,
    SealedBlob, SecretBytes, SecretString,
};
use yubihsm::{asymmetric, authentication::Credentials, hmac, Algorithm, Connector};

pub use config::{Config, Options};
use device::{Device, BACKEND};
use keys::Inner;

/// How long `health` waits for the device before it says the device is busy.
const HEALTH_WAIT: Duration = Duration::from_secs(5);

/// A YubiHSM2 holding the signer's keys.
///
/// Device calls run one at a time on a [`BlockingPool`] of size 1: there is one authenticated
/// session, the crate's client serialises commands on it anyway, and the device executes one
/// command at a time. More sessions would spend the device's 16 session slots for no throughput.
pub struct YubiHsmBackend {
    inner: Arc<Inner>,
    pool: BlockingPool,
}

impl std::fmt::Debug for YubiHsmBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("YubiHsmBackend")
            .field("endpoint", &self.inner.device.endpoint())
            .field("auth_key_id", &self.inner.device.auth_key_id())
            .finish_non_exhaustive()
    }
}

/// Opens the YubiHSM2 that `config` names: reads the password, connects, authenticates and checks
/// the serial number. Blocking (it may prompt and talks to the device); call it before the async
/// runtime starts or from `spawn_blocking`.
pub fn open(config: &Config) -> Result<YubiHsmBackend> {
    let (endpoint, options) = config.check()?;
    let connector = config.connector(&endpoint, &options)?;
    let password = config
        .password_source()?
        .load(BACKEND, "YubiHSM2 password")?;
    YubiHsmBackend::with_connector(connector, config.auth_key_id, password, options)
}

impl YubiHsmBackend {
    /// Opens a backend over any connector, such as `yubihsm::Connector::mockhsm()` in tests.
    /// Blocking, like [`open`]. The password is turned into the authentication key with the
    /// crate's password derivation (PBKDF2, as yubihsm-shell does) and then dropped.
    pub fn with_connector(
        connector: Connector,
        auth_key_id: u16,
        password: SecretString,
        options: Options,
    ) -> Result<Self> {
        let domains = config::domains(&options.domains)?;
        let expected_serial = options
            .expected_serial
            .as_deref()
            .map(config::normalize_serial)
            .transpose()?;
        let credentials = Credentials::from_password(auth_key_id, password.expose().as_bytes());
        drop(password);
        let device = Device::open(connector, credentials, options.endpoint, expected_serial)?;
        Ok(YubiHsmBackend {
            inner: Arc::new(Inner::new(device, domains, options.backup_wrap_key_id)),
            pool: BlockingPool::new(1, options.queue_timeout),
        })
    }

    async fn run<T, F>(&self, op: Operation, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        self.pool.run(BACKEND, op, move || f(&inner)).await
    }

    /// Exports the key under `label` encrypted under the configured backup wrap key (the
    /// YubiHSM2's own wrapped-object format, which `yubihsm-shell put wrapped` also reads).
    /// Fails with [`ErrorKind::Config`] when no `backup_wrap_key_id` is configured.
    pub async fn backup(&self, label: &KeyLabel) -> Result<Vec<u8>> {
        let label = label.clone();
        self.run(Operation::Backup, move |inner| inner.backup(&label))
            .await
    }

    /// Imports a key exported by [`YubiHsmBackend::backup`] under the configured wrap key. The key
    /// returns under its old label and object id, with its old capabilities.
    pub async fn restore(&self, wrapped: &[u8]) -> Result<KeyInfo> {
        let wrapped = wrapped.to_vec();
        self.run(Operation::Backup, move |inner| inner.restore(&wrapped))
            .await
    }

    /// Serial number of the device (10 digits).
    pub fn serial(&self) -> String {
        self.inner
            .device
            .summary()
            .map(|s| s.serial)
            .unwrap_or_default()
    }
}

#[async_trait]
impl Custody for YubiHsmBackend {
    fn backend(&self) -> BackendKind {
        BACKEND
    }

    async fn info(&self) -> Result<BackendInfo> {
        let summary = self.inner.device.summary().ok_or_else(|| {
            Error::new(BACKEND, Operation::Info, ErrorKind::Internal)
                .detail("no device information although the device was opened")
        })?;
        let has = |a: Algorithm| summary.algorithms.contains(&a);
        Ok(BackendInfo {
            backend: BACKEND,
            manufacturer: "Yubico".to_owned(),
            model: "YubiHSM 2".to_owned(),
            serial: summary.serial.clone(),
            version: format!("firmware {}", summary.version),
            capabilities: Capabilities {
                secp256k1: has(Algorithm::Asymmetric(asymmetric::Algorithm::EcK256)),
                p256: has(Algorithm::Asymmetric(asymmetric::Algorithm::EcP256)),
                seal: has(Algorithm::Hmac(hmac::Algorithm::Sha256)),
                seal_method: "AES-256-GCM on the host under a one-time key derived per blob by \
                              HMAC-SHA256 on the YubiHSM2"
                    .to_owned(),
                key_backup: self.inner.backup_wrap_key_id.is_some(),
                max_concurrency: self.pool.size(),
            },
        })
    }

    async fn generate(&self, label: &KeyLabel, kind: KeyKind) -> Result<KeyInfo> {
        let label = label.clone();
        self.run(Operation::Generate, move |inner| {
            inner.generate(&label, kind)
        })
        .await
    }

    async fn public_key(&self, label: &KeyLabel) -> Result<PublicKey> {
        let label = label.clone();
        self.run(Operation::PublicKey, move |inner| inner.public_key(&label))
            .await
    }

    async fn list(&self) -> Result<Vec<KeyInfo>> {
        self.run(Operation::List, |inner| inner.list()).await
    }

    async fn sign_secp256k1_prehash(
        &self,
        label: &KeyLabel,
        digest: &[u8; 32],
    ) -> Result<RecoverableSignature> {
        let label = label.clone();
        let digest = *digest;
        self.run(Operation::SignSecp256k1, move |inner| {
            inner.sign_secp256k1(&label, &digest)
        })
        .await
    }

    async fn sign_p256_prehash(
        &self,
        label: &KeyLabel,
        digest: &[u8; 32],
    ) -> Result<P256Signature> {
        let label = label.clone();
        let digest = *digest;
        self.run(Operation::SignP256, move |inner| {
            inner.sign_p256(&label, &digest)
        })
        .await
    }

    async fn seal(&self, label: &KeyLabel, plaintext: &[u8], aad: &[u8]) -> Result<SealedBlob> {
        // Only the key derivation runs on the device; the plaintext never enters the pool.
        let nonce = seal::fresh_nonce();
        let key_label = label.clone();
        let data_key = self
            .run(Operation::Seal, move |inner| {
                inner.hmac(Operation::Seal, &key_label, &seal::kdf_input(&nonce))
            })
            .await?;
        seal::seal(label, &nonce, data_key, plaintext, aad)
    }

    async fn unseal(
        &self,
        label: &KeyLabel,
        sealed: &SealedBlob,
        aad: &[u8],
    ) -> Result<SecretBytes> {
        let parsed = seal::parse(label, sealed)?;
        let nonce = parsed.nonce;
        let key_label = label.clone();
        let data_key = self
            .run(Operation::Unseal, move |inner| {
                inner.hmac(Operation::Unseal, &key_label, &seal::kdf_input(&nonce))
            })
            .await?;
        seal::unseal(label, &parsed, data_key, aad)
    }

    async fn destroy(&self, label: &KeyLabel) -> Result<()> {
        let label = label.clone();
        self.run(Operation::Destroy, move |inner| inner.destroy(&label))
            .await
    }

    async fn health(&self) -> Result<Health> {
        let endpoint = self.inner.device.endpoint().to_owned();
        let serial = self.serial();
        let answer = tokio::time::timeout(
            HEALTH_WAIT,
            self.run(Operation::Health, |inner| inner.ping()),
        )
        .await;
        Ok(match answer {
            Ok(Ok(rtt)) => Health {
                ok: true,
                detail: format!(
                    "YubiHSM2 {serial} at {endpoint} answered in {} ms",
                    rtt.as_millis()
                ),
            },
            Ok(Err(e)) => Health {
                ok: false,
                detail: e.to_string(),
            },
            Err(_) => Health {
                ok: false,
                detail: format!(
                    "YubiHSM2 {serial} at {endpoint} did not answer within {HEALTH_WAIT:?}"
                ),
            },
        })
    }
}
