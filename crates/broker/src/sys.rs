//! `$SYS/broker/...`: broker statistics as retained messages, under the topic
//! names Mosquitto uses so existing dashboards work unchanged; in a cluster,
//! the cluster's totals under `$SYS/cluster/...` (`cluster::stats`).
//!
//! One task publishes them every `sys_interval_secs` through the ordinary
//! router (so they are retained and reach `$SYS/#` subscribers), and on the
//! same tick drops expired retained messages.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::connection::park::Parker;
use crate::message::Message;
use crate::metrics::Metrics;
use crate::router;
use crate::state::BrokerState;

/// The broker's version string, as in `$SYS/broker/version`.
pub const VERSION: &str = concat!("tern ", env!("CARGO_PKG_VERSION"));

/// Starts the `$SYS` task, unless the interval is 0.
pub fn spawn(state: &Arc<BrokerState>, parker: &Arc<Parker>) {
    let interval_secs = state.config.sys_interval_secs;
    if interval_secs == 0 {
        return;
    }
    let (state2, parker) = (state.clone(), parker.clone());
    state.tasks.spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_secs(interval_secs));
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = state2.shutdown.cancelled() => return,
            }
            // Expired retained messages go from memory and from the store.
            state2.retained.purge_expired(Instant::now());
            publish_all(&state2, &parker);
        }
    });
}

/// Publishes every `$SYS` topic once: this node's below `$SYS/broker/`,
/// and in a cluster the totals below `$SYS/cluster/`.
pub fn publish_all(state: &BrokerState, parker: &Parker) {
    let own = snapshot(state, parker);
    let interval = Duration::from_secs(state.config.sys_interval_secs);
    let cluster = state.fabric.statistics(&own, interval);
    let own = own
        .into_iter()
        .map(|(t, v)| (format!("$SYS/broker/{t}"), v));
    let cluster = cluster
        .into_iter()
        .map(|(t, v)| (format!("$SYS/cluster/{t}"), v));
    for (topic, value) in own.chain(cluster) {
        router::publish(state, Message::broker_retained(topic, value), None);
    }
}

/// The current values, by topic below `$SYS/broker/`.
fn snapshot(state: &BrokerState, parker: &Parker) -> Vec<(&'static str, String)> {
    let m = &state.metrics;
    let connected = Metrics::get(&m.clients_connected);
    let total = state.sessions().len() as u64;
    vec![
        ("version", VERSION.to_string()),
        (
            "uptime",
            format!("{} seconds", state.started.elapsed().as_secs()),
        ),
        ("clients/connected", connected.to_string()),
        ("clients/active", connected.to_string()),
        ("clients/total", total.to_string()),
        ("clients/parked", parker.parked_count().to_string()),
        (
            "clients/disconnected",
            total.saturating_sub(connected).to_string(),
        ),
        (
            "clients/expired",
            Metrics::get(&m.sessions_expired).to_string(),
        ),
        (
            "messages/received",
            Metrics::get(&m.packets_received).to_string(),
        ),
        ("messages/sent", Metrics::get(&m.packets_sent).to_string()),
        (
            "publish/messages/received",
            Metrics::get(&m.publish_received).to_string(),
        ),
        (
            "publish/messages/sent",
            Metrics::get(&m.publish_sent).to_string(),
        ),
        (
            "publish/messages/dropped",
            Metrics::get(&m.publish_dropped).to_string(),
        ),
        (
            "bytes/received",
            Metrics::get(&m.bytes_received).to_string(),
        ),
        ("bytes/sent", Metrics::get(&m.bytes_sent).to_string()),
        ("subscriptions/count", state.tree().len().to_string()),
        (
            "retained messages/count",
            state.retained.count().to_string(),
        ),
    ]
    .into_iter()
    .chain(
        state
            .limits
            .snapshot()
            .map(|(topic, value)| (topic, value.to_string())),
    )
    .collect()
}
