//! The hand-off probe: the best a group commit can do for appenders that each wait for
//! their own append, measured on this machine in the same run as the log.
//!
//! The raw probe ([`crate::raw_disk_probe_in`]) writes and syncs whole batches from one
//! thread: it never hands a record from an appender to a committer and back. Appenders that
//! wait for their append do, once per commit each way, and on a virtual machine a thread
//! wake-up costs a fair part of an `fdatasync`. This probe keeps the hand-off and drops
//! everything else a log does: `appenders` tasks or threads append a record each and wait,
//! in a loop; one committer thread waits until *all* of them have appended (the best batch
//! a closed loop can make, which no log can know in advance), writes their bytes with one
//! `pwrite` and syncs them with one `fdatasync`, then wakes them all. No framing, checksum,
//! index or queue limit. Like the raw probe, it writes into a zero-filled file or a growing
//! one, to match the log it is compared with.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// How the appenders of [`handoff_probe`] wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appenders {
    /// Tokio tasks on a multi-threaded runtime (one worker per core), `.await`ing.
    Tasks,
    /// OS threads, blocked until woken through a tokio oneshot channel.
    Threads,
    /// OS threads, each parked (`std::thread::park`, a futex of its own) until the committer
    /// unparks it: the leanest wake-up std offers.
    ThreadsParked,
    /// OS threads that all wait on one condition variable, which the committer notifies
    /// once per commit (one wake-up call for the whole batch).
    ThreadsBroadcast,
    /// OS threads with no lock at all: an append is one atomic increment, the last appender
    /// of a round wakes the committer through a futex, and all threads wait on one futex
    /// word (the commit count) that one `FUTEX_WAKE` releases. A woken thread takes no mutex,
    /// so nothing convoys: the leanest hand-off Linux offers (see [`futex`]).
    ThreadsFutex,
    /// [`Appenders::ThreadsFutex`] with no sleeping at all: appenders and committer give
    /// their CPU away (`sched_yield`) and look again instead of waiting on a futex, as the
    /// log's blocked waiters do for a while ([`promptmq_wal::Options::wait_yield`]). No
    /// wake-up is ever needed; the waiting threads keep the cores busy instead.
    ThreadsYield,
}

/// The file region a `zeroed` probe overwrites in turn: written full of zeros and synced
/// first, like the log's preallocated segments, so that a sync carries data and not a file
/// size.
const REGION: u64 = 64 << 20;

/// How the committer completes one queued append.
type Wake = Box<dyn FnOnce() + Send>;

struct Round {
    waiting: Vec<Wake>,
    stop: bool,
}

struct Shared {
    round: Mutex<Round>,
    full: Condvar,
    appenders: usize,
    /// Commits done, for [`Appenders::ThreadsBroadcast`].
    commits: Mutex<u64>,
    committed: Condvar,
}

impl Shared {
    /// Queues one append, which the committer completes with `wake`; it is told when every
    /// appender has one queued. Once the probe stops, returns false and queues nothing (the
    /// committer may be gone).
    fn queue(&self, wake: Wake) -> bool {
        let mut r = self.round.lock().unwrap_or_else(|p| p.into_inner());
        if r.stop {
            return false;
        }
        r.waiting.push(wake);
        if r.waiting.len() >= self.appenders {
            self.full.notify_one();
        }
        true
    }

    /// [`Shared::queue`] through a oneshot channel, which fails at once if the probe stopped.
    fn append(&self) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        self.queue(Box::new(move || {
            let _ = tx.send(());
        }));
        rx
    }

    /// [`Shared::queue`] for a thread that waits for the next commit with all the others.
    /// False once the probe stopped.
    fn append_broadcast(&self) -> bool {
        let mut n = self.commits.lock().unwrap_or_else(|p| p.into_inner());
        let seen = *n;
        // Queued under `commits`, so the commit that takes it cannot be counted before we wait.
        if !self.queue(Box::new(|| {})) {
            return false;
        }
        while *n == seen {
            n = self.committed.wait(n).unwrap_or_else(|p| p.into_inner());
        }
        true
    }

    /// [`Shared::queue`] for a thread that parks until its append is complete. False once the
    /// probe stopped.
    fn append_parked(&self) -> bool {
        let done = Arc::new(AtomicBool::new(false));
        let (flag, me) = (done.clone(), std::thread::current());
        let queued = self.queue(Box::new(move || {
            flag.store(true, Ordering::Release);
            me.unpark();
        }));
        // park() may return spuriously: the flag says whether the wake-up was ours.
        while queued && !done.load(Ordering::Acquire) {
            std::thread::park();
        }
        queued
    }
}

/// What [`handoff_probe`] runs.
#[derive(Debug, Clone, Copy)]
pub struct Handoff {
    /// How the appenders wait.
    pub how: Appenders,
    /// How many append in the loop.
    pub appenders: usize,
    /// Bytes of each append: a log record's payload...
    pub record_bytes: usize,
    /// ...and its framing.
    pub frame_bytes: usize,
    /// Into a zero-filled region (as a log with preallocated segments writes) rather than a
    /// growing file.
    pub zeroed: bool,
}

/// Runs the appenders of `h` for `secs` seconds through one committer thread that syncs
/// every commit, in a file in `dir`. Returns appends per second.
pub fn handoff_probe(dir: &Path, h: Handoff, secs: f64) -> std::io::Result<f64> {
    let Handoff { how, appenders, record_bytes, frame_bytes, zeroed } = h;
    let appenders = appenders.max(1);
    let path = dir.join("handoff-probe.bin");
    let file = OpenOptions::new().create(true).truncate(true).read(true).write(true).open(&path)?;
    if zeroed {
        let zeros = vec![0u8; 1 << 20];
        for at in (0..REGION).step_by(zeros.len()) {
            file.write_all_at(&zeros, at)?;
        }
        file.sync_all()?;
    }
    if matches!(how, Appenders::ThreadsFutex | Appenders::ThreadsYield) {
        let batch = vec![0x5au8; (record_bytes + frame_bytes) * appenders];
        let rate = futex::run(file, batch, appenders, zeroed, how == Appenders::ThreadsYield, secs);
        std::fs::remove_file(&path)?;
        return rate;
    }
    let shared = Arc::new(Shared {
        round: Mutex::new(Round { waiting: Vec::with_capacity(appenders), stop: false }),
        full: Condvar::new(),
        appenders,
        commits: Mutex::new(0),
        committed: Condvar::new(),
    });
    let committer = {
        let shared = shared.clone();
        let batch = vec![0x5au8; (record_bytes + frame_bytes) * appenders];
        std::thread::spawn(move || -> std::io::Result<()> {
            let mut pos = 0u64;
            loop {
                let waiting = {
                    let mut r = shared.round.lock().unwrap_or_else(|p| p.into_inner());
                    while r.waiting.len() < shared.appenders && !r.stop {
                        r = shared.full.wait(r).unwrap_or_else(|p| p.into_inner());
                    }
                    if r.stop && r.waiting.is_empty() {
                        return Ok(());
                    }
                    std::mem::take(&mut r.waiting)
                };
                let bytes = &batch[..(record_bytes + frame_bytes) * waiting.len()];
                if zeroed && pos + bytes.len() as u64 > REGION {
                    pos = 0;
                }
                file.write_all_at(bytes, pos)?;
                file.sync_data()?;
                pos += bytes.len() as u64;
                for wake in waiting {
                    wake();
                }
                *shared.commits.lock().unwrap_or_else(|p| p.into_inner()) += 1;
                shared.committed.notify_all();
            }
        })
    };
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    match how {
        Appenders::Tasks => {
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            rt.block_on(async {
                let running: Vec<_> = (0..appenders)
                    .map(|_| {
                        let (shared, stop, count) = (shared.clone(), stop.clone(), count.clone());
                        tokio::spawn(async move {
                            while !stop.load(Ordering::Relaxed) {
                                if shared.append().await.is_err() {
                                    break;
                                }
                                count.fetch_add(1, Ordering::Relaxed);
                            }
                        })
                    })
                    .collect();
                tokio::time::sleep(Duration::from_secs_f64(secs)).await;
                stop.store(true, Ordering::Relaxed);
                finish(&shared);
                for r in running {
                    let _ = r.await;
                }
            });
        }
        Appenders::Threads
        | Appenders::ThreadsParked
        | Appenders::ThreadsBroadcast
        | Appenders::ThreadsFutex
        | Appenders::ThreadsYield => {
            let running: Vec<_> = (0..appenders)
                .map(|_| {
                    let (shared, stop, count) = (shared.clone(), stop.clone(), count.clone());
                    std::thread::spawn(move || {
                        while !stop.load(Ordering::Relaxed) {
                            let done = match how {
                                Appenders::ThreadsParked => shared.append_parked(),
                                Appenders::ThreadsBroadcast => shared.append_broadcast(),
                                _ => shared.append().blocking_recv().is_ok(),
                            };
                            if !done {
                                break;
                            }
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                    })
                })
                .collect();
            std::thread::sleep(Duration::from_secs_f64(secs));
            stop.store(true, Ordering::Relaxed);
            finish(&shared);
            for r in running {
                let _ = r.join();
            }
        }
    }
    let elapsed = start.elapsed();
    let done = committer.join().unwrap_or_else(|_| Err(std::io::Error::other("the committer thread panicked")));
    std::fs::remove_file(&path)?;
    done?;
    Ok(count.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64())
}

/// Stops the committer once it has committed what is queued: appenders still waiting are
/// completed by that last commit.
fn finish(shared: &Shared) {
    shared.round.lock().unwrap_or_else(|p| p.into_inner()).stop = true;
    shared.full.notify_one();
}

/// [`Appenders::ThreadsFutex`]: the same rounds as the other ways, with atomics and futexes
/// in place of locks.
mod futex {
    use super::*;
    use std::sync::atomic::AtomicU32;

    /// Sleeps while `word` holds `seen` (or until a wake-up; callers loop).
    fn wait(word: &AtomicU32, seen: u32) {
        // SAFETY: FUTEX_WAIT reads the aligned u32 behind a live reference and writes nothing.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                word.as_ptr(),
                libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                seen,
                std::ptr::null::<libc::timespec>(),
            );
        }
    }

    /// Wakes up to `n` threads sleeping on `word`.
    fn wake(word: &AtomicU32, n: i32) {
        // SAFETY: FUTEX_WAKE only uses the address as a key.
        unsafe {
            libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG, n);
        }
    }

    struct Shared {
        /// Commits done: appenders wait for it to move past the value they saw.
        commits: AtomicU32,
        /// Appends queued for the next commit: the committer waits for it to reach `appenders`.
        queued: AtomicU32,
        stop: AtomicBool,
        count: AtomicU64,
    }

    pub(super) fn run(
        file: std::fs::File,
        batch: Vec<u8>,
        appenders: usize,
        zeroed: bool,
        yielding: bool,
        secs: f64,
    ) -> std::io::Result<f64> {
        let n = appenders as u32;
        // Sleeps on `word` while it holds `seen`, or (yielding) gives the CPU away once.
        let pause = move |word: &AtomicU32, seen: u32| match yielding {
            true => std::thread::yield_now(),
            false => wait(word, seen),
        };
        let shared = Arc::new(Shared {
            commits: AtomicU32::new(0),
            queued: AtomicU32::new(0),
            stop: AtomicBool::new(false),
            count: AtomicU64::new(0),
        });
        let committer = {
            let shared = shared.clone();
            std::thread::spawn(move || -> std::io::Result<()> {
                let mut pos = 0u64;
                loop {
                    loop {
                        let q = shared.queued.load(Ordering::Acquire);
                        if q >= n {
                            break;
                        }
                        if shared.stop.load(Ordering::Acquire) {
                            return Ok(());
                        }
                        pause(&shared.queued, q);
                    }
                    shared.queued.store(0, Ordering::Release);
                    if zeroed && pos + batch.len() as u64 > REGION {
                        pos = 0;
                    }
                    file.write_all_at(&batch, pos)?;
                    file.sync_data()?;
                    pos += batch.len() as u64;
                    shared.commits.fetch_add(1, Ordering::Release);
                    if !yielding {
                        wake(&shared.commits, i32::MAX);
                    }
                }
            })
        };
        let start = Instant::now();
        let running: Vec<_> = (0..appenders)
            .map(|_| {
                let shared = shared.clone();
                std::thread::spawn(move || {
                    while !shared.stop.load(Ordering::Relaxed) {
                        // Read before queuing: the commit that takes this append cannot be
                        // counted before the increment below completes the round.
                        let seen = shared.commits.load(Ordering::Acquire);
                        if shared.queued.fetch_add(1, Ordering::AcqRel) + 1 == n && !yielding {
                            wake(&shared.queued, 1);
                        }
                        while shared.commits.load(Ordering::Acquire) == seen {
                            if shared.stop.load(Ordering::Acquire) {
                                return;
                            }
                            pause(&shared.commits, seen);
                        }
                        shared.count.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_secs_f64(secs));
        let count = shared.count.load(Ordering::Relaxed);
        let elapsed = start.elapsed();
        // Stop everyone: the committer sees `stop` (or a full round), the appenders a new count.
        shared.stop.store(true, Ordering::Release);
        shared.queued.fetch_add(n, Ordering::AcqRel);
        wake(&shared.queued, 1);
        let done = committer.join().unwrap_or_else(|_| Err(std::io::Error::other("the committer thread panicked")));
        shared.commits.fetch_add(1, Ordering::Release);
        wake(&shared.commits, i32::MAX);
        for r in running {
            let _ = r.join();
        }
        done?;
        Ok(count as f64 / elapsed.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_and_threads_make_progress_and_stop() {
        let dir = tempfile::tempdir().unwrap();
        for (how, zeroed) in [
            (Appenders::Tasks, true),
            (Appenders::Threads, false),
            (Appenders::ThreadsParked, false),
            (Appenders::ThreadsBroadcast, true),
            (Appenders::ThreadsFutex, false),
            (Appenders::ThreadsFutex, true),
            (Appenders::ThreadsYield, false),
        ] {
            let h = Handoff { how, appenders: 4, record_bytes: 128, frame_bytes: 48, zeroed };
            let rate = handoff_probe(dir.path(), h, 0.2).unwrap();
            assert!(rate > 0.0, "{how:?}: no append completed");
        }
        assert!(!dir.path().join("handoff-probe.bin").exists(), "the probe file is removed");
    }
}
