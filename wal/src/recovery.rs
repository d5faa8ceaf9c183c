//! Crash recovery: bringing a shard's segments and the index back to a consistent state on
//! open, and reporting exactly what was found and done.
//!
//! Rules (see `FORMAT.md`):
//! - invalid bytes running to the end of the *newest* segment are a torn tail from a crash
//!   mid-write: they were never acknowledged, and are truncated in every mode;
//! - so are invalid bytes in the newest segment followed by valid records none of which was
//!   written after a sync (`format::RECORD_FLAG_AFTER_SYNC`): a commit whose sectors a power
//!   cut kept in part, in any order, from the first bad byte on;
//! - any other damaged range (inside a sealed segment, or under a record written after a
//!   sync) is an error in `strict` mode and a reported, skipped range in `tolerant` mode;
//! - a newest segment whose header never made it to disk (created just before a crash)
//!   holds no records and is removed.
//!
//! Only the log beyond the shard's index checkpoint is scanned on open; a missing or
//! inconsistent checkpoint re-indexes the whole shard. `walctl verify` checks everything.

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::format::{self, SEGMENT_HEADER_LEN};
use crate::index::{Index, Pos, SegSummary, StreamMeta};
use crate::options::RecoveryMode;
use crate::segment::{self, BadRange};
use crate::shard::{ShardStart, CATALOG_STREAM};
use crate::stream::{OpenBlock, StreamState};

/// What recovery found and did in one shard.
#[derive(Debug, Clone, Default)]
pub struct ShardReport {
    /// Shard number.
    pub shard: u32,
    /// Segments in the shard.
    pub segments: usize,
    /// Segments scanned (those beyond the checkpoint).
    pub segments_scanned: usize,
    /// Records scanned and indexed.
    pub records_scanned: u64,
    /// Bytes scanned.
    pub bytes_scanned: u64,
    /// Whether scanning started from an index checkpoint (false: full re-index).
    pub from_checkpoint: bool,
    /// Torn tails that were cut off.
    pub truncated: Vec<BadRange>,
    /// Damaged ranges skipped (tolerant mode only).
    pub skipped: Vec<BadRange>,
    /// Segment files removed (torn at creation) or set aside as `.bad` (tolerant mode).
    pub removed: Vec<PathBuf>,
    /// Records skipped because they belong to no known stream or break offset order.
    pub orphan_records: u64,
    /// Streams restored from the log alone (no index) whose offsets jump across deleted
    /// segments: where retention cut them, which only the index records. Each is a stream
    /// name and the offsets it jumps from and to. Only there is such a jump not an error.
    pub retention_gaps: Vec<(String, u64, u64)>,
}

/// What recovery found and did, for every shard.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    /// One entry per shard.
    pub shards: Vec<ShardReport>,
    /// Wall time of recovery.
    pub duration: Duration,
}

impl RecoveryReport {
    /// Total records scanned.
    pub fn records_scanned(&self) -> u64 {
        self.shards.iter().map(|s| s.records_scanned).sum()
    }
    /// Whether recovery changed or skipped anything beyond a clean re-index.
    pub fn is_clean(&self) -> bool {
        self.shards
            .iter()
            .all(|s| s.truncated.is_empty() && s.skipped.is_empty() && s.removed.is_empty() && s.orphan_records == 0)
    }
}

/// What to do with a damaged range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Truncate,
    Skip,
    Fail,
}

/// The one place that decides between truncating, skipping and failing.
pub(crate) fn classify(bad: &BadRange, newest_segment: bool, mode: RecoveryMode) -> Action {
    if bad.at_tail && newest_segment {
        Action::Truncate
    } else if mode == RecoveryMode::Tolerant {
        Action::Skip
    } else {
        Action::Fail
    }
}

pub(crate) fn corrupt(bad: &BadRange) -> Error {
    Error::Corrupt {
        path: bad.path.clone(),
        position: bad.start,
        reason: format!("{} (bad range {}..{})", bad.reason, bad.start, bad.end),
    }
}

/// Whether a header that fails to decode is a creation torn by a crash: the file is
/// shorter than a header or its header bytes are all zero.
pub(crate) fn torn_creation(data: &[u8]) -> bool {
    data.len() < SEGMENT_HEADER_LEN || data[..SEGMENT_HEADER_LEN].iter().all(|&b| b == 0)
}

/// Renames a damaged segment to `*.seg.bad` (tolerant mode), keeping it for inspection.
fn set_aside(path: &std::path::Path, why: &Error) -> Result<()> {
    let bad = path.with_extension("seg.bad");
    std::fs::rename(path, &bad).map_err(|e| Error::io("setting aside a damaged segment", path, e))?;
    tracing::warn!(file = %path.display(), error = %why, "damaged segment set aside");
    Ok(())
}

fn truncate_file(path: &std::path::Path, len: u64) -> Result<()> {
    let f = OpenOptions::new().write(true).open(path).map_err(|e| Error::io("opening for truncation", path, e))?;
    f.set_len(len).map_err(|e| Error::io("truncating", path, e))?;
    f.sync_all().map_err(|e| Error::io("syncing", path, e))
}

pub(crate) struct Recovered {
    pub(crate) start: ShardStart,
    pub(crate) segments: Vec<u64>,
    pub(crate) report: ShardReport,
}

/// Recovers one shard: scans beyond its checkpoint, repairs per `mode`, and rebuilds the
/// in-memory offsets and index positions of its streams.
///
/// A scan from the checkpoint that finds the log inconsistent with the index (records
/// beyond the checkpoint that the stored offsets already count) is retried as a full
/// re-index, which trusts the log alone: if the damage is in the log, that scan reports it
/// too; if only the checkpoint was stale (a log written by a version that could leave it
/// behind after removing a segment torn at creation), the shard opens.
pub(crate) fn recover_shard(
    dir: &std::path::Path,
    shard: u32,
    index: &Index,
    streams: &mut crate::hash::IdMap<Arc<StreamState>>,
    mode: RecoveryMode,
    max_body: u32,
    full: bool,
) -> Result<Recovered> {
    // Streams restored from their catalogue records (the index had lost them): kept across
    // the second attempt, which finds them known.
    let mut restored = std::collections::HashSet::new();
    match recover_shard_once(dir, shard, index, streams, &mut restored, mode, max_body, full) {
        Err(e @ Error::Corrupt { .. }) if !full => {
            tracing::warn!(shard, error = %e, "the log does not match the index checkpoint; re-indexing the whole shard");
            recover_shard_once(dir, shard, index, streams, &mut restored, mode, max_body, true)
        }
        other => other,
    }
}

#[allow(clippy::too_many_arguments)]
fn recover_shard_once(
    dir: &std::path::Path,
    shard: u32,
    index: &Index,
    streams: &mut crate::hash::IdMap<Arc<StreamState>>,
    restored: &mut std::collections::HashSet<u64>,
    mode: RecoveryMode,
    max_body: u32,
    full: bool,
) -> Result<Recovered> {
    let mut report = ShardReport { shard, ..ShardReport::default() };
    let mut segs = segment::list_segments(dir)?;
    report.segments = segs.len();
    let cp = if full { None } else { index.checkpoint(shard)? };
    let mut start_idx = 0;
    let mut start_at = 0usize;
    let mut next_lsn = 0;
    if let Some(cp) = cp {
        if let Some(i) = segs.iter().position(|(first, _)| *first == cp.pos.segment) {
            let len = std::fs::metadata(&segs[i].1).map(|m| m.len()).unwrap_or(0);
            if len >= cp.pos.at {
                start_idx = i;
                start_at = cp.pos.at as usize;
                next_lsn = cp.next_lsn;
                report.from_checkpoint = true;
            }
        }
    }
    if !report.from_checkpoint {
        let ours = streams.values().filter(|s| s.shard == shard);
        if cp.is_some() {
            tracing::warn!(shard, "index checkpoint does not match the log; re-indexing the whole shard");
        }
        for s in ours {
            index.delete_blocks(s.id)?;
            let first = s.first_offset.load(Ordering::Acquire);
            s.next_offset.store(first, Ordering::Release);
            *s.open.lock().unwrap_or_else(|p| p.into_inner()) = OpenBlock::at(first);
        }
    }

    // The streams this scan indexes, with their offsets and open blocks taken out of their
    // shared state (no lock or atomic per record); put back by `indexed.finish()`.
    let mut indexed = Indexing::default();
    // One read buffer for every segment (see `SegmentFile`).
    let mut buf = Vec::new();
    // The last segment kept, and where its valid records end.
    let mut kept: Option<(u64, u64)> = None;
    // The LSN at which the last run of deleted segments ended (0: none met): a stream
    // restored from the log may jump over offsets there, since only the index said where
    // retention cut it.
    let mut gap_end = 0u64;
    let mut i = start_idx;
    while i < segs.len() {
        let (first, path) = segs[i].clone();
        let newest = i + 1 == segs.len();
        let seg = match segment::SegmentFile::open(&path, &mut buf) {
            Ok(seg) => seg,
            // A compressed segment whose body does not decompress: like an unreadable header.
            Err(e @ Error::Corrupt { .. }) if mode == RecoveryMode::Tolerant => {
                set_aside(&path, &e)?;
                report.removed.push(path);
                segs.remove(i);
                continue;
            }
            Err(e) => return Err(e),
        };
        let header = match segment::check_header(&path, seg.head(), Some(shard), first) {
            Ok(h) => h,
            Err(e) => {
                if newest && torn_creation(seg.head()) {
                    std::fs::remove_file(&path).map_err(|e| Error::io("removing a torn new segment", &path, e))?;
                } else if mode == RecoveryMode::Tolerant {
                    set_aside(&path, &e)?;
                } else {
                    return Err(e);
                }
                report.removed.push(path);
                segs.remove(i);
                continue;
            }
        };
        // The checkpoint's segment is scanned from its start too (to rebuild its summary),
        // but records before the checkpoint are already indexed and only counted.
        let resume = i == start_idx && report.from_checkpoint;
        let indexed_before = if resume { start_at as u64 } else { 0 };
        let from = SEGMENT_HEADER_LEN;
        let lsn0 = header.first_lsn;
        if !resume && header.first_lsn < next_lsn {
            let e = Error::Corrupt {
                path: path.clone(),
                position: 0,
                reason: format!("segment starts at LSN {} but the previous one reached {}", header.first_lsn, next_lsn),
            };
            if mode == RecoveryMode::Strict {
                return Err(e);
            }
            tracing::warn!(error = %e, "overlapping segment; its older records are skipped");
        }
        if !resume && header.first_lsn > next_lsn {
            gap_end = header.first_lsn;
        }
        let mut orphans = 0u64;
        let mut gaps = Vec::new();
        let mut summary = SegSummary::default();
        // Full index blocks, written as one batch per segment.
        let mut blocks: Vec<(u64, u64, Vec<Pos>)> = Vec::new();
        let scan = seg.scan(from, lsn0, max_body, newest && format::marks_syncs(header.version), |r, at| {
            let len = format::encoded_len(r.key.as_ref().map_or(0, |k| k.len()), r.payload.len()) as u32;
            if r.meta.stream == CATALOG_STREAM {
                summary.catalog = true;
            } else {
                summary.add(r.meta.stream, r.meta.offset, r.meta.timestamp_ms, len as u64);
            }
            if at < indexed_before {
                return Ok(());
            }
            let mut bad = |why: String| -> Result<()> {
                if mode == RecoveryMode::Strict {
                    Err(Error::Corrupt { path: path.clone(), position: at, reason: why })
                } else {
                    orphans += 1;
                    Ok(())
                }
            };
            if r.meta.stream == CATALOG_STREAM {
                let meta = match StreamMeta::decode(r.payload) {
                    Ok(m) if m.id == r.meta.offset && m.shard == shard => m,
                    Ok(_) => return bad("catalogue record does not match its header".into()),
                    Err(e) => return bad(format!("catalogue record does not decode: {e}")),
                };
                if let std::collections::hash_map::Entry::Vacant(slot) = streams.entry(meta.id) {
                    tracing::info!(stream = %meta.name, id = meta.id, "stream restored from the log's catalogue record");
                    index.create_stream(&meta)?;
                    slot.insert(Arc::new(StreamState::from_meta(&meta)));
                    restored.insert(meta.id);
                }
                if restored.contains(&meta.id) {
                    if let Some(s) = indexed.get(streams, meta.id) {
                        s.last_lsn = Some(r.meta.lsn);
                    }
                }
                return Ok(());
            }
            let Some(s) = indexed.get(streams, r.meta.stream) else {
                return bad(format!("record of unknown stream id {}", r.meta.stream));
            };
            let next = s.next;
            if r.meta.offset < s.first_offset {
                return Ok(()); // expired by retention, not yet compacted away
            }
            if r.meta.offset < next {
                return bad(format!("stream {:?} offset {} repeats (expected {next})", s.state.name, r.meta.offset));
            }
            // Compaction leaves gaps in compacted streams, and retention in a stream restored
            // from the log alone where segments were deleted; anywhere else a gap is lost data.
            if r.meta.offset > next && mode == RecoveryMode::Strict && !s.state.compacted {
                let across_deleted = restored.contains(&s.state.id) && s.last_lsn.is_some_and(|l| l < gap_end);
                if !across_deleted {
                    return bad(format!("stream {:?} jumps from offset {next} to {}", s.state.name, r.meta.offset));
                }
                tracing::warn!(
                    stream = %s.state.name, from = next, to = r.meta.offset,
                    "stream restored from the log jumps over deleted segments: taken as retention"
                );
                gaps.push((s.state.name.to_string(), next, r.meta.offset));
            }
            s.last_lsn = Some(r.meta.lsn);
            let id = s.state.id;
            s.block.push(&s.state.name, r.meta.offset, Pos { segment: first, at, len }, false, |f, p| {
                blocks.push((id, f, p.to_vec()));
                Ok(())
            });
            s.next = r.meta.offset + 1;
            Ok(())
        })?;
        index.put_blocks(&blocks)?;
        report.orphan_records += orphans;
        report.retention_gaps.extend(gaps);
        report.segments_scanned += 1;
        report.records_scanned += scan.records;
        report.bytes_scanned += scan.valid_end.saturating_sub(from as u64);
        for bad in scan.bad {
            match classify(&bad, newest, mode) {
                Action::Truncate => {
                    tracing::info!(file = %bad.path.display(), at = bad.start, bytes = bad.end - bad.start, "truncating torn tail");
                    truncate_file(&path, bad.start)?;
                    report.truncated.push(bad);
                }
                Action::Skip => {
                    tracing::warn!(file = %bad.path.display(), start = bad.start, end = bad.end, reason = %bad.reason, "skipping damaged range");
                    report.skipped.push(bad);
                }
                Action::Fail => return Err(corrupt(&bad)),
            }
        }
        next_lsn = scan.last_lsn.map(|l| l + 1).unwrap_or(lsn0).max(next_lsn);
        if newest {
            indexed.finish();
            let start = ShardStart {
                active: Some((first, scan.valid_end)),
                active_format: header.version,
                next_lsn,
                summary,
                indexed_to: None,
            };
            return Ok(Recovered { start, segments: segs.iter().map(|(f, _)| *f).collect(), report });
        }
        index.put_segment(shard, first, &summary)?;
        kept = Some((first, scan.valid_end));
        i += 1;
    }
    indexed.finish();
    let start =
        ShardStart { active: None, active_format: 0, next_lsn, summary: SegSummary::default(), indexed_to: kept };
    Ok(Recovered { start, segments: segs.iter().map(|(f, _)| *f).collect(), report })
}

/// One stream being indexed by a recovery scan.
struct Indexed {
    state: Arc<StreamState>,
    next: u64,
    first_offset: u64,
    block: OpenBlock,
    /// LSN of the stream's last record (or catalogue record) met by this scan.
    last_lsn: Option<u64>,
}

/// The streams a recovery scan has met so far.
#[derive(Default)]
struct Indexing {
    streams: crate::hash::IdMap<Indexed>,
}

impl Indexing {
    /// Stream `id`, taken out of `known` on first use (`None`: no such stream).
    fn get(&mut self, known: &crate::hash::IdMap<Arc<StreamState>>, id: u64) -> Option<&mut Indexed> {
        use std::collections::hash_map::Entry;
        match self.streams.entry(id) {
            Entry::Occupied(e) => Some(e.into_mut()),
            Entry::Vacant(e) => {
                let state = known.get(&id)?.clone();
                let block = std::mem::take(&mut *state.open.lock().unwrap_or_else(|p| p.into_inner()));
                Some(e.insert(Indexed {
                    next: state.next_offset.load(Ordering::Acquire),
                    first_offset: state.first_offset.load(Ordering::Acquire),
                    block,
                    state,
                    last_lsn: None,
                }))
            }
        }
    }

    /// Puts the offsets and open blocks back into the streams' shared state.
    fn finish(&mut self) {
        for (_, s) in self.streams.drain() {
            s.state.next_offset.store(s.next, Ordering::Release);
            *s.state.open.lock().unwrap_or_else(|p| p.into_inner()) = s.block;
            s.state.dirty.store(true, Ordering::Release);
        }
    }
}

pub(crate) fn finish_streams(streams: &crate::hash::IdMap<Arc<StreamState>>) {
    for s in streams.values() {
        let next = s.next_offset.load(Ordering::Acquire);
        s.visible.store(next, Ordering::Release);
        if s.first_offset.load(Ordering::Acquire) > next {
            s.first_offset.store(next, Ordering::Release);
        }
    }
}
