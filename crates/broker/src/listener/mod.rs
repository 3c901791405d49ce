//! Listeners: one bound socket and one accept loop per `[[listeners]]` entry.
//!
//! [`prepare`] loads every TLS certificate, then [`bind`] opens every
//! listener, before the broker state exists, so a bad certificate
//! ([`TlsError`]) or address ([`BindError`]) stops `Broker::start` with an
//! error that names the listener. [`spawn`] then starts one accept
//! loop each. An accept loop only accepts: the TLS and WebSocket handshakes
//! run in the spawned connection task (bounded by `connect_timeout_secs`), so
//! a slow or hostile client never holds up the others.
//!
//! Plain TCP goes straight to [`connection::serve`] with the `TcpStream`, as
//! before; TLS ([`tls`]) and WebSocket ([`ws`]) connections are served through
//! their own [`Transport`] types, which never park (see `docs/architecture.md`).

pub mod tls;
mod tls_conn;
mod wire;
pub mod ws;
mod ws_stream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use crate::config::{Config, ListenerConfig, ListenerTransport};
use crate::connection::park::Parker;
use crate::connection::{self, ConnInfo};
use crate::limits::ConnectBytes;
use crate::state::BrokerState;

pub use self::tls::{TlsAcceptor, TlsError, TlsProblem};
pub use self::tls_conn::TlsConn;

/// Every listener's transport, certificates loaded, before any is bound.
pub struct Prepared(Vec<Kind>);

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

/// A listener's address cannot be listened on. The message names the
/// listener and, for the usual causes, says what to do.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {listener}: {reason}{}", bind_hint(.reason))]
pub struct BindError {
    /// "tcp listener 127.0.0.1:1883", as logs name it.
    pub listener: String,
    /// The address from the configuration.
    pub addr: SocketAddr,
    /// What the operating system said (`AddrInUse`, `PermissionDenied`, ...).
    pub reason: std::io::Error,
}

/// What to do about the usual reasons a bind fails.
fn bind_hint(reason: &std::io::Error) -> &'static str {
    use std::io::ErrorKind;
    match reason.kind() {
        ErrorKind::AddrInUse => {
            "; is another program (another tern?) using that port? Choose another `bind` for this listener, or --bind for the default one"
        }
        ErrorKind::PermissionDenied => {
            "; ports below 1024 need root or the CAP_NET_BIND_SERVICE capability: choose a port above 1023, or grant it"
        }
        ErrorKind::AddrNotAvailable => {
            "; this machine has no such address: bind to one of its own, 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)"
        }
        _ => "",
    }
}

/// Loads every TLS and wss listener's certificates, in listener order,
/// before any port is bound: a broken file must not leave the broker half
/// listening. The error names the listener and the file.
pub fn prepare(config: &Config) -> Result<Prepared, TlsError> {
    let mut kinds = Vec::with_capacity(config.listeners.len());
    for listener in &config.listeners {
        let acceptor = || TlsAcceptor::load(listener).map(Arc::new);
        let upgrade = || Arc::new(ws::Upgrade::new(listener));
        kinds.push(match listener.transport {
            ListenerTransport::Tcp => Kind::Tcp,
            ListenerTransport::Tls => Kind::Tls(acceptor()?),
            ListenerTransport::Ws => Kind::Ws(upgrade()),
            ListenerTransport::Wss => Kind::Wss(acceptor()?, upgrade()),
        });
    }
    Ok(Prepared(kinds))
}

/// Binds every listener in `config.listeners`, in order, with what
/// [`prepare`] made of them. Returns the sockets (for [`spawn`]) and what
/// the broker handle keeps.
pub async fn bind(
    config: &Config,
    prepared: Prepared,
) -> Result<(Sockets, ListenerSet), BindError> {
    let mut sockets = Vec::with_capacity(config.listeners.len());
    let mut addrs = Vec::with_capacity(config.listeners.len());
    let mut tls = Vec::new();
    for (listener, kind) in config.listeners.iter().zip(prepared.0) {
        let failed = |reason| BindError {
            listener: describe(listener),
            addr: listener.bind,
            reason,
        };
        let socket = TcpListener::bind(listener.bind).await.map_err(failed)?;
        addrs.push(socket.local_addr().map_err(failed)?);
        if let Kind::Tls(acceptor) | Kind::Wss(acceptor, _) = &kind {
            tls.push(acceptor.clone());
        }
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
    pub fn reload_certificates(&self) -> Vec<TlsError> {
        reload_certificates(&self.tls)
    }

    /// Every TLS and wss listener's certificates (and any added).
    pub fn acceptors(&self) -> Vec<Arc<TlsAcceptor>> {
        self.tls.clone()
    }

    /// Adds a certificate to reload with the listeners' (the HTTP listener's).
    pub fn add_acceptor(&mut self, acceptor: Arc<TlsAcceptor>) {
        self.tls.push(acceptor);
    }
}

/// Re-reads each acceptor's files; returns what could not be used (each
/// keeps the certificates it had).
pub fn reload_certificates(acceptors: &[Arc<TlsAcceptor>]) -> Vec<TlsError> {
    let mut errors = Vec::new();
    for acceptor in acceptors {
        match acceptor.reload() {
            Ok(()) => tracing::info!(listener = %acceptor.name(), "certificates reloaded"),
            Err(e) => {
                tracing::warn!("{e}; keeping the certificates loaded before");
                errors.push(e);
            }
        }
    }
    errors
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
            _ = state.draining.cancelled() => return,
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
                    internal: false,
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
        _ = state.draining.cancelled() => None,
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
        connection::serve(tls, info, state, parker).await;
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
