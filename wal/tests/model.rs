//! Property test: random sequences of appends, reads, reopens, retention and compaction
//! (with and without compression) agree with a simple in-memory model of the log.

use std::collections::HashMap;

use promptmq_wal::{Options, Retention, StreamOptions, Wal};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Append {
        stream: usize,
        key: Option<u8>,
        len: usize,
    },
    Batch {
        stream: usize,
        n: usize,
    },
    /// A `Wal::batch` over several streams: (stream, key) per record.
    Multi {
        records: Vec<(usize, Option<u8>)>,
    },
    Read {
        stream: usize,
        from: u64,
        max: usize,
    },
    Reopen,
    Retain {
        stream: usize,
        keep: u64,
    },
    Compact {
        compress: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..3usize, proptest::option::of(0..4u8), 0..600usize).prop_map(|(stream, key, len)| Op::Append { stream, key, len }),
        2 => (0..3usize, 1..8usize).prop_map(|(stream, n)| Op::Batch { stream, n }),
        2 => proptest::collection::vec((0..3usize, proptest::option::of(0..4u8)), 1..10)
            .prop_map(|records| Op::Multi { records }),
        2 => (0..3usize, 0..80u64, 1..50usize).prop_map(|(stream, from, max)| Op::Read { stream, from, max }),
        1 => Just(Op::Reopen),
        1 => (0..3usize, 0..40u64).prop_map(|(stream, keep)| Op::Retain { stream, keep }),
        1 => any::<bool>().prop_map(|compress| Op::Compact { compress }),
    ]
}

/// Stream 2 is key-compacted.
const NAMES: [&str; 3] = ["plain-a", "plain-b", "compacted"];

/// A record in the model: (key, payload).
type ModelRecord = (Option<Vec<u8>>, Vec<u8>);

#[derive(Default)]
struct Model {
    /// Per stream: every record ever appended, by offset.
    records: Vec<Vec<ModelRecord>>,
    first: Vec<u64>,
}

fn payload(stream: usize, offset: usize, len: usize) -> Vec<u8> {
    let mut v = format!("{stream}/{offset}/").into_bytes();
    v.resize(v.len() + len, b'a' + (offset % 26) as u8);
    v
}

fn batch_append(
    batch: &mut promptmq_wal::Batch,
    s: &promptmq_wal::Stream,
    key: &Option<Vec<u8>>,
    p: &[u8],
) -> promptmq_wal::Completion<u64> {
    match key {
        Some(k) => batch.append_keyed(s, k.clone(), p.to_vec()),
        None => batch.append(s, p.to_vec()),
    }
}

/// With `preallocate`, segments come from zero-filled spares (sequences this short seldom
/// roll often enough after a deletion to reuse a segment: `wal_crash_recycle` covers that).
fn open(dir: &std::path::Path, preallocate: bool) -> Wal {
    Wal::open(dir, Options::default().shards(2).segment_bytes(4096).preallocate(preallocate)).unwrap()
}

fn streams(wal: &Wal) -> Vec<promptmq_wal::Stream> {
    NAMES
        .iter()
        .enumerate()
        .map(|(i, n)| wal.stream_with(n, StreamOptions { compacted: i == 2, ..Default::default() }).unwrap())
        .collect()
}

/// Checks what the log returns for `stream` from `from` against the model.
fn check(wal: &Wal, s: &promptmq_wal::Stream, m: &Model, i: usize, from: u64, max: usize) -> Result<(), TestCaseError> {
    let got = wal.read(s, from, max).unwrap();
    let recs = &m.records[i];
    let first = m.first[i].max(from);
    let end = (recs.len() as u64).min(from.max(m.first[i]).saturating_add(max as u64));
    prop_assert_eq!(s.next_offset(), recs.len() as u64);
    for r in &got {
        prop_assert!(r.offset >= first && r.offset < end, "offset {} outside {}..{}", r.offset, first, end);
        let (k, p) = &recs[r.offset as usize];
        prop_assert_eq!(&r.payload[..], &p[..]);
        prop_assert_eq!(r.key.as_deref(), k.as_deref());
    }
    let got_offsets: Vec<u64> = got.iter().map(|r| r.offset).collect();
    if i == 2 {
        // Compaction may drop superseded keyed records, never the latest per key or an
        // unkeyed one.
        let mut latest: HashMap<Vec<u8>, u64> = HashMap::new();
        for (o, (k, _)) in recs.iter().enumerate() {
            if let Some(k) = k {
                latest.insert(k.clone(), o as u64);
            }
        }
        for o in first..end {
            let must = match &recs[o as usize].0 {
                None => true,
                Some(k) => latest[k] == o,
            };
            if must {
                prop_assert!(got_offsets.contains(&o), "offset {} of the compacted stream is missing", o);
            }
        }
    } else {
        prop_assert_eq!(got_offsets, (first..end).collect::<Vec<_>>());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(48),
        ..ProptestConfig::default()
    })]

    #[test]
    fn log_matches_model(ops in proptest::collection::vec(op(), 1..60), preallocate in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = open(dir.path(), preallocate);
        let mut ss = streams(&wal);
        let mut m = Model { records: vec![Vec::new(); 3], first: vec![0; 3] };
        for op in ops {
            match op {
                Op::Append { stream, key, len } => {
                    let off = m.records[stream].len();
                    let p = payload(stream, off, len);
                    let k = key.map(|k| vec![b'k', k]);
                    let got = match &k {
                        Some(k) => wal.append_keyed(&ss[stream], k.clone(), p.clone()).wait().unwrap(),
                        None => wal.append(&ss[stream], p.clone()).wait().unwrap(),
                    };
                    prop_assert_eq!(got, off as u64);
                    m.records[stream].push((k, p));
                }
                Op::Batch { stream, n } => {
                    let base = m.records[stream].len();
                    let recs: Vec<_> = (0..n).map(|j| (None, payload(stream, base + j, j * 7))).collect();
                    let got = wal
                        .append_batch(&ss[stream], recs.iter().map(|(k, p): &ModelRecord| (k.clone().map(Into::into), p.clone().into())))
                        .wait()
                        .unwrap();
                    prop_assert_eq!(got, base as u64);
                    m.records[stream].extend(recs);
                }
                Op::Multi { records } => {
                    let mut batch = wal.batch();
                    let mut waits = Vec::new();
                    for (j, (stream, key)) in records.into_iter().enumerate() {
                        // Records already in this batch count too: offsets are in order.
                        let off = m.records[stream].len();
                        let p = payload(stream, off, j * 5);
                        let k = key.map(|k| vec![b'k', k]);
                        waits.push((batch_append(&mut batch, &ss[stream], &k, &p), off as u64));
                        m.records[stream].push((k, p));
                    }
                    batch.submit();
                    for (c, want) in waits {
                        prop_assert_eq!(c.wait().unwrap(), want);
                    }
                }
                Op::Read { stream, from, max } => check(&wal, &ss[stream], &m, stream, from, max)?,
                Op::Reopen => {
                    wal.close().unwrap();
                    wal = open(dir.path(), preallocate);
                    prop_assert!(wal.recovery_report().is_clean());
                    ss = streams(&wal);
                }
                Op::Retain { stream, keep } => {
                    wal.set_retention(&ss[stream], Retention { max_records: Some(keep), ..Retention::FOREVER }).unwrap();
                    wal.apply_retention().unwrap();
                    let next = m.records[stream].len() as u64;
                    m.first[stream] = m.first[stream].max(next.saturating_sub(keep));
                    // Later appends must not be trimmed by a stale policy in this model.
                    wal.set_retention(&ss[stream], Retention::FOREVER).unwrap();
                }
                Op::Compact { compress } => {
                    wal.compact(compress).unwrap();
                }
            }
        }
        for (i, s) in ss.iter().enumerate() {
            check(&wal, s, &m, i, 0, usize::MAX)?;
        }
        // Full recovery from the log alone agrees too.
        wal.close().unwrap();
        let opts = Options::default().shards(2).segment_bytes(4096).preallocate(preallocate).full_recovery(true);
        let wal = Wal::open(dir.path(), opts).unwrap();
        let ss = streams(&wal);
        for (i, s) in ss.iter().enumerate() {
            check(&wal, s, &m, i, 0, usize::MAX)?;
        }
    }
}
