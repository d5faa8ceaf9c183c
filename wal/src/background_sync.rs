//! `SyncMode::Interval`'s syncs, off the commit path: one thread per shard `fdatasync`s the
//! active segment once its oldest unsynced write is an interval old. Appends are written
//! and acknowledged meanwhile; a sync made on the writer would hold every append that
//! arrives during it (about a millisecond here, sometimes tens) behind it.

use std::io;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::io::FileSync;
use crate::sync::lock;

/// One sync in progress: the file's handle and what it covers.
pub(crate) struct SyncJob {
    pub(crate) handle: Box<dyn FileSync>,
    /// First LSN of the segment being synced.
    pub(crate) segment: u64,
    /// Length of the segment when the sync started: the sync covers at least that.
    pub(crate) len: u64,
    pub(crate) started: Instant,
}

/// The writer's side, as the sync thread sees it (the writer's state is locked around
/// each call, never during the sync itself).
pub(crate) trait Syncable: Send + 'static {
    /// How long until the oldest unsynced write is due; `None` when nothing is unsynced.
    fn sync_due_in(&self) -> Option<Duration>;
    /// Starts a sync of what is written and unsynced, if anything. May sync on the spot
    /// (and return `None`) when the file has no separate sync handle.
    fn begin_sync(&mut self) -> Option<SyncJob>;
    /// Records the result of a sync started by `begin_sync`.
    fn end_sync(&mut self, job: SyncJob, result: io::Result<()>);
}

/// The running sync thread of one shard; stopped by [`BackgroundSync::stop`] or on drop.
pub(crate) struct BackgroundSync {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl BackgroundSync {
    /// Starts the thread. `every` is the sync interval; it is also how long the thread
    /// sleeps when nothing is unsynced (appends written on other threads do not wake it).
    pub(crate) fn start<S: Syncable>(
        name: String,
        writer: Arc<crate::sync::Mutex<S>>,
        every: Duration,
    ) -> io::Result<BackgroundSync> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let st = stop.clone();
        let thread = std::thread::Builder::new().name(name).spawn(move || loop {
            let wait = lock(&writer).sync_due_in().unwrap_or(every);
            if stopped_within(&st, wait) {
                return;
            }
            let job = lock(&writer).begin_sync();
            if let Some(job) = job {
                let result = job.handle.sync_data();
                lock(&writer).end_sync(job, result);
            }
        })?;
        Ok(BackgroundSync { stop, thread: Some(thread) })
    }

    /// Stops the thread and waits for it (a sync in progress finishes first).
    pub(crate) fn stop(&mut self) {
        *self.stop.0.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.stop.1.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for BackgroundSync {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sleeps up to `wait`; true if asked to stop.
fn stopped_within(stop: &(Mutex<bool>, Condvar), wait: Duration) -> bool {
    let guard = stop.0.lock().unwrap_or_else(|p| p.into_inner());
    let (guard, _) = stop.1.wait_timeout_while(guard, wait, |stopped| !*stopped).unwrap_or_else(|p| p.into_inner());
    *guard
}
