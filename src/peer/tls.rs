//! TLS 1.3 with the private key in custody, and admission by the signer set.
//!
//! [`CustodyTlsKey`] is a rustls signing key whose `sign` hashes the handshake transcript and asks
//! `Custody::sign_p256_prehash`: one HSM signature per handshake per side. rustls calls it
//! synchronously from inside a handshake, so the custody call runs on a dedicated thread with its
//! own small runtime, and the handshake waits for the answer (handing its worker's other tasks to
//! another thread on a multi-thread runtime). Nothing waits on the runtime that drives the
//! handshake, so this cannot deadlock on either runtime flavour.
//!
//! [`PeerVerifier`] is both the client-certificate and the server-certificate verifier: a peer is
//! admitted if its certificate's binding verifies, its validity period holds, its identity key is
//! in the current signer set, and (if the set pins one) its SPKI hash matches. Handshake signatures
//! are checked with the provider's own TLS 1.3 verification, P-256 with SHA-256 only.

use std::{fmt, sync::Arc, time::Duration};

use rustls::{
    client::{
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        ResolvesClientCert,
    },
    crypto::{CryptoProvider, WebPkiSupportedAlgorithms},
    pki_types::{CertificateDer, ServerName, UnixTime},
    server::{
        danger::{ClientCertVerified, ClientCertVerifier},
        ClientHello, ResolvesServerCert,
    },
    sign::CertifiedKey,
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, ServerConfig,
    SignatureAlgorithm, SignatureScheme, SupportedProtocolVersion,
};
use sbtc_custody::{Custody, KeyLabel, P256Signature};
use sha2::{Digest, Sha256};

use super::{
    cert::{self, CertError, CertInfo, PeerCertificate},
    limits::DEFAULT_MAX_CERT_LIFETIME,
    metrics::Metrics,
    set::SharedSet,
    PeerError,
};

/// How long a handshake waits for the backend's signature.
const SIGN_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshake signatures waiting for the backend; more fail the handshake (bounded memory).
const SIGN_QUEUE: usize = 1024;

type Job = (
    [u8; 32],
    std::sync::mpsc::SyncSender<Result<P256Signature, sbtc_custody::Error>>,
);

/// The custody-held TLS key as rustls sees it.
#[derive(Clone)]
pub struct CustodyTlsKey {
    inner: Arc<KeyInner>,
}

struct KeyInner {
    jobs: tokio::sync::mpsc::Sender<Job>,
    label: KeyLabel,
    metrics: Arc<Metrics>,
}

impl CustodyTlsKey {
    /// Starts the signing thread for `label` in `custody`. The thread ends when the last clone of
    /// the key is dropped.
    pub fn new(
        custody: Arc<dyn Custody>,
        label: KeyLabel,
        metrics: Arc<Metrics>,
    ) -> Result<CustodyTlsKey, PeerError> {
        let (jobs, mut rx) = tokio::sync::mpsc::channel::<Job>(SIGN_QUEUE);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| PeerError::Tls(format!("cannot start the TLS signing runtime: {e}")))?;
        let thread_label = label.clone();
        std::thread::Builder::new()
            .name("peer-tls-sign".into())
            .spawn(move || {
                runtime.block_on(async move {
                    while let Some((digest, reply)) = rx.recv().await {
                        let custody = custody.clone();
                        let label = thread_label.clone();
                        tokio::spawn(async move {
                            let out = crate::keys::with_reason(
                                "tls handshake",
                                custody.sign_p256_prehash(&label, &digest),
                            )
                            .await;
                            let _ = reply.send(out);
                        });
                    }
                });
            })
            .map_err(|e| PeerError::Tls(format!("cannot start the TLS signing thread: {e}")))?;
        Ok(CustodyTlsKey {
            inner: Arc::new(KeyInner {
                jobs,
                label,
                metrics,
            }),
        })
    }
}

impl fmt::Debug for CustodyTlsKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CustodyTlsKey({})", self.inner.label)
    }
}

impl rustls::sign::SigningKey for CustodyTlsKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn rustls::sign::Signer>> {
        offered
            .contains(&SignatureScheme::ECDSA_NISTP256_SHA256)
            .then(|| Box::new(self.clone()) as Box<dyn rustls::sign::Signer>)
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::ECDSA
    }
}

impl rustls::sign::Signer for CustodyTlsKey {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        let digest: [u8; 32] = Sha256::digest(message).into();
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        self.inner.jobs.try_send((digest, reply)).map_err(|_| {
            rustls::Error::General("the TLS key's custody backend is busy or gone".into())
        })?;
        let wait = || answer.recv_timeout(SIGN_TIMEOUT);
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let answer = if multi_thread {
            tokio::task::block_in_place(wait)
        } else {
            wait()
        };
        Metrics::inc(&self.inner.metrics.tls_signatures);
        match answer {
            Ok(Ok(sig)) => Ok(sig.to_der()),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "TLS handshake signature failed");
                Err(rustls::Error::General(format!("custody: {e}")))
            }
            Err(_) => Err(rustls::Error::General(
                "no TLS signature from the custody backend in time".into(),
            )),
        }
    }

    fn scheme(&self) -> SignatureScheme {
        SignatureScheme::ECDSA_NISTP256_SHA256
    }
}

/// Admits exactly the peers in the current signer set (see the module docs).
pub struct PeerVerifier {
    set: Arc<SharedSet>,
    metrics: Arc<Metrics>,
    algorithms: WebPkiSupportedAlgorithms,
    max_lifetime: Duration,
}

impl fmt::Debug for PeerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PeerVerifier")
    }
}

impl PeerVerifier {
    /// A verifier that admits certificates of at most the default lifetime (30 days).
    pub fn new(set: Arc<SharedSet>, metrics: Arc<Metrics>) -> Arc<PeerVerifier> {
        Self::with_max_lifetime(set, metrics, DEFAULT_MAX_CERT_LIFETIME)
    }

    /// A verifier that refuses certificates whose not_after - not_before exceeds `max_lifetime`.
    pub fn with_max_lifetime(
        set: Arc<SharedSet>,
        metrics: Arc<Metrics>,
        max_lifetime: Duration,
    ) -> Arc<PeerVerifier> {
        Arc::new(PeerVerifier {
            set,
            metrics,
            algorithms: provider().signature_verification_algorithms,
            max_lifetime,
        })
    }

    /// The admission decision, without counting.
    pub fn admit(&self, der: &[u8], now: i64) -> Result<CertInfo, CertError> {
        let info = cert::parse(der)?;
        info.check_lifetime(self.max_lifetime)?;
        info.check_time(now)?;
        let set = self.set.get();
        let member = set
            .get(&info.identity)
            .ok_or_else(|| CertError::NotInSet(hex::encode(info.identity.serialize())))?;
        if let Some(pin) = member.spki_pin {
            if pin != info.spki_sha256() {
                return Err(CertError::PinMismatch(hex::encode(
                    info.identity.serialize(),
                )));
            }
        }
        Ok(info)
    }

    fn check(
        &self,
        der: &CertificateDer<'_>,
        now: UnixTime,
        side: &'static str,
    ) -> Result<(), rustls::Error> {
        let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        match self.admit(der.as_ref(), now) {
            Ok(_) => Ok(()),
            Err(e) => {
                self.metrics.refuse(e.reason());
                // The binding names the peer; for a bad binding that name is only a claim.
                let peer = cert::claimed_identity(der.as_ref())
                    .map(|k| hex::encode(k.serialize()))
                    .unwrap_or_else(|| "unknown".into());
                tracing::warn!(side, %peer, reason = e.reason(), error = %e, "peer handshake refused");
                Err(rustls::Error::InvalidCertificate(match e {
                    CertError::Expired => CertificateError::Expired,
                    CertError::NotYetValid => CertificateError::NotValidYet,
                    CertError::Malformed(_) => CertificateError::BadEncoding,
                    CertError::BadBinding | CertError::BadBindingEncoding(_) => {
                        CertificateError::BadSignature
                    }
                    _ => CertificateError::ApplicationVerificationFailure,
                }))
            }
        }
    }

    fn verify13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if dss.scheme != SignatureScheme::ECDSA_NISTP256_SHA256 {
            return Err(rustls::Error::PeerMisbehaved(
                rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme,
            ));
        }
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }
}

impl ClientCertVerifier for PeerVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity, now, "inbound")
            .map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not accepted".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ECDSA_NISTP256_SHA256]
    }
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity, now, "outbound")
            .map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not accepted".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ECDSA_NISTP256_SHA256]
    }
}

/// The ring provider: no C toolchain beyond a C compiler (aws-lc-rs would need cmake).
pub fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// The certificate a node presents on both sides, replaced when the node renews it.
#[derive(Debug)]
pub(crate) struct CertSlot {
    key: CustodyTlsKey,
    current: std::sync::RwLock<Arc<CertifiedKey>>,
}

impl CertSlot {
    pub(crate) fn new(key: &CustodyTlsKey, cert: &PeerCertificate) -> Arc<CertSlot> {
        Arc::new(CertSlot {
            key: key.clone(),
            current: std::sync::RwLock::new(Self::certified(key, cert)),
        })
    }

    fn certified(key: &CustodyTlsKey, cert: &PeerCertificate) -> Arc<CertifiedKey> {
        Arc::new(CertifiedKey::new(
            vec![cert.der().clone()],
            Arc::new(key.clone()),
        ))
    }

    /// New handshakes present `cert` from now on (same TLS key).
    pub(crate) fn replace(&self, cert: &PeerCertificate) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Self::certified(&self.key, cert);
    }

    fn get(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl ResolvesServerCert for CertSlot {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

impl ResolvesClientCert for CertSlot {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The listener's config: TLS 1.3 only, a client certificate required and verified.
pub fn server_config(
    key: &CustodyTlsKey,
    cert: &PeerCertificate,
    verifier: Arc<PeerVerifier>,
) -> Result<Arc<ServerConfig>, PeerError> {
    server_config_with(CertSlot::new(key, cert), verifier)
}

/// [`server_config`] presenting whatever `slot` holds.
pub(crate) fn server_config_with(
    slot: Arc<CertSlot>,
    verifier: Arc<PeerVerifier>,
) -> Result<Arc<ServerConfig>, PeerError> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| PeerError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(slot);
    config.alpn_protocols = vec![b"h2".to_vec()];
    // No resumption: a resumed session skips the certificate check, so a peer dropped from the
    // set (or whose pin changed) could come back on an old ticket.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// The dialer's config: TLS 1.3 only (tests pass other versions to check they are refused).
pub fn client_config(
    key: &CustodyTlsKey,
    cert: &PeerCertificate,
    verifier: Arc<PeerVerifier>,
    versions: &[&'static SupportedProtocolVersion],
) -> Result<Arc<ClientConfig>, PeerError> {
    client_config_with(CertSlot::new(key, cert), verifier, versions)
}

/// [`client_config`] presenting whatever `slot` holds.
pub(crate) fn client_config_with(
    slot: Arc<CertSlot>,
    verifier: Arc<PeerVerifier>,
    versions: &[&'static SupportedProtocolVersion],
) -> Result<Arc<ClientConfig>, PeerError> {
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(versions)
        .map_err(|e| PeerError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(slot);
    config.alpn_protocols = vec![b"h2".to_vec()];
    // Every connection re-checks the peer against the current set (see server_config).
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// The server name a dialer presents; admission never depends on it.
pub fn peer_server_name() -> Result<ServerName<'static>, PeerError> {
    ServerName::try_from(cert::PEER_NAME).map_err(|e| PeerError::Tls(e.to_string()))
}
