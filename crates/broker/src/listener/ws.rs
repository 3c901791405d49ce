//! WebSocket listeners (ws and, over TLS, wss): the HTTP upgrade on
//! `ws_path` (tungstenite's server handshake), after which the connection's
//! frames are [`WsStream`]'s (`ws_stream.rs`).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode, header};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::ws_stream::{Metered, WsStream};
use crate::config::ListenerConfig;
use crate::limits::ConnectBytes;

/// Subprotocols we answer, in order of preference: `mqtt` (MQTT 3.1.1 and 5)
/// and `mqttv3.1`, which old clients offer.
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// A WebSocket listener's upgrade settings.
pub struct Upgrade {
    path: String,
    config: WebSocketConfig,
}

impl Upgrade {
    pub fn new(listener: &ListenerConfig) -> Upgrade {
        Upgrade {
            path: listener.ws_path.clone(),
            // tungstenite's buffer for frames, made as the upgrade ends and
            // dropped at once (128 KiB by default): after the upgrade,
            // frames are WsStream's and tungstenite keeps nothing.
            config: WebSocketConfig::default().read_buffer_size(4 * 1024),
        }
    }

    /// Runs the HTTP upgrade. A request for another path is answered 404.
    // The callback's error is tungstenite's ErrorResponse: not ours to shrink.
    #[allow(clippy::result_large_err)]
    pub async fn accept<S>(
        &self,
        stream: S,
        peer: SocketAddr,
        bytes: Arc<ConnectBytes>,
    ) -> io::Result<WsStream<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let path = self.path.as_str();
        let callback = |request: &Request, response: Response| respond(path, request, response);
        let stream = Metered {
            inner: stream,
            bytes,
        };
        let ws =
            tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(self.config))
                .await
                .map_err(into_io)?;
        tracing::debug!(%peer, "WebSocket upgrade done");
        // The frames from here on are WsStream's own.
        Ok(WsStream::new(ws.into_inner()))
    }
}

/// Checks the path and picks the subprotocol.
#[allow(clippy::result_large_err)]
fn respond(
    path: &str,
    request: &Request,
    mut response: Response,
) -> Result<Response, ErrorResponse> {
    if request.uri().path() != path {
        let mut not_found = ErrorResponse::new(Some("Not Found\n".into()));
        *not_found.status_mut() = StatusCode::NOT_FOUND;
        not_found
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("10"));
        return Err(not_found);
    }
    let offered: Vec<&str> = request
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    match SUBPROTOCOLS.iter().find(|p| offered.contains(p)) {
        Some(chosen) => {
            response.headers_mut().insert(
                header::SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static(chosen),
            );
        }
        // Subprotocols offered, none of them MQTT: the client means to
        // speak something else [MQTT-6.0.0-3], and would not understand
        // our answer. No header at all is let in (clients that omit it).
        None if !offered.is_empty() => return Err(bad_subprotocol()),
        None => {}
    }
    Ok(response)
}

/// The answer to an upgrade offering only subprotocols other than MQTT.
fn bad_subprotocol() -> ErrorResponse {
    let body = "Unsupported WebSocket subprotocol: offer \"mqtt\" (or \"mqttv3.1\")\n";
    let mut response = ErrorResponse::new(Some(body.into()));
    *response.status_mut() = StatusCode::BAD_REQUEST;
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    response
}

fn into_io(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        WsError::ConnectionClosed | WsError::AlreadyClosed => {
            io::Error::new(io::ErrorKind::BrokenPipe, "WebSocket closed")
        }
        e => io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
    }
}
