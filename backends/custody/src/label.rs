//! Key labels, key kinds and the roles the signer gives its keys.

use std::{fmt, str::FromStr};

/// The name of a key inside a backend: 1 to 40 ASCII letters, digits, `.`, `_` or `-`.
/// 40 bytes is the YubiHSM2 label size, so one label works on every backend.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct KeyLabel(String);

impl KeyLabel {
    pub const MAX_LEN: usize = 40;

    pub fn new(label: &str) -> Result<Self, String> {
        if label.is_empty() || label.len() > Self::MAX_LEN {
            return Err(format!(
                "key label '{label}' must be 1 to {} characters long",
                Self::MAX_LEN
            ));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(format!(
                "key label '{label}' has the character {c:?}; use letters, digits, '.', '_' or '-'"
            ));
        }
        Ok(KeyLabel(label.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for KeyLabel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        KeyLabel::new(s)
    }
}

impl<'de> serde::Deserialize<'de> for KeyLabel {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        KeyLabel::new(&s).map_err(serde::de::Error::custom)
    }
}

/// What a key is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyKind {
    /// secp256k1 signing key (identity).
    Secp256k1,
    /// NIST P-256 signing key (TLS).
    P256,
    /// Symmetric or backend-native key that seals data at rest.
    Seal,
}

impl KeyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Secp256k1 => "secp256k1",
            KeyKind::P256 => "p256",
            KeyKind::Seal => "seal",
        }
    }
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "secp256k1" => Ok(KeyKind::Secp256k1),
            "p256" => Ok(KeyKind::P256),
            "seal" => Ok(KeyKind::Seal),
            other => Err(format!(
                "unknown key kind '{other}'; use secp256k1, p256 or seal"
            )),
        }
    }
}

/// The roles of the signer's long-term keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// secp256k1: Stacks multisig signatures, signed proposals, certificate binding.
    Identity,
    /// P-256: the mTLS handshake key.
    Tls,
    /// Seals WSTS shares and other secrets at rest.
    Seal,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Identity, Role::Tls, Role::Seal];

    pub fn kind(self) -> KeyKind {
        match self {
            Role::Identity => KeyKind::Secp256k1,
            Role::Tls => KeyKind::P256,
            Role::Seal => KeyKind::Seal,
        }
    }

    /// The label used when the config names none.
    pub fn default_label(self) -> KeyLabel {
        KeyLabel(self.as_str().to_owned())
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Identity => "identity",
            Role::Tls => "tls",
            Role::Seal => "seal",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "identity" => Ok(Role::Identity),
            "tls" => Ok(Role::Tls),
            "seal" => Ok(Role::Seal),
            other => Err(format!("unknown role '{other}'; use identity, tls or seal")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_checked() {
        assert!(KeyLabel::new("identity-2").is_ok());
        assert!(KeyLabel::new("").is_err());
        assert!(KeyLabel::new(&"a".repeat(41)).is_err());
        let e = KeyLabel::new("bad label").unwrap_err();
        assert!(e.contains("' '"), "{e}");
    }
}
