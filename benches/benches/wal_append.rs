//! promptmq-wal append throughput (criterion): 128 B and 1 KiB records, 1 / 8 / 64 concurrent
//! appenders, each sync mode; and the recovery scan. Latency percentiles and the raw-disk
//! ratio come from the `wal-bench` binary (see BENCHMARKS.md), which measures per append.
//! Run: `cargo bench -p promptmq-benches --bench wal_append`

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use promptmq_wal::{Options, SyncMode, Wal};

/// Time for `writers` threads to append `iters` records in all.
fn appends(wal: &Wal, writers: usize, size: usize, iters: u64) -> Duration {
    let stream = wal.stream("bench").expect("stream");
    let payload = Bytes::from(vec![0xab; size]);
    let per = iters.div_ceil(writers as u64);
    let barrier = Arc::new(Barrier::new(writers + 1));
    let threads: Vec<_> = (0..writers)
        .map(|_| {
            let (wal, stream, payload, barrier) = (wal.clone(), stream.clone(), payload.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                for _ in 0..per {
                    wal.append(&stream, payload.clone()).wait().expect("append");
                }
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    for t in threads {
        t.join().expect("writer");
    }
    start.elapsed()
}

fn bench_append(c: &mut Criterion) {
    for (mode_name, mode) in [
        ("always", SyncMode::Always),
        ("interval5ms", SyncMode::Interval(Duration::from_millis(5))),
        ("none", SyncMode::None),
    ] {
        let mut g = c.benchmark_group(format!("wal_append_{mode_name}"));
        g.sample_size(10).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_millis(500));
        for size in [128usize, 1024] {
            for writers in [1usize, 8, 64] {
                let dir = tempfile::tempdir().expect("tempdir");
                let wal = Wal::open(dir.path(), Options::default().shards(1).sync(mode)).expect("open");
                g.throughput(Throughput::Elements(1));
                g.bench_function(format!("{size}B_x{writers}"), |b| {
                    b.iter_custom(|iters| appends(&wal, writers, size, iters))
                });
                wal.close().expect("close");
            }
        }
        g.finish();
    }
}

fn bench_recovery(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let records = 200_000u64;
    {
        let wal = Wal::open(dir.path(), Options::default().shards(2).sync(SyncMode::None)).expect("open");
        let streams: Vec<_> = (0..8).map(|i| wal.stream(&format!("s{i}")).expect("stream")).collect();
        let payload = Bytes::from(vec![7u8; 128]);
        let pending: Vec<_> = (0..records).map(|i| wal.append(&streams[(i % 8) as usize], payload.clone())).collect();
        for p in pending {
            p.wait().expect("append");
        }
        wal.close().expect("close");
    }
    let mut g = c.benchmark_group("wal_recovery");
    g.sample_size(10).throughput(Throughput::Elements(records));
    g.bench_function("full_scan_128B", |b| {
        b.iter(|| {
            let wal = Wal::open(dir.path(), Options::default().full_recovery(true)).expect("open");
            assert!(wal.recovery_report().records_scanned() >= records);
            wal.close().expect("close");
        })
    });
    g.finish();
}

criterion_group!(benches, bench_append, bench_recovery);
criterion_main!(benches);
