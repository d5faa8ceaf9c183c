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
use promptmq_broker::Broker;
use promptmq_wal::SyncMode;

#[path = "../config.rs"]
mod config;
#[path = "../http.rs"]
mod http;

#[derive(Parser)]
#[command(name = "promptmq", version, about = "PromptMQ: an MQTT 3.1.1 / 5.0 broker on a durable log")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the broker. Settings: embedded defaults <- --config file <- PROMPTMQ_* environment
    /// (nested keys joined with __, e.g. PROMPTMQ_LIMITS__MAX_PACKET_SIZE) <- these flags.
    Serve(Serve),
    /// Check or print configuration.
    #[command(subcommand)]
    Config(ConfigCmd),
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Validate a config file (with the environment applied); exit 1 naming each bad key.
    Check {
        /// YAML, TOML or JSON file (by extension).
        file: PathBuf,
    },
    /// Print the effective configuration after all layers, as YAML-compatible JSON.
    Print {
        /// Optional config file.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Parser)]
struct Serve {
    /// Config file (YAML, TOML or JSON, by extension); see promptmq.example.yaml.
    #[arg(long)]
    config: Option<PathBuf>,
    /// TCP address to listen on [default: 127.0.0.1:1883].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Directory for the log and the index, created if missing [default: ./data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// When QoS 1/2 messages are acknowledged: `always` (after fdatasync), `interval:MS`
    /// (background sync every MS ms; up to MS ms lost on power loss), `none` [default: always].
    #[arg(long, value_parser = parse_sync)]
    sync: Option<SyncMode>,
    /// Log filter (RUST_LOG syntax), e.g. `info` or `promptmq_broker=debug` [default: info].
    #[arg(long)]
    log: Option<String>,
    /// Address of the /metrics, /healthz and /readyz endpoint [default: 127.0.0.1:9090].
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
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

async fn serve(cfg: config::Config) -> Result<(), String> {
    // The endpoint comes up first: /healthz answers and /readyz says "recovering" while the
    // log is recovered.
    let monitor = std::sync::Arc::new(std::sync::OnceLock::new());
    if cfg.metrics.enabled {
        let addr = http::start(cfg.metrics.listen, monitor.clone()).await?;
        println!("promptmq metrics on http://{addr}/metrics");
    }
    let broker = Broker::start(cfg.broker()).await.map_err(|e| e.to_string())?;
    let _ = monitor.set(broker.monitor());
    println!("promptmq listening on {}", broker.local_addr());
    for (kind, addr) in &broker.listeners()[1..] {
        println!("promptmq {kind} listener on {addr}");
    }
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

fn init_logging(cfg: &config::Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(format!("fjall=warn,lsm_tree=warn,{}", cfg.logging.level))
        .unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cfg.logging.format {
        config::LogFormat::Json => builder.json().init(),
        config::LogFormat::Text => builder.init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Config(ConfigCmd::Check { file }) => match config::load(Some(&file), &config::Overrides::default()) {
            Ok(_) => {
                println!("{}: OK", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e}", file.display());
                ExitCode::from(1)
            }
        },
        Cmd::Config(ConfigCmd::Print { config }) => {
            match config::load(config.as_deref(), &config::Overrides::default()) {
                Ok(c) => {
                    println!("{}", serde_json::to_string_pretty(&c).unwrap_or_default());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("promptmq: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Cmd::Serve(args) => {
            let flags = config::Overrides {
                listen: args.listen,
                data_dir: args.data_dir,
                sync: args.sync,
                log: args.log,
                metrics_listen: args.metrics_listen,
            };
            let cfg = match config::load(args.config.as_deref(), &flags) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("promptmq: invalid configuration: {e}");
                    return ExitCode::from(1);
                }
            };
            init_logging(&cfg);
            let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("promptmq: cannot start the runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            match rt.block_on(serve(cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("promptmq: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}
