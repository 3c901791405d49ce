//! The `[[bridges]]` sections: connections to other brokers, in Mosquitto's
//! terms (`connection`, `address`, `topic pattern direction qos local-prefix
//! remote-prefix`, `cleansession`, `try_private`, `bridge_cafile`, …) so a
//! Mosquitto configuration maps onto them line by line (`tern import`).

use std::path::PathBuf;

use serde::Deserialize;
use tern_codec::topic::is_valid_topic_filter;

use super::ConfigError;

/// Which way a topic rule forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// From this broker to the remote one (Mosquitto's default).
    #[default]
    Out,
    /// From the remote broker to this one.
    In,
    /// Both ways; the bridge never sends a message back where it came from.
    Both,
}

impl Direction {
    /// Whether messages published here go to the remote broker.
    pub fn outward(self) -> bool {
        matches!(self, Direction::Out | Direction::Both)
    }

    /// Whether messages published there come to this broker.
    pub fn inward(self) -> bool {
        matches!(self, Direction::In | Direction::Both)
    }
}

/// One `[[bridges.topics]]` rule: Mosquitto's `topic` line. The topic here
/// is `local_prefix` + `pattern`, there `remote_prefix` + `pattern`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicRule {
    /// A topic filter (`sensors/#`); empty when a prefix is the whole topic.
    pub pattern: String,
    /// `out`, `in` or `both`. Default `out`.
    #[serde(default)]
    pub direction: Direction,
    /// The QoS of the bridge's subscription, so the highest QoS forwarded.
    /// Default 0, as in Mosquitto.
    #[serde(default)]
    pub qos: u8,
    /// Default "".
    #[serde(default)]
    pub local_prefix: String,
    /// Default "".
    #[serde(default)]
    pub remote_prefix: String,
}

impl TopicRule {
    /// The filter this rule subscribes to here (`out`) or there (`in`).
    pub fn filter(&self, local: bool) -> String {
        let prefix = if local {
            &self.local_prefix
        } else {
            &self.remote_prefix
        };
        format!("{prefix}{}", self.pattern)
    }

    /// `topic`, received on the side named by `from_local`, as it is
    /// published on the other side; `None` if it is not under this rule's
    /// prefix there.
    pub fn translate(&self, topic: &str, from_local: bool) -> Option<String> {
        let (from, to) = if from_local {
            (&self.local_prefix, &self.remote_prefix)
        } else {
            (&self.remote_prefix, &self.local_prefix)
        };
        let rest = topic.strip_prefix(from.as_str())?;
        let translated = format!("{to}{rest}");
        (!translated.is_empty()).then_some(translated)
    }
}

/// The MQTT version a bridge speaks to the remote broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum BridgeProtocol {
    /// MQTT 3.1.1 (Mosquitto's default, `mqttv311`).
    #[default]
    #[serde(rename = "3.1.1")]
    V311,
    /// MQTT 5 (`mqttv50`).
    #[serde(rename = "5")]
    V5,
}

/// One `[[bridges]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeConfig {
    /// The bridge's name (Mosquitto's `connection`): in logs and in
    /// `$SYS/broker/connection/NAME/state`. Letters, digits, `-`, `_`, `.`.
    pub name: String,
    /// The remote broker's `host:port`, then any to fail over to; each
    /// connection attempt starts from the first. Required.
    pub addresses: Vec<String>,
    /// The rules: what goes which way. At least one.
    pub topics: Vec<TopicRule>,
    /// `"3.1.1"` or `"5"`. Default "3.1.1".
    #[serde(default)]
    pub protocol: BridgeProtocol,
    /// The client id at the remote broker. Default `HOSTNAME.NAME`, as
    /// Mosquitto names its bridges.
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// A new session at the remote broker on every connection; false keeps
    /// one there, so what it queued for the bridge while the link was down
    /// comes over when it is back. Default false (Mosquitto's
    /// `cleansession false`).
    #[serde(default)]
    pub clean_start: bool,
    /// Keep-alive towards the remote broker, in seconds. Default 60.
    #[serde(default = "default_keepalive")]
    pub keepalive_secs: u16,
    /// MQTT 3.1.1: Mosquitto's bridge flag, which a remote Mosquitto or
    /// Tern takes to mean "do not send this client's messages back" (loop
    /// prevention where No Local does not exist). A remote that refuses the
    /// flagged CONNECT is retried without it. Default true.
    #[serde(default = "yes")]
    pub try_private: bool,
    /// Publish the link's state, retained, on
    /// `$SYS/broker/connection/NAME/state`: 1 connected, 0 not. Default true.
    #[serde(default = "yes")]
    pub notifications: bool,
    /// TLS: the CA certificate (PEM) to verify the remote broker with. Set,
    /// the bridge connects with TLS. Default none: plain TCP.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// TLS client certificate chain and key (PEM), if the remote asks for
    /// one. Default none.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The first wait before reconnecting, in milliseconds; each failed
    /// attempt waits longer (a random time up to three times the last one,
    /// "decorrelated jitter", so many bridges do not retry in step), up to
    /// `reconnect_max_ms`. Defaults 1000 and 30000.
    #[serde(default = "default_reconnect_min")]
    pub reconnect_min_ms: u64,
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max_ms: u64,
    /// Messages kept for the remote broker while the link is down (and
    /// beyond those in flight), instead of the broker-wide
    /// `max_queued_messages`: a bridge's queue is what rides out an outage.
    /// Further messages are dropped and counted. Default 100000.
    #[serde(default = "default_bridge_queue")]
    pub max_queued_messages: usize,
    /// Their payload bytes; 0 means no byte limit. Default 256 MiB.
    #[serde(default = "default_bridge_queue_bytes")]
    pub max_queued_bytes: usize,
}

fn default_bridge_queue() -> usize {
    100_000
}

fn default_bridge_queue_bytes() -> usize {
    256 * 1024 * 1024
}

fn default_keepalive() -> u16 {
    60
}

fn yes() -> bool {
    true
}

fn default_reconnect_min() -> u64 {
    1000
}

fn default_reconnect_max() -> u64 {
    30_000
}

impl BridgeConfig {
    /// A bridge to `address` with these rules, everything else by default.
    pub fn new(name: &str, address: &str, topics: Vec<TopicRule>) -> BridgeConfig {
        BridgeConfig {
            name: name.to_owned(),
            addresses: vec![address.to_owned()],
            topics,
            protocol: BridgeProtocol::default(),
            client_id: None,
            username: None,
            password: None,
            clean_start: false,
            keepalive_secs: default_keepalive(),
            try_private: true,
            notifications: true,
            ca_file: None,
            cert_file: None,
            key_file: None,
            reconnect_min_ms: default_reconnect_min(),
            reconnect_max_ms: default_reconnect_max(),
            max_queued_messages: default_bridge_queue(),
            max_queued_bytes: default_bridge_queue_bytes(),
        }
    }

    /// The client id at the remote broker.
    pub fn remote_client_id(&self) -> String {
        self.client_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_default();
            match host.is_empty() {
                true => self.name.clone(),
                false => format!("{host}.{}", self.name),
            }
        })
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |what: &str| {
            Err(ConfigError::Invalid(format!(
                "bridge {:?}: {what}",
                self.name
            )))
        };
        let name_ok = !self.name.is_empty()
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !name_ok {
            return invalid(
                "name must be letters, digits, '-', '_' and '.' (it names a $SYS topic)",
            );
        }
        if self.addresses.is_empty() {
            return invalid(
                "addresses must name the remote broker, e.g. [\"broker.example.com:1883\"]",
            );
        }
        if let Some(bad) = self.addresses.iter().find(|a| split_address(a).is_none()) {
            return invalid(&format!(
                "address {bad:?} is not host:port (e.g. \"broker.example.com:1883\")"
            ));
        }
        if self.topics.is_empty() {
            return invalid(
                "name at least one [[bridges.topics]] rule, e.g. pattern = \"sensors/#\"",
            );
        }
        for rule in &self.topics {
            let both_filters_ok = [true, false].iter().all(|&local| {
                let filter = rule.filter(local);
                !filter.is_empty() && is_valid_topic_filter(&filter)
            });
            if !both_filters_ok {
                return invalid(&format!(
                    "topic pattern {:?} with prefixes {:?} and {:?} is not a valid topic filter (an empty pattern needs both prefixes)",
                    rule.pattern, rule.local_prefix, rule.remote_prefix
                ));
            }
            let wild = |p: &str| p.contains(['+', '#']);
            if wild(&rule.local_prefix) || wild(&rule.remote_prefix) {
                return invalid("local_prefix and remote_prefix cannot hold + or #");
            }
            if rule.qos > 2 {
                return invalid("a topic rule's qos must be 0, 1 or 2");
            }
        }
        if self.username.is_none() && self.password.is_some() {
            return invalid("password needs username");
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return invalid("cert_file and key_file go together");
        }
        if self.cert_file.is_some() && self.ca_file.is_none() {
            return invalid("cert_file and key_file need ca_file (TLS)");
        }
        if self.max_queued_messages == 0 {
            return invalid("max_queued_messages must be at least 1");
        }
        if self.reconnect_min_ms == 0 || self.reconnect_max_ms < self.reconnect_min_ms {
            return invalid("reconnect_min_ms must be at least 1 and at most reconnect_max_ms");
        }
        Ok(())
    }

    pub(super) fn resolve_paths(&mut self, resolve: impl Fn(&mut PathBuf)) {
        self.ca_file.iter_mut().for_each(&resolve);
        self.cert_file.iter_mut().for_each(&resolve);
        self.key_file.iter_mut().for_each(&resolve);
    }
}

/// `host:port` (IPv6 in brackets) as its parts.
pub fn split_address(address: &str) -> Option<(String, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then(|| (host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    #[test]
    fn a_bridge_reads_as_mosquitto_would_write_it() {
        let config = Config::from_toml(
            r#"
            [[bridges]]
            name = "cloud"
            addresses = ["broker.example.com:8883", "[::1]:1883"]
            [[bridges.topics]]
            pattern = "sensors/#"
            direction = "both"
            qos = 1
            local_prefix = "site/"
            remote_prefix = "fleet/a/"
            [[bridges.topics]]
            pattern = "commands/#"
            direction = "in"
            "#,
        )
        .unwrap();
        let bridge = &config.bridges[0];
        assert_eq!(bridge.protocol, BridgeProtocol::V311);
        assert!(bridge.try_private && bridge.notifications && !bridge.clean_start);
        assert_eq!(
            split_address(&bridge.addresses[1]),
            Some(("::1".into(), 1883))
        );
        let rule = &bridge.topics[0];
        assert_eq!(rule.filter(true), "site/sensors/#");
        assert_eq!(rule.filter(false), "fleet/a/sensors/#");
        assert_eq!(
            rule.translate("site/sensors/t", true).as_deref(),
            Some("fleet/a/sensors/t")
        );
        assert_eq!(
            rule.translate("fleet/a/sensors/t", false).as_deref(),
            Some("site/sensors/t")
        );
        assert_eq!(rule.translate("elsewhere/t", false), None);
        assert_eq!(bridge.topics[1].direction, Direction::In);
        assert_eq!(bridge.topics[1].qos, 0);
    }

    #[test]
    fn bad_bridges_are_refused_with_what_to_write() {
        let err = |extra: &str, rule: &str| {
            Config::from_toml(&format!(
                "[[bridges]]\nname = \"b\"\naddresses = [\"h:1883\"]\n{extra}\n[[bridges.topics]]\n{rule}"
            ))
            .unwrap_err()
            .to_string()
        };
        assert!(err("", "pattern = \"a/#\"\nqos = 3").contains("qos"));
        assert!(err("", "pattern = \"a/#/b\"").contains("not a valid topic filter"));
        assert!(err("", "pattern = \"\"\nlocal_prefix = \"x/\"").contains("needs both prefixes"));
        assert!(err("", "pattern = \"#\"\nlocal_prefix = \"+/\"").contains("cannot hold"));
        assert!(err("password = \"p\"", "pattern = \"#\"").contains("needs username"));
        assert!(err("cert_file = \"c\"", "pattern = \"#\"").contains("go together"));
        assert!(err("protocol = \"4\"", "pattern = \"#\"").contains("protocol"));
        let no_port =
            "[[bridges]]\nname = \"b\"\naddresses = [\"h\"]\n[[bridges.topics]]\npattern = \"#\"";
        assert!(
            Config::from_toml(no_port)
                .unwrap_err()
                .to_string()
                .contains("host:port")
        );
        let twice = "[[bridges]]\nname = \"b\"\naddresses = [\"h:1\"]\n[[bridges.topics]]\npattern = \"#\"\n";
        assert!(
            Config::from_toml(&twice.repeat(2))
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
    }
}
