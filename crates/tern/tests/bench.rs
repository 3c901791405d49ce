//! `tern bench` as a user runs it: the real binary against a real
//! `tern serve` on a free loopback port, one short run per scenario, checked
//! through its JSON summary.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

fn tern() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tern"))
}

/// A `tern serve` on a free port, killed when dropped.
struct Broker {
    child: Child,
    port: String,
}

impl Broker {
    fn start() -> Broker {
        Broker::start_with(&["--bind", "127.0.0.1:0"], "mqtt://")
    }

    /// Starts `tern serve` with more arguments, and takes the port of the
    /// listener its log names with `scheme`.
    fn start_with(args: &[&str], scheme: &str) -> Broker {
        let dir = std::env::temp_dir().join(format!("tern-bench-test-{}", std::process::id()));
        let mut child = tern()
            .args(["serve", "--data-dir"])
            .arg(dir.join(format!("{:?}", std::thread::current().id())))
            .args(args)
            .stderr(Stdio::piped())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .spawn()
            .expect("tern serve starts");
        let mut reader = BufReader::new(child.stderr.take().unwrap());
        let port = loop {
            let mut line = String::new();
            assert!(
                reader.read_line(&mut line).unwrap() > 0,
                "tern serve exited"
            );
            if let Some(rest) = line.split(scheme).nth(1) {
                let addr = rest.split_whitespace().next().unwrap();
                break addr.rsplit(':').next().unwrap().to_string();
            }
        };
        // Keep draining the log so the broker never blocks on a full pipe.
        std::thread::spawn(move || for _ in reader.lines() {});
        Broker { child, port }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bench(port: &str, args: &str) -> Output {
    tern()
        .args(["bench", "-p", port, "--json", "--quiet"])
        .args(args.split_whitespace())
        .output()
        .expect("tern bench runs")
}

/// Runs a scenario and returns its JSON summary.
fn summary(port: &str, args: &str) -> Value {
    let out = bench(port, args);
    assert!(
        out.status.success(),
        "tern bench {args}: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

fn n(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {v:#}"))
}

/// Every message arrived once, in order, timed.
fn assert_complete(v: &Value, deliveries_per_message: u64) {
    let (sent, received) = (n(v, "sent"), n(v, "received"));
    assert!(received > 0, "{v:#}");
    assert_eq!(n(v, "expected"), sent * deliveries_per_message, "{v:#}");
    assert_eq!(n(v, "lost"), 0, "{v:#}");
    assert_eq!(received, n(v, "expected"), "{v:#}");
    assert_eq!(n(v, "duplicates"), 0, "{v:#}");
    assert_eq!(n(v, "out_of_order"), 0, "{v:#}");
    let latency = &v["latency_us"];
    for key in ["p50", "p90", "p99", "p999", "max", "mean", "min"] {
        assert!(latency[key].as_f64().is_some(), "latency {key}: {v:#}");
    }
    assert!(latency["p50"].as_f64() <= latency["p99"].as_f64(), "{v:#}");
    assert!(latency["p99"].as_f64() <= latency["max"].as_f64(), "{v:#}");
    assert_eq!(n(latency, "count"), received, "{v:#}");
    assert!(v["delivered_per_sec"].as_f64().unwrap() > 0.0, "{v:#}");
    assert_eq!(v["connect"]["lost"], 0, "{v:#}");
    assert!(v["error"].is_null(), "{v:#}");
}

const SHORT: &str = "-d 0.4 --warmup 0.1";

#[test]
fn fanout_and_fanin_at_qos_1_lose_nothing() {
    let broker = Broker::start();
    let v = summary(&broker.port, &format!("fanout -S 4 -q 1 -w 200 {SHORT}"));
    assert_eq!(v["scenario"], "fanout");
    assert_eq!((n(&v, "publishers"), n(&v, "subscribers")), (1, 4));
    assert_complete(&v, 4);

    let v = summary(
        &broker.port,
        &format!("fanin -P 4 -S 1 -q 1 -w 100 {SHORT}"),
    );
    assert_eq!((n(&v, "publishers"), n(&v, "subscribers")), (4, 1));
    assert_complete(&v, 1);
}

#[test]
fn p2p_and_shared_at_qos_1_lose_nothing() {
    let broker = Broker::start();
    let v = summary(&broker.port, &format!("p2p -n 4 -q 1 -w 100 {SHORT}"));
    assert_eq!(n(&v, "connections"), 8);
    assert_complete(&v, 1);

    // A fixed rate (and a window); a shared group gets each message once.
    let v = summary(
        &broker.port,
        &format!("shared -P 4 -S 2 -q 1 -r 2000 -w 100 {SHORT}"),
    );
    assert_eq!(v["rate_per_publisher"], 2000.0);
    assert_complete(&v, 1);
    let sent = n(&v, "sent");
    assert!((1000..=4000).contains(&sent), "4 x 2000/s for 0.4 s: {v:#}");
}

#[test]
fn qos_2_and_mqtt_311() {
    let broker = Broker::start();
    let v = summary(
        &broker.port,
        &format!("fanout -S 2 -q 2 -V 311 -w 50 -s 256 {SHORT}"),
    );
    assert_eq!(
        (v["qos"].as_u64(), v["mqtt_version"].as_str()),
        (Some(2), Some("3.1.1"))
    );
    assert_eq!(n(&v, "payload_bytes"), 256);
    assert_complete(&v, 2);
}

#[test]
fn pub_alone_counts_what_it_sends() {
    let broker = Broker::start();
    let v = summary(&broker.port, &format!("pub -P 2 -q 1 -r 500 {SHORT}"));
    assert!(n(&v, "sent") > 0, "{v:#}");
    assert!(v["received"].is_null() && v["lost"].is_null(), "{v:#}");
}

#[test]
fn conn_opens_and_holds_connections() {
    let broker = Broker::start();
    let v = summary(&broker.port, "conn -c 50 -d 0.3");
    assert_eq!(v["scenario"], "conn");
    let c = &v["connect"];
    assert_eq!(
        (n(c, "connected"), n(c, "failed"), n(c, "lost")),
        (50, 0, 0),
        "{v:#}"
    );
    assert_eq!(n(&c["latency_us"], "count"), 50, "{v:#}");
    assert!(n(&v, "source_addresses") >= 1);
}

/// `--cafile`: every connection over TLS, the broker's certificate checked.
#[test]
fn tls_runs_every_connection_over_tls() {
    let dir = std::env::temp_dir().join(format!("tern-bench-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = rcgen::CertificateParams::new(Vec::new()).unwrap();
    let mut ca = ca;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".into()]).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
    let path = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    std::fs::write(path("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(path("server.pem"), leaf_cert.pem()).unwrap();
    std::fs::write(path("server.key"), leaf_key.serialize_pem()).unwrap();
    let config = format!(
        "[[listeners]]\nbind = \"127.0.0.1:0\"\ntransport = \"tls\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        path("server.pem"),
        path("server.key")
    );
    std::fs::write(path("tern.toml"), config).unwrap();
    let broker = Broker::start_with(&["--config", &path("tern.toml")], "mqtts://");
    let tls = format!("--cafile {}", path("ca.pem"));
    let v = summary(&broker.port, &format!("p2p -n 4 -q 1 -w 100 {tls} {SHORT}"));
    assert_complete(&v, 1);
    let v = summary(
        &broker.port,
        &format!("fanout -S 4 -q 0 -s 20000 {tls} {SHORT}"),
    );
    assert_complete(&v, 4);
    let v = summary(&broker.port, &format!("conn -c 40 -d 0.3 -V 311 {tls}"));
    assert_eq!(n(&v["connect"], "connected"), 40, "{v:#}");
    // A CA that did not sign the broker's certificate: refused, and said why.
    std::fs::write(path("other.pem"), {
        let other = rcgen::CertificateParams::new(Vec::new()).unwrap();
        other
            .self_signed(&rcgen::KeyPair::generate().unwrap())
            .unwrap()
            .pem()
    })
    .unwrap();
    let out = bench(
        &broker.port,
        &format!("fanout -S 1 -d 0.1 --cafile {}", path("other.pem")),
    );
    assert_eq!(out.status.code(), Some(3), "unreachable");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not signed by a CA in --cafile"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn mistakes_and_unreachable_brokers_have_their_exit_codes() {
    // A port nothing listens on: bind one, then free it.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port().to_string()
    };
    let out = bench(&port, "fanout -S 1 -d 0.1");
    assert_eq!(out.status.code(), Some(3), "unreachable");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot connect"), "{err}");

    let out = bench(&port, "p2p -P 3");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not apply"));

    let help = tern().args(["bench", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for word in [
        "fanin",
        "fanout",
        "p2p",
        "shared",
        "conn",
        "--inflight",
        "Examples:",
    ] {
        assert!(help.contains(word), "--help mentions {word}: {help}");
    }
}
