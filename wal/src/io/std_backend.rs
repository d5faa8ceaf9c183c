//! The portable backend: `pwrite` and `fdatasync` through `std::fs`.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::{Backend, FileSync, LogFile};

/// Portable positional writes and `fdatasync`.
#[derive(Debug, Default, Clone, Copy)]
pub struct StdBackend;

struct StdFile(File);

impl LogFile for StdFile {
    fn write_all_at(&mut self, pos: u64, buf: &[u8]) -> io::Result<()> {
        self.0.write_all_at(buf, pos)
    }
    fn sync_data(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn sync_handle(&self) -> io::Result<Box<dyn FileSync>> {
        Ok(Box::new(FdSync(self.0.try_clone()?)))
    }
}

/// `fdatasync` through a duplicate of the writer's file descriptor: it covers every write
/// made through the original, as both name the same open file.
#[derive(Debug)]
pub struct FdSync(pub File);

impl FileSync for FdSync {
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
}

impl Backend for StdBackend {
    fn create(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
        let f = OpenOptions::new().read(true).write(true).create_new(true).open(path)?;
        Ok(Box::new(StdFile(f)))
    }
    fn open(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
        let f = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Box::new(StdFile(f)))
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }
    fn name(&self) -> &'static str {
        "std"
    }
}
