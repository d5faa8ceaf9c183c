//! The on-disk byte layout: segment headers and records, their encoding, decoding and
//! checksums. Nothing here does I/O; `wal/FORMAT.md` is the prose version of this file.
//!
//! Records are framed one by one (not in batch frames) so that any record boundary is a
//! valid place to start reading, the sparse index can point at single records, and a torn
//! write loses only the records it actually tore. The price is 12 bytes of frame per record.

use bytes::{Buf, Bytes};

/// Magic bytes at the start of every segment. The `\r\n` catches text-mode mangling.
pub const SEGMENT_MAGIC: [u8; 8] = *b"PMQWAL\r\n";
/// The segment format version this crate writes. It reads this one and
/// [`OLDEST_FORMAT_VERSION`] onwards.
pub const FORMAT_VERSION: u16 = 2;
/// The oldest segment format version this crate reads. Version 1 has no
/// [`RECORD_FLAG_AFTER_SYNC`]; its records are read the same way.
pub const OLDEST_FORMAT_VERSION: u16 = 1;
/// Size of the segment header in bytes.
pub const SEGMENT_HEADER_LEN: usize = 32;
/// Size of the fixed part of a record: frame (crc + length) and record header.
pub const RECORD_HEADER_LEN: usize = 48;
/// Bytes of the frame before the checksummed body (crc u64 + body length u32).
pub const FRAME_LEN: usize = 12;
/// Smallest possible body length (a record with empty key and payload).
pub const MIN_BODY_LEN: u32 = (RECORD_HEADER_LEN - FRAME_LEN) as u32;

/// Segment flag: the body after the header is a sequence of zstd blocks.
pub const SEGMENT_FLAG_COMPRESSED: u16 = 1;
/// Record flag: the record carries a key (possibly empty) used by key compaction.
pub const RECORD_FLAG_KEYED: u16 = 1;
/// Record flag (format version 2): every byte of the segment before this record was
/// durable when it was written. Set on the first record of a commit that follows a sync.
/// Recovery uses it to tell a commit torn by a power cut — whose sectors may reach the disk
/// in any order, leaving bad bytes with valid records after them — from damage to data
/// that was synced (see `FORMAT.md`, "Recovery rules").
pub const RECORD_FLAG_AFTER_SYNC: u16 = 2;
/// Every record flag this crate knows.
const RECORD_FLAGS: u16 = RECORD_FLAG_KEYED | RECORD_FLAG_AFTER_SYNC;

/// Whether segments of format `version` mark commits with [`RECORD_FLAG_AFTER_SYNC`] (so
/// that recovery may tell a torn commit from damage to synced data by it).
pub fn marks_syncs(version: u16) -> bool {
    version >= 2
}

/// CRC-64/XZ (ECMA-182 polynomial, reflected) as computed by `crc64fast`.
pub fn crc64(parts: &[&[u8]]) -> u64 {
    let mut d = crc64fast::Digest::new();
    for p in parts {
        d.write(p);
    }
    d.sum64()
}

/// The fixed header at the start of a segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Format version, [`FORMAT_VERSION`].
    pub version: u16,
    /// Segment flags ([`SEGMENT_FLAG_COMPRESSED`]).
    pub flags: u16,
    /// The shard this segment belongs to.
    pub shard: u32,
    /// The LSN of the first record in this segment.
    pub first_lsn: u64,
}

/// Why a segment header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Fewer than [`SEGMENT_HEADER_LEN`] bytes.
    #[error("segment header is truncated ({0} bytes)")]
    Truncated(usize),
    /// Wrong magic: not a segment file.
    #[error("bad magic: not a promptmq-wal segment")]
    BadMagic,
    /// Checksum mismatch.
    #[error("segment header checksum mismatch")]
    BadChecksum,
    /// Written by a format version this build cannot read.
    #[error(
        "segment format version {0} is not supported (this build reads versions {OLDEST_FORMAT_VERSION} to {FORMAT_VERSION}); open the log with a newer build"
    )]
    UnsupportedVersion(u16),
}

impl SegmentHeader {
    /// Encodes the header into its 32 bytes.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut b = [0u8; SEGMENT_HEADER_LEN];
        b[0..8].copy_from_slice(&SEGMENT_MAGIC);
        b[8..10].copy_from_slice(&self.version.to_le_bytes());
        b[10..12].copy_from_slice(&self.flags.to_le_bytes());
        b[12..16].copy_from_slice(&self.shard.to_le_bytes());
        b[16..24].copy_from_slice(&self.first_lsn.to_le_bytes());
        let crc = crc64(&[&b[0..24]]);
        b[24..32].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and checks a header.
    pub fn decode(b: &[u8]) -> Result<SegmentHeader, HeaderError> {
        if b.len() < SEGMENT_HEADER_LEN {
            return Err(HeaderError::Truncated(b.len()));
        }
        if b[0..8] != SEGMENT_MAGIC {
            return Err(HeaderError::BadMagic);
        }
        let stored = u64::from_le_bytes(b[24..32].try_into().unwrap_or_default());
        if stored != crc64(&[&b[0..24]]) {
            return Err(HeaderError::BadChecksum);
        }
        let version = u16::from_le_bytes([b[8], b[9]]);
        if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(HeaderError::UnsupportedVersion(version));
        }
        Ok(SegmentHeader {
            version,
            flags: u16::from_le_bytes([b[10], b[11]]),
            shard: u32::from_le_bytes([b[12], b[13], b[14], b[15]]),
            first_lsn: u64::from_le_bytes(b[16..24].try_into().unwrap_or_default()),
        })
    }
}

/// The fixed fields of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordMeta {
    /// Log sequence number: dense and increasing within a shard.
    pub lsn: u64,
    /// Stream id (from the catalogue).
    pub stream: u64,
    /// Offset within the stream: dense and increasing within a stream.
    pub offset: u64,
    /// Append time, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// Record flags ([`RECORD_FLAG_KEYED`]).
    pub flags: u16,
}

/// A decoded record. `key` and `payload` are slices of the buffer it was decoded from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRecord {
    /// Fixed fields.
    pub meta: RecordMeta,
    /// Key, if the record is keyed.
    pub key: Option<Bytes>,
    /// Payload.
    pub payload: Bytes,
}

/// Total encoded size of a record with this key and payload length.
pub fn encoded_len(key_len: usize, payload_len: usize) -> usize {
    RECORD_HEADER_LEN + key_len + payload_len
}

/// Appends one encoded record to `out`. The caller has checked `key.len() <= u16::MAX` and
/// that the total fits in a `u32`.
pub fn encode_record(out: &mut Vec<u8>, meta: &RecordMeta, key: Option<&[u8]>, payload: &[u8]) {
    let key_bytes = key.unwrap_or(&[]);
    let flags = if key.is_some() { meta.flags | RECORD_FLAG_KEYED } else { meta.flags & !RECORD_FLAG_KEYED };
    let body_len = (RECORD_HEADER_LEN - FRAME_LEN + key_bytes.len() + payload.len()) as u32;
    let start = out.len();
    out.extend_from_slice(&[0u8; 8]); // crc, filled below
    out.extend_from_slice(&body_len.to_le_bytes());
    out.extend_from_slice(&meta.lsn.to_le_bytes());
    out.extend_from_slice(&meta.stream.to_le_bytes());
    out.extend_from_slice(&meta.offset.to_le_bytes());
    out.extend_from_slice(&meta.timestamp_ms.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&(key_bytes.len() as u16).to_le_bytes());
    out.extend_from_slice(key_bytes);
    out.extend_from_slice(payload);
    let crc = crc64(&[&out[start + 8..]]);
    out[start..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The outcome of decoding at one position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A valid record and the total number of bytes it occupies.
    Record(RawRecord, usize),
    /// The buffer ends inside the record: more bytes are needed (or, at the end of a
    /// file, the tail is torn).
    Incomplete,
    /// The bytes here are not a valid record.
    Corrupt(&'static str),
}

/// Decodes the record that starts at `buf[0]`. `max_body` bounds the length field so a
/// corrupt length cannot make the reader wait for (or allocate) gigabytes.
pub fn decode_record(buf: &Bytes, max_body: u32) -> Decoded {
    match decode_view(buf, max_body) {
        DecodedView::Record(v, n) => {
            let key = v.key.map(|k| buf.slice_ref(k));
            let payload = if v.payload.is_empty() { Bytes::new() } else { buf.slice_ref(v.payload) };
            Decoded::Record(RawRecord { meta: v.meta, key, payload }, n)
        }
        DecodedView::Incomplete => Decoded::Incomplete,
        DecodedView::Corrupt(why) => Decoded::Corrupt(why),
    }
}

/// A decoded record that borrows its key and payload from the buffer (no reference
/// counting: the recovery scan uses it for speed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordView<'a> {
    /// Fixed fields.
    pub meta: RecordMeta,
    /// Key, if the record is keyed.
    pub key: Option<&'a [u8]>,
    /// Payload.
    pub payload: &'a [u8],
}

impl RecordView<'_> {
    /// Encoded size of the record.
    pub fn encoded_len(&self) -> usize {
        encoded_len(self.key.map_or(0, |k| k.len()), self.payload.len())
    }
}

/// [`Decoded`], borrowing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodedView<'a> {
    /// A valid record and the bytes it occupies.
    Record(RecordView<'a>, usize),
    /// More bytes are needed.
    Incomplete,
    /// Not a valid record.
    Corrupt(&'static str),
}

/// Decodes the record that starts at `buf[0]` without copying or reference counting.
pub fn decode_view(buf: &[u8], max_body: u32) -> DecodedView<'_> {
    if buf.len() < FRAME_LEN {
        return DecodedView::Incomplete;
    }
    let mut hdr = &buf[..FRAME_LEN];
    let stored_crc = hdr.get_u64_le();
    let body_len = hdr.get_u32_le();
    if body_len < MIN_BODY_LEN {
        return DecodedView::Corrupt("record length below the minimum");
    }
    if body_len > max_body {
        return DecodedView::Corrupt("record length above the maximum");
    }
    let total = FRAME_LEN + body_len as usize;
    if buf.len() < total {
        return DecodedView::Incomplete;
    }
    if crc64(&[&buf[8..total]]) != stored_crc {
        return DecodedView::Corrupt("record checksum mismatch");
    }
    let mut b = &buf[FRAME_LEN..total];
    let meta = RecordMeta {
        lsn: b.get_u64_le(),
        stream: b.get_u64_le(),
        offset: b.get_u64_le(),
        timestamp_ms: b.get_u64_le(),
        flags: b.get_u16_le(),
    };
    let key_len = b.get_u16_le() as usize;
    if RECORD_HEADER_LEN + key_len > total {
        return DecodedView::Corrupt("record key length exceeds the record");
    }
    if meta.flags & !RECORD_FLAGS != 0 {
        return DecodedView::Corrupt("reserved record flag set");
    }
    let keyed = meta.flags & RECORD_FLAG_KEYED != 0;
    if !keyed && key_len != 0 {
        return DecodedView::Corrupt("unkeyed record with a key");
    }
    let key = keyed.then(|| &buf[RECORD_HEADER_LEN..RECORD_HEADER_LEN + key_len]);
    let payload = &buf[RECORD_HEADER_LEN + key_len..total];
    DecodedView::Record(RecordView { meta, key, payload }, total)
}

/// Reads the LSN field of a record frame without checking it, for the resync scan.
pub(crate) fn peek_lsn(buf: &[u8]) -> Option<u64> {
    buf.get(FRAME_LEN..FRAME_LEN + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn meta(lsn: u64) -> RecordMeta {
        RecordMeta { lsn, stream: 7, offset: 3, timestamp_ms: 1_700_000_000_000, flags: 0 }
    }

    #[test]
    fn header_round_trip_and_checks() {
        let h = SegmentHeader { version: FORMAT_VERSION, flags: 0, shard: 3, first_lsn: 42 };
        let b = h.encode();
        assert_eq!(SegmentHeader::decode(&b), Ok(h));
        let mut bad = b;
        bad[17] ^= 1;
        assert_eq!(SegmentHeader::decode(&bad), Err(HeaderError::BadChecksum));
        bad = b;
        bad[0] = b'X';
        assert_eq!(SegmentHeader::decode(&bad), Err(HeaderError::BadMagic));
        assert_eq!(SegmentHeader::decode(&b[..10]), Err(HeaderError::Truncated(10)));
    }

    #[test]
    fn both_format_versions_are_read_and_later_ones_refused() {
        for version in [OLDEST_FORMAT_VERSION, FORMAT_VERSION] {
            let h = SegmentHeader { version, flags: 0, shard: 0, first_lsn: 1 };
            assert_eq!(SegmentHeader::decode(&h.encode()), Ok(h));
        }
        let later = SegmentHeader { version: FORMAT_VERSION + 1, flags: 0, shard: 0, first_lsn: 1 };
        assert_eq!(SegmentHeader::decode(&later.encode()), Err(HeaderError::UnsupportedVersion(FORMAT_VERSION + 1)));
    }

    #[test]
    fn the_after_sync_flag_is_kept_and_unknown_flags_refused() {
        let mut out = Vec::new();
        let m = RecordMeta { flags: RECORD_FLAG_AFTER_SYNC, ..meta(5) };
        encode_record(&mut out, &m, Some(b"k"), b"v");
        match decode_view(&out, 1 << 20) {
            DecodedView::Record(r, _) => assert_eq!(r.meta.flags, RECORD_FLAG_AFTER_SYNC | RECORD_FLAG_KEYED),
            other => panic!("unexpected {other:?}"),
        }
        let mut out = Vec::new();
        encode_record(&mut out, &RecordMeta { flags: 4, ..meta(5) }, None, b"v");
        assert_eq!(decode_view(&out, 1 << 20), DecodedView::Corrupt("reserved record flag set"));
    }

    #[test]
    fn record_round_trip() {
        let mut out = Vec::new();
        encode_record(&mut out, &meta(1), Some(b"k"), b"hello");
        assert_eq!(out.len(), encoded_len(1, 5));
        let buf = Bytes::from(out);
        match decode_record(&buf, 1 << 20) {
            Decoded::Record(r, n) => {
                assert_eq!(n, buf.len());
                assert_eq!(r.meta.lsn, 1);
                assert_eq!(r.meta.flags & RECORD_FLAG_KEYED, RECORD_FLAG_KEYED);
                assert_eq!(r.key.as_deref(), Some(&b"k"[..]));
                assert_eq!(&r.payload[..], b"hello");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn truncated_record_is_incomplete_and_flipped_bit_is_corrupt() {
        let mut out = Vec::new();
        encode_record(&mut out, &meta(9), None, b"payload");
        let full = Bytes::from(out);
        for cut in 0..full.len() {
            assert_eq!(decode_record(&full.slice(..cut), 1 << 20), Decoded::Incomplete, "cut at {cut}");
        }
        for bit in 0..full.len() * 8 {
            let mut v = full.to_vec();
            v[bit / 8] ^= 1 << (bit % 8);
            let r = decode_record(&Bytes::from(v), 1 << 20);
            // A flipped length bit may also make the record look incomplete; never valid.
            assert!(matches!(r, Decoded::Corrupt(_) | Decoded::Incomplete), "bit {bit}: {r:?}");
        }
    }

    proptest! {
        #[test]
        fn any_record_round_trips(lsn: u64, stream: u64, offset: u64, ts: u64,
                                  key in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
                                  payload in proptest::collection::vec(any::<u8>(), 0..512)) {
            let m = RecordMeta { lsn, stream, offset, timestamp_ms: ts, flags: 0 };
            let mut out = Vec::new();
            encode_record(&mut out, &m, key.as_deref(), &payload);
            let buf = Bytes::from(out);
            match decode_record(&buf, u32::MAX) {
                Decoded::Record(r, n) => {
                    prop_assert_eq!(n, buf.len());
                    prop_assert_eq!(r.meta.lsn, lsn);
                    prop_assert_eq!(r.meta.stream, stream);
                    prop_assert_eq!(r.meta.offset, offset);
                    prop_assert_eq!(r.meta.timestamp_ms, ts);
                    prop_assert_eq!(r.key.map(|k| k.to_vec()), key);
                    prop_assert_eq!(r.payload.to_vec(), payload);
                }
                other => prop_assert!(false, "decode failed: {:?}", other),
            }
        }

        #[test]
        fn decoder_never_panics(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_record(&Bytes::from(data), 1 << 16);
        }
    }
}
