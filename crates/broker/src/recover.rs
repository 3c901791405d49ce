//! Restart: rebuilds sessions, subscriptions, queues, in-flight and QoS 2
//! state, pending wills and retained messages from the store, before the
//! first connection is accepted.
//!
//! Every session comes back detached, as after its client disconnected: its
//! expiry runs from when it was stored as disconnected (or from now, if the
//! broker died while the client was connected), and a will waiting out its
//! delay is due when it was. A record that cannot be read is skipped and
//! counted, and the count is logged as an error naming the file: the broker
//! never starts silently without data it had.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tern_codec::ByteStr;

use crate::message::{Delivery, Message};
use crate::registry::{self, Handed};
use crate::router;
use crate::session::{Inflight, Moving, NEVER_EXPIRES, PendingWill, Session, SessionSubscription};
use crate::state::{BrokerState, Subscriber};
use crate::store::records::{self, Clock, RecordError};
use crate::store::{Group, Recovered};

/// What a restore found, for the log.
#[derive(Debug, Default)]
struct Report {
    sessions: usize,
    queued: usize,
    inflight: usize,
    retained: usize,
    delayed: usize,
    expired: usize,
    unreadable: usize,
    /// Queue entries whose message record is missing.
    missing: usize,
}

/// Restores everything in `recovered` into `state`.
pub fn restore(state: &Arc<BrokerState>, recovered: Recovered) {
    let Some(store) = state.store.clone() else {
        return;
    };
    let started = std::time::Instant::now();
    let clock = Clock::now();
    let mut report = Report::default();
    let path = store.path().display().to_string();
    let skip = |what: &str, key: &str, e: RecordError, report: &mut Report| {
        tracing::error!(file = %path, %key, error = %e, "skipping unreadable {what} record");
        report.unreadable += 1;
    };

    let mut messages: HashMap<u64, Arc<Message>> = HashMap::new();
    let mut expired = HashSet::new();
    for (id, record) in recovered.messages {
        match records::decode_message(&record, &clock) {
            Ok(Some(message)) => {
                store.adopt(&message, id);
                messages.insert(id, message);
            }
            Ok(None) => {
                report.expired += 1;
                expired.insert(id);
                store.forget_message(id);
            }
            Err(e) => skip("message", &id.to_string(), e, &mut report),
        }
    }

    for (client_id, record) in recovered.sessions {
        match records::decode_session(&record) {
            Ok(record) => {
                restore_session(state, &client_id, record, &clock, &mut report);
                report.sessions += 1;
            }
            Err(e) => skip("session", &client_id, e, &mut report),
        }
    }

    for (client_id, seq, record) in recovered.queue {
        let entry = match records::decode_queue_entry(&record) {
            Ok(entry) => entry,
            Err(e) => {
                skip("queue", &format!("{client_id}/{seq}"), e, &mut report);
                continue;
            }
        };
        // An entry without its session (ended) is garbage; without its
        // message, it expired, or the message is lost (counted).
        let Some(session) = state.sessions().get(&client_id) else {
            store.delete_entry(&ByteStr::from(client_id.clone()), seq);
            continue;
        };
        let Some(message) = messages.get(&entry.message_id) else {
            if !expired.contains(&entry.message_id) {
                report.missing += 1;
            }
            store.delete_entry(&ByteStr::from(client_id.clone()), seq);
            continue;
        };
        let delivery = Delivery {
            message: message.clone(),
            qos: entry.qos,
            retain: entry.retain,
            subscription_ids: entry.subscription_ids,
            seq,
        };
        let mut st = session.lock();
        match entry.sent {
            None => {
                st.enqueue(delivery);
                report.queued += 1;
            }
            Some((packet_id, state)) => {
                st.traffic().inflight.push_back(Inflight {
                    packet_id,
                    state,
                    delivery,
                });
                report.inflight += 1;
            }
        }
    }

    for (client_id, packet_id) in recovered.inbound_qos2 {
        if let Some(session) = state.sessions().get(&client_id) {
            session.lock().traffic().inbound_qos2.insert(packet_id);
        }
    }

    for (topic, record) in recovered.retained {
        match records::decode_retained(&record, &clock) {
            Ok(Some((message, owner))) => {
                state.retained.restore(message, owner);
                report.retained += 1;
            }
            Ok(None) => {
                report.expired += 1;
                store.clear_retained(&ByteStr::from(topic.clone()));
            }
            Err(e) => skip("retained", &topic, e, &mut report),
        }
    }
    for (id, record) in recovered.delayed {
        match records::decode_delayed(&record, &clock) {
            Ok((due_ms, Some((message, owner)))) => {
                state.delayed.restore(id, due_ms, message, owner);
                report.delayed += 1;
            }
            Ok((_, None)) => {
                // Expired while it waited: never published.
                report.expired += 1;
                store.delete_delayed(id);
            }
            Err(e) => skip("delayed", &id.to_string(), e, &mut report),
        }
    }
    // Messages no queue holds any more are deleted as they drop here.
    drop(messages);

    let file = store.path().display();
    let took = started.elapsed();
    tracing::info!(
        %file,
        sessions = report.sessions,
        queued = report.queued,
        in_flight = report.inflight,
        retained = report.retained,
        delayed = report.delayed,
        expired = report.expired,
        ?took,
        "restored state"
    );
    if report.unreadable > 0 || report.missing > 0 {
        tracing::error!(
            %file,
            unreadable_records = report.unreadable,
            queue_entries_without_message = report.missing,
            "some stored data could not be restored; the rest was"
        );
    }
}

/// Installs a session another node handed over ([`registry::hand_over`]) for
/// a client connecting here: as a restart restores one, and written to this
/// node's store, if it has one, with its queue, as if it had always been
/// here. The client's connection attaches to it next. Returns the fabric's
/// ticket for its subscriptions (see [`crate::seams::Fabric::interest`]).
pub fn adopt(state: &Arc<BrokerState>, client_id: &str, handed: Handed) -> u64 {
    let clock = Clock::now();
    let mut report = Report::default();
    let interest = restore_session(state, client_id, handed.record, &clock, &mut report);
    let Some(session) = state.sessions().get(client_id) else {
        return interest;
    };
    let mut group = Group::default();
    let mut st = session.lock();
    st.stored = false;
    registry::persist(state, &session, &mut st);
    let store = state.store.as_ref().filter(|_| st.stored);
    for mut delivery in handed.traffic.pending {
        if let Some(store) = store.filter(|_| st.stores(delivery.qos)) {
            store.queue(&session.client_id, &mut delivery, &mut group);
        }
        st.enqueue(delivery);
    }
    for mut inflight in handed.traffic.inflight {
        if let Some(store) = store {
            let delivery = &mut inflight.delivery;
            store.queue(&session.client_id, delivery, &mut group);
            let sent = (inflight.packet_id, inflight.state);
            store.sent(&session.client_id, delivery, sent, &mut group);
        }
        st.traffic().inflight.push_back(inflight);
    }
    for packet_id in handed.traffic.inbound_qos2 {
        if let Some(store) = store {
            store.hold_inbound(&session.client_id, packet_id, &mut group);
        }
        st.traffic().inbound_qos2.insert(packet_id);
    }
    st.traffic()
        .inbound_kept
        .extend(handed.traffic.inbound_kept);
    let Moving {
        floor,
        overflow,
        done,
        ..
    } = handed.traffic;
    st.restore_place(floor, overflow, done);
    if let Some(store) = store {
        store.submit_group(group);
    }
    interest
}

/// Rebuilds one session: subscriptions (into the tree too), expiry timer,
/// pending will. Returns the fabric's highest ticket for the subscriptions.
fn restore_session(
    state: &Arc<BrokerState>,
    client_id: &str,
    record: records::SessionRecord,
    clock: &Clock,
    report: &mut Report,
) -> u64 {
    let mut interest = 0;
    let id = ByteStr::from(client_id.to_owned());
    let (session, _) = state
        .sessions()
        .get_or_create(client_id, || Session::new(id.clone()));
    let mut st = session.lock();
    // A cap set since the session was stored applies to it too.
    st.expiry_secs = state.config.capped_expiry(record.expiry_secs);
    st.stored = true;
    st.username = record.username.map(std::sync::Arc::from);
    for (filter, options, subscription_id) in record.subscriptions {
        if let Some((group, inner)) = router::split_shared(&filter) {
            let subscriber = Subscriber {
                session: session.clone(),
                options,
                subscription_id,
                // Unknown until the client connects: checked per message.
                readable: Default::default(),
            };
            let (_, ticket) = router::subscribe(state, inner, group, subscriber);
            interest = interest.max(ticket);
        }
        st.subscriptions.insert(
            filter,
            SessionSubscription {
                options,
                subscription_id,
            },
        );
    }
    let now_ms = clock.unix_ms();
    if let Some((will, due_ms)) = record.will {
        match records::decode_message(&will, clock) {
            Ok(Some(message)) => {
                let delay = Duration::from_millis(due_ms.saturating_sub(now_ms));
                st.pending_will = Some(Box::new(PendingWill {
                    message: message.clone(),
                    due: clock.to_instant(due_ms),
                    username: st.username.clone(),
                }));
                registry::schedule_will(state, &session, message, delay);
            }
            Ok(None) => report.expired += 1,
            Err(e) => {
                tracing::error!(%client_id, error = %e, "skipping unreadable will");
                report.unreadable += 1;
            }
        }
    }
    if st.expiry_secs != NEVER_EXPIRES {
        let since = now_ms.saturating_sub(record.disconnected_at_ms.unwrap_or(now_ms));
        let left = (u64::from(st.expiry_secs) * 1000).saturating_sub(since);
        registry::schedule_expiry(state, &session, st.generation, Duration::from_millis(left));
    }
    interest
}
