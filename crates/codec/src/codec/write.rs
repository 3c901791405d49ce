//! Writing primitives, and a byte counter that shares the packet writers.
//!
//! Every packet body is written through the [`Sink`] trait. Running the same
//! writer first on a [`Counter`] gives the remaining length (and finds every
//! encode error) before a single byte goes to the output buffer, so the fixed
//! header can be written up front and a failed encode leaves `out` untouched.

use bytes::{BufMut, BytesMut};

use crate::codec::read::MAX_VARINT;
use crate::{EncodeError, ReasonCode};

/// Where encoded fields go: a real buffer or a [`Counter`].
pub(crate) trait Sink {
    fn put_u8(&mut self, v: u8);
    fn put_u16(&mut self, v: u16);
    fn put_u32(&mut self, v: u32);
    fn put_slice(&mut self, v: &[u8]);

    /// Variable Byte Integer (spec 1.5.5), in the fewest bytes [MQTT-1.5.5-1].
    /// Only a property length can exceed the range here, so the error is
    /// the packet being too large.
    fn varint(&mut self, v: u32) -> Result<(), EncodeError> {
        if v > MAX_VARINT {
            return Err(EncodeError::PacketTooLarge);
        }
        let mut rest = v;
        loop {
            // Truncation is the point: the low seven bits go in this byte.
            let mut byte = (rest & 0x7F) as u8;
            rest >>= 7;
            if rest != 0 {
                byte |= 0x80;
            }
            self.put_u8(byte);
            if rest == 0 {
                return Ok(());
            }
        }
    }

    /// Binary Data: two-byte length, then the bytes (spec 1.5.6).
    fn binary(&mut self, v: &[u8]) -> Result<(), EncodeError> {
        let len = u16::try_from(v.len()).map_err(|_| EncodeError::FieldTooLong)?;
        self.put_u16(len);
        self.put_slice(v);
        Ok(())
    }

    /// UTF-8 Encoded String (spec 1.5.4): the same layout as binary data.
    fn string(&mut self, v: &str) -> Result<(), EncodeError> {
        self.binary(v.as_bytes())
    }

    /// A reason code, which must be one of `allowed` (the spec's table for the
    /// packet being written), so that we never send what we would refuse.
    fn reason(&mut self, code: ReasonCode, allowed: &[ReasonCode]) -> Result<(), EncodeError> {
        if !allowed.contains(&code) {
            return Err(EncodeError::InvalidValue(
                "reason code not allowed in this packet",
            ));
        }
        self.put_u8(code as u8);
        Ok(())
    }
}

impl Sink for BytesMut {
    fn put_u8(&mut self, v: u8) {
        BufMut::put_u8(self, v);
    }
    fn put_u16(&mut self, v: u16) {
        BufMut::put_u16(self, v);
    }
    fn put_u32(&mut self, v: u32) {
        BufMut::put_u32(self, v);
    }
    fn put_slice(&mut self, v: &[u8]) {
        self.extend_from_slice(v);
    }
}

/// A [`Sink`] that only counts bytes. Saturates instead of overflowing: any
/// count that large is refused as too large anyway.
#[derive(Debug, Default)]
pub(crate) struct Counter(pub(crate) usize);

impl Sink for Counter {
    fn put_u8(&mut self, _: u8) {
        self.0 = self.0.saturating_add(1);
    }
    fn put_u16(&mut self, _: u16) {
        self.0 = self.0.saturating_add(2);
    }
    fn put_u32(&mut self, _: u32) {
        self.0 = self.0.saturating_add(4);
    }
    fn put_slice(&mut self, v: &[u8]) {
        self.0 = self.0.saturating_add(v.len());
    }
}

/// The number of bytes `v` takes as a Variable Byte Integer.
pub(crate) fn varint_len(v: usize) -> usize {
    match v {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::read::parse_varint;

    #[test]
    fn varint_round_trip_and_length() {
        for v in [
            0, 1, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152, MAX_VARINT,
        ] {
            let mut out = BytesMut::new();
            out.varint(v).unwrap();
            assert_eq!(out.len(), varint_len(v as usize), "{v}");
            assert_eq!(parse_varint(&out), Ok(Some((v, out.len()))));
        }
        assert_eq!(
            BytesMut::new().varint(MAX_VARINT + 1),
            Err(EncodeError::PacketTooLarge)
        );
    }

    #[test]
    fn counter_agrees_with_buffer() {
        let mut out = BytesMut::new();
        let mut count = Counter::default();
        for sink in [&mut out as &mut dyn SinkObj, &mut count] {
            sink.all();
        }
        assert_eq!(out.len(), count.0);
    }

    /// Object-safe wrapper so both sinks run the same calls in the test above.
    trait SinkObj {
        fn all(&mut self);
    }
    impl<S: Sink> SinkObj for S {
        fn all(&mut self) {
            self.put_u8(1);
            self.put_u16(2);
            self.put_u32(3);
            self.varint(300).unwrap();
            self.string("héllo").unwrap();
            self.binary(&[1, 2, 3]).unwrap();
        }
    }

    #[test]
    fn long_fields_are_refused() {
        let long = vec![0u8; 65_536];
        assert_eq!(
            BytesMut::new().binary(&long),
            Err(EncodeError::FieldTooLong)
        );
        assert_eq!(
            Counter::default().binary(&long),
            Err(EncodeError::FieldTooLong)
        );
        assert!(BytesMut::new().binary(&long[1..]).is_ok());
    }
}
