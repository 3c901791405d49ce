//! The `[auth_jwt]` section: a JSON Web Token as the MQTT password, signed
//! with a shared secret (HS256) or a private key whose public half Tern has
//! (RS256, ES256: a PEM file, or a JWKS file or URL), as EMQX and the cloud
//! IoT services take them.

use std::path::PathBuf;

use serde::Deserialize;

use super::{ConfigError, split_url};

/// `[auth_jwt]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthJwtConfig {
    /// HS256: the shared secret. Default none.
    #[serde(default)]
    pub secret: Option<String>,
    /// RS256 or ES256: the public key, PEM (`-----BEGIN PUBLIC KEY-----`).
    /// Default none.
    #[serde(default)]
    pub public_key_file: Option<PathBuf>,
    /// RS256 or ES256: a JWKS document (`{"keys": [...]}`), each key found
    /// by the token's `kid`. Default none.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// The same, fetched from this URL at start and every
    /// `jwks_refresh_secs`. Default none.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// Default 300.
    #[serde(default = "default_refresh")]
    pub jwks_refresh_secs: u64,
    /// For an `https://` jwks_url: the CA of its certificate.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The claim holding the client's topic rules: `{"pub": [...], "sub":
    /// [...], "all": [...]}` or a list of `{"permission", "action",
    /// "topic"}`. A token without it may use any topic the ACL file lets it.
    /// Default "acl".
    #[serde(default = "default_acl_claim")]
    pub acl_claim: String,
    /// Seconds of clock difference allowed when checking `exp` and `nbf`.
    /// Default 0.
    #[serde(default)]
    pub leeway_secs: u64,
}

fn default_refresh() -> u64 {
    300
}

fn default_acl_claim() -> String {
    "acl".into()
}

impl AuthJwtConfig {
    /// Tokens signed with `secret` (HS256), everything else by default.
    pub fn with_secret(secret: &str) -> AuthJwtConfig {
        AuthJwtConfig {
            secret: Some(secret.into()),
            public_key_file: None,
            jwks_file: None,
            jwks_url: None,
            jwks_refresh_secs: default_refresh(),
            ca_file: None,
            acl_claim: default_acl_claim(),
            leeway_secs: 0,
        }
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |what: &str| Err(ConfigError::Invalid(format!("[auth_jwt]: {what}")));
        let keys = [
            self.secret.is_some(),
            self.public_key_file.is_some(),
            self.jwks_file.is_some(),
            self.jwks_url.is_some(),
        ];
        if keys.iter().filter(|k| **k).count() != 1 {
            return invalid(
                "set one of secret (HS256), public_key_file, jwks_file or jwks_url (RS256, ES256)",
            );
        }
        if self.secret.as_ref().is_some_and(|s| s.len() < 16) {
            return invalid("secret must be at least 16 characters");
        }
        if let Some(url) = &self.jwks_url {
            match split_url(url) {
                None => return invalid("jwks_url must be http://HOST[:PORT]/PATH or https://..."),
                Some((true, ..)) if self.ca_file.is_none() => {
                    return invalid("an https jwks_url needs ca_file");
                }
                Some(_) => {}
            }
        }
        if self.jwks_refresh_secs == 0 {
            return invalid("jwks_refresh_secs must be at least 1");
        }
        Ok(())
    }
}
