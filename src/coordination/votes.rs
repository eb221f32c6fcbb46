//! A signer's votes on every pending request at one Bitcoin tip, as the payload of ONE signed
//! `Votes` statement per block: the custody operations a signer makes per block stay constant
//! however many deposits and withdrawals are pending.
//!
//! The payload is a compact binary encoding, not JSON: 10,000 ballots must fit in one peer
//! message (1 MiB by default). Every signer encodes the same votes to the same bytes (ballots
//! sorted, no optional fields), and a decoder refuses anything it would not have written itself:
//! wrong magic, a length past the end, trailing bytes, duplicates, unsorted ballots, reasons over
//! [`MAX_REASON_BYTES`] or not UTF-8.
//!
//! Layout (integers big-endian):
//! ```text
//! "SBV\x01" ‖ tip (32, internal order) ‖ height u64
//! ‖ n_deposits u32 ‖ n × (txid 32 ‖ vout u32 ‖ verdict)
//! ‖ n_withdrawals u32 ‖ n × (request id u64 ‖ verdict)
//! verdict = 0x00 (accept) | 0x01 len u8 reason (reject) | 0x02 len u8 reason (undecided)
//! ```

use bitcoin::{hashes::Hash as _, BlockHash, OutPoint, Txid};
use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::peer_transport::ReceivedStatement;
use crate::peer::{
    message::{ChainTip, Envelope, StatementKind},
    PeerError, PeerNode,
};

/// The payload's first bytes: format and version.
pub const MAGIC: &[u8; 4] = b"SBV\x01";
/// The longest reason a ballot carries: enough for an operator, short enough for 10,000 ballots.
pub const MAX_REASON_BYTES: usize = 200;
/// The most ballots (deposits and withdrawals together) in one statement.
pub const MAX_BALLOTS: usize = 10_000;
/// The largest payload [`BlockVotes::to_bytes`] writes: under the peer links' default 1 MiB
/// message limit with room for the envelope and the signature.
pub const MAX_PAYLOAD_BYTES: usize = 1_000_000;
const ROUND_DOMAIN: &[u8] = b"sbtc-hsm-signer/votes/v1";
const HEADER_BYTES: usize = 4 + 32 + 8;
const DEPOSIT_FIXED_BYTES: usize = 32 + 4 + 1;
const WITHDRAWAL_FIXED_BYTES: usize = 8 + 1;

/// What a signer says of one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// It passed every check and this signer's policy.
    Accept,
    /// It fails a rule that time will not fix (amount, lock time, blocklist, ...).
    Reject(String),
    /// Not now: too young, a cap is full for the moment, a key not yet verified. Stored as no
    /// vote, so the signer decides again at the next block.
    Undecided(String),
}

impl Verdict {
    /// A rejection, its reason cut to [`MAX_REASON_BYTES`] (at a character boundary).
    pub fn reject(reason: impl Into<String>) -> Verdict {
        Verdict::Reject(cut(reason.into(), MAX_REASON_BYTES))
    }

    /// An abstention, its reason cut to [`MAX_REASON_BYTES`].
    pub fn undecided(reason: impl Into<String>) -> Verdict {
        Verdict::Undecided(cut(reason.into(), MAX_REASON_BYTES))
    }

    pub fn is_accept(&self) -> bool {
        matches!(self, Verdict::Accept)
    }

    /// The reason, for a rejection or an abstention.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Verdict::Accept => None,
            Verdict::Reject(r) | Verdict::Undecided(r) => Some(r),
        }
    }

    fn reason_mut(&mut self) -> Option<&mut String> {
        match self {
            Verdict::Accept => None,
            Verdict::Reject(r) | Verdict::Undecided(r) => Some(r),
        }
    }
}

/// `text` cut to at most `max` bytes, at a character boundary.
fn cut(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DepositBallot {
    pub outpoint: OutPoint,
    pub verdict: Verdict,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WithdrawalBallot {
    pub request_id: u64,
    pub verdict: Verdict,
}

/// One signer's votes at one tip: deposits sorted by outpoint, withdrawals by request id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockVotes {
    pub tip: BlockHash,
    pub height: u64,
    pub deposits: Vec<DepositBallot>,
    pub withdrawals: Vec<WithdrawalBallot>,
}

/// Why votes could not be encoded, signed or read.
#[derive(Debug, thiserror::Error)]
pub enum VotesError {
    #[error("votes payload does not read: {0}")]
    Malformed(String),
    #[error("votes cannot be encoded: {0}")]
    Unencodable(String),
    #[error(
        "the statement's chain tip (height {tip_height}) is not the tip the votes were made at \
         ({votes_tip} at height {votes_height}); decide again at the current tip"
    )]
    TipMismatch {
        tip_height: u64,
        votes_tip: BlockHash,
        votes_height: u64,
    },
    #[error("cannot sign the votes statement: {0}")]
    Sign(#[from] PeerError),
}

fn malformed<T>(why: impl Into<String>) -> Result<T, VotesError> {
    Err(VotesError::Malformed(why.into()))
}

impl BlockVotes {
    /// Votes at `tip` with no ballots yet.
    pub fn empty(tip: BlockHash, height: u64) -> BlockVotes {
        BlockVotes {
            tip,
            height,
            deposits: Vec::new(),
            withdrawals: Vec::new(),
        }
    }

    pub fn ballots(&self) -> usize {
        self.deposits.len() + self.withdrawals.len()
    }

    /// The size [`BlockVotes::to_bytes`] gives.
    pub fn encoded_len(&self) -> usize {
        let reason = |v: &Verdict| v.reason().map_or(0, |r| 1 + r.len());
        HEADER_BYTES
            + 8
            + self
                .deposits
                .iter()
                .map(|b| DEPOSIT_FIXED_BYTES + reason(&b.verdict))
                .sum::<usize>()
            + self
                .withdrawals
                .iter()
                .map(|b| WITHDRAWAL_FIXED_BYTES + reason(&b.verdict))
                .sum::<usize>()
    }

    /// Shortens the reasons (evenly) until the payload fits [`MAX_PAYLOAD_BYTES`]: with
    /// thousands of ballots in a block, the verdicts matter and the prose gives way.
    pub fn fit_reasons(&mut self) {
        let mut limit = MAX_REASON_BYTES;
        while self.encoded_len() > MAX_PAYLOAD_BYTES && limit > 0 {
            limit /= 2;
            let reasons = self
                .deposits
                .iter_mut()
                .map(|b| &mut b.verdict)
                .chain(self.withdrawals.iter_mut().map(|b| &mut b.verdict))
                .filter_map(Verdict::reason_mut);
            for r in reasons {
                let short = cut(std::mem::take(r), limit);
                *r = short;
            }
        }
    }

    /// The statement payload. Refuses votes no decoder would accept (unsorted, duplicate, too
    /// many ballots, a reason too long), so every signer's bytes read back everywhere.
    pub fn to_bytes(&self) -> Result<Vec<u8>, VotesError> {
        let bad = |why: String| Err(VotesError::Unencodable(why));
        if self.ballots() > MAX_BALLOTS {
            return bad(format!(
                "{} ballots, over the {MAX_BALLOTS} one statement carries",
                self.ballots()
            ));
        }
        if let Some(w) = self
            .deposits
            .windows(2)
            .find(|w| w[0].outpoint >= w[1].outpoint)
        {
            return bad(format!(
                "deposit ballots not sorted and unique at {}",
                w[1].outpoint
            ));
        }
        if let Some(w) = self
            .withdrawals
            .windows(2)
            .find(|w| w[0].request_id >= w[1].request_id)
        {
            return bad(format!(
                "withdrawal ballots not sorted and unique at request {}",
                w[1].request_id
            ));
        }
        let len = self.encoded_len();
        if len > MAX_PAYLOAD_BYTES {
            return bad(format!(
                "{len} bytes, over {MAX_PAYLOAD_BYTES}; call fit_reasons first"
            ));
        }
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(self.tip.as_byte_array());
        out.extend_from_slice(&self.height.to_be_bytes());
        out.extend_from_slice(&(self.deposits.len() as u32).to_be_bytes());
        for b in &self.deposits {
            out.extend_from_slice(b.outpoint.txid.as_byte_array());
            out.extend_from_slice(&b.outpoint.vout.to_be_bytes());
            put_verdict(&mut out, &b.verdict)?;
        }
        out.extend_from_slice(&(self.withdrawals.len() as u32).to_be_bytes());
        for b in &self.withdrawals {
            out.extend_from_slice(&b.request_id.to_be_bytes());
            put_verdict(&mut out, &b.verdict)?;
        }
        Ok(out)
    }

    /// A received payload, checked whole.
    pub fn from_bytes(bytes: &[u8]) -> Result<BlockVotes, VotesError> {
        if bytes.len() > MAX_PAYLOAD_BYTES {
            return malformed(format!(
                "{} bytes, over the {MAX_PAYLOAD_BYTES}-byte limit",
                bytes.len()
            ));
        }
        let mut r = Reader { bytes, at: 0 };
        if r.take(4, "magic")? != MAGIC {
            return malformed("it does not start with the votes magic \"SBV\\x01\"");
        }
        let tip = BlockHash::from_byte_array(r.array("tip")?);
        let height = u64::from_be_bytes(r.array("height")?);
        let n_deposits = r.count("deposit count", MAX_BALLOTS)?;
        let mut deposits: Vec<DepositBallot> = Vec::with_capacity(n_deposits);
        for i in 0..n_deposits {
            let txid = Txid::from_byte_array(r.array("deposit txid")?);
            let vout = u32::from_be_bytes(r.array("deposit vout")?);
            let outpoint = OutPoint { txid, vout };
            if let Some(prev) = deposits.last() {
                if prev.outpoint == outpoint {
                    return malformed(format!("deposit ballot {i} repeats {outpoint}"));
                }
                if prev.outpoint > outpoint {
                    return malformed(format!(
                        "deposit ballot {i} ({outpoint}) is out of order: ballots are sorted by outpoint"
                    ));
                }
            }
            let verdict = r.verdict()?;
            deposits.push(DepositBallot { outpoint, verdict });
        }
        let n_withdrawals = r.count("withdrawal count", MAX_BALLOTS - n_deposits)?;
        let mut withdrawals: Vec<WithdrawalBallot> = Vec::with_capacity(n_withdrawals);
        for i in 0..n_withdrawals {
            let request_id = u64::from_be_bytes(r.array("withdrawal request id")?);
            if let Some(prev) = withdrawals.last() {
                if prev.request_id == request_id {
                    return malformed(format!(
                        "withdrawal ballot {i} repeats request {request_id}"
                    ));
                }
                if prev.request_id > request_id {
                    return malformed(format!(
                        "withdrawal ballot {i} (request {request_id}) is out of order: ballots are sorted by request id"
                    ));
                }
            }
            let verdict = r.verdict()?;
            withdrawals.push(WithdrawalBallot {
                request_id,
                verdict,
            });
        }
        if r.at != bytes.len() {
            return malformed(format!(
                "{} trailing bytes after the last ballot",
                bytes.len() - r.at
            ));
        }
        Ok(BlockVotes {
            tip,
            height,
            deposits,
            withdrawals,
        })
    }

    /// The votes a peer signed, read from its statement: a `Votes` statement whose round id is
    /// the hash of its payload (so the signature covers exactly these ballots).
    pub fn from_statement(statement: &ReceivedStatement) -> Result<BlockVotes, String> {
        if statement.kind != StatementKind::Votes {
            return Err(format!(
                "a {} statement is not a votes statement",
                statement.kind.name()
            ));
        }
        if statement.round_id.as_slice() != round_id(&statement.payload) {
            return Err(
                "the round id is not the hash of the votes payload; the statement was not made \
                 by this release's signed_statement"
                    .into(),
            );
        }
        BlockVotes::from_bytes(&statement.payload).map_err(|e| e.to_string())
    }
}

fn put_verdict(out: &mut Vec<u8>, verdict: &Verdict) -> Result<(), VotesError> {
    let (tag, reason) = match verdict {
        Verdict::Accept => {
            out.push(0);
            return Ok(());
        }
        Verdict::Reject(r) => (1, r),
        Verdict::Undecided(r) => (2, r),
    };
    if reason.len() > MAX_REASON_BYTES {
        return Err(VotesError::Unencodable(format!(
            "a reason of {} bytes, over {MAX_REASON_BYTES}; make verdicts with Verdict::reject or \
             Verdict::undecided",
            reason.len()
        )));
    }
    out.push(tag);
    out.push(reason.len() as u8);
    out.extend_from_slice(reason.as_bytes());
    Ok(())
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], VotesError> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.bytes.len());
        let Some(end) = end else {
            return malformed(format!("it ends inside the {what} (at byte {})", self.at));
        };
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], VotesError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn count(&mut self, what: &str, max: usize) -> Result<usize, VotesError> {
        let n = u32::from_be_bytes(self.array(what)?) as usize;
        if n > max {
            return malformed(format!(
                "{what} {n} would take the ballots over {MAX_BALLOTS}"
            ));
        }
        Ok(n)
    }

    fn verdict(&mut self) -> Result<Verdict, VotesError> {
        let [tag] = self.array("verdict")?;
        if tag == 0 {
            return Ok(Verdict::Accept);
        }
        if tag > 2 {
            return malformed(format!(
                "verdict tag {tag} at byte {} is none of accept (0), reject (1), undecided (2)",
                self.at - 1
            ));
        }
        let [len] = self.array("reason length")?;
        if usize::from(len) > MAX_REASON_BYTES {
            return malformed(format!(
                "a reason of {len} bytes, over the {MAX_REASON_BYTES} allowed"
            ));
        }
        let text = std::str::from_utf8(self.take(usize::from(len), "reason")?)
            .map_err(|_| VotesError::Malformed("a reason is not UTF-8".into()))?
            .to_owned();
        Ok(if tag == 1 {
            Verdict::Reject(text)
        } else {
            Verdict::Undecided(text)
        })
    }
}

/// A votes statement's round id: sha256(domain ‖ payload), so the id names exactly these votes.
pub fn round_id(payload: &[u8]) -> [u8; 32] {
    Sha256::new()
        .chain_update(ROUND_DOMAIN)
        .chain_update(payload)
        .finalize()
        .into()
}

/// The one signed statement of a block's votes: exactly one custody operation, however many
/// ballots. `tip` must be the tip the votes were made at.
pub async fn signed_statement(
    node: &PeerNode,
    tip: ChainTip,
    votes: &BlockVotes,
) -> Result<Envelope, VotesError> {
    if tip.height != votes.height || tip.block_hash.as_ref() != votes.tip.as_byte_array() {
        return Err(VotesError::TipMismatch {
            tip_height: tip.height,
            votes_tip: votes.tip,
            votes_height: votes.height,
        });
    }
    let payload = votes.to_bytes()?;
    let round = round_id(&payload);
    Ok(node
        .signed_statement(StatementKind::Votes, tip, round, Bytes::from(payload))
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random_votes(rng: &mut impl Rng) -> BlockVotes {
        let verdict = |rng: &mut dyn rand::RngCore| match rng.gen_range(0..3) {
            0 => Verdict::Accept,
            1 => Verdict::reject("é".repeat(rng.gen_range(0..150))),
            _ => Verdict::undecided("x".repeat(rng.gen_range(0..=MAX_REASON_BYTES))),
        };
        let mut outpoints: Vec<OutPoint> = (0..rng.gen_range(0..60))
            .map(|_| OutPoint {
                txid: Txid::from_byte_array(rng.gen()),
                vout: rng.gen_range(0..4),
            })
            .collect();
        outpoints.sort();
        outpoints.dedup();
        let mut ids: Vec<u64> = (0..rng.gen_range(0..60)).map(|_| rng.gen()).collect();
        ids.sort();
        ids.dedup();
        BlockVotes {
            tip: BlockHash::from_byte_array(rng.gen()),
            height: rng.gen(),
            deposits: outpoints
                .into_iter()
                .map(|outpoint| DepositBallot {
                    outpoint,
                    verdict: verdict(rng),
                })
                .collect(),
            withdrawals: ids
                .into_iter()
                .map(|request_id| WithdrawalBallot {
                    request_id,
                    verdict: verdict(rng),
                })
                .collect(),
        }
    }

    #[test]
    fn random_votes_round_trip_and_every_cut_or_flip_is_refused_or_reads_back_the_same() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(12);
        for _ in 0..300 {
            let votes = random_votes(&mut rng);
            let bytes = votes.to_bytes().unwrap();
            assert_eq!(bytes.len(), votes.encoded_len());
            assert_eq!(BlockVotes::from_bytes(&bytes).unwrap(), votes);
            // Any prefix is refused (nothing is optional), never a panic.
            let cut_at = rng.gen_range(0..bytes.len());
            assert!(BlockVotes::from_bytes(&bytes[..cut_at]).is_err());
            // A flipped byte either fails or reads as votes that encode to those very bytes.
            let mut flipped = bytes.clone();
            let i = rng.gen_range(0..flipped.len());
            flipped[i] ^= 1 << rng.gen_range(0..8);
            if let Ok(other) = BlockVotes::from_bytes(&flipped) {
                assert_eq!(other.to_bytes().unwrap(), flipped);
            }
        }
    }

    #[test]
    fn reasons_are_cut_at_a_character_boundary() {
        let v = Verdict::reject("é".repeat(150));
        assert_eq!(v.reason().unwrap().len(), MAX_REASON_BYTES);
        let v = Verdict::undecided(format!("a{}", "é".repeat(150)));
        assert_eq!(v.reason().unwrap().len(), MAX_REASON_BYTES - 1);
    }
}
