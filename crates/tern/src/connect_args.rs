//! Options shared by `tern pub` and `tern sub`: where to connect, as whom,
//! protocol version, will, and MQTT 5 properties given with `-D`, spelled as
//! mosquitto_pub/mosquitto_sub spell them so existing scripts carry over.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use tern_client::{
    ConnectOptions, ProtocolVersion, PublishProperties, QoS, SubscribeProperties, TlsOptions,
    UserProperty, Will, WillProperties,
};

use crate::exit::Failure;

/// TLS flags, of the client tools and `tern bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct TlsArgs {
    /// Connect with TLS, trusting the certificate authorities in this PEM
    /// file to sign the broker's certificate, which must name the -h host.
    #[arg(long, value_name = "FILE")]
    pub cafile: Option<PathBuf>,
    /// Client certificate (PEM), for a broker that asks for one (with --key).
    #[arg(long, value_name = "FILE", requires_all = ["cafile", "key"])]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
}

impl TlsArgs {
    /// The TLS settings, if TLS was asked for.
    pub fn options(&self) -> Option<TlsOptions> {
        self.cafile.clone().map(|ca_file| {
            let tls = TlsOptions::new(ca_file);
            match self.cert.clone().zip(self.key.clone()) {
                Some((cert, key)) => tls.client_cert(cert, key),
                None => tls,
            }
        })
    }

    /// The port given, or MQTT's: 8883 with TLS, 1883 without.
    pub fn port(&self, given: Option<u16>) -> u16 {
        given.unwrap_or(if self.cafile.is_some() { 8883 } else { 1883 })
    }
}

/// Connection flags.
#[derive(clap::Args, Debug)]
pub struct ConnectArgs {
    /// Broker host.
    #[arg(short = 'h', long, default_value = "localhost")]
    pub host: String,
    /// Broker port [default: 1883, or 8883 with --cafile].
    #[arg(short = 'p', long)]
    pub port: Option<u16>,
    /// Client id (default: assigned by the broker, or generated for 3.1.1).
    #[arg(short = 'i', long = "id")]
    pub client_id: Option<String>,
    /// User name.
    #[arg(short = 'u', long)]
    pub username: Option<String>,
    /// Password.
    #[arg(short = 'P', long)]
    pub password: Option<String>,
    /// MQTT version: 5 (default), 311 or 31 (also mqttv5, mqttv311, mqttv31).
    #[arg(short = 'V', long = "protocol-version", default_value = "5", value_parser = parse_version)]
    pub version: ProtocolVersion,
    /// Keep-alive in seconds.
    #[arg(short = 'k', long = "keepalive", default_value_t = 60)]
    pub keep_alive: u16,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Print every packet sent and received on stderr.
    #[arg(short = 'd', long)]
    pub debug: bool,
    /// Will topic: published by the broker if this client vanishes.
    #[arg(long)]
    pub will_topic: Option<String>,
    /// Will payload.
    #[arg(long, requires = "will_topic")]
    pub will_payload: Option<String>,
    /// Will QoS.
    #[arg(long, default_value = "0", value_parser = parse_qos, requires = "will_topic")]
    pub will_qos: QoS,
    /// Retain the will.
    #[arg(long, requires = "will_topic")]
    pub will_retain: bool,
    /// MQTT 5 property: -D COMMAND NAME VALUE (user-property takes NAME KEY VALUE).
    /// Commands: connect, publish, subscribe, will. E.g. -D publish user-property
    /// site paris, -D publish message-expiry-interval 60, -D publish content-type
    /// text/plain, -D publish response-topic reply/to, -D publish correlation-data 42.
    #[arg(short = 'D', long = "property", num_args = 3..=4, action = clap::ArgAction::Append, value_names = ["COMMAND", "NAME", "VALUE"])]
    pub properties: Vec<String>,
}

pub fn parse_version(s: &str) -> Result<ProtocolVersion, String> {
    match s {
        "5" | "mqttv5" => Ok(ProtocolVersion::V5),
        "311" | "mqttv311" => Ok(ProtocolVersion::V3_1_1),
        "31" | "mqttv31" => Ok(ProtocolVersion::V3_1),
        _ => Err(format!("unknown protocol version '{s}': use 5, 311 or 31")),
    }
}

pub fn parse_qos(s: &str) -> Result<QoS, String> {
    s.parse::<u8>()
        .ok()
        .and_then(QoS::from_u8)
        .ok_or_else(|| format!("invalid QoS '{s}': use 0, 1 or 2"))
}

/// MQTT 5 properties collected from `-D`, per packet.
#[derive(Debug, Default)]
pub struct CliProperties {
    pub connect_user: Vec<UserProperty>,
    pub session_expiry: Option<u32>,
    pub receive_maximum: Option<u16>,
    pub maximum_packet_size: Option<u32>,
    pub topic_alias_maximum: Option<u16>,
    pub publish: PublishProperties,
    pub subscribe: SubscribeProperties,
    pub will: WillProperties,
}

impl ConnectArgs {
    /// Parses the `-D` flags; MQTT 5 only.
    pub fn properties(&self) -> Result<CliProperties, Failure> {
        let mut props = CliProperties::default();
        if !self.properties.is_empty() && self.version != ProtocolVersion::V5 {
            return Err(Failure::Usage("-D properties need MQTT 5 (-V 5)".into()));
        }
        // clap hands the values of every -D over as one list; each group is
        // COMMAND NAME VALUE, or COMMAND user-property KEY VALUE.
        let mut words = self.properties.as_slice();
        while !words.is_empty() {
            let len = if words.get(1).is_some_and(|n| n == "user-property") {
                4
            } else {
                3
            };
            let (group, rest) = words.split_at(len.min(words.len()));
            apply_property(&mut props, group).map_err(Failure::Usage)?;
            words = rest;
        }
        Ok(props)
    }

    /// The client's connect options.
    pub fn options(&self, props: &CliProperties) -> ConnectOptions {
        let port = self.tls.port(self.port);
        let mut o = ConnectOptions::new(self.host.clone(), port);
        o.tls = self.tls.options();
        o.version = self.version;
        o.client_id = self
            .client_id
            .clone()
            .unwrap_or_else(|| default_client_id(self.version));
        o.keep_alive = Duration::from_secs(u64::from(self.keep_alive));
        o.username = self.username.clone();
        o.password = self.password.clone().map(Bytes::from);
        o.will = self.will_topic.clone().map(|topic| {
            Will::new(
                topic,
                self.will_payload.clone().unwrap_or_default(),
                self.will_qos,
            )
            .retain(self.will_retain)
            .properties(props.will.clone())
        });
        o.session_expiry = props.session_expiry;
        o.receive_maximum = props.receive_maximum;
        o.maximum_packet_size = props.maximum_packet_size;
        o.topic_alias_maximum = props.topic_alias_maximum;
        o.user_properties = props.connect_user.clone();
        o
    }
}

/// MQTT 5 lets the broker assign an id; 3.1 requires one, and 3.1.1 only
/// allows an empty one with a clean session, so those get a generated id.
fn default_client_id(version: ProtocolVersion) -> String {
    match version {
        ProtocolVersion::V5 => String::new(),
        _ => format!("tern-{}", std::process::id()),
    }
}

fn number<T: std::str::FromStr>(name: &str, value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("invalid value '{value}' for property {name}"))
}

/// Applies one `-D COMMAND NAME VALUE [VALUE]`.
fn apply_property(props: &mut CliProperties, words: &[String]) -> Result<(), String> {
    let [command, name, rest @ ..] = words else {
        return Err("-D needs COMMAND NAME VALUE".into());
    };
    let (command, name) = (command.as_str(), name.as_str());
    let user = |rest: &[String]| match rest {
        [k, v] => Ok(UserProperty {
            name: k.as_str().into(),
            value: v.as_str().into(),
        }),
        _ => Err(
            "user-property needs a name and a value: -D COMMAND user-property NAME VALUE"
                .to_string(),
        ),
    };
    let [value] = rest else {
        if name == "user-property" {
            let property = user(rest)?;
            match command {
                "connect" => props.connect_user.push(property),
                "publish" => props.publish.user_properties.push(property),
                "subscribe" => props.subscribe.user_properties.push(property),
                "will" => props.will.user_properties.push(property),
                other => {
                    return Err(format!(
                        "unknown -D command '{other}': use connect, publish, subscribe or will"
                    ));
                }
            }
            return Ok(());
        }
        return Err(format!("property {name} takes one value"));
    };
    let value = value.as_str();
    match (command, name) {
        ("connect", "session-expiry-interval") => props.session_expiry = Some(number(name, value)?),
        ("connect", "receive-maximum") => props.receive_maximum = Some(number(name, value)?),
        ("connect", "maximum-packet-size") => {
            props.maximum_packet_size = Some(number(name, value)?)
        }
        ("connect", "topic-alias-maximum") => {
            props.topic_alias_maximum = Some(number(name, value)?)
        }
        ("publish", _) => apply_message_property(&mut props.publish, name, value)?,
        ("will", "will-delay-interval") => {
            props.will.will_delay_interval = Some(number(name, value)?)
        }
        ("will", _) => {
            let mut p = PublishProperties::default();
            apply_message_property(&mut p, name, value)?;
            let w = &mut props.will;
            w.payload_format_indicator = p.payload_format_indicator.or(w.payload_format_indicator);
            w.message_expiry_interval = p.message_expiry_interval.or(w.message_expiry_interval);
            w.content_type = p.content_type.or(w.content_type.take());
            w.response_topic = p.response_topic.or(w.response_topic.take());
            w.correlation_data = p.correlation_data.or(w.correlation_data.take());
        }
        ("subscribe", "subscription-identifier") => {
            props.subscribe.subscription_identifier = Some(number(name, value)?)
        }
        _ => return Err(format!("unknown property '{name}' for -D {command}")),
    }
    Ok(())
}

/// Properties a PUBLISH (or will) carries.
fn apply_message_property(
    p: &mut PublishProperties,
    name: &str,
    value: &str,
) -> Result<(), String> {
    match name {
        "payload-format-indicator" => {
            p.payload_format_indicator = Some(number::<u8>(name, value)? == 1)
        }
        "message-expiry-interval" => p.message_expiry_interval = Some(number(name, value)?),
        "content-type" => p.content_type = Some(value.into()),
        "response-topic" => p.response_topic = Some(value.into()),
        "correlation-data" => p.correlation_data = Some(Bytes::copy_from_slice(value.as_bytes())),
        _ => return Err(format!("unknown publish property '{name}'")),
    }
    Ok(())
}
