//! Round trips: encode then decode gives back the same packet, for every
//! packet type at every level (hand-written cases, then proptest), and the
//! decoder never panics on arbitrary or mutated bytes.

mod common;

use std::num::NonZeroU16;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use tern_codec::ReasonCode::*;
use tern_codec::reason::{
    AUTH_REASONS, CONNACK_REASONS, CONNACK_RETURN_CODES, DISCONNECT_REASONS, PUBACK_REASONS,
    PUBREL_REASONS, SUBACK_REASONS, SUBACK_RETURN_CODES, UNSUBACK_REASONS,
};
use tern_codec::*;

use common::*;

fn id(n: u16) -> NonZeroU16 {
    NonZeroU16::new(n).unwrap()
}

fn user(name: &str, value: &str) -> UserProperty {
    UserProperty {
        name: name.into(),
        value: value.into(),
    }
}

fn connect_at(version: ProtocolVersion) -> Connect {
    Connect {
        protocol: version,
        bridge: false,
        clean_start: true,
        keep_alive: 30,
        client_id: "client-1".into(),
        will: None,
        username: None,
        password: None,
        properties: ConnectProperties::default(),
    }
}

#[test]
fn connect_every_level() {
    for version in ALL_VERSIONS {
        let v5 = version == ProtocolVersion::V5;
        let minimal = connect_at(version);
        assert_round_trip(&Packet::Connect(Box::new(minimal.clone())), version);

        let full = Connect {
            clean_start: false,
            keep_alive: 0,
            client_id: "".into(),
            will: Some(LastWill {
                topic: "last/will".into(),
                payload: Bytes::from_static(b"gone"),
                qos: QoS::ExactlyOnce,
                retain: true,
                properties: if v5 {
                    WillProperties {
                        will_delay_interval: Some(5),
                        payload_format_indicator: Some(true),
                        message_expiry_interval: Some(60),
                        content_type: Some("text/plain".into()),
                        response_topic: Some("reply".into()),
                        correlation_data: Some(Bytes::from_static(&[1, 2])),
                        user_properties: vec![user("a", "1"), user("a", "2")],
                    }
                } else {
                    WillProperties::default()
                },
            }),
            username: Some("user".into()),
            password: Some(Bytes::from_static(b"\x00secret\xff")),
            properties: if v5 {
                ConnectProperties {
                    session_expiry_interval: Some(u32::MAX),
                    receive_maximum: Some(10),
                    maximum_packet_size: Some(1024),
                    topic_alias_maximum: Some(5),
                    request_response_information: Some(true),
                    request_problem_information: Some(false),
                    authentication_method: Some("SCRAM-SHA-1".into()),
                    authentication_data: Some(Bytes::from_static(b"data")),
                    user_properties: vec![user("k", "v")],
                }
            } else {
                ConnectProperties::default()
            },
            ..minimal
        };
        // CONNECT is encoded at its own level and decoded at its own level,
        // whatever level the connection is assumed to have.
        for assumed in ALL_VERSIONS {
            let mut buf = BytesMut::new();
            let packet = Packet::Connect(Box::new(full.clone()));
            packet.encode(assumed, &mut buf).unwrap();
            assert_eq!(decode(&mut buf, assumed, MAX), Ok(Some(packet)));
        }
    }
}

#[test]
fn connect_v5_password_without_username() {
    let connect = Connect {
        password: Some(Bytes::from_static(b"token")),
        ..connect_at(ProtocolVersion::V5)
    };
    assert_round_trip(&Packet::Connect(Box::new(connect)), ProtocolVersion::V5);
}

#[test]
fn connack_every_level() {
    for version in ALL_VERSIONS {
        let codes = if version == ProtocolVersion::V5 {
            CONNACK_REASONS
        } else {
            CONNACK_RETURN_CODES
        };
        for &reason in codes {
            let ack = ConnAck {
                session_present: reason == Success && version != ProtocolVersion::V3_1,
                reason,
                properties: ConnAckProperties::default(),
            };
            assert_round_trip(&Packet::ConnAck(ack), version);
        }
    }
    let full = ConnAck {
        session_present: true,
        reason: Success,
        properties: ConnAckProperties {
            session_expiry_interval: Some(0),
            receive_maximum: Some(u16::MAX),
            maximum_qos: Some(QoS::AtLeastOnce),
            retain_available: Some(false),
            maximum_packet_size: Some(1),
            assigned_client_identifier: Some("auto-1".into()),
            topic_alias_maximum: Some(0),
            reason_string: Some("welcome".into()),
            user_properties: vec![user("x", "y")],
            wildcard_subscription_available: Some(true),
            subscription_identifiers_available: Some(false),
            shared_subscription_available: Some(true),
            server_keep_alive: Some(120),
            response_information: Some("resp/".into()),
            server_reference: Some("other:1883".into()),
            authentication_method: Some("m".into()),
            authentication_data: Some(Bytes::new()),
        },
    };
    assert_round_trip(&Packet::ConnAck(full), ProtocolVersion::V5);
}

#[test]
fn connack_v3_maps_other_failures_to_server_unavailable() {
    for version in [ProtocolVersion::V3_1, ProtocolVersion::V3_1_1] {
        for reason in [Banned, ServerBusy, QuotaExceeded, UnspecifiedError] {
            let mut buf = encode(
                &Packet::ConnAck(ConnAck {
                    session_present: false,
                    reason,
                    properties: ConnAckProperties {
                        reason_string: Some("ignored before 5.0".into()),
                        ..Default::default()
                    },
                }),
                version,
            );
            assert_eq!(&buf[..], &[0x20, 0x02, 0x00, 0x03]);
            let Ok(Some(Packet::ConnAck(ack))) = decode(&mut buf, version, MAX) else {
                panic!("no CONNACK");
            };
            assert_eq!(ack.reason, ServerUnavailable);
        }
    }
}

#[test]
fn publish_every_level() {
    for version in ALL_VERSIONS {
        for (qos, packet_id) in [
            (QoS::AtMostOnce, None),
            (QoS::AtLeastOnce, Some(id(1))),
            (QoS::ExactlyOnce, Some(id(u16::MAX))),
        ] {
            for (dup, retain) in [(false, false), (true, true)] {
                let publish = Publish {
                    dup: dup && qos != QoS::AtMostOnce,
                    qos,
                    retain,
                    topic: "a/b/c".into(),
                    packet_id,
                    payload: Bytes::from_static(b"hello"),
                    properties: PublishProperties::default(),
                };
                assert_round_trip(&Packet::Publish(publish), version);
            }
        }
        // Empty payload, and a payload that is the whole rest of the packet.
        let empty = Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: "t".into(),
            packet_id: None,
            payload: Bytes::new(),
            properties: PublishProperties::default(),
        };
        assert_round_trip(&Packet::Publish(empty), version);
    }
    let v5 = Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "".into(), // allowed with a topic alias in 5.0
        packet_id: Some(id(7)),
        payload: Bytes::from(vec![0u8; 300]),
        properties: PublishProperties {
            payload_format_indicator: Some(false),
            message_expiry_interval: Some(10),
            topic_alias: Some(3),
            response_topic: Some("r".into()),
            correlation_data: Some(Bytes::from_static(b"c")),
            user_properties: vec![user("a", "b"), user("a", "b")],
            subscription_identifiers: vec![1, 268_435_455, 1],
            content_type: Some("json".into()),
        },
    };
    assert_round_trip(&Packet::Publish(v5), ProtocolVersion::V5);
}

#[test]
fn pub_ack_family_every_level() {
    type Wrap = fn(PubAck) -> Packet;
    let family: [(Wrap, &[ReasonCode]); 4] = [
        (Packet::PubAck, PUBACK_REASONS),
        (Packet::PubRec, PUBACK_REASONS),
        (Packet::PubRel, PUBREL_REASONS),
        (Packet::PubComp, PUBREL_REASONS),
    ];
    for (wrap, reasons) in family {
        for version in ALL_VERSIONS {
            assert_round_trip(&wrap(PubAck::new(id(42))), version);
        }
        for &reason in reasons {
            for properties in [
                AckProperties::default(),
                AckProperties {
                    reason_string: Some("why".into()),
                    user_properties: vec![user("u", "v")],
                },
            ] {
                let ack = PubAck {
                    packet_id: id(9),
                    reason,
                    properties,
                };
                assert_round_trip(&wrap(ack), ProtocolVersion::V5);
            }
        }
    }
}

#[test]
fn subscribe_family_every_level() {
    for version in ALL_VERSIONS {
        let v5 = version == ProtocolVersion::V5;
        let options = |qos| SubscriptionOptions {
            qos,
            no_local: v5,
            retain_as_published: v5,
            retain_handling: if v5 {
                RetainHandling::DoNotSend
            } else {
                RetainHandling::SendAtSubscribe
            },
        };
        let subscribe = Subscribe {
            packet_id: id(1),
            filters: vec![
                SubscribeFilter {
                    filter: "a/+".into(),
                    options: options(QoS::AtMostOnce),
                },
                SubscribeFilter {
                    filter: "#".into(),
                    options: options(QoS::ExactlyOnce),
                },
            ],
            properties: if v5 {
                SubscribeProperties {
                    subscription_identifier: Some(99),
                    user_properties: vec![user("s", "t")],
                }
            } else {
                SubscribeProperties::default()
            },
        };
        assert_round_trip(&Packet::Subscribe(subscribe), version);

        let table = if v5 {
            SUBACK_REASONS
        } else {
            SUBACK_RETURN_CODES
        };
        let suback = SubAck {
            packet_id: id(1),
            reasons: table.to_vec(),
            properties: AckProperties::default(),
        };
        assert_round_trip(&Packet::SubAck(suback), version);

        let unsubscribe = Unsubscribe {
            packet_id: id(2),
            filters: vec!["a/+".into(), "#".into()],
            properties: UnsubscribeProperties::default(),
        };
        assert_round_trip(&Packet::Unsubscribe(unsubscribe), version);

        let unsuback = UnsubAck {
            packet_id: id(2),
            reasons: if v5 {
                UNSUBACK_REASONS.to_vec()
            } else {
                Vec::new()
            },
            properties: AckProperties::default(),
        };
        assert_round_trip(&Packet::UnsubAck(unsuback), version);
    }
}

#[test]
fn suback_v3_maps_failures_to_0x80() {
    let suback = SubAck {
        packet_id: id(5),
        reasons: vec![GrantedQoS2, TopicFilterInvalid, NotAuthorized, Success],
        properties: AckProperties::default(),
    };
    let buf = encode(&Packet::SubAck(suback), ProtocolVersion::V3_1_1);
    assert_eq!(&buf[..], &[0x90, 0x06, 0x00, 0x05, 0x02, 0x80, 0x80, 0x00]);
}

#[test]
fn unsuback_v3_drops_reasons() {
    let unsuback = UnsubAck {
        packet_id: id(5),
        reasons: vec![NoSubscriptionExisted],
        properties: AckProperties::default(),
    };
    let buf = encode(&Packet::UnsubAck(unsuback), ProtocolVersion::V3_1_1);
    assert_eq!(&buf[..], &[0xB0, 0x02, 0x00, 0x05]);
}

#[test]
fn ping_disconnect_auth() {
    for version in ALL_VERSIONS {
        assert_round_trip(&Packet::PingReq, version);
        assert_round_trip(&Packet::PingResp, version);
        assert_round_trip(&Packet::Disconnect(Disconnect::new(Success)), version);
    }
    for &reason in DISCONNECT_REASONS {
        assert_round_trip(
            &Packet::Disconnect(Disconnect::new(reason)),
            ProtocolVersion::V5,
        );
        let with_props = Disconnect {
            reason,
            properties: DisconnectProperties {
                session_expiry_interval: Some(1),
                reason_string: Some("bye".into()),
                user_properties: vec![user("p", "q")],
                server_reference: Some("elsewhere".into()),
            },
        };
        assert_round_trip(&Packet::Disconnect(with_props), ProtocolVersion::V5);
    }
    for &reason in AUTH_REASONS {
        let auth = Auth {
            reason,
            properties: AuthProperties::default(),
        };
        assert_round_trip(&Packet::Auth(auth), ProtocolVersion::V5);
        let auth = Auth {
            reason,
            properties: AuthProperties {
                authentication_method: Some("SCRAM".into()),
                authentication_data: Some(Bytes::from_static(&[0, 1, 2])),
                reason_string: Some("more".into()),
                user_properties: vec![],
            },
        };
        assert_round_trip(&Packet::Auth(auth), ProtocolVersion::V5);
    }
}

#[test]
fn disconnect_v3_drops_reason_and_properties() {
    let disconnect = Disconnect {
        reason: ServerShuttingDown,
        properties: DisconnectProperties {
            reason_string: Some("x".into()),
            ..Default::default()
        },
    };
    let buf = encode(&Packet::Disconnect(disconnect), ProtocolVersion::V3_1_1);
    assert_eq!(&buf[..], &[0xE0, 0x00]);
}

#[test]
fn large_remaining_length() {
    // A remaining length that needs three varint bytes.
    let publish = Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "big".into(),
        packet_id: None,
        payload: Bytes::from(vec![0xAB; 20_000]),
        properties: PublishProperties::default(),
    };
    for version in ALL_VERSIONS {
        assert_round_trip(&Packet::Publish(publish.clone()), version);
    }
}

#[test]
fn encode_appends_after_existing_bytes() {
    let mut out = BytesMut::from(&b"xyz"[..]);
    Packet::PingReq
        .encode(ProtocolVersion::V3_1_1, &mut out)
        .unwrap();
    assert_eq!(&out[..], b"xyz\xC0\x00");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Every packet a level can carry survives encode → decode unchanged.
    #[test]
    fn arbitrary_packets_round_trip((version, packet) in versioned_packet()) {
        let mut buf = encode(&packet, version);
        let decoded = decode(&mut buf, version, MAX);
        prop_assert_eq!(decoded, Ok(Some(packet)));
        prop_assert!(buf.is_empty());
    }

    /// Several packets back to back come out one at a time, in order.
    #[test]
    fn packet_streams_split_correctly(
        (version, packets) in proptest::sample::select(&ALL_VERSIONS[..])
            .prop_flat_map(|v| proptest::collection::vec(packet(v), 1..6).prop_map(move |p| (v, p)))
    ) {
        let mut buf = BytesMut::new();
        for packet in &packets {
            packet.encode(version, &mut buf).unwrap();
        }
        for packet in &packets {
            prop_assert_eq!(decode(&mut buf, version, MAX), Ok(Some(packet.clone())));
        }
        prop_assert_eq!(decode(&mut buf, version, MAX), Ok(None));
    }

    /// Every strict prefix of an encoding is "not yet", and consumes nothing.
    #[test]
    fn arbitrary_prefixes_wait((version, packet) in versioned_packet()) {
        let full = encode(&packet, version);
        for end in 0..full.len() {
            let mut buf = BytesMut::from(&full[..end]);
            prop_assert_eq!(decode(&mut buf, version, MAX), Ok(None));
            prop_assert_eq!(buf.len(), end);
        }
    }

    /// Arbitrary bytes never panic the decoder, decoded repeatedly.
    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..256),
        max in 0usize..512,
    ) {
        for version in ALL_VERSIONS {
            decode_all(&bytes, version, max);
        }
    }

    /// Valid packets with a byte changed, or cut short, never panic either;
    /// whatever still decodes re-encodes to itself.
    #[test]
    fn mutated_packets_never_panic(
        (version, packet) in versioned_packet(),
        index in any::<proptest::sample::Index>(),
        value in any::<u8>(),
        cut in any::<proptest::sample::Index>(),
    ) {
        let mut bytes = encode(&packet, version).to_vec();
        let at = index.index(bytes.len());
        bytes[at] = value;
        decode_all(&bytes, version, MAX);
        bytes.truncate(cut.index(bytes.len() + 1));
        decode_all(&bytes, version, MAX);
    }
}
