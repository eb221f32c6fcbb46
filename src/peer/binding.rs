//! The binding between a signer's identity key and its TLS certificate.
//!
//! The certificate carries a non-critical X.509 extension, OID [`BINDING_OID`], whose value is a
//! DER OCTET STRING of 99 bytes: `version (1) || identity key (33, compressed secp256k1) ||
//! signature (65, r || s || v, low-S)`. The signature is the identity key's ECDSA signature of
//! [`digest`]: SHA-256 over a domain tag, the certificate's SubjectPublicKeyInfo (DER) and its
//! validity period. So the identity key vouches for exactly this TLS key for exactly this period;
//! the certificate's own self-signature adds nothing and is not relied on.

use sbtc_custody::RecoverableSignature;
use sha2::{Digest, Sha256};

/// 1.3.6.1.3 is the IANA "experimental" arc (RFC 1155); 8333.1 is ours within it. Changing it is
/// a protocol change: every signer compares it exactly.
pub const BINDING_OID: &[u64] = &[1, 3, 6, 1, 3, 8333, 1];
pub const BINDING_OID_STR: &str = "1.3.6.1.3.8333.1";
pub const BINDING_VERSION: u8 = 1;
const DOMAIN: &[u8] = b"sbtc-hsm-signer/peer-certificate-binding/v1";
const BODY_LEN: usize = 1 + 33 + 65;

/// Why a binding extension is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindingError {
    #[error("binding extension is {0} bytes, expected {len}", len = BODY_LEN + 2)]
    Length(usize),
    #[error("binding extension version {0} is not supported (expected {BINDING_VERSION})")]
    Version(u8),
    #[error("binding names an invalid secp256k1 identity key")]
    Identity,
    #[error("binding signature is malformed")]
    Signature,
}

/// What the identity key signs: the TLS key's SPKI and the validity period (Unix seconds).
pub fn digest(spki_der: &[u8], not_before: i64, not_after: i64) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(DOMAIN);
    h.update((spki_der.len() as u64).to_be_bytes());
    h.update(spki_der);
    h.update(not_before.to_be_bytes());
    h.update(not_after.to_be_bytes());
    h.finalize().into()
}

/// A parsed binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Binding {
    pub identity: secp256k1::PublicKey,
    pub signature: RecoverableSignature,
}

impl Binding {
    /// The extension value: a DER OCTET STRING around the 99-byte body.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(BODY_LEN + 2);
        out.push(0x04);
        out.push(BODY_LEN as u8);
        out.push(BINDING_VERSION);
        out.extend_from_slice(&self.identity.serialize());
        out.extend_from_slice(&self.signature.to_rsv());
        out
    }

    pub fn decode(value: &[u8]) -> Result<Binding, BindingError> {
        if value.len() != BODY_LEN + 2 || value[0] != 0x04 || usize::from(value[1]) != BODY_LEN {
            return Err(BindingError::Length(value.len()));
        }
        let body = &value[2..];
        if body[0] != BINDING_VERSION {
            return Err(BindingError::Version(body[0]));
        }
        let identity =
            secp256k1::PublicKey::from_slice(&body[1..34]).map_err(|_| BindingError::Identity)?;
        let rsv: [u8; 65] = body[34..].try_into().map_err(|_| BindingError::Signature)?;
        let signature =
            RecoverableSignature::from_rsv(&rsv).map_err(|_| BindingError::Signature)?;
        Ok(Binding {
            identity,
            signature,
        })
    }

    /// True if the identity key signed this SPKI and validity period.
    pub fn verifies(&self, spki_der: &[u8], not_before: i64, not_after: i64) -> bool {
        self.signature
            .verify(&digest(spki_der, not_before, not_after), &self.identity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secp256k1::{Message, SecretKey, SECP256K1};

    #[test]
    fn round_trip_and_tamper() {
        let sk = SecretKey::from_slice(&[3u8; 32]).unwrap();
        let d = digest(b"spki", 10, 20);
        let sig = SECP256K1.sign_ecdsa_recoverable(&Message::from_digest(d), &sk);
        let b = Binding {
            identity: sk.public_key(SECP256K1),
            signature: RecoverableSignature::from_secp256k1(&sig),
        };
        let decoded = Binding::decode(&b.encode()).unwrap();
        assert_eq!(decoded, b);
        assert!(decoded.verifies(b"spki", 10, 20));
        assert!(!decoded.verifies(b"spki", 10, 21), "validity is bound");
        assert!(!decoded.verifies(b"spkj", 10, 20), "key is bound");
        let mut bad = b.encode();
        bad[2] = 9;
        assert_eq!(Binding::decode(&bad), Err(BindingError::Version(9)));
        assert_eq!(Binding::decode(&bad[..50]), Err(BindingError::Length(50)));
    }
}
