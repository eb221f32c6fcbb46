//! The append-only audit log of custody operations that used a private key. Each entry stores
//! `hash = SHA-256(prev_hash || canonical bytes of the entry)`, so editing, deleting or reordering
//! a row breaks the chain at that row, and `sbtc-hsm-signer audit verify` names it.
//!
//! Limit: deleting the newest rows leaves a valid, shorter chain. `audit verify` prints the head
//! as `SEQ:HASH`; kept elsewhere and passed back with `--expect-head`, it catches that too.

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
        }
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

/// The bytes hashed for an entry: every field, length-prefixed, in a fixed order.
pub fn canonical_bytes(seq: u64, record: &AuditRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + record.message.len());
    out.extend_from_slice(b"sbtc-hsm-signer/audit/v1");
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&record.entry_id);
    out.extend_from_slice(&micros(record.at).to_be_bytes());
    put_bytes(&mut out, record.key_label.as_bytes());
    put_bytes(&mut out, record.operation.as_bytes());
    put_bytes(&mut out, &record.message);
    put_bytes(&mut out, record.reason.as_bytes());
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
}
