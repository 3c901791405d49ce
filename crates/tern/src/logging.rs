//! Where `tern`'s log lines go and how they look.
//!
//! The client tools and `tern bench` log to standard error. `tern serve`
//! follows its configuration: `log_format` (text, or JSON for log
//! shippers) and `log_file` (append to a file, reopened on SIGHUP so that
//! logrotate can move it away; without it standard error, which systemd's
//! journal takes). `RUST_LOG` sets the level everywhere.

use std::fs::File;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::Context;
use tern_broker::config::LogFormat;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::writer::BoxMakeWriter;

/// The filter from `RUST_LOG`, else `default`.
fn filter(default: &str) -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default))
}

/// Logs to stderr, filtered by `RUST_LOG` (default `default_filter`).
///
/// Failures to write a log line are ignored rather than reported with
/// `eprintln!`, which panics when stderr is a closed pipe (`tern serve | head`).
pub fn to_stderr(default_filter: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(filter(default_filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .log_internal_errors(false)
        .init();
}

/// Logging for `tern pub` and `tern sub`: warnings, and with `-d` every
/// packet sent and received, one plain line each as mosquitto_pub/sub print
/// them ("Client ID sending PUBLISH (d0, q1, ...)"), without timestamps.
pub fn for_client(debug: bool) {
    if !debug {
        to_stderr("warn");
        return;
    }
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new("warn,tern_client=debug"))
        .with_writer(std::io::stderr)
        .without_time()
        .with_level(false)
        .with_target(false)
        .with_ansi(false)
        .log_internal_errors(false)
        .init();
}

/// A log file that can be opened again under its name (after logrotate
/// renamed it), shared by the logger and the SIGHUP handler.
#[derive(Clone)]
pub struct LogFile {
    path: PathBuf,
    file: Arc<Mutex<File>>,
}

impl LogFile {
    fn open(path: &Path) -> std::io::Result<File> {
        File::options().create(true).append(true).open(path)
    }

    /// Opens the file at its path again; later lines go there.
    pub fn reopen(&self) -> anyhow::Result<()> {
        let fresh = LogFile::open(&self.path)
            .with_context(|| format!("cannot reopen the log file {}", self.path.display()))?;
        *self.file.lock().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }
}

/// One log line's hold on the file (the lock keeps lines whole).
pub struct LogWriter<'a>(MutexGuard<'a, File>);

impl std::io::Write for LogWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl<'a> MakeWriter<'a> for LogFile {
    type Writer = LogWriter<'a>;
    fn make_writer(&'a self) -> LogWriter<'a> {
        LogWriter(self.file.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Logging for `tern serve`, as its configuration says. Returns the log
/// file, to be reopened on SIGHUP.
pub fn for_serve(format: LogFormat, file: Option<&Path>) -> anyhow::Result<Option<LogFile>> {
    let log_file = match file {
        Some(path) => {
            let opened = LogFile::open(path).with_context(|| {
                format!(
                    "cannot open the log file {} (log_file): check that its folder exists and tern may write there",
                    path.display()
                )
            })?;
            Some(LogFile {
                path: path.to_owned(),
                file: Arc::new(Mutex::new(opened)),
            })
        }
        None => None,
    };
    // Colours only for a person at a terminal.
    let ansi = log_file.is_none() && std::io::stderr().is_terminal();
    let writer = match &log_file {
        Some(f) => BoxMakeWriter::new(f.clone()),
        None => BoxMakeWriter::new(std::io::stderr),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter("info"))
        .with_writer(writer)
        .with_ansi(ansi)
        .log_internal_errors(false);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(log_file)
}
