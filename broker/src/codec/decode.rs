//! Decoding: fixed header first (so an oversized packet is refused before its body is
//! buffered), then the whole packet at once from a frozen slice of the input buffer, so
//! payloads and binary fields are `Bytes` slices, not copies. There is no partial parse
//! state: a packet either decodes whole or waits for more bytes.

use bytes::{Bytes, BytesMut};

use super::error::DecodeError;
use super::packet::*;
use super::primitives::{read_varint, Reader};
use super::properties::{Properties, PropertyContext};
use super::reason::{QoS, ReasonCode, ReasonContext};
use super::topic;

/// The fixed header of a packet: its first byte and the total size of the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Packet type (high nibble) and flags (low nibble).
    pub first: u8,
    /// Bytes of the fixed header.
    pub header_len: usize,
    /// Bytes of the whole packet, fixed header included.
    pub total_len: usize,
}

/// Reads the fixed header at the start of `buf`. `Ok(None)` while the header is incomplete;
/// an error as soon as the declared size exceeds `max_packet_size`, so a connection never
/// buffers an oversized body.
pub fn frame_header(buf: &[u8], max_packet_size: usize) -> Result<Option<FrameHeader>, DecodeError> {
    let Some(&first) = buf.first() else { return Ok(None) };
    let Some((remaining, n)) = read_varint(&buf[1..])? else { return Ok(None) };
    let total_len = 1 + n + remaining as usize;
    if total_len > max_packet_size {
        return Err(DecodeError::TooLarge { size: total_len, max: max_packet_size });
    }
    Ok(Some(FrameHeader { first, header_len: 1 + n, total_len }))
}

/// Decodes one packet from the front of `buf`, removing its bytes. `Ok(None)` if the packet
/// is not complete yet (nothing is consumed). `version` is the connection's protocol
/// version, `None` before CONNECT (then only CONNECT is accepted).
///
/// ```
/// use bytes::BytesMut;
/// use promptmq_broker::codec::{decode, Packet, ProtocolVersion};
/// let mut buf = BytesMut::from(&[0xc0u8, 0x00][..]); // PINGREQ
/// let p = decode(&mut buf, Some(ProtocolVersion::V3_1_1), 1024).unwrap();
/// assert_eq!(p, Some(Packet::PingReq));
/// assert!(buf.is_empty());
/// ```
pub fn decode(
    buf: &mut BytesMut,
    version: Option<ProtocolVersion>,
    max_packet_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    let Some(h) = frame_header(buf, max_packet_size)? else { return Ok(None) };
    if buf.len() < h.total_len {
        buf.reserve(h.total_len - buf.len());
        return Ok(None);
    }
    let frame = buf.split_to(h.total_len).freeze();
    decode_frame(h.first, frame.slice(h.header_len..), version).map(Some)
}

/// Decodes a packet body given its first byte.
pub fn decode_frame(first: u8, body: Bytes, version: Option<ProtocolVersion>) -> Result<Packet, DecodeError> {
    let kind = first >> 4;
    let flags = first & 0x0f;
    let mut r = Reader::new(body);
    let Some(v) = version else {
        if kind != 1 {
            return Err(DecodeError::NotConnect);
        }
        check_flags(flags, 0)?;
        return decode_connect(&mut r).map(|c| Packet::Connect(Box::new(c)));
    };
    let v5 = v.is_v5();
    let p = match kind {
        1 => return Err(DecodeError::Protocol("second CONNECT on a connection")),
        2 => {
            check_flags(flags, 0)?;
            Packet::ConnAck(decode_connack(&mut r, v5)?)
        }
        3 => Packet::Publish(decode_publish(&mut r, flags, v5)?),
        4 => {
            check_flags(flags, 0)?;
            Packet::PubAck(decode_pubresp(&mut r, v5, ReasonContext::PubAckRec)?)
        }
        5 => {
            check_flags(flags, 0)?;
            Packet::PubRec(decode_pubresp(&mut r, v5, ReasonContext::PubAckRec)?)
        }
        6 => {
            check_flags(flags, 0b0010)?;
            Packet::PubRel(decode_pubresp(&mut r, v5, ReasonContext::PubRelComp)?)
        }
        7 => {
            check_flags(flags, 0)?;
            Packet::PubComp(decode_pubresp(&mut r, v5, ReasonContext::PubRelComp)?)
        }
        8 => {
            check_flags(flags, 0b0010)?;
            Packet::Subscribe(decode_subscribe(&mut r, v5)?)
        }
        9 => {
            check_flags(flags, 0)?;
            Packet::SubAck(decode_suback(&mut r, v5)?)
        }
        10 => {
            check_flags(flags, 0b0010)?;
            Packet::Unsubscribe(decode_unsubscribe(&mut r, v5)?)
        }
        11 => {
            check_flags(flags, 0)?;
            Packet::UnsubAck(decode_unsuback(&mut r, v5)?)
        }
        12 | 13 => {
            check_flags(flags, 0)?;
            r.finish()?;
            if kind == 12 {
                Packet::PingReq
            } else {
                Packet::PingResp
            }
        }
        14 => {
            check_flags(flags, 0)?;
            Packet::Disconnect(decode_disconnect(&mut r, v5)?)
        }
        15 if v5 => {
            check_flags(flags, 0)?;
            Packet::Auth(decode_auth(&mut r)?)
        }
        _ => return Err(DecodeError::Malformed("reserved packet type")),
    };
    Ok(p)
}

/// Fixed-header flags other than PUBLISH's are fixed values [MQTT-2.1.3-1].
fn check_flags(flags: u8, want: u8) -> Result<(), DecodeError> {
    if flags != want {
        return Err(DecodeError::Malformed("reserved fixed header flags are wrong"));
    }
    Ok(())
}

fn packet_id(r: &mut Reader) -> Result<u16, DecodeError> {
    let id = r.u16()?;
    if id == 0 {
        return Err(DecodeError::Protocol("packet identifier 0"));
    }
    Ok(id)
}

fn props(r: &mut Reader, v5: bool, ctx: PropertyContext) -> Result<Properties, DecodeError> {
    if v5 {
        Properties::decode(r, ctx)
    } else {
        Ok(Properties::default())
    }
}

fn qos(v: u8) -> Result<QoS, DecodeError> {
    QoS::from_u8(v).ok_or(DecodeError::Malformed("QoS 3"))
}

fn decode_connect(r: &mut Reader) -> Result<Connect, DecodeError> {
    let name = r.string()?;
    let level = r.u8()?;
    let protocol = match (name.as_str(), level) {
        ("MQTT", 4) => ProtocolVersion::V3_1_1,
        ("MQTT", 5) => ProtocolVersion::V5,
        ("MQIsdp", 3) => ProtocolVersion::V3_1,
        _ => return Err(DecodeError::UnsupportedProtocol { name, level }),
    };
    let v5 = protocol.is_v5();
    let flags = r.u8()?;
    if flags & 0x01 != 0 {
        return Err(DecodeError::Malformed("CONNECT reserved flag is set"));
    }
    let will_flag = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0x03;
    let will_retain = flags & 0x20 != 0;
    let password_flag = flags & 0x40 != 0;
    let username_flag = flags & 0x80 != 0;
    if !will_flag && (will_qos != 0 || will_retain) {
        return Err(DecodeError::Malformed("will QoS or retain set without a will"));
    }
    let will_qos = qos(will_qos)?;
    if !v5 && password_flag && !username_flag {
        return Err(DecodeError::Protocol("password without a user name"));
    }
    let keep_alive = r.u16()?;
    let properties = props(r, v5, PropertyContext::Connect)?;
    let client_id = r.string()?;
    let will = if will_flag {
        let properties = props(r, v5, PropertyContext::Will)?;
        let topic = r.byte_str()?;
        topic::validate_name(&topic)?;
        let payload = r.binary()?;
        Some(Will { topic, payload, qos: will_qos, retain: will_retain, properties })
    } else {
        None
    };
    let username = if username_flag { Some(r.string()?) } else { None };
    let password = if password_flag { Some(r.binary()?) } else { None };
    r.finish()?;
    Ok(Connect {
        protocol,
        clean_start: flags & 0x02 != 0,
        keep_alive,
        properties,
        client_id,
        will,
        username,
        password,
    })
}

/// 3.1.1 CONNACK return codes and the reason codes they correspond to.
pub(crate) fn v3_return_code(code: u8) -> Option<ReasonCode> {
    Some(match code {
        0 => ReasonCode::Success,
        1 => ReasonCode::UnsupportedProtocolVersion,
        2 => ReasonCode::ClientIdentifierNotValid,
        3 => ReasonCode::ServerUnavailable,
        4 => ReasonCode::BadUserNameOrPassword,
        5 => ReasonCode::NotAuthorized,
        _ => return None,
    })
}

fn decode_connack(r: &mut Reader, v5: bool) -> Result<ConnAck, DecodeError> {
    let flags = r.u8()?;
    if flags & 0xfe != 0 {
        return Err(DecodeError::Malformed("CONNACK reserved flags are set"));
    }
    let raw = r.u8()?;
    let (code, v3_code) = if v5 {
        let c = ReasonCode::from_u8(raw)
            .filter(|c| c.allowed_in(ReasonContext::ConnAck))
            .ok_or(DecodeError::Malformed("invalid CONNACK reason code"))?;
        (c, None)
    } else {
        (v3_return_code(raw).ok_or(DecodeError::Malformed("invalid CONNACK return code"))?, Some(raw))
    };
    let session_present = flags & 1 != 0;
    if session_present && code != ReasonCode::Success {
        return Err(DecodeError::Protocol("session present with a failure code"));
    }
    let properties = props(r, v5, PropertyContext::ConnAck)?;
    r.finish()?;
    Ok(ConnAck { session_present, code, v3_code, properties })
}

fn decode_publish(r: &mut Reader, flags: u8, v5: bool) -> Result<Publish, DecodeError> {
    let dup = flags & 0x08 != 0;
    let qos = qos((flags >> 1) & 0x03)?;
    let retain = flags & 0x01 != 0;
    if qos == QoS::AtMostOnce && dup {
        return Err(DecodeError::Malformed("DUP set on a QoS 0 PUBLISH"));
    }
    let topic = r.byte_str()?;
    let packet_id = if qos != QoS::AtMostOnce { Some(packet_id(r)?) } else { None };
    let properties = props(r, v5, PropertyContext::Publish)?;
    if topic.is_empty() {
        // v5 allows an empty topic when a topic alias names it [MQTT-3.3.2-1, 3.3.4].
        if !(v5 && properties.topic_alias.is_some()) {
            return Err(DecodeError::Topic(topic::TopicError::Empty));
        }
    } else {
        topic::validate_name(&topic)?;
    }
    let payload = r.rest();
    Ok(Publish { dup, qos, retain, topic, packet_id, properties, payload })
}

fn decode_pubresp(r: &mut Reader, v5: bool, ctx: ReasonContext) -> Result<PubResp, DecodeError> {
    let packet_id = packet_id(r)?;
    let mut resp = PubResp::ok(packet_id);
    if v5 && r.remaining() > 0 {
        resp.code = ReasonCode::from_u8(r.u8()?)
            .filter(|c| c.allowed_in(ctx))
            .ok_or(DecodeError::Malformed("invalid reason code"))?;
        if r.remaining() > 0 {
            resp.properties = Properties::decode(r, PropertyContext::PubResp)?;
        }
    }
    r.finish()?;
    Ok(resp)
}

fn decode_subscribe(r: &mut Reader, v5: bool) -> Result<Subscribe, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = props(r, v5, PropertyContext::Subscribe)?;
    let mut subscriptions = Vec::new();
    while r.remaining() > 0 {
        let filter = r.string()?;
        topic::validate_filter(&filter).map_err(DecodeError::TopicFilter)?;
        let opts = r.u8()?;
        let reserved = if v5 { 0xc0 } else { 0xfc };
        if opts & reserved != 0 {
            return Err(DecodeError::Malformed("subscription options reserved bits are set"));
        }
        let retain_handling = match (opts >> 4) & 0x03 {
            0 => RetainHandling::OnSubscribe,
            1 => RetainHandling::OnNewSubscribe,
            2 => RetainHandling::Never,
            _ => return Err(DecodeError::Malformed("retain handling 3")),
        };
        let no_local = opts & 0x04 != 0;
        if no_local && topic::parse_shared(&filter).is_some() {
            return Err(DecodeError::Protocol("no local on a shared subscription"));
        }
        subscriptions.push(Subscription {
            qos: qos(opts & 0x03)?,
            no_local,
            retain_as_published: opts & 0x08 != 0,
            retain_handling,
            filter,
        });
    }
    if subscriptions.is_empty() {
        return Err(DecodeError::Protocol("SUBSCRIBE without a topic filter"));
    }
    Ok(Subscribe { packet_id, properties, subscriptions })
}

fn decode_suback(r: &mut Reader, v5: bool) -> Result<SubAck, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = props(r, v5, PropertyContext::SubAck)?;
    let mut codes = Vec::with_capacity(r.remaining());
    while r.remaining() > 0 {
        let raw = r.u8()?;
        let c = ReasonCode::from_u8(raw)
            .filter(|c| if v5 { c.allowed_in(ReasonContext::SubAck) } else { matches!(raw, 0 | 1 | 2 | 0x80) })
            .ok_or(DecodeError::Malformed("invalid SUBACK return code"))?;
        codes.push(c);
    }
    if codes.is_empty() {
        return Err(DecodeError::Protocol("SUBACK without return codes"));
    }
    Ok(SubAck { packet_id, properties, codes })
}

fn decode_unsubscribe(r: &mut Reader, v5: bool) -> Result<Unsubscribe, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = props(r, v5, PropertyContext::Unsubscribe)?;
    let mut filters = Vec::new();
    while r.remaining() > 0 {
        let f = r.string()?;
        topic::validate_filter(&f).map_err(DecodeError::TopicFilter)?;
        filters.push(f);
    }
    if filters.is_empty() {
        return Err(DecodeError::Protocol("UNSUBSCRIBE without a topic filter"));
    }
    Ok(Unsubscribe { packet_id, properties, filters })
}

fn decode_unsuback(r: &mut Reader, v5: bool) -> Result<UnsubAck, DecodeError> {
    let packet_id = packet_id(r)?;
    if !v5 {
        r.finish()?;
        return Ok(UnsubAck { packet_id, properties: Properties::default(), codes: Vec::new() });
    }
    let properties = Properties::decode(r, PropertyContext::UnsubAck)?;
    let mut codes = Vec::with_capacity(r.remaining());
    while r.remaining() > 0 {
        codes.push(
            ReasonCode::from_u8(r.u8()?)
                .filter(|c| c.allowed_in(ReasonContext::UnsubAck))
                .ok_or(DecodeError::Malformed("invalid UNSUBACK reason code"))?,
        );
    }
    if codes.is_empty() {
        return Err(DecodeError::Protocol("UNSUBACK without reason codes"));
    }
    Ok(UnsubAck { packet_id, properties, codes })
}

fn decode_disconnect(r: &mut Reader, v5: bool) -> Result<Disconnect, DecodeError> {
    let mut d = Disconnect::default();
    if v5 && r.remaining() > 0 {
        d.code = ReasonCode::from_u8(r.u8()?)
            .filter(|c| c.allowed_in(ReasonContext::Disconnect))
            .ok_or(DecodeError::Malformed("invalid DISCONNECT reason code"))?;
        if r.remaining() > 0 {
            d.properties = Properties::decode(r, PropertyContext::Disconnect)?;
        }
    }
    r.finish()?;
    Ok(d)
}

fn decode_auth(r: &mut Reader) -> Result<Auth, DecodeError> {
    let mut a = Auth::default();
    if r.remaining() > 0 {
        a.code = ReasonCode::from_u8(r.u8()?)
            .filter(|c| c.allowed_in(ReasonContext::Auth))
            .ok_or(DecodeError::Malformed("invalid AUTH reason code"))?;
        if r.remaining() > 0 {
            a.properties = Properties::decode(r, PropertyContext::Auth)?;
        }
    }
    r.finish()?;
    Ok(a)
}
