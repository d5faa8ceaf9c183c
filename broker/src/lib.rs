//! `promptmq-broker`: the MQTT frontend of PromptMQ — the MQTT 3.1 / 3.1.1 / 5.0 codec
//! ([`codec`]), sessions, routing and the TCP listener — built on `promptmq-wal`, whose
//! append/read API is the only way it touches storage.
//!
//! A PUBLISH follows one line: socket → [`codec::decode`] → connection handler →
//! log append (QoS ≥ 1, acknowledged once durable) → router → subscriber queues → socket.

#![warn(missing_docs)]

mod auth;
pub mod codec;
mod config;
mod connection;
mod early_delivery;
#[doc(hidden)]
pub mod fuzzing;
mod limits;
mod listener;
mod message;
mod monitor;
mod positions;
mod qos2_store;
mod replay;
mod retained;
pub mod router;
mod server;
mod session;
mod session_store;
mod store;
mod sys_topics;
mod topic_alias;
mod transport;

pub use auth::{Acl, AuthConfig, AuthError, ClientAcl, PasswordFile};
pub use config::{BrokerConfig, StorageSettings};
pub use listener::{ListenerConfig, ListenerError, ListenerKind, TlsFiles};
pub use message::Message;
pub use monitor::Monitor;
pub use server::{Broker, BrokerError, Stats};
pub use transport::{Io, Transport};
