//! Shared subscriptions (`$share/{group}/{filter}`, MQTT 5 spec 4.8.2).

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use tern_broker::BrokerHandle;
use tern_codec::*;

const V5: ProtocolVersion = ProtocolVersion::V5;
const V311: ProtocolVersion = ProtocolVersion::V3_1_1;

/// Publishes `n` QoS 1 messages on `topic` with payloads "0".."n-1". The
/// PUBACKs come after routing, so every delivery is queued on return.
async fn publish_numbered(publisher: &mut TestClient, topic: &str, n: usize) {
    for i in 0..n {
        let mut p = publish_packet(topic, b"", QoS::AtLeastOnce, 1);
        p.payload = Bytes::from(i.to_string());
        publisher.publish_packet(p).await;
    }
}

/// Receives (and acknowledges) PUBLISHes from any of `clients` until `n` have
/// arrived in all, then checks that no more come. Returns each client's
/// payloads, in arrival order.
async fn receive_n(clients: &mut [&mut TestClient], n: usize) -> Vec<Vec<String>> {
    let deadline = Instant::now() + WAIT;
    let mut got = vec![Vec::new(); clients.len()];
    while got.iter().map(Vec::len).sum::<usize>() < n {
        assert!(Instant::now() < deadline, "only {got:?} within {WAIT:?}");
        for (client, got) in clients.iter_mut().zip(&mut got) {
            // Reading is cancel-safe: bytes read so far stay buffered.
            match client.next(Duration::from_millis(10)).await {
                Err(_) => {}
                Ok(Some(Packet::Publish(p))) => {
                    client.ack(&p).await;
                    got.push(String::from_utf8(p.payload.to_vec()).unwrap());
                }
                Ok(other) => panic!("expected PUBLISH, got {other:?}"),
            }
        }
    }
    for client in clients.iter_mut() {
        client.expect_nothing().await;
    }
    got
}

/// The payloads "0".."n-1".
fn numbered(n: usize) -> BTreeSet<String> {
    (0..n).map(|i| i.to_string()).collect()
}

/// Asserts the members of one group got every message exactly once between
/// them, and each got some.
fn assert_split(members: &[Vec<String>], n: usize) {
    let all: Vec<&String> = members.iter().flatten().collect();
    assert_eq!(all.len(), n, "each message once: {members:?}");
    let distinct: BTreeSet<String> = all.into_iter().cloned().collect();
    assert_eq!(distinct, numbered(n), "{members:?}");
    for m in members {
        assert!(!m.is_empty(), "every member gets some: {members:?}");
    }
}

#[tokio::test]
async fn group_members_share_messages_round_robin() {
    let broker = start().await;
    let addr = broker.local_addr();
    let mut m1 = TestClient::connect(addr, V5, "rr-1").await;
    let mut m2 = TestClient::connect(addr, V5, "rr-2").await;
    for m in [&mut m1, &mut m2] {
        assert_eq!(
            m.subscribe("$share/g/s/#", QoS::AtLeastOnce).await,
            ReasonCode::GrantedQoS1
        );
    }
    let mut publisher = TestClient::connect(addr, V5, "rr-pub").await;
    publish_numbered(&mut publisher, "s/x", 10).await;

    let got = receive_n(&mut [&mut m1, &mut m2], 10).await;
    assert_split(&got, 10);
    // Round robin between two online members: an even split.
    assert_eq!((got[0].len(), got[1].len()), (5, 5), "{got:?}");
}

#[tokio::test]
async fn each_group_and_each_plain_subscriber_gets_every_message() {
    let broker = start().await;
    let addr = broker.local_addr();
    let mut g1 = Vec::new();
    let mut g2 = Vec::new();
    for (group, members, name) in [("g1", &mut g1, "ga"), ("g2", &mut g2, "gb")] {
        for i in 0..2 {
            let mut m = TestClient::connect(addr, V5, &format!("{name}-{i}")).await;
            let filter = format!("$share/{group}/s/#");
            assert_eq!(
                m.subscribe(&filter, QoS::AtMostOnce).await,
                ReasonCode::Success
            );
            members.push(m);
        }
    }
    let mut plain = TestClient::connect(addr, V5, "plain").await;
    assert_eq!(
        plain.subscribe("s/#", QoS::AtMostOnce).await,
        ReasonCode::Success
    );
    let mut publisher = TestClient::connect(addr, V5, "groups-pub").await;
    publish_numbered(&mut publisher, "s/y", 10).await;

    for members in [&mut g1, &mut g2] {
        let mut members: Vec<&mut TestClient> = members.iter_mut().collect();
        assert_split(&receive_n(&mut members, 10).await, 10);
    }
    let got = receive_n(&mut [&mut plain], 10).await.remove(0);
    assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), numbered(10));
}

#[tokio::test]
async fn v311_clients_can_share_a_subscription() {
    let broker = start().await;
    let addr = broker.local_addr();
    let mut m1 = TestClient::connect(addr, V311, "v311-1").await;
    let mut m2 = TestClient::connect(addr, V311, "v311-2").await;
    for m in [&mut m1, &mut m2] {
        assert_eq!(
            m.subscribe("$share/old/s/#", QoS::AtLeastOnce).await,
            ReasonCode::GrantedQoS1
        );
    }
    let mut publisher = TestClient::connect(addr, V311, "v311-pub").await;
    publish_numbered(&mut publisher, "s/z", 10).await;
    assert_split(&receive_n(&mut [&mut m1, &mut m2], 10).await, 10);
}

/// Waits until the broker holds `n` subscriptions.
async fn wait_for_subscription_count(broker: &BrokerHandle, n: usize) {
    let deadline = Instant::now() + WAIT;
    while broker.state().tree().len() != n {
        assert!(
            Instant::now() < deadline,
            "subscription count stayed {} instead of {n}",
            broker.state().tree().len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_member_whose_session_ended_stops_receiving() {
    let broker = start().await;
    let addr = broker.local_addr();
    let mut leaving = TestClient::connect(addr, V5, "leaving").await;
    let mut staying = TestClient::connect(addr, V5, "staying").await;
    for m in [&mut leaving, &mut staying] {
        assert_eq!(
            m.subscribe("$share/g/s/#", QoS::AtLeastOnce).await,
            ReasonCode::GrantedQoS1
        );
    }
    let mut publisher = TestClient::connect(addr, V5, "leave-pub").await;
    publish_numbered(&mut publisher, "s/before", 4).await;
    assert_split(&receive_n(&mut [&mut leaving, &mut staying], 4).await, 4);

    // Session expiry 0: the session, and its membership, end with the connection.
    leaving.disconnect().await;
    wait_for_subscription_count(&broker, 1).await;
    publish_numbered(&mut publisher, "s/after", 10).await;
    let got = receive_n(&mut [&mut staying], 10).await.remove(0);
    assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), numbered(10));
}

#[tokio::test]
async fn no_local_on_a_shared_subscription_is_a_protocol_error() {
    let broker = start().await;
    let mut c = TestClient::connect(broker.local_addr(), V5, "shared-nl").await;
    c.send(Packet::Subscribe(Subscribe {
        packet_id: pid(4),
        filters: vec![SubscribeFilter {
            filter: "$share/g/s/#".into(),
            options: SubscriptionOptions {
                no_local: true,
                ..Default::default()
            },
        }],
        properties: SubscribeProperties::default(),
    }))
    .await;
    let disconnect = c.expect_closed().await.expect("DISCONNECT before close");
    assert_eq!(disconnect.reason, ReasonCode::ProtocolError);
}

#[tokio::test]
async fn retained_messages_are_not_sent_on_a_shared_subscribe() {
    let broker = start().await;
    let addr = broker.local_addr();
    let mut publisher = TestClient::connect(addr, V5, "sr-pub").await;
    publisher
        .publish("sr/t", b"old", QoS::AtLeastOnce, true)
        .await;

    let mut member = TestClient::connect(addr, V5, "sr-member").await;
    assert_eq!(
        member.subscribe("$share/g/sr/#", QoS::AtMostOnce).await,
        ReasonCode::Success
    );
    let mut plain = TestClient::connect(addr, V5, "sr-plain").await;
    assert_eq!(
        plain.subscribe("sr/#", QoS::AtMostOnce).await,
        ReasonCode::Success
    );
    let got = plain.recv_publish().await;
    assert_eq!((got.topic.as_str(), got.retain), ("sr/t", true));
    member.expect_nothing().await;

    // The shared subscription itself receives live messages.
    publisher
        .publish("sr/t", b"new", QoS::AtMostOnce, false)
        .await;
    let got = member.recv_publish().await;
    assert_eq!((&got.payload[..], got.retain), (&b"new"[..], false));
}
