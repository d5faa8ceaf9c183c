//! The in-memory state of one stream: its offsets, the positions of its newest records
//! (the open index block), and the notifier that wakes its tail readers.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::task::Waker;

use crate::index::{Index, Pos, StreamMeta, BLOCK_LEN, REMOVED};
use crate::options::Retention;

/// Positions of the newest records of a stream that are not yet in an index block.
#[derive(Debug, Default)]
pub(crate) struct OpenBlock {
    pub(crate) first: u64,
    pub(crate) positions: Vec<Pos>,
    /// Finished blocks held back from the index while a checkpoint of this shard is being
    /// committed (see [`crate::checkpointer`]): that checkpoint stores the block that was
    /// open when it began under the same key, and must not land after (and over) the full
    /// one. Oldest first; readers and compaction find positions here too.
    pub(crate) sealed: Vec<(u64, Vec<Pos>)>,
}

impl OpenBlock {
    /// An empty open block whose first position will be `first`'s.
    pub(crate) fn at(first: u64) -> OpenBlock {
        OpenBlock { first, ..Default::default() }
    }

    /// Adds the position of `offset`, handing full blocks to `put` (the index, or a batch
    /// for it) — or, with `defer`, keeping them in [`OpenBlock::sealed`]. If `put` fails the
    /// positions stay in memory and the write is retried with the next one. `stream` names
    /// the stream in the warning.
    pub(crate) fn push(
        &mut self,
        stream: &str,
        offset: u64,
        pos: Pos,
        defer: bool,
        mut put: impl FnMut(u64, &[Pos]) -> crate::Result<()>,
    ) {
        if self.positions.is_empty() || self.first + self.positions.len() as u64 != offset {
            // A gap (a skipped damaged record) starts a new block.
            if !self.positions.is_empty() {
                if let Err(e) = self.seal(defer, &mut put) {
                    tracing::warn!(stream, error = %e, "index block write failed; keeping it in memory");
                    return;
                }
            }
            self.first = offset;
            self.positions.clear();
        }
        self.positions.push(pos);
        if self.positions.len() >= BLOCK_LEN {
            let n = self.positions.len() as u64;
            match self.seal(defer, &mut put) {
                Ok(()) => {
                    self.first += n;
                    // Not `clear`: an idle stream would keep a full block's capacity.
                    self.positions = Vec::new();
                }
                Err(e) => tracing::warn!(stream, error = %e, "index block write failed; will retry"),
            }
        }
    }

    /// Hands the open positions on as a finished block: to `put`, or with `defer` to
    /// [`OpenBlock::sealed`] (leaving `positions` empty).
    fn seal(&mut self, defer: bool, put: &mut impl FnMut(u64, &[Pos]) -> crate::Result<()>) -> crate::Result<()> {
        if defer {
            self.sealed.push((self.first, std::mem::take(&mut self.positions)));
            Ok(())
        } else {
            put(self.first, &self.positions)
        }
    }

    /// The position of `offset` if a block held back in [`OpenBlock::sealed`] has it.
    fn sealed_get(&self, offset: u64) -> Option<Pos> {
        self.sealed.iter().find_map(|(f, ps)| offset.checked_sub(*f).and_then(|i| ps.get(i as usize)).copied())
    }

    /// The slot of `offset` if memory holds it (open or sealed block).
    fn get_mut(&mut self, offset: u64) -> Option<&mut Pos> {
        if !self.positions.is_empty() && offset >= self.first {
            return self.positions.get_mut((offset - self.first) as usize);
        }
        self.sealed.iter_mut().find_map(|(f, ps)| offset.checked_sub(*f).and_then(|i| ps.get_mut(i as usize)))
    }
}

/// Wakes tail readers when records become visible.
#[derive(Debug, Default)]
pub(crate) struct Notify {
    waiting: Mutex<Waiting>,
    cond: Condvar,
}

/// Who waits for a [`Notify`].
#[derive(Debug, Default)]
struct Waiting {
    /// Async tail readers.
    wakers: Vec<Waker>,
    /// Threads blocked in [`Notify::wait`]: only then is the condvar signalled (a signal
    /// is a syscall, made on every commit that appends to the stream).
    blocked: usize,
}

impl Notify {
    pub(crate) fn notify(&self) {
        let (wakers, blocked) = {
            let mut w = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
            (std::mem::take(&mut w.wakers), w.blocked > 0)
        };
        if blocked {
            self.cond.notify_all();
        }
        for w in wakers {
            w.wake();
        }
    }

    /// Registers `waker` unless `ready()` already holds (checked under the lock, so a
    /// notification between the check and the registration cannot be lost).
    pub(crate) fn register(&self, waker: &Waker, ready: impl Fn() -> bool) -> bool {
        let mut w = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        if ready() {
            return true;
        }
        if !w.wakers.iter().any(|x| x.will_wake(waker)) {
            w.wakers.push(waker.clone());
        }
        false
    }

    /// Blocks until `ready()` or the timeout; returns `ready()`.
    pub(crate) fn wait(&self, timeout: std::time::Duration, ready: impl Fn() -> bool) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let mut g = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if ready() {
                return true;
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return false;
            }
            g.blocked += 1;
            g = self.cond.wait_timeout(g, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
            g.blocked -= 1;
        }
    }
}

#[derive(Debug)]
pub(crate) struct StreamState {
    pub(crate) id: u64,
    pub(crate) name: std::sync::Arc<str>,
    pub(crate) shard: u32,
    pub(crate) compacted: bool,
    /// Next offset to assign. Written only by the shard's writer (and recovery).
    pub(crate) next_offset: AtomicU64,
    /// Offsets below this are durable under the sync mode and readable.
    pub(crate) visible: AtomicU64,
    /// Offsets below this were removed by retention.
    pub(crate) first_offset: AtomicU64,
    pub(crate) retention: Mutex<Retention>,
    pub(crate) open: Mutex<OpenBlock>,
    pub(crate) notify: Notify,
    /// Changed since the last checkpoint.
    pub(crate) dirty: AtomicBool,
}

impl StreamState {
    pub(crate) fn from_meta(m: &StreamMeta) -> StreamState {
        StreamState {
            id: m.id,
            name: m.name.clone(),
            shard: m.shard,
            compacted: m.compacted,
            next_offset: AtomicU64::new(m.next_offset),
            visible: AtomicU64::new(m.next_offset),
            first_offset: AtomicU64::new(m.first_offset),
            retention: Mutex::new(m.retention),
            open: Mutex::new(OpenBlock::at(m.next_offset)),
            notify: Notify::default(),
            dirty: AtomicBool::new(false),
        }
    }

    pub(crate) fn meta(&self) -> StreamMeta {
        StreamMeta {
            id: self.id,
            name: self.name.clone(),
            shard: self.shard,
            first_offset: self.first_offset.load(Ordering::Acquire),
            next_offset: self.next_offset.load(Ordering::Acquire),
            retention: *self.retention.lock().unwrap_or_else(|p| p.into_inner()),
            compacted: self.compacted,
        }
    }

    /// Records where `offset` was written. Full blocks go to the index — with `defer`, only
    /// later, through [`StreamState::write_sealed`]; if the index write fails the positions
    /// stay in memory and the write is retried with the next one. Returns whether finished
    /// blocks wait in memory.
    pub(crate) fn push_position(&self, index: &Index, offset: u64, pos: Pos, defer: bool) -> bool {
        let mut b = self.open.lock().unwrap_or_else(|p| p.into_inner());
        b.push(&self.name, offset, pos, defer, |first, positions| index.put_block(self.id, first, positions));
        !b.sealed.is_empty()
    }

    /// Writes the finished blocks held back by [`StreamState::push_position`] to the index,
    /// oldest first; those not written (on an error) stay in memory.
    pub(crate) fn write_sealed(&self, index: &Index) -> crate::Result<()> {
        let mut b = self.open.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((first, positions)) = b.sealed.first() {
            index.put_block(self.id, *first, positions)?;
            b.sealed.remove(0);
        }
        Ok(())
    }

    /// `state` (from [`StreamState::checkpoint_state`]) is committed: the open block's
    /// positions it holds are in the index now, so they leave memory, and the block goes on
    /// as a new one after them.
    pub(crate) fn checkpointed(&self, state: &crate::index::StreamCheckpoint) {
        let Some((first, stored)) = &state.1 else { return };
        let (first, n) = (*first, stored.len());
        let mut b = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if b.first == first && b.positions.len() >= n {
            b.positions = b.positions[n..].to_vec();
            b.first += n as u64;
        }
    }

    /// The catalogue entry and the open (partial) index block, for a checkpoint.
    pub(crate) fn checkpoint_state(&self) -> crate::index::StreamCheckpoint {
        let block = {
            let b = self.open.lock().unwrap_or_else(|p| p.into_inner());
            (!b.positions.is_empty()).then(|| (b.first, b.positions.clone()))
        };
        (self.meta(), block)
    }

    /// The position of `offset`, from memory or from the index (`cache` holds the last
    /// block read from the index, decoded up to offset `upto`, to serve the following
    /// offsets without another lookup).
    pub(crate) fn position(
        &self,
        index: &Index,
        offset: u64,
        upto: u64,
        cache: &mut Option<(u64, Vec<Pos>)>,
    ) -> crate::Result<Option<Pos>> {
        {
            let b = self.open.lock().unwrap_or_else(|p| p.into_inner());
            if !b.positions.is_empty() && offset >= b.first {
                return Ok(b.positions.get((offset - b.first) as usize).copied().filter(|p| p.at != REMOVED));
            }
            if let Some(p) = b.sealed_get(offset) {
                return Ok(Some(p).filter(|p| p.at != REMOVED));
            }
        }
        if let Some((first, ps)) = cache {
            if offset >= *first && offset < *first + ps.len() as u64 {
                return Ok(Some(ps[(offset - *first) as usize]).filter(|p| p.at != REMOVED));
            }
        }
        *cache = index.find_block_upto(self.id, offset, upto.max(offset))?;
        Ok(cache
            .as_ref()
            .and_then(|(first, ps)| offset.checked_sub(*first).and_then(|i| ps.get(i as usize)).copied())
            .filter(|p| p.at != REMOVED))
    }

    /// Replaces the positions of some offsets (sorted), after compaction moved or removed
    /// their records. `None` marks a record as removed.
    pub(crate) fn set_positions(&self, index: &Index, updates: &[(u64, Option<Pos>)]) -> crate::Result<()> {
        let _positions = index.positions_guard();
        let removed = |p: Option<Pos>| p.unwrap_or(Pos { segment: 0, at: REMOVED, len: 0 });
        let mut b = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let mut block: Option<(u64, Vec<Pos>)> = None;
        let mut open_changed = false;
        for &(offset, pos) in updates {
            let in_open = !b.positions.is_empty() && offset >= b.first;
            if let Some(slot) = b.get_mut(offset) {
                *slot = removed(pos);
                // A sealed block goes to the index later, with the change.
                open_changed |= in_open;
                continue;
            }
            if in_open {
                continue;
            }
            let covered = block.as_ref().is_some_and(|(f, ps)| offset >= *f && offset < *f + ps.len() as u64);
            if !covered {
                if let Some((f, ps)) = block.take() {
                    index.put_block(self.id, f, &ps)?;
                }
                block = index.find_block(self.id, offset)?;
            }
            if let Some((f, ps)) = block.as_mut() {
                if let Some(slot) = offset.checked_sub(*f).and_then(|i| ps.get_mut(i as usize)) {
                    *slot = removed(pos);
                }
            }
        }
        if let Some((f, ps)) = block {
            index.put_block(self.id, f, &ps)?;
        }
        // A checkpoint may already have stored the open block; store the corrected one, as
        // the next checkpoint only rewrites streams that were appended to.
        if open_changed {
            index.put_block(self.id, b.first, &b.positions)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(at: u64) -> Pos {
        Pos { segment: 1, at, len: 10 }
    }

    #[test]
    fn full_blocks_go_out_and_gaps_start_new_ones() {
        let mut b = OpenBlock::at(0);
        let mut put = Vec::new();
        for o in 0..BLOCK_LEN as u64 + 3 {
            b.push("s", o, p(o * 10), false, |f, ps| {
                put.push((f, ps.len()));
                Ok(())
            });
        }
        assert_eq!(put, vec![(0, BLOCK_LEN)]);
        assert_eq!((b.first, b.positions.len()), (BLOCK_LEN as u64, 3));
        // Offset 1000 does not follow: the 3 open positions go out as a block of their own.
        b.push("s", 1000, p(0), false, |f, ps| {
            put.push((f, ps.len()));
            Ok(())
        });
        assert_eq!(put.last(), Some(&(BLOCK_LEN as u64, 3)));
        assert_eq!((b.first, b.positions.len()), (1000, 1));
        // A failing index keeps the positions in memory, to be written with the next one.
        let mut b = OpenBlock::at(0);
        for o in 0..BLOCK_LEN as u64 + 1 {
            b.push("s", o, p(o), false, |_, _| Err(crate::Error::Closed));
        }
        assert_eq!((b.first, b.positions.len()), (0, BLOCK_LEN + 1));
    }

    #[test]
    fn a_checkpoint_takes_only_what_it_stored_out_of_memory() {
        let meta = StreamMeta {
            id: 1,
            name: "s".into(),
            shard: 0,
            first_offset: 0,
            next_offset: 10,
            retention: Retention::default(),
            compacted: false,
        };
        let s = StreamState::from_meta(&meta);
        let push = |o: u64| {
            s.open.lock().unwrap().push("s", o, p(o), false, |_, _| Ok(()));
        };
        (10..15).for_each(push);
        let state = s.checkpoint_state();
        // Appended between the snapshot and the commit: stays.
        (15..17).for_each(push);
        s.checkpointed(&state);
        let b = s.open.lock().unwrap();
        assert_eq!((b.first, b.positions.clone()), (15, vec![p(15), p(16)]));
        drop(b);
        // A stale checkpoint (the block moved on meanwhile) changes nothing.
        s.checkpointed(&state);
        assert_eq!(s.open.lock().unwrap().first, 15);
    }

    fn stream_at(first: u64) -> StreamState {
        StreamState::from_meta(&StreamMeta {
            id: 7,
            name: "s".into(),
            shard: 0,
            first_offset: first,
            next_offset: first,
            retention: Retention::default(),
            compacted: false,
        })
    }

    /// The order `crate::checkpointer` relies on: a block that fills up while a checkpoint
    /// holding its first positions is being committed reaches the index after that
    /// checkpoint (not under it), and readers and compaction find it in memory meanwhile.
    #[test]
    fn a_block_filled_during_a_checkpoint_waits_for_it_and_is_read_from_memory_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path(), crate::SyncMode::None).unwrap();
        let s = stream_at(0);
        for o in 0..10 {
            assert!(!s.push_position(&index, o, p(o), false));
        }
        let snapshot = s.checkpoint_state();
        // The checkpoint is in flight: the block fills and is held back.
        let mut held = false;
        for o in 10..BLOCK_LEN as u64 + 2 {
            held = s.push_position(&index, o, p(o), true);
        }
        assert!(held, "the full block waits in memory");
        assert_eq!(index.find_block(7, 5).unwrap(), None, "nothing reached the index yet");
        let read = |o: u64| s.position(&index, o, o, &mut None).unwrap();
        assert_eq!(read(5), Some(p(5)));
        assert_eq!(read(BLOCK_LEN as u64 - 1), Some(p(BLOCK_LEN as u64 - 1)));
        assert_eq!(read(BLOCK_LEN as u64 + 1), Some(p(BLOCK_LEN as u64 + 1)));
        // Compaction marks a record of the held-back block as removed.
        s.set_positions(&index, &[(3, None)]).unwrap();
        assert_eq!(read(3), None);

        // The checkpoint commits its 10 positions; then the full block goes out over them.
        index.commit_checkpoint(0, None, std::slice::from_ref(&snapshot)).unwrap();
        s.checkpointed(&snapshot);
        assert_eq!(index.find_block(7, 5).unwrap().map(|(f, ps)| (f, ps.len())), Some((0, 10)));
        s.write_sealed(&index).unwrap();
        assert!(s.open.lock().unwrap().sealed.is_empty());
        let (first, stored) = index.find_block(7, 5).unwrap().unwrap();
        assert_eq!((first, stored.len()), (0, BLOCK_LEN));
        assert_eq!(stored[3].at, REMOVED, "compaction's change went out with the block");
        assert_eq!(read(3), None);
        assert_eq!(read(1000), Some(p(1000)));
        assert_eq!(read(BLOCK_LEN as u64 + 1), Some(p(BLOCK_LEN as u64 + 1)));
    }
}
