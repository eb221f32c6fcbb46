//! The `[custody.yubihsm]` config section and how it becomes a connector.

use std::{path::PathBuf, time::Duration};

use sbtc_custody::{BackendKind, Error, ErrorKind, Operation, Result, SecretSource};
use serde::Deserialize;
use yubihsm::{
    connector::{HttpConfig, UsbConfig},
    Connector, Domain,
};

const BACKEND: BackendKind = BackendKind::YubiHsm;

/// `[custody.yubihsm]`.
///
/// ```toml
/// [custody.yubihsm]
/// connector = "http://127.0.0.1:12345"   # or "usb"
/// auth_key_id = 2
/// password_credential = "yubihsm-password"
/// domains = [1]
/// # backup_wrap_key_id = 200
/// ```
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `http://host:port` of a yubihsm-connector, or `usb` to talk to the device directly.
    pub connector: String,
    /// Serial number of the YubiHSM2 to use. With `usb` it picks the device; with HTTP it is
    /// checked against the device the connector reaches.
    #[serde(default)]
    pub serial: Option<String>,
    /// Object id of the authentication key the signer logs in with.
    pub auth_key_id: u16,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    #[serde(default)]
    pub password_env: Option<String>,
    #[serde(default)]
    pub password_credential: Option<String>,
    #[serde(default)]
    pub password_prompt: bool,
    /// Domains (1 to 16) new keys are created in and keys are looked up in.
    #[serde(default = "default_domains")]
    pub domains: Vec<u8>,
    /// Object id of a wrap key on the device. When set, new keys are created exportable under a
    /// wrap key so that `backup` can copy them out encrypted; when unset, no key may be exportable.
    #[serde(default)]
    pub backup_wrap_key_id: Option<u16>,
    /// USB transfer timeout in milliseconds (default 30000). The HTTP client of the yubihsm crate
    /// uses its own fixed 20 s socket timeout.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// How long a call waits for its turn at the device, in milliseconds (default 30000).
    #[serde(default)]
    pub queue_timeout_ms: Option<u64>,
}

fn default_domains() -> Vec<u8> {
    vec![1]
}

/// Options shared by [`crate::open`] and [`crate::YubiHsmBackend::with_connector`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// Domains 1..=16 for new keys and lookups.
    pub domains: Vec<u8>,
    /// See [`Config::backup_wrap_key_id`].
    pub backup_wrap_key_id: Option<u16>,
    /// If set, the device must have this serial number (10 digits).
    pub expected_serial: Option<String>,
    /// How long a call waits for its turn at the device.
    pub queue_timeout: Duration,
    /// How errors name the device: the connector URL, `usb`, or `mockhsm` in tests.
    pub endpoint: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            domains: default_domains(),
            backup_wrap_key_id: None,
            expected_serial: None,
            queue_timeout: Duration::from_secs(30),
            endpoint: "yubihsm".to_owned(),
        }
    }
}

fn config_error(detail: impl Into<String>) -> Error {
    Error::new(BACKEND, Operation::Open, ErrorKind::Config).detail(detail)
}

/// Where the device is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Http { addr: String, port: u16 },
    Usb,
}

impl Endpoint {
    pub(crate) fn parse(s: &str) -> Result<Endpoint> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("usb") || s.eq_ignore_ascii_case("usb://") {
            return Ok(Endpoint::Usb);
        }
        if s.starts_with("https://") {
            return Err(config_error(format!(
                "connector '{s}': the yubihsm crate speaks plain HTTP only"
            ))
            .hint(
                "run yubihsm-connector on 127.0.0.1 (plain http://) or use connector = \"usb\"",
            ));
        }
        let Some(rest) = s.strip_prefix("http://") else {
            return Err(config_error(format!(
                "connector '{s}' is neither \"usb\" nor an http://host:port URL"
            ))
            .hint("set connector = \"http://127.0.0.1:12345\" or connector = \"usb\""));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') {
            return Err(config_error(format!(
                "connector '{s}' has a path; give only http://host:port"
            )));
        }
        // "[::1]:12345" keeps its brackets: the crate joins addr and port with ':'.
        let (addr, port) = match rest.rfind(':') {
            Some(i) if !rest[i..].contains(']') => {
                let port = rest[i + 1..].parse::<u16>().map_err(|_| {
                    config_error(format!("connector '{s}' has an invalid port number"))
                })?;
                (&rest[..i], port)
            }
            _ => (rest, HttpConfig::default().port),
        };
        if addr.is_empty() {
            return Err(config_error(format!("connector '{s}' has no host")));
        }
        Ok(Endpoint::Http {
            addr: addr.to_owned(),
            port,
        })
    }

    pub(crate) fn describe(&self) -> String {
        match self {
            Endpoint::Http { addr, port } => format!("http://{addr}:{port}"),
            Endpoint::Usb => "usb".to_owned(),
        }
    }
}

/// Serial numbers are 10 digits on the device; accept them without leading zeros too.
pub(crate) fn normalize_serial(s: &str) -> Result<String> {
    let n: u32 = s.trim().parse().map_err(|_| {
        config_error(format!(
            "serial '{s}' is not a YubiHSM2 serial number (digits only, as printed on the device)"
        ))
    })?;
    Ok(format!("{n:010}"))
}

pub(crate) fn domains(list: &[u8]) -> Result<Domain> {
    if list.is_empty() {
        return Err(config_error(
            "domains is empty; give at least one of 1..=16",
        ));
    }
    let mut out = Domain::empty();
    for &d in list {
        out |= Domain::at(usize::from(d))
            .map_err(|_| config_error(format!("domain {d} is outside 1..=16")))?;
    }
    Ok(out)
}

impl Config {
    pub(crate) fn password_source(&self) -> Result<SecretSource> {
        SecretSource::from_fields(
            "password",
            self.password_file.clone(),
            self.password_env.clone(),
            self.password_credential.clone(),
            self.password_prompt,
        )
        .map_err(config_error)
    }

    /// Checks everything that can be checked without the device.
    pub(crate) fn check(&self) -> Result<(Endpoint, Options)> {
        let endpoint = Endpoint::parse(&self.connector)?;
        domains(&self.domains)?;
        let expected_serial = self.serial.as_deref().map(normalize_serial).transpose()?;
        if self.auth_key_id == 0 {
            return Err(config_error("auth_key_id 0 is not a valid object id")
                .hint("set auth_key_id to the id of the signer's authentication key (1 is the factory default)"));
        }
        if self.backup_wrap_key_id == Some(0) {
            return Err(config_error(
                "backup_wrap_key_id 0 is not a valid object id",
            ));
        }
        let options = Options {
            domains: self.domains.clone(),
            backup_wrap_key_id: self.backup_wrap_key_id,
            expected_serial,
            queue_timeout: Duration::from_millis(self.queue_timeout_ms.unwrap_or(30_000)),
            endpoint: endpoint.describe(),
        };
        Ok((endpoint, options))
    }

    pub(crate) fn connector(&self, endpoint: &Endpoint, options: &Options) -> Result<Connector> {
        match endpoint {
            Endpoint::Http { addr, port } => Ok(Connector::http(&HttpConfig {
                addr: addr.clone(),
                port: *port,
                timeout_ms: self
                    .timeout_ms
                    .unwrap_or(yubihsm::connector::http::HttpConfig::default().timeout_ms),
            })),
            Endpoint::Usb => {
                let serial = match &options.expected_serial {
                    Some(s) => Some(s.parse().map_err(|e| {
                        config_error(format!("serial '{s}' is not a YubiHSM2 serial: {e}"))
                    })?),
                    None => None,
                };
                Ok(Connector::usb(&UsbConfig {
                    serial,
                    timeout_ms: self.timeout_ms.unwrap_or(UsbConfig::DEFAULT_TIMEOUT_MILLIS),
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!(Endpoint::parse("usb").unwrap(), Endpoint::Usb);
        assert_eq!(
            Endpoint::parse("http://127.0.0.1:12345").unwrap(),
            Endpoint::Http {
                addr: "127.0.0.1".into(),
                port: 12345
            }
        );
        assert_eq!(
            Endpoint::parse("http://localhost/").unwrap(),
            Endpoint::Http {
                addr: "localhost".into(),
                port: 12345
            }
        );
        assert_eq!(
            Endpoint::parse("http://[::1]:4000").unwrap(),
            Endpoint::Http {
                addr: "[::1]".into(),
                port: 4000
            }
        );
        for bad in [
            "https://127.0.0.1:12345",
            "tcp://x",
            "http://h:99999",
            "http://h/api",
            "http://",
        ] {
            let e = Endpoint::parse(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Config, "{bad}: {e}");
        }
    }

    #[test]
    fn serials_and_domains() {
        assert_eq!(normalize_serial("12345").unwrap(), "0000012345");
        assert_eq!(normalize_serial("0123456789").unwrap(), "0123456789");
        assert!(normalize_serial("12a").is_err());
        assert_eq!(domains(&[1, 3]).unwrap(), Domain::DOM1 | Domain::DOM3);
        assert!(domains(&[]).is_err());
        assert!(domains(&[17]).unwrap_err().to_string().contains("17"));
    }
}
