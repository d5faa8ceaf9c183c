//! Retention (by count, bytes, age), key compaction and compression of sealed segments.

mod common;

use std::time::Duration;

use promptmq_wal::{tools, Options, Retention, StreamOptions, Wal};

fn opts() -> Options {
    Options::default().shards(1).segment_bytes(4096)
}

#[test]
fn compaction_keeps_latest_per_key_and_compression_is_transparent() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), opts()).unwrap();
    let s = wal.stream_with("retained", StreamOptions { compacted: true, ..Default::default() }).unwrap();
    let plain = wal.stream("plain").unwrap();
    for i in 0..400u64 {
        wal.append_keyed(&s, format!("k{}", i % 5), format!("value-{i}-{}", "z".repeat(40))).wait().unwrap();
        wal.append(&plain, common::payload(1, i)).wait().unwrap();
    }
    let before = common::segments(dir.path()).iter().map(|p| std::fs::metadata(p).unwrap().len()).sum::<u64>();
    let report = wal.compact(true).unwrap();
    assert!(report.records_dropped > 300, "{report:?}");
    assert!(report.segments_compressed > 0, "{report:?}");
    assert!(report.bytes_reclaimed > 0, "{report:?}");
    let after = common::segments(dir.path()).iter().map(|p| std::fs::metadata(p).unwrap().len()).sum::<u64>();
    assert!(after < before / 2, "{after} vs {before}");

    let check = |wal: &Wal| {
        let s = wal.lookup("retained").unwrap();
        let recs = wal.read(&s, 0, 10_000).unwrap();
        for k in 0..5u64 {
            let last = (0..400).rev().find(|i| i % 5 == k).unwrap();
            let r = recs.iter().find(|r| r.key.as_deref() == Some(format!("k{k}").as_bytes()) && r.offset == last);
            assert!(r.is_some(), "latest value of k{k} (offset {last}) missing");
        }
        assert!(recs.len() < 100, "superseded records are gone: {}", recs.len());
        // The plain stream shares the compressed segments and is read back intact.
        let p = wal.lookup("plain").unwrap();
        let prs = wal.read(&p, 0, 10_000).unwrap();
        assert_eq!(prs.len(), 400);
        for r in &prs {
            assert_eq!(r.payload.to_vec(), common::payload(1, r.offset));
        }
    };
    check(&wal);
    wal.close().unwrap();
    let wal = Wal::open(dir.path(), opts()).unwrap();
    check(&wal);
    // Appends continue after compaction; a second pass keeps working on compressed input.
    let s = wal.lookup("retained").unwrap();
    assert_eq!(wal.append_keyed(&s, "k0", "newest").wait().unwrap(), 400);
    wal.compact(true).unwrap();
    wal.close().unwrap();
    let wal = Wal::open(dir.path(), opts().full_recovery(true)).unwrap();
    let s = wal.lookup("retained").unwrap();
    let recs = wal.read(&s, 0, 10_000).unwrap();
    assert_eq!(&recs.last().unwrap().payload[..], b"newest");
    wal.close().unwrap();

    let found = tools::inspect(dir.path(), &mut |_| {}).unwrap();
    assert!(found.segments.iter().any(|s| s.compressed));
    assert!(found.damage().is_empty());
}

#[test]
fn retention_by_bytes_and_age() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), opts()).unwrap();
    let by_bytes = wal.stream("by-bytes").unwrap();
    let by_age = wal.stream("by-age").unwrap();
    for i in 0..200u64 {
        wal.append(&by_bytes, vec![b'x'; 100]).wait().unwrap();
        wal.append(&by_age, format!("old-{i}")).wait().unwrap();
    }
    // Generous margins: the appends and policy changes below each sync, and CI machines are
    // shared; the new records must stay younger than max_age until apply_retention runs.
    std::thread::sleep(Duration::from_millis(1200));
    for i in 0..5u64 {
        wal.append(&by_age, format!("new-{i}")).wait().unwrap();
    }
    // Each record is 48 bytes of header + 100 of payload: 1500 bytes hold 10 records.
    wal.set_retention(&by_bytes, Retention { max_bytes: Some(1500), ..Retention::FOREVER }).unwrap();
    wal.set_retention(&by_age, Retention { max_age: Some(Duration::from_millis(600)), ..Retention::FOREVER }).unwrap();
    let report = wal.apply_retention().unwrap();
    assert_eq!(by_bytes.first_offset(), 190);
    assert_eq!(by_age.first_offset(), 200);
    assert!(report.segments_deleted > 0);
    let recs = wal.read(&by_age, 0, 100).unwrap();
    assert_eq!(recs.iter().map(|r| r.offset).collect::<Vec<_>>(), (200..205).collect::<Vec<_>>());
    wal.close().unwrap();
    // First offsets survive a reopen, and so does the policy.
    let wal = Wal::open(dir.path(), opts()).unwrap();
    assert_eq!(wal.lookup("by-bytes").unwrap().first_offset(), 190);
    let info = wal.streams().into_iter().find(|s| s.name == "by-age").unwrap();
    assert_eq!(info.retention.max_age, Some(Duration::from_millis(600)));
}

/// A closed log of one stream, `s`, holding `records` records.
fn closed_log(dir: &std::path::Path, records: u64) {
    let wal = Wal::open(dir, opts()).unwrap();
    let s = wal.stream("s").unwrap();
    for i in 0..records {
        wal.append(&s, common::payload(0, i)).wait().unwrap();
    }
    wal.close().unwrap();
}

#[test]
fn leftover_compaction_output_is_discarded_on_open() {
    let dir = tempfile::tempdir().unwrap();
    closed_log(dir.path(), 100);
    let seg = common::segments(dir.path())[0].clone();
    let tmp = seg.with_extension("seg.compacting");
    std::fs::write(&tmp, b"half-written compaction output").unwrap();
    let wal = Wal::open(dir.path(), opts()).unwrap();
    assert!(!tmp.exists());
    assert_eq!(wal.read(&wal.lookup("s").unwrap(), 0, 1000).unwrap().len(), 100);
}

/// Appends 400 records to two streams in turn, with retention keeping the last 50 of each
/// (so segments in the middle of the log go, while the first, with the streams' catalogue
/// records, stays), and closes.
fn log_cut_by_retention(dir: &std::path::Path) {
    let wal = Wal::open(dir, opts()).unwrap();
    let short = wal.stream("short").unwrap();
    let other = wal.stream("other").unwrap();
    wal.set_retention(&short, Retention { max_records: Some(50), ..Retention::FOREVER }).unwrap();
    wal.set_retention(&other, Retention { max_records: Some(50), ..Retention::FOREVER }).unwrap();
    for i in 0..400u64 {
        wal.append(&short, common::payload(0, i)).wait().unwrap();
        wal.append(&other, common::payload(1, i)).wait().unwrap();
    }
    let report = wal.apply_retention().unwrap();
    assert!(report.segments_deleted > 0, "{report:?}");
    wal.close().unwrap();
}

/// Without its index, the log does not say where retention cut a stream: restored from
/// the log, a stream jumps over the deleted segments. That is not lost data: strict
/// recovery takes it, reports it, and every record still there reads back.
#[test]
fn a_log_cut_by_retention_reopens_strictly_without_its_index() {
    let dir = tempfile::tempdir().unwrap();
    log_cut_by_retention(dir.path());
    std::fs::remove_dir_all(dir.path().join("index")).unwrap();
    let wal = Wal::open(dir.path(), opts()).expect("strict recovery without the index");
    let gaps: Vec<_> = wal.recovery_report().shards.iter().flat_map(|s| s.retention_gaps.clone()).collect();
    assert!(!gaps.is_empty(), "the jumps over deleted segments are reported");
    for (i, name) in ["short", "other"].into_iter().enumerate() {
        let s = wal.lookup(name).unwrap();
        let recs = wal.read(&s, 0, 1000).unwrap();
        assert!(recs.iter().any(|r| r.offset == 399), "{name}: the newest record is there");
        for r in &recs {
            assert_eq!(r.payload.to_vec(), common::payload(i, r.offset));
        }
        // The records after the last jump are dense up to the newest.
        let tail: Vec<u64> = recs.iter().map(|r| r.offset).filter(|&o| o >= 350).collect();
        assert_eq!(tail, (350..400).collect::<Vec<_>>(), "{name}");
    }
    assert_eq!(wal.append(&wal.lookup("short").unwrap(), "next").wait().unwrap(), 400);
}

/// With the index in place a stream's cut is known, so a segment file missing from the
/// middle of the log is lost data, refused in strict mode even on a full re-index.
#[test]
fn a_missing_segment_is_still_refused_when_the_index_knows_the_streams() {
    let dir = tempfile::tempdir().unwrap();
    closed_log(dir.path(), 400);
    let segs = common::segments(dir.path());
    assert!(segs.len() >= 4);
    std::fs::remove_file(&segs[2]).unwrap();
    match Wal::open(dir.path(), opts().full_recovery(true)) {
        Err(promptmq_wal::Error::Corrupt { reason, .. }) => assert!(reason.contains("jumps"), "{reason}"),
        Err(e) => panic!("expected Corrupt, got {e}"),
        Ok(_) => panic!("a missing segment went unnoticed"),
    }
}
