//! The broker's shared locks and the one order they are taken in.
//!
//! Every lock that more than one task or thread takes is a [`Mutex`] or
//! [`RwLock`] from here, with its [`rank`] in its type. A thread may only
//! take a lock whose rank is above that of every lock it already holds. In
//! debug builds (every test) taking one out of order panics at once, naming
//! both ranks, so a path that could deadlock fails the first test that walks
//! it instead of hanging a broker in production some day. In release builds
//! the check compiles away: these are std locks with nothing added.
//!
//! Poisoning is ignored: it only says another thread panicked while holding
//! the lock, and every structure behind these locks stays consistent between
//! statements, so the broker keeps serving rather than spreading the panic.
//!
//! No lock is ever held across an `.await` (std guards are not `Send`, so a
//! spawned task could not even be compiled so) or across socket I/O.

use std::ops::{Deref, DerefMut};

/// Ranks, lowest first: the order locks are taken in. Gaps leave room.
pub mod rank {
    /// `BrokerState::reloading`: held through a reload of the password and
    /// ACL files, which takes every lock after it.
    pub const RELOAD: u8 = 5;
    /// `BrokerState::sessions`: client id → session. Held only to find,
    /// insert or remove a session (with that session's lock, to decide),
    /// or to copy the list of them (a reload).
    pub const SESSIONS: u8 = 10;
    /// One session's state (`Session::lock`): its queues, in-flight
    /// messages, subscriptions. Held for queue operations and to submit
    /// that session's store records in the order of its changes.
    pub const SESSION: u8 = 20;
    /// `BrokerState::subscriptions`, the subscription tree.
    pub const TREE: u8 = 30;
    /// `BrokerState::retained`, the retained messages.
    pub const RETAINED: u8 = 40;
    /// `BrokerState::retained_writes`: orders retained changes in the store
    /// as they were made in the trie, without holding the trie's lock.
    pub const RETAINED_WRITES: u8 = 45;
    /// The parker's table of parked connections.
    pub const PARKER: u8 = 50;
    /// The cluster fabric's count of subscriptions per NATS subject, its
    /// recent message ids, its write queue and failed writes.
    pub const FABRIC: u8 = 55;
    /// The authentication rules in force.
    pub const AUTH_RULES: u8 = 60;
    /// Failed logins (the login guard).
    pub const AUTH_GUARD: u8 = 61;
    /// The per-address connection-rate table.
    pub const RATE_TABLE: u8 = 62;
    /// A TLS listener's certificates.
    pub const TLS_CONFIG: u8 = 63;
    /// The auth hook's cache of answers (`auth/hook.rs`): held for one
    /// lookup or insert, nothing under it.
    pub const AUTH_CACHE: u8 = 64;
    /// The JWT keys in force (`auth/jwt.rs`): read to verify a token,
    /// written when a JWKS is fetched; nothing under it.
    pub const JWT_KEYS: u8 = 65;
    /// The schedule of delayed messages (`delayed.rs`): nothing is taken
    /// under it.
    pub const DELAYED: u8 = 66;
    /// The webhooks' queues waiting for their tasks (`webhook::spawn`, once
    /// at start): nothing is taken under it.
    pub const WEBHOOKS: u8 = 70;
    /// The store writer thread's handle.
    pub const STORE_WRITER: u8 = 80;
    /// A shard of the topic monitor (`monitor.rs`): taken by routing (with
    /// nothing above it held that it would wait for) and while seeding from
    /// the retained messages.
    pub const MONITOR: u8 = 85;
    /// The store's submission queue: innermost, nothing is taken under it.
    pub const STORE_QUEUE: u8 = 90;
}

/// A mutex of rank `RANK`.
#[derive(Debug, Default)]
pub struct Mutex<T, const RANK: u8>(std::sync::Mutex<T>);

/// A read-write lock of rank `RANK`.
#[derive(Debug, Default)]
pub struct RwLock<T, const RANK: u8>(std::sync::RwLock<T>);

/// A held lock: [`Mutex::lock`], [`RwLock::read`] or [`RwLock::write`].
/// Gives the rank back when dropped. (`None` only inside [`Guard::wait`].)
pub struct Guard<G, const RANK: u8>(Option<G>);

pub type MutexGuard<'a, T, const RANK: u8> = Guard<std::sync::MutexGuard<'a, T>, RANK>;
pub type ReadGuard<'a, T, const RANK: u8> = Guard<std::sync::RwLockReadGuard<'a, T>, RANK>;
pub type WriteGuard<'a, T, const RANK: u8> = Guard<std::sync::RwLockWriteGuard<'a, T>, RANK>;

impl<T, const RANK: u8> Mutex<T, RANK> {
    pub const fn new(value: T) -> Self {
        Mutex(std::sync::Mutex::new(value))
    }

    pub fn lock(&self) -> MutexGuard<'_, T, RANK> {
        order::take(RANK);
        Guard(Some(self.0.lock().unwrap_or_else(|p| p.into_inner())))
    }
}

impl<T, const RANK: u8> RwLock<T, RANK> {
    pub const fn new(value: T) -> Self {
        RwLock(std::sync::RwLock::new(value))
    }

    pub fn read(&self) -> ReadGuard<'_, T, RANK> {
        order::take(RANK);
        Guard(Some(self.0.read().unwrap_or_else(|p| p.into_inner())))
    }

    pub fn write(&self) -> WriteGuard<'_, T, RANK> {
        order::take(RANK);
        Guard(Some(self.0.write().unwrap_or_else(|p| p.into_inner())))
    }
}

impl<'a, T, const RANK: u8> MutexGuard<'a, T, RANK> {
    /// Waits on `condvar`, which lets go of the lock (and its rank) until
    /// woken, as `std::sync::Condvar::wait` does.
    pub fn wait(mut self, condvar: &std::sync::Condvar) -> Self {
        if let Some(inner) = self.0.take() {
            order::give_back(RANK);
            let inner = condvar.wait(inner).unwrap_or_else(|p| p.into_inner());
            order::take(RANK);
            self.0 = Some(inner);
        }
        self
    }
}

impl<G: Deref, const RANK: u8> Deref for Guard<G, RANK> {
    type Target = G::Target;
    fn deref(&self) -> &G::Target {
        match &self.0 {
            Some(inner) => inner,
            None => unreachable!("a guard is empty only inside Guard::wait"),
        }
    }
}

impl<G: DerefMut, const RANK: u8> DerefMut for Guard<G, RANK> {
    fn deref_mut(&mut self) -> &mut G::Target {
        match &mut self.0 {
            Some(inner) => inner,
            None => unreachable!("a guard is empty only inside Guard::wait"),
        }
    }
}

impl<G, const RANK: u8> Drop for Guard<G, RANK> {
    fn drop(&mut self) {
        if self.0.take().is_some() {
            order::give_back(RANK);
        }
    }
}

/// The check: the ranks this thread holds, in debug builds.
#[cfg(debug_assertions)]
mod order {
    use std::cell::RefCell;

    thread_local! {
        static HELD: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }

    /// Panics unless `rank` is above every rank held.
    pub fn take(rank: u8) {
        // Not asserted inside the borrow: the guards dropped while the
        // panic unwinds give their ranks back through it.
        let top = HELD.with_borrow(|held| held.iter().max().copied());
        if let Some(top) = top {
            assert!(
                rank > top,
                "lock order violated: taking a lock of rank {rank} while holding one of rank {top} (see lock::rank)"
            );
        }
        HELD.with_borrow_mut(|held| held.push(rank));
    }

    /// Forgets one hold of `rank` (guards may be dropped in any order).
    pub fn give_back(rank: u8) {
        HELD.with_borrow_mut(|held| {
            if let Some(at) = held.iter().rposition(|&r| r == rank) {
                held.remove(at);
            }
        });
    }
}

#[cfg(not(debug_assertions))]
mod order {
    #[inline(always)]
    pub fn take(_rank: u8) {}
    #[inline(always)]
    pub fn give_back(_rank: u8) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_taken_in_rank_order_pass() {
        let outer: Mutex<u32, 10> = Mutex::new(1);
        let inner: RwLock<u32, 20> = RwLock::new(2);
        let a = outer.lock();
        let b = inner.read();
        assert_eq!(*a + *b, 3);
        drop(a);
        drop(b);
        // Given back out of order: both are free again.
        let _b = inner.write();
        drop(_b);
        let _a = outer.lock();
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(
        expected = "lock order violated: taking a lock of rank 10 while holding one of rank 20"
    )]
    fn a_lock_taken_out_of_order_panics() {
        let outer: Mutex<(), 10> = Mutex::new(());
        let inner: Mutex<(), 20> = Mutex::new(());
        let _inner = inner.lock();
        let _outer = outer.lock();
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "lock order violated")]
    fn two_locks_of_one_rank_at_once_panic() {
        let a: Mutex<(), 20> = Mutex::new(());
        let b: Mutex<(), 20> = Mutex::new(());
        let _a = a.lock();
        let _b = b.lock();
    }
}
