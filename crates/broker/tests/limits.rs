//! Resource limits through real sockets: each limit tripped, the reason code
//! the client sees (MQTT 5 and 3.1.1), other clients left alone, the counter
//! moved, and connection slots given back.

mod common;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use common::*;
use tern_broker::config::ListenerConfig;
use tern_broker::testing::Counters;
use tern_broker::{BrokerHandle, Config};
use tern_codec::*;

const V5: ProtocolVersion = ProtocolVersion::V5;
const V311: ProtocolVersion = ProtocolVersion::V3_1_1;

async fn start_limited(edit: impl FnOnce(&mut Config)) -> BrokerHandle {
    let mut config = test_config();
    edit(&mut config);
    start_with(config).await
}

/// The current value of one limit counter.
fn counter(broker: &BrokerHandle, pick: fn(&Counters) -> &AtomicU64) -> u64 {
    pick(&broker.state().limits.counters).load(Ordering::Relaxed)
}

fn connected(broker: &BrokerHandle) -> u64 {
    broker
        .state()
        .metrics
        .clients_connected
        .load(Ordering::Relaxed)
}

/// Connects, expects a refusal, and that the broker then closes.
async fn refused(mut client: TestClient, connect: Connect) -> ReasonCode {
    client.send(Packet::Connect(Box::new(connect))).await;
    let connack = match client.recv().await {
        Packet::ConnAck(c) => c,
        other => panic!("expected CONNACK, got {other:?}"),
    };
    assert!(client.expect_closed().await.is_none());
    connack.reason
}

async fn refused_from(broker: &BrokerHandle, version: ProtocolVersion, id: &str) -> ReasonCode {
    let client = TestClient::raw(broker.local_addr(), version).await;
    refused(client, connect_packet(version, id)).await
}

/// PINGREQ answered: the connection is alive and served.
async fn assert_alive(client: &mut TestClient) {
    client.send(Packet::PingReq).await;
    assert!(matches!(client.recv().await, Packet::PingResp));
}

/// Publishes `marker` on `topic` from a fresh client and returns every
/// payload `sub` received up to it: what was routed before the marker.
async fn received_until_marker(
    broker: &BrokerHandle,
    sub: &mut TestClient,
    topic: &str,
) -> Vec<String> {
    let mut marker = TestClient::connect(broker.local_addr(), V5, "marker").await;
    marker
        .publish(topic, b"marker", QoS::AtMostOnce, false)
        .await;
    let mut got = Vec::new();
    loop {
        let p = sub.recv_publish().await;
        let payload = String::from_utf8(p.payload.to_vec()).unwrap();
        if payload == "marker" {
            marker.disconnect().await;
            return got;
        }
        got.push(format!("{} {payload}", p.topic));
    }
}

#[tokio::test]
async fn max_connections_refuses_with_quota_exceeded_until_a_slot_frees() {
    let broker = start_limited(|c| c.max_connections = 2).await;
    let addr = broker.local_addr();
    let mut a = TestClient::connect(addr, V5, "mc-a").await;
    let b = TestClient::connect(addr, V311, "mc-b").await;

    assert_eq!(
        refused_from(&broker, V5, "mc-c").await,
        ReasonCode::QuotaExceeded
    );
    // 3.1.1 has no Quota exceeded: return code 3, Server unavailable.
    assert_eq!(
        refused_from(&broker, V311, "mc-d").await,
        ReasonCode::ServerUnavailable
    );
    assert_alive(&mut a).await;
    assert_eq!(counter(&broker, |c| &c.connections_refused), 2);

    // A parked connection that is lost gives its slot back.
    eventually("both connections parked", || {
        broker.parked_connections() == 2
    })
    .await;
    b.drop_connection();
    eventually("b gone", || connected(&broker) == 1).await;
    let e = TestClient::connect(addr, V5, "mc-e").await;
    e.disconnect().await;
    eventually("e gone", || connected(&broker) == 1).await;

    // A takeover holds two slots for a moment and gives one back.
    let mut a2 = TestClient::connect(addr, V5, "mc-a").await;
    let kicked = a.expect_closed().await.expect("DISCONNECT");
    assert_eq!(kicked.reason, ReasonCode::SessionTakenOver);
    eventually("old a gone", || connected(&broker) == 1).await;
    let mut f = TestClient::connect(addr, V5, "mc-f").await;
    assert_eq!(
        refused_from(&broker, V5, "mc-g").await,
        ReasonCode::QuotaExceeded
    );
    assert_eq!(counter(&broker, |c| &c.connections_refused), 3);
    assert_alive(&mut a2).await;
    assert_alive(&mut f).await;
}

#[tokio::test]
async fn listener_max_connections_is_per_listener() {
    let broker = start_limited(|c| {
        let mut listener = ListenerConfig::tcp(c.bind);
        listener.max_connections = 1;
        c.listeners = vec![listener];
    })
    .await;
    let addr = broker.local_addr();
    let a = TestClient::connect(addr, V5, "ml-a").await;
    assert_eq!(
        refused_from(&broker, V5, "ml-b").await,
        ReasonCode::QuotaExceeded
    );
    assert_eq!(
        refused_from(&broker, V311, "ml-c").await,
        ReasonCode::ServerUnavailable
    );
    assert_eq!(counter(&broker, |c| &c.connections_refused), 2);
    eventually("a parked", || broker.parked_connections() == 1).await;
    a.disconnect().await;
    eventually("a gone", || connected(&broker) == 0).await;
    let mut d = TestClient::connect(addr, V311, "ml-d").await;
    assert_alive(&mut d).await;
}

#[tokio::test]
async fn connection_rate_is_per_ip_address() {
    let broker = start_limited(|c| c.max_connection_rate = 1).await;
    let addr = broker.local_addr();
    let local: IpAddr = [127, 0, 0, 1].into();
    let other: IpAddr = [127, 0, 0, 2].into();
    // One connection a second from one address: the first passes...
    let first = TestClient::raw_from(addr, local, V5).await;
    let (mut first, connack) = connect_on(first, connect_packet(V5, "rate-a")).await;
    assert_eq!(connack.reason, ReasonCode::Success);
    // ...the next ones within the second are refused.
    let client = TestClient::raw_from(addr, local, V5).await;
    assert_eq!(
        refused(client, connect_packet(V5, "rate-b")).await,
        ReasonCode::ConnectionRateExceeded
    );
    let client = TestClient::raw_from(addr, local, V311).await;
    assert_eq!(
        refused(client, connect_packet(V311, "rate-c")).await,
        ReasonCode::ServerUnavailable
    );
    // Another address has its own budget; the first client is unaffected.
    let client = TestClient::raw_from(addr, other, V5).await;
    let (mut second, connack) = connect_on(client, connect_packet(V5, "rate-d")).await;
    assert_eq!(connack.reason, ReasonCode::Success);
    assert_alive(&mut first).await;
    assert_alive(&mut second).await;
    assert_eq!(counter(&broker, |c| &c.connection_rate_refused), 2);
}

/// Sends CONNECT on an open socket and returns the CONNACK.
async fn connect_on(mut client: TestClient, connect: Connect) -> (TestClient, ConnAck) {
    client.send(Packet::Connect(Box::new(connect))).await;
    match client.recv().await {
        Packet::ConnAck(c) => (client, c),
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

fn subscribe_packet(filters: &[&str]) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id: pid(7),
        filters: filters
            .iter()
            .map(|f| SubscribeFilter {
                filter: (*f).into(),
                options: SubscriptionOptions::default(),
            })
            .collect(),
        properties: SubscribeProperties::default(),
    })
}

async fn suback(client: &mut TestClient, filters: &[&str]) -> Vec<ReasonCode> {
    client.send(subscribe_packet(filters)).await;
    match client.recv().await {
        Packet::SubAck(ack) => ack.reasons,
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

#[tokio::test]
async fn subscriptions_per_client_refuse_new_filters_only() {
    let broker = start_limited(|c| c.max_subscriptions_per_client = 2).await;
    let addr = broker.local_addr();
    let mut c = TestClient::connect(addr, V5, "subs-v5").await;
    assert_eq!(
        c.subscribe("s/a", QoS::AtMostOnce).await,
        ReasonCode::Success
    );
    assert_eq!(
        c.subscribe("$share/g/s/b", QoS::AtMostOnce).await,
        ReasonCode::Success
    );
    assert_eq!(
        c.subscribe("s/c", QoS::AtMostOnce).await,
        ReasonCode::QuotaExceeded
    );
    // Replacing an existing subscription always works, in the same packet too.
    assert_eq!(
        c.subscribe("s/a", QoS::AtLeastOnce).await,
        ReasonCode::GrantedQoS1
    );
    assert_eq!(
        suback(&mut c, &["s/c", "s/a"]).await,
        [ReasonCode::QuotaExceeded, ReasonCode::Success]
    );
    // Unsubscribing frees a place.
    c.send(Packet::Unsubscribe(Unsubscribe {
        packet_id: pid(8),
        filters: vec!["$share/g/s/b".into()],
        properties: Default::default(),
    }))
    .await;
    assert!(matches!(c.recv().await, Packet::UnsubAck(_)));
    assert_eq!(
        c.subscribe("s/c", QoS::AtMostOnce).await,
        ReasonCode::Success
    );

    let mut old = TestClient::connect(addr, V311, "subs-v311").await;
    assert_eq!(
        suback(&mut old, &["s/x", "s/y", "s/z"]).await,
        [
            ReasonCode::Success,
            ReasonCode::Success,
            ReasonCode::UnspecifiedError
        ]
    );
    assert_eq!(counter(&broker, |c| &c.subscriptions_refused), 3);

    // The subscriptions that were granted work.
    let mut publisher = TestClient::connect(addr, V5, "subs-pub").await;
    publisher.publish("s/c", b"1", QoS::AtMostOnce, false).await;
    publisher.publish("s/y", b"2", QoS::AtMostOnce, false).await;
    assert_eq!(c.recv_publish().await.payload, "1");
    assert_eq!(old.recv_publish().await.payload, "2");
}

#[tokio::test]
async fn topic_levels_limit_publish_subscribe_and_will() {
    let broker = start_limited(|c| c.max_topic_levels = 3).await;
    let addr = broker.local_addr();
    let mut sub = TestClient::connect(addr, V5, "tl-sub").await;
    assert_eq!(
        sub.subscribe("#", QoS::AtLeastOnce).await,
        ReasonCode::GrantedQoS1
    );

    // MQTT 5: QoS 1 and 2 are told 0x90; nothing is routed.
    let mut v5 = TestClient::connect(addr, V5, "tl-v5").await;
    v5.send(Packet::Publish(publish_packet(
        "a/b/c/d",
        b"q0",
        QoS::AtMostOnce,
        0,
    )))
    .await;
    v5.send(Packet::Publish(publish_packet(
        "a/b/c/d",
        b"q1",
        QoS::AtLeastOnce,
        1,
    )))
    .await;
    match v5.recv().await {
        Packet::PubAck(a) => assert_eq!(a.reason, ReasonCode::TopicNameInvalid),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    v5.send(Packet::Publish(publish_packet(
        "a/b/c/d",
        b"q2",
        QoS::ExactlyOnce,
        2,
    )))
    .await;
    match v5.recv().await {
        Packet::PubRec(a) => assert_eq!(a.reason, ReasonCode::TopicNameInvalid),
        other => panic!("expected PUBREC, got {other:?}"),
    }
    // 3.1.1: acknowledged as usual, not routed.
    let mut old = TestClient::connect(addr, V311, "tl-v311").await;
    old.publish("a/b/c/d", b"o1", QoS::AtLeastOnce, false).await;
    old.publish("a/b/c/d", b"o2", QoS::ExactlyOnce, false).await;
    v5.publish("a/b/c", b"ok", QoS::AtLeastOnce, false).await;
    assert_eq!(
        received_until_marker(&broker, &mut sub, "m/marker").await,
        ["a/b/c ok"]
    );

    // Filters: levels counted after a `$share/group/` prefix.
    assert_eq!(
        suback(&mut v5, &["a/b/c/#", "$share/g/a/b/+", "a/+/c"]).await,
        [
            ReasonCode::TopicFilterInvalid,
            ReasonCode::Success,
            ReasonCode::Success
        ]
    );
    assert_eq!(
        suback(&mut old, &["+/+/+/+"]).await,
        [ReasonCode::UnspecifiedError]
    );

    // A will topic with too many levels: CONNACK 0x90 (3.1.1: 3).
    for (version, expected) in [
        (V5, ReasonCode::TopicNameInvalid),
        (V311, ReasonCode::ServerUnavailable),
    ] {
        let mut connect = connect_packet(version, "tl-will");
        connect.will = Some(LastWill {
            topic: "w/x/y/z".into(),
            payload: "gone".into(),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Default::default(),
        });
        let client = TestClient::raw(addr, version).await;
        assert_eq!(refused(client, connect).await, expected);
    }
    // 5 PUBLISH, 2 filters, 2 wills.
    assert_eq!(counter(&broker, |c| &c.topic_levels_refused), 9);
    assert_alive(&mut sub).await;
}

/// `n` PUBLISH packets at `qos` in one write, payloads "0", "1", ...
fn burst(version: ProtocolVersion, topic: &str, qos: QoS, n: u16) -> Vec<u8> {
    let mut out = BytesMut::new();
    for i in 0..n {
        let publish = Publish {
            payload: Bytes::from(i.to_string()),
            ..publish_packet(topic, b"", qos, i % 65_000 + 1)
        };
        Packet::Publish(publish).encode(version, &mut out).unwrap();
    }
    out.to_vec()
}

#[tokio::test]
async fn publish_rate_disconnects_with_message_rate_too_high() {
    let broker = start_limited(|c| c.max_publish_rate = 5).await;
    let addr = broker.local_addr();
    let mut sub = TestClient::connect(addr, V5, "pr-sub").await;
    sub.subscribe("pr/#", QoS::AtMostOnce).await;

    // A burst of one second's worth passes; one more closes the connection.
    let mut v5 = TestClient::connect(addr, V5, "pr-v5").await;
    v5.send_bytes(&burst(V5, "pr/v5", QoS::AtMostOnce, 6)).await;
    expect_disconnect(&mut v5, ReasonCode::MessageRateTooHigh).await;
    let mut old = TestClient::connect(addr, V311, "pr-v311").await;
    old.send_bytes(&burst(V311, "pr/old", QoS::AtMostOnce, 6))
        .await;
    assert!(read_until_closed(&mut old).await.is_empty());

    let got = received_until_marker(&broker, &mut sub, "pr/marker").await;
    let expected: Vec<String> = ["pr/v5", "pr/old"]
        .iter()
        .flat_map(|t| (0..5).map(move |i| format!("{t} {i}")))
        .collect();
    assert_eq!(got, expected);
    assert_eq!(counter(&broker, |c| &c.publish_rate_disconnected), 2);
    eventually("slots released", || connected(&broker) == 1).await;
}

/// PUBACKs read together with a PUBLISH that breaks the rate limit still
/// count: the acknowledged messages are not sent again when the client
/// resumes its session.
#[tokio::test]
async fn acks_before_a_rate_violation_are_handled() {
    let broker = start_limited(|c| c.max_publish_rate = 5).await;
    let addr = broker.local_addr();
    let (mut device, _) = TestClient::connect_with(addr, persistent(V5, "pr-acks")).await;
    device.subscribe("pr-acks/#", QoS::AtLeastOnce).await;
    let mut publisher = TestClient::connect(addr, V5, "pr-acks-pub").await;
    publisher
        .publish("pr-acks/1", b"one", QoS::AtLeastOnce, false)
        .await;
    publisher
        .publish("pr-acks/2", b"two", QoS::AtLeastOnce, false)
        .await;
    let mut bytes = BytesMut::new();
    for _ in 0..2 {
        let p = device.recv_publish().await;
        Packet::PubAck(PubAck::new(p.packet_id.expect("QoS 1")))
            .encode(V5, &mut bytes)
            .unwrap();
    }
    // Then six publishes where five a second are allowed, in the same write.
    bytes.extend_from_slice(&burst(V5, "elsewhere", QoS::AtMostOnce, 6));
    device.send_bytes(&bytes).await;
    expect_disconnect(&mut device, ReasonCode::MessageRateTooHigh).await;

    let (mut device, ack) = TestClient::connect_with(addr, persistent(V5, "pr-acks")).await;
    assert!(ack.session_present);
    device.expect_nothing().await;
    broker.shutdown().await;
}

#[tokio::test]
async fn packet_too_large_disconnects_and_is_counted() {
    let broker = start_limited(|c| c.max_packet_size = 128).await;
    let addr = broker.local_addr();
    let mut sub = TestClient::connect(addr, V5, "ps-sub").await;
    sub.subscribe("ps/#", QoS::AtMostOnce).await;
    const BIG: &[u8] = &[b'x'; 200];

    let mut v5 = TestClient::connect(addr, V5, "ps-v5").await;
    v5.send(Packet::Publish(publish_packet(
        "ps/t",
        BIG,
        QoS::AtMostOnce,
        0,
    )))
    .await;
    expect_disconnect(&mut v5, ReasonCode::PacketTooLarge).await;
    let mut old = TestClient::connect(addr, V311, "ps-v311").await;
    old.send(Packet::Publish(publish_packet(
        "ps/t",
        BIG,
        QoS::AtMostOnce,
        0,
    )))
    .await;
    assert!(read_until_closed(&mut old).await.is_empty());
    // A CONNECT too large: MQTT 5 gets CONNACK 0x95, 3.1.1 (no such code)
    // is just closed.
    let mut huge = TestClient::raw(addr, V5).await;
    huge.send_bytes(&raw_connect(b"MQTT", 5, 0x02, &"c".repeat(200)))
        .await;
    match read_until_closed(&mut huge).await.as_slice() {
        [Packet::ConnAck(ack)] => assert_eq!(ack.reason, ReasonCode::PacketTooLarge),
        other => panic!("expected CONNACK 0x95, got {other:?}"),
    }
    let mut huge = TestClient::raw(addr, V311).await;
    huge.send_bytes(&raw_connect(b"MQTT", 4, 0x02, &"c".repeat(200)))
        .await;
    assert!(read_until_closed(&mut huge).await.is_empty());

    eventually("four refusals counted", || {
        counter(&broker, |c| &c.packet_size_refused) == 4
    })
    .await;
    assert!(
        received_until_marker(&broker, &mut sub, "ps/marker")
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn receive_maximum_exceeded_disconnects_and_is_counted() {
    let broker = start_limited(|c| c.receive_maximum = 2).await;
    let addr = broker.local_addr();
    for version in [V5, V311] {
        let mut c = TestClient::connect(addr, version, "rm").await;
        for id in 1..=3 {
            c.send(Packet::Publish(publish_packet(
                "rm/t",
                b"x",
                QoS::ExactlyOnce,
                id,
            )))
            .await;
        }
        let packets = match version {
            V5 => expect_disconnect(&mut c, ReasonCode::ReceiveMaximumExceeded).await,
            _ => read_until_closed(&mut c).await,
        };
        assert_eq!(packets.len(), 2, "{packets:?}");
        assert!(packets.iter().all(|p| matches!(p, Packet::PubRec(_))));
    }
    eventually("both counted", || {
        counter(&broker, |c| &c.receive_maximum_disconnected) == 2
    })
    .await;
}

#[tokio::test]
async fn full_queues_drop_and_count_without_telling_the_publisher() {
    let broker = start_limited(|c| {
        c.max_queued_messages = 2;
        c.max_queued_bytes = 100;
    })
    .await;
    let addr = broker.local_addr();
    // Two offline sessions: one bounded by count, one by bytes.
    for id in ["q-count", "q-bytes"] {
        let (mut c, _) = TestClient::connect_with(addr, persistent(V5, id)).await;
        let filter = if id == "q-count" { "q/small" } else { "q/big" };
        c.subscribe(filter, QoS::AtLeastOnce).await;
        c.disconnect().await;
    }
    let mut publisher = TestClient::connect(addr, V5, "q-pub").await;
    for _ in 0..4 {
        let ack = publish_acked(&mut publisher, "q/small", b"s").await;
        assert_eq!(ack, ReasonCode::Success);
    }
    const BIG: &[u8] = &[b'b'; 40];
    for _ in 0..3 {
        let ack = publish_acked(&mut publisher, "q/big", BIG).await;
        assert_eq!(ack, ReasonCode::Success);
    }
    // 2 over the count, 1 over 100 bytes (3 × 45 bytes with the topic).
    assert_eq!(counter(&broker, |c| &c.queue_dropped), 3);
    let (mut c, connack) = TestClient::connect_with(addr, persistent(V5, "q-count")).await;
    assert!(connack.session_present);
    for _ in 0..2 {
        let p = c.recv_publish().await;
        c.ack(&p).await;
    }
    assert_alive(&mut c).await;
}

/// Publishes at QoS 1 with packet id 1 and returns the PUBACK reason.
async fn publish_acked(client: &mut TestClient, topic: &str, payload: &'static [u8]) -> ReasonCode {
    client
        .send(Packet::Publish(publish_packet(
            topic,
            payload,
            QoS::AtLeastOnce,
            1,
        )))
        .await;
    match client.recv().await {
        Packet::PubAck(a) => a.reason,
        other => panic!("expected PUBACK, got {other:?}"),
    }
}

#[tokio::test]
async fn limit_counters_are_published_under_sys() {
    let broker = start_limited(|c| {
        c.sys_interval_secs = 1;
        c.max_subscriptions_per_client = 1;
    })
    .await;
    let addr = broker.local_addr();
    let mut c = TestClient::connect(addr, V5, "sys-limited").await;
    assert_eq!(c.subscribe("a", QoS::AtMostOnce).await, ReasonCode::Success);
    assert_eq!(
        c.subscribe("b", QoS::AtMostOnce).await,
        ReasonCode::QuotaExceeded
    );
    let mut c = TestClient::connect(addr, V5, "sys-watch").await;
    assert_eq!(
        c.subscribe("$SYS/broker/limits/#", QoS::AtMostOnce).await,
        ReasonCode::Success
    );
    let mut seen = std::collections::HashMap::new();
    loop {
        let p = c.recv_publish().await;
        let value = String::from_utf8(p.payload.to_vec()).unwrap();
        seen.insert(p.topic.to_string(), value);
        if seen
            .get("$SYS/broker/limits/subscriptions/refused")
            .is_some_and(|v| v == "1")
            && seen.len() == 11
        {
            break;
        }
    }
    for topic in [
        "connections/refused",
        "connection_rate/refused",
        "topic_levels/refused",
        "publish_rate/disconnected",
        "packet_size/refused",
        "receive_maximum/disconnected",
        "queue/dropped",
        "connecting_bytes/refused",
        "retained/refused",
        "delayed/refused",
    ] {
        assert_eq!(seen[&format!("$SYS/broker/limits/{topic}")], "0", "{topic}");
    }
}

/// A client still sending when the broker ends its connection reads the
/// DISCONNECT and its reason code, not a connection reset: the broker keeps
/// reading (and discarding) for `disconnect_linger_ms` before it closes.
#[tokio::test]
async fn a_client_still_sending_reads_why_it_was_disconnected() {
    let broker = start_limited(|c| {
        c.receive_maximum = 10;
        c.max_packet_size = 4096;
    })
    .await;
    let addr = broker.local_addr();
    let qos2 = |id: u16| Packet::Publish(publish_packet("busy/t", b"x", QoS::ExactlyOnce, id));
    assert_eq!(
        keep_sending_until_disconnected(addr, qos2).await,
        ReasonCode::ReceiveMaximumExceeded
    );
    let too_large = |_| {
        Packet::Publish(Publish {
            payload: bytes::Bytes::from(vec![b'x'; 64 * 1024]),
            ..publish_packet("busy/t", b"", QoS::AtMostOnce, 0)
        })
    };
    assert_eq!(
        keep_sending_until_disconnected(addr, too_large).await,
        ReasonCode::PacketTooLarge
    );
}

/// Connects (MQTT 5), then sends `next(1)`, `next(2)`, … without pause from
/// one task while another reads; returns the reason of the DISCONNECT read.
async fn keep_sending_until_disconnected(
    addr: std::net::SocketAddr,
    next: impl Fn(u16) -> Packet + Send + 'static,
) -> ReasonCode {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let encode = |p: &Packet| {
        let mut out = BytesMut::new();
        p.encode(V5, &mut out).unwrap();
        out
    };
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    wr.write_all(&encode(&Packet::Connect(Box::new(connect_packet(
        V5, "busy",
    )))))
    .await
    .unwrap();
    let mut buf = BytesMut::new();
    let mut read_packet = async move || loop {
        if let Some(p) = decode(&mut buf, V5, usize::MAX).unwrap() {
            return Ok(p);
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) => return Err("connection closed".to_string()),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    };
    assert!(matches!(read_packet().await, Ok(Packet::ConnAck(_))));
    let write_failed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let failed = write_failed.clone();
    let writer = tokio::spawn(async move {
        for i in 1..=u16::MAX {
            if wr.write_all(&encode(&next(i))).await.is_err() {
                failed.store(true, Ordering::SeqCst);
                return;
            }
        }
    });
    // A busy client reads now and then, not at once: by the time it does,
    // the broker has ended the connection with input still arriving. A
    // client library whose write fails first (broken pipe, reset) reports a
    // lost connection and never reads the reason.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let reason = loop {
        match read_packet().await {
            Ok(Packet::Disconnect(d)) => break d.reason,
            Ok(_) => {}
            Err(e) => panic!("no DISCONNECT before the connection ended: {e}"),
        }
    };
    assert!(
        !write_failed.load(Ordering::SeqCst),
        "the client's writes failed before it could read the DISCONNECT"
    );
    writer.abort();
    reason
}

/// Writes `count` QoS 1 PUBLISHes at once from a client of its own and
/// reads their PUBACKs, in a task; the task ends with the PUBACKs' reasons.
async fn flood(
    addr: std::net::SocketAddr,
    id: &str,
    topic: &str,
    count: u16,
) -> tokio::task::JoinHandle<Vec<ReasonCode>> {
    let mut publisher = TestClient::connect(addr, V5, id).await;
    let bytes = burst(V5, topic, QoS::AtLeastOnce, count);
    tokio::spawn(async move {
        publisher.send_bytes(&bytes).await;
        let mut reasons = Vec::new();
        while reasons.len() < usize::from(count) {
            match publisher.recv().await {
                Packet::PubAck(a) => reasons.push(a.reason),
                other => panic!("expected PUBACK, got {other:?}"),
            }
        }
        reasons
    })
}

/// Receives `count` PUBLISHes with payloads "0", "1", ..., in order,
/// acknowledging each.
async fn receive_in_order(sub: &mut TestClient, count: u16) {
    for i in 0..count {
        let p = sub.recv_publish().await;
        assert_eq!(p.payload, i.to_string(), "message {i}");
        sub.ack(&p).await;
    }
}

/// A queue bound of 10 and a publisher whose 3,000 QoS 1 messages arrive
/// in one burst, read by the broker hundreds at a time: the subscriber
/// reads as fast as it can, so the broker, not the subscriber, is behind,
/// and the publisher waits for room instead of its acknowledged messages
/// being dropped. Every message arrives, in order, none counted dropped.
#[tokio::test]
async fn a_publisher_waits_for_a_subscriber_that_keeps_reading() {
    let broker = start_limited(|c| c.max_queued_messages = 10).await;
    let addr = broker.local_addr();
    let mut sub = TestClient::connect(addr, V5, "pb-sub").await;
    sub.subscribe("pb/t", QoS::AtLeastOnce).await;
    let publisher = flood(addr, "pb-pub", "pb/t", 3_000).await;
    receive_in_order(&mut sub, 3_000).await;
    let reasons = publisher.await.expect("publisher");
    assert!(reasons.iter().all(|r| *r == ReasonCode::Success));
    assert_eq!(counter(&broker, |c| &c.queue_dropped), 0);
    assert_alive(&mut sub).await;
}

/// A subscriber that stops reading (Receive Maximum 5, never acknowledging)
/// beside one that reads: the publisher waits for the stopped one once, it
/// is then judged slow and its excess dropped and counted, and the reading
/// one gets every message.
#[tokio::test]
async fn a_subscriber_that_stops_reading_holds_up_nobody() {
    let broker = start_limited(|c| c.max_queued_messages = 10).await;
    let addr = broker.local_addr();
    let mut stuck = connect_packet(V5, "pb-stuck");
    stuck.properties.receive_maximum = Some(5);
    let (mut stuck, _) = TestClient::connect_with(addr, stuck).await;
    stuck.subscribe("pb/t", QoS::AtLeastOnce).await;
    let mut sub = TestClient::connect(addr, V5, "pb-reader").await;
    sub.subscribe("pb/t", QoS::AtLeastOnce).await;
    let publisher = flood(addr, "pb-pub", "pb/t", 3_000).await;
    receive_in_order(&mut sub, 3_000).await;
    let reasons = publisher.await.expect("publisher");
    assert!(reasons.iter().all(|r| *r == ReasonCode::Success));
    // It has 5 in flight and at most twice the bound queued: the rest dropped.
    let dropped = counter(&broker, |c| &c.queue_dropped);
    assert!(
        (3_000 - 5 - 20..=3_000 - 5 - 10).contains(&dropped),
        "{dropped}"
    );
    for _ in 0..5 {
        let p = stuck.recv_publish().await;
        assert_eq!(p.qos, QoS::AtLeastOnce);
    }
}

/// A SUBSCRIBE to `#` expects every retained message, as Mosquitto sends
/// them, not the first `max_queued_messages`: one SUBSCRIBE's retained
/// messages are queued whole past the limits. The queue stays bounded: a
/// subscriber that reads none of them and subscribes again gets the second
/// batch only as far as the limits plus one batch, the rest dropped and
/// counted.
#[tokio::test]
async fn every_retained_message_reaches_a_new_subscriber_past_the_queue_limits() {
    const RETAINED: u64 = 200;
    let broker = start_limited(|c| c.max_queued_messages = 10).await;
    let addr = broker.local_addr();
    let mut publisher = TestClient::connect(addr, V5, "rq-pub").await;
    for i in 0..RETAINED {
        let topic = format!("rq/{i}");
        let reason = publisher.retain(&topic, b"kept").await;
        assert_eq!(reason, ReasonCode::NoMatchingSubscribers);
    }
    let mut reader = TestClient::connect(addr, V5, "rq-reader").await;
    reader.subscribe("rq/#", QoS::AtLeastOnce).await;
    let mut topics = std::collections::BTreeSet::new();
    for _ in 0..RETAINED {
        let p = reader.recv_publish().await;
        assert!(p.retain);
        reader.ack(&p).await;
        topics.insert(p.topic.to_string());
    }
    assert_eq!(topics.len() as u64, RETAINED);
    assert_eq!(counter(&broker, |c| &c.queue_dropped), 0);
    assert_alive(&mut reader).await;

    // Receive Maximum 5, never acknowledging: the queue is not drained.
    let mut stuck = connect_packet(V5, "rq-stuck");
    stuck.properties.receive_maximum = Some(5);
    let (mut stuck, _) = TestClient::connect_with(addr, stuck).await;
    let subscribe = Packet::Subscribe(Subscribe {
        packet_id: pid(7),
        filters: vec![SubscribeFilter {
            filter: "rq/#".into(),
            options: SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                ..Default::default()
            },
        }],
        properties: SubscribeProperties::default(),
    });
    for _ in 0..3 {
        stuck.send(subscribe.clone()).await;
    }
    // Answered after the third SUBSCRIBE was handled.
    stuck.send(Packet::PingReq).await;
    let mut publishes = 0;
    for _ in 0..4 {
        loop {
            match stuck.recv().await {
                Packet::SubAck(_) | Packet::PingResp => break,
                Packet::Publish(_) => publishes += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    while publishes < 5 {
        stuck.recv_publish().await;
        publishes += 1;
    }
    stuck.expect_nothing().await;
    // 600 owed; at most 5 in flight and 10 + 200 queued.
    let dropped = counter(&broker, |c| &c.queue_dropped);
    assert!(
        (3 * RETAINED - 5 - 210..=3 * RETAINED - 210).contains(&dropped),
        "{dropped}"
    );
}
