//! The examples in `examples/`, run as this test's own code against the real
//! broker: the sensor's readings reach the subscriber, which keeps its
//! session across a lost connection and misses nothing published while it
//! was away.

mod common;

// Each example is a binary; its `main` and argument parsing are not used here.
#[allow(dead_code)]
#[path = "../examples/sensor.rs"]
mod sensor;
#[allow(dead_code)]
#[path = "../examples/subscriber.rs"]
mod subscriber;

use std::io::{self, Write};
use std::time::Duration;

use common::relay::Relay;
use common::*;
use tokio::sync::mpsc;

/// Hands each line an example prints to the test as soon as it is printed.
struct Lines {
    tx: mpsc::UnboundedSender<String>,
    partial: Vec<u8>,
}

impl Write for Lines {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.partial.extend_from_slice(buf);
        while let Some(end) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            let _ = self
                .tx
                .send(String::from_utf8_lossy(&line[..end]).into_owned());
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

async fn next_line(lines: &mut mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(WAIT, lines.recv())
        .await
        .expect("the subscriber prints a line in time")
        .expect("the subscriber is still running")
}

/// Runs the sensor against `port` for `count` readings; returns what it printed.
async fn sensor(port: u16, count: u64) -> String {
    let args = sensor::Args {
        host: "127.0.0.1".into(),
        port,
        count,
        interval: Duration::from_millis(10),
    };
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, sensor::run(&args, &mut out))
        .await
        .expect("the sensor finishes in time")
        .expect("the sensor succeeds");
    String::from_utf8(out).unwrap()
}

/// The temperature from a line `house/room1/temp 21.3`.
fn temperature(line: &str) -> f64 {
    let value = line
        .strip_prefix("house/room1/temp ")
        .unwrap_or_else(|| panic!("expected a temperature, got {line:?}"));
    value.parse().unwrap()
}

#[tokio::test]
async fn sensor_readings_reach_the_subscriber_across_a_lost_connection() {
    let broker = broker().await;
    let port = broker.local_addr().port();
    let relay = Relay::start(broker.local_addr()).await;
    let (tx, mut lines) = mpsc::unbounded_channel();
    let args = subscriber::Args {
        host: "127.0.0.1".into(),
        port: relay.port(),
        filter: "house/+/temp".into(),
        count: Some(3),
    };
    let subscriber = tokio::spawn(async move {
        let mut out = Lines {
            tx,
            partial: Vec::new(),
        };
        subscriber::run(&args, &mut out).await
    });
    assert_eq!(
        next_line(&mut lines).await,
        "connected (session present: false)"
    );
    assert_eq!(next_line(&mut lines).await, "subscribed to house/+/temp");

    let printed = sensor(port, 1).await;
    assert!(
        printed.starts_with("reading 1: ") && printed.contains("(success (0x00))"),
        "{printed}"
    );
    temperature(&next_line(&mut lines).await);

    // The subscriber's connection breaks; readings sent before it is back
    // wait in its session on the broker.
    relay.cut();
    let line = next_line(&mut lines).await;
    assert!(line.starts_with("disconnected: "), "{line}");
    assert_eq!(sensor(port, 2).await.lines().count(), 2);
    assert_eq!(
        next_line(&mut lines).await,
        "reconnected; the broker kept the session"
    );
    for _ in 0..2 {
        let celsius = temperature(&next_line(&mut lines).await);
        assert!((19.0..=23.0).contains(&celsius), "{celsius}");
    }
    // Three messages: it stops by itself.
    tokio::time::timeout(WAIT, subscriber)
        .await
        .expect("the subscriber stops after COUNT messages")
        .unwrap()
        .unwrap();

    // The sensor's last word is its retained status.
    let (client, mut events) =
        connect(options(&broker, tern_client::ProtocolVersion::V5, "status")).await;
    subscribe(&client, "house/room1/status", tern_client::QoS::AtLeastOnce).await;
    let status = next_message(&mut events).await;
    assert!(status.retain);
    assert_eq!(&status.payload[..], b"offline");
    broker.shutdown().await;
}
