//! Signer messages: every envelope carries a version, the sender's chain tip and a round id.
//! Round traffic relies on the authenticated link; proposals, acks and decisions are also signed
//! with the sender's identity key through `Custody`, so they can be shown to third parties.

use bytes::Bytes;
use prost::Message as _;
use sbtc_custody::{Custody, KeyLabel, RecoverableSignature};
use sha2::{Digest, Sha256};

pub use super::proto::{
    envelope::Body, rounds, ChainTip, DepositAnnouncement, Envelope, Statement,
};

/// The envelope version this release speaks (2: typed round messages; 1 carried them as JSON).
pub const VERSION: u32 = 2;
const STATEMENT_DOMAIN: &[u8] = b"sbtc-hsm-signer/peer-statement/v1";

/// The kinds of signed statements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatementKind {
    Proposal = 1,
    Ack = 2,
    Decision = 3,
    /// A signer's votes on the pending requests at one tip (`coordination::votes`).
    Votes = 4,
}

impl StatementKind {
    pub fn name(self) -> &'static str {
        match self {
            StatementKind::Proposal => "proposal",
            StatementKind::Ack => "ack",
            StatementKind::Decision => "decision",
            StatementKind::Votes => "votes",
        }
    }
}

/// Why an envelope was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("malformed envelope: {0}")]
    Malformed(&'static str),
    #[error("statement signature does not verify against the sender's identity key")]
    BadSignature,
}

/// The digest a statement's signature covers: kind, version, tip, round and payload.
pub fn statement_digest(
    kind: StatementKind,
    tip: &ChainTip,
    round_id: &[u8],
    payload: &[u8],
) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(STATEMENT_DOMAIN);
    h.update([kind as u8]);
    h.update(VERSION.to_be_bytes());
    h.update(tip.height.to_be_bytes());
    h.update((tip.block_hash.len() as u64).to_be_bytes());
    h.update(&tip.block_hash);
    h.update((round_id.len() as u64).to_be_bytes());
    h.update(round_id);
    h.update((payload.len() as u64).to_be_bytes());
    h.update(payload);
    h.finalize().into()
}

/// A round message (not signed: the link authenticates it).
pub fn round(tip: ChainTip, round_id: [u8; 32], msg: rounds::RoundMessage) -> Envelope {
    Envelope {
        version: VERSION,
        chain_tip: Some(tip),
        round_id: Bytes::copy_from_slice(&round_id),
        body: Some(Body::Round(msg)),
    }
}

/// A round envelope carrying `payload` as an opaque body: the links never look inside round
/// bodies, so link tests and benches send bytes of any size this way. Test builds only.
#[cfg(any(test, feature = "testing"))]
pub fn opaque_round(tip: ChainTip, round_id: [u8; 32], payload: Bytes) -> Envelope {
    let body = rounds::ShareResponse {
        shares: payload,
        ..Default::default()
    };
    round(
        tip,
        round_id,
        rounds::RoundMessage {
            msg: Some(rounds::round_message::Msg::ShareResponse(body)),
        },
    )
}

/// The payload of an [`opaque_round`] envelope. Test builds only.
#[cfg(any(test, feature = "testing"))]
pub fn opaque_payload(env: &Envelope) -> Option<&Bytes> {
    match &env.body {
        Some(Body::Round(rounds::RoundMessage {
            msg: Some(rounds::round_message::Msg::ShareResponse(r)),
        })) => Some(&r.shares),
        _ => None,
    }
}

/// A proposal, ack, decision or votes statement, signed with the identity key under `label` through `custody`.
pub async fn signed(
    custody: &dyn Custody,
    label: &KeyLabel,
    kind: StatementKind,
    tip: ChainTip,
    round_id: [u8; 32],
    payload: Bytes,
) -> Result<Envelope, sbtc_custody::Error> {
    let digest = statement_digest(kind, &tip, &round_id, &payload);
    let reason = format!(
        "{} statement for round {}",
        kind.name(),
        hex::encode(round_id)
    );
    let sig =
        crate::keys::with_reason(reason, custody.sign_secp256k1_prehash(label, &digest)).await?;
    let statement = Statement {
        payload,
        signature: Bytes::copy_from_slice(&sig.to_rsv()),
    };
    Ok(Envelope {
        version: VERSION,
        chain_tip: Some(tip),
        round_id: Bytes::copy_from_slice(&round_id),
        body: Some(match kind {
            StatementKind::Proposal => Body::Proposal(statement),
            StatementKind::Ack => Body::Ack(statement),
            StatementKind::Decision => Body::Decision(statement),
            StatementKind::Votes => Body::Votes(statement),
        }),
    })
}

/// Decodes and checks an envelope from `sender` (signatures of statements included). The
/// envelope's `bytes` fields are slices of `bytes`, not copies: a share request's packed nonces
/// stay where the frame put them.
pub fn decode(bytes: Bytes, sender: &secp256k1::PublicKey) -> Result<Envelope, Invalid> {
    let env = Envelope::decode(bytes).map_err(|_| Invalid::Malformed("not an Envelope"))?;
    if env.version != VERSION {
        return Err(Invalid::Malformed("unsupported version"));
    }
    let Some(tip) = &env.chain_tip else {
        return Err(Invalid::Malformed("no chain tip"));
    };
    if tip.block_hash.len() != 32 {
        return Err(Invalid::Malformed("chain tip hash is not 32 bytes"));
    }
    if env.round_id.len() != 32 {
        return Err(Invalid::Malformed("round id is not 32 bytes"));
    }
    let (kind, statement) = match &env.body {
        None => return Err(Invalid::Malformed("no body")),
        Some(Body::Round(_)) => return Ok(env),
        // Authenticated by the link; the receiver validates the deposit on its own node.
        Some(Body::Deposit(_)) => return Ok(env),
        Some(Body::Proposal(s)) => (StatementKind::Proposal, s),
        Some(Body::Ack(s)) => (StatementKind::Ack, s),
        Some(Body::Decision(s)) => (StatementKind::Decision, s),
        Some(Body::Votes(s)) => (StatementKind::Votes, s),
    };
    let rsv: [u8; 65] = statement
        .signature
        .as_ref()
        .try_into()
        .map_err(|_| Invalid::BadSignature)?;
    let sig = RecoverableSignature::from_rsv(&rsv).map_err(|_| Invalid::BadSignature)?;
    let digest = statement_digest(kind, tip, &env.round_id, &statement.payload);
    if !sig.verify(&digest, sender) {
        return Err(Invalid::BadSignature);
    }
    Ok(env)
}

/// Encodes once; the bytes are shared by every link of a broadcast.
pub fn encode(env: &Envelope) -> Bytes {
    Bytes::from(env.encode_to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tip() -> ChainTip {
        ChainTip {
            height: 7,
            block_hash: Bytes::from_static(&[9u8; 32]),
        }
    }

    #[test]
    fn round_messages_decode_and_garbage_does_not() {
        let key = secp256k1::SecretKey::from_slice(&[1u8; 32])
            .unwrap()
            .public_key(secp256k1::SECP256K1);
        let done = rounds::RoundMessage {
            msg: Some(rounds::round_message::Msg::Done(rounds::Done {})),
        };
        let env = round(tip(), [5u8; 32], done);
        assert_eq!(decode(encode(&env), &key).unwrap(), env);
        assert!(matches!(
            decode(Bytes::from_static(b"\xff\xff\xff"), &key),
            Err(Invalid::Malformed(_))
        ));
        let mut no_tip = env.clone();
        no_tip.chain_tip = None;
        assert_eq!(
            decode(encode(&no_tip), &key),
            Err(Invalid::Malformed("no chain tip"))
        );
        let mut v1 = env;
        v1.version = 1;
        assert_eq!(
            decode(encode(&v1), &key),
            Err(Invalid::Malformed("unsupported version"))
        );
    }
}
