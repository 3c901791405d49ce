//! `$SYS/broker/...` statistics, under Mosquitto's topic names.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use tern_broker::{BrokerHandle, Config};
use tern_codec::*;

const V5: ProtocolVersion = ProtocolVersion::V5;

/// How long a test waits for `$SYS` updates published every second (up to
/// three updates).
const SYS_WAIT: Duration = Duration::from_millis(3500);

async fn start_sys(edit: impl FnOnce(&mut Config)) -> BrokerHandle {
    let mut config = Config {
        sys_interval_secs: 1,
        ..test_config()
    };
    edit(&mut config);
    start_with(config).await
}

/// The next PUBLISH within `SYS_WAIT` of `since`, as (topic, value, retain).
async fn next_sys(client: &mut TestClient, since: tokio::time::Instant) -> (String, String, bool) {
    let left = SYS_WAIT.saturating_sub(since.elapsed());
    match client.next(left).await {
        Ok(Some(Packet::Publish(p))) => (
            p.topic.to_string(),
            String::from_utf8(p.payload.to_vec()).expect("UTF-8 value"),
            p.retain,
        ),
        Ok(other) => panic!("expected PUBLISH, got {other:?}"),
        Err(_) => panic!("no $SYS update within {SYS_WAIT:?}"),
    }
}

fn number(values: &HashMap<String, String>, topic: &str) -> u64 {
    let value = &values[topic];
    value
        .parse()
        .unwrap_or_else(|_| panic!("{topic} = {value:?} is not a number"))
}

#[tokio::test]
async fn sys_topics_are_published_with_plausible_values() {
    const TOPICS: [&str; 8] = [
        "$SYS/broker/version",
        "$SYS/broker/uptime",
        "$SYS/broker/clients/connected",
        "$SYS/broker/messages/received",
        "$SYS/broker/messages/sent",
        "$SYS/broker/subscriptions/count",
        "$SYS/broker/retained messages/count",
        "$SYS/broker/publish/messages/dropped",
    ];
    let broker = start_sys(|_| {}).await;
    let mut client = TestClient::connect(broker.local_addr(), V5, "sys-all").await;
    assert_eq!(
        client.subscribe("$SYS/#", QoS::AtMostOnce).await,
        ReasonCode::Success
    );

    // Retained values (retain = 1) may predate this client. A live update
    // (retain = 0) was routed after the subscribe, but its values may have
    // been taken just before; the values of the next update (the second live
    // `version`) were taken after the subscribe and after the previous
    // update's topics were retained.
    let since = tokio::time::Instant::now();
    let mut live_updates = 0;
    let mut live = HashMap::new();
    while !TOPICS.iter().all(|t| live.contains_key(*t)) {
        let (topic, value, retain) = next_sys(&mut client, since).await;
        assert!(topic.starts_with("$SYS/broker/"), "{topic}");
        if retain {
            continue;
        }
        if topic == "$SYS/broker/version" {
            live_updates += 1;
        }
        if live_updates >= 2 {
            live.insert(topic, value);
        }
    }

    assert!(live["$SYS/broker/version"].starts_with("tern"), "{live:?}");
    let uptime = &live["$SYS/broker/uptime"];
    let secs = uptime.strip_suffix(" seconds").expect("\"N seconds\"");
    assert!(secs.parse::<u64>().is_ok(), "uptime {uptime:?}");
    assert!(number(&live, "$SYS/broker/clients/connected") >= 1);
    // At least this client's CONNECT and SUBSCRIBE, CONNACK and SUBACK.
    assert!(number(&live, "$SYS/broker/messages/received") >= 2);
    assert!(number(&live, "$SYS/broker/messages/sent") >= 2);
    assert!(number(&live, "$SYS/broker/subscriptions/count") >= 1);
    // The `$SYS` topics are retained messages themselves.
    assert!(number(&live, "$SYS/broker/retained messages/count") >= 1);
    assert_eq!(number(&live, "$SYS/broker/publish/messages/dropped"), 0);
}

#[tokio::test]
async fn hash_subscription_does_not_match_sys_topics() {
    let broker = start_sys(|_| {}).await;
    let addr = broker.local_addr();
    let mut all = TestClient::connect(addr, V5, "sys-hash").await;
    assert_eq!(
        all.subscribe("#", QoS::AtMostOnce).await,
        ReasonCode::Success
    );
    let mut watcher = TestClient::connect(addr, V5, "sys-watch").await;
    assert_eq!(
        watcher
            .subscribe("$SYS/broker/uptime", QoS::AtMostOnce)
            .await,
        ReasonCode::Success
    );

    // Wait for a `$SYS` update published after both subscribed.
    let since = tokio::time::Instant::now();
    loop {
        let (topic, _, retain) = next_sys(&mut watcher, since).await;
        assert_eq!(topic, "$SYS/broker/uptime");
        if !retain {
            break;
        }
    }
    // Neither the retained `$SYS` messages nor that update reached `#`...
    all.expect_nothing().await;
    // ...which does receive ordinary topics.
    watcher
        .publish("plain/t", b"hi", QoS::AtMostOnce, false)
        .await;
    let got = all.recv_publish().await;
    assert_eq!(got.topic, "plain/t");
}

#[tokio::test]
async fn dropped_counter_counts_queue_overflow() {
    let broker = start_sys(|c| c.max_queued_messages = 5).await;
    let addr = broker.local_addr();
    let mut watcher = TestClient::connect(addr, V5, "sys-drop-watch").await;
    watcher
        .subscribe("$SYS/broker/publish/messages/dropped", QoS::AtMostOnce)
        .await;
    let since = tokio::time::Instant::now();
    let (_, value, _) = next_sys(&mut watcher, since).await;
    assert_eq!(value, "0");

    // An offline persistent session with a QoS 1 subscription.
    let mut connect = connect_packet(V5, "sys-slow");
    connect.properties.session_expiry_interval = Some(60);
    let (mut slow, _) = TestClient::connect_with(addr, connect).await;
    assert_eq!(
        slow.subscribe("drop/t", QoS::AtLeastOnce).await,
        ReasonCode::GrantedQoS1
    );
    slow.disconnect().await;

    let mut publisher = TestClient::connect(addr, V5, "sys-drop-pub").await;
    for _ in 0..20 {
        publisher
            .publish("drop/t", b"m", QoS::AtLeastOnce, false)
            .await;
    }

    // 5 are queued, 15 dropped; the next update reports them (one taken
    // while the messages were being published may show fewer).
    let since = tokio::time::Instant::now();
    loop {
        let (_, value, _) = next_sys(&mut watcher, since).await;
        let dropped: u64 = value.parse().expect("a number");
        assert!(dropped <= 15, "dropped = {dropped}");
        if dropped == 15 {
            break;
        }
    }
}
