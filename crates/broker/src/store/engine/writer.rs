//! The writer thread ("tern-store"): takes what was submitted, writes it in
//! as few transactions as the size cap allows (group commit), retries a
//! failed write on a fresh handle, and publishes the durable ticket. The
//! only code that writes to the file.

use bytes::BytesMut;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use redb::{Database, ReadTransaction, ReadableDatabase};
use tokio::sync::watch;

use super::coalesce::superseded;
use super::open::Opener;
use super::tables::Tables;
use super::{Op, Shared, Value};

/// Most ops in one write transaction; the rest of a batch goes into the next.
/// Why: a transaction's dirty pages are held in memory until its commit, so
/// an unbounded backlog (a burst while the disk stalled) would be one huge
/// transaction. 64k small ops is a few MB of pages. A group from
/// [`Engine::submit_all`](super::Engine::submit_all) is never split, whatever
/// its size.
const MAX_TXN_OPS: usize = 65_536;

/// Queue entries whose memory the writer keeps between batches at least,
/// and at most once it has nothing to write (about 300 KB); see
/// `Writer::run` for more.
const KEEP_QUEUE_CAPACITY: usize = 4096;

/// Wait between attempts to write a batch that failed. Long enough not to
/// spin on a full or failing disk, short enough that a transient error costs
/// clients little latency.
const RETRY_BACKOFF: Duration = Duration::from_millis(100);

/// A failed batch is logged on its first attempt and then every this many
/// (every 5 s), so a disk that stays full does not flood the log.
const LOG_EVERY_ATTEMPTS: u32 = 50;

/// Attempts made for a failing batch once
/// [`Engine::close`](super::Engine::close) was called, before giving up on it
/// (and what follows it): shutdown must end.
const ATTEMPTS_WHILE_CLOSING: u32 = 20;

/// The writer thread's state.
pub(super) struct Writer<V> {
    shared: Arc<Shared<V>>,
    /// Sends `durable` to the waiters of
    /// [`Engine::watch`](super::Engine::watch); dropped with the thread.
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
    pub(super) fn new(
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

    pub(super) fn run(mut self) {
        let _gone = GoneOnDrop(self.shared.clone());
        // Swapped with `pending`, so both Vecs keep their capacity.
        let mut batch: Vec<(u64, Op<V>)> = Vec::new();
        loop {
            let snapshots = {
                let mut state = self.shared.lock_state();
                if state.pending.is_empty() {
                    // Nothing to write: a burst's queue memory (both Vecs,
                    // 75 MB after a million changes) goes back now, not at
                    // the next batch, which may never come.
                    state.pending.shrink_to(KEEP_QUEUE_CAPACITY);
                    batch.shrink_to(KEEP_QUEUE_CAPACITY);
                }
                while state.pending.is_empty() && state.snapshots.is_empty() && !state.closing {
                    state = state.wait(&self.shared.work);
                }
                if state.pending.is_empty() && state.snapshots.is_empty() {
                    break; // closing, and everything is written
                }
                std::mem::swap(&mut state.pending, &mut batch);
                std::mem::take(&mut state.snapshots)
            };
            let written = self.write_batch(&batch);
            // After the batch: a snapshot holds everything submitted
            // before it was asked for.
            for snapshot in snapshots {
                let _ = snapshot.send(self.begin_read());
            }
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
            let began = std::time::Instant::now();
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
                self.publish(ticket, chunk.len(), began.elapsed());
            }
            start = end;
        }
        true
    }

    /// Records that `ticket` (and all before it) is committed, after a
    /// transaction of `ops` ops that took `took` (retries included), and
    /// wakes whoever waits for it.
    fn publish(&self, ticket: u64, ops: usize, took: std::time::Duration) {
        let shared = &self.shared;
        shared.metrics.commit_seconds.observe(took.as_secs_f64());
        shared.metrics.commit_ops.observe(ops as f64);
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
        let txn = self.db()?.begin_write()?;
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

    /// The open file, opening it again if the last write failed.
    fn db(&mut self) -> Result<&Database, redb::Error> {
        let db = match self.db.take() {
            Some(db) => db,
            None => self.opener.open(None)?,
        };
        Ok(self.db.insert(db))
    }

    /// A read transaction on everything committed so far (for a backup).
    fn begin_read(&mut self) -> Result<ReadTransaction, redb::Error> {
        Ok(self.db()?.begin_read()?)
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

/// End of the transaction that starts at `start`: `MAX_TXN_OPS` ops, then
/// on to the end of the ticket that is cut, so a group stays whole.
fn chunk_end<V>(batch: &[(u64, Op<V>)], start: usize) -> usize {
    let mut end = start.saturating_add(MAX_TXN_OPS).min(batch.len());
    while end < batch.len() && batch[end].0 == batch[end - 1].0 {
        end += 1;
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::engine::backend::{Faults, Hooks};
    use crate::store::engine::tests::{TestDir, messages, open, put_message, reopen};
    use crate::store::engine::{Durability, Engine, StoreStats};
    use std::sync::atomic::AtomicU64;

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

    /// Commit throughput on this machine's disk. Run with
    /// `cargo test --release -p tern-broker store::engine::writer::tests::throughput -- --ignored --nocapture`.
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
