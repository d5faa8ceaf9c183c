//! End-to-end behaviour of the public API: appends, reads, reopen, concurrency, tails.

mod common;

use std::sync::Arc;
use std::time::Duration;

use promptmq_wal::{Error, Options, SyncMode, Wal};

#[test]
fn many_streams_survive_reopen_across_segment_rolls() {
    let dir = tempfile::tempdir().unwrap();
    let opts = || Options::default().shards(3).segment_bytes(8 << 10);
    let wal = Wal::open(dir.path(), opts()).unwrap();
    let streams: Vec<_> = (0..10).map(|i| wal.stream(&format!("topic/{i}")).unwrap()).collect();
    for i in 0..200u64 {
        for (n, s) in streams.iter().enumerate() {
            assert_eq!(wal.append(s, common::payload(n, i)).wait().unwrap(), i);
        }
    }
    wal.close().unwrap();
    assert!(common::segments(dir.path()).len() > 6, "small segments must have rolled");

    let wal = Wal::open(dir.path(), opts()).unwrap();
    assert!(wal.recovery_report().is_clean());
    for n in 0..10 {
        let s = wal.lookup(&format!("topic/{n}")).unwrap();
        assert_eq!(s.next_offset(), 200);
        let recs = wal.read(&s, 0, 1000).unwrap();
        assert_eq!(recs.len(), 200);
        for (i, r) in recs.iter().enumerate() {
            assert_eq!(r.offset, i as u64);
            assert_eq!(r.payload.to_vec(), common::payload(n, i as u64));
        }
        // A read from the middle, with a limit.
        let mid = wal.read(&s, 150, 10).unwrap();
        assert_eq!(mid.iter().map(|r| r.offset).collect::<Vec<_>>(), (150..160).collect::<Vec<_>>());
    }
    // New appends continue the offsets.
    let s = wal.lookup("topic/3").unwrap();
    assert_eq!(wal.append(&s, "more").wait().unwrap(), 200);
}

#[test]
fn second_open_of_a_locked_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), Options::default().shards(2)).unwrap();
    assert!(matches!(Wal::open(dir.path(), Options::default()), Err(Error::Locked { .. })));
    wal.close().unwrap();
    // Once closed (and dropped), the directory can be opened again.
    Wal::open(dir.path(), Options::default()).unwrap().close().unwrap();
}

#[test]
fn concurrent_appenders_get_dense_ordered_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), Options::default().shards(2)).unwrap();
    let s = wal.stream("shared").unwrap();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let wal = wal.clone();
            let s = s.clone();
            std::thread::spawn(move || {
                let mut last = None;
                for i in 0..100u64 {
                    let off = wal.append(&s, format!("{t}:{i}")).wait().unwrap();
                    if let Some(l) = last {
                        assert!(off > l, "a thread's later append got an earlier offset");
                    }
                    last = Some(off);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let recs = wal.read(&s, 0, 10_000).unwrap();
    assert_eq!(recs.len(), 800);
    assert!(recs.iter().enumerate().all(|(i, r)| r.offset == i as u64));
    // Each thread's records appear in its own order.
    for t in 0..8 {
        assert_eq!(sequence_of(&recs, t), (0..100).collect::<Vec<_>>());
    }
}

/// The sequence numbers, in log order, of the records appender `who` wrote as
/// `"<who>:<n>"`.
fn sequence_of(recs: &[promptmq_wal::Record], who: usize) -> Vec<u64> {
    recs.iter()
        .filter_map(|r| {
            let (a, b) = std::str::from_utf8(&r.payload).unwrap().split_once(':').unwrap();
            (a == who.to_string()).then(|| b.parse().unwrap())
        })
        .collect()
}

/// Tasks on a runtime whose idle workers commit (`Wal::commit_ready` on park) get the same
/// guarantees as with the writer alone: dense offsets, each task's records in its order,
/// all of them there after a reopen — and some batches were committed by the workers.
#[test]
fn tasks_on_a_runtime_whose_idle_workers_commit_get_dense_ordered_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), Options::default().shards(2)).unwrap();
    let idle = wal.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .on_thread_park(move || {
            idle.commit_ready();
        })
        .build()
        .unwrap();
    let streams: Vec<_> = (0..4).map(|i| wal.stream(&format!("s{i}")).unwrap()).collect();
    const TASKS: usize = 16;
    const EACH: u64 = 200;
    rt.block_on(async {
        let tasks: Vec<_> = (0..TASKS)
            .map(|t| {
                let (wal, s) = (wal.clone(), streams[t % streams.len()].clone());
                tokio::spawn(async move {
                    let mut last = None;
                    for i in 0..EACH {
                        let off = wal.append(&s, format!("{t}:{i}")).await.unwrap();
                        assert!(last.is_none_or(|l| off > l), "a task's later append got an earlier offset");
                        last = Some(off);
                    }
                })
            })
            .collect();
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(60), t).await.expect("appends finish").unwrap();
        }
    });
    drop(rt);
    assert!(wal.stats().batches_led > 0, "no batch was committed by an idle worker: {:?}", wal.stats());
    wal.close().unwrap();
    let wal = Wal::open(dir.path(), Options::default().shards(2)).unwrap();
    for (i, s) in streams.iter().enumerate() {
        let s = wal.lookup(s.name()).unwrap();
        let recs = wal.read(&s, 0, 100_000).unwrap();
        assert_eq!(recs.len() as u64, EACH * (TASKS / streams.len()) as u64);
        assert!(recs.iter().enumerate().all(|(i, r)| r.offset == i as u64));
        for t in (i..TASKS).step_by(streams.len()) {
            assert_eq!(sequence_of(&recs, t), (0..EACH).collect::<Vec<_>>(), "task {t}");
        }
    }
}

/// A worker that commits in its park hook wakes the tasks from there, where tokio counts it
/// as running. On a runtime with no timers and no I/O, nothing else would ever wake a worker
/// that then slept with those tasks queued: every round must still finish — on 1, 2 and 3
/// workers, and on a current-thread runtime, whose only thread is blocked for each commit.
#[test]
fn tasks_woken_by_an_idle_workers_commit_are_always_run() {
    // 0: a current-thread runtime.
    for workers in [0usize, 1, 2, 3] {
        for round in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let wal = Wal::open(dir.path(), Options::default().shards(2)).unwrap();
            let idle = wal.clone();
            let mut builder = if workers == 0 {
                tokio::runtime::Builder::new_current_thread()
            } else {
                let mut b = tokio::runtime::Builder::new_multi_thread();
                b.worker_threads(workers);
                b
            };
            // No `enable_time` / `enable_io`: no driver event can hide a missed wake-up.
            let rt = builder
                .on_thread_park(move || {
                    idle.commit_ready();
                })
                .build()
                .unwrap();
            let streams: Vec<_> = (0..3).map(|i| wal.stream(&format!("s{i}")).unwrap()).collect();
            let (done, finished) = std::sync::mpsc::channel();
            let appender = wal.clone();
            let runner = std::thread::spawn(move || {
                rt.block_on(async move {
                    let tasks: Vec<_> = (0..8)
                        .map(|t| {
                            let (wal, s) = (appender.clone(), streams[t % 3].clone());
                            tokio::spawn(async move {
                                for i in 0..200u32 {
                                    wal.append(&s, i.to_string()).await.unwrap();
                                }
                            })
                        })
                        .collect();
                    for t in tasks {
                        t.await.unwrap();
                    }
                });
                let _ = done.send(());
            });
            finished.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|_| {
                panic!("{workers} workers (0: current thread), round {round}: woken tasks were never run")
            });
            runner.join().unwrap();
            assert!(
                wal.stats().batches_led > 0,
                "{workers} workers (0: current thread), round {round}: no idle commit"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_appends_and_tail() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), Options::default().sync(SyncMode::Interval(Duration::from_millis(2)))).unwrap();
    let s = wal.stream("events").unwrap();
    let mut tail = wal.tail(&s, 0);
    let w = wal.clone();
    let s2 = s.clone();
    let producer = tokio::spawn(async move {
        let mut futs = Vec::new();
        for i in 0..50u32 {
            futs.push(w.append(&s2, i.to_string()));
        }
        let mut offs = Vec::new();
        for f in futs {
            offs.push(f.await.unwrap());
        }
        offs
    });
    let mut seen = Vec::new();
    while seen.len() < 50 {
        let recs = tokio::time::timeout(Duration::from_secs(10), tail.next(16)).await.expect("tail woke").unwrap();
        seen.extend(recs.into_iter().map(|r| String::from_utf8(r.payload.to_vec()).unwrap()));
    }
    assert_eq!(seen, (0..50).map(|i| i.to_string()).collect::<Vec<_>>());
    assert_eq!(producer.await.unwrap(), (0..50).collect::<Vec<u64>>());
    assert_eq!(tail.position(), 50);
}

#[test]
fn cursors_and_keyed_records_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let wal = Wal::open(dir.path(), Options::default()).unwrap();
        let s = wal.stream("retained").unwrap();
        wal.append_keyed(&s, "a/b", "v1").wait().unwrap();
        wal.commit_cursor(&s, "client-1", 1).unwrap();
        wal.close().unwrap();
    }
    let wal = Wal::open(dir.path(), Options::default()).unwrap();
    let s = wal.lookup("retained").unwrap();
    assert_eq!(wal.cursor(&s, "client-1").unwrap(), Some(1));
    assert_eq!(wal.cursor(&s, "nobody").unwrap(), None);
    let r = &wal.read(&s, 0, 1).unwrap()[0];
    assert_eq!(r.key.as_deref(), Some(&b"a/b"[..]));
    wal.delete_cursor(&s, "client-1").unwrap();
    assert_eq!(wal.cursors(&s).unwrap(), vec![]);
}

#[test]
fn bad_input_is_refused_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), Options::default().max_record_bytes(1024)).unwrap();
    assert!(matches!(wal.stream(""), Err(Error::InvalidStreamName(_))));
    let s = wal.stream("s").unwrap();
    assert!(matches!(wal.append(&s, vec![0u8; 2000]).wait(), Err(Error::RecordTooLarge { size: 2000, max: 1024 })));
    assert!(matches!(wal.append_keyed(&s, vec![0u8; 70_000], "x").wait(), Err(Error::KeyTooLong(70_000))));
    assert_eq!(wal.append(&s, "ok").wait().unwrap(), 0, "refusals consume no offset");
    let other = tempfile::tempdir().unwrap();
    assert!(matches!(
        Wal::open(other.path(), Options::default().shards(0)),
        Err(Error::InvalidOption { name: "shards", .. })
    ));
}

#[test]
fn foreign_and_missing_directories_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not a log").unwrap();
    match Wal::open(dir.path(), Options::default()) {
        Err(Error::NotAWalDirectory { reason, .. }) => {
            assert!(reason.contains("not empty"), "{reason}")
        }
        other => panic!("expected NotAWalDirectory, got {other:?}"),
    }
    let missing = dir.path().join("nope");
    assert!(matches!(
        Wal::open(&missing, Options::default().create_if_missing(false)),
        Err(Error::NotAWalDirectory { .. })
    ));
}

#[test]
fn closed_log_refuses_appends() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), Options::default()).unwrap();
    let s = wal.stream("s").unwrap();
    let other = wal.clone();
    wal.close().unwrap();
    assert!(matches!(other.append(&s, "late").wait(), Err(Error::Closed)));
    let _ = Arc::new(other);
}

/// `tools::inspect` scans shards in parallel; what it reports must not depend on that:
/// segments by shard then LSN, every stream with its own counts, progress up to the total.
#[test]
fn inspect_reports_every_shard_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), Options::default().shards(4).segment_bytes(4096)).unwrap();
    let streams: Vec<_> = (0..8).map(|i| wal.stream(&format!("s{i}")).unwrap()).collect();
    for _ in 0..40 {
        for (i, s) in streams.iter().enumerate() {
            wal.append(s, vec![b'x'; 10 + i]).wait().unwrap();
        }
    }
    wal.close().unwrap();
    let mut last = None;
    let found = promptmq_wal::tools::inspect(dir.path(), &mut |p| last = Some(p)).unwrap();
    let keys: Vec<(u32, u64)> = found.segments.iter().map(|s| (s.shard, s.first_lsn)).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "segments by shard, then LSN");
    assert!(found.segments.iter().map(|s| s.shard).collect::<std::collections::HashSet<_>>().len() > 1);
    assert_eq!(found.streams.len(), 8);
    for (i, s) in found.streams.iter().enumerate() {
        assert_eq!(s.name.as_deref(), Some(format!("s{i}").as_str()));
        assert_eq!((s.first_offset, s.last_offset, s.records), (Some(0), Some(39), 40));
        assert_eq!(s.bytes, 40 * (10 + i as u64));
    }
    let last = last.expect("progress reported");
    assert_eq!(last.done, last.total);
    assert!(found.damage().is_empty());
}

/// Index blocks fill and are stored while a reader reads from the start again and again:
/// every visible record must be readable at every moment (a position is in memory or in
/// the index, never in neither), and all of them after a reopen.
/// A thread that reads `streams` (stream `i` holding `common::payload(i, offset)`) again and
/// again until `done`, checking each time that every record already visible is readable and
/// intact; returns how many passes it made.
fn checking_reader(
    wal: &Wal,
    streams: Vec<promptmq_wal::Stream>,
    done: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    let wal = wal.clone();
    std::thread::spawn(move || {
        let mut passes = 0u64;
        while !done.load(std::sync::atomic::Ordering::Acquire) || passes == 0 {
            for (i, s) in streams.iter().enumerate() {
                let visible = s.next_offset();
                let recs = wal.read(s, 0, usize::MAX).unwrap();
                assert!(recs.len() as u64 >= visible, "stream {i}: {} of {visible} records readable", recs.len());
                for (o, r) in recs.iter().enumerate() {
                    assert_eq!(r.payload.to_vec(), common::payload(i, o as u64), "stream {i} offset {o}");
                }
            }
            passes += 1;
        }
        passes
    })
}

#[test]
fn readers_see_every_record_while_index_blocks_are_stored() {
    let dir = tempfile::tempdir().unwrap();
    let opts = || Options::default().shards(1).sync(SyncMode::None);
    let wal = Wal::open(dir.path(), opts()).unwrap();
    let streams: Vec<_> = (0..3).map(|i| wal.stream(&format!("s{i}")).unwrap()).collect();
    let n = 2_000u64; // several index blocks per stream
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = checking_reader(&wal, streams.clone(), done.clone());
    for o in 0..n {
        let pending: Vec<_> = streams.iter().enumerate().map(|(i, s)| wal.append(s, common::payload(i, o))).collect();
        for c in pending {
            c.wait().unwrap();
        }
    }
    done.store(true, std::sync::atomic::Ordering::Release);
    assert!(reader.join().unwrap() > 0);
    wal.close().unwrap();

    let wal = Wal::open(dir.path(), opts()).unwrap();
    for (i, s) in streams.iter().enumerate() {
        let s = wal.lookup(s.name()).unwrap();
        let recs = wal.read(&s, 0, usize::MAX).unwrap();
        assert_eq!(recs.len() as u64, n);
        assert!(recs
            .iter()
            .enumerate()
            .all(|(o, r)| r.offset == o as u64 && r.payload.to_vec() == common::payload(i, o as u64)));
    }
}

/// A thread blocked in `Tail::next_blocking` is woken by the commit of a new record, not
/// by its timeout.
#[test]
fn a_blocked_tail_wakes_when_a_record_is_committed() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), Options::default()).unwrap();
    let s = wal.stream("events").unwrap();
    let mut tail = wal.tail(&s, 0);
    let reader = std::thread::spawn(move || {
        let t = std::time::Instant::now();
        let recs = tail.next_blocking(10, Duration::from_secs(60)).unwrap();
        (recs.len(), t.elapsed())
    });
    std::thread::sleep(Duration::from_millis(100)); // the reader blocks first
    wal.append(&s, "x").wait().unwrap();
    let (n, waited) = reader.join().unwrap();
    assert_eq!(n, 1);
    assert!(waited < Duration::from_secs(30), "woken by the timeout, not the commit: {waited:?}");
}

#[test]
fn streams_created_concurrently_are_one_per_name_and_survive_reopen() {
    for sync in [SyncMode::Always, SyncMode::None] {
        let dir = tempfile::tempdir().unwrap();
        let opts = || Options::default().shards(2).sync(sync);
        let wal = Arc::new(Wal::open(dir.path(), opts()).unwrap());
        // 8 threads ask for 60 names, each name by two threads at once.
        let got: Vec<Vec<(String, u64)>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|t| {
                    let wal = wal.clone();
                    scope.spawn(move || {
                        (0..60)
                            .map(|i| {
                                let name = format!("topic/{}", (i * 4 + t / 2) % 240);
                                let s = wal.stream(&name).unwrap();
                                wal.append(&s, name.clone()).wait().unwrap();
                                (name, s.id())
                            })
                            .collect()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut ids = std::collections::HashMap::new();
        for (name, id) in got.into_iter().flatten() {
            assert_eq!(*ids.entry(name.clone()).or_insert(id), id, "{name} created twice");
        }
        assert_eq!(ids.len(), 240);
        let distinct: std::collections::HashSet<_> = ids.values().collect();
        assert_eq!(distinct.len(), 240, "two names share an id");
        drop(wal);

        let wal = Wal::open(dir.path(), opts()).unwrap();
        for (name, id) in &ids {
            let s = wal.lookup(name).unwrap_or_else(|| panic!("{name} lost ({sync:?})"));
            assert_eq!(s.id(), *id);
            let recs = wal.read(&s, 0, 10).unwrap();
            assert_eq!(recs.len(), 2, "{name}: one record from each of its two creators");
            assert!(recs.iter().all(|r| r.payload.as_ref() == name.as_bytes()));
        }
        let fresh = wal.stream("after/reopen").unwrap();
        assert!(ids.values().all(|&id| id != fresh.id()), "an id was handed out twice");
    }
}

#[test]
fn reopening_an_unchanged_log_does_not_rewrite_every_stream_in_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let opts = || Options::default().shards(2);
    let wal = Wal::open(dir.path(), opts()).unwrap();
    for i in 0..2000 {
        let s = wal.stream(&format!("device/{i}")).unwrap();
        wal.append(&s, "x").wait().unwrap();
    }
    wal.close().unwrap();
    let journal = || -> u64 {
        std::fs::read_dir(dir.path().join("index"))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "jnl"))
            .map(|e| e.metadata().unwrap().len())
            .sum()
    };
    // The first reopen may still store what the first run left in open blocks.
    Wal::open(dir.path(), opts()).unwrap().close().unwrap();
    let before = journal();
    for _ in 0..3 {
        Wal::open(dir.path(), opts()).unwrap().close().unwrap();
    }
    // Rewriting every stream's entry costs ~100 bytes each (2000 streams: ~200 KB a time).
    let grown = journal().saturating_sub(before);
    assert!(grown < 3 * 32 * 1024, "three reopens of an unchanged log added {grown} bytes of index journal");
    let wal = Wal::open(dir.path(), opts()).unwrap();
    assert_eq!(wal.streams().len(), 2000);
    assert_eq!(wal.read(&wal.lookup("device/1999").unwrap(), 0, 10).unwrap().len(), 1);
}

/// A page read whose chunk (64 KiB) ends inside the 12-byte frame of a record larger than
/// the chunk: the record is read whole. It failed with "does not decode: Incomplete" on a
/// sound log (a broker's session records of ~300 KB met it at start-up).
#[test]
fn a_chunk_ending_inside_the_frame_of_a_large_record_still_reads_it() {
    use promptmq_wal::format::encoded_len;
    const CHUNK: usize = 64 << 10;
    for cut in [1usize, 5, 11, 12, 13] {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path(), Options::default().sync(SyncMode::None)).unwrap();
        let s = wal.stream("s").unwrap();
        // Small records filling the first chunk up to `cut` bytes into the large one.
        let small = 1000;
        let mut left = CHUNK - cut;
        let mut n = 0;
        while left > 0 {
            let payload = if left >= 2 * encoded_len(0, small) { small } else { left - encoded_len(0, 0) };
            wal.append(&s, vec![b's'; payload]).wait().unwrap();
            left -= encoded_len(0, payload);
            n += 1;
        }
        let big = vec![b'b'; 200_000];
        wal.append(&s, big.clone()).wait().unwrap();
        let recs = wal.read(&s, 0, n + 1).unwrap();
        assert_eq!(recs.len(), n + 1, "cut {cut}");
        assert_eq!(&recs[n].payload[..], &big[..], "cut {cut}");
    }
}

/// Counts the group commits of a log and the records in each.
#[derive(Debug, Default)]
struct Commits(std::sync::Mutex<Vec<usize>>);
impl promptmq_wal::CommitObserver for Commits {
    fn committed(&self, c: &promptmq_wal::CommitInfo) {
        self.0.lock().unwrap().push(c.records);
    }
}

#[test]
fn a_batch_reaches_each_shard_as_one_commit_in_order() {
    for sync in [SyncMode::None, SyncMode::Always] {
        let dir = tempfile::tempdir().unwrap();
        let commits = Arc::new(Commits::default());
        let opts = Options::default().shards(2).sync(sync).observer(commits.clone());
        let wal = Wal::open(dir.path(), opts.clone()).unwrap();
        // Streams in both shards (names hash to shards).
        let streams: Vec<_> = (0..8).map(|i| wal.stream(&format!("s{i}")).unwrap()).collect();
        let mut per_shard = [0usize; 2];
        for i in wal.streams() {
            per_shard[i.shard as usize] += 3;
        }
        assert!(per_shard.iter().all(|&n| n > 0), "the streams span both shards");
        commits.0.lock().unwrap().clear();

        let mut batch = wal.batch();
        let mut done = Vec::new();
        for round in 0..3 {
            for (i, s) in streams.iter().enumerate() {
                done.push((i, round, batch.append(s, format!("{i}/{round}"))));
            }
        }
        // Refused up front, without holding back the rest.
        let too_big = batch.append(&streams[0], vec![0u8; 64 << 20]);
        assert_eq!(batch.len(), 24);
        batch.submit();
        for (_, round, c) in done {
            assert_eq!(c.wait().unwrap(), round as u64, "offsets follow the order of the appends");
        }
        assert!(matches!(too_big.wait(), Err(Error::RecordTooLarge { .. })));
        let mut got = commits.0.lock().unwrap().clone();
        got.sort_unstable();
        per_shard.sort_unstable();
        assert_eq!(got, per_shard, "{sync:?}: one commit per shard carries the whole batch");

        // Dropped unsubmitted: submitted all the same.
        let mut batch = wal.batch();
        let late = batch.append(&streams[1], "late");
        drop(batch);
        assert_eq!(late.wait().unwrap(), 3);

        wal.close().unwrap();
        let wal = Wal::open(dir.path(), opts).unwrap();
        let s = wal.lookup("s1").unwrap();
        let got: Vec<_> = wal.read(&s, 0, 10).unwrap().into_iter().map(|r| r.payload).collect();
        assert_eq!(got, vec!["1/0", "1/1", "1/2", "late"]);
    }
}

/// Checkpoints are committed on a thread of their own while appends go on (see the
/// `checkpointer` module): every round's commit rolls to a new segment and checkpoints the
/// cold streams and the hot one, and in that same commit the hot stream fills an index
/// block (1 024 positions) — while the checkpoint holding that block's first positions is
/// in flight. Every record stays readable meanwhile, and after a reopen — which trusts the
/// index up to the last checkpoint.
#[test]
fn records_stay_indexed_while_checkpoints_commit_beside_the_appends() {
    records_stay_indexed_beside_checkpoints(SyncMode::Always);
}

/// The same with `Interval`, whose commits are not synced one by one: a checkpoint put off
/// while another is in flight waits for a sync of its own.
#[test]
fn records_stay_indexed_while_checkpoints_commit_beside_interval_appends() {
    records_stay_indexed_beside_checkpoints(SyncMode::Interval(Duration::from_millis(2)));
}

fn records_stay_indexed_beside_checkpoints(sync: SyncMode) {
    let dir = tempfile::tempdir().unwrap();
    // Segments smaller than a round: each round's commit starts a new one and checkpoints.
    let opts = || Options::default().shards(1).segment_bytes(8 << 10).sync(sync);
    let wal = Wal::open(dir.path(), opts()).unwrap();
    // Stream 0 is hot: more records a round than an index block holds, against one for
    // each of the others — enough of them that a checkpoint takes a while to commit.
    let streams: Vec<_> = (0..3_001).map(|i| wal.stream(&format!("s{i}")).unwrap()).collect();
    let (rounds, hot) = (20u64, 1_100u64);
    let expected = |i: usize| if i == 0 { rounds * hot } else { rounds };
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The hot stream and three cold ones.
    let reader = checking_reader(&wal, streams[..4].to_vec(), done.clone());
    for round in 0..rounds {
        let mut batch = wal.batch();
        let mut pending: Vec<_> =
            (0..hot).map(|k| batch.append(&streams[0], common::payload(0, round * hot + k))).collect();
        pending.extend(streams.iter().enumerate().skip(1).map(|(i, s)| batch.append(s, common::payload(i, round))));
        batch.submit();
        for c in pending {
            c.wait().unwrap();
        }
    }
    done.store(true, std::sync::atomic::Ordering::Release);
    assert!(reader.join().unwrap() > 0);
    wal.close().unwrap();
    assert!(common::segments(dir.path()).len() > 20, "segments must have rolled");

    let wal = Wal::open(dir.path(), opts()).unwrap();
    assert!(wal.recovery_report().is_clean());
    for (i, s) in streams.iter().enumerate() {
        let s = wal.lookup(s.name()).unwrap();
        let recs = wal.read(&s, 0, usize::MAX).unwrap();
        assert_eq!(recs.len() as u64, expected(i), "stream {i}");
        assert!(recs
            .iter()
            .enumerate()
            .all(|(o, r)| r.offset == o as u64 && r.payload.to_vec() == common::payload(i, o as u64)));
    }
}
