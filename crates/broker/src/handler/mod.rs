//! Packet handlers: one file per kind of packet a client sends.
//!
//! The connection task decodes a packet and calls [`dispatch`]; a handler
//! validates it, updates session and broker state, and encodes its response
//! into the client's output buffer. Handlers never touch the socket.

pub mod ack;
pub mod connect;
pub mod disconnect;
pub mod publish;
pub mod subscribe;
pub mod unsubscribe;

use tern_codec::Packet;

use crate::client_state::ClientState;
use crate::error::ProtocolViolation;

/// What the connection does after a packet was handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// The client sent DISCONNECT; publish the will only if it asked to (0x04).
    Disconnect {
        publish_will: bool,
    },
}

/// Hands a decoded packet (after CONNECT) to its handler. PUBACKs gather in
/// `pubacks` and are handled as one run before the next packet of another
/// kind (the caller flushes the run when it stops reading).
pub fn dispatch(
    client: &mut ClientState,
    packet: Packet,
    pubacks: &mut ack::PubAcks,
) -> Result<Flow, ProtocolViolation> {
    if let Packet::PubAck(ack) = &packet {
        pubacks.push(client, ack);
        return Ok(Flow::Continue);
    }
    pubacks.flush(client);
    match packet {
        Packet::Publish(p) => publish::handle(client, p),
        Packet::PubRel(ack) => publish::release(client, ack),
        Packet::PubRec(ack) => ack::pubrec(client, ack),
        Packet::PubComp(ack) => ack::pubcomp(client, ack),
        Packet::Subscribe(s) => subscribe::handle(client, s),
        Packet::Unsubscribe(u) => unsubscribe::handle(client, u),
        Packet::PingReq => {
            client.send(&Packet::PingResp);
            Ok(Flow::Continue)
        }
        Packet::Disconnect(d) => disconnect::handle(client, d),
        Packet::Connect(_) => Err(ProtocolViolation::SecondConnect),
        other => Err(ProtocolViolation::UnexpectedPacket(other.name())),
    }
}

/// Holds what is sent from now on (the SUBACK or UNSUBACK) until the
/// session's subscriptions are kept: in the store's session record, and in
/// a cluster beyond this node, where another node takes the session over
/// from if this one dies.
fn keep_subscriptions(client: &mut ClientState) {
    let (ticket, persistent) = {
        let mut st = client.session.lock();
        let ticket = crate::registry::persist(&client.state, &client.session, &mut st);
        (ticket, st.expiry_secs != 0)
    };
    client.hold_until(ticket);
    if persistent {
        let kept = client.state.ownership.mirror(client.client_id());
        client.hold_for_mirror(kept);
    }
}
