//! Reading a session's backlog from several topic streams at once, in publish order.
//!
//! Each topic's stream is in order by itself; a session subscribed to `inbox/#` that was away
//! expects the messages of all its topics in the order they were published, as a live
//! subscriber would have seen them. So batches read from several streams are merged by the
//! time they were stored, and a batch that was cut short (it may hold more after its last
//! record) bounds what may be emitted: nothing later than its last record, since the rest of
//! that stream could hold something earlier. What is not emitted is read again next time.

use promptmq_wal::Record;

/// Records read from one stream.
#[derive(Debug)]
pub(crate) struct Batch {
    pub(crate) topic: String,
    /// Offset the read started at.
    pub(crate) from: u64,
    pub(crate) records: Vec<Record>,
    /// Offset the read got up to.
    pub(crate) read_to: u64,
    /// Whether the read reached the end of the stream (nothing after it yet).
    pub(crate) complete: bool,
}

/// Merges batches by `order` (when a record was stored), keeping each stream's order.
/// Returns (batch index, record) in delivery order; `reached[i]` is where batch `i`'s stream
/// continues.
pub(crate) fn merge(batches: Vec<Batch>, order: impl Fn(&Record) -> u64) -> (Vec<(usize, Record)>, Vec<u64>) {
    let cutoff = batches.iter().filter(|b| !b.complete).filter_map(|b| b.records.last().map(&order)).min();
    // Where each batch must stop: a prefix, since a record after one that is too late waits
    // too (the stream's order).
    let cuts: Vec<Option<usize>> =
        batches.iter().map(|b| cutoff.and_then(|c| b.records.iter().position(|r| order(r) > c))).collect();
    let kept: usize = batches.iter().zip(&cuts).map(|(b, c)| c.unwrap_or(b.records.len())).sum();
    // Nothing left only if the clock went backwards inside a stream: emit whole batches then,
    // so the reading always moves on.
    let cut = kept > 0;
    let mut reached: Vec<u64> = batches.iter().map(|b| b.read_to).collect();
    let mut queues: Vec<std::collections::VecDeque<Record>> = Vec::with_capacity(batches.len());
    for (i, (b, c)) in batches.into_iter().zip(cuts).enumerate() {
        let mut q: std::collections::VecDeque<Record> = b.records.into();
        if let (true, Some(c)) = (cut, c) {
            reached[i] = q[c].offset;
            q.truncate(c);
        }
        queues.push(q);
    }
    let mut out = Vec::with_capacity(queues.iter().map(|q| q.len()).sum());
    loop {
        let next = queues.iter().enumerate().filter_map(|(i, q)| q.front().map(|r| (order(r), i))).min();
        let Some((_, i)) = next else { break };
        if let Some(r) = queues[i].pop_front() {
            out.push((i, r));
        }
    }
    (out, reached)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn merge_by_time(b: Vec<Batch>) -> (Vec<(usize, Record)>, Vec<u64>) {
        merge(b, |r| r.timestamp_ms)
    }

    fn rec(offset: u64, ts: u64) -> Record {
        Record { offset, timestamp_ms: ts, key: None, payload: Bytes::new() }
    }

    fn batch(topic: &str, recs: &[(u64, u64)], read_to: u64, complete: bool) -> Batch {
        Batch {
            topic: topic.into(),
            from: recs.first().map_or(read_to, |r| r.0),
            records: recs.iter().map(|&(o, t)| rec(o, t)).collect(),
            read_to,
            complete,
        }
    }

    #[test]
    fn interleaves_by_time_and_holds_back_what_a_cut_batch_may_precede() {
        let a = batch("a", &[(0, 10), (1, 30), (2, 50)], 3, true);
        // b was cut at 3 records: it may hold more at times after 40.
        let b = batch("b", &[(5, 20), (6, 40), (7, 40)], 8, false);
        let (out, reached) = merge_by_time(vec![a, b]);
        let order: Vec<(usize, u64)> = out.iter().map(|(i, r)| (*i, r.offset)).collect();
        assert_eq!(order, vec![(0, 0), (1, 5), (0, 1), (1, 6), (1, 7)]);
        assert_eq!(reached, vec![2, 8], "a's record at time 50 waits for the rest of b");
    }

    #[test]
    fn a_clock_step_back_does_not_stall_the_reading() {
        let (out, reached) = merge_by_time(vec![batch("a", &[(0, 100)], 1, false), batch("b", &[(0, 200)], 1, false)]);
        assert_eq!(out.len(), 1);
        assert_eq!(reached, vec![1, 0]);
        let (out, _) =
            merge_by_time(vec![batch("a", &[(0, 100), (1, 50)], 2, false), batch("b", &[(0, 70)], 1, false)]);
        assert!(!out.is_empty(), "moves on even when no prefix fits the cutoff");
    }

    #[test]
    fn complete_batches_are_emitted_whole() {
        let (out, reached) = merge_by_time(vec![batch("a", &[(3, 9), (4, 1)], 5, true), batch("b", &[], 0, true)]);
        assert_eq!(out.iter().map(|(_, r)| r.offset).collect::<Vec<_>>(), vec![3, 4], "one stream keeps its order");
        assert_eq!(reached, vec![5, 0]);
    }
}
