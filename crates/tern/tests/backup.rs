//! `tern backup` as an operator runs it: the real `tern serve` with its HTTP
//! listener, sessions, queues and retained messages made with `tern sub` and
//! `tern pub`, the backup taken while it runs, and a second `tern serve`
//! started on the backup serving them back.

mod common;

use common::Dir;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

const TOKEN: &str = "backup-test-token-0123456789";

fn tern() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tern"))
}

/// A running `tern serve`, killed when dropped.
struct Serve {
    child: Child,
    mqtt_port: String,
    http: Option<String>,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `tern serve` with `args`; waits for its listeners' log lines.
fn serve(args: &[&str], with_http: bool) -> Serve {
    let mut child = tern()
        .arg("serve")
        .args(args)
        .stderr(Stdio::piped())
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .spawn()
        .expect("tern starts");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (mut mqtt, mut http) = (None, None);
    while mqtt.is_none() || (with_http && http.is_none()) {
        let line = lines
            .next()
            .expect("tern exited early")
            .expect("a log line");
        if let Some(rest) = line.split("mqtt://").nth(1) {
            let addr = rest.split_whitespace().next().unwrap();
            mqtt = Some(addr.rsplit(':').next().unwrap().to_owned());
        }
        if let Some(rest) = line.split("http://").nth(1) {
            http = Some(format!(
                "http://{}",
                rest.split_whitespace().next().unwrap()
            ));
        }
    }
    // Keep draining the log so the broker never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Serve {
        child,
        mqtt_port: mqtt.unwrap(),
        http,
    }
}

/// Runs a `tern` tool to its end.
fn run(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = tern()
        .args(args)
        .env_remove("TERN_API_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tern runs");
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A broker with persistence in `dir/data` and its HTTP listener on.
fn serve_with_http(dir: &Dir) -> Serve {
    let config = dir.write(
        "tern.toml",
        &format!(
            "bind = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n\n[http]\nbind = \"127.0.0.1:0\"\ntokens = [\"{TOKEN}\"]\n",
            dir.0.join("data").display()
        ),
    );
    serve(&["--config", config.to_str().unwrap()], true)
}

#[test]
fn a_backup_of_a_running_broker_restores_its_sessions_queues_and_retained_messages() {
    let dir = Dir::new("backup-restore");
    let broker = serve_with_http(&dir);
    let port = broker.mqtt_port.as_str();
    let url = broker.http.clone().unwrap();
    // A device's persistent session, away, with 100 messages queued for it.
    let sub = ["sub", "-p", port, "-V", "311", "-i", "dev", "-c", "-q", "1"];
    let made = run(&[&sub[..], &["-t", "q/#", "-W", "1"]].concat(), None);
    assert!(made.status.success(), "{}", text(&made));
    let lines: String = (0..100).map(|i| format!("m{i}\n")).collect();
    let published = run(
        &["pub", "-p", port, "-q", "1", "-t", "q/x", "-l"],
        Some(&lines),
    );
    assert!(published.status.success(), "{}", text(&published));
    let retained = [
        "pub",
        "-p",
        port,
        "-q",
        "1",
        "-r",
        "-t",
        "config/site",
        "-m",
        "plant-4",
    ];
    assert!(run(&retained, None).status.success());

    let backup_dir = dir.0.join("backup");
    let backup_dir = backup_dir.to_str().unwrap();
    let backup = run(
        &["backup", backup_dir, "--url", &url, "--token", TOKEN],
        None,
    );
    assert!(backup.status.success(), "{}", text(&backup));
    let said = String::from_utf8_lossy(&backup.stdout);
    assert!(
        said.contains("sessions 1, queued deliveries 100, retained messages 1, delayed messages 0"),
        "{said}"
    );
    // Nothing left behind beside the broker's data file.
    let left: Vec<_> = std::fs::read_dir(dir.0.join("data"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["tern.redb"]);
    // Never over an existing one.
    let again = run(
        &["backup", backup_dir, "--url", &url, "--token", TOKEN],
        None,
    );
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    assert!(text(&again).contains("already exists"), "{}", text(&again));

    // Restored: a second broker on the backup, while the first still runs.
    let restored = serve(&["--bind", "127.0.0.1:0", "--data-dir", backup_dir], false);
    let port = restored.mqtt_port.as_str();
    let queue = run(
        &[&sub[..], &["-t", "q/#", "-C", "100", "-W", "10"]].concat(),
        None,
    );
    assert!(queue.status.success(), "{}", text(&queue));
    let expected: Vec<String> = (0..100).map(|i| format!("m{i}")).collect();
    let got: Vec<String> = String::from_utf8_lossy(&queue.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(got, expected, "the queue, whole and in order");
    let kept = run(
        &[
            "sub",
            "-p",
            port,
            "-t",
            "config/site",
            "--retained-only",
            "-C",
            "1",
            "-W",
            "5",
        ],
        None,
    );
    assert_eq!(
        String::from_utf8_lossy(&kept.stdout).trim(),
        "plant-4",
        "{}",
        text(&kept)
    );
    drop(broker);
}

#[test]
fn a_backup_without_the_right_credentials_is_refused() {
    let dir = Dir::new("backup-refused");
    let broker = serve_with_http(&dir);
    let url = broker.http.clone().unwrap();
    let to = dir.0.join("backup");
    let to = to.to_str().unwrap();
    let wrong = run(
        &[
            "backup",
            to,
            "--url",
            &url,
            "--token",
            "not-the-token-at-all",
        ],
        None,
    );
    assert_eq!(wrong.status.code(), Some(4), "{}", text(&wrong));
    assert!(text(&wrong).contains("401"), "{}", text(&wrong));
    let none = run(&["backup", to, "--url", &url], None);
    assert_eq!(none.status.code(), Some(2), "{}", text(&none));
    assert!(text(&none).contains("--token"), "{}", text(&none));
    assert!(!Path::new(to).join("tern.redb").exists());
}
