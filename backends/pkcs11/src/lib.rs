//! PKCS#11 custody backend: the signer's keys live on a token behind a vendor PKCS#11 module
//! (Thales Luna, AWS CloudHSM, nShield, SoftHSM2, ...), driven through `cryptoki`.
//!
//! - The module is loaded and `C_Initialize`d once per process ([`load_module`]); every backend and
//!   every test or benchmark that makes raw `cryptoki` calls shares that one context.
//! - The token is chosen by label and/or serial; the user PIN comes from a file, an environment
//!   variable, a systemd credential or a prompt.
//! - Keys are generated on the token as token objects with `CKA_TOKEN`, `CKA_PRIVATE`,
//!   `CKA_SENSITIVE` true and `CKA_EXTRACTABLE` false. A private or secret key that is extractable
//!   or not sensitive is refused ([`sbtc_custody::ErrorKind::KeyPolicy`]), and so is one whose
//!   origin the token does not vouch for (`CKA_LOCAL`, `CKA_ALWAYS_SENSITIVE` or
//!   `CKA_NEVER_EXTRACTABLE` not true), unless the config says `allow_imported_keys = true`.
//! - A pool of logged-in sessions serves concurrent calls. Lost sessions (closed, logged out,
//!   device removed) are reopened, logged in again and the call retried once. If the token
//!   refuses the PIN on such a login, the backend never calls C_Login again: every later call
//!   fails at once with [`sbtc_custody::ErrorKind::AuthFailed`] until the signer is restarted.
//! - secp256k1 and P-256 signatures use raw `CKM_ECDSA` over the 32-byte digest; sealing uses
//!   `CKM_AES_GCM` under an AES-256 token key. Sealed blob: `0x01 || IV (12) || ciphertext || tag (16)`.

mod backend;
mod config;
mod errors;
mod keys;
mod module;
mod sessions;
mod token;

pub use backend::{open, Pkcs11Backend};
pub use config::Config;
#[doc(hidden)]
pub use module::close_all_sessions;
pub use module::load_module;

/// Re-exported so tests and tools name the same `cryptoki` as this crate.
pub use cryptoki;
