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
    let uptime = format!("{} seconds", state.started.elapsed().as_secs());
    let figures = figures(state, parker).into_iter();
    [("version", VERSION.to_string()), ("uptime", uptime)]
        .into_iter()
        .chain(figures.map(|(topic, value)| (topic, value.to_string())))
        .collect()
}

/// Every numeric figure, by topic below `$SYS/broker/`: what `$SYS`
/// publishes and `/metrics` exposes (`http::prometheus`), read once.
pub fn figures(state: &BrokerState, parker: &Parker) -> Vec<(&'static str, u64)> {
    let m = &state.metrics;
    let get = Metrics::get;
    let connected = get(&m.clients_connected);
    let total = state.sessions().len() as u64;
    let own = [
        ("clients/connected", connected),
        ("clients/active", connected),
        ("clients/total", total),
        ("clients/parked", parker.parked_count() as u64),
        ("clients/disconnected", total.saturating_sub(connected)),
        ("clients/expired", get(&m.sessions_expired)),
        ("messages/received", get(&m.packets_received)),
        ("messages/sent", get(&m.packets_sent)),
        ("publish/messages/received", m.received_total()),
        ("publish/messages/sent", get(&m.publish_sent)),
        ("publish/messages/dropped", m.dropped_total()),
        ("bytes/received", get(&m.bytes_received)),
        ("bytes/sent", get(&m.bytes_sent)),
        ("subscriptions/count", state.tree().len() as u64),
        ("retained messages/count", state.retained.count() as u64),
        (
            "webhooks/delivered",
            get(&state.webhooks.counters.delivered),
        ),
        ("webhooks/failed", get(&state.webhooks.counters.failed)),
        ("webhooks/dropped", get(&state.webhooks.counters.dropped)),
    ];
    own.into_iter().chain(state.limits.snapshot()).collect()
}
