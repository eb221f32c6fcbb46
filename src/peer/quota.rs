//! Bytes and messages one peer may have waiting: in the node's inbox (from it) and in its link's
//! queue (to it). Each waiting message holds permits of its peer's semaphores and gives them back
//! when it is dropped, so what a peer holds is counted exactly, whoever holds the message.

use std::{
    fmt,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Counted per message on top of its encoded bytes: the decoded envelope, the channel slot.
pub(crate) const MESSAGE_OVERHEAD: usize = 256;

/// One peer's share of the inbox (or of its outbound queue).
#[derive(Debug)]
pub(crate) struct PeerQuota {
    bytes: Arc<Semaphore>,
    messages: Arc<Semaphore>,
    byte_limit: usize,
    peak: AtomicUsize,
    /// Set while the peer's messages are being dropped, so that the log says it once per episode.
    full: AtomicBool,
}

/// What one waiting message holds; released on drop.
pub(crate) struct Charge {
    _bytes: OwnedSemaphorePermit,
    _message: OwnedSemaphorePermit,
}

impl fmt::Debug for Charge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Charge")
    }
}

fn cost(len: usize) -> u32 {
    u32::try_from(len.saturating_add(MESSAGE_OVERHEAD)).unwrap_or(u32::MAX)
}

impl PeerQuota {
    pub(crate) fn new(byte_limit: usize, message_limit: usize) -> Arc<PeerQuota> {
        let byte_limit = byte_limit.clamp(1, Semaphore::MAX_PERMITS);
        Arc::new(PeerQuota {
            bytes: Arc::new(Semaphore::new(byte_limit)),
            messages: Arc::new(Semaphore::new(
                message_limit.clamp(1, Semaphore::MAX_PERMITS),
            )),
            byte_limit,
            peak: AtomicUsize::new(0),
            full: AtomicBool::new(false),
        })
    }

    /// Charges a message of `len` encoded bytes, if the peer's share has room for it.
    pub(crate) fn try_charge(&self, len: usize) -> Option<Charge> {
        let message = self.messages.clone().try_acquire_owned().ok()?;
        let bytes = self.bytes.clone().try_acquire_many_owned(cost(len)).ok()?;
        self.peak.fetch_max(self.held(), Ordering::Relaxed);
        Some(Charge {
            _bytes: bytes,
            _message: message,
        })
    }

    /// Charges a message of `len` encoded bytes, waiting for room. None if it can never fit.
    pub(crate) async fn charge(&self, len: usize) -> Option<Charge> {
        let message = self.messages.clone().acquire_owned().await.ok()?;
        let cost = cost(len);
        if usize::try_from(cost).map_or(true, |c| c > self.byte_limit) {
            return None;
        }
        let bytes = self.bytes.clone().acquire_many_owned(cost).await.ok()?;
        self.peak.fetch_max(self.held(), Ordering::Relaxed);
        Some(Charge {
            _bytes: bytes,
            _message: message,
        })
    }

    /// Bytes held now (encoded envelopes plus [`MESSAGE_OVERHEAD`] each).
    pub(crate) fn held(&self) -> usize {
        self.byte_limit
            .saturating_sub(self.bytes.available_permits())
    }

    /// The most bytes ever held at once.
    pub(crate) fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// Records whether the last message was refused; true when this starts a refusal episode
    /// (the moment to log).
    pub(crate) fn set_full(&self, full: bool) -> bool {
        let was = self.full.swap(full, Ordering::Relaxed);
        full && !was
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_and_messages_are_bounded_and_given_back() {
        let q = PeerQuota::new(10 * (1000 + MESSAGE_OVERHEAD), 100);
        let held: Vec<_> = (0..20).filter_map(|_| q.try_charge(1000)).collect();
        assert_eq!(held.len(), 10);
        assert_eq!(q.held(), 10 * (1000 + MESSAGE_OVERHEAD));
        drop(held);
        assert_eq!(q.held(), 0);
        assert_eq!(q.peak(), 10 * (1000 + MESSAGE_OVERHEAD));
        let small = PeerQuota::new(1 << 20, 3);
        let held: Vec<_> = (0..10).filter_map(|_| small.try_charge(1)).collect();
        assert_eq!(held.len(), 3);
        assert!(small.set_full(true));
        assert!(!small.set_full(true), "logged once per episode");
        assert!(!small.set_full(false));
        assert!(small.set_full(true));
    }
}
