//! Crash test: no acknowledged message is lost when the broker dies.
//!
//! What it proves: a `tern serve --data-dir DIR` that is SIGKILLed at random
//! moments and restarted on the same data dir still delivers every message it
//! acknowledged (PUBACK for QoS 1, PUBREC for QoS 2) to the persistent session
//! the message was routed to: QoS 1 at least once, QoS 2 exactly once.
//!
//! How: the real binary runs in a temporary directory on a free loopback port.
//! Three subscribers with persistent sessions hold `crash/q1/#` at QoS 1,
//! `crash/q2/#` and `crash/q2p/#` at QoS 2: MQTT 5 ones (Session Expiry
//! Interval 3600 s, Clean Start 0 once subscribed) for `q1` and `q2`, and
//! for `q2p` MQTT 3.1.1 with Clean Session 0, as paho-mqtt connects. Three publishers, also with
//! persistent sessions, send numbered messages (payload `q1 17` on
//! `crash/q1/1`, ...), 20 in flight each, and note every number the broker
//! acknowledged. The killer SIGKILLs the broker 50-400 ms after each
//! (re)start, chosen by a seeded xorshift (the seed is printed), and restarts
//! it on the same port and data dir. Every client reconnects with Clean Start
//! 0 and carries on as MQTT says: the publishers resend their unacknowledged
//! PUBLISHes (DUP, same packet id) and PUBRELs. The two QoS 2 subscribers
//! receive in the two ways real clients do, and count by payload as an
//! application would:
//! - `q2` ("method B" of spec 4.3.3) delivers a message when its PUBLISH
//!   arrives with a packet id it does not hold, and holds that id until
//!   PUBREL, so a resent PUBLISH of a message it already has is not
//!   delivered twice;
//! - `q2p` does what paho-mqtt does: it keeps each PUBLISH under its packet
//!   id (a later PUBLISH with the same id replaces it), delivers the kept
//!   message when PUBREL arrives, and keeps unreleased ids across
//!   reconnects.
//!
//! After the last restart the publishers stop, finish their
//! in-flight messages, and the test waits for the subscribers to have every
//! acknowledged number. It prints published / acknowledged / delivered /
//! lost / duplicated per flow and asserts that nothing acknowledged was lost
//! and that no QoS 2 message was delivered twice (QoS 1 duplicates are
//! allowed and printed).
//!
//! A QoS 2 message counts as acknowledged at PUBREC, the moment the broker
//! takes it over (the PUBCOMP count is printed too): a stricter reading than
//! "at PUBCOMP", which the test also covers since PUBCOMP comes after PUBREC.
//!
//! Runs:
//!
//! ```text
//! cargo test -p tern --test crash -- --nocapture                       # short form: 16 kills
//! TERN_CRASH_KILLS=100 cargo test -p tern --test crash -- --nocapture  # full length
//! TERN_CRASH_SEED=0x5eed ...         # replay the kill timing of a printed seed
//! TERN_CRASH_DURABILITY=os ...       # `durability` other than the default fsync
//! TERN_CRASH_NO_PERSISTENCE=1 ...    # negative control: persistence off, must fail (lost > 0)
//! ```
//!
//! A seed replays the kill timing, not the thread interleaving, so a failure
//! that needs one exact moment may take a few runs to show again. When the
//! test fails it keeps its directory (the data dir, and `broker.log` with the
//! output of every start) and prints the path.
//!
//! What the broker must provide: `tern serve --bind 127.0.0.1:PORT --config
//! FILE --data-dir DIR` (see [`broker_command`], the one place to adapt;
//! the config file only lifts the queue limits, see [`config_file`]),
//! restoring sessions, subscriptions, queues and in-flight state before it
//! accepts connections.

#![cfg(unix)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::net::{SocketAddr, TcpListener as StdTcpListener, TcpStream as StdTcpStream};
use std::num::NonZeroU16;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use tern_codec::{
    Connect, ConnectProperties, Packet, ProtocolVersion, PubAck, Publish, PublishProperties, QoS,
    ReasonCode, Subscribe, SubscribeFilter, SubscribeProperties, SubscriptionOptions, decode,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

// ---- Parameters -----------------------------------------------------------------

/// Kills in the default (short) form; `TERN_CRASH_KILLS` overrides.
const DEFAULT_KILLS: u32 = 16;
/// A kill comes this many milliseconds (inclusive range) after the broker is ready.
const KILL_DELAY_MS: (u64, u64) = (50, 400);
/// Messages each publisher keeps in flight.
const WINDOW: usize = 20;
/// Session Expiry Interval of every client: the sessions outlive each crash.
const SESSION_EXPIRY_SECS: u32 = 3600;
/// Topics per QoS (`crash/q1/0` .. `crash/q1/3`), chosen by sequence number.
const TOPICS_PER_QOS: u64 = 4;
/// From spawning the broker to it accepting TCP connections (restore included).
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a client keeps trying to reconnect before it fails the test.
const RECONNECT_TIMEOUT: Duration = Duration::from_secs(45);
/// From CONNECT to CONNACK; longer counts as a failed attempt (retried).
const CONNACK_TIMEOUT: Duration = Duration::from_secs(5);
/// A publisher that gets no acknowledgement for this long reconnects.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Subscriptions in place, first acknowledgements, traffic after the last restart.
const SETUP_TIMEOUT: Duration = Duration::from_secs(20);
/// After the publishers stop: time for them to finish their in-flight messages.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);
/// After the publishers finish: time for every acknowledged message to arrive.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(20);
/// ... but stop waiting once nothing new has arrived for this long.
const NO_PROGRESS_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest packet the test clients accept.
const MAX_PACKET: usize = 1 << 20;

/// The broker's config file. A session's queue is bounded (1000 messages by
/// default) and a full queue drops messages by design, acknowledged or not;
/// the limits are lifted so that only a crash can lose a message.
/// `TERN_CRASH_DURABILITY` (`fsync`, `os`, `none`) sets `durability`, left at
/// its default (fsync) otherwise; `TERN_CRASH_NO_PERSISTENCE=1` turns
/// persistence off, a negative control that must fail with lost > 0.
fn config_file() -> String {
    let mut config = String::from(
        "# Written by crates/tern/tests/crash.rs.\n\
         max_queued_messages = 100000000\n\
         max_queued_bytes = 0\n",
    );
    if !persistence_enabled() {
        config.push_str("persistence = false\n");
    }
    if let Ok(durability) = std::env::var("TERN_CRASH_DURABILITY") {
        config.push_str(&format!("durability = \"{durability}\"\n"));
    }
    config
}

/// How the broker under test is started: the one place to adapt when the CLI
/// changes. `--data-dir` gives the data directory (persistence is on by
/// default). It runs in the test's directory, so nothing it writes by default
/// lands in the source tree.
fn broker_command(port: u16, dir: &Paths) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tern"));
    cmd.current_dir(&dir.root)
        .arg("serve")
        .arg("--bind")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--config")
        .arg(&dir.config);
    if persistence_enabled() {
        cmd.arg("--data-dir").arg(&dir.data);
    }
    cmd.env("RUST_LOG", "info").env("NO_COLOR", "1");
    cmd
}

/// False with `TERN_CRASH_NO_PERSISTENCE=1`: the negative control.
fn persistence_enabled() -> bool {
    !matches!(std::env::var("TERN_CRASH_NO_PERSISTENCE"), Ok(v) if !v.is_empty() && v != "0")
}

// ---- The test ------------------------------------------------------------------

#[test]
fn no_acknowledged_message_is_lost_when_the_broker_is_killed() {
    let kills: u32 = match std::env::var("TERN_CRASH_KILLS") {
        Ok(v) => v.parse().expect("TERN_CRASH_KILLS is a number"),
        Err(_) => DEFAULT_KILLS,
    };
    let seed = seed();
    let mut rng = XorShift::new(seed);
    println!(
        "crash test: seed {seed:#x}, {kills} kills{} (replay: TERN_CRASH_SEED={seed:#x})",
        if persistence_enabled() {
            ""
        } else {
            ", persistence OFF (negative control)"
        }
    );
    let started = Instant::now();

    let dir = TestDir::new();
    let mut h = Harness::new(&dir);
    h.broker.start();

    for flow in Flow::ALL {
        h.spawn_subscriber(flow);
    }
    h.wait_for("every subscription granted", SETUP_TIMEOUT, |h| {
        h.flows.iter().all(|f| lock(&f.subscriber).subscribed)
    });
    for flow in Flow::ALL {
        h.spawn_publisher(flow);
    }
    h.wait_for("a first acknowledgement on each flow", SETUP_TIMEOUT, |h| {
        h.acked_counts().iter().all(|&n| n > 0)
    });

    // The killer.
    let mut kills_in_traffic = 0;
    for k in 1..=kills {
        let delay = rng.between(KILL_DELAY_MS.0, KILL_DELAY_MS.1);
        let before = h.acked_counts();
        h.run_for(Duration::from_millis(delay));
        let at_kill = h.acked_counts();
        if at_kill.iter().zip(&before).all(|(now, was)| now > was) {
            kills_in_traffic += 1;
        }
        h.broker.kill();
        let restart = h.broker.start();
        println!(
            "kill {k}/{kills}: {delay} ms after ready, acknowledged so far q1 {} q2 {} q2p {}; ready again in {} ms",
            at_kill[0],
            at_kill[1],
            at_kill[2],
            restart.as_millis()
        );
    }

    // Traffic after the last restart, then a clean end.
    let at_restart = h.acked_counts();
    h.wait_for(
        "an acknowledgement on each flow after the last restart",
        SETUP_TIMEOUT,
        |h| {
            h.acked_counts()
                .iter()
                .zip(&at_restart)
                .all(|(now, was)| now > was)
        },
    );
    h.run_for(Duration::from_millis(
        rng.between(KILL_DELAY_MS.0, KILL_DELAY_MS.1),
    ));
    h.shared.stop.store(true, Ordering::SeqCst);
    h.wait_for(
        "the publishers to finish their in-flight messages",
        DRAIN_TIMEOUT,
        |h| h.flows.iter().all(|f| lock(&f.publisher).done),
    );
    h.wait_for_deliveries();

    // The verdict.
    let reports: Vec<FlowReport> = h.flows.iter().map(FlowReport::new).collect();
    for r in &reports {
        println!("{}", r.line());
    }
    println!(
        "kills {kills} ({kills_in_traffic} with every flow acknowledging since the previous start), broker starts {}, seed {seed:#x}, {:.1} s",
        h.broker.starts,
        started.elapsed().as_secs_f64()
    );
    for r in &reports {
        println!("{}", r.details);
    }
    let mut failures = Vec::new();
    for r in &reports {
        if !r.corrupt.is_empty() {
            failures.push(format!(
                "{}: the subscriber received messages no publisher sent: {:?}",
                r.name, r.corrupt
            ));
        }
        if !r.lost.is_empty() {
            failures.push(format!(
                "{}: {} acknowledged messages never delivered, first {:?}",
                r.name,
                r.lost.len(),
                &r.lost[..r.lost.len().min(20)]
            ));
        }
        if r.qos == 2 && !r.duplicated_numbers.is_empty() {
            failures.push(format!(
                "{}: {} QoS 2 messages delivered more than once, first {:?}",
                r.name,
                r.duplicated_numbers.len(),
                &r.duplicated_numbers[..r.duplicated_numbers.len().min(20)]
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{}\nreplay: TERN_CRASH_SEED={seed:#x} TERN_CRASH_KILLS={kills}",
        failures.join("\n")
    );
}

// ---- The two message flows -----------------------------------------------------

/// One QoS under test: its publisher, its subscriber, its topics.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Flow {
    Q1,
    /// QoS 2, received as the spec's "method B": delivered when the PUBLISH
    /// arrives with a packet id not held, the id held until PUBREL. Strict
    /// on PUBLISHes: one sent again with a fresh id is delivered twice.
    Q2,
    /// QoS 2, received as paho-mqtt does it: the PUBLISH is kept by packet
    /// id (a later one with the same id replaces it), and the message is
    /// delivered when PUBREL arrives for an id that is kept; kept ids survive
    /// reconnects. Strict on PUBRELs: one sent before the broker has stored
    /// the release lets a resend after a crash deliver the message again.
    Q2Paho,
}

impl Flow {
    const ALL: [Flow; 3] = [Flow::Q1, Flow::Q2, Flow::Q2Paho];

    fn qos(self) -> QoS {
        match self {
            Flow::Q1 => QoS::AtLeastOnce,
            Flow::Q2 | Flow::Q2Paho => QoS::ExactlyOnce,
        }
    }

    /// paho-mqtt speaks MQTT 3.1.1 unless told otherwise, and so does its
    /// flow here (Clean Session 0, so the session never expires).
    fn version(self) -> ProtocolVersion {
        match self {
            Flow::Q1 | Flow::Q2 => ProtocolVersion::V5,
            Flow::Q2Paho => ProtocolVersion::V3_1_1,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Flow::Q1 => "q1",
            Flow::Q2 => "q2",
            Flow::Q2Paho => "q2p",
        }
    }

    fn filter(self) -> String {
        format!("crash/{}/#", self.name())
    }

    fn topic(self, seq: u64) -> String {
        format!("crash/{}/{}", self.name(), seq % TOPICS_PER_QOS)
    }

    fn publish(self, seq: u64, packet_id: NonZeroU16, dup: bool) -> Publish {
        Publish {
            dup,
            qos: self.qos(),
            retain: false,
            topic: self.topic(seq).into(),
            packet_id: Some(packet_id),
            payload: Bytes::from(format!("{} {seq}", self.name())),
            properties: PublishProperties::default(),
        }
    }

    /// The sequence number a received message carries, checked against its topic.
    fn parse(self, p: &Publish) -> Result<u64, String> {
        let text = String::from_utf8_lossy(&p.payload);
        let seq = text
            .strip_prefix(self.name())
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or_else(|| format!("payload {text:?} on {}", p.topic))?;
        if p.topic != self.topic(seq).as_str() {
            return Err(format!("payload {text:?} on topic {}", p.topic));
        }
        Ok(seq)
    }
}

/// What a publisher knows, shared with the test thread.
#[derive(Default)]
struct PubStats {
    /// Numbers `0..published` were sent at least once.
    published: u64,
    /// Numbers the broker accepted: PUBACK (QoS 1) or PUBREC (QoS 2) with a
    /// reason below 0x80.
    acked: HashSet<u64>,
    /// QoS 2: PUBCOMP with Success.
    completed: u64,
    /// Acknowledgements with an error reason: not acknowledged.
    refused: u64,
    /// PUBLISHes (DUP) and PUBRELs sent again after a reconnect.
    resent: u64,
    connects: u32,
    /// CONNACK with Session Present 0 on a reconnect.
    sessions_lost: u32,
    /// Reconnects because no acknowledgement came within `ACK_TIMEOUT`.
    stalls: u32,
    /// Odd acknowledgements, counted by kind (printed, not failed on).
    anomalies: BTreeMap<String, u64>,
    /// Stopped and nothing left in flight.
    done: bool,
}

/// What a subscriber received, shared with the test thread.
#[derive(Default)]
struct SubStats {
    /// The SUBACK granted the subscription.
    subscribed: bool,
    /// Number → times delivered to the application.
    deliveries: HashMap<u64, u32>,
    total_deliveries: u64,
    /// PUBLISHes that arrived with DUP set.
    dup_flags: u64,
    /// QoS 2 PUBLISHes for a packet id still held: acknowledged, not delivered.
    held_redeliveries: u64,
    connects: u32,
    sessions_lost: u32,
    /// Messages that do not match anything published (fail the test).
    corrupt: Vec<String>,
}

impl PubStats {
    fn anomaly(&mut self, what: String) {
        *self.anomalies.entry(what).or_default() += 1;
    }
}

impl SubStats {
    fn deliver(&mut self, seq: u64) {
        *self.deliveries.entry(seq).or_default() += 1;
        self.total_deliveries += 1;
    }

    fn corrupt(&mut self, what: String) {
        if self.corrupt.len() < 20 {
            self.corrupt.push(what);
        }
    }
}

/// The state of one flow, shared between its client tasks and the test thread.
struct FlowState {
    flow: Flow,
    publisher: Arc<Mutex<PubStats>>,
    subscriber: Arc<Mutex<SubStats>>,
}

/// The end result of one flow.
struct FlowReport {
    name: &'static str,
    qos: u8,
    published: u64,
    acked: usize,
    completed: u64,
    delivered: usize,
    /// Acknowledged numbers never delivered, ascending.
    lost: Vec<u64>,
    /// Deliveries beyond the first, over all numbers.
    extra_deliveries: u64,
    /// Numbers delivered more than once, ascending.
    duplicated_numbers: Vec<u64>,
    corrupt: Vec<String>,
    details: String,
}

impl FlowReport {
    fn new(f: &FlowState) -> FlowReport {
        let p = lock(&f.publisher);
        let s = lock(&f.subscriber);
        let mut lost: Vec<u64> = p
            .acked
            .iter()
            .copied()
            .filter(|seq| !s.deliveries.contains_key(seq))
            .collect();
        lost.sort_unstable();
        let mut duplicated_numbers: Vec<u64> = s
            .deliveries
            .iter()
            .filter(|&(_, &n)| n > 1)
            .map(|(&seq, _)| seq)
            .collect();
        duplicated_numbers.sort_unstable();
        let mut corrupt = s.corrupt.clone();
        let mut unsent: Vec<u64> = s
            .deliveries
            .keys()
            .copied()
            .filter(|&seq| seq >= p.published)
            .collect();
        unsent.sort_unstable();
        if !unsent.is_empty() {
            corrupt.push(format!("numbers never published: {unsent:?}"));
        }
        let details = format!(
            "{} details: publisher connects {} (sessions lost {}), resent {}, refused {}, stalls {}, anomalies {:?}; \
             subscriber connects {} (sessions lost {}), DUP flags {}, QoS 2 resends of held ids {}",
            f.flow.name(),
            p.connects,
            p.sessions_lost,
            p.resent,
            p.refused,
            p.stalls,
            p.anomalies,
            s.connects,
            s.sessions_lost,
            s.dup_flags,
            s.held_redeliveries,
        );
        FlowReport {
            name: f.flow.name(),
            qos: f.flow.qos() as u8,
            published: p.published,
            acked: p.acked.len(),
            completed: p.completed,
            delivered: s.deliveries.len(),
            lost,
            extra_deliveries: s.total_deliveries - s.deliveries.len() as u64,
            duplicated_numbers,
            corrupt,
            details,
        }
    }

    fn line(&self) -> String {
        let acked = if self.qos == 2 {
            format!("{} (PUBCOMP {})", self.acked, self.completed)
        } else {
            self.acked.to_string()
        };
        let duplicated = if self.qos == 1 {
            format!(
                "{} ({} numbers; allowed at QoS 1)",
                self.extra_deliveries,
                self.duplicated_numbers.len()
            )
        } else {
            format!(
                "{} ({} numbers)",
                self.extra_deliveries,
                self.duplicated_numbers.len()
            )
        };
        format!(
            "{} (QoS {}): published {} / acknowledged {acked} / delivered {} / lost {} / duplicated {duplicated}",
            self.name,
            self.qos,
            self.published,
            self.delivered,
            self.lost.len()
        )
    }
}

// ---- The harness: broker, runtime, client tasks --------------------------------

/// Shared by the test thread and the client tasks.
#[derive(Default)]
struct Shared {
    /// The port the broker listens on now (it changes only if a restart finds
    /// its port taken).
    port: AtomicU16,
    /// Publishers send nothing new once set.
    stop: AtomicBool,
}

/// A client task; `handle` is taken once it has finished and been checked.
struct Task {
    name: String,
    handle: Option<JoinHandle<Result<(), String>>>,
}

/// Everything a run owns. Field order is drop order: the broker is killed first.
struct Harness {
    broker: Broker,
    rt: Runtime,
    shared: Arc<Shared>,
    flows: Vec<FlowState>,
    tasks: Vec<Task>,
}

impl Harness {
    fn new(dir: &TestDir) -> Harness {
        let shared = Arc::new(Shared::default());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        Harness {
            broker: Broker::new(dir, shared.clone()),
            rt,
            shared,
            flows: Flow::ALL
                .into_iter()
                .map(|flow| FlowState {
                    flow,
                    publisher: Default::default(),
                    subscriber: Default::default(),
                })
                .collect(),
            tasks: Vec::new(),
        }
    }

    fn state(&self, flow: Flow) -> &FlowState {
        self.flows.iter().find(|f| f.flow == flow).unwrap()
    }

    fn spawn_subscriber(&mut self, flow: Flow) {
        let stats = self.state(flow).subscriber.clone();
        let handle = self.rt.spawn(subscriber(self.shared.clone(), flow, stats));
        self.tasks.push(Task {
            name: format!("subscriber {}", flow.name()),
            handle: Some(handle),
        });
    }

    fn spawn_publisher(&mut self, flow: Flow) {
        let stats = self.state(flow).publisher.clone();
        let handle = self.rt.spawn(publisher(self.shared.clone(), flow, stats));
        self.tasks.push(Task {
            name: format!("publisher {}", flow.name()),
            handle: Some(handle),
        });
    }

    /// Acknowledged messages per flow so far.
    fn acked_counts(&self) -> Vec<usize> {
        self.flows
            .iter()
            .map(|f| lock(&f.publisher).acked.len())
            .collect()
    }

    /// Fails the test if the broker died by itself or a client task failed.
    fn check(&mut self) {
        self.broker.check_alive();
        for task in &mut self.tasks {
            if !task.handle.as_ref().is_some_and(|h| h.is_finished()) {
                continue;
            }
            let handle = task.handle.take().unwrap();
            match self.rt.block_on(handle) {
                Ok(Ok(())) => {}
                Ok(Err(message)) => panic!("{} failed: {message}", task.name),
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => panic!("{} failed: {e}", task.name),
            }
        }
    }

    /// Lets the clients run for `d`, checking on everything meanwhile.
    fn run_for(&mut self, d: Duration) {
        let end = Instant::now() + d;
        loop {
            self.check();
            let now = Instant::now();
            if now >= end {
                return;
            }
            std::thread::sleep((end - now).min(Duration::from_millis(5)));
        }
    }

    /// Polls `done` until it holds; fails the test after `timeout`.
    fn wait_for(&mut self, what: &str, timeout: Duration, done: impl Fn(&Harness) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            self.check();
            if done(self) {
                return;
            }
            if Instant::now() >= deadline {
                let state: Vec<String> = self
                    .flows
                    .iter()
                    .map(|f| {
                        let r = FlowReport::new(f);
                        format!("{}\n  {}", r.line(), r.details)
                    })
                    .collect();
                panic!(
                    "timed out after {timeout:?} waiting for {what}\n{}\nbroker log: {}",
                    state.join("\n"),
                    self.broker.paths.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until every acknowledged message has been delivered, for at most
    /// `DELIVERY_TIMEOUT`, and no longer than `NO_PROGRESS_TIMEOUT` without a
    /// new delivery. Whatever is still missing then is reported as lost.
    fn wait_for_deliveries(&mut self) {
        let start = Instant::now();
        let mut last_total = 0;
        let mut last_progress = start;
        loop {
            self.check();
            let mut missing = 0;
            let mut total = 0;
            for f in &self.flows {
                let p = lock(&f.publisher);
                let s = lock(&f.subscriber);
                missing += p
                    .acked
                    .iter()
                    .filter(|seq| !s.deliveries.contains_key(seq))
                    .count();
                total += s.total_deliveries;
            }
            if missing == 0 {
                return;
            }
            let now = Instant::now();
            if total != last_total {
                last_total = total;
                last_progress = now;
            }
            if now - start >= DELIVERY_TIMEOUT || now - last_progress >= NO_PROGRESS_TIMEOUT {
                println!(
                    "still {missing} acknowledged messages undelivered after {:.1} s ({:.1} s without a new delivery)",
                    (now - start).as_secs_f64(),
                    (now - last_progress).as_secs_f64()
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

// ---- The broker process ---------------------------------------------------------

/// The `tern serve` child; killed when dropped, so a failing test leaves no
/// broker behind.
struct Broker {
    paths: Paths,
    shared: Arc<Shared>,
    child: Option<Child>,
    starts: u32,
}

impl Broker {
    fn new(dir: &TestDir, shared: Arc<Shared>) -> Broker {
        Broker {
            paths: dir.0.clone(),
            shared,
            child: None,
            starts: 0,
        }
    }

    /// Starts the broker on its port (a free one the first time, or when the
    /// old one has been taken meanwhile) and waits until it accepts TCP
    /// connections. Returns how long that took.
    fn start(&mut self) -> Duration {
        assert!(self.child.is_none(), "the broker is already running");
        let began = Instant::now();
        let mut port = self.shared.port.load(Ordering::SeqCst);
        const ATTEMPTS: u32 = 5;
        for attempt in 1..=ATTEMPTS {
            if port == 0 {
                port = free_port();
            }
            self.starts += 1;
            let mut log = OpenOptions::new()
                .append(true)
                .open(&self.paths.log)
                .expect("open broker.log");
            let log_offset = log.metadata().map(|m| m.len()).unwrap_or(0);
            writeln!(
                log,
                "---- crash test: start #{} on 127.0.0.1:{port}",
                self.starts
            )
            .expect("write broker.log");
            let mut child = broker_command(port, &self.paths)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log file"))
                .stderr(log)
                .spawn()
                .expect("spawn tern serve");
            match wait_ready(&mut child, port) {
                Ok(()) => {
                    self.child = Some(child);
                    self.shared.port.store(port, Ordering::SeqCst);
                    return began.elapsed();
                }
                Err(status) => {
                    let output = read_from(&self.paths.log, log_offset);
                    let port_taken = output.contains("cannot listen")
                        || StdTcpListener::bind(("127.0.0.1", port)).is_err();
                    if port_taken && attempt < ATTEMPTS {
                        // Another process took the port between two starts:
                        // move (the clients follow `shared.port`).
                        port = 0;
                        continue;
                    }
                    panic!(
                        "tern serve (start #{}) exited with {status} before accepting connections:\n{output}",
                        self.starts
                    );
                }
            }
        }
        unreachable!()
    }

    /// SIGKILL (what `Child::kill` sends on Unix), then reap.
    fn kill(&mut self) {
        let mut child = self.child.take().expect("the broker is running");
        child.kill().expect("SIGKILL tern serve");
        let status = child.wait().expect("wait for tern serve");
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "tern serve had exited by itself ({status}) before the kill; log tail:\n{}",
            log_tail(&self.paths.log)
        );
    }

    /// Fails the test if the broker exited without being killed.
    fn check_alive(&mut self) {
        let Some(child) = &mut self.child else {
            return;
        };
        if let Some(status) = child.try_wait().expect("try_wait tern serve") {
            self.child = None;
            panic!(
                "tern serve exited by itself ({status}); log tail:\n{}",
                log_tail(&self.paths.log)
            );
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls until the broker accepts a TCP connection; `Err` if it exits first.
fn wait_ready(child: &mut Child, port: u16) -> Result<(), ExitStatus> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait tern serve") {
            return Err(status);
        }
        if StdTcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            // Ours, unless it has just failed and someone else holds the port.
            return match child.try_wait().expect("try_wait tern serve") {
                Some(status) => Err(status),
                None => Ok(()),
            };
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tern serve did not accept connections on {addr} within {READY_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    StdTcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free loopback port")
        .port()
}

/// The files of one run: the broker's working directory and what it holds.
#[derive(Clone)]
struct Paths {
    root: PathBuf,
    /// The data dir (`--data-dir`).
    data: PathBuf,
    /// The config file (`--config`).
    config: PathBuf,
    /// The output of every start of the broker, one after the other.
    log: PathBuf,
}

/// The temporary directory of one run: `data/`, `tern.toml`, `broker.log`.
/// Removed after a pass, kept (and its path printed) after a failure.
struct TestDir(Paths);

impl TestDir {
    fn new() -> TestDir {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let root = std::env::temp_dir().join(format!("tern-crash-{}-{nanos}", std::process::id()));
        let data = root.join("data");
        std::fs::create_dir_all(&data).expect("create the test directory");
        let config = root.join("tern.toml");
        std::fs::write(&config, config_file()).expect("write tern.toml");
        let log = root.join("broker.log");
        File::create(&log).expect("create broker.log");
        TestDir(Paths {
            root,
            data,
            config,
            log,
        })
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "crash test: kept {} (data/, broker.log) for inspection",
                self.0.root.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.0.root);
        }
    }
}

fn read_from(path: &Path, offset: u64) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let start = (offset as usize).min(bytes.len());
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

fn log_tail(path: &Path) -> String {
    let text = read_from(path, 0);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

// ---- The MQTT clients -------------------------------------------------------------

/// One MQTT connection: packets through `tern-codec` over a TCP socket.
struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    version: ProtocolVersion,
}

impl Conn {
    /// Connects and returns the CONNACK, whatever its reason.
    async fn open(port: u16, connect: Connect) -> io::Result<(Conn, tern_codec::ConnAck)> {
        let stream = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).await?;
        stream.set_nodelay(true)?;
        let mut conn = Conn {
            stream,
            buf: BytesMut::with_capacity(16 * 1024),
            version: connect.protocol,
        };
        conn.send(&[Packet::Connect(Box::new(connect))]).await?;
        match tokio::time::timeout(CONNACK_TIMEOUT, conn.recv()).await {
            Ok(Ok(Packet::ConnAck(ack))) => Ok((conn, ack)),
            Ok(Ok(other)) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("expected CONNACK, got {}", other.name()),
            )),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "no CONNACK")),
        }
    }

    async fn send(&mut self, packets: &[Packet]) -> io::Result<()> {
        if packets.is_empty() {
            return Ok(());
        }
        let mut out = BytesMut::new();
        for p in packets {
            p.encode(self.version, &mut out)
                .map_err(|e| io::Error::other(format!("encode {}: {e}", p.name())))?;
        }
        self.stream.write_all(&out).await
    }

    /// The next packet. A malformed one is `InvalidData`: the broker broke the
    /// protocol, which fails the test (a crash cuts a packet short, which is
    /// only an end of stream).
    async fn recv(&mut self) -> io::Result<Packet> {
        loop {
            match decode(&mut self.buf, self.version, MAX_PACKET) {
                Ok(Some(p)) => return Ok(p),
                Ok(None) => {}
                Err(e) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("malformed packet from the broker: {e}"),
                    ));
                }
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }
}

/// A lost connection is expected (the broker was killed); a malformed packet
/// fails the test.
fn fatal_if_malformed(client: &str, e: io::Error) -> Result<(), String> {
    if e.kind() == io::ErrorKind::InvalidData {
        Err(format!("{client}: {e}"))
    } else {
        Ok(())
    }
}

/// MQTT 5: a session that outlives the connection by `SESSION_EXPIRY_SECS`,
/// started afresh with `clean_start`. MQTT 3.1.1: Clean Session 0 always,
/// since only then is the session kept (the data directory starts empty, so
/// there is nothing stale to resume).
fn connect_packet(version: ProtocolVersion, client_id: &str, clean_start: bool) -> Connect {
    let v5 = version == ProtocolVersion::V5;
    Connect {
        protocol: version,
        bridge: false,
        clean_start: clean_start && v5,
        keep_alive: 0,
        client_id: client_id.into(),
        will: None,
        username: None,
        password: None,
        properties: ConnectProperties {
            session_expiry_interval: v5.then_some(SESSION_EXPIRY_SECS),
            ..Default::default()
        },
    }
}

/// Connects, retrying with a short backoff while the broker is down.
async fn connect_retry(
    shared: &Shared,
    flow: Flow,
    client_id: &str,
    clean_start: bool,
) -> Result<(Conn, tern_codec::ConnAck), String> {
    let deadline = Instant::now() + RECONNECT_TIMEOUT;
    let mut backoff = Duration::from_millis(10);
    loop {
        let port = shared.port.load(Ordering::SeqCst);
        let last =
            match Conn::open(port, connect_packet(flow.version(), client_id, clean_start)).await {
                Ok((conn, ack)) if ack.reason == ReasonCode::Success => return Ok((conn, ack)),
                Ok((_, ack)) => format!("CONNACK {:?}", ack.reason),
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    return Err(format!("{client_id}: {e}"));
                }
                Err(e) => e.to_string(),
            };
        if Instant::now() >= deadline {
            return Err(format!(
                "{client_id}: no connection for {RECONNECT_TIMEOUT:?}, last attempt: {last}"
            ));
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(50));
    }
}

/// A persistent-session subscriber of `flow`. Runs until the runtime stops;
/// returns only on a protocol failure.
async fn subscriber(
    shared: Arc<Shared>,
    flow: Flow,
    stats: Arc<Mutex<SubStats>>,
) -> Result<(), String> {
    let id = format!("crash-sub-{}", flow.name());
    // A SUBACK granted the subscription in the broker's current session.
    let mut subscribed = false;
    // QoS 2: packet ids received and not yet released (PUBREL), with the
    // number their PUBLISH carried.
    let mut held: HashMap<NonZeroU16, Option<u64>> = HashMap::new();
    loop {
        // Clean Start only until the subscription exists: from then on the
        // session must survive every crash.
        let (mut conn, connack) = connect_retry(&shared, flow, &id, !subscribed).await?;
        {
            let mut s = lock(&stats);
            s.connects += 1;
            if subscribed && !connack.session_present {
                s.sessions_lost += 1;
            }
        }
        if subscribed && !connack.session_present {
            // The broker lost the session: our side of it goes too (spec 4.1),
            // and the subscription must be made again.
            held.clear();
            subscribed = false;
        }
        if !subscribed {
            let subscribe = Packet::Subscribe(Subscribe {
                packet_id: NonZeroU16::MIN,
                filters: vec![SubscribeFilter {
                    filter: flow.filter().into(),
                    options: SubscriptionOptions {
                        qos: flow.qos(),
                        ..Default::default()
                    },
                }],
                properties: SubscribeProperties::default(),
            });
            if conn.send(&[subscribe]).await.is_err() {
                continue;
            }
        }
        loop {
            let packet = match conn.recv().await {
                Ok(p) => p,
                Err(e) => {
                    fatal_if_malformed(&id, e)?;
                    break;
                }
            };
            let reply = match packet {
                Packet::Publish(p) => on_publish(flow, &p, &mut held, &mut lock(&stats)),
                Packet::PubRel(r) => {
                    let released = held.remove(&r.packet_id).flatten();
                    if let (Flow::Q2Paho, Some(seq)) = (flow, released) {
                        lock(&stats).deliver(seq);
                    }
                    Some(Packet::PubComp(PubAck::new(r.packet_id)))
                }
                Packet::SubAck(ack) => {
                    let granted = match flow.qos() {
                        QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
                        _ => ReasonCode::GrantedQoS2,
                    };
                    if ack.reasons != [granted] {
                        return Err(format!(
                            "{id}: SUBACK {:?}, expected [{granted:?}]",
                            ack.reasons
                        ));
                    }
                    subscribed = true;
                    lock(&stats).subscribed = true;
                    None
                }
                Packet::Disconnect(_) => break,
                other => {
                    lock(&stats).corrupt(format!("unexpected {}", other.name()));
                    None
                }
            };
            if let Some(reply) = reply
                && conn.send(&[reply]).await.is_err()
            {
                break;
            }
        }
    }
}

/// Records a received PUBLISH and returns the acknowledgement. QoS 2 keeps
/// the packet id until PUBREL; [`Flow::Q2`] delivers when the id was not
/// held (a resend of a message already delivered is acknowledged only),
/// [`Flow::Q2Paho`] keeps the message under its id and delivers at PUBREL.
fn on_publish(
    flow: Flow,
    p: &Publish,
    held: &mut HashMap<NonZeroU16, Option<u64>>,
    s: &mut SubStats,
) -> Option<Packet> {
    let Some(id) = p.packet_id else {
        s.corrupt(format!("QoS 0 PUBLISH on {}", p.topic));
        return None;
    };
    if p.qos != flow.qos() {
        s.corrupt(format!("QoS {:?} PUBLISH on {}", p.qos, p.topic));
    }
    if p.dup {
        s.dup_flags += 1;
    }
    let seq = flow.parse(p).map_err(|e| s.corrupt(e)).ok();
    match p.qos {
        QoS::ExactlyOnce => {
            let was_held = held.insert(id, seq).is_some();
            if was_held {
                s.held_redeliveries += 1;
            } else if let (Flow::Q2, Some(seq)) = (flow, seq) {
                s.deliver(seq);
            }
            Some(Packet::PubRec(PubAck::new(id)))
        }
        _ => {
            if let Some(seq) = seq {
                s.deliver(seq);
            }
            Some(Packet::PubAck(PubAck::new(id)))
        }
    }
}

/// A publisher's message awaiting its acknowledgement.
struct InFlight {
    seq: u64,
    /// QoS 2: PUBREC received (the message is acknowledged), PUBREL sent.
    released: bool,
}

/// A persistent-session publisher of `flow`: numbered messages, `WINDOW` in
/// flight, until `shared.stop`; then it finishes what is in flight and returns.
async fn publisher(
    shared: Arc<Shared>,
    flow: Flow,
    stats: Arc<Mutex<PubStats>>,
) -> Result<(), String> {
    let id = format!("crash-pub-{}", flow.name());
    let mut in_flight: HashMap<u16, InFlight> = HashMap::new();
    let mut next_seq = 0u64;
    let mut next_pid = 0u16;
    let mut first = true;
    loop {
        let (mut conn, connack) = connect_retry(&shared, flow, &id, first).await?;
        {
            let mut s = lock(&stats);
            s.connects += 1;
            if !first && !connack.session_present {
                s.sessions_lost += 1;
            }
        }
        first = false;
        // What was in flight when the connection broke, oldest first: PUBLISH
        // again (DUP, same packet id) or PUBREL again (spec 4.4).
        let mut pending: Vec<(u16, &InFlight)> = in_flight.iter().map(|(&k, v)| (k, v)).collect();
        pending.sort_by_key(|(_, f)| f.seq);
        let resend: Vec<Packet> = pending
            .into_iter()
            .map(|(pid, f)| {
                let pid = NonZeroU16::new(pid).unwrap();
                if f.released {
                    Packet::PubRel(PubAck::new(pid))
                } else {
                    Packet::Publish(flow.publish(f.seq, pid, true))
                }
            })
            .collect();
        lock(&stats).resent += resend.len() as u64;
        if conn.send(&resend).await.is_err() {
            continue;
        }
        loop {
            let stop = shared.stop.load(Ordering::SeqCst);
            let mut batch = Vec::new();
            while !stop && in_flight.len() < WINDOW {
                let pid = next_free_pid(&in_flight, &mut next_pid);
                in_flight.insert(
                    pid.get(),
                    InFlight {
                        seq: next_seq,
                        released: false,
                    },
                );
                batch.push(Packet::Publish(flow.publish(next_seq, pid, false)));
                next_seq += 1;
            }
            lock(&stats).published = next_seq;
            if stop && in_flight.is_empty() {
                lock(&stats).done = true;
                return Ok(());
            }
            if conn.send(&batch).await.is_err() {
                break;
            }
            let packet = match tokio::time::timeout(ACK_TIMEOUT, conn.recv()).await {
                Ok(Ok(p)) => p,
                Ok(Err(e)) => {
                    fatal_if_malformed(&id, e)?;
                    break;
                }
                Err(_) => {
                    lock(&stats).stalls += 1;
                    break;
                }
            };
            let reply = match on_ack(flow, packet, &mut in_flight, &mut lock(&stats)) {
                AckStep::Nothing => None,
                AckStep::Release(pid) => Some(Packet::PubRel(PubAck::new(pid))),
                AckStep::Reconnect => break,
            };
            if let Some(reply) = reply
                && conn.send(&[reply]).await.is_err()
            {
                break;
            }
        }
    }
}

/// What a publisher does after an acknowledgement.
enum AckStep {
    Nothing,
    /// QoS 2: send PUBREL for this packet id.
    Release(NonZeroU16),
    /// The broker sent DISCONNECT.
    Reconnect,
}

/// Applies an acknowledgement to the in-flight set and the statistics.
fn on_ack(
    flow: Flow,
    packet: Packet,
    in_flight: &mut HashMap<u16, InFlight>,
    s: &mut PubStats,
) -> AckStep {
    match (flow, packet) {
        (Flow::Q1, Packet::PubAck(a)) => match in_flight.remove(&a.packet_id.get()) {
            Some(f) if !a.reason.is_error() => {
                s.acked.insert(f.seq);
            }
            Some(_) => s.refused += 1,
            None => s.anomaly("PUBACK for an id not in flight".into()),
        },
        (Flow::Q2 | Flow::Q2Paho, Packet::PubRec(a)) => {
            let Some(f) = in_flight.get_mut(&a.packet_id.get()) else {
                s.anomaly("PUBREC for an id not in flight".into());
                return AckStep::Nothing;
            };
            if a.reason.is_error() {
                if f.released {
                    s.anomaly(format!("PUBREC {:?} after an accepting PUBREC", a.reason));
                }
                in_flight.remove(&a.packet_id.get());
                s.refused += 1;
                return AckStep::Nothing;
            }
            if !f.released {
                f.released = true;
                s.acked.insert(f.seq);
            }
            return AckStep::Release(a.packet_id);
        }
        (Flow::Q2 | Flow::Q2Paho, Packet::PubComp(a)) => match in_flight.get(&a.packet_id.get()) {
            Some(f) if f.released => {
                in_flight.remove(&a.packet_id.get());
                if a.reason == ReasonCode::Success {
                    s.completed += 1;
                } else {
                    s.anomaly(format!("PUBCOMP {:?}", a.reason));
                }
            }
            Some(_) => s.anomaly("PUBCOMP before PUBREC".into()),
            None => s.anomaly("PUBCOMP for an id not in flight".into()),
        },
        (_, Packet::Disconnect(d)) => {
            s.anomaly(format!("DISCONNECT {:?} from the broker", d.reason));
            return AckStep::Reconnect;
        }
        (_, other) => s.anomaly(format!("unexpected {}", other.name())),
    }
    AckStep::Nothing
}

/// The next packet id not in flight, cycling through 1..=65535.
fn next_free_pid(in_flight: &HashMap<u16, InFlight>, next: &mut u16) -> NonZeroU16 {
    loop {
        *next = next.wrapping_add(1).max(1);
        if !in_flight.contains_key(next) {
            return NonZeroU16::new(*next).unwrap();
        }
    }
}

// ---- Small helpers -----------------------------------------------------------------

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `TERN_CRASH_SEED` (decimal or 0x-hex), else the clock.
fn seed() -> u64 {
    match std::env::var("TERN_CRASH_SEED") {
        Ok(v) => {
            let v = v.trim();
            match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => v.parse(),
            }
            .expect("TERN_CRASH_SEED is a decimal or 0x-hex number")
        }
        Err(_) => {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos() as u64;
            nanos ^ (u64::from(std::process::id()) << 32)
        }
    }
}

/// xorshift64*: enough randomness for kill timing, replayable from its seed.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> XorShift {
        // Any seed, 0 included, gives a non-zero state.
        XorShift((seed ^ 0x9E37_79B9_7F4A_7C15).max(1))
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform enough in `lo..=hi`.
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}
