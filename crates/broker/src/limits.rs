//! Resource limits: every `max_*` decision and its `$SYS` counter in one
//! place. The connection task and the handlers call in here at their hooks.
//!
//! | limit | where | what the client sees | counter below `$SYS/broker/limits/` |
//! |---|---|---|---|
//! | `max_connections`, listener `max_connections` | CONNECT | CONNACK 0x97 / 3.1.1: 3 | `connections/refused` |
//! | `max_connection_rate` (per IP) | CONNECT | CONNACK 0x9F / 3.1.1: 3 | `connection_rate/refused` |
//! | `max_subscriptions_per_client` | SUBSCRIBE | SUBACK 0x97 / 0x80 for that filter | `subscriptions/refused` |
//! | `max_topic_levels` | PUBLISH | PUBACK/PUBREC 0x90, not routed / 3.1.1: dropped | `topic_levels/refused` |
//! | | SUBSCRIBE | SUBACK 0x8F / 0x80 for that filter | `topic_levels/refused` |
//! | | CONNECT (will topic) | CONNACK 0x90 / 3.1.1: 3 | `topic_levels/refused` |
//! | `max_publish_rate` | PUBLISH | DISCONNECT 0x96, closed / 3.1.1: closed | `publish_rate/disconnected` |
//! | `max_packet_size` | any packet | DISCONNECT 0x95, closed / 3.1.1: closed | `packet_size/refused` |
//! | `max_connect_size` | CONNECT (fixed header) | CONNACK 0x95 / 3.1.1: closed | `packet_size/refused` |
//! | `max_connecting_bytes` | reads before CONNECT ([`ConnectBytes`]) | closed | `connecting_bytes/refused` |
//! | `receive_maximum` | QoS 2 PUBLISH | DISCONNECT 0x93, closed / 3.1.1: closed | `receive_maximum/disconnected` |
//! | `max_retained_*` | retained PUBLISH | PUBACK/PUBREC 0x97, not routed / 3.1.1: dropped | `retained/refused` |
//! | `max_delayed_messages` | `$delayed/...` PUBLISH | PUBACK/PUBREC 0x97, not scheduled / 3.1.1: dropped | `delayed/refused` |
//! | `max_queued_messages`, `max_queued_bytes` | routing | nothing (the message is dropped for that session only) | `queue/dropped` |
//!
//! Every limit is off at 0, the default of all but `max_subscriptions_per_client`
//! (10,000: see `Config`). Off, a limit costs nothing on the data path: the
//! per-client state ([`ClientLimits`]) is only allocated when
//! `max_publish_rate` or `max_topic_levels` is set, and the one check per PUBLISH is whether that
//! box exists. The subscription cap needs no box: it counts the session's
//! subscriptions, on SUBSCRIBE. Live connections are counted in any case (two atomic
//! operations per connection, none per packet).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tern_codec::{Connect, DecodeError, ReasonCode};
use tokio::time::Instant;

use crate::config::Config;
use crate::error::ProtocolViolation;
use crate::lock::{Mutex, rank};
use crate::retained::{Quotas, RetainedMessages};

/// How many IP addresses the connection-rate table tracks within one second.
/// At the cap, connections from addresses not yet in the table are refused
/// (0x9F) until the table's entries age out, within two seconds: a flood
/// from more addresses than this is throttled as a whole instead of growing
/// the table. About 4 MiB at the cap (two generations).
pub const RATE_TABLE_CAP: usize = 65_536;

/// One second: the window of both rate limits, and their burst.
const SECOND: Duration = Duration::from_secs(1);

/// The limits in force and their counters; one per broker, in `BrokerState`.
#[derive(Debug)]
pub struct Limits {
    /// Live connections (accepted CONNECTs not yet ended), over all listeners.
    connections: AtomicUsize,
    /// Live connections per listener, indexed like `config.listeners`.
    per_listener: Box<[AtomicUsize]>,
    /// 0 = no limit, for the total and per listener.
    max_connections: usize,
    listener_max: Box<[usize]>,
    /// `max_connection_rate`: one token bucket per IP address.
    connection_rate: Option<(Bucket, Mutex<RateTable, { rank::RATE_TABLE }>)>,
    /// `max_publish_rate` as a token bucket.
    publish_rate: Option<Bucket>,
    max_topic_levels: usize,
    max_subscriptions: usize,
    /// Whether clients get a [`ClientLimits`].
    per_client: bool,
    /// Bytes held for connections that have not finished CONNECT, past
    /// each one's free [`FREE_CONNECT_BYTES`] (see [`ConnectBytes`]).
    connecting: Arc<Connecting>,
    max_connecting_bytes: usize,
    max_connect_size: usize,
    /// `max_retained_*`; `None` if all are 0.
    retained: Option<Quotas>,
    pub counters: Counters,
}

/// How often each limit was hit, for `$SYS/broker/limits/...`.
#[derive(Debug, Default)]
pub struct Counters {
    pub connections_refused: AtomicU64,
    pub connection_rate_refused: AtomicU64,
    pub subscriptions_refused: AtomicU64,
    pub topic_levels_refused: AtomicU64,
    pub publish_rate_disconnected: AtomicU64,
    pub packet_size_refused: AtomicU64,
    pub receive_maximum_disconnected: AtomicU64,
    pub queue_dropped: AtomicU64,
    pub retained_refused: AtomicU64,
    /// `$delayed/...` publishes refused at `max_delayed_messages`.
    pub delayed_refused: AtomicU64,
}

/// A token bucket of `rate` tokens a second holding at most one second's
/// worth, kept as the time its next token is due (the generic cell rate
/// algorithm): one `Instant` per bucket, no refill arithmetic.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Time one token takes to come back: a second / rate.
    interval: Duration,
    /// How far ahead of now the due time may run: a full bucket's worth
    /// minus one token, so `rate` calls at once pass and the next does not.
    tolerance: Duration,
}

impl Bucket {
    fn new(rate: u32) -> Option<Bucket> {
        let interval = SECOND.checked_div(rate)?;
        Some(Bucket {
            interval,
            tolerance: interval * (rate - 1),
        })
    }

    /// Takes a token at `now` if there is one; `due` is the bucket's state.
    fn take(self, due: &mut Instant, now: Instant) -> bool {
        let start = (*due).max(now);
        if start > now + self.tolerance {
            return false;
        }
        *due = start + self.interval;
        true
    }
}

/// Per-IP buckets in two generations of at most a second each: an address
/// not seen for a whole generation has a full bucket again (a bucket's due
/// time runs at most a second ahead), so dropping the older generation
/// forgets nothing that matters. Lookups move entries from the older
/// generation to the current one. Memory: at most two × [`RATE_TABLE_CAP`].
#[derive(Debug)]
struct RateTable {
    current: HashMap<IpAddr, Instant>,
    previous: HashMap<IpAddr, Instant>,
    /// When `current` was started.
    since: Instant,
}

impl RateTable {
    /// Whether `ip` may connect at `now`.
    fn allow(&mut self, ip: IpAddr, bucket: Bucket, now: Instant) -> bool {
        if now >= self.since + SECOND {
            self.previous = if now >= self.since + 2 * SECOND {
                self.current.clear();
                HashMap::new()
            } else {
                std::mem::take(&mut self.current)
            };
            self.since = now;
        }
        let due = match self.current.get_mut(&ip) {
            Some(due) => due,
            None => {
                let due = self.previous.remove(&ip).unwrap_or(now);
                if self.current.len() >= RATE_TABLE_CAP {
                    return false;
                }
                self.current.entry(ip).or_insert(due)
            }
        };
        bucket.take(due, now)
    }
}

/// Limit state of one connection, in `ClientState::limits`: created only when a
/// per-client limit (publish rate, subscriptions, topic levels) is set.
#[derive(Debug)]
pub struct ClientLimits {
    /// For the refusal logs (`ClientState` does not keep the address).
    pub peer: SocketAddr,
    /// The publish-rate bucket (see [`Bucket`]).
    publish_due: Instant,
}

impl Limits {
    /// The limits `config` sets; `config.listeners` must be filled in.
    pub fn new(config: &Config) -> Limits {
        let listener_max: Box<[usize]> =
            config.listeners.iter().map(|l| l.max_connections).collect();
        let publish_rate = Bucket::new(config.max_publish_rate);
        let connection_rate = Bucket::new(config.max_connection_rate).map(|bucket| {
            let table = RateTable {
                current: HashMap::new(),
                previous: HashMap::new(),
                since: Instant::now(),
            };
            (bucket, Mutex::new(table))
        });
        Limits {
            connections: AtomicUsize::new(0),
            per_listener: listener_max.iter().map(|_| AtomicUsize::new(0)).collect(),
            max_connections: config.max_connections,
            listener_max,
            connection_rate,
            publish_rate,
            max_topic_levels: config.max_topic_levels,
            max_subscriptions: config.max_subscriptions_per_client,
            per_client: publish_rate.is_some() || config.max_topic_levels > 0,
            connecting: Arc::default(),
            max_connecting_bytes: config.max_connecting_bytes,
            max_connect_size: config.max_connect_size as usize,
            retained: retained_quotas(config),
            counters: Counters::default(),
        }
    }

    /// The largest CONNECT accepted: `max_connect_size`, or `max_packet_size`
    /// if that is smaller.
    pub fn max_connect_size(&self, max_packet_size: u32) -> usize {
        self.max_connect_size.min(max_packet_size as usize)
    }

    /// A new connection's account of what it makes the broker hold until
    /// its CONNECT is accepted.
    pub fn connect_bytes(&self, peer: SocketAddr) -> ConnectBytes {
        ConnectBytes {
            peer,
            totals: self.connecting.clone(),
            max_total: self.max_connecting_bytes,
            max_own: self.max_connect_size.saturating_add(CONNECT_SLACK),
            held: AtomicUsize::new(0),
            charged: AtomicUsize::new(0),
            done: AtomicBool::new(false),
        }
    }

    /// Bytes held now for connections that have not finished CONNECT,
    /// past each one's first 4 KiB.
    pub fn connecting_bytes(&self) -> usize {
        self.connecting.bytes.load(Ordering::Relaxed)
    }

    /// Checks a CONNECT before anything else looks at it: the connection
    /// rate of its address (every attempt counts, refused ones too), and the
    /// will topic's levels. `Err`: the CONNACK reason refusing it.
    pub fn check_connect(&self, connect: &Connect, peer: SocketAddr) -> Result<(), ReasonCode> {
        if let Some((bucket, table)) = &self.connection_rate {
            let ip = peer.ip().to_canonical();
            let allowed = table.lock().allow(ip, *bucket, Instant::now());
            if !allowed {
                count(&self.counters.connection_rate_refused);
                return Err(ReasonCode::ConnectionRateExceeded);
            }
        }
        // The will is published under its topic like any PUBLISH. 0x90 is
        // CONNACK's "the Will Topic Name ... is not accepted by this Server".
        if let Some(will) = &connect.will
            && self.too_deep(&will.topic)
        {
            count(&self.counters.topic_levels_refused);
            return Err(ReasonCode::TopicNameInvalid);
        }
        Ok(())
    }

    /// Live connections on each listener, indexed like `config.listeners`.
    pub fn connections_per_listener(&self) -> impl Iterator<Item = usize> + '_ {
        self.per_listener.iter().map(|c| c.load(Ordering::Relaxed))
    }

    /// Takes a connection slot on `listener` and in the total, or refuses
    /// with Quota exceeded (3.1.1: Server unavailable, by the encoder). The
    /// slot is held until [`Limits::release_connection`], when the
    /// connection ends (parking and resuming keep it).
    pub fn reserve_connection(&self, listener: usize) -> Result<(), ReasonCode> {
        let slot = self.per_listener.get(listener);
        let listener_max = self.listener_max.get(listener).copied().unwrap_or(0);
        if let Some(slot) = slot
            && !take_slot(slot, listener_max)
        {
            count(&self.counters.connections_refused);
            return Err(ReasonCode::QuotaExceeded);
        }
        if !take_slot(&self.connections, self.max_connections) {
            if let Some(slot) = slot {
                slot.fetch_sub(1, Ordering::Relaxed);
            }
            count(&self.counters.connections_refused);
            return Err(ReasonCode::QuotaExceeded);
        }
        Ok(())
    }

    /// Gives back the slot [`Limits::reserve_connection`] took.
    pub fn release_connection(&self, listener: u32) {
        let index = usize::try_from(listener).ok();
        if let Some(slot) = index.and_then(|i| self.per_listener.get(i)) {
            slot.fetch_sub(1, Ordering::Relaxed);
        }
        self.connections.fetch_sub(1, Ordering::Relaxed);
    }

    /// The per-client state for a new connection, if a per-client limit is set.
    pub fn client_limits(&self, peer: SocketAddr) -> Option<ClientLimits> {
        self.per_client.then(|| ClientLimits {
            peer,
            publish_due: Instant::now(),
        })
    }

    /// Counts a protocol violation that is a limit; false if it is none
    /// (the caller then logs it as a violation).
    pub fn count_violation(&self, violation: &ProtocolViolation) -> bool {
        let counter = match violation {
            ProtocolViolation::Decode(DecodeError::PacketTooLarge { .. }) => {
                &self.counters.packet_size_refused
            }
            ProtocolViolation::ReceiveMaximumExceeded => {
                &self.counters.receive_maximum_disconnected
            }
            _ => return false,
        };
        count(counter);
        true
    }

    /// The counters, by topic below `$SYS/broker/`.
    pub fn snapshot(&self) -> [(&'static str, u64); 11] {
        let c = &self.counters;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        [
            ("limits/connections/refused", get(&c.connections_refused)),
            (
                "limits/connection_rate/refused",
                get(&c.connection_rate_refused),
            ),
            (
                "limits/subscriptions/refused",
                get(&c.subscriptions_refused),
            ),
            ("limits/topic_levels/refused", get(&c.topic_levels_refused)),
            (
                "limits/publish_rate/disconnected",
                get(&c.publish_rate_disconnected),
            ),
            ("limits/packet_size/refused", get(&c.packet_size_refused)),
            (
                "limits/receive_maximum/disconnected",
                get(&c.receive_maximum_disconnected),
            ),
            ("limits/queue/dropped", get(&c.queue_dropped)),
            ("limits/retained/refused", get(&c.retained_refused)),
            ("limits/delayed/refused", get(&c.delayed_refused)),
            (
                "limits/connecting_bytes/refused",
                get(&self.connecting.refused),
            ),
        ]
    }

    /// Whether a client may send another PUBLISH at `now`
    /// (`max_publish_rate`); counted if not (the caller closes the
    /// connection). `own`: the client's limit state, `None` when no
    /// per-client limit is set (then this is one test).
    #[inline]
    pub fn publish_allowed(&self, own: Option<&mut ClientLimits>, now: Instant) -> bool {
        let (Some(own), Some(bucket)) = (own, self.publish_rate) else {
            return true;
        };
        let allowed = bucket.take(&mut own.publish_due, now);
        if !allowed {
            count(&self.counters.publish_rate_disconnected);
        }
        allowed
    }

    /// Whether a PUBLISH to `topic` is refused for having too many levels
    /// (`max_topic_levels`); counted if so. The caller answers it and does
    /// not route it.
    pub fn topic_refused(&self, topic: &str) -> bool {
        let refused = self.too_deep(topic);
        if refused {
            count(&self.counters.topic_levels_refused);
        }
        refused
    }

    /// Whether a retained message of `size` bytes from `owner` to `topic`
    /// goes over a `max_retained_*` quota, given the retained messages
    /// held now; counted if so. Everything passes when no quota is set.
    /// Clearing a topic is never refused: callers ask only about messages
    /// that set one.
    pub fn retained_refused(
        &self,
        retained: &dyn RetainedMessages,
        topic: &str,
        size: usize,
        owner: Option<&Arc<str>>,
    ) -> bool {
        let Some(quotas) = self.retained else {
            return false;
        };
        let refused = !retained.admits(topic, size, owner, quotas);
        if refused {
            count(&self.counters.retained_refused);
        }
        refused
    }

    /// Whether a retained PUBLISH could be refused at all: a quota is set.
    pub fn has_retained_quotas(&self) -> bool {
        self.retained.is_some()
    }

    /// Checks one SUBSCRIBE filter (`inner`: without a `$share/group/`
    /// prefix) from a session that has `held` subscriptions, `replaces`
    /// whether it already has this filter (which may always be replaced).
    /// `Some`: the SUBACK reason refusing it and why, counted.
    pub fn subscription_refused(
        &self,
        inner: &str,
        held: usize,
        replaces: bool,
    ) -> Option<(ReasonCode, &'static str)> {
        let (reason, counter, why) = if self.too_deep(inner) {
            (
                ReasonCode::TopicFilterInvalid,
                &self.counters.topic_levels_refused,
                "too many topic levels",
            )
        } else if self.max_subscriptions != 0 && !replaces && held >= self.max_subscriptions {
            (
                ReasonCode::QuotaExceeded,
                &self.counters.subscriptions_refused,
                "subscription limit reached",
            )
        } else {
            return None;
        };
        count(counter);
        Some((reason, why))
    }

    /// Whether a topic name or filter has more levels than allowed.
    fn too_deep(&self, topic: &str) -> bool {
        self.max_topic_levels != 0
            && topic.len() >= self.max_topic_levels
            && topic.bytes().filter(|&b| b == b'/').count() >= self.max_topic_levels
    }
}

/// The retained quotas of `config`; `None` if none is set.
fn retained_quotas(config: &Config) -> Option<Quotas> {
    let quotas = Quotas {
        max_messages: config.max_retained_messages,
        max_bytes: config.max_retained_bytes,
        max_messages_per_user: config.max_retained_messages_per_user,
        max_bytes_per_user: config.max_retained_bytes_per_user,
    };
    let any = [
        quotas.max_messages,
        quotas.max_bytes,
        quotas.max_messages_per_user,
        quotas.max_bytes_per_user,
    ]
    .iter()
    .any(|&q| q > 0);
    any.then_some(quotas)
}

/// Bytes of each connection not charged to `max_connecting_bytes`: any
/// ordinary CONNECT (and WebSocket upgrade request) fits, so ordinary clients
/// get in however much others hold.
pub const FREE_CONNECT_BYTES: usize = 4 * 1024;

/// What one connection may hold beyond `max_connect_size` before CONNECT:
/// a WebSocket upgrade request and frame headers, the start of the packet
/// after CONNECT in the same read.
const CONNECT_SLACK: usize = 16 * 1024;

/// What one connection makes the broker hold before its CONNECT is accepted:
/// its read buffer or, for WebSocket, the bytes tungstenite read for it.
/// Beyond [`FREE_CONNECT_BYTES`] they count against `max_connecting_bytes`
/// for all such connections together; given back when CONNECT is accepted
/// ([`ConnectBytes::release`]) or the connection ends (drop).
/// Atomics only so a WebSocket stream may hold it (it is `Sync`); one task
/// uses it.
#[derive(Debug)]
pub struct ConnectBytes {
    peer: SocketAddr,
    totals: Arc<Connecting>,
    max_total: usize,
    max_own: usize,
    held: AtomicUsize,
    charged: AtomicUsize,
    done: AtomicBool,
}

impl ConnectBytes {
    /// Counts `n` more bytes held; false if that goes over this
    /// connection's share or over everyone's (the connection must close).
    pub fn hold(&self, n: usize) -> bool {
        if self.done.load(Ordering::Relaxed) {
            return true;
        }
        let held = self.held.fetch_add(n, Ordering::Relaxed) + n;
        let within = held <= self.max_own && {
            let due = held.saturating_sub(FREE_CONNECT_BYTES);
            let charge = due.saturating_sub(self.charged.load(Ordering::Relaxed));
            self.charged.fetch_add(charge, Ordering::Relaxed);
            let total = self.totals.bytes.fetch_add(charge, Ordering::Relaxed) + charge;
            charge == 0 || total <= self.max_total
        };
        if !within {
            count(&self.totals.refused);
            let peer = self.peer;
            crate::throttled!(info, "connecting bytes", %peer, held, "closing connection: it sent too much before its CONNECT was accepted (max_connect_size, max_connecting_bytes)");
        }
        within
    }

    /// CONNECT accepted: gives the bytes back; no more are counted.
    pub fn release(&self) {
        self.done.store(true, Ordering::Relaxed);
        let charged = self.charged.swap(0, Ordering::Relaxed);
        self.totals.bytes.fetch_sub(charged, Ordering::Relaxed);
    }
}

/// The bytes all connections not past CONNECT hold (beyond their free
/// share), and how many were closed for going over.
#[derive(Debug, Default)]
struct Connecting {
    bytes: AtomicUsize,
    refused: AtomicU64,
}

impl Drop for ConnectBytes {
    fn drop(&mut self) {
        self.release();
    }
}

/// Takes one of `max` slots (0: no limit); false if all are taken.
fn take_slot(counter: &AtomicUsize, max: usize) -> bool {
    if max == 0 {
        counter.fetch_add(1, Ordering::Relaxed);
        return true;
    }
    counter
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            (n < max).then_some(n + 1)
        })
        .is_ok()
}

/// Adds one to a counter.
fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_one_seconds_worth_then_refills() {
        let bucket = Bucket::new(4).unwrap();
        let start = Instant::now();
        let mut due = start;
        for _ in 0..4 {
            assert!(bucket.take(&mut due, start));
        }
        assert!(!bucket.take(&mut due, start));
        // A token comes back every 250 ms.
        let later = start + Duration::from_millis(250);
        assert!(bucket.take(&mut due, later));
        assert!(!bucket.take(&mut due, later));
        // Idle for a second: full again, and no more than full.
        let idle = later + Duration::from_secs(5);
        for _ in 0..4 {
            assert!(bucket.take(&mut due, idle));
        }
        assert!(!bucket.take(&mut due, idle));
        assert!(Bucket::new(0).is_none());
    }

    #[test]
    fn rate_table_is_per_address_and_bounded() {
        let bucket = Bucket::new(1).unwrap();
        let start = Instant::now();
        let mut table = RateTable {
            current: HashMap::new(),
            previous: HashMap::new(),
            since: start,
        };
        let a = IpAddr::from([10, 0, 0, 1]);
        assert!(table.allow(a, bucket, start));
        assert!(!table.allow(a, bucket, start));
        assert!(table.allow(IpAddr::from([10, 0, 0, 2]), bucket, start));
        // Seen in the previous generation: still remembered.
        let t1 = start + Duration::from_millis(1100);
        table.allow(IpAddr::from([10, 0, 0, 3]), bucket, t1);
        assert_eq!(table.previous.len(), 2);
        assert!(table.allow(a, bucket, t1));
        assert!(!table.allow(a, bucket, t1));
        // Two quiet seconds forget everything.
        let t3 = t1 + Duration::from_secs(2);
        assert!(table.allow(IpAddr::from([10, 0, 0, 4]), bucket, t3));
        assert_eq!(table.current.len() + table.previous.len(), 1);
        // At the cap, new addresses are refused, known ones still served.
        for i in 0..RATE_TABLE_CAP as u32 {
            table
                .current
                .insert(IpAddr::from(((i + 1) << 8).to_be_bytes()), t3);
        }
        assert!(!table.allow(IpAddr::from([192, 168, 0, 1]), bucket, t3));
        let known = IpAddr::from(0x100_u32.to_be_bytes());
        assert!(table.allow(known, bucket, t3));
    }

    #[test]
    fn topic_levels() {
        let config = Config {
            max_topic_levels: 3,
            ..Config::default()
        };
        let limits = Limits::new(&config);
        assert!(!limits.too_deep("a/b/c"));
        assert!(!limits.too_deep("a/+/#"));
        assert!(limits.too_deep("a/b/c/d"));
        assert!(limits.too_deep("///"));
        assert!(!Limits::new(&Config::default()).too_deep("a/b/c/d/e/f"));
    }

    #[test]
    fn a_deep_topic_is_refused_and_counted() {
        let limits = Limits::new(&Config {
            max_topic_levels: 2,
            ..Config::default()
        });
        assert!(!limits.topic_refused("a/b"));
        assert!(limits.topic_refused("a/b/c"));
        assert_eq!(
            limits.counters.topic_levels_refused.load(Ordering::Relaxed),
            1
        );
    }

    #[test]
    fn publish_rate_is_per_client_and_off_without_its_state() {
        let limits = Limits::new(&Config {
            max_publish_rate: 2,
            ..Config::default()
        });
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let mut own = limits
            .client_limits(peer)
            .expect("a rate makes client state");
        let mut other = limits.client_limits(peer).unwrap();
        let now = Instant::now();
        assert!(limits.publish_allowed(Some(&mut own), now));
        assert!(limits.publish_allowed(Some(&mut own), now));
        assert!(!limits.publish_allowed(Some(&mut own), now));
        assert!(limits.publish_allowed(Some(&mut other), now), "per client");
        assert!(limits.publish_allowed(None, now));
        let counted = &limits.counters.publish_rate_disconnected;
        assert_eq!(counted.load(Ordering::Relaxed), 1);
        assert!(limits.publish_allowed(Some(&mut own), now + SECOND));
        let off = Limits::new(&Config::default());
        assert!(off.client_limits(peer).is_none());
    }

    #[test]
    fn subscriptions_are_capped_but_a_held_filter_may_be_replaced() {
        let limits = Limits::new(&Config {
            max_subscriptions_per_client: 2,
            max_topic_levels: 3,
            ..Config::default()
        });
        assert_eq!(limits.subscription_refused("a/#", 1, false), None);
        let full = limits.subscription_refused("a/#", 2, false);
        assert_eq!(full.map(|r| r.0), Some(ReasonCode::QuotaExceeded));
        assert_eq!(limits.subscription_refused("a/#", 2, true), None);
        let deep = limits.subscription_refused("a/b/c/d", 0, false);
        assert_eq!(deep.map(|r| r.0), Some(ReasonCode::TopicFilterInvalid));
        let c = &limits.counters;
        assert_eq!(c.subscriptions_refused.load(Ordering::Relaxed), 1);
        assert_eq!(c.topic_levels_refused.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn retained_quotas_count_what_is_held_per_user() {
        use crate::retained::LocalRetained;
        let limits = Limits::new(&Config {
            max_retained_messages_per_user: 1,
            ..Config::default()
        });
        assert!(limits.has_retained_quotas());
        let retained = LocalRetained::new(None);
        let alice: Arc<str> = Arc::from("alice");
        let message = crate::message::Message::broker_retained("a".into(), "1".into());
        let size = message.size();
        assert!(!limits.retained_refused(&retained, "a", size, Some(&alice)));
        retained.set(&message, Some(&alice));
        assert!(
            !limits.retained_refused(&retained, "a", size, Some(&alice)),
            "replacing her own message"
        );
        assert!(limits.retained_refused(&retained, "b", size, Some(&alice)));
        assert!(!limits.retained_refused(&retained, "b", size, None));
        assert_eq!(limits.counters.retained_refused.load(Ordering::Relaxed), 1);
        assert!(!Limits::new(&Config::default()).has_retained_quotas());
    }

    #[test]
    fn connection_slots_per_listener_and_in_total() {
        let mut config = Config {
            max_connections: 3,
            ..Config::default()
        };
        config.listeners = config.effective_listeners();
        config.listeners.push(config.listeners[0].clone());
        config.listeners[0].max_connections = 1;
        let limits = Limits::new(&config);
        assert_eq!(limits.reserve_connection(0), Ok(()));
        assert_eq!(limits.reserve_connection(0), Err(ReasonCode::QuotaExceeded));
        assert_eq!(limits.reserve_connection(1), Ok(()));
        assert_eq!(limits.reserve_connection(1), Ok(()));
        assert_eq!(limits.reserve_connection(1), Err(ReasonCode::QuotaExceeded));
        // The refused total did not keep a listener slot.
        assert_eq!(limits.per_listener[1].load(Ordering::Relaxed), 2);
        limits.release_connection(0);
        assert_eq!(limits.reserve_connection(1), Ok(()));
        assert_eq!(
            limits.counters.connections_refused.load(Ordering::Relaxed),
            2
        );
    }
}
