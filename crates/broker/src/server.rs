//! The server: binds the listener, accepts connections, and stops cleanly.
//!
//! [`Broker::start`] binds, spawns the accept loop and the `$SYS` task, and
//! returns a [`BrokerHandle`] with the bound address. Every task is spawned on
//! one `TaskTracker` and watches one `CancellationToken`, so
//! [`BrokerHandle::shutdown`] can stop them all (MQTT 5 clients get DISCONNECT
//! 0x8B) and wait until the last one has finished.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::config::Config;
use crate::connection;
use crate::state::BrokerState;
use crate::store::{Store, recover};
use crate::sys;

/// Entry point of the broker library.
pub struct Broker;

/// A running broker.
pub struct BrokerHandle {
    local_addr: SocketAddr,
    state: Arc<BrokerState>,
}

impl Broker {
    /// Binds the listener and starts serving. Returns once the socket is bound,
    /// so the address can be used immediately.
    pub async fn start(mut config: Config) -> std::io::Result<BrokerHandle> {
        // From here on `config.listeners[ConnInfo::listener]` is always there.
        config.listeners = config.effective_listeners();
        config
            .validate()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let (store, recovered) = if config.persistence {
            let (store, recovered) =
                Store::open(&config.data_dir, config.durability).map_err(std::io::Error::other)?;
            (Some(store), Some(recovered))
        } else {
            (None, None)
        };
        let listener = TcpListener::bind(config.bind).await.map_err(|e| {
            let bind = config.bind;
            std::io::Error::new(
                e.kind(),
                format!(
                    "cannot listen on {bind}: {e} (is another broker running there? choose another with --bind)"
                ),
            )
        })?;
        let local_addr = listener.local_addr()?;
        let state = BrokerState::new(config, store)?;
        // Everything stored is back before the first connection is accepted.
        if let Some(recovered) = recovered {
            recover::restore(&state, recovered);
        }
        sys::spawn(&state);
        state.tasks.spawn(accept_loop(listener, state.clone()));
        Ok(BrokerHandle { local_addr, state })
    }
}

impl BrokerHandle {
    /// The address the listener is bound to (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Shared state, for inspection by tests and `$SYS`.
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

/// Accepts connections until shutdown, one task each.
async fn accept_loop(listener: TcpListener, state: Arc<BrokerState>) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = state.shutdown.cancelled() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                // Small packets (acks, pings) must not wait for Nagle's timer.
                let _ = stream.set_nodelay(true);
                let info = connection::ConnInfo {
                    peer,
                    listener: 0,
                    cert_identity: None,
                };
                state
                    .tasks
                    .spawn(connection::serve(stream, info, state.clone()));
            }
            Err(e) => {
                // Typically EMFILE: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}
