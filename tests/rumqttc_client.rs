//! The broker against `rumqttc`, a widely used Rust MQTT client, in 3.1.1 and 5.0: an
//! implementation written by others, so the broker is not only checked against its own codec.

use std::time::{Duration, Instant};

use promptmq_tests::TestBroker;

const WAIT: Duration = Duration::from_secs(5);

mod v311 {
    use super::*;
    use rumqttc::{Client, Connection, Event, MqttOptions, Packet, QoS};

    pub fn connect(port: u16, id: &str, clean: bool) -> (Client, Connection) {
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(30)).set_clean_session(clean);
        let (c, mut conn) = Client::new(o, 64);
        // Drive the connection until CONNACK.
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) = conn.recv_timeout(WAIT) {
                return (c, conn);
            }
        }
        panic!("no CONNACK for {id}");
    }

    /// Publishes received until `quiet` passes with none: (topic, payload, qos).
    pub fn collect(conn: &mut Connection, quiet: Duration) -> Vec<(String, String, QoS)> {
        let mut out = Vec::new();
        while let Ok(Ok(ev)) = conn.recv_timeout(quiet) {
            if let Event::Incoming(Packet::Publish(p)) = ev {
                out.push((p.topic.clone(), String::from_utf8_lossy(&p.payload).into_owned(), p.qos));
            }
        }
        out
    }

    /// Drives `conn` until the broker has acknowledged `n` QoS 1/2 publishes.
    pub fn await_acks(conn: &mut Connection, n: usize) {
        let mut acked = 0;
        let deadline = Instant::now() + WAIT;
        while acked < n && Instant::now() < deadline {
            match conn.recv_timeout(WAIT) {
                Ok(Ok(Event::Incoming(Packet::PubAck(_) | Packet::PubComp(_)))) => acked += 1,
                Ok(Ok(_)) => {}
                other => panic!("connection failed: {other:?}"),
            }
        }
        assert_eq!(acked, n, "acknowledgements");
    }

    /// Drives `conn` until SUBACK.
    pub fn await_suback(conn: &mut Connection) {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Ok(Ok(Event::Incoming(Packet::SubAck(_)))) = conn.recv_timeout(WAIT) {
                return;
            }
        }
        panic!("no SUBACK");
    }
}

mod v5 {
    use super::*;
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{Client, Connection, Event, MqttOptions};

    pub fn connect(port: u16, id: &str, clean: bool, expiry: Option<u32>) -> (Client, Connection) {
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(30)).set_clean_start(clean);
        if let Some(e) = expiry {
            o.set_session_expiry_interval(Some(e));
        }
        let (c, mut conn) = Client::new(o, 64);
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) = conn.recv_timeout(WAIT) {
                return (c, conn);
            }
        }
        panic!("no CONNACK for {id}");
    }

    pub fn collect(conn: &mut Connection, quiet: Duration) -> Vec<(String, String, QoS)> {
        let mut out = Vec::new();
        while let Ok(Ok(ev)) = conn.recv_timeout(quiet) {
            if let Event::Incoming(Packet::Publish(p)) = ev {
                out.push((
                    String::from_utf8_lossy(&p.topic).into_owned(),
                    String::from_utf8_lossy(&p.payload).into_owned(),
                    p.qos,
                ));
            }
        }
        out
    }

    pub fn await_acks(conn: &mut Connection, n: usize) {
        let mut acked = 0;
        let deadline = Instant::now() + WAIT;
        while acked < n && Instant::now() < deadline {
            match conn.recv_timeout(WAIT) {
                Ok(Ok(Event::Incoming(Packet::PubAck(_) | Packet::PubComp(_)))) => acked += 1,
                Ok(Ok(_)) => {}
                other => panic!("connection failed: {other:?}"),
            }
        }
        assert_eq!(acked, n, "acknowledgements");
    }

    pub fn await_suback(conn: &mut Connection) {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Ok(Ok(Event::Incoming(Packet::SubAck(_)))) = conn.recv_timeout(WAIT) {
                return;
            }
        }
        panic!("no SUBACK");
    }
}

#[test]
fn v311_qos_0_1_2_publish_and_subscribe() {
    use rumqttc::QoS;
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start(dir.path());
    let (sub, mut sub_conn) = v311::connect(b.addr.port(), "r-sub", true);
    sub.subscribe("r/#", QoS::ExactlyOnce).unwrap();
    v311::await_suback(&mut sub_conn);
    let (publ, mut pub_conn) = v311::connect(b.addr.port(), "r-pub", true);
    for (i, q) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce].into_iter().enumerate() {
        publ.publish(format!("r/{i}"), q, false, format!("m{i}")).unwrap();
    }
    v311::await_acks(&mut pub_conn, 2);
    let got = v311::collect(&mut sub_conn, Duration::from_millis(500));
    assert_eq!(
        got,
        vec![
            ("r/0".into(), "m0".into(), QoS::AtMostOnce),
            ("r/1".into(), "m1".into(), QoS::AtLeastOnce),
            ("r/2".into(), "m2".into(), QoS::ExactlyOnce),
        ]
    );
}

#[test]
fn v311_retained_message_reaches_a_later_subscriber() {
    use rumqttc::QoS;
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start(dir.path());
    let (publ, mut pub_conn) = v311::connect(b.addr.port(), "r-pub", true);
    publ.publish("state/door", QoS::AtLeastOnce, true, "open").unwrap();
    v311::await_acks(&mut pub_conn, 1);
    let (sub, mut sub_conn) = v311::connect(b.addr.port(), "r-late", true);
    sub.subscribe("state/#", QoS::AtLeastOnce).unwrap();
    let got = v311::collect(&mut sub_conn, Duration::from_millis(500));
    assert_eq!(got, vec![("state/door".into(), "open".into(), QoS::AtLeastOnce)]);
}

/// A v5 persistent session (session expiry 1 h) away while QoS 1 and 2 messages arrive, the
/// broker restarted, the client back: it gets them all, once, in order.
#[test]
fn v5_persistent_session_gets_what_it_missed_across_a_restart() {
    use rumqttc::v5::mqttbytes::QoS;
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start(dir.path());
    let (sub, mut sub_conn) = v5::connect(b.addr.port(), "r5-sub", false, Some(3600));
    sub.subscribe("r5/#", QoS::ExactlyOnce).unwrap();
    v5::await_suback(&mut sub_conn);
    sub.disconnect().unwrap();
    let _ = v5::collect(&mut sub_conn, Duration::from_millis(200));
    drop(sub_conn);
    let (publ, mut pub_conn) = v5::connect(b.addr.port(), "r5-pub", true, None);
    for i in 0..10 {
        let q = if i % 2 == 0 { QoS::AtLeastOnce } else { QoS::ExactlyOnce };
        publ.publish(format!("r5/{}", i % 2), q, false, format!("m{i}")).unwrap();
    }
    v5::await_acks(&mut pub_conn, 10);
    drop(pub_conn);
    b.stop();

    let b = TestBroker::start(dir.path());
    let (_sub, mut sub_conn) = v5::connect(b.addr.port(), "r5-sub", false, Some(3600));
    let got: Vec<String> = v5::collect(&mut sub_conn, Duration::from_millis(700)).into_iter().map(|g| g.1).collect();
    assert_eq!(got, (0..10).map(|i| format!("m{i}")).collect::<Vec<_>>());
}

/// v5 properties travel unchanged from a rumqttc publisher to a rumqttc subscriber.
#[test]
fn v5_properties_are_forwarded() {
    use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::Event;
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start(dir.path());
    let (sub, mut sub_conn) = v5::connect(b.addr.port(), "p-sub", true, None);
    sub.subscribe("props", QoS::AtLeastOnce).unwrap();
    v5::await_suback(&mut sub_conn);
    let (publ, mut pub_conn) = v5::connect(b.addr.port(), "p-pub", true, None);
    let props = PublishProperties {
        content_type: Some("application/json".into()),
        response_topic: Some("reply/here".into()),
        correlation_data: Some(bytes::Bytes::from_static(b"corr-1")),
        user_properties: vec![("k".into(), "v".into())],
        payload_format_indicator: Some(1),
        ..Default::default()
    };
    publ.publish_with_properties("props", QoS::AtLeastOnce, false, "{}", props.clone()).unwrap();
    v5::await_acks(&mut pub_conn, 1);
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if let Ok(Ok(Event::Incoming(Packet::Publish(p)))) = sub_conn.recv_timeout(WAIT) {
            let got = p.properties.expect("properties delivered");
            assert_eq!(got.content_type, props.content_type);
            assert_eq!(got.response_topic, props.response_topic);
            assert_eq!(got.correlation_data, props.correlation_data);
            assert_eq!(got.user_properties, props.user_properties);
            assert_eq!(got.payload_format_indicator, props.payload_format_indicator);
            return;
        }
    }
    panic!("nothing delivered");
}

/// Two rumqttc members of one shared subscription split the messages between them.
#[test]
fn v5_shared_subscription_splits_messages() {
    use rumqttc::v5::mqttbytes::QoS;
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start(dir.path());
    let mut members = Vec::new();
    for id in ["m1", "m2"] {
        let (c, mut conn) = v5::connect(b.addr.port(), id, true, None);
        c.subscribe("$share/workers/jobs", QoS::AtLeastOnce).unwrap();
        v5::await_suback(&mut conn);
        members.push((c, conn));
    }
    let (publ, mut pub_conn) = v5::connect(b.addr.port(), "boss", true, None);
    for i in 0..20 {
        publ.publish("jobs", QoS::AtLeastOnce, false, format!("{i}")).unwrap();
    }
    v5::await_acks(&mut pub_conn, 20);
    let mut all: Vec<u32> = Vec::new();
    for (_, conn) in members.iter_mut() {
        let got = v5::collect(conn, Duration::from_millis(500));
        assert!(!got.is_empty() && got.len() < 20, "each member gets a share: {}", got.len());
        all.extend(got.into_iter().map(|g| g.1.parse::<u32>().unwrap()));
    }
    all.sort();
    assert_eq!(all, (0..20).collect::<Vec<_>>(), "each message to exactly one member");
}

/// A 3.1.1 client's will is published when its connection drops without DISCONNECT.
#[test]
fn v311_will_on_abnormal_disconnect() {
    use rumqttc::{LastWill, MqttOptions, QoS};
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start(dir.path());
    let (sub, mut sub_conn) = v311::connect(b.addr.port(), "w-sub", true);
    sub.subscribe("wills/#", QoS::AtLeastOnce).unwrap();
    v311::await_suback(&mut sub_conn);
    {
        let mut o = MqttOptions::new("w-dying", "127.0.0.1", b.addr.port());
        o.set_keep_alive(Duration::from_secs(30)).set_last_will(LastWill::new(
            "wills/dying",
            "gone",
            QoS::AtLeastOnce,
            false,
        ));
        let (_c, mut conn) = rumqttc::Client::new(o, 8);
        let _ = conn.recv_timeout(WAIT); // CONNACK
                                         // Dropped here: the socket closes without DISCONNECT.
    }
    let got = v311::collect(&mut sub_conn, Duration::from_millis(700));
    assert_eq!(got, vec![("wills/dying".into(), "gone".into(), QoS::AtLeastOnce)]);
}
