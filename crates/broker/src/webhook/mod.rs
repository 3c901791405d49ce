//! Webhooks: an HTTP POST of one JSON object per event (a client connected
//! or disconnected, a session created or ended, a message published or
//! dropped) to each `[[webhooks]]` endpoint that asked for it.
//!
//! The message path only decides and queues: [`Webhooks::emit`] checks one
//! mask (nothing else runs when no webhook wants the event), builds the event
//! (shared `Bytes` and `Arc`s, no payload copy) and `try_send`s it into each
//! endpoint's bounded queue; a full queue drops it and counts it. One task per
//! endpoint ([`sender::run`]) turns events into JSON and POSTs them in order,
//! retrying with backoff, so an endpoint that is slow, fails or hangs delays
//! only its own queue.

mod sender;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use tern_codec::topic::filter_matches;
use tern_codec::{ByteStr, ProtocolVersion};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, WEBHOOK_EVENTS, WebhookConfig};
use crate::lock::{Mutex, rank};
use crate::message::Message;

/// An event kind, as a bit of [`Webhooks::mask`] (the order of
/// `WEBHOOK_EVENTS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Connected = 0,
    Disconnected = 1,
    SessionCreated = 2,
    SessionEnded = 3,
    Published = 4,
    Dropped = 5,
}

impl Kind {
    fn bit(self) -> u8 {
        1 << self as u8
    }

    fn name(self) -> &'static str {
        WEBHOOK_EVENTS[self as usize]
    }
}

/// What happened, with what the JSON says of it.
#[derive(Debug)]
pub enum Event {
    Connected {
        client_id: ByteStr,
        username: Option<Arc<str>>,
        peer: SocketAddr,
        protocol: ProtocolVersion,
        listener: String,
    },
    Disconnected {
        client_id: ByteStr,
        username: Option<Arc<str>>,
        peer: SocketAddr,
        reason: &'static str,
    },
    SessionCreated {
        client_id: ByteStr,
    },
    SessionEnded {
        client_id: ByteStr,
        reason: &'static str,
    },
    /// Accepted from `username` (the publisher's client id is the
    /// message's origin).
    Published {
        message: Arc<Message>,
        username: Option<Arc<str>>,
    },
    /// Not queued for the session of `client_id`.
    Dropped {
        message: Arc<Message>,
        client_id: ByteStr,
        reason: &'static str,
    },
}

impl Event {
    fn kind(&self) -> Kind {
        match self {
            Event::Connected { .. } => Kind::Connected,
            Event::Disconnected { .. } => Kind::Disconnected,
            Event::SessionCreated { .. } => Kind::SessionCreated,
            Event::SessionEnded { .. } => Kind::SessionEnded,
            Event::Published { .. } => Kind::Published,
            Event::Dropped { .. } => Kind::Dropped,
        }
    }

    /// The message of a message event.
    fn message(&self) -> Option<&Message> {
        match self {
            Event::Published { message, .. } | Event::Dropped { message, .. } => Some(message),
            _ => None,
        }
    }
}

/// An event and when it happened (milliseconds since the Unix epoch).
#[derive(Debug)]
pub struct Stamped {
    pub at_ms: u64,
    pub event: Event,
}

/// One endpoint as the message path sees it.
struct Hook {
    mask: u8,
    topics: Vec<String>,
    queue: mpsc::Sender<Arc<Stamped>>,
}

/// What was sent, given up and dropped, for `$SYS/broker/webhooks/...`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Events an endpoint answered with a 2xx status.
    pub delivered: AtomicU64,
    /// Events given up: every try failed, or the endpoint refused (4xx).
    pub failed: AtomicU64,
    /// Events dropped because an endpoint's queue was full.
    pub dropped: AtomicU64,
}

/// An endpoint and its queue's receiving end, waiting for its task.
type Pending = (Arc<WebhookConfig>, mpsc::Receiver<Arc<Stamped>>);

/// The configured endpoints' queues, in `BrokerState`.
pub struct Webhooks {
    /// Every kind some endpoint wants: the one check when none does.
    mask: u8,
    hooks: Vec<Hook>,
    pub counters: Arc<Counters>,
    /// The queues' other ends, until [`spawn`] gives them to their tasks.
    pending: Mutex<Vec<Pending>, { rank::WEBHOOKS }>,
}

impl Webhooks {
    pub fn new(config: &Config) -> Webhooks {
        let mut hooks = Vec::new();
        let mut pending = Vec::new();
        for hook in &config.webhooks {
            let mask = WEBHOOK_EVENTS
                .iter()
                .enumerate()
                .filter(|(_, name)| hook.events.iter().any(|e| e == *name))
                .fold(0, |mask, (i, _)| mask | 1 << i);
            let (queue, rx) = mpsc::channel(hook.queue_size);
            hooks.push(Hook {
                mask,
                topics: hook.topics.clone(),
                queue,
            });
            pending.push((Arc::new(hook.clone()), rx));
        }
        Webhooks {
            mask: hooks.iter().fold(0, |m, h| m | h.mask),
            hooks,
            counters: Arc::default(),
            pending: Mutex::new(pending),
        }
    }

    /// Whether some endpoint wants events of `kind`.
    pub fn wants(&self, kind: Kind) -> bool {
        self.mask & kind.bit() != 0
    }

    /// Queues the event `make` builds for every endpoint that wants it
    /// (message events: whose topic filters match its topic); built only if
    /// one wants its kind. Never waits: a full queue drops it, counted.
    pub fn emit(&self, kind: Kind, make: impl FnOnce() -> Event) {
        if !self.wants(kind) {
            return;
        }
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let stamped = Arc::new(Stamped {
            at_ms,
            event: make(),
        });
        let topic = stamped.event.message().map(|m| m.topic.as_str());
        for hook in &self.hooks {
            let wanted = hook.mask & kind.bit() != 0
                && topic.is_none_or(|t| hook.topics.iter().any(|f| filter_matches(f, t)));
            if wanted && hook.queue.try_send(stamped.clone()).is_err() {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                crate::throttled!(
                    warn,
                    "webhook queue full",
                    event = kind.name(),
                    "a webhook's queue is full (its endpoint is slow or down): an event was dropped (counted in $SYS/broker/webhooks/dropped)"
                );
            }
        }
    }
}

/// Starts one task per endpoint of `webhooks`, sending what its queue
/// holds until `shutdown`.
pub fn spawn(webhooks: &Webhooks, tasks: &TaskTracker, shutdown: &CancellationToken) {
    let pending = std::mem::take(&mut *webhooks.pending.lock());
    for (hook, queue) in pending {
        let counters = webhooks.counters.clone();
        tasks.spawn(sender::run(hook, queue, counters, shutdown.clone()));
    }
}
