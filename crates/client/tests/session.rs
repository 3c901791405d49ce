//! Persistent sessions and automatic reconnection.

mod common;

use std::time::Duration;

use common::*;
use tern_client::{
    Client, ConnectOptions, DisconnectReason, Event, Message, ProtocolVersion, QoS, ReasonCode,
    Reconnect,
};

fn backoff() -> Reconnect {
    Reconnect::new(Duration::from_millis(20), Duration::from_millis(200))
}

#[tokio::test]
async fn persistent_session_receives_what_was_published_while_away() {
    let broker = broker().await;
    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let id = format!("persist-{version:?}");
        let options = options(&broker, version, &id)
            .clean_start(false)
            .session_expiry(60);
        let (client, _events, connack) = Client::connect(options.clone()).await.unwrap();
        assert!(!connack.session_present);
        subscribe(&client, "away/#", QoS::AtLeastOnce).await;
        client.disconnect(ReasonCode::Success).await.unwrap();

        let (publisher, _e) = connect(options_plain(&broker, version)).await;
        for i in 0..3 {
            publisher
                .publish(Message::new(format!("away/{i}"), "x", QoS::AtLeastOnce))
                .await
                .unwrap();
        }
        let (_client, mut events, connack) = Client::connect(options).await.unwrap();
        assert!(connack.session_present);
        for i in 0..3 {
            assert_eq!(
                next_message(&mut events).await.topic,
                format!("away/{i}").as_str()
            );
        }
        no_event(&mut events).await;
    }
    broker.shutdown().await;
}

fn options_plain(broker: &tern_broker::BrokerHandle, version: ProtocolVersion) -> ConnectOptions {
    options(broker, version, "")
}

#[tokio::test]
async fn reconnects_to_a_restarted_broker_and_resubscribes() {
    let broker = broker().await;
    let addr = broker.local_addr();
    let options = options(&broker, ProtocolVersion::V5, "phoenix").reconnect(backoff());
    let (client, mut events) = connect(options).await;
    subscribe(&client, "r/#", QoS::AtLeastOnce).await;

    broker.shutdown().await;
    expect_server_disconnect(&mut events, ReasonCode::ServerShuttingDown).await;
    // Published while the broker is down: completes after the reconnect.
    let pending = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .publish(Message::new("r/while-down", "1", QoS::AtLeastOnce))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!pending.is_finished());

    let broker = broker_on(addr).await;
    match next_event(&mut events).await {
        Event::Reconnected { session_present } => assert!(!session_present),
        other => panic!("expected Reconnected, got {other:?}"),
    }
    assert_eq!(
        tokio::time::timeout(WAIT, pending)
            .await
            .unwrap()
            .unwrap()
            .unwrap(),
        ReasonCode::Success
    );
    // The subscription was renewed before the queued publish went out.
    assert_eq!(next_message(&mut events).await.topic, "r/while-down");
    let (other, _e) = connect(options_plain(&broker, ProtocolVersion::V5)).await;
    other
        .publish(Message::new("r/after", "2", QoS::AtLeastOnce))
        .await
        .unwrap();
    assert_eq!(next_message(&mut events).await.topic, "r/after");
    broker.shutdown().await;
}

#[tokio::test]
async fn reconnect_resumes_a_present_session() {
    let broker = broker().await;
    let options = options(&broker, ProtocolVersion::V5, "twin")
        .reconnect(backoff())
        .clean_start(false)
        .session_expiry(60);
    let (client, mut events) = connect(options.clone()).await;
    subscribe(&client, "twin", QoS::AtLeastOnce).await;
    // Another connection with the same id takes the session over; it has no
    // reconnect, so the first one takes it back once the second has gone.
    let mut once = options;
    once.reconnect = None;
    let (intruder, mut intruder_events) = connect(once).await;
    expect_server_disconnect(&mut events, ReasonCode::SessionTakenOver).await;
    match next_event(&mut events).await {
        Event::Reconnected { session_present } => assert!(session_present),
        other => panic!("expected Reconnected, got {other:?}"),
    }
    match next_event(&mut intruder_events).await {
        Event::Disconnected { .. } => {}
        other => panic!("expected the intruder to be disconnected, got {other:?}"),
    }
    drop(intruder);
    // The subscription lives in the resumed session.
    client
        .publish(Message::new("twin", "x", QoS::AtLeastOnce))
        .await
        .unwrap();
    assert_eq!(next_message(&mut events).await.topic, "twin");
    broker.shutdown().await;
}

#[tokio::test]
async fn disconnect_while_reconnecting_ends_the_stream() {
    let broker = broker().await;
    let options = options(&broker, ProtocolVersion::V3_1_1, "quitter").reconnect(backoff());
    let (client, mut events) = connect(options).await;
    broker.shutdown().await;
    match next_event(&mut events).await {
        Event::Disconnected {
            reason: DisconnectReason::ConnectionLost(_),
        } => {}
        other => panic!("expected Disconnected, got {other:?}"),
    }
    let pending = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .publish(Message::new("t", "x", QoS::AtLeastOnce))
                .await
        })
    };
    tokio::task::yield_now().await;
    client.disconnect(ReasonCode::Success).await.unwrap();
    expect_requested_close(&mut events).await;
    match pending.await.unwrap() {
        Err(tern_client::Error::Closed(DisconnectReason::Requested)) => {}
        other => panic!("expected Closed(Requested), got {other:?}"),
    }
}
