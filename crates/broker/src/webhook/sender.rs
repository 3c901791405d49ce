//! One endpoint's task: takes events from its queue in order, POSTs each as
//! JSON over one kept-alive HTTP/1.1 connection (opened again when it
//! fails), and tries a failed one again after a wait that doubles from
//! 500 ms up to 30 s, `max_retries` times.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Counters, Event, Stamped};
use crate::config::WebhookConfig;

const FIRST_RETRY: Duration = Duration::from_millis(500);
const LAST_RETRY: Duration = Duration::from_secs(30);

/// Why one try failed: whether another may succeed, and what to log.
struct Failure {
    retry: bool,
    why: String,
}

/// Sends the queue's events until the broker shuts down.
pub async fn run(
    hook: Arc<WebhookConfig>,
    mut queue: mpsc::Receiver<Arc<Stamped>>,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
) {
    let mut endpoint = Endpoint::new(hook);
    loop {
        let stamped = tokio::select! {
            next = queue.recv() => match next {
                Some(stamped) => stamped,
                None => return,
            },
            _ = shutdown.cancelled() => return,
        };
        let body = Bytes::from(json(&stamped).to_string());
        let sent = tokio::select! {
            sent = endpoint.deliver(body) => sent,
            _ = shutdown.cancelled() => return,
        };
        let counter = if sent {
            &counters.delivered
        } else {
            &counters.failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The endpoint and the connection to it, if one is open.
struct Endpoint {
    hook: Arc<WebhookConfig>,
    connection: Option<SendRequest<Full<Bytes>>>,
}

impl Endpoint {
    fn new(hook: Arc<WebhookConfig>) -> Endpoint {
        Endpoint {
            hook,
            connection: None,
        }
    }

    /// POSTs `body`, trying again as configured; whether it was taken.
    async fn deliver(&mut self, body: Bytes) -> bool {
        let mut wait = FIRST_RETRY;
        for attempt in 0..=self.hook.max_retries {
            let timeout = Duration::from_millis(self.hook.timeout_ms);
            let failure = match tokio::time::timeout(timeout, self.post(body.clone())).await {
                Ok(Ok(())) => return true,
                Ok(Err(failure)) => failure,
                Err(_) => Failure {
                    retry: true,
                    why: format!("no answer within {timeout:?}"),
                },
            };
            // A connection that failed, or whose request timed out, is not
            // used again.
            self.connection = None;
            let last = attempt == self.hook.max_retries || !failure.retry;
            crate::throttled!(warn, "webhook failed", url = %self.hook.url, attempt = attempt + 1, "a webhook POST failed{}: {}", if last { ", giving the event up" } else { "" }, failure.why);
            if last {
                break;
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(LAST_RETRY);
        }
        false
    }

    /// One try: a connection (the open one, or a new one) and the request.
    async fn post(&mut self, body: Bytes) -> Result<(), Failure> {
        let retry = |why: String| Failure { retry: true, why };
        let (_, host, port, path) = self
            .hook
            .endpoint()
            .ok_or_else(|| retry("the url cannot be used".into()))?;
        let open = match self.connection.take() {
            Some(mut open) => open.ready().await.is_ok().then_some(open),
            None => None,
        };
        let connection = match open {
            Some(open) => open,
            None => self.connect(&host, port).await.map_err(retry)?,
        };
        let connection = self.connection.insert(connection);
        let mut request = Request::post(path)
            .header(header::HOST, format!("{host}:{port}"))
            .header(header::CONTENT_TYPE, "application/json")
            .header(
                header::USER_AGENT,
                concat!("tern ", env!("CARGO_PKG_VERSION")),
            );
        for (name, value) in &self.hook.headers {
            request = request.header(name, value);
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| retry(format!("cannot build the request: {e}")))?;
        let response = connection
            .send_request(request)
            .await
            .map_err(|e| retry(format!("{e}")))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        // The endpoint is there but says no: only a busy one may say yes later.
        let busy = status.is_server_error()
            || status == StatusCode::REQUEST_TIMEOUT
            || status == StatusCode::TOO_MANY_REQUESTS;
        Err(Failure {
            retry: busy,
            why: format!("the endpoint answered {status}"),
        })
    }

    /// Opens a connection (TLS with the hook's CA for https).
    async fn connect(&self, host: &str, port: u16) -> Result<SendRequest<Full<Bytes>>, String> {
        let tls = self.hook.ca_file.as_ref().map(tern_client::TlsOptions::new);
        let stream = tern_client::connect(host, port, tls.as_ref())
            .await
            .map_err(|e| e.to_string())?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake: {e}"))?;
        tokio::spawn(connection);
        Ok(sender)
    }
}

/// The event as the endpoint gets it.
fn json(stamped: &Stamped) -> Value {
    let at = stamped.at_ms;
    let mut body = match &stamped.event {
        Event::Connected {
            client_id,
            username,
            peer,
            protocol,
            listener,
        } => json!({
            "clientid": client_id.as_str(),
            "username": username.as_deref(),
            "peer": peer.to_string(),
            "protocol": protocol.name(),
            "listener": listener,
        }),
        Event::Disconnected {
            client_id,
            username,
            peer,
            reason,
        } => json!({
            "clientid": client_id.as_str(),
            "username": username.as_deref(),
            "peer": peer.to_string(),
            "reason": reason,
        }),
        Event::SessionCreated { client_id } => json!({ "clientid": client_id.as_str() }),
        Event::SessionEnded { client_id, reason } => {
            json!({ "clientid": client_id.as_str(), "reason": reason })
        }
        Event::Published { message, username } => {
            let mut m = message_json(message);
            m["clientid"] = json!(message.origin.as_ref().map(|o| o.as_str()));
            m["username"] = json!(username.as_deref());
            m
        }
        Event::Dropped {
            message,
            client_id,
            reason,
        } => {
            let mut m = message_json(message);
            m["clientid"] = json!(client_id.as_str());
            m["from_clientid"] = json!(message.origin.as_ref().map(|o| o.as_str()));
            m["reason"] = json!(reason);
            m
        }
    };
    body["event"] = json!(stamped.event.kind().name());
    body["timestamp"] = json!(at);
    body
}

/// Topic, QoS, retain and payload: UTF-8 text as it is, anything else in
/// base64 (`payload_encoding` says which).
fn message_json(message: &crate::message::Message) -> Value {
    let (payload, encoding) = match std::str::from_utf8(&message.payload) {
        Ok(text) => (text.to_owned(), "plain"),
        Err(_) => (
            base64::engine::general_purpose::STANDARD.encode(&message.payload),
            "base64",
        ),
    };
    json!({
        "topic": message.topic.as_str(),
        "qos": message.qos as u8,
        "retain": message.retain,
        "payload": payload,
        "payload_encoding": encoding,
    })
}
