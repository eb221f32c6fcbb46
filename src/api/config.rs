//! `[api]`: the signer's own HTTP API, where depositors' wallets announce deposits. Every limit
//! has a default that suits one signer serving wallets directly; see docs/security.md, "Deposit
//! intake".

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

/// `[api]` in the signer's config.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Where the API listens, e.g. `0.0.0.0:3031` (the port the `sbtc` library's devenv uses).
    pub listen: SocketAddr,
    /// The largest request body accepted; bigger ones get 413. A deposit with a 100 kvB
    /// transaction fits in 256 KiB; wallet deposits are a few hundred bytes.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Requests per minute from one client address (IPv6 clients are counted per /64).
    #[serde(default = "default_rate_per_minute")]
    pub rate_per_minute: u32,
    /// Requests a client may make at once before the per-minute rate applies.
    #[serde(default = "default_rate_burst")]
    pub rate_burst: u32,
    /// Client addresses remembered by the rate limiter; beyond this the oldest is forgotten.
    #[serde(default = "default_rate_clients")]
    pub rate_clients: usize,
    /// Connections served at once; further ones wait in the kernel's backlog.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// A request (body read, validation against bitcoind, storage) that takes longer gets 408.
    #[serde(default = "default_request_timeout_secs")]
    pub request_timeout_secs: u64,
    /// Deposits announced by peers: accepted per minute from one peer, burst twice that; more
    /// are dropped and counted.
    #[serde(default = "default_relay_per_minute")]
    pub relay_per_minute: u32,
    /// An Emily-style API to pull pending deposits from (`GET {emily_url}/deposit?status=pending`),
    /// where an operator runs one. None: no polling.
    pub emily_url: Option<String>,
    /// How often Emily is polled.
    #[serde(default = "default_emily_poll_secs")]
    pub emily_poll_secs: u64,
}

fn default_max_body_bytes() -> usize {
    64 * 1024
}
fn default_rate_per_minute() -> u32 {
    60
}
fn default_rate_burst() -> u32 {
    20
}
fn default_rate_clients() -> usize {
    10_000
}
fn default_max_connections() -> usize {
    256
}
fn default_request_timeout_secs() -> u64 {
    30
}
fn default_relay_per_minute() -> u32 {
    600
}
fn default_emily_poll_secs() -> u64 {
    30
}

impl ApiConfig {
    /// The defaults, listening on `listen`.
    pub fn new(listen: SocketAddr) -> ApiConfig {
        ApiConfig {
            listen,
            max_body_bytes: default_max_body_bytes(),
            rate_per_minute: default_rate_per_minute(),
            rate_burst: default_rate_burst(),
            rate_clients: default_rate_clients(),
            max_connections: default_max_connections(),
            request_timeout_secs: default_request_timeout_secs(),
            relay_per_minute: default_relay_per_minute(),
            emily_url: None,
            emily_poll_secs: default_emily_poll_secs(),
        }
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs.max(1))
    }

    pub fn emily_poll_interval(&self) -> Duration {
        Duration::from_secs(self.emily_poll_secs.max(1))
    }

    /// Refuses settings that would switch a defence off.
    pub fn check(&self) -> Result<(), String> {
        let positive = [
            ("max_body_bytes", self.max_body_bytes as u64),
            ("rate_per_minute", self.rate_per_minute as u64),
            ("rate_burst", self.rate_burst as u64),
            ("rate_clients", self.rate_clients as u64),
            ("max_connections", self.max_connections as u64),
            ("relay_per_minute", self.relay_per_minute as u64),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(format!(
                    "[api] {key} = 0 would refuse everything; leave it out for the default"
                ));
            }
        }
        if let Some(url) = &self.emily_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!(
                    "[api] emily_url = \"{url}\" is not an http:// or https:// URL"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply_and_typos_and_zero_limits_are_refused() {
        let c: ApiConfig = toml::from_str("listen = \"127.0.0.1:3031\"").unwrap();
        assert_eq!(c.max_body_bytes, 64 * 1024);
        assert!(c.check().is_ok());
        let e =
            toml::from_str::<ApiConfig>("listen = \"127.0.0.1:3031\"\nmax_body = 5").unwrap_err();
        assert!(e.to_string().contains("max_body"), "{e}");
        let zero: ApiConfig =
            toml::from_str("listen = \"127.0.0.1:3031\"\nrate_per_minute = 0").unwrap();
        assert!(zero.check().unwrap_err().contains("rate_per_minute"));
        let bad: ApiConfig =
            toml::from_str("listen = \"127.0.0.1:3031\"\nemily_url = \"ftp://x\"").unwrap();
        assert!(bad.check().unwrap_err().contains("emily_url"));
    }
}
