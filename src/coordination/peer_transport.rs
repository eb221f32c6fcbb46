//! [`PeerTransport`]: the signing rounds' [`Transport`] over the mTLS peer links.
//!
//! Round messages travel typed (protobuf, [`wire`]) as the body of a peer `Round` envelope (the
//! link authenticates them), stamped with this node's chain tip and a round id. The sender index
//! the rounds see is derived from the identity key the TLS handshake proved, never from the
//! message. Signed statements (proposals, acks, decisions, votes) arriving on the same links are kept
//! aside for the node.

use bitcoin::{hashes::Hash as _, BlockHash};
use std::{collections::VecDeque, sync::Arc};

use async_trait::async_trait;
use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::wire;
use crate::{
    peer::{
        message::{self, Body, ChainTip, StatementKind},
        Inbound, PeerNode,
    },
    signing::{Envelope, RoundMessage, SignerIndex, SignerSet, Transport, TransportError},
};

/// A signed statement from a peer (its signature was checked by the peer layer).
#[derive(Clone, Debug)]
pub struct ReceivedStatement {
    pub from: SignerIndex,
    pub kind: StatementKind,
    pub round_id: Vec<u8>,
    pub payload: Bytes,
}

/// What arrives on the links.
#[derive(Clone, Debug)]
pub enum Incoming {
    Round(Envelope),
    Statement(ReceivedStatement),
}

/// One signer's end of the signing rounds, over its [`PeerNode`].
pub struct PeerTransport {
    node: Arc<PeerNode>,
    set: Arc<SignerSet>,
    me: SignerIndex,
    inbox: mpsc::Receiver<Inbound>,
    tip: ChainTip,
    statements: VecDeque<ReceivedStatement>,
    /// Where deposit announcements from peers go (the intake's relay; `api::relay`).
    deposits: Option<crate::api::relay::DepositSink>,
}

/// Why a transport could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PeerTransportError {
    #[error("this node's identity key is not in the signer set; add it to [[peer.bootstrap]]")]
    NotInSet,
    #[error("the peer node's inbox was already taken by another consumer")]
    InboxTaken,
}

impl PeerTransport {
    /// Takes the node's inbox: from now on every received envelope goes through this transport.
    pub fn new(
        node: Arc<PeerNode>,
        set: Arc<SignerSet>,
        tip: BlockHash,
        height: u64,
    ) -> Result<Self, PeerTransportError> {
        let me = set
            .index_of(&node.identity())
            .ok_or(PeerTransportError::NotInSet)?;
        let inbox = node.take_inbox().ok_or(PeerTransportError::InboxTaken)?;
        Ok(PeerTransport {
            node,
            set,
            me,
            inbox,
            tip: ChainTip {
                height,
                block_hash: Bytes::copy_from_slice(tip.as_byte_array()),
            },
            statements: VecDeque::new(),
            deposits: None,
        })
    }

    /// Sends peers' deposit announcements to `sink` (bounded: when it is full they are dropped
    /// and counted there). Without a sink they are dropped.
    pub fn with_deposit_sink(mut self, sink: crate::api::relay::DepositSink) -> Self {
        self.deposits = Some(sink);
        self
    }

    pub fn node(&self) -> &Arc<PeerNode> {
        &self.node
    }

    /// A new tenure: messages sent from now on carry this tip.
    pub fn set_tip(&mut self, tip: BlockHash, height: u64) {
        self.tip = ChainTip {
            height,
            block_hash: Bytes::copy_from_slice(tip.as_byte_array()),
        };
    }

    pub fn chain_tip(&self) -> ChainTip {
        self.tip.clone()
    }

    fn encode(&self, msg: &RoundMessage) -> Option<Bytes> {
        match wire::encode_round(msg) {
            Ok(body) => Some(message::encode(&message::round(
                self.tip.clone(),
                round_id(msg),
                body,
            ))),
            Err(e) => {
                tracing::error!(kind = msg.kind(), error = %e, "cannot encode a round message");
                None
            }
        }
    }

    async fn send_bytes(&self, to: SignerIndex, bytes: Bytes) -> Result<(), TransportError> {
        let key = self.set.key(to).ok_or(TransportError::UnknownPeer(to))?;
        match self.node.send_encoded(key, bytes).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(TransportError::PeerDown(to)),
            Err(e) => {
                tracing::warn!(to, error = %e, "message not sent");
                Err(TransportError::PeerDown(to))
            }
        }
    }

    /// Sends an already encoded peer envelope (a signed statement) to every other signer;
    /// returns the ones it did not reach. Same queues as round messages, so order is kept.
    pub async fn broadcast_envelope(&self, bytes: Bytes) -> Vec<SignerIndex> {
        let mut down = Vec::new();
        for to in (0..self.set.len()).filter(|i| *i != self.me) {
            if self.send_bytes(to, bytes.clone()).await.is_err() {
                down.push(to);
            }
        }
        down
    }

    /// The next round message or signed statement; `None` once the node has stopped.
    pub async fn recv_any(&mut self) -> Option<Incoming> {
        if let Some(s) = self.statements.pop_front() {
            return Some(Incoming::Statement(s));
        }
        self.recv_link().await
    }

    /// The next envelope from the links themselves.
    async fn recv_link(&mut self) -> Option<Incoming> {
        loop {
            let inbound = self.inbox.recv().await?;
            let Some(from) = self.set.index_of(&inbound.from) else {
                // Admitted by the link's set but not a member of this DKG's set.
                tracing::warn!(peer = %hex::encode(inbound.from.serialize()), "message from outside the signer set dropped");
                continue;
            };
            if matches!(inbound.envelope.body, Some(Body::Deposit(_))) {
                self.forward_deposit(inbound);
                continue;
            }
            let round_id = inbound.envelope.round_id.to_vec();
            let (kind, statement) = match inbound.envelope.body {
                Some(Body::Round(r)) => match wire::decode_round(r, self.set.len() as usize) {
                    Ok(msg) => {
                        tracing::debug!(from, kind = msg.kind(), "round message received");
                        return Some(Incoming::Round(Envelope {
                            from,
                            msg: Arc::new(msg),
                        }));
                    }
                    Err(e) => {
                        tracing::warn!(from, error = %e, "undecodable round message dropped");
                        continue;
                    }
                },
                Some(Body::Proposal(s)) => (StatementKind::Proposal, s),
                Some(Body::Ack(s)) => (StatementKind::Ack, s),
                Some(Body::Decision(s)) => (StatementKind::Decision, s),
                Some(Body::Votes(s)) => (StatementKind::Votes, s),
                Some(Body::Deposit(_)) | None => continue,
            };
            return Some(Incoming::Statement(ReceivedStatement {
                from,
                kind,
                round_id,
                payload: statement.payload,
            }));
        }
    }

    /// Hands a deposit announcement to the intake without waiting: the rounds never stall on it.
    fn forward_deposit(&self, inbound: Inbound) {
        match &self.deposits {
            Some(sink) => sink.offer(inbound),
            None => tracing::debug!("deposit announcement dropped: no intake attached"),
        }
    }

    /// Statements that arrived while a round was reading the links.
    pub fn take_statements(&mut self) -> Vec<ReceivedStatement> {
        self.statements.drain(..).collect()
    }
}

/// The envelope's round id: the signing round's own id, or one derived from the DKG id.
fn round_id(msg: &RoundMessage) -> [u8; 32] {
    let dkg = |id: u64| -> [u8; 32] {
        Sha256::new()
            .chain_update(b"sbtc-hsm-signer/dkg-round/v1")
            .chain_update(id.to_be_bytes())
            .finalize()
            .into()
    };
    match msg {
        RoundMessage::TransportKey(e) => dkg(e.dkg_id.0),
        RoundMessage::Dkg(m) => dkg(wsts_dkg_id(m)),
        RoundMessage::NonceRequest(r) => r.round.0,
        RoundMessage::NonceResponse(r) => r.round.0,
        RoundMessage::ShareRequest(r) => r.round.0,
        RoundMessage::ShareResponse(r) => r.round.0,
        RoundMessage::Refusal { round, .. } => *round,
        RoundMessage::Done => [0u8; 32],
    }
}

fn wsts_dkg_id(m: &wsts::net::Message) -> u64 {
    use wsts::net::Message as M;
    match m {
        M::DkgBegin(m) => m.dkg_id,
        M::DkgPrivateBegin(m) => m.dkg_id,
        M::DkgEndBegin(m) => m.dkg_id,
        M::DkgPublicShares(m) => m.dkg_id,
        M::DkgPrivateShares(m) => m.dkg_id,
        M::DkgEnd(m) => m.dkg_id,
        _ => 0,
    }
}

#[async_trait]
impl Transport for PeerTransport {
    fn me(&self) -> SignerIndex {
        self.me
    }

    async fn send(&self, to: SignerIndex, msg: Arc<RoundMessage>) -> Result<(), TransportError> {
        if to == self.me {
            return Err(TransportError::UnknownPeer(to));
        }
        let bytes = self.encode(&msg).ok_or(TransportError::PeerDown(to))?;
        tracing::debug!(
            to,
            kind = msg.kind(),
            bytes = bytes.len(),
            "round message sent"
        );
        self.send_bytes(to, bytes).await
    }

    async fn broadcast(&self, msg: Arc<RoundMessage>) -> Vec<SignerIndex> {
        let Some(bytes) = self.encode(&msg) else {
            return (0..self.set.len()).filter(|i| *i != self.me).collect();
        };
        tracing::debug!(
            kind = msg.kind(),
            bytes = bytes.len(),
            "round message broadcast"
        );
        self.broadcast_envelope(bytes).await
    }

    async fn recv(&mut self) -> Option<Envelope> {
        loop {
            match self.recv_link().await? {
                Incoming::Round(env) => return Some(env),
                Incoming::Statement(s) => self.statements.push_back(s),
            }
        }
    }
}
