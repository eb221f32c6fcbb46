//! The signer's TOML config. Unknown fields are errors, so a typo stops the signer at start.

use std::path::{Path, PathBuf};

use sbtc_custody::{BackendKind, KeyLabel, Role};
use serde::Deserialize;

#[cfg(feature = "keystore")]
pub type KeystoreConfig = sbtc_custody_keystore::Config;
#[cfg(not(feature = "keystore"))]
pub type KeystoreConfig = toml::Value;
#[cfg(feature = "pkcs11")]
pub type Pkcs11Config = sbtc_custody_pkcs11::Config;
#[cfg(not(feature = "pkcs11"))]
pub type Pkcs11Config = toml::Value;
#[cfg(feature = "yubihsm")]
pub type YubiHsmConfig = sbtc_custody_yubihsm::Config;
#[cfg(not(feature = "yubihsm"))]
pub type YubiHsmConfig = toml::Value;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub custody: CustodyConfig,
    #[serde(default)]
    pub keys: KeyLabels,
    /// `[peer]`: the peer links (see `peer::config`).
    pub peer: Option<crate::peer::PeerConfig>,
    /// `[storage]`: PostgreSQL or in-memory state (see `storage::config`).
    pub storage: Option<crate::storage::StorageConfig>,
}

/// `[custody]`: which backend holds the keys, and each backend's own section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustodyConfig {
    pub backend: BackendKind,
    pub pkcs11: Option<Pkcs11Config>,
    pub yubihsm: Option<YubiHsmConfig>,
    pub keystore: Option<KeystoreConfig>,
}

/// `[keys]`: the label of each role's key in the backend (defaults: identity, tls, seal).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyLabels {
    pub identity: Option<KeyLabel>,
    pub tls: Option<KeyLabel>,
    pub seal: Option<KeyLabel>,
}

impl KeyLabels {
    pub fn label(&self, role: Role) -> KeyLabel {
        let configured = match role {
            Role::Identity => &self.identity,
            Role::Tls => &self.tls,
            Role::Seal => &self.seal,
        };
        configured.clone().unwrap_or_else(|| role.default_label())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}. Pass an existing file with --config")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is invalid: {message}")]
    Parse { path: PathBuf, message: String },
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    pub fn parse(text: &str) -> Result<Config, String> {
        let config: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        let present = match config.custody.backend {
            BackendKind::Pkcs11 => config.custody.pkcs11.is_some(),
            BackendKind::YubiHsm => config.custody.yubihsm.is_some(),
            BackendKind::Keystore => config.custody.keystore.is_some(),
        };
        if !present {
            let b = config.custody.backend;
            return Err(format!(
                "[custody] backend = \"{b}\" but there is no [custody.{b}] section; add one (see config/)"
            ));
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_and_missing_sections_are_errors() {
        let err = Config::parse("[custody]\nbackend = \"keystore\"\nbakend = 1\n").unwrap_err();
        assert!(err.contains("bakend"), "{err}");
        let err = Config::parse("[custody]\nbackend = \"pkcs11\"\n").unwrap_err();
        assert!(err.contains("[custody.pkcs11]"), "{err}");
        let err = Config::parse("[custody]\nbackend = \"hsm\"\n").unwrap_err();
        assert!(err.contains("hsm"), "{err}");
    }

    #[test]
    fn example_configs_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
        assert!(n >= 3, "one example per backend");
    }

    #[test]
    fn storage_section_parses_and_rejects_typos() {
        let base = "[custody]\nbackend = \"keystore\"\n[custody.keystore]\npath = \"/tmp/k\"\npassphrase_env = \"P\"\n";
        let c = Config::parse(&format!(
            "{base}[storage]\nurl = \"postgresql://signer@127.0.0.1:5432/signer\"\npassword_file = \"/etc/pw\"\n"
        ))
        .unwrap();
        let storage = c.storage.unwrap();
        assert_eq!(storage.url, "postgresql://signer@127.0.0.1:5432/signer");
        assert!(Config::parse(base).unwrap().storage.is_none());
        let err = Config::parse(&format!(
            "{base}[storage]\nurl = \"memory\"\npasword = \"x\"\n"
        ))
        .unwrap_err();
        assert!(err.contains("pasword"), "{err}");
    }

    #[test]
    fn labels_default_to_role_names() {
        let c = Config::parse(
            "[custody]\nbackend = \"keystore\"\n[custody.keystore]\npath = \"/tmp/k\"\npassphrase_env = \"P\"\n[keys]\ntls = \"tls-2\"\n",
        )
        .unwrap();
        assert_eq!(c.keys.label(Role::Identity).as_str(), "identity");
        assert_eq!(c.keys.label(Role::Tls).as_str(), "tls-2");
    }
}
