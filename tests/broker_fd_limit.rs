//! The process runs out of file descriptors (EMFILE), as a broker with many connections
//! does when its limit is low: accepts fail and the log cannot open its next segment file.
//! The broker must stay up, refuse what it cannot store, lose nothing it acknowledged, and
//! take connections and messages again once descriptors are free.
//!
//! A test binary of its own: the limit is the whole process's (`prlimit` on it).

use std::net::TcpStream;
use std::time::{Duration, Instant};

use promptmq_broker::codec::*;
use promptmq_tests::{drain_expecting, Client, ConnectOptions, TestBroker};

const V5: ProtocolVersion = ProtocolVersion::V5;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// Sets this process's soft limit on open files (the hard one stays: raising it back would
/// need a privilege). False where that is not possible.
fn set_fd_limit(soft: u64, hard: u64) -> bool {
    std::process::Command::new("prlimit")
        .arg(format!("--pid={}", std::process::id()))
        .arg(format!("--nofile={soft}:{hard}"))
        .status()
        .is_ok_and(|s| s.success())
}

/// This process's soft and hard limits on open files.
fn fd_limits() -> Option<(u64, u64)> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut f = line.split_whitespace().skip(3).map(|v| v.parse().ok());
    Some((f.next()??, f.next()??))
}

#[test]
fn running_out_of_file_descriptors() {
    let Some((soft, hard)) = fd_limits() else {
        eprintln!("SKIPPED: no /proc/self/limits");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // Small segments: the log needs a new file every few messages.
    let b = TestBroker::start_with(dir.path(), |c| c.storage.segment_bytes = 64 << 10);
    let (mut keeper, _) = Client::connect_with(b.addr, "keeper", V5, ConnectOptions::persistent(3600));
    keeper.subscribe("fd/#", QoS::AtLeastOnce);
    keeper.disconnect();
    let mut p = Client::connect(b.addr, "pub", V5);
    let payload = |i: usize| {
        let mut v = format!("m-{i} ").into_bytes();
        v.resize(2000, b'x');
        v
    };
    let mut acked = Vec::new();
    for i in 0..50 {
        assert_eq!(p.publish("fd/a", payload(i), QoS::AtLeastOnce, false), ReasonCode::Success);
        acked.push(payload(i));
    }

    // Leave a handful of descriptors, then take them with connections to the broker.
    if !set_fd_limit(open_fds() as u64 + 16, hard) {
        eprintln!("SKIPPED: cannot change this process's limit on open files");
        return;
    }
    let mut hogs = Vec::new();
    while hogs.len() < 200 {
        match TcpStream::connect(b.addr) {
            Ok(s) => hogs.push(s),
            Err(_) => break,
        }
    }
    // Out of descriptors: QoS 1 publishes are stored or refused, never acknowledged and lost.
    let mut refused = 0;
    for i in 50..150 {
        match p.publish("fd/a", payload(i), QoS::AtLeastOnce, false) {
            ReasonCode::Success => acked.push(payload(i)),
            code => {
                refused += 1;
                eprintln!("publish {i} with no descriptor free: {code:?}");
            }
        }
    }
    eprintln!("{} hogging connections, {refused} publishes refused", hogs.len());

    // Descriptors back: new connections and messages are taken again, without a restart.
    drop(hogs);
    assert!(set_fd_limit(soft, hard), "restoring the limit");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut late = loop {
        match Client::try_connect_with(b.addr, "late", V5, ConnectOptions::default()) {
            Some((c, _)) => break c,
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            None => panic!("the broker takes no connection once descriptors are free"),
        }
    };
    late.subscribe("fd/live", QoS::AtMostOnce);
    for i in 150..170 {
        assert_eq!(p.publish("fd/a", payload(i), QoS::AtLeastOnce, false), ReasonCode::Success, "publish {i}");
        acked.push(payload(i));
    }
    drop((p, late));
    b.stop();
    let b = TestBroker::start(dir.path());
    let (mut keeper, _) = Client::connect_with(b.addr, "keeper", V5, ConnectOptions::persistent(3600));
    let got: Vec<Vec<u8>> = drain_expecting(&mut keeper, acked.len(), Duration::from_millis(700))
        .into_iter()
        .filter(|m| m.topic.as_str() == "fd/a")
        .map(|m| m.payload.to_vec())
        .collect();
    assert_eq!(got.len(), acked.len(), "every acknowledged message, and nothing refused");
    assert!(got == acked, "in order and intact");
    b.stop();
}
