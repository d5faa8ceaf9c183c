//! Why a packet was refused, and what the broker must answer.

use super::reason::ReasonCode;

/// A refused packet. Each variant maps to the MQTT 5 reason code the broker sends in its
/// CONNACK or DISCONNECT ([`DecodeError::reason_code`]); for MQTT 3.1.1 the broker simply
/// closes the connection (or, for a bad protocol level or client id, sends the CONNACK
/// return code of [`DecodeError::v3_connack_code`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The bytes break the packet grammar (a length that does not add up, a bad variable
    /// byte integer, invalid UTF-8, a reserved bit set, an invalid value).
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// The packet is well formed but breaks a protocol rule.
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// The packet is larger than the configured maximum; detected from the fixed header,
    /// before the body is buffered.
    #[error("packet of {size} bytes exceeds the maximum packet size of {max} bytes")]
    TooLarge {
        /// Declared size of the whole packet.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// CONNECT names a protocol or level this broker does not speak.
    #[error("unsupported protocol {name:?} level {level}")]
    UnsupportedProtocol {
        /// Protocol name from CONNECT.
        name: String,
        /// Protocol level from CONNECT.
        level: u8,
    },
    /// The first packet was not CONNECT, or CONNECT came again.
    #[error("expected CONNECT as the first packet")]
    NotConnect,
    /// A topic name is invalid.
    #[error("invalid topic name: {0}")]
    Topic(#[from] super::topic::TopicError),
    /// A topic filter is invalid.
    #[error("invalid topic filter: {0}")]
    TopicFilter(super::topic::TopicError),
}

impl DecodeError {
    /// The MQTT 5 reason code for this error.
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            DecodeError::Malformed(_) => ReasonCode::MalformedPacket,
            DecodeError::Protocol(_) | DecodeError::NotConnect => ReasonCode::ProtocolError,
            DecodeError::TooLarge { .. } => ReasonCode::PacketTooLarge,
            DecodeError::UnsupportedProtocol { .. } => ReasonCode::UnsupportedProtocolVersion,
            DecodeError::Topic(_) => ReasonCode::TopicNameInvalid,
            DecodeError::TopicFilter(_) => ReasonCode::TopicFilterInvalid,
        }
    }

    /// The MQTT 3.1.1 CONNACK return code to send before closing, if there is one.
    pub fn v3_connack_code(&self) -> Option<u8> {
        match self {
            DecodeError::UnsupportedProtocol { .. } => Some(0x01),
            _ => None,
        }
    }
}

/// Why a packet could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The packet does not fit in the 268 435 455 bytes a remaining length can express, or
    /// a string or binary field is over 65 535 bytes.
    #[error("{0} is too large to encode")]
    TooLarge(&'static str),
    /// The packet cannot be expressed in the target protocol version (e.g. AUTH in 3.1.1).
    #[error("{0} does not exist in MQTT 3.1.1")]
    NotInVersion(&'static str),
    /// A field holds a value the protocol does not allow (e.g. packet identifier 0).
    #[error("invalid value: {0}")]
    Invalid(&'static str),
}
