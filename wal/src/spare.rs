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
//! Where retention or compaction deletes segments, their files are reused instead (at most
//! [`MAX_RECYCLED`] waiting): a deleted segment's blocks already hold data, so they serve as
//! well as zeros, and writing the zeros — as many bytes as the log writes records, competing
//! with its syncs for the disk — is saved. Its old records stay in the file until the new
//! ones overwrite them. That is safe because they are older: their LSNs are below the new
//! segment's first, and recovery takes no record whose LSN goes backwards. The old header
//! and the start of the file are zeroed and synced first, so a segment whose roll a crash
//! interrupted reads as torn at creation, never as the old segment. What the new records
//! have not overwritten yet is an unfinished tail to recovery (cut off after a crash; a
//! clean close cuts it first).
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

/// Ending of every spare's name, recycled ones waiting included (removed at open).
pub(crate) const SPARE_EXTENSION: &str = ".spare";

/// Deleted segments kept for reuse at most. Each holds a segment's worth of disk space
/// that retention would otherwise have freed, so only a few.
pub(crate) const MAX_RECYCLED: usize = 2;

/// Bytes zeroed at the start of a recycled file: its header and first records.
const RECYCLE_ZEROED: usize = 4096;

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
    ready: Option<Spare>,
    stop: bool,
    /// Deleted segments' files waiting to be made into spares.
    recycled: Vec<PathBuf>,
    /// Names the next recycled file.
    recycled_seq: u64,
}

/// A spare segment file, ready to be renamed into place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Spare {
    pub(crate) path: PathBuf,
    /// Made from a deleted segment: beyond what is written into it, it holds old records,
    /// not zeros (cut them off before the file is closed for good).
    pub(crate) recycled: bool,
}

/// Hands deleted segments' files to a shard's spare maker ([`Spares::recycler`]).
#[derive(Clone)]
pub(crate) struct Recycler {
    shared: Arc<(Mutex<State>, Condvar)>,
    dir: PathBuf,
    bytes: u64,
}

impl std::fmt::Debug for Recycler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recycler").field("dir", &self.dir).field("bytes", &self.bytes).finish()
    }
}

impl Recycler {
    /// Takes the file of a deleted segment at `path` (moved under a spare's name) if it is
    /// large enough and fewer than [`MAX_RECYCLED`] wait; `Ok(false)`: the caller deletes it.
    pub(crate) fn offer(&self, path: &Path) -> io::Result<bool> {
        if std::fs::metadata(path)?.len() < self.bytes {
            return Ok(false); // compressed, or made when segments were smaller
        }
        let mut st = lock(&self.shared.0);
        if st.stop || st.recycled.len() >= MAX_RECYCLED {
            return Ok(false);
        }
        let to = self.dir.join(format!("recycled-{}{SPARE_EXTENSION}", st.recycled_seq));
        std::fs::rename(path, &to)?;
        st.recycled_seq += 1;
        st.recycled.push(to);
        self.shared.1.notify_one();
        Ok(true)
    }
}

/// One shard's spare-maker thread.
pub(crate) struct Spares {
    shared: Arc<(Mutex<State>, Condvar)>,
    /// Bytes written to the active segment (set by the writer, read by the pacing).
    active: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
    dir: PathBuf,
    bytes: u64,
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
            let old = lock(&sh.0).recycled.pop();
            if let Some(old) = old {
                match reuse(&old, &path, bytes) {
                    Ok(()) => {
                        let mut st = lock(&sh.0);
                        st.wanted = false;
                        st.ready = Some(Spare { path: path.clone(), recycled: true });
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(file = %old.display(), error = %e, "could not reuse a deleted segment; making a spare");
                        let _ = std::fs::remove_file(&old);
                        let _ = std::fs::remove_file(&path);
                    }
                }
            }
            // Zeros are given up for a deleted segment that arrives meanwhile: it is ready
            // sooner, and saves the disk the rest of them.
            let give_up = || {
                let st = lock(&sh.0);
                st.stop || !st.recycled.is_empty()
            };
            let made = make(&path, bytes, &give_up, &|| fill.load(Ordering::Relaxed));
            let mut st = lock(&sh.0);
            match made {
                Ok(true) => {
                    st.wanted = false;
                    st.ready = Some(Spare { path: path.clone(), recycled: false });
                }
                Ok(false) => {
                    // Stopping, or still wanted and a deleted segment is there to reuse.
                    let _ = std::fs::remove_file(&path);
                }
                Err(e) => {
                    st.wanted = false;
                    // A full disk, most likely: the next segment grows as it is written.
                    tracing::warn!(file = %path.display(), error = %e, "could not prepare a spare segment");
                    let _ = std::fs::remove_file(&path);
                }
            }
        })?;
        Ok(Spares { shared, active, thread: Some(thread), dir: dir.to_path_buf(), bytes })
    }

    /// What maintenance hands deleted segments to.
    pub(crate) fn recycler(&self) -> Recycler {
        Recycler { shared: self.shared.clone(), dir: self.dir.clone(), bytes: self.bytes }
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
    pub(crate) fn take(&self) -> Option<Spare> {
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
        let mut st = lock(&self.shared.0);
        for p in st.ready.take().map(|s| s.path).into_iter().chain(st.recycled.drain(..)) {
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

/// Makes the file of a deleted segment at `old` the spare at `path`: `bytes` long, its
/// header and first records zeroed, synced. Only its LSNs, all below any the shard writes
/// from now on, tell its remaining records from new ones (see the module's docs).
fn reuse(old: &Path, path: &Path, bytes: u64) -> io::Result<()> {
    let f = OpenOptions::new().write(true).open(old)?;
    if f.metadata()?.len() < bytes {
        return Err(io::Error::other("shorter than a segment"));
    }
    f.set_len(bytes)?;
    f.write_all_at(&[0u8; RECYCLE_ZEROED][..(bytes as usize).min(RECYCLE_ZEROED)], 0)?;
    f.sync_all()?;
    std::fs::rename(old, path)
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

    /// The spare thread of a shard in a new directory, making spares of `bytes`.
    fn started(bytes: u64) -> (tempfile::TempDir, Spares) {
        let dir = tempfile::tempdir().unwrap();
        let s = Spares::start(dir.path(), bytes, "spare-test".into()).unwrap();
        (dir, s)
    }

    #[test]
    fn a_spare_is_made_when_wanted_and_taken_once() {
        let (_dir, mut s) = started(3 << 20);
        assert!(s.take().is_none(), "nothing made before it is wanted");
        s.want();
        // Kept a quarter ahead of the active segment: the spare is finished once that is
        // three quarters full.
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(s.take().is_none(), "not finished while the active segment is empty");
        s.progress(3 << 20);
        let spare = wait_for_spare(&s);
        assert!(!spare.recycled);
        let data = std::fs::read(&spare.path).unwrap();
        assert_eq!(data.len(), 3 << 20);
        assert!(data.iter().all(|&b| b == 0));
        assert!(s.take().is_none(), "taken once");
        s.stop();
    }

    fn wait_for_spare(s: &Spares) -> Spare {
        let t = std::time::Instant::now();
        loop {
            if let Some(p) = s.take() {
                return p;
            }
            assert!(t.elapsed() < std::time::Duration::from_secs(30), "no spare made");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    #[test]
    fn a_deleted_segment_becomes_the_next_spare_with_its_start_zeroed() {
        let bytes = 64 << 10;
        let (dir, mut s) = started(bytes);
        let r = s.recycler();
        // A sealed segment runs a little past the segment size (its last batch).
        let old = dir.path().join("00000000000000000007.seg");
        std::fs::write(&old, vec![0x5a; bytes as usize + 100]).unwrap();
        assert!(r.offer(&old).unwrap());
        assert!(!old.exists(), "moved under a spare's name");
        s.want();
        let spare = wait_for_spare(&s);
        assert!(spare.recycled);
        let data = std::fs::read(&spare.path).unwrap();
        assert_eq!(data.len() as u64, bytes, "cut to the segment size");
        assert!(data[..RECYCLE_ZEROED].iter().all(|&b| b == 0), "old header and first records zeroed");
        assert!(data[RECYCLE_ZEROED..].iter().all(|&b| b == 0x5a), "the rest is left as it was");
        s.stop();
    }

    #[test]
    fn zeros_are_given_up_for_a_deleted_segment_that_arrives() {
        let bytes = 8 << 20;
        let (dir, mut s) = started(bytes);
        // The active segment is empty: the zeros stop a quarter of a segment ahead of it.
        s.want();
        let spare = dir.path().join(SPARE_NAME);
        let t = std::time::Instant::now();
        while std::fs::metadata(&spare).map_or(0, |m| m.len()) < bytes / 4 {
            assert!(t.elapsed() < std::time::Duration::from_secs(30), "no zeros written");
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let old = dir.path().join("00000000000000000003.seg");
        std::fs::write(&old, vec![7; bytes as usize]).unwrap();
        assert!(s.recycler().offer(&old).unwrap());
        let got = wait_for_spare(&s);
        assert!(got.recycled, "the deleted segment, not the zeros being written");
        assert_eq!(std::fs::read(&got.path).unwrap()[RECYCLE_ZEROED], 7);
        s.stop();
    }

    #[test]
    fn only_a_few_whole_segments_are_kept_for_reuse() {
        let bytes = 64 << 10;
        let (dir, mut s) = started(bytes);
        let r = s.recycler();
        let short = dir.path().join("short.seg");
        std::fs::write(&short, vec![1; bytes as usize - 1]).unwrap();
        assert!(!r.offer(&short).unwrap(), "shorter than a segment (compressed, or older size)");
        assert!(short.exists(), "left for the caller to delete");
        let mut kept = Vec::new();
        for i in 0..MAX_RECYCLED + 2 {
            let p = dir.path().join(format!("{i}.seg"));
            std::fs::write(&p, vec![1; bytes as usize]).unwrap();
            kept.push(r.offer(&p).unwrap());
        }
        assert_eq!(kept.iter().filter(|&&k| k).count(), MAX_RECYCLED);
        assert!(r.offer(&dir.path().join("missing.seg")).is_err());
        s.stop();
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(SPARE_EXTENSION))
            .collect();
        assert!(left.is_empty(), "a stopped spare maker leaves no spare behind: {left:?}");
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
