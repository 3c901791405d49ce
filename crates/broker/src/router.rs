//! Routing: from one published message to every matching session's queue.
//!
//! [`publish`] is the single entry for every message the broker accepts — from
//! a client's PUBLISH, a will, or `$SYS` — so retained handling and delivery
//! rules are applied in one place. Matching walks the subscription tree (never
//! every subscription) under its read lock, collects the targets, releases the
//! lock, then pushes one `Delivery` per session holding the shared
//! `Arc<Message>`: the payload is never copied per subscriber.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_codec::{ByteStr, QoS, SubscriptionOptions};

use crate::auth::{Identity, ReadCheck};
use crate::delayed::{self, Full};
use crate::message::{Delivery, Message};
use crate::metrics::{Dropped, Metrics};
use crate::session::{NotQueued, QueueLimits, Queued, Session};
use crate::state::{BrokerState, Subscriber};
use crate::store::Group;
use crate::store::records::{self, Clock};
use crate::topic_tree::{Matched, SharedGroup};
use crate::webhook;

/// Splits `$share/group/filter` into `(Some(group), filter)`; any other
/// filter into `(None, filter)`. `None` if a share filter is malformed: the
/// group name must be non-empty without wildcards, and a filter must follow
/// [MQTT-4.8.2-1], [MQTT-4.8.2-2].
pub fn split_shared(filter: &str) -> Option<(Option<&str>, &str)> {
    let Some(rest) = filter.strip_prefix("$share/") else {
        return Some((None, filter));
    };
    let (group, inner) = rest.split_once('/')?;
    if group.is_empty() || group.contains(['+', '#']) || inner.is_empty() {
        return None;
    }
    Some((Some(group), inner))
}

/// One session that gets the message, with the options that decide how.
struct Target {
    session: Arc<Session>,
    options: SubscriptionOptions,
    subscription_ids: Vec<u32>,
    /// Shared-subscription deliveries are never merged with others.
    shared: bool,
    /// Whether the ACL must be asked if the session may read the topic.
    check: bool,
}

/// Which of this node's subscriptions a message is routed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    /// Every matching subscription: a message accepted on this node, or
    /// one handed in through `BrokerHandle::route_remote`.
    All,
    /// Non-shared subscriptions only: a message from another node of a
    /// cluster, whose shared groups are served apart, once cluster-wide.
    Direct,
    /// Only the shared group with this key (`{group}/{filter}`): another
    /// node's message, which the cluster gave this node to serve.
    Group(&'a str),
    /// Only this client's session, non-shared subscriptions: a stored
    /// message it missed while it moved from a node that died.
    Session(&'a str),
}

/// Where a published message went.
#[derive(Debug, Default, Clone)]
pub struct Routed {
    /// How many sessions it matched, whether or not it was queued for them
    /// (a full queue drops it for that session alone; the publisher is not
    /// told, as its message went to the others).
    pub matched: usize,
    /// The store's ticket for everything it wrote for this message (0 if
    /// nothing): the publisher's acknowledgement waits for it.
    pub ticket: u64,
    /// The keys of the shared groups it was given to (with [`Scope::All`]).
    pub served: Vec<Arc<str>>,
    /// The sessions whose queues it went over the limits of, their
    /// connections keeping up ([`Queued::Over`]): its publisher waits for
    /// room in them before it reads more.
    pub over: Vec<Arc<Session>>,
}

/// Stores (if retained) and routes a message. `owner`: the user who
/// published it (for the retained quotas), `None` if anonymous or the broker.
pub fn publish(state: &BrokerState, message: Arc<Message>, owner: Option<&Arc<str>>) -> Routed {
    publish_with(state, message, owner, Group::default())
}

/// [`publish`], with `group` (changes that must land with the message's
/// deliveries: an inbound QoS 2 id) stored in the same transaction.
pub fn publish_with(
    state: &BrokerState,
    message: Arc<Message>,
    owner: Option<&Arc<str>>,
    group: Group,
) -> Routed {
    let routed = publish_here(state, &message, owner, group);
    // `$SYS` messages (no origin) are this node's own.
    if message.origin.is_some() {
        state.fabric.forward(&message, &routed.served);
        state
            .webhooks
            .emit(webhook::Kind::Published, || webhook::Event::Published {
                message: message.clone(),
                username: owner.cloned(),
            });
    }
    routed
}

/// [`publish_with`] on this node only: stored if retained, routed to this
/// node's sessions, not forwarded (a cluster's stored messages are sent to
/// the other nodes by the fabric itself).
pub fn publish_here(
    state: &BrokerState,
    message: &Arc<Message>,
    owner: Option<&Arc<str>>,
    group: Group,
) -> Routed {
    let mut ticket = 0;
    if message.retain && state.config.retain_available {
        ticket = state.retained.set(message, owner);
    }
    let mut routed = route(state, message, Scope::All, group);
    routed.ticket = routed.ticket.max(ticket);
    routed
}

/// Schedules a message published to `$delayed/...` (`message` addressed
/// to its target topic) `delay` from now; with a store, its record lands
/// with `group` (the publisher's QoS 2 id). Returns the store ticket the
/// publisher's acknowledgement waits for (0: nothing to wait for), or
/// `Full` (counted) at `max_delayed_messages`.
pub fn schedule_delayed(
    state: &BrokerState,
    message: Arc<Message>,
    owner: Option<Arc<str>>,
    delay: Duration,
    group: Group,
) -> Result<u64, Full> {
    let due = delayed::now_ms().saturating_add(delay.as_millis() as u64);
    let record = state
        .store
        .as_ref()
        .map(|_| records::encode_delayed(due, &message, owner.as_deref(), &Clock::now()));
    let max = state.config.max_delayed_messages;
    let id = match state.delayed.insert(max, due, message, owner) {
        Ok(id) => id,
        Err(full) => {
            let refused = &state.limits.counters.delayed_refused;
            refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(full);
        }
    };
    Ok(match (&state.store, record) {
        (Some(store), Some(record)) => store.put_delayed(id, record, group),
        _ => 0,
    })
}

/// Cancels delayed message `id` (the admin API): never published, its
/// record deleted. False if there is no such message.
pub fn cancel_delayed(state: &BrokerState, id: u64) -> bool {
    let cancelled = state.delayed.cancel(id);
    if cancelled && let Some(store) = &state.store {
        store.delete_delayed(id);
    }
    cancelled
}

/// The task that publishes each delayed message when it is due, until
/// shutdown; with a store, its record's delete lands with its deliveries.
pub async fn release_delayed(state: Arc<BrokerState>) {
    loop {
        let (due, next) = state.delayed.due(delayed::now_ms());
        for (id, message, owner) in due {
            let mut group = Group::default();
            if let Some(store) = &state.store {
                store.delayed_done(id, &mut group);
            }
            publish_with(&state, message, owner.as_ref(), group);
        }
        // At most a minute: a clock set forward is noticed.
        let wait = next.map_or(MAX_SLEEP, |n| n.min(MAX_SLEEP));
        tokio::select! {
            () = state.shutdown.cancelled() => return,
            () = state.delayed.changed() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// The longest the delayed-publish task sleeps without looking again.
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// The store changes that must land with a message's deliveries: the QoS 2
/// packet id (`inbound`) of a persistent session's PUBLISH, if any.
pub fn inbound_group(state: &BrokerState, client_id: &ByteStr, inbound: Option<u16>) -> Group {
    let mut group = Group::default();
    if let (Some(store), Some(id)) = (&state.store, inbound) {
        store.hold_inbound(client_id, id, &mut group);
    }
    group
}

/// Routes a message that another node accepted to this node's sessions in
/// `scope` (the entry of the routing seam, [`crate::seams::Fabric`]): not
/// stored as retained (the retained-storage seam did that where it was
/// published) and not forwarded again.
pub fn publish_remote(state: &BrokerState, message: Arc<Message>, scope: Scope) -> Routed {
    route(state, &message, scope, Group::default())
}

/// Whether a non-shared subscription here matches `topic`.
pub fn has_subscriber(state: &BrokerState, topic: &str) -> bool {
    let mut found = false;
    state.tree().for_each_match(topic, |matched| {
        found |= matches!(matched, Matched::Subscriber { .. });
    });
    found
}

/// Adds a session's subscription to the tree (`filter` without
/// `$share/group/`, `group` its share group). Returns whether the session
/// already had it (replaced), and the fabric's ticket for it (0: nothing
/// to wait for; see [`crate::seams::Fabric::interest`]).
pub fn subscribe(
    state: &BrokerState,
    filter: &str,
    group: Option<&str>,
    subscriber: Subscriber,
) -> (bool, u64) {
    let client_id = subscriber.session.client_id.clone();
    let existed = state
        .tree_mut()
        .insert(filter, group, &client_id, subscriber)
        .is_some();
    // A replaced subscription was already told of.
    let ticket = match existed {
        true => 0,
        false => state.fabric.interest(filter, group, true),
    };
    (existed, ticket)
}

/// Removes `session`'s subscriptions to `filters` (as subscribed,
/// `$share/…` included) from the tree, if they are still its own: another
/// session object of the same client id may have subscribed meanwhile.
pub fn unsubscribe(
    state: &BrokerState,
    session: &Arc<Session>,
    filters: impl IntoIterator<Item = ByteStr>,
) {
    let mut removed = Vec::new();
    let mut tree = state.tree_mut();
    for filter in filters {
        let Some((group, inner)) = split_shared(filter.as_str()) else {
            continue;
        };
        match tree.remove(inner, group, &session.client_id) {
            Some(old) if !Arc::ptr_eq(&old.session, session) => {
                tree.insert(inner, group, &session.client_id, old);
            }
            Some(_) => removed.push((inner.to_owned(), group.map(str::to_owned))),
            None => {}
        }
    }
    drop(tree);
    for (filter, group) in removed {
        state.fabric.interest(&filter, group.as_deref(), false);
    }
}

/// Queues `message` for every matching subscription. With a store, the
/// deliveries to persistent sessions and `group` land in one transaction,
/// and the deliveries become visible to their connections after that.
fn route(state: &BrokerState, message: &Arc<Message>, scope: Scope, mut group: Group) -> Routed {
    state.monitor.note(message);
    let Targets {
        mut list,
        groups,
        served,
        ..
    } = matching_targets(state, message, scope);
    let mut routed = Routed {
        matched: list.len() + groups.len(),
        ticket: 0,
        served,
        over: Vec::new(),
    };
    let mut staged = Vec::new();
    let mut acl = ReadCheck::default();
    // A shared message goes to the first member in pick order that may
    // read its topic; only if none may is it dropped.
    for candidates in groups {
        let mut readable = candidates
            .into_iter()
            .filter(|t| !t.check || may_read(&mut acl, state, &t.session, &message.topic));
        match readable.next() {
            Some(chosen) => list.push(Target {
                check: false,
                ..chosen
            }),
            None => state.metrics.drop(Dropped::NoMember),
        }
    }
    for target in list {
        if target.check && !may_read(&mut acl, state, &target.session, &message.topic) {
            continue;
        }
        let delivery = Delivery {
            message: message.clone(),
            qos: message.qos.min(target.options.qos),
            // Retain As Published, else the flag is cleared for live
            // deliveries [MQTT-3.3.1-12], [MQTT-3.3.1-13].
            retain: message.retain && target.options.retain_as_published,
            subscription_ids: target.subscription_ids,
            seq: 0,
        };
        let limits = state.queue_limits_of(&target.session);
        let queued = match &state.store {
            None => target.session.deliver(delivery, limits),
            Some(store) => match target.session.stage(delivery, limits, store, &mut group) {
                Ok((delivery, queued)) => {
                    if queued == Queued::Over {
                        routed.over.push(target.session.clone());
                    }
                    if let Some(delivery) = delivery {
                        staged.push((target.session, delivery));
                    }
                    continue;
                }
                Err(why) => Err(why),
            },
        };
        match queued {
            Ok(Queued::Within) => {}
            Ok(Queued::Over) => routed.over.push(target.session),
            Err(why) => dropped(state, why, message, &target.session),
        }
    }
    if let Some(store) = &state.store {
        routed.ticket = store.submit_group(group);
        for (session, delivery) in staged {
            session.enqueue_stored(delivery);
        }
    }
    routed
}

/// Walks the tree under its read lock and returns who should get `message`:
/// one target per session, and the shared groups whose pick depends on an
/// ACL check (made after the lock is released); only those in `scope`.
fn matching_targets(state: &BrokerState, message: &Message, scope: Scope) -> Targets {
    let mut targets = Targets::default();
    // One load per message; 0 (no ACL) means no subscription needs a check.
    let acl_generation = state.auth.acl_generation();
    let tree = state.tree();
    tree.for_each_match(&message.topic, |m| {
        if let Matched::Subscriber { first: true, .. } = m {
            targets.filters += 1;
        }
        targets.take(m, message, scope, acl_generation);
    });
    targets
}

impl Targets {
    /// Adds what the tree matched, if it is in `scope`.
    fn take(
        &mut self,
        m: Matched<'_, Subscriber>,
        message: &Message,
        scope: Scope,
        acl_generation: u64,
    ) {
        match (m, scope) {
            (Matched::Subscriber { client_id, .. }, Scope::Session(only))
                if **client_id != *only => {}
            (
                Matched::Subscriber {
                    client_id, value, ..
                },
                Scope::All | Scope::Direct | Scope::Session(_),
            ) => {
                // No Local: not back to the publisher [MQTT-3.8.3-3].
                if value.options.no_local && message.origin.as_ref() == Some(client_id) {
                    return;
                }
                self.add(value, acl_generation);
            }
            (Matched::Shared(group), Scope::All) => {
                self.served.push(group.key().clone());
                self.add_shared(group, acl_generation);
            }
            (Matched::Shared(group), Scope::Group(key)) if **group.key() == *key => {
                self.add_shared(group, acl_generation);
            }
            _ => {}
        }
    }
}

/// Whether the ACL lets `session`'s client read `topic`.
fn may_read(acl: &mut ReadCheck, state: &BrokerState, session: &Session, topic: &str) -> bool {
    let username = session.lock().username.clone();
    let id = Identity {
        username: username.as_deref(),
        client_id: &session.client_id,
    };
    acl.allows(&state.auth, &id, topic)
}

fn target(subscriber: &Subscriber, shared: bool, acl_generation: u64) -> Target {
    Target {
        check: subscriber
            .readable
            .needs_check(acl_generation, subscriber.session.identity()),
        session: subscriber.session.clone(),
        options: subscriber.options,
        subscription_ids: subscriber.subscription_id.into_iter().collect(),
        shared,
    }
}

/// The targets of one message while the tree is walked: one per session, so
/// that a session with many matching filters costs one delivery, and each
/// further filter only a lookup (a client may hold thousands of filters that
/// all match one topic).
#[derive(Default)]
struct Targets {
    list: Vec<Target>,
    /// Shared groups whose first choice needs an ACL check: their members
    /// in pick order, up to the first that needs none.
    groups: Vec<Vec<Target>>,
    /// The keys of the shared groups matched.
    served: Vec<Arc<str>>,
    /// Session → its non-shared target in `list`; built once the list is
    /// too long to scan, and subscribers of more than one filter matched.
    index: HashMap<*const Session, usize, BuildHasherDefault<PtrHasher>>,
    /// How many filters' non-shared subscribers were matched so far. While
    /// there is one, every subscriber is another client: no look-up (a
    /// fan-out to many clients of one topic, the common case).
    filters: usize,
}

/// Hashes the session pointers of [`Targets::index`]. They are distinct by
/// nature, so one multiply spreads them enough; SipHash, the default, cost a
/// QoS 0 fan-out to 64 sessions about a sixth of its CPU.
#[derive(Default)]
struct PtrHasher(u64);

impl Hasher for PtrHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_usize(b as usize ^ self.0 as usize);
        }
    }

    fn write_usize(&mut self, n: usize) {
        // Fold the high half down: the table indexes by the low bits, which
        // an aligned pointer times an odd constant leaves zero.
        let h = (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = h ^ (h >> 32);
    }
}

/// Up to this many targets a scan finds a session faster than a hash.
const SCAN_TARGETS: usize = 8;

impl Targets {
    /// Adds a non-shared subscription: a client with several matching
    /// subscriptions gets one copy at the highest granted QoS carrying every
    /// subscription identifier [MQTT-3.3.4-3], [MQTT-3.3.4-5]. Retain As
    /// Published applies if any matching subscription asks for it.
    fn add(&mut self, subscriber: &Subscriber, acl_generation: u64) {
        if self.filters < 2 {
            self.list.push(target(subscriber, false, acl_generation));
            return;
        }
        if self.index.is_empty() {
            // A second filter's: from now on, look each session up.
            self.index_if_long();
        }
        let key = Arc::as_ptr(&subscriber.session);
        let found = if self.index.is_empty() {
            self.list
                .iter()
                .position(|t| !t.shared && Arc::as_ptr(&t.session) == key)
        } else {
            self.index.get(&key).copied()
        };
        let Some(i) = found else {
            self.list.push(target(subscriber, false, acl_generation));
            self.index_if_long();
            return;
        };
        let t = &mut self.list[i];
        t.options.qos = t.options.qos.max(subscriber.options.qos);
        t.options.retain_as_published |= subscriber.options.retain_as_published;
        t.subscription_ids.extend(subscriber.subscription_id);
        // One wholly readable filter matching the topic is enough.
        t.check &= subscriber
            .readable
            .needs_check(acl_generation, subscriber.session.identity());
    }

    /// Picks the member of a shared group that gets the message: round
    /// robin, online members before offline ones. A member that may need an
    /// ACL check is not sure to get it, so then the group's members go to
    /// `groups` in that order, to be checked one by one.
    fn add_shared(&mut self, group: &SharedGroup<Subscriber>, acl_generation: u64) {
        let members = group.members();
        if members.is_empty() {
            return;
        }
        let start = group.next_start();
        let in_turn = (0..members.len()).map(|i| &members[(start + i) % members.len()].1);
        let online = in_turn.clone().filter(|s| s.session.is_online());
        let offline = in_turn.filter(|s| !s.session.is_online());
        let mut order = online
            .chain(offline)
            .map(|s| target(s, true, acl_generation));
        let Some(first) = order.next() else {
            return;
        };
        if !first.check {
            self.list.push(first);
            return;
        }
        let mut candidates = vec![first];
        for t in order {
            let sure = !t.check;
            candidates.push(t);
            if sure {
                break;
            }
        }
        self.groups.push(candidates);
    }

    /// Keeps `index` complete once the list is longer than a scan should be.
    fn index_if_long(&mut self) {
        if self.list.len() <= SCAN_TARGETS {
            return;
        }
        if self.index.is_empty() {
            for (i, t) in self.list.iter().enumerate().filter(|(_, t)| !t.shared) {
                self.index.insert(Arc::as_ptr(&t.session), i);
            }
        } else if let Some(last) = self.list.last() {
            self.index
                .insert(Arc::as_ptr(&last.session), self.list.len() - 1);
        }
    }
}

/// Retained messages matching `filter` that have not expired, for delivery
/// after a SUBSCRIBE.
pub fn retained_matching(state: &BrokerState, filter: &str) -> Vec<Arc<Message>> {
    let now = Instant::now();
    let mut found = Vec::new();
    state.retained.for_each_match(filter, &mut |m| {
        if m.remaining_expiry(now).is_some() {
            found.push(m.clone());
        }
    });
    found
}

/// Retained messages owed to one new subscription.
pub struct RetainedBatch {
    pub messages: Vec<Arc<Message>>,
    pub granted: QoS,
}

/// Queues the retained messages of one SUBSCRIBE's new subscriptions to
/// their session. They are sent with RETAIN set [MQTT-3.3.1-9] at the lower
/// of their QoS and the granted one.
///
/// A subscriber to `#` asks for every retained message at once, and expects
/// them all (Mosquitto sends them all): so they are queued whole, past the
/// queue limits, by as much as they are. The queue then holds at most its
/// limits plus one SUBSCRIBE's retained messages, each an `Arc` of a message
/// the retained store keeps anyway; a SUBSCRIBE that comes while it is still
/// that full has the rest of its messages dropped and counted. Nobody waits
/// for room for them, so they never go over by doubling
/// ([`QueueLimits::may_double`]).
pub fn deliver_retained(
    state: &BrokerState,
    session: &Session,
    batches: Vec<RetainedBatch>,
    subscription_id: Option<u32>,
) {
    let owed = batches.iter().flat_map(|b| &b.messages);
    let (count, bytes) = owed.fold((0usize, 0usize), |(n, b), m| (n + 1, b + m.size()));
    let limits = &QueueLimits {
        may_double: false,
        ..state.queue_limits_of(session).raised_by(count, bytes)
    };
    for batch in batches {
        for message in batch.messages {
            deliver_one_retained(
                state,
                session,
                message,
                batch.granted,
                subscription_id,
                limits,
            );
        }
    }
}

fn deliver_one_retained(
    state: &BrokerState,
    session: &Session,
    message: Arc<Message>,
    granted: QoS,
    subscription_id: Option<u32>,
    limits: &QueueLimits,
) {
    let qos = message.qos.min(granted);
    let delivery = Delivery {
        message: message.clone(),
        qos,
        retain: true,
        subscription_ids: subscription_id.into_iter().collect(),
        seq: 0,
    };
    let queued = match &state.store {
        None => session.deliver(delivery, limits).map(drop),
        Some(store) => {
            let mut group = Group::default();
            session
                .stage(delivery, limits, store, &mut group)
                .map(|(delivery, _)| {
                    if let Some(delivery) = delivery {
                        store.submit_group(group);
                        session.enqueue_stored(delivery);
                    }
                })
        }
    };
    if let Err(why) = queued {
        dropped(state, why, &message, session);
    }
}

/// Counts a delivery that was not queued; over the queue limits it also
/// counts for `$SYS/broker/limits/queue/dropped`. The publisher is not told:
/// its message went to every other matching session.
fn dropped(state: &BrokerState, why: NotQueued, message: &Arc<Message>, session: &Session) {
    let why = match why {
        NotQueued::Duplicate | NotQueued::Deferred => return,
        NotQueued::Offline => Dropped::Offline,
        NotQueued::QueueFull => Dropped::QueueFull,
    };
    state.metrics.drop(why);
    state
        .webhooks
        .emit(webhook::Kind::Dropped, || webhook::Event::Dropped {
            message: message.clone(),
            client_id: session.client_id.clone(),
            reason: why.label(),
        });
    if why == Dropped::QueueFull {
        Metrics::add(&state.limits.counters.queue_dropped, 1);
        crate::throttled!(
            warn,
            "session queue full",
            "a session's queue is full (max_queued_messages, max_queued_bytes): a message for it was dropped (counted in $SYS/broker/limits/queue/dropped)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_filters_split() {
        assert_eq!(split_shared("a/b"), Some((None, "a/b")));
        assert_eq!(split_shared("$share/g/a/#"), Some((Some("g"), "a/#")));
        assert_eq!(split_shared("$share/g/"), None);
        assert_eq!(split_shared("$share//a"), None);
        assert_eq!(split_shared("$share/g+/a"), None);
        assert_eq!(split_shared("$share/g"), None);
    }
}
