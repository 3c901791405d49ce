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
//! let options = ConnectOptions::new("127.0.0.1", port).client_id("greeter");
//! let (client, mut events, _connack) = Client::connect(options).await?;
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
//! For those who know rumqttc or paho: [`Client::subscribe`]`(filter, qos)`
//! with [`Client::subscribe_many`] for the full form; [`Events`] is a
//! `futures_core::Stream`; [`Client::publish`] waits for the
//! acknowledgement, while [`Client::try_publish`] and
//! [`Client::start_publish`] return a [`PublishHandle`] to await it later.
//! The crate's `examples/` folder has a sensor that publishes readings
//! (`cargo run -p tern-client --example sensor`) and a subscriber that keeps
//! its session across reconnects (`--example subscriber`).
//!
//! ## What can change without breaking you
//!
//! The crate's own structs are `#[non_exhaustive]`: [`ConnectOptions`],
//! [`Message`], [`Will`], [`Reconnect`] and [`TlsOptions`] are built with
//! their constructors and chained setters (their fields can be read and
//! changed in place), so a new option is not a breaking change. Its enums
//! [`Event`], [`Error`] and [`DisconnectReason`] are `#[non_exhaustive]` too:
//! a `match` on them needs a `_` arm.
//!
//! ## Codec types are part of this API
//!
//! The client speaks in the types of `tern-codec`, the packet model the
//! broker uses too, and re-exports every one its API hands out or takes:
//! [`QoS`], [`ReasonCode`], [`ProtocolVersion`], [`ConnAck`], [`SubAck`],
//! [`UnsubAck`], [`Received`] (a PUBLISH as decoded), [`SubscriptionOptions`]
//! and [`RetainHandling`], the MQTT 5 property structs, [`UserProperty`] and
//! [`ByteStr`] (the strings in them); likewise `bytes`' [`Bytes`] for
//! payloads. This is deliberate:
//! - they are MQTT's own vocabulary with no behaviour to hide: wrapping them
//!   would copy some twenty types field for field, and convert every
//!   received message, for nothing the caller could use (rumqttc hands out
//!   its codec's packets the same way);
//! - they are versioned with tern-client: a breaking change to a
//!   re-exported type is a breaking change of tern-client (the workspace
//!   gives its crates one version number). Name them through `tern_client::`
//!   and you never depend on `tern-codec` yourself, nor keep two versions
//!   in step;
//! - they grow the way the protocol does: [`QoS`], [`ReasonCode`],
//!   [`ProtocolVersion`] and [`RetainHandling`] are closed sets fixed by the
//!   MQTT specifications; the property structs and [`SubscriptionOptions`]
//!   implement `Default`, so build them with `..Default::default()` and a
//!   property added later does not break you.
//!
//! The rest of `tern-codec` (the other packets, encoding, decoding) is not
//! part of this API.
//!
//! ```
//! use tern_client::{
//!     AckProperties, ByteStr, Bytes, ConnAck, ConnAckProperties, PublishProperties, QoS,
//!     Received, SubAck, SubscriptionOptions,
//! };
//!
//! // What a message carries, by its re-exported names.
//! fn parts(m: &Received) -> (&ByteStr, &Bytes, QoS, &PublishProperties) {
//!     (&m.topic, &m.payload, m.qos, &m.properties)
//! }
//! fn assigned_id(connack: &ConnAck) -> Option<&ByteStr> {
//!     let properties: &ConnAckProperties = &connack.properties;
//!     properties.assigned_client_identifier.as_ref()
//! }
//! fn why_refused(suback: &SubAck) -> Option<&str> {
//!     let properties: &AckProperties = &suback.properties;
//!     properties.reason_string.as_deref()
//! }
//! // Options built so that a new field would not break this code.
//! let options = SubscriptionOptions { qos: QoS::AtLeastOnce, no_local: true, ..Default::default() };
//! assert!(!options.retain_as_published);
//! ```
//!
//! ## Modules
//!
//! Each one concept:
//! - `options`: [`ConnectOptions`], [`Will`], [`Reconnect`], [`Message`], and
//!   how they become CONNECT and PUBLISH packets.
//! - `client`: the [`Client`] handle, which sends commands to the loop, and
//!   the [`PublishHandle`] of a publish whose acknowledgement is awaited later.
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
// The codec types of the API, part of it by decision (see the crate docs):
// every one a signature or a public field names, and no others.
pub use bytes::Bytes;
pub use tern_codec::{
    AckProperties, ByteStr, ConnAck, ConnAckProperties, ProtocolVersion, PublishProperties, QoS,
    ReasonCode, RetainHandling, SubAck, SubscribeProperties, SubscriptionOptions, UnsubAck,
    UserProperty, WillProperties,
};
pub use transport::{Stream, TlsClient, TlsOptions, connect};
