//! `$SYS/cluster/…`: the cluster's totals, beside each node's own
//! `$SYS/broker/…`.
//!
//! On every `$SYS` tick a node publishes its numeric figures on the
//! subject `<cluster>.sys` and, from the last figures every other node sent,
//! returns the totals for its `$SYS` task to publish. A node that has not
//! been heard for three of its own intervals has left the totals (stopped,
//! or cut off from NATS).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::lock::{Mutex, rank};

use super::next_or_stop;

/// The header naming the node whose figures a message holds.
pub(super) const NODE_HEADER: &str = "Tern-Node";

/// Figures that are the same on every node, not summed: each node holds
/// every retained message.
const SHARED: &[&str] = &["retained messages/count"];

/// The other nodes' last figures.
#[derive(Default)]
pub struct Peers {
    nodes: Mutex<HashMap<String, Report>, { rank::FABRIC }>,
}

/// One node's figures, and until when they count.
struct Report {
    figures: Vec<(String, u64)>,
    until: Instant,
}

impl Peers {
    /// Takes a node's figures as [`encode`] wrote them; false if they are
    /// not readable.
    pub fn receive(&self, node: &str, payload: &[u8], now: Instant) -> bool {
        let Some((interval, figures)) = decode(payload) else {
            return false;
        };
        let until = now + interval * 3;
        let report = Report { figures, until };
        self.nodes.lock().insert(node.to_owned(), report);
        true
    }

    /// The cluster's totals with this node's `own` figures: `nodes`, the
    /// number of nodes counted, and every numeric figure summed over them
    /// (those in [`SHARED`] as this node has them).
    pub fn totals(&self, own: &[(&'static str, String)], now: Instant) -> Vec<(String, String)> {
        let mut nodes = self.nodes.lock();
        nodes.retain(|_, report| report.until > now);
        let mut totals: Vec<(String, u64)> = numeric(own).collect();
        for report in nodes.values() {
            for (topic, value) in &report.figures {
                if SHARED.contains(&topic.as_str()) {
                    continue;
                }
                match totals.iter_mut().find(|(t, _)| t == topic) {
                    Some((_, total)) => *total += value,
                    None => totals.push((topic.clone(), *value)),
                }
            }
        }
        let count = nodes.len() + 1;
        std::iter::once(("nodes".to_owned(), count.to_string()))
            .chain(totals.into_iter().map(|(t, v)| (t, v.to_string())))
            .collect()
    }
}

/// The numeric figures of a `$SYS` snapshot.
fn numeric<'a>(figures: &'a [(&'static str, String)]) -> impl Iterator<Item = (String, u64)> + 'a {
    figures
        .iter()
        .filter_map(|(topic, value)| Some(((*topic).to_owned(), value.parse().ok()?)))
}

/// A node's numeric figures as sent: a first line with its `$SYS`
/// interval in seconds, then one `topic<TAB>value` line per figure.
pub fn encode(figures: &[(&'static str, String)], interval: Duration) -> Bytes {
    let mut text = format!("{}\n", interval.as_secs());
    for (topic, value) in numeric(figures) {
        text.push_str(&format!("{topic}\t{value}\n"));
    }
    Bytes::from(text)
}

/// The interval and figures of an [`encode`]d payload.
fn decode(payload: &[u8]) -> Option<(Duration, Vec<(String, u64)>)> {
    let text = std::str::from_utf8(payload).ok()?;
    let mut lines = text.lines();
    let interval = Duration::from_secs(lines.next()?.parse().ok()?);
    let figures = lines
        .map(|line| {
            let (topic, value) = line.split_once('\t')?;
            Some((topic.to_owned(), value.parse().ok()?))
        })
        .collect::<Option<Vec<_>>>()?;
    Some((interval, figures))
}

/// The subject nodes publish their `$SYS` figures on.
pub(super) fn stats_subject(cluster: &str) -> String {
    format!("{cluster}.sys")
}

/// Keeps the other nodes' last `$SYS` figures.
pub(super) async fn watch_stats(
    mut stats: async_nats::Subscriber,
    peers: Arc<Peers>,
    stop: CancellationToken,
) {
    while let Some(report) = next_or_stop(&mut stats, &stop).await {
        let node = report.headers.as_ref().and_then(|h| h.get(NODE_HEADER));
        let read =
            node.is_some_and(|node| peers.receive(node.as_str(), &report.payload, Instant::now()));
        if !read {
            crate::throttled!(
                warn,
                "cluster stats unreadable",
                "cluster: another node's $SYS figures could not be read; left out of $SYS/cluster"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(connected: u64) -> Vec<(&'static str, String)> {
        vec![
            ("version", "tern 0".to_owned()),
            ("uptime", "5 seconds".to_owned()),
            ("clients/connected", connected.to_string()),
            ("retained messages/count", "7".to_owned()),
        ]
    }

    fn total<'a>(totals: &'a [(String, String)], topic: &str) -> Option<&'a str> {
        let found = totals.iter().find(|(t, _)| t == topic);
        found.map(|(_, v)| v.as_str())
    }

    #[test]
    fn totals_sum_the_nodes_heard_lately() {
        let peers = Peers::default();
        let now = Instant::now();
        let second = Duration::from_secs(1);
        assert!(peers.receive("b", &encode(&figures(2), second), now));
        assert!(peers.receive("c", &encode(&figures(3), 2 * second), now));
        let totals = peers.totals(&figures(1), now);
        assert_eq!(total(&totals, "nodes"), Some("3"));
        assert_eq!(total(&totals, "clients/connected"), Some("6"));
        assert_eq!(total(&totals, "retained messages/count"), Some("7"));
        assert_eq!(total(&totals, "uptime"), None, "not a number");
        // b is gone after three of its intervals, c after three of its own.
        let totals = peers.totals(&figures(1), now + 4 * second);
        assert_eq!(total(&totals, "nodes"), Some("2"));
        assert_eq!(total(&totals, "clients/connected"), Some("4"));
        let totals = peers.totals(&figures(1), now + 7 * second);
        assert_eq!(total(&totals, "nodes"), Some("1"));
    }

    #[test]
    fn unreadable_figures_are_refused() {
        let peers = Peers::default();
        let now = Instant::now();
        assert!(!peers.receive("b", b"", now));
        assert!(!peers.receive("b", b"x\n", now));
        assert!(!peers.receive("b", b"1\nclients/connected\tmany\n", now));
        assert!(!peers.receive("b", &[0xff, b'\n'], now));
        assert_eq!(total(&peers.totals(&[], now), "nodes"), Some("1"));
    }
}
