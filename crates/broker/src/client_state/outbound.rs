//! Outbound: moves deliveries from the session queue into the output buffer.
//!
//! Runs in the connection task before each wait. Under the session lock it
//! re-sends in-flight messages of a resumed session (first, in their original
//! order, with DUP [MQTT-4.4.0-1]), then encodes pending deliveries while the
//! client's Receive Maximum allows, assigning packet ids and applying topic
//! aliases, message expiry and the client's Maximum Packet Size. Encoding stops
//! at a high-water mark so a slow reader keeps its backlog in the bounded
//! session queue, not in an ever-growing buffer.

use std::num::NonZeroU16;
use std::time::Instant;

use tern_codec::{ByteStr, Packet, PubAck, PublishProperties, PublishView, QoS};

use crate::client_state::ClientState;
use crate::message::{Awaiting, Delivery};
use crate::metrics::{Dropped, Metrics};
use crate::session::{Described, Inflight, Ousted, SessionState};
use crate::store::Group;
use tokio::sync::oneshot;

/// Stop encoding when this many bytes wait to be written.
pub const HIGH_WATER: usize = 64 * 1024;

/// Fills `client.out` from the session. `Err`: the connection must close
/// (the session was taken over, or the broker refused it). `Ok(Some)`:
/// the admin API asks the connection to describe itself there.
pub fn fill(client: &mut ClientState) -> Result<Option<oneshot::Sender<Described>>, Ousted> {
    let session = client.session.clone();
    let mut st = session.lock();
    let asked = st.check_owner(client.connection_id)?;
    if client.out.len() >= HIGH_WATER {
        return Ok(asked);
    }
    let mut sent = 0;
    if client.resend_inflight {
        client.resend_inflight = false;
        sent += resend(client, &st);
    }
    // Everything written before is gone: the client keeps up.
    let drained = client.out.is_empty();
    let before = st.pending_len();
    sent += send_pending(client, &mut st);
    let room =
        st.pending_len() < before && st.took(drained, client.state.queue_limits_of(&session));
    drop(st);
    if room {
        client.state.room.notify_waiters();
    }
    count_sent(client, sent);
    Ok(asked)
}

/// Counts `n` PUBLISH packets sent: one update of each shared counter per
/// batch, which every connection's task would otherwise contend for per
/// message.
fn count_sent(client: &ClientState, n: u64) {
    if n > 0 {
        let metrics = &client.state.metrics;
        Metrics::add(&metrics.packets_sent, n);
        Metrics::add(&metrics.publish_sent, n);
    }
}

/// Re-sends every in-flight message: PUBLISH with DUP, or PUBREL where the
/// PUBREC was already received [MQTT-4.4.0-1], [MQTT-4.4.0-2]. Returns
/// how many PUBLISH packets it sent.
fn resend(client: &mut ClientState, st: &SessionState) -> u64 {
    let now = Instant::now();
    let mut sent = 0;
    for entry in st.inflight() {
        match entry.state {
            Awaiting::PubComp => {
                client.send(&Packet::PubRel(PubAck::new(entry.packet_id)));
            }
            _ => {
                let delivery = &entry.delivery;
                sent += u64::from(send_publish(
                    client,
                    delivery,
                    Some(entry.packet_id),
                    true,
                    now,
                ));
            }
        }
    }
    sent
}

/// Sends pending deliveries while the window and the buffer allow.
///
/// The store changes this makes ("sent with this packet id", "dropped") are
/// submitted together at the end, still under the session lock, so they keep
/// their order with any other connection's changes to the same session.
fn send_pending(client: &mut ClientState, st: &mut SessionState) -> u64 {
    let mut changes = Group::default();
    // Where the first QoS 2 PUBLISH starts in `out`: it and what follows
    // wait for the changes.
    let mut held_from = None;
    let sent = take_pending(client, st, &mut changes, &mut held_from);
    let ticket = submit(client, changes);
    if let Some(at) = held_from {
        // Exactly once across a restart: the packet id is in the store
        // before the PUBLISH goes out, so a resend after a crash carries the
        // same id and the client can tell it is a duplicate. In a cluster,
        // likewise in the session's state beyond this node, for the node
        // that takes the session over if this one dies.
        client.hold_from(ticket, at);
        let kept = client.mirror(st);
        client.hold_mirror_from(kept, at);
    }
    sent
}

/// The loop of [`send_pending`]; returns how many PUBLISH packets it sent.
fn take_pending(
    client: &mut ClientState,
    st: &mut SessionState,
    changes: &mut Group,
    held_from: &mut Option<usize>,
) -> u64 {
    let now = Instant::now();
    let window = usize::from(client.peer.receive_maximum);
    let mut sent = 0;
    while client.out.len() < HIGH_WATER {
        let Some(delivery) = st.pop_pending() else {
            break;
        };
        if delivery.message.remaining_expiry(now).is_none() {
            // Expired while queued: not sent [MQTT-3.3.2-5].
            client.state.metrics.drop(Dropped::Expired);
            record_done(client, delivery, changes);
            continue;
        }
        if delivery.qos == QoS::AtMostOnce {
            sent += u64::from(send_publish(client, &delivery, None, false, now));
            continue;
        }
        if st.inflight_len() >= window {
            st.unpop_pending(delivery);
            break;
        }
        let Some(packet_id) = st.next_packet_id() else {
            st.unpop_pending(delivery);
            break;
        };
        let state = match delivery.qos {
            QoS::AtLeastOnce => Awaiting::PubAck,
            _ => Awaiting::PubRec,
        };
        record_sent(client, &delivery, (packet_id, state), changes);
        if state == Awaiting::PubRec {
            held_from.get_or_insert(client.out.len());
        }
        if send_publish(client, &delivery, Some(packet_id), false, now) {
            sent += 1;
            st.traffic().inflight.push_back(Inflight {
                packet_id,
                state,
                delivery,
            });
        } else {
            record_done(client, delivery, changes);
        }
    }
    sent
}

/// Adds to `changes` that a stored delivery was sent with a packet id and is
/// now in the state `sent` names (nothing without a store).
pub fn record_sent(
    client: &ClientState,
    delivery: &Delivery,
    sent: (NonZeroU16, Awaiting),
    changes: &mut Group,
) {
    if let Some(store) = &client.state.store {
        store.sent(client.client_id(), delivery, sent, changes);
    }
}

/// Adds to `changes` that a delivery is done with, and lets go of it.
pub fn record_done(client: &ClientState, delivery: Delivery, changes: &mut Group) {
    if let Some(store) = &client.state.store {
        store.finish(client.client_id(), delivery, changes);
    }
}

/// Submits `changes` to the store. Returns their ticket (0 if none).
pub fn submit(client: &ClientState, changes: Group) -> u64 {
    match &client.state.store {
        Some(store) => store.submit_group(changes),
        None => 0,
    }
}

/// Encodes one PUBLISH (counted by the caller, [`count_sent`]). Returns
/// false if it was not sent because it exceeds the client's Maximum Packet
/// Size; such a message is dropped as if delivered [MQTT-3.1.2-25].
fn send_publish(
    client: &mut ClientState,
    delivery: &Delivery,
    packet_id: Option<NonZeroU16>,
    dup: bool,
    now: Instant,
) -> bool {
    let message = &delivery.message;
    let expiry = message.remaining_expiry(now).flatten();
    let (with_topic, alias, new_alias) = outbound_alias(client, &message.topic);
    // The message's own properties as they are, unless this copy needs its
    // own: the usual fan-out copy clones nothing.
    let own;
    let properties = if expiry == message.properties.message_expiry_interval
        && delivery.subscription_ids.is_empty()
        && alias.is_none()
    {
        &message.properties
    } else {
        own = PublishProperties {
            message_expiry_interval: expiry,
            subscription_identifiers: delivery.subscription_ids.clone(),
            topic_alias: alias,
            ..(*message.properties).clone()
        };
        &own
    };
    // Encoded from the message itself: no clone of its topic or payload,
    // whose shared reference counts every copy of a fan-out would update.
    let publish = PublishView {
        dup,
        qos: delivery.qos,
        retain: delivery.retain,
        topic: if with_topic { &message.topic } else { "" },
        packet_id,
        payload: &message.payload,
        properties,
    };
    let start = client.out.len();
    let sent = client
        .encode_with("PUBLISH", |version, out| publish.encode(version, out))
        .is_some_and(|size| size <= client.peer.max_packet_size as usize);
    if !sent {
        client.out.truncate(start);
        if new_alias {
            client.aliases_mut().outbound.remove(&message.topic);
        }
        client.state.metrics.drop(Dropped::TooLarge);
    }
    sent
}

/// Chooses the topic and alias for a PUBLISH to the client: an alias it
/// already knows (no topic), a new alias while under its Topic Alias
/// Maximum, or the plain topic. The first value says whether the topic is
/// sent, the third that a new alias was made.
fn outbound_alias(client: &mut ClientState, topic: &ByteStr) -> (bool, Option<u16>, bool) {
    let max = client.peer.topic_alias_maximum;
    if max == 0 {
        return (true, None, false);
    }
    let aliases = &mut client.aliases_mut().outbound;
    if let Some(&alias) = aliases.get(topic.as_str()) {
        return (false, Some(alias), false);
    }
    let used = aliases.len();
    if used < usize::from(max) {
        let alias = used as u16 + 1;
        aliases.insert(topic.clone(), alias);
        return (true, Some(alias), true);
    }
    (true, None, false)
}
