//! Custody errors: which backend, which operation, which key, what went wrong, what to do next.

use std::fmt;

/// The custody backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Pkcs11,
    #[serde(rename = "yubihsm")]
    YubiHsm,
    Keystore,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Pkcs11 => "pkcs11",
            BackendKind::YubiHsm => "yubihsm",
            BackendKind::Keystore => "keystore",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The custody operation that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Open,
    Login,
    Info,
    Generate,
    PublicKey,
    List,
    SignSecp256k1,
    SignP256,
    Seal,
    Unseal,
    Destroy,
    Health,
    Backup,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operation::Open => "open",
            Operation::Login => "login",
            Operation::Info => "info",
            Operation::Generate => "generate",
            Operation::PublicKey => "public_key",
            Operation::List => "list",
            Operation::SignSecp256k1 => "sign_secp256k1",
            Operation::SignP256 => "sign_p256",
            Operation::Seal => "seal",
            Operation::Unseal => "unseal",
            Operation::Destroy => "destroy",
            Operation::Health => "health",
            Operation::Backup => "backup",
        })
    }
}

/// What went wrong, in terms an operator can act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The configuration is wrong or incomplete.
    Config,
    /// The PIN, password or passphrase could not be read, or its file is readable by others.
    SecretUnavailable,
    /// The PKCS#11 module (or the device driver) could not be loaded.
    ModuleLoad,
    /// No token or device matched the configuration.
    TokenNotFound,
    /// Wrong PIN, password or passphrase.
    AuthFailed,
    /// The PIN or auth key is locked after too many wrong attempts.
    Locked,
    /// No key under this label.
    KeyNotFound,
    /// A key under this label exists already.
    KeyExists,
    /// The key under this label is of another kind than the operation needs.
    WrongKeyKind,
    /// The key exists but its attributes are unsafe (extractable, not sensitive, too many capabilities).
    KeyPolicy,
    /// The backend lacks a mechanism or algorithm this operation needs.
    Unsupported,
    /// The session to the device was lost and could not be re-established.
    SessionLost,
    /// The device reported an error or went away.
    Device,
    /// Authentication of sealed data failed: wrong key, wrong AAD, or a changed byte.
    Tampered,
    /// A file or blob is malformed (not what it claims to be).
    Corrupt,
    /// A file or blob ends early.
    Truncated,
    /// A file is older than one this backend used before: an old copy was put back.
    RolledBack,
    /// Reading or writing a file failed.
    Io,
    /// All sessions are busy and the wait timed out.
    Busy,
    /// The audit log could not record the operation, so its result was not released.
    AuditUnavailable,
    /// A bug or an unexpected answer from the backend.
    Internal,
}

impl ErrorKind {
    /// A few words for the kind of failure (logs, the audit log's outcome column).
    pub fn describe(self) -> &'static str {
        match self {
            ErrorKind::Config => "configuration error",
            ErrorKind::SecretUnavailable => "secret unavailable",
            ErrorKind::ModuleLoad => "cannot load module",
            ErrorKind::TokenNotFound => "token not found",
            ErrorKind::AuthFailed => "authentication failed",
            ErrorKind::Locked => "locked",
            ErrorKind::KeyNotFound => "key not found",
            ErrorKind::KeyExists => "key exists",
            ErrorKind::WrongKeyKind => "wrong key kind",
            ErrorKind::KeyPolicy => "unsafe key attributes",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::SessionLost => "session lost",
            ErrorKind::Device => "device error",
            ErrorKind::Tampered => "authentication of sealed data failed",
            ErrorKind::Corrupt => "corrupt data",
            ErrorKind::Truncated => "truncated data",
            ErrorKind::RolledBack => "an older copy was put back",
            ErrorKind::Io => "I/O error",
            ErrorKind::Busy => "busy",
            ErrorKind::AuditUnavailable => "audit log unavailable",
            ErrorKind::Internal => "internal error",
        }
    }

    /// The default next step for the operator; backends may give a more precise one.
    fn default_hint(self) -> &'static str {
        match self {
            ErrorKind::Config => "fix the [custody] section of the config file",
            ErrorKind::SecretUnavailable => {
                "check pin_file/password_file/passphrase_file (it must exist and be readable by the \
                 signer only, mode 0400 or 0600) or the environment variable named in the config"
            }
            ErrorKind::ModuleLoad => {
                "check the module path in [custody.pkcs11] and that the vendor library is installed"
            }
            ErrorKind::TokenNotFound => {
                "check token_label/serial in the config and that the token is initialised and plugged in"
            }
            ErrorKind::AuthFailed => {
                "check the PIN/password/passphrase; repeated failures can lock the device"
            }
            ErrorKind::Locked => "unlock or reset the PIN with the security officer",
            ErrorKind::KeyNotFound => "create it with `sbtc-hsm-signer keys generate --role ...`",
            ErrorKind::KeyExists => "choose another label, or destroy the old key first",
            ErrorKind::WrongKeyKind => "use the label of a key of the right kind (`keys list`)",
            ErrorKind::KeyPolicy => {
                "the key could be copied out of the device; destroy it and generate a new one with \
                 `sbtc-hsm-signer keys generate`"
            }
            ErrorKind::Unsupported => "use a device or firmware that supports this mechanism",
            ErrorKind::SessionLost => "check the device connection; the signer retries on its own",
            ErrorKind::Device => "check the device and its logs",
            ErrorKind::Tampered => {
                "the data was changed or belongs to another key or context; restore it from backup"
            }
            ErrorKind::Corrupt | ErrorKind::Truncated => "restore the file from backup",
            ErrorKind::RolledBack => {
                "put the newest copy back; accept the older one only deliberately, as the detail says"
            }
            ErrorKind::Io => "check the path, permissions and free space",
            ErrorKind::Busy => "lower the load or raise the session pool size",
            ErrorKind::AuditUnavailable => {
                "the key's result was withheld because its use could not be recorded; check the \
                 database named in [storage] and retry"
            }
            ErrorKind::Internal => "report this as a bug",
        }
    }
}

/// A custody error. Never carries key material, PINs or plaintext.
#[derive(Clone, Debug)]
pub struct Error {
    backend: BackendKind,
    op: Operation,
    kind: ErrorKind,
    label: Option<String>,
    detail: String,
    hint: Option<String>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(backend: BackendKind, op: Operation, kind: ErrorKind) -> Self {
        Error {
            backend,
            op,
            kind,
            label: None,
            detail: String::new(),
            hint: None,
        }
    }

    /// Names the key label the operation was about.
    pub fn label(mut self, label: impl fmt::Display) -> Self {
        self.label = Some(label.to_string());
        self
    }

    /// What exactly failed (a C function and return value, a path, the tokens that were found).
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = detail.into();
        self
    }

    /// Replaces the default next step.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn backend(&self) -> BackendKind {
        self.backend
    }

    pub fn operation(&self) -> Operation {
        self.op
    }

    pub fn key_label(&self) -> Option<&str> {
        self.label.as_deref()
    }

    pub fn detail_text(&self) -> &str {
        &self.detail
    }

    pub fn next_step(&self) -> &str {
        self.hint
            .as_deref()
            .unwrap_or_else(|| self.kind.default_hint())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.backend, self.op)?;
        if let Some(label) = &self.label {
            write!(f, " (key '{label}')")?;
        }
        write!(f, ": {}", self.kind.describe())?;
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        write!(f, ". Next step: {}", self.next_step())
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_backend_operation_label_and_next_step() {
        let e = Error::new(
            BackendKind::Pkcs11,
            Operation::SignSecp256k1,
            ErrorKind::KeyNotFound,
        )
        .label("identity")
        .detail("no private key object with CKA_LABEL 'identity'");
        let s = e.to_string();
        assert!(
            s.starts_with("pkcs11 sign_secp256k1 (key 'identity'): key not found"),
            "{s}"
        );
        assert!(s.contains("keys generate"), "{s}");
    }
}
