//! The signer set: identity keys in one canonical order, and the coordinator chosen per chain tip.

use sha2::{Digest, Sha256};

use super::{Result, SignerIndex, SigningError};

/// The identity keys of every signer, sorted by their compressed encoding. A signer's index in this
/// order is its WSTS signer id (and its key id is index + 1): every node derives the same numbering
/// from the same set, whatever order it learnt the keys in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignerSet {
    keys: Vec<secp256k1::PublicKey>,
    threshold: u32,
}

impl SignerSet {
    /// `threshold` is the number of signers needed to sign (more than 70% in production).
    pub fn new(mut keys: Vec<secp256k1::PublicKey>, threshold: u32) -> Result<Self> {
        keys.sort_by_key(|k| k.serialize());
        if keys.windows(2).any(|w| w[0] == w[1]) {
            return Err(SigningError::SignerSet(
                "the same identity key appears twice; each signer needs its own key".into(),
            ));
        }
        let n = u32::try_from(keys.len())
            .map_err(|_| SigningError::SignerSet("more than 2^32 signers".into()))?;
        if n == 0 {
            return Err(SigningError::SignerSet("the signer set is empty".into()));
        }
        if threshold == 0 || threshold > n {
            return Err(SigningError::SignerSet(format!(
                "threshold {threshold} is outside 1..={n} for {n} signers"
            )));
        }
        Ok(SignerSet { keys, threshold })
    }

    pub fn len(&self) -> u32 {
        // Checked in `new`.
        self.keys.len() as u32
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn threshold(&self) -> u32 {
        self.threshold
    }

    /// The identity key of signer `index`.
    pub fn key(&self, index: SignerIndex) -> Option<&secp256k1::PublicKey> {
        self.keys.get(index as usize)
    }

    /// The index of an identity key, if it belongs to the set.
    pub fn index_of(&self, key: &secp256k1::PublicKey) -> Option<SignerIndex> {
        self.keys.iter().position(|k| k == key).map(|i| i as u32)
    }

    pub fn keys(&self) -> &[secp256k1::PublicKey] {
        &self.keys
    }

    /// The coordinator for the block `chain_tip`: SHA-256(domain || tip) read as a big-endian number,
    /// modulo the number of signers. A pure function of the tip and the (sorted) set, so every
    /// honest signer agrees on who coordinates without talking.
    pub fn coordinator_for(&self, chain_tip: &[u8; 32]) -> SignerIndex {
        let digest = Sha256::new()
            .chain_update(b"sbtc-hsm-signer/coordinator/v1")
            .chain_update(chain_tip)
            .finalize();
        let n = u64::from(self.len());
        let rem = digest
            .iter()
            .fold(0u64, |acc, b| (acc * 256 + u64::from(*b)) % n);
        rem as u32
    }
}
