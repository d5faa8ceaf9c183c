//! The one error type of the crate.
//!
//! Every variant says what went wrong *and* what the caller can do about it, because the
//! broker turns these into log lines and MQTT reason codes that an operator has to act on.

use std::io;
use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O call failed. For a write this means the append was **not** acknowledged and
    /// the log was rolled back to its last consistent record; retrying later is safe.
    #[error("I/O error while {action} {path}: {source}")]
    Io {
        /// What the log was doing, e.g. "writing", "syncing".
        action: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },

    /// The disk is full, or out of inodes (ENOSPC / EDQUOT). The write was refused (an
    /// append, a new segment, a compacted copy, the index) and nothing partial remains in
    /// the log; free space (or raise the quota) and retry.
    #[error("no space (or no free inode) left on the device holding {path} while {action}: that write was undone and the log is unchanged; free some space and retry")]
    DiskFull {
        /// What the log was doing, e.g. "writing", "compacting".
        action: &'static str,
        /// The file that could not grow.
        path: PathBuf,
    },

    /// A previous write or sync failed in a way that leaves the on-disk state unknown
    /// (for example a failed `fdatasync`, after which the kernel may have dropped dirty
    /// pages). The shard refuses further appends until the log is reopened, which runs
    /// recovery and re-establishes a known state.
    #[error("shard {shard} is failed after an earlier I/O error ({reason}); close and reopen the log to recover it")]
    ShardFailed {
        /// The shard that stopped accepting appends.
        shard: u32,
        /// The error that put it in this state.
        reason: String,
    },

    /// A record failed its checksum or structure check in a place where recovery mode
    /// `strict` does not allow skipping it.
    #[error("corrupt data in {path} at byte {position}: {reason}; run `walctl verify` to see every bad range, then `walctl recover --mode tolerant` to skip them")]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Byte position of the first bad byte.
        position: u64,
        /// What check failed.
        reason: String,
    },

    /// The directory exists but is not a promptmq-wal directory, or was written by an
    /// incompatible format version.
    #[error("{path} is not a usable promptmq-wal directory: {reason}")]
    NotAWalDirectory {
        /// The directory given to `open`.
        path: PathBuf,
        /// Why it was refused.
        reason: String,
    },

    /// Another process (or another `Wal` in this process) holds the directory.
    #[error("{path} is locked by another process; stop it first (only one writer may open a log)")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },

    /// The index (fjall) failed.
    #[error(
        "index error: {0}; if it persists, delete the index/ directory and reopen: the index is rebuilt from the log"
    )]
    Index(String),

    /// A record is larger than `Options::max_record_bytes`.
    #[error("record of {size} bytes exceeds the maximum of {max} bytes; raise max_record_bytes or split the payload")]
    RecordTooLarge {
        /// Size of the refused record (key + payload).
        size: usize,
        /// The configured maximum.
        max: usize,
    },

    /// A record key is longer than the format allows (65535 bytes).
    #[error("record key of {0} bytes exceeds the 65535-byte limit")]
    KeyTooLong(usize),

    /// The stream does not exist.
    #[error("no stream named {0:?}: create it first (Wal::stream), or list the streams there are (Wal::streams, `walctl inspect`)")]
    NoSuchStream(String),

    /// A stream name is empty or too long.
    #[error("invalid stream name: {0}")]
    InvalidStreamName(String),

    /// The requested offset was removed by retention or compaction.
    #[error("offset {requested} of stream {stream:?} was removed by retention; the first available offset is {first}")]
    OffsetRemoved {
        /// Stream name.
        stream: String,
        /// Offset asked for.
        requested: u64,
        /// First offset still stored.
        first: u64,
    },

    /// The log was closed; no further operations are possible on this handle.
    #[error("the log is closed")]
    Closed,

    /// Options are invalid.
    #[error("invalid option {name}: {reason}")]
    InvalidOption {
        /// The option's name.
        name: &'static str,
        /// Why it was refused and what is allowed.
        reason: String,
    },
}

impl Error {
    /// Builds an [`Error::Io`], or [`Error::DiskFull`] when the OS reports no space.
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        let path = path.into();
        match source.raw_os_error() {
            Some(code) if code == libc::ENOSPC || code == libc::EDQUOT => Error::DiskFull { action, path },
            _ => Error::Io { action, path, source },
        }
    }

    /// An [`Error::Io`] for a failed sync, whatever the OS's error: even ENOSPC there is not
    /// [`Error::DiskFull`]'s clean refusal, since the written data may already be lost. The
    /// shard fails (see [`Error::ShardFailed`]).
    pub(crate) fn sync_failed(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io { action: "syncing", path: path.into(), source }
    }

    /// Whether the error means the disk is full.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, Error::DiskFull { .. })
    }
}

impl From<fjall::Error> for Error {
    fn from(e: fjall::Error) -> Self {
        // The index's advice (delete it and reopen) is wrong for a full disk: it would be
        // rebuilt into the same lack of space. Say what is wrong instead.
        if out_of_space(&e) {
            return Error::DiskFull { action: "writing the index", path: PathBuf::from("index/") };
        }
        Error::Index(e.to_string())
    }
}

/// Whether `e`, or an error that caused it, is the OS saying there is no space or no inode
/// left (ENOSPC) or the quota is used up (EDQUOT).
fn out_of_space(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        let code = c.downcast_ref::<io::Error>().and_then(|io| io.raw_os_error());
        if code.is_some_and(|code| code == libc::ENOSPC || code == libc::EDQUOT) {
            return true;
        }
        cause = c.source();
    }
    false
}

impl Error {
    /// A copy of this error for the other waiters of a failed group commit: every
    /// append in a failed batch gets the same cause.
    pub(crate) fn duplicate(&self) -> Error {
        match self {
            Error::Io { action, path, source } => {
                Error::Io { action, path: path.clone(), source: io::Error::new(source.kind(), source.to_string()) }
            }
            Error::DiskFull { action, path } => Error::DiskFull { action, path: path.clone() },
            Error::ShardFailed { shard, reason } => Error::ShardFailed { shard: *shard, reason: reason.clone() },
            Error::Corrupt { path, position, reason } => {
                Error::Corrupt { path: path.clone(), position: *position, reason: reason.clone() }
            }
            Error::NotAWalDirectory { path, reason } => {
                Error::NotAWalDirectory { path: path.clone(), reason: reason.clone() }
            }
            Error::Locked { path } => Error::Locked { path: path.clone() },
            Error::Index(s) => Error::Index(s.clone()),
            Error::RecordTooLarge { size, max } => Error::RecordTooLarge { size: *size, max: *max },
            Error::KeyTooLong(n) => Error::KeyTooLong(*n),
            Error::NoSuchStream(s) => Error::NoSuchStream(s.clone()),
            Error::InvalidStreamName(s) => Error::InvalidStreamName(s.clone()),
            Error::OffsetRemoved { stream, requested, first } => {
                Error::OffsetRemoved { stream: stream.clone(), requested: *requested, first: *first }
            }
            Error::Closed => Error::Closed,
            Error::InvalidOption { name, reason } => Error::InvalidOption { name, reason: reason.clone() },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_error_caused_by_a_full_disk_is_disk_full() {
        let full = fjall::Error::Io(io::Error::from_raw_os_error(libc::ENOSPC));
        assert!(Error::from(full).is_disk_full());
        let nested = fjall::Error::Storage(fjall::LsmError::Io(io::Error::from_raw_os_error(libc::EDQUOT)));
        assert!(Error::from(nested).is_disk_full());
        let other = fjall::Error::Io(io::Error::from_raw_os_error(libc::EIO));
        assert!(matches!(Error::from(other), Error::Index(_)));
    }
}
