//! Offline inspection and repair, for `walctl` and for operators' own tooling.
//!
//! Everything here except [`recover`] reads only the segment files (never the index), so it
//! works on a copy of a log, on a log whose index is lost, and next to a running writer.
//! Stream names come from the catalogue records in the log itself.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::format::{self, RecordView, SEGMENT_FLAG_COMPRESSED};
use crate::index::StreamMeta;
use crate::options::{Options, RecoveryMode};
use crate::recovery::{classify, torn_creation, Action, RecoveryReport};
use crate::segment::{self, BadRange};
use crate::shard::{shard_dir, CATALOG_STREAM};
use crate::wal::{parse_marker, Wal, MARKER_FILE};

/// One segment file as found on disk.
#[derive(Debug, Clone)]
pub struct SegmentInfo {
    /// Shard number.
    pub shard: u32,
    /// File path.
    pub path: PathBuf,
    /// LSN in the file name and header.
    pub first_lsn: u64,
    /// LSN of the last valid record.
    pub last_lsn: Option<u64>,
    /// File size.
    pub bytes: u64,
    /// Valid records.
    pub records: u64,
    /// Whether the segment is zstd-compressed.
    pub compressed: bool,
    /// Whether this is the newest segment of its shard (the one being appended to).
    pub newest: bool,
    /// A header that could not be read, if any.
    pub header_error: Option<String>,
    /// Damaged ranges.
    pub bad: Vec<BadRange>,
}

/// One stream as found in the log.
#[derive(Debug, Clone, Default)]
pub struct StreamSummary {
    /// Name from the catalogue record (`None` if the record is missing or damaged).
    pub name: Option<String>,
    /// Numeric id.
    pub id: u64,
    /// Shard.
    pub shard: u32,
    /// Lowest offset found.
    pub first_offset: Option<u64>,
    /// Highest offset found.
    pub last_offset: Option<u64>,
    /// Records found.
    pub records: u64,
    /// Payload and key bytes.
    pub bytes: u64,
}

/// The result of [`inspect`].
#[derive(Debug, Clone, Default)]
pub struct Inspection {
    /// Shard count from the directory's marker.
    pub shards: u32,
    /// Every segment, by shard then LSN.
    pub segments: Vec<SegmentInfo>,
    /// Every stream, by id.
    pub streams: Vec<StreamSummary>,
}

impl Inspection {
    /// Damaged ranges that opening in `strict` mode would refuse (torn tails of the newest
    /// segments are left out: every mode truncates those).
    pub fn damage(&self) -> Vec<&BadRange> {
        self.segments
            .iter()
            .flat_map(|s| s.bad.iter().map(move |b| (s.newest, b)))
            .filter(|(newest, b)| classify(b, *newest, RecoveryMode::Strict) == Action::Fail)
            .map(|(_, b)| b)
            .collect()
    }

    /// Torn tails that any open would truncate.
    pub fn torn_tails(&self) -> Vec<&BadRange> {
        self.segments.iter().filter(|s| s.newest).flat_map(|s| s.bad.iter().filter(|b| b.at_tail)).collect()
    }

    /// Segments whose header is unreadable (other than a newest segment torn at creation).
    pub fn bad_headers(&self) -> Vec<&SegmentInfo> {
        self.segments.iter().filter(|s| s.header_error.is_some()).collect()
    }
}

/// Progress of a long scan: bytes done out of bytes in all.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Bytes scanned so far.
    pub done: u64,
    /// Bytes to scan in all.
    pub total: u64,
}

fn shard_count(dir: &Path) -> Result<u32> {
    if !dir.is_dir() {
        return Err(Error::NotAWalDirectory { path: dir.into(), reason: "no such directory".into() });
    }
    let marker = dir.join(MARKER_FILE);
    let text = std::fs::read_to_string(&marker).map_err(|_| Error::NotAWalDirectory {
        path: dir.into(),
        reason: format!("it has no {MARKER_FILE} file, so it is not a promptmq-wal directory"),
    })?;
    parse_marker(dir, &text)
}

/// A segment file to scan: shard, first LSN, path, whether it is its shard's newest.
type SegmentFile = (u32, u64, PathBuf, bool);

/// The shard count and every segment file, by shard then LSN, with their total size.
fn list_files(dir: &Path) -> Result<(u32, Vec<SegmentFile>, u64)> {
    let shards = shard_count(dir)?;
    let mut files = Vec::new();
    for shard in 0..shards {
        let sdir = shard_dir(dir, shard);
        if sdir.is_dir() {
            let segs = segment::list_segments(&sdir)?;
            let n = segs.len();
            files.extend(segs.into_iter().enumerate().map(|(i, (lsn, p))| (shard, lsn, p, i + 1 == n)));
        }
    }
    let total: u64 = files.iter().map(|(_, _, p, _)| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)).sum();
    Ok((shards, files, total))
}

/// Scans one segment file (reading through `buf`), calling `each(shard, record)` for its
/// valid records; returns what was found and the file's size.
fn scan_file(
    file: &SegmentFile,
    buf: &mut Vec<u8>,
    each: &mut impl FnMut(u32, &RecordView<'_>),
) -> Result<(SegmentInfo, u64)> {
    let (shard, first_lsn, path, newest) = (file.0, file.1, &file.2, file.3);
    let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let mut info = SegmentInfo {
        shard,
        path: path.clone(),
        first_lsn,
        last_lsn: None,
        bytes,
        records: 0,
        compressed: false,
        newest,
        header_error: None,
        bad: Vec::new(),
    };
    let seg = match segment::SegmentFile::open(path, buf) {
        Ok(seg) => seg,
        // A compressed body that does not decompress is damage to report, not a reason
        // to stop inspecting the rest of the log.
        Err(Error::Corrupt { reason, .. }) => {
            info.compressed = true;
            info.header_error = Some(reason);
            return Ok((info, bytes));
        }
        Err(e) => return Err(e),
    };
    match segment::check_header(path, seg.head(), Some(shard), first_lsn) {
        Err(e) => {
            if !(newest && torn_creation(seg.head())) {
                info.header_error = Some(e.to_string());
            }
        }
        Ok(h) => {
            info.compressed = h.flags & SEGMENT_FLAG_COMPRESSED != 0;
            let scan = seg.scan(0, h.first_lsn, u32::MAX, newest && format::marks_syncs(h.version), |r, _| {
                each(shard, r);
                Ok(())
            })?;
            info.last_lsn = scan.last_lsn;
            info.records = scan.records;
            info.bad = scan.bad;
        }
    }
    Ok((info, bytes))
}

/// Scans every record of every segment in log order, calling `each(shard, record)` for
/// valid ones.
fn scan_all(
    dir: &Path,
    progress: &mut dyn FnMut(Progress),
    mut each: impl FnMut(u32, &RecordView<'_>),
) -> Result<Inspection> {
    let (shards, files, total) = list_files(dir)?;
    let mut done = 0u64;
    let mut out = Inspection { shards, ..Inspection::default() };
    let mut buf = Vec::new();
    for file in &files {
        let (info, bytes) = scan_file(file, &mut buf, &mut each)?;
        done += bytes;
        progress(Progress { done, total });
        out.segments.push(info);
    }
    Ok(out)
}

/// Reads every segment: shards, segments, streams with their offsets and sizes, and
/// every damaged range (see [`Inspection::damage`]).
///
/// ```
/// # use promptmq_wal::{Wal, Options, tools};
/// # let dir = tempfile::tempdir()?;
/// # let wal = Wal::open(dir.path(), Options::default().shards(1))?;
/// # let s = wal.stream("a")?; wal.append(&s, "x").wait()?; wal.close()?;
/// let report = tools::inspect(dir.path(), &mut |_| {})?;
/// assert_eq!(report.streams[0].name.as_deref(), Some("a"));
/// assert!(report.damage().is_empty());
/// # Ok::<(), promptmq_wal::Error>(())
/// ```
pub fn inspect(dir: &Path, progress: &mut dyn FnMut(Progress)) -> Result<Inspection> {
    let (shards, files, total) = list_files(dir)?;
    // Shards are independent: scanned in parallel (one thread per core at most), each into
    // its own summaries, merged at the end. Progress is reported from this thread.
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).clamp(1, shards.max(1) as usize);
    let done = std::sync::atomic::AtomicU64::new(0);
    type Found = Result<(Vec<SegmentInfo>, BTreeMap<u64, StreamSummary>)>;
    let results: Vec<Found> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let (files, done) = (&files, &done);
                scope.spawn(move || -> Found {
                    let mut streams = BTreeMap::new();
                    let mut segments = Vec::new();
                    let mut buf = Vec::new();
                    for file in files.iter().filter(|f| f.0 as usize % workers == w) {
                        let summary = &mut |shard, r: &RecordView<'_>| summarise(&mut streams, shard, r);
                        let (info, bytes) = scan_file(file, &mut buf, summary)?;
                        done.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
                        segments.push(info);
                    }
                    Ok((segments, streams))
                })
            })
            .collect();
        while !handles.iter().all(|h| h.is_finished()) {
            progress(Progress { done: done.load(std::sync::atomic::Ordering::Relaxed), total });
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(Error::Index("a scanning thread panicked".into()))))
            .collect()
    });
    progress(Progress { done: done.into_inner(), total });
    let mut out = Inspection { shards, ..Inspection::default() };
    let mut streams: BTreeMap<u64, StreamSummary> = BTreeMap::new();
    for r in results {
        let (segments, found) = r?;
        out.segments.extend(segments);
        for (id, s) in found {
            merge_summary(streams.entry(id).or_default(), s);
        }
    }
    out.segments.sort_by_key(|s| (s.shard, s.first_lsn));
    out.streams = streams.into_values().collect();
    Ok(out)
}

/// Counts a record into the stream summaries (a catalogue record names its stream).
fn summarise(streams: &mut BTreeMap<u64, StreamSummary>, shard: u32, r: &RecordView<'_>) {
    if r.meta.stream == CATALOG_STREAM {
        if let Ok(m) = StreamMeta::decode(r.payload) {
            let e = streams.entry(m.id).or_default();
            e.name = Some(m.name.to_string());
            e.id = m.id;
            e.shard = shard;
        }
        return;
    }
    let e = streams.entry(r.meta.stream).or_default();
    e.id = r.meta.stream;
    e.shard = shard;
    e.first_offset = Some(e.first_offset.map_or(r.meta.offset, |f| f.min(r.meta.offset)));
    e.last_offset = Some(e.last_offset.map_or(r.meta.offset, |l| l.max(r.meta.offset)));
    e.records += 1;
    e.bytes += (r.payload.len() + r.key.map_or(0, |k| k.len())) as u64;
}

/// Adds what another shard's scan found of the same stream id (a damaged log can hold
/// records of one id in two shards).
fn merge_summary(into: &mut StreamSummary, from: StreamSummary) {
    if into.records == 0 && into.name.is_none() {
        *into = from;
        return;
    }
    into.name = into.name.take().or(from.name);
    into.first_offset = match (into.first_offset, from.first_offset) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    into.last_offset = match (into.last_offset, from.last_offset) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    into.records += from.records;
    into.bytes += from.bytes;
}

/// A record of one stream, as [`dump`] returns it.
#[derive(Debug, Clone)]
pub struct DumpedRecord {
    /// Offset.
    pub offset: u64,
    /// LSN within the shard.
    pub lsn: u64,
    /// Append time, ms since the epoch.
    pub timestamp_ms: u64,
    /// Key, if keyed.
    pub key: Option<Bytes>,
    /// Payload.
    pub payload: Bytes,
}

/// Calls `each` for the records of the stream named `stream` with offsets in
/// `from..from+limit`, in log order, straight from the segment files.
///
/// ```
/// # use promptmq_wal::{Wal, Options, tools};
/// # let dir = tempfile::tempdir()?;
/// # let wal = Wal::open(dir.path(), Options::default())?;
/// # let s = wal.stream("s")?; for i in 0..5 { wal.append(&s, format!("{i}")).wait()?; } wal.close()?;
/// let mut seen = Vec::new();
/// tools::dump(dir.path(), "s", 2, 2, &mut |r| seen.push(r.offset))?;
/// assert_eq!(seen, [2, 3]);
/// # Ok::<(), promptmq_wal::Error>(())
/// ```
pub fn dump(dir: &Path, stream: &str, from: u64, limit: u64, each: &mut dyn FnMut(DumpedRecord)) -> Result<()> {
    let mut id = None;
    let end = from.saturating_add(limit);
    let mut found = false;
    scan_all(dir, &mut |_| {}, |_, r| {
        if r.meta.stream == CATALOG_STREAM {
            if let Ok(m) = StreamMeta::decode(r.payload) {
                if &*m.name == stream {
                    id = Some(m.id);
                    found = true;
                }
            }
            return;
        }
        if Some(r.meta.stream) == id && r.meta.offset >= from && r.meta.offset < end {
            each(DumpedRecord {
                offset: r.meta.offset,
                lsn: r.meta.lsn,
                timestamp_ms: r.meta.timestamp_ms,
                key: r.key.map(Bytes::copy_from_slice),
                payload: Bytes::copy_from_slice(r.payload),
            });
        }
    })?;
    if !found {
        return Err(Error::NoSuchStream(stream.into()));
    }
    Ok(())
}

/// What [`recover`] found, or (with `dry_run`) would do.
#[derive(Debug, Clone, Default)]
pub struct RecoverOutcome {
    /// Torn tails truncated (or to truncate).
    pub truncate: Vec<BadRange>,
    /// Damaged ranges skipped (or to skip); empty in strict mode.
    pub skip: Vec<BadRange>,
    /// Segments with unreadable headers, set aside (or to set aside) in tolerant mode.
    pub set_aside: Vec<PathBuf>,
    /// The recovery report of the real run (None for a dry run).
    pub report: Option<RecoveryReport>,
}

/// Runs a full recovery of the log in `dir` in `mode`: every segment is scanned (the
/// index checkpoints are ignored) and the index is rebuilt. With `dry_run`, nothing is
/// changed and the outcome says what would be done. In strict mode, damage that strict
/// recovery refuses is returned as [`Error::Corrupt`] either way.
///
/// ```
/// # use promptmq_wal::{Wal, Options, RecoveryMode, tools};
/// # let dir = tempfile::tempdir()?;
/// # let wal = Wal::open(dir.path(), Options::default())?;
/// # let s = wal.stream("s")?; wal.append(&s, "x").wait()?; wal.close()?;
/// let plan = tools::recover(dir.path(), RecoveryMode::Tolerant, true)?; // dry run
/// assert!(plan.truncate.is_empty() && plan.skip.is_empty());
/// let done = tools::recover(dir.path(), RecoveryMode::Strict, false)?;
/// assert!(done.report.is_some_and(|r| r.records_scanned() >= 1));
/// # Ok::<(), promptmq_wal::Error>(())
/// ```
pub fn recover(dir: &Path, mode: RecoveryMode, dry_run: bool) -> Result<RecoverOutcome> {
    let found = inspect(dir, &mut |_| {})?;
    let mut out = RecoverOutcome::default();
    for seg in &found.segments {
        if let Some(e) = &seg.header_error {
            if mode == RecoveryMode::Strict {
                return Err(Error::Corrupt { path: seg.path.clone(), position: 0, reason: e.clone() });
            }
            out.set_aside.push(seg.path.clone());
        }
        for b in &seg.bad {
            match classify(b, seg.newest, mode) {
                Action::Truncate => out.truncate.push(b.clone()),
                Action::Skip => out.skip.push(b.clone()),
                Action::Fail => return Err(crate::recovery::corrupt(b)),
            }
        }
    }
    if !dry_run {
        let wal = Wal::open(dir, Options::default().recovery(mode).create_if_missing(false).full_recovery(true))?;
        out.report = Some(wal.recovery_report().clone());
        wal.close()?;
    }
    Ok(out)
}

/// What [`check_segment_bytes`] found in an in-memory segment image.
#[derive(Debug, Clone, Default)]
pub struct SegmentCheck {
    /// Valid records, in order: (LSN, stream, offset).
    pub records: Vec<(u64, u64, u64)>,
    /// Position just after the last valid record.
    pub valid_end: u64,
    /// Damaged ranges.
    pub bad: Vec<BadRange>,
}

/// Decodes a whole segment image (header and records) held in memory, exactly as recovery
/// reads the newest segment file (where damage may be a torn tail). Never panics, whatever
/// the bytes; used by the fuzz targets.
pub fn check_segment_bytes(data: &[u8]) -> Result<SegmentCheck> {
    let path = Path::new("<memory>");
    let header = crate::format::SegmentHeader::decode(data).map_err(|e| Error::Corrupt {
        path: path.into(),
        position: 0,
        reason: e.to_string(),
    })?;
    let mut out = SegmentCheck::default();
    let tail_rule = format::marks_syncs(header.version);
    let scan =
        segment::scan(path, data, crate::format::SEGMENT_HEADER_LEN, header.first_lsn, 1 << 24, tail_rule, |r, _| {
            out.records.push((r.meta.lsn, r.meta.stream, r.meta.offset));
            Ok(())
        })?;
    out.valid_end = scan.valid_end;
    out.bad = scan.bad;
    Ok(out)
}

/// Decodes an offset-index block value (the `blocks` keyspace, `FORMAT.md`) and checks that
/// what decodes encodes to something that decodes to the same positions. Returns the number
/// of positions, or `None` for a value that does not decode. Never panics, whatever the
/// bytes; used by the fuzz targets.
#[doc(hidden)]
pub fn check_index_block(data: &[u8]) -> Option<usize> {
    // A prefix decodes (or fails) cleanly whatever the bytes, and is the start of the whole.
    let limit = data.len() / 2;
    let prefix = crate::block_codec::decode_prefix(data, limit);
    let positions = crate::block_codec::decode(data).ok()?;
    assert_eq!(prefix.ok().as_deref(), Some(&positions[..positions.len().min(limit)]), "a prefix differs");
    let again = crate::block_codec::decode(&crate::block_codec::encode(&positions)).ok();
    assert_eq!(again.as_ref(), Some(&positions), "an index block does not survive re-encoding");
    assert_eq!(crate::block_codec::count(data).ok(), Some(positions.len() as u64));
    Some(positions.len())
}
