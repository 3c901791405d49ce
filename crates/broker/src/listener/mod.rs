//! Listeners: one bound socket and one accept loop per `[[listeners]]` entry.
//!
//! [`bind`] opens every listener (and loads the TLS certificates) before the
//! broker state exists, so a bad address or certificate stops `Broker::start`
//! with an error that names the listener. [`spawn`] then starts one accept
//! loop each. An accept loop only accepts: the TLS and WebSocket handshakes
//! run in the spawned connection task (bounded by `connect_timeout_secs`), so
//! a slow or hostile client never holds up the others.
//!
//! Plain TCP goes straight to [`connection::serve`] with the `TcpStream`, as
//! before; TLS ([`tls`]) and WebSocket ([`ws`]) connections are served through
//! their own [`Transport`] types, which never park (see `docs/architecture.md`).

pub mod tls;
pub mod ws;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use crate::config::{Config, ListenerConfig, ListenerTransport};
use crate::connection::park::Parker;
use crate::connection::{self, ConnInfo};
use crate::limits::ConnectBytes;
use crate::state::BrokerState;

pub use self::tls::{TlsAcceptor, TlsConn};

/// The listeners' sockets, bound but not yet accepting.
pub struct Sockets(Vec<(TcpListener, Kind)>);

/// What a running broker keeps of its listeners.
pub struct ListenerSet {
    addrs: Vec<SocketAddr>,
    tls: Vec<Arc<TlsAcceptor>>,
}

/// How an accepted socket is turned into a [`connection::Transport`].
enum Kind {
    Tcp,
    Tls(Arc<TlsAcceptor>),
    Ws(Arc<ws::Upgrade>),
    Wss(Arc<TlsAcceptor>, Arc<ws::Upgrade>),
}

/// Binds every listener in `config.listeners`, in order, and loads their
/// certificates. The error names the listener and says what to do.
/// Returns the sockets (for [`spawn`]) and what the broker handle keeps.
pub async fn bind(config: &Config) -> std::io::Result<(Sockets, ListenerSet)> {
    let mut sockets = Vec::with_capacity(config.listeners.len());
    let mut addrs = Vec::with_capacity(config.listeners.len());
    let mut tls = Vec::new();
    for listener in &config.listeners {
        let name = describe(listener);
        let mut acceptor = || -> std::io::Result<Arc<TlsAcceptor>> {
            let acceptor = TlsAcceptor::load(listener).map(Arc::new).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("{name}: {e} (fix that file, or point the listener at another)"),
                )
            })?;
            tls.push(acceptor.clone());
            Ok(acceptor)
        };
        let kind = match listener.transport {
            ListenerTransport::Tcp => Kind::Tcp,
            ListenerTransport::Tls => Kind::Tls(acceptor()?),
            ListenerTransport::Ws => Kind::Ws(Arc::new(ws::Upgrade::new(listener, config))),
            ListenerTransport::Wss => {
                Kind::Wss(acceptor()?, Arc::new(ws::Upgrade::new(listener, config)))
            }
        };
        let socket = TcpListener::bind(listener.bind).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!(
                    "cannot listen on {name}: {e} (is another program using that port? choose another `bind` for this listener, or --bind for the default one)"
                ),
            )
        })?;
        addrs.push(socket.local_addr()?);
        sockets.push((socket, kind));
    }
    Ok((Sockets(sockets), ListenerSet { addrs, tls }))
}

/// "tls listener 127.0.0.1:8883": how errors and logs name a listener.
fn describe(listener: &ListenerConfig) -> String {
    format!("{} listener {}", listener.transport.name(), listener.bind)
}

/// Starts one accept loop per bound listener.
pub fn spawn(sockets: Sockets, state: &Arc<BrokerState>, parker: &Arc<Parker>) {
    for (index, (socket, kind)) in sockets.0.into_iter().enumerate() {
        let accepting = accept_loop(socket, index, kind, state.clone(), parker.clone());
        state.tasks.spawn(accepting);
    }
}

impl ListenerSet {
    /// The bound addresses, in listener order.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Re-reads every TLS listener's certificate, key and CA files. A
    /// listener whose files fail keeps its current certificates; the returned
    /// errors (also logged) name the listener, the file and the reason.
    /// Connections already open are untouched.
    pub fn reload_certificates(&self) -> Vec<String> {
        let mut errors = Vec::new();
        for acceptor in &self.tls {
            match acceptor.reload() {
                Ok(()) => tracing::info!(listener = %acceptor.name(), "certificates reloaded"),
                Err(e) => {
                    let error = format!(
                        "{}: {e} (keeping the certificates loaded before)",
                        acceptor.name()
                    );
                    tracing::warn!("{error}");
                    errors.push(error);
                }
            }
        }
        errors
    }
}

/// Accepts connections until shutdown, one task each.
async fn accept_loop(
    listener: TcpListener,
    index: usize,
    kind: Kind,
    state: Arc<BrokerState>,
    parker: Arc<Parker>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = state.shutdown.cancelled() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                // Small packets (acks, pings) must not wait for Nagle's timer.
                let _ = stream.set_nodelay(true);
                let info = ConnInfo {
                    peer,
                    listener: index,
                    cert_identity: None,
                    connect_bytes: None,
                };
                let (state2, parker) = (state.clone(), parker.clone());
                match &kind {
                    Kind::Tcp => {
                        let serving = connection::serve(stream, info, state2, parker);
                        state.tasks.spawn(serving)
                    }
                    Kind::Tls(acceptor) => {
                        let serving = serve_tls(stream, acceptor.clone(), info, state2, parker);
                        state.tasks.spawn(serving)
                    }
                    Kind::Ws(upgrade) => {
                        let serving = serve_ws(stream, upgrade.clone(), info, state2, parker);
                        state.tasks.spawn(serving)
                    }
                    Kind::Wss(acceptor, upgrade) => state.tasks.spawn(serve_wss(
                        stream,
                        acceptor.clone(),
                        upgrade.clone(),
                        info,
                        state2,
                        parker,
                    )),
                };
            }
            Err(e) => {
                // Typically EMFILE: back off briefly instead of spinning.
                crate::throttled!(warn, "accept failed", error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Runs `handshake` within `connect_timeout_secs`, giving up at shutdown.
/// `None` (logged with the peer): the handshake failed or took too long.
async fn bounded<T>(
    what: &str,
    info: &ConnInfo,
    state: &BrokerState,
    handshake: impl Future<Output = std::io::Result<T>>,
) -> Option<T> {
    let peer = info.peer;
    let timeout = Duration::from_secs(state.config.connect_timeout_secs);
    tokio::select! {
        done = tokio::time::timeout(timeout, handshake) => match done {
            Ok(Ok(t)) => Some(t),
            Ok(Err(e)) => {
                crate::throttled!(info, "handshake failed", %peer, listener = info.listener, error = %e, "closing connection: {what} handshake failed");
                None
            }
            Err(_) => {
                crate::throttled!(info, "no handshake", %peer, listener = info.listener, "closing connection: no {what} handshake within {timeout:?}");
                None
            }
        },
        _ = state.shutdown.cancelled() => None,
    }
}

async fn serve_tls(
    stream: TcpStream,
    acceptor: Arc<TlsAcceptor>,
    info: ConnInfo,
    state: Arc<BrokerState>,
    parker: Arc<Parker>,
) {
    // Boxed: the handshake's state is gone before the connection runs.
    let accepted = Box::pin(bounded(
        "TLS",
        &info,
        &state,
        acceptor.accept(stream, info.clone()),
    ))
    .await;
    if let Some((tls, info)) = accepted {
        connection::serve(TlsConn::new(tls), info, state, parker).await;
    }
}

/// A WebSocket connection's account of what tungstenite buffers for it
/// before CONNECT (see [`crate::limits::ConnectBytes`]), in its `ConnInfo`.
fn count_connect_bytes(info: &mut ConnInfo, state: &BrokerState) -> Arc<ConnectBytes> {
    let bytes = Arc::new(state.limits.connect_bytes(info.peer));
    info.connect_bytes = Some(bytes.clone());
    bytes
}

async fn serve_ws(
    stream: TcpStream,
    upgrade: Arc<ws::Upgrade>,
    mut info: ConnInfo,
    state: Arc<BrokerState>,
    parker: Arc<Parker>,
) {
    let bytes = count_connect_bytes(&mut info, &state);
    let accepted = Box::pin(bounded(
        "WebSocket",
        &info,
        &state,
        upgrade.accept(stream, info.peer, bytes),
    ))
    .await;
    if let Some(ws) = accepted {
        connection::serve(ws, info, state, parker).await;
    }
}

async fn serve_wss(
    stream: TcpStream,
    acceptor: Arc<TlsAcceptor>,
    upgrade: Arc<ws::Upgrade>,
    mut info: ConnInfo,
    state: Arc<BrokerState>,
    parker: Arc<Parker>,
) {
    let bytes = count_connect_bytes(&mut info, &state);
    let handshake = async {
        let (tls, info) = acceptor.accept(stream, info.clone()).await?;
        let ws = upgrade.accept(tls, info.peer, bytes).await?;
        Ok((ws, info))
    };
    let accepted = Box::pin(bounded("WebSocket over TLS", &info, &state, handshake)).await;
    if let Some((ws, info)) = accepted {
        connection::serve(ws, info, state, parker).await;
    }
}
