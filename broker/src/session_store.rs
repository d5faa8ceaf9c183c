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
        Some(SessionRecord { expiry, subs, positions, inbound: Vec::new() })
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
    for (key, payload) in records {
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
}
