//! The properties the MQTT codec fuzz targets check, shared with the stable corpus replay
//! test (`broker/tests/fuzz_corpus.rs`).

use bytes::BytesMut;
use promptmq_broker::codec::{decode, encode, Packet, ProtocolVersion};

/// Decodes `data` as a stream of packets of one connection (`version`, or CONNECT first when
/// `None`): never a panic; every decoded packet re-encodes and decodes back to itself.
/// Returns how many packets decoded.
pub fn decoder(data: &[u8], version: Option<ProtocolVersion>) -> usize {
    let mut buf = BytesMut::from(data);
    let mut v = version;
    let mut n = 0;
    while let Ok(Some(p)) = decode(&mut buf, v, 1 << 20) {
        let wire_version = match &p {
            Packet::Connect(c) => c.protocol,
            _ => v.unwrap_or(ProtocolVersion::V5),
        };
        let mut wire = BytesMut::new();
        encode(&p, wire_version, &mut wire).expect("a decoded packet encodes");
        let ctx = if matches!(p, Packet::Connect(_)) { None } else { v };
        let back = decode(&mut wire, ctx, 1 << 20).expect("re-encoded packet decodes").expect("whole");
        assert_eq!(back, p, "round trip changed the packet");
        if let Packet::Connect(c) = &p {
            v = Some(c.protocol);
        }
        n += 1;
    }
    n
}
