//! Protocol violations the broker detects beyond what the decoder does, and
//! the one mapping from any reason to close a connection to its reason code.
//!
//! Each variant names the spec rule it enforces; the connection task turns it
//! into a DISCONNECT with [`ProtocolViolation::reason_code`] for MQTT 5
//! clients (3.1.1 has no server DISCONNECT: the socket is just closed).

use tern_codec::{DecodeError, ReasonCode};

/// A client broke a rule of the protocol; its connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolViolation {
    #[error("malformed packet: {0}")]
    Decode(#[from] DecodeError),
    /// [MQTT-3.1.0-2] A second CONNECT on one connection.
    #[error("second CONNECT on the same connection")]
    SecondConnect,
    /// A packet only a server sends (CONNACK, SUBACK, ...) or AUTH without
    /// enhanced authentication.
    #[error("unexpected {0} from a client")]
    UnexpectedPacket(&'static str),
    /// [MQTT-3.3.2-2] Wildcards or an empty name without a topic alias.
    #[error("invalid topic name")]
    TopicNameInvalid,
    /// [MQTT-3.3.2-9], [MQTT-3.3.2-10] Topic alias 0 or above our maximum.
    #[error("topic alias out of range")]
    TopicAliasInvalid,
    /// [MQTT-3.3.4-?] An empty topic with an alias that was never set.
    #[error("unknown topic alias")]
    TopicAliasUnknown,
    /// [MQTT-3.3.1-4] PUBLISH above the Maximum QoS we announced.
    #[error("QoS not supported")]
    QoSNotSupported,
    /// [MQTT-3.3.1-?] Retained PUBLISH when Retain Available is false.
    #[error("retain not supported")]
    RetainNotSupported,
    /// [MQTT-3.3.4-9] More unacknowledged QoS 2 PUBLISH than our Receive Maximum.
    #[error("receive maximum exceeded")]
    ReceiveMaximumExceeded,
    /// [MQTT-3.14.2-2] DISCONNECT sets a session expiry after CONNECT set 0.
    #[error("session expiry changed from 0 at DISCONNECT")]
    SessionExpiryFromZero,
    /// [MQTT-3.8.3-4] No Local on a shared subscription.
    #[error("no local on a shared subscription")]
    SharedNoLocal,
}

impl ProtocolViolation {
    /// The MQTT 5 reason code for the DISCONNECT that reports this.
    pub fn reason_code(self) -> ReasonCode {
        use ProtocolViolation::*;
        match self {
            Decode(e) => e.reason_code(),
            TopicNameInvalid => ReasonCode::TopicNameInvalid,
            TopicAliasInvalid => ReasonCode::TopicAliasInvalid,
            QoSNotSupported => ReasonCode::QoSNotSupported,
            RetainNotSupported => ReasonCode::RetainNotSupported,
            ReceiveMaximumExceeded => ReasonCode::ReceiveMaximumExceeded,
            SecondConnect
            | UnexpectedPacket(_)
            | TopicAliasUnknown
            | SessionExpiryFromZero
            | SharedNoLocal => ReasonCode::ProtocolError,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_codes() {
        use ProtocolViolation::*;
        let table = [
            (Decode(DecodeError::MalformedVarInt), 0x81),
            (
                Decode(DecodeError::PacketTooLarge { size: 2, max: 1 }),
                0x95,
            ),
            (SecondConnect, 0x82),
            (UnexpectedPacket("CONNACK"), 0x82),
            (TopicNameInvalid, 0x90),
            (TopicAliasInvalid, 0x94),
            (TopicAliasUnknown, 0x82),
            (QoSNotSupported, 0x9B),
            (RetainNotSupported, 0x9A),
            (ReceiveMaximumExceeded, 0x93),
            (SessionExpiryFromZero, 0x82),
            (SharedNoLocal, 0x82),
        ];
        for (violation, code) in table {
            assert_eq!(violation.reason_code() as u8, code, "{violation:?}");
        }
    }
}
