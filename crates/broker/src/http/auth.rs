//! Who may use the HTTP listener: a request carries `Authorization: Bearer
//! TOKEN` with one of `[http] tokens`, or `Authorization: Basic` with a user
//! of `admin_users` and that user's password from `password_file`.
//!
//! Each check goes through the same guard as MQTT logins
//! (`AuthState::guarded`): failures from one address or for one user are
//! spaced out, then refused unchecked (429), and counted. A refusal is
//! logged with the address and the username, never the secret. No cookies:
//! a browser sends these headers only when a page's own script adds them,
//! which another site's page cannot make it do for this origin (no CORS
//! headers are sent), so there is no cross-site request to forge.

use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use tern_codec::ReasonCode;

use super::api::ApiError;
use super::{Http, Peer};

/// What a request says about itself.
enum Credential {
    Token(String),
    User(Arc<str>, bytes::Bytes),
}

/// Lets the request through to `next` if its credential is good; 401 if
/// it has none or a wrong one, 429 if the guard refuses to check it now.
pub async fn require(
    State(http): State<Arc<Http>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    request: Request,
    next: Next,
) -> Response {
    let Some(credential) = credential(request.headers()) else {
        return unauthorized(
            "this needs `Authorization: Bearer TOKEN` or an admin user's Basic credentials",
        );
    };
    let state = &http.state;
    let (name, check): (Arc<str>, _) = match credential {
        Credential::Token(token) => {
            let ok = http
                .config
                .tokens
                .iter()
                .any(|t| same(t.as_bytes(), token.as_bytes()));
            (
                Arc::from("(api token)"),
                futures_util::future::Either::Left(async move { ok }),
            )
        }
        Credential::User(user, password) => {
            let admin = http.config.admin_users.iter().any(|a| **a == *user);
            let auth = state.auth.current();
            let check = {
                let (state, user) = (state.clone(), user.clone());
                async move { admin && state.auth.verify(&auth, &user, password).await }
            };
            (user, futures_util::future::Either::Right(check))
        }
    };
    match state
        .auth
        .guarded(peer.ip(), &name, &state.shutdown, check)
        .await
    {
        Ok(true) => next.run(request).await,
        Ok(false) => {
            crate::throttled!(warn, "HTTP refusals", ip = %peer.ip(), user = &*name, path = %request.uri().path(), "HTTP request refused: wrong token, or not an admin user with that password");
            unauthorized("wrong token, or not an admin user with that password")
        }
        Err(ReasonCode::ServerBusy) => {
            crate::throttled!(warn, "HTTP refusals", ip = %peer.ip(), user = &*name, "HTTP request refused unchecked: too many recent failures");
            let why = "too many failed attempts: wait and try again";
            let mut response = ApiError(StatusCode::TOO_MANY_REQUESTS, why.into()).into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("4"));
            response
        }
        Err(_) => ApiError(StatusCode::SERVICE_UNAVAILABLE, "shutting down".into()).into_response(),
    }
}

/// The credential in the `Authorization` header, if it is one we take.
fn credential(headers: &HeaderMap) -> Option<Credential> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(Credential::Token(rest.to_owned()));
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (user, password) = text.split_once(':')?;
        return Some(Credential::User(
            Arc::from(user),
            bytes::Bytes::copy_from_slice(password.as_bytes()),
        ));
    }
    None
}

/// Compares without stopping at the first difference, so the time taken
/// does not tell how much of a guessed token was right.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |d, (x, y)| d | (x ^ y)) == 0
}

fn unauthorized(why: &'static str) -> Response {
    let mut response = ApiError(StatusCode::UNAUTHORIZED, why.into()).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"tern\""),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn credentials_are_read_from_bearer_and_basic_headers() {
        assert!(
            matches!(credential(&headers("Bearer abc")), Some(Credential::Token(t)) if t == "abc")
        );
        // "admin:pa:ss": the password may hold colons.
        let basic = headers("Basic YWRtaW46cGE6c3M=");
        assert!(
            matches!(credential(&basic), Some(Credential::User(u, p)) if &*u == "admin" && p == "pa:ss")
        );
        assert!(credential(&headers("Basic !!!")).is_none());
        assert!(credential(&headers("Digest x")).is_none());
        assert!(credential(&HeaderMap::new()).is_none());
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!same(b"0123456789abcdef", b"0123456789abcdeX"));
        assert!(!same(b"0123456789abcdef", b"0123456789abcde"));
    }
}
