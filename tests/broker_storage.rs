//! The storage options end to end: shard count, segment size, retention, zstd compression
//! and the recovery mode, observed through what clients receive (and, for the files
//! themselves, by looking at the data directory the way an operator would).

use std::path::{Path, PathBuf};
use std::time::Duration;

use promptmq_broker::codec::*;
use promptmq_broker::StorageSettings;
use promptmq_tests::{drain, Client, ConnectOptions, TestBroker};

const V5: ProtocolVersion = ProtocolVersion::V5;

fn persistent() -> ConnectOptions {
    ConnectOptions::persistent(3600)
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for shard in std::fs::read_dir(dir.join("log/shards")).unwrap().flatten() {
        for f in std::fs::read_dir(shard.path()).unwrap().flatten() {
            if f.path().extension().is_some_and(|e| e == "seg") {
                out.push(f.path());
            }
        }
    }
    out.sort();
    out
}

fn small(tweak: impl FnOnce(&mut StorageSettings)) -> impl FnOnce(&mut promptmq_broker::BrokerConfig) {
    move |c| {
        c.storage.shards = Some(3);
        c.storage.segment_bytes = 16 << 10;
        c.storage.maintenance_interval = Duration::from_millis(200);
        tweak(&mut c.storage);
    }
}

/// Subscribes a persistent session to `t`, leaves, publishes `n` messages of `size` bytes.
fn fill(b: &TestBroker, n: usize, size: usize) {
    let (mut s, _) = Client::connect_with(b.addr, "away", V5, persistent());
    s.subscribe("t", QoS::AtLeastOnce);
    s.disconnect();
    let mut p = Client::connect(b.addr, "pub", V5);
    for i in 0..n {
        let mut payload = format!("{i:06}").into_bytes();
        payload.resize(size, b'.');
        assert_eq!(p.publish("t", payload, QoS::AtLeastOnce, false), ReasonCode::Success);
    }
}

fn collect(b: &TestBroker) -> Vec<usize> {
    let (mut s, _) = Client::connect_with(b.addr, "away", V5, persistent());
    drain(&mut s, Duration::from_millis(700))
        .iter()
        .map(|p| std::str::from_utf8(&p.payload[..6]).unwrap().parse().unwrap())
        .collect()
}

#[test]
fn shards_and_segment_size_shape_the_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start_with(dir.path(), small(|_| {}));
    fill(&b, 100, 1000);
    assert_eq!(std::fs::read_dir(dir.path().join("log/shards")).unwrap().count(), 3, "3 shards");
    let segs = segments(dir.path());
    assert!(segs.len() >= 5, "100 KB in 16 KiB segments: {segs:?}");
    assert_eq!(collect(&b), (0..100).collect::<Vec<_>>());
}

#[test]
fn retention_bounds_what_an_absent_session_can_catch_up() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start_with(dir.path(), small(|s| s.retention.max_records = Some(20)));
    fill(&b, 200, 1000);
    std::thread::sleep(Duration::from_millis(800)); // maintenance runs
    let got = collect(&b);
    assert!(got.len() < 200 && got.len() >= 20, "about the newest 20 (whole segments): {}", got.len());
    assert_eq!(*got.last().unwrap(), 199);
    assert!(got.windows(2).all(|w| w[1] == w[0] + 1), "a contiguous newest run");
}

#[test]
fn compressed_segments_read_back_transparently() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start_with(dir.path(), small(|s| s.compress = true));
    fill(&b, 150, 2000);
    let before: u64 = segments(dir.path()).iter().map(|p| std::fs::metadata(p).unwrap().len()).sum();
    std::thread::sleep(Duration::from_millis(1000)); // maintenance compresses sealed segments
    let after: u64 = segments(dir.path()).iter().map(|p| std::fs::metadata(p).unwrap().len()).sum();
    assert!(after * 3 < before, "padding compresses well: {before} -> {after} bytes");
    assert_eq!(collect(&b), (0..150).collect::<Vec<_>>());
}

/// Damage inside an old (checkpointed) segment: the default start does not scan it, so
/// the session that reads it is disconnected with an error instead of being handed a gap;
/// with `verify_all_on_start`, strict recovery refuses to start naming the file and
/// tolerant recovery skips the damaged records and keeps the rest.
#[test]
fn a_damaged_segment_stops_strict_recovery_and_tolerant_recovery_skips_it() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start_with(dir.path(), small(|s| s.shards = Some(1)));
    fill(&b, 60, 1000);
    b.stop();
    // Damage the middle of the first (sealed) segment.
    let first = segments(dir.path()).into_iter().next().unwrap();
    let mut bytes = std::fs::read(&first).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 64] {
        *b ^= 0xff;
    }
    std::fs::write(&first, bytes).unwrap();
    {
        let b = TestBroker::start_with(dir.path(), small(|s| s.shards = Some(1)));
        let (mut s, _) = Client::connect_with(b.addr, "away", V5, persistent());
        let (closed, packets) = s.closed_within(Duration::from_secs(5));
        assert!(closed, "the reader of the damaged range is disconnected, not silently skipped");
        assert!(packets.iter().any(|p| matches!(p, Packet::Disconnect(_))), "{packets:?}");
        b.stop();
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut cfg = promptmq_broker::BrokerConfig::new("127.0.0.1:0".parse().unwrap(), dir.path());
    small(|s| {
        s.shards = Some(1);
        s.verify_all_on_start = true;
    })(&mut cfg);
    let err = rt.block_on(promptmq_broker::Broker::start(cfg)).err().expect("strict refuses");
    let msg = err.to_string();
    assert!(msg.contains(&first.file_name().unwrap().to_string_lossy().to_string()), "names the file: {msg}");
    // Tolerant: starts, skips the damaged records, keeps the rest, and works.
    let b = TestBroker::start_with(
        dir.path(),
        small(|s| {
            s.shards = Some(1);
            s.verify_all_on_start = true;
            s.recovery = promptmq_wal::RecoveryMode::Tolerant;
        }),
    );
    let got = collect(&b);
    assert!(got.len() < 60 && got.len() > 40, "the records around the damage survive: {}", got.len());
    let mut p = Client::connect(b.addr, "pub2", V5);
    assert_eq!(p.publish("t", "after", QoS::AtLeastOnce, false), ReasonCode::Success);
}
