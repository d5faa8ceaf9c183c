//! Zero-filled spare segments ([`crate::Options::preallocate`]).
//!
//! A sync of a write that grows a file must also commit the file's new size (on ext4 a
//! journal commit and a second device flush); a sync of a write into blocks that already
//! hold data — zeros written and synced earlier — carries the data alone. Measured on this
//! project's test machine: 1.3–2.6× more write-and-sync rounds per second, 1.2–1.5× more
//! appends per second through the log (BENCHMARKS.md, session 7).
//!
//! So each shard keeps one spare segment file ready: a thread writes it full of zeros and
//! syncs it, off the commit path, while the active segment fills; the writer renames it into
//! place when it rolls. Recovery reads the zeros after a segment's last record as its end
//! (see `segment::zero_tail_start`), and a sealed segment is cut to its length.
//!
//! The zeros are paced by the active segment: the spare is kept a quarter of a segment
//! ahead of it, so a slow log gets its zeros in small steps and a fast one (hundreds of
//! MB/s) at the disk's speed. A fixed pace fell behind fast logs, whose next segment then
//! grew as it was written (BENCHMARKS.md, session 12).

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// Name of the spare in its shard's directory (removed at open, like other leftovers).
pub(crate) const SPARE_NAME: &str = "next.seg.spare";

/// Zeros written per call; each chunk is written back before the next (`sync_file_range`)
/// and followed by a pause. The log's own syncs queue behind whatever of the spare is in
/// the device: one chunk at a time (about a millisecond here) instead of a whole segment
/// flushed at once (tens of them: p99 of `sync = always` appends 9–13 ms with 4 MiB flushes,
/// the broker's p99 at 20 k msg/s 11–17 ms against 9 ms without spares).
const ZERO_CHUNK: usize = 256 << 10;
const PAUSE: std::time::Duration = std::time::Duration::from_millis(2);
/// Longest wait between two looks at the active segment while the spare is ahead of it.
const MAX_PAUSE: std::time::Duration = std::time::Duration::from_millis(64);

#[derive(Default)]
struct State {
    /// The writer asked for a spare and none is ready yet.
    wanted: bool,
    ready: Option<PathBuf>,
    stop: bool,
}

/// One shard's spare-maker thread.
pub(crate) struct Spares {
    shared: Arc<(Mutex<State>, Condvar)>,
    /// Bytes written to the active segment (set by the writer, read by the pacing).
    active: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Spares {
    /// Starts the thread for the shard in `dir`, making spares of `bytes` bytes.
    pub(crate) fn start(dir: &Path, bytes: u64, name: String) -> io::Result<Spares> {
        let shared = Arc::new((Mutex::new(State::default()), Condvar::new()));
        let active = Arc::new(AtomicU64::new(0));
        let (sh, path, fill) = (shared.clone(), dir.join(SPARE_NAME), active.clone());
        let thread = std::thread::Builder::new().name(name).spawn(move || loop {
            {
                let mut st = lock(&sh.0);
                while !st.wanted && !st.stop {
                    st = sh.1.wait(st).unwrap_or_else(|p| p.into_inner());
                }
                if st.stop {
                    return;
                }
            }
            let made = make(&path, bytes, &|| lock(&sh.0).stop, &|| fill.load(Ordering::Relaxed));
            let mut st = lock(&sh.0);
            st.wanted = false;
            match made {
                Ok(true) => st.ready = Some(path.clone()),
                Ok(false) => {
                    let _ = std::fs::remove_file(&path);
                }
                Err(e) => {
                    // A full disk, most likely: the next segment grows as it is written.
                    tracing::warn!(file = %path.display(), error = %e, "could not prepare a spare segment");
                    let _ = std::fs::remove_file(&path);
                }
            }
        })?;
        Ok(Spares { shared, active, thread: Some(thread) })
    }

    /// The active segment now holds `len` bytes (paces the spare being made).
    pub(crate) fn progress(&self, len: u64) {
        self.active.store(len, Ordering::Relaxed);
    }

    /// A segment holding `len` bytes became active (a roll, or a reopened log): the next
    /// spare is made beside it, paced by it.
    pub(crate) fn segment_started(&self, len: u64) {
        self.progress(len);
        self.want();
    }

    /// Asks for a spare, unless one is ready or being made.
    pub(crate) fn want(&self) {
        let mut st = lock(&self.shared.0);
        if st.ready.is_none() && !st.wanted {
            st.wanted = true;
            self.shared.1.notify_one();
        }
    }

    /// The ready spare, if there is one: the caller renames it into place.
    pub(crate) fn take(&self) -> Option<PathBuf> {
        lock(&self.shared.0).ready.take()
    }

    /// Stops the thread; a spare being made is abandoned and a ready one removed (a closed
    /// log leaves no spare behind; the next open would remove it anyway).
    pub(crate) fn stop(&mut self) {
        lock(&self.shared.0).stop = true;
        self.shared.1.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(p) = lock(&self.shared.0).ready.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Drop for Spares {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Writes `bytes` zeros to a new file at `path` and syncs them; `Ok(false)` if `stopped`
/// said to give up first. Paced by `active` (the active segment's length): see [`ahead`].
fn make(path: &Path, bytes: u64, stopped: &dyn Fn() -> bool, active: &dyn Fn() -> u64) -> io::Result<bool> {
    let f = OpenOptions::new().create(true).truncate(true).write(true).open(path)?;
    let zeros = vec![0u8; ZERO_CHUNK];
    let mut at = 0u64;
    while at < bytes {
        let mut pause = PAUSE;
        loop {
            if stopped() {
                return Ok(false);
            }
            if !ahead(at, active(), bytes) {
                break;
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(MAX_PAUSE);
        }
        let n = (bytes - at).min(ZERO_CHUNK as u64) as usize;
        f.write_all_at(&zeros[..n], at)?;
        write_back(&f, at, n as u64);
        at += n as u64;
    }
    f.sync_all()?;
    Ok(true)
}

/// Whether a spare with `made` of its `bytes` written is far enough ahead of an active
/// segment holding `active` bytes to wait: more than a quarter of a segment.
fn ahead(made: u64, active: u64, bytes: u64) -> bool {
    made > active.saturating_add(bytes / 4)
}

/// Writes `len` bytes at `at` back to the disk and waits for them (data only, no journal
/// commit). Pacing only: the final `fsync` is what makes the spare durable, so a failure
/// here changes nothing.
fn write_back(f: &std::fs::File, at: u64, len: u64) {
    use std::os::unix::io::AsRawFd;
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: sync_file_range on a valid, owned descriptor has no memory-safety preconditions.
    let _ = unsafe { libc::sync_file_range(f.as_raw_fd(), at as i64, len as i64, flags) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spare_is_made_when_wanted_and_taken_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spares::start(dir.path(), 3 << 20, "spare-test".into()).unwrap();
        assert!(s.take().is_none(), "nothing made before it is wanted");
        s.want();
        // Kept a quarter ahead of the active segment: the spare is finished once that is
        // three quarters full.
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(s.take().is_none(), "not finished while the active segment is empty");
        s.progress(3 << 20);
        let t = std::time::Instant::now();
        let path = loop {
            if let Some(p) = s.take() {
                break p;
            }
            assert!(t.elapsed() < std::time::Duration::from_secs(30), "no spare made");
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        let data = std::fs::read(&path).unwrap();
        assert_eq!(data.len(), 3 << 20);
        assert!(data.iter().all(|&b| b == 0));
        assert!(s.take().is_none(), "taken once");
        s.stop();
    }

    #[test]
    fn the_spare_keeps_a_quarter_segment_ahead() {
        let seg = 16 << 20;
        assert!(!ahead(0, 0, seg), "starts at once");
        assert!(!ahead(4 << 20, 0, seg), "a quarter ahead is not yet too far");
        assert!(ahead((4 << 20) + 1, 0, seg));
        assert!(!ahead(8 << 20, 6 << 20, seg), "follows the active segment");
        assert!(!ahead(seg - 1, u64::MAX, seg), "a full active segment finishes the spare");
    }
}
