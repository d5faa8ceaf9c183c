//! The file-system backend, as a trait so that the portable backend, the io_uring backend
//! and fault-injecting test backends all plug into the same writer.
//!
//! Only the *write* side goes through the backend: it is the part whose failure modes
//! (short writes, ENOSPC, failed syncs) the log must handle. Reads use plain positional
//! reads on their own file descriptors.

mod faulty;
mod std_backend;
#[cfg(all(feature = "io-uring", target_os = "linux"))]
pub mod uring;

use std::io;
use std::path::Path;

pub use faulty::{FaultPlan, FaultyBackend};
pub use std_backend::{FdSync, StdBackend};

/// A file opened for appending by the shard writer.
pub trait LogFile: Send {
    /// Writes all of `buf` at byte position `pos`.
    fn write_all_at(&mut self, pos: u64, buf: &[u8]) -> io::Result<()>;
    /// Makes written data durable (`fdatasync`).
    fn sync_data(&mut self) -> io::Result<()>;
    /// Cuts the file to `len` bytes (used to roll back a failed batch).
    fn truncate(&mut self, len: u64) -> io::Result<()>;
    /// A handle that syncs this file from another thread while the writer keeps writing
    /// (the background sync of `SyncMode::Interval`). Without one, those syncs run on the
    /// writer and hold appends back while they last.
    fn sync_handle(&self) -> io::Result<Box<dyn FileSync>> {
        Err(io::ErrorKind::Unsupported.into())
    }
}

/// Syncs a log file on behalf of its writer (see [`LogFile::sync_handle`]).
pub trait FileSync: Send {
    /// Makes everything written to the file so far durable (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;
}

/// Opens the files the writer appends to.
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// Creates a new file (fails if it exists).
    fn create(&self, path: &Path) -> io::Result<Box<dyn LogFile>>;
    /// Opens an existing file for writing.
    fn open(&self, path: &Path) -> io::Result<Box<dyn LogFile>>;
    /// Syncs a directory so that a newly created or removed entry is durable.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// A short name for logs and metrics ("std", "io-uring").
    fn name(&self) -> &'static str;
}

/// The default backend: io_uring when the feature is on and the kernel allows it,
/// otherwise the portable one.
pub fn default_backend() -> std::sync::Arc<dyn Backend> {
    #[cfg(all(feature = "io-uring", target_os = "linux"))]
    {
        if let Some(b) = uring::UringBackend::probe() {
            return std::sync::Arc::new(b);
        }
        tracing::warn!("io_uring is not available on this kernel; using the portable backend");
    }
    std::sync::Arc::new(StdBackend)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every backend must write, sync, truncate and create exactly like the portable one.
    fn exercise(b: &dyn Backend) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut f = b.create(&path).unwrap();
        assert!(b.create(&path).is_err(), "create must refuse an existing file");
        f.write_all_at(0, b"hello world").unwrap();
        f.write_all_at(6, b"WORLD").unwrap();
        f.sync_data().unwrap();
        f.sync_handle().unwrap().sync_data().unwrap();
        f.truncate(8).unwrap();
        b.sync_dir(dir.path()).unwrap();
        drop(f);
        assert_eq!(std::fs::read(&path).unwrap(), b"hello WO");
        let mut f = b.open(&path).unwrap();
        f.write_all_at(8, &vec![7u8; 1 << 20]).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 8 + (1 << 20));
    }

    #[test]
    fn std_backend_behaves() {
        exercise(&StdBackend);
    }

    #[cfg(all(feature = "io-uring", target_os = "linux"))]
    #[test]
    fn uring_backend_behaves() {
        match uring::UringBackend::probe() {
            Some(b) => {
                exercise(&b);
                assert_eq!(default_backend().name(), "io-uring");
            }
            None => eprintln!("io_uring is not available here; the portable fallback is in use"),
        }
    }
}
