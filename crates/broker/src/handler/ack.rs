//! PUBACK, PUBREC and PUBCOMP from a client: the outbound QoS 1/2 flows.
//!
//! Each acknowledgement moves or removes the in-flight entry it names, which
//! frees a slot in the client's Receive Maximum window; the connection task
//! then sends more from the queue.

use std::num::NonZeroU16;

use tern_codec::{Packet, PubAck, ReasonCode};

use super::Flow;
use crate::client_state::ClientState;
use crate::client_state::outbound;
use crate::error::ProtocolViolation;
use crate::message::Awaiting;
use crate::store::Group;

/// PUBCOMP ends a QoS 2 delivery.
pub fn pubcomp(client: &mut ClientState, ack: PubAck) -> Result<Flow, ProtocolViolation> {
    complete(client, &[ack.packet_id], Awaiting::PubComp);
    Ok(Flow::Continue)
}

/// PUBACKs (each ends a QoS 1 delivery) read back to back, handled as one
/// run ([`PubAcks::flush`]): a client acknowledging a burst costs one session
/// lock and one store submission, not one of each per message. `dispatch`
/// gathers them and flushes the run before any other packet is handled, so
/// the order of events is the same as one at a time.
pub struct PubAcks {
    ids: [NonZeroU16; RUN],
    len: usize,
}

/// Most PUBACKs in one run (bounds the time the session is locked).
const RUN: usize = 64;

impl Default for PubAcks {
    fn default() -> Self {
        PubAcks {
            ids: [NonZeroU16::MIN; RUN],
            len: 0,
        }
    }
}

impl PubAcks {
    /// Adds a PUBACK to the run, handling the run first if it is full.
    pub fn push(&mut self, client: &mut ClientState, ack: &PubAck) {
        if self.len == RUN {
            self.flush(client);
        }
        self.ids[self.len] = ack.packet_id;
        self.len += 1;
    }

    /// Handles the PUBACKs gathered so far.
    pub fn flush(&mut self, client: &mut ClientState) {
        if self.len > 0 {
            complete(client, &self.ids[..self.len], Awaiting::PubAck);
            self.len = 0;
        }
    }
}

/// How many completed deliveries a cluster remembers for a session before
/// it stops adding QoS 1 ones (its cursor in NATS moves on each second, and
/// those below it are forgotten).
const REMEMBERED: usize = 8_192;

/// Removes the in-flight entries `ids` name in `state`; an unknown id is
/// ignored (a late duplicate).
fn complete(client: &mut ClientState, ids: &[NonZeroU16], state: Awaiting) {
    let session = client.session.clone();
    let mut st = session.lock();
    let mut changes = Group::default();
    // A cluster remembers the completed QoS 1/2 deliveries of a persistent
    // session for its state in NATS, and for a node it moves to: neither
    // sends them again.
    let remember = st.expiry_secs != 0 && client.state.fabric.stores();
    for &id in ids {
        if let Some(pos) = st.inflight_position(id, state)
            && let Some(done) = st.traffic().inflight.remove(pos)
        {
            // QoS 1 only up to a bound, which keeps the state small at
            // high rates: beyond it one may come again (as QoS 1 allows).
            let t = st.traffic();
            if remember && (state == Awaiting::PubComp || t.done.len() < REMEMBERED) {
                t.done.extend(done.delivery.message.places());
            }
            outbound::record_done(client, done.delivery, &mut changes);
        }
    }
    outbound::submit(client, changes);
}

/// PUBREC: the client has the QoS 2 message; answer PUBREL [MQTT-4.3.3-4].
/// A failure reason code ends the flow instead [MQTT-4.3.3-?].
pub fn pubrec(client: &mut ClientState, ack: PubAck) -> Result<Flow, ProtocolViolation> {
    let session = client.session.clone();
    let (found, ticket) = {
        let mut st = session.lock();
        if let Some(pos) = st.inflight_position(ack.packet_id, Awaiting::PubRec) {
            let mut changes = Group::default();
            if ack.reason.is_error() {
                if let Some(done) = st.traffic().inflight.remove(pos) {
                    outbound::record_done(client, done.delivery, &mut changes);
                    outbound::submit(client, changes);
                }
                return Ok(Flow::Continue);
            }
            if let Some(entry) = st.traffic().inflight.get_mut(pos) {
                entry.state = Awaiting::PubComp;
                let sent = (entry.packet_id, entry.state);
                outbound::record_sent(client, &entry.delivery, sent, &mut changes);
            }
            let ticket = outbound::submit(client, changes);
            // And in a cluster, in the session's state beyond this node.
            client.hold_for_mirror(client.mirror(&st));
            (true, ticket)
        } else {
            // A repeated PUBREC for a message already released gets PUBREL again.
            let found = st
                .inflight_position(ack.packet_id, Awaiting::PubComp)
                .is_some();
            (found, 0)
        }
    };
    // After PUBREL the client forgets the id: the broker must not resend the
    // PUBLISH after a restart, so the new state is stored first.
    client.hold_until(ticket);
    let reason = if found {
        ReasonCode::Success
    } else {
        ReasonCode::PacketIdentifierNotFound
    };
    client.send(&Packet::PubRel(PubAck {
        reason,
        ..PubAck::new(ack.packet_id)
    }));
    Ok(Flow::Continue)
}
