//! `promptmq`: the PromptMQ MQTT broker.
//!
//! `promptmq serve` starts it with the embedded defaults (127.0.0.1:1883, data in `./data`,
//! `sync = always`); `--listen` and `--data-dir` override them. SIGTERM / Ctrl-C drain and
//! sync; a second signal exits at once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use promptmq_broker::{Broker, BrokerConfig};
use promptmq_wal::SyncMode;

#[derive(Parser)]
#[command(name = "promptmq", version, about = "PromptMQ: an MQTT 3.1.1 / 5.0 broker on a durable log")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the broker.
    Serve(Serve),
}

#[derive(Parser)]
struct Serve {
    /// TCP address to listen on.
    #[arg(long, default_value = "127.0.0.1:1883")]
    listen: SocketAddr,
    /// Directory for the log and the index (created if missing).
    #[arg(long, default_value = "./data")]
    data_dir: PathBuf,
    /// When QoS 1/2 messages are acknowledged: `always` (after fdatasync), `interval:MS`
    /// (background sync every MS ms; up to MS ms lost on power loss), `none`.
    #[arg(long, default_value = "always", value_parser = parse_sync)]
    sync: SyncMode,
    /// Largest packet accepted, in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    max_packet_size: usize,
    /// Most messages queued per client before new ones are dropped.
    #[arg(long, default_value_t = 10_000)]
    max_queued_messages: usize,
    /// Log filter (RUST_LOG syntax), e.g. `info` or `promptmq_broker=debug`.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    log: String,
}

fn parse_sync(s: &str) -> Result<SyncMode, String> {
    match s {
        "always" => Ok(SyncMode::Always),
        "none" => Ok(SyncMode::None),
        _ => match s.strip_prefix("interval:").and_then(|ms| ms.parse::<u64>().ok()) {
            Some(ms) if ms > 0 => Ok(SyncMode::Interval(Duration::from_millis(ms))),
            _ => Err(format!("{s:?} is not a sync mode; use always, none or interval:MS (MS > 0)")),
        },
    }
}

async fn serve(args: Serve) -> Result<(), String> {
    let mut cfg = BrokerConfig::new(args.listen, args.data_dir);
    cfg.sync = args.sync;
    cfg.max_packet_size = args.max_packet_size;
    cfg.max_queued_messages = args.max_queued_messages;
    let broker = Broker::start(cfg).await.map_err(|e| e.to_string())?;
    println!("promptmq listening on {}", broker.local_addr());
    wait_for_signal().await;
    tracing::info!("shutting down (a second signal exits at once)");
    tokio::select! {
        _ = broker.shutdown() => {}
        _ = wait_for_signal() => {
            tracing::warn!("second signal: exiting without waiting");
            std::process::exit(130);
        }
    }
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Serve(args) => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_new(format!("fjall=warn,lsm_tree=warn,{}", args.log))
                        .unwrap_or_else(|_| "info".into()),
                )
                .with_writer(std::io::stderr)
                .init();
            let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("promptmq: cannot start the runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            match rt.block_on(serve(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("promptmq: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}
