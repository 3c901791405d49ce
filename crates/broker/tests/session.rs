//! Sessions through a real socket: clean start, persistence across
//! reconnects, queued messages, re-sending unacknowledged messages with DUP,
//! bounded queues, session expiry.

mod common;

use common::*;
use tern_broker::Config;
use tern_codec::*;

const V4: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;

#[tokio::test]
async fn persistent_session_keeps_subscriptions_and_queues_in_order() {
    let broker = start().await;
    let addr = broker.local_addr();
    for version in [V4, V5] {
        let (mut sub, ack) = TestClient::connect_with(addr, persistent(version, "dev")).await;
        assert!(!ack.session_present);
        sub.subscribe("q/#", QoS::AtLeastOnce).await;
        sub.disconnect().await;

        let mut publisher = TestClient::connect(addr, version, "pub").await;
        for payload in [&b"1"[..], b"2", b"3"] {
            publisher
                .publish(
                    "q/a",
                    Box::leak(payload.to_vec().into_boxed_slice()),
                    QoS::AtLeastOnce,
                    false,
                )
                .await;
        }
        // QoS 0 is not queued for an offline session (queue_qos0_messages = false).
        publisher
            .publish("q/a", b"zero", QoS::AtMostOnce, false)
            .await;

        let (mut sub, ack) = TestClient::connect_with(addr, persistent(version, "dev")).await;
        assert!(ack.session_present, "{version:?}");
        for expected in ["1", "2", "3"] {
            let p = sub.recv_publish().await;
            assert_eq!(p.payload, expected.as_bytes());
            sub.ack(&p).await;
        }
        sub.expect_nothing().await;
        // Subscription is still there.
        publisher
            .publish("q/b", b"live", QoS::AtLeastOnce, false)
            .await;
        let p = sub.recv_publish().await;
        assert_eq!(p.payload, "live");
        sub.ack(&p).await;
        // Clean start discards the session.
        sub.drop_connection();
        let (mut sub, ack) = TestClient::connect_with(addr, connect_packet(version, "dev")).await;
        assert!(!ack.session_present);
        publisher
            .publish("q/c", b"gone", QoS::AtLeastOnce, false)
            .await;
        sub.expect_nothing().await;
        publisher.disconnect().await;
        sub.disconnect().await;
    }
}

#[tokio::test]
async fn unacknowledged_messages_are_resent_with_dup_in_order_before_new_ones() {
    let broker = start().await;
    let addr = broker.local_addr();
    let (mut sub, _) = TestClient::connect_with(addr, persistent(V5, "dev")).await;
    sub.subscribe("t", QoS::ExactlyOnce).await;
    let mut publisher = TestClient::connect(addr, V5, "pub").await;
    publisher.publish("t", b"a", QoS::AtLeastOnce, false).await;
    publisher.publish("t", b"b", QoS::ExactlyOnce, false).await;
    publisher.publish("t", b"c", QoS::ExactlyOnce, false).await;
    let a = sub.recv_publish().await;
    let b = sub.recv_publish().await;
    let c = sub.recv_publish().await;
    // Acknowledge only part of c's flow: PUBREC, so the broker owes PUBREL.
    sub.send(Packet::PubRec(PubAck::new(c.packet_id.unwrap())))
        .await;
    assert!(matches!(sub.recv().await, Packet::PubRel(_)));
    sub.drop_connection();

    publisher.publish("t", b"d", QoS::AtLeastOnce, false).await;
    let (mut sub, ack) = TestClient::connect_with(addr, persistent(V5, "dev")).await;
    assert!(ack.session_present);
    let a2 = sub.recv_publish().await;
    assert_eq!(
        (a2.payload.as_ref(), a2.dup, a2.packet_id),
        (&b"a"[..], true, a.packet_id)
    );
    let b2 = sub.recv_publish().await;
    assert_eq!(
        (b2.payload.as_ref(), b2.dup, b2.packet_id),
        (&b"b"[..], true, b.packet_id)
    );
    match sub.recv().await {
        Packet::PubRel(r) => assert_eq!(Some(r.packet_id), c.packet_id),
        other => panic!("expected PUBREL for c, got {other:?}"),
    }
    let d = sub.recv_publish().await;
    assert_eq!((d.payload.as_ref(), d.dup), (&b"d"[..], false));
}

#[tokio::test]
async fn queue_is_bounded_and_overflow_is_counted() {
    let config = Config {
        max_queued_messages: 3,
        ..test_config()
    };
    let broker = start_with(config).await;
    let addr = broker.local_addr();
    let (mut sub, _) = TestClient::connect_with(addr, persistent(V4, "dev")).await;
    sub.subscribe("t", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut publisher = TestClient::connect(addr, V4, "pub").await;
    for _ in 0..10 {
        publisher.publish("t", b"m", QoS::AtLeastOnce, false).await;
    }
    let dropped = broker.state().metrics.dropped_total();
    assert_eq!(dropped, 7);
    let (mut sub, _) = TestClient::connect_with(addr, persistent(V4, "dev")).await;
    for _ in 0..3 {
        let p = sub.recv_publish().await;
        sub.ack(&p).await;
    }
    sub.expect_nothing().await;
}

#[tokio::test]
async fn session_expires_after_its_interval() {
    let broker = start().await;
    let addr = broker.local_addr();
    let mut connect = persistent(V5, "brief");
    connect.properties.session_expiry_interval = Some(1);
    let (sub, _) = TestClient::connect_with(addr, connect.clone()).await;
    sub.disconnect().await;
    // Still there within the interval.
    let (sub, ack) = TestClient::connect_with(addr, connect.clone()).await;
    assert!(ack.session_present);
    sub.disconnect().await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let (_sub, ack) = TestClient::connect_with(addr, connect).await;
    assert!(!ack.session_present);
}

#[tokio::test]
async fn v5_session_expiry_zero_ends_session_at_disconnect() {
    let broker = start().await;
    let addr = broker.local_addr();
    let mut connect = connect_packet(V5, "c");
    connect.clean_start = false;
    let (c, _) = TestClient::connect_with(addr, connect.clone()).await;
    c.disconnect().await;
    let (_c, ack) = TestClient::connect_with(addr, connect).await;
    assert!(!ack.session_present);
}

/// `max_session_expiry_secs` (Mosquitto's persistent_client_expiration):
/// a 3.1.1 persistent session, which has no expiry of its own, and an MQTT 5
/// one asking for "never" are gone once their client stays away past the
/// cap; the MQTT 5 client is told the cap in CONNACK; each expiry counts in
/// `clients/expired`.
#[tokio::test]
async fn sessions_that_would_never_expire_are_capped() {
    let broker = start_with(Config {
        max_session_expiry_secs: 1,
        ..test_config()
    })
    .await;
    let addr = broker.local_addr();
    let mut forever = persistent(V5, "v5-forever");
    forever.properties.session_expiry_interval = Some(u32::MAX);
    let (v5, ack) = TestClient::connect_with(addr, forever.clone()).await;
    assert_eq!(ack.properties.session_expiry_interval, Some(1));
    let (v4, _) = TestClient::connect_with(addr, persistent(V4, "v4-persistent")).await;
    v5.disconnect().await;
    v4.disconnect().await;
    let expired = || tern_broker::testing::Metrics::get(&broker.state().metrics.sessions_expired);
    eventually("both sessions expire", || expired() == 2).await;
    let (_v5, ack) = TestClient::connect_with(addr, forever).await;
    assert!(!ack.session_present);
    let (_v4, ack) = TestClient::connect_with(addr, persistent(V4, "v4-persistent")).await;
    assert!(!ack.session_present);
}

/// A DISCONNECT's Session Expiry Interval is capped as CONNECT's is: a
/// client cannot keep its session past `max_session_expiry_secs` by asking
/// for "never" on its way out.
#[tokio::test]
async fn a_disconnect_cannot_keep_a_session_past_the_cap() {
    let broker = start_with(Config {
        max_session_expiry_secs: 1,
        ..test_config()
    })
    .await;
    let addr = broker.local_addr();
    let (mut client, ack) = TestClient::connect_with(addr, persistent(V5, "leaver")).await;
    assert!(!ack.session_present);
    let mut bye = Disconnect::new(ReasonCode::Success);
    bye.properties.session_expiry_interval = Some(u32::MAX);
    client.send(Packet::Disconnect(bye)).await;
    let expired = || tern_broker::testing::Metrics::get(&broker.state().metrics.sessions_expired);
    eventually("the session expires at the cap", || expired() == 1).await;
    let (_client, ack) = TestClient::connect_with(addr, persistent(V5, "leaver")).await;
    assert!(!ack.session_present);
}
