//! Persistent sessions' subscriptions in the log: one compacted stream keyed by client id,
//! whose newest record is the session's subscriptions and expiry (an empty record: the
//! session ended). Restored on start so a persistent subscriber keeps its subscriptions
//! across a restart. (Messages queued for it in memory at a crash are not yet restored;
//! see issue 5.)

use std::collections::HashMap;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::codec::QoS;
use crate::router::SubOptions;

/// What is stored for one persistent session.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct SessionRecord {
    /// Session expiry interval, seconds (`u32::MAX`: never).
    pub(crate) expiry: u32,
    /// Topic filter → options.
    pub(crate) subs: Vec<(String, SubOptions)>,
}

const VERSION: u8 = 1;

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
        b.freeze()
    }

    /// `None` for an empty (ended) or unreadable record.
    pub(crate) fn decode(mut b: &[u8]) -> Option<SessionRecord> {
        if b.remaining() < 9 || b.get_u8() != VERSION {
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
        Some(SessionRecord { expiry, subs })
    }
}

/// Folds the records of the sessions stream (oldest first) into the live sessions.
pub(crate) fn fold(records: impl IntoIterator<Item = (String, Bytes)>) -> HashMap<String, SessionRecord> {
    let mut out = HashMap::new();
    for (client, payload) in records {
        match SessionRecord::decode(&payload) {
            Some(r) => {
                out.insert(client, r);
            }
            None => {
                out.remove(&client);
            }
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
        };
        assert_eq!(SessionRecord::decode(&r.encode()), Some(r.clone()));
        let live =
            fold([("c1".to_string(), r.encode()), ("c2".to_string(), r.encode()), ("c1".to_string(), Bytes::new())]);
        assert_eq!(live.keys().collect::<Vec<_>>(), vec!["c2"]);
        assert_eq!(SessionRecord::decode(&[1, 0, 0]), None, "truncated");
    }
}
