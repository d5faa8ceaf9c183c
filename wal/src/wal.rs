//! The public handle: opening a log directory, streams, appends, reads, tails, cursors.

use std::fs::{File, OpenOptions};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use bytes::Bytes;

use crate::commit::{completion_pair, Completion, Pending};
use crate::error::{Error, Result};
use crate::format::{self, Decoded, FRAME_LEN};
use crate::index::{Checkpoint, Index, Pos, StreamMeta};
use crate::io::Backend;
use crate::names::StreamNames;
use crate::options::{Options, Retention};
use crate::recovery::{self, RecoveryReport};
use crate::shard::{shard_dir, AppendReq, NewRecord, Shard, ShardShared};
use crate::stream::StreamState;

/// Streams by id.
type StreamMap = crate::hash::IdMap<Arc<StreamState>>;

/// Name of the file that marks a directory as a log and records its layout.
pub(crate) const MARKER_FILE: &str = "PROMPTMQ_WAL";
const MARKER_VERSION: u32 = 1;
/// Longest stream name, in bytes.
pub const MAX_STREAM_NAME: usize = 4096;

/// A record read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Offset within its stream.
    pub offset: u64,
    /// Append time, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// Key, for keyed records.
    pub key: Option<Bytes>,
    /// Payload (a slice of the read buffer, not a copy).
    pub payload: Bytes,
}

/// Per-stream settings given at creation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamOptions {
    /// Retention policy; `None` uses the log's default.
    pub retention: Option<Retention>,
    /// Keep only the newest record per key when segments are compacted.
    pub compacted: bool,
}

/// A handle on a stream. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Stream {
    state: Arc<StreamState>,
}

/// Appends to one or more streams, handed to the log together ([`Wal::batch`]): the
/// appends of each shard go to its writer as one group, in the order they were made, so
/// one write (and one sync, per the sync mode) carries them all. Each append has its own
/// [`Completion`], resolved once that record is durable.
///
/// Nothing reaches the log before [`Batch::submit`]; a batch dropped without it is
/// submitted then, so no append made through it is silently lost.
#[must_use = "appends reach the log when the batch is submitted"]
pub struct Batch {
    wal: Wal,
    /// Per shard, the appends in the order they were made (shards touched so far only).
    shards: Vec<(u32, Vec<Pending<AppendReq, u64>>)>,
}

impl Batch {
    /// Adds an append of one record to `stream`; see [`Wal::append`].
    pub fn append(&mut self, stream: &Stream, payload: impl Into<Bytes>) -> Completion<u64> {
        self.push(stream, None, payload.into())
    }

    /// Adds an append of one keyed record to `stream`; see [`Wal::append_keyed`].
    pub fn append_keyed(
        &mut self,
        stream: &Stream,
        key: impl Into<Bytes>,
        payload: impl Into<Bytes>,
    ) -> Completion<u64> {
        self.push(stream, Some(key.into()), payload.into())
    }

    fn push(&mut self, stream: &Stream, key: Option<Bytes>, payload: Bytes) -> Completion<u64> {
        let recs = match self.wal.new_records([(key, payload)]) {
            Ok(r) => r,
            Err(e) => return Completion::ready(Err(e)),
        };
        let shard = stream.state.shard;
        let (done, completion) = completion_pair();
        // Waited on from a thread, it may commit its shard's queue itself (see `commit`).
        let completion = match self.wal.inner.shards.get(shard as usize) {
            Some(s) => completion.led_by(s.lead()),
            None => completion,
        };
        let req = AppendReq::new(stream, recs);
        match self.shards.iter_mut().find(|(s, _)| *s == shard) {
            Some((_, group)) => group.push(Pending { req, done }),
            None => self.shards.push((shard, vec![Pending { req, done }])),
        }
        completion
    }

    /// How many appends the batch holds.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|(_, g)| g.len()).sum()
    }

    /// Whether the batch holds no append.
    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }

    /// Hands the appends to the log (see [`Wal::batch`]).
    pub fn submit(mut self) {
        self.submit_now();
    }

    fn submit_now(&mut self) {
        for (shard, group) in self.shards.drain(..) {
            self.wal.inner.shards[shard as usize].submit_group(group);
        }
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        self.submit_now();
    }
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch").field("appends", &self.len()).finish()
    }
}

impl Stream {
    pub(crate) fn state(&self) -> &Arc<StreamState> {
        &self.state
    }

    /// The stream's name.
    pub fn name(&self) -> &str {
        &self.state.name
    }
    /// The stream's numeric id (stable for the life of the directory).
    pub fn id(&self) -> u64 {
        self.state.id
    }
    /// The next offset that will be assigned; all offsets below are readable.
    pub fn next_offset(&self) -> u64 {
        self.state.visible.load(Ordering::Acquire)
    }
    /// The first offset still stored.
    pub fn first_offset(&self) -> u64 {
        self.state.first_offset.load(Ordering::Acquire)
    }
}

/// Counters of a log since it was opened. `records / batches` is the average group-commit
/// batch; `sync_time / syncs` the average `fdatasync`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WalStats {
    /// Stream records appended (catalogue records not counted).
    pub records: u64,
    /// Group-commit batches written.
    pub batches: u64,
    /// `fdatasync` calls.
    pub syncs: u64,
    /// Bytes written (records, with their framing).
    pub bytes: u64,
    /// Time spent in `fdatasync`.
    pub sync_time: std::time::Duration,
    /// Segments started (rolls).
    pub segments: u64,
    /// Segments started without a prepared spare ([`Options::preallocate`] on, but the
    /// spare was not ready in time): their syncs also carry the file's growth. Many of them
    /// mean the log fills segments faster than spares are made: use larger segments.
    pub segments_unprepared: u64,
    /// Segments made from the file of a segment that retention or compaction deleted
    /// (with [`Options::preallocate`]): no zeros had to be written for them.
    pub segments_recycled: u64,
    /// Batches committed on an appender's thread instead of the shard's writer thread: by
    /// a thread blocked in [`Completion::wait`], or through [`Wal::commit_ready`].
    pub batches_led: u64,
}

/// A summary of one stream, for tools and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    /// Name.
    pub name: String,
    /// Numeric id.
    pub id: u64,
    /// Shard the stream lives in.
    pub shard: u32,
    /// First stored offset.
    pub first_offset: u64,
    /// Next offset to be assigned.
    pub next_offset: u64,
    /// Retention policy.
    pub retention: Retention,
    /// Key compaction enabled.
    pub compacted: bool,
}

/// Streams being created: the next id, and the names in creation (a second caller for
/// the same name waits for the first instead of creating it twice).
struct Creating {
    next_id: u64,
    names: std::collections::HashSet<String>,
}

/// A name in [`Creating::names`], released on drop.
struct NameInCreation<'a> {
    inner: &'a Inner,
    name: &'a str,
}

impl Drop for NameInCreation<'_> {
    fn drop(&mut self) {
        self.inner.create.lock().unwrap_or_else(|p| p.into_inner()).names.remove(self.name);
        self.inner.created.notify_all();
    }
}

struct Inner {
    root: PathBuf,
    opts: Options,
    index: Arc<Index>,
    shards: Vec<Shard>,
    streams: RwLock<StreamNames>,
    create: Mutex<Creating>,
    /// Signalled when a creation ends (see [`Creating`]).
    created: std::sync::Condvar,
    report: RecoveryReport,
    closed: AtomicBool,
    /// A thread is committing through [`Wal::commit_ready`] (one at a time).
    idle_commit: AtomicBool,
    _lock: File,
}

/// A durable, multi-stream log in one directory.
///
/// ```
/// use promptmq_wal::{Wal, Options};
/// let dir = tempfile::tempdir()?;
/// let wal = Wal::open(dir.path(), Options::default().shards(2))?;
/// let s = wal.stream("sensors/temp")?;
/// let off = wal.append(&s, "21.5").wait()?; // returns once durable
/// assert_eq!(off, 0);
/// let recs = wal.read(&s, 0, 10)?;
/// assert_eq!(&recs[0].payload[..], b"21.5");
/// wal.close()?;
/// # Ok::<(), promptmq_wal::Error>(())
/// ```
#[derive(Clone)]
pub struct Wal {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal").field("root", &self.inner.root).field("shards", &self.inner.shards.len()).finish()
    }
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

fn lock_dir(root: &Path) -> Result<File> {
    let path = root.join("LOCK");
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io("opening", &path, e))?;
    // SAFETY: flock on a valid, owned file descriptor has no memory-safety preconditions.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(Error::Locked { path });
    }
    Ok(f)
}

/// Reads the shard count from the marker, creating the marker for a new directory.
pub(crate) fn read_or_init_marker(root: &Path, opts: &Options) -> Result<u32> {
    let marker = root.join(MARKER_FILE);
    match std::fs::read_to_string(&marker) {
        Ok(text) => parse_marker(root, &text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let non_empty = std::fs::read_dir(root)
                .map_err(|e| Error::io("listing", root, e))?
                .filter_map(|e| e.ok())
                .any(|e| e.file_name() != "LOCK");
            if non_empty {
                return Err(Error::NotAWalDirectory {
                    path: root.into(),
                    reason: format!("it is not empty and has no {MARKER_FILE} file; point the log at an empty or existing log directory"),
                });
            }
            let text = format!("promptmq-wal {MARKER_VERSION}\nshards {}\n", opts.shards);
            let tmp = root.join(format!("{MARKER_FILE}.tmp"));
            std::fs::write(&tmp, &text).map_err(|e| Error::io("writing", &tmp, e))?;
            File::open(&tmp).and_then(|f| f.sync_all()).map_err(|e| Error::io("syncing", &tmp, e))?;
            std::fs::rename(&tmp, &marker).map_err(|e| Error::io("renaming", &marker, e))?;
            File::open(root).and_then(|f| f.sync_all()).map_err(|e| Error::io("syncing", root, e))?;
            Ok(opts.shards)
        }
        Err(e) => Err(Error::io("reading", marker, e)),
    }
}

pub(crate) fn parse_marker(root: &Path, text: &str) -> Result<u32> {
    let bad = |why: String| Error::NotAWalDirectory { path: root.into(), reason: why };
    let mut lines = text.lines();
    let version = lines
        .next()
        .and_then(|l| l.strip_prefix("promptmq-wal "))
        .and_then(|v| v.trim().parse::<u32>().ok())
        .ok_or_else(|| bad(format!("{MARKER_FILE} is not a promptmq-wal marker")))?;
    if version != MARKER_VERSION {
        return Err(bad(format!("layout version {version} is not supported (this build reads {MARKER_VERSION})")));
    }
    lines
        .find_map(|l| l.strip_prefix("shards "))
        .and_then(|v| v.trim().parse::<u32>().ok())
        .filter(|&n| n > 0)
        .ok_or_else(|| bad(format!("{MARKER_FILE} has no valid shard count")))
}

impl Wal {
    /// Opens (or creates) the log in `dir`, running recovery first.
    pub fn open(dir: impl AsRef<Path>, opts: Options) -> Result<Wal> {
        Self::open_with_backend(dir, opts, crate::io::default_backend())
    }

    /// Like [`Wal::open`], with an explicit I/O backend (e.g. a fault-injecting one in tests).
    pub fn open_with_backend(dir: impl AsRef<Path>, opts: Options, backend: Arc<dyn Backend>) -> Result<Wal> {
        opts.validate()?;
        let started = Instant::now();
        let root = dir.as_ref().to_path_buf();
        if !root.is_dir() {
            if !opts.create || root.exists() {
                return Err(Error::NotAWalDirectory { path: root, reason: "no such directory".into() });
            }
            std::fs::create_dir_all(&root).map_err(|e| Error::io("creating", &root, e))?;
        }
        let lock = lock_dir(&root)?;
        let shard_count = read_or_init_marker(&root, &opts)?;
        if shard_count != opts.shards {
            tracing::info!(
                configured = opts.shards,
                stored = shard_count,
                "keeping the shard count the log was created with"
            );
        }
        let index = Arc::new(Index::open(&root.join("index"), opts.sync)?);
        let mut by_id: StreamMap = Default::default();
        // What the index holds now, so that the checkpoint below rewrites only what changed.
        let mut stored: crate::hash::IdMap<StreamMeta> = Default::default();
        for m in index.load_streams()? {
            if m.shard >= shard_count {
                return Err(Error::Index(format!(
                    "stream {:?} is in shard {} but the log has {shard_count}",
                    m.name, m.shard
                )));
            }
            by_id.insert(m.id, Arc::new(StreamState::from_meta(&m)));
            stored.insert(m.id, m);
        }
        let max_body = (opts.max_record_bytes + format::RECORD_HEADER_LEN + u16::MAX as usize) as u32;
        let mut report = RecoveryReport::default();
        // Shards are independent (a stream lives in exactly one): recover them in parallel,
        // each with the streams it owns.
        let mut per_shard: Vec<StreamMap> = (0..shard_count).map(|_| Default::default()).collect();
        for (id, s) in by_id.drain() {
            per_shard[s.shard as usize].insert(id, s);
        }
        let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(shard_count as usize);
        let mut results: Vec<Option<Result<recovery::Recovered>>> = (0..shard_count).map(|_| None).collect();
        std::thread::scope(|scope| {
            let mut handles = Vec::new();
            let mut jobs: Vec<Vec<(u32, &mut StreamMap)>> = (0..workers).map(|_| Vec::new()).collect();
            for (id, map) in per_shard.iter_mut().enumerate() {
                jobs[id % workers].push((id as u32, map));
            }
            for job in jobs {
                let (root, index, opts) = (&root, &index, &opts);
                handles.push(scope.spawn(move || {
                    job.into_iter()
                        .map(|(id, map)| {
                            let sdir = shard_dir(root, id);
                            let res = std::fs::create_dir_all(&sdir)
                                .map_err(|e| Error::io("creating", &sdir, e))
                                .and_then(|_| crate::maintenance::remove_leftovers(&sdir))
                                .and_then(|_| {
                                    recovery::recover_shard(
                                        &sdir,
                                        id,
                                        index,
                                        map,
                                        opts.recovery,
                                        max_body,
                                        opts.full_recovery,
                                    )
                                });
                            (id, res)
                        })
                        .collect::<Vec<_>>()
                }));
            }
            for h in handles {
                match h.join() {
                    Ok(done) => {
                        for (id, res) in done {
                            results[id as usize] = Some(res);
                        }
                    }
                    Err(_) => tracing::error!("a recovery thread panicked"),
                }
            }
        });
        for map in per_shard {
            by_id.extend(map);
        }
        let mut shards = Vec::with_capacity(shard_count as usize);
        for (id, res) in results.into_iter().enumerate() {
            let rec = res.ok_or_else(|| Error::Index(format!("recovery of shard {id} did not finish")))??;
            report.shards.push(rec.report);
            let shared = Arc::new(ShardShared::new(id as u32, shard_dir(&root, id as u32), rec.segments));
            if let Some(o) = &opts.observer {
                let _ = shared.observer.set(o.clone());
            }
            shards.push((shared, rec.start));
        }
        recovery::finish_streams(&by_id);
        let shared_list: Vec<_> = shards.iter().map(|(s, _)| s.clone()).collect();
        crate::maintenance::finish_interrupted(&shared_list, &index, &by_id)?;
        // Checkpoint what recovery established, atomically (one batch, one sync for every
        // shard): the streams' offsets now include the re-indexed tail, so the checkpoint
        // must move to the tail's end too.
        let per_shard: Vec<_> = shards
            .iter()
            .map(|(shared, start)| {
                // A stream whose catalogue entry is unchanged and that has no open block
                // would be written as it is (with 100 000 streams, 11 MB of index journal
                // at every open).
                let (ours, states): (Vec<_>, Vec<_>) = by_id
                    .values()
                    .filter(|s| s.shard == shared.id)
                    .map(|s| (s, s.checkpoint_state()))
                    .filter(|(s, (meta, block))| block.is_some() || stored.get(&s.id) != Some(meta))
                    .unzip();
                let cp = start
                    .active
                    .or(start.indexed_to)
                    .map(|(segment, at)| Checkpoint { pos: Pos { segment, at, len: 0 }, next_lsn: start.next_lsn });
                (shared.id, cp, ours, states)
            })
            .collect();
        let batch: Vec<_> = per_shard.iter().map(|(id, cp, _, states)| (*id, cp.as_ref(), &states[..])).collect();
        index.commit_checkpoints(&batch)?;
        for (_, _, ours, states) in &per_shard {
            for (s, state) in ours.iter().zip(states) {
                s.checkpointed(state);
            }
        }
        let mut started_shards = Vec::with_capacity(shards.len());
        for (shared, start) in shards {
            started_shards.push(Shard::start(
                shared,
                start,
                backend.clone(),
                index.clone(),
                opts.sync,
                opts.segment_bytes,
                opts.max_batch_bytes,
                opts.max_batch_bytes * 4,
                opts.preallocate && opts.sync != crate::SyncMode::None,
                opts.wait_yield,
            )?);
        }
        let next_id = index.get_meta_u64("next_stream_id")?.unwrap_or(0).max(by_id.keys().max().map_or(0, |m| m + 1));
        report.duration = started.elapsed();
        tracing::info!(
            dir = %root.display(),
            shards = shard_count,
            streams = by_id.len(),
            records_scanned = report.records_scanned(),
            ms = report.duration.as_millis() as u64,
            "log opened"
        );
        let mut streams = StreamNames::default();
        for s in by_id.into_values() {
            streams.insert_highest(s);
        }
        Ok(Wal {
            inner: Arc::new(Inner {
                root,
                opts,
                index,
                shards: started_shards,
                streams: RwLock::new(streams),
                create: Mutex::new(Creating { next_id, names: Default::default() }),
                created: std::sync::Condvar::new(),
                report,
                closed: AtomicBool::new(false),
                idle_commit: AtomicBool::new(false),
                _lock: lock,
            }),
        })
    }

    /// Counters since open, summed over shards (for metrics and benchmarks).
    ///
    /// ```
    /// # use promptmq_wal::{Wal, Options};
    /// # let dir = tempfile::tempdir()?;
    /// let wal = Wal::open(dir.path(), Options::default().shards(1))?;
    /// let s = wal.stream("s")?;
    /// wal.append(&s, "x").wait()?;
    /// let st = wal.stats();
    /// assert_eq!(st.records, 1);
    /// assert!(st.batches >= 1 && st.syncs >= 1);
    /// # Ok::<(), promptmq_wal::Error>(())
    /// ```
    pub fn stats(&self) -> WalStats {
        let mut out = WalStats::default();
        for s in &self.inner.shards {
            let st = &s.shared.stats;
            out.records += st.records.load(Ordering::Relaxed);
            out.batches += st.batches.load(Ordering::Relaxed);
            out.syncs += st.syncs.load(Ordering::Relaxed);
            out.bytes += st.bytes.load(Ordering::Relaxed);
            out.sync_time += std::time::Duration::from_nanos(st.sync_nanos.load(Ordering::Relaxed));
            out.segments += st.segments.load(Ordering::Relaxed);
            out.segments_unprepared += st.segments_unprepared.load(Ordering::Relaxed);
            out.segments_recycled += st.segments_recycled.load(Ordering::Relaxed);
            out.batches_led += st.batches_led.load(Ordering::Relaxed);
        }
        out
    }

    /// Commits on the calling thread each shard's queued batch that is ready to go and that
    /// no other thread is committing; returns how many batches it committed.
    ///
    /// For async servers. An appender that `.await`s its [`Completion`] leaves the commit to
    /// the shard's writer thread, so every commit costs two thread wake-ups: the writer's,
    /// then the runtime worker's that polls the appenders again. A runtime worker that has
    /// run out of tasks (tokio: `Builder::on_thread_park`) can call this to commit what its
    /// tasks just queued at once, without waking the writer. Where a thread wake-up costs a
    /// fair part of an `fdatasync` (virtual machines), tasks that append and wait in a loop
    /// gain the most: on a 2-vCPU VM, 8 such tasks made 13–26 % more appends per second
    /// with it (`BENCHMARKS.md`, `wal-bench --only tasks`).
    ///
    /// It blocks the calling thread for the commit: a write and, under
    /// [`SyncMode::Always`](crate::SyncMode::Always), an `fdatasync` (now and then also a
    /// segment roll or an index checkpoint). At most one thread at a time commits through
    /// it; the others return 0 at once. Two ways to use it:
    /// - On a multi-threaded runtime, as below: the other workers keep running tasks while
    ///   one waits for the disk.
    /// - On a current-thread runtime given to appending (an ingest loop, one runtime per
    ///   core): the runtime becomes the group-commit loop. Its tasks run until each waits
    ///   for an append, then its thread commits them all with one write and one sync, and
    ///   runs them again. That saves both wake-ups; on a 2-vCPU VM, 8 tasks made 87–92 % of
    ///   the appends per second of a plain write-and-`fdatasync` loop. But nothing else on
    ///   that runtime runs during a sync (100 µs to milliseconds): keep latency-sensitive
    ///   work such as a server's sockets off it.
    ///
    /// After a commit made this way, the writer stops waking for each append: it expects
    /// the next idle worker to commit, looks at the queue every 250 µs, and takes what no
    /// thread took. A thread that finds a commit under way hands what is queued back to the
    /// writer at once; a batch still gathering (more appends expected, see the shard's
    /// group commit) is left for the next idle worker. So an append may wait up to 250 µs,
    /// once, when its workers become busy before the batch is ready.
    ///
    /// ```
    /// # use promptmq_wal::{Wal, Options};
    /// # let dir = tempfile::tempdir()?;
    /// let wal = Wal::open(dir.path(), Options::default())?;
    /// let idle = wal.clone();
    /// let rt = tokio::runtime::Builder::new_multi_thread()
    ///     .worker_threads(2)
    ///     .on_thread_park(move || {
    ///         idle.commit_ready();
    ///     })
    ///     .build()?;
    /// let s = wal.stream("s")?;
    /// let offset = rt.block_on(async { wal.append(&s, "a").await })?;
    /// assert_eq!(offset, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn commit_ready(&self) -> usize {
        struct Turn<'a>(&'a AtomicBool);
        impl Drop for Turn<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        if self.inner.idle_commit.swap(true, Ordering::Acquire) {
            // What this thread's tasks queued must not wait for the writer's next look.
            self.inner.shards.iter().for_each(|s| s.lead().hand_over());
            return 0;
        }
        let _turn = Turn(&self.inner.idle_commit);
        // One commit per shard: a worker that kept committing while others queue more would
        // never get back to its own tasks.
        self.inner.shards.iter().filter(|s| s.lead().lead_or_hand_over()).count()
    }

    /// `Ok` while the log accepts appends; otherwise why not: closed, or a shard failed (a
    /// write or `fdatasync` error; reopen the log after fixing the device). For health checks.
    ///
    /// ```
    /// # use promptmq_wal::{Wal, Options};
    /// # let dir = tempfile::tempdir()?;
    /// let wal = Wal::open(dir.path(), Options::default())?;
    /// assert!(wal.health().is_ok());
    /// # Ok::<(), promptmq_wal::Error>(())
    /// ```
    pub fn health(&self) -> Result<()> {
        self.check_open()?;
        for s in &self.inner.shards {
            if s.shared.failed.load(Ordering::Acquire) {
                let reason = s.shared.failure.get().map_or("a write or sync failed earlier; see the log", |r| r);
                return Err(Error::ShardFailed { shard: s.shared.id, reason: reason.to_string() });
            }
        }
        Ok(())
    }

    /// Segment files on disk and their total size in bytes (for metrics and tools).
    ///
    /// ```
    /// # use promptmq_wal::{Wal, Options};
    /// # let dir = tempfile::tempdir()?;
    /// let wal = Wal::open(dir.path(), Options::default())?;
    /// let s = wal.stream("s")?;
    /// wal.append(&s, "x").wait()?;
    /// let (segments, bytes) = wal.disk_usage()?;
    /// assert!(segments >= 1 && bytes > 0);
    /// # Ok::<(), promptmq_wal::Error>(())
    /// ```
    pub fn disk_usage(&self) -> Result<(u64, u64)> {
        let (mut n, mut bytes) = (0, 0);
        for s in &self.inner.shards {
            for (_, path) in crate::segment::list_segments(&s.shared.dir)? {
                n += 1;
                // A segment removed by retention meanwhile simply no longer counts.
                bytes += std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            }
        }
        Ok((n, bytes))
    }

    /// What recovery found and did when this log was opened.
    ///
    /// ```
    /// # use promptmq_wal::{Wal, Options};
    /// # let dir = tempfile::tempdir()?;
    /// # let wal = Wal::open(dir.path(), Options::default())?;
    /// let report = wal.recovery_report();
    /// assert!(report.is_clean());
    /// println!("{} records re-indexed in {:?}", report.records_scanned(), report.duration);
    /// # Ok::<(), promptmq_wal::Error>(())
    /// ```
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.inner.report
    }

    /// The directory of this log.
    pub fn path(&self) -> &Path {
        &self.inner.root
    }

    /// The stream named `name`, created (durably) with default settings if missing.
    ///
    /// ```
    /// # use promptmq_wal::{Wal, Options};
    /// # let dir = tempfile::tempdir()?;
    /// # let wal = Wal::open(dir.path(), Options::default())?;
    /// let a = wal.stream("sensors/1")?;
    /// let again = wal.stream("sensors/1")?;
    /// assert_eq!(a.id(), again.id());
    /// # Ok::<(), promptmq_wal::Error>(())
    /// ```
    pub fn stream(&self, name: &str) -> Result<Stream> {
        self.stream_with(name, StreamOptions::default())
    }

    /// The stream named `name`, created with `opts` if missing (an existing stream keeps
    /// its settings; change retention with [`Wal::set_retention`]).
    ///
    /// ```
    /// # use promptmq_wal::{Wal, Options, Retention, StreamOptions};
    /// # let dir = tempfile::tempdir()?;
    /// # let wal = Wal::open(dir.path(), Options::default())?;
    /// let keep_100 = Retention { max_records: Some(100), ..Retention::FOREVER };
    /// let s = wal.stream_with("recent", StreamOptions { retention: Some(keep_100), compacted: false })?;
    /// assert_eq!(wal.streams()[0].retention, keep_100);
    /// # let _ = s;
    /// # Ok::<(), promptmq_wal::Error>(())
    /// ```
    pub fn stream_with(&self, name: &str, opts: StreamOptions) -> Result<Stream> {
        if let Some(s) = self.lookup(name) {
            return Ok(s);
        }
        if name.is_empty() || name.len() > MAX_STREAM_NAME {
            return Err(Error::InvalidStreamName(format!("length {} is outside 1..={MAX_STREAM_NAME}", name.len())));
        }
        self.check_open()?;
        let id = {
            let mut c = self.inner.create.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if let Some(s) = self.lookup(name) {
                    return Ok(s);
                }
                if !c.names.contains(name) {
                    break;
                }
                c = self.inner.created.wait(c).unwrap_or_else(|p| p.into_inner());
            }
            c.names.insert(name.to_string());
            // The id is used up even if creation fails below: the catalogue record may
            // already be in the log, and recovery would bring it back.
            c.next_id += 1;
            c.next_id - 1
        };
        // Released however the creation ends, or callers waiting for the name would wait forever.
        let _creating = NameInCreation { inner: &self.inner, name };
        self.create_stream(id, name, opts)
    }

    /// Writes stream `id`'s index entry and its catalogue record (durable per the sync
    /// mode), and makes it visible. Creations of different names run concurrently, so their
    /// catalogue records share group commits.
    fn create_stream(&self, id: u64, name: &str, opts: StreamOptions) -> Result<Stream> {
        let meta = StreamMeta {
            id,
            name: name.into(),
            shard: (fnv1a(name) % self.inner.shards.len() as u64) as u32,
            first_offset: 0,
            next_offset: 0,
            retention: opts.retention.unwrap_or(self.inner.opts.retention),
            compacted: opts.compacted,
        };
        // The index entry first, not synced: a checkpoint that covers the catalogue record
        // is committed after it, and its sync makes the entry durable; until then recovery
        // scans the record and restores the stream from it. So a creation costs one log
        // sync, shared with the creations and appends of the same group commit.
        self.inner.index.create_stream(&meta)?;
        let shard = &self.inner.shards[meta.shard as usize];
        let logged = shard.submit(AppendReq {
            stream: None,
            records: vec![NewRecord { key: None, payload: Bytes::from(meta.encode()) }],
            // `None` promises no sync, and its records need the catalogue record no more
            // than the page cache holds it.
            force_sync: self.inner.opts.sync != crate::SyncMode::None,
            catalog: Some(meta.id),
        });
        logged.wait()?;
        let state = Arc::new(StreamState::from_meta(&meta));
        self.inner.streams.write().unwrap_or_else(|p| p.into_inner()).insert(state.clone());
        Ok(Stream { state })
    }

    /// The stream named `name`, if it exists.
    ///
    /// ```
    /// # use promptmq_wal::{Wal, Options};
    /// # let dir = tempfile::tempdir()?;
    /// # let wal = Wal::open(dir.path(), Options::default())?;
    /// assert!(wal.lookup("nope").is_none());
    /// wal.stream("yes")?;
    /// assert!(wal.lookup("yes").is_some());
    /// # Ok::<(), promptmq_wal::Error>(())
    /// ```
    pub fn lookup(&self, name: &str) -> Option<Stream> {
        self.inner.streams.read().unwrap_or_else(|p| p.into_inner()).get(name).map(|s| Stream { state: s.clone() })
    }

    /// All streams, sorted by name.
    ///
    /// ```
    /// # use promptmq_wal::{Wal, Options};
    /// # let dir = tempfile::tempdir()?;
    /// # let wal = Wal::open(dir.path(), Options::default())?;
    /// wal.stream("b")?;
    /// wal.stream("a")?;
    /// let names: Vec<_> = wal.streams().into_iter().map(|s| s.name).collect();
    /// assert_eq!(names, ["a", "b"]);
    /// # Ok::<(), promptmq_wal::Error>(())
    /// ```
    pub fn streams(&self) -> Vec<StreamInfo> {
        self.streams_with_prefix("")
    }

    /// The streams whose name starts with `prefix`, sorted by name. Only those are copied:
    /// cheaper than [`Wal::streams`] when a log has many streams and few are wanted.
    ///
    /// ```
    /// # use promptmq_wal::{Wal, Options};
    /// # let dir = tempfile::tempdir()?;
    /// # let wal = Wal::open(dir.path(), Options::default())?;
    /// for name in ["sensors/b", "sensors/a", "other"] {
    ///     wal.stream(name)?;
    /// }
    /// let names: Vec<_> = wal.streams_with_prefix("sensors/").into_iter().map(|s| s.name).collect();
    /// assert_eq!(names, ["sensors/a", "sensors/b"]);
    /// # Ok::<(), promptmq_wal::Error>(())
    /// ```
    pub fn streams_with_prefix(&self, prefix: &str) -> Vec<StreamInfo> {
        self.inner
            .streams
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .with_prefix(prefix)
            .map(|s| {
                let m = s.meta();
                StreamInfo {
                    name: m.name.to_string(),
                    id: m.id,
                    shard: m.shard,
                    first_offset: m.first_offset,
                    next_offset: s.visible.load(Ordering::Acquire),
                    retention: m.retention,
                    compacted: m.compacted,
                }
            })
            .collect()
    }

    fn check_open(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    /// Appends one record. The returned [`Completion`] resolves to the record's offset once
    /// it is durable under the sync mode: `.await` it, or call `.wait()` from a thread.
    ///
    /// A thread gets the most out of the disk by keeping appends in flight, so that every
    /// commit carries many of them, rather than waiting for each (see the crate's README):
    ///
    /// ```
    /// # use promptmq_wal::{Wal, Options};
    /// # let dir = tempfile::tempdir()?;
    /// # let wal = Wal::open(dir.path(), Options::default())?;
    /// let orders = wal.stream("orders")?;
    /// let mut in_flight = std::collections::VecDeque::new();
    /// for i in 0..1000 {
    ///     in_flight.push_back(wal.append(&orders, format!("order #{i}")));
    ///     if in_flight.len() == 64 {
    ///         if let Some(oldest) = in_flight.pop_front() {
    ///             oldest.wait()?; // durable now; the later ones keep the next commits full
    ///         }
    ///     }
    /// }
    /// for c in in_flight {
    ///     c.wait()?;
    /// }
    /// assert_eq!(orders.next_offset(), 1000);
    /// # Ok::<(), promptmq_wal::Error>(())
    /// ```
    pub fn append(&self, stream: &Stream, payload: impl Into<Bytes>) -> Completion<u64> {
        self.append_batch(stream, [(None, payload.into())])
    }

    /// Appends one keyed record (key compaction keeps the newest record per key).
    ///
    /// ```
    /// # use promptmq_wal::{Wal, Options};
    /// # let dir = tempfile::tempdir()?;
    /// # let wal = Wal::open(dir.path(), Options::default())?;
    /// let s = wal.stream("config")?;
    /// wal.append_keyed(&s, "timeout", "30").wait()?;
    /// let r = &wal.read(&s, 0, 1)?[0];
    /// assert_eq!(r.key.as_deref(), Some(&b"timeout"[..]));
    /// # Ok::<(), promptmq_wal::Error>(())
    /// ```
    pub fn append_keyed(&self, stream: &Stream, key: impl Into<Bytes>, payload: impl Into<Bytes>) -> Completion<u64> {
        self.append_batch(stream, [(Some(key.into()), payload.into())])
    }

    /// Appends several records to one stream atomically with respect to ordering: they get
    /// consecutive offsets and are made durable together. Resolves to the first offset.
    ///
    /// ```
    /// # use promptmq_wal::{Wal, Options};
    /// # let dir = tempfile::tempdir()?;
    /// # let wal = Wal::open(dir.path(), Options::default())?;
    /// let s = wal.stream("batch")?;
    /// let first = wal.append_batch(&s, [(None, "a".into()), (Some("k".into()), "b".into())]).wait()?;
    /// assert_eq!(first, 0);
    /// assert_eq!(s.next_offset(), 2);
    /// # Ok::<(), promptmq_wal::Error>(())
    /// ```
    pub fn append_batch(
        &self,
        stream: &Stream,
        records: impl IntoIterator<Item = (Option<Bytes>, Bytes)>,
    ) -> Completion<u64> {
        match self.new_records(records) {
            Ok(recs) => self.inner.shards[stream.state.shard as usize].submit(AppendReq::new(stream, recs)),
            Err(e) => Completion::ready(Err(e)),
        }
    }

    /// The records of an append, checked against the log's limits.
    fn new_records(&self, records: impl IntoIterator<Item = (Option<Bytes>, Bytes)>) -> Result<Vec<NewRecord>> {
        self.check_open()?;
        let mut recs = Vec::new();
        for (key, payload) in records {
            let klen = key.as_ref().map_or(0, |k| k.len());
            if klen > u16::MAX as usize {
                return Err(Error::KeyTooLong(klen));
            }
            if klen + payload.len() > self.inner.opts.max_record_bytes {
                return Err(Error::RecordTooLarge {
                    size: klen + payload.len(),
                    max: self.inner.opts.max_record_bytes,
                });
            }
            recs.push(NewRecord { key, payload });
        }
        Ok(recs)
    }

    /// Starts a [`Batch`]: appends to any streams, handed to the log together.
    ///
    /// ```
    /// # use promptmq_wal::{Wal, Options};
    /// # let dir = tempfile::tempdir()?;
    /// # let wal = Wal::open(dir.path(), Options::default())?;
    /// let (a, b) = (wal.stream("a")?, wal.stream("b")?);
    /// let mut batch = wal.batch();
    /// let first = batch.append(&a, "one");
    /// let second = batch.append_keyed(&b, "k", "two");
    /// batch.submit();
    /// assert_eq!((first.wait()?, second.wait()?), (0, 0));
    /// # Ok::<(), promptmq_wal::Error>(())
    /// ```
    pub fn batch(&self) -> Batch {
        Batch { wal: self.clone(), shards: Vec::new() }
    }

    /// Makes every append issued so far durable (an `fdatasync` per shard, whatever the
    /// sync mode) and checkpoints the index.
    ///
    /// ```
    /// # use promptmq_wal::{Wal, Options, SyncMode};
    /// # let dir = tempfile::tempdir()?;
    /// let wal = Wal::open(dir.path(), Options::default().sync(SyncMode::None))?;
    /// let s = wal.stream("s")?;
    /// wal.append(&s, "not yet synced").wait()?;
    /// wal.flush()?; // now it is
    /// # Ok::<(), promptmq_wal::Error>(())
    /// ```
    pub fn flush(&self) -> Result<()> {
        self.check_open()?;
        let waits: Vec<_> = self
            .inner
            .shards
            .iter()
            .map(|s| s.submit(AppendReq { stream: None, records: Vec::new(), force_sync: true, catalog: None }))
            .collect();
        for w in waits {
            w.wait()?;
        }
        Ok(())
    }

    /// Reads up to `max` records of `stream` starting at offset `from`. Offsets removed by
    /// retention are skipped (check each [`Record::offset`]); an empty result means there
    /// is nothing at or after `from` yet.
    ///
    /// ```
    /// # use promptmq_wal::{Wal, Options};
    /// # let dir = tempfile::tempdir()?;
    /// # let wal = Wal::open(dir.path(), Options::default())?;
    /// let s = wal.stream("s")?;
    /// for i in 0..10 { wal.append(&s, format!("{i}")).wait()?; }
    /// let page = wal.read(&s, 4, 3)?;
    /// assert_eq!(page.iter().map(|r| r.offset).collect::<Vec<_>>(), [4, 5, 6]);
    /// assert!(wal.read(&s, 10, 5)?.is_empty());
    /// # Ok::<(), promptmq_wal::Error>(())
    /// ```
    pub fn read(&self, stream: &Stream, from: u64, max: usize) -> Result<Vec<Record>> {
        self.read_state(&stream.state, from, max, usize::MAX)
    }

    /// [`Wal::read`] that also stops once the records read hold `max_bytes` of keys and
    /// payloads (at least one record is returned if there is one): a page of large records
    /// then takes bounded memory, whatever their count.
    ///
    /// ```
    /// # use promptmq_wal::{Wal, Options};
    /// # let dir = tempfile::tempdir()?;
    /// # let wal = Wal::open(dir.path(), Options::default())?;
    /// let s = wal.stream("s")?;
    /// for _ in 0..10 { wal.append(&s, vec![0u8; 1000]).wait()?; }
    /// assert_eq!(wal.read_bounded(&s, 0, 100, 2500)?.len(), 3);
    /// assert_eq!(wal.read_bounded(&s, 0, 100, 1)?.len(), 1);
    /// # Ok::<(), promptmq_wal::Error>(())
    /// ```
    pub fn read_bounded(&self, stream: &Stream, from: u64, max: usize, max_bytes: usize) -> Result<Vec<Record>> {
        self.read_state(&stream.state, from, max, max_bytes)
    }

    pub(crate) fn read_state(
        &self,
        s: &Arc<StreamState>,
        from: u64,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>> {
        let from = from.max(s.first_offset.load(Ordering::Acquire));
        let end = s.visible.load(Ordering::Acquire).min(from.saturating_add(max as u64));
        let shard = &self.inner.shards[s.shard as usize].shared;
        let max_body = (self.inner.opts.max_record_bytes + format::RECORD_HEADER_LEN + u16::MAX as usize) as u32;
        let mut out = Vec::with_capacity((end.saturating_sub(from)) as usize);
        let mut bytes = 0usize;
        let mut block = None;
        let mut chunk: Option<(u64, u64, Bytes)> = None; // (segment, start, bytes)
        let _no_compaction = shard.maintenance.read().unwrap_or_else(|p| p.into_inner());
        for offset in from..end {
            let Some(pos) = s.position(&self.inner.index, offset, end - 1, &mut block)? else {
                continue; // removed, or skipped as damaged by tolerant recovery
            };
            let reader = match shard.reader(pos.segment) {
                Ok(r) => r,
                // Retention deleted the segment after we looked up the position.
                Err(_) if offset < s.first_offset.load(Ordering::Acquire) => continue,
                Err(e) => return Err(e),
            };
            let mut attempt = 0;
            let rec = loop {
                let fresh = match &chunk {
                    Some((seg, start, bytes))
                        if *seg == pos.segment && pos.at >= *start && pos.at < start + bytes.len() as u64 =>
                    {
                        bytes.slice((pos.at - start) as usize..)
                    }
                    _ => {
                        let c = reader.read_chunk(pos.at, read_len(pos.len, end - offset))?;
                        chunk = Some((pos.segment, pos.at, c.clone()));
                        c
                    }
                };
                match format::decode_record(&fresh, max_body) {
                    Decoded::Record(r, _) => break r,
                    Decoded::Incomplete if attempt == 0 => {
                        // Bigger than the chunk (or the chunk ended mid-record): read it whole.
                        // The index knows its length; the frame says it too, when the chunk
                        // holds the frame. A chunk that ended inside the frame of a record
                        // larger than READ_CHUNK used to get READ_CHUNK bytes again, and the
                        // read failed ("does not decode: Incomplete") on a sound log.
                        let framed = if fresh.len() >= FRAME_LEN {
                            FRAME_LEN + u32::from_le_bytes([fresh[8], fresh[9], fresh[10], fresh[11]]) as usize
                        } else {
                            0
                        };
                        let need = framed.max(pos.len as usize).max(READ_CHUNK);
                        let c = reader.read_chunk(pos.at, need)?;
                        chunk = Some((pos.segment, pos.at, c));
                        attempt += 1;
                    }
                    other => {
                        return Err(Error::Corrupt {
                            path: reader.path().into(),
                            position: pos.at,
                            reason: format!(
                                "indexed record of stream {:?} offset {offset} does not decode: {other:?}",
                                s.name
                            ),
                        })
                    }
                }
            };
            if rec.meta.stream != s.id || rec.meta.offset != offset {
                return Err(Error::Index(format!(
                    "index of stream {:?} points offset {offset} at a record of stream {} offset {}",
                    s.name, rec.meta.stream, rec.meta.offset
                )));
            }
            bytes += rec.payload.len() + rec.key.as_ref().map_or(0, |k| k.len());
            out.push(Record { offset, timestamp_ms: rec.meta.timestamp_ms, key: rec.key, payload: rec.payload });
            if bytes >= max_bytes {
                break;
            }
        }
        Ok(out)
    }

    /// A reader that follows `stream` from offset `from`, waking when new records are durable.
    ///
    /// ```
    /// # use promptmq_wal::{Wal, Options};
    /// # let dir = tempfile::tempdir()?;
    /// # let wal = Wal::open(dir.path(), Options::default())?;
    /// let s = wal.stream("t")?;
    /// let mut tail = wal.tail(&s, 0);
    /// wal.append(&s, "x").wait()?;
    /// let got = tail.next_blocking(16, std::time::Duration::from_secs(5))?;
    /// assert_eq!(&got[0].payload[..], b"x");
    /// # Ok::<(), promptmq_wal::Error>(())
    /// ```
    pub fn tail(&self, stream: &Stream, from: u64) -> crate::Tail {
        crate::tail::Tail::new(self.clone(), stream.clone(), from)
    }

    /// Stores a consumer's position in a stream (durable per the sync mode).
    ///
    /// ```
    /// # use promptmq_wal::{Wal, Options};
    /// # let dir = tempfile::tempdir()?;
    /// # let wal = Wal::open(dir.path(), Options::default())?;
    /// let s = wal.stream("orders")?;
    /// wal.commit_cursor(&s, "billing", 42)?;
    /// assert_eq!(wal.cursor(&s, "billing")?, Some(42));
    /// assert_eq!(wal.cursors(&s)?, vec![("billing".to_string(), 42)]);
    /// wal.delete_cursor(&s, "billing")?;
    /// assert_eq!(wal.cursor(&s, "billing")?, None);
    /// # Ok::<(), promptmq_wal::Error>(())
    /// ```
    pub fn commit_cursor(&self, stream: &Stream, consumer: &str, offset: u64) -> Result<()> {
        self.inner.index.put_cursor(stream.state.id, consumer, offset)
    }

    /// A consumer's stored position, if any.
    pub fn cursor(&self, stream: &Stream, consumer: &str) -> Result<Option<u64>> {
        self.inner.index.cursor(stream.state.id, consumer)
    }

    /// Forgets a consumer's position.
    pub fn delete_cursor(&self, stream: &Stream, consumer: &str) -> Result<()> {
        self.inner.index.delete_cursor(stream.state.id, consumer)
    }

    /// All consumers of a stream with their positions.
    pub fn cursors(&self, stream: &Stream) -> Result<Vec<(String, u64)>> {
        self.inner.index.cursors_of(stream.state.id)
    }

    /// Changes a stream's retention policy (applied by [`Wal::apply_retention`]).
    pub fn set_retention(&self, stream: &Stream, retention: Retention) -> Result<()> {
        *stream.state.retention.lock().unwrap_or_else(|p| p.into_inner()) = retention;
        self.inner.index.put_stream_settings(&stream.state.meta())?;
        self.inner.index.persist()
    }

    /// Stops the writers after they finish what is queued, syncs, checkpoints the index
    /// and releases the directory (when the last clone is dropped). Appends issued after
    /// `close` fail with [`Error::Closed`].
    ///
    /// ```
    /// # use promptmq_wal::{Wal, Options};
    /// # let dir = tempfile::tempdir()?;
    /// # let wal = Wal::open(dir.path(), Options::default())?;
    /// let s = wal.stream("s")?;
    /// let other = wal.clone();
    /// wal.close()?;
    /// assert!(matches!(other.append(&s, "late").wait(), Err(promptmq_wal::Error::Closed)));
    /// # Ok::<(), promptmq_wal::Error>(())
    /// ```
    pub fn close(self) -> Result<()> {
        self.shutdown();
        Ok(())
    }

    fn shutdown(&self) {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        for s in &self.inner.shards {
            s.close();
        }
    }

    pub(crate) fn all_streams(&self) -> Vec<Arc<StreamState>> {
        self.inner.streams.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }

    pub(crate) fn stream_state(stream: &Stream) -> &Arc<StreamState> {
        &stream.state
    }

    pub(crate) fn shards(&self) -> &[Shard] {
        &self.inner.shards
    }

    pub(crate) fn index(&self) -> &Arc<Index> {
        &self.inner.index
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        for s in &self.shards {
            s.close();
        }
    }
}

/// Most bytes read per positional read; consecutive records of a stream usually share a chunk.
const READ_CHUNK: usize = 64 << 10;

/// Bytes to read for a record of `len` bytes when `wanted` records (this one included) are
/// still to be read: this record, and room for the rest if they are about as large and
/// interleaved with a few other streams' records — at most [`READ_CHUNK`]. A single record
/// costs one read of its own size (not 64 KiB); a guess too small for a run only costs
/// another read.
fn read_len(len: u32, wanted: u64) -> usize {
    const INTERLEAVE: u64 = 8;
    let len = u64::from(len);
    let rest = wanted.saturating_sub(1).saturating_mul(len).saturating_mul(INTERLEAVE);
    len.saturating_add(rest).min(READ_CHUNK as u64).max(len) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_takes_what_the_wanted_records_need_up_to_a_chunk() {
        assert_eq!(read_len(176, 1), 176, "a single record: its own bytes");
        assert_eq!(read_len(176, 2), 176 + 176 * 8);
        assert_eq!(read_len(176, 10_000), READ_CHUNK);
        assert_eq!(read_len(1 << 20, 5), 1 << 20, "a record bigger than a chunk is read whole");
        assert_eq!(read_len(u32::MAX, u64::MAX), u32::MAX as usize);
    }

    /// A checkpoint left behind the streams' stored offsets (as an older version could
    /// leave it) makes the scan from it find records it has already counted: the shard is
    /// re-indexed from the log instead of refusing to open.
    #[test]
    fn a_checkpoint_behind_the_stored_offsets_is_replaced_by_a_full_reindex() {
        let dir = tempfile::tempdir().unwrap();
        let opts = || Options::default().shards(1).segment_bytes(4096);
        let wal = Wal::open(dir.path(), opts()).unwrap();
        let s = wal.stream("s").unwrap();
        for i in 0..200u64 {
            wal.append(&s, format!("record {i}")).wait().unwrap();
        }
        let first_segment = wal.inner.shards[0].shared.segment_list()[0];
        wal.close().unwrap();
        {
            let index = Index::open(&dir.path().join("index"), crate::SyncMode::Always).unwrap();
            let stale = Checkpoint {
                pos: Pos { segment: first_segment, at: crate::format::SEGMENT_HEADER_LEN as u64, len: 0 },
                next_lsn: 1,
            };
            index.commit_checkpoint(0, Some(&stale), &[]).unwrap();
        }
        let wal = Wal::open(dir.path(), opts()).expect("a stale checkpoint must not keep the log from opening");
        let s = wal.lookup("s").unwrap();
        assert_eq!(s.next_offset(), 200);
        let got: Vec<u64> = wal.read(&s, 0, usize::MAX).unwrap().iter().map(|r| r.offset).collect();
        assert_eq!(got, (0..200).collect::<Vec<_>>());
        assert!(!wal.recovery_report().shards[0].from_checkpoint, "the shard was re-indexed in full");
    }
}
