//! `walctl` end to end: each subcommand on a real log, on a damaged log, and on bad input.

use std::path::Path;
use std::process::{Command, Output};

use promptmq_wal::{Options, Wal};

fn walctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_walctl")).args(args).output().expect("run walctl")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn build(dir: &Path) {
    build_with(dir, true)
}

/// `preallocate`: segments after the first are made from zero-filled spares, so the newest
/// may end in zeros (a cut there is no torn tail).
fn build_with(dir: &Path, preallocate: bool) {
    let wal = Wal::open(dir, Options::default().shards(2).segment_bytes(4096).preallocate(preallocate)).unwrap();
    for name in ["alpha", "beta"] {
        let s = wal.stream(name).unwrap();
        for i in 0..60 {
            wal.append(&s, format!("{name}-{i}")).wait().unwrap();
        }
    }
    wal.close().unwrap();
}

fn segments(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v = Vec::new();
    for shard in std::fs::read_dir(dir.join("shards")).unwrap() {
        for f in std::fs::read_dir(shard.unwrap().path()).unwrap() {
            v.push(f.unwrap().path());
        }
    }
    v.sort();
    v
}

#[test]
fn inspect_verify_dump_on_a_healthy_log() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    let d = dir.path().to_str().unwrap();

    let o = walctl(&["inspect", d]);
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("2 shards"), "{t}");
    assert!(t.lines().any(|l| l.starts_with("alpha") && l.contains(" 0 ") && l.contains(" 59 ")), "{t}");

    let o = walctl(&["verify", d]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("OK"));

    let o = walctl(&["dump", d, "--stream", "beta", "--from", "10", "--limit", "3"]);
    assert!(o.status.success());
    let lines: Vec<String> = String::from_utf8_lossy(&o.stdout).lines().map(String::from).collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[0].starts_with("10\t") && lines[0].ends_with("beta-10"), "{lines:?}");

    let o = walctl(&["dump", d, "--stream", "beta", "--limit", "1", "--format", "hex"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&"beta-0".bytes().map(|b| format!("{b:02x}")).collect::<String>())
    );

    let o = walctl(&["dump", d, "--stream", "gamma"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("no stream named"), "{}", text(&o));
}

#[test]
fn verify_names_damage_and_recover_repairs_it() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    let d = dir.path().to_str().unwrap();
    let segs = segments(dir.path());
    let victim = &segs[1];
    let mut bytes = std::fs::read(victim).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x10;
    std::fs::write(victim, &bytes).unwrap();

    let o = walctl(&["verify", d]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("DAMAGED") && t.contains(victim.file_name().unwrap().to_str().unwrap()), "{t}");

    let o = walctl(&["recover", d, "--mode", "strict"]);
    assert_eq!(o.status.code(), Some(1), "strict recovery refuses: {}", text(&o));
    assert!(text(&o).contains("corrupt data"));

    let o = walctl(&["recover", d, "--mode", "tolerant", "--dry-run"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("would skip damaged range"), "{}", text(&o));
    assert_eq!(std::fs::read(victim).unwrap(), bytes, "a dry run changes nothing");

    let o = walctl(&["recover", d, "--mode", "tolerant"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("did skip damaged range"), "{}", text(&o));
    // The log opens in tolerant mode and holds every undamaged record.
    let wal = Wal::open(dir.path(), Options::default().recovery(promptmq_wal::RecoveryMode::Tolerant)).unwrap();
    let total: usize =
        ["alpha", "beta"].iter().map(|n| wal.read(&wal.lookup(n).unwrap(), 0, 1000).unwrap().len()).sum();
    assert_eq!(total, 119);
}

#[test]
fn torn_tail_is_reported_but_not_damage() {
    let dir = tempfile::tempdir().unwrap();
    build_with(dir.path(), false);
    let d = dir.path().to_str().unwrap();
    let last = segments(dir.path()).pop().unwrap();
    let len = std::fs::metadata(&last).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&last).unwrap().set_len(len - 5).unwrap();
    let o = walctl(&["verify", d]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("TORN TAIL"));
    let o = walctl(&["recover", d]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("did truncate torn tail"), "{}", text(&o));
    let o = walctl(&["verify", d]);
    assert!(!text(&o).contains("TORN TAIL"), "{}", text(&o));
}

/// A power cut can tear the last commit out of order: bad bytes with valid records after
/// them, none written after a sync. `walctl` calls that a torn tail, as recovery does.
#[test]
fn a_commit_torn_out_of_order_is_a_torn_tail_not_damage() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), Options::default().shards(1)).unwrap();
    let s = wal.stream("s").unwrap();
    for i in 0..10 {
        wal.append(&s, format!("single-{i}")).wait().unwrap();
    }
    let mut batch = wal.batch();
    let last: Vec<_> = (10..30).map(|i| batch.append(&s, format!("batched-{i:02}-{}", "x".repeat(200)))).collect();
    batch.submit();
    for c in last {
        c.wait().unwrap();
    }
    wal.close().unwrap();
    let seg = segments(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let at = bytes.windows(10).position(|w| w == b"batched-20").unwrap();
    bytes[at + 50] ^= 0x01;
    std::fs::write(&seg, &bytes).unwrap();

    let d = dir.path().to_str().unwrap();
    let o = walctl(&["verify", d]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("TORN TAIL") && !text(&o).contains("DAMAGED"), "{}", text(&o));
    let o = walctl(&["recover", d, "--mode", "strict", "--dry-run"]);
    assert!(o.status.success() && text(&o).contains("would truncate torn tail"), "{}", text(&o));
    let o = walctl(&["recover", d, "--mode", "strict"]);
    assert!(o.status.success() && text(&o).contains("did truncate torn tail"), "{}", text(&o));
    let wal = Wal::open(dir.path(), Options::default().shards(1)).unwrap();
    let offsets: Vec<u64> = wal.read(&wal.lookup("s").unwrap(), 0, 100).unwrap().iter().map(|r| r.offset).collect();
    assert_eq!(offsets, (0..20).collect::<Vec<_>>(), "the records before the hole stay");
}

#[test]
fn missing_and_foreign_directories_get_clear_errors() {
    let o = walctl(&["inspect", "/nonexistent/promptmq-wal-test"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("no such directory"), "{}", text(&o));

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("x"), "y").unwrap();
    let o = walctl(&["verify", dir.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("not a promptmq-wal directory"), "{}", text(&o));

    let o = walctl(&["bogus"]);
    assert_eq!(o.status.code(), Some(2));
}
