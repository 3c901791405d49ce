//! Exactly once across a crash at every point of the QoS 2 flow.
//!
//! Random kills (`crates/tern/tests/crash.rs`, the interop suite's paho
//! crash test) meet a given interleaving by chance. Here a crash point
//! (`testing::CrashPoint`) keeps the store's changes up to one ticket and
//! loses every later one, and the test takes each ticket of the flow in
//! turn: the clients get as far as the broker lets them (every response
//! that waits for a lost change stays unsent, as it would after a kill),
//! the broker stops, another starts on the same data directory, and the
//! clients reconnect and finish as paho-mqtt does. Every message must then
//! have reached the subscriber exactly once, counted both as paho counts
//! (at PUBREL) and as a receiver that delivers at PUBLISH.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;

use bytes::Bytes;
use common::*;
use tern_broker::testing::{CrashPoint, start_crashing};
use tern_broker::{BrokerHandle, Config};
use tern_codec::*;

const V4: ProtocolVersion = ProtocolVersion::V3_1_1;

/// Messages in flight at once (pipelined, as paho's window does).
const MESSAGES: u16 = 3;

/// The flow from both clients' side, kept across the crash as paho-mqtt
/// keeps its state for a session with clean session 0.
#[derive(Default)]
struct Clients {
    /// Publisher: sent, no PUBREC yet (resent as PUBLISH with DUP).
    unreceived: BTreeMap<u16, Bytes>,
    /// Publisher: PUBREC received, no PUBCOMP yet (PUBREL resent).
    released: BTreeSet<u16>,
    /// Publisher: how many PUBCOMPs completed a message.
    completed: usize,
    /// Subscriber: QoS 2 messages awaiting PUBREL, by packet id.
    awaiting: HashMap<u16, Bytes>,
    /// Subscriber: delivered at PUBREL (paho's way).
    at_pubrel: Vec<Bytes>,
    /// Subscriber: delivered at PUBLISH unless its id awaits PUBREL.
    at_publish: Vec<Bytes>,
}

impl Clients {
    /// Answers what arrives, as the two clients would, until neither hears
    /// anything for `QUIET` (the broker holds the rest, or is done) or a
    /// connection closes.
    async fn drive(&mut self, publisher: &mut TestClient, subscriber: &mut TestClient) {
        while self.answer(publisher, subscriber, QUIET).await {}
    }

    /// Answers what arrives until every message sent is complete at both
    /// ends, then for `QUIET` more (a late duplicate would come then).
    async fn finish(&mut self, publisher: &mut TestClient, subscriber: &mut TestClient) {
        while !(self.unreceived.is_empty() && self.released.is_empty()) {
            if !self.answer(publisher, subscriber, WAIT).await {
                break;
            }
        }
        self.drive(publisher, subscriber).await;
    }

    /// Answers the next packet to arrive within `wait`; false if none did.
    async fn answer(
        &mut self,
        publisher: &mut TestClient,
        subscriber: &mut TestClient,
        wait: std::time::Duration,
    ) -> bool {
        let packet = tokio::time::timeout(wait, async {
            tokio::select! {
                p = publisher.next(WAIT) => (true, p),
                s = subscriber.next(WAIT) => (false, s),
            }
        })
        .await;
        match packet {
            Ok((true, Ok(Some(p)))) => self.publisher_gets(publisher, p).await,
            Ok((false, Ok(Some(p)))) => self.subscriber_gets(subscriber, p).await,
            _ => return false,
        }
        true
    }

    async fn publisher_gets(&mut self, publisher: &mut TestClient, packet: Packet) {
        match packet {
            Packet::PubRec(ack) => {
                let id = ack.packet_id.get();
                assert_eq!(ack.reason, ReasonCode::Success, "PUBREC {ack:?}");
                if self.unreceived.remove(&id).is_some() {
                    self.released.insert(id);
                }
                publisher
                    .send(Packet::PubRel(PubAck::new(ack.packet_id)))
                    .await;
            }
            Packet::PubComp(ack) => {
                let id = ack.packet_id.get();
                if self.released.remove(&id) {
                    self.completed += 1;
                }
            }
            other => panic!("the publisher got {other:?}"),
        }
    }

    async fn subscriber_gets(&mut self, subscriber: &mut TestClient, packet: Packet) {
        match packet {
            Packet::Publish(p) => {
                let id = p.packet_id.expect("a QoS 2 delivery has a packet id");
                if !self.awaiting.contains_key(&id.get()) {
                    self.at_publish.push(p.payload.clone());
                }
                self.awaiting.insert(id.get(), p.payload);
                subscriber.send(Packet::PubRec(PubAck::new(id))).await;
            }
            Packet::PubRel(ack) => {
                if let Some(payload) = self.awaiting.remove(&ack.packet_id.get()) {
                    self.at_pubrel.push(payload);
                }
                subscriber
                    .send(Packet::PubComp(PubAck::new(ack.packet_id)))
                    .await;
            }
            other => panic!("the subscriber got {other:?}"),
        }
    }

    /// After a reconnect the publisher resends what it has no answer for.
    async fn resend(&self, publisher: &mut TestClient) {
        for (&id, payload) in &self.unreceived {
            let mut p = publish(id, payload.clone());
            p.dup = true;
            publisher.send(Packet::Publish(p)).await;
        }
        for &id in &self.released {
            publisher.send(Packet::PubRel(PubAck::new(pid(id)))).await;
        }
    }
}

/// Publishes messages `ids` with payloads `{prefix}{id}`, pipelined.
async fn send(
    clients: &mut Clients,
    publisher: &mut TestClient,
    prefix: &str,
    ids: std::ops::RangeInclusive<u16>,
) {
    for id in ids {
        let payload = Bytes::from(format!("{prefix}{id}"));
        clients.unreceived.insert(id, payload.clone());
        publisher.send(Packet::Publish(publish(id, payload))).await;
    }
}

fn publish(id: u16, payload: Bytes) -> Publish {
    Publish {
        payload,
        ..publish_packet("t/x", b"", QoS::ExactlyOnce, id)
    }
}

/// A data directory of its own, removed when dropped.
struct DataDir(PathBuf);

impl DataDir {
    fn new(point: Option<u64>) -> DataDir {
        DataDir(std::env::temp_dir().join(format!(
            "tern-crash-point-{}-{point:?}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        )))
    }

    fn config(&self) -> Config {
        Config {
            persistence: true,
            data_dir: self.0.clone(),
            // Not parked: a parked session starts its packet ids again at 1,
            // which would hide a delivery resent under a new id after the
            // restart behind the same id it had before.
            park_idle_ms: 0,
            ..test_config()
        }
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Both clients connect with persistent sessions (MQTT 3.1.1, clean
/// session 0, as paho), the subscriber on `t/#` at QoS 2.
async fn connect(broker: &BrokerHandle, subscribe: bool) -> (TestClient, TestClient) {
    let addr = broker.local_addr();
    let (mut subscriber, _) = TestClient::connect_with(addr, persistent(V4, "sub")).await;
    if subscribe {
        subscriber.subscribe("t/#", QoS::ExactlyOnce).await;
    }
    let (publisher, _) = TestClient::connect_with(addr, persistent(V4, "pub")).await;
    (publisher, subscriber)
}

/// Publishes `MESSAGES` QoS 2 messages with the store crashing after the
/// `point`th ticket of the flow (`None`: no crash), restarts, lets the
/// clients finish, and checks exactly once. Returns how many tickets the
/// flow took before the restart.
async fn crash_at(point: Option<u64>) -> u64 {
    let dir = DataDir::new(point);
    let crash = CrashPoint::new();
    let broker = start_crashing(dir.config(), crash.clone())
        .await
        .expect("broker starts");
    let (mut publisher, mut subscriber) = connect(&broker, true).await;
    // Two messages through before: the crash's deliveries then have other
    // packet ids than the same deliveries after the restart.
    let mut clients = Clients::default();
    send(&mut clients, &mut publisher, "w", 1..=2).await;
    clients.finish(&mut publisher, &mut subscriber).await;
    let start = crash.submitted();
    if let Some(point) = point {
        crash.crash_after(start + point);
    }
    send(&mut clients, &mut publisher, "m", 11..=10 + MESSAGES).await;
    clients.drive(&mut publisher, &mut subscriber).await;
    let taken = crash.submitted() - start;
    // The crash: connections gone, nothing more written.
    publisher.drop_connection();
    subscriber.drop_connection();
    broker.shutdown().await;
    drop(crash);

    let broker = start_with(dir.config()).await;
    let (mut publisher, mut subscriber) = connect(&broker, false).await;
    clients.resend(&mut publisher).await;
    clients.finish(&mut publisher, &mut subscriber).await;
    // The same packet ids again, for new messages: an id the broker still
    // held would swallow one.
    send(&mut clients, &mut publisher, "n", 11..=10 + MESSAGES).await;
    clients.finish(&mut publisher, &mut subscriber).await;
    let at = format!("crash after ticket {point:?} of {taken}");
    assert_eq!(
        clients.completed,
        2 + 2 * usize::from(MESSAGES),
        "{at}: not every message completed at the publisher"
    );
    let ids = 11..=10 + MESSAGES;
    let payloads = (1..=2).map(|id| format!("w{id}"));
    let payloads = payloads.chain(ids.clone().map(|id| format!("m{id}")));
    for payload in payloads.chain(ids.map(|id| format!("n{id}"))) {
        for (way, delivered) in [
            ("at PUBREL", &clients.at_pubrel),
            ("at PUBLISH", &clients.at_publish),
        ] {
            let times = delivered.iter().filter(|d| **d == payload).count();
            assert_eq!(times, 1, "{at}: {payload} delivered {times} times {way}");
        }
    }
    broker.shutdown().await;
    taken
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_is_exactly_once_whichever_change_a_crash_loses() {
    let tickets = crash_at(None).await;
    assert!(tickets >= 4, "the flow took only {tickets} tickets");
    // Each point on a broker of its own, all at once.
    futures_util::future::join_all((0..=tickets).map(|point| crash_at(Some(point)))).await;
}

/// The crash point itself: changes after it are not in the file.
#[tokio::test]
async fn a_crash_point_loses_the_changes_after_it() {
    let dir = DataDir::new(Some(u64::MAX));
    let crash = CrashPoint::new();
    let broker = start_crashing(dir.config(), crash.clone())
        .await
        .expect("broker starts");
    let addr = broker.local_addr();
    let (kept, _) = TestClient::connect_with(addr, persistent(V4, "kept")).await;
    crash.crash_after(crash.submitted());
    // Its CONNACK waits for a session record that is never durable.
    let mut lost = TestClient::raw(addr, V4).await;
    lost.send(Packet::Connect(Box::new(persistent(V4, "lost"))))
        .await;
    lost.expect_nothing().await;
    kept.drop_connection();
    broker.shutdown().await;

    let broker = start_with(dir.config()).await;
    let addr = broker.local_addr();
    let (_, ack) = TestClient::connect_with(addr, persistent(V4, "kept")).await;
    assert!(
        ack.session_present,
        "the session before the crash point is kept"
    );
    let (_, ack) = TestClient::connect_with(addr, persistent(V4, "lost")).await;
    assert!(!ack.session_present, "the session after it is lost");
    broker.shutdown().await;
}
