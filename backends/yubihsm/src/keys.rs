//! Keys on the device: label lookup, the capability policy, and the blocking operations.
//!
//! A key is an object whose 40-byte label is our [`KeyLabel`]: a secp256k1 (`EcK256`) or P-256
//! (`EcP256`) asymmetric key with only `SIGN_ECDSA`, or an HMAC-SHA256 key with only `SIGN_HMAC`
//! for sealing. When a backup wrap key is configured, keys are also `EXPORTABLE_UNDER_WRAP`.
//! Objects of other types (authentication keys, wrap keys, opaque data) never count as keys, and
//! only objects in the configured domains are seen.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Mutex,
};

use sbtc_custody::{
    normalize_secp256k1, Error, ErrorKind, KeyInfo, KeyKind, KeyLabel, Operation, P256Signature,
    PublicKey, RecoverableSignature, Result,
};
use yubihsm::{
    asymmetric, hmac,
    object::{self, Filter, Origin},
    wrap, Algorithm, Capability, Client, Domain,
};
use zeroize::Zeroizing;

use crate::device::{Device, Fail, BACKEND};

/// The first object id we hand out; lower ids are where setup tools put authentication keys.
const FIRST_KEY_ID: u16 = 0x0100;
/// How many ids to try when the device says an id we chose is taken (by an object we cannot see).
const ID_ATTEMPTS: usize = 8;

/// A key this signer may use, as cached after the first lookup.
#[derive(Clone, Debug)]
pub(crate) struct KeyEntry {
    pub id: u16,
    pub kind: KeyKind,
    pub public_key: Option<PublicKey>,
}

fn object_type(kind: KeyKind) -> object::Type {
    match kind {
        KeyKind::Seal => object::Type::HmacKey,
        KeyKind::Secp256k1 | KeyKind::P256 => object::Type::AsymmetricKey,
    }
}

/// Which of our kinds an object is, if any.
fn kind_of(info: &object::Info) -> Option<KeyKind> {
    match (info.object_type, info.algorithm) {
        (object::Type::AsymmetricKey, Algorithm::Asymmetric(asymmetric::Algorithm::EcK256)) => {
            Some(KeyKind::Secp256k1)
        }
        (object::Type::AsymmetricKey, Algorithm::Asymmetric(asymmetric::Algorithm::EcP256)) => {
            Some(KeyKind::P256)
        }
        (object::Type::HmacKey, Algorithm::Hmac(hmac::Algorithm::Sha256)) => Some(KeyKind::Seal),
        _ => None,
    }
}

fn required_capability(kind: KeyKind) -> Capability {
    match kind {
        KeyKind::Seal => Capability::SIGN_HMAC,
        KeyKind::Secp256k1 | KeyKind::P256 => Capability::SIGN_ECDSA,
    }
}

fn object_label(label: &KeyLabel) -> Result<object::Label> {
    // KeyLabel holds at most 40 ASCII bytes, the device's label size.
    object::Label::from_bytes(label.as_str().as_bytes()).map_err(|e| {
        Error::new(BACKEND, Operation::Generate, ErrorKind::Internal)
            .label(label)
            .detail(format!("label does not fit a YubiHSM2 object label: {e}"))
    })
}

/// The device, the settings that shape keys, and the label cache.
pub(crate) struct Inner {
    pub device: Device,
    pub domains: Domain,
    pub backup_wrap_key_id: Option<u16>,
    cache: Mutex<HashMap<KeyLabel, KeyEntry>>,
}

impl Inner {
    pub(crate) fn new(device: Device, domains: Domain, backup_wrap_key_id: Option<u16>) -> Self {
        Inner {
            device,
            domains,
            backup_wrap_key_id,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<KeyLabel, KeyEntry>> {
        // The map stays valid even if a holder panicked.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cached(&self, label: &KeyLabel) -> Option<KeyEntry> {
        self.cache().get(label).cloned()
    }

    fn forget(&self, label: &KeyLabel) {
        self.cache().remove(label);
    }

    /// Runs `f` with the session, reconnecting once if it breaks. A new session may reach another
    /// device (or the same one after a restore), so the cache starts over.
    fn run<T>(
        &self,
        op: Operation,
        label: Option<&KeyLabel>,
        f: impl FnMut(&Client) -> Result<T, Fail>,
    ) -> Result<T> {
        self.device.run(op, label, || self.cache().clear(), f)
    }

    fn dev<T>(
        &self,
        op: Operation,
        label: Option<&KeyLabel>,
        r: Result<T, yubihsm::client::Error>,
    ) -> Result<T, Fail> {
        r.map_err(|e| self.device.classify(op, label, e))
    }

    /// The objects of our object types that carry `label` and lie in our domains.
    fn find(
        &self,
        client: &Client,
        op: Operation,
        label: &KeyLabel,
    ) -> Result<Vec<object::Info>, Fail> {
        let entries = self.dev(
            op,
            Some(label),
            client.list_objects(&[Filter::Label(object_label(label)?)]),
        )?;
        let mut found = Vec::new();
        for entry in entries {
            if !matches!(
                entry.object_type,
                object::Type::AsymmetricKey | object::Type::HmacKey
            ) {
                continue;
            }
            let info = self.dev(
                op,
                Some(label),
                client.get_object_info(entry.object_id, entry.object_type),
            )?;
            if info.domains.intersects(self.domains) {
                found.push(info);
            }
        }
        Ok(found)
    }

    /// The one object under `label`, or KeyNotFound.
    fn find_one(
        &self,
        client: &Client,
        op: Operation,
        label: &KeyLabel,
    ) -> Result<object::Info, Fail> {
        let mut found = self.find(client, op, label)?;
        match found.len() {
            0 => Err(Fail::Final(
                Error::new(BACKEND, op, ErrorKind::KeyNotFound)
                    .label(label)
                    .detail(format!(
                        "no key object with this label in domains {:?} of the YubiHSM2 at {}",
                        self.domains,
                        self.device.endpoint()
                    )),
            )),
            1 => Ok(found.remove(0)),
            _ => Err(Fail::Final(
                Error::new(BACKEND, op, ErrorKind::KeyPolicy)
                    .label(label)
                    .detail(format!(
                        "{} objects carry this label (ids {}), so it does not name one key",
                        found.len(),
                        found
                            .iter()
                            .map(|i| format!("0x{:04x}", i.object_id))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                    .hint("delete the objects that are not the signer's with yubihsm-shell"),
            )),
        }
    }

    /// Refuses keys that could leave the device or can do more than their role needs.
    pub(crate) fn check_policy(
        &self,
        op: Operation,
        label: &KeyLabel,
        info: &object::Info,
        kind: KeyKind,
    ) -> Result<()> {
        let caps = info.capabilities;
        let required = required_capability(kind);
        let refuse = |detail: String, hint: &str| {
            Err(Error::new(BACKEND, op, ErrorKind::KeyPolicy)
                .label(label)
                .detail(detail)
                .hint(hint.to_owned()))
        };
        if !caps.contains(required) {
            return refuse(
                format!(
                    "the {kind} key (object 0x{:04x}) lacks {required:?}",
                    info.object_id
                ),
                "destroy it and generate a new one with `sbtc-hsm-signer keys generate`",
            );
        }
        let mut allowed = required;
        if self.backup_wrap_key_id.is_some() {
            allowed |= Capability::EXPORTABLE_UNDER_WRAP;
        }
        let extra = caps - allowed;
        if extra.contains(Capability::EXPORTABLE_UNDER_WRAP) {
            return refuse(
                format!(
                    "the key (object 0x{:04x}) can be exported under a wrap key, but no \
                     backup_wrap_key_id is configured",
                    info.object_id
                ),
                "set backup_wrap_key_id in [custody.yubihsm] if this key is meant to be backed up; \
                 otherwise destroy it and generate a new one",
            );
        }
        if !extra.is_empty() {
            return refuse(
                format!(
                    "the {kind} key (object 0x{:04x}) has capabilities beyond {required:?}: {extra:?}",
                    info.object_id
                ),
                "destroy it and generate a new one with `sbtc-hsm-signer keys generate`, which \
                 grants only what the role needs",
            );
        }
        if matches!(info.origin, Origin::Imported | Origin::WrappedImported) {
            return refuse(
                format!(
                    "the key (object 0x{:04x}) was imported in plaintext, so a copy may exist \
                     outside the device",
                    info.object_id
                ),
                "destroy it and generate a new key on the device with `sbtc-hsm-signer keys generate`",
            );
        }
        Ok(())
    }

    fn public_key_of(
        &self,
        client: &Client,
        op: Operation,
        label: &KeyLabel,
        id: u16,
        kind: KeyKind,
    ) -> Result<Option<PublicKey>, Fail> {
        if kind == KeyKind::Seal {
            return Ok(None);
        }
        let raw = self.dev(op, Some(label), client.get_public_key(id))?;
        // The device sends x || y; SEC1 wants the 0x04 tag in front.
        let mut sec1 = Vec::with_capacity(65);
        sec1.push(0x04);
        sec1.extend_from_slice(raw.as_slice());
        PublicKey::from_sec1(kind, &sec1).map(Some).map_err(|e| {
            Fail::Final(
                Error::new(BACKEND, op, ErrorKind::Device)
                    .label(label)
                    .detail(format!("the device returned an unusable public key: {e}")),
            )
        })
    }

    /// The usable key under `label`: from the cache, or looked up, checked and cached.
    fn resolve(
        &self,
        client: &Client,
        op: Operation,
        label: &KeyLabel,
    ) -> Result<(KeyEntry, bool), Fail> {
        if let Some(entry) = self.cached(label) {
            return Ok((entry, true));
        }
        let info = self.find_one(client, op, label)?;
        let Some(kind) = kind_of(&info) else {
            return Err(Fail::Final(
                Error::new(BACKEND, op, ErrorKind::WrongKeyKind)
                    .label(label)
                    .detail(format!(
                        "object 0x{:04x} is a {:?} key, not one of secp256k1, p256 or seal",
                        info.object_id, info.algorithm
                    )),
            ));
        };
        self.check_policy(op, label, &info, kind)?;
        let public_key = self.public_key_of(client, op, label, info.object_id, kind)?;
        let entry = KeyEntry {
            id: info.object_id,
            kind,
            public_key,
        };
        self.cache().insert(label.clone(), entry.clone());
        Ok((entry, false))
    }

    /// Resolves `label` as a key of `kind` and runs `f` with it. When `f` reports that a cached
    /// entry looks stale, looks the label up afresh and runs `f` once more.
    fn with_key<T>(
        &self,
        client: &Client,
        op: Operation,
        label: &KeyLabel,
        kind: KeyKind,
        mut f: impl FnMut(&KeyEntry) -> Result<T, Fail>,
    ) -> Result<T, Fail> {
        let (entry, from_cache) = self.resolve(client, op, label)?;
        expect_kind(op, label, &entry, kind)?;
        match f(&entry) {
            Err(Fail::Stale(e)) if from_cache => {
                tracing::info!(backend = %BACKEND, %op, %label, error = %e, "cached key entry is stale; looking it up again");
                self.forget(label);
                let (entry, _) = self.resolve(client, op, label)?;
                expect_kind(op, label, &entry, kind)?;
                f(&entry)
            }
            Err(Fail::Stale(e)) => {
                self.forget(label);
                Err(Fail::Final(e))
            }
            other => other,
        }
    }

    /// A device error on a known key: "object not found" means our cached id may be out of date.
    fn key_call<T>(
        &self,
        op: Operation,
        label: &KeyLabel,
        r: Result<T, yubihsm::client::Error>,
    ) -> Result<T, Fail> {
        match r {
            Ok(v) => Ok(v),
            Err(e) if e.device_error() == Some(yubihsm::device::ErrorKind::ObjectNotFound) => {
                Err(Fail::Stale(self.device.final_error(op, Some(label), e)))
            }
            Err(e) => Err(self.device.classify(op, Some(label), e)),
        }
    }

    fn free_id(
        &self,
        client: &Client,
        op: Operation,
        label: &KeyLabel,
        after: u16,
    ) -> Result<u16, Fail> {
        let used: BTreeSet<u16> = self
            .dev(op, Some(label), client.list_objects(&[]))?
            .into_iter()
            .map(|e| e.object_id)
            .collect();
        (after.max(FIRST_KEY_ID)..u16::MAX)
            .find(|id| !used.contains(id))
            .ok_or_else(|| {
                Fail::Final(
                    Error::new(BACKEND, op, ErrorKind::Device)
                        .label(label)
                        .detail("no free object id left on the device"),
                )
            })
    }

    pub(crate) fn capabilities_for(&self, kind: KeyKind) -> Capability {
        let mut caps = required_capability(kind);
        if self.backup_wrap_key_id.is_some() {
            caps |= Capability::EXPORTABLE_UNDER_WRAP;
        }
        caps
    }

    // ---- operations (blocking; called on the backend's pool) ----

    pub(crate) fn generate(&self, label: &KeyLabel, kind: KeyKind) -> Result<KeyInfo> {
        let op = Operation::Generate;
        let obj_label = object_label(label)?;
        let caps = self.capabilities_for(kind);
        // The id sent in the last generate command: if the session broke after the device made
        // the key but before we heard back, the retry finds it under our label and keeps it.
        let mut sent: Option<u16> = None;
        self.run(op, Some(label), |client| {
            let existing = self.find(client, op, label)?;
            if let [info] = existing.as_slice() {
                if Some(info.object_id) == sent && info.origin == Origin::Generated {
                    if let Some(kind_found) = kind_of(info).filter(|k| *k == kind) {
                        return self.finish_generate(client, label, info, kind_found);
                    }
                }
            }
            if let Some(info) = existing.first() {
                return Err(Fail::Final(
                    Error::new(BACKEND, op, ErrorKind::KeyExists)
                        .label(label)
                        .detail(format!(
                            "object 0x{:04x} ({:?}) already carries this label",
                            info.object_id, info.algorithm
                        )),
                ));
            }
            let mut after = FIRST_KEY_ID;
            for _ in 0..ID_ATTEMPTS {
                let id = self.free_id(client, op, label, after)?;
                sent = Some(id);
                let made = match kind {
                    KeyKind::Secp256k1 | KeyKind::P256 => client.generate_asymmetric_key(
                        id,
                        obj_label.clone(),
                        self.domains,
                        caps,
                        if kind == KeyKind::Secp256k1 {
                            asymmetric::Algorithm::EcK256
                        } else {
                            asymmetric::Algorithm::EcP256
                        },
                    ),
                    KeyKind::Seal => client.generate_hmac_key(
                        id,
                        obj_label.clone(),
                        self.domains,
                        caps,
                        hmac::Algorithm::Sha256,
                    ),
                };
                match made {
                    Ok(id) => {
                        let info = self.dev(
                            op,
                            Some(label),
                            client.get_object_info(id, object_type(kind)),
                        )?;
                        return self.finish_generate(client, label, &info, kind);
                    }
                    // Taken by an object outside our domains, which we cannot list: next id.
                    Err(e)
                        if e.device_error() == Some(yubihsm::device::ErrorKind::ObjectExists) =>
                    {
                        after = id.saturating_add(1);
                    }
                    Err(e) => return Err(self.device.classify(op, Some(label), e)),
                }
            }
            Err(Fail::Final(
                Error::new(BACKEND, op, ErrorKind::Device)
                    .label(label)
                    .detail(format!(
                        "{ID_ATTEMPTS} object ids in a row were taken on the device"
                    )),
            ))
        })
    }

    fn finish_generate(
        &self,
        client: &Client,
        label: &KeyLabel,
        info: &object::Info,
        kind: KeyKind,
    ) -> Result<KeyInfo, Fail> {
        let op = Operation::Generate;
        // The device may have clipped capabilities to what the auth key may delegate.
        self.check_policy(op, label, info, kind)?;
        let public_key = self.public_key_of(client, op, label, info.object_id, kind)?;
        self.cache().insert(
            label.clone(),
            KeyEntry {
                id: info.object_id,
                kind,
                public_key,
            },
        );
        tracing::info!(backend = %BACKEND, %label, %kind, id = info.object_id, "generated key on the YubiHSM2");
        Ok(KeyInfo {
            label: label.clone(),
            kind,
            public_key,
        })
    }

    pub(crate) fn public_key(&self, label: &KeyLabel) -> Result<PublicKey> {
        let op = Operation::PublicKey;
        self.run(op, Some(label), |client| {
            let (entry, _) = self.resolve(client, op, label)?;
            entry.public_key.ok_or_else(|| {
                Fail::Final(
                    Error::new(BACKEND, op, ErrorKind::WrongKeyKind)
                        .label(label)
                        .detail("a sealing key has no public key"),
                )
            })
        })
    }

    pub(crate) fn list(&self) -> Result<Vec<KeyInfo>> {
        let op = Operation::List;
        self.run(op, None, |client| {
            let mut out = Vec::new();
            for ty in [object::Type::AsymmetricKey, object::Type::HmacKey] {
                for entry in self.dev(op, None, client.list_objects(&[Filter::Type(ty)]))? {
                    let info = self.dev(
                        op,
                        None,
                        client.get_object_info(entry.object_id, entry.object_type),
                    )?;
                    if !info.domains.intersects(self.domains) {
                        continue;
                    }
                    let Some(kind) = kind_of(&info) else { continue };
                    let Some(label) = info
                        .label
                        .try_as_str()
                        .ok()
                        .and_then(|s| KeyLabel::new(s).ok())
                    else {
                        continue;
                    };
                    let public_key = match self.cached(&label) {
                        Some(c) if c.id == info.object_id => c.public_key,
                        _ => self.public_key_of(client, op, &label, info.object_id, kind)?,
                    };
                    out.push(KeyInfo {
                        label,
                        kind,
                        public_key,
                    });
                }
            }
            out.sort_by(|a, b| a.label.cmp(&b.label));
            Ok(out)
        })
    }

    pub(crate) fn sign_secp256k1(
        &self,
        label: &KeyLabel,
        digest: &[u8; 32],
    ) -> Result<RecoverableSignature> {
        let op = Operation::SignSecp256k1;
        self.run(op, Some(label), |client| {
            self.with_key(client, op, label, KeyKind::Secp256k1, |entry| {
                let der = self.key_call(
                    op,
                    label,
                    client.sign_ecdsa_prehash_raw(entry.id, digest.to_vec()),
                )?;
                let sig = secp256k1::ecdsa::Signature::from_der(&der).map_err(|e| {
                    Fail::Final(
                        Error::new(BACKEND, op, ErrorKind::Device)
                            .label(label)
                            .detail(format!(
                                "the device returned a malformed DER signature: {e}"
                            )),
                    )
                })?;
                let Some(PublicKey::Secp256k1(pk)) = entry.public_key else {
                    return Err(Fail::Final(internal(
                        op,
                        label,
                        "secp256k1 entry without its public key",
                    )));
                };
                normalize_secp256k1(&sig.serialize_compact(), digest, &pk).map_err(|e| {
                    // Another key now sits at the cached id, or the device misbehaves.
                    Fail::Stale(
                        Error::new(BACKEND, op, ErrorKind::Device)
                            .label(label)
                            .detail(format!(
                                "the device's signature does not match the key: {e}"
                            )),
                    )
                })
            })
        })
    }

    pub(crate) fn sign_p256(&self, label: &KeyLabel, digest: &[u8; 32]) -> Result<P256Signature> {
        let op = Operation::SignP256;
        self.run(op, Some(label), |client| {
            self.with_key(client, op, label, KeyKind::P256, |entry| {
                let der = self.key_call(
                    op,
                    label,
                    client.sign_ecdsa_prehash_raw(entry.id, digest.to_vec()),
                )?;
                let malformed = |e: String| {
                    Fail::Final(
                        Error::new(BACKEND, op, ErrorKind::Device)
                            .label(label)
                            .detail(format!("the device returned a malformed signature: {e}")),
                    )
                };
                let sig =
                    p256::ecdsa::Signature::from_der(&der).map_err(|e| malformed(e.to_string()))?;
                let sig = P256Signature::from_raw(&sig.to_bytes())
                    .map_err(|e| malformed(e.to_string()))?;
                let Some(PublicKey::P256(pk)) = entry.public_key else {
                    return Err(Fail::Final(internal(
                        op,
                        label,
                        "P-256 entry without its public key",
                    )));
                };
                // Cheap next to the device call, and it catches a replaced object behind a cached id.
                if !sig.verify(digest, &pk) {
                    return Err(Fail::Stale(
                        Error::new(BACKEND, op, ErrorKind::Device)
                            .label(label)
                            .detail(
                                "the device's signature does not verify under the key's public key",
                            ),
                    ));
                }
                Ok(sig)
            })
        })
    }

    /// HMAC-SHA256 of `message` under the sealing key `label`, zeroized when dropped.
    pub(crate) fn hmac(
        &self,
        op: Operation,
        label: &KeyLabel,
        message: &[u8],
    ) -> Result<Zeroizing<[u8; 32]>> {
        self.run(op, Some(label), |client| {
            self.with_key(client, op, label, KeyKind::Seal, |entry| {
                let tag = self.key_call(op, label, client.sign_hmac(entry.id, message.to_vec()))?;
                let tag = Zeroizing::new(tag.into_vec());
                let mut out = Zeroizing::new([0u8; 32]);
                if tag.len() != out.len() {
                    return Err(Fail::Final(
                        Error::new(BACKEND, op, ErrorKind::Device)
                            .label(label)
                            .detail(format!(
                                "the device returned a {}-byte HMAC, expected 32",
                                tag.len()
                            )),
                    ));
                }
                out.copy_from_slice(&tag);
                Ok(out)
            })
        })
    }

    pub(crate) fn destroy(&self, label: &KeyLabel) -> Result<()> {
        let op = Operation::Destroy;
        let mut deleted: Option<u16> = None;
        self.run(op, Some(label), |client| {
            let info = match self.find_one(client, op, label) {
                Ok(info) => info,
                // The first attempt deleted it but the answer was lost.
                Err(Fail::Final(e)) if e.kind() == ErrorKind::KeyNotFound && deleted.is_some() => {
                    self.forget(label);
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            if kind_of(&info).is_none() {
                return Err(Fail::Final(
                    Error::new(BACKEND, op, ErrorKind::WrongKeyKind)
                        .label(label)
                        .detail(format!(
                            "object 0x{:04x} ({:?}) is not a key this signer manages; it was left alone",
                            info.object_id, info.algorithm
                        )),
                ));
            }
            deleted = Some(info.object_id);
            self.dev(op, Some(label), client.delete_object(info.object_id, info.object_type))?;
            self.forget(label);
            tracing::info!(backend = %BACKEND, %label, id = info.object_id, "destroyed key on the YubiHSM2");
            Ok(())
        })
    }

    pub(crate) fn backup(&self, label: &KeyLabel) -> Result<Vec<u8>> {
        let op = Operation::Backup;
        let wrap_key_id = self.require_wrap_key(label)?;
        self.run(op, Some(label), |client| {
            let info = self.find_one(client, op, label)?;
            let Some(kind) = kind_of(&info) else {
                return Err(Fail::Final(
                    Error::new(BACKEND, op, ErrorKind::WrongKeyKind)
                        .label(label)
                        .detail("not a key this signer manages"),
                ));
            };
            if !info.capabilities.contains(Capability::EXPORTABLE_UNDER_WRAP) {
                return Err(Fail::Final(
                    Error::new(BACKEND, op, ErrorKind::Unsupported)
                        .label(label)
                        .detail("the key was generated without EXPORTABLE_UNDER_WRAP, so the device will not export it")
                        .hint("keys made before backup_wrap_key_id was set cannot be backed up; make a new key and move to it"),
                ));
            }
            self.check_policy(op, label, &info, kind)?;
            let message = self.dev(
                op,
                Some(label),
                client.export_wrapped(wrap_key_id, info.object_type, info.object_id),
            )?;
            tracing::info!(backend = %BACKEND, %label, wrap_key_id, "exported key under wrap key");
            Ok(message.into_vec())
        })
    }

    pub(crate) fn restore(&self, wrapped: &[u8]) -> Result<KeyInfo> {
        let op = Operation::Backup;
        let wrap_key_id = self.require_wrap_key_for_restore()?;
        let message = wrap::Message::from_vec(wrapped.to_vec()).map_err(|e| {
            Error::new(BACKEND, op, ErrorKind::Corrupt)
                .detail(format!("not a YubiHSM2 wrapped object: {e}"))
        })?;
        self.run(op, None, |client| {
            let handle = match client.import_wrapped(wrap_key_id, message.clone()) {
                Ok(h) => h,
                Err(e) => {
                    let fail = self.device.classify(op, None, e);
                    return Err(match fail {
                        Fail::Final(err) if err.kind() == ErrorKind::Device => Fail::Final(
                            Error::new(BACKEND, op, ErrorKind::Tampered)
                                .detail(format!(
                                    "the device refused to unwrap the backup under wrap key {wrap_key_id}: {}",
                                    err.detail_text()
                                ))
                                .hint("check that the backup was made under this wrap key and is unchanged"),
                        ),
                        other => other,
                    });
                }
            };
            let info = self.dev(op, None, client.get_object_info(handle.object_id, handle.object_type))?;
            let label = info.label.try_as_str().ok().and_then(|s| KeyLabel::new(s).ok());
            let (label, kind) = match (label, kind_of(&info)) {
                (Some(label), Some(kind)) => (label, kind),
                _ => {
                    self.dev(op, None, client.delete_object(handle.object_id, handle.object_type))?;
                    return Err(Fail::Final(Error::new(BACKEND, op, ErrorKind::Corrupt).detail(
                        format!(
                            "the backup holds a {:?} object labelled {:?}, not a key this signer \
                             manages; it was deleted again",
                            info.algorithm, info.label
                        ),
                    )));
                }
            };
            let problem = if self.find(client, op, &label)?.len() > 1 {
                Some(
                    Error::new(BACKEND, op, ErrorKind::KeyExists)
                        .label(&label)
                        .detail(
                            "another key already carries the restored key's label; the restored \
                             copy was deleted again",
                        ),
                )
            } else {
                self.check_policy(op, &label, &info, kind).err()
            };
            if let Some(err) = problem {
                self.dev(op, None, client.delete_object(handle.object_id, handle.object_type))?;
                return Err(Fail::Final(err));
            }
            self.forget(&label);
            let public_key = self.public_key_of(client, op, &label, info.object_id, kind)?;
            tracing::info!(backend = %BACKEND, %label, id = info.object_id, "restored key from backup");
            Ok(KeyInfo {
                label,
                kind,
                public_key,
            })
        })
    }

    fn require_wrap_key(&self, label: &KeyLabel) -> Result<u16> {
        self.backup_wrap_key_id.ok_or_else(|| {
            Error::new(BACKEND, Operation::Backup, ErrorKind::Config)
                .label(label)
                .detail("key backup is off: no backup_wrap_key_id in [custody.yubihsm]")
                .hint(
                    "put a wrap key on the device (yubihsm-shell `generate wrapkey` or `put wrapkey` on \
                     each device that must read the backup), set backup_wrap_key_id, and generate the \
                     keys after that: only keys made then are exportable",
                )
        })
    }

    fn require_wrap_key_for_restore(&self) -> Result<u16> {
        self.backup_wrap_key_id.ok_or_else(|| {
            Error::new(BACKEND, Operation::Backup, ErrorKind::Config)
                .detail("cannot restore: no backup_wrap_key_id in [custody.yubihsm]")
                .hint("set backup_wrap_key_id to the wrap key the backup was made under")
        })
    }

    pub(crate) fn ping(&self) -> Result<std::time::Duration> {
        let op = Operation::Health;
        self.run(op, None, |client| self.dev(op, None, client.ping()))
    }
}

fn expect_kind(
    op: Operation,
    label: &KeyLabel,
    entry: &KeyEntry,
    kind: KeyKind,
) -> Result<(), Fail> {
    if entry.kind == kind {
        Ok(())
    } else {
        Err(Fail::Final(
            Error::new(BACKEND, op, ErrorKind::WrongKeyKind)
                .label(label)
                .detail(format!(
                    "the key is a {} key; this operation needs a {kind} key",
                    entry.kind
                )),
        ))
    }
}

fn internal(op: Operation, label: &KeyLabel, what: &str) -> Error {
    Error::new(BACKEND, op, ErrorKind::Internal)
        .label(label)
        .detail(what.to_owned())
}
