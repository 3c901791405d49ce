//! Delayed publish: a PUBLISH to `$delayed/SECONDS/TOPIC` is published to
//! TOPIC SECONDS later (EMQX's convention), for a device that wants a
//! command to run later or a reminder without a scheduler of its own.
//!
//! The publish handler takes the target topic out of the name
//! ([`parse`]), judges it as any publish to that topic (ACL, retained
//! quotas), and hands the message to this schedule instead of routing it,
//! ordered by when it is due; with persistence it also goes to the data
//! file (in the same transaction as the publisher's QoS 2 packet id, as a
//! delivery would) before the publisher's acknowledgement goes out. One
//! task (`router::release_delayed`) sleeps until the earliest is due and
//! routes it, its record's delete landing with its deliveries. The
//! schedule is bounded (`max_delayed_messages`); one more is refused with
//! 0x97 (Quota exceeded) and counted in `$SYS/broker/limits/delayed/refused`.
//!
//! This module is only the schedule: it knows neither the store nor the
//! router, which are above it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tern_codec::topic::is_valid_topic_name;
use tokio::sync::Notify;

use crate::lock::{Mutex, rank};
use crate::message::Message;

/// The topic prefix that asks for a delayed publish.
pub const PREFIX: &str = "$delayed/";
/// The longest delay (about 49.7 days, as EMQX).
pub const MAX_DELAY_SECS: u32 = 4_294_967;

/// What a topic name asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// An ordinary topic.
    Now,
    /// `$delayed/SECONDS/TOPIC`.
    Later { delay: Duration, topic: &'a str },
    /// `$delayed/...` that is not `SECONDS/TOPIC`: why.
    Invalid(&'static str),
}

/// Reads `$delayed/SECONDS/TOPIC` out of a topic name.
pub fn parse(topic: &str) -> Parsed<'_> {
    let Some(rest) = topic.strip_prefix(PREFIX) else {
        return Parsed::Now;
    };
    let Some((secs, target)) = rest.split_once('/') else {
        return Parsed::Invalid("no topic after the delay ($delayed/SECONDS/TOPIC)");
    };
    let Ok(secs) = secs.parse::<u32>() else {
        return Parsed::Invalid("the delay is not a number of seconds");
    };
    if secs > MAX_DELAY_SECS {
        return Parsed::Invalid("the delay is over 4294967 seconds");
    }
    if target.is_empty() || target.starts_with('$') || !is_valid_topic_name(target) {
        return Parsed::Invalid("the topic after the delay is not one a client may publish to");
    }
    Parsed::Later {
        delay: Duration::from_secs(u64::from(secs)),
        topic: target,
    }
}

/// A message waiting for its time.
struct Pending {
    message: Arc<Message>,
    owner: Option<Arc<str>>,
}

/// What the schedule holds, for the admin API.
#[derive(Debug, Clone, serde::Serialize)]
pub struct View {
    pub id: u64,
    pub topic: String,
    /// When it is due, in Unix milliseconds.
    pub due_ms: u64,
    pub qos: u8,
    pub retain: bool,
    pub bytes: usize,
    /// The client that published it.
    pub from: Option<String>,
}

#[derive(Default)]
struct Schedule {
    /// By (due in Unix ms, id): the earliest first.
    by_due: BTreeMap<(u64, u64), Pending>,
    /// Each id's due time, to find it by id.
    due_of: HashMap<u64, u64>,
    next_id: u64,
}

/// The schedule of delayed messages (see the module documentation).
#[derive(Default)]
pub struct Delayed {
    schedule: Mutex<Schedule, { rank::DELAYED }>,
    /// Wakes [`run`]: an earlier message came, or one was cancelled.
    wake: Notify,
}

/// The schedule is full (`max_delayed_messages`).
#[derive(Debug)]
pub struct Full;

impl Delayed {
    /// Schedules `message` (already addressed to its target topic) at
    /// `due_ms` (Unix ms), unless `max` wait already. Returns its id.
    pub fn insert(
        &self,
        max: usize,
        due_ms: u64,
        message: Arc<Message>,
        owner: Option<Arc<str>>,
    ) -> Result<u64, Full> {
        let (id, earliest) = {
            let mut s = self.schedule.lock();
            if s.by_due.len() >= max {
                return Err(Full);
            }
            s.next_id += 1;
            let id = s.next_id;
            s.by_due.insert((due_ms, id), Pending { message, owner });
            s.due_of.insert(id, due_ms);
            (id, s.by_due.keys().next() == Some(&(due_ms, id)))
        };
        if earliest {
            self.wake.notify_one();
        }
        Ok(id)
    }

    /// Puts back what the data file held at start (`id`, due, message,
    /// publisher); ids go on after the highest.
    pub fn restore(&self, id: u64, due_ms: u64, message: Arc<Message>, owner: Option<Arc<str>>) {
        let mut s = self.schedule.lock();
        s.next_id = s.next_id.max(id);
        s.by_due.insert((due_ms, id), Pending { message, owner });
        s.due_of.insert(id, due_ms);
    }

    /// The messages waiting, earliest first.
    pub fn list(&self) -> Vec<View> {
        let s = self.schedule.lock();
        s.by_due
            .iter()
            .map(|(&(due_ms, id), p)| View {
                id,
                topic: p.message.topic.to_string(),
                due_ms,
                qos: p.message.qos as u8,
                retain: p.message.retain,
                bytes: p.message.payload.len(),
                from: p.message.origin.as_ref().map(ToString::to_string),
            })
            .collect()
    }

    /// Takes message `id` out: it is never published. False if there is
    /// no such message (published already, or never scheduled).
    pub fn cancel(&self, id: u64) -> bool {
        let mut s = self.schedule.lock();
        match s.due_of.remove(&id) {
            Some(due) => s.by_due.remove(&(due, id)).is_some(),
            None => false,
        }
    }

    /// Takes the messages due by `now_ms`, earliest first (id, message,
    /// publisher), and how long until the next one is (`None`: nothing
    /// waits).
    pub fn due(&self, now_ms: u64) -> (Vec<Due>, Option<Duration>) {
        let mut s = self.schedule.lock();
        let mut out = Vec::new();
        while let Some(entry) = s.by_due.first_entry() {
            let (due, id) = *entry.key();
            if due > now_ms {
                return (out, Some(Duration::from_millis(due - now_ms)));
            }
            let Pending { message, owner } = entry.remove();
            out.push((id, message, owner));
            s.due_of.remove(&id);
        }
        (out, None)
    }

    /// Resolves when a message earlier than the ones waiting was scheduled
    /// (or one was cancelled): the releasing task looks again.
    pub async fn changed(&self) {
        self.wake.notified().await;
    }
}

/// A message whose time came: its id, it, and who published it.
pub type Due = (u64, Arc<Message>, Option<Arc<str>>);

/// Now, in Unix milliseconds (the schedule's clock: it survives restarts).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delayed_topics_are_read_and_bad_ones_named() {
        assert_eq!(parse("house/temp"), Parsed::Now);
        assert_eq!(
            parse("$delayed/15/house/temp"),
            Parsed::Later {
                delay: Duration::from_secs(15),
                topic: "house/temp"
            }
        );
        for bad in [
            "$delayed/15",
            "$delayed/x/a",
            "$delayed/-1/a",
            "$delayed/4294968/a",
            "$delayed/5/",
            "$delayed/5/$SYS/x",
        ] {
            assert!(matches!(parse(bad), Parsed::Invalid(_)), "{bad}");
        }
    }
}
