//! Bridges: this broker as a client of other brokers, forwarding what each
//! `[[bridges]]` section's topic rules name, in Mosquitto's terms.
//!
//! One task per bridge runs [`supervise`]: it connects to the remote broker
//! (the first of its addresses that answers), then to this broker through
//! an in-process pipe ([`connect::local`]), and hands both connections to
//! [`link::run`], which forwards until either ends. Then it publishes the
//! link's state, waits (a backoff with jitter, [`Backoff`]) and starts over.
//!
//! Nothing is lost while the remote broker is away: the bridge's session
//! here (client id `$bridge/NAME`) is persistent, so what its rules match
//! is queued for it (in the data file, with persistence) while the link is
//! down and delivered when it is back, also after a restart; it is bounded
//! by the bridge's own `max_queued_messages` (`BrokerState::queue_limits_of`),
//! and what overflows is counted in `$SYS/broker/publish/messages/dropped`. Each side's
//! message is acknowledged only once the other side has acknowledged the
//! forwarded copy, so a broker killed at any point loses nothing it
//! acknowledged (QoS 1 may then arrive twice, as QoS 1 allows).

mod connect;
mod link;

use std::sync::Arc;
use std::time::Duration;

use crate::config::BridgeConfig;
use crate::connection::park::Parker;
use crate::message::Message;
use crate::router;
use crate::state::BrokerState;

/// Starts one task per configured bridge.
pub fn spawn(state: &Arc<BrokerState>, parker: &Arc<Parker>) {
    for bridge in &state.config.bridges {
        let bridge = Arc::new(bridge.clone());
        state
            .tasks
            .spawn(supervise(bridge, state.clone(), parker.clone()));
    }
}

/// Runs one bridge until the broker shuts down.
async fn supervise(bridge: Arc<BridgeConfig>, state: Arc<BrokerState>, parker: Arc<Parker>) {
    let name = bridge.name.as_str();
    let mut backoff = Backoff::new(&bridge);
    let mut remote_refuses_flag = false;
    publish_state(&state, &bridge, false);
    loop {
        let connecting = connect::remote(&bridge, &mut remote_refuses_flag);
        let remote = tokio::select! {
            remote = connecting => remote,
            _ = state.shutdown.cancelled() => return,
        };
        let ended = match remote {
            Ok(remote) => {
                backoff.reset();
                match connect::local(&bridge, &state, &parker).await {
                    Ok(local) => {
                        publish_state(&state, &bridge, true);
                        let ended = link::run(&bridge, local, remote, &state.shutdown).await;
                        publish_state(&state, &bridge, false);
                        ended
                    }
                    Err(e) => {
                        remote
                            .0
                            .disconnect(tern_client::ReasonCode::Success)
                            .await
                            .ok();
                        format!("cannot open its session on this broker: {e}")
                    }
                }
            }
            Err(e) => e,
        };
        if state.shutdown.is_cancelled() {
            return;
        }
        let wait = backoff.next();
        tracing::warn!(bridge = name, retry_in = ?wait, "bridge down: {ended}");
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = state.shutdown.cancelled() => return,
        }
    }
}

/// `$SYS/broker/connection/NAME/state`, retained: "1" while the link is up,
/// "0" otherwise (Mosquitto's topic and values).
fn publish_state(state: &BrokerState, bridge: &BridgeConfig, up: bool) {
    if bridge.notifications {
        let topic = format!("$SYS/broker/connection/{}/state", bridge.name);
        let value = if up { "1" } else { "0" };
        router::publish(state, Message::broker_retained(topic, value.into()), None);
    }
}

/// Reconnect delays: "decorrelated jitter", each a random time between the
/// minimum and three times the last, capped; so bridges that lost the same
/// remote do not all come back in the same instant.
struct Backoff {
    min: Duration,
    max: Duration,
    last: Duration,
}

impl Backoff {
    fn new(bridge: &BridgeConfig) -> Backoff {
        let min = Duration::from_millis(bridge.reconnect_min_ms);
        Backoff {
            min,
            max: Duration::from_millis(bridge.reconnect_max_ms),
            last: min,
        }
    }

    fn next(&mut self) -> Duration {
        let high = (self.last * 3).min(self.max).max(self.min);
        let span = (high - self.min).as_millis() as u64;
        let jitter = if span == 0 { 0 } else { random() % (span + 1) };
        self.last = self.min + Duration::from_millis(jitter);
        self.last
    }

    fn reset(&mut self) {
        self.last = self.min;
    }
}

/// A random number from the system's generator (ring's, already here for
/// the password hashes); 0 if it fails, which only removes the jitter.
fn random() -> u64 {
    use ring::rand::SecureRandom;
    let mut bytes = [0; 8];
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    u64::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TopicRule;

    #[test]
    fn backoff_grows_with_jitter_within_its_bounds() {
        let rule = TopicRule {
            pattern: "#".into(),
            direction: Default::default(),
            qos: 0,
            local_prefix: String::new(),
            remote_prefix: String::new(),
        };
        let mut bridge = BridgeConfig::new("b", "h:1", vec![rule]);
        bridge.reconnect_min_ms = 100;
        bridge.reconnect_max_ms = 2000;
        let mut backoff = Backoff::new(&bridge);
        let waits: Vec<Duration> = (0..200).map(|_| backoff.next()).collect();
        let ms = |d: &Duration| d.as_millis() as u64;
        assert!(waits.iter().all(|w| (100..=2000).contains(&ms(w))));
        // Random: not all the same, and some reach well above the minimum.
        assert!(waits.iter().any(|w| ms(w) > 1000), "{waits:?}");
        assert!(waits.windows(2).any(|w| w[0] != w[1]));
        backoff.reset();
        assert!(ms(&backoff.next()) <= 300);
    }
}
