//! The live web dashboard: a page served from the binary (its HTML,
//! JavaScript and CSS are in `dashboard/` beside this file, embedded at
//! build time: it needs no network beyond this listener) and the stream of
//! figures it plots.
//!
//! The page holds no broker state, so it is served to anyone; everything it
//! shows comes from the admin API and from `/api/v1/dashboard/stream`, both
//! behind the listener's authentication (the page sends the token or
//! password in `Authorization`, as any API client: no cookie, so no CSRF).
//!
//! The stream is server-sent events, sampled here: every
//! 1/[`SAMPLES_PER_SEC`] s one `stats` event (the counters the overview
//! plots) and, when topics changed, one `topics` event with what changed
//! since the last ([`Monitor::changed`]). However fast messages come, a
//! page costs the broker a few small events a second, and the message path
//! the relaxed load and shard update of [`Monitor::note`] while a page is
//! open.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use futures_util::stream::{self, Stream};
use serde::Serialize;

use super::Http;
use super::prometheus::resident_bytes;
use crate::metrics::Metrics;
use crate::monitor::{SAMPLES_PER_SEC, Watch};

/// The page and its assets: open to anyone (no broker state in them).
pub fn pages() -> Router<Arc<Http>> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/dashboard/") }))
        .route("/dashboard", get(|| async { Redirect::to("/dashboard/") }))
        .route("/dashboard/", get(index))
        .route("/dashboard/app.js", get(script))
        .route("/dashboard/style.css", get(style))
}

/// The stream, behind the listener's authentication.
pub fn routes() -> Router<Arc<Http>> {
    Router::new().route("/api/v1/dashboard/stream", get(stream))
}

async fn index() -> Response {
    asset(
        "text/html; charset=utf-8",
        include_str!("dashboard/index.html"),
    )
}

async fn script() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("dashboard/app.js"),
    )
}

async fn style() -> Response {
    asset(
        "text/css; charset=utf-8",
        include_str!("dashboard/style.css"),
    )
}

/// An embedded asset, with headers that keep it to this origin: scripts and
/// requests from here only, never framed by another site.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// What the overview plots, as of one sample.
#[derive(Serialize)]
struct Stats {
    /// Milliseconds on the monitor's clock.
    t: u64,
    connections: u64,
    sessions: usize,
    subscriptions: usize,
    retained: usize,
    /// PUBLISH packets received and sent, and messages dropped, so far.
    received: u64,
    sent: u64,
    dropped: u64,
    rss_bytes: Option<u64>,
    /// Topics the topic tree holds, and messages of topics it could not.
    topics: usize,
    untracked: u64,
}

/// The stream of one open page: holds its [`Watch`] for as long as the
/// page reads (the monitor records while any page does).
struct Page {
    http: Arc<Http>,
    watch: Watch,
    tick: tokio::time::Interval,
    /// Events of this tick not yet sent.
    queued: Vec<Event>,
}

async fn stream(
    State(http): State<Arc<Http>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    // Seeded as MQTT Explorer's subscriptions to `#` and `$SYS/#` are.
    let watch = http.state.monitor.watch(|f| {
        for filter in ["#", "$SYS/#"] {
            http.state.retained.for_each_match(filter, &mut |m| f(m));
        }
    });
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / SAMPLES_PER_SEC));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let page = Page {
        http,
        watch,
        tick,
        queued: Vec::new(),
    };
    let events = stream::unfold(page, |mut page| async move {
        while page.queued.is_empty() {
            page.tick.tick().await;
            page.sample();
        }
        let event = page.queued.remove(0);
        Some((Ok(event), page))
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}

impl Page {
    /// Queues this tick's events: the figures, and the topics that changed.
    fn sample(&mut self) {
        let state = &self.http.state;
        let monitor = &state.monitor;
        let m = &state.metrics;
        let (topics, untracked) = monitor.counts();
        let stats = Stats {
            t: monitor.clock(),
            connections: Metrics::get(&m.clients_connected),
            sessions: state.sessions().len(),
            subscriptions: state.tree().len(),
            retained: state.retained.count(),
            received: m.received_total(),
            sent: Metrics::get(&m.publish_sent),
            dropped: m.dropped_total(),
            rss_bytes: resident_bytes(),
            topics,
            untracked,
        };
        self.queued.push(json_event("stats", &stats));
        let changed = monitor.changed(&mut self.watch);
        if !changed.is_empty() {
            self.queued.push(json_event("topics", &changed));
        }
    }
}

fn json_event(name: &str, data: &impl Serialize) -> Event {
    Event::default()
        .event(name)
        .json_data(data)
        .unwrap_or_else(|_| Event::default().comment("unserializable"))
}
