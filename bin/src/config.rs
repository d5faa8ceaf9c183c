//! The operator's configuration: embedded defaults ← config file (YAML, TOML or JSON, chosen
//! by extension) ← environment `PROMPTMQ_*` (nested keys joined with `__`, e.g.
//! `PROMPTMQ_LIMITS__MAX_PACKET_SIZE=65536`) ← command-line flags. Unknown keys and bad values
//! are errors that name the key. Maps onto the broker's `BrokerConfig`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Json, Serialized, Toml, Yaml};
use figment::Figment;
use promptmq_broker::BrokerConfig;
use promptmq_wal::SyncMode;
use serde::{Deserialize, Serialize};

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where clients connect.
    pub listeners: Listeners,
    /// The log.
    pub storage: Storage,
    /// Per-client limits.
    pub limits: Limits,
    /// Log output.
    pub logging: Logging,
    /// The HTTP endpoint for `/metrics` (Prometheus), `/healthz` and `/readyz`.
    pub metrics: Metrics,
    /// Who may connect and what they may do.
    pub auth: Auth,
}

/// Authentication and authorisation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    /// Let clients without a username connect.
    pub allow_anonymous: bool,
    /// Password file made with `promptmq passwd FILE USER` (argon2 hashes); with it, a
    /// client giving a username must give its password.
    pub password_file: Option<PathBuf>,
    /// ACL file (Mosquitto syntax: user / topic / pattern lines with %u and %c); with it a
    /// client may publish and subscribe only where a rule allows.
    pub acl_file: Option<PathBuf>,
}

impl Default for Auth {
    fn default() -> Self {
        Auth { allow_anonymous: true, password_file: None, acl_file: None }
    }
}

/// The operator's HTTP endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Metrics {
    /// Serve `/metrics`, `/healthz` and `/readyz`.
    pub enabled: bool,
    /// Address and port of the endpoint (port 0: any free port, printed at start).
    pub listen: SocketAddr,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics { enabled: true, listen: SocketAddr::from(([127, 0, 0, 1], 9090)) }
    }
}

/// Listeners.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Listeners {
    /// Plain MQTT over TCP.
    pub tcp: Tcp,
    /// MQTT over TLS.
    pub tls: TlsListener,
    /// MQTT over WebSocket.
    pub ws: WsListener,
    /// MQTT over WebSocket over TLS.
    pub wss: WssListener,
}

/// Certificate settings shared by the TLS and WSS listeners.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Certs {
    /// PEM certificate chain, server certificate first.
    pub cert: Option<PathBuf>,
    /// PEM private key.
    pub key: Option<PathBuf>,
    /// PEM CA certificates client certificates must chain to (asks clients for one).
    pub client_ca: Option<PathBuf>,
    /// With client_ca: refuse clients without a certificate.
    pub require_client_cert: bool,
    /// Use the client certificate's subject CN as the username (needs client_ca; the
    /// verified certificate then stands for the password).
    pub use_identity_as_username: bool,
}

/// The TLS listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsListener {
    /// Turn it on.
    pub enabled: bool,
    /// Address and port.
    pub bind: SocketAddr,
    /// Most simultaneous connections on this listener (0: only the overall limit).
    pub max_connections: usize,
    /// Certificates.
    #[serde(flatten)]
    pub certs: Certs,
}

impl Default for TlsListener {
    fn default() -> Self {
        TlsListener {
            enabled: false,
            bind: SocketAddr::from(([127, 0, 0, 1], 8883)),
            max_connections: 0,
            certs: Certs::default(),
        }
    }
}

/// The WebSocket listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WsListener {
    /// Turn it on.
    pub enabled: bool,
    /// Address and port.
    pub bind: SocketAddr,
    /// Most simultaneous connections on this listener (0: only the overall limit).
    pub max_connections: usize,
    /// HTTP path of the upgrade request.
    pub path: String,
}

impl Default for WsListener {
    fn default() -> Self {
        WsListener {
            enabled: false,
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_connections: 0,
            path: "/mqtt".into(),
        }
    }
}

/// The WebSocket-over-TLS listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WssListener {
    /// Turn it on.
    pub enabled: bool,
    /// Address and port.
    pub bind: SocketAddr,
    /// Most simultaneous connections on this listener (0: only the overall limit).
    pub max_connections: usize,
    /// HTTP path of the upgrade request.
    pub path: String,
    /// Certificates.
    #[serde(flatten)]
    pub certs: Certs,
}

impl Default for WssListener {
    fn default() -> Self {
        WssListener {
            enabled: false,
            bind: SocketAddr::from(([127, 0, 0, 1], 8081)),
            max_connections: 0,
            path: "/mqtt".into(),
            certs: Certs::default(),
        }
    }
}

impl Certs {
    /// The broker's form, or an error naming the missing key under `section`.
    fn files(&self, section: &str) -> Result<promptmq_broker::TlsFiles, String> {
        if self.use_identity_as_username && (self.client_ca.is_none() || !self.require_client_cert) {
            return Err(format!(
                "{section}.use_identity_as_username: needs {section}.client_ca and {section}.require_client_cert: true"
            ));
        }
        let need = |v: &Option<PathBuf>, key: &str| {
            v.clone().ok_or_else(|| format!("{section}.{key}: required when {section}.enabled is true"))
        };
        Ok(promptmq_broker::TlsFiles {
            cert: need(&self.cert, "cert")?,
            key: need(&self.key, "key")?,
            client_ca: self.client_ca.clone(),
            require_client_cert: self.require_client_cert,
            use_identity_as_username: self.use_identity_as_username,
        })
    }
}

/// The TCP listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tcp {
    /// Address and port to listen on.
    pub bind: SocketAddr,
    /// Most simultaneous connections; further ones wait to be accepted.
    pub max_connections: usize,
}

/// Durability of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sync {
    /// fdatasync before acknowledging (nothing acknowledged is lost, even on power loss).
    Always,
    /// Acknowledge after write; sync every `sync_interval_ms` (power loss loses at most that).
    Interval,
    /// Never sync explicitly (power loss loses what the OS had not written).
    None,
}

/// Storage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Storage {
    /// Data directory (the log lives in `<dir>/log`).
    pub dir: PathBuf,
    /// When QoS 1/2 messages are acknowledged: always | interval | none.
    pub sync: Sync,
    /// Sync interval for `sync: interval`, milliseconds (> 0).
    pub sync_interval_ms: u64,
    /// Also write QoS 0 messages to the log.
    pub persist_qos0: bool,
    /// Send QoS 1 messages to subscribers without a persistent session before they are
    /// durable (the publisher's PUBACK waits either way).
    pub deliver_before_durable: bool,
    /// How soon a persistent session's acknowledged position is saved, milliseconds (> 0);
    /// after a crash a client receives again (QoS 1) what it acknowledged within it.
    pub positions_save_interval_ms: u64,
    /// Shard logs for a new data directory (0: half the cores, at least one; an existing one
    /// keeps its count).
    pub shards: u32,
    /// Segment file size in MiB (1..=1024).
    pub segment_mb: u64,
    /// A damaged record inside a sealed segment: strict (refuse to start, name it) or
    /// tolerant (skip it, report it, keep every valid record).
    pub recovery: Recovery,
    /// Scan every segment at start, not only the log after the last checkpoint.
    pub verify_all_on_start: bool,
    /// How much of each topic is kept (0: no limit of that kind).
    pub retention: RetentionCfg,
    /// Rewrite sealed segments zstd-compressed during maintenance.
    pub compress: bool,
    /// Prepare each next segment ahead of time, zero-filled (faster syncs; one spare
    /// segment of disk per shard).
    pub preallocate: bool,
    /// Seconds between retention / compaction runs (> 0).
    pub maintenance_interval_secs: u64,
}

/// Recovery mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Recovery {
    /// Refuse to start on a damaged sealed segment, naming the bad range.
    Strict,
    /// Skip and report damaged ranges.
    Tolerant,
}

/// Retention of topic messages (the oldest go first; whole segments are removed).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionCfg {
    /// Keep messages at most this many seconds.
    pub max_age_secs: u64,
    /// Keep at most about this many bytes per topic.
    pub max_bytes: u64,
    /// Keep at most this many messages per topic.
    pub max_messages: u64,
}

/// Limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest packet accepted, bytes (larger ones disconnect the client with 0x95).
    pub max_packet_size: usize,
    /// Messages held in memory per client; beyond it, QoS 1/2 messages wait in the log and
    /// QoS 0 ones are dropped.
    pub max_queued_messages: usize,
    /// Payload bytes held in memory per client; beyond it as for max_queued_messages.
    pub max_queued_bytes: usize,
    /// Most unacknowledged QoS 1/2 messages sent to one client (1..=65535), whatever
    /// receive maximum it announced.
    pub max_inflight: u16,
    /// Highest message expiry interval kept, seconds; longer ones and messages without an
    /// expiry get this (0: no cap).
    pub max_message_expiry_secs: u32,
    /// Receive maximum announced to clients: their unacknowledged QoS 1/2 PUBLISHes.
    pub receive_maximum: u16,
    /// Highest keep alive accepted, seconds; longer ones are replaced.
    pub max_keep_alive: u16,
    /// Highest session expiry interval honoured, seconds.
    pub max_session_expiry: u32,
    /// Topic aliases a client may use towards the broker.
    pub topic_alias_maximum: u16,
    /// Seconds a new connection has to send a complete CONNECT (slowloris guard, > 0).
    pub connect_timeout_secs: u64,
    /// Seconds a write to a client may stall before it is disconnected as too slow (> 0).
    pub write_timeout_secs: u64,
}

/// Logging.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Logging {
    /// Filter in RUST_LOG syntax, e.g. `info` or `promptmq_broker=debug`.
    pub level: String,
    /// Output format.
    pub format: LogFormat,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl Default for Config {
    fn default() -> Self {
        let b = BrokerConfig::default();
        Config {
            listeners: Listeners::default(),
            storage: Storage {
                dir: b.data_dir,
                sync: Sync::Always,
                sync_interval_ms: 5,
                persist_qos0: b.persist_qos0,
                deliver_before_durable: b.deliver_before_durable,
                positions_save_interval_ms: b.positions_save_interval.as_millis() as u64,
                shards: 0,
                segment_mb: b.storage.segment_bytes >> 20,
                recovery: Recovery::Strict,
                verify_all_on_start: false,
                retention: RetentionCfg::default(),
                compress: b.storage.compress,
                preallocate: b.storage.preallocate,
                maintenance_interval_secs: b.storage.maintenance_interval.as_secs(),
            },
            limits: Limits {
                max_packet_size: b.max_packet_size,
                max_queued_messages: b.max_queued_messages,
                max_queued_bytes: b.max_queued_bytes,
                max_inflight: b.max_inflight,
                max_message_expiry_secs: b.max_message_expiry,
                receive_maximum: b.receive_maximum,
                max_keep_alive: b.max_keep_alive,
                max_session_expiry: b.max_session_expiry,
                topic_alias_maximum: b.topic_alias_maximum,
                connect_timeout_secs: b.connect_timeout.as_secs(),
                write_timeout_secs: b.write_timeout.as_secs(),
            },
            logging: Logging::default(),
            metrics: Metrics::default(),
            auth: Auth::default(),
        }
    }
}

impl Default for Tcp {
    fn default() -> Self {
        let b = BrokerConfig::default();
        Tcp { bind: b.listen, max_connections: b.max_connections }
    }
}

impl Default for Storage {
    fn default() -> Self {
        Config::default().storage
    }
}

impl Default for Limits {
    fn default() -> Self {
        Config::default().limits
    }
}

impl Default for Logging {
    fn default() -> Self {
        Logging { level: "info".into(), format: LogFormat::Text }
    }
}

/// Command-line overrides (only the flags given).
#[derive(Debug, Default)]
pub struct Overrides {
    /// `--listen`.
    pub listen: Option<SocketAddr>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--sync always|none|interval:MS`.
    pub sync: Option<SyncMode>,
    /// `--log`.
    pub log: Option<String>,
    /// `--metrics-listen`.
    pub metrics_listen: Option<SocketAddr>,
}

/// Builds the effective configuration from all layers.
pub fn load(file: Option<&Path>, flags: &Overrides) -> Result<Config, String> {
    let mut fig = Figment::from(Serialized::defaults(Config::default()));
    if let Some(f) = file {
        if !f.is_file() {
            return Err(format!("config file {} does not exist", f.display()));
        }
        fig = match f.extension().and_then(|e| e.to_str()) {
            Some("yaml" | "yml") => fig.merge(Yaml::file(f)),
            Some("toml") => fig.merge(Toml::file(f)),
            Some("json") => fig.merge(Json::file(f)),
            _ => return Err(format!("config file {}: use a .yaml, .yml, .toml or .json extension", f.display())),
        };
    }
    fig = fig.merge(Env::prefixed("PROMPTMQ_").split("__"));
    if let Some(l) = flags.listen {
        fig = fig.merge(Serialized::default("listeners.tcp.bind", l));
    }
    if let Some(d) = &flags.data_dir {
        fig = fig.merge(Serialized::default("storage.dir", d));
    }
    if let Some(l) = &flags.log {
        fig = fig.merge(Serialized::default("logging.level", l));
    }
    if let Some(m) = flags.metrics_listen {
        fig = fig.merge(Serialized::default("metrics.listen", m));
    }
    if let Some(s) = flags.sync {
        let (mode, ms) = match s {
            SyncMode::Always => (Sync::Always, None),
            SyncMode::None => (Sync::None, None),
            SyncMode::Interval(d) => (Sync::Interval, Some(d.as_millis() as u64)),
        };
        fig = fig.merge(Serialized::default("storage.sync", mode));
        if let Some(ms) = ms {
            fig = fig.merge(Serialized::default("storage.sync_interval_ms", ms));
        }
    }
    let cfg: Config = fig.extract().map_err(|e| {
        e.into_iter()
            .map(|e| {
                let key = if e.path.is_empty() { String::new() } else { format!("{}: ", e.path.join(".")) };
                format!("{key}{}", e.kind)
            })
            .collect::<Vec<_>>()
            .join("; ")
    })?;
    cfg.validate()?;
    Ok(cfg)
}

impl Config {
    fn validate(&self) -> Result<(), String> {
        if self.storage.sync == Sync::Interval && self.storage.sync_interval_ms == 0 {
            return Err("storage.sync_interval_ms: must be > 0 with sync: interval".into());
        }
        self.extra_listeners()?;
        if !(1..=1024).contains(&self.storage.segment_mb) {
            return Err(format!("storage.segment_mb: {} is outside 1..=1024", self.storage.segment_mb));
        }
        if self.storage.shards > 256 {
            return Err(format!("storage.shards: {} is above 256", self.storage.shards));
        }
        if self.storage.maintenance_interval_secs == 0 {
            return Err("storage.maintenance_interval_secs: must be > 0".into());
        }
        if self.storage.positions_save_interval_ms == 0 {
            return Err("storage.positions_save_interval_ms: must be > 0".into());
        }
        if self.limits.max_packet_size < 16 {
            return Err("limits.max_packet_size: must be at least 16 bytes".into());
        }
        if self.limits.receive_maximum == 0 {
            return Err("limits.receive_maximum: must be 1..=65535".into());
        }
        if self.limits.connect_timeout_secs == 0 {
            return Err("limits.connect_timeout_secs: must be > 0".into());
        }
        if self.limits.max_inflight == 0 {
            return Err("limits.max_inflight: must be 1..=65535".into());
        }
        if self.limits.max_queued_messages == 0 || self.limits.max_queued_bytes == 0 {
            return Err("limits.max_queued_messages and limits.max_queued_bytes: must be > 0".into());
        }
        if self.limits.write_timeout_secs == 0 {
            return Err("limits.write_timeout_secs: must be > 0".into());
        }
        if self.listeners.tcp.max_connections == 0 {
            return Err("listeners.tcp.max_connections: must be > 0".into());
        }
        tracing_subscriber::EnvFilter::try_new(&self.logging.level).map_err(|e| format!("logging.level: {e}"))?;
        Ok(())
    }

    /// The broker settings.
    /// The TLS, WebSocket and WSS listeners that are enabled.
    fn extra_listeners(&self) -> Result<Vec<promptmq_broker::ListenerConfig>, String> {
        use promptmq_broker::{ListenerConfig, ListenerKind};
        let l = &self.listeners;
        let own = |n: usize| (n > 0).then_some(n);
        let mut out = Vec::new();
        if l.tls.enabled {
            let kind = ListenerKind::Tls(l.tls.certs.files("listeners.tls")?);
            out.push(ListenerConfig { bind: l.tls.bind, kind, max_connections: own(l.tls.max_connections) });
        }
        if l.ws.enabled {
            if !l.ws.path.starts_with('/') {
                return Err(format!("listeners.ws.path: {:?} must start with /", l.ws.path));
            }
            let kind = ListenerKind::Ws { path: l.ws.path.clone() };
            out.push(ListenerConfig { bind: l.ws.bind, kind, max_connections: own(l.ws.max_connections) });
        }
        if l.wss.enabled {
            if !l.wss.path.starts_with('/') {
                return Err(format!("listeners.wss.path: {:?} must start with /", l.wss.path));
            }
            let tls = l.wss.certs.files("listeners.wss")?;
            let kind = ListenerKind::Wss { path: l.wss.path.clone(), tls };
            out.push(ListenerConfig { bind: l.wss.bind, kind, max_connections: own(l.wss.max_connections) });
        }
        Ok(out)
    }

    pub fn broker(&self) -> BrokerConfig {
        let mut b = BrokerConfig::new(self.listeners.tcp.bind, self.storage.dir.clone());
        // Validated by `load`.
        b.listeners = self.extra_listeners().unwrap_or_default();
        b.max_connections = self.listeners.tcp.max_connections;
        b.sync = match self.storage.sync {
            Sync::Always => SyncMode::Always,
            Sync::None => SyncMode::None,
            Sync::Interval => SyncMode::Interval(Duration::from_millis(self.storage.sync_interval_ms)),
        };
        b.persist_qos0 = self.storage.persist_qos0;
        b.deliver_before_durable = self.storage.deliver_before_durable;
        b.positions_save_interval = Duration::from_millis(self.storage.positions_save_interval_ms);
        let st = &self.storage;
        let limit = |v: u64| (v > 0).then_some(v);
        b.storage = promptmq_broker::StorageSettings {
            backend: None,
            shards: (st.shards > 0).then_some(st.shards),
            segment_bytes: st.segment_mb << 20,
            recovery: match st.recovery {
                Recovery::Strict => promptmq_wal::RecoveryMode::Strict,
                Recovery::Tolerant => promptmq_wal::RecoveryMode::Tolerant,
            },
            verify_all_on_start: st.verify_all_on_start,
            retention: promptmq_wal::Retention {
                max_age: limit(st.retention.max_age_secs).map(Duration::from_secs),
                max_bytes: limit(st.retention.max_bytes),
                max_records: limit(st.retention.max_messages),
            },
            compress: st.compress,
            preallocate: st.preallocate,
            maintenance_interval: Duration::from_secs(st.maintenance_interval_secs),
        };
        b.allow_anonymous = self.auth.allow_anonymous;
        b.password_file = self.auth.password_file.clone();
        b.acl_file = self.auth.acl_file.clone();
        b.max_packet_size = self.limits.max_packet_size;
        b.max_queued_messages = self.limits.max_queued_messages;
        b.max_queued_bytes = self.limits.max_queued_bytes;
        b.max_inflight = self.limits.max_inflight;
        b.max_message_expiry = self.limits.max_message_expiry_secs;
        b.receive_maximum = self.limits.receive_maximum;
        b.max_keep_alive = self.limits.max_keep_alive;
        b.max_session_expiry = self.limits.max_session_expiry;
        b.topic_alias_maximum = self.limits.topic_alias_maximum;
        b.connect_timeout = Duration::from_secs(self.limits.connect_timeout_secs);
        b.write_timeout = Duration::from_secs(self.limits.write_timeout_secs);
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, body: &str) -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(name);
        std::fs::write(&p, body).unwrap();
        (d, p)
    }

    #[test]
    fn defaults_are_the_embedded_ones() {
        let c = load(None, &Overrides::default()).unwrap();
        assert_eq!(c.listeners.tcp.bind, "127.0.0.1:1883".parse().unwrap());
        assert_eq!(c.storage.dir, PathBuf::from("./data"));
        assert_eq!(c.storage.sync, Sync::Always);
    }

    #[test]
    fn tls_websocket_and_wss_listeners() {
        let (_d, y) = write("c.yaml", "listeners:\n  tls:\n    enabled: true\n");
        let e = load(Some(&y), &Overrides::default()).unwrap_err();
        assert!(e.contains("listeners.tls.cert"), "{e}");
        let (_d, y) = write(
            "c.yaml",
            "listeners:\n  tls:\n    enabled: true\n    cert: /c.pem\n    key: /k.pem\n  ws:\n    enabled: true\n    path: /ws\n  wss:\n    enabled: true\n    cert: /c.pem\n    key: /k.pem\n    client_ca: /ca.pem\n",
        );
        let b = load(Some(&y), &Overrides::default()).unwrap().broker();
        let kinds: Vec<_> = b.listeners.iter().map(|l| l.kind.name()).collect();
        assert_eq!(kinds, vec!["tls", "ws", "wss"]);
        let (_d, y) = write("c.yaml", "listeners:\n  ws:\n    enabled: true\n    path: mqtt\n");
        assert!(load(Some(&y), &Overrides::default()).unwrap_err().contains("listeners.ws.path"));
        let (_d, y) = write("c.yaml", "listeners:\n  tls:\n    sertificate: x\n");
        assert!(load(Some(&y), &Overrides::default()).unwrap_err().contains("sertificate"), "unknown keys named");
    }

    #[test]
    fn each_format_and_the_layers() {
        let (_d, y) =
            write("c.yaml", "limits:\n  max_packet_size: 4096\nstorage:\n  sync: interval\n  sync_interval_ms: 20\n");
        let c = load(Some(&y), &Overrides::default()).unwrap();
        assert_eq!(c.limits.max_packet_size, 4096);
        assert_eq!(c.broker().sync, SyncMode::Interval(Duration::from_millis(20)));
        let (_d, t) = write("c.toml", "[limits]\nmax_queued_messages = 7\n");
        assert_eq!(load(Some(&t), &Overrides::default()).unwrap().limits.max_queued_messages, 7);
        let (_d, j) = write("c.json", r#"{"logging": {"format": "json"}}"#);
        assert_eq!(load(Some(&j), &Overrides::default()).unwrap().logging.format, LogFormat::Json);
        // Flags win over the file.
        let flags = Overrides { data_dir: Some("/tmp/x".into()), ..Overrides::default() };
        assert_eq!(load(Some(&y), &flags).unwrap().storage.dir, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let (_d, y) = write("c.yaml", "limits:\n  max_pakcet_size: 1\n");
        let e = load(Some(&y), &Overrides::default()).unwrap_err();
        assert!(e.contains("max_pakcet_size") && e.contains("max_packet_size"), "{e}");
        let (_d, y) = write("c.yaml", "storage:\n  sync: sometimes\n");
        let e = load(Some(&y), &Overrides::default()).unwrap_err();
        assert!(e.contains("storage.sync") && e.contains("always"), "{e}");
        let (_d, y) = write("c.yaml", "listeners:\n  tcp:\n    bind: not-an-address\n");
        assert!(load(Some(&y), &Overrides::default()).unwrap_err().contains("listeners.tcp.bind"));
        let (_d, x) = write("c.ini", "");
        assert!(load(Some(&x), &Overrides::default()).unwrap_err().contains("extension"));
    }
}
