//! Session state: everything about a client that outlives its connection.
//!
//! A session holds the client's subscriptions, the messages queued for it, the
//! QoS 1/2 messages sent but not yet acknowledged (in send order, for re-sending
//! on resume), the QoS 2 packet ids it sent us that await PUBREL, and the will
//! waiting out its delay. The state is plain data behind one mutex so that it
//! can later be persisted as it is.
//!
//! Publishers' connection tasks push deliveries in with [`Session::deliver`];
//! the one attached connection task drains them (see `client_state::outbound`).
//! The mutex is a std one: it is held only for queue operations, never across
//! an `.await` or I/O.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::num::NonZeroU16;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use tern_codec::{ByteStr, QoS, ReasonCode, SubscriptionOptions};
use tokio::sync::{Notify, oneshot};

use crate::lock::{Mutex, MutexGuard, rank};
use crate::message::{Awaiting, Delivery, Message};
use crate::store::records::{self, Clock, SessionRecord};
use crate::store::{Group, Store};

/// A session's state, locked.
pub type StateGuard<'a> = MutexGuard<'a, SessionState, { rank::SESSION }>;

/// Session Expiry Interval meaning "never expires" [MQTT-3.1.2-23 note].
pub const NEVER_EXPIRES: u32 = u32::MAX;

/// A client's session. Shared (`Arc`) by the registry, the subscription tree
/// and the attached connection.
#[derive(Debug)]
pub struct Session {
    pub client_id: ByteStr,
    state: Mutex<SessionState, { rank::SESSION }>,
    /// Wakes the attached connection when a delivery was queued, or a
    /// connection that was just replaced, so it sees its kick.
    pub notify: Notify,
    /// Whether a connection is attached; read without the lock by shared
    /// subscription routing to prefer online members.
    online: AtomicBool,
    /// Bumped when a connection with another username attaches (see
    /// [`crate::auth::Readable`]).
    pub identity: AtomicU32,
}

/// A connection parked in its session: idle, without a task (see
/// `connection::park`). Whatever needs it awake takes it out of the session,
/// under the session lock, and resumes it.
pub trait ParkedConnection: Send + std::fmt::Debug {
    /// Gives the connection a task again.
    fn resume(self: Box<Self>);
    /// The parker's token for it, so the parker can tell it from a
    /// connection parked later in the same session.
    fn token(&self) -> usize;
    /// Its socket is readable: answers what needs no task (a lone PINGREQ,
    /// an idle client's usual reason to speak) and returns true, or false if
    /// it must be resumed to handle what came.
    fn answer_quietly(&mut self) -> bool;
}

/// Identifies one connection (they are numbered from 1), so a session can
/// tell its current connection from one it has replaced.
pub type ConnectionId = std::num::NonZeroU64;

/// Queue bounds, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    pub max_messages: usize,
    /// 0 = no byte limit.
    pub max_bytes: usize,
    pub queue_qos0_offline: bool,
    /// Whether a delivery to a connection that keeps up may go over them ([`Queued::Over`]): not for what no publisher waits on
    /// (retained messages for a new subscription).
    pub may_double: bool,
}

impl QueueLimits {
    /// Twice these limits: how far a connection that keeps up may go over
    /// them ([`Queued::Over`]).
    fn doubled(&self) -> QueueLimits {
        QueueLimits {
            max_messages: self.max_messages.saturating_mul(2),
            max_bytes: self.max_bytes.saturating_mul(2),
            ..*self
        }
    }

    /// These limits raised by `messages` and `bytes` (no byte limit stays
    /// none): room for one SUBSCRIBE's retained messages past them.
    pub fn raised_by(&self, messages: usize, bytes: usize) -> QueueLimits {
        QueueLimits {
            max_messages: self.max_messages.saturating_add(messages),
            max_bytes: match self.max_bytes {
                0 => 0,
                max => max.saturating_add(bytes),
            },
            ..*self
        }
    }
}

/// How a delivery was queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    /// Within the session's limits.
    Within,
    /// Over them, up to twice them, because its connection keeps up: the
    /// broker is the bottleneck, not the client. The publisher must stop
    /// reading until the queue has room ([`SessionState::still_over`]).
    Over,
}

/// Why a delivery was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotQueued {
    /// QoS 0 for an offline session, which does not queue it.
    Offline,
    /// Over `max_queued_messages` or `max_queued_bytes` (for a connection
    /// that keeps up: over twice them).
    QueueFull,
    /// A message stored in a cluster's messages stream, over the limits: it
    /// stays there, and is read again once the queue has room
    /// ([`SessionState::refill`]). Not a drop.
    Deferred,
    /// Already queued or in flight: a session taken over from a node that
    /// died gets the messages since its cursor again while live copies
    /// arrive (see [`SessionState::recovering`]).
    Duplicate,
}

/// An outbound message sent but not fully acknowledged.
#[derive(Debug, Clone)]
pub struct Inflight {
    pub packet_id: NonZeroU16,
    pub state: Awaiting,
    pub delivery: Delivery,
}

/// A session's traffic as it leaves for another node
/// ([`SessionState::take_traffic`]).
#[derive(Debug, Default)]
pub struct Moving {
    /// Sent and not yet acknowledged, in send order.
    pub inflight: Vec<Inflight>,
    /// Queued, in order.
    pub pending: Vec<Delivery>,
    /// QoS 2 packet ids the client sent, awaiting its PUBREL.
    pub inbound_qos2: Vec<u16>,
    /// Where their messages are in a cluster's messages stream.
    pub inbound_kept: Vec<(u16, records::Kept)>,
    /// In a cluster: where it is in the messages stream. Its floor
    /// ([`Traffic::floor`]: every stored message below it was completed);
    /// where to read the stream again from for it (its first deferred
    /// message's place, [`NotQueued::Deferred`]; the node handing it over
    /// lowers it to where its follower is, [`crate::cluster`]); and the
    /// places of the stored messages it completed, or queued since it
    /// deferred some, not to be queued again.
    pub floor: u64,
    pub overflow: Option<u64>,
    pub done: Vec<u64>,
}

/// A subscription as the session remembers it (the tree holds the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionSubscription {
    pub options: SubscriptionOptions,
    pub subscription_id: Option<u32>,
}

/// Why a connection must close, as its session tells it
/// ([`SessionState::check_owner`]).
#[derive(Debug)]
pub enum Ousted {
    /// Another connection took the session over; the kick left for this
    /// one, if it is still there.
    TakenOver(Option<Box<Kick>>),
    /// The broker closes it with this reason: a reload of the password file
    /// no longer admits its login (see [`Session::refuse`]).
    Refused(ReasonCode),
}

/// What a connection finds in its session's mailbox ([`SessionState::mail`]).
#[derive(Debug)]
pub enum Mail {
    Kick(Kick),
    /// The admin API asks the attached connection who it is.
    Describe(oneshot::Sender<Described>),
}

/// A connection as the admin API shows it, told by the connection itself
/// (the session does not keep it: it would cost every idle client).
#[derive(Debug, Clone)]
pub struct Described {
    pub peer: std::net::SocketAddr,
    pub protocol: tern_codec::ProtocolVersion,
    /// Index into `config.listeners`.
    pub listener: usize,
    pub keep_alive_secs: u16,
}

/// Tells a connection that another one took its session over: left in the
/// session for it, which then wakes it (see [`Session::kick`]). The
/// connection drops `done` once it has finished closing, so the one taking
/// over knows the old connection no longer touches the session.
#[derive(Debug)]
pub struct Kick {
    /// The connection being closed.
    pub connection_id: ConnectionId,
    pub reason: ReasonCode,
    pub done: oneshot::Sender<()>,
}

/// The mutable part of a session.
///
/// One exists per client, connected or not, so its collections are the kinds
/// that are small and allocate nothing while empty (B-trees, not hash maps).
#[derive(Debug)]
pub struct SessionState {
    /// Keyed by the filter exactly as subscribed (including `$share/g/`).
    pub subscriptions: BTreeMap<ByteStr, SessionSubscription>,
    /// Queues and in-flight state; `None` while all are empty.
    traffic: Option<Box<Traffic>>,
    /// The id of the attached connection.
    pub connection: Option<ConnectionId>,
    /// A message for a connection: a kick for one that no longer owns the
    /// session, until it notices, or a question for the attached one.
    pub mail: Option<Box<Mail>>,
    /// Seconds the session outlives its connection; [`NEVER_EXPIRES`] for ever.
    pub expiry_secs: u32,
    /// Bumped on every attach and detach, so timers started for one detached
    /// period (expiry, will delay) can tell that it has ended.
    pub generation: u32,
    /// A will waiting out its Will Delay Interval.
    pub pending_will: Option<Box<PendingWill>>,
    /// Whether the store holds a record of this session.
    pub stored: bool,
    /// The attached connection, while it is parked (idle, without a task).
    pub parked: Option<Box<dyn ParkedConnection>>,
    /// The username of the last connection attached, for ACL checks on
    /// deliveries.
    pub username: Option<Arc<str>>,
    /// Whether the attached connection's username is its certificate's
    /// (`use_identity_as_username`) rather than one the password file
    /// vouched for. With `login_rules`, what a reload judges again.
    pub by_certificate: bool,
    /// The [`crate::auth::Auth::generation`] of the rules the attached
    /// connection's login was last judged by.
    pub login_rules: u32,
    /// The attached connection is to close with this reason; cleared when
    /// a connection attaches.
    refused: Option<ReasonCode>,
}

/// A will waiting out its delay.
#[derive(Debug)]
pub struct PendingWill {
    pub message: Arc<Message>,
    pub due: std::time::Instant,
    /// Who its client logged in as: the ACL in force when the will is
    /// published judges it by this.
    pub username: Option<Arc<str>>,
}

/// What a session holds only while messages pass through it. Boxed, and
/// dropped when empty as its connection parks: an idle session, the common
/// case, carries one pointer instead.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Deliveries not yet sent, in order.
    pending: VecDeque<Delivery>,
    pending_bytes: usize,
    /// Sent, awaiting acknowledgement, in send order.
    pub inflight: VecDeque<Inflight>,
    /// QoS 2 packet ids received from the client, awaiting its PUBREL.
    pub inbound_qos2: BTreeSet<u16>,
    /// In a cluster: where the messages of the QoS 2 ids its client sent
    /// are in the messages stream, for the session's state in NATS (one
    /// being written is here before it is in the stream, and stays when
    /// its write is given up, for its client's DUP to be written under the
    /// same id; it is then not in `inbound_qos2`).
    pub inbound_kept: BTreeMap<u16, records::Kept>,
    last_packet_id: u16,
    /// While the session is rebuilt from a cluster's messages stream: the
    /// places of the stored messages queued, in flight or completed, so
    /// that none is queued twice.
    places: Option<HashSet<u64>>,
    /// In a cluster: the places of the stored QoS 1/2 messages completed
    /// (PUBACK, PUBCOMP) at or above its cursor (as last kept in NATS), so
    /// that a node taking it over, or one it moves to, does not send them
    /// again ([`SessionState::mirror`]).
    pub done: BTreeSet<u64>,
    /// In a cluster: the cursor last kept in NATS for this session (or the
    /// one it was taken over with). Every stored message routed to it below
    /// that place was completed: one arriving now (a late copy) is not
    /// queued, and the cursor never goes back below it.
    pub floor: u64,
    /// The highest place of the stored messages queued for it: one below
    /// it (a late copy) is first looked for among those it has.
    newest: u64,
    /// In a cluster: the first place of the stored messages not queued for
    /// want of room ([`NotQueued::Deferred`]): they are read again from the
    /// messages stream from there ([`SessionState::refill`]), and its
    /// cursor stays at or below it meanwhile.
    overflow: Option<u64>,
    /// The places of the stored messages queued since it overflowed (or
    /// while it is refilled), not to be queued again by a refill.
    since_overflow: HashSet<u64>,
    /// How often its connection took deliveries with all it had written
    /// before gone: the client keeps up while this moves.
    pub drains: u32,
    /// Its connection stopped keeping up with a queue over its limits
    /// (`drains` did not move for [`STALLED_AFTER`]): it gets no more than
    /// its limits, and nobody waits for it, until it drains again.
    pub slow: bool,
    /// Publishers wait for its queue to have room again.
    pub waited_on: bool,
}

/// How long a connection whose queue is over its limits may go without
/// draining before it is judged slow and publishers stop waiting for it.
pub const STALLED_AFTER: std::time::Duration = std::time::Duration::from_millis(250);

impl Traffic {
    /// The stored message at `place` is deferred: read again from there.
    fn defer(&mut self, place: u64) {
        self.overflow = Some(self.overflow.map_or(place, |o| o.min(place)));
    }

    /// Its deliveries queued or in flight.
    fn queued(&self) -> impl Iterator<Item = &Delivery> {
        self.pending
            .iter()
            .chain(self.inflight.iter().map(|i| &i.delivery))
    }

    /// Whether the stored message at `place` is queued, in flight or
    /// completed here.
    fn has(&self, place: u64) -> bool {
        self.done.contains(&place)
            || self
                .queued()
                .any(|d| d.message.places().any(|p| p == place))
    }
}

impl Session {
    /// A new, empty session.
    pub fn new(client_id: ByteStr) -> Arc<Session> {
        Arc::new(Session {
            client_id,
            state: Mutex::new(SessionState {
                subscriptions: BTreeMap::new(),
                traffic: None,
                connection: None,
                mail: None,
                expiry_secs: 0,
                generation: 0,
                pending_will: None,
                stored: false,
                parked: None,
                username: None,
                by_certificate: false,
                login_rules: 0,
                refused: None,
            }),
            notify: Notify::new(),
            online: AtomicBool::new(false),
            identity: AtomicU32::new(0),
        })
    }

    /// Locks the state.
    pub fn lock(&self) -> StateGuard<'_> {
        self.state.lock()
    }

    /// Whether a connection is attached.
    pub fn is_online(&self) -> bool {
        self.online.load(Ordering::Relaxed)
    }

    /// Records whether a connection is attached (called with the lock held).
    pub fn set_online(&self, online: bool) {
        self.online.store(online, Ordering::Relaxed);
    }

    /// Queues a delivery and wakes the connection (resuming it if it is
    /// parked). `Err` if it was dropped (queue full, or QoS 0 to an offline
    /// session that does not queue it). For a broker without a store.
    pub fn deliver(&self, delivery: Delivery, limits: &QueueLimits) -> Result<Queued, NotQueued> {
        let mut st = self.lock();
        let queued = st.admits(&delivery, self.is_online(), limits)?;
        self.enqueue_locked(st, delivery);
        Ok(queued)
    }

    /// Queues a delivery (admitted, and its record submitted if it has one)
    /// and wakes the connection if the queue was empty. One that was not
    /// empty was woken when it stopped being so, and takes from it at each
    /// turn of its loop until it is empty again, or until what stops it
    /// (its window, its unwritten output) ends, which wakes it by itself:
    /// a fan-out burst wakes each connection once, not once per message.
    fn enqueue_locked(&self, mut st: StateGuard<'_>, delivery: Delivery) {
        let idle = st.pending_len() == 0;
        st.enqueue(delivery);
        if idle || st.parked.is_some() {
            self.wake(st);
        }
    }

    /// The first half of a delivery with a store: admits it (`Err`: dropped)
    /// and, for a persistent session's QoS 1/2, adds it to `group` and
    /// returns it (`Some`). The caller submits the group and then calls
    /// [`Session::enqueue_stored`]: the connection must not see a delivery
    /// before its entry is submitted, or its own later changes to the entry
    /// could be ordered before it. One with nothing to store is queued at
    /// once (`None`).
    pub fn stage(
        &self,
        mut delivery: Delivery,
        limits: &QueueLimits,
        store: &Arc<Store>,
        group: &mut Group,
    ) -> Result<(Option<Delivery>, Queued), NotQueued> {
        let mut st = self.lock();
        let queued = st.admits(&delivery, self.is_online(), limits)?;
        if !st.stores(delivery.qos) {
            self.enqueue_locked(st, delivery);
            return Ok((None, queued));
        }
        store.queue(&self.client_id, &mut delivery, group);
        Ok((Some(delivery), queued))
    }

    /// The second half: queues a staged delivery and wakes the connection.
    pub fn enqueue_stored(&self, delivery: Delivery) {
        self.enqueue_locked(self.lock(), delivery);
    }

    /// Records a connection's username in its session (`st`, this session's
    /// state, locked), where deliveries look it up. A change makes earlier
    /// "wholly readable" decisions stale (see [`crate::auth::Readable`]).
    /// Done as the connection attaches, under the same lock, so no delivery
    /// is judged by a previous user's rights once the new one owns it.
    pub fn bind_user(&self, st: &mut SessionState, username: Option<Arc<str>>) {
        if st.username != username {
            st.username = username;
            self.identity.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// This session's identity for [`crate::auth::Readable`].
    pub fn identity(&self) -> u32 {
        self.identity.load(Ordering::Relaxed)
    }

    /// Closes the attached connection with `reason` (MQTT 5: in a
    /// DISCONNECT): it finds the refusal through
    /// [`SessionState::check_owner`] once woken, or resumed if it is parked.
    /// It then closes as for any broker-initiated close: its will is
    /// published by the usual rules, and the session outlives it by its
    /// expiry.
    pub fn refuse(&self, mut st: StateGuard<'_>, reason: ReasonCode) {
        st.refused = Some(reason);
        self.wake(st);
    }

    /// Wakes the attached connection (resuming it if it is parked).
    pub fn wake(&self, mut st: StateGuard<'_>) {
        let parked = st.parked.take();
        drop(st);
        if let Some(parked) = parked {
            parked.resume();
        } else {
            self.notify.notify_one();
        }
    }
}

impl SessionState {
    /// Attaches connection `connection_id`. If another was attached, leaves it
    /// a kick (its waker is the caller's job) and returns a receiver that
    /// resolves when it has closed.
    pub fn attach(&mut self, connection_id: ConnectionId) -> Option<oneshot::Receiver<()>> {
        self.refused = None;
        let previous = self.connection.replace(connection_id)?;
        let (done, closed) = oneshot::channel();
        self.mail = Some(Box::new(Mail::Kick(Kick {
            connection_id: previous,
            reason: ReasonCode::SessionTakenOver,
            done,
        })));
        Some(closed)
    }

    /// `Err` if connection `connection_id` must close: it no longer owns
    /// the session, or the broker refused it. `Ok(Some)`: the admin API
    /// asks it to describe itself on that sender.
    pub fn check_owner(
        &mut self,
        connection_id: ConnectionId,
    ) -> Result<Option<oneshot::Sender<Described>>, Ousted> {
        if self.connection != Some(connection_id) {
            return Err(Ousted::TakenOver(self.take_kick(connection_id)));
        }
        if let Some(reason) = self.refused {
            return Err(Ousted::Refused(reason));
        }
        let asked = self.mail.take_if(|m| matches!(**m, Mail::Describe(_)));
        Ok(asked.and_then(|m| match *m {
            Mail::Describe(tx) => Some(tx),
            Mail::Kick(_) => None,
        }))
    }

    /// Takes the kick left for connection `connection_id`, if any.
    pub fn take_kick(&mut self, connection_id: ConnectionId) -> Option<Box<Kick>> {
        let mine =
            |m: &mut Box<Mail>| matches!(&**m, Mail::Kick(k) if k.connection_id == connection_id);
        match *self.mail.take_if(mine)? {
            Mail::Kick(kick) => Some(Box::new(kick)),
            Mail::Describe(_) => None,
        }
    }

    /// Leaves the attached connection a question from the admin API;
    /// `None` if there is no connection or the mailbox is taken (a
    /// takeover under way).
    pub fn ask_describe(&mut self) -> Option<oneshot::Receiver<Described>> {
        if self.connection.is_none() || self.mail.is_some() || self.refused.is_some() {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        self.mail = Some(Box::new(Mail::Describe(tx)));
        Some(rx)
    }

    /// Whether connection `connection_id` owns the session and may go on
    /// (what [`SessionState::check_owner`] checks, taking nothing).
    pub fn is_owner(&self, connection_id: ConnectionId) -> bool {
        self.connection == Some(connection_id) && self.refused.is_none()
    }

    /// Whether the attached connection has been refused and is closing.
    pub fn is_refused(&self) -> bool {
        self.refused.is_some()
    }

    /// The queues, created on first use.
    pub fn traffic(&mut self) -> &mut Traffic {
        self.traffic.get_or_insert_with(Default::default)
    }

    /// Frees the queues if all are empty (the connection is parking).
    pub fn release_idle_traffic(&mut self) {
        if self.traffic.as_ref().is_some_and(|t| {
            t.pending.is_empty()
                && t.inflight.is_empty()
                && t.inbound_qos2.is_empty()
                && t.inbound_kept.is_empty()
                && t.places.is_none()
                && t.done.is_empty()
                && t.overflow.is_none()
        }) {
            self.traffic = None;
        }
    }

    /// Whether the pending queue takes `delivery`, and how; `Err` says why
    /// not (the caller counts the drop).
    ///
    /// Over the limits a delivery for a connection that keeps up is still
    /// taken, up to twice them: the broker, not the client, is behind, and
    /// the publisher is told to stop reading instead ([`Queued::Over`]), so
    /// that no message (one it was acknowledged for, at QoS 1/2) is dropped
    /// for a client doing nothing wrong. A slow connection, an offline
    /// session, or a cluster's stored message (which is deferred, not
    /// dropped) are held to the limits.
    fn admits(
        &mut self,
        delivery: &Delivery,
        online: bool,
        limits: &QueueLimits,
    ) -> Result<Queued, NotQueued> {
        if !online && delivery.qos == QoS::AtMostOnce && !limits.queue_qos0_offline {
            return Err(NotQueued::Offline);
        }
        let size = delivery.message.size();
        let full = self.is_full(size, limits);
        let Some(&place) = delivery.message.place.get() else {
            if !full {
                return Ok(Queued::Within);
            }
            if limits.may_double && online && !self.is_full(size, &limits.doubled()) {
                let t = self.traffic();
                if !t.slow {
                    t.waited_on = true;
                    return Ok(Queued::Over);
                }
            }
            return Err(NotQueued::QueueFull);
        };
        // A message written twice is known at either place.
        let first = delivery.message.first_place.get().copied();
        let t = self.traffic();
        let seen = t.places.as_ref().is_some_and(|places| {
            places.contains(&place) || first.is_some_and(|f| places.contains(&f))
        });
        if seen
            || place < t.floor
            || (place <= t.newest && t.has(place))
            || first.is_some_and(|f| t.has(f))
        {
            return Err(NotQueued::Duplicate);
        }
        if full {
            t.defer(place);
            return Err(NotQueued::Deferred);
        }
        if let Some(places) = t.places.as_mut() {
            places.extend(delivery.message.places());
        }
        // Queued while it has deferred messages, or while they are read
        // again (it may defer more meanwhile): not queued again by the next
        // refill.
        if t.overflow.is_some() || t.places.is_some() {
            t.since_overflow.extend(delivery.message.places());
        }
        t.newest = t.newest.max(place);
        Ok(Queued::Within)
    }

    /// Whether the pending queue is at its limits for one more message of
    /// `size` payload bytes.
    pub fn is_full(&self, size: usize, limits: &QueueLimits) -> bool {
        let (len, bytes) = self
            .traffic
            .as_ref()
            .map_or((0, 0), |t| (t.pending.len(), t.pending_bytes));
        len >= limits.max_messages || (limits.max_bytes != 0 && bytes + size > limits.max_bytes)
    }

    /// Its connection took deliveries from the queue; `drained`: with all
    /// it had written before gone to the client, which therefore keeps up.
    /// Returns whether publishers waiting for room should look again.
    pub fn took(&mut self, drained: bool, limits: &QueueLimits) -> bool {
        let full = self.is_full(0, limits);
        let Some(t) = self.traffic.as_mut() else {
            return false;
        };
        if drained {
            t.drains = t.drains.wrapping_add(1);
            t.slow = false;
        }
        let wake = t.waited_on && !full;
        if wake {
            t.waited_on = false;
        }
        wake
    }

    /// What a publisher that overfilled this queue waits for
    /// ([`Queued::Over`]): `None` once there is room, or nobody keeping
    /// up to wait for; else how often the connection drained so far.
    pub fn still_over(&mut self, online: bool, limits: &QueueLimits) -> Option<u32> {
        let full = self.is_full(0, limits);
        let t = self.traffic.as_mut()?;
        if !online || t.slow || !full {
            return None;
        }
        t.waited_on = true;
        Some(t.drains)
    }

    /// Judges its connection slow: it did not drain for [`STALLED_AFTER`]
    /// with its queue over the limits.
    pub fn mark_slow(&mut self) {
        if let Some(t) = self.traffic.as_mut() {
            t.slow = true;
        }
    }

    /// In a cluster: the stored message at `place` is deferred (a refill
    /// stopped before it).
    pub fn defer(&mut self, place: u64) {
        self.traffic().defer(place);
    }

    /// In a cluster: where to read its deferred messages again from, if it
    /// has some and room for them now (its queue at most half full), and
    /// it is not being rebuilt already. From then on, until
    /// [`SessionState::recovered`], a stored message it has (queued, in
    /// flight, completed, or queued since it overflowed) is not queued
    /// again.
    pub fn refill(&mut self, limits: &QueueLimits) -> Option<u64> {
        let t = self.traffic.as_mut()?;
        if t.places.is_some() || t.pending.len() > limits.max_messages / 2 {
            return None;
        }
        let from = t.overflow.take()?;
        let since = std::mem::take(&mut t.since_overflow);
        let had: Vec<u64> = since.into_iter().chain(t.done.iter().copied()).collect();
        self.recovering(&had);
        Some(from)
    }

    /// Takes over where a session that moved here is in a cluster's
    /// messages stream ([`Moving::floor`]): what it has is not queued
    /// again, and what it deferred is read again.
    pub fn restore_place(&mut self, floor: u64, overflow: Option<u64>, done: Vec<u64>) {
        let t = self.traffic();
        t.floor = t.floor.max(floor);
        t.done.extend(done);
        let newest = t
            .queued()
            .flat_map(|d| d.message.places())
            .chain(t.done.iter().copied())
            .max();
        t.newest = t.newest.max(newest.unwrap_or(0));
        if let Some(from) = overflow {
            t.defer(from);
        }
    }

    /// Starts rebuilding the session from a cluster's messages stream:
    /// from now on a stored message already queued or in flight, or at one
    /// of the places `done`, is not queued, until
    /// [`SessionState::recovered`].
    pub fn recovering(&mut self, done: &[u64]) {
        let t = self.traffic();
        let places = t
            .queued()
            .flat_map(|d| d.message.places())
            .chain(done.iter().copied())
            .collect();
        t.places = Some(places);
    }

    /// The session is rebuilt.
    pub fn recovered(&mut self) {
        let t = self.traffic();
        t.places = None;
        if t.overflow.is_none() {
            t.since_overflow.clear();
        }
    }

    /// What a cluster keeps of this session in NATS: its record, and where
    /// it is in the messages stream. The cursor is the earliest place among
    /// its stored messages queued or in flight, and at most `watermark`
    /// (below which this node has routed every stored message to it).
    ///
    /// With it, its QoS 2 deliveries in flight (place, packet id, state),
    /// so that a node taking it over resends each with its packet id, and
    /// those completed at or above the cursor, so that it does not send them
    /// again (what is below the cursor is forgotten here).
    pub fn mirror(&mut self, watermark: u64) -> records::Mirror {
        let record = self.record();
        let Some(t) = self.traffic.as_mut() else {
            return records::Mirror {
                session: record,
                cursor: watermark,
                inbound: Vec::new(),
                inflight: Vec::new(),
                done: Vec::new(),
            };
        };
        // While its messages since its cursor are still being routed to it,
        // it stays where it was taken over.
        let watermark = if t.places.is_some() {
            t.floor
        } else {
            watermark
        };
        let cursor = t
            .queued()
            .filter_map(|d| d.message.place.get().copied())
            .chain(t.overflow)
            .fold(watermark, u64::min)
            .max(t.floor);
        // It never goes back: a late copy of a message below it (a node
        // that took its publisher over sends it again) is not queued, and
        // the completed ones below it are forgotten.
        t.floor = cursor;
        let inflight = t
            .inflight
            .iter()
            .filter(|i| i.delivery.qos == QoS::ExactlyOnce)
            .filter_map(|i| Some((*i.delivery.message.place.get()?, i.packet_id, i.state)))
            .collect();
        t.done = t.done.split_off(&cursor);
        records::Mirror {
            session: record,
            cursor,
            inbound: t
                .inbound_kept
                .iter()
                .map(|(&id, kept)| (id, kept.clone()))
                .collect(),
            inflight,
            done: t.done.iter().copied().collect(),
        }
    }

    /// Appends to the pending queue (the caller checked the limits, or is
    /// restoring a queue from the store).
    pub(crate) fn enqueue(&mut self, delivery: Delivery) {
        let t = self.traffic();
        t.pending_bytes += delivery.message.size();
        t.pending.push_back(delivery);
    }

    /// Takes the next pending delivery.
    pub fn pop_pending(&mut self) -> Option<Delivery> {
        let t = self.traffic.as_mut()?;
        let d = t.pending.pop_front()?;
        t.pending_bytes -= d.message.size();
        Some(d)
    }

    /// Puts a delivery back at the front (it could not be sent yet).
    pub fn unpop_pending(&mut self, delivery: Delivery) {
        let t = self.traffic();
        t.pending_bytes += delivery.message.size();
        t.pending.push_front(delivery);
    }

    /// Number of pending deliveries.
    pub fn pending_len(&self) -> usize {
        self.traffic.as_ref().map_or(0, |t| t.pending.len())
    }

    /// The in-flight messages, in send order.
    pub fn inflight(&self) -> impl Iterator<Item = &Inflight> {
        self.traffic.iter().flat_map(|t| t.inflight.iter())
    }

    /// Number of in-flight messages.
    pub fn inflight_len(&self) -> usize {
        self.traffic.as_ref().map_or(0, |t| t.inflight.len())
    }

    /// Takes the in-flight deliveries (in send order), the pending ones (in
    /// order) and the inbound QoS 2 ids (with where their messages are in a
    /// cluster's messages stream), leaving the queues empty: the session is
    /// moving to another node.
    pub fn take_traffic(&mut self) -> Moving {
        let Some(t) = self.traffic.take() else {
            return Moving::default();
        };
        let Traffic {
            pending,
            inflight,
            inbound_qos2,
            inbound_kept,
            floor,
            overflow,
            since_overflow,
            done,
            ..
        } = *t;
        Moving {
            inflight: inflight.into(),
            pending: pending.into(),
            inbound_qos2: inbound_qos2.into_iter().collect(),
            inbound_kept: inbound_kept.into_iter().collect(),
            floor,
            overflow,
            done: done.into_iter().chain(since_overflow).collect(),
        }
    }

    /// Forgets everything but the identity: Clean Start, or a new session.
    /// Returns the subscriptions so the caller can remove them from the tree.
    pub fn clear(&mut self) -> BTreeMap<ByteStr, SessionSubscription> {
        self.traffic = None;
        self.pending_will = None;
        std::mem::take(&mut self.subscriptions)
    }

    /// Allocates a packet id not used by any in-flight message [MQTT-2.2.1-3].
    /// `None` if all 65535 are in use.
    pub fn next_packet_id(&mut self) -> Option<NonZeroU16> {
        let t = self.traffic();
        for _ in 0..u16::MAX {
            t.last_packet_id = t.last_packet_id.wrapping_add(1);
            let Some(id) = NonZeroU16::new(t.last_packet_id) else {
                continue;
            };
            if !t.inflight.iter().any(|i| i.packet_id == id) {
                return Some(id);
            }
        }
        None
    }

    /// Whether a delivery at `qos` to this session is stored: QoS 1 and 2 to
    /// persistent sessions (QoS 0 promises nothing to survive).
    pub fn stores(&self, qos: QoS) -> bool {
        self.expiry_secs != 0 && qos != QoS::AtMostOnce
    }

    /// What the store keeps of this session: subscriptions, expiry, the
    /// pending will, the username.
    pub fn record(&self) -> SessionRecord {
        let clock = Clock::now();
        SessionRecord {
            expiry_secs: self.expiry_secs,
            disconnected_at_ms: self.connection.is_none().then(|| clock.unix_ms()),
            subscriptions: self
                .subscriptions
                .iter()
                .map(|(filter, s)| (filter.clone(), s.options, s.subscription_id))
                .collect(),
            will: self.pending_will.as_ref().map(|will| {
                let record = records::encode_message(&will.message, &clock);
                (record, clock.to_unix_ms(will.due))
            }),
            username: self.username.as_deref().map(str::to_owned),
        }
    }

    /// Finds the in-flight entry for `packet_id` in `state`.
    pub fn inflight_position(&self, packet_id: NonZeroU16, state: Awaiting) -> Option<usize> {
        self.inflight()
            .position(|i| i.packet_id == packet_id && i.state == state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every connected or persistent client costs one `Session` (in an
    /// `Arc`, so 16 bytes more), idle or not: up to 184 bytes the allocation
    /// takes a 208-byte heap chunk (glibc), 16 bytes less than at 200.
    #[test]
    fn session_stays_small() {
        assert!(std::mem::size_of::<Session>() <= 184);
    }
    use crate::message::Message;

    fn limits(max_messages: usize, max_bytes: usize) -> QueueLimits {
        QueueLimits {
            max_messages,
            max_bytes,
            queue_qos0_offline: false,
            may_double: true,
        }
    }

    fn delivery(qos: QoS, payload: &'static str) -> Delivery {
        let mut m = Message::broker_retained("t".into(), payload.into());
        Arc::get_mut(&mut m).unwrap().qos = qos;
        Delivery {
            message: m,
            qos,
            retain: false,
            subscription_ids: vec![],
            seq: 0,
        }
    }

    #[test]
    fn queue_is_bounded_by_count_and_counts_drops() {
        // Offline: nobody drains it, so the limits hold exactly.
        let (s, limits) = (Session::new("c".into()), limits(2, 0));
        assert!(s.deliver(delivery(QoS::AtLeastOnce, "a"), &limits).is_ok());
        assert!(s.deliver(delivery(QoS::AtLeastOnce, "b"), &limits).is_ok());
        assert_eq!(
            s.deliver(delivery(QoS::AtLeastOnce, "c"), &limits),
            Err(NotQueued::QueueFull)
        );
        assert_eq!(s.lock().pending_len(), 2);
    }

    #[test]
    fn queue_is_bounded_by_bytes() {
        let (s, limits) = (Session::new("c".into()), limits(100, 10));
        assert!(
            s.deliver(delivery(QoS::AtLeastOnce, "12345678"), &limits)
                .is_ok()
        ); // 9 bytes with topic
        assert_eq!(
            s.deliver(delivery(QoS::AtLeastOnce, "12"), &limits),
            Err(NotQueued::QueueFull)
        );
        assert_eq!(s.lock().pop_pending().unwrap().message.payload, "12345678");
        assert!(s.deliver(delivery(QoS::AtLeastOnce, "12"), &limits).is_ok());
    }

    /// A connection that keeps up takes messages up to twice the limits,
    /// saying so, and wakes the waiting publishers once there is room; a
    /// connection judged slow is held to the limits; draining again makes
    /// it one that keeps up.
    #[test]
    fn a_connection_that_keeps_up_goes_over_the_limits_up_to_twice() {
        let (s, limits) = (Session::new("c".into()), limits(2, 0));
        s.set_online(true);
        let q1 = || delivery(QoS::AtLeastOnce, "m");
        assert_eq!(s.deliver(q1(), &limits), Ok(Queued::Within));
        assert_eq!(s.deliver(q1(), &limits), Ok(Queued::Within));
        assert_eq!(
            s.deliver(delivery(QoS::AtMostOnce, "m"), &limits),
            Ok(Queued::Over),
            "QoS 0 too, for a connection that keeps up"
        );
        assert_eq!(s.deliver(q1(), &limits), Ok(Queued::Over));
        assert_eq!(s.deliver(q1(), &limits), Err(NotQueued::QueueFull));
        let mut st = s.lock();
        assert_eq!(st.still_over(true, &limits), Some(0));
        st.pop_pending();
        assert!(!st.took(true, &limits), "still no room");
        assert_eq!(st.still_over(true, &limits), Some(1), "it drained once");
        st.pop_pending();
        st.pop_pending();
        assert!(st.took(false, &limits), "room: the publishers look again");
        assert!(!st.took(false, &limits), "once");
        assert_eq!(st.still_over(true, &limits), None);
        assert_eq!(st.still_over(false, &limits), None);
        drop(st);
        assert_eq!(s.deliver(q1(), &limits), Ok(Queued::Within));
        assert_eq!(s.deliver(q1(), &limits), Ok(Queued::Over));
        s.lock().mark_slow();
        assert_eq!(s.lock().still_over(true, &limits), None, "nobody waits");
        assert_eq!(s.deliver(q1(), &limits), Err(NotQueued::QueueFull));
        let mut st = s.lock();
        st.pop_pending();
        st.pop_pending();
        st.took(true, &limits);
        drop(st);
        assert_eq!(s.deliver(q1(), &limits), Ok(Queued::Within));
        assert_eq!(s.deliver(q1(), &limits), Ok(Queued::Over), "not slow now");
        let retained = QueueLimits {
            may_double: false,
            ..limits
        };
        assert_eq!(s.deliver(q1(), &retained), Err(NotQueued::QueueFull));
    }

    /// A delivery of the stored message at `place` of a cluster's stream.
    fn stored(place: u64) -> Delivery {
        let d = delivery(QoS::AtLeastOnce, "s");
        let _ = d.message.place.set(place);
        d
    }

    #[test]
    fn a_stored_message_over_the_limits_is_deferred_and_refilled_once() {
        let (s, limits) = (Session::new("c".into()), limits(2, 0));
        s.set_online(true);
        assert!(s.deliver(stored(10), &limits).is_ok());
        assert!(s.deliver(stored(11), &limits).is_ok());
        assert_eq!(s.deliver(stored(13), &limits), Err(NotQueued::Deferred));
        assert_eq!(s.deliver(stored(12), &limits), Err(NotQueued::Deferred));
        let mut st = s.lock();
        assert_eq!(st.mirror(100).cursor, 10, "at most its queued ones");
        assert_eq!(st.refill(&limits), None, "no room yet");
        st.pop_pending();
        st.pop_pending();
        assert_eq!(st.mirror(100).cursor, 12, "at most the first deferred");
        drop(st);
        assert!(s.deliver(stored(20), &limits).is_ok(), "live, with room");
        let mut st = s.lock();
        assert_eq!(st.refill(&limits), Some(12), "from the first deferred");
        assert_eq!(st.refill(&limits), None, "one refill at a time");
        drop(st);
        assert!(s.deliver(stored(12), &limits).is_ok());
        assert_eq!(
            s.deliver(stored(20), &limits),
            Err(NotQueued::Duplicate),
            "queued since it overflowed"
        );
        assert_eq!(s.deliver(stored(13), &limits), Err(NotQueued::Deferred));
        let mut st = s.lock();
        st.recovered();
        st.pop_pending();
        st.pop_pending();
        assert_eq!(
            st.refill(&limits),
            Some(13),
            "deferred again, refilled again"
        );
    }

    #[test]
    fn qos0_not_queued_offline() {
        let (s, limits) = (Session::new("c".into()), limits(10, 0));
        assert_eq!(
            s.deliver(delivery(QoS::AtMostOnce, "a"), &limits),
            Err(NotQueued::Offline)
        );
        assert!(s.deliver(delivery(QoS::AtLeastOnce, "a"), &limits).is_ok());
    }

    #[test]
    fn packet_ids_skip_inflight_and_zero() {
        let s = Session::new("c".into());
        let mut st = s.lock();
        st.traffic().last_packet_id = u16::MAX - 1;
        let a = st.next_packet_id().unwrap();
        assert_eq!(a.get(), u16::MAX);
        st.traffic().inflight.push_back(Inflight {
            packet_id: NonZeroU16::new(1).unwrap(),
            state: Awaiting::PubAck,
            delivery: delivery(QoS::AtLeastOnce, "x"),
        });
        assert_eq!(st.next_packet_id().unwrap().get(), 2);
    }
}

/// Every session, found by client id.
///
/// A set of the sessions themselves, looked up through each one's own client
/// id: an entry is one pointer, not a second copy of the id beside it. There
/// is one entry per client the broker knows, so this matters at scale.
#[derive(Debug, Default)]
pub struct Sessions(HashSet<ById>);

/// A session, hashed and compared by its client id.
#[derive(Debug)]
struct ById(Arc<Session>);

impl Borrow<str> for ById {
    fn borrow(&self) -> &str {
        self.0.client_id.as_str()
    }
}

impl Hash for ById {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.client_id.as_str().hash(state);
    }
}

impl PartialEq for ById {
    fn eq(&self, other: &Self) -> bool {
        self.0.client_id == other.0.client_id
    }
}

impl Eq for ById {}

impl Sessions {
    /// The session of `client_id`, and whether it existed; a new one (made
    /// by `create`) if not.
    pub fn get_or_create(
        &mut self,
        client_id: &str,
        create: impl FnOnce() -> Arc<Session>,
    ) -> (Arc<Session>, bool) {
        if let Some(found) = self.0.get(client_id) {
            return (found.0.clone(), true);
        }
        let session = create();
        self.0.insert(ById(session.clone()));
        (session, false)
    }

    /// The session of `client_id`, if there is one.
    pub fn get(&self, client_id: &str) -> Option<Arc<Session>> {
        self.0.get(client_id).map(|s| s.0.clone())
    }

    /// Removes `session`, if it is still the one registered under its id.
    pub fn remove(&mut self, session: &Arc<Session>) {
        let id = session.client_id.as_str();
        if self.0.get(id).is_some_and(|s| Arc::ptr_eq(&s.0, session)) {
            self.0.remove(id);
        }
    }

    /// Every session, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Session>> {
        self.0.iter().map(|s| &s.0)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
