//! Metrics through the `metrics` facade (the `promptmq` binary installs a Prometheus
//! recorder; without one every call here is a no-op). Hot-path counts stay plain atomics in
//! [`crate::Stats`] and are copied into the registry when metrics are scraped; histograms
//! are recorded as events happen, through handles taken once at start.
//!
//! Names follow Prometheus conventions: `_total` counters, `_seconds` and `_bytes` units.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use metrics::{counter, gauge, histogram, Histogram};
use promptmq_wal::{CommitInfo, CommitObserver};

use crate::server::{lock, Shared};

/// Histograms recorded on the message path.
#[derive(Debug, Clone)]
pub(crate) struct Timers {
    /// From a QoS 1/2 PUBLISH's append to its durability (what the PUBACK waits for).
    pub(crate) append: Histogram,
}

impl Timers {
    pub(crate) fn new() -> Timers {
        Timers { append: histogram!("promptmq_wal_append_seconds") }
    }
}

/// Records each group commit of the log: batch size and `fdatasync` time.
#[derive(Debug)]
pub(crate) struct WalObserver {
    fsync: Histogram,
    batch_records: Histogram,
    batch_bytes: Histogram,
}

impl WalObserver {
    pub(crate) fn new() -> WalObserver {
        WalObserver {
            fsync: histogram!("promptmq_wal_fsync_seconds"),
            batch_records: histogram!("promptmq_wal_commit_batch_records"),
            batch_bytes: histogram!("promptmq_wal_commit_batch_bytes"),
        }
    }
}

impl CommitObserver for WalObserver {
    fn committed(&self, c: &CommitInfo) {
        self.batch_records.record(c.records as f64);
        self.batch_bytes.record(c.bytes as f64);
        if let Some(d) = c.sync {
            self.fsync.record(d.as_secs_f64());
        }
    }
}

/// What an operator's endpoints ask of a running broker: readiness and metrics. Cheap to
/// clone; keeps the broker's state alive, not its listener.
#[derive(Clone)]
pub struct Monitor {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor").finish_non_exhaustive()
    }
}

impl Monitor {
    /// `Ok` when the broker can take messages: recovery finished (a `Monitor` exists only
    /// after it), listeners up, and the log accepting appends. Otherwise why not.
    pub fn ready(&self) -> Result<(), String> {
        self.shared.store.health().map_err(|e| format!("storage not writable: {e}"))
    }

    /// Copies the broker's counters and gauges into the metrics registry (call before
    /// rendering a scrape).
    pub fn export(&self) {
        let sh = &self.shared;
        let s = &sh.stats;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        gauge!("promptmq_connections").set(get(&s.clients_connected) as f64);
        counter!("promptmq_connections_total").absolute(get(&s.connections_total));
        for (q, label) in ["0", "1", "2"].iter().enumerate() {
            counter!("promptmq_messages_received_total", "qos" => *label).absolute(get(&s.received_qos[q]));
            counter!("promptmq_messages_sent_total", "qos" => *label).absolute(get(&s.sent_qos[q]));
        }
        counter!("promptmq_bytes_received_total").absolute(get(&s.bytes_received));
        counter!("promptmq_bytes_sent_total").absolute(get(&s.bytes_sent));
        counter!("promptmq_messages_from_log_total").absolute(get(&s.messages_from_log));
        counter!("promptmq_messages_dropped_total", "reason" => "queue_full").absolute(get(&s.messages_dropped));
        counter!("promptmq_messages_dropped_total", "reason" => "expired").absolute(get(&s.dropped_expired));
        counter!("promptmq_messages_dropped_total", "reason" => "too_large").absolute(get(&s.dropped_too_large));
        counter!("promptmq_publishes_refused_total").absolute(get(&s.publishes_refused));
        gauge!("promptmq_subscriptions").set(lock(&sh.router).len() as f64);
        gauge!("promptmq_retained_messages").set(lock(&sh.retained).len() as f64);
        let sessions: Vec<_> = lock(&sh.sessions).values().cloned().collect();
        let (mut inflight, mut queued) = (0usize, 0usize);
        for session in &sessions {
            let s = lock(session);
            inflight += s.inflight.len();
            queued += s.queue.len();
        }
        gauge!("promptmq_sessions").set(sessions.len() as f64);
        gauge!("promptmq_inflight_messages").set(inflight as f64);
        gauge!("promptmq_queued_messages").set(queued as f64);
        let w = sh.store.stats();
        counter!("promptmq_wal_records_total").absolute(w.records);
        counter!("promptmq_wal_bytes_written_total").absolute(w.bytes);
        counter!("promptmq_wal_fsyncs_total").absolute(w.syncs);
        // Rising with `storage.preallocate` on: segments fill faster than spares are made.
        counter!("promptmq_wal_segments_without_spare_total").absolute(w.segments_unprepared);
        // Segments made from deleted ones: zeros saved.
        counter!("promptmq_wal_segments_recycled_total").absolute(w.segments_recycled);
        if let Ok((segments, bytes)) = sh.store.disk_usage() {
            gauge!("promptmq_wal_segments").set(segments as f64);
            gauge!("promptmq_wal_segment_bytes").set(bytes as f64);
        }
        gauge!("promptmq_recovery_seconds").set(sh.recovery_seconds);
        gauge!("promptmq_uptime_seconds").set(sh.started.elapsed().as_secs_f64());
    }
}
