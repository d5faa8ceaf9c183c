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
            None if name.ends_with(crate::maintenance::TMP_EXTENSION)
                || name.ends_with(".seg.bad")
                || name.ends_with(crate::spare::SPARE_EXTENSION) => {}
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
    /// Whether the range is a torn tail: it runs to the end of the file. In the newest
    /// segment of format 2 that includes records after the bad bytes when none of them was
    /// written after a sync (see [`crate::format::RECORD_FLAG_AFTER_SYNC`]): they belong to
    /// the commit a crash tore, and the range ends at the end of the file.
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

/// [`load`] into the caller's buffer ([`SegmentFile`] uses it for compressed segments,
/// which are decompressed whole; plain ones it reads a chunk at a time).
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
/// whose checksum is valid and whose LSN continues the sequence, and are reported. With
/// `tail_rule` (the newest segment, format 2 on) damage that no later record proves was
/// synced ends the scan instead: a torn tail, to the end of the file.
pub(crate) fn scan(
    path: &Path,
    data: &[u8],
    start: usize,
    first_lsn: u64,
    max_body: u32,
    tail_rule: bool,
    mut each: impl FnMut(&RecordView<'_>, u64) -> Result<()>,
) -> Result<SegmentScan> {
    let mut st = ScanState::new(start, first_lsn);
    st.zero_from = zero_tail_start(data) as u64;
    st.tail_rule = tail_rule;
    scan_part(path, data, 0, true, &mut st, max_body, &mut each)?;
    Ok(st.scan)
}

/// Where the run of zero bytes that ends `data` starts (`data.len()` if it ends with
/// anything else). A segment is zero-filled ahead of its writes when the log preallocates
/// (see `Options::preallocate`), so the bytes after its last record are zeros: no valid
/// record begins with zeros (its length field is at least [`MIN_BODY_LEN`]), so a scan that
/// finds no record where only zeros follow has reached the end, not damage.
fn zero_tail_start(data: &[u8]) -> usize {
    data.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1)
}

/// [`zero_tail_start`] of a whole file, read backwards a chunk at a time.
fn file_zero_tail_start(path: &Path, file: &File) -> Result<u64> {
    use std::os::unix::fs::FileExt;
    let len = file.metadata().map_err(|e| Error::io("reading the size of", path, e))?.len();
    let mut buf = vec![0u8; SCAN_CHUNK];
    let mut end = len;
    while end > 0 {
        let start = end.saturating_sub(SCAN_CHUNK as u64);
        let part = &mut buf[..(end - start) as usize];
        file.read_exact_at(part, start).map_err(|e| Error::io("reading", path, e))?;
        let z = zero_tail_start(part);
        if z > 0 {
            return Ok(start + z as u64);
        }
        end = start;
    }
    Ok(0)
}

/// Where a scan has got to; positions are file offsets.
struct ScanState {
    pos: u64,
    next_lsn: u64,
    /// From here to the end of the file there are only zeros (see [`zero_tail_start`]).
    zero_from: u64,
    /// The segment is the newest, in a format with [`format::RECORD_FLAG_AFTER_SYNC`]: bad
    /// bytes that no later record proves were synced are a torn tail.
    tail_rule: bool,
    scan: SegmentScan,
}

impl ScanState {
    fn new(start: usize, first_lsn: u64) -> ScanState {
        let pos = start.max(SEGMENT_HEADER_LEN) as u64;
        ScanState {
            pos,
            next_lsn: first_lsn,
            zero_from: u64::MAX,
            tail_rule: false,
            scan: SegmentScan { valid_end: pos, records: 0, last_lsn: None, bad: Vec::new() },
        }
    }
}

/// Why [`scan_part`] stopped.
#[derive(Debug, PartialEq, Eq)]
enum Stopped {
    /// Everything up to the end of the file is scanned.
    Done,
    /// The next record runs past the bytes held (and the file goes on).
    NeedMore,
    /// The next bytes are not a valid record: finding where valid records resume needs the
    /// rest of the file.
    Damaged,
    /// Only zeros follow the last record: the segment ends here (preallocated space).
    End,
}

/// Scans `data`, the bytes of the file from offset `base`, from `st.pos` on. With `at_eof`
/// (`data` runs to the end of the file) damage is skipped and reported; otherwise the scan
/// stops before it, or before a record that `data` holds only part of.
fn scan_part(
    path: &Path,
    data: &[u8],
    base: u64,
    at_eof: bool,
    st: &mut ScanState,
    max_body: u32,
    each: &mut impl FnMut(&RecordView<'_>, u64) -> Result<()>,
) -> Result<Stopped> {
    let end = base + data.len() as u64;
    while st.pos < end {
        let rel = (st.pos - base) as usize;
        let decoded = format::decode_view(&data[rel..], max_body);
        let reason = match decoded {
            DecodedView::Record(r, n) if r.meta.lsn >= st.next_lsn => {
                each(&r, st.pos)?;
                st.next_lsn = r.meta.lsn + 1;
                st.scan.last_lsn = Some(r.meta.lsn);
                st.scan.records += 1;
                st.pos += n as u64;
                st.scan.valid_end = st.pos;
                continue;
            }
            _ if st.pos >= st.zero_from => return Ok(Stopped::End),
            DecodedView::Incomplete if !at_eof => return Ok(Stopped::NeedMore),
            _ if !at_eof => return Ok(Stopped::Damaged),
            DecodedView::Record(..) => "record LSN goes backwards",
            DecodedView::Incomplete => "record runs past the end of the file",
            DecodedView::Corrupt(why) => why,
        };
        let resumed = resync(data, rel + 1, st.next_lsn, max_body);
        let resumed = resumed.filter(|&next| !st.tail_rule || synced_after(data, next, st.next_lsn, max_body));
        match resumed {
            Some(next) => {
                let next = base + next as u64;
                st.scan.bad.push(BadRange {
                    path: path.into(),
                    start: st.pos,
                    end: next,
                    reason: reason.into(),
                    at_tail: false,
                });
                st.pos = next;
            }
            None => {
                st.scan.bad.push(BadRange {
                    path: path.into(),
                    start: st.pos,
                    end,
                    reason: reason.into(),
                    at_tail: true,
                });
                st.pos = end;
            }
        }
    }
    Ok(Stopped::Done)
}

/// Bytes [`SegmentFile`] reads at a time: small enough to stay in the CPU cache, so the
/// scan reads what `read` has just copied instead of a whole segment's worth from memory,
/// and one buffer serves every segment without faulting in new pages.
const SCAN_CHUNK: usize = 1 << 18;

/// A segment opened for one scan from front to back. Plain segments are read a chunk at a
/// time into the caller's buffer; a compressed one is decompressed whole (its logical
/// positions are those of the plain segment it was made from).
pub(crate) struct SegmentFile<'b> {
    path: PathBuf,
    /// `None` once everything is in `buf` (compressed, or read to its end).
    file: Option<File>,
    /// Where the zeros that end the file start (see [`zero_tail_start`]).
    zero_from: u64,
    buf: &'b mut Vec<u8>,
    /// Bytes per read ([`SCAN_CHUNK`]; tests use small ones to cross many boundaries).
    chunk: usize,
}

impl<'b> SegmentFile<'b> {
    /// Opens `path` and reads its first chunk (or, if compressed, all of it) into `buf`.
    pub(crate) fn open(path: &Path, buf: &'b mut Vec<u8>) -> Result<SegmentFile<'b>> {
        Self::open_chunked(path, buf, SCAN_CHUNK)
    }

    fn open_chunked(path: &Path, buf: &'b mut Vec<u8>, chunk: usize) -> Result<SegmentFile<'b>> {
        let chunk = chunk.max(SEGMENT_HEADER_LEN);
        buf.clear();
        let mut file = File::open(path).map_err(|e| Error::io("opening", path, e))?;
        read_chunk(path, &mut file, buf, chunk)?;
        let compressed = SegmentHeader::decode(buf).is_ok_and(|h| h.flags & format::SEGMENT_FLAG_COMPRESSED != 0);
        let mut seg = SegmentFile { path: path.into(), file: Some(file), zero_from: u64::MAX, buf, chunk };
        if compressed {
            seg.file = None;
            load_into(path, seg.buf)?;
        } else if seg.buf.len() < chunk {
            seg.file = None; // the whole file fitted
        }
        seg.zero_from = match &seg.file {
            None => zero_tail_start(seg.buf) as u64,
            Some(f) => file_zero_tail_start(path, f)?,
        };
        Ok(seg)
    }

    /// The file's first bytes (its whole length if shorter than a chunk): enough to check
    /// the header.
    pub(crate) fn head(&self) -> &[u8] {
        self.buf
    }

    /// Scans the segment from `start` like [`scan`]: every valid record goes to `each`
    /// with its position, damaged ranges are skipped and reported.
    pub(crate) fn scan(
        mut self,
        start: usize,
        first_lsn: u64,
        max_body: u32,
        tail_rule: bool,
        mut each: impl FnMut(&RecordView<'_>, u64) -> Result<()>,
    ) -> Result<SegmentScan> {
        let mut st = ScanState::new(start, first_lsn);
        st.zero_from = self.zero_from;
        st.tail_rule = tail_rule;
        let mut base = 0u64; // file offset of buf[0]
        loop {
            let at_eof = self.file.is_none();
            let stopped = scan_part(&self.path, self.buf, base, at_eof, &mut st, max_body, &mut each)?;
            if stopped == Stopped::End {
                return Ok(st.scan);
            }
            let Some(file) = self.file.as_mut() else {
                return Ok(st.scan);
            };
            // Keep only what is not scanned yet (a partial record) and read on after it.
            let consumed = (st.pos - base).min(self.buf.len() as u64) as usize;
            self.buf.drain(..consumed);
            base += consumed as u64;
            match stopped {
                Stopped::Damaged => {
                    // Rare: take the rest of the file so the damage can be skipped over.
                    use std::io::Read;
                    file.read_to_end(self.buf).map_err(|e| Error::io("reading", &self.path, e))?;
                    self.file = None;
                }
                Stopped::Done | Stopped::NeedMore | Stopped::End => {
                    let want = self.chunk.max(self.buf.len());
                    if read_chunk(&self.path, file, self.buf, want)? < want {
                        self.file = None;
                    }
                }
            }
        }
    }
}

/// Appends up to `n` bytes of `file` to `buf` (fewer only at the end of the file);
/// returns how many.
fn read_chunk(path: &Path, file: &mut File, buf: &mut Vec<u8>, n: usize) -> Result<usize> {
    use std::io::Read;
    buf.reserve(n);
    let before = buf.len();
    file.take(n as u64).read_to_end(buf).map_err(|e| Error::io("reading", path, e))?;
    Ok(buf.len() - before)
}

/// Whether a valid record from `from` on (continuing the LSNs from `next_lsn`) carries
/// [`format::RECORD_FLAG_AFTER_SYNC`]: then the bytes before it were durable when it was
/// written, and damage there is not a torn write. Records past more damage count too.
fn synced_after(data: &[u8], from: usize, mut next_lsn: u64, max_body: u32) -> bool {
    let mut p = from;
    while p < data.len() {
        match format::decode_view(&data[p..], max_body) {
            DecodedView::Record(r, n) if r.meta.lsn >= next_lsn => {
                if r.meta.flags & format::RECORD_FLAG_AFTER_SYNC != 0 {
                    return true;
                }
                next_lsn = r.meta.lsn + 1;
                p += n;
            }
            _ => match resync(data, p + 1, next_lsn, max_body) {
                Some(q) => p = q,
                None => return false,
            },
        }
    }
    false
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
        let s = scan(Path::new("t"), &Bytes::from(data), 0, h.first_lsn, 1 << 20, false, |r, _| {
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

    /// Scans `data` whole and, written to a file, in chunks of `chunk` bytes, as a sealed
    /// segment.
    fn scan_both(data: &[u8], chunk: usize) -> [(SegmentScan, Vec<u64>); 2] {
        scan_with_rule(data, chunk, false)
    }

    #[test]
    fn zeros_after_the_last_record_are_the_end_not_damage() {
        let (_, mut data, _) = segment(5);
        let end = data.len() as u64;
        data.resize(data.len() + 100_000, 0);
        for chunk in [64, 4096, 1 << 20] {
            for (s, lsns) in scan_both(&data, chunk) {
                assert_eq!(lsns, vec![10, 11, 12, 13, 14]);
                assert_eq!(s.valid_end, end);
                assert!(s.bad.is_empty(), "chunk {chunk}: {:?}", s.bad);
            }
        }
    }

    #[test]
    fn zeros_followed_by_anything_are_still_damage() {
        // A zeroed record in the middle: the records after it are found and kept.
        let (_, mut data, starts) = segment(5);
        let (a, b) = (starts[2] as usize, starts[3] as usize);
        data[a..b].fill(0);
        for chunk in [64, 1 << 20] {
            for (s, lsns) in scan_both(&data, chunk) {
                assert_eq!(lsns, vec![10, 11, 13, 14]);
                assert_eq!(s.bad.len(), 1, "chunk {chunk}");
                assert!(!s.bad[0].at_tail);
            }
        }
        // Zeros, then a byte of a torn write: a torn tail, reported.
        let (_, mut data, starts) = segment(5);
        let end = data.len();
        data.resize(end + 5000, 0);
        data[end + 4000] = 7;
        for chunk in [64, 1 << 20] {
            for (s, lsns) in scan_both(&data, chunk) {
                assert_eq!(lsns.len(), 5);
                assert_eq!(s.valid_end, end as u64);
                assert_eq!(s.bad.len(), 1, "chunk {chunk}");
                assert!(s.bad[0].at_tail);
            }
        }
        let _ = starts;
    }

    #[test]
    fn a_last_record_ending_in_zeros_is_kept() {
        let h = SegmentHeader { version: FORMAT_VERSION, flags: 0, shard: 0, first_lsn: 10 };
        let mut data = h.encode().to_vec();
        let m = RecordMeta { lsn: 10, stream: 1, offset: 0, timestamp_ms: 0, flags: 0 };
        encode_record(&mut data, &m, None, &[0u8; 300]);
        let end = data.len() as u64;
        data.resize(data.len() + 1000, 0);
        for (s, lsns) in scan_both(&data, 64) {
            assert_eq!(lsns, vec![10]);
            assert_eq!(s.valid_end, end);
            assert!(s.bad.is_empty());
        }
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

    /// A segment of records of random sizes, damaged at random, scanned in chunks of a
    /// random size: exactly what a scan of the whole file in memory finds.
    fn chunked_equals_whole(sizes: &[usize], damage: &[(usize, u8)], cut: Option<usize>, chunk: usize) {
        let h = SegmentHeader { version: FORMAT_VERSION, flags: 0, shard: 0, first_lsn: 10 };
        let mut data = h.encode().to_vec();
        for (i, size) in sizes.iter().enumerate() {
            let m = RecordMeta { lsn: 10 + i as u64, stream: 1, offset: i as u64, timestamp_ms: 0, flags: 0 };
            encode_record(&mut data, &m, None, &vec![i as u8; *size]);
        }
        for &(at, bit) in damage {
            let at = SEGMENT_HEADER_LEN + at % (data.len() - SEGMENT_HEADER_LEN);
            data[at] ^= 1 << (bit % 8);
        }
        if let Some(c) = cut {
            data.truncate(SEGMENT_HEADER_LEN + c % (data.len() - SEGMENT_HEADER_LEN + 1));
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.seg");
        std::fs::write(&path, &data).unwrap();
        let mut whole = Vec::new();
        let expected = scan(&path, &data, 0, 10, 1 << 20, false, |r, at| {
            whole.push((at, r.meta.lsn, r.payload.len()));
            Ok(())
        })
        .unwrap();
        let mut buf = Vec::new();
        let seg = SegmentFile::open_chunked(&path, &mut buf, chunk).unwrap();
        assert_eq!(&seg.head()[..SEGMENT_HEADER_LEN], &data[..SEGMENT_HEADER_LEN]);
        let mut chunked = Vec::new();
        let got = seg
            .scan(0, 10, 1 << 20, false, |r, at| {
                chunked.push((at, r.meta.lsn, r.payload.len()));
                Ok(())
            })
            .unwrap();
        assert_eq!(chunked, whole);
        assert_eq!(
            (got.valid_end, got.records, got.last_lsn),
            (expected.valid_end, expected.records, expected.last_lsn)
        );
        assert_eq!(got.bad, expected.bad);
    }

    #[test]
    fn chunked_scan_crosses_chunk_boundaries() {
        // Records larger than a chunk, a torn tail, and damage, at a few chunk sizes.
        let sizes: Vec<usize> = (0..40).map(|i| [10, 300, 5000, 70][i % 4]).collect();
        for chunk in [64, 100, 333, 4096, 1 << 20] {
            chunked_equals_whole(&sizes, &[], None, chunk);
            chunked_equals_whole(&sizes, &[], Some(20_000), chunk);
            chunked_equals_whole(&sizes, &[(7000, 3)], None, chunk);
            chunked_equals_whole(&sizes, &[(7000, 3), (40_000, 1)], Some(50_000), chunk);
        }
    }

    proptest::proptest! {
        #[test]
        fn chunked_scan_finds_what_a_whole_scan_finds(
            sizes in proptest::collection::vec(0usize..3000, 1..60),
            damage in proptest::collection::vec((0usize..1 << 20, 0u8..8), 0..4),
            cut in proptest::option::of(0usize..1 << 20),
            chunk in 1usize..8192,
        ) {
            chunked_equals_whole(&sizes, &damage, cut, chunk);
        }
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

    /// A segment of `records` records whose commits start at `commits` (indices): the first
    /// record of each carries `RECORD_FLAG_AFTER_SYNC`, as the writer sets it after a sync.
    fn committed_segment(records: u64, commits: &[u64]) -> (Vec<u8>, Vec<u64>) {
        let h = SegmentHeader { version: FORMAT_VERSION, flags: 0, shard: 0, first_lsn: 10 };
        let mut data = h.encode().to_vec();
        let mut starts = Vec::new();
        for i in 0..records {
            starts.push(data.len() as u64);
            let flags = if commits.contains(&i) { crate::format::RECORD_FLAG_AFTER_SYNC } else { 0 };
            let m = RecordMeta { lsn: 10 + i, stream: 1, offset: i, timestamp_ms: 0, flags };
            encode_record(&mut data, &m, None, format!("payload-{i}").as_bytes());
        }
        (data, starts)
    }

    /// [`scan_both`], with `tail_rule` as for the newest segment or not.
    fn scan_with_rule(data: &[u8], chunk: usize, tail_rule: bool) -> [(SegmentScan, Vec<u64>); 2] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.seg");
        std::fs::write(&path, data).unwrap();
        let mut whole = Vec::new();
        let a = scan(&path, data, 0, 10, 1 << 20, tail_rule, |r, _| {
            whole.push(r.meta.lsn);
            Ok(())
        })
        .unwrap();
        let mut buf = Vec::new();
        let mut chunked = Vec::new();
        let b = SegmentFile::open_chunked(&path, &mut buf, chunk)
            .unwrap()
            .scan(0, 10, 1 << 20, tail_rule, |r, _| {
                chunked.push(r.meta.lsn);
                Ok(())
            })
            .unwrap();
        [(a, whole), (b, chunked)]
    }

    /// A power cut during a commit's sync can keep any of its sectors and lose the others:
    /// bad bytes with valid records after them, none written after a sync. In the newest
    /// segment that is the torn tail; the records after the hole are not taken.
    #[test]
    fn a_commit_torn_out_of_order_is_a_torn_tail() {
        // Commits: [0], [1], [2], [3..8].
        let (mut data, starts) = committed_segment(8, &[0, 1, 2, 3]);
        let len = data.len() as u64;
        data[starts[5] as usize + 20] ^= 0x10;
        for chunk in [64, 4096, 1 << 20] {
            for (s, lsns) in scan_with_rule(&data, chunk, true) {
                assert_eq!(lsns, vec![10, 11, 12, 13, 14], "chunk {chunk}");
                assert_eq!(s.bad.len(), 1);
                assert_eq!((s.bad[0].start, s.bad[0].end, s.bad[0].at_tail), (starts[5], len, true));
                assert_eq!(s.valid_end, starts[5]);
            }
            // Without the rule (a sealed segment), the same bytes are damage to skip.
            for (s, lsns) in scan_with_rule(&data, chunk, false) {
                assert_eq!(lsns, vec![10, 11, 12, 13, 14, 16, 17]);
                assert_eq!((s.bad[0].start, s.bad[0].end, s.bad[0].at_tail), (starts[5], starts[6], false));
            }
        }
    }

    /// Damage followed by a commit that started after a sync was damage to synced data:
    /// never a torn tail, even in the newest segment.
    #[test]
    fn damage_a_later_commit_proves_synced_is_not_a_tail() {
        let (mut data, starts) = committed_segment(8, &[0, 1, 2, 3, 6]);
        data[starts[4] as usize + 20] ^= 0x10;
        for chunk in [64, 4096, 1 << 20] {
            for (s, lsns) in scan_with_rule(&data, chunk, true) {
                assert_eq!(lsns, vec![10, 11, 12, 13, 15, 16, 17], "chunk {chunk}");
                assert_eq!((s.bad[0].start, s.bad[0].end, s.bad[0].at_tail), (starts[4], starts[5], false));
            }
        }
        // Proof past a second hole counts too.
        let (mut data, starts) = committed_segment(8, &[0, 1, 2, 3, 7]);
        data[starts[4] as usize + 20] ^= 0x10;
        data[starts[6] as usize + 20] ^= 0x10;
        for (s, lsns) in scan_with_rule(&data, 4096, true) {
            assert_eq!(lsns, vec![10, 11, 12, 13, 15, 17]);
            assert_eq!(s.bad.len(), 2);
            assert!(s.bad.iter().all(|b| !b.at_tail));
        }
        // A lost sector of zeros in the middle is damage like any other.
        let (mut data, starts) = committed_segment(8, &[0, 1, 2, 3]);
        let len = data.len() as u64;
        data[starts[4] as usize..starts[5] as usize].fill(0);
        for (s, lsns) in scan_with_rule(&data, 4096, true) {
            assert_eq!(lsns, vec![10, 11, 12, 13]);
            assert_eq!((s.bad[0].start, s.bad[0].end, s.bad[0].at_tail), (starts[4], len, true));
        }
    }
}
