//! Hooks for metrics: the log tells an observer about every group commit, so an application
//! can keep histograms of batch sizes and `fdatasync` times without this crate depending on
//! a metrics library.

use std::time::Duration;

/// One group commit of one shard, as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitInfo {
    /// Shard that wrote it.
    pub shard: u32,
    /// Records in the batch (catalogue records included).
    pub records: usize,
    /// Bytes written, framing included.
    pub bytes: usize,
    /// How long the `fdatasync` after it took, if one was made for it (`Interval` mode: the
    /// sync thread's last sync since the previous commit, reported with this one).
    pub sync: Option<Duration>,
}

/// Receives [`CommitInfo`] after each group commit. Called on the thread that committed the
/// batch (the shard's writer, or an appender committing on its own thread) before the
/// batch's appenders are woken: keep it short (update counters, no I/O).
///
/// ```
/// use promptmq_wal::{CommitInfo, CommitObserver, Options, Wal};
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use std::sync::Arc;
///
/// #[derive(Debug, Default)]
/// struct Count(AtomicU64);
/// impl CommitObserver for Count {
///     fn committed(&self, c: &CommitInfo) {
///         self.0.fetch_add(c.records as u64, Ordering::Relaxed);
///     }
/// }
///
/// # let dir = tempfile::tempdir()?;
/// let count = Arc::new(Count::default());
/// let wal = Wal::open(dir.path(), Options::default().observer(count.clone()))?;
/// let s = wal.stream("s")?;
/// wal.append(&s, "x").wait()?;
/// assert!(count.0.load(Ordering::Relaxed) >= 1);
/// # Ok::<(), promptmq_wal::Error>(())
/// ```
pub trait CommitObserver: Send + Sync + std::fmt::Debug {
    /// A batch was written (and synced, per the sync mode).
    fn committed(&self, info: &CommitInfo);
}
