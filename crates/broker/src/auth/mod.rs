//! Authentication (who may connect) and authorization (which topics they may
//! use), configured with Mosquitto's `password_file` and `acl_file`.
//!
//! The rules read from both files form one [`Auth`], which [`AuthState`]
//! (in `BrokerState::auth`) keeps behind a swappable `Arc`: a decision takes
//! the `Arc` once and never holds the lock across an `.await`, and
//! [`BrokerState::reload_auth`] swaps in new rules (or keeps the old ones if
//! a file is broken).
//!
//! Where decisions are made:
//! - CONNECT: [`authenticate`], from `connection::admit`: password (verified
//!   on the blocking pool), anonymous access, certificate identity, the
//!   will's topic; [`guard`] decides when a password may be checked
//!   (repeated failures from one address or for one username wait), and a
//!   semaphore how many are checked at once.
//! - PUBLISH: [`may_publish`] in `handler::publish`.
//! - SUBSCRIBE: [`subscribe_access`] in `handler::subscribe`, which also
//!   decides whether the filter is wholly readable ([`Readable`], kept in
//!   the subscription tree).
//! - Delivery: the router checks read access per message only for
//!   subscriptions not known to be wholly readable under the rules now in
//!   force ([`ReadCheck`]); with no ACL it checks nothing.

pub mod acl;
pub mod guard;
pub mod password;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use tern_codec::{Connect, ReasonCode};
use tokio::sync::Semaphore;

use self::acl::{Access, Acl, Identity};
use self::guard::Guard;
use self::password::PasswordTable;
use crate::config::Config;
use crate::connection::ConnInfo;
use crate::connection::client::Client;
use crate::session::{Session, SessionState};
use crate::state::BrokerState;

/// Password checks running at once: one core is always left for the
/// message path however many logins arrive (PBKDF2 is slow on purpose).
fn verification_slots() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1))
}

/// The rules in force: users and passwords, topic access.
#[derive(Debug, Default)]
pub struct Auth {
    /// `None`: no `password_file`; usernames are taken as given.
    pub passwords: Option<PasswordTable>,
    /// `None`: no `acl_file`; every topic is open to every client.
    pub acl: Option<Acl>,
}

impl Auth {
    /// Reads the files the configuration names.
    pub fn load(config: &Config) -> Result<Auth, String> {
        let passwords = match &config.password_file {
            Some(path) => {
                let table = PasswordTable::load(path)?;
                if table.is_empty() {
                    // Most likely a mistake (a file emptied, or every line
                    // unusable): from now on no password login succeeds.
                    tracing::warn!(file = %path.display(), "password file has no usable users: every login with a username will be refused until it has some");
                } else {
                    tracing::info!(file = %path.display(), users = table.len(), "password file loaded");
                }
                Some(table)
            }
            None => None,
        };
        let acl = match &config.acl_file {
            Some(path) => {
                let acl = Acl::load(path)?;
                let (rules, users) = acl.size();
                tracing::info!(file = %path.display(), rules, users, "ACL file loaded");
                Some(acl)
            }
            None => None,
        };
        Ok(Auth { passwords, acl })
    }
}

/// The rules and the failed-login table, shared by all connections.
#[derive(Debug)]
pub struct AuthState {
    current: RwLock<Arc<Auth>>,
    /// 0 while no ACL is in force, else a number new with every load: what
    /// a subscription found wholly readable under an older one is checked
    /// again per message.
    acl_generation: AtomicU64,
    loads: AtomicU64,
    guard: Mutex<Guard>,
    /// Password checks running at once ([`verification_slots`]).
    verifications: Semaphore,
}

impl AuthState {
    /// Loads the files; an error names the file, line and reason.
    pub fn new(config: &Config) -> Result<AuthState, String> {
        let state = AuthState {
            current: RwLock::new(Arc::new(Auth::default())),
            acl_generation: AtomicU64::new(0),
            loads: AtomicU64::new(0),
            guard: Mutex::new(Guard::default()),
            verifications: Semaphore::new(verification_slots()),
        };
        state.install(Auth::load(config)?);
        Ok(state)
    }

    /// The rules in force now.
    pub fn current(&self) -> Arc<Auth> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The rules in force and their ACL generation, read together.
    fn snapshot(&self) -> (Arc<Auth>, u64) {
        let guard = self.current.read().unwrap_or_else(|p| p.into_inner());
        (guard.clone(), self.acl_generation.load(Ordering::Relaxed))
    }

    /// 0 if no ACL is in force (nothing needs checking).
    pub fn acl_generation(&self) -> u64 {
        self.acl_generation.load(Ordering::Relaxed)
    }

    fn install(&self, auth: Auth) {
        let mut guard = self.current.write().unwrap_or_else(|p| p.into_inner());
        let generation = if auth.acl.is_some() {
            self.loads.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            0
        };
        *guard = Arc::new(auth);
        self.acl_generation.store(generation, Ordering::Relaxed);
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, Guard> {
        self.guard.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl BrokerState {
    /// Re-reads `password_file` and `acl_file`. On success the new rules
    /// decide every later connect, publish, subscribe and delivery (clients
    /// already connected stay connected). On error nothing changes and the
    /// message names the file, the line and why.
    pub fn reload_auth(&self) -> Result<(), String> {
        let auth = Auth::load(&self.config).inspect_err(|e| {
            tracing::warn!(error = %e, "authentication files not reloaded; the old rules stay");
        })?;
        self.auth.install(auth);
        tracing::info!("authentication files reloaded");
        Ok(())
    }
}

/// Decides who the client is: `Ok(username)` (`None`: anonymous), or the
/// CONNACK reason refusing it. Also checks that the will may be published.
/// A password is checked when [`guard`] says so.
pub async fn authenticate(
    connect: &Connect,
    client_id: &str,
    info: &ConnInfo,
    state: &BrokerState,
) -> Result<Option<Arc<str>>, ReasonCode> {
    let auth = state.auth.current();
    // Boxed: inline it would enlarge every connection's handshake future.
    // A refusal is logged once, with the username, where every CONNECT
    // refusal is (`connection::start_session`).
    let username = Box::pin(login(connect, info, state, &auth)).await?;
    if let (Some(will), Some(acl)) = (&connect.will, &auth.acl) {
        let id = Identity {
            username: username.as_deref(),
            client_id,
        };
        if !acl.allows(&id, &will.topic, Access::Write) {
            // The refusal itself is logged (once) by the caller, with the reason.
            tracing::debug!(peer = %info.peer, client_id, username = id.username, topic = %will.topic, "the will's topic is not writable");
            return Err(ReasonCode::NotAuthorized);
        }
    }
    Ok(username)
}

/// The username the client is known by, or why it is refused.
async fn login(
    connect: &Connect,
    info: &ConnInfo,
    state: &BrokerState,
    auth: &Arc<Auth>,
) -> Result<Option<Arc<str>>, ReasonCode> {
    let listener = state.config.listeners.get(info.listener);
    if listener.is_some_and(|l| l.use_identity_as_username) {
        // The certificate vouches for the client; no password is checked.
        return match &info.cert_identity {
            Some(cn) => Ok(Some(Arc::from(cn.as_str()))),
            None => Err(ReasonCode::NotAuthorized),
        };
    }
    let Some(username) = &connect.username else {
        return if state.config.allows_anonymous(info.listener) {
            Ok(None)
        } else {
            Err(ReasonCode::NotAuthorized)
        };
    };
    let username: Arc<str> = Arc::from(username.as_str());
    if auth.passwords.is_none() {
        return Ok(Some(username));
    }
    let Some(password) = connect.password.clone() else {
        return Err(ReasonCode::BadUserNameOrPassword);
    };
    let mut attempt = Attempt::admit(state, info.peer.ip(), &username)?;
    tokio::select! {
        () = tokio::time::sleep_until(attempt.start.into()) => {}
        () = state.shutdown.cancelled() => return Err(ReasonCode::ServerShuttingDown),
    }
    let auth = auth.clone();
    let user = username.clone();
    let verified = {
        // Held across the check only: waiting for it is what the guard's
        // spacing and MAX_WAIT bound.
        let _slot = state.auth.verifications.acquire().await;
        tokio::task::spawn_blocking(move || {
            auth.passwords
                .as_ref()
                .is_some_and(|t| t.check(&user, &password))
        })
        .await
        .unwrap_or(false)
    };
    attempt.outcome = Some(verified);
    drop(attempt);
    if verified {
        Ok(Some(username))
    } else {
        Err(ReasonCode::BadUserNameOrPassword)
    }
}

/// A login admitted by the guard; reports its outcome when dropped (also
/// if the connection goes away while it waits: then as not checked).
struct Attempt<'a> {
    state: &'a BrokerState,
    ip: IpAddr,
    username: Arc<str>,
    /// When the password may be checked.
    start: Instant,
    outcome: Option<bool>,
}

impl<'a> Attempt<'a> {
    /// Asks the guard when the password may be checked; `Err(ServerBusy)`
    /// if it would wait too long (MQTT 3.1.1: return code 3).
    fn admit(
        state: &'a BrokerState,
        ip: IpAddr,
        username: &Arc<str>,
    ) -> Result<Attempt<'a>, ReasonCode> {
        match state.auth.guard().admit(ip, username, Instant::now()) {
            Some(start) => Ok(Attempt {
                state,
                ip,
                username: username.clone(),
                outcome: None,
                start,
            }),
            None => {
                tracing::debug!(%ip, username = &**username, "login attempt refused unchecked: too many recent failures");
                Err(ReasonCode::ServerBusy)
            }
        }
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        self.state
            .auth
            .guard()
            .finish(self.ip, &self.username, self.outcome, Instant::now());
    }
}

/// Records a connection's username in its session (`st`, locked), where
/// deliveries look it up. A change makes earlier "wholly readable" decisions
/// stale. Done as the connection attaches, under the same lock, so no
/// delivery is judged by a previous user's rights once the new one owns it.
pub fn bind_session(session: &Session, st: &mut SessionState, username: Option<Arc<str>>) {
    if st.username != username {
        st.username = username;
        session.identity.fetch_add(1, Ordering::Relaxed);
    }
}

/// Whether a client logged in as `username` may use a client id whose
/// session belongs to `owner` (the username its client last connected
/// with). A client id is all MQTT identifies a session by, so without this
/// anyone allowed to connect could kick another user's client off and end
/// its session (MQTT 5.0 section 5.4.2 asks the server to check that a
/// client may use a client id). A session of an anonymous client belongs to
/// nobody; `takeover_allowed` (`client_id_takeover_by_other_users`) restores
/// Mosquitto's rule, under which anyone may.
pub fn may_use_client_id(
    owner: Option<&str>,
    username: Option<&str>,
    takeover_allowed: bool,
) -> bool {
    takeover_allowed || owner.is_none_or(|owner| Some(owner) == username)
}

/// Whether the client may publish to `topic`.
pub fn may_publish(client: &Client, topic: &str) -> bool {
    may_write(
        &client.state,
        client.username.as_deref(),
        client.client_id(),
        topic,
    )
}

/// Whether a client logged in as `username` with `client_id` may publish to
/// `topic` under the rules in force now (for a will, whose client is gone).
pub fn may_write(
    state: &BrokerState,
    username: Option<&str>,
    client_id: &str,
    topic: &str,
) -> bool {
    if state.auth.acl_generation() == 0 {
        return true;
    }
    let auth = state.auth.current();
    auth.acl.as_ref().is_none_or(|acl| {
        let id = Identity {
            username,
            client_id,
        };
        acl.allows(&id, topic, Access::Write)
    })
}

/// Whether the client may read `topic` (a retained message on subscribe).
pub fn may_read(client: &Client, topic: &str) -> bool {
    let auth = client.state.auth.current();
    auth.acl.as_ref().is_none_or(|acl| {
        let id = Identity {
            username: client.username.as_deref(),
            client_id: client.client_id(),
        };
        acl.allows(&id, topic, Access::Read)
    })
}

/// A subscription's standing under the ACL, kept in the subscription tree:
/// the ACL generation and session identity under which its filter was found
/// wholly readable. The default (generation 0) is "not known".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Readable {
    acl_generation: u64,
    identity: u32,
}

impl Readable {
    /// Whether deliveries through this subscription need a read check now.
    pub fn needs_check(&self, acl_generation: u64, session: &Session) -> bool {
        acl_generation != 0
            && !(self.acl_generation == acl_generation
                && self.identity == session.identity.load(Ordering::Relaxed))
    }
}

/// Whether a SUBSCRIBE to `filter` (without `$share/group/`) is granted,
/// and its standing for deliveries.
pub fn subscribe_access(client: &Client, filter: &str) -> (bool, Readable) {
    let (auth, acl_generation) = client.state.auth.snapshot();
    let Some(acl) = &auth.acl else {
        return (true, Readable::default());
    };
    let id = Identity {
        username: client.username.as_deref(),
        client_id: client.client_id(),
    };
    let access = acl.filter_access(&id, filter);
    let readable = if access.whole {
        Readable {
            acl_generation,
            identity: client.session.identity.load(Ordering::Relaxed),
        }
    } else {
        Readable::default()
    };
    (access.granted, readable)
}

/// Read checks for one message's deliveries; loads the rules on first use.
#[derive(Default)]
pub struct ReadCheck {
    auth: Option<Arc<Auth>>,
}

impl ReadCheck {
    /// Whether the session's client may read `topic`.
    pub fn allows(&mut self, state: &BrokerState, session: &Session, topic: &str) -> bool {
        let auth = self.auth.get_or_insert_with(|| state.auth.current());
        let Some(acl) = &auth.acl else {
            return true;
        };
        let username = session.lock().username.clone();
        let id = Identity {
            username: username.as_deref(),
            client_id: &session.client_id,
        };
        acl.allows(&id, topic, Access::Read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_id_is_used_only_by_the_user_its_session_belongs_to() {
        let may = may_use_client_id;
        assert!(may(None, None, false), "no owner, anonymous");
        assert!(may(None, Some("alice"), false), "no owner: anyone");
        assert!(may(Some("alice"), Some("alice"), false), "the owner");
        assert!(!may(Some("alice"), Some("bob"), false), "another user");
        assert!(!may(Some("alice"), None, false), "an anonymous client");
        assert!(may(Some("alice"), Some("bob"), true), "Mosquitto's rule");
        assert!(
            may(Some("alice"), None, true),
            "Mosquitto's rule, anonymous"
        );
    }
}
