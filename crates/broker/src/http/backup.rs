//! `GET /api/v1/backup`: a consistent copy of the data file, made while the
//! broker runs and sent as the answer (what `tern backup DIR` saves).
//!
//! The store copies a snapshot into a new file in a directory of its own
//! inside the data directory (the same disk, writable by the broker), on a
//! blocking thread; the file is opened, its directory removed (the open
//! handle keeps the bytes until the answer is sent, and nothing is left
//! behind if the client goes away), and streamed. What it holds is said in
//! `tern-backup-*` headers, so the receiver can check its copy.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio_util::io::ReaderStream;

use super::Http;
use super::api::ApiError;
use crate::store::{Backup, Store};

/// The headers that say what a backup holds, in the order of [`counts`].
pub const HEADERS: [&str; 6] = [
    "tern-backup-sessions",
    "tern-backup-queued",
    "tern-backup-messages",
    "tern-backup-inbound-qos2",
    "tern-backup-retained",
    "tern-backup-delayed",
];

/// A backup's rows per table, in the order of [`HEADERS`].
pub fn counts(backup: &Backup) -> [u64; 6] {
    [
        backup.sessions,
        backup.queued,
        backup.messages,
        backup.inbound_qos2,
        backup.retained,
        backup.delayed,
    ]
}

pub(super) async fn backup(State(http): State<Arc<Http>>) -> Result<Response, ApiError> {
    let Some(store) = http.state.store.clone() else {
        return Err(ApiError(
            StatusCode::CONFLICT,
            "persistence is off (persistence = false): there is no data file to back up".into(),
        ));
    };
    let dir = scratch_dir(&store);
    let made = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || store.backup(&dir)).await
    };
    let result = match made {
        Ok(Ok(backup)) => open(&dir).await.map(|file| (backup, file)),
        Ok(Err(err)) => Err(err.to_string()),
        Err(err) => Err(format!("the backup task failed: {err}")),
    };
    // Whatever happened, nothing stays behind in the data directory.
    let _ = tokio::fs::remove_dir_all(&dir).await;
    let (backup, file) = result.map_err(|why| {
        tracing::error!(error = %why, "backup failed");
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the backup could not be made: {why}"),
        )
    })?;
    tracing::info!(
        sessions = backup.sessions,
        queued = backup.queued,
        retained = backup.retained,
        bytes = backup.bytes,
        "backup sent"
    );
    let mut response = Body::from_stream(ReaderStream::new(file)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(backup.bytes));
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"tern.redb\""),
    );
    for (name, count) in HEADERS.into_iter().zip(counts(&backup)) {
        headers.insert(HeaderName::from_static(name), HeaderValue::from(count));
    }
    Ok(response)
}

/// A new directory for one backup, beside the data file.
fn scratch_dir(store: &Store) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let data_dir = store.path().parent().unwrap_or(std::path::Path::new("."));
    data_dir.join(format!(".backup-{}-{n}", std::process::id()))
}

/// The backup's file, opened for the answer.
async fn open(dir: &std::path::Path) -> Result<tokio::fs::File, String> {
    let path = dir.join("tern.redb");
    tokio::fs::File::open(&path)
        .await
        .map_err(|err| format!("cannot read {}: {err}", path.display()))
}
