//! Sessions that move between nodes: a client that reconnects to another
//! node finds its session there.
//!
//! The cluster keeps a directory of which node holds each session: the
//! JetStream key-value bucket `<cluster>-sessions` (key: the SHA-256 of the
//! client id in hex, so that any client id is a valid key; value: the
//! holding node's name, unique in its cluster, so that a node restarted
//! with its data directory still answers for the sessions it restored). A
//! node taking a client id ([`Directory::take`], the ownership seam's
//! claim) looks it up; if another node holds the session, it asks that
//! node for it on the subject `<cluster>.hand.<node>`; the
//! holder closes its connection as a takeover does (MQTT 5 DISCONNECT 0x8E)
//! and answers with the session ([`registry::hand_over`]: subscriptions,
//! expiry, pending will, in-flight and queued messages, QoS 2 state), which
//! this node installs ([`recover::adopt`]) before the client attaches. The
//! directory then names this node, and the entry goes when the session
//! ends here.
//!
//! A holder that does not answer (it died, or is cut off from NATS): the
//! session is taken over from its state kept in NATS ([`mirror`]).
//!
//! The same subject tells a starting node whether its name is taken: a
//! request without a client id is answered by a live node of that name.

use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use async_nats::Client;
use async_nats::client::RequestErrorKind;
use async_nats::jetstream::kv;
use bytes::Bytes;
use tern_codec::ByteStr;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::lock::{Mutex, rank};
use crate::message::Delivery;
use crate::recover;
use crate::registry::{self, Handed};
use crate::session::{Inflight, Moving};
use crate::state::BrokerState;
use crate::store::records::{self, Clock, HandedEntry, Handover, QueueEntry, RecordError};

use super::fabric::Recent;
use super::mirror::{self, Mirrors};
use super::{next_or_stop, subject};

/// How long a node waits for another to hand a session over: the holder
/// waits up to 5 s for its connection to close.
const ASK_TIMEOUT: Duration = Duration::from_secs(8);

/// The subject the node `node` answers hand-over requests on.
pub fn subject(cluster: &str, node: &str) -> String {
    format!("{cluster}.hand.{}", subject::token(node))
}

/// The answer of a live node to a request without a client id.
const HERE: &[u8] = b"here";

/// Whether a live node of the cluster already has the name `node`.
pub async fn name_taken(client: &Client, cluster: &str, node: &str) -> bool {
    let asking = client.request(subject(cluster, node), Bytes::new());
    // No node of that name: NATS answers "no responders" at once.
    matches!(tokio::time::timeout(Duration::from_secs(2), asking).await, Ok(Ok(answer)) if *answer.payload == *HERE)
}

/// A client id's key in the directory (and in the wills bucket).
pub fn key(client_id: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, client_id.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// What a node needs to take sessions from other nodes.
#[derive(Clone)]
pub struct Directory {
    pub client: Client,
    pub jetstream: async_nats::jetstream::Context,
    pub sessions: kv::Store,
    /// The state of persistent sessions, by the same keys ([`mirror`]).
    pub mirrors: kv::Store,
    /// Asks for a session's state to be written there.
    pub(super) mirror: Arc<Mirrors>,
    /// The ids of the messages routed here lately.
    pub(super) recent: Arc<Mutex<Recent, { rank::FABRIC }>>,
    pub cluster: String,
    /// This node's name.
    pub node: String,
    /// Set once the broker's state exists.
    pub state: Arc<OnceLock<Weak<BrokerState>>>,
}

impl Directory {
    /// Makes this node the holder of `client_id`'s session (for a
    /// persistent one; else only ends another node's hold), taking the
    /// session from the node that held it, if another did.
    pub async fn take(self, client_id: ByteStr, persistent: bool) {
        let key = key(&client_id);
        let holder = match self.sessions.entry(key.as_str()).await {
            Ok(Some(entry)) if entry.operation == kv::Operation::Put => Some(entry.value),
            Ok(_) => None,
            Err(e) => {
                crate::throttled!(warn, "session directory unreadable", error = %e, "cluster: the session directory could not be read; a session held by another node is not moved here");
                None
            }
        };
        let ours = holder
            .as_ref()
            .is_some_and(|h| **h == *self.node.as_bytes());
        let elsewhere = holder.filter(|_| !ours);
        if let Some(holder) = &elsewhere {
            self.ask(holder, &client_id).await;
        } else if ours && !self.holds(&client_id) {
            // Ours, but gone from here: this node restarted without it.
            self.take_over(&client_id).await;
        }
        let written = if persistent {
            self.sessions
                .put(key.as_str(), Bytes::from(self.node.clone()))
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        } else if elsewhere.is_some() {
            self.sessions
                .delete(key.as_str())
                .await
                .map_err(|e| e.to_string())
        } else {
            Ok(())
        };
        if let Err(error) = written {
            crate::throttled!(warn, "session directory unwritable", %error, "cluster: the session directory could not be written; another node will not find this session");
        }
    }

    /// Asks `holder` for `client_id`'s session and installs what it hands
    /// over.
    async fn ask(&self, holder: &[u8], client_id: &ByteStr) {
        let Ok(holder) = std::str::from_utf8(holder) else {
            return;
        };
        let subject = subject(&self.cluster, holder);
        let payload = Bytes::copy_from_slice(client_id.as_bytes());
        let answer = tokio::time::timeout(ASK_TIMEOUT, self.client.request(subject, payload));
        let handed = match answer.await {
            // The holder runs but has not got it (it restarted without it).
            Ok(Ok(answer)) if answer.payload.is_empty() => {
                self.take_over(client_id).await;
                return;
            }
            Ok(Ok(answer)) => decode(&answer.payload).map_err(|e| e.to_string()),
            Ok(Err(e)) if e.kind() == RequestErrorKind::NoResponders => {
                tracing::info!(%client_id, node = holder, "cluster: the node holding this client's session is not running; taking the session over from its state kept in NATS");
                self.take_over(client_id).await;
                return;
            }
            Ok(Err(e)) => Err(format!("the request failed: {e}")),
            Err(_) => Err(format!("no answer within {ASK_TIMEOUT:?}")),
        };
        match (handed, self.state.get().and_then(Weak::upgrade)) {
            (Ok(handed), Some(state)) => {
                let interest = recover::adopt(&state, client_id, handed);
                self.mirror.request(client_id);
                until_applied(&state, interest).await;
            }
            (Ok(_), None) => {}
            (Err(e), _) => {
                tracing::warn!(%client_id, node = holder, error = %e, "cluster: the node holding this client's session did not hand it over; the session stays there")
            }
        }
    }

    /// Whether this node has `client_id`'s session.
    fn holds(&self, client_id: &str) -> bool {
        let state = self.state.get().and_then(Weak::upgrade);
        state.is_some_and(|state| state.sessions().get(client_id).is_some())
    }

    /// Drops the sessions this node restored from its data file that
    /// another node took over while it was down (their clients reconnected
    /// there): the directory names that node.
    pub async fn forget_moved(self) {
        let Some(state) = self.state.get().and_then(Weak::upgrade) else {
            return;
        };
        let restored: Vec<ByteStr> = state
            .sessions()
            .iter()
            .map(|session| session.client_id.clone())
            .collect();
        let mut dropped = 0;
        for client_id in restored {
            let holder = match self.sessions.entry(key(&client_id).as_str()).await {
                Ok(Some(entry)) if entry.operation == kv::Operation::Put => entry.value,
                _ => continue,
            };
            if *holder != *self.node.as_bytes()
                && registry::hand_over(&state, &client_id).await.is_some()
            {
                dropped += 1;
            }
        }
        if dropped > 0 {
            tracing::info!(
                sessions = dropped,
                "cluster: dropped the sessions restored here that other nodes took over meanwhile"
            );
        }
    }

    /// Takes `client_id`'s session over from its mirror, the node holding
    /// it being gone (or without it).
    async fn take_over(&self, client_id: &ByteStr) {
        let Some(state) = self.state.get().and_then(Weak::upgrade) else {
            return;
        };
        let recovered = mirror::recover(self, &state, client_id);
        if let Some(interest) = recovered.await {
            self.mirror.request(client_id);
            until_applied(&state, interest).await;
        }
    }

    /// The session of `client_id` ended here: the directory forgets it, if
    /// it still names this node.
    pub async fn forget(self, client_id: ByteStr) {
        let key = key(&client_id);
        let Ok(Some(entry)) = self.sessions.entry(key.as_str()).await else {
            return;
        };
        if entry.operation == kv::Operation::Put && *entry.value == *self.node.as_bytes() {
            // Refused if another node took it meanwhile: then it is theirs.
            let deleted = self
                .sessions
                .delete_expect_revision(key.as_str(), Some(entry.revision))
                .await;
            if deleted.is_ok() {
                let _ = self.mirrors.delete(key.as_str()).await;
            }
        }
    }
}

/// Waits until the fabric routes to a session's subscriptions installed
/// here: the CONNACK promises them, as a SUBACK does.
async fn until_applied(state: &BrokerState, interest: u64) {
    if let Some(mut applied) = state.fabric.applied_changes() {
        let routed = applied.wait_for(|&t| t >= interest);
        let _ = tokio::time::timeout(ASK_TIMEOUT, routed).await;
    }
}

/// Answers other nodes' requests for sessions this node holds.
pub(super) async fn serve(
    mut requests: async_nats::Subscriber,
    client: Client,
    recent: Arc<Mutex<Recent, { rank::FABRIC }>>,
    state: Weak<BrokerState>,
    tasks: TaskTracker,
    stop: CancellationToken,
) {
    while let Some(request) = next_or_stop(&mut requests, &stop).await {
        let (Some(reply), Some(state)) = (request.reply, state.upgrade()) else {
            continue;
        };
        if request.payload.is_empty() {
            let _ = client.publish(reply, Bytes::from_static(HERE)).await;
            continue;
        }
        let Ok(client_id) = String::from_utf8(request.payload.to_vec()) else {
            continue;
        };
        let (client, recent) = (client.clone(), recent.clone());
        // Each waits for its own connection to close, not for the others.
        tasks.spawn(async move {
            let handed = registry::hand_over(&state, &client_id).await;
            if handed.is_some() {
                tracing::info!(%client_id, "session handed over to another node, where its client connected");
            }
            let watermark = recent.lock().watermark();
            let payload = handed.map_or_else(Bytes::new, |h| Bytes::from(encode(h, watermark)));
            if let Err(e) = client.publish(reply, payload).await {
                tracing::warn!(%client_id, error = %e, "cluster: a session handed over could not be sent; its client starts clean");
            }
        });
    }
}

/// A session as it travels, from a node whose follower is at `watermark`.
fn encode(handed: Handed, watermark: u64) -> Vec<u8> {
    let clock = Clock::now();
    let entry = |delivery: &Delivery, sent| {
        let queued = QueueEntry {
            message_id: 0,
            qos: delivery.qos,
            retain: delivery.retain,
            subscription_ids: delivery.subscription_ids.clone(),
            sent,
        };
        let place = |p: Option<&u64>| p.copied().unwrap_or(0);
        HandedEntry {
            queued,
            message: records::encode_message(&delivery.message, &clock),
            places: [
                place(delivery.message.place.get()),
                place(delivery.message.first_place.get()),
            ],
        }
    };
    let Handed { record, traffic } = handed;
    let inflight = traffic
        .inflight
        .iter()
        .map(|i| entry(&i.delivery, Some((i.packet_id, i.state))));
    let pending = traffic.pending.iter().map(|d| entry(d, None));
    records::encode_handover(&Handover {
        session: record,
        inbound_qos2: traffic.inbound_qos2,
        inbound_kept: traffic.inbound_kept,
        entries: inflight.chain(pending).collect(),
        floor: traffic.floor,
        // This node's follower may not have routed it every stored message
        // from where it is on: the node it goes to reads those again.
        overflow: Some(traffic.overflow.map_or(watermark, |o| o.min(watermark))),
        done: traffic.done,
    })
}

/// A session as it arrived; messages that expired on the way are dropped.
fn decode(record: &[u8]) -> Result<Handed, RecordError> {
    let clock = Clock::now();
    let handover = records::decode_handover(record)?;
    let mut traffic = Moving {
        inbound_qos2: handover.inbound_qos2,
        inbound_kept: handover.inbound_kept,
        floor: handover.floor,
        overflow: handover.overflow,
        done: handover.done,
        ..Moving::default()
    };
    for handed in handover.entries {
        let Some(message) = records::decode_message(&handed.message, &clock)? else {
            continue;
        };
        let [place, first] = handed.places;
        if place != 0 {
            let _ = message.place.set(place);
        }
        if first != 0 {
            let _ = message.first_place.set(first);
        }
        let entry = handed.queued;
        let delivery = Delivery {
            message,
            qos: entry.qos,
            retain: entry.retain,
            subscription_ids: entry.subscription_ids,
            seq: 0,
        };
        match entry.sent {
            Some((packet_id, state)) => traffic.inflight.push(Inflight {
                packet_id,
                state,
                delivery,
            }),
            None => traffic.pending.push(delivery),
        }
    }
    Ok(Handed {
        record: handover.session,
        traffic,
    })
}
