//! Password guessing: when a login's password may be checked.
//!
//! Every login whose password must be checked asks [`Guard::admit`] first
//! and reports the outcome to [`Guard::finish`]. The guard remembers, per IP
//! address and per username, recent failures and the attempts still being
//! checked (so that many connections at once count as many attempts), and
//! spaces the checks: after [`FREE_FAILURES`] strikes, each next check waits
//! [`FIRST_DELAY`] after the previous one started, doubling per strike up to
//! [`MAX_DELAY`]. An attempt that would wait longer than [`MAX_WAIT`] is not
//! checked at all (the caller answers "server busy"). So whatever the
//! concurrency, one address, or one username from anywhere, gets at most one
//! guess per `MAX_DELAY` once it keeps failing.
//!
//! A user who logged in from an address keeps getting in from there without
//! waiting ([`TRUST_MEMORY`]): an attacker behind the same NAT does not lock
//! out the people who share it, and gains nothing from it without their
//! passwords.
//!
//! Decisions only: the caller owns the clock (`now`), the lock and the
//! waiting. Tables are bounded ([`MAX_TRACKED`] keys each).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Strikes (failures plus attempts in progress) that cost nothing extra.
pub const FREE_FAILURES: u32 = 3;
/// The spacing between checks once the free strikes are used: 250 ms,
/// doubling per further strike...
pub const FIRST_DELAY: Duration = Duration::from_millis(250);
/// ...up to 4 s.
pub const MAX_DELAY: Duration = Duration::from_secs(4);
/// An attempt that would wait longer is refused without a check.
pub const MAX_WAIT: Duration = Duration::from_secs(10);
/// Failures older than this are forgotten.
pub const FAILURE_MEMORY: Duration = Duration::from_secs(60);
/// How long a successful login lets the same user in from the same address
/// without waiting.
pub const TRUST_MEMORY: Duration = Duration::from_secs(3600);
/// Addresses, usernames and trusted pairs remembered, each; beyond this the
/// longest quiet is forgotten.
pub const MAX_TRACKED: usize = 10_000;

/// What one address or one username has done lately.
#[derive(Debug, Clone, Copy)]
struct Record {
    failures: u32,
    last_failure: Instant,
    /// Attempts admitted and not finished yet.
    pending: u32,
    /// When the next check may start.
    next_check: Instant,
}

impl Record {
    fn new(now: Instant) -> Record {
        Record {
            failures: 0,
            last_failure: now,
            pending: 0,
            next_check: now,
        }
    }

    /// Recent failures plus attempts in progress.
    fn strikes(&self, now: Instant) -> u32 {
        let recent = if now.duration_since(self.last_failure) < FAILURE_MEMORY {
            self.failures
        } else {
            0
        };
        recent.saturating_add(self.pending)
    }

    /// Nothing worth remembering: no recent failure, nothing in progress.
    fn idle(&self, now: Instant) -> bool {
        self.strikes(now) == 0 && self.next_check <= now
    }
}

/// The spacing a check imposes on the next one, if it is the `strike`-th
/// (counting from 1) in a row.
fn spacing(strike: u32) -> Duration {
    match strike.checked_sub(FREE_FAILURES) {
        None => Duration::ZERO,
        Some(extra) => FIRST_DELAY
            .saturating_mul(1 << extra.min(16))
            .min(MAX_DELAY),
    }
}

/// Records by key, at most [`MAX_TRACKED`].
#[derive(Debug)]
struct Table<K> {
    records: HashMap<K, Record>,
}

impl<K> Default for Table<K> {
    fn default() -> Self {
        Table {
            records: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq + Clone> Table<K> {
    /// The record of `key`, made room for if new; `None` if the table is
    /// full of records in use (the key is then not tracked).
    fn entry(&mut self, key: &K, now: Instant) -> Option<&mut Record> {
        if !self.records.contains_key(key) && self.records.len() >= MAX_TRACKED {
            self.records.retain(|_, r| !r.idle(now));
            if self.records.len() >= MAX_TRACKED {
                let quietest = self
                    .records
                    .iter()
                    .filter(|(_, r)| r.pending == 0)
                    .min_by_key(|(_, r)| r.last_failure)
                    .map(|(k, _)| k.clone())?;
                self.records.remove(&quietest);
            }
        }
        Some(self.records.entry(key.clone()).or_insert(Record::new(now)))
    }
}

/// The guard's memory; one per broker, behind a mutex in `AuthState`.
#[derive(Debug, Default)]
pub struct Guard {
    by_ip: Table<IpAddr>,
    by_user: Table<Arc<str>>,
    /// Successful logins: (address, username) → when.
    trusted: HashMap<(IpAddr, Arc<str>), Instant>,
}

impl Guard {
    /// Admits an attempt by `user` from `ip` at `now`: `Some(t)` to check
    /// its password at `t` (now or later), `None` if it would wait longer
    /// than [`MAX_WAIT`] (not checked, not counted). Every `Some` must be
    /// followed by [`Guard::finish`].
    pub fn admit(&mut self, ip: IpAddr, user: &Arc<str>, now: Instant) -> Option<Instant> {
        let trusted = self
            .trusted
            .get(&(ip, user.clone()))
            .is_some_and(|t| now.duration_since(*t) < TRUST_MEMORY);
        let mut start = now;
        if !trusted {
            for record in [self.by_ip.entry(&ip, now), self.by_user.entry(user, now)]
                .into_iter()
                .flatten()
            {
                start = start.max(record.next_check);
            }
            if start > now + MAX_WAIT {
                return None;
            }
        }
        for record in [self.by_ip.entry(&ip, now), self.by_user.entry(user, now)]
            .into_iter()
            .flatten()
        {
            let strike = record.strikes(now) + 1;
            record.pending += 1;
            if !trusted {
                record.next_check = record.next_check.max(start + spacing(strike));
            }
        }
        Some(start)
    }

    /// The outcome of an admitted attempt: `Some(true)` the password was
    /// right, `Some(false)` wrong, `None` not checked after all (the
    /// connection went away while it waited).
    pub fn finish(&mut self, ip: IpAddr, user: &Arc<str>, outcome: Option<bool>, now: Instant) {
        for record in [
            self.by_ip.records.get_mut(&ip),
            self.by_user.records.get_mut(user),
        ]
        .into_iter()
        .flatten()
        {
            record.pending = record.pending.saturating_sub(1);
            if outcome == Some(false) {
                if now.duration_since(record.last_failure) >= FAILURE_MEMORY {
                    record.failures = 0;
                }
                record.failures = record.failures.saturating_add(1);
                record.last_failure = now;
            }
        }
        let pair = (ip, user.clone());
        match outcome {
            Some(true) => {
                if self.trusted.len() >= MAX_TRACKED && !self.trusted.contains_key(&pair) {
                    self.trusted
                        .retain(|_, t| now.duration_since(*t) < TRUST_MEMORY);
                    if self.trusted.len() >= MAX_TRACKED
                        && let Some(oldest) = self
                            .trusted
                            .iter()
                            .min_by_key(|(_, t)| **t)
                            .map(|(k, _)| k.clone())
                    {
                        self.trusted.remove(&oldest);
                    }
                }
                self.trusted.insert(pair, now);
            }
            Some(false) => {
                self.trusted.remove(&pair);
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    fn user(name: &str) -> Arc<str> {
        Arc::from(name)
    }

    /// One attempt that fails: when its check started.
    fn fail(g: &mut Guard, from: IpAddr, who: &Arc<str>, now: Instant) -> Option<Instant> {
        let start = g.admit(from, who, now)?;
        g.finish(from, who, Some(false), start);
        Some(start)
    }

    #[test]
    fn sequential_failures_are_spaced_then_forgotten() {
        let mut g = Guard::default();
        let alice = user("alice");
        let t0 = Instant::now();
        for _ in 0..FREE_FAILURES - 1 {
            assert_eq!(fail(&mut g, ip(1), &alice, t0), Some(t0));
        }
        // The third strike starts at once and spaces the fourth.
        assert_eq!(fail(&mut g, ip(1), &alice, t0), Some(t0));
        let fourth = fail(&mut g, ip(1), &alice, t0).unwrap();
        assert_eq!(fourth, t0 + FIRST_DELAY);
        let fifth = fail(&mut g, ip(1), &alice, fourth).unwrap();
        assert_eq!(fifth, fourth + FIRST_DELAY * 2);
        // A minute without failures: free again.
        let later = fifth + FAILURE_MEMORY + MAX_DELAY;
        assert_eq!(g.admit(ip(1), &alice, later), Some(later));
    }

    #[test]
    fn concurrent_attempts_count_as_strikes() {
        let mut g = Guard::default();
        let alice = user("alice");
        let t0 = Instant::now();
        // 400 connections at once: each admitted one is a strike before it
        // is checked, so they queue up; those that would wait over
        // MAX_WAIT are refused unchecked.
        let starts: Vec<Instant> = (0..400)
            .filter_map(|_| g.admit(ip(1), &alice, t0))
            .collect();
        assert!(starts.len() < 12, "{} admitted", starts.len());
        assert!(starts.iter().all(|s| *s <= t0 + MAX_WAIT));
        let in_first_second = starts
            .iter()
            .filter(|s| **s < t0 + Duration::from_secs(1))
            .count();
        assert!(
            in_first_second <= FREE_FAILURES as usize + 2,
            "{in_first_second}"
        );
        // Checked and failed, the queue goes on at the slowest pace.
        for s in &starts {
            g.finish(ip(1), &alice, Some(false), *s);
        }
        let last = *starts.last().unwrap();
        let next = g.admit(ip(1), &alice, last).unwrap();
        assert!(next >= last + MAX_DELAY);
    }

    #[test]
    fn a_username_is_guarded_across_addresses() {
        let mut g = Guard::default();
        let alice = user("alice");
        let t0 = Instant::now();
        for n in 0..=FREE_FAILURES as u8 {
            fail(&mut g, ip(n), &alice, t0);
        }
        // A fresh address guessing alice waits; guessing bob it does not.
        assert!(g.admit(ip(99), &alice, t0).unwrap() > t0);
        assert_eq!(g.admit(ip(98), &user("bob"), t0), Some(t0));
    }

    #[test]
    fn a_user_who_logged_in_from_an_address_is_not_held_there() {
        let mut g = Guard::default();
        let (alice, bob) = (user("alice"), user("bob"));
        let t0 = Instant::now();
        let start = g.admit(ip(1), &bob, t0).unwrap();
        g.finish(ip(1), &bob, Some(true), start);
        // Someone at bob's address guesses alice's password.
        for _ in 0..10 {
            fail(&mut g, ip(1), &alice, t0);
        }
        assert_eq!(g.admit(ip(1), &bob, t0), Some(t0), "bob gets in at once");
        g.finish(ip(1), &bob, Some(true), t0);
        assert_ne!(
            g.admit(ip(1), &user("carol"), t0),
            Some(t0),
            "a stranger waits"
        );
        // A wrong password ends the trust.
        g.finish(ip(1), &bob, Some(false), t0);
        assert_ne!(g.admit(ip(1), &bob, t0), Some(t0));
    }

    #[test]
    fn an_attempt_not_checked_is_no_failure() {
        let mut g = Guard::default();
        let alice = user("alice");
        let t0 = Instant::now();
        for _ in 0..10 {
            let start = g.admit(ip(1), &alice, t0).unwrap();
            g.finish(ip(1), &alice, None, start);
        }
        let later = t0 + MAX_WAIT;
        assert_eq!(g.admit(ip(1), &alice, later), Some(later));
    }

    #[test]
    fn tables_are_bounded() {
        let mut g = Guard::default();
        let t0 = Instant::now();
        for i in 0..(MAX_TRACKED as u32 + 50) {
            let who = user(&format!("u{i}"));
            let now = t0 + Duration::from_millis(i.into());
            fail(&mut g, IpAddr::from(i.to_be_bytes()), &who, now);
        }
        assert_eq!(g.by_ip.records.len(), MAX_TRACKED);
        assert_eq!(g.by_user.records.len(), MAX_TRACKED);
    }
}
