//! The byte layout of what the store keeps: messages, queue entries and
//! session records, encoded here and kept as opaque values by the engine.
//!
//! A message is stored as the MQTT 5 PUBLISH that carries it (our own codec
//! writes and checks it, properties included), after a small header with what
//! a PUBLISH cannot carry: when the message expires and who published it.
//! Every record starts with a format version byte, so a later layout can still
//! read files written by this one. Times are Unix milliseconds: `Instant`s do
//! not survive a restart.
//!
//! Decoding never trusts the bytes: a short or malformed record is an error
//! naming what was wrong, never a panic.

use std::num::NonZeroU16;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, BytesMut};
use tern_codec::{
    ByteStr, Packet, ProtocolVersion, Publish, QoS, RetainHandling, SubscriptionOptions,
};

use crate::message::Awaiting;
use crate::message::Message;

/// The layout version written in front of every record.
const FORMAT: u8 = 1;
/// Session records are at layout 2: layout 1 plus the username. Layout 1
/// records still read, with no username.
const SESSION_FORMAT: u8 = 2;
/// Retained records are at layout 2: the user who set the message (for the
/// retained quotas), then the message record. Layout 1 (the message record
/// alone) still reads, with no user.
const RETAINED_FORMAT: u8 = 2;
/// Delayed message records (`$delayed/...`), layout 1: when it is due
/// (Unix ms), then a retained record (the message, and who published it).
const DELAYED_FORMAT: u8 = 1;

/// A record that cannot be read back.
#[derive(Debug, thiserror::Error)]
#[error("malformed {what} record: {problem}")]
pub struct RecordError {
    what: &'static str,
    problem: String,
}

impl RecordError {
    fn new(what: &'static str, problem: impl Into<String>) -> RecordError {
        RecordError {
            what,
            problem: problem.into(),
        }
    }
}

/// Converts between `Instant`s (the broker's clock) and Unix milliseconds
/// (the file's), through one reading of both clocks.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    instant: Instant,
    unix_ms: u64,
}

impl Clock {
    pub fn now() -> Clock {
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Clock {
            instant: Instant::now(),
            unix_ms,
        }
    }

    pub fn unix_ms(&self) -> u64 {
        self.unix_ms
    }

    /// `at` in Unix milliseconds (times already past map to before now).
    pub fn to_unix_ms(self, at: Instant) -> u64 {
        match at.checked_duration_since(self.instant) {
            Some(ahead) => self.unix_ms.saturating_add(millis(ahead)),
            None => self.unix_ms.saturating_sub(millis(self.instant - at)),
        }
    }

    /// Unix milliseconds as an `Instant` (times already past map to now).
    pub fn to_instant(self, unix_ms: u64) -> Instant {
        self.instant + Duration::from_millis(unix_ms.saturating_sub(self.unix_ms))
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Encodes a message: header (version, expiry, origin), then its PUBLISH.
pub fn encode_message(message: &Message, clock: &Clock) -> Vec<u8> {
    let mut out = BytesMut::new();
    write_message(message, clock, &mut out);
    Vec::from(out)
}

/// [`encode_message`] into `out` (cleared first), so the store's writer can
/// reuse one buffer for every record.
pub fn write_message(message: &Message, clock: &Clock, out: &mut BytesMut) {
    out.clear();
    append_message(message, clock, out);
}

/// [`write_message`] after what `out` holds.
fn append_message(message: &Message, clock: &Clock, out: &mut BytesMut) {
    let origin = message.origin.as_ref().map_or(&b""[..], |o| o.as_bytes());
    out.reserve(MESSAGE_HEADER + origin.len() + message.size() + 64);
    out.put_u8(FORMAT);
    out.put_u64(
        message
            .expires_at
            .map_or(0, |at| clock.to_unix_ms(at).max(1)),
    );
    put_bytes(out, origin);
    out.put_u8(u8::from(message.origin.is_some()));
    let publish = Packet::Publish(Publish {
        dup: false,
        qos: message.qos,
        retain: message.retain,
        topic: message.topic.clone(),
        // Any id: a PUBLISH at QoS 1/2 must carry one; it is not the one used
        // on any connection.
        packet_id: (message.qos != QoS::AtMostOnce).then_some(NonZeroU16::MIN),
        payload: message.payload.clone(),
        properties: (*message.properties).clone(),
    });
    if let Err(e) = publish.encode(ProtocolVersion::V5, out) {
        // Every routed message came from a PUBLISH or will we decoded, so it
        // encodes; should it not, the record still decodes to an error.
        tracing::error!(topic = %message.topic, error = %e, "cannot encode message for the store");
    }
}

/// Encodes a retained message and the user who set it.
pub fn encode_retained(message: &Message, owner: Option<&str>, clock: &Clock) -> Vec<u8> {
    let mut out = BytesMut::new();
    write_retained(message, owner, clock, &mut out);
    Vec::from(out)
}

/// [`encode_retained`] into `out` (cleared first), for the store's writer.
pub fn write_retained(message: &Message, owner: Option<&str>, clock: &Clock, out: &mut BytesMut) {
    let owner_bytes = owner.map_or(&b""[..], str::as_bytes);
    out.clear();
    out.put_u8(RETAINED_FORMAT);
    out.put_u8(u8::from(owner.is_some()));
    put_bytes(out, owner_bytes);
    append_message(message, clock, out);
}

/// Decodes a retained record: the message (`None` if it has expired by
/// `clock`) and the user who set it.
pub fn decode_retained(record: &[u8], clock: &Clock) -> Result<Option<Retained>, RecordError> {
    const WHAT: &str = "retained";
    match record.first() {
        Some(&FORMAT) => Ok(decode_message(record, clock)?.map(|m| (m, None))),
        Some(&RETAINED_FORMAT) => {
            let mut r = Reader::new(&record[1..], WHAT);
            let has_owner = r.u8()? != 0;
            let owner = std::str::from_utf8(r.bytes()?)
                .map_err(|_| RecordError::new(WHAT, "owner is not UTF-8"))?;
            let owner = has_owner.then(|| Arc::from(owner));
            Ok(decode_message(r.rest(), clock)?.map(|m| (m, owner)))
        }
        Some(other) => Err(RecordError::new(WHAT, format!("unknown format {other}"))),
        None => Err(RecordError::new(WHAT, "empty")),
    }
}

/// A retained message and the user who set it.
pub type Retained = (Arc<Message>, Option<Arc<str>>);

/// Encodes a delayed message: when it is due (Unix ms), the message, and
/// the user who published it.
pub fn encode_delayed(
    due_ms: u64,
    message: &Message,
    owner: Option<&str>,
    clock: &Clock,
) -> Vec<u8> {
    let retained = encode_retained(message, owner, clock);
    let mut out = Vec::with_capacity(1 + 8 + retained.len());
    out.put_u8(DELAYED_FORMAT);
    out.put_u64(due_ms);
    out.extend_from_slice(&retained);
    out
}

/// Decodes a delayed record: when it is due (Unix ms), and the message
/// (`None` if it expired by `clock`) with its publisher's username.
pub fn decode_delayed(
    record: &[u8],
    clock: &Clock,
) -> Result<(u64, Option<Retained>), RecordError> {
    const WHAT: &str = "delayed";
    let mut r = Reader::new(record, WHAT);
    match r.u8()? {
        DELAYED_FORMAT => {}
        other => return Err(RecordError::new(WHAT, format!("unknown format {other}"))),
    }
    let due = r.u64()?;
    Ok((due, decode_retained(r.rest(), clock)?))
}

/// A message record's header before its origin: version, expiry, origin length.
const MESSAGE_HEADER: usize = 1 + 8 + 4 + 1;

/// Decodes a message. `None` if it has expired by `clock`.
pub fn decode_message(record: &[u8], clock: &Clock) -> Result<Option<Arc<Message>>, RecordError> {
    const WHAT: &str = "message";
    let mut r = Reader::new(record, WHAT);
    r.format()?;
    let expires_ms = r.u64()?;
    let origin = r.bytes()?;
    let has_origin = r.u8()? != 0;
    let origin = if has_origin {
        let origin = std::str::from_utf8(origin)
            .map_err(|_| RecordError::new(WHAT, "origin is not UTF-8"))?;
        Some(ByteStr::from(origin.to_owned()))
    } else {
        None
    };
    let mut buf = BytesMut::from(r.rest());
    let publish = match tern_codec::decode(&mut buf, ProtocolVersion::V5, usize::MAX) {
        Ok(Some(Packet::Publish(p))) if buf.is_empty() => p,
        Ok(_) => return Err(RecordError::new(WHAT, "not one whole PUBLISH")),
        Err(e) => return Err(RecordError::new(WHAT, e.to_string())),
    };
    if expires_ms != 0 && expires_ms <= clock.unix_ms() {
        return Ok(None);
    }
    Ok(Some(Arc::new(Message {
        topic: publish.topic,
        payload: publish.payload,
        qos: publish.qos,
        retain: publish.retain,
        properties: publish.properties.into(),
        expires_at: (expires_ms != 0).then(|| clock.to_instant(expires_ms)),
        origin,
        stored: Default::default(),
        place: Default::default(),
        first_place: Default::default(),
    })))
}

/// One delivery queued for, or in flight to, a persistent session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueEntry {
    pub message_id: u64,
    pub qos: QoS,
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
    /// `None` while pending; the packet id and state once sent.
    pub sent: Option<(NonZeroU16, Awaiting)>,
}

#[cfg(test)]
pub fn encode_queue_entry(entry: &QueueEntry) -> Vec<u8> {
    let mut out = BytesMut::new();
    write_queue_entry(entry, &mut out);
    Vec::from(out)
}

/// [`encode_queue_entry`] into `out` (cleared first).
pub fn write_queue_entry(entry: &QueueEntry, out: &mut BytesMut) {
    out.clear();
    out.reserve(1 + 8 + 1 + 1 + 4 + 4 * entry.subscription_ids.len() + 2 + 1);
    out.put_u8(FORMAT);
    out.put_u64(entry.message_id);
    out.put_u8(entry.qos as u8);
    out.put_u8(u8::from(entry.retain));
    out.put_u32(entry.subscription_ids.len() as u32);
    entry
        .subscription_ids
        .iter()
        .for_each(|id| out.put_u32(*id));
    put_sent(out, entry.sent);
}

/// A delivery's packet id and state (0, 0 while pending).
fn put_sent(out: &mut impl BufMut, sent: Option<(NonZeroU16, Awaiting)>) {
    let (packet_id, state) = match sent {
        None => (0, 0),
        Some((id, Awaiting::PubAck)) => (id.get(), 1),
        Some((id, Awaiting::PubRec)) => (id.get(), 2),
        Some((id, Awaiting::PubComp)) => (id.get(), 3),
    };
    out.put_u16(packet_id);
    out.put_u8(state);
}

/// What [`put_sent`] wrote.
fn read_sent(r: &mut Reader<'_>) -> Result<Option<(NonZeroU16, Awaiting)>, RecordError> {
    let packet_id = r.u16()?;
    let state = match r.u8()? {
        0 => None,
        1 => Some(Awaiting::PubAck),
        2 => Some(Awaiting::PubRec),
        3 => Some(Awaiting::PubComp),
        other => return Err(RecordError::new(r.what, format!("unknown state {other}"))),
    };
    match (state, NonZeroU16::new(packet_id)) {
        (None, _) => Ok(None),
        (Some(state), Some(id)) => Ok(Some((id, state))),
        (Some(_), None) => Err(RecordError::new(r.what, "in flight without a packet id")),
    }
}

pub fn decode_queue_entry(record: &[u8]) -> Result<QueueEntry, RecordError> {
    const WHAT: &str = "queue";
    let mut r = Reader::new(record, WHAT);
    r.format()?;
    let message_id = r.u64()?;
    let qos = qos(r.u8()?, WHAT)?;
    let retain = r.u8()? != 0;
    let count = r.u32()?;
    // Bounded by the record's own length: a count that claims more is caught
    // when the ids run out.
    let subscription_ids = (0..count).map(|_| r.u32()).collect::<Result<Vec<_>, _>>()?;
    let sent = read_sent(&mut r)?;
    r.end()?;
    Ok(QueueEntry {
        message_id,
        qos,
        retain,
        subscription_ids,
        sent,
    })
}

/// What a persistent session must still know after a restart.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionRecord {
    pub expiry_secs: u32,
    /// When its connection went away; `None` while one was attached.
    pub disconnected_at_ms: Option<u64>,
    /// Filter (as subscribed, `$share/…` included), options, identifier.
    pub subscriptions: Vec<(ByteStr, SubscriptionOptions, Option<u32>)>,
    /// A will waiting out its delay: the message record and when it is due.
    pub will: Option<(Vec<u8>, u64)>,
    /// The username its client last connected with, so the ACL judges
    /// deliveries to it as that user even before it reconnects after a
    /// restart. Layout 1 records (from before usernames were stored) read
    /// as `None`.
    pub username: Option<String>,
}

pub fn encode_session(record: &SessionRecord) -> Vec<u8> {
    let mut w = Vec::new();
    w.put_u8(SESSION_FORMAT);
    w.put_u32(record.expiry_secs);
    w.put_u64(record.disconnected_at_ms.unwrap_or(0));
    w.put_u32(record.subscriptions.len() as u32);
    for (filter, options, id) in &record.subscriptions {
        put_bytes(&mut w, filter.as_bytes());
        w.put_u8(options_byte(options));
        w.put_u32(id.unwrap_or(0));
    }
    match &record.will {
        Some((message, due_ms)) => {
            w.put_u8(1);
            w.put_u64(*due_ms);
            put_bytes(&mut w, message);
        }
        None => w.put_u8(0),
    }
    match &record.username {
        Some(name) => {
            w.put_u8(1);
            put_bytes(&mut w, name.as_bytes());
        }
        None => w.put_u8(0),
    }
    w
}

pub fn decode_session(record: &[u8]) -> Result<SessionRecord, RecordError> {
    const WHAT: &str = "session";
    let mut r = Reader::new(record, WHAT);
    let layout = r.u8()?;
    if layout != FORMAT && layout != SESSION_FORMAT {
        return Err(RecordError::new(WHAT, format!("unknown format {layout}")));
    }
    let expiry_secs = r.u32()?;
    let disconnected = r.u64()?;
    let count = r.u32()?;
    let mut subscriptions = Vec::new();
    for _ in 0..count {
        let filter = std::str::from_utf8(r.bytes()?)
            .map_err(|_| RecordError::new(WHAT, "filter is not UTF-8"))?;
        let options = options_from_byte(r.u8()?)?;
        let id = r.u32()?;
        subscriptions.push((
            ByteStr::from(filter.to_owned()),
            options,
            (id != 0).then_some(id),
        ));
    }
    let will = match r.u8()? {
        0 => None,
        _ => {
            let due = r.u64()?;
            Some((r.bytes()?.to_vec(), due))
        }
    };
    let username = match layout {
        FORMAT => None,
        _ => match r.u8()? {
            0 => None,
            _ => Some(
                std::str::from_utf8(r.bytes()?)
                    .map_err(|_| RecordError::new(WHAT, "username is not UTF-8"))?
                    .to_owned(),
            ),
        },
    };
    r.end()?;
    Ok(SessionRecord {
        expiry_secs,
        disconnected_at_ms: (disconnected != 0).then_some(disconnected),
        subscriptions,
        will,
        username,
    })
}

/// Subscription options as MQTT 5's options byte.
fn options_byte(o: &SubscriptionOptions) -> u8 {
    o.qos as u8
        | u8::from(o.no_local) << 2
        | u8::from(o.retain_as_published) << 3
        | (o.retain_handling as u8) << 4
}

fn options_from_byte(b: u8) -> Result<SubscriptionOptions, RecordError> {
    let retain_handling = match (b >> 4) & 0b11 {
        0 => RetainHandling::SendAtSubscribe,
        1 => RetainHandling::SendAtSubscribeIfNew,
        2 => RetainHandling::DoNotSend,
        _ => return Err(RecordError::new("session", "bad retain handling")),
    };
    Ok(SubscriptionOptions {
        qos: qos(b & 0b11, "session")?,
        no_local: b & 0b100 != 0,
        retain_as_published: b & 0b1000 != 0,
        retain_handling,
    })
}

fn qos(b: u8, what: &'static str) -> Result<QoS, RecordError> {
    match b {
        0 => Ok(QoS::AtMostOnce),
        1 => Ok(QoS::AtLeastOnce),
        2 => Ok(QoS::ExactlyOnce),
        other => Err(RecordError::new(what, format!("bad QoS {other}"))),
    }
}

/// A byte string as records write it: a big-endian u32 length, then the
/// bytes (every other field is written with `BufMut`'s big-endian `put_*`).
/// A session moving from one node of a cluster to another: its record, the
/// QoS 2 ids its client sent and not yet released, and its deliveries in
/// flight then queued, each as a queue entry (its `message_id` unused) and
/// the message's record.
#[derive(Debug, Clone, PartialEq)]
pub struct Handover {
    pub session: SessionRecord,
    pub inbound_qos2: Vec<u16>,
    /// Where those messages are in the cluster's messages stream.
    pub inbound_kept: Vec<(u16, Kept)>,
    pub entries: Vec<HandedEntry>,
    /// Where it is in the messages stream ([`crate::session::Moving`]).
    pub floor: u64,
    pub overflow: Option<u64>,
    pub done: Vec<u64>,
}

/// A delivery of a session moving: its queue entry (`message_id` unused),
/// its message's record, and where the message is in the cluster's
/// messages stream (its place, and its first if written twice; 0: none).
#[derive(Debug, Clone, PartialEq)]
pub struct HandedEntry {
    pub queued: QueueEntry,
    pub message: Vec<u8>,
    pub places: [u64; 2],
}

pub fn encode_handover(handover: &Handover) -> Vec<u8> {
    let mut w = Vec::new();
    w.put_u8(FORMAT);
    put_bytes(&mut w, &encode_session(&handover.session));
    w.put_u32(handover.inbound_qos2.len() as u32);
    handover.inbound_qos2.iter().for_each(|id| w.put_u16(*id));
    put_inbound_kept(&mut w, &handover.inbound_kept);
    w.put_u32(handover.entries.len() as u32);
    let mut entry = BytesMut::new();
    for handed in &handover.entries {
        write_queue_entry(&handed.queued, &mut entry);
        put_bytes(&mut w, &entry);
        put_bytes(&mut w, &handed.message);
        handed.places.iter().for_each(|place| w.put_u64(*place));
    }
    w.put_u64(handover.floor);
    // A stream's places start at 1: 0 is none.
    w.put_u64(handover.overflow.unwrap_or(0));
    w.put_u32(handover.done.len() as u32);
    handover.done.iter().for_each(|place| w.put_u64(*place));
    w
}

pub fn decode_handover(record: &[u8]) -> Result<Handover, RecordError> {
    let mut r = Reader::new(record, "handover");
    r.format()?;
    let session = decode_session(r.bytes()?)?;
    // Counts are bounded by the record's length: a count that claims more
    // runs out of bytes first.
    let inbound_qos2 = (0..r.u32()?)
        .map(|_| r.u16())
        .collect::<Result<Vec<_>, _>>()?;
    let inbound_kept = read_inbound_kept(&mut r)?;
    let entries = (0..r.u32()?)
        .map(|_| {
            Ok(HandedEntry {
                queued: decode_queue_entry(r.bytes()?)?,
                message: r.bytes()?.to_vec(),
                places: [r.u64()?, r.u64()?],
            })
        })
        .collect::<Result<Vec<_>, RecordError>>()?;
    let floor = r.u64()?;
    let overflow = Some(r.u64()?).filter(|&place| place != 0);
    let done = (0..r.u32()?)
        .map(|_| r.u64())
        .collect::<Result<Vec<_>, _>>()?;
    r.end()?;
    Ok(Handover {
        session,
        inbound_qos2,
        inbound_kept,
        entries,
        floor,
        overflow,
        done,
    })
}

/// Where a QoS 2 message a client sent (awaiting its PUBREL) is in a
/// cluster's messages stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kept {
    /// Being written under this id (its `Tern-Id` and `Nats-Msg-Id`): it
    /// may be in the stream or not, and was not routed. Its client, which
    /// got no PUBREC, sends it again (DUP), written under the same id; if
    /// the stream had it, once more at a new place, routed with the id and
    /// the first place (`cluster::storage`).
    Writing(String),
    /// In the stream at this place; routed, or about to be.
    Stored(u64),
}

fn put_inbound_kept(out: &mut impl BufMut, kept: &[(u16, Kept)]) {
    out.put_u32(kept.len() as u32);
    for (id, kept) in kept {
        out.put_u16(*id);
        match kept {
            Kept::Writing(write_id) => {
                out.put_u8(0);
                put_bytes(out, write_id.as_bytes());
            }
            Kept::Stored(place) => {
                out.put_u8(1);
                out.put_u64(*place);
            }
        }
    }
}

/// What [`put_inbound_kept`] wrote.
fn read_inbound_kept(r: &mut Reader<'_>) -> Result<Vec<(u16, Kept)>, RecordError> {
    // Counts are bounded by the record's length: a count that claims more
    // runs out of bytes first.
    (0..r.u32()?)
        .map(|_| {
            let id = r.u16()?;
            let kept = match r.u8()? {
                0 => {
                    let write_id = std::str::from_utf8(r.bytes()?)
                        .map_err(|_| RecordError::new(r.what, "a write id is not UTF-8"))?;
                    Kept::Writing(write_id.to_owned())
                }
                1 => Kept::Stored(r.u64()?),
                other => return Err(RecordError::new(r.what, format!("unknown kind {other}"))),
            };
            Ok((id, kept))
        })
        .collect()
}

/// A persistent session's state as a cluster keeps it in NATS
/// (`cluster::mirror`), for another node to take the session over if its
/// node dies: with the messages stream, all it needs to go on.
#[derive(Debug, Clone, PartialEq)]
pub struct Mirror {
    pub session: SessionRecord,
    /// Every stored message routed to the session below this place in the
    /// messages stream is completed (or not the session's).
    pub cursor: u64,
    /// QoS 2 packet ids the client sent (PUBREL not yet received), each
    /// with where its message is in the stream.
    pub inbound: Vec<(u16, Kept)>,
    /// QoS 2 deliveries sent and not completed: place, packet id, state.
    pub inflight: Vec<(u64, NonZeroU16, Awaiting)>,
    /// Places at or above the cursor of QoS 2 deliveries completed.
    pub done: Vec<u64>,
}

pub fn encode_mirror(mirror: &Mirror) -> Vec<u8> {
    let mut w = Vec::new();
    w.put_u8(FORMAT);
    put_bytes(&mut w, &encode_session(&mirror.session));
    w.put_u64(mirror.cursor);
    put_inbound_kept(&mut w, &mirror.inbound);
    w.put_u32(mirror.inflight.len() as u32);
    for &(place, id, state) in &mirror.inflight {
        w.put_u64(place);
        put_sent(&mut w, Some((id, state)));
    }
    w.put_u32(mirror.done.len() as u32);
    mirror.done.iter().for_each(|place| w.put_u64(*place));
    w
}

pub fn decode_mirror(record: &[u8]) -> Result<Mirror, RecordError> {
    let mut r = Reader::new(record, "session mirror");
    r.format()?;
    let session = decode_session(r.bytes()?)?;
    let cursor = r.u64()?;
    let inbound = read_inbound_kept(&mut r)?;
    // Counts are bounded by the record's length, as in a hand-over.
    let inflight = (0..r.u32()?)
        .map(|_| {
            let place = r.u64()?;
            match read_sent(&mut r)? {
                Some((id, state)) => Ok((place, id, state)),
                None => Err(RecordError::new("session mirror", "in flight but not sent")),
            }
        })
        .collect::<Result<Vec<_>, RecordError>>()?;
    let done = (0..r.u32()?)
        .map(|_| r.u64())
        .collect::<Result<Vec<_>, _>>()?;
    r.end()?;
    Ok(Mirror {
        session,
        cursor,
        inbound,
        inflight,
        done,
    })
}

fn put_bytes(out: &mut impl BufMut, b: &[u8]) {
    out.put_u32(b.len() as u32);
    out.put_slice(b);
}

struct Reader<'a> {
    rest: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(record: &'a [u8], what: &'static str) -> Reader<'a> {
        Reader { rest: record, what }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        if self.rest.len() < n {
            return Err(RecordError::new(self.what, "ends early"));
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], RecordError> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn format(&mut self) -> Result<(), RecordError> {
        match self.u8()? {
            FORMAT => Ok(()),
            other => Err(RecordError::new(
                self.what,
                format!("unknown format {other}"),
            )),
        }
    }

    fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, RecordError> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, RecordError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, RecordError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    fn bytes(&mut self) -> Result<&'a [u8], RecordError> {
        let len = self.u32()? as usize;
        self.take(len)
    }
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.rest)
    }
    fn end(&self) -> Result<(), RecordError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(RecordError::new(self.what, "trailing bytes"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use tern_codec::{PublishProperties, UserProperty};

    fn message(expires_in: Option<Duration>, origin: Option<&str>) -> Message {
        Message {
            topic: "house/room1/temp".into(),
            payload: Bytes::from_static(b"22.5"),
            qos: QoS::ExactlyOnce,
            retain: true,
            properties: PublishProperties {
                content_type: Some("text/plain".into()),
                user_properties: vec![UserProperty {
                    name: "k".into(),
                    value: "v".into(),
                }],
                message_expiry_interval: expires_in.map(|d| d.as_secs() as u32),
                ..PublishProperties::default()
            }
            .into(),
            expires_at: expires_in.map(|d| Instant::now() + d),
            origin: origin.map(|o| ByteStr::from(o.to_owned())),
            stored: Default::default(),
            place: Default::default(),
            first_place: Default::default(),
        }
    }

    #[test]
    fn retained_records_keep_their_owner_and_layout_1_still_reads() {
        let clock = Clock::now();
        let m = message(None, Some("sensor-1"));
        for owner in [Some("alice"), None] {
            let (back, back_owner) = decode_retained(&encode_retained(&m, owner, &clock), &clock)
                .unwrap()
                .unwrap();
            assert_eq!(
                (back.topic.as_str(), back_owner.as_deref()),
                (m.topic.as_str(), owner)
            );
        }
        // Written by an older Tern: the message record alone, no owner.
        let (back, owner) = decode_retained(&encode_message(&m, &clock), &clock)
            .unwrap()
            .unwrap();
        assert_eq!((back.payload.clone(), owner), (m.payload.clone(), None));
        assert!(decode_retained(&[9, 0], &clock).is_err());
        assert!(decode_retained(&[], &clock).is_err());
        // Cut short anywhere: an error, never a panic.
        let record = encode_retained(&m, Some("alice"), &clock);
        for len in 0..record.len() {
            assert!(decode_retained(&record[..len], &clock).is_err(), "{len}");
        }
    }

    #[test]
    fn delayed_records_keep_their_due_time_and_publisher() {
        let clock = Clock::now();
        let m = message(None, Some("sensor"));
        let record = encode_delayed(1_800_000_000_000, &m, Some("alice"), &clock);
        let (due, kept) = decode_delayed(&record, &clock).unwrap();
        assert_eq!(due, 1_800_000_000_000);
        let (back, owner) = kept.unwrap();
        assert_eq!(back.payload, m.payload);
        assert_eq!(owner.as_deref(), Some("alice"));
        damage_is_an_error(&record, |r| decode_delayed(r, &clock));
    }

    #[test]
    fn message_round_trip() {
        let clock = Clock::now();
        for origin in [Some("sensor-1"), None] {
            let m = message(Some(Duration::from_secs(60)), origin);
            let back = decode_message(&encode_message(&m, &clock), &clock)
                .unwrap()
                .unwrap();
            assert_eq!(back.topic, m.topic);
            assert_eq!(back.payload, m.payload);
            assert_eq!((back.qos, back.retain), (m.qos, m.retain));
            assert_eq!(*back.properties, *m.properties);
            assert_eq!(back.origin, m.origin);
            let drift = back
                .expires_at
                .unwrap()
                .duration_since(m.expires_at.unwrap());
            assert!(drift < Duration::from_millis(2), "{drift:?}");
        }
    }

    #[test]
    fn an_expired_message_decodes_to_none() {
        let clock = Clock::now();
        let m = message(Some(Duration::from_millis(10)), None);
        let record = encode_message(&m, &clock);
        let later = Clock {
            instant: clock.instant + Duration::from_secs(1),
            unix_ms: clock.unix_ms + 1000,
        };
        assert!(decode_message(&record, &later).unwrap().is_none());
    }

    #[test]
    fn queue_entry_round_trip() {
        let entries = [
            QueueEntry {
                message_id: 7,
                qos: QoS::AtLeastOnce,
                retain: false,
                subscription_ids: vec![],
                sent: None,
            },
            QueueEntry {
                message_id: u64::MAX,
                qos: QoS::ExactlyOnce,
                retain: true,
                subscription_ids: vec![1, 268_435_455],
                sent: Some((NonZeroU16::new(65535).unwrap(), Awaiting::PubComp)),
            },
        ];
        for e in entries {
            assert_eq!(decode_queue_entry(&encode_queue_entry(&e)).unwrap(), e);
        }
    }

    #[test]
    fn session_round_trip() {
        let clock = Clock::now();
        let record = SessionRecord {
            expiry_secs: 3600,
            disconnected_at_ms: Some(clock.unix_ms()),
            subscriptions: vec![
                (
                    "house/#".into(),
                    SubscriptionOptions {
                        qos: QoS::AtLeastOnce,
                        no_local: true,
                        retain_as_published: true,
                        retain_handling: RetainHandling::DoNotSend,
                    },
                    Some(42),
                ),
                ("$share/g/a/+".into(), SubscriptionOptions::default(), None),
            ],
            will: Some((encode_message(&message(None, Some("c")), &clock), 12345)),
            username: Some("alice".into()),
        };
        assert_eq!(decode_session(&encode_session(&record)).unwrap(), record);
    }

    /// A session record of layout 1 (before usernames were stored) still
    /// reads, as a session without a username.
    #[test]
    fn layout_1_session_records_read_without_a_username() {
        let record = SessionRecord {
            expiry_secs: 60,
            disconnected_at_ms: None,
            subscriptions: vec![("a/+".into(), SubscriptionOptions::default(), Some(7))],
            will: None,
            username: Some("bob".into()),
        };
        let mut old = encode_session(&record);
        // Layout 1 is layout 2 without the trailing username.
        old[0] = 1;
        old.truncate(old.len() - (1 + 4 + 3));
        let decoded = decode_session(&old).unwrap();
        assert_eq!(decoded.username, None);
        assert_eq!(decoded.subscriptions, record.subscriptions);
    }

    /// Every truncation of a record is an error for its own decoder, and no
    /// truncation or single-byte corruption of any record panics any decoder.
    #[test]
    fn damaged_records_are_errors_not_panics() {
        let clock = Clock::now();
        let message = encode_message(&message(Some(Duration::from_secs(5)), Some("o")), &clock);
        let entry = encode_queue_entry(&QueueEntry {
            message_id: 1,
            qos: QoS::ExactlyOnce,
            retain: false,
            subscription_ids: vec![3],
            sent: Some((NonZeroU16::MIN, Awaiting::PubRec)),
        });
        let session = encode_session(&SessionRecord {
            expiry_secs: 1,
            disconnected_at_ms: None,
            subscriptions: vec![("a".into(), SubscriptionOptions::default(), None)],
            will: None,
            username: Some("u".into()),
        });
        for cut in 0..message.len() {
            assert!(
                decode_message(&message[..cut], &clock).is_err(),
                "cut {cut}"
            );
        }
        for cut in 0..entry.len() {
            assert!(decode_queue_entry(&entry[..cut]).is_err(), "cut {cut}");
        }
        for cut in 0..session.len() {
            assert!(decode_session(&session[..cut]).is_err(), "cut {cut}");
        }
        for record in [&message, &entry, &session] {
            for i in 0..record.len() {
                for flip in [0x01, 0x80, 0xFF] {
                    let mut bad = record.clone();
                    bad[i] ^= flip;
                    let _ = decode_message(&bad, &clock);
                    let _ = decode_queue_entry(&bad);
                    let _ = decode_session(&bad);
                    let _ = decode_message(&bad[..i], &clock);
                    let _ = decode_queue_entry(&bad[..i]);
                    let _ = decode_session(&bad[..i]);
                }
            }
        }
    }

    #[test]
    fn a_handover_round_trips_and_damage_is_an_error_not_a_panic() {
        let clock = Clock::now();
        let handover = Handover {
            session: SessionRecord {
                expiry_secs: 60,
                disconnected_at_ms: None,
                subscriptions: vec![("a/#".into(), SubscriptionOptions::default(), Some(2))],
                will: None,
                username: None,
            },
            inbound_qos2: vec![7, 9],
            inbound_kept: vec![(7, Kept::Stored(40)), (9, Kept::Writing("n1:s3".into()))],
            entries: vec![
                HandedEntry {
                    queued: QueueEntry {
                        message_id: 0,
                        qos: QoS::ExactlyOnce,
                        retain: false,
                        subscription_ids: vec![2],
                        sent: Some((NonZeroU16::MIN, Awaiting::PubComp)),
                    },
                    message: encode_message(&message(None, Some("p")), &clock),
                    places: [12, 0],
                },
                HandedEntry {
                    queued: QueueEntry {
                        message_id: 0,
                        qos: QoS::AtLeastOnce,
                        retain: true,
                        subscription_ids: vec![],
                        sent: None,
                    },
                    message: encode_message(&message(None, None), &clock),
                    places: [15, 9],
                },
            ],
            floor: 30,
            overflow: Some(41),
            done: vec![44, 46],
        };
        let record = encode_handover(&handover);
        assert_eq!(decode_handover(&record).unwrap(), handover);
        damage_is_an_error(&record, decode_handover);
    }

    /// Every cut of `record` fails to decode, and no flipped byte panics.
    fn damage_is_an_error<T>(record: &[u8], decode: impl Fn(&[u8]) -> Result<T, RecordError>) {
        for cut in 0..record.len() {
            assert!(decode(&record[..cut]).is_err(), "cut {cut}");
        }
        for i in 0..record.len() {
            let mut bad = record.to_vec();
            bad[i] ^= 0xFF;
            let _ = decode(&bad);
        }
    }

    #[test]
    fn a_mirror_round_trips_and_damage_is_an_error_not_a_panic() {
        let mirror = Mirror {
            session: SessionRecord {
                expiry_secs: 3600,
                disconnected_at_ms: Some(5),
                subscriptions: vec![("a/+".into(), SubscriptionOptions::default(), None)],
                will: None,
                username: Some("u".into()),
            },
            cursor: 41,
            inbound: vec![(7, Kept::Stored(40)), (9, Kept::Writing("n1@x:s45".into()))],
            inflight: vec![
                (42, NonZeroU16::MIN, Awaiting::PubRec),
                (44, NonZeroU16::MAX, Awaiting::PubComp),
            ],
            done: vec![43],
        };
        let record = encode_mirror(&mirror);
        assert_eq!(decode_mirror(&record).unwrap(), mirror);
        damage_is_an_error(&record, decode_mirror);
    }
}
