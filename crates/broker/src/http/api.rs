//! The admin API: JSON under `/api/v1`, described by the OpenAPI 3 file
//! served at `/api/openapi.json` (`openapi.json` beside this file).
//!
//! Clients (connected sessions) and sessions (connected or not): list with
//! filters and paging, show, disconnect (MQTT 5: DISCONNECT 0x98
//! Administrative action), delete an offline session; subscriptions;
//! retained messages: list by filter, get, delete; publish; reload the
//! password, ACL and certificate files (as SIGHUP); broker information; a
//! backup of the data file (`backup.rs`).
//!
//! Lists are sorted by their key and paged with `limit` (1 to 1000, default
//! 100) and `after` (the `next` of the previous page). A list copies the
//! session handles under the registry's lock, then reads each session under
//! its own lock, one at a time: no lock is held across I/O, and a client's
//! connection waits at most for one session's read. Bad input is a 4xx with
//! `{"error": "..."}`, never a panic.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::Router;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tern_codec::topic::{is_valid_topic_filter, is_valid_topic_name};
use tern_codec::{ByteStr, Publish, PublishProperties, QoS, ReasonCode};

use super::Http;
use crate::config::ListenerConfig;
use crate::delayed::View;
use crate::message::Message;
use crate::registry;
use crate::router;
use crate::session::{Described, NEVER_EXPIRES, Session};
use crate::sys::VERSION;

/// The client id the admin API publishes as (its messages' origin).
const ADMIN_ORIGIN: &str = "$tern-admin";

/// The API's routes (behind the HTTP listener's authentication).
pub fn routes() -> Router<Arc<Http>> {
    Router::new()
        .route("/api/openapi.json", get(openapi))
        .route("/api/v1/broker", get(broker))
        .route("/api/v1/clients", get(list_clients))
        .route(
            "/api/v1/clients/{client_id}",
            get(show_client).delete(disconnect_client),
        )
        .route("/api/v1/sessions", get(list_sessions))
        .route(
            "/api/v1/sessions/{client_id}",
            get(show_session).delete(delete_session),
        )
        .route("/api/v1/subscriptions", get(list_subscriptions))
        .route("/api/v1/retained", get(list_retained))
        .route(
            "/api/v1/retained/{*topic}",
            get(show_retained).delete(delete_retained),
        )
        .route("/api/v1/delayed", get(list_delayed))
        .route("/api/v1/delayed/{id}", delete(cancel_delayed))
        .route("/api/v1/publish", post(publish))
        .route("/api/v1/reload", post(reload))
        .route("/api/v1/backup", get(super::backup::backup))
}

/// A 4xx (or 5xx) answer with `{"error": message}`.
pub struct ApiError(pub StatusCode, pub String);

impl ApiError {
    fn bad(message: impl Into<String>) -> ApiError {
        ApiError(StatusCode::BAD_REQUEST, message.into())
    }

    fn not_found(message: impl Into<String>) -> ApiError {
        ApiError(StatusCode::NOT_FOUND, message.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> ApiError {
        ApiError::bad(format!("bad query string: {}", e.body_text()))
    }
}

impl From<PathRejection> for ApiError {
    fn from(e: PathRejection) -> ApiError {
        ApiError::bad(format!("bad path: {}", e.body_text()))
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> ApiError {
        ApiError(e.status(), format!("bad JSON body: {}", e.body_text()))
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        include_str!("openapi.json"),
    )
        .into_response()
}

// ---------------------------------------------------------------------------
// Paging
// ---------------------------------------------------------------------------

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

/// A page of a list, and where the next one starts (`None`: the last).
#[derive(Serialize)]
struct Page<T> {
    data: Vec<T>,
    next: Option<String>,
}

/// Takes up to `limit` items (1 to 1000) of `sorted` after the key `after`.
fn page<T>(
    sorted: Vec<(String, T)>,
    after: Option<&str>,
    limit: Option<usize>,
) -> Result<Page<T>, ApiError> {
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad(format!("limit must be 1 to {MAX_LIMIT}")));
    }
    let start = after.map_or(0, |a| sorted.partition_point(|(k, _)| k.as_str() <= a));
    let mut rest = sorted.into_iter().skip(start);
    let data: Vec<(String, T)> = rest.by_ref().take(limit).collect();
    let next = match rest.next() {
        Some(_) => data.last().map(|(k, _)| k.clone()),
        None => None,
    };
    Ok(Page {
        data: data.into_iter().map(|(_, t)| t).collect(),
        next,
    })
}

// ---------------------------------------------------------------------------
// The broker
// ---------------------------------------------------------------------------

#[derive(Serialize)]
struct BrokerInfo {
    version: &'static str,
    uptime_secs: u64,
    listeners: Vec<ListenerInfo>,
    persistence: bool,
    cluster: Option<String>,
    connections: u64,
    sessions: usize,
    subscriptions: usize,
    retained_messages: usize,
}

#[derive(Serialize)]
struct ListenerInfo {
    transport: &'static str,
    bind: String,
    connections: usize,
}

async fn broker(State(http): State<Arc<Http>>) -> Json<BrokerInfo> {
    let state = &http.state;
    let counts = state.limits.connections_per_listener();
    let listeners = state
        .config
        .listeners
        .iter()
        .zip(counts)
        .map(|(l, connections)| ListenerInfo {
            transport: l.transport.name(),
            bind: l.bind.to_string(),
            connections,
        })
        .collect();
    Json(BrokerInfo {
        version: VERSION,
        uptime_secs: state.started.elapsed().as_secs(),
        listeners,
        persistence: state.store.is_some(),
        cluster: state.config.cluster.as_ref().map(|c| c.name.clone()),
        connections: crate::metrics::Metrics::get(&state.metrics.clients_connected),
        sessions: state.sessions().len(),
        subscriptions: state.tree().len(),
        retained_messages: state.retained.count(),
    })
}

// ---------------------------------------------------------------------------
// Clients and sessions
// ---------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionQuery {
    /// Client ids that start with this.
    prefix: Option<String>,
    username: Option<String>,
    /// Sessions only: with (true) or without (false) a connected client.
    connected: Option<bool>,
    after: Option<String>,
    limit: Option<usize>,
}

/// A session in a list.
#[derive(Serialize)]
struct SessionSummary {
    client_id: String,
    connected: bool,
    username: Option<String>,
    /// Seconds the session outlives its connection; `null`: for ever.
    expiry_secs: Option<u32>,
    subscriptions: usize,
    queued: usize,
    in_flight: usize,
}

/// One session, whole.
#[derive(Serialize)]
struct SessionDetail {
    #[serde(flatten)]
    summary: SessionSummary,
    subscriptions_list: Vec<SubscriptionView>,
    /// The connected client, as it describes itself (`null` when offline,
    /// or when it did not answer within a second).
    connection: Option<ConnectionView>,
}

#[derive(Serialize)]
struct ConnectionView {
    address: String,
    protocol: &'static str,
    listener: String,
    keep_alive_secs: u16,
}

#[derive(Serialize)]
struct SubscriptionView {
    client_id: String,
    filter: String,
    qos: u8,
    no_local: bool,
    retain_as_published: bool,
    retain_handling: u8,
    subscription_id: Option<u32>,
}

fn summary(session: &Session) -> SessionSummary {
    let st = session.lock();
    SessionSummary {
        client_id: session.client_id.to_string(),
        connected: st.connection.is_some(),
        username: st.username.as_deref().map(str::to_owned),
        expiry_secs: (st.expiry_secs != NEVER_EXPIRES).then_some(st.expiry_secs),
        subscriptions: st.subscriptions.len(),
        queued: st.pending_len(),
        in_flight: st.inflight_len(),
    }
}

fn subscriptions_of(session: &Session) -> Vec<SubscriptionView> {
    let st = session.lock();
    st.subscriptions
        .iter()
        .map(|(filter, sub)| SubscriptionView {
            client_id: session.client_id.to_string(),
            filter: filter.to_string(),
            qos: sub.options.qos as u8,
            no_local: sub.options.no_local,
            retain_as_published: sub.options.retain_as_published,
            retain_handling: sub.options.retain_handling as u8,
            subscription_id: sub.subscription_id,
        })
        .collect()
}

/// Every session, sorted by client id.
fn all_sessions(http: &Http) -> Vec<Arc<Session>> {
    let mut sessions = http.state.session_handles();
    sessions.sort_unstable_by(|a, b| a.client_id.as_str().cmp(b.client_id.as_str()));
    sessions
}

fn list(
    http: &Http,
    query: &SessionQuery,
    connected_only: bool,
) -> Result<Page<SessionSummary>, ApiError> {
    let matching = all_sessions(http).into_iter().filter(|s| {
        query
            .prefix
            .as_deref()
            .is_none_or(|p| s.client_id.as_str().starts_with(p))
    });
    let wanted_connection = if connected_only {
        Some(true)
    } else {
        query.connected
    };
    let summaries = matching
        .map(|s| summary(&s))
        .filter(|s| wanted_connection.is_none_or(|c| s.connected == c))
        .filter(|s| {
            query
                .username
                .as_deref()
                .is_none_or(|u| s.username.as_deref() == Some(u))
        })
        .map(|s| (s.client_id.clone(), s))
        .collect();
    page(summaries, query.after.as_deref(), query.limit)
}

async fn list_clients(
    State(http): State<Arc<Http>>,
    query: Result<Query<SessionQuery>, QueryRejection>,
) -> ApiResult<Page<SessionSummary>> {
    let Query(query) = query?;
    if query.connected.is_some() {
        return Err(ApiError::bad(
            "clients are connected: use /api/v1/sessions?connected=... for sessions",
        ));
    }
    Ok(Json(list(&http, &query, true)?))
}

async fn list_sessions(
    State(http): State<Arc<Http>>,
    query: Result<Query<SessionQuery>, QueryRejection>,
) -> ApiResult<Page<SessionSummary>> {
    let Query(query) = query?;
    Ok(Json(list(&http, &query, false)?))
}

fn find(http: &Http, client_id: &str) -> Result<Arc<Session>, ApiError> {
    http.state
        .sessions()
        .get(client_id)
        .ok_or_else(|| ApiError::not_found(format!("no session for client id {client_id:?}")))
}

/// Asks the connected client's connection who it is (it answers at its
/// next turn; a parked one is resumed for it).
async fn describe(http: &Http, session: &Session) -> Option<ConnectionView> {
    let asked = {
        let mut st = session.lock();
        let asked = st.ask_describe()?;
        session.wake(st);
        asked
    };
    let told = tokio::time::timeout(std::time::Duration::from_secs(1), asked)
        .await
        .ok()?
        .ok()?;
    Some(view(http, told))
}

fn view(http: &Http, d: Described) -> ConnectionView {
    let listener = http.state.config.listeners.get(d.listener);
    ConnectionView {
        address: d.peer.to_string(),
        protocol: d.protocol.name(),
        listener: listener.map_or_else(String::new, ListenerConfig::label),
        keep_alive_secs: d.keep_alive_secs,
    }
}

async fn detail(http: &Http, session: &Session) -> SessionDetail {
    let summary = summary(session);
    let connection = match summary.connected {
        true => describe(http, session).await,
        false => None,
    };
    SessionDetail {
        summary,
        subscriptions_list: subscriptions_of(session),
        connection,
    }
}

async fn show_session(
    State(http): State<Arc<Http>>,
    client_id: Result<Path<String>, PathRejection>,
) -> ApiResult<SessionDetail> {
    let Path(client_id) = client_id?;
    let session = find(&http, &client_id)?;
    Ok(Json(detail(&http, &session).await))
}

async fn show_client(
    State(http): State<Arc<Http>>,
    client_id: Result<Path<String>, PathRejection>,
) -> ApiResult<SessionDetail> {
    let Path(client_id) = client_id?;
    let session = find(&http, &client_id)?;
    if !session.is_online() {
        return Err(ApiError::not_found(format!(
            "no client connected with client id {client_id:?}"
        )));
    }
    Ok(Json(detail(&http, &session).await))
}

/// Closes the client's connection: MQTT 5 clients get DISCONNECT 0x98
/// (Administrative action), older ones are closed. Its session stays by
/// its expiry, and its will is published by the usual rules.
async fn disconnect_client(
    State(http): State<Arc<Http>>,
    client_id: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let Path(client_id) = client_id?;
    let why = "asked through the admin API";
    if !registry::oust(
        &http.state,
        &client_id,
        ReasonCode::AdministrativeAction,
        why,
    ) {
        return Err(ApiError::not_found(format!(
            "no client connected with client id {client_id:?}"
        )));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Ends an offline session as its expiry would (its pending will is
/// published); a connected one is refused (disconnect it first).
async fn delete_session(
    State(http): State<Arc<Http>>,
    client_id: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let Path(client_id) = client_id?;
    let session = find(&http, &client_id)?;
    if registry::end_offline(&http.state, &session, None) {
        tracing::info!(%client_id, "session deleted through the admin API");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError(
            StatusCode::CONFLICT,
            format!("client {client_id:?} is connected: disconnect it first"),
        ))
    }
}

// ---------------------------------------------------------------------------
// Subscriptions
// ---------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscriptionQuery {
    client_id: Option<String>,
    /// Exactly this filter, as subscribed (`$share/...` included).
    filter: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
}

async fn list_subscriptions(
    State(http): State<Arc<Http>>,
    query: Result<Query<SubscriptionQuery>, QueryRejection>,
) -> ApiResult<Page<SubscriptionView>> {
    let Query(query) = query?;
    let sessions = match &query.client_id {
        Some(id) => find(&http, id).map(|s| vec![s]).unwrap_or_default(),
        None => all_sessions(&http),
    };
    let subscriptions = sessions
        .iter()
        .flat_map(|s| subscriptions_of(s))
        .filter(|v| query.filter.as_deref().is_none_or(|f| v.filter == f))
        // The key: client id and filter, which a client id cannot hold a
        // NUL of (MQTT strings exclude U+0000).
        .map(|v| (format!("{}\u{0}{}", v.client_id, v.filter), v))
        .collect();
    Ok(Json(page(
        subscriptions,
        query.after.as_deref(),
        query.limit,
    )?))
}

// ---------------------------------------------------------------------------
// Retained messages
// ---------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RetainedQuery {
    /// A topic filter (default `#`: every topic not starting with `$`).
    filter: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
}

#[derive(Serialize)]
struct RetainedView {
    topic: String,
    /// The payload as UTF-8 text, or base64 when it is not valid UTF-8.
    payload: String,
    encoding: &'static str,
    qos: u8,
    bytes: usize,
}

fn retained_view(message: &Message) -> RetainedView {
    let (payload, encoding) = match std::str::from_utf8(&message.payload) {
        Ok(text) => (text.to_owned(), "utf8"),
        Err(_) => (
            base64::engine::general_purpose::STANDARD.encode(&message.payload),
            "base64",
        ),
    };
    RetainedView {
        topic: message.topic.to_string(),
        payload,
        encoding,
        qos: message.qos as u8,
        bytes: message.payload.len(),
    }
}

async fn list_retained(
    State(http): State<Arc<Http>>,
    query: Result<Query<RetainedQuery>, QueryRejection>,
) -> ApiResult<Page<RetainedView>> {
    let Query(query) = query?;
    let filter = query.filter.as_deref().unwrap_or("#");
    if !is_valid_topic_filter(filter) {
        return Err(ApiError::bad(format!("{filter:?} is not a topic filter")));
    }
    let mut found = Vec::new();
    http.state.retained.for_each_match(filter, &mut |m| {
        found.push((m.topic.to_string(), retained_view(m)));
    });
    found.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    Ok(Json(page(found, query.after.as_deref(), query.limit)?))
}

fn topic_name(topic: &str) -> Result<(), ApiError> {
    if is_valid_topic_name(topic) {
        Ok(())
    } else {
        Err(ApiError::bad(format!(
            "{topic:?} is not a topic name (no wildcards, not empty)"
        )))
    }
}

async fn show_retained(
    State(http): State<Arc<Http>>,
    topic: Result<Path<String>, PathRejection>,
) -> ApiResult<RetainedView> {
    let Path(topic) = topic?;
    topic_name(&topic)?;
    let mut found = None;
    http.state
        .retained
        .for_each_match(&topic, &mut |m| found = Some(retained_view(m)));
    found
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no retained message on {topic:?}")))
}

/// Clears the topic's retained message (as an empty retained PUBLISH
/// would, but without delivering anything to subscribers).
async fn delete_retained(
    State(http): State<Arc<Http>>,
    topic: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let Path(topic) = topic?;
    topic_name(&topic)?;
    let mut exists = false;
    http.state
        .retained
        .for_each_match(&topic, &mut |_| exists = true);
    if !exists {
        return Err(ApiError::not_found(format!(
            "no retained message on {topic:?}"
        )));
    }
    let clear = admin_message(&topic, bytes::Bytes::new(), QoS::AtMostOnce, true);
    http.state.retained.set(&clear, None);
    tracing::info!(%topic, "retained message deleted through the admin API");
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------
// Delayed messages
// ---------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    after: Option<String>,
    limit: Option<usize>,
}

/// The messages published to `$delayed/...` and not yet due, earliest
/// first.
async fn list_delayed(
    State(http): State<Arc<Http>>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> ApiResult<Page<View>> {
    let Query(query) = query?;
    // Keys that sort as the schedule does: due time, then id.
    let keyed = http
        .state
        .delayed
        .list()
        .into_iter()
        .map(|v| (format!("{:020}.{:020}", v.due_ms, v.id), v))
        .collect();
    Ok(Json(page(keyed, query.after.as_deref(), query.limit)?))
}

async fn cancel_delayed(
    State(http): State<Arc<Http>>,
    id: Result<Path<u64>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let Path(id) = id?;
    if !router::cancel_delayed(&http.state, id) {
        return Err(ApiError::not_found(format!(
            "no delayed message {id} (published already, or never scheduled)"
        )));
    }
    tracing::info!(id, "delayed message cancelled through the admin API");
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------
// Publish, reload
// ---------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    topic: String,
    #[serde(default)]
    payload: String,
    #[serde(default)]
    encoding: Encoding,
    #[serde(default)]
    qos: u8,
    #[serde(default)]
    retain: bool,
}

/// How a payload is written in JSON.
#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum Encoding {
    /// As text (default).
    #[default]
    Utf8,
    /// Base64, for any bytes.
    Base64,
}

#[derive(Serialize)]
struct Published {
    /// Sessions it matched.
    matched: usize,
}

fn admin_message(topic: &str, payload: bytes::Bytes, qos: QoS, retain: bool) -> Arc<Message> {
    let publish = Publish {
        dup: false,
        qos,
        retain,
        topic: ByteStr::from(topic),
        packet_id: None,
        payload,
        properties: PublishProperties::default(),
    };
    Message::from_publish(publish, ByteStr::from(ADMIN_ORIGIN), Instant::now())
}

/// Publishes as a client would (stored for persistent sessions at QoS 1/2,
/// retained if asked); answers once what it promises is durable.
async fn publish(
    State(http): State<Arc<Http>>,
    body: Result<Json<PublishBody>, JsonRejection>,
) -> ApiResult<Published> {
    let Json(body) = body?;
    topic_name(&body.topic)?;
    let qos = match body.qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        2 => QoS::ExactlyOnce,
        _ => return Err(ApiError::bad("qos must be 0, 1 or 2")),
    };
    let payload = match body.encoding {
        Encoding::Utf8 => bytes::Bytes::from(body.payload),
        Encoding::Base64 => base64::engine::general_purpose::STANDARD
            .decode(body.payload.as_bytes())
            .map(bytes::Bytes::from)
            .map_err(|e| ApiError::bad(format!("payload is not base64: {e}")))?,
    };
    let message = admin_message(&body.topic, payload, qos, body.retain);
    let state = &http.state;
    let routed = router::publish(state, message, None);
    if let Some(store) = state.store.as_ref().filter(|_| routed.ticket > 0) {
        let mut durable = store.watch();
        let _ = durable.wait_for(|d| *d >= routed.ticket).await;
    }
    Ok(Json(Published {
        matched: routed.matched,
    }))
}

#[derive(Serialize)]
struct Reloaded {
    reloaded: bool,
    errors: Vec<String>,
}

/// Re-reads the password file, the ACL and every certificate, as SIGHUP
/// does; what cannot be read keeps its current version (422, with why).
async fn reload(State(http): State<Arc<Http>>) -> Response {
    let errors = (http.reload)();
    let status = if errors.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    let reloaded = errors.is_empty();
    (status, Json(Reloaded { reloaded, errors })).into_response()
}
