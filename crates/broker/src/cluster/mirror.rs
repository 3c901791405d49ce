//! Persistent sessions kept in NATS, so that a session survives the death
//! of the node holding it.
//!
//! Each persistent session held here is mirrored in the key-value bucket
//! `<cluster>-mirrors` (key: its client id's key in the session directory):
//! its record (subscriptions, expiry, username) and its cursor in the
//! messages stream ([`records::Mirror`]): every stored message routed to
//! it below the cursor is completed. One task writes them: a session whose
//! subscriptions changed at once (its SUBACK waits for it,
//! [`crate::seams::Ownership::mirror`]), and every second each session whose
//! mirror changed since it was last written (its client acknowledged
//! messages, so its cursor moved).
//!
//! A node that claims a client id whose holder does not answer (it died)
//! takes the session from its mirror ([`recover`]): installs it, then
//! routes to it, from the messages stream, every stored message from its
//! cursor on (a stored message already queued, live, is not queued
//! twice). So the session loses no message acknowledged to its publisher;
//! its QoS 2 deliveries in flight are resent with their packet ids, and
//! those completed are not sent again (docs/cluster.md).

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use tern_codec::{ByteStr, QoS};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::lock::{Mutex, rank};
use crate::message::{Delivery, Message};
use crate::recover;
use crate::registry::Handed;
use crate::router::{self, Scope};
use crate::session::{Inflight, Moving, Session};
use crate::state::BrokerState;
use crate::store::records::{self, Kept};

use super::fabric::{Recent, stored_copy};
use super::follow::{Step, decode, fetch, read_stored};
use super::handover::{Directory, key};
use super::{ID_HEADER, tern_id};

/// How often the mirrors of sessions whose cursor moved are written.
const SWEEP: Duration = Duration::from_secs(1);
/// Writes in NATS at once.
const BATCH: usize = 256;
/// How soon a state that could not be written is tried again.
const RETRY: Duration = Duration::from_millis(100);

/// The requests to mirror a session now, shared by the ownership seam and
/// the task that writes them.
#[derive(Default)]
pub(super) struct Mirrors {
    requests: Mutex<Requests, { rank::FABRIC }>,
    written: watch::Sender<u64>,
    wake: Notify,
}

#[derive(Default)]
struct Requests {
    issued: u64,
    sessions: HashSet<ByteStr>,
}

impl Mirrors {
    /// Asks for `client_id`'s session to be written now; the ticket
    /// [`Mirrors::written`] reaches once it is.
    pub(super) fn request(&self, client_id: &ByteStr) -> u64 {
        let ticket = {
            let mut requests = self.requests.lock();
            requests.issued += 1;
            requests.sessions.insert(client_id.clone());
            requests.issued
        };
        self.wake.notify_one();
        ticket
    }

    pub(super) fn written(&self) -> u64 {
        *self.written.borrow()
    }

    pub(super) fn changes(&self) -> watch::Receiver<u64> {
        self.written.subscribe()
    }

    /// The sessions asked for, and the last ticket they cover.
    fn take(&self) -> (u64, HashSet<ByteStr>) {
        let mut requests = self.requests.lock();
        (requests.issued, std::mem::take(&mut requests.sessions))
    }
}

/// The task that writes the mirrors (see the module docs).
pub(super) struct Keeper {
    pub(super) bucket: kv::Store,
    /// For refills ([`refill`]).
    pub(super) jetstream: jetstream::Context,
    pub(super) cluster: String,
    pub(super) mirrors: Arc<Mirrors>,
    /// Where this node is in the messages stream (see [`Keeper::watermark`]).
    pub(super) recent: Arc<Mutex<Recent, { rank::FABRIC }>>,
}

impl Keeper {
    pub(super) async fn run(self, state: Weak<BrokerState>, stop: CancellationToken) {
        // What was last written of each session (a hash of its mirror).
        let mut last: HashMap<ByteStr, u64> = HashMap::new();
        let mut sweep = tokio::time::interval(SWEEP);
        loop {
            let requested = tokio::select! {
                () = stop.cancelled() => break,
                () = self.mirrors.wake.notified() => true,
                _ = sweep.tick() => false,
            };
            let Some(state) = state.upgrade() else {
                break;
            };
            if requested {
                let (ticket, sessions) = self.mirrors.take();
                let sessions = sessions
                    .iter()
                    .filter_map(|id| state.sessions().get(id))
                    .collect();
                let failed = self.write(sessions, &mut last, true).await;
                if failed.is_empty() {
                    self.mirrors.written.send_replace(ticket);
                } else {
                    // Not kept: what waits for them goes on waiting, and
                    // they are written again shortly.
                    for client_id in failed {
                        self.mirrors.request(&client_id);
                    }
                    tokio::time::sleep(RETRY).await;
                }
            } else {
                let sessions = state.session_handles();
                for session in &sessions {
                    self.refill(&state, session);
                }
                last.retain(|id, _| sessions.iter().any(|s| s.client_id == *id));
                self.write(sessions, &mut last, false).await;
            }
        }
    }

    /// Starts a refill of `session`'s deferred messages, if it has some and
    /// room for them ([`crate::session::SessionState::refill`]).
    fn refill(&self, state: &Arc<BrokerState>, session: &Arc<Session>) {
        let Some(from) = session.lock().refill(state.queue_limits()) else {
            return;
        };
        let replay = Replay {
            jetstream: self.jetstream.clone(),
            cluster: self.cluster.clone(),
            recent: self.recent.clone(),
            state: Arc::downgrade(state),
            session: session.clone(),
        };
        tokio::spawn(async move {
            let id = replay.session.client_id.clone();
            match replay.run(from, None).await {
                Ok(n) => {
                    tracing::debug!(client_id = %id, messages = n, from, "cluster: a session's deferred messages read again from the messages stream")
                }
                Err(e) => {
                    tracing::warn!(client_id = %id, error = %e, from, "cluster: a session's deferred messages could not be read again; they are lost for it")
                }
            }
        });
    }

    /// Below this place this node has routed every stored message to its
    /// sessions: how far the follower is ([`super::follow`]).
    fn watermark(&self) -> u64 {
        self.recent.lock().watermark()
    }

    /// Writes the mirrors of the persistent ones of `sessions` that changed
    /// since last written (all of them if `force`).
    /// The client ids of those that could not be written.
    async fn write(
        &self,
        sessions: Vec<Arc<Session>>,
        last: &mut HashMap<ByteStr, u64>,
        force: bool,
    ) -> Vec<ByteStr> {
        let watermark = self.watermark();
        let mut writes = Vec::new();
        for session in sessions {
            let mirror = {
                let mut st = session.lock();
                if st.expiry_secs == 0 {
                    continue;
                }
                st.mirror(watermark)
            };
            let record = records::encode_mirror(&mirror);
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            record.hash(&mut hasher);
            let hash = hasher.finish();
            if !force && last.get(&session.client_id) == Some(&hash) {
                continue;
            }
            last.insert(session.client_id.clone(), hash);
            writes.push((session.client_id.clone(), Bytes::from(record)));
        }
        let mut failed = Vec::new();
        for batch in writes.chunks(BATCH) {
            let puts = batch
                .iter()
                .map(|(client_id, record)| self.bucket.put(key(client_id), record.clone()));
            let results = futures_util::future::join_all(puts).await;
            for ((client_id, _), put) in batch.iter().zip(results) {
                if let Err(e) = put {
                    crate::throttled!(warn, "session mirror unwritable", error = %e, "cluster: a session's state could not be kept in NATS yet; trying again");
                    last.remove(client_id);
                    failed.push(client_id.clone());
                }
            }
        }
        failed
    }
}

/// Takes over `client_id`'s session from its mirror, its node being gone:
/// installs it here, then (in a task of its own) routes to it the stored
/// messages from its cursor on. The fabric's ticket for its subscriptions,
/// or `None` if it has no mirror.
pub(super) async fn recover(
    directory: &Directory,
    state: &Arc<BrokerState>,
    client_id: &ByteStr,
) -> Option<u64> {
    let Directory {
        mirrors: bucket,
        jetstream,
        cluster,
        client,
        recent,
        ..
    } = directory;
    let entry = match bucket.get(key(client_id)).await {
        Ok(entry) => entry?,
        Err(e) => {
            tracing::warn!(%client_id, error = %e, "cluster: the session's mirror could not be read; its client starts clean");
            return None;
        }
    };
    let mirror = match records::decode_mirror(&entry) {
        Ok(mirror) => mirror,
        Err(e) => {
            tracing::warn!(%client_id, error = %e, "cluster: the session's mirror is damaged; its client starts clean");
            return None;
        }
    };
    // Its QoS 2 deliveries in flight, resent with their packet ids.
    let mut inflight = Vec::new();
    for &(place, packet_id, awaiting) in &mirror.inflight {
        match fetch(jetstream, cluster, place).await {
            Some((message, _)) => inflight.push(Inflight {
                packet_id,
                state: awaiting,
                delivery: Delivery {
                    message,
                    qos: QoS::ExactlyOnce,
                    retain: false,
                    subscription_ids: Vec::new(),
                    seq: 0,
                },
            }),
            None => {
                tracing::warn!(%client_id, place, "cluster: a QoS 2 message in flight to a session taken over is no longer in the messages stream")
            }
        }
    }
    // Its client's QoS 2 ids whose messages were stored: known (a DUP of
    // one is acknowledged, not routed). One whose write may or may not
    // have been stored is not: its client, which got no PUBREC, sends it
    // again, and it is written under the same id (`storage::Storage::intend`).
    let placed: Vec<(u16, u64)> = mirror
        .inbound
        .iter()
        .filter_map(|(id, kept)| match kept {
            Kept::Stored(place) => Some((*id, *place)),
            Kept::Writing(_) => None,
        })
        .collect();
    let handed = Handed {
        record: mirror.session,
        traffic: Moving {
            inflight,
            inbound_qos2: placed.iter().map(|&(id, _)| id).collect(),
            inbound_kept: mirror.inbound,
            ..Moving::default()
        },
    };
    let interest = recover::adopt(state, client_id, handed);
    // What this node routes from now on reaches the session.
    let installed = recent.lock().now();
    let session = state.sessions().get(client_id)?;
    {
        let mut st = session.lock();
        let t = st.traffic();
        t.done = mirror.done.iter().copied().collect();
        t.floor = mirror.cursor;
        st.recovering(&mirror.done);
    }
    // Its client's QoS 2 messages that were stored and acknowledged (or
    // about to be): routed again, here and to the other nodes, which drop
    // them if they had them (by their ids), as this node does.
    for (_, place) in placed {
        if let Some((message, stored)) = fetch(jetstream, cluster, place).await {
            resend(state, client, recent, cluster, message, stored).await;
        }
    }
    let replay = Replay {
        jetstream: jetstream.clone(),
        cluster: cluster.to_owned(),
        recent: recent.clone(),
        state: Arc::downgrade(state),
        session,
    };
    let cursor = mirror.cursor;
    tokio::spawn(async move {
        let id = replay.session.client_id.clone();
        match replay.run(cursor, Some(installed)).await {
            Ok(n) => {
                tracing::info!(client_id = %id, messages = n, from = cursor, "cluster: took over a session whose node is gone, with the stored messages since its cursor")
            }
            Err(e) => {
                tracing::warn!(client_id = %id, error = %e, "cluster: a session taken over from a node that is gone could not get its stored messages")
            }
        }
    });
    Some(interest)
}

/// Routes the stored messages from a place on to one session, by its
/// subscriptions (`Scope::Session`): a session taken over ([`recover`]) or
/// refilled ([`Keeper::refill`]). One it has (queued, in flight, completed)
/// is not queued again ([`crate::session::SessionState::recovering`]).
struct Replay {
    jetstream: jetstream::Context,
    cluster: String,
    recent: Arc<Mutex<Recent, { rank::FABRIC }>>,
    state: Weak<BrokerState>,
    session: Arc<Session>,
}

impl Replay {
    /// Reads from place `from` to the stream's end (and a moment on), or
    /// until the session's queue is full: the rest stays deferred. Skips
    /// the messages this node routed to every session since `installed`
    /// ([`Recent::now`]), if given. How many were queued.
    async fn run(self, from: u64, installed: Option<u64>) -> Result<usize, String> {
        // The ids routed in this replay: a message written twice under one
        // id (`storage::Storage::intend`) once.
        let mut ids = HashSet::new();
        let replayed = read_stored(&self.jetstream, &self.cluster, from, |message, place| {
            let Some(state) = self.state.upgrade() else {
                return Step::Stop;
            };
            if let Some(id) = tern_id(message) {
                let routed = installed.is_some_and(|mark| self.recent.lock().seen_since(id, mark));
                if routed || !ids.insert(id.to_owned()) {
                    return Step::Passed;
                }
            }
            let Some(stored) = decode(message, place) else {
                return Step::Passed;
            };
            let full = self
                .session
                .lock()
                .is_full(stored.size(), state.queue_limits());
            if full {
                self.session.lock().defer(place);
                return Step::Stop;
            }
            let id = &self.session.client_id;
            match router::publish_remote(&state, stored, Scope::Session(id)).matched {
                0 => Step::Passed,
                _ => Step::Taken,
            }
        })
        .await;
        self.session.lock().recovered();
        replayed.map(|(n, _)| n)
    }
}

/// Routes a stored message again, here and to the other nodes (with its
/// id, by which a node that routed it already drops it).
async fn resend(
    state: &BrokerState,
    client: &async_nats::Client,
    recent: &Mutex<Recent, { rank::FABRIC }>,
    cluster: &str,
    message: Arc<Message>,
    stored: StreamMessage,
) {
    let Some(id) = stored.headers.get(ID_HEADER).map(|v| v.as_str().to_owned()) else {
        return;
    };
    if message.place.get().is_none() {
        return;
    }
    // Not sent again for shared groups: the node that died may not have
    // routed it, so they take it.
    let (subject, headers) = stored_copy(cluster, &message, &id, &[]);
    if recent.lock().first_time(&id) {
        router::publish_remote(state, message, Scope::Direct);
    }
    if let Err(e) = client
        .publish_with_headers(subject, headers, stored.payload)
        .await
    {
        crate::throttled!(warn, "cluster publish failed", error = %e, "cluster: a stored message was not sent to the other nodes live");
    }
}
