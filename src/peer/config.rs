//! `[peer]`: where this signer listens, where its certificate is kept, its limits, and the
//! bootstrap signer set.
//!
//! ```toml
//! [peer]
//! listen = "0.0.0.0:4122"
//! public_endpoint = "signer-1.example.org:4122"   # what `peer card` tells other operators
//! cert_path = "/var/lib/sbtc-hsm-signer/peer-cert.der"
//! cert_validity_days = 30        # the lifetime of our own certificate; at most max_cert_lifetime_days
//! max_cert_lifetime_days = 30    # longer-lived peer certificates are refused
//! max_message_bytes = 1048576
//! rate_per_peer = 2000        # messages per second from one peer, burst twice that
//! queue_depth = 1024          # messages waiting for one peer (4x from one peer in the inbox)
//! queue_bytes_per_peer = 33554432   # bytes waiting for one peer (32 MiB)
//! inbox_bytes_per_peer = 33554432   # bytes from one peer waiting in the inbox (32 MiB)
//! handshake_timeout_secs = 5
//! max_handshakes_per_address = 8    # unauthenticated connections from one address
//! handshake_signatures_per_sec = 50 # HSM signatures spent on TLS handshakes
//! threshold = 11              # signers needed to sign; default: more than 70% of the set
//!
//! [[peer.bootstrap]]
//! identity = "02c6..."        # the peer's identity public key, from its `peer card`
//! endpoint = "signer-2.example.org:4122"
//! spki_pin = "9f3a..."        # optional: SHA-256 of its certificate's public key info
//! ```

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::Deserialize;

use super::{limits::Limits, set::Member, PeerError, SignerSet};

/// The `[peer]` section.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// Address the peer listener binds.
    pub listen: SocketAddr,
    /// `host:port` other signers dial; defaults to `listen`.
    pub public_endpoint: Option<String>,
    /// The certificate (DER) made from the custody TLS key. Made when missing, expired, or made
    /// for other keys; kept so that its fingerprint stays what `peer card` printed.
    pub cert_path: PathBuf,
    /// The lifetime (not_after - not_before) of the certificate this signer makes.
    #[serde(default = "default_validity_days")]
    pub cert_validity_days: u32,
    /// Peer certificates living longer than this are refused; ours must fit too.
    #[serde(default = "default_validity_days")]
    pub max_cert_lifetime_days: u32,
    pub max_message_bytes: Option<usize>,
    pub rate_per_peer: Option<u32>,
    pub queue_depth: Option<usize>,
    pub queue_bytes_per_peer: Option<usize>,
    pub inbox_bytes_per_peer: Option<usize>,
    pub handshake_timeout_secs: Option<u64>,
    pub max_handshakes_per_address: Option<usize>,
    pub handshake_signatures_per_sec: Option<u32>,
    /// Signers needed to sign; default: more than 70% of the bootstrap set.
    pub threshold: Option<u32>,
    /// The signer set until it is read from the chain.
    #[serde(default)]
    pub bootstrap: Vec<BootstrapMember>,
}

/// One `[[peer.bootstrap]]` entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootstrapMember {
    /// Compressed secp256k1 identity public key, hex.
    pub identity: String,
    pub endpoint: Option<String>,
    /// SHA-256 of the peer certificate's SubjectPublicKeyInfo, hex.
    pub spki_pin: Option<String>,
}

fn default_validity_days() -> u32 {
    30
}

fn days(n: u32) -> Duration {
    Duration::from_secs(u64::from(n.min(3650)) * 86_400)
}

impl PeerConfig {
    pub fn endpoint(&self) -> String {
        self.public_endpoint
            .clone()
            .unwrap_or_else(|| self.listen.to_string())
    }

    /// The lifetime of the certificate we make: `cert_validity_days`, which must not exceed
    /// `max_cert_lifetime_days` (peers with the same maximum would refuse it).
    pub fn validity(&self) -> Result<Duration, PeerError> {
        if self.cert_validity_days == 0 || self.max_cert_lifetime_days == 0 {
            return Err(PeerError::Config(
                "cert_validity_days and max_cert_lifetime_days must be at least 1".into(),
            ));
        }
        if self.cert_validity_days > self.max_cert_lifetime_days {
            return Err(PeerError::Config(format!(
                "cert_validity_days = {} exceeds max_cert_lifetime_days = {}: peers would refuse \
                 our certificate; lower cert_validity_days",
                self.cert_validity_days, self.max_cert_lifetime_days
            )));
        }
        Ok(days(self.cert_validity_days))
    }

    pub fn limits(&self) -> Result<Limits, PeerError> {
        let mut limits = Limits::default();
        if let Some(n) = self.max_message_bytes {
            limits.max_message_bytes = n.clamp(1024, 64 << 20);
        }
        limits.max_cert_lifetime = days(self.max_cert_lifetime_days);
        if let Some(secs) = self.handshake_timeout_secs {
            if !(1..=120).contains(&secs) {
                return Err(PeerError::Config(format!(
                    "handshake_timeout_secs = {secs}: use 1 to 120 (a few seconds)"
                )));
            }
            limits.handshake_timeout = Duration::from_secs(secs);
        }
        if let Some(n) = self.max_handshakes_per_address {
            limits.max_handshakes_per_address = n.max(1);
        }
        if let Some(n) = self.handshake_signatures_per_sec {
            limits.handshake_signatures_per_sec = n.max(1);
        }
        for (key, value, field) in [
            (
                "inbox_bytes_per_peer",
                self.inbox_bytes_per_peer,
                &mut limits.inbox_bytes_per_peer,
            ),
            (
                "queue_bytes_per_peer",
                self.queue_bytes_per_peer,
                &mut limits.queue_bytes_per_peer,
            ),
        ] {
            if let Some(n) = value {
                *field = n;
            }
            let least = limits.max_message_bytes + super::quota::MESSAGE_OVERHEAD;
            if *field < least {
                return Err(PeerError::Config(format!(
                    "{key} = {} is below one message of max_message_bytes = {} (plus {} bytes of \
                     overhead); raise it to at least {least}",
                    *field,
                    limits.max_message_bytes,
                    super::quota::MESSAGE_OVERHEAD
                )));
            }
        }
        if let Some(r) = self.rate_per_peer {
            limits.rate_per_sec = r.max(1);
            limits.burst = r.saturating_mul(2).max(1);
        }
        if let Some(q) = self.queue_depth {
            limits.queue_depth = q.clamp(1, 1 << 20);
        }
        Ok(limits)
    }

    /// The bootstrap signer set. Every entry must parse: a typo must not silently shrink the set.
    pub fn bootstrap_set(&self) -> Result<SignerSet, PeerError> {
        let mut members = Vec::with_capacity(self.bootstrap.len());
        for (i, m) in self.bootstrap.iter().enumerate() {
            let bytes = hex::decode(m.identity.trim()).map_err(|e| {
                PeerError::Config(format!(
                    "[[peer.bootstrap]] #{}: identity is not hex: {e}",
                    i + 1
                ))
            })?;
            let identity = secp256k1::PublicKey::from_slice(&bytes).map_err(|_| {
                PeerError::Config(format!(
                    "[[peer.bootstrap]] #{}: identity is not a secp256k1 public key; copy it from the peer's `peer card`",
                    i + 1
                ))
            })?;
            let spki_pin = match &m.spki_pin {
                None => None,
                Some(pin) => Some(
                    hex::decode(pin.trim())
                        .ok()
                        .and_then(|b| <[u8; 32]>::try_from(b).ok())
                        .ok_or_else(|| {
                            PeerError::Config(format!(
                                "[[peer.bootstrap]] #{}: spki_pin must be 64 hex characters (SHA-256)",
                                i + 1
                            ))
                        })?,
                ),
            };
            members.push((
                identity,
                Member {
                    endpoint: m.endpoint.clone(),
                    spki_pin,
                },
            ));
        }
        if members.is_empty() {
            return Ok(SignerSet::default());
        }
        let n = u32::try_from(members.len())
            .map_err(|_| PeerError::Config("[[peer.bootstrap]]: too many entries".into()))?;
        let threshold = self
            .threshold
            .unwrap_or_else(|| SignerSet::default_threshold(n));
        SignerSet::new(members, threshold)
            .map_err(|e| PeerError::Config(format!("[[peer.bootstrap]]: {}", e.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<PeerConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn bootstrap_entries_must_parse() {
        let base = "listen = \"127.0.0.1:0\"\ncert_path = \"/tmp/c.der\"\n";
        let key = "0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798";
        let ok = parse(&format!(
            "{base}[[bootstrap]]\nidentity = \"{key}\"\nendpoint = \"a:1\"\n"
        ))
        .unwrap();
        assert_eq!(ok.bootstrap_set().unwrap().len(), 1);
        let bad = parse(&format!("{base}[[bootstrap]]\nidentity = \"02ab\"\n")).unwrap();
        assert!(bad.bootstrap_set().unwrap_err().to_string().contains("#1"));
        let pin = parse(&format!(
            "{base}[[bootstrap]]\nidentity = \"{key}\"\nspki_pin = \"abcd\"\n"
        ))
        .unwrap();
        assert!(pin
            .bootstrap_set()
            .unwrap_err()
            .to_string()
            .contains("spki_pin"));
        assert!(parse(&format!("{base}lisen = 1\n"))
            .unwrap_err()
            .contains("lisen"));
    }

    #[test]
    fn lifetime_and_byte_limits_are_checked() {
        let base = "listen = \"127.0.0.1:0\"\ncert_path = \"/tmp/c.der\"\n";
        let defaults = parse(base).unwrap();
        assert_eq!(defaults.validity().unwrap(), days(30));
        let limits = defaults.limits().unwrap();
        assert_eq!(limits.max_cert_lifetime, days(30));
        assert!(limits.inbox_bytes_per_peer + limits.queue_bytes_per_peer <= 64 << 20);
        let long = parse(&format!("{base}cert_validity_days = 365\n")).unwrap();
        let err = long.validity().unwrap_err().to_string();
        assert!(err.contains("max_cert_lifetime_days = 30"), "{err}");
        let raised = parse(&format!(
            "{base}cert_validity_days = 60\nmax_cert_lifetime_days = 90\n"
        ))
        .unwrap();
        assert_eq!(raised.validity().unwrap(), days(60));
        assert_eq!(raised.limits().unwrap().max_cert_lifetime, days(90));
        let small = parse(&format!("{base}inbox_bytes_per_peer = 1000\n")).unwrap();
        let err = small.limits().unwrap_err().to_string();
        assert!(err.contains("inbox_bytes_per_peer = 1000"), "{err}");
        let slow = parse(&format!("{base}handshake_timeout_secs = 0\n")).unwrap();
        assert!(slow.limits().is_err());
        let tuned = parse(&format!(
            "{base}handshake_timeout_secs = 3\nmax_handshakes_per_address = 2\nhandshake_signatures_per_sec = 7\n"
        ))
        .unwrap()
        .limits()
        .unwrap();
        assert_eq!(tuned.handshake_timeout, Duration::from_secs(3));
        assert_eq!(tuned.max_handshakes_per_address, 2);
        assert_eq!(tuned.handshake_signatures_per_sec, 7);
    }
}
