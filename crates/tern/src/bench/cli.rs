//! The command line of `tern bench`: the scenario and its options, and the
//! checks that need more than one flag at a time.

use std::time::Duration;

use tern_codec::{ProtocolVersion, QoS};

use crate::connect_args::{parse_qos, parse_version};

const EXAMPLES: &str = "\
Scenarios:
  conn     open C connections (-c) at --connect-rate and hold them
  pub      P publishers (-P), no subscribers: send rate only
  sub      S subscribers (-S) measuring what another process publishes
  fanin    P publishers -> S subscribers on a wildcard   (default 8 -> 1)
  fanout   P publishers -> S subscribers                 (default 1 -> 64)
  p2p      N pairs (-n), each publisher to its own subscriber (default 64)
  shared   P publishers -> S subscribers of one $share group (default 8 -> 4)

Each payload starts with the publisher's index, a sequence number and the
send time, so subscribers measure end-to-end latency and count lost,
duplicated and out-of-order messages. Messages sent during --warmup are not
counted; the delivered rate counts what arrived while measuring. Once a
second a line on stderr shows totals, rates and the p99 of that second; the
summary goes to stdout (as JSON with --json). Without --rate or --inflight,
publishers send as fast as their sockets take it: latency then measures the
broker's backlog, and QoS 0 loss its drops.

Examples:
  tern bench fanout -S 64 -q 1 -d 10
  tern bench fanin -P 8 -q 0 --inflight 1000 --json > fanin.json
  tern bench p2p -n 16 -q 1 -r 625            (16 pairs, 10,000 msg/s in total)
  tern bench shared -P 4 -S 2 -t 'jobs/%i' --group workers
  tern bench conn -c 19000 --connect-rate 2000 -d 30
  tern bench sub -S 4 -t 'bench/%i' -d 60 &   tern bench pub -P 4 -r 1000 -d 60
  tern bench fanout -p 1884 -V 311 -s 4096 -r 100";

/// The load to generate.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// Open and hold connections.
    Conn,
    /// Publishers only.
    Pub,
    /// Subscribers only.
    Sub,
    /// P publishers to S subscribers on a wildcard filter.
    Fanin,
    /// One (or P) publisher(s) to S subscribers.
    Fanout,
    /// N publisher/subscriber pairs, one topic each.
    P2p,
    /// P publishers to S subscribers sharing one subscription.
    Shared,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Conn => "conn",
            Scenario::Pub => "pub",
            Scenario::Sub => "sub",
            Scenario::Fanin => "fanin",
            Scenario::Fanout => "fanout",
            Scenario::P2p => "p2p",
            Scenario::Shared => "shared",
        }
    }
}

/// Options of `tern bench`.
#[derive(clap::Args, Debug)]
#[command(disable_help_flag = true, after_help = EXAMPLES)]
pub struct BenchArgs {
    /// What to run.
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// Broker host.
    #[arg(short = 'h', long, default_value = "127.0.0.1")]
    pub host: String,
    /// Broker port [default: 1883, or 8883 with --cafile].
    #[arg(short = 'p', long)]
    pub port: Option<u16>,
    #[command(flatten)]
    pub tls: crate::connect_args::TlsArgs,
    /// MQTT version: 5 (default), 311 or 31.
    #[arg(short = 'V', long = "protocol-version", default_value = "5", value_parser = parse_version)]
    pub version: ProtocolVersion,
    /// QoS of publishing and of the subscriptions: 0, 1 or 2.
    #[arg(short = 'q', long, default_value = "0", value_parser = parse_qos)]
    pub qos: QoS,
    /// Payload size in bytes (at least 16: the timestamp header).
    #[arg(short = 's', long = "size", default_value_t = 64)]
    pub size: usize,
    /// Messages per second per publisher; 0: as fast as possible.
    #[arg(short = 'r', long, default_value_t = 0.0)]
    pub rate: f64,
    /// Most messages a publisher may have sent but not yet seen delivered to
    /// all its subscribers (a window; 0: none). Scenarios with subscribers only.
    #[arg(short = 'w', long = "inflight", default_value_t = 0)]
    pub inflight: u64,
    /// Seconds measured, after the warm-up (fractions allowed).
    #[arg(short = 'd', long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds of load before measuring starts (not counted).
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Longest wait, after publishing stopped, for messages still on their way.
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,
    /// Topic pattern of publisher i: `%i` is replaced by its index.
    #[arg(short = 't', long, default_value = "bench/%i")]
    pub topic: String,
    /// Subscribers' filter (`%i`: subscriber index). Default: the topic's
    /// levels before the first `%i`, then `#` (p2p: publisher i's topic).
    #[arg(short = 'f', long)]
    pub filter: Option<String>,
    /// Shared subscription group (shared scenario): `$share/GROUP/FILTER`.
    #[arg(long, default_value = "bench")]
    pub group: String,
    /// Number of publishers (pub, fanin, fanout, shared).
    #[arg(short = 'P', long)]
    pub publishers: Option<usize>,
    /// Number of subscribers (sub, fanin, fanout, shared).
    #[arg(short = 'S', long)]
    pub subscribers: Option<usize>,
    /// Number of publisher/subscriber pairs (p2p).
    #[arg(short = 'n', long)]
    pub pairs: Option<usize>,
    /// Number of connections (conn).
    #[arg(short = 'c', long)]
    pub connections: Option<usize>,
    /// First index: `%i` and publisher ids start here, so that several
    /// processes can share one load without overlapping.
    #[arg(long, default_value_t = 0)]
    pub first_index: usize,
    /// New connections per second; 0: as fast as the broker accepts them.
    #[arg(long, default_value_t = 0.0)]
    pub connect_rate: f64,
    /// Number of source addresses 127.0.0.1, 127.0.0.2, ... to connect from,
    /// past the ~28,000 ephemeral ports of one address (loopback brokers
    /// only). Default: one per 10,000 connections.
    #[arg(long)]
    pub source_addrs: Option<u8>,
    /// Keep-alive in seconds (0: off).
    #[arg(short = 'k', long = "keepalive", default_value_t = 60)]
    pub keep_alive: u16,
    /// Make every session persistent: MQTT 5 Session Expiry Interval SECS
    /// (still Clean Start, so each run starts fresh); MQTT 3.1/3.1.1 clean
    /// session 0. With a persistent broker, QoS 1/2 then goes through its
    /// store. Default 0: sessions end with their connections.
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    pub session_expiry: u32,
    /// User name.
    #[arg(long)]
    pub username: Option<String>,
    /// Password.
    #[arg(long)]
    pub password: Option<String>,
    /// Runtime worker threads (default: one per CPU).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print the summary as JSON on stdout (the live lines stay on stderr).
    #[arg(long)]
    pub json: bool,
    /// No live lines.
    #[arg(long)]
    pub quiet: bool,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    pub help: Option<bool>,
}

/// Smallest payload: publisher index, sequence number, send time.
pub const MIN_PAYLOAD: usize = crate::bench::stamp::STAMP_LEN;

impl BenchArgs {
    /// Checks what clap cannot: ranges, and counts given to a scenario that
    /// does not use them.
    pub fn validate(&self) -> Result<(), String> {
        if self.size < MIN_PAYLOAD {
            return Err(format!(
                "--size must be at least {MIN_PAYLOAD} (the timestamp header)"
            ));
        }
        if self.size > 256 * 1024 * 1024 {
            return Err("--size must be at most 256 MiB".into());
        }
        for (name, value) in [
            ("--rate", self.rate),
            ("--duration", self.duration),
            ("--warmup", self.warmup),
            ("--drain", self.drain),
            ("--connect-rate", self.connect_rate),
        ] {
            if !value.is_finite() || value < 0.0 || Duration::try_from_secs_f64(value).is_err() {
                return Err(format!("{name} must be a positive number"));
            }
        }
        if self.duration <= 0.0 {
            return Err("--duration must be more than 0".into());
        }
        let s = self.scenario;
        let given = |set: bool, flag: &str, allowed: &[Scenario]| {
            if set && !allowed.contains(&s) {
                Err(format!(
                    "{flag} does not apply to the {} scenario",
                    s.name()
                ))
            } else {
                Ok(())
            }
        };
        use Scenario::*;
        given(
            self.publishers.is_some(),
            "-P/--publishers",
            &[Pub, Fanin, Fanout, Shared],
        )?;
        given(
            self.subscribers.is_some(),
            "-S/--subscribers",
            &[Sub, Fanin, Fanout, Shared],
        )?;
        given(self.pairs.is_some(), "-n/--pairs", &[P2p])?;
        given(self.connections.is_some(), "-c/--connections", &[Conn])?;
        given(
            self.inflight > 0,
            "--inflight (publishers and subscribers in one process)",
            &[Fanin, Fanout, P2p, Shared],
        )?;
        given(
            self.filter.is_some(),
            "-f/--filter",
            &[Sub, Fanin, Fanout, Shared],
        )?;
        for (flag, n) in [
            ("-P", self.publishers),
            ("-S", self.subscribers),
            ("-n", self.pairs),
            ("-c", self.connections),
        ] {
            if n == Some(0) {
                return Err(format!("{flag} must be at least 1"));
            }
        }
        if self.threads == Some(0) {
            return Err("--threads must be at least 1".into());
        }
        if self.source_addrs == Some(0) || self.source_addrs == Some(255) {
            return Err("--source-addrs must be 1..=254".into());
        }
        Ok(())
    }

    pub fn warmup(&self) -> Duration {
        Duration::from_secs_f64(self.warmup)
    }

    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.duration)
    }

    pub fn drain(&self) -> Duration {
        Duration::from_secs_f64(self.drain)
    }
}
