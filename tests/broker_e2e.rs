//! End-to-end behaviour of the broker over real sockets on 127.0.0.1, one broker per test.

use std::time::Duration;

use bytes::Bytes;
use promptmq_broker::codec::*;
use promptmq_tests::{drain, drain_expecting, Client, ConnectOptions, TestBroker};

const V3: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;
const T: Duration = Duration::from_secs(5);
const QUIET: Duration = Duration::from_millis(300);

fn broker() -> (tempfile::TempDir, TestBroker) {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start(dir.path());
    (dir, b)
}

#[test]
fn qos_0_1_2_in_both_versions_with_downgrade() {
    let (_d, b) = broker();
    for version in [V3, V5] {
        let mut sub = Client::connect(b.addr, "sub", version);
        assert_eq!(sub.subscribe("q/#", QoS::ExactlyOnce), vec![ReasonCode::GrantedQoS2]);
        let mut low = Client::connect(b.addr, "low", version);
        assert_eq!(low.subscribe("q/#", QoS::AtMostOnce), vec![ReasonCode::Success]);
        let mut publ = Client::connect(b.addr, "pub", version);
        for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce].into_iter().enumerate() {
            assert_eq!(publ.publish(&format!("q/{i}"), format!("m{i}"), qos, false), ReasonCode::Success);
            let got = sub.next_publish(T).expect("delivered");
            assert_eq!(
                (got.topic.as_str(), &got.payload[..], got.qos),
                (format!("q/{i}").as_str(), format!("m{i}").as_bytes(), qos)
            );
            let got = low.next_publish(T).expect("delivered");
            assert_eq!(got.qos, QoS::AtMostOnce, "granted QoS caps delivery");
        }
        sub.disconnect();
        low.disconnect();
        publ.disconnect();
    }
}

#[test]
fn v5_properties_are_forwarded_and_subscription_ids_delivered() {
    let (_d, b) = broker();
    let mut sub = Client::connect(b.addr, "sub", V5);
    let s = Subscription {
        filter: "rpc/+".into(),
        qos: QoS::AtLeastOnce,
        no_local: false,
        retain_as_published: false,
        retain_handling: RetainHandling::OnSubscribe,
    };
    sub.subscribe_with(vec![s], Properties { subscription_identifiers: vec![42], ..Properties::default() });
    let mut publ = Client::connect(b.addr, "pub", V5);
    let props = Properties {
        payload_format_indicator: Some(1),
        content_type: Some("application/json".into()),
        response_topic: Some("rpc/reply".into()),
        correlation_data: Some(Bytes::from_static(b"corr-1")),
        user_properties: vec![("a".into(), "1".into()), ("a".into(), "2".into())],
        message_expiry_interval: Some(3600),
        ..Properties::default()
    };
    publ.publish_with("rpc/call", "{}", QoS::AtLeastOnce, false, props.clone());
    let got = sub.next_publish(T).unwrap();
    let p = got.properties;
    assert_eq!(p.payload_format_indicator, Some(1));
    assert_eq!(p.content_type, props.content_type);
    assert_eq!(p.response_topic, props.response_topic);
    assert_eq!(p.correlation_data, props.correlation_data);
    assert_eq!(p.user_properties, props.user_properties, "user properties in order");
    assert_eq!(p.subscription_identifiers, vec![42]);
    assert!(p.message_expiry_interval.is_some_and(|e| e <= 3600 && e > 3590));
}

#[test]
fn wildcards_and_dollar_topics() {
    let (_d, b) = broker();
    let mut all = Client::connect(b.addr, "all", V3);
    all.subscribe("#", QoS::AtMostOnce);
    let mut plus = Client::connect(b.addr, "plus", V3);
    plus.subscribe("+/b/+", QoS::AtMostOnce);
    let mut publ = Client::connect(b.addr, "pub", V3);
    publ.publish("a/b/c", "x", QoS::AtLeastOnce, false);
    publ.publish("a/x/c", "y", QoS::AtLeastOnce, false);
    let got: Vec<String> =
        drain(&mut all, QUIET).iter().map(|p| p.topic.to_string()).filter(|t| !t.starts_with('$')).collect();
    assert_eq!(got, vec!["a/b/c", "a/x/c"]);
    assert_eq!(drain(&mut plus, QUIET).len(), 1);
    // `#` never matches `$SYS`; an explicit `$SYS/#` does (it is retained, so it arrives at once).
    assert!(drain(&mut all, QUIET).iter().all(|p| !p.topic.starts_with('$')));
    let mut sys = Client::connect(b.addr, "sys", V3);
    sys.subscribe("$SYS/broker/uptime", QoS::AtMostOnce);
    assert!(sys.next_publish(T).is_some());
    // Mosquitto's names, so its dashboards work (a sample of each kind).
    let mut all_sys = Client::connect(b.addr, "all-sys", V3);
    all_sys.subscribe("$SYS/broker/#", QoS::AtMostOnce);
    let names: Vec<String> = drain(&mut all_sys, QUIET).iter().map(|p| p.topic.to_string()).collect();
    for name in [
        "version",
        "clients/connected",
        "clients/total",
        "clients/maximum",
        "messages/received",
        "bytes/sent",
        "retained messages/count",
        "subscriptions/count",
        "load/messages/received/1min",
        "load/bytes/sent/15min",
        "load/connections/5min",
    ] {
        assert!(names.contains(&format!("$SYS/broker/{name}")), "$SYS/broker/{name} missing from {names:?}");
    }
    // Clients may not publish into $SYS.
    publ.publish("$SYS/fake", "x", QoS::AtLeastOnce, false);
    let mut fake = Client::connect(b.addr, "fake", V3);
    fake.subscribe("$SYS/fake", QoS::AtMostOnce);
    assert!(fake.next_publish(QUIET).is_none());
}

#[test]
fn retained_set_replace_clear_and_retain_handling() {
    let (_d, b) = broker();
    let mut publ = Client::connect(b.addr, "pub", V5);
    publ.publish("r/1", "one", QoS::AtLeastOnce, true);
    publ.publish("r/1", "uno", QoS::AtLeastOnce, true);
    publ.publish("r/2", "two", QoS::AtMostOnce, true);
    // QoS 0 has no acknowledgement: without this the subscription below can overtake the
    // PUBLISH and receive it live (RETAIN 0), which is correct but not what is tested here.
    publ.ping();
    let mut s = Client::connect(b.addr, "s", V5);
    s.subscribe("r/#", QoS::AtLeastOnce);
    let mut got: Vec<(String, Bytes, bool)> =
        drain(&mut s, QUIET).into_iter().map(|p| (p.topic.to_string(), p.payload, p.retain)).collect();
    got.sort();
    assert_eq!(got, vec![("r/1".into(), Bytes::from("uno"), true), ("r/2".into(), Bytes::from("two"), true)]);
    // An empty payload clears it.
    publ.publish("r/1", "", QoS::AtLeastOnce, true);
    let _ = drain(&mut s, QUIET);
    let mut s2 = Client::connect(b.addr, "s2", V5);
    s2.subscribe("r/#", QoS::AtLeastOnce);
    let got: Vec<String> = drain(&mut s2, QUIET).into_iter().map(|p| p.topic.to_string()).collect();
    assert_eq!(got, vec!["r/2"]);
    // Retain handling 2: no retained messages at subscribe time.
    let mut s3 = Client::connect(b.addr, "s3", V5);
    s3.subscribe_with(
        vec![Subscription {
            filter: "r/#".into(),
            qos: QoS::AtMostOnce,
            no_local: false,
            retain_as_published: false,
            retain_handling: RetainHandling::Never,
        }],
        Properties::default(),
    );
    assert!(drain(&mut s3, QUIET).is_empty());
    // Live messages are delivered with RETAIN 0 unless retain-as-published.
    let mut rap = Client::connect(b.addr, "rap", V5);
    rap.subscribe_with(
        vec![Subscription {
            filter: "live".into(),
            qos: QoS::AtMostOnce,
            no_local: false,
            retain_as_published: true,
            retain_handling: RetainHandling::Never,
        }],
        Properties::default(),
    );
    s3.subscribe("live", QoS::AtMostOnce);
    publ.publish("live", "x", QoS::AtLeastOnce, true);
    assert!(rap.next_publish(T).unwrap().retain);
    assert!(!s3.next_publish(T).unwrap().retain);
}

#[test]
fn shared_subscription_delivers_each_message_to_one_member() {
    let (_d, b) = broker();
    let mut w1 = Client::connect(b.addr, "w1", V5);
    let mut w2 = Client::connect(b.addr, "w2", V3);
    w1.subscribe("$share/workers/jobs/#", QoS::AtLeastOnce);
    w2.subscribe("$share/workers/jobs/#", QoS::AtLeastOnce);
    let mut publ = Client::connect(b.addr, "pub", V5);
    for i in 0..10 {
        publ.publish(&format!("jobs/{i}"), "job", QoS::AtLeastOnce, false);
    }
    let a = drain(&mut w1, QUIET).len();
    let c = drain(&mut w2, QUIET).len();
    assert_eq!(a + c, 10, "each message exactly once across the group");
    assert!(a > 0 && c > 0, "both members get work: {a} / {c}");
}

#[test]
fn no_local_and_overlapping_subscriptions() {
    let (_d, b) = broker();
    let mut me = Client::connect(b.addr, "me", V5);
    me.subscribe_with(
        vec![
            Subscription {
                filter: "chat/#".into(),
                qos: QoS::AtMostOnce,
                no_local: true,
                retain_as_published: false,
                retain_handling: RetainHandling::OnSubscribe,
            },
            Subscription {
                filter: "chat/+".into(),
                qos: QoS::AtLeastOnce,
                no_local: true,
                retain_as_published: false,
                retain_handling: RetainHandling::OnSubscribe,
            },
        ],
        Properties::default(),
    );
    me.publish("chat/room", "mine", QoS::AtLeastOnce, false);
    assert!(me.next_publish(QUIET).is_none(), "no-local: own message not delivered");
    let mut other = Client::connect(b.addr, "other", V5);
    other.publish("chat/room", "theirs", QoS::AtLeastOnce, false);
    let got = drain(&mut me, QUIET);
    assert_eq!(got.len(), 1, "overlapping subscriptions deliver once");
    assert_eq!(got[0].qos, QoS::AtLeastOnce, "with the highest granted QoS");
}

#[test]
fn will_on_abnormal_disconnect_only() {
    let (_d, b) = broker();
    let mut watcher = Client::connect(b.addr, "watcher", V5);
    watcher.subscribe("status/#", QoS::AtLeastOnce);
    let will = |id: &str| Will {
        topic: format!("status/{id}").into(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Properties::default(),
    };
    // Abnormal: the socket just drops.
    let (c, _) = Client::connect_with(
        b.addr,
        "dies",
        V3,
        ConnectOptions { clean: true, will: Some(will("dies")), ..Default::default() },
    );
    drop(c);
    let got = watcher.next_publish(T).expect("will published");
    assert_eq!((got.topic.as_str(), &got.payload[..]), ("status/dies", &b"gone"[..]));
    // Graceful DISCONNECT: no will.
    let (c, _) = Client::connect_with(
        b.addr,
        "leaves",
        V5,
        ConnectOptions { clean: true, will: Some(will("leaves")), ..Default::default() },
    );
    c.disconnect();
    assert!(watcher.next_publish(QUIET).is_none());
    // v5 DISCONNECT with reason 0x04: will published.
    let (mut c, _) = Client::connect_with(
        b.addr,
        "asks",
        V5,
        ConnectOptions { clean: true, will: Some(will("asks")), ..Default::default() },
    );
    c.send(&Packet::Disconnect(Disconnect { code: ReasonCode::DisconnectWithWill, properties: Properties::default() }));
    assert_eq!(watcher.next_publish(T).unwrap().topic.as_str(), "status/asks");
}

#[test]
fn session_takeover_closes_the_older_connection() {
    let (_d, b) = broker();
    let mut first = Client::connect(b.addr, "same", V5);
    let _second = Client::connect(b.addr, "same", V5);
    let (closed, packets) = first.closed_within(T);
    assert!(closed);
    assert!(
        packets.iter().any(|p| matches!(p, Packet::Disconnect(d) if d.code == ReasonCode::SessionTakenOver)),
        "{packets:?}"
    );
}

#[test]
fn persistent_session_receives_what_was_published_while_away() {
    let (_d, b) = broker();
    let persistent = ConnectOptions { clean: false, ..Default::default() };
    let (mut c, ack) = Client::connect_with(b.addr, "durable", V3, persistent.clone());
    assert!(!ack.session_present);
    c.subscribe("inbox/#", QoS::AtLeastOnce);
    c.disconnect();
    std::thread::sleep(Duration::from_millis(100));
    let mut publ = Client::connect(b.addr, "pub", V3);
    for i in 0..5 {
        publ.publish(&format!("inbox/{i}"), format!("m{i}"), QoS::AtLeastOnce, false);
    }
    let (mut c, ack) = Client::connect_with(b.addr, "durable", V3, persistent);
    assert!(ack.session_present);
    let got: Vec<String> =
        drain_expecting(&mut c, 5, QUIET).into_iter().map(|p| String::from_utf8(p.payload.to_vec()).unwrap()).collect();
    assert_eq!(got, vec!["m0", "m1", "m2", "m3", "m4"], "in order");
    let from_log = b.broker().stats().messages_from_log.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(from_log, 5, "published while it was away: read from the log");
    // A v5 clean start discards it.
    let (mut c5, ack) =
        Client::connect_with(b.addr, "durable", V5, ConnectOptions { clean: true, ..Default::default() });
    assert!(!ack.session_present);
    publ.publish("inbox/x", "after", QoS::AtLeastOnce, false);
    assert!(c5.next_publish(QUIET).is_none(), "the old subscriptions went with the session");
}

#[test]
fn client_id_rules() {
    let (_d, b) = broker();
    // 3.1.1: empty id with clean session 0 is refused with return code 2.
    let (_c, ack) = Client::connect_with(b.addr, "", V3, ConnectOptions { clean: false, ..Default::default() });
    assert_eq!((ack.code, ack.v3_code), (ReasonCode::ClientIdentifierNotValid, Some(2)));
    // v5: an empty id gets one assigned.
    let (_c, ack) = Client::connect_with(b.addr, "", V5, ConnectOptions { clean: true, ..Default::default() });
    assert_eq!(ack.code, ReasonCode::Success);
    assert!(ack.properties.assigned_client_identifier.is_some_and(|id| !id.is_empty()));
    assert_eq!(ack.properties.receive_maximum, Some(1024));
    assert_eq!(ack.properties.shared_subscription_available, Some(1));
}

#[test]
fn bad_input_disconnects_that_client_only() {
    let (_d, b) = broker();
    let mut good = Client::connect(b.addr, "good", V5);
    good.subscribe("ok", QoS::AtMostOnce);
    // Malformed: PUBLISH with QoS 3.
    let mut bad = Client::connect(b.addr, "bad", V5);
    bad.send_raw(&[0x36, 0x05, 0x00, 0x01, b'a', 0x00, 0x01]);
    let (closed, packets) = bad.closed_within(T);
    assert!(closed);
    assert!(
        packets.iter().any(|p| matches!(p, Packet::Disconnect(d) if d.code == ReasonCode::MalformedPacket)),
        "{packets:?}"
    );
    // Oversized: announced 2 MiB, above the 1 MiB default; refused from the header alone.
    let mut big = Client::connect(b.addr, "big", V5);
    big.send_raw(&[0x30, 0x80, 0x80, 0x80, 0x01]);
    let (closed, packets) = big.closed_within(T);
    assert!(closed);
    assert!(
        packets.iter().any(|p| matches!(p, Packet::Disconnect(d) if d.code == ReasonCode::PacketTooLarge)),
        "{packets:?}"
    );
    // Garbage instead of CONNECT.
    let mut raw = std::net::TcpStream::connect(b.addr).unwrap();
    std::io::Write::write_all(&mut raw, b"GET / HTTP/1.1\r\n\r\n").unwrap();
    // Protocol violation: a second CONNECT.
    let mut twice = Client::connect(b.addr, "twice", V3);
    twice.send(&Packet::Connect(Box::new(Connect {
        protocol: V3,
        clean_start: true,
        keep_alive: 0,
        properties: Properties::default(),
        client_id: "twice".into(),
        will: None,
        username: None,
        password: None,
    })));
    assert!(twice.closed_within(T).0);
    // The broker and the good client are unaffected.
    let mut publ = Client::connect(b.addr, "pub", V5);
    publ.publish("ok", "still here", QoS::AtLeastOnce, false);
    assert_eq!(&good.next_publish(T).unwrap().payload[..], b"still here");
}

#[test]
fn keep_alive_timeout_closes_a_silent_client() {
    let (_d, b) = broker();
    let (mut c, _) =
        Client::connect_with(b.addr, "sleepy", V5, ConnectOptions { clean: true, keep_alive: 1, ..Default::default() });
    // 1.5 x keep alive = 1.5 s without a packet.
    let (closed, packets) = c.closed_within(Duration::from_secs(4));
    assert!(closed);
    assert!(
        packets.iter().any(|p| matches!(p, Packet::Disconnect(d) if d.code == ReasonCode::KeepAliveTimeout)),
        "{packets:?}"
    );
}

/// The keep-alive clock runs from what the client *sent*: a half-open subscriber that keeps
/// being sent messages is still found out.
#[test]
fn keep_alive_counts_only_what_the_client_sends() {
    let (_d, b) = broker();
    let (mut c, _) =
        Client::connect_with(b.addr, "deaf", V5, ConnectOptions { clean: true, keep_alive: 1, ..Default::default() });
    c.subscribe("tick", QoS::AtMostOnce);
    let mut publ = Client::connect(b.addr, "ticker", V5);
    let start = std::time::Instant::now();
    let mut closed = false;
    let mut got = Vec::new();
    // A message every 200 ms, for at most 5 s: the broker must close at about 1.5 s anyway.
    while start.elapsed() < Duration::from_secs(5) {
        publ.publish("tick", "t", QoS::AtMostOnce, false);
        let (c_closed, packets) = c.closed_within(Duration::from_millis(200));
        got.extend(packets);
        if c_closed {
            closed = true;
            break;
        }
    }
    assert!(closed, "still open after {:?}", start.elapsed());
    assert!(start.elapsed() < Duration::from_secs(4), "closed late: {:?}", start.elapsed());
    assert!(got.iter().any(|p| matches!(p, Packet::Publish(_))), "it did receive messages meanwhile");
    assert!(
        got.iter().any(|p| matches!(p, Packet::Disconnect(d) if d.code == ReasonCode::KeepAliveTimeout)),
        "{got:?}"
    );
}

#[test]
fn an_absent_subscriber_waits_in_the_log_not_in_memory_and_others_are_unaffected() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start_with(dir.path(), |c| c.max_queued_messages = 50);
    // A persistent subscriber that goes away: its queue fills to the limit, then drops.
    let (mut slow, _) = Client::connect_with(b.addr, "slow", V3, ConnectOptions { clean: false, ..Default::default() });
    slow.subscribe("flood", QoS::AtLeastOnce);
    slow.disconnect();
    let mut fast = Client::connect(b.addr, "fast", V3);
    fast.subscribe("flood", QoS::AtMostOnce);
    let mut publ = Client::connect(b.addr, "pub", V3);
    for i in 0..200 {
        publ.publish("flood", format!("{i}"), QoS::AtLeastOnce, false);
    }
    assert_eq!(drain_expecting(&mut fast, 200, QUIET).len(), 200, "the fast subscriber gets everything");
    // Nothing was held in memory for the absent one (its queue limit is 50): the messages
    // waited in the log, and it reads them from its position when it comes back, in order.
    let (mut slow, _) = Client::connect_with(b.addr, "slow", V3, ConnectOptions { clean: false, ..Default::default() });
    let got: Vec<String> = drain_expecting(&mut slow, 200, QUIET)
        .into_iter()
        .map(|p| String::from_utf8(p.payload.to_vec()).unwrap())
        .collect();
    assert_eq!(got, (0..200).map(|i| i.to_string()).collect::<Vec<_>>());
    assert_eq!(b.broker().stats().messages_dropped.load(std::sync::atomic::Ordering::Relaxed), 0);
}

/// A connected subscriber that reads slowly (its receive maximum is 5, its queue 20) while
/// 500 messages arrive: the overflow waits in the log and is read back in order; nothing is
/// dropped and memory stays bounded.
#[test]
fn a_slow_online_subscriber_overflows_into_the_log_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start_with(dir.path(), |c| c.max_queued_messages = 20);
    let (mut slow, _) = Client::connect_with(
        b.addr,
        "slow",
        V5,
        ConnectOptions {
            clean: true,
            properties: Properties { receive_maximum: Some(5), ..Default::default() },
            ..Default::default()
        },
    );
    slow.subscribe("burst/#", QoS::AtLeastOnce);
    let mut publ = Client::connect(b.addr, "pub", V5);
    for i in 0..500 {
        publ.publish(&format!("burst/{}", i % 2), format!("{i}"), QoS::AtLeastOnce, false);
    }
    let got: Vec<u32> = drain_expecting(&mut slow, 500, QUIET)
        .into_iter()
        .map(|p| std::str::from_utf8(&p.payload).unwrap().parse().unwrap())
        .collect();
    assert_eq!(got, (0..500).collect::<Vec<_>>(), "all of them, in publish order");
    assert_eq!(b.broker().stats().messages_dropped.load(std::sync::atomic::Ordering::Relaxed), 0);
}

/// The broker assigns topic aliases to a v5 client that accepts them: the topic is sent once
/// with its alias, then the alias alone; with all aliases taken one is remapped.
#[test]
fn outbound_topic_aliases_within_the_clients_maximum() {
    let (_d, b) = broker();
    let props = Properties { topic_alias_maximum: Some(1), ..Default::default() };
    let (mut sub, _) = Client::connect_with(
        b.addr,
        "aliased",
        V5,
        ConnectOptions { clean: true, properties: props, ..Default::default() },
    );
    sub.subscribe("al/#", QoS::AtLeastOnce);
    let mut publ = Client::connect(b.addr, "pub", V5);
    for t in ["al/a", "al/a", "al/b", "al/b"] {
        publ.publish(t, t, QoS::AtLeastOnce, false);
    }
    let got: Vec<(String, Option<u16>, String)> = drain(&mut sub, QUIET)
        .into_iter()
        .map(|p| (p.topic.to_string(), p.properties.topic_alias, String::from_utf8(p.payload.to_vec()).unwrap()))
        .collect();
    let want = [("al/a", "al/a"), ("", "al/a"), ("al/b", "al/b"), ("", "al/b")]
        .map(|(t, p)| (t.to_string(), Some(1), p.to_string()))
        .to_vec();
    assert_eq!(got, want);
    // A 3.1.1 client and a v5 client that did not ask get full topics.
    let mut plain = Client::connect(b.addr, "plain", V5);
    plain.subscribe("al/#", QoS::AtMostOnce);
    publ.publish("al/a", "x", QoS::AtLeastOnce, false);
    let p = plain.next_publish(T).expect("delivered");
    assert_eq!((p.topic.as_str(), p.properties.topic_alias), ("al/a", None));
}

#[test]
fn shared_member_leaving_with_unacknowledged_messages_hands_them_to_another() {
    let (_d, b) = broker();
    let mut w1 = Client::connect(b.addr, "w1", V5);
    w1.subscribe("$share/g/work", QoS::AtLeastOnce);
    let mut publ = Client::connect(b.addr, "pub", V5);
    // Only w1 in the group: it gets the message and never acknowledges it.
    publ.publish("work", "job-1", QoS::AtLeastOnce, false);
    match w1.recv(T) {
        Some(Packet::Publish(p)) => assert_eq!(&p.payload[..], b"job-1"),
        other => panic!("{other:?}"),
    }
    let mut w2 = Client::connect(b.addr, "w2", V5);
    w2.subscribe("$share/g/work", QoS::AtLeastOnce);
    drop(w1); // leaves (clean session) without PUBACK
    let got = w2.next_publish(T).expect("redelivered to the remaining member");
    assert_eq!(&got.payload[..], b"job-1");
}

#[test]
fn qos2_publish_resent_after_reconnect_is_delivered_once() {
    let (_d, b) = broker();
    let mut sub = Client::connect(b.addr, "sub", V5);
    sub.subscribe("once", QoS::ExactlyOnce);
    let persistent = ConnectOptions {
        clean: false,
        properties: Properties { session_expiry_interval: Some(60), ..Properties::default() },
        ..Default::default()
    };
    let (mut p, _) = Client::connect_with(b.addr, "q2pub", V5, persistent.clone());
    let publish = |dup| {
        Packet::Publish(Publish {
            dup,
            qos: QoS::ExactlyOnce,
            retain: false,
            topic: "once".into(),
            packet_id: Some(7),
            properties: Properties::default(),
            payload: Bytes::from_static(b"x"),
        })
    };
    p.send(&publish(false));
    assert!(matches!(p.recv(T), Some(Packet::PubRec(r)) if r.packet_id == 7));
    drop(p); // connection lost before PUBREL
    let (mut p, ack) = Client::connect_with(b.addr, "q2pub", V5, persistent);
    assert!(ack.session_present);
    p.send(&publish(true)); // the client resends, as it must
    assert!(matches!(p.recv(T), Some(Packet::PubRec(r)) if r.packet_id == 7));
    p.send(&Packet::PubRel(PubResp::ok(7)));
    assert!(matches!(p.recv(T), Some(Packet::PubComp(c)) if c.packet_id == 7));
    assert_eq!(drain(&mut sub, QUIET).len(), 1, "exactly once");
}

#[test]
fn expired_messages_are_not_delivered_from_an_offline_queue() {
    let (_d, b) = broker();
    let persistent = ConnectOptions {
        clean: false,
        properties: Properties { session_expiry_interval: Some(60), ..Properties::default() },
        ..Default::default()
    };
    let (mut c, _) = Client::connect_with(b.addr, "away", V5, persistent.clone());
    c.subscribe("news", QoS::AtLeastOnce);
    c.disconnect();
    std::thread::sleep(Duration::from_millis(100));
    let mut publ = Client::connect(b.addr, "pub", V5);
    let short = Properties { message_expiry_interval: Some(1), ..Properties::default() };
    publ.publish_with("news", "stale", QoS::AtLeastOnce, false, short);
    let long = Properties { message_expiry_interval: Some(600), ..Properties::default() };
    publ.publish_with("news", "fresh", QoS::AtLeastOnce, false, long);
    std::thread::sleep(Duration::from_millis(1500));
    let (mut c, _) = Client::connect_with(b.addr, "away", V5, persistent);
    let got: Vec<_> = drain_expecting(&mut c, 1, QUIET).into_iter().map(|p| p.payload).collect();
    assert_eq!(got, vec![Bytes::from_static(b"fresh")]);
}

#[test]
fn pipelined_retained_qos1_publishes_are_all_acknowledged_in_order() {
    // Each retained QoS 1 PUBLISH waits for two appends (the topic stream and the retained
    // stream); with many in flight the connection keeps reading between the two, which must
    // not lose an acknowledgement.
    let (_d, b) = broker();
    let mut c = Client::connect(b.addr, "pipeliner", V5);
    for i in 1..=300u16 {
        c.send(&Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: true,
            topic: format!("cfg/{}", i % 7).as_str().into(),
            packet_id: Some(i),
            properties: Properties::default(),
            payload: Bytes::from(format!("v{i}")),
        }));
    }
    let mut acks = Vec::new();
    while acks.len() < 300 {
        match c.recv(T) {
            Some(Packet::PubAck(a)) => acks.push(a.packet_id),
            Some(_) => {}
            None => panic!("only {} of 300 PUBACKs arrived", acks.len()),
        }
    }
    assert_eq!(acks, (1..=300).collect::<Vec<u16>>(), "in the order the PUBLISHes arrived");
}

#[test]
fn slowloris_connect_is_cut_off_and_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start_with(dir.path(), |c| c.connect_timeout = Duration::from_secs(1));
    // A CONNECT dribbled out one byte every 300 ms never completes in time.
    let mut slow = std::net::TcpStream::connect(b.addr).unwrap();
    let connect = [0x10u8, 0x0d, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x0a, 0x00, 0x01, b'a'];
    let started = std::time::Instant::now();
    let mut cut = false;
    for byte in connect {
        std::thread::sleep(Duration::from_millis(300));
        if std::io::Write::write_all(&mut slow, &[byte]).is_err() {
            cut = true;
            break;
        }
    }
    let mut rest = Vec::new();
    slow.set_read_timeout(Some(T)).unwrap();
    let _ = std::io::Read::read_to_end(&mut slow, &mut rest);
    assert!(cut || rest.is_empty(), "no CONNACK for an incomplete CONNECT: {rest:02x?}");
    assert!(started.elapsed() < Duration::from_secs(8), "closed about 1 s after the connection opened");
    let mut ok = Client::connect(b.addr, "normal", V5);
    ok.subscribe("x", QoS::AtMostOnce);
}

/// A burst that arrives while the subscriber's connection is busy writing is all sent, even
/// when no further message comes to wake the writer (each of these fills a write batch).
#[test]
fn a_burst_of_large_messages_is_delivered_without_further_traffic() {
    let (_d, b) = broker();
    let mut sub = Client::connect(b.addr, "sub", V5);
    sub.subscribe("burst", QoS::AtMostOnce);
    let mut publ = Client::connect(b.addr, "pub", V5);
    for i in 0..10u8 {
        // Sent back to back, without waiting for anything (QoS 0).
        publ.send(&Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: "burst".into(),
            packet_id: None,
            properties: Properties::default(),
            payload: bytes::Bytes::from(vec![i; 200_000]),
        }));
    }
    let got: Vec<u8> = drain(&mut sub, Duration::from_secs(2)).iter().map(|p| p.payload[0]).collect();
    assert_eq!(got, (0..10).collect::<Vec<_>>());
}

/// A publisher that pipelines its PUBLISHes (not waiting for acknowledgements) to a new
/// topic — a persistent one with QoS 2, whose messages wait for an intent record, and a
/// clean one with QoS 1 — has its messages delivered in the order it sent them.
#[test]
fn pipelined_publishes_keep_their_order_in_the_log() {
    let (_d, b) = broker();
    let mut sub = Client::connect(b.addr, "sub", V5);
    sub.subscribe("order/#", QoS::ExactlyOnce);
    for (client, qos, topic) in [("p2", QoS::ExactlyOnce, "order/q2"), ("p1", QoS::AtLeastOnce, "order/q1")] {
        let opts = ConnectOptions {
            clean: qos == QoS::AtLeastOnce,
            properties: Properties { session_expiry_interval: Some(60), ..Default::default() },
            ..Default::default()
        };
        let (mut p, _) = Client::connect_with(b.addr, client, V5, opts);
        for id in 1..=60u16 {
            p.send(&Packet::Publish(Publish {
                dup: false,
                qos,
                retain: false,
                topic: topic.into(),
                packet_id: Some(id),
                properties: Properties::default(),
                payload: bytes::Bytes::from(id.to_string()),
            }));
        }
        let mut done = 0;
        while done < 60 {
            match p.recv(T) {
                Some(Packet::PubRec(r)) => p.send(&Packet::PubRel(PubResp::ok(r.packet_id))),
                Some(Packet::PubComp(_) | Packet::PubAck(_)) => done += 1,
                Some(_) => {}
                None => panic!("{client}: {done} of 60 acknowledged"),
            }
        }
        let got: Vec<u16> = drain_expecting(&mut sub, 60, QUIET)
            .iter()
            .map(|m| std::str::from_utf8(&m.payload).unwrap().parse().unwrap())
            .collect();
        assert_eq!(got, (1..=60).collect::<Vec<_>>(), "{client}: in the order sent");
    }
}

/// QoS 0 messages that arrive in one read are routed together: in one write, 200 QoS 0
/// messages on two topics with a QoS 1 message after every 25th, to a subscriber of each
/// topic and one of both. Every subscriber gets its messages in the order sent, the QoS 1
/// ones in their place among them, and a retained QoS 0 message in the middle too.
#[test]
fn qos0_messages_of_one_read_keep_their_order_among_other_packets() {
    let (_d, b) = broker();
    let mut both = Client::connect(b.addr, "both", V5);
    both.subscribe("batch/#", QoS::AtLeastOnce);
    let mut a = Client::connect(b.addr, "a", V5);
    a.subscribe("batch/a", QoS::AtLeastOnce);
    let mut bb = Client::connect(b.addr, "b", V3);
    bb.subscribe("batch/b", QoS::AtLeastOnce);
    let mut p = Client::connect(b.addr, "p", V5);
    let publish = |topic: &str, qos: QoS, payload: String| Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id: None,
        properties: Properties::default(),
        payload: Bytes::from(payload),
    };
    let mut out = bytes::BytesMut::new();
    let mut sent: Vec<(String, String)> = Vec::new();
    let mut id = 0u16;
    for i in 0..200u32 {
        let topic = if i % 3 == 0 { "batch/b" } else { "batch/a" };
        let payload = format!("m{i}");
        encode(&Packet::Publish(publish(topic, QoS::AtMostOnce, payload.clone())), V5, &mut out).unwrap();
        sent.push((topic.to_string(), payload));
        if i % 25 == 24 {
            id += 1;
            let payload = format!("q{i}");
            let mut p1 = publish(topic, QoS::AtLeastOnce, payload.clone());
            p1.packet_id = Some(id);
            encode(&Packet::Publish(p1), V5, &mut out).unwrap();
            sent.push((topic.to_string(), payload));
        }
        if i == 100 {
            let mut r = publish("batch/a", QoS::AtMostOnce, "retained".into());
            r.retain = true;
            encode(&Packet::Publish(r), V5, &mut out).unwrap();
            sent.push(("batch/a".to_string(), "retained".to_string()));
        }
    }
    p.send_raw(&out);
    let acked = (0..id).filter(|_| matches!(p.recv(T), Some(Packet::PubAck(_)))).count();
    assert_eq!(acked, id as usize, "every QoS 1 message acknowledged");
    for (c, filter) in [(&mut both, "batch/"), (&mut a, "batch/a"), (&mut bb, "batch/b")] {
        let want: Vec<&str> = sent.iter().filter(|(t, _)| t.starts_with(filter)).map(|(_, m)| m.as_str()).collect();
        let got: Vec<String> = drain_expecting(c, want.len(), QUIET)
            .iter()
            .map(|m| std::str::from_utf8(&m.payload).unwrap().to_string())
            .collect();
        assert_eq!(got, want, "{filter}: in the order sent");
    }
}

/// QoS 1/2 messages that arrive in one read reach the log together (one batch): in one
/// write, 150 QoS 1 messages over two existing topics and one created on the way, with a
/// retained QoS 1 message, a QoS 2 message (an intent first: a persistent publisher) and a
/// SUBSCRIBE (a session record) among them. Every one is acknowledged, and a persistent
/// session that was away gets each topic's messages in the order sent after a restart.
#[test]
fn qos1_messages_of_one_read_reach_the_log_in_order_across_a_restart() {
    let d = tempfile::tempdir().unwrap();
    let b = TestBroker::start(d.path());
    let persistent = ConnectOptions { clean: false, ..Default::default() };
    let (mut away, _) = Client::connect_with(b.addr, "away", V3, persistent.clone());
    away.subscribe("read/#", QoS::AtLeastOnce);
    away.disconnect();
    std::thread::sleep(Duration::from_millis(100));

    let publisher = ConnectOptions {
        clean: false,
        properties: Properties { session_expiry_interval: Some(60), ..Default::default() },
        ..Default::default()
    };
    let (mut p, _) = Client::connect_with(b.addr, "p", V5, publisher);
    let mut sent: Vec<(String, String)> = Vec::new();
    for t in ["read/a", "read/b"] {
        p.publish(t, format!("{t} first"), QoS::AtLeastOnce, false);
        sent.push((t.to_string(), format!("{t} first")));
    }
    let mut out = bytes::BytesMut::new();
    let mut id = 0u16;
    let mut publish = |out: &mut bytes::BytesMut, topic: &str, qos: QoS, retain: bool, payload: String| {
        id += 1;
        let p = Publish {
            dup: false,
            qos,
            retain,
            topic: topic.into(),
            packet_id: Some(id),
            properties: Properties::default(),
            payload: Bytes::from(payload.clone()),
        };
        encode(&Packet::Publish(p), V5, out).unwrap();
        sent.push((topic.to_string(), payload));
    };
    for i in 0..150u32 {
        let topic = match i % 3 {
            0 => "read/a",
            1 => "read/b",
            _ if i < 90 => "read/a",
            _ => "read/new",
        };
        publish(&mut out, topic, QoS::AtLeastOnce, false, format!("{topic} {i}"));
        if i == 40 {
            publish(&mut out, "read/b", QoS::AtLeastOnce, true, "read/b retained".into());
        }
        if i == 70 {
            publish(&mut out, "read/a", QoS::ExactlyOnce, false, "read/a exactly once".into());
        }
        if i == 100 {
            let s = Subscription {
                filter: "elsewhere/#".into(),
                qos: QoS::AtLeastOnce,
                no_local: false,
                retain_as_published: false,
                retain_handling: RetainHandling::OnSubscribe,
            };
            let sub = Subscribe { packet_id: 60000, properties: Properties::default(), subscriptions: vec![s] };
            encode(&Packet::Subscribe(sub), V5, &mut out).unwrap();
        }
    }
    p.send_raw(&out);
    let (mut acks, mut completed, mut subacked) = (0, 0, false);
    while acks + completed < id as usize || !subacked {
        match p.recv(T) {
            Some(Packet::PubAck(a)) => {
                assert_eq!(a.code as u8, 0, "PUBACK {}", a.packet_id);
                acks += 1;
            }
            Some(Packet::PubRec(r)) => p.send(&Packet::PubRel(PubResp::ok(r.packet_id))),
            Some(Packet::PubComp(_)) => completed += 1,
            Some(Packet::SubAck(_)) => subacked = true,
            Some(_) => {}
            None => panic!("{acks} PUBACKs, {completed} PUBCOMPs of {id}; SUBACK: {subacked}"),
        }
    }
    p.disconnect();
    b.stop();

    let b = TestBroker::start(d.path());
    let (mut away, ack) = Client::connect_with(b.addr, "away", V3, persistent);
    assert!(ack.session_present);
    let got = drain_expecting(&mut away, sent.len(), QUIET);
    for topic in ["read/a", "read/b", "read/new"] {
        let want: Vec<&str> = sent.iter().filter(|(t, _)| t == topic).map(|(_, m)| m.as_str()).collect();
        let have: Vec<&str> = got
            .iter()
            .filter(|m| m.topic.as_str() == topic)
            .map(|m| std::str::from_utf8(&m.payload).unwrap())
            .collect();
        assert_eq!(have, want, "{topic}: every message, in the order sent");
    }
    assert_eq!(got.len(), sent.len(), "nothing else, nothing twice");
}

/// Bytes of the log's segment files under `dir`.
fn log_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let (path, meta) = (e.path(), e.metadata().unwrap());
            if meta.is_dir() {
                todo.push(path);
            } else if path.extension().is_some_and(|x| x == "seg") {
                total += meta.len();
            }
        }
    }
    total
}

/// A persistent session following 300 topics, acknowledging messages that arrive on one of
/// them, saves the cursor that moved — not all 300 (about 5 KB) each time; and after a
/// restart it resumes from the saved cursors: nothing acknowledged comes again.
#[test]
fn a_persistent_session_saves_only_the_cursors_that_moved() {
    let d = tempfile::tempdir().unwrap();
    let fast_saves = |c: &mut promptmq_broker::BrokerConfig| c.positions_save_interval = Duration::from_millis(5);
    let b = TestBroker::start_with(d.path(), fast_saves);
    let mut p = Client::connect(b.addr, "p", V5);
    for i in 0..300 {
        p.publish(&format!("many/{i}"), "first", QoS::AtLeastOnce, false);
    }
    let persistent = ConnectOptions { clean: false, ..Default::default() };
    let (mut s, _) = Client::connect_with(b.addr, "follower", V3, persistent.clone());
    s.subscribe("many/#", QoS::AtLeastOnce);
    let before = log_bytes(d.path());
    for i in 0..40 {
        p.publish("many/7", format!("m{i}"), QoS::AtLeastOnce, false);
        let got = s.next_publish(T).expect("delivered");
        assert_eq!(got.payload, format!("m{i}"));
        // Acknowledged (by next_publish); its cursor is saved within the interval.
        std::thread::sleep(Duration::from_millis(15));
    }
    let grown = log_bytes(d.path()) - before;
    // The 40 messages take about 9 KB; 40 saves of every cursor would add about 200 KB.
    assert!(grown < 60_000, "the log grew by {grown} bytes for 40 messages");
    eprintln!("the log grew by {grown} bytes for 40 acknowledged messages");
    s.ping();
    std::thread::sleep(Duration::from_millis(50));
    b.stop();

    let b = TestBroker::start_with(d.path(), fast_saves);
    let (mut s, ack) = Client::connect_with(b.addr, "follower", V3, persistent);
    assert!(ack.session_present);
    let again = drain(&mut s, QUIET);
    assert!(again.is_empty(), "acknowledged messages came again: {:?}", again.len());
    let mut p = Client::connect(b.addr, "p", V5);
    p.publish("many/299", "after", QoS::AtLeastOnce, false);
    p.publish("many/7", "after", QoS::AtLeastOnce, false);
    let got: Vec<String> = drain_expecting(&mut s, 2, QUIET).iter().map(|m| m.topic.to_string()).collect();
    assert_eq!(got, vec!["many/299", "many/7"]);
}
