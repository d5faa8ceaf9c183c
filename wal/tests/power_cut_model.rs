//! Power cuts modelled sector by sector, with the log's real writer and real recovery.
//!
//! The log writes through `LazyDisk`, a backend that remembers which bytes of each file
//! were written since that file's last sync. A power cut freezes it (every later write and
//! sync fails) and copies the log as a disk with a volatile write cache could leave it:
//! whatever was synced, plus any subset of the 512-byte sectors written since, in any
//! order — so a commit can be torn with a hole in its middle and valid records after it —
//! a file length anywhere from the synced one to the written one, and no directory entry
//! for a file the writer created (or renamed into place) unless it synced the directory
//! since. The ext4 power-cut tests (`tests/wal_power_loss.rs`) cannot make such holes:
//! their loop device keeps its writes in order.
//!
//! Each copy must open in `strict` mode (a torn commit is a torn tail, never `Corrupt`)
//! with every acknowledged record intact (with `interval(d)`, every one acknowledged more
//! than `d` plus some slack before the cut), and the next cycle goes on from it. The index is
//! left out of the copy, so recovery rebuilds it from the log: this tests the log, and the
//! index has its own crash tests. A lost sector keeps what it held before the write: zeros,
//! or in a reused segment an old record. `POWER_CUT_MODEL_CYCLES` sets the cycles (default
//! 30 per case).

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use promptmq_wal::io::{Backend, FileSync, LogFile, StdBackend};
use promptmq_wal::{Options, RecoveryMode, Retention, SyncMode, Wal};
use rand::{Rng, SeedableRng};

const SECTOR: u64 = 512;

#[derive(Default)]
struct Disk {
    /// The power is off: every write and sync fails.
    cut: bool,
    /// Per file: writes since its last sync, each as its position and what the bytes it
    /// overwrote held (zeros past the old end of the file).
    pending: HashMap<PathBuf, Vec<(u64, Vec<u8>)>>,
    /// Per file: its length at its last sync (what a power cut cannot shorten).
    synced_len: HashMap<PathBuf, u64>,
    /// Set once the log is open: files the writer creates (or renames into place and
    /// opens) from then on have a directory entry that is not durable until their
    /// directory is synced.
    tracking: bool,
    /// Such files whose directory has not been synced since.
    new_entries: std::collections::HashSet<PathBuf>,
}

#[derive(Debug, Clone, Default)]
struct LazyDisk {
    disk: Arc<Mutex<DiskCell>>,
}

/// `Disk` behind a `Debug` the `Backend` trait asks for.
#[derive(Default)]
struct DiskCell(Disk);

impl std::fmt::Debug for DiskCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Disk")
    }
}

fn powered_off() -> io::Error {
    io::Error::other("the power is off")
}

impl LazyDisk {
    fn lock(&self) -> std::sync::MutexGuard<'_, DiskCell> {
        self.disk.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Cuts the power and copies the log in `live` to `image` as the disk keeps it.
    fn cut(&self, live: &Path, image: &Path, rng: &mut impl Rng) -> CutStats {
        let mut cell = self.lock();
        let disk = &mut cell.0;
        disk.cut = true;
        copy_log(live, image);
        let mut stats = CutStats::default();
        for path in &disk.new_entries {
            if rng.gen_bool(0.5) {
                let target = image.join(path.strip_prefix(live).expect("a file of the log"));
                if std::fs::remove_file(target).is_ok() {
                    stats.entries_lost += 1;
                }
            }
        }
        for (path, ranges) in &disk.pending {
            let target = image.join(path.strip_prefix(live).expect("a file of the log"));
            let Ok(f) = std::fs::OpenOptions::new().write(true).open(&target) else { continue };
            let len = f.metadata().expect("metadata").len();
            // Newest first, so that a sector two writes touched goes back to what it held
            // before both.
            for (start, old) in ranges.iter().rev() {
                let (start, end) = (*start, start + old.len() as u64);
                let mut sector = start / SECTOR * SECTOR;
                while sector < end {
                    let (from, to) = (start.max(sector), end.min(sector + SECTOR).min(len));
                    if from < to && rng.gen_bool(0.5) {
                        // Lost: the sector keeps what it held before the write (zeros in a
                        // new or preallocated file, old records in a reused one).
                        use std::os::unix::fs::FileExt;
                        let before = &old[(from - start) as usize..(to - start) as usize];
                        f.write_all_at(before, from).expect("restoring a lost sector");
                        stats.sectors_lost += 1;
                    } else {
                        stats.sectors_kept += 1;
                    }
                    sector += SECTOR;
                }
            }
            // The new length may not have reached the disk either.
            let synced = disk.synced_len.get(path).copied().unwrap_or(0).min(len);
            if synced < len && rng.gen_bool(0.3) {
                f.set_len(rng.gen_range(synced..=len)).expect("cutting the length");
                stats.lengths_cut += 1;
            }
        }
        stats
    }
}

#[derive(Debug, Default)]
struct CutStats {
    sectors_lost: u64,
    sectors_kept: u64,
    lengths_cut: u64,
    /// New files whose directory entry the power cut lost.
    entries_lost: u64,
}

/// Copies the log's files, without the index (rebuilt from the log) and the lock file.
fn copy_log(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("image dir");
    for e in std::fs::read_dir(from).expect("reading the log dir") {
        let e = e.expect("dir entry");
        let (src, name) = (e.path(), e.file_name());
        if name == "index" || name == "LOCK" {
            continue;
        }
        if src.is_dir() {
            copy_log(&src, &to.join(&name));
        } else {
            // Maintenance and the spare thread do not write through the backend: a file
            // they removed or renamed meanwhile is copied as it was before the cut, absent.
            match std::fs::copy(&src, to.join(&name)) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                r => {
                    r.expect("copying a log file");
                }
            }
        }
    }
}

struct LazyFile {
    inner: Box<dyn LogFile>,
    /// Reads what a write is about to overwrite.
    reader: std::fs::File,
    path: PathBuf,
    disk: LazyDisk,
}

impl LazyFile {
    fn boxed(inner: Box<dyn LogFile>, path: &Path, disk: &LazyDisk) -> io::Result<Box<dyn LogFile>> {
        let reader = std::fs::File::open(path)?;
        Ok(Box::new(LazyFile { inner, reader, path: path.to_path_buf(), disk: disk.clone() }))
    }

    /// The `len` bytes at `pos` as they are now, zeros past the end of the file.
    fn before(&self, pos: u64, len: usize) -> io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let mut old = vec![0u8; len];
        let size = self.reader.metadata()?.len();
        let have = size.saturating_sub(pos).min(len as u64) as usize;
        self.reader.read_exact_at(&mut old[..have], pos)?;
        Ok(old)
    }
}

impl LogFile for LazyFile {
    fn write_all_at(&mut self, pos: u64, buf: &[u8]) -> io::Result<()> {
        let mut cell = self.disk.lock();
        if cell.0.cut {
            return Err(powered_off());
        }
        let old = self.before(pos, buf.len())?;
        self.inner.write_all_at(pos, buf)?;
        cell.0.pending.entry(self.path.clone()).or_default().push((pos, old));
        Ok(())
    }

    fn sync_data(&mut self) -> io::Result<()> {
        sync(&self.disk, &self.path)
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        let mut cell = self.disk.lock();
        if cell.0.cut {
            return Err(powered_off());
        }
        self.inner.truncate(len)?;
        // Only a failed write is rolled back this way, before anything after it: taken as
        // durable at once, which a real disk would not promise but this test never needs.
        if let Some(r) = cell.0.pending.get_mut(&self.path) {
            r.retain_mut(|(s, old)| {
                old.truncate(len.saturating_sub(*s) as usize);
                !old.is_empty()
            });
        }
        let synced = cell.0.synced_len.entry(self.path.clone()).or_default();
        *synced = (*synced).min(len);
        Ok(())
    }

    fn sync_handle(&self) -> io::Result<Box<dyn FileSync>> {
        Ok(Box::new(LazySync { path: self.path.clone(), disk: self.disk.clone() }))
    }
}

/// How long a sync takes in this model: long enough for power cuts to land inside syncs.
const SYNC_TAKES: Duration = Duration::from_micros(300);

/// A sync in this model: what was written to the file before it started becomes durable
/// once it ends, if the power is still on then (the test's power cut lands inside syncs).
fn sync(disk: &LazyDisk, path: &Path) -> io::Result<()> {
    let (issued, len) = {
        let cell = disk.lock();
        if cell.0.cut {
            return Err(powered_off());
        }
        (cell.0.pending.get(path).map_or(0, |r| r.len()), std::fs::metadata(path)?.len())
    };
    std::thread::sleep(SYNC_TAKES);
    let mut cell = disk.lock();
    if cell.0.cut {
        return Err(powered_off());
    }
    if let Some(r) = cell.0.pending.get_mut(path) {
        r.drain(..issued.min(r.len()));
    }
    let synced = cell.0.synced_len.entry(path.to_path_buf()).or_default();
    *synced = (*synced).max(len);
    Ok(())
}

struct LazySync {
    path: PathBuf,
    disk: LazyDisk,
}

impl FileSync for LazySync {
    fn sync_data(&self) -> io::Result<()> {
        sync(&self.disk, &self.path)
    }
}

impl Backend for LazyDisk {
    fn create(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
        let mut cell = self.lock();
        if cell.0.cut {
            return Err(powered_off());
        }
        let inner = StdBackend.create(path)?;
        cell.0.synced_len.insert(path.to_path_buf(), 0);
        if cell.0.tracking {
            cell.0.new_entries.insert(path.to_path_buf());
        }
        LazyFile::boxed(inner, path, self)
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
        let mut cell = self.lock();
        if cell.0.cut {
            return Err(powered_off());
        }
        let inner = StdBackend.open(path)?;
        // Opened after recovery (or a spare, zero-filled and synced): all on the disk.
        cell.0.synced_len.insert(path.to_path_buf(), std::fs::metadata(path)?.len());
        if cell.0.tracking {
            // A spare renamed into place: its new name is as fresh as a created file's.
            cell.0.new_entries.insert(path.to_path_buf());
        }
        LazyFile::boxed(inner, path, self)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let mut cell = self.lock();
        if cell.0.cut {
            return Err(powered_off());
        }
        cell.0.new_entries.retain(|f| f.parent() != Some(path));
        Ok(())
    }

    fn name(&self) -> &'static str {
        "lazy-disk"
    }
}

/// What a run varies.
#[derive(Debug, Clone, Copy)]
struct Case {
    sync: SyncMode,
    preallocate: bool,
    /// Streams keep their last 300 records; a thread applies retention every 10 ms, so
    /// deleted segments' files are reused, old records and all. (Without the index, the
    /// streams jump over the deleted segments: `ShardReport::retention_gaps`.)
    retention: bool,
    /// Acknowledged records older than this at the power cut must survive: zero with
    /// `always`; with `interval(d)`, `d` and some slack for the sync thread.
    loss_window: Duration,
    /// How long each cycle appends before the power goes (ms).
    run_ms: (u64, u64),
}

/// Slack for the `interval` sync thread to be scheduled on a loaded machine.
const INTERVAL_SLACK: Duration = Duration::from_millis(60);

const RETENTION: Retention = Retention { max_age: None, max_bytes: None, max_records: Some(300) };

fn options(case: Case) -> Options {
    // With retention, small segments: several are deleted and reused in each short cycle.
    let segment = if case.retention { 16 << 10 } else { 64 << 10 };
    Options::default().shards(2).segment_bytes(segment).sync(case.sync).preallocate(case.preallocate)
}

/// Stream name → offset → payload of every acknowledged record.
type Acked = HashMap<String, HashMap<u64, String>>;

/// Appends from four threads (single appends, and batches over several streams) until the
/// power goes; returns what was acknowledged.
#[allow(clippy::too_many_arguments)]
fn append_until_cut(
    wal: &Wal,
    cycle: usize,
    retention: bool,
    disk: &LazyDisk,
    live: &Path,
    image: &Path,
    rng: &mut impl Rng,
    case: Case,
) -> Acked {
    let acked = Arc::new(Mutex::new(Vec::<(String, u64, String, Instant)>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    if retention {
        // Set on each stream: a stream restored from the log alone (the index is rebuilt
        // every cycle) keeps everything.
        for name in ["s0", "s1", "s2"] {
            let s = wal.stream(name).expect("stream");
            wal.set_retention(&s, RETENTION).expect("set_retention");
        }
    }
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (wal, acked, stop) = (wal.clone(), acked.clone(), stop.clone());
            std::thread::spawn(move || {
                let names: Vec<String> = (0..3).map(|k| format!("s{k}")).collect();
                let Ok(streams) = names.iter().map(|n| wal.stream(n)).collect::<Result<Vec<_>, _>>() else { return };
                for i in 0..20_000u64 {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let n = if t == 3 { 1 + (i % 7) as usize } else { 1 };
                    let mut batch = wal.batch();
                    let sent: Vec<_> = (0..n)
                        .map(|j| {
                            let k = (t + j + i as usize) % 3;
                            let payload = format!("c{cycle}-t{t}-i{i}-j{j}-{}", "p".repeat((i % 200) as usize));
                            let done = batch.append(&streams[k], payload.clone());
                            (k, payload, done)
                        })
                        .collect();
                    batch.submit();
                    for (k, payload, done) in sent {
                        match done.wait() {
                            Ok(offset) => {
                                acked.lock().unwrap().push((names[k].clone(), offset, payload, Instant::now()))
                            }
                            Err(_) => return,
                        }
                    }
                }
            })
        })
        .collect();
    let maintenance = {
        let (wal, stop) = (wal.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if retention {
                    let _ = wal.apply_retention();
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(rng.gen_range(case.run_ms.0..case.run_ms.1)));
    let cut_at = Instant::now();
    let stats = disk.cut(live, image, rng);
    stop.store(true, Ordering::Relaxed);
    maintenance.join().expect("maintenance thread");
    for t in threads {
        t.join().expect("appender thread");
    }
    let mut out = Acked::new();
    let mut all = 0;
    for (name, offset, payload, at) in acked.lock().unwrap().drain(..) {
        all += 1;
        if at + case.loss_window <= cut_at {
            out.entry(name).or_default().insert(offset, payload);
        }
    }
    let n: usize = out.values().map(|m| m.len()).sum();
    eprintln!("cycle {cycle}: {all} acknowledged, {n} before the loss window; power cut: {stats:?}");
    out
}

fn run(case: Case) {
    let cycles: usize = std::env::var("POWER_CUT_MODEL_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(30);
    let root = tempfile::tempdir().unwrap();
    let mut live = root.path().join("gen-0");
    let mut rng = rand::rngs::StdRng::seed_from_u64(std::process::id() as u64);
    let mut acked = Acked::new();
    let (mut truncated, mut reused, mut checked, mut gaps) = (0usize, 0u64, 0usize, 0usize);
    for cycle in 0..cycles {
        let disk = LazyDisk::default();
        let wal = Wal::open_with_backend(&live, options(case), Arc::new(disk.clone()))
            .unwrap_or_else(|e| panic!("cycle {cycle}: open on the lazy disk: {e}"));
        disk.lock().0.tracking = true;
        let image = root.path().join(format!("gen-{}", cycle + 1));
        let got = append_until_cut(&wal, cycle, case.retention, &disk, &live, &image, &mut rng, case);
        reused += wal.stats().segments_recycled;
        let _ = wal.close();
        for (name, records) in got {
            acked.entry(name).or_default().extend(records);
        }
        let wal = Wal::open(&image, options(case).recovery(RecoveryMode::Strict))
            .unwrap_or_else(|e| panic!("cycle {cycle}: the log after the power cut does not open strictly: {e}"));
        let report = wal.recovery_report().clone();
        truncated += report.shards.iter().map(|s| s.truncated.len()).sum::<usize>();
        // Without the index, a stream cut by retention jumps over the deleted segments.
        gaps += report.shards.iter().map(|s| s.retention_gaps.len()).sum::<usize>();
        for name in ["s0", "s1", "s2"] {
            let Some(s) = wal.lookup(name) else {
                assert!(!acked.contains_key(name), "cycle {cycle}: stream {name} is gone");
                continue;
            };
            // Retention keeps at least the newest 300 records: 200 are checked.
            let newest = acked.get(name).and_then(|m| m.keys().max().copied()).unwrap_or(0);
            let first = if case.retention { newest.saturating_sub(199) } else { s.first_offset() };
            let recs: Vec<_> =
                wal.read(&s, first, usize::MAX).unwrap().into_iter().filter(|r| r.offset >= first).collect();
            for (i, r) in recs.iter().enumerate() {
                assert_eq!(r.offset, first + i as u64, "cycle {cycle}: {name} is not dense");
            }
            for (offset, payload) in acked.get(name).into_iter().flatten().filter(|(o, _)| **o >= first) {
                let r = recs.get((offset - first) as usize).unwrap_or_else(|| {
                    panic!("cycle {cycle}: acknowledged {name}/{offset} lost (offsets {first}.. hold {})", recs.len())
                });
                assert_eq!(r.payload, payload.as_bytes(), "cycle {cycle}: {name}/{offset} damaged");
                checked += 1;
            }
        }
        wal.close().unwrap();
        std::fs::remove_dir_all(&live).unwrap();
        live = image;
    }
    let n: usize = acked.values().map(|m| m.len()).sum();
    eprintln!(
        "{case:?}: {cycles} power cuts, {truncated} torn tails truncated, {reused} segments reused, \
         {gaps} jumps over deleted segments, {n} records acknowledged, {checked} checks of an acknowledged record"
    );
    assert!(case.retention || gaps == 0, "a jump over deleted segments without retention");
    assert!(truncated > 0, "no power cut tore anything: the test proved nothing");
    assert!(!case.retention || reused > 0, "no segment was reused: the test proved nothing");
}

#[test]
fn acknowledged_records_survive_power_cuts_that_tear_commits_out_of_order() {
    run(Case {
        sync: SyncMode::Always,
        preallocate: false,
        retention: false,
        loss_window: Duration::ZERO,
        run_ms: (5, 60),
    });
}

/// The same into preallocated segments, whose unwritten sectors are zeros: a lost sector
/// in the middle of a commit leaves zeros with records after them.
#[test]
fn the_same_with_preallocated_segments() {
    run(Case {
        sync: SyncMode::Always,
        preallocate: true,
        retention: false,
        loss_window: Duration::ZERO,
        run_ms: (5, 60),
    });
}

/// The same with retention, so that segments are made from deleted ones: a sector lost
/// there holds an old record, whose LSN goes backwards.
#[test]
fn the_same_with_reused_segments() {
    run(Case {
        sync: SyncMode::Always,
        preallocate: true,
        retention: true,
        loss_window: Duration::ZERO,
        run_ms: (20, 120),
    });
}

/// `interval(d)` may lose the last `d` of appends: the log must open strictly after any
/// power cut, with every stream dense and every record acknowledged before that window (and
/// the slack for its sync thread) intact.
#[test]
fn interval_loses_at_most_its_window_and_opens_strictly() {
    let d = Duration::from_millis(2);
    run(Case {
        sync: SyncMode::Interval(d),
        preallocate: false,
        retention: false,
        loss_window: d + INTERVAL_SLACK,
        run_ms: (20, 120),
    });
}
