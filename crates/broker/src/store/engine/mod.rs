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
//! The parts, one file each:
//! - `open`: opening the file, with redb's integrity check, and what a
//!   damaged, foreign or locked file is reported as ([`StoreError`]).
//! - `backup`: a consistent copy of the file while the writer runs.
//! - `format`: the data format the file is in (its `meta` table): a newer
//!   file refused by name, an older one upgraded.
//! - `tables`: the six tables, read whole at open ([`Recovered`]) and
//!   changed by one [`Op`] at a time in the writer's transactions.
//! - `writer`: the writer thread: group commit, retries, durable tickets.
//! - `coalesce`: which ops of a transaction need not be applied at all.
//! - `backend`: redb's file backend with fsync switchable, and the hook
//!   through which tests make writes fail.

mod backend;
mod backup;
mod coalesce;
mod format;
mod open;
mod tables;
mod writer;

use bytes::BytesMut;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, mpsc};

use crate::lock::{Mutex, MutexGuard, rank};
use std::thread::JoinHandle;
use tern_codec::ByteStr;

use redb::ReadTransaction;
use tokio::sync::watch;

use self::backend::Hooks;
use self::writer::Writer;
use crate::metrics::Histogram;

pub use self::backup::Backup;
pub use self::format::{DATA_FORMAT, mark as mark_data_format, of as data_format};
pub use self::open::StoreError;
pub(super) use self::open::{FILE_NAME, REDB_GOD_BYTE, REDB_MAGIC, REDB_RECOVERY_REQUIRED};
pub use self::tables::Recovered;
pub(super) use self::tables::{INBOUND, MESSAGES, QUEUE, RETAINED, SESSIONS};
pub use crate::config::Durability;

/// The value of a message or queue entry change, turned into bytes by the
/// writer thread when (and only if) its change reaches the file.
///
/// Why lazily: on a busy broker most messages are stored, sent, acknowledged
/// and deleted between two commits, so their changes cancel out within the
/// transaction (see [`superseded`](coalesce::superseded)). Encoding them on
/// the submitting side would allocate, encode and free records that are never
/// written.
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

/// One change to the store. Applied in submission order. `V` is how message,
/// queue entry and retained message values are given (see [`Value`]);
/// sessions change rarely and come encoded.
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
    PutRetained { topic: ByteStr, record: V },
    /// Removes the retained message of a topic.
    DeleteRetained { topic: ByteStr },
    /// Inserts a delayed message (`$delayed/...`): when it is due, and it.
    PutDelayed { id: u64, record: Vec<u8> },
    /// Removes a delayed message (published, or cancelled).
    DeleteDelayed { id: u64 },
}

/// Counters for the engine's tests and benchmarks.
#[cfg(test)]
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
    writer: Mutex<Option<JoinHandle<()>>, { rank::STORE_WRITER }>,
}

/// What the submitting side and the writer thread share.
struct Shared<V> {
    /// The file.
    path: PathBuf,
    state: Mutex<State<V>, { rank::STORE_QUEUE }>,
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
    /// What each commit cost, for `/metrics`.
    metrics: StoreMetrics,
}

/// The store's figures for `/metrics`: each commit's duration (the
/// transaction and its fsync) and size (the ops it applied, after
/// submissions were gathered: the group-commit factor).
#[derive(Debug)]
pub struct StoreMetrics {
    pub commit_seconds: Histogram,
    pub commit_ops: Histogram,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        StoreMetrics {
            commit_seconds: Histogram::new(&[
                0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0,
            ]),
            commit_ops: Histogram::new(&[
                1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0,
            ]),
        }
    }
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
    /// Backups waiting for their snapshot, which the writer takes after
    /// its next batch.
    snapshots: Vec<mpsc::SyncSender<Result<ReadTransaction, redb::Error>>>,
}

impl<V> Shared<V> {
    /// The submission queue: the innermost of the broker's locks
    /// (`lock::rank::STORE_QUEUE`), so any task may submit whatever it holds.
    fn lock_state(&self) -> MutexGuard<'_, State<V>, { rank::STORE_QUEUE }> {
        self.state.lock()
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

    /// [`Engine::open`] with the backend's test hooks (fault injection) set.
    fn open_with(
        dir: &Path,
        durability: Durability,
        hooks: Hooks,
    ) -> Result<(Arc<Engine<V>>, Recovered), StoreError> {
        let (opener, db, recovered) = open::open_file(dir, durability, hooks)?;
        let path = opener.path.clone();
        let (durable_tx, watch) = watch::channel(0);
        let shared = Arc::new(Shared {
            path: path.clone(),
            state: Mutex::new(State {
                pending: Vec::new(),
                last_ticket: 0,
                closing: false,
                writer_gone: false,
                snapshots: Vec::new(),
            }),
            work: Condvar::new(),
            progress: Condvar::new(),
            durable: AtomicU64::new(0),
            watch,
            metrics: StoreMetrics::default(),
        });
        let writer_shared = shared.clone();
        let writer = std::thread::Builder::new()
            .name("tern-store".into())
            .spawn(move || Writer::new(writer_shared, durable_tx, db, opener).run())
            .map_err(|reason| StoreError::Thread { path, reason })?;
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
            state = state.wait(&self.shared.progress);
        }
    }

    /// Flushes, stops the writer thread and closes the file. Idempotent;
    /// also done on Drop of the last Arc (don't rely on Drop ordering in
    /// tests: call close). Changes submitted from here on are dropped.
    pub fn close(&self) {
        self.shared.lock_state().closing = true;
        self.shared.work.notify_all();
        let mut writer = self.writer.lock();
        if let Some(handle) = writer.take()
            && handle.join().is_err()
        {
            tracing::error!(file = %self.shared.path.display(), "the store writer thread panicked");
        }
    }

    /// What the commits cost so far.
    pub fn metrics(&self) -> &StoreMetrics {
        &self.shared.metrics
    }

    /// Copies everything submitted so far into a new data file in `dir`,
    /// while the writer goes on (see [`backup`]). Blocks for the copy: call
    /// it from a blocking thread.
    pub fn backup(&self, dir: &Path) -> Result<Backup, StoreError> {
        let (tx, rx) = mpsc::sync_channel(1);
        {
            let mut state = self.shared.lock_state();
            if state.closing || state.writer_gone {
                return Err(self.closed());
            }
            state.snapshots.push(tx);
        }
        self.shared.work.notify_one();
        let snapshot = rx
            .recv()
            .map_err(|_| self.closed())?
            .map_err(|err| StoreError::Other {
                path: self.shared.path.clone(),
                reason: format!("cannot read it for a backup: {err}"),
            })?;
        backup::copy(&snapshot, dir)
    }

    fn closed(&self) -> StoreError {
        StoreError::Other {
            path: self.shared.path.clone(),
            reason: "the store is closed (tern is shutting down)".into(),
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

    /// Counters for the engine's tests and benchmarks.
    #[cfg(test)]
    pub fn stats(&self) -> StoreStats {
        let (_, ops, commits) = self.shared.metrics.commit_ops.read();
        StoreStats {
            commits,
            ops: ops as u64,
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::time::Duration;

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

    pub(super) fn open(dir: &TestDir, durability: Durability) -> (Arc<Engine>, Recovered) {
        match Engine::open(&dir.0, durability) {
            Ok(opened) => opened,
            Err(err) => panic!("open {}: {err}", dir.0.display()),
        }
    }

    pub(super) fn reopen(dir: &TestDir) -> Recovered {
        let (engine, recovered) = open(dir, Durability::Fsync);
        engine.close();
        recovered
    }

    pub(super) fn n(v: &str) -> ByteStr {
        ByteStr::from(v.to_owned())
    }

    pub(super) fn s(v: &str) -> String {
        v.to_owned()
    }

    pub(super) fn put_message(id: u64, len: usize) -> Op {
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

    pub(super) fn messages(ids: impl IntoIterator<Item = u64>, len: usize) -> Vec<(u64, Vec<u8>)> {
        ids.into_iter().map(|id| (id, record(id, len))).collect()
    }

    /// What a kill -9 leaves: the file as it is on disk while open.
    pub(super) fn crash_copy(engine: &Engine, to: &TestDir) {
        engine.flush();
        std::fs::create_dir_all(&to.0).unwrap();
        std::fs::copy(engine.path(), to.file()).unwrap();
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
}
