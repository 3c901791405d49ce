//! Malformed packets and protocol violations, written byte by byte.
//!
//! Each case ends the offending connection — an MQTT 5 client first gets a
//! DISCONNECT with the reason code the spec gives, a 3.1.1 client is just
//! closed — and leaves the broker unharmed: a [`Witness`] client, connected
//! and subscribed before the bad one, still receives a message published
//! after the bad client is gone, and no broker task has panicked.

mod common;

use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::Once;

use bytes::{Bytes, BytesMut};
use common::*;
use tern_broker::{BrokerHandle, Config};
use tern_codec::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ---- Panic detection ---------------------------------------------------------

thread_local! {
    /// Panics on this thread. `#[tokio::test]` runs a current-thread runtime,
    /// so every broker task of a test runs on the test's own thread.
    static PANICS: Cell<usize> = const { Cell::new(0) };
}

/// Counts panics per thread (then reports them as usual). Tokio catches a
/// panic in a spawned task, so without this a connection task dying would
/// look like an ordinary close.
fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.with(|p| p.set(p.get() + 1));
            previous(info);
        }));
    });
}

// ---- The witness -------------------------------------------------------------

const WITNESS_TOPIC: &str = "witness/topic";

/// A well-behaved client, connected and subscribed before the bad one.
struct Witness {
    addr: SocketAddr,
    client: TestClient,
}

impl Witness {
    async fn new(addr: SocketAddr) -> Witness {
        count_panics();
        let mut client = TestClient::connect(addr, ProtocolVersion::V5, "witness").await;
        assert_eq!(
            client.subscribe(WITNESS_TOPIC, QoS::AtLeastOnce).await,
            ReasonCode::GrantedQoS1
        );
        Witness { addr, client }
    }

    /// The broker is unharmed: no task panicked, and a message published by a
    /// new client reaches the witness.
    async fn check(mut self) {
        assert_eq!(PANICS.with(Cell::get), 0, "a broker task panicked");
        let mut publisher =
            TestClient::connect(self.addr, ProtocolVersion::V5, "witness-pub").await;
        publisher
            .publish(WITNESS_TOPIC, b"still here", QoS::AtLeastOnce, false)
            .await;
        let p = self.client.recv_publish().await;
        assert_eq!(p.topic, WITNESS_TOPIC);
        assert_eq!(p.payload, Bytes::from_static(b"still here"));
        publisher.disconnect().await;
        assert_eq!(PANICS.with(Cell::get), 0, "a broker task panicked");
    }
}

/// A broker with `config` and a witness connected to it.
async fn setup(config: Config) -> (BrokerHandle, Witness) {
    let broker = start_with(config).await;
    let witness = Witness::new(broker.local_addr()).await;
    (broker, witness)
}

// ---- Reading the outcome -------------------------------------------------------

/// Connects a v5 client, sends `bytes`, and expects exactly DISCONNECT
/// `reason` and the close.
async fn v5_case(addr: SocketAddr, bytes: &[u8], reason: ReasonCode) {
    let mut bad = TestClient::connect(addr, ProtocolVersion::V5, "bad").await;
    bad.send_bytes(bytes).await;
    assert_eq!(expect_disconnect(&mut bad, reason).await, vec![]);
}

/// Connects a 3.1.1 client, sends `bytes`, and expects the close with
/// nothing sent (3.1.1 has no server DISCONNECT).
async fn v311_case(addr: SocketAddr, bytes: &[u8]) {
    let mut bad = TestClient::connect(addr, ProtocolVersion::V3_1_1, "bad").await;
    bad.send_bytes(bytes).await;
    assert_eq!(read_until_closed(&mut bad).await, vec![]);
}

// ---- Writing packets by hand ----------------------------------------------------

/// A v5 PUBLISH body: topic, packet id (if any), properties, payload.
fn v5_publish_body(topic: &[u8], packet_id: Option<u16>, properties: &[u8]) -> Vec<u8> {
    let mut body = field(topic);
    if let Some(id) = packet_id {
        body.extend_from_slice(&id.to_be_bytes());
    }
    varint(properties.len(), &mut body);
    body.extend_from_slice(properties);
    body.extend_from_slice(b"payload");
    body
}

/// A v5 QoS 0 PUBLISH.
fn v5_publish(topic: &[u8], properties: &[u8]) -> Vec<u8> {
    packet(0x30, &v5_publish_body(topic, None, properties))
}

/// A 3.1.1 QoS 0 PUBLISH.
fn v311_publish(topic: &[u8]) -> Vec<u8> {
    let mut body = field(topic);
    body.extend_from_slice(b"payload");
    packet(0x30, &body)
}

/// The fixed header of a PUBLISH declaring `len` bytes, and no body.
fn header_only(len: usize) -> Vec<u8> {
    let mut out = vec![0x30];
    varint(len, &mut out);
    out
}

/// A small deterministic generator (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

// ---- Before and around CONNECT -----------------------------------------------------

#[tokio::test]
async fn publish_before_connect_is_closed_without_connack() {
    let (broker, witness) = setup(test_config()).await;
    let mut bad = TestClient::raw(broker.local_addr(), ProtocolVersion::V5).await;
    bad.send_bytes(&v5_publish(b"a/b", &[])).await;
    assert_eq!(read_until_closed(&mut bad).await, vec![]);
    witness.check().await;
}

#[tokio::test]
async fn second_connect_is_protocol_error() {
    let (broker, witness) = setup(test_config()).await;
    v5_case(
        broker.local_addr(),
        &raw_connect(b"MQTT", 5, 0x02, "bad"),
        ReasonCode::ProtocolError,
    )
    .await;
    witness.check().await;
}

#[tokio::test]
async fn v311_second_connect_is_closed() {
    let (broker, witness) = setup(test_config()).await;
    v311_case(broker.local_addr(), &raw_connect(b"MQTT", 4, 0x02, "bad")).await;
    witness.check().await;
}

#[tokio::test]
async fn reserved_connect_flag_is_closed() {
    let (broker, witness) = setup(test_config()).await;
    for level in [5, 4] {
        let mut bad = TestClient::raw(broker.local_addr(), ProtocolVersion::V5).await;
        bad.version = if level == 5 {
            ProtocolVersion::V5
        } else {
            ProtocolVersion::V3_1_1
        };
        // Clean start plus the reserved bit 0 [MQTT-3.1.2-3].
        bad.send_bytes(&raw_connect(b"MQTT", level, 0x03, "bad"))
            .await;
        for p in read_until_closed(&mut bad).await {
            // A CONNACK refusing it is allowed; nothing else is.
            assert!(
                matches!(&p, Packet::ConnAck(ack) if ack.reason.is_error()),
                "level {level}: {p:?}"
            );
        }
    }
    witness.check().await;
}

#[tokio::test]
async fn connack_from_client_is_protocol_error() {
    let (broker, witness) = setup(test_config()).await;
    // Session present 0, reason Success, no properties: well-formed, but only
    // a server sends it.
    v5_case(
        broker.local_addr(),
        &packet(0x20, &[0x00, 0x00, 0x00]),
        ReasonCode::ProtocolError,
    )
    .await;
    witness.check().await;
}

// ---- Fixed header ---------------------------------------------------------------------

#[tokio::test]
async fn pubrel_with_wrong_flags_is_malformed() {
    let (broker, witness) = setup(test_config()).await;
    // PUBREL must have flags 0b0010 [MQTT-3.6.1-1].
    v5_case(
        broker.local_addr(),
        &packet(0x60, &[0x00, 0x01]),
        ReasonCode::MalformedPacket,
    )
    .await;
    witness.check().await;
}

#[tokio::test]
async fn subscribe_with_wrong_flags_is_malformed() {
    let (broker, witness) = setup(test_config()).await;
    // SUBSCRIBE must have flags 0b0010 [MQTT-3.8.1-1].
    let mut body = vec![0x00, 0x01, 0x00];
    body.extend(field(b"a/b"));
    body.push(0x00);
    v5_case(
        broker.local_addr(),
        &packet(0x80, &body),
        ReasonCode::MalformedPacket,
    )
    .await;
    witness.check().await;
}

#[tokio::test]
async fn publish_qos3_is_malformed() {
    let (broker, witness) = setup(test_config()).await;
    let bytes = packet(0x36, &v5_publish_body(b"a/b", Some(1), &[]));
    v5_case(broker.local_addr(), &bytes, ReasonCode::MalformedPacket).await;
    witness.check().await;
}

#[tokio::test]
async fn v311_publish_qos3_is_closed() {
    let (broker, witness) = setup(test_config()).await;
    let mut body = field(b"a/b");
    body.extend_from_slice(&[0x00, 0x01]);
    body.extend_from_slice(b"payload");
    v311_case(broker.local_addr(), &packet(0x36, &body)).await;
    witness.check().await;
}

#[tokio::test]
async fn five_byte_remaining_length_is_malformed() {
    let (broker, witness) = setup(test_config()).await;
    let bytes = [0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F];
    v5_case(broker.local_addr(), &bytes, ReasonCode::MalformedPacket).await;
    witness.check().await;
}

#[tokio::test]
async fn oversized_packet_is_refused_from_its_header() {
    let (broker, witness) = setup(Config {
        max_packet_size: 1024,
        ..test_config()
    })
    .await;
    // Only the header: the broker must not wait for the 100,000 bytes.
    v5_case(
        broker.local_addr(),
        &header_only(100_000),
        ReasonCode::PacketTooLarge,
    )
    .await;
    witness.check().await;
}

#[tokio::test]
async fn oversized_packet_just_above_the_limit_is_refused() {
    let (broker, witness) = setup(Config {
        max_packet_size: 1024,
        ..test_config()
    })
    .await;
    // 1 + 2 + 1022 = 1025 bytes in all: one above the maximum.
    let mut bytes = header_only(1022);
    bytes.extend(field(b"a/b"));
    bytes.push(0x00);
    bytes.resize(1025, b'x');
    v5_case(broker.local_addr(), &bytes, ReasonCode::PacketTooLarge).await;
    witness.check().await;
}

#[tokio::test]
async fn v311_oversized_packet_is_closed() {
    let (broker, witness) = setup(Config {
        max_packet_size: 1024,
        ..test_config()
    })
    .await;
    v311_case(broker.local_addr(), &header_only(100_000)).await;
    witness.check().await;
}

// ---- Strings and topics -----------------------------------------------------------------

#[tokio::test]
async fn invalid_utf8_in_topic_is_malformed() {
    let (broker, witness) = setup(test_config()).await;
    // 0xC3 0x28: a two-byte sequence with a bad continuation byte.
    let bytes = v5_publish(&[b'a', b'/', 0xC3, 0x28], &[]);
    v5_case(broker.local_addr(), &bytes, ReasonCode::MalformedPacket).await;
    witness.check().await;
}

#[tokio::test]
async fn nul_in_topic_is_malformed() {
    let (broker, witness) = setup(test_config()).await;
    // U+0000 is not allowed in a UTF-8 string [MQTT-1.5.4-2].
    let bytes = v5_publish(b"a/\0/b", &[]);
    v5_case(broker.local_addr(), &bytes, ReasonCode::MalformedPacket).await;
    witness.check().await;
}

#[tokio::test]
async fn wildcard_in_topic_name_is_topic_name_invalid() {
    let (broker, witness) = setup(test_config()).await;
    let bytes = v5_publish(b"witness/+", &[]);
    v5_case(broker.local_addr(), &bytes, ReasonCode::TopicNameInvalid).await;
    witness.check().await;
}

#[tokio::test]
async fn v311_wildcard_in_topic_name_is_closed() {
    let (broker, witness) = setup(test_config()).await;
    v311_case(broker.local_addr(), &v311_publish(b"witness/#")).await;
    witness.check().await;
}

// ---- Properties ----------------------------------------------------------------------------

#[tokio::test]
async fn unknown_property_is_malformed() {
    let (broker, witness) = setup(test_config()).await;
    // 0x05 is not a property identifier in MQTT 5.
    let bytes = v5_publish(b"a/b", &[0x05, 0x00]);
    v5_case(broker.local_addr(), &bytes, ReasonCode::MalformedPacket).await;
    witness.check().await;
}

#[tokio::test]
async fn duplicate_property_is_protocol_error() {
    let (broker, witness) = setup(test_config()).await;
    // Message Expiry Interval twice.
    let bytes = v5_publish(b"a/b", &[0x02, 0, 0, 0, 10, 0x02, 0, 0, 0, 20]);
    v5_case(broker.local_addr(), &bytes, ReasonCode::ProtocolError).await;
    witness.check().await;
}

#[tokio::test]
async fn topic_alias_zero_is_invalid() {
    let (broker, witness) = setup(test_config()).await;
    let bytes = v5_publish(b"a/b", &[0x23, 0x00, 0x00]);
    v5_case(broker.local_addr(), &bytes, ReasonCode::TopicAliasInvalid).await;
    witness.check().await;
}

#[tokio::test]
async fn topic_alias_above_maximum_is_invalid() {
    let (broker, witness) = setup(Config {
        topic_alias_maximum: 10,
        ..test_config()
    })
    .await;
    let bytes = v5_publish(b"a/b", &[0x23, 0x00, 11]);
    v5_case(broker.local_addr(), &bytes, ReasonCode::TopicAliasInvalid).await;
    witness.check().await;
}

#[tokio::test]
async fn empty_topic_with_unknown_alias_is_protocol_error() {
    let (broker, witness) = setup(test_config()).await;
    let bytes = v5_publish(b"", &[0x23, 0x00, 0x01]);
    v5_case(broker.local_addr(), &bytes, ReasonCode::ProtocolError).await;
    witness.check().await;
}

// ---- Flow control and other packets ---------------------------------------------------------

#[tokio::test]
async fn receive_maximum_exceeded() {
    let (broker, witness) = setup(Config {
        receive_maximum: 2,
        ..test_config()
    })
    .await;
    let mut bad = TestClient::connect(broker.local_addr(), ProtocolVersion::V5, "bad").await;
    let mut bytes = Vec::new();
    for id in 1..=3u16 {
        bytes.extend(packet(0x34, &v5_publish_body(b"a/b", Some(id), &[])));
    }
    bad.send_bytes(&bytes).await;
    let before = expect_disconnect(&mut bad, ReasonCode::ReceiveMaximumExceeded).await;
    let ids: Vec<u16> = before
        .iter()
        .map(|p| match p {
            Packet::PubRec(ack) => ack.packet_id.get(),
            other => panic!("expected PUBREC, got {other:?}"),
        })
        .collect();
    assert_eq!(ids, [1, 2], "the first two are within the Receive Maximum");
    witness.check().await;
}

#[tokio::test]
async fn subscription_options_reserved_bits_are_malformed() {
    let (broker, witness) = setup(test_config()).await;
    let mut body = vec![0x00, 0x01, 0x00];
    body.extend(field(b"a/b"));
    body.push(0xC1); // bits 6 and 7 set, QoS 1 [MQTT-3.8.3-5]
    v5_case(
        broker.local_addr(),
        &packet(0x82, &body),
        ReasonCode::MalformedPacket,
    )
    .await;
    witness.check().await;
}

#[tokio::test]
async fn subscribe_without_filters_is_protocol_error() {
    let (broker, witness) = setup(test_config()).await;
    // Packet id 1, empty properties, no payload [MQTT-3.8.3-3].
    v5_case(
        broker.local_addr(),
        &packet(0x82, &[0x00, 0x01, 0x00]),
        ReasonCode::ProtocolError,
    )
    .await;
    witness.check().await;
}

#[tokio::test]
async fn disconnect_setting_session_expiry_after_zero_is_protocol_error() {
    let (broker, witness) = setup(test_config()).await;
    // The CONNECT had no Session Expiry Interval (0); DISCONNECT sets 100
    // [MQTT-3.14.2-2].
    let bytes = packet(0xE0, &[0x00, 0x05, 0x11, 0, 0, 0, 100]);
    v5_case(broker.local_addr(), &bytes, ReasonCode::ProtocolError).await;
    witness.check().await;
}

// ---- Garbage ----------------------------------------------------------------------------------

/// Sends `bytes` on a raw socket, closes our sending side and returns what
/// the broker sent until it closed. Write errors are ignored: the broker may
/// close before it has read everything.
async fn send_garbage(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.expect("tcp connect");
    let _ = stream.write_all(bytes).await;
    let _ = stream.shutdown().await;
    let mut received = Vec::new();
    let read = tokio::time::timeout(WAIT, async {
        loop {
            match stream.read_buf(&mut received).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(read.is_ok(), "connection still open after {WAIT:?}");
    received
}

/// Garbage of case `seed`: raw bytes, or bytes after a valid CONNECT.
fn garbage(seed: u64) -> (Option<ProtocolVersion>, Vec<u8>) {
    let mut rng = Rng::new(seed);
    let len = 1 + (rng.next() % 300) as usize;
    let version = match seed % 3 {
        0 => None,
        1 => Some(ProtocolVersion::V3_1_1),
        _ => Some(ProtocolVersion::V5),
    };
    let mut out = BytesMut::new();
    if let Some(version) = version {
        let connect = connect_packet(version, &format!("garbage-{seed}"));
        Packet::Connect(Box::new(connect))
            .encode(version, &mut out)
            .unwrap();
    }
    out.extend_from_slice(&rng.bytes(len));
    (version, out.to_vec())
}

/// Checks what the broker answered a garbage case: after a valid CONNECT,
/// valid packets of that version starting with a successful CONNACK; for
/// MQTT 5 a DISCONNECT only with an error reason, for 3.1.1 no DISCONNECT.
/// Returns whether a DISCONNECT came.
fn check_garbage_answer(seed: u64, version: Option<ProtocolVersion>, received: &[u8]) -> bool {
    let Some(version) = version else { return false };
    let mut buf = BytesMut::from(received);
    let mut packets = Vec::new();
    while let Some(p) = decode(&mut buf, version, usize::MAX)
        .unwrap_or_else(|e| panic!("seed {seed}: broker sent an invalid packet: {e}"))
    {
        packets.push(p);
    }
    assert!(buf.is_empty(), "seed {seed}: a partial packet at the close");
    assert!(
        matches!(packets.first(), Some(Packet::ConnAck(a)) if a.reason == ReasonCode::Success),
        "seed {seed}: {packets:?}"
    );
    let mut disconnected = false;
    for p in &packets {
        if let Packet::Disconnect(d) = p {
            assert_eq!(
                version,
                ProtocolVersion::V5,
                "seed {seed}: DISCONNECT to a 3.1.1 client"
            );
            assert!(d.reason.is_error(), "seed {seed}: {d:?}");
            disconnected = true;
        }
    }
    disconnected
}

#[tokio::test]
async fn garbage_bytes_are_closed() {
    let (broker, witness) = setup(test_config()).await;
    let (mut v5_cases, mut disconnects) = (0, 0);
    for seed in 0..30 {
        let (version, bytes) = garbage(seed);
        let received = send_garbage(broker.local_addr(), &bytes).await;
        v5_cases += usize::from(version == Some(ProtocolVersion::V5));
        disconnects += usize::from(check_garbage_answer(seed, version, &received));
    }
    // Random bytes after CONNECT are nearly always refused as malformed
    // before our end of the stream is seen: the garbage is really parsed.
    assert!(
        disconnects * 2 >= v5_cases,
        "{disconnects} DISCONNECTs in {v5_cases} MQTT 5 cases"
    );
    witness.check().await;
}

#[tokio::test]
async fn many_concurrent_garbage_connections() {
    let (broker, witness) = setup(test_config()).await;
    let addr = broker.local_addr();
    let mut tasks = tokio::task::JoinSet::new();
    for seed in 1000..1200 {
        tasks.spawn(async move {
            let (version, bytes) = garbage(seed);
            let received = send_garbage(addr, &bytes).await;
            check_garbage_answer(seed, version, &received);
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("garbage client task");
    }
    witness.check().await;
}
