//! CONNECT: decide whether to accept a client and with which parameters, and
//! build its CONNACK.
//!
//! Pure decisions only: the connection task reads the CONNECT, calls
//! [`accept`], attaches the session through the registry, then sends
//! [`connack`].

use std::hash::{BuildHasher, Hasher};

use bytes::Bytes;
use tern_codec::{
    ByteStr, ConnAck, ConnAckProperties, Connect, LastWill, ProtocolVersion, QoS, ReasonCode,
    UserProperty, WillProperties, topic::is_valid_topic_name,
};

use crate::session::NEVER_EXPIRES;
use crate::state::BrokerState;

/// The accepted connection's parameters.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub client_id: ByteStr,
    /// The broker chose the client id (MQTT 5 Assigned Client Identifier).
    pub assigned_client_id: bool,
    pub session_expiry_secs: u32,
    /// Keep-alive in force; 0 = none.
    pub keep_alive_secs: u16,
}

/// Checks a CONNECT against the protocol rules and the configuration.
/// `Err` carries the CONNACK reason code refusing it.
pub fn accept(connect: &Connect, state: &BrokerState) -> Result<Accepted, ReasonCode> {
    let config = &state.config;
    if connect.properties.authentication_method.is_some() {
        // No enhanced authentication method is supported [MQTT-4.12.0-1].
        return Err(ReasonCode::BadAuthenticationMethod);
    }
    if let Some(will) = &connect.will {
        if !is_valid_topic_name(&will.topic) {
            // A will topic with wildcards is malformed. MQTT 5 has a CONNACK
            // code for it; 3.1.1 has none, so the connection is closed
            // without CONNACK, as for any protocol violation [MQTT-4.8.0-1].
            return Err(match connect.protocol {
                ProtocolVersion::V5 => ReasonCode::TopicNameInvalid,
                _ => ReasonCode::MalformedPacket,
            });
        }
        if will.qos > state.maximum_qos() {
            return Err(ReasonCode::QoSNotSupported);
        }
        if will.retain && !config.retain_available {
            return Err(ReasonCode::RetainNotSupported);
        }
    }
    let (client_id, assigned_client_id) = client_id(connect)?;
    let session_expiry_secs = match connect.protocol {
        ProtocolVersion::V5 => connect.properties.session_expiry_interval.unwrap_or(0),
        // 3.1/3.1.1: Clean Session 0 keeps the session with no expiry.
        _ if connect.clean_start => 0,
        _ => NEVER_EXPIRES,
    };
    let session_expiry_secs = config.capped_expiry(session_expiry_secs);
    let max = config.max_keepalive_secs;
    let keep_alive_secs = if max < u16::MAX && (connect.keep_alive == 0 || connect.keep_alive > max)
    {
        max
    } else {
        connect.keep_alive
    };
    Ok(Accepted {
        client_id,
        assigned_client_id,
        session_expiry_secs,
        keep_alive_secs,
    })
}

/// The client id to use, assigning one to a client that sent none where the
/// protocol allows it [MQTT-3.1.3-6], [MQTT-3.1.3-8].
fn client_id(connect: &Connect) -> Result<(ByteStr, bool), ReasonCode> {
    if !connect.client_id.is_empty() {
        // A copy of its own: a slice would keep the whole read buffer the
        // CONNECT arrived in alive for as long as the session lives.
        return Ok((ByteStr::from(connect.client_id.as_str()), false));
    }
    match connect.protocol {
        // 3.1 requires 1-23 characters; 3.1.1 allows empty only with Clean Session.
        ProtocolVersion::V3_1 => Err(ReasonCode::ClientIdentifierNotValid),
        ProtocolVersion::V3_1_1 if !connect.clean_start => {
            Err(ReasonCode::ClientIdentifierNotValid)
        }
        _ => Ok((assign_client_id(), true)),
    }
}

/// A random client id: 64 bits from the hasher's per-process random keys,
/// which avoids a dependency on a random number crate.
fn assign_client_id() -> ByteStr {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    );
    ByteStr::from(format!("tern-{:016x}", hasher.finish()))
}

/// The will with its own copies of every field: it lives as long as the
/// connection, and slices of the CONNECT would keep the read buffer the
/// CONNECT arrived in alive all that time.
pub fn owned_will(will: LastWill) -> LastWill {
    let text = |s: ByteStr| ByteStr::from(s.as_str());
    let bytes = |b: Bytes| Bytes::copy_from_slice(&b);
    let p = will.properties;
    LastWill {
        topic: text(will.topic),
        payload: bytes(will.payload),
        qos: will.qos,
        retain: will.retain,
        properties: WillProperties {
            content_type: p.content_type.map(text),
            response_topic: p.response_topic.map(text),
            correlation_data: p.correlation_data.map(bytes),
            user_properties: p
                .user_properties
                .into_iter()
                .map(|u| UserProperty {
                    name: text(u.name),
                    value: text(u.value),
                })
                .collect(),
            ..p
        },
    }
}

/// The CONNACK for an accepted client. MQTT 5 clients are told every limit
/// that differs from the protocol default, and the values in force.
pub fn connack(
    accepted: &Accepted,
    version: ProtocolVersion,
    session_present: bool,
    state: &BrokerState,
) -> ConnAck {
    let properties = if version == ProtocolVersion::V5 {
        let config = &state.config;
        let max_qos = state.maximum_qos();
        ConnAckProperties {
            session_expiry_interval: Some(accepted.session_expiry_secs),
            receive_maximum: Some(config.receive_maximum),
            maximum_qos: (max_qos < QoS::ExactlyOnce).then_some(max_qos),
            retain_available: Some(config.retain_available),
            maximum_packet_size: Some(config.max_packet_size),
            assigned_client_identifier: accepted
                .assigned_client_id
                .then(|| accepted.client_id.clone()),
            topic_alias_maximum: Some(config.topic_alias_maximum),
            wildcard_subscription_available: Some(true),
            subscription_identifiers_available: Some(true),
            shared_subscription_available: Some(true),
            server_keep_alive: Some(accepted.keep_alive_secs),
            ..ConnAckProperties::default()
        }
    } else {
        ConnAckProperties::default()
    };
    ConnAck {
        session_present,
        reason: ReasonCode::Success,
        properties,
    }
}

/// The CONNACK refusing a client with `reason`.
pub fn refusal(reason: ReasonCode) -> ConnAck {
    ConnAck {
        session_present: false,
        reason,
        properties: ConnAckProperties::default(),
    }
}
