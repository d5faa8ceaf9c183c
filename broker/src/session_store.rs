//! Persistent sessions in the log: one compacted stream keyed by client id, whose newest
//! record is the session's expiry, subscriptions and positions in the topic streams (an
//! empty record: the session ended); and, under keys of their own, its QoS 2 state (see
//! [`crate::qos2_store`]). Restored on start: a persistent subscriber keeps its subscriptions
//! and receives, from its positions on, what it has not acknowledged.

use std::collections::HashMap;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::codec::QoS;
use crate::qos2_store::{self, Entry, InboundIntent, OutboundQos2};
use crate::router::SubOptions;

/// What is stored for one persistent session.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct SessionRecord {
    /// Tells this session from earlier ones with the same client id (their QoS 2 entries
    /// are ignored).
    pub(crate) incarnation: u64,
    /// Session expiry interval, seconds (`u32::MAX`: never).
    pub(crate) expiry: u32,
    /// Topic filter → options.
    pub(crate) subs: Vec<(String, SubOptions)>,
    /// Topic → first offset not known to be acknowledged. Written by earlier versions only:
    /// cursors are now entries of their own ([`position_key`]); after a fold, both.
    pub(crate) positions: Vec<(String, u64)>,
    /// Inbound QoS 2 PUBLISHes not yet released (each stored under its own key).
    pub(crate) inbound: Vec<InboundIntent>,
    /// Outbound QoS 2 exchanges (each stored under its own key).
    pub(crate) outbound: Vec<OutboundQos2>,
}

/// The first version had no positions, the second no incarnation.
const VERSION_1: u8 = 1;
const VERSION_2: u8 = 2;
const VERSION: u8 = 3;

/// Marks the key of a cursor: `<client>\0pos\0<topic>` (see [`position_key`]).
const POSITION_MARK: &str = "\0pos\0";
const POSITION_VERSION: u8 = 1;

/// Key of one cursor of a session (or shared subscription group). Each cursor is an entry
/// of its own, so a save writes the cursors that moved — a session following 10 000 topics
/// would otherwise write all of them (about 300 KB) each time one moved — and clears those
/// of streams no longer followed; the value names the session's incarnation. (MQTT strings
/// never contain U+0000, so the key never clashes with a client id.)
pub(crate) fn position_key(client: &str, topic: &str) -> Vec<u8> {
    [client, POSITION_MARK, topic].concat().into_bytes()
}

/// Value of a [`position_key`] entry.
pub(crate) fn encode_position(incarnation: u64, cursor: u64) -> Bytes {
    let mut b = BytesMut::with_capacity(17);
    b.put_u8(POSITION_VERSION);
    b.put_u64(incarnation);
    b.put_u64(cursor);
    b.freeze()
}

/// A decoded [`position_key`] entry: client, topic, and (incarnation, cursor) — `None` for
/// an empty (cleared) or unreadable value.
type PositionEntry = (String, String, Option<(u64, u64)>);

/// A [`position_key`] entry; `None` if the key is not one.
fn decode_position(key: &str, mut value: &[u8]) -> Option<PositionEntry> {
    let (client, topic) = key.split_once(POSITION_MARK)?;
    let v = (value.len() == 17 && value[0] == POSITION_VERSION).then(|| {
        value.advance(1);
        (value.get_u64(), value.get_u64())
    });
    Some((client.to_owned(), topic.to_owned(), v))
}

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
        b.put_u64(self.incarnation);
        b.freeze()
    }

    /// `None` for an empty (ended) or unreadable record.
    pub(crate) fn decode(mut b: &[u8]) -> Option<SessionRecord> {
        if b.remaining() < 9 {
            return None;
        }
        let version = b.get_u8();
        if !(VERSION_1..=VERSION).contains(&version) {
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
        if version >= VERSION_2 {
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
        let incarnation = if version >= VERSION {
            if b.remaining() < 8 {
                return None;
            }
            b.get_u64()
        } else {
            0
        };
        Some(SessionRecord { incarnation, expiry, subs, positions, inbound: Vec::new(), outbound: Vec::new() })
    }
}

/// The sessions stream folded: the live sessions, and the keys of entries to clear.
#[derive(Debug, Default)]
pub(crate) struct Folded {
    pub(crate) sessions: HashMap<String, SessionRecord>,
    /// QoS 1 entries no live session owns (the session ended), and entries in the format of
    /// earlier versions that the restored state now holds: cleared once restored.
    pub(crate) stale: Vec<Vec<u8>>,
}

/// Folds the records of the sessions stream into the live sessions, each with the QoS 1 and
/// QoS 2 entries its incarnation wrote. The newest record of a key decides it, so the fold
/// gets either every record oldest first or just the newest of each key (what
/// `Store::session_records` gives), in any order of keys.
pub(crate) fn fold(records: impl IntoIterator<Item = (String, Bytes)>) -> Folded {
    let mut out = HashMap::new();
    let mut inbound: HashMap<(String, u16), (u64, InboundIntent)> = HashMap::new();
    let mut outbound: HashMap<(String, String, u64), crate::qos2_store::OutboundValue> = HashMap::new();
    let mut qos1: HashMap<(String, u16), qos2_store::Qos1Value> = HashMap::new();
    let mut cursors: HashMap<(String, String), (u64, u64)> = HashMap::new();
    let mut stale = Vec::new();
    for (key, payload) in records {
        if let Some((client, topic, value)) = decode_position(&key, &payload) {
            match value {
                Some(v) => cursors.insert((client, topic), v),
                None => cursors.remove(&(client, topic)),
            };
            continue;
        }
        match qos2_store::decode(&key, &payload) {
            Some(Entry::Qos1 { client, pid, value: Some(v) }) => {
                qos1.insert((client, pid), v);
            }
            Some(Entry::Qos1 { client, pid, value: None }) => {
                qos1.remove(&(client, pid));
            }
            Some(Entry::Inbound { client, pid, value: Some(v) }) => {
                inbound.insert((client, pid), v);
            }
            Some(Entry::Inbound { client, pid, value: None }) => {
                inbound.remove(&(client, pid));
            }
            Some(Entry::Outbound { client, topic, offset, value: Some(v) }) => {
                outbound.insert((client, topic, offset), v);
            }
            Some(Entry::Outbound { client, topic, offset, value: None }) => {
                outbound.remove(&(client, topic, offset));
            }
            None => match SessionRecord::decode(&payload) {
                Some(r) => {
                    out.insert(key, r);
                }
                None => {
                    out.remove(&key);
                }
            },
        }
    }
    for ((client, _), (incarnation, intent)) in inbound {
        if let Some(r) = out.get_mut(&client).filter(|r| r.incarnation == incarnation) {
            r.inbound.push(intent);
        }
    }
    for ((client, topic, offset), (incarnation, pid, state, group)) in outbound {
        if let Some(r) = out.get_mut(&client).filter(|r| r.incarnation == incarnation) {
            if state == qos2_store::Qos2State::Qos1Published {
                // Written at a graceful stop by earlier versions: used once, then cleared.
                stale.push(qos2_store::outbound_key(&client, &topic, offset));
            }
            r.outbound.push(OutboundQos2 { topic, offset, pid, state, group });
        }
    }
    for ((client, pid), (incarnation, topic, offset, group)) in qos1 {
        match out.get_mut(&client).filter(|r| r.incarnation == incarnation) {
            Some(r) => {
                let state = qos2_store::Qos2State::Qos1Published;
                r.outbound.push(OutboundQos2 { topic, offset, pid, state, group });
            }
            None => stale.push(qos2_store::qos1_key(&client, pid)),
        }
    }
    let mut found: HashMap<String, Vec<(String, u64)>> = HashMap::new();
    for ((client, topic), (incarnation, cursor)) in cursors {
        match out.get(&client).filter(|r| r.incarnation == incarnation) {
            Some(_) => found.entry(client).or_default().push((topic, cursor)),
            // Of a session that ended (or an earlier one with the same client id).
            None => stale.push(position_key(&client, &topic)),
        }
    }
    for (client, entries) in found {
        let Some(r) = out.get_mut(&client) else { continue };
        // An entry is newer than the cursors a record of an earlier version holds.
        let mut at: HashMap<String, u64> = std::mem::take(&mut r.positions).into_iter().collect();
        at.extend(entries);
        r.positions = at.into_iter().collect();
        r.positions.sort();
    }
    for r in out.values_mut() {
        drop_superseded_qos1(&mut r.outbound);
        // Resent in the order they were first sent.
        r.outbound.sort_by(|a, b| (&a.topic, a.offset).cmp(&(&b.topic, b.offset)));
        r.inbound.sort_by_key(|i| i.stamp);
    }
    stale.sort();
    Folded { sessions: out, stale }
}

/// Drops the QoS 1 entries whose packet id a QoS 2 exchange still holds (sent or released,
/// not complete). A QoS 1 entry stays until its id is used again, so it can outlive its
/// message's acknowledgement; an id is reused only once free, and a QoS 2 exchange holds its
/// id until it completes — so of the two, the QoS 2 exchange is the live one.
fn drop_superseded_qos1(exchanges: &mut Vec<OutboundQos2>) {
    use crate::qos2_store::Qos2State::{Published, Qos1Published, Released};
    let held: std::collections::HashSet<u16> =
        exchanges.iter().filter(|x| matches!(x.state, Published | Released)).map(|x| x.pid).collect();
    exchanges.retain(|x| x.state != Qos1Published || !held.contains(&x.pid));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qos2_store::Qos2State;

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
            incarnation: 77,
            inbound: Vec::new(),
            outbound: Vec::new(),
        };
        assert_eq!(SessionRecord::decode(&r.encode()), Some(r.clone()));
        let live =
            fold([("c1".to_string(), r.encode()), ("c2".to_string(), r.encode()), ("c1".to_string(), Bytes::new())])
                .sessions;
        assert_eq!(live.keys().collect::<Vec<_>>(), vec!["c2"]);
        assert_eq!(SessionRecord::decode(&[1, 0, 0]), None, "truncated");
        let enc = r.encode();
        assert_eq!(SessionRecord::decode(&enc[..enc.len() - 3]), None, "truncated position");
    }

    #[test]
    fn a_qos1_entry_gives_way_to_a_qos2_exchange_holding_its_packet_id() {
        let x = |topic: &str, offset, pid, state| OutboundQos2 { topic: topic.into(), offset, pid, state, group: None };
        let mut v = vec![
            x("a", 1, 5, Qos2State::Qos1Published), // acknowledged; id 5 since used for QoS 2
            x("b", 9, 5, Qos2State::Published),
            x("a", 2, 6, Qos2State::Qos1Published), // in flight
            x("c", 3, 6, Qos2State::Complete),      // an old exchange with id 6, over
            x("c", 4, 7, Qos2State::Released),
        ];
        drop_superseded_qos1(&mut v);
        let kept: Vec<(u64, u16)> = v.iter().map(|x| (x.offset, x.pid)).collect();
        assert_eq!(kept, vec![(9, 5), (2, 6), (3, 6), (4, 7)]);
    }

    #[test]
    fn cursor_entries_join_the_incarnation_that_wrote_them() {
        let key = |c: &str, t: &str| String::from_utf8(position_key(c, t)).unwrap();
        // A record of an earlier version, holding cursors itself.
        let r = SessionRecord {
            incarnation: 2,
            expiry: 1,
            positions: vec![("a".into(), 10), ("b".into(), 20)],
            ..Default::default()
        };
        let Folded { sessions, stale } = fold([
            ("c".to_string(), r.encode()),
            (key("c", "b"), encode_position(2, 25)),
            (key("c", "n"), encode_position(2, 3)), // a stream the record does not name
            (key("c", "x"), encode_position(1, 3)), // an earlier incarnation's
            (key("gone", "a"), encode_position(2, 9)),
            (key("c", "y"), encode_position(2, 1)),
            (key("c", "y"), Bytes::new()), // no longer followed
        ]);
        assert_eq!(sessions["c"].positions, vec![("a".into(), 10), ("b".into(), 25), ("n".into(), 3)]);
        let mut want = vec![position_key("c", "x"), position_key("gone", "a")];
        want.sort();
        assert_eq!(stale, want, "cursors no live session owns are cleared");
        assert_eq!(decode_position("c\0pos\0t", &[1, 2, 3]), Some(("c".into(), "t".into(), None)), "damaged");
    }

    #[test]
    fn cursors_held_by_an_earlier_versions_record_survive_the_first_saves_after_an_upgrade() {
        let legacy = SessionRecord {
            incarnation: 4,
            expiry: 9,
            positions: vec![("a".into(), 10), ("b".into(), 20)],
            ..Default::default()
        };
        let restored = fold([("c".to_string(), legacy.encode())]).sessions.remove("c").unwrap();
        let mut p = crate::positions::Positions::restored(restored.positions);
        // What a save after the restart writes: every cursor, then a record without them.
        let (moved, dropped) = p.take_changes();
        assert_eq!((moved.clone(), dropped), (vec![("a".into(), 10), ("b".into(), 20)], vec![]));
        let now = SessionRecord { incarnation: 4, expiry: 9, ..Default::default() };
        let mut log: Vec<(String, Bytes)> = vec![("c".to_string(), legacy.encode())];
        for (t, c) in moved {
            log.push((String::from_utf8(position_key("c", &t)).unwrap(), encode_position(4, c)));
        }
        log.push(("c".to_string(), now.encode()));
        assert_eq!(fold(log).sessions["c"].positions, vec![("a".into(), 10), ("b".into(), 20)]);
    }

    #[test]
    fn version_1_records_still_load() {
        // expiry 60, one subscription "a" QoS 1 without options.
        let v1 = [1, 0, 0, 0, 60, 0, 0, 0, 1, 0, 1, b'a', 1, 0, 0, 0, 0, 0];
        let r = SessionRecord::decode(&v1).expect("v1 decodes");
        assert_eq!((r.expiry, r.subs.len(), r.positions.len()), (60, 1, 0));
    }

    #[test]
    fn qos2_entries_join_only_the_incarnation_that_wrote_them() {
        use crate::qos2_store::{encode_inbound, encode_outbound, encode_qos1, inbound_key, outbound_key, qos1_key};
        let key = |k: Vec<u8>| String::from_utf8(k).unwrap();
        let r = SessionRecord { incarnation: 2, expiry: 1, ..Default::default() };
        let intent = |pid| InboundIntent { pid, topic: "t".into(), from: 0, stamp: pid as u64, offset: None };
        let live = fold([
            ("c".to_string(), r.encode()),
            (key(inbound_key("c", 7)), encode_inbound(2, &intent(7))),
            (key(inbound_key("c", 8)), encode_inbound(1, &intent(8))), // an earlier session's
            (key(inbound_key("c", 9)), encode_inbound(2, &intent(9))),
            (key(inbound_key("c", 9)), Bytes::new()), // released
            (key(inbound_key("gone", 1)), encode_inbound(2, &intent(1))),
            (key(outbound_key("c", "a/b", 7)), encode_outbound(2, 5, Qos2State::Published)),
            (key(outbound_key("c", "a/b", 7)), encode_outbound(2, 5, Qos2State::Released)),
            (key(outbound_key("c", "x", 1)), encode_outbound(2, 6, Qos2State::Published)),
            (key(outbound_key("c", "x", 1)), Bytes::new()),
            (key(outbound_key("c", "x", 2)), encode_outbound(1, 6, Qos2State::Complete)),
            (key(qos1_key("c", 1)), encode_qos1(2, "q", 3, None)),
            (key(qos1_key("c", 1)), encode_qos1(2, "q", 9, None)), // the id used again
            (key(qos1_key("c", 2)), encode_qos1(1, "q", 4, None)), // an earlier session's
            (key(qos1_key("c", 3)), encode_qos1(2, "q", 5, None)),
            (key(qos1_key("c", 3)), Bytes::new()),
            (key(qos1_key("gone", 1)), encode_qos1(7, "q", 1, None)),
        ]);
        let Folded { sessions: live, stale } = live;
        assert_eq!(live.len(), 1, "entries of a session without a record are ignored");
        assert_eq!(live["c"].inbound, vec![intent(7)]);
        assert_eq!(
            live["c"].outbound,
            vec![
                OutboundQos2 { topic: "a/b".into(), offset: 7, pid: 5, state: Qos2State::Released, group: None },
                OutboundQos2 { topic: "q".into(), offset: 9, pid: 1, state: Qos2State::Qos1Published, group: None },
            ]
        );
        assert_eq!(stale, vec![qos1_key("c", 2), qos1_key("gone", 1)], "QoS 1 entries no live session owns");
    }
}
