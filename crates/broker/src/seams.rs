//! The seams a distributed broker plugs into.
//!
//! A single node routes, owns sessions, keeps retained messages and persists
//! on its own. A cluster of nodes needs each of those to reach beyond the
//! process, so each sits behind one narrow interface that the single node
//! implements in memory (or in its redb file), and another implementation
//! can replace without any change to `connection/` or `handler/`:
//!
//! | seam | interface | single node |
//! |---|---|---|
//! | routing beyond this process | [`Fabric`] | [`SingleNode`]: nothing beyond |
//! | who holds client id X | [`Ownership`] | [`SingleNode`]: always this node |
//! | retained-message storage | `retained::RetainedMessages` (crate-internal) | `retained::LocalRetained`: a trie, and the store |
//! | persistence | `store::Backend` (crate-internal) | the redb engine (`store::engine`) |
//!
//! `Broker::start_with` takes a [`Seams`]; `Broker::start` uses
//! [`Seams::single_node`]. The first two are public, so a test (or another
//! crate) can plug in its own; the last two carry the broker's internal
//! types, and a cluster implements them inside this crate.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tern_codec::{ByteStr, LastWill};
use tokio::sync::watch;

use crate::message::Message;

/// How messages reach subscribers on other nodes: the routing seam.
///
/// The router calls it after routing a message locally; a message that came
/// from another node is routed locally with `BrokerHandle::route_remote`,
/// which does not call it again.
pub trait Fabric: Send + Sync {
    /// A message this node accepted (from a client's PUBLISH or a will; not
    /// `$SYS`, which is per node). `served`: the keys (`{group}/{filter}`)
    /// of the shared groups this node gave it to, which no other node
    /// should give it to again.
    fn forward(&self, message: &Arc<Message>, served: &[Arc<str>]);
    /// A session on this node subscribed to `filter` (without `$share/…`;
    /// `group` is the share group) when `present`, or no longer is. Called
    /// once when a session's subscription is added (not when it is
    /// replaced) and once when it is removed, per session: an
    /// implementation counts references itself. Returns a ticket that
    /// [`Fabric::applied`] reaches once messages from elsewhere are routed
    /// to it (the SUBACK waits for it); 0 if there is nothing to wait for.
    fn interest(&self, filter: &str, group: Option<&str>, present: bool) -> u64;
    /// Whether this node reaches the rest of the cluster now. A node that
    /// does not refuses new clients (CONNACK 0x88 Server unavailable), so
    /// that a load balancer's check sends them to one that does; its
    /// connected clients stay. One node: always.
    fn available(&self) -> bool {
        true
    }
    /// The highest interest ticket applied beyond this process.
    fn applied(&self) -> u64 {
        u64::MAX
    }
    /// Changes of [`Fabric::applied`], for a connection holding its SUBACK;
    /// `None` if it never waits.
    fn applied_changes(&self) -> Option<watch::Receiver<u64>> {
        None
    }
    /// Whether a QoS 1/2 message a client publishes here must be stored
    /// beyond this node (a cluster's replicated stream) before it is routed
    /// and acknowledged: then the handler hands it to [`Fabric::store`]
    /// instead of routing it. One node: no, its own store is enough.
    fn stores(&self) -> bool {
        false
    }
    /// Stores `write` beyond this node, then routes it here and forwards it
    /// to the other nodes (as a message routed here would be). Returns a
    /// ticket that [`Fabric::stored`] settles, in the order issued: the
    /// publisher's PUBACK/PUBREC waits for it.
    fn store(&self, write: Write) -> u64 {
        let _ = write;
        0
    }
    /// Where the write with this ticket is.
    fn stored(&self, ticket: u64) -> Stored {
        let _ = ticket;
        Stored::Done
    }
    /// Changes of what [`Fabric::stored`] reports, for a connection holding
    /// a PUBACK; `None` if it never waits.
    fn stored_changes(&self) -> Option<watch::Receiver<u64>> {
        None
    }
    /// This node's `$SYS` figures (below `$SYS/broker/`), published every
    /// `interval`: shares them with the other nodes and returns the
    /// cluster's totals, to be published below `$SYS/cluster/`. One node
    /// has no cluster: none.
    fn statistics(
        &self,
        own: &[(&'static str, String)],
        interval: Duration,
    ) -> Vec<(String, String)> {
        let _ = (own, interval);
        Vec::new()
    }
}

/// A QoS 1/2 message a client published, to be stored beyond this node
/// before it is routed ([`Fabric::store`]).
pub struct Write {
    pub message: Arc<Message>,
    /// The user who published it (the retained quotas).
    pub owner: Option<Arc<str>>,
    /// Its QoS 2 packet id: forgotten if it cannot be stored, and stored
    /// with its deliveries here if `persistent` (as a single node does).
    pub packet_id: Option<u16>,
    /// Whether its publisher's session is persistent.
    pub persistent: bool,
    /// Sent again by its client (DUP): a QoS 2 message whose earlier write
    /// may have been stored is written again under the same id.
    pub resent: bool,
}

/// What became of a [`Write`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Not yet settled: the acknowledgement waits.
    Pending,
    /// Stored, and routed: the acknowledgement may go.
    Done,
    /// Not stored within the time allowed: never routed, and the
    /// acknowledgement must not go. The connection closes (MQTT 5:
    /// DISCONNECT 0x9C Use another server) and its client publishes again,
    /// elsewhere or later.
    Failed,
}

/// A claim on a session still held elsewhere: resolves once it is not.
pub type Claim = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Who holds each client id's session: the session-ownership seam.
///
/// MQTT allows one connection per client id [MQTT-3.1.4-3]; on one node the
/// session registry enforces it, across nodes this decides which node's
/// registry may.
pub trait Ownership: Send + Sync {
    /// This node takes `client_id`'s session (`persistent`: one that
    /// outlives its connection). `None`: it is this node's now; `Some`: wait
    /// for the claim before attaching, while another node that holds it
    /// closes its connection (MQTT 5: DISCONNECT 0x8E) and hands the
    /// session over, installed here by the time the claim resolves.
    fn claim(&self, client_id: &ByteStr, persistent: bool) -> Option<Claim>;
    /// `client_id`'s session ended here (expired, or did not outlive its
    /// connection): no node holds it now.
    fn release(&self, client_id: &ByteStr);
    /// `client_id` connected here with this will (its client logged in as
    /// `username`), or none: kept beyond this node, in place of any kept
    /// for that client id before, so that it is published even if this
    /// node dies. One node has nowhere to keep it.
    fn will(&self, client_id: &ByteStr, will: Option<&LastWill>, username: Option<&str>) {
        let _ = (client_id, will, username);
    }
    /// `client_id`'s will was published here, or its connection here ended
    /// without it: forget the copy kept for this node (not one its client
    /// has since left connecting elsewhere).
    fn will_gone(&self, client_id: &ByteStr) {
        let _ = client_id;
    }
    /// `client_id`'s persistent session changed in a way that must outlive
    /// this node (its subscriptions): keep its state beyond it. Returns a
    /// ticket [`Ownership::mirrored`] reaches once kept, which the SUBACK
    /// waits for; 0 if there is nothing to wait for. One node: nothing to
    /// keep, its store is enough.
    fn mirror(&self, client_id: &ByteStr) -> u64 {
        let _ = client_id;
        0
    }
    /// The highest ticket of [`Ownership::mirror`] kept.
    fn mirrored(&self) -> u64 {
        u64::MAX
    }
    /// Changes of [`Ownership::mirrored`]; `None` if it never waits.
    fn mirrored_changes(&self) -> Option<watch::Receiver<u64>> {
        None
    }
    /// A will waiting out its delay here is due: whether to publish it
    /// (not if another node did, having taken this one for gone, or its
    /// client connected again elsewhere). One node: always.
    fn will_due(&self, client_id: &ByteStr) -> Pin<Box<dyn Future<Output = bool> + Send>> {
        let _ = client_id;
        Box::pin(std::future::ready(true))
    }
}

/// The single node: nothing beyond this process, every session its own.
#[derive(Debug, Default, Clone, Copy)]
pub struct SingleNode;

impl Fabric for SingleNode {
    fn forward(&self, _message: &Arc<Message>, _served: &[Arc<str>]) {}
    fn interest(&self, _filter: &str, _group: Option<&str>, _present: bool) -> u64 {
        0
    }
}

impl Ownership for SingleNode {
    fn claim(&self, _client_id: &ByteStr, _persistent: bool) -> Option<Claim> {
        None
    }
    fn release(&self, _client_id: &ByteStr) {}
}

/// The implementations a broker runs with.
pub struct Seams {
    pub fabric: Box<dyn Fabric>,
    pub ownership: Box<dyn Ownership>,
}

impl Seams {
    /// One node on its own.
    pub fn single_node() -> Seams {
        Seams {
            fabric: Box::new(SingleNode),
            ownership: Box::new(SingleNode),
        }
    }
}
