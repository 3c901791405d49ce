//! Attacks one client can make on all the others, through real sockets. Each
//! test mounts one attack and checks that the other clients are still served
//! (docs/security.md, "Attacks and what stops them").

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::*;
use tern_broker::Config;
use tern_codec::*;

const V5: ProtocolVersion = ProtocolVersion::V5;

/// All 2^`levels` filters `o/{a|+}/…/{a|+}`: each matches `o/a/…/a`.
fn overlapping_filters(levels: u32) -> Vec<String> {
    (0..1u32 << levels)
        .map(|bits| {
            let mut filter = String::from("o");
            for level in 0..levels {
                filter.push_str(if bits >> level & 1 == 1 { "/+" } else { "/a" });
            }
            filter
        })
        .collect()
}

/// Subscribes to every filter, in SUBSCRIBE packets of 256, and checks each
/// was granted.
async fn subscribe_all(client: &mut TestClient, filters: &[String]) {
    for (n, chunk) in filters.chunks(256).enumerate() {
        let packet_id = pid(n as u16 + 1);
        let filters = chunk
            .iter()
            .map(|f| SubscribeFilter {
                filter: f.as_str().into(),
                options: SubscriptionOptions::default(),
            })
            .collect();
        client
            .send(Packet::Subscribe(Subscribe {
                packet_id,
                filters,
                properties: SubscribeProperties::default(),
            }))
            .await;
        match client.recv().await {
            Packet::SubAck(ack) => {
                assert_eq!(ack.packet_id, packet_id);
                assert!(ack.reasons.iter().all(|r| *r == ReasonCode::Success));
            }
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }
}

/// One client holds 2,048 filters that all match one topic (the limit is
/// lifted for the test); two others flood that topic, each with a burst of
/// QoS 0 publishes sent in one write. Before, each connection routed every
/// publish it had read before it let its worker go: the two bursts held
/// both workers for seconds, and the canary's round trip with them. Now a
/// connection yields after a short budget, and the publish routes to the one
/// session as one delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_subscriptions_do_not_stall_other_clients() {
    let broker = start_with(Config {
        max_subscriptions_per_client: 0,
        ..test_config()
    })
    .await;
    let addr = broker.local_addr();
    let levels = 11;
    let mut holder = TestClient::connect(addr, V5, "holder").await;
    subscribe_all(&mut holder, &overlapping_filters(levels)).await;
    let topic = format!("o{}", "/a".repeat(levels as usize));

    let mut canary = TestClient::connect(addr, V5, "canary").await;
    canary.subscribe("canary/t", QoS::AtMostOnce).await;

    let mut burst = BytesMut::new();
    for _ in 0..1_000 {
        let publish = Packet::Publish(publish_packet(&topic, b"x", QoS::AtMostOnce, 0));
        publish.encode(V5, &mut burst).expect("encode");
    }
    let mut floods = Vec::new();
    for n in 0..2 {
        let mut flooder = TestClient::connect(addr, V5, &format!("flooder-{n}")).await;
        let burst = burst.clone();
        floods.push(tokio::spawn(async move {
            flooder.send_bytes(&burst).await;
            flooder
        }));
    }

    let mut worst = Duration::ZERO;
    for _ in 0..10 {
        let sent = tokio::time::Instant::now();
        canary
            .publish("canary/t", b"ping", QoS::AtMostOnce, false)
            .await;
        let got = canary.recv_publish().await;
        assert_eq!(&got.payload[..], b"ping");
        worst = worst.max(sent.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        worst < Duration::from_secs(1),
        "the canary's round trip took {worst:?} during the flood"
    );
    // The holder gets each message once, however many of its filters match.
    let first = holder.recv_publish().await;
    assert_eq!(&*first.topic, topic.as_str());
    drop(floods);
}

/// The default configuration caps the filters one session may hold, so the
/// attack above needs the limit lifted: filter 10,001 is refused.
#[tokio::test]
async fn the_default_subscription_cap_refuses_filter_10001() {
    let broker = start().await;
    let mut client = TestClient::connect(broker.local_addr(), V5, "greedy").await;
    let filters: Vec<String> = (0..10_000).map(|n| format!("g/{n}")).collect();
    subscribe_all(&mut client, &filters).await;
    assert_eq!(
        client.subscribe("g/one-more", QoS::AtMostOnce).await,
        ReasonCode::QuotaExceeded
    );
    // Changing the options of a filter it holds is still allowed.
    assert_eq!(
        client.subscribe("g/0", QoS::AtLeastOnce).await,
        ReasonCode::GrantedQoS1
    );
}

/// The first bytes of a CONNECT that declares `size` bytes after its fixed
/// header, and `sent` bytes of that body (never the whole).
fn partial_connect(size: usize, sent: usize) -> Vec<u8> {
    let mut out = vec![0x10];
    varint(size, &mut out);
    out.extend(std::iter::repeat_n(0u8, sent));
    out
}

/// Clients that never finish their CONNECT: each may make the broker hold
/// at most `max_connect_size` (a CONNECT declaring more is refused at its
/// fixed header), and all together at most `max_connecting_bytes` beyond
/// 4 KiB each; past that they are closed. Before, each could make it hold
/// `max_packet_size`, with no total. Ordinary clients still get in.
#[tokio::test]
async fn half_sent_connects_are_bounded_per_connection_and_in_total() {
    let broker = start_with(Config {
        max_connect_size: 64 * 1024,
        max_connecting_bytes: 256 * 1024,
        ..test_config()
    })
    .await;
    let addr = broker.local_addr();
    let limits = &broker.state().limits;

    // Over max_connect_size (but under max_packet_size): refused at once.
    let mut big = TestClient::raw(addr, V5).await;
    big.send_bytes(&partial_connect(100 * 1024, 16)).await;
    assert_eq!(read_until_closed(&mut big).await, vec![]);
    // All but the last byte of the largest CONNECT allowed: held, and the
    // buffer grows to what the CONNECT declared, not beyond.
    let mut largest = TestClient::raw(addr, V5).await;
    largest
        .send_bytes(&partial_connect(64 * 1024 - 4, 64 * 1024 - 5))
        .await;
    assert!(
        largest.next(Duration::from_millis(200)).await.is_err(),
        "still open"
    );
    assert!(limits.connecting_bytes() <= 64 * 1024);
    drop(largest);
    eventually("the held bytes given back", || {
        limits.connecting_bytes() == 0
    })
    .await;

    // 60 KiB each: four fit in 256 KiB, the rest are closed.
    let mut open = Vec::new();
    for _ in 0..10 {
        let mut c = TestClient::raw(addr, V5).await;
        c.send_bytes(&partial_connect(60 * 1024, 30 * 1024)).await;
        open.push(c);
    }
    let mut closed = 0;
    for c in &mut open {
        if let Ok(None) = c.next(Duration::from_millis(200)).await {
            closed += 1;
        }
    }
    assert_eq!(closed, 6, "four 60 KiB CONNECTs fit in 256 KiB");
    assert!(limits.connecting_bytes() <= 256 * 1024);
    let refused = limits.snapshot();
    assert!(
        refused.contains(&("limits/connecting_bytes/refused", 6)),
        "{refused:?}"
    );

    // An ordinary client is not held up by them.
    let ok = TestClient::connect(addr, V5, "ordinary").await;
    drop(ok);
    // Gone: what they held is given back.
    drop(open);
    eventually("the held bytes given back", || {
        limits.connecting_bytes() == 0
    })
    .await;
}

/// The same over WebSocket. tungstenite used to buffer a frame whole before
/// the broker saw a byte of it, so a non-final frame as large as the message
/// limit allowed was held in full. Now a frame's payload reaches the MQTT
/// decoder as it arrives (`WsStream`), and the CONNECT inside it is held to
/// `max_connect_size` as on TCP: one declaring more is refused at its fixed
/// header, whatever the frame around it declares.
#[tokio::test]
async fn half_sent_websocket_frames_are_bounded() {
    use tern_broker::config::{ListenerConfig, ListenerTransport};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ws = ListenerConfig {
        transport: ListenerTransport::Ws,
        ..ListenerConfig::tcp("127.0.0.1:0".parse().unwrap())
    };
    let broker = start_with(Config {
        listeners: vec![ws],
        max_connect_size: 64 * 1024,
        ..test_config()
    })
    .await;
    let addr = broker.local_addr();
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /mqtt HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Protocol: mqtt\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = vec![0u8; 4096];
    let n = tcp.read(&mut head).await.unwrap();
    assert!(head[..n].starts_with(b"HTTP/1.1 101"));
    // A binary frame, not final, masked (with zeros), declaring 1 MiB, whose
    // payload starts with a CONNECT declaring 100 KiB; 200 KiB of it sent.
    let mut frame = vec![0x02, 0x80 | 127];
    frame.extend_from_slice(&(1u64 << 20).to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0, 0]);
    let mut body = partial_connect(100 * 1024, 16);
    body.resize(200 * 1024, 0);
    tcp.write_all(&frame).await.unwrap();
    // The broker closes while the body is on its way: a write may fail.
    let _ = tcp.write_all(&body).await;
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(WAIT, tcp.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the connection was not closed");
    let limits = &broker.state().limits;
    eventually("the held bytes given back", || {
        limits.connecting_bytes() == 0
    })
    .await;
}

/// Connects as `user` (no password file: the name is taken as given).
async fn connect_user(
    addr: std::net::SocketAddr,
    version: ProtocolVersion,
    id: &str,
    user: &str,
) -> TestClient {
    let mut connect = connect_packet(version, id);
    connect.username = Some(user.into());
    let (client, ack) = TestClient::connect_with(addr, connect).await;
    assert_eq!(ack.reason, ReasonCode::Success);
    client
}

/// Retained messages are quota'd in all and per user: over a quota a
/// retained PUBLISH is refused (MQTT 5: 0x97 Quota exceeded; 3.1.1:
/// acknowledged and dropped), neither kept nor delivered, and counted.
/// Replacing a topic frees what it held, and clearing one always works.
/// Before, any user could store 100,000 retained messages or more.
#[tokio::test]
async fn retained_messages_are_within_quotas() {
    let broker = start_with(Config {
        max_retained_messages: 5,
        max_retained_messages_per_user: 2,
        max_retained_bytes_per_user: 100,
        ..test_config()
    })
    .await;
    let addr = broker.local_addr();
    let mut watcher = TestClient::connect(addr, V5, "watcher").await;
    watcher.subscribe("q/#", QoS::AtMostOnce).await;
    let mut alice = connect_user(addr, V5, "alice-1", "alice").await;
    assert_eq!(alice.retain("q/a1", b"1").await, ReasonCode::Success);
    assert_eq!(alice.retain("q/a2", b"2").await, ReasonCode::Success);
    assert_eq!(alice.retain("q/a3", b"3").await, ReasonCode::QuotaExceeded);
    // Replacing her own topic fits; so does clearing one, which frees it.
    assert_eq!(alice.retain("q/a2", b"2b").await, ReasonCode::Success);
    assert_eq!(alice.retain("q/a1", b"").await, ReasonCode::Success);
    assert_eq!(alice.retain("q/a3", b"3").await, ReasonCode::Success);
    // Bytes per user: 100 in all, topic and payload.
    assert_eq!(
        alice.retain("q/a2", &[b'x'; 97]).await,
        ReasonCode::QuotaExceeded,
        "q/a3 (5 bytes) + 101 bytes"
    );
    // bob has quota of his own; 3.1.1 cannot be told, its message is dropped.
    let mut bob = connect_user(addr, V5, "bob-1", "bob").await;
    assert_eq!(bob.retain("q/b1", b"1").await, ReasonCode::Success);
    assert_eq!(bob.retain("q/b2", b"2").await, ReasonCode::Success);
    let mut bob3 = connect_user(addr, ProtocolVersion::V3_1_1, "bob-3", "bob").await;
    assert_eq!(bob3.retain("q/b3", b"3").await, ReasonCode::Success);
    // The broker-wide quota: 4 held, one more (anonymous) fits, then none.
    let mut anon = TestClient::connect(addr, V5, "anon").await;
    assert_eq!(anon.retain("q/n1", b"1").await, ReasonCode::Success);
    assert_eq!(anon.retain("q/n2", b"2").await, ReasonCode::QuotaExceeded);

    // The watcher got exactly what was accepted, in order.
    let accepted: [&[u8]; 8] = [b"1", b"2", b"2b", b"", b"3", b"1", b"2", b"1"];
    for payload in accepted {
        assert_eq!(&watcher.recv_publish().await.payload[..], payload);
    }
    let state = broker.state();
    assert_eq!(state.retained.count(), 5);
    let refused = state.limits.snapshot();
    assert!(
        refused.contains(&("limits/retained/refused", 4)),
        "{refused:?}"
    );
    watcher.expect_nothing().await;
}
