//! QoS 1/2 messages stored in the cluster before they are routed and
//! acknowledged ([`crate::seams::Fabric::store`]).
//!
//! Each message a client publishes here at QoS 1 or 2 is published to the
//! cluster's messages stream (`<cluster>-messages`, `replicas` copies):
//! JetStream answers once a majority of its servers has it. Only then is it
//! routed (here, and to other nodes as any message is) and its PUBACK or
//! PUBREC let go. While the stream cannot take writes (its servers elect a
//! leader, or this node's NATS server is on the minority side of a
//! partition) the acknowledgements are held and the message reaches no
//! one; a write is tried again until `write_timeout_secs` after it was
//! published, then given up: never routed, never acknowledged, and its
//! client asked to publish it elsewhere (MQTT 5: DISCONNECT 0x9C), while
//! this node refuses new clients until the stream takes writes again.
//!
//! One task runs it, in the order the writes were issued: it keeps up to
//! [`IN_FLIGHT`] of them in NATS at once and settles them in that order,
//! so a ticket settled means every earlier one is too (a PUBACK waits for
//! its own, see `ClientState::release`), and messages are routed in the
//! order their clients sent them.

use std::collections::{BTreeMap, VecDeque};
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use async_nats::Client;
use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::client_state::progress;
use crate::lock::{Mutex, rank};
use crate::router;
use crate::seams::{Stored, Write};
use crate::state::BrokerState;
use crate::store::records::{self, Clock, Kept};

use super::fabric::{Recent, stored_copy};
use super::mirror::Mirrors;
use super::publisher::round_trip;
use super::{FIRST_HEADER, headers, issued_by, subject};

/// Writes in NATS at once, awaiting their acknowledgement.
const IN_FLIGHT: usize = 2_048;
/// Writes waiting to go to NATS; beyond this, refused at once (their
/// clients are asked to publish elsewhere).
const QUEUED: usize = 65_536;
/// How long a failed write waits before it is tried again.
const RETRY: Duration = Duration::from_millis(250);
/// How often a node whose writes failed checks whether the stream takes
/// them again.
const PROBE: Duration = Duration::from_secs(1);
/// How long a failed ticket is remembered for the connection it belongs to.
const FORGET_FAILED: Duration = Duration::from_secs(300);
/// The messages stream keeps a message this long, or until it holds
/// [`MAX_BYTES`].
const MAX_AGE: Duration = Duration::from_secs(24 * 3600);
const MAX_BYTES: i64 = 1 << 30;
/// How long the stream remembers a write's id to drop a second copy of it
/// (a write tried again): longer than a write is tried.
const DUPLICATES: Duration = Duration::from_secs(60);

/// The messages stream: every QoS 1/2 message any node accepted, under
/// `<cluster>.s.` and its topic's subject.
pub fn stream_config(cluster: &str, replicas: usize) -> stream::Config {
    stream::Config {
        name: format!("{cluster}-messages"),
        subjects: vec![format!("{cluster}.s.>")],
        num_replicas: replicas,
        max_age: MAX_AGE,
        max_bytes: MAX_BYTES,
        discard: stream::DiscardPolicy::Old,
        duplicate_window: DUPLICATES,
        ..Default::default()
    }
}

/// The subject of the writes that probe whether the stream takes them.
pub(super) fn probe_subject(cluster: &str) -> String {
    format!("{cluster}.s.p")
}

/// The writes a node has issued, shared by the fabric (which issues them)
/// and the task that stores them.
pub(super) struct Writes {
    /// Issues tickets and queues the writes in one step, so the queue is in
    /// ticket order.
    queue: Mutex<Queue, { rank::FABRIC }>,
    /// How many writes are queued, not yet taken by the task.
    queued: AtomicUsize,
    /// Every ticket up to this one is settled.
    settled: watch::Sender<u64>,
    /// Settled tickets that failed (and when), until their connection
    /// looked.
    failed: Mutex<BTreeMap<u64, Instant>, { rank::FABRIC }>,
    /// A write was given up, and none stored since: refuse new clients.
    failing: AtomicBool,
}

struct Queue {
    issued: u64,
    sender: mpsc::UnboundedSender<Queued>,
}

/// A write in the queue.
pub(super) struct Queued {
    ticket: u64,
    write: Write,
    /// Refused: the queue was full.
    refused: bool,
}

impl Writes {
    /// The shared side, and the queue the task reads.
    pub(super) fn new() -> (Arc<Writes>, mpsc::UnboundedReceiver<Queued>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        let writes = Writes {
            queue: Mutex::new(Queue { issued: 0, sender }),
            queued: AtomicUsize::new(0),
            settled: watch::channel(0).0,
            failed: Mutex::new(BTreeMap::new()),
            failing: AtomicBool::new(false),
        };
        (Arc::new(writes), receiver)
    }

    /// Queues `write` and returns its ticket.
    pub(super) fn issue(&self, write: Write) -> u64 {
        // The queue is unbounded so that a refusal keeps its place in the
        // ticket order; the count bounds it.
        let refused = self.queued.fetch_add(1, Ordering::Relaxed) >= QUEUED;
        let mut queue = self.queue.lock();
        queue.issued += 1;
        let ticket = queue.issued;
        let queued = Queued {
            ticket,
            write,
            refused,
        };
        if queue.sender.send(queued).is_err() {
            // The task has stopped (shutdown): the ticket never settles,
            // and the acknowledgement is never sent.
            tracing::debug!(
                ticket,
                "cluster: a message was not stored: the node is stopping"
            );
        }
        ticket
    }

    pub(super) fn stored(&self, ticket: u64) -> Stored {
        if ticket > *self.settled.borrow() {
            return Stored::Pending;
        }
        // Each ticket is asked about by its own connection alone, once.
        match self.failed.lock().remove(&ticket) {
            Some(_) => Stored::Failed,
            None => Stored::Done,
        }
    }

    pub(super) fn changes(&self) -> watch::Receiver<u64> {
        self.settled.subscribe()
    }

    /// Whether writes fail now (a write was given up, none stored since).
    pub(super) fn failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }

    fn settle(&self, ticket: u64) {
        self.settled.send_replace(ticket);
    }

    fn fail(&self, ticket: u64) {
        let now = Instant::now();
        let mut failed = self.failed.lock();
        failed.retain(|_, at| now.duration_since(*at) < FORGET_FAILED);
        failed.insert(ticket, now);
    }
}

/// One write on its way to the stream.
struct Flight {
    ticket: u64,
    write: Write,
    /// Its `Tern-Id`.
    id: String,
    /// Its `Nats-Msg-Id`: its id, or, written again, its id and `+`.
    nats_id: String,
    /// Written under the id of an earlier write of it ([`Storage::intend`]).
    reused: bool,
    /// The place of that earlier write, found in the stream: this one is
    /// the second copy.
    first: Option<u64>,
    /// The mirror ticket its QoS 2 id waits for in its session's state in
    /// NATS before it is sent (0: sent, or nothing to wait for).
    intent: u64,
    subject: String,
    record: Bytes,
    /// Given up after this.
    deadline: Instant,
    /// The stream's answer to the last attempt; `None` while waiting to
    /// try again.
    ack: Option<Ack>,
    retry_at: Instant,
}

/// The stream's answer: the message's sequence in it and whether it was
/// there already (a write with the same `Nats-Msg-Id`), or why not.
type Ack = Pin<Box<dyn Future<Output = Result<(u64, bool), String>> + Send>>;

/// A round trip through NATS that, answered, shows the live copies sent
/// before it reached the NATS server; with the last ticket it covers.
type Barrier = (u64, Pin<Box<dyn Future<Output = bool> + Send>>);

/// What the task does next.
enum Event {
    Stop,
    /// The oldest write's answer, or its time to be tried again.
    Head(Head),
    /// Sessions' state in NATS was written.
    Mirrored,
    Queued(Option<Queued>),
    Durable,
    /// The NATS server has every live copy up to this ticket.
    Forwarded(u64),
    Probe,
}

enum Head {
    Acked(Result<(u64, bool), String>),
    Retry,
}

/// The task that stores the writes (see the module docs).
pub(super) struct Storage {
    pub(super) jetstream: jetstream::Context,
    /// For the live copies, and the round trips that confirm them.
    pub(super) client: Client,
    /// A subject no one subscribes to, for the round trips.
    pub(super) barrier: String,
    pub(super) cluster: String,
    pub(super) origin: String,
    pub(super) writes: Arc<Writes>,
    pub(super) queue: mpsc::UnboundedReceiver<Queued>,
    pub(super) timeout: Duration,
    /// Where this node is in the stream: its own stored messages count.
    pub(super) recent: Arc<Mutex<Recent, { rank::FABRIC }>>,
    /// The sessions' state in NATS, which a QoS 2 id enters before its
    /// message is written, and again before it is routed.
    pub(super) mirrors: Arc<Mirrors>,
    /// Their bucket, probed with the stream.
    pub(super) bucket: kv::Store,
}

impl Storage {
    pub(super) async fn run(mut self, state: Weak<BrokerState>, shutdown: CancellationToken) {
        let mut flights: VecDeque<Flight> = VecDeque::new();
        // (ticket, the local store's ticket for its deliveries): routed,
        // settled once the local store has them and NATS has their live
        // copies (`forwarded`).
        let mut routed: VecDeque<(u64, u64)> = VecDeque::new();
        let mut forwarded = 0;
        let mut barrier: Option<Barrier> = None;
        // Stored, waiting to be routed until their QoS 2 ids are in their
        // sessions' state in NATS (the mirror ticket), in order.
        let mut stored: VecDeque<(Flight, u64, u64)> = VecDeque::new();
        let mut mirrored = self.mirrors.changes();
        let mut durable = state.upgrade().and_then(|s| {
            s.store
                .as_ref()
                .filter(|s| s.acks_wait())
                .map(|s| s.watch())
        });
        let mut probe = tokio::time::interval(PROBE);
        // Flights waiting for their QoS 2 id to be in NATS before they go.
        let mut intending = 0;
        loop {
            let failing = self.writes.failing();
            let event = tokio::select! {
                biased;
                () = shutdown.cancelled() => Event::Stop,
                head = head(&mut flights) => Event::Head(head),
                queued = self.queue.recv(), if flights.len() < IN_FLIGHT => Event::Queued(queued),
                () = progress(&mut durable), if !routed.is_empty() => Event::Durable,
                covered = confirmed(&mut barrier) => Event::Forwarded(covered),
                _ = mirrored.changed(), if !stored.is_empty() || intending > 0 => Event::Mirrored,
                _ = probe.tick(), if failing && flights.is_empty() => Event::Probe,
            };
            match event {
                Event::Stop | Event::Queued(None) => break,
                Event::Queued(Some(queued)) => {
                    self.writes.queued.fetch_sub(1, Ordering::Relaxed);
                    let Some(state) = state.upgrade() else {
                        break;
                    };
                    let flight = self.take_off(&state, queued).await;
                    intending += usize::from(flight.intent != 0);
                    flights.push_back(flight);
                }
                Event::Head(Head::Acked(result)) => {
                    let Some(mut flight) = flights.pop_front() else {
                        continue;
                    };
                    match result {
                        // The stream had it: written before under its id, by a
                        // node that died or gave it up, maybe read from the
                        // stream since, never routed. Written again (a new
                        // place, above every session's cursor), with its id.
                        Ok((first, true)) if flight.reused => {
                            tracing::info!(id = %flight.id, first, "cluster: a QoS 2 message sent again was in the stream already, never routed (its node died or gave it up); written again");
                            flight.reused = false;
                            flight.first = Some(first);
                            flight.nats_id.push('+');
                            self.send(&mut flight).await;
                            flights.push_front(flight);
                        }
                        Ok((sequence, _)) => {
                            if self.writes.failing.swap(false, Ordering::Relaxed) {
                                tracing::info!("cluster: the messages stream takes writes again");
                            }
                            let Some(state) = state.upgrade() else {
                                break;
                            };
                            let kept = self.keep_inbound(&state, &flight.write, sequence);
                            stored.push_back((flight, sequence, kept));
                        }
                        Err(e) if Instant::now() >= flight.deadline => {
                            intending -= usize::from(flight.intent != 0);
                            self.give_up(&mut routed, flight, &e, &state);
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "cluster: a message was not stored yet; trying again");
                            flight.ack = None;
                            flight.retry_at = Instant::now() + RETRY;
                            flights.push_front(flight);
                        }
                    }
                }
                // The whole pipeline again, in order: after a leader change
                // or a NATS reconnect the answers to every write in flight
                // are lost, and one at a time would take as many round trips.
                // The stream drops the copies of those it had (by id).
                Event::Head(Head::Retry) => {
                    for flight in flights.iter_mut().filter(|f| f.intent == 0) {
                        self.send(flight).await;
                    }
                }
                Event::Mirrored if intending > 0 => {
                    let written = self.mirrors.written();
                    for flight in flights.iter_mut() {
                        if flight.intent != 0 && flight.intent <= written {
                            flight.intent = 0;
                            intending -= 1;
                            self.send(flight).await;
                        }
                    }
                }
                Event::Mirrored | Event::Durable => {}
                Event::Forwarded(covered) => {
                    barrier = None;
                    forwarded = covered;
                }
                Event::Probe => {
                    if self.probe().await {
                        tracing::info!("cluster: the messages stream takes writes again");
                        self.writes.failing.store(false, Ordering::Relaxed);
                    }
                }
            }
            let kept = self.mirrors.written();
            while stored.front().is_some_and(|&(_, _, ticket)| ticket <= kept) {
                let Some((flight, sequence, _)) = stored.pop_front() else {
                    break;
                };
                let Some(state) = state.upgrade() else {
                    break;
                };
                routed.push_back(self.route(&state, flight, sequence).await);
            }
            self.settle(&mut routed, &durable, forwarded);
            if barrier.is_none()
                && let Some(&(last, _)) = routed.back()
                && last > forwarded
            {
                let (client, subject) = (self.client.clone(), self.barrier.clone());
                barrier = Some((
                    last,
                    Box::pin(async move { round_trip(&client, subject).await }),
                ));
            }
        }
    }

    /// A persistent session's QoS 2 message, now in the stream: its packet
    /// id goes into the session's state in NATS with its place before it is
    /// routed (and acknowledged), so that a node taking the session over if
    /// this one dies knows the message was accepted, and routes it (again:
    /// other nodes drop a second copy by its id). The mirror ticket to wait
    /// for (0: none).
    fn keep_inbound(&self, state: &BrokerState, write: &Write, sequence: u64) -> u64 {
        let (Some(id), true, Some(client_id)) = (
            write.packet_id,
            write.persistent,
            write.message.origin.as_ref(),
        ) else {
            return 0;
        };
        let Some(session) = state.sessions().get(client_id) else {
            return 0;
        };
        let kept = Kept::Stored(sequence);
        session.lock().traffic().inbound_kept.insert(id, kept);
        self.mirrors.request(client_id)
    }

    /// Routes a stored message here (with its QoS 2 id, if its session is
    /// persistent) and sends its live copy to the other nodes (with its
    /// place in the stream, `Tern-Seq`); its ticket, and the local store's
    /// ticket for its deliveries.
    async fn route(&self, state: &BrokerState, flight: Flight, sequence: u64) -> (u64, u64) {
        let Flight {
            ticket,
            write,
            id,
            record,
            first,
            ..
        } = flight;
        let Write {
            message,
            owner,
            packet_id,
            persistent,
            ..
        } = write;
        let inbound = packet_id.filter(|_| persistent);
        let group = match &message.origin {
            Some(client_id) => router::inbound_group(state, client_id, inbound),
            None => Default::default(),
        };
        let _ = message.place.set(sequence);
        if let Some(first) = first {
            let _ = message.first_place.set(first);
        }
        let seen = {
            let mut recent = self.recent.lock();
            for place in message.places() {
                recent.arrived(place);
            }
            // Written under another node's id (`Storage::intend`): this node
            // may have routed it already (read from the stream, or live
            // from the node that first wrote it); the follower, which passes
            // this node's own by their origin, knows it by its id.
            !issued_by(&id, &self.origin) && !recent.first_time(&id)
        };
        let routed = if seen {
            let ticket = state.store.as_ref().map_or(0, |s| s.submit_group(group));
            router::Routed {
                ticket,
                ..Default::default()
            }
        } else {
            router::publish_here(state, &message, owner.as_ref(), group)
        };
        let (live, headers) = stored_copy(&self.cluster, &message, &id, &routed.served);
        if let Err(e) = self
            .client
            .publish_with_headers(live, headers, record)
            .await
        {
            crate::throttled!(warn, "cluster publish failed", error = %e, "cluster: a stored message was not sent to the other nodes live");
        }
        (ticket, routed.ticket)
    }

    /// The id of the write with this ticket (`Tern-Id`), in the stream and
    /// on its live copy.
    fn id(&self, ticket: u64) -> String {
        format!("{}:s{ticket}", self.origin)
    }

    /// Whether the stream takes a write now (an empty message on
    /// `<cluster>.s.p`, beside every topic's subject, `….s.m.…`, `….s.d.…`),
    /// and the sessions' state bucket too (key `probe`, beside the keys of
    /// sessions, hex digests): a persistent session's QoS 2 message needs
    /// both.
    async fn probe(&self) -> bool {
        let subject = probe_subject(&self.cluster);
        let deadline = Instant::now() + PROBE;
        let id = self.id(0);
        let ack = self
            .publish(&id, &id, None, subject, Bytes::new(), deadline)
            .await;
        if ack.await.is_err() {
            return false;
        }
        let put = self.bucket.put("probe", Bytes::new());
        matches!(tokio::time::timeout(PROBE, put).await, Ok(Ok(_)))
    }

    /// Publishes a queued write to the stream (a refused one fails at once,
    /// in its place), or, for a persistent session's QoS 2 message, first
    /// puts its id in the session's state in NATS ([`Storage::intend`]).
    async fn take_off(&self, state: &BrokerState, queued: Queued) -> Flight {
        let Queued {
            ticket,
            write,
            refused,
        } = queued;
        let message = &write.message;
        let subject = subject::kept_subject(&self.cluster, "s", &message.topic);
        let record = Bytes::from(records::encode_message(message, &Clock::now()));
        let now = Instant::now();
        let (id, intent, reused) = if refused {
            (self.id(ticket), 0, false)
        } else {
            self.intend(state, ticket, &write)
        };
        let mut flight = Flight {
            ticket,
            write,
            nats_id: id.clone(),
            id,
            reused,
            first: None,
            intent,
            subject,
            record,
            deadline: if refused { now } else { now + self.timeout },
            ack: None,
            retry_at: now,
        };
        if refused {
            crate::throttled!(
                warn,
                "cluster writes queue full",
                "cluster: too many messages waiting to be stored in NATS; a publisher is asked to use another node"
            );
            flight.ack = Some(Box::pin(std::future::ready(Err(
                "too many messages waiting to be stored".to_owned(),
            ))));
        } else if intent == 0 {
            self.send(&mut flight).await;
        }
        flight
    }

    /// The id a write goes under, the mirror ticket it waits for, and
    /// whether the id is an earlier write's.
    ///
    /// A persistent session's QoS 2 message enters its session's state in
    /// NATS before it is written ([`Kept::Writing`]): if this node dies
    /// after the stream stored it, a node taking the session over knows the
    /// id it was written under, and writes its client's DUP under the same
    /// one (so does this node after giving a write up). If the stream had
    /// it, that copy was never routed, but may have been read from the
    /// stream by a node catching up or a session taken over: the message is
    /// written again, at a new place, and routed with the same id, by which
    /// a node that had it drops it.
    fn intend(&self, state: &BrokerState, ticket: u64, write: &Write) -> (String, u64, bool) {
        let (Some(packet_id), true, Some(client_id)) = (
            write.packet_id,
            write.persistent,
            write.message.origin.as_ref(),
        ) else {
            return (self.id(ticket), 0, false);
        };
        let Some(session) = state.sessions().get(client_id) else {
            return (self.id(ticket), 0, false);
        };
        let (id, reused) = {
            let mut st = session.lock();
            let kept = &mut st.traffic().inbound_kept;
            let (id, reused) = match kept.get(&packet_id) {
                Some(Kept::Writing(id)) if write.resent => (id.clone(), true),
                _ => (self.id(ticket), false),
            };
            kept.insert(packet_id, Kept::Writing(id.clone()));
            (id, reused)
        };
        (id, self.mirrors.request(client_id), reused)
    }

    /// Sends `flight` to the stream (again).
    async fn send(&self, flight: &mut Flight) {
        let (subject, record) = (flight.subject.clone(), flight.record.clone());
        let ack = self
            .publish(
                &flight.id,
                &flight.nats_id,
                flight.first,
                subject,
                record,
                flight.deadline,
            )
            .await;
        flight.ack = Some(ack);
    }

    /// Publishes a write to the stream; the answer, at most until its
    /// deadline.
    async fn publish(
        &self,
        id: &str,
        nats_id: &str,
        first: Option<u64>,
        subject: String,
        record: Bytes,
        deadline: Instant,
    ) -> Ack {
        let mut headers = headers(id);
        if let Some(first) = first {
            headers.insert(FIRST_HEADER, first.to_string().as_str());
        }
        // The stream keeps one copy of a write tried more than once.
        headers.insert(async_nats::header::NATS_MESSAGE_ID, nats_id);
        let published = self
            .jetstream
            .publish_with_headers(subject, headers, record)
            .await;
        let deadline = tokio::time::Instant::from_std(deadline);
        match published {
            Ok(ack) => Box::pin(async move {
                match tokio::time::timeout_at(deadline, ack.into_future()).await {
                    Ok(Ok(ack)) => Ok((ack.sequence, ack.duplicate)),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("no answer from the stream in time".to_owned()),
                }
            }),
            Err(e) => {
                let e = e.to_string();
                Box::pin(async move { Err(e) })
            }
        }
    }

    /// Gives `flight` up: it is never routed, its connection closes
    /// without its acknowledgement, and its QoS 2 packet id is forgotten
    /// (its client sends the message again; a persistent session keeps the
    /// id it was written under, [`Storage::intend`], as the stream may have
    /// it after all).
    fn give_up(
        &self,
        routed: &mut VecDeque<(u64, u64)>,
        flight: Flight,
        error: &str,
        state: &Weak<BrokerState>,
    ) {
        if !self.writes.failing.swap(true, Ordering::Relaxed) {
            tracing::warn!(%error, timeout_secs = self.timeout.as_secs(), "cluster: the messages stream takes no writes (NATS has no majority here?): publishers are asked to use another node, and new clients are refused until it does");
        }
        self.writes.fail(flight.ticket);
        if let (Some(state), Some(client_id), Some(id)) = (
            state.upgrade(),
            flight.write.message.origin.as_ref(),
            flight.write.packet_id,
        ) && let Some(session) = state.sessions().get(client_id)
        {
            session.lock().traffic().inbound_qos2.remove(&id);
        }
        routed.push_back((flight.ticket, 0));
    }

    /// Settles the routed writes the local store has.
    fn settle(
        &self,
        routed: &mut VecDeque<(u64, u64)>,
        durable: &Option<watch::Receiver<u64>>,
        forwarded: u64,
    ) {
        let durable = durable.as_ref().map_or(u64::MAX, |d| *d.borrow());
        let mut last = None;
        while let Some(&(ticket, local)) = routed.front() {
            if local > durable || ticket > forwarded {
                break;
            }
            routed.pop_front();
            last = Some(ticket);
        }
        if let Some(ticket) = last {
            self.writes.settle(ticket);
        }
    }
}

/// The oldest write's answer, or its time to be tried again (forever if
/// there is none).
async fn head(flights: &mut VecDeque<Flight>) -> Head {
    let Some(flight) = flights.front_mut() else {
        return std::future::pending().await;
    };
    match &mut flight.ack {
        Some(ack) => Head::Acked(ack.await),
        None if flight.intent != 0 => {
            tokio::time::sleep_until(tokio::time::Instant::from_std(flight.deadline)).await;
            Head::Acked(Err(
                "its session's state could not be kept in NATS in time".to_owned()
            ))
        }
        None => {
            tokio::time::sleep_until(tokio::time::Instant::from_std(flight.retry_at)).await;
            Head::Retry
        }
    }
}

/// The last ticket a barrier covers, once NATS answered it (forever if
/// there is none).
async fn confirmed(barrier: &mut Option<Barrier>) -> u64 {
    let Some((covered, answer)) = barrier else {
        return std::future::pending().await;
    };
    if !answer.await {
        crate::throttled!(
            warn,
            "cluster live copies unconfirmed",
            "cluster: NATS did not confirm stored messages' live copies in time; their PUBACKs go out without it"
        );
    }
    *covered
}
