//! Secrets: PINs, passwords, passphrases and unsealed bytes. Zeroized on drop, never printed.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use zeroize::Zeroizing;

use crate::{BackendKind, Error, ErrorKind, Operation};

/// A PIN, password or passphrase. `Debug` prints `[redacted]`; the memory is zeroized on drop.
#[derive(Clone)]
pub struct SecretString(Zeroizing<String>);

impl SecretString {
    pub fn new(s: String) -> Self {
        SecretString(Zeroizing::new(s))
    }

    /// The secret itself. Call only where a backend hands it to the device or the KDF.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretString([redacted])")
    }
}

/// Secret bytes, such as unsealed data. `Debug` prints only the length; zeroized on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    pub fn new(bytes: Vec<u8>) -> Self {
        SecretBytes(Zeroizing::new(bytes))
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Zeroizing<Vec<u8>>> for SecretBytes {
    fn from(z: Zeroizing<Vec<u8>>) -> Self {
        SecretBytes(z)
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes([redacted; {} bytes])", self.0.len())
    }
}

/// Where an operator keeps a PIN, password or passphrase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretSource {
    /// A file readable by the signer only (mode 0400 or 0600). One trailing newline is dropped.
    File(PathBuf),
    /// An environment variable.
    Env(String),
    /// A systemd credential: `$CREDENTIALS_DIRECTORY/<name>` (`LoadCredential=` in the unit).
    Credential(String),
    /// Ask on the terminal.
    Prompt,
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::File(p) => write!(f, "file {}", p.display()),
            SecretSource::Env(v) => write!(f, "environment variable {v}"),
            SecretSource::Credential(n) => write!(f, "systemd credential {n}"),
            SecretSource::Prompt => f.write_str("terminal prompt"),
        }
    }
}

impl SecretSource {
    /// Picks the one source a config section names. `what` is the field stem ("pin", "password",
    /// "passphrase"): the fields are `<what>_file`, `<what>_env`, `<what>_credential`, `<what>_prompt`.
    pub fn from_fields(
        what: &str,
        file: Option<PathBuf>,
        env: Option<String>,
        credential: Option<String>,
        prompt: bool,
    ) -> Result<SecretSource, String> {
        let mut found = Vec::new();
        if let Some(p) = file {
            found.push(SecretSource::File(p));
        }
        if let Some(v) = env {
            found.push(SecretSource::Env(v));
        }
        if let Some(n) = credential {
            found.push(SecretSource::Credential(n));
        }
        if prompt {
            found.push(SecretSource::Prompt);
        }
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => Err(format!(
                "no {what} source: set one of {what}_file, {what}_env, {what}_credential or \
                 {what}_prompt = true"
            )),
            _ => Err(format!(
                "more than one {what} source is set; keep exactly one of {what}_file, {what}_env, \
                 {what}_credential, {what}_prompt"
            )),
        }
    }

    /// Reads the secret. `what` names it in errors and the prompt ("PIN", "passphrase").
    pub fn load(&self, backend: BackendKind, what: &str) -> Result<SecretString, Error> {
        let fail = |detail: String| {
            Error::new(backend, Operation::Login, ErrorKind::SecretUnavailable).detail(detail)
        };
        let raw = match self {
            SecretSource::File(path) => read_private_file(path, what).map_err(fail)?,
            SecretSource::Env(var) => match std::env::var(var) {
                Ok(v) => Zeroizing::new(v),
                Err(std::env::VarError::NotPresent) => {
                    return Err(fail(format!("the {what} variable {var} is not set")))
                }
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(fail(format!(
                        "the {what} variable {var} is not valid UTF-8"
                    )))
                }
            },
            SecretSource::Credential(name) => {
                let dir = std::env::var_os("CREDENTIALS_DIRECTORY").ok_or_else(|| {
                    fail(format!(
                        "the {what} is the systemd credential '{name}', but CREDENTIALS_DIRECTORY is \
                         not set (run under systemd with LoadCredential={name}:...)"
                    ))
                })?;
                // systemd makes the credential readable by the service alone.
                read_file(&Path::new(&dir).join(name), what).map_err(fail)?
            }
            SecretSource::Prompt => {
                let text = rpassword::prompt_password(format!("{what}: ")).map_err(|e| {
                    fail(format!(
                        "cannot prompt for the {what} ({e}); use a file or an environment variable \
                         when there is no terminal"
                    ))
                })?;
                Zeroizing::new(text)
            }
        };
        let trimmed = raw
            .strip_suffix("\r\n")
            .or_else(|| raw.strip_suffix('\n'))
            .unwrap_or(&raw);
        if trimmed.is_empty() {
            return Err(fail(format!("the {what} from the {self} is empty")));
        }
        Ok(SecretString::new(trimmed.to_owned()))
    }
}

fn read_file(path: &Path, what: &str) -> Result<Zeroizing<String>, String> {
    let bytes = Zeroizing::new(
        std::fs::read(path)
            .map_err(|e| format!("cannot read the {what} file {}: {e}", path.display()))?,
    );
    match std::str::from_utf8(&bytes) {
        Ok(s) => Ok(Zeroizing::new(s.to_owned())),
        Err(_) => Err(format!(
            "the {what} file {} is not UTF-8 text",
            path.display()
        )),
    }
}

fn read_private_file(path: &Path, what: &str) -> Result<Zeroizing<String>, String> {
    check_private(path).map_err(|e| format!("the {what} file {e}"))?;
    read_file(path, what)
}

/// Refuses a file that anyone but its owner may read or write.
pub fn check_private(path: &Path) -> Result<(), String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta =
            std::fs::metadata(path).map_err(|e| format!("{}: cannot stat: {e}", path.display()))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(format!(
                "{} has mode {mode:04o}, so others may read it; run `chmod 600 {}`",
                path.display(),
                path.display()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn debug_is_redacted() {
        let s = SecretString::new("123456".into());
        assert!(!format!("{s:?}").contains("123456"));
        let b = SecretBytes::new(b"share".to_vec());
        assert!(!format!("{b:?}").contains("115"));
        assert_eq!(format!("{b:?}"), "SecretBytes([redacted; 5 bytes])");
    }

    #[test]
    fn file_source_trims_newline_and_refuses_open_modes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pin");
        std::fs::write(&path, "4321\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = SecretSource::File(path.clone())
            .load(BackendKind::Pkcs11, "PIN")
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::SecretUnavailable);
        assert!(err.to_string().contains("chmod 600"), "{err}");
        assert!(!err.to_string().contains("4321"));

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        let pin = SecretSource::File(path)
            .load(BackendKind::Pkcs11, "PIN")
            .unwrap();
        assert_eq!(pin.expose(), "4321");
    }

    #[test]
    fn missing_env_and_credential_are_clear_errors() {
        let err = SecretSource::Env("SBTC_TEST_SURELY_UNSET_VAR".into())
            .load(BackendKind::Keystore, "passphrase")
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("SBTC_TEST_SURELY_UNSET_VAR is not set"),
            "{err}"
        );
    }
}
