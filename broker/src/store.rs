//! The broker's use of the log: one stream per topic for QoS >= 1 messages (appended before
//! they are acknowledged), and a compacted stream for retained messages. This is the only
//! place the broker touches `promptmq-wal`, and it uses nothing but the log's public API.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use promptmq_wal::{Completion, Options, StreamOptions, Wal};

use crate::codec::topic;
use crate::message::Message;

/// Stream holding retained messages, keyed by topic.
const RETAINED: &str = "$retained";
/// Stream holding persistent sessions' subscriptions, keyed by client id.
const SESSIONS: &str = "$sessions";
/// Prefix of per-topic message streams.
const TOPIC_PREFIX: &str = "t/";

/// The broker's storage.
#[derive(Debug, Clone)]
pub struct Store {
    wal: Wal,
    /// Retention of topic streams.
    retention: promptmq_wal::Retention,
    compress: bool,
}

/// Errors from the store, mapped to reason codes by the caller.
pub type StoreError = promptmq_wal::Error;

impl Store {
    /// Opens (and recovers) the log under `dir`.
    #[cfg(test)]
    pub(crate) fn open(dir: &std::path::Path, sync: promptmq_wal::SyncMode) -> Result<Store, StoreError> {
        Self::with_options(dir, Options::default().sync(sync))
    }

    /// Opens the log with the operator's settings, telling `observer` about every group
    /// commit (for metrics), and brings every topic stream to the configured retention.
    pub fn open_configured(
        dir: &std::path::Path,
        sync: promptmq_wal::SyncMode,
        settings: &crate::StorageSettings,
        observer: Arc<dyn promptmq_wal::CommitObserver>,
    ) -> Result<Store, StoreError> {
        let mut opts = Options::default()
            .sync(sync)
            .segment_bytes(settings.segment_bytes)
            .recovery(settings.recovery)
            .full_recovery(settings.verify_all_on_start)
            .preallocate(settings.preallocate)
            .observer(observer);
        opts = opts.shards(settings.shards.unwrap_or_else(default_shards));
        let mut store = match &settings.backend {
            Some(b) => Self::from_wal(Wal::open_with_backend(dir, opts, b.clone())?)?,
            None => Self::with_options(dir, opts)?,
        };
        store.retention = settings.retention;
        store.compress = settings.compress;
        for s in store.wal.streams().into_iter().filter(|s| s.name.starts_with(TOPIC_PREFIX)) {
            if s.retention != settings.retention {
                if let Some(stream) = store.wal.lookup(&s.name) {
                    store.wal.set_retention(&stream, settings.retention)?;
                }
            }
        }
        Ok(store)
    }

    fn with_options(dir: &std::path::Path, opts: Options) -> Result<Store, StoreError> {
        Self::from_wal(Wal::open(dir, opts)?)
    }

    fn from_wal(wal: Wal) -> Result<Store, StoreError> {
        let r = wal.recovery_report();
        tracing::info!(
            records = r.records_scanned(),
            ms = r.duration.as_millis() as u64,
            clean = r.is_clean(),
            "storage recovered"
        );
        Ok(Store { wal, retention: promptmq_wal::Retention::FOREVER, compress: false })
    }

    /// Appends a message to its topic's stream; resolves once durable.
    pub fn append(&self, msg: &Message) -> Completion<u64> {
        self.append_stamped(msg, crate::message::new_stamp())
    }

    /// [`Store::append`] with a stamp chosen by the caller (who recorded it beforehand).
    pub fn append_stamped(&self, msg: &Message, stamp: u64) -> Completion<u64> {
        let name = format!("{TOPIC_PREFIX}{}", msg.topic.as_str());
        let opts = StreamOptions { retention: Some(self.retention), compacted: false };
        match self.wal.stream_with(&name, opts) {
            Ok(s) => self.wal.append(&s, msg.to_record_stamped(Instant::now(), stamp)),
            Err(e) => failed(e),
        }
    }

    /// `topic`'s stream, if it exists yet: appending through it ([`Store::append_to_batch`]) saves
    /// the name lookup [`Store::append`] makes.
    pub fn topic_stream(&self, topic: &str) -> Option<promptmq_wal::Stream> {
        self.wal.lookup(&format!("{TOPIC_PREFIX}{topic}"))
    }

    /// Starts a batch of appends ([`Store::append_to_batch`]): the messages of one read
    /// from a client reach the log in one write instead of one each.
    pub fn batch(&self) -> promptmq_wal::Batch {
        self.wal.batch()
    }

    /// Appends a message to `stream`, its topic's stream (from [`Store::topic_stream`]), as
    /// part of `batch`: nothing is written before the batch is submitted.
    pub fn append_to_batch(
        &self,
        batch: &mut promptmq_wal::Batch,
        stream: &promptmq_wal::Stream,
        msg: &Message,
    ) -> Completion<u64> {
        batch.append(stream, msg.to_record_stamped(Instant::now(), crate::message::new_stamp()))
    }

    /// Whether `topic` has its stream yet (appending to a new topic first creates it, which
    /// waits for a synced catalogue record: see [`Store::create_topic`]).
    pub fn has_topic(&self, topic: &str) -> bool {
        self.wal.lookup(&format!("{TOPIC_PREFIX}{topic}")).is_some()
    }

    /// Creates `topic`'s stream if missing. Blocks for an `fdatasync`: call it off the
    /// async runtime.
    pub fn create_topic(&self, topic: &str) -> Result<(), StoreError> {
        let opts = StreamOptions { retention: Some(self.retention), compacted: false };
        self.wal.stream_with(&format!("{TOPIC_PREFIX}{topic}"), opts).map(drop)
    }

    /// Looks for the message stored with `stamp` in `topic`'s stream, at or after offset
    /// `from`: its offset, if it is there.
    pub fn find_stamp(&self, topic: &str, from: u64, stamp: u64) -> Result<Option<u64>, StoreError> {
        let mut at = from;
        loop {
            let (recs, read_to) = self.read_topic(topic, at, 1024)?;
            if let Some(r) = recs.iter().find(|r| Message::record_stamp(&r.payload) == Some(stamp)) {
                return Ok(Some(r.offset));
            }
            if read_to <= at {
                return Ok(None);
            }
            at = read_to;
        }
    }

    /// Stores (or, with an empty payload, clears) the retained message of a topic.
    pub fn set_retained(&self, msg: &Message) -> Completion<u64> {
        match self.wal.stream_with(RETAINED, StreamOptions { compacted: true, ..Default::default() }) {
            Ok(s) => self.wal.append_keyed(&s, msg.topic.as_bytes().clone(), msg.to_record(Instant::now())),
            Err(e) => failed(e),
        }
    }

    /// Calls `f(key, record)` for every keyed record of a compacted stream, oldest first.
    fn for_each_keyed(&self, stream: &str, mut f: impl FnMut(&str, promptmq_wal::Record)) -> Result<(), StoreError> {
        let Some(s) = self.wal.lookup(stream) else { return Ok(()) };
        let mut from = 0;
        loop {
            // Bounded in bytes: a persistent session's record names every stream it follows
            // (300 KB for 10 000 topics), and 4 096 of them took gigabytes at start-up.
            let recs = self.wal.read_bounded(&s, from, 4096, 8 << 20)?;
            let Some(last) = recs.last() else { return Ok(()) };
            from = last.offset + 1;
            for r in recs {
                // The key is a slice of the record's chunk: callers copy it only for a key
                // they have not seen (most records of a compacted stream update one).
                let key = r.key.clone();
                if let Some(key) = key.as_ref().and_then(|k| std::str::from_utf8(k).ok()) {
                    f(key, r);
                }
            }
        }
    }

    /// Loads the retained messages (the newest record per topic, cleared ones left out).
    pub fn load_retained(&self) -> Result<HashMap<String, Arc<Message>>, StoreError> {
        let mut out = HashMap::new();
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        self.for_each_keyed(RETAINED, |key, r| {
            let age = Duration::from_millis(now_ms.saturating_sub(r.timestamp_ms));
            match Message::from_record(r.payload, age) {
                Some(m) if !m.payload.is_empty() => match out.get_mut(key) {
                    Some(v) => *v = Arc::new(m),
                    None => drop(out.insert(key.to_owned(), Arc::new(m))),
                },
                _ => {
                    out.remove(key);
                }
            }
        })?;
        Ok(out)
    }

    /// Stores a persistent session's subscriptions and expiry (`None`: the session ended).
    pub fn save_session(&self, client: &str, record: Option<Bytes>) -> Completion<u64> {
        self.append_to_sessions(|s| {
            self.wal.append_keyed(s, Bytes::copy_from_slice(client.as_bytes()), record.unwrap_or_default())
        })
    }

    /// Writes one keyed record of the sessions stream (the newest per key counts; an empty
    /// value clears the key). Used for a session's QoS 2 state, see `qos2_store`.
    pub fn save_session_entry(&self, key: Vec<u8>, value: Bytes) -> Completion<u64> {
        self.append_to_sessions(|s| self.wal.append_keyed(s, key, value))
    }

    /// Writes several keyed records of the sessions stream as one batch (one completion,
    /// durable together).
    pub fn save_session_entries(&self, entries: Vec<(Vec<u8>, Bytes)>) -> Completion<u64> {
        self.append_to_sessions(|s| {
            self.wal.append_batch(s, entries.into_iter().map(|(k, v)| (Some(Bytes::from(k)), v)))
        })
    }

    /// Runs `append` on the sessions stream (compacted: the newest record per key counts).
    fn append_to_sessions(&self, append: impl FnOnce(&promptmq_wal::Stream) -> Completion<u64>) -> Completion<u64> {
        match self.wal.stream_with(SESSIONS, StreamOptions { compacted: true, ..Default::default() }) {
            Ok(s) => append(&s),
            Err(e) => failed(e),
        }
    }

    /// Every topic that has a stream, with the offset its next message will get, sorted by
    /// name (see [`matching`]).
    pub fn topics(&self) -> Vec<(String, u64)> {
        self.wal
            .streams()
            .into_iter()
            .filter_map(|i| Some((i.name.strip_prefix(TOPIC_PREFIX)?.to_owned(), i.next_offset)))
            .collect()
    }

    /// The topics that have a stream and that `filter` (valid, not shared) matches, with the
    /// offset the next message of each will get. Only the streams under the filter's literal
    /// levels are looked at (one lookup for a filter without wildcards): a persistent
    /// session's SUBSCRIBE listed all 100 000 topics of a log to find the one it named.
    pub fn topics_matching(&self, filter: &str) -> Vec<(String, u64)> {
        let prefix = topic::literal_prefix(filter);
        if prefix.len() == filter.len() {
            let end = self.wal.lookup(&format!("{TOPIC_PREFIX}{filter}")).map(|s| s.next_offset());
            return end.map(|e| (filter.to_owned(), e)).into_iter().collect();
        }
        self.wal
            .streams_with_prefix(&format!("{TOPIC_PREFIX}{prefix}"))
            .into_iter()
            .filter_map(|i| {
                let name = i.name.strip_prefix(TOPIC_PREFIX)?;
                topic::matches(filter, name).then(|| (name.to_owned(), i.next_offset))
            })
            .collect()
    }

    /// The offset the next message on `topic` will get (0 if it has none yet).
    pub fn topic_end(&self, topic: &str) -> u64 {
        self.wal.lookup(&format!("{TOPIC_PREFIX}{topic}")).map_or(0, |s| s.next_offset())
    }

    /// Reads up to `max` messages of `topic` from offset `from`: (offset, timestamp ms,
    /// stored bytes) in order, and the offset the read got up to.
    pub fn read_topic(
        &self,
        topic: &str,
        from: u64,
        max: usize,
    ) -> Result<(Vec<promptmq_wal::Record>, u64), StoreError> {
        let Some(s) = self.wal.lookup(&format!("{TOPIC_PREFIX}{topic}")) else { return Ok((Vec::new(), from)) };
        // Sampled before the read, which sees at least this much.
        let end = s.next_offset();
        let recs = self.wal.read(&s, from, max)?;
        let read_to = match recs.last() {
            Some(r) => r.offset + 1,
            // Nothing readable: offsets were removed by retention (below the first offset)
            // or skipped by tolerant recovery; either way there is nothing to wait for there.
            None => from.max(s.first_offset()).max(end.min(from.saturating_add(max as u64))),
        };
        Ok((recs, read_to))
    }

    /// The newest record of each key of the sessions stream, by key: (key, payload). Older
    /// ones are superseded (the stream is compacted by key; until then they are read and
    /// dropped here): kept, every saved state of every session was held in memory and
    /// decoded at start-up — 1.7 GB and 9 s for 100 sessions that follow 10 000 topics.
    pub fn session_records(&self) -> Result<Vec<(String, Bytes)>, StoreError> {
        let mut latest = HashMap::new();
        // A copy: the payload read is a slice of the chunk it was read with.
        self.for_each_keyed(SESSIONS, |key, r| {
            let value = Bytes::copy_from_slice(&r.payload);
            match latest.get_mut(key) {
                Some(v) => *v = value,
                None => drop(latest.insert(key.to_owned(), value)),
            }
        })?;
        let mut out: Vec<(String, Bytes)> = latest.into_iter().collect();
        out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Whether the log accepts appends (see `Wal::health`).
    pub fn health(&self) -> Result<(), StoreError> {
        self.wal.health()
    }

    /// The log's counters.
    pub fn stats(&self) -> promptmq_wal::WalStats {
        self.wal.stats()
    }

    /// Segment files and bytes on disk.
    pub fn disk_usage(&self) -> Result<(u64, u64), StoreError> {
        self.wal.disk_usage()
    }

    /// Runs retention and compaction (drops superseded retained messages).
    pub fn maintain(&self) {
        if let Err(e) = self.wal.apply_retention().and_then(|_| self.wal.compact(self.compress)) {
            tracing::warn!(error = %e, "storage maintenance failed");
        }
    }

    /// Syncs and closes the log.
    pub fn close(&self) {
        if let Err(e) = self.wal.flush() {
            tracing::warn!(error = %e, "final flush failed");
        }
        let _ = self.wal.clone().close();
    }
}

/// A completion that has already failed (so callers handle one type).
fn failed(e: StoreError) -> Completion<u64> {
    Completion::failed(e)
}

/// Shards of a new data directory when the configuration names none: half the cores, at
/// least one. The log library's own default is one per core; in the broker the writer and
/// sync threads share the cores with the network tasks, and the disk serialises the syncs
/// anyway. Measured on 2 cores (BENCHMARKS.md, session 6): one shard instead of two cut
/// the p99 of QoS 1 at 35 k msg/s (`always`) from 2.1-3.1 to 0.8-1.1 ms and did not lower
/// any maximum rate (QoS 2 `always` +10 %).
fn default_shards() -> u32 {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    (cores / 2).clamp(1, 64) as u32
}

/// The entries of `topics` (sorted by name, as [`Store::topics`] returns them) that `filter`
/// (valid, not shared) matches: a binary search to the filter's literal levels, then only
/// the names under them. Restoring many sessions over many topics costs matches, not
/// sessions × topics.
pub(crate) fn matching<'a>(
    topics: &'a [(String, u64)],
    filter: &'a str,
) -> impl Iterator<Item = &'a (String, u64)> + 'a {
    let prefix = topic::literal_prefix(filter);
    let start = topics.partition_point(|(t, _)| t.as_str() < prefix);
    topics[start..]
        .iter()
        .take_while(move |(t, _)| t.starts_with(prefix))
        .filter(move |(t, _)| topic::matches(filter, t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn topics_matching_looks_under_the_filter_only_and_skips_other_streams() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), promptmq_wal::SyncMode::None).unwrap();
        for t in ["a", "a/b", "a/b/c", "a/bc", "ab", "$SYS/x", "b/a"] {
            store.create_topic(t).unwrap();
        }
        let names = |f: &str| store.topics_matching(f).into_iter().map(|(t, _)| t).collect::<Vec<_>>();
        assert_eq!(names("a/#"), ["a", "a/b", "a/b/c", "a/bc"]);
        assert_eq!(names("a/+"), ["a/b", "a/bc"]);
        assert_eq!(names("a/b"), ["a/b"]);
        assert_eq!(names("#"), ["a", "a/b", "a/b/c", "a/bc", "ab", "b/a"]);
        assert_eq!(names("+/a"), ["b/a"]);
        assert_eq!(names("$SYS/#"), ["$SYS/x"]);
        assert!(names("nothing").is_empty());
        // The retained and sessions streams are not topics.
        store
            .set_retained(&Arc::new(Message::from_publish(
                crate::codec::Publish {
                    dup: false,
                    qos: crate::codec::QoS::AtMostOnce,
                    retain: true,
                    topic: "a/b".into(),
                    packet_id: None,
                    properties: Default::default(),
                    payload: Bytes::from_static(b"v"),
                },
                "a/b".into(),
                Arc::from("p"),
            )))
            .wait()
            .unwrap();
        assert_eq!(names("#").len(), 6);
        assert_eq!(store.topics_matching("a/b/c"), vec![("a/b/c".to_string(), 0)]);
    }

    #[test]
    fn session_records_are_the_newest_of_each_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), promptmq_wal::SyncMode::None).unwrap();
        for (client, state) in [("b", "1"), ("a", "1"), ("b", "2"), ("a", "2"), ("b", "3")] {
            store.save_session(client, Some(Bytes::from(state))).wait().unwrap();
        }
        store.save_session("c", Some(Bytes::from("1"))).wait().unwrap();
        store.save_session("c", None).wait().unwrap();
        let got = store.session_records().unwrap();
        let want: Vec<(String, Bytes)> =
            vec![("a".into(), Bytes::from("2")), ("b".into(), Bytes::from("3")), ("c".into(), Bytes::new())];
        assert_eq!(got, want);
    }

    proptest! {
        /// Over a sorted topic list, `matching` returns exactly what testing every name does.
        #[test]
        fn matching_is_the_same_as_a_full_scan(
            names in proptest::collection::btree_set("[ab$]{0,2}(/[ab]{0,2}){0,3}", 1..40),
            filter in "([ab]{0,2}|\\+)(/([ab]{0,2}|\\+)){0,3}(/#)?|#",
        ) {
            prop_assume!(topic::validate_filter(&filter).is_ok());
            let topics: Vec<(String, u64)> = names.into_iter().map(|n| (n, 0)).collect();
            let want: Vec<&String> = topics.iter().filter(|(t, _)| topic::matches(&filter, t)).map(|(t, _)| t).collect();
            let got: Vec<&String> = matching(&topics, &filter).map(|(t, _)| t).collect();
            prop_assert_eq!(got, want);
        }
    }
}
