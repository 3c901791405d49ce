//! Decode and encode errors.
//!
//! "Not enough bytes yet" is not an error: the decoder returns `Ok(None)` and
//! the caller reads more. Every error here means the peer broke the protocol;
//! [`DecodeError::reason_code`] says which MQTT 5 reason code reports it.

use crate::ReasonCode;

/// Why a packet could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The remaining-length varint (or a property varint) is longer than 4 bytes.
    #[error("malformed variable byte integer (more than 4 bytes)")]
    MalformedVarInt,
    /// The declared packet size exceeds the limit; found from the fixed header,
    /// before the body is buffered.
    #[error("packet of {size} bytes exceeds the maximum of {max}")]
    PacketTooLarge { size: usize, max: usize },
    /// Packet type 0 or 15 at a level without AUTH.
    #[error("unknown packet type {0}")]
    UnknownPacketType(u8),
    /// Reserved fixed-header flag bits have the wrong value [MQTT-2.1.3-1].
    #[error("invalid fixed header flags {flags:#06b} for packet type {packet_type}")]
    InvalidFlags { packet_type: u8, flags: u8 },
    /// The body ended before a field it declares.
    #[error("packet shorter than its fields declare")]
    UnexpectedEnd,
    /// Bytes left over after the last field.
    #[error("packet longer than its fields declare")]
    TrailingBytes,
    /// Ill-formed UTF-8 or a U+0000 in a string [MQTT-1.5.4-1], [MQTT-1.5.4-2].
    #[error("invalid UTF-8 string")]
    InvalidUtf8,
    /// CONNECT protocol name is not "MQTT" (levels 4, 5) or "MQIsdp" (level 3).
    #[error("invalid protocol name")]
    InvalidProtocolName,
    /// CONNECT protocol level other than 3, 4 or 5.
    #[error("unsupported protocol level {0}")]
    UnsupportedProtocolVersion(u8),
    /// QoS bits set to 3 (PUBLISH header, will QoS, subscription options).
    /// A will QoS without the will flag is [`DecodeError::InvalidConnectFlags`].
    #[error("invalid QoS")]
    InvalidQoS,
    /// A reserved bit is set (CONNECT flags bit 0, CONNACK flags bits 7-1,
    /// subscription options bits 6-7, or at levels 3 and 4 bits 7-2 of the
    /// requested QoS byte), or Retain Handling has its reserved value 3.
    #[error("reserved bit set")]
    ReservedBitSet,
    /// A packet identifier of zero [MQTT-2.2.1-3].
    #[error("packet identifier is zero")]
    ZeroPacketId,
    /// Property identifier unknown, or not allowed in this packet.
    #[error("property {0:#04x} is not allowed here")]
    InvalidProperty(u8),
    /// A property that may appear once appears again.
    #[error("property {0:#04x} appears more than once")]
    DuplicateProperty(u8),
    /// A property value out of its range (e.g. Receive Maximum 0, boolean 2).
    #[error("invalid value for property {0:#04x}")]
    InvalidPropertyValue(u8),
    /// A reason code unknown or not allowed in this packet.
    #[error("invalid reason code {0:#04x}")]
    InvalidReasonCode(u8),
    /// SUBSCRIBE or UNSUBSCRIBE without any topic filter [MQTT-3.8.3-3], [MQTT-3.10.3-2].
    #[error("no topic filter in SUBSCRIBE/UNSUBSCRIBE")]
    NoTopicFilter,
    /// Other CONNECT flag combinations the spec forbids (e.g. password without
    /// user name at level 4, will flags set without the will flag).
    #[error("invalid CONNECT flags")]
    InvalidConnectFlags,
}

impl DecodeError {
    /// The MQTT 5 reason code that reports this error in a DISCONNECT (or in a
    /// CONNACK, if the error is in the CONNECT).
    pub fn reason_code(self) -> ReasonCode {
        match self {
            DecodeError::PacketTooLarge { .. } => ReasonCode::PacketTooLarge,
            DecodeError::UnsupportedProtocolVersion(_) | DecodeError::InvalidProtocolName => {
                ReasonCode::UnsupportedProtocolVersion
            }
            DecodeError::DuplicateProperty(_)
            | DecodeError::InvalidPropertyValue(_)
            | DecodeError::NoTopicFilter
            | DecodeError::ZeroPacketId => ReasonCode::ProtocolError,
            _ => ReasonCode::MalformedPacket,
        }
    }
}

/// Why a packet could not be encoded: the value cannot be carried at this
/// protocol level, or is out of the wire format's range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The packet does not exist at this level (AUTH before 5.0).
    #[error("{0} cannot be sent at this protocol level")]
    NotAtThisLevel(&'static str),
    /// Remaining length over 268,435,455 bytes.
    #[error("packet too large to encode")]
    PacketTooLarge,
    /// A string or binary field longer than 65,535 bytes.
    #[error("field longer than 65535 bytes")]
    FieldTooLong,
    /// QoS > 0 without a packet id, or QoS 0 with one.
    #[error("packet id does not match QoS")]
    PacketIdMismatch,
    /// A value the decoder would refuse: a reason code not allowed in this
    /// packet, a property out of its range (Receive Maximum 0, Maximum QoS 2,
    /// Subscription Identifier 0), DUP on a QoS 0 PUBLISH, a SUBSCRIBE or
    /// UNSUBSCRIBE without filters, a 3.1.1 password without user name.
    #[error("cannot encode: {0}")]
    InvalidValue(&'static str),
}
