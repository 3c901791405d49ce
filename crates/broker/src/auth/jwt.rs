//! JSON Web Tokens as MQTT passwords (`[auth_jwt]`): a password that is a
//! token is verified with the configured key (HS256 secret, RS256 or ES256
//! public key, or the JWKS key its `kid` names), its `exp` and `nbf`
//! checked; a valid one lets the client in, with the topic rules of its
//! `acl` claim as its own ACL. A password that is no token is left to the
//! other rules.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::acl::Acl;
use super::{AuthError, Login, hook};
use crate::config::{AuthJwtConfig, split_url};
use crate::lock::{RwLock, rank};
use crate::post;

/// The keys tokens are verified with.
enum Keys {
    /// HS256.
    Secret(DecodingKey),
    /// A PEM public key and its algorithm (RS256 or ES256).
    Public(DecodingKey, Algorithm),
    /// A JWKS: the key is the one the token's `kid` names.
    Set(JwkSet),
}

/// What a password is to the JWT check.
#[derive(Debug)]
pub enum Verdict {
    /// Not a token: the other rules decide.
    NotAToken,
    /// A valid token; with `Some`, the rules of its `acl` claim.
    Valid(Option<Arc<Acl>>),
    /// A token that does not verify (the message says why).
    Invalid(String),
}

/// The configuration and the keys in force.
pub struct Jwt {
    config: AuthJwtConfig,
    keys: RwLock<Arc<Keys>, { rank::JWT_KEYS }>,
}

impl std::fmt::Debug for Jwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwt").finish_non_exhaustive()
    }
}

impl Jwt {
    /// Reads the key (file) the configuration names; a JWKS URL is fetched
    /// by [`refresh`] (until then no RS256/ES256 token verifies).
    pub fn new(config: &AuthJwtConfig) -> Result<Jwt, AuthError> {
        let keys = if let Some(secret) = &config.secret {
            Keys::Secret(DecodingKey::from_secret(secret.as_bytes()))
        } else if let Some(path) = &config.public_key_file {
            public_key(path)?
        } else if let Some(path) = &config.jwks_file {
            let text = std::fs::read(path).map_err(|e| key_error(path, &e.to_string()))?;
            Keys::Set(jwks(&text).map_err(|why| key_error(path, &why))?)
        } else {
            Keys::Set(JwkSet { keys: Vec::new() })
        };
        Ok(Jwt {
            config: config.clone(),
            keys: RwLock::new(Arc::new(keys)),
        })
    }

    /// Whether `login`'s password is a valid token, and its rules.
    pub fn check(&self, login: &Login<'_>) -> Verdict {
        let Some(token) = login.connect.password.as_deref().and_then(as_token) else {
            return Verdict::NotAToken;
        };
        match self.verify(token) {
            Ok(claims) => match claims.get(self.config.acl_claim.as_str()) {
                None | Some(Value::Null) => Verdict::Valid(None),
                Some(rules) => match claim_acl(rules, login.connect.username.as_deref()) {
                    Ok(acl) => Verdict::Valid(Some(Arc::new(acl))),
                    Err(why) => {
                        Verdict::Invalid(format!("its {} claim: {why}", self.config.acl_claim))
                    }
                },
            },
            Err(why) => Verdict::Invalid(why),
        }
    }

    /// The token's claims, if its signature, `exp` and `nbf` hold.
    fn verify(&self, token: &str) -> Result<serde_json::Map<String, Value>, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?;
        let keys = self.keys.read().clone();
        let (key, algorithm) = match &*keys {
            Keys::Secret(key) => (key.clone(), Algorithm::HS256),
            Keys::Public(key, algorithm) => (key.clone(), *algorithm),
            Keys::Set(set) => {
                let jwk = match &header.kid {
                    Some(kid) => set.find(kid),
                    None if set.keys.len() == 1 => set.keys.first(),
                    None => None,
                }
                .ok_or("no key of the JWKS matches its kid")?;
                let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
                (key, header.alg)
            }
        };
        if !matches!(
            algorithm,
            Algorithm::HS256 | Algorithm::RS256 | Algorithm::ES256
        ) || header.alg != algorithm
        {
            return Err(format!(
                "signed with {:?}, where {algorithm:?} is expected",
                header.alg
            ));
        }
        let mut validation = Validation::new(algorithm);
        validation.required_spec_claims = HashSet::new();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.leeway = self.config.leeway_secs;
        jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, &key, &validation)
            .map(|data| data.claims)
            .map_err(|e| e.to_string())
    }

    /// With `jwks_url`: fetches the JWKS now and every `jwks_refresh_secs`
    /// until `shutdown`; a failed fetch keeps the keys in force (and is
    /// tried again after a tenth of the interval).
    pub async fn refresh(self: Arc<Self>, shutdown: CancellationToken) {
        let Some(url) = &self.config.jwks_url else {
            return;
        };
        let endpoint = split_url(url).and_then(|parts| {
            post::Endpoint::new(parts, &Default::default(), self.config.ca_file.as_ref())
        });
        let Some(endpoint) = endpoint else {
            return;
        };
        let every = Duration::from_secs(self.config.jwks_refresh_secs);
        loop {
            let wait = match endpoint.get().await {
                Ok((status, body)) if status.is_success() => match jwks(&body) {
                    Ok(set) => {
                        tracing::info!(%url, keys = set.keys.len(), "JWKS loaded");
                        *self.keys.write() = Arc::new(Keys::Set(set));
                        every
                    }
                    Err(why) => {
                        tracing::warn!(%url, "the JWKS cannot be used: {why}; keeping the keys in force");
                        every / 10
                    }
                },
                Ok((status, _)) => {
                    tracing::warn!(%url, %status, "fetching the JWKS failed; keeping the keys in force");
                    every / 10
                }
                Err(why) => {
                    tracing::warn!(%url, "fetching the JWKS failed: {why}; keeping the keys in force");
                    every / 10
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }
}

/// A password that looks like a token (three base64url parts), as text.
fn as_token(password: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(password).ok()?;
    let parts: Vec<&str> = text.split('.').collect();
    let base64url = |p: &&str| {
        !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    (parts.len() == 3 && parts.iter().all(base64url)).then_some(text)
}

/// A PEM public key: RSA (RS256) or EC P-256 (ES256).
fn public_key(path: &Path) -> Result<Keys, AuthError> {
    let pem = std::fs::read(path).map_err(|e| key_error(path, &e.to_string()))?;
    if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
        return Ok(Keys::Public(key, Algorithm::RS256));
    }
    DecodingKey::from_ec_pem(&pem)
        .map(|key| Keys::Public(key, Algorithm::ES256))
        .map_err(|_| {
            key_error(
                path,
                "not an RSA or EC P-256 public key in PEM (-----BEGIN PUBLIC KEY-----)",
            )
        })
}

fn jwks(text: &[u8]) -> Result<JwkSet, String> {
    serde_json::from_slice(text).map_err(|e| format!("not a JWKS ({{\"keys\": [...]}}): {e}"))
}

fn key_error(path: &Path, why: &str) -> AuthError {
    AuthError::JwtKey {
        path: path.to_owned(),
        reason: why.to_owned(),
    }
}

/// The `acl` claim as the client's ACL: EMQX's `{"pub": [...], "sub":
/// [...], "all": [...]}` (topics allowed), or a list of rules as the auth
/// hook gives them.
fn claim_acl(claim: &Value, username: Option<&str>) -> Result<Acl, String> {
    let Some(object) = claim.as_object() else {
        return hook::client_acl(claim, username);
    };
    let mut rules = Vec::new();
    for (key, action) in [("pub", "publish"), ("sub", "subscribe"), ("all", "all")] {
        let Some(topics) = object.get(key) else {
            continue;
        };
        for topic in topics
            .as_array()
            .ok_or(format!("{key} is not a list of topics"))?
        {
            rules
                .push(serde_json::json!({"permission": "allow", "action": action, "topic": topic}));
        }
    }
    hook::client_acl(&Value::Array(rules), username)
}
