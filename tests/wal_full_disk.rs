//! A really full disk, not a simulated one (`faults.rs` injects the errors): the log runs on
//! a small ext4 filesystem mounted for the test until the kernel refuses to write. Appends
//! must then fail with `Error::DiskFull`, nothing acknowledged may be lost, and once space is
//! freed the log reopens strictly and goes on.
//!
//! Mounting needs root and loop devices (CI has both). Where they are missing the tests say
//! so on stderr and check nothing.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use promptmq_tests::SmallFs;
use promptmq_wal::{Completion, Error, Options, RecoveryMode, SyncMode, Wal};

fn payload(i: u64) -> Vec<u8> {
    let mut p = format!("record {i} ").into_bytes();
    p.resize(4000, b'a' + (i % 26) as u8);
    p
}

/// Waits for append `i`: acknowledged (its offset noted) or refused as a full disk.
fn settle((i, c): (u64, Completion<u64>), acked: &mut Vec<(u64, u64)>, refused: &mut u32) {
    match c.wait() {
        Ok(offset) => acked.push((offset, i)),
        Err(e) => {
            eprintln!("refused: {e}");
            assert!(e.is_disk_full(), "a full disk is reported as such, got: {e}");
            assert!(e.to_string().contains("free some space"), "the error says what to do: {e}");
            *refused += 1;
        }
    }
}

fn options() -> Options {
    Options::default().shards(1).segment_bytes(1 << 20).sync(SyncMode::Always).preallocate(true)
}

#[test]
fn a_really_full_disk_refuses_appends_and_loses_nothing_acknowledged() {
    full_disk_appends(options());
}

/// The same where an append is acknowledged once written and synced in the background
/// (`interval`): a write that does not fit is refused all the same, and a clean close
/// syncs what was acknowledged.
#[test]
fn a_really_full_disk_with_background_syncs() {
    full_disk_appends(options().sync(SyncMode::Interval(Duration::from_millis(5))).preallocate(false));
}

fn full_disk_appends(options: Options) {
    let Some(fs) = SmallFs::mount(24) else { return };
    let dir = fs.mnt.join("log");
    // Freed at the end, so that the log can reopen with room to spare.
    let filler = fs.mnt.join("filler");
    std::fs::write(&filler, vec![1u8; 3 << 20]).unwrap();
    let options = || options.clone();

    let wal = Wal::open(&dir, options()).unwrap();
    let s = wal.stream("s").unwrap();
    let mut acked = Vec::new();
    let mut refused = 0u32;
    let mut in_flight: VecDeque<(u64, Completion<u64>)> = VecDeque::new();
    // Far more than fits (24 MiB of 4 KB records is ~6 000), bounded in time too.
    let start = Instant::now();
    for i in 0..20_000u64 {
        in_flight.push_back((i, wal.append(&s, payload(i))));
        if in_flight.len() >= 16 {
            settle(in_flight.pop_front().unwrap(), &mut acked, &mut refused);
        }
        if refused >= 200 || start.elapsed() > Duration::from_secs(60) {
            break;
        }
    }
    for c in in_flight.drain(..) {
        settle(c, &mut acked, &mut refused);
    }
    assert!(refused > 0, "the disk never filled: {} acknowledged", acked.len());
    assert!(acked.len() > 1000, "only {} acknowledged before the disk was full", acked.len());
    // Offsets are dense and in append order: a refused append takes no offset.
    for (n, (offset, _)) in acked.iter().enumerate() {
        assert_eq!(*offset, n as u64, "offsets of acknowledged appends");
    }
    eprintln!("{} acknowledged, {refused} refused", acked.len());
    // Closing on a full disk may fail (the index cannot be written), but cleanly.
    if let Err(e) = wal.close() {
        eprintln!("close on the full disk: {e}");
        assert!(e.is_disk_full() || matches!(e, Error::Io { .. }), "close on a full disk: {e}");
    }

    // Still full: opening either works or says the disk is full.
    match Wal::open(&dir, options()) {
        Ok(w) => drop(w),
        Err(e) => eprintln!("open on the full disk: {e}"),
    }
    match Wal::open(&dir, options()) {
        Ok(w) => drop(w),
        Err(e) => assert!(e.is_disk_full() || matches!(e, Error::Io { .. }), "open on a full disk: {e}"),
    }

    // With space again: a strict open finds every acknowledged record, intact.
    std::fs::remove_file(&filler).unwrap();
    let wal = Wal::open(&dir, options().recovery(RecoveryMode::Strict)).unwrap();
    let s = wal.lookup("s").expect("the stream survives");
    let mut from = 0u64;
    while from < acked.len() as u64 {
        let recs = wal.read(&s, from, 256).unwrap();
        assert!(!recs.is_empty(), "acknowledged offset {from} is missing");
        for r in &recs {
            if let Some((_, i)) = acked.get(r.offset as usize) {
                assert_eq!(r.payload.to_vec(), payload(*i), "record at offset {}", r.offset);
            }
        }
        from = recs.last().map_or(from, |r| r.offset + 1);
    }
    // Nothing unacknowledged is in the way either: the log goes on at the next offset or
    // after the few records that were written but whose acknowledgement failed.
    let next = wal.append(&s, "after").wait().unwrap();
    assert!(next >= acked.len() as u64);
    wal.close().unwrap();
}

/// Every record of `stream`, in offset order.
fn read_all(wal: &Wal, stream: &promptmq_wal::Stream) -> Vec<promptmq_wal::Record> {
    let (mut out, mut from) = (Vec::new(), 0u64);
    loop {
        let recs = wal.read(stream, from, 512).unwrap();
        match recs.last() {
            Some(last) => from = last.offset + 1,
            None => return out,
        }
        out.extend(recs);
    }
}

/// A failure on a full disk must be a clean, typed one.
fn clean_refusal(what: &str, e: &Error) {
    eprintln!("{what} on the full disk: {e}");
    assert!(
        e.is_disk_full() || matches!(e, Error::Io { .. } | Error::Index(_) | Error::ShardFailed { .. }),
        "{what} on a full disk: {e:?}"
    );
}

#[test]
fn maintenance_cursors_new_streams_and_the_index_on_a_really_full_disk() {
    let Some(fs) = SmallFs::mount(24) else { return };
    let dir = fs.mnt.join("log");
    let filler = fs.mnt.join("filler");
    std::fs::write(&filler, vec![1u8; 3 << 20]).unwrap();
    let opts = || Options::default().shards(2).segment_bytes(512 << 10).sync(SyncMode::Always);

    let wal = Wal::open(&dir, opts()).unwrap();
    let compacted = promptmq_wal::StreamOptions { compacted: true, ..Default::default() };
    let streams: Vec<_> = (0..40).map(|i| wal.stream_with(&format!("s{i}"), compacted).unwrap()).collect();
    // Per stream, per key: the offset and payload of the newest acknowledged record.
    let mut newest = vec![std::collections::HashMap::<Vec<u8>, (u64, Vec<u8>)>::new(); streams.len()];
    let mut refused = 0u32;
    let start = Instant::now();
    for i in 0..40_000u64 {
        let n = (i % streams.len() as u64) as usize;
        // Half the streams never supersede a key, so no segment (they are shared by the
        // streams of a shard) is wholly dead: compaction has to write before it frees.
        let key = match n % 2 {
            0 => format!("u{i}").into_bytes(),
            _ => format!("k{}", (i / streams.len() as u64) % 8).into_bytes(),
        };
        let mut value = format!("{i} ").into_bytes();
        value.resize(2000, b'v');
        match wal.append_keyed(&streams[n], key.clone(), value.clone()).wait() {
            Ok(offset) => {
                newest[n].insert(key, (offset, value));
            }
            Err(e) => {
                assert!(e.is_disk_full(), "a full disk is reported as such, got: {e}");
                refused += 1;
            }
        }
        if refused >= 100 || start.elapsed() > Duration::from_secs(60) {
            break;
        }
    }
    assert!(refused > 0, "the disk never filled");

    // Everything else that writes, on the full disk: each works or fails cleanly.
    if let Err(e) = wal.stream("created-when-full") {
        clean_refusal("creating a stream", &e);
    }
    if let Err(e) = wal.commit_cursor(&streams[0], "reader", 3) {
        clean_refusal("committing a cursor", &e);
    }
    match wal.compact(true) {
        Ok(r) => eprintln!("compaction on the full disk: {r:?}"),
        Err(e) => clean_refusal("compaction", &e),
    }
    // A compacted copy that did not fit is not left behind, holding space.
    for shard in std::fs::read_dir(dir.join("shards")).unwrap() {
        for f in std::fs::read_dir(shard.unwrap().path()).unwrap() {
            let name = f.unwrap().file_name().to_string_lossy().into_owned();
            assert!(name.ends_with(".seg"), "left in a shard after compaction on a full disk: {name}");
        }
    }
    if let Err(e) = wal.apply_retention() {
        clean_refusal("retention", &e);
    }
    if let Err(e) = wal.flush() {
        clean_refusal("flush", &e);
    }
    // Reads still serve every newest acknowledged value.
    let check = |wal: &Wal, streams: &[promptmq_wal::Stream]| {
        for (n, s) in streams.iter().enumerate() {
            let recs = read_all(wal, s);
            for (key, (offset, value)) in &newest[n] {
                let found = recs.iter().find(|r| r.offset == *offset);
                let superseded = recs.iter().any(|r| r.offset > *offset && r.key.as_deref() == Some(&key[..]));
                match found {
                    Some(r) => assert_eq!(&r.payload[..], &value[..], "stream {n} offset {offset}"),
                    None => assert!(superseded, "stream {n}: the newest value of a key, offset {offset}, is gone"),
                }
            }
        }
    };
    check(&wal, &streams);
    if let Err(e) = wal.close() {
        clean_refusal("close", &e);
    }

    // With space again: strict recovery, every newest value there, and the log goes on.
    std::fs::remove_file(&filler).unwrap();
    let wal = Wal::open(&dir, opts().recovery(RecoveryMode::Strict)).unwrap();
    let streams: Vec<_> = (0..40).map(|i| wal.lookup(&format!("s{i}")).expect("stream survives")).collect();
    check(&wal, &streams);
    wal.compact(true).unwrap();
    check(&wal, &streams);
    wal.append_keyed(&streams[0], "k0", "after").wait().unwrap();
    wal.commit_cursor(&streams[0], "reader", 3).unwrap();
    wal.close().unwrap();
}

#[test]
fn compaction_on_a_full_disk_still_deletes_what_is_dead() {
    let Some(fs) = SmallFs::mount(24) else { return };
    let dir = fs.mnt.join("log");
    let opts = || Options::default().shards(1).segment_bytes(512 << 10).sync(SyncMode::Always);
    let wal = Wal::open(&dir, opts()).unwrap();
    let compacted = promptmq_wal::StreamOptions { compacted: true, ..Default::default() };
    // First a third of the disk whose records all stay live: compacting and compressing
    // these segments means writing copies of them.
    let live = wal.stream_with("live", compacted).unwrap();
    let mut value = vec![b'v'; 2000];
    for i in 0..3500u64 {
        value[..8].copy_from_slice(&i.to_be_bytes());
        wal.append_keyed(&live, format!("u{i}"), value.clone()).wait().unwrap();
    }
    // Then, until the disk is full, one key over and over: all but its newest are dead.
    let hot = wal.stream_with("hot", compacted).unwrap();
    let mut newest_hot = None;
    let start = Instant::now();
    loop {
        match wal.append_keyed(&hot, "k", value.clone()).wait() {
            Ok(offset) => newest_hot = Some(offset),
            Err(e) => {
                assert!(e.is_disk_full(), "{e}");
                break;
            }
        }
        assert!(start.elapsed() < Duration::from_secs(60), "the disk never filled");
    }
    let (_, before) = wal.disk_usage().unwrap();
    // The first segments' copies do not fit; the dead ones after them go all the same.
    match wal.compact(true) {
        Ok(r) => eprintln!("compaction on the full disk: {r:?}"),
        Err(e) => clean_refusal("compaction", &e),
    }
    let (_, after) = wal.disk_usage().unwrap();
    eprintln!("segment bytes before {before}, after {after}");
    assert!(after < before / 2, "dead segments deleted on the full disk: {before} -> {after} bytes");
    // With that space, a second pass compresses the live segments too.
    let report = wal.compact(true).unwrap();
    assert!(report.segments_compressed > 0, "{report:?}");
    assert_eq!(wal.read(&live, 0, 10_000).unwrap().len(), 3500);
    let hot_left = wal.read(&hot, 0, 10_000).unwrap();
    assert_eq!(hot_left.last().map(|r| r.offset), newest_hot);
    wal.close().unwrap();
}

/// What ext4 does after an I/O error (`errors=remount-ro`, common in production): the
/// filesystem turns read-only under the log. Appends fail cleanly and nothing is
/// acknowledged; what was acknowledged stays readable; opening the log there is refused with
/// a clear error; after `e2fsck` and a new mount the log opens strictly with every
/// acknowledged record and goes on.
#[test]
fn a_filesystem_that_turns_read_only_under_the_log() {
    let Some(fs) = SmallFs::mount(24) else { return };
    let dir = fs.mnt.join("log");
    let wal = Wal::open(&dir, options()).unwrap();
    let s = wal.stream("s").unwrap();
    for i in 0..100u64 {
        assert_eq!(wal.append(&s, payload(i)).wait().unwrap(), i);
    }
    fs.fail();
    for i in 100..110u64 {
        match wal.append(&s, payload(i)).wait() {
            Ok(o) => panic!("append {i} acknowledged on a read-only filesystem, at offset {o}"),
            Err(e) => eprintln!("append on the read-only filesystem: {e}"),
        }
    }
    let recs = wal.read(&s, 0, 1000).unwrap();
    assert_eq!(recs.len(), 100, "what was acknowledged is still readable");
    let health = wal.health().expect_err("a failed shard is reported");
    assert!(health.to_string().contains("Read-only file system"), "health names the cause: {health}");
    if let Err(e) = wal.close() {
        eprintln!("close on the read-only filesystem: {e}");
    }
    match Wal::open(&dir, options()) {
        Ok(_) => panic!("opened for appending on a read-only filesystem"),
        Err(e) => {
            eprintln!("open on the read-only filesystem: {e}");
            assert!(e.to_string().to_lowercase().contains("read-only"), "the error names the cause: {e}");
        }
    }
    offline_tools_on_a_read_only_log(&dir);
    fs.repair();
    let wal = Wal::open(&dir, options().recovery(RecoveryMode::Strict)).unwrap();
    let s = wal.lookup("s").unwrap();
    let recs = wal.read(&s, 0, 1000).unwrap();
    assert_eq!(recs.len(), 100);
    for r in &recs {
        assert_eq!(r.payload.to_vec(), payload(r.offset));
    }
    assert_eq!(wal.append(&s, "after").wait().unwrap(), 100);
    wal.close().unwrap();
}

/// What `walctl inspect`, `verify`, `dump` and `recover --dry-run` run (`promptmq_wal::tools`)
/// only reads, so it works on the read-only filesystem and sees every acknowledged record;
/// a real `recover` is refused with the cause.
fn offline_tools_on_a_read_only_log(dir: &std::path::Path) {
    use promptmq_wal::tools;
    let found = tools::inspect(dir, &mut |_| {}).expect("inspect on a read-only filesystem");
    assert!(found.damage().is_empty(), "verify finds no damage: {:?}", found.damage());
    let s = found.streams.iter().find(|s| s.name.as_deref() == Some("s")).expect("inspect lists the stream");
    assert_eq!((s.first_offset, s.last_offset, s.records), (Some(0), Some(99), 100));
    let mut dumped = Vec::new();
    tools::dump(dir, "s", 0, u64::MAX, &mut |r| dumped.push((r.offset, r.payload.to_vec()))).expect("dump");
    assert_eq!(dumped, (0..100).map(|i| (i, payload(i))).collect::<Vec<_>>());
    let plan = tools::recover(dir, RecoveryMode::Strict, true).expect("recover --dry-run on a read-only filesystem");
    assert!(
        plan.truncate.is_empty() && plan.skip.is_empty() && plan.set_aside.is_empty(),
        "nothing to repair: {plan:?}"
    );
    match tools::recover(dir, RecoveryMode::Strict, false) {
        Ok(_) => panic!("recover wrote to a read-only filesystem"),
        Err(e) => assert!(e.to_string().to_lowercase().contains("read-only"), "recover names the cause: {e}"),
    }
}

/// A filesystem that runs out of inodes while it has blocks to spare: a new segment (or the
/// index's next file) cannot be created. Appends are refused cleanly, nothing acknowledged
/// is lost, and once files are freed the log goes on.
#[test]
fn a_filesystem_out_of_inodes() {
    let Some(fs) = SmallFs::mount_with_inodes(64, Some(128)) else { return };
    let dir = fs.mnt.join("log");
    let opts = || Options::default().shards(1).segment_bytes(64 << 10).sync(SyncMode::Always);
    let wal = Wal::open(&dir, opts()).unwrap();
    let s = wal.stream("s").unwrap();
    let mut acked = vec![(wal.append(&s, payload(0)).wait().unwrap(), 0)];
    // Then every inode left goes.
    let fillers = fs.mnt.join("fillers");
    std::fs::create_dir(&fillers).unwrap();
    for n in 0.. {
        if std::fs::File::create(fillers.join(n.to_string())).is_err() {
            break;
        }
    }
    let mut refused = 0;
    for i in 1..5_000u64 {
        match wal.append(&s, payload(i)).wait() {
            Ok(offset) => acked.push((offset, i)),
            Err(e) => {
                eprintln!("append {i} with no inode free: {e}");
                assert!(e.is_disk_full(), "no inode left is a full disk: {e}");
                refused += 1;
                if refused == 10 {
                    break;
                }
            }
        }
    }
    assert_eq!(refused, 10, "inodes never ran out: {} acknowledged", acked.len());
    // Files freed: the log goes on at once, without a reopen...
    std::fs::remove_dir_all(&fillers).unwrap();
    for i in 5_000..5_040u64 {
        acked.push((wal.append(&s, payload(i)).wait().unwrap(), i));
    }
    for (n, (offset, _)) in acked.iter().enumerate() {
        assert_eq!(*offset, n as u64, "offsets of acknowledged appends");
    }
    wal.close().unwrap();
    // ...and a strict open finds everything acknowledged.
    let wal = Wal::open(&dir, opts().recovery(RecoveryMode::Strict)).unwrap();
    let s = wal.lookup("s").expect("the stream survives");
    let recs = read_all(&wal, &s);
    assert_eq!(recs.len(), acked.len(), "records for the acknowledged appends, and nothing else");
    for (offset, i) in &acked {
        assert_eq!(recs[*offset as usize].payload.to_vec(), payload(*i), "record at offset {offset}");
    }
    assert!(wal.append(&s, "after").wait().unwrap() >= acked.len() as u64);
    wal.close().unwrap();
}
