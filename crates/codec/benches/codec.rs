//! Micro-benchmarks of `tern_codec::decode` and `Packet::encode`.
//!
//! `cargo bench -p tern-codec` runs them all (about 35 s); pass a filter to run
//! some, e.g. `cargo bench -p tern-codec -- decode/publish`. Each benchmark
//! handles one packet per iteration, so the time criterion prints is the time
//! per packet; the throughput is in bytes of encoded packet per second.
//!
//! - `decode`: from a fresh `BytesMut` holding exactly the packet, as the
//!   connection task's receive buffer does. Filling the buffer and dropping
//!   the packet are not timed (see `time_decodes`).
//! - `decode_batch32`: 32 packets back to back in one buffer. The first packet
//!   cut from a buffer pays for making its bytes shareable (one allocation);
//!   here 31 of 32 do not, as on a busy connection. The time printed is for
//!   the 32 packets, the throughput in packets per second.
//! - `encode`: appended to a reused output buffer, cleared before each packet,
//!   as the connection task's write buffer is.

use std::hint::black_box;
use std::num::NonZeroU16;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tern_codec::ProtocolVersion::{V3_1_1, V5};
use tern_codec::*;

/// Large enough for every packet here.
const MAX_PACKET: usize = 1 << 20;

fn packet_id(id: u16) -> Option<NonZeroU16> {
    NonZeroU16::new(id)
}

fn user_property(name: &str, value: &str) -> UserProperty {
    UserProperty {
        name: name.into(),
        value: value.into(),
    }
}

/// A QoS 1 sensor reading; at v5 with the properties a JSON publisher would set.
fn publish(payload_len: usize, version: ProtocolVersion) -> Packet {
    let properties = if version == V5 {
        PublishProperties {
            payload_format_indicator: Some(true),
            message_expiry_interval: Some(3600),
            content_type: Some("application/json".into()),
            user_properties: vec![user_property("trace-id", "4bf92f3577b34da6")],
            ..Default::default()
        }
    } else {
        PublishProperties::default()
    };
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "site/17/dev/4242/sensor/temp".into(),
        packet_id: packet_id(4711),
        payload: Bytes::from(vec![b'7'; payload_len]),
        properties,
    })
}

/// A device's CONNECT at v5: credentials, session and flow-control
/// properties, and a retained Will announcing it offline.
fn connect_v5() -> Packet {
    Packet::Connect(Box::new(Connect {
        protocol: V5,
        bridge: false,
        clean_start: false,
        keep_alive: 60,
        client_id: "dev-17-4242".into(),
        will: Some(LastWill {
            topic: "site/17/dev/4242/status".into(),
            payload: Bytes::from_static(b"offline"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: WillProperties {
                will_delay_interval: Some(10),
                ..Default::default()
            },
        }),
        username: Some("dev-17-4242".into()),
        password: Some(Bytes::from_static(b"s3cr3t-t0k3n-0123456789abcdef")),
        properties: ConnectProperties {
            session_expiry_interval: Some(86_400),
            receive_maximum: Some(32),
            maximum_packet_size: Some(1 << 20),
            topic_alias_maximum: Some(16),
            user_properties: vec![user_property("fw", "2.4.1")],
            ..Default::default()
        },
    }))
}

/// A v5 SUBSCRIBE with three filters and a subscription identifier.
fn subscribe_v5() -> Packet {
    let filter = |filter: &str, qos: QoS| SubscribeFilter {
        filter: filter.into(),
        options: SubscriptionOptions {
            qos,
            no_local: true,
            ..Default::default()
        },
    };
    Packet::Subscribe(Subscribe {
        packet_id: NonZeroU16::MIN,
        filters: vec![
            filter("site/17/dev/4242/cmd/#", QoS::AtLeastOnce),
            filter("site/17/dev/4242/config", QoS::AtLeastOnce),
            filter("site/17/broadcast/+", QoS::AtMostOnce),
        ],
        properties: SubscribeProperties {
            subscription_identifier: Some(7),
            ..Default::default()
        },
    })
}

fn puback() -> Packet {
    Packet::PubAck(PubAck::new(NonZeroU16::new(4711).expect("non-zero")))
}

/// Every benchmarked packet: name, packet, level.
fn cases() -> Vec<(&'static str, Packet, ProtocolVersion)> {
    vec![
        ("publish_v311_64B", publish(64, V3_1_1), V3_1_1),
        ("publish_v311_4KB", publish(4096, V3_1_1), V3_1_1),
        ("publish_v5_64B", publish(64, V5), V5),
        ("publish_v5_4KB", publish(4096, V5), V5),
        ("connect_v5", connect_v5(), V5),
        ("subscribe_v5_3_filters", subscribe_v5(), V5),
        ("puback_v311", puback(), V3_1_1),
        ("puback_v5", puback(), V5),
    ]
}

/// The encoding of `packet`, after checking it decodes back to itself (a
/// benchmark of a packet the codec refuses would measure the error path).
fn encoded(packet: &Packet, version: ProtocolVersion) -> Bytes {
    let mut out = BytesMut::new();
    packet.encode(version, &mut out).expect("encode");
    let bytes = out.clone().freeze();
    let decoded = decode(&mut out, version, MAX_PACKET).expect("decode");
    assert_eq!(decoded.as_ref(), Some(packet), "round trip at {version:?}");
    assert!(out.is_empty());
    bytes
}

/// Decodes `iters` buffers, each holding `bytes`: `per_buffer` packets back
/// to back. Only the decoding is timed: the buffers are filled beforehand and
/// the packets dropped afterwards, a chunk at a time, and the decoded packets
/// go to a vector whose memory is reused, so no page fault of the harness's
/// is counted (criterion's `iter_batched` counts those of its output vector,
/// ~50 ns per packet here).
fn time_decodes(iters: u64, bytes: &[u8], per_buffer: usize, version: ProtocolVersion) -> Duration {
    // Small enough for the buffers and the packets to stay in cache.
    const CHUNK_PACKETS: usize = 256;
    let chunk = (CHUNK_PACKETS / per_buffer).max(1) as u64;
    let mut packets = Vec::with_capacity(chunk as usize * per_buffer);
    let mut elapsed = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(chunk);
        let mut buffers: Vec<BytesMut> = (0..n).map(|_| BytesMut::from(bytes)).collect();
        let started = Instant::now();
        for buf in &mut buffers {
            for _ in 0..per_buffer {
                let packet = decode(black_box(buf), version, MAX_PACKET);
                packets.push(packet.expect("decode").expect("whole packet"));
            }
        }
        elapsed += started.elapsed();
        assert!(buffers.iter().all(BytesMut::is_empty));
        packets.clear();
        left -= n;
    }
    elapsed
}

fn bench_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    for (name, packet, version) in cases() {
        let bytes = encoded(&packet, version);
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_function(name, |b| {
            b.iter_custom(|iters| time_decodes(iters, &bytes, 1, version))
        });
    }
    group.finish();
}

/// Packets back to back in one receive buffer, as a busy connection reads
/// them: the buffer's bytes are shared by all the packets cut from it.
const BATCH: usize = 32;

/// Decodes `BATCH` packets from one buffer per iteration: the time printed is
/// for all of them, the throughput (elements) is per packet.
fn bench_decode_batch(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode_batch32");
    for (name, packet, version) in cases() {
        if !matches!(name, "publish_v311_64B" | "publish_v5_64B" | "puback_v311") {
            continue;
        }
        let bytes = encoded(&packet, version).repeat(BATCH);
        group.throughput(Throughput::Elements(BATCH as u64));
        group.bench_function(name, |b| {
            b.iter_custom(|iters| time_decodes(iters, &bytes, BATCH, version))
        });
    }
    group.finish();
}

fn bench_encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    for (name, packet, version) in cases() {
        let len = encoded(&packet, version).len();
        group.throughput(Throughput::Bytes(len as u64));
        let mut out = BytesMut::with_capacity(len);
        group.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                black_box(&packet)
                    .encode(version, &mut out)
                    .expect("encode");
                black_box(out.len())
            })
        });
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(1))
        .sample_size(50)
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_decode, bench_decode_batch, bench_encode
}
criterion_main!(benches);
