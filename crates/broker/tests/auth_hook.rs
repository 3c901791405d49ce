//! The authentication hook over real sockets, against an HTTP service
//! started here (axum) that answers by username: allow (with topic rules,
//! or as a superuser), deny (in JSON, or with a 403), ignore (the password
//! file decides), garbage, a 500, and no answer at all; the cache, and
//! fail_open.

mod common;

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use common::*;
use serde_json::{Value, json};
use tern_broker::Config;
use tern_broker::config::AuthHookConfig;
use tern_broker::password::PasswordHash;
use tern_codec::*;

/// What the service was asked, in order.
type Asked = Arc<Mutex<Vec<Value>>>;

async fn answer(State(asked): State<Asked>, body: String) -> Response {
    let request: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    asked.lock().unwrap().push(request.clone());
    let rules = json!([
        {"permission": "allow", "action": "publish", "topic": "alice/#"},
        {"permission": "allow", "action": "subscribe", "topic": "public/#"},
        {"permission": "allow", "action": "all", "topic": "devices/${clientid}/#"},
        {"permission": "deny", "action": "all", "topic": "alice/secret"},
    ]);
    match request["username"].as_str() {
        Some("alice") if request["password"] == "right" => {
            axum::Json(json!({"result": "allow", "acl": rules})).into_response()
        }
        Some("root") => {
            axum::Json(json!({"result": "allow", "is_superuser": true})).into_response()
        }
        Some("nobody") => StatusCode::NO_CONTENT.into_response(),
        Some("carol") => StatusCode::FORBIDDEN.into_response(),
        Some("ignored") => axum::Json(json!({"result": "ignore"})).into_response(),
        Some("garbage") => "<html>oops</html>".into_response(),
        Some("broken") => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        Some("hang") => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            StatusCode::OK.into_response()
        }
        _ => axum::Json(json!({"result": "deny"})).into_response(),
    }
}

/// The service's address and what it was asked.
async fn service() -> (SocketAddr, Asked) {
    let asked = Asked::default();
    let app = axum::Router::new()
        .route("/auth", post(answer))
        .with_state(asked.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, asked)
}

/// A broker asking the service at `addr`, with a password file that knows
/// `ignored`/`pw`, and anonymous clients refused.
async fn broker_with(
    addr: SocketAddr,
    tune: impl FnOnce(&mut AuthHookConfig),
) -> tern_broker::BrokerHandle {
    let passwd = std::env::temp_dir().join(format!(
        "tern-hook-passwd-{}-{}",
        std::process::id(),
        addr.port()
    ));
    let hash = PasswordHash::new("pw", NonZeroU32::new(1000).unwrap()).unwrap();
    std::fs::write(&passwd, format!("ignored:{}\n", hash.encode())).unwrap();
    let mut hook = AuthHookConfig::new(&format!("http://{addr}/auth"));
    hook.timeout_ms = 300;
    tune(&mut hook);
    start_with(Config {
        auth_hook: Some(hook),
        password_file: Some(passwd),
        allow_anonymous: Some(false),
        ..test_config()
    })
    .await
}

fn login(id: &str, user: &str, password: &str) -> Connect {
    Connect {
        username: Some(user.into()),
        password: Some(Bytes::copy_from_slice(password.as_bytes())),
        ..connect_packet(ProtocolVersion::V5, id)
    }
}

async fn connack(broker: SocketAddr, id: &str, user: &str, password: &str) -> ReasonCode {
    TestClient::connect_with(broker, login(id, user, password))
        .await
        .1
        .reason
}

#[tokio::test]
async fn the_hook_decides_with_what_it_is_told() {
    let (addr, asked) = service().await;
    let broker = broker_with(addr, |_| {}).await;
    let at = broker.local_addr();
    assert_eq!(
        connack(at, "a1", "alice", "right").await,
        ReasonCode::Success
    );
    let first = asked.lock().unwrap()[0].clone();
    assert_eq!(first["clientid"], "a1");
    assert_eq!(first["password"], "right");
    assert_eq!(first["password_encoding"], "plain");
    assert_eq!(first["peerhost"], "127.0.0.1");
    assert_eq!(first["listener"], "tcp 127.0.0.1:0");
    assert_eq!(first["protocol"], "5");
    assert_eq!(
        connack(at, "a2", "alice", "wrong").await,
        ReasonCode::BadUserNameOrPassword
    );
    assert_eq!(
        connack(at, "c", "carol", "x").await,
        ReasonCode::BadUserNameOrPassword,
        "403"
    );
    assert_eq!(
        connack(at, "n", "nobody", "x").await,
        ReasonCode::Success,
        "204"
    );
    assert_eq!(connack(at, "r", "root", "x").await, ReasonCode::Success);
    // "ignore": the password file decides.
    assert_eq!(
        connack(at, "i1", "ignored", "pw").await,
        ReasonCode::Success
    );
    assert_eq!(
        connack(at, "i2", "ignored", "nope").await,
        ReasonCode::BadUserNameOrPassword
    );
    broker.shutdown().await;
}

/// Garbage, a 500 and no answer within timeout_ms refuse the client with
/// 0x88 (fail-closed); with fail_open the password file decides instead.
#[tokio::test]
async fn a_hook_that_fails_refuses_unless_it_fails_open() {
    let (addr, _) = service().await;
    let broker = broker_with(addr, |_| {}).await;
    let at = broker.local_addr();
    for user in ["garbage", "broken", "hang"] {
        let started = tokio::time::Instant::now();
        assert_eq!(
            connack(at, user, user, "x").await,
            ReasonCode::ServerUnavailable,
            "{user}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{user}: waited {:?}",
            started.elapsed()
        );
    }
    broker.shutdown().await;

    let open = broker_with(addr, |h| h.fail_open = true).await;
    let at = open.local_addr();
    // Not in the password file: refused by it, no longer for the hook.
    assert_eq!(
        connack(at, "h", "hang", "x").await,
        ReasonCode::BadUserNameOrPassword
    );
    open.shutdown().await;
}

/// The same login within cache_secs is not asked again; another password
/// is.
#[tokio::test]
async fn answers_are_kept_for_the_same_login() {
    let (addr, asked) = service().await;
    let broker = broker_with(addr, |_| {}).await;
    let at = broker.local_addr();
    for _ in 0..3 {
        assert_eq!(
            connack(at, "a", "alice", "right").await,
            ReasonCode::Success
        );
    }
    assert_eq!(asked.lock().unwrap().len(), 1);
    assert_eq!(
        connack(at, "a", "alice", "other").await,
        ReasonCode::BadUserNameOrPassword
    );
    assert_eq!(asked.lock().unwrap().len(), 2);
    broker.shutdown().await;

    let uncached = broker_with(addr, |h| h.cache_secs = 0).await;
    for _ in 0..2 {
        connack(uncached.local_addr(), "a", "alice", "right").await;
    }
    assert_eq!(asked.lock().unwrap().len(), 4);
    uncached.shutdown().await;
}

/// The rules the hook gave are the client's: publish and subscribe where
/// they allow, `${clientid}` its own, a deny over an allow; a superuser
/// anywhere.
#[tokio::test]
async fn the_hooks_rules_are_the_clients_acl() {
    let (addr, _) = service().await;
    let broker = broker_with(addr, |_| {}).await;
    let at = broker.local_addr();
    let (mut alice, ack) = TestClient::connect_with(at, login("cam-1", "alice", "right")).await;
    assert_eq!(ack.reason, ReasonCode::Success);
    assert!(!alice.puback("alice/x", 1).await.reason.is_error());
    assert_eq!(
        alice.puback("bob/x", 2).await.reason,
        ReasonCode::NotAuthorized
    );
    assert_eq!(
        alice.puback("alice/secret", 3).await.reason,
        ReasonCode::NotAuthorized
    );
    assert!(
        !alice
            .puback("devices/cam-1/state", 4)
            .await
            .reason
            .is_error()
    );
    assert_eq!(
        alice.puback("devices/cam-2/state", 5).await.reason,
        ReasonCode::NotAuthorized
    );
    assert_eq!(
        alice.subscribe("public/#", QoS::AtMostOnce).await,
        ReasonCode::Success
    );
    assert_eq!(
        alice.subscribe("devices/cam-1/#", QoS::AtMostOnce).await,
        ReasonCode::Success
    );
    assert_eq!(
        alice.subscribe("#", QoS::AtMostOnce).await,
        ReasonCode::NotAuthorized
    );
    assert_eq!(
        alice.subscribe("alice/#", QoS::AtMostOnce).await,
        ReasonCode::NotAuthorized,
        "publish only"
    );

    let (mut root, _) = TestClient::connect_with(at, login("root-1", "root", "x")).await;
    assert_eq!(
        root.subscribe("#", QoS::AtMostOnce).await,
        ReasonCode::Success
    );
    assert!(!root.puback("anything/at/all", 1).await.reason.is_error());
    broker.shutdown().await;
}
