//! Flow control and connection limits end to end: receive maximum both ways, the client's
//! maximum packet size, server keep alive, session expiry, will delay, inbound topic aliases,
//! unsubscribe.

use std::time::{Duration, Instant};

use bytes::Bytes;
use promptmq_broker::codec::*;
use promptmq_tests::{drain, Client, ConnectOptions, TestBroker};

const V5: ProtocolVersion = ProtocolVersion::V5;
const T: Duration = Duration::from_secs(5);
const QUIET: Duration = Duration::from_millis(300);

fn v5_with(props: Properties) -> ConnectOptions {
    ConnectOptions { clean: true, properties: props, ..Default::default() }
}

/// PUBLISH packets that arrive within `quiet`, not acknowledged.
fn publishes_unacked(c: &mut Client, quiet: Duration) -> Vec<Publish> {
    let mut out = Vec::new();
    while let Some(p) = c.recv(quiet) {
        if let Packet::Publish(p) = p {
            out.push(p);
        }
    }
    out
}

#[test]
fn the_broker_keeps_within_the_clients_receive_maximum() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start(dir.path());
    let (mut sub, _) = Client::connect_with(
        b.addr,
        "narrow",
        V5,
        v5_with(Properties { receive_maximum: Some(2), ..Default::default() }),
    );
    sub.subscribe("rm", QoS::AtLeastOnce);
    let mut publ = Client::connect(b.addr, "pub", V5);
    for i in 0..5 {
        publ.publish("rm", format!("{i}"), QoS::AtLeastOnce, false);
    }
    let first = publishes_unacked(&mut sub, QUIET);
    assert_eq!(first.len(), 2, "only 2 unacknowledged QoS 1 messages at a time");
    sub.send(&Packet::PubAck(PubResp::ok(first[0].packet_id.unwrap())));
    let next = publishes_unacked(&mut sub, QUIET);
    assert_eq!(next.len(), 1, "one acknowledgement frees one slot");
    assert_eq!(&next[0].payload[..], b"2");
}

#[test]
fn a_client_above_the_brokers_receive_maximum_is_disconnected() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start_with(dir.path(), |c| c.receive_maximum = 2);
    let (mut c, ack) = Client::connect_with(b.addr, "greedy", V5, v5_with(Properties::default()));
    assert_eq!(ack.properties.receive_maximum, Some(2));
    // QoS 2 PUBLISHes never released stay in flight.
    for id in 1..=3u16 {
        c.send(&Packet::Publish(Publish {
            dup: false,
            qos: QoS::ExactlyOnce,
            retain: false,
            topic: "rm".into(),
            packet_id: Some(id),
            properties: Properties::default(),
            payload: Bytes::from_static(b"x"),
        }));
        if id < 3 {
            // Let it be stored and acknowledged (PUBREC) before the next one.
            match c.recv(T) {
                Some(Packet::PubRec(r)) => assert_eq!(r.packet_id, id),
                other => panic!("{other:?}"),
            }
        }
    }
    let (closed, packets) = c.closed_within(T);
    assert!(closed);
    assert!(
        packets.iter().any(|p| matches!(p, Packet::Disconnect(d) if d.code == ReasonCode::ReceiveMaximumExceeded)),
        "{packets:?}"
    );
}

#[test]
fn nothing_larger_than_the_clients_maximum_packet_size_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start(dir.path());
    let (mut sub, _) = Client::connect_with(
        b.addr,
        "small",
        V5,
        v5_with(Properties { maximum_packet_size: Some(100), ..Default::default() }),
    );
    sub.subscribe("size/#", QoS::AtLeastOnce);
    let mut publ = Client::connect(b.addr, "pub", V5);
    publ.publish("size/big", vec![b'x'; 500], QoS::AtLeastOnce, false);
    publ.publish("size/small", "fits", QoS::AtLeastOnce, false);
    let got: Vec<String> = drain(&mut sub, QUIET).into_iter().map(|p| p.topic.to_string()).collect();
    assert_eq!(got, vec!["size/small"], "the oversized one is dropped for this client [MQTT-3.1.2-25]");
}

#[test]
fn server_keep_alive_caps_what_the_client_asked() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start_with(dir.path(), |c| c.max_keep_alive = 10);
    let (_c, ack) =
        Client::connect_with(b.addr, "ka", V5, ConnectOptions { clean: true, keep_alive: 100, ..Default::default() });
    assert_eq!(ack.properties.server_keep_alive, Some(10));
    let (_c, ack) =
        Client::connect_with(b.addr, "ka2", V5, ConnectOptions { clean: true, keep_alive: 5, ..Default::default() });
    assert_eq!(ack.properties.server_keep_alive, None, "a keep alive within the limit stands");
}

#[test]
fn a_session_ends_when_its_expiry_interval_passes() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start(dir.path());
    let opts = |clean| ConnectOptions {
        clean,
        properties: Properties { session_expiry_interval: Some(1), ..Default::default() },
        ..Default::default()
    };
    let (mut c, _) = Client::connect_with(b.addr, "brief", V5, opts(true));
    c.subscribe("exp", QoS::AtLeastOnce);
    c.disconnect();
    // Within the interval the session is there ...
    std::thread::sleep(Duration::from_millis(200));
    let (c, ack) = Client::connect_with(b.addr, "brief", V5, opts(false));
    assert!(ack.session_present);
    c.disconnect();
    // ... after it, gone.
    std::thread::sleep(Duration::from_millis(2000));
    let (_c, ack) = Client::connect_with(b.addr, "brief", V5, opts(false));
    assert!(!ack.session_present, "expired after 1 s");
}

#[test]
fn a_will_waits_for_its_delay_and_a_reconnect_cancels_it() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start(dir.path());
    let mut watcher = Client::connect(b.addr, "watcher", V5);
    watcher.subscribe("will/#", QoS::AtLeastOnce);
    let will = |topic: &str| Will {
        topic: topic.into(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Properties { will_delay_interval: Some(1), ..Default::default() },
    };
    let opts = |topic: &str| ConnectOptions {
        clean: true,
        will: Some(will(topic)),
        properties: Properties { session_expiry_interval: Some(60), ..Default::default() },
        ..Default::default()
    };
    let (dying, _) = Client::connect_with(b.addr, "dying", V5, opts("will/dying"));
    let (flaky, _) = Client::connect_with(b.addr, "flaky", V5, opts("will/flaky"));
    let dropped_at = Instant::now();
    drop(dying);
    drop(flaky);
    // flaky comes back within the delay: its will is cancelled.
    std::thread::sleep(Duration::from_millis(300));
    let _back = Client::connect_with(b.addr, "flaky", V5, ConnectOptions::persistent(60));
    let p = watcher.next_publish(T).expect("dying's will");
    assert_eq!(p.topic.as_str(), "will/dying");
    assert!(dropped_at.elapsed() >= Duration::from_millis(900), "not before its 1 s delay");
    assert!(watcher.next_publish(Duration::from_millis(1500)).is_none(), "flaky's will was cancelled");
}

#[test]
fn inbound_topic_aliases_are_resolved() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start(dir.path());
    let mut sub = Client::connect(b.addr, "sub", V5);
    sub.subscribe("alias/#", QoS::AtLeastOnce);
    let mut publ = Client::connect(b.addr, "pub", V5);
    let with_alias = |a| Properties { topic_alias: Some(a), ..Default::default() };
    publ.publish_with("alias/long/topic/name", "one", QoS::AtLeastOnce, false, with_alias(3));
    publ.publish_with("", "two", QoS::AtLeastOnce, false, with_alias(3));
    let got: Vec<(String, String)> = drain(&mut sub, QUIET)
        .into_iter()
        .map(|p| (p.topic.to_string(), String::from_utf8(p.payload.to_vec()).unwrap()))
        .collect();
    assert_eq!(
        got,
        vec![("alias/long/topic/name".into(), "one".into()), ("alias/long/topic/name".into(), "two".into())]
    );
    // An alias never set is a protocol error.
    publ.send(&Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "".into(),
        packet_id: None,
        properties: with_alias(9),
        payload: Bytes::new(),
    }));
    let (closed, packets) = publ.closed_within(T);
    assert!(closed, "{packets:?}");
}

#[test]
fn unsubscribe_stops_delivery_and_reports_unknown_filters() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start(dir.path());
    let mut c = Client::connect(b.addr, "unsub", V5);
    c.subscribe("u/#", QoS::AtLeastOnce);
    assert_eq!(
        c.unsubscribe(&["u/#", "never/subscribed"]),
        vec![ReasonCode::Success, ReasonCode::NoSubscriptionExisted]
    );
    let mut publ = Client::connect(b.addr, "pub", V5);
    publ.publish("u/x", "after", QoS::AtLeastOnce, false);
    assert!(c.next_publish(QUIET).is_none());
}

#[test]
fn max_inflight_caps_what_a_client_gets_unacknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start_with(dir.path(), |c| c.max_inflight = 3);
    // The client would take 100; the broker sends 3 at a time.
    let (mut sub, _) = Client::connect_with(
        b.addr,
        "wide",
        V5,
        v5_with(Properties { receive_maximum: Some(100), ..Default::default() }),
    );
    sub.subscribe("mi", QoS::AtLeastOnce);
    let mut publ = Client::connect(b.addr, "pub", V5);
    for i in 0..10 {
        publ.publish("mi", format!("{i}"), QoS::AtLeastOnce, false);
    }
    assert_eq!(publishes_unacked(&mut sub, QUIET).len(), 3);
}

#[test]
fn max_message_expiry_caps_how_long_a_message_waits() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start_with(dir.path(), |c| c.max_message_expiry = 1);
    let persistent = ConnectOptions::persistent(60);
    let (mut s, _) = Client::connect_with(b.addr, "late", V5, persistent.clone());
    s.subscribe("exp/#", QoS::AtLeastOnce);
    s.disconnect();
    let mut publ = Client::connect(b.addr, "pub", V5);
    publ.publish("exp/a", "no expiry given", QoS::AtLeastOnce, false);
    let mut online = Client::connect(b.addr, "now", V5);
    online.subscribe("exp/#", QoS::AtLeastOnce);
    publ.publish("exp/b", "long expiry", QoS::AtLeastOnce, false);
    let p = online.next_publish(T).expect("delivered");
    assert_eq!(p.properties.message_expiry_interval, Some(1), "capped");
    std::thread::sleep(Duration::from_millis(1500));
    let (mut s, _) = Client::connect_with(b.addr, "late", V5, persistent);
    assert!(s.next_publish(QUIET).is_none(), "expired while the session was away");
}

#[test]
fn limits_change_for_connected_clients() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start(dir.path());
    let mut c = Client::connect(b.addr, "big", V5);
    assert_eq!(c.publish("lim", vec![b'x'; 2000], QoS::AtLeastOnce, false), ReasonCode::Success);
    let cfg = promptmq_broker::BrokerConfig { max_packet_size: 1000, ..Default::default() };
    assert_eq!(b.broker().update_limits(&cfg), vec!["max_packet_size"]);
    c.send(&Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "lim".into(),
        packet_id: None,
        properties: Properties::default(),
        payload: Bytes::from(vec![b'x'; 2000]),
    }));
    let (closed, packets) = c.closed_within(T);
    assert!(closed);
    assert!(
        packets.iter().any(|p| matches!(p, Packet::Disconnect(d) if d.code == ReasonCode::PacketTooLarge)),
        "{packets:?}"
    );
    let (_c, ack) = Client::connect_with(b.addr, "new", V5, v5_with(Properties::default()));
    assert_eq!(ack.properties.maximum_packet_size, Some(1000), "new clients are told the new maximum");
}

/// A listener's own connection limit: a second client waits (is not accepted) until the
/// first leaves.
#[test]
fn a_listener_accepts_no_more_than_its_own_limit() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start_with(dir.path(), |c| {
        c.listeners.push(promptmq_broker::ListenerConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            kind: promptmq_broker::ListenerKind::Tcp,
            max_connections: Some(1),
        })
    });
    let addr = b.broker().listeners()[1].1;
    let first = Client::connect(addr, "first", V5);
    // The second TCP connection is queued by the kernel but not served: no CONNACK.
    let mut second = std::net::TcpStream::connect(addr).unwrap();
    use std::io::{Read, Write};
    second
        .write_all(&[0x10, 0x0d, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x00, 0x00, 0x01, b's'])
        .unwrap();
    second.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let mut ack = [0u8; 4];
    assert!(second.read_exact(&mut ack).is_err(), "not accepted while the first is connected");
    // The primary listener is not affected by it.
    let _other = Client::connect(b.addr, "elsewhere", V5);
    first.disconnect();
    second.set_read_timeout(Some(T)).unwrap();
    second.read_exact(&mut ack).unwrap();
    assert_eq!(ack, [0x20, 0x02, 0x00, 0x00], "accepted once the first left");
}
