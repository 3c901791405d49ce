//! Wills published once cluster-wide, also when the node holding the
//! connection dies.
//!
//! A node publishes its clients' wills itself, as one broker does. So that
//! a node's death does not take its clients' wills with it, every will of
//! a connected client (and every will waiting out its delay) is also kept
//! in the JetStream key-value bucket `<cluster>-wills` (key: the SHA-256 of
//! the client id; value: the holding node's name, the Will Delay Interval,
//! the username and the will as a message record), put when the client
//! connects and deleted when the will is published or no longer applies.
//!
//! Every node follows the bucket (which node holds which will) and, every
//! second, asks each other node that holds wills whether it runs (the
//! hand-over subject: NATS answers "no responders" at once for a node whose
//! connection is gone). For a node that is gone it publishes that node's
//! wills, each after its delay unless its client connected again meanwhile
//! (which replaced the entry); each will is taken by a compare-and-delete
//! of the entry it saw, so of several nodes doing this, and of a node that
//! restarted and finds its own wills from before, one publishes it. A node
//! that starts publishes the wills left under its own name by its previous
//! run in the same way.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use async_nats::Client;
use async_nats::client::RequestErrorKind;
use async_nats::jetstream::kv;
use bytes::{Buf, BufMut, Bytes};
use tern_codec::ByteStr;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::message::Message;
use crate::registry;
use crate::state::BrokerState;
use crate::store::records::{self, Clock};

use super::{handover, next_or_stop};

/// How often a node looks for nodes that are gone.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// A client id's key in the bucket.
pub fn key(client_id: &str) -> String {
    handover::key(client_id)
}

/// A will as kept in the bucket.
pub struct Kept {
    pub delay_secs: u32,
    pub username: Option<Arc<str>>,
    /// Without an expiry deadline: the Message Expiry Interval runs from
    /// when it is published.
    pub message: Arc<Message>,
}

/// `will` of a client connected to `node`, as kept (its expiry, if any,
/// runs from when it is published).
pub fn encode(node: &str, will: &Message, delay_secs: u32, username: Option<&str>) -> Bytes {
    let mut out = Vec::new();
    put(&mut out, node.as_bytes());
    out.put_u32(delay_secs);
    match username {
        Some(name) => {
            out.put_u8(1);
            put(&mut out, name.as_bytes());
        }
        None => out.put_u8(0),
    }
    let will = will.expiring_from(None);
    out.extend_from_slice(&records::encode_message(&will, &Clock::now()));
    Bytes::from(out)
}

fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    out.put_u32(bytes.len() as u32);
    out.put_slice(bytes);
}

/// A kept will; `None` if it cannot be read.
pub fn decode(mut value: &[u8]) -> Option<Kept> {
    let node = take(&mut value)?;
    std::str::from_utf8(node).ok()?;
    (value.len() >= 5).then_some(())?;
    let delay_secs = value.get_u32();
    let username = match value.get_u8() {
        0 => None,
        _ => Some(Arc::from(std::str::from_utf8(take(&mut value)?).ok()?)),
    };
    let message = records::decode_message(value, &Clock::now()).ok()??;
    Some(Kept {
        delay_secs,
        username,
        message,
    })
}

fn take<'a>(value: &mut &'a [u8]) -> Option<&'a [u8]> {
    (value.len() >= 4).then_some(())?;
    let len = value.get_u32() as usize;
    (value.len() >= len).then_some(())?;
    let (head, rest) = value.split_at(len);
    *value = rest;
    Some(head)
}

/// The node a kept will belongs to, without decoding the rest.
fn node_of(value: &[u8]) -> Option<String> {
    let mut value = value;
    let node = take(&mut value)?;
    String::from_utf8(node.to_vec()).ok()
}

/// Follows the bucket and publishes the wills of nodes that are gone (and
/// those this node's previous run left).
pub async fn watch(
    wills: kv::Store,
    client: Client,
    cluster: String,
    node: String,
    state: Weak<BrokerState>,
    tasks: TaskTracker,
    stop: CancellationToken,
) {
    let mut entries = match wills.watch_all().await {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!(error = %e, "cluster: cannot follow the wills of other nodes; those of a node that dies are not published");
            return;
        }
    };
    let mut held = Held::default();
    let mut check = tokio::time::interval(CHECK_EVERY);
    loop {
        tokio::select! {
            entry = next_or_stop(&mut entries, &stop) => match entry {
                Some(Ok(entry)) => {
                    if held.apply(entry) {
                        // Left by this node's previous run: its connections
                        // are gone.
                        reap(&wills, held.keys_of(&node), &state, &tasks, &stop);
                    }
                }
                Some(Err(e)) => {
                    crate::throttled!(warn, "cluster wills watch", error = %e, "cluster: following the wills of other nodes failed; it resumes");
                }
                None => return,
            },
            _ = check.tick(), if held.caught_up => {
                for other in held.other_nodes(&node) {
                    if gone(&client, &cluster, &other).await {
                        tracing::warn!(node = %other, "cluster: node {other} is gone; publishing the wills of its clients");
                        reap(&wills, held.keys_of(&other), &state, &tasks, &stop);
                        held.reaped.insert(other);
                    }
                }
            }
        }
    }
}

/// Which node holds each kept will, as the bucket says.
#[derive(Default)]
struct Held {
    /// Key -> node.
    nodes: HashMap<String, String>,
    /// Nodes found gone whose wills were taken.
    reaped: HashSet<String>,
    /// Whether the bucket's entries at the start were all seen.
    caught_up: bool,
}

impl Held {
    /// Takes a change; true when it was the last of those at the start.
    fn apply(&mut self, entry: kv::Entry) -> bool {
        match (entry.operation, node_of(&entry.value)) {
            (kv::Operation::Put, Some(node)) => {
                // A node found gone that holds wills again runs.
                self.reaped.remove(&node);
                self.nodes.insert(entry.key, node);
            }
            _ => {
                self.nodes.remove(&entry.key);
            }
        }
        let first = entry.delta == 0 && !self.caught_up;
        self.caught_up |= entry.delta == 0;
        first
    }

    fn keys_of(&self, node: &str) -> Vec<String> {
        let of_node = self.nodes.iter().filter(|(_, n)| *n == node);
        of_node.map(|(k, _)| k.clone()).collect()
    }

    /// The other nodes holding wills, not yet found gone.
    fn other_nodes(&self, node: &str) -> HashSet<String> {
        let others = self.nodes.values().filter(|n| *n != node);
        others
            .filter(|n| !self.reaped.contains(*n))
            .cloned()
            .collect()
    }
}

/// Whether `node` no longer runs: NATS says no one answers its subject.
async fn gone(client: &Client, cluster: &str, node: &str) -> bool {
    let asking = client.request(handover::subject(cluster, node), Bytes::new());
    match tokio::time::timeout(Duration::from_secs(2), asking).await {
        Ok(Err(e)) => e.kind() == RequestErrorKind::NoResponders,
        _ => false,
    }
}

/// Publishes the wills under `keys`, each after its delay, if it is still
/// the one seen then.
fn reap(
    wills: &kv::Store,
    keys: Vec<String>,
    state: &Weak<BrokerState>,
    tasks: &TaskTracker,
    stop: &CancellationToken,
) {
    for key in keys {
        let (wills, state, stop) = (wills.clone(), state.clone(), stop.clone());
        tasks.spawn(async move {
            let Ok(Some(entry)) = wills.entry(key.as_str()).await else {
                return;
            };
            if entry.operation != kv::Operation::Put {
                return;
            }
            let Some(kept) = decode(&entry.value) else {
                tracing::warn!(%key, "cluster: a kept will could not be read; not published");
                return;
            };
            let delay = Duration::from_secs(u64::from(kept.delay_secs));
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = stop.cancelled() => return,
            }
            // Taken by whoever deletes the entry seen; a client that came
            // back replaced it.
            let taken = wills.delete_expect_revision(key.as_str(), Some(entry.revision));
            if taken.await.is_err() {
                return;
            }
            if let Some(state) = state.upgrade() {
                let message = kept.message.expiring_from(Some(Instant::now()));
                registry::publish_will(&state, message, kept.username.as_ref());
            }
        });
    }
}

/// What to do with a client's kept will.
pub enum Keep {
    /// It connected here with this will (as kept).
    Put(Bytes),
    /// It connected here without one.
    Delete,
    /// Its will was published here, or its connection here ended without
    /// it: delete the copy if it is still this node's.
    ForgetOwn,
}

/// Keeps or forgets this node's clients' wills in the bucket, in the order
/// they were asked for (a connect's will, then its end), apart from the
/// message path.
pub async fn keep(
    wills: kv::Store,
    node: String,
    mut changes: tokio::sync::mpsc::Receiver<(String, Keep)>,
    stop: CancellationToken,
) {
    loop {
        let change = tokio::select! {
            change = changes.recv() => change,
            () = stop.cancelled() => None,
        };
        let Some((key, change)) = change else {
            break;
        };
        let kept = match change {
            Keep::Put(will) => wills
                .put(key.as_str(), will)
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            Keep::Delete => wills.delete(key.as_str()).await.map_err(|e| e.to_string()),
            Keep::ForgetOwn => {
                forget(&wills, &node, &key).await;
                Ok(())
            }
        };
        if let Err(error) = kept {
            crate::throttled!(warn, "cluster will not kept", %error, "cluster: a client's will could not be kept in NATS; it is not published if this node dies");
        }
    }
}

/// Whether `client_id`'s will kept under this node's name may be published
/// now: taken by deleting its entry. `false` if another node took it (it
/// took this node for gone) or the client connected again elsewhere.
pub async fn take_own(wills: &kv::Store, node: &str, client_id: &ByteStr) -> bool {
    let key = key(client_id);
    match wills.entry(key.as_str()).await {
        Ok(Some(entry)) if entry.operation == kv::Operation::Put => {
            if node_of(&entry.value).as_deref() != Some(node) {
                return false;
            }
            let taking = wills.delete_expect_revision(key.as_str(), Some(entry.revision));
            taking.await.is_ok()
        }
        Ok(_) => false,
        // NATS unreachable: better published here than never.
        Err(_) => true,
    }
}

/// Deletes `key`'s entry if it is this node's: the will was published or
/// no longer applies.
pub async fn forget(wills: &kv::Store, node: &str, key: &str) {
    let Ok(Some(entry)) = wills.entry(key).await else {
        return;
    };
    if entry.operation == kv::Operation::Put && node_of(&entry.value).as_deref() == Some(node) {
        let _ = wills
            .delete_expect_revision(key, Some(entry.revision))
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_will_reads_back_and_damage_is_refused() {
        let will = Message::broker_retained("wills/dev".into(), "gone".into());
        let value = encode("node-1", &will, 30, Some("alice"));
        let kept = decode(&value).expect("reads");
        assert_eq!(kept.delay_secs, 30);
        assert_eq!(kept.username.as_deref(), Some("alice"));
        assert_eq!(kept.message.topic.as_str(), "wills/dev");
        assert_eq!(node_of(&value).as_deref(), Some("node-1"));
        for cut in 0..value.len() {
            assert!(decode(&value[..cut]).is_none(), "cut {cut}");
        }
        for i in 0..value.len() {
            let mut bad = value.to_vec();
            bad[i] ^= 0xFF;
            let _ = decode(&bad);
        }
    }
}
