//! After this node's NATS link drops and comes back (its NATS server died,
//! and the client moved to another), the stored messages it missed
//! meanwhile are read from the messages stream and routed to its sessions.
//!
//! Live copies reach a node only while its link is up: what other nodes
//! published in between went to the stream, not here. On the way down the
//! node notes where to resume: the earliest stream place among the live
//! copies that arrived in the last moments before (copies of messages
//! stored just before can still be on their way, in any order across
//! publishing nodes), or past the highest seen. Once the link is back it
//! reads the stream from there to its end at that time with an ordered
//! consumer, and routes what it has not routed yet: copies already routed
//! are known by their ids ([`Recent`]), its own messages by their origin.
//! Shared groups are not replayed (NATS picked one node for each message;
//! that node may be this one or not): their messages of the gap are lost,
//! as on a NATS core link.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::{self, consumer};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::lock::{Mutex, rank};
use crate::message::Message;
use crate::router::{self, Scope};
use crate::state::BrokerState;
use crate::store::records::{self, Clock};

use super::fabric::{Recent, stored_copy};
use super::publisher::round_trip;
use super::storage;
use super::{issued_by, note_first_place, tern_id};

/// How long a replay goes on trying to read the stream (it may be electing
/// a leader, if its server was the one that died, and a consumer cannot be
/// made while the NATS cluster has no meta leader): the messages stay in
/// the stream meanwhile.
const PATIENCE: Duration = Duration::from_secs(600);

/// How long a replay reads on past the stream's end.
const OVERLAP: Duration = Duration::from_secs(2);

/// How long a read short of the stream's end waits for its next message
/// before it starts again from there: an ordered consumer whose server
/// went away can wait for ever, remaking itself where no JetStream answers.
const STALL: Duration = Duration::from_secs(5);

/// The NATS link of this node, as its client reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    Down,
    Up,
}

/// The task (see the module docs).
pub(super) struct CatchUp {
    pub(super) jetstream: jetstream::Context,
    pub(super) cluster: String,
    /// This run's origin: its own messages are not routed again.
    pub(super) origin: String,
    pub(super) recent: Arc<Mutex<Recent, { rank::FABRIC }>>,
    /// Where the replay resumes, from the link going down until it has
    /// finished (`u64::MAX` otherwise): sessions' cursors stay below it.
    pub(super) holding: Arc<AtomicU64>,
}

impl CatchUp {
    pub(super) async fn run(
        self,
        mut links: mpsc::UnboundedReceiver<Link>,
        state: Weak<BrokerState>,
        stop: CancellationToken,
    ) {
        // Where the next replay starts, once the link is up again: the
        // earliest resume point of every drop since the last replay began
        // (each taken when it happened, also while a replay runs).
        let mut pending: Option<u64> = None;
        let mut up = true;
        let mut running: Option<Pin<Box<dyn Future<Output = ()> + Send + '_>>> = None;
        loop {
            if running.is_none()
                && up
                && let Some(start) = pending.take()
            {
                running = Some(Box::pin(self.replay_logged(start, &state)));
            }
            tokio::select! {
                () = stop.cancelled() => break,
                link = links.recv() => match link {
                    Some(Link::Down) => {
                        let start = self.recent.lock().resume_from();
                        let start = pending.map_or(start, |p| p.min(start));
                        self.holding.fetch_min(start, Ordering::Relaxed);
                        pending = Some(start);
                        up = false;
                    }
                    Some(Link::Up) => up = true,
                    None => break,
                },
                () = async { if let Some(replay) = running.as_mut() { replay.await } else { std::future::pending().await } } => {
                    running = None;
                    if pending.is_none() {
                        self.holding.store(u64::MAX, Ordering::Relaxed);
                    }
                }
            }
        }
    }

    /// [`CatchUp::replay`], its outcome logged.
    async fn replay_logged(&self, start: u64, state: &Weak<BrokerState>) {
        match self.replay(start, state).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                messages = n,
                from = start,
                "cluster: routed the stored messages missed while NATS was unreachable"
            ),
            Err(e) => {
                tracing::warn!(error = %e, from = start, "cluster: cannot read the messages missed while NATS was unreachable; they are lost for this node's sessions")
            }
        }
    }

    /// Routes the stored messages from place `start` to the stream's end
    /// now that this node has not routed; how many. This node's own are
    /// sent live to the other nodes again ([`CatchUp::send_again`]).
    async fn replay(&self, start: u64, state: &Weak<BrokerState>) -> Result<usize, String> {
        let mut own = Vec::new();
        let read = read_stored(&self.jetstream, &self.cluster, start, |message, place| {
            if self.own(message) {
                own.push((message.clone(), place));
                return false;
            }
            if !self.missed(message) {
                return false;
            }
            let (Some(state), Some(stored)) = (state.upgrade(), decode(message, place)) else {
                return false;
            };
            router::publish_remote(&state, stored, Scope::Direct);
            true
        })
        .await;
        self.send_again(own).await;
        // Everything up to the end read is routed here now: a later replay
        // starts past it even if no message arrives meanwhile.
        read.map(|(routed, end)| {
            self.recent.lock().passed(end);
            routed
        })
    }

    /// Sends this node's own stored messages of a replay live to the other
    /// nodes again: the NATS server that died may have taken their live
    /// copies (their PUBACKs waited for that) and died before passing them
    /// on. A node that had one drops it by its id, a session by its place;
    /// shared groups do not take them (marked as sent again).
    async fn send_again(&self, own: Vec<(async_nats::Message, u64)>) {
        let client = self.jetstream.client();
        let mut sent = 0;
        for (message, place) in own {
            let (Some(id), Some(stored)) = (tern_id(&message), decode(&message, place)) else {
                continue;
            };
            let (subject, headers) = stored_copy(&self.cluster, &stored, id, &[], true);
            match client
                .publish_with_headers(subject, headers, message.payload.clone())
                .await
            {
                Ok(()) => sent += 1,
                Err(e) => {
                    crate::throttled!(warn, "cluster publish failed", error = %e, "cluster: a stored message was not sent to the other nodes again")
                }
            }
        }
        if sent > 0 {
            tracing::debug!(
                messages = sent,
                "cluster: sent this node's stored messages of the gap to the other nodes again"
            );
        }
    }

    /// Whether a stored message is this node's own (this run's).
    fn own(&self, message: &async_nats::Message) -> bool {
        tern_id(message).is_some_and(|id| issued_by(id, &self.origin))
    }

    /// Whether a stored message is one this node has not routed: another
    /// node's, and not seen live.
    fn missed(&self, message: &async_nats::Message) -> bool {
        match tern_id(message) {
            Some(id) => !self.own(message) && self.recent.lock().first_time(id),
            None => false,
        }
    }
}

/// A stored message as it was published, with its place in the stream;
/// `None` if it expired or cannot be read (logged).
pub(super) fn decode(message: &async_nats::Message, place: u64) -> Option<Arc<Message>> {
    match records::decode_message(&message.payload, &Clock::now()) {
        Ok(Some(stored)) => {
            let _ = stored.place.set(place);
            note_first_place(message.headers.as_ref(), &stored);
            Some(stored)
        }
        Ok(None) => None,
        Err(e) => {
            crate::throttled!(warn, "cluster message unreadable", error = %e, "cluster: a stored message could not be read; dropped");
            None
        }
    }
}

/// The stored message at `place`, if the stream still has it (and it has
/// not expired), with its record as stored and its id (`Tern-Id`).
pub(super) async fn fetch(
    jetstream: &jetstream::Context,
    cluster: &str,
    place: u64,
) -> Option<(Arc<Message>, StreamMessage)> {
    let stream = jetstream
        .get_stream(format!("{cluster}-messages"))
        .await
        .ok()?;
    let stored = stream.get_raw_message(place).await.ok()?;
    match records::decode_message(&stored.payload, &Clock::now()) {
        Ok(Some(message)) => {
            let _ = message.place.set(place);
            note_first_place(Some(&stored.headers), &message);
            Some((message, stored))
        }
        _ => None,
    }
}

/// Reads the messages stream from place `start` to its end, and on for
/// [`OVERLAP`]: a message stored right after the end was read can have
/// been sent live before the NATS servers knew of subscriptions just made.
/// Calls `each` with every stored message but probes, and its place; how
/// many `each` took (returned true), and the end read. Waits for the stream
/// (it may be electing a leader) up to [`PATIENCE`].
pub(super) async fn read_stored(
    jetstream: &jetstream::Context,
    cluster: &str,
    start: u64,
    mut each: impl FnMut(&async_nats::Message, u64) -> bool,
) -> Result<(usize, u64), String> {
    // Subscriptions just made (again) are in place once a request sent
    // after them comes back.
    round_trip(&jetstream.client(), format!("{cluster}.barrier")).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut reading = Reading {
        next: start,
        end: None,
        overlap: None,
        taken: 0,
    };
    loop {
        match reading.attempt(jetstream, cluster, &mut each).await {
            Ok(()) => return Ok((reading.taken, reading.end.unwrap_or(0))),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e.to_string()),
            // The stream is electing a leader, or the link dropped again:
            // on from where this attempt stopped.
            Err(e) => {
                crate::throttled!(info, "cluster stream read", error = %e, "cluster: reading the messages stream failed; trying again");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

/// Where a [`read_stored`] is.
struct Reading {
    /// The next place to read.
    next: u64,
    /// The stream's end when first asked.
    end: Option<u64>,
    /// Reading on past the end until then.
    overlap: Option<tokio::time::Instant>,
    taken: usize,
}

impl Reading {
    async fn attempt(
        &mut self,
        jetstream: &jetstream::Context,
        cluster: &str,
        each: &mut impl FnMut(&async_nats::Message, u64) -> bool,
    ) -> Result<(), async_nats::Error> {
        let mut stream = jetstream.get_stream(format!("{cluster}-messages")).await?;
        let end = match self.end {
            Some(end) => end,
            None => *self.end.insert(stream.info().await?.state.last_sequence),
        };
        if end < self.next && self.overlap.is_none() {
            self.overlap = Some(tokio::time::Instant::now() + OVERLAP);
        }
        let config = consumer::pull::OrderedConfig {
            filter_subject: format!("{cluster}.s.>"),
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: self.next,
            },
            ..Default::default()
        };
        let mut messages = stream.create_consumer(config).await?.messages().await?;
        let probe = storage::probe_subject(cluster);
        loop {
            let next = futures_util::StreamExt::next(&mut messages);
            let message = match self.overlap {
                None => match tokio::time::timeout(STALL, next).await {
                    Ok(message) => message,
                    Err(_) => return Err(format!("no message for {}s", STALL.as_secs()).into()),
                },
                Some(until) => match tokio::time::timeout_at(until, next).await {
                    Ok(message) => message,
                    Err(_) => return Ok(()),
                },
            };
            let Some(message) = message else {
                return Ok(());
            };
            let message = message?;
            let place = message.info()?.stream_sequence;
            self.next = place + 1;
            if message.subject.as_str() != probe && each(&message, place) {
                self.taken += 1;
            }
            if place >= end && self.overlap.is_none() {
                self.overlap = Some(tokio::time::Instant::now() + OVERLAP);
            }
        }
    }
}
