//! `ClientState`: the per-connection protocol state the packet handlers work on.
//!
//! Owned by one connection task, so it needs no lock: the output buffer, the
//! peer's negotiated limits, topic-alias maps, the will, keep-alive. What
//! must outlive the connection lives in the `Session` it points to.
//!
//! Below both the handlers and the connection task (which runs them), so
//! neither reaches into the other: [`outbound`] drains the session's queue
//! into the output buffer for either.

pub mod outbound;
pub mod pushback;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tern_codec::{ByteStr, EncodeError, LastWill, Packet, ProtocolVersion};

use crate::auth::{Access, Acl, Identity, Readable};
use crate::limits::ClientLimits;
use crate::metrics::Metrics;
use crate::seams::Stored;
use crate::session::{ConnectionId, Session, SessionState};
use crate::state::BrokerState;

/// Limits the peer announced in CONNECT (MQTT 5), or their 3.1.1 equivalents.
#[derive(Debug, Clone, Copy)]
pub struct PeerLimits {
    /// QoS 1/2 messages we may have unacknowledged towards the client.
    pub receive_maximum: u16,
    /// Largest packet the client accepts; larger messages are not sent to it.
    /// (A u32 as in the protocol: it keeps `ClientState` within 128 bytes.)
    pub max_packet_size: u32,
    /// Topic aliases we may use towards the client.
    pub topic_alias_maximum: u16,
}

/// Topic aliases in force on one MQTT 5 connection, both directions.
#[derive(Debug, Default)]
pub struct TopicAliases {
    /// Aliases the client set for its PUBLISHes.
    pub inbound: HashMap<u16, ByteStr>,
    /// Aliases we set for PUBLISHes to the client.
    pub outbound: HashMap<ByteStr, u16>,
}

/// Responses held back until what they promise is so: the store has made
/// durable a message a PUBACK acknowledges, say, or the other nodes of a
/// cluster route to a subscription a SUBACK confirms. Everything encoded
/// after a hold waits with it, so responses still go out in order
/// [MQTT-4.6.0-2].
#[derive(Debug, Default)]
pub struct Holds {
    /// (what it waits for, position in the output stream): the bytes from
    /// that position on wait until it is done.
    queue: VecDeque<(Wait, u64)>,
    /// Bytes written since this was created; positions count from here.
    written: u64,
}

/// What a hold waits for.
#[derive(Debug, Clone, Copy)]
enum Wait {
    /// The store to report this ticket durable.
    Store(u64),
    /// The fabric to report this ticket's interest applied
    /// ([`crate::seams::Fabric::applied`]).
    Fabric(u64),
    /// The fabric to report this ticket's message stored beyond this node
    /// ([`crate::seams::Fabric::stored`]).
    Stored(u64),
    /// The session's state kept beyond this node
    /// ([`crate::seams::Ownership::mirrored`]).
    Mirror(u64),
}

/// A message this connection's client published could not be stored (a
/// cluster that cannot write): its acknowledgement, and everything held
/// after it, must never go out. The connection closes instead.
#[derive(Debug)]
pub struct Unstored;

/// State of one connected client.
///
/// Kept small: it is what an idle connection costs (with its session), so
/// what most clients never use (topic aliases, a will) is boxed.
pub struct ClientState {
    pub connection_id: ConnectionId,
    pub version: ProtocolVersion,
    pub session: Arc<Session>,
    pub state: Arc<BrokerState>,
    /// Encoded packets waiting to be written, many per write syscall.
    pub out: BytesMut,
    /// What part of `out` waits for the store; created on the first hold.
    pub holds: Option<Box<Holds>>,
    pub peer: PeerLimits,
    /// Created when the first alias is.
    pub aliases: Option<Box<TopicAliases>>,
    /// The will, with its Will Delay Interval among its properties.
    pub will: Option<Box<LastWill>>,
    /// Session Expiry Interval now in force (DISCONNECT may change it).
    pub session_expiry_secs: u32,
    /// Close the connection after this long without a packet (1.5 × keep-alive).
    /// In milliseconds, 0 for none: a `u32` rather than an
    /// `Option<Duration>` (16 bytes), read through [`ClientState::keep_alive_timeout`].
    pub keep_alive_ms: u32,
    /// In-flight messages of a resumed session still to be re-sent.
    pub resend_inflight: bool,
    /// MQTT 5 Request Problem Information: may we send reason strings.
    pub problem_information: bool,
    /// Connected with Mosquitto's bridge flag (a broker bridging into this
    /// one at 3.1/3.1.1): its subscriptions are No Local and Retain As
    /// Published.
    pub bridge_peer: bool,
    /// The listener that accepted the connection (`ConnInfo::listener`),
    /// whose connection slot it holds until it ends.
    pub listener: u32,
    /// What only some connections have (limit state, their own ACL, queues
    /// to wait for).
    pub extras: Option<Box<Extras>>,
    /// The username the client was accepted with (ACL checks).
    pub username: Option<Arc<str>>,
}

/// What only some connections need, in one box, so that the others pay a
/// pointer for it.
#[derive(Debug, Default)]
pub struct Extras {
    /// Per-client limit state; only when such a limit is configured.
    pub limits: Option<ClientLimits>,
    /// Its own topic rules (from the auth hook), instead of the ACL file's.
    pub acl: Option<Arc<Acl>>,
    /// The queues it went over the bounds of, which it waits for before it
    /// reads more ([`pushback`]); made the first time.
    pub pushback: Option<pushback::Pushback>,
}

impl Extras {
    /// The box, if there is anything to put in it.
    pub fn boxed(limits: Option<ClientLimits>, acl: Option<Arc<Acl>>) -> Option<Box<Extras>> {
        (limits.is_some() || acl.is_some()).then(|| {
            Box::new(Extras {
                limits,
                acl,
                pushback: None,
            })
        })
    }
}

impl ClientState {
    /// The client identifier (the session's).
    pub fn client_id(&self) -> &ByteStr {
        &self.session.client_id
    }

    /// Who the client is, for the ACL.
    pub fn identity(&self) -> Identity<'_> {
        Identity {
            username: self.username.as_deref(),
            client_id: self.client_id(),
        }
    }

    /// Its own topic rules, if the auth hook gave it some.
    fn acl(&self) -> Option<&Acl> {
        self.extras.as_ref()?.acl.as_deref()
    }

    /// Whether it may publish to `topic`: its own rules, else the ACL's.
    pub fn may_write(&self, topic: &str) -> bool {
        match self.acl() {
            Some(acl) => acl.allows(&self.identity(), topic, Access::Write),
            None => self.state.auth.may_write(&self.identity(), topic),
        }
    }

    /// Whether it may subscribe to `filter`, and the subscription's
    /// standing for deliveries (see [`AuthState::subscribe_access`]). With
    /// rules of its own, only a filter they let it read whole is granted,
    /// so its deliveries need no check.
    pub fn subscribe_access(&self, filter: &str) -> (bool, Readable) {
        let auth = &self.state.auth;
        let identity = self.session.identity();
        match self.acl() {
            Some(acl) if !acl.filter_access(&self.identity(), filter).whole => {
                (false, Readable::default())
            }
            Some(_) => (true, auth.readable_now(identity)),
            None => auth.subscribe_access(&self.identity(), identity, filter),
        }
    }

    /// The topic aliases, created on first use.
    pub fn aliases_mut(&mut self) -> &mut TopicAliases {
        self.aliases.get_or_insert_with(Default::default)
    }

    /// Encodes `packet` into the output buffer. Returns the encoded size, or
    /// `None` if it could not be encoded (logged; nothing was appended).
    pub fn send(&mut self, packet: &Packet) -> Option<usize> {
        let size = self.encode(packet)?;
        Metrics::add(&self.state.metrics.packets_sent, 1);
        Some(size)
    }

    /// [`ClientState::send`] without counting it: the caller counts a batch
    /// at once (one shared counter update per batch, not per PUBLISH).
    pub fn encode(&mut self, packet: &Packet) -> Option<usize> {
        self.encode_with(packet.name(), |version, out| packet.encode(version, out))
    }

    /// Appends what `encode` writes (a packet called `name`, for the log
    /// line if it cannot be encoded); the size appended, as
    /// [`ClientState::encode`].
    pub fn encode_with(
        &mut self,
        name: &str,
        encode: impl FnOnce(ProtocolVersion, &mut BytesMut) -> Result<(), EncodeError>,
    ) -> Option<usize> {
        let start = self.out.len();
        match encode(self.version, &mut self.out) {
            Ok(()) => Some(self.out.len() - start),
            Err(e) => {
                tracing::warn!(client_id = %self.client_id(), packet = name, error = %e, "cannot encode packet");
                None
            }
        }
    }

    /// Holds whatever is encoded from now on until the store reports
    /// `ticket` durable (nothing to do if it already is, or acknowledgements
    /// do not wait for the store).
    pub fn hold_until(&mut self, ticket: u64) {
        self.hold_from(ticket, self.out.len());
    }

    /// Like [`ClientState::hold_until`], for what is encoded from position `at`
    /// of `out` on (encoded after every earlier hold's position).
    pub fn hold_from(&mut self, ticket: u64, at: usize) {
        let Some(store) = self.state.store.as_ref().filter(|s| s.acks_wait()) else {
            return;
        };
        if ticket <= store.durable() {
            return;
        }
        self.hold(Wait::Store(ticket), at);
    }

    /// Holds whatever is encoded from now on until the fabric reports the
    /// interest change `ticket` applied: other nodes route to it.
    pub fn hold_for_fabric(&mut self, ticket: u64) {
        if ticket > self.state.fabric.applied() {
            self.hold(Wait::Fabric(ticket), self.out.len());
        }
    }

    /// Holds whatever is encoded from now on until the session's state with
    /// this ticket is kept beyond this node.
    pub fn hold_for_mirror(&mut self, ticket: u64) {
        self.hold_mirror_from(ticket, self.out.len());
    }

    /// Like [`ClientState::hold_for_mirror`], for what is encoded from
    /// position `at` of `out` on (encoded after every earlier hold's
    /// position).
    pub fn hold_mirror_from(&mut self, ticket: u64, at: usize) {
        if ticket > self.state.ownership.mirrored() {
            self.hold(Wait::Mirror(ticket), at);
        }
    }

    /// In a cluster, asks for this client's persistent session's state to
    /// be kept beyond this node: the ticket to hold for (0: nothing to).
    pub fn mirror(&self, st: &SessionState) -> u64 {
        if st.expiry_secs == 0 {
            return 0;
        }
        self.state.ownership.mirror(self.client_id())
    }

    /// Holds whatever is encoded from now on until the fabric reports the
    /// message with this ticket stored ([`crate::seams::Fabric::store`]).
    pub fn hold_for_storage(&mut self, ticket: u64) {
        self.hold(Wait::Stored(ticket), self.out.len());
    }

    fn hold(&mut self, wait: Wait, at: usize) {
        let holds = self.holds.get_or_insert_with(Default::default);
        let at = holds.written + at as u64;
        holds.queue.push_back((wait, at));
    }

    /// How many bytes at the front of `out` may be written now.
    pub fn writable(&self) -> usize {
        match self
            .holds
            .as_ref()
            .and_then(|h| Some((h, h.queue.front()?)))
        {
            Some((holds, &(_, at))) => (at - holds.written) as usize,
            None => self.out.len(),
        }
    }

    /// Drops `n` written bytes from the front of `out`.
    pub fn advance(&mut self, n: usize) {
        self.out.advance(n);
        if let Some(holds) = &mut self.holds {
            holds.written += n as u64;
        }
    }

    /// Lets go of the holds the store and the fabric have caught up with.
    /// A message that could not be stored drops its hold and everything
    /// after it, unwritten: the connection must close.
    pub fn release(&mut self) -> Result<(), Unstored> {
        let Some(holds) = &mut self.holds else {
            return Ok(());
        };
        let durable = self.state.store.as_ref().map_or(u64::MAX, |s| s.durable());
        let fabric = &self.state.fabric;
        let applied = fabric.applied();
        let mirrored = self.state.ownership.mirrored();
        while let Some(&(wait, _)) = holds.queue.front() {
            let done = match wait {
                Wait::Store(ticket) => ticket <= durable,
                Wait::Fabric(ticket) => ticket <= applied,
                Wait::Mirror(ticket) => ticket <= mirrored,
                Wait::Stored(ticket) => match fabric.stored(ticket) {
                    Stored::Done => true,
                    Stored::Pending => false,
                    Stored::Failed => {
                        self.drop_held();
                        return Err(Unstored);
                    }
                },
            };
            if !done {
                break;
            }
            holds.queue.pop_front();
        }
        if holds.queue.is_empty() {
            self.holds = None;
        }
        Ok(())
    }

    /// Drops every held byte, unwritten, and the holds.
    pub fn drop_held(&mut self) {
        let writable = self.writable();
        self.out.truncate(writable);
        self.holds = None;
    }

    /// Logs a refused PUBLISH or subscription at info (throttled: any
    /// client can cause it), so an operator can answer "why did my message
    /// vanish": who (address when known, client id, username), what, and why.
    pub fn log_refused(&self, packet: &str, topic: &str, why: &str) {
        let client_id = self.client_id();
        let username = self.username.as_deref().unwrap_or("");
        // The box exists when `max_publish_rate` or `max_topic_levels` is set;
        // without it the line goes without the address.
        match self.extras.as_ref().and_then(|e| e.limits.as_ref()) {
            Some(own) => {
                crate::throttled!(info, "refused", peer = %own.peer, %client_id, username, packet, topic, "refused: {why}")
            }
            None => {
                crate::throttled!(info, "refused", %client_id, username, packet, topic, "refused: {why}")
            }
        }
    }

    /// How long the connection may be silent before it is closed.
    pub fn keep_alive_timeout(&self) -> Option<Duration> {
        (self.keep_alive_ms > 0).then(|| Duration::from_millis(u64::from(self.keep_alive_ms)))
    }

    /// A reason string for an MQTT 5 response, if the client wants them.
    pub fn reason_string(&self, text: impl Into<String>) -> Option<ByteStr> {
        (self.version == ProtocolVersion::V5 && self.problem_information)
            .then(|| ByteStr::from(text.into()))
    }
}

/// Waits until the store reports more durable, or the fabric more applied
/// or stored: what a hold waits for (forever without it).
pub async fn progress(watched: &mut Option<tokio::sync::watch::Receiver<u64>>) {
    match watched {
        Some(rx) => {
            if rx.changed().await.is_err() {
                // It has stopped (shutdown): nothing more will come.
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    /// An idle connection costs its `ClientState` (parked in its session); the
    /// limits added a listener index and a box, and the ACL a username, while
    /// the keep-alive and the will delay got more compact to pay for them.
    #[test]
    fn client_stays_small() {
        assert!(
            std::mem::size_of::<super::ClientState>() <= 128,
            "{}",
            std::mem::size_of::<super::ClientState>()
        );
    }
}
