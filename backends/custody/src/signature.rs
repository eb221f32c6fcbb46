//! Public keys and signatures, and the shared post-processing of raw ECDSA output from a device:
//! low-S normalisation and recovery-id search for secp256k1, DER encoding for P-256.

use std::fmt;

use p256::ecdsa::signature::hazmat::PrehashVerifier;
use secp256k1::{
    ecdsa::{RecoverableSignature as SecpRecoverable, RecoveryId, Signature as SecpSignature},
    Message, SECP256K1,
};

use crate::KeyKind;

/// Why raw signature bytes from a backend were unusable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("the device returned {0} signature bytes, expected 64 (r || s)")]
    Length(usize),
    #[error("the device returned r or s outside the curve order")]
    OutOfRange,
    #[error("no recovery id yields the key's public key: the signature is not from this key")]
    NotFromKey,
    #[error("public key bytes are not a valid {0} point")]
    BadPublicKey(KeyKind),
}

/// A public key held by custody.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum PublicKey {
    Secp256k1(secp256k1::PublicKey),
    P256(p256::PublicKey),
}

impl PublicKey {
    pub fn kind(&self) -> KeyKind {
        match self {
            PublicKey::Secp256k1(_) => KeyKind::Secp256k1,
            PublicKey::P256(_) => KeyKind::P256,
        }
    }

    /// Parses a SEC1 point (compressed or uncompressed) of the given kind.
    pub fn from_sec1(kind: KeyKind, bytes: &[u8]) -> Result<Self, SignatureError> {
        match kind {
            KeyKind::Secp256k1 => secp256k1::PublicKey::from_slice(bytes)
                .map(PublicKey::Secp256k1)
                .map_err(|_| SignatureError::BadPublicKey(kind)),
            KeyKind::P256 => p256::PublicKey::from_sec1_bytes(bytes)
                .map(PublicKey::P256)
                .map_err(|_| SignatureError::BadPublicKey(kind)),
            KeyKind::Seal => Err(SignatureError::BadPublicKey(kind)),
        }
    }

    /// 33-byte compressed SEC1 encoding.
    pub fn to_sec1_compressed(&self) -> Vec<u8> {
        match self {
            PublicKey::Secp256k1(k) => k.serialize().to_vec(),
            PublicKey::P256(k) => {
                use p256::elliptic_curve::sec1::ToEncodedPoint;
                k.to_encoded_point(true).as_bytes().to_vec()
            }
        }
    }

    /// 65-byte uncompressed SEC1 encoding.
    pub fn to_sec1_uncompressed(&self) -> Vec<u8> {
        match self {
            PublicKey::Secp256k1(k) => k.serialize_uncompressed().to_vec(),
            PublicKey::P256(k) => {
                use p256::elliptic_curve::sec1::ToEncodedPoint;
                k.to_encoded_point(false).as_bytes().to_vec()
            }
        }
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.to_sec1_compressed())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({}:{})", self.kind(), self.to_hex())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// A low-S secp256k1 ECDSA signature with its recovery id (65 bytes).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RecoverableSignature {
    rs: [u8; 64],
    recovery_id: u8,
}

impl RecoverableSignature {
    /// r || s || v, v in 0..=3.
    pub fn to_rsv(&self) -> [u8; 65] {
        let mut out = [0u8; 65];
        out[..64].copy_from_slice(&self.rs);
        out[64] = self.recovery_id;
        out
    }

    /// v || r || s, the order Stacks transactions use.
    pub fn to_vrs(&self) -> [u8; 65] {
        let mut out = [0u8; 65];
        out[0] = self.recovery_id;
        out[1..].copy_from_slice(&self.rs);
        out
    }

    /// Parses r || s || v.
    pub fn from_rsv(bytes: &[u8; 65]) -> Result<Self, SignatureError> {
        let mut rs = [0u8; 64];
        rs.copy_from_slice(&bytes[..64]);
        let sig = RecoverableSignature {
            rs,
            recovery_id: bytes[64],
        };
        sig.to_secp256k1()?;
        Ok(sig)
    }

    /// Takes a signature from libsecp256k1 (or any source with a trusted recovery id), making it
    /// low-S: negating s flips the parity of R's y coordinate, so bit 0 of the recovery id flips.
    pub fn from_secp256k1(sig: &SecpRecoverable) -> Self {
        let (id, rs) = sig.serialize_compact();
        let mut plain = sig.to_standard();
        plain.normalize_s();
        let low = plain.serialize_compact();
        let mut recovery_id = id.to_i32() as u8;
        if low != rs {
            recovery_id ^= 1;
        }
        RecoverableSignature {
            rs: low,
            recovery_id,
        }
    }

    pub fn compact(&self) -> &[u8; 64] {
        &self.rs
    }

    pub fn recovery_id(&self) -> u8 {
        self.recovery_id
    }

    pub fn to_secp256k1(&self) -> Result<SecpRecoverable, SignatureError> {
        let id = RecoveryId::from_i32(i32::from(self.recovery_id))
            .map_err(|_| SignatureError::OutOfRange)?;
        SecpRecoverable::from_compact(&self.rs, id).map_err(|_| SignatureError::OutOfRange)
    }

    /// The public key that made this signature over `digest`.
    pub fn recover(&self, digest: &[u8; 32]) -> Result<secp256k1::PublicKey, SignatureError> {
        SECP256K1
            .recover_ecdsa(&Message::from_digest(*digest), &self.to_secp256k1()?)
            .map_err(|_| SignatureError::NotFromKey)
    }

    /// True if this is a valid low-S signature of `digest` by `key`.
    pub fn verify(&self, digest: &[u8; 32], key: &secp256k1::PublicKey) -> bool {
        let Ok(sig) = SecpSignature::from_compact(&self.rs) else {
            return false;
        };
        SECP256K1
            .verify_ecdsa(&Message::from_digest(*digest), &sig, key)
            .is_ok()
    }
}

impl fmt::Debug for RecoverableSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RecoverableSignature({})", hex::encode(self.to_rsv()))
    }
}

/// Turns the raw r || s that a device returns into a low-S signature with recovery id, checking
/// that it is really `key`'s signature of `digest`.
pub fn normalize_secp256k1(
    raw: &[u8],
    digest: &[u8; 32],
    key: &secp256k1::PublicKey,
) -> Result<RecoverableSignature, SignatureError> {
    let rs: [u8; 64] = raw
        .try_into()
        .map_err(|_| SignatureError::Length(raw.len()))?;
    let mut sig = SecpSignature::from_compact(&rs).map_err(|_| SignatureError::OutOfRange)?;
    sig.normalize_s();
    let rs = sig.serialize_compact();
    let msg = Message::from_digest(*digest);
    for v in 0..4 {
        let id = RecoveryId::from_i32(v).map_err(|_| SignatureError::OutOfRange)?;
        let Ok(candidate) = SecpRecoverable::from_compact(&rs, id) else {
            continue;
        };
        if SECP256K1.recover_ecdsa(&msg, &candidate).ok().as_ref() == Some(key) {
            return Ok(RecoverableSignature {
                rs,
                recovery_id: v as u8,
            });
        }
    }
    Err(SignatureError::NotFromKey)
}

/// A P-256 ECDSA signature, r || s.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct P256Signature([u8; 64]);

impl P256Signature {
    pub fn from_raw(raw: &[u8]) -> Result<Self, SignatureError> {
        let rs: [u8; 64] = raw
            .try_into()
            .map_err(|_| SignatureError::Length(raw.len()))?;
        p256::ecdsa::Signature::from_slice(&rs).map_err(|_| SignatureError::OutOfRange)?;
        Ok(P256Signature(rs))
    }

    pub fn to_bytes(&self) -> [u8; 64] {
        self.0
    }

    /// ASN.1 DER, as TLS and X.509 carry it.
    pub fn to_der(&self) -> Vec<u8> {
        match p256::ecdsa::Signature::from_slice(&self.0) {
            Ok(sig) => sig.to_der().as_bytes().to_vec(),
            // from_raw already checked r and s.
            Err(_) => Vec::new(),
        }
    }

    pub fn verify(&self, digest: &[u8; 32], key: &p256::PublicKey) -> bool {
        let Ok(sig) = p256::ecdsa::Signature::from_slice(&self.0) else {
            return false;
        };
        p256::ecdsa::VerifyingKey::from(key)
            .verify_prehash(digest, &sig)
            .is_ok()
    }
}

impl fmt::Debug for P256Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "P256Signature({})", hex::encode(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secp256k1::SecretKey;

    #[test]
    fn high_s_is_normalised_and_recovers() {
        let sk = SecretKey::from_slice(&[7u8; 32]).unwrap();
        let pk = sk.public_key(SECP256K1);
        let digest = [42u8; 32];
        let sig = SECP256K1.sign_ecdsa(&Message::from_digest(digest), &sk);
        let low = sig.serialize_compact();
        // Make the high-S twin: s' = n - s.
        let mut high = low;
        let n = secp256k1::constants::CURVE_ORDER;
        let mut borrow = 0i16;
        for i in (0..32).rev() {
            let d = n[i] as i16 - low[32 + i] as i16 - borrow;
            high[32 + i] = d.rem_euclid(256) as u8;
            borrow = if d < 0 { 1 } else { 0 };
        }
        assert_ne!(high, low);
        let out = normalize_secp256k1(&high, &digest, &pk).unwrap();
        assert_eq!(out.compact(), &low);
        assert_eq!(out.recover(&digest).unwrap(), pk);
        assert!(out.verify(&digest, &pk));
        assert_eq!(out.to_vrs()[0], out.to_rsv()[64]);
    }

    #[test]
    fn from_secp256k1_keeps_the_recovery_id_true() {
        let sk = SecretKey::from_slice(&[9u8; 32]).unwrap();
        let pk = sk.public_key(SECP256K1);
        for i in 0..32u8 {
            let digest = [i; 32];
            let sig = SECP256K1.sign_ecdsa_recoverable(&Message::from_digest(digest), &sk);
            let ours = RecoverableSignature::from_secp256k1(&sig);
            assert_eq!(ours.recover(&digest).unwrap(), pk);
            assert!(ours.verify(&digest, &pk));
        }
    }

    #[test]
    fn signature_from_another_key_is_refused() {
        let sk = SecretKey::from_slice(&[7u8; 32]).unwrap();
        let other = SecretKey::from_slice(&[8u8; 32])
            .unwrap()
            .public_key(SECP256K1);
        let digest = [1u8; 32];
        let sig = SECP256K1.sign_ecdsa(&Message::from_digest(digest), &sk);
        assert_eq!(
            normalize_secp256k1(&sig.serialize_compact(), &digest, &other),
            Err(SignatureError::NotFromKey)
        );
        assert_eq!(
            normalize_secp256k1(&[0u8; 10], &digest, &other),
            Err(SignatureError::Length(10))
        );
    }
}
