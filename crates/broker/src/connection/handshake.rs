//! From the accepted socket to CONNACK: reads CONNECT with its bytes counted
//! against the limits for connections not yet accepted, decides whether it is
//! admitted (limits, authentication, the client id's owner, a connection
//! slot), attaches the session and queues CONNACK; a CONNECT that is refused
//! or cannot be decoded is answered and the connection closed. Apart from the
//! main loop because it runs (boxed) before it, once per connection.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tern_codec::{Connect, Packet, ProtocolVersion, ReasonCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::park::Parker;
use super::{CLOSE_FLUSH, Conn, ConnInfo, IDLE_READ, Io, Transport};
use crate::auth;
use crate::client_state::{ClientState, Extras, PeerLimits};
use crate::handler::connect;
use crate::limits::ConnectBytes;
use crate::metrics::Metrics;
use crate::registry::{self, LoggedIn};
use crate::state::BrokerState;
use crate::webhook;

/// Reads CONNECT, attaches the session and queues CONNACK. `None`: the
/// connection was refused or closed.
pub(super) async fn handshake<S: Transport>(
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
        _ = state.draining.cancelled() => return None,
    };
    let client = start_session(&mut io, connect, &info, &state).await?;
    // Logged in: what it holds from now on is bounded by max_packet_size.
    if let Some(bytes) = &info.connect_bytes {
        bytes.release();
    }
    drop(own_bytes);
    Metrics::add(&state.metrics.clients_connected, 1);
    if !info.internal {
        state
            .webhooks
            .emit(webhook::Kind::Connected, || webhook::Event::Connected {
                client_id: client.client_id().clone(),
                username: client.username.clone(),
                peer,
                protocol: client.version,
                listener: state
                    .config
                    .listeners
                    .get(info.listener)
                    .map(|l| format!("{} {}", l.transport.name(), l.bind))
                    .unwrap_or_default(),
            });
    }
    Some(Conn {
        io,
        client,
        parker,
        peer,
        last_heard: Instant::now(),
        resumed: false,
    })
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
    let (accepted, mut login) = match admit(&connect, info, state).await {
        Ok(admitted) => admitted,
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
    let username = login.username.clone();
    let acl = login.acl.take();
    let attached = registry::attach(
        state,
        &accepted.client_id,
        connect.clean_start,
        accepted.session_expiry_secs,
        connection_id,
        login,
    )
    .await;
    // A cluster keeps the will beyond this node (or forgets one kept for
    // this client id before).
    state.ownership.will(
        &accepted.client_id,
        connect.will.as_ref(),
        username.as_deref(),
    );
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
        bridge_peer: connect.bridge,
        listener: u32::try_from(info.listener).unwrap_or(u32::MAX),
        extras: Extras::boxed(state.limits.client_limits(peer), acl),
        username,
    };
    let connack = connect::connack(&accepted, version, attached.session_present, state);
    // Session Present promises the session is kept: not before it is stored.
    client.hold_until(attached.ticket);
    client.send(&Packet::ConnAck(connack));
    tracing::debug!(%peer, client_id = %client.client_id(), ?version, session_present = attached.session_present, "client connected");
    Some(client)
}

/// Decides whether the CONNECT is accepted: protocol rules,
/// configuration and authentication. `Err`: the CONNACK reason code
/// refusing it.
async fn admit(
    connect: &Connect,
    info: &ConnInfo,
    state: &Arc<BrokerState>,
) -> Result<(connect::Accepted, LoggedIn), ReasonCode> {
    if info.internal {
        return admit_bridge(connect, state);
    }
    state.limits.check_connect(connect, info.peer)?;
    // A cluster node cut off from the others takes no new clients, so a
    // load balancer's check sends them to one that is not.
    if !state.fabric.available() {
        crate::throttled!(info, "cluster unavailable", peer = %info.peer, "refusing a client: this node cannot reach NATS (CONNACK 0x88 Server unavailable)");
        return Err(ReasonCode::ServerUnavailable);
    }
    let accepted = connect::accept(connect, state)?;
    if accepted.client_id.starts_with(auth::BRIDGE_CLIENT_PREFIX) {
        crate::throttled!(info, "bridge client id", peer = %info.peer, client_id = %accepted.client_id, "refusing a client: client ids beginning with {} are this broker's bridges'", auth::BRIDGE_CLIENT_PREFIX);
        return Err(ReasonCode::ClientIdentifierNotValid);
    }
    let listener = state.config.listeners.get(info.listener);
    let by_certificate = listener.is_some_and(|l| l.use_identity_as_username);
    let listener_name = listener
        .map(|l| format!("{} {}", l.transport.name(), l.bind))
        .unwrap_or_default();
    let login = auth::Login {
        connect,
        client_id: &accepted.client_id,
        ip: info.peer.ip(),
        use_identity_as_username: by_certificate,
        cert_identity: info.cert_identity.as_deref(),
        allow_anonymous: state.config.allows_anonymous(info.listener),
        listener: &listener_name,
    };
    let rules = state.auth.current();
    let who = state
        .auth
        .authenticate(&rules, &login, &state.shutdown)
        .await?;
    let username = who.username;
    if !registry::may_claim(state, &accepted.client_id, username.as_deref()) {
        return Err(ReasonCode::ClientIdentifierNotValid);
    }
    // Last: the slot is given back only when the connection ends, so
    // nothing may refuse the CONNECT after it is taken.
    state.limits.reserve_connection(info.listener)?;
    let login = LoggedIn {
        username,
        by_certificate: by_certificate || who.external,
        rules,
        acl: who.acl,
    };
    Ok((accepted, login))
}

/// Admits a bridge's in-process connection: no login and no per-address
/// limits (it comes from this process), only the protocol's rules, the
/// reserved client id and a connection slot.
fn admit_bridge(
    connect: &Connect,
    state: &Arc<BrokerState>,
) -> Result<(connect::Accepted, LoggedIn), ReasonCode> {
    let accepted = connect::accept(connect, state)?;
    if !accepted.client_id.starts_with(auth::BRIDGE_CLIENT_PREFIX) {
        return Err(ReasonCode::ClientIdentifierNotValid);
    }
    state.limits.reserve_connection(usize::MAX)?;
    let login = LoggedIn {
        username: None,
        by_certificate: false,
        rules: state.auth.current(),
        acl: None,
    };
    Ok((accepted, login))
}
