//! The application's handle: [`Client`] turns each call into a [`Command`]
//! for the event loop and waits for its answer, or, for a publish, hands the
//! wait to the caller as a [`PublishHandle`].
//!
//! The handle holds no connection state of its own, only the sending side of
//! the command channel and what the loop shares for reading (the latest
//! CONNACK, and why the connection closed). So it is cheap to clone and every
//! clone sees the same connection; the loop is the only owner of the socket.

use std::future::Future;
use std::num::NonZeroU16;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};

use tern_codec::{
    ConnAck, QoS, ReasonCode, SubAck, SubscribeProperties, SubscriptionOptions, UnsubAck,
};
use tokio::sync::{mpsc, oneshot};

use crate::connection;
use crate::error::{DisconnectReason, Error};
use crate::event::{EVENT_CAPACITY, EventQueue, Events};
use crate::event_loop::EventLoop;
use crate::options::{ConnectOptions, Message};
use crate::session::Reply;
use crate::transport::Stream;

/// Commands buffered between the handles and the loop; beyond this, calls
/// wait for the loop (backpressure on a fast publisher).
const COMMAND_CAPACITY: usize = 128;

/// A request from a [`Client`] handle to the event loop.
#[derive(Debug)]
pub(crate) enum Command {
    Publish {
        message: Message,
        reply: Reply<ReasonCode>,
    },
    Subscribe {
        filters: Vec<(String, SubscriptionOptions)>,
        properties: SubscribeProperties,
        reply: Reply<SubAck>,
    },
    Unsubscribe {
        filters: Vec<String>,
        reply: Reply<UnsubAck>,
    },
    Disconnect {
        reason: ReasonCode,
        reply: Reply<()>,
    },
    /// Manual acknowledgements: PUBACK or PUBREC for this message.
    Ack { packet_id: NonZeroU16 },
}

impl Command {
    /// Answers a command the loop will never carry out.
    pub(crate) fn fail(self, error: Error) {
        match self {
            Command::Publish { reply, .. } => drop(reply.send(Err(error))),
            Command::Subscribe { reply, .. } => drop(reply.send(Err(error))),
            Command::Unsubscribe { reply, .. } => drop(reply.send(Err(error))),
            Command::Disconnect { reply, .. } => drop(reply.send(Err(error))),
            Command::Ack { .. } => {}
        }
    }
}

/// What the loop shares with the handles.
#[derive(Debug)]
pub(crate) struct Shared {
    connack: Mutex<ConnAck>,
    closed: Mutex<Option<DisconnectReason>>,
}

/// Locks, ignoring poisoning: the data is plain values, always consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    pub(crate) fn set_connack(&self, connack: ConnAck) {
        *lock(&self.connack) = connack;
    }

    pub(crate) fn set_closed(&self, reason: DisconnectReason) {
        *lock(&self.closed) = Some(reason);
    }

    fn closed_error(&self) -> Error {
        let reason = lock(&self.closed).clone().unwrap_or_else(|| {
            DisconnectReason::ConnectionLost("the client's event loop has stopped".into())
        });
        Error::Closed(reason)
    }
}

/// A cheap, clonable handle to one connection's event loop.
///
/// Calls from several clones (or tasks) are carried out in the order the
/// loop receives them. Dropping every handle (clones, and [`PublishHandle`]s
/// still waiting) and the [`Events`] stream closes the connection without
/// DISCONNECT, so the broker treats it as lost and publishes the will; call
/// [`Client::disconnect`] for a clean close.
#[derive(Debug, Clone)]
pub struct Client {
    commands: mpsc::Sender<Command>,
    shared: Arc<Shared>,
}

impl Client {
    /// Connects and waits for CONNACK. Returns the handle, the event stream
    /// and the CONNACK (session present, assigned client id, server limits).
    ///
    /// Errors: [`Error::Unreachable`] if TCP fails, [`Error::Refused`] if the
    /// broker refuses, [`Error::Timeout`] after `connect_timeout`. Automatic
    /// reconnection only starts once this first connection succeeded.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let broker = tern_broker::Broker::start(tern_broker::Config {
    /// #     bind: "127.0.0.1:0".parse()?,
    /// #     persistence: false,
    /// #     ..Default::default()
    /// # }).await?;
    /// # let port = broker.local_addr().port();
    /// use tern_client::{Client, ConnectOptions, ReasonCode};
    ///
    /// let options = ConnectOptions::new("127.0.0.1", port).client_id("doc-connect");
    /// let (client, _events, connack) = Client::connect(options).await?;
    /// assert_eq!(connack.reason, ReasonCode::Success);
    /// assert!(!connack.session_present);
    /// client.disconnect(ReasonCode::Success).await?;
    /// # broker.shutdown().await;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect(options: ConnectOptions) -> Result<(Client, Events, ConnAck), Error> {
        Client::start(options, None).await
    }

    /// Like [`Client::connect`], over a stream the caller opened: the
    /// in-process pipe to a broker in the same program (Tern's bridges
    /// reach their own broker so). `options.host` and `port` only name the
    /// broker in errors; there is no reconnect (`options.reconnect` must be
    /// `None`), since the stream cannot be opened again.
    pub async fn connect_stream(
        options: ConnectOptions,
        stream: Stream,
    ) -> Result<(Client, Events, ConnAck), Error> {
        if options.reconnect.is_some() {
            return Err(Error::Invalid(
                "a client on a given stream cannot reconnect: set no reconnect policy".into(),
            ));
        }
        Client::start(options, Some(stream)).await
    }

    async fn start(
        options: ConnectOptions,
        stream: Option<Stream>,
    ) -> Result<(Client, Events, ConnAck), Error> {
        let options = Arc::new(options);
        let limit = options.connect_timeout;
        let (mut conn, connack) = tokio::time::timeout(
            limit,
            connection::establish(options.clone(), options.client_id.clone(), stream),
        )
        .await
        .map_err(|_| Error::Timeout(limit))??;
        let (commands, command_rx) = mpsc::channel(COMMAND_CAPACITY);
        let (events, event_rx) = mpsc::channel(EVENT_CAPACITY);
        let shared = Arc::new(Shared {
            connack: Mutex::new(connack.clone()),
            closed: Mutex::new(None),
        });
        let mut event_loop =
            EventLoop::new(options, command_rx, EventQueue::new(events), shared.clone());
        event_loop.on_connected(&mut conn, &connack);
        tokio::spawn(event_loop.run(conn));
        Ok((
            Client { commands, shared },
            Events { rx: event_rx },
            connack,
        ))
    }

    /// Sends a command and waits for its answer.
    async fn request<T>(&self, command: impl FnOnce(Reply<T>) -> Command) -> Result<T, Error> {
        let (reply, answer) = oneshot::channel();
        if self.commands.send(command(reply)).await.is_err() {
            return Err(self.shared.closed_error());
        }
        answer
            .await
            .unwrap_or_else(|_| Err(self.shared.closed_error()))
    }

    /// Publishes and waits until the QoS flow completes: taken by the event
    /// loop (QoS 0, which has no acknowledgement), PUBACK (QoS 1) or PUBCOMP
    /// (QoS 2). Returns the broker's reason code (MQTT 5; `Success` at
    /// 3.1.1). Respects the broker's Receive Maximum.
    ///
    /// The same as `start_publish(message).await?.await`: to send several
    /// messages without waiting for each acknowledgement in turn, use
    /// [`Client::start_publish`] or [`Client::try_publish`] and await the
    /// [`PublishHandle`]s later.
    ///
    /// A reason code of 0x80 or above (e.g. `NotAuthorized`) is the broker's
    /// answer, returned as `Ok`; `Err` means there was no answer:
    /// [`Error::Invalid`] for a message the broker would not accept (topic,
    /// size over its Maximum Packet Size, QoS or retain it does not support),
    /// [`Error::Closed`] if the connection ended first. With reconnect on,
    /// an unfinished publish is sent again after reconnecting and the call
    /// returns when that completes; a publish made while reconnecting (any
    /// QoS) waits for the connection.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let broker = tern_broker::Broker::start(tern_broker::Config {
    /// #     bind: "127.0.0.1:0".parse()?,
    /// #     persistence: false,
    /// #     ..Default::default()
    /// # }).await?;
    /// # let port = broker.local_addr().port();
    /// use tern_client::{Client, ConnectOptions, Message, QoS, ReasonCode};
    ///
    /// let (client, _events, _) = Client::connect(ConnectOptions::new("127.0.0.1", port)).await?;
    /// let message = Message::new("house/kitchen/temp", "21.5", QoS::ExactlyOnce).retain(true);
    /// // Nobody subscribes: MQTT 5 brokers may say so, still a success.
    /// let reason = client.publish(message).await?;
    /// assert!(!reason.is_error());
    /// client.disconnect(ReasonCode::Success).await?;
    /// # broker.shutdown().await;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn publish(&self, message: Message) -> Result<ReasonCode, Error> {
        self.start_publish(message).await?.await
    }

    /// Hands the message to the event loop without waiting for the broker,
    /// and returns a [`PublishHandle`] that resolves with the acknowledgement.
    ///
    /// Never waits: if the client's request queue is full (the event loop
    /// has not caught up, e.g. because the calling task has not yielded
    /// since filling it), it fails with [`Error::QueueFull`], which hands the
    /// message back; [`Client::start_publish`] waits for room instead. Being
    /// a plain function, it can also be called from code that is not async.
    /// Dropping the handle does not cancel the publish (fire and forget).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let broker = tern_broker::Broker::start(tern_broker::Config {
    /// #     bind: "127.0.0.1:0".parse()?,
    /// #     persistence: false,
    /// #     ..Default::default()
    /// # }).await?;
    /// # let port = broker.local_addr().port();
    /// use tern_client::{Client, ConnectOptions, Error, Message, QoS, ReasonCode};
    ///
    /// let (client, _events, _) = Client::connect(ConnectOptions::new("127.0.0.1", port)).await?;
    /// // Both go out together; their acknowledgements are awaited afterwards.
    /// let temp = client.try_publish(Message::new("house/hall/temp", "19.5", QoS::AtLeastOnce))?;
    /// let humidity = client.try_publish(Message::new("house/hall/humidity", "48", QoS::ExactlyOnce))?;
    /// assert!(!temp.await?.is_error());
    /// assert!(!humidity.await?.is_error());
    ///
    /// // Fire and forget: the handle is dropped, the message is still sent.
    /// client.try_publish(Message::new("house/hall/motion", "1", QoS::AtMostOnce))?;
    ///
    /// // When the queue is full, the message comes back: wait for room.
    /// let handle = match client.try_publish(Message::new("house/hall/temp", "19.6", QoS::AtLeastOnce)) {
    ///     Ok(handle) => handle,
    ///     Err(Error::QueueFull(message)) => client.start_publish(*message).await?,
    ///     Err(e) => return Err(e.into()),
    /// };
    /// handle.await?;
    /// client.disconnect(ReasonCode::Success).await?;
    /// # broker.shutdown().await;
    /// # Ok(())
    /// # }
    /// ```
    pub fn try_publish(&self, message: Message) -> Result<PublishHandle, Error> {
        match self.commands.try_reserve() {
            Ok(permit) => Ok(self.send_publish(permit, message)),
            Err(mpsc::error::TrySendError::Full(())) => Err(Error::QueueFull(Box::new(message))),
            Err(mpsc::error::TrySendError::Closed(())) => Err(self.shared.closed_error()),
        }
    }

    /// Like [`Client::try_publish`], but waits for room in the client's
    /// request queue instead of failing: the publish with backpressure that
    /// does not wait for the broker. Returns once the event loop will take
    /// the message, with the [`PublishHandle`] for its acknowledgement.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let broker = tern_broker::Broker::start(tern_broker::Config {
    /// #     bind: "127.0.0.1:0".parse()?,
    /// #     persistence: false,
    /// #     ..Default::default()
    /// # }).await?;
    /// # let port = broker.local_addr().port();
    /// use tern_client::{Client, ConnectOptions, Message, QoS, ReasonCode};
    ///
    /// let (client, _events, _) = Client::connect(ConnectOptions::new("127.0.0.1", port)).await?;
    /// // A thousand readings in flight at once (up to the broker's Receive
    /// // Maximum), in order, instead of one round trip each.
    /// let mut acks = Vec::new();
    /// for i in 0..1000 {
    ///     let reading = Message::new("house/log", i.to_string(), QoS::AtLeastOnce);
    ///     acks.push(client.start_publish(reading).await?);
    /// }
    /// for ack in acks {
    ///     assert!(!ack.await?.is_error());
    /// }
    /// client.disconnect(ReasonCode::Success).await?;
    /// # broker.shutdown().await;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn start_publish(&self, message: Message) -> Result<PublishHandle, Error> {
        match self.commands.reserve().await {
            Ok(permit) => Ok(self.send_publish(permit, message)),
            Err(_) => Err(self.shared.closed_error()),
        }
    }

    /// Sends the publish through a reserved slot of the command queue.
    fn send_publish(&self, permit: mpsc::Permit<'_, Command>, message: Message) -> PublishHandle {
        let (reply, answer) = oneshot::channel();
        permit.send(Command::Publish { message, reply });
        PublishHandle {
            answer,
            client: self.clone(),
        }
    }

    /// Subscribes to one filter at `qos` (the other subscription options at
    /// their defaults); returns the SUBACK. The shorthand for
    /// [`Client::subscribe_many`], as in rumqttc and paho.
    ///
    /// The SUBACK's one reason is the granted QoS, or a failure code (0x80
    /// and above: the broker's answer, so `Ok`). A granted subscription is
    /// remembered and renewed after a reconnect if the broker no longer has
    /// the session.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let broker = tern_broker::Broker::start(tern_broker::Config {
    /// #     bind: "127.0.0.1:0".parse()?,
    /// #     persistence: false,
    /// #     ..Default::default()
    /// # }).await?;
    /// # let port = broker.local_addr().port();
    /// use tern_client::{Client, ConnectOptions, Event, Message, QoS, ReasonCode};
    ///
    /// let (client, mut events, _) = Client::connect(ConnectOptions::new("127.0.0.1", port)).await?;
    /// let suback = client.subscribe("house/+/temp", QoS::AtLeastOnce).await?;
    /// assert_eq!(suback.reasons, [ReasonCode::GrantedQoS1]);
    ///
    /// client.publish(Message::new("house/hall/temp", "19", QoS::AtLeastOnce)).await?;
    /// match events.next().await {
    ///     Some(Event::Message(m)) => {
    ///         assert_eq!(m.topic, "house/hall/temp");
    ///         assert_eq!(&m.payload[..], b"19");
    ///     }
    ///     other => panic!("unexpected {other:?}"),
    /// }
    /// client.disconnect(ReasonCode::Success).await?;
    /// # broker.shutdown().await;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn subscribe(&self, filter: impl Into<String>, qos: QoS) -> Result<SubAck, Error> {
        let options = SubscriptionOptions {
            qos,
            ..SubscriptionOptions::default()
        };
        self.subscribe_many([(filter, options)], SubscribeProperties::default())
            .await
    }

    /// Subscribes to one or more filters in one SUBSCRIBE, each with its own
    /// options (QoS, No Local, Retain As Published, Retain Handling), with
    /// MQTT 5 properties (a Subscription Identifier, user properties);
    /// returns the SUBACK, one reason per filter in the same order.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let broker = tern_broker::Broker::start(tern_broker::Config {
    /// #     bind: "127.0.0.1:0".parse()?,
    /// #     persistence: false,
    /// #     ..Default::default()
    /// # }).await?;
    /// # let port = broker.local_addr().port();
    /// use tern_client::{
    ///     Client, ConnectOptions, QoS, ReasonCode, RetainHandling, SubscribeProperties,
    ///     SubscriptionOptions,
    /// };
    ///
    /// let (client, _events, _) = Client::connect(ConnectOptions::new("127.0.0.1", port)).await?;
    /// let readings = SubscriptionOptions { qos: QoS::AtLeastOnce, ..Default::default() };
    /// let chat = SubscriptionOptions {
    ///     qos: QoS::ExactlyOnce,
    ///     no_local: true, // not our own messages
    ///     retain_handling: RetainHandling::DoNotSend,
    ///     ..Default::default()
    /// };
    /// let properties = SubscribeProperties {
    ///     subscription_identifier: Some(42), // comes back on every matching message
    ///     ..Default::default()
    /// };
    /// let suback = client
    ///     .subscribe_many([("house/+/temp", readings), ("chat/#", chat)], properties)
    ///     .await?;
    /// assert_eq!(suback.reasons, [ReasonCode::GrantedQoS1, ReasonCode::GrantedQoS2]);
    /// client.disconnect(ReasonCode::Success).await?;
    /// # broker.shutdown().await;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn subscribe_many<F: Into<String>>(
        &self,
        filters: impl IntoIterator<Item = (F, SubscriptionOptions)>,
        properties: SubscribeProperties,
    ) -> Result<SubAck, Error> {
        let filters = filters
            .into_iter()
            .map(|(filter, options)| (filter.into(), options))
            .collect();
        self.request(|reply| Command::Subscribe {
            filters,
            properties,
            reply,
        })
        .await
    }

    /// Unsubscribes from one filter; returns the UNSUBACK. The filter is
    /// forgotten at once: it is not renewed after a reconnect.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let broker = tern_broker::Broker::start(tern_broker::Config {
    /// #     bind: "127.0.0.1:0".parse()?,
    /// #     persistence: false,
    /// #     ..Default::default()
    /// # }).await?;
    /// # let port = broker.local_addr().port();
    /// use tern_client::{Client, ConnectOptions, QoS, ReasonCode};
    ///
    /// let (client, _events, _) = Client::connect(ConnectOptions::new("127.0.0.1", port)).await?;
    /// client.subscribe("house/#", QoS::AtMostOnce).await?;
    /// let unsuback = client.unsubscribe("house/#").await?;
    /// assert_eq!(unsuback.reasons, [ReasonCode::Success]);
    /// // MQTT 5 brokers say when there was nothing to remove.
    /// let unsuback = client.unsubscribe_many(["garden/#", "garage/#"]).await?;
    /// assert_eq!(unsuback.reasons, [ReasonCode::NoSubscriptionExisted; 2]);
    /// client.disconnect(ReasonCode::Success).await?;
    /// # broker.shutdown().await;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn unsubscribe(&self, filter: impl Into<String>) -> Result<UnsubAck, Error> {
        self.unsubscribe_many([filter]).await
    }

    /// Unsubscribes from several filters in one UNSUBSCRIBE; returns the
    /// UNSUBACK, one reason per filter (MQTT 5).
    pub async fn unsubscribe_many(
        &self,
        filters: impl IntoIterator<Item = impl Into<String>>,
    ) -> Result<UnsubAck, Error> {
        let filters = filters.into_iter().map(Into::into).collect();
        self.request(|reply| Command::Unsubscribe { filters, reply })
            .await
    }

    /// With [`ConnectOptions::manual_acks`], acknowledges a QoS 1 or 2
    /// message: the broker may now forget it (PUBACK, or PUBREC and the rest
    /// of the QoS 2 flow). Returns once the client's event loop has it;
    /// QoS 0 messages need no acknowledgement and are ignored.
    ///
    /// An acknowledgement counts only on the connection the message arrived
    /// on: after a reconnect the broker sends the unacknowledged messages
    /// again (with the session), and those are the ones to acknowledge.
    /// Messages are acknowledged in any order.
    pub async fn ack(&self, message: &crate::Received) -> Result<(), Error> {
        let Some(packet_id) = message.packet_id else {
            return Ok(());
        };
        self.commands
            .send(Command::Ack { packet_id })
            .await
            .map_err(|_| self.shared.closed_error())
    }

    /// Sends DISCONNECT (normal, or 0x04 to have the will published) and
    /// closes once everything queued before it was written.
    ///
    /// At MQTT 3.1.1 the DISCONNECT carries no reason (the broker discards
    /// the will). Afterwards [`Events`] yields
    /// `Disconnected { reason: Requested }` and then `None`; publishes still
    /// waiting for acknowledgement fail with [`Error::Closed`].
    pub async fn disconnect(&self, reason: ReasonCode) -> Result<(), Error> {
        self.request(|reply| Command::Disconnect { reason, reply })
            .await
    }

    /// The CONNACK of the current (latest) connection: session present,
    /// assigned client id, the broker's limits.
    pub fn connack(&self) -> ConnAck {
        lock(&self.shared.connack).clone()
    }
}

/// The outcome of one publish, to `.await`: what [`Client::try_publish`]
/// and [`Client::start_publish`] return.
///
/// It resolves, with the same result as [`Client::publish`], when the QoS
/// flow is complete: once the event loop has taken the message for QoS 0
/// (there is no acknowledgement to wait for: at once, unless the client is
/// reconnecting or earlier publishes wait for the broker's Receive Maximum),
/// on PUBACK for QoS 1, on PUBCOMP for QoS 2. The reason code is the
/// broker's (0x80 and above: refused, still `Ok`).
///
/// If the connection drops first:
/// - without reconnect, it resolves to [`Error::Closed`] with the reason the
///   [`Event::Disconnected`](crate::Event::Disconnected) event gives: the
///   broker may or may not have received the message;
/// - with reconnect, it waits: the message is sent again once connected
///   (with DUP set if the broker kept the session, as new otherwise), and
///   the handle resolves when that flow completes;
/// - after [`Client::disconnect`], a handle still waiting resolves to
///   `Error::Closed(DisconnectReason::Requested)`.
///
/// Dropping the handle does not cancel the publish; it only discards the
/// answer. A handle not yet resolved keeps the connection open, as a
/// [`Client`] clone does: dropping the client after publishing does not
/// lose the acknowledgement being awaited.
///
/// Why this shape: paho users know `publish(msg)` returning a delivery
/// token to await, rumqttc users know `try_publish` for code that must not
/// wait. The handle is that token, under rumqttc's name. `publish().await`
/// keeps waiting for the acknowledgement, as it always did here (unlike
/// rumqttc's, which returns once the request is queued): it is what most
/// callers want, and pipelining is one call away.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let broker = tern_broker::Broker::start(tern_broker::Config {
/// #     bind: "127.0.0.1:0".parse()?,
/// #     persistence: false,
/// #     ..Default::default()
/// # }).await?;
/// # let port = broker.local_addr().port();
/// use std::time::Duration;
/// use tern_client::{Client, ConnectOptions, Message, QoS};
///
/// let (client, _events, _) = Client::connect(ConnectOptions::new("127.0.0.1", port)).await?;
/// let handle = client.try_publish(Message::new("house/door", "open", QoS::ExactlyOnce))?;
/// drop(client); // a waiting handle keeps the connection open, as a clone would
/// match tokio::time::timeout(Duration::from_secs(5), handle).await {
///     Ok(Ok(reason)) if !reason.is_error() => println!("delivered"),
///     Ok(Ok(reason)) => println!("refused: {}", tern_client::describe(reason)),
///     Ok(Err(e)) => println!("not acknowledged: {e}"),
///     Err(_) => println!("no acknowledgement within 5 s"),
/// }
/// # broker.shutdown().await;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct PublishHandle {
    answer: oneshot::Receiver<Result<ReasonCode, Error>>,
    /// Keeps the event loop serving the connection while the answer is
    /// awaited, and tells why it closed if the answer never comes.
    client: Client,
}

impl Future for PublishHandle {
    type Output = Result<ReasonCode, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let answer = ready!(Pin::new(&mut self.answer).poll(cx));
        Poll::Ready(answer.unwrap_or_else(|_| Err(self.client.shared.closed_error())))
    }
}
