//! The connection task: one per client socket, from CONNECT to close.
//!
//! It owns the socket halves, the read buffer and the [`Client`] state, so
//! nothing here is locked. One loop waits on everything at once:
//! - bytes from the client: decoded incrementally (a partial packet waits in
//!   the read buffer, which survives a cancelled read) and dispatched to the
//!   handlers, which write their responses into `client.out`;
//! - the session's notification that deliveries were queued: `outbound::fill`
//!   encodes them into `client.out`;
//! - the socket becoming writable while `client.out` holds bytes: one write
//!   carries as many packets as are buffered;
//! - keep-alive expiry, session takeover, broker shutdown.
//!
//! On the way out it sends an MQTT 5 DISCONNECT with the reason (if the
//! server is the one closing), flushes, and detaches from the session, which
//! decides about the will and the session's expiry.

pub mod client;
pub mod outbound;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tern_codec::{Connect, Disconnect, DisconnectProperties, Packet, ProtocolVersion, ReasonCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::oneshot;
use tokio::time::Instant;

use self::client::{Client, PeerLimits};
use crate::error::ProtocolViolation;
use crate::handler::{self, Flow, connect};
use crate::message::Message;
use crate::metrics::Metrics;
use crate::registry::{self, Departure};
use crate::session::Kick;
use crate::state::BrokerState;

/// Read buffer size for a connection that is receiving a stream of data.
const READ_CHUNK: usize = 4096;
/// Read buffer size for a connection that is mostly idle. Idle connections
/// are many, so they hold only this much between packets.
const IDLE_READ: usize = 128;
/// Time allowed to flush the last packets (DISCONNECT) before closing.
const CLOSE_FLUSH: Duration = Duration::from_secs(1);

/// The socket halves and the read buffer.
struct Io<S> {
    reader: ReadHalf<S>,
    writer: WriteHalf<S>,
    rbuf: BytesMut,
}

/// Why the main loop ended.
enum Close {
    /// The client sent DISCONNECT.
    Disconnect {
        publish_will: bool,
    },
    /// The client closed the socket, or it failed.
    Lost(Option<std::io::Error>),
    KeepAliveTimeout,
    Violation(ProtocolViolation),
    /// Another connection took the session over (or it was closed by the broker).
    Kicked(Option<Kick>),
    Shutdown,
}

/// Serves one accepted connection until it closes.
pub async fn serve<S>(stream: S, peer: SocketAddr, state: Arc<BrokerState>)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (reader, writer) = tokio::io::split(stream);
    let mut io = Io {
        reader,
        writer,
        rbuf: BytesMut::new(),
    };
    let timeout = Duration::from_secs(state.config.connect_timeout_secs);
    let connect = tokio::select! {
        // The handshake and closing futures are boxed: they are not alive while
        // the connection idles, and inline they would make every idle
        // connection's task as large as the largest of them.
        r = Box::pin(tokio::time::timeout(timeout, read_connect(&mut io, &state))) => match r {
            Ok(Ok(Some(connect))) => connect,
            Ok(Ok(None)) => return,
            Ok(Err(e)) => {
                tracing::info!(%peer, error = %e, "closing connection: invalid CONNECT");
                refuse_unsupported(&mut io, e).await;
                return;
            }
            Err(_) => {
                tracing::info!(%peer, "closing connection: no CONNECT within {timeout:?}");
                return;
            }
        },
        _ = state.shutdown.cancelled() => return,
    };
    let Some((mut client, mut kicked)) =
        Box::pin(start_session(&mut io, *connect, peer, &state)).await
    else {
        return;
    };
    Metrics::add(&state.metrics.clients_connected, 1);
    let close = run(&mut client, &mut io, &mut kicked).await;
    Box::pin(finish(&mut client, &mut io, close, peer)).await;
    state
        .metrics
        .clients_connected
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
}

/// Reads until the first packet, which must be CONNECT [MQTT-3.1.0-1].
/// `Ok(None)`: the socket closed or the first packet was something else.
async fn read_connect<S: AsyncRead>(
    io: &mut Io<S>,
    state: &BrokerState,
) -> Result<Option<Box<Connect>>, tern_codec::DecodeError> {
    let max = state.config.max_packet_size as usize;
    loop {
        match tern_codec::decode(&mut io.rbuf, ProtocolVersion::V5, max)? {
            Some(Packet::Connect(connect)) => {
                // CONNECT counts in `messages/received` like every other packet.
                Metrics::add(&state.metrics.packets_received, 1);
                return Ok(Some(connect));
            }
            Some(other) => {
                tracing::info!(
                    packet = other.name(),
                    "closing connection: first packet is not CONNECT"
                );
                return Ok(None);
            }
            None => {}
        }
        io.rbuf.reserve(READ_CHUNK);
        match io.reader.read_buf(&mut io.rbuf).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(n) => Metrics::add(&state.metrics.bytes_received, n as u64),
        }
    }
}

/// An unsupported protocol level is answered with CONNACK return code 1 in
/// 3.1.1 form before closing [MQTT-3.1.2-2]; other errors just close.
async fn refuse_unsupported<S: AsyncWrite>(io: &mut Io<S>, error: tern_codec::DecodeError) {
    if let tern_codec::DecodeError::UnsupportedProtocolVersion(_) = error {
        let mut out = BytesMut::new();
        let connack = Packet::ConnAck(connect::refusal(ReasonCode::UnsupportedProtocolVersion));
        if connack.encode(ProtocolVersion::V3_1_1, &mut out).is_ok() {
            let _ = tokio::time::timeout(CLOSE_FLUSH, io.writer.write_all(&out)).await;
        }
    }
}

/// Accepts or refuses the CONNECT, attaches the session and queues CONNACK.
async fn start_session<S: AsyncWrite>(
    io: &mut Io<S>,
    connect: Connect,
    peer: SocketAddr,
    state: &Arc<BrokerState>,
) -> Option<(Client, oneshot::Receiver<Kick>)> {
    let version = connect.protocol;
    let accepted = match connect::accept(&connect, state) {
        Ok(accepted) => accepted,
        Err(reason) => {
            tracing::info!(%peer, client_id = %connect.client_id, ?reason, "refusing CONNECT");
            let mut out = BytesMut::new();
            if Packet::ConnAck(connect::refusal(reason))
                .encode(version, &mut out)
                .is_ok()
            {
                let _ = tokio::time::timeout(CLOSE_FLUSH, io.writer.write_all(&out)).await;
            }
            return None;
        }
    };
    let connection_id = state.next_connection_id();
    let attached = registry::attach(
        state,
        &accepted.client_id,
        connect.clean_start,
        accepted.session_expiry_secs,
        connection_id,
    )
    .await;
    let props = &connect.properties;
    let keep_alive = accepted.keep_alive_secs;
    let mut client = Client {
        connection_id,
        client_id: accepted.client_id.clone(),
        version,
        session: attached.session,
        state: state.clone(),
        out: BytesMut::new(),
        peer: PeerLimits {
            receive_maximum: props
                .receive_maximum
                .unwrap_or(u16::MAX)
                .min(state.config.max_inflight_messages),
            max_packet_size: props.maximum_packet_size.map_or(usize::MAX, |m| m as usize),
            topic_alias_maximum: props.topic_alias_maximum.unwrap_or(0),
        },
        inbound_aliases: Default::default(),
        outbound_aliases: Default::default(),
        will_delay_secs: connect
            .will
            .as_ref()
            .and_then(|w| w.properties.will_delay_interval)
            .unwrap_or(0),
        will: connect.will.map(connect::owned_will),
        session_expiry_secs: accepted.session_expiry_secs,
        // Close after one and a half keep-alive periods of silence [MQTT-3.1.2-24].
        keep_alive_timeout: (keep_alive > 0)
            .then(|| Duration::from_millis(u64::from(keep_alive) * 1500)),
        resend_inflight: attached.session_present,
        problem_information: props.request_problem_information.unwrap_or(true),
    };
    let connack = connect::connack(&accepted, version, attached.session_present, state);
    client.send(&Packet::ConnAck(connack));
    tracing::debug!(%peer, client_id = %client.client_id, ?version, session_present = attached.session_present, "client connected");
    Some((client, attached.kicked))
}

/// The main loop; returns why the connection is closing.
async fn run<S: AsyncRead + AsyncWrite>(
    client: &mut Client,
    io: &mut Io<S>,
    kicked: &mut oneshot::Receiver<Kick>,
) -> Close {
    let state = client.state.clone();
    let session = client.session.clone();
    let mut last_heard = Instant::now();
    // Packets that arrived in the same read as CONNECT are already buffered;
    // handle them now rather than when the next bytes come.
    match process(client, &mut io.rbuf, &mut last_heard) {
        Ok(Flow::Continue) => {}
        Ok(Flow::Disconnect { publish_will }) => return Close::Disconnect { publish_will },
        Err(v) => return Close::Violation(v),
    }
    // Whether the last read filled the buffer: more is probably waiting.
    let mut busy = false;
    loop {
        outbound::fill(client);
        let deadline = client.keep_alive_timeout.map(|t| last_heard + t);
        let spare = prepare_read_buffer(&mut io.rbuf, busy);
        tokio::select! {
            biased;
            _ = state.shutdown.cancelled() => return Close::Shutdown,
            kick = &mut *kicked => return Close::Kicked(kick.ok()),
            written = io.writer.write(&client.out), if !client.out.is_empty() => match written {
                Ok(0) => return Close::Lost(None),
                Ok(n) => {
                    client.out.advance(n);
                    Metrics::add(&state.metrics.bytes_sent, n as u64);
                }
                Err(e) => return Close::Lost(Some(e)),
            },
            // Stop reading while our responses pile up unread: backpressure
            // on a client that publishes without reading its acks.
            read = io.reader.read_buf(&mut io.rbuf), if client.out.len() < outbound::HIGH_WATER => match read {
                Ok(0) => return Close::Lost(None),
                Ok(n) => {
                    busy = n >= spare;
                    Metrics::add(&state.metrics.bytes_received, n as u64);
                    match process(client, &mut io.rbuf, &mut last_heard) {
                        Ok(Flow::Continue) => {}
                        Ok(Flow::Disconnect { publish_will }) => return Close::Disconnect { publish_will },
                        Err(v) => return Close::Violation(v),
                    }
                }
                Err(e) => return Close::Lost(Some(e)),
            },
            _ = session.notify.notified() => {}
            _ = sleep_until(deadline), if deadline.is_some() => return Close::KeepAliveTimeout,
        }
    }
}

/// Sizes the read buffer for the next read and returns its spare capacity.
///
/// An idle connection gives its buffer back once every byte in it was
/// decoded and keeps only [`IDLE_READ`] bytes: with thousands of idle clients
/// this is most of the broker's memory. A connection whose last read filled
/// the buffer gets [`READ_CHUNK`] bytes, so a stream is read in few syscalls.
/// Dropping the old buffer also lets go of a chunk that decoded payloads may
/// still share; it is freed when the last of them is.
fn prepare_read_buffer(rbuf: &mut BytesMut, busy: bool) -> usize {
    if !busy && rbuf.is_empty() && rbuf.capacity() > IDLE_READ {
        *rbuf = BytesMut::new();
    }
    let want = if busy { READ_CHUNK } else { IDLE_READ };
    if rbuf.capacity() - rbuf.len() < want {
        rbuf.reserve(want);
    }
    rbuf.capacity() - rbuf.len()
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(deadline) = deadline {
        tokio::time::sleep_until(deadline).await;
    }
}

/// Decodes and handles every whole packet in the read buffer.
fn process(
    client: &mut Client,
    rbuf: &mut BytesMut,
    last_heard: &mut Instant,
) -> Result<Flow, ProtocolViolation> {
    let max = client.state.config.max_packet_size as usize;
    while let Some(packet) = tern_codec::decode(rbuf, client.version, max)? {
        *last_heard = Instant::now();
        Metrics::add(&client.state.metrics.packets_received, 1);
        tracing::trace!(client_id = %client.client_id, packet = ?packet, "received");
        match handler::dispatch(client, packet)? {
            Flow::Continue => {}
            disconnect => return Ok(disconnect),
        }
    }
    Ok(Flow::Continue)
}

/// Reports the close to the client, flushes, and detaches from the session.
async fn finish<S: AsyncWrite>(
    client: &mut Client,
    io: &mut Io<S>,
    close: Close,
    peer: SocketAddr,
) {
    let id = client.client_id.clone();
    let (reason, text): (Option<ReasonCode>, String) = match &close {
        Close::Disconnect { .. } => (None, String::new()),
        Close::Lost(e) => {
            tracing::debug!(%peer, client_id = %id, error = ?e, "connection lost");
            (None, String::new())
        }
        Close::KeepAliveTimeout => {
            tracing::info!(%peer, client_id = %id, "closing connection: keep-alive timeout");
            (
                Some(ReasonCode::KeepAliveTimeout),
                "keep-alive timeout".into(),
            )
        }
        Close::Violation(v) => {
            tracing::warn!(%peer, client_id = %id, error = %v, "closing connection: protocol violation");
            (Some(v.reason_code()), v.to_string())
        }
        Close::Kicked(kick) => {
            let reason = kick
                .as_ref()
                .map_or(ReasonCode::SessionTakenOver, |k| k.reason);
            tracing::info!(%peer, client_id = %id, ?reason, "closing connection: session taken over");
            (Some(reason), "session taken over".into())
        }
        Close::Shutdown => (
            Some(ReasonCode::ServerShuttingDown),
            "server shutting down".into(),
        ),
    };
    if let (Some(reason), ProtocolVersion::V5) = (reason, client.version) {
        let properties = DisconnectProperties {
            reason_string: client.reason_string(text),
            ..Default::default()
        };
        client.send(&Packet::Disconnect(Disconnect { reason, properties }));
    }
    if !matches!(close, Close::Lost(_)) {
        let _ = tokio::time::timeout(CLOSE_FLUSH, async {
            io.writer.write_all(&client.out).await?;
            io.writer.shutdown().await
        })
        .await;
    }
    // The will is published unless the client ended normally without asking
    // for it [MQTT-3.1.2-8], [MQTT-3.14.4-3]; not at broker shutdown, where
    // no one is left to receive it.
    let publish_will = match close {
        Close::Disconnect { publish_will } => publish_will,
        Close::Shutdown => false,
        _ => true,
    };
    let will = client
        .will
        .take()
        .filter(|_| publish_will)
        .map(|w| Message::from_will(w, id.clone(), std::time::Instant::now()));
    let departure = Departure {
        connection_id: client.connection_id,
        will,
        will_delay_secs: client.will_delay_secs,
    };
    registry::detach(&client.state, &client.session, departure);
    // Dropping the kick's `done` (inside `close`) tells a taking-over
    // connection that this one has detached.
    drop(close);
}
