//! `wal-bench`: append throughput and latency of promptmq-wal, next to a raw-disk probe of the
//! same I/O pattern measured in the same run, plus the recovery scan rate.
//!
//! Usage: `cargo run --release -p promptmq-benches --bin wal-bench -- [--dir DIR] [--secs N]
//! [--only append|pipelined|tasks|recovery]`
//! Each scenario runs for `--secs` (default 3) or 2 000 000 appends, whichever comes first.
//! `pipelined` and `tasks` run each `sync = always` row `WAL_BENCH_ROUNDS` times (default 3),
//! each round followed by the raw probe, and report the median round. `WAL_BENCH_SIZES` and
//! `WAL_BENCH_CONCURRENCY` (comma-separated) pick rows, `WAL_BENCH_SYNCS` the sync modes of
//! `append` (`always,interval,none`). `tasks` runs each row on three runtimes
//! (`WAL_BENCH_RUNTIMES=plain,idle,current` picks): multi-threaded, multi-threaded with
//! workers that commit when idle, and current-thread committing when idle.
//! `WAL_BENCH_RETENTION=1` runs `pipelined` and `tasks` with retention keeping about two
//! segments per stream, applied every 100 ms, so that deleted segments are reused as spares.
//! Without it (and with preallocation) `pipelined` also runs a second raw probe that
//! zero-fills each next file while it writes the current one
//! ([`promptmq_benches::raw_disk_probe_zeroing`]): the zeros such a log cannot avoid.
//! `tasks` and `append` (`always`) also run the hand-off probe ([`promptmq_benches::handoff`]):
//! the same appenders through a committer that only waits for all of them, writes and syncs,
//! i.e. what the hand-off between appenders and a committer thread alone costs here. For
//! `append`'s threads it runs five ways of waiting (woken through a oneshot, parked, all on
//! one condition variable, all on one futex with no lock, yielding the CPU instead of
//! sleeping) and the best counts; all five go to stderr. `WAL_BENCH_WAIT_YIELD_US` sets the
//! `append` log's `Options::wait_yield` (default: the log's), and the CPU time of each
//! `append` row goes to stderr too.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use promptmq_benches::handoff::{Appenders, Handoff};
use promptmq_benches::{percentile, process_cpu, raw_disk_probe, raw_disk_probe_in};
use promptmq_wal::{Options, Retention, SyncMode, Wal};

const MAX_APPENDS: u64 = 2_000_000;

struct Outcome {
    records: u64,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
}

fn run_appends(dir: &std::path::Path, sync: SyncMode, size: usize, writers: usize, secs: f64) -> Outcome {
    let _ = std::fs::remove_dir_all(dir);
    // One shard: the raw probe models one shard's writer, so the ratio compares like with like.
    let wal = Wal::open(dir, wait_yield(Options::default().shards(1).sync(sync))).expect("open");
    let stream = wal.stream("bench").expect("stream");
    let cpu_before = process_cpu();
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let lats = Arc::new(Mutex::new(Vec::new()));
    let payload = bytes::Bytes::from(vec![0xabu8; size]);
    let start = Instant::now();
    let threads: Vec<_> = (0..writers)
        .map(|_| {
            let (wal, stream, stop, count, lats, payload) =
                (wal.clone(), stream.clone(), stop.clone(), count.clone(), lats.clone(), payload.clone());
            std::thread::spawn(move || {
                let mut mine = Vec::with_capacity(1 << 16);
                while !stop.load(Ordering::Relaxed) && count.fetch_add(1, Ordering::Relaxed) < MAX_APPENDS {
                    let t = Instant::now();
                    wal.append(&stream, payload.clone()).wait().expect("append");
                    mine.push(t.elapsed());
                }
                lats.lock().unwrap().extend(mine);
            })
        })
        .collect();
    while start.elapsed().as_secs_f64() < secs && count.load(Ordering::Relaxed) < MAX_APPENDS {
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let elapsed = start.elapsed();
    let cpu = cpu_before.zip(process_cpu()).map(|(a, b)| b.saturating_sub(a));
    report_batches(&wal, &format!("threads {size} B x{writers}"));
    wal.close().expect("close");
    let mut lats = std::mem::take(&mut *lats.lock().unwrap());
    if let Some(cpu) = cpu {
        eprintln!(
            "  threads {size} B x{writers}: {:.2} CPUs busy, {:.1} µs of CPU per append",
            cpu.as_secs_f64() / elapsed.as_secs_f64(),
            cpu.as_secs_f64() * 1e6 / lats.len().max(1) as f64
        );
    }
    Outcome { records: lats.len() as u64, elapsed, p50: percentile(&mut lats, 50.0), p99: percentile(&mut lats, 99.0) }
}

/// One thread keeping `inflight` appends outstanding (as the broker's connections do):
/// submit, and whenever `inflight` are pending, wait for the oldest.
fn run_pipelined(dir: &std::path::Path, sync: SyncMode, size: usize, inflight: usize, secs: f64) -> Outcome {
    let steady = open_steady(dir, sync);
    let (wal, stream) = (&steady.wal, &steady.stream);
    let payload = bytes::Bytes::from(vec![0xabu8; size]);
    let mut pending = std::collections::VecDeque::with_capacity(inflight);
    let mut lats = Vec::with_capacity(1 << 20);
    let start = Instant::now();
    let mut submitted = 0u64;
    while start.elapsed().as_secs_f64() < secs && submitted < MAX_APPENDS {
        while pending.len() < inflight {
            pending.push_back((Instant::now(), wal.append(stream, payload.clone())));
            submitted += 1;
        }
        if let Some((t, c)) = pending.pop_front() {
            c.wait().expect("append");
            lats.push(t.elapsed());
        }
    }
    for (t, c) in pending {
        c.wait().expect("append");
        lats.push(t.elapsed());
    }
    let elapsed = start.elapsed();
    report_batches(wal, &format!("pipelined {size} B x{inflight}"));
    steady.close();
    Outcome { records: lats.len() as u64, elapsed, p50: percentile(&mut lats, 50.0), p99: percentile(&mut lats, 99.0) }
}

/// Prints (to stderr) how many records the log's group commits gathered and what a sync took.
fn report_batches(wal: &Wal, what: &str) {
    let st = wal.stats();
    eprintln!(
        "  {what}: {} records in {} batches (avg {:.1}, {} not by the writer), avg fdatasync {:.0} µs, {} segments ({} without a spare, {} reused)",
        st.records,
        st.batches,
        st.records as f64 / st.batches.max(1) as f64,
        st.batches_led,
        st.sync_time.as_secs_f64() * 1e6 / st.syncs.max(1) as f64,
        st.segments,
        st.segments_unprepared,
        st.segments_recycled
    );
}

/// [`Options::wait_yield`] of the `append` rows' log from `WAL_BENCH_WAIT_YIELD_US` (default:
/// the log's default).
fn wait_yield(opts: Options) -> Options {
    match std::env::var("WAL_BENCH_WAIT_YIELD_US").ok().and_then(|v| v.parse().ok()) {
        Some(us) => opts.wait_yield(Duration::from_micros(us)),
        None => opts,
    }
}

/// Whether the `pipelined` and `tasks` logs preallocate (`WAL_BENCH_PREALLOCATE=0`: no); the
/// raw probe they are compared with then writes into a zero-filled file too.
fn preallocating() -> bool {
    std::env::var("WAL_BENCH_PREALLOCATE").map_or(true, |v| v != "0")
}

/// Segment size of the `pipelined` and `tasks` runs (MiB, `WAL_BENCH_SEGMENT_MB`, default 16).
fn segment_bytes() -> u64 {
    std::env::var("WAL_BENCH_SEGMENT_MB").ok().and_then(|m| m.parse().ok()).unwrap_or(16u64) << 20
}

/// Whether the `pipelined` and `tasks` logs run with retention (`WAL_BENCH_RETENTION=1`):
/// each stream keeps about two segments, and a thread applies retention every
/// [`RETENTION_EVERY`], so deleted segments' files are reused as spares and no zeros are
/// written (the steady state of a log whose retention keeps up with it).
fn with_retention() -> bool {
    std::env::var("WAL_BENCH_RETENTION").is_ok_and(|v| v == "1")
}

const RETENTION_EVERY: Duration = Duration::from_millis(100);

/// A log opened by [`open_steady`], with its retention thread if any.
struct Steady {
    wal: Wal,
    stream: promptmq_wal::Stream,
    retention: Option<(Arc<AtomicBool>, std::thread::JoinHandle<()>)>,
}

impl Steady {
    fn close(self) {
        if let Some((stop, t)) = self.retention {
            stop.store(true, Ordering::Relaxed);
            t.join().expect("retention thread");
        }
        self.wal.close().expect("close");
    }
}

/// A fresh one-shard log in its steady state: the first segment of a new log is an ordinary
/// growing file, every later one is made from a zero-filled spare (`Options::preallocate`,
/// off with `WAL_BENCH_PREALLOCATE=0`), or with [`with_retention`] from a deleted segment.
/// So the first segments are filled, untimed, with 1 MiB records — waiting for each spare
/// before the roll that takes it — and the timed appends go to a later one, as they would
/// in a log that has been running for a while.
fn open_steady(dir: &std::path::Path, sync: SyncMode) -> Steady {
    let _ = std::fs::remove_dir_all(dir);
    let seg = segment_bytes();
    let prealloc = preallocating();
    let wal =
        Wal::open(dir, Options::default().shards(1).sync(sync).segment_bytes(seg).preallocate(prealloc)).expect("open");
    let stream = wal.stream("bench").expect("stream");
    let fill = wal.stream("fill").expect("stream");
    let retention = with_retention();
    if retention {
        let keep = |max_bytes| Retention { max_bytes: Some(max_bytes), ..Retention::FOREVER };
        wal.set_retention(&stream, keep(2 * seg)).expect("retention");
        wal.set_retention(&fill, keep(1)).expect("retention");
    }
    let big = bytes::Bytes::from(vec![0x11u8; 1 << 20]);
    let spare = dir.join("shards").join("0000").join("next.seg.spare");
    let mut written = 0u64;
    // With retention the prefill goes to the timed stream itself, past what it keeps: its
    // oldest segments are due for deletion (and so for reuse) from the first timed append on,
    // as in a log whose retention has been keeping up for a while.
    let (prefill, into) = if retention { (3 * seg, &stream) } else { (seg, &fill) };
    while written <= prefill {
        if prealloc && sync != SyncMode::None && written % seg == seg - (1 << 20) {
            // The spare is finished as a segment nears its end (it is kept a quarter of a
            // segment ahead): wait until it is complete and let go of before the roll (the
            // 1 MiB record about to be appended fills the segment).
            let t = Instant::now();
            while std::fs::metadata(&spare).map_or(true, |m| m.len() < seg) && t.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(5));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        wal.append(into, big.clone()).wait().expect("prefill");
        written += 1 << 20;
    }
    let retention = retention.then(|| {
        wal.apply_retention().expect("retention");
        let (stop, w) = (Arc::new(AtomicBool::new(false)), wal.clone());
        let stopped = stop.clone();
        let t = std::thread::spawn(move || {
            let (mut n, mut took) = (0u32, Duration::ZERO);
            while !stopped.load(Ordering::Relaxed) {
                let t = Instant::now();
                w.apply_retention().expect("retention");
                took += t.elapsed();
                n += 1;
                std::thread::sleep(RETENTION_EVERY);
            }
            eprintln!("  retention: {n} passes, {:?} each on average", took / n.max(1));
        });
        (stop, t)
    });
    Steady { wal, stream, retention }
}

/// The tokio runtime the `tasks` scenario's appenders run on.
#[derive(Clone, Copy, PartialEq)]
enum TaskRuntime {
    /// Multi-threaded (one worker per core); the shard's writer commits.
    Plain,
    /// Multi-threaded; a worker about to park commits what is ready ([`Wal::commit_ready`]).
    IdleCommit,
    /// Current-thread; the runtime's thread commits what is ready each time it runs out of
    /// tasks: the runtime is the group-commit loop.
    CurrentThread,
}

impl TaskRuntime {
    /// Which `WAL_BENCH_RUNTIMES=plain,idle,current` (the default) names.
    fn wanted() -> Vec<TaskRuntime> {
        let all =
            [("plain", TaskRuntime::Plain), ("idle", TaskRuntime::IdleCommit), ("current", TaskRuntime::CurrentThread)];
        let picked = std::env::var("WAL_BENCH_RUNTIMES").unwrap_or_default();
        let v: Vec<_> =
            all.iter().filter(|(n, _)| picked.split(',').any(|p| p.trim() == *n)).map(|(_, r)| *r).collect();
        if v.is_empty() {
            all.iter().map(|(_, r)| *r).collect()
        } else {
            v
        }
    }

    fn label(self, tasks: usize) -> String {
        match self {
            TaskRuntime::Plain => tasks.to_string(),
            TaskRuntime::IdleCommit => format!("{tasks}, idle workers commit"),
            TaskRuntime::CurrentThread => format!("{tasks}, current thread commits when idle"),
        }
    }
}

/// `tasks` tokio tasks, each appending and awaiting its append in a loop: how an async
/// server uses the log, on the runtime `runtime` says.
fn run_tasks(
    dir: &std::path::Path,
    sync: SyncMode,
    size: usize,
    tasks: usize,
    secs: f64,
    runtime: TaskRuntime,
) -> Outcome {
    let steady = open_steady(dir, sync);
    let (wal, stream) = (&steady.wal, &steady.stream);
    let payload = bytes::Bytes::from(vec![0xabu8; size]);
    let mut builder = match runtime {
        TaskRuntime::CurrentThread => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    builder.enable_all();
    if runtime != TaskRuntime::Plain {
        let idle = wal.clone();
        builder.on_thread_park(move || {
            idle.commit_ready();
        });
    }
    let rt = builder.build().expect("runtime");
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut lats = rt.block_on(async {
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                let (wal, stream, stop, count, payload) =
                    (wal.clone(), stream.clone(), stop.clone(), count.clone(), payload.clone());
                tokio::spawn(async move {
                    let mut mine = Vec::with_capacity(1 << 16);
                    while !stop.load(Ordering::Relaxed) && count.fetch_add(1, Ordering::Relaxed) < MAX_APPENDS {
                        let t = Instant::now();
                        wal.append(&stream, payload.clone()).await.expect("append");
                        mine.push(t.elapsed());
                    }
                    mine
                })
            })
            .collect();
        while start.elapsed().as_secs_f64() < secs && count.load(Ordering::Relaxed) < MAX_APPENDS {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for h in handles {
            all.extend(h.await.expect("append task"));
        }
        all
    });
    let elapsed = start.elapsed();
    drop(rt);
    report_batches(wal, &format!("tasks {size} B x{}", runtime.label(tasks)));
    steady.close();
    Outcome { records: lats.len() as u64, elapsed, p50: percentile(&mut lats, 50.0), p99: percentile(&mut lats, 99.0) }
}

/// Rounds of a WAL scenario each followed by the raw probe of the same batch, so that both
/// sides of every ratio see the same phase of a shared disk (this one's `fdatasync` swings
/// by ±30 % from one second to the next), and then by `bound` (a second probe: what the
/// scenario cannot avoid beyond the raw probe, appends/s), if it gives a figure. Returns the
/// median round by WAL / raw ratio and every such ratio.
fn alternate(
    dir: &std::path::Path,
    rounds: usize,
    batch_bytes: usize,
    batch_records: usize,
    secs: f64,
    mut wal_run: impl FnMut() -> Outcome,
    mut bound: impl FnMut() -> Option<f64>,
) -> Round {
    let mut done = Vec::with_capacity(rounds);
    for _ in 0..rounds.max(1) {
        let o = wal_run();
        let rate = o.records as f64 / o.elapsed.as_secs_f64();
        let batches = ((secs * 2000.0) as usize).clamp(200, 20_000);
        let (el, _) = raw_disk_probe_in(dir, batch_bytes, batches, true, preallocating()).expect("probe");
        let raw = (batches * batch_records) as f64 / el.as_secs_f64();
        done.push((rate / raw, raw, bound(), o));
    }
    done.sort_by(|a, b| a.0.total_cmp(&b.0));
    let ratios = done.iter().map(|d| d.0).collect();
    let (_, raw, bound, o) = done.swap_remove(done.len() / 2);
    Round { o, raw, ratios, bound }
}

/// The median round of [`alternate`].
struct Round {
    o: Outcome,
    /// Raw probe, appends/s.
    raw: f64,
    /// WAL / raw of every round.
    ratios: Vec<f64>,
    /// Hand-off probe, appends/s.
    /// The second probe of the round, appends/s.
    bound: Option<f64>,
}

/// The hand-off probe ([`promptmq_benches::handoff`]): the same appenders as the WAL's run,
/// through a committer that does nothing but wait for all of them, write and sync, into the
/// same kind of file as the raw probe it sits next to (`zeroed` or growing).
fn handoff_rate(dir: &std::path::Path, how: Appenders, appenders: usize, size: usize, secs: f64, zeroed: bool) -> f64 {
    let h = Handoff { how, appenders, record_bytes: size, frame_bytes: 48, zeroed };
    promptmq_benches::handoff::handoff_probe(dir, h, secs).expect("hand-off probe")
}

/// Record sizes of the append scenarios (`WAL_BENCH_SIZES=128,1024`, the default), so that
/// one row can be run alone (e.g. under `perf`).
fn sizes() -> Vec<usize> {
    list_env("WAL_BENCH_SIZES", &[128, 1024])
}

/// Whether the `append` scenario runs sync mode `name` (`WAL_BENCH_SYNCS=always,interval,none`,
/// the default; matched by prefix, so that e.g. a profile sees one mode only).
fn syncs_wanted(name: &str) -> bool {
    std::env::var("WAL_BENCH_SYNCS").map_or(true, |v| v.split(',').any(|w| !w.is_empty() && name.starts_with(w.trim())))
}

/// Appenders / appends in flight of the append scenarios (`WAL_BENCH_CONCURRENCY=1,8,64`).
fn concurrency() -> Vec<usize> {
    list_env("WAL_BENCH_CONCURRENCY", &[1, 8, 64])
}

fn list_env(name: &str, default: &[usize]) -> Vec<usize> {
    let parsed: Option<Vec<usize>> =
        std::env::var(name).ok().map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect());
    parsed.filter(|v| !v.is_empty()).unwrap_or_else(|| default.to_vec())
}

/// Rounds per `always` row of `pipelined` and `tasks` (`WAL_BENCH_ROUNDS`, default 3).
fn rounds() -> usize {
    std::env::var("WAL_BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(3)
}

/// One table row of a scenario measured in rounds against the raw probe (see [`alternate`]).
fn print_ratio_row(sync: &str, size: usize, concurrency: impl std::fmt::Display, r: &Round) {
    let (o, raw) = (&r.o, r.raw);
    let rate = o.records as f64 / o.elapsed.as_secs_f64();
    let all: Vec<_> = r.ratios.iter().map(|r| format!("{:.0} %", r * 100.0)).collect();
    let bound = match r.bound {
        Some(h) => format!(" {h:.0} | {:.0} % |", 100.0 * rate / h),
        None => String::new(),
    };
    println!(
        "| {sync} | {size} B | {concurrency} | {rate:.0} | {:.0} | {:.0} | {raw:.0} | {:.0} % | {} |{bound}",
        us(o.p50),
        us(o.p99),
        100.0 * rate / raw,
        all.join(" / ")
    );
}

/// Concurrent async appenders (tokio tasks), `sync = always`, in rounds against the raw probe:
/// each row on each [`TaskRuntime`] (`WAL_BENCH_RUNTIMES` picks some).
fn tasks(dir: &std::path::Path, log_dir: &std::path::Path, secs: f64) {
    let rounds = rounds();
    println!("\n{rounds} rounds per row, each: the WAL for --secs, the raw probe, then the hand-off probe for --secs; the median round by WAL / raw, and every round's WAL / raw");
    println!("| sync | record | tasks | appends/s | p50 µs | p99 µs | raw disk appends/s (same batch) | WAL / raw | ratios of all rounds | hand-off probe appends/s | WAL / hand-off |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for size in sizes() {
        for n in concurrency() {
            for runtime in TaskRuntime::wanted() {
                let round = alternate(
                    dir,
                    rounds,
                    (size + 48) * n,
                    n,
                    secs,
                    || run_tasks(log_dir, SyncMode::Always, size, n, secs, runtime),
                    || Some(handoff_rate(dir, Appenders::Tasks, n, size, secs, preallocating())),
                );
                print_ratio_row("always", size, runtime.label(n), &round);
            }
        }
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut dir = std::env::temp_dir().join("promptmq-wal-bench");
    let mut secs = 3.0;
    let mut only: Option<String> = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--dir" => dir = args.next().expect("--dir DIR").into(),
            "--only" => only = args.next(),
            "--secs" => secs = args.next().and_then(|s| s.parse().ok()).expect("--secs N"),
            _ => {
                eprintln!(
                    "usage: wal-bench [--dir DIR] [--secs N] [--only append|pipelined|tasks|recovery|checkpoint]"
                );
                std::process::exit(2);
            }
        }
    }
    std::fs::create_dir_all(&dir).expect("create bench dir");
    let log_dir = dir.join("log");
    if only.as_deref().is_none_or(|o| o == "append") {
        appends(&dir, &log_dir, secs);
    }
    if only.as_deref().is_none_or(|o| o == "pipelined") {
        pipelined(&dir, &log_dir, secs);
    }
    if only.as_deref().is_none_or(|o| o == "tasks") {
        tasks(&dir, &log_dir, secs);
    }
    if only.as_deref().is_none_or(|o| o == "recovery") {
        recovery(&log_dir);
    }
    if only.as_deref().is_none_or(|o| o == "checkpoint") {
        checkpoints(&log_dir);
    }
    if std::env::var_os("WAL_BENCH_REUSE").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
}

fn appends(dir: &std::path::Path, log_dir: &std::path::Path, secs: f64) {
    println!("| sync | record | writers | appends/s | MB/s | p50 µs | p99 µs | raw disk appends/s (same batch) | WAL / raw | hand-off probe appends/s | WAL / hand-off |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (name, sync) in [
        ("always", SyncMode::Always),
        ("interval(5ms)", SyncMode::Interval(Duration::from_millis(5))),
        ("none", SyncMode::None),
    ] {
        if !syncs_wanted(name) {
            continue;
        }
        for size in sizes() {
            for writers in concurrency() {
                let o = run_appends(log_dir, sync, size, writers, secs);
                let rate = o.records as f64 / o.elapsed.as_secs_f64();
                // The raw figure: the same bytes per fdatasync that group commit can at best
                // gather (one record per waiting writer), written by a plain loop.
                let record_bytes = size + 48;
                let (raw, handoff) = if sync == SyncMode::Always {
                    let batches = ((secs * 2000.0) as usize).clamp(200, 20_000);
                    let (el, _) = raw_disk_probe(dir, record_bytes * writers, batches, true).expect("probe");
                    // Like the raw probe: the threads' log writes its first segment, a
                    // growing file.
                    // Five ways for a thread to wait; the probe's figure is the best.
                    let oneshot = handoff_rate(dir, Appenders::Threads, writers, size, secs, false);
                    let parked = handoff_rate(dir, Appenders::ThreadsParked, writers, size, secs, false);
                    let broadcast = handoff_rate(dir, Appenders::ThreadsBroadcast, writers, size, secs, false);
                    let futex = handoff_rate(dir, Appenders::ThreadsFutex, writers, size, secs, false);
                    let yielding = handoff_rate(dir, Appenders::ThreadsYield, writers, size, secs, false);
                    eprintln!("  hand-off {size} B x{writers}: threads woken by a oneshot {oneshot:.0}/s, parked {parked:.0}/s, broadcast {broadcast:.0}/s, lock-free futex {futex:.0}/s, yielding {yielding:.0}/s");
                    (
                        Some((batches * writers) as f64 / el.as_secs_f64()),
                        Some(oneshot.max(parked).max(broadcast).max(futex).max(yielding)),
                    )
                } else {
                    (None, None)
                };
                let figure = |f: Option<f64>| f.map_or("-".into(), |r| format!("{r:.0}"));
                let ratio = |f: Option<f64>| f.map_or("-".into(), |r| format!("{:.0} %", 100.0 * rate / r));
                println!(
                    "| {name} | {size} B | {writers} | {rate:.0} | {:.1} | {:.0} | {:.0} | {} | {} | {} | {} |",
                    rate * record_bytes as f64 / 1e6,
                    us(o.p50),
                    us(o.p99),
                    figure(raw),
                    ratio(raw),
                    figure(handoff),
                    ratio(handoff),
                );
            }
        }
    }
}

/// Appends pipelined from one thread, `sync = always` in rounds against the raw probe (as
/// [`tasks`]); `none` once, with no raw figure (it measures the CPU path alone).
fn pipelined(dir: &std::path::Path, log_dir: &std::path::Path, secs: f64) {
    let rounds = rounds();
    println!("\n`always`: {rounds} rounds per row, each: the WAL for --secs, then the raw probe; the median round by ratio, and every round's ratio");
    // A log that preallocates and deletes nothing zero-fills every segment as it goes; the
    // raw probe's file was zeroed before its clock started. The second probe pays for it too.
    let zeroing = preallocating() && !with_retention();
    if zeroing {
        println!("| sync | record | appends in flight (one thread) | appends/s | p50 µs | p99 µs | raw disk appends/s (same batch) | WAL / raw | ratios of all rounds | raw disk, next segment zero-filled meanwhile | WAL / that |");
        println!("|---|---|---|---|---|---|---|---|---|---|---|");
    } else {
        println!("| sync | record | appends in flight (one thread) | appends/s | p50 µs | p99 µs | raw disk appends/s (same batch) | WAL / raw | ratios of all rounds |");
        println!("|---|---|---|---|---|---|---|---|---|");
    }
    for (name, sync) in [("always", SyncMode::Always), ("none", SyncMode::None)] {
        for size in sizes() {
            for inflight in concurrency() {
                let run = || run_pipelined(log_dir, sync, size, inflight, secs);
                if sync != SyncMode::Always {
                    let o = run();
                    let rate = o.records as f64 / o.elapsed.as_secs_f64();
                    println!(
                        "| {name} | {size} B | {inflight} | {rate:.0} | {:.0} | {:.0} | - | - | - |",
                        us(o.p50),
                        us(o.p99)
                    );
                    continue;
                }
                let batch_bytes = (size + 48) * inflight;
                let zeroing_rate = || {
                    let batches = ((secs * 2000.0) as usize).clamp(200, 20_000);
                    zeroing.then(|| {
                        let el = promptmq_benches::raw_disk_probe_zeroing(dir, batch_bytes, batches, segment_bytes())
                            .expect("zeroing probe");
                        (batches * inflight) as f64 / el.as_secs_f64()
                    })
                };
                let round = alternate(dir, rounds, batch_bytes, inflight, secs, run, zeroing_rate);
                print_ratio_row(name, size, inflight, &round);
            }
        }
    }
}

/// Reads from the index (records long since out of the open blocks): single records at
/// pseudo-random offsets, and runs of 100 from random offsets, as a catching-up consumer
/// reads.
fn reads(wal: &Wal) {
    let streams: Vec<_> = (0..16).filter_map(|i| wal.lookup(&format!("s{i}"))).collect();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = |m: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % m
    };
    for (what, count, max) in
        [("single records at random offsets", 100_000u64, 1usize), ("runs of 100 records", 10_000, 100)]
    {
        let t = Instant::now();
        let mut got = 0usize;
        for _ in 0..count {
            let s = &streams[next(streams.len() as u64) as usize];
            let from = next(s.next_offset().saturating_sub(max as u64).max(1));
            got += wal.read(s, from, max).expect("read").len();
        }
        let el = t.elapsed();
        assert_eq!(got as u64, count * max as u64, "every read found its records");
        println!(
            "reads, {what}: {:.2} µs per read ({:.2} M records/s)",
            us(el) / count as f64,
            got as f64 / el.as_secs_f64() / 1e6
        );
    }
}

/// Copies a log directory as it is (`cp -a`), for WAL_BENCH_REUSE.
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    let ok = std::process::Command::new("cp").arg("-a").arg(from).arg(to).status();
    assert!(ok.is_ok_and(|s| s.success()), "copying {} to {} failed", from.display(), to.display());
}

/// Recovery scan: write a log, then time an open that scans and re-indexes all of it.
/// What an index checkpoint with many streams touched costs the appends around it: each
/// touched stream's catalogue entry and open index block go into the index. A thread
/// appends to a stream of its own, one append at a time, while rounds of one record for
/// each of `WAL_BENCH_STREAMS` streams (default 10 000, 100 per batch) fill 4 MiB segments: the writer
/// checkpoints at every new segment. Then `Wal::flush`, which checkpoints and waits for it.
fn checkpoints(log_dir: &std::path::Path) {
    let n: usize = std::env::var("WAL_BENCH_STREAMS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let _ = std::fs::remove_dir_all(log_dir);
    let wal = Wal::open(log_dir, Options::default().shards(1).segment_bytes(4 << 20)).expect("open");
    let streams: Vec<_> = (0..n).map(|i| wal.stream(&format!("topic/{i}")).expect("stream")).collect();
    let other = wal.stream("other").expect("stream");
    let payload = bytes::Bytes::from(vec![0x42u8; 150]);
    wal.flush().expect("flush");
    let stop = Arc::new(AtomicBool::new(false));
    let prober = {
        let (wal, other, payload, stop) = (wal.clone(), other.clone(), payload.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut lats = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                wal.append(&other, payload.clone()).wait().expect("append");
                lats.push(t.elapsed());
            }
            lats
        })
    };
    let rounds = 16;
    let start = Instant::now();
    for _ in 0..rounds {
        // In batches of 100, as many publishers would append.
        for chunk in streams.chunks(100) {
            let mut batch = wal.batch();
            let waits: Vec<_> = chunk.iter().map(|s| batch.append(s, payload.clone())).collect();
            batch.submit();
            for w in waits {
                w.wait().expect("append");
            }
        }
    }
    let filled = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut lats = prober.join().expect("prober");
    let segments = std::fs::read_dir(log_dir.join("shards").join("0000")).map_or(0, |d| d.count());
    let flush = {
        let mut batch = wal.batch();
        for s in &streams {
            batch.append(s, payload.clone());
        }
        batch.submit();
        let t = Instant::now();
        wal.flush().expect("flush");
        t.elapsed()
    };
    println!("\n| streams | rounds | segment files | rounds took ms | appends beside them | p50 µs | p99 µs | max µs | Wal::flush ms |");
    println!("|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {n} | {rounds} | {segments} | {:.0} | {} | {:.0} | {:.0} | {:.0} | {:.1} |",
        filled.as_secs_f64() * 1e3,
        lats.len(),
        us(percentile(&mut lats, 50.0)),
        us(percentile(&mut lats, 99.0)),
        us(percentile(&mut lats, 100.0)),
        flush.as_secs_f64() * 1e3
    );
    wal.close().expect("close");
}

fn recovery(log_dir: &std::path::Path) {
    let n: u64 = 2_000_000;
    // WAL_BENCH_REUSE=1 keeps a copy of the log as written (`log.pristine`) and opens a
    // fresh copy of it on later runs (to profile the open alone, always on the same state).
    let pristine = log_dir.with_extension("pristine");
    let reuse = std::env::var_os("WAL_BENCH_REUSE").is_some() && pristine.join("PROMPTMQ_WAL").exists();
    if reuse {
        let _ = std::fs::remove_dir_all(log_dir);
        copy_dir(&pristine, log_dir);
        // Written back before timing, as a log closed cleanly would be.
        let _ = std::process::Command::new("sync").status();
    } else {
        let _ = std::fs::remove_dir_all(log_dir);
        let wal = Wal::open(log_dir, Options::default().shards(2).sync(SyncMode::None)).expect("open");
        let streams: Vec<_> = (0..16).map(|i| wal.stream(&format!("s{i}")).expect("stream")).collect();
        let payload = bytes::Bytes::from(vec![7u8; 128]);
        let mut pending = Vec::with_capacity(4096);
        for i in 0..n {
            pending.push(wal.append(&streams[(i % 16) as usize], payload.clone()));
            if pending.len() == 4096 {
                for c in pending.drain(..) {
                    c.wait().expect("append");
                }
            }
        }
        for c in pending {
            c.wait().expect("append");
        }
        wal.close().expect("close");
        if std::env::var_os("WAL_BENCH_REUSE").is_some() {
            let _ = std::fs::remove_dir_all(&pristine);
            copy_dir(log_dir, &pristine);
            eprintln!("log as written kept in {}", pristine.display());
        }
    }
    let cpu0 = process_cpu();
    let t = Instant::now();
    let wal = Wal::open(log_dir, Options::default().full_recovery(true)).expect("reopen");
    let el = t.elapsed();
    // CPU time swings less than elapsed time on a shared machine: compare builds by both.
    let cpu = cpu0.zip(process_cpu()).map_or("?".into(), |(a, b)| format!("{:.0}", (b - a).as_secs_f64() * 1e3));
    let scanned = wal.recovery_report().records_scanned();
    assert!(scanned >= n, "recovery scanned {scanned} of {n} records");
    println!(
        "\nrecovery (full scan + re-index, 2 shards, 128 B records): {scanned} records in {:.0} ms = {:.2} M records/s (CPU {cpu} ms)",
        el.as_secs_f64() * 1e3,
        scanned as f64 / el.as_secs_f64() / 1e6
    );
    if std::env::var_os("WAL_BENCH_OPEN_ONLY").is_none() {
        reads(&wal);
    }
    wal.close().expect("close");
    if std::env::var_os("WAL_BENCH_OPEN_ONLY").is_some() {
        return; // profiling the open alone
    }

    // The scan alone (decode + CRC of every record, no index), as `walctl verify` does it.
    let t = Instant::now();
    let found = promptmq_wal::tools::inspect(log_dir, &mut |_| {}).expect("inspect");
    let el = t.elapsed();
    let records: u64 = found.segments.iter().map(|s| s.records).sum();
    println!(
        "scan only (decode + CRC-64, shards in parallel, no index): {records} records in {:.0} ms = {:.2} M records/s",
        el.as_secs_f64() * 1e3,
        records as f64 / el.as_secs_f64() / 1e6
    );
}
