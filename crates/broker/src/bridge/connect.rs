//! The bridge's two connections: to the remote broker over the network, and
//! to this broker through an in-process pipe served by the ordinary
//! connection task (so the bridge's session here is an ordinary session:
//! persisted, bounded, listed by the admin API).

use std::sync::Arc;
use std::time::Duration;

use tern_client::{
    Client, ConnectOptions, Events, ProtocolVersion, ReasonCode, RetainHandling, Stream,
    SubscribeProperties, SubscriptionOptions, TlsOptions,
};
use tern_codec::QoS;

use crate::auth::BRIDGE_CLIENT_PREFIX;
use crate::config::{BridgeConfig, BridgeProtocol, split_address};
use crate::connection::park::Parker;
use crate::connection::{self, ConnInfo};
use crate::state::BrokerState;

/// Bytes the in-process pipe holds each way.
const PIPE_BYTES: usize = 256 * 1024;

/// One connection, its handle and its events.
pub type Side = (Client, Events);

/// Connects to the first of the bridge's addresses that accepts, and
/// subscribes there to what its `in` rules bring here. The error names
/// each address tried and why it failed.
///
/// `refuses_flag`: the remote refused Mosquitto's bridge flag before, so
/// it is no longer sent (set here the first time that happens).
pub async fn remote(bridge: &BridgeConfig, refuses_flag: &mut bool) -> Result<Side, String> {
    let mut failures = Vec::new();
    for address in &bridge.addresses {
        let Some((host, port)) = split_address(address) else {
            continue;
        };
        let mut options = remote_options(bridge, host, port, !*refuses_flag);
        let mut connected = Client::connect(options.clone()).await;
        if options.bridge
            && matches!(
                connected,
                Err(tern_client::Error::Refused(
                    ReasonCode::UnsupportedProtocolVersion
                ))
            )
        {
            tracing::info!(bridge = %bridge.name, %address, "the remote broker refuses Mosquitto's bridge flag: connecting without it (no loop prevention there)");
            *refuses_flag = true;
            options.bridge = false;
            connected = Client::connect(options).await;
        }
        match connected {
            Ok((client, events, connack)) => {
                let subscribed = subscribe(bridge, &client, false).await;
                if let Err(e) = subscribed {
                    failures.push(format!("{address}: {e}"));
                    client.disconnect(ReasonCode::Success).await.ok();
                    continue;
                }
                tracing::info!(bridge = %bridge.name, %address, session_present = connack.session_present, "bridge connected");
                return Ok((client, events));
            }
            Err(e) => failures.push(format!("{address}: {e}")),
        }
    }
    Err(failures.join("; "))
}

/// The remote connection's options, as the bridge's configuration says.
fn remote_options(bridge: &BridgeConfig, host: String, port: u16, flag: bool) -> ConnectOptions {
    let version = match bridge.protocol {
        BridgeProtocol::V311 => ProtocolVersion::V3_1_1,
        BridgeProtocol::V5 => ProtocolVersion::V5,
    };
    let mut options = ConnectOptions::new(host, port)
        .version(version)
        .client_id(bridge.remote_client_id())
        .clean_start(bridge.clean_start)
        .keep_alive(Duration::from_secs(u64::from(bridge.keepalive_secs)))
        .manual_acks(true)
        .bridge(flag && version != ProtocolVersion::V5);
    if !bridge.clean_start && version == ProtocolVersion::V5 {
        // Kept as long as the remote allows, as a 3.1.1 session would be.
        options = options.session_expiry(u32::MAX);
    }
    if let Some(username) = &bridge.username {
        options = options.username(username.clone());
    }
    if let Some(password) = &bridge.password {
        options = options.password(password.clone().into_bytes());
    }
    if let Some(ca_file) = &bridge.ca_file {
        let mut tls = TlsOptions::new(ca_file.clone());
        if let (Some(cert), Some(key)) = (&bridge.cert_file, &bridge.key_file) {
            tls = tls.client_cert(cert.clone(), key.clone());
        }
        options = options.tls(tls);
    }
    options
}

/// Opens the bridge's session on this broker: an in-process connection,
/// served by the same connection task as a socket, as `$bridge/NAME` with
/// a session that outlives it; then subscribes to what its `out` rules
/// send away. Its subscriptions are No Local, so what the bridge brings in
/// never goes back out, and Retain As Published, so the remote broker
/// keeps what is retained here.
pub async fn local(
    bridge: &BridgeConfig,
    state: &Arc<BrokerState>,
    parker: &Arc<Parker>,
) -> Result<Side, tern_client::Error> {
    let (ours, theirs) = tokio::io::duplex(PIPE_BYTES);
    let info = ConnInfo {
        peer: ([127, 0, 0, 1], 0).into(),
        listener: usize::MAX,
        cert_identity: None,
        connect_bytes: None,
        internal: true,
    };
    state.tasks.spawn(connection::serve(
        theirs,
        info,
        state.clone(),
        parker.clone(),
    ));
    let options = ConnectOptions::new("this broker", 0)
        .client_id(format!("{BRIDGE_CLIENT_PREFIX}{}", bridge.name))
        .clean_start(false)
        .session_expiry(u32::MAX)
        .keep_alive(Duration::ZERO)
        .manual_acks(true);
    let (client, events, _) = Client::connect_stream(options, Stream::Memory(ours)).await?;
    if let Err(e) = subscribe(bridge, &client, true).await {
        client.disconnect(ReasonCode::Success).await.ok();
        return Err(e);
    }
    Ok((client, events))
}

/// Subscribes on one side to the filters of the rules that forward from
/// it: here (`local`) the `out` rules', there the `in` rules'. A filter
/// refused is an error naming it.
async fn subscribe(
    bridge: &BridgeConfig,
    client: &Client,
    local: bool,
) -> Result<(), tern_client::Error> {
    let filters: Vec<(String, SubscriptionOptions)> = bridge
        .topics
        .iter()
        .filter(|rule| match local {
            true => rule.direction.outward(),
            false => rule.direction.inward(),
        })
        .map(|rule| {
            let options = SubscriptionOptions {
                qos: QoS::from_u8(rule.qos).unwrap_or(QoS::AtMostOnce),
                no_local: true,
                retain_as_published: true,
                retain_handling: RetainHandling::SendAtSubscribeIfNew,
            };
            (rule.filter(local), options)
        })
        .collect();
    if filters.is_empty() {
        return Ok(());
    }
    let suback = client
        .subscribe_many(filters.clone(), SubscribeProperties::default())
        .await?;
    match filters
        .iter()
        .zip(&suback.reasons)
        .find(|(_, r)| r.is_error())
    {
        Some(((filter, _), reason)) => Err(tern_client::Error::Invalid(format!(
            "the subscription to {filter} was refused ({reason:?})"
        ))),
        None => Ok(()),
    }
}
