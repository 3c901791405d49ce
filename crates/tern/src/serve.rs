//! `tern serve`: run the broker until SIGINT or SIGTERM; SIGHUP reloads the
//! password file, the ACL file and the TLS certificates.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use tern_broker::config::{ClusterConfig, ListenerTransport, parse_addr};
use tern_broker::{Broker, BrokerHandle, Config, ReloadError};

use crate::logging::{self, LogFile};

/// Options of `tern serve`.
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  tern serve\n  tern serve --bind 0.0.0.0:1883\n  tern serve --config tern.toml\n  tern serve --data-dir /var/lib/tern\n  tern serve --cluster nats://10.0.0.5:4222,nats://10.0.0.6:4222"
)]
pub struct ServeArgs {
    /// Listen on this address with plain TCP (overrides `bind` in the config
    /// file; not with `[[listeners]]`, whose addresses are set there).
    #[arg(long, value_name = "ADDR:PORT", value_parser = parse_addr)]
    bind: Option<SocketAddr>,
    /// Read settings from this TOML file (see tern.example.toml).
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// Keep sessions and retained messages in this directory (overrides
    /// `data_dir`; default ./tern-data).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Join a cluster through these NATS servers (comma-separated URLs;
    /// overrides `servers` of `[cluster]`, which sets the rest). See
    /// docs/cluster.md.
    #[arg(long, value_name = "NATS_URL,...", value_delimiter = ',')]
    cluster: Vec<String>,
}

/// Starts the broker and serves until a shutdown signal.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(bind) = args.bind {
        if !config.listeners.is_empty() {
            anyhow::bail!(
                "--bind cannot be used with a config file that has [[listeners]] sections; change their `bind` in {} instead",
                args.config
                    .as_deref()
                    .unwrap_or("the config file".as_ref())
                    .display()
            );
        }
        config.bind = bind;
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    if !args.cluster.is_empty() {
        match &mut config.cluster {
            Some(cluster) => cluster.servers = args.cluster,
            None => config.cluster = Some(ClusterConfig::new(args.cluster)),
        }
    }
    let log_file = logging::for_serve(config.log_format, config.log_file.as_deref())?;
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if config.worker_threads > 0 {
        runtime.worker_threads(config.worker_threads);
    }
    let runtime = runtime
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(config, log_file))
}

async fn serve(config: Config, log_file: Option<LogFile>) -> anyhow::Result<()> {
    let mut signals = Signals::install()?;
    let persistence = config.persistence.then(|| config.data_dir.clone());
    let drain = config.cluster.as_ref().map(|c| c.drain_timeout_secs);
    let broker = Broker::start(config).await?;
    let config = &broker.state().config;
    for (listener, addr) in config.listeners.iter().zip(broker.local_addrs()) {
        let scheme = match listener.transport {
            ListenerTransport::Tcp => "mqtt",
            ListenerTransport::Tls => "mqtts",
            ListenerTransport::Ws => "ws",
            ListenerTransport::Wss => "wss",
        };
        let path = match listener.transport {
            ListenerTransport::Ws | ListenerTransport::Wss => listener.ws_path.as_str(),
            _ => "",
        };
        tracing::info!(
            "tern {} listening on {scheme}://{addr}{path} (MQTT 3.1, 3.1.1, 5.0)",
            env!("CARGO_PKG_VERSION")
        );
    }
    if let (Some(http), Some(addr)) = (&config.http, broker.http_addr()) {
        let scheme = if http.cert_file.is_some() {
            "https"
        } else {
            "http"
        };
        tracing::info!("HTTP (metrics, admin API, health) on {scheme}://{addr}");
    }
    let addr = broker.local_addr();
    if config.listeners.len() == 1 && addr.ip().is_loopback() && config.allows_anonymous(0) {
        tracing::info!(
            "accepting anonymous clients from this machine only; to open it up use --bind 0.0.0.0:{} or set `bind` in a config file (see tern.example.toml)",
            addr.port()
        );
    }
    match persistence {
        Some(dir) => tracing::info!(
            "keeping sessions and retained messages in {}",
            dir.display()
        ),
        None => {
            tracing::info!("persistence is off: sessions and retained messages live in memory only")
        }
    }
    while let Signal::Reload = signals.recv().await {
        // First, so that what the reload logs lands in the new file.
        if let Some(file) = &log_file
            && let Err(e) = file.reopen()
        {
            tracing::error!("{e:#}; logging on to the file opened before");
        }
        reload(&broker);
    }
    if let Some(secs) = drain {
        drain_node(&broker, &mut signals, Duration::from_secs(secs)).await;
    }
    tracing::info!("shutting down: disconnecting clients");
    broker.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// SIGHUP: reloads what can be, logging what could not.
fn reload(broker: &BrokerHandle) {
    tracing::info!("SIGHUP: reloading the password file, the ACL file and the certificates");
    if let Err(errors) = broker.reload() {
        for error in errors {
            let kept = match &error {
                ReloadError::Auth(_) => "the password and ACL rules loaded before stay in force",
                ReloadError::Tls(_) => "that listener keeps the certificates loaded before",
            };
            tracing::error!("not reloaded, {kept}: {error}");
        }
    }
}

/// Drains a cluster node: stops taking clients, asks them to use another
/// node, and waits (up to `timeout`, or until another shutdown signal) for
/// their sessions to move there, saying how many are left each second.
async fn drain_node(broker: &BrokerHandle, signals: &mut Signals, timeout: Duration) {
    broker.drain();
    let started = tokio::time::Instant::now();
    let mut left = broker.sessions();
    tracing::info!(
        "draining: no new clients, connected ones asked to use another node; waiting up to {}s for {left} sessions to move (signal again to stop now)",
        timeout.as_secs()
    );
    let mut check = tokio::time::interval(Duration::from_millis(100));
    let mut report = tokio::time::interval(Duration::from_secs(1));
    let mut reported = left;
    while left > 0 {
        tokio::select! {
            signal = signals.recv() => match signal {
                Signal::Reload => reload(broker),
                Signal::Shutdown => break,
            },
            _ = check.tick() => left = broker.sessions(),
            _ = report.tick() => if left != reported {
                tracing::info!("draining: {left} sessions left");
                reported = left;
            },
        }
        if started.elapsed() >= timeout {
            tracing::warn!(
                "drain timeout: {left} sessions did not move (their clients did not reconnect to another node); they stay in this node's data file, if persistence is on, for its next start"
            );
            break;
        }
    }
}

/// What a signal asks for.
enum Signal {
    Shutdown,
    Reload,
}

/// SIGINT (Ctrl-C), SIGTERM and SIGHUP, caught from before the broker
/// starts: a signal that came before they were installed would kill the
/// process at once, without the clean shutdown (DISCONNECT to clients, store
/// flushed).
#[cfg(unix)]
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn install() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt()).context("cannot catch SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("cannot catch SIGTERM")?,
            hangup: signal(SignalKind::hangup()).context("cannot catch SIGHUP")?,
        })
    }

    async fn recv(&mut self) -> Signal {
        tokio::select! {
            _ = self.interrupt.recv() => Signal::Shutdown,
            _ = self.terminate.recv() => Signal::Shutdown,
            _ = self.hangup.recv() => Signal::Reload,
        }
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn install() -> anyhow::Result<Signals> {
        Ok(Signals)
    }

    async fn recv(&mut self) -> Signal {
        let _ = tokio::signal::ctrl_c().await;
        Signal::Shutdown
    }
}
