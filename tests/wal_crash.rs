//! Crash test of the log: a child process appends and prints every acknowledged record; we
//! SIGKILL it at random moments, reopen, and check that every acknowledged record is there,
//! intact and in order. `WAL_CRASH_CYCLES` sets the number of cycles (default 20). Cycles
//! rotate through the sync modes (`WAL_CRASH_SYNC` pins one): a `kill -9` loses nothing
//! acknowledged in any of them (only a machine crash can lose `interval`/`none` writes), and
//! `interval`/`none` take the other paths: appends committed on the appender's thread, syncs
//! on a sync thread.

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use promptmq_tests::lines_until_killed;
use promptmq_wal::{Options, Wal};
use rand::{Rng, SeedableRng};

/// The sync mode of a cycle.
fn mode(cycle: usize) -> String {
    std::env::var("WAL_CRASH_SYNC").unwrap_or_else(|_| ["always", "interval", "none"][cycle % 3].to_string())
}

#[test]
fn acknowledged_records_survive_sigkill() {
    let cycles: usize = std::env::var("WAL_CRASH_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(std::process::id() as u64);
    // stream -> offset -> payload, for every acknowledged record so far.
    let mut acked: HashMap<String, HashMap<u64, String>> = HashMap::new();
    let mut total = 0usize;
    for cycle in 0..cycles {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wal-crash-child"));
        child.arg(dir.path()).arg(cycle.to_string()).arg(mode(cycle));
        // Wait until the child has opened the log, then let it run a random while.
        let run_for = Duration::from_millis(rng.gen_range(20..400));
        let lines = lines_until_killed(child, run_for, &format!("cycle {cycle}: the child (sync {})", mode(cycle)));
        let mut this_cycle = 0;
        for line in lines {
            // Only whole lines count: a line cut by the kill was never fully acknowledged to us.
            let mut parts = line.splitn(4, ' ');
            if let (Some("ACK"), Some(stream), Some(off), Some(payload)) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            {
                let off: u64 = off.parse().unwrap();
                let prev = acked.entry(stream.to_string()).or_default().insert(off, payload.to_string());
                assert!(prev.is_none(), "offset {off} of {stream} acknowledged twice");
                this_cycle += 1;
            }
        }
        total += this_cycle;

        // Reopen in this process and check everything acknowledged so far.
        let wal =
            Wal::open(dir.path(), Options::default()).unwrap_or_else(|e| panic!("cycle {cycle}: reopen failed: {e}"));
        for (stream, recs) in &acked {
            let s = wal.lookup(stream).unwrap_or_else(|| panic!("cycle {cycle}: stream {stream} lost"));
            let all = wal.read(&s, 0, usize::MAX).unwrap();
            // Offsets are dense from 0: order is intact and nothing in the middle is missing.
            for (i, r) in all.iter().enumerate() {
                assert_eq!(r.offset, i as u64, "cycle {cycle}: {stream} out of order");
            }
            for (off, payload) in recs {
                let r =
                    all.get(*off as usize).unwrap_or_else(|| panic!("cycle {cycle}: acknowledged {stream}@{off} lost"));
                assert_eq!(std::str::from_utf8(&r.payload).unwrap(), payload, "cycle {cycle}: {stream}@{off} damaged");
            }
        }
        wal.close().unwrap();
    }
    let created = acked.keys().filter(|k| k.starts_with("new-")).count();
    eprintln!("wal crash test: {cycles} cycles, {total} acknowledged records in {created} streams created during the runs, 0 lost");
    assert!(total > 0, "the child acknowledged nothing: the test proved nothing");
    assert!(created > 0, "no stream was created while the child ran: creation went untested");
}
