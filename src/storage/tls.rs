//! PostgreSQL over TLS (rustls, ring provider): which protection a `[storage] url` gets, and the
//! rustls client that gives it.
//!
//! The database holds the sealed DKG shares, the audit log and the no-equivocation guard's
//! decisions; a network path that can read or rewrite that traffic can make a signer sign twice.
//! So a server that is not on this machine is reached over TLS with the certificate and the host
//! name checked, unless the url says otherwise with libpq's `sslmode`:
//!
//! | `sslmode`          | loopback host                  | any other host                          |
//! |--------------------|--------------------------------|-----------------------------------------|
//! | (none)             | plain                          | TLS, certificate and host name verified |
//! | `disable`, `allow` | plain                          | refused, unless `insecure_plaintext`    |
//! | `prefer`           | TLS if offered (no checks)     | TLS required (no checks)                |
//! | `require`          | TLS required (no checks)       | TLS required (no checks)                |
//! | `verify-ca`        | TLS, certificate verified      | TLS, certificate verified               |
//! | `verify-full`      | TLS, certificate and host name | TLS, certificate and host name          |
//!
//! As in libpq, `require` with an `sslrootcert` verifies the certificate (like `verify-ca`).
//! `sslrootcert` is a PEM file of CA certificates; without it (or with `sslrootcert=system`) the
//! Mozilla roots built into the binary (webpki-roots) are trusted.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{
    client::{
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        WebPkiServerVerifier,
    },
    crypto::{ring, CryptoProvider},
    pki_types::{pem::PemObject, CertificateDer, ServerName, UnixTime},
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use super::{Error, ErrorKind, Result};

/// libpq's `sslmode` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn parse(value: &str) -> Result<SslMode> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(config_error(format!(
                    "[storage] url has sslmode={other:?}; use one of disable, allow, prefer, \
                     require, verify-ca, verify-full"
                )))
            }
        })
    }
}

/// How much of the server's certificate is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verify {
    /// Nothing (libpq's `prefer` and `require`): encrypted, but an active attacker can stand in
    /// for the server. SCRAM channel binding still catches one that relays a password login.
    Nothing,
    /// The chain up to a trusted root, not the host name (`verify-ca`).
    Chain,
    /// The chain and the host name (`verify-full`).
    ChainAndHostName,
}

/// Which CA certificates are trusted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Roots {
    /// The Mozilla roots built into the binary (webpki-roots).
    Mozilla,
    /// A PEM file (`sslrootcert`).
    File(PathBuf),
}

/// What the connection does, resolved from the url and the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsPolicy {
    /// No TLS.
    Plain,
    /// TLS if the server offers it, else plain (loopback `prefer` only).
    Opportunistic,
    /// TLS or no connection.
    Required { verify: Verify, roots: Roots },
}

impl TlsPolicy {
    /// The policy for `sslmode` and `sslrootcert` (as the url gave them) on a server that is
    /// (`local`) or is not on this machine. `insecure_plaintext` is `[storage]`'s opt-in to a
    /// plain connection to another machine.
    pub fn resolve(
        sslmode: Option<&str>,
        sslrootcert: Option<&str>,
        local: bool,
        insecure_plaintext: bool,
    ) -> Result<TlsPolicy> {
        let mode = sslmode.map(SslMode::parse).transpose()?;
        let roots =
            match sslrootcert {
                None | Some("system") => Roots::Mozilla,
                Some("") => return Err(config_error(
                    "[storage] url has an empty sslrootcert; give the path of the CA's PEM file"
                        .to_string(),
                )),
                Some(path) => Roots::File(PathBuf::from(path)),
            };
        let explicit_roots = sslrootcert.is_some();
        Ok(match mode {
            None if local => TlsPolicy::Plain,
            None => TlsPolicy::Required {
                verify: Verify::ChainAndHostName,
                roots,
            },
            Some(SslMode::Disable | SslMode::Allow) => {
                if !local && !insecure_plaintext {
                    return Err(config_error(
                        "[storage] url asks for a plain connection (sslmode=disable or allow) to \
                         a server that is not on this machine; anyone on the network path could \
                         read and change what the signer stores. Use sslmode=verify-full (or \
                         leave sslmode out), or, if the path is protected some other way (a VPN, \
                         an SSH tunnel), set insecure_plaintext = true in [storage]"
                            .to_string(),
                    ));
                }
                TlsPolicy::Plain
            }
            Some(SslMode::Prefer) if local && !explicit_roots => TlsPolicy::Opportunistic,
            Some(SslMode::Prefer | SslMode::Require) => TlsPolicy::Required {
                verify: if explicit_roots {
                    Verify::Chain
                } else {
                    Verify::Nothing
                },
                roots,
            },
            Some(SslMode::VerifyCa) => TlsPolicy::Required {
                verify: Verify::Chain,
                roots,
            },
            Some(SslMode::VerifyFull) => TlsPolicy::Required {
                verify: Verify::ChainAndHostName,
                roots,
            },
        })
    }

    /// The mode tokio-postgres negotiates with.
    pub fn ssl_mode(&self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode as Pg;
        match self {
            TlsPolicy::Plain => Pg::Disable,
            TlsPolicy::Opportunistic => Pg::Prefer,
            TlsPolicy::Required { .. } => Pg::Require,
        }
    }

    /// A line for logs and `Debug`.
    pub fn describe(&self) -> String {
        match self {
            TlsPolicy::Plain => "plain (no TLS)".to_string(),
            TlsPolicy::Opportunistic => "TLS if the server offers it, unverified".to_string(),
            TlsPolicy::Required { verify, roots } => {
                let roots = match roots {
                    Roots::Mozilla => "the built-in Mozilla roots".to_string(),
                    Roots::File(p) => p.display().to_string(),
                };
                match verify {
                    Verify::Nothing => "TLS, server certificate NOT verified".to_string(),
                    Verify::Chain => format!("TLS, certificate verified against {roots}"),
                    Verify::ChainAndHostName => {
                        format!("TLS, certificate and host name verified against {roots}")
                    }
                }
            }
        }
    }

    /// The rustls client for this policy; None for [`TlsPolicy::Plain`]. Reads the CA file.
    pub fn client_config(&self) -> Result<Option<ClientConfig>> {
        let provider = Arc::new(ring::default_provider());
        let (verify, roots) = match self {
            TlsPolicy::Plain => return Ok(None),
            TlsPolicy::Opportunistic => (Verify::Nothing, &Roots::Mozilla),
            TlsPolicy::Required { verify, roots } => (*verify, roots),
        };
        let verifier: Arc<dyn ServerCertVerifier> = match verify {
            Verify::Nothing => Arc::new(Unverified(provider.clone())),
            Verify::Chain => Arc::new(ChainOnly {
                roots: Arc::new(root_store(roots)?),
                provider: provider.clone(),
            }),
            Verify::ChainAndHostName => WebPkiServerVerifier::builder_with_provider(
                Arc::new(root_store(roots)?),
                provider.clone(),
            )
            .build()
            .map_err(|e| config_error(format!("cannot build the TLS verifier: {e}")))?,
        };
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| config_error(format!("cannot set up TLS: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        // PostgreSQL 17 checks the ALPN name; older servers ignore it.
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(Some(config))
    }
}

/// Whether every address the config connects to is on this machine: a loopback IP, `localhost`,
/// or a Unix socket. With `hostaddr` set, that is what is connected to, so that is what counts.
pub fn is_local(pg: &tokio_postgres::Config) -> bool {
    use tokio_postgres::config::Host;
    if !pg.get_hostaddrs().is_empty() {
        return pg.get_hostaddrs().iter().all(IpAddr::is_loopback);
    }
    pg.get_hosts().iter().all(|h| match h {
        Host::Tcp(name) => {
            let name = name.trim_start_matches('[').trim_end_matches(']');
            name.eq_ignore_ascii_case("localhost")
                || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
        }
        #[cfg(unix)]
        Host::Unix(_) => true,
    })
}

fn root_store(roots: &Roots) -> Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    match roots {
        Roots::Mozilla => store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Roots::File(path) => {
            let certs = read_pem_certs(path)?;
            let (added, ignored) = store.add_parsable_certificates(certs);
            if added == 0 {
                return Err(config_error(format!(
                    "sslrootcert {} holds no usable CA certificate ({ignored} could not be \
                     parsed); give the PEM file of the CA that signed the server's certificate",
                    path.display()
                )));
            }
        }
    }
    Ok(store)
}

fn read_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let shown = path.display();
    let iter = CertificateDer::pem_file_iter(path).map_err(|e| {
        config_error(format!(
            "cannot read sslrootcert {shown}: {e}; give the path of a readable PEM file"
        ))
    })?;
    let certs = iter
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| config_error(format!("sslrootcert {shown} is not a valid PEM file: {e}")))?;
    if certs.is_empty() {
        return Err(config_error(format!(
            "sslrootcert {shown} holds no certificate (no -----BEGIN CERTIFICATE----- block)"
        )));
    }
    Ok(certs)
}

/// `verify-ca`: the chain to a trusted root, whatever name the certificate is for.
#[derive(Debug)]
struct ChainOnly {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `prefer`/`require` without a CA: any certificate, as libpq does. The handshake signature is
/// still checked, so the peer holds the key of the certificate it showed (which matters for SCRAM
/// channel binding).
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// If `e` is a TLS failure, what went wrong and what to do, for the operator. Handshake failures
/// do not go away by retrying, so the store reports them at once instead of retrying.
pub(crate) fn explain(e: &tokio_postgres::Error, policy: &TlsPolicy) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        let rustls_error = s.downcast_ref::<rustls::Error>().or_else(|| {
            s.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if let Some(r) = rustls_error {
            return Some(explain_rustls(r, policy));
        }
        if s.to_string().contains("server does not support TLS") {
            return Some(format!(
                "the server does not offer TLS, but the connection must use it ({}). Turn on \
                 ssl in the server's postgresql.conf (with ssl_cert_file and ssl_key_file), or \
                 connect to one that has it",
                policy.describe()
            ));
        }
        source = s.source();
    }
    None
}

fn explain_rustls(e: &rustls::Error, policy: &TlsPolicy) -> String {
    let roots = match policy {
        TlsPolicy::Required {
            roots: Roots::File(p),
            ..
        } => format!("sslrootcert {}", p.display()),
        _ => "the built-in Mozilla roots (no sslrootcert in the url)".to_string(),
    };
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => format!(
                "TLS: the server's certificate is not signed by a CA in {roots}; set sslrootcert \
                 in [storage] url to the PEM file of the CA that signed the server's certificate \
                 ({e})"
            ),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!(
                    "TLS: the server's certificate is not valid for the host name in [storage] \
                     url; connect by a name or address the certificate lists, or reissue the \
                     certificate for this one ({e})"
                )
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                format!("TLS: the server's certificate has expired; renew it on the server ({e})")
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => format!(
                "TLS: the server's certificate is not valid yet; check the clocks of this \
                 machine and the server ({e})"
            ),
            _ => format!("TLS: the server's certificate was refused: {e}"),
        },
        rustls::Error::AlertReceived(alert) => format!(
            "TLS: the server ended the handshake ({alert:?}); it may not support TLS 1.3 \
             (PostgreSQL 12 or newer built with OpenSSL 1.1.1 or newer does) or it may want a \
             client certificate, which this signer does not send"
        ),
        other => format!("TLS handshake failed: {other}"),
    }
}

fn config_error(detail: String) -> Error {
    Error::new(ErrorKind::Config, "open", detail)
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    fn policy(mode: Option<&str>, root: Option<&str>, local: bool) -> Result<TlsPolicy> {
        TlsPolicy::resolve(mode, root, local, false)
    }

    const FULL: TlsPolicy = TlsPolicy::Required {
        verify: Verify::ChainAndHostName,
        roots: Roots::Mozilla,
    };

    #[test]
    fn no_sslmode_is_plain_on_loopback_and_verify_full_elsewhere() {
        assert_eq!(policy(None, None, true).unwrap(), TlsPolicy::Plain);
        assert_eq!(policy(None, None, false).unwrap(), FULL);
        assert_eq!(
            policy(None, Some("/etc/ca.pem"), false).unwrap(),
            TlsPolicy::Required {
                verify: Verify::ChainAndHostName,
                roots: Roots::File("/etc/ca.pem".into())
            }
        );
    }

    #[test]
    fn disable_is_refused_for_a_remote_host_without_the_opt_in() {
        assert_eq!(
            policy(Some("disable"), None, true).unwrap(),
            TlsPolicy::Plain
        );
        for mode in ["disable", "allow"] {
            let err = policy(Some(mode), None, false).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config);
            assert!(err.to_string().contains("insecure_plaintext"), "{err}");
            assert_eq!(
                TlsPolicy::resolve(Some(mode), None, false, true).unwrap(),
                TlsPolicy::Plain
            );
        }
    }

    #[test]
    fn prefer_and_require() {
        assert_eq!(
            policy(Some("prefer"), None, true).unwrap(),
            TlsPolicy::Opportunistic
        );
        let unverified = TlsPolicy::Required {
            verify: Verify::Nothing,
            roots: Roots::Mozilla,
        };
        // Away from loopback, prefer never falls back to plain.
        assert_eq!(policy(Some("prefer"), None, false).unwrap(), unverified);
        assert_eq!(policy(Some("require"), None, true).unwrap(), unverified);
        assert_eq!(policy(Some("require"), None, false).unwrap(), unverified);
        // As in libpq, a root certificate makes require check the chain.
        assert_eq!(
            policy(Some("require"), Some("/ca.pem"), false).unwrap(),
            TlsPolicy::Required {
                verify: Verify::Chain,
                roots: Roots::File("/ca.pem".into())
            }
        );
    }

    #[test]
    fn verify_modes_verify_on_loopback_too() {
        assert_eq!(
            policy(Some("verify-ca"), None, true).unwrap(),
            TlsPolicy::Required {
                verify: Verify::Chain,
                roots: Roots::Mozilla
            }
        );
        assert_eq!(policy(Some("verify-full"), None, true).unwrap(), FULL);
        assert_eq!(
            policy(Some("verify-full"), Some("system"), false).unwrap(),
            FULL
        );
    }

    #[test]
    fn unknown_sslmode_and_empty_root_are_refused() {
        let err = policy(Some("verify_full"), None, false).unwrap_err();
        assert!(err.to_string().contains("verify-full"), "{err}");
        assert!(policy(Some("require"), Some(""), false).is_err());
    }

    #[test]
    fn loopback_hosts() {
        let local = |url: &str| is_local(&tokio_postgres::Config::from_str(url).unwrap());
        assert!(local("postgresql://u@127.0.0.1/db"));
        assert!(local("postgresql://u@127.8.9.10:5433/db"));
        assert!(local("postgresql://u@localhost/db"));
        assert!(local("postgresql://u@[::1]:5432/db"));
        assert!(local("postgresql://u@%2Fvar%2Frun%2Fpostgresql/db"));
        assert!(!local("postgresql://u@db.example.com/db"));
        assert!(!local("postgresql://u@10.0.0.5/db"));
        assert!(!local("postgresql://u@127.0.0.1,10.0.0.5/db"));
        // hostaddr is where the connection goes.
        assert!(!local("postgresql://u@localhost/db?hostaddr=10.0.0.5"));
        assert!(local("postgresql://u@db.example.com/db?hostaddr=127.0.0.1"));
    }

    #[test]
    fn a_missing_or_empty_ca_file_is_a_clear_config_error() {
        let missing = TlsPolicy::Required {
            verify: Verify::ChainAndHostName,
            roots: Roots::File("/nonexistent/ca.pem".into()),
        };
        let err = missing.client_config().unwrap_err().to_string();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("ca.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = TlsPolicy::Required {
            verify: Verify::Chain,
            roots: Roots::File(empty),
        }
        .client_config()
        .unwrap_err()
        .to_string();
        assert!(err.contains("no certificate"), "{err}");
        assert!(TlsPolicy::Plain.client_config().unwrap().is_none());
        assert!(FULL.client_config().unwrap().is_some());
    }
}
