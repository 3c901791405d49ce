//! `tern import mosquitto.conf`: writes the tern.toml that does what a
//! Mosquitto configuration does, for the people moving from Mosquitto.
//!
//! Mosquitto's file is a list of `option value` lines; listener options apply
//! to the latest `listener` line, `include_dir` pulls in a folder's `*.conf`
//! files in name order, and a `connection` line starts a bridge. Each line is
//! translated to its tern key (listeners become `[[listeners]]` sections,
//! bridges `[[bridges]]` ones) or kept as a comment saying why it was not;
//! the lines whose loss changes what clients see (plugins, certificate
//! revocation, mount points, a bridge's PSK, …)
//! make the command exit with 3, after writing the rest. The result is
//! checked by loading it as `tern serve` would before it is written.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Arguments of `tern import`.
#[derive(clap::Args)]
#[command(after_help = "\
Reads a Mosquitto configuration (with its include_dir folders) and writes the
equivalent tern.toml. A line that cannot be carried over is kept in the output
as a comment that says why. Mosquitto's data file (mosquitto.db) is not read:
sessions and retained messages start empty.

Exit codes:
  0  every line was carried over, or only lines that change nothing clients see
  1  error (the file cannot be read, the output cannot be written)
  3  written, but something important could not be carried over (see the
     comments marked IMPORTANT): check it before you switch

Examples:
  tern import /etc/mosquitto/mosquitto.conf -o /etc/tern/tern.toml
  tern import mosquitto.conf > tern.toml")]
pub struct ImportArgs {
    /// The Mosquitto configuration file.
    file: PathBuf,
    /// Where to write tern.toml [default: standard output]. An existing file
    /// is not overwritten.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
}

/// Runs `tern import`.
pub fn run(args: ImportArgs) -> ExitCode {
    let lines = match read(&args.file) {
        Ok(lines) => lines,
        Err(message) => return fail(&message),
    };
    let mut t = Translation::default();
    for line in &lines {
        t.line(line);
    }
    let text = t.render(&args.file);
    if let Err(e) = tern_broker::Config::from_toml(&text) {
        return fail(&format!(
            "the translation does not load as a tern configuration ({e}); please report this with your mosquitto.conf"
        ));
    }
    match &args.output {
        Some(path) => {
            if path.exists() {
                return fail(&format!(
                    "{} exists: tern import does not overwrite it; name another file",
                    path.display()
                ));
            }
            if let Err(e) = std::fs::write(path, &text) {
                return fail(&format!("cannot write {}: {e}", path.display()));
            }
        }
        None => print!("{text}"),
    }
    let important = t.notes.iter().filter(|n| n.important).count();
    eprintln!(
        "tern import: {} lines read, {} carried over, {} kept as comments ({important} important){}",
        lines.len(),
        t.translated,
        t.notes.len(),
        args.output
            .as_ref()
            .map(|p| format!("; wrote {}", p.display()))
            .unwrap_or_default()
    );
    for note in t.notes.iter().filter(|n| n.important) {
        eprintln!("  IMPORTANT {}: {}: {}", note.at, note.line, note.why);
    }
    if important > 0 {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("tern import: {message}");
    ExitCode::FAILURE
}

/// One line of the configuration, with where it came from.
struct Line {
    at: String,
    /// The folder relative paths in it are relative to.
    folder: PathBuf,
    key: String,
    args: Vec<String>,
    text: String,
}

impl Line {
    /// Where it came from and what it said, for the comment above its
    /// translation.
    fn source(&self) -> String {
        format!("{}: {}", self.at, self.text)
    }
}

/// The lines of `file` and of the folders its `include_dir` lines name, in
/// the order Mosquitto reads them.
fn read(file: &Path) -> Result<Vec<Line>, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let folder = std::path::absolute(file)
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    let name = file.display().to_string();
    let mut lines = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let mut words = trimmed.split_whitespace().map(str::to_owned);
        let key = words.next().unwrap_or_default();
        let args: Vec<String> = words.collect();
        if key == "include_dir" {
            let dir = resolve(&folder, args.first().map_or("", String::as_str));
            let mut confs: Vec<PathBuf> = std::fs::read_dir(&dir)
                .map_err(|e| format!("{name}:{}: include_dir {}: {e}", n + 1, dir.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "conf"))
                .collect();
            confs.sort();
            for conf in confs {
                lines.extend(read(&conf)?);
            }
            continue;
        }
        lines.push(Line {
            at: format!("{name}:{}", n + 1),
            folder: folder.clone(),
            key,
            args,
            text: trimmed.to_owned(),
        });
    }
    Ok(lines)
}

/// A path as Mosquitto would find it (relative to the file that names it),
/// written absolute so the tern.toml can live anywhere.
fn resolve(folder: &Path, path: &str) -> PathBuf {
    let path = Path::new(path);
    if path.is_relative() {
        folder.join(path)
    } else {
        path.to_path_buf()
    }
}

/// A line kept as a comment.
struct Note {
    at: String,
    line: String,
    why: String,
    important: bool,
}

/// One `[[listeners]]` section being built.
#[derive(Default)]
struct Listener {
    from: String,
    bind: String,
    websockets: bool,
    keys: Vec<(String, String)>,
}

impl Listener {
    fn set(&mut self, key: &str, value: String) {
        self.keys.retain(|(k, _)| k != key);
        self.keys.push((key.to_owned(), value));
    }

    fn has(&self, key: &str) -> bool {
        self.keys.iter().any(|(k, _)| k == key)
    }
}

/// One `[[bridges]]` section being built, from a `connection` line on.
#[derive(Default)]
struct Bridge {
    from: String,
    name: String,
    keys: Vec<(String, String)>,
    /// Each `topic` line's keys.
    topics: Vec<Vec<(String, String)>>,
}

impl Bridge {
    fn set(&mut self, key: &str, value: String) {
        self.keys.retain(|(k, _)| k != key);
        self.keys.push((key.to_owned(), value));
    }
}

#[derive(Default)]
struct Translation {
    /// Broker-wide keys: (key, TOML value, where from).
    keys: Vec<(String, String, String)>,
    listeners: Vec<Listener>,
    /// Mosquitto's `port` / `bind_address` (its default listener, before
    /// any `listener` line).
    default_port: Option<(String, String)>,
    default_bind: Option<String>,
    per_listener_settings: bool,
    /// The `connection` sections; the last is the one being read.
    bridges: Vec<Bridge>,
    notes: Vec<Note>,
    translated: usize,
}

/// A Mosquitto argument: `""` stands for the empty string.
fn unquote(arg: &str) -> &str {
    if arg == "\"\"" { "" } else { arg }
}

/// A TOML string.
fn quoted(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

fn bool_value(arg: &str) -> Option<String> {
    match arg {
        "true" => Some("true".into()),
        "false" => Some("false".into()),
        _ => None,
    }
}

/// A Mosquitto duration (`3600`, `1h`, `2d`, `1w`, `1m`, `1y`) in seconds.
fn seconds(arg: &str) -> Option<u64> {
    let (digits, unit) = arg.split_at(arg.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = digits.parse().ok()?;
    let scale = match unit {
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        "m" => 30 * 86_400,
        "y" => 365 * 86_400,
        _ => return None,
    };
    Some(n * scale)
}

impl Translation {
    fn note(&mut self, line: &Line, important: bool, why: impl Into<String>) {
        self.notes.push(Note {
            at: line.at.clone(),
            line: line.text.clone(),
            why: why.into(),
            important,
        });
    }

    fn global(&mut self, line: &Line, key: &str, value: String) {
        self.keys.retain(|(k, _, _)| k != key);
        self.keys.push((key.to_owned(), value, line.source()));
        self.translated += 1;
    }

    fn listener(&mut self, line: &Line, key: &str, value: String) {
        match self.listeners.last_mut() {
            Some(l) => {
                l.set(key, value);
                self.translated += 1;
            }
            None => self.note(
                line,
                true,
                format!("a listener option before any `listener` line; tern's `{key}` belongs to a [[listeners]] section"),
            ),
        }
    }

    fn line(&mut self, line: &Line) {
        let arg = line.args.first().map(String::as_str).unwrap_or("");
        if line.key == "connection" {
            self.bridges.push(Bridge {
                from: line.source(),
                name: arg.to_owned(),
                ..Bridge::default()
            });
            self.translated += 1;
            return;
        }
        // A bridge's options follow its `connection` line; Mosquitto reads
        // every other option wherever it is.
        if !self.bridges.is_empty() && self.bridge_line(line) {
            return;
        }
        let number = |s: &str| s.parse::<i64>().ok();
        match line.key.as_str() {
            "per_listener_settings" => {
                self.per_listener_settings = arg == "true";
                self.translated += 1;
            }
            "listener" => {
                let port = arg.to_owned();
                if port == "0" || line.args.get(1).is_some_and(|a| a.starts_with('/')) {
                    return self.note(line, true, "Unix sockets are not supported by tern");
                }
                let host = match line.args.get(1).map(String::as_str) {
                    None => "0.0.0.0".to_owned(),
                    Some(h) if h.contains(':') => format!("[{h}]"),
                    Some(h) => h.to_owned(),
                };
                self.listeners.push(Listener {
                    from: line.source(),
                    bind: format!("{host}:{port}"),
                    ..Listener::default()
                });
                self.translated += 1;
            }
            "port" => {
                self.default_port = Some((arg.to_owned(), line.source()));
                self.translated += 1;
            }
            "bind_address" => {
                self.default_bind = Some(arg.to_owned());
                self.translated += 1;
            }
            "protocol" => match arg {
                "websockets" => match self.listeners.last_mut() {
                    Some(l) => {
                        l.websockets = true;
                        self.translated += 1;
                    }
                    None => self.note(line, true, "websockets on the default listener: add a `listener` line"),
                },
                "mqtt" => self.translated += 1,
                _ => self.note(line, true, "an unknown protocol"),
            },
            "certfile" => self.listener(line, "cert_file", quoted(&resolve(&line.folder, arg).display().to_string())),
            "keyfile" => self.listener(line, "key_file", quoted(&resolve(&line.folder, arg).display().to_string())),
            "cafile" => self.listener(line, "ca_file", quoted(&resolve(&line.folder, arg).display().to_string())),
            "require_certificate" | "use_identity_as_username" => match bool_value(arg) {
                Some(v) => self.listener(line, &line.key.clone(), v),
                None => self.note(line, true, "not true or false"),
            },
            "allow_anonymous" => match bool_value(arg) {
                Some(v) if self.per_listener_settings && !self.listeners.is_empty() => {
                    self.listener(line, "allow_anonymous", v)
                }
                Some(v) => self.global(line, "allow_anonymous", v),
                None => self.note(line, true, "not true or false"),
            },
            "password_file" | "acl_file" => {
                if self.per_listener_settings && self.listeners.len() > 1 {
                    self.note(line, true, "tern has one password file and one ACL for all listeners: this one applies to every listener");
                }
                let path = quoted(&resolve(&line.folder, arg).display().to_string());
                self.global(line, &line.key.clone(), path);
            }
            "max_connections" => match number(arg) {
                Some(n) => {
                    let value = n.max(0).to_string();
                    if self.listeners.is_empty() {
                        self.global(line, "max_connections", value)
                    } else {
                        self.listener(line, "max_connections", value)
                    }
                }
                None => self.note(line, true, "not a number"),
            },
            "persistence" => match bool_value(arg) {
                Some(v) => self.global(line, "persistence", v),
                None => self.note(line, true, "not true or false"),
            },
            "persistence_location" => {
                let dir = resolve(&line.folder, arg).display().to_string();
                self.global(line, "data_dir", quoted(&dir));
                self.note(line, false, "tern keeps its own data file (tern.redb) there; Mosquitto's mosquitto.db is not read: sessions and retained messages start empty (run from the Debian package, tern may write /var/lib/tern only)");
            }
            "persistence_file" => self.note(line, false, "tern's data file is always tern.redb in data_dir"),
            "autosave_interval" | "autosave_on_changes" => self.note(
                line,
                false,
                "tern writes each change to its data file as it happens (see durability in tern.example.toml)",
            ),
            "max_inflight_messages" | "max_queued_messages" | "max_queued_bytes" | "max_packet_size" => match number(arg) {
                Some(0) if line.key != "max_packet_size" => self.note(line, false, "0 (no limit) has no tern equivalent: tern's default limit stays"),
                Some(n) if n > 0 => self.global(line, &line.key.clone(), n.to_string()),
                _ => self.note(line, true, "not a usable number"),
            },
            "message_size_limit" => match number(arg) {
                Some(n) if n > 0 => {
                    self.global(line, "max_packet_size", (n + 1024).to_string());
                    self.note(line, false, "tern limits whole packets (max_packet_size), not payloads: set to the limit plus 1 KB of headers");
                }
                _ => self.note(line, false, "no limit: tern's default max_packet_size stays"),
            },
            "max_keepalive" => match number(arg) {
                Some(n) if (1..=65535).contains(&n) => self.global(line, "max_keepalive_secs", n.to_string()),
                _ => self.note(line, false, "outside 1 to 65535: tern's default stays"),
            },
            "sys_interval" => match number(arg) {
                Some(n) if n >= 0 => self.global(line, "sys_interval_secs", n.to_string()),
                _ => self.note(line, true, "not a number"),
            },
            "retain_available" | "queue_qos0_messages" => match bool_value(arg) {
                Some(v) => self.global(line, &line.key.clone(), v),
                None => self.note(line, true, "not true or false"),
            },
            "max_qos" => match number(arg) {
                Some(n) if (0..=2).contains(&n) => self.global(line, "maximum_qos", n.to_string()),
                _ => self.note(line, true, "not 0, 1 or 2"),
            },
            "persistent_client_expiration" => match seconds(arg) {
                Some(s) => {
                    self.global(line, "max_session_expiry_secs", s.min(u64::from(u32::MAX)).to_string());
                    self.note(line, false, "tern caps every session's expiry at this, MQTT 5 ones included");
                }
                None => self.note(line, true, "not a duration (like 1h, 2d, 1w)"),
            },
            "log_dest" => match arg {
                "file" => {
                    let path = line.args.get(1).map_or(String::new(), |p| resolve(&line.folder, p).display().to_string());
                    self.global(line, "log_file", quoted(&path));
                    self.note(line, false, "under systemd, leaving log_file unset sends the log to the journal; the Debian package's tern user may not write Mosquitto's log folder");
                }
                "stderr" | "stdout" | "syslog" | "none" => self.note(line, false, "tern logs to standard error (the journal under systemd), or to log_file"),
                _ => self.note(line, false, "tern logs to standard error or to log_file"),
            },
            "log_type" | "log_timestamp" | "log_timestamp_format" | "connection_messages" | "websockets_log_level" | "log_facility" => {
                self.note(line, false, "tern's log level is set with RUST_LOG (default info)")
            }
            "user" | "pid_file" => self.note(line, false, "the service manager's job: the Debian package's unit runs tern as the `tern` user"),
            "set_tcp_nodelay" => self.note(line, false, "tern always sets TCP_NODELAY"),
            "allow_zero_length_clientid" | "auto_id_prefix" => self.note(line, false, "tern assigns an id to an MQTT 5 client that sends none, as MQTT 5 says"),
            "http_dir" => self.note(line, false, "tern's HTTP listener ([http]) serves its own dashboard, not a folder"),
            "socket_domain" => self.note(line, false, "tern listens on the address family of the listener's address"),
            "capath" | "crlfile" | "psk_hint" | "psk_file" | "mount_point" | "bind_interface" | "use_subject_as_username" | "clientid_prefixes" | "plugin" | "auth_plugin" | "dhparamfile" | "tls_engine" | "tls_keyform" | "tls_engine_kpass_sha1" => {
                self.note(line, true, "not supported by tern: what it enforces is not carried over")
            }
            "ciphers" | "ciphers_tls1.3" | "tls_version" => self.note(line, false, "tern offers TLS 1.2 and 1.3 with rustls's safe default ciphers"),
            key if key.starts_with("plugin_opt_") || key.starts_with("auth_opt_") => {
                self.note(line, true, "plugins are not supported by tern")
            }
            "check_retain_source" | "upgrade_outgoing_qos" | "allow_duplicate_messages" | "memory_limit" | "max_inflight_bytes" | "max_queued_bytes_per_client" | "retry_interval" | "store_clean_interval" | "enable_control_api" => {
                self.note(line, false, "no tern equivalent")
            }
            _ => self.note(line, false, "an option tern does not know"),
        }
    }

    /// Translates a line of the last `connection` section; false if it is
    /// not a bridge option.
    fn bridge_line(&mut self, line: &Line) -> bool {
        let args = &line.args;
        let arg = args.first().map(String::as_str).unwrap_or("");
        let set = |key: &str, value: Option<String>| (key.to_owned(), value);
        let (key, value) = match line.key.as_str() {
            "address" | "addresses" => {
                let addresses: Vec<String> = args
                    .iter()
                    .map(|a| match a.rsplit_once(':') {
                        Some(_) => quoted(a),
                        None => quoted(&format!("{a}:1883")),
                    })
                    .collect();
                set("addresses", Some(format!("[{}]", addresses.join(", "))))
            }
            "topic" => {
                let mut rule = vec![("pattern".to_owned(), quoted(unquote(arg)))];
                if let Some(direction) = args.get(1) {
                    rule.push(("direction".into(), quoted(direction)));
                }
                if let Some(qos) = args.get(2) {
                    rule.push(("qos".into(), qos.clone()));
                }
                if let (Some(local), Some(remote)) = (args.get(3), args.get(4)) {
                    rule.push(("local_prefix".into(), quoted(unquote(local))));
                    rule.push(("remote_prefix".into(), quoted(unquote(remote))));
                }
                if let Some(bridge) = self.bridges.last_mut() {
                    bridge.topics.push(rule);
                }
                self.translated += 1;
                return true;
            }
            "bridge_protocol_version" => set(
                "protocol",
                match arg {
                    "mqttv311" => Some(quoted("3.1.1")),
                    "mqttv50" => Some(quoted("5")),
                    _ => None,
                },
            ),
            "remote_clientid" | "clientid" => set("client_id", Some(quoted(arg))),
            "remote_username" | "username" => set("username", Some(quoted(arg))),
            "remote_password" | "password" => set("password", Some(quoted(arg))),
            "cleansession" => set("clean_start", bool_value(arg)),
            "keepalive_interval" => set(
                "keepalive_secs",
                arg.parse::<u16>().ok().map(|n| n.to_string()),
            ),
            "try_private" => set("try_private", bool_value(arg)),
            "notifications" => set("notifications", bool_value(arg)),
            "bridge_cafile" => set(
                "ca_file",
                Some(quoted(&resolve(&line.folder, arg).display().to_string())),
            ),
            "bridge_certfile" => set(
                "cert_file",
                Some(quoted(&resolve(&line.folder, arg).display().to_string())),
            ),
            "bridge_keyfile" => set(
                "key_file",
                Some(quoted(&resolve(&line.folder, arg).display().to_string())),
            ),
            "restart_timeout" => {
                let secs: Vec<u64> = args.iter().filter_map(|a| a.parse().ok()).collect();
                let (min, max) = match secs[..] {
                    [constant] => (constant, constant),
                    [base, cap] => (base, cap),
                    _ => (0, 0),
                };
                if min == 0 || max < min {
                    self.note(
                        line,
                        true,
                        "not a restart timeout tern reads (seconds, or base and cap)",
                    );
                    return true;
                }
                if let Some(bridge) = self.bridges.last_mut() {
                    bridge.set("reconnect_min_ms", (min * 1000).to_string());
                    bridge.set("reconnect_max_ms", (max * 1000).to_string());
                }
                self.translated += 1;
                return true;
            }
            "round_robin"
            | "local_clientid"
            | "local_username"
            | "local_password"
            | "bridge_attempt_unsubscribe"
            | "bridge_outgoing_retain"
            | "bridge_max_packet_size"
            | "bridge_receive_maximum"
            | "bridge_session_expiry_interval"
            | "bridge_tls_version"
            | "notification_topic"
            | "notifications_local_only"
            | "idle_timeout"
            | "threshold" => {
                let why = match line.key.as_str() {
                    "round_robin" => {
                        "tern's bridges always try the addresses from the first (round_robin false)"
                    }
                    "local_clientid" | "local_username" | "local_password" => {
                        "a tern bridge's session here is internal ($bridge/NAME) and needs no login"
                    }
                    _ => "not a bridge option of tern: its default applies",
                };
                self.note(line, false, why);
                return true;
            }
            "start_type" if arg == "automatic" => {
                self.translated += 1;
                return true;
            }
            "start_type"
            | "bridge_capath"
            | "bridge_insecure"
            | "bridge_identity"
            | "bridge_psk"
            | "bridge_alpn"
            | "bridge_bind_address"
            | "bridge_require_ocsp" => {
                self.note(
                    line,
                    true,
                    "tern's bridges do not have this: the bridge is carried over without it",
                );
                return true;
            }
            _ => return false,
        };
        match value {
            Some(value) => {
                if let Some(bridge) = self.bridges.last_mut() {
                    bridge.set(&key, value);
                }
                self.translated += 1;
            }
            None => self.note(line, true, format!("not a value tern's `{key}` takes")),
        }
        true
    }

    fn render(&mut self, source: &Path) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# Translated from {} by `tern import` (tern {}).\n# Every option with its default: tern.example.toml.\n",
            source.display(),
            env!("CARGO_PKG_VERSION")
        );
        // Mosquitto's default listener, from the old `port`/`bind_address`.
        if let Some((port, from)) = self.default_port.take() {
            let host = self.default_bind.take().unwrap_or_else(|| "0.0.0.0".into());
            self.listeners.insert(
                0,
                Listener {
                    from,
                    bind: format!("{host}:{port}"),
                    ..Listener::default()
                },
            );
        }
        // Mosquitto 2 refuses anonymous clients on listeners of its own
        // configuration unless told otherwise; tern allows them without a
        // password file. Say it explicitly so nothing opens up.
        let anonymous_set = self.keys.iter().any(|(k, _, _)| k == "allow_anonymous")
            || self.listeners.iter().any(|l| l.has("allow_anonymous"));
        if !self.listeners.is_empty() && !anonymous_set {
            self.keys.push((
                "allow_anonymous".into(),
                "false".into(),
                "Mosquitto 2's default once listeners are configured".into(),
            ));
        }
        for (key, value, from) in &self.keys {
            let _ = writeln!(out, "# {from}\n{key} = {value}");
        }
        for l in &self.listeners {
            let tls = l.has("cert_file");
            let transport = match (l.websockets, tls) {
                (false, false) => "tcp",
                (false, true) => "tls",
                (true, false) => "ws",
                (true, true) => "wss",
            };
            let _ = writeln!(
                out,
                "\n# {}\n[[listeners]]\nbind = {}\ntransport = {}",
                l.from,
                quoted(&l.bind),
                quoted(transport)
            );
            if l.websockets {
                // Mosquitto's WebSocket listener upgrades on any path.
                let _ = writeln!(
                    out,
                    "ws_path = \"/mqtt\"  # MQTT.js and paho's default; Mosquitto accepts any path"
                );
            }
            for (key, value) in &l.keys {
                let _ = writeln!(out, "{key} = {value}");
            }
        }
        for b in &self.bridges {
            let _ = writeln!(
                out,
                "\n# {}\n[[bridges]]\nname = {}",
                b.from,
                quoted(&b.name)
            );
            for (key, value) in &b.keys {
                let _ = writeln!(out, "{key} = {value}");
            }
            for rule in &b.topics {
                let _ = writeln!(out, "[[bridges.topics]]");
                for (key, value) in rule {
                    let _ = writeln!(out, "{key} = {value}");
                }
            }
        }
        if !self.notes.is_empty() {
            let _ = writeln!(out, "\n# Not carried over:");
            for n in &self.notes {
                let mark = if n.important { "IMPORTANT " } else { "" };
                let _ = writeln!(out, "# {mark}{}: {}\n#   {}", n.at, n.line, n.why);
            }
        }
        out
    }
}
