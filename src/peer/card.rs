//! `peer card`: what an operator hands to the other operators so they can admit this signer.

use super::{cert, PeerConfig, PeerError};
use crate::keys::Keys;

/// The identity key, the endpoint, and the certificate's fingerprint and SPKI pin.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PeerCard {
    /// Compressed secp256k1 identity public key, hex: the `identity` of a `[[peer.bootstrap]]` entry.
    pub identity: String,
    pub endpoint: String,
    /// SHA-256 of the certificate (DER), hex.
    pub cert_sha256: String,
    /// SHA-256 of the certificate's SubjectPublicKeyInfo, hex: the optional `spki_pin`.
    pub spki_sha256: String,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    /// True if the certificate was made just now (none was kept, or it had to be renewed).
    pub new_certificate: bool,
}

impl PeerCard {
    pub fn to_text(&self) -> String {
        format!(
            "identity     {}\nendpoint     {}\ncert sha256  {}\nspki sha256  {}\nvalid        {} .. {} (unix seconds){}\n",
            self.identity,
            self.endpoint,
            self.cert_sha256,
            self.spki_sha256,
            self.not_before,
            self.not_after,
            if self.new_certificate {
                "\nnote         a new certificate was made and kept at [peer] cert_path"
            } else {
                ""
            }
        )
    }

    /// As a `[[peer.bootstrap]]` entry for the other operators' configs.
    pub fn to_bootstrap_toml(&self) -> String {
        format!(
            "[[peer.bootstrap]]\nidentity = \"{}\"\nendpoint = \"{}\"\nspki_pin = \"{}\"\n",
            self.identity, self.endpoint, self.spki_sha256
        )
    }
}

/// Loads (or makes and keeps) the certificate at `[peer] cert_path` through `keys` and builds
/// the card.
pub async fn card(peer: &PeerConfig, keys: &Keys) -> Result<PeerCard, PeerError> {
    let (certificate, new_certificate) = cert::load_or_generate(
        &peer.cert_path,
        &keys.custody,
        &keys.tls,
        &keys.identity,
        peer.validity()?,
    )
    .await?;
    let info = certificate.info();
    Ok(PeerCard {
        identity: hex::encode(info.identity.serialize()),
        endpoint: peer.endpoint(),
        cert_sha256: hex::encode(certificate.fingerprint()),
        spki_sha256: hex::encode(info.spki_sha256()),
        not_before: info.not_before,
        not_after: info.not_after,
        new_certificate,
    })
}
