//! What redb reads and writes the file through: its own file backend, with
//! fsync switchable for the `Os` and `None` durability modes, and a hook
//! where tests make writes fail. Kept apart so that the file's I/O has one
//! place, and the test-only failure injection stays out of the rest.

use std::io;
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
#[cfg(test)]
use std::sync::{Condvar, Mutex};

use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};

/// redb's file backend, with fsync switchable: on in `Fsync` mode (so it is
/// exactly redb's own file backend), off in `Os`/`None` mode, where commits
/// reach the page cache and the kernel writes them back when it likes. All
/// locking is redb's own, so a second open still finds the file in use.
#[derive(Debug)]
pub(super) struct Backend {
    pub(super) file: FileBackend,
    pub(super) sync: Arc<AtomicBool>,
    pub(super) hooks: Hooks,
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
pub(super) struct Hooks {
    #[cfg(test)]
    pub(super) faults: Option<Arc<Faults>>,
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

/// Failure injection for the backend: while `fail` is set, every write,
/// set_len and fsync fails; `wait_failures` blocks until that happened.
#[cfg(test)]
#[derive(Debug, Default)]
pub(super) struct Faults {
    pub(super) fail: AtomicBool,
    failures: Mutex<u64>,
    failed: Condvar,
}

#[cfg(test)]
impl Faults {
    fn check(&self) -> Result<(), io::Error> {
        if !self.fail.load(Ordering::SeqCst) {
            return Ok(());
        }
        *self.failures.lock().unwrap() += 1;
        self.failed.notify_all();
        Err(io::Error::other("injected write failure"))
    }

    pub(super) fn wait_failures(&self, n: u64) {
        let mut failures = self.failures.lock().unwrap();
        while *failures < n {
            failures = self.failed.wait(failures).unwrap();
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::store::engine::tests::{
        TestDir, crash_copy, messages, n, open, put_message, reopen, s,
    };
    use crate::store::engine::{Durability, Op};

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
}
