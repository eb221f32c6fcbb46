//! Round messages on the wire: the one conversion between the round logic's types
//! ([`RoundMessage`], WSTS' DKG messages) and the protobuf of proto/rounds.proto.
//!
//! Everything decoded here came from a peer, so every field is checked and every failure is a
//! [`WireError`] naming the field: wrong lengths, points off the curve, scalars or field elements
//! out of range, counts above the signer set or [`MAX_BATCH`], unknown kinds. Nothing here
//! panics on peer input, and nothing allocates more than a constant times the input's size.
//!
//! Points travel uncompressed (65 bytes): decoding checks the curve equation instead of taking
//! a square root, about 20x cheaper, and a share request at N=150 carries 30,000 points to each
//! of 149 signers. Encoding converts a whole list of points to affine coordinates with one field
//! inversion (Montgomery's trick) instead of one or two per point.

use bytes::Bytes;
use hashbrown::{HashMap, HashSet};
use prost::Message as _;
use wsts::{
    common::{PolyCommitment, PublicNonce, TupleProof},
    curve::{field, point::Point, scalar::Scalar},
    net::{self, BadPrivateShare, DkgFailure, DkgStatus},
    schnorr::ID,
};

use super::decision::DkgDecision;
use crate::{
    peer::message::rounds::{self as pb, dkg_status::Status, round_message::Msg},
    signing::{
        BatchNonceRequest, BatchNonceResponse, BatchShareRequest, BatchShareResponse, DkgId,
        RoundId, RoundMessage, SighashRequest, SpendKind, TransportKeyEndorsement, MAX_BATCH,
    },
};

/// An uncompressed SEC1 point: 0x04 || x || y.
pub const POINT_LEN: usize = 65;
/// A scalar, big-endian, below the group order.
pub const SCALAR_LEN: usize = 32;
/// A public nonce: D || E.
pub const NONCE_LEN: usize = 2 * POINT_LEN;
/// Longest refusal reason accepted from a peer.
pub const MAX_REASON_BYTES: usize = 4096;
/// Longest encrypted DKG share accepted (AES-GCM of a 32-byte scalar is 60 bytes).
pub const MAX_CIPHERTEXT_BYTES: usize = 256;

const UNCOMPRESSED_TAG: u8 = 0x04;
const KIND_KEY_SPEND: u8 = 0;
const KIND_KEY_SPEND_MERKLE: u8 = 1;
const KIND_SCRIPT_PATH: u8 = 2;

/// Why a round message could not be encoded or decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("round message has no {0}")]
    Missing(&'static str),
    #[error("{field}: expected {expected} bytes, got {got}")]
    Length {
        field: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("{field}: {got} entries, at most {max} allowed")]
    TooMany {
        field: &'static str,
        got: usize,
        max: usize,
    },
    #[error("{field}: {detail}")]
    Invalid { field: &'static str, detail: String },
    #[error("{0} is not a message of these rounds")]
    Unsupported(&'static str),
    #[error("not a protobuf round message: {0}")]
    Protobuf(String),
}

fn invalid(field: &'static str, detail: impl Into<String>) -> WireError {
    WireError::Invalid {
        field,
        detail: detail.into(),
    }
}

fn at_most(field: &'static str, got: usize, max: usize) -> Result<(), WireError> {
    if got > max {
        return Err(WireError::TooMany { field, got, max });
    }
    Ok(())
}

fn exact<const N: usize>(field: &'static str, bytes: &[u8]) -> Result<[u8; N], WireError> {
    bytes.try_into().map_err(|_| WireError::Length {
        field,
        expected: N,
        got: bytes.len(),
    })
}

/// A packed list of `size`-byte items: the bytes must divide evenly and hold at most `max` items.
fn chunks<'a>(
    field: &'static str,
    bytes: &'a [u8],
    size: usize,
    max: usize,
) -> Result<std::slice::ChunksExact<'a, u8>, WireError> {
    if bytes.len() % size != 0 {
        return Err(invalid(
            field,
            format!(
                "{} bytes is not a whole number of {size}-byte items",
                bytes.len()
            ),
        ));
    }
    at_most(field, bytes.len() / size, max)?;
    Ok(bytes.chunks_exact(size))
}

// ---------------------------------------------------------------------------------------------
// Points and scalars.

/// Is the 32-byte big-endian number below `bound`?
fn below(bytes: &[u8; 32], bound: &[u8; 32]) -> bool {
    bytes < bound
}

fn scalar(field: &'static str, bytes: &[u8]) -> Result<Scalar, WireError> {
    let b: [u8; 32] = exact::<SCALAR_LEN>(field, bytes)?;
    if !below(&b, &wsts::curve::point::N) {
        return Err(invalid(field, "scalar is not below the group order"));
    }
    Ok(Scalar::from(b))
}

fn put_scalar(out: &mut Vec<u8>, s: &Scalar) {
    out.extend_from_slice(&s.to_bytes());
}

fn scalar_bytes(s: &Scalar) -> Bytes {
    Bytes::copy_from_slice(&s.to_bytes())
}

/// A point from 65 uncompressed bytes, checked to be on the curve (y^2 = x^3 + 7). The point at
/// infinity has no such encoding, so it never decodes.
fn point(field: &'static str, bytes: &[u8]) -> Result<Point, WireError> {
    let b: [u8; POINT_LEN] = exact::<POINT_LEN>(field, bytes)?;
    if b[0] != UNCOMPRESSED_TAG {
        return Err(invalid(
            field,
            format!("point tag {:#04x}, expected 0x04 (uncompressed)", b[0]),
        ));
    }
    let mut x = [0u8; 32];
    let mut y = [0u8; 32];
    x.copy_from_slice(&b[1..33]);
    y.copy_from_slice(&b[33..65]);
    if !below(&x, &field::P) || !below(&y, &field::P) {
        return Err(invalid(field, "coordinate is not below the field prime"));
    }
    let (x, y) = (field::Element::from(x), field::Element::from(y));
    let lhs = (y * y).normalize_var();
    let rhs = (x * x * x + field::Element::from(7)).normalize_var();
    if lhs != rhs {
        return Err(invalid(field, "point is not on the curve"));
    }
    Ok(Point::from((x, y)))
}

/// Appends `points` uncompressed, with one field inversion for the whole list (Montgomery's
/// trick on the Jacobian z coordinates) instead of one per coordinate as `Point::x()`/`y()` do.
fn put_points<'a>(
    out: &mut Vec<u8>,
    field: &'static str,
    points: impl IntoIterator<Item = &'a Point>,
) -> Result<(), WireError> {
    let points: Vec<&Point> = points.into_iter().collect();
    if points.iter().any(|p| p.gej.infinity != 0) {
        return Err(invalid(field, "the point at infinity has no encoding"));
    }
    // prefix[i] = z_0 * ... * z_i
    let mut prefix: Vec<field::Element> = Vec::with_capacity(points.len());
    let mut acc = field::Element::from(1);
    for p in &points {
        acc *= field::Element { fe: p.gej.z };
        prefix.push(acc);
    }
    let mut inv = acc.invert();
    let mut inverses = vec![field::Element::from(1); points.len()];
    for i in (0..points.len()).rev() {
        let z = field::Element {
            fe: points[i].gej.z,
        };
        inverses[i] = if i == 0 { inv } else { inv * prefix[i - 1] };
        inv *= z;
    }
    out.reserve(points.len() * POINT_LEN);
    for (p, zinv) in points.iter().zip(&inverses) {
        let zinv2 = *zinv * *zinv;
        let x = (field::Element { fe: p.gej.x } * zinv2).normalize_var();
        let y = (field::Element { fe: p.gej.y } * (zinv2 * *zinv)).normalize_var();
        out.push(UNCOMPRESSED_TAG);
        out.extend_from_slice(&x.to_bytes());
        out.extend_from_slice(&y.to_bytes());
    }
    Ok(())
}

fn point_bytes(field: &'static str, p: &Point) -> Result<Bytes, WireError> {
    let mut out = Vec::with_capacity(POINT_LEN);
    put_points(&mut out, field, [p])?;
    Ok(Bytes::from(out))
}

fn round_id(field: &'static str, bytes: &[u8]) -> Result<RoundId, WireError> {
    Ok(RoundId(exact::<32>(field, bytes)?))
}

// ---------------------------------------------------------------------------------------------
// Optional entries per sighash: a bitmap beside the packed present entries.

/// The bitmap of `present` (empty when every entry is present) and the number present.
fn bitmap(present: impl ExactSizeIterator<Item = bool>) -> (Bytes, usize) {
    let n = present.len();
    let mut bits = vec![0u8; n.div_ceil(8)];
    let mut count = 0;
    for (j, p) in present.enumerate() {
        if p {
            bits[j / 8] |= 1 << (j % 8);
            count += 1;
        }
    }
    if count == n {
        (Bytes::new(), n)
    } else {
        (Bytes::from(bits), count)
    }
}

/// Which of `count` entries are present, from a bitmap as [`bitmap`] makes it.
fn presence(field: &'static str, count: u32, bits: &[u8]) -> Result<Vec<bool>, WireError> {
    let n = count as usize;
    at_most(field, n, MAX_BATCH)?;
    if bits.is_empty() {
        return Ok(vec![true; n]);
    }
    if bits.len() != n.div_ceil(8) {
        return Err(WireError::Length {
            field,
            expected: n.div_ceil(8),
            got: bits.len(),
        });
    }
    if n % 8 != 0 && bits[n / 8] >> (n % 8) != 0 {
        return Err(invalid(field, "bits set beyond the last entry"));
    }
    Ok((0..n).map(|j| bits[j / 8] & (1 << (j % 8)) != 0).collect())
}

/// Fills the present slots of `present` from the packed items, which must be exactly as many.
fn fill<T>(
    field: &'static str,
    present: &[bool],
    items: &[u8],
    size: usize,
    decode: impl Fn(&[u8]) -> Result<T, WireError>,
) -> Result<Vec<Option<T>>, WireError> {
    let want = present.iter().filter(|p| **p).count();
    if items.len() != want * size {
        return Err(WireError::Length {
            field,
            expected: want * size,
            got: items.len(),
        });
    }
    let mut items = items.chunks_exact(size);
    present
        .iter()
        .map(|p| match p.then(|| items.next()).flatten() {
            Some(item) => decode(item).map(Some),
            None => Ok(None),
        })
        .collect()
}

fn len_u32(field: &'static str, n: usize) -> Result<u32, WireError> {
    u32::try_from(n).map_err(|_| invalid(field, "more than 2^32 entries"))
}

// ---------------------------------------------------------------------------------------------
// Batched signing.

fn encode_sighashes(requests: &[SighashRequest]) -> pb::Sighashes {
    let mut sighashes = Vec::with_capacity(requests.len() * 32);
    let mut kinds = Vec::with_capacity(requests.len());
    let mut roots = Vec::new();
    for r in requests {
        sighashes.extend_from_slice(&r.sighash);
        match r.kind {
            SpendKind::KeySpend { merkle_root: None } => kinds.push(KIND_KEY_SPEND),
            SpendKind::KeySpend {
                merkle_root: Some(root),
            } => {
                kinds.push(KIND_KEY_SPEND_MERKLE);
                roots.extend_from_slice(&root);
            }
            SpendKind::ScriptPath => kinds.push(KIND_SCRIPT_PATH),
        }
    }
    pb::Sighashes {
        sighashes: Bytes::from(sighashes),
        kinds: Bytes::from(kinds),
        merkle_roots: Bytes::from(roots),
    }
}

fn decode_sighashes(s: Option<pb::Sighashes>) -> Result<Vec<SighashRequest>, WireError> {
    let s = s.ok_or(WireError::Missing("sighashes"))?;
    let n = s.kinds.len();
    at_most("sighashes", n, MAX_BATCH)?;
    if s.sighashes.len() != n * 32 {
        return Err(WireError::Length {
            field: "sighashes",
            expected: n * 32,
            got: s.sighashes.len(),
        });
    }
    let mut roots = chunks("merkle_roots", &s.merkle_roots, 32, MAX_BATCH)?;
    let mut out = Vec::with_capacity(n);
    for (sighash, kind) in s.sighashes.chunks_exact(32).zip(s.kinds.iter()) {
        let kind = match *kind {
            KIND_KEY_SPEND => SpendKind::KeySpend { merkle_root: None },
            KIND_KEY_SPEND_MERKLE => {
                let root = roots.next().ok_or(WireError::Invalid {
                    field: "merkle_roots",
                    detail: "fewer merkle roots than key spends that need one".into(),
                })?;
                SpendKind::KeySpend {
                    merkle_root: Some(exact::<32>("merkle_roots", root)?),
                }
            }
            KIND_SCRIPT_PATH => SpendKind::ScriptPath,
            other => return Err(invalid("kinds", format!("unknown spend kind {other}"))),
        };
        out.push(SighashRequest {
            sighash: exact::<32>("sighashes", sighash)?,
            kind,
        });
    }
    if roots.next().is_some() {
        return Err(invalid(
            "merkle_roots",
            "more merkle roots than key spends that need one",
        ));
    }
    Ok(out)
}

fn encode_nonce_response(r: &BatchNonceResponse) -> Result<pb::NonceResponse, WireError> {
    let (present, _) = bitmap(r.nonces.iter().map(Option::is_some));
    let points = r.nonces.iter().flatten().flat_map(|n| [&n.D, &n.E]);
    let mut nonces = Vec::new();
    put_points(&mut nonces, "nonces", points)?;
    Ok(pb::NonceResponse {
        round: Bytes::copy_from_slice(&r.round.0),
        signer: r.signer,
        count: len_u32("nonces", r.nonces.len())?,
        present,
        nonces: Bytes::from(nonces),
    })
}

fn decode_nonce_response(r: pb::NonceResponse) -> Result<BatchNonceResponse, WireError> {
    let present = presence("present", r.count, &r.present)?;
    let nonces = fill("nonces", &present, &r.nonces, NONCE_LEN, |b| {
        Ok(PublicNonce {
            D: point("nonces", &b[..POINT_LEN])?,
            E: point("nonces", &b[POINT_LEN..])?,
        })
    })?;
    Ok(BatchNonceResponse {
        round: round_id("round", &r.round)?,
        signer: r.signer,
        nonces,
    })
}

fn encode_share_response(r: &BatchShareResponse) -> Result<pb::ShareResponse, WireError> {
    let (present, count) = bitmap(r.shares.iter().map(Option::is_some));
    let mut shares = Vec::with_capacity(count * SCALAR_LEN);
    for s in r.shares.iter().flatten() {
        put_scalar(&mut shares, s);
    }
    Ok(pb::ShareResponse {
        round: Bytes::copy_from_slice(&r.round.0),
        signer: r.signer,
        count: len_u32("shares", r.shares.len())?,
        present,
        shares: Bytes::from(shares),
    })
}

fn decode_share_response(r: pb::ShareResponse) -> Result<BatchShareResponse, WireError> {
    let present = presence("present", r.count, &r.present)?;
    let shares = fill("shares", &present, &r.shares, SCALAR_LEN, |b| {
        scalar("shares", b)
    })?;
    Ok(BatchShareResponse {
        round: round_id("round", &r.round)?,
        signer: r.signer,
        shares,
    })
}

// ---------------------------------------------------------------------------------------------
// DKG (WSTS messages).

fn encode_ids(ids: &[u32]) -> Vec<u32> {
    ids.to_vec()
}

fn decode_ids(field: &'static str, ids: Vec<u32>, max: usize) -> Result<Vec<u32>, WireError> {
    at_most(field, ids.len(), max)?;
    Ok(ids)
}

fn decode_id_set(
    field: &'static str,
    ids: Vec<u32>,
    max: usize,
) -> Result<HashSet<u32>, WireError> {
    at_most(field, ids.len(), max)?;
    let set: HashSet<u32> = ids.iter().copied().collect();
    if set.len() != ids.len() {
        return Err(invalid(field, "an id appears twice"));
    }
    Ok(set)
}

fn sorted(set: &HashSet<u32>) -> Vec<u32> {
    let mut v: Vec<u32> = set.iter().copied().collect();
    v.sort_unstable();
    v
}

fn encode_commitment(party_id: u32, c: &PolyCommitment) -> Result<pb::PartyCommitment, WireError> {
    let mut poly = Vec::new();
    put_points(&mut poly, "poly", &c.poly)?;
    Ok(pb::PartyCommitment {
        party_id,
        id: scalar_bytes(&c.id.id),
        k_g: point_bytes("k_g", &c.id.kG)?,
        kca: scalar_bytes(&c.id.kca),
        poly: Bytes::from(poly),
    })
}

fn decode_commitment(
    c: pb::PartyCommitment,
    max_signers: usize,
) -> Result<(u32, PolyCommitment), WireError> {
    // WSTS indexes the first coefficient when it checks the proof: an empty polynomial would
    // panic there, so it is refused here.
    if c.poly.is_empty() {
        return Err(invalid("poly", "a polynomial has at least one coefficient"));
    }
    let poly = chunks("poly", &c.poly, POINT_LEN, max_signers)?
        .map(|b| point("poly", b))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((
        c.party_id,
        PolyCommitment {
            id: ID {
                id: scalar("id", &c.id)?,
                kG: point("k_g", &c.k_g)?,
                kca: scalar("kca", &c.kca)?,
            },
            poly,
        },
    ))
}

fn encode_private_shares(m: &net::DkgPrivateShares) -> pb::DkgPrivateShares {
    pb::DkgPrivateShares {
        dkg_id: m.dkg_id,
        signer_id: m.signer_id,
        shares: m
            .shares
            .iter()
            .map(|(party_id, to_keys)| {
                let mut key_ids: Vec<&u32> = to_keys.keys().collect();
                key_ids.sort_unstable();
                pb::PartyShares {
                    party_id: *party_id,
                    shares: key_ids
                        .into_iter()
                        .map(|k| pb::EncryptedShare {
                            key_id: *k,
                            ciphertext: Bytes::copy_from_slice(&to_keys[k]),
                        })
                        .collect(),
                }
            })
            .collect(),
    }
}

fn decode_private_shares(
    m: pb::DkgPrivateShares,
    max_signers: usize,
) -> Result<net::DkgPrivateShares, WireError> {
    at_most("shares", m.shares.len(), max_signers)?;
    let mut shares = Vec::with_capacity(m.shares.len());
    for party in m.shares {
        at_most("shares", party.shares.len(), max_signers)?;
        let mut to_keys = HashMap::with_capacity(party.shares.len());
        for s in party.shares {
            at_most("ciphertext", s.ciphertext.len(), MAX_CIPHERTEXT_BYTES)?;
            if to_keys.insert(s.key_id, s.ciphertext.to_vec()).is_some() {
                return Err(invalid(
                    "shares",
                    format!("key id {} appears twice", s.key_id),
                ));
            }
        }
        shares.push((party.party_id, to_keys));
    }
    Ok(net::DkgPrivateShares {
        dkg_id: m.dkg_id,
        signer_id: m.signer_id,
        shares,
    })
}

fn encode_status(status: &DkgStatus) -> Result<pb::DkgStatus, WireError> {
    let ids = |s: &HashSet<u32>| pb::SignerIds { ids: sorted(s) };
    let status = match status {
        DkgStatus::Success => Status::Success(pb::Success {}),
        DkgStatus::Failure(DkgFailure::Threshold) => Status::Threshold(pb::Threshold {}),
        DkgStatus::Failure(DkgFailure::BadState) => Status::BadState(pb::BadState {}),
        DkgStatus::Failure(DkgFailure::MissingPublicShares(s)) => {
            Status::MissingPublicShares(ids(s))
        }
        DkgStatus::Failure(DkgFailure::BadPublicShares(s)) => Status::BadPublicShares(ids(s)),
        DkgStatus::Failure(DkgFailure::MissingPrivateShares(s)) => {
            Status::MissingPrivateShares(ids(s))
        }
        DkgStatus::Failure(DkgFailure::BadPrivateShares(bad)) => {
            let mut signers: Vec<&u32> = bad.keys().collect();
            signers.sort_unstable();
            let mut shares = Vec::with_capacity(bad.len());
            for id in signers {
                let b = &bad[id];
                shares.push(pb::BadPrivateShare {
                    signer_id: *id,
                    shared_key: point_bytes("shared_key", &b.shared_key)?,
                    proof_r: point_bytes("proof_r", &b.tuple_proof.R)?,
                    proof_rb: point_bytes("proof_rb", &b.tuple_proof.rB)?,
                    proof_z: scalar_bytes(&b.tuple_proof.z),
                });
            }
            Status::BadPrivateShares(pb::BadPrivateShares { shares })
        }
    };
    Ok(pb::DkgStatus {
        status: Some(status),
    })
}

fn decode_status(s: Option<pb::DkgStatus>, max_signers: usize) -> Result<DkgStatus, WireError> {
    let status = s
        .and_then(|s| s.status)
        .ok_or(WireError::Missing("DKG status"))?;
    let failure = |f| Ok(DkgStatus::Failure(f));
    match status {
        Status::Success(_) => Ok(DkgStatus::Success),
        Status::Threshold(_) => failure(DkgFailure::Threshold),
        Status::BadState(_) => failure(DkgFailure::BadState),
        Status::MissingPublicShares(s) => failure(DkgFailure::MissingPublicShares(decode_id_set(
            "missing_public_shares",
            s.ids,
            max_signers,
        )?)),
        Status::BadPublicShares(s) => failure(DkgFailure::BadPublicShares(decode_id_set(
            "bad_public_shares",
            s.ids,
            max_signers,
        )?)),
        Status::MissingPrivateShares(s) => failure(DkgFailure::MissingPrivateShares(
            decode_id_set("missing_private_shares", s.ids, max_signers)?,
        )),
        Status::BadPrivateShares(b) => {
            at_most("bad_private_shares", b.shares.len(), max_signers)?;
            let mut bad = HashMap::with_capacity(b.shares.len());
            for s in b.shares {
                let share = BadPrivateShare {
                    shared_key: point("shared_key", &s.shared_key)?,
                    tuple_proof: TupleProof {
                        R: point("proof_r", &s.proof_r)?,
                        rB: point("proof_rb", &s.proof_rb)?,
                        z: scalar("proof_z", &s.proof_z)?,
                    },
                };
                if bad.insert(s.signer_id, share).is_some() {
                    return Err(invalid(
                        "bad_private_shares",
                        format!("signer {} appears twice", s.signer_id),
                    ));
                }
            }
            failure(DkgFailure::BadPrivateShares(bad))
        }
    }
}

fn encode_dkg(m: &net::Message) -> Result<Msg, WireError> {
    use net::Message as M;
    Ok(match m {
        M::DkgBegin(m) => Msg::DkgBegin(pb::DkgBegin { dkg_id: m.dkg_id }),
        M::DkgPublicShares(m) => Msg::DkgPublicShares(pb::DkgPublicShares {
            dkg_id: m.dkg_id,
            signer_id: m.signer_id,
            comms: m
                .comms
                .iter()
                .map(|(party, c)| encode_commitment(*party, c))
                .collect::<Result<_, _>>()?,
        }),
        M::DkgPrivateBegin(m) => Msg::DkgPrivateBegin(pb::DkgPrivateBegin {
            dkg_id: m.dkg_id,
            signer_ids: encode_ids(&m.signer_ids),
            key_ids: encode_ids(&m.key_ids),
        }),
        M::DkgPrivateShares(m) => Msg::DkgPrivateShares(encode_private_shares(m)),
        M::DkgEndBegin(m) => Msg::DkgEndBegin(pb::DkgEndBegin {
            dkg_id: m.dkg_id,
            signer_ids: encode_ids(&m.signer_ids),
            key_ids: encode_ids(&m.key_ids),
        }),
        M::DkgEnd(m) => Msg::DkgEnd(pb::DkgEnd {
            dkg_id: m.dkg_id,
            signer_id: m.signer_id,
            status: Some(encode_status(&m.status)?),
        }),
        // Our signing rounds are the batched ones; WSTS' own never cross the links.
        M::NonceRequest(_) => return Err(WireError::Unsupported("WSTS NonceRequest")),
        M::NonceResponse(_) => return Err(WireError::Unsupported("WSTS NonceResponse")),
        M::SignatureShareRequest(_) => {
            return Err(WireError::Unsupported("WSTS SignatureShareRequest"))
        }
        M::SignatureShareResponse(_) => {
            return Err(WireError::Unsupported("WSTS SignatureShareResponse"))
        }
    })
}

// ---------------------------------------------------------------------------------------------
// The round message.

/// The protobuf form of `msg`. Fails only for WSTS' own signing messages, which these rounds
/// never send, and for points at infinity.
pub fn encode_round(msg: &RoundMessage) -> Result<pb::RoundMessage, WireError> {
    let msg = match msg {
        RoundMessage::TransportKey(e) => Msg::TransportKey(pb::TransportKeyEndorsement {
            dkg_id: e.dkg_id.0,
            signer: e.signer,
            transport_key: Bytes::copy_from_slice(&e.transport_key),
            signature: Bytes::copy_from_slice(&e.signature),
        }),
        RoundMessage::Dkg(m) => encode_dkg(m)?,
        RoundMessage::NonceRequest(r) => Msg::NonceRequest(pb::NonceRequest {
            dkg_id: r.dkg_id.0,
            round: Bytes::copy_from_slice(&r.round.0),
            sighashes: Some(encode_sighashes(&r.sighashes)),
        }),
        RoundMessage::NonceResponse(r) => Msg::NonceResponse(encode_nonce_response(r)?),
        RoundMessage::ShareRequest(r) => Msg::ShareRequest(pb::ShareRequest {
            dkg_id: r.dkg_id.0,
            round: Bytes::copy_from_slice(&r.round.0),
            sighashes: Some(encode_sighashes(&r.sighashes)),
            nonce_responses: r
                .nonce_responses
                .iter()
                .map(encode_nonce_response)
                .collect::<Result<_, _>>()?,
        }),
        RoundMessage::ShareResponse(r) => Msg::ShareResponse(encode_share_response(r)?),
        RoundMessage::Refusal { round, reason } => Msg::Refusal(pb::Refusal {
            round: Bytes::copy_from_slice(round),
            reason: reason.clone(),
        }),
        RoundMessage::Done => Msg::Done(pb::Done {}),
    };
    Ok(pb::RoundMessage { msg: Some(msg) })
}

/// The round message a peer sent, every field checked. `max_signers` (the signer set's size)
/// bounds every list of signers, parties, key ids and polynomial coefficients.
pub fn decode_round(msg: pb::RoundMessage, max_signers: usize) -> Result<RoundMessage, WireError> {
    let msg = msg.msg.ok_or(WireError::Missing("message"))?;
    Ok(match msg {
        Msg::TransportKey(e) => RoundMessage::TransportKey(TransportKeyEndorsement {
            dkg_id: DkgId(e.dkg_id),
            signer: e.signer,
            transport_key: exact::<33>("transport_key", &e.transport_key)?.to_vec(),
            signature: exact::<65>("signature", &e.signature)?.to_vec(),
        }),
        Msg::DkgBegin(m) => {
            RoundMessage::Dkg(net::Message::DkgBegin(net::DkgBegin { dkg_id: m.dkg_id }))
        }
        Msg::DkgPublicShares(m) => {
            at_most("comms", m.comms.len(), max_signers)?;
            let comms = m
                .comms
                .into_iter()
                .map(|c| decode_commitment(c, max_signers))
                .collect::<Result<_, _>>()?;
            RoundMessage::Dkg(net::Message::DkgPublicShares(net::DkgPublicShares {
                dkg_id: m.dkg_id,
                signer_id: m.signer_id,
                comms,
            }))
        }
        Msg::DkgPrivateBegin(m) => {
            RoundMessage::Dkg(net::Message::DkgPrivateBegin(net::DkgPrivateBegin {
                dkg_id: m.dkg_id,
                signer_ids: decode_ids("signer_ids", m.signer_ids, max_signers)?,
                key_ids: decode_ids("key_ids", m.key_ids, max_signers)?,
            }))
        }
        Msg::DkgPrivateShares(m) => RoundMessage::Dkg(net::Message::DkgPrivateShares(
            decode_private_shares(m, max_signers)?,
        )),
        Msg::DkgEndBegin(m) => RoundMessage::Dkg(net::Message::DkgEndBegin(net::DkgEndBegin {
            dkg_id: m.dkg_id,
            signer_ids: decode_ids("signer_ids", m.signer_ids, max_signers)?,
            key_ids: decode_ids("key_ids", m.key_ids, max_signers)?,
        })),
        Msg::DkgEnd(m) => RoundMessage::Dkg(net::Message::DkgEnd(net::DkgEnd {
            dkg_id: m.dkg_id,
            signer_id: m.signer_id,
            status: decode_status(m.status, max_signers)?,
        })),
        Msg::NonceRequest(r) => RoundMessage::NonceRequest(BatchNonceRequest {
            dkg_id: DkgId(r.dkg_id),
            round: round_id("round", &r.round)?,
            sighashes: decode_sighashes(r.sighashes)?,
        }),
        Msg::NonceResponse(r) => RoundMessage::NonceResponse(decode_nonce_response(r)?),
        Msg::ShareRequest(r) => {
            at_most("nonce_responses", r.nonce_responses.len(), max_signers)?;
            RoundMessage::ShareRequest(BatchShareRequest {
                dkg_id: DkgId(r.dkg_id),
                round: round_id("round", &r.round)?,
                sighashes: decode_sighashes(r.sighashes)?,
                nonce_responses: r
                    .nonce_responses
                    .into_iter()
                    .map(decode_nonce_response)
                    .collect::<Result<_, _>>()?,
            })
        }
        Msg::ShareResponse(r) => RoundMessage::ShareResponse(decode_share_response(r)?),
        Msg::Refusal(r) => {
            at_most("reason", r.reason.len(), MAX_REASON_BYTES)?;
            RoundMessage::Refusal {
                round: exact::<32>("round", &r.round)?,
                reason: r.reason,
            }
        }
        Msg::Done(_) => RoundMessage::Done,
    })
}

/// `msg` as protobuf bytes (what the links carry inside an envelope).
pub fn encode_round_bytes(msg: &RoundMessage) -> Result<Bytes, WireError> {
    Ok(Bytes::from(encode_round(msg)?.encode_to_vec()))
}

/// The round message in `bytes`, every field checked (see [`decode_round`]).
pub fn decode_round_bytes(bytes: Bytes, max_signers: usize) -> Result<RoundMessage, WireError> {
    let msg = pb::RoundMessage::decode(bytes).map_err(|e| WireError::Protobuf(e.to_string()))?;
    decode_round(msg, max_signers)
}

// ---------------------------------------------------------------------------------------------
// Statement payloads.

/// The payload of the coordinator's signed Decision statement.
pub fn encode_dkg_decision(d: &DkgDecision) -> Result<Bytes, WireError> {
    let key = hex::decode(&d.aggregate_key)
        .map_err(|_| invalid("aggregate_key", "not hex"))
        .and_then(|k| exact::<33>("aggregate_key", &k))?;
    Ok(Bytes::from(
        pb::DkgDecision {
            aggregate_key: Bytes::copy_from_slice(&key),
            verified: d.verified,
            detail: d.detail.clone(),
            signature: d.signature.clone().map(Bytes::from),
        }
        .encode_to_vec(),
    ))
}

/// A Decision statement's payload, checked.
pub fn decode_dkg_decision(bytes: &[u8]) -> Result<DkgDecision, WireError> {
    let d = pb::DkgDecision::decode(bytes).map_err(|e| WireError::Protobuf(e.to_string()))?;
    let key = exact::<33>("aggregate_key", &d.aggregate_key)?;
    if let Some(detail) = &d.detail {
        at_most("detail", detail.len(), MAX_REASON_BYTES)?;
    }
    let signature = match d.signature {
        Some(sig) => Some(exact::<64>("signature", &sig)?.to_vec()),
        None => None,
    };
    Ok(DkgDecision {
        aggregate_key: hex::encode(key),
        verified: d.verified,
        detail: d.detail,
        signature,
    })
}

#[cfg(test)]
mod tests {
    use rand::{Rng as _, RngCore as _};

    use super::*;

    const SIGNERS: usize = 15;

    fn rng() -> rand::rngs::OsRng {
        rand::rngs::OsRng
    }

    /// A point with a Jacobian z other than 1, as the round code produces them.
    fn random_point() -> Point {
        Point::from(Scalar::random(&mut rng())) + Point::from(Scalar::random(&mut rng()))
    }

    fn nonce() -> PublicNonce {
        PublicNonce {
            D: random_point(),
            E: random_point(),
        }
    }

    fn requests(m: usize) -> Vec<SighashRequest> {
        (0..m)
            .map(|i| SighashRequest {
                sighash: [i as u8; 32],
                kind: match i % 3 {
                    0 => SpendKind::KeySpend { merkle_root: None },
                    1 => SpendKind::KeySpend {
                        merkle_root: Some([0xee; 32]),
                    },
                    _ => SpendKind::ScriptPath,
                },
            })
            .collect()
    }

    fn nonce_response(signer: u32, m: usize, skip: impl Fn(usize) -> bool) -> BatchNonceResponse {
        BatchNonceResponse {
            round: RoundId([7; 32]),
            signer,
            nonces: (0..m).map(|j| (!skip(j)).then(nonce)).collect(),
        }
    }

    fn commitment(party: u32, t: usize) -> (u32, PolyCommitment) {
        let a = Scalar::random(&mut rng());
        let mut poly = vec![Point::from(a)];
        poly.extend((1..t).map(|_| random_point()));
        let id = ID::new(&Scalar::from(party + 1), &a, &mut rng());
        (party, PolyCommitment { id, poly })
    }

    fn private_shares(signer: u32, n: u32) -> net::DkgPrivateShares {
        let to_keys: HashMap<u32, Vec<u8>> = (1..=n)
            .map(|k| {
                let mut c = vec![0u8; 60];
                rng().fill_bytes(&mut c);
                (k, c)
            })
            .collect();
        net::DkgPrivateShares {
            dkg_id: 9,
            signer_id: signer,
            shares: vec![(signer, to_keys)],
        }
    }

    fn bad_private_share() -> BadPrivateShare {
        BadPrivateShare {
            shared_key: random_point(),
            tuple_proof: TupleProof {
                R: random_point(),
                rB: random_point(),
                z: Scalar::random(&mut rng()),
            },
        }
    }

    fn dkg_end(status: DkgStatus) -> RoundMessage {
        RoundMessage::Dkg(net::Message::DkgEnd(net::DkgEnd {
            dkg_id: 9,
            signer_id: 2,
            status,
        }))
    }

    /// One of every message the rounds send, DKG end statuses included.
    fn every_message() -> Vec<RoundMessage> {
        let ids: HashSet<u32> = [1, 4, 6].into_iter().collect();
        vec![
            RoundMessage::TransportKey(TransportKeyEndorsement {
                dkg_id: DkgId(9),
                signer: 3,
                transport_key: random_point().compress().as_bytes().to_vec(),
                signature: vec![5; 65],
            }),
            RoundMessage::Dkg(net::Message::DkgBegin(net::DkgBegin { dkg_id: 9 })),
            RoundMessage::Dkg(net::Message::DkgPublicShares(net::DkgPublicShares {
                dkg_id: 9,
                signer_id: 3,
                comms: vec![commitment(3, 11)],
            })),
            RoundMessage::Dkg(net::Message::DkgPrivateBegin(net::DkgPrivateBegin {
                dkg_id: 9,
                signer_ids: (0..15).collect(),
                key_ids: (1..=15).collect(),
            })),
            RoundMessage::Dkg(net::Message::DkgPrivateShares(private_shares(3, 15))),
            RoundMessage::Dkg(net::Message::DkgEndBegin(net::DkgEndBegin {
                dkg_id: 9,
                signer_ids: (0..15).collect(),
                key_ids: (1..=15).collect(),
            })),
            dkg_end(DkgStatus::Success),
            dkg_end(DkgStatus::Failure(DkgFailure::Threshold)),
            dkg_end(DkgStatus::Failure(DkgFailure::BadState)),
            dkg_end(DkgStatus::Failure(DkgFailure::MissingPublicShares(
                ids.clone(),
            ))),
            dkg_end(DkgStatus::Failure(DkgFailure::BadPublicShares(ids.clone()))),
            dkg_end(DkgStatus::Failure(DkgFailure::MissingPrivateShares(ids))),
            dkg_end(DkgStatus::Failure(DkgFailure::BadPrivateShares(
                [(4, bad_private_share()), (6, bad_private_share())]
                    .into_iter()
                    .collect(),
            ))),
            RoundMessage::NonceRequest(BatchNonceRequest {
                dkg_id: DkgId(9),
                round: RoundId([7; 32]),
                sighashes: requests(10),
            }),
            RoundMessage::NonceResponse(nonce_response(3, 10, |_| false)),
            RoundMessage::NonceResponse(nonce_response(4, 10, |j| j % 4 == 1)),
            RoundMessage::NonceResponse(nonce_response(5, 10, |_| true)),
            RoundMessage::ShareRequest(BatchShareRequest {
                dkg_id: DkgId(9),
                round: RoundId([7; 32]),
                sighashes: requests(10),
                nonce_responses: (0..4)
                    .map(|s| nonce_response(s, 10, |j| j == s as usize))
                    .collect(),
            }),
            RoundMessage::ShareResponse(BatchShareResponse {
                round: RoundId([7; 32]),
                signer: 3,
                shares: (0..17)
                    .map(|j| (j != 8).then(|| Scalar::random(&mut rng())))
                    .collect(),
            }),
            RoundMessage::ShareResponse(BatchShareResponse {
                round: RoundId([7; 32]),
                signer: 3,
                shares: vec![Some(Scalar::random(&mut rng())); 3],
            }),
            RoundMessage::Refusal {
                round: [7; 32],
                reason: "this signer approves none of the sighashes".into(),
            },
            RoundMessage::Done,
        ]
    }

    fn round_trip(msg: &RoundMessage) -> Result<RoundMessage, WireError> {
        decode_round_bytes(encode_round_bytes(msg)?, SIGNERS)
    }

    fn encoded(msg: &RoundMessage) -> pb::RoundMessage {
        encode_round(msg).unwrap()
    }

    fn nonce_response_pb(m: usize) -> pb::NonceResponse {
        match encoded(&RoundMessage::NonceResponse(nonce_response(1, m, |_| {
            false
        })))
        .msg
        {
            Some(Msg::NonceResponse(r)) => r,
            _ => unreachable!(),
        }
    }

    fn decode_nonces(r: pb::NonceResponse) -> Result<RoundMessage, WireError> {
        decode_round(
            pb::RoundMessage {
                msg: Some(Msg::NonceResponse(r)),
            },
            SIGNERS,
        )
    }

    #[test]
    fn every_variant_round_trips() {
        for msg in every_message() {
            let back = round_trip(&msg).unwrap_or_else(|e| panic!("{}: {e}", msg.kind()));
            assert_eq!(msg, back, "{} changed on the wire", msg.kind());
        }
    }

    #[test]
    fn points_are_sec1_uncompressed_and_match_libsecp256k1() {
        let points: Vec<Point> = (0..50).map(|_| random_point()).collect();
        let mut out = Vec::new();
        put_points(&mut out, "test", &points).unwrap();
        for (p, bytes) in points.iter().zip(out.chunks_exact(POINT_LEN)) {
            let key = secp256k1::PublicKey::from_slice(p.compress().as_bytes()).unwrap();
            assert_eq!(bytes, key.serialize_uncompressed());
            assert_eq!(point("test", bytes).unwrap(), *p);
        }
        let mut one = Vec::new();
        assert!(put_points(&mut one, "test", [&Point::identity()]).is_err());
    }

    #[test]
    fn bad_points_and_scalars_are_refused() {
        let mut good = Vec::new();
        put_points(&mut good, "p", [&random_point()]).unwrap();
        assert!(point("p", &good).is_ok());
        // Wrong length, compressed form, off the curve, coordinate >= p.
        assert!(matches!(
            point("p", &good[..64]),
            Err(WireError::Length { .. })
        ));
        let compressed = random_point().compress();
        assert!(point("p", compressed.as_bytes()).is_err());
        let mut tag = good.clone();
        tag[0] = 0x02;
        assert!(matches!(point("p", &tag), Err(WireError::Invalid { .. })));
        let mut off = good.clone();
        off[64] ^= 1;
        assert_eq!(
            point("p", &off),
            Err(invalid("p", "point is not on the curve"))
        );
        let mut big = good.clone();
        big[1..33].copy_from_slice(&[0xff; 32]);
        assert_eq!(
            point("p", &big),
            Err(invalid("p", "coordinate is not below the field prime"))
        );
        // Scalars: below the order only.
        assert!(scalar("s", &wsts::curve::point::N).is_err());
        assert!(scalar("s", &[0xff; 32]).is_err());
        assert!(scalar("s", &[1; 31]).is_err());
        let mut below_n = wsts::curve::point::N;
        below_n[31] -= 1;
        assert!(scalar("s", &below_n).is_ok());
    }

    #[test]
    fn garbage_and_truncated_input_gives_errors() {
        for _ in 0..2000 {
            let len = rng().gen_range(0..300);
            let mut junk = vec![0u8; len];
            rng().fill_bytes(&mut junk);
            // Any outcome but a panic; almost always an error.
            let _ = decode_round_bytes(Bytes::from(junk), SIGNERS);
        }
        for msg in every_message() {
            let bytes = encode_round_bytes(&msg).unwrap();
            // Flipped bytes anywhere: any outcome but a panic.
            for _ in 0..300 {
                let mut mutated = bytes.to_vec();
                for _ in 0..rng().gen_range(1..4) {
                    let at = rng().gen_range(0..mutated.len());
                    mutated[at] ^= 1 << rng().gen_range(0..8);
                }
                let _ = decode_round_bytes(Bytes::from(mutated), SIGNERS);
            }
            for cut in 0..bytes.len() {
                assert!(
                    decode_round_bytes(bytes.slice(..cut), SIGNERS).is_err(),
                    "{} cut at {cut} of {} bytes decoded",
                    msg.kind(),
                    bytes.len()
                );
            }
        }
    }

    #[test]
    fn oversized_counts_are_refused() {
        // A batch above MAX_BATCH, claimed or real.
        let mut r = nonce_response_pb(2);
        r.count = (MAX_BATCH + 1) as u32;
        r.present = Bytes::from(vec![0u8; (MAX_BATCH + 1).div_ceil(8)]);
        r.nonces = Bytes::new();
        assert!(matches!(decode_nonces(r), Err(WireError::TooMany { .. })));
        let many = RoundMessage::NonceRequest(BatchNonceRequest {
            dkg_id: DkgId(1),
            round: RoundId([1; 32]),
            sighashes: vec![requests(1)[0]; MAX_BATCH + 1],
        });
        assert!(matches!(round_trip(&many), Err(WireError::TooMany { .. })));
        // More nonce responses, parties or coefficients than signers.
        let share_request = RoundMessage::ShareRequest(BatchShareRequest {
            dkg_id: DkgId(1),
            round: RoundId([1; 32]),
            sighashes: requests(1),
            nonce_responses: (0..SIGNERS as u32 + 1)
                .map(|s| nonce_response(s, 1, |_| false))
                .collect(),
        });
        assert!(matches!(
            round_trip(&share_request),
            Err(WireError::TooMany {
                field: "nonce_responses",
                ..
            })
        ));
        let public = |comms| {
            RoundMessage::Dkg(net::Message::DkgPublicShares(net::DkgPublicShares {
                dkg_id: 1,
                signer_id: 0,
                comms,
            }))
        };
        let parties = public((0..SIGNERS as u32 + 1).map(|p| commitment(p, 2)).collect());
        assert!(matches!(
            round_trip(&parties),
            Err(WireError::TooMany { .. })
        ));
        let coefficients = public(vec![commitment(0, SIGNERS + 1)]);
        assert!(matches!(
            round_trip(&coefficients),
            Err(WireError::TooMany { field: "poly", .. })
        ));
        let shares = RoundMessage::Dkg(net::Message::DkgPrivateShares(private_shares(
            0,
            SIGNERS as u32 + 1,
        )));
        assert!(matches!(
            round_trip(&shares),
            Err(WireError::TooMany { .. })
        ));
        let ids = RoundMessage::Dkg(net::Message::DkgEndBegin(net::DkgEndBegin {
            dkg_id: 1,
            signer_ids: (0..SIGNERS as u32 + 1).collect(),
            key_ids: vec![],
        }));
        assert!(matches!(round_trip(&ids), Err(WireError::TooMany { .. })));
        let reason = RoundMessage::Refusal {
            round: [0; 32],
            reason: "x".repeat(MAX_REASON_BYTES + 1),
        };
        assert!(matches!(
            round_trip(&reason),
            Err(WireError::TooMany { .. })
        ));
    }

    #[test]
    fn malformed_fields_are_refused() {
        // Packed nonces that do not match the bitmap.
        let mut r = nonce_response_pb(3);
        r.nonces = r.nonces.slice(..NONCE_LEN * 2);
        assert!(matches!(
            decode_nonces(r),
            Err(WireError::Length {
                field: "nonces",
                ..
            })
        ));
        let mut r = nonce_response_pb(3);
        r.present = Bytes::from_static(&[0b0000_1011]);
        assert_eq!(
            decode_nonces(r),
            Err(invalid("present", "bits set beyond the last entry"))
        );
        let mut r = nonce_response_pb(3);
        r.present = Bytes::from_static(&[0b11, 0]);
        assert!(matches!(
            decode_nonces(r),
            Err(WireError::Length {
                field: "present",
                ..
            })
        ));
        let mut r = nonce_response_pb(3);
        r.round = r.round.slice(..31);
        assert!(matches!(
            decode_nonces(r),
            Err(WireError::Length { field: "round", .. })
        ));
        // Unknown spend kind; merkle roots that do not match the kinds.
        let Some(Msg::NonceRequest(mut req)) =
            encoded(&RoundMessage::NonceRequest(BatchNonceRequest {
                dkg_id: DkgId(1),
                round: RoundId([1; 32]),
                sighashes: requests(3),
            }))
            .msg
        else {
            unreachable!()
        };
        let decode_request = |req: pb::NonceRequest| {
            decode_round(
                pb::RoundMessage {
                    msg: Some(Msg::NonceRequest(req)),
                },
                SIGNERS,
            )
        };
        let sighashes = req.sighashes.clone().unwrap();
        req.sighashes = Some(pb::Sighashes {
            kinds: Bytes::from_static(&[0, 1, 7]),
            ..sighashes.clone()
        });
        assert_eq!(
            decode_request(req.clone()),
            Err(invalid("kinds", "unknown spend kind 7"))
        );
        req.sighashes = Some(pb::Sighashes {
            merkle_roots: Bytes::new(),
            ..sighashes.clone()
        });
        assert!(decode_request(req.clone()).is_err());
        req.sighashes = Some(pb::Sighashes {
            merkle_roots: Bytes::from(vec![1u8; 64]),
            ..sighashes.clone()
        });
        assert!(decode_request(req.clone()).is_err());
        req.sighashes = None;
        assert_eq!(decode_request(req), Err(WireError::Missing("sighashes")));
        // Transport keys and signatures of the wrong length.
        let Some(Msg::TransportKey(mut e)) = encoded(&every_message()[0]).msg else {
            unreachable!()
        };
        e.transport_key = e.transport_key.slice(..32);
        assert!(matches!(
            decode_round(
                pb::RoundMessage {
                    msg: Some(Msg::TransportKey(e))
                },
                SIGNERS
            ),
            Err(WireError::Length {
                field: "transport_key",
                ..
            })
        ));
        // An empty polynomial (WSTS would index its first coefficient) and a twice-sent key id.
        let empty = pb::PartyCommitment {
            poly: Bytes::new(),
            ..encode_commitment(0, &commitment(0, 2).1).unwrap()
        };
        assert!(decode_commitment(empty, SIGNERS).is_err());
        let mut twice = encode_private_shares(&private_shares(0, 3));
        twice.shares[0].shares[1].key_id = twice.shares[0].shares[0].key_id;
        assert!(decode_private_shares(twice, SIGNERS).is_err());
        // A body with no message, or with one this release does not know.
        assert_eq!(
            decode_round_bytes(Bytes::new(), SIGNERS),
            Err(WireError::Missing("message"))
        );
        let unknown = Bytes::from_static(&[0xa2, 0x06, 0x00]); // field 100, empty
        assert_eq!(
            decode_round_bytes(unknown, SIGNERS),
            Err(WireError::Missing("message"))
        );
    }

    #[test]
    fn wsts_signing_messages_are_not_sent() {
        let msg = RoundMessage::Dkg(net::Message::NonceRequest(net::NonceRequest {
            dkg_id: 1,
            sign_id: 1,
            sign_iter_id: 1,
            message: vec![],
            signature_type: net::SignatureType::Frost,
        }));
        assert!(matches!(encode_round(&msg), Err(WireError::Unsupported(_))));
    }

    #[test]
    fn dkg_decisions_round_trip_and_bad_keys_are_refused() {
        let d = DkgDecision {
            aggregate_key: hex::encode(random_point().compress().as_bytes()),
            verified: false,
            detail: Some("signature did not verify".into()),
            signature: None,
        };
        assert_eq!(
            decode_dkg_decision(&encode_dkg_decision(&d).unwrap()),
            Ok(d.clone())
        );
        let signed = DkgDecision {
            verified: true,
            detail: None,
            signature: Some(vec![9u8; 64]),
            ..d.clone()
        };
        assert_eq!(
            decode_dkg_decision(&encode_dkg_decision(&signed).unwrap()),
            Ok(signed)
        );
        let bad_signature = pb::DkgDecision {
            aggregate_key: Bytes::copy_from_slice(&[2; 33]),
            verified: true,
            detail: None,
            signature: Some(Bytes::from_static(&[1; 63])),
        };
        assert!(decode_dkg_decision(&bad_signature.encode_to_vec()).is_err());
        assert_eq!(
            decode_dkg_decision(&encode_dkg_decision(&d).unwrap()),
            Ok(d)
        );
        let short = pb::DkgDecision {
            aggregate_key: Bytes::from_static(&[2; 32]),
            verified: true,
            detail: None,
            signature: None,
        };
        assert!(decode_dkg_decision(&short.encode_to_vec()).is_err());
        assert!(decode_dkg_decision(b"\xff\xff").is_err());
    }
}
