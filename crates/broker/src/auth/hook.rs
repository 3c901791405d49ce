//! The authentication hook (`[auth_hook]`): each login is POSTed as JSON to
//! an HTTP service, whose answer allows it (optionally with the client's
//! own topic rules, or as a superuser), denies it, or leaves it to the
//! password file ("ignore"). Answers are kept for `cache_secs`; a hook that
//! does not answer in time, fails or answers garbage refuses the client
//! (`fail_open` lets the other rules decide instead).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use serde_json::{Value, json};

use super::Login;
use super::acl::Acl;
use crate::config::{AuthHookConfig, split_url};
use crate::lock::{Mutex, rank};
use crate::post;

/// What the hook said of one login.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Let in; with `Some`, only to the topics of these rules.
    Allow(Option<Arc<Acl>>),
    Deny,
    /// The hook has no opinion: the password file decides.
    Ignore,
    /// No usable answer (the message says why).
    Failed(String),
}

/// An answer kept for a while.
struct Kept {
    until: Instant,
    verdict: Verdict,
}

/// The hook, its connection pool and its cache.
pub struct Hook {
    config: AuthHookConfig,
    endpoint: Option<post::Endpoint>,
    cache: Mutex<HashMap<[u8; 32], Kept>, { rank::AUTH_CACHE }>,
}

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hook")
            .field("url", &self.config.url)
            .finish()
    }
}

impl Hook {
    pub fn new(config: &AuthHookConfig) -> Hook {
        let endpoint = split_url(&config.url)
            .and_then(|parts| post::Endpoint::new(parts, &config.headers, config.ca_file.as_ref()));
        Hook {
            config: config.clone(),
            endpoint,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a hook that failed lets the other rules decide.
    pub fn fails_open(&self) -> bool {
        self.config.fail_open
    }

    /// The hook's verdict on `login` (from the cache if it answered the
    /// same login lately).
    pub async fn ask(&self, login: &Login<'_>) -> Verdict {
        let key = cache_key(login);
        if let Some(kept) = self.cache.lock().get(&key)
            && kept.until > Instant::now()
        {
            return kept.verdict.clone();
        }
        let verdict = self.call(login).await;
        if matches!(verdict, Verdict::Allow(_) | Verdict::Deny) && self.config.cache_secs > 0 {
            self.keep(key, verdict.clone());
        }
        verdict
    }

    fn keep(&self, key: [u8; 32], verdict: Verdict) {
        let now = Instant::now();
        let mut cache = self.cache.lock();
        if cache.len() >= self.config.cache_size {
            cache.retain(|_, kept| kept.until > now);
            if cache.len() >= self.config.cache_size {
                // Still full of live answers: start again rather than grow.
                cache.clear();
            }
        }
        let until = now + Duration::from_secs(self.config.cache_secs);
        cache.insert(key, Kept { until, verdict });
    }

    /// One request to the hook, and what its answer means.
    async fn call(&self, login: &Login<'_>) -> Verdict {
        let Some(endpoint) = &self.endpoint else {
            return Verdict::Failed("the url cannot be used".into());
        };
        let body = Bytes::from(request(login).to_string());
        let timeout = Duration::from_millis(self.config.timeout_ms);
        match tokio::time::timeout(timeout, endpoint.post(body)).await {
            Err(_) => Verdict::Failed(format!("no answer within {timeout:?}")),
            Ok(Err(why)) => Verdict::Failed(why),
            Ok(Ok((status, _))) if status == 204 => Verdict::Allow(None),
            Ok(Ok((status, body))) if status.is_success() => answer(&body, login),
            Ok(Ok((status, _))) if status.is_client_error() => Verdict::Deny,
            Ok(Ok((status, _))) => Verdict::Failed(format!("it answered {status}")),
        }
    }
}

/// The JSON POSTed for a login. A password that is not UTF-8 goes in
/// base64 (`password_encoding`).
fn request(login: &Login<'_>) -> Value {
    let password = login
        .connect
        .password
        .as_deref()
        .map(|p| match std::str::from_utf8(p) {
            Ok(text) => (text.to_owned(), "plain"),
            Err(_) => (
                base64::engine::general_purpose::STANDARD.encode(p),
                "base64",
            ),
        });
    json!({
        "clientid": login.client_id,
        "username": login.connect.username.as_ref().map(|u| u.as_str()),
        "password": password.as_ref().map(|(p, _)| p),
        "password_encoding": password.as_ref().map(|(_, e)| e),
        "peerhost": login.ip.to_string(),
        "listener": login.listener,
        "protocol": login.connect.protocol.name(),
    })
}

/// A 2xx answer: `{"result": "allow" | "deny" | "ignore"}`, for "allow"
/// optionally `"is_superuser": true` or `"acl": [rules]`.
fn answer(body: &[u8], login: &Login<'_>) -> Verdict {
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return Verdict::Failed("its answer is not JSON".into());
    };
    match value["result"].as_str() {
        Some("allow") => {}
        Some("deny") => return Verdict::Deny,
        Some("ignore") => return Verdict::Ignore,
        _ => {
            return Verdict::Failed("its answer has no \"result\" of allow, deny or ignore".into());
        }
    }
    if value["is_superuser"].as_bool() == Some(true) {
        return match Acl::parse("pattern readwrite #\npattern readwrite $SYS/#") {
            Ok(acl) => Verdict::Allow(Some(Arc::new(acl))),
            Err((_, why)) => Verdict::Failed(why),
        };
    }
    match value.get("acl") {
        None | Some(Value::Null) => Verdict::Allow(None),
        Some(rules) => match client_acl(rules, login.connect.username.as_deref()) {
            Ok(acl) => Verdict::Allow(Some(Arc::new(acl))),
            Err(why) => Verdict::Failed(format!("its acl: {why}")),
        },
    }
}

/// A client's own rules, `[{"permission": "allow" | "deny", "action":
/// "publish" | "subscribe" | "all", "topic": FILTER}]` (`${clientid}` and
/// `${username}` stand for the client's), as an ACL judged as an ACL file's
/// are: a deny matching wins, else an allow matching lets it, else no; its
/// `topic` rules are the own rules of `username` ([`Acl::parse_for`]).
pub fn client_acl(rules: &Value, username: Option<&str>) -> Result<Acl, String> {
    let rules = rules.as_array().ok_or("not a list of rules")?;
    let mut text = String::new();
    for rule in rules {
        let field = |name: &str| rule[name].as_str().ok_or(format!("a rule without {name}"));
        let access = match (field("permission")?, field("action")?) {
            ("deny", "publish" | "subscribe" | "all") => "deny",
            ("allow", "publish") => "write",
            ("allow", "subscribe") => "read",
            ("allow", "all") => "readwrite",
            (p, a) => return Err(format!("permission {p:?} with action {a:?}")),
        };
        let topic = field("topic")?;
        if topic.contains(['\n', '\r']) {
            return Err(format!("topic {topic:?} holds a line break"));
        }
        let topic = topic
            .replace("${clientid}", "%c")
            .replace("${username}", "%u");
        let keyword = if topic.contains("%c") || topic.contains("%u") {
            "pattern"
        } else {
            "topic"
        };
        text.push_str(&format!("{keyword} {access} {topic}\n"));
    }
    Acl::parse_for(&text, username).map_err(|(_, why)| why)
}

/// The cache's key: a hash of everything the hook is told (so no password
/// is kept in memory).
fn cache_key(login: &Login<'_>) -> [u8; 32] {
    let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
    let username = login.connect.username.as_ref().map_or("", |u| u.as_str());
    let password = login.connect.password.as_deref().unwrap_or_default();
    for part in [
        login.client_id.as_bytes(),
        username.as_bytes(),
        password,
        login.ip.to_string().as_bytes(),
        login.listener.as_bytes(),
    ] {
        hash.update(&(part.len() as u64).to_le_bytes());
        hash.update(part);
    }
    let mut key = [0; 32];
    key.copy_from_slice(hash.finish().as_ref());
    key
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::client_acl;
    use crate::auth::{Access, Identity};

    /// The rules are the client's own, named or not: `${clientid}` its id,
    /// and a username cannot add rules of its own (it never enters the
    /// rules' text, where a line break in it would start a new rule).
    #[test]
    fn a_clients_rules_are_its_own_whatever_its_name() {
        let rules = json!([
            {"permission": "allow", "action": "publish", "topic": "up/cam/#"},
            {"permission": "allow", "action": "subscribe", "topic": "down/${clientid}/#"},
            {"permission": "deny", "action": "all", "topic": "up/+/secret"},
        ]);
        for username in [None, Some("alice"), Some("alice\ntopic readwrite #")] {
            let acl = client_acl(&rules, username).unwrap();
            let id = Identity {
                username,
                client_id: "cam",
            };
            assert!(acl.allows(&id, "up/cam/t", Access::Write), "{username:?}");
            assert!(
                !acl.allows(&id, "up/cam/secret", Access::Write),
                "{username:?}"
            );
            assert!(!acl.allows(&id, "other/t", Access::Write), "{username:?}");
            assert!(!acl.allows(&id, "other/t", Access::Read), "{username:?}");
        }
        let acl = client_acl(&rules, Some("alice")).unwrap();
        let id = Identity {
            username: Some("alice"),
            client_id: "cam",
        };
        assert!(acl.allows(&id, "down/cam/x", Access::Read));
        assert!(!acl.allows(&id, "down/other/x", Access::Read));
        let broken =
            json!([{"permission": "allow", "action": "all", "topic": "a\ntopic readwrite #"}]);
        assert!(client_acl(&broken, None).is_err());
    }
}
