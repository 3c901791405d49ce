//! An application message as routed: one `Arc<Message>` per PUBLISH, shared by
//! every subscriber's queue, the retained store and a pending will; and
//! [`Delivery`], that message on its way to one session.
//!
//! Everything above (sessions, the store, the router) speaks of these
//! types, so they depend on nothing in the broker: a message's record in the
//! store is reached through the [`Records`] trait the store implements.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use tern_codec::{ByteStr, LastWill, Publish, PublishProperties, QoS};

/// A published message, independent of who receives it.
#[derive(Debug)]
pub struct Message {
    pub topic: ByteStr,
    /// Shared with every subscriber: never copied per delivery.
    pub payload: Bytes,
    pub qos: QoS,
    /// The RETAIN flag as published (forwarded when Retain As Published).
    pub retain: bool,
    /// Properties to forward unchanged [MQTT-3.3.2-17..20]. Topic alias and
    /// subscription identifiers are per connection and never stored here.
    pub properties: Properties,
    /// When the Message Expiry Interval runs out, if one was set.
    pub expires_at: Option<Instant>,
    /// Client id of the publisher, for No Local; `None` for broker messages.
    pub origin: Option<ByteStr>,
    /// Its record in the store, once a persistent session queued it.
    pub stored: StoredSlot,
    /// Its place in a cluster's messages stream, once stored there (a QoS
    /// 1/2 message a client published on a cluster node): a session moved
    /// from a node that died resumes by it.
    pub place: OnceLock<u64>,
    /// Its first place there, when it was written twice: a node died (or
    /// gave the write up) after the stream stored it and before routing
    /// it, and its client sent it again ([`crate::cluster`]'s storage). A
    /// session that had it at either place does not take it again.
    pub first_place: OnceLock<u64>,
}

/// A message's PUBLISH properties, boxed only when it has some: most
/// messages have none, and inline they would take 160 bytes of every
/// message, a million of them for a million retained topics. Reads see
/// [`PublishProperties`], empty ones for a message without.
#[derive(Debug, Clone, Default)]
pub struct Properties(Option<Box<PublishProperties>>);

/// What a message without properties reads.
static NO_PROPERTIES: PublishProperties = PublishProperties {
    payload_format_indicator: None,
    message_expiry_interval: None,
    topic_alias: None,
    response_topic: None,
    correlation_data: None,
    user_properties: Vec::new(),
    subscription_identifiers: Vec::new(),
    content_type: None,
};

impl From<PublishProperties> for Properties {
    fn from(properties: PublishProperties) -> Self {
        Properties((properties != NO_PROPERTIES).then(|| Box::new(properties)))
    }
}

impl std::ops::Deref for Properties {
    type Target = PublishProperties;

    fn deref(&self) -> &PublishProperties {
        self.0.as_deref().unwrap_or(&NO_PROPERTIES)
    }
}

/// One message on its way to one session, with the per-subscription choices
/// already made (effective QoS, retain flag, subscription identifiers).
#[derive(Debug, Clone)]
pub struct Delivery {
    pub message: Arc<Message>,
    pub qos: QoS,
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
    /// Its place in the store's queue; 0 if not stored.
    pub seq: u64,
}

/// Where an outbound QoS 1/2 message is in its acknowledgement flow: what
/// the broker awaits from the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::enum_variant_names)] // the packets awaited, by their MQTT names
pub enum Awaiting {
    /// QoS 1, PUBLISH sent.
    PubAck,
    /// QoS 2, PUBLISH sent.
    PubRec,
    /// QoS 2, PUBREC received and PUBREL sent.
    PubComp,
}

/// What keeps message records (the store): told when the last holder of a
/// stored message lets go of it, so its record is deleted.
pub trait Records: Send + Sync {
    fn delete_message(&self, id: u64);
}

/// A message's record in the store. Held by the message itself, so the
/// record is deleted when the last queue holding the message lets go of it.
pub struct StoredMessage {
    pub id: u64,
    /// `None` once its delete was handed over (see [`StoredMessage::into_id`]).
    records: Option<Arc<dyn Records>>,
}

impl StoredMessage {
    pub fn new(id: u64, records: Arc<dyn Records>) -> StoredMessage {
        StoredMessage {
            id,
            records: Some(records),
        }
    }

    /// The record's id, for a caller that deletes the record itself (with
    /// other changes, in one submission) instead of this one's drop.
    pub fn into_id(mut self) -> u64 {
        self.records = None;
        self.id
    }
}

impl std::fmt::Debug for StoredMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StoredMessage({})", self.id)
    }
}

impl Drop for StoredMessage {
    fn drop(&mut self) {
        if let Some(records) = self.records.take() {
            records.delete_message(self.id);
        }
    }
}

/// A message's link to its record, for `Message::stored`.
pub type StoredSlot = OnceLock<StoredMessage>;

impl Message {
    /// Its places in a cluster's messages stream: where it is, and where
    /// it was first if written twice.
    pub fn places(&self) -> impl Iterator<Item = u64> + '_ {
        self.place
            .get()
            .into_iter()
            .chain(self.first_place.get())
            .copied()
    }

    /// Builds the routed message from a client's PUBLISH (alias already resolved).
    pub fn from_publish(publish: Publish, origin: ByteStr, now: Instant) -> Arc<Message> {
        let mut properties = publish.properties;
        properties.topic_alias = None;
        properties.subscription_identifiers.clear();
        let expires_at = expiry_deadline(properties.message_expiry_interval, now);
        Arc::new(Message {
            topic: publish.topic,
            payload: publish.payload,
            qos: publish.qos,
            retain: publish.retain,
            properties: properties.into(),
            expires_at,
            origin: Some(origin),
            stored: StoredSlot::new(),
            place: OnceLock::new(),
            first_place: OnceLock::new(),
        })
    }

    /// Builds the message a will turns into when it is published.
    pub fn from_will(will: LastWill, origin: ByteStr, now: Instant) -> Arc<Message> {
        let p = will.properties;
        let properties = PublishProperties {
            payload_format_indicator: p.payload_format_indicator,
            message_expiry_interval: p.message_expiry_interval,
            response_topic: p.response_topic,
            correlation_data: p.correlation_data,
            user_properties: p.user_properties,
            content_type: p.content_type,
            ..PublishProperties::default()
        };
        let expires_at = expiry_deadline(properties.message_expiry_interval, now);
        Arc::new(Message {
            topic: will.topic,
            payload: will.payload,
            qos: will.qos,
            retain: will.retain,
            properties: properties.into(),
            expires_at,
            origin: Some(origin),
            stored: StoredSlot::new(),
            place: OnceLock::new(),
            first_place: OnceLock::new(),
        })
    }

    /// A copy (not stored) whose Message Expiry Interval runs from `now`,
    /// or that never expires if `now` is `None`: a will kept elsewhere
    /// until it is published.
    pub fn expiring_from(&self, now: Option<Instant>) -> Arc<Message> {
        let interval = self.properties.message_expiry_interval;
        Arc::new(Message {
            topic: self.topic.clone(),
            payload: self.payload.clone(),
            qos: self.qos,
            retain: self.retain,
            properties: self.properties.clone(),
            expires_at: now.and_then(|now| expiry_deadline(interval, now)),
            origin: self.origin.clone(),
            stored: StoredSlot::new(),
            place: OnceLock::new(),
            first_place: OnceLock::new(),
        })
    }

    /// A message the broker itself publishes (`$SYS`), retained, QoS 0.
    pub fn broker_retained(topic: String, payload: String) -> Arc<Message> {
        Arc::new(Message {
            topic: topic.into(),
            payload: Bytes::from(payload),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: Properties::default(),
            expires_at: None,
            origin: None,
            stored: StoredSlot::new(),
            place: OnceLock::new(),
            first_place: OnceLock::new(),
        })
    }

    /// Seconds of life left to forward as Message Expiry Interval: `Some(None)`
    /// if the message never expires, `None` if it has expired and must not be
    /// sent [MQTT-3.3.2-5], [MQTT-3.3.2-6].
    pub fn remaining_expiry(&self, now: Instant) -> Option<Option<u32>> {
        match self.expires_at {
            None => Some(None),
            Some(at) if at <= now => None,
            Some(at) => {
                let secs = (at - now).as_secs_f64().ceil();
                Some(Some(secs.min(u32::MAX as f64) as u32))
            }
        }
    }

    /// Payload bytes this message holds, for queue byte limits.
    pub fn size(&self) -> usize {
        self.payload.len() + self.topic.len()
    }
}

fn expiry_deadline(interval_secs: Option<u32>, now: Instant) -> Option<Instant> {
    interval_secs.map(|s| now + std::time::Duration::from_secs(u64::from(s)))
}
