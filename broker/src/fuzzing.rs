//! Entry points for the fuzz targets (`fuzz/`): the decoders of what the broker reads back
//! from its log (session records, QoS 2 entries, stored messages) and of the ACL file. Not
//! an API: hidden from the docs, stable only as far as the fuzz targets need.

use std::time::Duration;

use bytes::Bytes;

/// The `stored_state` fuzz target's input: the first byte chooses stored records (even:
/// the next byte modulo 40 is the key length) or ACL text (odd).
pub fn stored_state(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode & 1 == 0 {
        let split = (rest.first().copied().unwrap_or(0) as usize % 40).min(rest.len());
        decode_stored(&String::from_utf8_lossy(&rest[..split]), &rest[split..]);
    } else {
        parse_acl(&String::from_utf8_lossy(rest));
    }
}

/// Decodes `value` as every kind of record the sessions and topic streams hold, with `key`
/// where a key matters; must never panic whatever the bytes.
pub fn decode_stored(key: &str, value: &[u8]) {
    let _ = crate::session_store::SessionRecord::decode(value);
    let _ = crate::qos2_store::decode(key, value);
    let _ = crate::session_store::fold([(key.to_string(), Bytes::copy_from_slice(value))]).stale;
    if let Some(m) = crate::message::Message::from_record(Bytes::copy_from_slice(value), Duration::from_secs(1)) {
        // Whatever decodes must encode again.
        let _ = m.to_record(std::time::Instant::now());
    }
    let _ = crate::message::Message::record_stamp(value);
}

/// Parses `text` as an ACL file and applies the result to a client; must never panic.
pub fn parse_acl(text: &str) {
    if let Ok(acl) = crate::auth::Acl::parse(text) {
        let c = acl.for_client(Some("user"), "client");
        let _ = c.may_publish("a/b") && c.may_subscribe("a/#") && c.may_receive("a/b");
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn stored_state_decoders_never_panic(key in ".{0,40}", value in proptest::collection::vec(any::<u8>(), 0..200)) {
            super::decode_stored(&key, &value);
        }

        #[test]
        fn stored_state_decoders_never_panic_on_near_valid_input(
            flip in 0usize..64,
            topic in "[a-z/]{1,12}",
        ) {
            // Start from valid encodings and damage one byte.
            use crate::qos2_store::*;
            let i = InboundIntent { pid: 3, topic: topic.clone(), from: 1, stamp: 2, offset: Some(4) };
            let mut v = encode_inbound(9, &i).to_vec();
            let at = flip % v.len();
            v[at] ^= 0x5a;
            super::decode_stored(&String::from_utf8(inbound_key("c", 3)).unwrap(), &v);
            let key = String::from_utf8(crate::session_store::position_key("c", &topic)).unwrap();
            let mut v = crate::session_store::encode_position(9, 11).to_vec();
            let at = flip % v.len();
            v[at] ^= 0x5a;
            super::decode_stored(&key, &v);
            let r = crate::session_store::SessionRecord { expiry: 5, positions: vec![(topic, 7)], ..Default::default() };
            let mut v = r.encode().to_vec();
            let at = flip % v.len();
            v[at] ^= 0x5a;
            super::decode_stored("c", &v);
        }

        #[test]
        fn acl_parser_never_panics(text in "(user [a-z]{1,5}\n|topic (read |write |deny )?[a-z/+#%uc]{0,10}\n|pattern [a-z/+#%uc]{0,10}\n|[ -~]{0,20}\n){0,8}") {
            super::parse_acl(&text);
        }
    }
}
