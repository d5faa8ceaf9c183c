//! Segments made from zero-filled spares (`Options::preallocate`): the active one ends in
//! zeros, sealed ones are cut to their records, and reopening finds every record with
//! nothing reported as damage.

use std::time::{Duration, Instant};

use promptmq_wal::{Options, SyncMode, Wal};

const SEGMENT: u64 = 64 << 10;

fn shard_files(root: &std::path::Path) -> Vec<(String, u64)> {
    let dir = root.join("shards").join("0000");
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.metadata().unwrap().len()))
        .collect();
    v.sort();
    v
}

/// Appends 200-byte records until at least `n` segments exist and the active one was made
/// from a spare (its file is the full segment size), giving the spare thread time to
/// finish each spare before the active segment fills up. A spare that is not ready in time
/// is no error (the roll makes an ordinary file), so this only waits for one that was.
fn fill(wal: &Wal, root: &std::path::Path, n: usize) -> u64 {
    let s = wal.stream("s").unwrap();
    let mut count = 0u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let files = shard_files(root);
        let segs: Vec<_> = files.iter().filter(|(f, _)| f.ends_with(".seg")).collect();
        if segs.len() >= n && segs.last().is_some_and(|(_, len)| *len == SEGMENT) {
            return count;
        }
        assert!(Instant::now() < deadline, "no segment made from a spare: {files:?}");
        for _ in 0..20 {
            assert_eq!(wal.append(&s, vec![(count % 251) as u8 + 1; 200]).wait().unwrap(), count);
            count += 1;
        }
        // A spare at full length is being synced: let it finish before the roll.
        let spare_full = files.iter().any(|(f, len)| f == "next.seg.spare" && *len == SEGMENT);
        std::thread::sleep(Duration::from_millis(if spare_full { 30 } else { 2 }));
    }
}

#[test]
fn spare_segments_end_in_zeros_until_sealed_and_reopen_clean() {
    for sync in [SyncMode::Always, SyncMode::Interval(Duration::from_millis(2))] {
        let dir = tempfile::tempdir().unwrap();
        let opts = || Options::default().shards(1).segment_bytes(SEGMENT).sync(sync).preallocate(true);
        let wal = Wal::open(dir.path(), opts()).unwrap();
        let count = fill(&wal, dir.path(), 4);
        // `fill` returned: the active segment came from a spare (its file is the full size).
        let files = shard_files(dir.path());
        let segs: Vec<_> = files.iter().filter(|(f, _)| f.ends_with(".seg")).collect();
        // A segment is sealed once its records reach the segment size, so its file is as
        // long as its records (a spare is exactly the segment size).
        for (f, len) in &segs[..segs.len() - 1] {
            assert!(*len > SEGMENT && *len < SEGMENT + 4096, "{sync:?}: sealed {f} is {len} bytes");
        }
        // A crash: the log is not closed (the lock goes with the process in real life;
        // here the handle is leaked and the directory copied as it is).
        let copy = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("cp").arg("-a").arg(dir.path().join(".")).arg(copy.path()).status();
        assert!(status.unwrap().success());
        std::fs::remove_file(copy.path().join("LOCK")).ok();
        wal.close().unwrap();
        for root in [dir.path(), copy.path()] {
            let wal = Wal::open(root, opts()).unwrap();
            let r = wal.recovery_report();
            assert!(r.is_clean(), "{sync:?}: {r:?}");
            let s = wal.lookup("s").unwrap();
            assert_eq!(s.next_offset(), count);
            let mut at = 0;
            while at < count {
                let recs = wal.read(&s, at, 1000).unwrap();
                for r in &recs {
                    assert_eq!(r.offset, at);
                    assert_eq!(&r.payload[..], &vec![(at % 251) as u8 + 1; 200][..]);
                    at += 1;
                }
            }
            // Appending after the reopen writes into the zeros and stays readable.
            assert_eq!(wal.append(&s, vec![9u8; 200]).wait().unwrap(), count);
            wal.close().unwrap();
            let wal = Wal::open(root, opts()).unwrap();
            assert!(wal.recovery_report().is_clean());
            assert_eq!(wal.lookup("s").unwrap().next_offset(), count + 1);
            wal.close().unwrap();
        }
    }
}

#[test]
fn the_next_spare_is_made_as_a_segment_starts_and_segments_without_one_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options::default().shards(1).segment_bytes(SEGMENT).preallocate(true);
    let wal = Wal::open(dir.path(), opts).unwrap();
    let first = wal.stream("first").unwrap();
    wal.append(&first, vec![1u8; 200]).wait().unwrap();
    // The first segment of a new log is an ordinary file: counted as started without a spare.
    let st = wal.stats();
    assert_eq!((st.segments, st.segments_unprepared), (1, 1));
    // Its successor is made now, with the active segment almost empty, not half way.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !shard_files(dir.path()).iter().any(|(f, len)| f == "next.seg.spare" && *len == SEGMENT) {
        assert!(Instant::now() < deadline, "no spare made: {:?}", shard_files(dir.path()));
        std::thread::sleep(Duration::from_millis(5));
    }
    // Once a segment made from a spare is active, the count tells the two kinds apart.
    fill(&wal, dir.path(), 3);
    let st = wal.stats();
    assert!(st.segments >= 3, "{st:?}");
    assert!(st.segments_unprepared < st.segments, "the active segment came from a spare: {st:?}");
    wal.close().unwrap();
}

/// With retention deleting segments, their files become the next segments (no zeros
/// written). The old records they still hold — valid records, checksums and all — never
/// come back: not after a clean close, not after a crash with the reused segment half
/// written, not in strict recovery.
#[test]
fn deleted_segments_are_reused_and_their_old_records_never_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let opts = || {
        Options::default()
            .shards(1)
            .segment_bytes(SEGMENT)
            .preallocate(true)
            .recovery(promptmq_wal::RecoveryMode::Strict)
    };
    let wal = Wal::open(dir.path(), opts()).unwrap();
    let old = wal.stream("old").unwrap();
    let new = wal.stream("new").unwrap();
    // Old records, 300 bytes of b'O': several segments of them.
    let mut olds = 0u64;
    while wal.stats().segments < 6 {
        wal.append(&old, vec![b'O'; 300]).wait().unwrap();
        olds += 1;
    }
    wal.set_retention(&old, promptmq_wal::Retention { max_records: Some(1), ..promptmq_wal::Retention::FOREVER })
        .unwrap();
    // New records of another size (so they end between old ones), until a reused segment
    // is the active one, with old records left beyond the new.
    let payload = |i: u64| format!("new {i:08} ").repeat(9).into_bytes();
    let mut news = 0u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        wal.apply_retention().unwrap();
        let before = wal.stats().segments_recycled;
        for _ in 0..20 {
            assert_eq!(wal.append(&new, payload(news)).wait().unwrap(), news);
            news += 1;
        }
        if wal.stats().segments_recycled > before {
            break; // the roll just now took a reused segment
        }
        assert!(Instant::now() < deadline, "no segment was reused: {:?}", wal.stats());
        std::thread::sleep(Duration::from_millis(2));
    }
    // Past the zeroed start of the file, so that new records run straight into old ones.
    for _ in 0..60 {
        assert_eq!(wal.append(&new, payload(news)).wait().unwrap(), news);
        news += 1;
    }
    let files = shard_files(dir.path());
    let active = files.iter().rfind(|(f, _)| f.ends_with(".seg")).unwrap();
    assert_eq!(active.1, SEGMENT, "the active segment is a reused file of the full size: {files:?}");
    let data = std::fs::read(dir.path().join("shards").join("0000").join(&active.0)).unwrap();
    assert!(data.windows(300).any(|w| w == [b'O'; 300]), "old records are still in the reused file");
    // A crash now: copy the directory as it is.
    let copy = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("cp").arg("-a").arg(dir.path().join(".")).arg(copy.path()).status();
    assert!(status.unwrap().success());
    std::fs::remove_file(copy.path().join("LOCK")).ok();
    let first_old = old.first_offset();
    wal.close().unwrap();
    for (root, crashed) in [(dir.path(), false), (copy.path(), true)] {
        let wal = Wal::open(root, opts()).unwrap();
        let r = wal.recovery_report();
        let shard = &r.shards[0];
        assert!(shard.skipped.is_empty() && shard.removed.is_empty() && shard.orphan_records == 0, "{r:?}");
        if crashed {
            assert_eq!(shard.truncated.len(), 1, "the old records are cut off as a torn tail: {r:?}");
            assert_eq!(shard.truncated[0].end, SEGMENT, "{r:?}");
        } else {
            assert!(r.is_clean(), "a clean close cut the old records off: {r:?}");
        }
        let (o, n) = (wal.lookup("old").unwrap(), wal.lookup("new").unwrap());
        assert_eq!((o.next_offset(), n.next_offset()), (olds, news), "crashed: {crashed}");
        let recs = wal.read(&n, 0, 100_000).unwrap();
        assert_eq!(recs.len() as u64, news);
        for (i, r) in recs.iter().enumerate() {
            assert_eq!((r.offset, &r.payload[..]), (i as u64, &payload(i as u64)[..]));
        }
        let recs = wal.read(&o, first_old, 100_000).unwrap();
        assert!(recs.iter().all(|r| r.payload[..] == [b'O'; 300][..]));
        assert_eq!(recs.last().map(|r| r.offset), Some(olds - 1));
        // The log goes on: appends after the reopen land and reopen clean.
        assert_eq!(wal.append(&n, payload(news)).wait().unwrap(), news);
        wal.close().unwrap();
        let wal = Wal::open(root, opts()).unwrap();
        assert!(wal.recovery_report().is_clean(), "{:?}", wal.recovery_report());
        assert_eq!(wal.lookup("new").unwrap().next_offset(), news + 1);
        wal.close().unwrap();
    }
}
