//! The encrypted software keystore: one file per signer, for solo operators and devnets.
//!
//! # What the file holds
//! A JSON document (laid out in `src/format.rs`) with a format version, a generation counter
//! (one more on every write), the Argon2id settings and salt, a passphrase check value, one entry per key (label, kind, public key, nonce,
//! XChaCha20-Poly1305 ciphertext of the 32-byte private or seal key) and an HMAC-SHA-256 over all
//! of it.
//!
//! # Keys from the passphrase
//! Argon2id (defaults 64 MiB, 3 passes, 1 lane; the floor for a production keystore is the same,
//! lower only with `insecure_test_kdf = true`) turns the passphrase and salt into a master key
//! once, at open. Two keys are derived from it with HMAC-SHA-256 under distinct labels: one
//! encrypts entries and the check value, one authenticates the file. Both stay in zeroizing
//! memory for the life of the [`Keystore`]; the passphrase and master key are wiped after open.
//! Opening uses the settings the file records, refusing more than 4 GiB, 64 passes or 64 lanes so
//! that a hostile file cannot exhaust the host.
//!
//! # What each failure means
//! | what happened | [`ErrorKind`](sbtc_custody::ErrorKind) |
//! |---|---|
//! | wrong passphrase (or a changed salt, KDF setting or check value: indistinguishable) | `AuthFailed` |
//! | the file ends early (empty, cut off) | `Truncated` |
//! | not JSON, not this format, bad hex, impossible values, newer format version | `Corrupt` |
//! | parses and the passphrase is right, but the MAC or an entry fails: entries edited, deleted, reordered, relabelled, swapped | `Tampered` |
//! | the file is readable or writable by group or others | `SecretUnavailable`, with the `chmod 600` to run |
//! | the file is an older copy: its generation is below the rollback mark, or another keystore took its place | `RolledBack`, with the deliberate way out |
//! | the file has test-strength KDF settings and the config lacks `insecure_test_kdf = true` | `Config` |
//!
//! None of these panics, and opening never writes the keystore: the file is byte-identical
//! afterwards. (Opening may write the rollback mark next to it, see below.)
//!
//! # Rollback
//! The generation counter is covered by the MAC. A mark outside the file (`<keystore>.state`, or
//! `state_path`) records the highest generation this host has used: written at creation, after
//! every write, and at open when missing or behind. A file whose generation is below the mark, or
//! below what a running handle has seen, is refused; the error says how to accept an older copy
//! deliberately (remove the mark). Restoring the keystore and its mark together, or deleting the
//! mark before opening, defeats the check: it catches careless restores, not an attacker who owns
//! the directory.
//!
//! # New passphrases
//! A keystore with production KDF settings needs a passphrase that zxcvbn estimates at 10^14
//! guesses or more. A keystore with test settings takes any non-empty passphrase: it is a
//! throwaway, and opens only with `insecure_test_kdf = true`.
//!
//! # Use of private keys
//! A private key is decrypted only for the one signature or seal that needs it, then wiped (the
//! secp256k1 key with `non_secure_erase`, the best that crate offers). Decrypted keys are never
//! cached. Sealed blobs are `0x01 || nonce || ciphertext` under the seal key, with AAD = domain
//! tag, label and the caller's AAD.
//!
//! # Writes
//! `generate` and `destroy` rewrite the whole file atomically: a temp file (mode 0600) in the
//! same directory, fsync, rename over the keystore, fsync of the directory. Writers in one process
//! take a mutex; across processes they take an exclusive `flock` on `<file>.lock` next to the
//! keystore (a separate file, since rename replaces the keystore's inode). A writer re-reads and
//! re-verifies the file under the lock, so a key another process added is kept. Readers stat the
//! file on each operation and reload it if it changed.
//!
//! # Backup
//! The file is its own backup: a copy plus the passphrase restores every key, so
//! `key_backup = true`. A copy is only as strong as the passphrase and the Argon2id settings.

mod config;
mod crypto;
mod file;
mod format;
mod kdf;
mod keystore;
mod seal;
mod state;
mod strength;

pub use config::{Config, KdfConfig, OpenOptions};
pub use kdf::KdfParams;
pub use keystore::Keystore;

/// The keystore file format version this release writes and reads.
pub const FORMAT_VERSION: u32 = format::FORMAT_VERSION;

/// Opens the keystore named by `[custody.keystore]` (async: Argon2id runs on a blocking thread).
pub async fn open(config: &Config) -> sbtc_custody::Result<Keystore> {
    Keystore::open(config).await
}
