//! The PKCS#11 backend: `Custody` over a token.

use std::{fmt, path::Path, sync::Arc, time::Duration};

use async_trait::async_trait;
use cryptoki::{
    context::Pkcs11,
    error::{Error as CkError, RvError},
    mechanism::{aead::GcmParams, Mechanism, MechanismType},
    object::{Attribute, AttributeType, KeyType, ObjectClass},
    session::{Session, SessionState},
    slot::Slot,
};
use rand::RngCore;
use sbtc_custody::{
    normalize_secp256k1, BackendInfo, BackendKind, BlockingPool, Capabilities, Custody, ErrorKind,
    Health, KeyInfo, KeyKind, KeyLabel, Operation, P256Signature, PublicKey, RecoverableSignature,
    Result, SealedBlob, SecretBytes,
};
use zeroize::Zeroizing;

use crate::{
    config::Config,
    errors::{ck_error, describe, error, Fail},
    keys::{self, ResolvedKey},
    module::{close_all_sessions, load_module},
    sessions::TokenSessions,
    token::{find_slot, TokenSelector},
};

/// First byte of every sealed blob: AES-256-GCM, 12-byte IV, 16-byte tag.
const SEAL_FORMAT: u8 = 0x01;
const IV_LEN: usize = 12;
const TAG_LEN: usize = 16;

const SEAL_METHOD: &str = "AES-256-GCM (CKM_AES_GCM) under a token key";

/// Keys on a PKCS#11 token. Cheap to share: clone the `Arc` you keep it in.
pub struct Pkcs11Backend {
    inner: Arc<TokenSessions>,
    pool: BlockingPool,
    /// Serialises generate and destroy, so two calls cannot create the same label at once.
    admin: Arc<std::sync::Mutex<()>>,
}

impl fmt::Debug for Pkcs11Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Backend")
            .field("module", &self.inner.module)
            .field("token", &self.inner.selector.describe())
            .field("slot", &self.inner.slot().id())
            .field("sessions", &self.pool.size())
            .finish()
    }
}

/// Loads the module (once per process), finds the token, reads the PIN and logs in.
///
/// Synchronous: it makes blocking device calls, and may prompt for the PIN on the terminal. Call it
/// at start-up, or from `spawn_blocking` inside a runtime.
pub fn open(config: &Config) -> Result<Pkcs11Backend> {
    config.check()?;
    let pin_source = config.pin_source()?;
    let ctx = load_module(&config.module)?;
    let selector = TokenSelector {
        label: config.token_label.clone(),
        serial: config.token_serial.clone(),
    };
    let slot = find_slot(&ctx, &config.module, &selector, Operation::Open)?;
    let pin = pin_source.load(BackendKind::Pkcs11, "PIN")?;
    let inner = TokenSessions::open(
        ctx,
        config.module.clone(),
        selector,
        slot,
        pin,
        pin_source,
        config.allow_imported_keys,
    )?;
    if config.allow_imported_keys {
        tracing::warn!(
            backend = "pkcs11",
            "allow_imported_keys = true: keys that were imported, unwrapped or once extractable are \
             used; their other copies are the operator's responsibility"
        );
    }
    tracing::info!(
        backend = "pkcs11",
        module = %config.module.display(),
        slot = slot.id(),
        "logged in to the {}",
        config.token_description()
    );
    Ok(Pkcs11Backend {
        inner: Arc::new(inner),
        pool: BlockingPool::new(
            config.sessions,
            Duration::from_secs(config.busy_timeout_secs),
        ),
        admin: Arc::new(std::sync::Mutex::new(())),
    })
}

impl Pkcs11Backend {
    /// The slot the token is in now.
    pub fn slot(&self) -> Slot {
        self.inner.slot()
    }

    /// The module path from the config.
    pub fn module_path(&self) -> &Path {
        &self.inner.module
    }

    /// The process-wide context of the module, for raw `cryptoki` calls in tests and benchmarks.
    pub fn context(&self) -> Arc<Pkcs11> {
        Arc::clone(&self.inner.ctx)
    }

    /// How many times this backend called C_Login (at open and when recovering a lost login).
    /// After the token refused the PIN it stays where it is. For tests.
    #[doc(hidden)]
    pub fn login_attempts(&self) -> u64 {
        self.inner.login_attempts()
    }

    /// Closes every session of this process on the token (`C_CloseAllSessions`), as a device
    /// reset would. For tests of session recovery only.
    #[doc(hidden)]
    pub fn simulate_session_loss(&self) -> Result<()> {
        close_all_sessions(&self.inner.module, self.inner.slot())
    }

    async fn run<T, F>(&self, op: Operation, label: Option<&KeyLabel>, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnMut(&TokenSessions, &Session) -> std::result::Result<T, Fail> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        let label = label.cloned();
        let mut f = f;
        self.pool
            .run(BackendKind::Pkcs11, op, move || {
                inner.run(op, label.as_ref(), |s| f(&inner, s))
            })
            .await
    }
}

fn wrong_kind(op: Operation, label: &KeyLabel, have: KeyKind, need: &str) -> Fail {
    Fail::Custody(
        error(op, ErrorKind::WrongKeyKind)
            .label(label)
            .detail(format!("'{label}' is a {have} key; {op} needs {need}")),
    )
}

fn key_of_kind(
    t: &TokenSessions,
    s: &Session,
    op: Operation,
    label: &KeyLabel,
    kind: KeyKind,
) -> std::result::Result<Arc<ResolvedKey>, Fail> {
    let key = t.key(s, op, label)?;
    if key.kind != kind {
        let need = match kind {
            KeyKind::Secp256k1 => "a secp256k1 key",
            KeyKind::P256 => "a P-256 key",
            KeyKind::Seal => "a seal (AES-256) key",
        };
        return Err(wrong_kind(op, label, key.kind, need));
    }
    Ok(key)
}

fn bad_signature(op: Operation, label: &KeyLabel, e: impl fmt::Display) -> Fail {
    Fail::Custody(
        error(op, ErrorKind::Device)
            .label(label)
            .detail(format!("the token returned an unusable signature: {e}")),
    )
}

#[async_trait]
impl Custody for Pkcs11Backend {
    fn backend(&self) -> BackendKind {
        BackendKind::Pkcs11
    }

    async fn info(&self) -> Result<BackendInfo> {
        let inner = Arc::clone(&self.inner);
        let max_concurrency = self.pool.size();
        self.pool
            .run(BackendKind::Pkcs11, Operation::Info, move || {
                let op = Operation::Info;
                let slot = inner.slot();
                let token = inner
                    .ctx
                    .get_token_info(slot)
                    .map_err(|e| ck_error(op, None, &e))?;
                let library = inner
                    .ctx
                    .get_library_info()
                    .map_err(|e| ck_error(op, None, &e))?;
                let mechanisms = inner
                    .ctx
                    .get_mechanism_list(slot)
                    .map_err(|e| ck_error(op, None, &e))?;
                let has = |m: MechanismType| mechanisms.contains(&m);
                let ec = has(MechanismType::ECC_KEY_PAIR_GEN) && has(MechanismType::ECDSA);
                let seal = has(MechanismType::AES_GCM) && has(MechanismType::AES_KEY_GEN);
                Ok(BackendInfo {
                    backend: BackendKind::Pkcs11,
                    manufacturer: token.manufacturer_id().trim().to_owned(),
                    model: token.model().trim().to_owned(),
                    serial: token.serial_number().trim().to_owned(),
                    version: format!(
                        "firmware {}, hardware {}; module {} {} ({})",
                        token.firmware_version(),
                        token.hardware_version(),
                        library.library_description().trim(),
                        library.library_version(),
                        library.manufacturer_id().trim(),
                    ),
                    capabilities: Capabilities {
                        secp256k1: ec,
                        p256: ec,
                        seal,
                        seal_method: SEAL_METHOD.to_owned(),
                        key_backup: false,
                        max_concurrency,
                    },
                })
            })
            .await
    }

    async fn generate(&self, label: &KeyLabel, kind: KeyKind) -> Result<KeyInfo> {
        let op = Operation::Generate;
        let l = label.clone();
        let admin = Arc::clone(&self.admin);
        self.run(op, Some(label), move |t, s| {
            let _admin = admin.lock().unwrap_or_else(|p| p.into_inner());
            if keys::label_taken(s, &l)? {
                return Err(Fail::Custody(
                    error(op, ErrorKind::KeyExists)
                        .label(&l)
                        .detail(format!("the token already has an object labelled '{l}'")),
                ));
            }
            let key = match keys::ec_params(kind) {
                Some(params) => {
                    let (public_t, private_t) = keys::ec_templates(&l, params);
                    let (public_h, private_h) =
                        s.generate_key_pair(&Mechanism::EccKeyPairGen, &public_t, &private_t)?;
                    let point =
                        keys::bytes_attr(s, public_h, AttributeType::EcPoint)?.unwrap_or_default();
                    let public = keys::parse_public_key(kind, &point).map_err(|detail| {
                        Fail::Custody(error(op, ErrorKind::Device).label(&l).detail(detail))
                    })?;
                    ResolvedKey {
                        kind,
                        handle: private_h,
                        public: Some(public),
                    }
                }
                None => ResolvedKey {
                    kind,
                    handle: s.generate_key(&Mechanism::AesKeyGen, &keys::seal_template(&l))?,
                    public: None,
                },
            };
            let info = KeyInfo {
                label: l.clone(),
                kind,
                public_key: key.public,
            };
            t.remember(&l, Arc::new(key));
            Ok(info)
        })
        .await
    }

    async fn public_key(&self, label: &KeyLabel) -> Result<PublicKey> {
        let op = Operation::PublicKey;
        let l = label.clone();
        self.run(op, Some(label), move |t, s| {
            let key = t.key(s, op, &l)?;
            key.public
                .ok_or_else(|| wrong_kind(op, &l, key.kind, "a secp256k1 or P-256 key"))
        })
        .await
    }

    async fn list(&self) -> Result<Vec<KeyInfo>> {
        self.run(Operation::List, None, |_, s| list_keys(s)).await
    }

    async fn sign_secp256k1_prehash(
        &self,
        label: &KeyLabel,
        digest: &[u8; 32],
    ) -> Result<RecoverableSignature> {
        let op = Operation::SignSecp256k1;
        let l = label.clone();
        let digest = *digest;
        self.run(op, Some(label), move |t, s| {
            let key = key_of_kind(t, s, op, &l, KeyKind::Secp256k1)?;
            let raw = s.sign(&Mechanism::Ecdsa, key.handle, &digest)?;
            let Some(PublicKey::Secp256k1(public)) = key.public else {
                return Err(wrong_kind(op, &l, key.kind, "a secp256k1 key"));
            };
            normalize_secp256k1(&raw, &digest, &public).map_err(|e| bad_signature(op, &l, e))
        })
        .await
    }

    async fn sign_p256_prehash(
        &self,
        label: &KeyLabel,
        digest: &[u8; 32],
    ) -> Result<P256Signature> {
        let op = Operation::SignP256;
        let l = label.clone();
        let digest = *digest;
        self.run(op, Some(label), move |t, s| {
            let key = key_of_kind(t, s, op, &l, KeyKind::P256)?;
            let raw = s.sign(&Mechanism::Ecdsa, key.handle, &digest)?;
            P256Signature::from_raw(&raw).map_err(|e| bad_signature(op, &l, e))
        })
        .await
    }

    async fn seal(&self, label: &KeyLabel, plaintext: &[u8], aad: &[u8]) -> Result<SealedBlob> {
        let op = Operation::Seal;
        let l = label.clone();
        let plaintext = Zeroizing::new(plaintext.to_vec());
        let aad = aad.to_vec();
        self.run(op, Some(label), move |t, s| {
            let key = key_of_kind(t, s, op, &l, KeyKind::Seal)?;
            // A fresh IV for every call, retries included: GCM must never reuse one under a key.
            let mut iv = [0u8; IV_LEN];
            rand::rngs::OsRng.fill_bytes(&mut iv);
            let ciphertext = {
                let params = GcmParams::new(&mut iv, &aad, ((TAG_LEN * 8) as u64).into())?;
                s.encrypt(&Mechanism::AesGcm(params), key.handle, &plaintext)?
            };
            // Some HSMs write their own IV into the parameter buffer; `iv` holds what was used.
            let mut blob = Vec::with_capacity(1 + IV_LEN + ciphertext.len());
            blob.push(SEAL_FORMAT);
            blob.extend_from_slice(&iv);
            blob.extend_from_slice(&ciphertext);
            Ok(SealedBlob::from_bytes(blob))
        })
        .await
    }

    async fn unseal(
        &self,
        label: &KeyLabel,
        sealed: &SealedBlob,
        aad: &[u8],
    ) -> Result<SecretBytes> {
        let op = Operation::Unseal;
        let (mut iv, ciphertext) = split_blob(label, sealed.as_bytes())?;
        let aad = aad.to_vec();
        let l = label.clone();
        self.run(op, Some(label), move |t, s| {
            let key = key_of_kind(t, s, op, &l, KeyKind::Seal)?;
            let params = GcmParams::new(&mut iv, &aad, ((TAG_LEN * 8) as u64).into())?;
            match s.decrypt(&Mechanism::AesGcm(params), key.handle, &ciphertext) {
                Ok(plain) => Ok(SecretBytes::new(plain)),
                Err(e) if is_auth_failure(&e) => Err(Fail::Custody(
                    error(op, ErrorKind::Tampered).label(&l).detail(format!(
                        "the GCM tag does not verify ({}): wrong AAD, another key, or a changed \
                         byte",
                        describe(&e)
                    )),
                )),
                Err(e) => Err(Fail::Ck(e)),
            }
        })
        .await
    }

    async fn destroy(&self, label: &KeyLabel) -> Result<()> {
        let op = Operation::Destroy;
        let l = label.clone();
        let admin = Arc::clone(&self.admin);
        self.run(op, Some(label), move |t, s| {
            let _admin = admin.lock().unwrap_or_else(|p| p.into_inner());
            let objects = keys::key_objects(s, &l)?;
            if objects.is_empty() {
                return Err(Fail::Custody(
                    error(op, ErrorKind::KeyNotFound)
                        .label(&l)
                        .detail(format!("no key objects labelled '{l}' on the token")),
                ));
            }
            t.forget(&l);
            for (_, handle) in objects {
                s.destroy_object(handle)?;
            }
            Ok(())
        })
        .await
    }

    async fn health(&self) -> Result<Health> {
        let op = Operation::Health;
        let token = self.inner.selector.describe();
        let outcome = self
            .run(op, None, move |t, s| {
                let info = s.get_session_info()?;
                match info.session_state() {
                    SessionState::RwUser | SessionState::RoUser => Ok(format!(
                        "session open and logged in to the token with {token} (slot {})",
                        t.slot()
                    )),
                    // Let the session layer log in again and retry.
                    _ => Err(Fail::Ck(CkError::Pkcs11(
                        RvError::UserNotLoggedIn,
                        cryptoki::context::Function::GetSessionInfo,
                    ))),
                }
            })
            .await;
        Ok(match outcome {
            Ok(detail) => Health { ok: true, detail },
            Err(e) => Health {
                ok: false,
                detail: e.to_string(),
            },
        })
    }
}

/// SoftHSM2 answers a failed GCM tag with CKR_GENERAL_ERROR; the spec's answers are
/// CKR_ENCRYPTED_DATA_INVALID and CKR_ENCRYPTED_DATA_LEN_RANGE.
fn is_auth_failure(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::GeneralError | RvError::EncryptedDataInvalid | RvError::EncryptedDataLenRange,
            cryptoki::context::Function::Decrypt
        )
    )
}

/// Splits `format || IV || ciphertext+tag`. A changed format byte is reported as tampering: a
/// flipped bit anywhere in the blob must read the same way.
fn split_blob(label: &KeyLabel, blob: &[u8]) -> Result<([u8; IV_LEN], Vec<u8>)> {
    let op = Operation::Unseal;
    let Some((&format, rest)) = blob.split_first() else {
        return Err(error(op, ErrorKind::Corrupt)
            .label(label)
            .detail("the sealed blob is empty"));
    };
    if format != SEAL_FORMAT {
        return Err(error(op, ErrorKind::Tampered).label(label).detail(format!(
            "the sealed blob starts with 0x{format:02x}, not the PKCS#11 AES-GCM format 0x{SEAL_FORMAT:02x}: \
             it was changed or sealed by another backend"
        )));
    }
    if rest.len() < IV_LEN + TAG_LEN {
        return Err(error(op, ErrorKind::Corrupt).label(label).detail(format!(
            "the sealed blob is {} bytes, shorter than the {} bytes of header, IV and tag",
            blob.len(),
            1 + IV_LEN + TAG_LEN
        )));
    }
    let (iv, ciphertext) = rest.split_at(IV_LEN);
    let mut iv_arr = [0u8; IV_LEN];
    iv_arr.copy_from_slice(iv);
    Ok((iv_arr, ciphertext.to_vec()))
}

/// Every secp256k1 / P-256 private key and AES secret key on the token whose label is a valid
/// key label, with public keys for the EC ones.
fn list_keys(s: &Session) -> std::result::Result<Vec<KeyInfo>, Fail> {
    let mut publics = Vec::new();
    for handle in s.find_objects(&[
        Attribute::Class(ObjectClass::PUBLIC_KEY),
        Attribute::KeyType(KeyType::EC),
    ])? {
        let (label, params, point) = label_params_point(s, handle)?;
        if let (Some(label), Some(kind), Some(point)) = (label, params, point) {
            if let Ok(pk) = keys::parse_public_key(kind, &point) {
                publics.push((label, pk));
            }
        }
    }
    let mut out = Vec::new();
    for handle in s.find_objects(&[
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::KeyType(KeyType::EC),
    ])? {
        let (label, kind, point) = label_params_point(s, handle)?;
        let (Some(label), Some(kind)) = (label, kind) else {
            continue;
        };
        let public_key = publics
            .iter()
            .find(|(l, pk)| *l == label && pk.kind() == kind)
            .map(|(_, pk)| *pk)
            .or_else(|| point.and_then(|p| keys::parse_public_key(kind, &p).ok()));
        out.push(KeyInfo {
            label,
            kind,
            public_key,
        });
    }
    for handle in s.find_objects(&[
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
    ])? {
        let label = keys::bytes_attr(s, handle, AttributeType::Label)?;
        if let Some(label) = label.and_then(|b| parse_label(&b)) {
            out.push(KeyInfo {
                label,
                kind: KeyKind::Seal,
                public_key: None,
            });
        }
    }
    out.sort_by(|a, b| a.label.cmp(&b.label));
    Ok(out)
}

type LabelParamsPoint = (Option<KeyLabel>, Option<KeyKind>, Option<Vec<u8>>);

fn label_params_point(
    s: &Session,
    handle: cryptoki::object::ObjectHandle,
) -> std::result::Result<LabelParamsPoint, Fail> {
    let attrs = match s.get_attributes(
        handle,
        &[
            AttributeType::Label,
            AttributeType::EcParams,
            AttributeType::EcPoint,
        ],
    ) {
        Ok(a) => a,
        // A private key may refuse CKA_EC_POINT outright on some tokens; ask without it.
        Err(CkError::Pkcs11(RvError::AttributeTypeInvalid, _)) => {
            s.get_attributes(handle, &[AttributeType::Label, AttributeType::EcParams])?
        }
        Err(e) => return Err(e.into()),
    };
    let (mut label, mut kind, mut point) = (None, None, None);
    for attr in attrs {
        match attr {
            Attribute::Label(b) => label = parse_label(&b),
            Attribute::EcParams(p) => kind = keys::kind_of_params(&p),
            Attribute::EcPoint(p) => point = Some(p),
            _ => {}
        }
    }
    Ok((label, kind, point))
}

fn parse_label(bytes: &[u8]) -> Option<KeyLabel> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| KeyLabel::new(s).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label() -> KeyLabel {
        KeyLabel::new("seal").unwrap()
    }

    #[test]
    fn blob_layout_and_damage() {
        let mut blob = vec![SEAL_FORMAT];
        blob.extend_from_slice(&[7u8; IV_LEN]);
        blob.extend_from_slice(&[9u8; TAG_LEN + 3]);
        let (iv, ct) = split_blob(&label(), &blob).unwrap();
        assert_eq!(iv, [7u8; IV_LEN]);
        assert_eq!(ct.len(), TAG_LEN + 3);

        let mut other = blob.clone();
        other[0] ^= 0x80;
        assert_eq!(
            split_blob(&label(), &other).unwrap_err().kind(),
            ErrorKind::Tampered
        );
        assert_eq!(
            split_blob(&label(), &blob[..IV_LEN + TAG_LEN])
                .unwrap_err()
                .kind(),
            ErrorKind::Corrupt
        );
        assert_eq!(
            split_blob(&label(), &[]).unwrap_err().kind(),
            ErrorKind::Corrupt
        );
    }

    #[test]
    fn only_decrypt_failures_count_as_tampering() {
        use cryptoki::context::Function;
        assert!(is_auth_failure(&CkError::Pkcs11(
            RvError::GeneralError,
            Function::Decrypt
        )));
        assert!(is_auth_failure(&CkError::Pkcs11(
            RvError::EncryptedDataInvalid,
            Function::Decrypt
        )));
        assert!(!is_auth_failure(&CkError::Pkcs11(
            RvError::GeneralError,
            Function::DecryptInit
        )));
        assert!(!is_auth_failure(&CkError::Pkcs11(
            RvError::SessionHandleInvalid,
            Function::Decrypt
        )));
    }
}
