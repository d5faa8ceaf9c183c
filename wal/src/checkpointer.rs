//! Index checkpoints committed off the shard's writer thread.
//!
//! A checkpoint stores, in one fjall batch, every stream appended to since the last one
//! (its catalogue entry and open index block) and the log position they describe. With
//! many streams that is most of the cost: 10 000 touched streams took the writer 25–100 ms
//! (fjall's memory-table inserts and journal write), during which no append of the shard
//! could commit (BENCHMARKS.md, session 11). So the writer only takes the snapshot — it must,
//! as the stream offsets have to match the checkpoint's position — and this thread commits it.
//!
//! While a checkpoint is being committed three things must not happen, each guarded where
//! it would:
//! - a block that fills up must not reach the index before the checkpoint's copy of it
//!   (same key, fewer positions) does: the writer holds finished blocks back in memory
//!   ([`crate::stream::OpenBlock::sealed`]) while [`Checkpointer::busy`];
//! - compaction and retention must not change positions or stream settings between the
//!   snapshot and the commit: [`crate::index::Index::positions_guard`] waits for commits
//!   in flight;
//! - no segment the last committed checkpoint points into may be rewritten or deleted
//!   (the checkpoint that moves it on may still be in flight): maintenance leaves them.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use crate::index::{Checkpoint, Index, SegSummary, StreamCheckpoint};
use crate::stream::StreamState;

/// A snapshot taken by the writer, to be committed.
pub(crate) struct Job {
    pub(crate) cp: Checkpoint,
    pub(crate) streams: Vec<Arc<StreamState>>,
    pub(crate) states: Vec<StreamCheckpoint>,
    /// Summaries of the segments sealed since the last checkpoint (first LSN, summary).
    pub(crate) summaries: Vec<(u64, SegSummary)>,
}

impl Job {
    /// Commits the snapshot; on success the checkpointed positions leave memory. On failure
    /// returns the streams, which the next checkpoint must store again.
    pub(crate) fn commit(self, index: &Index, shard: u32) -> Result<(), Vec<Arc<StreamState>>> {
        // Before the checkpoint that moves past their segments: recovery from an older one
        // scans those segments and stores their summaries itself.
        for (segment, summary) in &self.summaries {
            if let Err(e) = index.put_segment(shard, *segment, summary) {
                // Without a summary retention keeps the segment; nothing is lost.
                tracing::warn!(shard, segment, error = %e, "could not store a sealed segment's summary");
            }
        }
        match index.commit_checkpoint(shard, Some(&self.cp), &self.states) {
            Ok(()) => {
                // The open blocks are in the index now: memory keeps only what came since,
                // so it is bounded by the log written between checkpoints, not by the
                // number of streams times the block length.
                for (s, state) in self.streams.iter().zip(&self.states) {
                    s.checkpointed(state);
                }
                Ok(())
            }
            Err(e) => {
                tracing::warn!(shard, error = %e, "index checkpoint failed; recovery will re-index more of the log");
                Err(self.streams)
            }
        }
    }
}

#[derive(Default)]
struct State {
    job: Option<Job>,
    /// A job was handed over and is not committed yet.
    busy: bool,
    /// Streams of a job that failed, for the writer to take back.
    failed: Vec<Arc<StreamState>>,
    stop: bool,
}

/// One shard's checkpoint thread.
pub(crate) struct Checkpointer {
    shared: Arc<(Mutex<State>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Checkpointer {
    pub(crate) fn start(index: Arc<Index>, shard: u32) -> std::io::Result<Checkpointer> {
        let shared = Arc::new((Mutex::new(State::default()), Condvar::new()));
        let sh = shared.clone();
        let thread = std::thread::Builder::new().name(format!("wal-ckpt-{shard}")).spawn(move || loop {
            let job = {
                let mut st = lock(&sh.0);
                loop {
                    if let Some(j) = st.job.take() {
                        break j;
                    }
                    if st.stop {
                        return;
                    }
                    st = sh.1.wait(st).unwrap_or_else(|p| p.into_inner());
                }
            };
            let result = job.commit(&index, shard);
            index.checkpoint_finished();
            let mut st = lock(&sh.0);
            if let Err(streams) = result {
                st.failed.extend(streams);
            }
            st.busy = false;
            drop(st);
            sh.1.notify_all();
        })?;
        Ok(Checkpointer { shared, thread: Some(thread) })
    }

    /// A checkpoint is being committed.
    pub(crate) fn busy(&self) -> bool {
        lock(&self.shared.0).busy
    }

    /// Hands a snapshot over. The caller made sure the thread is not [`Checkpointer::busy`]
    /// and counted the commit in with [`Index::checkpoint_started`] while it held the
    /// positions guard.
    pub(crate) fn submit(&self, job: Job) {
        let mut st = lock(&self.shared.0);
        debug_assert!(!st.busy, "a checkpoint was submitted while another was in flight");
        st.busy = true;
        st.job = Some(job);
        drop(st);
        self.shared.1.notify_all();
    }

    /// Waits for the checkpoint in flight, if any; returns the streams of failed ones.
    pub(crate) fn wait_idle(&self) -> Vec<Arc<StreamState>> {
        let mut st = lock(&self.shared.0);
        while st.busy {
            st = self.shared.1.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        std::mem::take(&mut st.failed)
    }

    /// Like [`Checkpointer::wait_idle`], without waiting: `None` while one is in flight.
    pub(crate) fn idle(&self) -> Option<Vec<Arc<StreamState>>> {
        let mut st = lock(&self.shared.0);
        (!st.busy).then(|| std::mem::take(&mut st.failed))
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        lock(&self.shared.0).stop = true;
        self.shared.1.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::{Pos, StreamMeta};
    use crate::options::Retention;

    fn stream(id: u64) -> Arc<StreamState> {
        Arc::new(StreamState::from_meta(&StreamMeta {
            id,
            name: format!("s{id}").into(),
            shard: 0,
            first_offset: 0,
            next_offset: 0,
            retention: Retention::default(),
            compacted: false,
        }))
    }

    fn pos(at: u64) -> Pos {
        Pos { segment: 1, at, len: 10 }
    }

    /// A job handed over is committed on the thread: the checkpoint, the streams' open
    /// blocks and the sealed segments' summaries are in the index afterwards, the
    /// committed positions have left memory, and the commit is counted out of the index's
    /// in-flight checkpoints (which maintenance waits for).
    #[test]
    fn a_submitted_checkpoint_is_committed_and_counted_out() {
        let dir = tempfile::tempdir().unwrap();
        let index = Arc::new(Index::open(dir.path(), crate::SyncMode::Always).unwrap());
        let c = Checkpointer::start(index.clone(), 3).unwrap();
        assert_eq!(c.idle().map(|f| f.len()), Some(0), "idle before any job");
        let s = stream(9);
        for o in 0..5 {
            s.push_position(&index, o, pos(o * 10), false);
        }
        s.next_offset.store(5, std::sync::atomic::Ordering::Release);
        let cp = Checkpoint { pos: Pos { segment: 2, at: 100, len: 0 }, next_lsn: 42 };
        let mut summary = SegSummary::default();
        summary.add(9, 0, 1, 50);
        let states = vec![s.checkpoint_state()];
        index.checkpoint_started();
        c.submit(Job { cp, streams: vec![s.clone()], states, summaries: vec![(1, summary)] });
        assert!(c.wait_idle().is_empty(), "the commit did not fail");
        assert!(!c.busy());
        assert_eq!(index.checkpoint(3).unwrap(), Some(cp));
        let (first, stored) = index.find_block(9, 2).unwrap().unwrap();
        assert_eq!((first, stored), (0, (0..5).map(|o| pos(o * 10)).collect::<Vec<_>>()));
        assert!(index.segment(3, 1).unwrap().is_some_and(|sum| sum.streams.contains_key(&9)));
        let open = s.open.lock().unwrap();
        assert_eq!((open.first, open.positions.len()), (5, 0), "committed positions left memory");
        drop(open);
        // Counted out: this would wait forever otherwise.
        drop(index.positions_guard());
        drop(c);
    }
}
