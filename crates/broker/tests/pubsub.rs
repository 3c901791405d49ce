//! Publish/subscribe through a real socket: QoS 0/1/2 flows in both
//! directions, effective QoS, exactly-once, ordering, wildcards, retained.

mod common;

use common::*;
use tern_codec::*;

const V4: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;

#[tokio::test]
async fn qos0_1_2_delivered_at_min_of_published_and_granted() {
    let broker = start().await;
    let addr = broker.local_addr();
    for version in [V4, V5] {
        for granted in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let mut sub = TestClient::connect(addr, version, "sub").await;
            sub.subscribe("q/t", granted).await;
            let mut publisher = TestClient::connect(addr, version, "pub").await;
            for published in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
                publisher.publish("q/t", b"x", published, false).await;
                let p = sub.recv_publish().await;
                assert_eq!(
                    p.qos,
                    published.min(granted),
                    "{version:?} pub {published:?} sub {granted:?}"
                );
                assert_eq!(p.packet_id.is_some(), p.qos != QoS::AtMostOnce);
                sub.ack(&p).await;
            }
            publisher.disconnect().await;
            sub.disconnect().await;
        }
    }
}

#[tokio::test]
async fn qos2_resent_publish_before_pubrel_is_routed_once() {
    let broker = start().await;
    let mut sub = TestClient::connect(broker.local_addr(), V5, "sub").await;
    sub.subscribe("x", QoS::ExactlyOnce).await;
    let mut publisher = TestClient::connect(broker.local_addr(), V5, "pub").await;
    let p = publish_packet("x", b"once", QoS::ExactlyOnce, 7);
    publisher.send(Packet::Publish(p.clone())).await;
    assert!(matches!(publisher.recv().await, Packet::PubRec(a) if a.packet_id == pid(7)));
    // The publisher did not see PUBREC (say) and sends again with DUP.
    publisher
        .send(Packet::Publish(Publish { dup: true, ..p }))
        .await;
    assert!(matches!(publisher.recv().await, Packet::PubRec(a) if a.packet_id == pid(7)));
    publisher.send(Packet::PubRel(PubAck::new(pid(7)))).await;
    assert!(
        matches!(publisher.recv().await, Packet::PubComp(a) if a.packet_id == pid(7) && a.reason == ReasonCode::Success)
    );
    let got = sub.recv_publish().await;
    assert_eq!(got.payload, "once");
    sub.ack(&got).await;
    sub.expect_nothing().await;
    // After PUBREL the id is free: the same id is a new message.
    publisher
        .publish_packet(publish_packet("x", b"again", QoS::ExactlyOnce, 7))
        .await;
    assert_eq!(sub.recv_publish().await.payload, "again");
}

#[tokio::test]
async fn pubrel_for_unknown_id_gets_pubcomp_not_found_in_v5() {
    let broker = start().await;
    let mut c = TestClient::connect(broker.local_addr(), V5, "c").await;
    c.send(Packet::PubRel(PubAck::new(pid(9)))).await;
    match c.recv().await {
        Packet::PubComp(a) => assert_eq!(a.reason, ReasonCode::PacketIdentifierNotFound),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn outbound_qos2_flow_with_pubrec_pubrel_pubcomp() {
    let broker = start().await;
    let mut sub = TestClient::connect(broker.local_addr(), V4, "sub").await;
    sub.subscribe("x", QoS::ExactlyOnce).await;
    let mut publisher = TestClient::connect(broker.local_addr(), V4, "pub").await;
    publisher.publish("x", b"1", QoS::ExactlyOnce, false).await;
    let p = sub.recv_publish().await;
    assert_eq!(p.qos, QoS::ExactlyOnce);
    let id = p.packet_id.unwrap();
    sub.send(Packet::PubRec(PubAck::new(id))).await;
    assert!(matches!(sub.recv().await, Packet::PubRel(r) if r.packet_id == id));
    // A repeated PUBREC is answered with PUBREL again.
    sub.send(Packet::PubRec(PubAck::new(id))).await;
    assert!(matches!(sub.recv().await, Packet::PubRel(r) if r.packet_id == id));
    sub.send(Packet::PubComp(PubAck::new(id))).await;
    sub.expect_nothing().await;
}

#[tokio::test]
async fn in_order_delivery_per_publisher_at_qos1_and_qos2() {
    let broker = start().await;
    for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let mut sub = TestClient::connect(broker.local_addr(), V5, "sub").await;
        sub.subscribe("o/#", qos).await;
        let mut publisher = TestClient::connect(broker.local_addr(), V5, "pub").await;
        // Publish 200 without waiting for acks, with distinct ids.
        for i in 0..200u16 {
            let payload: &'static [u8] = Box::leak(i.to_string().into_bytes().into_boxed_slice());
            publisher
                .send(Packet::Publish(publish_packet("o/t", payload, qos, i + 1)))
                .await;
        }
        // Acknowledge as a streaming client: PUBRELs interleave with PUBLISHes.
        let mut next = 0u16;
        while next < 200 {
            match sub.recv().await {
                Packet::Publish(p) => {
                    assert_eq!(p.payload, next.to_string().as_bytes(), "{qos:?}");
                    next += 1;
                    let id = p.packet_id.unwrap();
                    let ack = PubAck::new(id);
                    sub.send(if qos == QoS::AtLeastOnce {
                        Packet::PubAck(ack)
                    } else {
                        Packet::PubRec(ack)
                    })
                    .await;
                }
                Packet::PubRel(r) => sub.send(Packet::PubComp(PubAck::new(r.packet_id))).await,
                other => panic!("unexpected {other:?}"),
            }
        }
        publisher.disconnect().await;
        sub.disconnect().await;
    }
}

#[tokio::test]
async fn wildcards_and_dollar_topics() {
    let broker = start().await;
    let addr = broker.local_addr();
    let mut plus = TestClient::connect(addr, V4, "plus").await;
    plus.subscribe("house/+/temp", QoS::AtMostOnce).await;
    let mut hash = TestClient::connect(addr, V4, "hash").await;
    hash.subscribe("house/#", QoS::AtMostOnce).await;
    let mut all = TestClient::connect(addr, V4, "all").await;
    all.subscribe("#", QoS::AtMostOnce).await;
    let mut sys = TestClient::connect(addr, V4, "sys").await;
    sys.subscribe("$SYS/#", QoS::AtMostOnce).await;
    let mut publisher = TestClient::connect(addr, V4, "pub").await;

    publisher
        .publish("house/room1/temp", b"22.5", QoS::AtMostOnce, false)
        .await;
    for c in [&mut plus, &mut hash, &mut all] {
        assert_eq!(c.recv_publish().await.topic, "house/room1/temp");
    }
    publisher
        .publish("house", b"h", QoS::AtMostOnce, false)
        .await;
    assert_eq!(hash.recv_publish().await.topic, "house"); // '#' matches the parent
    assert_eq!(all.recv_publish().await.topic, "house");
    publisher
        .publish("house/room1/hum", b"h", QoS::AtMostOnce, false)
        .await;
    assert_eq!(hash.recv_publish().await.topic, "house/room1/hum");
    assert_eq!(all.recv_publish().await.topic, "house/room1/hum");
    plus.expect_nothing().await;

    // '$' topics are not matched by a leading wildcard [MQTT-4.7.2-1].
    publisher
        .publish("$SYS/x", b"s", QoS::AtMostOnce, false)
        .await;
    assert_eq!(sys.recv_publish().await.topic, "$SYS/x");
    all.expect_nothing().await;
}

#[tokio::test]
async fn invalid_filters_are_refused_in_suback() {
    let broker = start().await;
    let mut v4 = TestClient::connect(broker.local_addr(), V4, "v4").await;
    assert_eq!(v4.subscribe("a/#/b", QoS::AtMostOnce).await as u8, 0x80);
    assert_eq!(
        v4.subscribe("a/b", QoS::AtLeastOnce).await,
        ReasonCode::GrantedQoS1
    );
    let mut v5 = TestClient::connect(broker.local_addr(), V5, "v5").await;
    assert_eq!(
        v5.subscribe("a+", QoS::AtMostOnce).await,
        ReasonCode::TopicFilterInvalid
    );
}

#[tokio::test]
async fn several_filters_in_one_subscribe_and_unsubscribe() {
    let broker = start().await;
    let mut c = TestClient::connect(broker.local_addr(), V4, "c").await;
    let options = |qos| SubscriptionOptions {
        qos,
        ..Default::default()
    };
    c.send(Packet::Subscribe(Subscribe {
        packet_id: pid(3),
        filters: vec![
            SubscribeFilter {
                filter: "a".into(),
                options: options(QoS::AtMostOnce),
            },
            SubscribeFilter {
                filter: "b".into(),
                options: options(QoS::AtLeastOnce),
            },
            SubscribeFilter {
                filter: "c".into(),
                options: options(QoS::ExactlyOnce),
            },
        ],
        properties: Default::default(),
    }))
    .await;
    match c.recv().await {
        Packet::SubAck(a) => assert_eq!(
            a.reasons,
            vec![
                ReasonCode::Success,
                ReasonCode::GrantedQoS1,
                ReasonCode::GrantedQoS2
            ]
        ),
        other => panic!("{other:?}"),
    }
    c.send(Packet::Unsubscribe(Unsubscribe {
        packet_id: pid(4),
        filters: vec!["a".into(), "b".into()],
        properties: Default::default(),
    }))
    .await;
    assert!(matches!(c.recv().await, Packet::UnsubAck(a) if a.packet_id == pid(4)));
    let mut publisher = TestClient::connect(broker.local_addr(), V4, "p").await;
    publisher.publish("a", b"1", QoS::AtMostOnce, false).await;
    publisher.publish("b", b"2", QoS::AtMostOnce, false).await;
    publisher.publish("c", b"3", QoS::AtMostOnce, false).await;
    assert_eq!(c.recv_publish().await.topic, "c");
    c.expect_nothing().await;
    c.send(Packet::PingReq).await;
    assert_eq!(c.recv().await, Packet::PingResp);
}

#[tokio::test]
async fn retained_latest_per_topic_sent_on_subscribe_and_cleared_by_empty_payload() {
    let broker = start().await;
    let addr = broker.local_addr();
    let mut publisher = TestClient::connect(addr, V4, "p").await;
    publisher
        .publish("r/1", b"old", QoS::AtLeastOnce, true)
        .await;
    publisher
        .publish("r/1", b"new", QoS::AtLeastOnce, true)
        .await;
    publisher
        .publish("r/2", b"two", QoS::AtMostOnce, true)
        .await;

    let mut sub = TestClient::connect(addr, V4, "s").await;
    sub.subscribe("r/+", QoS::AtLeastOnce).await;
    let mut got = [sub.recv_publish().await, sub.recv_publish().await];
    got.sort_by(|a, b| a.topic.cmp(&b.topic));
    assert_eq!(
        (got[0].topic.as_str(), &got[0].payload[..], got[0].retain),
        ("r/1", &b"new"[..], true)
    );
    assert_eq!(got[0].qos, QoS::AtLeastOnce);
    assert_eq!(
        (got[1].topic.as_str(), got[1].qos),
        ("r/2", QoS::AtMostOnce)
    );
    sub.ack(&got[0]).await;
    sub.expect_nothing().await;

    // Live messages to an existing subscription carry retain = 0.
    publisher
        .publish("r/1", b"live", QoS::AtMostOnce, true)
        .await;
    let live = sub.recv_publish().await;
    assert!(!live.retain);

    // An empty retained payload clears the topic.
    publisher.publish("r/1", b"", QoS::AtMostOnce, true).await;
    assert_eq!(sub.recv_publish().await.payload.len(), 0);
    let mut late = TestClient::connect(addr, V4, "late").await;
    late.subscribe("r/#", QoS::AtMostOnce).await;
    assert_eq!(late.recv_publish().await.topic, "r/2");
    late.expect_nothing().await;
}
