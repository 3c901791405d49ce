//! The server: binds the listeners, starts everything, and stops cleanly.
//!
//! [`Broker::start`] binds every listener (see [`crate::listener`]), spawns
//! their accept loops and the `$SYS` task, and returns a [`BrokerHandle`]
//! with the bound addresses. Every task is spawned on
//! one `TaskTracker` and watches one `CancellationToken`, so
//! [`BrokerHandle::shutdown`] can stop them all (MQTT 5 clients get DISCONNECT
//! 0x8B) and wait until the last one has finished.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::AuthState;
use crate::config::Config;
use crate::connection::park::Parker;
use crate::listener::{self, ListenerSet};
use crate::message::Message;
use crate::recover;
use crate::router;
use crate::seams::Seams;
use crate::state::BrokerState;
use crate::store::Store;
use crate::sys;

/// Entry point of the broker library.
pub struct Broker;

/// A running broker.
pub struct BrokerHandle {
    listeners: ListenerSet,
    state: Arc<BrokerState>,
    parker: Arc<Parker>,
}

impl Broker {
    /// Binds the listeners and starts serving. Returns once the sockets are
    /// bound, so the addresses can be used immediately.
    pub async fn start(config: Config) -> std::io::Result<BrokerHandle> {
        Broker::start_with(config, Seams::single_node()).await
    }

    /// [`Broker::start`], with the implementations of routing beyond this
    /// process and of session ownership given (see [`crate::seams`]).
    pub async fn start_with(mut config: Config, seams: Seams) -> std::io::Result<BrokerHandle> {
        // From here on `config.listeners[ConnInfo::listener]` is always there.
        config.listeners = config.effective_listeners();
        config
            .validate()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        // Every file and port first: a start that fails on them must not
        // have created the data directory and file.
        let auth = AuthState::new(&config)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        let (sockets, listeners) = listener::bind(&config).await?;
        let (store, recovered) = if config.persistence {
            let (store, recovered) =
                Store::open(&config.data_dir, config.durability).map_err(std::io::Error::other)?;
            (Some(store), Some(recovered))
        } else {
            (None, None)
        };
        let park_after =
            (config.park_idle_ms > 0).then(|| Duration::from_millis(config.park_idle_ms));
        let state = BrokerState::new(config, store, auth, seams);
        // Not in the shared state: parked connections hold that state, and
        // the parker holds them.
        let parker = Parker::start(park_after, state.shutdown.clone(), state.tasks.clone())?;
        // Everything stored is back before the first connection is accepted.
        if let Some(recovered) = recovered {
            recover::restore(&state, recovered);
        }
        sys::spawn(&state, &parker);
        listener::spawn(sockets, &state, &parker);
        Ok(BrokerHandle {
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

    /// Re-reads the certificate, key and CA files of every TLS and wss
    /// listener, for new connections; open ones keep theirs. A listener
    /// whose files cannot be used keeps its current certificates. Returns
    /// the errors (also logged), each naming the listener, the file and the
    /// reason; empty when all were reloaded.
    pub fn reload_certificates(&self) -> Vec<String> {
        self.listeners.reload_certificates()
    }

    /// Re-reads the password file, the ACL file and every TLS listener's
    /// certificates (what `tern serve` does on SIGHUP). Connections whose
    /// login the new password file no longer admits are closed (see
    /// [`BrokerState::reload_auth`]); all others stay. Whatever cannot be
    /// read keeps its current version; the returned errors (also logged)
    /// say which file and why. Empty: all reloaded.
    pub fn reload(&self) -> Vec<String> {
        let mut errors = self.reload_certificates();
        if let Err(e) = self.state.reload_auth() {
            errors.push(e);
        }
        errors
    }

    /// Routes a message that another node accepted to this node's
    /// subscribers, without storing it as retained or forwarding it again:
    /// the way in for a [`crate::seams::Fabric`]. Returns how many sessions
    /// it matched.
    pub fn route_remote(&self, message: Arc<Message>) -> usize {
        router::publish_remote(&self.state, message).matched
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
