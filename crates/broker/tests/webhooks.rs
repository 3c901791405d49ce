//! Webhooks over real sockets, to an HTTP endpoint started here (axum):
//! each event and what it says, the topic filters, retries after 5xx (and
//! none after 4xx), and an endpoint that hangs, which must not hold up a
//! publisher (its events are dropped and counted instead).

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use common::*;
use serde_json::Value;
use tern_broker::Config;
use tern_broker::config::WebhookConfig;
use tern_codec::*;
use tokio::sync::mpsc;

/// An endpoint that answers with `answers` in turn (then 200) and hands
/// every body it got to `events`.
struct Endpoint {
    addr: SocketAddr,
    events: mpsc::UnboundedReceiver<Value>,
}

type Shared = (Arc<Mutex<Vec<StatusCode>>>, mpsc::UnboundedSender<Value>);

async fn endpoint(answers: Vec<StatusCode>) -> Endpoint {
    let (tx, events) = mpsc::unbounded_channel();
    let shared: Shared = (Arc::new(Mutex::new(answers)), tx);
    let app = axum::Router::new()
        .route(
            "/hook",
            post(
                |State((answers, tx)): State<Shared>, body: String| async move {
                    let _ = tx.send(serde_json::from_str(&body).unwrap_or(Value::Null));
                    let mut answers = answers.lock().unwrap();
                    if answers.is_empty() {
                        StatusCode::OK
                    } else {
                        answers.remove(0)
                    }
                },
            ),
        )
        .with_state(shared);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Endpoint { addr, events }
}

impl Endpoint {
    async fn next(&mut self) -> Value {
        tokio::time::timeout(WAIT, self.events.recv())
            .await
            .expect("an event within the wait")
            .unwrap()
    }

    async fn none(&mut self) {
        if let Ok(Some(event)) = tokio::time::timeout(QUIET, self.events.recv()).await {
            panic!("unexpected event {event}");
        }
    }
}

/// The test configuration with `hook`, and `$SYS` (where the webhooks'
/// figures are) each second.
fn hooked(hook: WebhookConfig) -> Config {
    Config {
        webhooks: vec![hook],
        sys_interval_secs: 1,
        ..test_config()
    }
}

fn hook_to(addr: SocketAddr) -> WebhookConfig {
    WebhookConfig::new(&format!("http://{addr}/hook"))
}

/// (event, clientid) of an event, and the field that matters to it.
fn summary(e: &Value) -> (String, String, String) {
    let detail = match e["event"].as_str() {
        Some("message.published") => format!("{} {}", e["topic"], e["payload"]),
        Some("message.dropped") => format!("{} {} {}", e["topic"], e["payload"], e["reason"]),
        Some("client.connected") => format!("{} {}", e["protocol"], e["listener"]),
        _ => e["reason"].to_string(),
    };
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    (text(&e["event"]), text(&e["clientid"]), detail)
}

#[tokio::test]
async fn each_event_says_what_happened() {
    let mut hook_end = endpoint(Vec::new()).await;
    let mut hook = hook_to(hook_end.addr);
    hook.topics = vec!["sensors/#".into()];
    let broker = start_with(Config {
        max_queued_messages: 1,
        ..hooked(hook)
    })
    .await;
    let addr = broker.local_addr();
    // The listener as configured (port 0 here).
    let listener = "\"tcp 127.0.0.1:0\"";

    // A persistent subscriber, away while messages come.
    let (mut sub, _) = TestClient::connect_with(addr, persistent(ProtocolVersion::V5, "sub")).await;
    sub.subscribe("sensors/#", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(summary(&hook_end.next().await));
    }
    let s = |a: &str, b: &str, c: &str| (a.to_owned(), b.to_owned(), c.to_owned());
    assert_eq!(
        got,
        [
            s("session.created", "sub", "null"),
            s("client.connected", "sub", &format!("\"5\" {listener}")),
            s("client.disconnected", "sub", "\"normal\""),
        ]
    );

    let mut publisher = TestClient::connect(addr, ProtocolVersion::V3_1_1, "pub").await;
    publisher.puback("sensors/t", 1).await;
    publisher.puback("other/t", 2).await; // no filter of the hook matches
    // The subscriber's queue (1) is full: dropped for it, and told.
    publisher.puback("sensors/t", 3).await;
    publisher.disconnect().await;
    let mut got = Vec::new();
    for _ in 0..7 {
        got.push(summary(&hook_end.next().await));
    }
    hook_end.none().await;
    // (`puback` publishes "x".)
    let published = || s("message.published", "pub", "\"sensors/t\" \"x\"");
    assert_eq!(
        got,
        [
            s("session.created", "pub", "null"),
            s("client.connected", "pub", &format!("\"3.1.1\" {listener}")),
            published(),
            // Routed (and dropped for "sub") before it is told as published.
            s(
                "message.dropped",
                "sub",
                "\"sensors/t\" \"x\" \"queue_full\""
            ),
            published(),
            s("client.disconnected", "pub", "\"normal\""),
            s("session.ended", "pub", "\"disconnected\""),
        ]
    );
    broker.shutdown().await;
}

/// The published message's fields: QoS, retain, the username, a
/// timestamp, and a payload that is not UTF-8 in base64.
#[tokio::test]
async fn a_published_message_is_described_whole() {
    let mut hook_end = endpoint(Vec::new()).await;
    let mut hook = hook_to(hook_end.addr);
    hook.events = vec!["message.published".into()];
    let broker = start_with(hooked(hook)).await;
    let mut c = TestClient::connect(broker.local_addr(), ProtocolVersion::V5, "bin").await;
    c.publish("raw/bytes", b"\xff\x00\x01", QoS::AtMostOnce, true)
        .await;
    let e = hook_end.next().await;
    assert_eq!(e["event"], "message.published");
    assert_eq!(
        (e["topic"].as_str(), e["qos"].as_u64()),
        (Some("raw/bytes"), Some(0))
    );
    assert_eq!(
        (e["retain"].as_bool(), e["username"].is_null()),
        (Some(true), true)
    );
    assert_eq!(
        (e["payload"].as_str(), e["payload_encoding"].as_str()),
        (Some("/wAB"), Some("base64"))
    );
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let at = e["timestamp"].as_u64().unwrap();
    assert!(
        at <= now_ms && now_ms - at < 60_000,
        "{at} against {now_ms}"
    );
    broker.shutdown().await;
}

/// 5xx is tried again (after 0.5 s, then 1 s); 4xx is not: the endpoint
/// refused the event itself.
#[tokio::test]
async fn a_failing_endpoint_is_tried_again_and_a_refusing_one_is_not() {
    let busy = StatusCode::SERVICE_UNAVAILABLE;
    let mut hook_end = endpoint(vec![busy, busy, StatusCode::BAD_REQUEST]).await;
    let mut hook = hook_to(hook_end.addr);
    hook.events = vec!["client.connected".into()];
    let broker = start_with(hooked(hook)).await;
    let _first = TestClient::connect(broker.local_addr(), ProtocolVersion::V5, "first").await;
    for _ in 0..3 {
        assert_eq!(hook_end.next().await["clientid"], "first");
    }
    // The third answer (400) was final: nothing more of "first".
    let _second = TestClient::connect(broker.local_addr(), ProtocolVersion::V5, "second").await;
    assert_eq!(hook_end.next().await["clientid"], "second");
    hook_end.none().await;
    // Delivered: "second" (and the figures' own watcher, connecting now).
    let figures = webhook_figures(broker.local_addr(), |f| {
        f.get("delivered") >= Some(&1) && f.get("failed") == Some(&1)
    })
    .await;
    assert_eq!(figures.get("dropped"), Some(&0), "{figures:?}");
    broker.shutdown().await;
}

/// An endpoint that takes the connection and never answers: 2,000 QoS 1
/// publishes are acknowledged all the same (the message path only queues),
/// and what did not fit in the webhook's queue is dropped and counted.
#[tokio::test]
async fn an_endpoint_that_hangs_does_not_hold_up_publishers() {
    let hanging = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hang_addr = hanging.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = hanging.accept().await {
            held.push(socket); // never read, never answered
        }
    });
    let mut hook = hook_to(hang_addr);
    hook.events = vec!["message.published".into()];
    hook.queue_size = 10;
    hook.timeout_ms = 60_000;
    let broker = start_with(hooked(hook)).await;
    let mut c = TestClient::connect(broker.local_addr(), ProtocolVersion::V5, "p").await;
    for i in 1..=2000u16 {
        c.puback("hang/t", i).await;
    }
    // Every message was routed (and its event queued or dropped) before its
    // PUBACK: at most the queue (10) and the one being sent were not dropped.
    let figures = webhook_figures(broker.local_addr(), |f| f.get("dropped") >= Some(&1989)).await;
    assert!(figures["dropped"] <= 2000, "{figures:?}");
    broker.shutdown().await;
    held.abort();
}

/// Waits until the `$SYS/broker/webhooks/...` figures (published each
/// second: `hooked` sets `sys_interval_secs`) satisfy `done`, given by name
/// (`delivered`, `failed`, `dropped`); returns them.
async fn webhook_figures(
    addr: SocketAddr,
    done: impl Fn(&std::collections::HashMap<String, u64>) -> bool,
) -> std::collections::HashMap<String, u64> {
    let mut watcher = TestClient::connect(addr, ProtocolVersion::V5, "figures").await;
    watcher
        .subscribe("$SYS/broker/webhooks/#", QoS::AtMostOnce)
        .await;
    let mut figures = std::collections::HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done(&figures) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "figures now: {figures:?}"
        );
        let p = watcher.recv_publish().await;
        let name = p.topic.rsplit('/').next().unwrap_or_default().to_owned();
        let value = std::str::from_utf8(&p.payload).unwrap().parse().unwrap();
        figures.insert(name, value);
    }
    figures
}
