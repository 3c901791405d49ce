//! The file's six tables: their definitions, reading them all at open, and
//! applying one [`Op`] in a write transaction. The one place that knows the
//! key and value types of each table (salvage reads them through the same
//! definitions).
//!
//! Tables: sessions `&str -> &[u8]`, messages `u64 -> &[u8]`,
//! queue `(&str, u64) -> &[u8]`, inbound `(&str, u16) -> ()`,
//! retained `&str -> &[u8]`, delayed `u64 -> &[u8]`. Tuple keys sort by client id, then number, so a
//! client's queue or inbound ids are one contiguous range (which is how
//! [`Op::DeleteSession`] removes them without a scan).

use bytes::BytesMut;

use redb::{
    Database, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata, Table,
    TableDefinition, TableError, WriteTransaction,
};

use super::{Op, Value};

pub(in crate::store) const SESSIONS: TableDefinition<&str, &[u8]> =
    TableDefinition::new("sessions");
pub(in crate::store) const MESSAGES: TableDefinition<u64, &[u8]> = TableDefinition::new("messages");
pub(in crate::store) const QUEUE: TableDefinition<(&str, u64), &[u8]> =
    TableDefinition::new("queue");
pub(in crate::store) const INBOUND: TableDefinition<(&str, u16), ()> =
    TableDefinition::new("inbound");
pub(in crate::store) const RETAINED: TableDefinition<&str, &[u8]> =
    TableDefinition::new("retained");
pub(in crate::store) const DELAYED: TableDefinition<u64, &[u8]> = TableDefinition::new("delayed");

/// Everything in the file at open, for the broker to rebuild its state from.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Session records by client id, sorted by client id.
    pub sessions: Vec<(String, Vec<u8>)>,
    /// Sorted by client id, then seq (the order deliveries must be resent in).
    pub queue: Vec<(String, u64, Vec<u8>)>,
    /// Message records by id, sorted by id.
    pub messages: Vec<(u64, Vec<u8>)>,
    /// Unreleased QoS 2 packet ids, sorted by client id, then packet id.
    pub inbound_qos2: Vec<(String, u16)>,
    /// Retained message records by topic, sorted by topic.
    pub retained: Vec<(String, Vec<u8>)>,
    /// Delayed messages (`$delayed/...`) by id, sorted by id.
    pub delayed: Vec<(u64, Vec<u8>)>,
    /// The file was not closed cleanly and redb repaired it (nothing that was
    /// durable is lost; log it).
    pub repaired: bool,
}

/// Reads every table into a [`Recovered`] (`repaired` is set by the caller).
pub(super) fn recover(db: &Database) -> Result<Recovered, redb::Error> {
    let txn = db.begin_read()?;
    let mut recovered = Recovered::default();
    if let Some(table) = open_for_read(&txn, SESSIONS)? {
        recovered.sessions.reserve(table_len(&table)?);
        for row in table.iter()? {
            let (key, value) = row?;
            recovered
                .sessions
                .push((key.value().to_owned(), value.value().to_vec()));
        }
    }
    if let Some(table) = open_for_read(&txn, QUEUE)? {
        recovered.queue.reserve(table_len(&table)?);
        for row in table.iter()? {
            let (key, value) = row?;
            let (client_id, seq) = key.value();
            recovered
                .queue
                .push((client_id.to_owned(), seq, value.value().to_vec()));
        }
    }
    if let Some(table) = open_for_read(&txn, MESSAGES)? {
        recovered.messages.reserve(table_len(&table)?);
        for row in table.iter()? {
            let (key, value) = row?;
            recovered
                .messages
                .push((key.value(), value.value().to_vec()));
        }
    }
    if let Some(table) = open_for_read(&txn, INBOUND)? {
        recovered.inbound_qos2.reserve(table_len(&table)?);
        for row in table.iter()? {
            let (key, _) = row?;
            let (client_id, packet_id) = key.value();
            recovered
                .inbound_qos2
                .push((client_id.to_owned(), packet_id));
        }
    }
    if let Some(table) = open_for_read(&txn, RETAINED)? {
        recovered.retained.reserve(table_len(&table)?);
        for row in table.iter()? {
            let (key, value) = row?;
            recovered
                .retained
                .push((key.value().to_owned(), value.value().to_vec()));
        }
    }
    if let Some(table) = open_for_read(&txn, DELAYED)? {
        recovered.delayed.reserve(table_len(&table)?);
        for row in table.iter()? {
            let (key, value) = row?;
            recovered
                .delayed
                .push((key.value(), value.value().to_vec()));
        }
    }
    Ok(recovered)
}

/// A table for reading, or `None` if nothing was ever written to it (a new
/// file has no tables; creating them would cost a commit at every open).
pub(super) fn open_for_read<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &ReadTransaction,
    definition: TableDefinition<K, V>,
) -> Result<Option<redb::ReadOnlyTable<K, V>>, TableError> {
    match txn.open_table(definition) {
        Ok(table) => Ok(Some(table)),
        Err(TableError::TableDoesNotExist(_)) => Ok(None),
        Err(err) => Err(err),
    }
}

/// A table's row count as a capacity hint (capped: the count is only a
/// hint, and a damaged count must not turn into a huge allocation).
fn table_len(table: &impl ReadableTableMetadata) -> Result<usize, redb::StorageError> {
    Ok(usize::try_from(table.len()?)
        .unwrap_or(usize::MAX)
        .min(1 << 20))
}

/// The tables of one write transaction, opened on first use (a batch of
/// queue ops alone does not open the other four).
pub(super) struct Tables<'t> {
    txn: &'t WriteTransaction,
    sessions: Option<Table<'t, &'static str, &'static [u8]>>,
    messages: Option<Table<'t, u64, &'static [u8]>>,
    queue: Option<Table<'t, (&'static str, u64), &'static [u8]>>,
    inbound: Option<Table<'t, (&'static str, u16), ()>>,
    retained: Option<Table<'t, &'static str, &'static [u8]>>,
    delayed: Option<Table<'t, u64, &'static [u8]>>,
}

/// The table in `slot`, opening it in `txn` the first time.
fn table<'s, 't, K: redb::Key + 'static, V: redb::Value + 'static>(
    slot: &'s mut Option<Table<'t, K, V>>,
    txn: &'t WriteTransaction,
    definition: TableDefinition<K, V>,
) -> Result<&'s mut Table<'t, K, V>, TableError> {
    let table = match slot.take() {
        Some(table) => table,
        None => txn.open_table(definition)?,
    };
    Ok(slot.insert(table))
}

impl<'t> Tables<'t> {
    pub(super) fn new(txn: &'t WriteTransaction) -> Self {
        Tables {
            txn,
            sessions: None,
            messages: None,
            queue: None,
            inbound: None,
            retained: None,
            delayed: None,
        }
    }

    /// Applies `op`, encoding its value into `buf` if it has to be.
    pub(super) fn apply<V: Value>(
        &mut self,
        op: &Op<V>,
        buf: &mut BytesMut,
    ) -> Result<(), redb::Error> {
        let txn = self.txn;
        match op {
            Op::PutSession { client_id, record } => {
                table(&mut self.sessions, txn, SESSIONS)?
                    .insert(client_id.as_str(), record.as_slice())?;
            }
            Op::DeleteSession { client_id } => {
                let id = client_id.as_str();
                table(&mut self.sessions, txn, SESSIONS)?.remove(id)?;
                table(&mut self.queue, txn, QUEUE)?
                    .retain_in((id, 0u64)..=(id, u64::MAX), |_, _| false)?;
                table(&mut self.inbound, txn, INBOUND)?
                    .retain_in((id, 0u16)..=(id, u16::MAX), |_, _| false)?;
            }
            Op::PutMessage { id, record } => {
                if let Some(bytes) = record.bytes(buf) {
                    table(&mut self.messages, txn, MESSAGES)?.insert(*id, bytes)?;
                }
            }
            Op::DeleteMessage { id } => {
                table(&mut self.messages, txn, MESSAGES)?.remove(*id)?;
            }
            Op::PutQueue {
                client_id,
                seq,
                entry,
                ..
            } => {
                if let Some(bytes) = entry.bytes(buf) {
                    table(&mut self.queue, txn, QUEUE)?
                        .insert((client_id.as_str(), *seq), bytes)?;
                }
            }
            Op::DeleteQueue { client_id, seq } => {
                table(&mut self.queue, txn, QUEUE)?.remove((client_id.as_str(), *seq))?;
            }
            Op::PutInbound {
                client_id,
                packet_id,
            } => {
                table(&mut self.inbound, txn, INBOUND)?
                    .insert((client_id.as_str(), *packet_id), ())?;
            }
            Op::DeleteInbound {
                client_id,
                packet_id,
            } => {
                table(&mut self.inbound, txn, INBOUND)?.remove((client_id.as_str(), *packet_id))?;
            }
            Op::PutRetained { topic, record } => {
                if let Some(bytes) = record.bytes(buf) {
                    table(&mut self.retained, txn, RETAINED)?.insert(topic.as_str(), bytes)?;
                }
            }
            Op::DeleteRetained { topic } => {
                table(&mut self.retained, txn, RETAINED)?.remove(topic.as_str())?;
            }
            Op::PutDelayed { id, record } => {
                table(&mut self.delayed, txn, DELAYED)?.insert(*id, record.as_slice())?;
            }
            Op::DeleteDelayed { id } => {
                table(&mut self.delayed, txn, DELAYED)?.remove(*id)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::engine::Durability;
    use crate::store::engine::tests::{TestDir, messages, n, open, put_message, reopen};
    use std::time::Duration;

    #[test]
    fn delete_session_removes_only_that_clients_entries() {
        let dir = TestDir::new("delete-session");
        let (engine, _) = open(&dir, Durability::Fsync);
        let clients = ["", "a", "ab", "a/", "b"];
        let mut ops = Vec::new();
        for client in clients {
            ops.push(Op::PutSession {
                client_id: n(client),
                record: client.as_bytes().to_vec(),
            });
            for seq in [0, 1, u64::MAX] {
                ops.push(Op::PutQueue {
                    client_id: n(client),
                    seq,
                    entry: vec![1],
                    new: true,
                });
            }
            for packet_id in [0, 7, u16::MAX] {
                ops.push(Op::PutInbound {
                    client_id: n(client),
                    packet_id,
                });
            }
        }
        engine.submit_all(ops);
        engine.submit(Op::DeleteSession { client_id: n("a") });
        engine.submit(Op::DeleteSession {
            client_id: n("never-existed"),
        });
        engine.close();

        let recovered = reopen(&dir);
        let left = ["", "a/", "ab", "b"]; // bytewise order
        assert_eq!(
            recovered
                .sessions
                .iter()
                .map(|(c, _)| c.as_str())
                .collect::<Vec<_>>(),
            left
        );
        let queue_clients: Vec<(&str, u64)> = recovered
            .queue
            .iter()
            .map(|(c, q, _)| (c.as_str(), *q))
            .collect();
        let expected: Vec<(&str, u64)> = left
            .iter()
            .flat_map(|c| [0, 1, u64::MAX].map(|q| (*c, q)))
            .collect();
        assert_eq!(queue_clients, expected);
        let inbound: Vec<(&str, u16)> = recovered
            .inbound_qos2
            .iter()
            .map(|(c, p)| (c.as_str(), *p))
            .collect();
        let expected: Vec<(&str, u16)> = left
            .iter()
            .flat_map(|c| [0, 7, u16::MAX].map(|p| (*c, p)))
            .collect();
        assert_eq!(inbound, expected);
    }

    /// Messages stored and deleted again, a transaction per batch: freed
    /// pages must be reused, so the file stays the size of the live data.
    /// 100k pairs in an optimized build (`cargo test --release`); 20k in a
    /// debug build, where unoptimized redb costs ~25 µs an op and the full
    /// run takes 5 s (0.7 s with `[profile.dev.package.redb] opt-level = 3`).
    #[test]
    fn churn_keeps_the_file_small() {
        let dir = TestDir::new("churn");
        let (engine, _) = open(&dir, Durability::Os);
        const PAIRS: u64 = if cfg!(debug_assertions) {
            20_000
        } else {
            100_000
        };
        const BATCH: u64 = 64;
        let started = std::time::Instant::now();
        let mut next = 0;
        while next < PAIRS {
            let end = (next + BATCH).min(PAIRS);
            // Put this batch's messages, delete the previous batch's.
            engine.submit_all(
                (next..end)
                    .map(|id| put_message(id, 100))
                    .chain((next.saturating_sub(BATCH)..next).map(|id| Op::DeleteMessage { id })),
            );
            engine.flush(); // a commit per batch, as a steady trickle of publishes makes
            next = end;
        }
        let bytes = engine.stats().file_bytes;
        eprintln!(
            "churn: {PAIRS} put/delete pairs of 100-byte messages, {} commits in {:?}: file {} KiB",
            engine.stats().commits,
            started.elapsed(),
            bytes / 1024
        );
        assert!(bytes < 4 << 20, "file grew to {bytes} bytes under churn");
        engine.close();
        let recovered = reopen(&dir);
        assert_eq!(
            recovered.messages,
            messages((PAIRS - 1) / BATCH * BATCH..PAIRS, 100)
        );
    }

    #[test]
    fn recovers_100k_messages_quickly() {
        let dir = TestDir::new("recover-100k");
        let (engine, _) = open(&dir, Durability::Os);
        const N: u64 = 100_000;
        for batch in 0..N / 1000 {
            engine.submit_all((batch * 1000..(batch + 1) * 1000).map(|id| put_message(id, 100)));
        }
        engine.close();
        let started = std::time::Instant::now();
        let (engine, recovered) = open(&dir, Durability::Fsync);
        let took = started.elapsed();
        engine.close();
        eprintln!(
            "recovery: {} messages of 100 bytes ({} KiB file) read in {took:?}",
            recovered.messages.len(),
            std::fs::metadata(dir.file()).unwrap().len() / 1024
        );
        assert_eq!(recovered.messages.len(), N as usize);
        assert!(
            recovered
                .messages
                .iter()
                .enumerate()
                .all(|(i, (id, r))| *id == i as u64 && r.len() == 100)
        );
        assert!(took < Duration::from_secs(5), "recovery took {took:?}");
    }
}
