//! `[custody.keystore]`: where the file is, where its passphrase comes from, where its rollback
//! mark is kept, and how hard the KDF of a new file works.
//!
//! ```toml
//! [custody.keystore]
//! path = "/var/lib/sbtc-hsm-signer/keystore.json"
//! passphrase_credential = "keystore-passphrase"   # or passphrase_file / _env / _prompt = true
//! # Optional: the rollback mark, by default "<path>.state" next to the keystore.
//! state_path = "/var/lib/sbtc-hsm-signer/keystore.json.state"
//!
//! # Optional. memory_kib, iterations and parallelism are used when a keystore is created;
//! # opening uses what the file records.
//! [custody.keystore.kdf]
//! memory_kib = 65536        # at least 65536 (64 MiB)
//! iterations = 3            # at least 3
//! parallelism = 1
//! insecure_test_kdf = false # true lifts the floor and the passphrase rule, and lets a file with
//!                           # test settings open: throwaway test and devnet keystores only
//! ```

use std::path::PathBuf;

use sbtc_custody::{BackendKind, Error, ErrorKind, Operation, Result, SecretSource};
use serde::Deserialize;

use crate::kdf::KdfParams;

/// The `[custody.keystore]` section.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The keystore file. Its directory is created (mode 0700) when the keystore is created.
    pub path: PathBuf,
    pub passphrase_file: Option<PathBuf>,
    pub passphrase_env: Option<String>,
    pub passphrase_credential: Option<String>,
    #[serde(default)]
    pub passphrase_prompt: bool,
    /// The rollback mark (the highest generation of the keystore this host used); by default
    /// `<path>.state` next to the keystore. Its directory must be writable by the signer.
    #[serde(default)]
    pub state_path: Option<PathBuf>,
    /// Argon2id settings for creating a keystore.
    #[serde(default)]
    pub kdf: KdfConfig,
}

/// `[custody.keystore.kdf]`: Argon2id settings used when a keystore is created.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KdfConfig {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
    /// Allows settings below the production floor (64 MiB, 3 passes), for tests and devnets: a new
    /// keystore may use them (and then any non-empty passphrase), and only with this set does a
    /// file with such settings open.
    pub insecure_test_kdf: bool,
}

impl Default for KdfConfig {
    fn default() -> Self {
        KdfConfig {
            memory_kib: KdfParams::DEFAULT_MEMORY_KIB,
            iterations: KdfParams::DEFAULT_ITERATIONS,
            parallelism: KdfParams::DEFAULT_PARALLELISM,
            insecure_test_kdf: false,
        }
    }
}

impl Config {
    /// A config for `path` whose passphrase comes from `source`, with the default KDF.
    pub fn new(path: impl Into<PathBuf>, source: SecretSource) -> Self {
        let mut config = Config {
            path: path.into(),
            passphrase_file: None,
            passphrase_env: None,
            passphrase_credential: None,
            passphrase_prompt: false,
            state_path: None,
            kdf: KdfConfig::default(),
        };
        match source {
            SecretSource::File(p) => config.passphrase_file = Some(p),
            SecretSource::Env(v) => config.passphrase_env = Some(v),
            SecretSource::Credential(n) => config.passphrase_credential = Some(n),
            SecretSource::Prompt => config.passphrase_prompt = true,
        }
        config
    }

    /// The one passphrase source the section names.
    pub fn passphrase_source(&self) -> Result<SecretSource> {
        SecretSource::from_fields(
            "passphrase",
            self.passphrase_file.clone(),
            self.passphrase_env.clone(),
            self.passphrase_credential.clone(),
            self.passphrase_prompt,
        )
        .map_err(|detail| {
            Error::new(BackendKind::Keystore, Operation::Open, ErrorKind::Config)
                .detail(detail)
                .hint("set exactly one passphrase source in [custody.keystore]")
        })
    }

    /// What opening the file allows, from this section.
    pub fn open_options(&self) -> OpenOptions {
        OpenOptions {
            insecure_test_kdf: self.kdf.insecure_test_kdf,
            state_path: self.state_path.clone(),
        }
    }

    /// The Argon2id parameters for a new keystore, with the production floor unless
    /// `insecure_test_kdf = true`.
    pub fn kdf_params(&self) -> Result<KdfParams> {
        let k = &self.kdf;
        let params = if k.insecure_test_kdf {
            KdfParams::insecure(k.memory_kib, k.iterations, k.parallelism)
        } else {
            KdfParams::new(k.memory_kib, k.iterations, k.parallelism)
        };
        params.map_err(|detail| {
            Error::new(BackendKind::Keystore, Operation::Open, ErrorKind::Config)
                .detail(detail)
                .hint("fix [custody.keystore.kdf] in the config file")
        })
    }
}

/// What opening a keystore file allows, and where its rollback mark is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenOptions {
    /// Open a file whose Argon2id settings are below the production floor (a test or devnet
    /// keystore). Without it such a file is refused.
    pub insecure_test_kdf: bool,
    /// The rollback mark file; None: `<keystore>.state` next to the keystore.
    pub state_path: Option<PathBuf>,
}

impl OpenOptions {
    /// Options for throwaway test keystores: files with the test KDF open.
    pub fn insecure_test() -> Self {
        OpenOptions {
            insecure_test_kdf: true,
            state_path: None,
        }
    }
}
