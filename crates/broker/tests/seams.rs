//! The seams a cluster plugs into (`tern_broker::seams`), driven through
//! real sockets with a second implementation of each: one that records
//! what the broker tells it, as a cluster would act on it.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tern_broker::Message;
use tern_broker::seams::{Claim, Fabric, Ownership, Seams};
use tern_codec::{ByteStr, ProtocolVersion::V5, QoS};
use tokio::sync::oneshot;

use common::*;

/// A client id whose session another node holds, and the signal that it
/// let go.
type Held = Option<(String, oneshot::Receiver<()>)>;

/// Records every call; can hold one client id's claim until told.
#[derive(Clone, Default)]
struct Recorder {
    log: Arc<Mutex<Vec<String>>>,
    held: Arc<Mutex<Held>>,
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

    fn interest(&self, filter: &str, group: Option<&str>, present: bool) {
        self.push(format!("interest {filter} {group:?} {present}"));
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
