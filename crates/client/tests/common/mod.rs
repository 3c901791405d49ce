//! Test support: an in-process tern broker on a free loopback port, client
//! options pointing at it, and event waits that always have a deadline (a
//! missing event fails the test instead of hanging it).

#![allow(dead_code)] // each test binary uses a different part of this module

pub mod relay;

use std::net::SocketAddr;
use std::time::Duration;

use tern_broker::{Broker, BrokerHandle, Config};
use tern_client::{
    Client, ConnectOptions, DisconnectReason, Event, Events, ProtocolVersion, QoS, ReasonCode,
    Received,
};

/// How long a test waits for something it expects.
pub const WAIT: Duration = Duration::from_secs(5);
/// How long a test waits to be sure something does NOT happen.
pub const QUIET: Duration = Duration::from_millis(300);

/// Broker defaults on 127.0.0.1:0, `$SYS` off.
pub fn config() -> Config {
    Config {
        bind: "127.0.0.1:0".parse().unwrap(),
        sys_interval_secs: 0,
        persistence: false,
        ..Config::default()
    }
}

pub async fn broker() -> BrokerHandle {
    broker_with(config()).await
}

pub async fn broker_with(config: Config) -> BrokerHandle {
    Broker::start(config).await.expect("broker starts")
}

/// Starts a broker on `addr`, retrying for up to 2 s while the port is
/// still held by the previous one.
pub async fn broker_on(addr: SocketAddr) -> BrokerHandle {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        match Broker::start(Config {
            bind: addr,
            ..config()
        })
        .await
        {
            Ok(b) => return b,
            Err(e) if tokio::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot bind {addr} again: {e}"),
        }
    }
}

/// Options for `broker` at `version` with `client_id`.
pub fn options(broker: &BrokerHandle, version: ProtocolVersion, client_id: &str) -> ConnectOptions {
    let addr = broker.local_addr();
    ConnectOptions::new(addr.ip().to_string(), addr.port())
        .version(version)
        .client_id(client_id)
}

pub async fn connect(options: ConnectOptions) -> (Client, Events) {
    let (client, events, connack) = Client::connect(options).await.expect("connects");
    assert!(!connack.reason.is_error());
    (client, events)
}

pub async fn subscribe(client: &Client, filter: &str, qos: QoS) {
    let suback = client.subscribe(filter, qos).await.expect("subscribe");
    assert!(!suback.reasons.iter().any(|r| r.is_error()), "{suback:?}");
}

/// The next event; panics on timeout or end of stream.
pub async fn next_event(events: &mut Events) -> Event {
    match tokio::time::timeout(WAIT, events.next()).await {
        Ok(Some(event)) => event,
        Ok(None) => panic!("event stream ended"),
        Err(_) => panic!("no event within {WAIT:?}"),
    }
}

/// The next event, which must be a DISCONNECT from the broker with `expected`.
pub async fn expect_server_disconnect(events: &mut Events, expected: ReasonCode) {
    match next_event(events).await {
        Event::Disconnected {
            reason: DisconnectReason::Server { reason, .. },
        } if reason == expected => {}
        other => panic!("expected Disconnected({expected:?}) from the broker, got {other:?}"),
    }
}

/// The next event, which must be a message.
pub async fn next_message(events: &mut Events) -> Received {
    match next_event(events).await {
        Event::Message(m) => m,
        other => panic!("expected a message, got {other:?}"),
    }
}

/// Asserts that no event comes within `QUIET`.
pub async fn no_event(events: &mut Events) {
    if let Ok(event) = tokio::time::timeout(QUIET, events.next()).await {
        panic!("unexpected event {event:?}");
    }
}

/// Asserts the next thing the stream does is end.
/// After our own `disconnect()`: the stream reports it, then ends.
pub async fn expect_requested_close(events: &mut Events) {
    match next_event(events).await {
        Event::Disconnected {
            reason: DisconnectReason::Requested,
        } => {}
        other => panic!("expected Disconnected(Requested), got {other:?}"),
    }
    stream_ends(events).await;
}

pub async fn stream_ends(events: &mut Events) {
    match tokio::time::timeout(WAIT, events.next()).await {
        Ok(None) => {}
        Ok(Some(event)) => panic!("expected the end of the stream, got {event:?}"),
        Err(_) => panic!("stream did not end within {WAIT:?}"),
    }
}
