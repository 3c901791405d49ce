//! MQTT 5 features end to end: topic aliases, message expiry, forwarded
//! properties, subscription identifiers, subscription options, flow control,
//! packet size limits, reason strings and codes.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use tern_codec::*;

const V5: ProtocolVersion = ProtocolVersion::V5;

/// Connects a v5 client with clean start after `edit` adjusted its CONNECT.
async fn connect_v5(
    addr: SocketAddr,
    client_id: &str,
    edit: impl FnOnce(&mut Connect),
) -> (TestClient, ConnAck) {
    let mut connect = connect_packet(V5, client_id);
    edit(&mut connect);
    let (client, connack) = TestClient::connect_with(addr, connect).await;
    assert_eq!(connack.reason, ReasonCode::Success, "CONNACK {connack:?}");
    (client, connack)
}

/// Sends one SUBSCRIBE with several filters; returns the SUBACK reasons.
async fn subscribe_many(client: &mut TestClient, filters: &[(&str, QoS)]) -> Vec<ReasonCode> {
    client
        .send(Packet::Subscribe(Subscribe {
            packet_id: pid(77),
            filters: filters
                .iter()
                .map(|&(filter, qos)| SubscribeFilter {
                    filter: filter.into(),
                    options: SubscriptionOptions {
                        qos,
                        ..Default::default()
                    },
                })
                .collect(),
            properties: SubscribeProperties::default(),
        }))
        .await;
    match client.recv().await {
        Packet::SubAck(ack) => {
            assert_eq!(ack.packet_id, pid(77));
            ack.reasons
        }
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

#[tokio::test]
async fn topic_alias_from_client_is_resolved_and_can_be_redefined() {
    let broker = start().await;
    let addr = broker.local_addr();
    let mut sub = TestClient::connect(addr, V5, "alias-in-sub").await;
    assert_eq!(
        sub.subscribe("ta/#", QoS::AtMostOnce).await,
        ReasonCode::Success
    );
    let (mut publisher, connack) = connect_v5(addr, "alias-in-pub", |_| {}).await;
    assert!(connack.properties.topic_alias_maximum.unwrap_or(0) >= 1);

    let mut p = publish_packet("ta/one", b"1", QoS::AtMostOnce, 0);
    p.properties.topic_alias = Some(1);
    publisher.publish_packet(p).await;
    let mut p = publish_packet("", b"2", QoS::AtMostOnce, 0);
    p.properties.topic_alias = Some(1);
    publisher.publish_packet(p).await;
    // Redefine alias 1, then use it again.
    let mut p = publish_packet("ta/two", b"3", QoS::AtMostOnce, 0);
    p.properties.topic_alias = Some(1);
    publisher.publish_packet(p).await;
    let mut p = publish_packet("", b"4", QoS::AtLeastOnce, 5);
    p.properties.topic_alias = Some(1);
    publisher.publish_packet(p).await;

    for (topic, payload) in [
        ("ta/one", "1"),
        ("ta/one", "2"),
        ("ta/two", "3"),
        ("ta/two", "4"),
    ] {
        let got = sub.recv_publish().await;
        assert_eq!(got.topic, topic, "{got:?}");
        assert_eq!(got.payload, payload);
        // The subscriber announced no Topic Alias Maximum: no alias towards it.
        assert_eq!(got.properties.topic_alias, None);
    }
    sub.expect_nothing().await;
}

#[tokio::test]
async fn topic_alias_to_client_respects_its_maximum() {
    let broker = start().await;
    let addr = broker.local_addr();
    let (mut aliased, _) = connect_v5(addr, "alias-out-sub", |c| {
        c.properties.topic_alias_maximum = Some(2)
    })
    .await;
    assert_eq!(
        aliased.subscribe("tb/#", QoS::AtMostOnce).await,
        ReasonCode::Success
    );
    let mut plain = TestClient::connect(addr, V5, "alias-out-plain").await;
    assert_eq!(
        plain.subscribe("tb/#", QoS::AtMostOnce).await,
        ReasonCode::Success
    );
    let mut publisher = TestClient::connect(addr, V5, "alias-out-pub").await;

    let sends: [(&str, &'static [u8]); 7] = [
        ("tb/a", b"a1"),
        ("tb/a", b"a2"),
        ("tb/a", b"a3"),
        ("tb/b", b"b1"),
        ("tb/c", b"c1"),
        ("tb/c", b"c2"),
        ("tb/b", b"b2"),
    ];
    for (topic, payload) in sends {
        publisher
            .publish(topic, payload, QoS::AtLeastOnce, false)
            .await;
    }

    // First on a topic: full topic and a new alias; later: empty topic and
    // the same alias. A third topic exceeds the maximum of 2: no alias.
    let a1 = aliased.recv_publish().await;
    assert_eq!(a1.topic, "tb/a");
    let alias_a = a1.properties.topic_alias.expect("alias for tb/a");
    assert!((1..=2).contains(&alias_a), "{a1:?}");
    for payload in ["a2", "a3"] {
        let p = aliased.recv_publish().await;
        assert_eq!(p.payload, payload);
        assert_eq!(p.topic, "", "{p:?}");
        assert_eq!(p.properties.topic_alias, Some(alias_a));
    }
    let b1 = aliased.recv_publish().await;
    assert_eq!((b1.topic.as_str(), &b1.payload[..]), ("tb/b", &b"b1"[..]));
    let alias_b = b1.properties.topic_alias.expect("alias for tb/b");
    assert!((1..=2).contains(&alias_b) && alias_b != alias_a, "{b1:?}");
    for payload in ["c1", "c2"] {
        let p = aliased.recv_publish().await;
        assert_eq!(p.payload, payload);
        assert_eq!(p.topic, "tb/c", "{p:?}");
        assert_eq!(p.properties.topic_alias, None, "{p:?}");
    }
    let b2 = aliased.recv_publish().await;
    assert_eq!(b2.payload, "b2");
    assert_eq!(b2.topic, "");
    assert_eq!(b2.properties.topic_alias, Some(alias_b));
    aliased.expect_nothing().await;

    // A client without Topic Alias Maximum never gets aliases.
    for (topic, payload) in sends {
        let p = plain.recv_publish().await;
        assert_eq!((p.topic.as_str(), &p.payload[..]), (topic, payload));
        assert_eq!(p.properties.topic_alias, None, "{p:?}");
    }
    plain.expect_nothing().await;
}

/// A persistent v5 session (expiry 60 s) subscribed to `topic` at QoS 1,
/// left offline.
async fn offline_session(addr: SocketAddr, client_id: &str, topic: &str) {
    let (mut c, _) = connect_v5(addr, client_id, |c| {
        c.properties.session_expiry_interval = Some(60)
    })
    .await;
    assert_eq!(
        c.subscribe(topic, QoS::AtLeastOnce).await,
        ReasonCode::GrantedQoS1
    );
    c.disconnect().await;
}

/// Resumes the session of `client_id`; asserts it was present.
async fn resume(addr: SocketAddr, client_id: &str) -> TestClient {
    let (c, connack) = connect_v5(addr, client_id, |c| {
        c.clean_start = false;
        c.properties.session_expiry_interval = Some(60);
    })
    .await;
    assert!(connack.session_present, "{connack:?}");
    c
}

#[tokio::test]
async fn message_expiry_while_queued_for_offline_session() {
    let broker = start().await;
    let addr = broker.local_addr();
    offline_session(addr, "exp-late", "exp/late").await;
    offline_session(addr, "exp-early", "exp/early").await;
    let mut publisher = TestClient::connect(addr, V5, "exp-pub").await;
    let mut p = publish_packet("exp/late", b"stale", QoS::AtLeastOnce, 1);
    p.properties.message_expiry_interval = Some(2);
    publisher.publish_packet(p).await;
    let mut p = publish_packet("exp/early", b"fresh", QoS::AtLeastOnce, 2);
    p.properties.message_expiry_interval = Some(5);
    publisher.publish_packet(p).await;

    // After ~1 s the 5 s message is delivered with its remaining lifetime.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut early = resume(addr, "exp-early").await;
    let got = early.recv_publish().await;
    assert_eq!(got.payload, "fresh");
    let remaining = got
        .properties
        .message_expiry_interval
        .expect("expiry forwarded");
    assert!((1..=4).contains(&remaining), "remaining {remaining}");
    early.ack(&got).await;

    // After ~3 s the 2 s message has expired and is not sent.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let mut late = resume(addr, "exp-late").await;
    late.expect_nothing().await;
    // The session itself works: a new message is delivered.
    publisher
        .publish("exp/late", b"new", QoS::AtLeastOnce, false)
        .await;
    let got = late.recv_publish().await;
    assert_eq!(got.payload, "new");
    assert_eq!(got.properties.message_expiry_interval, None);
}

#[tokio::test]
async fn expired_retained_message_is_not_sent_to_new_subscribers() {
    let broker = start().await;
    let addr = broker.local_addr();
    let mut publisher = TestClient::connect(addr, V5, "rexp-pub").await;
    let mut p = publish_packet("rexp/short", b"short", QoS::AtLeastOnce, 1);
    p.retain = true;
    p.properties.message_expiry_interval = Some(1);
    publisher.publish_packet(p).await;
    publisher
        .publish("rexp/long", b"long", QoS::AtLeastOnce, true)
        .await;

    tokio::time::sleep(Duration::from_millis(2000)).await;
    let mut sub = TestClient::connect(addr, V5, "rexp-sub").await;
    assert_eq!(
        sub.subscribe("rexp/#", QoS::AtLeastOnce).await,
        ReasonCode::GrantedQoS1
    );
    let got = sub.recv_publish().await;
    assert_eq!((got.topic.as_str(), got.retain), ("rexp/long", true));
    sub.ack(&got).await;
    sub.expect_nothing().await;
}

#[tokio::test]
async fn publish_properties_are_forwarded_unchanged() {
    let broker = start().await;
    let addr = broker.local_addr();
    let mut sub = TestClient::connect(addr, V5, "props-sub").await;
    assert_eq!(
        sub.subscribe("props/t", QoS::AtLeastOnce).await,
        ReasonCode::GrantedQoS1
    );
    let mut publisher = TestClient::connect(addr, V5, "props-pub").await;

    let user = |name: &str, value: &str| UserProperty {
        name: name.into(),
        value: value.into(),
    };
    let user_properties = vec![
        user("z", "1"),
        user("a", "2"),
        user("z", "3"),
        user("dup", "x"),
        user("dup", "x"),
    ];
    let mut p = publish_packet("props/t", b"{\"k\":1}", QoS::AtLeastOnce, 9);
    p.properties = PublishProperties {
        payload_format_indicator: Some(true),
        response_topic: Some("props/reply".into()),
        correlation_data: Some(Bytes::from_static(&[0, 1, 2, 0xFF])),
        content_type: Some("application/json".into()),
        user_properties: user_properties.clone(),
        ..Default::default()
    };
    publisher.publish_packet(p).await;

    let got = sub.recv_publish().await;
    assert_eq!(got.payload, "{\"k\":1}");
    let props = &got.properties;
    assert_eq!(props.user_properties, user_properties);
    assert_eq!(props.payload_format_indicator, Some(true));
    assert_eq!(props.response_topic.as_deref(), Some("props/reply"));
    assert_eq!(
        props.correlation_data.as_deref(),
        Some(&[0, 1, 2, 0xFF][..])
    );
    assert_eq!(props.content_type.as_deref(), Some("application/json"));
    assert_eq!(props.message_expiry_interval, None);
    assert!(props.subscription_identifiers.is_empty());
    sub.ack(&got).await;
}

#[tokio::test]
async fn overlapping_subscriptions_get_one_copy_with_every_identifier() {
    let broker = start().await;
    let addr = broker.local_addr();
    let mut sub = TestClient::connect(addr, V5, "subid-sub").await;
    let qos0 = SubscriptionOptions::default();
    let qos1 = SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        ..Default::default()
    };
    assert_eq!(
        sub.subscribe_with("a/+", qos0, Some(7)).await,
        ReasonCode::Success
    );
    assert_eq!(
        sub.subscribe_with("a/b", qos1, Some(9)).await,
        ReasonCode::GrantedQoS1
    );
    let mut publisher = TestClient::connect(addr, V5, "subid-pub").await;
    publisher
        .publish("a/b", b"both", QoS::AtLeastOnce, false)
        .await;
    publisher
        .publish("a/c", b"one", QoS::AtLeastOnce, false)
        .await;

    let got = sub.recv_publish().await;
    assert_eq!(got.payload, "both");
    assert_eq!(got.qos, QoS::AtLeastOnce, "the higher QoS of the two");
    let mut ids = got.properties.subscription_identifiers.clone();
    ids.sort_unstable();
    assert_eq!(ids, [7, 9]);
    sub.ack(&got).await;
    // No second copy of a/b; a/c matches only `a/+`.
    let got = sub.recv_publish().await;
    assert_eq!(got.payload, "one");
    assert_eq!(got.qos, QoS::AtMostOnce);
    assert_eq!(got.properties.subscription_identifiers, [7]);
    sub.expect_nothing().await;
}

/// More sessions than the router scans (it then indexes them), each with
/// two filters matching the topic: still one copy each, with both ids.
#[tokio::test]
async fn many_sessions_with_overlapping_filters_get_one_copy_each() {
    let broker = start().await;
    let addr = broker.local_addr();
    let mut subs = Vec::new();
    for n in 0..12 {
        let mut sub = TestClient::connect(addr, V5, &format!("many-{n}")).await;
        for (filter, id) in [("m/+", 1), ("m/b", 2)] {
            let granted = sub
                .subscribe_with(filter, SubscriptionOptions::default(), Some(id))
                .await;
            assert_eq!(granted, ReasonCode::Success);
        }
        subs.push(sub);
    }
    let mut publisher = TestClient::connect(addr, V5, "many-pub").await;
    publisher
        .publish("m/b", b"once", QoS::AtMostOnce, false)
        .await;
    // Matches one filter only: the next thing each session gets, if "once"
    // came once.
    publisher
        .publish("m/c", b"end", QoS::AtMostOnce, false)
        .await;
    for sub in &mut subs {
        let got = sub.recv_publish().await;
        assert_eq!(got.payload, "once");
        let mut ids = got.properties.subscription_identifiers.clone();
        ids.sort_unstable();
        assert_eq!(ids, [1, 2]);
        assert_eq!(sub.recv_publish().await.payload, "end");
    }
}

#[tokio::test]
async fn no_local_skips_the_publisher_only() {
    let broker = start().await;
    let addr = broker.local_addr();
    let mut me = TestClient::connect(addr, V5, "nolocal-me").await;
    let options = SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        no_local: true,
        ..Default::default()
    };
    assert_eq!(
        me.subscribe_with("nl/t", options, None).await,
        ReasonCode::GrantedQoS1
    );
    let mut other = TestClient::connect(addr, V5, "nolocal-other").await;
    assert_eq!(
        other.subscribe_with("nl/t", options, None).await,
        ReasonCode::GrantedQoS1
    );

    me.publish("nl/t", b"mine", QoS::AtLeastOnce, false).await;
    let got = other.recv_publish().await;
    assert_eq!(got.payload, "mine");
    other.ack(&got).await;
    me.expect_nothing().await;

    // The other's messages do reach the no-local subscriber.
    other
        .publish("nl/t", b"theirs", QoS::AtLeastOnce, false)
        .await;
    let got = me.recv_publish().await;
    assert_eq!(got.payload, "theirs");
    other.expect_nothing().await;
}

/// Subscribes `client` to `filter` with this Retain Handling (QoS 0).
async fn subscribe_rh(client: &mut TestClient, filter: &str, retain_handling: RetainHandling) {
    let options = SubscriptionOptions {
        retain_handling,
        ..Default::default()
    };
    assert_eq!(
        client.subscribe_with(filter, options, None).await,
        ReasonCode::Success
    );
}

/// Receives the retained message of `rh/t`.
async fn expect_retained(client: &mut TestClient) {
    let got = client.recv_publish().await;
    assert_eq!((got.topic.as_str(), got.retain), ("rh/t", true), "{got:?}");
    assert_eq!(got.payload, "kept");
}

#[tokio::test]
async fn retain_handling_0_1_2() {
    let broker = start().await;
    let addr = broker.local_addr();
    let mut publisher = TestClient::connect(addr, V5, "rh-pub").await;
    publisher
        .publish("rh/t", b"kept", QoS::AtLeastOnce, true)
        .await;

    let mut rh0 = TestClient::connect(addr, V5, "rh0").await;
    subscribe_rh(&mut rh0, "rh/t", RetainHandling::SendAtSubscribe).await;
    expect_retained(&mut rh0).await;
    subscribe_rh(&mut rh0, "rh/t", RetainHandling::SendAtSubscribe).await;
    expect_retained(&mut rh0).await;
    rh0.expect_nothing().await;

    let mut rh1 = TestClient::connect(addr, V5, "rh1").await;
    subscribe_rh(&mut rh1, "rh/t", RetainHandling::SendAtSubscribeIfNew).await;
    expect_retained(&mut rh1).await;
    subscribe_rh(&mut rh1, "rh/t", RetainHandling::SendAtSubscribeIfNew).await;
    rh1.expect_nothing().await;

    let mut rh2 = TestClient::connect(addr, V5, "rh2").await;
    subscribe_rh(&mut rh2, "rh/t", RetainHandling::DoNotSend).await;
    rh2.expect_nothing().await;
    // The subscription exists all the same.
    publisher
        .publish("rh/t", b"live", QoS::AtMostOnce, false)
        .await;
    let got = rh2.recv_publish().await;
    assert_eq!((&got.payload[..], got.retain), (&b"live"[..], false));
}

#[tokio::test]
async fn retain_as_published_keeps_the_flag_on_live_messages() {
    let broker = start().await;
    let addr = broker.local_addr();
    let mut plain = TestClient::connect(addr, V5, "rap-plain").await;
    plain.subscribe("rap/t", QoS::AtMostOnce).await;
    let mut rap = TestClient::connect(addr, V5, "rap-keep").await;
    let options = SubscriptionOptions {
        retain_as_published: true,
        ..Default::default()
    };
    assert_eq!(
        rap.subscribe_with("rap/t", options, None).await,
        ReasonCode::Success
    );

    let mut publisher = TestClient::connect(addr, V5, "rap-pub").await;
    publisher
        .publish("rap/t", b"r", QoS::AtLeastOnce, true)
        .await;
    publisher
        .publish("rap/t", b"n", QoS::AtLeastOnce, false)
        .await;

    let got = plain.recv_publish().await;
    assert_eq!((&got.payload[..], got.retain), (&b"r"[..], false));
    let got = plain.recv_publish().await;
    assert_eq!((&got.payload[..], got.retain), (&b"n"[..], false));
    let got = rap.recv_publish().await;
    assert_eq!((&got.payload[..], got.retain), (&b"r"[..], true));
    let got = rap.recv_publish().await;
    assert_eq!((&got.payload[..], got.retain), (&b"n"[..], false));
}

#[tokio::test]
async fn receive_maximum_of_the_client_limits_inflight_messages() {
    let broker = start().await;
    let addr = broker.local_addr();
    let (mut sub, _) = connect_v5(addr, "rm-sub", |c| c.properties.receive_maximum = Some(2)).await;
    assert_eq!(
        sub.subscribe("rm/t", QoS::AtLeastOnce).await,
        ReasonCode::GrantedQoS1
    );
    let mut publisher = TestClient::connect(addr, V5, "rm-pub").await;
    let payloads: [&'static [u8]; 5] = [b"m0", b"m1", b"m2", b"m3", b"m4"];
    for payload in payloads {
        publisher
            .publish("rm/t", payload, QoS::AtLeastOnce, false)
            .await;
    }

    let m0 = sub.recv_publish().await;
    let m1 = sub.recv_publish().await;
    assert_eq!((&m0.payload[..], &m1.payload[..]), (&b"m0"[..], &b"m1"[..]));
    sub.expect_nothing().await;
    sub.ack(&m0).await;
    let m2 = sub.recv_publish().await;
    assert_eq!(m2.payload, "m2");
    sub.expect_nothing().await;
    sub.ack(&m1).await;
    sub.ack(&m2).await;
    let m3 = sub.recv_publish().await;
    let m4 = sub.recv_publish().await;
    assert_eq!((&m3.payload[..], &m4.payload[..]), (&b"m3"[..], &b"m4"[..]));
    sub.ack(&m3).await;
    sub.ack(&m4).await;
    sub.expect_nothing().await;
}

/// PUBACKs that arrive in one read are handled as one run: each still frees
/// its slot, an unknown id among them is ignored, and the packet after them
/// is answered in order.
#[tokio::test]
async fn pubacks_read_together_each_free_their_slot() {
    let broker = start().await;
    let addr = broker.local_addr();
    let (mut sub, _) =
        connect_v5(addr, "run-sub", |c| c.properties.receive_maximum = Some(3)).await;
    assert_eq!(
        sub.subscribe("run/t", QoS::AtLeastOnce).await,
        ReasonCode::GrantedQoS1
    );
    let mut publisher = TestClient::connect(addr, V5, "run-pub").await;
    let payloads: [&'static [u8]; 6] = [b"m0", b"m1", b"m2", b"m3", b"m4", b"m5"];
    for payload in payloads {
        publisher
            .publish("run/t", payload, QoS::AtLeastOnce, false)
            .await;
    }

    let mut received = Vec::new();
    for round in 0..2 {
        let mut ids = Vec::new();
        for _ in 0..3 {
            let publish = sub.recv_publish().await;
            received.push(publish.payload.clone());
            ids.extend(publish.packet_id);
        }
        sub.expect_nothing().await;
        let mut bytes = bytes::BytesMut::new();
        let unknown = pid(999);
        for id in ids.into_iter().chain([unknown]) {
            Packet::PubAck(PubAck::new(id))
                .encode(V5, &mut bytes)
                .expect("encode");
        }
        Packet::PingReq.encode(V5, &mut bytes).expect("encode");
        sub.send_bytes(&bytes).await;
        assert!(
            matches!(sub.recv().await, Packet::PingResp),
            "round {round}"
        );
    }
    sub.expect_nothing().await;
    assert_eq!(received, payloads);
}

static BIG: [u8; 500] = [b'x'; 500];

#[tokio::test]
async fn messages_above_the_client_maximum_packet_size_are_not_sent() {
    let broker = start().await;
    let addr = broker.local_addr();
    let (mut small, _) = connect_v5(addr, "mps-small", |c| {
        c.properties.maximum_packet_size = Some(100)
    })
    .await;
    assert_eq!(
        small.subscribe("mps/#", QoS::AtLeastOnce).await,
        ReasonCode::GrantedQoS1
    );
    let mut big = TestClient::connect(addr, V5, "mps-big").await;
    assert_eq!(
        big.subscribe("mps/#", QoS::AtLeastOnce).await,
        ReasonCode::GrantedQoS1
    );
    let mut publisher = TestClient::connect(addr, V5, "mps-pub").await;
    publisher
        .publish("mps/big", &BIG, QoS::AtLeastOnce, false)
        .await;
    publisher
        .publish("mps/small", b"tiny", QoS::AtLeastOnce, false)
        .await;

    let got = small.recv_publish().await;
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        ("mps/small", &b"tiny"[..])
    );
    small.ack(&got).await;
    small.expect_nothing().await;

    let got = big.recv_publish().await;
    assert_eq!((got.topic.as_str(), got.payload.len()), ("mps/big", 500));
    let got = big.recv_publish().await;
    assert_eq!(got.payload, "tiny");
}

/// Sends a second CONNECT and returns the DISCONNECT the broker answers with.
async fn second_connect(client: &mut TestClient) -> Disconnect {
    client
        .send(Packet::Connect(Box::new(connect_packet(V5, "again"))))
        .await;
    client
        .expect_closed()
        .await
        .expect("a DISCONNECT before the close")
}

#[tokio::test]
async fn protocol_violation_disconnect_carries_a_reason_string() {
    let broker = start().await;
    let (mut client, _) = connect_v5(broker.local_addr(), "rs-yes", |_| {}).await;
    let disconnect = second_connect(&mut client).await;
    assert_eq!(disconnect.reason, ReasonCode::ProtocolError);
    let text = disconnect
        .properties
        .reason_string
        .expect("a reason string");
    assert!(!text.is_empty());
}

#[tokio::test]
async fn no_reason_string_without_request_problem_information() {
    let broker = start().await;
    let (mut client, _) = connect_v5(broker.local_addr(), "rs-no", |c| {
        c.properties.request_problem_information = Some(false)
    })
    .await;
    let disconnect = second_connect(&mut client).await;
    assert_eq!(disconnect.reason, ReasonCode::ProtocolError);
    assert_eq!(disconnect.properties.reason_string, None);
}

#[tokio::test]
async fn disconnect_with_will_message_publishes_the_will() {
    let broker = start().await;
    let addr = broker.local_addr();
    let mut sub = TestClient::connect(addr, V5, "dw-sub").await;
    sub.subscribe("dw/#", QoS::AtMostOnce).await;
    let with_will = |topic: &str| {
        let topic = ByteStr::from(topic);
        move |c: &mut Connect| {
            c.will = Some(LastWill {
                topic,
                payload: Bytes::from_static(b"gone"),
                qos: QoS::AtMostOnce,
                retain: false,
                properties: WillProperties::default(),
            })
        }
    };

    // A normal DISCONNECT discards the will...
    let (mut normal, _) = connect_v5(addr, "dw-normal", with_will("dw/normal")).await;
    normal
        .send(Packet::Disconnect(Disconnect::new(ReasonCode::Success)))
        .await;
    assert!(normal.expect_closed().await.is_none());
    // ...0x04 publishes it.
    let (mut asking, _) = connect_v5(addr, "dw-asking", with_will("dw/asking")).await;
    asking
        .send(Packet::Disconnect(Disconnect::new(
            ReasonCode::DisconnectWithWillMessage,
        )))
        .await;
    assert!(asking.expect_closed().await.is_none());

    let got = sub.recv_publish().await;
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        ("dw/asking", &b"gone"[..])
    );
    sub.expect_nothing().await;
}

#[tokio::test]
async fn disconnect_can_extend_the_session_expiry() {
    let broker = start().await;
    let addr = broker.local_addr();
    let (mut c, connack) = connect_v5(addr, "sx", |c| {
        c.properties.session_expiry_interval = Some(1)
    })
    .await;
    assert_eq!(connack.properties.session_expiry_interval, Some(1));
    assert_eq!(
        c.subscribe("sx/t", QoS::AtLeastOnce).await,
        ReasonCode::GrantedQoS1
    );
    let mut disconnect = Disconnect::new(ReasonCode::Success);
    disconnect.properties.session_expiry_interval = Some(60);
    c.send(Packet::Disconnect(disconnect)).await;
    assert!(c.expect_closed().await.is_none());

    let mut publisher = TestClient::connect(addr, V5, "sx-pub").await;
    publisher
        .publish("sx/t", b"kept", QoS::AtLeastOnce, false)
        .await;
    // Past the original 1 s: the session lives on under the new interval.
    tokio::time::sleep(Duration::from_millis(1800)).await;
    let mut c = resume(addr, "sx").await;
    let got = c.recv_publish().await;
    assert_eq!(got.payload, "kept");
}

#[tokio::test]
async fn puback_reports_no_matching_subscribers_to_v5_only() {
    let broker = start().await;
    let addr = broker.local_addr();
    let mut v5 = TestClient::connect(addr, V5, "nms-v5").await;
    let mut v311 = TestClient::connect(addr, ProtocolVersion::V3_1_1, "nms-v311").await;
    assert_eq!(
        v5.puback("nms/t", 1).await.reason,
        ReasonCode::NoMatchingSubscribers
    );
    assert_eq!(v311.puback("nms/t", 1).await.reason, ReasonCode::Success);

    let mut sub = TestClient::connect(addr, V5, "nms-sub").await;
    sub.subscribe("nms/t", QoS::AtMostOnce).await;
    assert_eq!(v5.puback("nms/t", 2).await.reason, ReasonCode::Success);
}

#[tokio::test]
async fn unsuback_reports_whether_each_subscription_existed() {
    let broker = start().await;
    let mut c = TestClient::connect(broker.local_addr(), V5, "unsub").await;
    c.subscribe("u/a", QoS::AtMostOnce).await;
    c.subscribe("$share/g/u/s", QoS::AtMostOnce).await;
    let unsubscribe = |filters: &[&str]| {
        Packet::Unsubscribe(Unsubscribe {
            packet_id: pid(3),
            filters: filters.iter().map(|&f| f.into()).collect(),
            properties: UnsubscribeProperties::default(),
        })
    };
    c.send(unsubscribe(&["u/a", "u/b", "$share/g/u/s", "$share/h/u/s"]))
        .await;
    match c.recv().await {
        Packet::UnsubAck(ack) => {
            assert_eq!(ack.packet_id, pid(3));
            assert_eq!(
                ack.reasons,
                [
                    ReasonCode::Success,
                    ReasonCode::NoSubscriptionExisted,
                    ReasonCode::Success,
                    ReasonCode::NoSubscriptionExisted,
                ]
            );
        }
        other => panic!("expected UNSUBACK, got {other:?}"),
    }
    c.send(unsubscribe(&["u/a"])).await;
    match c.recv().await {
        Packet::UnsubAck(ack) => assert_eq!(ack.reasons, [ReasonCode::NoSubscriptionExisted]),
        other => panic!("expected UNSUBACK, got {other:?}"),
    }
}

#[tokio::test]
async fn suback_refuses_invalid_filters_and_grants_the_rest() {
    let broker = start().await;
    let addr = broker.local_addr();
    let mut c = TestClient::connect(addr, V5, "badfilter").await;
    let reasons = subscribe_many(
        &mut c,
        &[
            ("ok/1", QoS::AtLeastOnce),
            ("a/#/b", QoS::AtMostOnce),
            ("a+", QoS::AtMostOnce),
            ("$share/g/", QoS::AtMostOnce),
            ("$share//a", QoS::AtMostOnce),
            ("ok/2", QoS::ExactlyOnce),
        ],
    )
    .await;
    use ReasonCode::*;
    assert_eq!(
        reasons,
        [
            GrantedQoS1,
            TopicFilterInvalid,
            TopicFilterInvalid,
            TopicFilterInvalid,
            TopicFilterInvalid,
            GrantedQoS2,
        ]
    );

    // The connection stays open and the granted subscriptions work.
    let mut publisher = TestClient::connect(addr, V5, "badfilter-pub").await;
    publisher
        .publish("ok/1", b"1", QoS::AtMostOnce, false)
        .await;
    publisher
        .publish("ok/2", b"2", QoS::AtMostOnce, false)
        .await;
    assert_eq!(c.recv_publish().await.topic, "ok/1");
    assert_eq!(c.recv_publish().await.topic, "ok/2");
}
