//! Framing: the fixed header, remaining length, and the encode/decode entry points.
//!
//! The fixed header (spec 2.1) is a type-and-flags byte and the remaining
//! length. [`decode`] checks both as soon as they are buffered, then hands the
//! body to the module of its packet family:
//!
//! - `connect`: CONNECT, CONNACK
//! - `publish`: PUBLISH
//! - `ack`: PUBACK, PUBREC, PUBREL, PUBCOMP (and the MQTT 5 reason tail)
//! - `subscribe`: SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK
//! - `disconnect`: DISCONNECT, AUTH
//!
//! over the shared `read`/`write` primitives and the `props` property codec.

mod ack;
mod connect;
mod disconnect;
mod props;
mod publish;
mod read;
mod subscribe;
mod write;

use std::num::NonZeroU16;

use bytes::BytesMut;

use crate::reason::{PUBACK_REASONS, PUBREL_REASONS};
use crate::{DecodeError, EncodeError, Packet, ProtocolVersion, PublishView, QoS};
use read::{MAX_VARINT, Reader, parse_varint};
use write::{Counter, Sink, varint_len};

/// Control packet types (spec 2.1.2).
mod packet_type {
    pub const CONNECT: u8 = 1;
    pub const CONNACK: u8 = 2;
    pub const PUBLISH: u8 = 3;
    pub const PUBACK: u8 = 4;
    pub const PUBREC: u8 = 5;
    pub const PUBREL: u8 = 6;
    pub const PUBCOMP: u8 = 7;
    pub const SUBSCRIBE: u8 = 8;
    pub const SUBACK: u8 = 9;
    pub const UNSUBSCRIBE: u8 = 10;
    pub const UNSUBACK: u8 = 11;
    pub const PINGREQ: u8 = 12;
    pub const PINGRESP: u8 = 13;
    pub const DISCONNECT: u8 = 14;
    pub const AUTH: u8 = 15;
}

/// The largest remaining length (spec 1.5.5, 2.1.4).
pub const MAX_REMAINING_LENGTH: usize = MAX_VARINT as usize;

/// Checks the first byte of a fixed header: a type that exists at `version`
/// and the flags that type requires [MQTT-2.1.3-1].
fn check_first_byte(first: u8, version: ProtocolVersion) -> Result<(), DecodeError> {
    let packet_type = first >> 4;
    let flags = first & 0x0F;
    match packet_type {
        0 => return Err(DecodeError::UnknownPacketType(0)),
        // AUTH is new in 5.0; CONNECT still reaches here at any `version`.
        packet_type::AUTH if version != ProtocolVersion::V5 => {
            return Err(DecodeError::UnknownPacketType(packet_type::AUTH));
        }
        packet_type::PUBLISH => {
            publish::check_flags(flags)?;
            return Ok(());
        }
        _ => {}
    }
    // PUBREL, SUBSCRIBE and UNSUBSCRIBE have 0b0010 [MQTT-3.6.1-1],
    // [MQTT-3.8.1-1], [MQTT-3.10.1-1]; every other packet 0b0000.
    let expected = match packet_type {
        packet_type::PUBREL | packet_type::SUBSCRIBE | packet_type::UNSUBSCRIBE => 0b0010,
        _ => 0b0000,
    };
    if flags != expected {
        return Err(DecodeError::InvalidFlags { packet_type, flags });
    }
    Ok(())
}

/// The total size and the fixed header's size of the packet at the front of
/// `buf`, once its Remaining Length is complete.
fn fixed_header(buf: &[u8]) -> Result<Option<(usize, usize)>, DecodeError> {
    let Some((remaining, len_bytes)) = parse_varint(buf.get(1..).unwrap_or_default())? else {
        return Ok(None);
    };
    let header_len = len_bytes.saturating_add(1);
    let size = usize::try_from(remaining)
        .unwrap_or(usize::MAX)
        .saturating_add(header_len);
    Ok(Some((size, header_len)))
}

/// The total size of the packet at the front of `buf`, if enough of its fixed
/// header is there to tell (no other check is made: [`decode`] does those).
/// Lets a reader fetch the rest of a large packet in one read.
pub fn frame_size(buf: &[u8]) -> Option<usize> {
    fixed_header(buf).ok().flatten().map(|(size, _)| size)
}

/// A whole PUBLISH at the front of a read buffer, located by
/// [`locate_publish`] without decoding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishFrame {
    /// Bytes of the whole packet.
    pub len: usize,
    pub qos: QoS,
    pub packet_id: Option<NonZeroU16>,
    /// Where the payload starts (it ends with the packet).
    pub payload_at: usize,
}

/// Finds the packet id and payload of a whole PUBLISH at the front of `buf`
/// in place: no allocation, no reference counting, no check of the topic or
/// the properties. For a receiver that only counts and acknowledges (a load
/// generator's subscribers). Anything else (another packet, a partial or
/// malformed one) is `None`: pass it to [`decode`], which reports errors.
pub fn locate_publish(buf: &[u8], version: ProtocolVersion) -> Option<PublishFrame> {
    let first = *buf.first()?;
    if first >> 4 != packet_type::PUBLISH {
        return None;
    }
    let qos = publish::check_flags(first & 0x0F).ok()?;
    let (len, mut at) = fixed_header(buf).ok().flatten()?;
    let packet = buf.get(..len)?;
    let topic_len = usize::from(u16::from_be_bytes([*packet.get(at)?, *packet.get(at + 1)?]));
    at += 2 + topic_len;
    let packet_id = if qos == QoS::AtMostOnce {
        None
    } else {
        let id = u16::from_be_bytes([*packet.get(at)?, *packet.get(at + 1)?]);
        at += 2;
        Some(NonZeroU16::new(id)?)
    };
    if version == ProtocolVersion::V5 {
        let (properties, taken) = parse_varint(packet.get(at..)?).ok().flatten()?;
        at = at
            .checked_add(taken)?
            .checked_add(usize::try_from(properties).ok()?)?;
    }
    (at <= len).then_some(PublishFrame {
        len,
        qos,
        packet_id,
        payload_at: at,
    })
}

/// The protocol level of the CONNECT at the front of `buf`, once its fixed
/// header, protocol name and level byte are there (nothing else is read or
/// checked). Lets a server answer, in the client's own version, a CONNECT it
/// refuses to decode, such as one above its maximum packet size.
pub fn connect_level(buf: &[u8]) -> Option<u8> {
    if buf.first()? >> 4 != packet_type::CONNECT {
        return None;
    }
    let (_, header_len) = fixed_header(buf).ok().flatten()?;
    let body = buf.get(header_len..)?;
    let name_len = u16::from_be_bytes([*body.first()?, *body.get(1)?]);
    body.get(2 + usize::from(name_len)).copied()
}

/// Decodes one packet from the front of `buf`.
///
/// Returns `Ok(None)` if `buf` does not yet hold a whole packet (read more and
/// call again; nothing is consumed). A packet whose fixed header declares a total
/// size above `max_packet_size` is refused as soon as the header is readable,
/// before its body is buffered. CONNECT is decoded whatever `version` says (it
/// carries its own level); every other packet is decoded at `version`.
///
/// Errors found in the fixed header leave `buf` as it was; an error in the
/// body consumes that packet. Either way the connection should be closed
/// (spec 4.13).
pub fn decode(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    max_packet_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    check_first_byte(first, version)?;
    let Some((size, header_len)) = fixed_header(buf)? else {
        return Ok(None);
    };
    if size > max_packet_size {
        return Err(DecodeError::PacketTooLarge {
            size,
            max: max_packet_size,
        });
    }
    if buf.len() < size {
        return Ok(None);
    }

    let mut r = Reader::new(buf.split_to(size).freeze());
    r.take(header_len)?;
    let flags = first & 0x0F;
    let packet = match first >> 4 {
        packet_type::CONNECT => Packet::Connect(Box::new(connect::decode_connect(&mut r)?)),
        packet_type::CONNACK => Packet::ConnAck(connect::decode_connack(&mut r, version)?),
        packet_type::PUBLISH => Packet::Publish(publish::decode(&mut r, flags, version)?),
        packet_type::PUBACK => Packet::PubAck(ack::decode(&mut r, version, PUBACK_REASONS)?),
        packet_type::PUBREC => Packet::PubRec(ack::decode(&mut r, version, PUBACK_REASONS)?),
        packet_type::PUBREL => Packet::PubRel(ack::decode(&mut r, version, PUBREL_REASONS)?),
        packet_type::PUBCOMP => Packet::PubComp(ack::decode(&mut r, version, PUBREL_REASONS)?),
        packet_type::SUBSCRIBE => Packet::Subscribe(subscribe::decode_subscribe(&mut r, version)?),
        packet_type::SUBACK => Packet::SubAck(subscribe::decode_suback(&mut r, version)?),
        packet_type::UNSUBSCRIBE => {
            Packet::Unsubscribe(subscribe::decode_unsubscribe(&mut r, version)?)
        }
        packet_type::UNSUBACK => Packet::UnsubAck(subscribe::decode_unsuback(&mut r, version)?),
        packet_type::PINGREQ => Packet::PingReq,
        packet_type::PINGRESP => Packet::PingResp,
        packet_type::DISCONNECT => {
            Packet::Disconnect(disconnect::decode_disconnect(&mut r, version)?)
        }
        packet_type::AUTH => Packet::Auth(disconnect::decode_auth(&mut r)?),
        // Refused by `check_first_byte` already; kept so no input can panic.
        other => return Err(DecodeError::UnknownPacketType(other)),
    };
    // Every family reads exactly its fields; anything left is malformed.
    r.finish()?;
    Ok(Some(packet))
}

/// What can be framed as one packet: its first byte and its body.
trait Frame {
    /// The type-and-flags byte of the fixed header (spec 2.1.2, 2.1.3).
    fn first_byte(&self) -> u8;
    /// Writes everything after the fixed header, to a buffer or a counter.
    fn write_body<S: Sink>(&self, version: ProtocolVersion, w: &mut S) -> Result<(), EncodeError>;

    /// Appends the whole packet to `out`; on error nothing is appended.
    fn encode_frame(
        &self,
        version: ProtocolVersion,
        out: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        // The counting pass finds every error and the remaining length before
        // anything is written.
        let remaining = self.remaining_length(version)?;
        let start = out.len();
        out.reserve(1 + varint_len(remaining) + remaining);
        Sink::put_u8(out, self.first_byte());
        let written = u32::try_from(remaining)
            .map_err(|_| EncodeError::PacketTooLarge)
            .and_then(|len| out.varint(len))
            .and_then(|()| self.write_body(version, out));
        if written.is_err() {
            out.truncate(start);
        }
        written
    }

    fn remaining_length(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        let mut counter = Counter::default();
        self.write_body(version, &mut counter)?;
        if counter.0 > MAX_REMAINING_LENGTH {
            return Err(EncodeError::PacketTooLarge);
        }
        Ok(counter.0)
    }
}

impl PublishView<'_> {
    /// Appends this PUBLISH to `out`, as [`Packet::encode`] would the
    /// [`Publish`] it stands for. On error nothing is appended.
    pub fn encode(&self, version: ProtocolVersion, out: &mut BytesMut) -> Result<(), EncodeError> {
        self.encode_frame(version, out)
    }
}

impl Frame for PublishView<'_> {
    fn first_byte(&self) -> u8 {
        (packet_type::PUBLISH << 4) | publish::flags(self)
    }

    fn write_body<S: Sink>(&self, version: ProtocolVersion, w: &mut S) -> Result<(), EncodeError> {
        publish::encode(self, version, w)
    }
}

impl Packet {
    /// Appends the encoded packet to `out`. On error nothing is appended.
    ///
    /// Properties are written only at [`ProtocolVersion::V5`]; before that
    /// they are ignored, as are the reason codes that levels 3 and 4 cannot
    /// carry (see each packet's docs). CONNECT is written at
    /// `connect.protocol`, whatever `version` says. Values the decoder would
    /// refuse are refused here too ([`EncodeError::InvalidValue`]).
    pub fn encode(&self, version: ProtocolVersion, out: &mut BytesMut) -> Result<(), EncodeError> {
        self.encode_frame(version, out)
    }

    /// The number of bytes [`Packet::encode`] appends at `version`, or the
    /// error it would return. Costs a walk over the fields, no allocation.
    pub fn encoded_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        let remaining = self.remaining_length(version)?;
        Ok(1 + varint_len(remaining) + remaining)
    }
}

impl Frame for Packet {
    fn first_byte(&self) -> u8 {
        let (packet_type, flags) = match self {
            Packet::Connect(_) => (packet_type::CONNECT, 0),
            Packet::ConnAck(_) => (packet_type::CONNACK, 0),
            Packet::Publish(p) => (packet_type::PUBLISH, publish::flags(&p.view())),
            Packet::PubAck(_) => (packet_type::PUBACK, 0),
            Packet::PubRec(_) => (packet_type::PUBREC, 0),
            Packet::PubRel(_) => (packet_type::PUBREL, 0b0010),
            Packet::PubComp(_) => (packet_type::PUBCOMP, 0),
            Packet::Subscribe(_) => (packet_type::SUBSCRIBE, 0b0010),
            Packet::SubAck(_) => (packet_type::SUBACK, 0),
            Packet::Unsubscribe(_) => (packet_type::UNSUBSCRIBE, 0b0010),
            Packet::UnsubAck(_) => (packet_type::UNSUBACK, 0),
            Packet::PingReq => (packet_type::PINGREQ, 0),
            Packet::PingResp => (packet_type::PINGRESP, 0),
            Packet::Disconnect(_) => (packet_type::DISCONNECT, 0),
            Packet::Auth(_) => (packet_type::AUTH, 0),
        };
        (packet_type << 4) | flags
    }

    fn write_body<S: Sink>(&self, version: ProtocolVersion, w: &mut S) -> Result<(), EncodeError> {
        match self {
            Packet::Connect(c) => connect::encode_connect(c, w),
            Packet::ConnAck(c) => connect::encode_connack(c, version, w),
            Packet::Publish(p) => publish::encode(&p.view(), version, w),
            Packet::PubAck(a) => ack::encode(a, version, PUBACK_REASONS, w),
            Packet::PubRec(a) => ack::encode(a, version, PUBACK_REASONS, w),
            Packet::PubRel(a) => ack::encode(a, version, PUBREL_REASONS, w),
            Packet::PubComp(a) => ack::encode(a, version, PUBREL_REASONS, w),
            Packet::Subscribe(s) => subscribe::encode_subscribe(s, version, w),
            Packet::SubAck(s) => subscribe::encode_suback(s, version, w),
            Packet::Unsubscribe(u) => subscribe::encode_unsubscribe(u, version, w),
            Packet::UnsubAck(u) => subscribe::encode_unsuback(u, version, w),
            Packet::PingReq | Packet::PingResp => Ok(()),
            Packet::Disconnect(d) => disconnect::encode_disconnect(d, version, w),
            Packet::Auth(a) => disconnect::encode_auth(a, version, w),
        }
    }
}
