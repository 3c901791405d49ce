//! MQTT 5 properties (spec 2.2.2), one struct per packet family.
//!
//! Each packet gets a struct holding exactly the properties that packet may
//! carry, so a property in the wrong packet cannot be represented and the
//! decoder refuses it. Every field defaults to "absent"; at protocol levels 3
//! and 4 the properties are neither encoded nor decoded and stay empty.

use bytes::Bytes;

use crate::{ByteStr, QoS};

/// A User Property (0x26): a name/value pair, may repeat, order preserved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserProperty {
    pub name: ByteStr,
    pub value: ByteStr,
}

/// CONNECT properties (spec 3.1.2.11).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectProperties {
    pub session_expiry_interval: Option<u32>,
    pub receive_maximum: Option<u16>,
    pub maximum_packet_size: Option<u32>,
    pub topic_alias_maximum: Option<u16>,
    pub request_response_information: Option<bool>,
    pub request_problem_information: Option<bool>,
    pub authentication_method: Option<ByteStr>,
    pub authentication_data: Option<Bytes>,
    pub user_properties: Vec<UserProperty>,
}

/// Will properties inside CONNECT (spec 3.1.3.2).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WillProperties {
    pub will_delay_interval: Option<u32>,
    pub payload_format_indicator: Option<bool>,
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<ByteStr>,
    pub response_topic: Option<ByteStr>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: Vec<UserProperty>,
}

/// CONNACK properties (spec 3.2.2.3).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnAckProperties {
    pub session_expiry_interval: Option<u32>,
    pub receive_maximum: Option<u16>,
    pub maximum_qos: Option<QoS>,
    pub retain_available: Option<bool>,
    pub maximum_packet_size: Option<u32>,
    pub assigned_client_identifier: Option<ByteStr>,
    pub topic_alias_maximum: Option<u16>,
    pub reason_string: Option<ByteStr>,
    pub user_properties: Vec<UserProperty>,
    pub wildcard_subscription_available: Option<bool>,
    pub subscription_identifiers_available: Option<bool>,
    pub shared_subscription_available: Option<bool>,
    pub server_keep_alive: Option<u16>,
    pub response_information: Option<ByteStr>,
    pub server_reference: Option<ByteStr>,
    pub authentication_method: Option<ByteStr>,
    pub authentication_data: Option<Bytes>,
}

/// PUBLISH properties (spec 3.3.2.3).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishProperties {
    pub payload_format_indicator: Option<bool>,
    pub message_expiry_interval: Option<u32>,
    pub topic_alias: Option<u16>,
    pub response_topic: Option<ByteStr>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: Vec<UserProperty>,
    /// Zero or more (server to client only); each is 1..=268_435_455.
    pub subscription_identifiers: Vec<u32>,
    pub content_type: Option<ByteStr>,
}

/// Properties of PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK and UNSUBACK.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckProperties {
    pub reason_string: Option<ByteStr>,
    pub user_properties: Vec<UserProperty>,
}

/// SUBSCRIBE properties (spec 3.8.2.1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscribeProperties {
    /// 1..=268_435_455; zero is a protocol error.
    pub subscription_identifier: Option<u32>,
    pub user_properties: Vec<UserProperty>,
}

/// UNSUBSCRIBE properties (spec 3.10.2.1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnsubscribeProperties {
    pub user_properties: Vec<UserProperty>,
}

/// DISCONNECT properties (spec 3.14.2.2).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DisconnectProperties {
    pub session_expiry_interval: Option<u32>,
    pub reason_string: Option<ByteStr>,
    pub user_properties: Vec<UserProperty>,
    pub server_reference: Option<ByteStr>,
}

/// AUTH properties (spec 3.15.2.2).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthProperties {
    pub authentication_method: Option<ByteStr>,
    pub authentication_data: Option<Bytes>,
    pub reason_string: Option<ByteStr>,
    pub user_properties: Vec<UserProperty>,
}
