//! Codec tests: golden bytes (spec examples and real client captures), one negative test per
//! malformed-packet / protocol-error rule, and round-trip properties over generated packets.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::*;

const MAX: usize = 1 << 20;

fn dec(bytes: &[u8], v: Option<ProtocolVersion>) -> Result<Option<Packet>, DecodeError> {
    decode(&mut BytesMut::from(bytes), v, MAX)
}

fn one(bytes: &[u8], v: Option<ProtocolVersion>) -> Packet {
    dec(bytes, v).expect("decodes").expect("complete")
}

/// Decodes every packet of a capture, CONNECT first.
fn all(bytes: &[u8]) -> Vec<Packet> {
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    let mut v = None;
    while let Some(p) = decode(&mut buf, v, MAX).expect("capture decodes") {
        if let Packet::Connect(c) = &p {
            v = Some(c.protocol);
        }
        out.push(p);
    }
    assert!(buf.is_empty(), "trailing bytes in capture");
    out
}

fn reencode(p: &Packet, v: ProtocolVersion) -> BytesMut {
    let mut out = BytesMut::new();
    encode(p, v, &mut out).expect("encodes");
    out
}

const V3: Option<ProtocolVersion> = Some(ProtocolVersion::V3_1_1);
const V5: Option<ProtocolVersion> = Some(ProtocolVersion::V5);

// ---- golden -------------------------------------------------------------------------

#[test]
fn golden_mosquitto_pub_v5_qos1() {
    let bytes = include_bytes!("../../tests/data/mosquitto_pub_v5_qos1.bin");
    let ps = all(bytes);
    assert_eq!(ps.len(), 3, "{ps:#?}");
    let Packet::Connect(c) = &ps[0] else { panic!("{:?}", ps[0]) };
    assert_eq!(c.protocol, ProtocolVersion::V5);
    assert_eq!(c.client_id, "golden-client");
    assert_eq!(c.keep_alive, 60);
    assert_eq!(c.properties.session_expiry_interval, Some(60));
    assert_eq!(c.properties.receive_maximum, Some(20));
    let Packet::Publish(p) = &ps[1] else { panic!() };
    assert_eq!((p.topic.as_str(), p.qos, p.packet_id), ("sensors/temp", QoS::AtLeastOnce, Some(1)));
    assert_eq!(p.properties.content_type.as_deref(), Some("text/plain"));
    assert_eq!(p.properties.user_properties, vec![("unit".to_string(), "celsius".to_string())]);
    assert_eq!(&p.payload[..], b"21.5");
    assert!(matches!(ps[2], Packet::Disconnect(_)));
    // Re-encoding gives back the client's exact bytes.
    let mut again = BytesMut::new();
    for p in &ps {
        encode(p, ProtocolVersion::V5, &mut again).unwrap();
    }
    assert_eq!(&again[..], &bytes[..]);
}

#[test]
fn golden_mosquitto_pub_v311_qos2_with_will() {
    let bytes = include_bytes!("../../tests/data/mosquitto_pub_v311_qos2_will.bin");
    let ps = all(bytes);
    let Packet::Connect(c) = &ps[0] else { panic!() };
    assert_eq!(c.protocol, ProtocolVersion::V3_1_1);
    assert_eq!(c.username.as_deref(), Some("alice"));
    assert_eq!(c.password.as_deref(), Some(&b"secret"[..]));
    let w = c.will.as_ref().unwrap();
    assert_eq!(
        (w.topic.as_str(), &w.payload[..], w.qos, w.retain),
        ("status/golden311", &b"offline"[..], QoS::AtLeastOnce, true)
    );
    let Packet::Publish(p) = &ps[1] else { panic!() };
    assert_eq!((p.qos, p.retain, p.topic.as_str()), (QoS::ExactlyOnce, true, "a/b"));
    assert!(matches!(ps[2], Packet::PubRel(_)));
    let mut again = BytesMut::new();
    for p in &ps {
        encode(p, ProtocolVersion::V3_1_1, &mut again).unwrap();
    }
    assert_eq!(&again[..], &bytes[..]);
}

#[test]
fn golden_mosquitto_sub_v5_shared() {
    let bytes = include_bytes!("../../tests/data/mosquitto_sub_v5.bin");
    let ps = all(bytes);
    let Packet::Subscribe(s) = &ps[1] else { panic!("{:?}", ps[1]) };
    let filters: Vec<_> = s.subscriptions.iter().map(|x| (x.filter.as_str(), x.qos)).collect();
    assert_eq!(filters, vec![("sensors/#", QoS::ExactlyOnce), ("$share/g/jobs/+", QoS::ExactlyOnce)]);
    let Packet::Disconnect(d) = &ps[2] else { panic!() };
    assert_eq!(d.code, ReasonCode::DisconnectWithWill);
}

#[test]
fn golden_spec_examples() {
    // Spec 3.1.2.10 keep alive example and 3.1.3 CONNECT layout, written out by hand:
    // a 3.1.1 CONNECT with clean session, keep alive 10, client id "a".
    let connect = [0x10, 0x0d, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x0a, 0x00, 0x01, b'a'];
    let Packet::Connect(c) = one(&connect, None) else { panic!() };
    assert!(c.clean_start && c.keep_alive == 10 && c.client_id == "a");
    assert_eq!(&reencode(&Packet::Connect(c), ProtocolVersion::V3_1_1)[..], &connect[..]);
    // MQTT 3.1 (MQIsdp, level 3) is accepted.
    let v31 = [0x10, 0x0f, 0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x03, 0x02, 0x00, 0x3c, 0x00, 0x01, b'x'];
    let Packet::Connect(c) = one(&v31, None) else { panic!() };
    assert_eq!(c.protocol, ProtocolVersion::V3_1);
    // PUBLISH QoS 0 "a/b" "hi"; PINGREQ; PINGRESP; 3.1.1 DISCONNECT.
    let publish = [0x30, 0x07, 0x00, 0x03, b'a', b'/', b'b', b'h', b'i'];
    let Packet::Publish(p) = one(&publish, V3) else { panic!() };
    assert_eq!((p.topic.as_str(), &p.payload[..]), ("a/b", &b"hi"[..]));
    assert_eq!(one(&[0xc0, 0x00], V3), Packet::PingReq);
    assert_eq!(one(&[0xd0, 0x00], V3), Packet::PingResp);
    assert_eq!(one(&[0xe0, 0x00], V3), Packet::Disconnect(Disconnect::default()));
    // v5 PUBACK with reason "No matching subscribers" and no properties (remaining length 3).
    let Packet::PubAck(a) = one(&[0x40, 0x03, 0x00, 0x05, 0x10], V5) else { panic!() };
    assert_eq!((a.packet_id, a.code), (5, ReasonCode::NoMatchingSubscribers));
    // v5 DISCONNECT with only a reason code.
    let Packet::Disconnect(d) = one(&[0xe0, 0x01, 0x8b], V5) else { panic!() };
    assert_eq!(d.code, ReasonCode::ServerShuttingDown);
    // v5 AUTH with no body means success.
    assert_eq!(one(&[0xf0, 0x00], V5), Packet::Auth(Auth::default()));
}

#[test]
fn zero_copy_payload() {
    let publish = [0x30, 0x07, 0x00, 0x03, b'a', b'/', b'b', b'h', b'i'];
    let mut buf = BytesMut::from(&publish[..]);
    let base = buf.as_ptr() as usize;
    let Some(Packet::Publish(p)) = decode(&mut buf, V3, MAX).unwrap() else { panic!() };
    assert_eq!(p.payload.as_ptr() as usize, base + 7, "payload points into the input buffer");
    assert_eq!(p.topic.as_bytes().as_ptr() as usize, base + 4, "topic too");
}

#[test]
fn incremental_decoding_waits_for_the_whole_packet() {
    let bytes = include_bytes!("../../tests/data/mosquitto_pub_v5_qos1.bin");
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    let mut v = None;
    for b in bytes {
        buf.extend_from_slice(&[*b]);
        while let Some(p) = decode(&mut buf, v, MAX).unwrap() {
            if let Packet::Connect(c) = &p {
                v = Some(c.protocol);
            }
            got.push(p);
        }
    }
    assert_eq!(got, all(bytes));
}

// ---- negative: one test per rule ----------------------------------------------------

fn err(bytes: &[u8], v: Option<ProtocolVersion>) -> DecodeError {
    match dec(bytes, v) {
        Err(e) => e,
        Ok(p) => panic!("accepted {bytes:02x?} as {p:?}"),
    }
}

#[test]
fn oversized_packet_is_refused_from_its_header() {
    // Only the fixed header is present: a 1 MiB body is announced, none of it sent.
    let e = decode(&mut BytesMut::from(&[0x30, 0x80, 0x80, 0x40][..]), V3, 1024).unwrap_err();
    assert_eq!(e, DecodeError::TooLarge { size: 1 + 3 + (1 << 20), max: 1024 });
    assert_eq!(e.reason_code(), ReasonCode::PacketTooLarge);
}

#[test]
fn varint_over_four_bytes() {
    assert_eq!(err(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01], V3).reason_code(), ReasonCode::MalformedPacket);
}

#[test]
fn reserved_fixed_header_flags() {
    assert!(matches!(err(&[0xc1, 0x00], V3), DecodeError::Malformed(_)), "PINGREQ with a flag");
    // SUBSCRIBE must have flags 0010.
    assert!(matches!(err(&[0x80, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x00], V3), DecodeError::Malformed(_)));
    // PUBREL must have flags 0010.
    assert!(matches!(err(&[0x60, 0x02, 0x00, 0x01], V3), DecodeError::Malformed(_)));
}

#[test]
fn qos_3() {
    assert!(matches!(err(&[0x36, 0x05, 0x00, 0x01, b'a', 0x00, 0x01], V3), DecodeError::Malformed("QoS 3")));
    // In SUBSCRIBE options too.
    assert!(matches!(err(&[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x03], V3), DecodeError::Malformed(_)));
}

#[test]
fn dup_on_qos0() {
    assert!(matches!(err(&[0x38, 0x03, 0x00, 0x01, b'a'], V3), DecodeError::Malformed(_)));
}

#[test]
fn zero_packet_identifiers() {
    assert!(matches!(err(&[0x32, 0x05, 0x00, 0x01, b'a', 0x00, 0x00], V3), DecodeError::Protocol(_)));
    assert!(matches!(err(&[0x40, 0x02, 0x00, 0x00], V3), DecodeError::Protocol(_)));
    assert!(matches!(err(&[0x82, 0x06, 0x00, 0x00, 0x00, 0x01, b'a', 0x00], V3), DecodeError::Protocol(_)));
}

#[test]
fn duplicate_properties() {
    // PUBLISH v5 with two content types.
    let mut b = vec![0x30, 0x00, 0x00, 0x01, b'a', 0x08, 0x03, 0x00, 0x01, b'x', 0x03, 0x00, 0x01, b'y'];
    b[1] = (b.len() - 2) as u8;
    assert_eq!(err(&b, V5), DecodeError::Protocol("a property appears twice"));
    // ...but user properties may repeat.
    let mut b = vec![
        0x30, 0x00, 0x00, 0x01, b'a', 0x0e, 0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v', 0x26, 0x00, 0x01, b'k', 0x00,
        0x01, b'w',
    ];
    b[1] = (b.len() - 2) as u8;
    let Packet::Publish(p) = one(&b, V5) else { panic!() };
    assert_eq!(p.properties.user_properties.len(), 2);
}

#[test]
fn property_not_allowed_in_packet() {
    // Session expiry interval (0x11) in PUBLISH.
    let mut b = vec![0x30, 0x00, 0x00, 0x01, b'a', 0x05, 0x11, 0x00, 0x00, 0x00, 0x01];
    b[1] = (b.len() - 2) as u8;
    assert_eq!(err(&b, V5), DecodeError::Protocol("property not allowed in this packet"));
    // Unknown property id 0x7f.
    let mut b = vec![0x30, 0x00, 0x00, 0x01, b'a', 0x02, 0x7f, 0x00];
    b[1] = (b.len() - 2) as u8;
    assert!(matches!(err(&b, V5), DecodeError::Malformed(_)));
}

#[test]
fn invalid_property_values() {
    for (id, val) in [(0x21u8, vec![0x00, 0x00]), (0x23, vec![0x00, 0x00])] {
        let mut body = vec![0x00, 0x01, b'a', (1 + val.len()) as u8, id];
        body.extend(&val);
        let mut b = vec![0x30, body.len() as u8];
        b.extend(body);
        assert!(matches!(err(&b, V5), DecodeError::Protocol(_) | DecodeError::Malformed(_)), "{id:#x}");
    }
    // Payload format indicator 2.
    let b = [0x30, 0x06, 0x00, 0x01, b'a', 0x02, 0x01, 0x02];
    assert!(matches!(err(&b, V5), DecodeError::Protocol(_)));
}

#[test]
fn invalid_utf8_and_nul_in_strings() {
    assert!(matches!(err(&[0x30, 0x04, 0x00, 0x02, 0xc3, 0x28], V3), DecodeError::Malformed(_)));
    assert!(matches!(err(&[0x30, 0x04, 0x00, 0x02, b'a', 0x00], V3), DecodeError::Malformed(_)));
    // In a client id.
    let b = [0x10, 0x0d, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x0a, 0x00, 0x01, 0xff];
    assert!(matches!(err(&b, None), DecodeError::Malformed(_)));
}

#[test]
fn wildcards_in_publish_topic() {
    for t in [&b"a/+"[..], b"#"] {
        let mut b = vec![0x30, (2 + t.len()) as u8, 0x00, t.len() as u8];
        b.extend(t);
        assert_eq!(err(&b, V3).reason_code(), ReasonCode::TopicNameInvalid);
    }
    // Empty topic without an alias.
    assert!(matches!(err(&[0x30, 0x02, 0x00, 0x00], V3), DecodeError::Topic(_)));
    assert!(matches!(err(&[0x30, 0x03, 0x00, 0x00, 0x00], V5), DecodeError::Topic(_)));
    // Empty topic with a topic alias is fine in v5.
    let Packet::Publish(p) = one(&[0x30, 0x06, 0x00, 0x00, 0x03, 0x23, 0x00, 0x07], V5) else { panic!() };
    assert_eq!(p.properties.topic_alias, Some(7));
}

#[test]
fn empty_subscription_lists() {
    assert!(matches!(err(&[0x82, 0x02, 0x00, 0x01], V3), DecodeError::Protocol(_)));
    assert!(matches!(err(&[0xa2, 0x02, 0x00, 0x01], V3), DecodeError::Protocol(_)));
    assert!(matches!(err(&[0x82, 0x03, 0x00, 0x01, 0x00], V5), DecodeError::Protocol(_)));
}

#[test]
fn invalid_filters_and_options() {
    let e = err(&[0x82, 0x08, 0x00, 0x01, 0x00, 0x03, b'a', b'#', b'b', 0x00], V3);
    assert_eq!(e.reason_code(), ReasonCode::TopicFilterInvalid);
    // Reserved option bits: 3.1.1 reserves bits 2..7; v5 reserves bits 6..7; retain handling 3.
    assert!(matches!(err(&[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x04], V3), DecodeError::Malformed(_)));
    assert!(matches!(err(&[0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x40], V5), DecodeError::Malformed(_)));
    assert!(matches!(err(&[0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x30], V5), DecodeError::Malformed(_)));
    // No local on a shared subscription.
    let mut b = vec![0x82, 0x00, 0x00, 0x01, 0x00, 0x00, 0x0a];
    b.extend(b"$share/g/a");
    b.push(0x04);
    b[1] = (b.len() - 2) as u8;
    assert!(matches!(err(&b, V5), DecodeError::Protocol(_)));
}

#[test]
fn remaining_length_mismatches() {
    // PUBACK 3.1.1 with an extra byte.
    assert!(matches!(err(&[0x40, 0x03, 0x00, 0x01, 0x00], V3), DecodeError::Malformed(_)));
    // PINGREQ with a body.
    assert!(matches!(err(&[0xc0, 0x01, 0x00], V3), DecodeError::Malformed(_)));
    // A string length running past the packet.
    assert!(matches!(err(&[0x30, 0x03, 0x00, 0x05, b'a'], V3), DecodeError::Malformed(_)));
    // Property length running past the packet.
    assert!(matches!(err(&[0x30, 0x05, 0x00, 0x01, b'a', 0x09, 0x01], V5), DecodeError::Malformed(_)));
    // CONNECT with trailing garbage.
    let b = [0x10, 0x0e, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x0a, 0x00, 0x01, b'a', 0x00];
    assert!(matches!(err(&b, None), DecodeError::Malformed(_)));
}

#[test]
fn connect_rules() {
    let base =
        |flags: u8| vec![0x10, 0x0d, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, flags, 0x00, 0x0a, 0x00, 0x01, b'a'];
    assert!(matches!(err(&base(0x03), None), DecodeError::Malformed(_)), "reserved flag");
    assert!(matches!(err(&base(0x08), None), DecodeError::Malformed(_)), "will QoS without will");
    assert!(matches!(err(&base(0x20), None), DecodeError::Malformed(_)), "will retain without will");
    assert!(matches!(err(&base(0x40), None), DecodeError::Protocol(_)), "password without user name (3.1.1)");
    let mut bad_level = base(0x02);
    bad_level[8] = 6;
    let e = err(&bad_level, None);
    assert_eq!((e.reason_code(), e.v3_connack_code()), (ReasonCode::UnsupportedProtocolVersion, Some(1)));
    let mut bad_name = base(0x02);
    bad_name[4] = b'X';
    assert!(matches!(err(&bad_name, None), DecodeError::UnsupportedProtocol { .. }));
    // Anything but CONNECT first; CONNECT twice.
    assert_eq!(err(&[0xc0, 0x00], None), DecodeError::NotConnect);
    assert!(matches!(err(&base(0x02), V3), DecodeError::Protocol(_)));
}

#[test]
fn invalid_reason_codes_and_reserved_types() {
    // PUBACK with a SUBACK-only reason code (0x8F is not allowed in PUBACK).
    assert!(matches!(err(&[0x40, 0x03, 0x00, 0x01, 0x8f], V5), DecodeError::Malformed(_)));
    // Packet type 0 and, in 3.1.1, type 15 (AUTH) are reserved.
    assert!(matches!(err(&[0x00, 0x00], V3), DecodeError::Malformed(_)));
    assert!(matches!(err(&[0xf0, 0x00], V3), DecodeError::Malformed(_)));
}

#[test]
fn encode_refuses_invalid_packets() {
    let mut out = BytesMut::new();
    assert!(encode(&Packet::PubAck(PubResp::ok(0)), ProtocolVersion::V5, &mut out).is_err());
    assert_eq!(
        encode(&Packet::Auth(Auth::default()), ProtocolVersion::V3_1_1, &mut out),
        Err(EncodeError::NotInVersion("AUTH"))
    );
    let p = Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "a".into(),
        packet_id: None,
        properties: Properties::default(),
        payload: Bytes::new(),
    };
    assert!(encode(&Packet::Publish(p), ProtocolVersion::V3_1_1, &mut out).is_err());
}

// ---- round-trip properties ------------------------------------------------------------

fn text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 éü/_-]{0,12}"
}

fn topic_name() -> impl Strategy<Value = String> {
    "[a-z0-9]{1,6}(/[a-z0-9]{0,6}){0,3}"
}

fn topic_filter() -> impl Strategy<Value = String> {
    prop_oneof![
        topic_name(),
        Just("#".to_string()),
        Just("a/+/c".into()),
        Just("$share/grp/x/#".into()),
        Just("+".into())
    ]
}

fn bytes_(max: usize) -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![Just(QoS::AtMostOnce), Just(QoS::AtLeastOnce), Just(QoS::ExactlyOnce)]
}

fn user_props() -> impl Strategy<Value = Vec<(String, String)>> {
    proptest::collection::vec((text(), text()), 0..3)
}

fn publish_props() -> impl Strategy<Value = Properties> {
    (
        proptest::option::of(0u8..=1),
        proptest::option::of(any::<u32>()),
        proptest::option::of(text()),
        proptest::option::of(topic_name()),
        proptest::option::of(bytes_(8)),
        proptest::collection::vec(1u32..=268_435_455, 0..2),
        proptest::option::of(1u16..),
        user_props(),
    )
        .prop_map(|(pfi, exp, ct, rt, cd, sids, alias, up)| Properties {
            payload_format_indicator: pfi,
            message_expiry_interval: exp,
            content_type: ct,
            response_topic: rt,
            correlation_data: cd,
            subscription_identifiers: sids,
            topic_alias: alias,
            user_properties: up,
            ..Properties::default()
        })
}

fn reason(ctx: ReasonContext) -> impl Strategy<Value = ReasonCode> {
    (0u8..=255).prop_filter_map("allowed code", move |b| ReasonCode::from_u8(b).filter(|c| c.allowed_in(ctx)))
}

fn packet(v5: bool) -> BoxedStrategy<Packet> {
    let props = move |p: Properties| if v5 { p } else { Properties::default() };
    let publish = (any::<bool>(), qos(), any::<bool>(), topic_name(), 1u16.., publish_props(), bytes_(64)).prop_map(
        move |(dup, qos, retain, topic, id, properties, payload)| {
            let zero = qos == QoS::AtMostOnce;
            Packet::Publish(Publish {
                dup: dup && !zero,
                qos,
                retain,
                topic: topic.into(),
                packet_id: (!zero).then_some(id),
                properties: props(properties),
                payload,
            })
        },
    );
    let pubresp = (
        0u8..4,
        1u16..,
        reason(ReasonContext::PubAckRec),
        reason(ReasonContext::PubRelComp),
        proptest::option::of(text()),
    )
        .prop_map(move |(kind, id, c1, c2, rs)| {
            let code = if !v5 {
                ReasonCode::Success
            } else if kind < 2 {
                c1
            } else {
                c2
            };
            let properties = Properties { reason_string: rs.filter(|_| v5), ..Properties::default() };
            let r = PubResp { packet_id: id, code, properties };
            match kind {
                0 => Packet::PubAck(r),
                1 => Packet::PubRec(r),
                2 => Packet::PubRel(r),
                _ => Packet::PubComp(r),
            }
        });
    let subscribe = (
        1u16..,
        proptest::collection::vec((topic_filter(), qos(), any::<bool>(), any::<bool>(), 0u8..3), 1..4),
        proptest::option::of(1u32..1000),
    )
        .prop_map(move |(id, subs, sid)| {
            Packet::Subscribe(Subscribe {
                packet_id: id,
                properties: props(Properties {
                    subscription_identifiers: sid.into_iter().collect(),
                    ..Properties::default()
                }),
                subscriptions: subs
                    .into_iter()
                    .map(|(filter, qos, nl, rap, rh)| Subscription {
                        no_local: v5 && nl && !filter.starts_with("$share/"),
                        retain_as_published: v5 && rap,
                        retain_handling: match rh {
                            _ if !v5 => RetainHandling::OnSubscribe,
                            0 => RetainHandling::OnSubscribe,
                            1 => RetainHandling::OnNewSubscribe,
                            _ => RetainHandling::Never,
                        },
                        filter,
                        qos,
                    })
                    .collect(),
            })
        });
    let suback =
        (1u16.., proptest::collection::vec(reason(ReasonContext::SubAck), 1..4)).prop_map(move |(id, codes)| {
            let codes = if v5 {
                codes
            } else {
                codes.into_iter().map(|c| if (c as u8) <= 2 { c } else { ReasonCode::UnspecifiedError }).collect()
            };
            Packet::SubAck(SubAck { packet_id: id, properties: Properties::default(), codes })
        });
    let unsubscribe = (1u16.., proptest::collection::vec(topic_filter(), 1..4)).prop_map(|(id, filters)| {
        Packet::Unsubscribe(Unsubscribe { packet_id: id, properties: Properties::default(), filters })
    });
    let unsuback =
        (1u16.., proptest::collection::vec(reason(ReasonContext::UnsubAck), 1..4)).prop_map(move |(id, codes)| {
            Packet::UnsubAck(UnsubAck {
                packet_id: id,
                properties: Properties::default(),
                codes: if v5 { codes } else { Vec::new() },
            })
        });
    let connack =
        (any::<bool>(), reason(ReasonContext::ConnAck), proptest::option::of(text()), proptest::option::of(1u16..))
            .prop_map(move |(sp, code, aci, rm)| {
                let code = if v5 { code } else { ReasonCode::Success };
                Packet::ConnAck(ConnAck {
                    session_present: sp && code == ReasonCode::Success,
                    code,
                    v3_code: (!v5).then_some(0),
                    properties: props(Properties {
                        assigned_client_identifier: aci,
                        receive_maximum: rm,
                        ..Properties::default()
                    }),
                })
            });
    let disconnect =
        (reason(ReasonContext::Disconnect), proptest::option::of(any::<u32>())).prop_map(move |(code, sei)| {
            Packet::Disconnect(if v5 {
                Disconnect { code, properties: Properties { session_expiry_interval: sei, ..Properties::default() } }
            } else {
                Disconnect::default()
            })
        });
    let connect = (
        text(),
        any::<bool>(),
        any::<u16>(),
        proptest::option::of((topic_name(), bytes_(16), qos(), any::<bool>(), proptest::option::of(any::<u32>()))),
        proptest::option::of(text()),
        proptest::option::of(bytes_(8)),
        proptest::option::of(1u32..),
    )
        .prop_map(move |(client_id, clean, ka, will, user, pass, mps)| {
            let password = if v5 || user.is_some() { pass } else { None };
            Packet::Connect(Box::new(Connect {
                protocol: if v5 { ProtocolVersion::V5 } else { ProtocolVersion::V3_1_1 },
                clean_start: clean,
                keep_alive: ka,
                properties: props(Properties { maximum_packet_size: mps, ..Properties::default() }),
                client_id,
                will: will.map(|(t, p, q, r, wdi)| Will {
                    topic: t.into(),
                    payload: p,
                    qos: q,
                    retain: r,
                    properties: props(Properties { will_delay_interval: wdi, ..Properties::default() }),
                }),
                username: user,
                password,
            }))
        });
    let mut options = vec![
        publish.boxed(),
        pubresp.boxed(),
        subscribe.boxed(),
        suback.boxed(),
        unsubscribe.boxed(),
        unsuback.boxed(),
        connack.boxed(),
        disconnect.boxed(),
        connect.boxed(),
        Just(Packet::PingReq).boxed(),
        Just(Packet::PingResp).boxed(),
    ];
    if v5 {
        options.push(
            (reason(ReasonContext::Auth), proptest::option::of(text()))
                .prop_map(|(code, m)| {
                    Packet::Auth(Auth {
                        code,
                        properties: Properties { authentication_method: m, ..Properties::default() },
                    })
                })
                .boxed(),
        );
    }
    proptest::strategy::Union::new(options).boxed()
}

fn round_trip(p: &Packet, v: ProtocolVersion) -> Result<(), TestCaseError> {
    let wire = reencode(p, v);
    let mut buf = wire.clone();
    let ctx = if matches!(p, Packet::Connect(_)) { None } else { Some(v) };
    let back = decode(&mut buf, ctx, MAX).map_err(|e| TestCaseError::fail(format!("{e} for {p:?} = {wire:02x?}")))?;
    prop_assert_eq!(back.as_ref(), Some(p));
    prop_assert!(buf.is_empty());
    Ok(())
}

proptest! {
    #[test]
    fn v5_round_trip(p in packet(true)) {
        round_trip(&p, ProtocolVersion::V5)?;
    }

    #[test]
    fn v311_round_trip(p in packet(false)) {
        round_trip(&p, ProtocolVersion::V3_1_1)?;
    }

    #[test]
    fn decoder_never_panics(data in proptest::collection::vec(any::<u8>(), 0..256), v in 0u8..3) {
        let version = match v { 0 => None, 1 => V3, _ => V5 };
        let _ = decode(&mut BytesMut::from(&data[..]), version, 1 << 16);
    }
}
