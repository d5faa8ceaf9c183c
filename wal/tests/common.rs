//! Helpers shared by the integration tests of promptmq-wal.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// Every segment file under `dir`, sorted by shard then first LSN.
pub fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let shards = dir.join("shards");
    let mut shard_dirs: Vec<_> = std::fs::read_dir(shards).unwrap().map(|e| e.unwrap().path()).collect();
    shard_dirs.sort();
    for sd in shard_dirs {
        let mut segs: Vec<_> = std::fs::read_dir(sd)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .collect();
        segs.sort();
        out.extend(segs);
    }
    out
}

pub fn payload(stream: usize, i: u64) -> Vec<u8> {
    format!("s{stream}-r{i}-{}", "x".repeat((i % 50) as usize)).into_bytes()
}
