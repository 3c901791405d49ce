//! MQTT 5 properties on the wire (spec 2.2.2): one generic reader and writer
//! for the property block, and per packet family the table of which
//! properties it may carry.
//!
//! A property block is a Variable Byte Integer length followed by
//! identifier/value pairs. Each properties struct implements [`PropertySet`]:
//! `read_one` is its table of allowed identifiers (anything else is
//! [`DecodeError::InvalidProperty`]) and `write_all` lists its fields. The
//! block framing, the duplicate rule and the value checks are shared.

use bytes::Bytes;

use crate::codec::read::{MAX_VARINT, Reader};
use crate::codec::write::{Counter, Sink};
use crate::properties::*;
use crate::{ByteStr, DecodeError, EncodeError, QoS};

/// Property identifiers (spec table 2-4).
pub(crate) mod id {
    pub const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    pub const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    pub const CONTENT_TYPE: u8 = 0x03;
    pub const RESPONSE_TOPIC: u8 = 0x08;
    pub const CORRELATION_DATA: u8 = 0x09;
    pub const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
    pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    pub const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub const AUTHENTICATION_METHOD: u8 = 0x15;
    pub const AUTHENTICATION_DATA: u8 = 0x16;
    pub const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
    pub const WILL_DELAY_INTERVAL: u8 = 0x18;
    pub const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
    pub const RESPONSE_INFORMATION: u8 = 0x1A;
    pub const SERVER_REFERENCE: u8 = 0x1C;
    pub const REASON_STRING: u8 = 0x1F;
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const MAXIMUM_QOS: u8 = 0x24;
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    pub const USER_PROPERTY: u8 = 0x26;
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
    pub const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
    pub const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;
}

/// A properties struct that can be read from and written to a property block.
pub(crate) trait PropertySet: Default + PartialEq {
    /// Reads the value of property `id` into `self`, or refuses an `id` this
    /// packet may not carry.
    fn read_one(&mut self, id: u8, r: &mut Reader) -> Result<(), DecodeError>;

    /// Writes every present property (identifier and value).
    fn write_all<S: Sink>(&self, w: &mut S) -> Result<(), EncodeError>;

    /// True when no property is present (the MQTT 5 short forms need this).
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Reads a property block: its length, then properties up to that length.
pub(crate) fn decode<P: PropertySet>(r: &mut Reader) -> Result<P, DecodeError> {
    let len = r.varint()?;
    let mut block = r.sub_reader(usize::try_from(len).unwrap_or(usize::MAX))?;
    let mut props = P::default();
    while !block.is_empty() {
        // The identifier is a Variable Byte Integer, but every defined one is
        // below 0x80: a first byte with the continuation bit is unknown anyway.
        let id = block.u8()?;
        props.read_one(id, &mut block)?;
    }
    Ok(props)
}

/// Writes a property block: the length of the properties, then the properties.
pub(crate) fn encode<P: PropertySet, S: Sink>(props: &P, w: &mut S) -> Result<(), EncodeError> {
    let mut counter = Counter::default();
    props.write_all(&mut counter)?;
    let len = u32::try_from(counter.0).map_err(|_| EncodeError::PacketTooLarge)?;
    w.varint(len)?;
    props.write_all(w)
}

// ---- Reading values ------------------------------------------------------

/// Stores a property that may appear at most once [MQTT-2.2.2-2 and the
/// "Protocol Error to include ... more than once" of each property].
fn once<T>(slot: &mut Option<T>, id: u8, value: T) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::DuplicateProperty(id));
    }
    *slot = Some(value);
    Ok(())
}

/// A Byte property that is a flag: 0 or 1, anything else is a protocol error.
fn boolean(r: &mut Reader, id: u8) -> Result<bool, DecodeError> {
    match r.u8()? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(DecodeError::InvalidPropertyValue(id)),
    }
}

/// Receive Maximum: zero is a protocol error (spec 3.1.2.11.3, 3.2.2.3.3).
fn nonzero_u16(r: &mut Reader, id: u8) -> Result<u16, DecodeError> {
    match r.u16()? {
        0 => Err(DecodeError::InvalidPropertyValue(id)),
        v => Ok(v),
    }
}

/// Maximum Packet Size: zero is a protocol error (spec 3.1.2.11.4, 3.2.2.3.6).
fn nonzero_u32(r: &mut Reader, id: u8) -> Result<u32, DecodeError> {
    match r.u32()? {
        0 => Err(DecodeError::InvalidPropertyValue(id)),
        v => Ok(v),
    }
}

/// Subscription Identifier: a Variable Byte Integer 1..=268,435,455; zero is
/// a protocol error (spec 3.3.2.3.8, 3.8.2.1.2).
fn subscription_identifier(r: &mut Reader, id: u8) -> Result<u32, DecodeError> {
    match r.varint()? {
        0 => Err(DecodeError::InvalidPropertyValue(id)),
        v => Ok(v),
    }
}

/// Maximum QoS: 0 or 1 only; absence means 2 (spec 3.2.2.3.4).
fn maximum_qos(r: &mut Reader, id: u8) -> Result<QoS, DecodeError> {
    match r.u8()? {
        0 => Ok(QoS::AtMostOnce),
        1 => Ok(QoS::AtLeastOnce),
        _ => Err(DecodeError::InvalidPropertyValue(id)),
    }
}

/// User Property: a UTF-8 string pair; may repeat, order kept [MQTT-3.1.3-10].
fn user_property(r: &mut Reader, into: &mut Vec<UserProperty>) -> Result<(), DecodeError> {
    let name = r.string()?;
    let value = r.string()?;
    into.push(UserProperty { name, value });
    Ok(())
}

// ---- Writing values ------------------------------------------------------

fn put_u8<S: Sink>(w: &mut S, id: u8, v: Option<u8>) {
    if let Some(v) = v {
        w.put_u8(id);
        w.put_u8(v);
    }
}

fn put_bool<S: Sink>(w: &mut S, id: u8, v: Option<bool>) {
    put_u8(w, id, v.map(u8::from));
}

fn put_u16<S: Sink>(w: &mut S, id: u8, v: Option<u16>) {
    if let Some(v) = v {
        w.put_u8(id);
        w.put_u16(v);
    }
}

fn put_u32<S: Sink>(w: &mut S, id: u8, v: Option<u32>) {
    if let Some(v) = v {
        w.put_u8(id);
        w.put_u32(v);
    }
}

/// Receive Maximum: the decoder refuses zero, so the encoder does too.
fn put_receive_maximum<S: Sink>(w: &mut S, v: Option<u16>) -> Result<(), EncodeError> {
    if v == Some(0) {
        return Err(EncodeError::InvalidValue("Receive Maximum 0"));
    }
    put_u16(w, id::RECEIVE_MAXIMUM, v);
    Ok(())
}

/// Maximum Packet Size: the decoder refuses zero, so the encoder does too.
fn put_maximum_packet_size<S: Sink>(w: &mut S, v: Option<u32>) -> Result<(), EncodeError> {
    if v == Some(0) {
        return Err(EncodeError::InvalidValue("Maximum Packet Size 0"));
    }
    put_u32(w, id::MAXIMUM_PACKET_SIZE, v);
    Ok(())
}

fn put_subscription_identifier<S: Sink>(w: &mut S, v: u32) -> Result<(), EncodeError> {
    if v == 0 || v > MAX_VARINT {
        return Err(EncodeError::InvalidValue(
            "Subscription Identifier outside 1..=268435455",
        ));
    }
    w.put_u8(id::SUBSCRIPTION_IDENTIFIER);
    w.varint(v)
}

fn put_str<S: Sink>(w: &mut S, id: u8, v: Option<&ByteStr>) -> Result<(), EncodeError> {
    if let Some(v) = v {
        w.put_u8(id);
        w.string(v)?;
    }
    Ok(())
}

fn put_bin<S: Sink>(w: &mut S, id: u8, v: Option<&Bytes>) -> Result<(), EncodeError> {
    if let Some(v) = v {
        w.put_u8(id);
        w.binary(v)?;
    }
    Ok(())
}

fn put_users<S: Sink>(w: &mut S, users: &[UserProperty]) -> Result<(), EncodeError> {
    for user in users {
        w.put_u8(id::USER_PROPERTY);
        w.string(&user.name)?;
        w.string(&user.value)?;
    }
    Ok(())
}

// ---- The table of each packet ------------------------------------------

impl PropertySet for ConnectProperties {
    fn read_one(&mut self, id: u8, r: &mut Reader) -> Result<(), DecodeError> {
        match id {
            id::SESSION_EXPIRY_INTERVAL => once(&mut self.session_expiry_interval, id, r.u32()?),
            id::RECEIVE_MAXIMUM => once(&mut self.receive_maximum, id, nonzero_u16(r, id)?),
            id::MAXIMUM_PACKET_SIZE => once(&mut self.maximum_packet_size, id, nonzero_u32(r, id)?),
            id::TOPIC_ALIAS_MAXIMUM => once(&mut self.topic_alias_maximum, id, r.u16()?),
            id::REQUEST_RESPONSE_INFORMATION => {
                once(&mut self.request_response_information, id, boolean(r, id)?)
            }
            id::REQUEST_PROBLEM_INFORMATION => {
                once(&mut self.request_problem_information, id, boolean(r, id)?)
            }
            id::AUTHENTICATION_METHOD => once(&mut self.authentication_method, id, r.string()?),
            id::AUTHENTICATION_DATA => once(&mut self.authentication_data, id, r.binary()?),
            id::USER_PROPERTY => user_property(r, &mut self.user_properties),
            _ => Err(DecodeError::InvalidProperty(id)),
        }
    }

    fn write_all<S: Sink>(&self, w: &mut S) -> Result<(), EncodeError> {
        put_u32(w, id::SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        put_receive_maximum(w, self.receive_maximum)?;
        put_maximum_packet_size(w, self.maximum_packet_size)?;
        put_u16(w, id::TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        put_bool(
            w,
            id::REQUEST_RESPONSE_INFORMATION,
            self.request_response_information,
        );
        put_bool(
            w,
            id::REQUEST_PROBLEM_INFORMATION,
            self.request_problem_information,
        );
        put_str(
            w,
            id::AUTHENTICATION_METHOD,
            self.authentication_method.as_ref(),
        )?;
        put_bin(
            w,
            id::AUTHENTICATION_DATA,
            self.authentication_data.as_ref(),
        )?;
        put_users(w, &self.user_properties)
    }
}

impl PropertySet for WillProperties {
    fn read_one(&mut self, id: u8, r: &mut Reader) -> Result<(), DecodeError> {
        match id {
            id::WILL_DELAY_INTERVAL => once(&mut self.will_delay_interval, id, r.u32()?),
            id::PAYLOAD_FORMAT_INDICATOR => {
                once(&mut self.payload_format_indicator, id, boolean(r, id)?)
            }
            id::MESSAGE_EXPIRY_INTERVAL => once(&mut self.message_expiry_interval, id, r.u32()?),
            id::CONTENT_TYPE => once(&mut self.content_type, id, r.string()?),
            id::RESPONSE_TOPIC => once(&mut self.response_topic, id, r.string()?),
            id::CORRELATION_DATA => once(&mut self.correlation_data, id, r.binary()?),
            id::USER_PROPERTY => user_property(r, &mut self.user_properties),
            _ => Err(DecodeError::InvalidProperty(id)),
        }
    }

    fn write_all<S: Sink>(&self, w: &mut S) -> Result<(), EncodeError> {
        put_u32(w, id::WILL_DELAY_INTERVAL, self.will_delay_interval);
        put_bool(
            w,
            id::PAYLOAD_FORMAT_INDICATOR,
            self.payload_format_indicator,
        );
        put_u32(w, id::MESSAGE_EXPIRY_INTERVAL, self.message_expiry_interval);
        put_str(w, id::CONTENT_TYPE, self.content_type.as_ref())?;
        put_str(w, id::RESPONSE_TOPIC, self.response_topic.as_ref())?;
        put_bin(w, id::CORRELATION_DATA, self.correlation_data.as_ref())?;
        put_users(w, &self.user_properties)
    }
}

impl PropertySet for ConnAckProperties {
    fn read_one(&mut self, id: u8, r: &mut Reader) -> Result<(), DecodeError> {
        match id {
            id::SESSION_EXPIRY_INTERVAL => once(&mut self.session_expiry_interval, id, r.u32()?),
            id::RECEIVE_MAXIMUM => once(&mut self.receive_maximum, id, nonzero_u16(r, id)?),
            id::MAXIMUM_QOS => once(&mut self.maximum_qos, id, maximum_qos(r, id)?),
            id::RETAIN_AVAILABLE => once(&mut self.retain_available, id, boolean(r, id)?),
            id::MAXIMUM_PACKET_SIZE => once(&mut self.maximum_packet_size, id, nonzero_u32(r, id)?),
            id::ASSIGNED_CLIENT_IDENTIFIER => {
                once(&mut self.assigned_client_identifier, id, r.string()?)
            }
            id::TOPIC_ALIAS_MAXIMUM => once(&mut self.topic_alias_maximum, id, r.u16()?),
            id::REASON_STRING => once(&mut self.reason_string, id, r.string()?),
            id::USER_PROPERTY => user_property(r, &mut self.user_properties),
            id::WILDCARD_SUBSCRIPTION_AVAILABLE => once(
                &mut self.wildcard_subscription_available,
                id,
                boolean(r, id)?,
            ),
            id::SUBSCRIPTION_IDENTIFIER_AVAILABLE => once(
                &mut self.subscription_identifiers_available,
                id,
                boolean(r, id)?,
            ),
            id::SHARED_SUBSCRIPTION_AVAILABLE => {
                once(&mut self.shared_subscription_available, id, boolean(r, id)?)
            }
            id::SERVER_KEEP_ALIVE => once(&mut self.server_keep_alive, id, r.u16()?),
            id::RESPONSE_INFORMATION => once(&mut self.response_information, id, r.string()?),
            id::SERVER_REFERENCE => once(&mut self.server_reference, id, r.string()?),
            id::AUTHENTICATION_METHOD => once(&mut self.authentication_method, id, r.string()?),
            id::AUTHENTICATION_DATA => once(&mut self.authentication_data, id, r.binary()?),
            _ => Err(DecodeError::InvalidProperty(id)),
        }
    }

    fn write_all<S: Sink>(&self, w: &mut S) -> Result<(), EncodeError> {
        put_u32(w, id::SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        put_receive_maximum(w, self.receive_maximum)?;
        // Maximum QoS may only be 0 or 1, and its absence means 2
        // (spec 3.2.2.3.4): "at most 2" is sent by leaving it out.
        let max_qos = self.maximum_qos.filter(|q| *q != QoS::ExactlyOnce);
        put_u8(w, id::MAXIMUM_QOS, max_qos.map(|q| q as u8));
        put_bool(w, id::RETAIN_AVAILABLE, self.retain_available);
        put_maximum_packet_size(w, self.maximum_packet_size)?;
        put_str(
            w,
            id::ASSIGNED_CLIENT_IDENTIFIER,
            self.assigned_client_identifier.as_ref(),
        )?;
        put_u16(w, id::TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        put_str(w, id::REASON_STRING, self.reason_string.as_ref())?;
        put_users(w, &self.user_properties)?;
        put_bool(
            w,
            id::WILDCARD_SUBSCRIPTION_AVAILABLE,
            self.wildcard_subscription_available,
        );
        put_bool(
            w,
            id::SUBSCRIPTION_IDENTIFIER_AVAILABLE,
            self.subscription_identifiers_available,
        );
        put_bool(
            w,
            id::SHARED_SUBSCRIPTION_AVAILABLE,
            self.shared_subscription_available,
        );
        put_u16(w, id::SERVER_KEEP_ALIVE, self.server_keep_alive);
        put_str(
            w,
            id::RESPONSE_INFORMATION,
            self.response_information.as_ref(),
        )?;
        put_str(w, id::SERVER_REFERENCE, self.server_reference.as_ref())?;
        put_str(
            w,
            id::AUTHENTICATION_METHOD,
            self.authentication_method.as_ref(),
        )?;
        put_bin(
            w,
            id::AUTHENTICATION_DATA,
            self.authentication_data.as_ref(),
        )
    }
}

impl PropertySet for PublishProperties {
    fn read_one(&mut self, id: u8, r: &mut Reader) -> Result<(), DecodeError> {
        match id {
            id::PAYLOAD_FORMAT_INDICATOR => {
                once(&mut self.payload_format_indicator, id, boolean(r, id)?)
            }
            id::MESSAGE_EXPIRY_INTERVAL => once(&mut self.message_expiry_interval, id, r.u32()?),
            // Topic Alias 0 is a protocol error too, but one the broker reports
            // as Topic Alias Invalid along with its maximum check (spec 3.3.2.3.4).
            id::TOPIC_ALIAS => once(&mut self.topic_alias, id, r.u16()?),
            id::RESPONSE_TOPIC => once(&mut self.response_topic, id, r.string()?),
            id::CORRELATION_DATA => once(&mut self.correlation_data, id, r.binary()?),
            id::USER_PROPERTY => user_property(r, &mut self.user_properties),
            // The only repeatable property besides User Property: a message
            // matching several subscriptions carries all their identifiers.
            id::SUBSCRIPTION_IDENTIFIER => {
                let sub_id = subscription_identifier(r, id)?;
                self.subscription_identifiers.push(sub_id);
                Ok(())
            }
            id::CONTENT_TYPE => once(&mut self.content_type, id, r.string()?),
            _ => Err(DecodeError::InvalidProperty(id)),
        }
    }

    fn write_all<S: Sink>(&self, w: &mut S) -> Result<(), EncodeError> {
        put_bool(
            w,
            id::PAYLOAD_FORMAT_INDICATOR,
            self.payload_format_indicator,
        );
        put_u32(w, id::MESSAGE_EXPIRY_INTERVAL, self.message_expiry_interval);
        put_u16(w, id::TOPIC_ALIAS, self.topic_alias);
        put_str(w, id::RESPONSE_TOPIC, self.response_topic.as_ref())?;
        put_bin(w, id::CORRELATION_DATA, self.correlation_data.as_ref())?;
        put_users(w, &self.user_properties)?;
        for &sub_id in &self.subscription_identifiers {
            put_subscription_identifier(w, sub_id)?;
        }
        put_str(w, id::CONTENT_TYPE, self.content_type.as_ref())
    }
}

impl PropertySet for AckProperties {
    fn read_one(&mut self, id: u8, r: &mut Reader) -> Result<(), DecodeError> {
        match id {
            id::REASON_STRING => once(&mut self.reason_string, id, r.string()?),
            id::USER_PROPERTY => user_property(r, &mut self.user_properties),
            _ => Err(DecodeError::InvalidProperty(id)),
        }
    }

    fn write_all<S: Sink>(&self, w: &mut S) -> Result<(), EncodeError> {
        put_str(w, id::REASON_STRING, self.reason_string.as_ref())?;
        put_users(w, &self.user_properties)
    }
}

impl PropertySet for SubscribeProperties {
    fn read_one(&mut self, id: u8, r: &mut Reader) -> Result<(), DecodeError> {
        match id {
            id::SUBSCRIPTION_IDENTIFIER => {
                let sub_id = subscription_identifier(r, id)?;
                once(&mut self.subscription_identifier, id, sub_id)
            }
            id::USER_PROPERTY => user_property(r, &mut self.user_properties),
            _ => Err(DecodeError::InvalidProperty(id)),
        }
    }

    fn write_all<S: Sink>(&self, w: &mut S) -> Result<(), EncodeError> {
        if let Some(sub_id) = self.subscription_identifier {
            put_subscription_identifier(w, sub_id)?;
        }
        put_users(w, &self.user_properties)
    }
}

impl PropertySet for UnsubscribeProperties {
    fn read_one(&mut self, id: u8, r: &mut Reader) -> Result<(), DecodeError> {
        match id {
            id::USER_PROPERTY => user_property(r, &mut self.user_properties),
            _ => Err(DecodeError::InvalidProperty(id)),
        }
    }

    fn write_all<S: Sink>(&self, w: &mut S) -> Result<(), EncodeError> {
        put_users(w, &self.user_properties)
    }
}

impl PropertySet for DisconnectProperties {
    fn read_one(&mut self, id: u8, r: &mut Reader) -> Result<(), DecodeError> {
        match id {
            id::SESSION_EXPIRY_INTERVAL => once(&mut self.session_expiry_interval, id, r.u32()?),
            id::REASON_STRING => once(&mut self.reason_string, id, r.string()?),
            id::USER_PROPERTY => user_property(r, &mut self.user_properties),
            id::SERVER_REFERENCE => once(&mut self.server_reference, id, r.string()?),
            _ => Err(DecodeError::InvalidProperty(id)),
        }
    }

    fn write_all<S: Sink>(&self, w: &mut S) -> Result<(), EncodeError> {
        put_u32(w, id::SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        put_str(w, id::REASON_STRING, self.reason_string.as_ref())?;
        put_users(w, &self.user_properties)?;
        put_str(w, id::SERVER_REFERENCE, self.server_reference.as_ref())
    }
}

impl PropertySet for AuthProperties {
    fn read_one(&mut self, id: u8, r: &mut Reader) -> Result<(), DecodeError> {
        match id {
            id::AUTHENTICATION_METHOD => once(&mut self.authentication_method, id, r.string()?),
            id::AUTHENTICATION_DATA => once(&mut self.authentication_data, id, r.binary()?),
            id::REASON_STRING => once(&mut self.reason_string, id, r.string()?),
            id::USER_PROPERTY => user_property(r, &mut self.user_properties),
            _ => Err(DecodeError::InvalidProperty(id)),
        }
    }

    fn write_all<S: Sink>(&self, w: &mut S) -> Result<(), EncodeError> {
        put_str(
            w,
            id::AUTHENTICATION_METHOD,
            self.authentication_method.as_ref(),
        )?;
        put_bin(
            w,
            id::AUTHENTICATION_DATA,
            self.authentication_data.as_ref(),
        )?;
        put_str(w, id::REASON_STRING, self.reason_string.as_ref())?;
        put_users(w, &self.user_properties)
    }
}
