//! The HTTP listener (`[http]`): Prometheus metrics at `/metrics`, health
//! checks at `/healthz` and `/readyz`, for the people and programs that run
//! the broker rather than those that publish through it.
//!
//! - [`auth`]: who may use it (API tokens, admin users of the password file),
//!   checked on every route but the health checks.
//! - [`prometheus`]: the text exposition of every figure `$SYS` has, and more.
//! - [`api`]: the admin API (JSON, described by its OpenAPI file).
//! - [`backup`]: a consistent copy of the data file, streamed.
//! - [`dashboard`]: the live web dashboard (embedded page, sampled stream).
//!
//! Built on axum (hyper underneath) on the broker's own runtime. It reads
//! what the broker already counts (relaxed atomics, and the same few locks
//! `$SYS` takes once per interval), so a scrape adds nothing to the path of
//! a message. Served over TLS when `cert_file` and `key_file` are set, with
//! the MQTT listeners' certificate loading (`listener::tls`).

mod api;
mod auth;
pub mod backup;
mod dashboard;
mod prometheus;
mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::extract::connect_info::Connected;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::IncomingStream;
use tokio::net::TcpListener;

use crate::config::{HttpConfig, ListenerConfig, ListenerTransport};
use crate::connection::park::Parker;
use crate::listener::{BindError, TlsAcceptor, TlsError};
use crate::state::BrokerState;

/// Reloads the password, ACL and certificate files (as SIGHUP); returns
/// what could not be read, one line each.
pub type Reload = Arc<dyn Fn() -> Vec<String> + Send + Sync>;

/// What the handlers share.
struct Http {
    state: Arc<BrokerState>,
    parker: Arc<Parker>,
    config: HttpConfig,
    reload: Reload,
}

/// The HTTP listener, bound (and its certificate loaded) but not serving yet.
pub struct Bound {
    socket: TcpListener,
    tls: Option<Arc<TlsAcceptor>>,
    config: HttpConfig,
}

impl Bound {
    /// The address it listens on.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.socket.local_addr().ok()
    }

    /// Its certificate, reloaded with the MQTT listeners' (SIGHUP).
    pub fn acceptor(&self) -> Option<Arc<TlsAcceptor>> {
        self.tls.clone()
    }
}

/// Why the HTTP listener could not start: its certificate or its address
/// (each error names the listener and the file or address).
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Bind(#[from] BindError),
}

/// Loads the certificate (if any) and binds the address, before the broker
/// starts: a bad file or a port in use stops the start with its name.
pub async fn bind(config: &HttpConfig) -> Result<Bound, HttpError> {
    let listener = ListenerConfig {
        transport: ListenerTransport::Tls,
        cert_file: config.cert_file.clone(),
        key_file: config.key_file.clone(),
        ..ListenerConfig::tcp(config.bind)
    };
    let tls = match &config.cert_file {
        Some(_) => Some(Arc::new(TlsAcceptor::load(&listener)?)),
        None => None,
    };
    let socket = TcpListener::bind(config.bind)
        .await
        .map_err(|reason| BindError {
            listener: format!("http listener {}", config.bind),
            addr: config.bind,
            reason,
        })?;
    Ok(Bound {
        socket,
        tls,
        config: config.clone(),
    })
}

/// Serves `bound` until the broker shuts down.
pub fn spawn(bound: Bound, state: &Arc<BrokerState>, parker: &Arc<Parker>, reload: Reload) {
    let Bound {
        socket,
        tls,
        config,
    } = bound;
    if config.tokens.is_empty() && config.admin_users.is_empty() {
        tracing::warn!(
            "[http] has neither tokens nor admin_users: only /healthz and /readyz will answer"
        );
    }
    let http = Arc::new(Http {
        state: state.clone(),
        parker: parker.clone(),
        config,
        reload,
    });
    let app = router(http).into_make_service_with_connect_info::<Peer>();
    let shutdown = state.shutdown.clone();
    let stop = async move { shutdown.cancelled().await };
    let addr = socket.local_addr().ok();
    tracing::info!(addr = ?addr, tls = tls.is_some(), "HTTP listener ready");
    state.tasks.spawn(async move {
        let served = match tls {
            Some(acceptor) => {
                let listener = tls::Listener::new(socket, acceptor);
                axum::serve(listener, app)
                    .with_graceful_shutdown(stop)
                    .await
            }
            None => axum::serve(socket, app).with_graceful_shutdown(stop).await,
        };
        if let Err(e) = served {
            tracing::error!(error = %e, "the HTTP listener stopped");
        }
    });
}

/// The client's address, for the login guard and the logs.
#[derive(Debug, Clone, Copy)]
struct Peer(SocketAddr);

// One impl per listener type: a generic one over `Listener<Addr =
// SocketAddr>` would overlap axum's own impl for its `TapIo` listeners.
impl Connected<IncomingStream<'_, TcpListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Peer {
        Peer(*stream.remote_addr())
    }
}

impl Connected<IncomingStream<'_, tls::Listener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, tls::Listener>) -> Peer {
        Peer(*stream.remote_addr())
    }
}
/// Every route: the health checks open, the rest behind [`auth::require`].
fn router(http: Arc<Http>) -> Router {
    let guarded = Router::new()
        .route("/metrics", get(metrics))
        .merge(api::routes())
        .merge(dashboard::routes())
        .route_layer(axum::middleware::from_fn_with_state(
            http.clone(),
            auth::require,
        ));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(dashboard::pages())
        .merge(guarded)
        .fallback(not_found)
        .with_state(http)
}

/// The process is alive and serving HTTP.
async fn healthz() -> &'static str {
    "ok\n"
}

/// Whether this broker should be sent clients: its listeners are bound and
/// its store open (both done before this listener serves), it is not
/// draining or stopping, and in a cluster it reaches NATS. 503 otherwise,
/// with what is missing.
async fn readyz(State(http): State<Arc<Http>>) -> Response {
    let state = &http.state;
    let problem = if state.draining.is_cancelled() {
        Some("draining: clients are being sent to other nodes")
    } else if !state.fabric.available() {
        Some("not connected to the cluster's NATS servers")
    } else {
        None
    };
    match problem {
        None => (StatusCode::OK, "ready\n").into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

/// Prometheus's text exposition format, version 0.0.4.
async fn metrics(State(http): State<Arc<Http>>) -> Response {
    let body = prometheus::render(&http.state, &http.parker);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn not_found() -> api::ApiError {
    api::ApiError(
        StatusCode::NOT_FOUND,
        "no such route: see /api/openapi.json, /metrics, /healthz, /readyz".into(),
    )
}
