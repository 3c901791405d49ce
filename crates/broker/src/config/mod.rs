//! Broker configuration: every option, its default, and TOML loading.
//!
//! `Config::default()` is what `tern serve` runs with when given no file: one
//! anonymous listener on 127.0.0.1:1883, as Mosquitto 2 does without a config.
//! The same defaults are written out, commented, in `tern.example.toml` at the
//! repository root; a test keeps the two in step. Unknown keys are an error
//! that names the key, so a typo never silently falls back to a default.

mod auth_hook;
mod auth_jwt;
mod bridge;
mod webhook;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use self::auth_hook::AuthHookConfig;
pub use self::auth_jwt::AuthJwtConfig;
pub use self::bridge::{BridgeConfig, BridgeProtocol, Direction, TopicRule, split_address};
pub use self::webhook::{EVENTS as WEBHOOK_EVENTS, WebhookConfig, split_url};

/// How `tern serve` writes its log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One line of text per event, for people.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// How durable a commit is before the store reports it done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Each group commit is fsynced before it is reported: survives kill -9
    /// and power loss. The default, because it is what "acknowledged" means
    /// to a QoS 1/2 publisher.
    #[default]
    Fsync,
    /// Commits are written to the OS page cache but never fsynced: survives
    /// the broker being killed, not a power cut or kernel crash. For hosts
    /// where an fsync per group commit costs too much. A clean close still
    /// fsyncs once, so a stopped broker's file is safe.
    Os,
    /// The engine behaves as [`Durability::Os`]; the broker simply does not
    /// wait for commits before acknowledging. Exposed so the configuration
    /// names all three levels in one place.
    None,
}

/// All broker settings. Field docs give the default and why it was chosen.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address of the TCP listener. Default `127.0.0.1:1883`: loopback only,
    /// so a broker started without configuration is not open to the network.
    /// A host name (`localhost:1883`) is resolved once, at load.
    #[serde(deserialize_with = "socket_addr")]
    pub bind: SocketAddr,
    /// Largest packet accepted from a client, in bytes, announced to MQTT 5
    /// clients as Maximum Packet Size. Larger packets are refused from their
    /// fixed header, before they are buffered. Default 1 MiB.
    pub max_packet_size: u32,
    /// Largest keep-alive a client may ask for, in seconds; an MQTT 5 client
    /// asking for more (or for 0) is told this value as Server Keep Alive.
    /// Default 65535 (no limit).
    pub max_keepalive_secs: u16,
    /// How many QoS 2 messages a client may have sent us without PUBREL,
    /// announced to MQTT 5 clients as Receive Maximum. Default 1024.
    pub receive_maximum: u16,
    /// How many QoS 1/2 messages we send a client before its acknowledgements
    /// must catch up (capped further by the client's own Receive Maximum).
    /// Default 100.
    pub max_inflight_messages: u16,
    /// Topic aliases a client may use towards us (MQTT 5 Topic Alias Maximum).
    /// Default 10.
    pub topic_alias_maximum: u16,
    /// Messages queued per session beyond those in flight (offline sessions and
    /// slow readers). Further messages are dropped and counted. Default 1000.
    pub max_queued_messages: usize,
    /// Payload bytes queued per session; 0 means no byte limit. Default 64 MiB.
    pub max_queued_bytes: usize,
    /// Whether QoS 0 messages are queued for sessions that are offline.
    /// Default false, as in Mosquitto: QoS 0 promises nothing to the absent.
    pub queue_qos0_messages: bool,
    /// Highest QoS the broker accepts and grants (0, 1 or 2). Default 2.
    pub maximum_qos: u8,
    /// Whether retained messages are supported. Default true.
    pub retain_available: bool,
    /// Seconds between `$SYS/broker/...` updates; 0 disables them. Default 10.
    pub sys_interval_secs: u64,
    /// Seconds a new connection may take to send CONNECT before it is closed.
    /// Default 10.
    pub connect_timeout_secs: u64,
    /// Milliseconds a connection the broker ends (protocol error, limit,
    /// takeover, keep-alive) is kept half-open after its DISCONNECT, reading
    /// and discarding what the client still sends, so that a client busy
    /// sending reads the DISCONNECT and its reason code instead of a
    /// connection reset. 0 closes at once. Default 1000.
    pub disconnect_linger_ms: u64,
    /// The largest CONNECT accepted, in bytes: until a client has logged in
    /// this, not `max_packet_size`, bounds what it can make the broker hold.
    /// Default 131072 (room for a full 64 KiB will payload and a long token).
    pub max_connect_size: u32,
    /// Bytes all connections that have not finished CONNECT may have the
    /// broker hold together, beyond the first 4 KiB of each (which any
    /// ordinary CONNECT fits in). Past it such a connection is closed.
    /// Default 16 MiB.
    pub max_connecting_bytes: usize,
    /// Milliseconds without traffic after which a connection (TCP, TLS or
    /// WebSocket) is parked:
    /// its task ends and the socket waits in one shared epoll set, so an idle
    /// client costs a few hundred bytes instead of a few kilobytes. The first
    /// byte, delivery or keep-alive expiry resumes it (in microseconds).
    /// An eighth of this while more than 1024 connections are awake at once.
    /// 0 never parks. Default 1000.
    pub park_idle_ms: u64,
    /// Threads that run connections (`tern serve`'s runtime); 0, the
    /// default, is one per CPU core. Fewer cost less CPU per message at low
    /// rates (no wake-ups between threads: one thread costs 0.64x the CPU
    /// of two at 10,000 msg/s here) and cap the rate at what they can do.
    /// Read at start.
    pub worker_threads: usize,
    /// Keep persistent sessions (subscriptions, queued and in-flight QoS 1/2
    /// messages, QoS 2 state) and retained messages on disk, so they survive
    /// a restart or a crash. Default true; false keeps everything in memory.
    pub persistence: bool,
    /// Directory of the data file (`tern.redb`), created if missing. Default
    /// `tern-data` in the working directory; set in a config file, a relative
    /// path is relative to that file's folder (as every path there is).
    pub data_dir: PathBuf,
    /// When an acknowledgement that promises durability (PUBACK, PUBREC,
    /// PUBCOMP, SUBACK) is sent: `"fsync"` (default) after the change is
    /// fsynced (survives a crash and a power cut); `"os"` once it is written
    /// to the operating system (survives the broker being killed, not a power
    /// cut); `"none"` without waiting (a crash loses the last few
    /// milliseconds of acknowledged messages).
    pub durability: Durability,
    /// `tern serve`'s log lines: `"text"` (default) or `"json"` (one object
    /// per line, for log shippers).
    pub log_format: LogFormat,
    /// Append the log to this file instead of standard error (default none:
    /// standard error, which systemd's journal takes). Reopened on SIGHUP,
    /// for logrotate.
    pub log_file: Option<PathBuf>,
    /// The listeners, `[[listeners]]` in TOML. Empty (the default): one plain
    /// TCP listener on `bind`.
    pub listeners: Vec<ListenerConfig>,
    /// Whether clients without a username may connect, on listeners that do
    /// not set their own. Unset (the default): allowed unless a
    /// `password_file` is configured, as in Mosquitto.
    pub allow_anonymous: Option<bool>,
    /// Users and their salted password hashes, one `user:hash` per line, in
    /// Mosquitto's format (`tern passwd` writes it). Unset: no passwords are
    /// checked.
    pub password_file: Option<PathBuf>,
    /// Topic access rules in Mosquitto's `acl_file` syntax. Unset: every
    /// client may publish and subscribe to every topic.
    pub acl_file: Option<PathBuf>,
    /// Whether a client may connect with a client id whose session belongs
    /// to another user, taking it over (the session then ends). Default
    /// false: it is refused (CONNACK 0x85 Client Identifier not valid; MQTT
    /// 3.1.1: return code 2), so one user cannot kick another off or destroy
    /// its persistent session. true: as Mosquitto, the newcomer takes the
    /// client id over and starts a clean session.
    pub client_id_takeover_by_other_users: bool,
    /// Clients connected at once, over all listeners; 0 = no limit. Default 0.
    pub max_connections: usize,
    /// The longest a session is kept while its client is away, in seconds;
    /// 0 = no cap. It bounds the sessions that would otherwise never expire
    /// (MQTT 3.1.1 clean session 0, MQTT 5 expiry 0xFFFFFFFF), as Mosquitto's
    /// `persistent_client_expiration` does, and any longer MQTT 5 expiry
    /// (the client learns the value in force from CONNACK). Default 0, as in
    /// Mosquitto: a device may stay away for months and find its messages.
    pub max_session_expiry_secs: u32,
    /// Retained messages kept in all; 0 = no limit. Default 0.
    pub max_retained_messages: usize,
    /// Bytes (topic and payload) of retained messages kept in all; 0 = no
    /// limit. Default 0.
    pub max_retained_bytes: usize,
    /// Retained messages one user (by username) may have set; 0 = no limit.
    /// Default 0.
    pub max_retained_messages_per_user: usize,
    /// Bytes of retained messages one user may have set; 0 = no limit.
    /// Default 0.
    pub max_retained_bytes_per_user: usize,
    /// Messages published to `$delayed/SECONDS/TOPIC` waiting for their
    /// time, at most; one more is refused (0x97). Default 100,000.
    pub max_delayed_messages: usize,
    /// Subscriptions one session may hold; 0 = no limit. Default 10,000:
    /// every filter matching a topic costs its walk through the tree, so
    /// without a cap one client could make each publish cost millions.
    pub max_subscriptions_per_client: usize,
    /// Levels in a topic name or filter; 0 = no limit. Default 0.
    pub max_topic_levels: usize,
    /// PUBLISH packets per second one client may send; 0 = no limit. Default 0.
    pub max_publish_rate: u32,
    /// New connections per second from one IP address; 0 = no limit. Default 0.
    pub max_connection_rate: u32,
    /// Joins a cluster of Tern nodes over NATS (see docs/cluster.md). Default
    /// none: a single node, which never contacts NATS.
    pub cluster: Option<ClusterConfig>,
    /// The HTTP listener: Prometheus metrics, health checks, the admin API
    /// (see docs/operations.md). Default none: no HTTP listener.
    pub http: Option<HttpConfig>,
    /// Connections to other brokers (see docs/bridges.md). Default none.
    pub bridges: Vec<BridgeConfig>,
    /// HTTP endpoints told of connections, sessions and messages (see
    /// docs/operations.md). Default none.
    pub webhooks: Vec<WebhookConfig>,
    /// An HTTP service deciding logins (see docs/security.md). Default
    /// none: the password file and `allow_anonymous` decide.
    pub auth_hook: Option<AuthHookConfig>,
    /// JSON Web Tokens as passwords (see docs/security.md). Default none.
    pub auth_jwt: Option<AuthJwtConfig>,
}

/// The `[http]` section: where the HTTP listener listens and who may use it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to listen on. Default 127.0.0.1:8083: this machine only,
    /// until set otherwise.
    #[serde(default = "default_http_bind", deserialize_with = "socket_addr")]
    pub bind: SocketAddr,
    /// API tokens: a request with `Authorization: Bearer TOKEN` for one of
    /// them is let in. At least 16 characters each. Default none.
    #[serde(default)]
    pub tokens: Vec<String>,
    /// Users of `password_file` who may use the HTTP API with their MQTT
    /// password (`Authorization: Basic`): the admin role. Default none.
    #[serde(default)]
    pub admin_users: Vec<String>,
    /// TLS: the certificate chain and private key (PEM) to serve HTTPS with,
    /// as for an MQTT listener. Default none: plain HTTP.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

fn default_http_bind() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8083))
}

impl HttpConfig {
    /// An HTTP listener on `bind` with no credentials (only the health
    /// checks answer).
    pub fn on(bind: SocketAddr) -> HttpConfig {
        HttpConfig {
            bind,
            tokens: Vec::new(),
            admin_users: Vec::new(),
            cert_file: None,
            key_file: None,
        }
    }

    fn validate(&self, password_file: bool) -> Result<(), ConfigError> {
        let invalid = |what: &str| Err(ConfigError::Invalid(format!("[http]: {what}")));
        if self.tokens.iter().any(|t| t.len() < 16) {
            return invalid(
                "each of tokens must be at least 16 characters (e.g. `openssl rand -hex 24`)",
            );
        }
        if !self.admin_users.is_empty() && !password_file {
            return invalid("admin_users need password_file: their passwords are checked there");
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return invalid("cert_file and key_file go together");
        }
        Ok(())
    }
}

/// The `[cluster]` section: how this node reaches NATS and which cluster it
/// joins.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// NATS server URLs (`nats://host:4222`, `tls://host:4222`); the client
    /// connects to one and fails over to the others. Required.
    pub servers: Vec<String>,
    /// The cluster's name: every node of one cluster uses the same, and it
    /// prefixes the NATS subjects, so clusters can share a NATS system.
    /// Letters, digits, `-` and `_`. Default "tern".
    #[serde(default = "default_cluster_name")]
    pub name: String,
    /// This node's name, in logs and (later) in session ownership. Default:
    /// the host name.
    #[serde(default)]
    pub node: Option<String>,
    /// NATS credentials: a user and password, or a token. Default none.
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub token: Option<String>,
    /// CA certificate (PEM) to verify the NATS servers' TLS certificates
    /// against, for `tls://` URLs. Default: the system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Seconds to wait for NATS at start before refusing to start. Default 5.
    #[serde(default = "default_cluster_timeout")]
    pub connect_timeout_secs: u64,
    /// Copies NATS keeps of the cluster's streams (the retained messages):
    /// 1 to 5, at most the NATS servers in its cluster; 3 for a cluster of
    /// three, which then survives the loss of one. Default 1.
    #[serde(default = "default_replicas")]
    pub replicas: usize,
    /// Seconds a draining node (SIGTERM, SIGINT) waits for its clients'
    /// sessions to move to other nodes before it stops. Default 30.
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout_secs: u64,
    /// Seconds a QoS 1/2 message may wait to be stored in the cluster's
    /// messages stream (a stream leader election takes 4 to 9 s) before it
    /// is given up: not routed, not acknowledged, its client asked to use
    /// another node. Default 20.
    #[serde(default = "default_write_timeout")]
    pub write_timeout_secs: u64,
}

fn default_write_timeout() -> u64 {
    20
}

fn default_drain_timeout() -> u64 {
    30
}

fn default_replicas() -> usize {
    1
}

fn default_cluster_name() -> String {
    "tern".to_owned()
}

fn default_cluster_timeout() -> u64 {
    5
}

impl ClusterConfig {
    /// A cluster reached through `servers`, everything else by default.
    pub fn new(servers: Vec<String>) -> ClusterConfig {
        ClusterConfig {
            servers,
            name: default_cluster_name(),
            node: None,
            user: None,
            password: None,
            token: None,
            ca_file: None,
            connect_timeout_secs: default_cluster_timeout(),
            replicas: default_replicas(),
            drain_timeout_secs: default_drain_timeout(),
            write_timeout_secs: default_write_timeout(),
        }
    }

    /// This node's name: `node`, or the host's name.
    pub fn node_name(&self) -> String {
        self.node.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "tern".to_owned())
        })
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |what: &str| Err(ConfigError::Invalid(format!("[cluster]: {what}")));
        if self.servers.is_empty() {
            return invalid(
                "servers must name at least one NATS server, e.g. [\"nats://127.0.0.1:4222\"]",
            );
        }
        if let Some(bad) = self
            .servers
            .iter()
            .find(|s| !(s.starts_with("nats://") || s.starts_with("tls://")))
        {
            return invalid(&format!(
                "server {bad:?} is not a NATS URL: write nats://host:port (or tls://host:port)"
            ));
        }
        let name_ok = |n: &str| {
            !n.is_empty()
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if !name_ok(&self.name) {
            return invalid(
                "name must be letters, digits, '-' and '_' (it prefixes NATS subjects)",
            );
        }
        if !(1..=5).contains(&self.replicas) {
            return invalid("replicas must be 1 to 5 (and at most the NATS servers)");
        }
        if self.user.is_some() != self.password.is_some() {
            return invalid("user and password go together");
        }
        if self.token.is_some() && self.user.is_some() {
            return invalid("use either a token or a user and password, not both");
        }
        Ok(())
    }
}

/// The byte stream a listener speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerTransport {
    /// MQTT over plain TCP.
    #[default]
    Tcp,
    /// MQTT over TLS.
    Tls,
    /// MQTT over WebSocket.
    Ws,
    /// MQTT over WebSocket over TLS.
    Wss,
}

impl ListenerTransport {
    /// The name used in the configuration file: "tcp", "tls", "ws" or "wss".
    pub fn name(self) -> &'static str {
        match self {
            ListenerTransport::Tcp => "tcp",
            ListenerTransport::Tls => "tls",
            ListenerTransport::Ws => "ws",
            ListenerTransport::Wss => "wss",
        }
    }
}

/// One `[[listeners]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Address to listen on (a host name is resolved once, at load).
    #[serde(deserialize_with = "socket_addr")]
    pub bind: SocketAddr,
    /// `"tcp"` (default), `"tls"`, `"ws"` or `"wss"`.
    #[serde(default)]
    pub transport: ListenerTransport,
    /// Overrides the broker-wide `allow_anonymous` on this listener.
    #[serde(default)]
    pub allow_anonymous: Option<bool>,
    /// Clients connected at once on this listener; 0 = no limit.
    #[serde(default)]
    pub max_connections: usize,
    /// TLS: the certificate chain, PEM, leaf first.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// TLS: the private key, PEM.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// TLS: CA certificates (PEM) that client certificates are verified
    /// against. Unset: client certificates are not asked for.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// TLS: refuse clients without a valid certificate (needs `ca_file`).
    #[serde(default)]
    pub require_certificate: bool,
    /// TLS: the client certificate's Common Name is the client's username.
    #[serde(default)]
    pub use_identity_as_username: bool,
    /// WebSocket: the HTTP path to upgrade on. Default `/mqtt`.
    #[serde(default = "default_ws_path")]
    pub ws_path: String,
}

fn default_ws_path() -> String {
    "/mqtt".into()
}

impl ListenerConfig {
    /// "tcp 127.0.0.1:1883": how metrics and the admin API name it.
    pub fn label(&self) -> String {
        format!("{} {}", self.transport.name(), self.bind)
    }

    /// A plain TCP listener with every setting at its default.
    pub fn tcp(bind: SocketAddr) -> ListenerConfig {
        ListenerConfig {
            bind,
            transport: ListenerTransport::Tcp,
            allow_anonymous: None,
            max_connections: 0,
            cert_file: None,
            key_file: None,
            ca_file: None,
            require_certificate: false,
            use_identity_as_username: false,
            ws_path: default_ws_path(),
        }
    }
}

impl ListenerConfig {
    /// Checks the combinations of TLS and WebSocket settings.
    fn validate(&self) -> Result<(), ConfigError> {
        let tls = matches!(
            self.transport,
            ListenerTransport::Tls | ListenerTransport::Wss
        );
        let invalid = |what: &str| {
            Err(ConfigError::Invalid(format!(
                "{} listener {}: {what}",
                self.transport.name(),
                self.bind
            )))
        };
        if tls && (self.cert_file.is_none() || self.key_file.is_none()) {
            return invalid("transport tls and wss need cert_file and key_file (PEM)");
        }
        if !tls && (self.cert_file.is_some() || self.key_file.is_some() || self.ca_file.is_some()) {
            return invalid("cert_file, key_file and ca_file need transport = \"tls\" or \"wss\"");
        }
        if (self.require_certificate || self.use_identity_as_username) && self.ca_file.is_none() {
            return invalid(
                "require_certificate and use_identity_as_username need ca_file (the CA that signs client certificates)",
            );
        }
        if !self.ws_path.starts_with('/') {
            return invalid("ws_path must start with '/'");
        }
        Ok(())
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind: SocketAddr::from(([127, 0, 0, 1], 1883)),
            max_packet_size: 1024 * 1024,
            max_keepalive_secs: 65535,
            receive_maximum: 1024,
            max_inflight_messages: 100,
            topic_alias_maximum: 10,
            max_queued_messages: 1000,
            max_queued_bytes: 64 * 1024 * 1024,
            queue_qos0_messages: false,
            maximum_qos: 2,
            retain_available: true,
            sys_interval_secs: 10,
            connect_timeout_secs: 10,
            disconnect_linger_ms: 1000,
            max_connect_size: 128 * 1024,
            max_connecting_bytes: 16 * 1024 * 1024,
            park_idle_ms: 1000,
            worker_threads: 0,
            persistence: true,
            data_dir: PathBuf::from("tern-data"),
            durability: Durability::Fsync,
            log_format: LogFormat::Text,
            log_file: None,
            listeners: Vec::new(),
            allow_anonymous: None,
            password_file: None,
            acl_file: None,
            client_id_takeover_by_other_users: false,
            max_connections: 0,
            max_session_expiry_secs: 0,
            max_subscriptions_per_client: 10_000,
            max_retained_messages: 0,
            max_retained_bytes: 0,
            max_retained_messages_per_user: 0,
            max_retained_bytes_per_user: 0,
            max_delayed_messages: 100_000,
            cluster: None,
            http: None,
            bridges: Vec::new(),
            webhooks: Vec::new(),
            auth_hook: None,
            auth_jwt: None,
            max_topic_levels: 0,
            max_publish_rate: 0,
            max_connection_rate: 0,
        }
    }
}

/// Why a configuration could not be loaded. Each message names the file and,
/// for what is wrong inside it, the line, the key and the text at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {reason}")]
    Read {
        path: String,
        reason: std::io::Error,
    },
    #[error("invalid config file {path}, {message}")]
    Parse { path: String, message: String },
    /// A value out of range or settings that do not go together, in a
    /// configuration made in code (or TOML text without a file).
    #[error("invalid config: {0}")]
    Invalid(String),
    /// The same in a config file: the message names the file to fix.
    #[error("invalid config file {path}: {message}")]
    InvalidFile { path: String, message: String },
}

impl Config {
    /// A session's expiry within `max_session_expiry_secs` (0: no cap), so
    /// that no session, 3.1.1 persistent ones included, is kept for ever by
    /// accident. MQTT 5 clients learn the value in force from CONNACK.
    pub fn capped_expiry(&self, expiry_secs: u32) -> u32 {
        match self.max_session_expiry_secs {
            0 => expiry_secs,
            cap => expiry_secs.min(cap),
        }
    }

    /// Reads and validates a TOML file. Relative paths in it (`data_dir`,
    /// `password_file`, `acl_file`, a listener's certificate files) are
    /// relative to the file's folder, as Mosquitto users expect.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|reason| ConfigError::Read {
            path: path.display().to_string(),
            reason,
        })?;
        let mut config = Config::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.display().to_string(),
            message,
        })?;
        let folder = std::path::absolute(path)
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_default();
        config.resolve_paths(&folder, text_sets(&text, "data_dir"));
        config.validate().map_err(|e| match e {
            ConfigError::Invalid(message) => ConfigError::InvalidFile {
                path: path.display().to_string(),
                message,
            },
            other => other,
        })?;
        Ok(config)
    }

    /// Parses and validates TOML text (paths stay as written).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config = Config::parse(text).map_err(|message| ConfigError::Parse {
            path: "<text>".into(),
            message,
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Deserializes `text`; the error says where and what (see [`explain`]).
    fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| explain(text, &e))
    }

    /// Makes the relative paths set in a config file relative to `folder`.
    /// `data_dir` only if the file sets it: its default stays relative to
    /// the working directory.
    fn resolve_paths(&mut self, folder: &Path, data_dir_set: bool) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = folder.join(&*p);
            }
        };
        if data_dir_set {
            resolve(&mut self.data_dir);
        }
        self.password_file.iter_mut().for_each(resolve);
        self.acl_file.iter_mut().for_each(resolve);
        self.log_file.iter_mut().for_each(resolve);
        for l in &mut self.listeners {
            l.cert_file.iter_mut().for_each(resolve);
            l.key_file.iter_mut().for_each(resolve);
            l.ca_file.iter_mut().for_each(resolve);
        }
        if let Some(cluster) = &mut self.cluster {
            cluster.ca_file.iter_mut().for_each(resolve);
        }
        if let Some(http) = &mut self.http {
            http.cert_file.iter_mut().for_each(resolve);
            http.key_file.iter_mut().for_each(resolve);
        }
        for bridge in &mut self.bridges {
            bridge.resolve_paths(resolve);
        }
        for hook in &mut self.webhooks {
            hook.ca_file.iter_mut().for_each(resolve);
        }
        if let Some(hook) = &mut self.auth_hook {
            hook.ca_file.iter_mut().for_each(resolve);
        }
        if let Some(jwt) = &mut self.auth_jwt {
            jwt.public_key_file.iter_mut().for_each(resolve);
            jwt.jwks_file.iter_mut().for_each(resolve);
            jwt.ca_file.iter_mut().for_each(resolve);
        }
    }

    /// The listeners to open: `listeners`, or one TCP listener on `bind`.
    pub fn effective_listeners(&self) -> Vec<ListenerConfig> {
        if self.listeners.is_empty() {
            vec![ListenerConfig::tcp(self.bind)]
        } else {
            self.listeners.clone()
        }
    }

    /// Whether clients without a username may connect on the listener at
    /// `index`: its own `allow_anonymous`, else the broker-wide one, else
    /// only if no `password_file` is set (as in Mosquitto).
    pub fn allows_anonymous(&self, index: usize) -> bool {
        self.listeners
            .get(index)
            .and_then(|l| l.allow_anonymous)
            .or(self.allow_anonymous)
            .unwrap_or(self.password_file.is_none())
    }

    /// Checks values serde cannot: ranges and combinations.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(cluster) = &self.cluster {
            cluster.validate()?;
        }
        if let Some(http) = &self.http {
            http.validate(self.password_file.is_some())?;
        }
        if self.worker_threads > 1024 {
            return Err(ConfigError::Invalid(
                "worker_threads must be at most 1024 (0: one per CPU core)".into(),
            ));
        }
        if self.maximum_qos > 2 {
            return Err(ConfigError::Invalid("maximum_qos must be 0, 1 or 2".into()));
        }
        if self.receive_maximum == 0 || self.max_inflight_messages == 0 {
            return Err(ConfigError::Invalid(
                "receive_maximum and max_inflight_messages must be at least 1".into(),
            ));
        }
        if self.max_packet_size < 64 {
            return Err(ConfigError::Invalid(
                "max_packet_size must be at least 64 bytes".into(),
            ));
        }
        for listener in &self.listeners {
            listener.validate()?;
        }
        for hook in &self.webhooks {
            hook.validate()?;
        }
        if let Some(hook) = &self.auth_hook {
            hook.validate()?;
        }
        if let Some(jwt) = &self.auth_jwt {
            jwt.validate()?;
        }
        for (i, bridge) in self.bridges.iter().enumerate() {
            bridge.validate()?;
            if self.bridges[..i].iter().any(|b| b.name == bridge.name) {
                return Err(ConfigError::Invalid(format!(
                    "bridge {:?} is named twice: each bridge needs its own name",
                    bridge.name
                )));
            }
        }
        Ok(())
    }
}

/// Whether `text` sets the top-level `key` (a config file that does not
/// parse as a table never gets this far).
fn text_sets(text: &str, key: &str) -> bool {
    text.parse::<toml::Table>()
        .is_ok_and(|table| table.contains_key(key))
}

/// Deserializes an address: `IP:PORT`, or `HOST:PORT` resolved now (the
/// first address it resolves to).
fn socket_addr<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    parse_addr(&text).map_err(serde::de::Error::custom)
}

/// `IP:PORT` or `HOST:PORT` as an address, or what is wrong and what to
/// write instead. Also what `tern serve --bind` takes.
pub fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!(
            "`{text}` has no port: write it as \"{text}:1883\" (or the port you want)"
        ));
    };
    let Ok(port) = port.parse::<u16>() else {
        return Err(format!(
            "`{text}`: the port `{port}` is not a number from 0 to 65535"
        ));
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match (host, port).to_socket_addrs() {
        Ok(mut addrs) => addrs.next().ok_or_else(|| {
            format!("the host name `{host}` resolves to no address: use an IP address, such as \"127.0.0.1:{port}\" or \"0.0.0.0:{port}\"")
        }),
        Err(e) => Err(format!(
            "cannot resolve the host name `{host}` ({e}): use an IP address, such as \"127.0.0.1:{port}\" or \"0.0.0.0:{port}\""
        )),
    }
}

/// A TOML or value error as an operator reads it: line, column, key, the
/// line itself with the fault underlined, and a hint where one helps.
///
/// ```text
/// line 3, column 23, key `max_queued_messages`: invalid type: string "50", expected a whole number
///   3 | max_queued_messages = "50"
///     |                       ^^^^
/// ```
fn explain(text: &str, e: &toml::de::Error) -> String {
    let message = friendly(e.message());
    let Some(span) = e.span() else {
        return message;
    };
    let start = span.start.min(text.len());
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_no = text[..start].matches('\n').count() + 1;
    let line = text[line_start..].lines().next().unwrap_or("");
    let column = text[line_start..start].chars().count() + 1;
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim())
        .filter(|k| !k.is_empty() && !k.starts_with('['));
    let mut out = format!("line {line_no}, column {column}");
    if let Some(key) = key {
        out.push_str(&format!(", key `{key}`"));
    }
    out.push_str(&format!(": {message}"));
    let width = span
        .end
        .saturating_sub(span.start)
        .max(1)
        .min(line.len().saturating_sub(column - 1).max(1));
    let gutter = line_no.to_string().len();
    out.push_str(&format!(
        "\n  {line_no} | {line}\n  {:gutter$} | {:pad$}{}",
        "",
        "",
        "^".repeat(width),
        pad = column - 1
    ));
    if let Some(hint) = hint(line, &message) {
        out.push_str(&format!("\n  hint: {hint}"));
    }
    out
}

/// serde's wording, with Rust type names and the list of all keys replaced
/// by what a user can act on.
fn friendly(message: &str) -> String {
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let (field, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let known: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        let closest = known
            .iter()
            .map(|k| (strsim::levenshtein(field, k), *k))
            .min()
            .filter(|(d, k)| *d <= 2.max(k.len() / 4));
        return match closest {
            Some((_, k)) => format!("unknown key `{field}`: did you mean `{k}`?"),
            None => format!("unknown key `{field}` (tern.example.toml lists every key)"),
        };
    }
    let mut message = message.to_owned();
    for (rust, human) in [
        ("expected usize", "expected a whole number"),
        ("expected u64", "expected a whole number"),
        ("expected u32", "expected a whole number up to 4294967295"),
        ("expected u16", "expected a whole number up to 65535"),
        ("expected u8", "expected a whole number up to 255"),
        (
            "expected a boolean",
            "expected true or false (without quotes)",
        ),
    ] {
        message = message.replace(rust, human);
    }
    message
}

/// A hint for the classic slip: text (an address, a path) without quotes.
fn hint(line: &str, message: &str) -> Option<String> {
    let (key, value) = line.split_once('=')?;
    let value = value.trim();
    let unquoted = !value.starts_with(['"', '\'', '[', '{']);
    let textual = value.contains([':', '/']) || value.matches('.').count() > 1;
    (unquoted && textual && !message.contains("invalid type"))
        .then(|| format!("text needs quotes: {} = \"{value}\"", key.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_is_named() {
        let err = Config::from_toml("bnid = \"127.0.0.1:1\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("bnid"), "{err}");
    }

    fn parse_error(text: &str) -> String {
        Config::from_toml(text).unwrap_err().to_string()
    }

    #[test]
    fn a_wrong_type_names_line_column_key_and_text() {
        let err = parse_error("# limits\nmax_queued_messages = \"50\"\n");
        for part in [
            "line 2, column 23",
            "key `max_queued_messages`",
            "string \"50\"",
            "a whole number",
            "2 | max_queued_messages = \"50\"",
            "^^^^",
        ] {
            assert!(err.contains(part), "{part:?} missing in:\n{err}");
        }
        assert!(!err.contains("usize"), "{err}");
    }

    #[test]
    fn an_unknown_key_gets_a_suggestion_not_a_list() {
        let err = parse_error("max_packet_sise = 10");
        assert!(err.contains("did you mean `max_packet_size`?"), "{err}");
        assert!(!err.contains("expected one of"), "{err}");
        let err = parse_error("colour = 1");
        assert!(
            err.contains("unknown key `colour`") && err.contains("tern.example.toml"),
            "{err}"
        );
        let err = parse_error("[[listeners]]\nbind = \"127.0.0.1:1\"\ntransprt = \"ws\"");
        assert!(
            err.contains("line 3") && err.contains("did you mean `transport`?"),
            "{err}"
        );
    }

    #[test]
    fn addresses_say_what_is_missing() {
        let err = parse_error("bind = \"127.0.0.1\"");
        assert!(
            err.contains("has no port") && err.contains("\"127.0.0.1:1883\""),
            "{err}"
        );
        let err = parse_error("bind = 127.0.0.1:1885");
        assert!(err.contains("line 1"), "{err}");
        assert!(
            err.contains("hint: text needs quotes: bind = \"127.0.0.1:1885\""),
            "{err}"
        );
        let err = parse_error("bind = \"127.0.0.1:70000\"");
        assert!(err.contains("not a number from 0 to 65535"), "{err}");
        let err = parse_error("bind = \"no-such-host.invalid:1883\"");
        assert!(err.contains("use an IP address"), "{err}");
    }

    #[test]
    fn host_names_are_resolved() {
        let config = Config::from_toml("bind = \"localhost:1886\"").unwrap();
        assert!(config.bind.ip().is_loopback(), "{}", config.bind);
        assert_eq!(config.bind.port(), 1886);
        let config = Config::from_toml("[[listeners]]\nbind = \"localhost:8883\"").unwrap();
        assert!(config.listeners[0].bind.ip().is_loopback());
    }

    #[test]
    fn paths_in_a_file_are_relative_to_its_folder() {
        let dir = std::env::temp_dir().join(format!("tern-config-paths-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("tern.toml");
        std::fs::write(
            &file,
            "data_dir = \"data\"\npassword_file = \"passwd\"\nacl_file = \"/etc/tern/acl\"\n\
             [[listeners]]\nbind = \"127.0.0.1:8883\"\ntransport = \"tls\"\n\
             cert_file = \"certs/server.pem\"\nkey_file = \"certs/server.key\"\n",
        )
        .unwrap();
        let config = Config::from_file(&file).unwrap();
        assert_eq!(config.data_dir, dir.join("data"));
        assert_eq!(config.password_file, Some(dir.join("passwd")));
        assert_eq!(config.acl_file, Some(PathBuf::from("/etc/tern/acl")));
        assert_eq!(
            config.listeners[0].cert_file,
            Some(dir.join("certs/server.pem"))
        );
        assert_eq!(
            config.listeners[0].key_file,
            Some(dir.join("certs/server.key"))
        );
        // Not set in the file: the default stays in the working directory.
        std::fs::write(&file, "max_connections = 5\n").unwrap();
        assert_eq!(
            Config::from_file(&file).unwrap().data_dir,
            PathBuf::from("tern-data")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The OS's reason appears once, not again as a chained cause.
    #[test]
    fn a_missing_file_is_one_message() {
        let err = Config::from_file(Path::new("/nonexistent/tern.toml")).unwrap_err();
        assert!(std::error::Error::source(&err).is_none());
        let text = err.to_string();
        assert!(
            text.contains("/nonexistent/tern.toml") && text.contains("No such file"),
            "{text}"
        );
    }

    /// A value that parses but is out of range: the message names the file.
    #[test]
    fn an_invalid_value_in_a_file_names_the_file() {
        let dir = std::env::temp_dir().join(format!("tern-config-invalid-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("tern.toml");
        std::fs::write(&file, "maximum_qos = 3\n").unwrap();
        let err = Config::from_file(&file).unwrap_err();
        assert!(matches!(err, ConfigError::InvalidFile { .. }), "{err:?}");
        let text = err.to_string();
        assert_eq!(
            text,
            format!(
                "invalid config file {}: maximum_qos must be 0, 1 or 2",
                file.display()
            )
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn durability_reads_from_config() {
        #[derive(serde::Deserialize)]
        struct C {
            d: Durability,
        }
        let read = |v: &str| toml::from_str::<C>(&format!("d = \"{v}\"")).map(|c| c.d);
        assert_eq!(read("fsync").unwrap(), Durability::Fsync);
        assert_eq!(read("os").unwrap(), Durability::Os);
        assert_eq!(read("none").unwrap(), Durability::None);
        assert!(read("Fsync").is_err());
        assert_eq!(Durability::default(), Durability::Fsync);
    }

    #[test]
    fn example_file_matches_defaults() {
        let text = include_str!("../../../../tern.example.toml");
        let uncommented: String = text
            .lines()
            .filter_map(|l| l.strip_prefix("# ").filter(|l| l.contains(" = ")))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(Config::from_toml(&uncommented).unwrap(), Config::default());
    }

    #[test]
    fn the_http_section_is_checked() {
        let http = Config::from_toml("[http]").unwrap().http.unwrap();
        assert_eq!(http.bind, "127.0.0.1:8083".parse().unwrap());
        let err = |text: &str| Config::from_toml(text).unwrap_err().to_string();
        assert!(err("[http]\ntokens = [\"short\"]").contains("16 characters"));
        assert!(err("[http]\nadmin_users = [\"a\"]").contains("password_file"));
        assert!(err("[http]\ncert_file = \"c\"").contains("go together"));
        assert!(err("[http]\nport = 1").contains("unknown key"));
    }

    #[test]
    fn invalid_values_are_refused() {
        assert!(Config::from_toml("maximum_qos = 3").is_err());
        assert!(Config::from_toml("receive_maximum = 0").is_err());
    }

    #[test]
    fn listener_combinations_are_checked() {
        let listener = |extra: &str| {
            Config::from_toml(&format!(
                "[[listeners]]\nbind = \"127.0.0.1:8883\"\n{extra}"
            ))
        };
        let err = listener("transport = \"tls\"").unwrap_err().to_string();
        assert!(
            err.contains("127.0.0.1:8883") && err.contains("cert_file"),
            "{err}"
        );
        assert!(listener("transport = \"wss\"\ncert_file = \"c\"").is_err());
        assert!(listener("cert_file = \"c\"\nkey_file = \"k\"").is_err());
        let tls = "transport = \"tls\"\ncert_file = \"c\"\nkey_file = \"k\"\n";
        assert!(listener(tls).is_ok());
        assert!(listener(&format!("{tls}require_certificate = true")).is_err());
        assert!(listener(&format!("{tls}use_identity_as_username = true")).is_err());
        assert!(
            listener(&format!(
                "{tls}ca_file = \"ca\"\nrequire_certificate = true"
            ))
            .is_ok()
        );
        assert!(listener("transport = \"ws\"\nws_path = \"mqtt\"").is_err());
        assert!(listener("transport = \"ws\"\nws_path = \"/ws\"").is_ok());
    }
}
