//! Sealing with a YubiHSM2 HMAC key.
//!
//! The device's data-wrapping commands (`wrap_data`/`unwrap_data`) would keep the whole cipher on
//! the device, but they carry no associated data, and the test double (MockHsm) cannot run them.
//! Instead every blob gets its own data key, derived on the device:
//!
//! ```text
//! nonce    = 32 random bytes (host OS RNG)
//! data key = HMAC-SHA256(device HMAC key, "sbtc-hsm-signer seal v1" 0x00 || nonce)
//! blob     = 0x01 || nonce || AES-256-GCM(data key, iv = 0^12, plaintext,
//!                                         aad = 0x01 || len(label) || label || caller aad)
//! ```
//!
//! Without the device no data key can be made, so a stolen database is useless; the HMAC key never
//! leaves the device (nor may it, by its capabilities). The derived data key does exist briefly in
//! host memory: in the yubihsm crate's response buffers (not zeroized) and in ours (zeroized right
//! after use). Someone who can read the signer's memory at that moment learns that one blob's key,
//! which is no more than they would learn from the plaintext itself.
//!
//! The GCM IV is fixed because each data key encrypts exactly one message: the 32-byte nonce makes
//! a repeated key as unlikely as a SHA-256 collision.

use aes_gcm::{
    aead::{Aead, KeyInit, Payload},
    Aes256Gcm, Nonce,
};
use rand::RngCore;
use sbtc_custody::{Error, ErrorKind, KeyLabel, Operation, Result, SealedBlob, SecretBytes};
use zeroize::Zeroizing;

use crate::device::BACKEND;

/// The format byte of blobs sealed by this module.
pub(crate) const FORMAT_V1: u8 = 0x01;
pub(crate) const NONCE_LEN: usize = 32;
const TAG_LEN: usize = 16;
const KDF_CONTEXT: &[u8] = b"sbtc-hsm-signer seal v1\0";
const GCM_IV: [u8; 12] = [0u8; 12];

/// A fresh random nonce for one blob.
pub(crate) fn fresh_nonce() -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    nonce
}

/// What the device's HMAC key is asked to sign to make the data key of `nonce`.
pub(crate) fn kdf_input(nonce: &[u8; NONCE_LEN]) -> Vec<u8> {
    let mut m = Vec::with_capacity(KDF_CONTEXT.len() + NONCE_LEN);
    m.extend_from_slice(KDF_CONTEXT);
    m.extend_from_slice(nonce);
    m
}

/// Binds the format and the key's label into the AAD, so that a blob moved to another label (or
/// read as another format) fails authentication.
fn full_aad(label: &KeyLabel, aad: &[u8]) -> Vec<u8> {
    let l = label.as_str().as_bytes();
    let mut out = Vec::with_capacity(2 + l.len() + aad.len());
    out.push(FORMAT_V1);
    // KeyLabel is at most 40 bytes, so its length fits one byte.
    out.push(l.len() as u8);
    out.extend_from_slice(l);
    out.extend_from_slice(aad);
    out
}

/// The parts of a sealed blob.
pub(crate) struct Parsed<'a> {
    pub nonce: [u8; NONCE_LEN],
    pub ciphertext: &'a [u8],
}

/// Splits a blob. Too short is `Truncated`; any other format byte is `Tampered`, because a flipped
/// format byte is as much a change as a flipped ciphertext byte.
pub(crate) fn parse<'a>(label: &KeyLabel, blob: &'a SealedBlob) -> Result<Parsed<'a>> {
    let bytes = blob.as_bytes();
    let min = 1 + NONCE_LEN + TAG_LEN;
    if bytes.len() < min {
        return Err(Error::new(BACKEND, Operation::Unseal, ErrorKind::Truncated)
            .label(label)
            .detail(format!(
                "the sealed blob has {} bytes; a YubiHSM2 blob has at least {min}",
                bytes.len()
            )));
    }
    if bytes[0] != FORMAT_V1 {
        return Err(Error::new(BACKEND, Operation::Unseal, ErrorKind::Tampered)
            .label(label)
            .detail(format!(
                "the blob starts with 0x{:02x}, not the YubiHSM2 seal format 0x{FORMAT_V1:02x}: it \
                 was changed, or sealed by another backend",
                bytes[0]
            )));
    }
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&bytes[1..1 + NONCE_LEN]);
    Ok(Parsed {
        nonce,
        ciphertext: &bytes[1 + NONCE_LEN..],
    })
}

fn cipher(data_key: &Zeroizing<[u8; 32]>) -> Aes256Gcm {
    // With the `zeroize` feature the cipher wipes its key schedule on drop.
    Aes256Gcm::new(data_key.as_ref().into())
}

/// Encrypts on the host under the data key derived for `nonce`.
pub(crate) fn seal(
    label: &KeyLabel,
    nonce: &[u8; NONCE_LEN],
    data_key: Zeroizing<[u8; 32]>,
    plaintext: &[u8],
    aad: &[u8],
) -> Result<SealedBlob> {
    let aad = full_aad(label, aad);
    let ciphertext = cipher(&data_key)
        .encrypt(
            &Nonce::from(GCM_IV),
            Payload {
                msg: plaintext,
                aad: &aad,
            },
        )
        .map_err(|_| {
            Error::new(BACKEND, Operation::Seal, ErrorKind::Internal)
                .label(label)
                .detail("AES-GCM refused to encrypt (plaintext too long?)")
        })?;
    drop(data_key);
    let mut blob = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len());
    blob.push(FORMAT_V1);
    blob.extend_from_slice(nonce);
    blob.extend_from_slice(&ciphertext);
    Ok(SealedBlob::from_bytes(blob))
}

/// Decrypts and authenticates; any mismatch is `Tampered`.
pub(crate) fn unseal(
    label: &KeyLabel,
    parsed: &Parsed<'_>,
    data_key: Zeroizing<[u8; 32]>,
    aad: &[u8],
) -> Result<SecretBytes> {
    let aad = full_aad(label, aad);
    let plaintext = cipher(&data_key)
        .decrypt(
            &Nonce::from(GCM_IV),
            Payload {
                msg: parsed.ciphertext,
                aad: &aad,
            },
        )
        .map_err(|_| {
            Error::new(BACKEND, Operation::Unseal, ErrorKind::Tampered)
                .label(label)
                .detail("the blob does not authenticate under this sealing key and AAD")
        })?;
    drop(data_key);
    Ok(SecretBytes::new(plaintext))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label() -> KeyLabel {
        KeyLabel::new("seal").unwrap()
    }

    #[test]
    fn round_trip_and_binding() {
        let nonce = [9u8; NONCE_LEN];
        let key = Zeroizing::new([5u8; 32]);
        let blob = seal(&label(), &nonce, key.clone(), b"share", b"ctx").unwrap();
        assert_eq!(blob.len(), 1 + NONCE_LEN + 5 + TAG_LEN);
        let parsed = parse(&label(), &blob).unwrap();
        assert_eq!(parsed.nonce, nonce);
        let out = unseal(&label(), &parsed, key.clone(), b"ctx").unwrap();
        assert_eq!(out.expose(), b"share");
        // The label is bound in: the same blob under another label's name fails.
        let other = KeyLabel::new("seal2").unwrap();
        let e = unseal(&other, &parsed, key, b"ctx").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Tampered);
    }

    #[test]
    fn short_and_foreign_blobs() {
        let e = parse(&label(), &SealedBlob::from_bytes(vec![1; 10]))
            .err()
            .unwrap();
        assert_eq!(e.kind(), ErrorKind::Truncated);
        let e = parse(&label(), &SealedBlob::from_bytes(vec![2; 80]))
            .err()
            .unwrap();
        assert_eq!(e.kind(), ErrorKind::Tampered);
    }
}
