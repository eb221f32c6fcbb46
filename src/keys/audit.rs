//! The append-only audit log of custody operations that used a private key. Each entry stores
//! `hash = SHA-256(prev_hash || canonical bytes of the entry)`, so editing, deleting or reordering
//! a row breaks the chain at that row, and `sbtc-hsm-signer audit verify` names it.
//!
//! A hash chain alone does not stop someone with write access to the database: they can rewrite
//! a row and recompute every hash after it. So the node signs the chain head with its identity key
//! (through custody) at the end of each round and on shutdown, and stores that signature as an
//! entry of its own ([`HEAD_OPERATION`]). Rewriting anything at or before a signed head needs a new
//! signature from the HSM. `audit verify` checks every head signature.
//!
//! Limits: entries after the last signed head are protected by the hash chain only (a crash leaves
//! such a tail until the next head is signed); deleting the newest rows, head signatures included,
//! leaves a valid, shorter chain. `audit verify` prints the head as `SEQ:HASH`; kept elsewhere and
//! passed back with `--expect-head`, it catches that too.

use std::{
    fmt,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use sha2::{Digest, Sha256};

/// The `prev_hash` of the first entry.
pub const GENESIS_HASH: [u8; 32] = [0; 32];

/// One custody operation, before it is appended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRecord {
    /// Chosen by the caller, unique: a retried append with the same id is stored once.
    pub entry_id: [u8; 16],
    /// When the operation happened, kept to the microsecond (PostgreSQL's precision).
    pub at: SystemTime,
    /// The key label the operation used.
    pub key_label: String,
    /// The custody operation, e.g. `sign_secp256k1_prehash`.
    pub operation: String,
    /// What was signed: the digest, or what was sealed/unsealed (never a secret).
    pub message: Vec<u8>,
    /// Why: e.g. `sweep <txid> input 0`, `dkg <aggregate key>`.
    pub reason: String,
    /// How it went: `ok`, or `error: ...`. Empty in entries written before outcomes were kept.
    pub outcome: String,
}

impl AuditRecord {
    /// A record stamped now, with a fresh random id.
    pub fn new(
        key_label: impl Into<String>,
        operation: impl Into<String>,
        message: Vec<u8>,
        reason: impl Into<String>,
    ) -> Self {
        AuditRecord {
            entry_id: rand::random(),
            at: truncate_to_micros(SystemTime::now()),
            key_label: key_label.into(),
            operation: operation.into(),
            message,
            reason: reason.into(),
            outcome: String::new(),
        }
    }

    /// The same record with its outcome.
    pub fn with_outcome(mut self, outcome: impl Into<String>) -> Self {
        self.outcome = outcome.into();
        self
    }
}

/// An appended entry: its place in the chain and its hashes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEntry {
    /// 1, 2, 3, ... with no gaps.
    pub seq: u64,
    pub record: AuditRecord,
    pub prev_hash: [u8; 32],
    pub hash: [u8; 32],
}

/// Microseconds since the Unix epoch (negative before it), as stored.
pub fn micros(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
    }
}

pub fn from_micros(us: i64) -> SystemTime {
    if us >= 0 {
        UNIX_EPOCH + Duration::from_micros(us.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_micros(us.unsigned_abs())
    }
}

pub fn truncate_to_micros(t: SystemTime) -> SystemTime {
    from_micros(micros(t))
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// The bytes hashed for an entry: every field, length-prefixed, in a fixed order. Entries with an
/// outcome use the v2 domain and append it; entries without one keep the v1 form, so logs written
/// before outcomes were recorded still verify.
pub fn canonical_bytes(seq: u64, record: &AuditRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(160 + record.message.len());
    out.extend_from_slice(if record.outcome.is_empty() {
        b"sbtc-hsm-signer/audit/v1"
    } else {
        b"sbtc-hsm-signer/audit/v2"
    });
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&record.entry_id);
    out.extend_from_slice(&micros(record.at).to_be_bytes());
    put_bytes(&mut out, record.key_label.as_bytes());
    put_bytes(&mut out, record.operation.as_bytes());
    put_bytes(&mut out, &record.message);
    put_bytes(&mut out, record.reason.as_bytes());
    if !record.outcome.is_empty() {
        put_bytes(&mut out, record.outcome.as_bytes());
    }
    out
}

pub fn entry_hash(prev_hash: &[u8; 32], seq: u64, record: &AuditRecord) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev_hash);
    h.update(canonical_bytes(seq, record));
    h.finalize().into()
}

/// Builds the entry that follows `head` (None: the log is empty).
pub fn next_entry(head: Option<(u64, [u8; 32])>, record: &AuditRecord) -> AuditEntry {
    let (seq, prev_hash) = match head {
        Some((seq, hash)) => (seq + 1, hash),
        None => (1, GENESIS_HASH),
    };
    let mut record = record.clone();
    record.at = truncate_to_micros(record.at);
    AuditEntry {
        seq,
        hash: entry_hash(&prev_hash, seq, &record),
        prev_hash,
        record,
    }
}

/// What `verify` found wrong at the first bad entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChainBreak {
    /// The row's contents do not match its hash: it was edited.
    Edited { seq: u64 },
    /// The row's `prev_hash` is not the previous row's hash, or sequence numbers skip: a row
    /// before it was deleted or rows were reordered.
    Missing { expected_seq: u64, found_seq: u64 },
    /// The row's hash is right for its contents but it does not follow the previous row.
    Unlinked { seq: u64 },
}

impl fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChainBreak::Edited { seq } => write!(
                f,
                "entry #{seq} does not match its hash: it was edited after it was written"
            ),
            ChainBreak::Missing {
                expected_seq,
                found_seq,
            } => write!(
                f,
                "expected entry #{expected_seq} but found #{found_seq}: entries were deleted or reordered"
            ),
            ChainBreak::Unlinked { seq } => write!(
                f,
                "entry #{seq} does not follow the entry before it: an entry before it was deleted, \
                 replaced or reordered"
            ),
        }
    }
}

/// The result of walking the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditVerification {
    /// Entries checked before the first break (all of them if intact).
    pub entries: u64,
    /// The hash of the last good entry (the genesis hash for an empty log).
    pub head_hash: [u8; 32],
    pub first_break: Option<ChainBreak>,
}

impl AuditVerification {
    pub fn is_intact(&self) -> bool {
        self.first_break.is_none()
    }
}

/// Walks `entries` in stored order (ascending `seq`).
pub fn verify(entries: &[AuditEntry]) -> AuditVerification {
    let mut prev = GENESIS_HASH;
    let mut good = 0u64;
    for e in entries {
        let expected_seq = good + 1;
        let first_break = if e.seq != expected_seq {
            Some(ChainBreak::Missing {
                expected_seq,
                found_seq: e.seq,
            })
        } else if entry_hash(&e.prev_hash, e.seq, &e.record) != e.hash {
            Some(ChainBreak::Edited { seq: e.seq })
        } else if e.prev_hash != prev {
            Some(ChainBreak::Unlinked { seq: e.seq })
        } else {
            None
        };
        if first_break.is_some() {
            return AuditVerification {
                entries: good,
                head_hash: prev,
                first_break,
            };
        }
        prev = e.hash;
        good += 1;
    }
    AuditVerification {
        entries: good,
        head_hash: prev,
        first_break: None,
    }
}

/// The operation of an entry that carries a signature of the chain head by the identity key.
pub const HEAD_OPERATION: &str = "sign_audit_head";
const HEAD_DOMAIN: &[u8] = b"sbtc-hsm-signer/audit-head/v1";

/// The digest the identity key signs for head `seq:hash`.
pub fn head_digest(seq: u64, hash: &[u8; 32]) -> [u8; 32] {
    Sha256::new()
        .chain_update(HEAD_DOMAIN)
        .chain_update(seq.to_be_bytes())
        .chain_update(hash)
        .finalize()
        .into()
}

/// What a head-signature entry carries in its `message`: the head it signs and the signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadSignature {
    pub seq: u64,
    pub hash: [u8; 32],
    /// r || s || v over [`head_digest`], low-S.
    pub signature: [u8; 65],
}

impl HeadSignature {
    pub const LEN: usize = 8 + 32 + 65;

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::LEN);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.hash);
        out.extend_from_slice(&self.signature);
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != Self::LEN {
            return None;
        }
        let seq = u64::from_be_bytes(bytes[..8].try_into().ok()?);
        let hash = bytes[8..40].try_into().ok()?;
        let signature = bytes[40..].try_into().ok()?;
        Some(HeadSignature {
            seq,
            hash,
            signature,
        })
    }

    /// The key that made the signature, if it is a valid signature of the head.
    pub fn signer(&self) -> Option<bitcoin::secp256k1::PublicKey> {
        let sig = sbtc_custody::RecoverableSignature::from_rsv(&self.signature).ok()?;
        let digest = head_digest(self.seq, &self.hash);
        sig.recover(&digest).ok()
    }
}

/// What checking the head signatures found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeadReport {
    /// Head signatures that verified.
    pub signed_heads: u64,
    /// The newest entry covered by a verified head signature (0: none).
    pub last_signed_seq: u64,
    /// The key every head signature recovered to (None: no head signature).
    pub signer: Option<bitcoin::secp256k1::PublicKey>,
    /// The first problem, in words for the operator.
    pub problem: Option<String>,
}

/// Checks every head-signature entry of an intact chain: each must name an entry that exists
/// with that hash, and be signed by `expected` (or, without one, by the same key throughout).
pub fn verify_heads(
    entries: &[AuditEntry],
    expected: Option<&bitcoin::secp256k1::PublicKey>,
) -> HeadReport {
    let mut report = HeadReport {
        signed_heads: 0,
        last_signed_seq: 0,
        signer: None,
        problem: None,
    };
    for e in entries
        .iter()
        .filter(|e| e.record.operation == HEAD_OPERATION)
    {
        if e.record.outcome != "ok" {
            // A head signing that failed at the HSM carries no signature.
            continue;
        }
        let fail = |why: String| Some(why);
        let Some(head) = HeadSignature::decode(&e.record.message) else {
            report.problem = fail(format!(
                "entry #{} should carry a head signature but its message is malformed",
                e.seq
            ));
            return report;
        };
        let named = usize::try_from(head.seq)
            .ok()
            .and_then(|i| i.checked_sub(1))
            .and_then(|i| entries.get(i));
        match named {
            Some(n) if n.seq == head.seq && n.hash == head.hash && head.seq < e.seq => {}
            _ => {
                report.problem = fail(format!(
                    "entry #{} signs head #{}:{} but entry #{} is not that: the log was rewritten \
                     at or before #{}",
                    e.seq,
                    head.seq,
                    hex::encode(head.hash),
                    head.seq,
                    head.seq
                ));
                return report;
            }
        }
        let Some(signer) = head.signer() else {
            report.problem = fail(format!(
                "entry #{}: the head signature does not verify",
                e.seq
            ));
            return report;
        };
        let wanted = expected.copied().or(report.signer);
        if let Some(w) = wanted {
            if w != signer {
                report.problem = fail(format!(
                    "entry #{}: head #{} is signed by {}, not by {}: the log was rewritten and \
                     re-signed with another key",
                    e.seq,
                    head.seq,
                    hex::encode(signer.serialize()),
                    hex::encode(w.serialize())
                ));
                return report;
            }
        }
        report.signer = Some(signer);
        report.signed_heads += 1;
        report.last_signed_seq = report.last_signed_seq.max(head.seq);
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: usize) -> Vec<AuditEntry> {
        let mut out: Vec<AuditEntry> = Vec::new();
        for i in 0..n {
            let r = AuditRecord::new("identity", "sign", vec![i as u8; 32], format!("test {i}"));
            let head = out.last().map(|e| (e.seq, e.hash));
            out.push(next_entry(head, &r));
        }
        out
    }

    #[test]
    fn intact_chain_verifies() {
        let c = chain(5);
        let v = verify(&c);
        assert!(v.is_intact());
        assert_eq!(v.entries, 5);
        assert_eq!(v.head_hash, c[4].hash);
    }

    #[test]
    fn edits_deletions_and_reorders_are_found() {
        let mut c = chain(5);
        c[2].record.reason = "innocent".into();
        assert_eq!(verify(&c).first_break, Some(ChainBreak::Edited { seq: 3 }));

        let mut c = chain(5);
        c.remove(1);
        assert_eq!(
            verify(&c).first_break,
            Some(ChainBreak::Missing {
                expected_seq: 2,
                found_seq: 3
            })
        );

        // Deleting a row and renumbering the rest still breaks the link.
        let mut c = chain(5);
        c.remove(1);
        for (i, e) in c.iter_mut().enumerate() {
            e.seq = i as u64 + 1;
        }
        assert!(matches!(
            verify(&c).first_break,
            Some(ChainBreak::Edited { seq: 2 })
        ));

        let mut c = chain(5);
        c.swap(1, 2);
        assert!(!verify(&c).is_intact());
    }

    fn sign_head(c: &mut Vec<AuditEntry>, sk: &bitcoin::secp256k1::SecretKey) {
        let last = c.last().unwrap();
        let (seq, hash) = (last.seq, last.hash);
        let digest = head_digest(seq, &hash);
        let msg = bitcoin::secp256k1::Message::from_digest(digest);
        let (id, rs) = bitcoin::secp256k1::SECP256K1
            .sign_ecdsa_recoverable(&msg, sk)
            .serialize_compact();
        let mut signature = [0u8; 65];
        signature[..64].copy_from_slice(&rs);
        signature[64] = id.to_i32() as u8;
        let r = AuditRecord::new(
            "identity",
            HEAD_OPERATION,
            HeadSignature {
                seq,
                hash,
                signature,
            }
            .encode(),
            "end of round",
        )
        .with_outcome("ok");
        c.push(next_entry(Some((seq, hash)), &r));
    }

    #[test]
    fn head_signatures_catch_a_recomputed_chain() {
        let sk = bitcoin::secp256k1::SecretKey::from_slice(&[3u8; 32]).unwrap();
        let key = sk.public_key(bitcoin::secp256k1::SECP256K1);
        let mut c = chain(4);
        sign_head(&mut c, &sk);
        let report = verify_heads(&c, Some(&key));
        assert_eq!(report.problem, None);
        assert_eq!((report.signed_heads, report.last_signed_seq), (1, 4));
        assert_eq!(report.signer, Some(key));

        // Edit entry 2 and recompute every hash after it: the chain is intact again, the head
        // signature is not.
        let mut forged = c.clone();
        forged[1].record.reason = "innocent".into();
        let mut head = None;
        for e in forged.iter_mut() {
            let rebuilt = next_entry(head, &e.record);
            *e = rebuilt;
            head = Some((e.seq, e.hash));
        }
        assert!(verify(&forged).is_intact());
        let problem = verify_heads(&forged, None).problem.unwrap();
        assert!(problem.contains("rewritten"), "{problem}");

        // Re-signed with another key: caught when the expected key is known.
        let other = bitcoin::secp256k1::SecretKey::from_slice(&[4u8; 32]).unwrap();
        let mut resigned = forged[..4].to_vec();
        sign_head(&mut resigned, &other);
        assert_eq!(verify_heads(&resigned, None).problem, None);
        let problem = verify_heads(&resigned, Some(&key)).problem.unwrap();
        assert!(problem.contains("another key"), "{problem}");
    }

    #[test]
    fn entries_without_outcome_keep_their_v1_hash() {
        let r = AuditRecord::new("identity", "sign", vec![1; 32], "test");
        let v1 = canonical_bytes(1, &r);
        assert!(v1.starts_with(b"sbtc-hsm-signer/audit/v1"));
        let v2 = canonical_bytes(1, &r.clone().with_outcome("ok"));
        assert!(v2.starts_with(b"sbtc-hsm-signer/audit/v2"));
        assert_ne!(
            entry_hash(&GENESIS_HASH, 1, &r),
            entry_hash(&GENESIS_HASH, 1, &r.with_outcome("ok"))
        );
    }
}
