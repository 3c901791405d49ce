//! The topic monitor: what the dashboard's live topic tree shows (each
//! topic's latest value, message count, retained flag and, for numbers, its
//! recent values), kept only while a dashboard page is open.
//!
//! Why it is built like this: it sits on the message path. With no page
//! open, a message costs one relaxed atomic load ([`Monitor::note`]
//! returns at once). With one open, a message costs one keyed hash of its
//! topic and one of [`SHARDS`] mutexes, held to add one to a count and copy
//! the payload's first [`VALUE_BYTES`] into the topic's own buffer (reused:
//! no allocation, and no hold on the connection's read buffer): no shared
//! counter, no clock read. Pages look at most [`SAMPLES_PER_SEC`] times a
//! second, and numbers are parsed only then, from the value of each topic
//! that changed. The map is bounded ([`MAX_TOPICS`]); topics beyond it are
//! counted, not kept. When the last page closes, it is emptied.

use std::collections::HashMap;
use std::collections::hash_map::{Entry, RandomState};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use bytes::Bytes;
use tern_codec::ByteStr;

use crate::lock::{Mutex, rank};
use crate::message::Message;

/// Mutexes the topics are spread over, each on cache lines of its own, so
/// that connection tasks on different threads rarely meet on one (or on a
/// line of one: two cores writing one line slow both).
const SHARDS: usize = 256;
/// Topics kept at most (a few hundred bytes each, with their values).
pub const MAX_TOPICS: usize = 20_000;
/// How often a page's stream takes what changed.
pub const SAMPLES_PER_SEC: u64 = 2;
/// Numeric values kept per topic, one per sample at most (a minute).
pub const POINTS: usize = 120;
/// The bytes of a payload kept as a topic's value (what the page shows
/// and where numbers are looked for).
pub const VALUE_BYTES: usize = 1024;

/// One topic as the dashboard shows it.
#[derive(Debug, Clone)]
struct Topic {
    name: ByteStr,
    count: u64,
    /// The first `VALUE_BYTES` of the latest payload, and its length.
    value: Vec<u8>,
    bytes: usize,
    retained: bool,
    /// When the latest message came, in ms on the monitor's clock (to the
    /// last look).
    at_ms: u64,
    /// The shard's sequence number at the latest change: a page sends the
    /// topics changed since the sequence it last saw.
    seq: u64,
    /// A message came since the last look: its value is a plot point.
    fresh: bool,
    /// Recent numeric values (ms, value), sampled.
    points: Vec<(u64, f64)>,
}

/// A shard alone on its cache lines.
#[repr(align(128))]
struct Padded(Mutex<Shard, { rank::MONITOR }>);

/// A shard: topics by the keyed hash of their name.
#[derive(Default)]
struct Shard {
    topics: HashMap<u64, Topic, BuildHasherDefault<Prehashed>>,
    seq: u64,
}

/// The keys are hashes already (SipHash with this process's random key):
/// hashing them again would be waste.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// A topic changed since a page's last look.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Changed {
    pub topic: String,
    pub count: u64,
    /// The latest sampled payload as text (UTF-8, at most 256 characters),
    /// or `null` for binary payloads.
    pub value: Option<String>,
    pub bytes: usize,
    pub retained: bool,
    pub at_ms: u64,
    /// The numeric values sampled since the page's last look.
    pub points: Vec<(u64, f64)>,
}

/// See the module documentation.
pub struct Monitor {
    /// Open pages; the monitor records only while this is above 0.
    watchers: AtomicUsize,
    shards: Vec<Padded>,
    /// The key of the topic hashes (random per process: topic names come
    /// from clients, and must not be able to pile onto one bucket).
    keys: RandomState,
    topics: AtomicUsize,
    /// Messages whose topic was not kept (over `MAX_TOPICS`).
    untracked: AtomicU64,
    /// The clock of the last look, in ms since `started`: what a value's
    /// time is taken from, so that a message reads no clock.
    now_ms: AtomicU64,
    started: Instant,
}

impl Default for Monitor {
    fn default() -> Self {
        Monitor {
            watchers: AtomicUsize::new(0),
            shards: (0..SHARDS)
                .map(|_| Padded(Mutex::new(Shard::default())))
                .collect(),
            keys: RandomState::new(),
            topics: AtomicUsize::new(0),
            untracked: AtomicU64::new(0),
            now_ms: AtomicU64::new(0),
            started: Instant::now(),
        }
    }
}

/// A page's hold on the monitor: recording goes on while one exists.
pub struct Watch {
    monitor: Arc<Monitor>,
    /// Per shard, the sequence number up to which this page has what
    /// changed.
    seen: [u64; SHARDS],
}

impl Drop for Watch {
    fn drop(&mut self) {
        if self.monitor.watchers.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.monitor.clear();
        }
    }
}

impl Monitor {
    /// Records `message`, if a page is open. The only call on the message
    /// path.
    pub fn note(&self, message: &Message) {
        if self.watchers.load(Ordering::Relaxed) == 0 {
            return;
        }
        self.record(&message.topic, &message.payload, message.retain, 1);
    }

    fn record(&self, name: &ByteStr, payload: &Bytes, retained: bool, count: u64) {
        let hash = self.keys.hash_one(name.as_str());
        let mut shard = self.shards[(hash % SHARDS as u64) as usize].0.lock();
        shard.seq += 1;
        let seq = shard.seq;
        let topic = match shard.topics.entry(hash) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                if self.topics.fetch_add(1, Ordering::Relaxed) >= MAX_TOPICS {
                    self.topics.fetch_sub(1, Ordering::Relaxed);
                    self.untracked.fetch_add(count, Ordering::Relaxed);
                    return;
                }
                e.insert(Topic {
                    name: name.clone(),
                    count: 0,
                    value: Vec::new(),
                    bytes: 0,
                    retained,
                    at_ms: 0,
                    seq,
                    fresh: false,
                    points: Vec::new(),
                })
            }
        };
        if topic.name != *name {
            // Two topics with one 64-bit keyed hash: the later is not kept.
            self.untracked.fetch_add(count, Ordering::Relaxed);
            return;
        }
        topic.count += count;
        topic.seq = seq;
        topic.fresh = true;
        topic.value.clear();
        topic
            .value
            .extend_from_slice(&payload[..payload.len().min(VALUE_BYTES)]);
        topic.bytes = payload.len();
        topic.retained = retained;
        topic.at_ms = self.now_ms.load(Ordering::Relaxed);
    }

    /// A page opens: recording starts (if it was not on), seeded with the
    /// retained messages `seed` gives, as a subscriber to `#` would see
    /// them first (not counted: they were published before).
    pub fn watch(self: &Arc<Self>, seed: impl FnOnce(&mut dyn FnMut(&Message))) -> Watch {
        self.now_ms.store(self.clock(), Ordering::Relaxed);
        if self.watchers.fetch_add(1, Ordering::AcqRel) == 0 {
            seed(&mut |m| self.record(&m.topic, &m.payload, true, 0));
        }
        Watch {
            monitor: self.clone(),
            seen: [0; SHARDS],
        }
    }

    /// A page's look: what changed since its last, with the numbers of the
    /// values that came since any page's last look.
    pub fn changed(&self, watch: &mut Watch) -> Vec<Changed> {
        self.now_ms.store(self.clock(), Ordering::Relaxed);
        let mut out = Vec::new();
        for (shard, seen) in self.shards.iter().zip(watch.seen.iter_mut()) {
            let mut shard = shard.0.lock();
            for topic in shard.topics.values_mut() {
                if topic.fresh {
                    topic.fresh = false;
                    if let Some(v) = number(&topic.value) {
                        if topic.points.len() == POINTS {
                            topic.points.remove(0);
                        }
                        topic.points.push((topic.at_ms, v));
                    }
                }
                if topic.seq > *seen {
                    out.push(changed(topic, *seen == 0));
                }
            }
            *seen = shard.seq;
        }
        out
    }

    /// Topics kept now, and messages whose topic was not kept.
    pub fn counts(&self) -> (usize, u64) {
        (
            self.topics.load(Ordering::Relaxed),
            self.untracked.load(Ordering::Relaxed),
        )
    }

    /// Milliseconds since the monitor started (the pages' time axis).
    pub fn clock(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn clear(&self) {
        for shard in &self.shards {
            *shard.0.lock() = Shard::default();
        }
        self.topics.store(0, Ordering::Relaxed);
        self.untracked.store(0, Ordering::Relaxed);
    }
}

fn changed(topic: &Topic, first_look: bool) -> Changed {
    let text = std::str::from_utf8(&topic.value).ok();
    Changed {
        topic: topic.name.to_string(),
        count: topic.count,
        value: text.map(|t| t.chars().take(256).collect()),
        bytes: topic.bytes,
        retained: topic.retained,
        at_ms: topic.at_ms,
        // A page's first look gets them all; later ones the newest.
        points: if first_look {
            topic.points.clone()
        } else {
            topic.points.last().copied().into_iter().collect()
        },
    }
}

/// The number a payload carries: the payload itself (`22.5`), or the first
/// numeric field of a JSON object (`{"temp": 22.5}`).
fn number(payload: &[u8]) -> Option<f64> {
    let text = std::str::from_utf8(payload).ok()?.trim();
    if let Ok(v) = text.parse::<f64>() {
        return v.is_finite().then_some(v);
    }
    if !text.starts_with('{') {
        return None;
    }
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    value
        .as_object()?
        .values()
        .find_map(serde_json::Value::as_f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(topic: &str, payload: &str, retain: bool) -> Arc<Message> {
        let mut m = Message::broker_retained(topic.to_owned(), payload.to_owned());
        Arc::get_mut(&mut m).unwrap().retain = retain;
        m
    }

    #[test]
    fn nothing_is_kept_until_a_page_opens_and_after_the_last_closes() {
        let monitor = Arc::new(Monitor::default());
        monitor.note(&message("a", "1", false));
        assert_eq!(monitor.counts(), (0, 0));
        let mut watch = monitor.watch(|_| {});
        monitor.note(&message("a", "1", false));
        monitor.note(&message("a", "2", false));
        let seen = monitor.changed(&mut watch);
        assert_eq!(seen.len(), 1);
        assert_eq!((seen[0].count, seen[0].value.as_deref()), (2, Some("2")));
        assert_eq!(seen[0].points.len(), 1, "sampled once, at the look");
        // Nothing new: nothing sent.
        assert!(monitor.changed(&mut watch).is_empty());
        monitor.note(&message("a", "3", false));
        monitor.note(&message("a", "4", false));
        let seen = monitor.changed(&mut watch);
        assert_eq!((seen[0].count, seen[0].value.as_deref()), (4, Some("4")));
        assert_eq!(
            seen[0].points,
            [(seen[0].at_ms, 4.0)],
            "the newest point only"
        );
        drop(watch);
        assert_eq!(monitor.counts(), (0, 0));
    }

    #[test]
    fn retained_messages_seed_it_and_numbers_are_found_in_json() {
        let monitor = Arc::new(Monitor::default());
        let kept = message("site/temp", r#"{"unit": "C", "temp": 21.5}"#, true);
        let mut watch = monitor.watch(|f| f(&kept));
        let seen = monitor.changed(&mut watch);
        assert_eq!(seen.len(), 1);
        assert!(seen[0].retained);
        assert_eq!(
            seen[0].count, 0,
            "a retained message seeds; it is not counted"
        );
        assert_eq!(seen[0].points[0].1, 21.5);
        assert_eq!(number(b"not a number"), None);
        assert_eq!(number(b" 7 "), Some(7.0));
        assert_eq!(number(b"NaN"), None);
    }

    #[test]
    fn topics_beyond_the_bound_are_counted_not_kept() {
        let monitor = Arc::new(Monitor::default());
        let _watch = monitor.watch(|_| {});
        for i in 0..MAX_TOPICS + 5 {
            monitor.note(&message(&format!("t/{i}"), "x", false));
        }
        assert_eq!(monitor.counts(), (MAX_TOPICS, 5));
    }
}
