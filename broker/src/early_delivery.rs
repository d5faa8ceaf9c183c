//! Live delivery before durability. A QoS 1 message goes to the subscribers whose sessions
//! end with their connection as soon as its append is issued, not once it is durable: their
//! latency is then the network's, not the disk's (an `fdatasync` under load can take tens of
//! milliseconds). The publisher's PUBACK still waits for durability (design promise 1).
//!
//! Why only those sessions: a session that outlives its connection tracks its position in
//! the log by offset, and a position saved past a record that a crash then lost would skip
//! the message written in its place. A session that ends with its connection has nothing
//! to resume after a crash; what it was sent of an unacknowledged message, the publisher
//! sends again (QoS 1 is at least once). QoS 2 and shared subscriptions keep waiting for
//! durability (exactly once across a crash; group positions). A message that then fails to
//! be stored was seen by these subscribers although its publisher is told it was not
//! accepted: the price of not waiting, as with any broker that delivers before it stores.
//!
//! Order: a session that cannot take a message early (its queue is full, or it is reading
//! the log) gets it once it is durable, through its positions, and takes nothing else early
//! until then, so a later message never overtakes it.

use std::sync::{Arc, Mutex};

use crate::server::lock;
use crate::session::Session;

/// The sessions a message was offered to before it was durable. Dropping it (once the
/// message is routed, or abandoned because it failed or its publisher left) lets the
/// sessions that declined it take messages early again.
#[derive(Default)]
pub(crate) struct EarlyRoute {
    /// Took it: the routing once durable skips them.
    taken: Vec<Arc<Mutex<Session>>>,
    /// Declined it: they get it when it is routed once durable.
    declined: Vec<Arc<Mutex<Session>>>,
    /// The router's version when every subscription the message matched took it early (no
    /// shared ones among them): while the router is unchanged, routing it once durable has
    /// nothing left to do.
    all_taken_at: Option<u64>,
}

impl EarlyRoute {
    pub(crate) fn record(&mut self, session: &Arc<Mutex<Session>>, taken: bool) {
        if taken {
            self.taken.push(session.clone());
        } else {
            self.declined.push(session.clone());
        }
    }

    /// Every subscription matched at router version `version` took the message.
    pub(crate) fn covered_all(&mut self, version: u64) {
        self.all_taken_at = Some(version);
    }

    /// Whether the routing once durable can be skipped: the router is still at the version
    /// at which every subscription took the message early.
    pub(crate) fn covers(&self, version: u64) -> bool {
        self.all_taken_at == Some(version)
    }

    /// Whether `session` already has the message.
    pub(crate) fn took(&self, session: &Arc<Mutex<Session>>) -> bool {
        self.taken.iter().any(|t| Arc::ptr_eq(t, session))
    }
}

impl Drop for EarlyRoute {
    fn drop(&mut self) {
        for s in self.declined.drain(..) {
            let mut s = lock(&s);
            s.early_declined = s.early_declined.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropping_the_route_lets_the_sessions_that_declined_take_messages_early_again() {
        let (a, b) = (Arc::new(Mutex::new(Session::new())), Arc::new(Mutex::new(Session::new())));
        lock(&b).early_declined = 2; // as `offer_early` leaves it after declining twice
        let mut first = EarlyRoute::default();
        first.record(&a, true);
        first.record(&b, false);
        let mut second = EarlyRoute::default();
        second.record(&b, false);
        assert!(first.took(&a) && !first.took(&b));
        drop(first);
        assert_eq!(lock(&b).early_declined, 1, "still one declined message not routed");
        drop(second);
        assert_eq!(lock(&b).early_declined, 0);
        assert_eq!(lock(&a).early_declined, 0, "taking changes nothing");
    }

    #[test]
    fn a_route_covers_only_the_router_version_at_which_every_subscription_took_it() {
        let mut r = EarlyRoute::default();
        assert!(!r.covers(0), "nothing recorded: route once durable");
        r.covered_all(7);
        assert!(r.covers(7));
        assert!(!r.covers(8), "a subscription changed since");
    }
}
