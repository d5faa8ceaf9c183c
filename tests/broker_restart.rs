//! Restart tests: the broker as a separate process, stopped with SIGKILL and started again
//! on the same data directory.

use std::time::Duration;

use promptmq_broker::codec::*;
use promptmq_tests::{drain, drain_expecting, BrokerProcess, Client, ConnectOptions};

type Proc = BrokerProcess;

fn start(dir: &std::path::Path) -> Proc {
    BrokerProcess::start(env!("CARGO_BIN_EXE_broker-under-test"), dir)
}

/// How the broker is stopped between the two halves of a restart test.
#[derive(Clone, Copy, Debug)]
enum Stop {
    Graceful,
    Kill9,
}

impl Stop {
    fn apply(self, p: Proc) {
        match self {
            Stop::Graceful => p.stop_gracefully(),
            Stop::Kill9 => p.kill9(),
        }
    }
}

/// QoS 1 and 2 messages published to an offline persistent session, the broker stopped and
/// started again: the session gets every acknowledged message, QoS 2 ones exactly once, in
/// per-topic order (and across topics in publish order).
fn offline_session_gets_everything_after_restart(stop: Stop, version: ProtocolVersion) {
    let dir = tempfile::tempdir().unwrap();
    let b = start(dir.path());
    let persistent = ConnectOptions::persistent(3600);
    let (mut c, _) = Client::connect_with(b.addr, "offline", version, persistent.clone());
    c.subscribe("box/#", QoS::ExactlyOnce);
    c.disconnect();
    let mut publ = Client::connect(b.addr, "pub", ProtocolVersion::V5);
    let mut want = Vec::new();
    for i in 0..60 {
        let qos = if i % 2 == 0 { QoS::AtLeastOnce } else { QoS::ExactlyOnce };
        let (topic, payload) = (format!("box/{}", i % 3), format!("m{i}"));
        assert_eq!(publ.publish(&topic, payload.clone(), qos, false), ReasonCode::Success);
        want.push((topic, payload));
    }
    stop.apply(b);

    let b = start(dir.path());
    let (mut c, ack) = Client::connect_with(b.addr, "offline", version, persistent);
    assert!(ack.session_present, "{stop:?}: the session came back");
    let got: Vec<(String, String)> = drain_expecting(&mut c, want.len(), Duration::from_millis(700))
        .into_iter()
        .map(|p| (p.topic.to_string(), String::from_utf8(p.payload.to_vec()).unwrap()))
        .collect();
    assert_eq!(got, want, "{stop:?} {version:?}: every message once, in publish order");
    // Acknowledged: nothing comes again on the next connection.
    drop(c);
    let (mut c, _) = Client::connect_with(b.addr, "offline", version, ConnectOptions::persistent(3600));
    assert!(c.next_publish(Duration::from_millis(500)).is_none(), "{stop:?}: nothing is delivered twice");
}

#[test]
fn offline_session_gets_everything_after_a_graceful_restart() {
    offline_session_gets_everything_after_restart(Stop::Graceful, ProtocolVersion::V5);
    offline_session_gets_everything_after_restart(Stop::Graceful, ProtocolVersion::V3_1_1);
}

#[test]
fn offline_session_gets_everything_after_sigkill() {
    offline_session_gets_everything_after_restart(Stop::Kill9, ProtocolVersion::V5);
    offline_session_gets_everything_after_restart(Stop::Kill9, ProtocolVersion::V3_1_1);
}

/// A subscriber that acknowledged part of its messages before the broker was killed gets
/// the rest after the restart (and at most the last second's acknowledged ones again).
#[test]
fn online_subscriber_resumes_from_its_position_after_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let b = start(dir.path());
    let persistent = ConnectOptions { clean: false, ..Default::default() };
    let (mut c, _) = Client::connect_with(b.addr, "reader", ProtocolVersion::V3_1_1, persistent.clone());
    c.subscribe("feed", QoS::AtLeastOnce);
    let mut publ = Client::connect(b.addr, "pub", ProtocolVersion::V5);
    for i in 0..100 {
        publ.publish("feed", format!("{i}"), QoS::AtLeastOnce, false);
    }
    let first: Vec<u32> = (0..40)
        .map(|_| c.next_publish(Duration::from_secs(5)).expect("live delivery"))
        .map(|p| std::str::from_utf8(&p.payload).unwrap().parse().unwrap())
        .collect();
    assert_eq!(first, (0..40).collect::<Vec<_>>());
    // Let the position of the 40 acknowledged ones be saved (once a second), then crash.
    std::thread::sleep(Duration::from_millis(1500));
    drop(c);
    b.kill9();

    let b = start(dir.path());
    let (mut c, _) = Client::connect_with(b.addr, "reader", ProtocolVersion::V3_1_1, persistent);
    let rest: Vec<u32> = drain(&mut c, Duration::from_millis(700))
        .into_iter()
        .map(|p| std::str::from_utf8(&p.payload).unwrap().parse().unwrap())
        .collect();
    // The client may have had more than 40 in flight unacknowledged: those come again.
    let start_at = *rest.first().expect("the rest is delivered");
    assert!(start_at <= 40, "nothing acknowledged-but-unread is skipped: resumed at {start_at}");
    assert!(start_at >= 30, "resumed near its position, not from the start: {start_at}");
    assert_eq!(rest, (start_at..100).collect::<Vec<_>>());
}

#[test]
fn acknowledged_retained_messages_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let b = start(dir.path());
    let mut publ = Client::connect(b.addr, "pub", ProtocolVersion::V5);
    for i in 0..20 {
        let qos = if i % 2 == 0 { QoS::AtLeastOnce } else { QoS::ExactlyOnce };
        assert_eq!(publ.publish(&format!("state/{i}"), format!("v{i}"), qos, true), ReasonCode::Success);
    }
    publ.publish("state/0", "v0-updated", QoS::AtLeastOnce, true);
    publ.publish("state/1", "", QoS::AtLeastOnce, true); // cleared
    b.kill9();

    let b = start(dir.path());
    let mut sub = Client::connect(b.addr, "sub", ProtocolVersion::V3_1_1);
    sub.subscribe("state/#", QoS::AtLeastOnce);
    let mut got: Vec<(String, String)> = drain(&mut sub, Duration::from_millis(500))
        .into_iter()
        .map(|p| (p.topic.to_string(), String::from_utf8(p.payload.to_vec()).unwrap()))
        .collect();
    got.sort();
    let mut want: Vec<(String, String)> = (2..20).map(|i| (format!("state/{i}"), format!("v{i}"))).collect();
    want.push(("state/0".into(), "v0-updated".into()));
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn persistent_subscriptions_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let b = start(dir.path());
    let persistent = ConnectOptions { clean: false, ..Default::default() };
    let (mut c, _) = Client::connect_with(b.addr, "keeper", ProtocolVersion::V3_1_1, persistent.clone());
    c.subscribe("alerts/#", QoS::AtLeastOnce);
    c.disconnect();
    // A clean-session client's subscription must not come back.
    let mut gone = Client::connect(b.addr, "transient", ProtocolVersion::V5);
    gone.subscribe("alerts/#", QoS::AtLeastOnce);
    drop(gone);
    // No sleep: SUBACK came only once the session record was durable.
    b.kill9();

    let b = start(dir.path());
    let mut publ = Client::connect(b.addr, "pub", ProtocolVersion::V5);
    publ.publish("alerts/disk", "full", QoS::AtLeastOnce, false);
    let (mut c, ack) = Client::connect_with(b.addr, "keeper", ProtocolVersion::V3_1_1, persistent);
    assert!(ack.session_present, "the session came back from the log");
    let got = c.next_publish(Duration::from_secs(5)).expect("queued while the client was away");
    assert_eq!((got.topic.as_str(), &got.payload[..]), ("alerts/disk", &b"full"[..]));
    let mut t = Client::connect_with(
        b.addr,
        "transient",
        ProtocolVersion::V5,
        ConnectOptions { clean: false, ..Default::default() },
    );
    assert!(!t.1.session_present);
    assert!(t.0.next_publish(Duration::from_millis(300)).is_none());
}

/// Outbound QoS 2 across a kill -9 at each step of the exchange: a PUBLISH the client never
/// acknowledged comes again with the same packet id and DUP set; after PUBREC only PUBREL
/// comes again; after PUBCOMP nothing does. So the client (which keys on the packet id)
/// sees each message exactly once.
#[test]
fn outbound_qos2_state_survives_sigkill_at_every_step() {
    outbound_qos2_across_kills("q2/#");
}

/// The same through a shared subscription (its only member): the member's QoS 2 state is
/// kept, and the group does not hand the message out again.
#[test]
fn outbound_qos2_through_a_shared_subscription_survives_sigkill_at_every_step() {
    outbound_qos2_across_kills("$share/g/q2/#");
}

fn outbound_qos2_across_kills(filter: &str) {
    let dir = tempfile::tempdir().unwrap();
    let persistent = ConnectOptions::persistent(600);
    let v5 = ProtocolVersion::V5;
    let b = start(dir.path());
    let (mut c, _) = Client::connect_with(b.addr, "q2", v5, persistent.clone());
    c.subscribe(filter, QoS::ExactlyOnce);
    let mut publ = Client::connect(b.addr, "pub", v5);
    publ.publish("q2/a", "unacked", QoS::ExactlyOnce, false);
    let first = match c.recv(Duration::from_secs(5)) {
        Some(Packet::Publish(p)) => p,
        other => panic!("{other:?}"),
    };
    // Step 1: killed before the client's PUBREC.
    b.kill9();
    let b = start(dir.path());
    let (mut c, ack) = Client::connect_with(b.addr, "q2", v5, persistent.clone());
    assert!(ack.session_present);
    let again = match c.recv(Duration::from_secs(5)) {
        Some(Packet::Publish(p)) => p,
        other => panic!("{other:?}"),
    };
    assert_eq!((again.packet_id, again.dup, &again.payload[..]), (first.packet_id, true, &b"unacked"[..]));
    let pid = again.packet_id.unwrap();
    // Step 2: PUBREC sent, PUBREL received, killed before PUBCOMP.
    c.send(&Packet::PubRec(PubResp::ok(pid)));
    match c.recv(Duration::from_secs(5)) {
        Some(Packet::PubRel(r)) => assert_eq!(r.packet_id, pid),
        other => panic!("{other:?}"),
    }
    b.kill9();
    let b = start(dir.path());
    let (mut c, _) = Client::connect_with(b.addr, "q2", v5, persistent.clone());
    match c.recv(Duration::from_secs(5)) {
        Some(Packet::PubRel(r)) => assert_eq!(r.packet_id, pid, "only the PUBREL comes again"),
        other => panic!("expected PUBREL, got {other:?}"),
    }
    // Step 3: completed, then killed at once (before positions are saved).
    c.send(&Packet::PubComp(PubResp::ok(pid)));
    std::thread::sleep(Duration::from_millis(100));
    b.kill9();
    let b = start(dir.path());
    let (mut c, _) = Client::connect_with(b.addr, "q2", v5, persistent);
    assert!(c.recv(Duration::from_millis(700)).is_none(), "a completed QoS 2 message is never sent again");
}

/// Inbound QoS 2 across kill -9: a persistent publisher's PUBLISH is interrupted by a kill at
/// varying moments (before or after the broker stored it), the client resends it with the
/// same packet id after the restart as the spec requires, and completes the flow. Whether or
/// not the first copy was stored, the subscriber gets the message exactly once.
#[test]
fn inbound_qos2_is_stored_once_whenever_the_broker_dies() {
    let dir = tempfile::tempdir().unwrap();
    let v5 = ProtocolVersion::V5;
    let persistent = || ConnectOptions::persistent(600);
    let b = start(dir.path());
    let (mut sub, _) = Client::connect_with(b.addr, "in-sub", v5, persistent());
    sub.subscribe("in/#", QoS::ExactlyOnce);
    sub.disconnect();
    let mut b = b;
    let delays_ms = [0u64, 0, 1, 2, 3, 5, 8, 12, 20, 40];
    for (i, delay) in delays_ms.iter().enumerate() {
        let pid = 100 + i as u16;
        let publish = |dup| {
            Packet::Publish(Publish {
                dup,
                qos: QoS::ExactlyOnce,
                retain: false,
                topic: "in/x".into(),
                packet_id: Some(pid),
                properties: Properties::default(),
                payload: bytes::Bytes::from(format!("m{i}")),
            })
        };
        let (mut p, _) = Client::connect_with(b.addr, "in-pub", v5, persistent());
        p.send(&publish(false));
        std::thread::sleep(Duration::from_millis(*delay));
        b.kill9();
        b = start(dir.path());
        let (mut p, _) = Client::connect_with(b.addr, "in-pub", v5, persistent());
        // Not knowing whether it got through, the client resends it [MQTT-4.4.0-1].
        p.send(&publish(true));
        match p.recv(Duration::from_secs(5)) {
            Some(Packet::PubRec(r)) => assert_eq!((r.packet_id, r.code), (pid, ReasonCode::Success)),
            other => panic!("expected PUBREC, got {other:?}"),
        }
        p.send(&Packet::PubRel(PubResp::ok(pid)));
        match p.recv(Duration::from_secs(5)) {
            Some(Packet::PubComp(c)) => assert_eq!((c.packet_id, c.code), (pid, ReasonCode::Success)),
            other => panic!("expected PUBCOMP, got {other:?}"),
        }
        p.disconnect();
    }
    let (mut sub, _) = Client::connect_with(b.addr, "in-sub", v5, persistent());
    let got: Vec<String> = drain_expecting(&mut sub, delays_ms.len(), Duration::from_millis(700))
        .into_iter()
        .map(|p| String::from_utf8(p.payload.to_vec()).unwrap())
        .collect();
    let want: Vec<String> = (0..delays_ms.len()).map(|i| format!("m{i}")).collect();
    assert_eq!(got, want, "each message exactly once, whatever the moment of the kill");
}

/// A shared subscription's messages are on the group's log position too: published while
/// its only member is away, the broker killed, they all reach the member after the restart;
/// handed to members and not acknowledged before a kill, they come again (at least once).
#[test]
fn shared_subscription_messages_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let v5 = ProtocolVersion::V5;
    let persistent = || ConnectOptions::persistent(600);
    let b = start(dir.path());
    let (mut w, _) = Client::connect_with(b.addr, "worker-1", v5, persistent());
    w.subscribe("$share/pool/jobs/#", QoS::AtLeastOnce);
    w.disconnect();
    let mut p = Client::connect(b.addr, "boss", v5);
    for i in 0..20 {
        assert_eq!(
            p.publish(&format!("jobs/{}", i % 2), format!("job-{i}"), QoS::AtLeastOnce, false),
            ReasonCode::Success
        );
    }
    b.kill9();
    let b = start(dir.path());
    let (mut w, ack) = Client::connect_with(b.addr, "worker-1", v5, persistent());
    assert!(ack.session_present);
    let mut got: Vec<String> = drain_expecting(&mut w, 20, Duration::from_millis(700))
        .into_iter()
        .map(|p| String::from_utf8(p.payload.to_vec()).unwrap())
        .collect();
    got.sort();
    let mut want: Vec<String> = (0..20).map(|i| format!("job-{i}")).collect();
    want.sort();
    assert_eq!(got, want, "every acknowledged job reached the group");

    // Handed to a member that never acknowledges, then a kill: delivered again.
    let mut p = Client::connect(b.addr, "boss", v5);
    p.publish("jobs/x", "unacked", QoS::AtLeastOnce, false);
    match w.recv(Duration::from_secs(5)) {
        Some(Packet::Publish(m)) => assert_eq!(&m.payload[..], b"unacked"),
        other => panic!("{other:?}"),
    }
    std::thread::sleep(Duration::from_millis(300));
    b.kill9();
    let b = start(dir.path());
    let (mut w, _) = Client::connect_with(b.addr, "worker-1", v5, persistent());
    let again: Vec<String> = drain_expecting(&mut w, 1, Duration::from_millis(700))
        .into_iter()
        .map(|p| String::from_utf8(p.payload.to_vec()).unwrap())
        .collect();
    assert_eq!(again, vec!["unacked"], "not acknowledged, so delivered again after the kill");
}

/// QoS 1 messages in flight (sent, not acknowledged) when the broker stops gracefully come
/// again after the restart with their original packet ids and DUP set [MQTT-4.4.0-1].
#[test]
fn qos1_in_flight_keeps_its_packet_ids_across_a_graceful_restart() {
    qos1_in_flight_keeps_its_packet_ids(Stop::Graceful);
}

/// [MQTT-4.4.0-1] after a crash too: each id is stored with its message before the PUBLISH
/// goes out.
#[test]
fn qos1_in_flight_keeps_its_packet_ids_across_sigkill() {
    qos1_in_flight_keeps_its_packet_ids(Stop::Kill9);
}

/// Unacknowledged QoS 1 messages of a persistent session come back after the broker stops
/// with their packet ids and DUP set, and only they: acknowledged ones are not sent again.
fn qos1_in_flight_keeps_its_packet_ids(stop: Stop) {
    let dir = tempfile::tempdir().unwrap();
    let v5 = ProtocolVersion::V5;
    let persistent = || ConnectOptions::persistent(600);
    let b = start(dir.path());
    let (mut c, _) = Client::connect_with(b.addr, "q1", v5, persistent());
    c.subscribe("q1/#", QoS::AtLeastOnce);
    let mut publ = Client::connect(b.addr, "pub", v5);
    // Move the session's packet ids on, so a fresh allocation would not match by chance.
    for i in 0..5 {
        publ.publish("q1/warm", format!("w{i}"), QoS::AtLeastOnce, false);
        assert!(c.next_publish(Duration::from_secs(5)).is_some());
    }
    for i in 0..3 {
        publ.publish(&format!("q1/{i}"), format!("m{i}"), QoS::AtLeastOnce, false);
    }
    let mut first = Vec::new();
    while first.len() < 3 {
        match c.recv(Duration::from_secs(5)) {
            Some(Packet::Publish(p)) => first.push((p.packet_id, p.payload.clone())),
            Some(_) => {}
            None => panic!("expected 3 PUBLISH, got {first:?}"),
        }
    }
    // Acknowledged before the stop, and the position saved: not sent again.
    std::thread::sleep(Duration::from_millis(300));
    drop(c);
    stop.apply(b);
    let b = start(dir.path());
    let (mut c, _) = Client::connect_with(b.addr, "q1", v5, persistent());
    let mut again = Vec::new();
    while again.len() < 3 {
        match c.recv(Duration::from_secs(5)) {
            Some(Packet::Publish(p)) => {
                assert!(p.dup, "resent with DUP");
                again.push((p.packet_id, p.payload.clone()));
                c.send(&Packet::PubAck(PubResp::ok(p.packet_id.unwrap())));
            }
            Some(_) => {}
            None => panic!("expected 3 resent PUBLISH, got {again:?}"),
        }
    }
    assert_eq!(again, first, "the same messages with the same packet ids");
    assert!(c.recv(Duration::from_millis(500)).is_none(), "nothing else");
    std::thread::sleep(Duration::from_millis(300)); // the position is saved
    drop(c);
    stop.apply(b);
    let b = start(dir.path());
    let (mut c, _) = Client::connect_with(b.addr, "q1", v5, persistent());
    assert!(c.next_publish(Duration::from_millis(700)).is_none(), "acknowledged: not sent again");
    drop(b);
}
