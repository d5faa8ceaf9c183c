//! The properties the WAL fuzz targets check. Shared by the cargo-fuzz targets and by the
//! stable test that replays their corpora (`wal/tests/fuzz_corpus.rs`), so CI exercises
//! exactly what the fuzzer does.

use bytes::Bytes;
use promptmq_wal::format::{decode_record, encode_record, Decoded};

/// Any bytes decode to a record, "incomplete" or "corrupt", never a panic; a decoded record
/// re-encodes to exactly the bytes it came from. Returns whether a record decoded.
pub fn record_decoder(data: &[u8]) -> bool {
    let buf = Bytes::copy_from_slice(data);
    match decode_record(&buf, 1 << 20) {
        Decoded::Record(r, n) => {
            assert!(n <= data.len());
            let mut again = Vec::new();
            encode_record(&mut again, &r.meta, r.key.as_deref(), &r.payload);
            assert_eq!(&again[..], &data[..n], "re-encoding differs");
            true
        }
        Decoded::Incomplete | Decoded::Corrupt(_) => false,
    }
}

/// The segment reader never panics; valid records come out in strictly increasing LSN
/// order; bad ranges lie within the image. Returns the number of valid records.
///
/// A format 1 image is also read as format 2 (its header rewritten): there damage that no
/// later record proves synced is a torn tail, so the records must be a prefix of those of
/// format 1.
pub fn segment_reader(data: &[u8]) -> usize {
    let Some(records) = read_segment(data) else { return 0 };
    if let Ok(h) = promptmq_wal::format::SegmentHeader::decode(data) {
        if h.version == promptmq_wal::format::OLDEST_FORMAT_VERSION {
            let mut v2 = data.to_vec();
            let h2 = promptmq_wal::format::SegmentHeader { version: promptmq_wal::format::FORMAT_VERSION, ..h };
            v2[..promptmq_wal::format::SEGMENT_HEADER_LEN].copy_from_slice(&h2.encode());
            let tail_ruled = read_segment(&v2).expect("the same records under a newer header");
            assert!(
                records.starts_with(&tail_ruled),
                "the torn-tail rule may only cut records off, never add or change any"
            );
        }
    }
    records.len()
}

/// The records of a segment image, with the checks of [`segment_reader`].
fn read_segment(data: &[u8]) -> Option<Vec<(u64, u64, u64)>> {
    let check = promptmq_wal::tools::check_segment_bytes(data).ok()?;
    assert!(check.records.windows(2).all(|w| w[0].0 < w[1].0), "LSNs not increasing");
    assert!(check.valid_end as usize <= data.len());
    for b in &check.bad {
        assert!(b.start < b.end && b.end as usize <= data.len(), "bad range {b:?} outside the image");
    }
    Some(check.records)
}

/// Any bytes decode to index-block positions or an error, never a panic; decoded positions
/// survive encoding again. Returns the number of positions (0 if it does not decode).
pub fn index_block(data: &[u8]) -> usize {
    promptmq_wal::tools::check_index_block(data).unwrap_or(0)
}
