//! `[bitcoin]`: which network the signer is on and how it reaches its bitcoind.

use std::path::PathBuf;
use std::time::Duration;

use bitcoin::Network;
use serde::Deserialize;

/// `[bitcoin]` in the signer's config.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BitcoinConfig {
    /// `mainnet`, `testnet`, `testnet4`, `signet` or `regtest`. The node must agree (checked at
    /// start with `getblockchaininfo`), and deposit recipients must be on the matching Stacks
    /// network.
    #[serde(deserialize_with = "network_name")]
    pub network: Network,
    /// bitcoind's RPC endpoint, e.g. `http://127.0.0.1:18443`.
    pub rpc_url: String,
    /// RPC user (with `rpc_password_file`); leave both out to use `rpc_cookie_file`.
    pub rpc_user: Option<String>,
    /// A file holding the RPC password (mode 0400 or 0600); never the password itself.
    pub rpc_password_file: Option<PathBuf>,
    /// bitcoind's `.cookie` file, read again after a 401 (bitcoind rewrites it on restart).
    pub rpc_cookie_file: Option<PathBuf>,
    /// Per-call timeout.
    #[serde(default = "default_timeout_secs")]
    pub rpc_timeout_secs: u64,
    /// Retries after a transient failure (unreachable, warming up), with doubling backoff.
    #[serde(default = "default_retries")]
    pub rpc_retries: u32,
    /// How often the block observer asks for the best block hash.
    #[serde(default = "default_poll_secs")]
    pub poll_interval_secs: u64,
}

fn default_timeout_secs() -> u64 {
    10
}
fn default_retries() -> u32 {
    3
}
fn default_poll_secs() -> u64 {
    5
}

impl BitcoinConfig {
    pub fn rpc_timeout(&self) -> Duration {
        Duration::from_secs(self.rpc_timeout_secs.max(1))
    }

    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis((self.poll_interval_secs * 1000).max(100))
    }
}

/// Parses a network name as operators write it: `mainnet`/`bitcoin`, `testnet`, `testnet4`,
/// `signet`, `regtest`.
pub fn parse_network(name: &str) -> Result<Network, String> {
    match name {
        "mainnet" | "bitcoin" | "main" => Ok(Network::Bitcoin),
        "testnet" | "testnet3" | "test" => Ok(Network::Testnet),
        "testnet4" => Ok(Network::Testnet4),
        "signet" => Ok(Network::Signet),
        "regtest" => Ok(Network::Regtest),
        other => Err(format!(
            "unknown Bitcoin network `{other}`: use mainnet, testnet, testnet4, signet or regtest"
        )),
    }
}

/// The name bitcoind's `getblockchaininfo` reports as `chain` for a network.
pub fn bitcoind_chain_name(network: Network) -> &'static str {
    match network {
        Network::Bitcoin => "main",
        Network::Testnet => "test",
        Network::Testnet4 => "testnet4",
        Network::Signet => "signet",
        _ => "regtest",
    }
}

fn network_name<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Network, D::Error> {
    let name = String::deserialize(d)?;
    parse_network(&name).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_parse_and_unknown_ones_are_named() {
        assert_eq!(parse_network("mainnet").unwrap(), Network::Bitcoin);
        assert_eq!(parse_network("regtest").unwrap(), Network::Regtest);
        let err = parse_network("regnet").unwrap_err();
        assert!(err.contains("regnet") && err.contains("regtest"), "{err}");
        for n in ["main", "test", "testnet4", "signet", "regtest"] {
            assert_eq!(bitcoind_chain_name(parse_network(n).unwrap()), n);
        }
    }
}
