//! `tern store`: work on a data directory while the broker is stopped.
//!
//! ```text
//! tern store salvage DATA_DIR [--to NEW_DIR]
//! ```
//!
//! Salvage is for a data file that `tern serve` refuses as damaged: it
//! copies every session, queued delivery and retained message that can
//! still be read into a new data directory, and reports what it could not
//! (see `tern_broker::store::salvage`). The damaged file is only read.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use tern_broker::salvage::{self, Report, Tally};

/// Arguments of `tern store`.
#[derive(clap::Args)]
pub struct StoreArgs {
    #[command(subcommand)]
    command: StoreCommand,
}

#[derive(clap::Subcommand)]
enum StoreCommand {
    /// Copy what is still readable out of a damaged data file into a new one.
    #[command(after_help = "\
Reads DATA_DIR/tern.redb without changing it and writes NEW_DIR/tern.redb.
Run it while tern is stopped, then start tern on the new directory.

Exit codes:
  0  everything was copied
  1  nothing was written (unreadable, not a data file, NEW_DIR holds one)
  3  the new file was written, but some data could not be salvaged

Example:
  tern store salvage /var/lib/tern --to /var/lib/tern.salvaged")]
    Salvage {
        /// The data directory holding the damaged tern.redb.
        data_dir: PathBuf,
        /// Where to write the new tern.redb [default: DATA_DIR.salvaged].
        #[arg(long, value_name = "NEW_DIR")]
        to: Option<PathBuf>,
    },
}

/// Runs `tern store`.
pub fn run(args: StoreArgs) -> ExitCode {
    match args.command {
        StoreCommand::Salvage { data_dir, to } => {
            let to = to.unwrap_or_else(|| default_target(&data_dir));
            salvage_command(&data_dir, &to)
        }
    }
}

/// `DIR.salvaged`, beside `DIR`.
fn default_target(data_dir: &Path) -> PathBuf {
    let mut name = data_dir
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "tern-data".into());
    name.push(".salvaged");
    data_dir.with_file_name(name)
}

fn salvage_command(data_dir: &Path, to: &Path) -> ExitCode {
    eprintln!(
        "tern store salvage: reading {} (it is not changed) ...",
        data_dir.join("tern.redb").display()
    );
    // redb may panic on a damaged page; salvage catches that and goes on,
    // so the panic message would only alarm (it is logged at debug).
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|info| {
        tracing::debug!("redb panicked on damaged data (caught): {info}");
    }));
    let result = salvage::salvage(data_dir, to);
    std::panic::set_hook(hook);
    match result {
        Ok(report) => {
            print!("{}", render(&report));
            if report.complete() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            }
        }
        Err(e) => {
            eprintln!("tern store salvage: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The report as the operator reads it.
fn render(report: &Report) -> String {
    let mut out = format!("Wrote {}\n", report.to.display());
    for (name, tally) in report.kinds() {
        out.push_str(&format!("  {name:<20} {}\n", line(tally)));
    }
    let dir = report.to.parent().unwrap_or(Path::new("."));
    if report.complete() {
        out.push_str("Everything in the damaged file was copied.\n");
    } else {
        out.push_str("Some data could not be salvaged: it is counted above as lost.\n");
    }
    out.push_str(&format!(
        "To run on it: tern serve --data-dir {}\n(or, with tern stopped, move it over {})\n",
        dir.display(),
        report.from.display()
    ));
    out
}

/// One kind's line: "1,953 of 2,000 copied, 47 lost, 3 expired".
fn line(t: &Tally) -> String {
    let mut s = match t.in_file {
        Some(n) => format!("{} of {} copied", t.copied, n),
        None => format!(
            "{} copied (table unreadable: how many it held is unknown)",
            t.copied
        ),
    };
    if t.lost() > 0 {
        s.push_str(&format!(", {} lost", t.lost()));
    } else if t.damaged && t.in_file.is_some() {
        s.push_str(", table damaged");
    }
    if t.expired > 0 {
        s.push_str(&format!(", {} expired", t.expired));
    }
    if t.previous_commit {
        s.push_str(" (from the commit before the last: its last changes are missing)");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_target_is_beside_the_data_dir() {
        assert_eq!(
            default_target(Path::new("/var/lib/tern")),
            Path::new("/var/lib/tern.salvaged")
        );
        assert_eq!(
            default_target(Path::new("tern-data")),
            Path::new("tern-data.salvaged")
        );
    }

    #[test]
    fn a_line_says_what_was_lost() {
        let t = Tally {
            in_file: Some(2000),
            read: 1963,
            copied: 1950,
            orphaned: 10,
            expired: 3,
            damaged: true,
            ..Tally::default()
        };
        assert_eq!(line(&t), "1950 of 2000 copied, 47 lost, 3 expired");
        let unknown = Tally {
            damaged: true,
            ..Tally::default()
        };
        assert!(line(&unknown).contains("unknown"), "{}", line(&unknown));
    }
}
