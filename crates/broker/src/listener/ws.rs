//! WebSocket listeners (ws and, over TLS, wss): the HTTP upgrade on
//! `ws_path`, and [`WsStream`], which turns binary WebSocket messages back
//! into the MQTT byte stream the connection task reads.
//!
//! MQTT over WebSocket is a byte stream cut into binary messages anywhere:
//! one packet may span several messages and one message may carry several
//! packets, so the adapter is an `AsyncRead`/`AsyncWrite` and the connection's
//! incremental decoder does the rest. Text messages are a protocol error.
//! Ping, pong and close frames are answered by tungstenite.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use futures_core::Stream;
use futures_sink::Sink;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode, header};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::config::{Config, ListenerConfig};
use crate::connection::Transport;
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
    pub fn new(listener: &ListenerConfig, config: &Config) -> Upgrade {
        // A message may carry several packets, but never lets a client make
        // us buffer much more than the largest packet we accept.
        let max = (config.max_packet_size as usize)
            .saturating_mul(2)
            .max(64 * 1024);
        Upgrade {
            path: listener.ws_path.clone(),
            // tungstenite keeps a read buffer of this size for the life of
            // every connection (128 KiB by default): 4 KiB keeps idle
            // WebSocket clients small, and large packets just take more reads.
            config: WebSocketConfig::default()
                .read_buffer_size(4 * 1024)
                .max_message_size(Some(max))
                .max_frame_size(Some(max)),
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
        Ok(WsStream {
            ws,
            pending: Bytes::new(),
            accepted: 0,
            close_sent: false,
        })
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

/// MQTT bytes over a WebSocket: reads return the binary messages' bytes in
/// order; each write is sent as one binary message.
pub struct WsStream<S> {
    ws: WebSocketStream<Metered<S>>,
    /// The rest of the binary message being read.
    pending: Bytes,
    /// Bytes of the current write already queued as a message, not yet
    /// flushed: the write returns once they are (see `TlsConn` for why).
    accepted: usize,
    /// Whether our Close frame has gone out.
    close_sent: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(bytes))) => self.pending = bytes,
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "text WebSocket message: MQTT travels in binary messages",
                    )));
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                // The end of the stream; tungstenite answers the close.
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(Ok(())),
                Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => {
                    return Poll::Ready(Ok(()));
                }
                Some(Err(e)) => return Poll::Ready(Err(into_io(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.accepted == 0 {
            if buf.is_empty() {
                return Poll::Ready(Ok(0));
            }
            ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(into_io)?;
            Pin::new(&mut self.ws)
                .start_send(Message::Binary(Bytes::copy_from_slice(buf)))
                .map_err(into_io)?;
            self.accepted = buf.len();
        }
        ready!(Pin::new(&mut self.ws).poll_flush(cx)).map_err(into_io)?;
        let n = std::mem::take(&mut self.accepted);
        Poll::Ready(Ok(n.min(buf.len())))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_flush(cx).map_err(into_io)
    }

    /// Sends a Close frame, then waits for the client's (the caller bounds
    /// the wait): a client still writing, typically its own Close, must not
    /// meet a closed socket (it would report EPIPE or a reset).
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.close_sent {
            ready!(Pin::new(&mut self.ws).poll_close(cx)).map_err(into_io)?;
            self.close_sent = true;
        }
        loop {
            match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Poll::Ready(Ok(())),
            }
        }
    }
}

/// The socket under tungstenite, counting what it reads until CONNECT is
/// accepted: tungstenite buffers a frame whole before we see any of it, so
/// this is where a client's unauthenticated bytes can be bounded.
struct Metered<S> {
    inner: S,
    bytes: Arc<ConnectBytes>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        if !self.bytes.hold(buf.filled().len() - before) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "too much sent before CONNECT was accepted",
            )));
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// WebSocket connections keep their task: the parker waits for bytes on a
/// raw socket, and tungstenite's (and rustls's) state cannot go with it.
impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Transport for WsStream<S> {
    const PARKABLE: bool = false;
    const RAW: bool = false;
    type Asleep = ();
    fn sleep(self) -> io::Result<(std::net::TcpStream, ())> {
        Err(io::Error::other("WebSocket connections do not park"))
    }
    fn wake(_: tokio::net::TcpStream, (): ()) -> io::Result<Self> {
        Err(io::Error::other("WebSocket connections do not park"))
    }
}
