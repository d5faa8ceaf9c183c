//! Retention and compaction: removing what no stream needs any more.
//!
//! * **Retention** advances each stream's first offset per its policy (age, bytes, count),
//!   then deletes every sealed segment in which nothing live remains (per the segment
//!   summaries stored when segments are sealed).
//! * **Compaction** rewrites sealed segments without their dead records: records below
//!   their stream's first offset, records of deleted streams, and — in compacted streams —
//!   keyed records superseded by a newer record with the same key. It can also compress
//!   sealed segments with zstd. A rewritten segment keeps its records' LSNs and offsets.
//!
//! Crash safety of a rewrite: the new file is written and synced under a temporary name, a
//! marker is persisted in the index, the file is renamed over the old one, the segment is
//! re-indexed, then the marker is removed. Recovery re-indexes any segment whose marker it
//! finds, so a crash at any point leaves either the old or the new file, correctly indexed.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::format::{self, SegmentHeader, SEGMENT_FLAG_COMPRESSED, SEGMENT_HEADER_LEN};
use crate::index::{Index, Pos, SegSummary};
use crate::options::Retention;
use crate::segment::{self, segment_path};
use crate::shard::{ShardShared, CATALOG_STREAM};
use crate::stream::StreamState;
use crate::wal::Wal;

/// What a retention or compaction pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MaintenanceReport {
    /// Records that fell out of their stream's retention window.
    pub records_expired: u64,
    /// Sealed segments deleted because nothing in them was live.
    pub segments_deleted: u64,
    /// Sealed segments rewritten without dead records.
    pub segments_compacted: u64,
    /// Sealed segments newly compressed.
    pub segments_compressed: u64,
    /// Records dropped by compaction.
    pub records_dropped: u64,
    /// Bytes of disk space given back.
    pub bytes_reclaimed: u64,
}

/// zstd level for sealed segments: fast to write, and reads decompress a whole segment.
const ZSTD_LEVEL: i32 = 3;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn marker_key(shard: u32, seg: u64) -> String {
    format!("compacting/{shard:08}/{seg:020}")
}

impl Wal {
    fn streams_by_id(&self) -> crate::hash::IdMap<Arc<StreamState>> {
        self.all_streams().into_iter().map(|s| (s.id, s)).collect()
    }

    /// The first offset `s` keeps under `r`.
    fn retention_point(&self, s: &Arc<StreamState>, r: &Retention, now: u64) -> Result<u64> {
        let next = s.visible.load(Ordering::Acquire);
        let mut first = s.first_offset.load(Ordering::Acquire);
        if let Some(n) = r.max_records {
            first = first.max(next.saturating_sub(n));
        }
        if let Some(age) = r.max_age {
            let cutoff = now.saturating_sub(age.as_millis() as u64);
            // Timestamps are non-decreasing along a stream: binary search the first kept.
            let (mut lo, mut hi) = (first, next);
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                match self.read_state(s, mid, 1, usize::MAX)?.first() {
                    Some(r) if r.timestamp_ms < cutoff => lo = r.offset + 1,
                    Some(_) => hi = mid,
                    None => lo = mid + 1,
                }
            }
            first = first.max(lo);
        }
        if let Some(max) = r.max_bytes {
            let mut sum = 0u64;
            let mut cache = None;
            let mut o = next;
            while o > first {
                if let Some(p) = s.position(self.index(), o - 1, u64::MAX, &mut cache)? {
                    sum += p.len as u64;
                    if sum > max {
                        break;
                    }
                }
                o -= 1;
            }
            first = first.max(o);
        }
        Ok(first.min(next))
    }

    /// Applies every stream's retention policy: advances first offsets and deletes the
    /// sealed segments in which nothing live remains. Call it periodically (the broker does).
    ///
    /// ```
    /// # use promptmq_wal::{Wal, Options, Retention};
    /// # let dir = tempfile::tempdir()?;
    /// let wal = Wal::open(dir.path(), Options::default().segment_bytes(4096))?;
    /// let s = wal.stream("metrics")?;
    /// wal.set_retention(&s, Retention { max_records: Some(10), ..Retention::FOREVER })?;
    /// for i in 0..500 { wal.append(&s, format!("sample {i}")).wait()?; }
    /// let report = wal.apply_retention()?;
    /// assert_eq!(s.first_offset(), 490);
    /// assert!(report.segments_deleted > 0);
    /// assert_eq!(wal.read(&s, 0, 100)?.first().map(|r| r.offset), Some(490));
    /// # Ok::<(), promptmq_wal::Error>(())
    /// ```
    pub fn apply_retention(&self) -> Result<MaintenanceReport> {
        let mut report = MaintenanceReport::default();
        let now = now_ms();
        let by_id = self.streams_by_id();
        for s in by_id.values() {
            let r = *s.retention.lock().unwrap_or_else(|p| p.into_inner());
            if r == Retention::FOREVER {
                continue;
            }
            let old = s.first_offset.load(Ordering::Acquire);
            let new = self.retention_point(s, &r, now)?;
            if new > old {
                // Not between a checkpoint's snapshot and its commit, which would store
                // the old first offset over the new one.
                let _positions = self.index().positions_guard();
                s.first_offset.store(new, Ordering::Release);
                self.index().put_stream_settings(&s.meta())?;
                self.index().delete_blocks_below(s.id, new)?;
                report.records_expired += new - old;
            }
        }
        for shard in self.shards() {
            let shared = &shard.shared;
            for seg in sealed_segments(shared, self.index())? {
                let Some(summary) = self.index().segment(shared.id, seg)? else { continue };
                if summary.catalog || !all_dead(&summary, &by_id) {
                    continue;
                }
                report.bytes_reclaimed += delete_segment(shared, self.index(), seg)?;
                report.segments_deleted += 1;
            }
        }
        if report.records_expired > 0 || report.segments_deleted > 0 {
            // A pass that changed nothing costs no sync.
            self.index().persist()?;
        }
        Ok(report)
    }

    /// Rewrites sealed segments without dead records (expired, of deleted streams, or —
    /// in compacted streams — superseded by a newer record with the same key), and with
    /// `compress` also zstd-compresses sealed segments. Reads are transparent across
    /// compressed and plain segments. Segments left with nothing live are deleted.
    ///
    /// On a full disk a segment whose rewritten copy does not fit stays as it was, and the
    /// pass goes on: later segments may be deleted outright, which frees space. The pass
    /// then returns [`Error::DiskFull`] for the first such segment.
    ///
    /// ```
    /// # use promptmq_wal::{Wal, Options, StreamOptions};
    /// # let dir = tempfile::tempdir()?;
    /// let wal = Wal::open(dir.path(), Options::default().shards(1).segment_bytes(4096))?;
    /// let retained = wal.stream_with("retained", StreamOptions { compacted: true, ..Default::default() })?;
    /// for i in 0..300 { wal.append_keyed(&retained, format!("topic/{}", i % 3), format!("v{i}")).wait()?; }
    /// wal.compact(true)?;
    /// let live: Vec<_> = wal.read(&retained, 0, 1000)?;
    /// assert!(live.len() < 300 && live.iter().any(|r| &r.payload[..] == b"v299"));
    /// # Ok::<(), promptmq_wal::Error>(())
    /// ```
    pub fn compact(&self, compress: bool) -> Result<MaintenanceReport> {
        let mut report = MaintenanceReport::default();
        let by_id = self.streams_by_id();
        let mut latest: HashMap<u64, HashMap<Bytes, u64>> = HashMap::new();
        for s in by_id.values().filter(|s| s.compacted) {
            latest.insert(s.id, self.latest_per_key(s)?);
        }
        let mut did_not_fit = None;
        for shard in self.shards() {
            let shared = &shard.shared;
            for seg in sealed_segments(shared, self.index())? {
                let Some(summary) = self.index().segment(shared.id, seg)? else { continue };
                if !summary.catalog && all_dead(&summary, &by_id) {
                    report.bytes_reclaimed += delete_segment(shared, self.index(), seg)?;
                    report.segments_deleted += 1;
                    continue;
                }
                match rewrite_segment(shared, self.index(), seg, compress, &by_id, &latest, &mut report) {
                    Err(e) if e.is_disk_full() => {
                        tracing::warn!(
                            shard = shared.id,
                            segment = seg,
                            "the compacted copy does not fit on the disk; segment left as it was"
                        );
                        did_not_fit.get_or_insert(e);
                    }
                    r => r?,
                }
            }
        }
        self.index().persist()?;
        match did_not_fit {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }

    fn latest_per_key(&self, s: &Arc<StreamState>) -> Result<HashMap<Bytes, u64>> {
        let mut latest = HashMap::new();
        let mut from = s.first_offset.load(Ordering::Acquire);
        loop {
            // Bounded in bytes too: a compacted stream of large records (a broker's session
            // states) read 4 096 at a time took gigabytes.
            let recs = self.read_state(s, from, 4096, READ_BATCH_BYTES)?;
            let Some(last) = recs.last() else { break };
            from = last.offset + 1;
            for r in recs {
                if let Some(k) = r.key {
                    // A copy: the key read is a slice of its whole record, which it would pin.
                    latest.insert(Bytes::copy_from_slice(&k), r.offset);
                }
            }
        }
        Ok(latest)
    }
}

/// Most bytes of records a maintenance pass reads at a time.
const READ_BATCH_BYTES: usize = 8 << 20;

/// The segments maintenance may rewrite or delete: not the newest (being appended to),
/// nor any from the one the shard's last committed checkpoint points into (recovery starts
/// there; the checkpoint that moves past it may still be in flight).
fn sealed_segments(shared: &ShardShared, index: &Index) -> Result<Vec<u64>> {
    let mut segs = shared.segment_list();
    segs.pop();
    // A checkpoint being committed moves on soon: read where it went.
    drop(index.positions_guard());
    if let Some(cp) = index.checkpoint(shared.id)? {
        segs.retain(|&s| s < cp.pos.segment);
    }
    Ok(segs)
}

fn all_dead(summary: &SegSummary, by_id: &crate::hash::IdMap<Arc<StreamState>>) -> bool {
    summary.streams.iter().all(|(id, ss)| match by_id.get(id) {
        None => true,
        Some(s) => ss.max_offset < s.first_offset.load(Ordering::Acquire),
    })
}

fn delete_segment(shared: &ShardShared, index: &Index, seg: u64) -> Result<u64> {
    let path = segment_path(&shared.dir, seg);
    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    {
        let _excl = shared.maintenance.write().unwrap_or_else(|p| p.into_inner());
        shared.remove_segment(seg);
    }
    // Nothing reads it any more: its file may become the shard's next segment.
    let recycled = shared.recycler.get().is_some_and(|r| {
        r.offer(&path).unwrap_or_else(|e| {
            tracing::warn!(segment = %path.display(), error = %e, "could not keep a deleted segment for reuse");
            false
        })
    });
    if !recycled {
        std::fs::remove_file(&path).map_err(|e| Error::io("deleting", &path, e))?;
    }
    std::fs::File::open(&shared.dir).and_then(|d| d.sync_all()).map_err(|e| Error::io("syncing", &shared.dir, e))?;
    index.delete_segment(shared.id, seg)?;
    tracing::info!(segment = %path.display(), bytes, "deleted a segment with nothing live");
    Ok(bytes)
}

/// Rewrites one sealed segment if that drops records or compresses it.
fn rewrite_segment(
    shared: &ShardShared,
    index: &Index,
    seg: u64,
    compress: bool,
    by_id: &crate::hash::IdMap<Arc<StreamState>>,
    latest: &HashMap<u64, HashMap<Bytes, u64>>,
    report: &mut MaintenanceReport,
) -> Result<()> {
    let path = segment_path(&shared.dir, seg);
    let data = segment::load(&path)?;
    let header = segment::check_header(&path, &data, Some(shared.id), seg)?;
    let was_compressed = header.flags & SEGMENT_FLAG_COMPRESSED != 0;
    let mut body = Vec::with_capacity(data.len());
    let mut dropped = 0u64;
    let mut kept_any = false;
    segment::scan(&path, &data, SEGMENT_HEADER_LEN, seg, u32::MAX, false, |r, at| {
        let keep = if r.meta.stream == CATALOG_STREAM {
            by_id.contains_key(&r.meta.offset)
        } else {
            match by_id.get(&r.meta.stream) {
                None => false,
                Some(s) if r.meta.offset < s.first_offset.load(Ordering::Acquire) => false,
                Some(s) => match (&r.key, latest.get(&s.id)) {
                    (Some(k), Some(l)) => l.get(*k).is_none_or(|&o| o <= r.meta.offset),
                    _ => true,
                },
            }
        };
        if keep {
            let len = format::encoded_len(r.key.as_ref().map_or(0, |k| k.len()), r.payload.len());
            body.extend_from_slice(&data[at as usize..at as usize + len]);
            kept_any = true;
        } else {
            dropped += 1;
        }
        Ok(())
    })?;
    let compress_now = compress && !was_compressed;
    if dropped == 0 && !compress_now {
        return Ok(());
    }
    if !kept_any {
        // Superseded records may still be below the stream's first offset or not: mark
        // every offset the segment held as removed before the file goes.
        let summary = index.segment(shared.id, seg)?.unwrap_or_default();
        for (id, ss) in &summary.streams {
            if let Some(s) = by_id.get(id) {
                let updates: Vec<_> = (ss.min_offset..=ss.max_offset).map(|o| (o, None)).collect();
                s.set_positions(index, &updates)?;
            }
        }
        report.bytes_reclaimed += delete_segment(shared, index, seg)?;
        report.segments_deleted += 1;
        report.records_dropped += dropped;
        return Ok(());
    }
    let compressed = compress || was_compressed;
    let new_header = SegmentHeader { flags: if compressed { SEGMENT_FLAG_COMPRESSED } else { 0 }, ..header };
    let mut file_bytes = new_header.encode().to_vec();
    if compressed {
        let z = zstd::encode_all(&body[..], ZSTD_LEVEL)
            .map_err(|e| Error::io("compressing", &path, std::io::Error::other(e.to_string())))?;
        file_bytes.extend_from_slice(&z);
    } else {
        file_bytes.extend_from_slice(&body);
    }
    let old_len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let tmp = path.with_extension(TMP_EXTENSION);
    // Until the rename the original is untouched: a copy that could not be finished (a full
    // disk, most likely) goes at once rather than hold space until the next open.
    let discard = |e: Error| {
        let _ = std::fs::remove_file(&tmp);
        e
    };
    write_synced(&tmp, &file_bytes).map_err(discard)?;
    index.put_meta_flag(&marker_key(shared.id, seg)).map_err(discard)?;
    {
        let _excl = shared.maintenance.write().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = std::fs::rename(&tmp, &path) {
            let _ = index.remove_meta_flag(&marker_key(shared.id, seg));
            return Err(discard(Error::io("replacing", &path, e)));
        }
        // The file is replaced whether or not its directory entry is durable yet: reads
        // must follow it now. (If the sync failed, the marker stays and the next open
        // re-indexes whichever file it finds.)
        let synced = std::fs::File::open(&shared.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io("syncing", &shared.dir, e));
        shared.invalidate(seg);
        reindex_segment(shared, index, seg, by_id)?;
        synced?;
    }
    index.remove_meta_flag(&marker_key(shared.id, seg))?;
    report.segments_compacted += u64::from(dropped > 0);
    report.segments_compressed += u64::from(compress_now);
    report.records_dropped += dropped;
    report.bytes_reclaimed += old_len.saturating_sub(file_bytes.len() as u64);
    Ok(())
}

/// File extension of a rewritten segment before it replaces the original.
pub(crate) const TMP_EXTENSION: &str = "seg.compacting";

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).map_err(|e| Error::io("creating", path, e))?;
    f.write_all(bytes).map_err(|e| Error::io("writing", path, e))?;
    f.sync_all().map_err(|e| Error::io("syncing", path, e))
}

/// Points the index at the records of a (rewritten) segment: every record found gets its
/// position; every offset the old summary covered but the segment no longer holds is
/// marked removed. Then stores the segment's new summary.
pub(crate) fn reindex_segment(
    shared: &ShardShared,
    index: &Index,
    seg: u64,
    by_id: &crate::hash::IdMap<Arc<StreamState>>,
) -> Result<()> {
    let path = segment_path(&shared.dir, seg);
    let data = segment::load(&path)?;
    let old = index.segment(shared.id, seg)?.unwrap_or_default();
    let mut found: HashMap<u64, Vec<(u64, Option<Pos>)>> = HashMap::new();
    let mut summary = SegSummary::default();
    segment::scan(&path, &data, SEGMENT_HEADER_LEN, seg, u32::MAX, false, |r, at| {
        if r.meta.stream == CATALOG_STREAM {
            summary.catalog = true;
            return Ok(());
        }
        let len = format::encoded_len(r.key.as_ref().map_or(0, |k| k.len()), r.payload.len()) as u32;
        summary.add(r.meta.stream, r.meta.offset, r.meta.timestamp_ms, len as u64);
        found.entry(r.meta.stream).or_default().push((r.meta.offset, Some(Pos { segment: seg, at, len })));
        Ok(())
    })?;
    for (id, ss) in &old.streams {
        let Some(s) = by_id.get(id) else { continue };
        let mut updates = found.remove(id).unwrap_or_default();
        let present: std::collections::HashSet<u64> = updates.iter().map(|(o, _)| *o).collect();
        // Offsets of this stream in this segment lie within [min, max]; but other segments
        // may hold offsets in between only if records interleave across segments, which they
        // cannot (a stream's records are in offset order along its shard).
        for o in ss.min_offset..=ss.max_offset {
            if !present.contains(&o) {
                updates.push((o, None));
            }
        }
        updates.sort_unstable_by_key(|(o, _)| *o);
        s.set_positions(index, &updates)?;
    }
    for (id, updates) in found {
        if let Some(s) = by_id.get(&id) {
            s.set_positions(index, &updates)?;
        }
    }
    index.put_segment(shared.id, seg, &summary)
}

/// How often the broker (or any embedder) might run maintenance; a suggestion only.
pub const SUGGESTED_MAINTENANCE_INTERVAL: Duration = Duration::from_secs(60);

/// Removes rewritten segments that a crash left under their temporary name (the original
/// is still in place, so they are simply discarded).
pub(crate) fn remove_leftovers(shard_dir: &Path) -> Result<()> {
    let rd = std::fs::read_dir(shard_dir).map_err(|e| Error::io("listing", shard_dir, e))?;
    for entry in rd.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(TMP_EXTENSION) {
            let p = entry.path();
            tracing::info!(file = %p.display(), "removing an unfinished compaction output");
            std::fs::remove_file(&p).map_err(|e| Error::io("removing", &p, e))?;
        } else if name.ends_with(crate::spare::SPARE_EXTENSION) {
            // A spare possibly half made when the process stopped, or a deleted segment
            // waiting to be reused: new ones are made when needed.
            let p = entry.path();
            std::fs::remove_file(&p).map_err(|e| Error::io("removing", &p, e))?;
        }
    }
    Ok(())
}

/// Re-indexes the segments whose compaction a crash interrupted after the rename.
pub(crate) fn finish_interrupted(
    shards: &[Arc<ShardShared>],
    index: &Index,
    by_id: &crate::hash::IdMap<Arc<StreamState>>,
) -> Result<()> {
    for key in index.meta_flags("compacting/")? {
        let mut parts = key.split('/').skip(1);
        let (Some(shard), Some(seg)) =
            (parts.next().and_then(|s| s.parse::<u32>().ok()), parts.next().and_then(|s| s.parse::<u64>().ok()))
        else {
            continue;
        };
        if let Some(shared) = shards.get(shard as usize) {
            if segment_path(&shared.dir, seg).exists() {
                tracing::info!(shard, segment = seg, "re-indexing a segment whose compaction was interrupted");
                reindex_segment(shared, index, seg, by_id)?;
            }
        }
        index.remove_meta_flag(&key)?;
    }
    Ok(())
}
