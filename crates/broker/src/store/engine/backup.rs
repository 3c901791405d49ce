//! A consistent copy of the data file while the broker runs (`tern backup`).
//!
//! The file cannot simply be copied: the writer changes it as it is read,
//! and redb reuses freed pages, so a byte copy taken during commits can be
//! torn. Instead the writer thread hands out a read transaction between two
//! commits (a snapshot of everything submitted before the backup was asked
//! for), and this module copies that snapshot's tables, row by row, into a
//! new file on another thread while the writer goes on committing.

use std::path::Path;

use redb::{Database, ReadTransaction, ReadableTable, TableDefinition};

use super::format;
use super::open::{FILE_NAME, StoreError};
use super::tables::{DELAYED, INBOUND, MESSAGES, QUEUE, RETAINED, SESSIONS, open_for_read};

/// Rows per write transaction of the copy: bounds the copy's memory (a
/// transaction keeps its dirty pages until it commits) at a few fsyncs per
/// hundred thousand rows.
const ROWS_PER_COMMIT: usize = 50_000;

/// What a backup holds: rows per table, and the size of the file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backup {
    pub sessions: u64,
    pub queued: u64,
    pub messages: u64,
    pub inbound_qos2: u64,
    pub retained: u64,
    pub delayed: u64,
    pub bytes: u64,
}

/// Copies `snapshot` into a new data file in `dir` (created if missing;
/// an existing data file there is never overwritten).
pub(super) fn copy(snapshot: &ReadTransaction, dir: &Path) -> Result<Backup, StoreError> {
    std::fs::create_dir_all(dir).map_err(|reason| StoreError::CreateDir {
        path: dir.to_path_buf(),
        reason,
    })?;
    let path = dir.join(FILE_NAME);
    if path.exists() {
        return Err(StoreError::Exists { path });
    }
    let failed = |err: redb::Error| StoreError::Other {
        path: path.clone(),
        reason: format!("cannot write the backup: {err}"),
    };
    let to = Database::create(&path).map_err(|err| failed(err.into()))?;
    let first = to.begin_write().map_err(|err| failed(err.into()))?;
    format::write_current(&first).map_err(failed)?;
    first.commit().map_err(|err| failed(err.into()))?;
    let mut backup = Backup {
        sessions: copy_table(snapshot, &to, SESSIONS).map_err(failed)?,
        queued: copy_table(snapshot, &to, QUEUE).map_err(failed)?,
        messages: copy_table(snapshot, &to, MESSAGES).map_err(failed)?,
        inbound_qos2: copy_table(snapshot, &to, INBOUND).map_err(failed)?,
        retained: copy_table(snapshot, &to, RETAINED).map_err(failed)?,
        delayed: copy_table(snapshot, &to, DELAYED).map_err(failed)?,
        bytes: 0,
    };
    drop(to);
    backup.bytes = std::fs::metadata(&path).map_or(0, |m| m.len());
    Ok(backup)
}

/// Copies one table; returns its row count.
fn copy_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    from: &ReadTransaction,
    to: &Database,
    definition: TableDefinition<K, V>,
) -> Result<u64, redb::Error> {
    let Some(table) = open_for_read(from, definition)? else {
        return Ok(0);
    };
    let mut rows = table.iter()?.peekable();
    let mut copied = 0;
    while rows.peek().is_some() {
        let txn = to.begin_write()?;
        {
            let mut out = txn.open_table(definition)?;
            for row in rows.by_ref().take(ROWS_PER_COMMIT) {
                let (key, value) = row?;
                out.insert(key.value(), value.value())?;
                copied += 1;
            }
        }
        txn.commit()?;
    }
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::engine::Durability;
    use crate::store::engine::tests::{TestDir, messages, open, put_message, reopen};

    #[test]
    fn a_backup_taken_during_writes_is_a_whole_prefix_of_them() {
        let dir = TestDir::new("backup-source");
        let (engine, _) = open(&dir, Durability::Os);
        // Enough rows to cross ROWS_PER_COMMIT in the copy.
        const N: u64 = 60_000;
        // Submitted before the backup is asked for: all of it is in it.
        engine.submit_all((0..N).map(|id| put_message(id, 16)));
        // Submitted in id order while the backup runs: some of it is.
        let writer = {
            let engine = engine.clone();
            std::thread::spawn(move || {
                for id in N..2 * N {
                    engine.submit(put_message(id, 16));
                }
            })
        };
        let to = TestDir::new("backup-copy");
        let backup = engine.backup(&to.0).expect("backup");
        writer.join().unwrap();
        engine.close();

        let copied = reopen(&to);
        let n = copied.messages.len() as u64;
        assert_eq!(backup.messages, n);
        assert!(n >= N, "the first {N}, submitted before, are in it: {n}");
        // A consistent snapshot: the writes up to some point, and none after.
        assert_eq!(copied.messages, messages(0..n, 16));
        assert_eq!(backup.bytes, std::fs::metadata(to.file()).unwrap().len());
        // The source is intact and whole.
        assert_eq!(reopen(&dir).messages, messages(0..2 * N, 16));
    }

    #[test]
    fn a_backup_never_overwrites_a_data_file_and_needs_an_open_store() {
        let dir = TestDir::new("backup-exists");
        let (engine, _) = open(&dir, Durability::Os);
        let err = engine.backup(&dir.0).unwrap_err();
        assert!(matches!(err, StoreError::Exists { .. }), "{err:?}");
        engine.close();
        let to = TestDir::new("backup-closed");
        let err = engine.backup(&to.0).unwrap_err();
        assert!(err.to_string().contains("shutting down"), "{err}");
    }
}
