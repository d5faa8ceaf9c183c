//! An application message as the broker holds it: shared (`Arc`) between every subscriber
//! queue, its payload a slice of the publisher's packet buffer, and stored in the log as a
//! v5 PUBLISH packet so that every property survives a restart unchanged.
//!
//! Record layout: `0x00`; a stamp (u64, big endian: nanoseconds since the Unix epoch, made
//! strictly increasing within a process, so a session catching up on several topics gets them
//! in the order they were published); publisher client id length (u16, big endian), the id;
//! then the v5 PUBLISH. (A record that starts with a PUBLISH's first byte, `0x3_`, is the first format,
//! which had no publisher; it is still read.)

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::{self, ByteStr, Packet, Properties, ProtocolVersion, Publish, QoS};

/// First byte of a record in the current format.
const RECORD_V2: u8 = 0x00;

/// A record stamp: nanoseconds since the Unix epoch, never the same or lower twice in this
/// process.
pub fn new_stamp() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let mut prev = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(prev + 1);
        match LAST.compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(p) => prev = p,
        }
    }
}

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
    /// response topic, correlation data, user properties; `None` when there are none (most
    /// messages: inline they would be 344 of this struct's bytes, kept for every retained
    /// and queued message). Expiry is kept in `expires_at`.
    pub properties: Option<Box<Properties>>,
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
        let properties = (properties != Properties::default()).then(|| Box::new(properties));
        Message { topic, payload: p.payload, qos: p.qos, retain: p.retain, properties, publisher, expires_at }
    }

    /// A copy of the properties to forward (empty when there are none).
    fn forwarded_properties(&self) -> Properties {
        self.properties.as_deref().cloned().unwrap_or_default()
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
        let mut properties = self.forwarded_properties();
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

    /// The bytes stored in the log: the publisher, then the message as a v5 PUBLISH.
    pub fn to_record(&self, now: Instant) -> Bytes {
        self.to_record_stamped(now, new_stamp())
    }

    /// [`Message::to_record`] with a given stamp (from [`new_stamp`]).
    pub fn to_record_stamped(&self, now: Instant, stamp: u64) -> Bytes {
        let mut p = match self.to_publish(QoS::AtMostOnce, None, self.retain, &[], now) {
            Some(p) => p,
            None => Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: self.retain,
                topic: self.topic.clone(),
                packet_id: None,
                properties: Properties { message_expiry_interval: Some(0), ..self.forwarded_properties() },
                payload: self.payload.clone(),
            },
        };
        // Keep the published QoS; a QoS > 0 PUBLISH needs a packet identifier, and 1 is a
        // placeholder that nothing reads back.
        if self.qos != QoS::AtMostOnce {
            p.qos = self.qos;
            p.packet_id = Some(1);
        }
        let publisher = &self.publisher.as_bytes()[..self.publisher.len().min(u16::MAX as usize)];
        let mut out = BytesMut::with_capacity(self.payload.len() + self.topic.len() + publisher.len() + 40);
        out.put_u8(RECORD_V2);
        out.put_u64(stamp);
        out.put_u16(publisher.len() as u16);
        out.put_slice(publisher);
        // Encoding a message we built ourselves cannot fail short of a >256 MiB payload,
        // which the maximum packet size already refused.
        let _ = codec::encode(&Packet::Publish(p), ProtocolVersion::V5, &mut out);
        out.freeze()
    }

    /// The stamp of a stored message (`None` for the first format, which has none).
    pub fn record_stamp(b: &[u8]) -> Option<u64> {
        match b.first() {
            Some(&RECORD_V2) => Some(u64::from_be_bytes(b.get(1..9)?.try_into().ok()?)),
            _ => None,
        }
    }

    /// Decodes a stored message; `age` is how long ago it was stored (to age its expiry).
    pub fn from_record(b: Bytes, age: Duration) -> Option<Message> {
        let (publisher, body): (Arc<str>, &[u8]) = match b.first() {
            Some(&RECORD_V2) => {
                let len = u16::from_be_bytes([*b.get(9)?, *b.get(10)?]) as usize;
                let id = std::str::from_utf8(b.get(11..11 + len)?).ok()?;
                (Arc::from(id), &b[11 + len..])
            }
            _ => (Arc::from(""), &b[..]),
        };
        let mut buf = BytesMut::from(body);
        let Ok(Some(Packet::Publish(p))) = codec::decode(&mut buf, Some(ProtocolVersion::V5), usize::MAX) else {
            return None;
        };
        let now = Instant::now();
        let expires_at = match p.properties.message_expiry_interval {
            Some(s) => Some(now + Duration::from_secs(s as u64).checked_sub(age)?),
            None => None,
        };
        let topic = p.topic.clone();
        let mut m = Message::from_publish(p, topic, publisher);
        m.expires_at = expires_at;
        Some(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(publisher: &str) -> Message {
        Message {
            topic: "a/b".into(),
            payload: Bytes::from_static(b"hello"),
            qos: QoS::ExactlyOnce,
            retain: true,
            properties: Some(Box::new(Properties { content_type: Some("text/plain".into()), ..Default::default() })),
            publisher: Arc::from(publisher),
            expires_at: None,
        }
    }

    #[test]
    fn records_keep_the_message_its_publisher_and_an_increasing_stamp() {
        let now = Instant::now();
        let (r1, r2) = (msg("alice").to_record(now), msg("").to_record(now));
        let m = Message::from_record(r1.clone(), Duration::ZERO).expect("decodes");
        assert_eq!((m.topic.as_str(), &m.payload[..], m.qos, m.retain), ("a/b", &b"hello"[..], QoS::ExactlyOnce, true));
        assert_eq!(&*m.publisher, "alice");
        assert_eq!(m.properties.as_ref().and_then(|p| p.content_type.as_deref()), Some("text/plain"));
        assert!(Message::record_stamp(&r1) < Message::record_stamp(&r2));
        assert_eq!(&*Message::from_record(r2, Duration::ZERO).expect("decodes").publisher, "");
    }

    #[test]
    fn first_format_records_still_load_and_damaged_ones_are_refused() {
        let r = msg("bob").to_record(Instant::now());
        let body = r.slice(11 + 3..);
        let m = Message::from_record(body.clone(), Duration::ZERO).expect("a bare PUBLISH loads");
        assert_eq!((&*m.publisher, Message::record_stamp(&body)), ("", None));
        for cut in [1, 5, 10, 12] {
            assert!(Message::from_record(r.slice(..cut), Duration::ZERO).is_none(), "cut at {cut}");
        }
    }
}
