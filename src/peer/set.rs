//! The signer set as the peer links see it: exactly the identity keys admitted. The set itself is
//! [`crate::keys::SignerSet`], the same value the rounds use; it changes at run time through
//! [`crate::peer::PeerNode::set_signer_set`].

pub use crate::keys::{Member, SignerSet};

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
