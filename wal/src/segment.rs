//! One segment file: its name, its header, and scanning its records.
//!
//! A segment is `<dir>/shards/<shard>/<first-lsn, 20 digits>.seg`: the header, then records
//! back to back. Only the shard writer appends to the newest segment; everything else
//! opens segments read-only.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::format::{self, DecodedView, RecordView, SegmentHeader, FRAME_LEN, MIN_BODY_LEN, SEGMENT_HEADER_LEN};

/// File name suffix of segments.
pub(crate) const SEGMENT_SUFFIX: &str = ".seg";

/// Path of the segment of `shard_dir` whose first record has `first_lsn`.
pub(crate) fn segment_path(shard_dir: &Path, first_lsn: u64) -> PathBuf {
    shard_dir.join(format!("{first_lsn:020}{SEGMENT_SUFFIX}"))
}

/// Lists the segments of a shard directory, sorted by first LSN. Files that are not
/// segments are ignored with a warning (an operator's stray file must not stop the log).
pub(crate) fn list_segments(shard_dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    let rd = std::fs::read_dir(shard_dir).map_err(|e| Error::io("listing", shard_dir, e))?;
    for entry in rd {
        let entry = entry.map_err(|e| Error::io("listing", shard_dir, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        match name.strip_suffix(SEGMENT_SUFFIX).and_then(|n| n.parse::<u64>().ok()) {
            Some(lsn) => out.push((lsn, entry.path())),
            None if name.ends_with(crate::maintenance::TMP_EXTENSION) || name.ends_with(".seg.bad") => {}
            None => {
                tracing::warn!(file = %entry.path().display(), "ignoring a file that is not a segment")
            }
        }
    }
    out.sort_unstable_by_key(|(lsn, _)| *lsn);
    Ok(out)
}

/// A damaged range found while scanning a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRange {
    /// The segment file.
    pub path: PathBuf,
    /// First bad byte.
    pub start: u64,
    /// One past the last bad byte (the next valid record, or the end of the file).
    pub end: u64,
    /// The check that failed first.
    pub reason: String,
    /// Whether the range runs to the end of the file (a torn tail).
    pub at_tail: bool,
}

/// The result of scanning one segment.
#[derive(Debug, Clone)]
pub struct SegmentScan {
    /// Byte position just after the last valid record.
    pub valid_end: u64,
    /// Number of valid records.
    pub records: u64,
    /// LSN of the last valid record, if any.
    pub last_lsn: Option<u64>,
    /// Damaged ranges, in file order.
    pub bad: Vec<BadRange>,
}

/// Reads a whole segment into memory in its logical (uncompressed) layout: a compressed
/// segment's body is decompressed, so positions are the same before and after compression.
/// Segments are bounded by `segment_bytes` (64 MiB by default), which bounds this memory.
pub(crate) fn load(path: &Path) -> Result<Bytes> {
    let mut buf = Vec::new();
    load_into(path, &mut buf)?;
    Ok(Bytes::from(buf))
}

/// [`load`] into a reused buffer (recovery scans many segments; reusing the buffer saves
/// the page faults of a fresh allocation per segment).
pub(crate) fn load_into(path: &Path, buf: &mut Vec<u8>) -> Result<()> {
    use std::io::Read;
    buf.clear();
    let mut f = File::open(path).map_err(|e| Error::io("opening", path, e))?;
    // Size the buffer once: growing it by doubling copies the segment several times.
    let len = f.metadata().map(|m| m.len() as usize).unwrap_or(0);
    buf.reserve(len + 1);
    f.read_to_end(buf).map_err(|e| Error::io("reading", path, e))?;
    if let Ok(h) = SegmentHeader::decode(buf) {
        if h.flags & format::SEGMENT_FLAG_COMPRESSED != 0 {
            // Bounded: a damaged frame must not make us allocate without limit. A segment
            // holds at most MAX_SEGMENT_BYTES plus the batch that crossed the limit.
            let limit = crate::options::MAX_SEGMENT_BYTES * 2;
            let corrupt =
                |reason: String| Error::Corrupt { path: path.into(), position: SEGMENT_HEADER_LEN as u64, reason };
            let decoder = zstd::stream::read::Decoder::new(&buf[SEGMENT_HEADER_LEN..])
                .map_err(|e| corrupt(format!("compressed segment body does not decompress: {e}")))?;
            let mut body = Vec::new();
            decoder
                .take(limit + 1)
                .read_to_end(&mut body)
                .map_err(|e| corrupt(format!("compressed segment body does not decompress: {e}")))?;
            if body.len() as u64 > limit {
                return Err(corrupt(format!("compressed segment inflates beyond {limit} bytes")));
            }
            buf.truncate(SEGMENT_HEADER_LEN);
            buf.extend_from_slice(&body);
        }
    }
    Ok(())
}

/// Decodes and checks a segment header for the expected shard and first LSN.
pub(crate) fn check_header(path: &Path, data: &[u8], shard: Option<u32>, first_lsn: u64) -> Result<SegmentHeader> {
    let h = SegmentHeader::decode(data).map_err(|e| Error::Corrupt {
        path: path.into(),
        position: 0,
        reason: e.to_string(),
    })?;
    if h.first_lsn != first_lsn || shard.is_some_and(|s| s != h.shard) {
        return Err(Error::Corrupt {
            path: path.into(),
            position: 0,
            reason: format!(
                "header says shard {} first LSN {}, but the file's place says shard {:?} first LSN {}",
                h.shard, h.first_lsn, shard, first_lsn
            ),
        });
    }
    Ok(h)
}

/// Scans every record of a segment held in `data`, calling `each(record, position)` for
/// each valid one in order. Damaged ranges are skipped by searching for the next record
/// whose checksum is valid and whose LSN continues the sequence, and are reported.
pub(crate) fn scan(
    path: &Path,
    data: &[u8],
    start: usize,
    first_lsn: u64,
    max_body: u32,
    mut each: impl FnMut(&RecordView<'_>, u64) -> Result<()>,
) -> Result<SegmentScan> {
    let len = data.len();
    let mut pos = start.max(SEGMENT_HEADER_LEN);
    let mut next_lsn = first_lsn;
    let mut scan = SegmentScan { valid_end: pos as u64, records: 0, last_lsn: None, bad: Vec::new() };
    while pos < len {
        let reason = match format::decode_view(&data[pos..], max_body) {
            DecodedView::Record(r, n) if r.meta.lsn >= next_lsn => {
                each(&r, pos as u64)?;
                next_lsn = r.meta.lsn + 1;
                scan.last_lsn = Some(r.meta.lsn);
                scan.records += 1;
                pos += n;
                scan.valid_end = pos as u64;
                continue;
            }
            DecodedView::Record(..) => "record LSN goes backwards",
            DecodedView::Incomplete => "record runs past the end of the file",
            DecodedView::Corrupt(why) => why,
        };
        match resync(data, pos + 1, next_lsn, max_body) {
            Some(next) => {
                scan.bad.push(BadRange {
                    path: path.into(),
                    start: pos as u64,
                    end: next as u64,
                    reason: reason.into(),
                    at_tail: false,
                });
                pos = next;
            }
            None => {
                scan.bad.push(BadRange {
                    path: path.into(),
                    start: pos as u64,
                    end: len as u64,
                    reason: reason.into(),
                    at_tail: true,
                });
                break;
            }
        }
    }
    Ok(scan)
}

/// Finds the next position at or after `from` where a valid record with an LSN at or
/// after `next_lsn` starts. The LSN is checked before the checksum because it is cheap and
/// rules out almost every position; each skipped record is at least `MIN_BODY_LEN + 12`
/// bytes, which bounds how far the LSN can have jumped.
fn resync(data: &[u8], from: usize, next_lsn: u64, max_body: u32) -> Option<usize> {
    let min_rec = (MIN_BODY_LEN as usize + FRAME_LEN) as u64;
    let start = from.saturating_sub(1);
    for p in from..data.len().saturating_sub(FRAME_LEN + 8) {
        let Some(lsn) = format::peek_lsn(&data[p..]) else {
            break;
        };
        let max_jump = ((p - start) as u64) / min_rec + 1;
        if lsn < next_lsn || lsn > next_lsn.saturating_add(max_jump) {
            continue;
        }
        if let DecodedView::Record(..) = format::decode_view(&data[p..], max_body) {
            return Some(p);
        }
    }
    None
}

/// A read-only handle on a segment for positional reads of single records.
#[derive(Debug)]
pub(crate) struct SegmentReader {
    file: File,
    path: PathBuf,
    /// The decompressed contents of a compressed segment.
    logical: Option<Bytes>,
}

impl SegmentReader {
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io("opening", path, e))?;
        let mut head = [0u8; SEGMENT_HEADER_LEN];
        let compressed = file.read_exact_at(&mut head, 0).is_ok()
            && SegmentHeader::decode(&head).is_ok_and(|h| h.flags & format::SEGMENT_FLAG_COMPRESSED != 0);
        let logical = if compressed { Some(load(path)?) } else { None };
        Ok(SegmentReader { file, path: path.into(), logical })
    }

    /// Whether this reader holds a decompressed segment in memory.
    pub(crate) fn is_compressed(&self) -> bool {
        self.logical.is_some()
    }

    /// Reads up to `len` bytes at `pos` (fewer at the end of the file). Positions are in
    /// the segment's logical (uncompressed) layout.
    pub(crate) fn read_chunk(&self, pos: u64, len: usize) -> Result<Bytes> {
        if let Some(data) = &self.logical {
            let start = (pos as usize).min(data.len());
            return Ok(data.slice(start..(start + len).min(data.len())));
        }
        let mut buf = vec![0u8; len];
        let mut filled = 0;
        while filled < len {
            match self.file.read_at(&mut buf[filled..], pos + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io("reading", &self.path, e)),
            }
        }
        buf.truncate(filled);
        Ok(Bytes::from(buf))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{encode_record, RecordMeta, FORMAT_VERSION};

    fn segment(records: u64) -> (SegmentHeader, Vec<u8>, Vec<u64>) {
        let h = SegmentHeader { version: FORMAT_VERSION, flags: 0, shard: 0, first_lsn: 10 };
        let mut data = h.encode().to_vec();
        let mut starts = Vec::new();
        for i in 0..records {
            starts.push(data.len() as u64);
            let m = RecordMeta { lsn: 10 + i, stream: 1, offset: i, timestamp_ms: 0, flags: 0 };
            encode_record(&mut data, &m, None, format!("payload-{i}").as_bytes());
        }
        (h, data, starts)
    }

    fn run(h: SegmentHeader, data: Vec<u8>) -> (SegmentScan, Vec<u64>) {
        let mut lsns = Vec::new();
        let s = scan(Path::new("t"), &Bytes::from(data), 0, h.first_lsn, 1 << 20, |r, _| {
            lsns.push(r.meta.lsn);
            Ok(())
        })
        .unwrap();
        (s, lsns)
    }

    #[test]
    fn clean_segment_scans_fully() {
        let (h, data, _) = segment(5);
        let len = data.len() as u64;
        let (s, lsns) = run(h, data);
        assert_eq!(lsns, vec![10, 11, 12, 13, 14]);
        assert_eq!(s.valid_end, len);
        assert!(s.bad.is_empty());
    }

    #[test]
    fn torn_tail_is_reported_at_tail() {
        let (h, data, starts) = segment(5);
        let cut = starts[4] as usize + 7;
        let (s, lsns) = run(h, data[..cut].to_vec());
        assert_eq!(lsns, vec![10, 11, 12, 13]);
        assert_eq!(s.valid_end, starts[4]);
        assert_eq!(s.bad.len(), 1);
        assert!(s.bad[0].at_tail);
    }

    #[test]
    fn corrupt_middle_record_is_skipped_and_reported() {
        let (h, mut data, starts) = segment(5);
        data[starts[2] as usize + 30] ^= 0x40;
        let (s, lsns) = run(h, data);
        assert_eq!(lsns, vec![10, 11, 13, 14]);
        assert_eq!(s.bad.len(), 1);
        assert_eq!((s.bad[0].start, s.bad[0].end, s.bad[0].at_tail), (starts[2], starts[3], false));
    }
}
