//! `Client`: the per-connection protocol state the packet handlers work on.
//!
//! Owned by one connection task, so it needs no lock: the output buffer, the
//! peer's negotiated limits, topic-alias maps, the will, keep-alive. What
//! must outlive the connection lives in the `Session` it points to.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tern_codec::{ByteStr, LastWill, Packet, ProtocolVersion};

use crate::metrics::Metrics;
use crate::session::Session;
use crate::state::BrokerState;

/// Limits the peer announced in CONNECT (MQTT 5), or their 3.1.1 equivalents.
#[derive(Debug, Clone, Copy)]
pub struct PeerLimits {
    /// QoS 1/2 messages we may have unacknowledged towards the client.
    pub receive_maximum: u16,
    /// Largest packet the client accepts; larger messages are not sent to it.
    pub max_packet_size: usize,
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

/// State of one connected client.
///
/// Kept small: it is what an idle connection costs (with its session), so
/// what most clients never use (topic aliases, a will) is boxed.
pub struct Client {
    pub connection_id: u64,
    pub version: ProtocolVersion,
    pub session: Arc<Session>,
    pub state: Arc<BrokerState>,
    /// Encoded packets waiting to be written, many per write syscall.
    pub out: BytesMut,
    pub peer: PeerLimits,
    /// Created when the first alias is.
    pub aliases: Option<Box<TopicAliases>>,
    pub will: Option<Box<LastWill>>,
    pub will_delay_secs: u32,
    /// Session Expiry Interval now in force (DISCONNECT may change it).
    pub session_expiry_secs: u32,
    /// Close the connection after this long without a packet (1.5 × keep-alive).
    pub keep_alive_timeout: Option<Duration>,
    /// In-flight messages of a resumed session still to be re-sent.
    pub resend_inflight: bool,
    /// MQTT 5 Request Problem Information: may we send reason strings.
    pub problem_information: bool,
}

impl Client {
    /// The client identifier (the session's).
    pub fn client_id(&self) -> &ByteStr {
        &self.session.client_id
    }

    /// The topic aliases, created on first use.
    pub fn aliases_mut(&mut self) -> &mut TopicAliases {
        self.aliases.get_or_insert_with(Default::default)
    }

    /// Encodes `packet` into the output buffer. Returns the encoded size, or
    /// `None` if it could not be encoded (logged; nothing was appended).
    pub fn send(&mut self, packet: &Packet) -> Option<usize> {
        let start = self.out.len();
        match packet.encode(self.version, &mut self.out) {
            Ok(()) => {
                Metrics::add(&self.state.metrics.packets_sent, 1);
                Some(self.out.len() - start)
            }
            Err(e) => {
                tracing::warn!(client_id = %self.client_id(), packet = packet.name(), error = %e, "cannot encode packet");
                None
            }
        }
    }

    /// A reason string for an MQTT 5 response, if the client wants them.
    pub fn reason_string(&self, text: impl Into<String>) -> Option<ByteStr> {
        (self.version == ProtocolVersion::V5 && self.problem_information)
            .then(|| ByteStr::from(text.into()))
    }
}
