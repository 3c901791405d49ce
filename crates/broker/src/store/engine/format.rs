//! The data format a file is written in, kept in the file itself (the `meta`
//! table), so that a newer tern knows what it is reading and an older one
//! refuses what it cannot read instead of misreading it.
//!
//! The number covers the tables and the records in them. Records carry their
//! own layout byte too (`records.rs`), and a newer tern reads every older
//! layout; a change an older tern would misread or refuse record by record
//! raises [`DATA_FORMAT`], so the refusal is one clear message at open.
//!
//! - 1: files written before the format was recorded (no `meta` table);
//!   session and retained records at layout 1 or 2.
//! - 2: the `meta` table with `format` and `written_by`; otherwise as 1.
//! - 3: the `delayed` table (`$delayed/...` messages not yet published),
//!   which a tern of format 2 would not see, and so lose.
//!
//! An older file is upgraded at open by writing the `meta` table: its
//! records stay as they are and are rewritten in the current layout as they
//! change.

use redb::{Database, ReadableDatabase, TableDefinition, TableError};

use super::open::StoreError;
use std::path::Path;

/// The format this tern writes and the newest it reads.
pub const DATA_FORMAT: u32 = 3;

/// The tern version that writes [`DATA_FORMAT`], recorded beside it so that
/// an older tern can say which version a file needs.
pub(super) const WRITTEN_BY: &str = concat!("tern ", env!("CARGO_PKG_VERSION"));

pub(in crate::store) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const FORMAT_KEY: &str = "format";
const WRITTEN_BY_KEY: &str = "written_by";

/// What the file says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Format {
    /// 0 for a new file (no tables at all), 1 for one without a `meta`
    /// table.
    pub number: u32,
    pub written_by: Option<String>,
}

/// Reads the file's format.
pub(super) fn read(db: &Database) -> Result<Format, redb::Error> {
    let txn = db.begin_read()?;
    let table = match txn.open_table(META) {
        Ok(table) => table,
        Err(TableError::TableDoesNotExist(_)) => {
            let new = txn.list_tables()?.next().is_none();
            return Ok(Format {
                number: if new { 0 } else { 1 },
                written_by: None,
            });
        }
        Err(err) => return Err(err.into()),
    };
    let number = match table.get(FORMAT_KEY)? {
        Some(value) => {
            let bytes: [u8; 4] = value.value().try_into().map_err(|_| {
                redb::Error::Corrupted(format!(
                    "the data format is {} bytes long, not 4",
                    value.value().len()
                ))
            })?;
            u32::from_le_bytes(bytes)
        }
        None => 1,
    };
    let written_by = table
        .get(WRITTEN_BY_KEY)?
        .map(|v| String::from_utf8_lossy(v.value()).into_owned());
    Ok(Format { number, written_by })
}

/// Records `format`, written by the tern named `written_by`, in `txn`.
pub(super) fn write(
    txn: &redb::WriteTransaction,
    format: u32,
    written_by: &str,
) -> Result<(), redb::Error> {
    let mut table = txn.open_table(META)?;
    table.insert(FORMAT_KEY, format.to_le_bytes().as_slice())?;
    table.insert(WRITTEN_BY_KEY, written_by.as_bytes())?;
    Ok(())
}

/// Records the current format, written by this tern, in `txn`.
pub(super) fn write_current(txn: &redb::WriteTransaction) -> Result<(), redb::Error> {
    write(txn, DATA_FORMAT, WRITTEN_BY)
}

/// Checks the file's format at open: a newer one is refused, naming the
/// version that wrote it; an older one (or a new file) gets the current one
/// recorded. Returns the format the file was in.
pub(super) fn check_and_upgrade(db: &Database, path: &Path) -> Result<Format, StoreError> {
    let found = read(db).map_err(|err| StoreError::Damaged {
        path: path.to_path_buf(),
        reason: format!("its data format cannot be read: {err}"),
    })?;
    if found.number > DATA_FORMAT {
        return Err(StoreError::TooNew {
            path: path.to_path_buf(),
            found: found.number,
            written_by: found.written_by.unwrap_or_else(|| "a newer tern".into()),
        });
    }
    if found.number < DATA_FORMAT {
        let upgrade = || -> Result<(), redb::Error> {
            let txn = db.begin_write()?;
            write_current(&txn)?;
            txn.commit()?;
            Ok(())
        };
        upgrade().map_err(|err| StoreError::Other {
            path: path.to_path_buf(),
            reason: format!("cannot record the data format: {err}"),
        })?;
    }
    Ok(found)
}

/// The data format of the (closed) data file in `dir`.
pub fn of(dir: &Path) -> Result<u32, redb::Error> {
    Ok(read(&Database::create(dir.join(super::FILE_NAME))?)?.number)
}

/// Marks the (closed) data file in `dir` as written in `format` by the tern
/// named `written_by`: what a later tern would leave, for the tests of what
/// this one does with it.
pub fn mark(dir: &Path, format: u32, written_by: &str) -> Result<(), redb::Error> {
    let db = Database::create(dir.join(super::FILE_NAME))?;
    let txn = db.begin_write()?;
    write(&txn, format, written_by)?;
    txn.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::engine::tests::{TestDir, open, put_message, reopen};
    use crate::store::engine::{Durability, Engine};

    #[test]
    fn a_new_file_gets_the_current_format() {
        let dir = TestDir::new("format-new");
        reopen(&dir);
        let found = read(&Database::create(dir.file()).unwrap()).unwrap();
        assert_eq!(found.number, DATA_FORMAT);
        assert_eq!(found.written_by.as_deref(), Some(WRITTEN_BY));
    }

    #[test]
    fn a_file_without_a_format_is_upgraded_and_keeps_its_rows() {
        let dir = TestDir::new("format-old");
        let (engine, _) = open(&dir, Durability::Fsync);
        engine.submit(put_message(7, 8));
        engine.close();
        // What a tern before the format was recorded left: no meta table.
        {
            let db = Database::create(dir.file()).unwrap();
            let txn = db.begin_write().unwrap();
            txn.delete_table(META).unwrap();
            txn.commit().unwrap();
            assert_eq!(read(&db).unwrap().number, 1);
        }
        assert_eq!(reopen(&dir).messages.len(), 1);
        assert_eq!(of(&dir.0).unwrap(), DATA_FORMAT);
    }

    #[test]
    fn a_newer_file_is_refused_naming_the_tern_that_wrote_it() {
        let dir = TestDir::new("format-newer");
        let (engine, _) = open(&dir, Durability::Fsync);
        engine.submit(put_message(7, 8));
        engine.close();
        mark(&dir.0, DATA_FORMAT + 1, "tern 9.9.9").unwrap();
        let err = Engine::<Vec<u8>>::open(&dir.0, Durability::Fsync).unwrap_err();
        assert!(matches!(err, StoreError::TooNew { .. }), "{err:?}");
        let message = err.to_string();
        for needed in [
            dir.file().display().to_string(),
            format!("data format {}", DATA_FORMAT + 1),
            "written by tern 9.9.9".into(),
            format!("reads data formats up to {DATA_FORMAT}"),
            "run tern 9.9.9 or newer".into(),
        ] {
            assert!(message.contains(&needed), "{needed:?} not in: {message}");
        }
        // Refused without a change: the newer tern still finds its format.
        assert_eq!(of(&dir.0).unwrap(), DATA_FORMAT + 1);
    }
}
