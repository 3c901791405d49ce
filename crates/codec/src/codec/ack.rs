//! PUBACK, PUBREC, PUBREL and PUBCOMP (spec 3.4 to 3.7): one shape, four
//! packet types that differ only in header flags and reason code table. Also the MQTT 5 "reason code, then properties" tail that
//! these share with DISCONNECT and AUTH, where both parts may be left out.

use crate::codec::props::{self, PropertySet};
use crate::codec::read::Reader;
use crate::codec::write::Sink;
use crate::{DecodeError, EncodeError, ProtocolVersion, PubAck, ReasonCode};

use ReasonCode::*;

/// Reads the body: packet id, and at level 5 the optional reason and
/// properties (spec 3.4.2.1: remaining length 2 means Success, no properties).
pub(crate) fn decode(
    r: &mut Reader,
    version: ProtocolVersion,
    reasons: &[ReasonCode],
) -> Result<PubAck, DecodeError> {
    let packet_id = r.packet_id()?;
    let (reason, properties) = if version == ProtocolVersion::V5 {
        decode_reason_tail(r, reasons)?
    } else {
        (Success, Default::default())
    };
    Ok(PubAck {
        packet_id,
        reason,
        properties,
    })
}

/// Writes the body. Before 5.0 only the packet id exists; at 5.0 the shortest
/// form that carries the reason and properties is used.
pub(crate) fn encode<S: Sink>(
    ack: &PubAck,
    version: ProtocolVersion,
    reasons: &[ReasonCode],
    w: &mut S,
) -> Result<(), EncodeError> {
    w.put_u16(ack.packet_id.get());
    if version == ProtocolVersion::V5 {
        encode_reason_tail(ack.reason, &ack.properties, reasons, true, w)?;
    }
    Ok(())
}

/// Reads an MQTT 5 reason code and property block of which the sender may
/// omit both (meaning Success, no properties) or only the properties.
/// Used by the PUBACK family (spec 3.4.2.1, 3.4.2.2.1), DISCONNECT (spec
/// 3.14.2.1: "less than 2" means no property length) and AUTH (spec 3.15.2.1).
pub(crate) fn decode_reason_tail<P: PropertySet>(
    r: &mut Reader,
    allowed: &[ReasonCode],
) -> Result<(ReasonCode, P), DecodeError> {
    if r.is_empty() {
        return Ok((Success, P::default()));
    }
    let reason = r.reason(allowed)?;
    let properties = if r.is_empty() {
        P::default()
    } else {
        props::decode(r)?
    };
    Ok((reason, properties))
}

/// Writes the tail in its shortest form: nothing for Success without
/// properties; the reason alone without properties if `reason_only` allows
/// it; otherwise the reason and the property block.
pub(crate) fn encode_reason_tail<P: PropertySet, S: Sink>(
    reason: ReasonCode,
    properties: &P,
    allowed: &[ReasonCode],
    reason_only: bool,
    w: &mut S,
) -> Result<(), EncodeError> {
    let no_properties = properties.is_empty();
    if reason == Success && no_properties {
        return Ok(());
    }
    w.reason(reason, allowed)?;
    if !(reason_only && no_properties) {
        props::encode(properties, w)?;
    }
    Ok(())
}
