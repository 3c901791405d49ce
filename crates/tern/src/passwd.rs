//! `tern passwd`: manage a password file, as `mosquitto_passwd` does.
//!
//! ```text
//! tern passwd [-c] FILE USER            prompts twice, without echo
//! tern passwd [-c] -b FILE USER PASSWORD
//! tern passwd -D FILE USER              deletes USER
//! ```
//!
//! Hashes are Mosquitto's `$7$` (PBKDF2-HMAC-SHA512) with
//! [`DEFAULT_ITERATIONS`], so Mosquitto reads the file too. Other lines
//! (other users, comments) are kept as they are. The file is replaced
//! atomically (a temporary file in the same directory, then a rename) and
//! is readable by its owner only (0600).

use std::io::{IsTerminal, Write};
use std::num::NonZeroU32;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use tern_broker::password::{DEFAULT_ITERATIONS, PasswordHash};

/// Arguments of `tern passwd`.
#[derive(clap::Args)]
pub struct PasswdArgs {
    /// Create the file, replacing one that exists.
    #[arg(short = 'c', conflicts_with = "delete")]
    create: bool,
    /// Batch mode: take the password from the command line.
    #[arg(short = 'b', conflicts_with = "delete")]
    batch: bool,
    /// Delete USER from the file.
    #[arg(short = 'D')]
    delete: bool,
    /// PBKDF2 iterations for the new hash (Mosquitto's default is 101).
    #[arg(short = 'I', long, default_value_t = DEFAULT_ITERATIONS)]
    iterations: u32,
    /// The password file.
    file: PathBuf,
    /// The username.
    user: String,
    /// The password (with -b only).
    password: Option<String>,
}

/// Runs `tern passwd`.
pub fn run(args: PasswdArgs) -> anyhow::Result<()> {
    if args.user.is_empty() || args.user.contains(':') || args.user.contains('\n') {
        bail!(
            "invalid username {:?}: it must be non-empty, without ':'",
            args.user
        );
    }
    let iterations =
        NonZeroU32::new(args.iterations).ok_or_else(|| anyhow!("iterations must be at least 1"))?;
    if args.batch != args.password.is_some() {
        bail!(if args.batch {
            "-b needs the password after the username"
        } else {
            "a password on the command line needs -b"
        });
    }
    let mut lines = if args.create {
        Vec::new()
    } else {
        read_lines(&args.file)?
    };
    let position = lines.iter().position(|l| line_user(l) == Some(&args.user));
    if args.delete {
        let Some(i) = position else {
            bail!("user {} not found in {}", args.user, args.file.display());
        };
        lines.remove(i);
    } else {
        let password = match args.password {
            Some(p) => p,
            None => prompt()?,
        };
        let hash = PasswordHash::new(&password, iterations).map_err(|e| anyhow!(e))?;
        let line = format!("{}:{}", args.user, hash.encode());
        match position {
            Some(i) => lines[i] = line,
            None => lines.push(line),
        }
    }
    write_atomically(&args.file, &lines)
}

/// The username of a `user:hash` line (`None` for comments and blanks).
fn line_user(line: &str) -> Option<&str> {
    if line.starts_with('#') {
        return None;
    }
    line.split_once(':').map(|(u, _)| u.trim())
}

fn read_lines(path: &Path) -> anyhow::Result<Vec<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text.lines().map(str::to_owned).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("{} does not exist (use -c to create it)", path.display())
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Asks twice, without echo, on a terminal. From a pipe (as
/// mosquitto_passwd takes it: `printf 'pw\npw\n' | tern passwd FILE USER`)
/// it reads the password from the first line, and if there is a second,
/// checks that it is the same.
fn prompt() -> anyhow::Result<String> {
    let cannot = "cannot read the password";
    let (first, again) = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ").context(cannot)?;
        let again = rpassword::prompt_password("Reenter password: ").context(cannot)?;
        (first, Some(again))
    } else {
        let mut lines = std::io::stdin().lines();
        let first = lines
            .next()
            .transpose()
            .context(cannot)?
            .unwrap_or_default();
        (first, lines.next().transpose().context(cannot)?)
    };
    if again.is_some_and(|again| again != first) {
        bail!("passwords do not match");
    }
    if first.is_empty() {
        bail!("empty password");
    }
    Ok(first)
}

/// Writes a temporary file (0600) next to `path`, then renames it over.
fn write_atomically(path: &Path, lines: &[String]) -> anyhow::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| anyhow!("{} is not a file name", path.display()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        let mut text = lines.join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
