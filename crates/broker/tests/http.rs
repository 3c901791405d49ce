//! The HTTP listener through real sockets: health checks open, everything
//! else behind a token or an admin user's password, failures spaced out and
//! counted, `/metrics` in Prometheus's format agreeing with `$SYS`, HTTPS.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::*;
use rustls::pki_types::ServerName;
use tern_broker::config::HttpConfig;
use tern_broker::password::PasswordHash;
use tern_broker::testing::{FIRST_DELAY, FREE_FAILURES, sys_figures};
use tern_broker::{BrokerHandle, Config};
use tern_codec::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "0123456789abcdef-test-token";

/// A response: status and body.
struct Answer {
    status: u16,
    headers: String,
    body: String,
}

/// Sends one HTTP/1.1 GET over `stream` and reads the whole answer.
async fn request(
    stream: impl AsyncRead + AsyncWrite + Unpin,
    path: &str,
    authorization: Option<&str>,
) -> Answer {
    exchange(stream, "GET", path, authorization, None).await
}

/// Sends one HTTP/1.1 request (`body`: JSON) and reads the whole answer.
async fn exchange(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    method: &str,
    path: &str,
    authorization: Option<&str>,
    body: Option<&str>,
) -> Answer {
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    let body_head = body
        .map(|b| {
            format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            )
        })
        .unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{auth}{body_head}Connection: close\r\n\r\n{}",
        body.unwrap_or("")
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT * 4, stream.read_to_end(&mut raw))
        .await
        .expect("an answer in time")
        .expect("read the answer");
    let text = String::from_utf8(raw).expect("UTF-8 answer");
    let (headers, body) = text.split_once("\r\n\r\n").expect("a header block");
    let status = headers[9..12].parse().expect("a status code");
    Answer {
        status,
        headers: headers.to_ascii_lowercase(),
        body: body.to_owned(),
    }
}

async fn get(addr: SocketAddr, path: &str, authorization: Option<&str>) -> Answer {
    let stream = TcpStream::connect(addr).await.expect("connect to HTTP");
    request(stream, path, authorization).await
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn basic(user: &str, password: &str) -> String {
    let pair = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {pair}")
}

/// A test's files, removed when dropped.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!("tern-http-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A broker with an HTTP listener on a free port, `edit` applied.
async fn start_http(edit: impl FnOnce(&mut Config)) -> (BrokerHandle, SocketAddr) {
    let mut config = Config {
        http: Some(HttpConfig {
            tokens: vec![TOKEN.into()],
            ..HttpConfig::on("127.0.0.1:0".parse().unwrap())
        }),
        ..test_config()
    };
    edit(&mut config);
    let broker = start_with(config).await;
    let addr = broker.http_addr().expect("an HTTP listener");
    (broker, addr)
}

#[tokio::test]
async fn health_checks_answer_anyone_and_metrics_only_a_token() {
    let (_broker, http) = start_http(|_| {}).await;
    let health = get(http, "/healthz", None).await;
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    let ready = get(http, "/readyz", None).await;
    assert_eq!((ready.status, ready.body.as_str()), (200, "ready\n"));

    let none = get(http, "/metrics", None).await;
    assert_eq!(none.status, 401);
    assert!(
        none.headers.contains("www-authenticate: bearer"),
        "{}",
        none.headers
    );
    assert!(
        !none.body.contains("tern_"),
        "nothing readable: {}",
        none.body
    );
    let wrong = get(
        http,
        "/metrics",
        Some(&bearer("0123456789abcdef-wrong-token")),
    )
    .await;
    assert_eq!(wrong.status, 401);
    let garbage = get(http, "/metrics", Some("Bearer")).await;
    assert_eq!(garbage.status, 401);

    let good = get(http, "/metrics", Some(&bearer(TOKEN))).await;
    assert_eq!(good.status, 200, "{}", good.body);
    assert!(
        good.headers
            .contains("content-type: text/plain; version=0.0.4")
    );
    assert!(
        good.body
            .contains("\n# TYPE tern_connections gauge\ntern_connections 0\n"),
        "{}",
        good.body
    );
    let missing = get(http, "/nothing", Some(&bearer(TOKEN))).await;
    assert_eq!(missing.status, 404);
}

#[tokio::test]
async fn admin_users_get_in_with_their_password_and_other_users_do_not() {
    let dir = Dir::new("admins");
    let file = dir.0.join("passwd");
    let line = |user: &str, pw: &str| {
        let hash = PasswordHash::new(pw, NonZeroU32::new(1000).unwrap()).unwrap();
        format!("{user}:{}\n", hash.encode())
    };
    std::fs::write(&file, line("root", "hunter2") + &line("device", "sensor")).unwrap();
    let (_broker, http) = start_http(|c| {
        c.password_file = Some(file.clone());
        c.http.as_mut().unwrap().admin_users = vec!["root".into()];
    })
    .await;
    assert_eq!(
        get(http, "/metrics", Some(&basic("root", "hunter2")))
            .await
            .status,
        200
    );
    assert_eq!(
        get(http, "/metrics", Some(&basic("root", "wrong")))
            .await
            .status,
        401
    );
    // A user of the password file without the admin role: refused even
    // with the right password.
    assert_eq!(
        get(http, "/metrics", Some(&basic("device", "sensor")))
            .await
            .status,
        401
    );
}

#[tokio::test]
async fn failed_attempts_are_spaced_out_and_counted() {
    let (_broker, http) = start_http(|_| {}).await;
    let wrong = bearer("0123456789abcdef-wrong-token");
    for _ in 0..FREE_FAILURES {
        assert_eq!(get(http, "/metrics", Some(&wrong)).await.status, 401);
    }
    // Past the free strikes, each next check waits.
    let started = Instant::now();
    assert_eq!(get(http, "/metrics", Some(&wrong)).await.status, 401);
    assert!(
        started.elapsed() >= FIRST_DELAY - Duration::from_millis(20),
        "the fourth failure was checked after {:?}",
        started.elapsed()
    );
    let metrics = get(http, "/metrics", Some(&bearer(TOKEN))).await.body;
    let failures = FREE_FAILURES + 1;
    assert!(
        metrics.contains(&format!("\ntern_auth_failures_total {failures}\n")),
        "{metrics}"
    );
}

/// `name{labels} value` lines of an exposition, by name with labels.
fn samples(exposition: &str) -> HashMap<String, f64> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// The metric a `$SYS/broker/...` figure is exposed as.
fn metric_of(topic: &str) -> Vec<String> {
    let plain = match topic {
        "clients/connected" | "clients/active" => "tern_connections",
        "clients/total" => "tern_sessions",
        "clients/parked" => "tern_connections_parked",
        "clients/disconnected" => "tern_sessions_disconnected",
        "clients/expired" => "tern_sessions_expired_total",
        "messages/received" => "tern_packets_received_total",
        "messages/sent" => "tern_packets_sent_total",
        "publish/messages/sent" => "tern_messages_sent_total",
        "bytes/received" => "tern_bytes_received_total",
        "bytes/sent" => "tern_bytes_sent_total",
        "subscriptions/count" => "tern_subscriptions",
        "retained messages/count" => "tern_retained_messages",
        "webhooks/delivered" => "tern_webhook_events_delivered_total",
        "webhooks/failed" => "tern_webhook_events_failed_total",
        "webhooks/dropped" => "tern_webhook_events_dropped_total",
        "publish/messages/received" => {
            return (0..3)
                .map(|q| format!("tern_messages_received_total{{qos=\"{q}\"}}"))
                .collect();
        }
        "publish/messages/dropped" => {
            let reasons = [
                "queue_full",
                "offline_qos0",
                "expired",
                "too_large",
                "no_member",
                "cluster_outbox",
            ];
            return reasons
                .iter()
                .map(|r| format!("tern_messages_dropped_total{{reason=\"{r}\"}}"))
                .collect();
        }
        limit => {
            let (limit, outcome) = limit
                .strip_prefix("limits/")
                .and_then(|l| l.split_once('/'))
                .unwrap_or_else(|| panic!("$SYS figure {topic} has no metric"));
            return vec![format!(
                "tern_limits_total{{limit=\"{limit}\",outcome=\"{outcome}\"}}"
            )];
        }
    };
    vec![plain.to_owned()]
}

#[tokio::test]
async fn metrics_agree_with_sys_figure_by_figure() {
    let (broker, http) = start_http(|c| c.max_queued_messages = 2).await;
    let addr = broker.local_addr();
    // Traffic of every kind: QoS 0, 1 and 2 in, a queue overflowing, a
    // retained message, an offline session.
    let (mut sub, _) =
        TestClient::connect_with(addr, persistent(ProtocolVersion::V5, "slow")).await;
    sub.subscribe("m/#", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut publisher = TestClient::connect(addr, ProtocolVersion::V5, "pub").await;
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        for _ in 0..=(qos as u8) {
            publisher.publish("m/x", b"22.5", qos, false).await;
        }
    }
    publisher.retain("r/x", b"kept").await;
    // A connected client that has its messages and does not acknowledge them.
    let mut reader = TestClient::connect(addr, ProtocolVersion::V5, "reader").await;
    reader.subscribe("q/#", QoS::AtLeastOnce).await;
    for _ in 0..3 {
        publisher
            .publish("q/x", b"1", QoS::AtLeastOnce, false)
            .await;
        reader.recv_publish().await;
    }
    // Quiet: both connections parked (after 1 ms idle here), so that no
    // gauge moves between the scrape and the read of $SYS below.
    eventually("both connections parked", || {
        sys_figures(&broker).contains(&("clients/parked", 2))
    })
    .await;

    let scraped = samples(&get(http, "/metrics", Some(&bearer(TOKEN))).await.body);
    let figures = sys_figures(&broker);
    assert!(figures.len() >= 20, "{figures:?}");
    for (topic, value) in figures {
        let sum: f64 = metric_of(topic)
            .iter()
            .map(|m| {
                *scraped
                    .get(m)
                    .unwrap_or_else(|| panic!("{m} missing (for {topic})"))
            })
            .sum();
        assert_eq!(
            sum, value as f64,
            "$SYS {topic} = {value}, /metrics says {sum}"
        );
    }
    // QoS 0 to an offline session is dropped, and so is what passes the
    // queue limit of 2: by reason.
    assert_eq!(scraped["tern_messages_received_total{qos=\"0\"}"], 1.0);
    assert_eq!(scraped["tern_messages_received_total{qos=\"1\"}"], 6.0);
    assert_eq!(scraped["tern_messages_received_total{qos=\"2\"}"], 3.0);
    assert_eq!(
        scraped["tern_messages_dropped_total{reason=\"offline_qos0\"}"],
        1.0
    );
    assert_eq!(
        scraped["tern_messages_dropped_total{reason=\"queue_full\"}"],
        3.0
    );
    assert_eq!(scraped["tern_retained_messages"], 1.0);
    // What waits: two queued for the session away (the limit), three sent
    // to the reader and not acknowledged.
    assert_eq!(scraped["tern_queued_messages"], 2.0);
    assert_eq!(scraped["tern_session_queue_depth_max"], 2.0);
    assert_eq!(scraped["tern_inflight_messages"], 3.0);
}

#[tokio::test]
async fn the_store_s_commits_are_measured() {
    let dir = Dir::new("store");
    let (broker, http) = start_http(|c| {
        c.persistence = true;
        c.data_dir = dir.0.clone();
    })
    .await;
    let addr = broker.local_addr();
    let (mut sub, _) =
        TestClient::connect_with(addr, persistent(ProtocolVersion::V5, "keeper")).await;
    sub.subscribe("s/#", QoS::AtLeastOnce).await;
    let mut publisher = TestClient::connect(addr, ProtocolVersion::V5, "pub").await;
    publisher
        .publish("s/1", b"x", QoS::AtLeastOnce, false)
        .await;
    let scraped = samples(&get(http, "/metrics", Some(&bearer(TOKEN))).await.body);
    let commits = scraped["tern_store_commit_seconds_count"];
    assert!(commits >= 2.0, "session records and the message: {commits}");
    assert_eq!(scraped["tern_store_commit_ops_count"], commits);
    assert_eq!(
        scraped["tern_store_commit_seconds_bucket{le=\"+Inf\"}"],
        commits
    );
    assert!(scraped["tern_store_commit_ops_sum"] >= commits);
    broker.shutdown().await;
}

#[tokio::test]
async fn https_with_the_listeners_certificate_options() {
    let dir = Dir::new("tls");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(dir.0.join("http.crt"), cert.cert.pem()).unwrap();
    std::fs::write(dir.0.join("http.key"), cert.signing_key.serialize_pem()).unwrap();
    let (_broker, http) = start_http(|c| {
        let h = c.http.as_mut().unwrap();
        h.cert_file = Some(dir.0.join("http.crt"));
        h.key_file = Some(dir.0.join("http.key"));
    })
    .await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connect = || async {
        let tcp = TcpStream::connect(http).await.unwrap();
        tokio_rustls::TlsConnector::from(Arc::new(client.clone()))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .expect("TLS handshake")
    };
    let answer = request(connect().await, "/metrics", Some(&bearer(TOKEN))).await;
    assert_eq!(answer.status, 200);
    assert!(answer.body.contains("tern_info{version="));
    // A client that never finishes its handshake holds up no one.
    let _stalled = TcpStream::connect(http).await.unwrap();
    let answer = request(connect().await, "/healthz", None).await;
    assert_eq!(answer.status, 200);
    // Plain HTTP on the HTTPS port gets no answer.
    let mut plain = TcpStream::connect(http).await.unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(WAIT, plain.read_to_end(&mut buf)).await;
    assert!(!String::from_utf8_lossy(&buf).contains("200 OK"));
}

#[tokio::test]
async fn a_port_in_use_and_a_bad_certificate_stop_the_start_with_their_names() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let config = Config {
        http: Some(HttpConfig::on(addr)),
        ..test_config()
    };
    let err = tern_broker::Broker::start(config)
        .await
        .err()
        .expect("refused");
    let text = err.to_string();
    assert!(text.contains(&format!("http listener {addr}")), "{text}");

    let dir = Dir::new("badcert");
    std::fs::write(dir.0.join("bad.crt"), "not a certificate").unwrap();
    std::fs::write(dir.0.join("bad.key"), "not a key").unwrap();
    let mut http = HttpConfig::on("127.0.0.1:0".parse().unwrap());
    http.cert_file = Some(dir.0.join("bad.crt"));
    http.key_file = Some(dir.0.join("bad.key"));
    let config = Config {
        http: Some(http),
        ..test_config()
    };
    let err = tern_broker::Broker::start(config)
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("bad.crt"), "{err}");
}

// ---------------------------------------------------------------------------
// The admin API
// ---------------------------------------------------------------------------

/// An authenticated API call; the answer's status and its body as JSON
/// (`null` for an empty body).
async fn api(
    http: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    let stream = TcpStream::connect(http).await.expect("connect to HTTP");
    let answer = exchange(stream, method, path, Some(&bearer(TOKEN)), body).await;
    let json = if answer.body.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&answer.body)
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {}", answer.body))
    };
    (answer.status, json)
}

/// The client ids of a page of sessions.
fn ids(page: &serde_json::Value) -> Vec<&str> {
    page["data"]
        .as_array()
        .expect("a page")
        .iter()
        .map(|s| s["client_id"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn the_api_lists_clients_and_sessions_page_by_page_and_shows_one_whole() {
    let (broker, http) = start_http(|_| {}).await;
    let addr = broker.local_addr();
    let mut clients = Vec::new();
    for i in 1..=5 {
        let (mut c, _) =
            TestClient::connect_with(addr, persistent(ProtocolVersion::V5, &format!("dev-{i}")))
                .await;
        c.subscribe(&format!("fleet/{i}/#"), QoS::AtLeastOnce).await;
        clients.push(c);
    }
    let (old, _) =
        TestClient::connect_with(addr, persistent(ProtocolVersion::V3_1_1, "old-1")).await;
    // dev-5 goes away; its session stays.
    clients.pop().unwrap().disconnect().await;

    let (status, first) = api(http, "GET", "/api/v1/clients?prefix=dev-&limit=2", None).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(ids(&first), ["dev-1", "dev-2"]);
    let next = first["next"].as_str().unwrap();
    let (_, second) = api(
        http,
        "GET",
        &format!("/api/v1/clients?prefix=dev-&limit=2&after={next}"),
        None,
    )
    .await;
    assert_eq!(ids(&second), ["dev-3", "dev-4"]);
    assert!(second["next"].is_null(), "dev-5 is not connected: {second}");
    let (_, offline) = api(http, "GET", "/api/v1/sessions?connected=false", None).await;
    assert_eq!(ids(&offline), ["dev-5"]);
    assert_eq!(offline["data"][0]["subscriptions"], 1);
    let (_, all) = api(http, "GET", "/api/v1/sessions", None).await;
    assert_eq!(ids(&all).len(), 6);

    let (status, one) = api(http, "GET", "/api/v1/clients/dev-2", None).await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["connected"], true);
    assert_eq!(one["subscriptions_list"][0]["filter"], "fleet/2/#");
    assert_eq!(one["subscriptions_list"][0]["qos"], 1);
    let connection = &one["connection"];
    assert_eq!(connection["protocol"], "5");
    assert_eq!(connection["keep_alive_secs"], 60);
    assert_eq!(
        connection["listener"],
        format!("tcp {}", broker.state().config.listeners[0].bind)
    );
    assert!(
        connection["address"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    let (_, old_one) = api(http, "GET", "/api/v1/clients/old-1", None).await;
    assert_eq!(old_one["connection"]["protocol"], "3.1.1");
    assert_eq!(
        old_one["expiry_secs"],
        serde_json::Value::Null,
        "3.1.1 clean session 0: never expires"
    );
    let (status, _) = api(http, "GET", "/api/v1/clients/dev-5", None).await;
    assert_eq!(status, 404, "dev-5 is not connected");
    let (status, gone) = api(http, "GET", "/api/v1/sessions/nobody", None).await;
    assert_eq!(status, 404);
    assert!(gone["error"].as_str().unwrap().contains("nobody"));
    drop(old);
}

#[tokio::test]
async fn the_api_disconnects_with_0x98_and_deletes_only_offline_sessions() {
    let (broker, http) = start_http(|_| {}).await;
    let addr = broker.local_addr();
    let (mut dev, _) = TestClient::connect_with(addr, persistent(ProtocolVersion::V5, "dev")).await;
    dev.subscribe("a/#", QoS::AtLeastOnce).await;
    let (status, body) = api(http, "DELETE", "/api/v1/sessions/dev", None).await;
    assert_eq!(status, 409, "{body}");
    let (status, _) = api(http, "DELETE", "/api/v1/clients/dev", None).await;
    assert_eq!(status, 204);
    expect_disconnect(&mut dev, ReasonCode::AdministrativeAction).await;
    eventually("the client gone", || {
        !broker
            .state()
            .sessions()
            .get("dev")
            .is_some_and(|s| s.is_online())
    })
    .await;
    let (status, _) = api(http, "DELETE", "/api/v1/clients/dev", None).await;
    assert_eq!(status, 404, "no longer connected");
    let (status, _) = api(http, "DELETE", "/api/v1/sessions/dev", None).await;
    assert_eq!(status, 204);
    let (status, _) = api(http, "GET", "/api/v1/sessions/dev", None).await;
    assert_eq!(status, 404);
    let (_, ack) = TestClient::connect_with(addr, persistent(ProtocolVersion::V5, "dev")).await;
    assert!(!ack.session_present, "the session ended");
    let (_, subs) = api(http, "GET", "/api/v1/subscriptions?client_id=dev", None).await;
    assert_eq!(subs["data"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn the_api_lists_subscriptions_and_retained_messages_and_publishes() {
    let (broker, http) = start_http(|_| {}).await;
    let addr = broker.local_addr();
    let mut sub = TestClient::connect(addr, ProtocolVersion::V5, "watcher").await;
    sub.subscribe("house/#", QoS::AtLeastOnce).await;
    sub.subscribe("$share/g/jobs/+", QoS::AtMostOnce).await;
    let mut publisher = TestClient::connect(addr, ProtocolVersion::V5, "pub").await;
    publisher.retain("house/room1/temp", b"22.5").await;
    publisher.retain("house/room2/temp", b"19.0").await;
    publisher.retain("garden/temp", b"11.0").await;
    for _ in 0..2 {
        sub.recv_publish().await;
    }

    let (_, subs) = api(http, "GET", "/api/v1/subscriptions?client_id=watcher", None).await;
    let filters: Vec<&str> = subs["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["filter"].as_str().unwrap())
        .collect();
    assert_eq!(filters, ["$share/g/jobs/+", "house/#"]);
    let (_, by_filter) = api(http, "GET", "/api/v1/subscriptions?filter=house/%23", None).await;
    assert_eq!(by_filter["data"][0]["client_id"], "watcher");

    let (_, retained) = api(http, "GET", "/api/v1/retained?filter=house/%23", None).await;
    let topics: Vec<&str> = retained["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["topic"].as_str().unwrap())
        .collect();
    assert_eq!(topics, ["house/room1/temp", "house/room2/temp"]);
    let (status, one) = api(http, "GET", "/api/v1/retained/house/room1/temp", None).await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(
        (one["payload"].as_str(), one["encoding"].as_str()),
        (Some("22.5"), Some("utf8"))
    );
    let (status, _) = api(http, "DELETE", "/api/v1/retained/house/room1/temp", None).await;
    assert_eq!(status, 204);
    let (status, _) = api(http, "GET", "/api/v1/retained/house/room1/temp", None).await;
    assert_eq!(status, 404);
    sub.expect_nothing().await;

    let body =
        r#"{"topic": "house/room3/temp", "payload": "MjAuMQ==", "encoding": "base64", "qos": 1}"#;
    let (status, published) = api(http, "POST", "/api/v1/publish", Some(body)).await;
    assert_eq!(status, 200, "{published}");
    assert_eq!(published["matched"], 1);
    let p = sub.recv_publish().await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("house/room3/temp", &b"20.1"[..])
    );

    // Bad input: a 4xx saying what, never a 5xx.
    let publish = |body: &'static str| ("POST", "/api/v1/publish", Some(body));
    let get = |path: &'static str| ("GET", path, None);
    for ((method, path, body), status) in [
        (publish(r#"{"topic": "a/+"}"#), 400),
        (publish(r#"{"topic": "a", "qos": 3}"#), 400),
        (
            publish(r#"{"topic": "a", "encoding": "base64", "payload": "*"}"#),
            400,
        ),
        (publish(r#"{"topic": "a", "encoding": "hex"}"#), 422),
        (publish(r#"{"topic": "a", "encoding": null}"#), 400),
        (publish(r#"{"topic": "a", "colour": 1}"#), 422),
        (publish("{"), 400),
        (get("/api/v1/retained?filter=a/%23/b"), 400),
        (get("/api/v1/sessions?limit=0"), 400),
        (get("/api/v1/sessions?limit=x"), 400),
        (get("/api/v1/sessions?colour=red"), 400),
        (get("/api/v1/clients?connected=true"), 400),
        (get("/api/v1/retained/a/%2B"), 400),
        (("PUT", "/api/v1/publish", None), 405),
    ] {
        let (got, answer) = api(http, method, path, body).await;
        assert_eq!(got, status, "{method} {path} {body:?}: {answer}");
        if status != 405 {
            assert!(answer["error"].is_string(), "{method} {path}: {answer}");
        }
    }
}

#[tokio::test]
async fn the_api_reloads_the_files_and_says_which_one_failed() {
    let dir = Dir::new("reload");
    let file = dir.0.join("passwd");
    let hash = PasswordHash::new("pw", NonZeroU32::new(1000).unwrap()).unwrap();
    std::fs::write(&file, format!("u:{}\n", hash.encode())).unwrap();
    let (_broker, http) = start_http(|c| c.password_file = Some(file.clone())).await;
    let (status, answer) = api(http, "POST", "/api/v1/reload", None).await;
    assert_eq!(
        (status, &answer["reloaded"]),
        (200, &serde_json::json!(true))
    );
    std::fs::remove_file(&file).unwrap();
    let (status, answer) = api(http, "POST", "/api/v1/reload", None).await;
    assert_eq!(status, 422, "{answer}");
    assert!(
        answer["errors"][0].as_str().unwrap().contains("passwd"),
        "{answer}"
    );
}

#[tokio::test]
async fn the_openapi_description_is_served_and_covers_every_route() {
    let (_broker, http) = start_http(|_| {}).await;
    let (status, spec) = api(http, "GET", "/api/openapi.json", None).await;
    assert_eq!(status, 200);
    assert_eq!(spec["openapi"], "3.0.3");
    let paths = spec["paths"].as_object().unwrap();
    for path in [
        "/api/v1/broker",
        "/api/v1/clients",
        "/api/v1/clients/{client_id}",
        "/api/v1/sessions",
        "/api/v1/sessions/{client_id}",
        "/api/v1/subscriptions",
        "/api/v1/retained",
        "/api/v1/retained/{topic}",
        "/api/v1/publish",
        "/api/v1/reload",
        "/api/v1/backup",
        "/api/v1/delayed",
        "/api/v1/delayed/{id}",
    ] {
        assert!(paths.contains_key(path), "{path} undocumented");
    }
    let (status, info) = api(http, "GET", "/api/v1/broker", None).await;
    assert_eq!(status, 200);
    assert!(info["version"].as_str().unwrap().starts_with("tern "));
    let none = get(http, "/api/openapi.json", None).await;
    assert_eq!(none.status, 401, "nothing readable without credentials");
}

/// A dashboard page's stream, read as it comes.
struct PageStream {
    stream: TcpStream,
    read: Vec<u8>,
}

impl PageStream {
    async fn open(addr: SocketAddr) -> PageStream {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "GET /api/v1/dashboard/stream HTTP/1.1\r\nHost: localhost\r\nAuthorization: {}\r\n\r\n",
            bearer(TOKEN)
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        PageStream {
            stream,
            read: Vec::new(),
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.read).into_owned()
    }

    /// Reads until `until` is in what was read (or fails after a while).
    async fn until(&mut self, until: &str) {
        let mut buf = [0u8; 4096];
        let reading = async {
            while !self.text().contains(until) {
                let n = self.stream.read(&mut buf).await.unwrap();
                assert!(n > 0, "the stream ended: {}", self.text());
                self.read.extend_from_slice(&buf[..n]);
            }
        };
        if tokio::time::timeout(WAIT * 4, reading).await.is_err() {
            panic!("no {until:?} in: {}", self.text());
        }
    }
}

#[tokio::test]
async fn the_dashboard_stream_samples_figures_and_the_topics_that_changed() {
    let (broker, http) = start_http(|_| {}).await;
    let addr = broker.local_addr();
    let mut publisher = TestClient::connect(addr, ProtocolVersion::V5, "sensor").await;
    publisher.retain("site/name", b"plant 4").await;
    // Nothing is recorded while no page is open.
    publisher
        .publish("house/temp", b"20.0", QoS::AtLeastOnce, false)
        .await;
    let none = get(http, "/api/v1/dashboard/stream", None).await;
    assert_eq!(none.status, 401);
    // A page opens: the tree is seeded with the retained messages.
    let mut page = PageStream::open(http).await;
    page.until("site/name").await;
    assert!(page.text().contains("text/event-stream"), "{}", page.text());
    assert!(page.text().contains("event: stats"), "{}", page.text());
    for value in [&b"21.5"[..], b"22.5"] {
        publisher
            .publish("house/temp", value, QoS::AtLeastOnce, false)
            .await;
    }
    page.until("\"22.5\"").await;
    let text = page.text();
    let topics = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .rfind(|d| d.contains("house/temp"))
        .expect("a topics event for house/temp");
    let topics: serde_json::Value = serde_json::from_str(topics).unwrap();
    let temp = &topics.as_array().unwrap()[0];
    assert_eq!(temp["topic"], "house/temp");
    assert_eq!(temp["count"], 2, "counted since the page opened: {temp}");
    assert_eq!(temp["value"], "22.5");
    assert!(!temp["points"].as_array().unwrap().is_empty(), "{temp}");
}

#[tokio::test]
async fn the_api_lists_delayed_messages_and_cancels_one() {
    let (broker, http) = start_http(|_| {}).await;
    let addr = broker.local_addr();
    let mut sub = TestClient::connect(addr, ProtocolVersion::V5, "sub").await;
    sub.subscribe("d/#", QoS::AtLeastOnce).await;
    let mut publisher = TestClient::connect(addr, ProtocolVersion::V5, "pub").await;
    publisher
        .publish("$delayed/1/d/cancelled", b"x", QoS::AtLeastOnce, false)
        .await;
    publisher
        .publish("$delayed/3600/d/later", b"y", QoS::AtLeastOnce, false)
        .await;
    let (status, page) = api(http, "GET", "/api/v1/delayed", None).await;
    assert_eq!(status, 200);
    let data = page["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(data[0]["topic"], "d/cancelled", "earliest first: {page}");
    assert_eq!(data[0]["from"], "pub");
    assert_eq!(data[1]["topic"], "d/later");
    let id = data[0]["id"].as_u64().unwrap();
    let (status, _) = api(http, "DELETE", &format!("/api/v1/delayed/{id}"), None).await;
    assert_eq!(status, 204);
    let (status, again) = api(http, "DELETE", &format!("/api/v1/delayed/{id}"), None).await;
    assert_eq!(status, 404, "{again}");
    let (status, _) = api(http, "DELETE", "/api/v1/delayed/not-a-number", None).await;
    assert_eq!(status, 400);
    // Past its time: the cancelled one never comes.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sub.expect_nothing().await;
    let (_, page) = api(http, "GET", "/api/v1/delayed", None).await;
    assert_eq!(page["data"].as_array().unwrap().len(), 1);
}
