//! Delayed publish: `$delayed/SECONDS/TOPIC` is published to TOPIC after
//! SECONDS, through a real socket, at each QoS; bad names and a full
//! schedule are refused with their reason codes. (Across a restart:
//! `persistence.rs`; listed and cancelled: `http.rs`.)

mod common;

use std::time::{Duration, Instant};

use common::*;
use tern_broker::Config;
use tern_broker::testing::sys_figures;
use tern_codec::*;

const V5: ProtocolVersion = ProtocolVersion::V5;

#[tokio::test]
async fn a_delayed_message_is_published_after_its_delay_and_not_before() {
    let broker = start().await;
    let addr = broker.local_addr();
    let mut sub = TestClient::connect(addr, V5, "sub").await;
    sub.subscribe("d/#", QoS::ExactlyOnce).await;
    let mut publisher = TestClient::connect(addr, V5, "pub").await;
    let sent = Instant::now();
    for (qos, topic) in [
        (QoS::AtMostOnce, "$delayed/1/d/zero"),
        (QoS::AtLeastOnce, "$delayed/1/d/one"),
        (QoS::ExactlyOnce, "$delayed/1/d/two"),
    ] {
        publisher.publish(topic, b"later", qos, false).await;
    }
    // Nothing at once, and no delivery under the $delayed name.
    sub.expect_nothing().await;
    let mut topics = Vec::new();
    for _ in 0..3 {
        let p = sub.recv_publish().await;
        assert!(
            sent.elapsed() >= Duration::from_secs(1),
            "{} came after {:?}",
            p.topic,
            sent.elapsed()
        );
        assert_eq!(&p.payload[..], b"later");
        topics.push(p.topic.to_string());
        sub.ack(&p).await;
    }
    topics.sort();
    assert_eq!(topics, ["d/one", "d/two", "d/zero"]);
    sub.expect_nothing().await;
    // A retained one is kept as retained when its time comes.
    publisher
        .publish("$delayed/1/d/kept", b"22.5", QoS::AtLeastOnce, true)
        .await;
    let p = sub.recv_publish().await;
    assert_eq!(p.topic.as_str(), "d/kept");
    sub.ack(&p).await;
    let mut late = TestClient::connect(addr, V5, "late").await;
    late.subscribe("d/kept", QoS::AtMostOnce).await;
    let p = late.recv_publish().await;
    assert!(p.retain, "retained at its time");
}

#[tokio::test]
async fn bad_delayed_names_are_refused_0x90_and_not_scheduled() {
    let broker = start().await;
    let mut publisher = TestClient::connect(broker.local_addr(), V5, "pub").await;
    for (i, topic) in [
        "$delayed/soon/d/x",
        "$delayed/10",
        "$delayed/10/",
        "$delayed/4294968/d/x",
        "$delayed/10/$SYS/x",
    ]
    .into_iter()
    .enumerate()
    {
        let reason = publisher.puback(topic, i as u16 + 1).await.reason;
        assert_eq!(reason, ReasonCode::TopicNameInvalid, "{topic}");
    }
}

#[tokio::test]
async fn a_full_schedule_refuses_0x97_and_counts_it() {
    let broker = start_with(Config {
        max_delayed_messages: 1,
        ..test_config()
    })
    .await;
    let mut publisher = TestClient::connect(broker.local_addr(), V5, "pub").await;
    assert_eq!(
        publisher.puback("$delayed/60/d/a", 1).await.reason,
        ReasonCode::Success
    );
    assert_eq!(
        publisher.puback("$delayed/60/d/b", 2).await.reason,
        ReasonCode::QuotaExceeded
    );
    // At QoS 2 the refused id is not kept awaiting a PUBREL.
    publisher
        .send(Packet::Publish(publish_packet(
            "$delayed/60/d/c",
            b"x",
            QoS::ExactlyOnce,
            3,
        )))
        .await;
    match publisher.recv().await {
        Packet::PubRec(a) => assert_eq!(a.reason, ReasonCode::QuotaExceeded),
        other => panic!("expected PUBREC, got {other:?}"),
    }
    let refused = sys_figures(&broker)
        .into_iter()
        .find(|(topic, _)| *topic == "limits/delayed/refused");
    assert_eq!(refused, Some(("limits/delayed/refused", 2)));
}
