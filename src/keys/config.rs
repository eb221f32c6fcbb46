//! `[custody]` and `[keys]`: which backend holds the keys, and each role's key label.

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
