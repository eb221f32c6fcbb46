//! The signer's TOML config. Unknown fields are errors, so a typo stops the signer at start.

use std::path::{Path, PathBuf};

use sbtc_custody::BackendKind;
#[cfg(test)]
use sbtc_custody::Role;
use serde::Deserialize;

pub use crate::keys::{CustodyConfig, KeyLabels, KeystoreConfig, Pkcs11Config, YubiHsmConfig};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[custody]`: where the keys live. Only the commands that use keys need it.
    pub custody: Option<CustodyConfig>,
    #[serde(default)]
    pub keys: KeyLabels,
    /// `[peer]`: the peer links (see `peer::config`).
    pub peer: Option<crate::peer::PeerConfig>,
    /// `[storage]`: PostgreSQL or in-memory state (see `storage::config`).
    pub storage: Option<crate::storage::StorageConfig>,
    /// `[bitcoin]`: the network and the bitcoind RPC endpoint (see `chain::bitcoin::config`).
    pub bitcoin: Option<crate::chain::bitcoin::BitcoinConfig>,
    /// `[api]`: the deposit intake HTTP API (see `api::config`).
    pub api: Option<crate::api::ApiConfig>,
    /// `[stacks]`: the stacks-node and the sBTC deployment (see `chain::stacks::config`); the
    /// event observer is served on `[api]`'s listener.
    pub stacks: Option<crate::chain::stacks::StacksConfig>,
    /// `[sweep]`: how sweeps are built and judged (see `coordination::sweep_config`).
    #[serde(default)]
    pub sweep: crate::coordination::sweep_config::SweepConfig,
    /// `[policy]`: what this signer's request decider accepts (see `coordination::policy`);
    /// every field has a default.
    #[serde(default)]
    pub policy: crate::coordination::PolicyConfig,
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
    #[error("`{command}` needs a [{section}] section in the config, and it has none; {hint}")]
    MissingSection {
        command: &'static str,
        section: &'static str,
        hint: &'static str,
    },
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
        if let Some(custody) = &config.custody {
            let present = match custody.backend {
                BackendKind::Pkcs11 => custody.pkcs11.is_some(),
                BackendKind::YubiHsm => custody.yubihsm.is_some(),
                BackendKind::Keystore => custody.keystore.is_some(),
            };
            if !present {
                let b = custody.backend;
                return Err(format!(
                    "[custody] backend = \"{b}\" but there is no [custody.{b}] section; add one (see config/)"
                ));
            }
        }
        config.policy.validate().map_err(|e| e.to_string())?;
        if let Some(stacks) = &config.stacks {
            let Some(bitcoin) = &config.bitcoin else {
                return Err(
                    "[stacks] needs a [bitcoin] section: the Stacks network follows [bitcoin] \
                     network, and Stacks blocks count only when their Bitcoin anchor is on \
                     this signer's own Bitcoin chain"
                        .into(),
                );
            };
            stacks.resolve(bitcoin.network)?;
        }
        Ok(config)
    }

    /// `[stacks]` checked against `[bitcoin]`, if configured.
    pub fn stacks_settings(&self) -> Result<Option<crate::chain::stacks::StacksSettings>, String> {
        match (&self.stacks, &self.bitcoin) {
            (None, _) => Ok(None),
            (Some(_), None) => Err("[stacks] needs a [bitcoin] section".into()),
            (Some(s), Some(b)) => s.resolve(b.network).map(Some),
        }
    }

    /// `[custody]`, or an error naming the command that needs it.
    pub fn needs_custody(&self, command: &'static str) -> Result<&CustodyConfig, ConfigError> {
        self.custody.as_ref().ok_or(ConfigError::MissingSection {
            command,
            section: "custody",
            hint: "add one with the backend that holds this signer's keys (see config/*.example.toml)",
        })
    }

    /// `[peer]`, or an error naming the command that needs it.
    pub fn needs_peer(
        &self,
        command: &'static str,
    ) -> Result<&crate::peer::PeerConfig, ConfigError> {
        self.peer.as_ref().ok_or(ConfigError::MissingSection {
            command,
            section: "peer",
            hint: "add one with listen, cert_path and the [[peer.bootstrap]] set (see docs/peer-links.md)",
        })
    }

    /// `[bitcoin]`, or an error naming the command that needs it.
    pub fn needs_bitcoin(
        &self,
        command: &'static str,
    ) -> Result<&crate::chain::bitcoin::BitcoinConfig, ConfigError> {
        self.bitcoin.as_ref().ok_or(ConfigError::MissingSection {
            command,
            section: "bitcoin",
            hint: "add one with network and rpc_url (see config/signer.example.toml)",
        })
    }

    /// `[storage]`, or an error naming the command that needs it.
    pub fn needs_storage(
        &self,
        command: &'static str,
    ) -> Result<&crate::storage::StorageConfig, ConfigError> {
        self.storage.as_ref().ok_or(ConfigError::MissingSection {
            command,
            section: "storage",
            hint: "add one with url = \"postgresql://...\" (see config/signer.example.toml)",
        })
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
    fn a_storage_only_config_parses_and_missing_sections_are_named() {
        let c = Config::parse("[storage]\nurl = \"memory\"\n").unwrap();
        assert!(c.needs_storage("migrate").is_ok());
        let err = c.needs_custody("keys list").unwrap_err().to_string();
        assert!(
            err.contains("`keys list`") && err.contains("[custody]"),
            "{err}"
        );
        let err = c.needs_peer("run").unwrap_err().to_string();
        assert!(err.contains("`run`") && err.contains("[peer]"), "{err}");
        let c = Config::parse("").unwrap();
        let err = c.needs_storage("audit verify").unwrap_err().to_string();
        assert!(
            err.contains("`audit verify`") && err.contains("[storage]"),
            "{err}"
        );
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
    fn the_annotated_example_shows_every_section_the_signer_reads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/signer.example.toml");
        let c = Config::load(&path).unwrap();
        assert!(c.custody.is_some());
        let storage = c.storage.as_ref().unwrap();
        assert!(storage.password_file.is_some() && storage.pool_size.is_some());
        assert!(storage.connect_retry_secs.is_some() && storage.operation_retry_secs.is_some());
        let peer = c.peer.as_ref().unwrap();
        let set = peer.bootstrap_set().unwrap();
        assert_eq!((set.len(), set.threshold()), (2, 2));
        assert!(peer.public_endpoint.is_some() && peer.max_message_bytes.is_some());
        let bitcoin = c.bitcoin.as_ref().unwrap();
        assert_eq!(bitcoin.network, bitcoin::Network::Bitcoin);
        assert!(bitcoin.rpc_cookie_file.is_some());
        let api = c.api.as_ref().unwrap();
        assert_eq!(api.max_body_bytes, 64 * 1024);
        api.check().unwrap();
        let stacks = c.stacks_settings().unwrap().unwrap();
        assert_eq!(
            stacks.deployer.to_string(),
            crate::chain::stacks::config::MAINNET_DEPLOYER
        );
        assert_eq!(stacks.fee_cap_ustx, 1_500_000);
        let text = std::fs::read_to_string(&path).unwrap();
        for section in [
            "[custody]",
            "[keys]",
            "[storage]",
            "[bitcoin]",
            "[api]",
            "[stacks]",
            "[peer]",
            "[[peer.bootstrap]]",
        ] {
            assert!(
                text.contains(section),
                "{section} missing from {}",
                path.display()
            );
        }
    }

    #[test]
    fn policy_defaults_parse_and_typos_or_contradictions_are_errors() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.policy, crate::coordination::PolicyConfig::default());
        let c =
            Config::parse("[policy]\ndeposit_max_sats = 5_000_000\npeg_cap_sats = 100_000_000\n")
                .unwrap();
        assert_eq!(c.policy.deposit_max_sats, Some(5_000_000));
        assert_eq!(c.policy.deposit_min_sats, 10_000);
        let err = Config::parse("[policy]\ndeposit_max = 5\n").unwrap_err();
        assert!(err.contains("deposit_max"), "{err}");
        let err = Config::parse("[policy]\ndeposit_min_sats = 20_000\ndeposit_max_sats = 15_000\n")
            .unwrap_err();
        assert!(err.contains("[policy] deposit_max_sats"), "{err}");
    }

    #[test]
    fn stacks_needs_bitcoin_and_a_deployer_of_its_network() {
        let stacks = "[stacks]\nnode_url = \"http://127.0.0.1:20443\"\n";
        let err = Config::parse(stacks).unwrap_err();
        assert!(err.contains("[stacks] needs a [bitcoin] section"), "{err}");
        let regtest = "[bitcoin]\nnetwork = \"regtest\"\nrpc_url = \"http://127.0.0.1:18443\"\n";
        let err = Config::parse(&format!("{regtest}{stacks}")).unwrap_err();
        assert!(err.contains("needs `deployer`"), "{err}");
        let c = Config::parse(&format!(
            "{regtest}{stacks}deployer = \"ST1PQHQKV0RJXZFY1DGX8MNSNYVE3VGZJSRTPGZGM\"\n"
        ))
        .unwrap();
        let s = c.stacks_settings().unwrap().unwrap();
        assert_eq!(
            s.network,
            crate::chain::stacks::address::StacksNetwork::Testnet
        );
        let err = Config::parse(&format!(
            "{regtest}{stacks}deployer = \"SM3VDXK3WZZSA84XXFKAFAF15NNZX32CTSG82JFQ4\"\n"
        ))
        .unwrap_err();
        assert!(err.contains("Stacks mainnet address"), "{err}");
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
