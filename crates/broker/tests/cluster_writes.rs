//! What a PUBACK (PUBREC) from a cluster node promises: the message is in
//! the cluster's messages stream on a majority of three NATS servers, and
//! routed only from there. While the stream cannot take writes (a leader
//! election, a minority partition) acknowledgements are held, not faked, and
//! a write that cannot be stored in time reaches no one: its publisher is
//! sent elsewhere (MQTT 5: 0x9C) to publish it again. docs/cluster.md,
//! "Guarantees".

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use bytes::Bytes;
use futures_util::StreamExt;
use tern_broker::config::ClusterConfig;
use tern_broker::testing::{Kept, decode_mirror, session_key};
use tern_broker::{Broker, BrokerHandle, Config};
use tern_codec::{Packet, ProtocolVersion::V5, PubAck, Publish, QoS, ReasonCode};

use common::nats::{Nats, NatsCluster, until_routed};
use common::*;

/// The stream every node stores QoS 1/2 messages in (cluster "test").
const STREAM: &str = "test-messages";

/// A node named `name` using the NATS servers `servers` (3 copies of each
/// stream), giving a write up after `write_timeout_secs`.
async fn node(servers: &[&Nats], name: &str, write_timeout_secs: u64) -> BrokerHandle {
    let urls = servers.iter().map(|s| s.url.clone()).collect();
    let config = Config {
        cluster: Some(ClusterConfig {
            name: "test".into(),
            node: Some(name.into()),
            replicas: 3,
            write_timeout_secs,
            ..ClusterConfig::new(urls)
        }),
        ..test_config()
    };
    Broker::start(config).await.expect("the node joins")
}

/// A node named `name` on a single NATS server (1 copy of each stream).
async fn alone_on(nats: &Nats, name: &str) -> BrokerHandle {
    let config = Config {
        cluster: Some(ClusterConfig {
            node: Some(name.into()),
            ..nats.cluster()
        }),
        ..test_config()
    };
    Broker::start(config).await.expect("the node joins")
}

async fn jetstream_at(nats: &Nats) -> jetstream::Context {
    let client = async_nats::connect(&nats.url).await.expect("a NATS client");
    jetstream::new(client)
}

/// The payloads in the messages stream, with how often each is there.
async fn stored_payloads(nats: &Nats) -> BTreeMap<String, usize> {
    let js = jetstream_at(nats).await;
    let mut stream = js.get_stream(STREAM).await.expect("the messages stream");
    let last = stream.info().await.expect("its state").state.last_sequence;
    let mut payloads = BTreeMap::new();
    for seq in 1..=last {
        let Ok(message) = stream.get_raw_message(seq).await else {
            continue;
        };
        let record = String::from_utf8_lossy(&message.payload).into_owned();
        // The record ends with the payload; the tests' payloads are `m<N>`.
        if let Some(at) = record.rfind('m') {
            *payloads.entry(record[at..].to_owned()).or_default() += 1;
        }
    }
    payloads
}

fn numbered(topic: &str, n: usize, qos: QoS, id: u16) -> Publish {
    Publish {
        payload: Bytes::from(format!("m{n}")),
        ..publish_packet(topic, b"", qos, id)
    }
}

/// The payloads of PUBLISHes arriving within `quiet` of each other, each
/// acknowledged as a receiver does (QoS 2: PUBREC, then PUBCOMP for the
/// PUBREL, while more PUBLISHes arrive in between).
async fn drain_payloads(client: &mut TestClient, quiet: Duration) -> Vec<String> {
    let mut got = Vec::new();
    while let Ok(Some(packet)) = client.next(quiet).await {
        match packet {
            Packet::Publish(p) => {
                got.push(String::from_utf8_lossy(&p.payload).into_owned());
                match (p.qos, p.packet_id) {
                    (QoS::AtLeastOnce, Some(id)) => {
                        client.send(Packet::PubAck(PubAck::new(id))).await
                    }
                    (QoS::ExactlyOnce, Some(id)) => {
                        client.send(Packet::PubRec(PubAck::new(id))).await
                    }
                    _ => {}
                }
            }
            Packet::PubRel(rel) => {
                client
                    .send(Packet::PubComp(PubAck::new(rel.packet_id)))
                    .await
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    got
}

#[tokio::test]
async fn an_acknowledged_message_is_in_the_replicated_stream_before_its_puback() {
    let nats = NatsCluster::start();
    let [n0, n1, n2] = [&nats.servers[0], &nats.servers[1], &nats.servers[2]];
    let a = node(&[n0], "a", 20).await;
    let b = node(&[n1], "b", 20).await;
    let mut sub = TestClient::connect(b.local_addr(), V5, "sub").await;
    sub.subscribe("s/#", QoS::ExactlyOnce).await;
    let mut publisher = TestClient::connect(a.local_addr(), V5, "pub").await;
    let js = jetstream_at(n2).await;
    for n in 1..=10 {
        let qos = if n % 2 == 0 {
            QoS::ExactlyOnce
        } else {
            QoS::AtLeastOnce
        };
        publisher.publish_packet(numbered("s/x", n, qos, 1)).await;
        // Read from the third server: the copy there may lag, the majority
        // (the leader and one more) has it.
        let mut stream = js.get_stream(STREAM).await.expect("the stream");
        let info = stream.info().await.expect("its state");
        assert_eq!(info.config.num_replicas, 3);
        assert!(
            info.state.messages >= n as u64,
            "PUBACK/PUBREC for message {n} came before the stream had it ({} messages)",
            info.state.messages
        );
        let got = sub.recv_publish().await;
        assert_eq!(got.payload, format!("m{n}"));
        sub.ack(&got).await;
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_node_on_the_minority_side_holds_then_refuses_writes_and_nothing_diverges() {
    let mut nats = NatsCluster::start();
    let a = node(&[&nats.servers[2]], "a", 3).await;
    let mut sub = TestClient::connect(a.local_addr(), V5, "sub").await;
    sub.subscribe("w/#", QoS::ExactlyOnce).await;
    let (mut publisher, _) = TestClient::connect_with(a.local_addr(), persistent(V5, "pub")).await;
    // Before the partition: stored and delivered.
    publisher
        .publish_packet(numbered("w/0", 0, QoS::AtLeastOnce, 1))
        .await;
    assert_eq!(sub.recv_publish().await.payload, "m0");

    // Server 2 alone: NATS core still routes, JetStream has no majority.
    nats.servers[0].kill();
    nats.servers[1].kill();
    publisher
        .send(Packet::Publish(numbered("w/1", 1, QoS::AtLeastOnce, 1)))
        .await;
    publisher
        .send(Packet::Publish(numbered("w/2", 2, QoS::ExactlyOnce, 7)))
        .await;
    // Held: no acknowledgement while the write is tried again...
    assert!(
        publisher.next(Duration::from_secs(1)).await.is_err(),
        "an acknowledgement went out for a message the stream did not take"
    );
    // ...then given up: no acknowledgement ever, and the client is sent
    // elsewhere to publish both again.
    let packets = read_until_closed(&mut publisher).await;
    assert!(
        matches!(packets.as_slice(), [Packet::Disconnect(d)] if d.reason == ReasonCode::UseAnotherServer),
        "expected only DISCONNECT 0x9C, got {packets:?}"
    );
    // Nobody received what was not stored, and the node takes no clients.
    sub.expect_nothing().await;
    let (_, refused) = TestClient::connect_with(a.local_addr(), connect_packet(V5, "late")).await;
    assert_eq!(refused.reason, ReasonCode::ServerUnavailable);

    // The majority is back: the node takes writes again, and the client,
    // reconnecting, publishes both again (DUP, same packet ids).
    nats.servers[0].start_again();
    nats.servers[1].start_again();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut publisher = loop {
        let (client, ack) = TestClient::connect_with(a.local_addr(), persistent(V5, "pub")).await;
        if ack.reason == ReasonCode::Success {
            break client;
        }
        assert!(
            Instant::now() < deadline,
            "the node never took clients again"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for (n, qos, id) in [(1, QoS::AtLeastOnce, 1), (2, QoS::ExactlyOnce, 7)] {
        let again = Publish {
            dup: true,
            ..numbered(&format!("w/{n}"), n, qos, id)
        };
        publisher.publish_packet(again).await;
    }
    let mut got = vec![sub.recv_publish().await, sub.recv_publish().await];
    for p in &got {
        sub.ack(p).await;
    }
    got.sort_by(|x, y| x.payload.cmp(&y.payload));
    let payloads: Vec<_> = got.iter().map(|p| p.payload.clone()).collect();
    assert_eq!(payloads, ["m1", "m2"], "each once, after it was stored");
    assert!(
        drain_payloads(&mut sub, QUIET).await.is_empty(),
        "a message arrived twice"
    );
    a.shutdown().await;
}

#[tokio::test]
async fn killing_the_stream_leader_holds_pubacks_and_loses_nothing() {
    let mut nats = NatsCluster::start();
    // A first node makes the streams; then the leader of the messages
    // stream is known, and the nodes use the two other servers.
    let seed = node(&[&nats.servers[0]], "seed", 30).await;
    seed.shutdown().await;
    let js = jetstream_at(&nats.servers[0]).await;
    let mut stream = js.get_stream(STREAM).await.expect("the stream");
    let info = stream.info().await.expect("its state");
    let leader = info
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .expect("the stream has a leader");
    let leader = NatsCluster::index(&leader);
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let a = node(&[&nats.servers[others[0]]], "a", 30).await;
    let b = node(&[&nats.servers[others[1]]], "b", 30).await;
    let mut sub = TestClient::connect(b.local_addr(), V5, "sub").await;
    sub.subscribe("k/#", QoS::AtLeastOnce).await;
    let mut publisher = TestClient::connect(a.local_addr(), V5, "pub").await;

    // QoS 1, one at a time; the leader dies after the 20th PUBACK, and the
    // run goes on until 20 more came back.
    let mut acked = Vec::new();
    let mut longest = Duration::ZERO;
    let mut killed_at = None;
    let mut n = 0;
    while killed_at.is_none() || acked.len() < 40 {
        n += 1;
        let sent = Instant::now();
        publisher
            .send(Packet::Publish(numbered("k/x", n, QoS::AtLeastOnce, 1)))
            .await;
        match publisher.next(Duration::from_secs(30)).await {
            Ok(Some(Packet::PubAck(ack))) => assert_eq!(ack.reason, ReasonCode::Success),
            other => panic!("expected a PUBACK within 30 s, got {other:?}"),
        }
        longest = longest.max(sent.elapsed());
        acked.push(format!("m{n}"));
        if acked.len() == 20 {
            nats.servers[leader].kill();
            killed_at = Some(Instant::now());
        }
    }
    println!(
        "stream leader n{leader} killed: the longest wait for a PUBACK was {:.2} s",
        longest.as_secs_f64()
    );
    assert!(
        longest >= Duration::from_millis(500),
        "no PUBACK waited for the new leader ({longest:?}): acknowledged before stored?"
    );
    let received = drain_payloads(&mut sub, Duration::from_secs(2)).await;
    let stored = stored_payloads(&nats.servers[others[0]]).await;
    for payload in &acked {
        assert!(
            received.contains(payload),
            "{payload} was acknowledged and never delivered"
        );
        assert!(
            stored.contains_key(payload),
            "{payload} was acknowledged and is not in the stream"
        );
    }
    a.shutdown().await;
    b.shutdown().await;
}

/// A node with one NATS server: a QoS 1 message is stored there before its
/// PUBACK, and the PUBACK reason is Success (who subscribes is not known
/// on one node of many).
#[tokio::test]
async fn a_single_nats_server_stores_too() {
    let nats = Nats::start(true);
    let a = alone_on(&nats, "a").await;
    let mut publisher = TestClient::connect(a.local_addr(), V5, "pub").await;
    publisher
        .send(Packet::Publish(numbered("x", 1, QoS::AtLeastOnce, 3)))
        .await;
    match publisher.recv().await {
        Packet::PubAck(ack) => {
            assert_eq!(ack.packet_id, pid(3));
            assert_eq!(ack.reason, ReasonCode::Success);
        }
        other => panic!("expected PUBACK, got {other:?}"),
    }
    assert_eq!(stored_payloads(&nats).await.get("m1"), Some(&1));
    a.shutdown().await;
}

/// Publishes at QoS 1 or 2 and completes the flow, waiting up to 30 s for
/// each answer (a stream leader election takes 4 to 9 s).
async fn publish_through_a_stall(client: &mut TestClient, publish: Publish) {
    let (qos, id) = (publish.qos, publish.packet_id);
    client.send(Packet::Publish(publish)).await;
    match (qos, answer(client).await) {
        (QoS::AtLeastOnce, Packet::PubAck(ack)) => assert_eq!(Some(ack.packet_id), id),
        (QoS::ExactlyOnce, Packet::PubRec(ack)) => {
            assert_eq!(Some(ack.packet_id), id);
            client.send(Packet::PubRel(ack)).await;
            assert!(matches!(answer(client).await, Packet::PubComp(_)));
        }
        (_, other) => panic!("unexpected {other:?}"),
    }
}

async fn answer(client: &mut TestClient) -> Packet {
    match client.next(Duration::from_secs(30)).await {
        Ok(Some(packet)) => packet,
        other => panic!("no answer within 30 s: {other:?}"),
    }
}

#[tokio::test]
async fn a_node_whose_nats_server_dies_gets_what_was_stored_meanwhile() {
    let mut nats = NatsCluster::start();
    let a = node(&[&nats.servers[0]], "a", 30).await;
    // B knows one server, and learns the others from it, as any NATS
    // client does.
    let b = node(&[&nats.servers[1]], "b", 30).await;
    let mut sub = TestClient::connect(b.local_addr(), V5, "sub").await;
    sub.subscribe("g/#", QoS::ExactlyOnce).await;
    let mut publisher = TestClient::connect(a.local_addr(), V5, "pub").await;
    // QoS 2, one at a time; B's server dies after the 20th, and the run
    // goes on for 200 more while B moves to another server.
    for n in 1..=220 {
        publish_through_a_stall(&mut publisher, numbered("g/x", n, QoS::ExactlyOnce, 1)).await;
        if n == 20 {
            nats.servers[1].kill();
        }
    }
    let mut expected: Vec<String> = (1..=220).map(|n| format!("m{n}")).collect();
    expected.sort();
    // What the node missed comes once it read the stream, which may be
    // electing a leader (its server was the one killed) for a few seconds.
    let mut received = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && !expected.iter().all(|p| received.contains(p)) {
        received.extend(drain_payloads(&mut sub, Duration::from_millis(500)).await);
    }
    received.extend(drain_payloads(&mut sub, QUIET).await);
    received.sort();
    let missing: Vec<_> = expected.iter().filter(|p| !received.contains(p)).collect();
    assert!(
        missing.is_empty(),
        "acknowledged and never delivered: {missing:?}"
    );
    assert_eq!(received, expected, "each exactly once");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_persistent_session_outlives_its_node_and_gets_every_stored_message() {
    let nats = Nats::start(true);
    let a = alone_on(&nats, "a").await;
    let b = alone_on(&nats, "b").await;
    let mut sub = TestClient::connect_with(a.local_addr(), persistent(V5, "dev"))
        .await
        .0;
    sub.subscribe("d/#", QoS::AtLeastOnce).await;
    let mut publisher = TestClient::connect(b.local_addr(), V5, "pub").await;
    for n in 1..=10 {
        publisher
            .publish_packet(numbered("d/x", n, QoS::AtLeastOnce, 1))
            .await;
    }
    // The first five acknowledged; the other five arrive and are not.
    for n in 1..=10 {
        let p = sub.recv_publish().await;
        assert_eq!(p.payload, format!("m{n}"));
        if n <= 5 {
            sub.ack(&p).await;
        }
    }
    // Node A dies with the session (it stops without handing anything over).
    sub.drop_connection();
    a.shutdown().await;
    for n in 11..=15 {
        publisher
            .publish_packet(numbered("d/x", n, QoS::AtLeastOnce, 1))
            .await;
    }
    // The client reconnects to B: the session is there, and every stored
    // message not acknowledged arrives.
    let (mut sub, ack) = TestClient::connect_with(b.local_addr(), persistent(V5, "dev")).await;
    assert!(
        ack.session_present,
        "the session was taken over from its mirror"
    );
    for n in 16..=20 {
        publisher
            .publish_packet(numbered("d/x", n, QoS::AtLeastOnce, 1))
            .await;
    }
    let mut got = drain_payloads(&mut sub, Duration::from_secs(4)).await;
    got.sort_by_key(|p| p[1..].parse::<u32>().unwrap_or(0));
    got.dedup();
    let expected: Vec<String> = (6..=20).map(|n| format!("m{n}")).collect();
    let missing: Vec<_> = expected.iter().filter(|p| !got.contains(p)).collect();
    assert!(
        missing.is_empty(),
        "never delivered: {missing:?} (got {got:?})"
    );
    b.shutdown().await;
}

#[tokio::test]
async fn qos2_deliveries_in_flight_when_their_node_dies_are_resent_not_repeated() {
    let nats = Nats::start(true);
    let a = alone_on(&nats, "a").await;
    let b = alone_on(&nats, "b").await;
    let mut sub = TestClient::connect_with(a.local_addr(), persistent(V5, "dev2"))
        .await
        .0;
    sub.subscribe("e/#", QoS::ExactlyOnce).await;
    let mut publisher = TestClient::connect(b.local_addr(), V5, "pub2").await;
    for n in 1..=6 {
        publisher
            .publish_packet(numbered("e/x", n, QoS::ExactlyOnce, 1))
            .await;
    }
    let mut ids = BTreeMap::new();
    for _ in 1..=6 {
        let p = sub.recv_publish().await;
        ids.insert(
            String::from_utf8_lossy(&p.payload).into_owned(),
            p.packet_id.unwrap(),
        );
    }
    // m1 and m2 completed, m3 released (PUBREL received, no PUBCOMP yet),
    // m4 to m6 received and not answered.
    for done in ["m1", "m2", "m3"] {
        sub.send(Packet::PubRec(PubAck::new(ids[done]))).await;
        match sub.recv().await {
            Packet::PubRel(rel) => assert_eq!(rel.packet_id, ids[done]),
            other => panic!("expected PUBREL, got {other:?}"),
        }
        if done != "m3" {
            sub.send(Packet::PubComp(PubAck::new(ids[done]))).await;
        }
    }
    sub.drop_connection();
    a.shutdown().await;

    let (mut sub, ack) = TestClient::connect_with(b.local_addr(), persistent(V5, "dev2")).await;
    assert!(ack.session_present);
    let mut published = Vec::new();
    let mut released = Vec::new();
    while let Ok(Some(packet)) = sub.next(Duration::from_secs(2)).await {
        match packet {
            Packet::Publish(p) => {
                let payload = String::from_utf8_lossy(&p.payload).into_owned();
                published.push((payload, p.packet_id.unwrap(), p.dup));
                sub.send(Packet::PubRec(PubAck::new(p.packet_id.unwrap())))
                    .await;
            }
            Packet::PubRel(rel) => {
                released.push(rel.packet_id);
                sub.send(Packet::PubComp(PubAck::new(rel.packet_id))).await;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    published.sort();
    let expected: Vec<_> = ["m4", "m5", "m6"]
        .iter()
        .map(|m| (m.to_string(), ids[*m], true))
        .collect();
    assert_eq!(
        published, expected,
        "only the messages not yet received by the client's application, again with DUP and their packet ids"
    );
    assert!(released.contains(&ids["m3"]), "m3's PUBREL sent again");
    b.shutdown().await;
}

#[tokio::test]
async fn a_qos2_publisher_whose_node_dies_gets_each_message_through_once() {
    let nats = Nats::start(true);
    let a = alone_on(&nats, "a").await;
    let b = alone_on(&nats, "b").await;
    let mut sub = TestClient::connect(b.local_addr(), V5, "sub3").await;
    sub.subscribe("i/#", QoS::ExactlyOnce).await;
    let mut publisher = TestClient::connect_with(a.local_addr(), persistent(V5, "pub3"))
        .await
        .0;
    // m1 and m2 accepted (PUBREC); m1's PUBREL is not sent yet, and the
    // client acts as if m2's PUBREC was lost on the way.
    for (n, id) in [(1, 7), (2, 8)] {
        publisher
            .send(Packet::Publish(numbered("i/x", n, QoS::ExactlyOnce, id)))
            .await;
        match publisher.recv().await {
            Packet::PubRec(rec) => assert_eq!(rec.packet_id, pid(id)),
            other => panic!("expected PUBREC, got {other:?}"),
        }
    }
    let mut got = drain_payloads(&mut sub, Duration::from_secs(1)).await;
    publisher.drop_connection();
    a.shutdown().await;

    let (mut publisher, ack) =
        TestClient::connect_with(b.local_addr(), persistent(V5, "pub3")).await;
    assert!(ack.session_present);
    publisher.send(Packet::PubRel(PubAck::new(pid(7)))).await;
    match publisher.recv().await {
        Packet::PubComp(comp) => assert_eq!(
            (comp.packet_id, comp.reason),
            (pid(7), ReasonCode::Success),
            "the id taken over with the session"
        ),
        other => panic!("expected PUBCOMP, got {other:?}"),
    }
    let again = Publish {
        dup: true,
        ..numbered("i/x", 2, QoS::ExactlyOnce, 8)
    };
    publisher.publish_packet(again).await;
    // The id is free again: a new message with it goes through.
    publisher
        .publish_packet(numbered("i/x", 3, QoS::ExactlyOnce, 7))
        .await;
    let deadline = Instant::now() + WAIT;
    while !got.contains(&"m3".to_owned()) && Instant::now() < deadline {
        got.extend(drain_payloads(&mut sub, Duration::from_millis(300)).await);
    }
    got.extend(drain_payloads(&mut sub, QUIET).await);
    got.sort();
    assert_eq!(got, ["m1", "m2", "m3"], "each exactly once");
    b.shutdown().await;
}

/// The exact interleaving behind QoS 2 doubles when a node died: the node
/// had stored a persistent publisher's QoS 2 message in the stream and died
/// before routing it (its PUBREC never went). The subscriber's session,
/// taken over by another node, reads the message from the stream; the
/// publisher sends it again (DUP) to that node, which writes it under the
/// id it was first written under (kept in the publisher's state in NATS
/// before the first write). The stream, which had that id, says so: the
/// node writes it again at a new place (a place below a session's cursor
/// would be taken for one it had) and routes it with that id, which this
/// node, having read the first copy, knows: the subscriber gets it once.
#[tokio::test]
async fn a_qos2_message_stored_by_a_node_that_died_before_routing_it_arrives_once() {
    let nats = Nats::start(true);
    let a = alone_on(&nats, "a").await;
    let b = alone_on(&nats, "b").await;
    let mut sub = TestClient::connect_with(a.local_addr(), persistent(V5, "sub5"))
        .await
        .0;
    sub.subscribe("o/#", QoS::ExactlyOnce).await;
    sub.drop_connection();
    let kv = jetstream_at(&nats)
        .await
        .get_key_value("test-mirrors")
        .await
        .expect("the mirrors bucket");
    let mut states = kv
        .watch(session_key("pub5"))
        .await
        .expect("a watch on the publisher's state");
    let mut publisher = TestClient::connect_with(a.local_addr(), persistent(V5, "pub5"))
        .await
        .0;
    publisher
        .send(Packet::Publish(numbered("o/x", 1, QoS::ExactlyOnce, 9)))
        .await;
    match publisher.recv().await {
        Packet::PubRec(rec) => assert_eq!(rec.packet_id, pid(9)),
        other => panic!("expected PUBREC, got {other:?}"),
    }
    // The publisher's state as it was while m1 was being written: its id
    // there, not yet its place.
    let writing = loop {
        let entry = tokio::time::timeout(WAIT, states.next())
            .await
            .expect("the publisher's state written")
            .expect("the watch goes on")
            .expect("an entry");
        let mirror = decode_mirror(&entry.value).expect("a mirror record");
        if let Some((9, Kept::Writing(_))) = mirror.inbound.first() {
            break entry.value;
        }
    };
    publisher.drop_connection();
    a.shutdown().await;
    // As if node A had died right after the stream stored m1.
    kv.put(session_key("pub5"), writing)
        .await
        .expect("the state put back");

    let (mut sub, ack) = TestClient::connect_with(b.local_addr(), persistent(V5, "sub5")).await;
    assert!(ack.session_present, "the subscriber's session taken over");
    let (mut publisher, ack) =
        TestClient::connect_with(b.local_addr(), persistent(V5, "pub5")).await;
    assert!(ack.session_present, "the publisher's session taken over");
    let again = Publish {
        dup: true,
        ..numbered("o/x", 1, QoS::ExactlyOnce, 9)
    };
    publisher.publish_packet(again).await;
    let got = drain_payloads(&mut sub, Duration::from_secs(2)).await;
    assert_eq!(
        got,
        ["m1"],
        "once: read from the stream, and its DUP known by its id"
    );
    assert_eq!(
        stored_payloads(&nats).await.get("m1"),
        Some(&2),
        "the first write, never routed, and the second"
    );
    b.shutdown().await;
}

/// A stored message whose live copy never reached a node, though neither
/// node's NATS link dropped (NATS core lost it, as while the routes between
/// restarted servers form again: here it was never sent), is routed there
/// from the messages stream a moment later, once. Before every node
/// followed the stream, it was lost.
#[tokio::test]
async fn a_stored_message_whose_live_copy_never_came_still_arrives() {
    let nats = Nats::start(true);
    let a = alone_on(&nats, "a").await;
    let mut sub = TestClient::connect(a.local_addr(), V5, "sub").await;
    sub.subscribe("l/#", QoS::AtLeastOnce).await;
    let mut publisher = TestClient::connect(a.local_addr(), V5, "pub").await;
    publisher
        .publish_packet(numbered("l/x", 1, QoS::AtLeastOnce, 1))
        .await;
    let got = drain_payloads(&mut sub, Duration::from_secs(2)).await;
    assert_eq!(got, ["m1"], "its own, routed as stored, not again");
    // m2 as another node stores it, its live copy lost on the way.
    let js = jetstream_at(&nats).await;
    let stream = js.get_stream(STREAM).await.expect("the messages stream");
    let m1 = stream
        .get_last_raw_message_by_subject("test.s.m.l.x")
        .await
        .expect("m1 stored");
    let mut record = m1.payload.to_vec();
    assert!(record.ends_with(b"m1"), "the record ends with the payload");
    let at = record.len() - 1;
    record[at] = b'2';
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Tern-Id", "gone:s1");
    js.publish_with_headers("test.s.m.l.x", headers, record.into())
        .await
        .expect("published")
        .await
        .expect("stored");
    let got = drain_payloads(&mut sub, Duration::from_secs(3)).await;
    assert_eq!(got, ["m2"], "routed from the stream, once");
    a.shutdown().await;
}

/// A subscriber that does not keep up (here it acknowledges nothing for a
/// while; in the crash test of NATS servers, its QoS 2 deliveries waited
/// for the sessions' bucket to elect a leader) fills its queue: the stored
/// messages beyond it are not dropped but stay in the messages stream, and
/// are read again from there once it has room. Each arrives once, in
/// order. Before, the 30 beyond the queue were dropped.
#[tokio::test]
async fn stored_messages_beyond_a_full_queue_wait_in_the_stream() {
    let nats = Nats::start(true);
    let config = Config {
        cluster: Some(ClusterConfig {
            node: Some("a".into()),
            ..nats.cluster()
        }),
        max_queued_messages: 10,
        max_inflight_messages: 1,
        ..test_config()
    };
    let a = Broker::start(config).await.expect("the node joins");
    let mut sub = TestClient::connect_with(a.local_addr(), persistent(V5, "slow"))
        .await
        .0;
    sub.subscribe("q/#", QoS::ExactlyOnce).await;
    let mut publisher = TestClient::connect(a.local_addr(), V5, "pub").await;
    for n in 1..=41u16 {
        publisher
            .publish_packet(numbered("q/x", n.into(), QoS::AtLeastOnce, n))
            .await;
    }
    // One in flight, ten queued, thirty in the stream.
    let got = drain_payloads(&mut sub, Duration::from_secs(3)).await;
    let expected: Vec<String> = (1..=41).map(|n| format!("m{n}")).collect();
    assert_eq!(got, expected, "each once, in order");
    a.shutdown().await;
}

/// A session that moves to another node right after its messages were
/// delivered gets none of them again there, though that node's follower,
/// a second behind, finds them in the stream without their live copies
/// (it had no subscriber for them): the session brings the places it
/// completed. Before, they came again with new packet ids (the node crash
/// test's QoS 2 doubles, runs of consecutive messages with DUP 0).
#[tokio::test]
async fn a_session_moved_right_after_its_deliveries_gets_none_of_them_again() {
    let nats = Nats::start(true);
    let a = alone_on(&nats, "a").await;
    let b = alone_on(&nats, "b").await;
    let mut sub = TestClient::connect_with(a.local_addr(), persistent(V5, "mover"))
        .await
        .0;
    sub.subscribe("mv/#", QoS::AtLeastOnce).await;
    let mut publisher = TestClient::connect(a.local_addr(), V5, "pub").await;
    for n in 1..=20u16 {
        publisher
            .publish_packet(numbered("mv/x", n.into(), QoS::AtLeastOnce, n))
            .await;
    }
    let got = drain_payloads(&mut sub, Duration::from_millis(200)).await;
    assert_eq!(got.len(), 20, "all on A: {got:?}");
    sub.drop_connection();
    let (mut sub, ack) = TestClient::connect_with(b.local_addr(), persistent(V5, "mover")).await;
    assert!(ack.session_present);
    let again = drain_payloads(&mut sub, Duration::from_secs(3)).await;
    assert!(again.is_empty(), "sent again on B: {again:?}");
    publisher
        .publish_packet(numbered("mv/x", 21, QoS::AtLeastOnce, 21))
        .await;
    let got = drain_payloads(&mut sub, Duration::from_secs(2)).await;
    assert_eq!(got, ["m21"], "and what comes after, once");
    a.shutdown().await;
    b.shutdown().await;
}

/// The publishing node's NATS server dies under QoS 1 load: the live
/// copies it had taken (a PUBACK waits for a round trip showing that) but
/// not yet passed on to the subscriber's server die with it. The
/// subscriber's node, following the stream, routes those whose live copies
/// did not arrive, and only those. Before (the publishing node did not send
/// them again), 1 or 2 acknowledged messages were lost in 4 runs of 5.
#[tokio::test]
async fn live_copies_lost_with_the_publishing_nodes_nats_server_still_arrive() {
    let mut nats = NatsCluster::start();
    let a = node(&[&nats.servers[0]], "a", 30).await;
    let b = node(&[&nats.servers[1]], "b", 30).await;
    let mut sub = TestClient::connect(b.local_addr(), V5, "sub").await;
    sub.subscribe("h/#", QoS::AtLeastOnce).await;
    let mut publisher = TestClient::connect(a.local_addr(), V5, "pub").await;
    until_routed(&mut publisher, &mut sub, "h/probe").await;
    let total = 3_000u16;
    let window = 200u16;
    let (mut sent, mut acked) = (0u16, std::collections::BTreeSet::new());
    let mut received = Vec::new();
    let mut killed = false;
    let deadline = Instant::now() + Duration::from_secs(90);
    while acked.len() < usize::from(total) {
        assert!(
            Instant::now() < deadline,
            "only {} of {total} acknowledged",
            acked.len()
        );
        while sent < total && sent - (acked.len() as u16) < window {
            sent += 1;
            publisher
                .send(Packet::Publish(numbered(
                    "h/x",
                    sent.into(),
                    QoS::AtLeastOnce,
                    sent,
                )))
                .await;
        }
        if let Ok(Some(Packet::PubAck(ack))) = publisher.next(Duration::from_millis(100)).await {
            acked.insert(ack.packet_id.get());
        }
        if !killed && acked.len() >= 1_000 {
            nats.servers[0].kill();
            killed = true;
        }
        // The subscriber reads as it goes.
        while let Ok(Some(packet)) = sub.next(Duration::ZERO).await {
            if let Packet::Publish(p) = packet {
                sub.ack(&p).await;
                received.push(String::from_utf8_lossy(&p.payload).into_owned());
            }
        }
    }
    let expected: Vec<String> = (1..=total).map(|n| format!("m{n}")).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && !expected.iter().all(|p| received.contains(p)) {
        received.extend(drain_payloads(&mut sub, Duration::from_millis(500)).await);
    }
    let missing: Vec<_> = expected.iter().filter(|p| !received.contains(p)).collect();
    assert!(
        missing.is_empty(),
        "acknowledged and never delivered: {} {missing:?}",
        missing.len()
    );
    // Those it had are not sent to it again: dropped by their ids.
    received.sort_by_key(|p| p[1..].parse::<u32>().unwrap_or(0));
    let mut twice = received.clone();
    twice.dedup();
    assert_eq!(received.len(), twice.len(), "delivered twice");
    a.shutdown().await;
    b.shutdown().await;
}
