//! How round messages travel between signers. The round logic only sees [`Transport`]; the
//! in-process network (`in_process`, test builds only) serves tests and the benchmark floor, the peer links serve production.

use std::sync::Arc;

use async_trait::async_trait;

use super::{message::RoundMessage, SignerIndex};

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
