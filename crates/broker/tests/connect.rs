//! CONNECT and the connection lifecycle over real sockets: protocol levels,
//! client identifiers, CONNACK properties, session takeover, keep-alive, the
//! CONNECT timeout, enhanced authentication, will validation and shutdown.

mod common;

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::*;
use tern_codec::*;

fn will(topic: &str) -> LastWill {
    LastWill {
        topic: topic.into(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: WillProperties::default(),
    }
}

fn config(edit: impl FnOnce(&mut tern_broker::Config)) -> tern_broker::Config {
    let mut config = test_config();
    edit(&mut config);
    config
}

const VERSIONS: [ProtocolVersion; 3] = [
    ProtocolVersion::V3_1,
    ProtocolVersion::V3_1_1,
    ProtocolVersion::V5,
];

#[tokio::test]
async fn protocol_levels_3_4_and_5_are_accepted_and_can_publish_and_subscribe() {
    let broker = start().await;
    let addr = broker.local_addr();
    let mut subscribers = Vec::new();
    for version in VERSIONS {
        let (mut sub, connack) = TestClient::connect_with(
            addr,
            connect_packet(version, &format!("sub{}", version as u8)),
        )
        .await;
        assert_eq!(connack.reason, ReasonCode::Success, "{version:?}");
        assert!(!connack.session_present, "{version:?}");
        assert_eq!(
            sub.subscribe("levels/#", QoS::AtLeastOnce).await,
            ReasonCode::GrantedQoS1
        );
        subscribers.push(sub);
    }
    // Every level publishes; every level receives, in publish order.
    let topics = ["levels/3", "levels/4", "levels/5"];
    for (version, topic) in VERSIONS.into_iter().zip(topics) {
        let mut publisher =
            TestClient::connect(addr, version, &format!("pub{}", version as u8)).await;
        publisher
            .publish(topic, b"hello", QoS::AtLeastOnce, false)
            .await;
        publisher.disconnect().await;
    }
    for sub in &mut subscribers {
        for topic in topics {
            let p = sub.recv_publish().await;
            assert_eq!(p.topic, topic, "subscriber {:?}", sub.version);
            assert_eq!(p.payload, Bytes::from_static(b"hello"));
            assert_eq!(p.qos, QoS::AtLeastOnce);
        }
    }
}

#[tokio::test]
async fn unsupported_protocol_level_gets_return_code_1_then_close() {
    let broker = start().await;
    // The refusal is in 3.1.1 form whatever level was asked for [MQTT-3.1.2-2].
    let mut client = TestClient::raw(broker.local_addr(), ProtocolVersion::V3_1_1).await;
    client
        .send_bytes(&raw_connect(b"MQTT", 6, 0x02, "future"))
        .await;
    let packets = read_until_closed(&mut client).await;
    let expected = ConnAck {
        session_present: false,
        reason: ReasonCode::UnsupportedProtocolVersion, // return code 0x01
        properties: ConnAckProperties::default(),
    };
    assert_eq!(packets, vec![Packet::ConnAck(expected)]);
}

#[tokio::test]
async fn invalid_protocol_name_is_closed_without_connack() {
    let broker = start().await;
    let mut client = TestClient::raw(broker.local_addr(), ProtocolVersion::V3_1_1).await;
    client
        .send_bytes(&raw_connect(b"MQTX", 4, 0x02, "wrong-name"))
        .await;
    assert_eq!(read_until_closed(&mut client).await, vec![]);
}

#[tokio::test]
async fn v5_empty_client_id_is_assigned_one() {
    let broker = start().await;
    let addr = broker.local_addr();
    let (mut first, connack) =
        TestClient::connect_with(addr, connect_packet(ProtocolVersion::V5, "")).await;
    assert_eq!(connack.reason, ReasonCode::Success);
    let id1 = connack
        .properties
        .assigned_client_identifier
        .expect("Assigned Client Identifier");
    assert!(!id1.is_empty());
    let (mut second, connack) =
        TestClient::connect_with(addr, connect_packet(ProtocolVersion::V5, "")).await;
    assert_eq!(connack.reason, ReasonCode::Success);
    let id2 = connack
        .properties
        .assigned_client_identifier
        .expect("Assigned Client Identifier");
    assert_ne!(id1, id2, "two clients were given the same identifier");
    // Distinct sessions: neither took the other over, and both work.
    first.expect_nothing().await;
    for client in [&mut first, &mut second] {
        client.send(Packet::PingReq).await;
        assert_eq!(client.recv().await, Packet::PingResp);
    }
}

#[tokio::test]
async fn v311_empty_client_id_with_clean_session_is_accepted() {
    let broker = start().await;
    let connect = connect_packet(ProtocolVersion::V3_1_1, "");
    let (mut client, connack) = TestClient::connect_with(broker.local_addr(), connect).await;
    assert_eq!(connack.reason, ReasonCode::Success);
    assert_eq!(
        client.subscribe("empty/id", QoS::AtLeastOnce).await,
        ReasonCode::GrantedQoS1
    );
    client
        .publish("empty/id", b"me", QoS::AtMostOnce, false)
        .await;
    assert_eq!(client.recv_publish().await.topic, "empty/id");
}

#[tokio::test]
async fn v311_empty_client_id_without_clean_session_is_refused() {
    let broker = start().await;
    let connect = Connect {
        clean_start: false,
        ..connect_packet(ProtocolVersion::V3_1_1, "")
    };
    let (mut client, connack) = TestClient::connect_with(broker.local_addr(), connect).await;
    // Return code 0x02, identifier rejected [MQTT-3.1.3-8].
    assert_eq!(connack.reason, ReasonCode::ClientIdentifierNotValid);
    assert!(!connack.session_present);
    assert_eq!(read_until_closed(&mut client).await, vec![]);
}

#[tokio::test]
async fn v31_empty_client_id_is_refused() {
    let broker = start().await;
    let connect = connect_packet(ProtocolVersion::V3_1, "");
    let (mut client, connack) = TestClient::connect_with(broker.local_addr(), connect).await;
    assert_eq!(connack.reason, ReasonCode::ClientIdentifierNotValid);
    assert_eq!(read_until_closed(&mut client).await, vec![]);
}

#[tokio::test]
async fn v5_connack_carries_the_configured_limits() {
    let broker = start_with(config(|c| {
        c.receive_maximum = 7;
        c.max_packet_size = 4096;
        c.topic_alias_maximum = 5;
        c.retain_available = false;
        c.max_keepalive_secs = 30;
    }))
    .await;
    let mut connect = connect_packet(ProtocolVersion::V5, "limits");
    connect.keep_alive = 20;
    connect.properties.session_expiry_interval = Some(120);
    let (_client, connack) = TestClient::connect_with(broker.local_addr(), connect).await;
    assert_eq!(connack.reason, ReasonCode::Success);
    let p = connack.properties;
    assert_eq!(p.receive_maximum, Some(7));
    assert_eq!(p.maximum_packet_size, Some(4096));
    assert_eq!(p.topic_alias_maximum, Some(5));
    assert_eq!(p.retain_available, Some(false));
    assert_eq!(p.wildcard_subscription_available, Some(true));
    assert_eq!(p.subscription_identifiers_available, Some(true));
    assert_eq!(p.shared_subscription_available, Some(true));
    assert_eq!(p.server_keep_alive, Some(20));
    assert_eq!(p.session_expiry_interval, Some(120));
    // QoS 2 is the protocol default: no Maximum QoS property.
    assert_eq!(p.maximum_qos, None);
    assert_eq!(p.assigned_client_identifier, None);

    // And the defaults, with a different broker.
    let broker = start().await;
    let (_client, connack) = TestClient::connect_with(
        broker.local_addr(),
        connect_packet(ProtocolVersion::V5, "defaults"),
    )
    .await;
    let p = connack.properties;
    assert_eq!(p.receive_maximum, Some(1024));
    assert_eq!(p.maximum_packet_size, Some(1024 * 1024));
    assert_eq!(p.topic_alias_maximum, Some(10));
    assert_eq!(p.retain_available, Some(true));
    assert_eq!(p.server_keep_alive, Some(60));
    assert_eq!(p.session_expiry_interval, Some(0));
}

#[tokio::test]
async fn maximum_qos_1_is_announced_and_qos2_publish_is_refused() {
    let broker = start_with(config(|c| c.maximum_qos = 1)).await;
    let (mut client, connack) = TestClient::connect_with(
        broker.local_addr(),
        connect_packet(ProtocolVersion::V5, "qos1"),
    )
    .await;
    assert_eq!(connack.reason, ReasonCode::Success);
    assert_eq!(connack.properties.maximum_qos, Some(QoS::AtLeastOnce));
    // QoS 1 still works.
    client.publish("q/1", b"ok", QoS::AtLeastOnce, false).await;
    client
        .send(Packet::Publish(publish_packet(
            "q/2",
            b"too high",
            QoS::ExactlyOnce,
            2,
        )))
        .await;
    let before = expect_disconnect(&mut client, ReasonCode::QoSNotSupported).await;
    assert_eq!(before, vec![], "no PUBREC for a refused QoS 2 PUBLISH");
}

#[tokio::test]
async fn max_keepalive_is_imposed_as_server_keep_alive() {
    let broker = start_with(config(|c| c.max_keepalive_secs = 10)).await;
    for (asked, told) in [(0, 10), (100, 10), (5, 5)] {
        let mut connect = connect_packet(ProtocolVersion::V5, &format!("ka{asked}"));
        connect.keep_alive = asked;
        let (_client, connack) = TestClient::connect_with(broker.local_addr(), connect).await;
        assert_eq!(connack.reason, ReasonCode::Success);
        assert_eq!(
            connack.properties.server_keep_alive,
            Some(told),
            "client asked for {asked}"
        );
    }
}

#[tokio::test]
async fn takeover_sends_v5_client_disconnect_0x8e() {
    let broker = start().await;
    let addr = broker.local_addr();
    let mut first = TestClient::connect(addr, ProtocolVersion::V5, "twin").await;
    let (mut second, connack) =
        TestClient::connect_with(addr, connect_packet(ProtocolVersion::V5, "twin")).await;
    assert_eq!(connack.reason, ReasonCode::Success);
    expect_disconnect(&mut first, ReasonCode::SessionTakenOver).await;
    // The new connection owns the session and works.
    second.send(Packet::PingReq).await;
    assert_eq!(second.recv().await, Packet::PingResp);
}

#[tokio::test]
async fn takeover_closes_v311_client_without_disconnect() {
    let broker = start().await;
    let addr = broker.local_addr();
    let mut first = TestClient::connect(addr, ProtocolVersion::V3_1_1, "twin").await;
    let (mut second, connack) =
        TestClient::connect_with(addr, connect_packet(ProtocolVersion::V3_1_1, "twin")).await;
    assert_eq!(connack.reason, ReasonCode::Success);
    assert_eq!(read_until_closed(&mut first).await, vec![]);
    second.send(Packet::PingReq).await;
    assert_eq!(second.recv().await, Packet::PingResp);
}

#[tokio::test]
async fn takeover_publishes_the_first_connections_will() {
    let broker = start().await;
    let addr = broker.local_addr();
    let mut watcher = TestClient::connect(addr, ProtocolVersion::V5, "watcher").await;
    watcher.subscribe("wills/#", QoS::AtMostOnce).await;
    for (version, topic) in [
        (ProtocolVersion::V5, "wills/v5"),
        (ProtocolVersion::V3_1_1, "wills/v311"),
    ] {
        let id = format!("twin{}", version as u8);
        let connect = Connect {
            will: Some(will(topic)),
            ..connect_packet(version, &id)
        };
        let (mut first, connack) = TestClient::connect_with(addr, connect).await;
        assert_eq!(connack.reason, ReasonCode::Success);
        let _second = TestClient::connect(addr, version, &id).await;
        read_until_closed(&mut first).await;
        let will = watcher.recv_publish().await;
        assert_eq!(will.topic, topic);
        assert_eq!(will.payload, Bytes::from_static(b"gone"));
    }
}

#[tokio::test]
async fn silent_client_is_closed_after_keep_alive() {
    let broker = start().await;
    let addr = broker.local_addr();
    let mut v5 = connect_packet(ProtocolVersion::V5, "quiet5");
    v5.keep_alive = 1;
    let mut v311 = connect_packet(ProtocolVersion::V3_1_1, "quiet4");
    v311.keep_alive = 1;
    let (mut v5, _) = TestClient::connect_with(addr, v5).await;
    let (mut v311, _) = TestClient::connect_with(addr, v311).await;
    let start = Instant::now();
    let (v5_packets, v311_packets) = tokio::join!(
        async {
            let packets = expect_disconnect(&mut v5, ReasonCode::KeepAliveTimeout).await;
            (packets, start.elapsed())
        },
        async { (read_until_closed(&mut v311).await, start.elapsed()) },
    );
    for (name, (packets, elapsed)) in [("v5", v5_packets), ("v3.1.1", v311_packets)] {
        assert_eq!(packets, vec![], "{name}");
        // One and a half keep-alive periods [MQTT-3.1.2-24]: 1.5 s.
        assert!(
            elapsed >= Duration::from_secs(1),
            "{name} closed too early: {elapsed:?}"
        );
        assert!(
            elapsed <= Duration::from_secs(3),
            "{name} closed too late: {elapsed:?}"
        );
    }
}

#[tokio::test]
async fn pinging_client_stays_connected() {
    let broker = start().await;
    let mut connect = connect_packet(ProtocolVersion::V5, "pinger");
    connect.keep_alive = 1;
    let (mut client, _) = TestClient::connect_with(broker.local_addr(), connect).await;
    let start = Instant::now();
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_millis(500),
        Duration::from_millis(500),
    );
    while start.elapsed() < Duration::from_millis(2500) {
        tick.tick().await;
        client.send(Packet::PingReq).await;
        match client.next(Duration::from_secs(1)).await {
            Ok(Some(Packet::PingResp)) => {}
            other => panic!("expected PINGRESP at {:?}, got {other:?}", start.elapsed()),
        }
    }
    // Well past 1.5 × keep-alive and still open.
    client.send(Packet::PingReq).await;
    assert_eq!(client.recv().await, Packet::PingResp);
}

#[tokio::test]
async fn client_without_connect_is_closed_after_connect_timeout() {
    let broker = start_with(config(|c| c.connect_timeout_secs = 1)).await;
    let mut client = TestClient::raw(broker.local_addr(), ProtocolVersion::V5).await;
    let start = Instant::now();
    assert_eq!(read_until_closed(&mut client).await, vec![]);
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900),
        "closed too early: {elapsed:?}"
    );
    assert!(
        elapsed <= Duration::from_secs(3),
        "closed too late: {elapsed:?}"
    );
}

#[tokio::test]
async fn authentication_method_is_refused_with_0x8c() {
    let broker = start().await;
    let mut connect = connect_packet(ProtocolVersion::V5, "auth");
    connect.properties.authentication_method = Some("SCRAM-SHA-256".into());
    connect.properties.authentication_data = Some(Bytes::from_static(b"client-first"));
    let (mut client, connack) = TestClient::connect_with(broker.local_addr(), connect).await;
    assert_eq!(connack.reason, ReasonCode::BadAuthenticationMethod);
    assert_eq!(read_until_closed(&mut client).await, vec![]);
}

#[tokio::test]
async fn will_topic_with_wildcard_is_refused() {
    let broker = start().await;
    let addr = broker.local_addr();
    let mut watcher = TestClient::connect(addr, ProtocolVersion::V5, "watcher").await;
    watcher.subscribe("#", QoS::AtMostOnce).await;
    for topic in ["wills/+", "wills/#"] {
        let connect = Connect {
            will: Some(will(topic)),
            ..connect_packet(ProtocolVersion::V5, "wild")
        };
        let (mut client, connack) = TestClient::connect_with(addr, connect).await;
        assert_eq!(connack.reason, ReasonCode::TopicNameInvalid, "{topic}");
        assert_eq!(read_until_closed(&mut client).await, vec![]);
        // MQTT 3.1.1 has no return code for a malformed will topic: the
        // connection is closed without CONNACK (not "Server unavailable").
        for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V3_1] {
            let connect = Connect {
                will: Some(will(topic)),
                ..connect_packet(version, "wild")
            };
            let mut client = TestClient::raw(addr, version).await;
            client.send(Packet::Connect(Box::new(connect))).await;
            assert_eq!(read_until_closed(&mut client).await, vec![], "{version:?}");
        }
    }
    // The refused will is never published.
    watcher.expect_nothing().await;
}

#[tokio::test]
async fn shutdown_sends_v5_clients_disconnect_0x8b() {
    let broker = start().await;
    let addr = broker.local_addr();
    let mut v5 = TestClient::connect(addr, ProtocolVersion::V5, "stay5").await;
    let mut v311 = TestClient::connect(addr, ProtocolVersion::V3_1_1, "stay4").await;
    let (shutdown, v5_packets, v311_packets) = tokio::join!(
        tokio::time::timeout(WAIT, broker.shutdown()),
        expect_disconnect(&mut v5, ReasonCode::ServerShuttingDown),
        read_until_closed(&mut v311),
    );
    shutdown.expect("shutdown finishes");
    assert_eq!(v5_packets, vec![]);
    assert_eq!(v311_packets, vec![]);
}

#[tokio::test]
async fn packets_sent_with_connect_in_one_write_are_handled() {
    let broker = start().await;
    for version in VERSIONS {
        // CONNECT and PINGREQ in the same segment: the PINGREQ is already
        // buffered when the CONNECT has been handled.
        let mut bytes = BytesMut::new();
        let connect = connect_packet(version, &format!("eager{}", version as u8));
        Packet::Connect(Box::new(connect))
            .encode(version, &mut bytes)
            .unwrap();
        Packet::PingReq.encode(version, &mut bytes).unwrap();
        let mut client = TestClient::raw(broker.local_addr(), version).await;
        client.send_bytes(&bytes).await;
        match client.recv().await {
            Packet::ConnAck(ack) => assert_eq!(ack.reason, ReasonCode::Success, "{version:?}"),
            other => panic!("{version:?}: expected CONNACK, got {other:?}"),
        }
        match client.next(WAIT).await {
            Ok(Some(Packet::PingResp)) => {}
            other => panic!("{version:?}: expected PINGRESP, got {other:?}"),
        }
    }
}
