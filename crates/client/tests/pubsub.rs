//! Publish/subscribe round trips at every QoS and at 3.1.1 and 5.0, flow
//! control, wills, and requests the client refuses itself.

mod common;

use bytes::Bytes;
use common::*;
use tern_client::{
    ConnectOptions, DisconnectReason, Error, Event, Message, ProtocolVersion, QoS, ReasonCode,
    SubscribeProperties, SubscriptionOptions, Will,
};

const QOS: [QoS; 3] = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce];

#[tokio::test]
async fn round_trip_at_every_qos_and_version() {
    let broker = broker().await;
    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let (sub, mut events) = connect(options(&broker, version, "sub")).await;
        subscribe(&sub, "rt/#", QoS::ExactlyOnce).await;
        let (publisher, _pub_events) = connect(options(&broker, version, "pub")).await;
        for qos in QOS {
            let topic = format!("rt/{qos:?}");
            let reason = publisher
                .publish(Message::new(topic.clone(), format!("payload {qos:?}"), qos).retain(false))
                .await
                .unwrap();
            assert_eq!(reason, ReasonCode::Success, "{version:?} {qos:?}");
            let m = next_message(&mut events).await;
            assert_eq!(m.topic, topic.as_str());
            assert_eq!(m.qos, qos);
            assert_eq!(m.payload, Bytes::from(format!("payload {qos:?}")));
        }
        // A client receives its own messages too (no_local is off).
        sub.publish(Message::new("rt/self", "me", QoS::AtLeastOnce))
            .await
            .unwrap();
        assert_eq!(next_message(&mut events).await.topic, "rt/self");
        sub.disconnect(ReasonCode::Success).await.unwrap();
        publisher.disconnect(ReasonCode::Success).await.unwrap();
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn messages_arrive_in_order() {
    let broker = broker().await;
    let (sub, mut events) = connect(options(&broker, ProtocolVersion::V5, "sub")).await;
    subscribe(&sub, "seq", QoS::AtLeastOnce).await;
    let (publisher, _e) = connect(options(&broker, ProtocolVersion::V5, "pub")).await;
    // Each task sends its command when first polled; yielding after each
    // spawn (single-threaded runtime) issues them in order, without waiting
    // for acknowledgements in between.
    let mut handles = Vec::new();
    for i in 0..200 {
        let p = publisher.clone();
        let qos = QOS[i % 3];
        handles.push(tokio::spawn(async move {
            p.publish(Message::new("seq", i.to_string(), qos)).await
        }));
        tokio::task::yield_now().await;
    }
    for h in handles {
        assert!(!h.await.unwrap().unwrap().is_error());
    }
    for i in 0..200 {
        let m = next_message(&mut events).await;
        assert_eq!(m.payload, Bytes::from(i.to_string()));
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn broker_receive_maximum_is_respected() {
    let broker = broker_with(tern_broker::Config {
        receive_maximum: 2,
        ..config()
    })
    .await;
    let (sub, mut sub_events) = connect(options(&broker, ProtocolVersion::V5, "sub")).await;
    subscribe(&sub, "rm/#", QoS::ExactlyOnce).await;
    let (publisher, mut events) = connect(options(&broker, ProtocolVersion::V5, "pub")).await;
    assert_eq!(publisher.connack().properties.receive_maximum, Some(2));
    let handles: Vec<_> = (0..10)
        .map(|i| {
            let p = publisher.clone();
            tokio::spawn(async move {
                p.publish(Message::new(format!("rm/{i}"), "x", QoS::ExactlyOnce))
                    .await
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.await.unwrap().unwrap(), ReasonCode::Success);
    }
    let mut topics = Vec::new();
    for _ in 0..10 {
        topics.push(next_message(&mut sub_events).await.topic.to_string());
    }
    topics.sort();
    topics.dedup();
    assert_eq!(topics.len(), 10);
    // The broker would have closed the connection (0x93) had we exceeded it.
    no_event(&mut events).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn incoming_qos2_is_delivered_once() {
    let broker = broker().await;
    let (client, mut events) = connect(options(&broker, ProtocolVersion::V5, "q2")).await;
    subscribe(&client, "once", QoS::ExactlyOnce).await;
    client
        .publish(Message::new("once", "1", QoS::ExactlyOnce))
        .await
        .unwrap();
    let m = next_message(&mut events).await;
    assert_eq!(m.qos, QoS::ExactlyOnce);
    no_event(&mut events).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn unsubscribe_stops_delivery() {
    let broker = broker().await;
    let (client, mut events) = connect(options(&broker, ProtocolVersion::V5, "u")).await;
    subscribe(&client, "u/+", QoS::AtLeastOnce).await;
    let unsuback = client.unsubscribe("u/+").await.unwrap();
    assert_eq!(unsuback.reasons, [ReasonCode::Success]);
    client
        .publish(Message::new("u/x", "x", QoS::AtLeastOnce))
        .await
        .unwrap();
    no_event(&mut events).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn subscribe_many_and_unsubscribe_many_take_several_filters() {
    let broker = broker().await;
    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let (client, mut events) = connect(options(&broker, version, "many")).await;
        let at = |qos| SubscriptionOptions {
            qos,
            ..Default::default()
        };
        let suback = client
            .subscribe_many(
                [
                    ("m/one", at(QoS::AtMostOnce)),
                    ("m/two", at(QoS::ExactlyOnce)),
                ],
                SubscribeProperties::default(),
            )
            .await
            .unwrap();
        assert_eq!(
            suback.reasons,
            [ReasonCode::Success, ReasonCode::GrantedQoS2],
            "{version:?}"
        );
        for topic in ["m/one", "m/two"] {
            client
                .publish(Message::new(topic, "x", QoS::ExactlyOnce))
                .await
                .unwrap();
        }
        let one = next_message(&mut events).await;
        let two = next_message(&mut events).await;
        assert_eq!((one.topic.as_str(), one.qos), ("m/one", QoS::AtMostOnce));
        assert_eq!((two.topic.as_str(), two.qos), ("m/two", QoS::ExactlyOnce));
        let unsuback = client.unsubscribe_many(["m/one", "m/two"]).await.unwrap();
        if version == ProtocolVersion::V5 {
            assert_eq!(unsuback.reasons, [ReasonCode::Success; 2]);
        }
        client
            .publish(Message::new("m/two", "x", QoS::AtLeastOnce))
            .await
            .unwrap();
        no_event(&mut events).await;
        client.disconnect(ReasonCode::Success).await.unwrap();
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn events_are_a_stream() {
    use futures_util::StreamExt;

    let broker = broker().await;
    let (client, mut events) = connect(options(&broker, ProtocolVersion::V5, "stream")).await;
    subscribe(&client, "s/#", QoS::AtLeastOnce).await;
    for i in 0..4 {
        client
            .publish(Message::new(format!("s/{i}"), "x", QoS::AtLeastOnce))
            .await
            .unwrap();
    }
    // Combinators on a borrowed stream, then `next()` on the same one: they
    // share the channel, so nothing is skipped or read twice.
    let first: Vec<String> = tokio::time::timeout(
        WAIT,
        (&mut events)
            .filter_map(|event| async move {
                match event {
                    Event::Message(m) => Some(m.topic.to_string()),
                    _ => None,
                }
            })
            .take(3)
            .collect(),
    )
    .await
    .unwrap();
    assert_eq!(first, ["s/0", "s/1", "s/2"]);
    assert_eq!(next_message(&mut events).await.topic, "s/3");
    client.disconnect(ReasonCode::Success).await.unwrap();
    match StreamExt::next(&mut events).await {
        Some(Event::Disconnected {
            reason: DisconnectReason::Requested,
        }) => {}
        other => panic!("expected Disconnected(Requested), got {other:?}"),
    }
    // The end is final: polling again still answers `None`.
    assert!(StreamExt::next(&mut events).await.is_none());
    assert!(StreamExt::next(&mut events).await.is_none());
    broker.shutdown().await;
}

#[tokio::test]
async fn retained_message_reaches_a_late_subscriber() {
    let broker = broker().await;
    let (client, mut events) = connect(options(&broker, ProtocolVersion::V3_1_1, "r")).await;
    client
        .publish(Message::new("kept", "state", QoS::AtLeastOnce).retain(true))
        .await
        .unwrap();
    subscribe(&client, "kept", QoS::AtLeastOnce).await;
    let m = next_message(&mut events).await;
    assert!(m.retain);
    assert_eq!(&m.payload[..], b"state");
    broker.shutdown().await;
}

fn will_options(broker: &tern_broker::BrokerHandle, version: ProtocolVersion) -> ConnectOptions {
    options(broker, version, "will-owner").will(Will::new("wills/a", "a is gone", QoS::AtLeastOnce))
}

#[tokio::test]
async fn will_is_published_when_the_session_is_taken_over() {
    let broker = broker().await;
    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let (watcher, mut watch) = connect(options(&broker, version, "watcher")).await;
        subscribe(&watcher, "wills/#", QoS::AtLeastOnce).await;
        let (_owner, mut owner_events) = connect(will_options(&broker, version)).await;
        // Same client id: the broker closes the first connection as if lost.
        let (intruder, _e) = connect(options(&broker, version, "will-owner")).await;
        let will = next_message(&mut watch).await;
        assert_eq!(will.topic, "wills/a");
        assert_eq!(&will.payload[..], b"a is gone");
        let expected = match version {
            ProtocolVersion::V5 => DisconnectReason::Server {
                reason: ReasonCode::SessionTakenOver,
                reason_string: Some("session taken over".into()),
            },
            _ => DisconnectReason::ConnectionLost("the broker closed the connection".into()),
        };
        match next_event(&mut owner_events).await {
            Event::Disconnected { reason } => assert_eq!(reason, expected),
            other => panic!("expected Disconnected, got {other:?}"),
        }
        stream_ends(&mut owner_events).await;
        intruder.disconnect(ReasonCode::Success).await.unwrap();
        watcher.disconnect(ReasonCode::Success).await.unwrap();
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn disconnect_with_will_message_publishes_it_and_normal_does_not() {
    let broker = broker().await;
    let (watcher, mut watch) = connect(options(&broker, ProtocolVersion::V5, "watcher")).await;
    subscribe(&watcher, "wills/#", QoS::AtLeastOnce).await;

    let (owner, _e) = connect(will_options(&broker, ProtocolVersion::V5)).await;
    owner.disconnect(ReasonCode::Success).await.unwrap();
    no_event(&mut watch).await;

    let (owner, _e) = connect(will_options(&broker, ProtocolVersion::V5)).await;
    owner
        .disconnect(ReasonCode::DisconnectWithWillMessage)
        .await
        .unwrap();
    assert_eq!(next_message(&mut watch).await.topic, "wills/a");
    broker.shutdown().await;
}

#[tokio::test]
async fn invalid_requests_are_refused_locally() {
    let broker = broker_with(tern_broker::Config {
        max_packet_size: 1024,
        maximum_qos: 1,
        ..config()
    })
    .await;
    let (client, mut events) = connect(options(&broker, ProtocolVersion::V5, "inv")).await;
    let invalid = |r: Result<ReasonCode, Error>| match r {
        Err(Error::Invalid(msg)) => msg,
        other => panic!("expected Invalid, got {other:?}"),
    };
    let msg = invalid(
        client
            .publish(Message::new("a/#", "x", QoS::AtMostOnce))
            .await,
    );
    assert!(msg.contains("invalid topic name"), "{msg}");
    let msg = invalid(
        client
            .publish(Message::new("big", vec![0u8; 2000], QoS::AtMostOnce))
            .await,
    );
    assert!(msg.contains("maximum packet size of 1024"), "{msg}");
    let msg = invalid(
        client
            .publish(Message::new("q", "x", QoS::ExactlyOnce))
            .await,
    );
    assert!(msg.contains("QoS 1 at most"), "{msg}");
    match client.subscribe("a/#/b", QoS::AtMostOnce).await {
        Err(Error::Invalid(msg)) => assert!(msg.contains("invalid topic filter"), "{msg}"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    match client
        .subscribe_many(
            Vec::<(String, SubscriptionOptions)>::new(),
            SubscribeProperties::default(),
        )
        .await
    {
        Err(Error::Invalid(_)) => {}
        other => panic!("expected Invalid, got {other:?}"),
    }
    // The connection is still fine.
    subscribe(&client, "ok", QoS::AtLeastOnce).await;
    client
        .publish(Message::new("ok", vec![1u8; 900], QoS::AtLeastOnce))
        .await
        .unwrap();
    assert_eq!(next_message(&mut events).await.payload.len(), 900);
    broker.shutdown().await;
}

#[tokio::test]
async fn slow_reader_loses_nothing() {
    let broker = broker().await;
    let (sub, mut events) = connect(options(&broker, ProtocolVersion::V5, "slow")).await;
    subscribe(&sub, "flood", QoS::AtLeastOnce).await;
    let (publisher, _e) = connect(options(&broker, ProtocolVersion::V5, "fast")).await;
    // More than the event channel holds: the subscriber's loop stops reading
    // the socket instead of buffering, and the broker keeps the rest queued.
    const N: usize = 1500;
    for i in 0..N {
        publisher
            .publish(Message::new("flood", i.to_string(), QoS::AtLeastOnce))
            .await
            .unwrap();
    }
    for i in 0..N {
        let m = next_message(&mut events).await;
        assert_eq!(m.payload, Bytes::from(i.to_string()));
    }
    no_event(&mut events).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn dropping_every_handle_closes_the_connection() {
    let broker = broker().await;
    let (watcher, mut watch) = connect(options(&broker, ProtocolVersion::V5, "watcher")).await;
    subscribe(&watcher, "wills/#", QoS::AtLeastOnce).await;
    // Even with reconnect on, nobody is left to use the connection: it is
    // closed without DISCONNECT, so the broker publishes the will.
    let (owner, owner_events) = connect(
        will_options(&broker, ProtocolVersion::V5).reconnect(tern_client::Reconnect::default()),
    )
    .await;
    let clone = owner.clone();
    drop(owner);
    drop(owner_events);
    no_event(&mut watch).await;
    drop(clone);
    assert_eq!(next_message(&mut watch).await.topic, "wills/a");
    broker.shutdown().await;
}
