//! Child process of the reused-segment crash test: one shard of small segments, one stream
//! whose retention keeps its last `KEEP` records, appended to in batches, with retention
//! applied every few milliseconds — so deleted segments' files keep becoming new segments,
//! old records and all, while the parent kills it. Prints `ACK <offset> <payload>` per
//! acknowledged record (each payload names its own offset) and `RECYCLED <n>` as segments
//! are made from deleted ones.
//! Usage: `wal-recycle-child DIR CYCLE`.

use std::io::Write;
use std::time::Duration;

use promptmq_wal::{Options, Retention, Wal};

/// Records the stream keeps (the parent checks against the same number).
const KEEP: u64 = 300;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(dir), Some(cycle)) = (args.next(), args.next()) else {
        eprintln!("usage: wal-recycle-child DIR CYCLE");
        std::process::exit(2);
    };
    let fail = |what: &str, e: promptmq_wal::Error| -> ! {
        eprintln!("{what} failed: {e}");
        std::process::exit(1);
    };
    let opts = Options::default().shards(1).segment_bytes(64 << 10).preallocate(true);
    let wal = Wal::open(&dir, opts).unwrap_or_else(|e| fail("open", e));
    let stream = wal.stream("r").unwrap_or_else(|e| fail("stream", e));
    wal.set_retention(&stream, Retention { max_records: Some(KEEP), ..Retention::FOREVER })
        .unwrap_or_else(|e| fail("retention", e));
    println!("READY");
    let keeper = {
        let wal = wal.clone();
        std::thread::spawn(move || {
            let mut reported = 0;
            loop {
                if let Err(e) = wal.apply_retention() {
                    fail("retention", e);
                }
                let recycled = wal.stats().segments_recycled;
                if recycled > reported {
                    reported = recycled;
                    let mut o = std::io::stdout().lock();
                    let _ = writeln!(o, "RECYCLED {recycled}");
                    let _ = o.flush();
                }
                std::thread::sleep(Duration::from_millis(3));
            }
        })
    };
    // The only appender: offsets are predictable, so each payload can name its own.
    for i in 0u64.. {
        let first = stream.next_offset();
        let n = 1 + i % 16;
        let mut batch = wal.batch();
        let payloads: Vec<_> =
            (0..n).map(|j| format!("o{}-c{cycle}-{}", first + j, "r".repeat((i % 61) as usize))).collect();
        let done: Vec<_> = payloads.iter().map(|p| batch.append(&stream, p.clone())).collect();
        batch.submit();
        let mut o = std::io::stdout().lock();
        for (p, d) in payloads.iter().zip(done) {
            match d.wait() {
                Ok(off) => {
                    let _ = writeln!(o, "ACK {off} {p}");
                }
                Err(e) => fail("append", e),
            }
        }
        let _ = o.flush();
    }
    let _ = keeper.join();
}
