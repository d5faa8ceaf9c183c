//! Shared pieces of PromptMQ's benchmarks: the raw-disk probe that WAL figures are compared
//! against, the hand-off probe (the same with appenders that wait), and latency percentiles.

pub mod handoff;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// Writes `batches` batches of `batch_bytes` bytes at consecutive positions of a new file in
/// `dir`, with one `pwrite` and one `fdatasync` per batch (`sync`), exactly the I/O pattern
/// of one shard's group commit. Returns the elapsed time and per-batch latencies.
pub fn raw_disk_probe(
    dir: &Path,
    batch_bytes: usize,
    batches: usize,
    sync: bool,
) -> std::io::Result<(Duration, Vec<Duration>)> {
    raw_disk_probe_in(dir, batch_bytes, batches, sync, false)
}

/// [`raw_disk_probe`], with `zeroed`: into a file written full of zeros and synced first,
/// as the log's preallocated segments are (a sync then carries data, not a new file size).
pub fn raw_disk_probe_in(
    dir: &Path,
    batch_bytes: usize,
    batches: usize,
    sync: bool,
    zeroed: bool,
) -> std::io::Result<(Duration, Vec<Duration>)> {
    let path = dir.join("raw-probe.bin");
    let f = OpenOptions::new().create(true).truncate(true).read(true).write(true).open(&path)?;
    if zeroed {
        let zeros = vec![0u8; 1 << 20];
        let total = (batch_bytes * batches) as u64;
        let mut at = 0u64;
        while at < total {
            let n = (total - at).min(zeros.len() as u64) as usize;
            f.write_all_at(&zeros[..n], at)?;
            at += n as u64;
        }
        f.sync_all()?;
    }
    let buf = vec![0x5au8; batch_bytes];
    let mut lat = Vec::with_capacity(batches);
    let start = Instant::now();
    let mut pos = 0u64;
    for _ in 0..batches {
        let t = Instant::now();
        f.write_all_at(&buf, pos)?;
        if sync {
            f.sync_data()?;
        }
        pos += batch_bytes as u64;
        lat.push(t.elapsed());
    }
    let elapsed = start.elapsed();
    drop(f);
    std::fs::remove_file(&path)?;
    Ok((elapsed, lat))
}

/// What a log that preallocates and never deletes pays on top of [`raw_disk_probe_in`]'s
/// zero-filled file: `batches` batches of `batch_bytes` bytes, one `pwrite` + `fdatasync`
/// each, into files of `segment_bytes`. Every file after the first is written full of zeros
/// by a second thread while the one before it fills (from half full on, 256 KiB at a time,
/// each chunk written back before the next, then `fsync`); the writer moves on to it when
/// the one before is full, waiting for it if it is not ready (that wait is timed). The
/// first file is zero-filled before the clock starts. Returns the elapsed time.
pub fn raw_disk_probe_zeroing(
    dir: &Path,
    batch_bytes: usize,
    batches: usize,
    segment_bytes: u64,
) -> std::io::Result<Duration> {
    use std::sync::mpsc;
    let seg = segment_bytes.max(batch_bytes as u64);
    let name = |i: u64| dir.join(format!("raw-zeroing-{i}.bin"));
    let mut file = zero_filled(&name(0), seg)?;
    // The zeroing thread makes the file it is asked for and hands it back.
    let (want_tx, want_rx) = mpsc::channel::<std::path::PathBuf>();
    let (made_tx, made_rx) = mpsc::channel::<std::io::Result<std::fs::File>>();
    let zeroer = std::thread::spawn(move || {
        for path in want_rx {
            if made_tx.send(zero_filled(&path, seg)).is_err() {
                return;
            }
        }
    });
    let buf = vec![0x5au8; batch_bytes];
    let (mut pos, mut index, mut asked) = (0u64, 0u64, false);
    let start = Instant::now();
    let mut outcome = Ok(());
    for _ in 0..batches {
        if !asked && (pos >= seg / 2 || pos + batch_bytes as u64 > seg) {
            let _ = want_tx.send(name(index + 1));
            asked = true;
        }
        if pos + batch_bytes as u64 > seg {
            match made_rx.recv() {
                Ok(Ok(f)) => file = f,
                Ok(Err(e)) => {
                    outcome = Err(e);
                    break;
                }
                Err(_) => {
                    outcome = Err(std::io::Error::other("the zeroing thread stopped"));
                    break;
                }
            }
            let _ = std::fs::remove_file(name(index));
            (index, pos, asked) = (index + 1, 0, false);
        }
        if let Err(e) = file.write_all_at(&buf, pos).and_then(|_| file.sync_data()) {
            outcome = Err(e);
            break;
        }
        pos += batch_bytes as u64;
    }
    let elapsed = start.elapsed();
    drop(want_tx);
    let _ = zeroer.join();
    for i in index..=index + 1 {
        let _ = std::fs::remove_file(name(i));
    }
    outcome.map(|_| elapsed)
}

/// A new file of `bytes` zeros at `path`, written back in 256 KiB chunks and synced.
fn zero_filled(path: &Path, bytes: u64) -> std::io::Result<std::fs::File> {
    let f = OpenOptions::new().create(true).truncate(true).read(true).write(true).open(path)?;
    let zeros = vec![0u8; 256 << 10];
    let mut at = 0u64;
    while at < bytes {
        let n = (bytes - at).min(zeros.len() as u64) as usize;
        f.write_all_at(&zeros[..n], at)?;
        write_back(&f, at, n as u64);
        at += n as u64;
    }
    f.sync_all()?;
    Ok(f)
}

/// Starts writeback of `len` bytes at `at` and waits for it (data only): keeps zeros from
/// reaching the disk as one flush of a whole file.
fn write_back(f: &std::fs::File, at: u64, len: u64) {
    use std::os::unix::io::AsRawFd;
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: sync_file_range on a valid, owned descriptor has no memory-safety preconditions.
    let _ = unsafe { libc::sync_file_range(f.as_raw_fd(), at as i64, len as i64, flags) };
}

/// CPU time this process has used so far, all threads (user + system; `/proc/self/stat`,
/// clock-tick resolution). `None` where that file is not there or not understood.
pub fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // Linux reports in USER_HZ, which is 100 on every architecture it runs on.
    Some(Duration::from_millis(ticks * 10))
}

/// The `p`-th percentile (0..=100) of `samples` (sorted in place).
pub fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort_unstable();
    let idx = ((p / 100.0) * (samples.len() - 1) as f64).round() as usize;
    samples[idx.min(samples.len() - 1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeroing_probe_writes_across_files_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        // 64 KiB files of 8 KiB batches: 50 batches run through six files.
        let el = raw_disk_probe_zeroing(dir.path(), 8 << 10, 50, 64 << 10).unwrap();
        assert!(el > Duration::ZERO);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "every probe file is removed");
    }

    #[test]
    fn percentile_picks_the_right_sample() {
        let mut v: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        assert_eq!(percentile(&mut v, 50.0), Duration::from_millis(51));
        assert_eq!(percentile(&mut v, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&mut v, 100.0), Duration::from_millis(100));
        assert_eq!(percentile(&mut [], 50.0), Duration::ZERO);
    }

    #[test]
    fn process_cpu_counts_work() {
        let before = process_cpu().expect("/proc/self/stat");
        let t = Instant::now();
        let mut x = 0u64;
        while t.elapsed() < Duration::from_millis(100) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let after = process_cpu().expect("/proc/self/stat");
        assert!(after > before, "100 ms of busy work shows up in the process's CPU time");
    }

    #[test]
    fn probe_writes_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let (_, lat) = raw_disk_probe(dir.path(), 4096, 3, true).unwrap();
        assert_eq!(lat.len(), 3);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
