//! The `$SYS/broker/...` topics, under Mosquitto's names so that existing dashboards and
//! monitoring scripts work unchanged: totals, client counts, and the 1/5/15-minute load
//! averages (exponentially decayed, per minute, computed at every `$SYS` interval the way
//! Mosquitto computes them).

use std::time::Duration;

/// The counters the topics are made from, read once per interval.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Sample {
    pub(crate) uptime: Duration,
    pub(crate) clients_connected: u64,
    /// Persistent sessions whose client is not connected.
    pub(crate) clients_disconnected: u64,
    pub(crate) messages_received: u64,
    pub(crate) messages_sent: u64,
    pub(crate) messages_dropped: u64,
    pub(crate) bytes_received: u64,
    pub(crate) bytes_sent: u64,
    pub(crate) connections: u64,
    pub(crate) retained: u64,
    pub(crate) subscriptions: u64,
}

/// Reads one counter of a sample.
type Counter = fn(&Sample) -> u64;

/// The load averages tracked, by the counter they follow.
const LOADS: [(&str, Counter); 6] = [
    ("messages/received", |s| s.messages_received),
    ("messages/sent", |s| s.messages_sent),
    ("bytes/received", |s| s.bytes_received),
    ("bytes/sent", |s| s.bytes_sent),
    ("connections", |s| s.connections),
    ("publish/dropped", |s| s.messages_dropped),
];

/// Averaging windows, minutes.
const WINDOWS: [u64; 3] = [1, 5, 15];

/// State kept between intervals: the previous sample and the load averages.
#[derive(Debug, Default)]
pub(crate) struct SysTopics {
    last: Option<Sample>,
    /// `loads[i][w]`: counter `LOADS[i]` over window `WINDOWS[w]`, per minute.
    loads: [[f64; 3]; 6],
    clients_maximum: u64,
}

impl SysTopics {
    /// Takes this interval's sample and returns every topic (below `$SYS/broker/`) with its
    /// value. `elapsed` is the time since the previous call.
    pub(crate) fn update(&mut self, now: Sample, elapsed: Duration) -> Vec<(String, String)> {
        self.clients_maximum = self.clients_maximum.max(now.clients_connected);
        let secs = elapsed.as_secs_f64();
        if let (Some(last), true) = (self.last, secs > 0.0) {
            for (i, (_, get)) in LOADS.iter().enumerate() {
                let per_minute = get(&now).saturating_sub(get(&last)) as f64 * 60.0 / secs;
                for (w, minutes) in WINDOWS.iter().enumerate() {
                    let keep = (-secs / (60.0 * *minutes as f64)).exp();
                    self.loads[i][w] = self.loads[i][w] * keep + per_minute * (1.0 - keep);
                }
            }
        }
        self.last = Some(now);
        let n = |v: u64| v.to_string();
        let mut out = vec![
            ("uptime".to_string(), format!("{} seconds", now.uptime.as_secs())),
            ("version".into(), format!("promptmq {}", env!("CARGO_PKG_VERSION"))),
            ("clients/connected".into(), n(now.clients_connected)),
            ("clients/active".into(), n(now.clients_connected)),
            ("clients/disconnected".into(), n(now.clients_disconnected)),
            ("clients/inactive".into(), n(now.clients_disconnected)),
            ("clients/total".into(), n(now.clients_connected + now.clients_disconnected)),
            ("clients/maximum".into(), n(self.clients_maximum)),
            ("messages/received".into(), n(now.messages_received)),
            ("messages/sent".into(), n(now.messages_sent)),
            ("publish/messages/received".into(), n(now.messages_received)),
            ("publish/messages/sent".into(), n(now.messages_sent)),
            ("publish/messages/dropped".into(), n(now.messages_dropped)),
            ("bytes/received".into(), n(now.bytes_received)),
            ("bytes/sent".into(), n(now.bytes_sent)),
            // The totals under the names of Mosquitto before 1.4, which some dashboards use.
            ("load/bytes/received".into(), n(now.bytes_received)),
            ("load/bytes/sent".into(), n(now.bytes_sent)),
            ("messages/stored".into(), n(now.retained)),
            ("store/messages/count".into(), n(now.retained)),
            ("retained messages/count".into(), n(now.retained)),
            ("subscriptions/count".into(), n(now.subscriptions)),
        ];
        for (i, (name, _)) in LOADS.iter().enumerate() {
            for (w, minutes) in WINDOWS.iter().enumerate() {
                out.push((format!("load/{name}/{minutes}min"), format!("{:.2}", self.loads[i][w])));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value<'a>(topics: &'a [(String, String)], name: &str) -> &'a str {
        topics.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str()).unwrap_or_else(|| panic!("no {name}"))
    }

    #[test]
    fn load_averages_approach_the_rate_and_decay() {
        let mut sys = SysTopics::default();
        let tick = Duration::from_secs(10);
        let mut s = Sample::default();
        sys.update(s, tick);
        // 100 messages every 10 s = 600 per minute, for 15 minutes.
        for _ in 0..90 {
            s.messages_received += 100;
            s.uptime += tick;
            sys.update(s, tick);
        }
        let t = sys.update(s, Duration::from_millis(1)); // no change over a negligible time
        let one: f64 = value(&t, "load/messages/received/1min").parse().unwrap();
        let fifteen: f64 = value(&t, "load/messages/received/15min").parse().unwrap();
        assert!((one - 600.0).abs() < 1.0, "1 min average {one}");
        assert!(fifteen > 350.0 && fifteen < 600.0, "15 min average still rising: {fifteen}");
        // Then nothing for 5 minutes: the 1-minute average falls to almost nothing first.
        for _ in 0..30 {
            sys.update(s, tick);
        }
        let t = sys.update(s, Duration::from_millis(1));
        let one: f64 = value(&t, "load/messages/received/1min").parse().unwrap();
        let fifteen: f64 = value(&t, "load/messages/received/15min").parse().unwrap();
        assert!(one < 5.0 && fifteen > 100.0, "1 min {one}, 15 min {fifteen}");
    }

    #[test]
    fn client_counts_under_mosquittos_names() {
        let mut sys = SysTopics::default();
        let s = Sample { clients_connected: 5, clients_disconnected: 2, ..Sample::default() };
        sys.update(s, Duration::from_secs(10));
        let t = sys.update(Sample { clients_connected: 1, ..s }, Duration::from_secs(10));
        assert_eq!(value(&t, "clients/connected"), "1");
        assert_eq!(value(&t, "clients/disconnected"), "2");
        assert_eq!(value(&t, "clients/total"), "3");
        assert_eq!(value(&t, "clients/maximum"), "5", "the most seen at once");
        for name in ["bytes/received", "retained messages/count", "load/connections/5min", "version"] {
            value(&t, name);
        }
    }
}
