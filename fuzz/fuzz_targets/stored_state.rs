//! The decoders of what the broker reads back from its log (session records, QoS 2
//! entries, stored messages) and the ACL parser: no input may panic them.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| promptmq_broker::fuzzing::stored_state(data));
