//! `[stacks]`: how the signer reaches its stacks-node, which sBTC deployment it follows, and the
//! limits of the event observer (`POST /new_block` on the `[api]` listener). The Stacks network
//! is not configured here: it follows `[bitcoin] network` ([`StacksNetwork::for_bitcoin`]).

use std::net::IpAddr;
use std::time::Duration;

use serde::Deserialize;

use super::address::{Principal, StacksNetwork};

/// The sBTC contracts' deployer on mainnet (CHAIN.md section 4).
pub const MAINNET_DEPLOYER: &str = "SM3VDXK3WZZSA84XXFKAFAF15NNZX32CTSG82JFQ4";

/// `[stacks]` in the signer's config, as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StacksConfig {
    /// The stacks-node's RPC endpoint, e.g. `http://127.0.0.1:20443`.
    pub node_url: String,
    /// The address that deployed the sBTC contracts. Default on mainnet: [`MAINNET_DEPLOYER`];
    /// required on every other network.
    pub deployer: Option<String>,
    /// Per-call timeout.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// Retries after an unreachable node or a 5xx answer, with doubling backoff.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// The most the signers pay for one Stacks transaction, in micro-STX (1.5 STX).
    #[serde(default = "default_fee_cap_ustx")]
    pub fee_cap_ustx: u64,
    /// The largest `POST /new_block` body accepted (bigger ones get 413): a block's events and
    /// transactions as the stacks-node sends them.
    #[serde(default = "default_new_block_max_body_bytes")]
    pub new_block_max_body_bytes: usize,
    /// Addresses allowed to post events to the observer (`/new_block` and the other observer
    /// paths); anyone else gets 403. Events decide what the signers sign, so only the signer's
    /// own stacks-node may post them. Default: loopback only.
    #[serde(default = "default_event_observer_allow")]
    pub event_observer_allow: Vec<IpAddr>,
}

fn default_timeout_secs() -> u64 {
    10
}
fn default_retries() -> u32 {
    3
}
fn default_fee_cap_ustx() -> u64 {
    1_500_000
}
fn default_new_block_max_body_bytes() -> usize {
    32 << 20
}
fn default_event_observer_allow() -> Vec<IpAddr> {
    vec![
        IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
    ]
}

/// `[stacks]` checked against `[bitcoin]`: what the client and the observer run with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StacksSettings {
    pub network: StacksNetwork,
    pub node_url: String,
    pub deployer: Principal,
    pub timeout: Duration,
    pub retries: u32,
    pub fee_cap_ustx: u64,
    pub new_block_max_body_bytes: usize,
    pub event_observer_allow: Vec<IpAddr>,
}

impl StacksSettings {
    /// `<deployer>.sbtc-registry`, as `/new_block` names the contract of an event.
    pub fn registry_identifier(&self) -> String {
        format!("{}.{}", self.deployer, super::client::REGISTRY_CONTRACT)
    }
}

impl StacksConfig {
    /// A config with the defaults (tests, the devnet).
    pub fn new(node_url: impl Into<String>, deployer: Option<String>) -> StacksConfig {
        StacksConfig {
            node_url: node_url.into(),
            deployer,
            timeout_secs: default_timeout_secs(),
            retries: default_retries(),
            fee_cap_ustx: default_fee_cap_ustx(),
            new_block_max_body_bytes: default_new_block_max_body_bytes(),
            event_observer_allow: default_event_observer_allow(),
        }
    }

    /// Checks the section for the Bitcoin network the signer is on: the URL, the deployer's
    /// network, and limits that would switch something off.
    pub fn resolve(&self, bitcoin: bitcoin::Network) -> Result<StacksSettings, String> {
        let network = StacksNetwork::for_bitcoin(bitcoin);
        super::rpc::parse_node_url(&self.node_url).map_err(|why| format!("[stacks] {why}"))?;
        let deployer_text = match (&self.deployer, network) {
            (Some(d), _) => d.as_str(),
            (None, StacksNetwork::Mainnet) => MAINNET_DEPLOYER,
            (None, StacksNetwork::Testnet) => {
                return Err(format!(
                    "[stacks] needs `deployer` on {network} (the address that deployed the sBTC \
                     contracts there, ST… or SN…); only mainnet has a default"
                ))
            }
        };
        let deployer = Principal::from_address(deployer_text)
            .map_err(|e| format!("[stacks] deployer: {e}"))?;
        if deployer.contract_name().is_some() {
            return Err(format!(
                "[stacks] deployer = \"{deployer_text}\" names a contract; write the deployer's \
                 address alone (without `.{}`)",
                deployer.contract_name().unwrap_or_default()
            ));
        }
        if deployer.network() != Some(network) {
            return Err(format!(
                "[stacks] deployer = \"{deployer_text}\" is a {} address, but [bitcoin] network \
                 means {network}: use the deployer's {} address ({})",
                deployer
                    .network()
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "unknown network's".into()),
                network,
                network.prefixes()
            ));
        }
        for (key, value) in [
            ("timeout_secs", self.timeout_secs),
            ("fee_cap_ustx", self.fee_cap_ustx),
            (
                "new_block_max_body_bytes",
                self.new_block_max_body_bytes as u64,
            ),
        ] {
            if value == 0 {
                return Err(format!(
                    "[stacks] {key} = 0 would refuse everything; leave it out for the default"
                ));
            }
        }
        if self.event_observer_allow.is_empty() {
            return Err(
                "[stacks] event_observer_allow is empty, so no stacks-node could post events; \
                 list your node's address, or leave it out for loopback"
                    .into(),
            );
        }
        Ok(StacksSettings {
            network,
            node_url: self.node_url.clone(),
            deployer,
            timeout: Duration::from_secs(self.timeout_secs),
            retries: self.retries,
            fee_cap_ustx: self.fee_cap_ustx,
            new_block_max_body_bytes: self.new_block_max_body_bytes,
            event_observer_allow: self.event_observer_allow.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::Network;

    fn parse(text: &str) -> Result<StacksConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_follow_the_bitcoin_network() {
        let c = parse("node_url = \"http://127.0.0.1:20443\"").unwrap();
        let s = c.resolve(Network::Bitcoin).unwrap();
        assert_eq!(s.network, StacksNetwork::Mainnet);
        assert_eq!(s.deployer.to_string(), MAINNET_DEPLOYER);
        assert_eq!(
            s.registry_identifier(),
            format!("{MAINNET_DEPLOYER}.sbtc-registry")
        );
        assert_eq!(
            (s.timeout, s.retries, s.fee_cap_ustx),
            (Duration::from_secs(10), 3, 1_500_000)
        );
        assert_eq!(s.new_block_max_body_bytes, 32 * 1024 * 1024);
        assert!(s.event_observer_allow.iter().all(|ip| ip.is_loopback()));
        let err = c.resolve(Network::Regtest).unwrap_err();
        assert!(
            err.contains("needs `deployer`") && err.contains("Stacks testnet"),
            "{err}"
        );
    }

    #[test]
    fn a_deployer_of_the_other_network_or_a_contract_is_refused() {
        let c = parse(&format!(
            "node_url = \"http://127.0.0.1:20443\"\ndeployer = \"{MAINNET_DEPLOYER}\""
        ))
        .unwrap();
        let err = c.resolve(Network::Regtest).unwrap_err();
        assert!(
            err.contains("Stacks mainnet address") && err.contains("ST… or SN…"),
            "{err}"
        );
        let c = parse(
            "node_url = \"http://127.0.0.1:20443\"\n\
             deployer = \"ST1PQHQKV0RJXZFY1DGX8MNSNYVE3VGZJSRTPGZGM\"",
        )
        .unwrap();
        assert_eq!(
            c.resolve(Network::Regtest).unwrap().network,
            StacksNetwork::Testnet
        );
        let err = c.resolve(Network::Bitcoin).unwrap_err();
        assert!(err.contains("Stacks testnet address"), "{err}");
        let c = parse(&format!(
            "node_url = \"http://x:1\"\ndeployer = \"{MAINNET_DEPLOYER}.sbtc-registry\""
        ))
        .unwrap();
        let err = c.resolve(Network::Bitcoin).unwrap_err();
        assert!(err.contains("names a contract"), "{err}");
    }

    #[test]
    fn typos_bad_urls_and_zero_limits_are_refused() {
        let err = parse("node_url = \"http://x:1\"\nfee_cap = 5").unwrap_err();
        assert!(err.contains("fee_cap"), "{err}");
        let err = parse("node_url = \"x:1\"")
            .unwrap()
            .resolve(Network::Bitcoin)
            .unwrap_err();
        assert!(err.contains("[stacks] node_url"), "{err}");
        let err = parse("node_url = \"http://x:1\"\nnew_block_max_body_bytes = 0")
            .unwrap()
            .resolve(Network::Bitcoin)
            .unwrap_err();
        assert!(err.contains("new_block_max_body_bytes = 0"), "{err}");
        let err = parse("node_url = \"http://x:1\"\nevent_observer_allow = []")
            .unwrap()
            .resolve(Network::Bitcoin)
            .unwrap_err();
        assert!(err.contains("event_observer_allow"), "{err}");
    }
}
