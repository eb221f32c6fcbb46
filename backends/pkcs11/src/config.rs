//! The `[custody.pkcs11]` config section.

use std::path::PathBuf;

use sbtc_custody::{BackendKind, Error, ErrorKind, Operation, SecretSource};

/// Which module, which token, where the PIN is, how many sessions.
///
/// ```toml
/// [custody.pkcs11]
/// module = "/usr/lib/softhsm/libsofthsm2.so"
/// token_label = "sbtc-signer"
/// pin_credential = "hsm-pin"     # or pin_file / pin_env / pin_prompt = true
/// sessions = 4
/// allow_imported_keys = false   # true: also use keys that were not generated on the token
/// ```
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Path of the vendor's PKCS#11 library.
    pub module: PathBuf,
    /// Label of the token to use. Give this, `token_serial`, or both.
    #[serde(default)]
    pub token_label: Option<String>,
    /// Serial number of the token to use (as in `pkcs11-tool --list-slots`).
    #[serde(default)]
    pub token_serial: Option<String>,
    /// File holding the user PIN (mode 0400 or 0600).
    #[serde(default)]
    pub pin_file: Option<PathBuf>,
    /// Environment variable holding the user PIN.
    #[serde(default)]
    pub pin_env: Option<String>,
    /// systemd credential holding the user PIN (`LoadCredential=<name>:...`).
    #[serde(default)]
    pub pin_credential: Option<String>,
    /// Ask for the user PIN on the terminal.
    #[serde(default)]
    pub pin_prompt: bool,
    /// Logged-in sessions kept open for concurrent calls.
    #[serde(default = "default_sessions")]
    pub sessions: usize,
    /// How long a call waits for a free session before failing with `Busy`.
    #[serde(default = "default_busy_timeout_secs")]
    pub busy_timeout_secs: u64,
    /// Also use keys that were not generated on the token (`CKA_LOCAL` false: imported or
    /// unwrapped) or that were once extractable or not sensitive (`CKA_NEVER_EXTRACTABLE` or
    /// `CKA_ALWAYS_SENSITIVE` false). Off by default: a key that existed outside the token may
    /// have a copy elsewhere. A key that is extractable or not sensitive now is refused always.
    #[serde(default)]
    pub allow_imported_keys: bool,
}

/// Upper bound on `sessions`: tokens limit sessions per application, and more than a few dozen
/// never helps throughput.
pub(crate) const MAX_SESSIONS: usize = 64;

fn default_sessions() -> usize {
    4
}

fn default_busy_timeout_secs() -> u64 {
    30
}

impl Config {
    /// A config for `module` with the defaults; set the token and PIN fields next.
    pub fn new(module: impl Into<PathBuf>) -> Self {
        Config {
            module: module.into(),
            token_label: None,
            token_serial: None,
            pin_file: None,
            pin_env: None,
            pin_credential: None,
            pin_prompt: false,
            sessions: default_sessions(),
            busy_timeout_secs: default_busy_timeout_secs(),
            allow_imported_keys: false,
        }
    }

    pub(crate) fn pin_source(&self) -> Result<SecretSource, Error> {
        SecretSource::from_fields(
            "pin",
            self.pin_file.clone(),
            self.pin_env.clone(),
            self.pin_credential.clone(),
            self.pin_prompt,
        )
        .map_err(config_error)
    }

    pub(crate) fn check(&self) -> Result<(), Error> {
        if self.token_label.is_none() && self.token_serial.is_none() {
            return Err(config_error(
                "no token selected: set token_label, token_serial or both".to_owned(),
            ));
        }
        if self.sessions == 0 || self.sessions > MAX_SESSIONS {
            return Err(config_error(format!(
                "sessions = {} is out of range; use 1 to {MAX_SESSIONS}",
                self.sessions
            )));
        }
        if self.busy_timeout_secs == 0 {
            return Err(config_error(
                "busy_timeout_secs = 0 would fail every call that has to wait; use 1 or more"
                    .to_owned(),
            ));
        }
        Ok(())
    }

    /// "token 'x' (serial y)" for messages.
    pub(crate) fn token_description(&self) -> String {
        match (&self.token_label, &self.token_serial) {
            (Some(l), Some(s)) => format!("token '{l}' with serial '{s}'"),
            (Some(l), None) => format!("token '{l}'"),
            (None, Some(s)) => format!("token with serial '{s}'"),
            (None, None) => "token".to_owned(),
        }
    }
}

fn config_error(detail: String) -> Error {
    Error::new(BackendKind::Pkcs11, Operation::Open, ErrorKind::Config)
        .detail(detail)
        .hint("fix the [custody.pkcs11] section of the config file")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_with_defaults_parses_and_unknown_fields_are_rejected() {
        let c: Config = toml::from_str(
            "module = \"/usr/lib/softhsm/libsofthsm2.so\"\ntoken_label = \"signer\"\npin_env = \"HSM_PIN\"\n",
        )
        .unwrap();
        assert_eq!(c.sessions, 4);
        assert_eq!(c.busy_timeout_secs, 30);
        assert!(
            !c.allow_imported_keys,
            "imported keys are refused unless asked for"
        );
        assert_eq!(c.pin_source().unwrap(), SecretSource::Env("HSM_PIN".into()));
        c.check().unwrap();

        let err = toml::from_str::<Config>(
            "module = \"/m.so\"\ntoken_label = \"t\"\npin_env = \"P\"\ntoken_lable = \"x\"\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("token_lable"), "{err}");
    }

    #[test]
    fn missing_token_pin_or_bad_sessions_are_config_errors() {
        let mut c = Config::new("/m.so");
        c.pin_env = Some("P".into());
        let err = c.check().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.to_string().contains("token_label"), "{err}");

        c.token_serial = Some("1234".into());
        c.sessions = 0;
        assert_eq!(c.check().unwrap_err().kind(), ErrorKind::Config);
        c.sessions = 4;
        c.check().unwrap();

        c.pin_file = Some("/pin".into());
        let err = c.pin_source().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(
            err.to_string().contains("more than one pin source"),
            "{err}"
        );
    }
}
