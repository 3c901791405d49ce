//! One network connection: the CONNECT/CONNACK handshake over a fresh stream,
//! framing (encode into the output buffer, decode from the read buffer),
//! incoming topic aliases and the keep-alive clock.
//!
//! Everything here lives exactly as long as one socket; what must survive a
//! reconnect is in [`crate::session`]. The event loop drives the socket
//! halves and buffers directly (they are fields here) so that one `select!`
//! can wait on reading, writing and the timer at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tern_codec::{
    ByteStr, ConnAck, DecodeError, EncodeError, Packet, ProtocolVersion, Publish, QoS, ReasonCode,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::time::Instant;

use crate::error::{DisconnectReason, Error};
use crate::options::ConnectOptions;
use crate::packet_log;
use crate::transport::{self, Stream};

/// The `tracing` target of the packet log (`RUST_LOG=tern_client=debug`).
pub(crate) const LOG_TARGET: &str = "tern_client";
/// Read buffer growth step.
const READ_CHUNK: usize = 8 * 1024;

/// What the broker allows us, from its CONNACK.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BrokerLimits {
    pub(crate) maximum_packet_size: usize,
    pub(crate) maximum_qos: QoS,
    pub(crate) retain_available: bool,
    pub(crate) receive_maximum: u16,
}

impl BrokerLimits {
    pub(crate) fn from_connack(connack: &ConnAck) -> Self {
        let p = &connack.properties;
        BrokerLimits {
            maximum_packet_size: p
                .maximum_packet_size
                .map_or(usize::MAX, |m| usize::try_from(m).unwrap_or(usize::MAX)),
            maximum_qos: p.maximum_qos.unwrap_or(QoS::ExactlyOnce),
            retain_available: p.retain_available.unwrap_or(true),
            receive_maximum: p.receive_maximum.unwrap_or(u16::MAX),
        }
    }
}

/// A protocol violation by the broker: we send DISCONNECT with `reason`
/// (MQTT 5) and close.
#[derive(Debug)]
pub(crate) struct Violation {
    pub(crate) reason: ReasonCode,
    pub(crate) message: String,
}

impl Violation {
    pub(crate) fn new(reason: ReasonCode, message: impl Into<String>) -> Self {
        Violation {
            reason,
            message: message.into(),
        }
    }
}

impl From<DecodeError> for Violation {
    fn from(e: DecodeError) -> Self {
        Violation::new(e.reason_code(), format!("undecodable packet: {e}"))
    }
}

/// An open, accepted connection.
#[derive(Debug)]
pub(crate) struct Connection {
    pub(crate) reader: ReadHalf<Stream>,
    pub(crate) writer: WriteHalf<Stream>,
    pub(crate) rbuf: BytesMut,
    /// Encoded packets not yet written; one write takes as much as it can.
    pub(crate) out: BytesMut,
    pub(crate) version: ProtocolVersion,
    max_incoming: usize,
    /// Topic aliases the broker set up towards us, and how many we allow.
    aliases: HashMap<u16, ByteStr>,
    alias_maximum: u16,
    /// Keep-alive in force (`None`: disabled).
    keep_alive: Option<Duration>,
    /// When bytes were last written.
    pub(crate) last_sent: Instant,
    /// A PINGREQ is out: the broker must send something by then.
    ping_deadline: Option<Instant>,
    /// For the packet log.
    client_id: String,
}

/// Connects, sends CONNECT and waits for CONNACK (no timeout: the caller
/// puts one around it). A refusal is [`Error::Refused`].
pub(crate) async fn establish(
    options: Arc<ConnectOptions>,
    client_id: String,
    stream: Option<Stream>,
) -> Result<(Connection, ConnAck), Error> {
    let stream = match stream {
        Some(stream) => stream,
        None => transport::open(&options).await?,
    };
    let (reader, writer) = tokio::io::split(stream);
    let mut conn = Connection {
        reader,
        writer,
        rbuf: BytesMut::with_capacity(READ_CHUNK),
        out: BytesMut::new(),
        version: options.version,
        max_incoming: options.incoming_packet_limit(),
        aliases: HashMap::new(),
        alias_maximum: options.incoming_alias_maximum(),
        keep_alive: None,
        last_sent: Instant::now(),
        ping_deadline: None,
        client_id: client_id.clone(),
    };
    let connect = options.connect_packet(&client_id, options.clean_start);
    conn.send(&Packet::Connect(Box::new(connect)))
        .map_err(|e| Error::Invalid(format!("cannot encode CONNECT: {e}")))?;
    conn.writer
        .write_all(&conn.out)
        .await
        .map_err(|e| lost(format!("sending CONNECT failed: {e}")))?;
    conn.out.clear();
    conn.last_sent = Instant::now();
    let connack = conn.read_connack(|| options.address()).await?;
    if connack.reason.is_error() {
        return Err(Error::Refused(connack.reason));
    }
    let keep_alive = match (options.version, connack.properties.server_keep_alive) {
        (ProtocolVersion::V5, Some(secs)) => secs,
        _ => options.keep_alive_secs(),
    };
    conn.keep_alive = (keep_alive > 0).then(|| Duration::from_secs(u64::from(keep_alive)));
    Ok((conn, connack))
}

fn lost(message: String) -> Error {
    Error::Closed(DisconnectReason::ConnectionLost(message))
}

impl Connection {
    /// Reads until the first packet, which must be CONNACK.
    async fn read_connack(&mut self, addr: impl Fn() -> String) -> Result<ConnAck, Error> {
        loop {
            if let Some(code) = self.mqtt311_refusal() {
                return Err(Error::Refused(code));
            }
            if self.tls_record() {
                return Err(Error::TlsPort { addr: addr() });
            }
            match self.decode_next() {
                Ok(Some(Packet::ConnAck(connack))) => {
                    if let Some(id) = &connack.properties.assigned_client_identifier {
                        self.client_id = id.to_string();
                    }
                    return Ok(connack);
                }
                Ok(Some(other)) => {
                    return Err(Error::Protocol(format!(
                        "expected CONNACK, received {}",
                        other.name()
                    )));
                }
                Ok(None) => {}
                Err(e) => return Err(Error::Protocol(format!("invalid CONNACK: {e}"))),
            }
            self.rbuf.reserve(READ_CHUNK);
            match self.reader.read_buf(&mut self.rbuf).await {
                Ok(0) => {
                    return Err(lost(
                        "the broker closed the connection before CONNACK (if this port speaks TLS, connect with --cafile)".into(),
                    ));
                }
                Ok(_) => {}
                // TLS 1.3 finishes the handshake before the broker checks
                // our certificate: its refusal comes as an alert here.
                Err(e) if e.to_string().contains("alert") => {
                    return Err(Error::Tls {
                        addr: addr(),
                        source: e,
                    });
                }
                Err(e) => return Err(lost(format!("reading CONNACK failed: {e}"))),
            }
        }
    }

    /// The client id for the packet log; until the broker assigns one to a
    /// client that sent none, "(unnamed)".
    fn log_id(&self) -> &str {
        if self.client_id.is_empty() {
            "(unnamed)"
        } else {
            &self.client_id
        }
    }

    /// Whether the broker answered with a TLS record (an alert or a
    /// handshake: content type 21 or 22, version 3.x) instead of CONNACK: a
    /// plain connection to a TLS port.
    fn tls_record(&self) -> bool {
        matches!(self.rbuf.get(..2), Some([0x15 | 0x16, 0x03]))
    }

    /// A broker that does not speak MQTT 5 answers an MQTT 5 CONNECT with a
    /// 3.1.1 CONNACK (return code 1), which does not decode as MQTT 5.
    fn mqtt311_refusal(&self) -> Option<ReasonCode> {
        if self.version != ProtocolVersion::V5 {
            return None;
        }
        match self.rbuf.get(..4)? {
            [0x20, 0x02, _, code] => match code {
                1 => Some(ReasonCode::UnsupportedProtocolVersion),
                2 => Some(ReasonCode::ClientIdentifierNotValid),
                3 => Some(ReasonCode::ServerUnavailable),
                4 => Some(ReasonCode::BadUserNameOrPassword),
                5 => Some(ReasonCode::NotAuthorized),
                _ => None,
            },
            _ => None,
        }
    }

    /// Encodes `packet` into the output buffer (and logs it).
    pub(crate) fn send(&mut self, packet: &Packet) -> Result<(), EncodeError> {
        packet.encode(self.version, &mut self.out)?;
        tracing::debug!(target: LOG_TARGET, "Client {} sending {}", self.log_id(), packet_log::line(packet));
        Ok(())
    }

    /// Encodes a packet that cannot fail to encode (acks, pings); a failure
    /// is logged rather than ignored silently.
    pub(crate) fn send_control(&mut self, packet: &Packet) {
        if let Err(e) = self.send(packet) {
            tracing::warn!(target: LOG_TARGET, packet = packet.name(), error = %e, "cannot encode");
        }
    }

    /// The next whole packet from the read buffer, if any. Anything received
    /// answers an outstanding PINGREQ.
    pub(crate) fn decode_next(&mut self) -> Result<Option<Packet>, DecodeError> {
        let packet = tern_codec::decode(&mut self.rbuf, self.version, self.max_incoming)?;
        if let Some(packet) = &packet {
            self.ping_deadline = None;
            tracing::debug!(target: LOG_TARGET, "Client {} received {}", self.log_id(), packet_log::line(packet));
        }
        Ok(packet)
    }

    /// Makes sure the next read has room to land.
    pub(crate) fn reserve_read(&mut self) {
        if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 2 {
            self.rbuf.reserve(READ_CHUNK);
        }
    }

    /// Replaces an incoming topic alias by its topic, or records a new alias.
    pub(crate) fn resolve_alias(&mut self, publish: &mut Publish) -> Result<(), Violation> {
        if let Some(alias) = publish.properties.topic_alias.take() {
            if alias == 0 || alias > self.alias_maximum {
                return Err(Violation::new(
                    ReasonCode::TopicAliasInvalid,
                    format!("topic alias {alias} outside 1..={}", self.alias_maximum),
                ));
            }
            if publish.topic.is_empty() {
                match self.aliases.get(&alias) {
                    Some(topic) => publish.topic = topic.clone(),
                    None => {
                        return Err(Violation::new(
                            ReasonCode::ProtocolError,
                            format!("unknown topic alias {alias}"),
                        ));
                    }
                }
            } else {
                self.aliases.insert(alias, publish.topic.clone());
            }
        }
        if publish.topic.is_empty() {
            return Err(Violation::new(
                ReasonCode::ProtocolError,
                "PUBLISH without topic",
            ));
        }
        Ok(())
    }

    /// When the keep-alive clock next needs attention.
    pub(crate) fn keep_alive_timer(&self) -> Option<Instant> {
        let keep_alive = self.keep_alive?;
        Some(
            self.ping_deadline
                .unwrap_or_else(|| self.last_sent + keep_alive),
        )
    }

    /// While the socket is not read (the application is not reading events),
    /// a PINGRESP may be waiting unread: the deadline moves on instead of
    /// blaming the broker.
    pub(crate) fn hold_ping_deadline(&mut self, now: Instant) {
        if let (Some(deadline), Some(keep_alive)) = (&mut self.ping_deadline, self.keep_alive) {
            *deadline = (*deadline).max(now + keep_alive);
        }
    }

    /// The keep-alive timer fired: sends PINGREQ after `keep_alive` without
    /// sending, or reports a broker silent for `keep_alive` after PINGREQ.
    pub(crate) fn on_keep_alive(&mut self, now: Instant) -> Result<(), DisconnectReason> {
        let Some(keep_alive) = self.keep_alive else {
            return Ok(());
        };
        match self.ping_deadline {
            Some(deadline) if now >= deadline => Err(DisconnectReason::KeepAliveTimeout),
            Some(_) => Ok(()),
            None if now >= self.last_sent + keep_alive => {
                self.send_control(&Packet::PingReq);
                self.ping_deadline = Some(now + keep_alive);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Writes what is buffered and closes the write side, within `limit`.
    pub(crate) async fn close(&mut self, limit: Duration) {
        let _ = tokio::time::timeout(limit, async {
            self.writer.write_all(&self.out).await?;
            self.out.clear();
            self.writer.shutdown().await
        })
        .await;
    }
}
