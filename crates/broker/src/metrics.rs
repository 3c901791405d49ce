//! Broker-wide counters, published under `$SYS/broker/...` by [`crate::sys`]
//! and at `/metrics` by [`crate::http`].
//!
//! Plain relaxed atomics: they are statistics, read together only for display,
//! so no ordering between them is needed and no lock is taken on the hot path.

use std::sync::atomic::{AtomicU64, Ordering};

use tern_codec::QoS;

/// Counters updated by connection tasks.
#[derive(Debug, Default)]
pub struct Metrics {
    pub clients_connected: AtomicU64,
    /// Every MQTT packet received / sent (Mosquitto's `messages/received|sent`).
    pub packets_received: AtomicU64,
    pub packets_sent: AtomicU64,
    /// PUBLISH packets received, by QoS (0, 1, 2).
    pub publish_received: [AtomicU64; 3],
    pub publish_sent: AtomicU64,
    /// Messages dropped, by [`Dropped`] reason.
    pub dropped: [AtomicU64; Dropped::ALL.len()],
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    /// Sessions removed because their client stayed away past their expiry
    /// (Mosquitto's `clients/expired`).
    pub sessions_expired: AtomicU64,
}

/// Why a message did not reach a subscriber it matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// Over the session's `max_queued_messages` or `max_queued_bytes`.
    QueueFull,
    /// QoS 0 for a session whose client is away.
    Offline,
    /// Its Message Expiry Interval passed while it was queued.
    Expired,
    /// Larger than the client's Maximum Packet Size.
    TooLarge,
    /// A shared group none of whose members may read the topic, or whose
    /// last member here left while another node picked this one.
    NoMember,
    /// The queue towards the other cluster nodes was full.
    ClusterOutbox,
}

impl Dropped {
    /// Every reason, in the order of [`Metrics::dropped`].
    pub const ALL: [Dropped; 6] = [
        Dropped::QueueFull,
        Dropped::Offline,
        Dropped::Expired,
        Dropped::TooLarge,
        Dropped::NoMember,
        Dropped::ClusterOutbox,
    ];

    /// The `reason` label of `tern_messages_dropped_total`.
    pub fn label(self) -> &'static str {
        match self {
            Dropped::QueueFull => "queue_full",
            Dropped::Offline => "offline_qos0",
            Dropped::Expired => "expired",
            Dropped::TooLarge => "too_large",
            Dropped::NoMember => "no_member",
            Dropped::ClusterOutbox => "cluster_outbox",
        }
    }
}

impl Metrics {
    /// Adds `n` to `counter`.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads `counter`.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Counts a PUBLISH received at `qos`.
    pub fn received(&self, qos: QoS) {
        Metrics::add(&self.publish_received[qos as usize], 1);
    }

    /// Counts a message dropped for `why`.
    pub fn drop(&self, why: Dropped) {
        Metrics::add(&self.dropped[why as usize], 1);
    }

    /// PUBLISH packets received at any QoS (`$SYS/.../publish/messages/received`).
    pub fn received_total(&self) -> u64 {
        self.publish_received.iter().map(Metrics::get).sum()
    }

    /// Messages dropped for any reason (`$SYS/.../publish/messages/dropped`).
    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().map(Metrics::get).sum()
    }
}

/// A histogram with fixed bucket bounds, kept in atomics: one writer (or
/// many) observes, a scrape reads. Prometheus's cumulative buckets are
/// computed when read.
#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds, ascending (the `le` labels; `+Inf` is implied).
    pub bounds: &'static [f64],
    /// Observations per bucket (not cumulative); the last is above every bound.
    counts: Vec<AtomicU64>,
    /// The sum of the observations (an `f64`'s bits).
    sum: AtomicU64,
}

impl Histogram {
    /// A histogram over `bounds` (ascending).
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0f64.to_bits()),
        }
    }

    /// Records one observation.
    pub fn observe(&self, value: f64) {
        let bucket = self.bounds.partition_point(|&b| b < value);
        Metrics::add(&self.counts[bucket], 1);
        let add = |bits| Some((f64::from_bits(bits) + value).to_bits());
        let _ = self
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, add);
    }

    /// (cumulative count per bound and for `+Inf`, sum, count).
    pub fn read(&self) -> (Vec<u64>, f64, u64) {
        let mut total = 0;
        let cumulative = self
            .counts
            .iter()
            .map(|c| {
                total += Metrics::get(c);
                total
            })
            .collect();
        let sum = f64::from_bits(Metrics::get(&self.sum));
        (cumulative, sum, total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_counts_each_observation_in_its_bucket_cumulatively() {
        let h = Histogram::new(&[0.001, 0.01, 0.1]);
        for v in [0.0005, 0.001, 0.005, 0.05, 3.0] {
            h.observe(v);
        }
        let (buckets, sum, count) = h.read();
        // An observation equal to a bound is in that bound's bucket (le).
        assert_eq!(buckets, [2, 3, 4, 5]);
        assert_eq!(count, 5);
        assert!((sum - 3.0565).abs() < 1e-9, "{sum}");
    }

    #[test]
    fn drops_are_counted_by_reason_and_in_total() {
        let m = Metrics::default();
        m.drop(Dropped::QueueFull);
        m.drop(Dropped::QueueFull);
        m.drop(Dropped::TooLarge);
        assert_eq!(Metrics::get(&m.dropped[Dropped::QueueFull as usize]), 2);
        assert_eq!(m.dropped_total(), 3);
        for (i, why) in Dropped::ALL.into_iter().enumerate() {
            assert_eq!(why as usize, i, "ALL is in declaration order");
        }
    }
}
