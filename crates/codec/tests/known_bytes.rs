//! Known bytes: packets written out by hand from the spec's field layouts,
//! checked in both directions (decode gives the packet, encode gives the
//! bytes), plus the non-canonical forms the decoder must also accept.

mod common;

use std::num::NonZeroU16;

use bytes::{Bytes, BytesMut};
use tern_codec::ReasonCode::*;
use tern_codec::*;

use common::MAX;

fn id(n: u16) -> NonZeroU16 {
    NonZeroU16::new(n).unwrap()
}

/// `bytes` decodes to `packet` at `version`, and `packet` encodes to `bytes`.
fn both_ways(bytes: &[u8], version: ProtocolVersion, packet: Packet) {
    let mut buf = BytesMut::from(bytes);
    assert_eq!(decode(&mut buf, version, MAX), Ok(Some(packet.clone())));
    assert!(buf.is_empty());
    let mut out = BytesMut::new();
    packet.encode(version, &mut out).unwrap();
    assert_eq!(&out[..], bytes, "encoding of {packet:?}");
}

/// `bytes` decodes to `packet` (a valid but not the shortest form).
fn decodes_to(bytes: &[u8], version: ProtocolVersion, packet: Packet) {
    let mut buf = BytesMut::from(bytes);
    assert_eq!(decode(&mut buf, version, MAX), Ok(Some(packet)));
    assert!(buf.is_empty());
}

#[test]
fn connect_3_1_1() {
    #[rustfmt::skip]
    let bytes = [
        0x10, 27,                           // CONNECT, remaining length
        0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name
        0x04,                               // level 4
        0xC2,                               // user name, password, clean session
        0x00, 0x3C,                         // keep alive 60
        0x00, 0x03, b'a', b'b', b'c',       // client id
        0x00, 0x04, b'u', b's', b'e', b'r', // user name
        0x00, 0x04, b'p', b'a', b's', b's', // password
    ];
    let connect = Connect {
        protocol: ProtocolVersion::V3_1_1,
        bridge: false,
        clean_start: true,
        keep_alive: 60,
        client_id: "abc".into(),
        will: None,
        username: Some("user".into()),
        password: Some(Bytes::from_static(b"pass")),
        properties: ConnectProperties::default(),
    };
    // Decoded at its own level whatever the connection's assumed level is.
    for version in common::ALL_VERSIONS {
        both_ways(&bytes, version, Packet::Connect(Box::new(connect.clone())));
    }
}

/// Mosquitto's bridge flag: level 0x84 is 3.1.1 from a bridge; 0x85 is no
/// level at all (MQTT 5 has No Local instead).
#[test]
fn connect_with_mosquittos_bridge_flag() {
    #[rustfmt::skip]
    let bytes = [
        0x10, 15,
        0x00, 0x04, b'M', b'Q', b'T', b'T',
        0x84,                               // level 4, bridge flag
        0x00,
        0x00, 0x3C,
        0x00, 0x03, b'a', b'b', b'c',
    ];
    let connect = Connect {
        protocol: ProtocolVersion::V3_1_1,
        bridge: true,
        clean_start: false,
        keep_alive: 60,
        client_id: "abc".into(),
        will: None,
        username: None,
        password: None,
        properties: ConnectProperties::default(),
    };
    both_ways(
        &bytes,
        ProtocolVersion::V3_1_1,
        Packet::Connect(Box::new(connect)),
    );
    let mut v5 = bytes;
    v5[8] = 0x85;
    assert!(matches!(
        tern_codec::decode(
            &mut bytes::BytesMut::from(&v5[..]),
            ProtocolVersion::V5,
            1024
        ),
        Err(tern_codec::DecodeError::UnsupportedProtocolVersion(0x85))
    ));
}

#[test]
fn connect_3_1_1_with_will() {
    #[rustfmt::skip]
    let bytes = [
        0x10, 22,
        0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04,
        0x2C,                               // will retain, will QoS 1, will flag
        0x00, 0x0A,
        0x00, 0x01, b'c',
        0x00, 0x03, b'w', b'/', b't',       // will topic
        0x00, 0x02, b'b', b'y',             // will payload
    ];
    let connect = Connect {
        protocol: ProtocolVersion::V3_1_1,
        bridge: false,
        clean_start: false,
        keep_alive: 10,
        client_id: "c".into(),
        will: Some(LastWill {
            topic: "w/t".into(),
            payload: Bytes::from_static(b"by"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: WillProperties::default(),
        }),
        username: None,
        password: None,
        properties: ConnectProperties::default(),
    };
    both_ways(
        &bytes,
        ProtocolVersion::V3_1_1,
        Packet::Connect(Box::new(connect)),
    );
}

#[test]
fn connect_3_1() {
    #[rustfmt::skip]
    let bytes = [
        0x10, 17,
        0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', // 3.1 protocol name
        0x03,                                           // level 3
        0x02, 0x00, 0x3C,
        0x00, 0x03, b'a', b'b', b'c',
    ];
    let connect = Connect {
        protocol: ProtocolVersion::V3_1,
        bridge: false,
        clean_start: true,
        keep_alive: 60,
        client_id: "abc".into(),
        will: None,
        username: None,
        password: None,
        properties: ConnectProperties::default(),
    };
    both_ways(
        &bytes,
        ProtocolVersion::V3_1_1,
        Packet::Connect(Box::new(connect)),
    );
}

#[test]
fn connect_5() {
    #[rustfmt::skip]
    let bytes = [
        0x10, 35,
        0x00, 0x04, b'M', b'Q', b'T', b'T',
        0x05,                               // level 5
        0x06,                               // will flag, clean start
        0x00, 0x3C,
        0x08,                               // property length
        0x11, 0x00, 0x00, 0x00, 0x0A,       // Session Expiry Interval 10
        0x21, 0x00, 0x14,                   // Receive Maximum 20
        0x00, 0x03, b'a', b'b', b'c',
        0x05,                               // will property length
        0x18, 0x00, 0x00, 0x00, 0x05,       // Will Delay Interval 5
        0x00, 0x01, b'w',                   // will topic
        0x00, 0x00,                         // empty will payload
    ];
    assert_eq!(bytes.len(), 2 + 35);
    let connect = Connect {
        protocol: ProtocolVersion::V5,
        bridge: false,
        clean_start: true,
        keep_alive: 60,
        client_id: "abc".into(),
        will: Some(LastWill {
            topic: "w".into(),
            payload: Bytes::new(),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: WillProperties {
                will_delay_interval: Some(5),
                ..Default::default()
            },
        }),
        username: None,
        password: None,
        properties: ConnectProperties {
            session_expiry_interval: Some(10),
            receive_maximum: Some(20),
            ..Default::default()
        },
    };
    // Decoded as 5.0 even on a connection assumed to be 3.1.1.
    both_ways(
        &bytes,
        ProtocolVersion::V3_1_1,
        Packet::Connect(Box::new(connect)),
    );
}

#[test]
fn connack() {
    let ack = |session_present, reason| {
        Packet::ConnAck(ConnAck {
            session_present,
            reason,
            properties: ConnAckProperties::default(),
        })
    };
    both_ways(
        &[0x20, 0x02, 0x01, 0x00],
        ProtocolVersion::V3_1_1,
        ack(true, Success),
    );
    both_ways(
        &[0x20, 0x02, 0x00, 0x05],
        ProtocolVersion::V3_1_1,
        ack(false, NotAuthorized),
    );
    both_ways(
        &[0x20, 0x02, 0x00, 0x01],
        ProtocolVersion::V3_1,
        ack(false, UnsupportedProtocolVersion),
    );
    both_ways(
        &[0x20, 0x03, 0x00, 0x00, 0x00],
        ProtocolVersion::V5,
        ack(false, Success),
    );
    both_ways(
        &[0x20, 0x03, 0x00, 0x8A, 0x00],
        ProtocolVersion::V5,
        ack(false, Banned),
    );
    #[rustfmt::skip]
    let with_props = [
        0x20, 0x08, 0x01, 0x00,
        0x05,
        0x21, 0x00, 0x0A,                   // Receive Maximum 10
        0x24, 0x01,                         // Maximum QoS 1
    ];
    both_ways(
        &with_props,
        ProtocolVersion::V5,
        Packet::ConnAck(ConnAck {
            session_present: true,
            reason: Success,
            properties: ConnAckProperties {
                receive_maximum: Some(10),
                maximum_qos: Some(QoS::AtLeastOnce),
                ..Default::default()
            },
        }),
    );
}

#[test]
fn publish() {
    let publish = |qos, packet_id: Option<u16>, topic: &str, payload: &'static [u8]| Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id: packet_id.map(id),
        payload: Bytes::from_static(payload),
        properties: PublishProperties::default(),
    };
    #[rustfmt::skip]
    let qos1 = [
        0x32, 0x09,                         // PUBLISH QoS 1
        0x00, 0x03, b'a', b'/', b'b',       // topic
        0x00, 0x0A,                         // packet id 10
        b'h', b'i',                         // payload
    ];
    both_ways(
        &qos1,
        ProtocolVersion::V3_1_1,
        Packet::Publish(publish(QoS::AtLeastOnce, Some(10), "a/b", b"hi")),
    );
    // QoS 0, retained, DUP clear; no packet id.
    both_ways(
        &[0x31, 0x04, 0x00, 0x01, b't', b'x'],
        ProtocolVersion::V3_1,
        Packet::Publish(Publish {
            retain: true,
            ..publish(QoS::AtMostOnce, None, "t", b"x")
        }),
    );
    // QoS 2 with DUP.
    both_ways(
        &[0x3C, 0x05, 0x00, 0x01, b't', 0x12, 0x34],
        ProtocolVersion::V3_1_1,
        Packet::Publish(Publish {
            dup: true,
            ..publish(QoS::ExactlyOnce, Some(0x1234), "t", b"")
        }),
    );
    #[rustfmt::skip]
    let v5 = [
        0x30, 0x08,
        0x00, 0x00,                         // empty topic: the alias names it
        0x03, 0x23, 0x00, 0x05,             // Topic Alias 5
        b'h', b'i',
    ];
    both_ways(
        &v5,
        ProtocolVersion::V5,
        Packet::Publish(Publish {
            properties: PublishProperties {
                topic_alias: Some(5),
                ..Default::default()
            },
            ..publish(QoS::AtMostOnce, None, "", b"hi")
        }),
    );
    // 5.0 with no properties still has a zero property length.
    both_ways(
        &[0x30, 0x05, 0x00, 0x01, b't', 0x00, b'p'],
        ProtocolVersion::V5,
        Packet::Publish(publish(QoS::AtMostOnce, None, "t", b"p")),
    );
}

#[test]
fn pub_ack_family() {
    let ack = |reason| PubAck {
        packet_id: id(10),
        reason,
        properties: AckProperties::default(),
    };
    for version in common::ALL_VERSIONS {
        both_ways(
            &[0x40, 0x02, 0x00, 0x0A],
            version,
            Packet::PubAck(ack(Success)),
        );
        both_ways(
            &[0x50, 0x02, 0x00, 0x0A],
            version,
            Packet::PubRec(ack(Success)),
        );
        both_ways(
            &[0x62, 0x02, 0x00, 0x0A],
            version,
            Packet::PubRel(ack(Success)),
        );
        both_ways(
            &[0x70, 0x02, 0x00, 0x0A],
            version,
            Packet::PubComp(ack(Success)),
        );
    }
    let v5 = ProtocolVersion::V5;
    // Reason only (remaining length 3), then reason and properties.
    both_ways(
        &[0x40, 0x03, 0x00, 0x0A, 0x10],
        v5,
        Packet::PubAck(ack(NoMatchingSubscribers)),
    );
    both_ways(
        &[0x62, 0x03, 0x00, 0x0A, 0x92],
        v5,
        Packet::PubRel(ack(PacketIdentifierNotFound)),
    );
    both_ways(
        &[0x50, 0x08, 0x00, 0x0A, 0x80, 0x04, 0x1F, 0x00, 0x01, b'e'],
        v5,
        Packet::PubRec(PubAck {
            properties: AckProperties {
                reason_string: Some("e".into()),
                user_properties: vec![],
            },
            ..ack(UnspecifiedError)
        }),
    );
    // Longer forms than needed are valid too.
    decodes_to(
        &[0x40, 0x03, 0x00, 0x0A, 0x00],
        v5,
        Packet::PubAck(ack(Success)),
    );
    decodes_to(
        &[0x70, 0x04, 0x00, 0x0A, 0x00, 0x00],
        v5,
        Packet::PubComp(ack(Success)),
    );
    decodes_to(
        &[0x40, 0x04, 0x00, 0x0A, 0x10, 0x00],
        v5,
        Packet::PubAck(ack(NoMatchingSubscribers)),
    );
}

#[test]
fn subscribe() {
    #[rustfmt::skip]
    let v4 = [
        0x82, 0x0E,
        0x00, 0x01,                         // packet id 1
        0x00, 0x03, b'a', b'/', b'b', 0x01, // a/b at QoS 1
        0x00, 0x03, b'c', b'/', b'#', 0x02, // c/# at QoS 2
    ];
    let filter = |f: &str, qos| SubscribeFilter {
        filter: f.into(),
        options: SubscriptionOptions {
            qos,
            ..Default::default()
        },
    };
    both_ways(
        &v4,
        ProtocolVersion::V3_1_1,
        Packet::Subscribe(Subscribe {
            packet_id: id(1),
            filters: vec![
                filter("a/b", QoS::AtLeastOnce),
                filter("c/#", QoS::ExactlyOnce),
            ],
            properties: SubscribeProperties::default(),
        }),
    );
    #[rustfmt::skip]
    let v5 = [
        0x82, 0x0B,
        0x00, 0x01,
        0x02, 0x0B, 0x05,                   // Subscription Identifier 5
        0x00, 0x03, b'a', b'/', b'#',
        0x2D,                               // QoS 1, No Local, RAP, Retain Handling 2
    ];
    both_ways(
        &v5,
        ProtocolVersion::V5,
        Packet::Subscribe(Subscribe {
            packet_id: id(1),
            filters: vec![SubscribeFilter {
                filter: "a/#".into(),
                options: SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: RetainHandling::DoNotSend,
                },
            }],
            properties: SubscribeProperties {
                subscription_identifier: Some(5),
                user_properties: vec![],
            },
        }),
    );
}

#[test]
fn suback() {
    both_ways(
        &[0x90, 0x05, 0x00, 0x01, 0x00, 0x01, 0x80],
        ProtocolVersion::V3_1_1,
        Packet::SubAck(SubAck {
            packet_id: id(1),
            reasons: vec![Success, GrantedQoS1, UnspecifiedError],
            properties: AckProperties::default(),
        }),
    );
    both_ways(
        &[0x90, 0x06, 0x00, 0x01, 0x00, 0x02, 0x8F, 0xA2],
        ProtocolVersion::V5,
        Packet::SubAck(SubAck {
            packet_id: id(1),
            reasons: vec![
                GrantedQoS2,
                TopicFilterInvalid,
                WildcardSubscriptionsNotSupported,
            ],
            properties: AckProperties::default(),
        }),
    );
}

#[test]
fn unsubscribe_and_unsuback() {
    both_ways(
        &[0xA2, 0x05, 0x00, 0x02, 0x00, 0x01, b'a'],
        ProtocolVersion::V3_1_1,
        Packet::Unsubscribe(Unsubscribe {
            packet_id: id(2),
            filters: vec!["a".into()],
            properties: UnsubscribeProperties::default(),
        }),
    );
    both_ways(
        &[0xA2, 0x06, 0x00, 0x02, 0x00, 0x00, 0x01, b'a'],
        ProtocolVersion::V5,
        Packet::Unsubscribe(Unsubscribe {
            packet_id: id(2),
            filters: vec!["a".into()],
            properties: UnsubscribeProperties::default(),
        }),
    );
    both_ways(
        &[0xB0, 0x02, 0x00, 0x02],
        ProtocolVersion::V3_1_1,
        Packet::UnsubAck(UnsubAck {
            packet_id: id(2),
            reasons: vec![],
            properties: AckProperties::default(),
        }),
    );
    both_ways(
        &[0xB0, 0x05, 0x00, 0x02, 0x00, 0x11, 0x00],
        ProtocolVersion::V5,
        Packet::UnsubAck(UnsubAck {
            packet_id: id(2),
            reasons: vec![NoSubscriptionExisted, Success],
            properties: AckProperties::default(),
        }),
    );
}

#[test]
fn ping() {
    for version in common::ALL_VERSIONS {
        both_ways(&[0xC0, 0x00], version, Packet::PingReq);
        both_ways(&[0xD0, 0x00], version, Packet::PingResp);
    }
}

#[test]
fn disconnect() {
    let v5 = ProtocolVersion::V5;
    both_ways(
        &[0xE0, 0x00],
        ProtocolVersion::V3_1_1,
        Packet::Disconnect(Disconnect::new(Success)),
    );
    // The MQTT 5 short form: remaining length 0 is Normal disconnection.
    both_ways(
        &[0xE0, 0x00],
        v5,
        Packet::Disconnect(Disconnect::new(Success)),
    );
    both_ways(
        &[0xE0, 0x01, 0x04],
        v5,
        Packet::Disconnect(Disconnect::new(DisconnectWithWillMessage)),
    );
    // The session-taken-over DISCONNECT of spec examples (e0 02 8e 00).
    decodes_to(
        &[0xE0, 0x02, 0x8E, 0x00],
        v5,
        Packet::Disconnect(Disconnect::new(SessionTakenOver)),
    );
    both_ways(
        &[0xE0, 0x07, 0x8B, 0x05, 0x1F, 0x00, 0x02, b'b', b'y'],
        v5,
        Packet::Disconnect(Disconnect {
            reason: ServerShuttingDown,
            properties: DisconnectProperties {
                reason_string: Some("by".into()),
                ..Default::default()
            },
        }),
    );
}

#[test]
fn auth() {
    let v5 = ProtocolVersion::V5;
    let auth = |reason, properties| Packet::Auth(Auth { reason, properties });
    both_ways(&[0xF0, 0x00], v5, auth(Success, AuthProperties::default()));
    // AUTH always writes the property length after a reason (spec 3.15.2.1).
    both_ways(
        &[0xF0, 0x02, 0x19, 0x00],
        v5,
        auth(ReAuthenticate, AuthProperties::default()),
    );
    decodes_to(
        &[0xF0, 0x01, 0x18],
        v5,
        auth(ContinueAuthentication, AuthProperties::default()),
    );
    #[rustfmt::skip]
    let bytes = [
        0xF0, 0x0C, 0x18, 0x0A,
        0x15, 0x00, 0x03, b'a', b'b', b'c', // Authentication Method
        0x16, 0x00, 0x01, 0xFF,             // Authentication Data
    ];
    both_ways(
        &bytes,
        v5,
        auth(
            ContinueAuthentication,
            AuthProperties {
                authentication_method: Some("abc".into()),
                authentication_data: Some(Bytes::from_static(&[0xFF])),
                ..Default::default()
            },
        ),
    );
}

#[test]
fn user_properties_keep_order_and_repeat() {
    #[rustfmt::skip]
    let bytes = [
        0x40, 0x12, 0x00, 0x01, 0x00,
        0x0E,
        0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'2',
        0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'1',
    ];
    both_ways(
        &bytes,
        ProtocolVersion::V5,
        Packet::PubAck(PubAck {
            packet_id: id(1),
            reason: Success,
            properties: AckProperties {
                reason_string: None,
                user_properties: vec![
                    UserProperty {
                        name: "k".into(),
                        value: "2".into(),
                    },
                    UserProperty {
                        name: "k".into(),
                        value: "1".into(),
                    },
                ],
            },
        }),
    );
}

#[test]
fn decoded_strings_share_the_receive_buffer() {
    let mut buf = BytesMut::from(&[0x30, 0x06, 0x00, 0x01, b't', b'a', b'b', b'c'][..]);
    let Ok(Some(Packet::Publish(publish))) = decode(&mut buf, ProtocolVersion::V3_1_1, MAX) else {
        panic!("no PUBLISH");
    };
    // Topic and payload are adjacent slices of one allocation: no copies.
    let topic_end = publish.topic.as_bytes().as_ptr() as usize + publish.topic.len();
    assert_eq!(topic_end, publish.payload.as_ptr() as usize);
}

// ---- Reason-code tables against the spec -------------------------------------------

/// The one reason code a decoded acknowledgement carries.
fn reason_of(packet: &Packet) -> ReasonCode {
    match packet {
        Packet::ConnAck(ack) => ack.reason,
        Packet::PubAck(ack) | Packet::PubRec(ack) | Packet::PubRel(ack) | Packet::PubComp(ack) => {
            ack.reason
        }
        Packet::SubAck(SubAck { reasons, .. }) | Packet::UnsubAck(UnsubAck { reasons, .. }) => {
            assert_eq!(reasons.len(), 1, "{packet:?}");
            reasons[0]
        }
        Packet::Disconnect(disconnect) => disconnect.reason,
        Packet::Auth(auth) => auth.reason,
        other => panic!("no reason code in {other:?}"),
    }
}

/// Sets the one reason code of an acknowledgement.
fn set_reason(packet: &mut Packet, reason: ReasonCode) {
    match packet {
        Packet::ConnAck(ack) => ack.reason = reason,
        Packet::PubAck(ack) | Packet::PubRec(ack) | Packet::PubRel(ack) | Packet::PubComp(ack) => {
            ack.reason = reason;
        }
        Packet::SubAck(SubAck { reasons, .. }) | Packet::UnsubAck(UnsubAck { reasons, .. }) => {
            *reasons = vec![reason];
        }
        Packet::Disconnect(disconnect) => disconnect.reason = reason,
        Packet::Auth(auth) => auth.reason = reason,
        other => panic!("no reason code in {other:?}"),
    }
}

/// Checks one packet type's reason codes against the values the spec lists.
///
/// `frame(byte)` is the packet with `byte` as its reason or return code, and
/// `spec` pairs each byte the spec allows with the value of the MQTT 5 code
/// it decodes to (the same value from 5.0 on). Every byte 0x00..=0xFF must
/// decode to that code or be refused as an invalid reason code; at level 5
/// every known code must encode exactly when the spec allows it; and `table`,
/// the codec's public table, must hold exactly those codes.
fn check_reasons(
    version: ProtocolVersion,
    frame: impl Fn(u8) -> Vec<u8>,
    spec: &[(u8, u8)],
    table: &[ReasonCode],
) {
    for byte in 0..=u8::MAX {
        let mut buf = BytesMut::from(&frame(byte)[..]);
        let decoded = decode(&mut buf, version, MAX);
        match spec.iter().find(|&&(wire, _)| wire == byte) {
            Some(&(_, value)) => {
                let Ok(Some(packet)) = decoded else {
                    panic!("{byte:#04x} at {version:?}: {decoded:?}");
                };
                assert_eq!(
                    reason_of(&packet) as u8,
                    value,
                    "{byte:#04x} at {version:?}"
                );
            }
            None => assert_eq!(
                decoded,
                Err(DecodeError::InvalidReasonCode(byte)),
                "{byte:#04x} at {version:?}"
            ),
        }
    }

    // Before 5.0 the encoder maps a code it cannot carry instead of refusing it.
    if version == ProtocolVersion::V5 {
        let mut buf = BytesMut::from(&frame(0x00)[..]);
        let mut packet = decode(&mut buf, version, MAX).unwrap().unwrap();
        for reason in (0..=u8::MAX).filter_map(|v| ReasonCode::try_from(v).ok()) {
            set_reason(&mut packet, reason);
            let allowed = spec.iter().any(|&(_, value)| value == reason as u8);
            let mut out = BytesMut::new();
            match packet.encode(version, &mut out) {
                Ok(()) => {
                    assert!(allowed, "{reason:?} encoded in {packet:?}");
                    assert_eq!(decode(&mut out, version, MAX), Ok(Some(packet.clone())));
                }
                Err(error) => {
                    assert!(!allowed, "{reason:?} refused: {error:?}");
                    assert!(matches!(error, EncodeError::InvalidValue(_)), "{error:?}");
                }
            }
        }
    }

    let mut in_table: Vec<u8> = table.iter().map(|&code| code as u8).collect();
    let mut in_spec: Vec<u8> = spec.iter().map(|&(_, value)| value).collect();
    in_table.sort_unstable();
    in_spec.sort_unstable();
    assert_eq!(in_table, in_spec, "table for {:#04x}", frame(0)[0]);
}

/// Reason codes the same on the wire as in the model (every MQTT 5 table).
fn same(values: &[u8]) -> Vec<(u8, u8)> {
    values.iter().map(|&v| (v, v)).collect()
}

#[test]
fn reason_code_tables_follow_the_spec() {
    use ProtocolVersion::{V3_1, V3_1_1, V5};
    use tern_codec::reason::*;

    // Spec 3.2.2.2.
    #[rustfmt::skip]
    let connack = same(&[
        0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A,
        0x8C, 0x90, 0x95, 0x97, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
    ]);
    let frame = |b| vec![0x20, 0x03, 0x00, b, 0x00];
    check_reasons(V5, frame, &connack, CONNACK_REASONS);

    // 3.1.1 spec 3.2.2.3, table 3.1: return codes 0 to 5, modelled as the
    // MQTT 5 codes of the same meaning (see `ConnAck`).
    #[rustfmt::skip]
    let return_codes = [
        (0x00, 0x00), (0x01, 0x84), (0x02, 0x85), (0x03, 0x88), (0x04, 0x86), (0x05, 0x87),
    ];
    for version in [V3_1, V3_1_1] {
        let frame = |b| vec![0x20, 0x02, 0x00, b];
        check_reasons(version, frame, &return_codes, CONNACK_RETURN_CODES);
    }

    // Spec 3.4.2.1 (PUBACK) and 3.5.2.1 (PUBREC).
    let puback = same(&[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99]);
    for first in [0x40, 0x50] {
        let frame = |b| vec![first, 0x03, 0x00, 0x01, b];
        check_reasons(V5, frame, &puback, PUBACK_REASONS);
    }

    // Spec 3.6.2.1 (PUBREL) and 3.7.2.1 (PUBCOMP).
    let pubrel = same(&[0x00, 0x92]);
    for first in [0x62, 0x70] {
        let frame = |b| vec![first, 0x03, 0x00, 0x01, b];
        check_reasons(V5, frame, &pubrel, PUBREL_REASONS);
    }

    // Spec 3.9.3.
    #[rustfmt::skip]
    let suback = same(&[
        0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
    ]);
    let frame = |b| vec![0x90, 0x04, 0x00, 0x01, 0x00, b];
    check_reasons(V5, frame, &suback, SUBACK_REASONS);

    // 3.1.1 spec 3.9.3: granted QoS 0, 1, 2 or failure.
    let suback_v4 = same(&[0x00, 0x01, 0x02, 0x80]);
    let frame = |b| vec![0x90, 0x03, 0x00, 0x01, b];
    check_reasons(V3_1_1, frame, &suback_v4, SUBACK_RETURN_CODES);

    // Spec 3.11.3.
    let unsuback = same(&[0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91]);
    let frame = |b| vec![0xB0, 0x04, 0x00, 0x01, 0x00, b];
    check_reasons(V5, frame, &unsuback, UNSUBACK_REASONS);

    // Spec 3.14.2.1.
    #[rustfmt::skip]
    let disconnect = same(&[
        0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F,
        0x90, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D,
        0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
    ]);
    let frame = |b| vec![0xE0, 0x01, b];
    check_reasons(V5, frame, &disconnect, DISCONNECT_REASONS);

    // Spec 3.15.2.1.
    let auth = same(&[0x00, 0x18, 0x19]);
    let frame = |b| vec![0xF0, 0x02, b, 0x00];
    check_reasons(V5, frame, &auth, AUTH_REASONS);
}
