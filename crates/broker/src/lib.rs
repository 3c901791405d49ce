//! # tern-broker
//!
//! The Tern MQTT broker as a library: `Broker::start(config)` is all a caller
//! needs. Its errors are typed: [`StartError`] says which part of a start
//! failed ([`ConfigError`], [`AuthError`], [`TlsError`], [`BindError`],
//! [`StoreError`]), [`ReloadError`] which file a reload could not use; every
//! message is one line naming the file or address involved. The modules follow one PUBLISH through the broker:
//!
//! - [`server`]: starts the listeners and the `$SYS` task, shuts everything down.
//! - [`listener`]: one accept loop per configured listener (tcp, tls, ws,
//!   wss); TLS (rustls) and WebSocket handshakes, certificate reload.
//! - [`connection`]: the connection task — reads and decodes packets
//!   (with `tern-codec`), runs the handlers, writes batched output.
//! - [`handler`]: one file per packet kind: `connect`, `publish`, `ack`,
//!   `subscribe`, `unsubscribe`, `disconnect`.
//! - [`router`]: from a published message to every matching session's queue.
//! - [`topic_tree`]: the subscription index (a trie by topic level).
//! - [`retained`]: retained messages (a trie by topic level).
//! - [`session`]: per-client state that outlives connections: subscriptions,
//!   queue, in-flight QoS 1/2 messages, packet ids.
//! - [`registry`]: session lifecycle — attach, takeover, detach, expiry, will delay.
//! - [`state`]: the shared state every task holds, and its lock rules.
//! - [`sys`]: `$SYS/broker/...` statistics. [`metrics`]: the counters behind them.
//! - [`limits`]: resource limits (connections, rates, subscriptions, topic
//!   levels): their decisions and `$SYS` counters.
//! - [`auth`]: passwords (who may connect) and the ACL (which topics they
//!   may use), reloadable.
//! - [`config`]: options and defaults. [`error`]: protocol violations and reason codes.
//!
//! See `docs/architecture.md` for the whole flow.

pub mod auth;
pub mod client_state;
pub mod config;
pub mod connection;
pub mod error;
pub mod handler;
pub mod limits;
pub mod listener;
pub mod log_throttle;
pub mod message;
pub mod metrics;
pub mod recover;
pub mod registry;
pub mod retained;
pub mod router;
pub mod server;
pub mod session;
pub mod state;
pub mod store;
pub mod sys;
pub mod topic_tree;

#[cfg(test)]
mod test_rng;

pub use auth::AuthError;
pub use config::{Config, ConfigError};
pub use listener::{BindError, TlsError, TlsProblem};
pub use server::{Broker, BrokerHandle, ReloadError, StartError};
pub use store::StoreError;
