//! The 15 MQTT control packets as plain data. One model serves both protocol versions:
//! fields that 3.1.1 lacks (properties, most reason codes) are simply empty there.

use bytes::Bytes;

use super::primitives::ByteStr;
use super::properties::Properties;
use super::reason::{QoS, ReasonCode};

/// The protocol version a connection speaks, from its CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProtocolVersion {
    /// MQTT 3.1 (protocol name `MQIsdp`, level 3); accepted like Mosquitto does.
    V3_1,
    /// MQTT 3.1.1 (level 4).
    V3_1_1,
    /// MQTT 5.0 (level 5).
    V5,
}

impl ProtocolVersion {
    /// The protocol level byte.
    pub fn level(self) -> u8 {
        match self {
            ProtocolVersion::V3_1 => 3,
            ProtocolVersion::V3_1_1 => 4,
            ProtocolVersion::V5 => 5,
        }
    }
    /// Whether this is MQTT 5.
    pub fn is_v5(self) -> bool {
        self == ProtocolVersion::V5
    }
}

/// Any control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// CONNECT.
    Connect(Box<Connect>),
    /// CONNACK.
    ConnAck(ConnAck),
    /// PUBLISH.
    Publish(Publish),
    /// PUBACK.
    PubAck(PubResp),
    /// PUBREC.
    PubRec(PubResp),
    /// PUBREL.
    PubRel(PubResp),
    /// PUBCOMP.
    PubComp(PubResp),
    /// SUBSCRIBE.
    Subscribe(Subscribe),
    /// SUBACK.
    SubAck(SubAck),
    /// UNSUBSCRIBE.
    Unsubscribe(Unsubscribe),
    /// UNSUBACK.
    UnsubAck(UnsubAck),
    /// PINGREQ.
    PingReq,
    /// PINGRESP.
    PingResp,
    /// DISCONNECT.
    Disconnect(Disconnect),
    /// AUTH (MQTT 5 only).
    Auth(Auth),
}

impl Packet {
    /// The packet type's name, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Packet::Connect(_) => "CONNECT",
            Packet::ConnAck(_) => "CONNACK",
            Packet::Publish(_) => "PUBLISH",
            Packet::PubAck(_) => "PUBACK",
            Packet::PubRec(_) => "PUBREC",
            Packet::PubRel(_) => "PUBREL",
            Packet::PubComp(_) => "PUBCOMP",
            Packet::Subscribe(_) => "SUBSCRIBE",
            Packet::SubAck(_) => "SUBACK",
            Packet::Unsubscribe(_) => "UNSUBSCRIBE",
            Packet::UnsubAck(_) => "UNSUBACK",
            Packet::PingReq => "PINGREQ",
            Packet::PingResp => "PINGRESP",
            Packet::Disconnect(_) => "DISCONNECT",
            Packet::Auth(_) => "AUTH",
        }
    }
}

/// CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// Protocol version requested.
    pub protocol: ProtocolVersion,
    /// Clean start (v5) / clean session (3.1.1).
    pub clean_start: bool,
    /// Keep alive in seconds (0: none).
    pub keep_alive: u16,
    /// Properties (v5).
    pub properties: Properties,
    /// Client identifier (may be empty).
    pub client_id: String,
    /// Will message.
    pub will: Option<Will>,
    /// User name.
    pub username: Option<String>,
    /// Password.
    pub password: Option<Bytes>,
}

/// The will message of a CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    /// Will topic.
    pub topic: ByteStr,
    /// Will payload.
    pub payload: Bytes,
    /// Will QoS.
    pub qos: QoS,
    /// Will retain.
    pub retain: bool,
    /// Will properties (v5).
    pub properties: Properties,
}

/// CONNACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    /// Session present flag.
    pub session_present: bool,
    /// Reason code (v5) or return code (3.1.1: 0..=5, kept as the raw byte in `v3_code`).
    pub code: ReasonCode,
    /// For 3.1.1: the return code byte sent. Derived from `code` when encoding if `None`.
    pub v3_code: Option<u8>,
    /// Properties (v5).
    pub properties: Properties,
}

/// PUBLISH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// DUP flag.
    pub dup: bool,
    /// QoS.
    pub qos: QoS,
    /// RETAIN flag.
    pub retain: bool,
    /// Topic name (may be empty in v5 when a topic alias is used).
    pub topic: ByteStr,
    /// Packet identifier (present iff QoS > 0).
    pub packet_id: Option<u16>,
    /// Properties (v5).
    pub properties: Properties,
    /// Payload: a slice of the received buffer.
    pub payload: Bytes,
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubResp {
    /// Packet identifier.
    pub packet_id: u16,
    /// Reason code (v5; always Success in 3.1.1).
    pub code: ReasonCode,
    /// Properties (v5).
    pub properties: Properties,
}

impl PubResp {
    /// A successful response without properties.
    pub fn ok(packet_id: u16) -> PubResp {
        PubResp { packet_id, code: ReasonCode::Success, properties: Properties::default() }
    }
}

/// Retain handling option of a subscription (v5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RetainHandling {
    /// Send retained messages at subscribe time.
    #[default]
    OnSubscribe = 0,
    /// Send them only if the subscription did not exist.
    OnNewSubscribe = 1,
    /// Never send them.
    Never = 2,
}

/// One topic filter of a SUBSCRIBE with its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// Topic filter (may be `$share/...`).
    pub filter: String,
    /// Maximum QoS.
    pub qos: QoS,
    /// No local (v5).
    pub no_local: bool,
    /// Retain as published (v5).
    pub retain_as_published: bool,
    /// Retain handling (v5).
    pub retain_handling: RetainHandling,
}

/// SUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// Packet identifier.
    pub packet_id: u16,
    /// Properties (v5).
    pub properties: Properties,
    /// At least one subscription.
    pub subscriptions: Vec<Subscription>,
}

/// SUBACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    /// Packet identifier.
    pub packet_id: u16,
    /// Properties (v5).
    pub properties: Properties,
    /// One code per subscription (3.1.1: 0, 1, 2 or 0x80).
    pub codes: Vec<ReasonCode>,
}

/// UNSUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Packet identifier.
    pub packet_id: u16,
    /// Properties (v5).
    pub properties: Properties,
    /// At least one filter.
    pub filters: Vec<String>,
}

/// UNSUBACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    /// Packet identifier.
    pub packet_id: u16,
    /// Properties (v5).
    pub properties: Properties,
    /// One code per filter (v5 only; empty in 3.1.1).
    pub codes: Vec<ReasonCode>,
}

/// DISCONNECT.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Disconnect {
    /// Reason code (v5).
    pub code: ReasonCode,
    /// Properties (v5).
    pub properties: Properties,
}

/// AUTH (v5).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Auth {
    /// Reason code.
    pub code: ReasonCode,
    /// Properties.
    pub properties: Properties,
}

// The enum comes out of a macro, so `#[derive(Default)]` cannot mark its variant.
#[allow(clippy::derivable_impls)]
impl Default for ReasonCode {
    fn default() -> Self {
        ReasonCode::Success
    }
}
