//! Clustering over NATS: several Tern nodes as one broker (docs/cluster.md).
//!
//! One module per part:
//! - `join`: connects to NATS at start and refuses to go on without it
//!   (unreachable, older than 2.11, without JetStream, or a node name in
//!   use), and creates the cluster's streams and buckets;
//! - `fabric`: the routing seam ([`crate::seams::Fabric`]) over NATS core
//!   pub/sub. A message a client publishes here is published once on the
//!   subject its topic maps to ([`subject`]); a subscription here makes the
//!   node subscribe to its filter's subjects (one NATS subscription per
//!   subject per node, however many sessions hold it; the SUBACK waits for
//!   NATS to have it); what arrives is routed to this node's sessions (a
//!   node never hears its own messages back: no-echo; of the copies a
//!   message matching several subscriptions brings, the first is routed).
//!   A shared group with members here makes the node one member of the
//!   group's NATS queue group, so one node gets each message; the
//!   publishing node serves its own members and says so (`Tern-Served`);
//! - `ownership`: the session-ownership seam. A client connecting here
//!   claims its client id (other nodes close their connection with it,
//!   MQTT 5: 0x8E), takes its session from the node holding it
//!   ([`handover`]), and has its will kept in NATS ([`wills`]);
//! - `publisher`: the task that owns the connection's outgoing side, fed
//!   in order through one outbox;
//! - [`storage`]: QoS 1/2 messages stored in the cluster's messages stream
//!   on a majority of NATS servers before they are routed and acknowledged;
//!   `follow`: every node follows that stream a moment behind, and routes
//!   the stored messages whose live copies did not arrive;
//!   `mirror`: each persistent session's state and position in that stream,
//!   kept in NATS, from which another node takes it over if its node dies;
//! - [`retained`]: retained messages in a JetStream stream every node
//!   follows; [`stats`]: `$SYS/cluster/…` totals.
//!
//! A session lives on one node at a time. QoS 0 messages travel between
//! nodes live only (at most once, NATS core); QoS 1/2 messages live and
//! through the messages stream.

mod fabric;
mod follow;
pub mod handover;
mod join;
mod mirror;
mod ownership;
mod publisher;
pub mod retained;
pub mod stats;
pub mod storage;
pub mod subject;
pub mod wills;

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use async_nats::Client;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::lock::{Mutex, rank};
use crate::metrics::Dropped;
use crate::retained::LocalRetained;
use crate::state::BrokerState;

use self::handover::Directory;
use self::retained::ClusterRetained;
use self::stats::Peers;
use self::wills::Keep;

pub use self::fabric::NatsFabric;
use self::fabric::{Interest, Recent};
use self::follow::Follower;
pub use self::join::{ClusterError, join};
use self::mirror::{Keeper, Mirrors};
pub use self::ownership::NatsOwnership;
use self::ownership::{claims_subject, watch_claims};
use self::publisher::Publisher;
use self::stats::watch_stats;
use self::storage::{Storage, Writes};

/// Messages waiting to be published to NATS; beyond this, dropped and
/// counted (the connection is down, or NATS is slower than the clients).
const OUTBOX: usize = 65_536;

/// The way into the task that owns the NATS connection, shared by the
/// seams. Never waits. Messages go through a bounded queue: when NATS does
/// not keep up, one that does not fit is dropped, logged and counted in
/// `$SYS/broker/publish/messages/dropped`. Everything else (subscription
/// changes, claims, retained changes) goes through its own queue, which the
/// task serves first and which never drops: losing one would leave a
/// subscription unserved or a client id held twice.
#[derive(Clone)]
struct Outbox {
    messages: mpsc::Sender<Command>,
    control: mpsc::UnboundedSender<Command>,
    /// For the drop count, once the broker's state exists.
    state: Arc<OnceLock<Weak<BrokerState>>>,
}

impl Outbox {
    /// Queues a message for other nodes; false if it was dropped.
    fn message(&self, command: Command) -> bool {
        let sent = self.messages.try_send(command).is_ok();
        if !sent {
            if let Some(state) = self.state.get().and_then(Weak::upgrade) {
                state.metrics.drop(Dropped::ClusterOutbox);
            }
            crate::throttled!(
                warn,
                "cluster outbox full",
                "cluster: NATS is not keeping up (or unreachable): a message for other nodes was dropped (counted in $SYS/broker/publish/messages/dropped)"
            );
        }
        sent
    }

    /// Queues a change the cluster must not miss.
    fn control(&self, command: Command) {
        // Fails only once the publisher has stopped (shutdown).
        let _ = self.control.send(command);
    }
}

/// What the seams ask of the task that owns the NATS connection.
enum Command {
    /// Subject, headers, payload: a message, or a client id claimed.
    Publish(String, async_nats::HeaderMap, Bytes),
    /// Subject in the retained stream, origin, the retained record.
    Retain(String, String, Bytes),
    Subscribe(String),
    Unsubscribe(String),
    /// A shared group's key and its subjects: join its queue group.
    Join(Arc<str>, Vec<String>),
    /// A shared group's key: leave its queue group.
    Leave(Arc<str>),
    /// Every change before this one is in NATS: mark this interest ticket
    /// applied.
    Applied(u64),
}

/// The header carrying a message's origin and number: `ORIGIN:SEQ`.
const ID_HEADER: &str = "Tern-Id";
/// The header carrying a stored message's sequence in the messages stream.
const SEQUENCE_HEADER: &str = "Tern-Seq";
/// The header carrying the first place of a message written twice
/// ([`crate::message::Message::first_place`]), on its second copy in the
/// stream and its live copy.
const FIRST_HEADER: &str = "Tern-First";

/// A joined cluster: the NATS connection, before the broker runs.
pub struct Cluster {
    client: Client,
    jetstream: async_nats::jetstream::Context,
    /// Claims of client ids by other nodes, subscribed at join so that no
    /// claim made once this node runs is missed.
    claims: async_nats::Subscriber,
    /// Other nodes' `$SYS` figures, subscribed at join likewise.
    stats: async_nats::Subscriber,
    /// Other nodes' requests for sessions held here.
    handovers: async_nats::Subscriber,
    /// Which node holds each session.
    sessions: async_nats::jetstream::kv::Store,
    /// The wills of every node's clients.
    wills: async_nats::jetstream::kv::Store,
    /// The state of every persistent session ([`mirror`]).
    mirrors: async_nats::jetstream::kv::Store,
    /// This run of this node: random, so a restarted node is not taken for
    /// its former self.
    origin: String,
    name: String,
    node: String,
    /// How long a QoS 1/2 message may wait to be stored.
    write_timeout: Duration,
    /// A signal each time the NATS link is (re)established, from its
    /// client's events.
    reconnects: mpsc::UnboundedReceiver<()>,
    /// The place of the messages stream's last message at join.
    stream_end: u64,
}

impl Cluster {
    /// The routing and retained-storage seams over this connection (the
    /// latter over `local`, this node's copy), and what runs them: call
    /// [`Routing::start`] once the broker's state exists.
    pub fn seams(
        self,
        local: Arc<LocalRetained>,
    ) -> (NatsFabric, NatsOwnership, ClusterRetained, Routing) {
        let (messages, inbox) = mpsc::channel(OUTBOX);
        let (control, changes) = mpsc::unbounded_channel();
        let state = Arc::new(OnceLock::new());
        let commands = Outbox {
            messages,
            control,
            state: state.clone(),
        };
        let origin = self.origin;
        let peers = Arc::new(Peers::default());
        let applied = Arc::new(watch::channel(0).0);
        let (writes, queue) = Writes::new();
        let recent = Arc::new(Mutex::new(Recent::from(self.stream_end)));
        let mirrors = Arc::new(Mirrors::default());
        let keeper = Keeper {
            bucket: self.mirrors.clone(),
            jetstream: self.jetstream.clone(),
            cluster: self.name.clone(),
            mirrors: mirrors.clone(),
            recent: recent.clone(),
        };
        let follower = Follower {
            jetstream: self.jetstream.clone(),
            cluster: self.name.clone(),
            origin: origin.clone(),
            recent: recent.clone(),
            own_patience: self.write_timeout * 2,
        };
        let directory = Directory {
            client: self.client.clone(),
            jetstream: self.jetstream.clone(),
            sessions: self.sessions,
            mirrors: self.mirrors.clone(),
            mirror: mirrors.clone(),
            recent: recent.clone(),
            cluster: self.name.clone(),
            node: self.node.clone(),
            state,
        };
        let fabric = NatsFabric {
            name: self.name.clone(),
            origin: origin.clone(),
            next: AtomicU64::new(1),
            commands: commands.clone(),
            interest: Mutex::new(Interest::default()),
            node: self.node.clone(),
            peers: peers.clone(),
            issued: AtomicU64::new(0),
            applied: applied.clone(),
            client: self.client.clone(),
            writes: writes.clone(),
        };
        let (keep, kept) = mpsc::channel(OUTBOX);
        let ownership = NatsOwnership {
            subject: claims_subject(&self.name),
            origin: origin.clone(),
            commands: commands.clone(),
            directory: directory.clone(),
            wills: self.wills.clone(),
            keep,
        };
        let retained = ClusterRetained {
            local: local.clone(),
            cluster: self.name.clone(),
            origin: origin.clone(),
            commands,
        };
        let storage = Storage {
            jetstream: self.jetstream.clone(),
            client: self.client.clone(),
            barrier: format!("{}.barrier", self.name),
            cluster: self.name.clone(),
            origin: origin.clone(),
            writes,
            queue,
            timeout: self.write_timeout,
            recent: recent.clone(),
            mirrors: mirrors.clone(),
            bucket: self.mirrors.clone(),
        };
        let routing = Routing {
            storage,
            follower,
            stream_end: self.stream_end,
            reconnects: self.reconnects,
            keeper,
            recent,
            client: self.client,
            jetstream: self.jetstream,
            claims: self.claims,
            stats: self.stats,
            handovers: self.handovers,
            directory,
            peers,
            applied,
            wills: self.wills,
            kept,
            inbox,
            changes,
            name: self.name,
            node: self.node,
            origin,
            local,
        };
        (fabric, ownership, retained, routing)
    }
}

/// The task side: owns the NATS connection and this node's subscriptions.
pub struct Routing {
    /// Stores QoS 1/2 messages before they are routed.
    storage: Storage,
    /// Routes the stored messages whose live copies did not arrive.
    follower: Follower,
    /// The place of the messages stream's last message at join.
    stream_end: u64,
    /// A signal each time the NATS link is (re)established.
    reconnects: mpsc::UnboundedReceiver<()>,
    /// Keeps the persistent sessions' state in NATS.
    keeper: Keeper,
    /// The ids of the messages routed here lately.
    recent: Arc<Mutex<Recent, { rank::FABRIC }>>,
    client: Client,
    jetstream: async_nats::jetstream::Context,
    claims: async_nats::Subscriber,
    stats: async_nats::Subscriber,
    handovers: async_nats::Subscriber,
    directory: Directory,
    peers: Arc<Peers>,
    applied: Arc<watch::Sender<u64>>,
    wills: async_nats::jetstream::kv::Store,
    /// The wills this node keeps or forgets, in order.
    kept: mpsc::Receiver<(String, Keep)>,
    inbox: mpsc::Receiver<Command>,
    changes: mpsc::UnboundedReceiver<Command>,
    name: String,
    node: String,
    origin: String,
    local: Arc<LocalRetained>,
}

impl Routing {
    /// Runs until shutdown: publishes what the fabric forwards, keeps one
    /// NATS subscription per subject pattern, and routes what arrives to
    /// this node's sessions. Holds the state weakly: the state holds the
    /// fabric.
    /// The receiver resolves once this node has every retained message the
    /// cluster held when it started.
    pub fn start(
        self,
        state: &Arc<BrokerState>,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> oneshot::Receiver<()> {
        let (ready, caught_up) = oneshot::channel();
        tasks.spawn(retained::follow(
            self.jetstream.clone(),
            self.name.clone(),
            self.origin.clone(),
            self.local.clone(),
            ready,
            shutdown.clone(),
        ));
        let weak = Arc::downgrade(state);
        let Routing {
            storage,
            follower,
            stream_end,
            reconnects,
            keeper,
            recent,
            client,
            jetstream,
            claims,
            stats,
            handovers,
            directory,
            peers,
            applied,
            wills,
            kept,
            inbox,
            changes,
            name,
            node,
            origin,
            ..
        } = self;
        let keeping = wills::keep(wills.clone(), node.clone(), kept, shutdown.clone());
        tasks.spawn(keeping);
        let watching = wills::watch(
            wills,
            client.clone(),
            name.clone(),
            node.clone(),
            weak.clone(),
            tasks.clone(),
            shutdown.clone(),
        );
        tasks.spawn(watching);
        tasks.spawn(watch_claims(claims, origin, weak.clone(), shutdown.clone()));
        tasks.spawn(watch_stats(stats, peers, shutdown.clone()));
        tasks.spawn(storage.run(weak.clone(), shutdown.clone()));
        tasks.spawn(follower.run(stream_end, reconnects, weak.clone(), shutdown.clone()));
        tasks.spawn(keeper.run(weak.clone(), shutdown.clone()));
        let _ = directory.state.set(weak.clone());
        tasks.spawn(directory.clone().forget_moved());
        let serving = handover::serve(
            handovers,
            client.clone(),
            recent.clone(),
            weak.clone(),
            tasks.clone(),
            shutdown.clone(),
        );
        tasks.spawn(serving);
        let publisher = Publisher {
            recent,
            client,
            jetstream,
            inbox,
            changes,
            node,
            applied,
            barrier: format!("{name}.barrier"),
        };
        tasks.spawn(publisher.run(weak, tasks.clone(), shutdown));
        caught_up
    }
}

/// Headers carrying `id` as `Tern-Id`.
fn headers(id: &str) -> async_nats::HeaderMap {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(ID_HEADER, id);
    headers
}

/// Whether the `Tern-Id` `id` was given by the node run `origin`.
fn issued_by(id: &str, origin: &str) -> bool {
    id.strip_prefix(origin)
        .is_some_and(|rest| rest.starts_with(':'))
}

/// A message's `Tern-Id` header: its origin (and number).
pub(crate) fn tern_id(message: &async_nats::Message) -> Option<&str> {
    let id = message.headers.as_ref()?.get(ID_HEADER)?;
    Some(id.as_str())
}

/// A stored message's place in the messages stream (`Tern-Seq`), on its
/// live copy.
pub(crate) fn sequence(message: &async_nats::Message) -> Option<u64> {
    number(message.headers.as_ref(), SEQUENCE_HEADER)
}

/// A header's value as a number.
fn number(headers: Option<&async_nats::HeaderMap>, name: &str) -> Option<u64> {
    headers?.get(name)?.as_str().parse().ok()
}

/// Gives `decoded` the first place its NATS message's headers name
/// (`Tern-First`), live or as stored.
fn note_first_place(headers: Option<&async_nats::HeaderMap>, decoded: &crate::message::Message) {
    if let Some(first) = number(headers, FIRST_HEADER) {
        let _ = decoded.first_place.set(first);
    }
}

/// The next item of `stream`, or `None` once it ends or `stop` is
/// cancelled: the loop of every task that follows a NATS subscription.
async fn next_or_stop<S: futures_util::Stream + Unpin>(
    stream: &mut S,
    stop: &CancellationToken,
) -> Option<S::Item> {
    tokio::select! {
        item = stream.next() => item,
        () = stop.cancelled() => None,
    }
}
