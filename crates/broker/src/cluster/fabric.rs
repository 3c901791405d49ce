//! The routing seam over NATS ([`NatsFabric`]): messages out, interest as
//! NATS subscriptions, and what arrives routed to this node's sessions.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use async_nats::Client;
use bytes::Bytes;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::lock::{Mutex, rank};
use crate::message::Message;
use crate::metrics::Dropped;
use crate::router::{self, Scope};
use crate::seams::{Fabric, Stored, Write};
use crate::state::BrokerState;
use crate::store::records::{self, Clock};

use super::stats::{self, Peers, stats_subject};
use super::storage::Writes;
use super::{Command, Outbox};
use super::{
    FIRST_HEADER, SEQUENCE_HEADER, headers, next_or_stop, note_first_place, number, sequence,
    subject, tern_id,
};

/// Message ids remembered to drop the second copy of a message that
/// matched two of this node's subscriptions. The copies arrive back to back
/// (the server sends one per subscription at once), so this is plenty.
const RECENT: usize = 65_536;

/// The header naming, once per value, a shared group (by its
/// [`subject::token`]) that the publishing node served itself.
pub(super) const SERVED_HEADER: &str = "Tern-Served";

/// The routing seam over NATS (see the module docs).
pub struct NatsFabric {
    pub(super) name: String,
    /// This run of this node, for message ids: random, so a restarted node
    /// numbering from 1 again is not taken for its former self.
    pub(super) origin: String,
    pub(super) next: AtomicU64,
    pub(super) commands: Outbox,
    pub(super) interest: Mutex<Interest, { rank::FABRIC }>,
    /// This node's name, which its `$SYS` figures carry.
    pub(super) node: String,
    pub(super) peers: Arc<Peers>,
    /// The last interest ticket issued (under the `interest` lock, with its
    /// commands, so tickets are applied in order).
    pub(super) issued: AtomicU64,
    /// The last interest ticket whose changes are in NATS.
    pub(super) applied: Arc<watch::Sender<u64>>,
    /// For its state: connected to NATS or not.
    pub(super) client: Client,
    /// QoS 1/2 messages on their way to the messages stream.
    pub(super) writes: Arc<Writes>,
}

/// What this node's sessions subscribe to, counted.
#[derive(Default)]
pub(super) struct Interest {
    /// Non-shared subscriptions per NATS subject pattern.
    pub(super) subjects: HashMap<String, usize>,
    /// Members on this node per shared group key (`{group}/{filter}`).
    pub(super) groups: HashMap<Arc<str>, usize>,
}

/// Counts one more (`present`) or one fewer holder of `key`; true if that
/// made it the first or the last.
pub(super) fn count<K: std::hash::Hash + Eq>(
    counts: &mut HashMap<K, usize>,
    key: K,
    present: bool,
) -> bool {
    if present {
        let n = counts.entry(key).or_insert(0);
        *n += 1;
        return *n == 1;
    }
    match counts.get_mut(&key) {
        Some(n) if *n > 1 => {
            *n -= 1;
            false
        }
        Some(_) => {
            counts.remove(&key);
            true
        }
        None => false,
    }
}

impl Fabric for NatsFabric {
    fn forward(&self, message: &Arc<Message>, served: &[Arc<str>]) {
        let subject = subject::topic_subject(&self.name, &message.topic);
        let record = records::encode_message(message, &Clock::now());
        let id = format!(
            "{}:{}",
            self.origin,
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        let headers = live_headers(&id, served);
        self.commands
            .message(Command::Publish(subject, headers, Bytes::from(record)));
    }

    /// A non-shared filter is one NATS subscription per subject per node; a
    /// shared group's members on this node are one member of the group's
    /// NATS queue group, which gives each message to one node.
    fn interest(&self, filter: &str, group: Option<&str>, present: bool) -> u64 {
        let subjects = subject::filter_subjects(&self.name, filter);
        let mut changes = Vec::new();
        // Held while the changes are queued, so that tickets are issued in
        // the order the publisher applies them.
        let mut interest = self.interest.lock();
        if let Some(group) = group {
            let key: Arc<str> = format!("{group}/{filter}").into();
            if count(&mut interest.groups, key.clone(), present) {
                changes.push(match present {
                    true => Command::Join(key, subjects),
                    false => Command::Leave(key),
                });
            }
        } else {
            for pattern in subjects {
                if count(&mut interest.subjects, pattern.clone(), present) {
                    changes.push(match present {
                        true => Command::Subscribe(pattern),
                        false => Command::Unsubscribe(pattern),
                    });
                }
            }
        }
        let added = present && !changes.is_empty();
        for change in changes {
            self.commands.control(change);
        }
        if !present {
            return 0;
        }
        let issued = self.issued.load(Ordering::Relaxed);
        // Nothing new: the same filter held by another session may still
        // be on its way, and with it every earlier change.
        if !added {
            return issued;
        }
        let ticket = issued + 1;
        self.commands.control(Command::Applied(ticket));
        self.issued.store(ticket, Ordering::Relaxed);
        ticket
    }

    fn applied(&self) -> u64 {
        *self.applied.borrow()
    }

    /// Connected to NATS, and its messages stream takes writes.
    fn available(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
            && !self.writes.failing()
    }

    fn stores(&self) -> bool {
        true
    }

    fn store(&self, write: Write) -> u64 {
        self.writes.issue(write)
    }

    fn stored(&self, ticket: u64) -> Stored {
        self.writes.stored(ticket)
    }

    fn stored_changes(&self) -> Option<watch::Receiver<u64>> {
        Some(self.writes.changes())
    }

    fn applied_changes(&self) -> Option<watch::Receiver<u64>> {
        Some(self.applied.subscribe())
    }

    fn statistics(
        &self,
        own: &[(&'static str, String)],
        interval: Duration,
    ) -> Vec<(String, String)> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(stats::NODE_HEADER, self.node.as_str());
        let figures = stats::encode(own, interval);
        let subject = stats_subject(&self.name);
        self.commands
            .message(Command::Publish(subject, headers, figures));
        self.peers.totals(own, Instant::now())
    }
}

/// The headers of a message sent live to the other nodes: its id, and the
/// shared groups the publishing node served.
fn live_headers(id: &str, served: &[Arc<str>]) -> async_nats::HeaderMap {
    let mut headers = headers(id);
    for key in served {
        headers.append(SERVED_HEADER, subject::token(key));
    }
    headers
}

/// How a stored message's live copy goes to the other nodes: its subject,
/// and headers with its id, the shared groups served, its place in the
/// stream (`Tern-Seq`) and first place if written twice (`Tern-First`).
pub(super) fn stored_copy(
    cluster: &str,
    message: &Message,
    id: &str,
    served: &[Arc<str>],
) -> (String, async_nats::HeaderMap) {
    let mut headers = live_headers(id, served);
    if let Some(place) = message.place.get() {
        headers.insert(SEQUENCE_HEADER, place.to_string().as_str());
    }
    if let Some(first) = message.first_place.get() {
        headers.insert(FIRST_HEADER, first.to_string().as_str());
    }
    (subject::topic_subject(cluster, &message.topic), headers)
}

/// Which of this node's subscriptions a NATS subscription's messages are for.
#[derive(Clone)]
pub(super) enum Serve {
    /// The non-shared ones: the first copy of each message.
    Direct(Arc<Mutex<Recent, { rank::FABRIC }>>),
    /// The shared group with this key and queue name, which NATS picked
    /// this node to serve, unless the publishing node served it itself.
    Group(Arc<str>, String),
}

impl Serve {
    /// The scope a received message is routed in, `None` if in none.
    fn scope(&self, message: &async_nats::Message) -> Option<Scope<'_>> {
        match self {
            Serve::Direct(recent) => {
                let mut recent = recent.lock();
                // A message written twice is known at either place.
                let first = number(message.headers.as_ref(), FIRST_HEADER);
                for place in sequence(message).into_iter().chain(first) {
                    recent.arrived(place);
                }
                match tern_id(message) {
                    Some(id) if !recent.first_time(id) => None,
                    _ => Some(Scope::Direct),
                }
            }
            Serve::Group(key, queue) => {
                let served = message.headers.as_ref().is_some_and(|h| {
                    h.get_all(SERVED_HEADER)
                        .any(|v| v.as_str() == queue.as_str())
                });
                (!served).then_some(Scope::Group(key))
            }
        }
    }
}

/// Routes what arrives on one NATS subscription to this node's sessions.
pub(super) async fn receive(
    mut subscriber: async_nats::Subscriber,
    state: Weak<BrokerState>,
    serve: Serve,
    stop: CancellationToken,
) {
    while let Some(message) = next_or_stop(&mut subscriber, &stop).await {
        let Some(state) = state.upgrade() else {
            break;
        };
        let Some(scope) = serve.scope(&message) else {
            continue;
        };
        match records::decode_message(&message.payload, &Clock::now()) {
            Ok(Some(decoded)) => {
                if let Some(place) = sequence(&message) {
                    let _ = decoded.place.set(place);
                }
                note_first_place(message.headers.as_ref(), &decoded);
                let routed = router::publish_remote(&state, decoded, scope);
                // The group's last member here left while NATS picked us.
                if matches!(scope, Scope::Group(_)) && routed.matched == 0 {
                    state.metrics.drop(Dropped::NoMember);
                }
            }
            // Expired on the way.
            Ok(None) => {}
            Err(e) => {
                crate::throttled!(warn, "cluster message unreadable", subject = %message.subject, error = %e, "cluster: a message from another node could not be read; dropped")
            }
        }
    }
    let _ = subscriber.unsubscribe().await;
}

/// The ids of the messages most recently routed here, oldest first; and
/// the places of the stored ones routed here that the follower
/// ([`super::follow`]) has not passed yet.
#[derive(Default)]
pub(super) struct Recent {
    /// Each id with when it was first seen (a count of first sightings).
    seen: HashMap<String, u64>,
    order: VecDeque<String>,
    sightings: u64,
    /// Places of stored messages routed here (live copies, and this node's
    /// own) above `followed`.
    live: BTreeSet<u64>,
    /// The follower has decided on every stored message up to this place
    /// (at first, the stream's end when this node joined).
    followed: u64,
}

/// At most this many places of live copies wait for the follower, which
/// passes them a moment after they arrived (beyond it, one it has not
/// reached when this is full is routed twice here if it is not known by
/// its id any more).
const LIVE: usize = 1 << 20;

impl Recent {
    /// Following the messages stream after place `end`.
    pub(super) fn from(end: u64) -> Recent {
        Recent {
            followed: end,
            ..Recent::default()
        }
    }

    /// Notes that the stored message at `place` was routed here.
    pub(super) fn arrived(&mut self, place: u64) {
        if place > self.followed && self.live.len() < LIVE {
            self.live.insert(place);
        }
    }

    /// Whether the stored message at `place` was routed here (and the
    /// follower has not passed it yet).
    pub(super) fn routed_here(&self, place: u64) -> bool {
        self.live.contains(&place)
    }

    /// The follower reaches the stored message at `place`, with its id if
    /// it may be routed from the stream: whether to route it (neither its
    /// live copy, nor any copy with its id, was routed here).
    pub(super) fn follow(&mut self, place: u64, id: Option<&str>) -> bool {
        if self.live.remove(&place) {
            return false;
        }
        id.is_some_and(|id| self.first_time(id))
    }

    /// The follower has passed the stored message at `place`: decided on,
    /// and routed if it was to be (only then may a session's cursor pass
    /// it).
    pub(super) fn passed(&mut self, place: u64) {
        self.followed = self.followed.max(place);
        // A live copy that came after `follow`, or of one not followed
        // here (its subscription went meanwhile).
        while self.live.first().is_some_and(|&p| p <= self.followed) {
            self.live.pop_first();
        }
    }

    /// Below this place every stored message was routed here (or was
    /// decided on: not for this node's subscriptions, or its own).
    pub(super) fn watermark(&self) -> u64 {
        self.followed + 1
    }

    /// Whether `id` was not seen yet (and remembers it).
    pub(super) fn first_time(&mut self, id: &str) -> bool {
        if self.seen.contains_key(id) {
            return false;
        }
        if self.order.len() == RECENT
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        self.sightings += 1;
        self.seen.insert(id.to_owned(), self.sightings);
        self.order.push_back(id.to_owned());
        true
    }

    /// A mark of now, for [`Recent::seen_since`].
    pub(super) fn now(&self) -> u64 {
        self.sightings
    }

    /// Whether `id` was first seen after `mark` ([`Recent::now`]).
    pub(super) fn seen_since(&self, id: &str, mark: u64) -> bool {
        self.seen.get(id).is_some_and(|&at| at > mark)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_copy_is_let_through_only_once_its_id_is_forgotten() {
        let mut recent = Recent::default();
        assert!(recent.first_time("a:1"));
        assert!(!recent.first_time("a:1"));
        assert!(recent.first_time("b:1"), "another origin");
        for n in 2..=RECENT {
            recent.first_time(&format!("a:{n}"));
        }
        assert_eq!(recent.order.len(), RECENT);
        assert!(recent.first_time("a:1"), "forgotten after RECENT others");
    }

    #[test]
    fn the_follower_routes_a_stored_message_only_if_no_copy_of_it_was_routed() {
        let mut recent = Recent::from(40);
        recent.arrived(39);
        assert!(!recent.routed_here(39), "passed at join: not kept");
        assert_eq!(recent.watermark(), 41);
        recent.arrived(42);
        assert!(recent.routed_here(42));
        assert!(recent.follow(41, Some("a:1")), "no copy arrived");
        assert_eq!(recent.watermark(), 41, "not passed before it is routed");
        recent.passed(41);
        assert!(!recent.follow(42, Some("a:2")), "its live copy arrived");
        assert!(!recent.routed_here(42), "forgotten once reached");
        recent.passed(42);
        assert!(recent.first_time("b:1"));
        assert!(
            !recent.follow(43, Some("b:1")),
            "a copy with its id arrived"
        );
        recent.passed(43);
        assert!(!recent.follow(44, None), "not to be routed from the stream");
        recent.arrived(44);
        recent.passed(44);
        assert!(
            !recent.routed_here(44),
            "a copy that came meanwhile forgotten"
        );
        assert_eq!(recent.watermark(), 45);
        recent.arrived(44);
        assert!(!recent.routed_here(44), "late: the follower passed it");
    }
}
