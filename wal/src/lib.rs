//! `promptmq-wal`: a durable, segmented, multi-stream write-ahead log.
//!
//! Many named *streams* (append-only sequences of records with dense `u64` offsets) are
//! multiplexed into a few *shard* logs, each a sequence of segment files written by one
//! thread with **group commit**: every append waiting when the writer wakes goes out in one
//! write and one `fdatasync`. An append resolves only once its record is durable under the
//! [`SyncMode`]. Every record carries a CRC-64; recovery on open truncates a torn tail,
//! and handles damage elsewhere per the [`RecoveryMode`]. An index in `fjall` maps stream
//! offsets to record positions and holds the stream catalogue and consumer cursors.
//!
//! ```
//! use promptmq_wal::{Wal, Options, SyncMode};
//! # fn main() -> Result<(), promptmq_wal::Error> {
//! let dir = tempfile::tempdir()?;
//! let wal = Wal::open(dir.path(), Options::default().sync(SyncMode::Always))?;
//! let orders = wal.stream("orders")?;
//! let offset = wal.append(&orders, "order #1").wait()?;   // durable when this returns
//! wal.commit_cursor(&orders, "billing", offset + 1)?;
//! wal.close()?;
//!
//! let wal = Wal::open(dir.path(), Options::default())?;   // recovery runs here
//! let orders = wal.lookup("orders").expect("stream survives reopen");
//! let from = wal.cursor(&orders, "billing")?.unwrap_or(0);
//! assert!(wal.read(&orders, from, 100)?.is_empty());
//! assert_eq!(&wal.read(&orders, 0, 100)?[0].payload[..], b"order #1");
//! # Ok(()) }
//! ```
//!
//! In async code, `.await` the [`Completion`] instead of calling `wait()`.
//! See `README.md` for the durability table and `FORMAT.md` for the byte layout.

#![warn(missing_docs)]

mod background_sync;
mod block_codec;
mod checkpointer;
mod commit;
mod error;
pub mod format;
mod hash;
mod index;
pub mod io;
mod maintenance;
mod names;
mod observe;
mod options;
mod recovery;
mod segment;
mod shard;
mod spare;
mod stream;
mod sync;
mod tail;
pub mod tools;
mod wal;

pub use commit::Completion;
pub use error::{Error, Result};
pub use maintenance::{MaintenanceReport, SUGGESTED_MAINTENANCE_INTERVAL};
pub use observe::{CommitInfo, CommitObserver};
pub use options::{Options, RecoveryMode, Retention, SyncMode, MAX_SEGMENT_BYTES};
pub use recovery::{RecoveryReport, ShardReport};
pub use segment::BadRange;
pub use tail::Tail;
pub use wal::{Batch, Record, Stream, StreamInfo, StreamOptions, Wal, WalStats, MAX_STREAM_NAME};

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::io("accessing", "", e)
    }
}
