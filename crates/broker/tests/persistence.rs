//! Persistence across a restart of the broker (a clean shutdown here; the
//! kill -9 case is `crates/tern/tests/crash.rs`): persistent sessions with
//! their subscriptions, queued and in-flight messages, QoS 2 state on both
//! sides, retained messages, and the data file's failure modes.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use tern_broker::{BrokerHandle, Config};
use tern_codec::*;

const V4: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;

/// A fresh data directory, removed when dropped.
struct DataDir(PathBuf);

impl DataDir {
    fn new(name: &str) -> DataDir {
        let dir = std::env::temp_dir().join(format!(
            "tern-persistence-{name}-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        DataDir(dir)
    }

    fn config(&self) -> Config {
        Config {
            persistence: true,
            data_dir: self.0.clone(),
            ..test_config()
        }
    }

    fn file(&self) -> PathBuf {
        self.0.join("tern.redb")
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn start_in(dir: &DataDir) -> BrokerHandle {
    start_with(dir.config()).await
}

#[tokio::test]
async fn queued_messages_and_subscriptions_survive_a_restart() {
    let dir = DataDir::new("queue");
    for version in [V4, V5] {
        let broker = start_in(&dir).await;
        let addr = broker.local_addr();
        let (mut sub, _) = TestClient::connect_with(addr, persistent(version, "dev")).await;
        sub.subscribe("q/#", QoS::ExactlyOnce).await;
        sub.disconnect().await;
        let mut publisher = TestClient::connect(addr, version, "pub").await;
        publisher
            .publish("q/1", b"one", QoS::AtLeastOnce, false)
            .await;
        publisher
            .publish("q/2", b"two", QoS::ExactlyOnce, false)
            .await;
        publisher
            .publish("q/3", b"three", QoS::AtLeastOnce, false)
            .await;
        broker.shutdown().await;

        let broker = start_in(&dir).await;
        let addr = broker.local_addr();
        let (mut sub, ack) = TestClient::connect_with(addr, persistent(version, "dev")).await;
        assert!(ack.session_present, "{version:?}: the session came back");
        let mut received = Vec::new();
        for expected in [&b"one"[..], b"two", b"three"] {
            let p = sub.recv_publish().await;
            assert_eq!(&p.payload[..], expected, "{version:?}: in order");
            received.push(p);
        }
        for p in &received {
            sub.ack(p).await;
        }
        sub.expect_nothing().await;
        // The subscription was restored too: new messages are routed.
        let mut publisher = TestClient::connect(addr, version, "pub").await;
        publisher
            .publish("q/4", b"four", QoS::AtLeastOnce, false)
            .await;
        let p = sub.recv_publish().await;
        assert_eq!(&p.payload[..], b"four");
        sub.ack(&p).await;
        // Acknowledged messages are gone from the store: a further restart
        // brings nothing back.
        sub.disconnect().await;
        broker.shutdown().await;
        let broker = start_in(&dir).await;
        let (mut sub, ack) =
            TestClient::connect_with(broker.local_addr(), persistent(version, "dev")).await;
        assert!(ack.session_present);
        sub.expect_nothing().await;
        // Clean Start ends it for good.
        drop(sub);
        let mut clean = persistent(version, "dev");
        clean.clean_start = true;
        let (sub, _) = TestClient::connect_with(broker.local_addr(), clean).await;
        sub.disconnect().await;
        broker.shutdown().await;
    }
}

#[tokio::test]
async fn in_flight_messages_are_resent_with_their_packet_ids() {
    let dir = DataDir::new("inflight");
    let broker = start_in(&dir).await;
    let addr = broker.local_addr();
    let (mut sub, _) = TestClient::connect_with(addr, persistent(V5, "dev")).await;
    sub.subscribe("t/1", QoS::AtLeastOnce).await;
    sub.subscribe("t/2", QoS::ExactlyOnce).await;
    let mut publisher = TestClient::connect(addr, V5, "pub").await;
    publisher
        .publish("t/1", b"q1", QoS::AtLeastOnce, false)
        .await;
    publisher
        .publish("t/2", b"q2", QoS::ExactlyOnce, false)
        .await;
    publisher
        .publish("t/2", b"q2b", QoS::ExactlyOnce, false)
        .await;
    let q1 = sub.recv_publish().await;
    let q2 = sub.recv_publish().await;
    let q2b = sub.recv_publish().await;
    // The second QoS 2 message gets as far as PUBREC / PUBREL.
    sub.send(Packet::PubRec(PubAck::new(q2b.packet_id.unwrap())))
        .await;
    match sub.recv().await {
        Packet::PubRel(r) => assert_eq!(Some(r.packet_id), q2b.packet_id),
        other => panic!("expected PUBREL, got {other:?}"),
    }
    sub.drop_connection();
    broker.shutdown().await;

    let broker = start_in(&dir).await;
    let (mut sub, ack) = TestClient::connect_with(broker.local_addr(), persistent(V5, "dev")).await;
    assert!(ack.session_present);
    let again = sub.recv_publish().await;
    assert_eq!(
        (&again.payload[..], again.dup, again.packet_id),
        (&b"q1"[..], true, q1.packet_id)
    );
    let again = sub.recv_publish().await;
    assert_eq!(
        (&again.payload[..], again.dup, again.packet_id),
        (&b"q2"[..], true, q2.packet_id)
    );
    match sub.recv().await {
        Packet::PubRel(r) => assert_eq!(Some(r.packet_id), q2b.packet_id),
        other => panic!("expected PUBREL for the released message, got {other:?}"),
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn an_inbound_qos2_id_held_before_the_restart_is_not_routed_twice() {
    let dir = DataDir::new("inbound");
    let broker = start_in(&dir).await;
    let addr = broker.local_addr();
    let (mut sub, _) = TestClient::connect_with(addr, persistent(V5, "sub")).await;
    sub.subscribe("x", QoS::AtLeastOnce).await;
    let (mut publisher, _) = TestClient::connect_with(addr, persistent(V5, "pub")).await;
    publisher
        .send(Packet::Publish(publish_packet(
            "x",
            b"once",
            QoS::ExactlyOnce,
            7,
        )))
        .await;
    match publisher.recv().await {
        Packet::PubRec(r) => assert_eq!(r.packet_id, pid(7)),
        other => panic!("expected PUBREC, got {other:?}"),
    }
    let p = sub.recv_publish().await;
    sub.ack(&p).await;
    publisher.drop_connection();
    sub.disconnect().await;
    broker.shutdown().await;

    let broker = start_in(&dir).await;
    let addr = broker.local_addr();
    let (mut sub, _) = TestClient::connect_with(addr, persistent(V5, "sub")).await;
    let (mut publisher, ack) = TestClient::connect_with(addr, persistent(V5, "pub")).await;
    assert!(ack.session_present);
    // The publisher did not see PUBCOMP, so it re-sends with DUP.
    let mut dup = publish_packet("x", b"once", QoS::ExactlyOnce, 7);
    dup.dup = true;
    publisher.send(Packet::Publish(dup)).await;
    match publisher.recv().await {
        Packet::PubRec(r) => assert_eq!(r.packet_id, pid(7)),
        other => panic!("expected PUBREC, got {other:?}"),
    }
    publisher.send(Packet::PubRel(PubAck::new(pid(7)))).await;
    match publisher.recv().await {
        Packet::PubComp(c) => assert_eq!((c.packet_id, c.reason), (pid(7), ReasonCode::Success)),
        other => panic!("expected PUBCOMP, got {other:?}"),
    }
    sub.expect_nothing().await;
    broker.shutdown().await;
}

#[tokio::test]
async fn retained_messages_survive_and_clearing_them_does_too() {
    let dir = DataDir::new("retained");
    let broker = start_in(&dir).await;
    let mut publisher = TestClient::connect(broker.local_addr(), V5, "pub").await;
    publisher
        .publish("r/kept", b"22.5", QoS::AtLeastOnce, true)
        .await;
    publisher
        .publish("r/cleared", b"x", QoS::AtLeastOnce, true)
        .await;
    publisher
        .publish("r/cleared", b"", QoS::AtLeastOnce, true)
        .await;
    broker.shutdown().await;

    let broker = start_in(&dir).await;
    let mut sub = TestClient::connect(broker.local_addr(), V5, "late").await;
    sub.subscribe("r/#", QoS::AtLeastOnce).await;
    let p = sub.recv_publish().await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..], p.retain),
        ("r/kept", &b"22.5"[..], true)
    );
    sub.ack(&p).await;
    sub.expect_nothing().await;
    broker.shutdown().await;
}

#[tokio::test]
async fn session_expiry_counts_the_time_the_broker_was_down() {
    let dir = DataDir::new("expiry");
    let broker = start_in(&dir).await;
    let mut connect = persistent(V5, "brief");
    connect.properties.session_expiry_interval = Some(1);
    let (sub, _) = TestClient::connect_with(broker.local_addr(), connect.clone()).await;
    sub.disconnect().await;
    broker.shutdown().await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let broker = start_in(&dir).await;
    // Restored, and already expired: the timer fires at once.
    let waited = tokio::time::timeout(WAIT, async {
        while broker.state().sessions().get("brief").is_some() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "the expired session is still there");
    let (_sub, ack) = TestClient::connect_with(broker.local_addr(), connect).await;
    assert!(!ack.session_present);
    broker.shutdown().await;
}

/// A will waiting out its Will Delay Interval when the broker stops is
/// published after the restart, when its delay ends, once.
#[tokio::test]
async fn a_pending_will_survives_a_restart() {
    let dir = DataDir::new("will");
    let broker = start_in(&dir).await;
    let mut device = persistent(V5, "device");
    device.properties.session_expiry_interval = Some(60);
    device.will = Some(LastWill {
        topic: "dev/status".into(),
        payload: bytes::Bytes::from_static(b"offline"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: WillProperties {
            will_delay_interval: Some(2),
            ..WillProperties::default()
        },
    });
    let (dev, _) = TestClient::connect_with(broker.local_addr(), device).await;
    let dropped_at = tokio::time::Instant::now();
    dev.drop_connection();
    // The broker has seen the connection go (and stored the pending will).
    let detached = tokio::time::timeout(WAIT, async {
        loop {
            let session = broker.state().sessions().get("device");
            let waiting = session.is_some_and(|s| {
                let st = s.lock();
                st.connection.is_none() && st.pending_will.is_some()
            });
            if waiting {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(
        detached.is_ok(),
        "the device's connection was not seen to end"
    );
    broker.shutdown().await;

    let broker = start_in(&dir).await;
    let mut watcher = TestClient::connect(broker.local_addr(), V5, "watcher").await;
    watcher.subscribe("dev/#", QoS::AtLeastOnce).await;
    let will = watcher.recv_publish().await;
    assert_eq!(will.payload, "offline");
    assert!(
        dropped_at.elapsed() >= Duration::from_millis(1900),
        "published before its delay"
    );
    watcher.ack(&will).await;
    watcher.expect_nothing().await;
    broker.shutdown().await;
}

/// A queued or retained message whose Message Expiry Interval runs out while
/// the broker is down is not delivered after the restart, and stays gone.
#[tokio::test]
async fn messages_that_expire_while_the_broker_is_down_are_dropped() {
    let dir = DataDir::new("message-expiry");
    let broker = start_in(&dir).await;
    let addr = broker.local_addr();
    let (mut sub, _) = TestClient::connect_with(addr, persistent(V5, "offline")).await;
    sub.subscribe("exp/#", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut publisher = TestClient::connect(addr, V5, "pub").await;
    let expiring = |topic: &str, retain: bool, id: u16| {
        let mut p = publish_packet(topic, b"short", QoS::AtLeastOnce, id);
        p.retain = retain;
        p.properties.message_expiry_interval = Some(1);
        p
    };
    publisher
        .publish_packet(expiring("exp/queued", false, 1))
        .await;
    publisher
        .publish_packet(expiring("exp/retained", true, 2))
        .await;
    publisher
        .publish("exp/kept", b"kept", QoS::AtLeastOnce, false)
        .await;
    broker.shutdown().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;

    for restart in 0..2 {
        let broker = start_in(&dir).await;
        let addr = broker.local_addr();
        let (mut sub, ack) = TestClient::connect_with(addr, persistent(V5, "offline")).await;
        assert!(ack.session_present);
        if restart == 0 {
            let p = sub.recv_publish().await;
            assert_eq!(p.payload, "kept", "only the message that has not expired");
            sub.ack(&p).await;
        }
        sub.expect_nothing().await;
        let mut late = TestClient::connect(addr, V5, "late").await;
        late.subscribe("exp/#", QoS::AtLeastOnce).await;
        late.expect_nothing().await;
        sub.disconnect().await;
        broker.shutdown().await;
    }
}

#[tokio::test]
async fn a_second_broker_on_the_same_data_directory_is_refused() {
    let dir = DataDir::new("locked");
    let broker = start_in(&dir).await;
    let err = match tern_broker::Broker::start(dir.config()).await {
        Ok(_) => panic!("a second broker opened a data file in use"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains(&dir.file().display().to_string()), "{err}");
    broker.shutdown().await;
}

#[tokio::test]
async fn a_data_file_that_is_not_one_is_refused_with_its_name() {
    let dir = DataDir::new("garbage");
    std::fs::create_dir_all(&dir.0).unwrap();
    std::fs::write(dir.file(), vec![0xAB; 4096]).unwrap();
    let err = match tern_broker::Broker::start(dir.config()).await {
        Ok(_) => panic!("started on a damaged data file"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains(&dir.file().display().to_string()), "{err}");
}

#[tokio::test]
async fn without_persistence_nothing_is_written() {
    let dir = DataDir::new("off");
    let config = Config {
        persistence: false,
        ..dir.config()
    };
    let broker = start_with(config).await;
    let mut publisher = TestClient::connect(broker.local_addr(), V5, "pub").await;
    publisher.publish("r", b"x", QoS::AtLeastOnce, true).await;
    broker.shutdown().await;
    assert!(!Path::new(&dir.0).exists());
}

/// A persistent session keeps its client's username across a restart, so
/// the ACL lets through what that user may read while the client is still
/// offline: `%u` rules would otherwise judge it as anonymous and drop it.
#[tokio::test]
async fn the_acl_judges_a_restored_session_by_its_username() {
    let dir = DataDir::new("acl-username");
    std::fs::create_dir_all(&dir.0).unwrap();
    let acl = dir.0.join("acl");
    std::fs::write(&acl, "pattern read inbox/%u/#\npattern write inbox/#\n").unwrap();
    let config = || Config {
        acl_file: Some(acl.clone()),
        ..dir.config()
    };
    let broker = start_with(config()).await;
    let mut login = persistent(V5, "phone");
    login.username = Some("alice".into());
    let (mut sub, _) = TestClient::connect_with(broker.local_addr(), login.clone()).await;
    assert_eq!(
        sub.subscribe("inbox/alice/#", QoS::AtLeastOnce).await,
        ReasonCode::GrantedQoS1
    );
    sub.disconnect().await;
    broker.shutdown().await;

    let broker = start_with(config()).await;
    let mut publisher = TestClient::connect(broker.local_addr(), V5, "server").await;
    publisher
        .publish("inbox/alice/1", b"for alice", QoS::AtLeastOnce, false)
        .await;
    let (mut sub, ack) = TestClient::connect_with(broker.local_addr(), login).await;
    assert!(ack.session_present);
    let p = sub.recv_publish().await;
    assert_eq!(&p.payload[..], b"for alice");
    sub.ack(&p).await;
    broker.shutdown().await;
}

/// Who set each retained message is stored with it, so a user's retained
/// quota still counts what they set before a restart.
#[tokio::test]
async fn retained_quotas_hold_across_a_restart() {
    let dir = DataDir::new("retained-quota");
    let config = || Config {
        max_retained_messages_per_user: 1,
        ..dir.config()
    };
    let mut login = connect_packet(V5, "carol-1");
    login.username = Some("carol".into());
    let broker = start_with(config()).await;
    let (mut carol, _) = TestClient::connect_with(broker.local_addr(), login.clone()).await;
    // Accepted (no one is subscribed: MQTT 5 says so).
    let accepted = ReasonCode::NoMatchingSubscribers;
    assert_eq!(carol.retain("rq/1", b"r").await, accepted);
    carol.disconnect().await;
    broker.shutdown().await;

    let broker = start_with(config()).await;
    let (mut carol, _) = TestClient::connect_with(broker.local_addr(), login).await;
    assert_eq!(carol.retain("rq/2", b"r").await, ReasonCode::QuotaExceeded);
    assert_eq!(carol.retain("rq/1", b"r").await, accepted, "her own topic");
    broker.shutdown().await;
}

/// A copy of `tests/data/NAME` (a data directory an older tern wrote).
fn fixture(name: &str) -> DataDir {
    let dir = DataDir::new(name);
    std::fs::create_dir_all(&dir.0).unwrap();
    let from = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    std::fs::copy(from.join("tern.redb"), dir.file()).unwrap();
    dir
}

/// Receives `expected` payloads in order, acknowledging each.
async fn receive_in_order(client: &mut TestClient, expected: &[&str]) {
    for want in expected {
        let p = client.recv_publish().await;
        assert_eq!(std::str::from_utf8(&p.payload).unwrap(), *want);
        client.ack(&p).await;
    }
    client.expect_nothing().await;
}

#[tokio::test]
async fn a_file_of_the_first_layout_is_read_and_upgraded() {
    // Written by the tern of the first record layout (see its README).
    let dir = fixture("layout-1");
    assert_eq!(tern_broker::testing::data_format(&dir.0).unwrap(), 1);
    let broker = start_in(&dir).await;
    let addr = broker.local_addr();
    let (mut sensor, ack) = TestClient::connect_with(addr, persistent(V4, "sensor-sub")).await;
    assert!(ack.session_present);
    receive_in_order(&mut sensor, &["21.0", "21.5", "22.5", "kitchen", "22.5"]).await;
    let (mut phone, ack) = TestClient::connect_with(addr, persistent(V5, "phone")).await;
    assert!(ack.session_present);
    receive_in_order(&mut phone, &["21.0", "21.5", "22.5", "22.5"]).await;
    // Its subscriptions route new messages.
    let mut publisher = TestClient::connect(addr, V5, "pub").await;
    publisher
        .publish("alerts/smoke", b"hall", QoS::AtLeastOnce, false)
        .await;
    receive_in_order(&mut sensor, &["hall"]).await;
    // Its retained messages, to a new subscriber.
    let mut late = TestClient::connect(addr, V5, "late").await;
    late.subscribe("#", QoS::AtMostOnce).await;
    let mut retained: Vec<(String, String)> = Vec::new();
    for _ in 0..2 {
        let p = late.recv_publish().await;
        assert!(p.retain);
        retained.push((
            p.topic.to_string(),
            String::from_utf8_lossy(&p.payload).into(),
        ));
    }
    retained.sort();
    assert_eq!(
        retained,
        [
            ("config/site".into(), r#"{"name":"plant 4"}"#.into()),
            ("house/room1/temp".into(), "22.5".into())
        ]
    );
    broker.shutdown().await;
    // Upgraded: the file now says its format, and opens again as it is.
    assert_eq!(
        tern_broker::testing::data_format(&dir.0).unwrap(),
        tern_broker::testing::DATA_FORMAT
    );
    let broker = start_in(&dir).await;
    let (mut sensor, ack) =
        TestClient::connect_with(broker.local_addr(), persistent(V4, "sensor-sub")).await;
    assert!(ack.session_present);
    sensor.expect_nothing().await;
    broker.shutdown().await;
}

#[tokio::test]
async fn a_file_from_a_newer_tern_is_refused_with_the_version_it_needs() {
    let dir = DataDir::new("newer");
    start_in(&dir).await.shutdown().await;
    let newer = tern_broker::testing::DATA_FORMAT + 1;
    tern_broker::testing::mark_data_format(&dir.0, newer, "tern 9.9.9").unwrap();
    let err = match tern_broker::Broker::start(dir.config()).await {
        Ok(_) => panic!("started on a data file of a newer format"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains(&dir.file().display().to_string()), "{err}");
    assert!(
        err.contains(&format!("data format {newer}, written by tern 9.9.9")),
        "{err}"
    );
    assert!(err.contains("run tern 9.9.9 or newer"), "{err}");
}

#[tokio::test]
async fn delayed_messages_keep_their_time_across_a_restart() {
    let dir = DataDir::new("delayed");
    let broker = start_in(&dir).await;
    let addr = broker.local_addr();
    let (mut sub, _) = TestClient::connect_with(addr, persistent(V4, "dev")).await;
    sub.subscribe("d/#", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut publisher = TestClient::connect(addr, V5, "pub").await;
    let sent = std::time::Instant::now();
    publisher
        .publish("$delayed/1/d/overdue", b"first", QoS::AtLeastOnce, false)
        .await;
    publisher
        .publish("$delayed/3/d/later", b"second", QoS::ExactlyOnce, false)
        .await;
    broker.shutdown().await;
    // Down past the first one's time.
    tokio::time::sleep(Duration::from_millis(1200)).await;

    let broker = start_in(&dir).await;
    let (mut sub, ack) = TestClient::connect_with(broker.local_addr(), persistent(V4, "dev")).await;
    assert!(ack.session_present);
    let p = sub.recv_publish().await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("d/overdue", &b"first"[..])
    );
    sub.ack(&p).await;
    let p = sub.recv_publish().await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("d/later", &b"second"[..])
    );
    assert!(
        sent.elapsed() >= Duration::from_secs(3),
        "the second kept its time: {:?}",
        sent.elapsed()
    );
    sub.ack(&p).await;
    sub.disconnect().await;
    broker.shutdown().await;
    // Published: gone from the file.
    let broker = start_in(&dir).await;
    let (mut sub, _) = TestClient::connect_with(broker.local_addr(), persistent(V4, "dev")).await;
    sub.expect_nothing().await;
    broker.shutdown().await;
}
