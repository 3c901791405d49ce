//! `tern import mosquitto.conf`: what each kind of Mosquitto line becomes,
//! read back as `tern serve` reads its configuration. (A real Mosquitto,
//! mosquitto_passwd and the Mosquitto clients meet the result in
//! tests/interop/test_import.py.)

mod common;

use common::Dir;

use std::path::Path;
use std::process::{Command, Output};

use tern_broker::Config;
use tern_broker::config::{BridgeProtocol, Direction, ListenerTransport};

fn import(conf: &Path, out: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tern"))
        .arg("import")
        .arg(conf)
        .arg("-o")
        .arg(out)
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn listeners_security_and_limits_become_their_tern_keys() {
    let dir = Dir::new("import-full");
    dir.write(
        "conf.d/tls.conf",
        "listener 8883\ncertfile certs/server.pem\nkeyfile /etc/mosquitto/certs/server.key\n\
         cafile /etc/mosquitto/ca.pem\nrequire_certificate true\nuse_identity_as_username true\n",
    );
    dir.write("conf.d/ws.conf", "listener 9001 ::1\nprotocol websockets\n");
    let conf = dir.write(
        "mosquitto.conf",
        "# the broker\nper_listener_settings true\nlistener 1883 127.0.0.1\nallow_anonymous true\n\
         max_connections -1\npassword_file /etc/mosquitto/passwd\nacl_file acl\n\
         persistence false\nmax_inflight_messages 40\nmax_queued_messages 5000\n\
         message_size_limit 262144\nmax_keepalive 300\nsys_interval 30\nmax_qos 1\n\
         persistent_client_expiration 2d\nlog_dest file /var/log/mosquitto/mosquitto.log\n\
         include_dir conf.d\n",
    );
    let out = dir.0.join("tern.toml");
    let result = import(&conf, &out);
    assert!(result.status.success(), "{}", stderr(&result));
    let config = Config::from_file(&out).unwrap();
    assert_eq!(config.listeners.len(), 3);
    let [plain, tls, ws] = &config.listeners[..] else {
        unreachable!()
    };
    assert_eq!(plain.bind, "127.0.0.1:1883".parse().unwrap());
    assert_eq!(plain.allow_anonymous, Some(true), "per listener");
    assert_eq!(plain.max_connections, 0, "-1: no limit");
    assert_eq!(tls.transport, ListenerTransport::Tls);
    assert_eq!(tls.cert_file, Some(dir.0.join("conf.d/certs/server.pem")));
    assert_eq!(
        tls.key_file.as_deref(),
        Some(Path::new("/etc/mosquitto/certs/server.key"))
    );
    assert!(tls.require_certificate && tls.use_identity_as_username);
    assert_eq!(ws.transport, ListenerTransport::Ws);
    assert_eq!(ws.bind, "[::1]:9001".parse().unwrap());
    assert_eq!(
        config.password_file.as_deref(),
        Some(Path::new("/etc/mosquitto/passwd"))
    );
    assert_eq!(config.acl_file, Some(dir.0.join("acl")));
    assert!(!config.persistence);
    assert_eq!(config.max_inflight_messages, 40);
    assert_eq!(config.max_queued_messages, 5000);
    assert_eq!(config.max_packet_size, 262_144 + 1024);
    assert_eq!(config.max_keepalive_secs, 300);
    assert_eq!(config.sys_interval_secs, 30);
    assert_eq!(config.maximum_qos, 1);
    assert_eq!(config.max_session_expiry_secs, 2 * 86_400);
    assert_eq!(
        config.log_file.as_deref(),
        Some(Path::new("/var/log/mosquitto/mosquitto.log"))
    );
    // Never over an existing file.
    let again = import(&conf, &out);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).contains("does not overwrite"),
        "{}",
        stderr(&again)
    );
}

#[test]
fn the_old_default_listener_and_mosquitto_2_s_anonymous_default_carry_over() {
    let dir = Dir::new("import-old");
    let conf = dir.write(
        "mosquitto.conf",
        "port 1884\nbind_address 127.0.0.1\nautosave_interval 1800\n",
    );
    let out = dir.0.join("tern.toml");
    let result = import(&conf, &out);
    assert!(result.status.success(), "{}", stderr(&result));
    let config = Config::from_file(&out).unwrap();
    assert_eq!(config.listeners[0].bind, "127.0.0.1:1884".parse().unwrap());
    // Listeners configured, allow_anonymous not: Mosquitto 2 refuses them.
    assert_eq!(config.allow_anonymous, Some(false));
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.contains("autosave_interval 1800"), "{text}");
}

#[test]
fn what_changes_what_clients_see_is_marked_important_with_exit_code_3() {
    let dir = Dir::new("import-important");
    let conf = dir.write(
        "mosquitto.conf",
        "listener 1883\nmount_point site1/\nplugin /usr/lib/mosquitto_dynamic_security.so\n\
         connection cloud\naddress cloud.example.com:8883\ntopic # both 1\nbridge_psk 0123\n",
    );
    let out = dir.0.join("tern.toml");
    let result = import(&conf, &out);
    assert_eq!(result.status.code(), Some(3), "{}", stderr(&result));
    let said = stderr(&result);
    for line in ["mount_point site1/", "plugin /usr/lib", "bridge_psk 0123"] {
        assert!(
            said.contains("IMPORTANT") && said.contains(line),
            "{line}: {said}"
        );
    }
    // The rest was written, and loads.
    Config::from_file(&out).unwrap();
}

/// A `connection` section as mosquitto.conf(5) shows one becomes a
/// `[[bridges]]` entry: addresses (1883 where none is written), each
/// `topic` line with its direction, QoS and prefixes (`""` empty), the
/// remote login, session, TLS files and restart timeout.
#[test]
fn a_bridge_becomes_a_bridges_entry() {
    let dir = Dir::new("import-bridge");
    let conf = dir.write(
        "mosquitto.conf",
        "listener 1883\nallow_anonymous true\n\
         connection cloud\naddress cloud.example.com:8883 backup.example.com\n\
         topic sensors/# out 1 \"\" site/17/\ntopic commands/# in 2\ntopic chat/#\n\
         remote_clientid edge-17\nremote_username edge\nremote_password s3cret\n\
         cleansession true\nkeepalive_interval 30\ntry_private false\n\
         bridge_protocol_version mqttv50\nbridge_cafile ca.crt\n\
         bridge_certfile edge.crt\nbridge_keyfile edge.key\nrestart_timeout 2 60\n\
         round_robin false\nstart_type automatic\n",
    );
    let out = dir.0.join("tern.toml");
    let result = import(&conf, &out);
    assert_eq!(result.status.code(), Some(0), "{}", stderr(&result));
    let config = Config::from_file(&out).unwrap();
    let bridge = &config.bridges[0];
    assert_eq!(bridge.name, "cloud");
    assert_eq!(
        bridge.addresses,
        ["cloud.example.com:8883", "backup.example.com:1883"]
    );
    let rules: Vec<(&str, Direction, u8, &str, &str)> = bridge
        .topics
        .iter()
        .map(|r| {
            let prefixes = (r.local_prefix.as_str(), r.remote_prefix.as_str());
            (
                r.pattern.as_str(),
                r.direction,
                r.qos,
                prefixes.0,
                prefixes.1,
            )
        })
        .collect();
    assert_eq!(
        rules,
        [
            ("sensors/#", Direction::Out, 1, "", "site/17/"),
            ("commands/#", Direction::In, 2, "", ""),
            ("chat/#", Direction::Out, 0, "", ""),
        ]
    );
    assert_eq!(bridge.client_id.as_deref(), Some("edge-17"));
    assert_eq!(bridge.username.as_deref(), Some("edge"));
    assert_eq!(bridge.password.as_deref(), Some("s3cret"));
    assert!(bridge.clean_start && !bridge.try_private);
    assert_eq!(bridge.keepalive_secs, 30);
    assert_eq!(bridge.protocol, BridgeProtocol::V5);
    assert_eq!(bridge.ca_file, Some(dir.0.join("ca.crt")));
    assert_eq!(bridge.cert_file, Some(dir.0.join("edge.crt")));
    assert_eq!(bridge.key_file, Some(dir.0.join("edge.key")));
    assert_eq!(
        (bridge.reconnect_min_ms, bridge.reconnect_max_ms),
        (2000, 60_000)
    );
}
