//! The seams a cluster plugs into (`tern_broker::seams`), driven through
//! real sockets with a second implementation of each: one that records
//! what the broker tells it, as a cluster would act on it.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicU64, Ordering};
use tern_broker::Message;
use tern_broker::seams::{Claim, Fabric, Ownership, Seams};
use tern_codec::{ByteStr, ProtocolVersion::V5, QoS};
use tokio::sync::{oneshot, watch};

use common::*;

/// A client id whose session another node holds, and the signal that it
/// let go.
type Held = Option<(String, oneshot::Receiver<()>)>;

/// Records every call; can hold one client id's claim until told, and
/// report interest applied only up to a ticket (every one by default).
#[derive(Clone)]
struct Recorder {
    log: Arc<Mutex<Vec<String>>>,
    held: Arc<Mutex<Held>>,
    /// Tickets are 1, 2, 3… per subscription added.
    issued: Arc<AtomicU64>,
    applied: Arc<watch::Sender<u64>>,
}

impl Default for Recorder {
    fn default() -> Recorder {
        Recorder {
            log: Arc::default(),
            held: Arc::default(),
            issued: Arc::default(),
            applied: Arc::new(watch::channel(u64::MAX).0),
        }
    }
}

impl Recorder {
    fn push(&self, line: String) {
        self.log.lock().unwrap().push(line);
    }

    fn has(&self, line: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l == line)
    }

    fn count(&self, prefix: &str) -> usize {
        let log = self.log.lock().unwrap();
        log.iter().filter(|l| l.starts_with(prefix)).count()
    }

    fn seams(&self) -> Seams {
        Seams {
            fabric: Box::new(self.clone()),
            ownership: Box::new(self.clone()),
        }
    }
}

impl Fabric for Recorder {
    fn forward(&self, message: &Arc<Message>, _served: &[Arc<str>]) {
        self.push(format!("forward {}", message.topic));
    }

    fn interest(&self, filter: &str, group: Option<&str>, present: bool) -> u64 {
        self.push(format!("interest {filter} {group:?} {present}"));
        match present {
            true => self.issued.fetch_add(1, Ordering::Relaxed) + 1,
            false => 0,
        }
    }

    fn applied(&self) -> u64 {
        *self.applied.borrow()
    }

    fn applied_changes(&self) -> Option<watch::Receiver<u64>> {
        Some(self.applied.subscribe())
    }
}

impl Ownership for Recorder {
    fn claim(&self, client_id: &ByteStr, _persistent: bool) -> Option<Claim> {
        self.push(format!("claim {client_id}"));
        let mut held = self.held.lock().unwrap();
        match held.take() {
            Some((id, released)) if id == client_id.as_str() => Some(Box::pin(async move {
                let _ = released.await;
            })),
            other => {
                *held = other;
                None
            }
        }
    }

    fn release(&self, client_id: &ByteStr) {
        self.push(format!("release {client_id}"));
    }
}

#[tokio::test]
async fn messages_leave_through_the_fabric_and_arrive_from_it_once() {
    let recorder = Recorder::default();
    let broker = tern_broker::Broker::start_with(test_config(), recorder.seams())
        .await
        .unwrap();
    let addr = broker.local_addr();
    let mut sub = TestClient::connect(addr, V5, "sub").await;
    sub.subscribe("house/#", QoS::AtLeastOnce).await;
    sub.subscribe("$share/g/work/+", QoS::AtMostOnce).await;
    assert!(recorder.has("interest house/# None true"));
    assert!(recorder.has("interest work/+ Some(\"g\") true"));
    // Subscribing again replaces the subscription: no second interest.
    sub.subscribe("house/#", QoS::AtMostOnce).await;
    assert_eq!(recorder.count("interest house/#"), 1);

    let mut publisher = TestClient::connect(addr, V5, "pub").await;
    publisher
        .publish("house/1", b"22.5", QoS::AtMostOnce, false)
        .await;
    assert_eq!(sub.recv_publish().await.payload, "22.5");
    eventually("the message is forwarded", || {
        recorder.has("forward house/1")
    })
    .await;

    // A message another node accepted reaches this node's subscriber and
    // is not sent back out.
    let remote = Message::broker_retained("house/2".into(), "from elsewhere".into());
    assert_eq!(broker.route_remote(remote), 1);
    assert_eq!(sub.recv_publish().await.payload, "from elsewhere");
    assert_eq!(recorder.count("forward "), 1, "only house/1 left this node");

    assert!(recorder.has("claim sub") && recorder.has("claim pub"));
    sub.disconnect().await;
    eventually("the session's end is told", || {
        recorder.has("release sub") && recorder.has("interest house/# None false")
    })
    .await;
    assert!(recorder.has("interest work/+ Some(\"g\") false"));
    broker.shutdown().await;
}

#[tokio::test]
async fn a_session_held_elsewhere_is_attached_only_once_let_go() {
    let recorder = Recorder::default();
    let (release, released) = oneshot::channel();
    *recorder.held.lock().unwrap() = Some(("device".to_owned(), released));
    let broker = tern_broker::Broker::start_with(test_config(), recorder.seams())
        .await
        .unwrap();
    let addr = broker.local_addr();
    let started = Instant::now();
    let connecting =
        tokio::spawn(async move { TestClient::connect_with(addr, persistent(V5, "device")).await });
    eventually("the claim is made", || recorder.has("claim device")).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!connecting.is_finished(), "CONNACK waits for the claim");
    release.send(()).unwrap();
    let (_client, connack) = connecting.await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(100));
    assert_eq!(connack.reason, tern_codec::ReasonCode::Success);
    broker.shutdown().await;
}

/// A SUBACK promises the subscription: with a fabric, it goes out once the
/// fabric has applied the interest (other nodes route to it), and the
/// packets after it wait with it.
#[tokio::test]
async fn a_suback_waits_until_the_fabric_applied_the_interest() {
    let recorder = Recorder::default();
    recorder.applied.send_replace(0);
    let broker = tern_broker::Broker::start_with(test_config(), recorder.seams())
        .await
        .unwrap();
    let mut sub = TestClient::connect(broker.local_addr(), V5, "sub").await;
    sub.send(tern_codec::Packet::Subscribe(tern_codec::Subscribe {
        packet_id: pid(1),
        filters: vec![tern_codec::SubscribeFilter {
            filter: "house/#".into(),
            options: Default::default(),
        }],
        properties: Default::default(),
    }))
    .await;
    sub.send(tern_codec::Packet::PingReq).await;
    eventually("the interest is told", || {
        recorder.has("interest house/# None true")
    })
    .await;
    sub.expect_nothing().await;
    recorder.applied.send_replace(1);
    assert!(matches!(sub.recv().await, tern_codec::Packet::SubAck(_)));
    assert!(matches!(sub.recv().await, tern_codec::Packet::PingResp));
    broker.shutdown().await;
}
