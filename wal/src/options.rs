//! Options for opening a log. Each knob is a small type of its own so that a config file
//! layer (the broker's) can map onto it one to one.

use std::time::Duration;

use crate::error::{Error, Result};

/// When an append counts as durable, and so when [`crate::Wal::append`] returns.
///
/// | mode | `append` returns after | lost on `kill -9` | lost on power loss |
/// |---|---|---|---|
/// | `Always` (default) | `write` + `fdatasync` | nothing | nothing |
/// | `Interval(d)` | `write` | nothing | at most the last `d` of appends |
/// | `None` | `write` | nothing | whatever the OS had not yet written back |
///
/// A `kill -9` loses nothing in any mode because the data is in the kernel's page cache
/// once `write` returns; only a machine crash or power loss can lose unsynced pages.
/// New segment files and their directory entry are synced in every mode except `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// `fdatasync` before acknowledging; one sync covers a whole group-commit batch.
    #[default]
    Always,
    /// Acknowledge after `write`; a sync thread per shard syncs once the oldest unsynced
    /// write is this old, while appends go on.
    Interval(Duration),
    /// Never sync explicitly.
    None,
}

/// What recovery does with a record that fails its checks *before* the end of the log.
///
/// A torn tail (invalid bytes up to the end of the newest segment, the normal result of a
/// crash mid-write) is always truncated: those bytes were never acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecoveryMode {
    /// Refuse to open and name the bad range; nothing is changed on disk.
    #[default]
    Strict,
    /// Skip the bad range, report it, and keep every valid record around it.
    Tolerant,
}

/// How much of a stream to keep. `None` in a field means "no limit of that kind".
/// Retention works on whole segments: a segment is deleted once nothing in it is live
/// for any stream, so a stream may keep somewhat more than its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retention {
    /// Records older than this may be removed.
    pub max_age: Option<Duration>,
    /// Keep at most about this many bytes of records (key + payload).
    pub max_bytes: Option<u64>,
    /// Keep at most this many records.
    pub max_records: Option<u64>,
}

impl Retention {
    /// Keep everything (the default).
    pub const FOREVER: Retention = Retention { max_age: None, max_bytes: None, max_records: None };
}

/// [`Options::wait_yield`] by default.
const DEFAULT_WAIT_YIELD: std::time::Duration = std::time::Duration::from_millis(1);

/// Largest segment size: recovery and compaction hold one segment in memory at a time.
pub const MAX_SEGMENT_BYTES: u64 = 1 << 30;

/// Options for [`crate::Wal::open`]. Build with [`Options::default`] and the setters.
///
/// ```
/// use promptmq_wal::{Options, SyncMode, RecoveryMode};
/// use std::time::Duration;
/// let opts = Options::default()
///     .shards(4)
///     .segment_bytes(64 << 20)
///     .sync(SyncMode::Interval(Duration::from_millis(5)))
///     .recovery(RecoveryMode::Tolerant);
/// assert_eq!(opts.shard_count(), 4);
/// ```
#[derive(Debug, Clone)]
pub struct Options {
    pub(crate) shards: u32,
    pub(crate) segment_bytes: u64,
    pub(crate) sync: SyncMode,
    pub(crate) recovery: RecoveryMode,
    pub(crate) retention: Retention,
    pub(crate) max_record_bytes: usize,
    pub(crate) max_batch_bytes: usize,
    pub(crate) create: bool,
    pub(crate) full_recovery: bool,
    pub(crate) preallocate: bool,
    pub(crate) wait_yield: std::time::Duration,
    pub(crate) observer: Option<std::sync::Arc<dyn crate::CommitObserver>>,
}

impl Default for Options {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        Options {
            shards: cores.clamp(1, 64) as u32,
            segment_bytes: 64 << 20,
            sync: SyncMode::Always,
            recovery: RecoveryMode::Strict,
            retention: Retention::FOREVER,
            max_record_bytes: 16 << 20,
            max_batch_bytes: 4 << 20,
            create: true,
            full_recovery: false,
            preallocate: false,
            wait_yield: DEFAULT_WAIT_YIELD,
            observer: None,
        }
    }
}

impl Options {
    /// Number of shard logs for a *new* directory (default: one per core). An existing
    /// directory keeps the count it was created with, because streams are pinned to shards.
    pub fn shards(mut self, n: u32) -> Self {
        self.shards = n;
        self
    }
    /// Told about every group commit (for metrics); see [`crate::CommitObserver`].
    pub fn observer(mut self, o: std::sync::Arc<dyn crate::CommitObserver>) -> Self {
        self.observer = Some(o);
        self
    }
    /// Size at which a segment file is sealed and a new one started (default 64 MiB).
    pub fn segment_bytes(mut self, n: u64) -> Self {
        self.segment_bytes = n;
        self
    }
    /// Whether each shard prepares its next segment ahead of time, written full of zeros
    /// and synced (default false; never with [`SyncMode::None`], which never syncs). Off by
    /// default because writing the spare costs tail latency meanwhile: in the broker at
    /// 42 k msg/s with 64 MiB segments, p99 2.5–6.2 ms with it vs 1.4–4.6 ms without. A sync then
    /// carries the appended data alone instead of also the file's new size: on ext4, 1.3–2.6×
    /// more syncs per second in a plain write-and-sync loop, 1.2–1.5× more appends per second
    /// through the log for small records (BENCHMARKS.md). Costs one spare segment of disk
    /// per shard (made while the active one fills, kept a quarter of a segment ahead of it),
    /// and every segment is written twice (zeros first; see `spare`) — except where
    /// retention or compaction deletes segments: their files are reused as spares (up to
    /// two kept waiting per shard), old records and all, and need no zeros.
    /// [`crate::WalStats::segments_unprepared`] counts the segments that found no spare
    /// ready, [`crate::WalStats::segments_recycled`] those made from deleted segments.
    pub fn preallocate(mut self, on: bool) -> Self {
        self.preallocate = on;
        self
    }
    /// The most a thread blocked in [`crate::Completion::wait`] spends giving its CPU away
    /// (`sched_yield`) and looking for its result again, before it sleeps until woken
    /// (default 1 ms; zero: it sleeps at once). Futures (`.await`) never yield this way.
    ///
    /// Waking a sleeping thread costs an inter-processor interrupt and a context switch; on
    /// a virtual machine with few cores, many threads that each wait for their own append
    /// come back from a commit slowly that way, and the disk idles meanwhile. Yielding, they
    /// are back at their next turn on the CPU: on a 2-vCPU VM, 64 such threads got 1.3–2.0x
    /// the appends per second and 8 threads 0.9–1.7x (BENCHMARKS.md, session 17). The cost
    /// is CPU time while waiting: the waiting threads keep the cores busy (at 8 threads
    /// 40–64 µs of CPU per append instead of 18–23), though any other runnable thread gets
    /// them first.
    ///
    /// With [`SyncMode::Always`] a thread yields for about three of its shard's recent
    /// syncs (the longest a wait for a commit usually takes), and not at all where that is
    /// more than this maximum: on a disk whose syncs take milliseconds, threads sleep.
    ///
    /// ```
    /// use promptmq_wal::Options;
    /// use std::time::Duration;
    /// let opts = Options::default().wait_yield(Duration::ZERO); // never spin, always sleep
    /// # let _ = opts;
    /// ```
    pub fn wait_yield(mut self, max: std::time::Duration) -> Self {
        self.wait_yield = max;
        self
    }
    /// The sync mode (default [`SyncMode::Always`]).
    pub fn sync(mut self, mode: SyncMode) -> Self {
        self.sync = mode;
        self
    }
    /// The recovery mode (default [`RecoveryMode::Strict`]).
    pub fn recovery(mut self, mode: RecoveryMode) -> Self {
        self.recovery = mode;
        self
    }
    /// Retention for streams created without a policy of their own.
    pub fn retention(mut self, r: Retention) -> Self {
        self.retention = r;
        self
    }
    /// Largest key + payload accepted by `append` (default 16 MiB).
    pub fn max_record_bytes(mut self, n: usize) -> Self {
        self.max_record_bytes = n;
        self
    }
    /// Upper bound on the bytes one group commit writes (default 4 MiB); bigger batches are
    /// split. Bounds the writer's buffer, not the queue.
    pub fn max_batch_bytes(mut self, n: usize) -> Self {
        self.max_batch_bytes = n;
        self
    }
    /// Whether `open` may create a missing directory (default true). `walctl` sets false.
    pub fn create_if_missing(mut self, yes: bool) -> Self {
        self.create = yes;
        self
    }
    /// Ignore the index checkpoints on open and scan (and re-index) every segment, so
    /// damage anywhere in the log is found (default false: only the log beyond the last
    /// checkpoint is scanned). `walctl recover` sets this.
    pub fn full_recovery(mut self, yes: bool) -> Self {
        self.full_recovery = yes;
        self
    }
    /// The shard count that a new directory would get.
    pub fn shard_count(&self) -> u32 {
        self.shards
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.shards == 0 || self.shards > 1024 {
            return Err(Error::InvalidOption {
                name: "shards",
                reason: format!("{} is out of range 1..=1024", self.shards),
            });
        }
        if self.segment_bytes < 4096 || self.segment_bytes > MAX_SEGMENT_BYTES {
            return Err(Error::InvalidOption {
                name: "segment_bytes",
                reason: format!("{} is out of range 4096..=1 GiB (recovery reads a segment whole)", self.segment_bytes),
            });
        }
        if self.max_record_bytes == 0 || self.max_record_bytes > (u32::MAX as usize - 1024) {
            return Err(Error::InvalidOption {
                name: "max_record_bytes",
                reason: format!("{} is out of range 1..4 GiB", self.max_record_bytes),
            });
        }
        if let SyncMode::Interval(d) = self.sync {
            if d.is_zero() {
                return Err(Error::InvalidOption {
                    name: "sync",
                    reason: "interval must be > 0 (use Always for 0)".into(),
                });
            }
        }
        Ok(())
    }
}
