//! Persistence: what the broker must find again after a restart, and the
//! promise that an acknowledged message is on disk.
//!
//! - [`engine`]: one redb file written by one thread, many changes per
//!   transaction (group commit); knows only keys and opaque records.
//! - [`records`]: the byte layout of messages, queue entries and sessions.
//! - [`salvage`]: copies what is still readable out of a damaged file into
//!   a new one (`tern store salvage`).
//! - [`Backend`] (here): the seam between the two: what a store engine
//!   must do with the changes [`Store`] makes (apply them in order, one
//!   transaction per submission, and say which are durable). The redb
//!   [`Engine`] is the one implementation; a replicated one (the cluster)
//!   takes the same changes, and nothing above the store changes.
//! - [`Store`] (here): what the rest of the broker calls. Changes are
//!   submitted without waiting; each returns a *ticket*, and a response that
//!   promises durability (PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK) is held in
//!   the connection's output until the store reports that ticket durable
//!   (see `client_state::Holds`).
//!
//! Only persistent sessions (a Session Expiry Interval above 0, or MQTT 3.1.1
//! clean session 0) and retained messages are stored, and of deliveries only
//! QoS 1 and 2: QoS 0 promises nothing to survive.

pub mod crash_point;
pub mod engine;
pub mod records;
pub mod salvage;

use std::num::NonZeroU16;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use bytes::BytesMut;

use tern_codec::ByteStr;
use tokio::sync::watch;

use self::crash_point::{CrashPoint, Crashing};
use self::engine::Engine;
pub use self::engine::Op;
pub use self::engine::{Backup, Durability, Recovered, StoreError, StoreMetrics};
use self::records::{Clock, QueueEntry, SessionRecord};
use crate::message::{Awaiting, Delivery, Message, Records, StoredMessage};

/// Where the store's changes go: the persistence seam.
///
/// A change is an [`Op`] on records the broker defines (sessions, queue
/// entries, messages, inbound QoS 2 ids, retained messages). An engine
/// applies submissions in order, each one whole or not at all, and numbers
/// them with *tickets*: a response that promises durability waits until
/// [`Backend::durable`] reaches its ticket.
pub trait Backend: Send + Sync {
    /// Queues one change; returns its ticket (0 once closed).
    fn submit(&self, op: Op<Record>) -> u64;
    /// Queues changes that land together; returns their one ticket.
    fn submit_all(&self, ops: Vec<Op<Record>>) -> u64;
    /// The highest ticket whose changes are durable.
    fn durable(&self) -> u64;
    /// A watch of [`Backend::durable`].
    fn watch(&self) -> watch::Receiver<u64>;
    /// What "durable" means here.
    fn durability(&self) -> Durability;
    /// What the commits cost so far.
    fn metrics(&self) -> &StoreMetrics;
    /// Blocks until everything submitted so far is durable.
    fn flush(&self);
    /// Stops taking changes and lets go of the storage.
    fn close(&self);
    /// Where the data lives, for logs.
    fn location(&self) -> &Path;
    /// Copies everything submitted so far into a new data file in `dir`
    /// while the broker runs (`tern backup`). Blocks for the copy.
    fn backup(&self, dir: &Path) -> Result<Backup, StoreError>;
}

impl Backend for Engine<Record> {
    fn submit(&self, op: Op<Record>) -> u64 {
        Engine::submit(self, op)
    }
    fn submit_all(&self, ops: Vec<Op<Record>>) -> u64 {
        Engine::submit_all(self, ops)
    }
    fn durable(&self) -> u64 {
        Engine::durable(self)
    }
    fn watch(&self) -> watch::Receiver<u64> {
        Engine::watch(self)
    }
    fn durability(&self) -> Durability {
        Engine::durability(self)
    }
    fn metrics(&self) -> &StoreMetrics {
        Engine::metrics(self)
    }
    fn flush(&self) {
        Engine::flush(self)
    }
    fn close(&self) {
        Engine::close(self)
    }
    fn location(&self) -> &Path {
        Engine::path(self)
    }
    fn backup(&self, dir: &Path) -> Result<Backup, StoreError> {
        Engine::backup(self, dir)
    }
}

/// Opens the data file in `dir` as `tern serve` would (the integrity
/// check, the data format), counts what it holds, and closes it: how
/// `tern backup` checks the copy it received.
pub fn verify(dir: &Path) -> Result<Backup, StoreError> {
    let (engine, recovered) = Engine::<Vec<u8>>::open(dir, Durability::Fsync)?;
    engine.close();
    let count = |n: usize| n as u64;
    Ok(Backup {
        sessions: count(recovered.sessions.len()),
        queued: count(recovered.queue.len()),
        messages: count(recovered.messages.len()),
        inbound_qos2: count(recovered.inbound_qos2.len()),
        retained: count(recovered.retained.len()),
        delayed: count(recovered.delayed.len()),
        bytes: std::fs::metadata(engine.path()).map_or(0, |m| m.len()),
    })
}

/// The broker's handle on its store.
pub struct Store {
    engine: Arc<dyn Backend>,
    next_message_id: AtomicU64,
    next_seq: AtomicU64,
    /// Set at shutdown: the sessions and messages dropped after it must not
    /// delete what the file holds for the next start.
    closed: AtomicBool,
}

impl Store {
    /// Opens the data directory and reads what it holds.
    pub fn open(dir: &Path, durability: Durability) -> Result<(Arc<Store>, Recovered), StoreError> {
        Store::open_crashing(dir, durability, None)
    }

    /// [`Store::open`]; with a crash point (tests), the changes after it
    /// are lost (see [`crash_point`]).
    pub fn open_crashing(
        dir: &Path,
        durability: Durability,
        crash: Option<Arc<CrashPoint>>,
    ) -> Result<(Arc<Store>, Recovered), StoreError> {
        let (engine, recovered) = Engine::open(dir, durability)?;
        let engine: Arc<dyn Backend> = match crash {
            Some(point) => Arc::new(Crashing { engine, point }),
            None => engine,
        };
        Ok((Store::with_backend(engine, &recovered), recovered))
    }

    /// A store over any [`Backend`], which found `recovered` at its start:
    /// new records are numbered after the ones it holds.
    pub fn with_backend(engine: Arc<dyn Backend>, recovered: &Recovered) -> Arc<Store> {
        let next_message_id = recovered.messages.iter().map(|(id, _)| *id).max();
        let next_seq = recovered.queue.iter().map(|(_, seq, _)| *seq).max();
        Arc::new(Store {
            engine,
            next_message_id: AtomicU64::new(next_message_id.unwrap_or(0) + 1),
            next_seq: AtomicU64::new(next_seq.unwrap_or(0) + 1),
            closed: AtomicBool::new(false),
        })
    }

    /// The data file.
    pub fn path(&self) -> &Path {
        self.engine.location()
    }

    fn submit(&self, op: Op<Record>) -> u64 {
        if self.closed.load(Ordering::Acquire) {
            return 0;
        }
        self.engine.submit(op)
    }

    /// The highest durable ticket.
    pub fn durable(&self) -> u64 {
        self.engine.durable()
    }

    /// A watch of [`Store::durable`].
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.engine.watch()
    }

    /// What the commits cost so far (for `/metrics`).
    pub fn metrics(&self) -> &StoreMetrics {
        self.engine.metrics()
    }

    /// A consistent copy of the data file in `dir` (see [`Backend::backup`]).
    pub fn backup(&self, dir: &Path) -> Result<Backup, StoreError> {
        self.engine.backup(dir)
    }

    /// Whether responses wait for the store (`durability` fsync or os).
    pub fn acks_wait(&self) -> bool {
        self.engine.durability() != Durability::None
    }

    /// Writes everything submitted so far and stops: what is dropped after
    /// this (sessions, messages at shutdown) is not deleted from the file.
    pub fn close(&self) {
        self.engine.flush();
        self.closed.store(true, Ordering::Release);
        self.engine.close();
    }

    /// The id of `message`'s record, storing it the first time (through
    /// `write`: submitted, or added to a group).
    fn message_id(self: &Arc<Self>, message: &Arc<Message>, write: impl FnOnce(Op<Record>)) -> u64 {
        message
            .stored
            .get_or_init(|| {
                let id = self.next_message_id.fetch_add(1, Ordering::Relaxed);
                let record = Record::Message(Arc::downgrade(message));
                write(Op::PutMessage { id, record });
                StoredMessage::new(id, self.clone())
            })
            .id
    }

    /// Submits a group of changes as one (one ticket, one transaction).
    /// Returns its ticket, 0 if the group is empty.
    pub fn submit_group(&self, group: Group) -> u64 {
        if group.0.is_empty() || self.closed.load(Ordering::Acquire) {
            return 0;
        }
        self.engine.submit_all(group.0)
    }

    /// Gives a recovered message its record, so it is deleted with its last
    /// holder like any other.
    pub fn adopt(self: &Arc<Self>, message: &Message, id: u64) {
        let _ = message.stored.set(StoredMessage::new(id, self.clone()));
    }

    /// Deletes a message record nothing refers to (expired at restart).
    pub fn forget_message(&self, id: u64) {
        self.submit(Op::DeleteMessage { id });
    }

    /// Deletes one queue entry (found useless at restart).
    pub fn delete_entry(&self, client_id: &ByteStr, seq: u64) {
        self.submit(Op::DeleteQueue {
            client_id: client_id.clone(),
            seq,
        });
    }

    /// Adds a delivery queued for a persistent session to `group` (and its
    /// message, the first time): sets its `seq`.
    pub fn queue(
        self: &Arc<Self>,
        client_id: &ByteStr,
        delivery: &mut Delivery,
        group: &mut Group,
    ) {
        let message_id = self.message_id(&delivery.message, |op| group.0.push(op));
        delivery.seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let entry = QueueEntry {
            message_id,
            qos: delivery.qos,
            retain: delivery.retain,
            subscription_ids: delivery.subscription_ids.clone(),
            sent: None,
        };
        group.0.push(entry_op(client_id, delivery, entry));
    }

    /// Adds to `group` that a stored delivery was sent with a packet id and
    /// is now in the state `sent` names.
    pub fn sent(
        self: &Arc<Self>,
        client_id: &ByteStr,
        delivery: &Delivery,
        sent: (NonZeroU16, Awaiting),
        group: &mut Group,
    ) {
        if delivery.seq == 0 {
            return;
        }
        let entry = QueueEntry {
            message_id: self.message_id(&delivery.message, |op| group.0.push(op)),
            qos: delivery.qos,
            retain: delivery.retain,
            subscription_ids: delivery.subscription_ids.clone(),
            sent: Some(sent),
        };
        group.0.push(entry_op(client_id, delivery, entry));
    }

    /// Adds to `group` that a stored delivery is done with (acknowledged,
    /// expired, or too large to send), and consumes it. If it held the last
    /// reference to its message, the message's delete follows its entry's in
    /// the same submission: one submission, not two, for the common end of a
    /// message, and never a message deleted before an entry that names it.
    pub fn finish(&self, client_id: &ByteStr, delivery: Delivery, group: &mut Group) {
        if delivery.seq == 0 {
            return;
        }
        group.0.push(Op::DeleteQueue {
            client_id: client_id.clone(),
            seq: delivery.seq,
        });
        if let Some(message) = Arc::into_inner(delivery.message)
            && let Some(stored) = message.stored.into_inner()
        {
            group.0.push(Op::DeleteMessage {
                id: stored.into_id(),
            });
        }
    }

    /// Writes a session's record (subscriptions, expiry, pending will).
    pub fn put_session(&self, client_id: &ByteStr, record: &SessionRecord) -> u64 {
        self.submit(Op::PutSession {
            client_id: client_id.clone(),
            record: records::encode_session(record),
        })
    }

    /// Deletes the session's record, queue and inbound QoS 2 ids.
    pub fn delete_session(&self, client_id: &ByteStr) -> u64 {
        self.submit(Op::DeleteSession {
            client_id: client_id.clone(),
        })
    }

    /// Adds an inbound QoS 2 packet id to `group`: it lands with the
    /// deliveries of its message, all or none, so after a crash a stored id
    /// always has its message queued, and a queued message its id.
    pub fn hold_inbound(&self, client_id: &ByteStr, packet_id: u16, group: &mut Group) {
        group.0.push(Op::PutInbound {
            client_id: client_id.clone(),
            packet_id,
        });
    }

    /// Records that an inbound QoS 2 packet id was released (PUBREL).
    pub fn release_inbound(&self, client_id: &ByteStr, packet_id: u16) -> u64 {
        self.submit(Op::DeleteInbound {
            client_id: client_id.clone(),
            packet_id,
        })
    }

    /// Stores `message` as its topic's retained message, set by `owner`.
    /// The writer thread encodes it: a publisher's thread allocates no
    /// record, which would be freed later among the retained messages it
    /// keeps (a million of them left a hundred bytes of holes each).
    pub fn retain(&self, message: &Arc<Message>, owner: Option<&Arc<str>>) -> u64 {
        self.submit(Op::PutRetained {
            topic: message.topic.clone(),
            record: Record::Retained(message.clone(), owner.cloned()),
        })
    }

    /// Clears the retained message of `topic`.
    pub fn clear_retained(&self, topic: &ByteStr) -> u64 {
        self.submit(Op::DeleteRetained {
            topic: topic.clone(),
        })
    }
}

impl Store {
    /// Stores a delayed message's record with `group` (the inbound QoS 2
    /// id of its PUBLISH, if any): one transaction, as for a delivery.
    pub fn put_delayed(&self, id: u64, record: Vec<u8>, mut group: Group) -> u64 {
        group.0.push(Op::PutDelayed { id, record });
        self.submit_group(group)
    }

    /// Adds to `group` that a delayed message is gone: published, with the
    /// deliveries `group` holds.
    pub fn delayed_done(&self, id: u64, group: &mut Group) {
        group.0.push(Op::DeleteDelayed { id });
    }

    /// Deletes a delayed message's record (cancelled, or expired).
    pub fn delete_delayed(&self, id: u64) -> u64 {
        self.submit(Op::DeleteDelayed { id })
    }
}

/// Changes that must land together: one ticket, one transaction.
#[derive(Default)]
pub struct Group(Vec<Op<Record>>);

/// The op that writes `entry`.
fn entry_op(client_id: &ByteStr, delivery: &Delivery, entry: QueueEntry) -> Op<Record> {
    Op::PutQueue {
        client_id: client_id.clone(),
        seq: delivery.seq,
        // Only `queue` writes entries not yet sent, and it takes a new seq.
        new: entry.sent.is_none(),
        entry: Record::Entry(entry, Arc::downgrade(&delivery.message)),
    }
}

/// A message or queue entry as the store submits it: the live value, which
/// the writer thread encodes only if its change reaches the file (most are
/// cancelled out within their transaction: see [`engine::Value`]).
///
/// Both hold their message weakly. A message that nothing holds any more
/// was delivered and acknowledged by every persistent session it was queued
/// for, or discarded, so neither it nor its queue entries need writing: its
/// [`StoredMessage`] submits the message's delete as it goes, and every
/// delivery that ends submits its entry's delete ([`Store::update`] with
/// `None`, or the session's delete). Holding it strongly would keep it alive
/// until the writer let go, and move its delete to the next transaction.
#[derive(Debug)]
pub enum Record {
    /// A message record.
    Message(Weak<Message>),
    /// A queue entry, and the message it refers to.
    Entry(QueueEntry, Weak<Message>),
    /// A retained message and the user who set it. Held strongly: it is
    /// written even if its topic changed since (the change follows).
    Retained(Arc<Message>, Option<Arc<str>>),
}

impl engine::Value for Record {
    fn bytes<'a>(&'a self, buf: &'a mut BytesMut) -> Option<&'a [u8]> {
        match self {
            Record::Message(message) => {
                let message = message.upgrade()?;
                records::write_message(&message, &Clock::now(), buf);
            }
            Record::Entry(entry, message) => {
                if message.strong_count() == 0 {
                    return None;
                }
                records::write_queue_entry(entry, buf);
            }
            Record::Retained(message, owner) => {
                records::write_retained(message, owner.as_deref(), &Clock::now(), buf);
            }
        }
        Some(buf)
    }
}

impl Records for Store {
    fn delete_message(&self, id: u64) {
        self.submit(Op::DeleteMessage { id });
    }
}

#[cfg(test)]
mod tests {
    use super::engine::Value;
    use super::*;
    use tern_codec::QoS;

    /// A message and its queue entries are encoded while the message lives,
    /// and skipped once nothing holds it (its delete is on its way).
    #[test]
    fn records_are_written_only_while_their_message_lives() {
        let message = Message::broker_retained("a/b".into(), "payload".into());
        let entry = QueueEntry {
            message_id: 7,
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: vec![3],
            sent: None,
        };
        let as_message = Record::Message(Arc::downgrade(&message));
        let as_entry = Record::Entry(entry.clone(), Arc::downgrade(&message));
        let mut buf = BytesMut::new();

        let written = as_message.bytes(&mut buf).map(<[u8]>::to_vec);
        let clock = Clock::now();
        assert_eq!(written, Some(records::encode_message(&message, &clock)));
        let written = as_entry.bytes(&mut buf).map(<[u8]>::to_vec);
        assert_eq!(written, Some(records::encode_queue_entry(&entry)));

        drop(message);
        assert!(as_message.bytes(&mut buf).is_none());
        assert!(as_entry.bytes(&mut buf).is_none());
    }

    /// A retained message is encoded by the writer from the message itself,
    /// as `encode_retained` would have, with its owner.
    #[test]
    fn a_retained_record_is_encoded_from_its_message() {
        let message = Message::broker_retained("a/b".into(), "payload".into());
        let record = Record::Retained(message.clone(), Some("alice".into()));
        let mut buf = BytesMut::new();
        let written = record.bytes(&mut buf).map(<[u8]>::to_vec);
        let clock = Clock::now();
        let expected = records::encode_retained(&message, Some("alice"), &clock);
        assert_eq!(written, Some(expected));
    }

    /// Finishing a delivery deletes its entry; finishing the last one that
    /// holds its message deletes the message too, after the entry, in the
    /// same group (and its drop submits nothing more).
    #[test]
    fn the_last_finished_delivery_deletes_its_message_in_the_same_group() {
        let dir = std::env::temp_dir().join(format!("tern-store-finish-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (store, _) = Store::open(&dir, Durability::Fsync).expect("open the store");
        let client: ByteStr = "c".into();
        let delivery = |message: &Arc<Message>| Delivery {
            message: message.clone(),
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: Vec::new(),
            seq: 0,
        };
        let message = Message::broker_retained("t".into(), "p".into());
        let (mut first, mut second) = (delivery(&message), delivery(&message));
        drop(message);
        let mut queued = Group::default();
        store.queue(&client, &mut first, &mut queued);
        store.queue(&client, &mut second, &mut queued);
        store.submit_group(queued);
        let deleted = |group: &Group| -> Vec<&'static str> {
            let name = |op: &Op<Record>| match op {
                Op::DeleteQueue { .. } => "queue",
                Op::DeleteMessage { .. } => "message",
                _ => "other",
            };
            group.0.iter().map(name).collect()
        };

        let mut done = Group::default();
        store.finish(&client, first, &mut done);
        assert_eq!(deleted(&done), ["queue"]);
        store.submit_group(done);
        let mut done = Group::default();
        store.finish(&client, second, &mut done);
        assert_eq!(deleted(&done), ["queue", "message"]);
        let last = store.submit_group(done);
        store.close();
        assert_eq!(
            store.durable(),
            last,
            "nothing was submitted after the group"
        );

        let (store, recovered) = Store::open(&dir, Durability::Fsync).expect("reopen");
        assert!(recovered.messages.is_empty() && recovered.queue.is_empty());
        store.close();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
