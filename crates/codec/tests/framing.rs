//! Framing: incremental decoding from a buffer that fills a little at a
//! time, what is consumed when, and the size limit checked from the header.

mod common;

use std::num::NonZeroU16;

use bytes::{Bytes, BytesMut};
use tern_codec::*;

use common::{ALL_VERSIONS, MAX, encode};

fn samples(version: ProtocolVersion) -> Vec<Packet> {
    let publish = |len: usize| {
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "a/b".into(),
            packet_id: NonZeroU16::new(1),
            payload: Bytes::from(vec![7u8; len]),
            properties: PublishProperties::default(),
        })
    };
    vec![
        Packet::PingReq,
        Packet::Disconnect(Disconnect::new(ReasonCode::Success)),
        Packet::PubAck(PubAck::new(NonZeroU16::MIN)),
        Packet::Connect(Box::new(Connect {
            protocol: version,
            bridge: false,
            clean_start: true,
            keep_alive: 60,
            client_id: "c".into(),
            will: None,
            username: Some("u".into()),
            password: Some(Bytes::from_static(b"p")),
            properties: ConnectProperties::default(),
        })),
        // One-, two- and three-byte remaining lengths.
        publish(10),
        publish(200),
        publish(17_000),
    ]
}

#[test]
fn every_prefix_waits_and_consumes_nothing() {
    for version in ALL_VERSIONS {
        for packet in samples(version) {
            let full = encode(&packet, version);
            for end in 0..full.len() {
                let mut buf = BytesMut::from(&full[..end]);
                assert_eq!(
                    decode(&mut buf, version, MAX),
                    Ok(None),
                    "{end} bytes of {packet:?}"
                );
                assert_eq!(&buf[..], &full[..end], "consumed");
            }
        }
    }
}

#[test]
fn byte_at_a_time_stream() {
    // Feed a stream of packets one byte at a time, as a slow socket would.
    for version in ALL_VERSIONS {
        let packets = samples(version);
        let mut stream = BytesMut::new();
        for packet in &packets {
            packet.encode(version, &mut stream).unwrap();
        }
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        for byte in stream.iter() {
            buf.extend_from_slice(&[*byte]);
            while let Some(packet) = decode(&mut buf, version, MAX).unwrap() {
                decoded.push(packet);
            }
        }
        assert_eq!(decoded, packets);
        assert!(buf.is_empty());
    }
}

#[test]
fn a_whole_packet_is_taken_and_the_rest_left() {
    let mut buf = BytesMut::from(&[0xC0, 0x00, 0xD0][..]);
    assert_eq!(
        decode(&mut buf, ProtocolVersion::V3_1_1, MAX),
        Ok(Some(Packet::PingReq))
    );
    assert_eq!(&buf[..], &[0xD0]);
    assert_eq!(decode(&mut buf, ProtocolVersion::V3_1_1, MAX), Ok(None));
    assert_eq!(&buf[..], &[0xD0]);
}

#[test]
fn oversized_is_refused_from_the_header() {
    // A PUBLISH declaring 1 MB; the limit is 1 KB; five bytes have arrived.
    let mut buf = BytesMut::from(&[0x30, 0x80, 0x80, 0x40, 0x00][..]);
    assert_eq!(
        decode(&mut buf, ProtocolVersion::V5, 1024),
        Err(DecodeError::PacketTooLarge {
            size: 1_048_580,
            max: 1024
        })
    );
    assert_eq!(buf.len(), 5);
    // Even before any body byte.
    let mut buf = BytesMut::from(&[0x30, 0x80, 0x80, 0x40][..]);
    assert!(matches!(
        decode(&mut buf, ProtocolVersion::V5, 1024),
        Err(DecodeError::PacketTooLarge { .. })
    ));
}

#[test]
fn header_errors_consume_nothing_body_errors_take_the_packet() {
    let mut buf = BytesMut::from(&[0x60, 0x02, 0x00, 0x01][..]);
    assert!(decode(&mut buf, ProtocolVersion::V3_1_1, MAX).is_err());
    assert_eq!(buf.len(), 4);
    let mut buf = BytesMut::from(&[0x40, 0x02, 0x00, 0x00, 0xC0, 0x00][..]);
    assert_eq!(
        decode(&mut buf, ProtocolVersion::V3_1_1, MAX),
        Err(DecodeError::ZeroPacketId)
    );
    assert_eq!(&buf[..], &[0xC0, 0x00]);
}

#[test]
fn empty_buffer_waits() {
    for version in ALL_VERSIONS {
        let mut buf = BytesMut::new();
        assert_eq!(decode(&mut buf, version, 0), Ok(None));
    }
}

/// `frame_size` tells a packet's whole size as soon as its Remaining Length
/// is complete, for every sample and every prefix of it.
#[test]
fn frame_size_is_known_once_the_length_is() {
    for version in ALL_VERSIONS {
        for packet in samples(version) {
            let bytes = encode(&packet, version);
            let length_end = 1 + bytes[1..].iter().position(|b| b & 0x80 == 0).unwrap() + 1;
            for cut in 0..=bytes.len() {
                let expected = (cut >= length_end).then_some(bytes.len());
                assert_eq!(
                    frame_size(&bytes[..cut]),
                    expected,
                    "{packet:?} cut at {cut}"
                );
            }
        }
    }
    // A malformed Remaining Length (a fifth continuation byte) has no size.
    assert_eq!(frame_size(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]), None);
}

/// `connect_level` reads a CONNECT's protocol level from any prefix that
/// holds it (3.1's longer protocol name included), and nothing from a shorter
/// prefix or another packet.
#[test]
fn connect_level_is_read_from_a_prefix() {
    for version in ALL_VERSIONS {
        for packet in samples(version) {
            let bytes = encode(&packet, version);
            let is_connect = matches!(packet, Packet::Connect(_));
            let level = match version {
                ProtocolVersion::V3_1 => 3,
                ProtocolVersion::V3_1_1 => 4,
                ProtocolVersion::V5 => 5,
            };
            // Fixed header (2 bytes for these small samples), name length,
            // name ("MQIsdp" in 3.1, "MQTT" after), level.
            let name_len = if version == ProtocolVersion::V3_1 {
                6
            } else {
                4
            };
            let level_at = 2 + 2 + name_len;
            for cut in 0..=bytes.len() {
                let expected = (is_connect && cut > level_at).then_some(level);
                assert_eq!(
                    connect_level(&bytes[..cut]),
                    expected,
                    "{packet:?} cut at {cut}"
                );
            }
        }
    }
}
