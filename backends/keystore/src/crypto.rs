//! What the file keys do: XChaCha20-Poly1305 for each private key and for the passphrase check
//! value, HMAC-SHA-256 over the whole file.
//!
//! Each AEAD binds its context in the associated data (format version, file id, label, kind,
//! public key), so an entry cannot be renamed, retyped or moved between files. The MAC covers every
//! field in order, so deleting, reordering or swapping entries is detected too, and so is a
//! changed generation counter (format version 2).

use chacha20poly1305::{
    aead::{Aead, KeyInit, Payload},
    XChaCha20Poly1305,
};
use hmac::{Hmac, Mac};
use rand::{rngs::OsRng, RngCore};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::{
    format::{Document, Entry, FORMAT_VERSION_1, MAGIC},
    kdf::FileKeys,
};

pub(crate) const NONCE_LEN: usize = 24;
pub(crate) const TAG_LEN: usize = 16;
/// Every stored secret (secp256k1 scalar, P-256 scalar, seal key) is 32 bytes.
pub(crate) const SECRET_LEN: usize = 32;

const CHECK_PLAINTEXT: &[u8] = b"sbtc-hsm-signer keystore passphrase check";
const CHECK_DOMAIN: &[u8] = b"sbtc-hsm-signer/keystore/passphrase-check";
const ENTRY_DOMAIN: &[u8] = b"sbtc-hsm-signer/keystore/entry";
const MAC_DOMAIN: &[u8] = b"sbtc-hsm-signer/keystore/file-mac";
/// The version the AADs of the check value and the entries name. Format version 2 only added the
/// generation counter (to the MAC), so entries and check values of version 1 files stay valid.
const AAD_VERSION: u32 = FORMAT_VERSION_1;

/// Appends a length-prefixed field, so that no two field lists encode to the same bytes.
pub(crate) fn put(buf: &mut Vec<u8>, field: &[u8]) {
    // Fields are labels, keys and ciphertexts; none comes near 4 GiB (the file is capped at 16 MiB).
    buf.extend_from_slice(&(field.len() as u32).to_be_bytes());
    buf.extend_from_slice(field);
}

pub(crate) fn random_nonce() -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    OsRng.fill_bytes(&mut nonce);
    nonce
}

/// AEAD encryption under a 32-byte key with a fresh random nonce. Fails only for inputs far
/// beyond anything stored here.
pub(crate) fn aead_encrypt(
    key: &[u8; 32],
    plaintext: &[u8],
    aad: &[u8],
) -> Result<([u8; NONCE_LEN], Vec<u8>), ()> {
    let nonce = random_nonce();
    let ct = XChaCha20Poly1305::new(key.into())
        .encrypt(
            (&nonce).into(),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| ())?;
    Ok((nonce, ct))
}

/// AEAD decryption; any change to key, nonce, ciphertext or AAD fails.
pub(crate) fn aead_decrypt(
    key: &[u8; 32],
    nonce: &[u8; NONCE_LEN],
    ciphertext: &[u8],
    aad: &[u8],
) -> Result<Zeroizing<Vec<u8>>, ()> {
    XChaCha20Poly1305::new(key.into())
        .decrypt(
            nonce.into(),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| ())
}

/// The AAD of the passphrase check value binds the KDF inputs, and nothing else: a change to any
/// other field must show as tampering (the MAC), not as a wrong passphrase.
fn check_aad(doc: &Document) -> Vec<u8> {
    let mut aad = Vec::new();
    put(&mut aad, CHECK_DOMAIN);
    aad.extend_from_slice(&AAD_VERSION.to_be_bytes());
    put(&mut aad, &doc.salt);
    aad.extend_from_slice(&doc.kdf.memory_kib().to_be_bytes());
    aad.extend_from_slice(&doc.kdf.iterations().to_be_bytes());
    aad.extend_from_slice(&doc.kdf.parallelism().to_be_bytes());
    aad
}

pub(crate) fn make_check(keys: &FileKeys, doc: &mut Document) -> Result<(), ()> {
    let (nonce, ct) = aead_encrypt(keys.entry_key(), CHECK_PLAINTEXT, &check_aad(doc))?;
    doc.check_nonce = nonce;
    doc.check_ciphertext = ct;
    Ok(())
}

/// True if these keys (that is, this passphrase) open the file.
pub(crate) fn passphrase_matches(keys: &FileKeys, doc: &Document) -> bool {
    match aead_decrypt(
        keys.entry_key(),
        &doc.check_nonce,
        &doc.check_ciphertext,
        &check_aad(doc),
    ) {
        Ok(plain) => plain.as_slice() == CHECK_PLAINTEXT,
        Err(()) => false,
    }
}

fn entry_aad(id: &[u8], entry: &Entry) -> Vec<u8> {
    let mut aad = Vec::new();
    put(&mut aad, ENTRY_DOMAIN);
    aad.extend_from_slice(&AAD_VERSION.to_be_bytes());
    put(&mut aad, id);
    put(&mut aad, entry.label.as_str().as_bytes());
    put(&mut aad, entry.kind.as_str().as_bytes());
    put(&mut aad, &entry.public_key_bytes());
    aad
}

/// Encrypts `secret` into `entry` (whose label, kind and public key are already set).
pub(crate) fn seal_entry(
    keys: &FileKeys,
    id: &[u8],
    entry: &mut Entry,
    secret: &[u8; SECRET_LEN],
) -> Result<(), ()> {
    let (nonce, ct) = aead_encrypt(keys.entry_key(), secret, &entry_aad(id, entry))?;
    entry.nonce = nonce;
    entry.ciphertext = ct;
    Ok(())
}

/// Decrypts one private key for the length of one operation; the caller drops it right after.
pub(crate) fn open_entry(
    keys: &FileKeys,
    id: &[u8],
    entry: &Entry,
) -> Result<Zeroizing<[u8; SECRET_LEN]>, ()> {
    let plain = aead_decrypt(
        keys.entry_key(),
        &entry.nonce,
        &entry.ciphertext,
        &entry_aad(id, entry),
    )?;
    let mut out = Zeroizing::new([0u8; SECRET_LEN]);
    if plain.len() != SECRET_LEN {
        return Err(());
    }
    out.copy_from_slice(&plain);
    Ok(out)
}

/// The canonical bytes the file MAC covers: every field but the MAC, in file order.
fn mac_input(doc: &Document) -> Vec<u8> {
    let mut buf = Vec::new();
    put(&mut buf, MAC_DOMAIN);
    put(&mut buf, MAGIC.as_bytes());
    buf.extend_from_slice(&doc.version.to_be_bytes());
    put(&mut buf, &doc.id);
    if doc.version > FORMAT_VERSION_1 {
        buf.extend_from_slice(&doc.generation.to_be_bytes());
    }
    put(&mut buf, b"argon2id");
    buf.extend_from_slice(&doc.kdf.memory_kib().to_be_bytes());
    buf.extend_from_slice(&doc.kdf.iterations().to_be_bytes());
    buf.extend_from_slice(&doc.kdf.parallelism().to_be_bytes());
    put(&mut buf, &doc.salt);
    put(&mut buf, &doc.check_nonce);
    put(&mut buf, &doc.check_ciphertext);
    buf.extend_from_slice(&(doc.entries.len() as u32).to_be_bytes());
    for e in &doc.entries {
        put(&mut buf, e.label.as_str().as_bytes());
        put(&mut buf, e.kind.as_str().as_bytes());
        put(&mut buf, &e.public_key_bytes());
        put(&mut buf, &e.nonce);
        put(&mut buf, &e.ciphertext);
    }
    buf
}

fn mac_engine(keys: &FileKeys, doc: &Document) -> Result<Hmac<Sha256>, ()> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(keys.mac_key()).map_err(|_| ())?;
    mac.update(&mac_input(doc));
    Ok(mac)
}

pub(crate) fn compute_mac(keys: &FileKeys, doc: &mut Document) -> Result<(), ()> {
    let tag = mac_engine(keys, doc)?.finalize().into_bytes();
    doc.mac.copy_from_slice(&tag);
    Ok(())
}

/// Constant-time check of the file MAC.
pub(crate) fn mac_matches(keys: &FileKeys, doc: &Document) -> bool {
    match mac_engine(keys, doc) {
        Ok(engine) => engine.verify_slice(&doc.mac).is_ok(),
        Err(()) => false,
    }
}
