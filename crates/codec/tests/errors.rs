//! Every `DecodeError` variant from the bytes that cause it, the rules behind
//! each (with spec ids), and every `EncodeError` variant, including that a
//! failed encode appends nothing.

mod common;

use std::num::NonZeroU16;

use bytes::{Bytes, BytesMut};
use tern_codec::ReasonCode::*;
use tern_codec::*;

use common::MAX;

const V3: ProtocolVersion = ProtocolVersion::V3_1;
const V4: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;

/// Decoding `bytes` at `version` fails with `error`.
#[track_caller]
fn fails(bytes: &[u8], version: ProtocolVersion, error: DecodeError) {
    let mut buf = BytesMut::from(bytes);
    assert_eq!(decode(&mut buf, version, MAX), Err(error), "{bytes:02x?}");
}

/// Decoding `bytes` at `version` succeeds (the counterpart of a failure).
#[track_caller]
fn decodes(bytes: &[u8], version: ProtocolVersion) -> Packet {
    let mut buf = BytesMut::from(bytes);
    match decode(&mut buf, version, MAX) {
        Ok(Some(packet)) => packet,
        other => panic!("{bytes:02x?}: {other:?}"),
    }
}

/// A PUBACK at level 5 whose property block is `props` (length prepended).
fn puback_with_props(props: &[u8]) -> Vec<u8> {
    let mut body = vec![0x00, 0x01, 0x00, props.len() as u8];
    body.extend_from_slice(props);
    framed(0x40, &body)
}

/// A QoS 0 PUBLISH to "t" at level 5 whose property block is `props`.
fn publish_with_props(props: &[u8]) -> Vec<u8> {
    let mut body = vec![0x00, 0x01, b't', props.len() as u8];
    body.extend_from_slice(props);
    framed(0x30, &body)
}

/// A CONNACK at level 5 whose property block is `props`.
fn connack_with_props(props: &[u8]) -> Vec<u8> {
    let mut body = vec![0x00, 0x00, props.len() as u8];
    body.extend_from_slice(props);
    framed(0x20, &body)
}

/// A CONNECT at level 5 whose property block is `props`.
fn connect_with_props(props: &[u8]) -> Vec<u8> {
    let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x00];
    body.push(props.len() as u8);
    body.extend_from_slice(props);
    body.extend_from_slice(&[0x00, 0x00]);
    framed(0x10, &body)
}

/// A CONNECT with the given name, level, flags and payload.
fn connect(name: &[u8], level: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut body = vec![0x00, name.len() as u8];
    body.extend_from_slice(name);
    body.extend_from_slice(&[level, flags, 0x00, 0x3C]);
    if level == 5 {
        body.push(0x00);
    }
    body.extend_from_slice(payload);
    framed(0x10, &body)
}

/// A fixed header byte and a one-byte remaining length, then `body`.
fn framed(first: u8, body: &[u8]) -> Vec<u8> {
    let mut bytes = vec![first, body.len() as u8];
    bytes.extend_from_slice(body);
    bytes
}

#[test]
fn malformed_var_int() {
    // Remaining length with a continuation bit on its fourth byte: refused
    // once five bytes are there, before any body.
    fails(
        &[0x30, 0xFF, 0xFF, 0xFF, 0xFF],
        V4,
        DecodeError::MalformedVarInt,
    );
    fails(
        &[0x30, 0x80, 0x80, 0x80, 0x80, 0x01],
        V4,
        DecodeError::MalformedVarInt,
    );
    // Four bytes of a varint still waiting for its end are just incomplete.
    let mut buf = BytesMut::from(&[0x30, 0xFF, 0xFF, 0xFF][..]);
    assert_eq!(decode(&mut buf, V4, usize::MAX), Ok(None));
    // A property length of five bytes.
    fails(
        &[0x30, 0x08, 0x00, 0x01, b't', 0xFF, 0xFF, 0xFF, 0xFF, 0x7F],
        V5,
        DecodeError::MalformedVarInt,
    );
    // A Subscription Identifier of five bytes.
    fails(
        &publish_with_props(&[0x0B, 0x80, 0x80, 0x80, 0x80, 0x01]),
        V5,
        DecodeError::MalformedVarInt,
    );
}

#[test]
fn packet_too_large() {
    // 1 MB declared, limit 1024, only five bytes buffered.
    let mut buf = BytesMut::from(&[0x30, 0x80, 0x80, 0x40, 0x00][..]);
    assert_eq!(
        decode(&mut buf, V4, 1024),
        Err(DecodeError::PacketTooLarge {
            size: 1 + 3 + 1_048_576,
            max: 1024
        })
    );
    assert_eq!(buf.len(), 5, "nothing consumed");
    // The limit counts the fixed header: 2 + 3 = 5 bytes.
    let publish = [0x30, 0x03, 0x00, 0x01, b't'];
    let mut buf = BytesMut::from(&publish[..]);
    assert!(matches!(decode(&mut buf, V4, 5), Ok(Some(_))));
    let mut buf = BytesMut::from(&publish[..]);
    assert_eq!(
        decode(&mut buf, V4, 4),
        Err(DecodeError::PacketTooLarge { size: 5, max: 4 })
    );
    // Largest remaining length, smallest limit.
    let mut buf = BytesMut::from(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F][..]);
    assert_eq!(
        decode(&mut buf, V4, 0),
        Err(DecodeError::PacketTooLarge {
            size: 268_435_460,
            max: 0
        })
    );
    assert_eq!(
        DecodeError::PacketTooLarge { size: 2, max: 1 }.reason_code(),
        PacketTooLarge
    );
}

#[test]
fn unknown_packet_type() {
    for version in common::ALL_VERSIONS {
        fails(&[0x00, 0x00], version, DecodeError::UnknownPacketType(0));
    }
    // AUTH only exists at level 5.
    fails(&[0xF0, 0x00], V3, DecodeError::UnknownPacketType(15));
    fails(&[0xF0, 0x00], V4, DecodeError::UnknownPacketType(15));
    // Refused from the first byte alone.
    fails(&[0xF0], V4, DecodeError::UnknownPacketType(15));
    assert_eq!(
        decodes(&[0xF0, 0x00], V5),
        Packet::Auth(Auth {
            reason: Success,
            properties: AuthProperties::default(),
        })
    );
}

#[test]
fn invalid_flags() {
    let flags = |packet_type, flags| DecodeError::InvalidFlags { packet_type, flags };
    // [MQTT-2.1.3-1]: PUBREL, SUBSCRIBE, UNSUBSCRIBE need 0b0010.
    fails(&[0x60, 0x02, 0x00, 0x01], V4, flags(6, 0));
    fails(&[0x6A, 0x02, 0x00, 0x01], V3, flags(6, 0b1010));
    fails(
        &[0x80, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x00],
        V4,
        flags(8, 0),
    );
    fails(
        &[0xA0, 0x05, 0x00, 0x01, 0x00, 0x01, b'a'],
        V4,
        flags(10, 0),
    );
    // Everything else but PUBLISH needs 0b0000.
    fails(&[0x12, 0x00], V4, flags(1, 2));
    fails(&[0x42, 0x02, 0x00, 0x01], V4, flags(4, 2));
    fails(&[0xC1, 0x00], V5, flags(12, 1));
    fails(&[0xD8, 0x00], V5, flags(13, 8));
    fails(&[0xE2, 0x00], V5, flags(14, 2));
    fails(&[0xF1, 0x00], V5, flags(15, 1));
    // [MQTT-3.3.1-2]: DUP on a QoS 0 PUBLISH, at every level.
    for version in common::ALL_VERSIONS {
        fails(&[0x38, 0x03, 0x00, 0x01, b't'], version, flags(3, 0b1000));
        fails(&[0x39, 0x03, 0x00, 0x01, b't'], version, flags(3, 0b1001));
    }
    // From the first byte alone.
    fails(&[0x60], V4, flags(6, 0));
}

#[test]
fn unexpected_end() {
    // Remaining length 1 cannot hold a packet id.
    fails(&[0x40, 0x01, 0x00], V4, DecodeError::UnexpectedEnd);
    // A topic length beyond the packet.
    fails(
        &[0x30, 0x03, 0x00, 0x05, b't'],
        V4,
        DecodeError::UnexpectedEnd,
    );
    // A QoS 1 PUBLISH without room for its packet id.
    fails(
        &[0x32, 0x04, 0x00, 0x01, b't', 0x00],
        V4,
        DecodeError::UnexpectedEnd,
    );
    // CONNECT missing its client id.
    fails(
        &[
            0x10, 0x0A, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3C,
        ],
        V4,
        DecodeError::UnexpectedEnd,
    );
    // CONNECT whose user name flag promises a field that is not there.
    fails(
        &connect(b"MQTT", 4, 0x82, &[0x00, 0x01, b'c']),
        V4,
        DecodeError::UnexpectedEnd,
    );
    // A property block longer than the packet.
    fails(
        &[0x30, 0x04, 0x00, 0x01, b't', 0x05],
        V5,
        DecodeError::UnexpectedEnd,
    );
    // A property value that runs past its block.
    fails(
        &publish_with_props(&[0x23, 0x00]),
        V5,
        DecodeError::UnexpectedEnd,
    );
    // A CONNACK without its return code; SUBSCRIBE filter without options.
    fails(&[0x20, 0x01, 0x00], V4, DecodeError::UnexpectedEnd);
    fails(
        &[0x82, 0x05, 0x00, 0x01, 0x00, 0x01, b'a'],
        V4,
        DecodeError::UnexpectedEnd,
    );
    // A level 5 CONNACK without its property length.
    fails(&[0x20, 0x02, 0x00, 0x00], V5, DecodeError::UnexpectedEnd);
}

#[test]
fn trailing_bytes() {
    fails(&[0xC0, 0x01, 0x00], V4, DecodeError::TrailingBytes);
    fails(&[0xD0, 0x01, 0x00], V5, DecodeError::TrailingBytes);
    // Before 5.0 a PUBACK is only its packet id, and DISCONNECT is empty.
    fails(
        &[0x40, 0x03, 0x00, 0x01, 0x00],
        V4,
        DecodeError::TrailingBytes,
    );
    fails(
        &[0xB0, 0x03, 0x00, 0x01, 0x00],
        V4,
        DecodeError::TrailingBytes,
    );
    fails(&[0xE0, 0x01, 0x00], V4, DecodeError::TrailingBytes);
    fails(
        &[0x20, 0x03, 0x00, 0x00, 0x00],
        V4,
        DecodeError::TrailingBytes,
    );
    // After the property block of a level 5 PUBACK / DISCONNECT.
    fails(
        &[0x40, 0x05, 0x00, 0x01, 0x00, 0x00, 0xFF],
        V5,
        DecodeError::TrailingBytes,
    );
    fails(
        &[0xE0, 0x03, 0x00, 0x00, 0x00],
        V5,
        DecodeError::TrailingBytes,
    );
    // After the last CONNECT field.
    fails(
        &connect(b"MQTT", 4, 0x02, &[0x00, 0x01, b'c', 0x00]),
        V4,
        DecodeError::TrailingBytes,
    );
}

#[test]
fn invalid_utf8() {
    // Ill-formed UTF-8 topic [MQTT-1.5.4-1].
    fails(
        &[0x30, 0x04, 0x00, 0x02, 0xC3, 0x28],
        V4,
        DecodeError::InvalidUtf8,
    );
    // U+0000 in a topic [MQTT-1.5.4-2].
    fails(
        &[0x30, 0x05, 0x00, 0x03, b'a', 0x00, b'b'],
        V4,
        DecodeError::InvalidUtf8,
    );
    // An encoded surrogate.
    fails(
        &[0x30, 0x05, 0x00, 0x03, 0xED, 0xA0, 0x80],
        V4,
        DecodeError::InvalidUtf8,
    );
    // In a client id, a filter, a user property.
    fails(
        &connect(b"MQTT", 4, 0x02, &[0x00, 0x01, 0xFF]),
        V4,
        DecodeError::InvalidUtf8,
    );
    fails(
        &[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00],
        V4,
        DecodeError::InvalidUtf8,
    );
    fails(
        &[0xA2, 0x05, 0x00, 0x01, 0x00, 0x01, 0x00],
        V4,
        DecodeError::InvalidUtf8,
    );
    fails(
        &puback_with_props(&[0x26, 0x00, 0x01, b'k', 0x00, 0x01, 0x80]),
        V5,
        DecodeError::InvalidUtf8,
    );
    // Not UTF-8 checked: binary data (a password) may hold anything.
    decodes(
        &connect(
            b"MQTT",
            4,
            0xC2,
            &[0x00, 0x01, b'c', 0x00, 0x01, b'u', 0x00, 0x02, 0x00, 0xFF],
        ),
        V4,
    );
}

#[test]
fn invalid_protocol_name() {
    fails(
        &connect(b"MQTX", 4, 0x02, &[0x00, 0x01, b'c']),
        V4,
        DecodeError::InvalidProtocolName,
    );
    fails(
        &connect(b"mqtt", 4, 0x02, &[0x00, 0x01, b'c']),
        V4,
        DecodeError::InvalidProtocolName,
    );
    fails(
        &connect(b"", 4, 0x02, &[0x00, 0x01, b'c']),
        V4,
        DecodeError::InvalidProtocolName,
    );
    assert_eq!(
        DecodeError::InvalidProtocolName.reason_code(),
        UnsupportedProtocolVersion
    );
}

#[test]
fn unsupported_protocol_version() {
    let payload = [0x00, 0x01, b'c'];
    fails(
        &connect(b"MQTT", 6, 0x02, &payload),
        V4,
        DecodeError::UnsupportedProtocolVersion(6),
    );
    fails(
        &connect(b"MQTT", 0, 0x02, &payload),
        V4,
        DecodeError::UnsupportedProtocolVersion(0),
    );
    // Names and levels go together: "MQTT" is 4 or 5, "MQIsdp" is 3.
    fails(
        &connect(b"MQTT", 3, 0x02, &payload),
        V4,
        DecodeError::UnsupportedProtocolVersion(3),
    );
    fails(
        &connect(b"MQIsdp", 4, 0x02, &payload),
        V4,
        DecodeError::UnsupportedProtocolVersion(4),
    );
    decodes(&connect(b"MQIsdp", 3, 0x02, &payload), V4);
    decodes(&connect(b"MQTT", 4, 0x02, &payload), V5);
    decodes(&connect(b"MQTT", 5, 0x02, &payload), V3);
}

#[test]
fn invalid_qos() {
    // [MQTT-3.3.1-4]: PUBLISH QoS 3, refused from the first byte.
    fails(
        &[0x36, 0x05, 0x00, 0x01, b't', 0x00, 0x01],
        V4,
        DecodeError::InvalidQoS,
    );
    fails(&[0x3E], V5, DecodeError::InvalidQoS);
    // [MQTT-3.1.2-12]: will QoS 3.
    let will = [0x00, 0x01, b'c', 0x00, 0x01, b't', 0x00, 0x00];
    fails(
        &connect(b"MQTT", 4, 0x1E, &will),
        V4,
        DecodeError::InvalidQoS,
    );
    // Subscription QoS 3, at every level.
    for version in common::ALL_VERSIONS {
        let props: &[u8] = if version == V5 { &[0x00] } else { &[] };
        let mut body = vec![0x00, 0x01];
        body.extend_from_slice(props);
        body.extend_from_slice(&[0x00, 0x01, b'a', 0x03]);
        fails(&framed(0x82, &body), version, DecodeError::InvalidQoS);
    }
}

#[test]
fn reserved_bit_set() {
    // [MQTT-3.1.2-3]: CONNECT reserved flag.
    fails(
        &connect(b"MQTT", 4, 0x03, &[0x00, 0x01, b'c']),
        V4,
        DecodeError::ReservedBitSet,
    );
    fails(
        &connect(b"MQTT", 5, 0x01, &[0x00, 0x01, b'c']),
        V4,
        DecodeError::ReservedBitSet,
    );
    // 3.1.1 [MQTT-3-8.3-4]: the upper six bits of the requested QoS byte.
    for options in [0x04, 0x08, 0x10, 0x40, 0x80] {
        fails(
            &[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', options],
            V4,
            DecodeError::ReservedBitSet,
        );
        fails(
            &[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', options],
            V3,
            DecodeError::ReservedBitSet,
        );
    }
    // 5.0 [MQTT-3.8.3-5]: bits 6 and 7 of the subscription options.
    for options in [0x40, 0x80, 0xC1] {
        fails(
            &[0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', options],
            V5,
            DecodeError::ReservedBitSet,
        );
    }
    // Retain Handling 3 is reported as a reserved value (spec 3.8.3.1).
    fails(
        &[0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x30],
        V5,
        DecodeError::ReservedBitSet,
    );
    // CONNACK acknowledge flags bits 7-1 [MQTT-3.2.2-1].
    fails(&[0x20, 0x02, 0x02, 0x00], V4, DecodeError::ReservedBitSet);
    fails(
        &[0x20, 0x03, 0x80, 0x00, 0x00],
        V5,
        DecodeError::ReservedBitSet,
    );
    // In 3.1 that byte is unused, so its value is not checked.
    assert_eq!(
        decodes(&[0x20, 0x02, 0xFF, 0x00], V3),
        Packet::ConnAck(ConnAck {
            session_present: false,
            reason: Success,
            properties: ConnAckProperties::default(),
        })
    );
}

#[test]
fn zero_packet_id() {
    // [MQTT-2.2.1-3], in every packet that has one.
    fails(
        &[0x32, 0x05, 0x00, 0x01, b't', 0x00, 0x00],
        V4,
        DecodeError::ZeroPacketId,
    );
    for first in [0x40, 0x50, 0x62, 0x70, 0xB0] {
        fails(&[first, 0x02, 0x00, 0x00], V4, DecodeError::ZeroPacketId);
    }
    fails(
        &[0x82, 0x06, 0x00, 0x00, 0x00, 0x01, b'a', 0x00],
        V4,
        DecodeError::ZeroPacketId,
    );
    fails(
        &[0x90, 0x03, 0x00, 0x00, 0x00],
        V4,
        DecodeError::ZeroPacketId,
    );
    fails(
        &[0xA2, 0x05, 0x00, 0x00, 0x00, 0x01, b'a'],
        V4,
        DecodeError::ZeroPacketId,
    );
    assert_eq!(DecodeError::ZeroPacketId.reason_code(), ProtocolError);
}

#[test]
fn invalid_property() {
    // Session Expiry Interval is not a PUBLISH property.
    fails(
        &publish_with_props(&[0x11, 0, 0, 0, 1]),
        V5,
        DecodeError::InvalidProperty(0x11),
    );
    // Unknown identifiers.
    fails(
        &publish_with_props(&[0x00]),
        V5,
        DecodeError::InvalidProperty(0x00),
    );
    fails(
        &publish_with_props(&[0x7F, 0x00]),
        V5,
        DecodeError::InvalidProperty(0x7F),
    );
    fails(
        &publish_with_props(&[0x80, 0x01]),
        V5,
        DecodeError::InvalidProperty(0x80),
    );
    // Topic Alias in a PUBACK; Will Delay Interval in CONNECT's own block;
    // Server Keep Alive in CONNECT; Topic Alias in CONNACK.
    fails(
        &puback_with_props(&[0x23, 0x00, 0x01]),
        V5,
        DecodeError::InvalidProperty(0x23),
    );
    fails(
        &connect_with_props(&[0x18, 0, 0, 0, 1]),
        V5,
        DecodeError::InvalidProperty(0x18),
    );
    fails(
        &connect_with_props(&[0x13, 0, 1]),
        V5,
        DecodeError::InvalidProperty(0x13),
    );
    fails(
        &connack_with_props(&[0x23, 0, 1]),
        V5,
        DecodeError::InvalidProperty(0x23),
    );
    // Subscription Identifier in UNSUBSCRIBE.
    fails(
        &[0xA2, 0x07, 0x00, 0x01, 0x02, 0x0B, 0x01, 0x00, 0x00],
        V5,
        DecodeError::InvalidProperty(0x0B),
    );
}

#[test]
fn duplicate_property() {
    fails(
        &publish_with_props(&[0x23, 0, 1, 0x23, 0, 2]),
        V5,
        DecodeError::DuplicateProperty(0x23),
    );
    fails(
        &puback_with_props(&[0x1F, 0, 0, 0x1F, 0, 0]),
        V5,
        DecodeError::DuplicateProperty(0x1F),
    );
    fails(
        &connack_with_props(&[0x24, 0, 0x24, 0]),
        V5,
        DecodeError::DuplicateProperty(0x24),
    );
    fails(
        &connect_with_props(&[0x21, 0, 1, 0x21, 0, 1]),
        V5,
        DecodeError::DuplicateProperty(0x21),
    );
    // SUBSCRIBE carries at most one Subscription Identifier.
    fails(
        &[
            0x82, 0x0B, 0x00, 0x01, 0x04, 0x0B, 0x01, 0x0B, 0x02, 0x00, 0x01, b'a', 0x00,
        ],
        V5,
        DecodeError::DuplicateProperty(0x0B),
    );
    // But PUBLISH may carry several, and User Property may always repeat.
    let Packet::Publish(publish) = decodes(&publish_with_props(&[0x0B, 0x01, 0x0B, 0x7F]), V5)
    else {
        panic!("not a PUBLISH");
    };
    assert_eq!(publish.properties.subscription_identifiers, [1, 127]);
    decodes(
        &puback_with_props(&[0x26, 0, 0, 0, 0, 0x26, 0, 0, 0, 0]),
        V5,
    );
    assert_eq!(
        DecodeError::DuplicateProperty(1).reason_code(),
        ProtocolError
    );
}

#[test]
fn invalid_property_value() {
    // Boolean bytes are 0 or 1: Payload Format Indicator, Request Problem
    // Information, Request Response Information, the CONNACK "available" flags.
    fails(
        &publish_with_props(&[0x01, 0x02]),
        V5,
        DecodeError::InvalidPropertyValue(0x01),
    );
    fails(
        &connect_with_props(&[0x17, 0x02]),
        V5,
        DecodeError::InvalidPropertyValue(0x17),
    );
    fails(
        &connect_with_props(&[0x19, 0xFF]),
        V5,
        DecodeError::InvalidPropertyValue(0x19),
    );
    for id in [0x25, 0x28, 0x29, 0x2A] {
        fails(
            &connack_with_props(&[id, 0x02]),
            V5,
            DecodeError::InvalidPropertyValue(id),
        );
    }
    // Receive Maximum and Maximum Packet Size are non-zero.
    fails(
        &connect_with_props(&[0x21, 0, 0]),
        V5,
        DecodeError::InvalidPropertyValue(0x21),
    );
    fails(
        &connack_with_props(&[0x21, 0, 0]),
        V5,
        DecodeError::InvalidPropertyValue(0x21),
    );
    fails(
        &connect_with_props(&[0x27, 0, 0, 0, 0]),
        V5,
        DecodeError::InvalidPropertyValue(0x27),
    );
    fails(
        &connack_with_props(&[0x27, 0, 0, 0, 0]),
        V5,
        DecodeError::InvalidPropertyValue(0x27),
    );
    // Maximum QoS is 0 or 1.
    fails(
        &connack_with_props(&[0x24, 0x02]),
        V5,
        DecodeError::InvalidPropertyValue(0x24),
    );
    // Subscription Identifier is non-zero, in PUBLISH and in SUBSCRIBE.
    fails(
        &publish_with_props(&[0x0B, 0x00]),
        V5,
        DecodeError::InvalidPropertyValue(0x0B),
    );
    fails(
        &[0x82, 0x08, 0x00, 0x01, 0x02, 0x0B, 0x00, 0x00, 0x00, 0x00],
        V5,
        DecodeError::InvalidPropertyValue(0x0B),
    );
    assert_eq!(
        DecodeError::InvalidPropertyValue(1).reason_code(),
        ProtocolError
    );
}

#[test]
fn invalid_reason_code() {
    // Unknown to the spec.
    fails(
        &[0x40, 0x03, 0x00, 0x01, 0x03],
        V5,
        DecodeError::InvalidReasonCode(0x03),
    );
    fails(
        &[0xE0, 0x01, 0xFF],
        V5,
        DecodeError::InvalidReasonCode(0xFF),
    );
    // Known, but not allowed in that packet.
    fails(
        &[0x62, 0x03, 0x00, 0x01, 0x10],
        V5,
        DecodeError::InvalidReasonCode(0x10),
    );
    fails(
        &[0x70, 0x03, 0x00, 0x01, 0x80],
        V5,
        DecodeError::InvalidReasonCode(0x80),
    );
    fails(
        &[0x40, 0x03, 0x00, 0x01, 0x92],
        V5,
        DecodeError::InvalidReasonCode(0x92),
    );
    fails(
        &[0x20, 0x03, 0x00, 0x8E, 0x00],
        V5,
        DecodeError::InvalidReasonCode(0x8E),
    );
    fails(
        &[0x90, 0x04, 0x00, 0x01, 0x00, 0x11],
        V5,
        DecodeError::InvalidReasonCode(0x11),
    );
    fails(
        &[0xB0, 0x04, 0x00, 0x01, 0x00, 0x01],
        V5,
        DecodeError::InvalidReasonCode(0x01),
    );
    fails(
        &[0xE0, 0x01, 0x88],
        V5,
        DecodeError::InvalidReasonCode(0x88),
    );
    fails(
        &[0xF0, 0x02, 0x87, 0x00],
        V5,
        DecodeError::InvalidReasonCode(0x87),
    );
    // 3.1.1 CONNACK return codes are 0..=5.
    fails(
        &[0x20, 0x02, 0x00, 0x06],
        V4,
        DecodeError::InvalidReasonCode(0x06),
    );
    fails(
        &[0x20, 0x02, 0x00, 0x84],
        V3,
        DecodeError::InvalidReasonCode(0x84),
    );
    // 3.1.1 SUBACK codes are 0, 1, 2 and 0x80.
    fails(
        &[0x90, 0x03, 0x00, 0x01, 0x03],
        V4,
        DecodeError::InvalidReasonCode(0x03),
    );
    fails(
        &[0x90, 0x03, 0x00, 0x01, 0x87],
        V4,
        DecodeError::InvalidReasonCode(0x87),
    );
}

#[test]
fn no_topic_filter() {
    // [MQTT-3.8.3-3], [MQTT-3.10.3-2].
    fails(&[0x82, 0x02, 0x00, 0x01], V4, DecodeError::NoTopicFilter);
    fails(
        &[0x82, 0x03, 0x00, 0x01, 0x00],
        V5,
        DecodeError::NoTopicFilter,
    );
    fails(&[0xA2, 0x02, 0x00, 0x01], V4, DecodeError::NoTopicFilter);
    fails(
        &[0xA2, 0x03, 0x00, 0x01, 0x00],
        V5,
        DecodeError::NoTopicFilter,
    );
    assert_eq!(DecodeError::NoTopicFilter.reason_code(), ProtocolError);
}

#[test]
fn invalid_connect_flags() {
    let payload = [0x00, 0x01, b'c'];
    // [MQTT-3.1.2-13], [MQTT-3.1.2-15]: will QoS or retain without the will flag.
    fails(
        &connect(b"MQTT", 4, 0x0A, &payload),
        V4,
        DecodeError::InvalidConnectFlags,
    );
    fails(
        &connect(b"MQTT", 4, 0x12, &payload),
        V4,
        DecodeError::InvalidConnectFlags,
    );
    fails(
        &connect(b"MQTT", 5, 0x22, &payload),
        V4,
        DecodeError::InvalidConnectFlags,
    );
    // [MQTT-3.1.2-22]: a password needs a user name before 5.0 ...
    let with_password = [0x00, 0x01, b'c', 0x00, 0x01, b'p'];
    fails(
        &connect(b"MQTT", 4, 0x42, &with_password),
        V4,
        DecodeError::InvalidConnectFlags,
    );
    fails(
        &connect(b"MQIsdp", 3, 0x42, &with_password),
        V4,
        DecodeError::InvalidConnectFlags,
    );
    // ... but not in 5.0 (spec 3.1.2.9).
    decodes(&connect(b"MQTT", 5, 0x42, &with_password), V4);
    assert_eq!(
        DecodeError::InvalidConnectFlags.reason_code(),
        MalformedPacket
    );
}

// ---- Encoding --------------------------------------------------------------

fn id(n: u16) -> NonZeroU16 {
    NonZeroU16::new(n).unwrap()
}

fn publish(qos: QoS, packet_id: Option<NonZeroU16>) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: "t".into(),
        packet_id,
        payload: Bytes::new(),
        properties: PublishProperties::default(),
    }
}

/// Encoding fails with `error`, leaving what `out` held untouched; and
/// `encoded_len` reports the same error.
#[track_caller]
fn encode_fails(packet: &Packet, version: ProtocolVersion, error: EncodeError) {
    let mut out = BytesMut::from(&b"keep"[..]);
    assert_eq!(packet.encode(version, &mut out), Err(error));
    assert_eq!(&out[..], b"keep");
    assert_eq!(packet.encoded_len(version), Err(error));
}

#[test]
fn encode_not_at_this_level() {
    let auth = Packet::Auth(Auth {
        reason: Success,
        properties: AuthProperties::default(),
    });
    encode_fails(&auth, V3, EncodeError::NotAtThisLevel("AUTH"));
    encode_fails(&auth, V4, EncodeError::NotAtThisLevel("AUTH"));
}

#[test]
fn encode_packet_too_large() {
    // One byte over the largest remaining length. The zeroed allocation is
    // never touched: the size is found before anything is written.
    let payload = Bytes::from(vec![0u8; 268_435_455 - 3 + 1]);
    let big = Packet::Publish(Publish {
        payload: payload.clone(),
        ..publish(QoS::AtMostOnce, None)
    });
    encode_fails(&big, V4, EncodeError::PacketTooLarge);
    // Exactly the largest fits.
    let largest = Packet::Publish(Publish {
        payload: payload.slice(1..),
        ..publish(QoS::AtMostOnce, None)
    });
    assert_eq!(largest.encoded_len(V4), Ok(1 + 4 + 268_435_455));
}

#[test]
fn encode_field_too_long() {
    let long = "x".repeat(65_536);
    let packet = Packet::Publish(Publish {
        topic: long.as_str().into(),
        ..publish(QoS::AtMostOnce, None)
    });
    encode_fails(&packet, V4, EncodeError::FieldTooLong);
    let packet = Packet::Disconnect(Disconnect {
        reason: Success,
        properties: DisconnectProperties {
            reason_string: Some(long.as_str().into()),
            ..Default::default()
        },
    });
    encode_fails(&packet, V5, EncodeError::FieldTooLong);
    // 65,535 is fine.
    let packet = Packet::Publish(Publish {
        topic: long[1..].into(),
        ..publish(QoS::AtMostOnce, None)
    });
    assert!(packet.encoded_len(V4).is_ok());
}

#[test]
fn encode_packet_id_mismatch() {
    let qos1_without = Packet::Publish(publish(QoS::AtLeastOnce, None));
    let qos0_with = Packet::Publish(publish(QoS::AtMostOnce, Some(id(1))));
    for version in common::ALL_VERSIONS {
        encode_fails(&qos1_without, version, EncodeError::PacketIdMismatch);
        encode_fails(&qos0_with, version, EncodeError::PacketIdMismatch);
    }
}

#[test]
fn encode_invalid_value() {
    let invalid = |packet: Packet, version| {
        let mut out = BytesMut::new();
        let result = packet.encode(version, &mut out);
        assert!(
            matches!(result, Err(EncodeError::InvalidValue(_))),
            "{packet:?}: {result:?}"
        );
        assert!(out.is_empty());
    };
    // DUP on QoS 0 [MQTT-3.3.1-2].
    invalid(
        Packet::Publish(Publish {
            dup: true,
            ..publish(QoS::AtMostOnce, None)
        }),
        V4,
    );
    // A reason code the packet does not allow.
    invalid(
        Packet::PubRel(PubAck {
            reason: QuotaExceeded,
            ..PubAck::new(id(1))
        }),
        V5,
    );
    invalid(Packet::Disconnect(Disconnect::new(ServerUnavailable)), V5);
    // No filters.
    invalid(
        Packet::Subscribe(Subscribe {
            packet_id: id(1),
            filters: vec![],
            properties: SubscribeProperties::default(),
        }),
        V4,
    );
    invalid(
        Packet::Unsubscribe(Unsubscribe {
            packet_id: id(1),
            filters: vec![],
            properties: UnsubscribeProperties::default(),
        }),
        V5,
    );
    // Property values the decoder refuses.
    invalid(
        Packet::Publish(Publish {
            properties: PublishProperties {
                subscription_identifiers: vec![0],
                ..Default::default()
            },
            ..publish(QoS::AtMostOnce, None)
        }),
        V5,
    );
    invalid(
        Packet::Publish(Publish {
            properties: PublishProperties {
                subscription_identifiers: vec![268_435_456],
                ..Default::default()
            },
            ..publish(QoS::AtMostOnce, None)
        }),
        V5,
    );
    invalid(
        Packet::ConnAck(ConnAck {
            session_present: false,
            reason: Success,
            properties: ConnAckProperties {
                receive_maximum: Some(0),
                ..Default::default()
            },
        }),
        V5,
    );
    // A password without user name before 5.0.
    let connect = Connect {
        protocol: V4,
        bridge: false,
        clean_start: true,
        keep_alive: 0,
        client_id: "c".into(),
        will: None,
        username: None,
        password: Some(Bytes::from_static(b"p")),
        properties: ConnectProperties::default(),
    };
    invalid(Packet::Connect(Box::new(connect)), V4);
}

#[test]
fn values_a_level_cannot_carry_are_dropped_not_refused() {
    // Properties, will properties and reasons are ignored before 5.0; the
    // same values that fail at 5.0 are not looked at.
    let disconnect = Packet::Disconnect(Disconnect::new(ServerUnavailable));
    assert!(disconnect.encoded_len(V4).is_ok());
    let publish = Packet::Publish(Publish {
        properties: PublishProperties {
            subscription_identifiers: vec![0],
            ..Default::default()
        },
        ..publish(QoS::AtMostOnce, None)
    });
    assert!(publish.encoded_len(V4).is_ok());
    // Maximum QoS 2 is sent as its absence, which means 2 (spec 3.2.2.3.4).
    let connack = Packet::ConnAck(ConnAck {
        session_present: false,
        reason: Success,
        properties: ConnAckProperties {
            maximum_qos: Some(QoS::ExactlyOnce),
            ..Default::default()
        },
    });
    let mut out = BytesMut::new();
    connack.encode(V5, &mut out).unwrap();
    assert_eq!(&out[..], &[0x20, 0x03, 0x00, 0x00, 0x00]);
}
