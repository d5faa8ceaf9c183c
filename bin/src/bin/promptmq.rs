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
    /// Add, change or delete a user in a password file (argon2id hashes). The password is
    /// asked for on a terminal, or read as one line from standard input.
    Passwd {
        /// The password file (created if missing).
        file: PathBuf,
        /// The username.
        user: String,
        /// Delete the user instead.
        #[arg(long)]
        delete: bool,
    },
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

/// Every configuration option with its doc line and default (the shipped example file), shown
/// by `promptmq serve --help`.
const CONFIG_REFERENCE: &str = concat!(
    "Configuration file reference (promptmq.example.yaml; every key can also be set as\n",
    "PROMPTMQ_<SECTION>__<KEY> in the environment):\n\n",
    include_str!("../../../promptmq.example.yaml")
);

#[derive(Parser)]
#[command(after_long_help = CONFIG_REFERENCE)]
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

/// Filter of the running log subscriber, changed by a reload.
type LogFilter = tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

fn log_filter(level: &str) -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_new(format!("fjall=warn,lsm_tree=warn,{level}"))
        .unwrap_or_else(|_| "info".into())
}

/// SIGHUP: reads the configuration again (same file, environment and flags) and applies
/// what can change while running — the password file, the ACL file, anonymous access and
/// the log level — and says what else changed but needs a restart.
fn reload(
    broker: &Broker,
    file: Option<&std::path::Path>,
    flags: &config::Overrides,
    running: &mut config::Config,
    log: &LogFilter,
) {
    let new = match config::load(file, flags) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "reload failed; the running configuration stays");
            return;
        }
    };
    let auth = &new.auth;
    match promptmq_broker::AuthConfig::load(
        auth.allow_anonymous,
        auth.password_file.as_deref(),
        auth.acl_file.as_deref(),
    ) {
        Ok(a) => {
            let users = a.passwords.as_ref().map_or(0, |p| p.len());
            broker.reload_auth(a);
            tracing::info!(
                users,
                acl = auth.acl_file.is_some(),
                allow_anonymous = auth.allow_anonymous,
                "reloaded auth and ACL"
            );
            running.auth = new.auth.clone();
        }
        Err(e) => tracing::error!(error = %e, "auth not reloaded; the running settings stay"),
    }
    if new.logging.level != running.logging.level {
        match log.reload(log_filter(&new.logging.level)) {
            Ok(()) => {
                tracing::info!(from = %running.logging.level, to = %new.logging.level, "log level changed");
                running.logging.level = new.logging.level.clone();
            }
            Err(e) => tracing::error!(error = %e, "log level not changed"),
        }
    }
    let mut restart = Vec::new();
    if new.listeners != running.listeners {
        restart.push("listeners");
    }
    if new.storage != running.storage {
        restart.push("storage");
    }
    if new.limits != running.limits {
        let changed = broker.update_limits(&new.broker());
        tracing::info!(?changed, "limits changed (new connections at once; queue bounds, packet size and timeouts for connected clients too)");
        running.limits = new.limits.clone();
    }
    if new.metrics != running.metrics {
        restart.push("metrics");
    }
    if new.logging.format != running.logging.format {
        restart.push("logging.format");
    }
    if !restart.is_empty() {
        tracing::warn!(sections = ?restart, "changed in the configuration but applied only after a restart");
    }
}

async fn serve(
    cfg: config::Config,
    file: Option<PathBuf>,
    flags: config::Overrides,
    log: LogFilter,
) -> Result<(), String> {
    let mut running = cfg.clone();
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
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = signal(SignalKind::hangup()).map_err(|e| format!("cannot watch SIGHUP: {e}"))?;
        loop {
            tokio::select! {
                _ = hup.recv() => reload(&broker, file.as_deref(), &flags, &mut running, &log),
                _ = wait_for_signal() => break,
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (&file, &flags, &log, &mut running);
        wait_for_signal().await;
    }
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

fn init_logging(cfg: &config::Config) -> LogFilter {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let (filter, handle) = tracing_subscriber::reload::Layer::new(log_filter(&cfg.logging.level));
    let registry = tracing_subscriber::registry().with(filter);
    match cfg.logging.format {
        config::LogFormat::Json => {
            registry.with(tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr)).init()
        }
        config::LogFormat::Text => registry.with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr)).init(),
    }
    handle
}

/// `promptmq passwd`: asks for (or reads) the password and updates the file.
fn passwd(file: &std::path::Path, user: &str, delete: bool) -> Result<(), String> {
    use std::io::IsTerminal;
    let password = if delete {
        None
    } else if std::io::stdin().is_terminal() {
        let p = rpassword::prompt_password(format!("Password for {user}: ")).map_err(|e| e.to_string())?;
        let again = rpassword::prompt_password("Again: ").map_err(|e| e.to_string())?;
        if p != again {
            return Err("the passwords differ; nothing changed".into());
        }
        Some(p)
    } else {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map_err(|e| format!("reading the password from stdin: {e}"))?;
        Some(line.trim_end_matches(['\n', '\r']).to_string())
    };
    if password.as_deref() == Some("") {
        return Err("empty password; nothing changed".into());
    }
    promptmq_broker::PasswordFile::update(file, user, password.as_deref().map(str::as_bytes)).map_err(|e| e.to_string())
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
        Cmd::Passwd { file, user, delete } => match passwd(&file, &user, delete) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("promptmq passwd: {e}");
                ExitCode::from(1)
            }
        },
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
            let log = init_logging(&cfg);
            let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("promptmq: cannot start the runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            match rt.block_on(serve(cfg, args.config, flags, log)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("promptmq: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}
