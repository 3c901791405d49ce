//! What a run prints: a live line each second on stderr, and the summary,
//! as text or as JSON (for scripts such as `scripts/bench-compare.sh`).

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::bench::stats::{Stats, lock};

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy)]
pub struct Percentiles {
    pub count: u64,
    pub min: f64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

impl Percentiles {
    /// `None` for an empty histogram.
    pub fn of(h: &Histogram<u64>) -> Option<Self> {
        if h.is_empty() {
            return None;
        }
        Some(Percentiles {
            count: h.len(),
            min: us(h.min()),
            mean: h.mean() / 1000.0,
            p50: us(h.value_at_quantile(0.50)),
            p90: us(h.value_at_quantile(0.90)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
        })
    }

    fn json(&self) -> Value {
        let r = |v: f64| (v * 10.0).round() / 10.0;
        json!({
            "count": self.count,
            "min": r(self.min),
            "mean": r(self.mean),
            "p50": r(self.p50),
            "p90": r(self.p90),
            "p99": r(self.p99),
            "p999": r(self.p999),
            "max": r(self.max),
        })
    }

    fn text(&self) -> String {
        format!(
            "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (mean {}, {} samples)",
            time(self.p50),
            time(self.p90),
            time(self.p99),
            time(self.p999),
            time(self.max),
            time(self.mean),
            self.count
        )
    }
}

/// Microseconds, shortly: "850 µs", "12.3 ms", "1.50 s".
pub fn time(us: f64) -> String {
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else if us < 1_000_000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{:.2} s", us / 1_000_000.0)
    }
}

/// A count per second, shortly: "950/s", "41.2k/s", "1.25M/s".
pub fn rate(per_sec: f64) -> String {
    if per_sec < 10_000.0 {
        format!("{per_sec:.0}/s")
    } else if per_sec < 10_000_000.0 {
        format!("{:.1}k/s", per_sec / 1000.0)
    } else {
        format!("{:.2}M/s", per_sec / 1_000_000.0)
    }
}

/// The once-a-second line on stderr.
pub struct Live {
    last_sent: u64,
    last_received: u64,
    last_connected: u64,
    last_elapsed: Duration,
}

impl Live {
    pub fn new() -> Self {
        Live {
            last_sent: 0,
            last_received: 0,
            last_connected: 0,
            last_elapsed: Duration::ZERO,
        }
    }

    /// The line for a message scenario; takes the current second's p99.
    pub fn messages(&mut self, elapsed: Duration, stats: &Stats, tag: &str) -> String {
        let sent = stats.sent.load(Relaxed);
        let received = stats.received.load(Relaxed);
        let p99 = {
            let mut latency = lock(&stats.latency);
            let p99 = (!latency.second.is_empty()).then(|| latency.second.value_at_quantile(0.99));
            latency.second.reset();
            p99
        };
        let secs = (elapsed - self.last_elapsed).as_secs_f64().max(1e-3);
        let line = format!(
            "[{:6.1}s] sent {sent} ({})  recv {received} ({})  p99 {}{}",
            elapsed.as_secs_f64(),
            rate((sent - self.last_sent) as f64 / secs),
            rate((received - self.last_received) as f64 / secs),
            p99.map_or_else(|| "-".to_string(), |ns| time(us(ns))),
            tag
        );
        self.last_sent = sent;
        self.last_received = received;
        self.last_elapsed = elapsed;
        line
    }

    /// The line for the conn scenario.
    pub fn connections(&mut self, elapsed: Duration, stats: &Stats, target: usize) -> String {
        let connected = stats.connected.load(Relaxed);
        let secs = (elapsed - self.last_elapsed).as_secs_f64().max(1e-3);
        let line = format!(
            "[{:6.1}s] connected {connected}/{target} ({})  failed {}  lost {}",
            elapsed.as_secs_f64(),
            rate((connected - self.last_connected) as f64 / secs),
            stats.connect_failed.load(Relaxed),
            stats.connections_lost.load(Relaxed),
        );
        self.last_connected = connected;
        self.last_elapsed = elapsed;
        line
    }
}

/// How the run was set up, for the summary.
pub struct Setup {
    pub scenario: &'static str,
    pub broker: String,
    pub version: &'static str,
    pub qos: u8,
    pub payload: usize,
    pub publishers: usize,
    pub subscribers: usize,
    pub connections: usize,
    pub rate: Option<f64>,
    pub inflight: Option<u64>,
    pub warmup: Duration,
    pub source_addresses: usize,
    /// Sent and received are compared (both sides in this process).
    pub knows_expected: bool,
}

/// The end of a run.
pub struct Summary {
    pub setup: Setup,
    /// Seconds actually measured (shorter when interrupted).
    pub measured: Duration,
    pub interrupted: bool,
    pub sent: u64,
    pub sent_total: u64,
    pub received: u64,
    pub received_total: u64,
    /// Received during the measurement, by receive time.
    pub received_in_window: u64,
    pub expected: Option<u64>,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub foreign: u64,
    pub latency: Option<Percentiles>,
    pub connected: u64,
    pub connect_failed: u64,
    pub connections_lost: u64,
    pub connect_latency: Option<Percentiles>,
    /// Connections per second while connecting (conn scenario).
    pub connect_rate: Option<f64>,
    pub window_stalls: u64,
    pub publish_refused: u64,
    pub cpu: Option<Duration>,
    pub error: Option<String>,
}

impl Summary {
    /// Reads the final counts.
    pub fn collect(setup: Setup, stats: &Stats, measured: Duration, interrupted: bool) -> Self {
        let load = |c: &std::sync::atomic::AtomicU64| c.load(Relaxed);
        Summary {
            expected: setup.knows_expected.then(|| load(&stats.expected)),
            setup,
            measured,
            interrupted,
            sent: load(&stats.sent_measured),
            sent_total: load(&stats.sent),
            received: load(&stats.received_measured),
            received_total: load(&stats.received),
            received_in_window: load(&stats.received_in_window),
            duplicates: load(&stats.duplicates),
            out_of_order: load(&stats.out_of_order),
            foreign: load(&stats.foreign),
            latency: Percentiles::of(&lock(&stats.latency).measured),
            connected: load(&stats.connected),
            connect_failed: load(&stats.connect_failed),
            connections_lost: load(&stats.connections_lost),
            connect_latency: Percentiles::of(&lock(&stats.connect_latency)),
            connect_rate: None,
            window_stalls: load(&stats.window_stalls),
            publish_refused: load(&stats.publish_refused),
            cpu: None,
            error: lock(&stats.first_error).clone(),
        }
    }

    fn lost(&self) -> Option<u64> {
        self.expected.map(|e| e.saturating_sub(self.received))
    }

    fn per_sec(&self, n: u64) -> f64 {
        let secs = self.measured.as_secs_f64();
        if secs > 0.0 { n as f64 / secs } else { 0.0 }
    }

    fn has_publishers(&self) -> bool {
        self.setup.publishers > 0
    }

    fn has_subscribers(&self) -> bool {
        self.setup.subscribers > 0
    }

    pub fn json(&self) -> Value {
        let s = &self.setup;
        let lost = self.lost();
        let some_if = |cond: bool, v: Value| if cond { v } else { Value::Null };
        json!({
            "scenario": s.scenario,
            "broker": s.broker,
            "mqtt_version": s.version,
            "qos": s.qos,
            "payload_bytes": s.payload,
            "publishers": s.publishers,
            "subscribers": s.subscribers,
            "connections": s.connections,
            "rate_per_publisher": s.rate,
            "inflight": s.inflight,
            "warmup_s": s.warmup.as_secs_f64(),
            "duration_s": self.measured.as_secs_f64(),
            "interrupted": self.interrupted,
            "sent": some_if(self.has_publishers(), json!(self.sent)),
            "received": some_if(self.has_subscribers(), json!(self.received)),
            "expected": self.expected,
            "lost": lost,
            "lost_percent": lost.zip(self.expected).map(|(l, e)| {
                if e == 0 { 0.0 } else { (l as f64 * 100_000.0 / e as f64).round() / 1000.0 }
            }),
            "duplicates": some_if(self.has_subscribers(), json!(self.duplicates)),
            "out_of_order": some_if(self.has_subscribers(), json!(self.out_of_order)),
            "sent_total": some_if(self.has_publishers(), json!(self.sent_total)),
            "received_total": some_if(self.has_subscribers(), json!(self.received_total)),
            "foreign": some_if(self.has_subscribers(), json!(self.foreign)),
            "sent_per_sec": some_if(self.has_publishers(), json!(self.per_sec(self.sent).round())),
            "delivered_per_sec": some_if(
                self.has_subscribers(),
                json!(self.per_sec(self.received_in_window).round())
            ),
            "latency_us": self.latency.map(|p| p.json()),
            "connect": {
                "target": s.connections,
                "connected": self.connected,
                "failed": self.connect_failed,
                "lost": self.connections_lost,
                "per_sec": self.connect_rate.map(f64::round),
                "latency_us": self.connect_latency.map(|p| p.json()),
            },
            "source_addresses": s.source_addresses,
            "window_stalls": self.window_stalls,
            "publish_refused": self.publish_refused,
            "bench_cpu_s": self.cpu.map(|c| (c.as_secs_f64() * 1000.0).round() / 1000.0),
            "error": self.error,
        })
    }

    pub fn text(&self) -> String {
        let s = &self.setup;
        let mut out = String::new();
        let mut line = |l: String| {
            out.push_str(&l);
            out.push('\n');
        };
        let shape = match (s.publishers, s.subscribers) {
            (0, 0) => format!("{} connections", s.connections),
            (p, 0) => format!("{p} publisher(s)"),
            (0, n) => format!("{n} subscriber(s)"),
            (p, n) => format!("{p} publisher(s) -> {n} subscriber(s)"),
        };
        line(format!(
            "tern bench {}: {shape}, QoS {}, {} B payload, MQTT {}, {}",
            s.scenario, s.qos, s.payload, s.version, s.broker
        ));
        let how = match (s.rate, s.inflight) {
            (Some(r), _) => format!("{r} msg/s per publisher"),
            (None, Some(w)) => format!("unlimited rate, window {w}"),
            (None, None) => "unlimited rate".into(),
        };
        line(format!(
            "measured    {:.1} s after {:.1} s warm-up{}{}",
            self.measured.as_secs_f64(),
            s.warmup.as_secs_f64(),
            if s.publishers > 0 {
                format!(", {how}")
            } else {
                String::new()
            },
            if self.interrupted {
                " (interrupted)"
            } else {
                ""
            }
        ));
        if self.has_publishers() {
            line(format!(
                "sent        {} msg  ({})",
                self.sent,
                rate(self.per_sec(self.sent))
            ));
        }
        if self.has_subscribers() {
            line(format!(
                "received    {} msg  ({} delivered)",
                self.received,
                rate(self.per_sec(self.received_in_window))
            ));
        }
        if let (Some(expected), Some(lost)) = (self.expected, self.lost()) {
            let pct = if expected == 0 {
                0.0
            } else {
                lost as f64 * 100.0 / expected as f64
            };
            line(format!(
                "lost        {lost} of {expected} expected ({pct:.3} %)  duplicates {}  out of order {}",
                self.duplicates, self.out_of_order
            ));
        } else if self.has_subscribers() {
            line(format!(
                "order       duplicates {}  out of order {}",
                self.duplicates, self.out_of_order
            ));
        }
        if let Some(l) = &self.latency {
            line(format!("latency     {}", l.text()));
        }
        let mut conns = format!(
            "connections {} connected, {} failed, {} lost",
            self.connected, self.connect_failed, self.connections_lost
        );
        if let Some(r) = self.connect_rate {
            conns.push_str(&format!(", {}", rate(r)));
        }
        line(conns);
        if let Some(l) = &self.connect_latency {
            line(format!("connect     {}", l.text()));
        }
        if self.window_stalls > 0 {
            line(format!(
                "window      {} stalls (publishers gave up waiting {} s for deliveries)",
                self.window_stalls,
                crate::bench::worker::WINDOW_PATIENCE.as_secs()
            ));
        }
        if self.publish_refused > 0 {
            line(format!("refused     {} messages", self.publish_refused));
        }
        if self.foreign > 0 {
            line(format!(
                "foreign     {} messages without a bench header (not counted)",
                self.foreign
            ));
        }
        if let Some(cpu) = self.cpu {
            line(format!("bench cpu   {:.2} s", cpu.as_secs_f64()));
        }
        if let Some(e) = &self.error {
            line(format!("first error {e}"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_units() {
        assert_eq!(time(850.4), "850 µs");
        assert_eq!(time(12_345.0), "12.35 ms");
        assert_eq!(time(1_500_000.0), "1.50 s");
        assert_eq!(rate(950.0), "950/s");
        assert_eq!(rate(41_234.0), "41.2k/s");
        assert_eq!(rate(12_500_000.0), "12.50M/s");
    }
}
