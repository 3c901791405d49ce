//! Last Will: published on a network drop, keep-alive timeout or protocol
//! error, not after a normal DISCONNECT (MQTT 5: unless reason 0x04); Will
//! QoS, Retain, Delay Interval and properties.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use tern_broker::BrokerHandle;
use tern_codec::*;

const V4: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;

fn with_will(version: ProtocolVersion, client_id: &str, qos: QoS, retain: bool) -> Connect {
    let mut c = connect_packet(version, client_id);
    c.will = Some(LastWill {
        topic: "dev/status".into(),
        payload: Bytes::from_static(b"offline"),
        qos,
        retain,
        properties: WillProperties::default(),
    });
    c
}

async fn watcher(addr: std::net::SocketAddr, version: ProtocolVersion) -> TestClient {
    let mut w = TestClient::connect(addr, version, "watcher").await;
    w.subscribe("dev/#", QoS::ExactlyOnce).await;
    w
}

/// A broker, a watcher at the level of `connect`, then the device connected
/// with `connect`: returns the broker, the watcher and the device.
async fn watched(connect: Connect) -> (BrokerHandle, TestClient, TestClient) {
    let broker = start().await;
    let w = watcher(broker.local_addr(), connect.protocol).await;
    let (dev, _) = TestClient::connect_with(broker.local_addr(), connect).await;
    (broker, w, dev)
}

#[tokio::test]
async fn will_published_on_network_drop_with_its_qos() {
    let broker = start().await;
    for version in [V4, V5] {
        let mut w = watcher(broker.local_addr(), version).await;
        let (dev, _) = TestClient::connect_with(
            broker.local_addr(),
            with_will(version, "dev", QoS::AtLeastOnce, false),
        )
        .await;
        dev.drop_connection();
        let p = w.recv_publish().await;
        assert_eq!(
            (p.topic.as_str(), &p.payload[..], p.qos),
            ("dev/status", &b"offline"[..], QoS::AtLeastOnce)
        );
        w.ack(&p).await;
        w.disconnect().await;
    }
}

#[tokio::test]
async fn no_will_after_normal_disconnect() {
    let (_broker, mut w, dev) = watched(with_will(V4, "dev", QoS::AtMostOnce, false)).await;
    dev.disconnect().await;
    w.expect_nothing().await;
}

#[tokio::test]
async fn will_published_on_protocol_error() {
    let (_broker, mut w, mut dev) = watched(with_will(V5, "dev", QoS::AtMostOnce, false)).await;
    dev.send(Packet::Connect(Box::new(connect_packet(V5, "dev"))))
        .await;
    assert_eq!(
        dev.expect_closed().await.map(|d| d.reason),
        Some(ReasonCode::ProtocolError)
    );
    assert_eq!(w.recv_publish().await.payload, "offline");
}

#[tokio::test]
async fn will_published_on_keep_alive_timeout() {
    let mut connect = with_will(V4, "dev", QoS::AtMostOnce, false);
    connect.keep_alive = 1;
    let (_broker, mut w, mut dev) = watched(connect).await;
    assert_eq!(w.recv_publish().await.payload, "offline");
    assert!(dev.expect_closed().await.is_none());
}

#[tokio::test]
async fn will_retain_is_kept_for_late_subscribers() {
    let broker = start().await;
    let (dev, _) = TestClient::connect_with(
        broker.local_addr(),
        with_will(V4, "dev", QoS::AtMostOnce, true),
    )
    .await;
    dev.drop_connection();
    // Poll for the retained will with fresh subscribers until it appears.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut late = TestClient::connect(broker.local_addr(), V4, "late").await;
        late.subscribe("dev/status", QoS::AtMostOnce).await;
        if let Ok(Some(Packet::Publish(p))) = late.next(QUIET).await {
            assert!(p.retain);
            assert_eq!(p.payload, "offline");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "retained will never appeared"
        );
    }
}

#[tokio::test]
async fn v5_disconnect_with_will_message_publishes_it() {
    let (_broker, mut w, mut dev) = watched(with_will(V5, "dev", QoS::AtMostOnce, false)).await;
    dev.send(Packet::Disconnect(Disconnect::new(
        ReasonCode::DisconnectWithWillMessage,
    )))
    .await;
    assert_eq!(w.recv_publish().await.payload, "offline");
}

#[tokio::test]
async fn will_properties_are_forwarded() {
    let mut connect = with_will(V5, "dev", QoS::AtMostOnce, false);
    let props = &mut connect.will.as_mut().unwrap().properties;
    props.content_type = Some("text/plain".into());
    props.response_topic = Some("dev/reply".into());
    props.correlation_data = Some(Bytes::from_static(b"\x01\x02"));
    props.payload_format_indicator = Some(true);
    props.user_properties = vec![UserProperty {
        name: "k".into(),
        value: "v".into(),
    }];
    let (_broker, mut w, dev) = watched(connect).await;
    dev.drop_connection();
    let p = w.recv_publish().await;
    assert_eq!(p.properties.content_type.as_deref(), Some("text/plain"));
    assert_eq!(p.properties.response_topic.as_deref(), Some("dev/reply"));
    assert_eq!(
        p.properties.correlation_data.as_deref(),
        Some(&b"\x01\x02"[..])
    );
    assert_eq!(p.properties.payload_format_indicator, Some(true));
    assert_eq!(p.properties.user_properties.len(), 1);
}

fn delayed(delay_secs: u32, session_expiry: u32) -> Connect {
    let mut c = with_will(V5, "dev", QoS::AtMostOnce, false);
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(session_expiry);
    c.will.as_mut().unwrap().properties.will_delay_interval = Some(delay_secs);
    c
}

#[tokio::test]
async fn will_delay_interval_postpones_the_will() {
    let (_broker, mut w, dev) = watched(delayed(1, 60)).await;
    let dropped_at = tokio::time::Instant::now();
    dev.drop_connection();
    assert_eq!(w.recv_publish().await.payload, "offline");
    assert!(dropped_at.elapsed() >= Duration::from_millis(900));
}

#[tokio::test]
async fn will_not_sent_if_client_returns_within_the_delay() {
    let (broker, mut w, dev) = watched(delayed(1, 60)).await;
    dev.drop_connection();
    let mut back = delayed(1, 60);
    back.will = None;
    let (_dev, ack) = TestClient::connect_with(broker.local_addr(), back).await;
    assert!(ack.session_present);
    if let Ok(Some(p)) = w.next(Duration::from_millis(1500)).await {
        panic!("will published although the client came back: {p:?}");
    }
}

#[tokio::test]
async fn will_sent_when_session_ends_before_the_delay() {
    let (_broker, mut w, dev) = watched(delayed(60, 1)).await;
    dev.drop_connection();
    // Session expiry (1 s) comes before the will delay (60 s).
    let p = tokio::time::timeout(Duration::from_secs(3), w.recv_publish())
        .await
        .expect("will within session expiry");
    assert_eq!(p.payload, "offline");
}
