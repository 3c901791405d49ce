//! Errors and the reasons a connection ends.
//!
//! Kept apart from the event loop because every other module produces them:
//! the options (an unencodable CONNECT), the connection (unreachable, refused,
//! protocol errors) and the session (operations failed by a close). The
//! messages are meant to be printed as they are by the `tern` tools, so each
//! says what happened in terms a user can act on.

use std::time::Duration;

use tern_codec::ReasonCode;

use crate::options::Message;

/// Why a connection ended. Non-exhaustive, as [`Error`] is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
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
                    None => write!(f, "the broker disconnected: {}", describe(*reason)),
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
///
/// Non-exhaustive: match the variants you act on and end with a `_` arm, so
/// a later version can report a new kind of failure without breaking you.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// TCP connect failed (refused, unreachable, DNS).
    #[error("cannot reach broker at {addr}: {source}")]
    Unreachable {
        addr: String,
        source: std::io::Error,
    },
    /// The TLS handshake failed (an unknown CA, a certificate that does not
    /// name the host, a broker that does not speak TLS there, one that wants
    /// a client certificate); the message says which and what to do.
    #[error(
        "TLS handshake with the broker at {addr} failed: {source}; {}",
        tls_hint(source)
    )]
    Tls {
        addr: String,
        source: std::io::Error,
    },
    /// A plain connection reached a port that speaks TLS.
    #[error(
        "the broker at {addr} speaks TLS on this port: connect with TLS (--cafile FILE), or use its plain port (usually 1883)"
    )]
    TlsPort { addr: String },
    /// The TLS options cannot be used (an unreadable or empty CA file, a
    /// key that does not match its certificate).
    #[error("TLS setup: {0}")]
    TlsSetup(String),
    /// The broker refused CONNECT with this reason code.
    #[error("broker refused the connection: {}", describe(*.0))]
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
    /// [`Client::try_publish`](crate::Client::try_publish) found the
    /// client's request queue full: the event loop has not caught up (the
    /// broker reads slowly, or the calling task has not yielded since it
    /// filled the queue). The message is handed back, to retry or to give to
    /// [`Client::start_publish`](crate::Client::start_publish), which waits.
    #[error(
        "the client's request queue is full: try again once the event loop has caught up, or use start_publish, which waits for room"
    )]
    QueueFull(Box<Message>),
}

/// A reason code in words, with its number: one spelling for every refusal
/// the tools print (CONNACK, PUBACK, SUBACK, DISCONNECT), e.g.
/// `"not authorized (0x87)"`.
///
/// ```
/// use tern_client::{ReasonCode, describe};
/// assert_eq!(
///     describe(ReasonCode::BadUserNameOrPassword),
///     "bad user name or password (0x86)"
/// );
/// ```
pub fn describe(reason: ReasonCode) -> String {
    use ReasonCode::*;
    let text = match reason {
        Success => "success",
        GrantedQoS1 => "granted QoS 1",
        GrantedQoS2 => "granted QoS 2",
        DisconnectWithWillMessage => "disconnect with will message",
        NoMatchingSubscribers => "no matching subscribers",
        NoSubscriptionExisted => "no subscription existed",
        ContinueAuthentication => "continue authentication",
        ReAuthenticate => "re-authenticate",
        UnspecifiedError => "unspecified error",
        MalformedPacket => "malformed packet",
        ProtocolError => "protocol error",
        ImplementationSpecificError => "implementation specific error",
        UnsupportedProtocolVersion => "unsupported protocol version",
        ClientIdentifierNotValid => "client identifier not valid",
        BadUserNameOrPassword => "bad user name or password",
        NotAuthorized => "not authorized",
        ServerUnavailable => "server unavailable",
        ServerBusy => "server busy",
        Banned => "banned",
        ServerShuttingDown => "server shutting down",
        BadAuthenticationMethod => "bad authentication method",
        KeepAliveTimeout => "keep-alive timeout",
        SessionTakenOver => "session taken over",
        TopicFilterInvalid => "topic filter invalid",
        TopicNameInvalid => "topic name invalid",
        PacketIdentifierInUse => "packet identifier in use",
        PacketIdentifierNotFound => "packet identifier not found",
        ReceiveMaximumExceeded => "receive maximum exceeded",
        TopicAliasInvalid => "topic alias invalid",
        PacketTooLarge => "packet too large",
        MessageRateTooHigh => "message rate too high",
        QuotaExceeded => "quota exceeded",
        AdministrativeAction => "administrative action",
        PayloadFormatInvalid => "payload format invalid",
        RetainNotSupported => "retain not supported",
        QoSNotSupported => "QoS not supported",
        UseAnotherServer => "use another server",
        ServerMoved => "server moved",
        SharedSubscriptionsNotSupported => "shared subscriptions not supported",
        ConnectionRateExceeded => "connection rate exceeded",
        MaximumConnectTime => "maximum connect time",
        SubscriptionIdentifiersNotSupported => "subscription identifiers not supported",
        WildcardSubscriptionsNotSupported => "wildcard subscriptions not supported",
    };
    format!("{text} ({:#04x})", reason as u8)
}

/// What to do about a failed TLS handshake, from rustls' error.
fn tls_hint(source: &std::io::Error) -> &'static str {
    let text = source.to_string();
    if text.contains("InvalidContentType") || text.contains("corrupt message") {
        "this port does not speak TLS: connect without --cafile, or use the broker's TLS port (usually 8883)"
    } else if text.contains("reset by peer")
        || text.contains("close_notify")
        || text.contains("UnexpectedEof")
        || text.contains("unexpected end of file")
    {
        "the broker hung up during the handshake: this port may not speak TLS (connect without --cafile, or use the TLS port, usually 8883)"
    } else if text.contains("CertificateRequired") {
        "the broker asks for a client certificate: give --cert FILE and --key FILE"
    } else if text.contains("NotValidForName") {
        "the broker's certificate does not name this host: connect with -h set to a name it carries"
    } else if text.contains("UnknownIssuer") || text.contains("invalid peer certificate") {
        "the broker's certificate is not signed by a CA in --cafile"
    } else {
        "check --cafile, and that the broker's certificate names the -h host"
    }
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
            describe(ReasonCode::ClientIdentifierNotValid),
            "client identifier not valid (0x85)"
        );
        assert_eq!(describe(ReasonCode::ServerBusy), "server busy (0x89)");
        assert_eq!(describe(ReasonCode::GrantedQoS1), "granted QoS 1 (0x01)");
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
