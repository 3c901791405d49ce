//! Keep-alive against the real broker: pings keep an idle connection open.

mod common;

use std::time::Duration;

use common::*;
use tern_client::{Message, ProtocolVersion, QoS};

async fn stay_idle(broker: &tern_broker::BrokerHandle, version: ProtocolVersion) {
    let options =
        options(broker, version, &format!("idle-{version:?}")).keep_alive(Duration::from_secs(1));
    let topic = format!("idle/{version:?}");
    let (client, mut events) = connect(options).await;
    subscribe(&client, &topic, QoS::AtLeastOnce).await;
    // The broker closes after 1.5 s of silence; stay idle for 3 s.
    if let Ok(event) = tokio::time::timeout(Duration::from_millis(3100), events.next()).await {
        panic!("unexpected event while idle: {event:?}");
    }
    client
        .publish(Message::new(topic, "still here", QoS::AtLeastOnce))
        .await
        .unwrap();
    assert_eq!(&next_message(&mut events).await.payload[..], b"still here");
}

#[tokio::test]
async fn pings_keep_an_idle_connection_alive() {
    let broker = broker().await;
    tokio::join!(
        stay_idle(&broker, ProtocolVersion::V3_1_1),
        stay_idle(&broker, ProtocolVersion::V5)
    );
    broker.shutdown().await;
}
