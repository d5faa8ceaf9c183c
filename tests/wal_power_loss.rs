//! Power-cut test of the log. A SIGKILL keeps the page cache: whatever the log wrote
//! reaches the disk later anyway, so a crash test cannot catch a missing `fdatasync` or
//! directory sync. Here the child appends (`sync = always`) to a log on a small ext4 image;
//! at a random moment it is stopped, and a copy is taken of the device as it is — what a
//! power cut would leave, without the page cache. The copy is repaired (journal replayed)
//! and opened strictly. Every record the child acknowledged before it stopped must be in
//! it, intact and in order. `WAL_POWER_CYCLES` sets the cycles (default 6); the same log
//! goes on from cycle to cycle, killed at the end of each.
//!
//! Needs root and loop devices (CI has both); elsewhere it says so on stderr and checks
//! nothing.

use std::process::Command;
use std::time::Duration;

use promptmq_tests::{assert_acked_present, lines_until_killed_after, record_acks, Acked, SmallFs};
use promptmq_wal::{Options, RecoveryMode, Wal};
use rand::{Rng, SeedableRng};

#[test]
fn acknowledged_records_survive_a_power_cut() {
    let cycles: usize = std::env::var("WAL_POWER_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(6);
    let Some(fs) = SmallFs::mount(256) else { return };
    let dir = fs.mnt.join("log");
    let mut rng = rand::rngs::StdRng::seed_from_u64(std::process::id() as u64);
    // stream -> offset -> payload, for every acknowledged record so far.
    let mut acked = Acked::new();
    let mut total = 0usize;
    for cycle in 0..cycles {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wal-crash-child"));
        child.arg(&dir).arg(cycle.to_string()).arg("always");
        let run_for = Duration::from_millis(rng.gen_range(50..400));
        let mut cut = None;
        let lines = lines_until_killed_after(child, run_for, &format!("cycle {cycle}: the child"), |child| {
            let stopped = Command::new("kill").arg("-STOP").arg(child.id().to_string()).status();
            assert!(stopped.is_ok_and(|s| s.success()), "SIGSTOP");
            // Let what is in flight reach the device.
            std::thread::sleep(Duration::from_millis(100));
            cut = Some(fs.power_cut_copy());
        });
        let cut =
            cut.expect("the copy is taken").unwrap_or_else(|why| panic!("cycle {cycle}: no power-cut copy: {why}"));
        total += record_acks(lines, &mut acked);
        let wal = Wal::open(cut.mnt.join("log"), Options::default().recovery(RecoveryMode::Strict))
            .unwrap_or_else(|e| panic!("cycle {cycle}: the log after the power cut does not open: {e}"));
        assert_acked_present(&wal, &acked, &format!("cycle {cycle}"));
        wal.close().unwrap();
    }
    eprintln!("wal power-cut test: {cycles} cycles, {total} acknowledged records, 0 lost");
    assert!(total > 0, "the child acknowledged nothing: the test proved nothing");
}
