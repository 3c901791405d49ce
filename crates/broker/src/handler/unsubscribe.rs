//! UNSUBSCRIBE: remove filters from the session and the subscription tree.

use tern_codec::{AckProperties, Packet, ReasonCode, UnsubAck, Unsubscribe};

use super::Flow;
use crate::client_state::ClientState;
use crate::error::ProtocolViolation;
use crate::router;

/// Handles UNSUBSCRIBE; each filter gets Success or No Subscription Existed.
pub fn handle(
    client: &mut ClientState,
    unsubscribe: Unsubscribe,
) -> Result<Flow, ProtocolViolation> {
    let mut reasons = Vec::with_capacity(unsubscribe.filters.len());
    for filter in &unsubscribe.filters {
        let existed = client
            .session
            .lock()
            .subscriptions
            .remove(filter.as_str())
            .is_some();
        if existed {
            router::unsubscribe(&client.state, &client.session, [filter.clone()]);
        }
        reasons.push(if existed {
            ReasonCode::Success
        } else {
            ReasonCode::NoSubscriptionExisted
        });
    }
    super::keep_subscriptions(client);
    client.send(&Packet::UnsubAck(UnsubAck {
        packet_id: unsubscribe.packet_id,
        reasons,
        properties: AckProperties::default(),
    }));
    Ok(Flow::Continue)
}
