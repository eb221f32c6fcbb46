//! DKG ids: unique per DKG, derived from what every signer already agrees on (the chain tip the
//! DKG starts at, the signer set, and the attempt at that tip), never a constant.

use bitcoin::{hashes::Hash as _, BlockHash};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::SignerSet;

/// Identifies one DKG (WSTS' `dkg_id`; never 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DkgId(pub u64);

impl DkgId {
    /// The id of the `attempt`-th DKG (0, 1, ...) of `set` started at block `chain_tip`: the first
    /// 8 bytes of SHA-256(domain || tip || set digest || attempt) with the top bit cleared (it is
    /// stored as a signed 64-bit column), never 0. Every signer computes
    /// the same id without talking; a new tip, a new set or a retry gives a new id.
    pub fn derive(chain_tip: &BlockHash, set: &SignerSet, attempt: u32) -> DkgId {
        let digest = Sha256::new()
            .chain_update(b"sbtc-hsm-signer/dkg-id/v1")
            .chain_update(chain_tip.as_byte_array())
            .chain_update(set.digest())
            .chain_update(attempt.to_be_bytes())
            .finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        DkgId((u64::from_be_bytes(first) & (i64::MAX as u64)).max(1))
    }
}

impl std::fmt::Display for DkgId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tip(n: u8) -> BlockHash {
        BlockHash::from_byte_array([n; 32])
    }

    #[test]
    fn ids_differ_by_tip_set_and_attempt() {
        let keys: Vec<_> = (1u8..=3)
            .map(|i| {
                bitcoin::secp256k1::SecretKey::from_slice(&[i; 32])
                    .unwrap()
                    .public_key(bitcoin::secp256k1::SECP256K1)
            })
            .collect();
        let set = SignerSet::from_keys(keys.clone(), 2).unwrap();
        let other = SignerSet::from_keys(keys[..2].to_vec(), 2).unwrap();
        let a = DkgId::derive(&tip(1), &set, 0);
        assert_eq!(a, DkgId::derive(&tip(1), &set, 0));
        assert_ne!(a, DkgId::derive(&tip(2), &set, 0));
        assert_ne!(a, DkgId::derive(&tip(1), &other, 0));
        assert_ne!(a, DkgId::derive(&tip(1), &set, 1));
        assert_ne!(a.0, 0);
        assert!(i64::try_from(a.0).is_ok());
    }
}
