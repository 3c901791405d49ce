//! The broker's shared state, one `Arc<BrokerState>` handed to every task.
//!
//! Who owns what:
//! - `sessions`: the registry of sessions by client id (see [`crate::registry`]).
//!   A std mutex, locked only to find, insert or remove a session.
//! - `subscriptions`: the subscription tree. Read-locked by every PUBLISH
//!   (many readers at once), write-locked only by SUBSCRIBE/UNSUBSCRIBE and
//!   session end.
//! - `retained`: retained messages, read-locked by SUBSCRIBE, write-locked
//!   by retained PUBLISH.
//!
//! Lock order, where two are held together: `sessions` before a session's own
//! lock. The tree and retained locks are never held while taking another lock,
//! and no lock is ever held across an `.await`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use tern_codec::{QoS, SubscriptionOptions};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{AuthError, AuthState};
use crate::config::Config;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::retained::Retained;
use crate::session::{ConnectionId, QueueLimits, Session, Sessions};
use crate::store::Store;
use crate::topic_tree::TopicTree;

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
    pub sessions: Mutex<Sessions>,
    pub subscriptions: RwLock<TopicTree<Subscriber>>,
    pub retained: RwLock<Retained>,
    pub metrics: Metrics,
    /// Resource limits: live connection counts, rate tables, their counters.
    pub limits: Limits,
    pub started: Instant,
    /// Cancelled once to stop every task.
    pub shutdown: CancellationToken,
    /// Every spawned task, so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// The data file, unless `persistence` is off.
    pub store: Option<Arc<Store>>,
    /// Passwords, ACL and failed logins; swapped by `reload_auth`.
    pub auth: AuthState,
    next_connection_id: AtomicU64,
    queue_limits: QueueLimits,
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

/// Poisoning only says another thread panicked while holding the lock; the
/// maps themselves stay consistent, so the broker keeps serving.
fn unpoison<G>(result: Result<G, std::sync::PoisonError<G>>) -> G {
    result.unwrap_or_else(|p| p.into_inner())
}

impl BrokerState {
    /// Fresh state for a broker with this configuration.
    pub fn new(config: Config, store: Option<Arc<Store>>, auth: AuthState) -> Arc<BrokerState> {
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let limits = Limits::new(&config);
        let queue_limits = QueueLimits {
            max_messages: config.max_queued_messages,
            max_bytes: config.max_queued_bytes,
            queue_qos0_offline: config.queue_qos0_messages,
        };
        Arc::new(BrokerState {
            config,
            sessions: Mutex::new(Sessions::default()),
            subscriptions: RwLock::new(TopicTree::new()),
            retained: RwLock::new(Retained::default()),
            metrics: Metrics::default(),
            limits,
            started: Instant::now(),
            shutdown,
            tasks,
            store,
            auth,
            next_connection_id: AtomicU64::new(1),
            queue_limits,
        })
    }

    pub fn sessions(&self) -> MutexGuard<'_, Sessions> {
        unpoison(self.sessions.lock())
    }

    pub fn tree(&self) -> RwLockReadGuard<'_, TopicTree<Subscriber>> {
        unpoison(self.subscriptions.read())
    }

    pub fn tree_mut(&self) -> RwLockWriteGuard<'_, TopicTree<Subscriber>> {
        unpoison(self.subscriptions.write())
    }

    pub fn retained(&self) -> RwLockReadGuard<'_, Retained> {
        unpoison(self.retained.read())
    }

    pub fn retained_mut(&self) -> RwLockWriteGuard<'_, Retained> {
        unpoison(self.retained.write())
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

    /// Re-reads `password_file` and `acl_file` (see [`AuthState::reload`]):
    /// clients already connected stay connected.
    pub fn reload_auth(&self) -> Result<(), AuthError> {
        self.auth.reload(&self.config)
    }

    /// The highest QoS this broker grants.
    pub fn maximum_qos(&self) -> QoS {
        QoS::from_u8(self.config.maximum_qos).unwrap_or(QoS::ExactlyOnce)
    }
}
