//! The `[[webhooks]]` sections: HTTP endpoints told, with one JSON POST
//! each, what happens in the broker (as EMQX's webhooks do).

use std::path::PathBuf;

use serde::Deserialize;
use tern_codec::topic::is_valid_topic_filter;

use super::ConfigError;

/// What a webhook can be told of, by the names its `events` list uses.
pub const EVENTS: [&str; 6] = [
    "client.connected",
    "client.disconnected",
    "session.created",
    "session.ended",
    "message.published",
    "message.dropped",
];

/// One `[[webhooks]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where to POST: `http://host:port/path` or `https://...`. Required.
    pub url: String,
    /// The events to send, of [`EVENTS`]. Default: all of them.
    #[serde(default = "all_events")]
    pub events: Vec<String>,
    /// `message.published` and `message.dropped` only for topics these
    /// filters match. Default `["#"]` (every topic but `$SYS/...`).
    #[serde(default = "every_topic")]
    pub topics: Vec<String>,
    /// Extra request headers (`Authorization = "Bearer ..."`). Default none.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// An answer must come within this many milliseconds. Default 5000.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// Tries after the first that failed (no answer, or a 5xx, 408 or 429
    /// status); the wait doubles from 500 ms up to 30 s. Default 5.
    #[serde(default = "default_retries")]
    pub max_retries: u32,
    /// Events waiting to be sent; when it is full, new ones are dropped and
    /// counted, so an endpoint that hangs never slows the broker. Default
    /// 10000.
    #[serde(default = "default_queue")]
    pub queue_size: usize,
    /// For `https://`: the CA certificate (PEM) to verify the endpoint with.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

fn all_events() -> Vec<String> {
    EVENTS.iter().map(|e| e.to_string()).collect()
}

fn every_topic() -> Vec<String> {
    vec!["#".into()]
}

fn default_timeout() -> u64 {
    5000
}

fn default_retries() -> u32 {
    5
}

fn default_queue() -> usize {
    10_000
}

/// An `http://` or `https://` URL's parts: https, host, port, path (with
/// its query).
pub fn split_url(url: &str) -> Option<(bool, String, u16, String)> {
    let (https, rest) = match url.split_once("://")? {
        ("http", rest) => (false, rest),
        ("https", rest) => (true, rest),
        _ => return None,
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let default_port = if https { 443 } else { 80 };
    let (host, port) = match authority.rsplit_once(':') {
        // An IPv6 address without a port: its last colon is its own.
        Some((host, _)) if authority.starts_with('[') && !host.ends_with(']') => {
            (authority, default_port)
        }
        Some((host, port)) => (host, port.parse().ok()?),
        None => (authority, default_port),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then(|| (https, host.to_owned(), port, path.to_owned()))
}

impl WebhookConfig {
    /// A webhook to `url` for every event, everything else by default.
    pub fn new(url: &str) -> WebhookConfig {
        WebhookConfig {
            url: url.to_owned(),
            events: all_events(),
            topics: every_topic(),
            headers: Default::default(),
            timeout_ms: default_timeout(),
            max_retries: default_retries(),
            queue_size: default_queue(),
            ca_file: None,
        }
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |what: String| {
            Err(ConfigError::Invalid(format!(
                "webhook {:?}: {what}",
                self.url
            )))
        };
        let Some((https, ..)) = split_url(&self.url) else {
            return invalid("url must be http://HOST[:PORT]/PATH or https://...".into());
        };
        if let Some(bad) = self.events.iter().find(|e| !EVENTS.contains(&e.as_str())) {
            return invalid(format!(
                "unknown event {bad:?}: events are {}",
                EVENTS.join(", ")
            ));
        }
        if let Some(bad) = self.topics.iter().find(|t| !is_valid_topic_filter(t)) {
            return invalid(format!("topics: {bad:?} is not a topic filter"));
        }
        if https && self.ca_file.is_none() {
            return invalid(
                "an https url needs ca_file (the CA that signed the endpoint's certificate)".into(),
            );
        }
        if self.queue_size == 0 || self.timeout_ms == 0 {
            return invalid("queue_size and timeout_ms must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::Config;

    #[test]
    fn a_webhook_is_read_and_checked() {
        let config = Config::from_toml(
            "[[webhooks]]\nurl = \"http://127.0.0.1:9000/events?x=1\"\nevents = [\"client.connected\"]",
        )
        .unwrap();
        let hook = &config.webhooks[0];
        assert_eq!(
            super::split_url(&hook.url),
            Some((false, "127.0.0.1".into(), 9000, "/events?x=1".into()))
        );
        assert_eq!(hook.topics, ["#"]);
        let err = |text: &str| Config::from_toml(text).unwrap_err().to_string();
        assert!(err("[[webhooks]]\nurl = \"ftp://x\"").contains("http://"));
        assert!(
            err("[[webhooks]]\nurl = \"http://x\"\nevents = [\"client.gone\"]")
                .contains("unknown event")
        );
        assert!(err("[[webhooks]]\nurl = \"https://x\"").contains("ca_file"));
        assert!(
            err("[[webhooks]]\nurl = \"http://x\"\ntopics = [\"a/#/b\"]")
                .contains("not a topic filter")
        );
    }

    #[test]
    fn urls_split_into_their_parts() {
        let parts = |u: &str| super::split_url(u);
        assert_eq!(
            parts("http://h:9000/a?b=1"),
            Some((false, "h".into(), 9000, "/a?b=1".into()))
        );
        assert_eq!(
            parts("https://h"),
            Some((true, "h".into(), 443, "/".into()))
        );
        assert_eq!(
            parts("http://[::1]:81/x"),
            Some((false, "::1".into(), 81, "/x".into()))
        );
        assert_eq!(
            parts("http://[::1]/x"),
            Some((false, "::1".into(), 80, "/x".into()))
        );
        assert_eq!(parts("ftp://h/"), None);
        assert_eq!(parts("http://h:port/"), None);
        assert_eq!(parts("http:///x"), None);
    }
}
