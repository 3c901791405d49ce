//! PUBLISH from a client (and its PUBREL): the inbound half of QoS 0/1/2.
//!
//! Validates the topic (resolving an MQTT 5 topic alias), applies QoS rules,
//! routes the message through [`crate::router::publish`], and acknowledges:
//! PUBACK for QoS 1; PUBREC for QoS 2, remembering the packet id until PUBREL
//! so a re-sent PUBLISH is not routed twice [MQTT-4.3.3-10].

use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_codec::{
    ByteStr, Packet, ProtocolVersion, PubAck, Publish, QoS, ReasonCode, topic::is_valid_topic_name,
};

use super::Flow;
use crate::client_state::ClientState;
use crate::delayed::{self, Full, Parsed};
use crate::error::ProtocolViolation;
use crate::message::Message;
use crate::router;
use crate::seams::Write;
use crate::store::{Group, Store};

/// Answers a PUBLISH refused for its topic (too deep for
/// `max_topic_levels`, or a `$delayed/` name that is not
/// `$delayed/SECONDS/TOPIC`): it is not routed. MQTT 5 QoS 1/2 publishers
/// get PUBACK/PUBREC 0x90; QoS 0 and 3.1.1 have no way to be told, and
/// 3.1.1 gets the normal acknowledgement [MQTT-3.3.5-2].
fn refuse_topic(client: &mut ClientState, publish: &Publish, why: &str) {
    client.log_refused("PUBLISH", &publish.topic, why);
    let reason = if client.version == ProtocolVersion::V5 {
        ReasonCode::TopicNameInvalid
    } else {
        ReasonCode::Success
    };
    let ack = |id| PubAck {
        reason,
        ..PubAck::new(id)
    };
    match (publish.qos, publish.packet_id) {
        (QoS::AtLeastOnce, Some(id)) => client.send(&Packet::PubAck(ack(id))),
        (QoS::ExactlyOnce, Some(id)) => client.send(&Packet::PubRec(ack(id))),
        _ => None,
    };
}

/// Whether a retained PUBLISH goes over a `max_retained_*` quota (counted
/// and logged if so). Checked before routing, under the retained store's
/// read lock: publishes racing on other threads may each pass, so a quota
/// can be exceeded by one message per worker thread.
fn retained_refused(client: &ClientState, publish: &Publish) -> bool {
    let limits = &client.state.limits;
    // Clearing a topic (an empty payload) is never refused.
    if !publish.retain || publish.payload.is_empty() || !limits.has_retained_quotas() {
        return false;
    }
    let size = publish.topic.len() + publish.payload.len();
    let retained = &*client.state.retained;
    let refused = limits.retained_refused(retained, &publish.topic, size, client.username.as_ref());
    if refused {
        client.log_refused("PUBLISH", &publish.topic, "retained message quota reached");
    }
    refused
}

/// Handles a PUBLISH from the client.
pub fn handle(client: &mut ClientState, mut publish: Publish) -> Result<Flow, ProtocolViolation> {
    client.state.metrics.received(publish.qos);
    resolve_topic_alias(client, &mut publish)?;
    if !is_valid_topic_name(&publish.topic) {
        return Err(ProtocolViolation::TopicNameInvalid);
    }
    if publish.qos > client.state.maximum_qos() {
        return Err(ProtocolViolation::QoSNotSupported);
    }
    if publish.retain && !client.state.config.retain_available {
        return Err(ProtocolViolation::RetainNotSupported);
    }
    if client.state.limits.topic_refused(&publish.topic) {
        refuse_topic(client, &publish, "too many topic levels");
        return Ok(Flow::Continue);
    }
    // `$delayed/SECONDS/TOPIC`: judged from here on as a publish to TOPIC,
    // and kept until its time instead of routed (see `crate::delayed`).
    let delay = match delayed::parse(&publish.topic) {
        Parsed::Now => None,
        Parsed::Later { delay, topic } => Some((delay, ByteStr::from(topic.to_owned()))),
        Parsed::Invalid(why) => {
            refuse_topic(client, &publish, why);
            return Ok(Flow::Continue);
        }
    };
    let delay = delay.map(|(delay, target)| {
        publish.topic = target;
        delay
    });
    let qos = publish.qos;
    let packet_id = publish.packet_id;
    // A topic the ACL does not let the client write, or a retained message
    // over the quota, is not routed. MQTT 5 says so (0x87, 0x97); 3.1.1
    // acknowledges as usual [MQTT-3.3.5-2].
    let refusal = if !client.may_write(&publish.topic) {
        client.log_refused(
            "PUBLISH",
            &publish.topic,
            "the ACL does not allow writing it",
        );
        Some(ReasonCode::NotAuthorized)
    } else if retained_refused(client, &publish) {
        Some(ReasonCode::QuotaExceeded)
    } else {
        None
    };
    let allowed = refusal.is_none();
    match (qos, packet_id) {
        (QoS::AtMostOnce, _) => {
            if allowed {
                let message =
                    Message::from_publish(publish, client.client_id().clone(), Instant::now());
                if let Some(delay) = delay {
                    // Refused when full: counted; QoS 0 has no answer.
                    schedule(client, message, delay, Group::default());
                } else {
                    let routed = router::publish(&client.state, message, client.username.as_ref());
                    client.push_back(routed.over);
                }
            }
        }
        (QoS::AtLeastOnce, Some(id)) => {
            let reason = if allowed {
                // The PUBACK promises the message is safe: it waits for the store.
                accept(client, publish, None, delay)
            } else {
                refused_reason(client, refusal)
            };
            client.send(&Packet::PubAck(PubAck {
                reason,
                ..PubAck::new(id)
            }));
        }
        (QoS::ExactlyOnce, Some(id)) => {
            if let Some(reason) = refusal
                && client.version == ProtocolVersion::V5
            {
                // A failed PUBREC ends the exchange: no id to remember.
                client.send(&Packet::PubRec(PubAck {
                    reason,
                    ..PubAck::new(id)
                }));
                return Ok(Flow::Continue);
            }
            let first_time = {
                let mut st = client.session.lock();
                let awaiting = &mut st.traffic().inbound_qos2;
                if awaiting.contains(&id.get()) {
                    false
                } else if awaiting.len() >= usize::from(client.state.config.receive_maximum) {
                    return Err(ProtocolViolation::ReceiveMaximumExceeded);
                } else {
                    awaiting.insert(id.get());
                    true
                }
            };
            let reason = if first_time && allowed {
                accept(client, publish, Some(id.get()), delay)
            } else {
                ReasonCode::Success
            };
            if reason.is_error() {
                // A failed PUBREC ends the exchange: the id is not awaited.
                client
                    .session
                    .lock()
                    .traffic()
                    .inbound_qos2
                    .remove(&id.get());
            }
            client.send(&Packet::PubRec(PubAck {
                reason,
                ..PubAck::new(id)
            }));
        }
        // The decoder guarantees a packet id for QoS > 0.
        _ => {
            return Err(ProtocolViolation::Decode(
                tern_codec::DecodeError::ZeroPacketId,
            ));
        }
    }
    Ok(Flow::Continue)
}

/// Handles PUBREL: the client releases a QoS 2 packet id [MQTT-4.3.3-11].
pub fn release(client: &mut ClientState, ack: PubAck) -> Result<Flow, ProtocolViolation> {
    let (known, kept) = {
        let mut st = client.session.lock();
        let id = ack.packet_id.get();
        let known = st.traffic().inbound_qos2.remove(&id);
        // In a cluster, the session's state in NATS forgets the id too,
        // before the PUBCOMP.
        let placed = st.traffic().inbound_kept.remove(&id).is_some();
        (known, if placed { client.mirror(&st) } else { 0 })
    };
    client.hold_for_mirror(kept);
    // PUBCOMP lets the client reuse the id: its release must be stored
    // first, or after a restart a new message with it would be ignored.
    let ticket = match persistent_store(client) {
        Some(store) if known => store.release_inbound(client.client_id(), ack.packet_id.get()),
        _ => 0,
    };
    let reason = if known {
        ReasonCode::Success
    } else {
        ReasonCode::PacketIdentifierNotFound
    };
    client.hold_until(ticket);
    client.send(&Packet::PubComp(PubAck {
        reason,
        ..PubAck::new(ack.packet_id)
    }));
    Ok(Flow::Continue)
}

/// The store, if this client's session is persistent (its QoS 2 state is
/// then stored).
fn persistent_store(client: &ClientState) -> Option<Arc<Store>> {
    let persistent = client.session.lock().expiry_secs != 0;
    client.state.store.clone().filter(|_| persistent)
}

/// Routes a QoS 1/2 message (`qos2_id`: its QoS 2 packet id) and holds
/// its acknowledgement until it is safe; returns the acknowledgement's
/// reason code.
///
/// One node routes it at once and holds the acknowledgement for the store.
/// The QoS 2 id of a persistent session is stored in one transaction with
/// the message's deliveries: after a crash, a stored id always has its
/// message queued (else the re-sent PUBLISH would be taken for a duplicate
/// and lost), and a queued message its id (else it would be routed twice).
///
/// A cluster node hands it to the fabric, which stores it in the cluster
/// first and routes it after: a message that cannot be stored reaches no
/// one, and is never acknowledged.
fn accept(
    client: &mut ClientState,
    publish: Publish,
    qos2_id: Option<u16>,
    delay: Option<Duration>,
) -> ReasonCode {
    let resent = publish.dup;
    let message = Message::from_publish(publish, client.client_id().clone(), Instant::now());
    let persistent = client.session.lock().expiry_secs != 0;
    if let Some(delay) = delay {
        // Kept in this node's schedule, with its QoS 2 id as a delivery
        // would be (see `crate::delayed`).
        let inbound = qos2_id.filter(|_| persistent);
        let group = router::inbound_group(&client.state, client.client_id(), inbound);
        return match schedule(client, message, delay, group) {
            Some(ticket) => {
                client.hold_until(ticket);
                ReasonCode::Success
            }
            None => refused_reason(client, Some(ReasonCode::QuotaExceeded)),
        };
    }
    if client.state.fabric.stores() {
        let write = Write {
            message,
            owner: client.username.clone(),
            packet_id: qos2_id,
            persistent,
            resent,
        };
        let ticket = client.state.fabric.store(write);
        client.hold_for_storage(ticket);
        // Whether any node has a subscriber is not known here.
        return ReasonCode::Success;
    }
    let inbound = qos2_id.filter(|_| persistent);
    let group = router::inbound_group(&client.state, client.client_id(), inbound);
    let routed = router::publish_with(&client.state, message, client.username.as_ref(), group);
    client.hold_until(routed.ticket);
    client.push_back(routed.over);
    matched_reason(client, routed.matched)
}

/// Hands a `$delayed/` message to the schedule; its store ticket, or
/// `None` (logged; counted by the schedule) if the schedule is full.
fn schedule(
    client: &mut ClientState,
    message: Arc<Message>,
    delay: Duration,
    group: Group,
) -> Option<u64> {
    let owner = client.username.clone();
    match router::schedule_delayed(&client.state, message, owner, delay, group) {
        Ok(ticket) => Some(ticket),
        Err(Full) => {
            let topic = format!("{}{}", delayed::PREFIX, delay.as_secs());
            client.log_refused("PUBLISH", &topic, "max_delayed_messages reached");
            None
        }
    }
}

/// The acknowledgement of a message refused for `refusal`: MQTT 5 says so.
fn refused_reason(client: &ClientState, refusal: Option<ReasonCode>) -> ReasonCode {
    match refusal {
        Some(reason) if client.version == ProtocolVersion::V5 => reason,
        _ => ReasonCode::Success,
    }
}

/// MQTT 5 tells the publisher when nobody was subscribed (0x10).
fn matched_reason(client: &ClientState, matched: usize) -> ReasonCode {
    if matched == 0 && client.version == ProtocolVersion::V5 {
        ReasonCode::NoMatchingSubscribers
    } else {
        ReasonCode::Success
    }
}

/// Applies an MQTT 5 Topic Alias: a non-empty topic (re)defines it, an empty
/// topic uses it [MQTT-3.3.2-12].
fn resolve_topic_alias(
    client: &mut ClientState,
    publish: &mut Publish,
) -> Result<(), ProtocolViolation> {
    let Some(alias) = publish.properties.topic_alias.take() else {
        return Ok(());
    };
    if alias == 0 || alias > client.state.config.topic_alias_maximum {
        return Err(ProtocolViolation::TopicAliasInvalid);
    }
    if publish.topic.is_empty() {
        publish.topic = client
            .aliases
            .as_ref()
            .and_then(|aliases| aliases.inbound.get(&alias))
            .cloned()
            .ok_or(ProtocolViolation::TopicAliasUnknown)?;
    } else {
        client
            .aliases_mut()
            .inbound
            .insert(alias, publish.topic.clone());
    }
    Ok(())
}
