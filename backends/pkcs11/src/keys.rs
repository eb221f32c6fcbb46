//! Key objects on the token: templates for new keys, finding a key by label, checking that it
//! cannot leave the token, and reading its public key.

use cryptoki::{
    object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle},
    session::Session,
};
use sbtc_custody::{BackendKind, Error, ErrorKind, KeyKind, KeyLabel, Operation, PublicKey};

use crate::errors::Fail;

/// DER OID of secp256k1 (1.3.132.0.10), the CKA_EC_PARAMS of its keys.
pub(crate) const SECP256K1_PARAMS: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a];
/// DER OID of P-256 / prime256v1 (1.2.840.10045.3.1.7).
pub(crate) const P256_PARAMS: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// AES-256.
const SEAL_KEY_BYTES: u64 = 32;

/// A key found on the token, checked once and then cached by label.
#[derive(Debug)]
pub(crate) struct ResolvedKey {
    pub kind: KeyKind,
    /// The private key (EC) or secret key (AES).
    pub handle: ObjectHandle,
    pub public: Option<PublicKey>,
}

pub(crate) fn ec_params(kind: KeyKind) -> Option<&'static [u8]> {
    match kind {
        KeyKind::Secp256k1 => Some(SECP256K1_PARAMS),
        KeyKind::P256 => Some(P256_PARAMS),
        KeyKind::Seal => None,
    }
}

pub(crate) fn kind_of_params(params: &[u8]) -> Option<KeyKind> {
    if params == SECP256K1_PARAMS {
        Some(KeyKind::Secp256k1)
    } else if params == P256_PARAMS {
        Some(KeyKind::P256)
    } else {
        None
    }
}

fn label_attr(label: &KeyLabel) -> Attribute {
    Attribute::Label(label.as_str().as_bytes().to_vec())
}

/// Templates for an EC key pair: the private half stays on the token, sensitive, non-extractable,
/// and may only sign.
pub(crate) fn ec_templates(label: &KeyLabel, params: &[u8]) -> (Vec<Attribute>, Vec<Attribute>) {
    let id = Attribute::Id(label.as_str().as_bytes().to_vec());
    let public = vec![
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::Verify(true),
        Attribute::Encrypt(false),
        Attribute::Wrap(false),
        Attribute::Derive(false),
        Attribute::EcParams(params.to_vec()),
        label_attr(label),
        id.clone(),
    ];
    let private = vec![
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
        // Tokens default these to true (SoftHSM2 does); a signing key needs none of them.
        Attribute::Decrypt(false),
        Attribute::Unwrap(false),
        Attribute::Derive(false),
        label_attr(label),
        id,
    ];
    (public, private)
}

/// Template for the AES-256 sealing key: encrypt and decrypt only.
pub(crate) fn seal_template(label: &KeyLabel) -> Vec<Attribute> {
    vec![
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::ValueLen(SEAL_KEY_BYTES.into()),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::Sign(false),
        Attribute::Verify(false),
        Attribute::Wrap(false),
        Attribute::Unwrap(false),
        Attribute::Derive(false),
        label_attr(label),
        Attribute::Id(label.as_str().as_bytes().to_vec()),
    ]
}

/// Every key object (private, public, secret) under `label`.
pub(crate) fn key_objects(
    session: &Session,
    label: &KeyLabel,
) -> Result<Vec<(ObjectClass, ObjectHandle)>, Fail> {
    let mut out = Vec::new();
    for class in [
        ObjectClass::PRIVATE_KEY,
        ObjectClass::SECRET_KEY,
        ObjectClass::PUBLIC_KEY,
    ] {
        for handle in session.find_objects(&[Attribute::Class(class), label_attr(label)])? {
            out.push((class, handle));
        }
    }
    Ok(out)
}

/// Any object at all under `label` (a key, a certificate, a data object).
pub(crate) fn label_taken(session: &Session, label: &KeyLabel) -> Result<bool, Fail> {
    Ok(!session.find_objects(&[label_attr(label)])?.is_empty())
}

/// Finds the key under `label`, checks that it can never leave the token and (unless
/// `allow_imported`) that it was born there, and reads its public key.
pub(crate) fn resolve(
    session: &Session,
    op: Operation,
    label: &KeyLabel,
    allow_imported: bool,
) -> Result<ResolvedKey, Fail> {
    let err = |kind: ErrorKind, detail: String| {
        Fail::Custody(
            Error::new(BackendKind::Pkcs11, op, kind)
                .label(label)
                .detail(detail),
        )
    };
    let mut candidates = Vec::new();
    for class in [ObjectClass::PRIVATE_KEY, ObjectClass::SECRET_KEY] {
        for handle in session.find_objects(&[Attribute::Class(class), label_attr(label)])? {
            candidates.push((class, handle));
        }
    }
    let (class, handle) =
        match candidates.as_slice() {
            [one] => *one,
            [] => {
                return Err(err(
                    ErrorKind::KeyNotFound,
                    format!("no private or secret key with CKA_LABEL '{label}' on the token"),
                ))
            }
            many => return Err(Fail::Custody(
                Error::new(BackendKind::Pkcs11, op, ErrorKind::KeyPolicy)
                    .label(label)
                    .detail(format!(
                        "{} private or secret keys share CKA_LABEL '{label}', so the signer cannot \
                         tell which one to use",
                        many.len()
                    ))
                    .hint(
                        "destroy the extra keys with the token's tools, or configure another label",
                    ),
            )),
        };

    let attrs = session.get_attributes(
        handle,
        &[
            AttributeType::KeyType,
            AttributeType::Sensitive,
            AttributeType::Extractable,
            AttributeType::ValueLen,
            AttributeType::Local,
            AttributeType::AlwaysSensitive,
            AttributeType::NeverExtractable,
        ],
    )?;
    let mut key_type = None;
    let mut sensitive = None;
    let mut extractable = None;
    let mut value_len = None;
    let mut origin = KeyOrigin::default();
    for attr in attrs {
        match attr {
            Attribute::KeyType(t) => key_type = Some(t),
            Attribute::Sensitive(b) => sensitive = Some(b),
            Attribute::Extractable(b) => extractable = Some(b),
            Attribute::ValueLen(n) => value_len = Some(u64::from(n)),
            Attribute::Local(b) => origin.local = Some(b),
            Attribute::AlwaysSensitive(b) => origin.always_sensitive = Some(b),
            Attribute::NeverExtractable(b) => origin.never_extractable = Some(b),
            _ => {}
        }
    }

    // Refuse a key that could be copied out of the token, before anything else is done with it.
    let what = if class == ObjectClass::SECRET_KEY {
        "secret"
    } else {
        "private"
    };
    let unsafe_because = match (sensitive, extractable) {
        (Some(true), Some(false)) => None,
        (_, Some(true)) => Some("CKA_EXTRACTABLE is true"),
        (Some(false), _) => Some("CKA_SENSITIVE is false"),
        (None, _) => Some("the token does not report CKA_SENSITIVE"),
        (_, None) => Some("the token does not report CKA_EXTRACTABLE"),
    };
    if let Some(reason) = unsafe_because {
        return Err(err(
            ErrorKind::KeyPolicy,
            format!("the {what} key '{label}' could leave the token: {reason}; refusing to use it"),
        ));
    }
    // A key that was imported, unwrapped, or once extractable or readable may have a copy
    // outside the token, which no attribute of this object can rule out.
    if let (Some(reason), false) = (origin.unproven(), allow_imported) {
        return Err(Fail::Custody(
            Error::new(BackendKind::Pkcs11, op, ErrorKind::KeyPolicy)
                .label(label)
                .detail(format!(
                    "the {what} key '{label}' was not generated on the token and kept there: \
                     {reason}; a copy of it may exist outside the token, so it is refused"
                ))
                .hint(format!(
                    "generate the key on the token (destroy '{label}', then `sbtc-hsm-signer keys \
                     generate`), or, if you imported it knowingly and its other copies are \
                     accounted for, set allow_imported_keys = true in [custody.pkcs11]"
                )),
        ));
    }

    let kind = if class == ObjectClass::SECRET_KEY {
        if key_type != Some(KeyType::AES) {
            return Err(err(
                ErrorKind::WrongKeyKind,
                format!(
                    "the secret key '{label}' is not an AES key (CKA_KEY_TYPE {})",
                    key_type.map_or("missing".to_owned(), |t| t.to_string())
                ),
            ));
        }
        if let Some(n) = value_len.filter(|n| *n != SEAL_KEY_BYTES) {
            return Err(err(
                ErrorKind::WrongKeyKind,
                format!(
                    "the AES key '{label}' is {} bits; sealing needs AES-256",
                    n * 8
                ),
            ));
        }
        KeyKind::Seal
    } else {
        if key_type != Some(KeyType::EC) {
            return Err(err(
                ErrorKind::WrongKeyKind,
                format!(
                    "the private key '{label}' is not an EC key (CKA_KEY_TYPE {})",
                    key_type.map_or("missing".to_owned(), |t| t.to_string())
                ),
            ));
        }
        let params = bytes_attr(session, handle, AttributeType::EcParams)?.unwrap_or_default();
        kind_of_params(&params).ok_or_else(|| {
            err(
                ErrorKind::WrongKeyKind,
                format!(
                    "the EC key '{label}' is on a curve this signer does not use (CKA_EC_PARAMS {}); \
                     it needs secp256k1 or P-256",
                    hex_bytes(&params)
                ),
            )
        })?
    };

    let public = match kind {
        KeyKind::Seal => None,
        ec => Some(public_key(session, op, label, ec, handle)?),
    };
    Ok(ResolvedKey {
        kind,
        handle,
        public,
    })
}

/// Where a key came from, as the token records it. Tokens set these attributes themselves; an
/// application cannot set any of them to true.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct KeyOrigin {
    /// `CKA_LOCAL`: generated on the token (not imported with C_CreateObject or unwrapped).
    pub local: Option<bool>,
    /// `CKA_ALWAYS_SENSITIVE`: `CKA_SENSITIVE` was true ever since the key existed.
    pub always_sensitive: Option<bool>,
    /// `CKA_NEVER_EXTRACTABLE`: `CKA_EXTRACTABLE` was false ever since the key existed.
    pub never_extractable: Option<bool>,
}

impl KeyOrigin {
    /// Why this key is not proven to have lived only on the token, or None if it is.
    pub(crate) fn unproven(&self) -> Option<String> {
        let mut reasons = Vec::new();
        for (name, value, meaning) in [
            (
                "CKA_LOCAL",
                self.local,
                "it was imported or unwrapped, not generated on the token",
            ),
            (
                "CKA_ALWAYS_SENSITIVE",
                self.always_sensitive,
                "its value was readable at some time",
            ),
            (
                "CKA_NEVER_EXTRACTABLE",
                self.never_extractable,
                "it was extractable at some time",
            ),
        ] {
            match value {
                Some(true) => {}
                Some(false) => reasons.push(format!("{name} is false ({meaning})")),
                None => reasons.push(format!("the token does not report {name}")),
            }
        }
        (!reasons.is_empty()).then(|| reasons.join("; "))
    }
}

/// The public key of the EC key pair under `label`: from its public key object, or, on tokens that
/// keep it there, from CKA_EC_POINT of the private key.
pub(crate) fn public_key(
    session: &Session,
    op: Operation,
    label: &KeyLabel,
    kind: KeyKind,
    private: ObjectHandle,
) -> Result<PublicKey, Fail> {
    let mut points = Vec::new();
    for handle in
        session.find_objects(&[Attribute::Class(ObjectClass::PUBLIC_KEY), label_attr(label)])?
    {
        if let Some(point) = bytes_attr(session, handle, AttributeType::EcPoint)? {
            points.push(point);
        }
    }
    if points.is_empty() {
        // Not every token allows CKA_EC_POINT on a private key; a refusal just means "not here".
        if let Ok(Some(point)) = bytes_attr(session, private, AttributeType::EcPoint) {
            points.push(point);
        }
    }
    let Some(point) = points.first() else {
        return Err(Fail::Custody(
            Error::new(BackendKind::Pkcs11, op, ErrorKind::KeyNotFound)
                .label(label)
                .detail(format!(
                    "the private key '{label}' has no public key object with the same label"
                ))
                .hint(
                    "import the public key under the same label, or generate a new key with \
                     `sbtc-hsm-signer keys generate`",
                ),
        ));
    };
    parse_public_key(kind, point).map_err(|detail| {
        Fail::Custody(
            Error::new(BackendKind::Pkcs11, op, ErrorKind::Device)
                .label(label)
                .detail(detail),
        )
    })
}

/// Parses CKA_EC_POINT: a DER OCTET STRING around the SEC1 point (PKCS#11 2.40, SoftHSM), or the
/// bare SEC1 point (some vendors).
pub(crate) fn parse_public_key(kind: KeyKind, point: &[u8]) -> Result<PublicKey, String> {
    let sec1 = match point {
        [0x04, rest @ ..] if rest.len() == 64 => point,
        [0x02 | 0x03, rest @ ..] if rest.len() == 32 => point,
        [0x04, len, inner @ ..] if usize::from(*len) == inner.len() && *len < 0x80 => inner,
        [0x04, 0x81, len, inner @ ..] if usize::from(*len) == inner.len() => inner,
        _ => point,
    };
    PublicKey::from_sec1(kind, sec1).map_err(|e| {
        format!(
            "the token returned CKA_EC_POINT {} which is not a {kind} point: {e}",
            hex_bytes(point)
        )
    })
}

/// A byte-string attribute, or None if the object does not have it.
pub(crate) fn bytes_attr(
    session: &Session,
    handle: ObjectHandle,
    which: AttributeType,
) -> Result<Option<Vec<u8>>, Fail> {
    for attr in session.get_attributes(handle, &[which])? {
        match attr {
            Attribute::EcParams(b) | Attribute::EcPoint(b) | Attribute::Label(b) => {
                return Ok(Some(b))
            }
            _ => {}
        }
    }
    Ok(None)
}

pub(crate) fn hex_bytes(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // A secp256k1 point: the generator G.
    const G: &str = "0479be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798\
                     483ada7726a3c4655da4fbfc0e1108a8fd17b448a68554199c47d08ffb10d4b8";

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn ec_point_wrapped_or_raw() {
        let raw = unhex(G);
        let mut wrapped = vec![0x04, 0x41];
        wrapped.extend_from_slice(&raw);
        let a = parse_public_key(KeyKind::Secp256k1, &raw).unwrap();
        let b = parse_public_key(KeyKind::Secp256k1, &wrapped).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_sec1_uncompressed(), raw);

        let compressed = a.to_sec1_compressed();
        let mut wrapped_c = vec![0x04, 0x21];
        wrapped_c.extend_from_slice(&compressed);
        assert_eq!(parse_public_key(KeyKind::Secp256k1, &wrapped_c).unwrap(), a);
        assert_eq!(
            parse_public_key(KeyKind::Secp256k1, &compressed).unwrap(),
            a
        );

        // G is not on P-256.
        let err = parse_public_key(KeyKind::P256, &wrapped).unwrap_err();
        assert!(err.contains("not a p256 point"), "{err}");
        assert!(parse_public_key(KeyKind::Secp256k1, &[0x04, 0x41, 0x04]).is_err());
    }

    #[test]
    fn curve_oids() {
        assert_eq!(kind_of_params(SECP256K1_PARAMS), Some(KeyKind::Secp256k1));
        assert_eq!(kind_of_params(P256_PARAMS), Some(KeyKind::P256));
        // P-384.
        assert_eq!(
            kind_of_params(&[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22]),
            None
        );
    }

    #[test]
    fn origin_names_every_attribute_that_is_not_true() {
        let born_here = KeyOrigin {
            local: Some(true),
            always_sensitive: Some(true),
            never_extractable: Some(true),
        };
        assert_eq!(born_here.unproven(), None);
        let imported = KeyOrigin {
            local: Some(false),
            always_sensitive: Some(false),
            never_extractable: Some(true),
        };
        let why = imported.unproven().unwrap();
        assert!(why.contains("CKA_LOCAL is false"), "{why}");
        assert!(why.contains("CKA_ALWAYS_SENSITIVE is false"), "{why}");
        assert!(!why.contains("CKA_NEVER_EXTRACTABLE"), "{why}");
        let silent = KeyOrigin::default().unproven().unwrap();
        assert!(
            silent.contains("does not report CKA_NEVER_EXTRACTABLE"),
            "{silent}"
        );
    }

    #[test]
    fn templates_keep_keys_on_the_token() {
        let label = KeyLabel::new("identity").unwrap();
        let (_, private) = ec_templates(&label, SECP256K1_PARAMS);
        for must in [
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
        ] {
            assert!(private.contains(&must), "{must:?}");
            assert!(seal_template(&label).contains(&must), "{must:?}");
        }
    }
}
