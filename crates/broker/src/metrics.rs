//! Broker-wide counters, published under `$SYS/broker/...` by [`crate::sys`].
//!
//! Plain relaxed atomics: they are statistics, read together only for display,
//! so no ordering between them is needed and no lock is taken on the hot path.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters updated by connection tasks.
#[derive(Debug, Default)]
pub struct Metrics {
    pub clients_connected: AtomicU64,
    /// Every MQTT packet received / sent (Mosquitto's `messages/received|sent`).
    pub packets_received: AtomicU64,
    pub packets_sent: AtomicU64,
    pub publish_received: AtomicU64,
    pub publish_sent: AtomicU64,
    /// Messages dropped: queue full, too large for the client, or expired.
    pub publish_dropped: AtomicU64,
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    /// Sessions removed because their client stayed away past their expiry
    /// (Mosquitto's `clients/expired`).
    pub sessions_expired: AtomicU64,
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
}
