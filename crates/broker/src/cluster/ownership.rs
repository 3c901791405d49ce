//! The session-ownership seam over NATS ([`NatsOwnership`]): claims of
//! client ids, the sessions they move, and the wills kept beyond the node.

use std::future::Future;
use std::pin::Pin;
use std::sync::Weak;
use std::time::Instant;

use bytes::Bytes;
use tern_codec::{ByteStr, LastWill, ReasonCode};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::message::Message;
use crate::registry;
use crate::seams::{Claim, Ownership};
use crate::state::BrokerState;

use super::handover::Directory;
use super::wills::Keep;
use super::{Command, Outbox};
use super::{headers, next_or_stop, tern_id, wills};

/// The subject client id claims go on (the claimed id is the payload).
pub(super) fn claims_subject(cluster: &str) -> String {
    format!("{cluster}.own")
}

/// Session ownership over NATS: a node that attaches a client id tells the
/// others, which close a connection they hold with it, and takes the
/// session from the node the directory says holds it ([`handover`]).
pub struct NatsOwnership {
    pub(super) subject: String,
    pub(super) origin: String,
    pub(super) commands: Outbox,
    pub(super) directory: Directory,
    pub(super) wills: async_nats::jetstream::kv::Store,
    /// To [`wills::keep`]: a client id's key, and what to do with its will.
    pub(super) keep: mpsc::Sender<(String, Keep)>,
}

impl NatsOwnership {
    fn keep(&self, client_id: &ByteStr, change: Keep) {
        if self.keep.try_send((wills::key(client_id), change)).is_err() {
            crate::throttled!(
                warn,
                "cluster wills full",
                "cluster: NATS is not keeping up: a change to a client's kept will was dropped"
            );
        }
    }
}

impl Ownership for NatsOwnership {
    fn claim(&self, client_id: &ByteStr, persistent: bool) -> Option<Claim> {
        let id = Bytes::copy_from_slice(client_id.as_bytes());
        let claim = Command::Publish(self.subject.clone(), headers(&self.origin), id);
        self.commands.control(claim);
        let taking = self.directory.clone().take(client_id.clone(), persistent);
        Some(Box::pin(taking))
    }

    fn release(&self, client_id: &ByteStr) {
        tokio::spawn(self.directory.clone().forget(client_id.clone()));
    }

    fn will(&self, client_id: &ByteStr, will: Option<&LastWill>, username: Option<&str>) {
        let change = match will {
            Some(will) => {
                let delay = will.properties.will_delay_interval.unwrap_or(0);
                let message = Message::from_will(will.clone(), client_id.clone(), Instant::now());
                Keep::Put(wills::encode(
                    &self.directory.node,
                    &message,
                    delay,
                    username,
                ))
            }
            None => Keep::Delete,
        };
        self.keep(client_id, change);
    }

    fn mirror(&self, client_id: &ByteStr) -> u64 {
        self.directory.mirror.request(client_id)
    }

    fn mirrored(&self) -> u64 {
        self.directory.mirror.written()
    }

    fn mirrored_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.directory.mirror.changes())
    }

    fn will_gone(&self, client_id: &ByteStr) {
        self.keep(client_id, Keep::ForgetOwn);
    }

    fn will_due(&self, client_id: &ByteStr) -> Pin<Box<dyn Future<Output = bool> + Send>> {
        let (wills, node, client_id) = (
            self.wills.clone(),
            self.directory.node.clone(),
            client_id.clone(),
        );
        Box::pin(async move { wills::take_own(&wills, &node, &client_id).await })
    }
}

/// Closes this node's connections whose client id another node claimed.
pub(super) async fn watch_claims(
    mut claims: async_nats::Subscriber,
    origin: String,
    state: Weak<BrokerState>,
    stop: CancellationToken,
) {
    while let Some(claim) = next_or_stop(&mut claims, &stop).await {
        let own = tern_id(&claim) == Some(origin.as_str());
        let (Some(state), false) = (state.upgrade(), own) else {
            continue;
        };
        if let Ok(client_id) = std::str::from_utf8(&claim.payload) {
            let why = "its client id connected on another node";
            registry::oust(&state, client_id, ReasonCode::SessionTakenOver, why);
        }
    }
}
