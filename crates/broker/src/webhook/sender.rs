//! One endpoint's task: takes events from its queue in order, POSTs each as
//! JSON (`crate::post`: a kept-alive HTTP/1.1 connection, opened again when
//! it fails), and tries a failed one again after a wait that doubles from
//! 500 ms up to 30 s, `max_retries` times.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use hyper::StatusCode;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Counters, Event, Stamped};
use crate::config::{WebhookConfig, split_url};
use crate::post;

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

/// One endpoint and how to try it.
struct Endpoint {
    hook: Arc<WebhookConfig>,
    target: Option<post::Endpoint>,
}

impl Endpoint {
    fn new(hook: Arc<WebhookConfig>) -> Endpoint {
        let target = split_url(&hook.url)
            .and_then(|parts| post::Endpoint::new(parts, &hook.headers, hook.ca_file.as_ref()));
        Endpoint { hook, target }
    }

    /// POSTs `body`, trying again as configured; whether it was taken.
    async fn deliver(&mut self, body: Bytes) -> bool {
        let Some(target) = &self.target else {
            return false;
        };
        let mut wait = FIRST_RETRY;
        for attempt in 0..=self.hook.max_retries {
            let timeout = Duration::from_millis(self.hook.timeout_ms);
            let failure = match tokio::time::timeout(timeout, target.post(body.clone())).await {
                Ok(Ok((status, _))) if status.is_success() => return true,
                Ok(Ok((status, _))) => Failure {
                    // The endpoint is there but says no: only a busy one
                    // may say yes later.
                    retry: status.is_server_error()
                        || status == StatusCode::REQUEST_TIMEOUT
                        || status == StatusCode::TOO_MANY_REQUESTS,
                    why: format!("the endpoint answered {status}"),
                },
                Ok(Err(why)) => Failure { retry: true, why },
                Err(_) => Failure {
                    retry: true,
                    why: format!("no answer within {timeout:?}"),
                },
            };
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
