//! PUBACK, PUBREC and PUBCOMP from a client: the outbound QoS 1/2 flows.
//!
//! Each acknowledgement moves or removes the in-flight entry it names, which
//! frees a slot in the client's Receive Maximum window; the connection task
//! then sends more from the queue.

use tern_codec::{Packet, PubAck, ReasonCode};

use super::Flow;
use crate::connection::client::Client;
use crate::connection::outbound;
use crate::error::ProtocolViolation;
use crate::session::InflightState;
use crate::store::Group;

/// PUBACK ends a QoS 1 delivery [MQTT-4.3.2-?].
pub fn puback(client: &mut Client, ack: PubAck) -> Result<Flow, ProtocolViolation> {
    complete(client, ack, InflightState::AwaitingPubAck);
    Ok(Flow::Continue)
}

/// PUBCOMP ends a QoS 2 delivery.
pub fn pubcomp(client: &mut Client, ack: PubAck) -> Result<Flow, ProtocolViolation> {
    complete(client, ack, InflightState::AwaitingPubComp);
    Ok(Flow::Continue)
}

/// Removes the in-flight entry; an unknown id is ignored (a late duplicate).
fn complete(client: &mut Client, ack: PubAck, state: InflightState) {
    let session = client.session.clone();
    let mut st = session.lock();
    if let Some(pos) = st.inflight_position(ack.packet_id, state)
        && let Some(done) = st.traffic().inflight.remove(pos)
    {
        let mut changes = Group::default();
        outbound::record_done(client, done.delivery, &mut changes);
        outbound::submit(client, changes);
    }
}

/// PUBREC: the client has the QoS 2 message; answer PUBREL [MQTT-4.3.3-4].
/// A failure reason code ends the flow instead [MQTT-4.3.3-?].
pub fn pubrec(client: &mut Client, ack: PubAck) -> Result<Flow, ProtocolViolation> {
    let session = client.session.clone();
    let (found, ticket) = {
        let mut st = session.lock();
        if let Some(pos) = st.inflight_position(ack.packet_id, InflightState::AwaitingPubRec) {
            let mut changes = Group::default();
            if ack.reason.is_error() {
                if let Some(done) = st.traffic().inflight.remove(pos) {
                    outbound::record_done(client, done.delivery, &mut changes);
                    outbound::submit(client, changes);
                }
                return Ok(Flow::Continue);
            }
            if let Some(entry) = st.traffic().inflight.get_mut(pos) {
                entry.state = InflightState::AwaitingPubComp;
                let sent = (entry.packet_id, entry.state);
                outbound::record_sent(client, &entry.delivery, sent, &mut changes);
            }
            (true, outbound::submit(client, changes))
        } else {
            // A repeated PUBREC for a message already released gets PUBREL again.
            let found = st
                .inflight_position(ack.packet_id, InflightState::AwaitingPubComp)
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
