//! The messages of a round, as the round logic sees them. On the wire they travel as protobuf
//! (see `coordination::wire`); here they are plain values.

use wsts::{common::PublicNonce, curve::scalar::Scalar};

use super::{
    round::{RoundId, SighashRequest},
    transport_key::TransportKeyEndorsement,
    DkgId, SignerIndex,
};

#[derive(Clone, Debug, PartialEq)]
pub struct BatchNonceRequest {
    pub dkg_id: DkgId,
    pub round: RoundId,
    pub sighashes: Vec<SighashRequest>,
}

/// One nonce per requested sighash; `None` where the signer does not approve it.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchNonceResponse {
    pub round: RoundId,
    pub signer: SignerIndex,
    pub nonces: Vec<Option<PublicNonce>>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct BatchShareRequest {
    pub dkg_id: DkgId,
    pub round: RoundId,
    pub sighashes: Vec<SighashRequest>,
    /// The nonce responses of the signers chosen for this round.
    pub nonce_responses: Vec<BatchNonceResponse>,
}

/// One share per requested sighash; `None` where the signer gave no nonce.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchShareResponse {
    pub round: RoundId,
    pub signer: SignerIndex,
    pub shares: Vec<Option<Scalar>>,
}

/// Everything a signer sends to another in a DKG or signing round.
#[derive(Clone, Debug, PartialEq)]
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
