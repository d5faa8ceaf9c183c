//! Fuzzes the WAL record decoder (properties in `checks/wal.rs`).
#![no_main]

#[path = "../checks/wal.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    checks::record_decoder(data);
});
