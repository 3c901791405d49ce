//! Listeners over real sockets: TLS (with and without client certificates),
//! WebSocket and WebSocket over TLS, several listeners at once, and
//! certificate reload. Certificates are made here with rcgen.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::BytesMut;
use common::*;
use futures_util::{SinkExt, StreamExt};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tern_broker::config::{ListenerConfig, ListenerTransport};
use tern_broker::testing::ConnInfo;
use tern_broker::testing::TlsAcceptor;
use tern_broker::testing::common_name;
use tern_broker::{Broker, Config, TlsProblem};
use tern_codec::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

// ---------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------

/// A test CA that signs server and client certificates.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, PEM, plus the DER forms a rustls client uses.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        Ca {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    /// A certificate for `localhost` and 127.0.0.1 with Common Name `cn`.
    fn leaf(&self, cn: &str) -> Leaf {
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            key_der: key.serialize_der(),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }
}

/// Files of a TLS listener in a temporary directory.
struct TlsFiles {
    dir: PathBuf,
    ca: Ca,
}

impl TlsFiles {
    fn new(name: &str) -> TlsFiles {
        let dir =
            std::env::temp_dir().join(format!("tern-transports-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ca = Ca::new("Tern test CA");
        let server = ca.leaf("localhost");
        std::fs::write(dir.join("server.crt"), &server.cert_pem).unwrap();
        std::fs::write(dir.join("server.key"), &server.key_pem).unwrap();
        std::fs::write(dir.join("ca.crt"), ca.pem()).unwrap();
        TlsFiles { dir, ca }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A listener on a free port with the server certificate.
    fn listener(&self, transport: ListenerTransport) -> ListenerConfig {
        ListenerConfig {
            transport,
            cert_file: Some(self.path("server.crt")),
            key_file: Some(self.path("server.key")),
            ..ListenerConfig::tcp(any_port())
        }
    }

    /// The same with client certificates checked against the CA.
    fn mtls_listener(&self, require: bool) -> ListenerConfig {
        ListenerConfig {
            ca_file: Some(self.path("ca.crt")),
            require_certificate: require,
            use_identity_as_username: true,
            ..self.listener(ListenerTransport::Tls)
        }
    }
}

impl Drop for TlsFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn config_with(listeners: Vec<ListenerConfig>) -> Config {
    Config {
        listeners,
        ..test_config()
    }
}

/// A TLS client trusting `ca`, presenting `client` if given, limited to
/// `versions` if given.
fn client_config(
    ca: CertificateDer<'static>,
    client: Option<&Leaf>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    Arc::new(match client {
        Some(leaf) => builder
            .with_client_auth_cert(
                vec![leaf.der.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf.key_der.clone())),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    })
}

const ALL_VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

async fn tls_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    tls_over(TcpStream::connect(addr).await?, config).await
}

async fn tls_over(
    tcp: TcpStream,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// An MQTT 5 client over TLS; `Err` if the TLS handshake fails.
async fn tls_client(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    id: &str,
) -> std::io::Result<(TestClient, ConnAck)> {
    let tls = tls_connect(addr, config).await?;
    let client = TestClient::over(tls, ProtocolVersion::V5);
    Ok(client
        .handshake(connect_packet(ProtocolVersion::V5, id))
        .await)
}

/// Subscribes `sub` to `topic`, publishes on `publ`, and checks delivery.
async fn round_trip(sub: &mut TestClient, publ: &mut TestClient, topic: &str) {
    assert_eq!(
        sub.subscribe(topic, QoS::AtLeastOnce).await,
        ReasonCode::GrantedQoS1
    );
    publ.publish(topic, b"over the wire", QoS::AtLeastOnce, false)
        .await;
    let p = sub.recv_publish().await;
    assert_eq!(p.topic, topic);
    assert_eq!(&p.payload[..], b"over the wire");
}

// ---------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------

#[tokio::test]
async fn tls_publish_subscribe_round_trip_on_tls_1_2_and_1_3() {
    let files = TlsFiles::new("tls");
    let broker = Broker::start(config_with(vec![files.listener(ListenerTransport::Tls)]))
        .await
        .unwrap();
    let addr = broker.local_addr();
    let tls13 = client_config(files.ca.der(), None, &[&rustls::version::TLS13]);
    let tls12 = client_config(files.ca.der(), None, &[&rustls::version::TLS12]);
    // The subscriber's receive buffer is small, so the burst below fills the
    // broker's socket.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tls = tls_over(socket.connect(addr).await.unwrap(), tls13)
        .await
        .unwrap();
    let (mut sub, connack) = TestClient::over(tls, ProtocolVersion::V5)
        .handshake(connect_packet(ProtocolVersion::V5, "tls-sub"))
        .await;
    assert_eq!(connack.reason, ReasonCode::Success);
    let (mut publ, connack) = tls_client(addr, tls12, "tls-pub").await.unwrap();
    assert_eq!(connack.reason, ReasonCode::Success);
    round_trip(&mut sub, &mut publ, "tls/t").await;
    // A burst larger than the socket buffers, sent while the subscriber is
    // not reading, arrives whole once it reads (TlsConn's writes wait for
    // rustls to hand everything to the socket).
    static BIG: [u8; 256 * 1024] = [7; 256 * 1024];
    const BURST: u16 = 48;
    for i in 0..BURST {
        publ.send(Packet::Publish(publish_packet(
            "tls/t",
            &BIG,
            QoS::AtMostOnce,
            i,
        )))
        .await;
    }
    publ.send(Packet::PingReq).await;
    assert_eq!(publ.recv().await, Packet::PingResp);
    for _ in 0..BURST {
        assert_eq!(sub.recv_publish().await.payload.len(), BIG.len());
    }
    broker.shutdown().await;
}

/// A broker whose connections park after 20 ms, with a TLS listener.
async fn parking_tls_broker(name: &str) -> (TlsFiles, tern_broker::BrokerHandle) {
    let files = TlsFiles::new(name);
    let config = Config {
        park_idle_ms: 20,
        ..config_with(vec![files.listener(ListenerTransport::Tls)])
    };
    let broker = Broker::start(config).await.unwrap();
    (files, broker)
}

#[tokio::test]
async fn idle_tls_connections_park_and_wake_for_bytes_deliveries_and_pings() {
    let (files, broker) = parking_tls_broker("tls-park").await;
    let addr = broker.local_addr();
    let tls13 = client_config(files.ca.der(), None, &[&rustls::version::TLS13]);
    let tls12 = client_config(files.ca.der(), None, &[&rustls::version::TLS12]);
    let (mut sub, _) = tls_client(addr, tls13, "tls-park-sub").await.unwrap();
    sub.subscribe("park/#", QoS::AtLeastOnce).await;
    let (mut publ, _) = tls_client(addr, tls12, "tls-park-pub").await.unwrap();
    static PAYLOADS: [[u8; 3000]; 3] = [[0; 3000], [1; 3000], [2; 3000]];
    for payload in &PAYLOADS {
        // Both parked: the publisher wakes for its PUBLISH, the subscriber
        // for the delivery, each with its TLS session where it was.
        wait_parked(&broker, 2).await;
        publ.publish("park/t", payload, QoS::AtLeastOnce, false)
            .await;
        let p = sub.recv_publish().await;
        assert_eq!(&p.payload[..], &payload[..]);
        wait_parked(&broker, 2).await;
        sub.ack(&p).await;
        // A ping on a parked TLS connection is a record: the connection
        // wakes to answer it.
        wait_parked(&broker, 2).await;
        sub.send(Packet::PingReq).await;
        assert_eq!(sub.recv().await, Packet::PingResp);
    }
    broker.shutdown().await;
    expect_disconnect(&mut sub, ReasonCode::ServerShuttingDown).await;
}

/// Bytes that are not TLS on a TLS port: the broker answers with a TLS
/// alert (how a plain MQTT client learns the port speaks TLS), closes that
/// connection, and goes on serving the others.
#[tokio::test]
async fn hostile_bytes_on_a_tls_port_get_an_alert_and_close() {
    let files = TlsFiles::new("tls-hostile");
    let broker = Broker::start(config_with(vec![files.listener(ListenerTransport::Tls)]))
        .await
        .unwrap();
    let addr = broker.local_addr();
    let connect = encode(Packet::Connect(Box::new(connect_packet(
        ProtocolVersion::V5,
        "plain",
    ))));
    let inputs: [&[u8]; 4] = [
        &connect,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        // A handshake record header announcing more than it brings, then EOF.
        &[0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00],
        // A record of an unknown content type after a valid-looking start.
        &[0x17, 0x03, 0x03, 0x00, 0x05, 1, 2, 3, 4, 5],
    ];
    for (i, input) in inputs.iter().enumerate() {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(input).await.unwrap();
        if i == 2 {
            tcp.shutdown().await.unwrap();
        }
        let mut answer = Vec::new();
        tokio::time::timeout(WAIT, tcp.read_to_end(&mut answer))
            .await
            .expect("the broker closes the connection")
            .ok();
        if i != 2 {
            assert_eq!(
                answer.get(..2),
                Some(&[0x15, 0x03][..]),
                "input {i}: {answer:?}"
            );
        }
    }
    let config = client_config(files.ca.der(), None, ALL_VERSIONS);
    let (mut sub, _) = tls_client(addr, config.clone(), "after-sub").await.unwrap();
    let (mut publ, _) = tls_client(addr, config, "after-pub").await.unwrap();
    round_trip(&mut sub, &mut publ, "hostile/after").await;
    broker.shutdown().await;
}

/// A TLS 1.3 client that updates its keys (and asks the broker to update its
/// own) keeps talking: rustls's records that are not data are answered.
#[tokio::test]
async fn tls_key_updates_are_followed_both_ways() {
    let files = TlsFiles::new("tls-key-update");
    let broker = Broker::start(config_with(vec![files.listener(ListenerTransport::Tls)]))
        .await
        .unwrap();
    let addr = broker.local_addr();
    let config = client_config(files.ca.der(), None, &[&rustls::version::TLS13]);
    let mut tls = tls_connect(addr, config.clone()).await.unwrap();
    tls.get_mut().1.refresh_traffic_keys().unwrap();
    let (mut sub, connack) = TestClient::over(tls, ProtocolVersion::V5)
        .handshake(connect_packet(ProtocolVersion::V5, "tls-ku-sub"))
        .await;
    assert_eq!(connack.reason, ReasonCode::Success);
    let (mut publ, _) = tls_client(addr, config, "tls-ku-pub").await.unwrap();
    round_trip(&mut sub, &mut publ, "ku/t").await;
    broker.shutdown().await;
}

#[tokio::test]
async fn keep_alive_expires_on_a_parked_tls_connection() {
    let (files, broker) = parking_tls_broker("tls-park-ka").await;
    let tls = tls_connect(
        broker.local_addr(),
        client_config(files.ca.der(), None, ALL_VERSIONS),
    )
    .await
    .unwrap();
    let mut connect = connect_packet(ProtocolVersion::V5, "tls-park-ka");
    connect.keep_alive = 1;
    let (mut dev, _) = TestClient::over(tls, ProtocolVersion::V5)
        .handshake(connect)
        .await;
    wait_parked(&broker, 1).await;
    expect_disconnect(&mut dev, ReasonCode::KeepAliveTimeout).await;
    broker.shutdown().await;
}

/// Whether the broker refuses a TLS client: the handshake fails, or the
/// stream closes without a CONNACK.
async fn refused(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> bool {
    refusal(addr, config).await.is_some()
}

/// Why the broker refused a TLS client (the handshake's error, or the read's
/// after CONNECT: TLS 1.3 finishes the client's side of the handshake before
/// the broker judges its certificate); `None` if it did not.
async fn refusal(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> Option<String> {
    let mut tls = match tls_connect(addr, config).await {
        Ok(tls) => tls,
        Err(e) => return Some(e.to_string()),
    };
    let mut connect = BytesMut::new();
    Packet::Connect(Box::new(connect_packet(ProtocolVersion::V5, "refused")))
        .encode(ProtocolVersion::V5, &mut connect)
        .unwrap();
    let _ = tls.write_all(&connect).await;
    let mut buf = [0u8; 64];
    match tokio::time::timeout(WAIT, tls.read(&mut buf)).await {
        Ok(Ok(0)) => Some("closed".into()),
        Ok(Err(e)) => Some(e.to_string()),
        _ => None,
    }
}

#[tokio::test]
async fn mtls_required_accepts_a_client_certificate_and_refuses_none() {
    let files = TlsFiles::new("mtls");
    let broker = Broker::start(config_with(vec![files.mtls_listener(true)]))
        .await
        .unwrap();
    let addr = broker.local_addr();
    let device = files.ca.leaf("device-42");
    let with_cert = client_config(files.ca.der(), Some(&device), ALL_VERSIONS);
    let (client, connack) = tls_client(addr, with_cert, "with-cert").await.unwrap();
    assert_eq!(connack.reason, ReasonCode::Success);
    // Without a certificate, and with one from another CA: refused (TLS 1.3
    // and 1.2), while the accepted client stays connected.
    for versions in [
        &[&rustls::version::TLS13][..],
        &[&rustls::version::TLS12][..],
    ] {
        // Told why, with an alert (not a reset that would lose it).
        let why = refusal(addr, client_config(files.ca.der(), None, versions)).await;
        assert!(why.as_ref().is_some_and(|w| w.contains("alert")), "{why:?}");
        let stranger = Ca::new("Other CA").leaf("intruder");
        let config = client_config(files.ca.der(), Some(&stranger), versions);
        let why = refusal(addr, config).await;
        assert!(why.as_ref().is_some_and(|w| w.contains("alert")), "{why:?}");
    }
    client.disconnect().await;
    broker.shutdown().await;
}

#[tokio::test]
async fn mtls_optional_accepts_clients_with_and_without_certificates() {
    let files = TlsFiles::new("mtls-optional");
    // Without `use_identity_as_username`: a client without a certificate
    // has nothing else to be refused for.
    let listener = ListenerConfig {
        use_identity_as_username: false,
        ..files.mtls_listener(false)
    };
    let broker = Broker::start(config_with(vec![listener])).await.unwrap();
    let addr = broker.local_addr();
    let device = files.ca.leaf("device-7");
    let with_cert = client_config(files.ca.der(), Some(&device), ALL_VERSIONS);
    let without = client_config(files.ca.der(), None, ALL_VERSIONS);
    let (mut sub, connack) = tls_client(addr, with_cert, "opt-with").await.unwrap();
    assert_eq!(connack.reason, ReasonCode::Success);
    let (mut publ, connack) = tls_client(addr, without, "opt-without").await.unwrap();
    assert_eq!(connack.reason, ReasonCode::Success);
    round_trip(&mut sub, &mut publ, "mtls/optional").await;
    // An invalid certificate is still refused.
    let stranger = Ca::new("Other CA").leaf("intruder");
    assert!(
        refused(
            addr,
            client_config(files.ca.der(), Some(&stranger), ALL_VERSIONS)
        )
        .await
    );
    broker.shutdown().await;
}

/// The TLS handshake as the listener runs it, on a socket of the test's own:
/// the `ConnInfo` it produces carries the client certificate's Common Name
/// when `use_identity_as_username` is set, and nothing otherwise.
#[tokio::test]
async fn client_certificate_common_name_becomes_the_identity() {
    let files = TlsFiles::new("identity");
    let device = files.ca.leaf("device-42");
    for (use_identity, expected) in [(true, Some("device-42")), (false, None)] {
        let listener = ListenerConfig {
            use_identity_as_username: use_identity,
            ..files.mtls_listener(true)
        };
        let acceptor = TlsAcceptor::load(&listener).unwrap();
        let socket = TcpListener::bind(any_port()).await.unwrap();
        let addr = socket.local_addr().unwrap();
        let config = client_config(files.ca.der(), Some(&device), ALL_VERSIONS);
        let client = tokio::spawn(async move {
            let mut tls = tls_connect(addr, config).await.unwrap();
            // TLS 1.3: the server's handshake ends when it reads this.
            tls.write_all(b"x").await.unwrap();
            tls
        });
        let (stream, peer) = socket.accept().await.unwrap();
        let info = ConnInfo {
            peer,
            listener: 0,
            cert_identity: None,
            connect_bytes: None,
            internal: false,
        };
        let (_tls, info) = acceptor.accept(stream, info).await.unwrap();
        assert_eq!(info.cert_identity.as_deref(), expected);
        drop(client.await.unwrap());
    }
}

/// QoS 1 PUBLISH on `topic`; the PUBACK's reason code.
async fn puback(client: &mut TestClient, topic: &str) -> ReasonCode {
    let mut publish = publish_packet(topic, b"m", QoS::AtLeastOnce, 1);
    publish.packet_id = Some(pid(1));
    client.send(Packet::Publish(publish)).await;
    match client.recv().await {
        Packet::PubAck(a) => a.reason,
        other => panic!("expected PUBACK, got {other:?}"),
    }
}

/// End to end: with `use_identity_as_username`, the certificate's Common
/// Name is the username the password check and the ACL see. The password
/// the client sends is not checked, at CONNECT or on a reload; a client
/// without a certificate (on a listener where it is optional) is refused.
#[tokio::test]
async fn the_certificate_common_name_is_the_username_for_login_and_acl() {
    let files = TlsFiles::new("cn-username");
    std::fs::write(files.path("passwd"), "").unwrap();
    std::fs::write(files.path("acl"), "user device-42\ntopic readwrite dev/#\n").unwrap();
    let config = Config {
        password_file: Some(files.path("passwd")),
        acl_file: Some(files.path("acl")),
        ..config_with(vec![files.mtls_listener(false)])
    };
    let broker = Broker::start(config).await.unwrap();
    let addr = broker.local_addr();
    let device = files.ca.leaf("device-42");
    let tls = tls_connect(
        addr,
        client_config(files.ca.der(), Some(&device), ALL_VERSIONS),
    )
    .await
    .unwrap();
    let mut login = connect_packet(ProtocolVersion::V5, "cn");
    login.username = Some("someone-else".into());
    login.password = Some(bytes::Bytes::from_static(b"not checked"));
    let (mut client, connack) = TestClient::over(tls, ProtocolVersion::V5)
        .handshake(login)
        .await;
    assert_eq!(connack.reason, ReasonCode::Success);
    // Allowed (and nobody listens); the other topic is not.
    assert_eq!(
        puback(&mut client, "dev/1").await,
        ReasonCode::NoMatchingSubscribers
    );
    assert_eq!(
        puback(&mut client, "other/1").await,
        ReasonCode::NotAuthorized
    );
    // A reload judges password logins again; device-42 has no entry in the
    // password file, but its certificate vouches for it: it stays.
    let reloaded = broker.reload();
    assert!(reloaded.is_ok(), "{reloaded:?}");
    assert_eq!(
        puback(&mut client, "dev/1").await,
        ReasonCode::NoMatchingSubscribers
    );

    let without = client_config(files.ca.der(), None, ALL_VERSIONS);
    let (_, connack) = tls_client(addr, without, "no-cert").await.unwrap();
    assert_eq!(connack.reason, ReasonCode::NotAuthorized);
    broker.shutdown().await;
}

#[test]
fn common_name_reader_survives_hostile_input() {
    let ca = Ca::new("Tern test CA");
    let leaf = ca.leaf("dévice-ünïcode");
    assert_eq!(common_name(&leaf.der).as_deref(), Some("dévice-ünïcode"));
    assert_eq!(common_name(&ca.der()).as_deref(), Some("Tern test CA"));
    // Every truncation and many corruptions: an answer or None, never a panic.
    let der = leaf.der.to_vec();
    for len in 0..der.len() {
        assert_eq!(common_name(&der[..len]), None, "truncated to {len}");
    }
    for i in 0..der.len() {
        for flip in [0x01, 0x80, 0xff] {
            let mut bad = der.clone();
            bad[i] ^= flip;
            let _ = common_name(&bad);
        }
    }
    assert_eq!(common_name(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
    assert_eq!(common_name(&[0x30, 0x80, 0x00, 0x00]), None);
}

#[tokio::test]
async fn unreadable_certificate_stops_start_with_the_file_named() {
    let files = TlsFiles::new("unreadable");
    let missing = files.path("missing.crt");
    let listener = ListenerConfig {
        cert_file: Some(missing.clone()),
        ..files.listener(ListenerTransport::Tls)
    };
    let err = Broker::start(config_with(vec![listener]))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains(&missing.display().to_string()), "{err}");
    assert!(err.contains("tls listener 127.0.0.1:0"), "{err}");
    std::fs::write(files.path("garbage.key"), "not a key").unwrap();
    let listener = ListenerConfig {
        key_file: Some(files.path("garbage.key")),
        ..files.listener(ListenerTransport::Wss)
    };
    let err = Broker::start(config_with(vec![listener]))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("garbage.key") && err.contains("wss listener"),
        "{err}"
    );
}

#[tokio::test]
async fn reload_keeps_old_certificates_on_a_broken_file_and_takes_new_ones() {
    let files = TlsFiles::new("reload");
    let broker = Broker::start(config_with(vec![files.listener(ListenerTransport::Tls)]))
        .await
        .unwrap();
    let addr = broker.local_addr();
    let old_ca = client_config(files.ca.der(), None, ALL_VERSIONS);
    let (mut sub, _) = tls_client(addr, old_ca.clone(), "reload-sub")
        .await
        .unwrap();

    // A broken certificate file: the error names it, the old one stays.
    std::fs::write(
        files.path("server.crt"),
        "-----BEGIN CERTIFICATE-----\nbroken\n",
    )
    .unwrap();
    let errors = broker.reload_certificates().unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:?}");
    let broken = files.path("server.crt");
    assert!(
        matches!(&errors[0].problem, TlsProblem::Read { setting: "cert_file", path, .. } if *path == broken),
        "{errors:?}"
    );
    assert!(errors[0].to_string().contains("server.crt"), "{errors:?}");
    let (mut publ, connack) = tls_client(addr, old_ca.clone(), "reload-pub")
        .await
        .unwrap();
    assert_eq!(connack.reason, ReasonCode::Success);
    round_trip(&mut sub, &mut publ, "reload/1").await;

    // A certificate from a new CA: new connections get it, open ones go on.
    let new_ca = Ca::new("New CA");
    let server = new_ca.leaf("localhost");
    std::fs::write(files.path("server.crt"), &server.cert_pem).unwrap();
    std::fs::write(files.path("server.key"), &server.key_pem).unwrap();
    assert!(broker.reload_certificates().is_ok());
    assert!(tls_connect(addr, old_ca).await.is_err());
    let (mut fresh, connack) = tls_client(
        addr,
        client_config(new_ca.der(), None, ALL_VERSIONS),
        "reload-new",
    )
    .await
    .unwrap();
    assert_eq!(connack.reason, ReasonCode::Success);
    round_trip(&mut sub, &mut fresh, "reload/2").await;
    publ.publish("reload/2", b"old connection", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(&sub.recv_publish().await.payload[..], b"old connection");
    broker.shutdown().await;
}

// ---------------------------------------------------------------------------
// WebSocket
// ---------------------------------------------------------------------------

/// A WebSocket MQTT client that controls how bytes are cut into messages.
struct WsClient<S> {
    ws: WebSocketStream<S>,
    buf: BytesMut,
}

fn encode(packet: Packet) -> Vec<u8> {
    let mut out = BytesMut::new();
    packet.encode(ProtocolVersion::V5, &mut out).unwrap();
    out.to_vec()
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> WsClient<S> {
    /// Upgrades on `path` offering `subprotocol`; returns the client and the
    /// subprotocol the server chose.
    async fn open(
        stream: S,
        addr: SocketAddr,
        path: &str,
        subprotocol: &str,
    ) -> (Self, Option<String>) {
        let mut request = format!("ws://{addr}{path}").into_client_request().unwrap();
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_str(subprotocol).unwrap(),
        );
        let (ws, response) = tokio_tungstenite::client_async(request, stream)
            .await
            .unwrap();
        let chosen = response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .map(|v| v.to_str().unwrap().to_string());
        (
            WsClient {
                ws,
                buf: BytesMut::new(),
            },
            chosen,
        )
    }

    /// Sends each piece as one binary message.
    async fn send_messages(&mut self, pieces: &[&[u8]]) {
        for piece in pieces {
            self.ws.send(Message::binary(piece.to_vec())).await.unwrap();
        }
    }

    /// The next packet; `None` if the server closed.
    async fn recv(&mut self) -> Option<Packet> {
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some(p) = decode(&mut self.buf, ProtocolVersion::V5, usize::MAX).unwrap() {
                    return Some(p);
                }
                match self.ws.next().await {
                    Some(Ok(Message::Binary(b))) => self.buf.extend_from_slice(&b),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                    Some(Ok(other)) => panic!("unexpected message {other:?}"),
                }
            }
        })
        .await
        .expect("a packet in time")
    }

    /// CONNECT cut across two messages, then SUBSCRIBE and a PUBLISH to the
    /// same topic in one message: CONNACK, SUBACK and the message come back.
    async fn connect_split_and_subscribe_batched(&mut self, id: &str, topic: &str) {
        let connect = encode(Packet::Connect(Box::new(connect_packet(
            ProtocolVersion::V5,
            id,
        ))));
        let (head, tail) = connect.split_at(connect.len() / 2);
        self.send_messages(&[head, tail]).await;
        let Some(Packet::ConnAck(connack)) = self.recv().await else {
            panic!("expected CONNACK");
        };
        assert_eq!(connack.reason, ReasonCode::Success);
        let mut batch = encode(Packet::Subscribe(Subscribe {
            packet_id: pid(1),
            filters: vec![SubscribeFilter {
                filter: topic.into(),
                options: SubscriptionOptions::default(),
            }],
            properties: Default::default(),
        }));
        batch.extend(encode(Packet::Publish(publish_packet(
            topic,
            b"batched",
            QoS::AtMostOnce,
            0,
        ))));
        self.send_messages(&[&batch]).await;
        assert!(matches!(self.recv().await, Some(Packet::SubAck(_))));
        let Some(Packet::Publish(p)) = self.recv().await else {
            panic!("expected PUBLISH");
        };
        assert_eq!(&p.payload[..], b"batched");
    }
}

/// Two listeners in one broker (tcp and ws): a WebSocket client whose
/// packets are split across messages and batched in one, and a TCP client,
/// exchange messages.
#[tokio::test]
async fn ws_round_trip_with_split_and_batched_packets_next_to_tcp() {
    let ws = ListenerConfig {
        transport: ListenerTransport::Ws,
        ..ListenerConfig::tcp(any_port())
    };
    let broker = Broker::start(config_with(vec![ListenerConfig::tcp(any_port()), ws]))
        .await
        .unwrap();
    let addrs = broker.local_addrs();
    assert_eq!(addrs.len(), 2);
    assert_eq!(addrs[0], broker.local_addr());
    assert_ne!(addrs[0], addrs[1]);
    let tcp = TcpStream::connect(addrs[1]).await.unwrap();
    let (mut client, subprotocol) = WsClient::open(tcp, addrs[1], "/mqtt", "mqtt").await;
    assert_eq!(subprotocol.as_deref(), Some("mqtt"));
    client
        .connect_split_and_subscribe_batched("ws-client", "ws/t")
        .await;
    // From the TCP listener to the WebSocket client and back.
    let mut tcp_client = TestClient::connect(addrs[0], ProtocolVersion::V5, "tcp-client").await;
    assert_eq!(
        tcp_client.subscribe("ws/back", QoS::AtMostOnce).await,
        ReasonCode::Success
    );
    tcp_client
        .publish("ws/t", b"from tcp", QoS::AtMostOnce, false)
        .await;
    let Some(Packet::Publish(p)) = client.recv().await else {
        panic!("expected PUBLISH");
    };
    assert_eq!(&p.payload[..], b"from tcp");
    let back = encode(Packet::Publish(publish_packet(
        "ws/back",
        b"from ws",
        QoS::AtMostOnce,
        0,
    )));
    client.send_messages(&[&back]).await;
    assert_eq!(&tcp_client.recv_publish().await.payload[..], b"from ws");
    // Packets larger than the WebSocket read buffer, both ways.
    static LARGE: [u8; 200 * 1024] = [3; 200 * 1024];
    tcp_client
        .publish("ws/t", &LARGE, QoS::AtMostOnce, false)
        .await;
    let Some(Packet::Publish(p)) = client.recv().await else {
        panic!("expected PUBLISH");
    };
    assert_eq!(p.payload.len(), LARGE.len());
    let large = encode(Packet::Publish(publish_packet(
        "ws/back",
        &LARGE,
        QoS::AtMostOnce,
        0,
    )));
    client.send_messages(&[&large]).await;
    assert_eq!(tcp_client.recv_publish().await.payload.len(), LARGE.len());
    // DISCONNECT: the broker closes with a Close frame and waits for ours
    // (tungstenite answers it), instead of cutting the socket.
    let disconnect = encode(Packet::Disconnect(Disconnect {
        reason: ReasonCode::Success,
        properties: Default::default(),
    }));
    client.send_messages(&[&disconnect]).await;
    let closing = tokio::time::timeout(WAIT, client.ws.next()).await.unwrap();
    assert!(
        matches!(closing, Some(Ok(Message::Close(_)))),
        "{closing:?}"
    );
    let end = tokio::time::timeout(WAIT, client.ws.next()).await.unwrap();
    assert!(end.is_none(), "{end:?}");
    broker.shutdown().await;
}

#[tokio::test]
async fn ws_answers_old_subprotocol_and_closes_on_text() {
    let ws = ListenerConfig {
        transport: ListenerTransport::Ws,
        ws_path: "/ws".into(),
        ..ListenerConfig::tcp(any_port())
    };
    let broker = Broker::start(config_with(vec![ws])).await.unwrap();
    let addr = broker.local_addr();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut client, subprotocol) = WsClient::open(tcp, addr, "/ws", "mqttv3.1").await;
    assert_eq!(subprotocol.as_deref(), Some("mqttv3.1"));
    client.ws.send(Message::text("CONNECT")).await.unwrap();
    assert!(
        client.recv().await.is_none(),
        "a text message closes the connection"
    );
    broker.shutdown().await;
}

/// Sends a WebSocket upgrade request for `path` with `headers` (each ending
/// in CRLF) and returns the response: the head of a 101, all of a refusal.
async fn raw_upgrade(addr: SocketAddr, path: &str, headers: &str) -> String {
    upgraded(addr, path, headers).await.1
}

/// The socket after an upgrade request for `path`, and the response.
async fn upgraded(addr: SocketAddr, path: &str, headers: &str) -> (TcpStream, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{headers}\r\n"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, async {
        let upgraded = |r: &[u8]| r.starts_with(b"HTTP/1.1 101") && r.ends_with(b"\r\n\r\n");
        while !upgraded(&response) && tcp.read_buf(&mut response).await.unwrap() > 0 {}
    })
    .await
    .unwrap();
    (tcp, String::from_utf8_lossy(&response).into_owned())
}

/// A client's frame: masked, as RFC 6455 requires of clients.
fn client_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = vec![opcode | if fin { 0x80 } else { 0 }];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    frame.extend_from_slice(&MASK);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    frame
}

/// The next frame from the server: (first byte, payload); `None` at the end
/// of the stream.
async fn server_frame(tcp: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    tokio::time::timeout(WAIT, async {
        let mut head = [0u8; 2];
        tcp.read_exact(&mut head).await.ok()?;
        assert_eq!(head[1] & 0x80, 0, "server frames are not masked");
        let len = match head[1] & 0x7f {
            126 => usize::from(tcp.read_u16().await.ok()?),
            127 => usize::try_from(tcp.read_u64().await.ok()?).ok()?,
            n => usize::from(n),
        };
        let mut payload = vec![0u8; len];
        tcp.read_exact(&mut payload).await.ok()?;
        Some((head[0], payload))
    })
    .await
    .expect("a frame or the end of the stream in time")
}

const BINARY: u8 = 0x2;
const CONTINUATION: u8 = 0x0;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// Frames as a client may send them: a packet in two fragments with a ping
/// between them (control frames may come between fragments), a long frame
/// (16-bit length), pongs, and a close that is answered with a close.
#[tokio::test]
async fn ws_fragments_pings_and_close_frames() {
    let ws = ListenerConfig {
        transport: ListenerTransport::Ws,
        ..ListenerConfig::tcp(any_port())
    };
    let broker = Broker::start(config_with(vec![ws])).await.unwrap();
    let (mut tcp, response) = upgraded(broker.local_addr(), "/mqtt", "").await;
    assert!(response.starts_with("HTTP/1.1 101"), "{response}");
    let connect = encode(Packet::Connect(Box::new(connect_packet(
        ProtocolVersion::V5,
        "ws-frames",
    ))));
    let mut bytes = client_frame(BINARY, false, &connect[..5]);
    bytes.extend(client_frame(PING, true, b"are you there"));
    bytes.extend(client_frame(CONTINUATION, true, &connect[5..]));
    tcp.write_all(&bytes).await.unwrap();
    assert_eq!(
        server_frame(&mut tcp).await,
        Some((0x80 | PONG, b"are you there".to_vec()))
    );
    let (head, connack) = server_frame(&mut tcp).await.unwrap();
    assert_eq!(head, 0x80 | BINARY);
    let mut connack = BytesMut::from(&connack[..]);
    assert!(matches!(
        decode(&mut connack, ProtocolVersion::V5, usize::MAX),
        Ok(Some(Packet::ConnAck(_)))
    ));
    // A PUBLISH of 1,000 bytes to itself, in one long frame after a pong.
    let subscribe = encode(Packet::Subscribe(Subscribe {
        packet_id: pid(1),
        filters: vec![SubscribeFilter {
            filter: "ws/long".into(),
            options: SubscriptionOptions::default(),
        }],
        properties: Default::default(),
    }));
    tcp.write_all(&client_frame(BINARY, true, &subscribe))
        .await
        .unwrap();
    assert!(server_frame(&mut tcp).await.is_some(), "SUBACK");
    let publish = encode(Packet::Publish(publish_packet(
        "ws/long",
        &[7u8; 1000],
        QoS::AtMostOnce,
        0,
    )));
    let mut bytes = client_frame(PONG, true, b"");
    bytes.extend(client_frame(BINARY, true, &publish));
    tcp.write_all(&bytes).await.unwrap();
    let (head, delivered) = server_frame(&mut tcp).await.unwrap();
    assert_eq!((head, delivered.len()), (0x80 | BINARY, publish.len()));
    // The client closes: the broker answers with its status code, then ends.
    tcp.write_all(&client_frame(CLOSE, true, &1000u16.to_be_bytes()))
        .await
        .unwrap();
    assert_eq!(
        server_frame(&mut tcp).await,
        Some((0x80 | CLOSE, 1000u16.to_be_bytes().to_vec()))
    );
    assert_eq!(server_frame(&mut tcp).await, None);
    broker.shutdown().await;
}

/// A client's frames must be masked; an unmasked one ends the connection.
#[tokio::test]
async fn ws_unmasked_frames_close_the_connection() {
    let ws = ListenerConfig {
        transport: ListenerTransport::Ws,
        ..ListenerConfig::tcp(any_port())
    };
    let broker = Broker::start(config_with(vec![ws])).await.unwrap();
    let (mut tcp, _) = upgraded(broker.local_addr(), "/mqtt", "").await;
    let connect = encode(Packet::Connect(Box::new(connect_packet(
        ProtocolVersion::V5,
        "ws-unmasked",
    ))));
    let mut frame = vec![0x80 | BINARY, connect.len() as u8];
    frame.extend_from_slice(&connect);
    tcp.write_all(&frame).await.unwrap();
    assert_eq!(server_frame(&mut tcp).await, None);
    broker.shutdown().await;
}

/// Idle WebSocket connections park as their transport does, and wake for
/// deliveries and pings with their frames where they were.
#[tokio::test]
async fn idle_ws_connections_park_and_wake() {
    let ws = ListenerConfig {
        transport: ListenerTransport::Ws,
        ..ListenerConfig::tcp(any_port())
    };
    let config = Config {
        park_idle_ms: 20,
        ..config_with(vec![ws])
    };
    let broker = Broker::start(config).await.unwrap();
    let addr = broker.local_addr();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut sub, _) = WsClient::open(tcp, addr, "/mqtt", "mqtt").await;
    sub.connect_split_and_subscribe_batched("ws-park-sub", "park/ws")
        .await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut publ, _) = WsClient::open(tcp, addr, "/mqtt", "mqtt").await;
    publ.send_messages(&[&encode(Packet::Connect(Box::new(connect_packet(
        ProtocolVersion::V5,
        "ws-park-pub",
    ))))])
    .await;
    assert!(matches!(publ.recv().await, Some(Packet::ConnAck(_))));
    static PAYLOADS: [[u8; 2000]; 3] = [[0; 2000], [1; 2000], [2; 2000]];
    for payload in &PAYLOADS {
        wait_parked(&broker, 2).await;
        let publish = publish_packet("park/ws", payload, QoS::AtMostOnce, 0);
        // Cut in two messages: the second wakes nothing, the first did.
        let bytes = encode(Packet::Publish(publish));
        publ.send_messages(&[&bytes[..10], &bytes[10..]]).await;
        match sub.recv().await {
            Some(Packet::Publish(p)) => assert_eq!(&p.payload[..], &payload[..]),
            other => panic!("expected the PUBLISH, got {other:?}"),
        }
        wait_parked(&broker, 2).await;
        sub.ws
            .send(Message::Ping(b"ping".to_vec().into()))
            .await
            .unwrap();
        sub.send_messages(&[&encode(Packet::PingReq)]).await;
        assert_eq!(sub.recv().await, Some(Packet::PingResp));
    }
    broker.shutdown().await;
}

/// An upgrade that offers subprotocols, none of them MQTT, is refused: the
/// client would speak something else. One offering none is let in, as
/// Mosquitto does, for clients that leave the header out.
#[tokio::test]
async fn ws_unknown_subprotocol_gets_400() {
    let ws = ListenerConfig {
        transport: ListenerTransport::Ws,
        ..ListenerConfig::tcp(any_port())
    };
    let broker = Broker::start(config_with(vec![ws])).await.unwrap();
    let addr = broker.local_addr();
    let response = raw_upgrade(addr, "/mqtt", "Sec-WebSocket-Protocol: chat, superchat\r\n").await;
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    assert!(response.contains("mqtt"), "says what to offer: {response}");
    let response = raw_upgrade(addr, "/mqtt", "").await;
    assert!(response.starts_with("HTTP/1.1 101"), "{response}");
    assert!(!response.contains("Sec-WebSocket-Protocol"), "{response}");
    broker.shutdown().await;
}

#[tokio::test]
async fn ws_other_path_gets_404() {
    let ws = ListenerConfig {
        transport: ListenerTransport::Ws,
        ..ListenerConfig::tcp(any_port())
    };
    let broker = Broker::start(config_with(vec![ws])).await.unwrap();
    let addr = broker.local_addr();
    let response = raw_upgrade(addr, "/elsewhere", "").await;
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");
    // The listener still serves the right path.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut client, _) = WsClient::open(tcp, addr, "/mqtt", "mqtt").await;
    client
        .connect_split_and_subscribe_batched("after-404", "ws/404")
        .await;
    // Gone before shutdown, which would otherwise wait a moment for its
    // answer to the Close frame.
    drop(client);
    broker.shutdown().await;
}

#[tokio::test]
async fn wss_round_trip_with_split_and_batched_packets() {
    let files = TlsFiles::new("wss");
    let broker = Broker::start(config_with(vec![files.listener(ListenerTransport::Wss)]))
        .await
        .unwrap();
    let addr = broker.local_addr();
    let tls = tls_connect(addr, client_config(files.ca.der(), None, ALL_VERSIONS))
        .await
        .unwrap();
    let (mut client, subprotocol) = WsClient::open(tls, addr, "/mqtt", "mqtt").await;
    assert_eq!(subprotocol.as_deref(), Some("mqtt"));
    client
        .connect_split_and_subscribe_batched("wss-client", "wss/t")
        .await;
    // Gone before shutdown, which would otherwise wait a moment for its
    // answer to the Close frame.
    drop(client);
    broker.shutdown().await;
}

/// A client that never finishes its TLS handshake holds up nobody: the
/// accept loop goes on and a second client connects at once.
#[tokio::test]
async fn stalled_handshake_does_not_block_the_listener() {
    let files = TlsFiles::new("stalled");
    let broker = Broker::start(config_with(vec![files.listener(ListenerTransport::Tls)]))
        .await
        .unwrap();
    let addr = broker.local_addr();
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    stalled.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    let (_client, connack) = tls_client(
        addr,
        client_config(files.ca.der(), None, ALL_VERSIONS),
        "after-stall",
    )
    .await
    .unwrap();
    assert_eq!(connack.reason, ReasonCode::Success);
    // Garbage instead of TLS: closed, and nothing else disturbed.
    let mut garbage = TcpStream::connect(addr).await.unwrap();
    garbage.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(WAIT, garbage.read_to_end(&mut buf))
        .await
        .unwrap();
    drop(stalled);
    broker.shutdown().await;
}
