//! Bridges between two Terns over real sockets: each direction and its
//! prefixes, retained messages, loop prevention on `both`, the state topic,
//! failover, messages kept for a remote that is down (also across a restart
//! of the local broker), and the server side of Mosquitto's bridge flag.
//! Mosquitto on the other end: tests/interop/test_bridge.py.

mod common;

use std::net::SocketAddr;

use common::*;
use tern_broker::config::{BridgeConfig, BridgeProtocol, Direction, TopicRule};
use tern_broker::{BrokerHandle, Config};
use tern_client::{Client, ConnectOptions, Event, Events, Message, Received};
use tern_codec::*;

fn rule(pattern: &str, direction: Direction, qos: u8) -> TopicRule {
    TopicRule {
        pattern: pattern.into(),
        direction,
        qos,
        local_prefix: String::new(),
        remote_prefix: String::new(),
    }
}

/// A bridge named `name` to `remote`, retrying fast (tests wait on it).
fn bridge(name: &str, remote: SocketAddr, topics: Vec<TopicRule>) -> BridgeConfig {
    let mut b = BridgeConfig::new(name, &remote.to_string(), topics);
    b.reconnect_min_ms = 20;
    b.reconnect_max_ms = 200;
    b
}

fn with_bridges(bridges: Vec<BridgeConfig>) -> Config {
    Config {
        bridges,
        ..test_config()
    }
}

async fn client(broker: SocketAddr, id: &str) -> (Client, Events) {
    let options = ConnectOptions::new(broker.ip().to_string(), broker.port()).client_id(id);
    let (client, events, _) = Client::connect(options).await.expect("connects");
    (client, events)
}

async fn subscribed(broker: SocketAddr, id: &str, filter: &str) -> (Client, Events) {
    let (c, e) = client(broker, id).await;
    c.subscribe(filter, QoS::AtLeastOnce)
        .await
        .expect("subscribes");
    (c, e)
}

/// The next message, within `WAIT`.
async fn message(events: &mut Events) -> Received {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, events.next()).await {
            Ok(Some(Event::Message(m))) => return m,
            Ok(Some(_)) => {}
            Ok(None) => panic!("connection closed while waiting for a message"),
            Err(_) => panic!("no message within {WAIT:?}"),
        }
    }
}

async fn no_message(events: &mut Events) {
    if let Ok(Some(Event::Message(m))) = tokio::time::timeout(QUIET, events.next()).await {
        panic!("unexpected message on {}: {:?}", m.topic, m.payload);
    }
}

/// Waits until the bridge's state topic on `broker` says `value`.
async fn state_is(broker: &BrokerHandle, name: &str, value: &str) {
    let (c, mut e) = client(broker.local_addr(), "state-watcher").await;
    c.subscribe(
        format!("$SYS/broker/connection/{name}/state"),
        QoS::AtMostOnce,
    )
    .await
    .unwrap();
    loop {
        let m = message(&mut e).await;
        if m.payload == value.as_bytes() {
            break;
        }
    }
    c.disconnect(ReasonCode::Success).await.unwrap();
}

/// A broker on `addr` (a port from [`free_addr`]).
async fn remote_at(addr: SocketAddr) -> BrokerHandle {
    start_with(Config {
        bind: addr,
        ..test_config()
    })
    .await
}

/// A loopback port nothing listens on now (to start a broker on later).
fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

#[tokio::test]
async fn each_direction_with_its_prefixes_and_retained_flags() {
    let remote = start().await;
    let mut out = rule("sensors/#", Direction::Out, 1);
    out.local_prefix = "site/".into();
    out.remote_prefix = "fleet/a/".into();
    let inward = rule("commands/#", Direction::In, 1);
    let local = start_with(with_bridges(vec![bridge(
        "up",
        remote.local_addr(),
        vec![out, inward],
    )]))
    .await;
    state_is(&local, "up", "1").await;

    let (_r, mut at_remote) = subscribed(remote.local_addr(), "r-sub", "#").await;
    let (_l, mut at_local) = subscribed(local.local_addr(), "l-sub", "#").await;
    let (lp, _) = client(local.local_addr(), "l-pub").await;
    let (rp, _) = client(remote.local_addr(), "r-pub").await;

    // out: site/sensors/t here is fleet/a/sensors/t there, retain kept.
    let reading = Message::new("site/sensors/t", "21.5", QoS::AtLeastOnce).retain(true);
    lp.publish(reading).await.unwrap();
    let m = message(&mut at_remote).await;
    assert_eq!(
        (m.topic.as_str(), &m.payload[..]),
        ("fleet/a/sensors/t", &b"21.5"[..])
    );
    assert_eq!(m.qos, QoS::AtLeastOnce);
    let _ = message(&mut at_local).await; // the local subscriber's own copy

    // in: commands/# there comes here; other topics do not.
    rp.publish(Message::new("commands/door", "open", QoS::AtLeastOnce))
        .await
        .unwrap();
    rp.publish(Message::new("elsewhere/x", "no", QoS::AtLeastOnce))
        .await
        .unwrap();
    let m = message(&mut at_local).await;
    assert_eq!(
        (m.topic.as_str(), &m.payload[..]),
        ("commands/door", &b"open"[..])
    );
    assert!(!m.retain);
    // Nothing else arrives here, and the remote sees its two only.
    no_message(&mut at_local).await;
    let seen: Vec<String> = [message(&mut at_remote).await, message(&mut at_remote).await]
        .iter()
        .map(|m| m.topic.to_string())
        .collect();
    assert_eq!(seen, ["commands/door", "elsewhere/x"]);
    no_message(&mut at_remote).await;

    // The copy is retained there too: a late joiner gets it.
    let (_late, mut late) = subscribed(remote.local_addr(), "late", "fleet/#").await;
    let m = message(&mut late).await;
    assert_eq!((m.topic.as_str(), m.retain), ("fleet/a/sensors/t", true));

    local.shutdown().await;
    remote.shutdown().await;
}

/// `both`, at MQTT 3.1.1 (Mosquitto's bridge flag) and at MQTT 5 (No
/// Local): each message crosses once and never comes back.
#[tokio::test]
async fn both_ways_without_loops_at_either_version() {
    for protocol in [BridgeProtocol::V311, BridgeProtocol::V5] {
        let remote = start().await;
        let mut b = bridge(
            "loop",
            remote.local_addr(),
            vec![rule("chat/#", Direction::Both, 1)],
        );
        b.protocol = protocol;
        let local = start_with(with_bridges(vec![b])).await;
        state_is(&local, "loop", "1").await;
        let (lc, mut at_local) = subscribed(local.local_addr(), "l", "chat/#").await;
        let (rc, mut at_remote) = subscribed(remote.local_addr(), "r", "chat/#").await;

        lc.publish(Message::new("chat/a", "from local", QoS::AtLeastOnce))
            .await
            .unwrap();
        rc.publish(Message::new("chat/b", "from remote", QoS::AtLeastOnce))
            .await
            .unwrap();
        let mut here: Vec<String> = Vec::new();
        let mut there: Vec<String> = Vec::new();
        for _ in 0..2 {
            here.push(message(&mut at_local).await.topic.to_string());
            there.push(message(&mut at_remote).await.topic.to_string());
        }
        here.sort();
        there.sort();
        assert_eq!(here, ["chat/a", "chat/b"], "{protocol:?}");
        assert_eq!(there, ["chat/a", "chat/b"], "{protocol:?}");
        // A loop would bring each back again (and again).
        no_message(&mut at_local).await;
        no_message(&mut at_remote).await;
        local.shutdown().await;
        remote.shutdown().await;
    }
}

/// The first address is dead: the bridge fails over to the second; when
/// the remote goes, the state topic says 0, and 1 again when it is back.
#[tokio::test]
async fn fails_over_and_reports_its_state() {
    let remote_addr = free_addr();
    let mut b = bridge("fo", free_addr(), vec![rule("t/#", Direction::Out, 1)]);
    b.addresses.push(remote_addr.to_string());
    let local = start_with(with_bridges(vec![b])).await;
    state_is(&local, "fo", "0").await;
    let remote = remote_at(remote_addr).await;
    state_is(&local, "fo", "1").await;
    remote.shutdown().await;
    state_is(&local, "fo", "0").await;
    let remote = remote_at(remote_addr).await;
    state_is(&local, "fo", "1").await;
    let (_r, mut at_remote) = subscribed(remote_addr, "r", "t/#").await;
    let (lp, _) = client(local.local_addr(), "p").await;
    lp.publish(Message::new("t/1", "x", QoS::AtLeastOnce))
        .await
        .unwrap();
    assert_eq!(message(&mut at_remote).await.topic.as_str(), "t/1");
    local.shutdown().await;
    remote.shutdown().await;
}

/// QoS 1 messages published while the remote is down wait in the bridge's
/// session, in the data file: they survive a restart of this broker and
/// arrive, in order, once the remote is up.
#[tokio::test]
async fn messages_wait_for_a_remote_that_is_down_across_a_restart() {
    let dir = tempdir("bridge-queue");
    let remote_addr = free_addr();
    let config = Config {
        persistence: true,
        data_dir: dir.clone(),
        ..with_bridges(vec![bridge(
            "q",
            remote_addr,
            vec![rule("q/#", Direction::Out, 1)],
        )])
    };
    let local = start_with(config.clone()).await;
    // The bridge's session here subscribes when it first connects: until
    // then nothing is forwarded (as in Mosquitto). Let it connect once.
    let remote = remote_at(remote_addr).await;
    state_is(&local, "q", "1").await;
    // A persistent subscriber there, away while the messages are sent.
    let (rc, _) = {
        let options = ConnectOptions::new("127.0.0.1", remote_addr.port())
            .client_id("away")
            .clean_start(false)
            .session_expiry(3600);
        let (c, e, _) = Client::connect(options).await.unwrap();
        c.subscribe("q/#", QoS::AtLeastOnce).await.unwrap();
        (c, e)
    };
    rc.disconnect(ReasonCode::Success).await.unwrap();
    remote.shutdown().await;
    state_is(&local, "q", "0").await;

    let (lp, _) = client(local.local_addr(), "p").await;
    for i in 0..50 {
        let reason = lp
            .publish(Message::new(
                format!("q/{i}"),
                i.to_string(),
                QoS::AtLeastOnce,
            ))
            .await
            .unwrap();
        assert!(!reason.is_error());
    }
    lp.disconnect(ReasonCode::Success).await.unwrap();
    local.shutdown().await;

    // Restarted, with the remote back (and its subscriber, persistent).
    let remote = remote_at(remote_addr).await;
    let options = ConnectOptions::new("127.0.0.1", remote_addr.port())
        .client_id("away")
        .clean_start(false)
        .session_expiry(3600);
    let (rc, mut at_remote, _) = Client::connect(options).await.unwrap();
    rc.subscribe("q/#", QoS::AtLeastOnce).await.unwrap();
    let local = start_with(config).await;
    for i in 0..50 {
        let m = message(&mut at_remote).await;
        assert_eq!(m.payload, i.to_string().as_bytes(), "in order, none lost");
    }
    no_message(&mut at_remote).await;
    local.shutdown().await;
    remote.shutdown().await;
    std::fs::remove_dir_all(dir).ok();
}

/// A client connecting with Mosquitto's bridge flag (MQTT 3.1.1, level
/// 0x84) does not get its own messages back, and gets retain flags as
/// published; a client without it gets its own messages.
#[tokio::test]
async fn a_peer_with_mosquittos_bridge_flag_gets_no_local_and_retain_as_published() {
    let broker = start().await;
    let addr = broker.local_addr();
    let mut flagged = connect_packet(ProtocolVersion::V3_1_1, "mosquitto-bridge");
    flagged.bridge = true;
    let (mut peer, ack) = TestClient::connect_with(addr, flagged).await;
    assert_eq!(ack.reason, ReasonCode::Success);
    assert_eq!(
        peer.subscribe("b/#", QoS::AtLeastOnce).await,
        ReasonCode::GrantedQoS1
    );
    peer.publish("b/own", b"mine", QoS::AtMostOnce, false).await;
    peer.expect_nothing().await;

    let mut other = TestClient::connect(addr, ProtocolVersion::V3_1_1, "other").await;
    other.publish("b/r", b"kept", QoS::AtMostOnce, true).await;
    let p = peer.recv_publish().await;
    assert_eq!((&*p.topic, p.retain), ("b/r", true), "retain as published");

    // The same without the flag: its own message comes back, and a live
    // retained message arrives without its flag (MQTT 3.1.1).
    let mut plain = TestClient::connect(addr, ProtocolVersion::V3_1_1, "plain").await;
    plain.subscribe("c/#", QoS::AtMostOnce).await;
    plain
        .publish("c/own", b"mine", QoS::AtMostOnce, false)
        .await;
    assert_eq!(&*plain.recv_publish().await.topic, "c/own");
    other.publish("c/r", b"x", QoS::AtMostOnce, true).await;
    assert!(!plain.recv_publish().await.retain);
    broker.shutdown().await;
}

/// Client ids beginning `$bridge/` are the bridges' own: refused from the
/// network (0x85), so nobody can take a bridge's session.
#[tokio::test]
async fn the_bridges_client_ids_are_refused_from_the_network() {
    let broker = start().await;
    let (_, ack) = TestClient::connect_with(
        broker.local_addr(),
        connect_packet(ProtocolVersion::V5, "$bridge/cloud"),
    )
    .await;
    assert_eq!(ack.reason, ReasonCode::ClientIdentifierNotValid);
    broker.shutdown().await;
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tern-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
