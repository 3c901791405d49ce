//! Attacks one client can make on all the others, through real sockets. Each
//! test mounts one attack and checks that the other clients are still served
//! (docs/security.md, "Attacks and what stops them").

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::*;
use tern_broker::Config;
use tern_codec::*;

const V5: ProtocolVersion = ProtocolVersion::V5;

/// All 2^`levels` filters `o/{a|+}/…/{a|+}`: each matches `o/a/…/a`.
fn overlapping_filters(levels: u32) -> Vec<String> {
    (0..1u32 << levels)
        .map(|bits| {
            let mut filter = String::from("o");
            for level in 0..levels {
                filter.push_str(if bits >> level & 1 == 1 { "/+" } else { "/a" });
            }
            filter
        })
        .collect()
}

/// Subscribes to every filter, in SUBSCRIBE packets of 256, and checks each
/// was granted.
async fn subscribe_all(client: &mut TestClient, filters: &[String]) {
    for (n, chunk) in filters.chunks(256).enumerate() {
        let packet_id = pid(n as u16 + 1);
        let filters = chunk
            .iter()
            .map(|f| SubscribeFilter {
                filter: f.as_str().into(),
                options: SubscriptionOptions::default(),
            })
            .collect();
        client
            .send(Packet::Subscribe(Subscribe {
                packet_id,
                filters,
                properties: SubscribeProperties::default(),
            }))
            .await;
        match client.recv().await {
            Packet::SubAck(ack) => {
                assert_eq!(ack.packet_id, packet_id);
                assert!(ack.reasons.iter().all(|r| *r == ReasonCode::Success));
            }
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }
}

/// One client holds 2,048 filters that all match one topic (the limit is
/// lifted for the test); two others flood that topic, each with a burst of
/// QoS 0 publishes sent in one write. Before, each connection routed every
/// publish it had read before it let its worker go: the two bursts held
/// both workers for seconds, and the canary's round trip with them. Now a
/// connection yields after a short budget, and the publish routes to the one
/// session as one delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_subscriptions_do_not_stall_other_clients() {
    let broker = start_with(Config {
        max_subscriptions_per_client: 0,
        ..test_config()
    })
    .await;
    let addr = broker.local_addr();
    let levels = 11;
    let mut holder = TestClient::connect(addr, V5, "holder").await;
    subscribe_all(&mut holder, &overlapping_filters(levels)).await;
    let topic = format!("o{}", "/a".repeat(levels as usize));

    let mut canary = TestClient::connect(addr, V5, "canary").await;
    canary.subscribe("canary/t", QoS::AtMostOnce).await;

    let mut burst = BytesMut::new();
    for _ in 0..1_000 {
        let publish = Packet::Publish(publish_packet(&topic, b"x", QoS::AtMostOnce, 0));
        publish.encode(V5, &mut burst).expect("encode");
    }
    let mut floods = Vec::new();
    for n in 0..2 {
        let mut flooder = TestClient::connect(addr, V5, &format!("flooder-{n}")).await;
        let burst = burst.clone();
        floods.push(tokio::spawn(async move {
            flooder.send_bytes(&burst).await;
            flooder
        }));
    }

    let mut worst = Duration::ZERO;
    for _ in 0..10 {
        let sent = tokio::time::Instant::now();
        canary
            .publish("canary/t", b"ping", QoS::AtMostOnce, false)
            .await;
        let got = canary.recv_publish().await;
        assert_eq!(&got.payload[..], b"ping");
        worst = worst.max(sent.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        worst < Duration::from_secs(1),
        "the canary's round trip took {worst:?} during the flood"
    );
    // The holder gets each message once, however many of its filters match.
    let first = holder.recv_publish().await;
    assert_eq!(&*first.topic, topic.as_str());
    drop(floods);
}

/// The default configuration caps the filters one session may hold, so the
/// attack above needs the limit lifted: filter 10,001 is refused.
#[tokio::test]
async fn the_default_subscription_cap_refuses_filter_10001() {
    let broker = start().await;
    let mut client = TestClient::connect(broker.local_addr(), V5, "greedy").await;
    let filters: Vec<String> = (0..10_000).map(|n| format!("g/{n}")).collect();
    subscribe_all(&mut client, &filters).await;
    assert_eq!(
        client.subscribe("g/one-more", QoS::AtMostOnce).await,
        ReasonCode::QuotaExceeded
    );
    // Changing the options of a filter it holds is still allowed.
    assert_eq!(
        client.subscribe("g/0", QoS::AtLeastOnce).await,
        ReasonCode::GrantedQoS1
    );
}
