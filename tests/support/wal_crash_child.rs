//! Child process of the WAL crash test: appends from several threads and from tokio tasks
//! (on a runtime whose idle workers commit, `Wal::commit_ready`) and prints one line per
//! acknowledged record, `ACK <stream> <offset> <payload>`, until it is killed; one thread
//! creates new streams meanwhile.
//! Usage: `wal-crash-child DIR CYCLE [always|interval|none]` (default `always`).

use std::io::Write;
use std::sync::{Arc, Mutex};

use promptmq_wal::{Options, Wal};

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(dir), Some(cycle)) = (args.next(), args.next()) else {
        eprintln!("usage: wal-crash-child DIR CYCLE [always|interval|none]");
        std::process::exit(2);
    };
    let sync = promptmq_tests::sync_mode_arg(args.next().as_deref()).unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2);
    });
    let wal = match Wal::open(&dir, Options::default().shards(2).segment_bytes(256 << 10).sync(sync).preallocate(true))
    {
        Ok(w) => w,
        Err(e) => {
            eprintln!("open failed: {e}");
            std::process::exit(1);
        }
    };
    let out = Arc::new(Mutex::new(std::io::stdout()));
    println!("READY");
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let wal = wal.clone();
            let out = out.clone();
            let cycle = cycle.clone();
            std::thread::spawn(move || {
                let name = format!("stream-{}", t % 3);
                let stream = match wal.stream(&name) {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("stream failed: {e}");
                        std::process::exit(1);
                    }
                };
                for i in 0u64.. {
                    let payload = format!("c{cycle}-t{t}-i{i}-{}", "p".repeat((i % 97) as usize));
                    report(&out, &name, &payload, wal.append(&stream, payload.clone()).wait(), "append");
                }
            })
        })
        .collect();
    // One thread appends through `Wal::batch`, several streams per batch (both shards), so
    // kills also land between the records of a group commit made of one batch.
    let batcher = {
        let (wal, out, cycle) = (wal.clone(), out.clone(), cycle.clone());
        std::thread::spawn(move || {
            let names = ["stream-0", "stream-1", "stream-2"];
            let streams: Vec<_> = names.iter().map(|n| wal.stream(n)).collect::<Result<_, _>>().unwrap_or_else(|e| {
                eprintln!("stream failed: {e}");
                std::process::exit(1);
            });
            for i in 0u64.. {
                let mut batch = wal.batch();
                let appended: Vec<_> = (0..1 + i % 8)
                    .map(|j| {
                        let k = ((i + j) % 3) as usize;
                        let payload = format!("c{cycle}-b-i{i}-j{j}");
                        let done = batch.append(&streams[k], payload.clone());
                        (names[k], payload, done)
                    })
                    .collect();
                batch.submit();
                for (name, payload, done) in appended {
                    report(&out, name, &payload, done.wait(), "batch append");
                }
            }
        })
    };
    // Tasks that `.await` their appends, on a runtime whose workers commit when idle: the
    // commits they make must be as durable as the writer's.
    let tasks = {
        let (wal, out, cycle) = (wal.clone(), out.clone(), cycle.clone());
        std::thread::spawn(move || {
            let idle = wal.clone();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .on_thread_park(move || {
                    idle.commit_ready();
                })
                .build()
                .unwrap_or_else(|e| {
                    eprintln!("runtime failed: {e}");
                    std::process::exit(1);
                });
            rt.block_on(async {
                let running: Vec<_> = (0..4u64)
                    .map(|t| {
                        let (wal, out, cycle) = (wal.clone(), out.clone(), cycle.clone());
                        tokio::spawn(async move {
                            let name = format!("stream-{}", t % 3);
                            let stream = wal.stream(&name).unwrap_or_else(|e| {
                                eprintln!("stream failed: {e}");
                                std::process::exit(1);
                            });
                            for i in 0u64.. {
                                let payload = format!("c{cycle}-a{t}-i{i}");
                                report(
                                    &out,
                                    &name,
                                    &payload,
                                    wal.append(&stream, payload.clone()).await,
                                    "task append",
                                );
                            }
                        })
                    })
                    .collect();
                for r in running {
                    let _ = r.await;
                }
            });
        })
    };
    // One more thread creates streams while the others append, so kills also land in the
    // middle of a creation (its catalogue record, index entry, first record). Bounded, so
    // that the parent's checks stay quick.
    let creator = {
        let (wal, out) = (wal.clone(), out.clone());
        std::thread::spawn(move || {
            for i in 0..200u64 {
                let name = format!("new-c{cycle}-{i}");
                let payload = format!("first of {name}");
                let appended = wal.stream(&name).and_then(|s| wal.append(&s, payload.clone()).wait());
                report(&out, &name, &payload, appended, "creation");
            }
        })
    };
    let _ = creator.join();
    for t in threads {
        let _ = t.join();
    }
    let _ = batcher.join();
    let _ = tasks.join();
}

/// Prints an acknowledged record as `ACK <stream> <offset> <payload>`, or ends the child on
/// a failed `what`.
fn report(out: &Mutex<std::io::Stdout>, name: &str, payload: &str, acked: promptmq_wal::Result<u64>, what: &str) {
    match acked {
        Ok(off) => {
            let mut o = out.lock().unwrap_or_else(|p| p.into_inner());
            // One write per line, flushed at once: the parent must see every ack.
            let _ = writeln!(o, "ACK {name} {off} {payload}");
            let _ = o.flush();
        }
        Err(e) => {
            eprintln!("{what} of {name} failed: {e}");
            std::process::exit(1);
        }
    }
}
