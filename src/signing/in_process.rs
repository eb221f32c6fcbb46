//! A full mesh of tokio channels between the signers of one process: tests and the benchmark floor.
//! Test builds only (`cfg(any(test, feature = "testing"))`).

use std::{collections::HashMap, sync::Arc};

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::{
    message::RoundMessage,
    transport::{Envelope, Transport, TransportError},
    SignerIndex,
};

/// Message counts per kind, kept by the in-process network (a broadcast counts once).
#[derive(Debug, Default)]
pub struct MessageCounts {
    counts: std::sync::Mutex<HashMap<&'static str, u64>>,
    broadcasts: std::sync::Mutex<HashMap<&'static str, u64>>,
}

impl MessageCounts {
    fn count(&self, kind: &'static str, broadcast: bool) {
        let map = if broadcast {
            &self.broadcasts
        } else {
            &self.counts
        };
        if let Ok(mut m) = map.lock() {
            *m.entry(kind).or_default() += 1;
        }
    }

    /// Point-to-point sends of `kind`.
    pub fn sent(&self, kind: &str) -> u64 {
        self.counts
            .lock()
            .map(|m| m.get(kind).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// Broadcasts of `kind`.
    pub fn broadcast(&self, kind: &str) -> u64 {
        self.broadcasts
            .lock()
            .map(|m| m.get(kind).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// Forgets all counts (between phases of a test).
    pub fn reset(&self) {
        if let Ok(mut m) = self.counts.lock() {
            m.clear();
        }
        if let Ok(mut m) = self.broadcasts.lock() {
            m.clear();
        }
    }
}

/// Full mesh of tokio channels between `n` signers in one process.
pub struct InProcessNetwork;

impl InProcessNetwork {
    /// One transport per signer, indexed by signer index, and the shared message counts.
    #[allow(clippy::new_ret_no_self)]
    pub fn new(n: u32) -> (Vec<InProcessTransport>, Arc<MessageCounts>) {
        let counts = Arc::new(MessageCounts::default());
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..n)
            .map(|_| mpsc::unbounded_channel::<Envelope>())
            .unzip();
        let senders = Arc::new(senders);
        let transports = receivers
            .into_iter()
            .enumerate()
            .map(|(i, rx)| InProcessTransport {
                me: i as u32,
                peers: senders.clone(),
                rx,
                counts: counts.clone(),
            })
            .collect();
        (transports, counts)
    }
}

/// One signer's end of an [`InProcessNetwork`]. Dropping it takes the signer "down": sends to it
/// fail from then on.
pub struct InProcessTransport {
    me: SignerIndex,
    peers: Arc<Vec<mpsc::UnboundedSender<Envelope>>>,
    rx: mpsc::UnboundedReceiver<Envelope>,
    counts: Arc<MessageCounts>,
}

impl InProcessTransport {
    fn deliver(&self, to: SignerIndex, msg: Arc<RoundMessage>) -> Result<(), TransportError> {
        let peer = self
            .peers
            .get(to as usize)
            .ok_or(TransportError::UnknownPeer(to))?;
        peer.send(Envelope { from: self.me, msg })
            .map_err(|_| TransportError::PeerDown(to))
    }

    /// Closes this signer's inbox while keeping the value (a crashed process that peers still
    /// try to reach).
    pub fn close(&mut self) {
        self.rx.close();
    }
}

#[async_trait]
impl Transport for InProcessTransport {
    fn me(&self) -> SignerIndex {
        self.me
    }

    async fn send(&self, to: SignerIndex, msg: Arc<RoundMessage>) -> Result<(), TransportError> {
        self.counts.count(msg.kind(), false);
        self.deliver(to, msg)
    }

    async fn broadcast(&self, msg: Arc<RoundMessage>) -> Vec<SignerIndex> {
        self.counts.count(msg.kind(), true);
        let mut down = Vec::new();
        for to in 0..self.peers.len() as u32 {
            if to != self.me && self.deliver(to, msg.clone()).is_err() {
                down.push(to);
            }
        }
        down
    }

    async fn recv(&mut self) -> Option<Envelope> {
        self.rx.recv().await
    }
}
