//! Push-back: a publisher that fills queues faster than their connections
//! can be written to stops reading until they have room.
//!
//! A session's queue is bounded (`max_queued_messages`, `max_queued_bytes`),
//! and a client that stops reading must not hold up the others: its
//! messages over the bounds are dropped and counted. But when the broker,
//! not the client, is behind (a burst read from publishers faster than the
//! subscriber's connection task got to write it out), dropping would lose
//! messages to a subscriber doing nothing wrong, QoS 1/2 messages their
//! publishers were acknowledged for among them. So a delivery for a
//! connection that keeps up goes over the bounds (up to twice them,
//! [`crate::session::Queued::Over`]), and its publisher, once it has
//! handled the packet, reads nothing more until each such queue has room
//! again; TCP then slows the publishing client.
//!
//! "Keeps up" is judged by the connection's own progress: it took
//! deliveries with everything it had written before gone to the client
//! (`SessionState::took`). A queue that stays over its bounds for
//! [`STALLED_AFTER`] without that is its client's doing: the connection is
//! judged slow (held to the bounds, its excess dropped and counted, nobody
//! waiting for it) until it drains again. So a client that stops reading
//! costs its publishers that one wait, once, and then nothing.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::client_state::ClientState;
use crate::session::{STALLED_AFTER, Session};
use crate::state::BrokerState;

/// The longest a publisher waits in one go, even for connections that keep
/// draining: others publishing to the same queue may keep taking its room,
/// and a client it does not read from cannot be heard (its keep-alive is not
/// judged meanwhile).
const LONGEST_WAIT: Duration = Duration::from_secs(1);

/// The queues a publisher waits for.
#[derive(Debug)]
pub struct Pushback {
    waited: Vec<Waited>,
    started: Instant,
}

/// One queue waited for.
#[derive(Debug)]
struct Waited {
    session: Arc<Session>,
    /// How often its connection had drained when last looked at.
    drains: Option<u32>,
    /// When that last changed.
    since: Instant,
}

impl ClientState {
    /// This connection's messages went over the bounds of `over`'s queues
    /// ([`crate::router::Routed::over`]): it reads nothing more until they
    /// have room. Its own session is not waited for: it drains only as this
    /// connection reads its acknowledgements.
    pub fn push_back(&mut self, over: Vec<Arc<Session>>) {
        let now = Instant::now();
        for session in over {
            if Arc::ptr_eq(&session, &self.session) {
                continue;
            }
            let extras = self.extras.get_or_insert_with(Default::default);
            let pushback = extras.pushback.get_or_insert_with(|| Pushback {
                waited: Vec::new(),
                started: now,
            });
            if !pushback
                .waited
                .iter()
                .any(|w| Arc::ptr_eq(&w.session, &session))
            {
                pushback.waited.push(Waited {
                    session,
                    drains: None,
                    since: now,
                });
            }
        }
    }

    /// Whether it waits for queues.
    pub fn pushed_back(&self) -> bool {
        self.extras.as_ref().is_some_and(|e| e.pushback.is_some())
    }

    /// It waited them out.
    pub fn pushback_done(&mut self) {
        if let Some(extras) = self.extras.as_mut() {
            extras.pushback = None;
        }
    }
}

impl Pushback {
    /// Looks at each queue waited for, and lets go of those with room, or
    /// whose connections went away or were judged slow (here, after
    /// [`STALLED_AFTER`] without draining). Returns when to look again
    /// at the latest; `None` when there is nothing left to wait for.
    fn settle(&mut self, state: &BrokerState, now: Instant) -> Option<Instant> {
        if now >= self.started + LONGEST_WAIT {
            return None;
        }
        self.waited.retain_mut(|w| {
            let mut st = w.session.lock();
            let limits = state.queue_limits_of(&w.session);
            match st.still_over(w.session.is_online(), limits) {
                None => false,
                Some(drains) if Some(drains) != w.drains => {
                    w.drains = Some(drains);
                    w.since = now;
                    true
                }
                Some(_) if now >= w.since + STALLED_AFTER => {
                    st.mark_slow();
                    drop(st);
                    crate::throttled!(
                        info,
                        "slow subscriber",
                        client_id = %w.session.client_id,
                        "a client is not reading its messages fast enough: over max_queued_messages or max_queued_bytes, the messages for it are dropped (counted in $SYS/broker/limits/queue/dropped)"
                    );
                    false
                }
                Some(_) => true,
            }
        });
        let stalled = self.waited.iter().map(|w| w.since + STALLED_AFTER).min()?;
        Some(stalled.min(self.started + LONGEST_WAIT))
    }
}

/// Waits until `pushback` has nothing left to wait for. `None`: returns at
/// once (the connection's main loop only polls this while it waits).
pub async fn wait(state: &BrokerState, pushback: Option<&mut Pushback>) {
    let Some(pushback) = pushback else {
        return;
    };
    loop {
        // Registered before looking, so room made meanwhile is not missed.
        let room = state.room.notified();
        tokio::pin!(room);
        room.as_mut().enable();
        let Some(deadline) = pushback.settle(state, Instant::now()) else {
            return;
        };
        tokio::select! {
            () = room => {}
            () = tokio::time::sleep_until(deadline) => {}
        }
    }
}
