//! Session lifecycle: which connection owns which session, and when a session ends.
//!
//! - [`attach`] runs after a valid CONNECT: it finds or creates the session,
//!   takes it over from a connection still holding it (that connection gets
//!   DISCONNECT 0x8E and is waited for), applies Clean Start, and records
//!   how the client logged in, for a reload to judge again.
//! - [`detach`] runs when a connection ends: it publishes or schedules the
//!   will, and either ends the session (expiry 0) or starts its expiry timer.
//!
//! Timers are plain tasks that sleep and then check the session's
//! `generation`: if the client came back meanwhile, the generation moved on
//! and the timer does nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_codec::{ByteStr, ReasonCode};

use crate::auth::{self, Acl, Auth};
use crate::message::Message;
use crate::metrics::Metrics;
use crate::router;
use crate::session::{ConnectionId, Moving, NEVER_EXPIRES, PendingWill, Session, SessionState};
use crate::state::{self, BrokerState};
use crate::store::records::SessionRecord;
use crate::webhook;

/// How long a new connection waits for the one it takes over to close.
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);

/// A connection's claim on its session.
pub struct Attached {
    pub session: Arc<Session>,
    /// CONNACK Session Present.
    pub session_present: bool,
    /// The store's ticket for the session's record: CONNACK waits for it.
    pub ticket: u64,
}

/// How a connection logged in: what [`attach`] records in its session.
#[derive(Debug)]
pub struct LoggedIn {
    /// `None`: anonymous.
    pub username: Option<Arc<str>>,
    /// The username is vouched for by the certificate
    /// (`use_identity_as_username`) or by the auth hook, not by the
    /// password file: a reload of that file does not judge it again.
    pub by_certificate: bool,
    /// The rules the login was judged by.
    pub rules: Arc<Auth>,
    /// The client's own topic rules (from the auth hook), for its
    /// connection: taken out before [`attach`].
    pub acl: Option<Arc<Acl>>,
}

/// Attaches connection `connection_id`, logged in as `login` says, to the
/// session of `client_id`.
///
/// A session is resumed only by the user it belongs to. A client id is all
/// MQTT identifies a session by, so without this check anyone allowed to
/// connect could take over another user's session and receive what was
/// queued for it, and its subscriptions (MQTT 5.0 section 5.4.2 asks the
/// server to check that a client may use a client id). Another user's
/// connection still takes over the connection [MQTT-3.1.4-3], but starts
/// clean: the previous user's session ends.
pub async fn attach(
    state: &Arc<BrokerState>,
    client_id: &ByteStr,
    clean_start: bool,
    expiry_secs: u32,
    connection_id: ConnectionId,
    login: LoggedIn,
) -> Attached {
    let LoggedIn {
        username,
        by_certificate,
        rules,
        acl: _,
    } = login;
    // Across nodes, another may hold the session: it lets go first.
    if let Some(claim) = state.ownership.claim(client_id, expiry_secs != 0) {
        claim.await;
    }
    let (session, existed, previous, other_user, parked) = {
        let mut sessions = state.sessions();
        let (session, existed) =
            sessions.get_or_create(client_id, || Session::new(client_id.clone()));
        let mut st = session.lock();
        // The registry lock was needed only to find or insert the session.
        drop(sessions);
        let other_user = existed && st.username != username;
        if other_user && !clean_start {
            tracing::info!(
                %client_id,
                username = username.as_deref(),
                previous = st.username.as_deref(),
                "client id used by another user: its session is not resumed"
            );
        }
        let previous = st.attach(connection_id);
        session.bind_user(&mut st, username);
        st.by_certificate = by_certificate;
        st.login_rules = rules.generation();
        st.generation = st.generation.wrapping_add(1);
        session.set_online(true);
        let parked = st.parked.take();
        drop(st);
        (session, existed, previous, other_user, parked)
    };
    // Wake the connection being replaced, so it sees its kick: a parked one
    // needs its task back.
    if let Some(parked) = parked {
        parked.resume();
    } else if previous.is_some() {
        session.notify.notify_one();
    }
    let clean_start = clean_start || other_user;
    if let Some(closed) = previous {
        // The old connection drops the kick's `done` once it has detached; an
        // error here just means it is gone.
        let _ = tokio::time::timeout(TAKEOVER_WAIT, closed).await;
    }
    let ended = {
        let mut st = session.lock();
        st.expiry_secs = expiry_secs;
        st.generation = st.generation.wrapping_add(1);
        let will = st.pending_will.take();
        if clean_start {
            // The old session ends here, so a will still waiting for its
            // delay is published now [MQTT-3.1.3-9 note: session end].
            Some((st.clear(), will))
        } else {
            // Resumed before the delay passed: the will is not sent [MQTT-3.1.3-9].
            None
        }
    };
    let session_present = existed && ended.is_none();
    if existed && ended.is_some() {
        session_ended(state, client_id, "clean_start");
    }
    if !session_present && !client_id.starts_with(auth::BRIDGE_CLIENT_PREFIX) {
        state.webhooks.emit(webhook::Kind::SessionCreated, || {
            webhook::Event::SessionCreated {
                client_id: client_id.clone(),
            }
        });
    }
    let ticket = persist_attached(state, &session, existed && clean_start);
    if let Some((subscriptions, will)) = ended {
        router::unsubscribe(state, &session, subscriptions.into_keys());
        if let Some(will) = will {
            publish_will(state, will.message, will.username.as_ref());
        }
    }
    // Rules installed since the login was judged, by a reload whose scan
    // may have looked before this connection attached: judge it here.
    // Whichever of the two comes second finds the login judged by the new
    // rules already (`login_rules`), or refused, and leaves it.
    let now = state.auth.current();
    if now.generation() != rules.generation() {
        state::refuse_revoked_login(&session, &rules, &now);
    }
    Attached {
        session,
        session_present,
        ticket,
    }
}

/// Closes the connection attached to `client_id`'s session, if any, with
/// `reason` (MQTT 5), logging `why` (another node took the client id over;
/// the admin API). False if no client was connected with that id.
pub fn oust(state: &BrokerState, client_id: &str, reason: ReasonCode, why: &str) -> bool {
    let Some(session) = state.sessions().get(client_id) else {
        return false;
    };
    let st = session.lock();
    if st.connection.is_none() || st.is_refused() {
        return false;
    }
    tracing::info!(%client_id, "disconnecting client: {why}");
    session.refuse(st, reason);
    true
}

/// A session leaving this node for another: what [`hand_over`] takes.
pub struct Handed {
    /// Subscriptions, expiry, pending will, username.
    pub record: SessionRecord,
    /// Its deliveries and its client's QoS 2 ids.
    pub traffic: Moving,
}

/// Hands `client_id`'s session to another node, whose client connected
/// there: closes the connection attached here as a takeover does (MQTT 5
/// DISCONNECT 0x8E; its will by the usual rules) and waits for it, then
/// takes the session out of this node (registry, tree, store) without
/// ending it: no will is published and no expiry runs here, as the session
/// goes on there. `None` if this node has no such session, or a client
/// attached it here again meanwhile.
pub async fn hand_over(state: &Arc<BrokerState>, client_id: &str) -> Option<Handed> {
    let session = state.sessions().get(client_id)?;
    let (previous, parked) = {
        let mut st = session.lock();
        (st.attach(HANDING_OVER), st.parked.take())
    };
    if let Some(parked) = parked {
        parked.resume();
    } else if previous.is_some() {
        session.notify.notify_one();
    }
    if let Some(closed) = previous {
        let _ = tokio::time::timeout(TAKEOVER_WAIT, closed).await;
    }
    let mut sessions = state.sessions();
    let mut st = session.lock();
    if st.connection != Some(HANDING_OVER) {
        return None;
    }
    // Timers started for this session here find it moved on.
    st.generation = st.generation.wrapping_add(1);
    let record = st.record();
    let traffic = st.take_traffic();
    let subscriptions = st.clear();
    unpersist(state, &session, &mut st);
    st.connection = None;
    session.set_online(false);
    drop(st);
    sessions.remove(&session);
    drop(sessions);
    router::unsubscribe(state, &session, subscriptions.into_keys());
    Some(Handed { record, traffic })
}

/// The connection id a session is attached to while [`hand_over`] waits
/// for its connection to close: no connection has it (they count from 1).
const HANDING_OVER: ConnectionId = ConnectionId::MAX;

/// Whether a client logged in as `username` may use `client_id`: not if
/// its session belongs to another user (see [`auth::may_use_client_id`]).
/// Checked before [`attach`]; a session created by another user in between
/// is still not resumed by this one (`attach` starts it clean).
pub fn may_claim(state: &BrokerState, client_id: &str, username: Option<&str>) -> bool {
    let Some(session) = state.sessions().get(client_id) else {
        return true;
    };
    let owner = session.lock().username.clone();
    auth::may_use_client_id(
        owner.as_deref(),
        username,
        state.config.client_id_takeover_by_other_users,
    )
}

/// Stores the session as it is now attached (or deletes its record, if it no
/// longer outlives its connection). `replaced`: Clean Start ended a previous
/// session of this client id, whose record goes first. Returns the ticket.
fn persist_attached(state: &BrokerState, session: &Session, replaced: bool) -> u64 {
    let mut st = session.lock();
    if replaced || st.expiry_secs == 0 {
        unpersist(state, session, &mut st);
    }
    persist(state, session, &mut st)
}

/// Rewrites a persistent session's record after a change (subscriptions,
/// disconnect, will). Returns the ticket (0 if nothing was stored).
pub fn persist(state: &BrokerState, session: &Session, st: &mut SessionState) -> u64 {
    match &state.store {
        Some(store) if st.expiry_secs != 0 => {
            st.stored = true;
            store.put_session(&session.client_id, &st.record())
        }
        _ => 0,
    }
}

/// Deletes the session's record, queue and QoS 2 ids from the store, if it
/// has any (a session that was never persistent costs the store nothing).
fn unpersist(state: &BrokerState, session: &Session, st: &mut SessionState) {
    if let Some(store) = &state.store
        && std::mem::take(&mut st.stored)
    {
        store.delete_session(&session.client_id);
    }
}

/// What a closing connection leaves behind for its session.
pub struct Departure {
    pub connection_id: ConnectionId,
    /// The will to publish, if the connection ended without a normal DISCONNECT.
    pub will: Option<Arc<Message>>,
    pub will_delay_secs: u32,
    /// Who the client logged in as, for the will's ACL check.
    pub username: Option<Arc<str>>,
}

/// Detaches a closing connection from its session.
pub fn detach(state: &Arc<BrokerState>, session: &Arc<Session>, departure: Departure) {
    let mut sessions = state.sessions();
    let mut st = session.lock();
    let still_attached = st.connection == Some(departure.connection_id);
    let mut will_delay = departure.will_delay_secs;
    let mut ended = None;
    let mut expiry_timer = None;
    // Taken over after this connection stopped looking for kicks (it was
    // already closing): the kick left for it is dropped below, which tells
    // the new connection, waiting in `attach`, that this one has detached.
    let stale_kick = st.take_kick(departure.connection_id);
    // If the session was taken over, the new connection decides its fate and
    // resolves a pending will when it attaches; only the will is handled here.
    if still_attached {
        st.connection = None;
        st.generation = st.generation.wrapping_add(1);
        session.set_online(false);
        if st.expiry_secs == 0 {
            // The session ends with the connection [MQTT-3.1.2-23], and with
            // it any will delay.
            will_delay = 0;
            ended = Some(st.clear());
            // Its record's delete is submitted before the session leaves the
            // registry: a new session of this client id, created only after
            // that, writes its record after the delete.
            unpersist(state, session, &mut st);
            sessions.remove(session);
        } else {
            // The will waits for the lesser of its delay and the expiry.
            will_delay = will_delay.min(st.expiry_secs);
            if st.expiry_secs != NEVER_EXPIRES {
                expiry_timer = Some((st.generation, st.expiry_secs));
            }
        }
    }
    // The registry lock was needed only to decide and remove.
    drop(sessions);
    if ended.is_some() {
        session_ended(state, &session.client_id, "disconnected");
    }
    let mut will_timer = None;
    let will_now = match departure.will {
        Some(will) if will_delay > 0 => {
            let delay = Duration::from_secs(u64::from(will_delay));
            st.pending_will = Some(Box::new(PendingWill {
                message: will.clone(),
                due: Instant::now() + delay,
                username: departure.username.clone(),
            }));
            will_timer = Some((will, delay));
            None
        }
        will => will,
    };
    if still_attached {
        // Under the session's lock, so its records reach the store in the
        // order of its changes.
        persist(state, session, &mut st);
    }
    drop(st);
    drop(stale_kick);
    if ended.is_some() {
        state.ownership.release(&session.client_id);
    }
    if let Some((will, delay)) = will_timer {
        schedule_will(state, session, will, delay);
    }
    if let Some(subscriptions) = ended {
        router::unsubscribe(state, session, subscriptions.into_keys());
    }
    if let Some(will) = will_now {
        publish_will(state, will, departure.username.as_ref());
    }
    if let Some((generation, expiry_secs)) = expiry_timer {
        let expiry = Duration::from_secs(u64::from(expiry_secs));
        schedule_expiry(state, session, generation, expiry);
    }
}

/// Publishes `will` after `delay_secs` unless the session was resumed (which
/// takes `pending_will`) or ended first (which published it).
pub(crate) fn schedule_will(
    state: &Arc<BrokerState>,
    session: &Arc<Session>,
    will: Arc<Message>,
    delay: Duration,
) {
    let state2 = state.clone();
    let session = session.clone();
    let shutdown = state.shutdown.clone();
    state.tasks.spawn(async move {
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => return,
        }
        let still_pending = |session: &Session| {
            let st = session.lock();
            st.pending_will
                .as_ref()
                .is_some_and(|p| Arc::ptr_eq(&p.message, &will))
        };
        // In a cluster another node may have published it (taking this one
        // for gone), or its client may be back elsewhere.
        if !still_pending(&session) || !state2.ownership.will_due(&session.client_id).await {
            return;
        }
        let due = {
            let mut st = session.lock();
            let due = match &st.pending_will {
                Some(pending) if Arc::ptr_eq(&pending.message, &will) => st.pending_will.take(),
                _ => None,
            };
            if due.is_some() {
                persist(&state2, &session, &mut st);
            }
            due
        };
        if let Some(will) = due {
            publish_will(&state2, will.message, will.username.as_ref());
        }
    });
}

/// Ends the session after `expiry_secs` if it is still in the same detached
/// period (`generation`).
pub(crate) fn schedule_expiry(
    state: &Arc<BrokerState>,
    session: &Arc<Session>,
    generation: u32,
    expiry: Duration,
) {
    let state2 = state.clone();
    let session = session.clone();
    let shutdown = state.shutdown.clone();
    state.tasks.spawn(async move {
        tokio::select! {
            _ = tokio::time::sleep(expiry) => {}
            _ = shutdown.cancelled() => return,
        }
        expire(&state2, &session, generation);
    });
}

/// Removes an expired session and publishes a will still waiting on it.
fn expire(state: &Arc<BrokerState>, session: &Arc<Session>, generation: u32) {
    if !end_offline(state, session, Some(generation)) {
        return;
    }
    Metrics::add(&state.metrics.sessions_expired, 1);
    // Throttled: when a fleet's sessions expire together, a few lines and a
    // count of the rest (and `$SYS/broker/clients/expired`) tell the story.
    let client_id = &session.client_id;
    crate::throttled!(info, "session expired", %client_id, "session expired: its client stayed away past its session expiry");
}

/// Ends a session no client is connected to (its expiry, or the admin
/// API): out of the registry, the tree and the store, and its pending will
/// published [MQTT-3.1.3-9]. With `generation`, only if it is still in that
/// detached period. False (and nothing done) if a client is connected.
pub fn end_offline(
    state: &Arc<BrokerState>,
    session: &Arc<Session>,
    generation: Option<u32>,
) -> bool {
    let mut sessions = state.sessions();
    let mut st = session.lock();
    if generation.is_some_and(|g| g != st.generation) || st.connection.is_some() {
        return false;
    }
    let will = st.pending_will.take();
    let subscriptions = st.clear();
    unpersist(state, session, &mut st);
    drop(st);
    sessions.remove(session);
    drop(sessions);
    let why = if generation.is_some() {
        "expired"
    } else {
        "removed"
    };
    session_ended(state, &session.client_id, why);
    state.ownership.release(&session.client_id);
    router::unsubscribe(state, session, subscriptions.into_keys());
    if let Some(will) = will {
        publish_will(state, will.message, will.username.as_ref());
    }
    true
}

/// A webhook's `session.ended`, for `why` (a bridge's session is its own).
fn session_ended(state: &BrokerState, client_id: &ByteStr, why: &'static str) {
    if !client_id.starts_with(auth::BRIDGE_CLIENT_PREFIX) {
        state.webhooks.emit(webhook::Kind::SessionEnded, || {
            webhook::Event::SessionEnded {
                client_id: client_id.clone(),
                reason: why,
            }
        });
    }
}

/// Publishes a will, if the ACL in force now still lets its client write its
/// topic. It was checked at CONNECT, but the rules may have been reloaded
/// since (SIGHUP), and a client must not keep a right it lost by leaving.
/// A cluster forgets the copy it kept (`seams::Ownership::will`).
pub(crate) fn publish_will(state: &BrokerState, will: Arc<Message>, username: Option<&Arc<str>>) {
    if let Some(origin) = &will.origin {
        state.ownership.will_gone(origin);
    }
    let client_id = will.origin.as_ref().map_or("", |id| id.as_str());
    let user = username.map(|u| &**u);
    let id = auth::Identity {
        username: user,
        client_id,
    };
    if !state.auth.may_write(&id, &will.topic) {
        tracing::info!(client_id, username = user, topic = %will.topic, "not publishing the will: its topic is no longer writable");
        return;
    }
    router::publish(state, will, username);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;
    use crate::auth::password::PasswordHash;
    use crate::session::Ousted;
    use tern_codec::ReasonCode;

    /// A single node's state with `config`, in memory.
    fn single_node(config: Config) -> Arc<BrokerState> {
        let auth = crate::auth::AuthState::new(&config).expect("auth");
        let retained = Box::new(crate::retained::LocalRetained::new(None));
        BrokerState::new(
            config,
            None,
            auth,
            crate::seams::Seams::single_node(),
            retained,
        )
    }

    fn id(n: u64) -> ConnectionId {
        ConnectionId::new(n).expect("not zero")
    }

    fn anonymous(state: &BrokerState) -> LoggedIn {
        LoggedIn {
            username: None,
            by_certificate: false,
            rules: state.auth.current(),
            acl: None,
        }
    }

    /// The interleaving behind a 5 s CONNACK: connection 1 has left its loop
    /// (DISCONNECT read, or the socket lost) and so no longer looks for kicks,
    /// connection 2 takes the session over, then connection 1 detaches.
    /// Connection 2 must go on at once, not after `TAKEOVER_WAIT`. Time is
    /// paused: any wait on a timer shows as elapsed time.
    #[tokio::test(start_paused = true)]
    async fn a_takeover_of_a_closing_connection_does_not_wait() {
        let config = Config::default();
        let state = single_node(config);
        let client_id = ByteStr::from("closing");
        let first = attach(&state, &client_id, true, 0, id(1), anonymous(&state)).await;
        let takeover = tokio::spawn({
            let (state, client_id) = (state.clone(), client_id.clone());
            let login = anonymous(&state);
            async move { attach(&state, &client_id, false, 0, id(2), login).await }
        });
        while first.session.lock().mail.is_none() {
            tokio::task::yield_now().await;
        }
        let started = tokio::time::Instant::now();
        let departure = Departure {
            connection_id: id(1),
            will: None,
            will_delay_secs: 0,
            username: None,
        };
        detach(&state, &first.session, departure);
        let second = takeover.await.expect("attach");
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(second.session.lock().connection, Some(id(2)));
    }

    /// A login judged by rules that a reload replaced before its connection
    /// attached, so the reload's scan did not see it: `attach` judges it
    /// again.
    #[tokio::test]
    async fn a_login_judged_before_a_reload_is_judged_again_on_attach() {
        let dir = std::env::temp_dir().join(format!("tern-relogin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let passwd = dir.join("passwd");
        let one = std::num::NonZeroU32::MIN;
        let line = |user: &str| {
            let hash = PasswordHash::new("pw", one).expect("hash").encode();
            format!("{user}:{hash}\n")
        };
        let bob = line("bob");
        std::fs::write(&passwd, line("alice") + &bob).expect("write");
        let config = Config {
            password_file: Some(passwd.clone()),
            ..Config::default()
        };
        let state = single_node(config);
        let judged = state.auth.current();
        std::fs::write(&passwd, &bob).expect("write");
        state.reload_auth().expect("reload");
        let login = |user: &str, by_certificate| LoggedIn {
            username: Some(Arc::from(user)),
            by_certificate,
            rules: judged.clone(),
            acl: None,
        };

        let alice = attach(&state, &"a".into(), true, 0, id(1), login("alice", false)).await;
        let refused = alice.session.lock().check_owner(id(1));
        assert!(matches!(
            refused,
            Err(Ousted::Refused(ReasonCode::NotAuthorized))
        ));
        let kept = attach(&state, &"b".into(), true, 0, id(2), login("bob", false)).await;
        assert!(kept.session.lock().check_owner(id(2)).is_ok());
        let by_cert = attach(&state, &"c".into(), true, 0, id(3), login("alice", true)).await;
        assert!(by_cert.session.lock().check_owner(id(3)).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
