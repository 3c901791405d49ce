//! A sensor: publishes a temperature and a humidity reading for room 1 at
//! QoS 1 every interval, and stops by itself after COUNT readings.
//!
//! ```text
//! cargo run -p tern-client --example sensor -- [HOST] [PORT] [COUNT] [INTERVAL_MS]
//! ```
//!
//! Defaults: `localhost 1883 10 1000`. Start a broker first (`tern serve`)
//! and watch with `tern sub -t 'house/#' -v`, or with the subscriber example.
//!
//! It shows the options builder (a will that says "offline" if the sensor
//! vanishes, reconnecting if the broker restarts), and `try_publish`: both
//! readings go out at once, then both acknowledgements are awaited.

use std::io::Write;
use std::str::FromStr;
use std::time::Duration;

use tern_client::{Client, ConnectOptions, Message, QoS, ReasonCode, Reconnect, Will, describe};

/// Retained "online" or "offline", so a newcomer knows at once.
const STATUS: &str = "house/room1/status";

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where to connect, and how many readings to send how often.
pub struct Args {
    pub host: String,
    pub port: u16,
    pub count: u64,
    pub interval: Duration,
}

impl Args {
    /// `[HOST] [PORT] [COUNT] [INTERVAL_MS]`.
    fn from_command_line() -> Result<Args, String> {
        let mut args = std::env::args().skip(1);
        Ok(Args {
            host: args.next().unwrap_or_else(|| "localhost".into()),
            port: number(args.next(), "PORT", 1883)?,
            count: number(args.next(), "COUNT", 10)?,
            interval: Duration::from_millis(number(args.next(), "INTERVAL_MS", 1000)?),
        })
    }
}

fn number<T: FromStr>(arg: Option<String>, name: &str, default: T) -> Result<T, String> {
    match arg {
        None => Ok(default),
        Some(text) => text
            .parse()
            .map_err(|_| format!("{name} must be a number, not {text:?}")),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let args = Args::from_command_line()?;
    run(&args, &mut std::io::stdout()).await
}

/// Connects, sends `args.count` readings and says goodbye, reporting each
/// reading and the broker's answers on `out`.
pub async fn run(args: &Args, out: &mut impl Write) -> Result<(), BoxError> {
    let options = ConnectOptions::new(args.host.clone(), args.port)
        .client_id("sensor-room1")
        .keep_alive(Duration::from_secs(30))
        // Published by the broker if the sensor vanishes without a goodbye.
        .will(Will::new(STATUS, "offline", QoS::AtLeastOnce).retain(true))
        // A broker restart delays the readings instead of ending the program.
        .reconnect(Reconnect::default());
    let (client, _events, _connack) = Client::connect(options).await?;
    client
        .publish(Message::new(STATUS, "online", QoS::AtLeastOnce).retain(true))
        .await?;
    let mut ticks = tokio::time::interval(args.interval);
    for n in 1..=args.count {
        ticks.tick().await;
        let (celsius, humidity) = sample(n);
        let temp = format!("{celsius:.1}");
        let humidity = format!("{humidity:.0}");
        // Both readings travel together; each handle resolves with its PUBACK.
        let temp_ack = client.try_publish(Message::new(
            "house/room1/temp",
            temp.clone(),
            QoS::AtLeastOnce,
        ))?;
        let humidity_ack = client.try_publish(Message::new(
            "house/room1/humidity",
            humidity.clone(),
            QoS::AtLeastOnce,
        ))?;
        let (temp_reason, humidity_reason) = (temp_ack.await?, humidity_ack.await?);
        writeln!(
            out,
            "reading {n}: {temp} °C ({}), {humidity} % ({})",
            describe(temp_reason),
            describe(humidity_reason)
        )?;
    }
    // A clean goodbye makes the broker discard the will: say it ourselves.
    client
        .publish(Message::new(STATUS, "offline", QoS::AtLeastOnce).retain(true))
        .await?;
    client.disconnect(ReasonCode::Success).await?;
    Ok(())
}

/// A made-up reading that drifts a little: no hardware needed.
fn sample(n: u64) -> (f64, f64) {
    let t = (n % 1000) as f64 / 10.0;
    (21.0 + 1.5 * t.sin(), 45.0 + 5.0 * t.cos())
}
