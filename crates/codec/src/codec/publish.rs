//! PUBLISH (spec 3.3): header flags, topic, packet id, properties, payload.
//!
//! The payload is whatever follows the variable header, handed out as a
//! slice of the receive buffer: no copy.

use crate::codec::props;
use crate::codec::read::Reader;
use crate::codec::write::Sink;
use crate::{DecodeError, EncodeError, ProtocolVersion, Publish, PublishView, QoS};

const DUP: u8 = 0x08;
const QOS_SHIFT: u8 = 1;
const QOS_MASK: u8 = 0x06;
const RETAIN: u8 = 0x01;

/// Checks the PUBLISH fixed header flags, before the body is buffered.
pub(crate) fn check_flags(flags: u8) -> Result<QoS, DecodeError> {
    // [MQTT-3.3.1-4]: both QoS bits set is a malformed packet.
    let qos = QoS::from_u8((flags & QOS_MASK) >> QOS_SHIFT).ok_or(DecodeError::InvalidQoS)?;
    // [MQTT-3.3.1-2]: DUP must be 0 on QoS 0. Malformed in MQTT 5 (spec
    // 3.3.1.1); the same MUST is in 3.1.1, so every level refuses it.
    if qos == QoS::AtMostOnce && flags & DUP != 0 {
        return Err(DecodeError::InvalidFlags {
            packet_type: 3,
            flags,
        });
    }
    Ok(qos)
}

/// Reads a PUBLISH body; `flags` are the low four bits of the fixed header.
pub(crate) fn decode(
    r: &mut Reader,
    flags: u8,
    version: ProtocolVersion,
) -> Result<Publish, DecodeError> {
    let qos = check_flags(flags)?;
    let topic = r.string()?;
    // The packet identifier is present only at QoS 1 and 2 (spec 3.3.2.2).
    let packet_id = if qos == QoS::AtMostOnce {
        None
    } else {
        Some(r.packet_id()?)
    };
    let properties = if version == ProtocolVersion::V5 {
        props::decode(r)?
    } else {
        Default::default()
    };
    Ok(Publish {
        dup: flags & DUP != 0,
        qos,
        retain: flags & RETAIN != 0,
        topic,
        packet_id,
        payload: r.rest(),
        properties,
    })
}

/// The fixed header flags of `publish` (spec 3.3.1).
pub(crate) fn flags(publish: &PublishView) -> u8 {
    let mut flags = (publish.qos as u8) << QOS_SHIFT;
    if publish.dup {
        flags |= DUP;
    }
    if publish.retain {
        flags |= RETAIN;
    }
    flags
}

/// Writes a PUBLISH body, after checking what the decoder would refuse.
pub(crate) fn encode<S: Sink>(
    publish: &PublishView,
    version: ProtocolVersion,
    w: &mut S,
) -> Result<(), EncodeError> {
    if (publish.qos == QoS::AtMostOnce) != publish.packet_id.is_none() {
        return Err(EncodeError::PacketIdMismatch);
    }
    // [MQTT-3.3.1-2]; a forwarded message does not keep the incoming DUP
    // [MQTT-3.3.1-3], so a QoS 0 copy must have it cleared by the caller.
    if publish.qos == QoS::AtMostOnce && publish.dup {
        return Err(EncodeError::InvalidValue("DUP set on a QoS 0 PUBLISH"));
    }
    w.string(publish.topic)?;
    if let Some(id) = publish.packet_id {
        w.put_u16(id.get());
    }
    if version == ProtocolVersion::V5 {
        props::encode(publish.properties, w)?;
    }
    w.put_slice(publish.payload);
    Ok(())
}
