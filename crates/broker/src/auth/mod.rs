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
//!   will's topic, and the slow-down of repeated failures from one IP.
//! - PUBLISH: [`may_publish`] in `handler::publish`.
//! - SUBSCRIBE: [`subscribe_access`] in `handler::subscribe`, which also
//!   decides whether the filter is wholly readable ([`Readable`], kept in
//!   the subscription tree).
//! - Delivery: the router checks read access per message only for
//!   subscriptions not known to be wholly readable under the rules now in
//!   force ([`ReadCheck`]); with no ACL it checks nothing.

pub mod acl;
pub mod password;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tern_codec::{Connect, ReasonCode};

use self::acl::{Access, Acl, Identity};
use self::password::PasswordTable;
use crate::config::Config;
use crate::connection::ConnInfo;
use crate::connection::client::Client;
use crate::session::{Session, SessionState};
use crate::state::BrokerState;

/// Failed logins from one IP address that cost nothing extra.
pub const FREE_FAILURES: u32 = 3;
/// The delay before the CONNACK of each attempt after the free ones:
/// 250 ms, doubling per further failure...
pub const FIRST_DELAY: Duration = Duration::from_millis(250);
/// ...up to 4 s.
pub const MAX_DELAY: Duration = Duration::from_secs(4);
/// An address without a failure for this long starts afresh.
pub const FAILURE_MEMORY: Duration = Duration::from_secs(60);
/// Addresses remembered at once; beyond this the longest quiet is forgotten.
pub const MAX_TRACKED_ADDRESSES: usize = 10_000;

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
        let acl = config.acl_file.as_deref().map(Acl::load).transpose()?;
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
    failures: Mutex<Failures>,
}

impl AuthState {
    /// Loads the files; an error names the file, line and reason.
    pub fn new(config: &Config) -> Result<AuthState, String> {
        let state = AuthState {
            current: RwLock::new(Arc::new(Auth::default())),
            acl_generation: AtomicU64::new(0),
            loads: AtomicU64::new(0),
            failures: Mutex::new(Failures::default()),
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

    fn failures(&self) -> std::sync::MutexGuard<'_, Failures> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
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

/// Recent failed logins per IP address.
#[derive(Debug, Default)]
struct Failures {
    by_ip: HashMap<IpAddr, (u32, Instant)>,
}

impl Failures {
    /// How long to hold this address's next CONNACK.
    fn delay(&mut self, ip: IpAddr, now: Instant) -> Duration {
        let Some(&(count, last)) = self.by_ip.get(&ip) else {
            return Duration::ZERO;
        };
        if now.duration_since(last) >= FAILURE_MEMORY {
            self.by_ip.remove(&ip);
            return Duration::ZERO;
        }
        match count.checked_sub(FREE_FAILURES) {
            None => Duration::ZERO,
            Some(extra) => FIRST_DELAY
                .saturating_mul(1 << extra.min(16))
                .min(MAX_DELAY),
        }
    }

    fn record(&mut self, ip: IpAddr, now: Instant) {
        if self.by_ip.len() >= MAX_TRACKED_ADDRESSES && !self.by_ip.contains_key(&ip) {
            self.by_ip
                .retain(|_, (_, last)| now.duration_since(*last) < FAILURE_MEMORY);
            if self.by_ip.len() >= MAX_TRACKED_ADDRESSES
                && let Some(oldest) = self
                    .by_ip
                    .iter()
                    .min_by_key(|(_, (_, t))| *t)
                    .map(|(k, _)| *k)
            {
                self.by_ip.remove(&oldest);
            }
        }
        let entry = self.by_ip.entry(ip).or_insert((0, now));
        if now.duration_since(entry.1) >= FAILURE_MEMORY {
            entry.0 = 0;
        }
        entry.0 = entry.0.saturating_add(1);
        entry.1 = now;
    }
}

/// Decides who the client is: `Ok(username)` (`None`: anonymous), or the
/// CONNACK reason refusing it. Also checks that the will may be published.
/// An address with repeated failures waits before it learns the answer.
pub async fn authenticate(
    connect: &Connect,
    client_id: &str,
    info: &ConnInfo,
    state: &BrokerState,
) -> Result<Option<Arc<str>>, ReasonCode> {
    let ip = info.peer.ip();
    let delay = state.auth.failures().delay(ip, Instant::now());
    let auth = state.auth.current();
    // Boxed, like the sleep below: inline they would enlarge every
    // connection's handshake future, most of which need neither.
    let result = Box::pin(login(connect, info, state, &auth)).await;
    if result == Err(ReasonCode::BadUserNameOrPassword) {
        state.auth.failures().record(ip, Instant::now());
    }
    if !delay.is_zero() {
        Box::pin(tokio::time::sleep(delay)).await;
    }
    // A refusal is logged once, with the username, where every CONNECT
    // refusal is (`connection::start_session`).
    let username = result?;
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
    let auth = auth.clone();
    let user = username.clone();
    let verified = tokio::task::spawn_blocking(move || {
        auth.passwords
            .as_ref()
            .is_some_and(|t| t.check(&user, &password))
    })
    .await
    .unwrap_or(false);
    if verified {
        Ok(Some(username))
    } else {
        Err(ReasonCode::BadUserNameOrPassword)
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

    #[test]
    fn failures_slow_down_then_decay() {
        let mut f = Failures::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..FREE_FAILURES {
            assert_eq!(f.delay(ip, t0), Duration::ZERO);
            f.record(ip, t0);
        }
        assert_eq!(f.delay(ip, t0), FIRST_DELAY);
        f.record(ip, t0);
        assert_eq!(f.delay(ip, t0), FIRST_DELAY * 2);
        for _ in 0..10 {
            f.record(ip, t0);
        }
        assert_eq!(f.delay(ip, t0), MAX_DELAY);
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(f.delay(other, t0), Duration::ZERO);
        assert_eq!(f.delay(ip, t0 + FAILURE_MEMORY), Duration::ZERO);
    }

    #[test]
    fn failure_table_is_bounded() {
        let mut f = Failures::default();
        let t0 = Instant::now();
        for i in 0..(MAX_TRACKED_ADDRESSES as u32 + 50) {
            f.record(
                IpAddr::from(i.to_be_bytes()),
                t0 + Duration::from_millis(i.into()),
            );
        }
        assert_eq!(f.by_ip.len(), MAX_TRACKED_ADDRESSES);
    }
}
