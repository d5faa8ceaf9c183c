//! MQTT 5 properties (spec 2.2.2): one struct with a field per property, decoded with the
//! packet it belongs to so that a property not allowed there, a duplicate, or a value out of
//! range is refused with the right error.

use bytes::{BufMut, Bytes, BytesMut};

use super::error::{DecodeError, EncodeError};
use super::primitives::{binary_len, put_binary, put_varint, varint_len, Reader};

/// Where a property list appears. Each property is allowed in some of these only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PropertyContext {
    /// CONNECT.
    Connect,
    /// The will properties inside CONNECT.
    Will,
    /// CONNACK.
    ConnAck,
    /// PUBLISH.
    Publish,
    /// PUBACK, PUBREC, PUBREL, PUBCOMP.
    PubResp,
    /// SUBSCRIBE.
    Subscribe,
    /// SUBACK.
    SubAck,
    /// UNSUBSCRIBE.
    Unsubscribe,
    /// UNSUBACK.
    UnsubAck,
    /// DISCONNECT.
    Disconnect,
    /// AUTH.
    Auth,
}

/// The properties of one packet. `None` / empty means absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    /// 0x01: payload is unspecified bytes (0) or UTF-8 (1).
    pub payload_format_indicator: Option<u8>,
    /// 0x02: message lifetime in seconds.
    pub message_expiry_interval: Option<u32>,
    /// 0x03: MIME type of the payload.
    pub content_type: Option<String>,
    /// 0x08: topic for a response.
    pub response_topic: Option<String>,
    /// 0x09: correlation data for request/response.
    pub correlation_data: Option<Bytes>,
    /// 0x0B: subscription identifiers (several in a PUBLISH to a client, one in SUBSCRIBE).
    pub subscription_identifiers: Vec<u32>,
    /// 0x11: session expiry in seconds.
    pub session_expiry_interval: Option<u32>,
    /// 0x12: client id assigned by the server.
    pub assigned_client_identifier: Option<String>,
    /// 0x13: keep alive the server imposes.
    pub server_keep_alive: Option<u16>,
    /// 0x15: extended authentication method.
    pub authentication_method: Option<String>,
    /// 0x16: extended authentication data.
    pub authentication_data: Option<Bytes>,
    /// 0x17: whether the client wants reason strings and user properties on failures.
    pub request_problem_information: Option<u8>,
    /// 0x18: delay before publishing the will, seconds.
    pub will_delay_interval: Option<u32>,
    /// 0x19: whether the client wants response information in CONNACK.
    pub request_response_information: Option<u8>,
    /// 0x1A: response information.
    pub response_information: Option<String>,
    /// 0x1C: another server to use.
    pub server_reference: Option<String>,
    /// 0x1F: human-readable reason.
    pub reason_string: Option<String>,
    /// 0x21: in-flight QoS 1/2 messages the sender accepts.
    pub receive_maximum: Option<u16>,
    /// 0x22: highest topic alias the sender accepts.
    pub topic_alias_maximum: Option<u16>,
    /// 0x23: topic alias.
    pub topic_alias: Option<u16>,
    /// 0x24: highest QoS the server supports.
    pub maximum_qos: Option<u8>,
    /// 0x25: whether the server supports retained messages.
    pub retain_available: Option<u8>,
    /// 0x26: user properties, in order.
    pub user_properties: Vec<(String, String)>,
    /// 0x27: largest packet the sender accepts.
    pub maximum_packet_size: Option<u32>,
    /// 0x28: whether the server supports wildcard subscriptions.
    pub wildcard_subscription_available: Option<u8>,
    /// 0x29: whether the server supports subscription identifiers.
    pub subscription_identifier_available: Option<u8>,
    /// 0x2A: whether the server supports shared subscriptions.
    pub shared_subscription_available: Option<u8>,
}

use PropertyContext as C;

/// Which contexts allow property `id` (spec table 2-4).
fn allowed(id: u8, ctx: PropertyContext) -> bool {
    match id {
        0x01 | 0x02 | 0x03 | 0x08 | 0x09 => matches!(ctx, C::Publish | C::Will),
        0x0B => matches!(ctx, C::Publish | C::Subscribe),
        0x11 => matches!(ctx, C::Connect | C::ConnAck | C::Disconnect),
        0x12 | 0x13 | 0x1A | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => ctx == C::ConnAck,
        0x15 | 0x16 => matches!(ctx, C::Connect | C::ConnAck | C::Auth),
        0x17 | 0x19 => ctx == C::Connect,
        0x18 => ctx == C::Will,
        0x1C => matches!(ctx, C::ConnAck | C::Disconnect),
        0x1F => !matches!(ctx, C::Connect | C::Will | C::Publish | C::Subscribe | C::Unsubscribe),
        0x21 | 0x22 | 0x27 => matches!(ctx, C::Connect | C::ConnAck),
        0x23 => ctx == C::Publish,
        0x26 => true,
        _ => false,
    }
}

fn set<T>(slot: &mut Option<T>, v: T) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::Protocol("a property appears twice"));
    }
    *slot = Some(v);
    Ok(())
}

fn flag(r: &mut Reader) -> Result<u8, DecodeError> {
    let v = r.u8()?;
    if v > 1 {
        return Err(DecodeError::Protocol("a 0/1 property has another value"));
    }
    Ok(v)
}

impl Properties {
    /// Whether no property is set.
    pub fn is_empty(&self) -> bool {
        *self == Properties::default()
    }

    /// Reads a property list (its length, then the properties) for `ctx`.
    pub(crate) fn decode(r: &mut Reader, ctx: PropertyContext) -> Result<Properties, DecodeError> {
        let len = r.varint()? as usize;
        if len > r.remaining() {
            return Err(DecodeError::Malformed("property length exceeds the packet"));
        }
        let mut p = Reader::new(r.take(len)?);
        let mut out = Properties::default();
        while p.remaining() > 0 {
            let id = p.varint()?;
            let id = u8::try_from(id).map_err(|_| DecodeError::Malformed("unknown property identifier"))?;
            if !allowed(id, ctx) {
                return Err(if (0x01..=0x2A).contains(&id) && allowed_anywhere(id) {
                    DecodeError::Protocol("property not allowed in this packet")
                } else {
                    DecodeError::Malformed("unknown property identifier")
                });
            }
            match id {
                0x01 => set(&mut out.payload_format_indicator, flag(&mut p)?)?,
                0x02 => set(&mut out.message_expiry_interval, p.u32()?)?,
                0x03 => set(&mut out.content_type, p.string()?)?,
                0x08 => set(&mut out.response_topic, p.string()?)?,
                0x09 => set(&mut out.correlation_data, p.binary()?)?,
                0x0B => {
                    let v = p.varint()?;
                    if v == 0 {
                        return Err(DecodeError::Protocol("subscription identifier 0"));
                    }
                    if ctx == C::Subscribe && !out.subscription_identifiers.is_empty() {
                        return Err(DecodeError::Protocol("a property appears twice"));
                    }
                    out.subscription_identifiers.push(v);
                }
                0x11 => set(&mut out.session_expiry_interval, p.u32()?)?,
                0x12 => set(&mut out.assigned_client_identifier, p.string()?)?,
                0x13 => set(&mut out.server_keep_alive, p.u16()?)?,
                0x15 => set(&mut out.authentication_method, p.string()?)?,
                0x16 => set(&mut out.authentication_data, p.binary()?)?,
                0x17 => set(&mut out.request_problem_information, flag(&mut p)?)?,
                0x18 => set(&mut out.will_delay_interval, p.u32()?)?,
                0x19 => set(&mut out.request_response_information, flag(&mut p)?)?,
                0x1A => set(&mut out.response_information, p.string()?)?,
                0x1C => set(&mut out.server_reference, p.string()?)?,
                0x1F => set(&mut out.reason_string, p.string()?)?,
                0x21 => {
                    let v = p.u16()?;
                    if v == 0 {
                        return Err(DecodeError::Protocol("receive maximum 0"));
                    }
                    set(&mut out.receive_maximum, v)?
                }
                0x22 => set(&mut out.topic_alias_maximum, p.u16()?)?,
                0x23 => {
                    let v = p.u16()?;
                    if v == 0 {
                        return Err(DecodeError::Protocol("topic alias 0"));
                    }
                    set(&mut out.topic_alias, v)?
                }
                0x24 => set(&mut out.maximum_qos, flag(&mut p)?)?,
                0x25 => set(&mut out.retain_available, flag(&mut p)?)?,
                0x26 => {
                    let k = p.string()?;
                    let v = p.string()?;
                    out.user_properties.push((k, v));
                }
                0x27 => {
                    let v = p.u32()?;
                    if v == 0 {
                        return Err(DecodeError::Protocol("maximum packet size 0"));
                    }
                    set(&mut out.maximum_packet_size, v)?
                }
                0x28 => set(&mut out.wildcard_subscription_available, flag(&mut p)?)?,
                0x29 => set(&mut out.subscription_identifier_available, flag(&mut p)?)?,
                0x2A => set(&mut out.shared_subscription_available, flag(&mut p)?)?,
                _ => return Err(DecodeError::Malformed("unknown property identifier")),
            }
        }
        Ok(out)
    }

    /// Size of the property list body (without its length prefix).
    pub(crate) fn body_len(&self) -> usize {
        let s = |o: &Option<String>| o.as_ref().map_or(0, |v| 1 + binary_len(v.as_bytes()));
        let b = |o: &Option<Bytes>| o.as_ref().map_or(0, |v| 1 + binary_len(v));
        let n1 = |o: Option<u8>| o.map_or(0, |_| 2);
        let n2 = |o: Option<u16>| o.map_or(0, |_| 3);
        let n4 = |o: Option<u32>| o.map_or(0, |_| 5);
        n1(self.payload_format_indicator)
            + n4(self.message_expiry_interval)
            + s(&self.content_type)
            + s(&self.response_topic)
            + b(&self.correlation_data)
            + self.subscription_identifiers.iter().map(|v| 1 + varint_len(*v)).sum::<usize>()
            + n4(self.session_expiry_interval)
            + s(&self.assigned_client_identifier)
            + n2(self.server_keep_alive)
            + s(&self.authentication_method)
            + b(&self.authentication_data)
            + n1(self.request_problem_information)
            + n4(self.will_delay_interval)
            + n1(self.request_response_information)
            + s(&self.response_information)
            + s(&self.server_reference)
            + s(&self.reason_string)
            + n2(self.receive_maximum)
            + n2(self.topic_alias_maximum)
            + n2(self.topic_alias)
            + n1(self.maximum_qos)
            + n1(self.retain_available)
            + self
                .user_properties
                .iter()
                .map(|(k, v)| 1 + binary_len(k.as_bytes()) + binary_len(v.as_bytes()))
                .sum::<usize>()
            + n4(self.maximum_packet_size)
            + n1(self.wildcard_subscription_available)
            + n1(self.subscription_identifier_available)
            + n1(self.shared_subscription_available)
    }

    /// Size including the length prefix.
    pub(crate) fn encoded_len(&self) -> usize {
        let n = self.body_len();
        varint_len(n as u32) + n
    }

    /// Writes the length prefix and the properties.
    pub(crate) fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        put_varint(out, self.body_len() as u32)?;
        fn s(out: &mut BytesMut, id: u8, v: &Option<String>) -> Result<(), EncodeError> {
            if let Some(v) = v {
                out.put_u8(id);
                put_binary(out, v.as_bytes())?;
            }
            Ok(())
        }
        fn b(out: &mut BytesMut, id: u8, v: &Option<Bytes>) -> Result<(), EncodeError> {
            if let Some(v) = v {
                out.put_u8(id);
                put_binary(out, v)?;
            }
            Ok(())
        }
        let n1 = |out: &mut BytesMut, id: u8, v: Option<u8>| {
            if let Some(v) = v {
                out.put_u8(id);
                out.put_u8(v);
            }
        };
        let n2 = |out: &mut BytesMut, id: u8, v: Option<u16>| {
            if let Some(v) = v {
                out.put_u8(id);
                out.put_u16(v);
            }
        };
        let n4 = |out: &mut BytesMut, id: u8, v: Option<u32>| {
            if let Some(v) = v {
                out.put_u8(id);
                out.put_u32(v);
            }
        };
        n1(out, 0x01, self.payload_format_indicator);
        n4(out, 0x02, self.message_expiry_interval);
        s(out, 0x03, &self.content_type)?;
        s(out, 0x08, &self.response_topic)?;
        b(out, 0x09, &self.correlation_data)?;
        for v in &self.subscription_identifiers {
            out.put_u8(0x0B);
            put_varint(out, *v)?;
        }
        n4(out, 0x11, self.session_expiry_interval);
        s(out, 0x12, &self.assigned_client_identifier)?;
        n2(out, 0x13, self.server_keep_alive);
        s(out, 0x15, &self.authentication_method)?;
        b(out, 0x16, &self.authentication_data)?;
        n1(out, 0x17, self.request_problem_information);
        n4(out, 0x18, self.will_delay_interval);
        n1(out, 0x19, self.request_response_information);
        s(out, 0x1A, &self.response_information)?;
        s(out, 0x1C, &self.server_reference)?;
        s(out, 0x1F, &self.reason_string)?;
        n2(out, 0x21, self.receive_maximum);
        n2(out, 0x22, self.topic_alias_maximum);
        n2(out, 0x23, self.topic_alias);
        n1(out, 0x24, self.maximum_qos);
        n1(out, 0x25, self.retain_available);
        for (k, v) in &self.user_properties {
            out.put_u8(0x26);
            put_binary(out, k.as_bytes())?;
            put_binary(out, v.as_bytes())?;
        }
        n4(out, 0x27, self.maximum_packet_size);
        n1(out, 0x28, self.wildcard_subscription_available);
        n1(out, 0x29, self.subscription_identifier_available);
        n1(out, 0x2A, self.shared_subscription_available);
        Ok(())
    }
}

/// Whether `id` is a defined property at all.
fn allowed_anywhere(id: u8) -> bool {
    [
        C::Connect,
        C::Will,
        C::ConnAck,
        C::Publish,
        C::PubResp,
        C::Subscribe,
        C::SubAck,
        C::Unsubscribe,
        C::UnsubAck,
        C::Disconnect,
        C::Auth,
    ]
    .into_iter()
    .any(|c| allowed(id, c))
}
