//! Test support: a broker on a free loopback port and a raw MQTT test client.
//!
//! The client speaks packets through `tern-codec` over a real TCP socket, so
//! tests can send anything — including malformed bytes — and assert on exactly
//! what the broker answers. Every wait has a deadline: a missing packet fails
//! the test instead of hanging it.

#![allow(dead_code)] // each test binary uses a different part of this module

pub mod nats;

use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tern_broker::{Broker, BrokerHandle, Config};
use tern_codec::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a test waits for a packet it expects.
pub const WAIT: Duration = Duration::from_secs(5);
/// How long a test waits to be sure a packet does NOT come.
pub const QUIET: Duration = Duration::from_millis(300);

/// The test configuration: defaults on 127.0.0.1:0, `$SYS` off, and
/// connections parked after 1 ms without traffic, so that every test also
/// runs through parking and resuming at each pause.
pub fn test_config() -> Config {
    Config {
        bind: "127.0.0.1:0".parse().unwrap(),
        sys_interval_secs: 0,
        park_idle_ms: 1,
        persistence: false,
        ..Config::default()
    }
}

/// Starts a broker with the test configuration.
pub async fn start() -> BrokerHandle {
    start_with(test_config()).await
}

/// Starts a broker with `config`.
pub async fn start_with(config: Config) -> BrokerHandle {
    Broker::start(config).await.expect("broker starts")
}

pub fn pid(n: u16) -> NonZeroU16 {
    NonZeroU16::new(n).unwrap()
}

/// A CONNECT with clean start, keep-alive 60 and nothing else.
pub fn connect_packet(version: ProtocolVersion, client_id: &str) -> Connect {
    Connect {
        protocol: version,
        bridge: false,
        clean_start: true,
        keep_alive: 60,
        client_id: client_id.into(),
        will: None,
        username: None,
        password: None,
        properties: ConnectProperties::default(),
    }
}

/// A CONNECT for a session that outlives the connection: Clean Start 0, and
/// for MQTT 5 a Session Expiry Interval of an hour.
pub fn persistent(version: ProtocolVersion, client_id: &str) -> Connect {
    let mut c = connect_packet(version, client_id);
    c.clean_start = false;
    if version == ProtocolVersion::V5 {
        c.properties.session_expiry_interval = Some(3600);
    }
    c
}

/// A PUBLISH; `packet_id` is used only for QoS > 0.
pub fn publish_packet(topic: &str, payload: &'static [u8], qos: QoS, packet_id: u16) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id: (qos != QoS::AtMostOnce).then(|| pid(packet_id)),
        payload: Bytes::from_static(payload),
        properties: PublishProperties::default(),
    }
}

/// Any byte stream a test client can speak MQTT over (TCP, TLS, ...).
pub trait ByteStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<S: AsyncRead + AsyncWrite + Unpin + Send> ByteStream for S {}

/// A raw MQTT client for tests.
pub struct TestClient {
    stream: Box<dyn ByteStream>,
    buf: BytesMut,
    pub version: ProtocolVersion,
}

impl TestClient {
    /// Opens a TCP connection without sending anything.
    pub async fn raw(addr: SocketAddr, version: ProtocolVersion) -> TestClient {
        let stream = TcpStream::connect(addr).await.expect("tcp connect");
        stream.set_nodelay(true).unwrap();
        Self::over(stream, version)
    }

    /// A client on an already open stream, nothing sent yet.
    pub fn over(stream: impl ByteStream + 'static, version: ProtocolVersion) -> TestClient {
        TestClient {
            stream: Box::new(stream),
            buf: BytesMut::new(),
            version,
        }
    }

    /// Opens a TCP connection from the local address `from` (any
    /// 127.x.y.z works on Linux loopback) without sending anything.
    pub async fn raw_from(
        addr: SocketAddr,
        from: std::net::IpAddr,
        version: ProtocolVersion,
    ) -> TestClient {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind(SocketAddr::new(from, 0)).expect("bind");
        let stream = socket.connect(addr).await.expect("tcp connect");
        stream.set_nodelay(true).unwrap();
        Self::over(stream, version)
    }

    /// Connects with clean start and returns the client and its CONNACK.
    pub async fn connect(
        addr: SocketAddr,
        version: ProtocolVersion,
        client_id: &str,
    ) -> TestClient {
        let (client, connack) = Self::connect_with(addr, connect_packet(version, client_id)).await;
        assert_eq!(connack.reason, ReasonCode::Success, "CONNACK {connack:?}");
        client
    }

    /// Sends `connect` and returns the CONNACK.
    pub async fn connect_with(addr: SocketAddr, connect: Connect) -> (TestClient, ConnAck) {
        let client = Self::raw(addr, connect.protocol).await;
        client.handshake(connect).await
    }

    /// Sends `connect` on this client's stream and returns the CONNACK.
    pub async fn handshake(mut self, connect: Connect) -> (TestClient, ConnAck) {
        self.send(Packet::Connect(Box::new(connect))).await;
        match self.recv().await {
            Packet::ConnAck(connack) => (self, connack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    pub async fn send(&mut self, packet: Packet) {
        let mut out = BytesMut::new();
        packet.encode(self.version, &mut out).expect("encode");
        self.send_bytes(&out).await;
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// The next packet, or `None` if the broker closed the connection.
    pub async fn next(
        &mut self,
        wait: Duration,
    ) -> Result<Option<Packet>, tokio::time::error::Elapsed> {
        tokio::time::timeout(wait, async {
            loop {
                if let Some(p) = decode(&mut self.buf, self.version, usize::MAX)
                    .expect("broker sent a valid packet")
                {
                    return Some(p);
                }
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
    }

    /// The next packet; panics on timeout or close.
    pub async fn recv(&mut self) -> Packet {
        match self.next(WAIT).await {
            Ok(Some(p)) => p,
            Ok(None) => panic!("connection closed while waiting for a packet"),
            Err(_) => panic!("no packet within {WAIT:?}"),
        }
    }

    /// The next PUBLISH (skipping nothing else: any other packet panics).
    pub async fn recv_publish(&mut self) -> Publish {
        match self.recv().await {
            Packet::Publish(p) => p,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    /// Asserts nothing arrives within [`QUIET`].
    pub async fn expect_nothing(&mut self) {
        if let Ok(p) = self.next(QUIET).await {
            panic!("expected nothing, got {p:?}");
        }
    }

    /// Waits for the broker to close the connection; returns the DISCONNECT
    /// it sent first, if any.
    pub async fn expect_closed(&mut self) -> Option<Disconnect> {
        let mut disconnect = None;
        loop {
            match self.next(WAIT).await {
                Ok(None) => return disconnect,
                Ok(Some(Packet::Disconnect(d))) => disconnect = Some(d),
                Ok(Some(_)) => {}
                Err(_) => panic!("connection still open after {WAIT:?}"),
            }
        }
    }

    /// Subscribes to one filter and returns the SUBACK reason.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> ReasonCode {
        let options = SubscriptionOptions {
            qos,
            ..Default::default()
        };
        self.subscribe_with(filter, options, None).await
    }

    /// Subscribes with full options; returns the SUBACK reason.
    pub async fn subscribe_with(
        &mut self,
        filter: &str,
        options: SubscriptionOptions,
        subscription_identifier: Option<u32>,
    ) -> ReasonCode {
        self.send(Packet::Subscribe(Subscribe {
            packet_id: pid(1000),
            filters: vec![SubscribeFilter {
                filter: filter.into(),
                options,
            }],
            properties: SubscribeProperties {
                subscription_identifier,
                ..Default::default()
            },
        }))
        .await;
        match self.recv().await {
            Packet::SubAck(ack) => {
                assert_eq!(ack.packet_id, pid(1000));
                ack.reasons[0]
            }
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// Publishes and completes the QoS flow as a well-behaved publisher.
    pub async fn publish(&mut self, topic: &str, payload: &'static [u8], qos: QoS, retain: bool) {
        let mut p = publish_packet(topic, payload, qos, 1);
        p.retain = retain;
        self.publish_packet(p).await;
    }

    /// Sends a PUBLISH and completes its QoS flow.
    pub async fn publish_packet(&mut self, p: Publish) {
        let qos = p.qos;
        let id = p.packet_id;
        self.send(Packet::Publish(p)).await;
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => match self.recv().await {
                Packet::PubAck(a) => assert_eq!(Some(a.packet_id), id),
                other => panic!("expected PUBACK, got {other:?}"),
            },
            QoS::ExactlyOnce => {
                match self.recv().await {
                    Packet::PubRec(a) => assert_eq!(Some(a.packet_id), id),
                    other => panic!("expected PUBREC, got {other:?}"),
                }
                self.send(Packet::PubRel(PubAck::new(id.unwrap()))).await;
                match self.recv().await {
                    Packet::PubComp(a) => assert_eq!(Some(a.packet_id), id),
                    other => panic!("expected PUBCOMP, got {other:?}"),
                }
            }
        }
    }

    /// Sends a QoS 1 PUBLISH (payload `x`) with packet id `id` and returns
    /// the PUBACK, whatever its reason.
    pub async fn puback(&mut self, topic: &str, id: u16) -> PubAck {
        self.send(Packet::Publish(publish_packet(
            topic,
            b"x",
            QoS::AtLeastOnce,
            id,
        )))
        .await;
        match self.recv().await {
            Packet::PubAck(ack) => {
                assert_eq!(ack.packet_id, pid(id));
                ack
            }
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }

    /// Sends a retained QoS 1 PUBLISH and returns the PUBACK's reason.
    pub async fn retain(&mut self, topic: &str, payload: &'static [u8]) -> ReasonCode {
        let mut p = publish_packet(topic, payload, QoS::AtLeastOnce, 1);
        p.retain = true;
        self.send(Packet::Publish(p)).await;
        match self.recv().await {
            Packet::PubAck(ack) => ack.reason,
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }

    /// Acknowledges a received PUBLISH as a well-behaved subscriber.
    pub async fn ack(&mut self, p: &Publish) {
        match (p.qos, p.packet_id) {
            (QoS::AtLeastOnce, Some(id)) => self.send(Packet::PubAck(PubAck::new(id))).await,
            (QoS::ExactlyOnce, Some(id)) => {
                self.send(Packet::PubRec(PubAck::new(id))).await;
                match self.recv().await {
                    Packet::PubRel(r) => assert_eq!(r.packet_id, id),
                    other => panic!("expected PUBREL, got {other:?}"),
                }
                self.send(Packet::PubComp(PubAck::new(id))).await;
            }
            _ => {}
        }
    }

    /// Sends DISCONNECT (normal) and waits for the close.
    pub async fn disconnect(mut self) {
        self.send(Packet::Disconnect(Disconnect::new(ReasonCode::Success)))
            .await;
        let _ = self.next(WAIT).await;
    }

    /// Drops the TCP connection without DISCONNECT.
    pub fn drop_connection(self) {
        drop(self.stream);
    }
}

/// Waits (polling, up to `WAIT`) until `cond` holds: for state the broker
/// changes in its own tasks, with no packet to wait for.
pub async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {WAIT:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

// ---- Reading until the close ---------------------------------------------------

/// Every packet the broker sends until it closes the connection.
pub async fn read_until_closed(client: &mut TestClient) -> Vec<Packet> {
    let mut packets = Vec::new();
    loop {
        match client.next(WAIT).await {
            Ok(None) => return packets,
            Ok(Some(p)) => packets.push(p),
            Err(_) => panic!("connection still open after {WAIT:?}; received {packets:?}"),
        }
    }
}

/// Reads until the close; the last packet must be DISCONNECT `reason`.
/// Returns the packets before it.
pub async fn expect_disconnect(client: &mut TestClient, reason: ReasonCode) -> Vec<Packet> {
    let mut packets = read_until_closed(client).await;
    match packets.pop() {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason, reason, "DISCONNECT {d:?}"),
        other => panic!("expected DISCONNECT {reason:?} before the close, got {other:?}"),
    }
    packets
}

// ---- Writing packets by hand ----------------------------------------------------

/// A Variable Byte Integer (spec 1.5.5).
pub fn varint(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            return;
        }
    }
}

/// A packet: the first header byte, the remaining length, the body.
pub fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    varint(body.len(), &mut out);
    out.extend_from_slice(body);
    out
}

/// A length-prefixed string or binary field.
pub fn field(bytes: &[u8]) -> Vec<u8> {
    let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

/// A CONNECT written byte by byte: any protocol name, level and connect
/// flags, keep-alive 60, no properties (a zero property length from level 5
/// on).
pub fn raw_connect(name: &[u8], level: u8, flags: u8, client_id: &str) -> Vec<u8> {
    let mut body = field(name);
    body.extend_from_slice(&[level, flags, 0x00, 60]);
    if level >= 5 {
        body.push(0x00);
    }
    body.extend(field(client_id.as_bytes()));
    packet(0x10, &body)
}

/// Waits until exactly `n` connections are parked.
pub async fn wait_parked(broker: &BrokerHandle, n: usize) {
    eventually(&format!("{n} connections are parked"), || {
        broker.parked_connections() == n
    })
    .await;
}
