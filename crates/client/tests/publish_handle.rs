//! `try_publish` and `start_publish`: the handle resolves with the
//! acknowledgement, not before; QoS 0 at once; what a lost connection does
//! to it. Through a relay to the real broker, which can hold back the
//! broker's answers or cut the connection.

mod common;

use std::time::Duration;

use common::relay::Relay;
use common::*;
use tern_broker::BrokerHandle;
use tern_client::{
    ConnectOptions, DisconnectReason, Error, Event, Message, ProtocolVersion, PublishHandle, QoS,
    ReasonCode, Reconnect,
};

/// Options for a client that reaches `broker` through `relay`.
fn via(relay: &Relay, version: ProtocolVersion, client_id: &str) -> ConnectOptions {
    ConnectOptions::new("127.0.0.1", relay.port())
        .version(version)
        .client_id(client_id)
}

/// A client connected straight to the broker, subscribed to `filter`.
async fn watcher(
    broker: &BrokerHandle,
    filter: &str,
) -> (tern_client::Client, tern_client::Events) {
    let (client, events) = connect(options(broker, ProtocolVersion::V5, "watcher")).await;
    subscribe(&client, filter, QoS::ExactlyOnce).await;
    (client, events)
}

/// Asserts the handle has not resolved within `QUIET`.
async fn still_pending(handle: &mut PublishHandle) {
    if let Ok(result) = tokio::time::timeout(QUIET, handle).await {
        panic!("the handle resolved early: {result:?}");
    }
}

async fn resolved(handle: PublishHandle) -> Result<ReasonCode, Error> {
    tokio::time::timeout(WAIT, handle)
        .await
        .expect("the handle resolves in time")
}

#[tokio::test]
async fn handle_resolves_when_the_acknowledgement_arrives() {
    let broker = broker().await;
    let relay = Relay::start(broker.local_addr()).await;
    let (_w, mut watch) = watcher(&broker, "ack/#").await;
    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let (client, _events) = connect(via(&relay, version, "acked")).await;
        relay.hold();
        let mut qos1 = client
            .try_publish(Message::new("ack/1", "x", QoS::AtLeastOnce))
            .unwrap();
        let mut qos2 = client
            .start_publish(Message::new("ack/2", "x", QoS::ExactlyOnce))
            .await
            .unwrap();
        // The broker has the QoS 1 message (a subscriber gets it), but its
        // PUBACK is held: the handle waits for the PUBACK, not the sending.
        assert_eq!(next_message(&mut watch).await.topic, "ack/1");
        still_pending(&mut qos1).await;
        still_pending(&mut qos2).await;
        relay.release();
        assert_eq!(resolved(qos1).await.unwrap(), ReasonCode::Success);
        // QoS 2: PUBREC, then our PUBREL, then PUBCOMP resolves it.
        assert_eq!(resolved(qos2).await.unwrap(), ReasonCode::Success);
        assert_eq!(next_message(&mut watch).await.topic, "ack/2");
        client.disconnect(ReasonCode::Success).await.unwrap();
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn handle_carries_the_brokers_reason_code() {
    let broker = broker().await;
    let (client, _events) = connect(options(&broker, ProtocolVersion::V5, "nobody")).await;
    let handle = client
        .try_publish(Message::new("nobody/listens", "x", QoS::AtLeastOnce))
        .unwrap();
    assert_eq!(
        resolved(handle).await.unwrap(),
        ReasonCode::NoMatchingSubscribers
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn qos0_handle_resolves_at_once() {
    let broker = broker().await;
    let relay = Relay::start(broker.local_addr()).await;
    let (_w, mut watch) = watcher(&broker, "q0").await;
    let (client, _events) = connect(via(&relay, ProtocolVersion::V5, "q0")).await;
    // Nothing from the broker reaches the client: a QoS 0 publish has no
    // acknowledgement to wait for, so its handle resolves all the same.
    relay.hold();
    let handle = client
        .try_publish(Message::new("q0", "x", QoS::AtMostOnce))
        .unwrap();
    assert_eq!(resolved(handle).await.unwrap(), ReasonCode::Success);
    assert_eq!(next_message(&mut watch).await.topic, "q0");
    broker.shutdown().await;
}

#[tokio::test]
async fn handle_fails_with_the_reason_when_the_connection_drops() {
    let broker = broker().await;
    let relay = Relay::start(broker.local_addr()).await;
    let (client, mut events) = connect(via(&relay, ProtocolVersion::V5, "cut")).await;
    relay.hold();
    let mut handle = client
        .try_publish(Message::new("cut", "x", QoS::AtLeastOnce))
        .unwrap();
    still_pending(&mut handle).await;
    relay.cut();
    // No reconnect: the handle gets the reason the event stream reports.
    let reason = match resolved(handle).await {
        Err(Error::Closed(reason @ DisconnectReason::ConnectionLost(_))) => reason,
        other => panic!("expected Closed(ConnectionLost), got {other:?}"),
    };
    match next_event(&mut events).await {
        Event::Disconnected { reason: reported } => assert_eq!(reported, reason),
        other => panic!("expected Disconnected, got {other:?}"),
    }
    stream_ends(&mut events).await;
    // Later publishes fail at once, with the same reason.
    match client.try_publish(Message::new("cut", "x", QoS::AtMostOnce)) {
        Err(Error::Closed(later)) => assert_eq!(later, reason),
        other => panic!("expected Closed, got {other:?}"),
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn handle_survives_a_reconnect_and_resolves_after_the_resend() {
    let broker = broker().await;
    let relay = Relay::start(broker.local_addr()).await;
    let (_w, mut watch) = watcher(&broker, "again").await;
    // The first retry comes 300 ms after the loss: time to see the handle
    // still waiting while the client is offline.
    let options = via(&relay, ProtocolVersion::V5, "again")
        .clean_start(false)
        .session_expiry(60)
        .reconnect(Reconnect::new(
            Duration::from_millis(300),
            Duration::from_secs(1),
        ));
    let (client, mut events) = connect(options).await;
    relay.hold();
    let mut handle = client
        .try_publish(Message::new("again", "x", QoS::AtLeastOnce))
        .unwrap();
    assert_eq!(next_message(&mut watch).await.topic, "again");
    relay.cut();
    relay.release();
    match next_event(&mut events).await {
        Event::Disconnected {
            reason: DisconnectReason::ConnectionLost(_),
        } => {}
        other => panic!("expected Disconnected, got {other:?}"),
    }
    if let Ok(result) = tokio::time::timeout(Duration::from_millis(100), &mut handle).await {
        panic!("the handle resolved while offline: {result:?}");
    }
    match next_event(&mut events).await {
        Event::Reconnected { session_present } => assert!(session_present),
        other => panic!("expected Reconnected, got {other:?}"),
    }
    // Sent again with DUP on the resumed session; its PUBACK resolves it.
    assert_eq!(resolved(handle).await.unwrap(), ReasonCode::Success);
    client.disconnect(ReasonCode::Success).await.unwrap();
    broker.shutdown().await;
}

#[tokio::test]
async fn pending_handle_keeps_the_connection_open() {
    let broker = broker().await;
    let relay = Relay::start(broker.local_addr()).await;
    let (client, events) = connect(via(&relay, ProtocolVersion::V5, "kept")).await;
    relay.hold();
    let handle = client
        .try_publish(Message::new("kept", "x", QoS::AtLeastOnce))
        .unwrap();
    // Without the client and the events, only the handle is left: the
    // connection stays open for its acknowledgement.
    drop(client);
    drop(events);
    tokio::time::sleep(QUIET).await;
    relay.release();
    assert!(!resolved(handle).await.unwrap().is_error());
    broker.shutdown().await;
}

#[tokio::test]
async fn try_publish_hands_the_message_back_when_the_queue_is_full() {
    let broker = broker().await;
    let (client, _events) = connect(options(&broker, ProtocolVersion::V5, "full")).await;
    // The test runs on one thread, so the event loop cannot take anything
    // while this loop runs: the queue fills and stays full.
    let mut handles = Vec::new();
    let refused = loop {
        assert!(handles.len() < 10_000, "the queue never filled");
        let message = Message::new("full", handles.len().to_string(), QoS::AtLeastOnce);
        match client.try_publish(message) {
            Ok(handle) => handles.push(handle),
            Err(Error::QueueFull(message)) => break message,
            Err(e) => panic!("expected QueueFull, got {e}"),
        }
    };
    assert_eq!(&refused.payload[..], handles.len().to_string().as_bytes());
    let queued = handles.len();
    // Waiting for room instead: it gets in once the loop has caught up.
    let last = client.start_publish(*refused).await.unwrap();
    for handle in handles {
        assert!(!resolved(handle).await.unwrap().is_error());
    }
    assert!(!resolved(last).await.unwrap().is_error());
    assert!(queued > 0);
    broker.shutdown().await;
}
