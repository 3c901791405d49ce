//! Every stored message reaches this node's sessions, also when its live
//! copy does not.
//!
//! A stored (QoS 1/2) message goes to the other nodes two ways: its live
//! copy over NATS core, at once, and the messages stream, which every node
//! follows (one ordered consumer per node, not per session or
//! subscription). NATS core promises nothing: live copies are lost with a
//! NATS server that dies holding them, while this node's link to NATS is
//! down, and while the routes between restarted servers form again and
//! interest spreads over them (a publishing node's server then drops what
//! it has no route for, and neither node's link ever dropped). So the node
//! follows the stream a moment behind: a stored message of another node
//! whose live copy has not arrived [`GRACE`] after the stream gave it here
//! is routed from the stream (the live copy, should it come after all, is
//! then dropped by its id). Its own messages it routed itself once they
//! were stored.
//!
//! How far it has followed is the watermark of its sessions' state in NATS
//! ([`super::mirror`]): below it, every stored message was routed here, and
//! a session's cursor never passes it. Shared groups are not served from
//! the stream (NATS picked one node for each message, maybe this one):
//! their messages whose live copies were lost are lost, as on a NATS core
//! link.
//!
//! The rest of the module reads the stream for others: a session taken over
//! from its state in NATS is rebuilt from its cursor ([`read_stored`],
//! [`fetch`]).

use std::collections::VecDeque;
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::{self, consumer};
use futures_util::{FutureExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::lock::{Mutex, rank};
use crate::message::Message;
use crate::router::{self, Scope};
use crate::state::BrokerState;
use crate::store::records::{self, Clock};

use super::fabric::Recent;
use super::publisher::round_trip;
use super::{issued_by, note_first_place, tern_id};
use super::{storage, subject};

/// How long a stored message's live copy has to arrive, from when the
/// stream gave the message here, before the node routes it from the stream.
/// Live copies come within milliseconds: this is for a moment of load.
const GRACE: Duration = Duration::from_secs(1);

/// How long a replay goes on trying to read the stream (it may be electing
/// a leader, if its server was the one that died, and a consumer cannot be
/// made while the NATS cluster has no meta leader): the messages stay in
/// the stream meanwhile.
const PATIENCE: Duration = Duration::from_secs(600);

/// How long a replay reads on past the stream's end.
const OVERLAP: Duration = Duration::from_secs(2);

/// How long a read waits for its next message before it asks whether the
/// stream has more: an ordered consumer whose server went away can wait for
/// ever, remaking itself where no JetStream answers.
const STALL: Duration = Duration::from_secs(5);

/// How often the follower decides on what waits.
const TICK: Duration = Duration::from_millis(100);

/// How long the follower waits before it tries again to read the stream.
const RETRY: Duration = Duration::from_millis(250);

/// The task (see the module docs).
pub(super) struct Follower {
    pub(super) jetstream: jetstream::Context,
    pub(super) cluster: String,
    /// This run's origin: its own messages it routed itself.
    pub(super) origin: String,
    /// The live copies routed here, and how far the follower is.
    pub(super) recent: Arc<Mutex<Recent, { rank::FABRIC }>>,
    /// How long this node's own message may take from the stream to being
    /// routed here (its write's answer can come after the stream gave it
    /// here): longer than a write waits.
    pub(super) own_patience: Duration,
}

/// Where the follower is: the next place to read, what it read and has not
/// decided on yet, and how many it routed since it last said so.
struct Place {
    next: u64,
    waiting: VecDeque<Waiting>,
    /// The last one passed at once (not for this node), nothing waiting.
    passed: Option<u64>,
    routed: usize,
    told: Instant,
}

impl Place {
    /// Takes what the consumer gave, arrived `at`: a message that a
    /// subscription here matches now waits for its live copy (one stored
    /// before it was made is not its: NATS sent no live copy, and none is
    /// owed), others are passed; or why the consumer must be made again.
    fn take(
        &mut self,
        item: Option<Result<jetstream::Message, consumer::pull::OrderedError>>,
        at: Instant,
        cluster: &str,
        state: &BrokerState,
    ) -> Result<(), String> {
        let message = match item {
            Some(Ok(message)) => message,
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("the consumer ended".to_owned()),
        };
        let place = message.info().map_err(|e| e.to_string())?.stream_sequence;
        self.next = place + 1;
        let wanted = subject::kept_topic(cluster, "s", message.subject.as_str())
            .is_some_and(|topic| router::has_subscriber(state, &topic));
        if wanted || !self.waiting.is_empty() {
            self.waiting.push_back(Waiting {
                at,
                place,
                wanted,
                message: message.message,
            });
        } else {
            self.passed = Some(place);
        }
        Ok(())
    }

    /// Logs how many it routed, at most once a second, and once all it
    /// read is decided on.
    fn tell(&mut self) {
        let due = self.waiting.is_empty() || self.told.elapsed() >= Duration::from_secs(1);
        if self.routed > 0 && due {
            tracing::info!(
                messages = self.routed,
                "cluster: routed stored messages whose live copies did not arrive, from the messages stream"
            );
            self.routed = 0;
            self.told = Instant::now();
        }
    }
}

/// A stored message the stream gave here, waiting for its live copy (or,
/// not `wanted` here, only for those before it to be decided on).
struct Waiting {
    at: Instant,
    place: u64,
    wanted: bool,
    message: async_nats::Message,
}

impl Follower {
    /// Follows the stream from the place after `from` until `stop`.
    pub(super) async fn run(
        self,
        from: u64,
        mut reconnects: mpsc::UnboundedReceiver<()>,
        state: Weak<BrokerState>,
        stop: CancellationToken,
    ) {
        let mut place = Place {
            next: from + 1,
            waiting: VecDeque::new(),
            passed: None,
            routed: 0,
            told: Instant::now(),
        };
        loop {
            match ordered(&self.jetstream, &self.cluster, place.next).await {
                Ok(messages) => {
                    if !self
                        .follow(messages, &mut place, &mut reconnects, &state, &stop)
                        .await
                    {
                        return;
                    }
                }
                Err(e) => {
                    crate::throttled!(info, "cluster stream read", error = %e, "cluster: cannot follow the messages stream; trying again");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(RETRY) => {}
                    }
                }
            }
        }
    }

    /// Reads `messages` and decides on them, until the consumer should be
    /// made again (true) or the follower stops (false).
    async fn follow(
        &self,
        mut messages: consumer::pull::Ordered,
        place: &mut Place,
        reconnects: &mut mpsc::UnboundedReceiver<()>,
        state: &Weak<BrokerState>,
        stop: &CancellationToken,
    ) -> bool {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // When the last message came; checked every STALL.
        let mut heard = Instant::now();
        let stall = tokio::time::sleep(STALL);
        tokio::pin!(stall);
        loop {
            tokio::select! {
                () = stop.cancelled() => return false,
                // A new connection: a new consumer from where it was.
                reconnected = reconnects.recv() => return reconnected.is_some(),
                _ = tick.tick(), if !place.waiting.is_empty() => {
                    let Some(state) = state.upgrade() else { return false };
                    place.routed += self.decide(&mut place.waiting, &state);
                    place.tell();
                }
                () = &mut stall => {
                    let quiet = heard.elapsed() >= STALL;
                    if quiet && self.behind(place.next).await {
                        return true;
                    }
                    stall.as_mut().reset(if quiet { Instant::now() } else { heard } + STALL);
                }
                item = messages.next() => {
                    heard = Instant::now();
                    let Some(state) = state.upgrade() else { return false };
                    // With those already here, without going round the
                    // select for each.
                    let mut item = Some(item);
                    while let Some(next) = item {
                        if let Err(error) = place.take(next, heard, &self.cluster, &state) {
                            crate::throttled!(info, "cluster stream read", error = %error, "cluster: following the messages stream failed; starting again");
                            return true;
                        }
                        item = messages.next().now_or_never();
                    }
                    if let Some(passed) = place.passed.take() {
                        self.recent.lock().passed(passed);
                    }
                }
            }
        }
    }

    /// Whether the stream holds messages from place `next` on that the
    /// consumer has not given (it is stuck: start it again).
    async fn behind(&self, next: u64) -> bool {
        let ask = async {
            let mut stream = messages_stream(&self.jetstream, &self.cluster).await.ok()?;
            Some(stream.info().await.ok()?.state.last_sequence)
        };
        matches!(tokio::time::timeout(STALL, ask).await, Ok(Some(last)) if last >= next)
    }

    /// Decides on the waiting messages whose time has come, in order:
    /// those whose live copy was routed here are passed, another node's
    /// that did not arrive are routed now; this node's own wait until it
    /// routed them (or gave them up). How many of those routed matched a
    /// subscription here.
    fn decide(&self, waiting: &mut VecDeque<Waiting>, state: &BrokerState) -> usize {
        let now = Instant::now();
        let probe = storage::probe_subject(&self.cluster);
        let mut routed = 0;
        while let Some(front) = waiting.front() {
            if now < front.at + GRACE {
                break;
            }
            // Probes and this node's own messages are never routed from
            // here; nor is one without an id, which no node wrote.
            let id = tern_id(&front.message)
                .filter(|_| front.wanted && front.message.subject.as_str() != probe);
            let own = id.is_some_and(|id| issued_by(id, &self.origin));
            let route = {
                let mut recent = self.recent.lock();
                if own && !recent.routed_here(front.place) && now < front.at + self.own_patience {
                    break;
                }
                let route = recent.follow(front.place, id.filter(|_| !own));
                if !route {
                    recent.passed(front.place);
                }
                route
            };
            let Some(entry) = waiting.pop_front() else {
                break;
            };
            if !route {
                continue;
            }
            if let Some(stored) = decode(&entry.message, entry.place)
                && router::publish_remote(state, stored, Scope::Direct).matched > 0
            {
                routed += 1;
            }
            // Only now may a session's cursor pass it.
            self.recent.lock().passed(entry.place);
        }
        routed
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
    let stream = messages_stream(jetstream, cluster).await.ok()?;
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
/// Calls `each` with every stored message but probes, and its place, until
/// it says [`Step::Stop`]; how many `each` took, and the end read. Waits
/// for the stream (it may be electing a leader) up to [`PATIENCE`].
pub(super) async fn read_stored(
    jetstream: &jetstream::Context,
    cluster: &str,
    start: u64,
    mut each: impl FnMut(&async_nats::Message, u64) -> Step,
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

/// The cluster's messages stream.
async fn messages_stream(
    jetstream: &jetstream::Context,
    cluster: &str,
) -> Result<jetstream::stream::Stream, async_nats::Error> {
    Ok(jetstream.get_stream(format!("{cluster}-messages")).await?)
}

/// An ordered consumer of every stored message from place `start`.
async fn ordered(
    jetstream: &jetstream::Context,
    cluster: &str,
    start: u64,
) -> Result<consumer::pull::Ordered, async_nats::Error> {
    let stream = messages_stream(jetstream, cluster).await?;
    ordered_on(&stream, cluster, start).await
}

/// [`ordered`], on the stream at hand.
async fn ordered_on(
    stream: &jetstream::stream::Stream,
    cluster: &str,
    start: u64,
) -> Result<consumer::pull::Ordered, async_nats::Error> {
    let config = consumer::pull::OrderedConfig {
        filter_subject: format!("{cluster}.s.>"),
        deliver_policy: consumer::DeliverPolicy::ByStartSequence {
            start_sequence: start,
        },
        ..Default::default()
    };
    Ok(stream.create_consumer(config).await?.messages().await?)
}

/// What a [`read_stored`] did with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    Taken,
    Passed,
    /// Passed, and no more are read.
    Stop,
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
        each: &mut impl FnMut(&async_nats::Message, u64) -> Step,
    ) -> Result<(), async_nats::Error> {
        let mut stream = messages_stream(jetstream, cluster).await?;
        let end = match self.end {
            Some(end) => end,
            None => *self.end.insert(stream.info().await?.state.last_sequence),
        };
        if end < self.next && self.overlap.is_none() {
            self.overlap = Some(tokio::time::Instant::now() + OVERLAP);
        }
        let mut messages = ordered_on(&stream, cluster, self.next).await?;
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
            if message.subject.as_str() != probe {
                match each(&message, place) {
                    Step::Taken => self.taken += 1,
                    Step::Passed => {}
                    Step::Stop => return Ok(()),
                }
            }
            if place >= end && self.overlap.is_none() {
                self.overlap = Some(tokio::time::Instant::now() + OVERLAP);
            }
        }
    }
}
