//! `tern bench`: a load generator for any MQTT broker (the role emqtt-bench
//! plays for EMQX).
//!
//! A run connects every subscriber (and subscribes), then every publisher,
//! then publishes for the warm-up and the measured duration, stops the
//! publishers, waits for messages still on their way (drain), closes every
//! connection and prints the summary. The conn scenario only connects and
//! holds. Modules, one concept each:
//!
//! - `cli`: the options and their checks;
//! - `scenario`: who publishes where, who subscribes to what, how many
//!   deliveries each message should have;
//! - `connection`: sockets (source addresses, open-files limit) and the MQTT
//!   handshakes;
//! - `worker`: the per-connection tasks (publisher, subscriber, idle);
//! - `stamp`: the timestamp header of every payload;
//! - `stats`: counters, sequence tracking, latency histograms;
//! - `report`: live lines and the summary (text, JSON).

mod cli;
mod connection;
mod report;
mod scenario;
mod stamp;
mod stats;
mod stream;
mod worker;

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tern_codec::QoS;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

pub use cli::BenchArgs;
use connection::{Conn, Login, Target};
use report::{Live, Setup, Summary};
use scenario::Plan;
use stats::{Progress, Stats, Tally};
use worker::{CLOSE_LIMIT, Phase, PublisherJob};

use crate::exit::Failure;

/// Writes to stderr; a closed stderr is not worth a panic (`eprintln!`).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// Handshakes in progress at once: more only overflows the broker's accept
/// backlog, and SYN retries then stall connections for a second or more.
const CONNECT_CONCURRENCY: usize = 64;
/// The drain ends once no measured message arrived for this long.
const QUIET: Duration = Duration::from_secs(1);
/// How often the drain checks whether everything arrived.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// Runs `tern bench` on a multi-thread runtime.
pub fn main(args: BenchArgs) -> ExitCode {
    if let Err(e) = args.validate() {
        say!("tern bench: {e}");
        return ExitCode::from(2);
    }
    let plan = match scenario::plan(&args) {
        Ok(plan) => plan,
        Err(e) => {
            say!("tern bench: {e}");
            return ExitCode::from(2);
        }
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = args.threads {
        builder.worker_threads(threads);
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return Failure::Other(format!("cannot start: {e}")).report("tern bench"),
    };
    let result = runtime.block_on(run(args, plan));
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.report("tern bench"),
    }
}

/// Ctrl-C presses so far.
fn watch_interrupts() -> watch::Receiver<u32> {
    let (tx, rx) = watch::channel(0);
    tokio::spawn(async move {
        while tokio::signal::ctrl_c().await.is_ok() {
            tx.send_modify(|n| *n += 1);
        }
    });
    rx
}

/// Adds which connection failed to a setup error.
fn context(failure: Failure, what: &str) -> Failure {
    match failure {
        Failure::Other(m) => Failure::Other(format!("{what}: {m}")),
        Failure::Usage(m) => Failure::Usage(format!("{what}: {m}")),
        Failure::Unreachable(m) => Failure::Unreachable(format!("{what}: {m}")),
        Failure::Refused(m) => Failure::Refused(format!("{what}: {m}")),
        Failure::Timeout(m) => Failure::Timeout(format!("{what}: {m}")),
        Failure::Rejected(m) => Failure::Rejected(format!("{what}: {m}")),
        Failure::Lost(m) => Failure::Lost(format!("{what}: {m}")),
    }
}

fn client_id(role: char, index: usize) -> String {
    format!("tb{}-{role}{index}", std::process::id())
}

/// Everything a run shares between its parts.
struct Run {
    args: BenchArgs,
    plan: Plan,
    target: Arc<Target>,
    login: Arc<Login>,
    interrupts: watch::Receiver<u32>,
}

async fn run(args: BenchArgs, plan: Plan) -> Result<(), Failure> {
    let needed = plan.connections() + 64;
    match connection::raise_open_files_limit() {
        Some(limit) if limit < needed as u64 => say!(
            "tern bench: warning: {} connections need about {needed} open files; the limit is \
             {limit} (raise the hard limit: ulimit -Hn)",
            plan.connections()
        ),
        _ => {}
    }
    let target = Target::resolve(
        &args.host,
        args.tls.port(args.port),
        args.tls.options().as_ref(),
        plan.connections(),
        args.source_addrs,
    )
    .await?;
    let login = Login {
        version: args.version,
        keep_alive: args.keep_alive,
        session_expiry: args.session_expiry,
        username: args.username.clone(),
        password: args.password.clone(),
    };
    let cpu_before = connection::cpu_time();
    let run = Run {
        target: Arc::new(target),
        login: Arc::new(login),
        interrupts: watch_interrupts(),
        args,
        plan,
    };
    let mut summary = if run.plan.idle > 0 {
        run_connections(&run).await?
    } else {
        run_messages(&run).await?
    };
    summary.cpu = connection::cpu_time()
        .zip(cpu_before)
        .map(|(after, before)| after.saturating_sub(before));
    if run.args.json {
        let json = serde_json::to_string_pretty(&summary.json()).unwrap_or_default();
        let _ = writeln!(std::io::stdout(), "{json}");
        if !run.args.quiet {
            let _ = write!(std::io::stderr(), "{}", summary.text());
        }
    } else {
        let _ = write!(std::io::stdout(), "{}", summary.text());
    }
    Ok(())
}

fn setup_of(run: &Run) -> Setup {
    let a = &run.args;
    Setup {
        scenario: a.scenario.name(),
        broker: run.target.addr.to_string(),
        version: a.version.name(),
        qos: a.qos as u8,
        payload: a.size,
        publishers: run.plan.publishers.len(),
        subscribers: run.plan.subscribers.len(),
        connections: run.plan.connections(),
        rate: (a.rate > 0.0).then_some(a.rate),
        inflight: (a.inflight > 0).then_some(a.inflight),
        warmup: if run.plan.idle > 0 {
            Duration::ZERO
        } else {
            a.warmup()
        },
        source_addresses: run.target.source_count(),
        knows_expected: run.plan.knows_expected(),
    }
}

/// One connection to open during setup.
struct Opening {
    /// Connection number (picks the source address).
    n: usize,
    client_id: String,
    /// Subscribe to this filter after CONNACK.
    filter: Option<String>,
    /// For errors: "subscriber 3".
    what: String,
}

/// Opens connections, at most [`CONNECT_CONCURRENCY`] at a time and at
/// `--connect-rate`; returns them in order, or the first failure.
async fn open_all(run: &Run, openings: Vec<Opening>, qos: QoS) -> Result<Vec<Conn>, Failure> {
    let count = openings.len();
    let permits = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let mut tasks = JoinSet::new();
    let start = Instant::now();
    let mut interrupts = run.interrupts.clone();
    let mut conns: Vec<Option<Conn>> = (0..count).map(|_| None).collect();
    let spawn_all = async {
        for (i, opening) in openings.into_iter().enumerate() {
            if run.args.connect_rate > 0.0 {
                tokio::time::sleep_until(
                    start + Duration::from_secs_f64(i as f64 / run.args.connect_rate),
                )
                .await;
            }
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            let (target, login) = (run.target.clone(), run.login.clone());
            tasks.spawn(async move {
                let opened = async {
                    let mut conn =
                        connection::connect(&target, opening.n, &opening.client_id, &login).await?;
                    if let Some(filter) = &opening.filter {
                        conn.subscribe(filter, qos).await?;
                    }
                    Ok(conn)
                }
                .await
                .map_err(|f| context(f, &opening.what));
                drop(permit);
                (i, opened)
            });
        }
        while let Some(done) = tasks.join_next().await {
            let (i, opened) = done.map_err(|e| Failure::Other(format!("task failed: {e}")))?;
            conns[i] = Some(opened?);
        }
        Ok::<_, Failure>(())
    };
    tokio::select! {
        done = spawn_all => done?,
        _ = interrupts.changed() => {
            return Err(Failure::Other("interrupted while connecting".into()));
        }
    }
    Ok(conns.into_iter().flatten().collect())
}

/// The scenarios that publish and/or subscribe.
async fn run_messages(run: &Run) -> Result<Summary, Failure> {
    let a = &run.args;
    let setup_start = Instant::now();
    let subscribers = run.plan.subscribers.clone();
    let publishers = run.plan.publishers.clone();
    let sub_conns = open_all(
        run,
        subscribers
            .iter()
            .enumerate()
            .map(|(n, s)| Opening {
                n,
                client_id: client_id('s', s.index as usize),
                filter: Some(s.filter.clone()),
                what: format!("subscriber {}", s.index),
            })
            .collect(),
        a.qos,
    )
    .await?;
    let pub_conns = open_all(
        run,
        publishers
            .iter()
            .enumerate()
            .map(|(n, p)| Opening {
                n: subscribers.len() + n,
                client_id: client_id('p', p.index as usize),
                filter: None,
                what: format!("publisher {}", p.index),
            })
            .collect(),
        a.qos,
    )
    .await?;
    if !a.quiet {
        say!(
            "tern bench {}: {} subscriber(s) and {} publisher(s) connected to {} in {:.2} s",
            a.scenario.name(),
            sub_conns.len(),
            pub_conns.len(),
            run.target.addr,
            setup_start.elapsed().as_secs_f64()
        );
    }

    let t0 = Instant::now();
    let t0_ns = stamp::now_ns();
    let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    let measure_start_ns = t0_ns.saturating_add(nanos(a.warmup()));
    let measure_end_ns = measure_start_ns.saturating_add(nanos(a.duration()));
    let stats = Arc::new(Stats::new(measure_start_ns, measure_end_ns));
    stats
        .connected
        .store((sub_conns.len() + pub_conns.len()) as u64, Relaxed);
    let progress: Option<Arc<[Progress]>> =
        (a.inflight > 0).then(|| publishers.iter().map(|_| Progress::default()).collect());
    let (phase_tx, phase_rx) = watch::channel(Phase::Run);
    let mut tasks = JoinSet::new();
    for (conn, spec) in sub_conns.into_iter().zip(&subscribers) {
        let tally = Tally::new(stats.clone(), progress.clone(), a.first_index as u32);
        tasks.spawn(worker::subscriber(
            conn,
            spec.index,
            tally,
            stats.clone(),
            phase_rx.clone(),
        ));
    }
    let count = publishers.len().max(1) as f64;
    for (local, (conn, spec)) in pub_conns.into_iter().zip(&publishers).enumerate() {
        // Publishers at a fixed rate take turns instead of all sending at once.
        let stagger = if a.rate > 0.0 {
            Duration::from_secs_f64(local as f64 / count / a.rate)
        } else {
            Duration::ZERO
        };
        let job = PublisherJob {
            topic: spec.topic.clone(),
            id: spec.index,
            local,
            deliveries: spec.deliveries,
            qos: a.qos,
            size: a.size,
            rate: a.rate,
            window: a.inflight,
            start: t0 + stagger,
        };
        tasks.spawn(worker::publisher(
            conn,
            job,
            stats.clone(),
            progress.clone(),
            phase_rx.clone(),
        ));
    }

    // Publish for the warm-up and the duration, a live line each second.
    let warm_end = t0 + a.warmup();
    let end = warm_end + a.duration();
    let mut live = Live::new();
    let mut ticker = tokio::time::interval_at(t0 + Duration::from_secs(1), Duration::from_secs(1));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut interrupts = run.interrupts.clone();
    let interrupted = loop {
        tokio::select! {
            _ = ticker.tick() => {
                if !a.quiet {
                    let tag = if Instant::now() < warm_end { "  (warm-up)" } else { "" };
                    say!("{}", live.messages(t0.elapsed(), &stats, tag));
                }
            }
            () = tokio::time::sleep_until(end) => break false,
            _ = interrupts.changed() => break true,
        }
    };
    let stopped = Instant::now();
    if interrupted {
        stats.measure_end_ns.fetch_min(stamp::now_ns(), Relaxed);
    }
    let _ = phase_tx.send(Phase::Stop);

    // Drain: wait for what is still on its way.
    if !subscribers.is_empty() {
        let limit = if interrupted {
            a.drain().min(Duration::from_secs(1))
        } else {
            a.drain()
        };
        let deadline = stopped + limit;
        let stopped_ns = stamp::now_ns();
        let knows_expected = run.plan.knows_expected();
        loop {
            let received = stats.received_measured.load(Relaxed);
            if knows_expected && received >= stats.expected.load(Relaxed) {
                break;
            }
            let last = stats.last_measured_rx_ns.load(Relaxed).max(stopped_ns);
            if stamp::now_ns().saturating_sub(last) >= nanos(QUIET) {
                break;
            }
            tokio::select! {
                _ = ticker.tick() => {
                    if !a.quiet {
                        say!("{}", live.messages(t0.elapsed(), &stats, "  (drain)"));
                    }
                }
                () = tokio::time::sleep(DRAIN_POLL) => {}
                () = tokio::time::sleep_until(deadline) => break,
                _ = interrupts.changed() => break,
            }
        }
    }
    let _ = phase_tx.send(Phase::Close);
    close_all(tasks).await;

    let measured = stopped.min(end).saturating_duration_since(warm_end);
    Ok(Summary::collect(
        setup_of(run),
        &stats,
        measured,
        interrupted,
    ))
}

/// Waits for every connection task to close; stragglers are abandoned.
async fn close_all(mut tasks: JoinSet<()>) {
    let all = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(CLOSE_LIMIT + Duration::from_secs(1), all)
        .await
        .is_err()
    {
        tasks.abort_all();
    }
}

/// The conn scenario: open the connections at the rate asked, hold them for
/// the duration, close them.
async fn run_connections(run: &Run) -> Result<Summary, Failure> {
    let a = &run.args;
    let target_count = run.plan.idle;
    let stats = Arc::new(Stats::new(0, u64::MAX));
    let (phase_tx, phase_rx) = watch::channel(Phase::Run);
    let permits = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let t0 = Instant::now();
    let mut interrupts = run.interrupts.clone();

    // Connections are opened by a task of their own, so that the live line
    // goes on while they open.
    let opener = {
        let (stats, target, login) = (stats.clone(), run.target.clone(), run.login.clone());
        let rate = a.connect_rate;
        let mut closing = phase_rx.clone();
        tokio::spawn(async move {
            let mut tasks = JoinSet::new();
            for i in 0..target_count {
                let slot = (rate > 0.0).then(|| t0 + Duration::from_secs_f64(i as f64 / rate));
                let permit = tokio::select! {
                    biased;
                    _ = closing.changed() => break,
                    permit = async {
                        sleep_until_opt(slot.or(Some(t0))).await;
                        permits.clone().acquire_owned().await
                    } => permit,
                };
                let Ok(permit) = permit else {
                    break;
                };
                let (stats, target, login) = (stats.clone(), target.clone(), login.clone());
                let phase = phase_rx.clone();
                tasks.spawn(async move {
                    let started = std::time::Instant::now();
                    let opened = connection::connect(&target, i, &client_id('c', i), &login).await;
                    drop(permit);
                    match opened {
                        Ok(conn) => {
                            stats.connect_done(started.elapsed());
                            worker::idle(conn, i, stats, phase).await;
                        }
                        Err(f) => {
                            stats.connect_failed.fetch_add(1, Relaxed);
                            stats.error(format!("connection {i}: {}", f.message()));
                        }
                    }
                });
            }
            tasks
        })
    };

    let mut live = Live::new();
    let mut ticker = tokio::time::interval_at(t0 + Duration::from_secs(1), Duration::from_secs(1));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut connected_at: Option<Instant> = None;
    let mut interrupted = false;
    loop {
        let done = stats.connected.load(Relaxed) + stats.connect_failed.load(Relaxed);
        if connected_at.is_none() && done >= target_count as u64 {
            let now = Instant::now();
            connected_at = Some(now);
            if !a.quiet {
                say!("{}", live.connections(t0.elapsed(), &stats, target_count));
                say!(
                    "tern bench conn: {} connected, {} failed in {:.2} s; holding for {:.1} s",
                    stats.connected.load(Relaxed),
                    stats.connect_failed.load(Relaxed),
                    (now - t0).as_secs_f64(),
                    a.duration
                );
            }
        }
        let hold_end = connected_at.map(|t| t + a.duration());
        tokio::select! {
            _ = ticker.tick() => {
                if !a.quiet {
                    say!("{}", live.connections(t0.elapsed(), &stats, target_count));
                }
            }
            () = tokio::time::sleep(DRAIN_POLL), if connected_at.is_none() => {}
            () = sleep_until_opt(hold_end) => break,
            _ = interrupts.changed() => {
                interrupted = true;
                break;
            }
        }
    }
    let connect_secs = connected_at.unwrap_or_else(Instant::now) - t0;
    let held = connected_at.map_or(Duration::ZERO, |t| t.elapsed());
    // Count before closing: closing is not the broker dropping connections.
    let mut summary = Summary::collect(setup_of(run), &stats, held, interrupted);
    summary.connect_rate =
        Some(stats.connected.load(Relaxed) as f64 / connect_secs.as_secs_f64().max(1e-3));
    let _ = phase_tx.send(Phase::Close);
    if let Ok(tasks) = opener.await {
        close_all(tasks).await;
    }
    Ok(summary)
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
