//! A shard: one append-only sequence of segment files, its single writer thread, and the
//! read handles on its segments.
//!
//! Appends for every stream mapped to the shard go through its [`CommitQueue`]; the
//! writer ([`ShardWriter`]) turns each batch into one write and (in `Always` mode) one
//! `fdatasync`, then makes the new records visible to readers and completes the waiters.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::background_sync::{BackgroundSync, SyncJob, Syncable};
use crate::checkpointer::{Checkpointer, Job};
use crate::commit::{run_writer, BatchSink, CommitQueue, Completion, Pending, Weighted};
use crate::error::{Error, Result};
use crate::format::{self, RecordMeta, SegmentHeader, FORMAT_VERSION, SEGMENT_HEADER_LEN};
use crate::index::{Checkpoint, Index, Pos, SegSummary};
use crate::io::{Backend, LogFile};
use crate::options::SyncMode;
use crate::segment::{segment_path, SegmentReader};
use crate::stream::StreamState;

/// Bytes written between two checkpoints of the index. Bounds the log recovery re-indexes.
const CHECKPOINT_BYTES: u64 = 32 << 20;

/// One record of an append request.
pub(crate) struct NewRecord {
    pub(crate) key: Option<Bytes>,
    pub(crate) payload: Bytes,
}

/// An append of one or more records to one stream; they get consecutive offsets.
pub(crate) struct AppendReq {
    /// `None` for a flush request, which carries no records.
    pub(crate) stream: Option<Arc<StreamState>>,
    pub(crate) records: Vec<NewRecord>,
    /// Sync before completing, whatever the sync mode (`Wal::flush`, and a catalogue
    /// record outside `None`); a flush request (no catalogue record) also checkpoints.
    pub(crate) force_sync: bool,
    /// With `stream: None`: the id of the stream whose catalogue record `records` holds.
    pub(crate) catalog: Option<u64>,
}

/// Stream id of catalogue records: the creation of each stream is logged (in the stream's
/// own shard, before any of its records) so the catalogue can be rebuilt from the log alone.
pub(crate) const CATALOG_STREAM: u64 = u64::MAX;

impl AppendReq {
    pub(crate) fn new(stream: &crate::Stream, records: Vec<NewRecord>) -> AppendReq {
        AppendReq { stream: Some(stream.state().clone()), records, force_sync: false, catalog: None }
    }
}

impl Weighted for AppendReq {
    fn weight(&self) -> usize {
        self.records.iter().map(|r| format::encoded_len(r.key.as_ref().map_or(0, |k| k.len()), r.payload.len())).sum()
    }
}

/// The parts of a shard that readers and the writer share.
#[derive(Debug)]
pub(crate) struct ShardShared {
    pub(crate) id: u32,
    pub(crate) dir: PathBuf,
    /// Readers hold it shared while they follow index positions into segments; compaction
    /// holds it exclusively while it swaps a rewritten segment and its index positions.
    pub(crate) maintenance: std::sync::RwLock<()>,
    /// Counters for [`crate::WalStats`].
    pub(crate) stats: ShardStats,
    /// Set when the shard stops accepting appends (until the log is reopened).
    pub(crate) failed: std::sync::atomic::AtomicBool,
    /// The error that failed it, for health checks.
    pub(crate) failure: std::sync::OnceLock<String>,
    /// Told about each group commit.
    pub(crate) observer: std::sync::OnceLock<Arc<dyn crate::CommitObserver>>,
    /// Where maintenance hands deleted segments for reuse (with preallocation only).
    pub(crate) recycler: std::sync::OnceLock<crate::spare::Recycler>,
    /// Segment first LSN → lazily opened read handle.
    segments: Mutex<BTreeMap<u64, Option<Arc<SegmentReader>>>>,
}

impl ShardShared {
    pub(crate) fn new(id: u32, dir: PathBuf, segments: impl IntoIterator<Item = u64>) -> Self {
        ShardShared {
            id,
            dir,
            maintenance: std::sync::RwLock::new(()),
            stats: ShardStats::default(),
            failed: Default::default(),
            failure: std::sync::OnceLock::new(),
            observer: std::sync::OnceLock::new(),
            recycler: std::sync::OnceLock::new(),
            segments: Mutex::new(segments.into_iter().map(|s| (s, None)).collect()),
        }
    }

    pub(crate) fn add_segment(&self, first_lsn: u64) {
        self.segments.lock().unwrap_or_else(|p| p.into_inner()).insert(first_lsn, None);
    }

    pub(crate) fn remove_segment(&self, first_lsn: u64) {
        self.segments.lock().unwrap_or_else(|p| p.into_inner()).remove(&first_lsn);
    }

    pub(crate) fn segment_list(&self) -> Vec<u64> {
        self.segments.lock().unwrap_or_else(|p| p.into_inner()).keys().copied().collect()
    }

    pub(crate) fn reader(&self, first_lsn: u64) -> Result<Arc<SegmentReader>> {
        let mut segs = self.segments.lock().unwrap_or_else(|p| p.into_inner());
        match segs.get_mut(&first_lsn) {
            None => Err(Error::Index(format!(
                "index points at segment {first_lsn} of shard {}, which does not exist; reopen the log to re-index",
                self.id
            ))),
            Some(Some(r)) => Ok(r.clone()),
            Some(slot) => {
                let r = Arc::new(SegmentReader::open(&segment_path(&self.dir, first_lsn))?);
                *slot = Some(r.clone());
                if r.is_compressed() {
                    // Decompressed segments live in memory: keep only a few of them.
                    let cached: Vec<u64> = segs
                        .iter()
                        .filter(|(k, v)| **k != first_lsn && v.as_ref().is_some_and(|r| r.is_compressed()))
                        .map(|(k, _)| *k)
                        .collect();
                    for k in cached.iter().take(cached.len().saturating_sub(MAX_DECOMPRESSED - 1)) {
                        segs.insert(*k, None);
                    }
                }
                Ok(r)
            }
        }
    }

    /// Drops the cached read handle of a segment that was rewritten.
    pub(crate) fn invalidate(&self, first_lsn: u64) {
        if let Some(slot) = self.segments.lock().unwrap_or_else(|p| p.into_inner()).get_mut(&first_lsn) {
            *slot = None;
        }
    }
}

/// Decompressed segments kept in memory per shard for reads.
const MAX_DECOMPRESSED: usize = 4;

/// Per-shard counters, updated by the writer.
#[derive(Debug, Default)]
pub(crate) struct ShardStats {
    pub(crate) records: std::sync::atomic::AtomicU64,
    pub(crate) batches: std::sync::atomic::AtomicU64,
    pub(crate) syncs: std::sync::atomic::AtomicU64,
    pub(crate) bytes: std::sync::atomic::AtomicU64,
    pub(crate) sync_nanos: std::sync::atomic::AtomicU64,
    pub(crate) segments: std::sync::atomic::AtomicU64,
    pub(crate) segments_unprepared: std::sync::atomic::AtomicU64,
    pub(crate) segments_recycled: std::sync::atomic::AtomicU64,
    /// Batches committed by a thread other than the writer (see [`crate::commit::Lead`]).
    pub(crate) batches_led: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// Where recovery left the shard: the segment to continue appending to.
pub(crate) struct ShardStart {
    pub(crate) active: Option<(u64, u64)>,
    /// Without an active segment (the newest was removed, e.g. torn at its creation): the
    /// last segment kept and its end. Everything up to there is indexed, so the checkpoint
    /// taken after recovery points there; left where it was, it would lag the streams'
    /// offsets that recovery stores with it, and the next open would re-index records that
    /// are already counted.
    pub(crate) indexed_to: Option<(u64, u64)>,
    /// The format version of the active segment's header (0 without one). Commits into a
    /// format 1 segment carry no `RECORD_FLAG_AFTER_SYNC`: a build that reads only format 1
    /// would take the flag for damage.
    pub(crate) active_format: u16,
    pub(crate) next_lsn: u64,
    /// What the active segment holds so far.
    pub(crate) summary: SegSummary,
}

pub(crate) struct Shard {
    pub(crate) shared: Arc<ShardShared>,
    queue: Arc<CommitQueue<AppendReq, u64>>,
    /// The writer's state: locked by the writer thread per batch, and by an appender that
    /// commits on its own thread (see [`CommitQueue::submit_or_commit`]).
    sink: Arc<crate::sync::Mutex<ShardWriter>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// `Interval` mode's sync thread.
    background: Mutex<Option<BackgroundSync>>,
    /// Lets a thread blocked on its append commit the queue itself (see [`crate::commit`]).
    lead: std::sync::Arc<dyn crate::commit::Lead>,
}

impl Shard {
    /// Starts the writer thread of a recovered shard.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn start(
        shared: Arc<ShardShared>,
        start: ShardStart,
        backend: Arc<dyn Backend>,
        index: Arc<Index>,
        sync: SyncMode,
        segment_bytes: u64,
        max_batch_bytes: usize,
        queue_bytes: usize,
        preallocate: bool,
        max_yield: Duration,
    ) -> Result<Shard> {
        let spares = match preallocate {
            true => Some(
                crate::spare::Spares::start(&shared.dir, segment_bytes, format!("wal-spare-{}", shared.id))
                    .map_err(|e| Error::io("starting the spare-segment thread of", shared.dir.clone(), e))?,
            ),
            false => None,
        };
        let (file, seg_first, seg_len) = match start.active {
            Some((first, len)) => {
                let path = segment_path(&shared.dir, first);
                let mut file = backend.open(&path).map_err(|e| Error::io("opening", &path, e))?;
                // What recovery kept may still be only in the page cache (after a kill, not a
                // power cut). Made durable now, it is what the first commit's
                // `RECORD_FLAG_AFTER_SYNC` says it is.
                if sync != SyncMode::None {
                    file.sync_data().map_err(|e| Error::sync_failed(&path, e))?;
                }
                (Some(file), first, len)
            }
            None => (None, start.next_lsn, 0),
        };
        if let Some(s) = &spares {
            let _ = shared.recycler.set(s.recycler());
        }
        if let (Some(s), Some(_)) = (&spares, &file) {
            // A reopened log continues its active segment.
            s.segment_started(seg_len);
        }
        // `indexed_to` is for the checkpoint after recovery only: appends start a new segment.
        let index_for_checkpoints = index.clone();
        let queue = Arc::new(CommitQueue::new(queue_bytes));
        let yield_budget = Arc::new(crate::commit::YieldBudget::new(max_yield, sync == SyncMode::Always));
        let writer = ShardWriter {
            yield_budget: yield_budget.clone(),
            shared: shared.clone(),
            backend,
            index,
            sync,
            segment_bytes,
            max_batch_bytes,
            file,
            seg_first,
            seg_len,
            synced_len: seg_len,
            flags_commits: format::marks_syncs(start.active_format),
            next_lsn: start.next_lsn,
            buf: Vec::new(),
            failed: None,
            unsynced_since: None,
            last_sync_took: None,
            sync_avg: Duration::ZERO,
            touched: Default::default(),
            bytes_since_checkpoint: 0,
            scratch: Vec::new(),
            local: Default::default(),
            summary: start.summary,
            spares,
            active_recycled: false,
            checkpointer: Checkpointer::start(index_for_checkpoints, shared.id)
                .map_err(|e| Error::io("starting the checkpoint thread of", shared.dir.clone(), e))?,
            deferred: Default::default(),
            checkpoint_due: false,
            sealed_summaries: Vec::new(),
        };
        let sink = Arc::new(crate::sync::Mutex::new(writer));
        let (q, s) = (queue.clone(), sink.clone());
        let handle = std::thread::Builder::new()
            .name(format!("wal-shard-{}", shared.id))
            .spawn(move || run_writer(&q, &s))
            .map_err(|e| Error::io("starting the writer thread of", shared.dir.clone(), e))?;
        let lead: std::sync::Arc<dyn crate::commit::Lead> = std::sync::Arc::new(crate::commit::Committer {
            queue: queue.clone(),
            sink: sink.clone(),
            led: shared.stats.batches_led.clone(),
            budget: yield_budget,
        });
        let shard = Shard { shared, queue, sink, writer: Mutex::new(Some(handle)), background: Mutex::new(None), lead };
        if let SyncMode::Interval(every) = sync {
            let name = format!("wal-sync-{}", shard.shared.id);
            let bg = BackgroundSync::start(name, shard.sink.clone(), every)
                .map_err(|e| Error::io("starting the sync thread of", shard.shared.dir.clone(), e))?;
            *shard.background.lock().unwrap_or_else(|p| p.into_inner()) = Some(bg);
        }
        Ok(shard)
    }

    pub(crate) fn submit(&self, req: AppendReq) -> Completion<u64> {
        self.queue.submit_or_commit(req, &self.sink).led_by(&self.lead)
    }

    /// What a thread blocked on an append of this shard may commit itself.
    pub(crate) fn lead(&self) -> &std::sync::Arc<dyn crate::commit::Lead> {
        &self.lead
    }

    /// Appends made together ([`crate::Batch`]): committed or queued as one group, in order.
    pub(crate) fn submit_group(&self, group: Vec<Pending<AppendReq, u64>>) {
        self.queue.submit_or_commit_group(group, &self.sink)
    }

    /// Stops accepting appends, lets the writer finish what is queued, sync and checkpoint.
    pub(crate) fn close(&self) {
        self.queue.close();
        if let Some(h) = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = h.join();
        }
        // After the writer: its shutdown has synced everything already.
        if let Some(mut bg) = self.background.lock().unwrap_or_else(|p| p.into_inner()).take() {
            bg.stop();
        }
    }
}

impl Drop for Shard {
    fn drop(&mut self) {
        self.close();
    }
}

/// Longest a commit waits for its batch to fill (see [`crate::commit::Gather`]).
const MAX_GATHER: Duration = Duration::from_millis(1);

/// The writer of a shard; runs on its own thread inside [`run_writer`].
struct ShardWriter {
    shared: Arc<ShardShared>,
    backend: Arc<dyn Backend>,
    index: Arc<Index>,
    sync: SyncMode,
    segment_bytes: u64,
    max_batch_bytes: usize,
    file: Option<Box<dyn LogFile>>,
    seg_first: u64,
    seg_len: u64,
    /// Bytes of the active segment known durable (== seg_len in `Always` mode).
    synced_len: u64,
    /// The active segment's format has `RECORD_FLAG_AFTER_SYNC` (see `ShardStart::active_format`).
    flags_commits: bool,
    next_lsn: u64,
    buf: Vec<u8>,
    failed: Option<String>,
    /// When the oldest write not yet synced was made (`Interval` mode syncs `d` after it).
    unsynced_since: Option<Instant>,
    /// Duration of the last `fdatasync`, taken by the commit observer.
    last_sync_took: Option<Duration>,
    /// Moving average of `fdatasync` durations: sizes the gather window of group commit and
    /// how long blocked waiters yield.
    sync_avg: Duration,
    /// How long threads blocked on an append of this shard yield before they sleep.
    yield_budget: Arc<crate::commit::YieldBudget>,
    touched: crate::hash::IdMap<Arc<StreamState>>,
    bytes_since_checkpoint: u64,
    /// (request index, offset, byte position, length) of each record of the current batch.
    scratch: Vec<(usize, u64, u64, u32)>,
    /// Next offset per stream within the current batch.
    local: crate::hash::IdMap<u64>,
    /// What the active segment holds; stored in the index when the segment is sealed.
    summary: SegSummary,
    /// Prepares the next segment (see [`crate::spare`]); `None` without preallocation.
    spares: Option<crate::spare::Spares>,
    /// The active segment was made from a deleted segment's file: past `seg_len` it holds
    /// old records (see `spare`), cut off before it is sealed or the log is closed.
    active_recycled: bool,
    /// Commits checkpoints off this thread (see [`crate::checkpointer`]).
    checkpointer: Checkpointer,
    /// Streams holding finished index blocks back while a checkpoint is committed.
    deferred: crate::hash::IdMap<Arc<StreamState>>,
    /// A checkpoint was wanted while one was still in flight: take it at the next commit.
    checkpoint_due: bool,
    /// What the segments sealed since the last checkpoint hold, stored with the next one.
    sealed_summaries: Vec<(u64, SegSummary)>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl ShardWriter {
    fn seg_path(&self) -> PathBuf {
        segment_path(&self.shared.dir, self.seg_first)
    }

    fn fail(&mut self, e: &Error) -> Error {
        let reason = e.to_string();
        tracing::error!(shard = self.shared.id, error = %reason, "shard stops accepting appends until reopened");
        let _ = self.shared.failure.set(reason.clone());
        self.failed = Some(reason);
        self.shared.failed.store(true, Ordering::Release);
        e.duplicate()
    }

    /// Syncs the active segment; a failed sync fails the shard (after a failed
    /// `fdatasync` the kernel may have dropped the dirty pages, so retrying proves nothing).
    fn sync_now(&mut self) -> Result<()> {
        if let Some(f) = self.file.as_mut() {
            let t = Instant::now();
            if let Err(e) = f.sync_data() {
                let e = Error::sync_failed(self.seg_path(), e);
                return Err(self.fail(&e));
            }
            self.count_sync(t.elapsed());
        }
        self.synced_len = self.seg_len;
        self.unsynced_since = None;
        Ok(())
    }

    fn count_sync(&mut self, took: Duration) {
        let st = &self.shared.stats;
        st.syncs.fetch_add(1, Ordering::Relaxed);
        st.sync_nanos.fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
        self.last_sync_took = Some(took);
        self.sync_avg = (self.sync_avg * 7 + took) / 8;
        self.yield_budget.follow(self.sync_avg);
    }

    /// Cuts the active segment's file to its records. A segment made from a spare is
    /// longer: zeros, which recovery reads as the end anyway (so failing to cut them costs
    /// only space), or a reused segment's old records, which in a sealed segment recovery
    /// would take for damage — those must be gone, durably, before the segment is sealed.
    fn cut_to_records(&mut self) -> Result<()> {
        let Some(file) = self.file.as_mut() else { return Ok(()) };
        let path = segment_path(&self.shared.dir, self.seg_first);
        if !std::fs::metadata(&path).is_ok_and(|m| m.len() > self.seg_len) {
            return Ok(());
        }
        let cut = file.truncate(self.seg_len).and_then(|_| file.sync_data());
        match cut {
            Ok(()) => {
                self.active_recycled = false;
                Ok(())
            }
            Err(e) if self.active_recycled => Err(Error::io("cutting a reused segment's old records off", path, e)),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "could not cut a sealed segment to its length");
                Ok(())
            }
        }
    }

    /// Seals the active segment (if any) and starts a new one at `next_lsn`.
    fn roll(&mut self) -> Result<()> {
        if self.file.is_some() && self.sync != SyncMode::None && self.synced_len < self.seg_len {
            self.sync_now()?;
        }
        self.cut_to_records()?;
        let first = self.next_lsn;
        let path = segment_path(&self.shared.dir, first);
        let spare = self.spares.as_ref().map(|s| s.take());
        self.shared.stats.segments.fetch_add(1, Ordering::Relaxed);
        if matches!(spare, Some(None)) {
            self.shared.stats.segments_unprepared.fetch_add(1, Ordering::Relaxed);
        }
        let create = |w: &Self| w.backend.create(&path).map_err(|e| Error::io("creating", &path, e));
        // Whether the new segment's file is a reused one (holding old records past its end).
        let (mut f, recycled) = match spare.flatten() {
            Some(spare) => match std::fs::rename(&spare.path, &path).and_then(|_| self.backend.open(&path)) {
                Ok(f) => (f, spare.recycled),
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "could not use the spare segment; creating one");
                    let _ = std::fs::remove_file(&path);
                    (create(self)?, false)
                }
            },
            None => (create(self)?, false),
        };
        if recycled {
            self.shared.stats.segments_recycled.fetch_add(1, Ordering::Relaxed);
        }
        let header = SegmentHeader { version: FORMAT_VERSION, flags: 0, shard: self.shared.id, first_lsn: first };
        let durable = self.sync != SyncMode::None;
        let res = f
            .write_all_at(0, &header.encode())
            .and_then(|_| if durable { f.sync_data() } else { Ok(()) })
            .and_then(|_| if durable { self.backend.sync_dir(&self.shared.dir) } else { Ok(()) });
        if let Err(e) = res {
            drop(f);
            // Nothing was sealed: the old segment stays active.
            if let Err(rm) = std::fs::remove_file(&path) {
                let e = Error::io("removing a half-created segment", &path, rm);
                return Err(self.fail(&e));
            }
            return Err(Error::io("creating", &path, e));
        }
        if self.file.is_some() {
            // Stored with the next checkpoint, off this thread (one entry per stream: a
            // millisecond with 10 000). Until then maintenance leaves the segment anyway:
            // it is not before the last committed checkpoint's.
            self.sealed_summaries.push((self.seg_first, std::mem::take(&mut self.summary)));
        }
        self.file = Some(f);
        self.active_recycled = recycled;
        self.seg_first = first;
        self.seg_len = SEGMENT_HEADER_LEN as u64;
        if let Some(s) = &self.spares {
            s.segment_started(self.seg_len);
        }
        self.synced_len = self.seg_len;
        self.flags_commits = true;
        self.unsynced_since = None;
        self.shared.add_segment(first);
        // Checkpoint at the start of the new segment, so that a checkpoint points into the
        // active segment (maintenance leaves the one the last checkpoint points into).
        self.checkpoint(false);
        Ok(())
    }

    /// Stores the open index blocks and the shard's checkpoint, covering what is durable:
    /// committed on the checkpoint thread, or with `wait` here (after the one in flight).
    /// Without `wait`, a checkpoint still in flight puts this one off to a later commit.
    fn checkpoint(&mut self, wait: bool) {
        // Stream offsets and the checkpoint must describe the same, durable, prefix.
        if self.file.is_none() || self.synced_len != self.seg_len {
            return;
        }
        let failed = if wait { Some(self.checkpointer.wait_idle()) } else { self.checkpointer.idle() };
        let Some(failed) = failed else {
            self.checkpoint_due = true;
            return;
        };
        self.retry_checkpoint_of(failed);
        // The checkpoint claims every position before it: blocks held back go first.
        if !self.write_deferred() {
            self.checkpoint_due = true;
            return;
        }
        let cp =
            Checkpoint { pos: Pos { segment: self.seg_first, at: self.synced_len, len: 0 }, next_lsn: self.next_lsn };
        // Compaction must not change positions between the snapshot and the commit (the
        // commit would store the old ones) nor after the blocks leave memory.
        let positions = self.index.positions_guard_now();
        let streams: Vec<_> = self.touched.drain().map(|(_, s)| s).collect();
        let states = streams.iter().map(|s| s.checkpoint_state()).collect();
        let job = Job { cp, streams, states, summaries: std::mem::take(&mut self.sealed_summaries) };
        self.bytes_since_checkpoint = 0;
        self.checkpoint_due = false;
        if wait {
            if let Err(streams) = job.commit(&self.index, self.shared.id) {
                drop(positions);
                self.retry_checkpoint_of(streams);
            }
        } else {
            self.index.checkpoint_started();
            drop(positions);
            self.checkpointer.submit(job);
        }
    }

    /// The streams of a checkpoint that failed go into the next one, taken soon.
    fn retry_checkpoint_of(&mut self, streams: Vec<Arc<StreamState>>) {
        for s in streams {
            self.touched.entry(s.id).or_insert(s);
        }
        self.checkpoint_due = true;
    }

    /// Writes the index blocks held back during a checkpoint's commit; false if some could
    /// not be written (they stay in memory, and are tried again).
    fn write_deferred(&mut self) -> bool {
        let mut all = true;
        self.deferred.retain(|_, s| match s.write_sealed(&self.index) {
            Ok(()) => false,
            Err(e) => {
                tracing::warn!(stream = %s.name, error = %e, "index block write failed; will retry");
                all = false;
                true
            }
        });
        all
    }

    fn write_batch(&mut self, batch: &[Pending<AppendReq, u64>]) -> Result<Vec<u64>> {
        if let Some(reason) = &self.failed {
            return Err(Error::ShardFailed { shard: self.shared.id, reason: reason.clone() });
        }
        if self.file.is_none() || self.seg_len >= self.segment_bytes {
            self.roll()?;
        }
        // Blocks that fill up while a checkpoint is committed wait for it (see
        // `crate::checkpointer`); once it is done they go to the index.
        let defer = self.checkpointer.busy();
        if !defer && !self.deferred.is_empty() {
            self.write_deferred();
        }
        self.buf.clear();
        self.scratch.clear();
        self.local.clear();
        let ts = now_ms();
        let mut lsn = self.next_lsn;
        let batch_first_lsn = lsn;
        let mut outs = Vec::with_capacity(batch.len());
        // The commit's first record says whether all before it is durable (recovery tells a
        // torn commit from damaged synced data by it). Mode `none` never knows that.
        let after_sync = self.flags_commits && self.sync != SyncMode::None && self.synced_len >= self.seg_len;
        let mut first_flags = if after_sync { format::RECORD_FLAG_AFTER_SYNC } else { 0 };
        let mut force_sync = false;
        // A flush also checkpoints the index; a stream's creation only needs its record synced.
        let mut flush = false;
        let mut catalog = false;
        for (i, p) in batch.iter().enumerate() {
            force_sync |= p.req.force_sync;
            flush |= p.req.force_sync && p.req.catalog.is_none();
            let Some(s) = &p.req.stream else {
                let id = p.req.catalog.unwrap_or(0);
                outs.push(id);
                for r in p.req.records.iter().filter(|_| p.req.catalog.is_some()) {
                    let flags = std::mem::take(&mut first_flags);
                    let meta = RecordMeta { lsn, stream: CATALOG_STREAM, offset: id, timestamp_ms: ts, flags };
                    format::encode_record(&mut self.buf, &meta, None, &r.payload);
                    lsn += 1;
                    catalog = true;
                }
                continue;
            };
            let next = self.local.entry(s.id).or_insert_with(|| s.next_offset.load(Ordering::Acquire));
            outs.push(*next);
            for r in &p.req.records {
                let before = self.buf.len();
                let at = self.seg_len + before as u64;
                let flags = std::mem::take(&mut first_flags);
                let meta = RecordMeta { lsn, stream: s.id, offset: *next, timestamp_ms: ts, flags };
                format::encode_record(&mut self.buf, &meta, r.key.as_deref(), &r.payload);
                self.scratch.push((i, *next, at, (self.buf.len() - before) as u32));
                *next += 1;
                lsn += 1;
            }
        }
        let file = self.file.as_mut().ok_or(Error::Closed)?;
        if let Err(e) = file.write_all_at(self.seg_len, &self.buf) {
            // Formatted here only: a commit is a few microseconds, the file name is not free.
            let path = segment_path(&self.shared.dir, self.seg_first);
            // Roll back a short write so no partial record stays behind a future one.
            let err = Error::io("writing", &path, e);
            if let Err(te) = file.truncate(self.seg_len) {
                let te = Error::io("truncating after a failed write", &path, te);
                self.fail(&te);
            }
            return Err(err);
        }
        self.seg_len += self.buf.len() as u64;
        self.next_lsn = lsn;
        if let Some(s) = &self.spares {
            s.progress(self.seg_len);
        }
        self.unsynced_since.get_or_insert_with(Instant::now);
        match self.sync {
            _ if force_sync && self.synced_len < self.seg_len => self.sync_now()?,
            SyncMode::Always => self.sync_now()?,
            // A checkpoint is due below, and it may only cover what is durable (while the
            // one before is still being committed, the next can wait: no sync for it yet).
            SyncMode::Interval(_)
                if (self.checkpoint_due || self.bytes_since_checkpoint + self.buf.len() as u64 >= CHECKPOINT_BYTES)
                    && !self.checkpointer.busy() =>
            {
                self.sync_now()?
            }
            // The background sync thread syncs within the interval.
            SyncMode::Interval(_) => {}
            SyncMode::None => self.synced_len = self.seg_len,
        }
        self.bytes_since_checkpoint += self.buf.len() as u64;
        let st = &self.shared.stats;
        st.batches.fetch_add(1, Ordering::Relaxed);
        st.records.fetch_add(self.scratch.len() as u64, Ordering::Relaxed);
        st.bytes.fetch_add(self.buf.len() as u64, Ordering::Relaxed);
        let sync = self.last_sync_took.take();
        if let Some(o) = self.shared.observer.get() {
            let records = (lsn - batch_first_lsn) as usize;
            o.committed(&crate::CommitInfo { shard: self.shared.id, records, bytes: self.buf.len(), sync });
        }
        // The records are durable per the sync mode: index them, then make them visible.
        self.summary.catalog |= catalog;
        for &(i, offset, at, len) in &self.scratch {
            if let Some(s) = &batch[i].req.stream {
                if s.push_position(&self.index, offset, Pos { segment: self.seg_first, at, len }, defer) {
                    self.deferred.entry(s.id).or_insert_with(|| s.clone());
                }
                self.summary.add(s.id, offset, ts, len as u64);
            }
        }
        for p in batch {
            let Some(s) = &p.req.stream else { continue };
            // Taken out so that a stream with many requests in the batch is published once.
            if let Some(next) = self.local.remove(&s.id) {
                s.next_offset.store(next, Ordering::Release);
                s.visible.store(next, Ordering::Release);
                s.notify.notify();
                self.touched.entry(s.id).or_insert_with(|| s.clone());
            }
        }
        if flush {
            self.checkpoint(true);
        } else if self.checkpoint_due || self.bytes_since_checkpoint >= CHECKPOINT_BYTES {
            self.checkpoint(false);
        }
        Ok(outs)
    }
}

impl BatchSink<AppendReq> for ShardWriter {
    type Out = u64;

    fn commit(&mut self, batch: &[Pending<AppendReq, u64>]) -> Result<Vec<u64>> {
        self.write_batch(batch)
    }

    fn shutdown(&mut self) {
        if self.failed.is_some() {
            return;
        }
        if self.sync != SyncMode::None && self.synced_len < self.seg_len && self.sync_now().is_err() {
            return;
        }
        if self.active_recycled {
            // Otherwise the next open would find the old records and cut them as a torn tail.
            if let Err(e) = self.cut_to_records() {
                tracing::warn!(error = %e, "closing: the next open will cut the rest of the reused segment");
            }
        }
        self.checkpoint(true);
    }

    fn max_batch_bytes(&self) -> usize {
        self.max_batch_bytes
    }

    /// Half a typical sync, only where each commit syncs: there a commit that starts with
    /// part of the returning appenders costs a whole extra sync; without syncs a commit is
    /// cheap and waiting would only add latency.
    fn gather_window(&self) -> Option<Duration> {
        match self.sync {
            SyncMode::Always => Some((self.sync_avg / 2).min(MAX_GATHER)),
            _ => None,
        }
    }

    /// Only a commit that is a `write` and nothing more: no sync due, no segment to roll,
    /// no checkpoint to store — those stay on the writer thread, off the appender's
    /// (often an async runtime's worker).
    fn commit_inline(&self, group: &[Pending<AppendReq, u64>]) -> bool {
        let w: u64 = group.iter().map(|p| p.req.weight() as u64).sum();
        self.sync != SyncMode::Always
            && group.iter().all(|p| !p.req.force_sync && p.req.stream.is_some())
            && self.failed.is_none()
            && self.file.is_some()
            && self.seg_len + w < self.segment_bytes
            && self.bytes_since_checkpoint + w < CHECKPOINT_BYTES
            && !self.checkpoint_due
            && self.deferred.is_empty()
    }
}

impl Syncable for ShardWriter {
    fn sync_due_in(&self) -> Option<Duration> {
        match (self.sync, self.unsynced_since) {
            (SyncMode::Interval(d), Some(t)) if self.synced_len < self.seg_len => Some(d.saturating_sub(t.elapsed())),
            _ => None,
        }
    }

    fn begin_sync(&mut self) -> Option<SyncJob> {
        if self.failed.is_some() || self.synced_len >= self.seg_len {
            return None;
        }
        let handle = match self.file.as_ref()?.sync_handle() {
            Ok(h) => h,
            Err(e) => {
                // Syncing here holds appends back for the sync, but keeps the promise.
                tracing::debug!(shard = self.shared.id, error = %e, "no separate sync handle; syncing on the writer");
                let _ = self.sync_now();
                return None;
            }
        };
        Some(SyncJob { handle, segment: self.seg_first, len: self.seg_len, started: Instant::now() })
    }

    fn end_sync(&mut self, job: SyncJob, result: std::io::Result<()>) {
        let took = job.started.elapsed();
        if let Err(e) = result {
            // As on the writer: after a failed fdatasync the pages may be gone.
            let e = Error::sync_failed(segment_path(&self.shared.dir, job.segment), e);
            self.fail(&e);
            return;
        }
        self.count_sync(took);
        // A roll in the meantime synced the old segment itself.
        if job.segment == self.seg_first && job.len > self.synced_len {
            self.synced_len = job.len;
            // What was written after the sync started is at most as old as its start.
            self.unsynced_since = (self.synced_len < self.seg_len).then_some(job.started);
        }
    }
}

/// The directory of shard `id` under the log's root.
pub(crate) fn shard_dir(root: &Path, id: u32) -> PathBuf {
    root.join("shards").join(format!("{id:04}"))
}
