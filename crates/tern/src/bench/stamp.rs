//! The header every benchmark payload starts with, and the clock it uses.
//!
//! 16 bytes, big endian: publisher index (u32), sequence number (u32), send
//! time in nanoseconds since the Unix epoch (u64). The rest of the payload
//! is zeros. The wall clock (CLOCK_REALTIME) is the base shared by every
//! process on the machine, so `tern bench sub` can time what another
//! `tern bench pub` sent.

use std::time::{SystemTime, UNIX_EPOCH};

/// Bytes of the header.
pub const STAMP_LEN: usize = 16;

/// A send time further than this from the receive time (either way) is not
/// a benchmark payload: the message is ignored.
const PLAUSIBLE_NS: u64 = 3_600 * 1_000_000_000;

/// What a payload says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub publisher: u32,
    pub seq: u32,
    pub sent_ns: u64,
}

/// Nanoseconds since the Unix epoch.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl Stamp {
    /// Writes the header into the first [`STAMP_LEN`] bytes of `payload`.
    pub fn write(&self, payload: &mut [u8]) {
        if let Some(head) = payload.get_mut(..STAMP_LEN) {
            head[..4].copy_from_slice(&self.publisher.to_be_bytes());
            head[4..8].copy_from_slice(&self.seq.to_be_bytes());
            head[8..16].copy_from_slice(&self.sent_ns.to_be_bytes());
        }
    }

    /// Reads the header of a payload received at `now_ns`; `None` if the
    /// payload is too short or its time is implausible (not ours).
    pub fn read(payload: &[u8], now_ns: u64) -> Option<Stamp> {
        let head: &[u8; STAMP_LEN] = payload.get(..STAMP_LEN)?.try_into().ok()?;
        let [p0, p1, p2, p3, s0, s1, s2, s3, t @ ..] = *head;
        let sent_ns = u64::from_be_bytes(t);
        if sent_ns.abs_diff(now_ns) > PLAUSIBLE_NS {
            return None;
        }
        Some(Stamp {
            publisher: u32::from_be_bytes([p0, p1, p2, p3]),
            seq: u32::from_be_bytes([s0, s1, s2, s3]),
            sent_ns,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let now = now_ns();
        let stamp = Stamp {
            publisher: 7,
            seq: 123_456,
            sent_ns: now - 5_000,
        };
        let mut payload = vec![0u8; 64];
        stamp.write(&mut payload);
        assert_eq!(Stamp::read(&payload, now), Some(stamp));
        assert_eq!(Stamp::read(&payload[..15], now), None);
        assert_eq!(Stamp::read(&[0u8; 64], now), None, "time zero is not ours");
    }
}
