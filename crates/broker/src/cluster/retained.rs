//! Retained messages cluster-wide: the retained-storage seam over a
//! JetStream stream that keeps the last message of each subject.
//!
//! Every node keeps all retained messages in its own trie (and data file),
//! as a single node does, so SUBSCRIBE is answered locally. A retained
//! change made on a node goes into its trie at once and into the stream
//! `<cluster>-retained` (subject `<cluster>.r.<topic subject>`, at most one
//! message per subject); every node follows the stream and applies the
//! changes made elsewhere. A clear (empty payload) is kept as the topic's
//! last message, so a node that was away replays it too. At start a node
//! replays the stream's last message per subject before accepting clients.

use std::sync::Arc;
use std::time::Instant;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::push::OrderedConfig;
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::{Command, Outbox, subject, tern_id};
use crate::message::Message;
use crate::retained::{LocalRetained, Quotas, RetainedMessages};
use crate::store::records::{self, Clock};

/// The stream holding a cluster's retained messages.
pub fn stream_config(cluster: &str, replicas: usize) -> stream::Config {
    stream::Config {
        name: format!("{cluster}-retained"),
        subjects: vec![format!("{cluster}.r.>")],
        max_messages_per_subject: 1,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// The retained-storage seam of a cluster node (see the module docs).
pub struct ClusterRetained {
    pub(super) local: Arc<LocalRetained>,
    pub(super) cluster: String,
    pub(super) origin: String,
    pub(super) commands: Outbox,
}

impl RetainedMessages for ClusterRetained {
    fn set(&self, message: &Arc<Message>, owner: Option<&Arc<str>>) -> u64 {
        let ticket = self.local.set(message, owner);
        // `$SYS` (no origin) is each node's own.
        if message.origin.is_some() {
            let record = records::encode_retained(message, owner.map(|o| &**o), &Clock::now());
            let subject = subject::kept_subject(&self.cluster, "r", &message.topic);
            let command = Command::Retain(subject, self.origin.clone(), Bytes::from(record));
            self.commands.control(command);
        }
        ticket
    }

    fn for_each_match(&self, filter: &str, f: &mut dyn FnMut(&Arc<Message>)) {
        self.local.for_each_match(filter, f);
    }

    fn admits(&self, topic: &str, size: usize, owner: Option<&Arc<str>>, quotas: Quotas) -> bool {
        self.local.admits(topic, size, owner, quotas)
    }

    fn count(&self) -> usize {
        self.local.count()
    }

    fn purge_expired(&self, now: Instant) {
        self.local.purge_expired(now);
    }

    fn restore(&self, message: Arc<Message>, owner: Option<Arc<str>>) {
        self.local.restore(message, owner);
    }
}

/// Follows the retained stream from the last message of each subject on,
/// applying other nodes' changes to `local`; says on `ready` once it has
/// caught up with what the stream held when it started.
pub async fn follow(
    jetstream: jetstream::Context,
    cluster: String,
    origin: String,
    local: Arc<LocalRetained>,
    ready: oneshot::Sender<()>,
    stop: CancellationToken,
) {
    let mut ready = Some(ready);
    let name = format!("{cluster}-retained");
    let consumer = async {
        let mut stream = jetstream
            .get_stream(&name)
            .await
            .map_err(|e| e.to_string())?;
        let held = stream
            .info()
            .await
            .map_err(|e| e.to_string())?
            .state
            .messages;
        let config = OrderedConfig {
            deliver_subject: jetstream.client().new_inbox(),
            filter_subject: format!("{cluster}.r.>"),
            deliver_policy: DeliverPolicy::LastPerSubject,
            ..Default::default()
        };
        let consumer = stream
            .create_consumer(config)
            .await
            .map_err(|e| e.to_string())?;
        let messages = consumer.messages().await.map_err(|e| e.to_string())?;
        Ok::<_, String>((held, messages))
    };
    let (held, mut messages) = match consumer.await {
        Ok(consumer) => consumer,
        Err(e) => {
            tracing::error!(stream = %name, error = %e, "cluster: cannot follow the retained messages of other nodes");
            return;
        }
    };
    if held == 0
        && let Some(ready) = ready.take()
    {
        let _ = ready.send(());
    }
    loop {
        let message = match super::next_or_stop(&mut messages, &stop).await {
            Some(Ok(message)) => message,
            Some(Err(e)) => {
                crate::throttled!(warn, "cluster retained stream", error = %e, "cluster: reading the retained stream failed; it resumes");
                continue;
            }
            None => break,
        };
        let caught_up = message.info().is_ok_and(|info| info.pending == 0);
        let own = tern_id(&message) == Some(origin.as_str());
        if !own {
            apply(&local, &message.payload);
        }
        if caught_up && let Some(ready) = ready.take() {
            let _ = ready.send(());
        }
    }
}

/// Applies one retained change from another node to this node's trie.
fn apply(local: &LocalRetained, record: &[u8]) {
    match records::decode_retained(record, &Clock::now()) {
        Ok(Some((message, owner))) => {
            local.set(&message, owner.as_ref());
        }
        // Expired meanwhile: nothing to keep.
        Ok(None) => {}
        Err(e) => {
            crate::throttled!(warn, "cluster retained unreadable", error = %e, "cluster: a retained message from another node could not be read; skipped")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retained_subjects_sit_under_r() {
        assert_eq!(subject::kept_subject("t", "r", "a/b c"), "t.r.m.a.b~20c");
        assert_eq!(subject::kept_subject("t", "r", "$x/y"), "t.r.d.~24x.y");
    }
}
