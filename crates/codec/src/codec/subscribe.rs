//! SUBSCRIBE, SUBACK, UNSUBSCRIBE and UNSUBACK (spec 3.8 to 3.11).
//!
//! All four start with a packet id and (MQTT 5) a property block, then a list
//! that runs to the end of the packet: topic filters with options, filters
//! alone, or one reason code per filter.

use crate::codec::props::{self, PropertySet};
use crate::codec::read::Reader;
use crate::codec::write::Sink;
use crate::reason::{SUBACK_REASONS, SUBACK_RETURN_CODES, UNSUBACK_REASONS};
use crate::{
    DecodeError, EncodeError, ProtocolVersion, QoS, ReasonCode, RetainHandling, SubAck, Subscribe,
    SubscribeFilter, SubscriptionOptions, UnsubAck, Unsubscribe,
};

use ReasonCode::*;

// Subscription Options bits (spec 3.8.3.1).
const OPT_QOS: u8 = 0x03;
const OPT_NO_LOCAL: u8 = 0x04;
const OPT_RETAIN_AS_PUBLISHED: u8 = 0x08;
const OPT_RETAIN_HANDLING_SHIFT: u8 = 4;
const OPT_RETAIN_HANDLING: u8 = 0x30;
const OPT_RESERVED_V5: u8 = 0xC0;

/// The properties block at level 5, nothing before.
fn decode_props<P: PropertySet>(
    r: &mut Reader,
    version: ProtocolVersion,
) -> Result<P, DecodeError> {
    if version == ProtocolVersion::V5 {
        props::decode(r)
    } else {
        Ok(P::default())
    }
}

fn encode_props<P: PropertySet, S: Sink>(
    p: &P,
    version: ProtocolVersion,
    w: &mut S,
) -> Result<(), EncodeError> {
    if version == ProtocolVersion::V5 {
        props::encode(p, w)
    } else {
        Ok(())
    }
}

/// Reads a Subscription Options byte (3.1.1: the Requested QoS byte).
fn decode_options(byte: u8, version: ProtocolVersion) -> Result<SubscriptionOptions, DecodeError> {
    let reserved = if version == ProtocolVersion::V5 {
        OPT_RESERVED_V5 // [MQTT-3.8.3-5]
    } else {
        !OPT_QOS // 3.1.1 [MQTT-3-8.3-4]: the upper six bits are reserved.
    };
    if byte & reserved != 0 {
        return Err(DecodeError::ReservedBitSet);
    }
    // [MQTT-3-8.3-4] (3.1.1), spec 3.8.3.1 (5.0): QoS 3 is malformed.
    let qos = QoS::from_u8(byte & OPT_QOS).ok_or(DecodeError::InvalidQoS)?;
    // Retain Handling 3 is a protocol error (spec 3.8.3.1). It is reported as
    // a reserved value rather than as a QoS: the field is not a QoS.
    let retain_handling = match (byte & OPT_RETAIN_HANDLING) >> OPT_RETAIN_HANDLING_SHIFT {
        0 => RetainHandling::SendAtSubscribe,
        1 => RetainHandling::SendAtSubscribeIfNew,
        2 => RetainHandling::DoNotSend,
        _ => return Err(DecodeError::ReservedBitSet),
    };
    Ok(SubscriptionOptions {
        qos,
        no_local: byte & OPT_NO_LOCAL != 0,
        retain_as_published: byte & OPT_RETAIN_AS_PUBLISHED != 0,
        retain_handling,
    })
}

/// Writes a Subscription Options byte; before 5.0 only the QoS exists.
fn encode_options(options: &SubscriptionOptions, version: ProtocolVersion) -> u8 {
    let mut byte = options.qos as u8;
    if version == ProtocolVersion::V5 {
        byte |= (options.retain_handling as u8) << OPT_RETAIN_HANDLING_SHIFT;
        if options.no_local {
            byte |= OPT_NO_LOCAL;
        }
        if options.retain_as_published {
            byte |= OPT_RETAIN_AS_PUBLISHED;
        }
    }
    byte
}

pub(crate) fn decode_subscribe(
    r: &mut Reader,
    version: ProtocolVersion,
) -> Result<Subscribe, DecodeError> {
    let packet_id = r.packet_id()?;
    let properties = decode_props(r, version)?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = r.string()?;
        let options = decode_options(r.u8()?, version)?;
        filters.push(SubscribeFilter { filter, options });
    }
    // [MQTT-3.8.3-3]: at least one filter.
    if filters.is_empty() {
        return Err(DecodeError::NoTopicFilter);
    }
    Ok(Subscribe {
        packet_id,
        filters,
        properties,
    })
}

pub(crate) fn encode_subscribe<S: Sink>(
    subscribe: &Subscribe,
    version: ProtocolVersion,
    w: &mut S,
) -> Result<(), EncodeError> {
    if subscribe.filters.is_empty() {
        return Err(EncodeError::InvalidValue("SUBSCRIBE without topic filters"));
    }
    w.put_u16(subscribe.packet_id.get());
    encode_props(&subscribe.properties, version, w)?;
    for filter in &subscribe.filters {
        w.string(&filter.filter)?;
        w.put_u8(encode_options(&filter.options, version));
    }
    Ok(())
}

pub(crate) fn decode_suback(
    r: &mut Reader,
    version: ProtocolVersion,
) -> Result<SubAck, DecodeError> {
    let packet_id = r.packet_id()?;
    let properties = decode_props(r, version)?;
    let allowed = if version == ProtocolVersion::V5 {
        SUBACK_REASONS
    } else {
        SUBACK_RETURN_CODES
    };
    let mut reasons = Vec::with_capacity(r.remaining());
    while !r.is_empty() {
        reasons.push(r.reason(allowed)?);
    }
    Ok(SubAck {
        packet_id,
        reasons,
        properties,
    })
}

pub(crate) fn encode_suback<S: Sink>(
    ack: &SubAck,
    version: ProtocolVersion,
    w: &mut S,
) -> Result<(), EncodeError> {
    w.put_u16(ack.packet_id.get());
    encode_props(&ack.properties, version, w)?;
    for &reason in &ack.reasons {
        if version == ProtocolVersion::V5 {
            w.reason(reason, SUBACK_REASONS)?;
        } else {
            // 3.1.1 has one failure code, 0x80, for every failure.
            let code = match reason {
                Success | GrantedQoS1 | GrantedQoS2 => reason as u8,
                _ => UnspecifiedError as u8,
            };
            w.put_u8(code);
        }
    }
    Ok(())
}

pub(crate) fn decode_unsubscribe(
    r: &mut Reader,
    version: ProtocolVersion,
) -> Result<Unsubscribe, DecodeError> {
    let packet_id = r.packet_id()?;
    let properties = decode_props(r, version)?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        filters.push(r.string()?);
    }
    // [MQTT-3.10.3-2]: at least one filter.
    if filters.is_empty() {
        return Err(DecodeError::NoTopicFilter);
    }
    Ok(Unsubscribe {
        packet_id,
        filters,
        properties,
    })
}

pub(crate) fn encode_unsubscribe<S: Sink>(
    unsubscribe: &Unsubscribe,
    version: ProtocolVersion,
    w: &mut S,
) -> Result<(), EncodeError> {
    if unsubscribe.filters.is_empty() {
        return Err(EncodeError::InvalidValue(
            "UNSUBSCRIBE without topic filters",
        ));
    }
    w.put_u16(unsubscribe.packet_id.get());
    encode_props(&unsubscribe.properties, version, w)?;
    for filter in &unsubscribe.filters {
        w.string(filter)?;
    }
    Ok(())
}

/// Before 5.0 an UNSUBACK is only the packet id (spec 3.1.1 3.11).
pub(crate) fn decode_unsuback(
    r: &mut Reader,
    version: ProtocolVersion,
) -> Result<UnsubAck, DecodeError> {
    let packet_id = r.packet_id()?;
    let properties = decode_props(r, version)?;
    let mut reasons = Vec::new();
    if version == ProtocolVersion::V5 {
        reasons.reserve(r.remaining());
        while !r.is_empty() {
            reasons.push(r.reason(UNSUBACK_REASONS)?);
        }
    }
    Ok(UnsubAck {
        packet_id,
        reasons,
        properties,
    })
}

pub(crate) fn encode_unsuback<S: Sink>(
    ack: &UnsubAck,
    version: ProtocolVersion,
    w: &mut S,
) -> Result<(), EncodeError> {
    w.put_u16(ack.packet_id.get());
    if version == ProtocolVersion::V5 {
        props::encode(&ack.properties, w)?;
        for &reason in &ack.reasons {
            w.reason(reason, UNSUBACK_REASONS)?;
        }
    }
    Ok(())
}
