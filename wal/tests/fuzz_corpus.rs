//! Replays the fuzz corpora (`fuzz/corpus/<target>/`) through the same checks the fuzz
//! targets run, so CI on stable exercises every input the fuzzer found interesting.

#[path = "../../fuzz/checks/wal.rs"]
mod checks;

use std::path::PathBuf;

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {} missing: {e}", dir.display()))
        .map(|e| {
            let p = e.unwrap().path();
            (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap())
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "empty corpus {}", dir.display());
    out
}

#[test]
fn record_decoder_corpus() {
    for (name, data) in corpus("record_decoder") {
        let decoded = checks::record_decoder(&data);
        // The hand-written seeds also pin down the format: valid ones must decode.
        if name.starts_with("valid") || name == "two_records" {
            assert!(decoded, "seed {name} must decode");
        }
        if ["truncated", "bad_crc", "huge_len"].contains(&name.as_str()) {
            assert!(!decoded, "seed {name} must not decode");
        }
    }
}

#[test]
fn segment_reader_corpus() {
    for (name, data) in corpus("segment_reader") {
        let n = checks::segment_reader(&data);
        match name.as_str() {
            "valid_segment" | "zero_tail" => assert_eq!(n, 3, "{name}"),
            "torn_tail" | "damaged_middle" => assert_eq!(n, 2, "{name}"),
            "bad_header" | "empty_segment" => assert_eq!(n, 0, "{name}"),
            _ => {}
        }
    }
}

#[test]
fn index_block_corpus() {
    for (name, data) in corpus("index_block") {
        let n = checks::index_block(&data);
        match name.as_str() {
            "valid_typical" => assert_eq!(n, 4, "{name}"),
            "valid_mixed" => assert_eq!(n, 3, "{name}"),
            "truncated" | "delta_first" | "huge_count" | "valid_empty" => assert_eq!(n, 0, "{name}"),
            _ => {}
        }
    }
}
