//! `/metrics`: the broker's figures in Prometheus's text exposition format
//! (version 0.0.4), named by Prometheus's conventions: `tern_` prefix,
//! `_total` for counters, base units (`_seconds`, `_bytes`).
//!
//! Every `$SYS/broker/...` figure has its metric here (docs/operations.md
//! lists the pairs), read from the same counters at the moment of the
//! scrape; per-QoS and per-reason families add up to `$SYS`'s totals. The
//! format is three kinds of line, written here rather than through a
//! client library's registry: the values already live in the broker's own
//! atomics, and are only read.

use std::fmt::Write as _;

use crate::connection::park::Parker;
use crate::metrics::{Dropped, Histogram, Metrics};
use crate::state::BrokerState;
use crate::sys::{self, VERSION};

/// The exposition being written.
struct Exposition(String);

impl Exposition {
    /// Starts a metric family.
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// One sample; `labels` are (name, value) pairs.
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (label, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{label}=\"{}\"", escape(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, "counter", help);
        self.sample(name, &[], value);
    }

    fn gauge(&mut self, name: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, "gauge", help);
        self.sample(name, &[], value);
    }

    fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        self.family(name, "histogram", help);
        let (cumulative, sum, count) = h.read();
        let bucket = format!("{name}_bucket");
        for (bound, n) in h.bounds.iter().zip(&cumulative) {
            self.sample(&bucket, &[("le", &bound.to_string())], n);
        }
        self.sample(&bucket, &[("le", "+Inf")], count);
        self.sample(&format!("{name}_sum"), &[], sum);
        self.sample(&format!("{name}_count"), &[], count);
    }
}

/// A label value as the format wants it: `\`, `"` and newlines escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The metric of each `$SYS/broker/...` figure that has one of its own:
/// (name, type, help). The others are `clients/active` (the same as
/// `clients/connected`), the labelled families below (whose sums are
/// `publish/messages/received` and `.../dropped`) and `limits/...`.
fn plain(topic: &str) -> Option<(&'static str, &'static str, &'static str)> {
    Some(match topic {
        "clients/connected" => ("tern_connections", "gauge", "Clients connected now."),
        "clients/total" => (
            "tern_sessions",
            "gauge",
            "Sessions, with and without a connected client.",
        ),
        "clients/parked" => (
            "tern_connections_parked",
            "gauge",
            "Idle connections parked off the runtime.",
        ),
        "clients/disconnected" => (
            "tern_sessions_disconnected",
            "gauge",
            "Persistent sessions whose client is away.",
        ),
        "clients/expired" => (
            "tern_sessions_expired_total",
            "counter",
            "Sessions removed because their client stayed away past their expiry.",
        ),
        "messages/received" => (
            "tern_packets_received_total",
            "counter",
            "MQTT packets received.",
        ),
        "messages/sent" => ("tern_packets_sent_total", "counter", "MQTT packets sent."),
        "publish/messages/sent" => (
            "tern_messages_sent_total",
            "counter",
            "PUBLISH packets sent.",
        ),
        "bytes/received" => (
            "tern_bytes_received_total",
            "counter",
            "Bytes received from clients.",
        ),
        "bytes/sent" => ("tern_bytes_sent_total", "counter", "Bytes sent to clients."),
        "subscriptions/count" => (
            "tern_subscriptions",
            "gauge",
            "Subscriptions of all sessions.",
        ),
        "retained messages/count" => ("tern_retained_messages", "gauge", "Retained messages."),
        "webhooks/delivered" => (
            "tern_webhook_events_delivered_total",
            "counter",
            "Events a webhook endpoint took (2xx).",
        ),
        "webhooks/failed" => (
            "tern_webhook_events_failed_total",
            "counter",
            "Events given up after every try failed or the endpoint refused them.",
        ),
        "webhooks/dropped" => (
            "tern_webhook_events_dropped_total",
            "counter",
            "Events dropped because a webhook's queue was full.",
        ),
        _ => return None,
    })
}

/// Every figure, as of now.
pub fn render(state: &BrokerState, parker: &Parker) -> String {
    let mut out = Exposition(String::with_capacity(8 * 1024));
    out.family("tern_info", "gauge", "The broker's version (always 1).");
    out.sample("tern_info", &[("version", VERSION)], 1);
    out.gauge(
        "tern_uptime_seconds",
        "Seconds since the broker started.",
        state.started.elapsed().as_secs(),
    );
    let mut limits = Vec::new();
    for (topic, value) in sys::figures(state, parker) {
        if let Some((name, kind, help)) = plain(topic) {
            out.family(name, kind, help);
            out.sample(name, &[], value);
        } else if let Some(limit) = topic.strip_prefix("limits/") {
            limits.push((limit.split_once('/').unwrap_or((limit, "")), value));
        }
    }
    out.family(
        "tern_limits_total",
        "counter",
        "Times a configured limit was hit, by limit and what it did.",
    );
    for ((limit, outcome), value) in limits {
        let labels = [("limit", limit), ("outcome", outcome)];
        out.sample("tern_limits_total", &labels, value);
    }
    listeners(&mut out, state);
    queues(&mut out, state);
    messages(&mut out, &state.metrics);
    out.counter(
        "tern_auth_failures_total",
        "Logins (MQTT and HTTP) refused for a wrong password or token.",
        Metrics::get(&state.auth.failures),
    );
    if let Some(store) = &state.store {
        let store = store.metrics();
        out.histogram(
            "tern_store_commit_seconds",
            "Time each store commit took, fsync included.",
            &store.commit_seconds,
        );
        out.histogram(
            "tern_store_commit_ops",
            "Changes each store commit wrote (group commit: many clients' per fsync).",
            &store.commit_ops,
        );
    }
    process(&mut out, state);
    out.0
}

/// Connections by listener.
fn listeners(out: &mut Exposition, state: &BrokerState) {
    out.family(
        "tern_listener_connections",
        "gauge",
        "Clients connected now, by listener.",
    );
    let listeners = state.config.listeners.iter();
    for (listener, n) in listeners.zip(state.limits.connections_per_listener()) {
        let name = listener.label();
        out.sample("tern_listener_connections", &[("listener", &name)], n);
    }
}

/// What waits in the sessions: queued and in flight, in all and in the
/// deepest queue (the figure that shows one stuck subscriber). Read here, at
/// the scrape, one session lock at a time, so the message path keeps no
/// counter of its own: a delivery costs the same whether anyone watches.
fn queues(out: &mut Exposition, state: &BrokerState) {
    let (mut queued, mut in_flight, mut deepest) = (0, 0, 0);
    for session in &state.session_handles() {
        let st = session.lock();
        queued += st.pending_len();
        in_flight += st.inflight_len();
        deepest = deepest.max(st.pending_len());
    }
    out.gauge(
        "tern_queued_messages",
        "Messages queued for sessions and not yet sent.",
        queued,
    );
    out.gauge(
        "tern_inflight_messages",
        "QoS 1 and 2 messages sent to clients and not yet acknowledged.",
        in_flight,
    );
    out.gauge(
        "tern_session_queue_depth_max",
        "Messages queued for the session with the most.",
        deepest,
    );
}

/// PUBLISH packets received by QoS, and dropped by reason.
fn messages(out: &mut Exposition, m: &Metrics) {
    out.family(
        "tern_messages_received_total",
        "counter",
        "PUBLISH packets received, by QoS.",
    );
    for (qos, counter) in ["0", "1", "2"].into_iter().zip(&m.publish_received) {
        out.sample(
            "tern_messages_received_total",
            &[("qos", qos)],
            Metrics::get(counter),
        );
    }
    out.family(
        "tern_messages_dropped_total",
        "counter",
        "Messages that did not reach a subscriber they matched, by reason.",
    );
    for (why, counter) in Dropped::ALL.into_iter().zip(&m.dropped) {
        out.sample(
            "tern_messages_dropped_total",
            &[("reason", why.label())],
            Metrics::get(counter),
        );
    }
}

/// The standard process metrics, from `/proc/self`.
fn process(out: &mut Exposition, state: &BrokerState) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is 3rd,
    // utime 14th, stime 15th of the whole line.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    let ticks = clock_ticks();
    if let (Some(utime), Some(stime)) = (field(14), field(15)) {
        out.gauge(
            "process_cpu_seconds_total",
            "CPU time the broker process used, user and system.",
            (utime + stime) as f64 / ticks,
        );
    }
    if let Some(rss) = resident_bytes() {
        out.gauge(
            "process_resident_memory_bytes",
            "Resident memory of the broker process.",
            rss,
        );
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        out.gauge(
            "process_open_fds",
            "Open file descriptors (sockets included).",
            fds.count(),
        );
    }
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|now| now.as_secs_f64() - state.started.elapsed().as_secs_f64())
        .unwrap_or(0.0);
    out.gauge(
        "process_start_time_seconds",
        "When the broker started, in seconds since the Unix epoch.",
        started.floor(),
    );
}

/// The process's resident memory, from `/proc/self/statm` (its second
/// field, in pages).
pub(super) fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).unwrap_or(4096)
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_written_with_escaped_labels() {
        let mut out = Exposition(String::new());
        out.family("x_total", "counter", "Help.");
        out.sample("x_total", &[("a", "q\"uo\\te\nd"), ("b", "2")], 7);
        out.sample("x_total", &[], 1.5);
        assert_eq!(
            out.0,
            "# HELP x_total Help.\n# TYPE x_total counter\nx_total{a=\"q\\\"uo\\\\te\\nd\",b=\"2\"} 7\nx_total 1.5\n"
        );
    }
}
