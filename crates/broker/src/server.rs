//! The server: binds the listeners, starts everything, and stops cleanly.
//!
//! [`Broker::start`] binds every listener (see [`crate::listener`]), spawns
//! their accept loops and the `$SYS` task, and returns a [`BrokerHandle`]
//! with the bound addresses. Every task is spawned on
//! one `TaskTracker` and watches one `CancellationToken`, so
//! [`BrokerHandle::shutdown`] can stop them all (MQTT 5 clients get DISCONNECT
//! 0x8B) and wait until the last one has finished.
//!
//! The errors of this public boundary are typed: [`StartError`] for a start
//! that fails, [`ReloadError`] for each file a reload could not use. Each
//! variant holds the error of the part that failed, whose message is one
//! line naming the file or address involved.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::{AuthError, AuthState};
use crate::bridge;
use crate::cluster::{self, ClusterError};
use crate::config::{Config, ConfigError};
use crate::connection::park::Parker;
use crate::http;
use crate::listener::{self, BindError, ListenerSet, TlsAcceptor, TlsError};
use crate::message::Message;
use crate::recover;
use crate::retained::{LocalRetained, RetainedMessages};
use crate::router;
use crate::seams::Seams;
use crate::state::BrokerState;
use crate::store::crash_point::CrashPoint;
use crate::store::{Store, StoreError};
use crate::sys;
use crate::webhook;

/// Why [`Broker::start`] failed. The files and ports are checked before the
/// data directory is opened, so any failure but [`StartError::Store`] and
/// [`StartError::Parker`] has created no data directory.
///
/// Each variant's message is its inner error's, one line naming the file or
/// address at fault (they are `transparent`: the chain of `source()`s holds
/// no reason twice, so `{:#}` prints that line once).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid (a value out of range, a listener's
    /// settings that do not go together).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The password file or the ACL file cannot be used.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// A TLS or wss listener's certificate, key or CA file cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A listener's address cannot be listened on (in use, not permitted).
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The data file cannot be opened (damaged, locked by another tern,
    /// not writable).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The parker (the epoll set and thread that hold idle connections)
    /// cannot start: the process is out of file descriptors or threads, or
    /// `Broker::start` runs outside a tokio runtime.
    #[error(
        "cannot start the thread that holds idle connections: {reason}; check the limits on open files and threads (ulimit -n, ulimit -u)"
    )]
    Parker { reason: std::io::Error },
    /// `[http]` is set and its certificate or address cannot be used.
    #[error(transparent)]
    Http(#[from] http::HttpError),
    /// `[cluster]` is set and this node could not join: NATS unreachable,
    /// too old, or without JetStream.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

/// A file that [`BrokerHandle::reload`] could not use; what it belongs to
/// keeps the version loaded before.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The password file or the ACL file: the rules in force stay.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// A TLS listener's files: that listener keeps its certificates.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// How long a cluster node waits at start for the retained messages other
/// nodes set.
const RETAINED_REPLAY: Duration = Duration::from_secs(30);

/// Entry point of the broker library.
pub struct Broker;

/// A running broker.
pub struct BrokerHandle {
    /// The HTTP listener's bound address, if `[http]` is set.
    http_addr: Option<SocketAddr>,
    listeners: ListenerSet,
    state: Arc<BrokerState>,
    parker: Arc<Parker>,
}

impl Broker {
    /// Binds the listeners and starts serving. Returns once the sockets are
    /// bound, so the addresses can be used immediately. The error says which
    /// part failed and names its file or address.
    pub async fn start(config: Config) -> Result<BrokerHandle, StartError> {
        Broker::start_with(config, Seams::single_node()).await
    }

    /// [`Broker::start`], with the implementations of routing beyond this
    /// process and of session ownership given (see [`crate::seams`]).
    /// With a `[cluster]` section, the cluster's routing and ownership
    /// replace `seams`.
    pub async fn start_with(config: Config, seams: Seams) -> Result<BrokerHandle, StartError> {
        Broker::start_crashing(config, seams, None).await
    }

    /// [`Broker::start_with`]; with a crash point (tests), the store loses
    /// the changes after it (see `store::crash_point`).
    pub(crate) async fn start_crashing(
        mut config: Config,
        mut seams: Seams,
        crash: Option<Arc<CrashPoint>>,
    ) -> Result<BrokerHandle, StartError> {
        // From here on `config.listeners[ConnInfo::listener]` is always there.
        config.listeners = config.effective_listeners();
        config.validate()?;
        // Every file and port first: a start that fails on them must not
        // have created the data directory and file.
        let auth = AuthState::new(&config)?;
        let prepared = listener::prepare(&config)?;
        let (sockets, mut listeners) = listener::bind(&config, prepared).await?;
        let http = match &config.http {
            Some(http) => Some(http::bind(http).await?),
            None => None,
        };
        if let Some(acceptor) = http.as_ref().and_then(http::Bound::acceptor) {
            listeners.add_acceptor(acceptor);
        }
        let http_addr = http.as_ref().and_then(http::Bound::local_addr);
        // NATS too, before the data directory: a node that cannot join its
        // cluster does not start at all.
        let cluster = match &config.cluster {
            Some(cluster) => Some(cluster::join(cluster).await?),
            None => None,
        };
        let (store, recovered) = if config.persistence {
            let (store, recovered) =
                Store::open_crashing(&config.data_dir, config.durability, crash)?;
            (Some(store), Some(recovered))
        } else {
            (None, None)
        };
        let park_after =
            (config.park_idle_ms > 0).then(|| Duration::from_millis(config.park_idle_ms));
        // Retained messages: this node's trie and file, and with a cluster,
        // the cluster's stream too.
        let local = LocalRetained::new(store.clone());
        let (retained, routing): (Box<dyn RetainedMessages>, _) = match cluster {
            Some(cluster) => {
                let (fabric, ownership, retained, routing) = cluster.seams(Arc::new(local));
                seams.fabric = Box::new(fabric);
                seams.ownership = Box::new(ownership);
                (Box::new(retained), Some(routing))
            }
            None => (Box::new(local), None),
        };
        let state = BrokerState::new(config, store, auth, seams, retained);
        // Not in the shared state: parked connections hold that state, and
        // the parker holds them.
        let parker = Parker::start(park_after, state.draining.clone(), state.tasks.clone())
            .map_err(|reason| StartError::Parker { reason })?;
        // Everything stored is back before the first connection is accepted.
        if let Some(recovered) = recovered {
            recover::restore(&state, recovered);
        }
        if let Some(routing) = routing {
            let caught_up = routing.start(&state, &state.tasks, state.shutdown.clone());
            // The cluster's retained messages are here before the first
            // client subscribes.
            if tokio::time::timeout(RETAINED_REPLAY, caught_up)
                .await
                .is_err()
            {
                tracing::warn!(
                    "cluster: the retained messages of other nodes are still arriving; accepting clients meanwhile"
                );
            }
        }
        sys::spawn(&state, &parker);
        state.tasks.spawn(router::release_delayed(state.clone()));
        bridge::spawn(&state, &parker);
        webhook::spawn(&state.webhooks, &state.tasks, &state.shutdown);
        if let Some(refresh) = state.auth.jwks_refresher(state.shutdown.clone()) {
            state.tasks.spawn(refresh);
        }
        listener::spawn(sockets, &state, &parker);
        if let Some(http) = http {
            let tls = listeners.acceptors();
            let reload_state = state.clone();
            let reload: http::Reload = Arc::new(move || {
                let errors = reload_all(&reload_state, &tls).err().unwrap_or_default();
                errors.iter().map(ToString::to_string).collect()
            });
            http::spawn(http, &state, &parker, reload);
        }
        Ok(BrokerHandle {
            http_addr,
            listeners,
            state,
            parker,
        })
    }
}

impl BrokerHandle {
    /// The address the first listener is bound to (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listeners.local_addrs()[0]
    }

    /// Every listener's bound address, in the order of `config.listeners`.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.local_addrs().to_vec()
    }

    /// The HTTP listener's bound address (`[http]`), if there is one.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// Re-reads the certificate, key and CA files of every TLS and wss
    /// listener, for new connections; open ones keep theirs. A listener
    /// whose files cannot be used keeps its current certificates. The
    /// error lists (and the log has) one [`TlsError`] per such listener,
    /// naming it, the file and the reason.
    pub fn reload_certificates(&self) -> Result<(), Vec<TlsError>> {
        all_done(self.listeners.reload_certificates())
    }

    /// Re-reads the password file, the ACL file and every TLS listener's
    /// certificates (what `tern serve` does on SIGHUP). Connections whose
    /// login the new password file no longer admits are closed (see
    /// [`BrokerState::reload_auth`]); all others stay. Whatever cannot be
    /// read keeps its current version; the error lists (and the log has)
    /// one [`ReloadError`] per such part: every part is tried, whichever
    /// fails.
    pub fn reload(&self) -> Result<(), Vec<ReloadError>> {
        reload_all(&self.state, &self.listeners.acceptors())
    }

    /// Routes a message that another node accepted to this node's
    /// subscribers, without storing it as retained or forwarding it again:
    /// the way in for a [`crate::seams::Fabric`]. Returns how many sessions
    /// it matched.
    pub fn route_remote(&self, message: Arc<Message>) -> usize {
        router::publish_remote(&self.state, message, router::Scope::All).matched
    }

    /// How many connections are parked now (idle, without a task; see
    /// `park_idle_ms`), as `$SYS/broker/clients/parked` says.
    pub fn parked_connections(&self) -> usize {
        self.parker.parked_count()
    }

    /// The shared state, for the crate's own tests (see `testing`): not
    /// part of the API.
    #[doc(hidden)]
    pub fn state(&self) -> &Arc<BrokerState> {
        &self.state
    }

    /// The parker, for the crate's own tests (see `testing`).
    pub(crate) fn parker(&self) -> &Arc<Parker> {
        &self.parker
    }

    /// Starts draining this node of a cluster: it stops taking clients and
    /// closes every connection (MQTT 5: DISCONNECT 0x9C Use another server),
    /// while it goes on routing and handing its sessions over to the nodes
    /// its clients reconnect to. Watch [`BrokerHandle::sessions`] fall, then
    /// call [`BrokerHandle::shutdown`].
    pub fn drain(&self) {
        self.state.draining.cancel();
    }

    /// How many sessions this node holds (connected or not).
    pub fn sessions(&self) -> usize {
        self.state.sessions().len()
    }

    /// Stops accepting, closes every connection and waits for all tasks.
    pub async fn shutdown(self) {
        self.state.shutdown.cancel();
        self.state.tasks.close();
        self.state.tasks.wait().await;
        // Every connection has detached (and stored its session): write the
        // rest and stop the store before the state is dropped.
        if let Some(store) = &self.state.store {
            store.close();
        }
    }
}

/// Re-reads the password file, the ACL file and the certificates of `tls`;
/// see [`BrokerHandle::reload`].
fn reload_all(state: &BrokerState, tls: &[Arc<TlsAcceptor>]) -> Result<(), Vec<ReloadError>> {
    let tls = listener::reload_certificates(tls).into_iter();
    let mut errors: Vec<ReloadError> = tls.map(ReloadError::from).collect();
    if let Err(e) = state.reload_auth() {
        errors.push(ReloadError::from(e));
    }
    all_done(errors)
}

/// `Ok` when nothing failed, else every error.
fn all_done<E>(errors: Vec<E>) -> Result<(), Vec<E>> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}
