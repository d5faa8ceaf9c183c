//! Following a stream: a reader that waits for new durable records.

use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use crate::error::Result;
use crate::wal::{Record, Stream, Wal};

/// Follows a stream from an offset. Created by [`Wal::tail`]. Readers never block the writer:
/// they wait on a per-stream notifier that the writer signals after each durable batch.
#[derive(Debug)]
pub struct Tail {
    wal: Wal,
    stream: Stream,
    next: u64,
}

impl Tail {
    pub(crate) fn new(wal: Wal, stream: Stream, from: u64) -> Tail {
        Tail { wal, stream, next: from }
    }

    /// The offset the next record returned will have (at least).
    pub fn position(&self) -> u64 {
        self.next
    }

    fn ready(&self) -> bool {
        Wal::stream_state(&self.stream).visible.load(Ordering::Acquire) > self.next
    }

    fn take(&mut self, max: usize) -> Result<Vec<Record>> {
        let recs = self.wal.read(&self.stream, self.next, max)?;
        if let Some(last) = recs.last() {
            self.next = last.offset + 1;
        } else {
            // Everything up to `visible` was removed or skipped: move past it.
            self.next = self.next.max(Wal::stream_state(&self.stream).first_offset.load(Ordering::Acquire));
        }
        Ok(recs)
    }

    /// Waits (asynchronously) until at least one new record is durable, then returns up to
    /// `max` records.
    ///
    /// ```
    /// # use promptmq_wal::{Wal, Options};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), promptmq_wal::Error> {
    /// # let dir = tempfile::tempdir()?;
    /// let wal = Wal::open(dir.path(), Options::default())?;
    /// let s = wal.stream("events")?;
    /// let mut tail = wal.tail(&s, 0);
    /// let producer = { let (wal, s) = (wal.clone(), s.clone()); tokio::spawn(async move { wal.append(&s, "e1").await }) };
    /// let got = tail.next(10).await?;
    /// assert_eq!(&got[0].payload[..], b"e1");
    /// # producer.await.unwrap()?;
    /// # Ok(()) }
    /// ```
    pub async fn next(&mut self, max: usize) -> Result<Vec<Record>> {
        loop {
            std::future::poll_fn(|cx| {
                let state = Wal::stream_state(&self.stream);
                if state.notify.register(cx.waker(), || self.ready()) {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
            .await;
            let recs = self.take(max)?;
            if !recs.is_empty() {
                return Ok(recs);
            }
        }
    }

    /// Blocks until at least one new record is durable or `timeout` passes; returns up to
    /// `max` records (none on timeout).
    pub fn next_blocking(&mut self, max: usize, timeout: Duration) -> Result<Vec<Record>> {
        let state = Wal::stream_state(&self.stream).clone();
        if !state.notify.wait(timeout, || self.ready()) {
            return Ok(Vec::new());
        }
        self.take(max)
    }
}
