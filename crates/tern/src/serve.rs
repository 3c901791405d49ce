//! `tern serve`: run the broker until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use tern_broker::{Broker, Config};

/// Options of `tern serve`.
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  tern serve\n  tern serve --bind 0.0.0.0:1883\n  tern serve --config tern.toml\n  tern serve --data-dir /var/lib/tern"
)]
pub struct ServeArgs {
    /// Listen on this address (overrides `bind` in the config file).
    #[arg(long, value_name = "ADDR:PORT")]
    bind: Option<SocketAddr>,
    /// Read settings from this TOML file (see tern.example.toml).
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// Keep sessions and retained messages in this directory (overrides
    /// `data_dir`; default ./tern-data).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

/// Starts the broker and serves until a shutdown signal.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(bind) = args.bind {
        config.bind = bind;
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(config))
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let mut signals = ShutdownSignals::install()?;
    let persistence = config.persistence.then(|| config.data_dir.clone());
    let broker = Broker::start(config).await?;
    let addr = broker.local_addr();
    tracing::info!(
        "tern {} listening on mqtt://{addr} (MQTT 3.1, 3.1.1, 5.0)",
        env!("CARGO_PKG_VERSION")
    );
    if addr.ip().is_loopback() {
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
    signals.recv().await;
    tracing::info!("shutting down: disconnecting clients");
    broker.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// SIGINT (Ctrl-C) and SIGTERM, caught from before the broker starts: a
/// signal that came before they were installed would kill the process at
/// once, without the clean shutdown (DISCONNECT to clients, store flushed).
#[cfg(unix)]
struct ShutdownSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl ShutdownSignals {
    fn install() -> anyhow::Result<ShutdownSignals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(ShutdownSignals {
            interrupt: signal(SignalKind::interrupt()).context("cannot catch SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("cannot catch SIGTERM")?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

#[cfg(not(unix))]
struct ShutdownSignals;

#[cfg(not(unix))]
impl ShutdownSignals {
    fn install() -> anyhow::Result<ShutdownSignals> {
        Ok(ShutdownSignals)
    }

    async fn recv(&mut self) {
        let _ = tokio::signal::ctrl_c().await;
    }
}
