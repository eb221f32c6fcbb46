//! The signer set: exactly the identity keys admitted on the peer links. It comes from config (the
//! bootstrap set) for now and later from the chain; it changes at run time through
//! [`crate::peer::PeerNode::set_signer_set`].

use std::collections::BTreeMap;

/// What we know of one signer besides its identity key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Member {
    /// `host:port` to dial; a member without one is admitted when it dials us.
    pub endpoint: Option<String>,
    /// If set, the peer's certificate must carry a public key whose SPKI hashes to this.
    pub spki_pin: Option<[u8; 32]>,
}

/// The current signer set, keyed by compressed identity public key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SignerSet {
    members: BTreeMap<[u8; 33], (secp256k1::PublicKey, Member)>,
}

impl SignerSet {
    pub fn insert(&mut self, identity: secp256k1::PublicKey, member: Member) {
        self.members
            .insert(identity.serialize(), (identity, member));
    }

    pub fn remove(&mut self, identity: &secp256k1::PublicKey) -> Option<Member> {
        self.members.remove(&identity.serialize()).map(|(_, m)| m)
    }

    pub fn get(&self, identity: &secp256k1::PublicKey) -> Option<&Member> {
        self.members.get(&identity.serialize()).map(|(_, m)| m)
    }

    pub fn contains(&self, identity: &secp256k1::PublicKey) -> bool {
        self.members.contains_key(&identity.serialize())
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&secp256k1::PublicKey, &Member)> {
        self.members.values().map(|(k, m)| (k, m))
    }
}

impl FromIterator<(secp256k1::PublicKey, Member)> for SignerSet {
    fn from_iter<I: IntoIterator<Item = (secp256k1::PublicKey, Member)>>(iter: I) -> Self {
        let mut set = SignerSet::default();
        for (k, m) in iter {
            set.insert(k, m);
        }
        set
    }
}

/// The set as the running node sees it: read on every handshake, replaced at run time.
#[derive(Debug)]
pub struct SharedSet {
    current: std::sync::RwLock<std::sync::Arc<SignerSet>>,
    changed: tokio::sync::watch::Sender<u64>,
}

impl SharedSet {
    pub fn new(set: SignerSet) -> std::sync::Arc<SharedSet> {
        std::sync::Arc::new(SharedSet {
            current: std::sync::RwLock::new(std::sync::Arc::new(set)),
            changed: tokio::sync::watch::Sender::new(0),
        })
    }

    pub fn get(&self) -> std::sync::Arc<SignerSet> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the set; new handshakes see it at once, and subscribers are told.
    pub fn replace(&self, set: SignerSet) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = std::sync::Arc::new(set);
        self.changed.send_modify(|n| *n += 1);
    }

    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }
}
