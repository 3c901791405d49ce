//! Opening benchmark connections: the file-descriptor limit, source
//! addresses, TCP connect, CONNECT/CONNACK and SUBSCRIBE/SUBACK, and a clean
//! close. Everything after the handshake is in [`crate::bench::worker`].
//!
//! One source address has about 28,000 ephemeral ports, so towards a
//! loopback broker connection `n` is bound to `127.0.0.(1 + n % N)` first.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU16;
use std::time::Duration;

use bytes::BytesMut;
use tern_client::{TlsClient, TlsOptions};
use tern_codec::{
    Connect, ConnectProperties, Disconnect, Packet, ProtocolVersion, QoS, ReasonCode, Subscribe,
    SubscribeFilter, SubscriptionOptions,
};
use tokio::net::{TcpSocket, TcpStream};

use super::stream::Stream;

use crate::exit::Failure;

/// Time allowed for TCP connect and CONNACK, and for SUBACK.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections a source address is given before the next one is used.
const CONNECTIONS_PER_SOURCE: usize = 10_000;
/// Read buffer of a fresh connection; workers grow it as they need.
const INITIAL_READ: usize = 512;

/// Where to connect, and from which addresses.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// Source addresses to bind to, round robin; empty: let the OS choose.
    sources: Vec<Ipv4Addr>,
    /// With TLS: its settings, and the host the certificate must name.
    tls: Option<(TlsClient, String)>,
}

impl Target {
    /// Resolves `host`. Towards an IPv4 loopback address, `sources` (default:
    /// one per 10,000 connections) addresses 127.0.0.1, 127.0.0.2... are used.
    /// With `tls`, every connection runs a full TLS handshake.
    pub async fn resolve(
        host: &str,
        port: u16,
        tls: Option<&TlsOptions>,
        connections: usize,
        sources: Option<u8>,
    ) -> Result<Target, Failure> {
        let tls = match tls {
            Some(options) => {
                let client = TlsClient::new(options).map_err(|e| Failure::Usage(e.to_string()))?;
                Some((client, host.to_owned()))
            }
            None => None,
        };
        let addr = tokio::net::lookup_host((host, port))
            .await
            .ok()
            .and_then(|mut addrs| addrs.next())
            .ok_or_else(|| Failure::Unreachable(format!("cannot resolve host '{host}'")))?;
        let count = sources.map_or_else(
            || connections.div_ceil(CONNECTIONS_PER_SOURCE).clamp(1, 254),
            usize::from,
        );
        let sources = match addr.ip() {
            IpAddr::V4(ip) if ip.is_loopback() => (1..=count)
                .map(|k| Ipv4Addr::new(127, 0, 0, k as u8))
                .collect(),
            _ => Vec::new(),
        };
        Ok(Target { addr, sources, tls })
    }

    /// Number of source addresses in use (0: chosen by the OS).
    pub fn source_count(&self) -> usize {
        self.sources.len()
    }

    /// Opens TCP connection number `n`.
    async fn tcp(&self, n: usize) -> io::Result<TcpStream> {
        let stream = match self.sources.get(n % self.sources.len().max(1)) {
            Some(source) => {
                let socket = TcpSocket::new_v4()?;
                socket.bind(SocketAddr::new(IpAddr::V4(*source), 0))?;
                socket.connect(self.addr).await?
            }
            None => TcpStream::connect(self.addr).await?,
        };
        // Acks and rate-limited messages must not wait for Nagle's timer.
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    /// Opens connection number `n`, with the TLS handshake if asked for.
    async fn open(&self, n: usize) -> Result<Stream, Failure> {
        let tcp = self.tcp(n).await.map_err(|e| {
            Failure::Unreachable(format!(
                "cannot connect to {}: {e} (is a broker running there? check -h and -p)",
                self.addr
            ))
        })?;
        let Some((client, host)) = &self.tls else {
            return Ok(Stream::tcp(tcp));
        };
        let tls = client
            .handshake(tcp, host)
            .await
            .map_err(|e| Failure::Unreachable(e.to_string()))?;
        let (tcp, session) = tls.into_inner();
        Ok(Stream::tls(tcp, session))
    }
}

/// How every connection logs in.
#[derive(Debug, Clone)]
pub struct Login {
    pub version: ProtocolVersion,
    pub keep_alive: u16,
    /// 0: sessions end with the connection.
    pub session_expiry: u32,
    pub username: Option<String>,
    pub password: Option<String>,
}

/// An open MQTT connection, after CONNACK.
#[derive(Debug)]
pub struct Conn {
    pub stream: Stream,
    /// Bytes received and not yet decoded.
    pub rbuf: BytesMut,
    /// Bytes encoded and not yet written.
    pub out: BytesMut,
    pub version: ProtocolVersion,
    /// In force after CONNACK (MQTT 5 Server Keep Alive wins); `None`: off.
    pub keep_alive: Option<Duration>,
    /// The broker's Receive Maximum: QoS 1/2 publishes it takes unacknowledged.
    pub receive_maximum: u16,
}

/// Connects as `client_id` over connection number `n` and waits for CONNACK.
pub async fn connect(
    target: &Target,
    n: usize,
    client_id: &str,
    login: &Login,
) -> Result<Conn, Failure> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(target, n, client_id, login))
        .await
        .map_err(|_| {
            Failure::Timeout(format!(
                "no CONNACK from {} within {} s",
                target.addr,
                HANDSHAKE_TIMEOUT.as_secs()
            ))
        })?
}

async fn handshake(
    target: &Target,
    n: usize,
    client_id: &str,
    login: &Login,
) -> Result<Conn, Failure> {
    let stream = target.open(n).await?;
    let mut conn = Conn {
        stream,
        rbuf: BytesMut::with_capacity(INITIAL_READ),
        out: BytesMut::new(),
        version: login.version,
        keep_alive: None,
        receive_maximum: u16::MAX,
    };
    let v5 = login.version == ProtocolVersion::V5;
    let connect = Connect {
        protocol: login.version,
        bridge: false,
        // Before MQTT 5 only clean session 0 makes a session persistent.
        clean_start: v5 || login.session_expiry == 0,
        keep_alive: login.keep_alive,
        client_id: client_id.into(),
        will: None,
        username: login.username.as_deref().map(Into::into),
        password: login.password.clone().map(Into::into),
        properties: ConnectProperties {
            session_expiry_interval: (v5 && login.session_expiry > 0)
                .then_some(login.session_expiry),
            ..ConnectProperties::default()
        },
    };
    conn.send(&Packet::Connect(Box::new(connect)))?;
    conn.flush().await?;
    let connack = match conn.read_packet("CONNACK").await? {
        Packet::ConnAck(c) => c,
        other => {
            return Err(Failure::Other(format!(
                "expected CONNACK, received {}",
                other.name()
            )));
        }
    };
    if connack.reason.is_error() {
        return Err(Failure::Refused(format!(
            "broker refused the connection: {}",
            tern_client::describe(connack.reason)
        )));
    }
    let p = &connack.properties;
    let keep_alive = match (login.version, p.server_keep_alive) {
        (ProtocolVersion::V5, Some(secs)) => secs,
        _ => login.keep_alive,
    };
    conn.keep_alive = (keep_alive > 0).then(|| Duration::from_secs(u64::from(keep_alive)));
    conn.receive_maximum = p.receive_maximum.unwrap_or(u16::MAX);
    Ok(conn)
}

impl Conn {
    /// Encodes a packet into the output buffer.
    pub fn send(&mut self, packet: &Packet) -> Result<(), Failure> {
        packet
            .encode(self.version, &mut self.out)
            .map_err(|e| Failure::Other(format!("cannot encode {}: {e}", packet.name())))
    }

    /// Writes the whole output buffer.
    async fn flush(&mut self) -> Result<(), Failure> {
        self.stream
            .write_all(&self.out)
            .await
            .map_err(|e| Failure::Lost(format!("write failed: {e}")))?;
        self.out.clear();
        Ok(())
    }

    /// Reads until one whole packet is buffered; `waiting_for` names it in errors.
    async fn read_packet(&mut self, waiting_for: &str) -> Result<Packet, Failure> {
        loop {
            match tern_codec::decode(&mut self.rbuf, self.version, usize::MAX) {
                Ok(Some(packet)) => return Ok(packet),
                Ok(None) => {}
                Err(e) => {
                    let hint = if self.version == ProtocolVersion::V5 {
                        " (does the broker speak MQTT 5? try -V 311)"
                    } else {
                        ""
                    };
                    return Err(Failure::Other(format!(
                        "invalid {waiting_for} from the broker: {e}{hint}"
                    )));
                }
            }
            self.rbuf.reserve(INITIAL_READ);
            match self.stream.read_buf(&mut self.rbuf).await {
                Ok(0) => {
                    return Err(Failure::Lost(format!(
                        "the broker closed the connection before {waiting_for}"
                    )));
                }
                Ok(_) => {}
                Err(e) => {
                    return Err(Failure::Lost(format!("reading {waiting_for} failed: {e}")));
                }
            }
        }
    }

    /// Subscribes to one filter and waits for a granted SUBACK.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> Result<(), Failure> {
        let subscribe = Subscribe {
            packet_id: NonZeroU16::MIN,
            filters: vec![SubscribeFilter {
                filter: filter.into(),
                options: SubscriptionOptions {
                    qos,
                    ..SubscriptionOptions::default()
                },
            }],
            properties: Default::default(),
        };
        self.send(&Packet::Subscribe(subscribe))?;
        let exchange = async {
            self.flush().await?;
            match self.read_packet("SUBACK").await? {
                Packet::SubAck(ack) => Ok(ack),
                other => Err(Failure::Other(format!(
                    "expected SUBACK, received {}",
                    other.name()
                ))),
            }
        };
        let ack = tokio::time::timeout(HANDSHAKE_TIMEOUT, exchange)
            .await
            .map_err(|_| Failure::Timeout(format!("no SUBACK for '{filter}'")))??;
        match ack.reasons.first() {
            Some(reason) if !reason.is_error() => Ok(()),
            Some(reason) => Err(Failure::Rejected(format!(
                "the broker refused the subscription to '{filter}': {reason:?} ({:#04x})",
                *reason as u8
            ))),
            None => Err(Failure::Other("empty SUBACK".into())),
        }
    }

    /// Sends DISCONNECT, then waits (up to `limit`) for the broker to close
    /// first, so that TIME_WAIT lands on the broker's side and the source
    /// ports are free again for the next run.
    pub async fn close(mut self, limit: Duration) {
        let _ = self.send(&Packet::Disconnect(Disconnect::new(ReasonCode::Success)));
        let _ = tokio::time::timeout(limit, async {
            self.flush().await.ok()?;
            let mut scrap = BytesMut::with_capacity(256);
            while self.stream.read_buf(&mut scrap).await.ok()? > 0 {
                scrap.clear();
            }
            Some(())
        })
        .await;
    }
}

/// Raises the soft limit on open files to the hard limit; returns the limit
/// now in force (`None` where it cannot be read).
#[cfg(unix)]
#[allow(clippy::unnecessary_cast)] // rlim_t is not u64 everywhere
pub fn raise_open_files_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read or write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    Some(limit.rlim_cur as u64)
}

#[cfg(not(unix))]
pub fn raise_open_files_limit() -> Option<u64> {
    None
}

/// CPU time (user + system) this process has used so far.
#[cfg(unix)]
pub fn cpu_time() -> Option<Duration> {
    // SAFETY: getrusage writes only into the zeroed struct passed.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return None;
        }
        usage
    };
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    Some(time(usage.ru_utime) + time(usage.ru_stime))
}

#[cfg(not(unix))]
pub fn cpu_time() -> Option<Duration> {
    None
}
