//! Closing a connection: tells the client why (an MQTT 5 DISCONNECT when the
//! broker ends it), flushes, detaches from the session (which decides about
//! the will) and lingers to read what the client still sends. One place for
//! every way a connection ends: after the main loop, and when a parked
//! connection cannot be run again.

use std::net::SocketAddr;
use std::time::Duration;

use tern_codec::{Disconnect, DisconnectProperties, Packet, ProtocolVersion, ReasonCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf};

use super::{CLOSE_FLUSH, Conn, Transport};
use crate::auth::BRIDGE_CLIENT_PREFIX;
use crate::client_state::{ClientState, progress};
use crate::error::ProtocolViolation;
use crate::message::Message;
use crate::registry::{self, Departure};
use crate::session::{Kick, Ousted};
use crate::state::BrokerState;
use crate::webhook;

/// Why the main loop ended.
pub(super) enum Close {
    /// The client sent DISCONNECT.
    Disconnect {
        publish_will: bool,
    },
    /// The client closed the socket, or it failed.
    Lost(Option<std::io::Error>),
    KeepAliveTimeout,
    Violation(ProtocolViolation),
    /// More PUBLISH packets than `max_publish_rate` allows.
    PublishRate,
    /// Another connection took the session over.
    Kicked(Option<Box<Kick>>),
    /// The broker refused the login after a reload (MQTT 5: this reason).
    Refused(ReasonCode),
    /// The broker stops, or its node drains (`BrokerState::draining`).
    Shutdown,
    /// A message the client published could not be stored in the cluster
    /// (`seams::Stored::Failed`): it was not acknowledged, and the client
    /// is asked to publish it again on another node.
    Unstored,
}

impl Close {
    /// The reason a webhook's `client.disconnected` gives.
    fn reason(&self) -> &'static str {
        match self {
            Close::Disconnect { .. } => "normal",
            Close::Lost(_) => "connection_lost",
            Close::KeepAliveTimeout => "keepalive_timeout",
            Close::Violation(_) => "protocol_error",
            Close::PublishRate => "publish_rate",
            Close::Kicked(_) => "taken_over",
            Close::Refused(_) => "not_authorized",
            Close::Shutdown => "shutdown",
            Close::Unstored => "not_stored",
        }
    }
}

impl From<Ousted> for Close {
    fn from(ousted: Ousted) -> Close {
        match ousted {
            Ousted::TakenOver(kick) => Close::Kicked(kick),
            Ousted::Refused(reason) => Close::Refused(reason),
        }
    }
}

/// Reports the close to the client, flushes, and detaches from the session.
pub(super) async fn finish<S: Transport>(conn: &mut Conn<S>, close: Close) {
    let Conn {
        io, client, peer, ..
    } = conn;
    let (reason, text): (Option<ReasonCode>, &str) = match &close {
        Close::KeepAliveTimeout => (Some(ReasonCode::KeepAliveTimeout), "keep-alive timeout"),
        Close::Violation(v) => (Some(v.reason_code()), ""),
        Close::Kicked(kick) => (
            Some(
                kick.as_ref()
                    .map_or(ReasonCode::SessionTakenOver, |k| k.reason),
            ),
            "session taken over",
        ),
        Close::Refused(reason) => (Some(*reason), refusal(*reason)),
        // A draining node asks its clients to connect to another node.
        Close::Shutdown if !client.state.shutdown.is_cancelled() => (
            Some(ReasonCode::UseAnotherServer),
            "this node is draining: connect to another node of the cluster",
        ),
        Close::Shutdown => (Some(ReasonCode::ServerShuttingDown), "server shutting down"),
        Close::PublishRate => (
            Some(ReasonCode::MessageRateTooHigh),
            "publish rate limit exceeded",
        ),
        Close::Unstored => (
            Some(ReasonCode::UseAnotherServer),
            "this node cannot store messages in the cluster now: connect to another node",
        ),
        Close::Disconnect { .. } | Close::Lost(_) => (None, ""),
    };
    settle_holds(client).await;
    if let (Some(reason), ProtocolVersion::V5) = (reason, client.version) {
        let text = match &close {
            Close::Violation(v) => v.to_string(),
            _ => text.to_owned(),
        };
        let properties = DisconnectProperties {
            reason_string: client.reason_string(text),
            ..Default::default()
        };
        client.send(&Packet::Disconnect(Disconnect { reason, properties }));
    }
    let flush = !matches!(close, Close::Lost(_));
    // The broker ended it while the client may still be sending.
    let linger = !matches!(
        close,
        Close::Lost(_) | Close::Disconnect { .. } | Close::Shutdown
    );
    // The session is let go before the socket closes: a client that saw
    // its connection end finds its session offline (a QoS 0 message
    // published after that is not queued for it).
    depart(client, close, *peer);
    if flush {
        let _ = tokio::time::timeout(CLOSE_FLUSH, async {
            io.writer.write_all(&client.out).await?;
            io.writer.shutdown().await
        })
        .await;
    }
    if linger {
        drain(&mut io.reader, &client.state).await;
    }
}

/// After the broker's DISCONNECT (and its FIN), reads and discards what the
/// client still sends until it closes, for at most `disconnect_linger_ms`.
/// Why: a socket closed with unread input makes the kernel answer with a
/// reset, and a reset makes the client's kernel drop what it had received
/// but not yet read: a client busy sending would lose the DISCONNECT and its
/// reason code. Bounded, and cut short by shutdown, so it cannot be used to
/// hold sockets; the session was already let go (`depart`).
async fn drain<S: Transport>(reader: &mut ReadHalf<S>, state: &BrokerState) {
    let linger = Duration::from_millis(state.config.disconnect_linger_ms);
    if linger.is_zero() {
        return;
    }
    let mut sink = vec![0u8; 4096];
    let _ = tokio::time::timeout(linger, async {
        loop {
            tokio::select! {
                read = reader.read(&mut sink) => {
                    if !matches!(read, Ok(n) if n > 0) {
                        return;
                    }
                }
                _ = state.shutdown.cancelled() => return,
            }
        }
    })
    .await;
}

/// Before the last write: gives the store (and the fabric) a moment
/// (`CLOSE_FLUSH`) to make held responses true, then drops those that are
/// not: an acknowledgement must never promise more than the store holds.
async fn settle_holds(client: &mut ClientState) {
    if client.holds.is_none() {
        return;
    }
    let mut durable = client.state.store.as_ref().map(|s| s.watch());
    let mut applied = client.state.fabric.applied_changes();
    let mut stored = client.state.fabric.stored_changes();
    let mut mirrored = client.state.ownership.mirrored_changes();
    let _ = tokio::time::timeout(CLOSE_FLUSH, async {
        // An unstored message drops the holds (`release`): done too.
        while client.release().is_ok() && client.holds.is_some() {
            tokio::select! {
                () = progress(&mut durable) => {}
                () = progress(&mut applied) => {}
                () = progress(&mut stored) => {}
                () = progress(&mut mirrored) => {}
            }
        }
    })
    .await;
    if client.holds.is_some() {
        client.drop_held();
    }
}

/// Logs why the connection ended, and detaches it from its session (which
/// publishes or schedules the will).
pub(super) fn depart(client: &mut ClientState, close: Close, peer: SocketAddr) {
    let id = client.client_id().clone();
    if !id.starts_with(BRIDGE_CLIENT_PREFIX) {
        let webhooks = &client.state.webhooks;
        webhooks.emit(webhook::Kind::Disconnected, || {
            webhook::Event::Disconnected {
                client_id: id.clone(),
                username: client.username.clone(),
                peer,
                reason: close.reason(),
            }
        });
    }
    match &close {
        Close::Disconnect { .. } | Close::Shutdown => {}
        Close::Lost(e) => tracing::debug!(%peer, client_id = %id, error = ?e, "connection lost"),
        Close::KeepAliveTimeout => {
            tracing::info!(%peer, client_id = %id, "closing connection: keep-alive timeout")
        }
        // Limits (packet size, receive maximum) are counted, and logged at info.
        Close::Violation(v) if client.state.limits.count_violation(v) => {
            crate::throttled!(info, "limit exceeded", %peer, client_id = %id, error = %v, "closing connection: limit exceeded")
        }
        Close::Violation(v) => {
            crate::throttled!(warn, "protocol violation", %peer, client_id = %id, error = %v, "closing connection: protocol violation")
        }
        Close::PublishRate => {
            crate::throttled!(info, "publish rate limit exceeded", %peer, client_id = %id, "closing connection: publish rate limit exceeded")
        }
        Close::Kicked(kick) => {
            let reason = kick.as_ref().map(|k| k.reason);
            tracing::info!(%peer, client_id = %id, ?reason, "closing connection: session taken over")
        }
        Close::Unstored => {
            crate::throttled!(info, "unstored", %peer, client_id = %id, "closing connection: a message it published could not be stored in the cluster; it was not acknowledged")
        }
        // Logged at info, with why, when it was refused.
        Close::Refused(reason) => {
            let why = refusal(*reason);
            tracing::debug!(%peer, client_id = %id, ?reason, "closing connection: {why}")
        }
    }
    // The will is published unless the client ended normally without asking
    // for it [MQTT-3.1.2-8], [MQTT-3.14.4-3]; not at broker shutdown, where
    // no one is left to receive it, nor at a drain or a failed write, where
    // the client is asked to move to another node.
    let publish_will = match close {
        Close::Disconnect { publish_will } => publish_will,
        Close::Shutdown | Close::Unstored => false,
        _ => true,
    };
    let will_delay_secs = client
        .will
        .as_ref()
        .and_then(|w| w.properties.will_delay_interval)
        .unwrap_or(0);
    // A will the client asked to drop is dropped cluster-wide too; at a
    // shutdown or drain it stays kept, for another node to publish if the
    // client does not connect again.
    if client.will.is_some() && matches!(close, Close::Disconnect { .. }) && !publish_will {
        client.state.ownership.will_gone(&id);
    }
    let will = client
        .will
        .take()
        .filter(|_| publish_will)
        .map(|w| Message::from_will(*w, id.clone(), std::time::Instant::now()));
    let departure = Departure {
        connection_id: client.connection_id,
        will,
        will_delay_secs,
        username: client.username.clone(),
    };
    registry::detach(&client.state, &client.session, departure);
    // Before `clients_connected`: once that shows the connection gone, its
    // slot is free.
    client.state.limits.release_connection(client.listener);
    client
        .state
        .metrics
        .clients_connected
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    // Dropping the kick's `done` (inside `close`) tells a taking-over
    // connection that this one has detached.
    drop(close);
}

/// Why the broker closed a connection it refused (see `Session::refuse`).
fn refusal(reason: ReasonCode) -> &'static str {
    match reason {
        ReasonCode::SessionTakenOver => "client id connected on another node",
        _ => "login no longer valid",
    }
}
