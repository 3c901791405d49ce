//! The `[auth_hook]` section: an HTTP service that decides who may connect
//! (and, optionally, which topics they may use), as EMQX's HTTP
//! authentication does.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::{ConfigError, split_url};

/// `[auth_hook]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthHookConfig {
    /// Where each login is POSTed: `http://HOST[:PORT]/PATH` or `https://`.
    /// Required.
    pub url: String,
    /// Extra request headers. Default none.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// An answer must come within this many milliseconds. Default 5000.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// Allow and deny answers are kept this many seconds for the same
    /// client id, username, password, address and listener; 0 asks every
    /// time. Default 60.
    #[serde(default = "default_cache_secs")]
    pub cache_secs: u64,
    /// At most this many answers are kept. Default 10000.
    #[serde(default = "default_cache_size")]
    pub cache_size: usize,
    /// When the hook does not answer (or answers something else than it
    /// should): false refuses the client (CONNACK 0x88 Server unavailable),
    /// true lets the password file and `allow_anonymous` decide, as if the
    /// hook had said "ignore". Default false.
    #[serde(default)]
    pub fail_open: bool,
    /// For `https://`: the CA certificate (PEM) of the hook's certificate.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

fn default_timeout() -> u64 {
    5000
}

fn default_cache_secs() -> u64 {
    60
}

fn default_cache_size() -> usize {
    10_000
}

impl AuthHookConfig {
    /// A hook at `url`, everything else by default.
    pub fn new(url: &str) -> AuthHookConfig {
        AuthHookConfig {
            url: url.to_owned(),
            headers: BTreeMap::new(),
            timeout_ms: default_timeout(),
            cache_secs: default_cache_secs(),
            cache_size: default_cache_size(),
            fail_open: false,
            ca_file: None,
        }
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |what: &str| Err(ConfigError::Invalid(format!("[auth_hook]: {what}")));
        match split_url(&self.url) {
            None => invalid("url must be http://HOST[:PORT]/PATH or https://..."),
            Some((true, ..)) if self.ca_file.is_none() => {
                invalid("an https url needs ca_file (the CA that signed the hook's certificate)")
            }
            Some(_) if self.timeout_ms == 0 => invalid("timeout_ms must be at least 1"),
            Some(_) => Ok(()),
        }
    }
}
