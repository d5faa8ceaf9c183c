//! Group commit: the queue between appenders and a shard's single writer.
//!
//! Appenders submit a request ([`CommitQueue::submit_or_commit`]) and get a
//! [`Completion`]. The writer takes *everything* pending in one go
//! ([`CommitQueue::take_batch`]), hands it to a [`BatchSink`] which writes it with one
//! write and one sync, and then completes every waiter in submission order, each exactly
//! once. So throughput grows with the number of concurrent appenders while latency stays
//! near one `fdatasync`.
//!
//! A waiter that blocks a thread ([`Completion::wait`]) does not always hand the work to
//! the writer: when no commit is under way and the batch is ready, it commits the queue
//! itself ([`Lead`]), as the writer would, and so saves two thread wake-ups per commit (the
//! writer's and its own). Futures never do that; they leave the I/O to the writer.
//!
//! Such a waiter also does not go to sleep at once: for up to its shard's [`YieldBudget`] it
//! gives its CPU away (`sched_yield`) and looks again. A thread put to sleep has to be woken,
//! and on a virtual machine with few cores that wake-up (an inter-processor interrupt and a
//! context switch) takes a good part of an `fdatasync`: while the threads of one commit
//! come back one by one, the disk idles. A yielding thread is back at its next turn on
//! the CPU, without a wake-up.
//!
//! The queue is bounded in bytes: a submitter blocks while the queue is over its limit,
//! which is the back-pressure the broker relies on (promise 4). This module uses no tokio
//! so that it can be model-checked with loom (`wal/README.md` says how to run it).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use crate::error::{Error, Result};
use crate::sync::{lock, Arc, Condvar, Mutex};

/// One-shot slot shared by a [`Completion`] and the writer's [`Completer`].
struct Slot<T> {
    state: Mutex<SlotState<T>>,
    cond: Condvar,
}

struct SlotState<T> {
    value: Option<Result<T>>,
    waker: Option<Waker>,
    /// The result was handed out; polling again is a caller bug (see `poll`).
    taken: bool,
    /// A thread is blocked in [`Completion::wait`]: only then is the condvar signalled (a
    /// signal is a syscall, and most waiters are futures or have not started waiting yet).
    blocked: bool,
}

/// The appender's side: resolves to the result of its append. Usable both as a `Future`
/// (tokio-friendly, never blocks the executor) and from a plain thread with [`Completion::wait`].
pub struct Completion<T> {
    slot: Arc<Slot<T>>,
    /// What a blocked [`Completion::wait`] may commit itself (see [`Lead`]).
    lead: Option<std::sync::Arc<dyn Lead>>,
}

/// Lets a thread blocked on its append commit the queued batch itself instead of waking
/// the writer and sleeping until the writer wakes it ([`CommitQueue::try_lead`]).
pub(crate) trait Lead: Send + Sync {
    /// Commits the batch queued now on the calling thread if no commit is under way and the
    /// batch is ready to go; whether it did.
    fn lead(&self) -> bool;
    /// Leaves what is queued to the writer (see [`CommitQueue::hand_over`]).
    fn hand_over(&self);
    /// Like [`Lead::lead`], for a thread that will not wait for the batch: when another
    /// commit is under way, it hands what is queued over to the writer instead.
    fn lead_or_hand_over(&self) -> bool;
    /// How long a blocked waiter yields its CPU before it sleeps (see [`YieldBudget`]).
    fn yield_budget(&self) -> std::time::Duration;
}

/// How long a thread blocked in [`Completion::wait`] keeps yielding its CPU, looking for
/// its result and leading commits, before it sleeps on its slot. For a shard whose commits
/// sync, it follows the sync times the writer reports ([`YieldBudget::follow`]) and is zero
/// until the first; otherwise it is the maximum. The default is zero: waiters sleep at once.
#[derive(Debug, Default)]
pub(crate) struct YieldBudget {
    nanos: std::sync::atomic::AtomicU64,
    max: std::time::Duration,
    follows_syncs: bool,
}

impl YieldBudget {
    /// A budget of at most `max`, for a shard whose commits sync or not.
    pub(crate) fn new(max: std::time::Duration, follows_syncs: bool) -> Self {
        let start = if follows_syncs { std::time::Duration::ZERO } else { max };
        YieldBudget { nanos: (start.as_nanos() as u64).into(), max, follows_syncs }
    }

    /// Sets the budget for a shard that syncs in `sync_avg` on average (ignored where
    /// commits do not sync).
    ///
    /// A waiter waits for at most the rest of the commit under way, a gather and its own
    /// commit: about three syncs. Where that is more than the maximum, most waits would
    /// outlast the budget and yielding would only burn CPU before the sleep: the budget is
    /// zero.
    pub(crate) fn follow(&self, sync_avg: std::time::Duration) {
        if !self.follows_syncs {
            return;
        }
        let wait = sync_avg * 3;
        let budget = if wait <= self.max { wait } else { std::time::Duration::ZERO };
        self.nanos.store(budget.as_nanos() as u64, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.nanos.load(std::sync::atomic::Ordering::Relaxed))
    }
}

/// How often a yielding waiter tries to lead: trying takes the queue's lock, which the
/// appenders coming back from the last commit need, and with many yielding waiters one of
/// them tries often enough.
#[cfg(not(loom))]
const LEAD_RETRY: std::time::Duration = std::time::Duration::from_micros(10);

/// A shard's queue and sink, as a [`Lead`] for its completions.
pub(crate) struct Committer<R, S: BatchSink<R>> {
    pub(crate) queue: std::sync::Arc<CommitQueue<R, S::Out>>,
    pub(crate) sink: std::sync::Arc<Mutex<S>>,
    /// Batches committed through [`Lead::lead`] (not by the writer), for statistics.
    pub(crate) led: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Set by the shard's writer.
    pub(crate) budget: std::sync::Arc<YieldBudget>,
}

impl<R, S> Lead for Committer<R, S>
where
    R: Weighted + Send + 'static,
    S: BatchSink<R> + Send + 'static,
    S::Out: Send + 'static,
{
    fn lead(&self) -> bool {
        self.try_lead() == Led::Committed
    }

    fn hand_over(&self) {
        self.queue.hand_over()
    }

    fn lead_or_hand_over(&self) -> bool {
        match self.try_lead() {
            Led::Committed => true,
            Led::Busy => {
                self.queue.hand_over();
                false
            }
            Led::Empty | Led::Gathering => false,
        }
    }

    fn yield_budget(&self) -> std::time::Duration {
        self.budget.get()
    }
}

impl<R: Weighted, S: BatchSink<R>> Committer<R, S> {
    /// [`CommitQueue::try_lead`], counted.
    fn try_lead(&self) -> Led {
        let led = self.queue.try_lead(&self.sink);
        if led == Led::Committed {
            self.led.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        led
    }
}

/// The writer's side. Consumed by [`Completer::complete`], so a waiter is completed at most
/// once; dropping it uncompleted completes the waiter with [`Error::Closed`], so at least once.
pub(crate) struct Completer<T> {
    slot: Option<Arc<Slot<T>>>,
}

pub(crate) fn completion_pair<T>() -> (Completer<T>, Completion<T>) {
    let slot = Arc::new(Slot {
        state: Mutex::new(SlotState { value: None, waker: None, taken: false, blocked: false }),
        cond: Condvar::new(),
    });
    (Completer { slot: Some(slot.clone()) }, Completion { slot, lead: None })
}

impl<T> Completer<T> {
    pub(crate) fn complete(mut self, value: Result<T>) {
        self.complete_now(value);
    }

    /// Completes the waiter but leaves the request it belongs to alive: the writer wakes
    /// every waiter of a batch first and frees the batch afterwards.
    fn complete_now(&mut self, value: Result<T>) {
        if let Some(slot) = self.slot.take() {
            fill(&slot, value);
        }
    }
}

fn fill<T>(slot: &Slot<T>, value: Result<T>) {
    let (waker, blocked) = {
        let mut st = lock(&slot.state);
        debug_assert!(st.value.is_none(), "a waiter was completed twice");
        st.value = Some(value);
        (st.waker.take(), st.blocked)
    };
    if blocked {
        slot.cond.notify_all();
    }
    if let Some(w) = waker {
        w.wake();
    }
}

impl<T> Drop for Completer<T> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            fill(&slot, Err(Error::Closed));
        }
    }
}

impl<T> Completion<T> {
    /// A completion that has already failed with `e` (for callers that want one type for
    /// "refused up front" and "failed in the writer").
    pub fn failed(e: Error) -> Completion<T> {
        Self::ready(Err(e))
    }

    /// Lets [`Completion::wait`] commit on the waiting thread through `lead`.
    pub(crate) fn led_by(mut self, lead: &std::sync::Arc<dyn Lead>) -> Self {
        self.lead = Some(lead.clone());
        self
    }

    /// A completion that is already resolved (used for appends refused up front).
    pub(crate) fn ready(value: Result<T>) -> Completion<T> {
        let (done, c) = completion_pair();
        done.complete(value);
        c
    }

    /// Blocks the current thread until the append is complete. In async code, `.await` the
    /// completion instead.
    ///
    /// While it waits, the thread commits its shard's queued appends itself when no commit is
    /// under way, and it yields its CPU and looks again for a while
    /// ([`crate::Options::wait_yield`]) before it sleeps until woken.
    ///
    /// ```
    /// # use promptmq_wal::{Wal, Options};
    /// # let dir = tempfile::tempdir()?;
    /// # let wal = Wal::open(dir.path(), Options::default())?;
    /// # let s = wal.stream("s")?;
    /// let pending = wal.append(&s, "a");      // queued for the next group commit
    /// let offset = pending.wait()?;          // returns once durable
    /// assert_eq!(offset, 0);
    /// # Ok::<(), promptmq_wal::Error>(())
    /// ```
    pub fn wait(self) -> Result<T> {
        if let Some(l) = &self.lead {
            if let Some(v) = self.lead_and_yield(l.as_ref()) {
                return v;
            }
        }
        let mut st = lock(&self.slot.state);
        loop {
            if let Some(v) = st.value.take() {
                return v;
            }
            st.blocked = true;
            st = self.slot.cond.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl<T> Completion<T> {
    /// Before [`Completion::wait`] sleeps: commits the queued batch on this thread whenever
    /// it can, and yields the CPU between looks for up to `l`'s budget. The result, if it
    /// came by then.
    #[cfg(not(loom))]
    fn lead_and_yield(&self, l: &dyn Lead) -> Option<Result<T>> {
        let started = std::time::Instant::now();
        let budget = l.yield_budget();
        let mut next_lead = started;
        loop {
            if let Some(v) = lock(&self.slot.state).value.take() {
                return Some(v);
            }
            let now = std::time::Instant::now();
            if now >= next_lead {
                // Our request may be behind the batch just committed: try the next one too.
                if l.lead() {
                    continue;
                }
                next_lead = now + LEAD_RETRY;
            }
            if now.duration_since(started) >= budget {
                return None;
            }
            std::thread::yield_now();
        }
    }

    /// Under loom, which models no time: lead while that commits, then sleep.
    #[cfg(loom)]
    fn lead_and_yield(&self, l: &dyn Lead) -> Option<Result<T>> {
        loop {
            if let Some(v) = lock(&self.slot.state).value.take() {
                return Some(v);
            }
            if !l.lead() {
                return None;
            }
        }
    }
}

/// Like every future, a `Completion` must not be polled again after it returned `Ready`
/// (in a `select!` loop, drop or replace it once it has resolved): the result is handed out
/// once, and a second poll would wait forever. Debug builds panic on it instead.
impl<T> Future for Completion<T> {
    type Output = Result<T>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        let mut st = lock(&self.slot.state);
        match st.value.take() {
            Some(v) => {
                st.taken = true;
                Poll::Ready(v)
            }
            None => {
                debug_assert!(!st.taken, "a Completion was polled after it returned Ready");
                st.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// A request that knows how many queue bytes it occupies.
pub(crate) trait Weighted {
    fn weight(&self) -> usize;
}

/// A queued request and the completer of its waiter.
pub(crate) struct Pending<R, T> {
    pub(crate) req: R,
    pub(crate) done: Completer<T>,
}

struct QueueState<R, T> {
    pending: VecDeque<Pending<R, T>>,
    bytes: usize,
    closed: bool,
    /// The writer is waiting on `work` until `pending` holds this many requests (1 when it
    /// is idle; more while it gathers a batch; 0 when it is busy and needs no signal).
    writer_wants: usize,
    /// Submitters blocked on `space`.
    blocked_submitters: usize,
    /// A batch was taken (by the writer or a leading waiter) and is not committed yet: a
    /// request committed now could overtake it (see [`CommitQueue::submit_or_commit`]).
    in_flight: bool,
    /// How the next batch should gather, set by the last commit (see [`Gather`]).
    #[cfg_attr(loom, allow(dead_code))]
    gather: Option<Gather>,
    /// The last batch was committed by a waiting thread ([`CommitQueue::try_lead`]): one will
    /// likely commit the next too, so submissions do not wake the writer, which looks at
    /// the queue only every [`LEAD_PATIENCE`] (taking what no leader took by then).
    led: bool,
}

#[cfg_attr(loom, allow(dead_code))]
/// How long the writer leaves queued requests to a leading waiter (see `QueueState::led`):
/// longer than a waiting thread takes to queue its next batch, short enough that an
/// async appender after a blocking one waits for it once, briefly.
const LEAD_PATIENCE: std::time::Duration = std::time::Duration::from_micros(250);

/// The multi-producer, single-consumer group-commit queue.
pub(crate) struct CommitQueue<R, T> {
    state: Mutex<QueueState<R, T>>,
    /// Signalled when work arrives or the queue closes (the writer waits on it).
    work: Condvar,
    /// Signalled when the writer drained the queue (blocked submitters wait on it).
    space: Condvar,
    max_bytes: usize,
}

/// How long the writer may hold a batch back for more requests to join it.
///
/// In a closed loop (appenders that submit again as soon as their previous append is
/// acknowledged) the requests acknowledged by one commit come back a few microseconds
/// later — after the writer has already started the next commit with the first of them.
/// Batches then alternate between a few requests and the rest, and each costs a sync. Waiting
/// for as many requests as the previous batch held plus those that queued during its commit
/// (the other half), but only until shortly after that batch completed, merges the halves
/// into whole batches; in an open loop the queue refills during the sync and nothing waits.
/// (Counting the queued half in made no difference while blocked threads slept — they came
/// back too late for the window — but with threads that yield ([`YieldBudget`]) it took
/// batches at 64 threads from 44 to 56–62 appends, BENCHMARKS.md, session 17.)
#[derive(Debug, Clone, Copy)]
#[cfg_attr(loom, allow(dead_code))]
pub(crate) struct Gather {
    /// Requests to wait for (the previous batch and what queued while it was committed).
    pub(crate) target: usize,
    /// When to stop waiting.
    pub(crate) until: std::time::Instant,
}

/// What [`CommitQueue::try_lead`] did.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub(crate) enum Led {
    /// Committed the queued batch.
    Committed,
    /// Nothing was queued.
    Empty,
    /// A commit is under way (by the writer or another leader).
    Busy,
    /// The batch is still gathering (see [`Gather`]): more requests are expected soon.
    Gathering,
}

/// What [`CommitQueue::take_batch`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Taken {
    /// At least one request was moved into the batch.
    Work,
    /// The queue is closed and empty: the writer should stop.
    Closed,
}

impl<R: Weighted, T> CommitQueue<R, T> {
    pub(crate) fn new(max_bytes: usize) -> Self {
        CommitQueue {
            state: Mutex::new(QueueState {
                pending: VecDeque::new(),
                bytes: 0,
                closed: false,
                writer_wants: 0,
                blocked_submitters: 0,
                in_flight: false,
                gather: None,
                led: false,
            }),
            work: Condvar::new(),
            space: Condvar::new(),
            max_bytes: max_bytes.max(1),
        }
    }

    /// Queues a request. Blocks while the queue holds more than its byte limit (a single
    /// request larger than the limit is admitted when the queue is empty).
    #[cfg(all(test, not(loom)))]
    pub(crate) fn submit(&self, req: R) -> Completion<T> {
        let (done, completion) = completion_pair();
        self.enqueue([Pending { req, done }]);
        completion
    }

    /// Queues requests one after the other under one lock (so nothing gets between them),
    /// blocking while the queue holds more than its byte limit (a group larger than the
    /// limit is admitted when the queue is empty). On a closed queue their waiters fail.
    fn enqueue<G>(&self, group: G)
    where
        G: AsRef<[Pending<R, T>]> + IntoIterator<Item = Pending<R, T>>,
    {
        let w: usize = group.as_ref().iter().map(|p| p.req.weight()).sum();
        let mut st = lock(&self.state);
        while !st.closed && st.bytes > 0 && st.bytes + w > self.max_bytes {
            st.blocked_submitters += 1;
            if st.writer_wants > 0 {
                self.work.notify_one(); // a gathering writer stops waiting for more
            }
            st = self.space.wait(st).unwrap_or_else(|p| p.into_inner());
            st.blocked_submitters -= 1;
        }
        if st.closed {
            drop(st);
            // Each dropped completer fails its waiter with `Error::Closed`.
            drop(group);
            return;
        }
        st.bytes += w;
        st.pending.extend(group);
        // A blocked submitter means the queue is full: the writer gathers no longer.
        let wake = st.writer_wants > 0
            && ((st.pending.len() >= st.writer_wants && !Self::leader_expected(&st)) || st.blocked_submitters > 0);
        if wake {
            // One notification per wait: until the writer runs, later submitters would each
            // make another futex call (the most frequent system call of the broker under load).
            // The woken writer checks the queue again either way.
            st.writer_wants = 0;
        }
        drop(st);
        if wake {
            self.work.notify_one();
        }
    }

    /// Moves every pending request into `batch` (at most `max_bytes` of them, but at least
    /// one), waiting for one to arrive and for a batch a leading waiter took to be
    /// committed. Gathers first (see [`Gather`]): as `gather` says, or else as the last
    /// commit said.
    pub(crate) fn take_batch(&self, batch: &mut Vec<Pending<R, T>>, max_bytes: usize, gather: Option<Gather>) -> Taken {
        let mut st = lock(&self.state);
        loop {
            if !st.pending.is_empty() && !st.in_flight {
                #[cfg(not(loom))]
                if let Some(g) = gather.or(st.gather) {
                    st = self.gather(st, g, max_bytes);
                }
                #[cfg(loom)]
                let _ = gather;
                // A leading waiter may have taken them meanwhile.
                if !st.pending.is_empty() && !st.in_flight {
                    let blocked = Self::take_into(&mut st, batch, max_bytes);
                    st.led = false;
                    drop(st);
                    if blocked {
                        self.space.notify_all();
                    }
                    return Taken::Work;
                }
            }
            if st.closed && st.pending.is_empty() {
                return Taken::Closed;
            }
            st.writer_wants = 1;
            #[cfg(not(loom))]
            if st.led {
                let (next, timeout) = self.work.wait_timeout(st, LEAD_PATIENCE).unwrap_or_else(|p| p.into_inner());
                st = next;
                if timeout.timed_out() && st.pending.is_empty() && !st.in_flight {
                    // No leader in sight: back to being woken by submissions.
                    st.led = false;
                }
                st.writer_wants = 0;
                continue;
            }
            st = self.work.wait(st).unwrap_or_else(|p| p.into_inner());
            st.writer_wants = 0;
        }
    }

    /// Moves the pending requests into `batch`, up to `max_bytes` (at least one), and marks
    /// the batch in flight. Whether submitters are blocked on `space` (to be told).
    fn take_into(st: &mut QueueState<R, T>, batch: &mut Vec<Pending<R, T>>, max_bytes: usize) -> bool {
        let mut taken = 0usize;
        while let Some(p) = st.pending.front() {
            let w = p.req.weight();
            if !batch.is_empty() && taken + w > max_bytes {
                break;
            }
            taken += w;
            if let Some(p) = st.pending.pop_front() {
                batch.push(p);
            }
        }
        st.bytes -= taken;
        st.in_flight = true;
        st.blocked_submitters > 0
    }

    /// Whether submissions leave the writer asleep for a leading waiter (see
    /// `QueueState::led`). Never under loom, which does not model the writer's timeout.
    fn leader_expected(st: &QueueState<R, T>) -> bool {
        #[cfg(loom)]
        let _ = st;
        #[cfg(loom)]
        return false;
        #[cfg(not(loom))]
        st.led
    }

    /// Whether the writer would take the pending requests now rather than wait for more
    /// (see [`CommitQueue::gathered`]).
    fn batch_ready(st: &QueueState<R, T>, max_bytes: usize) -> bool {
        #[cfg(loom)]
        let _ = (st, max_bytes);
        #[cfg(loom)]
        return true;
        #[cfg(not(loom))]
        st.gather.is_none_or(|g| Self::gathered(st, g, max_bytes))
    }

    /// Commits the batch queued now on the calling thread, as the writer would, if the sink
    /// is free, no batch is in flight and the batch is ready (see [`Lead`]); or says why not.
    pub(crate) fn try_lead<S: BatchSink<R, Out = T>>(&self, sink: &Mutex<S>) -> Led {
        let Ok(mut s) = sink.try_lock() else { return Led::Busy };
        let max_bytes = s.max_batch_bytes();
        let mut batch = Vec::new();
        {
            let mut st = lock(&self.state);
            if st.pending.is_empty() {
                return Led::Empty;
            }
            if st.in_flight {
                return Led::Busy;
            }
            if !Self::batch_ready(&st, max_bytes) {
                return Led::Gathering;
            }
            if Self::take_into(&mut st, &mut batch, max_bytes) {
                self.space.notify_all();
            }
            st.led = true;
        }
        let result = s.commit(&batch);
        let window = s.gather_window();
        drop(s);
        self.finish(&mut batch, result, window);
        Led::Committed
    }

    /// Leaves the queued requests to the writer: after a leader's commit the writer waits
    /// for the next leader instead of being woken by submissions (see `QueueState::led`).
    /// A would-be leader that could not commit what is queued calls this, so that the
    /// writer takes it now (or when the batch in flight is committed) rather than on its
    /// next look.
    pub(crate) fn hand_over(&self) {
        let mut st = lock(&self.state);
        if !st.led || st.pending.is_empty() {
            return;
        }
        st.led = false;
        // With a batch in flight, its `batch_committed` wakes the writer.
        let wake = st.writer_wants > 0 && !st.in_flight;
        if wake {
            st.writer_wants = 0;
        }
        drop(st);
        if wake {
            self.work.notify_one();
        }
    }

    /// After a commit: lets the next batch be taken, completes the waiters, and sets how
    /// the next batch gathers (see [`Gather`]). Its deadline is measured from the end — the
    /// acknowledged appenders only start coming back now — but the target is set before the
    /// first waiter is woken, so that no batch is taken by the rule of an older one meanwhile.
    fn finish(&self, batch: &mut Vec<Pending<R, T>>, result: Result<Vec<T>>, window: Option<std::time::Duration>) {
        #[cfg(not(loom))]
        let gather = |target, w| Gather { target, until: std::time::Instant::now() + w };
        #[cfg(not(loom))]
        let target = {
            let mut st = lock(&self.state);
            let target = batch.len() + st.pending.len();
            st.gather = window.filter(|_| target > 1).map(|w| gather(target, w));
            target
        };
        #[cfg(loom)]
        let target = batch.len();
        self.batch_committed();
        complete_batch(batch, result);
        #[cfg(not(loom))]
        if let Some(w) = window.filter(|_| target > 1) {
            lock(&self.state).gather = Some(gather(target, w));
        }
        #[cfg(loom)]
        let _ = (window, target);
        batch.clear();
    }

    /// Waits until the batch is gathered (see [`CommitQueue::gathered`]).
    #[cfg(not(loom))]
    fn gather<'a>(
        &self,
        mut st: crate::sync::MutexGuard<'a, QueueState<R, T>>,
        g: Gather,
        max_bytes: usize,
    ) -> crate::sync::MutexGuard<'a, QueueState<R, T>> {
        while !Self::gathered(&st, g, max_bytes) {
            let left = g.until.saturating_duration_since(std::time::Instant::now());
            st.writer_wants = g.target;
            st = self.work.wait_timeout(st, left).unwrap_or_else(|p| p.into_inner()).0;
            st.writer_wants = 0;
        }
        st
    }

    /// Whether a batch gathering by `g` may go: `g.target` requests are pending, `g.until`
    /// passed, the batch would be over `max_bytes`, a submitter is blocked on a full queue,
    /// or the queue is closed — whichever comes first.
    #[cfg(not(loom))]
    fn gathered(st: &QueueState<R, T>, g: Gather, max_bytes: usize) -> bool {
        st.pending.len() >= g.target
            || st.bytes >= max_bytes
            || st.blocked_submitters > 0
            || st.closed
            || std::time::Instant::now() >= g.until
    }

    /// The batch taken last is committed: requests may be committed inline again, and a
    /// writer that waited for a leading waiter's batch may take the next.
    pub(crate) fn batch_committed(&self) {
        let mut st = lock(&self.state);
        st.in_flight = false;
        let wake = st.writer_wants > 0 && !st.pending.is_empty() && !Self::leader_expected(&st);
        if wake {
            st.writer_wants = 0;
        }
        drop(st);
        if wake {
            self.work.notify_one();
        }
    }

    /// Commits `req` on the calling thread when that cannot reorder it: the sink is free,
    /// nothing is queued or being committed, and the sink agrees
    /// ([`BatchSink::commit_inline`]); otherwise queues it for the writer.
    ///
    /// A commit without a sync costs a few microseconds of `write`; handing it to the
    /// writer thread and back costs two thread wake-ups, which on a loaded machine are most
    /// of an append's latency. Under load the sink is busy or requests are queued, so they
    /// still go through the writer in batches.
    pub(crate) fn submit_or_commit<S: BatchSink<R, Out = T>>(&self, req: R, sink: &Mutex<S>) -> Completion<T> {
        let (done, completion) = completion_pair();
        self.commit_or_enqueue([Pending { req, done }], sink);
        completion
    }

    /// [`CommitQueue::submit_or_commit`] for requests whose waiters the caller made
    /// ([`completion_pair`]): committed together, in order, as one batch when the queue is
    /// quiet; otherwise queued together.
    pub(crate) fn submit_or_commit_group<S: BatchSink<R, Out = T>>(&self, group: Vec<Pending<R, T>>, sink: &Mutex<S>) {
        if !group.is_empty() {
            self.commit_or_enqueue(group, sink);
        }
    }

    fn commit_or_enqueue<S, G>(&self, mut group: G, sink: &Mutex<S>)
    where
        S: BatchSink<R, Out = T>,
        G: AsRef<[Pending<R, T>]> + AsMut<[Pending<R, T>]> + IntoIterator<Item = Pending<R, T>>,
    {
        if let Ok(mut s) = sink.try_lock() {
            if s.commit_inline(group.as_ref()) && self.quiet() {
                let result = s.commit(group.as_ref());
                drop(s);
                complete_batch(group.as_mut(), result);
                return;
            }
        }
        self.enqueue(group);
    }

    /// Nothing is queued or being committed, and the queue is open.
    fn quiet(&self) -> bool {
        let st = lock(&self.state);
        st.pending.is_empty() && !st.in_flight && !st.closed
    }

    /// Refuses new requests; requests already queued are still handed to the writer.
    pub(crate) fn close(&self) {
        lock(&self.state).closed = true;
        self.work.notify_all();
        self.space.notify_all();
    }
}

/// The writer's side of group commit: turns a batch into durable records.
pub(crate) trait BatchSink<R> {
    type Out;
    /// Writes (and syncs, per the sync mode) the whole batch. On success returns one output
    /// per request, in order. On failure nothing of the batch may remain visible.
    fn commit(&mut self, batch: &[Pending<R, Self::Out>]) -> Result<Vec<Self::Out>>;
    /// Called once when the queue is closed and drained.
    fn shutdown(&mut self) {}
    /// Largest batch in bytes.
    fn max_batch_bytes(&self) -> usize {
        usize::MAX
    }
    /// How long after a commit completes the next batch may wait to fill up to the size of
    /// the one just committed (see [`Gather`]); `None` never waits.
    fn gather_window(&self) -> Option<std::time::Duration> {
        None
    }
    /// Whether `group` may be committed on the appender's thread (see
    /// [`CommitQueue::submit_or_commit`]): only when that commit is short (no sync).
    fn commit_inline(&self, _group: &[Pending<R, Self::Out>]) -> bool {
        false
    }
}

/// Completes every waiter of a committed batch with its output, or all with the error.
fn complete_batch<R, T>(batch: &mut [Pending<R, T>], result: Result<Vec<T>>) {
    match result {
        Ok(outs) if outs.len() == batch.len() => {
            for (p, out) in batch.iter_mut().zip(outs) {
                p.done.complete_now(Ok(out));
            }
        }
        Ok(outs) => {
            let e = Error::Index(format!("writer returned {} results for {} appends", outs.len(), batch.len()));
            for p in batch.iter_mut() {
                p.done.complete_now(Err(e.duplicate()));
            }
        }
        Err(e) => {
            for p in batch.iter_mut() {
                p.done.complete_now(Err(e.duplicate()));
            }
        }
    }
}

/// The writer loop: drains the queue into the sink until the queue is closed. The sink is
/// shared with appenders that commit inline; it is locked for each call only.
pub(crate) fn run_writer<R: Weighted, S: BatchSink<R>>(queue: &CommitQueue<R, S::Out>, sink: &Mutex<S>) {
    let mut batch: Vec<Pending<R, S::Out>> = Vec::new();
    loop {
        let max_bytes = lock(sink).max_batch_bytes();
        match queue.take_batch(&mut batch, max_bytes, None) {
            Taken::Closed => break,
            Taken::Work => {
                let (result, window) = {
                    let mut s = lock(sink);
                    (s.commit(&batch), s.gather_window())
                };
                queue.finish(&mut batch, result, window);
            }
        }
    }
    lock(sink).shutdown();
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    struct Req(u64, usize);
    impl Weighted for Req {
        fn weight(&self) -> usize {
            self.1
        }
    }

    /// Assigns consecutive offsets, failing the batches whose index is in `fail`.
    struct CountingSink {
        next: u64,
        batches: usize,
        fail: Vec<usize>,
        sizes: Vec<usize>,
    }
    impl BatchSink<Req> for CountingSink {
        type Out = u64;
        fn commit(&mut self, batch: &[Pending<Req, u64>]) -> Result<Vec<u64>> {
            self.batches += 1;
            self.sizes.push(batch.len());
            if self.fail.contains(&(self.batches - 1)) {
                return Err(Error::DiskFull { action: "writing", path: "x".into() });
            }
            let out = batch.iter().map(|p| {
                let o = self.next;
                self.next += p.req.0;
                o
            });
            Ok(out.collect())
        }
    }

    #[test]
    fn batches_complete_in_order_and_failures_consume_no_offsets() {
        let q = std::sync::Arc::new(CommitQueue::<Req, u64>::new(1 << 20));
        let comps: Vec<_> = (0..5).map(|_| q.submit(Req(1, 10))).collect();
        q.close();
        let sink = Mutex::new(CountingSink { next: 0, batches: 0, fail: vec![], sizes: vec![] });
        run_writer(&q, &sink);
        let sink = lock(&sink);
        let got: Vec<u64> = comps.into_iter().map(|c| c.wait().unwrap()).collect();
        assert_eq!(got, vec![0, 1, 2, 3, 4]);
        assert_eq!(sink.sizes, vec![5], "everything pending goes in one batch");

        let q = std::sync::Arc::new(CommitQueue::<Req, u64>::new(1 << 20));
        let first = q.submit(Req(1, 10));
        let sink = Mutex::new(CountingSink { next: 0, batches: 0, fail: vec![0], sizes: vec![] });
        let qq = q.clone();
        let h = std::thread::spawn(move || {
            run_writer(&qq, &sink);
            sink
        });
        assert!(first.wait().unwrap_err().is_disk_full());
        let second = q.submit(Req(1, 10));
        assert_eq!(second.wait().unwrap(), 0, "the failed batch consumed no offset");
        q.close();
        h.join().unwrap();
        assert!(matches!(q.submit(Req(1, 1)).wait(), Err(Error::Closed)));
    }

    #[test]
    fn max_batch_bytes_splits_batches() {
        let q = CommitQueue::<Req, u64>::new(1 << 20);
        let _c: Vec<_> = (0..4).map(|_| q.submit(Req(1, 100))).collect();
        let mut batch = Vec::new();
        assert_eq!(q.take_batch(&mut batch, 250, None), Taken::Work);
        assert_eq!(batch.len(), 2);
    }

    #[test]
    fn a_gathering_writer_waits_for_the_batch_to_fill() {
        let q = std::sync::Arc::new(CommitQueue::<Req, u64>::new(1 << 20));
        let _first = q.submit(Req(1, 1));
        let qq = q.clone();
        let late = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            (qq.submit(Req(1, 1)), qq.submit(Req(1, 1)))
        });
        let mut batch = Vec::new();
        let gather = Gather { target: 3, until: std::time::Instant::now() + std::time::Duration::from_secs(30) };
        assert_eq!(q.take_batch(&mut batch, usize::MAX, Some(gather)), Taken::Work);
        assert_eq!(batch.len(), 3, "the two late requests joined the batch");
        late.join().unwrap();
    }

    #[test]
    fn gathering_stops_at_its_deadline_and_when_the_queue_is_full() {
        let q = std::sync::Arc::new(CommitQueue::<Req, u64>::new(2));
        let _first = q.submit(Req(1, 1));
        let mut batch = Vec::new();
        let gather = Gather { target: 10, until: std::time::Instant::now() + std::time::Duration::from_millis(20) };
        let t = std::time::Instant::now();
        assert_eq!(q.take_batch(&mut batch, usize::MAX, Some(gather)), Taken::Work);
        assert_eq!(batch.len(), 1, "nobody else came before the deadline");
        assert!(t.elapsed() < std::time::Duration::from_secs(10));
        batch.clear();
        q.batch_committed();

        // Two requests fill the queue's byte limit, so a third submitter blocks: waiting for
        // more would wait for ever, so the writer takes what is there.
        let _a = q.submit(Req(1, 1));
        let _b = q.submit(Req(1, 1));
        let qq = q.clone();
        let blocked = std::thread::spawn(move || qq.submit(Req(1, 1)));
        while lock(&q.state).blocked_submitters == 0 {
            std::thread::yield_now();
        }
        let gather = Gather { target: 10, until: std::time::Instant::now() + std::time::Duration::from_secs(30) };
        assert_eq!(q.take_batch(&mut batch, usize::MAX, Some(gather)), Taken::Work);
        assert_eq!(batch.len(), 2);
        let _c = blocked.join().unwrap();
    }

    #[test]
    fn a_queue_filling_up_ends_the_gathering() {
        let q = std::sync::Arc::new(CommitQueue::<Req, u64>::new(3));
        let _first = q.submit(Req(1, 1));
        let qq = q.clone();
        // Fills the queue while the writer gathers; the fourth request blocks.
        let filler = std::thread::spawn(move || (0..3).map(|_| qq.submit(Req(1, 1))).collect::<Vec<_>>());
        let mut batch = Vec::new();
        let gather = Gather { target: 10, until: std::time::Instant::now() + std::time::Duration::from_secs(60) };
        let t = std::time::Instant::now();
        assert_eq!(q.take_batch(&mut batch, usize::MAX, Some(gather)), Taken::Work);
        assert!(t.elapsed() < std::time::Duration::from_secs(30), "waited for the deadline: {:?}", t.elapsed());
        assert_eq!(batch.len(), 3);
        drop(filler.join().unwrap());
    }

    /// A sink that lets appenders commit on their own thread.
    struct InlineSink(CountingSink);
    impl BatchSink<Req> for InlineSink {
        type Out = u64;
        fn commit(&mut self, batch: &[Pending<Req, u64>]) -> Result<Vec<u64>> {
            self.0.commit(batch)
        }
        fn commit_inline(&self, _group: &[Pending<Req, u64>]) -> bool {
            true
        }
    }

    #[test]
    fn a_quiet_queue_commits_on_the_callers_thread_and_a_busy_one_queues() {
        let q = CommitQueue::<Req, u64>::new(1 << 20);
        let sink = Mutex::new(InlineSink(CountingSink { next: 0, batches: 0, fail: vec![], sizes: vec![] }));
        // No writer thread runs: only an inline commit can complete these.
        assert_eq!(q.submit_or_commit(Req(1, 1), &sink).wait().unwrap(), 0);
        assert_eq!(q.submit_or_commit(Req(1, 1), &sink).wait().unwrap(), 1);

        // Something queued: a later request must not overtake it.
        let queued = q.submit(Req(1, 1));
        let behind = q.submit_or_commit(Req(1, 1), &sink);
        // A batch taken but not committed yet holds back inline commits too.
        let mut batch = Vec::new();
        assert_eq!(q.take_batch(&mut batch, usize::MAX, None), Taken::Work);
        assert_eq!(batch.len(), 2);
        let third = q.submit_or_commit(Req(1, 1), &sink);
        let result = lock(&sink).commit(&batch);
        q.batch_committed();
        complete_batch(&mut batch, result);
        assert_eq!((queued.wait().unwrap(), behind.wait().unwrap()), (2, 3));
        batch.clear();
        assert_eq!(q.take_batch(&mut batch, usize::MAX, None), Taken::Work);
        let result = lock(&sink).commit(&batch);
        q.batch_committed();
        complete_batch(&mut batch, result);
        assert_eq!(third.wait().unwrap(), 4);

        // A busy sink (held by the writer) sends the request to the queue.
        let held = lock(&sink);
        let waiting = q.submit_or_commit(Req(1, 1), &sink);
        drop(held);
        assert_eq!(lock(&q.state).pending.len(), 1);
        q.close();
        run_writer(&q, &sink);
        assert_eq!(waiting.wait().unwrap(), 5);
        // Closed: refused, not committed.
        assert!(matches!(q.submit_or_commit(Req(1, 1), &sink).wait(), Err(Error::Closed)));
    }

    #[test]
    fn the_yield_budget_is_three_syncs_or_nothing() {
        let us = std::time::Duration::from_micros;
        let b = YieldBudget::new(us(1000), true);
        assert_eq!(b.get(), us(0), "no budget before a sync is timed");
        b.follow(us(200));
        assert_eq!(b.get(), us(600));
        b.follow(us(400));
        assert_eq!(b.get(), us(0), "waits that outlast the maximum sleep at once");
        let b = YieldBudget::new(us(1000), false);
        b.follow(us(200));
        assert_eq!(b.get(), us(1000), "without syncs on commit, the maximum");
        let b = YieldBudget::new(us(0), true);
        b.follow(us(200));
        assert_eq!(b.get(), us(0), "a zero maximum never yields");
    }

    /// A sink whose commits take a while, like a sync.
    struct SlowSink(CountingSink);
    impl BatchSink<Req> for SlowSink {
        type Out = u64;
        fn commit(&mut self, batch: &[Pending<Req, u64>]) -> Result<Vec<u64>> {
            std::thread::sleep(std::time::Duration::from_micros(200));
            self.0.commit(batch)
        }
    }

    #[test]
    fn yielding_waiters_commit_everything_without_a_writer() {
        let q = std::sync::Arc::new(CommitQueue::<Req, u64>::new(1 << 20));
        let sink = std::sync::Arc::new(Mutex::new(SlowSink(CountingSink {
            next: 0,
            batches: 0,
            fail: vec![],
            sizes: vec![],
        })));
        let budget = std::sync::Arc::new(YieldBudget::new(std::time::Duration::from_secs(60), false));
        let lead: std::sync::Arc<dyn Lead> =
            std::sync::Arc::new(Committer { queue: q.clone(), sink: sink.clone(), led: Default::default(), budget });
        // No writer thread runs. A waiter whose request queued behind a commit under way
        // cannot lead at once; asleep, it would wait forever. Yielding, it leads later.
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..8 {
            let (q, sink, lead, tx) = (q.clone(), sink.clone(), lead.clone(), tx.clone());
            std::thread::spawn(move || {
                let mut offsets = Vec::new();
                for _ in 0..50 {
                    offsets.push(q.submit_or_commit(Req(1, 1), &sink).led_by(&lead).wait());
                }
                let _ = tx.send(offsets);
            });
        }
        let mut all = Vec::new();
        for _ in 0..8 {
            let got =
                rx.recv_timeout(std::time::Duration::from_secs(60)).expect("a waiter slept with nobody to commit");
            let got: Vec<u64> = got.into_iter().map(|o| o.expect("append")).collect();
            assert!(got.windows(2).all(|w| w[0] < w[1]), "each thread's appends in order: {got:?}");
            all.extend(got);
        }
        all.sort_unstable();
        assert_eq!(all, (0..400).collect::<Vec<u64>>(), "every append got its own offset");
        let s = lock(&sink);
        assert!(s.0.sizes.iter().any(|&n| n > 1), "appends queued during a commit went together: {:?}", s.0.sizes);
    }

    #[test]
    fn a_blocked_waiter_commits_the_queue_itself_unless_a_batch_is_in_flight() {
        let q = std::sync::Arc::new(CommitQueue::<Req, u64>::new(1 << 20));
        let sink = std::sync::Arc::new(Mutex::new(CountingSink { next: 0, batches: 0, fail: vec![], sizes: vec![] }));
        let lead: std::sync::Arc<dyn Lead> = std::sync::Arc::new(Committer {
            queue: q.clone(),
            sink: sink.clone(),
            led: Default::default(),
            budget: Default::default(),
        });
        // No writer thread runs: only a waiter that leads can complete these.
        let a = q.submit_or_commit(Req(1, 1), &sink).led_by(&lead);
        let b = q.submit_or_commit(Req(1, 1), &sink).led_by(&lead);
        assert_eq!(b.wait().unwrap(), 1);
        assert_eq!(a.wait().unwrap(), 0);
        assert_eq!(lock(&sink).sizes, vec![2], "both in one batch, committed by the waiter");

        // A batch taken by the writer and not yet committed: the next may not overtake it.
        let c = q.submit(Req(1, 1));
        let mut batch = Vec::new();
        assert_eq!(q.take_batch(&mut batch, usize::MAX, None), Taken::Work);
        let d = q.submit(Req(1, 1)).led_by(&lead);
        assert!(!lead.lead(), "a batch is in flight");
        let result = lock(&sink).commit(&batch);
        q.finish(&mut batch, result, None);
        assert_eq!(c.wait().unwrap(), 2);
        assert_eq!(d.wait().unwrap(), 3, "led once the batch before was committed");
    }

    #[test]
    fn an_idle_thread_commits_what_is_ready_and_hands_the_rest_to_the_writer() {
        let q = std::sync::Arc::new(CommitQueue::<Req, u64>::new(1 << 20));
        let sink = std::sync::Arc::new(Mutex::new(CountingSink { next: 0, batches: 0, fail: vec![], sizes: vec![] }));
        let idle =
            Committer { queue: q.clone(), sink: sink.clone(), led: Default::default(), budget: Default::default() };
        // No writer thread runs: the idle thread commits what its tasks queued.
        let a = q.submit(Req(1, 1));
        assert!(idle.lead_or_hand_over());
        assert_eq!(a.wait().unwrap(), 0);
        assert!(lock(&q.state).led, "after a led commit the writer waits for the next leader");
        assert!(!idle.lead_or_hand_over(), "nothing queued");
        assert!(lock(&q.state).led, "an empty queue is not handed over");

        // A commit is under way: what was queued behind it goes back to the writer, which
        // is woken by submissions again.
        let b = q.submit(Req(1, 1));
        let mut batch = Vec::new();
        assert_eq!(q.take_batch(&mut batch, usize::MAX, None), Taken::Work);
        lock(&q.state).led = true;
        let c = q.submit(Req(1, 1));
        assert!(!idle.lead_or_hand_over(), "a batch is in flight");
        assert!(!lock(&q.state).led, "handed over to the writer");
        let result = lock(&sink).commit(&batch);
        q.finish(&mut batch, result, None);
        assert_eq!(b.wait().unwrap(), 1);
        assert!(idle.lead_or_hand_over());
        assert_eq!(c.wait().unwrap(), 2);
        assert_eq!(idle.led.load(std::sync::atomic::Ordering::Relaxed), 2, "commits counted");
    }

    #[tokio::test]
    async fn completion_is_a_future() {
        let q = std::sync::Arc::new(CommitQueue::<Req, u64>::new(1 << 20));
        let qq = q.clone();
        let h = std::thread::spawn(move || {
            let sink = Mutex::new(CountingSink { next: 10, batches: 0, fail: vec![], sizes: vec![] });
            run_writer(&qq, &sink)
        });
        assert_eq!(q.submit(Req(1, 1)).await.unwrap(), 10);
        q.close();
        h.join().unwrap();
    }
}

/// Model check of the queue with loom: every waiter is completed exactly once, with the
/// right offset, in submission order, also when the writer fails a batch.
/// Run: `RUSTFLAGS="--cfg loom" cargo test -p promptmq-wal --lib --release loom`
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;

    struct Req;
    impl Weighted for Req {
        fn weight(&self) -> usize {
            1
        }
    }

    struct Sink {
        next: u64,
        batches: usize,
        fail_first: bool,
        /// Appenders may commit on their own thread.
        inline: bool,
    }
    impl BatchSink<Req> for Sink {
        type Out = u64;
        fn commit(&mut self, batch: &[Pending<Req, u64>]) -> Result<Vec<u64>> {
            self.batches += 1;
            if self.fail_first && self.batches == 1 {
                return Err(Error::Closed);
            }
            let start = self.next;
            self.next += batch.len() as u64;
            Ok((start..self.next).collect())
        }
        fn commit_inline(&self, _group: &[Pending<Req, u64>]) -> bool {
            self.inline
        }
    }

    /// `bound` is the queue's byte limit (each request weighs 1): 1 makes the second
    /// submitter wait for space, exercising the back-pressure path. With `inline`, the
    /// appenders commit on their own thread whenever the queue lets them.
    fn model(fail_first: bool, bound: usize, inline: bool) {
        model_with(fail_first, bound, inline, false, false, false)
    }

    /// [`model`], and with `grouped` the producer hands its two requests over as one group
    /// ([`CommitQueue::submit_or_commit_group`]); with `lead`, blocked waiters may commit the
    /// queue themselves ([`Lead`]) beside the writer; with `idle`, the main thread commits
    /// what is ready before it waits, as an idle runtime worker does
    /// ([`Lead::lead_or_hand_over`], `Wal::commit_ready`).
    fn model_with(fail_first: bool, bound: usize, inline: bool, grouped: bool, lead: bool, idle: bool) {
        let mut b = loom::model::Builder::new();
        // Bounded preemption keeps the state space tractable; bugs in queues like this one
        // show up within two or three preemptions.
        b.preemption_bound = Some(3);
        b.check(move || {
            let q = std::sync::Arc::new(CommitQueue::<Req, u64>::new(bound));
            let sink = std::sync::Arc::new(Mutex::new(Sink { next: 0, batches: 0, fail_first, inline }));
            let leader: std::sync::Arc<dyn Lead> = std::sync::Arc::new(Committer {
                queue: q.clone(),
                sink: sink.clone(),
                led: Default::default(),
                budget: Default::default(),
            });
            let idle_worker = leader.clone();
            let led = move |c: Completion<u64>| if lead { c.led_by(&leader) } else { c };
            let writer = {
                let (q, sink) = (q.clone(), sink.clone());
                loom::thread::spawn(move || {
                    run_writer(&q, &sink);
                    lock(&sink).next
                })
            };
            let producer = {
                let (q, sink, led) = (q.clone(), sink.clone(), led.clone());
                loom::thread::spawn(move || {
                    // Issued back to back, then awaited: the second must not overtake the first.
                    if grouped {
                        let ((da, a), (db, b)) = (completion_pair(), completion_pair());
                        q.submit_or_commit_group(
                            vec![Pending { req: Req, done: da }, Pending { req: Req, done: db }],
                            &sink,
                        );
                        return (led(a).wait(), led(b).wait());
                    }
                    let a = led(q.submit_or_commit(Req, &sink));
                    let b = led(q.submit_or_commit(Req, &sink));
                    (a.wait(), b.wait())
                })
            };
            let c = led(q.submit_or_commit(Req, &sink));
            if idle {
                idle_worker.lead_or_hand_over();
            }
            let c = c.wait();
            let (a, b) = producer.join().unwrap();
            // A later append of the same producer never gets an earlier offset.
            if let (Ok(x), Ok(y)) = (&a, &b) {
                assert!(x < y);
            }
            let mut ok: Vec<u64> = [a, b, c].into_iter().filter_map(|r| r.ok()).collect();
            q.close();
            let next = writer.join().unwrap();
            ok.sort_unstable();
            // Successful appends hold exactly the offsets 0..next, each once: a failed
            // batch consumed none, and nobody got an offset twice.
            assert_eq!(ok, (0..next).collect::<Vec<_>>());
            if !fail_first {
                assert_eq!(next, 3);
            }
        });
    }

    #[test]
    fn loom_all_waiters_completed_once_in_order() {
        model(false, 8, false);
    }

    #[test]
    fn loom_back_pressure_completes_every_waiter() {
        model(false, 1, false);
    }

    #[test]
    fn loom_writer_failure_completes_waiters_with_error() {
        model(true, 8, false);
    }

    #[test]
    fn loom_inline_commits_keep_order_and_complete_once() {
        model(false, 8, true);
    }

    #[test]
    fn loom_inline_commits_with_a_failing_sink() {
        model(true, 1, true);
    }

    #[test]
    fn loom_groups_keep_order_and_complete_once() {
        model_with(false, 1, false, true, false, false);
        model_with(true, 8, true, true, false, false);
    }

    #[test]
    fn loom_leading_waiters_keep_order_and_complete_once() {
        model_with(false, 8, false, false, true, false);
        model_with(false, 1, false, false, true, false);
    }

    #[test]
    fn loom_idle_commits_keep_order_and_complete_once() {
        model_with(false, 8, false, false, false, true);
        model_with(true, 1, false, false, false, true);
        model_with(false, 8, true, true, true, true);
    }

    #[test]
    fn loom_leading_waiters_with_a_failing_sink_and_inline_commits() {
        model_with(true, 8, false, false, true, false);
        model_with(false, 8, true, true, true, false);
    }
}
