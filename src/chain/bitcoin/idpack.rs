//! idpack: the compact encoding of withdrawal request ids a sweep carries in its OP_RETURN
//! (CHAIN.md section 2). An OP_RETURN holds at most 80 bytes, so a sweep can only name the
//! withdrawals it pays if the ids pack tightly: ids are handed out in order on Stacks, so the
//! ids of one sweep are mostly dense runs, and a bitmap costs one bit per id.
//!
//! Format: a sequence of segments, nothing else. Each segment is
//! `LEB128 offset ‖ LEB128 bitmap length in bytes ‖ bitmap`, where bit `i` of the bitmap
//! (byte `i / 8`, least significant bit first) stands for the id `start + i`. The first
//! segment's offset is its start; a later segment's offset is the gap after the previous
//! segment's last id (`start = previous last + 1 + offset`). No ids, no bytes.
//!
//! [`decode`] accepts only what [`encode`] could have written in shape (minimal LEB128, a
//! segment starts with an id and ends with a non-empty byte), so one set of ids cannot hide in
//! many encodings of the same segments.

/// Why bytes are not an idpack. `at` is the byte offset where the problem starts.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdPackError {
    #[error(
        "idpack ends inside a segment at byte {at} (expected {expected}): the OP_RETURN was \
         truncated or carries trailing bytes that are not a segment; it was not written by a signer"
    )]
    Truncated { at: usize, expected: &'static str },

    #[error(
        "idpack has a non-minimal LEB128 number at byte {at} (a trailing 0x00 group): a \
         signer writes every number in its shortest form"
    )]
    NonMinimalLeb128 { at: usize },

    #[error("idpack has a LEB128 number at byte {at} that does not fit in 64 bits")]
    Leb128Overflow { at: usize },

    #[error(
        "idpack segment at byte {at} has a bitmap of length 0: a segment names at least one id"
    )]
    ZeroLengthBitmap { at: usize },

    #[error(
        "idpack segment at byte {at} does not name its own start (bit 0 of its bitmap is \
         clear): a signer starts every segment at an id"
    )]
    StartNotSet { at: usize },

    #[error(
        "idpack segment at byte {at} ends with an empty bitmap byte: a signer never writes \
         bytes that name no id"
    )]
    EmptyTrailingByte { at: usize },

    #[error("idpack segment at byte {at} names an id above u64::MAX")]
    IdOverflow { at: usize },
}

/// Encodes a set of ids (the slice is copied, sorted and deduplicated; order and repeats in
/// `ids` do not matter). Segments are chosen greedily in id order: a gap is bridged with zero
/// bits while that costs no more bytes than closing the segment and opening a new one.
pub fn encode(ids: &[u64]) -> Vec<u8> {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let Some((&first, rest)) = ids.split_first() else {
        return Vec::new();
    };
    // Segments as (start, last, members); the bitmap is written once a segment closes.
    let mut out = Vec::new();
    let mut previous_last: Option<u64> = None;
    let mut start = first;
    let mut members = vec![first];
    for &id in rest {
        let last = *members.last().expect("a segment has at least its start");
        let grown = segment_bytes(start, id);
        let now = segment_bytes(start, last);
        let extend_cost = (grown - now) + (leb128_len(grown) as u64 - leb128_len(now) as u64);
        let new_cost = leb128_len(id - last - 1) as u64 + leb128_len(1) as u64 + 1;
        if extend_cost <= new_cost {
            members.push(id);
        } else {
            write_segment(&mut out, previous_last, start, &members);
            previous_last = Some(last);
            start = id;
            members = vec![id];
        }
    }
    write_segment(&mut out, previous_last, start, &members);
    out
}

/// Decodes an idpack into its ids, ascending and unique. Refuses anything [`encode`] would not
/// write in shape; see [`IdPackError`].
pub fn decode(bytes: &[u8]) -> Result<Vec<u64>, IdPackError> {
    let mut ids = Vec::new();
    let mut at = 0;
    let mut previous_last: Option<u64> = None;
    while at < bytes.len() {
        let segment_at = at;
        let offset = read_leb128(bytes, &mut at, "a segment offset")?;
        let start = match previous_last {
            None => offset,
            Some(last) => last
                .checked_add(1)
                .and_then(|s| s.checked_add(offset))
                .ok_or(IdPackError::IdOverflow { at: segment_at })?,
        };
        let len_at = at;
        let len = read_leb128(bytes, &mut at, "a bitmap length")?;
        if len == 0 {
            return Err(IdPackError::ZeroLengthBitmap { at: segment_at });
        }
        let remaining = (bytes.len() - at) as u64;
        if len > remaining {
            return Err(IdPackError::Truncated {
                at: len_at,
                expected: "as many bitmap bytes as the segment's length says",
            });
        }
        let bitmap = &bytes[at..at + len as usize];
        at += len as usize;
        if bitmap[0] & 1 == 0 {
            return Err(IdPackError::StartNotSet { at: segment_at });
        }
        if bitmap[bitmap.len() - 1] == 0 {
            return Err(IdPackError::EmptyTrailingByte { at: segment_at });
        }
        for (byte_index, &byte) in bitmap.iter().enumerate() {
            for bit in 0..8u64 {
                if byte & (1 << bit) == 0 {
                    continue;
                }
                let id = (byte_index as u64)
                    .checked_mul(8)
                    .and_then(|i| i.checked_add(bit))
                    .and_then(|i| start.checked_add(i))
                    .ok_or(IdPackError::IdOverflow { at: segment_at })?;
                ids.push(id);
                previous_last = Some(id);
            }
        }
    }
    Ok(ids)
}

/// Bytes of the bitmap of a segment from `start` to `last` (inclusive); computed from the span
/// so that a segment reaching `u64::MAX` does not overflow.
fn segment_bytes(start: u64, last: u64) -> u64 {
    (last - start) / 8 + 1
}

fn write_segment(out: &mut Vec<u8>, previous_last: Option<u64>, start: u64, members: &[u64]) {
    let offset = match previous_last {
        None => start,
        Some(last) => start - last - 1,
    };
    let last = *members.last().expect("a segment has at least its start");
    let len = segment_bytes(start, last);
    write_leb128(out, offset);
    write_leb128(out, len);
    let at = out.len();
    out.resize(at + len as usize, 0);
    for &id in members {
        let i = id - start;
        out[at + (i / 8) as usize] |= 1 << (i % 8);
    }
}

fn leb128_len(mut value: u64) -> usize {
    let mut len = 1;
    while value >= 0x80 {
        value >>= 7;
        len += 1;
    }
    len
}

fn write_leb128(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn read_leb128(bytes: &[u8], at: &mut usize, what: &'static str) -> Result<u64, IdPackError> {
    let begin = *at;
    let mut value: u64 = 0;
    for shift in (0..).step_by(7) {
        let Some(&byte) = bytes.get(*at) else {
            return Err(IdPackError::Truncated {
                at: *at,
                expected: what,
            });
        };
        *at += 1;
        let group = u64::from(byte & 0x7f);
        // The tenth byte may carry only the 64th bit.
        if (shift == 63 && group > 1) || shift > 63 {
            return Err(IdPackError::Leb128Overflow { at: begin });
        }
        value |= group << shift;
        if byte & 0x80 == 0 {
            if group == 0 && shift > 0 {
                return Err(IdPackError::NonMinimalLeb128 { at: begin });
            }
            return Ok(value);
        }
    }
    unreachable!("the loop returns within ten bytes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng as _, SeedableRng as _};

    fn round_trip(ids: &[u64]) -> Vec<u8> {
        let bytes = encode(ids);
        let mut expected = ids.to_vec();
        expected.sort_unstable();
        expected.dedup();
        assert_eq!(decode(&bytes).unwrap(), expected, "{ids:?} -> {bytes:02x?}");
        bytes
    }

    #[test]
    fn edge_cases_round_trip() {
        assert!(round_trip(&[]).is_empty());
        assert_eq!(round_trip(&[0]), [0, 1, 1]);
        assert_eq!(round_trip(&[5]), [5, 1, 1]);
        round_trip(&[u64::MAX]);
        round_trip(&[0, u64::MAX]);
        round_trip(&[u64::MAX - 1, u64::MAX]);
        round_trip(&[u64::MAX - 9, u64::MAX - 3, u64::MAX]);
        round_trip(&[3, 3, 1, 2, 1]);
        round_trip(&(u64::MAX - 200..=u64::MAX).collect::<Vec<_>>());
    }

    #[test]
    fn dense_runs_cost_a_bit_per_id() {
        // 600 consecutive ids: one segment with a 75-byte bitmap, exactly the 77 bytes an
        // OP_RETURN leaves after the magic and version.
        let ids: Vec<u64> = (100..700).collect();
        let bytes = round_trip(&ids);
        assert_eq!(bytes.len(), 1 + 1 + 75, "{bytes:02x?}");
        // A run with holes is still one segment.
        let holes: Vec<u64> = (0..400).filter(|i| i % 3 != 0).collect();
        let bytes = round_trip(&holes);
        assert_eq!(bytes.len(), 1 + 1 + 50);
    }

    #[test]
    fn sparse_ids_get_their_own_segments() {
        // Far apart: three bytes each instead of kilobytes of zero bits.
        let ids = [10, 5_000, 90_000, 7_000_000];
        let bytes = round_trip(&ids);
        assert!(bytes.len() <= 4 * 6, "{} bytes", bytes.len());
        // Two runs separated by a gap wider than a segment header: two segments.
        let mut two_runs: Vec<u64> = (100..116).collect();
        two_runs.extend(400..416);
        let bytes = round_trip(&two_runs);
        assert_eq!(bytes.len(), (1 + 1 + 2) + (2 + 1 + 2), "{bytes:02x?}");
    }

    #[test]
    fn random_sets_round_trip() {
        let mut rng = StdRng::seed_from_u64(7);
        for round in 0..2_000 {
            let n = rng.gen_range(0..60);
            let ids: Vec<u64> = match round % 4 {
                // Anywhere in u64.
                0 => (0..n).map(|_| rng.gen()).collect(),
                // Clustered near a random base, like a sweep's withdrawals.
                1 => {
                    let base: u64 = rng.gen_range(0..1 << 40);
                    (0..n).map(|_| base + rng.gen_range(0..200)).collect()
                }
                // Near the top, to exercise overflow edges.
                2 => (0..n).map(|_| u64::MAX - rng.gen_range(0..100)).collect(),
                // Mixed gaps.
                _ => {
                    let mut id: u64 = rng.gen_range(0..1000);
                    (0..n)
                        .map(|_| {
                            id = id.saturating_add(rng.gen_range(1..[2, 9, 100, 100_000][n % 4]));
                            id
                        })
                        .collect()
                }
            };
            round_trip(&ids);
        }
    }

    #[test]
    fn decode_refuses_what_encode_never_writes() {
        use IdPackError::*;
        let refuse = |bytes: &[u8]| decode(bytes).unwrap_err();
        // A segment cut short: offset only, length only, bitmap shorter than its length.
        assert!(matches!(refuse(&[5]), Truncated { at: 1, .. }));
        assert!(matches!(refuse(&[5, 2, 1]), Truncated { at: 1, .. }));
        // Trailing garbage after a good segment is an incomplete segment.
        assert!(matches!(refuse(&[5, 1, 1, 7]), Truncated { at: 4, .. }));
        assert!(matches!(refuse(&[5, 1, 1, 0x80]), Truncated { at: 4, .. }));
        assert_eq!(refuse(&[5, 0]), ZeroLengthBitmap { at: 0 });
        assert_eq!(refuse(&[5, 0x81, 0x00, 1]), NonMinimalLeb128 { at: 1 });
        assert_eq!(refuse(&[0x80, 0x00, 1, 1]), NonMinimalLeb128 { at: 0 });
        // Eleven bytes, and ten whose last carries more than the 64th bit.
        let mut long = vec![0xff; 10];
        long.extend([0x01, 1, 1]);
        assert_eq!(refuse(&long), Leb128Overflow { at: 0 });
        let mut wide = vec![0xff; 9];
        wide.extend([0x02, 1, 1]);
        assert_eq!(refuse(&wide), Leb128Overflow { at: 0 });
        // u64::MAX itself is fine as an offset...
        let mut max = vec![0xff; 9];
        max.extend([0x01, 1, 1]);
        assert_eq!(decode(&max).unwrap(), [u64::MAX]);
        // ...but nothing may follow it, nor may a bitmap reach past it.
        let mut after = max.clone();
        after.extend([0, 1, 1]);
        assert_eq!(refuse(&after), IdOverflow { at: 12 });
        let mut past = vec![0xff; 9];
        past.extend([0x01, 1, 0b11]);
        assert_eq!(refuse(&past), IdOverflow { at: 0 });
        assert_eq!(refuse(&[5, 2, 1, 0]), EmptyTrailingByte { at: 0 });
        assert_eq!(refuse(&[5, 1, 2]), StartNotSet { at: 0 });
        // Every error says where.
        assert!(refuse(&[5, 1, 1, 7]).to_string().contains("byte 4"));
    }
}
