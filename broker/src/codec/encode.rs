//! Encoding: every packet is sized first, so the fixed header is written once and the
//! buffer grows at most once per packet. Payloads are copied into the output buffer once.

use bytes::{BufMut, BytesMut};

use super::error::EncodeError;
use super::packet::*;
use super::primitives::{binary_len, put_binary, put_varint, varint_len, VARINT_MAX};
use super::properties::Properties;
use super::reason::{QoS, ReasonCode};

/// Encodes `packet` for a connection speaking `version` and appends it to `out`.
///
/// ```
/// use bytes::BytesMut;
/// use promptmq_broker::codec::{encode, Packet, PubResp, ProtocolVersion};
/// let mut out = BytesMut::new();
/// encode(&Packet::PubAck(PubResp::ok(7)), ProtocolVersion::V3_1_1, &mut out).unwrap();
/// assert_eq!(&out[..], &[0x40, 0x02, 0x00, 0x07]);
/// ```
pub fn encode(packet: &Packet, version: ProtocolVersion, out: &mut BytesMut) -> Result<(), EncodeError> {
    let v5 = version.is_v5();
    match packet {
        Packet::Connect(c) => encode_connect(c, out),
        Packet::ConnAck(c) => {
            let code = if v5 { c.code as u8 } else { c.v3_code.unwrap_or_else(|| v3_code(c.code)) };
            let len = 2 + props_len(v5, &c.properties);
            header(out, 0x20, len)?;
            out.put_u8(c.session_present as u8);
            out.put_u8(code);
            put_props(out, v5, &c.properties)
        }
        Packet::Publish(p) => encode_publish(p, v5, out),
        Packet::PubAck(r) => encode_pubresp(0x40, r, v5, out),
        Packet::PubRec(r) => encode_pubresp(0x50, r, v5, out),
        Packet::PubRel(r) => encode_pubresp(0x62, r, v5, out),
        Packet::PubComp(r) => encode_pubresp(0x70, r, v5, out),
        Packet::Subscribe(s) => {
            nonzero(s.packet_id)?;
            if s.subscriptions.is_empty() {
                return Err(EncodeError::Invalid("SUBSCRIBE needs at least one filter"));
            }
            let len = 2
                + props_len(v5, &s.properties)
                + s.subscriptions.iter().map(|x| binary_len(x.filter.as_bytes()) + 1).sum::<usize>();
            header(out, 0x82, len)?;
            out.put_u16(s.packet_id);
            put_props(out, v5, &s.properties)?;
            for sub in &s.subscriptions {
                put_binary(out, sub.filter.as_bytes())?;
                let mut opts = sub.qos as u8;
                if v5 {
                    opts |= (sub.no_local as u8) << 2
                        | (sub.retain_as_published as u8) << 3
                        | (sub.retain_handling as u8) << 4;
                }
                out.put_u8(opts);
            }
            Ok(())
        }
        Packet::SubAck(s) => {
            nonzero(s.packet_id)?;
            let len = 2 + props_len(v5, &s.properties) + s.codes.len();
            header(out, 0x90, len)?;
            out.put_u16(s.packet_id);
            put_props(out, v5, &s.properties)?;
            for c in &s.codes {
                // 3.1.1 knows only granted QoS 0..2 and 0x80 (failure).
                let b = *c as u8;
                out.put_u8(if v5 || b <= 2 { b } else { 0x80 });
            }
            Ok(())
        }
        Packet::Unsubscribe(u) => {
            nonzero(u.packet_id)?;
            if u.filters.is_empty() {
                return Err(EncodeError::Invalid("UNSUBSCRIBE needs at least one filter"));
            }
            let len =
                2 + props_len(v5, &u.properties) + u.filters.iter().map(|f| binary_len(f.as_bytes())).sum::<usize>();
            header(out, 0xa2, len)?;
            out.put_u16(u.packet_id);
            put_props(out, v5, &u.properties)?;
            for f in &u.filters {
                put_binary(out, f.as_bytes())?;
            }
            Ok(())
        }
        Packet::UnsubAck(u) => {
            nonzero(u.packet_id)?;
            let len = if v5 { 2 + u.properties.encoded_len() + u.codes.len() } else { 2 };
            header(out, 0xb0, len)?;
            out.put_u16(u.packet_id);
            if v5 {
                u.properties.encode(out)?;
                for c in &u.codes {
                    out.put_u8(*c as u8);
                }
            }
            Ok(())
        }
        Packet::PingReq => header(out, 0xc0, 0),
        Packet::PingResp => header(out, 0xd0, 0),
        Packet::Disconnect(d) => {
            if !v5 || (d.code == ReasonCode::Success && d.properties.is_empty()) {
                return header(out, 0xe0, 0);
            }
            header(out, 0xe0, 1 + d.properties.encoded_len())?;
            out.put_u8(d.code as u8);
            d.properties.encode(out)
        }
        Packet::Auth(a) => {
            if !v5 {
                return Err(EncodeError::NotInVersion("AUTH"));
            }
            if a.code == ReasonCode::Success && a.properties.is_empty() {
                return header(out, 0xf0, 0);
            }
            header(out, 0xf0, 1 + a.properties.encoded_len())?;
            out.put_u8(a.code as u8);
            a.properties.encode(out)
        }
    }
}

fn nonzero(id: u16) -> Result<(), EncodeError> {
    if id == 0 {
        return Err(EncodeError::Invalid("packet identifier 0"));
    }
    Ok(())
}

fn v3_code(code: ReasonCode) -> u8 {
    match code {
        ReasonCode::Success => 0,
        ReasonCode::UnsupportedProtocolVersion => 1,
        ReasonCode::ClientIdentifierNotValid => 2,
        ReasonCode::BadUserNameOrPassword => 4,
        ReasonCode::NotAuthorized | ReasonCode::Banned => 5,
        _ => 3, // server unavailable: the closest 3.1.1 has for everything else
    }
}

fn header(out: &mut BytesMut, first: u8, remaining: usize) -> Result<(), EncodeError> {
    if remaining > VARINT_MAX as usize {
        return Err(EncodeError::TooLarge("packet"));
    }
    out.reserve(1 + varint_len(remaining as u32) + remaining);
    out.put_u8(first);
    put_varint(out, remaining as u32)
}

fn props_len(v5: bool, p: &Properties) -> usize {
    if v5 {
        p.encoded_len()
    } else {
        0
    }
}

fn put_props(out: &mut BytesMut, v5: bool, p: &Properties) -> Result<(), EncodeError> {
    if v5 {
        p.encode(out)?;
    }
    Ok(())
}

/// Size of a PUBLISH on the wire (for maximum-packet-size checks before encoding).
pub fn publish_len(p: &Publish, version: ProtocolVersion) -> usize {
    let remaining = publish_remaining(p, version.is_v5());
    1 + varint_len(remaining.min(VARINT_MAX as usize) as u32) + remaining
}

fn publish_remaining(p: &Publish, v5: bool) -> usize {
    binary_len(p.topic.as_bytes())
        + if p.qos == QoS::AtMostOnce { 0 } else { 2 }
        + props_len(v5, &p.properties)
        + p.payload.len()
}

fn encode_publish(p: &Publish, v5: bool, out: &mut BytesMut) -> Result<(), EncodeError> {
    if p.qos == QoS::AtMostOnce && (p.dup || p.packet_id.is_some()) {
        return Err(EncodeError::Invalid("QoS 0 PUBLISH with DUP or a packet identifier"));
    }
    let first = 0x30 | (p.dup as u8) << 3 | (p.qos as u8) << 1 | p.retain as u8;
    header(out, first, publish_remaining(p, v5))?;
    put_binary(out, p.topic.as_bytes())?;
    if p.qos != QoS::AtMostOnce {
        let id = p.packet_id.ok_or(EncodeError::Invalid("QoS > 0 PUBLISH without a packet identifier"))?;
        nonzero(id)?;
        out.put_u16(id);
    }
    put_props(out, v5, &p.properties)?;
    out.put_slice(&p.payload);
    Ok(())
}

fn encode_pubresp(first: u8, r: &PubResp, v5: bool, out: &mut BytesMut) -> Result<(), EncodeError> {
    nonzero(r.packet_id)?;
    if !v5 || (r.code == ReasonCode::Success && r.properties.is_empty()) {
        header(out, first, 2)?;
        out.put_u16(r.packet_id);
        return Ok(());
    }
    if r.properties.is_empty() {
        header(out, first, 3)?;
        out.put_u16(r.packet_id);
        out.put_u8(r.code as u8);
        return Ok(());
    }
    header(out, first, 3 + r.properties.encoded_len())?;
    out.put_u16(r.packet_id);
    out.put_u8(r.code as u8);
    r.properties.encode(out)
}

fn encode_connect(c: &Connect, out: &mut BytesMut) -> Result<(), EncodeError> {
    let v5 = c.protocol.is_v5();
    let name: &[u8] = if c.protocol == ProtocolVersion::V3_1 { b"MQIsdp" } else { b"MQTT" };
    let mut len = binary_len(name) + 1 + 1 + 2 + props_len(v5, &c.properties) + binary_len(c.client_id.as_bytes());
    if let Some(w) = &c.will {
        len += props_len(v5, &w.properties) + binary_len(w.topic.as_bytes()) + binary_len(&w.payload);
    }
    if let Some(u) = &c.username {
        len += binary_len(u.as_bytes());
    }
    if let Some(p) = &c.password {
        len += binary_len(p);
    }
    if !v5 && c.password.is_some() && c.username.is_none() {
        return Err(EncodeError::Invalid("3.1.1 does not allow a password without a user name"));
    }
    header(out, 0x10, len)?;
    put_binary(out, name)?;
    out.put_u8(c.protocol.level());
    let mut flags = (c.clean_start as u8) << 1;
    if let Some(w) = &c.will {
        flags |= 0x04 | (w.qos as u8) << 3 | (w.retain as u8) << 5;
    }
    flags |= (c.password.is_some() as u8) << 6 | (c.username.is_some() as u8) << 7;
    out.put_u8(flags);
    out.put_u16(c.keep_alive);
    put_props(out, v5, &c.properties)?;
    put_binary(out, c.client_id.as_bytes())?;
    if let Some(w) = &c.will {
        put_props(out, v5, &w.properties)?;
        put_binary(out, w.topic.as_bytes())?;
        put_binary(out, &w.payload)?;
    }
    if let Some(u) = &c.username {
        put_binary(out, u.as_bytes())?;
    }
    if let Some(p) = &c.password {
        put_binary(out, p)?;
    }
    Ok(())
}
