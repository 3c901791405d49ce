//! A subscriber that misses nothing: a persistent session (a fixed client
//! id, clean start off, the session kept for an hour) subscribed to FILTER
//! at QoS 1. It prints every message and every connection event, and goes
//! on across lost connections and broker restarts, reconnecting with
//! backoff; while it is away, the broker keeps its messages for it.
//!
//! ```text
//! cargo run -p tern-client --example subscriber -- [HOST] [PORT] [FILTER] [COUNT]
//! ```
//!
//! Defaults: `localhost 1883 'house/#'`, and no COUNT: it runs until
//! interrupted. With COUNT it stops after that many messages. Feed it with
//! the sensor example, or `tern pub -t house/room1/temp -m 21.5 -q 1`.

use std::io::Write;
use std::time::Duration;

use tern_client::{Client, ConnectOptions, Event, QoS, ReasonCode, Reconnect, describe};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where to connect, what to subscribe to, when to stop.
pub struct Args {
    pub host: String,
    pub port: u16,
    pub filter: String,
    /// Stop after this many messages; `None`: never.
    pub count: Option<u64>,
}

impl Args {
    /// `[HOST] [PORT] [FILTER] [COUNT]`.
    fn from_command_line() -> Result<Args, String> {
        let mut args = std::env::args().skip(1);
        let host = args.next().unwrap_or_else(|| "localhost".into());
        let port = match args.next() {
            Some(text) => text
                .parse()
                .map_err(|_| format!("PORT must be a number, not {text:?}"))?,
            None => 1883,
        };
        let filter = args.next().unwrap_or_else(|| "house/#".into());
        let count = match args.next() {
            Some(text) => Some(
                text.parse()
                    .map_err(|_| format!("COUNT must be a number, not {text:?}"))?,
            ),
            None => None,
        };
        Ok(Args {
            host,
            port,
            filter,
            count,
        })
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let args = Args::from_command_line()?;
    run(&args, &mut std::io::stdout()).await
}

/// Subscribes and prints what arrives on `out`, one line per message or
/// connection event, until `args.count` messages have arrived.
pub async fn run(args: &Args, out: &mut impl Write) -> Result<(), BoxError> {
    let options = ConnectOptions::new(args.host.clone(), args.port)
        // The broker finds the session again by this id.
        .client_id("house-monitor")
        .clean_start(false)
        .session_expiry(3600)
        .reconnect(Reconnect::new(
            Duration::from_millis(250),
            Duration::from_secs(10),
        ));
    let (client, mut events, connack) = Client::connect(options).await?;
    writeln!(
        out,
        "connected (session present: {})",
        connack.session_present
    )?;
    // Subscribed every time: the client renews what it subscribed to if the
    // broker ever loses the session (a restart without persistence).
    let suback = client
        .subscribe(args.filter.clone(), QoS::AtLeastOnce)
        .await?;
    if let Some(refused) = suback.reasons.iter().find(|r| r.is_error()) {
        let why = describe(*refused);
        return Err(format!(
            "the broker refused the subscription to {}: {why}",
            args.filter
        )
        .into());
    }
    writeln!(out, "subscribed to {}", args.filter)?;

    let mut received = 0;
    while args.count.is_none_or(|count| received < count) {
        // With reconnect on, the stream only ends once the client is closed.
        let Some(event) = events.next().await else {
            break;
        };
        match event {
            Event::Message(m) => {
                received += 1;
                writeln!(out, "{} {}", m.topic, String::from_utf8_lossy(&m.payload))?;
            }
            Event::Disconnected { reason } => {
                writeln!(out, "disconnected: {reason}; reconnecting")?;
            }
            Event::Reconnected {
                session_present: true,
            } => writeln!(out, "reconnected; the broker kept the session")?,
            Event::Reconnected {
                session_present: false,
            } => writeln!(out, "reconnected; new session, subscriptions renewed")?,
            // Kinds of events a later client version may add.
            _ => {}
        }
    }
    client.disconnect(ReasonCode::Success).await?;
    Ok(())
}
