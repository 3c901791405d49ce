//! The event stream: incoming messages and connection events, and the queue
//! through which the event loop feeds it.
//!
//! The channel to [`Events`] is bounded. When the application stops reading,
//! the event loop parks a few events in [`EventQueue::pending`] and stops
//! reading the socket until there is room again: backpressure reaches the
//! broker through TCP instead of the client's memory growing without bound.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use tokio::sync::mpsc;

use crate::error::DisconnectReason;

/// Capacity of the channel between the event loop and [`Events`].
pub(crate) const EVENT_CAPACITY: usize = 1024;
/// Events the loop holds back while the channel is full, before it stops
/// reading the socket.
const PENDING_LIMIT: usize = 32;

/// A message received from the broker (topic alias already resolved).
pub type Received = tern_codec::Publish;

/// What the event stream yields. Non-exhaustive: end a `match` with a `_`
/// arm, so a later version can report new kinds of events without breaking
/// you.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    Message(Received),
    /// The connection was lost or closed by the broker. With reconnect on, a
    /// `Reconnected` follows when it is back; otherwise the stream ends after this.
    Disconnected {
        reason: DisconnectReason,
    },
    /// Reconnected (subscriptions renewed if the session was not present).
    Reconnected {
        session_present: bool,
    },
}

/// Incoming messages and connection events, in arrival order.
///
/// Read it with [`Events::next`], or as a [`Stream`] (the `futures_core`
/// trait that `futures::StreamExt`, `tokio_stream::StreamExt` and others
/// extend), so stream combinators and `select!` work on it. Either way it
/// ends (`None`) once the connection is closed for good, and stays ended.
///
/// Keep reading it: once about a thousand events are unread, the client
/// stops reading from the socket (QoS 1/2 acknowledgements then wait too)
/// until there is room again. Dropping it discards further events.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let broker = tern_broker::Broker::start(tern_broker::Config {
/// #     bind: "127.0.0.1:0".parse()?,
/// #     persistence: false,
/// #     ..Default::default()
/// # }).await?;
/// # let port = broker.local_addr().port();
/// use futures_util::StreamExt;
/// use tern_client::{Client, ConnectOptions, Event, Message, QoS, ReasonCode};
///
/// let (client, events, _) = Client::connect(ConnectOptions::new("127.0.0.1", port)).await?;
/// client.subscribe("house/+/temp", QoS::AtLeastOnce).await?;
/// for reading in ["20.5", "21.0"] {
///     client.publish(Message::new("house/hall/temp", reading, QoS::AtLeastOnce)).await?;
/// }
/// let readings: Vec<String> = events
///     .filter_map(|event| async move {
///         match event {
///             Event::Message(m) => Some(String::from_utf8_lossy(&m.payload).into_owned()),
///             _ => None, // connection events
///         }
///     })
///     .take(2)
///     .collect()
///     .await;
/// assert_eq!(readings, ["20.5", "21.0"]);
/// client.disconnect(ReasonCode::Success).await?;
/// # broker.shutdown().await;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Events {
    pub(crate) rx: mpsc::Receiver<Event>,
}

impl Events {
    /// The next event; `None` once the connection is closed for good.
    ///
    /// The same as `StreamExt::next`, without importing a trait.
    pub async fn next(&mut self) -> Option<Event> {
        self.rx.recv().await
    }
}

/// The channel's own polling: no buffering of its own, so `next()` and the
/// stream can be mixed freely. Once the loop has dropped its sender and the
/// channel is drained, every poll answers `None`.
impl Stream for Events {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.rx.poll_recv(cx)
    }
}

/// The event loop's side of the stream.
#[derive(Debug)]
pub(crate) struct EventQueue {
    pub(crate) tx: mpsc::Sender<Event>,
    /// Events produced while the channel was full, oldest first.
    pub(crate) pending: VecDeque<Event>,
    /// The application dropped [`Events`]: events are discarded from now on.
    pub(crate) closed: bool,
}

impl EventQueue {
    pub(crate) fn new(tx: mpsc::Sender<Event>) -> Self {
        EventQueue {
            tx,
            pending: VecDeque::new(),
            closed: false,
        }
    }

    /// Queues an event behind any pending ones, or sends it straight away.
    pub(crate) fn push(&mut self, event: Event) {
        if self.closed {
            return;
        }
        if self.pending.is_empty() {
            match self.tx.try_send(event) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(event)) => self.pending.push_back(event),
                Err(mpsc::error::TrySendError::Closed(_)) => self.closed = true,
            }
        } else {
            self.pending.push_back(event);
        }
    }

    /// Whether the loop may produce more events (read the socket).
    pub(crate) fn has_room(&self) -> bool {
        self.pending.len() < PENDING_LIMIT
    }

    /// Moves pending events into the channel while it has room. Called when
    /// a `reserve` on [`EventQueue::tx`] finished: `open` is false if it
    /// failed because the application dropped [`Events`]. The loop drops the
    /// permit first (it borrows `tx`); being the only sender, the slot it
    /// freed is still there for `try_send`.
    pub(crate) fn on_room(&mut self, open: bool) {
        if !open {
            self.closed = true;
            self.pending.clear();
            return;
        }
        while let Some(event) = self.pending.pop_front() {
            match self.tx.try_send(event) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(event)) => {
                    self.pending.push_front(event);
                    break;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.closed = true;
                    self.pending.clear();
                }
            }
        }
    }

    /// Sends every pending event, waiting for the application to read them;
    /// used once the connection is closed for good.
    pub(crate) async fn flush(&mut self) {
        while let Some(event) = self.pending.pop_front() {
            if self.tx.send(event).await.is_err() {
                self.closed = true;
                self.pending.clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lost() -> Event {
        Event::Disconnected {
            reason: DisconnectReason::KeepAliveTimeout,
        }
    }

    #[tokio::test]
    async fn full_channel_parks_events_and_limits_reading() {
        let (tx, mut rx) = mpsc::channel(1);
        let mut q = EventQueue::new(tx);
        q.push(lost());
        for _ in 0..PENDING_LIMIT {
            assert!(q.has_room());
            q.push(lost());
        }
        assert!(!q.has_room());
        assert!(rx.recv().await.is_some());
        let open = q.tx.reserve().await.is_ok();
        q.on_room(open);
        assert_eq!(q.pending.len(), PENDING_LIMIT - 1);
        assert!(q.has_room());
        drop(rx);
        q.on_room(false);
        assert!(q.closed && q.pending.is_empty());
    }

    #[tokio::test]
    async fn dropped_receiver_discards() {
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let mut q = EventQueue::new(tx);
        q.push(lost());
        assert!(q.closed);
        q.push(lost());
        assert!(q.pending.is_empty());
    }
}
