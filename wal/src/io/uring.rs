//! The io_uring backend (cargo feature `io-uring`, Linux only): writes and `fdatasync`s go
//! through a ring owned by the shard's writer thread. Each call submits and waits, so the
//! buffers handed to the kernel outlive the operation.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use io_uring::{opcode, types, IoUring};

use super::{Backend, FdSync, FileSync, LogFile};

/// io_uring writes and syncs; falls back to the portable backend when the kernel refuses.
#[derive(Debug, Default, Clone, Copy)]
pub struct UringBackend;

impl UringBackend {
    /// Returns the backend if this kernel lets us create a ring.
    pub fn probe() -> Option<UringBackend> {
        IoUring::new(2).ok().map(|_| UringBackend)
    }
}

struct UringFile {
    file: File,
    ring: IoUring,
}

impl UringFile {
    fn run(&mut self, entry: io_uring::squeue::Entry) -> io::Result<i32> {
        // SAFETY: the entry's buffer (if any) is borrowed by the caller for the whole call,
        // and we wait for its completion before returning.
        unsafe {
            self.ring.submission().push(&entry).map_err(|_| io::Error::other("io_uring submission queue is full"))?;
        }
        self.ring.submit_and_wait(1)?;
        let cqe = self.ring.completion().next().ok_or_else(|| io::Error::other("io_uring returned no completion"))?;
        let res = cqe.result();
        if res < 0 {
            return Err(io::Error::from_raw_os_error(-res));
        }
        Ok(res)
    }
}

impl LogFile for UringFile {
    fn write_all_at(&mut self, mut pos: u64, mut buf: &[u8]) -> io::Result<()> {
        let fd = types::Fd(self.file.as_raw_fd());
        while !buf.is_empty() {
            let len = buf.len().min(1 << 30) as u32;
            let n = match self.run(opcode::Write::new(fd, buf.as_ptr(), len).offset(pos).build()) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => other?,
            } as usize;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::WriteZero, "io_uring write wrote nothing"));
            }
            buf = &buf[n..];
            pos += n as u64;
        }
        Ok(())
    }

    fn sync_data(&mut self) -> io::Result<()> {
        let fd = types::Fd(self.file.as_raw_fd());
        self.run(opcode::Fsync::new(fd).flags(types::FsyncFlags::DATASYNC).build()).map(|_| ())
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    /// A plain `fdatasync` on another thread: the ring belongs to the writer.
    fn sync_handle(&self) -> io::Result<Box<dyn FileSync>> {
        Ok(Box::new(FdSync(self.file.try_clone()?)))
    }
}

fn wrap(file: File) -> io::Result<Box<dyn LogFile>> {
    Ok(Box::new(UringFile { file, ring: IoUring::new(4)? }))
}

impl Backend for UringBackend {
    fn create(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
        wrap(OpenOptions::new().read(true).write(true).create_new(true).open(path)?)
    }
    fn open(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
        wrap(OpenOptions::new().read(true).write(true).open(path)?)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }
    fn name(&self) -> &'static str {
        "io-uring"
    }
}
