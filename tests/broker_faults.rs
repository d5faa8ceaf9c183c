//! Faults at the broker level: the disk fills up under it (an injected ENOSPC in the log's
//! I/O backend), and a subscriber that never reads. Publishes are refused with a clear
//! reason, nothing acknowledged is lost, the broker recovers when space returns, and other
//! clients are unaffected.

use std::sync::Arc;
use std::time::{Duration, Instant};

use promptmq_broker::codec::*;
use promptmq_tests::{drain, drain_expecting, Client, ConnectOptions, TestBroker};
use promptmq_wal::io::{FaultyBackend, StdBackend};

const V5: ProtocolVersion = ProtocolVersion::V5;

fn persistent() -> ConnectOptions {
    ConnectOptions::persistent(3600)
}

/// The payloads on `topic` that the persistent session "keeper" receives when it comes
/// back, expecting `n` (and collecting until it has been quiet a while).
fn keeper_receives(b: &TestBroker, topic: &str, n: usize) -> Vec<Vec<u8>> {
    let (mut s, _) = Client::connect_with(b.addr, "keeper", V5, persistent());
    drain_expecting(&mut s, n, Duration::from_millis(700))
        .into_iter()
        .filter(|p| p.topic.as_str() == topic)
        .map(|p| p.payload.to_vec())
        .collect()
}

#[test]
fn a_full_disk_refuses_publishes_loses_nothing_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, plan) = FaultyBackend::new(StdBackend);
    let backend: Arc<dyn promptmq_wal::io::Backend> = Arc::new(backend);
    let b = TestBroker::start_with(dir.path(), |c| c.storage.backend = Some(backend));
    let (mut s, _) = Client::connect_with(b.addr, "keeper", V5, persistent());
    s.subscribe("disk/#", QoS::ExactlyOnce);
    s.disconnect();
    let mut p = Client::connect(b.addr, "pub", V5);
    let mut acked = Vec::new();
    for i in 0..10 {
        assert_eq!(p.publish("disk/a", format!("before-{i}"), QoS::AtLeastOnce, false), ReasonCode::Success);
        acked.push(format!("before-{i}"));
    }
    // The disk is full.
    plan.lock().unwrap().space_left = Some(0);
    assert_eq!(p.publish("disk/a", "refused-1", QoS::AtLeastOnce, false), ReasonCode::QuotaExceeded);
    assert_eq!(p.publish("disk/a", "refused-2", QoS::ExactlyOnce, false), ReasonCode::QuotaExceeded);
    // A 3.1.1 client cannot be told "not stored": it is disconnected so that it resends.
    let mut old = Client::connect(b.addr, "old", ProtocolVersion::V3_1_1);
    old.send(&Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "disk/a".into(),
        packet_id: Some(1),
        properties: Properties::default(),
        payload: bytes::Bytes::from_static(b"refused-3"),
    }));
    let (closed, packets) = old.closed_within(Duration::from_secs(5));
    assert!(closed && !packets.iter().any(|p| matches!(p, Packet::PubAck(_))), "{packets:?}");
    // The broker keeps serving: QoS 0 still flows to online subscribers.
    let mut live = Client::connect(b.addr, "live", V5);
    live.subscribe("disk/#", QoS::AtMostOnce);
    p.publish("disk/live", "qos0 while full", QoS::AtMostOnce, false);
    assert_eq!(&live.next_publish(Duration::from_secs(5)).expect("qos 0 flows").payload[..], b"qos0 while full");
    // Space returns: publishes are accepted again, without a restart.
    plan.lock().unwrap().space_left = None;
    for i in 0..5 {
        assert_eq!(p.publish("disk/a", format!("after-{i}"), QoS::AtLeastOnce, false), ReasonCode::Success);
        acked.push(format!("after-{i}"));
    }
    b.stop();
    // Every acknowledged message is there after a restart, and nothing refused is.
    let b = TestBroker::start(dir.path());
    let got = keeper_receives(&b, "disk/a", acked.len());
    assert_eq!(got, acked.iter().map(|a| a.as_bytes().to_vec()).collect::<Vec<_>>());
}

#[test]
fn a_subscriber_that_never_reads_is_cut_off_and_others_are_unaffected() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start_with(dir.path(), |c| c.write_timeout = Duration::from_secs(1));
    // The stuck one subscribes and then never reads a byte.
    let (mut stuck, _) =
        Client::connect_with(b.addr, "stuck", V5, ConnectOptions { clean: true, ..Default::default() });
    stuck.subscribe("load", QoS::AtMostOnce);
    let mut good = Client::connect(b.addr, "good", V5);
    good.subscribe("load", QoS::AtMostOnce);
    let mut p = Client::connect(b.addr, "pub", V5);
    let started = Instant::now();
    let payload = vec![b'x'; 100_000];
    // About 20 MB: more than the stuck client's socket buffers hold.
    for _ in 0..200 {
        p.publish("load", payload.clone(), QoS::AtMostOnce, false);
    }
    let mut received = 0;
    while received < 200 {
        match good.next_publish(Duration::from_secs(5)) {
            Some(_) => received += 1,
            None => break,
        }
    }
    assert_eq!(received, 200, "the reading subscriber got everything");
    assert!(started.elapsed() < Duration::from_secs(10), "and was not held up: {:?}", started.elapsed());
    // The stuck one is disconnected once a write to it has stalled for the write timeout.
    std::thread::sleep(Duration::from_secs(2));
    let (closed, _) = stuck.closed_within(Duration::from_secs(5));
    assert!(closed, "a client that does not read is disconnected");
}

/// With every sync taking 1 s: a QoS 1 message reaches a live subscriber without a
/// persistent session at once, while its publisher's PUBACK and a persistent subscriber
/// wait for the sync; QoS 2 waits for it everywhere. With `deliver_before_durable` off,
/// everyone waits.
#[test]
fn a_slow_sync_delays_only_what_must_wait_for_durability() {
    for early in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let (backend, plan) = FaultyBackend::new(StdBackend);
        let backend: Arc<dyn promptmq_wal::io::Backend> = Arc::new(backend);
        let b = TestBroker::start_with(dir.path(), |c| {
            c.storage.backend = Some(backend);
            c.deliver_before_durable = early;
        });
        let (mut kept, _) = Client::connect_with(b.addr, "kept", V5, persistent());
        kept.subscribe("slow/#", QoS::ExactlyOnce);
        let mut live = Client::connect(b.addr, "live", V5);
        live.subscribe("slow/#", QoS::ExactlyOnce);
        let mut p = Client::connect(b.addr, "pub", V5);
        // Both topics exist before the disk slows down (creating one waits for a sync).
        p.publish("slow/1", "warm-up", QoS::AtLeastOnce, false);
        p.publish("slow/2", "warm-up", QoS::AtLeastOnce, false);
        drain_expecting(&mut kept, 2, Duration::from_millis(300));
        drain_expecting(&mut live, 2, Duration::from_millis(300));
        plan.lock().unwrap().sync_delay = Some(Duration::from_millis(1000));
        let publish = |qos, id, topic: &str| {
            Packet::Publish(Publish {
                dup: false,
                qos,
                retain: false,
                topic: topic.into(),
                packet_id: Some(id),
                properties: Properties::default(),
                payload: bytes::Bytes::from_static(b"m"),
            })
        };
        let sent = Instant::now();
        p.send(&publish(QoS::AtLeastOnce, 1, "slow/1"));
        let first = live.next_publish(Duration::from_secs(10)).expect("the live subscriber gets it");
        let live_after = sent.elapsed();
        assert_eq!(first.topic.as_str(), "slow/1");
        assert!(matches!(p.recv(Duration::from_secs(10)), Some(Packet::PubAck(a)) if a.packet_id == 1));
        let acked_after = sent.elapsed();
        let kept_first = kept.next_publish(Duration::from_secs(10)).expect("the persistent subscriber gets it");
        assert_eq!(kept_first.topic.as_str(), "slow/1");
        let kept_after = sent.elapsed();
        assert!(acked_after >= Duration::from_millis(1000), "PUBACK waits for the sync: {acked_after:?}");
        assert!(kept_after >= Duration::from_millis(1000), "a persistent session waits: {kept_after:?}");
        if early {
            assert!(
                live_after < Duration::from_millis(1000),
                "not for the sync: {live_after:?} (acked {acked_after:?})"
            );
        } else {
            assert!(live_after >= Duration::from_millis(1000), "waits when turned off: {live_after:?}");
        }
        // QoS 2 waits for durability for every subscriber.
        let sent = Instant::now();
        p.send(&publish(QoS::ExactlyOnce, 2, "slow/2"));
        let got = live.next_publish(Duration::from_secs(10)).expect("QoS 2 arrives");
        assert_eq!(got.topic.as_str(), "slow/2");
        assert!(sent.elapsed() >= Duration::from_millis(1000), "QoS 2 waits: {:?}", sent.elapsed());
        plan.lock().unwrap().sync_delay = None;
        assert!(matches!(p.recv(Duration::from_secs(10)), Some(Packet::PubRec(r)) if r.packet_id == 2));
        assert_eq!(drain_expecting(&mut kept, 1, Duration::from_millis(300)).len(), 1);
        assert!(drain(&mut live, Duration::from_millis(300)).is_empty(), "each message once");
    }
}

/// The same on a disk that really fills up (a small ext4 filesystem mounted for the test):
/// QoS 1 publishes are acknowledged until the kernel refuses to write, then refused with
/// "quota exceeded"; the broker keeps serving; once space is freed it accepts publishes
/// again without a restart; and after a restart every acknowledged message reaches the
/// persistent subscriber, in order.
#[test]
fn a_really_full_disk_under_the_broker() {
    let Some(fs) = promptmq_tests::SmallFs::mount(24) else { return };
    let data = fs.mnt.join("data");
    let filler = fs.mnt.join("filler");
    std::fs::write(&filler, vec![1u8; 3 << 20]).unwrap();
    let config = |c: &mut promptmq_broker::BrokerConfig| c.storage.segment_bytes = 1 << 20;
    let b = TestBroker::start_with(&data, config);
    let (mut s, _) = Client::connect_with(b.addr, "keeper", V5, persistent());
    s.subscribe("disk/#", QoS::AtLeastOnce);
    s.disconnect();
    let mut p = Client::connect(b.addr, "pub", V5);
    let mut acked = Vec::new();
    let mut refused = 0;
    let start = Instant::now();
    // 24 MiB holds about 5 000 of these; bounded in count and time.
    for i in 0..20_000 {
        let mut payload = format!("m-{i} ").into_bytes();
        payload.resize(4000, b'p');
        match p.publish("disk/a", payload.clone(), QoS::AtLeastOnce, false) {
            ReasonCode::Success => acked.push(payload),
            ReasonCode::QuotaExceeded => refused += 1,
            other => panic!("publish {i}: {other:?}"),
        }
        if refused >= 20 || start.elapsed() > Duration::from_secs(60) {
            break;
        }
    }
    assert!(refused >= 20, "the disk never filled: {} acknowledged", acked.len());
    assert!(acked.len() > 1000, "only {} acknowledged", acked.len());
    eprintln!("{} acknowledged before the disk was full", acked.len());
    // Still serving while full: QoS 0 flows to a live subscriber.
    let mut live = Client::connect(b.addr, "live", V5);
    live.subscribe("disk/live", QoS::AtMostOnce);
    p.publish("disk/live", "qos0 while full", QoS::AtMostOnce, false);
    assert_eq!(&live.next_publish(Duration::from_secs(5)).expect("qos 0 flows").payload[..], b"qos0 while full");
    // A new persistent session while full: its session record cannot be stored. It is
    // refused or accepted, clearly, and the broker goes on either way.
    match Client::try_connect_with(b.addr, "late", V5, persistent()) {
        Some((mut late, ack)) => {
            eprintln!("a persistent session on the full disk: CONNACK {:?}", ack.code);
            if ack.code == ReasonCode::Success {
                let codes = late.subscribe("disk/late", QoS::AtLeastOnce);
                eprintln!("its SUBSCRIBE on the full disk: {codes:?}");
                assert!(matches!(codes[..], [ReasonCode::GrantedQoS1 | ReasonCode::QuotaExceeded]), "{codes:?}");
            }
        }
        None => eprintln!("a persistent session on the full disk: no CONNACK"),
    }
    // A restart while the disk is still full: the broker comes back, recovers, and refuses
    // what it cannot store just as before (closing may have given back a little space,
    // which the first publishes then take).
    drop(p);
    b.stop();
    let b = TestBroker::start_with(&data, config);
    let mut p = Client::connect(b.addr, "pub", V5);
    let mut full_again = false;
    for i in 0..2000 {
        let mut payload = format!("after the restart {i} ").into_bytes();
        payload.resize(4000, b'p');
        match p.publish("disk/a", payload.clone(), QoS::AtLeastOnce, false) {
            ReasonCode::Success => acked.push(payload),
            ReasonCode::QuotaExceeded => {
                full_again = true;
                break;
            }
            other => panic!("publish after the restart: {other:?}"),
        }
    }
    assert!(full_again, "the restarted broker refuses once the disk is full");
    eprintln!("{} acknowledged in all by the time the restarted broker refused", acked.len());
    // Space again: accepted without a restart (the first may still meet the full disk).
    std::fs::remove_file(&filler).unwrap();
    let accepted = (0..20).any(|_| p.publish("disk/a", "after", QoS::AtLeastOnce, false) == ReasonCode::Success);
    assert!(accepted, "publishes are accepted again once space is freed");
    acked.push(b"after".to_vec());
    b.stop();
    let b = TestBroker::start_with(&data, config);
    let got = keeper_receives(&b, "disk/a", acked.len());
    assert_eq!(got.len(), acked.len(), "every acknowledged message, and nothing refused");
    assert!(got == acked, "in order and intact");
    b.stop();
}

/// The filesystem turns read-only under the broker, as ext4 does after an I/O error: QoS 1
/// publishes are no longer acknowledged as stored, QoS 0 still flows, the broker reports the
/// log unhealthy; after `e2fsck` and a restart every acknowledged message is delivered.
#[test]
fn a_filesystem_that_turns_read_only_under_the_broker() {
    let Some(fs) = promptmq_tests::SmallFs::mount(24) else { return };
    let data = fs.mnt.join("data");
    let b = TestBroker::start(&data);
    let (mut s, _) = Client::connect_with(b.addr, "keeper", V5, persistent());
    s.subscribe("ro/#", QoS::AtLeastOnce);
    s.disconnect();
    let mut p = Client::connect(b.addr, "pub", V5);
    let mut acked = Vec::new();
    for i in 0..20 {
        assert_eq!(p.publish("ro/a", format!("m-{i}"), QoS::AtLeastOnce, false), ReasonCode::Success);
        acked.push(format!("m-{i}"));
    }
    fs.fail();
    for i in 20..25 {
        let code = p.publish("ro/a", format!("m-{i}"), QoS::AtLeastOnce, false);
        eprintln!("QoS 1 publish on the read-only filesystem: {code:?}");
        assert_ne!(code, ReasonCode::Success, "acknowledged as stored on a read-only filesystem");
    }
    let ready = b.broker().monitor().ready();
    eprintln!("readiness on the read-only filesystem: {ready:?}");
    assert!(ready.is_err(), "the broker reports its log failed");
    let mut live = Client::connect(b.addr, "live", V5);
    live.subscribe("ro/live", QoS::AtMostOnce);
    p.publish("ro/live", "qos0 still flows", QoS::AtMostOnce, false);
    assert_eq!(&live.next_publish(Duration::from_secs(5)).expect("qos 0 flows").payload[..], b"qos0 still flows");
    drop((p, live));
    b.stop();
    fs.repair();
    let b = TestBroker::start(&data);
    let got = keeper_receives(&b, "ro/a", acked.len());
    let acked: Vec<Vec<u8>> = acked.iter().map(|a| a.as_bytes().to_vec()).collect();
    assert_eq!(got, acked, "every acknowledged message, and nothing refused");
    b.stop();
}
