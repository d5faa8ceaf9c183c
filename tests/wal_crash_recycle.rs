//! Crash test of reused segments: the child (`wal-recycle-child`) appends to a stream that
//! keeps its last 300 records, with retention applied every few milliseconds, so segment
//! files are deleted and reused as new segments — their old records still in them — all the
//! time; we SIGKILL it at random moments and reopen. Every acknowledged record that
//! retention had no right to remove is there and intact, offsets are dense, and no old
//! record ever comes back (each payload names its own offset). `WAL_RECYCLE_CYCLES` sets
//! the number of cycles (default 10).

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use promptmq_tests::lines_until_killed;
use promptmq_wal::{Options, RecoveryMode, Wal};
use rand::{Rng, SeedableRng};

/// The child's retention: records kept.
const KEEP: u64 = 300;

#[test]
fn reused_segments_lose_nothing_and_bring_nothing_back_under_sigkill() {
    let cycles: usize = std::env::var("WAL_RECYCLE_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(std::process::id() as u64);
    let mut acked: HashMap<u64, String> = HashMap::new();
    let (mut recycled, mut total) = (0u64, 0usize);
    for cycle in 0..cycles {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wal-recycle-child"));
        child.arg(dir.path()).arg(cycle.to_string());
        let run_for = Duration::from_millis(rng.gen_range(100..600));
        let lines = lines_until_killed(child, run_for, &format!("cycle {cycle}: the child"));
        let mut cycle_recycled = 0;
        for line in lines {
            let mut parts = line.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("ACK"), Some(off), Some(payload)) => {
                    let off: u64 = off.parse().unwrap();
                    assert!(payload.starts_with(&format!("o{off}-")), "cycle {cycle}: {off} acknowledged as {payload}");
                    assert!(acked.insert(off, payload.to_string()).is_none(), "offset {off} acknowledged twice");
                    total += 1;
                }
                (Some("RECYCLED"), Some(n), None) => cycle_recycled = n.parse().unwrap(),
                _ => {} // a line cut by the kill
            }
        }
        recycled += cycle_recycled;

        // Strict recovery: an old record mistaken for damage in a sealed segment would fail it.
        let wal = Wal::open(dir.path(), Options::default().recovery(RecoveryMode::Strict))
            .unwrap_or_else(|e| panic!("cycle {cycle}: reopen failed: {e}"));
        let s = wal.lookup("r").expect("stream r");
        let (first, next) = (s.first_offset(), s.next_offset());
        let last_acked = acked.keys().max().copied().unwrap_or(0);
        assert!(next > last_acked, "cycle {cycle}: acknowledged {last_acked} but the stream ends at {next}");
        assert!(
            first <= next.saturating_sub(KEEP),
            "cycle {cycle}: retention removed more than it may: first {first}, next {next}"
        );
        let recs = wal.read(&s, first, usize::MAX).unwrap();
        assert_eq!(recs.len() as u64, next - first, "cycle {cycle}: records missing between {first} and {next}");
        for (i, r) in recs.iter().enumerate() {
            let off = first + i as u64;
            assert_eq!(r.offset, off, "cycle {cycle}: out of order");
            let payload = std::str::from_utf8(&r.payload).unwrap();
            assert!(payload.starts_with(&format!("o{off}-")), "cycle {cycle}: {off} holds {payload}: an old record?");
            if let Some(p) = acked.get(&off) {
                assert_eq!(payload, p, "cycle {cycle}: acknowledged {off} damaged");
            }
        }
        // What retention may not have removed yet is all there (checked above); what it
        // removed is forgotten, so later cycles may reuse nothing of it.
        acked.retain(|&off, _| off >= first);
        wal.close().unwrap();
    }
    eprintln!("wal recycle crash test: {cycles} cycles, {total} acknowledged, {recycled} segments reused, 0 lost");
    assert!(total > 0, "the child acknowledged nothing: the test proved nothing");
    assert!(recycled > 0, "no segment was reused: the test proved nothing");
}
