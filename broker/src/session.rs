//! Sessions: what the broker keeps for a client between its connections — subscriptions,
//! the queue of messages waiting for it, unacknowledged outbound QoS 1/2 messages, received
//! QoS 2 packet ids awaiting PUBREL, and its positions in the log. Bounded: the queue holds
//! at most `max_queued_messages`. Beyond that a message that is in the log is left there and
//! read back when the queue has room (see [`crate::positions`]); one that is not (QoS 0) is
//! dropped and counted.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use tokio::sync::{oneshot, Notify};

use crate::codec::topic;
use crate::codec::{QoS, ReasonCode};
use crate::limits::QueueLimit;
use crate::message::Message;
use crate::positions::{Offer, Positions};
use crate::router::SubOptions;

/// A message on its way to one client.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    pub(crate) msg: Arc<Message>,
    pub(crate) qos: QoS,
    pub(crate) retain: bool,
    pub(crate) ids: Vec<u32>,
    /// The shared subscription it came through, if any (for redelivery to another member).
    pub(crate) shared: Option<Arc<str>>,
    /// The message's offset in its topic's stream, when the session tracks it (a logged
    /// message on a plain subscription).
    pub(crate) pos: Option<u64>,
}

impl Delivery {
    /// `msg` as delivered through what `t` matched: the QoS capped at the granted one,
    /// RETAIN kept only where asked for, the subscription identifiers, and the shared
    /// subscription if it came through one. `pos`: its offset, where the session or group
    /// tracks it.
    pub(crate) fn through(msg: &Arc<Message>, t: &crate::router::Target, pos: Option<u64>) -> Delivery {
        Delivery {
            msg: msg.clone(),
            qos: msg.qos.min(t.qos),
            retain: msg.retain && t.retain_as_published,
            ids: t.ids.clone(),
            shared: t.shared.clone(),
            pos,
        }
    }

    /// Bytes it holds in a queue (payload and topic; the message itself is shared).
    pub(crate) fn size(&self) -> usize {
        self.msg.payload.len() + self.msg.topic.len()
    }

    /// (topic, offset) when this delivery moves the session's position in the log.
    pub(crate) fn logged(&self) -> Option<(&str, u64)> {
        self.pos.map(|o| (self.msg.topic.as_str(), o))
    }
}

/// What became of a delivery offered to a session.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Queued {
    /// Queued for the client.
    Yes,
    /// Left in the log, to be read from there.
    InLog,
    /// Dropped: the queue is full and the message is not in the log.
    Dropped,
}

/// State of an unacknowledged outbound message.
#[derive(Debug, Clone)]
pub(crate) enum Outbound {
    /// PUBLISH sent; awaiting PUBACK (QoS 1) or PUBREC (QoS 2).
    Publish(Delivery),
    /// PUBREL sent; awaiting PUBCOMP. Keeps the (topic, offset) the message had in the log
    /// and the shared subscription it came through, if any.
    Released(Option<(Arc<str>, u64)>, Option<Arc<str>>),
}

#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) subs: HashMap<String, SubOptions>,
    pub(crate) queue: VecDeque<Delivery>,
    /// Payload and topic bytes of `queue`.
    queue_bytes: usize,
    /// In send order (resent in this order after a reconnect [MQTT-4.4.0-1]).
    pub(crate) inflight: VecDeque<(u16, Outbound)>,
    pub(crate) inbound_qos2: HashSet<u16>,
    next_pid: u16,
    /// Incremented by each connection that takes the session.
    pub(crate) generation: u64,
    pub(crate) connected: bool,
    /// Wakes the connection's writer when the queue grows.
    pub(crate) wake: Arc<Notify>,
    /// Tells the current connection to close (session takeover).
    pub(crate) kick: Option<oneshot::Sender<ReasonCode>>,
    /// Seconds the session outlives its connection (`u32::MAX`: forever).
    pub(crate) expiry: u32,
    pub(crate) dropped: u64,
    /// The client id (for no-local when reading back from the log).
    pub(crate) client_id: Option<Arc<str>>,
    pub(crate) positions: Positions,
    /// Queued for a save of its positions.
    pub(crate) save_queued: bool,
    /// Tells this session from earlier ones of the same client id in the log.
    pub(crate) incarnation: u64,
    /// Messages it could not take before they were durable and that are not routed yet
    /// (see [`crate::early_delivery`]): while any is, it takes nothing early, so what it
    /// gets keeps publish order.
    pub(crate) early_declined: u32,
}

impl Session {
    pub(crate) fn new() -> Session {
        Session {
            subs: HashMap::new(),
            queue: VecDeque::new(),
            queue_bytes: 0,
            inflight: VecDeque::new(),
            inbound_qos2: HashSet::new(),
            next_pid: 1,
            generation: 0,
            connected: false,
            wake: Arc::new(Notify::new()),
            kick: None,
            expiry: 0,
            dropped: 0,
            client_id: None,
            positions: Positions::default(),
            save_queued: false,
            incarnation: crate::message::new_stamp(),
            early_declined: 0,
        }
    }

    /// Whether the session outlives its connection (and so is saved in the log).
    pub(crate) fn persistent(&self) -> bool {
        self.expiry > 0
    }

    /// Offers a routed delivery: logged ones go through the session's positions (left in
    /// the log while the session is offline or its queue is full), others are queued or,
    /// with the queue full, dropped.
    pub(crate) fn offer(&mut self, d: Delivery, max: QueueLimit) -> Queued {
        if let Some((topic, offset)) = d.logged() {
            let room = self.connected && !self.queue_full(max);
            return match self.positions.offer(topic, offset, room) {
                Offer::Take => {
                    self.queue_push(d);
                    self.wake.notify_one();
                    Queued::Yes
                }
                Offer::Skip => {
                    if !room && self.connected {
                        // Let the connection notice it has the log to read.
                        self.wake.notify_one();
                    }
                    Queued::InLog
                }
            };
        }
        if self.enqueue(d, max) {
            Queued::Yes
        } else {
            Queued::Dropped
        }
    }

    /// Offers a delivery of a message that is not durable yet (see [`crate::early_delivery`]).
    /// `None`: not for this session (it outlives its connection, or has none), it gets the
    /// message once durable; `Some(true)`: queued; `Some(false)`: declined (reading the log,
    /// queue full, or an earlier one declined and not routed yet), it gets the message once
    /// durable, and nothing early meanwhile.
    pub(crate) fn offer_early(&mut self, d: Delivery, max: QueueLimit) -> Option<bool> {
        if self.persistent() || !self.connected {
            return None;
        }
        if self.early_declined > 0 || self.positions.replaying() || self.queue_full(max) {
            self.early_declined += 1;
            return Some(false);
        }
        self.enqueue_unchecked(d);
        Some(true)
    }

    /// The delivery is finished with (acknowledged, or never to be sent): its log position
    /// is no longer outstanding.
    pub(crate) fn done(&mut self, logged: Option<(&str, u64)>) {
        if let Some((topic, offset)) = logged {
            self.positions.done(topic, offset);
        }
    }

    /// How a message on `topic` read back from the log is delivered to this session: the
    /// combined options of its matching plain subscriptions (MQTT 5 section 3.3.4), or
    /// `None` if none matches any more. No-local is applied by the caller, which knows the
    /// publisher.
    pub(crate) fn delivery_options(&self, topic_name: &str, publisher: &str) -> Option<(QoS, bool, Vec<u32>)> {
        let mut found: Option<(QoS, bool, Vec<u32>)> = None;
        for (filter, o) in &self.subs {
            if topic::parse_shared(filter).is_some() || !topic::matches(filter, topic_name) {
                continue;
            }
            if o.no_local && !publisher.is_empty() && self.client_is(publisher) {
                continue;
            }
            let f = found.get_or_insert((o.qos, false, Vec::new()));
            f.0 = f.0.max(o.qos);
            f.1 |= o.retain_as_published;
            f.2.extend(o.id);
        }
        found
    }

    fn client_is(&self, publisher: &str) -> bool {
        self.client_id.as_deref() == Some(publisher)
    }

    /// Queues a delivery; `false` if the queue is full and the message was dropped.
    pub(crate) fn enqueue(&mut self, d: Delivery, max: QueueLimit) -> bool {
        if self.queue_full(max) {
            self.dropped += 1;
            return false;
        }
        self.queue_push(d);
        self.wake.notify_one();
        true
    }

    /// Queues a delivery whatever the bound (the caller checked, or it is a redelivery).
    pub(crate) fn enqueue_unchecked(&mut self, d: Delivery) {
        self.queue_push(d);
        self.wake.notify_one();
    }

    /// Whether the in-memory queue is at its bound (messages or bytes).
    pub(crate) fn queue_full(&self, max: QueueLimit) -> bool {
        self.queue.len() >= max.messages || self.queue_bytes >= max.bytes
    }

    /// Appends to the queue (keeping its byte count).
    pub(crate) fn queue_push(&mut self, d: Delivery) {
        self.queue_bytes += d.size();
        self.queue.push_back(d);
    }

    /// Puts a delivery back at the head of the queue.
    pub(crate) fn queue_push_front(&mut self, d: Delivery) {
        self.queue_bytes += d.size();
        self.queue.push_front(d);
    }

    /// Takes the head of the queue.
    pub(crate) fn queue_pop(&mut self) -> Option<Delivery> {
        let d = self.queue.pop_front()?;
        self.queue_bytes = self.queue_bytes.saturating_sub(d.size());
        Some(d)
    }

    /// Empties the queue.
    pub(crate) fn queue_drain(&mut self) -> Vec<Delivery> {
        self.queue_bytes = 0;
        self.queue.drain(..).collect()
    }

    /// A packet identifier not used by any in-flight message, taken in turn from
    /// `1..=window` (widened to one more than is in flight): a persistent session stores one
    /// entry per id it uses (`qos2_store`), so a small window keeps those few.
    pub(crate) fn alloc_pid(&mut self, window: usize) -> Option<u16> {
        if self.inflight.len() >= u16::MAX as usize - 1 {
            return None;
        }
        let top = window.max(self.inflight.len() + 1).min(u16::MAX as usize) as u16;
        loop {
            if self.next_pid > top || self.next_pid == 0 {
                self.next_pid = 1;
            }
            let id = self.next_pid;
            self.next_pid = self.next_pid.checked_add(1).unwrap_or(1);
            if !self.inflight.iter().any(|(p, _)| *p == id) {
                return Some(id);
            }
        }
    }

    pub(crate) fn take_inflight(&mut self, pid: u16) -> Option<Outbound> {
        let i = self.inflight.iter().position(|(p, _)| *p == pid)?;
        self.inflight.remove(i).map(|(_, o)| o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn d() -> Delivery {
        let m = Message {
            topic: "t".into(),
            payload: Bytes::new(),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Default::default(),
            publisher: Arc::from("p"),
            expires_at: None,
        };
        Delivery { msg: Arc::new(m), qos: QoS::AtMostOnce, retain: false, ids: vec![], shared: None, pos: None }
    }

    #[test]
    fn early_offers_go_only_to_connected_sessions_that_end_with_their_connection() {
        let room = QueueLimit { messages: 2, bytes: usize::MAX };
        let mut s = Session::new();
        assert_eq!(s.offer_early(d(), room), None, "no connection: waits for durability");
        s.connected = true;
        s.expiry = 60;
        assert_eq!(s.offer_early(d(), room), None, "outlives its connection: waits");
        s.expiry = 0;
        assert_eq!(s.offer_early(d(), room), Some(true));
        assert_eq!(s.offer_early(d(), room), Some(true));
        // Full: declined, and so is the next one even once there is room (it would overtake).
        assert_eq!(s.offer_early(d(), room), Some(false));
        assert!(s.queue_pop().is_some());
        assert_eq!(s.offer_early(d(), room), Some(false));
        assert_eq!(s.early_declined, 2);
        // Both declined ones routed once durable: early offers are taken again.
        s.early_declined = 0;
        assert_eq!(s.offer_early(d(), room), Some(true));
        // Reading the log: declined (the log has the order).
        assert!(s.queue_pop().is_some());
        s.positions.offer("t", 7, false);
        assert!(s.positions.replaying());
        assert_eq!(s.offer_early(d(), room), Some(false));
    }

    #[test]
    fn queue_is_bounded() {
        let mut s = Session::new();
        let two = QueueLimit { messages: 2, bytes: usize::MAX };
        assert!(s.enqueue(d(), two));
        assert!(s.enqueue(d(), two));
        assert!(!s.enqueue(d(), two));
        assert_eq!((s.queue.len(), s.dropped), (2, 1));
        // The byte bound: each delivery here holds 1 byte (topic "t").
        let mut s = Session::new();
        let one_byte = QueueLimit { messages: 100, bytes: 1 };
        assert!(s.enqueue(d(), one_byte));
        assert!(!s.enqueue(d(), one_byte));
        assert!(s.queue_pop().is_some());
        assert!(s.enqueue(d(), one_byte), "popping frees the bytes");
    }

    #[test]
    fn packet_ids_skip_those_in_flight_and_wrap() {
        let all = u16::MAX as usize;
        let mut s = Session::new();
        s.next_pid = u16::MAX;
        assert_eq!(s.alloc_pid(all), Some(u16::MAX));
        s.inflight.push_back((u16::MAX, Outbound::Released(None, None)));
        s.inflight.push_back((1, Outbound::Released(None, None)));
        assert_eq!(s.alloc_pid(all), Some(2), "wraps past 0 and skips 1, which is in flight");
        assert!(s.take_inflight(1).is_some());
        assert!(s.take_inflight(1).is_none());
    }

    #[test]
    fn packet_ids_stay_in_the_window() {
        let mut s = Session::new();
        let ids: Vec<_> = (0..7).filter_map(|_| s.alloc_pid(3)).collect();
        assert_eq!(ids, vec![1, 2, 3, 1, 2, 3, 1]);
        // Ids in flight from a wider window (an earlier connection) are skipped, and a full
        // window widens by one rather than failing.
        s.inflight.push_back((1, Outbound::Released(None, None)));
        s.inflight.push_back((2, Outbound::Released(None, None)));
        s.inflight.push_back((900, Outbound::Released(None, None)));
        assert_eq!(s.alloc_pid(3), Some(3));
        s.inflight.push_back((3, Outbound::Released(None, None)));
        assert_eq!(s.alloc_pid(3), Some(4));
    }
}
