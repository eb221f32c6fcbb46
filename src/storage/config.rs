//! `[storage]`: where the signer keeps its state.
//!
//! ```toml
//! [storage]
//! url = "postgresql://signer@127.0.0.1:5432/signer"   # or "memory" (devnet, tests)
//! password_file = "/etc/sbtc-hsm-signer/pg-password"  # mode 0600; or set PGPASSWORD
//! ```
//!
//! A password is never accepted inside `url` (config files get copied and pasted into tickets);
//! it comes from `password_file`, else libpq's `PGPASSWORD`, else libpq's password file
//! (`PGPASSFILE` or `~/.pgpass`, mode 0600). `PGHOST`, `PGPORT`, `PGUSER` and `PGDATABASE` fill
//! in what the url leaves out, as with libpq.

use std::{path::PathBuf, str::FromStr, time::Duration};

use sbtc_custody::{check_private, SecretString};
use serde::Deserialize;
use zeroize::Zeroizing;

use super::{
    guard::GuardPolicy,
    tls::{self, TlsPolicy},
    Error, ErrorKind, Result,
};

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// `postgresql://user@host:port/database`, or `memory`.
    pub url: String,
    /// A file (mode 0400/0600) holding the database password.
    pub password_file: Option<PathBuf>,
    /// Most connections in the pool (default 8).
    pub pool_size: Option<usize>,
    /// How long to keep trying to reach the server at start, in seconds (default 60).
    pub connect_retry_secs: Option<u64>,
    /// How long one operation keeps retrying through a server restart, in seconds (default 60).
    pub operation_retry_secs: Option<u64>,
    /// The most fee the no-equivocation guard lets one spend pay, in satoshis (default
    /// 1,000,000: 0.01 BTC).
    pub guard_max_fee_sats: Option<u64>,
    /// The most fee rate the guard lets one spend pay, in sat/vB (default 500).
    pub guard_max_fee_rate_sat_per_vb: Option<u64>,
    /// Allows `sslmode=disable` (or `allow`) for a server that is not on this machine (default
    /// false): only for a network path protected some other way.
    #[serde(default)]
    pub insecure_plaintext: bool,
}

// By hand: a url someone wrote with a password in it must not leak through `{:?}`.
impl std::fmt::Debug for StorageConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageConfig")
            .field("url", &redact_url_text(&self.url))
            .field("password_file", &self.password_file)
            .field("pool_size", &self.pool_size)
            .field("connect_retry_secs", &self.connect_retry_secs)
            .field("operation_retry_secs", &self.operation_retry_secs)
            .field("guard_max_fee_sats", &self.guard_max_fee_sats)
            .field(
                "guard_max_fee_rate_sat_per_vb",
                &self.guard_max_fee_rate_sat_per_vb,
            )
            .field("insecure_plaintext", &self.insecure_plaintext)
            .finish()
    }
}

/// `scheme://user:secret@rest` -> `scheme://user:[redacted]@rest`; anything else unchanged.
fn redact_url_text(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:[redacted]@{host}"),
        None => url.to_string(),
    }
}

impl StorageConfig {
    pub fn memory() -> Self {
        StorageConfig {
            url: "memory".into(),
            password_file: None,
            pool_size: None,
            connect_retry_secs: None,
            operation_retry_secs: None,
            guard_max_fee_sats: None,
            guard_max_fee_rate_sat_per_vb: None,
            insecure_plaintext: false,
        }
    }

    /// The no-equivocation guard's fee cap.
    pub fn guard_policy(&self) -> Result<GuardPolicy> {
        GuardPolicy::from_config(self.guard_max_fee_sats, self.guard_max_fee_rate_sat_per_vb)
    }

    /// A PostgreSQL config for `url` with the defaults (used by tests and the benchmark).
    pub fn postgres(url: impl Into<String>) -> Self {
        StorageConfig {
            url: url.into(),
            ..StorageConfig::memory()
        }
    }

    /// Resolves the config: parses the url and reads the password.
    pub fn target(&self) -> Result<Target> {
        if self.url == "memory" {
            self.guard_policy()?;
            return Ok(Target::Memory);
        }
        if !(self.url.starts_with("postgresql://") || self.url.starts_with("postgres://")) {
            return Err(config_error(
                "[storage] url must be \"memory\" or start with postgresql://".to_string(),
            ));
        }
        // tokio-postgres knows neither verify-ca/verify-full nor sslrootcert: they are taken out
        // of the url here and applied by our TLS policy.
        let (url, tls_params) = split_tls_params(&self.url)?;
        let mut pg = tokio_postgres::Config::from_str(&url).map_err(|e| {
            // The parser's message quotes no part of the url, so no password can leak here.
            config_error(format!("[storage] url is not a valid PostgreSQL url: {e}"))
        })?;
        if pg.get_password().is_some() {
            return Err(config_error(
                "[storage] url contains a password; remove it from the url and put it in \
                 password_file (mode 0600) or the PGPASSWORD environment variable"
                    .to_string(),
            ));
        }
        fill_from_env(&mut pg);
        let var = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
        let sslmode = tls_params.sslmode.or_else(|| var("PGSSLMODE"));
        let sslrootcert = tls_params.sslrootcert.or_else(|| var("PGSSLROOTCERT"));
        let tls = TlsPolicy::resolve(
            sslmode.as_deref(),
            sslrootcert.as_deref(),
            tls::is_local(&pg),
            self.insecure_plaintext,
        )?;
        pg.ssl_mode(tls.ssl_mode());
        if pg.get_user().is_none() {
            return Err(config_error(
                "no database user: put it in the url (postgresql://USER@host/db) or set PGUSER"
                    .to_string(),
            ));
        }
        if let Some(password) = self.password()? {
            pg.password(password.expose());
        } else if let Some(password) = pgpass_password(&pg) {
            pg.password(password.expose());
        }
        pg.application_name("sbtc-hsm-signer");
        pg.connect_timeout(Duration::from_secs(5));
        pg.keepalives_idle(Duration::from_secs(30));
        let redacted_url = redacted(&pg);
        Ok(Target::Postgres(Box::new(PgSettings {
            pg,
            redacted_url,
            pool_size: self.pool_size.unwrap_or(8).max(1),
            connect_retry: Duration::from_secs(self.connect_retry_secs.unwrap_or(60)),
            operation_retry: Duration::from_secs(self.operation_retry_secs.unwrap_or(60)),
            guard: self.guard_policy()?,
            tls,
        })))
    }

    fn password(&self) -> Result<Option<SecretString>> {
        if let Some(path) = &self.password_file {
            check_private(path).map_err(|e| config_error(format!("password_file {e}")))?;
            let raw = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
                config_error(format!("cannot read password_file {}: {e}", path.display()))
            })?);
            let trimmed = raw.trim_end_matches(['\n', '\r']);
            if trimmed.is_empty() {
                return Err(config_error(format!(
                    "password_file {} is empty",
                    path.display()
                )));
            }
            return Ok(Some(SecretString::new(trimmed.to_owned())));
        }
        match std::env::var("PGPASSWORD") {
            Ok(p) if !p.is_empty() => Ok(Some(SecretString::new(p))),
            _ => Ok(None),
        }
    }
}

/// What `[storage]` resolves to.
#[derive(Debug)]
pub enum Target {
    Memory,
    Postgres(Box<PgSettings>),
}

/// A resolved PostgreSQL config. `Debug` shows the redacted url only.
#[derive(Clone)]
pub struct PgSettings {
    pub pg: tokio_postgres::Config,
    /// The url without any password, for messages.
    pub redacted_url: String,
    pub pool_size: usize,
    pub connect_retry: Duration,
    pub operation_retry: Duration,
    /// The no-equivocation guard's fee cap.
    pub guard: GuardPolicy,
    /// TLS to the server (from `sslmode`, `sslrootcert` and whether the host is loopback).
    pub tls: TlsPolicy,
}

impl std::fmt::Debug for PgSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSettings")
            .field("url", &self.redacted_url)
            .field("pool_size", &self.pool_size)
            .field("connect_retry", &self.connect_retry)
            .field("operation_retry", &self.operation_retry)
            .field("guard", &self.guard)
            .field("tls", &self.tls.describe())
            .finish()
    }
}

/// The url's TLS parameters, taken out of it.
#[derive(Debug, Default, PartialEq, Eq)]
struct TlsParams {
    sslmode: Option<String>,
    sslrootcert: Option<String>,
}

/// Splits `sslmode` and `sslrootcert` (percent-decoded) off the url's query; the rest of the url
/// is returned as it was.
fn split_tls_params(url: &str) -> Result<(String, TlsParams)> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_string(), TlsParams::default()));
    };
    let mut params = TlsParams::default();
    let mut kept = Vec::new();
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let slot = match key {
            "sslmode" => &mut params.sslmode,
            "sslrootcert" => &mut params.sslrootcert,
            _ => {
                kept.push(pair);
                continue;
            }
        };
        let value = percent_encoding::percent_decode_str(value)
            .decode_utf8()
            .map_err(|_| config_error(format!("[storage] url's {key} is not valid UTF-8")))?;
        if slot.replace(value.into_owned()).is_some() {
            return Err(config_error(format!(
                "[storage] url gives {key} twice; keep one"
            )));
        }
    }
    let url = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((url, params))
}

fn config_error(detail: String) -> Error {
    Error::new(ErrorKind::Config, "open", detail)
}

fn fill_from_env(pg: &mut tokio_postgres::Config) {
    let var = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
    if pg.get_hosts().is_empty() {
        if let Some(h) = var("PGHOST") {
            pg.host(&h);
        }
    }
    if pg.get_ports().is_empty() {
        if let Some(p) = var("PGPORT").and_then(|p| p.parse().ok()) {
            pg.port(p);
        }
    }
    if pg.get_user().is_none() {
        if let Some(u) = var("PGUSER") {
            pg.user(&u);
        }
    }
    if pg.get_dbname().is_none() {
        if let Some(d) = var("PGDATABASE") {
            pg.dbname(&d);
        }
    }
}

/// libpq's password file: `PGPASSFILE`, else `~/.pgpass`; lines `host:port:db:user:password`
/// with `*` wildcards and `\\:` escapes. Like libpq, a file others can read is ignored.
fn pgpass_password(pg: &tokio_postgres::Config) -> Option<SecretString> {
    use tokio_postgres::config::Host;
    let path = match std::env::var_os("PGPASSFILE") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".pgpass"),
    };
    if check_private(&path).is_err() {
        return None;
    }
    let text = Zeroizing::new(std::fs::read_to_string(&path).ok()?);
    let host = match pg.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(Host::Unix(_)) | None => "localhost".to_string(),
        #[cfg(not(unix))]
        None => "localhost".to_string(),
    };
    let port = pg.get_ports().first().copied().unwrap_or(5432).to_string();
    let user = pg.get_user()?.to_string();
    let db = pg
        .get_dbname()
        .map(str::to_string)
        .unwrap_or_else(|| user.clone());
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let fields = split_pgpass(line);
        if fields.len() != 5 {
            continue;
        }
        let want = [&host, &port, &db, &user];
        if fields[..4]
            .iter()
            .zip(want)
            .all(|(f, w)| f.as_str() == "*" || f.as_str() == w.as_str())
        {
            return Some(SecretString::new(fields[4].to_string()));
        }
    }
    None
}

fn split_pgpass(line: &str) -> Vec<Zeroizing<String>> {
    let mut fields = vec![Zeroizing::new(String::new())];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let (Some(next), Some(last)) = (chars.next(), fields.last_mut()) {
                    last.push(next);
                }
            }
            ':' if fields.len() < 5 => fields.push(Zeroizing::new(String::new())),
            c => {
                if let Some(last) = fields.last_mut() {
                    last.push(c);
                }
            }
        }
    }
    fields
}

/// `postgresql://user@host:port/db`, never with the password.
pub fn redacted(pg: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let user = pg.get_user().unwrap_or("");
    let hosts: Vec<String> = pg
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let host = match h {
                Host::Tcp(s) => s.clone(),
                #[cfg(unix)]
                Host::Unix(p) => p.display().to_string(),
            };
            match pg.get_ports().get(i).or(pg.get_ports().first()) {
                Some(port) => format!("{host}:{port}"),
                None => host,
            }
        })
        .collect();
    let db = pg.get_dbname().unwrap_or(user);
    format!("postgresql://{user}@{}/{db}", hosts.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_with_passwords_are_refused_and_never_echoed() {
        let err = StorageConfig::postgres("postgresql://signer:hunter2@127.0.0.1:5432/signer")
            .target()
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("password_file"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        let c = StorageConfig::postgres("postgresql://signer:hunter2@127.0.0.1:5432/signer");
        let debug = format!("{c:?}");
        assert!(
            !debug.contains("hunter2") && debug.contains("signer:[redacted]@127.0.0.1"),
            "{debug}"
        );
    }

    #[test]
    fn sslmode_and_sslrootcert_come_out_of_the_url() {
        let (url, p) = split_tls_params(
            "postgresql://u@db.example.com/db?application_name=x&sslmode=verify-full&sslrootcert=%2Fetc%2Fca%20file.pem",
        )
        .unwrap();
        assert_eq!(url, "postgresql://u@db.example.com/db?application_name=x");
        assert_eq!(p.sslmode.as_deref(), Some("verify-full"));
        assert_eq!(p.sslrootcert.as_deref(), Some("/etc/ca file.pem"));
        assert!(split_tls_params("postgresql://u@h/db?sslmode=require&sslmode=disable").is_err());

        // The url's words reach the policy: verify-full on a remote host needs no opt-in, plain
        // does; no sslmode on a remote host is verify-full.
        let target = |url: &str| match StorageConfig::postgres(url).target() {
            Ok(Target::Postgres(s)) => Ok(s.tls),
            Ok(Target::Memory) => unreachable!(),
            Err(e) => Err(e),
        };
        assert_eq!(
            target("postgresql://u@db.example.com/db").unwrap(),
            TlsPolicy::Required {
                verify: tls::Verify::ChainAndHostName,
                roots: tls::Roots::Mozilla
            }
        );
        assert_eq!(
            target("postgresql://u@127.0.0.1/db?sslmode=verify-ca&sslrootcert=/ca.pem").unwrap(),
            TlsPolicy::Required {
                verify: tls::Verify::Chain,
                roots: tls::Roots::File("/ca.pem".into())
            }
        );
        let err = target("postgresql://u@db.example.com/db?sslmode=disable").unwrap_err();
        assert!(err.to_string().contains("insecure_plaintext"), "{err}");
        let mut c = StorageConfig::postgres("postgresql://u@db.example.com/db?sslmode=disable");
        c.insecure_plaintext = true;
        let Target::Postgres(s) = c.target().unwrap() else {
            panic!("expected postgres")
        };
        assert_eq!(s.tls, TlsPolicy::Plain);
        assert_eq!(
            s.pg.get_ssl_mode(),
            tokio_postgres::config::SslMode::Disable
        );
        assert_eq!(
            target("postgresql://u@127.0.0.1/db").unwrap(),
            TlsPolicy::Plain
        );
    }

    #[test]
    fn guard_policy_keys() {
        let mut c = StorageConfig::memory();
        assert_eq!(c.guard_policy().unwrap(), GuardPolicy::default());
        c.guard_max_fee_sats = Some(50_000);
        c.guard_max_fee_rate_sat_per_vb = Some(20);
        let p = c.guard_policy().unwrap();
        assert_eq!(p.max_fee, bitcoin::Amount::from_sat(50_000));
        assert_eq!(p.max_fee_rate.to_sat_per_vb_floor(), 20);
        c.guard_max_fee_sats = Some(0);
        let err = c.target().unwrap_err().to_string();
        assert!(err.contains("guard_max_fee_sats"), "{err}");
        let parsed: StorageConfig =
            toml::from_str("url = \"memory\"\nguard_max_fee_rate_sat_per_vb = 0\n").unwrap();
        assert!(parsed.target().is_err());
    }

    #[test]
    fn pgpass_lines_split_with_escapes() {
        let f = split_pgpass(r"127.0.0.1:5432:*:signer:pa\:ss\\word");
        let f: Vec<&str> = f.iter().map(|s| s.as_str()).collect();
        assert_eq!(f, vec!["127.0.0.1", "5432", "*", "signer", "pa:ss\\word"]);
    }

    #[test]
    fn memory_and_bad_schemes() {
        assert!(matches!(
            StorageConfig::memory().target().unwrap(),
            Target::Memory
        ));
        let err = StorageConfig::postgres("mysql://x@y/z")
            .target()
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
    }

    #[test]
    fn password_file_is_used_and_redacted() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "s3cret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut c = StorageConfig::postgres("postgresql://signer@127.0.0.1:5432/signer");
        c.password_file = Some(path.clone());
        let Target::Postgres(s) = c.target().unwrap() else {
            panic!("expected postgres")
        };
        assert_eq!(s.pg.get_password(), Some(&b"s3cret"[..]));
        assert_eq!(s.redacted_url, "postgresql://signer@127.0.0.1:5432/signer");
        assert!(!format!("{s:?}").contains("s3cret"));

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = c.target().unwrap_err().to_string();
        assert!(err.contains("password_file"), "{err}");
    }
}
