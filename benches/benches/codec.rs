//! Codec throughput: decode and encode of a typical PUBLISH (32-byte topic, 128 B and 4 KiB
//! payloads, both protocol versions) and of a CONNECT with properties.
//! Run: `cargo bench -p promptmq-benches --bench codec`

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use promptmq_broker::codec::*;

fn publish(payload: usize) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "building-7/floor-3/room-12/temp".into(), // 32 bytes
        packet_id: Some(4242),
        properties: Properties::default(),
        payload: Bytes::from(vec![0x5a; payload]),
    })
}

fn connect() -> Packet {
    Packet::Connect(Box::new(Connect {
        protocol: ProtocolVersion::V5,
        clean_start: false,
        keep_alive: 60,
        properties: Properties {
            session_expiry_interval: Some(3600),
            receive_maximum: Some(100),
            maximum_packet_size: Some(1 << 20),
            topic_alias_maximum: Some(10),
            user_properties: vec![("region".into(), "eu-west".into())],
            ..Properties::default()
        },
        client_id: "sensor-gateway-0042".into(),
        will: Some(Will {
            topic: "status/sensor-gateway-0042".into(),
            payload: Bytes::from_static(b"offline"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Properties { will_delay_interval: Some(5), ..Properties::default() },
        }),
        username: Some("gateway".into()),
        password: Some(Bytes::from_static(b"s3cret")),
    }))
}

fn bench(c: &mut Criterion) {
    let cases = [("publish_128B", publish(128)), ("publish_4KiB", publish(4096)), ("connect_props", connect())];
    for (name, packet) in cases {
        for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
            if matches!(packet, Packet::Connect(_)) && version != ProtocolVersion::V5 {
                continue;
            }
            let mut wire = BytesMut::new();
            encode(&packet, version, &mut wire).expect("encode");
            let wire = wire.freeze();
            let ctx = if matches!(packet, Packet::Connect(_)) { None } else { Some(version) };
            let mut g = c.benchmark_group(format!("{name}_{version:?}"));
            g.throughput(Throughput::Elements(1));
            g.bench_function("decode", |b| {
                b.iter_batched(
                    || BytesMut::from(&wire[..]),
                    |mut buf| decode(&mut buf, ctx, 1 << 20).expect("decode").expect("whole"),
                    BatchSize::SmallInput,
                )
            });
            let mut out = BytesMut::with_capacity(8192);
            g.bench_function("encode", |b| {
                b.iter(|| {
                    out.clear();
                    encode(&packet, version, &mut out).expect("encode");
                })
            });
            g.finish();
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
