//! The task that owns the NATS connection's outgoing side: what the seams
//! ask of NATS goes through its [`Outbox`], in order.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_nats::Client;
use async_nats::client::RequestErrorKind;
use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::lock::{Mutex, rank};
use crate::state::BrokerState;

use super::fabric::{Recent, Serve, receive};
use super::{Command, headers, subject};

/// How long a SUBACK waits at most for NATS to confirm the node's new
/// subscriptions.
const APPLY_WAIT: Duration = Duration::from_secs(2);

/// The task that owns the NATS connection's outgoing side.
pub(super) struct Publisher {
    /// The ids of the messages routed here lately (shared with the
    /// follower of the messages stream).
    pub(super) recent: Arc<Mutex<Recent, { rank::FABRIC }>>,
    pub(super) client: Client,
    pub(super) jetstream: async_nats::jetstream::Context,
    pub(super) inbox: mpsc::Receiver<Command>,
    /// Changes the cluster must not miss, served before messages.
    pub(super) changes: mpsc::UnboundedReceiver<Command>,
    pub(super) node: String,
    pub(super) applied: Arc<watch::Sender<u64>>,
    /// A subject no one subscribes to, for [`round_trip`].
    pub(super) barrier: String,
}

impl Publisher {
    pub(super) async fn run(
        mut self,
        state: Weak<BrokerState>,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) {
        let mut subscriptions: HashMap<String, CancellationToken> = HashMap::new();
        let mut groups: HashMap<Arc<str>, CancellationToken> = HashMap::new();
        let direct = Serve::Direct(self.recent.clone());
        loop {
            let command = tokio::select! {
                biased;
                () = shutdown.cancelled() => None,
                command = self.changes.recv() => command,
                command = self.inbox.recv() => command,
            };
            let Some(command) = command else {
                break;
            };
            match command {
                Command::Publish(subject, headers, payload) => {
                    let published = self.client.publish_with_headers(subject, headers, payload);
                    if let Err(e) = published.await {
                        crate::throttled!(warn, "cluster publish failed", error = %e, "cluster: a message or claim for other nodes was not published");
                    }
                }
                Command::Retain(subject, origin, record) => {
                    let stored =
                        self.jetstream
                            .publish_with_headers(subject, headers(&origin), record);
                    // The stream's acknowledgement is awaited apart, not to
                    // hold up what follows: a PUBACK does not yet promise
                    // other nodes have the change, but a lost one is told.
                    match stored.await {
                        Ok(acked) => {
                            tasks.spawn(async move {
                                if let Err(e) = acked.await {
                                    retain_failed(&e);
                                }
                            });
                        }
                        Err(e) => retain_failed(&e),
                    }
                }
                Command::Subscribe(pattern) => {
                    let stop = shutdown.child_token();
                    let subscribing = self.client.subscribe(pattern.clone());
                    if self.serve(subscribing.await, &pattern, &direct, &state, &tasks, &stop) {
                        subscriptions.insert(pattern, stop);
                    }
                }
                Command::Unsubscribe(pattern) => {
                    if let Some(stop) = subscriptions.remove(&pattern) {
                        stop.cancel();
                    }
                }
                Command::Join(key, patterns) => {
                    let stop = shutdown.child_token();
                    let queue = subject::token(&key);
                    let group = Serve::Group(key.clone(), queue.clone());
                    for pattern in patterns {
                        let subscribing =
                            self.client.queue_subscribe(pattern.clone(), queue.clone());
                        self.serve(subscribing.await, &pattern, &group, &state, &tasks, &stop);
                    }
                    groups.insert(key, stop);
                }
                Command::Leave(key) => {
                    if let Some(stop) = groups.remove(&key) {
                        stop.cancel();
                    }
                }
                // Apart, not to hold up the messages queued behind it: the
                // server answers requests in order, so an answer to this one
                // means every subscription before it is in place.
                Command::Applied(ticket) => {
                    let (client, barrier) = (self.client.clone(), self.barrier.clone());
                    let applied = self.applied.clone();
                    tasks.spawn(async move {
                        if !round_trip(&client, barrier).await {
                            crate::throttled!(warn, "cluster subscribe unconfirmed", "cluster: NATS did not confirm new subscriptions in time; SUBACKs go out without it");
                        }
                        applied.send_if_modified(|last| {
                            let newer = ticket > *last;
                            *last = (*last).max(ticket);
                            newer
                        });
                    });
                }
            }
        }
        let _ = self.client.flush().await;
        tracing::debug!(node = %self.node, "left the cluster");
    }

    /// Starts routing what a new NATS subscription receives, as `serve`
    /// says, until `stop`; false (logged) if it could not be made.
    fn serve(
        &self,
        subscribed: Result<async_nats::Subscriber, async_nats::SubscribeError>,
        pattern: &str,
        serve: &Serve,
        state: &Weak<BrokerState>,
        tasks: &TaskTracker,
        stop: &CancellationToken,
    ) -> bool {
        match subscribed {
            Ok(subscriber) => {
                tasks.spawn(receive(
                    subscriber,
                    state.clone(),
                    serve.clone(),
                    stop.clone(),
                ));
                true
            }
            Err(e) => {
                tracing::warn!(%pattern, error = %e, "cluster: cannot subscribe; messages from other nodes to it are missed");
                false
            }
        }
    }
}

/// Logs a retained change the cluster's stream did not take (its servers
/// were electing a leader, or unreachable).
fn retain_failed(error: &dyn std::fmt::Display) {
    crate::throttled!(warn, "cluster retain failed", %error, "cluster: a retained message change was not stored for other nodes; they keep the previous value until the topic changes again");
}

/// Whether the NATS server answered a request sent after everything before
/// it on `client` (a flush only writes to the socket): then it has this
/// node's subscriptions, and routes other clients' messages to them.
/// Nothing answers `barrier`: NATS's "no responders" is the answer. A NATS
/// link that is down does not hold SUBACKs longer than [`APPLY_WAIT`].
pub(super) async fn round_trip(client: &Client, barrier: String) -> bool {
    let asking = client.request(barrier, Bytes::new());
    match tokio::time::timeout(APPLY_WAIT, asking).await {
        Ok(Ok(_)) => true,
        Ok(Err(e)) => e.kind() == RequestErrorKind::NoResponders,
        Err(_) => false,
    }
}
