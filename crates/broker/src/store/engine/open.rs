//! Opening the data file: redb's settings, the integrity check, telling a
//! crash apart from damage, and a [`StoreError`] for the operator when the
//! file cannot be used. Separate from the engine's running parts because
//! all of it happens once, before the writer thread exists, except
//! [`Opener::open`], which the writer calls again after a failed write.
//!
//! # Damaged files
//!
//! Every open runs redb's integrity check (`set_check_integrity_on_open`):
//! every page of the committed trees is checksummed before anything is read,
//! so a damaged file is an error rather than a panic or garbage records
//! (without the check, redb 4.6 panics while iterating a table whose page was
//! overwritten). What redb 4.6 does, measured by the tests below:
//! - **Truncated** (e.g. to half its size): refused, "File truncated below
//!   stored layout" after a clean close, "File length does not correspond to a
//!   valid region layout" after a crash → [`StoreError::Damaged`].
//! - **Garbage in the middle**: if the bytes land on a page of the committed
//!   trees, refused ("Primary is corrupted despite 2-phase commit" after a
//!   clean close; "All roots are corrupted" after a crash) → `Damaged`. On a
//!   free page they are harmless and the open succeeds with all data. After a
//!   crash (file not closed cleanly) redb falls back to the previous commit
//!   when only the last one fails its checksums: that is the torn commit of a
//!   power cut, which was never reported durable; it is logged and
//!   `repaired` is set. (A disk that corrupts the last commit of a crashed
//!   file cannot be told apart from that.)
//! - **Not a redb file** (e.g. 4 KB of 0xAB): refused, "Not a redb database:
//!   magic number mismatch" → [`StoreError::NotADataFile`].
//!
//! A crash (kill -9, power loss) leaves the file marked open; the next open
//! repairs it (rebuilds the allocator state; nothing durable is lost) and
//! reports `Recovered::repaired`. So an open either fails with a message
//! naming the file or returns everything that was durable: never a panic,
//! never silently less. As a last guard, a panic inside redb during open is
//! caught and reported as `Damaged`. What is still readable in a damaged
//! file can be copied into a new one by `tern store salvage` (see
//! [`crate::store::salvage`]). A zero-length file is taken as new, with a
//! warning. (In `Os` mode a power cut may lose the commits since the last
//! fsync, or damage the file so it is refused: that is the mode's documented
//! trade.)

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use redb::backends::FileBackend;
use redb::{Builder, Database, DatabaseError, RepairSession};

use super::Durability;
use super::backend::{Backend, Hooks};
use super::format::{self, DATA_FORMAT};
use super::tables::{Recovered, recover};

/// The file's name inside the data directory.
pub(in crate::store) const FILE_NAME: &str = "tern.redb";

/// redb's page cache. Why not redb's default (1 GiB): the broker reads the
/// file once, at open; afterwards the cache only serves the B-tree pages that
/// writes touch, and memory is better spent on sessions. 16 MiB: durable
/// QoS 1 (scripts/bench-persistence.sh) ran as fast as with 64 MiB, which a
/// million retained messages filled (67 bytes each, for nothing).
const CACHE_BYTES: usize = 16 * 1024 * 1024;

/// redb's magic number, the first 9 bytes of its files (redb's design doc,
/// "Database layout"; also in redb's `header.rs`).
pub(in crate::store) const REDB_MAGIC: [u8; 9] =
    [b'r', b'e', b'd', b'b', 0x1A, 0x0A, 0xA9, 0x0D, 0x0A];
/// The "god byte" that follows the magic number, and its flag that redb sets
/// while a writer has the file open and clears on a clean close. redb does
/// not say whether an open repaired the file when the integrity check runs
/// on every open (its repair callback then always fires), so this flag,
/// read before the open, is how `Recovered::repaired` knows the file was not
/// closed cleanly. The crash test checks it, so a format change fails a test.
pub(in crate::store) const REDB_GOD_BYTE: usize = 9;
pub(in crate::store) const REDB_RECOVERY_REQUIRED: u8 = 2;

/// Why the store could not open. Every message names the file (or
/// directory) and says what to do, because it ends up in front of an
/// operator whose broker did not start. The operating system's reason is
/// part of the message and not also a `source()`, so a printer that follows
/// the chain (anyhow's `{:#}`) says it once.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The data directory is missing and cannot be created.
    #[error(
        "cannot create data directory {}: {reason}; point data_dir (or --data-dir) at a directory tern may create and write",
        .path.display()
    )]
    CreateDir { path: PathBuf, reason: io::Error },
    /// Another process, or another open in this one, holds the file's lock.
    #[error(
        "data file {} is in use by another process (is another tern running with this data directory?)",
        .path.display()
    )]
    InUse { path: PathBuf },
    /// The file fails its checksums or its layout, and redb could not fall
    /// back to an intact commit.
    #[error(
        "data file {} is damaged and could not be repaired: {reason}; with tern stopped, `tern store salvage {}` copies what is still readable into a new data directory (or move the file away to start empty, or restore a backup)",
        .path.display(),
        .path.parent().unwrap_or(Path::new(".")).display()
    )]
    Damaged { path: PathBuf, reason: String },
    /// The file exists but is not a redb file at all.
    #[error(
        "data file {} is not a tern data file ({reason}); move it away to start empty, or point the data directory elsewhere",
        .path.display()
    )]
    NotADataFile { path: PathBuf, reason: String },
    /// The file is redb, but of a format or table layout this build cannot read.
    #[error(
        "data file {} was written in a format this tern cannot read ({reason}); run the tern that wrote it, or move the file away to start empty",
        .path.display()
    )]
    Incompatible { path: PathBuf, reason: String },
    /// The file was written by a newer tern, in a data format this one
    /// cannot read.
    #[error(
        "data file {} is in data format {found}, written by {written_by}; this tern ({}) reads data formats up to {}: run {written_by} or newer with this data directory, or give this one another (empty, or a backup it made)",
        .path.display(),
        super::format::WRITTEN_BY,
        super::format::DATA_FORMAT
    )]
    TooNew {
        path: PathBuf,
        found: u32,
        written_by: String,
    },
    /// The operating system refused to open, read or write the file.
    #[error(
        "cannot open data file {}: {reason}; check that the data directory is writable and the disk is not full",
        .path.display()
    )]
    Io { path: PathBuf, reason: io::Error },
    /// Salvage was asked to write where a data file already is.
    #[error(
        "{} already exists: salvage writes a new data file and never overwrites one; name an empty directory with --to, or move that file away",
        .path.display()
    )]
    Exists { path: PathBuf },
    /// Anything else redb reported while opening.
    #[error("cannot open data file {}: {reason}", .path.display())]
    Other { path: PathBuf, reason: String },
    /// The writer thread could not be started.
    #[error("cannot start the writer thread for data file {}: {reason}", .path.display())]
    Thread { path: PathBuf, reason: io::Error },
}

/// Creates `dir` if missing, opens (or creates) the file in it with the
/// integrity check, and reads everything. Every failure becomes a
/// [`StoreError`] naming the file; a crash or a rolled-back commit is
/// logged and reported in [`Recovered::repaired`]. Returns the [`Opener`]
/// too, for the writer's reopens.
pub(super) fn open_file(
    dir: &Path,
    durability: Durability,
    hooks: Hooks,
) -> Result<(Opener, Database, Recovered), StoreError> {
    std::fs::create_dir_all(dir).map_err(|reason| StoreError::CreateDir {
        path: dir.to_path_buf(),
        reason,
    })?;
    let path = dir.join(FILE_NAME);
    let opener = Opener {
        path: path.clone(),
        sync: Arc::new(AtomicBool::new(durability == Durability::Fsync)),
        hooks,
    };

    if std::fs::metadata(&path).is_ok_and(|m| m.len() == 0) {
        tracing::warn!(
            file = %path.display(),
            "the data file is empty (zero bytes): starting with no stored sessions or retained messages; if it held data, stop tern and restore it from a backup"
        );
    }
    let left_open = left_open(&path);
    let fell_back = Arc::new(AtomicBool::new(false));
    let opened = catch_unwind(AssertUnwindSafe(|| {
        let db = opener
            .open(Some(fell_back.clone()))
            .map_err(redb::Error::from)?;
        // The format first: a newer file is refused before its records
        // are read (they may not mean what this tern thinks).
        let found = match format::check_and_upgrade(&db, &path) {
            Ok(found) => found,
            Err(err) => return Ok(Err(err)),
        };
        if (1..DATA_FORMAT).contains(&found.number) {
            tracing::info!(
                file = %path.display(),
                "data file upgraded from data format {} to {DATA_FORMAT}",
                found.number
            );
        }
        let recovered = recover(&db)?;
        Ok::<_, redb::Error>(Ok((db, recovered)))
    }));
    let (db, mut recovered) = match opened {
        Ok(Ok(Ok(opened))) => opened,
        Ok(Ok(Err(too_new))) => return Err(too_new),
        Ok(Err(err)) => return Err(classify(&path, err)),
        Err(panic) => {
            return Err(StoreError::Damaged {
                path,
                reason: format!("redb panicked reading it: {}", panic_message(&*panic)),
            });
        }
    };
    recovered.repaired = left_open || fell_back.load(Ordering::Relaxed);
    if fell_back.load(Ordering::Relaxed) {
        tracing::warn!(
            file = %path.display(),
            "the data file's last transaction was incomplete (interrupted by a crash or power cut) and was rolled back to the one before"
        );
    }
    if recovered.repaired {
        tracing::warn!(file = %path.display(), "the data file was not closed cleanly and has been repaired");
    }
    Ok((opener, db, recovered))
}

/// Whether the file's header says a writer had it open and never closed it
/// (a crash). False for a missing, short or foreign file: redb judges those.
fn left_open(path: &Path) -> bool {
    let mut header = [0u8; REDB_GOD_BYTE + 1];
    let Ok(mut file) = File::open(path) else {
        return false;
    };
    if file.read_exact(&mut header).is_err() {
        return false;
    }
    header[..REDB_GOD_BYTE] == REDB_MAGIC && header[REDB_GOD_BYTE] & REDB_RECOVERY_REQUIRED != 0
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_owned()
    }
}

/// Turns a redb error at open into a message for the operator.
fn classify(path: &Path, err: redb::Error) -> StoreError {
    let path = path.to_path_buf();
    match err {
        redb::Error::DatabaseAlreadyOpen | redb::Error::LockProtocolMismatch => {
            StoreError::InUse { path }
        }
        redb::Error::Io(source) if source.kind() == io::ErrorKind::InvalidData => {
            StoreError::NotADataFile {
                path,
                reason: source.to_string(),
            }
        }
        redb::Error::Io(reason) => StoreError::Io { path, reason },
        redb::Error::Corrupted(_) | redb::Error::RepairAborted => StoreError::Damaged {
            path,
            reason: err.to_string(),
        },
        redb::Error::UpgradeRequired(_)
        | redb::Error::TableTypeMismatch { .. }
        | redb::Error::TableIsMultimap(_)
        | redb::Error::TableIsNotMultimap(_)
        | redb::Error::TypeDefinitionChanged { .. } => StoreError::Incompatible {
            path,
            reason: err.to_string(),
        },
        other => StoreError::Other {
            path,
            reason: other.to_string(),
        },
    }
}

/// Opens the file with the engine's settings; used at open and again by the
/// writer after a failed write (redb refuses further writes on a handle that
/// saw an I/O error, so a retry needs a fresh one).
pub(super) struct Opener {
    pub(super) path: PathBuf,
    /// Whether the backend really fsyncs. False in `Os`/`None` mode until
    /// the final close.
    pub(super) sync: Arc<AtomicBool>,
    hooks: Hooks,
}

impl Opener {
    /// `fell_back` is set if redb had to discard the last commit (its
    /// checksums failed) and use the one before.
    pub(super) fn open(
        &self,
        fell_back: Option<Arc<AtomicBool>>,
    ) -> Result<Database, DatabaseError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.path)?;
        let backend = Backend {
            file: FileBackend::new(file)?,
            sync: self.sync.clone(),
            hooks: self.hooks.clone(),
        };
        let mut builder = Builder::new();
        builder
            .set_check_integrity_on_open(true)
            .set_cache_size(CACHE_BYTES);
        if let Some(fell_back) = fell_back {
            // redb reports repair progress 0.3 only when the last commit
            // failed verification and it falls back to the previous one
            // (`Database::do_repair`). Best effort: it only adds a log line.
            builder.set_repair_callback(move |session: &mut RepairSession| {
                let progress = session.progress();
                if progress > 0.2 && progress < 0.4 {
                    fell_back.store(true, Ordering::Relaxed);
                }
            });
        }
        builder.create_with_backend(backend)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::engine::Engine;
    use crate::store::engine::tests::{TestDir, crash_copy, messages, open, put_message, reopen};

    #[test]
    fn file_in_use_is_refused_with_its_name() {
        let dir = TestDir::new("in-use");
        let (engine, _) = open(&dir, Durability::Fsync);
        let err = Engine::<Vec<u8>>::open(&dir.0, Durability::Fsync).unwrap_err();
        assert!(matches!(err, StoreError::InUse { .. }), "{err:?}");
        let message = err.to_string();
        assert!(
            message.contains(&dir.file().display().to_string()),
            "{message}"
        );
        assert!(message.contains("in use by another process"), "{message}");
        engine.close();
        // Released on close.
        reopen(&dir);
    }

    #[test]
    fn unwritable_data_directory_is_named() {
        let dir = TestDir::new("not-a-dir");
        std::fs::write(&dir.0, b"a file where the directory should be").unwrap();
        let err = Engine::<Vec<u8>>::open(&dir.0, Durability::Fsync).unwrap_err();
        assert!(matches!(err, StoreError::CreateDir { .. }), "{err:?}");
        assert!(err.to_string().contains(&dir.0.display().to_string()));
        let _ = std::fs::remove_file(&dir.0);
    }

    #[test]
    fn a_crashed_file_is_repaired_with_nothing_durable_lost() {
        let dir = TestDir::new("crash-src");
        let crashed = TestDir::new("crash");
        let (engine, _) = open(&dir, Durability::Fsync);
        for id in 0..500 {
            engine.submit(put_message(id, 50));
        }
        crash_copy(&engine, &crashed);
        engine.close();
        assert!(left_open(&crashed.file()), "redb's flag for an open file");
        assert!(!left_open(&dir.file()));

        let (engine, recovered) = open(&crashed, Durability::Fsync);
        assert!(recovered.repaired);
        assert_eq!(recovered.messages, messages(0..500, 50));
        engine.submit(put_message(500, 50));
        engine.close();
        let recovered = reopen(&crashed);
        assert!(!recovered.repaired);
        assert_eq!(recovered.messages, messages(0..=500, 50));
    }

    /// A file with 2,000 100-byte messages written in 20 transactions;
    /// returns what it holds. If `crashed`, the file is a crash copy.
    fn damaged_case(name: &str, crashed: bool) -> (TestDir, Vec<(u64, Vec<u8>)>) {
        let src = TestDir::new(&format!("{name}-src"));
        let dir = TestDir::new(name);
        let (engine, _) = open(&src, Durability::Os);
        for batch in 0..20u64 {
            engine.submit_all((batch * 100..(batch + 1) * 100).map(|id| put_message(id, 100)));
            engine.flush();
        }
        if crashed {
            crash_copy(&engine, &dir);
            engine.close();
        } else {
            engine.close();
            std::fs::create_dir_all(&dir.0).unwrap();
            std::fs::copy(src.file(), dir.file()).unwrap();
        }
        (dir, messages(0..2000, 100))
    }

    /// Opens a damaged file: an error naming the file, or everything.
    fn open_damaged(case: &str, dir: &TestDir, expected: &[(u64, Vec<u8>)]) -> Option<StoreError> {
        match Engine::<Vec<u8>>::open(&dir.0, Durability::Fsync) {
            Err(err) => {
                let message = err.to_string();
                eprintln!("{case}: Err: {message}");
                assert!(
                    message.contains(&dir.file().display().to_string()),
                    "{message}"
                );
                Some(err)
            }
            Ok((engine, recovered)) => {
                eprintln!(
                    "{case}: Ok, {} messages, repaired {}",
                    recovered.messages.len(),
                    recovered.repaired
                );
                assert_eq!(
                    recovered.messages, expected,
                    "{case}: Ok but not everything"
                );
                engine.close();
                None
            }
        }
    }

    fn overwrite_middle(file: &Path) {
        use std::os::unix::fs::FileExt;
        let len = std::fs::metadata(file).unwrap().len();
        let f = OpenOptions::new().write(true).open(file).unwrap();
        // The middle half: certainly pages of the committed trees.
        let garbage: Vec<u8> = (0..len / 2).map(|i| (i * 7 + 3) as u8).collect();
        f.write_all_at(&garbage, len / 4).unwrap();
        f.sync_all().unwrap();
    }

    fn truncate_to_half(file: &Path) {
        let len = std::fs::metadata(file).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(file)
            .unwrap()
            .set_len(len / 2)
            .unwrap();
    }

    #[test]
    fn damaged_file_truncated_to_half() {
        for crashed in [false, true] {
            let case = format!("truncated (crashed {crashed})");
            let (dir, expected) = damaged_case("truncated", crashed);
            truncate_to_half(&dir.file());
            let err = open_damaged(&case, &dir, &expected);
            assert!(
                matches!(err, Some(StoreError::Damaged { .. })),
                "{case}: {err:?}"
            );
        }
    }

    #[test]
    fn damaged_file_with_garbage_in_the_middle() {
        for crashed in [false, true] {
            let case = format!("garbage (crashed {crashed})");
            let (dir, expected) = damaged_case("garbage", crashed);
            overwrite_middle(&dir.file());
            let err = open_damaged(&case, &dir, &expected);
            assert!(
                matches!(err, Some(StoreError::Damaged { .. })),
                "{case}: {err:?}"
            );
        }
    }

    #[test]
    fn damaged_file_that_is_not_redb_at_all() {
        let dir = TestDir::new("not-redb");
        std::fs::create_dir_all(&dir.0).unwrap();
        std::fs::write(dir.file(), vec![0xAB; 4096]).unwrap();
        let err = open_damaged("not redb", &dir, &[]);
        assert!(
            matches!(err, Some(StoreError::NotADataFile { .. })),
            "{err:?}"
        );
        // Left as it was: nothing is overwritten.
        assert_eq!(std::fs::read(dir.file()).unwrap(), vec![0xAB; 4096]);
    }
}
