//! Argon2id: from the passphrase to the two keys that protect the file.
//!
//! The passphrase goes through Argon2id once, at open, into a 32-byte master key. Two keys are
//! derived from it by HMAC-SHA-256 with distinct labels, so the entry key and the file MAC key are
//! independent: the entry key encrypts private keys and the passphrase check value, the MAC key
//! authenticates the whole file. The master key is zeroized right after.

use argon2::{Algorithm, Argon2, Block, Params, Version};
use hmac::{Hmac, Mac};
use sbtc_custody::SecretString;
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

/// Argon2id parameters: memory in KiB, passes, lanes.
///
/// [`KdfParams::new`] enforces the production floor (64 MiB, 3 passes). Weaker parameters exist
/// only for tests and throwaway devnets, through [`KdfParams::insecure`] or
/// [`KdfParams::insecure_for_tests`]; every constructor refuses parameters above the ceiling that
/// opening a file also enforces, so a hostile file cannot make the signer allocate 100 GiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfParams {
    memory_kib: u32,
    iterations: u32,
    parallelism: u32,
}

impl KdfParams {
    /// 64 MiB.
    pub const DEFAULT_MEMORY_KIB: u32 = 64 * 1024;
    pub const DEFAULT_ITERATIONS: u32 = 3;
    pub const DEFAULT_PARALLELISM: u32 = 1;
    /// The production floor equals the defaults: tune upward, never below, unless the
    /// keystore is a throwaway (`insecure_test_kdf = true`).
    pub const MIN_MEMORY_KIB: u32 = Self::DEFAULT_MEMORY_KIB;
    pub const MIN_ITERATIONS: u32 = Self::DEFAULT_ITERATIONS;
    /// 4 GiB: more than any sane setting, less than what would take a host down.
    pub const MAX_MEMORY_KIB: u32 = 4 * 1024 * 1024;
    /// Past this, opening would take minutes even at the floor's memory.
    pub const MAX_ITERATIONS: u32 = 64;
    pub const MAX_PARALLELISM: u32 = 64;

    /// Parameters for a production keystore: at least 64 MiB and 3 passes.
    pub fn new(memory_kib: u32, iterations: u32, parallelism: u32) -> Result<Self, String> {
        let params = Self::insecure(memory_kib, iterations, parallelism)?;
        if !params.is_production_strength() {
            return Err(format!(
                "Argon2id memory_kib = {memory_kib} and iterations = {iterations} are below the \
                 production floor of {} KiB and {} passes; raise them, or set \
                 insecure_test_kdf = true for a throwaway test keystore",
                Self::MIN_MEMORY_KIB,
                Self::MIN_ITERATIONS
            ));
        }
        Ok(params)
    }

    /// Parameters without the production floor (still within Argon2's own limits and our
    /// ceiling). For tests and devnets only: a stolen file with weak parameters falls to a
    /// passphrase search much sooner.
    pub fn insecure(memory_kib: u32, iterations: u32, parallelism: u32) -> Result<Self, String> {
        check_bounds(memory_kib, iterations, parallelism)?;
        Ok(KdfParams {
            memory_kib,
            iterations,
            parallelism,
        })
    }

    /// 256 KiB and one pass: milliseconds, for unit tests.
    pub fn insecure_for_tests() -> Self {
        KdfParams {
            memory_kib: 256,
            iterations: 1,
            parallelism: 1,
        }
    }

    pub fn memory_kib(&self) -> u32 {
        self.memory_kib
    }

    pub fn iterations(&self) -> u32 {
        self.iterations
    }

    pub fn parallelism(&self) -> u32 {
        self.parallelism
    }

    pub fn is_production_strength(&self) -> bool {
        self.memory_kib >= Self::MIN_MEMORY_KIB && self.iterations >= Self::MIN_ITERATIONS
    }
}

impl Default for KdfParams {
    fn default() -> Self {
        KdfParams {
            memory_kib: Self::DEFAULT_MEMORY_KIB,
            iterations: Self::DEFAULT_ITERATIONS,
            parallelism: Self::DEFAULT_PARALLELISM,
        }
    }
}

/// Argon2's own limits and our ceiling. Used for configured parameters and for the ones a file
/// carries, before any memory is allocated.
pub(crate) fn check_bounds(
    memory_kib: u32,
    iterations: u32,
    parallelism: u32,
) -> Result<(), String> {
    if parallelism == 0 || parallelism > KdfParams::MAX_PARALLELISM {
        return Err(format!(
            "Argon2id parallelism {parallelism} is outside 1..={}",
            KdfParams::MAX_PARALLELISM
        ));
    }
    if iterations == 0 || iterations > KdfParams::MAX_ITERATIONS {
        return Err(format!(
            "Argon2id iterations {iterations} is outside 1..={}",
            KdfParams::MAX_ITERATIONS
        ));
    }
    if memory_kib > KdfParams::MAX_MEMORY_KIB {
        return Err(format!(
            "Argon2id memory {memory_kib} KiB is above the limit of {} KiB (4 GiB)",
            KdfParams::MAX_MEMORY_KIB
        ));
    }
    let min = 8 * parallelism;
    if memory_kib < min {
        return Err(format!(
            "Argon2id memory {memory_kib} KiB is below Argon2's minimum of 8 KiB per lane ({min} KiB)"
        ));
    }
    Ok(())
}

/// Why key derivation failed.
#[derive(Debug)]
pub(crate) enum KdfError {
    /// The parameters are outside our bounds (only reachable with a hostile or broken file).
    Params(String),
    /// The machine could not give Argon2 the memory the parameters ask for.
    OutOfMemory(u32),
    /// Argon2 or HMAC refused its input: a bug.
    Internal(String),
}

/// The keys that protect one file. Zeroized on drop; never printed.
pub(crate) struct FileKeys {
    entry: Zeroizing<[u8; 32]>,
    mac: Zeroizing<[u8; 32]>,
}

impl FileKeys {
    /// Encrypts private keys and the passphrase check value.
    pub(crate) fn entry_key(&self) -> &[u8; 32] {
        &self.entry
    }

    /// Authenticates the whole file.
    pub(crate) fn mac_key(&self) -> &[u8; 32] {
        &self.mac
    }
}

impl std::fmt::Debug for FileKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileKeys([redacted])")
    }
}

const ENTRY_KEY_INFO: &[u8] = b"sbtc-hsm-signer/keystore/v1/entry-key";
const MAC_KEY_INFO: &[u8] = b"sbtc-hsm-signer/keystore/v1/file-mac-key";

/// Runs Argon2id (blocking: seconds at high settings) and derives the file keys.
pub(crate) fn derive(
    passphrase: &SecretString,
    salt: &[u8],
    params: KdfParams,
) -> Result<FileKeys, KdfError> {
    check_bounds(params.memory_kib, params.iterations, params.parallelism)
        .map_err(KdfError::Params)?;
    let argon_params = Params::new(
        params.memory_kib,
        params.iterations,
        params.parallelism,
        Some(32),
    )
    .map_err(|e| KdfError::Params(format!("Argon2id refused the parameters: {e}")))?;
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, argon_params.clone());

    // Allocate the work area ourselves: a failed allocation becomes an error, not an abort,
    // and the area (which holds passphrase-derived state) is wiped afterwards.
    let blocks = argon_params.block_count();
    let mut memory: Vec<Block> = Vec::new();
    memory
        .try_reserve_exact(blocks)
        .map_err(|_| KdfError::OutOfMemory(params.memory_kib))?;
    memory.resize(blocks, Block::default());

    let mut master = Zeroizing::new([0u8; 32]);
    let hashed = argon.hash_password_into_with_memory(
        passphrase.expose().as_bytes(),
        salt,
        master.as_mut_slice(),
        &mut memory,
    );
    memory.iter_mut().for_each(Zeroize::zeroize);
    drop(memory);
    hashed.map_err(|e| KdfError::Internal(format!("Argon2id failed: {e}")))?;

    Ok(FileKeys {
        entry: subkey(&master, ENTRY_KEY_INFO)?,
        mac: subkey(&master, MAC_KEY_INFO)?,
    })
}

fn subkey(master: &[u8; 32], info: &[u8]) -> Result<Zeroizing<[u8; 32]>, KdfError> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(master)
        .map_err(|e| KdfError::Internal(format!("HMAC key: {e}")))?;
    mac.update(info);
    let mut out = mac.finalize().into_bytes();
    let mut key = Zeroizing::new([0u8; 32]);
    key.copy_from_slice(&out);
    out[..].zeroize();
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_meet_the_issue_floor_and_new_refuses_weaker() {
        let d = KdfParams::default();
        assert!(d.memory_kib() >= 64 * 1024, "{d:?}");
        assert!(d.iterations() >= 3, "{d:?}");
        assert!(d.is_production_strength());
        assert_eq!(KdfParams::new(65536, 3, 1), Ok(d));
        let e = KdfParams::new(32 * 1024, 3, 1).unwrap_err();
        assert!(e.contains("insecure_test_kdf"), "{e}");
        assert!(KdfParams::new(65536, 2, 1).is_err());
        assert!(KdfParams::insecure(256, 1, 1).is_ok());
        assert!(!KdfParams::insecure_for_tests().is_production_strength());
    }

    #[test]
    fn ceiling_and_argon2_limits_are_enforced() {
        assert!(KdfParams::insecure(KdfParams::MAX_MEMORY_KIB + 1, 3, 1).is_err());
        assert!(KdfParams::insecure(65536, 0, 1).is_err());
        assert!(KdfParams::insecure(65536, 65, 1).is_err());
        assert!(KdfParams::insecure(65536, 3, 0).is_err());
        assert!(KdfParams::insecure(16, 1, 4).is_err());
    }

    #[test]
    fn keys_depend_on_passphrase_and_salt_and_are_distinct() {
        let p = KdfParams::insecure_for_tests();
        let a = derive(&SecretString::new("one".into()), &[1; 32], p).unwrap();
        let b = derive(&SecretString::new("two".into()), &[1; 32], p).unwrap();
        let c = derive(&SecretString::new("one".into()), &[2; 32], p).unwrap();
        let a2 = derive(&SecretString::new("one".into()), &[1; 32], p).unwrap();
        assert_eq!(a.entry_key(), a2.entry_key());
        assert_ne!(a.entry_key(), a.mac_key());
        assert_ne!(a.entry_key(), b.entry_key());
        assert_ne!(a.entry_key(), c.entry_key());
        assert_eq!(format!("{a:?}"), "FileKeys([redacted])");
    }
}
