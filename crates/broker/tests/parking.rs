//! Parked connections: a quiet TCP connection leaves its task and waits in
//! the parker's epoll set; each thing that needs it brings it back — bytes
//! from the client, a delivery, keep-alive expiry, a takeover, the client
//! closing, broker shutdown; a reload that refuses the login is in
//! `tests/auth.rs`. (Every other test file also parks: the test
//! configuration parks after 1 ms.)

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use tern_broker::Config;
use tern_codec::*;

const V5: ProtocolVersion = ProtocolVersion::V5;

/// Parks after 20 ms: long enough that a burst of packets stays in its task.
fn parking_config() -> Config {
    Config {
        park_idle_ms: 20,
        ..test_config()
    }
}

#[tokio::test]
async fn parked_connections_wake_for_bytes_and_deliveries() {
    let broker = tern_broker::Broker::start(parking_config()).await.unwrap();
    let addr = broker.local_addr();
    let mut sub = TestClient::connect(addr, V5, "sub").await;
    sub.subscribe("t/#", QoS::AtLeastOnce).await;
    let mut publ = TestClient::connect(addr, V5, "pub").await;
    wait_parked(&broker, 2).await;

    // The publisher wakes for its PUBLISH (PUBACK comes back), the
    // subscriber for the delivery.
    publ.publish("t/1", b"hello", QoS::AtLeastOnce, false).await;
    let p = sub.recv_publish().await;
    assert_eq!(&p.payload[..], b"hello");
    wait_parked(&broker, 2).await;

    // Parked with a message in flight: the late PUBACK is taken, and the
    // message is not sent again.
    sub.ack(&p).await;
    wait_parked(&broker, 2).await;
    publ.publish("t/2", b"again", QoS::AtLeastOnce, false).await;
    let p = sub.recv_publish().await;
    assert_eq!((&p.payload[..], p.dup), (&b"again"[..], false));
    sub.ack(&p).await;

    // A ping is answered from parking.
    wait_parked(&broker, 2).await;
    sub.send(Packet::PingReq).await;
    assert_eq!(sub.recv().await, Packet::PingResp);
    sub.expect_nothing().await;
    broker.shutdown().await;
}

#[tokio::test]
async fn keep_alive_expires_while_parked_and_the_will_goes_out() {
    let broker = tern_broker::Broker::start(parking_config()).await.unwrap();
    let addr = broker.local_addr();
    let mut watcher = TestClient::connect(addr, V5, "watcher").await;
    watcher.subscribe("dev/#", QoS::AtLeastOnce).await;
    let mut connect = connect_packet(V5, "dev");
    connect.keep_alive = 1;
    connect.will = Some(LastWill {
        topic: "dev/status".into(),
        payload: Bytes::from_static(b"offline"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: WillProperties::default(),
    });
    let (mut dev, _) = TestClient::connect_with(addr, connect).await;
    wait_parked(&broker, 2).await;
    // 1.5 × 1 s of silence, found by the parker's once-a-second scan.
    let started = std::time::Instant::now();
    expect_disconnect(&mut dev, ReasonCode::KeepAliveTimeout).await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1400) && waited < Duration::from_millis(3000),
        "closed after {waited:?}"
    );
    assert_eq!(&watcher.recv_publish().await.payload[..], b"offline");
    broker.shutdown().await;
}

#[tokio::test]
async fn a_parked_connection_is_taken_over() {
    let broker = tern_broker::Broker::start(parking_config()).await.unwrap();
    let addr = broker.local_addr();
    let mut connect = connect_packet(V5, "same");
    connect.clean_start = false;
    connect.properties.session_expiry_interval = Some(60);
    let (mut first, _) = TestClient::connect_with(addr, connect.clone()).await;
    first.subscribe("t", QoS::AtLeastOnce).await;
    wait_parked(&broker, 1).await;
    let (mut second, connack) = TestClient::connect_with(addr, connect).await;
    assert_eq!(
        (connack.reason, connack.session_present),
        (ReasonCode::Success, true)
    );
    expect_disconnect(&mut first, ReasonCode::SessionTakenOver).await;
    // The session, subscription included, now serves the second connection.
    let mut publ = TestClient::connect(addr, V5, "pub").await;
    publ.publish("t", b"to second", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(&second.recv_publish().await.payload[..], b"to second");
    broker.shutdown().await;
}

#[tokio::test]
async fn a_client_closing_while_parked_is_noticed() {
    let broker = tern_broker::Broker::start(parking_config()).await.unwrap();
    let addr = broker.local_addr();
    let dev = TestClient::connect(addr, V5, "dev").await;
    wait_parked(&broker, 1).await;
    dev.drop_connection();
    wait_parked(&broker, 0).await;
    let metrics = &broker.state().metrics;
    eventually("the closed connection is no longer counted", || {
        metrics
            .clients_connected
            .load(std::sync::atomic::Ordering::Relaxed)
            == 0
    })
    .await;
    broker.shutdown().await;
}

#[tokio::test]
async fn shutdown_disconnects_parked_connections() {
    let broker = tern_broker::Broker::start(parking_config()).await.unwrap();
    let addr = broker.local_addr();
    let mut a = TestClient::connect(addr, V5, "a").await;
    let mut b = TestClient::connect(addr, ProtocolVersion::V3_1_1, "b").await;
    wait_parked(&broker, 2).await;
    tokio::time::timeout(WAIT, broker.shutdown())
        .await
        .expect("shutdown finishes with parked connections");
    expect_disconnect(&mut a, ReasonCode::ServerShuttingDown).await;
    // MQTT 3.1.1 has no server DISCONNECT: the socket just closes.
    assert_eq!(b.expect_closed().await, None);
}

#[tokio::test]
async fn with_parking_off_nothing_parks() {
    let config = Config {
        park_idle_ms: 0,
        ..test_config()
    };
    let broker = tern_broker::Broker::start(config).await.unwrap();
    let mut c = TestClient::connect(broker.local_addr(), V5, "c").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(broker.parked_connections(), 0);
    c.send(Packet::PingReq).await;
    assert_eq!(c.recv().await, Packet::PingResp);
    broker.shutdown().await;
}

/// A parked client that only pings is answered by the parker itself: it
/// stays parked (no task is spawned for a PINGREQ), and each ping moves its
/// keep-alive deadline, so pinging every 0.6 s with a keep-alive of 1 s (1.5
/// s of silence allowed) keeps it connected for good.
#[tokio::test]
async fn pings_are_answered_without_waking_the_connection() {
    let broker = tern_broker::Broker::start(parking_config()).await.unwrap();
    let addr = broker.local_addr();
    let mut connect = connect_packet(V5, "pinger");
    connect.keep_alive = 1;
    let (mut c, _) = TestClient::connect_with(addr, connect).await;
    wait_parked(&broker, 1).await;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        c.send(Packet::PingReq).await;
        assert_eq!(c.recv().await, Packet::PingResp);
        // Resumed, it would park again only 20 ms after the ping.
        assert_eq!(broker.parked_connections(), 1, "still parked");
    }
    // A ping with more behind it (here a second ping) wakes the
    // connection, which answers both.
    c.send_bytes(&[0xC0, 0x00, 0xC0, 0x00]).await;
    assert_eq!(c.recv().await, Packet::PingResp);
    assert_eq!(c.recv().await, Packet::PingResp);
    broker.shutdown().await;
}
