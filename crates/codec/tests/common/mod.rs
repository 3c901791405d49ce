//! Shared test helpers: proptest strategies for packets that a given protocol
//! level can carry, and round-trip helpers.
//!
//! The strategies draw reason codes from the codec's own tables
//! (`tern_codec::reason`); `known_bytes.rs` checks those tables, byte by
//! byte, against the values the spec lists.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::num::NonZeroU16;

use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::option::of;
use proptest::prelude::*;
use tern_codec::ReasonCode::*;
use tern_codec::reason::{
    AUTH_REASONS, CONNACK_REASONS, CONNACK_RETURN_CODES, DISCONNECT_REASONS, PUBACK_REASONS,
    PUBREL_REASONS, SUBACK_REASONS, SUBACK_RETURN_CODES, UNSUBACK_REASONS,
};
use tern_codec::*;

pub const ALL_VERSIONS: [ProtocolVersion; 3] = [
    ProtocolVersion::V3_1,
    ProtocolVersion::V3_1_1,
    ProtocolVersion::V5,
];

/// A generous limit for tests that are not about the size limit.
pub const MAX: usize = 1 << 20;

/// Encodes `packet` at `version`, checking `encoded_len` agrees.
pub fn encode(packet: &Packet, version: ProtocolVersion) -> BytesMut {
    let mut out = BytesMut::new();
    packet.encode(version, &mut out).expect("encode");
    assert_eq!(packet.encoded_len(version), Ok(out.len()), "encoded_len");
    out
}

/// Encodes then decodes `packet`, asserting the result equals it and the
/// whole encoding was consumed.
pub fn assert_round_trip(packet: &Packet, version: ProtocolVersion) {
    let mut buf = encode(packet, version);
    let decoded = decode(&mut buf, version, MAX);
    assert_eq!(decoded, Ok(Some(packet.clone())), "at {version:?}");
    assert!(buf.is_empty(), "{} bytes left", buf.len());
}

/// Decodes every packet out of `buf` until it needs more bytes or fails;
/// each decoded packet is re-encoded and must decode to itself.
pub fn decode_all(bytes: &[u8], version: ProtocolVersion, max: usize) {
    let mut buf = BytesMut::from(bytes);
    while let Ok(Some(packet)) = decode(&mut buf, version, max) {
        if let Packet::Connect(c) = &packet {
            // CONNECT is re-encoded at its own level.
            assert_round_trip(&packet, c.protocol);
        } else {
            assert_round_trip(&packet, version);
        }
    }
}

// ---- Strategies ------------------------------------------------------------

pub fn string() -> impl Strategy<Value = ByteStr> {
    "[^\u{0}]{0,8}".prop_map(ByteStr::from)
}

pub fn bytes() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..16).prop_map(Bytes::from)
}

pub fn packet_id() -> impl Strategy<Value = NonZeroU16> {
    (1..=u16::MAX).prop_map(|id| NonZeroU16::new(id).expect("non-zero"))
}

pub fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

pub fn reason(table: &'static [ReasonCode]) -> impl Strategy<Value = ReasonCode> {
    proptest::sample::select(table)
}

fn users() -> impl Strategy<Value = Vec<UserProperty>> {
    vec(
        (string(), string()).prop_map(|(name, value)| UserProperty { name, value }),
        0..3,
    )
}

/// Only at level 5 are properties on the wire: elsewhere they are empty.
fn props_at<T: Default + std::fmt::Debug + Clone + 'static>(
    version: ProtocolVersion,
    strategy: impl Strategy<Value = T> + 'static,
) -> BoxedStrategy<T> {
    if version == ProtocolVersion::V5 {
        strategy.boxed()
    } else {
        Just(T::default()).boxed()
    }
}

fn nonzero_u16() -> impl Strategy<Value = u16> {
    1..=u16::MAX
}

fn nonzero_u32() -> impl Strategy<Value = u32> {
    1..=u32::MAX
}

fn subscription_id() -> impl Strategy<Value = u32> {
    1..=268_435_455u32
}

pub fn connect_properties() -> impl Strategy<Value = ConnectProperties> {
    (
        of(any::<u32>()),
        of(nonzero_u16()),
        of(nonzero_u32()),
        of(any::<u16>()),
        of(any::<bool>()),
        of(any::<bool>()),
        of(string()),
        of(bytes()),
        users(),
    )
        .prop_map(
            |(sei, rm, mps, tam, rri, rpi, am, ad, up)| ConnectProperties {
                session_expiry_interval: sei,
                receive_maximum: rm,
                maximum_packet_size: mps,
                topic_alias_maximum: tam,
                request_response_information: rri,
                request_problem_information: rpi,
                authentication_method: am,
                authentication_data: ad,
                user_properties: up,
            },
        )
}

pub fn will_properties() -> impl Strategy<Value = WillProperties> {
    (
        of(any::<u32>()),
        of(any::<bool>()),
        of(any::<u32>()),
        of(string()),
        of(string()),
        of(bytes()),
        users(),
    )
        .prop_map(|(wdi, pfi, mei, ct, rt, cd, up)| WillProperties {
            will_delay_interval: wdi,
            payload_format_indicator: pfi,
            message_expiry_interval: mei,
            content_type: ct,
            response_topic: rt,
            correlation_data: cd,
            user_properties: up,
        })
}

pub fn connack_properties() -> impl Strategy<Value = ConnAckProperties> {
    (
        (
            of(any::<u32>()),
            of(nonzero_u16()),
            // Maximum QoS is 0 or 1 on the wire (spec 3.2.2.3.4).
            of(prop_oneof![Just(QoS::AtMostOnce), Just(QoS::AtLeastOnce)]),
            of(any::<bool>()),
            of(nonzero_u32()),
            of(string()),
            of(any::<u16>()),
            of(string()),
            users(),
        ),
        (
            of(any::<bool>()),
            of(any::<bool>()),
            of(any::<bool>()),
            of(any::<u16>()),
            of(string()),
            of(string()),
            of(string()),
            of(bytes()),
        ),
    )
        .prop_map(
            |((sei, rm, mq, ra, mps, aci, tam, rs, up), (wsa, sia, ssa, ska, ri, sr, am, ad))| {
                ConnAckProperties {
                    session_expiry_interval: sei,
                    receive_maximum: rm,
                    maximum_qos: mq,
                    retain_available: ra,
                    maximum_packet_size: mps,
                    assigned_client_identifier: aci,
                    topic_alias_maximum: tam,
                    reason_string: rs,
                    user_properties: up,
                    wildcard_subscription_available: wsa,
                    subscription_identifiers_available: sia,
                    shared_subscription_available: ssa,
                    server_keep_alive: ska,
                    response_information: ri,
                    server_reference: sr,
                    authentication_method: am,
                    authentication_data: ad,
                }
            },
        )
}

pub fn publish_properties() -> impl Strategy<Value = PublishProperties> {
    (
        of(any::<bool>()),
        of(any::<u32>()),
        of(any::<u16>()),
        of(string()),
        of(bytes()),
        users(),
        vec(subscription_id(), 0..3),
        of(string()),
    )
        .prop_map(|(pfi, mei, ta, rt, cd, up, si, ct)| PublishProperties {
            payload_format_indicator: pfi,
            message_expiry_interval: mei,
            topic_alias: ta,
            response_topic: rt,
            correlation_data: cd,
            user_properties: up,
            subscription_identifiers: si,
            content_type: ct,
        })
}

pub fn ack_properties() -> impl Strategy<Value = AckProperties> {
    (of(string()), users()).prop_map(|(reason_string, user_properties)| AckProperties {
        reason_string,
        user_properties,
    })
}

pub fn disconnect_properties() -> impl Strategy<Value = DisconnectProperties> {
    (of(any::<u32>()), of(string()), users(), of(string())).prop_map(|(sei, rs, up, sr)| {
        DisconnectProperties {
            session_expiry_interval: sei,
            reason_string: rs,
            user_properties: up,
            server_reference: sr,
        }
    })
}

pub fn auth_properties() -> impl Strategy<Value = AuthProperties> {
    (of(string()), of(bytes()), of(string()), users()).prop_map(|(am, ad, rs, up)| AuthProperties {
        authentication_method: am,
        authentication_data: ad,
        reason_string: rs,
        user_properties: up,
    })
}

pub fn connect(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let will = (
        string(),
        bytes(),
        qos(),
        any::<bool>(),
        props_at(version, will_properties()),
    )
        .prop_map(|(topic, payload, qos, retain, properties)| LastWill {
            topic,
            payload,
            qos,
            retain,
            properties,
        });
    (
        any::<bool>(),
        any::<u16>(),
        string(),
        of(will),
        of(string()),
        of(bytes()),
        props_at(version, connect_properties()),
    )
        .prop_map(
            move |(
                clean_start,
                keep_alive,
                client_id,
                will,
                mut username,
                password,
                properties,
            )| {
                // Before 5.0 a password needs a user name [MQTT-3.1.2-22].
                if version != ProtocolVersion::V5 && password.is_some() && username.is_none() {
                    username = Some(ByteStr::from_static("user"));
                }
                Packet::Connect(Box::new(Connect {
                    protocol: version,
                    bridge: false,
                    clean_start,
                    keep_alive,
                    client_id,
                    will,
                    username,
                    password,
                    properties,
                }))
            },
        )
}

pub fn connack(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let table = if version == ProtocolVersion::V5 {
        CONNACK_REASONS
    } else {
        CONNACK_RETURN_CODES
    };
    (
        any::<bool>(),
        reason(table),
        props_at(version, connack_properties()),
    )
        .prop_map(move |(session_present, reason, properties)| {
            Packet::ConnAck(ConnAck {
                // 3.1 has no Session Present flag.
                session_present: session_present && version != ProtocolVersion::V3_1,
                reason,
                properties,
            })
        })
}

pub fn publish(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    (
        any::<bool>(),
        qos(),
        any::<bool>(),
        string(),
        packet_id(),
        bytes(),
        props_at(version, publish_properties()),
    )
        .prop_map(|(dup, qos, retain, topic, id, payload, properties)| {
            let at_least_once = qos != QoS::AtMostOnce;
            Packet::Publish(Publish {
                dup: dup && at_least_once,
                qos,
                retain,
                topic,
                packet_id: at_least_once.then_some(id),
                payload,
                properties,
            })
        })
}

pub fn pub_ack(version: ProtocolVersion, table: &'static [ReasonCode]) -> BoxedStrategy<PubAck> {
    if version == ProtocolVersion::V5 {
        (packet_id(), reason(table), ack_properties())
            .prop_map(|(packet_id, reason, properties)| PubAck {
                packet_id,
                reason,
                properties,
            })
            .boxed()
    } else {
        packet_id().prop_map(PubAck::new).boxed()
    }
}

fn subscription_options(version: ProtocolVersion) -> BoxedStrategy<SubscriptionOptions> {
    if version == ProtocolVersion::V5 {
        let retain_handling = prop_oneof![
            Just(RetainHandling::SendAtSubscribe),
            Just(RetainHandling::SendAtSubscribeIfNew),
            Just(RetainHandling::DoNotSend),
        ];
        (qos(), any::<bool>(), any::<bool>(), retain_handling)
            .prop_map(
                |(qos, no_local, retain_as_published, retain_handling)| SubscriptionOptions {
                    qos,
                    no_local,
                    retain_as_published,
                    retain_handling,
                },
            )
            .boxed()
    } else {
        qos()
            .prop_map(|qos| SubscriptionOptions {
                qos,
                ..Default::default()
            })
            .boxed()
    }
}

pub fn subscribe(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let filter = (string(), subscription_options(version))
        .prop_map(|(filter, options)| SubscribeFilter { filter, options });
    let properties =
        (of(subscription_id()), users()).prop_map(|(subscription_identifier, user_properties)| {
            SubscribeProperties {
                subscription_identifier,
                user_properties,
            }
        });
    (
        packet_id(),
        vec(filter, 1..4),
        props_at(version, properties),
    )
        .prop_map(|(packet_id, filters, properties)| {
            Packet::Subscribe(Subscribe {
                packet_id,
                filters,
                properties,
            })
        })
}

pub fn suback(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let table = if version == ProtocolVersion::V5 {
        SUBACK_REASONS
    } else {
        SUBACK_RETURN_CODES
    };
    (
        packet_id(),
        vec(reason(table), 0..4),
        props_at(version, ack_properties()),
    )
        .prop_map(|(packet_id, reasons, properties)| {
            Packet::SubAck(SubAck {
                packet_id,
                reasons,
                properties,
            })
        })
}

pub fn unsubscribe(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let properties = users().prop_map(|user_properties| UnsubscribeProperties { user_properties });
    (
        packet_id(),
        vec(string(), 1..4),
        props_at(version, properties),
    )
        .prop_map(|(packet_id, filters, properties)| {
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                filters,
                properties,
            })
        })
}

pub fn unsuback(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    // Before 5.0 an UNSUBACK is only a packet id.
    let reasons = if version == ProtocolVersion::V5 {
        vec(reason(UNSUBACK_REASONS), 0..4).boxed()
    } else {
        Just(Vec::new()).boxed()
    };
    (packet_id(), reasons, props_at(version, ack_properties())).prop_map(
        |(packet_id, reasons, properties)| {
            Packet::UnsubAck(UnsubAck {
                packet_id,
                reasons,
                properties,
            })
        },
    )
}

pub fn disconnect(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    if version == ProtocolVersion::V5 {
        (reason(DISCONNECT_REASONS), disconnect_properties())
            .prop_map(|(reason, properties)| Packet::Disconnect(Disconnect { reason, properties }))
            .boxed()
    } else {
        Just(Packet::Disconnect(Disconnect::new(Success))).boxed()
    }
}

pub fn auth() -> impl Strategy<Value = Packet> {
    (reason(AUTH_REASONS), auth_properties())
        .prop_map(|(reason, properties)| Packet::Auth(Auth { reason, properties }))
}

/// Any packet that `version` can carry.
pub fn packet(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let common = prop_oneof![
        connect(version),
        connack(version),
        publish(version),
        pub_ack(version, PUBACK_REASONS).prop_map(Packet::PubAck),
        pub_ack(version, PUBACK_REASONS).prop_map(Packet::PubRec),
        pub_ack(version, PUBREL_REASONS).prop_map(Packet::PubRel),
        pub_ack(version, PUBREL_REASONS).prop_map(Packet::PubComp),
        subscribe(version),
        suback(version),
        unsubscribe(version),
        unsuback(version),
        Just(Packet::PingReq),
        Just(Packet::PingResp),
        disconnect(version),
    ];
    if version == ProtocolVersion::V5 {
        prop_oneof![14 => common, 1 => auth()].boxed()
    } else {
        common.boxed()
    }
}

/// A level and a packet that level can carry.
pub fn versioned_packet() -> impl Strategy<Value = (ProtocolVersion, Packet)> {
    proptest::sample::select(&ALL_VERSIONS[..])
        .prop_flat_map(|version| packet(version).prop_map(move |p| (version, p)))
}
