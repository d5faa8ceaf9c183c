//! A session's positions in the log (design promise 2: subscribers hold positions, not
//! copies). For every topic stream a session has a subscription to, it knows how far it has
//! got: which offsets are handed to the client but not yet acknowledged, and whether it is
//! reading the stream from the log (offline, or its in-memory queue overflowed) instead of
//! taking live deliveries.
//!
//! The persisted *cursor* of a stream is the lowest offset not yet known to be acknowledged.
//! Everything from the cursor on is delivered again after a restart, so QoS 1 is at least
//! once. Streams created after a session's positions were last saved are read from their
//! start (they did not exist when the record was written, so all they hold is new to it).
//!
//! Live deliveries normally arrive in offset order; two publishers racing on one topic can
//! swap two neighbours. Reading from the log then may hand an offset over twice (a QoS 1
//! duplicate, which QoS 1 allows); nothing is ever skipped.

use std::collections::{BTreeMap, BTreeSet, HashSet};

/// Where one session stands in one topic stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct StreamPos {
    /// Live deliveries below this offset are ignored: the log read already covered them, or
    /// they were published before the subscription.
    live_from: u64,
    /// `Some(x)`: the stream is being read from the log from `x`; live deliveries are
    /// dropped meanwhile (the log has them).
    replay_from: Option<u64>,
    /// Offsets handed over (queued or in flight) and not yet acknowledged.
    outstanding: BTreeSet<u64>,
    /// One past the highest offset handed over.
    next: u64,
    /// QoS 2 exchanges completed at or above the cursor: never to be sent again.
    complete: BTreeSet<u64>,
}

impl StreamPos {
    /// Lowest offset not known to be acknowledged: where a restart resumes.
    fn cursor(&self) -> u64 {
        let mut c = self.next.max(self.live_from);
        if let Some(&o) = self.outstanding.first() {
            c = c.min(o);
        }
        if let Some(r) = self.replay_from {
            c = c.min(r);
        }
        c
    }
}

/// What to do with a live delivery.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Offer {
    /// Queue it (it is now outstanding).
    Take,
    /// Drop it: the log read covers it, or did already.
    Skip,
}

/// All streams of one session, keyed by topic name.
#[derive(Debug, Default)]
pub(crate) struct Positions {
    /// Ordered, not hashed: a hash table doubles all at once, and every session following
    /// the same new topics doubles at the same delivery — 10 sessions at 7 168 topics stopped
    /// deliveries for 4–12 ms; a B-tree grows a node at a time.
    streams: BTreeMap<String, StreamPos>,
    /// The streams being read from the log: asked for on every live delivery (see
    /// `Session::offer_early`) and by every log read, so kept rather than found among
    /// all streams (a session may follow 10 000 topics and read a few of them).
    replaying: HashSet<String>,
    /// The streams with completed QoS 2 exchanges above their cursor (see `take_passed`).
    with_complete: HashSet<String>,
    /// Streams whose cursor may have moved since the last save: a save writes only these
    /// (a session following 10 000 topics would otherwise write them all, about 300 KB, each
    /// time one of them moved).
    changed: HashSet<String>,
    /// Streams no longer followed since the last save: a save clears their cursors.
    dropped: HashSet<String>,
    /// Every cursor counts as changed (restored: see [`Positions::restored`]).
    all_changed: bool,
}

/// Sets where `topic`'s stream `p` is read from the log, keeping `replaying` (the streams
/// being read) in step.
fn set_replay(topic: &str, p: &mut StreamPos, replaying: &mut HashSet<String>, to: Option<u64>) {
    match (p.replay_from.is_some(), to.is_some()) {
        (false, true) => drop(replaying.insert(topic.to_owned())),
        (true, false) => drop(replaying.remove(topic)),
        _ => {}
    }
    p.replay_from = to;
}

impl Positions {
    /// Positions restored from a saved record: every stream is read from its cursor. All
    /// count as changed, so the first save after a restart writes every cursor again (a
    /// record of an earlier version kept them in the record itself, which saves no longer
    /// repeat).
    pub(crate) fn restored(saved: impl IntoIterator<Item = (String, u64)>) -> Positions {
        let streams: BTreeMap<_, _> = saved
            .into_iter()
            .map(|(t, c)| (t, StreamPos { live_from: 0, replay_from: Some(c), next: c, ..Default::default() }))
            .collect();
        Positions { replaying: streams.keys().cloned().collect(), all_changed: true, streams, ..Default::default() }
    }

    /// Changed since last saved.
    pub(crate) fn dirty(&self) -> bool {
        self.all_changed || !self.changed.is_empty() || !self.dropped.is_empty()
    }

    /// What a save writes, and from then on no longer changed: the cursors that may have
    /// moved since the last save, and the streams no longer followed (their cursors are
    /// cleared).
    pub(crate) fn take_changes(&mut self) -> (Vec<(String, u64)>, Vec<String>) {
        let mut moved: Vec<_> = if std::mem::take(&mut self.all_changed) {
            self.changed.clear();
            self.streams.iter().map(|(t, p)| (t.clone(), p.cursor())).collect()
        } else {
            self.changed
                .drain()
                .filter_map(|t| {
                    let c = self.streams.get(&t)?.cursor();
                    Some((t, c))
                })
                .collect()
        };
        moved.sort();
        let streams = &self.streams;
        let mut dropped: Vec<String> = self.dropped.drain().filter(|t| !streams.contains_key(t)).collect();
        dropped.sort();
        (moved, dropped)
    }

    fn touch(&mut self, topic: &str) {
        if !self.all_changed && !self.changed.contains(topic) {
            self.changed.insert(topic.to_owned());
        }
    }

    /// A subscription began while `topic`'s stream ends at `end`: only what comes after
    /// belongs to the session. A stream already followed keeps its position.
    pub(crate) fn start_at_end(&mut self, topic: &str, end: u64) {
        if !self.streams.contains_key(topic) {
            self.streams.insert(topic.to_owned(), StreamPos { live_from: end, next: end, ..Default::default() });
            self.touch(topic);
        }
    }

    /// A stream the session should read from `from` on (restart: created after the save).
    pub(crate) fn replay(&mut self, topic: &str, from: u64) {
        if !self.streams.contains_key(topic) {
            self.streams.insert(
                topic.to_owned(),
                StreamPos { live_from: 0, replay_from: Some(from), next: from, ..Default::default() },
            );
            self.replaying.insert(topic.to_owned());
            self.touch(topic);
        }
    }

    /// Stops following streams for which `keep` is false (after an unsubscribe).
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        let (replaying, with_complete) = (&mut self.replaying, &mut self.with_complete);
        let (changed, dropped) = (&mut self.changed, &mut self.dropped);
        self.streams.retain(|t, _| {
            let kept = keep(t);
            if !kept {
                replaying.remove(t);
                with_complete.remove(t);
                changed.remove(t);
                dropped.insert(t.clone());
            }
            kept
        });
    }

    /// A live delivery of `topic`@`offset`. `room` says whether the session can take it now
    /// (connected, queue not full); if not, the stream switches to reading from the log.
    pub(crate) fn offer(&mut self, topic: &str, offset: u64, room: bool) -> Offer {
        let p = match self.streams.get_mut(topic) {
            Some(p) => p,
            None => self.streams.entry(topic.to_owned()).or_insert(StreamPos {
                live_from: offset,
                next: offset,
                ..Default::default()
            }),
        };
        if offset < p.live_from {
            return Offer::Skip;
        }
        if let Some(r) = p.replay_from.as_mut() {
            *r = (*r).min(offset);
            return Offer::Skip;
        }
        if !room {
            set_replay(topic, p, &mut self.replaying, Some(offset));
            self.touch(topic);
            return Offer::Skip;
        }
        p.outstanding.insert(offset);
        p.next = p.next.max(offset + 1);
        Offer::Take
    }

    /// The client acknowledged (or will never get) `topic`@`offset`.
    pub(crate) fn done(&mut self, topic: &str, offset: u64) {
        if let Some(p) = self.streams.get_mut(topic) {
            if p.outstanding.remove(&offset) {
                self.touch(topic);
            }
        }
    }

    /// `topic`@`offset` was handed over but will not be acknowledged by whoever had it (a
    /// shared subscription member left and no other member took it): read it again.
    pub(crate) fn return_to_log(&mut self, topic: &str, offset: u64) {
        if let Some(p) = self.streams.get_mut(topic) {
            p.outstanding.remove(&offset);
            let from = p.replay_from.map_or(offset, |r| r.min(offset));
            set_replay(topic, p, &mut self.replaying, Some(from));
            self.touch(topic);
        }
    }

    /// Up to `max` streams waiting to be read from the log, and where from.
    pub(crate) fn replays(&self, max: usize) -> Vec<(&str, u64)> {
        let at = |t: &String| {
            let (t, p) = self.streams.get_key_value(t)?;
            Some((t.as_str(), p.replay_from?))
        };
        self.replaying.iter().filter_map(at).take(max).collect()
    }

    /// Records that were read from the log: `offsets` are handed over, and the log read
    /// got up to `read_to`. If the stream ended there (`end == read_to`) live delivery
    /// resumes from it. The caller holds the session lock across this and the
    /// `end` it passes, so no routed message can fall between the two.
    pub(crate) fn replayed(&mut self, topic: &str, read_from: u64, offsets: &[u64], read_to: u64, end: u64) {
        let Some(p) = self.streams.get_mut(topic) else { return };
        let Some(from) = p.replay_from else { return };
        for &o in offsets {
            p.outstanding.insert(o);
            p.next = p.next.max(o + 1);
        }
        if from < read_from {
            // A live delivery below what was read arrived meanwhile (two publishers racing):
            // read again from there.
            self.touch(topic);
            return;
        }
        p.next = p.next.max(read_to);
        if read_to >= end {
            set_replay(topic, p, &mut self.replaying, None);
            p.live_from = p.live_from.max(read_to);
        } else {
            p.replay_from = Some(read_to.max(from));
        }
        self.touch(topic);
    }

    /// (topic, cursor) of every stream.
    #[cfg(test)]
    pub(crate) fn cursors(&self) -> Vec<(String, u64)> {
        let mut v: Vec<_> = self.streams.iter().map(|(t, p)| (t.clone(), p.cursor())).collect();
        v.sort();
        v
    }

    /// Whether `topic`@`offset` is handed over (and not yet acknowledged, or a completed
    /// QoS 2 exchange): reading the log must not hand it over again.
    pub(crate) fn handed(&self, topic: &str, offset: u64) -> bool {
        self.streams.get(topic).is_some_and(|p| p.outstanding.contains(&offset) || p.complete.contains(&offset))
    }

    /// The cursor of `topic`'s stream, if the session follows it.
    pub(crate) fn cursor_of(&self, topic: &str) -> Option<u64> {
        self.streams.get(topic).map(StreamPos::cursor)
    }

    /// A QoS 2 exchange for `topic`@`offset` was restored in flight (after a restart).
    pub(crate) fn restore_handed(&mut self, topic: &str, offset: u64) {
        if let Some(p) = self.streams.get_mut(topic) {
            p.outstanding.insert(offset);
        }
    }

    /// The QoS 2 exchange for `topic`@`offset` completed: even if the saved cursor is still
    /// below it, it is never sent again.
    pub(crate) fn complete_qos2(&mut self, topic: &str, offset: u64) {
        if let Some(p) = self.streams.get_mut(topic) {
            p.complete.insert(offset);
            p.outstanding.remove(&offset);
            if !self.with_complete.contains(topic) {
                self.with_complete.insert(topic.to_owned());
            }
            self.touch(topic);
        }
    }

    /// Completed QoS 2 exchanges the cursor has passed (their records can go), removed.
    pub(crate) fn take_passed(&mut self) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        let streams = &mut self.streams;
        self.with_complete.retain(|t| {
            let Some(p) = streams.get_mut(t) else { return false };
            let c = p.cursor();
            while let Some(&o) = p.complete.first().filter(|&&o| o < c) {
                p.complete.remove(&o);
                out.push((t.clone(), o));
            }
            !p.complete.is_empty()
        });
        out.sort();
        out
    }

    /// Whether any stream is being read from the log.
    pub(crate) fn replaying(&self) -> bool {
        debug_assert_eq!(self.replaying.len(), self.streams.values().filter(|p| p.replay_from.is_some()).count());
        !self.replaying.is_empty()
    }

    /// Whether the session follows `topic`.
    #[cfg(test)]
    pub(crate) fn follows(&self, topic: &str) -> bool {
        self.streams.contains_key(topic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaying_follows_every_stream_into_and_out_of_the_log() {
        let mut p = Positions::restored([("a".to_string(), 3)]);
        assert!(p.replaying(), "restored streams are read from the log");
        p.replayed("a", 3, &[3, 4], 5, 5);
        assert!(!p.replaying(), "read to the end: live again");
        p.start_at_end("b", 0);
        assert_eq!(p.offer("b", 0, false), Offer::Skip, "no room: b is read from the log");
        assert!(p.replaying());
        assert_eq!(p.offer("a", 5, true), Offer::Take);
        p.return_to_log("a", 5);
        p.return_to_log("a", 5);
        assert!(p.replaying());
        p.retain(|t| t != "b");
        assert!(p.replaying(), "a still is");
        p.replayed("a", 5, &[5], 6, 6);
        assert!(!p.replaying());
        p.replay("c", 0);
        p.retain(|t| t != "c");
        assert!(!p.replaying(), "an unsubscribed stream no longer counts");
    }

    #[test]
    fn live_deliveries_move_the_cursor_as_they_are_acknowledged() {
        let mut p = Positions::default();
        p.start_at_end("a", 10);
        assert_eq!(p.offer("a", 9, true), Offer::Skip, "published before the subscription");
        assert_eq!(p.offer("a", 10, true), Offer::Take);
        assert_eq!(p.offer("a", 11, true), Offer::Take);
        assert_eq!(p.cursors(), vec![("a".into(), 10)]);
        p.done("a", 11);
        assert_eq!(p.cursors(), vec![("a".into(), 10)], "10 is still unacknowledged");
        p.done("a", 10);
        assert_eq!(p.cursors(), vec![("a".into(), 12)]);
    }

    #[test]
    fn a_full_queue_switches_the_stream_to_the_log_and_back() {
        let mut p = Positions::default();
        p.start_at_end("a", 0);
        assert_eq!(p.offer("a", 0, true), Offer::Take);
        assert_eq!(p.offer("a", 1, false), Offer::Skip);
        assert_eq!(p.offer("a", 2, true), Offer::Skip, "the log read covers it; order is kept");
        assert_eq!(p.replays(1).first().copied(), Some(("a", 1)));
        // Read 1..2 while the stream had grown to 3: keep reading.
        p.replayed("a", 1, &[1], 2, 3);
        assert_eq!(p.replays(1).first().copied(), Some(("a", 2)));
        p.replayed("a", 2, &[2], 3, 3);
        assert_eq!(p.replays(1).first().copied(), None);
        assert_eq!(p.offer("a", 2, true), Offer::Skip, "a late live copy of a replayed offset");
        assert_eq!(p.offer("a", 3, true), Offer::Take);
        for o in 0..4 {
            p.done("a", o);
        }
        assert_eq!(p.cursors(), vec![("a".into(), 4)]);
    }

    #[test]
    fn restored_sessions_read_from_their_cursor_and_new_streams_from_the_start() {
        let mut p = Positions::restored([("a".to_string(), 5)]);
        p.replay("b", 0);
        p.replay("a", 0);
        let mut r: Vec<_> = p.streams.iter().map(|(t, s)| (t.clone(), s.replay_from)).collect();
        r.sort();
        assert_eq!(r, vec![("a".into(), Some(5)), ("b".into(), Some(0))]);
        assert!(p.replaying());
        assert_eq!(p.offer("a", 9, true), Offer::Skip, "still reading the log");
        assert_eq!(p.cursors(), vec![("a".into(), 5), ("b".into(), 0)]);
    }

    #[test]
    fn completed_qos2_exchanges_are_never_read_again_until_the_cursor_passes() {
        let mut p = Positions::restored([("a".to_string(), 3)]);
        p.restore_handed("a", 3);
        p.complete_qos2("a", 4);
        assert!(p.handed("a", 3) && p.handed("a", 4) && !p.handed("a", 5));
        assert_eq!(p.take_passed(), vec![], "the cursor is still at 3");
        p.replayed("a", 3, &[5], 6, 6);
        p.done("a", 3);
        p.done("a", 5);
        assert_eq!(p.cursors(), vec![("a".into(), 6)]);
        assert_eq!(p.take_passed(), vec![("a".into(), 4)]);
        assert!(!p.handed("a", 4));
    }

    #[test]
    fn unsubscribed_streams_are_forgotten() {
        let mut p = Positions::default();
        p.start_at_end("a", 1);
        p.start_at_end("b", 1);
        p.take_changes();
        p.retain(|t| t == "b");
        assert!(p.dirty() && !p.follows("a") && p.follows("b"));
        assert_eq!(p.take_changes(), (vec![], vec!["a".to_string()]), "a's cursor is cleared");
    }

    #[test]
    fn the_streams_read_from_the_log_are_found_among_many() {
        let mut p = Positions::default();
        for i in 0..1000 {
            p.start_at_end(&format!("t/{i}"), 5);
        }
        assert_eq!(p.offer("t/7", 5, false), Offer::Skip);
        assert_eq!(p.offer("t/900", 6, false), Offer::Skip);
        let mut r = p.replays(10);
        r.sort();
        assert_eq!(r, vec![("t/7", 5), ("t/900", 6)]);
        assert_eq!(p.replays(1).len(), 1);
        p.replayed("t/7", 5, &[5], 6, 6);
        assert_eq!(p.replays(10), vec![("t/900", 6)]);
        p.retain(|t| t != "t/900");
        assert!(p.replays(10).is_empty() && !p.replaying());
    }

    #[test]
    fn a_save_holds_only_the_cursors_that_moved() {
        let mut p = Positions::default();
        for t in ["a", "b", "c"] {
            p.start_at_end(t, 10);
        }
        let (all, dropped) = p.take_changes();
        assert_eq!((all.len(), dropped.len()), (3, 0), "new streams are saved");
        assert!(!p.dirty());
        assert_eq!(p.offer("b", 10, true), Offer::Take);
        assert_eq!(p.offer("b", 11, true), Offer::Take);
        assert!(!p.dirty(), "handed over: the cursor has not moved");
        p.done("b", 10);
        assert!(p.dirty());
        assert_eq!(p.take_changes(), (vec![("b".into(), 11)], vec![]));
        assert!(!p.dirty());
        p.done("b", 11);
        p.retain(|t| t != "b");
        p.retain(|t| t != "c");
        p.start_at_end("c", 20);
        assert_eq!(
            p.take_changes(),
            (vec![("c".into(), 20)], vec!["b".into()]),
            "b is cleared, not saved; c followed again is saved"
        );
        let r = Positions::restored([("x".to_string(), 4)]);
        assert!(r.dirty(), "restored cursors are written again by the first save");
    }
}
