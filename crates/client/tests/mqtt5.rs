//! MQTT 5 features: publish properties, subscription identifiers, topic
//! aliases from the broker, subscription options, reason codes.

mod common;

use bytes::Bytes;
use common::*;
use tern_client::{
    ConnectOptions, Message, ProtocolVersion, PublishProperties, QoS, ReasonCode,
    SubscribeProperties, SubscriptionOptions, UserProperty,
};

fn user(name: &str, value: &str) -> UserProperty {
    UserProperty {
        name: name.into(),
        value: value.into(),
    }
}

#[tokio::test]
async fn publish_properties_round_trip() {
    let broker = broker().await;
    let (client, mut events) = connect(options(&broker, ProtocolVersion::V5, "props")).await;
    let suback = client
        .subscribe_many(
            [(
                "req/#",
                SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    ..Default::default()
                },
            )],
            SubscribeProperties {
                subscription_identifier: Some(7),
                user_properties: vec![user("why", "test")],
            },
        )
        .await
        .unwrap();
    assert_eq!(suback.reasons, [ReasonCode::GrantedQoS1]);
    let properties = PublishProperties {
        payload_format_indicator: Some(true),
        message_expiry_interval: Some(120),
        response_topic: Some("resp/1".into()),
        correlation_data: Some(Bytes::from_static(b"\x00\x01corr")),
        user_properties: vec![user("a", "1"), user("b", "2"), user("a", "3")],
        content_type: Some("application/json".into()),
        // Dropped by the client: broker-to-client only / not used.
        subscription_identifiers: vec![99],
        topic_alias: Some(1),
    };
    client
        .publish(Message::new("req/x", "{}", QoS::AtLeastOnce).properties(properties))
        .await
        .unwrap();
    let m = next_message(&mut events).await;
    let p = &m.properties;
    assert_eq!(m.topic, "req/x");
    assert_eq!(p.payload_format_indicator, Some(true));
    let expiry = p.message_expiry_interval.expect("expiry forwarded");
    assert!((118..=120).contains(&expiry), "{expiry}");
    assert_eq!(p.response_topic.as_deref(), Some("resp/1"));
    assert_eq!(p.correlation_data.as_deref(), Some(&b"\x00\x01corr"[..]));
    assert_eq!(
        p.user_properties,
        [user("a", "1"), user("b", "2"), user("a", "3")]
    );
    assert_eq!(p.content_type.as_deref(), Some("application/json"));
    assert_eq!(p.subscription_identifiers, [7]);
    assert_eq!(p.topic_alias, None);
    broker.shutdown().await;
}

#[tokio::test]
async fn topic_aliases_from_the_broker_are_resolved() {
    let broker = broker().await;
    let options = options(&broker, ProtocolVersion::V5, "alias").topic_alias_maximum(4);
    let (client, mut events) = connect(options).await;
    subscribe(&client, "al/#", QoS::AtMostOnce).await;
    for round in 0..3 {
        for topic in ["al/a", "al/b", "al/a"] {
            client
                .publish(Message::new(topic, format!("{round}"), QoS::AtLeastOnce))
                .await
                .unwrap();
            let m = next_message(&mut events).await;
            assert_eq!(m.topic, topic);
            assert_eq!(m.properties.topic_alias, None);
        }
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn no_local_and_no_matching_subscribers() {
    let broker = broker().await;
    let (client, mut events) = connect(options(&broker, ProtocolVersion::V5, "nl")).await;
    let reason = client
        .publish(Message::new("nobody/here", "x", QoS::AtLeastOnce))
        .await
        .unwrap();
    assert_eq!(reason, ReasonCode::NoMatchingSubscribers);
    client
        .subscribe_many(
            [(
                "nl",
                SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    no_local: true,
                    ..Default::default()
                },
            )],
            SubscribeProperties::default(),
        )
        .await
        .unwrap();
    client
        .publish(Message::new("nl", "x", QoS::AtLeastOnce))
        .await
        .unwrap();
    no_event(&mut events).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn connect_properties_are_sent() {
    let broker = broker().await;
    let options = options(&broker, ProtocolVersion::V5, "cp")
        .session_expiry(30)
        .receive_maximum(3)
        .maximum_packet_size(4096)
        .user_property("k", "v")
        .clean_start(false);
    let (client, mut events) = connect(options.clone()).await;
    subscribe(&client, "cp", QoS::ExactlyOnce).await;
    // Our Maximum Packet Size: the broker does not send us a larger message.
    let (other, _e) = connect(options_for(&broker, "cp-pub")).await;
    other
        .publish(Message::new("cp", vec![0u8; 5000], QoS::AtLeastOnce))
        .await
        .unwrap();
    other
        .publish(Message::new("cp", vec![0u8; 100], QoS::AtLeastOnce))
        .await
        .unwrap();
    assert_eq!(next_message(&mut events).await.payload.len(), 100);
    // Session expiry: the session survives a disconnect.
    client.disconnect(ReasonCode::Success).await.unwrap();
    let (_client, _events, connack) = tern_client::Client::connect(options).await.unwrap();
    assert!(connack.session_present);
    broker.shutdown().await;
}

fn options_for(broker: &tern_broker::BrokerHandle, id: &str) -> ConnectOptions {
    options(broker, ProtocolVersion::V5, id)
}
