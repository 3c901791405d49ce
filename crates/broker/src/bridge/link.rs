//! One bridge link at work: messages from this broker's side go to the
//! remote broker and back, each acknowledged on the side it came from only
//! once the other side has acknowledged its copy.

use std::future::Future;
use std::pin::Pin;

use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use tern_client::{Client, Event, Message, PublishHandle, PublishProperties, Received};
use tern_codec::topic::filter_matches;
use tokio_util::sync::CancellationToken;

use super::connect::Side;
use crate::config::BridgeConfig;

/// Messages forwarded one way and not yet acknowledged by the other side;
/// beyond this the bridge stops reading the side they come from.
const MAX_PENDING: usize = 1000;

/// A forwarded message: waits for its copy's answer on the other side, and
/// yields it with the original, to be acknowledged on its own side. (One no
/// rule forwards any more waits for nothing.)
type Forward = Pin<Box<dyn Future<Output = (Result<(), String>, Received)> + Send>>;

/// One direction: where messages come from and where their copies go.
struct Way {
    from: Client,
    to: Client,
    /// Forwarding from this broker (`out`), or into it (`in`).
    outward: bool,
    pending: FuturesOrdered<Forward>,
}

/// Forwards until a side's connection ends or the broker shuts down; then
/// closes both. Returns why it ended, for the log.
pub async fn run(
    bridge: &BridgeConfig,
    local: Side,
    remote: Side,
    shutdown: &CancellationToken,
) -> String {
    let (local, mut local_events) = local;
    let (remote, mut remote_events) = remote;
    let mut out = Way::new(local.clone(), remote.clone(), true);
    let mut inward = Way::new(remote.clone(), local.clone(), false);
    let ended = loop {
        tokio::select! {
            event = local_events.next(), if out.pending.len() < MAX_PENDING => match event {
                Some(Event::Message(m)) => out.forward(bridge, m).await,
                Some(Event::Disconnected { reason }) => break format!("its session on this broker ended: {reason}"),
                Some(_) => {}
                None => break "its session on this broker ended".to_owned(),
            },
            event = remote_events.next(), if inward.pending.len() < MAX_PENDING => match event {
                Some(Event::Message(m)) => inward.forward(bridge, m).await,
                Some(Event::Disconnected { reason }) => break format!("the remote broker: {reason}"),
                Some(_) => {}
                None => break "the remote broker closed the connection".to_owned(),
            },
            Some(done) = out.pending.next() => if let Err(e) = out.settle(done).await { break e },
            Some(done) = inward.pending.next() => if let Err(e) = inward.settle(done).await { break e },
            _ = shutdown.cancelled() => break "shutting down".to_owned(),
        }
    };
    // Unacknowledged messages stay with the side that sent them, which
    // sends them again next time.
    let bye = tern_client::ReasonCode::Success;
    let _ = tokio::join!(local.disconnect(bye), remote.disconnect(bye));
    ended
}

impl Way {
    fn new(from: Client, to: Client, outward: bool) -> Way {
        Way {
            from,
            to,
            outward,
            pending: FuturesOrdered::new(),
        }
    }

    /// Publishes `m`'s copy on the other side under the first rule that
    /// matches it, and queues the wait for its acknowledgement.
    async fn forward(&mut self, bridge: &BridgeConfig, m: Received) {
        let topic = bridge
            .topics
            .iter()
            .filter(|r| match self.outward {
                true => r.direction.outward(),
                false => r.direction.inward(),
            })
            .filter(|r| filter_matches(&r.filter(self.outward), &m.topic))
            .find_map(|r| r.translate(&m.topic, self.outward));
        let Some(topic) = topic else {
            // A subscription of a rule since removed from the configuration.
            tracing::debug!(bridge = %bridge.name, topic = %m.topic, "no rule forwards this topic now; dropped");
            self.pending.push_back(Box::pin(async move { (Ok(()), m) }));
            return;
        };
        let properties = PublishProperties {
            topic_alias: None,
            subscription_identifiers: Vec::new(),
            ..m.properties.clone()
        };
        let copy = Message::new(topic, m.payload.clone(), m.qos)
            .retain(m.retain)
            .properties(properties);
        let handle = self.to.start_publish(copy).await;
        self.pending.push_back(Box::pin(settled(handle, m)));
    }

    /// The other side answered for a copy: the original is acknowledged on
    /// its side. `Err`: the other side's connection ended first.
    async fn settle(&mut self, (result, m): (Result<(), String>, Received)) -> Result<(), String> {
        result?;
        self.from
            .ack(&m)
            .await
            .map_err(|e| format!("cannot acknowledge a forwarded message: {e}"))
    }
}

/// Waits for a copy's acknowledgement. A refusal by the other broker (MQTT
/// 5 reason code, e.g. not authorized) is logged and counts as an answer:
/// sending it again would be refused again.
async fn settled(
    handle: Result<PublishHandle, tern_client::Error>,
    m: Received,
) -> (Result<(), String>, Received) {
    let answer = match handle {
        Ok(handle) => handle.await,
        Err(e) => Err(e),
    };
    let result = match answer {
        Ok(reason) if reason.is_error() => {
            crate::throttled!(warn, "bridge publish refused", topic = %m.topic, ?reason, "a bridged message was refused by the broker it was forwarded to");
            Ok(())
        }
        Ok(_) => Ok(()),
        Err(e) => Err(format!("a forwarded message was not acknowledged: {e}")),
    };
    (result, m)
}
