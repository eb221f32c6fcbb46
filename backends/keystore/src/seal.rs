//! Sealed blobs: `0x01 || 24-byte nonce || XChaCha20-Poly1305 ciphertext and tag`.
//!
//! The AAD is a domain tag, the sealing key's label and the caller's AAD, so a blob sealed under
//! one label or for one context opens under no other. Every seal draws a fresh random nonce.

use sbtc_custody::KeyLabel;
use zeroize::Zeroizing;

use crate::crypto::{aead_decrypt, aead_encrypt, put, NONCE_LEN, TAG_LEN};

const FORMAT: u8 = 0x01;
const DOMAIN: &[u8] = b"sbtc-hsm-signer/keystore/seal/v1";
const HEADER_LEN: usize = 1 + NONCE_LEN;

/// How the keystore seals, as [`sbtc_custody::Capabilities::seal_method`] reports it.
pub(crate) const METHOD: &str =
    "XChaCha20-Poly1305 (random 24-byte nonce) under a 256-bit key kept encrypted in the keystore file";

/// Why a blob did not open.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum UnsealError {
    /// Shorter than header and tag: not a blob from this backend.
    TooShort(usize),
    /// Unknown format byte, changed bytes, wrong AAD or wrong key.
    Auth,
}

fn aad(label: &KeyLabel, caller_aad: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(DOMAIN.len() + label.as_str().len() + caller_aad.len() + 8);
    put(&mut out, DOMAIN);
    put(&mut out, label.as_str().as_bytes());
    out.extend_from_slice(caller_aad);
    out
}

pub(crate) fn seal(
    key: &[u8; 32],
    label: &KeyLabel,
    plaintext: &[u8],
    caller_aad: &[u8],
) -> Result<Vec<u8>, ()> {
    let (nonce, ct) = aead_encrypt(key, plaintext, &aad(label, caller_aad))?;
    let mut blob = Vec::with_capacity(HEADER_LEN + ct.len());
    blob.push(FORMAT);
    blob.extend_from_slice(&nonce);
    blob.extend_from_slice(&ct);
    Ok(blob)
}

pub(crate) fn unseal(
    key: &[u8; 32],
    label: &KeyLabel,
    blob: &[u8],
    caller_aad: &[u8],
) -> Result<Zeroizing<Vec<u8>>, UnsealError> {
    if blob.len() < HEADER_LEN + TAG_LEN {
        return Err(UnsealError::TooShort(blob.len()));
    }
    // A flipped bit in the format byte is tampering like any other, so it is not "corrupt".
    if blob[0] != FORMAT {
        return Err(UnsealError::Auth);
    }
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&blob[1..HEADER_LEN]);
    aead_decrypt(key, &nonce, &blob[HEADER_LEN..], &aad(label, caller_aad))
        .map_err(|()| UnsealError::Auth)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_label_and_aad_and_every_bit() {
        let key = [9u8; 32];
        let a = KeyLabel::new("seal").unwrap();
        let b = KeyLabel::new("seal-2").unwrap();
        let blob = seal(&key, &a, b"share", b"ctx").unwrap();
        assert_eq!(
            unseal(&key, &a, &blob, b"ctx").unwrap().as_slice(),
            b"share"
        );
        assert_eq!(unseal(&key, &b, &blob, b"ctx"), Err(UnsealError::Auth));
        assert_eq!(unseal(&key, &a, &blob, b"ctx2"), Err(UnsealError::Auth));
        assert_eq!(
            unseal(&[8u8; 32], &a, &blob, b"ctx"),
            Err(UnsealError::Auth)
        );
        for i in 0..blob.len() * 8 {
            let mut bad = blob.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert_eq!(
                unseal(&key, &a, &bad, b"ctx"),
                Err(UnsealError::Auth),
                "bit {i}"
            );
        }
        assert_eq!(
            unseal(&key, &a, &blob[..10], b"ctx"),
            Err(UnsealError::TooShort(10))
        );
        assert_ne!(seal(&key, &a, b"share", b"ctx").unwrap(), blob);
    }
}
