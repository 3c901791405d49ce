//! `tern sub`: subscribe and print what arrives.

use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use tern_client::{
    Client, ConnectOptions, Event, Message, ProtocolVersion, QoS, ReasonCode, Received,
    RetainHandling, SubscriptionOptions, describe,
};
use tern_codec::topic::{filter_matches, is_valid_topic_filter};

use crate::connect_args::{ConnectArgs, parse_qos};
use crate::exit::{EXIT_CODES_HELP, Failure};
use crate::output::{Format, render};

const EXAMPLES: &str = "\
Examples:
  tern sub -t 'house/#' -v
  tern sub -t 'house/+/temp' -C 1 -W 10          (wait up to 10 s for one reading)
  tern sub -t 'house/#' -T 'house/garage/#' --json
  tern sub -t alerts -c -i phone -q 1            (persistent session: nothing missed while away)
  tern sub -t 'house/#' --remove-retained --retained-only
  tern sub -t sensors -F '%I %t %p'
  tern sub -h broker.example.org --cafile ca.pem -t 'house/#'   (TLS, port 8883)";

/// Options of `tern sub`.
#[derive(clap::Args, Debug)]
#[command(disable_help_flag = true, after_help = format!("{EXAMPLES}\n\n{EXIT_CODES_HELP}"))]
pub struct SubArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Topic filter to subscribe to (repeatable).
    #[arg(short = 't', long = "topic")]
    pub topics: Vec<String>,
    /// Do not print messages whose topic matches this filter (repeatable).
    #[arg(short = 'T', long = "filter-out")]
    pub filter_out: Vec<String>,
    /// Unsubscribe from this filter (repeatable); with no -t, exit afterwards.
    #[arg(short = 'U', long = "unsubscribe")]
    pub unsubscribe: Vec<String>,
    /// Requested QoS.
    #[arg(short = 'q', long, default_value = "0", value_parser = parse_qos)]
    pub qos: QoS,
    /// Print the topic before the payload.
    #[arg(short = 'v', long)]
    pub verbose: bool,
    /// Exit after this many messages.
    #[arg(short = 'C', long = "count")]
    pub count: Option<u64>,
    /// Exit after this many seconds (with -C: fail with code 5 if not all arrived).
    #[arg(short = 'W', long = "timeout")]
    pub timeout: Option<u64>,
    /// Persistent session (clean session off): needs -i; messages sent while away are kept.
    #[arg(short = 'c', long = "disable-clean-session", requires = "client_id")]
    pub persistent: bool,
    /// MQTT 5 session expiry in seconds (default with -c: never expires).
    #[arg(short = 'x', long = "session-expiry")]
    pub session_expiry: Option<u32>,
    /// Do not print retained (stale) messages.
    #[arg(short = 'R', long = "no-retained")]
    pub no_retained: bool,
    /// Print only retained messages; exit at the first live one.
    #[arg(long)]
    pub retained_only: bool,
    /// Clear each retained message received (publish an empty retained message).
    #[arg(long)]
    pub remove_retained: bool,
    /// Do not add a newline after each message.
    #[arg(short = 'N', long = "no-newline")]
    pub no_newline: bool,
    /// Output format with % codes: %t topic, %p payload, %q qos, %r retain,
    /// %l length, %m packet id, %x hex payload, %U Unix time, %I ISO time.
    #[arg(short = 'F', long = "format", conflicts_with_all = ["json", "verbose"])]
    pub format: Option<String>,
    /// Print one JSON object per message (payload as text, or base64 if binary).
    #[arg(long, conflicts_with = "verbose")]
    pub json: bool,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    pub help: Option<bool>,
}

/// Runs `tern sub`.
pub async fn run(args: SubArgs) -> Result<(), Failure> {
    if args.topics.is_empty() && args.unsubscribe.is_empty() {
        return Err(Failure::Usage(
            "nothing to do: give a topic filter with -t".into(),
        ));
    }
    for filter in args
        .topics
        .iter()
        .chain(&args.filter_out)
        .chain(&args.unsubscribe)
    {
        if !is_valid_topic_filter(
            filter
                .strip_prefix("$share/")
                .and_then(|s| s.split_once('/'))
                .map_or(filter, |(_, f)| f),
        ) {
            return Err(Failure::Usage(format!("invalid topic filter '{filter}'")));
        }
    }
    let props = args.connect.properties()?;
    let options = options(&args, args.connect.options(&props));
    let (client, mut events, _) = Client::connect(options).await?;
    if !args.unsubscribe.is_empty() {
        client.unsubscribe_many(&args.unsubscribe).await?;
        if args.topics.is_empty() {
            client.disconnect(ReasonCode::Success).await?;
            return Ok(());
        }
    }
    subscribe(&client, &args, props.subscribe.clone()).await?;
    let deadline = args
        .timeout
        .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    let result = receive(&client, &mut events, &args, deadline).await;
    let _ = client.disconnect(ReasonCode::Success).await;
    result
}

fn options(args: &SubArgs, mut o: ConnectOptions) -> ConnectOptions {
    if args.persistent {
        o.clean_start = false;
        if o.version == ProtocolVersion::V5 {
            o.session_expiry = Some(args.session_expiry.or(o.session_expiry).unwrap_or(u32::MAX));
        }
    } else if let Some(x) = args.session_expiry {
        o.session_expiry = Some(x);
    }
    o
}

/// Subscribes to every -t; any refused filter is an error.
async fn subscribe(
    client: &Client,
    args: &SubArgs,
    properties: tern_client::SubscribeProperties,
) -> Result<(), Failure> {
    let options = SubscriptionOptions {
        qos: args.qos,
        no_local: false,
        retain_as_published: false,
        retain_handling: RetainHandling::SendAtSubscribe,
    };
    let filters = args.topics.iter().map(|t| (t.as_str(), options));
    let suback = client.subscribe_many(filters, properties).await?;
    for (filter, reason) in args.topics.iter().zip(&suback.reasons) {
        if reason.is_error() {
            return Err(Failure::Rejected(format!(
                "the broker refused the subscription to '{filter}': {}",
                describe(*reason)
            )));
        }
    }
    Ok(())
}

/// Prints messages until -C, -W, --retained-only, Ctrl-C or the connection ends.
async fn receive(
    client: &Client,
    events: &mut tern_client::Events,
    args: &SubArgs,
    deadline: Option<tokio::time::Instant>,
) -> Result<(), Failure> {
    let format = if args.json {
        Format::Json
    } else if let Some(f) = &args.format {
        Format::Template(f.clone())
    } else if args.verbose {
        Format::TopicPayload
    } else {
        Format::Payload
    };
    let mut received = 0u64;
    loop {
        let event = tokio::select! {
            e = events.next() => e,
            _ = sleep_until(deadline) => return timed_out(args, received),
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let message = match event {
            Some(Event::Message(m)) => m,
            Some(Event::Disconnected { reason }) => {
                return Err(Failure::Lost(format!("connection lost: {}", reason)));
            }
            // Reconnected (tern sub does not turn reconnect on), and any
            // event a later client adds: nothing to print.
            Some(_) => continue,
            None => return Err(Failure::Lost("connection closed".into())),
        };
        if args.retained_only && !message.retain {
            return Ok(());
        }
        if args.remove_retained && message.retain && !message.payload.is_empty() {
            clear_retained(client, &message).await?;
        }
        if (args.no_retained && message.retain)
            || args
                .filter_out
                .iter()
                .any(|f| filter_matches(f, &message.topic))
        {
            continue;
        }
        if !print(&format, &message, args.no_newline) {
            return Ok(()); // stdout closed (e.g. piped into head)
        }
        received += 1;
        if args.count.is_some_and(|c| received >= c) {
            return Ok(());
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// -W ran out: fine unless -C asked for more than arrived.
fn timed_out(args: &SubArgs, received: u64) -> Result<(), Failure> {
    match args.count {
        Some(count) if received < count => Err(Failure::Timeout(format!(
            "received {received} of {count} messages before the {} s timeout (-W)",
            args.timeout.unwrap_or(0)
        ))),
        _ => Ok(()),
    }
}

async fn clear_retained(client: &Client, message: &Received) -> Result<(), Failure> {
    client
        .publish(
            Message::new(message.topic.to_string(), Bytes::new(), QoS::AtMostOnce).retain(true),
        )
        .await?;
    Ok(())
}

/// Writes one message to stdout; false if stdout is gone.
fn print(format: &Format, message: &Received, no_newline: bool) -> bool {
    let mut out = std::io::stdout().lock();
    let mut line = render(format, message);
    if !no_newline {
        line.push(b'\n');
    }
    out.write_all(&line).and_then(|()| out.flush()).is_ok()
}
