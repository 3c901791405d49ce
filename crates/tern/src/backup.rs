//! `tern backup DIR`: a consistent copy of a running broker's data file.
//!
//! The broker holds its data file locked while it runs, and a byte copy taken
//! during its commits could be torn, so the copy is made by the broker itself
//! (`GET /api/v1/backup` on its HTTP listener, from a snapshot between two
//! commits) and saved here as DIR/tern.redb. The saved file is then opened
//! as `tern serve` would open it, and its contents counted against what the
//! broker said it sent: a backup that would not restore is reported, not
//! kept.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, Uri, header};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;

use crate::exit::Failure;

/// Arguments of `tern backup`.
#[derive(clap::Args)]
#[command(after_help = "\
Needs the broker's HTTP listener ([http] in its configuration) and a token of
its `tokens` (or an admin user's password). Writes DIR/tern.redb and never
overwrites one. To restore: stop tern, put the file in its data directory
(or start it with --data-dir DIR).

Exit codes:
  0  the backup was written and checked
  1  error (DIR holds a data file, it cannot be written, the check failed)
  2  invalid command line
  3  broker unreachable
  4  refused by the broker (credentials; persistence off)
  7  connection lost during the transfer

Examples:
  tern backup /var/backups/tern/$(date +%F) --token \"$TERN_API_TOKEN\"
  tern backup ./backup --url https://broker.example:8083 --cafile ca.pem -u admin -P secret")]
pub struct BackupArgs {
    /// Directory to write tern.redb into (created if missing).
    dir: PathBuf,
    /// The broker's HTTP listener.
    #[arg(long, default_value = "http://127.0.0.1:8083")]
    url: String,
    /// An API token of the listener's `tokens` [env: TERN_API_TOKEN].
    #[arg(long)]
    token: Option<String>,
    /// An admin user of the password file (`admin_users`), instead of a token.
    #[arg(short, long)]
    username: Option<String>,
    /// That user's password.
    #[arg(short = 'P', long, requires = "username")]
    password: Option<String>,
    /// For an https URL: the PEM file of the CA that signed the listener's
    /// certificate.
    #[arg(long, value_name = "FILE")]
    cafile: Option<PathBuf>,
}

/// What the broker says a backup holds (its `tern-backup-*` headers).
type Counts = [u64; 6];

pub async fn run(args: BackupArgs) -> Result<(), Failure> {
    let target = args.dir.join("tern.redb");
    if target.exists() {
        return Err(Failure::Other(format!(
            "{} already exists: tern backup never overwrites a data file; name a new or empty directory",
            target.display()
        )));
    }
    let started = Instant::now();
    let response = request(&args).await?;
    let expected = expected_counts(&response)?;
    std::fs::create_dir_all(&args.dir)
        .map_err(|e| Failure::Other(format!("cannot create {}: {e}", args.dir.display())))?;
    let partial = args.dir.join("tern.redb.partial");
    let received = save(response, &partial).await;
    let checked = received.and_then(|bytes| {
        std::fs::rename(&partial, &target).map_err(|e| {
            Failure::Other(format!(
                "cannot rename {} to tern.redb: {e}",
                partial.display()
            ))
        })?;
        check(&target, &expected).map(|()| bytes)
    });
    let bytes = match checked {
        Ok(bytes) => bytes,
        Err(failure) => {
            let _ = std::fs::remove_file(&partial);
            let _ = std::fs::remove_file(&target);
            return Err(failure);
        }
    };
    let [sessions, queued, _, _, retained, delayed] = expected;
    println!(
        "backup written to {} in {:.1} s ({} KB): sessions {sessions}, queued deliveries {queued}, retained messages {retained}, delayed messages {delayed}; checked: it opens as tern serve opens it. To restore, start tern with --data-dir {}",
        target.display(),
        started.elapsed().as_secs_f64(),
        bytes.div_ceil(1024),
        args.dir.display()
    );
    Ok(())
}

/// Sends `GET /api/v1/backup`; returns the 200 answer, or what the broker
/// said instead.
async fn request(args: &BackupArgs) -> Result<Response<Incoming>, Failure> {
    let url: Uri = args
        .url
        .parse()
        .map_err(|e| Failure::Usage(format!("--url {}: {e}", args.url)))?;
    let https = match url.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => {
            return Err(Failure::Usage(format!(
                "--url {}: give http://HOST:PORT or https://HOST:PORT",
                args.url
            )));
        }
    };
    let host = url.host().unwrap_or("127.0.0.1").trim_matches(['[', ']']);
    let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tls = match (https, &args.cafile) {
        (true, Some(ca)) => Some(tern_client::TlsOptions::new(ca)),
        (true, None) => {
            return Err(Failure::Usage(
                "an https --url needs --cafile FILE (the CA that signed the listener's certificate)"
                    .into(),
            ));
        }
        (false, _) => None,
    };
    let stream = tern_client::connect(host, port, tls.as_ref())
        .await
        .map_err(|e| Failure::Unreachable(e.to_string()))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| Failure::Unreachable(format!("{}: {e}", args.url)))?;
    tokio::spawn(connection);
    let path = format!("{}/api/v1/backup", url.path().trim_end_matches('/'));
    let request = Request::get(path)
        .header(header::HOST, url.authority().map_or(host, |a| a.as_str()))
        .header(header::AUTHORIZATION, authorization(args)?)
        .body(Empty::<Bytes>::new())
        .map_err(|e| Failure::Usage(format!("--url {}: {e}", args.url)))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| Failure::Lost(format!("{}: {e}", args.url)))?;
    if response.status() == StatusCode::OK {
        return Ok(response);
    }
    Err(refusal(response).await)
}

/// The Authorization header: the token (from --token or TERN_API_TOKEN),
/// or the admin user's Basic credentials.
fn authorization(args: &BackupArgs) -> Result<String, Failure> {
    if let (Some(user), password) = (&args.username, &args.password) {
        let pair = format!("{user}:{}", password.as_deref().unwrap_or(""));
        return Ok(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        ));
    }
    let token = args
        .token
        .clone()
        .or_else(|| std::env::var("TERN_API_TOKEN").ok())
        .ok_or_else(|| {
            Failure::Usage(
                "no credentials: give --token TOKEN (or set TERN_API_TOKEN), or -u USER -P PASSWORD of an admin user"
                    .into(),
            )
        })?;
    Ok(format!("Bearer {token}"))
}

/// The broker's answer when it is not a backup, as one line with a hint.
async fn refusal(response: Response<Incoming>) -> Failure {
    let status = response.status();
    let body = match response.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let said = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_owned());
    let hint = match status {
        StatusCode::UNAUTHORIZED => {
            " (check the token against [http] tokens, or the user against admin_users)"
        }
        StatusCode::NOT_FOUND => " (is --url a tern HTTP listener?)",
        _ => "",
    };
    Failure::Refused(format!("the broker answered {status}: {said}{hint}"))
}

/// The counts the broker sent with the backup.
fn expected_counts(response: &Response<Incoming>) -> Result<Counts, Failure> {
    let mut counts = [0; 6];
    for (count, name) in counts.iter_mut().zip(tern_broker::BACKUP_HEADERS) {
        *count = response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| {
                Failure::Other(format!(
                    "the answer has no {name} header: is this a tern broker's HTTP listener?"
                ))
            })?;
    }
    Ok(counts)
}

/// Writes the answer's body to `path` and syncs it; returns its length.
/// Shows progress on stderr every few seconds for a big file.
async fn save(response: Response<Incoming>, path: &Path) -> Result<u64, Failure> {
    let failed =
        |e: std::io::Error| Failure::Other(format!("cannot write {}: {e}", path.display()));
    let total: Option<u64> = response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let mut file = tokio::fs::File::create(path).await.map_err(failed)?;
    let mut body = response.into_body();
    let mut written = 0u64;
    let mut shown = Instant::now();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Failure::Lost(format!("the backup was cut off: {e}")))?;
        if let Ok(data) = frame.into_data() {
            file.write_all(&data).await.map_err(failed)?;
            written += data.len() as u64;
        }
        if shown.elapsed() >= Duration::from_secs(2) {
            shown = Instant::now();
            match total {
                Some(total) => eprintln!("received {} of {} MB", written >> 20, total >> 20),
                None => eprintln!("received {} MB", written >> 20),
            }
        }
    }
    if total.is_some_and(|total| total != written) {
        return Err(Failure::Lost(format!(
            "the backup was cut off after {written} bytes"
        )));
    }
    file.sync_all().await.map_err(failed)?;
    Ok(written)
}

/// Opens the saved file as `tern serve` would and checks that it holds what
/// the broker said it sent.
fn check(target: &Path, expected: &Counts) -> Result<(), Failure> {
    let dir = target.parent().unwrap_or(Path::new("."));
    let found = tern_broker::verify_backup(dir)
        .map_err(|e| Failure::Other(format!("the backup does not open: {e}")))?;
    let found = tern_broker::backup_counts(&found);
    if &found != expected {
        return Err(Failure::Other(format!(
            "the backup holds {found:?} rows (sessions, queued, messages, QoS 2 ids, retained, delayed), the broker sent {expected:?}"
        )));
    }
    Ok(())
}
