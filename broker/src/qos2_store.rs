//! QoS 2 state of persistent sessions, kept in the sessions stream under keys of their own so
//! that each step is one small record:
//!
//! - `<client>\0in\0<pid>`: a QoS 2 PUBLISH the client sent (inbound). Written *before* the
//!   message is appended, with the message's stamp and a lower bound of its offset; after a
//!   crash the broker looks for the stamp in the topic's stream to learn whether the message
//!   made it (then a resent PUBLISH is acknowledged, not stored again) or not (then it is
//!   forgotten, and the resent PUBLISH is stored). Empty once the client released it.
//! - `<client>\0out\0<offset>\0<topic>`: a QoS 2 message the broker sends (outbound): the
//!   packet id and how far the exchange got. Empty once the cursor has passed it.
//! - `<client>\0q1\0<pid>`: the QoS 1 message last sent with packet id `pid` (topic and
//!   offset), written before the PUBLISH goes out, so that after a crash an unacknowledged
//!   one is resent with its original id [MQTT-4.4.0-1]. Keyed by packet id, a later use of the
//!   id replaces it: no clearing record per delivery, and a session holds at most as many of
//!   these as its in-flight window. One whose message the cursor has passed is stale.
//!
//! Every value carries the *incarnation* of the session that wrote it, so entries of an
//! earlier session with the same client id are never mistaken for the current one's.
//! MQTT strings never contain U+0000 [MQTT-1.5.4-2], so these keys never clash with a
//! client id.

use std::collections::HashSet;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::store::Store;

const INBOUND_MARK: &str = "\0in\0";
const OUTBOUND_MARK: &str = "\0out\0";
const QOS1_MARK: &str = "\0q1\0";
const VERSION: u8 = 2;

/// A QoS 2 PUBLISH received from a persistent session and not yet released (PUBREL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InboundIntent {
    pub(crate) pid: u16,
    pub(crate) topic: String,
    /// The topic stream's next offset before the message was appended (it is at or after).
    pub(crate) from: u64,
    /// The stamp the message is stored with.
    pub(crate) stamp: u64,
    /// Where it was stored, once known.
    pub(crate) offset: Option<u64>,
}

/// Where an outbound QoS 2 exchange of a persistent session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Qos2State {
    /// PUBLISH sent with this packet id; awaiting PUBREC.
    Published = 1,
    /// PUBREL sent; awaiting PUBCOMP.
    Released = 2,
    /// Complete: the message must not be sent again (kept until the cursor passes it).
    Complete = 3,
    /// A QoS 1 PUBLISH sent with this packet id (from a `\0q1\0` entry; earlier versions
    /// wrote these under the outbound key at a graceful stop).
    Qos1Published = 4,
}

/// One outbound QoS 2 exchange: the message's place in the log and the packet id used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OutboundQos2 {
    pub(crate) topic: String,
    pub(crate) offset: u64,
    pub(crate) pid: u16,
    pub(crate) state: Qos2State,
    /// The shared subscription the message came through, if any.
    pub(crate) group: Option<String>,
}

/// A decoded entry: `value` is `None` for a cleared one, else (incarnation, state).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Entry {
    Inbound { client: String, pid: u16, value: Option<(u64, InboundIntent)> },
    Outbound { client: String, topic: String, offset: u64, value: Option<OutboundValue> },
    Qos1 { client: String, pid: u16, value: Option<Qos1Value> },
}

/// A QoS 1 message sent with a packet id: incarnation, topic, offset, shared subscription.
pub(crate) type Qos1Value = (u64, String, u64, Option<String>);

/// A stored outbound exchange: incarnation, packet id, state, shared subscription.
pub(crate) type OutboundValue = (u64, u16, Qos2State, Option<String>);

pub(crate) fn inbound_key(client: &str, pid: u16) -> Vec<u8> {
    format!("{client}{INBOUND_MARK}{pid}").into_bytes()
}

pub(crate) fn outbound_key(client: &str, topic: &str, offset: u64) -> Vec<u8> {
    format!("{client}{OUTBOUND_MARK}{offset}\0{topic}").into_bytes()
}

pub(crate) fn qos1_key(client: &str, pid: u16) -> Vec<u8> {
    format!("{client}{QOS1_MARK}{pid}").into_bytes()
}

/// The QoS 1 message at `topic`@`offset` (through shared subscription `group`, if any) sent
/// with the packet id of the key.
pub(crate) fn encode_qos1(incarnation: u64, topic: &str, offset: u64, group: Option<&str>) -> Bytes {
    let mut b = BytesMut::with_capacity(19 + topic.len() + group.map_or(0, str::len));
    b.put_u8(VERSION);
    b.put_u64(incarnation);
    b.put_u64(offset);
    b.put_u16(topic.len() as u16);
    b.put_slice(topic.as_bytes());
    if let Some(g) = group {
        b.put_slice(g.as_bytes());
    }
    b.freeze()
}

/// The key and value recording that packet id `pid` of `client` carries the QoS 1 message
/// at `topic`@`offset` (see [`encode_qos1`]).
pub(crate) fn qos1_entry(
    client: &str,
    incarnation: u64,
    pid: u16,
    topic: &str,
    offset: u64,
    group: Option<&str>,
) -> (Vec<u8>, Bytes) {
    (qos1_key(client, pid), encode_qos1(incarnation, topic, offset, group))
}

pub(crate) fn encode_inbound(incarnation: u64, i: &InboundIntent) -> Bytes {
    let mut b = BytesMut::with_capacity(36 + i.topic.len());
    b.put_u8(VERSION);
    b.put_u64(incarnation);
    b.put_u64(i.from);
    b.put_u64(i.stamp);
    b.put_u8(i.offset.is_some() as u8);
    b.put_u64(i.offset.unwrap_or(0));
    b.put_slice(i.topic.as_bytes());
    b.freeze()
}

#[cfg(test)]
pub(crate) fn encode_outbound(incarnation: u64, pid: u16, state: Qos2State) -> Bytes {
    encode_outbound_group(incarnation, pid, state, None)
}

/// An outbound exchange of a message that came through shared subscription `group`.
pub(crate) fn encode_outbound_group(incarnation: u64, pid: u16, state: Qos2State, group: Option<&str>) -> Bytes {
    let mut b = BytesMut::with_capacity(12 + group.map_or(0, str::len));
    b.put_u8(VERSION);
    b.put_u64(incarnation);
    b.put_u16(pid);
    b.put_u8(state as u8);
    if let Some(g) = group {
        b.put_slice(g.as_bytes());
    }
    b.freeze()
}

/// Decodes a key and value of the sessions stream; `None` if the key is not a QoS 2 entry
/// (or the value is unreadable, which is then ignored like a cleared entry would be).
pub(crate) fn decode(key: &str, value: &[u8]) -> Option<Entry> {
    if let Some((client, pid)) = key.split_once(INBOUND_MARK) {
        let pid: u16 = pid.parse().ok()?;
        let value = if value.is_empty() { None } else { Some(decode_inbound(pid, value)?) };
        return Some(Entry::Inbound { client: client.to_owned(), pid, value });
    }
    if let Some((client, pid)) = key.split_once(QOS1_MARK) {
        let pid: u16 = pid.parse().ok()?;
        let value = if value.is_empty() { None } else { Some(decode_qos1(value)?) };
        return Some(Entry::Qos1 { client: client.to_owned(), pid, value });
    }
    let (client, rest) = key.split_once(OUTBOUND_MARK)?;
    let (offset, topic) = rest.split_once('\0')?;
    let offset: u64 = offset.parse().ok()?;
    let value = if value.is_empty() { None } else { Some(decode_outbound(value)?) };
    Some(Entry::Outbound { client: client.to_owned(), topic: topic.to_owned(), offset, value })
}

fn decode_inbound(pid: u16, mut b: &[u8]) -> Option<(u64, InboundIntent)> {
    if b.remaining() < 34 || b.get_u8() != VERSION {
        return None;
    }
    let incarnation = b.get_u64();
    let from = b.get_u64();
    let stamp = b.get_u64();
    let known = b.get_u8() != 0;
    let offset = b.get_u64();
    let topic = std::str::from_utf8(b).ok()?.to_owned();
    Some((incarnation, InboundIntent { pid, topic, from, stamp, offset: known.then_some(offset) }))
}

fn decode_qos1(mut b: &[u8]) -> Option<Qos1Value> {
    if b.remaining() < 19 || b.get_u8() != VERSION {
        return None;
    }
    let incarnation = b.get_u64();
    let offset = b.get_u64();
    let len = b.get_u16() as usize;
    if b.remaining() < len {
        return None;
    }
    let topic = std::str::from_utf8(&b[..len]).ok()?.to_owned();
    b.advance(len);
    let group = if b.is_empty() { None } else { Some(std::str::from_utf8(b).ok()?.to_owned()) };
    Some((incarnation, topic, offset, group))
}

fn decode_outbound(mut b: &[u8]) -> Option<OutboundValue> {
    if b.remaining() < 12 || b.get_u8() != VERSION {
        return None;
    }
    let incarnation = b.get_u64();
    let pid = b.get_u16();
    let state = match b.get_u8() {
        1 => Qos2State::Published,
        2 => Qos2State::Released,
        3 => Qos2State::Complete,
        4 => Qos2State::Qos1Published,
        _ => return None,
    };
    let group = if b.is_empty() { None } else { Some(std::str::from_utf8(b).ok()?.to_owned()) };
    Some((incarnation, pid, state, group))
}

/// Splits a restored session's inbound intents into the packet ids whose messages are in
/// the log (a resent PUBLISH with one of them is acknowledged, not stored again) and those
/// whose messages are not (the broker stopped between the intent and the message: the id is
/// forgotten, so the resent PUBLISH is stored).
pub(crate) fn stored_inbound(store: &Store, intents: &[InboundIntent]) -> (HashSet<u16>, Vec<u16>) {
    let mut stored = HashSet::new();
    let mut forgotten = Vec::new();
    for i in intents {
        let found = match i.offset {
            Some(_) => true,
            None => match store.find_stamp(&i.topic, i.from, i.stamp) {
                Ok(found) => found.is_some(),
                Err(e) => {
                    // Unknown: keeping the id risks losing the resent message, forgetting it
                    // risks a duplicate; a duplicate is the lesser harm.
                    tracing::warn!(topic = %i.topic, error = %e, "cannot check an inbound QoS 2 message");
                    false
                }
            },
        };
        if found {
            stored.insert(i.pid);
        } else {
            forgotten.push(i.pid);
        }
    }
    (stored, forgotten)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_intent_counts_only_if_its_message_is_in_the_log() {
        use crate::message::{new_stamp, Message};
        use std::sync::Arc;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), promptmq_wal::SyncMode::None).unwrap();
        let msg = |topic: &str| Message {
            topic: topic.into(),
            payload: Bytes::from_static(b"m"),
            qos: crate::codec::QoS::ExactlyOnce,
            retain: false,
            properties: Default::default(),
            publisher: Arc::from("p"),
            expires_at: None,
        };
        // Other messages before and after: the search starts at `from` and reads on.
        store.append(&msg("t")).wait().unwrap();
        let (made_it, lost) = (new_stamp(), new_stamp());
        store.append_stamped(&msg("t"), made_it).wait().unwrap();
        for _ in 0..3 {
            store.append(&msg("t")).wait().unwrap();
        }
        let intent = |pid, stamp, offset| InboundIntent { pid, topic: "t".into(), from: 1, stamp, offset };
        let (stored, forgotten) = stored_inbound(
            &store,
            &[
                intent(1, made_it, None),
                intent(2, lost, None),
                intent(3, lost, Some(9)),
                InboundIntent { pid: 4, topic: "never".into(), from: 0, stamp: lost, offset: None },
            ],
        );
        assert_eq!(stored, HashSet::from([1, 3]));
        assert_eq!(forgotten, vec![2, 4]);
        store.close();
    }

    fn key(k: Vec<u8>) -> String {
        String::from_utf8(k).unwrap()
    }

    #[test]
    fn entries_round_trip() {
        let i = InboundIntent { pid: 7, topic: "a/b".into(), from: 3, stamp: 99, offset: Some(5) };
        assert_eq!(
            decode(&key(inbound_key("c", 7)), &encode_inbound(42, &i)),
            Some(Entry::Inbound { client: "c".into(), pid: 7, value: Some((42, i)) })
        );
        assert_eq!(
            decode(&key(outbound_key("c", "x/y", 9)), &encode_outbound(42, 5, Qos2State::Released)),
            Some(Entry::Outbound {
                client: "c".into(),
                topic: "x/y".into(),
                offset: 9,
                value: Some((42, 5, Qos2State::Released, None))
            })
        );
        assert_eq!(
            decode(&key(outbound_key("c", "x", 1)), &[]),
            Some(Entry::Outbound { client: "c".into(), topic: "x".into(), offset: 1, value: None })
        );
        assert_eq!(
            decode(&key(qos1_key("c", 65535)), &encode_qos1(42, "a/b", 7, Some("$share/g/a/+"))),
            Some(Entry::Qos1 {
                client: "c".into(),
                pid: 65535,
                value: Some((42, "a/b".into(), 7, Some("$share/g/a/+".into())))
            })
        );
        assert_eq!(
            decode(&key(qos1_key("c", 3)), &encode_qos1(1, "t", 0, None)),
            Some(Entry::Qos1 { client: "c".into(), pid: 3, value: Some((1, "t".into(), 0, None)) })
        );
        assert_eq!(decode("plain-client", &[1, 2, 3]), None, "a session record's key");
    }

    #[test]
    fn damaged_values_are_refused() {
        let i = InboundIntent { pid: 1, topic: "t".into(), from: 0, stamp: 1, offset: None };
        let v = encode_inbound(1, &i);
        assert_eq!(decode(&key(inbound_key("c", 1)), &v[..10]), None);
        assert_eq!(decode(&key(outbound_key("c", "t", 1)), &[VERSION, 0, 0]), None);
        let q = encode_qos1(1, "topic", 1, None);
        assert_eq!(decode(&key(qos1_key("c", 1)), &q[..q.len() - 1]), None, "topic cut short");
        assert_eq!(decode("c\0q1\0x", &q), None, "not a packet id");
        let mut bad = encode_outbound(1, 1, Qos2State::Complete).to_vec();
        bad[11] = 9;
        assert_eq!(decode(&key(outbound_key("c", "t", 1)), &bad), None);
    }
}
