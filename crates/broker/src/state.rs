//! The broker's shared state, one `Arc<BrokerState>` handed to every task.
//!
//! Who owns what:
//! - `sessions`: the registry of sessions by client id (see [`crate::registry`]).
//!   A std mutex, locked only to find, insert or remove a session, or to
//!   copy the list of them (a reload, see [`BrokerState::reload_auth`]).
//! - `subscriptions`: the subscription tree. Read-locked by every PUBLISH
//!   (many readers at once), write-locked only by SUBSCRIBE/UNSUBSCRIBE and
//!   session end.
//! - `retained`: retained messages, read-locked by SUBSCRIBE, write-locked
//!   by retained PUBLISH.
//!
//! Every lock here has its rank in its type (see [`crate::lock`], which
//! checks the order in debug builds, and docs/architecture.md "Lock order"):
//! `reloading` (held through a reload of the authentication files) before
//! `sessions` before a session's own lock before the tree before the
//! retained messages. No lock is ever held across an `.await`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tern_codec::{QoS, ReasonCode, SubscriptionOptions};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{Auth, AuthError, AuthState, BRIDGE_CLIENT_PREFIX};
use crate::config::Config;
use crate::delayed::Delayed;
use crate::limits::Limits;
use crate::lock::{Mutex, MutexGuard, ReadGuard, RwLock, WriteGuard, rank};
use crate::metrics::Metrics;
use crate::monitor::Monitor;
use crate::retained::RetainedMessages;
use crate::seams::{Fabric, Ownership, Seams};
use crate::session::{ConnectionId, QueueLimits, Session, Sessions};
use crate::store::Store;
use crate::topic_tree::TopicTree;
use crate::webhook::Webhooks;

/// What the subscription tree stores for one subscription.
#[derive(Debug, Clone)]
pub struct Subscriber {
    pub session: Arc<Session>,
    pub options: SubscriptionOptions,
    pub subscription_id: Option<u32>,
    /// Whether deliveries need an ACL read check (see [`crate::auth`]).
    pub readable: crate::auth::Readable,
}

/// State shared by all tasks of one broker.
pub struct BrokerState {
    pub config: Config,
    pub sessions: Mutex<Sessions, { rank::SESSIONS }>,
    pub subscriptions: RwLock<TopicTree<Subscriber>, { rank::TREE }>,
    /// Retained messages, behind the retained-storage seam.
    pub retained: Box<dyn RetainedMessages>,
    /// Routing beyond this process (see [`crate::seams`]).
    pub fabric: Box<dyn Fabric>,
    /// Who holds each client id's session (see [`crate::seams`]).
    pub ownership: Box<dyn Ownership>,
    pub metrics: Metrics,
    /// What the dashboard's topic tree shows, recorded while a page is open.
    pub monitor: Arc<Monitor>,
    /// Messages published to `$delayed/...`, waiting for their time.
    pub delayed: Delayed,
    /// The `[[webhooks]]` endpoints' queues.
    pub webhooks: Webhooks,
    /// Resource limits: live connection counts, rate tables, their counters.
    pub limits: Limits,
    /// Publishers that overfilled a queue whose connection keeps up wait on
    /// this; a connection that takes from a queue publishers wait for, and
    /// so makes room in it, wakes them all to look again
    /// (`client_state::pushback`). One for the broker, not one per session:
    /// idle sessions stay small, and waiting is rare.
    pub room: Notify,
    pub started: Instant,
    /// Cancelled once to stop every task.
    pub shutdown: CancellationToken,
    /// Cancelled to stop taking clients and close their connections while
    /// the rest runs on (a cluster node's drain: it still hands sessions
    /// over); a child of `shutdown`, so shutdown cancels it too. Listeners,
    /// handshakes, connections and the parker watch this one.
    pub draining: CancellationToken,
    /// Every spawned task, so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// The data file, unless `persistence` is off.
    pub store: Option<Arc<Store>>,
    /// Passwords, ACL and failed logins; swapped by `reload_auth`.
    pub auth: AuthState,
    /// Held through a reload, so that each judges the logins of the rules
    /// the one before installed.
    reloading: Mutex<(), { rank::RELOAD }>,
    next_connection_id: AtomicU64,
    queue_limits: QueueLimits,
    /// Each bridge's session's own bounds, by its client id.
    bridge_queue_limits: Vec<(String, QueueLimits)>,
}

impl Drop for BrokerState {
    /// Closes the store before the sessions and messages go: dropping them
    /// must not delete what the file keeps for the next start.
    fn drop(&mut self) {
        if let Some(store) = &self.store {
            store.close();
        }
    }
}

/// Judges again the login of the connection attached to `session`, if it
/// was judged by `before`: closes it with DISCONNECT 0x87 (Not authorized)
/// if the rules `now` in force no longer admit it, else records that `now`
/// admits it. Returns whether it was refused (each refusal is logged).
///
/// 0x87 is what MQTT 5 has for this among DISCONNECT's reason codes: 0x86
/// (Bad User Name or Password), what CONNECT would get, is for CONNACK
/// only, and 0x98 (Administrative action) would not say why.
pub fn refuse_revoked_login(session: &Session, before: &Auth, now: &Auth) -> bool {
    let mut st = session.lock();
    if st.connection.is_none() || st.is_refused() || st.login_rules != before.generation() {
        return false;
    }
    match now.still_admits(before, st.username.as_deref(), st.by_certificate) {
        Ok(()) => {
            st.login_rules = now.generation();
            false
        }
        Err(why) => {
            let client_id = &session.client_id;
            let username = st.username.as_deref();
            tracing::info!(%client_id, username, "disconnecting client: {why}");
            session.refuse(st, ReasonCode::NotAuthorized);
            true
        }
    }
}

impl BrokerState {
    /// Fresh state for a broker with this configuration.
    pub fn new(
        config: Config,
        store: Option<Arc<Store>>,
        auth: AuthState,
        seams: Seams,
        retained: Box<dyn RetainedMessages>,
    ) -> Arc<BrokerState> {
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let limits = Limits::new(&config);
        let queue_limits = QueueLimits {
            max_messages: config.max_queued_messages,
            max_bytes: config.max_queued_bytes,
            queue_qos0_offline: config.queue_qos0_messages,
            may_double: true,
        };
        let bridge_queue_limits = config
            .bridges
            .iter()
            .map(|b| {
                let limits = QueueLimits {
                    max_messages: b.max_queued_messages,
                    max_bytes: b.max_queued_bytes,
                    ..queue_limits
                };
                (format!("{BRIDGE_CLIENT_PREFIX}{}", b.name), limits)
            })
            .collect();
        let webhooks = Webhooks::new(&config);
        Arc::new(BrokerState {
            config,
            sessions: Mutex::new(Sessions::default()),
            subscriptions: RwLock::new(TopicTree::new()),
            retained,
            fabric: seams.fabric,
            ownership: seams.ownership,
            metrics: Metrics::default(),
            monitor: Arc::default(),
            delayed: Delayed::default(),
            webhooks,
            limits,
            room: Notify::new(),
            started: Instant::now(),
            draining: shutdown.child_token(),
            shutdown,
            tasks,
            store,
            auth,
            reloading: Mutex::new(()),
            next_connection_id: AtomicU64::new(1),
            queue_limits,
            bridge_queue_limits,
        })
    }

    pub fn sessions(&self) -> MutexGuard<'_, Sessions, { rank::SESSIONS }> {
        self.sessions.lock()
    }

    /// A snapshot of every session's handle, copied under the registry's
    /// lock and let go of before any session is read: walking all sessions
    /// (a reload, a list, a scrape, the cluster's mirror) never keeps
    /// connecting clients waiting for more than the copy.
    pub fn session_handles(&self) -> Vec<Arc<Session>> {
        self.sessions().iter().cloned().collect()
    }

    pub fn tree(&self) -> ReadGuard<'_, TopicTree<Subscriber>, { rank::TREE }> {
        self.subscriptions.read()
    }

    pub fn tree_mut(&self) -> WriteGuard<'_, TopicTree<Subscriber>, { rank::TREE }> {
        self.subscriptions.write()
    }

    /// A number unique to each accepted connection, for logs and takeover.
    pub fn next_connection_id(&self) -> ConnectionId {
        let id = self.next_connection_id.fetch_add(1, Ordering::Relaxed);
        // Counting from 1, a u64 does not wrap round to 0.
        ConnectionId::new(id).unwrap_or(ConnectionId::MIN)
    }

    /// Queue bounds every session gets.
    pub fn queue_limits(&self) -> &QueueLimits {
        &self.queue_limits
    }

    /// The bounds of `session`'s queue: a bridge's own, else everyone's.
    /// (One byte compared for a client's session.)
    pub fn queue_limits_of(&self, session: &Session) -> &QueueLimits {
        if session.client_id.starts_with(BRIDGE_CLIENT_PREFIX)
            && let Some((_, limits)) = self
                .bridge_queue_limits
                .iter()
                .find(|(id, _)| **id == *session.client_id)
        {
            return limits;
        }
        &self.queue_limits
    }

    /// Re-reads `password_file` and `acl_file` (see [`AuthState::reload`]),
    /// then closes the connections whose login the new rules no longer
    /// admit ([`Auth::still_admits`]; [`refuse_revoked_login`]).
    ///
    /// ACL changes close nothing, because nothing a client keeps escapes
    /// the new ACL: its PUBLISH and SUBSCRIBE packets are judged when they
    /// arrive; a subscription the new ACL no longer allows stays, but a new
    /// ACL is a new generation, so its deliveries are checked per message
    /// (`auth::Readable`) and it receives nothing the client may not read;
    /// its will's topic is checked when the will is published.
    pub fn reload_auth(&self) -> Result<(), AuthError> {
        let _one_at_a_time = self.reloading.lock();
        let before = self.auth.current();
        self.auth.reload(&self.config)?;
        let now = self.auth.current();
        let refused = self
            .session_handles()
            .iter()
            .filter(|session| refuse_revoked_login(session, &before, &now))
            .count();
        if refused > 0 {
            let clients = if refused == 1 { "client" } else { "clients" };
            tracing::info!(
                refused,
                "reload: {refused} {clients} disconnected: their login is no longer valid"
            );
        }
        Ok(())
    }

    /// The highest QoS this broker grants.
    pub fn maximum_qos(&self) -> QoS {
        QoS::from_u8(self.config.maximum_qos).unwrap_or(QoS::ExactlyOnce)
    }
}
