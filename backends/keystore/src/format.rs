//! The keystore file: one JSON document per signer, hex for all bytes, so an operator can read
//! what it holds (labels, kinds, public keys, KDF settings) without the passphrase.
//!
//! ```json
//! {
//!   "format": "sbtc-hsm-signer-keystore",
//!   "version": 2,
//!   "id": "<16 bytes: the serial info() reports>",
//!   "generation": 7,
//!   "kdf": { "algorithm": "argon2id", "argon2_version": 19, "memory_kib": 65536,
//!            "iterations": 3, "parallelism": 1, "salt": "<32 bytes>" },
//!   "check": { "nonce": "<24 bytes>", "ciphertext": "<AEAD of a constant>" },
//!   "keys": [ { "label": "identity", "kind": "secp256k1", "public_key": "<SEC1 compressed>",
//!               "nonce": "<24 bytes>", "ciphertext": "<AEAD of the 32-byte private key>" } ],
//!   "mac": "<HMAC-SHA-256 of every field above>"
//! }
//! ```
//!
//! `generation` counts the writes since the file was created (1 at creation, one more on every
//! `generate` and `destroy`) and is covered by the MAC, so an older copy of the file cannot claim
//! to be newer; the rollback check compares it with a mark kept outside the file (`state.rs`).
//! Version 1 files (before the generation counter) are read as generation 0 and written back as
//! version 2 on their first change.
//!
//! Parsing sorts failures the way an operator acts on them: a file that ends early is
//! [`ParseError::Truncated`]; one that is not this format, has bad hex or impossible values is
//! [`ParseError::Corrupt`]; one from a newer release is [`ParseError::Newer`]. Authentication
//! (passphrase check, MAC) comes after parsing, in `keystore.rs`.

use sbtc_custody::{KeyInfo, KeyKind, KeyLabel, PublicKey};
use serde::{Deserialize, Serialize};

use crate::{crypto::NONCE_LEN, kdf::KdfParams};

pub(crate) const MAGIC: &str = "sbtc-hsm-signer-keystore";
/// The version this release writes.
pub(crate) const FORMAT_VERSION: u32 = 2;
/// The first version, without `generation`; still read.
pub(crate) const FORMAT_VERSION_1: u32 = 1;
/// A keystore with hundreds of keys is a few hundred KiB; anything far larger is not ours.
pub(crate) const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;
pub(crate) const ID_LEN: usize = 16;
pub(crate) const SALT_LEN: usize = 32;
pub(crate) const MAC_LEN: usize = 32;
const KDF_ALGORITHM: &str = "argon2id";
/// Argon2 version 1.3.
const ARGON2_VERSION: u32 = 0x13;

/// The decoded file. Holds only ciphertexts, public keys and parameters.
#[derive(Clone)]
pub(crate) struct Document {
    /// The format version the file was read in (written files are always [`FORMAT_VERSION`]).
    pub version: u32,
    pub id: [u8; ID_LEN],
    /// Writes since creation (0 for a version 1 file).
    pub generation: u64,
    pub kdf: KdfParams,
    pub salt: [u8; SALT_LEN],
    pub check_nonce: [u8; NONCE_LEN],
    pub check_ciphertext: Vec<u8>,
    pub entries: Vec<Entry>,
    pub mac: [u8; MAC_LEN],
}

/// One key: its name, kind, public key and the encrypted private (or seal) key.
#[derive(Clone)]
pub(crate) struct Entry {
    pub label: KeyLabel,
    pub kind: KeyKind,
    pub public_key: Option<PublicKey>,
    pub nonce: [u8; NONCE_LEN],
    pub ciphertext: Vec<u8>,
}

impl Entry {
    /// Compressed SEC1, or nothing for a seal key.
    pub(crate) fn public_key_bytes(&self) -> Vec<u8> {
        self.public_key
            .map(|k| k.to_sec1_compressed())
            .unwrap_or_default()
    }

    pub(crate) fn info(&self) -> KeyInfo {
        KeyInfo {
            label: self.label.clone(),
            kind: self.kind,
            public_key: self.public_key,
        }
    }
}

impl Document {
    pub(crate) fn find(&self, label: &KeyLabel) -> Option<&Entry> {
        self.entries.iter().find(|e| &e.label == label)
    }

    pub(crate) fn id_hex(&self) -> String {
        hex::encode(self.id)
    }

    /// The file bytes: pretty JSON and a final newline.
    pub(crate) fn to_bytes(&self) -> Result<Vec<u8>, String> {
        let json = FileJson {
            format: MAGIC.to_owned(),
            version: self.version,
            id: hex::encode(self.id),
            generation: (self.version >= FORMAT_VERSION).then_some(self.generation),
            kdf: KdfJson {
                algorithm: KDF_ALGORITHM.to_owned(),
                argon2_version: ARGON2_VERSION,
                memory_kib: self.kdf.memory_kib(),
                iterations: self.kdf.iterations(),
                parallelism: self.kdf.parallelism(),
                salt: hex::encode(self.salt),
            },
            check: CheckJson {
                nonce: hex::encode(self.check_nonce),
                ciphertext: hex::encode(&self.check_ciphertext),
            },
            keys: self
                .entries
                .iter()
                .map(|e| EntryJson {
                    label: e.label.to_string(),
                    kind: e.kind.to_string(),
                    public_key: e.public_key.map(|k| k.to_hex()),
                    nonce: hex::encode(e.nonce),
                    ciphertext: hex::encode(&e.ciphertext),
                })
                .collect(),
            mac: hex::encode(self.mac),
        };
        let mut bytes = serde_json::to_vec_pretty(&json).map_err(|e| e.to_string())?;
        bytes.push(b'\n');
        Ok(bytes)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileJson {
    format: String,
    version: u32,
    id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    generation: Option<u64>,
    kdf: KdfJson,
    check: CheckJson,
    keys: Vec<EntryJson>,
    mac: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KdfJson {
    algorithm: String,
    argon2_version: u32,
    memory_kib: u32,
    iterations: u32,
    parallelism: u32,
    salt: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckJson {
    nonce: String,
    ciphertext: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryJson {
    label: String,
    kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    public_key: Option<String>,
    nonce: String,
    ciphertext: String,
}

/// Why a file could not be read as a keystore.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ParseError {
    /// The file ends before the document does.
    Truncated(String),
    /// Not this format, or impossible contents.
    Corrupt(String),
    /// Written by a newer release in a format version this one does not know.
    Newer(u64),
}

pub(crate) fn parse(bytes: &[u8]) -> Result<Document, ParseError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ParseError::Truncated("the file is empty".into()));
    }
    // First as plain JSON, so that a cut-off file (EOF inside the document) is told apart from
    // one that is not JSON at all, and the format and version are checked before the fields.
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
        if e.is_eof() {
            ParseError::Truncated(format!("the JSON document ends early ({e})"))
        } else {
            ParseError::Corrupt(format!("not a JSON document ({e})"))
        }
    })?;
    let Some(object) = value.as_object() else {
        return Err(ParseError::Corrupt(
            "the file is JSON but not an object: not an sbtc-hsm-signer keystore".into(),
        ));
    };
    match object.get("format").and_then(|f| f.as_str()) {
        Some(MAGIC) => {}
        Some(other) => {
            return Err(ParseError::Corrupt(format!(
                "the format field is '{other}', not '{MAGIC}': not an sbtc-hsm-signer keystore"
            )))
        }
        None => {
            return Err(ParseError::Corrupt(format!(
                "no format field '{MAGIC}': not an sbtc-hsm-signer keystore"
            )))
        }
    }
    match object.get("version").and_then(|v| v.as_u64()) {
        Some(v) if v == u64::from(FORMAT_VERSION) || v == u64::from(FORMAT_VERSION_1) => {}
        Some(v) if v > u64::from(FORMAT_VERSION) => return Err(ParseError::Newer(v)),
        _ => {
            return Err(ParseError::Corrupt(format!(
            "the version field is missing or invalid (this release reads versions {FORMAT_VERSION_1} and {FORMAT_VERSION})"
        )))
        }
    }
    let json: FileJson = serde_json::from_value(value)
        .map_err(|e| ParseError::Corrupt(format!("unexpected structure: {e}")))?;
    decode(json)
}

fn decode(json: FileJson) -> Result<Document, ParseError> {
    if json.kdf.algorithm != KDF_ALGORITHM || json.kdf.argon2_version != ARGON2_VERSION {
        return Err(ParseError::Corrupt(format!(
            "unknown KDF '{}' version {} (expected {KDF_ALGORITHM} version {ARGON2_VERSION})",
            json.kdf.algorithm, json.kdf.argon2_version
        )));
    }
    // Checked before anything runs the KDF: a hostile file must not make us allocate 100 GiB.
    let kdf = KdfParams::insecure(
        json.kdf.memory_kib,
        json.kdf.iterations,
        json.kdf.parallelism,
    )
    .map_err(|e| ParseError::Corrupt(format!("refusing the file's KDF parameters: {e}")))?;

    let generation = match (json.version, json.generation) {
        (FORMAT_VERSION_1, None) => 0,
        (FORMAT_VERSION_1, Some(_)) => {
            return Err(ParseError::Corrupt(format!(
                "a version {FORMAT_VERSION_1} file has no generation field, but this one has"
            )))
        }
        (_, Some(g)) => g,
        (_, None) => {
            return Err(ParseError::Corrupt(format!(
                "the generation field is missing (version {} files have one)",
                json.version
            )))
        }
    };
    let entries = json
        .keys
        .into_iter()
        .enumerate()
        .map(|(i, e)| decode_entry(i, e))
        .collect::<Result<Vec<_>, _>>()?;

    Ok(Document {
        version: json.version,
        id: hex_array("id", &json.id)?,
        generation,
        kdf,
        salt: hex_array("kdf.salt", &json.kdf.salt)?,
        check_nonce: hex_array("check.nonce", &json.check.nonce)?,
        check_ciphertext: hex_vec("check.ciphertext", &json.check.ciphertext)?,
        entries,
        mac: hex_array("mac", &json.mac)?,
    })
}

fn decode_entry(index: usize, e: EntryJson) -> Result<Entry, ParseError> {
    let at = format!("keys[{index}]");
    let label =
        KeyLabel::new(&e.label).map_err(|err| ParseError::Corrupt(format!("{at}.label: {err}")))?;
    let kind: KeyKind = e
        .kind
        .parse()
        .map_err(|err| ParseError::Corrupt(format!("{at}.kind: {err}")))?;
    let public_key = match (kind, e.public_key) {
        (KeyKind::Seal, None) => None,
        (KeyKind::Seal, Some(_)) => {
            return Err(ParseError::Corrupt(format!(
                "{at} ('{label}') is a seal key but has a public key"
            )))
        }
        (_, None) => {
            return Err(ParseError::Corrupt(format!(
                "{at} ('{label}') is a {kind} key without a public key"
            )))
        }
        (_, Some(hex_key)) => {
            let bytes = hex_vec(&format!("{at}.public_key"), &hex_key)?;
            Some(
                PublicKey::from_sec1(kind, &bytes)
                    .map_err(|err| ParseError::Corrupt(format!("{at}.public_key: {err}")))?,
            )
        }
    };
    Ok(Entry {
        label,
        kind,
        public_key,
        nonce: hex_array(&format!("{at}.nonce"), &e.nonce)?,
        ciphertext: hex_vec(&format!("{at}.ciphertext"), &e.ciphertext)?,
    })
}

fn hex_vec(field: &str, s: &str) -> Result<Vec<u8>, ParseError> {
    hex::decode(s).map_err(|e| ParseError::Corrupt(format!("{field} is not valid hex ({e})")))
}

fn hex_array<const N: usize>(field: &str, s: &str) -> Result<[u8; N], ParseError> {
    let bytes = hex_vec(field, s)?;
    bytes.as_slice().try_into().map_err(|_| {
        ParseError::Corrupt(format!("{field} has {} bytes, expected {N}", bytes.len()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Document {
        Document {
            version: FORMAT_VERSION,
            id: [1; ID_LEN],
            generation: 3,
            kdf: KdfParams::insecure_for_tests(),
            salt: [2; SALT_LEN],
            check_nonce: [3; NONCE_LEN],
            check_ciphertext: vec![4; 57],
            entries: vec![Entry {
                label: KeyLabel::new("seal").unwrap(),
                kind: KeyKind::Seal,
                public_key: None,
                nonce: [5; NONCE_LEN],
                ciphertext: vec![6; 48],
            }],
            mac: [7; MAC_LEN],
        }
    }

    #[test]
    fn round_trips_and_every_cut_is_truncated() {
        let bytes = sample().to_bytes().unwrap();
        let doc = parse(&bytes).unwrap();
        assert_eq!(doc.to_bytes().unwrap(), bytes);
        // Every proper prefix that drops more than the final newline ends inside the document.
        for cut in 0..bytes.len() - 1 {
            match parse(&bytes[..cut]) {
                Err(ParseError::Truncated(_)) => {}
                other => panic!("cut at {cut}: {:?}", other.err()),
            }
        }
    }

    #[test]
    fn wrong_magic_version_and_hex_are_told_apart() {
        let bytes = sample().to_bytes().unwrap();
        let text = String::from_utf8(bytes).unwrap();
        let newer = text.replace("\"version\": 2", "\"version\": 7");
        assert_eq!(parse(newer.as_bytes()).err(), Some(ParseError::Newer(7)));
        let other = text.replace(MAGIC, "something-else");
        assert!(
            matches!(parse(other.as_bytes()), Err(ParseError::Corrupt(m)) if m.contains("not an sbtc-hsm-signer keystore"))
        );
        let bad_hex = text.replace(&hex::encode([2u8; SALT_LEN]), &"zz".repeat(SALT_LEN));
        assert!(
            matches!(parse(bad_hex.as_bytes()), Err(ParseError::Corrupt(m)) if m.contains("kdf.salt"))
        );
        assert!(matches!(
            parse(b"\x00\x01garbage"),
            Err(ParseError::Corrupt(_))
        ));
        assert!(matches!(parse(b"[1, 2]"), Err(ParseError::Corrupt(_))));
        let hostile = text.replace("\"memory_kib\": 256", "\"memory_kib\": 4294967295");
        let no_generation = text.replace("\"generation\": 3,", "");
        assert!(
            matches!(parse(no_generation.as_bytes()), Err(ParseError::Corrupt(m)) if m.contains("generation"))
        );
        // A version 1 file has no generation: it reads as generation 0 and writes back the same.
        let v1 = no_generation.replace("\"version\": 2", "\"version\": 1");
        let doc = parse(v1.as_bytes()).unwrap();
        assert_eq!((doc.version, doc.generation), (FORMAT_VERSION_1, 0));
        let written = String::from_utf8(doc.to_bytes().unwrap()).unwrap();
        assert!(!written.contains("generation"), "{written}");
        assert_eq!(parse(written.as_bytes()).unwrap().version, FORMAT_VERSION_1);
        assert!(
            matches!(parse(hostile.as_bytes()), Err(ParseError::Corrupt(m)) if m.contains("4 GiB"))
        );
    }
}
