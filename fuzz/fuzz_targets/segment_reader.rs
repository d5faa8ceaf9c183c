//! Fuzzes the WAL segment reader: header check, record scan and resync (properties in
//! `checks/wal.rs`).
#![no_main]

#[path = "../checks/wal.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    checks::segment_reader(data);
});
