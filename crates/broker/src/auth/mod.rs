//! Authentication (who may connect) and authorization (which topics they may
//! use), configured with Mosquitto's `password_file` and `acl_file`.
//!
//! The rules read from both files form one [`Auth`], which [`AuthState`]
//! (in `BrokerState::auth`) keeps behind a swappable `Arc`: a decision takes
//! the `Arc` once and never holds the lock across an `.await`, and
//! [`AuthState::reload`] swaps in new rules (or keeps the old ones if a file
//! is broken).
//!
//! Every decision is a function of the rules and a few plain inputs (an
//! [`Identity`], a topic, a listener's settings): this module knows nothing
//! of connections or sessions, and the handlers turn its answers into
//! packets.
//!
//! Where decisions are made:
//! - CONNECT: [`AuthState::authenticate`], from `connection`: password (verified
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
//! - Reload: [`Auth::still_admits`] judges again a login made under earlier
//!   rules, for `BrokerState::reload_auth`, which closes the connections it
//!   refuses.

pub mod acl;
pub mod guard;
mod hook;
mod jwt;
pub mod password;

use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tern_codec::{Connect, ReasonCode};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub use self::acl::{Access, Acl, BRIDGE_CLIENT_PREFIX, Identity};
use self::guard::Guard;
use self::password::PasswordTable;
use crate::config::Config;
use crate::lock::{Mutex, MutexGuard, RwLock, rank};

/// Password checks running at once: one core is always left for the
/// message path however many logins arrive (PBKDF2 is slow on purpose).
fn verification_slots() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1))
}

/// Why the password file or the ACL file cannot be used. Each message names
/// the file, and for the ACL the line, so an operator can go straight to it;
/// a reload that fails with one keeps the rules in force before.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// `password_file` cannot be read (missing, not permitted, not UTF-8).
    /// Lines that cannot be used are only skipped with a warning.
    #[error("cannot read password file {}: {reason}{}", .path.display(), create_hint(.path, .reason))]
    PasswordFile { path: PathBuf, reason: io::Error },
    /// `acl_file` cannot be read.
    #[error("cannot read ACL file {}: {reason}", .path.display())]
    AclFile { path: PathBuf, reason: io::Error },
    /// A line of `acl_file` that is not a rule. The whole file is refused,
    /// as Mosquitto refuses it: a rule skipped could open a topic.
    #[error("ACL file {}: line {line}: {reason}", .path.display())]
    AclLine {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    /// `[auth_jwt]`'s key file cannot be used.
    #[error("JWT key file {}: {reason}", .path.display())]
    JwtKey { path: PathBuf, reason: String },
}

impl AuthError {
    /// The file at fault.
    pub fn path(&self) -> &Path {
        match self {
            AuthError::PasswordFile { path, .. }
            | AuthError::AclFile { path, .. }
            | AuthError::AclLine { path, .. }
            | AuthError::JwtKey { path, .. } => path,
        }
    }
}

/// For a password file that does not exist: how to make one.
fn create_hint(path: &Path, reason: &io::Error) -> String {
    if reason.kind() == io::ErrorKind::NotFound {
        format!(
            " (create it with `tern passwd -c {} USERNAME`)",
            path.display()
        )
    } else {
        String::new()
    }
}

/// The rules in force: users and passwords, topic access.
#[derive(Debug, Default)]
pub struct Auth {
    /// `None`: no `password_file`; usernames are taken as given.
    pub passwords: Option<PasswordTable>,
    /// `None`: no `acl_file`; every topic is open to every client.
    pub acl: Option<Acl>,
    /// Which load these are (see [`Auth::generation`]); set when installed.
    generation: u64,
}

impl Auth {
    /// Reads the files the configuration names.
    pub fn load(config: &Config) -> Result<Auth, AuthError> {
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
        Ok(Auth {
            passwords,
            acl,
            generation: 0,
        })
    }

    /// A number new with every set of rules installed (every successful
    /// load): a session records the one its connection's login was judged
    /// by, so a reload knows which logins to judge again. 32 bits, as
    /// every session keeps one (4 bytes more would take it into a larger
    /// heap chunk); the numbers repeat after 2^32 loads, but a login is
    /// judged again at every reload, so it is never compared with rules
    /// that old.
    pub fn generation(&self) -> u32 {
        self.generation as u32
    }

    /// Whether these rules still admit a client that logged in under
    /// `before` as `username` (`None`: anonymously), `by_certificate` or
    /// with a password. The CONNECT-time decision made again, with what is
    /// known after CONNECT: the password itself is not kept.
    /// - By certificate (`use_identity_as_username`): the certificate
    ///   vouches for the client, not the password file; still admitted.
    /// - Anonymous: whether a listener admits clients without a username
    ///   depends on the configuration only (`Config::allows_anonymous`),
    ///   which a reload does not change; still admitted.
    /// - No password file: usernames are taken as given; still admitted.
    /// - A password: admitted while its user's entry is the very one the
    ///   password was verified against. A user removed, or given a new hash
    ///   (a new password, or the same one hashed again with a new salt: the
    ///   two cannot be told apart), must log in again.
    ///
    /// The will is not judged here: its topic is checked again when it is
    /// published (`registry::publish_will`).
    pub fn still_admits(
        &self,
        before: &Auth,
        username: Option<&str>,
        by_certificate: bool,
    ) -> Result<(), Revoked> {
        let (Some(now), Some(user), false) = (&self.passwords, username, by_certificate) else {
            return Ok(());
        };
        let Some(hash) = now.hash_of(user) else {
            return Err(Revoked::UnknownUser);
        };
        // No table before means no password was verified: judged as a login
        // whose password cannot be checked (the configuration names the file,
        // so a reload never adds one; this only keeps the rule total).
        let verified = before.passwords.as_ref().and_then(|t| t.hash_of(user));
        if verified == Some(hash) {
            Ok(())
        } else {
            Err(Revoked::NewPassword)
        }
    }
}

/// Why a login made under earlier rules is no longer valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    /// Its user is no longer in the password file.
    UnknownUser,
    /// Its user's entry in the password file changed.
    NewPassword,
}

impl std::fmt::Display for Revoked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Revoked::UnknownUser => "its user is no longer in the password file",
            Revoked::NewPassword => "its user's password changed in the password file",
        })
    }
}

/// The rules and the failed-login table, shared by all connections.
#[derive(Debug)]
pub struct AuthState {
    current: RwLock<Arc<Auth>, { rank::AUTH_RULES }>,
    /// 0 while no ACL is in force, else a number new with every load: what
    /// a subscription found wholly readable under an older one is checked
    /// again per message.
    acl_generation: AtomicU64,
    /// Rules installed so far: the last ones' [`Auth::generation`].
    loads: AtomicU64,
    guard: Mutex<Guard, { rank::AUTH_GUARD }>,
    /// Password checks running at once ([`verification_slots`]).
    verifications: Semaphore,
    /// Passwords and API tokens checked and found wrong (MQTT and HTTP).
    pub failures: AtomicU64,
    /// `[auth_hook]`: the HTTP service asked about each login first.
    hook: Option<hook::Hook>,
    /// `[auth_jwt]`: tokens as passwords, checked before the hook.
    jwt: Option<Arc<jwt::Jwt>>,
}

/// Who a login turned out to be.
#[derive(Debug)]
pub struct Authenticated {
    /// `None`: anonymous.
    pub username: Option<Arc<str>>,
    /// The client's own topic rules, from the auth hook: they replace the
    /// ACL file's for it.
    pub acl: Option<Arc<Acl>>,
    /// A token or the auth hook let it in (not the password file, which a
    /// reload then does not judge it by).
    pub external: bool,
}

impl Authenticated {
    /// Let in by a token or the auth hook, as the username it gave, with
    /// the rules they gave.
    fn external(login: &Login<'_>, acl: Option<Arc<Acl>>) -> Authenticated {
        Authenticated {
            username: login
                .connect
                .username
                .as_ref()
                .map(|u| Arc::from(u.as_str())),
            acl,
            external: true,
        }
    }
}

impl AuthState {
    /// Loads the files; an error names the file, line and reason.
    pub fn new(config: &Config) -> Result<AuthState, AuthError> {
        let state = AuthState {
            current: RwLock::new(Arc::new(Auth::default())),
            acl_generation: AtomicU64::new(0),
            loads: AtomicU64::new(0),
            guard: Mutex::new(Guard::default()),
            verifications: Semaphore::new(verification_slots()),
            failures: AtomicU64::new(0),
            hook: config.auth_hook.as_ref().map(hook::Hook::new),
            jwt: match &config.auth_jwt {
                Some(jwt) => Some(Arc::new(jwt::Jwt::new(jwt)?)),
                None => None,
            },
        };
        state.install(Auth::load(config)?);
        Ok(state)
    }

    /// The rules in force now.
    pub fn current(&self) -> Arc<Auth> {
        self.current.read().clone()
    }

    /// The rules in force and their ACL generation, read together.
    fn snapshot(&self) -> (Arc<Auth>, u64) {
        let guard = self.current.read();
        (guard.clone(), self.acl_generation.load(Ordering::Relaxed))
    }

    /// 0 if no ACL is in force (nothing needs checking).
    pub fn acl_generation(&self) -> u64 {
        self.acl_generation.load(Ordering::Relaxed)
    }

    fn install(&self, mut auth: Auth) {
        let mut guard = self.current.write();
        auth.generation = self.loads.fetch_add(1, Ordering::Relaxed) + 1;
        let acl_generation = if auth.acl.is_some() {
            auth.generation
        } else {
            0
        };
        *guard = Arc::new(auth);
        self.acl_generation.store(acl_generation, Ordering::Relaxed);
    }

    fn guard(&self) -> MutexGuard<'_, Guard, { rank::AUTH_GUARD }> {
        self.guard.lock()
    }
}

impl AuthState {
    /// Re-reads `password_file` and `acl_file`. On success the new rules
    /// decide every later connect, publish, subscribe and delivery. On error
    /// nothing changes and the error names the file, the line and why.
    pub fn reload(&self, config: &Config) -> Result<(), AuthError> {
        let auth = Auth::load(config).inspect_err(|e| {
            tracing::warn!(error = %e, "authentication files not reloaded; the old rules stay");
        })?;
        self.install(auth);
        tracing::info!("authentication files reloaded");
        Ok(())
    }
}

/// What a login is judged by, besides the rules: the CONNECT, where it came
/// from, and its listener's settings.
#[derive(Debug, Clone, Copy)]
pub struct Login<'a> {
    pub connect: &'a Connect,
    pub client_id: &'a str,
    pub ip: IpAddr,
    /// The listener takes the verified certificate's Common Name
    /// (`cert_identity`) as the username, and checks no password.
    pub use_identity_as_username: bool,
    pub cert_identity: Option<&'a str>,
    /// The listener admits clients without a username.
    pub allow_anonymous: bool,
    /// The listener, as the configuration names it (`tcp 0.0.0.0:1883`),
    /// for the auth hook.
    pub listener: &'a str,
}

impl AuthState {
    /// Decides who the client is under `auth` (the rules in force, from
    /// [`AuthState::current`]; the caller keeps them, so that a reload
    /// meanwhile can judge this login again): `Ok(username)` (`None`:
    /// anonymous), or the CONNACK reason refusing it. Also checks that the
    /// will may be published. A password is checked when [`guard`] says so;
    /// waiting for that ends at `shutdown`.
    pub async fn authenticate(
        &self,
        auth: &Arc<Auth>,
        login: &Login<'_>,
        shutdown: &CancellationToken,
    ) -> Result<Authenticated, ReasonCode> {
        // Boxed: inline it would enlarge every connection's handshake future.
        // A refusal is logged once, with the username, where every CONNECT
        // refusal is (`connection::handshake::start_session`).
        let who = match self.check_token(login)? {
            Some(who) => Some(who),
            None => self.ask_hook(login).await?,
        };
        let who = match who {
            Some(who) => who,
            None => Authenticated {
                username: Box::pin(self.login(login, auth, shutdown)).await?,
                acl: None,
                external: false,
            },
        };
        // The client's own rules, else the ACL file's.
        let acl = who.acl.as_deref().or(auth.acl.as_ref());
        if let (Some(will), Some(acl)) = (&login.connect.will, acl) {
            let id = Identity {
                username: who.username.as_deref(),
                client_id: login.client_id,
            };
            if !acl.allows(&id, &will.topic, Access::Write) {
                // The refusal itself is logged (once) by the caller, with the reason.
                tracing::debug!(ip = %login.ip, client_id = login.client_id, username = id.username, topic = %will.topic, "the will's topic is not writable");
                return Err(ReasonCode::NotAuthorized);
            }
        }
        Ok(who)
    }

    /// With `[auth_jwt]`, a password that is a token decides: `Some` if it
    /// verifies, `Err` if not; `None` for a password that is no token.
    fn check_token(&self, login: &Login<'_>) -> Result<Option<Authenticated>, ReasonCode> {
        let Some(jwt) = &self.jwt else {
            return Ok(None);
        };
        if login.use_identity_as_username {
            return Ok(None);
        }
        match jwt.check(login) {
            jwt::Verdict::NotAToken => Ok(None),
            jwt::Verdict::Valid(acl) => Ok(Some(Authenticated::external(login, acl))),
            jwt::Verdict::Invalid(why) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(client_id = login.client_id, "token refused: {why}");
                Err(ReasonCode::BadUserNameOrPassword)
            }
        }
    }

    /// With `[auth_jwt]` and a `jwks_url`: the task keeping its keys
    /// fetched (see `jwt::Jwt::refresh`).
    pub fn jwks_refresher(
        &self,
        shutdown: CancellationToken,
    ) -> Option<impl Future<Output = ()> + Send + 'static> {
        let jwt = self.jwt.clone()?;
        Some(jwt.refresh(shutdown))
    }

    /// The auth hook's say, if there is one: `Some` if it let the client in,
    /// `None` if the password file decides (it said "ignore", or failed
    /// with `fail_open`), `Err` if it refused (or failed).
    async fn ask_hook(&self, login: &Login<'_>) -> Result<Option<Authenticated>, ReasonCode> {
        let Some(hook) = &self.hook else {
            return Ok(None);
        };
        if login.use_identity_as_username {
            // The certificate vouches for the client.
            return Ok(None);
        }
        match Box::pin(hook.ask(login)).await {
            hook::Verdict::Allow(acl) => Ok(Some(Authenticated::external(login, acl))),
            hook::Verdict::Deny => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                Err(ReasonCode::BadUserNameOrPassword)
            }
            hook::Verdict::Ignore => Ok(None),
            hook::Verdict::Failed(why) => {
                let fall_back = hook.fails_open();
                crate::throttled!(
                    warn,
                    "auth hook failed",
                    client_id = login.client_id,
                    "the auth hook gave no usable answer ({why}): {}",
                    if fall_back {
                        "the password file decides (fail_open)"
                    } else {
                        "refusing the client (CONNACK Server unavailable)"
                    }
                );
                match fall_back {
                    true => Ok(None),
                    false => Err(ReasonCode::ServerUnavailable),
                }
            }
        }
    }

    /// The username the client is known by, or why it is refused.
    async fn login(
        &self,
        login: &Login<'_>,
        auth: &Arc<Auth>,
        shutdown: &CancellationToken,
    ) -> Result<Option<Arc<str>>, ReasonCode> {
        if login.use_identity_as_username {
            // The certificate vouches for the client; no password is checked.
            return match login.cert_identity {
                Some(cn) => Ok(Some(Arc::from(cn))),
                None => Err(ReasonCode::NotAuthorized),
            };
        }
        let Some(username) = &login.connect.username else {
            return if login.allow_anonymous {
                Ok(None)
            } else {
                Err(ReasonCode::NotAuthorized)
            };
        };
        let username: Arc<str> = Arc::from(username.as_str());
        if auth.passwords.is_none() {
            // Without a password file a username is taken as given, unless
            // tokens or a hook are how logins are checked: then one they
            // did not accept has nothing left to accept it.
            return match self.jwt.is_some() || self.hook.is_some() {
                true => Err(ReasonCode::BadUserNameOrPassword),
                false => Ok(Some(username)),
            };
        }
        let Some(password) = login.connect.password.clone() else {
            return Err(ReasonCode::BadUserNameOrPassword);
        };
        let check = self.verify(auth, &username, password);
        if self.guarded(login.ip, &username, shutdown, check).await? {
            Ok(Some(username))
        } else {
            Err(ReasonCode::BadUserNameOrPassword)
        }
    }

    /// Runs `check` (of a password, or an HTTP API token) once the guard
    /// lets `username` from `ip` be checked, and tells the guard how it
    /// went: spaced, and counted in [`AuthState::failures`], as every
    /// login's is. `Err`: refused unchecked (`ServerBusy`: too many recent
    /// failures; `ServerShuttingDown`).
    pub async fn guarded(
        &self,
        ip: IpAddr,
        username: &Arc<str>,
        shutdown: &CancellationToken,
        check: impl Future<Output = bool>,
    ) -> Result<bool, ReasonCode> {
        let mut attempt = Attempt::admit(self, ip, username)?;
        tokio::select! {
            () = tokio::time::sleep_until(attempt.start.into()) => {}
            () = shutdown.cancelled() => return Err(ReasonCode::ServerShuttingDown),
        }
        let verified = check.await;
        attempt.outcome = Some(verified);
        if !verified {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        Ok(verified)
    }

    /// Checks a password on the blocking pool, within the
    /// [`verification_slots`].
    pub async fn verify(
        &self,
        auth: &Arc<Auth>,
        username: &Arc<str>,
        password: bytes::Bytes,
    ) -> bool {
        let auth = auth.clone();
        let user = username.clone();
        // Held across the check only: waiting for it is what the guard's
        // spacing and MAX_WAIT bound.
        let _slot = self.verifications.acquire().await;
        tokio::task::spawn_blocking(move || {
            auth.passwords
                .as_ref()
                .is_some_and(|t| t.check(&user, &password))
        })
        .await
        .unwrap_or(false)
    }
}

/// A login admitted by the guard; reports its outcome when dropped (also
/// if the connection goes away while it waits: then as not checked).
struct Attempt<'a> {
    auth: &'a AuthState,
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
        auth: &'a AuthState,
        ip: IpAddr,
        username: &Arc<str>,
    ) -> Result<Attempt<'a>, ReasonCode> {
        match auth.guard().admit(ip, username, Instant::now()) {
            Some(start) => Ok(Attempt {
                auth,
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
        self.auth
            .guard()
            .finish(self.ip, &self.username, self.outcome, Instant::now());
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

impl AuthState {
    /// Whether `id` may publish to `topic` under the rules in force now
    /// (also for a will, whose client is gone).
    pub fn may_write(&self, id: &Identity<'_>, topic: &str) -> bool {
        if self.acl_generation() == 0 {
            return true;
        }
        let auth = self.current();
        auth.acl
            .as_ref()
            .is_none_or(|acl| acl.allows(id, topic, Access::Write))
    }

    /// Whether `id` may read `topic` (a retained message on subscribe).
    pub fn may_read(&self, id: &Identity<'_>, topic: &str) -> bool {
        let auth = self.current();
        auth.acl
            .as_ref()
            .is_none_or(|acl| acl.allows(id, topic, Access::Read))
    }

    /// A subscription's standing that needs no read checks under the rules
    /// in force now (for a session of identity `session_identity`).
    pub fn readable_now(&self, session_identity: u32) -> Readable {
        Readable {
            acl_generation: self.acl_generation(),
            identity: session_identity,
        }
    }

    /// Whether `id` may SUBSCRIBE to `filter` (without `$share/group/`),
    /// and the subscription's standing for deliveries. `session_identity`:
    /// the session's [`Readable`] identity now.
    pub fn subscribe_access(
        &self,
        id: &Identity<'_>,
        session_identity: u32,
        filter: &str,
    ) -> (bool, Readable) {
        let (auth, acl_generation) = self.snapshot();
        let Some(acl) = &auth.acl else {
            return (true, Readable::default());
        };
        let access = acl.filter_access(id, filter);
        let readable = if access.whole {
            Readable {
                acl_generation,
                identity: session_identity,
            }
        } else {
            Readable::default()
        };
        (access.granted, readable)
    }
}

/// A subscription's standing under the ACL, kept in the subscription tree:
/// the ACL generation and session identity under which its filter was found
/// wholly readable. The default (generation 0) is "not known". A session's
/// identity (`Session::identity`) changes when a client with another
/// username attaches to it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Readable {
    acl_generation: u64,
    identity: u32,
}

impl Readable {
    /// Whether deliveries through this subscription need a read check now,
    /// for a session whose identity is `session_identity`.
    pub fn needs_check(&self, acl_generation: u64, session_identity: u32) -> bool {
        acl_generation != 0
            && !(self.acl_generation == acl_generation && self.identity == session_identity)
    }
}

/// Read checks for one message's deliveries; loads the rules on first use.
#[derive(Default)]
pub struct ReadCheck {
    auth: Option<Arc<Auth>>,
}

impl ReadCheck {
    /// Whether `id` may read `topic`.
    pub fn allows(&mut self, rules: &AuthState, id: &Identity<'_>, topic: &str) -> bool {
        let auth = self.auth.get_or_insert_with(|| rules.current());
        auth.acl
            .as_ref()
            .is_none_or(|acl| acl.allows(id, topic, Access::Read))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::net::Ipv4Addr;
    use std::num::NonZeroU32;
    use std::path::Path;

    use tern_codec::{ByteStr, ConnectProperties, LastWill, ProtocolVersion, QoS};

    use super::password::PasswordHash;

    /// Rules from the texts of an ACL file and (user, password) pairs.
    fn rules(acl: Option<&str>, users: &[(&str, &str)]) -> AuthState {
        let state = AuthState::new(&Config::default()).unwrap();
        let passwords = (!users.is_empty()).then(|| {
            let one = NonZeroU32::new(1).unwrap();
            let lines: String = users
                .iter()
                .map(|(u, p)| format!("{u}:{}\n", PasswordHash::new(p, one).unwrap().encode()))
                .collect();
            PasswordTable::parse(&lines, Path::new("test"))
        });
        let acl = acl.map(|text| Acl::parse(text).unwrap());
        state.install(Auth {
            passwords,
            acl,
            ..Auth::default()
        });
        state
    }

    fn id<'a>(username: Option<&'a str>) -> Identity<'a> {
        Identity {
            username,
            client_id: "c1",
        }
    }

    fn connect(username: Option<&str>, password: Option<&str>) -> Connect {
        Connect {
            protocol: ProtocolVersion::V5,
            bridge: false,
            clean_start: true,
            keep_alive: 0,
            client_id: "c1".into(),
            will: None,
            username: username.map(ByteStr::from),
            password: password.map(|p| bytes::Bytes::from(p.to_owned())),
            properties: ConnectProperties::default(),
        }
    }

    fn login(connect: &Connect) -> Login<'_> {
        Login {
            connect,
            client_id: "c1",
            ip: Ipv4Addr::LOCALHOST.into(),
            use_identity_as_username: false,
            cert_identity: None,
            allow_anonymous: true,
            listener: "tcp 127.0.0.1:1883",
        }
    }

    /// The username `login` comes out as under `state`'s rules, or the
    /// refusal.
    async fn who(
        state: &AuthState,
        login: &Login<'_>,
        shutdown: &CancellationToken,
    ) -> Result<Option<Arc<str>>, ReasonCode> {
        let rules = state.current();
        state
            .authenticate(&rules, login, shutdown)
            .await
            .map(|w| w.username)
    }

    const ACL: &str =
        "topic read public/#\nuser alice\ntopic readwrite alice/#\ntopic read public/#\n";

    #[test]
    fn without_an_acl_everything_is_allowed_and_nothing_checked_per_message() {
        let open = rules(None, &[]);
        assert!(open.may_write(&id(None), "any/topic"));
        assert!(open.may_read(&id(Some("bob")), "any/topic"));
        let (granted, readable) = open.subscribe_access(&id(None), 0, "#");
        assert!(granted);
        assert!(!readable.needs_check(open.acl_generation(), 0));
    }

    #[test]
    fn the_acl_decides_writes_and_reads_per_user() {
        let acl = rules(Some(ACL), &[]);
        assert!(acl.may_write(&id(Some("alice")), "alice/x"));
        assert!(!acl.may_write(&id(Some("alice")), "public/x"));
        assert!(acl.may_read(&id(Some("alice")), "public/x"));
        assert!(acl.may_read(&id(None), "public/x"));
        assert!(!acl.may_write(&id(None), "alice/x"));
        assert!(!acl.may_read(&id(Some("bob")), "alice/x"));
        let mut check = ReadCheck::default();
        assert!(check.allows(&acl, &id(Some("alice")), "alice/x"));
        assert!(!check.allows(&acl, &id(None), "alice/x"));
    }

    #[test]
    fn a_wholly_readable_filter_skips_per_message_checks_until_rules_or_user_change() {
        let acl = rules(Some(ACL), &[]);
        let generation = acl.acl_generation();
        let (granted, whole) = acl.subscribe_access(&id(Some("alice")), 7, "alice/#");
        assert!(granted);
        assert!(!whole.needs_check(generation, 7));
        assert!(whole.needs_check(generation, 8), "another user attached");
        acl.install(Auth {
            acl: Some(Acl::parse(ACL).unwrap()),
            ..Auth::default()
        });
        assert!(whole.needs_check(acl.acl_generation(), 7), "rules reloaded");
        let (granted, partly) = acl.subscribe_access(&id(Some("alice")), 7, "#");
        assert!(granted, "part of # is readable");
        assert!(partly.needs_check(acl.acl_generation(), 7));
        let (granted, _) = acl.subscribe_access(&id(Some("alice")), 7, "secret/#");
        assert!(!granted);
    }

    #[tokio::test]
    async fn logins_are_judged_by_listener_settings_and_passwords() {
        let shutdown = CancellationToken::new();
        let open = rules(None, &[]);
        let anonymous = connect(None, None);
        assert_eq!(who(&open, &login(&anonymous), &shutdown).await, Ok(None));
        let closed = Login {
            allow_anonymous: false,
            ..login(&anonymous)
        };
        let refused = who(&open, &closed, &shutdown).await;
        assert_eq!(refused, Err(ReasonCode::NotAuthorized));
        let bob = connect(Some("bob"), None);
        let taken = who(&open, &login(&bob), &shutdown).await;
        assert_eq!(taken.unwrap().as_deref(), Some("bob"), "no password file");

        let cert = Login {
            use_identity_as_username: true,
            cert_identity: Some("device-7"),
            ..login(&bob)
        };
        let by_cert = who(&open, &cert, &shutdown).await;
        assert_eq!(by_cert.unwrap().as_deref(), Some("device-7"));
        let no_cert = Login {
            cert_identity: None,
            ..cert
        };
        let refused = who(&open, &no_cert, &shutdown).await;
        assert_eq!(refused, Err(ReasonCode::NotAuthorized));

        let users = rules(None, &[("alice", "secret")]);
        let right = connect(Some("alice"), Some("secret"));
        let ok = who(&users, &login(&right), &shutdown).await;
        assert_eq!(ok.unwrap().as_deref(), Some("alice"));
        for wrong in [
            connect(Some("alice"), Some("guess")),
            connect(Some("alice"), None),
        ] {
            let refused = who(&users, &login(&wrong), &shutdown).await;
            assert_eq!(refused, Err(ReasonCode::BadUserNameOrPassword));
        }
    }

    #[tokio::test]
    async fn a_will_must_be_writable_by_its_client() {
        let acl = rules(Some(ACL), &[]);
        let mut alice = connect(Some("alice"), None);
        alice.will = Some(LastWill {
            topic: "public/gone".into(),
            payload: bytes::Bytes::new(),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Default::default(),
        });
        let shutdown = CancellationToken::new();
        let refused = who(&acl, &login(&alice), &shutdown).await;
        assert_eq!(refused, Err(ReasonCode::NotAuthorized));
        if let Some(will) = &mut alice.will {
            will.topic = "alice/gone".into();
        }
        let ok = who(&acl, &login(&alice), &shutdown).await;
        assert_eq!(ok.unwrap().as_deref(), Some("alice"));
    }

    /// Rules with a password file of these `user:hash` lines.
    fn password_file(lines: &str) -> Auth {
        Auth {
            passwords: Some(PasswordTable::parse(lines, Path::new("test"))),
            ..Auth::default()
        }
    }

    #[test]
    fn a_reload_keeps_a_password_login_while_its_users_entry_is_unchanged() {
        let one = NonZeroU32::new(1).unwrap();
        let line = |user: &str, password: &str| {
            format!(
                "{user}:{}\n",
                PasswordHash::new(password, one).unwrap().encode()
            )
        };
        let (alice, bob) = (line("alice", "a"), line("bob", "b"));
        let before = password_file(&(alice.clone() + &bob));
        let reread = password_file(&(alice.clone() + &bob));
        assert_eq!(reread.still_admits(&before, Some("alice"), false), Ok(()));
        let without_bob = password_file(&alice);
        let removed = without_bob.still_admits(&before, Some("bob"), false);
        assert_eq!(removed, Err(Revoked::UnknownUser));
        let rehashed = password_file(&(alice + &line("bob", "b")));
        let changed = rehashed.still_admits(&before, Some("bob"), false);
        assert_eq!(
            changed,
            Err(Revoked::NewPassword),
            "same password, new salt"
        );

        // Logins the password file does not decide.
        let by_cert = without_bob.still_admits(&before, Some("bob"), true);
        assert_eq!(by_cert, Ok(()));
        assert_eq!(without_bob.still_admits(&before, None, false), Ok(()));
        let open = Auth::default();
        assert_eq!(open.still_admits(&before, Some("bob"), false), Ok(()));
        let unverified = before.still_admits(&open, Some("alice"), false);
        assert_eq!(unverified, Err(Revoked::NewPassword));
    }

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
