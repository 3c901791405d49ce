//! What a run counts: messages sent and received, lost, duplicated and
//! out-of-order ones, end-to-end latency, connections.
//!
//! Tasks count locally and add their counts to the shared [`Stats`] in
//! batches (per write, or every [`FLUSH_EVERY`] for subscribers), so the data
//! path touches no shared cache line per message. A message counts as
//! *measured* when its send time falls in the measurement window (after the
//! warm-up, before the end); warm-up traffic is counted in the totals only.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::sync::Notify;

use crate::bench::stamp::Stamp;

/// How often a subscriber adds its local counts to the shared ones.
pub const FLUSH_EVERY: Duration = Duration::from_millis(200);
/// Publishers beyond this index are counted but their order is not tracked.
const MAX_TRACKED_PUBLISHERS: usize = 1 << 16;

/// A latency histogram in nanoseconds: 100 ns to 60 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(100, 60_000_000_000, 3)
        .unwrap_or_else(|_| unreachable!("constant bounds are valid"))
}

/// Locks, ignoring poisoning: the data are plain counters.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Latency of the current second (all messages) and of the whole
/// measurement (measured messages only).
pub struct Latency {
    pub second: Histogram<u64>,
    pub measured: Histogram<u64>,
}

/// Counters shared by every task of a run.
pub struct Stats {
    /// Measurement window, in [`crate::bench::stamp::now_ns`] time.
    pub measure_start_ns: u64,
    /// Moved earlier on Ctrl-C.
    pub measure_end_ns: AtomicU64,
    pub sent: AtomicU64,
    pub sent_measured: AtomicU64,
    /// Deliveries the measured messages should have (publishers add each
    /// message's number of matching subscribers).
    pub expected: AtomicU64,
    /// PUBACK/PUBREC with a failure reason code.
    pub publish_refused: AtomicU64,
    /// Distinct messages received (duplicates not included).
    pub received: AtomicU64,
    pub received_measured: AtomicU64,
    /// Received while the measurement ran (by receive time): the delivered
    /// rate, whatever backlog drains afterwards.
    pub received_in_window: AtomicU64,
    pub duplicates: AtomicU64,
    pub out_of_order: AtomicU64,
    /// Payloads without a benchmark header.
    pub foreign: AtomicU64,
    /// When a measured message last arrived (drain stops once quiet).
    pub last_measured_rx_ns: AtomicU64,
    /// Times a publisher gave up waiting for its window to open.
    pub window_stalls: AtomicU64,
    /// Connections lost or closed by the broker during the run.
    pub connections_lost: AtomicU64,
    pub connected: AtomicU64,
    pub connect_failed: AtomicU64,
    pub latency: Mutex<Latency>,
    /// Time from starting TCP connect to CONNACK.
    pub connect_latency: Mutex<Histogram<u64>>,
    /// The first error a connection met, for the summary.
    pub first_error: Mutex<Option<String>>,
}

impl Stats {
    pub fn new(measure_start_ns: u64, measure_end_ns: u64) -> Self {
        Stats {
            measure_start_ns,
            measure_end_ns: AtomicU64::new(measure_end_ns),
            sent: AtomicU64::new(0),
            sent_measured: AtomicU64::new(0),
            expected: AtomicU64::new(0),
            publish_refused: AtomicU64::new(0),
            received: AtomicU64::new(0),
            received_measured: AtomicU64::new(0),
            received_in_window: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            out_of_order: AtomicU64::new(0),
            foreign: AtomicU64::new(0),
            last_measured_rx_ns: AtomicU64::new(0),
            window_stalls: AtomicU64::new(0),
            connections_lost: AtomicU64::new(0),
            connected: AtomicU64::new(0),
            connect_failed: AtomicU64::new(0),
            latency: Mutex::new(Latency {
                second: histogram(),
                measured: histogram(),
            }),
            connect_latency: Mutex::new(histogram()),
            first_error: Mutex::new(None),
        }
    }

    /// Whether a message sent at `sent_ns` is measured.
    pub fn measured(&self, sent_ns: u64) -> bool {
        sent_ns >= self.measure_start_ns && sent_ns < self.measure_end_ns.load(Relaxed)
    }

    /// Remembers the first error of any connection.
    pub fn error(&self, message: String) {
        let mut first = lock(&self.first_error);
        if first.is_none() {
            *first = Some(message);
        }
    }

    pub fn connect_done(&self, took: Duration) {
        self.connected.fetch_add(1, Relaxed);
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        lock(&self.connect_latency).saturating_record(ns);
    }
}

/// Per-publisher delivery progress, for the `--inflight` window: how many
/// deliveries (to any subscriber) its messages have had.
#[derive(Default)]
pub struct Progress {
    pub delivered: AtomicU64,
    pub notify: Notify,
}

/// How a message relates to those received before from the same publisher.
#[derive(Debug, PartialEq, Eq)]
enum Order {
    Next,
    Late,
    Duplicate,
}

/// Sequence numbers seen from one publisher: the highest, and which of the
/// 128 below it arrived (to tell a late message from a duplicate).
#[derive(Default, Clone, Copy)]
struct SeqState {
    seen: bool,
    max: u32,
    /// Bit k: `max - k` was received.
    recent: u128,
}

impl SeqState {
    fn observe(&mut self, seq: u32) -> Order {
        if !self.seen {
            *self = SeqState {
                seen: true,
                max: seq,
                recent: 1,
            };
            return Order::Next;
        }
        if seq > self.max {
            let shift = seq - self.max;
            self.recent = if shift >= 128 {
                0
            } else {
                self.recent << shift
            };
            self.recent |= 1;
            self.max = seq;
            return Order::Next;
        }
        let back = self.max - seq;
        if back < 128 {
            let bit = 1u128 << back;
            if self.recent & bit != 0 {
                return Order::Duplicate;
            }
            self.recent |= bit;
        }
        Order::Late
    }
}

/// A subscriber's local counts, added to [`Stats`] by [`Tally::flush`].
pub struct Tally {
    stats: Arc<Stats>,
    /// Publisher progress for the window, indexed from `first_index`.
    progress: Option<Arc<[Progress]>>,
    first_index: u32,
    pending_progress: Vec<u64>,
    touched: Vec<usize>,
    seqs: Vec<SeqState>,
    second: Histogram<u64>,
    measured_latency: Histogram<u64>,
    received: u64,
    received_measured: u64,
    received_in_window: u64,
    duplicates: u64,
    out_of_order: u64,
    foreign: u64,
    /// A measured message arrived in the current batch.
    batch_measured: bool,
    last_flush: Instant,
}

impl Tally {
    pub fn new(stats: Arc<Stats>, progress: Option<Arc<[Progress]>>, first_index: u32) -> Self {
        let publishers = progress.as_ref().map_or(0, |p| p.len());
        Tally {
            stats,
            progress,
            first_index,
            pending_progress: vec![0; publishers],
            touched: Vec::new(),
            seqs: Vec::new(),
            second: histogram(),
            measured_latency: histogram(),
            received: 0,
            received_measured: 0,
            received_in_window: 0,
            duplicates: 0,
            out_of_order: 0,
            foreign: 0,
            batch_measured: false,
            last_flush: Instant::now(),
        }
    }

    /// Counts one received payload; `now_ns` is when its read returned.
    pub fn message(&mut self, payload: &[u8], now_ns: u64) {
        let Some(stamp) = Stamp::read(payload, now_ns) else {
            self.foreign += 1;
            return;
        };
        let index = stamp.publisher as usize;
        if index < MAX_TRACKED_PUBLISHERS {
            if index >= self.seqs.len() {
                self.seqs.resize(index + 1, SeqState::default());
            }
            match self.seqs[index].observe(stamp.seq) {
                Order::Next => {}
                Order::Late => self.out_of_order += 1,
                Order::Duplicate => {
                    self.duplicates += 1;
                    return;
                }
            }
        }
        self.received += 1;
        if self.stats.measured(now_ns) {
            self.received_in_window += 1;
        }
        let latency = now_ns.saturating_sub(stamp.sent_ns);
        self.second.saturating_record(latency);
        if self.stats.measured(stamp.sent_ns) {
            self.received_measured += 1;
            self.batch_measured = true;
            self.measured_latency.saturating_record(latency);
        }
        if self.progress.is_some() {
            let local = stamp.publisher.wrapping_sub(self.first_index) as usize;
            if let Some(n) = self.pending_progress.get_mut(local) {
                if *n == 0 {
                    self.touched.push(local);
                }
                *n += 1;
            }
        }
    }

    /// After a batch of messages: tells waiting publishers, and adds the
    /// counts to the shared ones if it is time.
    pub fn end_batch(&mut self, now: Instant, now_ns: u64) {
        if let Some(progress) = &self.progress {
            for local in self.touched.drain(..) {
                let n = std::mem::take(&mut self.pending_progress[local]);
                if let Some(p) = progress.get(local) {
                    p.delivered.fetch_add(n, Relaxed);
                    p.notify.notify_one();
                }
            }
        }
        if std::mem::take(&mut self.batch_measured) {
            self.stats.last_measured_rx_ns.fetch_max(now_ns, Relaxed);
        }
        if now.duration_since(self.last_flush) >= FLUSH_EVERY {
            self.flush(now);
        }
    }

    /// Adds everything counted so far to the shared stats.
    pub fn flush(&mut self, now: Instant) {
        self.last_flush = now;
        let s = &self.stats;
        for (counter, local) in [
            (&s.received, &mut self.received),
            (&s.received_measured, &mut self.received_measured),
            (&s.received_in_window, &mut self.received_in_window),
            (&s.duplicates, &mut self.duplicates),
            (&s.out_of_order, &mut self.out_of_order),
            (&s.foreign, &mut self.foreign),
        ] {
            if *local > 0 {
                counter.fetch_add(std::mem::take(local), Relaxed);
            }
        }
        if self.second.is_empty() && self.measured_latency.is_empty() {
            return;
        }
        let mut latency = lock(&s.latency);
        // Same bounds on both sides: adding cannot fail.
        let _ = latency.second.add(&self.second);
        let _ = latency.measured.add(&self.measured_latency);
        drop(latency);
        self.second.reset();
        self.measured_latency.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_tracking_tells_late_from_duplicate() {
        let mut s = SeqState::default();
        assert_eq!(s.observe(0), Order::Next);
        assert_eq!(s.observe(1), Order::Next);
        assert_eq!(s.observe(3), Order::Next);
        assert_eq!(s.observe(2), Order::Late);
        assert_eq!(s.observe(2), Order::Duplicate);
        assert_eq!(s.observe(3), Order::Duplicate);
        assert_eq!(s.observe(1000), Order::Next);
        assert_eq!(s.observe(4), Order::Late, "too old to know: late");
        assert_eq!(s.observe(999), Order::Late);
        assert_eq!(s.observe(999), Order::Duplicate);
    }

    #[test]
    fn tally_counts_measured_messages_and_progress() {
        let now = crate::bench::stamp::now_ns();
        let stats = Arc::new(Stats::new(now - 1_000_000, now + 1_000_000_000));
        let progress: Arc<[Progress]> = (0..2).map(|_| Progress::default()).collect();
        let mut tally = Tally::new(stats.clone(), Some(progress.clone()), 10);
        let mut payload = [0u8; 16];
        for (publisher, seq, sent_ns) in [
            (10, 0, now - 2_000_000), // warm-up
            (10, 1, now - 500),
            (11, 0, now - 500),
            (11, 0, now - 500), // duplicate
        ] {
            Stamp {
                publisher,
                seq,
                sent_ns,
            }
            .write(&mut payload);
            tally.message(&payload, now);
        }
        tally.message(b"hello", now);
        tally.end_batch(Instant::now(), now);
        tally.flush(Instant::now());
        assert_eq!(stats.received.load(Relaxed), 3);
        assert_eq!(stats.received_measured.load(Relaxed), 2);
        assert_eq!(stats.duplicates.load(Relaxed), 1);
        assert_eq!(stats.foreign.load(Relaxed), 1);
        assert_eq!(progress[0].delivered.load(Relaxed), 2);
        assert_eq!(progress[1].delivered.load(Relaxed), 1);
        let latency = lock(&stats.latency);
        assert_eq!(latency.measured.len(), 2);
        assert_eq!(latency.second.len(), 3);
    }
}
