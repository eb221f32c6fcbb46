//! The signer set: the one type that says who the signers are. Peer admission reads it on every
//! handshake; rounds read the numbering, the threshold and the coordinator from it. It comes from
//! the bootstrap config today and from the chain (the registry's signer set) later.

use bitcoin::{hashes::Hash as _, secp256k1::PublicKey, BlockHash};
use sha2::{Digest, Sha256};

/// A signer's position in the sorted set (its WSTS signer id; its key id is this + 1).
pub type SignerIndex = u32;

/// What we know of one signer besides its identity key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Member {
    /// `host:port` to dial; a member without one is admitted when it dials us.
    pub endpoint: Option<String>,
    /// If set, the peer's certificate must carry a public key whose SPKI hashes to this.
    pub spki_pin: Option<[u8; 32]>,
}

/// Why a signer set cannot be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("signer set: {0}")]
pub struct SignerSetError(pub String);

/// The identity keys of every signer, sorted by their compressed encoding, with what is known of
/// each and the number of signers needed to sign. A signer's index in this order is its WSTS
/// signer id: every node derives the same numbering from the same set, whatever order it learnt
/// the keys in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SignerSet {
    keys: Vec<PublicKey>,
    members: Vec<Member>,
    threshold: u32,
}

impl SignerSet {
    /// `threshold` is the number of signers needed to sign (more than 70% in production, see
    /// [`SignerSet::default_threshold`]). Refuses duplicates, an empty set and a threshold outside
    /// `1..=n`.
    pub fn new(
        members: impl IntoIterator<Item = (PublicKey, Member)>,
        threshold: u32,
    ) -> Result<Self, SignerSetError> {
        let mut pairs: Vec<(PublicKey, Member)> = members.into_iter().collect();
        pairs.sort_by_key(|(k, _)| k.serialize());
        if pairs.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err(SignerSetError(
                "the same identity key appears twice; each signer needs its own key".into(),
            ));
        }
        let n = u32::try_from(pairs.len())
            .map_err(|_| SignerSetError("more than 2^32 signers".into()))?;
        if n == 0 {
            return Err(SignerSetError("the signer set is empty".into()));
        }
        if threshold == 0 || threshold > n {
            return Err(SignerSetError(format!(
                "threshold {threshold} is outside 1..={n} for {n} signers"
            )));
        }
        let (keys, members) = pairs.into_iter().unzip();
        Ok(SignerSet {
            keys,
            members,
            threshold,
        })
    }

    /// A set of bare keys (no endpoints or pins).
    pub fn from_keys(
        keys: impl IntoIterator<Item = PublicKey>,
        threshold: u32,
    ) -> Result<Self, SignerSetError> {
        Self::new(keys.into_iter().map(|k| (k, Member::default())), threshold)
    }

    /// The sBTC rule: more than 70% of `n` signers, i.e. the smallest `t` with `t > 0.7 n`.
    pub fn default_threshold(n: u32) -> u32 {
        ((n * 7) / 10 + 1).min(n)
    }

    /// The same members with another threshold.
    pub fn with_threshold(self, threshold: u32) -> Result<Self, SignerSetError> {
        Self::new(self.keys.into_iter().zip(self.members), threshold)
    }

    /// The set without `key` (a signer that left); the threshold is kept, capped at the new size.
    pub fn without(&self, key: &PublicKey) -> SignerSet {
        let (keys, members): (Vec<_>, Vec<_>) = self
            .iter()
            .filter(|(k, _)| *k != key)
            .map(|(k, m)| (*k, m.clone()))
            .unzip();
        let threshold = self.threshold.min(keys.len() as u32);
        SignerSet {
            keys,
            members,
            threshold,
        }
    }

    pub fn len(&self) -> u32 {
        // At most u32::MAX: checked when built.
        self.keys.len() as u32
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn threshold(&self) -> u32 {
        self.threshold
    }

    /// The identity key of signer `index`.
    pub fn key(&self, index: SignerIndex) -> Option<&PublicKey> {
        self.keys.get(index as usize)
    }

    /// The index of an identity key, if it belongs to the set.
    pub fn index_of(&self, key: &PublicKey) -> Option<SignerIndex> {
        self.keys
            .binary_search_by_key(&key.serialize(), |k| k.serialize())
            .ok()
            .map(|i| i as u32)
    }

    pub fn contains(&self, key: &PublicKey) -> bool {
        self.index_of(key).is_some()
    }

    /// What is known of a member.
    pub fn get(&self, key: &PublicKey) -> Option<&Member> {
        self.index_of(key).map(|i| &self.members[i as usize])
    }

    /// Every identity key, in index order.
    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }

    /// Every member, in index order.
    pub fn iter(&self) -> impl Iterator<Item = (&PublicKey, &Member)> {
        self.keys.iter().zip(self.members.iter())
    }

    /// The coordinator for the block `chain_tip`: SHA-256(domain || tip) read as a big-endian
    /// number, modulo the number of signers. A pure function of the tip and the (sorted) set, so
    /// every honest signer agrees on who coordinates without talking.
    pub fn coordinator_for(&self, chain_tip: &BlockHash) -> SignerIndex {
        let n = u64::from(self.len().max(1));
        let digest = Sha256::new()
            .chain_update(b"sbtc-hsm-signer/coordinator/v1")
            .chain_update(chain_tip.as_byte_array())
            .finalize();
        let rem = digest
            .iter()
            .fold(0u64, |acc, b| (acc * 256 + u64::from(*b)) % n);
        rem as u32
    }

    /// A digest of the members' keys and the threshold: two sets with the same digest are the
    /// same set (endpoints and pins aside).
    pub fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"sbtc-hsm-signer/signer-set/v1");
        h.update(self.threshold.to_be_bytes());
        h.update((self.keys.len() as u64).to_be_bytes());
        for k in &self.keys {
            h.update(k.serialize());
        }
        h.finalize().into()
    }
}

/// Collects members (a later entry for the same key replaces an earlier one) with the default
/// threshold; for peer sets built in code.
impl FromIterator<(PublicKey, Member)> for SignerSet {
    fn from_iter<I: IntoIterator<Item = (PublicKey, Member)>>(iter: I) -> Self {
        let mut map = std::collections::BTreeMap::new();
        for (k, m) in iter {
            map.insert(k.serialize(), (k, m));
        }
        let n = map.len() as u32;
        let (keys, members) = map.into_values().unzip();
        SignerSet {
            keys,
            members,
            threshold: Self::default_threshold(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u8) -> PublicKey {
        bitcoin::secp256k1::SecretKey::from_slice(&[i; 32])
            .unwrap()
            .public_key(bitcoin::secp256k1::SECP256K1)
    }

    #[test]
    fn order_is_canonical_and_errors_are_named() {
        let a = SignerSet::from_keys([key(1), key(2), key(3)], 2).unwrap();
        let b = SignerSet::from_keys([key(3), key(1), key(2)], 2).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.digest(), b.digest());
        for i in 0..3 {
            assert_eq!(a.index_of(a.key(i).unwrap()), Some(i));
        }
        assert!(SignerSet::from_keys([key(1), key(1)], 1)
            .unwrap_err()
            .0
            .contains("twice"));
        assert!(SignerSet::from_keys([key(1)], 2)
            .unwrap_err()
            .0
            .contains("outside"));
        assert!(SignerSet::from_keys([], 1).unwrap_err().0.contains("empty"));
    }

    #[test]
    fn default_threshold_is_more_than_70_percent() {
        for (n, t) in [(1, 1), (3, 3), (5, 4), (10, 8), (15, 11), (150, 106)] {
            assert_eq!(SignerSet::default_threshold(n), t, "n = {n}");
            assert!(f64::from(t) > 0.7 * f64::from(n));
        }
    }
}
