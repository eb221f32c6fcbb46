//! The signer's peer certificate: self-signed through `Custody` with the P-256 TLS key (no private
//! key in memory), carrying the identity-key binding of [`super::binding`].
//!
//! The certificate is kept at `[peer] cert_path` so that its fingerprint stays what `peer card`
//! printed (ECDSA signatures are randomised, so a fresh certificate has a fresh fingerprint). It
//! is made again when missing, when less than a quarter of its validity is left, or when it does
//! not match the backend's current keys.

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use rcgen::{
    CertificateParams, CustomExtension, DistinguishedName, DnType, PublicKeyData, SerialNumber,
    SignatureAlgorithm, SigningKey, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::CertificateDer;
use sbtc_custody::{Custody, KeyLabel, PublicKey};
use sha2::{Digest, Sha256};
use x509_cert::{
    der::{Decode, Encode},
    spki::ObjectIdentifier,
    Certificate,
};

use super::{
    binding::{self, Binding, BindingError, BINDING_OID, BINDING_OID_STR},
    PeerError,
};

/// The DNS name in every peer certificate; peers are told apart by identity key, not name.
pub const PEER_NAME: &str = "sbtc-peer";

const ID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const PRIME256V1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const BINDING: ObjectIdentifier = ObjectIdentifier::new_unwrap(BINDING_OID_STR);

/// Why a peer certificate is refused. Each variant is a reason that is logged and counted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("certificate does not parse: {0}")]
    Malformed(String),
    #[error("certificate key is not a P-256 key")]
    WrongKeyType,
    #[error("certificate has no identity binding")]
    NoBinding,
    #[error("binding is malformed: {0}")]
    BadBindingEncoding(BindingError),
    #[error("binding signature does not verify against the identity key it names")]
    BadBinding,
    #[error("certificate expired")]
    Expired,
    #[error("certificate not valid yet")]
    NotYetValid,
    #[error(
        "certificate of {identity} is valid for {} (not_after - not_before), longer than the {} \
         this signer admits (max_cert_lifetime_days); its operator must make a shorter one \
         (cert_validity_days, then delete cert_path)",
        fmt_secs(*.lifetime), fmt_secs(*.max)
    )]
    LifetimeTooLong {
        identity: String,
        lifetime: i64,
        max: i64,
    },
    #[error("identity {0} is not in the signer set")]
    NotInSet(String),
    #[error("certificate public key does not match the SPKI pin for {0}")]
    PinMismatch(String),
}

impl CertError {
    /// A short label for counters.
    pub fn reason(&self) -> &'static str {
        match self {
            CertError::Malformed(_) | CertError::WrongKeyType => "bad_certificate",
            CertError::NoBinding | CertError::BadBindingEncoding(_) => "no_binding",
            CertError::BadBinding => "bad_binding",
            CertError::Expired => "expired",
            CertError::NotYetValid => "not_yet_valid",
            CertError::LifetimeTooLong { .. } => "lifetime_too_long",
            CertError::NotInSet(_) => "not_in_set",
            CertError::PinMismatch(_) => "pin_mismatch",
        }
    }
}

/// What a peer certificate says, once its binding has verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    pub identity: secp256k1::PublicKey,
    pub tls_key: p256::PublicKey,
    pub spki_der: Vec<u8>,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
}

impl CertInfo {
    /// SHA-256 of the SubjectPublicKeyInfo: the optional pin.
    pub fn spki_sha256(&self) -> [u8; 32] {
        Sha256::digest(&self.spki_der).into()
    }

    /// not_after - not_before, in seconds: the period the binding vouches for.
    pub fn lifetime(&self) -> i64 {
        self.not_after.saturating_sub(self.not_before)
    }

    /// Refuses a certificate whose lifetime is longer than `max`.
    pub fn check_lifetime(&self, max: Duration) -> Result<(), CertError> {
        let max = i64::try_from(max.as_secs()).unwrap_or(i64::MAX);
        if self.lifetime() > max {
            return Err(CertError::LifetimeTooLong {
                identity: hex::encode(self.identity.serialize()),
                lifetime: self.lifetime(),
                max,
            });
        }
        Ok(())
    }

    /// Checks the validity period against `now` (Unix seconds). The period is taken as
    /// [not_before, not_after): at whole seconds, "not after T" must already refuse T.5, which
    /// is when a connection closed at its peer's expiry (T) may redial.
    pub fn check_time(&self, now: i64) -> Result<(), CertError> {
        if now < self.not_before {
            return Err(CertError::NotYetValid);
        }
        if now >= self.not_after {
            return Err(CertError::Expired);
        }
        Ok(())
    }
}

/// Parses a peer certificate and verifies its binding (not time, not set membership).
pub fn parse(der: &[u8]) -> Result<CertInfo, CertError> {
    let (info, binding) = parse_unverified(der)?;
    if !binding.verifies(&info.spki_der, info.not_before, info.not_after) {
        return Err(CertError::BadBinding);
    }
    Ok(info)
}

/// The identity key a certificate's binding names, without checking the binding: only for
/// naming the peer in logs of a refusal. Never use it to admit a peer.
pub fn claimed_identity(der: &[u8]) -> Option<secp256k1::PublicKey> {
    parse_unverified(der).ok().map(|(info, _)| info.identity)
}

/// `2592000` -> "30 days", `90` -> "90 s".
fn fmt_secs(secs: i64) -> String {
    if secs >= 86_400 && secs % 86_400 == 0 {
        format!("{} days", secs / 86_400)
    } else if secs >= 86_400 {
        format!("{:.1} days", secs as f64 / 86_400.0)
    } else {
        format!("{secs} s")
    }
}

/// Parses a peer certificate without checking its binding signature.
fn parse_unverified(der: &[u8]) -> Result<(CertInfo, Binding), CertError> {
    let cert = Certificate::from_der(der).map_err(|e| CertError::Malformed(e.to_string()))?;
    let tbs = &cert.tbs_certificate;
    let spki = &tbs.subject_public_key_info;
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
    if spki.algorithm.oid != ID_EC_PUBLIC_KEY || curve != Some(PRIME256V1) {
        return Err(CertError::WrongKeyType);
    }
    let tls_key = spki
        .subject_public_key
        .as_bytes()
        .and_then(|b| p256::PublicKey::from_sec1_bytes(b).ok())
        .ok_or(CertError::WrongKeyType)?;
    let spki_der = spki
        .to_der()
        .map_err(|e| CertError::Malformed(e.to_string()))?;
    let not_before = unix(tbs.validity.not_before.to_unix_duration());
    let not_after = unix(tbs.validity.not_after.to_unix_duration());
    let ext = tbs
        .extensions
        .iter()
        .flatten()
        .find(|e| e.extn_id == BINDING)
        .ok_or(CertError::NoBinding)?;
    let binding =
        Binding::decode(ext.extn_value.as_bytes()).map_err(CertError::BadBindingEncoding)?;
    let info = CertInfo {
        identity: binding.identity,
        tls_key,
        spki_der,
        not_before,
        not_after,
    };
    Ok((info, binding))
}

fn unix(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// Unix seconds now.
pub fn now_unix() -> i64 {
    unix(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default(),
    )
}

/// A signer's certificate and what it says.
#[derive(Clone, Debug)]
pub struct PeerCertificate {
    der: CertificateDer<'static>,
    info: CertInfo,
}

impl PeerCertificate {
    pub fn from_der(der: Vec<u8>) -> Result<PeerCertificate, CertError> {
        let info = parse(&der)?;
        Ok(PeerCertificate {
            der: CertificateDer::from(der),
            info,
        })
    }

    /// Parses without checking the binding signature: for tests and tools that must present a
    /// certificate that peers refuse. Never use it to admit a peer.
    pub fn from_der_unverified(der: Vec<u8>) -> Result<PeerCertificate, CertError> {
        let (info, _) = parse_unverified(&der)?;
        Ok(PeerCertificate {
            der: CertificateDer::from(der),
            info,
        })
    }

    pub fn der(&self) -> &CertificateDer<'static> {
        &self.der
    }

    pub fn info(&self) -> &CertInfo {
        &self.info
    }

    /// SHA-256 of the whole certificate (DER).
    pub fn fingerprint(&self) -> [u8; 32] {
        Sha256::digest(self.der.as_ref()).into()
    }
}

/// What the certificate is made of: which keys, and for how long.
pub struct CertRequest<'a> {
    /// Holds the P-256 TLS key.
    pub tls: (&'a Arc<dyn Custody>, &'a KeyLabel),
    /// Holds the secp256k1 key that signs the binding.
    pub binder: (&'a Arc<dyn Custody>, &'a KeyLabel),
    /// The identity key the binding names: normally the binder's own public key. (A different key
    /// yields a certificate every peer refuses, which is what tests of that case need.)
    pub identity: secp256k1::PublicKey,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// How far back a new certificate's validity starts, for peers whose clocks are behind.
pub const CLOCK_SKEW: Duration = Duration::from_secs(3600);

/// Makes a certificate for this signer's keys whose whole lifetime (not_after - not_before) is
/// `validity`, starting [`CLOCK_SKEW`] ago; so it is never longer than a peer's maximum as long
/// as `validity` is not.
pub async fn generate(
    custody: &Arc<dyn Custody>,
    tls_label: &KeyLabel,
    identity_label: &KeyLabel,
    validity: Duration,
) -> Result<PeerCertificate, PeerError> {
    let identity = identity_key(custody, identity_label).await?;
    // Whole seconds, so that the lifetime is exactly `validity` (the certificate keeps seconds).
    let now = UNIX_EPOCH + Duration::from_secs(u64::try_from(now_unix()).unwrap_or(0));
    let validity = Duration::from_secs(validity.as_secs().max(1));
    let skew = Duration::from_secs(CLOCK_SKEW.as_secs().min(validity.as_secs() / 2));
    let cert = generate_with(CertRequest {
        tls: (custody, tls_label),
        binder: (custody, identity_label),
        identity,
        not_before: now - skew,
        not_after: now - skew + validity,
    })
    .await?;
    PeerCertificate::from_der(cert.der().to_vec())
        .map_err(|e| PeerError::Certificate(format!("the new certificate does not verify: {e}")))
}

/// The secp256k1 identity public key under `label`.
pub async fn identity_key(
    custody: &Arc<dyn Custody>,
    label: &KeyLabel,
) -> Result<secp256k1::PublicKey, PeerError> {
    match custody.public_key(label).await? {
        PublicKey::Secp256k1(k) => Ok(k),
        other => Err(PeerError::Certificate(format!(
            "key '{label}' is a {} key; the identity key must be secp256k1",
            other.kind()
        ))),
    }
}

/// The P-256 TLS public key under `label`.
pub async fn tls_key(
    custody: &Arc<dyn Custody>,
    label: &KeyLabel,
) -> Result<p256::PublicKey, PeerError> {
    match custody.public_key(label).await? {
        PublicKey::P256(k) => Ok(k),
        other => Err(PeerError::Certificate(format!(
            "key '{label}' is a {} key; the TLS key must be p256 (keys generate --role tls)",
            other.kind()
        ))),
    }
}

/// Makes a certificate exactly as `req` says: one secp256k1 signature (the binding) and one
/// P-256 signature (the certificate itself), both through `Custody`. The binding is not checked
/// here (tests make bad ones on purpose); [`generate`] checks it.
pub async fn generate_with(req: CertRequest<'_>) -> Result<PeerCertificate, PeerError> {
    let (tls_custody, tls_label) = req.tls;
    let (binder, binder_label) = req.binder;
    let tls_public = tls_key(tls_custody, tls_label).await?;
    let key = CustodyCertKey {
        point: PublicKey::P256(tls_public).to_sec1_uncompressed(),
        signature: None,
    };
    let spki_der = key.subject_public_key_info();
    let not_before = whole_seconds(req.not_before)?;
    let not_after = whole_seconds(req.not_after)?;
    let digest = binding::digest(
        &spki_der,
        not_before.unix_timestamp(),
        not_after.unix_timestamp(),
    );
    let signature = crate::keys::with_reason(
        "peer certificate: bind the TLS key to the identity key",
        binder.sign_secp256k1_prehash(binder_label, &digest),
    )
    .await?;
    let binding = Binding {
        identity: req.identity,
        signature,
    };

    let mut params = CertificateParams::new(vec![PEER_NAME.to_owned()])
        .map_err(|e| PeerError::Certificate(e.to_string()))?;
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        format!(
            "sbtc signer {}",
            hex::encode(&req.identity.serialize()[..8])
        ),
    );
    params.distinguished_name = dn;
    params.not_before = not_before;
    params.not_after = not_after;
    let serial: [u8; 16] = rand::random();
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    params
        .custom_extensions
        .push(CustomExtension::from_oid_content(
            BINDING_OID,
            binding.encode(),
        ));

    // rcgen signs synchronously; custody is async. So: one pass to learn the exact bytes to be
    // signed, the signature through custody, then a second pass that must ask for the same bytes
    // (the serial and times are fixed, so it does).
    let capture = CaptureTbs::default();
    let _ = params.self_signed(&CaptureKey {
        point: &key.point,
        tbs: &capture,
    });
    let tbs = capture
        .0
        .lock()
        .map_err(|_| PeerError::Certificate("poisoned".into()))?
        .take()
        .ok_or_else(|| PeerError::Certificate("rcgen asked for no signature".into()))?;
    let tbs_digest: [u8; 32] = Sha256::digest(&tbs).into();
    let sig = crate::keys::with_reason(
        "peer certificate: self-sign with the TLS key",
        tls_custody.sign_p256_prehash(tls_label, &tbs_digest),
    )
    .await?;
    let key = CustodyCertKey {
        point: key.point,
        signature: Some((tbs, sig.to_der())),
    };
    let cert = params
        .self_signed(&key)
        .map_err(|e| PeerError::Certificate(format!("cannot make the certificate: {e}")))?;
    PeerCertificate::from_der_unverified(cert.der().to_vec())
        .map_err(|e| PeerError::Certificate(format!("the new certificate does not parse: {e}")))
}

fn whole_seconds(t: SystemTime) -> Result<time::OffsetDateTime, PeerError> {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => unix(d),
        Err(e) => -unix(e.duration()),
    };
    time::OffsetDateTime::from_unix_timestamp(secs)
        .map_err(|e| PeerError::Certificate(format!("validity out of range: {e}")))
}

#[derive(Default)]
struct CaptureTbs(std::sync::Mutex<Option<Vec<u8>>>);

struct CaptureKey<'a> {
    point: &'a [u8],
    tbs: &'a CaptureTbs,
}

impl PublicKeyData for CaptureKey<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.point
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

impl SigningKey for CaptureKey<'_> {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        if let Ok(mut slot) = self.tbs.0.lock() {
            *slot = Some(msg.to_vec());
        }
        Err(rcgen::Error::RemoteKeyError)
    }
}

/// The custody TLS key as rcgen sees it: its public point, and the signature already made.
struct CustodyCertKey {
    point: Vec<u8>,
    signature: Option<(Vec<u8>, Vec<u8>)>,
}

impl PublicKeyData for CustodyCertKey {
    fn der_bytes(&self) -> &[u8] {
        &self.point
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

impl SigningKey for CustodyCertKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        match &self.signature {
            Some((tbs, sig)) if tbs == msg => Ok(sig.clone()),
            _ => Err(rcgen::Error::RemoteKeyError),
        }
    }
}

/// Loads the certificate at `path` if it still fits the backend's keys, is not longer-lived than
/// `validity` and has at least a quarter of `validity` left; otherwise makes a new one and writes
/// it there. Returns the certificate and whether it is new.
pub async fn load_or_generate(
    path: &Path,
    custody: &Arc<dyn Custody>,
    tls_label: &KeyLabel,
    identity_label: &KeyLabel,
    validity: Duration,
) -> Result<(PeerCertificate, bool), PeerError> {
    let identity = identity_key(custody, identity_label).await?;
    let tls = tls_key(custody, tls_label).await?;
    match std::fs::read(path) {
        Ok(der) => {
            if let Ok(cert) = PeerCertificate::from_der(der) {
                let info = cert.info();
                let margin = i64::try_from(validity.as_secs() / 4).unwrap_or(i64::MAX);
                if info.identity == identity
                    && info.tls_key == tls
                    && info.check_time(now_unix()).is_ok()
                    && info.check_lifetime(validity).is_ok()
                    && info.not_after.saturating_sub(now_unix()) > margin
                {
                    return Ok((cert, false));
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(PeerError::File {
                action: "read",
                path: path.to_owned(),
                source,
            })
        }
    }
    let cert = generate(custody, tls_label, identity_label, validity).await?;
    write_atomic(path, cert.der().as_ref())?;
    Ok((cert, true))
}

pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), PeerError> {
    use std::io::Write;
    let file_err = |action, source| PeerError::File {
        action,
        path: path.to_owned(),
        source,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| file_err("create the directory of", e))?;
    let mut tmp = tempfile_in(dir).map_err(|e| file_err("write", e))?;
    tmp.1.write_all(bytes).map_err(|e| file_err("write", e))?;
    tmp.1.sync_all().map_err(|e| file_err("sync", e))?;
    std::fs::rename(&tmp.0, path).map_err(|e| file_err("replace", e))?;
    Ok(())
}

fn tempfile_in(dir: &Path) -> std::io::Result<(std::path::PathBuf, std::fs::File)> {
    let name = format!(
        ".peer-cert-{}-{:x}.tmp",
        std::process::id(),
        rand::random::<u64>()
    );
    let path = dir.join(name);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)?;
    Ok((path, file))
}
