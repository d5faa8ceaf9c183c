//! A backend that injects failures, for tests of the log's (and the broker's) behaviour on
//! a full disk or a failing device. It wraps another backend and fails according to a
//! shared, mutable plan, so a test can make the disk "fill up" and "free space" at will.

use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::{Backend, FileSync, LogFile};

/// What the [`FaultyBackend`] does next. Changed at run time through the shared handle.
#[derive(Debug, Clone, Default)]
pub struct FaultPlan {
    /// Remaining bytes that may be written before writes fail with ENOSPC (`None`: no limit).
    /// A write that crosses the limit writes the bytes up to it, then fails: a short write.
    pub space_left: Option<u64>,
    /// Fail every `sync_data` with EIO.
    pub fail_sync: bool,
    /// Make every `sync_data` take at least this long (a slow or busy device), so a test
    /// can observe what waits for durability and what does not.
    pub sync_delay: Option<std::time::Duration>,
}

/// Wraps a backend and applies a [`FaultPlan`].
///
/// ```
/// use promptmq_wal::io::{FaultyBackend, FaultPlan, StdBackend};
/// let (backend, plan) = FaultyBackend::new(StdBackend);
/// plan.lock().unwrap().space_left = Some(0); // the disk is now full
/// # let _ = backend;
/// ```
#[derive(Debug)]
pub struct FaultyBackend<B> {
    inner: B,
    plan: Arc<Mutex<FaultPlan>>,
}

impl<B: Backend> FaultyBackend<B> {
    /// Wraps `inner`; returns the backend and the handle that controls its faults.
    pub fn new(inner: B) -> (Self, Arc<Mutex<FaultPlan>>) {
        let plan = Arc::new(Mutex::new(FaultPlan::default()));
        (FaultyBackend { inner, plan: plan.clone() }, plan)
    }
}

struct FaultyFile {
    inner: Box<dyn LogFile>,
    plan: Arc<Mutex<FaultPlan>>,
}

/// The plan's delay, then EIO when the plan says syncs fail.
fn injected_sync_failure(plan: &Mutex<FaultPlan>) -> io::Result<()> {
    let (delay, fail) = {
        let plan = plan.lock().unwrap_or_else(|p| p.into_inner());
        (plan.sync_delay, plan.fail_sync)
    };
    if let Some(d) = delay {
        std::thread::sleep(d);
    }
    if fail {
        return Err(io::Error::from_raw_os_error(libc::EIO));
    }
    Ok(())
}

fn enospc() -> io::Error {
    io::Error::from_raw_os_error(libc::ENOSPC)
}

impl LogFile for FaultyFile {
    fn write_all_at(&mut self, pos: u64, buf: &[u8]) -> io::Result<()> {
        let allowed = {
            let mut plan = self.plan.lock().unwrap_or_else(|p| p.into_inner());
            match plan.space_left.as_mut() {
                None => buf.len(),
                Some(left) => {
                    let n = (*left).min(buf.len() as u64) as usize;
                    *left -= n as u64;
                    n
                }
            }
        };
        self.inner.write_all_at(pos, &buf[..allowed])?;
        if allowed < buf.len() {
            return Err(enospc());
        }
        Ok(())
    }
    fn sync_data(&mut self) -> io::Result<()> {
        injected_sync_failure(&self.plan)?;
        self.inner.sync_data()
    }
    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.inner.truncate(len)
    }
    fn sync_handle(&self) -> io::Result<Box<dyn FileSync>> {
        Ok(Box::new(FaultySync { inner: self.inner.sync_handle()?, plan: self.plan.clone() }))
    }
}

/// A background sync that fails like the file's own syncs.
struct FaultySync {
    inner: Box<dyn FileSync>,
    plan: Arc<Mutex<FaultPlan>>,
}

impl FileSync for FaultySync {
    fn sync_data(&self) -> io::Result<()> {
        injected_sync_failure(&self.plan)?;
        self.inner.sync_data()
    }
}

impl<B: Backend> Backend for FaultyBackend<B> {
    fn create(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
        if self.plan.lock().unwrap_or_else(|p| p.into_inner()).space_left == Some(0) {
            return Err(enospc());
        }
        Ok(Box::new(FaultyFile { inner: self.inner.create(path)?, plan: self.plan.clone() }))
    }
    fn open(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
        Ok(Box::new(FaultyFile { inner: self.inner.open(path)?, plan: self.plan.clone() }))
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.inner.sync_dir(path)
    }
    fn name(&self) -> &'static str {
        "faulty"
    }
}
