//! Checked reading primitives for packet bodies.
//!
//! Every read goes through [`Reader`], which knows how many bytes of the
//! packet are left and answers [`DecodeError::UnexpectedEnd`] instead of
//! reading past them. Nothing here indexes, unwraps or does unchecked
//! arithmetic on wire data, so no input can make the decoder panic.

use std::num::NonZeroU16;

use bytes::{Buf, Bytes};

use crate::{ByteStr, DecodeError, ReasonCode};

/// The largest value a Variable Byte Integer can carry (spec 1.5.5).
pub(crate) const MAX_VARINT: u32 = 268_435_455;

/// Parses a Variable Byte Integer from the front of `buf` (spec 1.5.5).
///
/// Returns `Ok(None)` while the integer is incomplete, and the value with the
/// number of bytes it took otherwise. A fourth byte that still has its
/// continuation bit set is refused at once: the integer would need a fifth
/// byte, and at most four are allowed.
pub(crate) fn parse_varint(buf: &[u8]) -> Result<Option<(u32, usize)>, DecodeError> {
    let mut value = 0u32;
    for (len, (shift, &byte)) in (1usize..).zip((0u32..).step_by(7).zip(buf.iter().take(4))) {
        value |= u32::from(byte & 0x7F) << shift;
        if byte & 0x80 == 0 {
            return Ok(Some((value, len)));
        }
    }
    if buf.len() >= 4 {
        Err(DecodeError::MalformedVarInt)
    } else {
        Ok(None)
    }
}

/// A cursor over the body of one packet (everything after the fixed header).
///
/// Slices it hands out share the packet's `Bytes`: no payload is copied.
#[derive(Debug)]
pub(crate) struct Reader {
    buf: Bytes,
}

impl Reader {
    pub(crate) fn new(buf: Bytes) -> Self {
        Reader { buf }
    }

    /// Bytes not read yet.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        self.buf
            .try_get_u8()
            .map_err(|_| DecodeError::UnexpectedEnd)
    }

    /// Two Byte Integer, big-endian (spec 1.5.2).
    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        self.buf
            .try_get_u16()
            .map_err(|_| DecodeError::UnexpectedEnd)
    }

    /// Four Byte Integer, big-endian (spec 1.5.3).
    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        self.buf
            .try_get_u32()
            .map_err(|_| DecodeError::UnexpectedEnd)
    }

    /// Variable Byte Integer (spec 1.5.5): at most four bytes.
    pub(crate) fn varint(&mut self) -> Result<u32, DecodeError> {
        let (value, len) = parse_varint(&self.buf)?.ok_or(DecodeError::UnexpectedEnd)?;
        self.take(len)?;
        Ok(value)
    }

    /// The next `n` bytes, as a slice of the packet.
    pub(crate) fn take(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        if n > self.buf.len() {
            return Err(DecodeError::UnexpectedEnd);
        }
        Ok(self.buf.split_to(n))
    }

    /// Everything not read yet (the PUBLISH payload).
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    /// Binary Data: a two-byte length, then that many bytes (spec 1.5.6).
    pub(crate) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }

    /// UTF-8 Encoded String (spec 1.5.4): well-formed UTF-8 [MQTT-1.5.4-1]
    /// with no U+0000 [MQTT-1.5.4-2]. `ByteStr::from_utf8` already refuses
    /// surrogates and ill-formed sequences; the NUL check is ours.
    pub(crate) fn string(&mut self) -> Result<ByteStr, DecodeError> {
        let bytes = self.binary()?;
        if bytes.contains(&0) {
            return Err(DecodeError::InvalidUtf8);
        }
        ByteStr::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8)
    }

    /// A Packet Identifier, which is never zero [MQTT-2.2.1-3].
    pub(crate) fn packet_id(&mut self) -> Result<NonZeroU16, DecodeError> {
        NonZeroU16::new(self.u16()?).ok_or(DecodeError::ZeroPacketId)
    }

    /// A reason code byte that must be one of `allowed` (the spec's table for
    /// the packet being read).
    pub(crate) fn reason(&mut self, allowed: &[ReasonCode]) -> Result<ReasonCode, DecodeError> {
        let byte = self.u8()?;
        match ReasonCode::try_from(byte) {
            Ok(code) if allowed.contains(&code) => Ok(code),
            _ => Err(DecodeError::InvalidReasonCode(byte)),
        }
    }

    /// A reader over the next `n` bytes (a property block), advancing past them.
    pub(crate) fn sub_reader(&mut self, n: usize) -> Result<Reader, DecodeError> {
        self.take(n).map(Reader::new)
    }

    /// Ends the packet: every byte must have been read.
    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_boundaries() {
        // The examples of spec table 1.5.5-1 (smallest and largest per length).
        let cases: &[(&[u8], u32)] = &[
            (&[0x00], 0),
            (&[0x7F], 127),
            (&[0x80, 0x01], 128),
            (&[0xFF, 0x7F], 16_383),
            (&[0x80, 0x80, 0x01], 16_384),
            (&[0xFF, 0xFF, 0x7F], 2_097_151),
            (&[0x80, 0x80, 0x80, 0x01], 2_097_152),
            (&[0xFF, 0xFF, 0xFF, 0x7F], MAX_VARINT),
        ];
        for &(bytes, value) in cases {
            assert_eq!(parse_varint(bytes), Ok(Some((value, bytes.len()))));
            // Every strict prefix is incomplete, not an error.
            for end in 0..bytes.len() {
                assert_eq!(parse_varint(bytes.get(..end).unwrap()), Ok(None));
            }
        }
    }

    #[test]
    fn varint_fifth_byte_is_malformed() {
        assert_eq!(
            parse_varint(&[0xFF, 0xFF, 0xFF, 0xFF]),
            Err(DecodeError::MalformedVarInt)
        );
        assert_eq!(
            parse_varint(&[0x80, 0x80, 0x80, 0x80, 0x01]),
            Err(DecodeError::MalformedVarInt)
        );
    }

    #[test]
    fn reads_stop_at_the_end() {
        let mut r = Reader::new(Bytes::from_static(&[0x00, 0x05, b'a']));
        assert_eq!(r.binary(), Err(DecodeError::UnexpectedEnd));
        let mut r = Reader::new(Bytes::from_static(&[0x01]));
        assert_eq!(r.u16(), Err(DecodeError::UnexpectedEnd));
        let mut r = Reader::new(Bytes::from_static(&[0x80]));
        assert_eq!(r.varint(), Err(DecodeError::UnexpectedEnd));
        let mut r = Reader::new(Bytes::new());
        assert_eq!(r.u8(), Err(DecodeError::UnexpectedEnd));
        assert_eq!(r.u32(), Err(DecodeError::UnexpectedEnd));
        assert_eq!(r.take(1), Err(DecodeError::UnexpectedEnd));
        assert_eq!(r.finish(), Ok(()));
    }

    #[test]
    fn strings_refuse_nul_and_bad_utf8() {
        let mut r = Reader::new(Bytes::from_static(&[0x00, 0x03, b'a', 0x00, b'b']));
        assert_eq!(r.string(), Err(DecodeError::InvalidUtf8));
        let mut r = Reader::new(Bytes::from_static(&[0x00, 0x02, 0xC3, 0x28]));
        assert_eq!(r.string(), Err(DecodeError::InvalidUtf8));
        // An encoded surrogate (U+D800) is ill-formed [MQTT-1.5.4-1].
        let mut r = Reader::new(Bytes::from_static(&[0x00, 0x03, 0xED, 0xA0, 0x80]));
        assert_eq!(r.string(), Err(DecodeError::InvalidUtf8));
        let mut r = Reader::new(Bytes::from_static(&[0x00, 0x02, 0xC3, 0xA9]));
        assert_eq!(r.string().unwrap(), "é");
    }
}
