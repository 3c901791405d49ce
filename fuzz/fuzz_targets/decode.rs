//! Fuzz target: arbitrary bytes through the decoder at every protocol level.
//!
//! Each input is decoded as a stream (packet after packet until the decoder
//! wants more bytes or refuses) with a small size limit, at levels 3, 4 and
//! 5. The decoder must never panic, and every packet it accepts must encode
//! (at the same level; CONNECT at its own) and decode back to itself.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tern_codec::{Packet, ProtocolVersion, decode};

/// Small enough that the size check is hit often, large enough for packets
/// with a few properties.
const MAX_PACKET_SIZE: usize = 1024;

const VERSIONS: [ProtocolVersion; 3] = [
    ProtocolVersion::V3_1,
    ProtocolVersion::V3_1_1,
    ProtocolVersion::V5,
];

fuzz_target!(|data: &[u8]| {
    for version in VERSIONS {
        let mut buf = BytesMut::from(data);
        while let Ok(Some(packet)) = decode(&mut buf, version, MAX_PACKET_SIZE) {
            check_round_trip(&packet, version);
        }
    }
});

/// decode(encode(p)) == p. The re-encoding may be longer than the input (an
/// AUTH with only a reason code gains a property length), so no size limit.
fn check_round_trip(packet: &Packet, version: ProtocolVersion) {
    let level = match packet {
        Packet::Connect(connect) => connect.protocol,
        _ => version,
    };
    let mut out = BytesMut::new();
    if let Err(e) = packet.encode(level, &mut out) {
        panic!("decoded packet does not encode at {level:?}: {e}: {packet:?}");
    }
    assert_eq!(packet.encoded_len(level), Ok(out.len()), "encoded_len");
    let encoded_len = out.len();
    match decode(&mut out, level, usize::MAX) {
        Ok(Some(again)) => assert_eq!(&again, packet, "round trip at {level:?}"),
        other => panic!("re-encoded packet ({encoded_len} bytes) decodes as {other:?}: {packet:?}"),
    }
    assert!(out.is_empty(), "re-encoding has {} extra bytes", out.len());
}
