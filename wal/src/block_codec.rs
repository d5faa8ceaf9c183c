//! The value of an offset-index block: the positions of consecutive records of one stream,
//! delta-encoded (index format 3).
//!
//! Records of one stream mostly follow each other in one segment with little in between
//! (other streams' records of the same shard), so each position is stored as the gap from
//! the end of the previous one and its length — or only what changed since the previous
//! one: one to five bytes instead of the 20 of a plain `segment ‖ position ‖ length`. That
//! is that much less for fjall to journal, flush, compact and replay on open — the index
//! was most of the cost of recovery.
//!
//! Layout: `count` (varint), then per position one kind byte and its fields (varints):
//! - `0` — same segment as the previous position, at or after its end: `gap`, `len`
//!   (position = previous end + gap);
//! - `1` — any other position: `segment`, `at`, `len`;
//! - `2` — a record removed by compaction: `segment`, `len` (position [`REMOVED`]);
//! - `3` — like `0` with the same `gap` and `len` as the previous position (no fields);
//! - `4` — like `0` with the same `len` as the previous position: `gap`.
//!
//! "Previous" means the last position of kind 0, 1, 3 or 4; the first one is of kind 1.
//! Kinds 3 and 4 need a previous position of kind 0, 3 or 4 (one with a gap). They are
//! the common case of a stream whose messages have one size (telemetry), interleaved with
//! other streams at a steady rhythm: one byte per record, or two or three. Index format 3;
//! format 2 (kinds 0–2) blocks decode unchanged.

use crate::error::{Error, Result};
use crate::index::{Pos, REMOVED};

const SAME_SEGMENT: u8 = 0;
const ANYWHERE: u8 = 1;
const REMOVED_RECORD: u8 = 2;
const REPEAT: u8 = 3;
const SAME_LEN: u8 = 4;

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(b: &[u8], at: &mut usize) -> Result<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*at).ok_or_else(|| Error::Index("index block ends inside a number".into()))?;
        *at += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(Error::Index("index block holds a number longer than 64 bits".into()))
}

/// Encodes a block's positions.
pub(crate) fn encode(positions: &[Pos]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + positions.len() * 5);
    put_varint(&mut out, positions.len() as u64);
    let mut prev: Option<(u64, u64)> = None; // (segment, end)
    let mut step: Option<(u64, u32)> = None; // (gap, len) of the previous position
    for p in positions {
        if p.at == REMOVED {
            out.push(REMOVED_RECORD);
            put_varint(&mut out, p.segment);
            put_varint(&mut out, u64::from(p.len));
            continue;
        }
        match prev {
            Some((segment, end)) if segment == p.segment && p.at >= end => {
                let gap = p.at - end;
                match step {
                    Some(s) if s == (gap, p.len) => out.push(REPEAT),
                    Some((_, len)) if len == p.len => {
                        out.push(SAME_LEN);
                        put_varint(&mut out, gap);
                    }
                    _ => {
                        out.push(SAME_SEGMENT);
                        put_varint(&mut out, gap);
                        put_varint(&mut out, u64::from(p.len));
                    }
                }
                step = Some((gap, p.len));
            }
            _ => {
                out.push(ANYWHERE);
                put_varint(&mut out, p.segment);
                put_varint(&mut out, p.at);
                put_varint(&mut out, u64::from(p.len));
                step = None;
            }
        }
        prev = Some((p.segment, p.at.saturating_add(u64::from(p.len))));
    }
    out
}

/// The number of positions in an encoded block, without decoding them.
pub(crate) fn count(b: &[u8]) -> Result<u64> {
    get_varint(b, &mut 0)
}

/// Decodes a block; a malformed one is an index error (the index is rebuilt from the log).
pub(crate) fn decode(b: &[u8]) -> Result<Vec<Pos>> {
    decode_prefix(b, usize::MAX)
}

/// Decodes the first `limit` positions of a block (all if it holds fewer): a lookup of one
/// offset need not decode the positions after it.
pub(crate) fn decode_prefix(b: &[u8], limit: usize) -> Result<Vec<Pos>> {
    let mut at = 0;
    let n = get_varint(b, &mut at)?;
    // Every position takes at least one byte: a count beyond that is damage, not a reason
    // to reserve memory.
    if n > b.len() as u64 {
        return Err(Error::Index(format!("index block claims {n} positions in {} bytes", b.len())));
    }
    let n = n as usize;
    let wanted = n.min(limit);
    let mut out = Vec::with_capacity(wanted);
    let mut prev: Option<(u64, u64)> = None;
    let mut step: Option<(u64, u32)> = None;
    let len32 = |v: u64| u32::try_from(v).map_err(|_| Error::Index(format!("record length {v} in an index block")));
    for _ in 0..wanted {
        let kind = *b.get(at).ok_or_else(|| Error::Index("index block ends early".into()))?;
        at += 1;
        let pos = match kind {
            SAME_SEGMENT | REPEAT | SAME_LEN => {
                let (segment, end) = prev.ok_or_else(|| Error::Index("index block starts with a delta".into()))?;
                let (gap, len) = match (kind, step) {
                    (SAME_SEGMENT, _) => (get_varint(b, &mut at)?, len32(get_varint(b, &mut at)?)?),
                    (REPEAT, Some(s)) => s,
                    (SAME_LEN, Some((_, len))) => (get_varint(b, &mut at)?, len),
                    _ => return Err(Error::Index(format!("position kind {kind} follows no gap"))),
                };
                step = Some((gap, len));
                let p = end.checked_add(gap).ok_or_else(|| Error::Index("index position overflows".into()))?;
                Pos { segment, at: p, len }
            }
            ANYWHERE => {
                let segment = get_varint(b, &mut at)?;
                let p = get_varint(b, &mut at)?;
                let len = len32(get_varint(b, &mut at)?)?;
                step = None;
                Pos { segment, at: p, len }
            }
            REMOVED_RECORD => {
                let segment = get_varint(b, &mut at)?;
                let len = len32(get_varint(b, &mut at)?)?;
                out.push(Pos { segment, at: REMOVED, len });
                continue;
            }
            k => return Err(Error::Index(format!("unknown position kind {k} in an index block"))),
        };
        prev = Some((pos.segment, pos.at.saturating_add(u64::from(pos.len))));
        out.push(pos);
    }
    if wanted == n && at != b.len() {
        return Err(Error::Index(format!("index block has {} bytes after its positions", b.len() - at)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn typical_block_is_small_and_round_trips() {
        // 64 records of 176 bytes with two other records' worth of bytes between each.
        let positions: Vec<Pos> = (0..64).map(|i| Pos { segment: 1_000_000, at: 32 + i * 3 * 176, len: 176 }).collect();
        let enc = encode(&positions);
        assert!(enc.len() <= 64 + 16, "one byte per steady position: {} bytes", enc.len());
        assert_eq!(decode(&enc).unwrap(), positions);
        assert_eq!(count(&enc).unwrap(), 64);
    }

    #[test]
    fn segment_changes_removed_records_and_backward_positions() {
        let positions = vec![
            Pos { segment: 5, at: 100, len: 50 },
            Pos { segment: 5, at: REMOVED, len: 0 },
            Pos { segment: 5, at: 150, len: 10 },
            Pos { segment: 9, at: 32, len: 70 },
            Pos { segment: 9, at: 20, len: 1 }, // before the previous end (after compaction)
            Pos { segment: 9, at: 21, len: u32::MAX },
        ];
        assert_eq!(decode(&encode(&positions)).unwrap(), positions);
        assert_eq!(decode(&encode(&[])).unwrap(), vec![]);
    }

    #[test]
    fn every_kind_round_trips_and_steady_streams_take_a_byte_a_record() {
        let p = |segment, at, len| Pos { segment, at, len };
        let positions = vec![
            p(5, 100, 50),
            p(5, 160, 50), // kind 0: gap 10, len 50
            p(5, 220, 50), // kind 3: the same again
            p(5, 300, 50), // kind 4: same len, gap 30
            p(5, REMOVED, 0),
            p(5, 380, 50), // kind 3: the removed record does not break the rhythm
            p(5, 440, 7),  // kind 0: new len
            p(6, 32, 7),   // kind 1: new segment
            p(6, 39, 7),   // kind 0: no step after a kind 1
            p(6, 46, 7),   // kind 3
        ];
        let enc = encode(&positions);
        let kinds: Vec<u8> = {
            // Walk the encoding to check the kinds chosen, not only the round trip.
            let mut at = 0;
            let n = get_varint(&enc, &mut at).unwrap();
            let mut kinds = Vec::new();
            for _ in 0..n {
                let k = enc[at];
                at += 1;
                let fields = match k {
                    ANYWHERE => 3,
                    SAME_SEGMENT | REMOVED_RECORD => 2,
                    SAME_LEN => 1,
                    _ => 0,
                };
                for _ in 0..fields {
                    get_varint(&enc, &mut at).unwrap();
                }
                kinds.push(k);
            }
            kinds
        };
        assert_eq!(kinds, vec![1, 0, 3, 4, 2, 3, 0, 1, 0, 3]);
        assert_eq!(decode(&enc).unwrap(), positions);
    }

    #[test]
    fn a_prefix_is_the_start_of_the_whole() {
        let positions: Vec<Pos> = (0..50).map(|i| Pos { segment: 1 + i / 20, at: 32 + i * 100, len: 90 }).collect();
        let enc = encode(&positions);
        for limit in [0, 1, 7, 20, 21, 49, 50, 51, usize::MAX] {
            assert_eq!(decode_prefix(&enc, limit).unwrap(), positions[..limit.min(50)]);
        }
    }

    #[test]
    fn damage_is_an_error() {
        let enc = encode(&[Pos { segment: 5, at: 100, len: 50 }, Pos { segment: 5, at: 200, len: 50 }]);
        for cut in 0..enc.len() {
            assert!(decode(&enc[..cut]).is_err(), "cut at {cut}");
        }
        let mut extra = enc.clone();
        extra.push(0);
        assert!(decode(&extra).is_err(), "trailing bytes");
        assert!(decode(&[1, 0, 1, 1]).is_err(), "a first position relative to nothing");
        assert!(decode(&[1, 7, 0, 0, 0]).is_err(), "unknown kind");
        assert!(decode(&[2, 1, 0, 0, 1, 3]).is_err(), "a repeat with no gap to repeat");
        assert!(decode(&[2, 1, 0, 0, 1, 4, 0]).is_err(), "a same-length delta with no gap before");
        assert!(decode(&[0xff; 12]).is_err(), "overlong number");
        assert!(decode(&[0xff, 0xff, 0xff, 0x0f]).is_err(), "a count the bytes cannot hold");
    }

    fn pos() -> impl Strategy<Value = Pos> {
        (0u64..4, prop_oneof![Just(REMOVED), 0u64..10_000, any::<u64>()], any::<u32>())
            .prop_map(|(segment, at, len)| Pos { segment, at, len })
    }

    proptest! {
        #[test]
        fn any_positions_round_trip(ps in proptest::collection::vec(pos(), 0..80)) {
            let enc = encode(&ps);
            prop_assert_eq!(count(&enc).unwrap(), ps.len() as u64);
            prop_assert_eq!(decode(&enc).unwrap(), ps);
        }

        #[test]
        fn any_bytes_decode_or_fail_cleanly(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&b);
        }
    }
}
