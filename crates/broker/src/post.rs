//! The broker's own HTTP requests: a JSON POST to a configured URL (the
//! webhooks, the authentication hook), over kept-alive HTTP/1.1 connections
//! (hyper's client over `tern_client::connect`, TLS with a given CA for
//! `https://`). Connections that answered go back to a small pool for the
//! next request; one that failed is dropped.

use std::collections::BTreeMap;
use std::path::PathBuf;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;

/// Answers larger than this are an error (a hook answers in a few lines).
const MAX_ANSWER: usize = 64 * 1024;
/// Idle connections kept for later requests.
const POOL: usize = 8;

/// A URL requests are POSTed to.
pub struct Endpoint {
    host: String,
    port: u16,
    path: String,
    headers: BTreeMap<String, String>,
    tls: Option<tern_client::TlsOptions>,
    /// Idle connections. A plain std mutex, not one of `lock`'s ranked
    /// ones: a leaf, held to pop or push one, with no other lock held (and
    /// this module below all others).
    idle: std::sync::Mutex<Vec<SendRequest<Full<Bytes>>>>,
}

impl Endpoint {
    /// The endpoint of a URL's parts (`config::split_url`); `None` for
    /// https without `ca_file` (configurations are checked before this).
    pub fn new(
        (https, host, port, path): (bool, String, u16, String),
        headers: &BTreeMap<String, String>,
        ca_file: Option<&PathBuf>,
    ) -> Option<Endpoint> {
        let tls = match (https, ca_file) {
            (true, Some(ca)) => Some(tern_client::TlsOptions::new(ca)),
            (true, None) => return None,
            (false, _) => None,
        };
        Some(Endpoint {
            host,
            port,
            path,
            headers: headers.clone(),
            tls,
            idle: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// POSTs `body` (JSON); the status and the body of the answer. `Err`:
    /// no answer (the message says why). No timeout of its own: the caller
    /// puts one around it.
    pub async fn post(&self, body: Bytes) -> Result<(StatusCode, Bytes), String> {
        self.request(Method::POST, body).await
    }

    /// GETs the URL (a JWKS); as [`Endpoint::post`].
    pub async fn get(&self) -> Result<(StatusCode, Bytes), String> {
        self.request(Method::GET, Bytes::new()).await
    }

    async fn request(&self, method: Method, body: Bytes) -> Result<(StatusCode, Bytes), String> {
        let idle = self.idle().pop();
        let ready = match idle {
            Some(mut open) => open.ready().await.is_ok().then_some(open),
            None => None,
        };
        let mut connection = match ready {
            Some(open) => open,
            None => self.connect().await?,
        };
        let mut request = Request::builder()
            .method(method)
            .uri(self.path.as_str())
            .header(header::HOST, format!("{}:{}", self.host, self.port))
            .header(header::CONTENT_TYPE, "application/json")
            .header(
                header::USER_AGENT,
                concat!("tern ", env!("CARGO_PKG_VERSION")),
            );
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| format!("cannot build the request: {e}"))?;
        let response = connection
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let answer = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        let mut idle = self.idle();
        if idle.len() < POOL {
            idle.push(connection);
        }
        Ok((status, answer))
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<SendRequest<Full<Bytes>>>> {
        // A panic while it was held left a plain Vec: still usable.
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        let stream = tern_client::connect(&self.host, self.port, self.tls.as_ref())
            .await
            .map_err(|e| e.to_string())?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake: {e}"))?;
        tokio::spawn(connection);
        Ok(sender)
    }
}
