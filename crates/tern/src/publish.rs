//! `tern pub`: publish one message, a file, stdin, or stdin line by line.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use tern_client::{Client, Message, QoS, ReasonCode, describe};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use crate::connect_args::{ConnectArgs, parse_qos};
use crate::exit::{EXIT_CODES_HELP, Failure};

const EXAMPLES: &str = "\
Examples:
  tern pub -t house/room1/temp -m 22.5
  tern pub -t house/room1/temp -m 22.5 -r -q 1
  tern pub -t logs -l < app.log                 (one message per line)
  tern pub -t photo -f cat.jpg -q 2
  tern pub -t sensors/x -m on -D publish user-property site paris -D publish message-expiry-interval 60";

/// Options of `tern pub`.
#[derive(clap::Args, Debug)]
#[command(disable_help_flag = true, after_help = format!("{EXAMPLES}\n\n{EXIT_CODES_HELP}"))]
#[command(group(clap::ArgGroup::new("payload").required(true).args(["message", "file", "stdin_file", "stdin_line", "null_message"])))]
pub struct PubArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Topic to publish to.
    #[arg(short = 't', long)]
    pub topic: String,
    /// The message payload.
    #[arg(short = 'm', long)]
    pub message: Option<String>,
    /// Send the contents of a file as the payload.
    #[arg(short = 'f', long)]
    pub file: Option<PathBuf>,
    /// Read stdin to its end and send it as one message.
    #[arg(short = 's', long = "stdin-file")]
    pub stdin_file: bool,
    /// Send each line of stdin as a separate message.
    #[arg(short = 'l', long = "stdin-line")]
    pub stdin_line: bool,
    /// Send an empty payload (with -r: clear the retained message).
    #[arg(short = 'n', long = "null-message")]
    pub null_message: bool,
    /// QoS: 0, 1 or 2.
    #[arg(short = 'q', long, default_value = "0", value_parser = parse_qos)]
    pub qos: QoS,
    /// Retain the message.
    #[arg(short = 'r', long)]
    pub retain: bool,
    /// Publish the message this many times.
    #[arg(long, default_value_t = 1)]
    pub repeat: u64,
    /// Seconds to wait between repeats (fractions allowed).
    #[arg(long, default_value_t = 0.0)]
    pub repeat_delay: f64,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    pub help: Option<bool>,
}

/// Runs `tern pub`.
pub async fn run(args: PubArgs) -> Result<(), Failure> {
    let props = args.connect.properties()?;
    let options = args.connect.options(&props);
    let (client, _events, _) = Client::connect(options).await?;
    let message = |payload: Bytes| {
        Message::new(args.topic.clone(), payload, args.qos)
            .retain(args.retain)
            .properties(props.publish.clone())
    };
    if args.stdin_line {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        while let Some(line) = lines.next_line().await? {
            publish(&client, message(Bytes::from(line))).await?;
        }
    } else {
        let payload = payload(&args).await?;
        let delay = Duration::try_from_secs_f64(args.repeat_delay).map_err(|_| {
            Failure::Usage("--repeat-delay must be a positive number of seconds".into())
        })?;
        for i in 0..args.repeat {
            if i > 0 {
                tokio::time::sleep(delay).await;
            }
            publish(&client, message(payload.clone())).await?;
        }
    }
    client.disconnect(ReasonCode::Success).await?;
    Ok(())
}

/// The payload from -m, -f, -s or -n.
async fn payload(args: &PubArgs) -> Result<Bytes, Failure> {
    if let Some(m) = &args.message {
        return Ok(Bytes::from(m.clone()));
    }
    if let Some(path) = &args.file {
        return tokio::fs::read(path)
            .await
            .map(Bytes::from)
            .map_err(|e| Failure::Other(format!("cannot read {}: {e}", path.display())));
    }
    if args.stdin_file {
        let mut all = Vec::new();
        tokio::io::stdin().read_to_end(&mut all).await?;
        return Ok(Bytes::from(all));
    }
    Ok(Bytes::new())
}

/// Publishes and turns a failure reason code into a refusal.
async fn publish(client: &Client, message: Message) -> Result<(), Failure> {
    let topic = message.topic.clone();
    let reason = client.publish(message).await?;
    if reason.is_error() {
        return Err(Failure::Rejected(format!(
            "the broker refused the message to '{topic}': {}",
            describe(reason)
        )));
    }
    Ok(())
}
