//! The MQTT 3.1, 3.1.1 and 5.0 codec: every control packet, every MQTT 5 property and
//! reason code, incremental zero-copy decoding from a `BytesMut`, and the spec's
//! malformed-packet and protocol-error rules. Written by hand because the `mqtt-protocol`
//! crate has no MQTT 5 (no properties, no AUTH).
//!
//! ```
//! use bytes::BytesMut;
//! use promptmq_broker::codec::*;
//! let publish = Packet::Publish(Publish {
//!     dup: false, qos: QoS::AtLeastOnce, retain: false,
//!     topic: "sensors/temp".into(), packet_id: Some(1),
//!     properties: Properties::default(), payload: "21.5".into(),
//! });
//! let mut wire = BytesMut::new();
//! encode(&publish, ProtocolVersion::V5, &mut wire)?;
//! let back = decode(&mut wire, Some(ProtocolVersion::V5), 1 << 20)?.expect("a whole packet");
//! assert_eq!(back, publish);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod decode;
mod encode;
mod error;
mod packet;
mod primitives;
mod properties;
mod reason;
pub mod topic;

pub use decode::{decode, decode_frame, frame_header, FrameHeader};
pub use encode::{encode, publish_len};
pub use error::{DecodeError, EncodeError};
pub use packet::*;
pub use primitives::{ByteStr, VARINT_MAX};
pub use properties::{Properties, PropertyContext};
pub use reason::{QoS, ReasonCode, ReasonContext};

#[cfg(test)]
mod tests;
