//! What the application asks for: connection options, the will, the
//! reconnect policy and the messages it publishes.
//!
//! Each is built from a constructor with the required values and chained
//! methods for the rest (`ConnectOptions::new(host, port).client_id(..)`).
//! The structs are `#[non_exhaustive]`: their fields can be read and changed
//! in place, but other crates cannot write struct literals, so a field added
//! later (a new MQTT property, a TLS setting) breaks no caller. This module
//! also turns them into packets (CONNECT, PUBLISH), so the rules about which
//! option exists at which protocol level live next to the options themselves.

use std::time::Duration;

use bytes::Bytes;
use tern_codec::{
    Connect, ConnectProperties, LastWill, ProtocolVersion, Publish, PublishProperties, QoS,
    UserProperty, WillProperties,
};

use crate::transport::TlsOptions;

/// Where and how to connect: [`ConnectOptions::new`], then the methods
/// named after the fields for anything that differs from the defaults.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectOptions {
    pub host: String,
    pub port: u16,
    /// `V3_1_1` or `V5` (`V3_1` also works for old brokers).
    pub version: ProtocolVersion,
    /// Empty: let the broker assign one (MQTT 5 returns it in CONNACK).
    pub client_id: String,
    /// Clean Session (3.1.1) / Clean Start (5.0). Default true.
    pub clean_start: bool,
    /// Default 60 s; zero disables keep-alive.
    pub keep_alive: Duration,
    /// MQTT 5 Session Expiry Interval in seconds.
    pub session_expiry: Option<u32>,
    pub username: Option<String>,
    pub password: Option<Bytes>,
    pub will: Option<Will>,
    /// MQTT 5 Receive Maximum we announce.
    pub receive_maximum: Option<u16>,
    /// MQTT 5 Maximum Packet Size we announce.
    pub maximum_packet_size: Option<u32>,
    /// MQTT 5 Topic Alias Maximum we announce.
    pub topic_alias_maximum: Option<u16>,
    /// MQTT 5 user properties on CONNECT.
    pub user_properties: Vec<UserProperty>,
    /// Time allowed for TCP connect + CONNACK. Default 10 s.
    pub connect_timeout: Duration,
    /// Automatic reconnect; `None` (the default) reports the loss and stops.
    pub reconnect: Option<Reconnect>,
    /// TLS (`None`, the default: plain TCP).
    pub tls: Option<TlsOptions>,
    /// Incoming QoS 1/2 messages are acknowledged only when the application
    /// calls [`Client::ack`](crate::Client::ack), not on arrival. Default
    /// false.
    pub manual_acks: bool,
    /// Mosquitto's bridge flag on an MQTT 3.1/3.1.1 CONNECT: a broker that
    /// knows it (Mosquitto, Tern) does not send this client's own messages
    /// back to it and keeps their retain flag, as MQTT 5's No Local and
    /// Retain As Published do. For brokers bridging to brokers; ignored at
    /// MQTT 5. Default false.
    pub bridge: bool,
}

impl ConnectOptions {
    /// Defaults for `host:port`: MQTT 5, clean start, keep-alive 60 s,
    /// broker-assigned client id, no will, no reconnect, plain TCP.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tern_client::{ConnectOptions, ProtocolVersion, QoS, Reconnect, Will};
    ///
    /// let options = ConnectOptions::new("localhost", 1883)
    ///     .client_id("sensor-1")
    ///     .keep_alive(Duration::from_secs(30))
    ///     .clean_start(false)
    ///     .session_expiry(3600)
    ///     .will(Will::new("house/sensor-1/status", "offline", QoS::AtLeastOnce).retain(true))
    ///     .reconnect(Reconnect::default());
    /// assert_eq!(options.version, ProtocolVersion::V5);
    /// assert_eq!(options.keep_alive, Duration::from_secs(30));
    /// assert!(!options.clean_start);
    /// ```
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        ConnectOptions {
            host: host.into(),
            port,
            version: ProtocolVersion::V5,
            client_id: String::new(),
            clean_start: true,
            keep_alive: Duration::from_secs(60),
            session_expiry: None,
            username: None,
            password: None,
            will: None,
            receive_maximum: None,
            maximum_packet_size: None,
            topic_alias_maximum: None,
            user_properties: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            reconnect: None,
            tls: None,
            manual_acks: false,
            bridge: false,
        }
    }

    /// The protocol version (default MQTT 5).
    pub fn version(mut self, version: ProtocolVersion) -> Self {
        self.version = version;
        self
    }

    /// The client id; empty (the default) lets an MQTT 5 broker assign one.
    pub fn client_id(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = client_id.into();
        self
    }

    /// Clean Session (3.1.1) / Clean Start (5.0); `false` resumes the
    /// session the broker kept for this client id.
    pub fn clean_start(mut self, clean_start: bool) -> Self {
        self.clean_start = clean_start;
        self
    }

    /// Keep-alive interval; zero disables it.
    pub fn keep_alive(mut self, keep_alive: Duration) -> Self {
        self.keep_alive = keep_alive;
        self
    }

    /// MQTT 5 Session Expiry Interval, in seconds (`u32::MAX`: never).
    pub fn session_expiry(mut self, seconds: u32) -> Self {
        self.session_expiry = Some(seconds);
        self
    }

    /// The user name to authenticate with.
    pub fn username(mut self, username: impl Into<String>) -> Self {
        self.username = Some(username.into());
        self
    }

    /// The password to authenticate with (MQTT 3.1.1 requires a user name too).
    pub fn password(mut self, password: impl Into<Bytes>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// The will the broker publishes if this connection is lost.
    pub fn will(mut self, will: Will) -> Self {
        self.will = Some(will);
        self
    }

    /// MQTT 5 Receive Maximum we announce: QoS 1/2 messages the broker may
    /// have unacknowledged towards us.
    pub fn receive_maximum(mut self, maximum: u16) -> Self {
        self.receive_maximum = Some(maximum);
        self
    }

    /// MQTT 5 Maximum Packet Size we announce; the broker drops larger
    /// messages for us instead of sending them.
    pub fn maximum_packet_size(mut self, bytes: u32) -> Self {
        self.maximum_packet_size = Some(bytes);
        self
    }

    /// MQTT 5 Topic Alias Maximum we announce (the client resolves aliases
    /// itself, so [`Event::Message`](crate::Event::Message) always has the topic).
    pub fn topic_alias_maximum(mut self, maximum: u16) -> Self {
        self.topic_alias_maximum = Some(maximum);
        self
    }

    /// Adds an MQTT 5 user property to CONNECT (repeatable; order is kept).
    pub fn user_property(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.user_properties.push(UserProperty {
            name: name.into().into(),
            value: value.into().into(),
        });
        self
    }

    /// Time allowed for TCP connect (and TLS) plus CONNACK.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Reconnects automatically when the connection is lost.
    pub fn reconnect(mut self, policy: Reconnect) -> Self {
        self.reconnect = Some(policy);
        self
    }

    /// Connects with TLS.
    pub fn tls(mut self, tls: TlsOptions) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Acknowledges incoming QoS 1/2 messages only through
    /// [`Client::ack`](crate::Client::ack): for a client that must have
    /// handled (stored, forwarded) a message before the broker may forget it.
    pub fn manual_acks(mut self, manual: bool) -> Self {
        self.manual_acks = manual;
        self
    }

    /// Sets Mosquitto's bridge flag (see the field).
    pub fn bridge(mut self, bridge: bool) -> Self {
        self.bridge = bridge;
        self
    }

    /// `host:port` as printed in errors (IPv6 literals in brackets).
    pub(crate) fn address(&self) -> String {
        address(&self.host, self.port)
    }

    /// The keep-alive in whole seconds as CONNECT carries it: a non-zero
    /// duration under one second rounds up to 1 (zero would disable it), and
    /// anything over 65535 s is capped.
    pub(crate) fn keep_alive_secs(&self) -> u16 {
        if self.keep_alive.is_zero() {
            return 0;
        }
        let secs = self.keep_alive.as_secs().max(1);
        u16::try_from(secs).unwrap_or(u16::MAX)
    }

    /// Topic aliases we accept from the broker (MQTT 5 only).
    pub(crate) fn incoming_alias_maximum(&self) -> u16 {
        match self.version {
            ProtocolVersion::V5 => self.topic_alias_maximum.unwrap_or(0),
            _ => 0,
        }
    }

    /// Largest packet we accept from the broker: what we announced (MQTT 5),
    /// otherwise no limit beyond the protocol's own.
    pub(crate) fn incoming_packet_limit(&self) -> usize {
        match (self.version, self.maximum_packet_size) {
            (ProtocolVersion::V5, Some(max)) => usize::try_from(max).unwrap_or(usize::MAX),
            _ => usize::MAX,
        }
    }

    /// QoS 2 messages the broker may have unreleased towards us.
    pub(crate) fn incoming_receive_maximum(&self) -> u16 {
        match self.version {
            ProtocolVersion::V5 => self.receive_maximum.unwrap_or(u16::MAX),
            _ => u16::MAX,
        }
    }

    /// The CONNECT packet. `client_id` and `clean_start` are parameters
    /// because a reconnect reuses a broker-assigned id. Properties are only
    /// encoded at MQTT 5; the codec drops them at lower levels.
    pub(crate) fn connect_packet(&self, client_id: &str, clean_start: bool) -> Connect {
        Connect {
            protocol: self.version,
            bridge: self.bridge,
            clean_start,
            keep_alive: self.keep_alive_secs(),
            client_id: client_id.into(),
            will: self.will.as_ref().map(|w| LastWill {
                topic: w.topic.as_str().into(),
                payload: w.payload.clone(),
                qos: w.qos,
                retain: w.retain,
                properties: w.properties.clone(),
            }),
            username: self.username.as_deref().map(Into::into),
            password: self.password.clone(),
            properties: ConnectProperties {
                session_expiry_interval: self.session_expiry,
                receive_maximum: self.receive_maximum,
                maximum_packet_size: self.maximum_packet_size,
                topic_alias_maximum: self.topic_alias_maximum,
                user_properties: self.user_properties.clone(),
                ..ConnectProperties::default()
            },
        }
    }
}

/// The will the broker publishes if the connection is lost:
/// [`Will::new`], then [`Will::retain`] and [`Will::properties`] if needed.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Will {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// MQTT 5 will properties (ignored at 3.1.1), e.g. the Will Delay Interval.
    pub properties: WillProperties,
}

impl Will {
    /// A will without retain flag or properties.
    ///
    /// ```
    /// use tern_client::{QoS, Will, WillProperties};
    ///
    /// let will = Will::new("house/sensor-1/status", "offline", QoS::AtLeastOnce)
    ///     .retain(true)
    ///     .properties(WillProperties {
    ///         will_delay_interval: Some(10),
    ///         ..Default::default()
    ///     });
    /// assert!(will.retain);
    /// ```
    pub fn new(topic: impl Into<String>, payload: impl Into<Bytes>, qos: QoS) -> Self {
        Will {
            topic: topic.into(),
            payload: payload.into(),
            qos,
            retain: false,
            properties: WillProperties::default(),
        }
    }

    /// Whether the broker retains the will when it publishes it.
    pub fn retain(mut self, retain: bool) -> Self {
        self.retain = retain;
        self
    }

    /// MQTT 5 will properties.
    pub fn properties(mut self, properties: WillProperties) -> Self {
        self.properties = properties;
        self
    }
}

/// Reconnect backoff: doubles from `initial_delay` up to `max_delay`.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Reconnect {
    pub initial_delay: Duration,
    pub max_delay: Duration,
}

impl Reconnect {
    /// Waits `initial_delay` before the first attempt, then twice as long
    /// after each failure, up to `max_delay`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tern_client::{ConnectOptions, Reconnect};
    ///
    /// let options = ConnectOptions::new("localhost", 1883)
    ///     .reconnect(Reconnect::new(Duration::from_millis(250), Duration::from_secs(10)));
    /// assert_eq!(options.reconnect.map(|r| r.max_delay), Some(Duration::from_secs(10)));
    /// ```
    pub fn new(initial_delay: Duration, max_delay: Duration) -> Self {
        Reconnect {
            initial_delay,
            max_delay,
        }
    }
}

impl Default for Reconnect {
    /// From 1 s up to 30 s.
    fn default() -> Self {
        Reconnect::new(Duration::from_secs(1), Duration::from_secs(30))
    }
}

/// A message to publish: [`Message::new`], then [`Message::retain`] and
/// [`Message::properties`] if needed.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Message {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// MQTT 5 properties (ignored at 3.1.1).
    pub properties: PublishProperties,
}

impl Message {
    /// A message without retain flag or properties.
    ///
    /// ```
    /// use tern_client::{Message, PublishProperties, QoS};
    ///
    /// let m = Message::new("house/kitchen/temp", "21.5", QoS::AtLeastOnce)
    ///     .retain(true)
    ///     .properties(PublishProperties {
    ///         message_expiry_interval: Some(300),
    ///         content_type: Some("text/plain".into()),
    ///         ..Default::default()
    ///     });
    /// assert_eq!(&m.payload[..], b"21.5");
    /// assert!(m.retain);
    /// ```
    pub fn new(topic: impl Into<String>, payload: impl Into<Bytes>, qos: QoS) -> Self {
        Message {
            topic: topic.into(),
            payload: payload.into(),
            qos,
            retain: false,
            properties: PublishProperties::default(),
        }
    }

    /// Whether the broker retains the message for later subscribers.
    pub fn retain(mut self, retain: bool) -> Self {
        self.retain = retain;
        self
    }

    /// MQTT 5 properties. A Topic Alias or Subscription Identifiers in them
    /// are not sent (see `into_publish`).
    pub fn properties(mut self, properties: PublishProperties) -> Self {
        self.properties = properties;
        self
    }

    /// The PUBLISH for this message, without a packet id yet.
    ///
    /// Topic Alias and Subscription Identifiers are dropped: the client always
    /// sends the full topic (aliases would not survive a reconnect anyway), and
    /// subscription identifiers only travel from the broker to clients.
    pub(crate) fn into_publish(self) -> Publish {
        let mut properties = self.properties;
        properties.topic_alias = None;
        properties.subscription_identifiers.clear();
        Publish {
            dup: false,
            qos: self.qos,
            retain: self.retain,
            topic: self.topic.into(),
            packet_id: None,
            payload: self.payload,
            properties,
        }
    }
}

/// `host:port` as printed in errors (IPv6 literals in brackets).
pub(crate) fn address(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let o = ConnectOptions::new("h", 1);
        assert_eq!(o.version, ProtocolVersion::V5);
        assert!(o.client_id.is_empty());
        assert!(o.clean_start);
        assert_eq!(o.keep_alive, Duration::from_secs(60));
        assert_eq!(o.connect_timeout, Duration::from_secs(10));
        assert!(o.reconnect.is_none() && o.will.is_none() && o.session_expiry.is_none());
        assert_eq!(o.address(), "h:1");
    }

    #[test]
    fn keep_alive_rounding() {
        let mut o = ConnectOptions::new("::1", 1883);
        assert_eq!(o.address(), "[::1]:1883");
        o.keep_alive = Duration::from_millis(300);
        assert_eq!(o.keep_alive_secs(), 1);
        o.keep_alive = Duration::ZERO;
        assert_eq!(o.keep_alive_secs(), 0);
        o.keep_alive = Duration::from_secs(1 << 20);
        assert_eq!(o.keep_alive_secs(), u16::MAX);
    }

    #[test]
    fn connect_packet_carries_the_options() {
        let o = ConnectOptions::new("h", 1)
            .username("u")
            .password(Bytes::from_static(b"p"))
            .session_expiry(30)
            .receive_maximum(5)
            .user_property("k", "v")
            .user_property("k", "w")
            .will(Will::new("w", "gone", QoS::AtLeastOnce).retain(true));
        let c = o.connect_packet("id", false);
        assert_eq!(c.client_id, "id");
        assert!(!c.clean_start);
        assert_eq!(c.keep_alive, 60);
        assert_eq!(c.properties.session_expiry_interval, Some(30));
        assert_eq!(c.properties.receive_maximum, Some(5));
        let values: Vec<&str> = c
            .properties
            .user_properties
            .iter()
            .map(|p| p.value.as_str())
            .collect();
        assert_eq!(values, ["v", "w"]);
        assert_eq!(c.will.map(|w| w.retain), Some(true));
        assert_eq!(c.username.as_deref(), Some("u"));
    }
}
