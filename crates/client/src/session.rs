//! Session state: what the client must remember across packets and across
//! connections.
//!
//! - outgoing QoS 1/2 publishes until their flow completes (PUBACK, or
//!   PUBREC then PUBCOMP), in the order they were first sent, so that a
//!   resumed session can re-send them in order with DUP=1 (or PUBREL);
//! - publishes waiting for the broker's Receive Maximum (or for a connection);
//! - SUBSCRIBE/UNSUBSCRIBE requests until acknowledged;
//! - incoming QoS 2 packet ids between PUBREC and PUBREL, so a re-sent
//!   PUBLISH is delivered once;
//! - with manual acknowledgements, the incoming QoS 1/2 messages of this
//!   connection the application has not acknowledged yet;
//! - the subscriptions granted so far, to renew them when the broker has no
//!   session for us after a reconnect.
//!
//! No I/O and no async here: every method takes a packet (or a request) and
//! returns the packets to send, so the rules can be tested on their own and
//! the event loop stays about sockets and timers.

use std::collections::{HashMap, HashSet, VecDeque};
use std::num::NonZeroU16;

use tern_codec::{
    ByteStr, Packet, PubAck, Publish, QoS, ReasonCode, SubAck, Subscribe, SubscribeFilter,
    SubscribeProperties, SubscriptionOptions, UnsubAck,
};
use tokio::sync::oneshot;

use crate::error::{DisconnectReason, Error, closed};

/// Where a caller waits for the result of its request.
pub(crate) type Reply<T> = oneshot::Sender<Result<T, Error>>;

/// Answers a caller; one that stopped waiting is no concern of ours.
pub(crate) fn answer<T>(reply: Option<Reply<T>>, result: Result<T, Error>) {
    if let Some(reply) = reply {
        let _ = reply.send(result);
    }
}

/// Where an outgoing QoS 1/2 publish stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Sent; waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Sent,
    /// QoS 2: PUBREC received with this reason, PUBREL sent, waiting for PUBCOMP.
    Released { received: ReasonCode },
}

#[derive(Debug)]
struct Outgoing {
    /// Order of first sending, for re-sending in order.
    seq: u64,
    publish: Publish,
    stage: Stage,
    reply: Option<Reply<ReasonCode>>,
}

/// A publish not sent yet.
#[derive(Debug)]
struct Queued {
    publish: Publish,
    reply: Option<Reply<ReasonCode>>,
}

/// Who waits for a SUBACK or UNSUBACK.
#[derive(Debug)]
pub(crate) enum RequestReply {
    Subscribe(Reply<SubAck>),
    Unsubscribe(Reply<UnsubAck>),
    /// Our own renewal of subscriptions after a reconnect.
    Resubscribe,
}

#[derive(Debug)]
struct Request {
    seq: u64,
    /// SUBSCRIBE or UNSUBSCRIBE, kept to be re-sent after a reconnect.
    packet: Packet,
    reply: RequestReply,
}

/// A granted subscription, as the application asked for it.
#[derive(Debug, Clone, PartialEq)]
struct Subscription {
    filter: ByteStr,
    options: SubscriptionOptions,
    properties: SubscribeProperties,
}

/// The client side of an MQTT session.
#[derive(Debug)]
pub(crate) struct Session {
    last_id: u16,
    next_seq: u64,
    outgoing: HashMap<NonZeroU16, Outgoing>,
    waiting: VecDeque<Queued>,
    requests: HashMap<NonZeroU16, Request>,
    incoming_qos2: HashSet<NonZeroU16>,
    /// Manual acknowledgements: messages of this connection delivered and
    /// not yet acknowledged by the application, with their QoS.
    unacked: HashMap<NonZeroU16, QoS>,
    subscriptions: Vec<Subscription>,
    /// The broker's Receive Maximum: QoS 1/2 publishes we may have in flight.
    pub(crate) receive_maximum: u16,
}

impl Session {
    pub(crate) fn new() -> Self {
        Session {
            last_id: 0,
            next_seq: 0,
            outgoing: HashMap::new(),
            waiting: VecDeque::new(),
            requests: HashMap::new(),
            incoming_qos2: HashSet::new(),
            unacked: HashMap::new(),
            subscriptions: Vec::new(),
            receive_maximum: u16::MAX,
        }
    }

    fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// The next packet id not used by an outgoing publish or a request.
    pub(crate) fn allocate_id(&mut self) -> Option<NonZeroU16> {
        for _ in 0..u16::MAX {
            self.last_id = self.last_id.wrapping_add(1);
            let free = NonZeroU16::new(self.last_id)
                .filter(|id| !self.outgoing.contains_key(id) && !self.requests.contains_key(id));
            if free.is_some() {
                return free;
            }
        }
        None
    }

    /// Queues a publish; [`Session::next_publish`] releases it in order.
    pub(crate) fn enqueue(&mut self, publish: Publish, reply: Reply<ReasonCode>) {
        self.waiting.push_back(Queued {
            publish,
            reply: Some(reply),
        });
    }

    /// The next queued publish that may be sent now: QoS 0 always, QoS 1/2
    /// while fewer than the broker's Receive Maximum are in flight. Order is
    /// kept: a publish waiting for quota holds back those behind it. The
    /// reply comes back for QoS 0 only (it resolves once written); QoS 1/2
    /// replies stay here until the flow completes.
    pub(crate) fn next_publish(&mut self) -> Option<(Packet, Option<Reply<ReasonCode>>)> {
        let front = self.waiting.front()?;
        if front.publish.qos == QoS::AtMostOnce {
            let queued = self.waiting.pop_front()?;
            return Some((Packet::Publish(queued.publish), queued.reply));
        }
        if self.outgoing.len() >= usize::from(self.receive_maximum) {
            return None;
        }
        let id = self.allocate_id()?;
        let mut queued = self.waiting.pop_front()?;
        queued.publish.packet_id = Some(id);
        let packet = Packet::Publish(queued.publish.clone());
        let seq = self.seq();
        self.outgoing.insert(
            id,
            Outgoing {
                seq,
                publish: queued.publish,
                stage: Stage::Sent,
                reply: queued.reply,
            },
        );
        Some((packet, None))
    }

    /// Gives up on an outgoing publish (it could not be encoded after all).
    pub(crate) fn abort_publish(&mut self, id: NonZeroU16, error: Error) {
        if let Some(o) = self.outgoing.remove(&id) {
            answer(o.reply, Err(error));
        }
    }

    /// Publishes in flight and waiting.
    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> (usize, usize) {
        (self.outgoing.len(), self.waiting.len())
    }

    /// PUBACK: completes a QoS 1 publish with the broker's reason.
    pub(crate) fn on_puback(&mut self, ack: &PubAck) {
        let id = ack.packet_id;
        match self.outgoing.get(&id) {
            Some(o) if o.publish.qos == QoS::AtLeastOnce => {
                if let Some(o) = self.outgoing.remove(&id) {
                    answer(o.reply, Ok(ack.reason));
                }
            }
            _ => tracing::debug!(
                packet_id = id,
                "PUBACK for no QoS 1 publish in flight; ignored"
            ),
        }
    }

    /// PUBREC: answers with PUBREL, or ends the flow on a failure reason.
    pub(crate) fn on_pubrec(&mut self, ack: &PubAck) -> Option<Packet> {
        let id = ack.packet_id;
        let Some(o) = self.outgoing.get_mut(&id) else {
            // Nothing to release: say so, so the broker can drop its state.
            return Some(Packet::PubRel(PubAck {
                reason: ReasonCode::PacketIdentifierNotFound,
                ..PubAck::new(id)
            }));
        };
        if o.publish.qos != QoS::ExactlyOnce {
            tracing::debug!(packet_id = id, "PUBREC for a QoS 1 publish; ignored");
            return None;
        }
        if ack.reason.is_error() {
            if let Some(o) = self.outgoing.remove(&id) {
                answer(o.reply, Ok(ack.reason));
            }
            return None;
        }
        if o.stage == Stage::Sent {
            o.stage = Stage::Released {
                received: ack.reason,
            };
        }
        Some(Packet::PubRel(PubAck::new(id)))
    }

    /// PUBCOMP: completes a QoS 2 publish with the PUBREC reason (or the
    /// PUBCOMP's own, if it reports a failure).
    pub(crate) fn on_pubcomp(&mut self, ack: &PubAck) {
        let id = ack.packet_id;
        match self.outgoing.get(&id).map(|o| o.stage) {
            Some(Stage::Released { received }) => {
                if let Some(o) = self.outgoing.remove(&id) {
                    let reason = if ack.reason.is_error() {
                        ack.reason
                    } else {
                        received
                    };
                    answer(o.reply, Ok(reason));
                }
            }
            _ => tracing::debug!(packet_id = id, "PUBCOMP for no released publish; ignored"),
        }
    }

    /// An incoming QoS 2 PUBLISH: true the first time this id is seen since
    /// its last PUBREL (deliver it), false for a re-send (do not).
    pub(crate) fn on_incoming_qos2(&mut self, id: NonZeroU16) -> bool {
        self.incoming_qos2.insert(id)
    }

    /// Manual acknowledgements: message `id` waits for the application.
    pub(crate) fn await_ack(&mut self, id: NonZeroU16, qos: QoS) {
        self.unacked.insert(id, qos);
    }

    /// Whether message `id` waits for the application's acknowledgement.
    pub(crate) fn awaits_ack(&self, id: NonZeroU16) -> bool {
        self.unacked.contains_key(&id)
    }

    /// The application acknowledged message `id`: its PUBACK or PUBREC, or
    /// nothing if it is not waiting (acknowledged already, or delivered on a
    /// connection since lost, whose id may now name another message).
    pub(crate) fn take_ack(&mut self, id: NonZeroU16) -> Option<Packet> {
        match self.unacked.remove(&id)? {
            QoS::ExactlyOnce => Some(Packet::PubRec(PubAck::new(id))),
            _ => Some(Packet::PubAck(PubAck::new(id))),
        }
    }

    /// The connection was lost: acknowledgements still to come are for
    /// nothing now. The broker re-sends those messages (with the session)
    /// and they are delivered again, QoS 2 ones too: none was received.
    pub(crate) fn forget_unacked(&mut self) {
        for (id, _) in self.unacked.drain() {
            self.incoming_qos2.remove(&id);
        }
    }

    /// Incoming QoS 2 messages received and not yet released.
    pub(crate) fn incoming_unreleased(&self) -> usize {
        self.incoming_qos2.len()
    }

    /// PUBREL: forgets the id and answers PUBCOMP.
    pub(crate) fn on_pubrel(&mut self, ack: &PubAck) -> Packet {
        let id = ack.packet_id;
        let reason = if self.incoming_qos2.remove(&id) {
            ReasonCode::Success
        } else {
            ReasonCode::PacketIdentifierNotFound
        };
        Packet::PubComp(PubAck {
            reason,
            ..PubAck::new(id)
        })
    }

    /// Registers a SUBSCRIBE or UNSUBSCRIBE built with an id from
    /// [`Session::allocate_id`]. An UNSUBSCRIBE forgets its filters now, so a
    /// reconnect in between does not renew them.
    pub(crate) fn add_request(&mut self, packet: Packet, reply: RequestReply) {
        let id = match &packet {
            Packet::Subscribe(s) => s.packet_id,
            Packet::Unsubscribe(u) => {
                self.subscriptions
                    .retain(|s| !u.filters.contains(&s.filter));
                u.packet_id
            }
            _ => return,
        };
        let seq = self.seq();
        self.requests.insert(id, Request { seq, packet, reply });
    }

    /// SUBACK: remembers the granted filters and answers the caller.
    pub(crate) fn on_suback(&mut self, ack: SubAck) {
        let id = ack.packet_id;
        let is_subscribe = matches!(
            self.requests.get(&id),
            Some(Request {
                packet: Packet::Subscribe(_),
                ..
            })
        );
        if !is_subscribe {
            tracing::debug!(packet_id = id, "SUBACK for no SUBSCRIBE in flight; ignored");
            return;
        }
        let Some(request) = self.requests.remove(&id) else {
            return;
        };
        if let Packet::Subscribe(subscribe) = &request.packet {
            for (f, reason) in subscribe.filters.iter().zip(&ack.reasons) {
                if reason.is_error() {
                    tracing::debug!(filter = %f.filter, ?reason, "subscription refused");
                    continue;
                }
                self.remember(Subscription {
                    filter: f.filter.clone(),
                    options: f.options,
                    properties: subscribe.properties.clone(),
                });
            }
        }
        match request.reply {
            RequestReply::Subscribe(reply) => answer(Some(reply), Ok(ack)),
            RequestReply::Resubscribe => {}
            RequestReply::Unsubscribe(_) => {}
        }
    }

    fn remember(&mut self, subscription: Subscription) {
        match self
            .subscriptions
            .iter_mut()
            .find(|s| s.filter == subscription.filter)
        {
            Some(existing) => *existing = subscription,
            None => self.subscriptions.push(subscription),
        }
    }

    /// UNSUBACK: answers the caller.
    pub(crate) fn on_unsuback(&mut self, ack: UnsubAck) {
        let id = ack.packet_id;
        match self.requests.remove(&id) {
            Some(Request {
                reply: RequestReply::Unsubscribe(reply),
                ..
            }) => answer(Some(reply), Ok(ack)),
            Some(other) => {
                tracing::debug!(packet_id = id, "UNSUBACK for a SUBSCRIBE; ignored");
                self.requests.insert(id, other);
            }
            None => tracing::debug!(packet_id = id, "UNSUBACK for no UNSUBSCRIBE; ignored"),
        }
    }

    /// The filters currently subscribed (granted), in subscription order.
    #[cfg(test)]
    pub(crate) fn subscribed_filters(&self) -> Vec<&str> {
        self.subscriptions
            .iter()
            .map(|s| s.filter.as_str())
            .collect()
    }

    /// After a (re)connect: the packets to send before anything else.
    ///
    /// With the session present, the in-flight publishes in their original
    /// order, as PUBLISH with DUP=1 or as PUBREL. Without it, the broker has
    /// forgotten everything: released QoS 2 publishes count as delivered
    /// (the broker acknowledged them with PUBREC), the others go back to the
    /// front of the queue as new publishes, and the subscriptions are renewed.
    /// Either way, unanswered SUBSCRIBE/UNSUBSCRIBE requests follow.
    pub(crate) fn resume(&mut self, session_present: bool) -> Vec<Packet> {
        let mut packets = Vec::new();
        let mut inflight: Vec<NonZeroU16> = self.outgoing.keys().copied().collect();
        inflight.sort_by_key(|id| self.outgoing.get(id).map_or(0, |o| o.seq));
        if session_present {
            for id in inflight {
                let Some(o) = self.outgoing.get(&id) else {
                    continue;
                };
                packets.push(match o.stage {
                    Stage::Sent => Packet::Publish(Publish {
                        dup: true,
                        ..o.publish.clone()
                    }),
                    Stage::Released { .. } => Packet::PubRel(PubAck::new(id)),
                });
            }
        } else {
            self.incoming_qos2.clear();
            let mut requeue = Vec::new();
            for id in inflight {
                let Some(o) = self.outgoing.remove(&id) else {
                    continue;
                };
                match o.stage {
                    Stage::Released { received } => answer(o.reply, Ok(received)),
                    Stage::Sent => requeue.push(Queued {
                        publish: Publish {
                            dup: false,
                            packet_id: None,
                            ..o.publish
                        },
                        reply: o.reply,
                    }),
                }
            }
            for queued in requeue.into_iter().rev() {
                self.waiting.push_front(queued);
            }
            self.requests
                .retain(|_, r| !matches!(r.reply, RequestReply::Resubscribe));
            packets.extend(self.resubscribe());
        }
        // Renewals made just above are already in `packets`.
        let mut requests: Vec<&Request> = self
            .requests
            .values()
            .filter(|r| session_present || !matches!(r.reply, RequestReply::Resubscribe))
            .collect();
        requests.sort_by_key(|r| r.seq);
        packets.extend(requests.into_iter().map(|r| r.packet.clone()));
        packets
    }

    /// SUBSCRIBE packets renewing every remembered subscription, one per run
    /// of subscriptions made with the same properties.
    fn resubscribe(&mut self) -> Vec<Packet> {
        let mut groups: Vec<(SubscribeProperties, Vec<SubscribeFilter>)> = Vec::new();
        for s in &self.subscriptions {
            let filter = SubscribeFilter {
                filter: s.filter.clone(),
                options: s.options,
            };
            match groups.last_mut() {
                Some((properties, filters)) if *properties == s.properties => filters.push(filter),
                _ => groups.push((s.properties.clone(), vec![filter])),
            }
        }
        let mut packets = Vec::new();
        for (properties, filters) in groups {
            let Some(packet_id) = self.allocate_id() else {
                tracing::warn!("no packet identifier left to renew subscriptions");
                break;
            };
            let packet = Packet::Subscribe(Subscribe {
                packet_id,
                filters,
                properties,
            });
            packets.push(packet.clone());
            self.add_request(packet, RequestReply::Resubscribe);
        }
        packets
    }

    /// The connection is closed for good: every waiting caller gets
    /// [`Error::Closed`].
    pub(crate) fn fail_all(&mut self, reason: &DisconnectReason) {
        let mut outgoing: Vec<Outgoing> = self.outgoing.drain().map(|(_, o)| o).collect();
        outgoing.sort_by_key(|o| o.seq);
        for o in outgoing {
            answer(o.reply, Err(closed(reason)));
        }
        for q in self.waiting.drain(..) {
            answer(q.reply, Err(closed(reason)));
        }
        for (_, r) in self.requests.drain() {
            match r.reply {
                RequestReply::Subscribe(reply) => answer(Some(reply), Err(closed(reason))),
                RequestReply::Unsubscribe(reply) => answer(Some(reply), Err(closed(reason))),
                RequestReply::Resubscribe => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use tern_codec::{PublishProperties, Unsubscribe, UnsubscribeProperties};

    use super::*;

    fn publish(topic: &str, qos: QoS) -> Publish {
        Publish {
            dup: false,
            qos,
            retain: false,
            topic: topic.into(),
            packet_id: None,
            payload: Bytes::from_static(b"x"),
            properties: PublishProperties::default(),
        }
    }

    fn id(n: u16) -> NonZeroU16 {
        NonZeroU16::new(n).unwrap()
    }

    fn sent_publish(p: (Packet, Option<Reply<ReasonCode>>)) -> Publish {
        match p.0 {
            Packet::Publish(p) => p,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    #[test]
    fn ids_skip_those_in_use_and_zero() {
        let mut s = Session::new();
        s.last_id = u16::MAX - 1;
        let (tx, _rx) = oneshot::channel();
        s.enqueue(publish("a", QoS::AtLeastOnce), tx);
        let p = sent_publish(s.next_publish().unwrap());
        assert_eq!(p.packet_id, Some(id(u16::MAX)));
        s.last_id = u16::MAX - 1;
        // u16::MAX is in use, 0 is not an id: next is 1.
        assert_eq!(s.allocate_id(), Some(id(1)));
    }

    #[test]
    fn receive_maximum_holds_back_in_order() {
        let mut s = Session::new();
        s.receive_maximum = 2;
        let mut rxs = Vec::new();
        for topic in ["1", "2", "3"] {
            let (tx, rx) = oneshot::channel();
            s.enqueue(publish(topic, QoS::ExactlyOnce), tx);
            rxs.push(rx);
        }
        let (tx, _rx) = oneshot::channel();
        s.enqueue(publish("qos0", QoS::AtMostOnce), tx);
        let a = sent_publish(s.next_publish().unwrap());
        let b = sent_publish(s.next_publish().unwrap());
        assert!(
            s.next_publish().is_none(),
            "third waits for quota, QoS 0 behind it too"
        );
        assert_eq!((a.topic.as_str(), b.topic.as_str()), ("1", "2"));
        let a_id = a.packet_id.unwrap();
        let rel = s.on_pubrec(&PubAck::new(a_id));
        assert!(matches!(rel, Some(Packet::PubRel(r)) if r.packet_id == a_id));
        assert!(
            s.next_publish().is_none(),
            "released but not complete: still in flight"
        );
        s.on_pubcomp(&PubAck::new(a_id));
        assert_eq!(
            rxs.remove(0).try_recv().unwrap().unwrap(),
            ReasonCode::Success
        );
        assert_eq!(sent_publish(s.next_publish().unwrap()).topic, "3");
        assert_eq!(sent_publish(s.next_publish().unwrap()).topic, "qos0");
    }

    #[test]
    fn failed_pubrec_ends_the_flow_with_its_reason() {
        let mut s = Session::new();
        let (tx, mut rx) = oneshot::channel();
        s.enqueue(publish("t", QoS::ExactlyOnce), tx);
        let p = sent_publish(s.next_publish().unwrap());
        let rec = PubAck {
            reason: ReasonCode::NotAuthorized,
            ..PubAck::new(p.packet_id.unwrap())
        };
        assert!(s.on_pubrec(&rec).is_none());
        assert_eq!(rx.try_recv().unwrap().unwrap(), ReasonCode::NotAuthorized);
        assert_eq!(s.in_flight(), (0, 0));
    }

    #[test]
    fn manual_acks_wait_for_the_application_and_lapse_with_the_connection() {
        let mut s = Session::new();
        s.await_ack(id(3), QoS::AtLeastOnce);
        assert!(s.on_incoming_qos2(id(4)));
        s.await_ack(id(4), QoS::ExactlyOnce);
        assert!(s.awaits_ack(id(4)));
        assert!(matches!(s.take_ack(id(3)), Some(Packet::PubAck(a)) if a.packet_id == id(3)));
        assert!(s.take_ack(id(3)).is_none(), "acknowledged once");
        // The connection is lost before the application acknowledged 4: the
        // broker sends it again, and it is delivered again.
        s.forget_unacked();
        assert!(s.take_ack(id(4)).is_none(), "not on the next connection");
        assert!(s.on_incoming_qos2(id(4)));
        s.await_ack(id(4), QoS::ExactlyOnce);
        assert!(matches!(s.take_ack(id(4)), Some(Packet::PubRec(a)) if a.packet_id == id(4)));
    }

    #[test]
    fn incoming_qos2_delivered_once_until_pubrel() {
        let mut s = Session::new();
        assert!(s.on_incoming_qos2(id(7)));
        assert!(!s.on_incoming_qos2(id(7)));
        let comp = s.on_pubrel(&PubAck::new(id(7)));
        assert!(matches!(comp, Packet::PubComp(c) if c.reason == ReasonCode::Success));
        assert!(s.on_incoming_qos2(id(7)));
        let comp = s.on_pubrel(&PubAck::new(id(8)));
        assert!(
            matches!(comp, Packet::PubComp(c) if c.reason == ReasonCode::PacketIdentifierNotFound)
        );
    }

    #[test]
    fn resume_with_session_resends_in_order_with_dup_or_pubrel() {
        let mut s = Session::new();
        for (topic, qos) in [
            ("a", QoS::AtLeastOnce),
            ("b", QoS::ExactlyOnce),
            ("c", QoS::ExactlyOnce),
        ] {
            let (tx, _rx) = oneshot::channel();
            s.enqueue(publish(topic, qos), tx);
        }
        let ids: Vec<NonZeroU16> = (0..3)
            .map(|_| sent_publish(s.next_publish().unwrap()).packet_id.unwrap())
            .collect();
        s.on_pubrec(&PubAck::new(ids[1]));
        let packets = s.resume(true);
        assert_eq!(packets.len(), 3);
        assert!(matches!(&packets[0], Packet::Publish(p) if p.dup && p.topic == "a"));
        assert!(matches!(&packets[1], Packet::PubRel(r) if r.packet_id == ids[1]));
        assert!(matches!(&packets[2], Packet::Publish(p) if p.dup && p.topic == "c"));
    }

    #[test]
    fn resume_without_session_resubscribes_and_requeues() {
        let mut s = Session::new();
        let sub = |s: &mut Session, filter: &str, qos: QoS| {
            let packet_id = s.allocate_id().unwrap();
            let (tx, rx) = oneshot::channel();
            s.add_request(
                Packet::Subscribe(Subscribe {
                    packet_id,
                    filters: vec![SubscribeFilter {
                        filter: filter.into(),
                        options: SubscriptionOptions {
                            qos,
                            ..Default::default()
                        },
                    }],
                    properties: SubscribeProperties::default(),
                }),
                RequestReply::Subscribe(tx),
            );
            (packet_id, rx)
        };
        let (a, _) = sub(&mut s, "a/#", QoS::AtLeastOnce);
        s.on_suback(SubAck {
            packet_id: a,
            reasons: vec![ReasonCode::GrantedQoS1],
            properties: Default::default(),
        });
        let (b, _) = sub(&mut s, "b", QoS::AtMostOnce);
        s.on_suback(SubAck {
            packet_id: b,
            reasons: vec![ReasonCode::Success],
            properties: Default::default(),
        });
        let (refused, _) = sub(&mut s, "no", QoS::AtMostOnce);
        s.on_suback(SubAck {
            packet_id: refused,
            reasons: vec![ReasonCode::NotAuthorized],
            properties: Default::default(),
        });
        let unsub_id = s.allocate_id().unwrap();
        let (tx, _rx) = oneshot::channel();
        s.add_request(
            Packet::Unsubscribe(Unsubscribe {
                packet_id: unsub_id,
                filters: vec!["b".into()],
                properties: UnsubscribeProperties::default(),
            }),
            RequestReply::Unsubscribe(tx),
        );
        assert_eq!(s.subscribed_filters(), ["a/#"]);
        let (pending, _) = sub(&mut s, "c", QoS::ExactlyOnce);

        let (tx, _rx) = oneshot::channel();
        s.enqueue(publish("p", QoS::AtLeastOnce), tx);
        let first = sent_publish(s.next_publish().unwrap());

        let packets = s.resume(false);
        let Packet::Subscribe(renewal) = &packets[0] else {
            panic!("expected SUBSCRIBE first, got {packets:?}");
        };
        assert_eq!(renewal.filters.len(), 1);
        assert_eq!(renewal.filters[0].filter, "a/#");
        assert!(matches!(&packets[1], Packet::Unsubscribe(u) if u.packet_id == unsub_id));
        assert!(matches!(&packets[2], Packet::Subscribe(x) if x.packet_id == pending));
        assert_eq!(packets.len(), 3);
        // The in-flight publish is sent again as new.
        let again = sent_publish(s.next_publish().unwrap());
        assert_eq!(again.topic, first.topic);
        assert!(!again.dup);
        // A second loss before the SUBACK renews once, not twice.
        let packets = s.resume(false);
        let renewals = packets
            .iter()
            .filter(|p| matches!(p, Packet::Subscribe(x) if x.filters[0].filter == "a/#"))
            .count();
        assert_eq!(renewals, 1);
    }

    #[test]
    fn released_qos2_counts_as_delivered_when_session_is_gone() {
        let mut s = Session::new();
        let (tx, mut rx) = oneshot::channel();
        s.enqueue(publish("t", QoS::ExactlyOnce), tx);
        let p = sent_publish(s.next_publish().unwrap());
        s.on_pubrec(&PubAck::new(p.packet_id.unwrap()));
        assert!(s.resume(false).is_empty());
        assert_eq!(rx.try_recv().unwrap().unwrap(), ReasonCode::Success);
    }

    #[test]
    fn fail_all_answers_everyone() {
        let mut s = Session::new();
        s.receive_maximum = 1;
        let (tx1, mut rx1) = oneshot::channel();
        let (tx2, mut rx2) = oneshot::channel();
        s.enqueue(publish("1", QoS::AtLeastOnce), tx1);
        s.enqueue(publish("2", QoS::AtLeastOnce), tx2);
        let _ = s.next_publish();
        s.fail_all(&DisconnectReason::KeepAliveTimeout);
        assert!(matches!(rx1.try_recv().unwrap(), Err(Error::Closed(_))));
        assert!(matches!(rx2.try_recv().unwrap(), Err(Error::Closed(_))));
    }
}
