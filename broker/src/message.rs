//! An application message as the broker holds it: shared (`Arc`) between every subscriber
//! queue, its payload a slice of the publisher's packet buffer, and stored in the log as a
//! v5 PUBLISH packet so that every property survives a restart unchanged.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::codec::{self, ByteStr, Packet, Properties, ProtocolVersion, Publish, QoS};

/// A published message.
#[derive(Debug, Clone)]
pub struct Message {
    /// Topic name.
    pub topic: ByteStr,
    /// Payload.
    pub payload: Bytes,
    /// QoS it was published with.
    pub qos: QoS,
    /// RETAIN flag as published.
    pub retain: bool,
    /// The properties forwarded to subscribers (spec 3.3.2.3): payload format, content type,
    /// response topic, correlation data, user properties. Expiry is kept in `expires_at`.
    pub properties: Properties,
    /// Client id of the publisher (for no-local).
    pub publisher: Arc<str>,
    /// When the message expires (v5 message expiry interval).
    pub expires_at: Option<Instant>,
}

impl Message {
    /// Builds a message from a received PUBLISH whose topic is resolved.
    pub fn from_publish(p: Publish, topic: ByteStr, publisher: Arc<str>) -> Message {
        let now = Instant::now();
        let expires_at = p.properties.message_expiry_interval.map(|s| now + Duration::from_secs(s as u64));
        let properties = Properties {
            payload_format_indicator: p.properties.payload_format_indicator,
            content_type: p.properties.content_type,
            response_topic: p.properties.response_topic,
            correlation_data: p.properties.correlation_data,
            user_properties: p.properties.user_properties,
            ..Properties::default()
        };
        Message { topic, payload: p.payload, qos: p.qos, retain: p.retain, properties, publisher, expires_at }
    }

    /// Whether the message has expired.
    pub fn expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }

    /// The PUBLISH to send to a subscriber, or `None` if the message expired. The message
    /// expiry interval is the time left [MQTT-3.3.2-6].
    pub fn to_publish(
        &self,
        qos: QoS,
        packet_id: Option<u16>,
        retain: bool,
        sub_ids: &[u32],
        now: Instant,
    ) -> Option<Publish> {
        let mut properties = self.properties.clone();
        if let Some(t) = self.expires_at {
            let left = t.checked_duration_since(now)?;
            properties.message_expiry_interval = Some(left.as_secs().max(1) as u32);
        }
        properties.subscription_identifiers = sub_ids.to_vec();
        Some(Publish {
            dup: false,
            qos,
            retain,
            topic: self.topic.clone(),
            packet_id,
            properties,
            payload: self.payload.clone(),
        })
    }

    /// The bytes stored in the log: the message as a v5 QoS 0 PUBLISH.
    pub fn to_record(&self, now: Instant) -> Bytes {
        let mut p = match self.to_publish(QoS::AtMostOnce, None, self.retain, &[], now) {
            Some(p) => p,
            None => Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: self.retain,
                topic: self.topic.clone(),
                packet_id: None,
                properties: Properties { message_expiry_interval: Some(0), ..self.properties.clone() },
                payload: self.payload.clone(),
            },
        };
        // Keep the published QoS; a QoS > 0 PUBLISH needs a packet identifier, and 1 is a
        // placeholder that nothing reads back.
        if self.qos != QoS::AtMostOnce {
            p.qos = self.qos;
            p.packet_id = Some(1);
        }
        let mut out = BytesMut::with_capacity(self.payload.len() + self.topic.len() + 32);
        // Encoding a message we built ourselves cannot fail short of a >256 MiB payload,
        // which the maximum packet size already refused.
        let _ = codec::encode(&Packet::Publish(p), ProtocolVersion::V5, &mut out);
        out.freeze()
    }

    /// Decodes a stored message; `age` is how long ago it was stored (to age its expiry).
    pub fn from_record(b: Bytes, age: Duration) -> Option<Message> {
        let mut buf = BytesMut::from(&b[..]);
        let Ok(Some(Packet::Publish(p))) = codec::decode(&mut buf, Some(ProtocolVersion::V5), usize::MAX) else {
            return None;
        };
        let now = Instant::now();
        let expires_at = match p.properties.message_expiry_interval {
            Some(s) => Some(now + Duration::from_secs(s as u64).checked_sub(age)?),
            None => None,
        };
        let topic = p.topic.clone();
        let mut m = Message::from_publish(p, topic, Arc::from(""));
        m.expires_at = expires_at;
        Some(m)
    }
}
