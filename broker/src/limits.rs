//! The per-client limits that can change while the broker runs (a reload sets them; each is
//! read where it applies, so new connections and, for queue bounds and packet sizes, existing
//! ones see the new value at once).

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::BrokerConfig;

/// Limits in force.
#[derive(Debug)]
pub(crate) struct LiveLimits {
    max_packet_size: AtomicUsize,
    receive_maximum: AtomicU32,
    max_inflight: AtomicU32,
    max_queued_messages: AtomicUsize,
    max_queued_bytes: AtomicUsize,
    max_keep_alive: AtomicU32,
    max_session_expiry: AtomicU32,
    topic_alias_maximum: AtomicU32,
    max_message_expiry: AtomicU32,
    write_timeout_ms: AtomicU64,
    connect_timeout_ms: AtomicU64,
}

/// The bound of one session's in-memory queue.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueueLimit {
    pub(crate) messages: usize,
    pub(crate) bytes: usize,
}

impl LiveLimits {
    pub(crate) fn new(c: &BrokerConfig) -> LiveLimits {
        let l = LiveLimits {
            max_packet_size: AtomicUsize::new(0),
            receive_maximum: AtomicU32::new(0),
            max_inflight: AtomicU32::new(0),
            max_queued_messages: AtomicUsize::new(0),
            max_queued_bytes: AtomicUsize::new(0),
            max_keep_alive: AtomicU32::new(0),
            max_session_expiry: AtomicU32::new(0),
            topic_alias_maximum: AtomicU32::new(0),
            max_message_expiry: AtomicU32::new(0),
            write_timeout_ms: AtomicU64::new(0),
            connect_timeout_ms: AtomicU64::new(0),
        };
        l.set(c);
        l
    }

    /// Takes the limits of `c`; returns the names of those that changed.
    pub(crate) fn set(&self, c: &BrokerConfig) -> Vec<&'static str> {
        let mut changed = Vec::new();
        let r = Ordering::Relaxed;
        let mut put = |name, old: u64, new: u64, store: &dyn Fn(u64)| {
            if old != new {
                store(new);
                changed.push(name);
            }
        };
        put("max_packet_size", self.max_packet_size.load(r) as u64, c.max_packet_size as u64, &|v| {
            self.max_packet_size.store(v as usize, r)
        });
        put("receive_maximum", self.receive_maximum.load(r) as u64, c.receive_maximum as u64, &|v| {
            self.receive_maximum.store(v as u32, r)
        });
        put("max_inflight", self.max_inflight.load(r) as u64, c.max_inflight as u64, &|v| {
            self.max_inflight.store(v as u32, r)
        });
        put("max_queued_messages", self.max_queued_messages.load(r) as u64, c.max_queued_messages as u64, &|v| {
            self.max_queued_messages.store(v as usize, r)
        });
        put("max_queued_bytes", self.max_queued_bytes.load(r) as u64, c.max_queued_bytes as u64, &|v| {
            self.max_queued_bytes.store(v as usize, r)
        });
        put("max_keep_alive", self.max_keep_alive.load(r) as u64, c.max_keep_alive as u64, &|v| {
            self.max_keep_alive.store(v as u32, r)
        });
        put("max_session_expiry", self.max_session_expiry.load(r) as u64, c.max_session_expiry as u64, &|v| {
            self.max_session_expiry.store(v as u32, r)
        });
        put("topic_alias_maximum", self.topic_alias_maximum.load(r) as u64, c.topic_alias_maximum as u64, &|v| {
            self.topic_alias_maximum.store(v as u32, r)
        });
        put("max_message_expiry", self.max_message_expiry.load(r) as u64, c.max_message_expiry as u64, &|v| {
            self.max_message_expiry.store(v as u32, r)
        });
        put("write_timeout", self.write_timeout_ms.load(r), c.write_timeout.as_millis() as u64, &|v| {
            self.write_timeout_ms.store(v, r)
        });
        put("connect_timeout", self.connect_timeout_ms.load(r), c.connect_timeout.as_millis() as u64, &|v| {
            self.connect_timeout_ms.store(v, r)
        });
        changed
    }

    pub(crate) fn max_packet_size(&self) -> usize {
        self.max_packet_size.load(Ordering::Relaxed)
    }
    pub(crate) fn receive_maximum(&self) -> u16 {
        self.receive_maximum.load(Ordering::Relaxed) as u16
    }
    /// Most unacknowledged QoS 1/2 messages sent to one client (whatever its receive maximum).
    pub(crate) fn max_inflight(&self) -> usize {
        self.max_inflight.load(Ordering::Relaxed) as usize
    }
    pub(crate) fn queue(&self) -> QueueLimit {
        QueueLimit {
            messages: self.max_queued_messages.load(Ordering::Relaxed),
            bytes: self.max_queued_bytes.load(Ordering::Relaxed),
        }
    }
    pub(crate) fn max_keep_alive(&self) -> u16 {
        self.max_keep_alive.load(Ordering::Relaxed) as u16
    }
    pub(crate) fn max_session_expiry(&self) -> u32 {
        self.max_session_expiry.load(Ordering::Relaxed)
    }
    pub(crate) fn topic_alias_maximum(&self) -> u16 {
        self.topic_alias_maximum.load(Ordering::Relaxed) as u16
    }
    /// Highest message expiry interval kept, seconds (0: no cap).
    pub(crate) fn max_message_expiry(&self) -> u32 {
        self.max_message_expiry.load(Ordering::Relaxed)
    }
    pub(crate) fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms.load(Ordering::Relaxed))
    }
    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_reports_what_changed() {
        let mut c = BrokerConfig::default();
        let l = LiveLimits::new(&c);
        assert!(l.set(&c).is_empty());
        c.max_queued_messages = 7;
        c.write_timeout = Duration::from_secs(3);
        assert_eq!(l.set(&c), vec!["max_queued_messages", "write_timeout"]);
        assert_eq!((l.queue().messages, l.write_timeout()), (7, Duration::from_secs(3)));
    }
}
