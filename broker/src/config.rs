//! The broker's settings. The operator-facing layers (file, environment, flags) live in the
//! `promptmq` binary and produce this struct.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use promptmq_wal::SyncMode;

/// How the log is laid out and kept.
#[derive(Debug, Clone)]
pub struct StorageSettings {
    /// The log's I/O backend (`None`: the default file backend). For tests that inject
    /// faults (`promptmq_wal::io::FaultyBackend`) and for special devices.
    pub backend: Option<std::sync::Arc<dyn promptmq_wal::io::Backend>>,
    /// Shard logs for a new data directory (`None`: half the cores, at least one); an
    /// existing directory keeps its count.
    pub shards: Option<u32>,
    /// Size at which a segment file is sealed.
    pub segment_bytes: u64,
    /// What recovery does with a damaged record inside a sealed segment.
    pub recovery: promptmq_wal::RecoveryMode,
    /// Scan every segment at start (slower), not only the log after the last checkpoint, so
    /// damage anywhere is found before clients are served.
    pub verify_all_on_start: bool,
    /// How long / how much of each topic's messages is kept. Offline sessions can be
    /// away only as long as this keeps what they have not read.
    pub retention: promptmq_wal::Retention,
    /// Rewrite sealed segments zstd-compressed during maintenance.
    pub compress: bool,
    /// Prepare each next segment ahead of time, zero-filled (`promptmq_wal::Options::preallocate`):
    /// faster syncs for one spare segment of disk per shard.
    pub preallocate: bool,
    /// How often retention and compaction run.
    pub maintenance_interval: Duration,
}

impl Default for StorageSettings {
    fn default() -> Self {
        StorageSettings {
            backend: None,
            shards: None,
            segment_bytes: 64 << 20,
            recovery: promptmq_wal::RecoveryMode::Strict,
            verify_all_on_start: false,
            retention: promptmq_wal::Retention::FOREVER,
            compress: false,
            preallocate: false,
            maintenance_interval: promptmq_wal::SUGGESTED_MAINTENANCE_INTERVAL,
        }
    }
}

/// Settings of one broker instance.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// TCP listen address (the primary listener).
    pub listen: SocketAddr,
    /// More listeners: TCP, TLS, WebSocket, WebSocket over TLS.
    pub listeners: Vec<crate::ListenerConfig>,
    /// Data directory (the log lives in `<data_dir>/log`).
    pub data_dir: PathBuf,
    /// When a QoS 1/2 message counts as durable (and is acknowledged).
    pub sync: SyncMode,
    /// Layout, recovery, retention and compaction of the log.
    pub storage: StorageSettings,
    /// Largest packet accepted, in bytes; larger ones disconnect the client.
    pub max_packet_size: usize,
    /// Receive maximum the broker announces: unacknowledged QoS 1/2 PUBLISHes a client may send.
    pub receive_maximum: u16,
    /// Messages held in memory for one client. Beyond it a message that is in the log
    /// waits there (read back when the client catches up); others (QoS 0) are dropped and
    /// counted.
    pub max_queued_messages: usize,
    /// Bytes of message payload held in memory for one client; beyond it as for
    /// `max_queued_messages`.
    pub max_queued_bytes: usize,
    /// Most unacknowledged QoS 1/2 messages sent to one client, whatever receive maximum it
    /// announced.
    pub max_inflight: u16,
    /// Highest message expiry interval kept, seconds; longer ones, and messages without an
    /// expiry, get this one (0: no cap).
    pub max_message_expiry: u32,
    /// Highest keep alive accepted; a longer one is replaced (v5: Server Keep Alive).
    pub max_keep_alive: u16,
    /// Highest session expiry interval honoured, seconds.
    pub max_session_expiry: u32,
    /// Topic aliases a client may use towards the broker (v5).
    pub topic_alias_maximum: u16,
    /// Whether QoS 0 messages are written to the log too (default: no; they are delivered
    /// to online subscribers only, which is what QoS 0 promises).
    pub persist_qos0: bool,
    /// Whether a QoS 1 message goes to the online subscribers whose sessions end with their
    /// connection as soon as it is written, before it is durable (default: yes; the
    /// publisher's PUBACK waits for durability either way). Off: every subscriber gets it
    /// only once it is durable, at the cost of the sync's latency. See the broker's
    /// `early_delivery` module for why persistent sessions always wait.
    pub deliver_before_durable: bool,
    /// Interval of `$SYS` updates.
    pub sys_interval: Duration,
    /// Largest number of simultaneous connections.
    pub max_connections: usize,
    /// How long a new connection may take to send a complete CONNECT (slowloris guard).
    pub connect_timeout: Duration,
    /// How long a write to a client may stall before the client is disconnected as too
    /// slow (its messages stay in the log for a persistent session).
    pub write_timeout: Duration,
    /// Whether clients without a username may connect.
    pub allow_anonymous: bool,
    /// Password file (`promptmq passwd`); `None`: usernames are not checked.
    pub password_file: Option<PathBuf>,
    /// ACL file; `None`: every client may publish and subscribe to everything.
    pub acl_file: Option<PathBuf>,
    /// How soon a connected persistent session's acknowledged position is saved. After a
    /// crash the client receives again (QoS 1) what it acknowledged within this interval.
    pub positions_save_interval: Duration,
}

impl BrokerConfig {
    /// The embedded defaults: 127.0.0.1:1883, data in `./data`, `sync = always`.
    pub fn new(listen: SocketAddr, data_dir: impl Into<PathBuf>) -> BrokerConfig {
        BrokerConfig {
            listen,
            listeners: Vec::new(),
            data_dir: data_dir.into(),
            sync: SyncMode::Always,
            storage: StorageSettings::default(),
            max_packet_size: 1 << 20,
            receive_maximum: 1024,
            max_queued_messages: 10_000,
            max_queued_bytes: 64 << 20,
            max_inflight: 1024,
            max_message_expiry: 0,
            max_keep_alive: 65_535,
            max_session_expiry: u32::MAX,
            topic_alias_maximum: 64,
            persist_qos0: false,
            deliver_before_durable: true,
            sys_interval: Duration::from_secs(10),
            max_connections: 100_000,
            connect_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
            positions_save_interval: Duration::from_millis(100),
            allow_anonymous: true,
            password_file: None,
            acl_file: None,
        }
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig::new(SocketAddr::from(([127, 0, 0, 1], 1883)), "./data")
    }
}
