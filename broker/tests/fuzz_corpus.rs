//! Replays the codec and stored-state fuzz corpora through the checks the fuzz targets run.

#[path = "../../fuzz/checks/codec.rs"]
mod checks;

use promptmq_broker::codec::ProtocolVersion;

fn replay(target: &str, version: ProtocolVersion) -> usize {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
    let mut files = 0;
    let mut packets = 0;
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let data = std::fs::read(e.unwrap().path()).unwrap();
        let Some((first, rest)) = data.split_first() else { continue };
        let v = if first & 1 == 0 { None } else { Some(version) };
        packets += checks::decoder(rest, v);
        files += 1;
    }
    assert!(files > 0, "empty corpus {}", dir.display());
    packets
}

#[test]
fn codec_v311_corpus() {
    assert!(replay("codec_v311", ProtocolVersion::V3_1_1) >= 7, "the seeds hold at least 7 valid packets");
}

#[test]
fn codec_v5_corpus() {
    assert!(replay("codec_v5", ProtocolVersion::V5) >= 8);
}

#[test]
fn stored_state_corpus() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/stored_state");
    let mut files = 0;
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        promptmq_broker::fuzzing::stored_state(&std::fs::read(e.unwrap().path()).unwrap());
        files += 1;
    }
    assert!(files > 0, "empty corpus {}", dir.display());
}
