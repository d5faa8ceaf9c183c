//! Fuzzes the decoder of the WAL's offset-index blocks (properties in `checks/wal.rs`).
#![no_main]

#[path = "../checks/wal.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    checks::index_block(data);
});
