//! Coalescing within a transaction: which ops need not be applied because a
//! later op of the same transaction overwrites or undoes them. Apart from
//! the writer because it is pure bookkeeping over a slice of ops, testable
//! without a file.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use super::Op;

/// The key an op writes, for coalescing. Hashed by its numeric part where
/// it has one (ids and seqs are nearly unique on their own), compared whole.
#[derive(PartialEq, Eq)]
enum Key<'a> {
    Session(&'a str),
    Message(u64),
    Queue(&'a str, u64),
    Inbound(&'a str, u16),
    Retained(&'a str),
    Delayed(u64),
}

impl std::hash::Hash for Key<'_> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        match self {
            Key::Session(id) | Key::Retained(id) => id.hash(state),
            Key::Message(n) | Key::Queue(_, n) | Key::Delayed(n) => n.hash(state),
            Key::Inbound(id, n) => (id, n).hash(state),
        }
    }
}

fn key<V>(op: &Op<V>) -> Option<Key<'_>> {
    Some(match op {
        Op::PutSession { client_id, .. } => Key::Session(client_id),
        Op::DeleteSession { .. } => return None,
        Op::PutMessage { id, .. } | Op::DeleteMessage { id } => Key::Message(*id),
        Op::PutQueue { client_id, seq, .. } | Op::DeleteQueue { client_id, seq } => {
            Key::Queue(client_id, *seq)
        }
        Op::PutInbound {
            client_id,
            packet_id,
        }
        | Op::DeleteInbound {
            client_id,
            packet_id,
        } => Key::Inbound(client_id, *packet_id),
        Op::PutRetained { topic, .. } | Op::DeleteRetained { topic } => Key::Retained(topic),
        Op::PutDelayed { id, .. } | Op::DeleteDelayed { id } => Key::Delayed(*id),
    })
}

/// Which ops of one transaction need not be applied: every op on a key that
/// a later op of the same transaction overwrites or deletes, and all the ops
/// on a key that is created and deleted within the transaction (a new
/// message or queue entry). The commit's result is the same, and this is the
/// common case of a busy broker: a message stored, sent, acknowledged and
/// deleted between two commits costs no write at all. A `DeleteSession` (a
/// range delete) turns this off for its transaction, to keep its order with
/// the ops around it.
pub(super) fn superseded<V>(chunk: &[(u64, Op<V>)]) -> Vec<bool> {
    let mut skip = vec![false; chunk.len()];
    if chunk
        .iter()
        .any(|(_, op)| matches!(op, Op::DeleteSession { .. }))
    {
        return skip;
    }
    // Per key: whether its first op here creates it, and its last op.
    let mut keys: HashMap<Key<'_>, (bool, usize)> = HashMap::with_capacity(chunk.len());
    for (i, (_, op)) in chunk.iter().enumerate() {
        let Some(key) = key(op) else { continue };
        let creates = matches!(
            op,
            Op::PutMessage { .. } | Op::PutQueue { new: true, .. } | Op::PutDelayed { .. }
        );
        match keys.entry(key) {
            Entry::Occupied(mut seen) => {
                skip[seen.get().1] = true;
                seen.get_mut().1 = i;
            }
            Entry::Vacant(slot) => {
                slot.insert((creates, i));
            }
        }
    }
    for (created, last) in keys.into_values() {
        let deleted = matches!(
            chunk[last].1,
            Op::DeleteMessage { .. } | Op::DeleteQueue { .. }
        );
        if created && deleted {
            skip[last] = true;
        }
    }
    skip
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::engine::tests::n;

    /// Within one transaction only the last op on each key is applied, and
    /// nothing at all for a key created and deleted in it; a range delete of
    /// a session turns that off.
    #[test]
    fn superseded_ops_are_skipped_within_a_transaction() {
        let queue = |seq, new| Op::PutQueue {
            client_id: n("c"),
            seq,
            entry: vec![1],
            new,
        };
        let message = |id| Op::PutMessage {
            id,
            record: vec![1],
        };
        let delete = |seq| Op::DeleteQueue {
            client_id: n("c"),
            seq,
        };
        let chunk: Vec<(u64, Op)> = vec![
            (1, message(1)),
            (2, queue(7, true)),
            (3, queue(7, false)),
            (4, message(2)),
            (5, delete(7)),
            (6, Op::DeleteMessage { id: 1 }),
            // Written by an earlier transaction: its delete must be applied.
            (7, queue(3, false)),
            (8, delete(3)),
        ];
        let skipped = [true, true, true, false, true, true, true, false];
        assert_eq!(superseded(&chunk), skipped);
        let mut with_range = chunk;
        with_range.push((9, Op::DeleteSession { client_id: n("x") }));
        assert!(superseded(&with_range).iter().all(|skip| !skip));
    }
}
