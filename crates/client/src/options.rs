//! What the application asks for: connection options, the will, the
//! reconnect policy and the messages it publishes.
//!
//! These are plain data with public fields, so a caller can build them with
//! struct update syntax from [`ConnectOptions::new`]. This module also turns
//! them into packets (CONNECT, PUBLISH), so the rules about which option
//! exists at which protocol level live next to the options themselves.

use std::time::Duration;

use bytes::Bytes;
use tern_codec::{
    Connect, ConnectProperties, LastWill, ProtocolVersion, Publish, PublishProperties, QoS,
    UserProperty, WillProperties,
};

use crate::transport::TlsOptions;

/// Where and how to connect.
#[derive(Debug, Clone)]
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
}

impl ConnectOptions {
    /// Defaults for `host:port`: MQTT 5, clean start, keep-alive 60 s.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tern_client::{ConnectOptions, ProtocolVersion};
    ///
    /// let options = ConnectOptions {
    ///     client_id: "sensor-1".into(),
    ///     keep_alive: Duration::from_secs(30),
    ///     ..ConnectOptions::new("localhost", 1883)
    /// };
    /// assert_eq!(options.version, ProtocolVersion::V5);
    /// assert!(options.clean_start);
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
        }
    }

    /// `host:port` as printed in errors (IPv6 literals in brackets).
    pub(crate) fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
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

/// The will the broker publishes if the connection is lost.
#[derive(Debug, Clone)]
pub struct Will {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub properties: WillProperties,
}

/// Reconnect backoff: doubles from `initial_delay` up to `max_delay`.
#[derive(Debug, Clone, Copy)]
pub struct Reconnect {
    pub initial_delay: Duration,
    pub max_delay: Duration,
}

impl Default for Reconnect {
    /// From 1 s up to 30 s.
    fn default() -> Self {
        Reconnect {
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
        }
    }
}

/// A message to publish.
#[derive(Debug, Clone)]
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
    /// use tern_client::{Message, QoS};
    /// let m = Message::new("house/kitchen/temp", "21.5", QoS::AtLeastOnce);
    /// assert_eq!(&m.payload[..], b"21.5");
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
        let o = ConnectOptions {
            username: Some("u".into()),
            password: Some(Bytes::from_static(b"p")),
            session_expiry: Some(30),
            receive_maximum: Some(5),
            will: Some(Will {
                topic: "w".into(),
                payload: Bytes::from_static(b"gone"),
                qos: QoS::AtLeastOnce,
                retain: true,
                properties: WillProperties::default(),
            }),
            ..ConnectOptions::new("h", 1)
        };
        let c = o.connect_packet("id", false);
        assert_eq!(c.client_id, "id");
        assert!(!c.clean_start);
        assert_eq!(c.keep_alive, 60);
        assert_eq!(c.properties.session_expiry_interval, Some(30));
        assert_eq!(c.properties.receive_maximum, Some(5));
        assert_eq!(c.will.map(|w| w.retain), Some(true));
        assert_eq!(c.username.as_deref(), Some("u"));
    }
}
