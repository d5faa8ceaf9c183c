//! The decoders of what the broker reads back from its log (session records, QoS 2
//! entries, stored messages) and the ACL parser: no input may panic them.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode & 1 == 0 {
        let split = (rest.first().copied().unwrap_or(0) as usize % 40).min(rest.len());
        let key = String::from_utf8_lossy(&rest[..split]);
        promptmq_broker::fuzzing::decode_stored(&key, &rest[split..]);
    } else {
        promptmq_broker::fuzzing::parse_acl(&String::from_utf8_lossy(rest));
    }
});
