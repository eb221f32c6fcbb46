//! How round messages travel between signers. The round logic only sees [`Transport`]; the
//! in-process network here serves tests and the benchmark floor, the peer links serve production.

use std::{collections::HashMap, sync::Arc};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{
    batch::{BatchNonceRequest, BatchNonceResponse, BatchShareRequest, BatchShareResponse},
    transport_key::TransportKeyEndorsement,
    SignerIndex,
};

/// Everything a signer sends to another in a DKG or signing round.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum RoundMessage {
    /// A per-DKG transport key, endorsed by the sender's identity key.
    TransportKey(TransportKeyEndorsement),
    /// A WSTS DKG message (public shares, private shares encrypted to transport keys, ...).
    Dkg(wsts::net::Message),
    /// Coordinator -> signers: commit nonces for this batch of sighashes.
    NonceRequest(BatchNonceRequest),
    /// Signer -> coordinator: one nonce per approved sighash.
    NonceResponse(BatchNonceResponse),
    /// Coordinator -> signers: sign the batch with these nonces.
    ShareRequest(BatchShareRequest),
    /// Signer -> coordinator: one signature share per approved sighash.
    ShareResponse(BatchShareResponse),
    /// Signer -> coordinator: this request is refused, and why.
    Refusal { round: [u8; 32], reason: String },
    /// Tells a signer's serving loop to stop (end of a session).
    Done,
}

impl RoundMessage {
    /// A short name for logs and message counts.
    pub fn kind(&self) -> &'static str {
        match self {
            RoundMessage::TransportKey(_) => "transport_key",
            RoundMessage::Dkg(_) => "dkg",
            RoundMessage::NonceRequest(_) => "nonce_request",
            RoundMessage::NonceResponse(_) => "nonce_response",
            RoundMessage::ShareRequest(_) => "share_request",
            RoundMessage::ShareResponse(_) => "share_response",
            RoundMessage::Refusal { .. } => "refusal",
            RoundMessage::Done => "done",
        }
    }
}

/// A message and the signer it came from. `from` is what the link authenticated (mTLS peer
/// identity), never a field the sender wrote into the message.
#[derive(Clone, Debug)]
pub struct Envelope {
    pub from: SignerIndex,
    pub msg: Arc<RoundMessage>,
}

/// Why a message was not delivered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    #[error("signer {0} is not reachable")]
    PeerDown(SignerIndex),
    #[error("signer {0} is not in the signer set")]
    UnknownPeer(SignerIndex),
}

/// One signer's end of the links to all others.
#[async_trait]
pub trait Transport: Send {
    /// This signer's index.
    fn me(&self) -> SignerIndex;

    /// Sends to one signer.
    async fn send(&self, to: SignerIndex, msg: Arc<RoundMessage>) -> Result<(), TransportError>;

    /// Sends to every other signer that is reachable; returns the ones that were not.
    async fn broadcast(&self, msg: Arc<RoundMessage>) -> Vec<SignerIndex>;

    /// The next message from any signer; `None` once every link is closed.
    async fn recv(&mut self) -> Option<Envelope>;
}

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
