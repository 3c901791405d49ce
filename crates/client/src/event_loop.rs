//! The event loop: one task per [`Client::connect`](crate::Client::connect)
//! that owns the socket and the session, from the first CONNACK until the
//! connection is closed for good.
//!
//! While connected, one `select!` waits on everything at once:
//! - the socket becoming writable while the output buffer holds bytes (one
//!   write carries every packet encoded since the last one);
//! - room in the event channel, for events parked while it was full;
//! - bytes from the broker, read only while there is room for the events
//!   they produce (backpressure instead of unbounded memory);
//! - commands from the [`Client`](crate::Client) handles, taken only while
//!   the output buffer is small (backpressure on a fast publisher);
//! - the keep-alive timer.
//!
//! When the connection is lost it reports `Disconnected`, then either ends
//! (failing what is still pending with [`Error::Closed`]) or, with reconnect
//! on, retries with backoff while still taking commands, and resumes the
//! session on success. It stops for good on
//! [`Client::disconnect`](crate::Client::disconnect), or once every handle
//! (each `Client` clone and waiting `PublishHandle` holds a command sender)
//! and the [`Events`](crate::Events) stream are dropped (then it closes the
//! socket without DISCONNECT, as if the connection were lost: the broker
//! publishes the will).

use std::future::Future;
use std::num::NonZeroU16;
use std::sync::Arc;
use std::time::Duration;

use bytes::Buf;
use tern_codec::topic::{is_valid_topic_filter, is_valid_topic_name};
use tern_codec::{
    ConnAck, Disconnect, DisconnectProperties, Packet, ProtocolVersion, PubAck, Publish, QoS,
    ReasonCode, Subscribe, SubscribeFilter, Unsubscribe, UnsubscribeProperties,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::client::{Command, Shared};
use crate::connection::{self, BrokerLimits, Connection, LOG_TARGET, Violation};
use crate::error::{DisconnectReason, Error, closed};
use crate::event::{Event, EventQueue};
use crate::options::{ConnectOptions, Message, Reconnect};
use crate::session::{Reply, RequestReply, Session, answer};

/// Commands are not taken while this many bytes wait to be written.
const OUT_HIGH_WATER: usize = 64 * 1024;
/// How long a requested DISCONNECT may take to be written.
const CLOSE_FLUSH: Duration = Duration::from_secs(5);
/// How long the DISCONNECT reporting a protocol error may take.
const VIOLATION_FLUSH: Duration = Duration::from_secs(1);
/// Shortest pause between reconnect attempts, whatever the policy says.
const MIN_RETRY: Duration = Duration::from_millis(10);

/// Why serving one connection ended.
enum End {
    Lost(DisconnectReason),
    /// `Client::disconnect`: DISCONNECT written, answer the caller.
    Requested(Reply<()>),
    /// Every handle and the event stream were dropped.
    Dropped,
}

/// Why reconnecting stopped.
enum Stop {
    Requested(Reply<()>),
    Dropped,
}

/// What a received packet ends the connection with.
enum Close {
    Violation(Violation),
    Server(Disconnect),
}

pub(crate) struct EventLoop {
    options: Arc<ConnectOptions>,
    /// The id to reconnect with (the broker may have assigned one).
    client_id: String,
    session: Session,
    limits: BrokerLimits,
    commands: mpsc::Receiver<Command>,
    /// False once every `Client` handle is dropped.
    commands_open: bool,
    events: EventQueue,
    shared: Arc<Shared>,
}

fn lost(message: impl Into<String>) -> DisconnectReason {
    DisconnectReason::ConnectionLost(message.into())
}

/// Waits for room in the event channel; false if the application dropped
/// [`Events`](crate::Events). The reserved slot is released again at once
/// (the loop is the only sender, so it stays free for `try_send`).
async fn channel_room(tx: &mpsc::Sender<Event>) -> bool {
    tx.reserve().await.is_ok()
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

impl EventLoop {
    pub(crate) fn new(
        options: Arc<ConnectOptions>,
        commands: mpsc::Receiver<Command>,
        events: EventQueue,
        shared: Arc<Shared>,
    ) -> Self {
        EventLoop {
            client_id: options.client_id.clone(),
            options,
            session: Session::new(),
            limits: BrokerLimits::from_connack(&ConnAck {
                session_present: false,
                reason: ReasonCode::Success,
                properties: Default::default(),
            }),
            commands,
            commands_open: true,
            events,
            shared,
        }
    }

    /// A connection was accepted: takes the broker's limits and resumes the
    /// session (re-sends, renews subscriptions, releases queued publishes).
    pub(crate) fn on_connected(&mut self, conn: &mut Connection, connack: &ConnAck) {
        self.limits = BrokerLimits::from_connack(connack);
        self.session.receive_maximum = self.limits.receive_maximum;
        if let Some(id) = &connack.properties.assigned_client_identifier {
            self.client_id = id.to_string();
        }
        self.shared.set_connack(connack.clone());
        for packet in self.session.resume(connack.session_present) {
            conn.send_control(&packet);
        }
        self.pump(conn);
    }

    /// Runs until the connection is closed for good.
    pub(crate) async fn run(mut self, mut conn: Connection) {
        loop {
            let end = self.serve(&mut conn).await;
            drop(conn);
            let reason = match end {
                End::Lost(reason) => reason,
                End::Requested(reply) => {
                    return self.finish(DisconnectReason::Requested, Some(reply)).await;
                }
                End::Dropped => {
                    tracing::debug!(target: LOG_TARGET, "client and events dropped: closing");
                    return;
                }
            };
            tracing::debug!(target: LOG_TARGET, ?reason, "connection lost");
            self.session.forget_unacked();
            self.events.push(Event::Disconnected {
                reason: reason.clone(),
            });
            let Some(policy) = self.options.reconnect else {
                return self.finish(reason, None).await;
            };
            conn = match self.reconnect(policy).await {
                Ok(conn) => conn,
                Err(Stop::Requested(reply)) => {
                    return self.finish(DisconnectReason::Requested, Some(reply)).await;
                }
                Err(Stop::Dropped) => return,
            };
        }
    }

    /// Nobody is left to use the connection.
    fn abandoned(&self) -> bool {
        !self.commands_open && (self.events.closed || self.events.tx.is_closed())
    }

    /// Serves one connection until it ends.
    async fn serve(&mut self, conn: &mut Connection) -> End {
        loop {
            match self.process_input(conn) {
                Ok(()) => {}
                Err(Close::Server(d)) => {
                    return End::Lost(DisconnectReason::Server {
                        reason: d.reason,
                        reason_string: d.properties.reason_string.map(|s| s.to_string()),
                    });
                }
                Err(Close::Violation(v)) => return violation(conn, v).await,
            }
            if self.abandoned() {
                return End::Dropped;
            }
            let reading = self.events.has_room();
            if !reading {
                conn.hold_ping_deadline(Instant::now());
            }
            let timer = conn.keep_alive_timer();
            let taking_commands = self.commands_open && conn.out.len() < OUT_HIGH_WATER;
            conn.reserve_read();
            tokio::select! {
                biased;
                written = conn.writer.write(&conn.out), if !conn.out.is_empty() => match written {
                    Ok(0) => return End::Lost(lost("the broker closed the connection")),
                    Ok(n) => {
                        conn.out.advance(n);
                        conn.last_sent = Instant::now();
                    }
                    Err(e) => return End::Lost(lost(format!("write failed: {e}"))),
                },
                open = channel_room(&self.events.tx), if !self.events.pending.is_empty() => {
                    self.events.on_room(open);
                }
                read = conn.reader.read_buf(&mut conn.rbuf), if reading => match read {
                    Ok(0) => return End::Lost(lost("the broker closed the connection")),
                    Ok(_) => {}
                    Err(e) => return End::Lost(lost(format!("read failed: {e}"))),
                },
                command = self.commands.recv(), if taking_commands => match command {
                    Some(command) => {
                        let disconnect = self.handle_command(command, Some(conn));
                        if let Some(end) = close_requested(conn, disconnect).await {
                            return end;
                        }
                    }
                    None => self.commands_open = false,
                },
                () = sleep_until(timer) => {
                    if let Err(reason) = conn.on_keep_alive(Instant::now()) {
                        return End::Lost(reason);
                    }
                }
                () = self.events.tx.closed(), if !self.commands_open => return End::Dropped,
            }
        }
    }

    /// Handles every whole packet in the read buffer, as long as there is
    /// room for the events they produce.
    fn process_input(&mut self, conn: &mut Connection) -> Result<(), Close> {
        while self.events.has_room() {
            let packet = conn.decode_next().map_err(|e| Close::Violation(e.into()))?;
            let Some(packet) = packet else {
                break;
            };
            self.handle_packet(conn, packet)?;
        }
        Ok(())
    }

    fn handle_packet(&mut self, conn: &mut Connection, packet: Packet) -> Result<(), Close> {
        match packet {
            Packet::Publish(publish) => self.on_publish(conn, publish)?,
            Packet::PubAck(ack) => {
                self.session.on_puback(&ack);
                self.pump(conn);
            }
            Packet::PubRec(ack) => {
                if let Some(release) = self.session.on_pubrec(&ack) {
                    conn.send_control(&release);
                }
                self.pump(conn);
            }
            Packet::PubRel(ack) => {
                let complete = self.session.on_pubrel(&ack);
                conn.send_control(&complete);
            }
            Packet::PubComp(ack) => {
                self.session.on_pubcomp(&ack);
                self.pump(conn);
            }
            Packet::SubAck(ack) => self.session.on_suback(ack),
            Packet::UnsubAck(ack) => self.session.on_unsuback(ack),
            Packet::PingResp => {}
            Packet::Disconnect(disconnect) => return Err(Close::Server(disconnect)),
            other => {
                return Err(Close::Violation(Violation::new(
                    ReasonCode::ProtocolError,
                    format!("unexpected {} from the broker", other.name()),
                )));
            }
        }
        Ok(())
    }

    /// An incoming PUBLISH: resolve its alias, acknowledge, deliver once.
    fn on_publish(&mut self, conn: &mut Connection, mut publish: Publish) -> Result<(), Close> {
        conn.resolve_alias(&mut publish).map_err(Close::Violation)?;
        match (publish.qos, publish.packet_id) {
            (QoS::AtMostOnce, _) => self.events.push(Event::Message(publish)),
            (QoS::AtLeastOnce, Some(id)) => {
                self.events.push(Event::Message(publish));
                self.acknowledge(conn, id, QoS::AtLeastOnce);
            }
            (QoS::ExactlyOnce, Some(id)) => {
                if self.session.on_incoming_qos2(id) {
                    let maximum = self.options.incoming_receive_maximum();
                    if self.session.incoming_unreleased() > usize::from(maximum) {
                        return Err(Close::Violation(Violation::new(
                            ReasonCode::ReceiveMaximumExceeded,
                            format!("more than {maximum} unreleased QoS 2 messages"),
                        )));
                    }
                    self.events.push(Event::Message(publish));
                    self.acknowledge(conn, id, QoS::ExactlyOnce);
                } else if !self.session.awaits_ack(id) {
                    // A re-send of one already received: PUBREC again.
                    conn.send_control(&Packet::PubRec(PubAck::new(id)));
                }
            }
            (_, None) => {
                return Err(Close::Violation(Violation::new(
                    ReasonCode::ProtocolError,
                    "QoS 1/2 PUBLISH without packet identifier",
                )));
            }
        }
        Ok(())
    }

    /// Acknowledges a message just delivered, or with manual acknowledgements
    /// leaves that to [`Client::ack`](crate::Client::ack).
    fn acknowledge(&mut self, conn: &mut Connection, id: NonZeroU16, qos: QoS) {
        self.session.await_ack(id, qos);
        if !self.options.manual_acks
            && let Some(ack) = self.session.take_ack(id)
        {
            conn.send_control(&ack);
        }
    }

    /// Encodes every queued publish the session releases now.
    fn pump(&mut self, conn: &mut Connection) {
        while let Some((packet, reply)) = self.session.next_publish() {
            match conn.send(&packet) {
                // `reply` is only returned for QoS 0, which is done once encoded.
                Ok(()) => answer(reply, Ok(ReasonCode::Success)),
                Err(e) => {
                    let error = Error::Invalid(format!("cannot encode PUBLISH: {e}"));
                    match (&packet, reply) {
                        (_, Some(reply)) => answer(Some(reply), Err(error)),
                        (
                            Packet::Publish(Publish {
                                packet_id: Some(id),
                                ..
                            }),
                            None,
                        ) => self.session.abort_publish(*id, error),
                        _ => {}
                    }
                }
            }
        }
    }

    /// Carries out a command; `conn` is `None` while reconnecting, when
    /// requests are queued for the next connection. Returns the DISCONNECT
    /// request for the caller to act on.
    fn handle_command(
        &mut self,
        command: Command,
        conn: Option<&mut Connection>,
    ) -> Option<(ReasonCode, Reply<()>)> {
        match command {
            Command::Publish { message, reply } => match self.prepare_publish(message) {
                Ok(publish) => {
                    self.session.enqueue(publish, reply);
                    if let Some(conn) = conn {
                        self.pump(conn);
                    }
                }
                Err(e) => answer(Some(reply), Err(e)),
            },
            Command::Subscribe {
                filters,
                properties,
                reply,
            } => {
                let packet = self.subscribe_packet(filters, properties);
                self.start_request(packet, conn, RequestReply::Subscribe(reply));
            }
            Command::Unsubscribe { filters, reply } => {
                let packet = self.unsubscribe_packet(filters);
                self.start_request(packet, conn, RequestReply::Unsubscribe(reply));
            }
            Command::Disconnect { reason, reply } => return Some((reason, reply)),
            Command::Ack { packet_id } => {
                if let (Some(conn), Some(ack)) = (conn, self.session.take_ack(packet_id)) {
                    conn.send_control(&ack);
                }
            }
        }
        None
    }

    /// Sends a SUBSCRIBE/UNSUBSCRIBE (or keeps it for the next connection)
    /// and registers who waits for its acknowledgement.
    fn start_request(
        &mut self,
        packet: Result<Packet, Error>,
        conn: Option<&mut Connection>,
        reply: RequestReply,
    ) {
        let sent = packet.and_then(|packet| match conn {
            Some(conn) => conn
                .send(&packet)
                .map(|()| packet)
                .map_err(|e| Error::Invalid(e.to_string())),
            None => Ok(packet),
        });
        match (sent, reply) {
            (Ok(packet), reply) => self.session.add_request(packet, reply),
            (Err(e), RequestReply::Subscribe(r)) => answer(Some(r), Err(e)),
            (Err(e), RequestReply::Unsubscribe(r)) => answer(Some(r), Err(e)),
            (Err(_), RequestReply::Resubscribe) => {}
        }
    }

    /// Refuses what the broker would not accept; else the PUBLISH to queue.
    fn prepare_publish(&self, message: Message) -> Result<Publish, Error> {
        if !is_valid_topic_name(&message.topic) {
            return Err(Error::Invalid(format!(
                "invalid topic name {:?}: it must be non-empty and contain no + or #",
                message.topic
            )));
        }
        if message.qos > self.limits.maximum_qos {
            return Err(Error::Invalid(format!(
                "the broker accepts QoS {} at most",
                self.limits.maximum_qos as u8
            )));
        }
        if message.retain && !self.limits.retain_available {
            return Err(Error::Invalid(
                "the broker does not support retained messages".into(),
            ));
        }
        let publish = message.into_publish();
        // Measure with the packet id it will get (2 bytes at QoS 1/2).
        let probe = Packet::Publish(Publish {
            packet_id: (publish.qos != QoS::AtMostOnce).then_some(NonZeroU16::MAX),
            ..publish.clone()
        });
        self.check_size(&probe)?;
        Ok(publish)
    }

    fn subscribe_packet(
        &mut self,
        filters: Vec<(String, tern_codec::SubscriptionOptions)>,
        properties: tern_codec::SubscribeProperties,
    ) -> Result<Packet, Error> {
        check_filters(filters.iter().map(|(f, _)| f))?;
        let packet = Packet::Subscribe(Subscribe {
            packet_id: self.packet_id()?,
            filters: filters
                .into_iter()
                .map(|(filter, options)| SubscribeFilter {
                    filter: filter.into(),
                    options,
                })
                .collect(),
            properties,
        });
        self.check_size(&packet)?;
        Ok(packet)
    }

    fn unsubscribe_packet(&mut self, filters: Vec<String>) -> Result<Packet, Error> {
        check_filters(filters.iter())?;
        let packet = Packet::Unsubscribe(Unsubscribe {
            packet_id: self.packet_id()?,
            filters: filters.into_iter().map(Into::into).collect(),
            properties: UnsubscribeProperties::default(),
        });
        self.check_size(&packet)?;
        Ok(packet)
    }

    fn packet_id(&mut self) -> Result<NonZeroU16, Error> {
        self.session.allocate_id().ok_or_else(|| {
            Error::Invalid(
                "all 65535 packet identifiers are in use; wait for some to complete".into(),
            )
        })
    }

    /// The packet must encode, within the broker's Maximum Packet Size.
    fn check_size(&self, packet: &Packet) -> Result<(), Error> {
        let version = self.options.version;
        let len = packet
            .encoded_len(version)
            .map_err(|e| Error::Invalid(format!("cannot encode {}: {e}", packet.name())))?;
        let max = self.limits.maximum_packet_size;
        if len > max {
            return Err(Error::Invalid(format!(
                "{} of {len} bytes exceeds the broker's maximum packet size of {max} bytes",
                packet.name()
            )));
        }
        Ok(())
    }

    /// Retries with exponential backoff until connected, taking commands in
    /// the meantime.
    async fn reconnect(&mut self, policy: Reconnect) -> Result<Connection, Stop> {
        let mut delay = policy.initial_delay;
        let mut attempt: u64 = 0;
        loop {
            self.offline(tokio::time::sleep(delay)).await?;
            attempt += 1;
            let limit = self.options.connect_timeout;
            let connecting = tokio::time::timeout(
                limit,
                connection::establish(self.options.clone(), self.client_id.clone(), None),
            );
            match self.offline(connecting).await? {
                Ok(Ok((mut conn, connack))) => {
                    tracing::debug!(
                        target: LOG_TARGET,
                        attempt,
                        session_present = connack.session_present,
                        "reconnected"
                    );
                    self.events.push(Event::Reconnected {
                        session_present: connack.session_present,
                    });
                    self.on_connected(&mut conn, &connack);
                    return Ok(conn);
                }
                Ok(Err(e)) => {
                    tracing::debug!(target: LOG_TARGET, attempt, error = %e, "reconnect failed");
                }
                Err(_) => {
                    tracing::debug!(target: LOG_TARGET, attempt, "reconnect timed out after {limit:?}");
                }
            }
            delay = delay.saturating_mul(2).max(MIN_RETRY).min(policy.max_delay);
        }
    }

    /// Drives `fut` while disconnected: commands are queued for the next
    /// connection, parked events are delivered.
    async fn offline<F: Future>(&mut self, fut: F) -> Result<F::Output, Stop> {
        tokio::pin!(fut);
        loop {
            if self.abandoned() {
                return Err(Stop::Dropped);
            }
            tokio::select! {
                biased;
                out = &mut fut => return Ok(out),
                open = channel_room(&self.events.tx), if !self.events.pending.is_empty() => {
                    self.events.on_room(open);
                }
                command = self.commands.recv(), if self.commands_open => match command {
                    Some(command) => {
                        if let Some((_, reply)) = self.handle_command(command, None) {
                            return Err(Stop::Requested(reply));
                        }
                    }
                    None => self.commands_open = false,
                },
                () = self.events.tx.closed(), if !self.commands_open => return Err(Stop::Dropped),
            }
        }
    }

    /// Closed for good: answers everyone, reports, and lets the stream end.
    async fn finish(mut self, reason: DisconnectReason, reply: Option<Reply<()>>) {
        self.shared.set_closed(reason.clone());
        self.commands.close();
        self.session.fail_all(&reason);
        while let Ok(command) = self.commands.try_recv() {
            command.fail(closed(&reason));
        }
        answer(reply, Ok(()));
        if reason == DisconnectReason::Requested {
            self.events.push(Event::Disconnected { reason });
        }
        // Dropping the loop (and the sender) afterwards ends the stream.
        self.events.flush().await;
    }
}

fn check_filters<'a>(filters: impl Iterator<Item = &'a String>) -> Result<(), Error> {
    let mut any = false;
    for filter in filters {
        any = true;
        if !is_valid_topic_filter(filter) {
            return Err(Error::Invalid(format!("invalid topic filter {filter:?}")));
        }
    }
    if !any {
        return Err(Error::Invalid("at least one topic filter is needed".into()));
    }
    Ok(())
}

/// Writes DISCONNECT and closes, if `Client::disconnect` asked. `None` if
/// not asked, or if the reason cannot be sent (the caller got an error and
/// the loop goes on).
async fn close_requested(
    conn: &mut Connection,
    request: Option<(ReasonCode, Reply<()>)>,
) -> Option<End> {
    let (reason, reply) = request?;
    // Before 5.0 DISCONNECT has no reason (the codec drops it anyway).
    let reason = match conn.version {
        ProtocolVersion::V5 => reason,
        _ => ReasonCode::Success,
    };
    if let Err(e) = conn.send(&Packet::Disconnect(Disconnect::new(reason))) {
        answer(
            Some(reply),
            Err(Error::Invalid(format!(
                "{reason:?} is not a DISCONNECT reason: {e}"
            ))),
        );
        return None;
    }
    conn.close(CLOSE_FLUSH).await;
    Some(End::Requested(reply))
}

/// Reports a protocol violation by the broker (MQTT 5 DISCONNECT with the
/// reason) and closes.
async fn violation(conn: &mut Connection, v: Violation) -> End {
    tracing::debug!(target: LOG_TARGET, reason = ?v.reason, "protocol error from the broker: {}", v.message);
    if conn.version == ProtocolVersion::V5 {
        let disconnect = |reason| {
            Packet::Disconnect(Disconnect {
                reason,
                properties: DisconnectProperties {
                    reason_string: Some(v.message.as_str().into()),
                    ..Default::default()
                },
            })
        };
        if conn.send(&disconnect(v.reason)).is_err() {
            conn.send_control(&disconnect(ReasonCode::ProtocolError));
        }
    }
    conn.close(VIOLATION_FLUSH).await;
    End::Lost(lost(format!(
        "protocol error from the broker: {}",
        v.message
    )))
}
