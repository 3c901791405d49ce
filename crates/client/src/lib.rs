//! # tern-client
//!
//! An async MQTT 3.1.1 and 5.0 client on tokio, built on `tern-codec`.
//!
//! [`Client::connect`] opens the connection and spawns one event-loop task
//! that owns the socket. It returns a [`Client`] handle (cheap to clone) for
//! publishing, subscribing and disconnecting, and an [`Events`] stream of
//! incoming messages and connection events.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let broker = tern_broker::Broker::start(tern_broker::Config {
//! #     bind: "127.0.0.1:0".parse()?,
//! #     persistence: false,
//! #     ..Default::default()
//! # }).await?;
//! # let port = broker.local_addr().port();
//! use tern_client::{Client, ConnectOptions, Event, Message, QoS, ReasonCode};
//!
//! let (client, mut events, _connack) = Client::connect(ConnectOptions::new("127.0.0.1", port)).await?;
//! client.subscribe("greetings/#", QoS::AtMostOnce).await?;
//! client.publish(Message::new("greetings/world", "hello", QoS::AtMostOnce)).await?;
//! if let Some(Event::Message(m)) = events.next().await {
//!     println!("{}: {:?}", m.topic, m.payload);
//! }
//! client.disconnect(ReasonCode::Success).await?;
//! # broker.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! Modules, each one concept:
//! - `options`: [`ConnectOptions`], [`Will`], [`Reconnect`], [`Message`], and
//!   how they become CONNECT and PUBLISH packets.
//! - `client`: the [`Client`] handle, which sends commands to the loop.
//! - `event_loop`: the task owning the socket: select loop, keep-alive,
//!   reconnect with backoff.
//! - `connection`: one socket: handshake, framing, topic aliases, keep-alive clock.
//! - `transport`: the byte stream under it: TCP, or TLS ([`TlsOptions`]).
//! - `session`: state that outlives a connection: packet ids, in-flight
//!   QoS 1/2 messages, queued publishes, subscriptions.
//! - `event`: [`Event`], [`Events`] and the bounded queue between them.
//! - `error`: [`Error`], [`DisconnectReason`], [`describe`].
//! - `packet_log`: one line per packet for the debug log.
//!
//! Every packet sent and received is logged at `debug` level with target
//! `tern_client`, one line each as mosquitto_pub's `-d` prints it (payloads as
//! lengths only): `RUST_LOG=tern_client=debug`.

#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

mod client;
mod connection;
mod error;
mod event;
mod event_loop;
mod options;
mod packet_log;
mod session;
mod transport;

pub use client::{Client, PublishHandle};
pub use error::{DisconnectReason, Error, describe};
pub use event::{Event, Events, Received};
pub use options::{ConnectOptions, Message, Reconnect, Will};
pub use tern_codec::{
    ConnAck, ProtocolVersion, PublishProperties, QoS, ReasonCode, RetainHandling, SubAck,
    SubscribeProperties, SubscriptionOptions, UnsubAck, UserProperty, WillProperties,
};
pub use transport::TlsOptions;
