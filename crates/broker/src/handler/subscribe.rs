//! SUBSCRIBE: add each filter to the subscription tree and the session,
//! answer SUBACK, then queue the matching retained messages.

use tern_codec::{
    AckProperties, Packet, QoS, ReasonCode, RetainHandling, SubAck, Subscribe, SubscribeFilter,
    topic::is_valid_topic_filter,
};

use super::Flow;
use crate::client_state::ClientState;
use crate::error::ProtocolViolation;
use crate::router::{self, RetainedBatch};
use crate::session::SessionSubscription;
use crate::state::Subscriber;

/// Handles a SUBSCRIBE with one or more filters [MQTT-3.8.4-1].
pub fn handle(client: &mut ClientState, subscribe: Subscribe) -> Result<Flow, ProtocolViolation> {
    let subscription_id = subscribe.properties.subscription_identifier;
    let mut reasons = Vec::with_capacity(subscribe.filters.len());
    let mut retained = Vec::new();
    let mut interest = 0;
    for filter in &subscribe.filters {
        reasons.push(subscribe_one(
            client,
            filter,
            subscription_id,
            &mut retained,
            &mut interest,
        )?);
    }
    // The SUBACK promises the subscriptions: it waits for the session
    // record, and in a cluster until the other nodes route to them.
    super::keep_subscriptions(client);
    client.hold_for_fabric(interest);
    client.send(&Packet::SubAck(SubAck {
        packet_id: subscribe.packet_id,
        reasons,
        properties: AckProperties::default(),
    }));
    router::deliver_retained(&client.state, &client.session, retained, subscription_id);
    Ok(Flow::Continue)
}

/// Adds one subscription; returns its SUBACK reason code. `interest`: the
/// highest fabric ticket of the subscriptions added so far.
fn subscribe_one(
    client: &mut ClientState,
    request: &SubscribeFilter,
    subscription_id: Option<u32>,
    retained: &mut Vec<RetainedBatch>,
    interest: &mut u64,
) -> Result<ReasonCode, ProtocolViolation> {
    let Some((group, filter)) =
        router::split_shared(&request.filter).filter(|(_, f)| is_valid_topic_filter(f))
    else {
        return Ok(ReasonCode::TopicFilterInvalid);
    };
    if group.is_some() && request.options.no_local {
        return Err(ProtocolViolation::SharedNoLocal);
    }
    let (permitted, readable) = client.subscribe_access(filter);
    if !permitted {
        client.log_refused(
            "SUBSCRIBE",
            &request.filter,
            "the ACL does not allow reading it",
        );
        // 3.1.1 encodes every failure as 0x80.
        return Ok(ReasonCode::NotAuthorized);
    }
    let (held, replaces) = {
        let st = client.session.lock();
        (
            st.subscriptions.len(),
            st.subscriptions.contains_key(&request.filter),
        )
    };
    if let Some((reason, why)) = client
        .state
        .limits
        .subscription_refused(filter, held, replaces)
    {
        client.log_refused("SUBSCRIBE", &request.filter, why);
        return Ok(reason);
    }
    let granted = request.options.qos.min(client.state.maximum_qos());
    // A bridge's own messages are not sent back to it, and they keep
    // their retain flag: Mosquitto's bridge flag asks for MQTT 5's options.
    let bridged = client.bridge_peer;
    let options = tern_codec::SubscriptionOptions {
        qos: granted,
        no_local: request.options.no_local || (bridged && group.is_none()),
        retain_as_published: request.options.retain_as_published || bridged,
        ..request.options
    };
    let subscriber = Subscriber {
        session: client.session.clone(),
        options,
        subscription_id,
        readable,
    };
    let (existed, ticket) = router::subscribe(&client.state, filter, group, subscriber);
    *interest = (*interest).max(ticket);
    client.session.lock().subscriptions.insert(
        request.filter.clone(),
        SessionSubscription {
            options,
            subscription_id,
        },
    );
    // Shared subscriptions get no retained messages [MQTT-4.8.2-?].
    let send_retained = group.is_none()
        && match options.retain_handling {
            RetainHandling::SendAtSubscribe => true,
            RetainHandling::SendAtSubscribeIfNew => !existed,
            RetainHandling::DoNotSend => false,
        };
    if send_retained {
        let mut messages = router::retained_matching(&client.state, filter);
        let generation = client.state.auth.acl_generation();
        if readable.needs_check(generation, client.session.identity()) {
            let id = client.identity();
            messages.retain(|m| client.state.auth.may_read(&id, &m.topic));
        }
        if !messages.is_empty() {
            retained.push(RetainedBatch { messages, granted });
        }
    }
    Ok(match granted {
        QoS::AtMostOnce => ReasonCode::Success,
        QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
        QoS::ExactlyOnce => ReasonCode::GrantedQoS2,
    })
}
