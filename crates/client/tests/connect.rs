//! Connecting, refusals, unreachable brokers, timeouts and disconnecting.

mod common;

use std::time::Duration;

use common::*;
use tern_client::{
    Client, ConnectOptions, DisconnectReason, Error, Event, Message, ProtocolVersion, QoS,
    ReasonCode, describe,
};

#[tokio::test]
async fn connects_at_each_version() {
    let broker = broker().await;
    for version in [
        ProtocolVersion::V3_1,
        ProtocolVersion::V3_1_1,
        ProtocolVersion::V5,
    ] {
        let (client, events, connack) = Client::connect(options(&broker, version, "c1"))
            .await
            .unwrap_or_else(|e| panic!("{version:?}: {e}"));
        assert_eq!(connack.reason, ReasonCode::Success);
        assert!(!connack.session_present);
        assert_eq!(client.connack(), connack);
        client.disconnect(ReasonCode::Success).await.unwrap();
        drop(events);
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn v5_broker_assigns_a_client_id() {
    let broker = broker().await;
    let (client, _events, connack) = Client::connect(options(&broker, ProtocolVersion::V5, ""))
        .await
        .unwrap();
    let assigned = connack
        .properties
        .assigned_client_identifier
        .expect("assigned id");
    assert!(!assigned.is_empty());
    client.disconnect(ReasonCode::Success).await.unwrap();
    broker.shutdown().await;
}

#[tokio::test]
async fn refusal_is_reported_with_its_reason() {
    let broker = broker().await;
    let options = options(&broker, ProtocolVersion::V3_1_1, "").clean_start(false);
    match Client::connect(options).await {
        Err(e @ Error::Refused(ReasonCode::ClientIdentifierNotValid)) => {
            assert_eq!(
                e.to_string(),
                "broker refused the connection: client identifier not valid (0x85)"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(
        describe(ReasonCode::BadUserNameOrPassword),
        "bad user name or password (0x86)"
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn unreachable_port_is_reported_with_the_address() {
    // A port that was free a moment ago: nothing listens there.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    match Client::connect(ConnectOptions::new("127.0.0.1", port)).await {
        Err(e @ Error::Unreachable { .. }) => {
            let Error::Unreachable { addr, .. } = &e else {
                unreachable!()
            };
            assert_eq!(addr, &format!("127.0.0.1:{port}"));
            assert!(
                e.to_string()
                    .starts_with("cannot reach broker at 127.0.0.1:"),
                "{e}"
            );
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
}

#[tokio::test]
async fn silent_server_times_out() {
    // Accepts TCP but never answers CONNECT.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        drop(socket);
    });
    let options =
        ConnectOptions::new("127.0.0.1", port).connect_timeout(Duration::from_millis(200));
    match Client::connect(options).await {
        Err(Error::Timeout(d)) => assert_eq!(d, Duration::from_millis(200)),
        other => panic!("expected Timeout, got {other:?}"),
    }
    server.abort();
}

#[tokio::test]
async fn disconnect_ends_the_stream_and_later_calls_fail() {
    let broker = broker().await;
    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let (client, mut events) = connect(options(&broker, version, "bye")).await;
        let other = client.clone();
        client.disconnect(ReasonCode::Success).await.unwrap();
        expect_requested_close(&mut events).await;
        match other.publish(Message::new("t", "x", QoS::AtMostOnce)).await {
            Err(Error::Closed(DisconnectReason::Requested)) => {}
            other => panic!("expected Closed(Requested), got {other:?}"),
        }
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn broker_shutdown_without_reconnect_ends_the_stream() {
    let broker = broker().await;
    let (client, mut events) = connect(options(&broker, ProtocolVersion::V5, "down")).await;
    broker.shutdown().await;
    expect_server_disconnect(&mut events, ReasonCode::ServerShuttingDown).await;
    stream_ends(&mut events).await;
    match client
        .publish(Message::new("t", "x", QoS::AtLeastOnce))
        .await
    {
        Err(Error::Closed(DisconnectReason::Server { reason, .. })) => {
            assert_eq!(reason, ReasonCode::ServerShuttingDown)
        }
        other => panic!("expected Closed, got {other:?}"),
    }
}

#[tokio::test]
async fn v311_connection_loss_is_reported() {
    let broker = broker().await;
    let (_client, mut events) = connect(options(&broker, ProtocolVersion::V3_1_1, "lost")).await;
    // At 3.1.1 the broker just closes the socket.
    broker.shutdown().await;
    match next_event(&mut events).await {
        Event::Disconnected {
            reason: DisconnectReason::ConnectionLost(_),
        } => {}
        other => panic!("expected ConnectionLost, got {other:?}"),
    }
    stream_ends(&mut events).await;
}
