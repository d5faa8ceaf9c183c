//! A full disk and a failing device: appends fail with a typed error, nothing partial is
//! left behind, acknowledged records all survive, and the log recovers.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use promptmq_wal::io::{FaultyBackend, StdBackend};
use promptmq_wal::{Error, Options, SyncMode, Wal};

#[test]
fn full_disk_refuses_appends_and_keeps_the_log_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, plan) = FaultyBackend::new(StdBackend);
    let opts = || Options::default().shards(1).segment_bytes(16 << 10);
    let wal = Wal::open_with_backend(dir.path(), opts(), Arc::new(backend)).unwrap();
    let s = wal.stream("s").unwrap();
    let mut acked = Vec::new();
    for i in 0..50u64 {
        acked.push(wal.append(&s, common::payload(0, i)).wait().unwrap());
    }
    // Room for about one and a half more records: the next write is short, then nothing.
    plan.lock().unwrap().space_left = Some(100);
    let mut refused = 0;
    for i in 50..60u64 {
        match wal.append(&s, common::payload(0, i)).wait() {
            Ok(off) => acked.push(off),
            Err(e) => {
                assert!(e.is_disk_full(), "expected DiskFull, got {e}");
                assert!(e.to_string().contains("free some space"), "the error tells what to do: {e}");
                refused += 1;
            }
        }
    }
    assert!(refused > 0);
    // Space returns: appends work again and continue the offsets without a hole.
    plan.lock().unwrap().space_left = None;
    let next = wal.append(&s, "after").wait().unwrap();
    assert_eq!(next, acked.len() as u64);
    let recs = wal.read(&s, 0, 1000).unwrap();
    assert_eq!(recs.len(), acked.len() + 1);
    wal.close().unwrap();

    // Reopen with the plain backend: recovery finds a clean log with every acked record.
    let wal = Wal::open(dir.path(), opts()).unwrap();
    assert!(wal.recovery_report().is_clean(), "{:?}", wal.recovery_report());
    let s = wal.lookup("s").unwrap();
    let recs = wal.read(&s, 0, 1000).unwrap();
    for (i, r) in recs.iter().take(acked.len()).enumerate() {
        assert_eq!(r.payload.to_vec(), common::payload(0, i as u64));
    }
    assert_eq!(&recs[acked.len()].payload[..], b"after");
}

#[test]
fn full_disk_when_a_new_segment_is_needed() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, plan) = FaultyBackend::new(StdBackend);
    let wal = Wal::open_with_backend(dir.path(), Options::default().shards(1).segment_bytes(4096), Arc::new(backend))
        .unwrap();
    let s = wal.stream("s").unwrap();
    let mut n = 0u64;
    while common::segments(dir.path()).len() < 2 {
        wal.append(&s, common::payload(0, n)).wait().unwrap();
        n += 1;
    }
    // Fill the segment to its limit, then the disk: the roll to a new segment fails.
    plan.lock().unwrap().space_left = Some(0);
    let mut failed = false;
    for _ in 0..200 {
        match wal.append(&s, common::payload(0, n)).wait() {
            Ok(_) => n += 1,
            Err(e) => {
                assert!(e.is_disk_full(), "{e}");
                failed = true;
                break;
            }
        }
    }
    assert!(failed);
    plan.lock().unwrap().space_left = None;
    assert_eq!(wal.append(&s, common::payload(0, n)).wait().unwrap(), n);
    wal.close().unwrap();
    let wal = Wal::open(dir.path(), Options::default().shards(1).segment_bytes(4096)).unwrap();
    let s = wal.lookup("s").unwrap();
    assert_eq!(wal.read(&s, 0, 10_000).unwrap().len() as u64, n + 1);
}

#[test]
fn failed_sync_fails_the_shard_until_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, plan) = FaultyBackend::new(StdBackend);
    let wal = Wal::open_with_backend(dir.path(), Options::default().shards(1), Arc::new(backend)).unwrap();
    let s = wal.stream("s").unwrap();
    wal.append(&s, "one").wait().unwrap();
    assert!(wal.health().is_ok());
    plan.lock().unwrap().fail_sync = true;
    assert!(matches!(wal.append(&s, "two").wait(), Err(Error::Io { .. })));
    assert!(matches!(wal.health(), Err(Error::ShardFailed { shard: 0, .. })), "health reports the failed shard");
    plan.lock().unwrap().fail_sync = false;
    // Even with the device healthy again, the shard refuses until it is reopened: after a
    // failed fdatasync the state of the written pages is unknown.
    match wal.append(&s, "three").wait() {
        Err(e @ Error::ShardFailed { .. }) => assert!(e.to_string().contains("reopen")),
        other => panic!("expected ShardFailed, got {other:?}"),
    }
    assert_eq!(wal.read(&s, 0, 10).unwrap().len(), 1, "the unacknowledged record is not visible");
    wal.close().unwrap();
    let wal = Wal::open(dir.path(), Options::default().shards(1)).unwrap();
    assert!(wal.health().is_ok());
    let s = wal.lookup("s").unwrap();
    assert_eq!(wal.append(&s, "four").wait().unwrap(), s.next_offset() - 1);
    let recs = wal.read(&s, 0, 10).unwrap();
    assert_eq!(&recs[0].payload[..], b"one");
    assert_eq!(&recs.last().unwrap().payload[..], b"four");
}

#[test]
fn interval_mode_acknowledges_before_syncing_and_a_failed_background_sync_fails_the_shard() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, plan) = FaultyBackend::new(StdBackend);
    let every = Duration::from_millis(20);
    let opts = Options::default().shards(1).sync(SyncMode::Interval(every));
    let wal = Wal::open_with_backend(dir.path(), opts, Arc::new(backend)).unwrap();
    let s = wal.stream("s").unwrap();
    wal.append(&s, "one").wait().unwrap();
    // Long enough that a sync is due when the next append arrives.
    std::thread::sleep(every * 3);
    plan.lock().unwrap().fail_sync = true;
    // The append is acknowledged once written: the failing sync is not on its path.
    assert_eq!(wal.append(&s, "two").wait().unwrap(), 1);
    // The sync thread fails within the interval, and the shard stops accepting appends.
    let deadline = Instant::now() + Duration::from_secs(30);
    while wal.health().is_ok() {
        assert!(Instant::now() < deadline, "the background sync never ran");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(matches!(wal.health(), Err(Error::ShardFailed { shard: 0, .. })));
    assert!(matches!(wal.append(&s, "three").wait(), Err(Error::ShardFailed { .. })));
}

#[test]
fn interval_mode_syncs_in_the_background_within_the_interval() {
    let dir = tempfile::tempdir().unwrap();
    let every = Duration::from_millis(10);
    let wal = Wal::open(dir.path(), Options::default().shards(1).sync(SyncMode::Interval(every))).unwrap();
    let s = wal.stream("s").unwrap();
    let before = wal.stats().syncs;
    wal.append(&s, "one").wait().unwrap();
    // Nothing else is appended: no later commit could carry the sync.
    let deadline = Instant::now() + Duration::from_secs(30);
    while wal.stats().syncs == before {
        assert!(Instant::now() < deadline, "the written record was never synced");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn a_stream_whose_creation_failed_on_a_full_disk_can_be_created_again_and_keeps_its_records() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, plan) = FaultyBackend::new(StdBackend);
    let opts = || Options::default().shards(1);
    let wal = Wal::open_with_backend(dir.path(), opts(), Arc::new(backend)).unwrap();
    plan.lock().unwrap().space_left = Some(0);
    let e = wal.stream("t").expect_err("no room for the catalogue record");
    assert!(e.is_disk_full(), "expected DiskFull, got {e}");
    assert!(wal.lookup("t").is_none(), "a failed creation hands out no stream");
    plan.lock().unwrap().space_left = None;
    let t = wal.stream("t").unwrap();
    assert_eq!(wal.append(&t, "kept").wait().unwrap(), 0);
    wal.close().unwrap();

    // The first attempt's index entry is still there under the same name; the stream that
    // holds the record must be the one found.
    for _ in 0..3 {
        let wal = Wal::open(dir.path(), opts()).unwrap();
        let t = wal.lookup("t").unwrap();
        let recs = wal.read(&t, 0, 10).unwrap();
        assert_eq!(recs.len(), 1, "the record of the second creation is found");
        assert_eq!(&recs[0].payload[..], b"kept");
        wal.close().unwrap();
    }
}
