//! # tern-broker
//!
//! The Tern MQTT broker as a library: `Broker::start(config)` is all a caller
//! needs. Its errors are typed: [`StartError`] says which part of a start
//! failed ([`ConfigError`], [`AuthError`], [`TlsError`], [`BindError`],
//! [`StoreError`]), [`ReloadError`] which file a reload could not use; every
//! message is one line naming the file or address involved. The modules follow one PUBLISH through the broker:
//!
//! - `server`: starts the listeners and the `$SYS` task, shuts everything down.
//! - `listener`: one accept loop per configured listener (tcp, tls, ws,
//!   wss); TLS (rustls) and WebSocket handshakes, certificate reload.
//! - `connection`: the connection task — reads and decodes packets
//!   (with `tern-codec`), runs the handlers, writes batched output.
//! - `handler`: one file per packet kind: `connect`, `publish`, `ack`,
//!   `subscribe`, `unsubscribe`, `disconnect`.
//! - `router`: from a published message to every matching session's queue.
//! - `topic_tree`: the subscription index (a trie by topic level).
//! - `retained`: retained messages (a trie by topic level).
//! - `session`: per-client state that outlives connections: subscriptions,
//!   queue, in-flight QoS 1/2 messages, packet ids.
//! - `registry`: session lifecycle — attach, takeover, detach, expiry, will delay.
//! - `state`: the shared state every task holds, and its lock rules.
//! - `sys`: `$SYS/broker/...` statistics. `metrics`: the counters behind them.
//! - `limits`: resource limits (connections, rates, subscriptions, topic
//!   levels): their decisions and `$SYS` counters.
//! - `auth`: passwords (who may connect) and the ACL (which topics they
//!   may use), reloadable.
//! - [`config`]: options and defaults. `error`: protocol violations and reason codes.
//!
//! See `docs/architecture.md` for the whole flow.

mod auth;
mod bridge;
mod client_state;
mod cluster;
pub mod config;
mod connection;
mod delayed;
mod error;
mod handler;
mod http;
mod level_map;
mod limits;
mod listener;
mod lock;
mod log_throttle;
mod message;
mod metrics;
mod monitor;
mod post;
mod recover;
mod registry;
mod retained;
mod router;
pub mod seams;
mod server;
mod session;
mod state;
mod store;
mod sys;
mod topic_tree;
mod webhook;

#[cfg(test)]
mod test_rng;

// The public API: the broker, its configuration and errors, the seams a
// cluster plugs into (and the message type they carry), and what the `tern`
// binary's `passwd` and `store salvage` commands use.
pub use auth::{AuthError, password};
pub use cluster::ClusterError;
pub use config::{Config, ConfigError};
pub use http::HttpError;
pub use http::backup::{HEADERS as BACKUP_HEADERS, counts as backup_counts};
pub use listener::{BindError, TlsError, TlsProblem};
pub use message::Message;
pub use server::{Broker, BrokerHandle, ReloadError, StartError};
pub use store::{Backup, StoreError, salvage, verify as verify_backup};

/// Internals the crate's own integration tests and benchmarks look at: not
/// part of the API, and may change without notice.
#[doc(hidden)]
pub mod testing {
    pub use crate::auth::guard::{FIRST_DELAY, FREE_FAILURES};
    pub use crate::cluster::handover::key as session_key;
    pub use crate::connection::ConnInfo;
    pub use crate::limits::Counters;
    pub use crate::listener::TlsAcceptor;
    pub use crate::listener::tls::common_name;
    pub use crate::metrics::Metrics;
    pub use crate::state::BrokerState;
    pub use crate::store::crash_point::CrashPoint;
    pub use crate::store::engine::{DATA_FORMAT, data_format, mark_data_format};
    pub use crate::store::records::{Kept, decode_mirror};
    pub use crate::topic_tree::{Matched, TopicTree};

    use std::sync::Arc;

    /// Every numeric `$SYS/broker/...` figure of `broker` now, by topic.
    pub fn sys_figures(broker: &crate::BrokerHandle) -> Vec<(&'static str, u64)> {
        crate::sys::figures(broker.state(), broker.parker())
    }

    /// Starts a single node whose store loses every change after `crash`'s
    /// point (see `store::crash_point`).
    pub async fn start_crashing(
        config: crate::Config,
        crash: Arc<CrashPoint>,
    ) -> Result<crate::BrokerHandle, crate::StartError> {
        let seams = crate::seams::Seams::single_node();
        crate::Broker::start_crashing(config, seams, Some(crash)).await
    }
}
