//! DISCONNECT from a client: a normal close, which discards the will unless
//! MQTT 5 reason 0x04 asks for it [MQTT-3.14.4-3], and may update the session
//! expiry.

use tern_codec::{Disconnect, ReasonCode};

use super::Flow;
use crate::client_state::ClientState;
use crate::error::ProtocolViolation;

/// Handles DISCONNECT.
pub fn handle(client: &mut ClientState, disconnect: Disconnect) -> Result<Flow, ProtocolViolation> {
    if let Some(expiry) = disconnect.properties.session_expiry_interval {
        // A session that was to end with the connection cannot be kept by
        // DISCONNECT [MQTT-3.14.2-2].
        if client.session_expiry_secs == 0 && expiry != 0 {
            return Err(ProtocolViolation::SessionExpiryFromZero);
        }
        // Within `max_session_expiry_secs`, as at CONNECT: a client cannot
        // keep its session past the cap by asking again on the way out.
        let expiry = client.state.config.capped_expiry(expiry);
        client.session_expiry_secs = expiry;
        client.session.lock().expiry_secs = expiry;
    }
    Ok(Flow::Disconnect {
        publish_will: disconnect.reason == ReasonCode::DisconnectWithWillMessage,
    })
}
