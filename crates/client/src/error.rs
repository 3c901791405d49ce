//! Errors and the reasons a connection ends.
//!
//! Kept apart from the event loop because every other module produces them:
//! the options (an unencodable CONNECT), the connection (unreachable, refused,
//! protocol errors) and the session (operations failed by a close). The
//! messages are meant to be printed as they are by the `tern` tools, so each
//! says what happened in terms a user can act on.

use std::time::Duration;

use tern_codec::ReasonCode;

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The broker sent DISCONNECT (MQTT 5) with this reason and reason string.
    Server {
        reason: ReasonCode,
        reason_string: Option<String>,
    },
    /// The socket closed or failed.
    ConnectionLost(String),
    /// The broker did not answer PINGREQ in time.
    KeepAliveTimeout,
    /// We called [`Client::disconnect`](crate::Client::disconnect).
    Requested,
}

/// In words, for people: e.g. "the broker disconnected: session taken over (0x8e)".
impl std::fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DisconnectReason::Server {
                reason,
                reason_string,
            } => {
                let code = *reason as u8;
                match reason_string {
                    Some(text) => write!(f, "the broker disconnected: {text} ({code:#04x})"),
                    None => write!(f, "the broker disconnected: {reason:?} ({code:#04x})"),
                }
            }
            DisconnectReason::ConnectionLost(text) => f.write_str(text),
            DisconnectReason::KeepAliveTimeout => {
                f.write_str("the broker stopped answering (keep-alive timeout)")
            }
            DisconnectReason::Requested => f.write_str("disconnected"),
        }
    }
}

/// Client errors. Each message says what went wrong in terms a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// TCP connect failed (refused, unreachable, DNS).
    #[error("cannot reach broker at {addr}: {source}")]
    Unreachable {
        addr: String,
        source: std::io::Error,
    },
    /// The TLS handshake failed (an unknown CA, a certificate that does not
    /// name the host, a broker that does not speak TLS there).
    #[error("TLS handshake with the broker at {addr} failed: {source}")]
    Tls {
        addr: String,
        source: std::io::Error,
    },
    /// The TLS options cannot be used (an unreadable or empty CA file, a
    /// key that does not match its certificate).
    #[error("TLS setup: {0}")]
    TlsSetup(String),
    /// The broker refused CONNECT with this reason code.
    #[error("broker refused the connection: {}", describe_refusal(*.0))]
    Refused(ReasonCode),
    /// No CONNACK (or other awaited answer) in time.
    #[error("timed out after {0:?} waiting for the broker")]
    Timeout(Duration),
    /// The broker broke the protocol (e.g. sent something undecodable).
    #[error("protocol error from the broker: {0}")]
    Protocol(String),
    /// The connection is closed; the operation could not complete.
    #[error("connection closed: {0}")]
    Closed(DisconnectReason),
    /// The request cannot be encoded (e.g. a topic longer than 65535 bytes).
    #[error("invalid request: {0}")]
    Invalid(String),
}

/// A human explanation of a CONNACK refusal code, e.g.
/// `"bad user name or password (0x86)"`.
///
/// ```
/// use tern_client::{ReasonCode, describe_refusal};
/// assert_eq!(
///     describe_refusal(ReasonCode::BadUserNameOrPassword),
///     "bad user name or password (0x86)"
/// );
/// ```
pub fn describe_refusal(reason: ReasonCode) -> String {
    use ReasonCode::*;
    let text = match reason {
        Success => "connection accepted",
        UnspecifiedError => "unspecified error",
        MalformedPacket => "the broker could not parse the CONNECT packet",
        ProtocolError => "protocol error in the CONNECT packet",
        ImplementationSpecificError => {
            "the broker rejected the connection (implementation specific)"
        }
        UnsupportedProtocolVersion => "unsupported protocol version",
        ClientIdentifierNotValid => "client identifier not valid",
        BadUserNameOrPassword => "bad user name or password",
        NotAuthorized => "not authorized",
        ServerUnavailable => "server unavailable",
        ServerBusy => "server busy",
        Banned => "banned",
        ServerShuttingDown => "server shutting down",
        BadAuthenticationMethod => "bad authentication method",
        TopicNameInvalid => "will topic name invalid",
        PacketTooLarge => "packet too large",
        QuotaExceeded => "quota exceeded",
        PayloadFormatInvalid => "will payload format invalid",
        RetainNotSupported => "retain not supported",
        QoSNotSupported => "QoS not supported",
        UseAnotherServer => "use another server",
        ServerMoved => "server moved",
        ConnectionRateExceeded => "connection rate exceeded",
        other => return format!("unexpected reason {other:?} ({:#04x})", other as u8),
    };
    format!("{text} ({:#04x})", reason as u8)
}

/// The error for an operation on a connection that ended for `reason`.
pub(crate) fn closed(reason: &DisconnectReason) -> Error {
    Error::Closed(reason.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_short_sentences_with_the_code() {
        assert_eq!(
            describe_refusal(ReasonCode::ClientIdentifierNotValid),
            "client identifier not valid (0x85)"
        );
        assert_eq!(
            describe_refusal(ReasonCode::ServerBusy),
            "server busy (0x89)"
        );
        assert!(describe_refusal(ReasonCode::GrantedQoS1).contains("(0x01)"));
    }

    #[test]
    fn refused_error_message_uses_the_description() {
        let e = Error::Refused(ReasonCode::NotAuthorized);
        assert_eq!(
            e.to_string(),
            "broker refused the connection: not authorized (0x87)"
        );
    }
}
