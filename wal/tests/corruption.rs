//! Torn writes and bit rot: recovery keeps exactly the valid records, truncates torn tails,
//! refuses damaged sealed data in strict mode and skips it (reported) in tolerant mode.
//! Never a panic.

mod common;

use std::path::Path;

use promptmq_wal::{Error, Options, RecoveryMode, Wal};
use rand::{Rng, SeedableRng};

const RECORDS: u64 = 120;

/// Writes RECORDS records to one stream in a single shard with small segments.
fn build(dir: &Path) {
    let wal = Wal::open(dir, Options::default().shards(1).segment_bytes(4096)).unwrap();
    let s = wal.stream("s").unwrap();
    for i in 0..RECORDS {
        wal.append(&s, common::payload(0, i)).wait().unwrap();
    }
    wal.close().unwrap();
}

fn open(dir: &Path, mode: RecoveryMode) -> Result<Wal, Error> {
    Wal::open(dir, Options::default().shards(1).segment_bytes(4096).recovery(mode))
}

/// Reads back every record and checks each one is intact; returns their offsets.
fn offsets(wal: &Wal) -> Vec<u64> {
    let s = wal.lookup("s").unwrap();
    let recs = wal.read(&s, 0, 10_000).unwrap();
    for r in &recs {
        assert_eq!(r.payload.to_vec(), common::payload(0, r.offset), "record {} damaged", r.offset);
    }
    recs.iter().map(|r| r.offset).collect()
}

fn copy_dir(from: &Path, to: &Path) {
    for e in walk(from) {
        let rel = e.strip_prefix(from).unwrap();
        let dst = to.join(rel);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(&e, &dst).unwrap();
    }
}

fn walk(p: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(p).unwrap() {
        let path = e.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else if path.file_name().is_some_and(|n| n != "LOCK") {
            out.push(path);
        }
    }
    out
}

#[test]
fn truncating_the_newest_segment_anywhere_keeps_the_valid_prefix() {
    let pristine = tempfile::tempdir().unwrap();
    build(pristine.path());
    let segs = common::segments(pristine.path());
    let last = segs.last().unwrap().clone();
    let len = std::fs::metadata(&last).unwrap().len();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for _ in 0..25 {
        let cut = rng.gen_range(0..len);
        let work = tempfile::tempdir().unwrap();
        copy_dir(pristine.path(), work.path());
        let target = work.path().join(last.strip_prefix(pristine.path()).unwrap());
        std::fs::OpenOptions::new().write(true).open(&target).unwrap().set_len(cut).unwrap();
        // The newest segment may have been made from a zero-filled spare: a cut in its
        // zeros loses nothing. Each open below appends one record.
        for (appended, mode) in [RecoveryMode::Strict, RecoveryMode::Tolerant].into_iter().enumerate() {
            let wal = open(work.path(), mode).unwrap_or_else(|e| panic!("cut at {cut}, {mode:?}: {e}"));
            let got = offsets(&wal);
            // A torn tail loses a suffix and nothing else.
            assert_eq!(got, (0..got.len() as u64).collect::<Vec<_>>(), "cut at {cut}");
            assert!(got.len() as u64 <= RECORDS + appended as u64);
            // The log accepts appends after the repair, continuing the offsets.
            let s = wal.lookup("s").unwrap();
            let next = wal.append(&s, common::payload(0, got.len() as u64)).wait().unwrap();
            assert_eq!(next, got.len() as u64);
            wal.close().unwrap();
        }
    }
}

#[test]
fn flipped_bits_in_sealed_segments_fail_strict_and_are_skipped_tolerant() {
    let pristine = tempfile::tempdir().unwrap();
    build(pristine.path());
    let segs = common::segments(pristine.path());
    assert!(segs.len() >= 3, "need sealed segments");
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for _ in 0..20 {
        let work = tempfile::tempdir().unwrap();
        copy_dir(pristine.path(), work.path());
        // The index checkpoint would let open skip sealed segments; drop it so recovery
        // scans them, as `walctl recover` does.
        std::fs::remove_dir_all(work.path().join("index")).unwrap();
        // Not the first segment: it holds the stream's catalogue record, and with the index
        // gone a damaged catalogue record orphans the whole stream (tested separately).
        let victim = &segs[rng.gen_range(1..segs.len() - 1)];
        let target = work.path().join(victim.strip_prefix(pristine.path()).unwrap());
        let mut bytes = std::fs::read(&target).unwrap();
        let at = rng.gen_range(32..bytes.len());
        bytes[at] ^= 1 << rng.gen_range(0..8);
        std::fs::write(&target, &bytes).unwrap();

        match open(work.path(), RecoveryMode::Strict) {
            Err(Error::Corrupt { path, .. }) => assert_eq!(path, target),
            Err(e) => panic!("expected Corrupt, got {e}"),
            Ok(_) => panic!("strict recovery accepted a flipped bit at {at} of {}", target.display()),
        }
        let wal = open(work.path(), RecoveryMode::Tolerant).unwrap();
        let report = wal.recovery_report().clone();
        let skipped: usize = report.shards.iter().map(|s| s.skipped.len()).sum();
        assert_eq!(skipped, 1, "exactly one damaged range is reported: {report:?}");
        let got = offsets(&wal);
        // One record (the damaged one) is missing; every other record is there, intact.
        assert_eq!(got.len() as u64, RECORDS - 1, "flip at {at}");
    }
}

#[test]
fn a_damaged_header_is_an_error_in_strict_mode() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    std::fs::remove_dir_all(dir.path().join("index")).unwrap();
    let segs = common::segments(dir.path());
    let mut bytes = std::fs::read(&segs[1]).unwrap();
    bytes[3] ^= 0xff;
    std::fs::write(&segs[1], &bytes).unwrap();
    assert!(matches!(open(dir.path(), RecoveryMode::Strict), Err(Error::Corrupt { .. })));
    let wal = open(dir.path(), RecoveryMode::Tolerant).unwrap();
    assert_eq!(wal.recovery_report().shards[0].removed.len(), 1);
    assert!(!offsets(&wal).is_empty());
}

#[test]
fn a_segment_torn_at_creation_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    let segs = common::segments(dir.path());
    let shard_dir = segs[0].parent().unwrap();
    // A crash right after creating the next segment, before its header reached the disk.
    std::fs::write(shard_dir.join(format!("{:020}.seg", 1_000_000)), [0u8; 10]).unwrap();
    let wal = open(dir.path(), RecoveryMode::Strict).unwrap();
    assert_eq!(wal.recovery_report().shards[0].removed.len(), 1);
    assert_eq!(offsets(&wal).len() as u64, RECORDS);
}

#[test]
fn a_damaged_compressed_segment_is_refused_strict_and_set_aside_tolerant() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    {
        let wal = open(dir.path(), RecoveryMode::Strict).unwrap();
        assert!(wal.compact(true).unwrap().segments_compressed > 0);
        wal.close().unwrap();
    }
    std::fs::remove_dir_all(dir.path().join("index")).unwrap();
    let segs = common::segments(dir.path());
    let victim = &segs[1];
    let mut bytes = std::fs::read(victim).unwrap();
    for b in bytes.iter_mut().skip(40).take(16) {
        *b ^= 0xa5;
    }
    std::fs::write(victim, &bytes).unwrap();
    assert!(matches!(open(dir.path(), RecoveryMode::Strict), Err(Error::Corrupt { .. })));
    let wal = open(dir.path(), RecoveryMode::Tolerant).unwrap();
    assert_eq!(wal.recovery_report().shards[0].removed, vec![victim.clone()]);
    let got = offsets(&wal);
    assert!(!got.is_empty() && (got.len() as u64) < RECORDS, "the other segments' records remain: {}", got.len());
}

/// A crash while a segment is being created leaves its file without a header; recovery
/// removes it. The log must then open again and again: the index checkpoint has to move
/// with the streams' offsets even though the shard has no active segment left.
#[test]
fn a_segment_torn_at_creation_leaves_a_log_that_opens_again_and_again() {
    let live = tempfile::tempdir().unwrap();
    let crashed = tempfile::tempdir().unwrap();
    let opts = || Options::default().shards(1).segment_bytes(4096);
    let wal = Wal::open(live.path(), opts()).unwrap();
    let s = wal.stream("s").unwrap();
    for i in 0..RECORDS {
        wal.append(&s, common::payload(0, i)).wait().unwrap();
    }
    assert!(common::segments(live.path()).len() >= 3, "the test needs segments that rolled");
    // What a kill -9 now would leave behind: with sync = always everything acknowledged is
    // written, and the index checkpoint is the one taken when the last segment started.
    let image = crashed.path().join("log");
    let copied = std::process::Command::new("cp").arg("-a").arg(live.path()).arg(&image).status().unwrap();
    assert!(copied.success());
    wal.close().unwrap();
    // The crash hit the creation of the next segment: the file exists, its header does not.
    std::fs::File::create(image.join("shards").join("0000").join(format!("{:020}.seg", 1u64 << 40))).unwrap();

    for round in 0..3 {
        let wal = Wal::open(&image, opts()).unwrap_or_else(|e| panic!("open {round} failed: {e}"));
        let s = wal.lookup("s").unwrap();
        assert_eq!(s.next_offset(), RECORDS, "open {round}");
        let got: Vec<u64> = wal.read(&s, 0, usize::MAX).unwrap().iter().map(|r| r.offset).collect();
        assert_eq!(got, (0..RECORDS).collect::<Vec<_>>(), "open {round}");
        let report = &wal.recovery_report().shards[0];
        assert!(report.from_checkpoint, "open {round} had to re-index the whole shard: the checkpoint lagged");
        wal.close().unwrap();
    }
    // Appending after such a recovery starts a new segment, and the log stays consistent.
    let wal = Wal::open(&image, opts()).unwrap();
    let s = wal.lookup("s").unwrap();
    assert_eq!(wal.append(&s, "after").wait().unwrap(), RECORDS);
    wal.close().unwrap();
    let wal = Wal::open(&image, opts()).unwrap();
    assert_eq!(wal.lookup("s").unwrap().next_offset(), RECORDS + 1);
}

/// Appends 20 records one commit each, then 40 in one commit (a `Batch`), and closes.
/// Payloads are unique strings, so a test can find a record's bytes in the file.
fn build_commits(dir: &Path) {
    let wal = Wal::open(dir, Options::default().shards(1)).unwrap();
    let s = wal.stream("s").unwrap();
    for i in 0..20u64 {
        assert_eq!(wal.append(&s, commit_payload(i)).wait().unwrap(), i);
    }
    let mut batch = wal.batch();
    let last: Vec<_> = (20..60u64).map(|i| batch.append(&s, commit_payload(i))).collect();
    batch.submit();
    for (i, c) in (20..).zip(last) {
        assert_eq!(c.wait().unwrap(), i);
    }
    wal.close().unwrap();
}

fn commit_payload(i: u64) -> String {
    format!("record-{i:04}-{}", "x".repeat(300))
}

/// Flips a bit inside record `i`'s payload in the shard's only segment, and drops the index
/// so that open scans the whole segment (as after a crash, with an older checkpoint).
fn damage_record(dir: &Path, i: u64) {
    std::fs::remove_dir_all(dir.join("index")).unwrap();
    let segs = common::segments(dir);
    assert_eq!(segs.len(), 1, "one segment: it is the newest");
    let mut bytes = std::fs::read(&segs[0]).unwrap();
    let needle = format!("record-{i:04}-");
    let at = bytes.windows(needle.len()).position(|w| w == needle.as_bytes()).expect("the record is in the segment");
    bytes[at + needle.len() + 100] ^= 0x04;
    std::fs::write(&segs[0], &bytes).unwrap();
}

/// A power cut while a commit is being synced can keep any of its sectors and lose the
/// others, so the newest segment may hold bad bytes with valid records after them. None of
/// that commit was acknowledged: strict recovery takes it as the torn tail it is, keeps the
/// records before the hole, and the log goes on from there.
#[test]
fn a_commit_torn_out_of_order_by_a_power_cut_is_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    build_commits(dir.path());
    damage_record(dir.path(), 45);
    let wal = open(dir.path(), RecoveryMode::Strict).expect("strict recovery takes a torn commit as a torn tail");
    let report = wal.recovery_report().clone();
    assert_eq!(report.shards[0].truncated.len(), 1, "{report:?}");
    assert!(report.shards[0].skipped.is_empty());
    let s = wal.lookup("s").unwrap();
    let got = wal.read(&s, 0, 1000).unwrap();
    assert_eq!(got.len(), 45, "the records before the hole stay, those after it go");
    for r in &got {
        assert_eq!(r.payload.to_vec(), commit_payload(r.offset).into_bytes());
    }
    assert_eq!(wal.append(&s, commit_payload(45)).wait().unwrap(), 45);
    wal.close().unwrap();
    let wal = open(dir.path(), RecoveryMode::Strict).unwrap();
    assert_eq!(wal.read(&wal.lookup("s").unwrap(), 0, 1000).unwrap().len(), 46);
}

/// Bad bytes with a later commit after them were synced before that commit was written:
/// that is damage to acknowledged data, refused in strict mode even in the newest segment,
/// and skipped (reported) in tolerant mode.
#[test]
fn damage_under_a_later_commit_is_refused_strict_even_in_the_newest_segment() {
    let dir = tempfile::tempdir().unwrap();
    build_commits(dir.path());
    damage_record(dir.path(), 10);
    match open(dir.path(), RecoveryMode::Strict) {
        Err(Error::Corrupt { .. }) => {}
        Err(e) => panic!("expected Corrupt, got {e}"),
        Ok(_) => panic!("strict recovery took damage to synced records for a torn tail"),
    }
    let wal = open(dir.path(), RecoveryMode::Tolerant).unwrap();
    let report = wal.recovery_report().clone();
    assert_eq!(report.shards[0].skipped.len(), 1, "{report:?}");
    let got: Vec<u64> = wal.read(&wal.lookup("s").unwrap(), 0, 1000).unwrap().iter().map(|r| r.offset).collect();
    assert_eq!(got.len(), 59, "only the damaged record is missing");
    assert!(!got.contains(&10));
}

/// The flags of every record in a segment file, in order.
fn record_flags(path: &Path) -> Vec<u16> {
    use promptmq_wal::format::{decode_view, DecodedView, SEGMENT_HEADER_LEN};
    let bytes = std::fs::read(path).unwrap();
    let mut at = SEGMENT_HEADER_LEN;
    let mut out = Vec::new();
    while let DecodedView::Record(r, n) = decode_view(&bytes[at..], u32::MAX) {
        out.push(r.meta.flags);
        at += n;
    }
    out
}

/// Commits that follow a sync are flagged in a segment of format 2; a log made by an
/// older build goes on in its format 1 segment without the flag, which that build would
/// take for damage.
#[test]
fn commits_are_flagged_after_a_sync_and_never_in_a_format_1_segment() {
    use promptmq_wal::format::{SegmentHeader, OLDEST_FORMAT_VERSION, RECORD_FLAG_AFTER_SYNC, SEGMENT_HEADER_LEN};
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), Options::default().shards(1)).unwrap();
    let s = wal.stream("s").unwrap();
    for i in 0..3 {
        wal.append(&s, commit_payload(i)).wait().unwrap();
    }
    wal.close().unwrap();
    let seg = common::segments(dir.path()).remove(0);
    let flags = record_flags(&seg);
    assert_eq!(flags.len(), 4, "the catalogue record and three appends");
    assert!(flags.iter().all(|f| f & RECORD_FLAG_AFTER_SYNC != 0), "each commit followed a sync: {flags:?}");

    // The same segment, labelled format 1 as an older build wrote it.
    let mut bytes = std::fs::read(&seg).unwrap();
    let h = SegmentHeader::decode(&bytes).unwrap();
    let v1 = SegmentHeader { version: OLDEST_FORMAT_VERSION, ..h };
    bytes[..SEGMENT_HEADER_LEN].copy_from_slice(&v1.encode());
    std::fs::write(&seg, &bytes).unwrap();
    let wal = Wal::open(dir.path(), Options::default().shards(1)).unwrap();
    let s = wal.lookup("s").unwrap();
    for i in 3..6 {
        assert_eq!(wal.append(&s, commit_payload(i)).wait().unwrap(), i);
    }
    wal.close().unwrap();
    let flags = record_flags(&seg);
    assert_eq!(flags.len(), 7);
    assert!(flags[4..].iter().all(|f| f & RECORD_FLAG_AFTER_SYNC == 0), "no flag in a format 1 segment: {flags:?}");
}
