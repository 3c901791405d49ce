//! Throttled log lines for what any client can cause at will: refused
//! logins, malformed or oversized packets, refused operations. One line per
//! event is what an operator wants when something goes wrong once; a
//! misconfigured fleet reconnecting every second, or someone hammering the
//! port, must not fill the disk with them. Each kind of event logs at most
//! [`BURST`] lines per [`WINDOW_SECS`], then counts what it holds back and
//! says so with the first line of a later window.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

/// Lines of one kind logged per window.
pub const BURST: u32 = 20;
/// The window, in seconds.
pub const WINDOW_SECS: u64 = 10;

/// A `tracing` event throttled at its call site:
/// `throttled!(info, "refusing CONNECT", %peer, ?reason, "refusing CONNECT")`
/// logs like `tracing::info!(%peer, ?reason, "refusing CONNECT")`, at most
/// `BURST` times per window; the label names the kind in the line that
/// reports held-back events.
#[macro_export]
macro_rules! throttled {
    ($level:ident, $what:expr, $($event:tt)+) => {{
        static THROTTLE: $crate::log_throttle::Throttle = $crate::log_throttle::Throttle::new($what);
        if THROTTLE.allow() {
            ::tracing::$level!($($event)+);
        }
    }};
}

/// The throttle of one kind of event (see [`throttled!`](crate::throttled)).
pub struct Throttle {
    /// What the lines are about, for the line that reports held-back ones.
    what: &'static str,
    /// The window the counts below belong to (0: none yet).
    window: AtomicU64,
    logged: AtomicU32,
    held_back: AtomicU64,
}

impl Throttle {
    pub const fn new(what: &'static str) -> Throttle {
        Throttle {
            what,
            window: AtomicU64::new(0),
            logged: AtomicU32::new(0),
            held_back: AtomicU64::new(0),
        }
    }

    /// Whether to log one more event now.
    pub fn allow(&self) -> bool {
        static EPOCH: OnceLock<Instant> = OnceLock::new();
        let window = EPOCH.get_or_init(Instant::now).elapsed().as_secs() / WINDOW_SECS + 1;
        self.allow_in(window)
    }

    /// [`Throttle::allow`] in window number `window` (counted from 1).
    fn allow_in(&self, window: u64) -> bool {
        let current = self.window.load(Ordering::Relaxed);
        if window > current
            && self
                .window
                .compare_exchange(current, window, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            // The first event of a new window (a racing one may slip
            // through with the old counts: harmless).
            self.logged.store(0, Ordering::Relaxed);
            let held_back = self.held_back.swap(0, Ordering::Relaxed);
            if held_back > 0 {
                tracing::info!(
                    what = self.what,
                    held_back,
                    "{held_back} more \"{}\" lines were not logged (at most {BURST} every {WINDOW_SECS} s)",
                    self.what
                );
            }
        }
        if self.logged.fetch_add(1, Ordering::Relaxed) < BURST {
            true
        } else {
            self.held_back.fetch_add(1, Ordering::Relaxed);
            false
        }
    }

    /// Events held back in the current window.
    #[cfg(test)]
    fn held_back(&self) -> u64 {
        self.held_back.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_per_window_then_a_count_of_the_rest() {
        let throttle = Throttle::new("test");
        let allowed = (0..50).filter(|_| throttle.allow_in(1)).count();
        assert_eq!(allowed, BURST as usize);
        assert_eq!(throttle.held_back(), 50 - u64::from(BURST));
        // A later window starts afresh (and reports the 30 held back).
        assert!(throttle.allow_in(3));
        assert_eq!(throttle.held_back(), 0);
        let allowed = 1 + (0..50).filter(|_| throttle.allow_in(3)).count();
        assert_eq!(allowed, BURST as usize);
        // An older window number (a racing thread's) does not reset it.
        assert!(!throttle.allow_in(2));
    }
}
