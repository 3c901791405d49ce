//! MQTT 5 properties on the wire (spec 2.2.2): one generic reader and writer
//! for the property block, and per packet family the table of which
//! properties it may carry.
//!
//! A property block is a Variable Byte Integer length followed by
//! identifier/value pairs. Each properties struct implements [`PropertySet`]
//! from one table (`property_table!`): the identifiers it may carry (anything
//! else is [`DecodeError::InvalidProperty`]), the field each one fills, and
//! its [`Kind`], which says how the value is read, checked and written. The
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
    // Most packets carry none: one comparison instead of two walks.
    if props.is_empty() {
        return w.varint(0);
    }
    let mut counter = Counter::default();
    props.write_all(&mut counter)?;
    let len = u32::try_from(counter.0).map_err(|_| EncodeError::PacketTooLarge)?;
    w.varint(len)?;
    props.write_all(w)
}

// ---- How each kind of value is read and written ------------------------------

/// How one property is read into its field and written from it.
trait Kind {
    type Field;

    /// Reads the value of property `id` (its identifier already read).
    fn read(field: &mut Self::Field, id: u8, r: &mut Reader) -> Result<(), DecodeError>;

    /// Writes the property (identifier and value) if the field holds one.
    fn write<S: Sink>(w: &mut S, id: u8, field: &Self::Field) -> Result<(), EncodeError>;
}

/// A property that may appear at most once, kept in an `Option`
/// [MQTT-2.2.2-2 and the "Protocol Error to include ... more than once" of
/// each property]: only how its value is read and written differs.
trait Single {
    type Value;

    fn read_value(r: &mut Reader, id: u8) -> Result<Self::Value, DecodeError>;

    fn write_value<S: Sink>(w: &mut S, value: &Self::Value) -> Result<(), EncodeError>;
}

impl<K: Single> Kind for K {
    type Field = Option<K::Value>;

    fn read(field: &mut Self::Field, id: u8, r: &mut Reader) -> Result<(), DecodeError> {
        let value = K::read_value(r, id)?;
        once(field, id, value)
    }

    fn write<S: Sink>(w: &mut S, id: u8, field: &Self::Field) -> Result<(), EncodeError> {
        if let Some(value) = field {
            w.put_u8(id);
            K::write_value(w, value)?;
        }
        Ok(())
    }
}

/// A Two Byte Integer.
struct U16;

impl Single for U16 {
    type Value = u16;

    fn read_value(r: &mut Reader, _: u8) -> Result<u16, DecodeError> {
        r.u16()
    }

    fn write_value<S: Sink>(w: &mut S, value: &u16) -> Result<(), EncodeError> {
        w.put_u16(*value);
        Ok(())
    }
}

/// A Four Byte Integer.
struct U32;

impl Single for U32 {
    type Value = u32;

    fn read_value(r: &mut Reader, _: u8) -> Result<u32, DecodeError> {
        r.u32()
    }

    fn write_value<S: Sink>(w: &mut S, value: &u32) -> Result<(), EncodeError> {
        w.put_u32(*value);
        Ok(())
    }
}

/// A Byte that is a flag: 0 or 1, anything else is a protocol error.
struct Flag;

impl Single for Flag {
    type Value = bool;

    fn read_value(r: &mut Reader, id: u8) -> Result<bool, DecodeError> {
        match r.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::InvalidPropertyValue(id)),
        }
    }

    fn write_value<S: Sink>(w: &mut S, value: &bool) -> Result<(), EncodeError> {
        w.put_u8(u8::from(*value));
        Ok(())
    }
}

/// A UTF-8 Encoded String.
struct Str;

impl Single for Str {
    type Value = ByteStr;

    fn read_value(r: &mut Reader, _: u8) -> Result<ByteStr, DecodeError> {
        r.string()
    }

    fn write_value<S: Sink>(w: &mut S, value: &ByteStr) -> Result<(), EncodeError> {
        w.string(value)
    }
}

/// Binary Data.
struct Bin;

impl Single for Bin {
    type Value = Bytes;

    fn read_value(r: &mut Reader, _: u8) -> Result<Bytes, DecodeError> {
        r.binary()
    }

    fn write_value<S: Sink>(w: &mut S, value: &Bytes) -> Result<(), EncodeError> {
        w.binary(value)
    }
}

/// Receive Maximum: zero is a protocol error (spec 3.1.2.11.3, 3.2.2.3.3);
/// the decoder refuses it, so the encoder does too.
struct ReceiveMaximum;

impl Single for ReceiveMaximum {
    type Value = u16;

    fn read_value(r: &mut Reader, id: u8) -> Result<u16, DecodeError> {
        nonzero(r.u16()?, id)
    }

    fn write_value<S: Sink>(w: &mut S, value: &u16) -> Result<(), EncodeError> {
        if *value == 0 {
            return Err(EncodeError::InvalidValue("Receive Maximum 0"));
        }
        U16::write_value(w, value)
    }
}

/// Maximum Packet Size: zero is a protocol error (spec 3.1.2.11.4,
/// 3.2.2.3.6); the decoder refuses it, so the encoder does too.
struct MaximumPacketSize;

impl Single for MaximumPacketSize {
    type Value = u32;

    fn read_value(r: &mut Reader, id: u8) -> Result<u32, DecodeError> {
        nonzero(r.u32()?, id)
    }

    fn write_value<S: Sink>(w: &mut S, value: &u32) -> Result<(), EncodeError> {
        if *value == 0 {
            return Err(EncodeError::InvalidValue("Maximum Packet Size 0"));
        }
        U32::write_value(w, value)
    }
}

/// The Subscription Identifier of a SUBSCRIBE (spec 3.8.2.1.2): at most one.
struct SubscriptionIdentifier;

impl Single for SubscriptionIdentifier {
    type Value = u32;

    fn read_value(r: &mut Reader, id: u8) -> Result<u32, DecodeError> {
        subscription_identifier(r, id)
    }

    fn write_value<S: Sink>(w: &mut S, value: &u32) -> Result<(), EncodeError> {
        put_subscription_identifier(w, *value)
    }
}

/// The Subscription Identifiers of a PUBLISH (spec 3.3.2.3.8): the only
/// repeatable property besides User Property, as a message matching several
/// subscriptions carries all their identifiers.
struct SubscriptionIdentifiers;

impl Kind for SubscriptionIdentifiers {
    type Field = Vec<u32>;

    fn read(field: &mut Vec<u32>, id: u8, r: &mut Reader) -> Result<(), DecodeError> {
        field.push(subscription_identifier(r, id)?);
        Ok(())
    }

    fn write<S: Sink>(w: &mut S, id: u8, field: &Vec<u32>) -> Result<(), EncodeError> {
        for &value in field {
            w.put_u8(id);
            put_subscription_identifier(w, value)?;
        }
        Ok(())
    }
}

/// Maximum QoS: 0 or 1 only, and its absence means 2 (spec 3.2.2.3.4), so
/// "at most 2" is sent by leaving it out.
struct MaximumQos;

impl Kind for MaximumQos {
    type Field = Option<QoS>;

    fn read(field: &mut Option<QoS>, id: u8, r: &mut Reader) -> Result<(), DecodeError> {
        let qos = match r.u8()? {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            _ => return Err(DecodeError::InvalidPropertyValue(id)),
        };
        once(field, id, qos)
    }

    fn write<S: Sink>(w: &mut S, id: u8, field: &Option<QoS>) -> Result<(), EncodeError> {
        let max_qos = field.filter(|q| *q != QoS::ExactlyOnce);
        if let Some(qos) = max_qos {
            w.put_u8(id);
            w.put_u8(qos as u8);
        }
        Ok(())
    }
}

/// User Property: a UTF-8 string pair; may repeat, order kept [MQTT-3.1.3-10].
struct Users;

impl Kind for Users {
    type Field = Vec<UserProperty>;

    fn read(field: &mut Vec<UserProperty>, _: u8, r: &mut Reader) -> Result<(), DecodeError> {
        let name = r.string()?;
        let value = r.string()?;
        field.push(UserProperty { name, value });
        Ok(())
    }

    fn write<S: Sink>(w: &mut S, id: u8, field: &Vec<UserProperty>) -> Result<(), EncodeError> {
        for user in field {
            w.put_u8(id);
            w.string(&user.name)?;
            w.string(&user.value)?;
        }
        Ok(())
    }
}

/// Stores a property that may appear at most once.
fn once<T>(slot: &mut Option<T>, id: u8, value: T) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::DuplicateProperty(id));
    }
    *slot = Some(value);
    Ok(())
}

/// A value where zero is a protocol error.
fn nonzero<T: Default + PartialEq>(value: T, id: u8) -> Result<T, DecodeError> {
    if value == T::default() {
        return Err(DecodeError::InvalidPropertyValue(id));
    }
    Ok(value)
}

/// Subscription Identifier: a Variable Byte Integer 1..=268,435,455; zero is
/// a protocol error (spec 3.3.2.3.8, 3.8.2.1.2).
fn subscription_identifier(r: &mut Reader, id: u8) -> Result<u32, DecodeError> {
    nonzero(r.varint()?, id)
}

/// The encoder refuses what the decoder would: zero, and values too large
/// for a Variable Byte Integer.
fn put_subscription_identifier<S: Sink>(w: &mut S, value: u32) -> Result<(), EncodeError> {
    if value == 0 || value > MAX_VARINT {
        return Err(EncodeError::InvalidValue(
            "Subscription Identifier outside 1..=268435455",
        ));
    }
    w.varint(value)
}

// ---- The table of each packet ------------------------------------------

/// Implements [`PropertySet`] from a packet's table: one row per property it
/// may carry, `IDENTIFIER => field: Kind`, in the order they are written.
macro_rules! property_table {
    ($set:ty { $($id:ident => $field:ident: $kind:ty,)* }) => {
        impl PropertySet for $set {
            fn read_one(&mut self, id: u8, r: &mut Reader) -> Result<(), DecodeError> {
                match id {
                    $(id::$id => <$kind>::read(&mut self.$field, id, r),)*
                    _ => Err(DecodeError::InvalidProperty(id)),
                }
            }

            fn write_all<S: Sink>(&self, w: &mut S) -> Result<(), EncodeError> {
                $(<$kind>::write(w, id::$id, &self.$field)?;)*
                Ok(())
            }
        }
    };
}

// Spec 3.1.2.11.
property_table!(ConnectProperties {
    SESSION_EXPIRY_INTERVAL => session_expiry_interval: U32,
    RECEIVE_MAXIMUM => receive_maximum: ReceiveMaximum,
    MAXIMUM_PACKET_SIZE => maximum_packet_size: MaximumPacketSize,
    TOPIC_ALIAS_MAXIMUM => topic_alias_maximum: U16,
    REQUEST_RESPONSE_INFORMATION => request_response_information: Flag,
    REQUEST_PROBLEM_INFORMATION => request_problem_information: Flag,
    AUTHENTICATION_METHOD => authentication_method: Str,
    AUTHENTICATION_DATA => authentication_data: Bin,
    USER_PROPERTY => user_properties: Users,
});

// Spec 3.1.3.2.
property_table!(WillProperties {
    WILL_DELAY_INTERVAL => will_delay_interval: U32,
    PAYLOAD_FORMAT_INDICATOR => payload_format_indicator: Flag,
    MESSAGE_EXPIRY_INTERVAL => message_expiry_interval: U32,
    CONTENT_TYPE => content_type: Str,
    RESPONSE_TOPIC => response_topic: Str,
    CORRELATION_DATA => correlation_data: Bin,
    USER_PROPERTY => user_properties: Users,
});

// Spec 3.2.2.3.
property_table!(ConnAckProperties {
    SESSION_EXPIRY_INTERVAL => session_expiry_interval: U32,
    RECEIVE_MAXIMUM => receive_maximum: ReceiveMaximum,
    MAXIMUM_QOS => maximum_qos: MaximumQos,
    RETAIN_AVAILABLE => retain_available: Flag,
    MAXIMUM_PACKET_SIZE => maximum_packet_size: MaximumPacketSize,
    ASSIGNED_CLIENT_IDENTIFIER => assigned_client_identifier: Str,
    TOPIC_ALIAS_MAXIMUM => topic_alias_maximum: U16,
    REASON_STRING => reason_string: Str,
    USER_PROPERTY => user_properties: Users,
    WILDCARD_SUBSCRIPTION_AVAILABLE => wildcard_subscription_available: Flag,
    SUBSCRIPTION_IDENTIFIER_AVAILABLE => subscription_identifiers_available: Flag,
    SHARED_SUBSCRIPTION_AVAILABLE => shared_subscription_available: Flag,
    SERVER_KEEP_ALIVE => server_keep_alive: U16,
    RESPONSE_INFORMATION => response_information: Str,
    SERVER_REFERENCE => server_reference: Str,
    AUTHENTICATION_METHOD => authentication_method: Str,
    AUTHENTICATION_DATA => authentication_data: Bin,
});

// Spec 3.3.2.3.
property_table!(PublishProperties {
    PAYLOAD_FORMAT_INDICATOR => payload_format_indicator: Flag,
    MESSAGE_EXPIRY_INTERVAL => message_expiry_interval: U32,
    // Topic Alias 0 is a protocol error too, but one the broker reports as
    // Topic Alias Invalid along with its maximum check (spec 3.3.2.3.4).
    TOPIC_ALIAS => topic_alias: U16,
    RESPONSE_TOPIC => response_topic: Str,
    CORRELATION_DATA => correlation_data: Bin,
    USER_PROPERTY => user_properties: Users,
    SUBSCRIPTION_IDENTIFIER => subscription_identifiers: SubscriptionIdentifiers,
    CONTENT_TYPE => content_type: Str,
});

// PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK, UNSUBACK (spec 3.4.2.2 to 3.7.2.2,
// 3.9.2.1, 3.11.2.1).
property_table!(AckProperties {
    REASON_STRING => reason_string: Str,
    USER_PROPERTY => user_properties: Users,
});

// Spec 3.8.2.1.
property_table!(SubscribeProperties {
    SUBSCRIPTION_IDENTIFIER => subscription_identifier: SubscriptionIdentifier,
    USER_PROPERTY => user_properties: Users,
});

// Spec 3.10.2.1.
property_table!(UnsubscribeProperties {
    USER_PROPERTY => user_properties: Users,
});

// Spec 3.14.2.2.
property_table!(DisconnectProperties {
    SESSION_EXPIRY_INTERVAL => session_expiry_interval: U32,
    REASON_STRING => reason_string: Str,
    USER_PROPERTY => user_properties: Users,
    SERVER_REFERENCE => server_reference: Str,
});

// Spec 3.15.2.2.
property_table!(AuthProperties {
    AUTHENTICATION_METHOD => authentication_method: Str,
    AUTHENTICATION_DATA => authentication_data: Bin,
    REASON_STRING => reason_string: Str,
    USER_PROPERTY => user_properties: Users,
});
