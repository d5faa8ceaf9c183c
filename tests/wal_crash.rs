//! Crash test of the log: a child process appends and prints every acknowledged record; we
//! SIGKILL it at random moments, reopen, and check that every acknowledged record is there,
//! intact and in order. `WAL_CRASH_CYCLES` sets the number of cycles (default 20). Cycles
//! rotate through the sync modes (`WAL_CRASH_SYNC` pins one): a `kill -9` loses nothing
//! acknowledged in any of them (only a machine crash can lose `interval`/`none` writes), and
//! `interval`/`none` take the other paths: appends committed on the appender's thread, syncs
//! on a sync thread.

use std::process::Command;
use std::time::Duration;

use promptmq_tests::{assert_acked_present, lines_until_killed, record_acks, Acked};
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
    let mut acked = Acked::new();
    let mut total = 0usize;
    for cycle in 0..cycles {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wal-crash-child"));
        child.arg(dir.path()).arg(cycle.to_string()).arg(mode(cycle));
        // Wait until the child has opened the log, then let it run a random while.
        let run_for = Duration::from_millis(rng.gen_range(20..400));
        let lines = lines_until_killed(child, run_for, &format!("cycle {cycle}: the child (sync {})", mode(cycle)));
        total += record_acks(lines, &mut acked);

        // Reopen in this process and check everything acknowledged so far.
        let wal =
            Wal::open(dir.path(), Options::default()).unwrap_or_else(|e| panic!("cycle {cycle}: reopen failed: {e}"));
        assert_acked_present(&wal, &acked, &format!("cycle {cycle}"));
        wal.close().unwrap();
    }
    let created = acked.keys().filter(|k| k.starts_with("new-")).count();
    eprintln!("wal crash test: {cycles} cycles, {total} acknowledged records in {created} streams created during the runs, 0 lost");
    assert!(total > 0, "the child acknowledged nothing: the test proved nothing");
    assert!(created > 0, "no stream was created while the child ran: creation went untested");
}
