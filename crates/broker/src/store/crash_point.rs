//! A crash at a chosen ticket, for tests that try every moment a crash
//! could come.
//!
//! [`CrashPoint::crash_after`] makes the store keep every change up to a
//! ticket and lose every later one: they are taken (with their tickets, so
//! the broker runs on as before) but never reach the engine, so they never
//! become durable and the responses they hold never go out. That is the
//! broker's state at the instant a `kill -9` lands after that ticket's
//! commit, frozen: a test drives its clients as far as they can get, stops
//! the broker (which writes nothing more) and starts another on the same
//! data directory. Random kills (`crates/tern/tests/crash.rs`) meet a given
//! interleaving by chance; this meets each one.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::{Backend, Backup, Durability, Op, Record, StoreError, StoreMetrics};

/// Where the store stops keeping changes; shared by the test and the store.
#[derive(Debug)]
pub struct CrashPoint {
    /// The last ticket that reaches the engine (`u64::MAX`: all of them).
    after: AtomicU64,
    /// The last ticket handed out. Under a lock so that tickets reach the
    /// engine in the order they are numbered.
    last: Mutex<u64>,
}

impl CrashPoint {
    /// A crash point that keeps everything until [`CrashPoint::crash_after`].
    pub fn new() -> Arc<CrashPoint> {
        Arc::new(CrashPoint {
            after: AtomicU64::new(u64::MAX),
            last: Mutex::new(0),
        })
    }

    /// The last ticket handed out so far.
    pub fn submitted(&self) -> u64 {
        *self.lock()
    }

    /// Keeps the changes up to `ticket`, loses every later one.
    pub fn crash_after(&self, ticket: u64) {
        self.after.store(ticket, Ordering::SeqCst);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, u64> {
        // A test's panic elsewhere must not hide behind a poisoned lock.
        self.last.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Numbers one submission and passes it to `engine` if it comes before
    /// the crash.
    fn take(&self, engine: impl FnOnce() -> u64) -> u64 {
        let mut last = self.lock();
        *last += 1;
        if *last <= self.after.load(Ordering::SeqCst) {
            let ticket = engine();
            debug_assert_eq!(ticket, *last, "the engine numbers as the crash point does");
        }
        *last
    }
}

/// A [`Backend`] whose changes after the crash point are lost.
pub(super) struct Crashing {
    pub(super) engine: Arc<dyn Backend>,
    pub(super) point: Arc<CrashPoint>,
}

impl Backend for Crashing {
    fn submit(&self, op: Op<Record>) -> u64 {
        self.point.take(|| self.engine.submit(op))
    }
    fn submit_all(&self, ops: Vec<Op<Record>>) -> u64 {
        self.point.take(|| self.engine.submit_all(ops))
    }
    fn durable(&self) -> u64 {
        self.engine.durable()
    }
    fn watch(&self) -> watch::Receiver<u64> {
        self.engine.watch()
    }
    fn durability(&self) -> Durability {
        self.engine.durability()
    }
    fn metrics(&self) -> &StoreMetrics {
        self.engine.metrics()
    }
    fn flush(&self) {
        self.engine.flush()
    }
    fn close(&self) {
        self.engine.close()
    }
    fn location(&self) -> &Path {
        self.engine.location()
    }
    fn backup(&self, dir: &Path) -> Result<Backup, StoreError> {
        self.engine.backup(dir)
    }
}
