//! Framing: the fixed header, remaining length, and the encode/decode entry points.

use bytes::BytesMut;

use crate::{DecodeError, EncodeError, Packet, ProtocolVersion};

/// Decodes one packet from the front of `buf`.
///
/// Returns `Ok(None)` if `buf` does not yet hold a whole packet (read more and
/// call again; nothing is consumed). A packet whose fixed header declares a total
/// size above `max_packet_size` is refused as soon as the header is readable,
/// before its body is buffered. CONNECT is decoded whatever `version` says (it
/// carries its own level); every other packet is decoded at `version`.
pub fn decode(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    max_packet_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    let _ = (buf, version, max_packet_size);
    todo!("codec helper")
}

impl Packet {
    /// Appends the encoded packet to `out`. On error nothing is appended.
    pub fn encode(&self, version: ProtocolVersion, out: &mut BytesMut) -> Result<(), EncodeError> {
        let _ = (version, out);
        todo!("codec helper")
    }
}
