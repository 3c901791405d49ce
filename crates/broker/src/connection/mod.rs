//! The connection task: one per client socket, from CONNECT to close.
//!
//! It owns the socket halves, the read buffer and the [`ClientState`] state, so
//! nothing here is locked. One loop waits on everything at once:
//! - bytes from the client: decoded incrementally (a partial packet waits in
//!   the read buffer, which survives a cancelled read) and dispatched to the
//!   handlers, which write their responses into `client.out`;
//! - the session's notification that deliveries were queued: `outbound::fill`
//!   encodes them into `client.out`;
//! - the socket becoming writable while `client.out` holds bytes: one write
//!   carries as many packets as are buffered;
//! - keep-alive expiry and broker shutdown;
//! - session takeover: the new connection leaves a kick in the session and
//!   wakes this one through the same notification; `outbound::fill` finds it.
//!
//! On the way out it sends an MQTT 5 DISCONNECT with the reason (if the
//! server is the one closing), flushes, and detaches from the session, which
//! decides about the will and the session's expiry.

pub mod park;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use tern_codec::{Connect, Disconnect, DisconnectProperties, Packet, ProtocolVersion, ReasonCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use self::park::Parker;
use crate::auth;
use crate::client_state::{ClientState, PeerLimits, outbound};
use crate::error::ProtocolViolation;
use crate::handler::ack::PubAcks;
use crate::handler::{self, Flow, connect};
use crate::limits::ConnectBytes;
use crate::message::Message;
use crate::metrics::Metrics;
use crate::registry::{self, Departure};
use crate::session::Kick;
use crate::state::BrokerState;

/// Read buffer size for a connection that is receiving a stream of data.
const READ_CHUNK: usize = 16 * 1024;
/// Read buffer size for a connection that is mostly idle. Idle connections
/// are many, so they hold only this much between packets.
const IDLE_READ: usize = 128;
/// Time allowed to flush the last packets (DISCONNECT) before closing.
const CLOSE_FLUSH: Duration = Duration::from_secs(1);
/// How soon a connection that could not park (bytes still to write) looks again.
const PARK_RETRY: Duration = Duration::from_millis(250);
/// How long one connection handles packets before it lets other tasks run.
/// Without it one read's worth of costly packets (a publish matching
/// thousands of filters) holds a worker thread for as long as they take.
const PROCESS_BUDGET: Duration = Duration::from_millis(2);

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
    /// More PUBLISH packets than `max_publish_rate` allows.
    PublishRate,
    /// Another connection took the session over (or it was closed by the broker).
    Kicked(Option<Box<Kick>>),
    Shutdown,
}

/// A client's byte stream. Plain TCP can park while idle (see [`park`]);
/// other transports keep their task.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Whether [`Transport::into_std`] works.
    const PARKABLE: bool;
    /// The socket as a std TCP stream, no longer registered with tokio.
    fn into_std(self) -> std::io::Result<std::net::TcpStream>;
}

impl Transport for TcpStream {
    const PARKABLE: bool = true;
    fn into_std(self) -> std::io::Result<std::net::TcpStream> {
        TcpStream::into_std(self)
    }
}

/// What the listener knows about a connection before its CONNECT.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// Which listener accepted it: an index into `state.config.listeners`
    /// (which `Broker::start` fills in when the file named none).
    pub listener: usize,
    /// TLS with client certificates: the verified certificate's Common Name.
    pub cert_identity: Option<String>,
    /// Set when the transport itself counts what it buffers before CONNECT
    /// (WebSocket: tungstenite's frames); given back once CONNECT is accepted.
    pub connect_bytes: Option<Arc<ConnectBytes>>,
}

/// A connection past CONNECT: what its task owns.
struct Conn<S> {
    io: Io<S>,
    client: ClientState,
    /// Where it goes when it has been quiet for a while.
    parker: Arc<Parker>,
    peer: SocketAddr,
    /// When the last packet arrived, for keep-alive.
    last_heard: Instant,
}

/// How the main loop ended.
enum Exit {
    Close(Close),
    /// Quiet for the parking time: hand the connection to the parker.
    Park,
}

/// Serves one accepted connection until it closes (or parks).
pub async fn serve<S: Transport>(
    stream: S,
    info: ConnInfo,
    state: Arc<BrokerState>,
    parker: Arc<Parker>,
) {
    // The handshake is boxed and over before the main loop starts: inline,
    // its futures would make every idle connection's task as large as the
    // largest of them.
    if let Some(conn) = Box::pin(handshake(stream, info, state, parker)).await {
        drive(conn).await;
    }
}

/// Reads CONNECT, attaches the session and queues CONNACK. `None`: the
/// connection was refused or closed.
async fn handshake<S: Transport>(
    stream: S,
    info: ConnInfo,
    state: Arc<BrokerState>,
    parker: Arc<Parker>,
) -> Option<Conn<S>> {
    let peer = info.peer;
    let (reader, writer) = tokio::io::split(stream);
    let mut io = Io {
        reader,
        writer,
        rbuf: BytesMut::new(),
    };
    let timeout = Duration::from_secs(state.config.connect_timeout_secs);
    // The read buffer's bytes count, unless the transport counts its own.
    let own_bytes = match &info.connect_bytes {
        Some(_) => None,
        None => Some(state.limits.connect_bytes(peer)),
    };
    let reading = read_connect(&mut io, &state, own_bytes.as_ref());
    let connect = tokio::select! {
        r = tokio::time::timeout(timeout, reading) => match r {
            Ok(Ok(Some(connect))) => connect,
            Ok(Ok(None)) => return None,
            Ok(Err(e)) => {
                state.limits.count_violation(&e.into());
                crate::throttled!(info, "invalid CONNECT", %peer, error = %e, "closing connection: invalid CONNECT");
                refuse_invalid(&mut io, e).await;
                return None;
            }
            Err(_) => {
                crate::throttled!(info, "no CONNECT", %peer, "closing connection: no CONNECT within {timeout:?}");
                return None;
            }
        },
        _ = state.shutdown.cancelled() => return None,
    };
    let client = start_session(&mut io, connect, &info, &state).await?;
    // Logged in: what it holds from now on is bounded by max_packet_size.
    if let Some(bytes) = &info.connect_bytes {
        bytes.release();
    }
    drop(own_bytes);
    Metrics::add(&state.metrics.clients_connected, 1);
    Some(Conn {
        io,
        client,
        parker,
        peer,
        last_heard: Instant::now(),
    })
}

/// Runs a parked connection again, in a new task.
async fn resume(parked: Box<park::Parked>) {
    let park::Resumed {
        socket,
        mut client,
        peer,
        last_heard,
        parker,
    } = parked.into_parts();
    match TcpStream::from_std(socket) {
        Ok(stream) => {
            let (reader, writer) = tokio::io::split(stream);
            let io = Io {
                reader,
                writer,
                rbuf: BytesMut::new(),
            };
            drive(Conn {
                io,
                client,
                parker,
                peer,
                last_heard,
            })
            .await;
        }
        Err(e) => depart(&mut client, Close::Lost(Some(e)), peer),
    }
}

/// Runs the main loop until the connection closes or parks.
async fn drive<S: Transport>(mut conn: Conn<S>) {
    match run(&mut conn).await {
        Exit::Close(close) => Box::pin(finish(&mut conn, close)).await,
        Exit::Park => park(conn),
    }
}

/// Hands a quiet connection to the parker; this task ends.
fn park<S: Transport>(conn: Conn<S>) {
    let Conn {
        io,
        mut client,
        parker,
        peer,
        last_heard,
    } = conn;
    // Only a connection with nothing left to write parks; its output buffer's
    // allocation is not worth keeping for however long it sleeps.
    client.out = BytesMut::new();
    match io.reader.unsplit(io.writer).into_std() {
        Ok(socket) => {
            tracing::trace!(%peer, client_id = %client.client_id(), "parking idle connection");
            if let Err(parked) = parker.park(socket, client, peer, last_heard) {
                // Something arrived meanwhile: straight back into a task.
                parker.resume(parked);
            }
        }
        // Deregistering from tokio failed, which closed the socket.
        Err(e) => depart(&mut client, Close::Lost(Some(e)), peer),
    }
}

/// Reads until the first packet, which must be CONNECT [MQTT-3.1.0-1],
/// of at most `max_connect_size`; the read buffer's growth is counted in
/// `bytes`. `Ok(None)`: the socket closed, the first packet was something
/// else, or the connection holds too much ([`ConnectBytes::hold`]).
async fn read_connect<S: AsyncRead>(
    io: &mut Io<S>,
    state: &BrokerState,
    bytes: Option<&ConnectBytes>,
) -> Result<Option<Box<Connect>>, tern_codec::DecodeError> {
    let max = state.limits.max_connect_size(state.config.max_packet_size);
    loop {
        match tern_codec::decode(&mut io.rbuf, ProtocolVersion::V5, max)? {
            Some(Packet::Connect(connect)) => {
                // CONNECT counts in `messages/received` like every other packet.
                Metrics::add(&state.metrics.packets_received, 1);
                return Ok(Some(connect));
            }
            Some(other) => {
                crate::throttled!(
                    info,
                    "first packet is not CONNECT",
                    packet = other.name(),
                    "closing connection: first packet is not CONNECT"
                );
                return Ok(None);
            }
            None => {}
        }
        // Exactly the rest of a CONNECT begun, so the buffer holds no more
        // than it declared.
        let before = io.rbuf.capacity();
        let want = tern_codec::frame_size(&io.rbuf)
            .map_or(IDLE_READ, |size| size.saturating_sub(io.rbuf.len()))
            .max(1);
        if io.rbuf.capacity() - io.rbuf.len() < want {
            io.rbuf.reserve(want);
        }
        let grown = io.rbuf.capacity().saturating_sub(before);
        if bytes.is_some_and(|b| !b.hold(grown)) {
            return Ok(None);
        }
        match io.reader.read_buf(&mut io.rbuf).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(n) => Metrics::add(&state.metrics.bytes_received, n as u64),
        }
    }
}

/// Answers a CONNECT that cannot be decoded, where a CONNACK can say why,
/// before the connection is closed:
/// - an unsupported protocol level: CONNACK return code 1 in 3.1.1 form
///   [MQTT-3.1.2-2];
/// - an MQTT 5 CONNECT above `max_packet_size`: CONNACK 0x95 (Packet too
///   large). Older levels have no code for it, and a CONNECT whose level has
///   not arrived yet cannot be answered in its version: both just close.
///
/// Other errors just close.
async fn refuse_invalid<S: AsyncWrite>(io: &mut Io<S>, error: tern_codec::DecodeError) {
    let (reason, version) = match error {
        tern_codec::DecodeError::UnsupportedProtocolVersion(_) => (
            ReasonCode::UnsupportedProtocolVersion,
            ProtocolVersion::V3_1_1,
        ),
        tern_codec::DecodeError::PacketTooLarge { .. }
            if tern_codec::connect_level(&io.rbuf) == Some(5) =>
        {
            (ReasonCode::PacketTooLarge, ProtocolVersion::V5)
        }
        _ => return,
    };
    let mut out = BytesMut::new();
    if Packet::ConnAck(connect::refusal(reason))
        .encode(version, &mut out)
        .is_ok()
    {
        let _ = tokio::time::timeout(CLOSE_FLUSH, io.writer.write_all(&out)).await;
    }
}

/// Accepts or refuses the CONNECT, attaches the session and queues CONNACK.
async fn start_session<S: AsyncWrite>(
    io: &mut Io<S>,
    // Boxed as decoded: by value it would be part of every handshake
    // future, a transient allocation per connection.
    mut connect: Box<Connect>,
    info: &ConnInfo,
    state: &Arc<BrokerState>,
) -> Option<ClientState> {
    let peer = info.peer;
    let version = connect.protocol;
    let accepted = match admit(&connect, info, state).await {
        Ok(accepted) => accepted,
        Err(reason) => {
            // Never the password.
            let username = connect.username.as_ref().map(|u| u.as_str());
            crate::throttled!(info, "refusing CONNECT", %peer, client_id = %connect.client_id, username, ?reason, "refusing CONNECT");
            if reason == ReasonCode::MalformedPacket && version != ProtocolVersion::V5 {
                // No 3.1.1 return code says so: closed without CONNACK.
                return None;
            }
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
        accepted.username.clone(),
    )
    .await;
    let props = &connect.properties;
    let keep_alive = accepted.keep_alive_secs;
    let mut client = ClientState {
        connection_id,
        version,
        session: attached.session,
        state: state.clone(),
        out: BytesMut::new(),
        holds: None,
        peer: PeerLimits {
            receive_maximum: props
                .receive_maximum
                .unwrap_or(u16::MAX)
                .min(state.config.max_inflight_messages),
            max_packet_size: props.maximum_packet_size.unwrap_or(u32::MAX),
            topic_alias_maximum: props.topic_alias_maximum.unwrap_or(0),
        },
        aliases: None,
        will: connect
            .will
            .take()
            .map(|will| Box::new(connect::owned_will(will))),
        session_expiry_secs: accepted.session_expiry_secs,
        // Close after one and a half keep-alive periods of silence [MQTT-3.1.2-24].
        // (65535 × 1500 ms fits a u32.)
        keep_alive_ms: u32::from(keep_alive) * 1500,
        resend_inflight: attached.session_present,
        problem_information: props.request_problem_information.unwrap_or(true),
        listener: u32::try_from(info.listener).unwrap_or(u32::MAX),
        limits: state.limits.client_limits(peer),
        username: accepted.username.clone(),
    };
    let connack = connect::connack(&accepted, version, attached.session_present, state);
    // Session Present promises the session is kept: not before it is stored.
    client.hold_until(attached.ticket);
    client.send(&Packet::ConnAck(connack));
    tracing::debug!(%peer, client_id = %client.client_id(), ?version, session_present = attached.session_present, "client connected");
    Some(client)
}

/// Decides whether the CONNECT is accepted: protocol rules and
/// configuration. `Err`: the CONNACK reason code refusing it.
async fn admit(
    connect: &Connect,
    info: &ConnInfo,
    state: &Arc<BrokerState>,
) -> Result<connect::Accepted, ReasonCode> {
    state.limits.check_connect(connect, info.peer)?;
    let mut accepted = connect::accept(connect, state)?;
    let listener = state.config.listeners.get(info.listener);
    let login = auth::Login {
        connect,
        client_id: &accepted.client_id,
        ip: info.peer.ip(),
        use_identity_as_username: listener.is_some_and(|l| l.use_identity_as_username),
        cert_identity: info.cert_identity.as_deref(),
        allow_anonymous: state.config.allows_anonymous(info.listener),
    };
    accepted.username = state.auth.authenticate(&login, &state.shutdown).await?;
    if !registry::may_claim(state, &accepted.client_id, accepted.username.as_deref()) {
        return Err(ReasonCode::ClientIdentifierNotValid);
    }
    // Last: the slot is given back only when the connection ends, so
    // nothing may refuse the CONNECT after it is taken.
    state.limits.reserve_connection(info.listener)?;
    Ok(accepted)
}

/// The main loop; returns why the connection is closing, or that it parks.
async fn run<S: Transport>(conn: &mut Conn<S>) -> Exit {
    let Conn {
        io,
        client,
        parker,
        last_heard,
        ..
    } = conn;
    let state = client.state.clone();
    let session = client.session.clone();
    // Packets that arrived in the same read as CONNECT are already buffered;
    // handle them now rather than when the next bytes come.
    // `backlog`: whole packets are left in the buffer after the budget ran out.
    let mut backlog = match process(client, &mut io.rbuf, last_heard) {
        Ok(backlog) => backlog,
        Err(close) => return Exit::Close(close),
    };
    let connected = state.metrics.clients_connected.load(Ordering::Relaxed);
    let park_after = parker.idle(connected as usize).filter(|_| S::PARKABLE);
    // Created once, not per loop turn: each creation would register anew
    // with the cancellation token and the timer wheel.
    let shutdown = state.shutdown.cancelled();
    tokio::pin!(shutdown);
    // One timer serves keep-alive and parking. It is not moved on every
    // packet; when it fires it checks how long the connection has really
    // been quiet, and sets itself again if not long enough.
    let mut last_active = Instant::now();
    let timer = tokio::time::sleep_until(
        next_check(client, *last_heard, last_active, park_after).unwrap_or(last_active),
    );
    tokio::pin!(timer);
    let timed = client.keep_alive_timeout().is_some() || park_after.is_some();
    let mut durable = state.store.as_ref().map(|s| s.watch());
    // Whether the last read filled the buffer: more is probably waiting.
    let mut busy = false;
    loop {
        if let Err(kick) = outbound::fill(client) {
            return Exit::Close(Close::Kicked(kick));
        }
        if client.holds.is_some()
            && let Some(store) = &state.store
        {
            client.release(store.durable());
        }
        let writable = client.writable();
        let spare = prepare_read_buffer(&mut io.rbuf, busy);
        tokio::select! {
            biased;
            _ = &mut shutdown => return Exit::Close(Close::Shutdown),
            written = io.writer.write(&client.out[..writable]), if writable > 0 => match written {
                Ok(0) => return Exit::Close(Close::Lost(None)),
                Ok(n) => {
                    client.advance(n);
                    Metrics::add(&state.metrics.bytes_sent, n as u64);
                }
                Err(e) => return Exit::Close(Close::Lost(Some(e))),
            },
            // Stop reading while our responses pile up unread: backpressure
            // on a client that publishes without reading its acks.
            read = io.reader.read_buf(&mut io.rbuf), if !backlog && client.out.len() < outbound::HIGH_WATER => match read {
                Ok(0) => return Exit::Close(Close::Lost(None)),
                Ok(n) => {
                    busy = n >= spare;
                    Metrics::add(&state.metrics.bytes_received, n as u64);
                    backlog = match process(client, &mut io.rbuf, last_heard) {
                        Ok(backlog) => backlog,
                        Err(close) => return Exit::Close(close),
                    };
                }
                Err(e) => return Exit::Close(Close::Lost(Some(e))),
            },
            // The budget ran out: the rest of the buffer after other tasks.
            () = tokio::task::yield_now(), if backlog && client.out.len() < outbound::HIGH_WATER => {
                backlog = match process(client, &mut io.rbuf, last_heard) {
                    Ok(backlog) => backlog,
                    Err(close) => return Exit::Close(close),
                };
            }
            _ = session.notify.notified() => last_active = Instant::now(),
            // Held responses go out once the store has what they promise.
            () = store_progress(&mut durable), if client.holds.is_some() => {}
            () = &mut timer, if timed => {
                let now = Instant::now();
                if client.keep_alive_timeout().is_some_and(|t| *last_heard + t <= now) {
                    return Exit::Close(Close::KeepAliveTimeout);
                }
                last_active = last_active.max(*last_heard);
                let quiet = client.out.is_empty() && io.rbuf.is_empty();
                if quiet && park_after.is_some_and(|p| last_active + p <= now) {
                    return Exit::Park;
                }
                if let Some(at) = next_check(client, *last_heard, last_active, park_after) {
                    // Not quiet yet (bytes still to write): look again soon.
                    timer.as_mut().reset(at.max(now + PARK_RETRY));
                }
            }
        }
    }
}

/// Waits until the store reports more durable (forever without a store).
async fn store_progress(durable: &mut Option<tokio::sync::watch::Receiver<u64>>) {
    match durable {
        Some(rx) => {
            if rx.changed().await.is_err() {
                // The store has stopped (shutdown): nothing more will come.
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

/// When the timer should next look: the keep-alive deadline or the time the
/// connection may park, whichever is first.
fn next_check(
    client: &ClientState,
    last_heard: Instant,
    last_active: Instant,
    park_after: Option<Duration>,
) -> Option<Instant> {
    let keep_alive = client.keep_alive_timeout().map(|t| last_heard + t);
    let park = park_after.map(|p| last_active.max(last_heard) + p);
    match (keep_alive, park) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
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
    let mut want = if busy { READ_CHUNK } else { IDLE_READ };
    // The rest of a packet begun in the buffer is read in one go (`decode`
    // has checked its size against the maximum already).
    if let Some(size) = tern_codec::frame_size(rbuf) {
        want = want.max(size.saturating_sub(rbuf.len()));
    }
    if rbuf.capacity() - rbuf.len() < want {
        rbuf.reserve(want);
    }
    rbuf.capacity() - rbuf.len()
}

/// Decodes and handles the whole packets in the read buffer, for up to
/// [`PROCESS_BUDGET`]. `Ok(true)`: it stopped with bytes left, to go on after
/// other tasks had their turn. `Err`: the connection closes (the client's
/// DISCONNECT, or a protocol violation).
fn process(
    client: &mut ClientState,
    rbuf: &mut BytesMut,
    last_heard: &mut Instant,
) -> Result<bool, Close> {
    let mut pubacks = PubAcks::default();
    let result = handle_packets(client, rbuf, last_heard, &mut pubacks);
    // Whatever ended the reading, the PUBACKs before it count.
    pubacks.flush(client);
    result
}

/// The loop of [`process`]; PUBACKs gather in `pubacks`.
fn handle_packets(
    client: &mut ClientState,
    rbuf: &mut BytesMut,
    last_heard: &mut Instant,
    pubacks: &mut PubAcks,
) -> Result<bool, Close> {
    let max = client.state.config.max_packet_size as usize;
    let started = Instant::now();
    let mut now = started;
    loop {
        if now - started >= PROCESS_BUDGET && !rbuf.is_empty() {
            return Ok(true);
        }
        let packet = match tern_codec::decode(rbuf, client.version, max) {
            Ok(Some(packet)) => packet,
            Ok(None) => return Ok(false),
            Err(e) => return Err(Close::Violation(e.into())),
        };
        *last_heard = now;
        Metrics::add(&client.state.metrics.packets_received, 1);
        if matches!(packet, Packet::Publish(_))
            && !(client.state.limits).publish_allowed(client.limits.as_deref_mut(), *last_heard)
        {
            return Err(Close::PublishRate);
        }
        tracing::trace!(client_id = %client.client_id(), packet = ?packet, "received");
        match handler::dispatch(client, packet, pubacks) {
            Ok(Flow::Continue) => {}
            Ok(Flow::Disconnect { publish_will }) => {
                return Err(Close::Disconnect { publish_will });
            }
            Err(v) => return Err(Close::Violation(v)),
        }
        now = Instant::now();
    }
}

/// Reports the close to the client, flushes, and detaches from the session.
async fn finish<S: Transport>(conn: &mut Conn<S>, close: Close) {
    let Conn {
        io, client, peer, ..
    } = conn;
    let (reason, text): (Option<ReasonCode>, &str) = match &close {
        Close::KeepAliveTimeout => (Some(ReasonCode::KeepAliveTimeout), "keep-alive timeout"),
        Close::Violation(v) => (Some(v.reason_code()), ""),
        Close::Kicked(kick) => (
            Some(
                kick.as_ref()
                    .map_or(ReasonCode::SessionTakenOver, |k| k.reason),
            ),
            "session taken over",
        ),
        Close::Shutdown => (Some(ReasonCode::ServerShuttingDown), "server shutting down"),
        Close::PublishRate => (
            Some(ReasonCode::MessageRateTooHigh),
            "publish rate limit exceeded",
        ),
        Close::Disconnect { .. } | Close::Lost(_) => (None, ""),
    };
    settle_holds(client).await;
    if let (Some(reason), ProtocolVersion::V5) = (reason, client.version) {
        let text = match &close {
            Close::Violation(v) => v.to_string(),
            _ => text.to_owned(),
        };
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
    // The broker ended it while the client may still be sending.
    let linger = !matches!(
        close,
        Close::Lost(_) | Close::Disconnect { .. } | Close::Shutdown
    );
    depart(client, close, *peer);
    if linger {
        drain(&mut io.reader, &client.state).await;
    }
}

/// After the broker's DISCONNECT (and its FIN), reads and discards what the
/// client still sends until it closes, for at most `disconnect_linger_ms`.
/// Why: a socket closed with unread input makes the kernel answer with a
/// reset, and a reset makes the client's kernel drop what it had received
/// but not yet read: a client busy sending would lose the DISCONNECT and its
/// reason code. Bounded, and cut short by shutdown, so it cannot be used to
/// hold sockets; the session was already let go (`depart`).
async fn drain<S: Transport>(reader: &mut ReadHalf<S>, state: &BrokerState) {
    let linger = Duration::from_millis(state.config.disconnect_linger_ms);
    if linger.is_zero() {
        return;
    }
    let mut sink = vec![0u8; 4096];
    let _ = tokio::time::timeout(linger, async {
        loop {
            tokio::select! {
                read = reader.read(&mut sink) => {
                    if !matches!(read, Ok(n) if n > 0) {
                        return;
                    }
                }
                _ = state.shutdown.cancelled() => return,
            }
        }
    })
    .await;
}

/// Before the last write: gives the store a moment (`CLOSE_FLUSH`) to make
/// held responses durable, then drops those it has not: an acknowledgement
/// must never promise more than the store holds.
async fn settle_holds(client: &mut ClientState) {
    let Some(store) = client.state.store.clone() else {
        return;
    };
    let mut durable = store.watch();
    let _ = tokio::time::timeout(CLOSE_FLUSH, async {
        loop {
            client.release(*durable.borrow_and_update());
            if client.holds.is_none() || durable.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
    if client.holds.is_some() {
        let writable = client.writable();
        client.out.truncate(writable);
        client.holds = None;
    }
}

/// Logs why the connection ended, and detaches it from its session (which
/// publishes or schedules the will).
fn depart(client: &mut ClientState, close: Close, peer: SocketAddr) {
    let id = client.client_id().clone();
    match &close {
        Close::Disconnect { .. } | Close::Shutdown => {}
        Close::Lost(e) => tracing::debug!(%peer, client_id = %id, error = ?e, "connection lost"),
        Close::KeepAliveTimeout => {
            tracing::info!(%peer, client_id = %id, "closing connection: keep-alive timeout")
        }
        // Limits (packet size, receive maximum) are counted, and logged at info.
        Close::Violation(v) if client.state.limits.count_violation(v) => {
            crate::throttled!(info, "limit exceeded", %peer, client_id = %id, error = %v, "closing connection: limit exceeded")
        }
        Close::Violation(v) => {
            crate::throttled!(warn, "protocol violation", %peer, client_id = %id, error = %v, "closing connection: protocol violation")
        }
        Close::PublishRate => {
            crate::throttled!(info, "publish rate limit exceeded", %peer, client_id = %id, "closing connection: publish rate limit exceeded")
        }
        Close::Kicked(kick) => {
            let reason = kick.as_ref().map(|k| k.reason);
            tracing::info!(%peer, client_id = %id, ?reason, "closing connection: session taken over")
        }
    }
    // The will is published unless the client ended normally without asking
    // for it [MQTT-3.1.2-8], [MQTT-3.14.4-3]; not at broker shutdown, where
    // no one is left to receive it.
    let publish_will = match close {
        Close::Disconnect { publish_will } => publish_will,
        Close::Shutdown => false,
        _ => true,
    };
    let will_delay_secs = client
        .will
        .as_ref()
        .and_then(|w| w.properties.will_delay_interval)
        .unwrap_or(0);
    let will = client
        .will
        .take()
        .filter(|_| publish_will)
        .map(|w| Message::from_will(*w, id.clone(), std::time::Instant::now()));
    let departure = Departure {
        connection_id: client.connection_id,
        will,
        will_delay_secs,
        username: client.username.clone(),
    };
    registry::detach(&client.state, &client.session, departure);
    // Before `clients_connected`: once that shows the connection gone, its
    // slot is free.
    client.state.limits.release_connection(client.listener);
    client
        .state
        .metrics
        .clients_connected
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    // Dropping the kick's `done` (inside `close`) tells a taking-over
    // connection that this one has detached.
    drop(close);
}
