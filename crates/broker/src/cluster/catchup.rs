//! After this node's NATS link drops and comes back (its NATS server died,
//! and the client moved to another), the stored messages it missed
//! meanwhile are read from the messages stream and routed to its sessions.
//!
//! Live copies reach a node only while its link is up: what other nodes
//! published in between went to the stream, not here. On the way down the
//! node notes where to resume: the earliest stream place among the live
//! copies that arrived in the last moments before (copies of messages
//! stored just before can still be on their way, in any order across
//! publishing nodes), or past the highest seen. Once the link is back it
//! reads the stream from there to its end at that time with an ordered
//! consumer, and routes what it has not routed yet: copies already routed
//! are known by their ids ([`Recent`]), its own messages by their origin.
//! Shared groups are not replayed (NATS picked one node for each message;
//! that node may be this one or not): their messages of the gap are lost,
//! as on a NATS core link.

use std::sync::{Arc, Weak};
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::lock::{Mutex, rank};
use crate::router::{self, Scope};
use crate::state::BrokerState;
use crate::store::records::{self, Clock};

use super::fabric::Recent;
use super::publisher::round_trip;
use super::storage;
use super::tern_id;

/// How long a replay waits at most for the stream to answer (it may be
/// electing a leader, if its server was the one that died).
const PATIENCE: Duration = Duration::from_secs(30);

/// How long a replay reads on past the stream's end.
const OVERLAP: Duration = Duration::from_secs(2);

/// The NATS link of this node, as its client reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    Down,
    Up,
}

/// The task (see the module docs).
pub(super) struct CatchUp {
    pub(super) jetstream: jetstream::Context,
    pub(super) cluster: String,
    /// This run's origin: its own messages are not routed again.
    pub(super) origin: String,
    pub(super) recent: Arc<Mutex<Recent, { rank::FABRIC }>>,
    pub(super) links: mpsc::UnboundedReceiver<Link>,
}

impl CatchUp {
    pub(super) async fn run(mut self, state: Weak<BrokerState>, stop: CancellationToken) {
        // Where to resume, once the link went down.
        let mut from: Option<u64> = None;
        loop {
            let link = tokio::select! {
                link = self.links.recv() => link,
                () = stop.cancelled() => None,
            };
            let Some(link) = link else {
                break;
            };
            match (link, from) {
                (Link::Down, None) => from = Some(self.recent.lock().resume_from()),
                (Link::Up, Some(start)) => {
                    from = None;
                    tokio::select! {
                        replayed = self.replay(start, &state) => match replayed {
                            Ok(0) => {}
                            Ok(n) => tracing::info!(messages = n, from = start, "cluster: routed the stored messages missed while NATS was unreachable"),
                            Err(e) => tracing::warn!(error = %e, from = start, "cluster: cannot read the messages missed while NATS was unreachable; they are lost for this node's sessions"),
                        },
                        () = stop.cancelled() => break,
                    }
                }
                _ => {}
            }
        }
    }

    /// Routes the stored messages from place `start` to the stream's end
    /// now that this node has not routed; how many.
    async fn replay(&self, start: u64, state: &Weak<BrokerState>) -> Result<usize, String> {
        let name = format!("{}-messages", self.cluster);
        // This node's subscriptions, made again on the new link, are in
        // place once a request sent after them comes back.
        round_trip(
            &self.jetstream.client(),
            format!("{}.barrier", self.cluster),
        )
        .await;
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let (stream, end) = loop {
            let attempt = async {
                let mut stream = self.jetstream.get_stream(&name).await?;
                let end = stream.info().await?.state.last_sequence;
                Ok::<_, async_nats::Error>((stream, end))
            };
            match attempt.await {
                Ok(found) => break found,
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e.to_string()),
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        };
        if end < start {
            return Ok(0);
        }
        let config = consumer::pull::OrderedConfig {
            filter_subject: format!("{}.s.>", self.cluster),
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: start,
            },
            ..Default::default()
        };
        let consumer = stream
            .create_consumer(config)
            .await
            .map_err(|e| e.to_string())?;
        let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
        // Read to the end, then on for a while: a message stored right
        // after the end was read can have been sent live before the other
        // NATS servers knew of this node's subscriptions again.
        let mut overlap = None;
        let mut routed = 0;
        loop {
            let next = futures_util::StreamExt::next(&mut messages);
            let message = match overlap {
                None => next.await,
                Some(until) => match tokio::time::timeout_at(until, next).await {
                    Ok(message) => message,
                    Err(_) => break,
                },
            };
            let Some(message) = message else {
                break;
            };
            let message = message.map_err(|e| e.to_string())?;
            let place = message.info().map_err(|e| e.to_string())?.stream_sequence;
            if self.missed(&message) {
                let Some(state) = state.upgrade() else {
                    break;
                };
                routed += route(&state, &message.payload);
            }
            if place >= end && overlap.is_none() {
                overlap = Some(tokio::time::Instant::now() + OVERLAP);
            }
        }
        Ok(routed)
    }

    /// Whether a stored message is one this node has not routed: another
    /// node's, and not seen live.
    fn missed(&self, message: &async_nats::Message) -> bool {
        // A probe of whether the stream takes writes.
        if message.subject.as_str() == storage::probe_subject(&self.cluster) {
            return false;
        }
        match tern_id(message) {
            Some(id) => {
                let own = id
                    .strip_prefix(self.origin.as_str())
                    .is_some_and(|rest| rest.starts_with(':'));
                !own && self.recent.lock().first_time(id)
            }
            None => false,
        }
    }
}

/// Routes a stored record to this node's non-shared subscriptions: 1 if it
/// could be read and had not expired.
fn route(state: &BrokerState, record: &[u8]) -> usize {
    match records::decode_message(record, &Clock::now()) {
        Ok(Some(message)) => {
            router::publish_remote(state, message, Scope::Direct);
            1
        }
        Ok(None) => 0,
        Err(e) => {
            crate::throttled!(warn, "cluster message unreadable", error = %e, "cluster: a stored message could not be read; dropped");
            0
        }
    }
}
