//! The storage engine: a bytes-level persistent store in one redb file,
//! `DIR/tern.redb`.
//!
//! It knows nothing about MQTT. Keys are client ids, message ids, sequence
//! numbers, packet ids and topics; values are opaque records the caller
//! encodes, those of messages and queue entries only when they reach the
//! file (see [`Value`]). The broker submits changes ([`Op`]) without waiting;
//! one background thread ("tern-store") applies them in submission order,
//! many per write transaction, and publishes how far it is durable
//! ([`Engine::durable`], [`Engine::watch`]). While one commit (and its fsync) runs, new submissions
//! pile up and go into the next transaction together: that is the group
//! commit, and it is why a thousand clients waiting for their PUBACK cost a
//! handful of fsyncs, not a thousand.
//!
//! Tickets: every [`Engine::submit`] (and non-empty [`Engine::submit_all`])
//! gets the next number, starting at 1 after each open. Changes are applied in
//! ticket order, so `durable() >= t` means ticket `t` and everything before it
//! is in the file. A failed write is logged and retried; `durable` does not
//! move past changes that are not committed, since acknowledging them would be
//! a lie.
//!
//! Tables: sessions `&str -> &[u8]`, messages `u64 -> &[u8]`,
//! queue `(&str, u64) -> &[u8]`, inbound `(&str, u16) -> ()`,
//! retained `&str -> &[u8]`. Tuple keys sort by client id, then number, so a
//! client's queue or inbound ids are one contiguous range (which is how
//! [`Op::DeleteSession`] removes them without a scan).
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
//! [`super::salvage`]). A zero-length file is taken as new, with a warning. (In `Os` mode a power cut may lose the
//! commits since the last fsync, or damage the file so it is refused: that
//! is the mode's documented trade.)

use bytes::BytesMut;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::ops::Bound;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;
use tern_codec::ByteStr;

use redb::backends::FileBackend;
use redb::{
    BackendError, Builder, Database, DatabaseError, ReadTransaction, ReadableDatabase,
    ReadableTable, ReadableTableMetadata, RepairSession, StorageBackend, Table, TableDefinition,
    TableError, WriteTransaction,
};
use tokio::sync::watch;

pub use crate::config::Durability;

/// The file's name inside the data directory.
pub(super) const FILE_NAME: &str = "tern.redb";

/// Most ops in one write transaction; the rest of a batch goes into the next.
/// Why: a transaction's dirty pages are held in memory until its commit, so
/// an unbounded backlog (a burst while the disk stalled) would be one huge
/// transaction. 64k small ops is a few MB of pages. A group from
/// [`Engine::submit_all`] is never split, whatever its size.
const MAX_TXN_OPS: usize = 65_536;

/// Queue entries whose memory the writer keeps between batches at least
/// (about 300 KB); see `Writer::run` for more.
const KEEP_QUEUE_CAPACITY: usize = 4096;

/// redb's page cache. Why not redb's default (1 GiB): the broker reads the
/// file once, at open; afterwards the cache only serves the B-tree pages that
/// writes touch, and memory is better spent on sessions.
const CACHE_BYTES: usize = 64 * 1024 * 1024;

/// Wait between attempts to write a batch that failed. Long enough not to
/// spin on a full or failing disk, short enough that a transient error costs
/// clients little latency.
const RETRY_BACKOFF: Duration = Duration::from_millis(100);

/// A failed batch is logged on its first attempt and then every this many
/// (every 5 s), so a disk that stays full does not flood the log.
const LOG_EVERY_ATTEMPTS: u32 = 50;

/// Attempts made for a failing batch once [`Engine::close`] was called,
/// before giving up on it (and what follows it): shutdown must end.
const ATTEMPTS_WHILE_CLOSING: u32 = 20;

/// redb's magic number, the first 9 bytes of its files (redb's design doc,
/// "Database layout"; also in redb's `header.rs`).
pub(super) const REDB_MAGIC: [u8; 9] = [b'r', b'e', b'd', b'b', 0x1A, 0x0A, 0xA9, 0x0D, 0x0A];
/// The "god byte" that follows the magic number, and its flag that redb sets
/// while a writer has the file open and clears on a clean close. redb does
/// not say whether an open repaired the file when the integrity check runs
/// on every open (its repair callback then always fires), so this flag,
/// read before the open, is how `Recovered::repaired` knows the file was not
/// closed cleanly. The crash test checks it, so a format change fails a test.
pub(super) const REDB_GOD_BYTE: usize = 9;
pub(super) const REDB_RECOVERY_REQUIRED: u8 = 2;

pub(super) const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
pub(super) const MESSAGES: TableDefinition<u64, &[u8]> = TableDefinition::new("messages");
pub(super) const QUEUE: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("queue");
pub(super) const INBOUND: TableDefinition<(&str, u16), ()> = TableDefinition::new("inbound");
pub(super) const RETAINED: TableDefinition<&str, &[u8]> = TableDefinition::new("retained");

/// The value of a message or queue entry change, turned into bytes by the
/// writer thread when (and only if) its change reaches the file.
///
/// Why lazily: on a busy broker most messages are stored, sent, acknowledged
/// and deleted between two commits, so their changes cancel out within the
/// transaction (see [`superseded`]). Encoding them on the submitting side
/// would allocate, encode and free records that are never written.
pub trait Value: Send + 'static {
    /// The bytes to write, encoded into `buf` if need be. `None` if the value
    /// is no longer wanted: the change is skipped, and the caller promises
    /// that a delete of the same key is submitted (or already was).
    fn bytes<'a>(&'a self, buf: &'a mut BytesMut) -> Option<&'a [u8]>;
}

/// Already encoded.
impl Value for Vec<u8> {
    fn bytes<'a>(&'a self, _: &'a mut BytesMut) -> Option<&'a [u8]> {
        Some(self)
    }
}

/// One change to the store. Applied in submission order. `V` is how message
/// and queue entry values are given (see [`Value`]); sessions and retained
/// messages change rarely and come encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op<V = Vec<u8>> {
    /// Inserts or replaces a session record.
    PutSession { client_id: ByteStr, record: Vec<u8> },
    /// Removes the session record AND every queue and inbound entry of that
    /// client id.
    DeleteSession { client_id: ByteStr },
    /// Inserts or replaces a message record (shared by the queues that
    /// reference its id).
    PutMessage { id: u64, record: V },
    /// Removes a message record.
    DeleteMessage { id: u64 },
    /// Inserts or replaces one entry of a client's delivery queue.
    PutQueue {
        client_id: ByteStr,
        seq: u64,
        entry: V,
        /// The entry is new: no earlier change wrote this key. (A new
        /// entry deleted before it was committed costs nothing at all.)
        new: bool,
    },
    /// Removes one entry of a client's delivery queue.
    DeleteQueue { client_id: ByteStr, seq: u64 },
    /// Records a QoS 2 packet id received from a client and not yet released.
    PutInbound { client_id: ByteStr, packet_id: u16 },
    /// Forgets a QoS 2 packet id (PUBREL received).
    DeleteInbound { client_id: ByteStr, packet_id: u16 },
    /// Inserts or replaces the retained message of a topic.
    PutRetained { topic: ByteStr, record: Vec<u8> },
    /// Removes the retained message of a topic.
    DeleteRetained { topic: ByteStr },
}

/// Everything in the file at open, for the broker to rebuild its state from.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Session records by client id, sorted by client id.
    pub sessions: Vec<(String, Vec<u8>)>,
    /// Sorted by client id, then seq (the order deliveries must be resent in).
    pub queue: Vec<(String, u64, Vec<u8>)>,
    /// Message records by id, sorted by id.
    pub messages: Vec<(u64, Vec<u8>)>,
    /// Unreleased QoS 2 packet ids, sorted by client id, then packet id.
    pub inbound_qos2: Vec<(String, u16)>,
    /// Retained message records by topic, sorted by topic.
    pub retained: Vec<(String, Vec<u8>)>,
    /// The file was not closed cleanly and redb repaired it (nothing that was
    /// durable is lost; log it).
    pub repaired: bool,
}

/// Why the store could not open. Every message names the file (or
/// directory) and says what to do, because it ends up in front of an
/// operator whose broker did not start.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The data directory is missing and cannot be created.
    #[error("cannot create data directory {}: {source}", .path.display())]
    CreateDir { path: PathBuf, source: io::Error },
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
    /// The operating system refused to open, read or write the file.
    #[error(
        "cannot open data file {}: {source}; check that the data directory is writable and the disk is not full",
        .path.display()
    )]
    Io { path: PathBuf, source: io::Error },
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
    #[error("cannot start the writer thread for data file {}: {source}", .path.display())]
    Thread { path: PathBuf, source: io::Error },
}

/// Counters for `$SYS` and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Write transactions committed since open.
    pub commits: u64,
    /// Ops committed since open (`ops / commits` is the group-commit factor).
    pub ops: u64,
    /// Size of the file on disk now (0 if its metadata cannot be read).
    pub file_bytes: u64,
}

/// The persistent store. `Send + Sync`; shared as `Arc<Engine>`. Dropping
/// the last `Arc` closes it, but callers should [`Engine::close`] explicitly
/// so shutdown order does not depend on who drops last.
pub struct Engine<V: Value = Vec<u8>> {
    shared: Arc<Shared<V>>,
    durability: Durability,
    /// The writer thread, until [`Engine::close`] joins it. A mutex so that
    /// a second `close` waits for the first to finish.
    writer: Mutex<Option<JoinHandle<()>>>,
}

/// What the submitting side and the writer thread share.
struct Shared<V> {
    /// The file.
    path: PathBuf,
    state: Mutex<State<V>>,
    /// Wakes the writer: ops were queued, or close was asked.
    work: Condvar,
    /// Wakes `flush` waiters: `durable` advanced, or the writer ended.
    progress: Condvar,
    /// The highest ticket committed. Written under `state`'s lock (so a
    /// `flush` waiter cannot miss the change), read without it.
    durable: AtomicU64,
    /// `durable`, for async waiters. The sender is the writer's, so the
    /// channel closes when the writer thread ends.
    watch: watch::Receiver<u64>,
    commits: AtomicU64,
    ops: AtomicU64,
}

/// The queue between submitters and the writer.
struct State<V> {
    /// Ops not yet taken by the writer, in ticket order. A group from
    /// `submit_all` is consecutive entries with the same ticket.
    pending: Vec<(u64, Op<V>)>,
    /// The last ticket handed out.
    last_ticket: u64,
    /// `close` was called: submissions are refused, the writer drains and exits.
    closing: bool,
    /// The writer thread has ended (normally or not): nothing more will
    /// become durable, so `flush` must not wait.
    writer_gone: bool,
}

impl<V> Shared<V> {
    fn lock_state(&self) -> MutexGuard<'_, State<V>> {
        // Nothing panics while holding this lock; if something ever did, the
        // state is still a consistent queue, so carry on with it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<V: Value> Engine<V> {
    /// Creates DIR if missing, opens or creates DIR/tern.redb, reads
    /// everything into [`Recovered`], starts the writer thread.
    ///
    /// Reads everything at once because the broker rebuilds its whole state
    /// from it before accepting connections; there is no lazy lookup later.
    pub fn open(
        dir: &Path,
        durability: Durability,
    ) -> Result<(Arc<Engine<V>>, Recovered), StoreError> {
        Self::open_with(dir, durability, Hooks::default())
    }

    fn open_with(
        dir: &Path,
        durability: Durability,
        hooks: Hooks,
    ) -> Result<(Arc<Engine<V>>, Recovered), StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            path: dir.to_path_buf(),
            source,
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
            let recovered = recover(&db)?;
            Ok::<_, redb::Error>((db, recovered))
        }));
        let (db, mut recovered) = match opened {
            Ok(Ok(opened)) => opened,
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

        let (durable_tx, watch) = watch::channel(0);
        let shared = Arc::new(Shared {
            path: path.clone(),
            state: Mutex::new(State {
                pending: Vec::new(),
                last_ticket: 0,
                closing: false,
                writer_gone: false,
            }),
            work: Condvar::new(),
            progress: Condvar::new(),
            durable: AtomicU64::new(0),
            watch,
            commits: AtomicU64::new(0),
            ops: AtomicU64::new(0),
        });
        let writer_shared = shared.clone();
        let writer = std::thread::Builder::new()
            .name("tern-store".into())
            .spawn(move || Writer::new(writer_shared, durable_tx, db, opener).run())
            .map_err(|source| StoreError::Thread { path, source })?;
        let engine = Arc::new(Engine {
            shared,
            durability,
            writer: Mutex::new(Some(writer)),
        });
        Ok((engine, recovered))
    }

    /// Queues one change. Returns its ticket: tickets increase by one per
    /// call, and changes are applied in ticket order. Never blocks on I/O (a
    /// short mutex push + condvar notify), so it is fine on an async task.
    ///
    /// After [`Engine::close`] the change is dropped (and logged): its
    /// ticket never becomes durable.
    pub fn submit(&self, op: Op<V>) -> u64 {
        let mut state = self.shared.lock_state();
        state.last_ticket += 1;
        let ticket = state.last_ticket;
        if state.closing {
            drop(state);
            self.refused(1);
            return ticket;
        }
        // The writer only waits on an empty queue: wake it for the first
        // change only (a notify is a futex syscall, too dear per change).
        let wake = state.pending.is_empty();
        state.pending.push((ticket, op));
        drop(state);
        if wake {
            self.shared.work.notify_one();
        }
        ticket
    }

    /// Queues several changes that land in the same transaction (all or
    /// none after a crash). Returns the ticket of the group. An empty
    /// iterator returns the current ticket (the last one handed out), which
    /// is fine to wait on: it is durable once everything before it is.
    ///
    /// The ops are collected before the queue is locked, so the iterator may
    /// do anything (even submit).
    pub fn submit_all(&self, ops: impl IntoIterator<Item = Op<V>>) -> u64 {
        let ops: Vec<Op<V>> = ops.into_iter().collect();
        let mut state = self.shared.lock_state();
        if ops.is_empty() {
            return state.last_ticket;
        }
        state.last_ticket += 1;
        let ticket = state.last_ticket;
        if state.closing {
            drop(state);
            self.refused(ops.len());
            return ticket;
        }
        let wake = state.pending.is_empty();
        state.pending.extend(ops.into_iter().map(|op| (ticket, op)));
        drop(state);
        if wake {
            self.shared.work.notify_one();
        }
        ticket
    }

    fn refused(&self, ops: usize) {
        tracing::warn!(
            file = %self.shared.path.display(),
            ops,
            "store change submitted after close; dropped"
        );
    }

    /// The highest ticket whose change is committed (per the durability mode).
    pub fn durable(&self) -> u64 {
        self.shared.durable.load(Ordering::Acquire)
    }

    /// A watch of [`Engine::durable`], for async waiters:
    /// `watch.wait_for(|d| *d >= ticket).await`. The writer thread sends
    /// with `send_replace`, so no runtime is needed on its side. When the
    /// writer has stopped (after [`Engine::close`]) the channel is closed:
    /// `wait_for` still returns `Ok` for a ticket that was made durable, and
    /// `Err` for one that never will be, instead of waiting forever.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.shared.watch.clone()
    }

    /// Blocks until every change submitted before the call is committed. For
    /// clean shutdown and tests; blocks the thread, so not for async tasks.
    /// Returns early if the writer has stopped (after close, or if it gave up).
    pub fn flush(&self) {
        let mut state = self.shared.lock_state();
        let target = state.last_ticket;
        while self.shared.durable.load(Ordering::Acquire) < target && !state.writer_gone {
            state = self
                .shared
                .progress
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Flushes, stops the writer thread and closes the file. Idempotent;
    /// also done on Drop of the last Arc (don't rely on Drop ordering in
    /// tests: call close). Changes submitted from here on are dropped.
    pub fn close(&self) {
        self.shared.lock_state().closing = true;
        self.shared.work.notify_all();
        let mut writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(handle) = writer.take()
            && handle.join().is_err()
        {
            tracing::error!(file = %self.shared.path.display(), "the store writer thread panicked");
        }
    }

    /// The durability mode the engine was opened with.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// The file (`DIR/tern.redb`), for messages and `$SYS`.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Counters for `$SYS` and benchmarks.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            commits: self.shared.commits.load(Ordering::Relaxed),
            ops: self.shared.ops.load(Ordering::Relaxed),
            file_bytes: std::fs::metadata(&self.shared.path)
                .map(|m| m.len())
                .unwrap_or(0),
        }
    }
}

impl<V: Value> Drop for Engine<V> {
    fn drop(&mut self) {
        self.close();
    }
}

impl<V: Value> std::fmt::Debug for Engine<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("path", &self.shared.path)
            .field("durability", &self.durability)
            .field("durable", &self.durable())
            .finish_non_exhaustive()
    }
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
        redb::Error::Io(source) => StoreError::Io { path, source },
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

/// Reads every table into a [`Recovered`] (`repaired` is set by the caller).
fn recover(db: &Database) -> Result<Recovered, redb::Error> {
    let txn = db.begin_read()?;
    let mut recovered = Recovered::default();
    if let Some(table) = open_for_read(&txn, SESSIONS)? {
        recovered.sessions.reserve(table_len(&table)?);
        for row in table.iter()? {
            let (key, value) = row?;
            recovered
                .sessions
                .push((key.value().to_owned(), value.value().to_vec()));
        }
    }
    if let Some(table) = open_for_read(&txn, QUEUE)? {
        recovered.queue.reserve(table_len(&table)?);
        for row in table.iter()? {
            let (key, value) = row?;
            let (client_id, seq) = key.value();
            recovered
                .queue
                .push((client_id.to_owned(), seq, value.value().to_vec()));
        }
    }
    if let Some(table) = open_for_read(&txn, MESSAGES)? {
        recovered.messages.reserve(table_len(&table)?);
        for row in table.iter()? {
            let (key, value) = row?;
            recovered
                .messages
                .push((key.value(), value.value().to_vec()));
        }
    }
    if let Some(table) = open_for_read(&txn, INBOUND)? {
        recovered.inbound_qos2.reserve(table_len(&table)?);
        for row in table.iter()? {
            let (key, _) = row?;
            let (client_id, packet_id) = key.value();
            recovered
                .inbound_qos2
                .push((client_id.to_owned(), packet_id));
        }
    }
    if let Some(table) = open_for_read(&txn, RETAINED)? {
        recovered.retained.reserve(table_len(&table)?);
        for row in table.iter()? {
            let (key, value) = row?;
            recovered
                .retained
                .push((key.value().to_owned(), value.value().to_vec()));
        }
    }
    Ok(recovered)
}

/// A table for reading, or `None` if nothing was ever written to it (a new
/// file has no tables; creating them would cost a commit at every open).
fn open_for_read<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &ReadTransaction,
    definition: TableDefinition<K, V>,
) -> Result<Option<redb::ReadOnlyTable<K, V>>, TableError> {
    match txn.open_table(definition) {
        Ok(table) => Ok(Some(table)),
        Err(TableError::TableDoesNotExist(_)) => Ok(None),
        Err(err) => Err(err),
    }
}

/// A table's row count as a capacity hint (capped: the count is only a
/// hint, and a damaged count must not turn into a huge allocation).
fn table_len(table: &impl ReadableTableMetadata) -> Result<usize, redb::StorageError> {
    Ok(usize::try_from(table.len()?)
        .unwrap_or(usize::MAX)
        .min(1 << 20))
}

/// Opens the file with the engine's settings; used at open and again by the
/// writer after a failed write (redb refuses further writes on a handle that
/// saw an I/O error, so a retry needs a fresh one).
struct Opener {
    path: PathBuf,
    /// Whether the backend really fsyncs. False in `Os`/`None` mode until
    /// the final close.
    sync: Arc<AtomicBool>,
    hooks: Hooks,
}

impl Opener {
    /// `fell_back` is set if redb had to discard the last commit (its
    /// checksums failed) and use the one before.
    fn open(&self, fell_back: Option<Arc<AtomicBool>>) -> Result<Database, DatabaseError> {
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

/// redb's file backend, with fsync switchable: on in `Fsync` mode (so it is
/// exactly redb's own file backend), off in `Os`/`None` mode, where commits
/// reach the page cache and the kernel writes them back when it likes. All
/// locking is redb's own, so a second open still finds the file in use.
#[derive(Debug)]
struct Backend {
    file: FileBackend,
    sync: Arc<AtomicBool>,
    hooks: Hooks,
}

impl StorageBackend for Backend {
    fn len(&self) -> Result<u64, io::Error> {
        self.file.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.file.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.hooks.before_write()?;
        self.file.set_len(len)
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        if self.sync.load(Ordering::Acquire) {
            self.hooks.before_write()?;
            self.file.sync_data()
        } else {
            Ok(())
        }
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.hooks.before_write()?;
        self.file.write(offset, data)
    }

    fn close(&self) -> Result<(), io::Error> {
        self.file.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.file.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.query_lock_range(start, end)
    }
}

/// Test hooks into the backend (failure injection); nothing outside tests.
#[derive(Debug, Clone, Default)]
struct Hooks {
    #[cfg(test)]
    faults: Option<Arc<tests::Faults>>,
}

impl Hooks {
    #[cfg(test)]
    fn before_write(&self) -> Result<(), io::Error> {
        match &self.faults {
            Some(faults) => faults.check(),
            None => Ok(()),
        }
    }

    #[cfg(not(test))]
    #[inline(always)]
    fn before_write(&self) -> Result<(), io::Error> {
        Ok(())
    }
}

/// The writer thread's state.
struct Writer<V> {
    shared: Arc<Shared<V>>,
    /// Sends `durable` to [`Engine::watch`]ers; dropped with the thread.
    durable_tx: watch::Sender<u64>,
    /// `None` after a failed write, until a retry reopens it.
    db: Option<Database>,
    opener: Opener,
    /// Where values are encoded, one at a time (see [`Value`]).
    buf: BytesMut,
}

/// Marks the writer gone when the thread ends, even by a panic, so that
/// `flush` never waits for a thread that is not there.
struct GoneOnDrop<V>(Arc<Shared<V>>);

impl<V> Drop for GoneOnDrop<V> {
    fn drop(&mut self) {
        self.0.lock_state().writer_gone = true;
        self.0.progress.notify_all();
    }
}

impl<V: Value> Writer<V> {
    fn new(
        shared: Arc<Shared<V>>,
        durable_tx: watch::Sender<u64>,
        db: Database,
        opener: Opener,
    ) -> Self {
        Writer {
            shared,
            durable_tx,
            db: Some(db),
            opener,
            buf: BytesMut::new(),
        }
    }

    fn run(mut self) {
        let _gone = GoneOnDrop(self.shared.clone());
        // Swapped with `pending`, so both Vecs keep their capacity.
        let mut batch: Vec<(u64, Op<V>)> = Vec::new();
        loop {
            {
                let mut state = self.shared.lock_state();
                while state.pending.is_empty() && !state.closing {
                    state = self
                        .shared
                        .work
                        .wait(state)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                if state.pending.is_empty() {
                    break; // closing, and everything is written
                }
                std::mem::swap(&mut state.pending, &mut batch);
            }
            let written = self.write_batch(&batch);
            // Room for twice this batch: under steady load the submitters
            // then push without growing the queue while they hold its lock,
            // and a burst's memory is given back once batches are small.
            let keep = KEEP_QUEUE_CAPACITY.max(2 * batch.len());
            batch.clear();
            batch.shrink_to(keep);
            if !written {
                break;
            }
        }
        self.close_db();
    }

    /// Applies `batch` in transactions of at most `MAX_TXN_OPS` ops (never
    /// splitting a ticket), publishing each. Returns false if it gave up
    /// (only while closing); the thread then ends without writing the rest.
    fn write_batch(&mut self, batch: &[(u64, Op<V>)]) -> bool {
        let mut start = 0;
        while start < batch.len() {
            let end = chunk_end(batch, start);
            let chunk = &batch[start..end];
            let mut attempt = 0u32;
            loop {
                match self.try_write(chunk) {
                    Ok(()) => break,
                    Err(err) => {
                        attempt += 1;
                        // Drop the handle: after an I/O error redb refuses
                        // every further write on it. Retrying the whole chunk
                        // is safe even if the failed commit did land: every op
                        // is a put or delete by key, so applying the same
                        // sequence twice ends in the same state.
                        self.db = None;
                        let closing = self.shared.lock_state().closing;
                        if closing && attempt >= ATTEMPTS_WHILE_CLOSING {
                            let lost = batch.len() - start;
                            let lost_pending =
                                std::mem::take(&mut self.shared.lock_state().pending);
                            tracing::error!(
                                file = %self.shared.path.display(),
                                error = %err,
                                lost = lost + lost_pending.len(),
                                "cannot write to the data file while shutting down; giving up, the unwritten changes are lost"
                            );
                            return false;
                        }
                        if attempt == 1 || attempt.is_multiple_of(LOG_EVERY_ATTEMPTS) {
                            tracing::error!(
                                file = %self.shared.path.display(),
                                error = %err,
                                attempt,
                                ops = chunk.len(),
                                "cannot write to the data file; retrying (the changes stay unacknowledged)"
                            );
                        }
                        std::thread::sleep(RETRY_BACKOFF);
                    }
                }
            }
            if let Some(&(ticket, _)) = chunk.last() {
                self.publish(ticket, chunk.len());
            }
            start = end;
        }
        true
    }

    /// Records that `ticket` (and all before it) is committed, after a
    /// transaction of `ops` ops, and wakes whoever waits for it.
    fn publish(&self, ticket: u64, ops: usize) {
        let shared = &self.shared;
        shared.commits.fetch_add(1, Ordering::Relaxed);
        shared.ops.fetch_add(ops as u64, Ordering::Relaxed);
        {
            let _state = shared.lock_state();
            shared.durable.store(ticket, Ordering::Release);
        }
        shared.progress.notify_all();
        self.durable_tx.send_replace(ticket);
    }

    /// One write transaction for `chunk`, reopening the file first if the
    /// last attempt failed.
    fn try_write(&mut self, chunk: &[(u64, Op<V>)]) -> Result<(), redb::Error> {
        let db = match self.db.take() {
            Some(db) => db,
            None => self.opener.open(None)?,
        };
        let db = self.db.insert(db);
        let txn = db.begin_write()?;
        {
            let mut tables = Tables::new(&txn);
            let superseded = superseded(chunk);
            for ((_, op), skip) in chunk.iter().zip(superseded) {
                if !skip {
                    tables.apply(op, &mut self.buf)?;
                }
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Closes the file cleanly. In `Os` mode fsync is switched on first, so
    /// that a broker that stopped cleanly has its file on disk.
    fn close_db(&mut self) {
        self.opener.sync.store(true, Ordering::Release);
        if let Some(db) = self.db.take()
            && let Err(err) = db.close()
        {
            tracing::error!(file = %self.shared.path.display(), error = %err, "cannot close the data file cleanly; it will be repaired at the next start");
        }
    }
}

/// The key an op writes, for coalescing. Hashed by its numeric part where
/// it has one (ids and seqs are nearly unique on their own), compared whole.
#[derive(PartialEq, Eq)]
enum Key<'a> {
    Session(&'a str),
    Message(u64),
    Queue(&'a str, u64),
    Inbound(&'a str, u16),
    Retained(&'a str),
}

impl std::hash::Hash for Key<'_> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        match self {
            Key::Session(id) | Key::Retained(id) => id.hash(state),
            Key::Message(n) | Key::Queue(_, n) => n.hash(state),
            Key::Inbound(id, n) => (id, n).hash(state),
        }
    }
}

fn key<V>(op: &Op<V>) -> Option<Key<'_>> {
    Some(match op {
        Op::PutSession { client_id, .. } => Key::Session(client_id),
        Op::DeleteSession { .. } => return None,
        Op::PutMessage { id, .. } | Op::DeleteMessage { id } => Key::Message(*id),
        Op::PutQueue { client_id, seq, .. } | Op::DeleteQueue { client_id, seq } => {
            Key::Queue(client_id, *seq)
        }
        Op::PutInbound {
            client_id,
            packet_id,
        }
        | Op::DeleteInbound {
            client_id,
            packet_id,
        } => Key::Inbound(client_id, *packet_id),
        Op::PutRetained { topic, .. } | Op::DeleteRetained { topic } => Key::Retained(topic),
    })
}

/// Which ops of one transaction need not be applied: every op on a key that
/// a later op of the same transaction overwrites or deletes, and all the ops
/// on a key that is created and deleted within the transaction (a new
/// message or queue entry). The commit's result is the same, and this is the
/// common case of a busy broker: a message stored, sent, acknowledged and
/// deleted between two commits costs no write at all. A `DeleteSession` (a
/// range delete) turns this off for its transaction, to keep its order with
/// the ops around it.
fn superseded<V>(chunk: &[(u64, Op<V>)]) -> Vec<bool> {
    let mut skip = vec![false; chunk.len()];
    if chunk
        .iter()
        .any(|(_, op)| matches!(op, Op::DeleteSession { .. }))
    {
        return skip;
    }
    // Per key: whether its first op here creates it, and its last op.
    let mut keys: HashMap<Key<'_>, (bool, usize)> = HashMap::with_capacity(chunk.len());
    for (i, (_, op)) in chunk.iter().enumerate() {
        let Some(key) = key(op) else { continue };
        let creates = matches!(op, Op::PutMessage { .. } | Op::PutQueue { new: true, .. });
        match keys.entry(key) {
            Entry::Occupied(mut seen) => {
                skip[seen.get().1] = true;
                seen.get_mut().1 = i;
            }
            Entry::Vacant(slot) => {
                slot.insert((creates, i));
            }
        }
    }
    for (created, last) in keys.into_values() {
        let deleted = matches!(
            chunk[last].1,
            Op::DeleteMessage { .. } | Op::DeleteQueue { .. }
        );
        if created && deleted {
            skip[last] = true;
        }
    }
    skip
}

/// End of the transaction that starts at `start`: `MAX_TXN_OPS` ops, then
/// on to the end of the ticket that is cut, so a group stays whole.
fn chunk_end<V>(batch: &[(u64, Op<V>)], start: usize) -> usize {
    let mut end = start.saturating_add(MAX_TXN_OPS).min(batch.len());
    while end < batch.len() && batch[end].0 == batch[end - 1].0 {
        end += 1;
    }
    end
}

/// The tables of one write transaction, opened on first use (a batch of
/// queue ops alone does not open the other four).
struct Tables<'t> {
    txn: &'t WriteTransaction,
    sessions: Option<Table<'t, &'static str, &'static [u8]>>,
    messages: Option<Table<'t, u64, &'static [u8]>>,
    queue: Option<Table<'t, (&'static str, u64), &'static [u8]>>,
    inbound: Option<Table<'t, (&'static str, u16), ()>>,
    retained: Option<Table<'t, &'static str, &'static [u8]>>,
}

/// The table in `slot`, opening it in `txn` the first time.
fn table<'s, 't, K: redb::Key + 'static, V: redb::Value + 'static>(
    slot: &'s mut Option<Table<'t, K, V>>,
    txn: &'t WriteTransaction,
    definition: TableDefinition<K, V>,
) -> Result<&'s mut Table<'t, K, V>, TableError> {
    let table = match slot.take() {
        Some(table) => table,
        None => txn.open_table(definition)?,
    };
    Ok(slot.insert(table))
}

impl<'t> Tables<'t> {
    fn new(txn: &'t WriteTransaction) -> Self {
        Tables {
            txn,
            sessions: None,
            messages: None,
            queue: None,
            inbound: None,
            retained: None,
        }
    }

    /// Applies `op`, encoding its value into `buf` if it has to be.
    fn apply<V: Value>(&mut self, op: &Op<V>, buf: &mut BytesMut) -> Result<(), redb::Error> {
        let txn = self.txn;
        match op {
            Op::PutSession { client_id, record } => {
                table(&mut self.sessions, txn, SESSIONS)?
                    .insert(client_id.as_str(), record.as_slice())?;
            }
            Op::DeleteSession { client_id } => {
                let id = client_id.as_str();
                table(&mut self.sessions, txn, SESSIONS)?.remove(id)?;
                table(&mut self.queue, txn, QUEUE)?
                    .retain_in((id, 0u64)..=(id, u64::MAX), |_, _| false)?;
                table(&mut self.inbound, txn, INBOUND)?
                    .retain_in((id, 0u16)..=(id, u16::MAX), |_, _| false)?;
            }
            Op::PutMessage { id, record } => {
                if let Some(bytes) = record.bytes(buf) {
                    table(&mut self.messages, txn, MESSAGES)?.insert(*id, bytes)?;
                }
            }
            Op::DeleteMessage { id } => {
                table(&mut self.messages, txn, MESSAGES)?.remove(*id)?;
            }
            Op::PutQueue {
                client_id,
                seq,
                entry,
                ..
            } => {
                if let Some(bytes) = entry.bytes(buf) {
                    table(&mut self.queue, txn, QUEUE)?
                        .insert((client_id.as_str(), *seq), bytes)?;
                }
            }
            Op::DeleteQueue { client_id, seq } => {
                table(&mut self.queue, txn, QUEUE)?.remove((client_id.as_str(), *seq))?;
            }
            Op::PutInbound {
                client_id,
                packet_id,
            } => {
                table(&mut self.inbound, txn, INBOUND)?
                    .insert((client_id.as_str(), *packet_id), ())?;
            }
            Op::DeleteInbound {
                client_id,
                packet_id,
            } => {
                table(&mut self.inbound, txn, INBOUND)?.remove((client_id.as_str(), *packet_id))?;
            }
            Op::PutRetained { topic, record } => {
                table(&mut self.retained, txn, RETAINED)?
                    .insert(topic.as_str(), record.as_slice())?;
            }
            Op::DeleteRetained { topic } => {
                table(&mut self.retained, txn, RETAINED)?.remove(topic.as_str())?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Failure injection for the backend: while `fail` is set, every write,
    /// set_len and fsync fails; `wait_failures` blocks until that happened.
    #[derive(Debug, Default)]
    pub(super) struct Faults {
        fail: AtomicBool,
        failures: Mutex<u64>,
        failed: Condvar,
    }

    impl Faults {
        pub(super) fn check(&self) -> Result<(), io::Error> {
            if !self.fail.load(Ordering::SeqCst) {
                return Ok(());
            }
            *self.failures.lock().unwrap() += 1;
            self.failed.notify_all();
            Err(io::Error::other("injected write failure"))
        }

        fn wait_failures(&self, n: u64) {
            let mut failures = self.failures.lock().unwrap();
            while *failures < n {
                failures = self.failed.wait(failures).unwrap();
            }
        }
    }

    /// A directory under the system temp dir, removed on drop.
    pub(in crate::store) struct TestDir(pub(in crate::store) PathBuf);

    impl TestDir {
        pub(in crate::store) fn new(name: &str) -> TestDir {
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path =
                std::env::temp_dir().join(format!("tern-store-{}-{n}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            TestDir(path)
        }

        pub(in crate::store) fn file(&self) -> PathBuf {
            self.0.join(FILE_NAME)
        }
    }

    impl Drop for TestDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn open(dir: &TestDir, durability: Durability) -> (Arc<Engine>, Recovered) {
        match Engine::open(&dir.0, durability) {
            Ok(opened) => opened,
            Err(err) => panic!("open {}: {err}", dir.0.display()),
        }
    }

    fn reopen(dir: &TestDir) -> Recovered {
        let (engine, recovered) = open(dir, Durability::Fsync);
        engine.close();
        recovered
    }

    /// Within one transaction only the last op on each key is applied, and
    /// nothing at all for a key created and deleted in it; a range delete of
    /// a session turns that off.
    #[test]
    fn superseded_ops_are_skipped_within_a_transaction() {
        let queue = |seq, new| Op::PutQueue {
            client_id: n("c"),
            seq,
            entry: vec![1],
            new,
        };
        let message = |id| Op::PutMessage {
            id,
            record: vec![1],
        };
        let delete = |seq| Op::DeleteQueue {
            client_id: n("c"),
            seq,
        };
        let chunk: Vec<(u64, Op)> = vec![
            (1, message(1)),
            (2, queue(7, true)),
            (3, queue(7, false)),
            (4, message(2)),
            (5, delete(7)),
            (6, Op::DeleteMessage { id: 1 }),
            // Written by an earlier transaction: its delete must be applied.
            (7, queue(3, false)),
            (8, delete(3)),
        ];
        let skipped = [true, true, true, false, true, true, true, false];
        assert_eq!(superseded(&chunk), skipped);
        let mut with_range = chunk;
        with_range.push((9, Op::DeleteSession { client_id: n("x") }));
        assert!(superseded(&with_range).iter().all(|skip| !skip));
    }

    fn n(v: &str) -> ByteStr {
        ByteStr::from(v.to_owned())
    }

    fn s(v: &str) -> String {
        v.to_owned()
    }

    fn put_message(id: u64, len: usize) -> Op {
        Op::PutMessage {
            id,
            record: record(id, len),
        }
    }

    /// A record of `len` bytes that depends on `id`, so a mixed-up value shows.
    fn record(id: u64, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (id as usize).wrapping_mul(31).wrapping_add(i) as u8)
            .collect()
    }

    fn messages(ids: impl IntoIterator<Item = u64>, len: usize) -> Vec<(u64, Vec<u8>)> {
        ids.into_iter().map(|id| (id, record(id, len))).collect()
    }

    #[test]
    fn engine_is_send_and_sync() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Engine>();
        send_sync::<Arc<Engine>>();
    }

    #[test]
    fn round_trip_of_every_op_kind() {
        let dir = TestDir::new("round-trip");
        let (engine, recovered) = open(&dir, Durability::Fsync);
        assert!(!recovered.repaired);
        assert!(recovered.sessions.is_empty() && recovered.messages.is_empty());
        assert_eq!(engine.path(), dir.file());
        assert_eq!(engine.durability(), Durability::Fsync);

        let ops = [
            Op::PutSession {
                client_id: n("c2"),
                record: b"s2".to_vec(),
            },
            Op::PutSession {
                client_id: n("c1"),
                record: b"s1".to_vec(),
            },
            Op::PutSession {
                client_id: n("gone"),
                record: b"x".to_vec(),
            },
            Op::DeleteSession {
                client_id: n("gone"),
            },
            Op::PutMessage {
                id: 7,
                record: b"m7".to_vec(),
            },
            Op::PutMessage {
                id: u64::MAX,
                record: b"max".to_vec(),
            },
            Op::PutMessage {
                id: 8,
                record: b"m8".to_vec(),
            },
            Op::DeleteMessage { id: 8 },
            Op::PutQueue {
                client_id: n("c1"),
                seq: 2,
                entry: b"q2".to_vec(),
                new: true,
            },
            Op::PutQueue {
                client_id: n("c1"),
                seq: 1,
                entry: b"q1".to_vec(),
                new: true,
            },
            Op::PutQueue {
                client_id: n("c0"),
                seq: 9,
                entry: b"q9".to_vec(),
                new: true,
            },
            Op::PutQueue {
                client_id: n("c1"),
                seq: 3,
                entry: b"q3".to_vec(),
                new: true,
            },
            Op::DeleteQueue {
                client_id: n("c1"),
                seq: 3,
            },
            Op::PutInbound {
                client_id: n("c1"),
                packet_id: 65535,
            },
            Op::PutInbound {
                client_id: n("c1"),
                packet_id: 1,
            },
            Op::PutInbound {
                client_id: n("c1"),
                packet_id: 2,
            },
            Op::DeleteInbound {
                client_id: n("c1"),
                packet_id: 2,
            },
            Op::PutRetained {
                topic: n("a/b"),
                record: b"r1".to_vec(),
            },
            Op::PutRetained {
                topic: n("a"),
                record: b"r0".to_vec(),
            },
            Op::PutRetained {
                topic: n("x"),
                record: b"rx".to_vec(),
            },
            Op::DeleteRetained { topic: n("x") },
        ];
        let mut last = 0;
        for op in ops {
            let ticket = engine.submit(op);
            assert_eq!(ticket, last + 1, "tickets increase by one per call");
            last = ticket;
        }
        engine.flush();
        assert_eq!(engine.durable(), last);
        let stats = engine.stats();
        assert_eq!(stats.ops, last);
        assert!(stats.commits >= 1 && stats.commits <= stats.ops);
        assert!(stats.file_bytes > 0);
        engine.close();

        let recovered = reopen(&dir);
        assert!(!recovered.repaired, "a closed file needs no repair");
        assert_eq!(
            recovered.sessions,
            vec![(s("c1"), b"s1".to_vec()), (s("c2"), b"s2".to_vec())]
        );
        assert_eq!(
            recovered.messages,
            vec![(7, b"m7".to_vec()), (u64::MAX, b"max".to_vec())]
        );
        assert_eq!(
            recovered.queue,
            vec![
                (s("c0"), 9, b"q9".to_vec()),
                (s("c1"), 1, b"q1".to_vec()),
                (s("c1"), 2, b"q2".to_vec()),
            ]
        );
        assert_eq!(recovered.inbound_qos2, vec![(s("c1"), 1), (s("c1"), 65535)]);
        assert_eq!(
            recovered.retained,
            vec![(s("a"), b"r0".to_vec()), (s("a/b"), b"r1".to_vec())]
        );
    }

    #[test]
    fn later_changes_win_within_and_across_batches() {
        let dir = TestDir::new("ordering");
        let (engine, _) = open(&dir, Durability::Fsync);
        // One batch: put then delete, delete then put, put then put.
        engine.submit_all([
            Op::PutMessage {
                id: 1,
                record: b"a".to_vec(),
            },
            Op::DeleteMessage { id: 1 },
            Op::DeleteMessage { id: 2 },
            Op::PutMessage {
                id: 2,
                record: b"b".to_vec(),
            },
            Op::PutMessage {
                id: 3,
                record: b"old".to_vec(),
            },
            Op::PutMessage {
                id: 3,
                record: b"new".to_vec(),
            },
        ]);
        // Separate submits, not waited for: applied in ticket order too.
        engine.submit(Op::PutRetained {
            topic: n("t"),
            record: b"1".to_vec(),
        });
        engine.submit(Op::DeleteRetained { topic: n("t") });
        engine.submit(Op::PutRetained {
            topic: n("u"),
            record: b"1".to_vec(),
        });
        engine.submit(Op::PutRetained {
            topic: n("u"),
            record: b"2".to_vec(),
        });
        engine.flush();
        // Across committed batches.
        engine.submit(Op::PutSession {
            client_id: n("c"),
            record: b"1".to_vec(),
        });
        engine.flush();
        engine.submit(Op::DeleteSession { client_id: n("c") });
        engine.flush();
        engine.submit(Op::PutSession {
            client_id: n("d"),
            record: b"1".to_vec(),
        });
        engine.flush();
        engine.submit(Op::DeleteSession { client_id: n("d") });
        engine.flush();
        engine.submit(Op::PutSession {
            client_id: n("d"),
            record: b"2".to_vec(),
        });
        engine.close();

        let recovered = reopen(&dir);
        assert_eq!(
            recovered.messages,
            vec![(2, b"b".to_vec()), (3, b"new".to_vec())]
        );
        assert_eq!(recovered.retained, vec![(s("u"), b"2".to_vec())]);
        assert_eq!(recovered.sessions, vec![(s("d"), b"2".to_vec())]);
    }

    #[test]
    fn delete_session_removes_only_that_clients_entries() {
        let dir = TestDir::new("delete-session");
        let (engine, _) = open(&dir, Durability::Fsync);
        let clients = ["", "a", "ab", "a/", "b"];
        let mut ops = Vec::new();
        for client in clients {
            ops.push(Op::PutSession {
                client_id: n(client),
                record: client.as_bytes().to_vec(),
            });
            for seq in [0, 1, u64::MAX] {
                ops.push(Op::PutQueue {
                    client_id: n(client),
                    seq,
                    entry: vec![1],
                    new: true,
                });
            }
            for packet_id in [0, 7, u16::MAX] {
                ops.push(Op::PutInbound {
                    client_id: n(client),
                    packet_id,
                });
            }
        }
        engine.submit_all(ops);
        engine.submit(Op::DeleteSession { client_id: n("a") });
        engine.submit(Op::DeleteSession {
            client_id: n("never-existed"),
        });
        engine.close();

        let recovered = reopen(&dir);
        let left = ["", "a/", "ab", "b"]; // bytewise order
        assert_eq!(
            recovered
                .sessions
                .iter()
                .map(|(c, _)| c.as_str())
                .collect::<Vec<_>>(),
            left
        );
        let queue_clients: Vec<(&str, u64)> = recovered
            .queue
            .iter()
            .map(|(c, q, _)| (c.as_str(), *q))
            .collect();
        let expected: Vec<(&str, u64)> = left
            .iter()
            .flat_map(|c| [0, 1, u64::MAX].map(|q| (*c, q)))
            .collect();
        assert_eq!(queue_clients, expected);
        let inbound: Vec<(&str, u16)> = recovered
            .inbound_qos2
            .iter()
            .map(|(c, p)| (c.as_str(), *p))
            .collect();
        let expected: Vec<(&str, u16)> = left
            .iter()
            .flat_map(|c| [0, 7, u16::MAX].map(|p| (*c, p)))
            .collect();
        assert_eq!(inbound, expected);
    }

    #[test]
    fn submit_all_lands_in_one_transaction_even_past_the_cap() {
        let dir = TestDir::new("group");
        let (engine, _) = open(&dir, Durability::Os);
        // Empty: a ticket that is fine to wait on (already durable).
        assert_eq!(engine.submit_all([]), 0);
        engine.submit(put_message(0, 8));
        assert_eq!(engine.submit_all(Vec::new()), 1);
        engine.flush();
        let before = engine.stats();

        // A group bigger than MAX_TXN_OPS: one transaction, not split.
        let n = MAX_TXN_OPS as u64 + 100;
        let ticket = engine.submit_all(
            (1..=n)
                .map(|id| Op::DeleteMessage { id: id + 1_000_000 })
                .chain([put_message(1, 8), put_message(2, 8)]),
        );
        assert_eq!(ticket, 2);
        engine.flush();
        let after = engine.stats();
        assert_eq!(
            after.commits - before.commits,
            1,
            "one group, one transaction"
        );
        assert_eq!(after.ops - before.ops, n + 2);
        engine.close();
        assert_eq!(reopen(&dir).messages, messages(0..=2, 8));
    }

    #[test]
    fn many_threads_submitting_while_committing() {
        let dir = TestDir::new("threads");
        let (engine, _) = open(&dir, Durability::Fsync);
        const THREADS: u64 = 4;
        const PER_THREAD: u64 = 1000;
        let mut tickets: Vec<u64> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..THREADS)
                .map(|t| {
                    let engine = &engine;
                    scope.spawn(move || {
                        let mut tickets = Vec::new();
                        let mut i = 0;
                        while i < PER_THREAD {
                            let id = t * PER_THREAD + i;
                            if t % 2 == 0 && i + 2 <= PER_THREAD {
                                // Pairs as one group.
                                tickets.push(
                                    engine
                                        .submit_all([put_message(id, 16), put_message(id + 1, 16)]),
                                );
                                i += 2;
                            } else {
                                tickets.push(engine.submit(put_message(id, 16)));
                                i += 1;
                            }
                            if i % 128 == 0 {
                                engine.flush();
                            }
                        }
                        tickets
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        tickets.sort_unstable();
        let n = tickets.len() as u64;
        assert_eq!(
            tickets,
            (1..=n).collect::<Vec<_>>(),
            "tickets are unique and dense"
        );
        engine.flush();
        assert_eq!(engine.durable(), n);
        let stats = engine.stats();
        assert_eq!(stats.ops, THREADS * PER_THREAD);
        eprintln!(
            "{} ops from {THREADS} threads in {} commits (Fsync)",
            stats.ops, stats.commits
        );
        engine.close();
        assert_eq!(reopen(&dir).messages, messages(0..THREADS * PER_THREAD, 16));
    }

    #[tokio::test]
    async fn durable_watch_wakes_an_async_waiter() {
        let dir = TestDir::new("watch");
        let (engine, _) = open(&dir, Durability::Fsync);
        let mut watch = engine.watch();
        assert_eq!(*watch.borrow(), 0);
        let waiter = tokio::spawn(async move {
            let durable = watch.wait_for(|durable| *durable >= 2).await.map(|d| *d);
            durable.ok()
        });
        tokio::task::yield_now().await;
        engine.submit(put_message(1, 8));
        let ticket = engine.submit(put_message(2, 8));
        assert_eq!(ticket, 2);
        let durable = tokio::time::timeout(Duration::from_secs(30), waiter)
            .await
            .expect("the watch never reached the ticket")
            .unwrap();
        assert_eq!(durable, Some(2));
        assert_eq!(engine.durable(), 2);
        engine.close();
        // After close: durable tickets still resolve, others end instead of hanging.
        let mut watch = engine.watch();
        assert!(watch.wait_for(|durable| *durable >= 2).await.is_ok());
        assert!(watch.wait_for(|durable| *durable >= 3).await.is_err());
    }

    #[test]
    fn os_mode_round_trip() {
        let dir = TestDir::new("os");
        let (engine, _) = open(&dir, Durability::Os);
        assert_eq!(engine.durability(), Durability::Os);
        for id in 0..100 {
            engine.submit(put_message(id, 32));
        }
        engine.submit(Op::PutSession {
            client_id: n("c"),
            record: vec![1, 2],
        });
        engine.flush();
        assert_eq!(engine.durable(), 101);
        // Never fsynced, yet what a kill -9 leaves (the page cache) has it all.
        let killed = TestDir::new("os-killed");
        crash_copy(&engine, &killed);
        engine.close();
        let recovered = reopen(&killed);
        assert!(recovered.repaired);
        assert_eq!(recovered.messages, messages(0..100, 32));
        let (engine, recovered) = open(&dir, Durability::None);
        assert!(!recovered.repaired);
        assert_eq!(recovered.messages, messages(0..100, 32));
        assert_eq!(recovered.sessions, vec![(s("c"), vec![1, 2])]);
        engine.submit(Op::DeleteMessage { id: 0 });
        engine.close();
        assert_eq!(reopen(&dir).messages, messages(1..100, 32));
    }

    #[test]
    fn close_is_idempotent_and_later_submits_are_dropped() {
        let dir = TestDir::new("close");
        let (engine, _) = open(&dir, Durability::Fsync);
        engine.submit(put_message(1, 8));
        engine.close();
        assert_eq!(engine.durable(), 1, "close applies what was pending");
        engine.close();
        let late = engine.submit(put_message(2, 8));
        assert_eq!(late, 2);
        engine.flush(); // returns: the writer is gone
        assert_eq!(engine.durable(), 1);
        drop(engine);
        assert_eq!(reopen(&dir).messages, messages([1], 8));
    }

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

    /// What a kill -9 leaves: the file as it is on disk while open.
    fn crash_copy(engine: &Engine, to: &TestDir) {
        engine.flush();
        std::fs::create_dir_all(&to.0).unwrap();
        std::fs::copy(engine.path(), to.file()).unwrap();
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

    #[test]
    fn write_errors_are_retried_and_not_acknowledged() {
        let dir = TestDir::new("faults");
        let faults = Arc::new(Faults::default());
        let hooks = Hooks {
            faults: Some(faults.clone()),
        };
        let (engine, _) = Engine::open_with(&dir.0, Durability::Fsync, hooks).unwrap();
        engine.submit(put_message(1, 8));
        engine.flush();

        faults.fail.store(true, Ordering::SeqCst);
        let ticket = engine.submit(put_message(2, 8));
        faults.wait_failures(1);
        assert!(engine.durable() < ticket, "a failed commit is not durable");
        faults.wait_failures(3);
        assert!(engine.durable() < ticket);
        faults.fail.store(false, Ordering::SeqCst);

        // Recovers on a retry; bounded so a regression fails instead of hanging.
        let (done, finished) = std::sync::mpsc::channel();
        let flusher = engine.clone();
        std::thread::spawn(move || {
            flusher.flush();
            let _ = done.send(());
        });
        finished
            .recv_timeout(Duration::from_secs(30))
            .expect("the writer never recovered from the write errors");
        assert_eq!(engine.durable(), ticket);
        engine.close();
        assert_eq!(reopen(&dir).messages, messages([1, 2], 8));
    }

    /// Messages stored and deleted again, a transaction per batch: freed
    /// pages must be reused, so the file stays the size of the live data.
    /// 100k pairs in an optimized build (`cargo test --release`); 20k in a
    /// debug build, where unoptimized redb costs ~25 µs an op and the full
    /// run takes 5 s (0.7 s with `[profile.dev.package.redb] opt-level = 3`).
    #[test]
    fn churn_keeps_the_file_small() {
        let dir = TestDir::new("churn");
        let (engine, _) = open(&dir, Durability::Os);
        const PAIRS: u64 = if cfg!(debug_assertions) {
            20_000
        } else {
            100_000
        };
        const BATCH: u64 = 64;
        let started = std::time::Instant::now();
        let mut next = 0;
        while next < PAIRS {
            let end = (next + BATCH).min(PAIRS);
            // Put this batch's messages, delete the previous batch's.
            engine.submit_all(
                (next..end)
                    .map(|id| put_message(id, 100))
                    .chain((next.saturating_sub(BATCH)..next).map(|id| Op::DeleteMessage { id })),
            );
            engine.flush(); // a commit per batch, as a steady trickle of publishes makes
            next = end;
        }
        let bytes = engine.stats().file_bytes;
        eprintln!(
            "churn: {PAIRS} put/delete pairs of 100-byte messages, {} commits in {:?}: file {} KiB",
            engine.stats().commits,
            started.elapsed(),
            bytes / 1024
        );
        assert!(bytes < 4 << 20, "file grew to {bytes} bytes under churn");
        engine.close();
        let recovered = reopen(&dir);
        assert_eq!(
            recovered.messages,
            messages((PAIRS - 1) / BATCH * BATCH..PAIRS, 100)
        );
    }

    #[test]
    fn recovers_100k_messages_quickly() {
        let dir = TestDir::new("recover-100k");
        let (engine, _) = open(&dir, Durability::Os);
        const N: u64 = 100_000;
        for batch in 0..N / 1000 {
            engine.submit_all((batch * 1000..(batch + 1) * 1000).map(|id| put_message(id, 100)));
        }
        engine.close();
        let started = std::time::Instant::now();
        let (engine, recovered) = open(&dir, Durability::Fsync);
        let took = started.elapsed();
        engine.close();
        eprintln!(
            "recovery: {} messages of 100 bytes ({} KiB file) read in {took:?}",
            recovered.messages.len(),
            std::fs::metadata(dir.file()).unwrap().len() / 1024
        );
        assert_eq!(recovered.messages.len(), N as usize);
        assert!(
            recovered
                .messages
                .iter()
                .enumerate()
                .all(|(i, (id, r))| *id == i as u64 && r.len() == 100)
        );
        assert!(took < Duration::from_secs(5), "recovery took {took:?}");
    }

    /// Commit throughput on this machine's disk. Run with
    /// `cargo test --release -p tern-broker store::engine::tests::throughput -- --ignored --nocapture`.
    #[test]
    #[ignore = "benchmark: slow, prints figures"]
    fn throughput() {
        for durability in [Durability::Fsync, Durability::Os] {
            for size in [64usize, 1024] {
                let dir = TestDir::new("bench");
                let (engine, _) = open(&dir, durability);

                // One client: submit, wait, repeat (a commit per op).
                let rounds = if durability == Durability::Fsync {
                    300
                } else {
                    3000
                };
                let (before, started) = (engine.stats(), std::time::Instant::now());
                for id in 0..rounds {
                    engine.submit(put_message(id, size));
                    engine.flush();
                }
                report("1 waiter", durability, size, &engine, before, started);

                // 64 clients as the broker has them: async tasks on two
                // workers, each submitting and awaiting its ticket on the
                // watch before the next (a QoS 1 publisher waiting for
                // PUBACK). Keys either from one counter (message ids: every
                // insert lands in the last leaf) or in 64 ranges (queues:
                // each client's inserts land in its own leaf).
                for scattered in [false, true] {
                    let (before, started) = (engine.stats(), std::time::Instant::now());
                    let per = rounds / 4;
                    let next_id = Arc::new(AtomicU64::new(1_000_000 * (1 + scattered as u64)));
                    let runtime = tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(2)
                        .build()
                        .unwrap();
                    runtime.block_on(async {
                        let tasks: Vec<_> = (0..64u64)
                            .map(|t| {
                                let engine = engine.clone();
                                let next_id = next_id.clone();
                                tokio::spawn(async move {
                                    let mut watch = engine.watch();
                                    for i in 0..per {
                                        let id = if scattered {
                                            10_000_000 + t * 100_000 + i
                                        } else {
                                            next_id.fetch_add(1, Ordering::Relaxed)
                                        };
                                        let ticket = engine.submit(put_message(id, size));
                                        watch.wait_for(|d| *d >= ticket).await.unwrap();
                                    }
                                })
                            })
                            .collect();
                        for task in tasks {
                            task.await.unwrap();
                        }
                    });
                    let what = if scattered {
                        "64 waiters, 64 key ranges"
                    } else {
                        "64 waiters, one counter"
                    };
                    report(what, durability, size, &engine, before, started);
                }

                // A firehose: submit without waiting, then flush.
                let n = 200_000u64;
                let (before, started) = (engine.stats(), std::time::Instant::now());
                for i in 0..n {
                    engine.submit(put_message(100_000_000 + i, size));
                }
                engine.flush();
                report("firehose", durability, size, &engine, before, started);
                engine.close();
            }
        }
    }

    fn report(
        what: &str,
        durability: Durability,
        size: usize,
        engine: &Engine,
        before: StoreStats,
        started: std::time::Instant,
    ) {
        let secs = started.elapsed().as_secs_f64();
        let after = engine.stats();
        let commits = after.commits - before.commits;
        let ops = after.ops - before.ops;
        eprintln!(
            "{durability:?} {size:>5} B {what:<26}: {:>8.0} commits/s {:>9.0} ops/s ({:.1} ops/commit, {} KiB file)",
            commits as f64 / secs,
            ops as f64 / secs,
            ops as f64 / commits.max(1) as f64,
            after.file_bytes / 1024
        );
    }
}
