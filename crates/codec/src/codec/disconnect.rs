//! DISCONNECT (spec 3.14) and AUTH (spec 3.15): in MQTT 5 both are a reason
//! code and properties, either of which may be left out. Before 5.0
//! DISCONNECT has no body and AUTH does not exist.

use crate::codec::ack::{decode_reason_tail, encode_reason_tail};
use crate::codec::read::Reader;
use crate::codec::write::Sink;
use crate::reason::{AUTH_REASONS, DISCONNECT_REASONS};
use crate::{Auth, DecodeError, Disconnect, EncodeError, ProtocolVersion, ReasonCode};

use ReasonCode::*;

/// Reads a DISCONNECT body. Remaining length 0 means Normal disconnection
/// (spec 3.14.2.1); before 5.0 the body is empty (the caller checks).
pub(crate) fn decode_disconnect(
    r: &mut Reader,
    version: ProtocolVersion,
) -> Result<Disconnect, DecodeError> {
    if version != ProtocolVersion::V5 {
        return Ok(Disconnect::new(Success));
    }
    let (reason, properties) = decode_reason_tail(r, DISCONNECT_REASONS)?;
    Ok(Disconnect { reason, properties })
}

/// Writes a DISCONNECT body: nothing before 5.0 (the reason is dropped),
/// the shortest form at 5.0 (a lone reason code is allowed: spec 3.14.2.2.1
/// reads a remaining length under 2 as no properties).
pub(crate) fn encode_disconnect<S: Sink>(
    disconnect: &Disconnect,
    version: ProtocolVersion,
    w: &mut S,
) -> Result<(), EncodeError> {
    if version != ProtocolVersion::V5 {
        return Ok(());
    }
    encode_reason_tail(
        disconnect.reason,
        &disconnect.properties,
        DISCONNECT_REASONS,
        true,
        w,
    )
}

/// Reads an AUTH body (the caller only gets here at level 5). Remaining
/// length 0 means Success (spec 3.15.2.1); a lone reason code is accepted
/// as having no properties, like DISCONNECT.
pub(crate) fn decode_auth(r: &mut Reader) -> Result<Auth, DecodeError> {
    let (reason, properties) = decode_reason_tail(r, AUTH_REASONS)?;
    Ok(Auth { reason, properties })
}

/// Writes an AUTH body. Unlike DISCONNECT, spec 3.15 only lets both fields go
/// together, so a reason is always followed by its property length.
pub(crate) fn encode_auth<S: Sink>(
    auth: &Auth,
    version: ProtocolVersion,
    w: &mut S,
) -> Result<(), EncodeError> {
    if version != ProtocolVersion::V5 {
        return Err(EncodeError::NotAtThisLevel("AUTH"));
    }
    encode_reason_tail(auth.reason, &auth.properties, AUTH_REASONS, false, w)
}
