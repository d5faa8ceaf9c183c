//! Persistent sessions in the log: one compacted stream keyed by client id, whose newest
//! record is the session's expiry, subscriptions and positions in the topic streams (an
//! empty record: the session ended); and, under the key `<client id>\0in`, the QoS 2 packet
//! ids the client sent and has not released yet. Restored on start: a persistent subscriber
//! keeps its subscriptions and receives, from its positions on, what it has not acknowledged.

use std::collections::HashMap;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::codec::QoS;
use crate::router::SubOptions;
use crate::store::INBOUND_SUFFIX;

/// What is stored for one persistent session.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct SessionRecord {
    /// Session expiry interval, seconds (`u32::MAX`: never).
    pub(crate) expiry: u32,
    /// Topic filter → options.
    pub(crate) subs: Vec<(String, SubOptions)>,
    /// Topic → first offset not known to be acknowledged.
    pub(crate) positions: Vec<(String, u64)>,
    /// Inbound QoS 2 packet ids awaiting PUBREL (stored under their own key).
    pub(crate) inbound: Vec<u16>,
    /// Outbound QoS 2 exchanges (each stored under its own key).
    pub(crate) outbound: Vec<OutboundQos2>,
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
}

/// One outbound QoS 2 exchange: the message's place in the log and the packet id used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OutboundQos2 {
    pub(crate) topic: String,
    pub(crate) offset: u64,
    pub(crate) pid: u16,
    pub(crate) state: Qos2State,
}

/// Marks the keys of outbound QoS 2 exchanges: `<client>\0out\0<offset>\0<topic>`.
const OUTBOUND_MARK: &str = "\0out\0";

/// The key of the outbound QoS 2 exchange for `topic`@`offset` of `client`.
pub(crate) fn outbound_key(client: &str, topic: &str, offset: u64) -> Vec<u8> {
    format!("{client}{OUTBOUND_MARK}{offset}\0{topic}").into_bytes()
}

/// A stored outbound key and value: client, topic, offset, and (packet id, state), or
/// `None` for a forgotten exchange.
type OutboundEntry = (String, String, u64, Option<(u16, Qos2State)>);

/// Decodes an outbound exchange's key and value (`None`: not such a key).
fn decode_outbound(key: &str, value: &[u8]) -> Option<OutboundEntry> {
    let (client, rest) = key.split_once(OUTBOUND_MARK)?;
    let (offset, topic) = rest.split_once('\0')?;
    let offset: u64 = offset.parse().ok()?;
    let state = match value {
        [1, a, b, st] => Some((
            u16::from_be_bytes([*a, *b]),
            match st {
                1 => Qos2State::Published,
                2 => Qos2State::Released,
                3 => Qos2State::Complete,
                _ => return None,
            },
        )),
        _ => None,
    };
    Some((client.to_owned(), topic.to_owned(), offset, state))
}

/// The first version had no positions.
const VERSION_1: u8 = 1;
const VERSION: u8 = 2;

impl SessionRecord {
    pub(crate) fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(8 + self.subs.iter().map(|(f, _)| f.len() + 9).sum::<usize>());
        b.put_u8(VERSION);
        b.put_u32(self.expiry);
        b.put_u32(self.subs.len() as u32);
        for (filter, o) in &self.subs {
            b.put_u16(filter.len().min(u16::MAX as usize) as u16);
            b.put_slice(&filter.as_bytes()[..filter.len().min(u16::MAX as usize)]);
            b.put_u8(o.qos as u8);
            b.put_u8(o.no_local as u8 | (o.retain_as_published as u8) << 1 | (o.id.is_some() as u8) << 2);
            b.put_u32(o.id.unwrap_or(0));
        }
        b.put_u32(self.positions.len() as u32);
        for (topic, offset) in &self.positions {
            b.put_u16(topic.len().min(u16::MAX as usize) as u16);
            b.put_slice(&topic.as_bytes()[..topic.len().min(u16::MAX as usize)]);
            b.put_u64(*offset);
        }
        b.freeze()
    }

    /// `None` for an empty (ended) or unreadable record.
    pub(crate) fn decode(mut b: &[u8]) -> Option<SessionRecord> {
        if b.remaining() < 9 {
            return None;
        }
        let version = b.get_u8();
        if version != VERSION && version != VERSION_1 {
            return None;
        }
        let expiry = b.get_u32();
        let n = b.get_u32() as usize;
        let mut subs = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            if b.remaining() < 2 {
                return None;
            }
            let len = b.get_u16() as usize;
            if b.remaining() < len + 6 {
                return None;
            }
            let filter = std::str::from_utf8(&b[..len]).ok()?.to_owned();
            b.advance(len);
            let qos = QoS::from_u8(b.get_u8())?;
            let flags = b.get_u8();
            let id = b.get_u32();
            subs.push((
                filter,
                SubOptions {
                    qos,
                    no_local: flags & 1 != 0,
                    retain_as_published: flags & 2 != 0,
                    id: (flags & 4 != 0).then_some(id),
                },
            ));
        }
        let mut positions = Vec::new();
        if version >= VERSION {
            if b.remaining() < 4 {
                return None;
            }
            let n = b.get_u32() as usize;
            positions.reserve(n.min(4096));
            for _ in 0..n {
                if b.remaining() < 2 {
                    return None;
                }
                let len = b.get_u16() as usize;
                if b.remaining() < len + 8 {
                    return None;
                }
                let topic = std::str::from_utf8(&b[..len]).ok()?.to_owned();
                b.advance(len);
                positions.push((topic, b.get_u64()));
            }
        }
        Some(SessionRecord { expiry, subs, positions, inbound: Vec::new(), outbound: Vec::new() })
    }
}

/// Decodes the packet ids stored by `Store::save_inbound`.
fn decode_inbound(b: &[u8]) -> Vec<u16> {
    match b.split_first() {
        Some((1, ids)) => ids.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect(),
        _ => Vec::new(),
    }
}

/// Folds the records of the sessions stream (oldest first) into the live sessions.
pub(crate) fn fold(records: impl IntoIterator<Item = (String, Bytes)>) -> HashMap<String, SessionRecord> {
    let mut out = HashMap::new();
    let mut inbound = HashMap::new();
    let mut outbound: HashMap<(String, String, u64), (u16, Qos2State)> = HashMap::new();
    for (key, payload) in records {
        if let Some((client, topic, offset, state)) = decode_outbound(&key, &payload) {
            match state {
                Some(st) => outbound.insert((client, topic, offset), st),
                None => outbound.remove(&(client, topic, offset)),
            };
            continue;
        }
        if let Some(client) = key.strip_suffix(INBOUND_SUFFIX) {
            inbound.insert(client.to_owned(), decode_inbound(&payload));
            continue;
        }
        let client = key;
        match SessionRecord::decode(&payload) {
            Some(r) => {
                out.insert(client, r);
            }
            None => {
                out.remove(&client);
            }
        }
    }
    for (client, ids) in inbound {
        if let Some(r) = out.get_mut(&client) {
            r.inbound = ids;
        }
    }
    for ((client, topic, offset), (pid, state)) in outbound {
        if let Some(r) = out.get_mut(&client) {
            r.outbound.push(OutboundQos2 { topic, offset, pid, state });
        }
    }
    for r in out.values_mut() {
        // Resent in the order they were first sent.
        r.outbound.sort_by(|a, b| (&a.topic, a.offset).cmp(&(&b.topic, b.offset)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_empty_ends_a_session() {
        let r = SessionRecord {
            expiry: 3600,
            subs: vec![
                (
                    "a/+".into(),
                    SubOptions { qos: QoS::AtLeastOnce, no_local: true, retain_as_published: false, id: Some(9) },
                ),
                (
                    "$share/g/b".into(),
                    SubOptions { qos: QoS::ExactlyOnce, no_local: false, retain_as_published: true, id: None },
                ),
            ],
            positions: vec![("a/x".into(), 7), ("a/y".into(), 0)],
            inbound: Vec::new(),
            outbound: Vec::new(),
        };
        assert_eq!(SessionRecord::decode(&r.encode()), Some(r.clone()));
        let live =
            fold([("c1".to_string(), r.encode()), ("c2".to_string(), r.encode()), ("c1".to_string(), Bytes::new())]);
        assert_eq!(live.keys().collect::<Vec<_>>(), vec!["c2"]);
        assert_eq!(SessionRecord::decode(&[1, 0, 0]), None, "truncated");
        let enc = r.encode();
        assert_eq!(SessionRecord::decode(&enc[..enc.len() - 3]), None, "truncated position");
    }

    #[test]
    fn version_1_records_still_load() {
        // expiry 60, one subscription "a" QoS 1 without options.
        let v1 = [1, 0, 0, 0, 60, 0, 0, 0, 1, 0, 1, b'a', 1, 0, 0, 0, 0, 0];
        let r = SessionRecord::decode(&v1).expect("v1 decodes");
        assert_eq!((r.expiry, r.subs.len(), r.positions.len()), (60, 1, 0));
    }

    #[test]
    fn inbound_packet_ids_join_their_session() {
        let r = SessionRecord { expiry: 1, ..Default::default() };
        let live = fold([
            ("c".to_string(), r.encode()),
            (format!("c{INBOUND_SUFFIX}"), Bytes::from_static(&[1, 0, 7, 1, 0])),
            (format!("gone{INBOUND_SUFFIX}"), Bytes::from_static(&[1, 0, 9])),
        ]);
        assert_eq!(live["c"].inbound, vec![7, 256]);
        assert_eq!(live.len(), 1, "ids of a session without a record are ignored");
    }

    #[test]
    fn outbound_exchanges_fold_to_their_latest_state() {
        let r = SessionRecord { expiry: 1, ..Default::default() };
        let key = |t: &str, o: u64| String::from_utf8(outbound_key("c", t, o)).unwrap();
        let live = fold([
            ("c".to_string(), r.encode()),
            (key("a/b", 7), Bytes::from_static(&[1, 0, 5, 1])),
            (key("a/b", 7), Bytes::from_static(&[1, 0, 5, 2])),
            (key("x", 1), Bytes::from_static(&[1, 0, 6, 1])),
            (key("x", 1), Bytes::new()),
            (key("x", 2), Bytes::from_static(&[1, 0, 6, 9])),
        ]);
        assert_eq!(
            live["c"].outbound,
            vec![OutboundQos2 { topic: "a/b".into(), offset: 7, pid: 5, state: Qos2State::Released }]
        );
    }
}
