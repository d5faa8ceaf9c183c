//! Sessions: what the broker keeps for a client between its connections — subscriptions,
//! the queue of messages waiting for it, unacknowledged outbound QoS 1/2 messages, and
//! received QoS 2 packet ids awaiting PUBREL. Bounded: the queue holds at most
//! `max_queued_messages`; beyond that new messages are dropped and counted.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use tokio::sync::{oneshot, Notify};

use crate::codec::{QoS, ReasonCode};
use crate::message::Message;
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
}

/// State of an unacknowledged outbound message.
#[derive(Debug, Clone)]
pub(crate) enum Outbound {
    /// PUBLISH sent; awaiting PUBACK (QoS 1) or PUBREC (QoS 2).
    Publish(Delivery),
    /// PUBREL sent; awaiting PUBCOMP.
    Released,
}

#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) subs: HashMap<String, SubOptions>,
    pub(crate) queue: VecDeque<Delivery>,
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
}

impl Session {
    pub(crate) fn new() -> Session {
        Session {
            subs: HashMap::new(),
            queue: VecDeque::new(),
            inflight: VecDeque::new(),
            inbound_qos2: HashSet::new(),
            next_pid: 1,
            generation: 0,
            connected: false,
            wake: Arc::new(Notify::new()),
            kick: None,
            expiry: 0,
            dropped: 0,
        }
    }

    /// Queues a delivery; `false` if the queue is full and the message was dropped.
    pub(crate) fn enqueue(&mut self, d: Delivery, max: usize) -> bool {
        if self.queue.len() >= max {
            self.dropped += 1;
            return false;
        }
        self.queue.push_back(d);
        self.wake.notify_one();
        true
    }

    /// A packet identifier not used by any in-flight message.
    pub(crate) fn alloc_pid(&mut self) -> Option<u16> {
        if self.inflight.len() >= u16::MAX as usize - 1 {
            return None;
        }
        loop {
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
        Delivery { msg: Arc::new(m), qos: QoS::AtMostOnce, retain: false, ids: vec![], shared: None }
    }

    #[test]
    fn queue_is_bounded() {
        let mut s = Session::new();
        assert!(s.enqueue(d(), 2));
        assert!(s.enqueue(d(), 2));
        assert!(!s.enqueue(d(), 2));
        assert_eq!((s.queue.len(), s.dropped), (2, 1));
    }

    #[test]
    fn packet_ids_skip_those_in_flight_and_wrap() {
        let mut s = Session::new();
        s.next_pid = u16::MAX;
        assert_eq!(s.alloc_pid(), Some(u16::MAX));
        s.inflight.push_back((u16::MAX, Outbound::Released));
        s.inflight.push_back((1, Outbound::Released));
        assert_eq!(s.alloc_pid(), Some(2), "wraps past 0 and skips 1, which is in flight");
        assert!(s.take_inflight(1).is_some());
        assert!(s.take_inflight(1).is_none());
    }
}
