//! Storage errors: what failed, why, and what the operator should do next.

use std::fmt;

/// What kind of failure, with a default next step for the operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// `[storage]` is missing or wrong.
    Config,
    /// The database cannot be reached (down, refused, restarted) and retries ran out.
    Unavailable,
    /// The database schema is older than this binary: run `migrate`.
    SchemaTooOld,
    /// The database schema is newer than this binary: upgrade the binary.
    SchemaTooNew,
    /// An applied migration differs from the one in this binary.
    SchemaMismatch,
    /// A migration failed; it was rolled back.
    Migration,
    /// The database answered with an error or a row this binary cannot read.
    Query,
    /// A value does not fit the column (e.g. a height above i64::MAX).
    OutOfRange,
    /// The caller passed something meaningless (e.g. a spend with no inputs).
    InvalidInput,
    /// The TLS connection to the server failed (no TLS offered, an untrusted or wrong
    /// certificate): retrying does not help.
    Tls,
}

impl ErrorKind {
    fn hint(self) -> &'static str {
        match self {
            ErrorKind::Config => "fix the [storage] section of the config file",
            ErrorKind::Unavailable => {
                "check that PostgreSQL is running and reachable at the configured url, and that \
                 the user, password and database are right"
            }
            ErrorKind::SchemaTooOld => {
                "run `sbtc-hsm-signer migrate` to bring the schema up to date"
            }
            ErrorKind::SchemaTooNew => {
                "this binary is older than the database it is pointed at; run the newer \
                 sbtc-hsm-signer release (never downgrade a signer against a migrated database)"
            }
            ErrorKind::SchemaMismatch => {
                "the database was migrated by a different build; restore it from a backup made \
                 by this release or run the release that migrated it"
            }
            ErrorKind::Migration => {
                "nothing of the failed migration was kept; fix the cause shown and run \
                 `sbtc-hsm-signer migrate` again"
            }
            ErrorKind::Query => "check the PostgreSQL server log; report a bug if this persists",
            ErrorKind::OutOfRange => "the value is out of range for storage; report a bug",
            ErrorKind::InvalidInput => "this is a bug in the caller; report it",
            ErrorKind::Tls => {
                "check sslmode and sslrootcert in [storage] url against the server's TLS \
                 certificate (docs/security.md, \"PostgreSQL TLS\")"
            }
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::Config => "bad storage config",
            ErrorKind::Unavailable => "database unavailable",
            ErrorKind::SchemaTooOld => "database schema is too old",
            ErrorKind::SchemaTooNew => "database schema is newer than this binary",
            ErrorKind::SchemaMismatch => "database schema does not match this binary",
            ErrorKind::Migration => "migration failed",
            ErrorKind::Query => "database error",
            ErrorKind::OutOfRange => "value out of range",
            ErrorKind::InvalidInput => "invalid input",
            ErrorKind::Tls => "TLS to the database failed",
        })
    }
}

/// A storage failure. `Display` gives the operation, the cause and the next step; it never
/// contains a password (URLs are shown redacted).
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    operation: &'static str,
    detail: String,
    hint: Option<String>,
}

impl Error {
    pub fn new(kind: ErrorKind, operation: &'static str, detail: impl Into<String>) -> Self {
        Error {
            kind,
            operation,
            detail: detail.into(),
            hint: None,
        }
    }

    /// Replaces the default next step with a more precise one.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn operation(&self) -> &'static str {
        self.operation
    }

    pub fn detail(&self) -> &str {
        &self.detail
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hint = self.hint.as_deref().unwrap_or(self.kind.hint());
        write!(
            f,
            "storage: {} failed: {}: {}. Next: {}",
            self.operation, self.kind, self.detail, hint
        )
    }
}

impl std::error::Error for Error {}

pub type Result<T, E = Error> = std::result::Result<T, E>;
