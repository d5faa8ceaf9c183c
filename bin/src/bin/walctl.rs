//! `walctl`: offline inspection, verification, recovery and dumping of a promptmq-wal
//! directory. Exit codes: 0 success, 1 damage found (verify) or operation failed, 2 usage.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use promptmq_wal::tools::{self, Progress};
use promptmq_wal::RecoveryMode;

#[derive(Parser)]
#[command(name = "walctl", version, about = "Inspect, verify, recover and dump a promptmq-wal log directory")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    /// Refuse damaged data outside a torn tail (nothing is changed).
    Strict,
    /// Skip damaged ranges, keeping every valid record around them.
    Tolerant,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    /// Payload as UTF-8 text (invalid bytes shown escaped).
    Text,
    /// Payload as hex.
    Hex,
}

#[derive(Subcommand)]
enum Cmd {
    /// Shards, segments, streams with first/last offsets and sizes.
    Inspect {
        /// The log directory.
        dir: PathBuf,
    },
    /// Check every record's checksum; exit 0 if the log is intact, 1 if damage is found.
    Verify {
        /// The log directory.
        dir: PathBuf,
    },
    /// Run a full recovery: truncate torn tails and (tolerant) skip damaged ranges, then
    /// rebuild the index. Reports what was done.
    Recover {
        /// The log directory.
        dir: PathBuf,
        /// Recovery mode.
        #[arg(long, value_enum, default_value = "strict")]
        mode: Mode,
        /// Report what would be done without changing anything.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print the records of one stream.
    Dump {
        /// The log directory.
        dir: PathBuf,
        /// Stream name.
        #[arg(long)]
        stream: String,
        /// First offset to print.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Most records to print.
        #[arg(long, default_value_t = u64::MAX)]
        limit: u64,
        /// How to print payloads.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
}

/// Progress on stderr when it is a terminal, at most once per percent.
fn progress() -> impl FnMut(Progress) {
    let tty = std::io::stderr().is_terminal();
    let mut last = u64::MAX;
    move |p: Progress| {
        if !tty || p.total == 0 {
            return;
        }
        let pct = p.done * 100 / p.total;
        if pct != last {
            last = pct;
            eprint!("\rscanning: {pct:3}% ({} / {} MiB)", p.done >> 20, p.total >> 20);
            if p.done >= p.total {
                eprintln!();
            }
            let _ = std::io::stderr().flush();
        }
    }
}

fn show_payload(b: &[u8], f: Format) -> String {
    match f {
        Format::Hex => b.iter().map(|x| format!("{x:02x}")).collect(),
        Format::Text => String::from_utf8_lossy(b).escape_debug().to_string(),
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.cmd {
        Cmd::Inspect { dir } => {
            let r = tools::inspect(&dir, &mut progress())?;
            println!(
                "log {}: {} shards, {} segments, {} streams",
                dir.display(),
                r.shards,
                r.segments.len(),
                r.streams.len()
            );
            println!("\nSEGMENT                                              SHARD   FIRST_LSN    LAST_LSN    RECORDS       BYTES  COMPRESSED  STATE");
            for s in &r.segments {
                let state = if s.header_error.is_some() {
                    "bad header"
                } else if s.bad.iter().any(|b| !b.at_tail || !s.newest) {
                    "damaged"
                } else if !s.bad.is_empty() {
                    "torn tail"
                } else if s.newest {
                    "active"
                } else {
                    "sealed"
                };
                let name = s.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                println!(
                    "{name:<52} {:>5} {:>11} {:>11} {:>10} {:>11}  {:>10}  {state}",
                    s.shard,
                    s.first_lsn,
                    s.last_lsn.map_or("-".into(), |l| l.to_string()),
                    s.records,
                    s.bytes,
                    if s.compressed { "zstd" } else { "no" },
                );
            }
            println!("\nSTREAM                           ID  SHARD  FIRST_OFFSET  LAST_OFFSET    RECORDS       BYTES");
            for s in &r.streams {
                println!(
                    "{:<28} {:>6} {:>6} {:>13} {:>12} {:>10} {:>11}",
                    s.name.clone().unwrap_or_else(|| "<no catalogue record>".into()),
                    s.id,
                    s.shard,
                    s.first_offset.map_or("-".into(), |o| o.to_string()),
                    s.last_offset.map_or("-".into(), |o| o.to_string()),
                    s.records,
                    s.bytes
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Verify { dir } => {
            let r = tools::inspect(&dir, &mut progress())?;
            let records: u64 = r.segments.iter().map(|s| s.records).sum();
            for s in r.bad_headers() {
                println!("BAD HEADER {}: {}", s.path.display(), s.header_error.as_deref().unwrap_or(""));
            }
            for b in r.damage() {
                println!("DAMAGED {} bytes {}..{}: {}", b.path.display(), b.start, b.end, b.reason);
            }
            for b in r.torn_tails() {
                println!(
                    "TORN TAIL {} bytes {}..{}: {} (truncated on the next open; never acknowledged)",
                    b.path.display(),
                    b.start,
                    b.end,
                    b.reason
                );
            }
            let damaged = !r.damage().is_empty() || !r.bad_headers().is_empty();
            println!(
                "{}: {} segments, {} records checked",
                if damaged { "DAMAGED" } else { "OK" },
                r.segments.len(),
                records
            );
            if damaged {
                println!("run `walctl recover {} --mode tolerant` to skip the damaged ranges", dir.display());
                return Ok(ExitCode::from(1));
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Recover { dir, mode, dry_run } => {
            let mode = match mode {
                Mode::Strict => RecoveryMode::Strict,
                Mode::Tolerant => RecoveryMode::Tolerant,
            };
            let out = tools::recover(&dir, mode, dry_run)?;
            let verb = if dry_run { "would" } else { "did" };
            for b in &out.truncate {
                println!(
                    "{verb} truncate torn tail of {} at byte {} ({} bytes)",
                    b.path.display(),
                    b.start,
                    b.end - b.start
                );
            }
            for b in &out.skip {
                println!("{verb} skip damaged range {} bytes {}..{}: {}", b.path.display(), b.start, b.end, b.reason);
            }
            for p in &out.set_aside {
                println!("{verb} set aside segment with unreadable header {}", p.display());
            }
            if let Some(rep) = &out.report {
                for (name, from, to) in rep.shards.iter().flat_map(|s| &s.retention_gaps) {
                    println!("stream {name:?} jumps from offset {from} to {to} over segments retention deleted");
                }
                println!("recovered: {} records re-indexed in {} ms", rep.records_scanned(), rep.duration.as_millis());
            }
            if out.truncate.is_empty() && out.skip.is_empty() && out.set_aside.is_empty() {
                println!("nothing to repair");
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Dump { dir, stream, from, limit, format } => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let mut err = None;
            tools::dump(&dir, &stream, from, limit, &mut |r| {
                if err.is_some() {
                    return;
                }
                let key = r.key.as_ref().map(|k| format!(" key={}", show_payload(k, format))).unwrap_or_default();
                if let Err(e) =
                    writeln!(out, "{}\tts={}{key}\t{}", r.offset, r.timestamp_ms, show_payload(&r.payload, format))
                {
                    err = Some(e);
                }
            })?;
            match err {
                // A closed pipe (`walctl dump | head`) is a normal way to stop reading.
                Some(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
                _ => {}
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("walctl: {e}");
            ExitCode::from(1)
        }
    }
}
