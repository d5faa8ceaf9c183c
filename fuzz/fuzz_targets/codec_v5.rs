//! Fuzzes the MQTT codec's decoder for a connection speaking v5 (properties in
//! `checks/codec.rs`). The first byte picks whether the stream starts before CONNECT.
#![no_main]

#[path = "../checks/codec.rs"]
mod checks;

use promptmq_broker::codec::ProtocolVersion;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((first, rest)) = data.split_first() else { return };
    let version = if first & 1 == 0 { None } else { Some(ProtocolVersion::V5) };
    checks::decoder(rest, version);
});
