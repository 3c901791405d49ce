//! CONNECT (spec 3.1) and CONNACK (spec 3.2).
//!
//! CONNECT carries its own protocol level, so it is decoded without the
//! connection's version and encoded at `connect.protocol`. CONNACK at levels
//! 3 and 4 carries a return code, mapped to and from the MQTT 5 reason code
//! of the same meaning.

use crate::codec::props;
use crate::codec::read::Reader;
use crate::codec::write::Sink;
use crate::reason::{CONNACK_REASONS, CONNACK_RETURN_CODES};
use crate::{
    ConnAck, Connect, DecodeError, EncodeError, LastWill, ProtocolVersion, QoS, ReasonCode,
};

use ReasonCode::*;

// Connect Flags bits (spec 3.1.2.3).
const RESERVED: u8 = 0x01;
const CLEAN_START: u8 = 0x02;
const WILL: u8 = 0x04;
const WILL_QOS_SHIFT: u8 = 3;
const WILL_QOS_MASK: u8 = 0x18;
const WILL_RETAIN: u8 = 0x20;
const PASSWORD: u8 = 0x40;
const USERNAME: u8 = 0x80;
/// Mosquitto's bridge flag, the top bit of the protocol level.
const BRIDGE: u8 = 0x80;

/// The protocol name and level of `version` (spec 3.1.2.1, 3.1.2.2).
fn protocol_name(version: ProtocolVersion) -> &'static str {
    match version {
        ProtocolVersion::V3_1 => "MQIsdp",
        ProtocolVersion::V3_1_1 | ProtocolVersion::V5 => "MQTT",
    }
}

/// Reads a CONNECT body, at the level the packet itself names.
pub(crate) fn decode_connect(r: &mut Reader) -> Result<Connect, DecodeError> {
    // Compared as bytes: a name that is not one of the two is refused as a
    // name, whatever its encoding.
    let name = r.binary()?;
    let level = r.u8()?;
    // Mosquitto's bridge flag: the level's top bit, before MQTT 5 only.
    let (base, bridge) = match level & !BRIDGE {
        base @ (3 | 4) if level & BRIDGE != 0 => (base, true),
        _ => (level, false),
    };
    let protocol = match (name.as_ref(), base) {
        (b"MQIsdp", 3) => ProtocolVersion::V3_1,
        (b"MQTT", 4) => ProtocolVersion::V3_1_1,
        (b"MQTT", 5) => ProtocolVersion::V5,
        (b"MQIsdp" | b"MQTT", _) => return Err(DecodeError::UnsupportedProtocolVersion(level)),
        _ => return Err(DecodeError::InvalidProtocolName),
    };

    let flags = r.u8()?;
    // [MQTT-3.1.2-3]: the reserved flag must be 0 (malformed packet).
    if flags & RESERVED != 0 {
        return Err(DecodeError::ReservedBitSet);
    }
    let has_will = flags & WILL != 0;
    let will_qos =
        QoS::from_u8((flags & WILL_QOS_MASK) >> WILL_QOS_SHIFT).ok_or(DecodeError::InvalidQoS)?; // [MQTT-3.1.2-12]: QoS 3 is malformed.
    let will_retain = flags & WILL_RETAIN != 0;
    // [MQTT-3.1.2-11], [MQTT-3.1.2-13], [MQTT-3.1.2-15]: without a will,
    // will QoS and will retain must be 0.
    if !has_will && (will_qos != QoS::AtMostOnce || will_retain) {
        return Err(DecodeError::InvalidConnectFlags);
    }
    let has_username = flags & USERNAME != 0;
    let has_password = flags & PASSWORD != 0;
    // [MQTT-3.1.2-22] (3.1.1): no password without a user name. MQTT 5
    // lifts this (spec 3.1.2.9).
    if protocol != ProtocolVersion::V5 && has_password && !has_username {
        return Err(DecodeError::InvalidConnectFlags);
    }

    let keep_alive = r.u16()?;
    let properties = if protocol == ProtocolVersion::V5 {
        props::decode(r)?
    } else {
        Default::default()
    };

    // Payload, in this order (spec 3.1.3).
    let client_id = r.string()?;
    let will = if has_will {
        let properties = if protocol == ProtocolVersion::V5 {
            props::decode(r)?
        } else {
            Default::default()
        };
        let topic = r.string()?;
        let payload = r.binary()?;
        Some(LastWill {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = if has_username {
        Some(r.string()?)
    } else {
        None
    };
    let password = if has_password {
        Some(r.binary()?)
    } else {
        None
    };

    Ok(Connect {
        protocol,
        bridge,
        clean_start: flags & CLEAN_START != 0,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })
}

/// Writes a CONNECT body at `connect.protocol`.
pub(crate) fn encode_connect<S: Sink>(connect: &Connect, w: &mut S) -> Result<(), EncodeError> {
    let v5 = connect.protocol == ProtocolVersion::V5;
    if !v5 && connect.password.is_some() && connect.username.is_none() {
        return Err(EncodeError::InvalidValue(
            "password without user name before MQTT 5",
        ));
    }

    let mut flags = 0;
    if connect.clean_start {
        flags |= CLEAN_START;
    }
    if let Some(will) = &connect.will {
        flags |= WILL | ((will.qos as u8) << WILL_QOS_SHIFT);
        if will.retain {
            flags |= WILL_RETAIN;
        }
    }
    if connect.username.is_some() {
        flags |= USERNAME;
    }
    if connect.password.is_some() {
        flags |= PASSWORD;
    }

    w.string(protocol_name(connect.protocol))?;
    let bridge = if connect.bridge && !v5 { BRIDGE } else { 0 };
    w.put_u8(connect.protocol as u8 | bridge);
    w.put_u8(flags);
    w.put_u16(connect.keep_alive);
    if v5 {
        props::encode(&connect.properties, w)?;
    }
    w.string(&connect.client_id)?;
    if let Some(will) = &connect.will {
        if v5 {
            props::encode(&will.properties, w)?;
        }
        w.string(&will.topic)?;
        w.binary(&will.payload)?;
    }
    if let Some(username) = &connect.username {
        w.string(username)?;
    }
    if let Some(password) = &connect.password {
        w.binary(password)?;
    }
    Ok(())
}

/// Reads a CONNACK body: acknowledge flags, return or reason code, and at
/// level 5 properties.
pub(crate) fn decode_connack(
    r: &mut Reader,
    version: ProtocolVersion,
) -> Result<ConnAck, DecodeError> {
    let ack_flags = r.u8()?;
    let session_present = match version {
        // In 3.1 this byte is unused ("reserved"); there is no session present.
        ProtocolVersion::V3_1 => false,
        // [MQTT-3.2.2-1] (5.0) and 3.1.1 3.2.2.1: bits 7-1 are reserved, 0.
        _ if ack_flags & 0xFE != 0 => return Err(DecodeError::ReservedBitSet),
        _ => ack_flags & 0x01 != 0,
    };
    let (reason, properties) = if version == ProtocolVersion::V5 {
        (r.reason(CONNACK_REASONS)?, props::decode(r)?)
    } else {
        let code = r.u8()?;
        let reason = CONNACK_RETURN_CODES
            .get(usize::from(code))
            .copied()
            .ok_or(DecodeError::InvalidReasonCode(code))?;
        (reason, Default::default())
    };
    Ok(ConnAck {
        session_present,
        reason,
        properties,
    })
}

/// Writes a CONNACK body. Before 5.0 the reason becomes a return code (see
/// [`ConnAck`]): failures with no 3.1.1 equivalent become Server unavailable.
pub(crate) fn encode_connack<S: Sink>(
    ack: &ConnAck,
    version: ProtocolVersion,
    w: &mut S,
) -> Result<(), EncodeError> {
    let session_present = version != ProtocolVersion::V3_1 && ack.session_present;
    w.put_u8(u8::from(session_present));
    if version == ProtocolVersion::V5 {
        w.reason(ack.reason, CONNACK_REASONS)?;
        props::encode(&ack.properties, w)?;
    } else {
        let code = match ack.reason {
            Success => 0,
            UnsupportedProtocolVersion => 1,
            ClientIdentifierNotValid => 2,
            BadUserNameOrPassword => 4,
            NotAuthorized => 5,
            _ => 3,
        };
        w.put_u8(code);
    }
    Ok(())
}
