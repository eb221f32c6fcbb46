//! What a backend says about itself and its keys.

use crate::{BackendKind, KeyKind, KeyLabel, PublicKey};

/// What a backend can do.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Capabilities {
    pub secp256k1: bool,
    pub p256: bool,
    pub seal: bool,
    /// How sealing works on this backend, e.g. "AES-256-GCM (CKM_AES_GCM) under a token key".
    pub seal_method: String,
    /// Keys can be exported under a wrap key for backup.
    pub key_backup: bool,
    /// How many device operations may run at once.
    pub max_concurrency: usize,
}

/// Backend, model, serial, versions and capabilities.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BackendInfo {
    pub backend: BackendKind,
    pub manufacturer: String,
    pub model: String,
    pub serial: String,
    /// Firmware, library or file-format version.
    pub version: String,
    pub capabilities: Capabilities,
}

/// One key in a backend.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct KeyInfo {
    pub label: KeyLabel,
    pub kind: KeyKind,
    /// None for sealing keys.
    pub public_key: Option<PublicKey>,
}

/// The result of a liveness check.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Health {
    pub ok: bool,
    pub detail: String,
}

impl serde::Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}
