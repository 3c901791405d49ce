//! Parking: idle connections (TCP, TLS, WebSocket) wait without a task.
//!
//! A connected client costs its task (the connection loop's future, about
//! 1.4 KB), tokio's registration of its socket and its read buffer. Most MQTT
//! clients are quiet most of the time (a sensor that publishes once a
//! minute), and a broker holds many of them, so after `park_idle_ms` without
//! traffic the connection task hands its socket and its [`ClientState`] to the
//! [`Parker`] and ends. The socket joins one epoll set watched by one thread;
//! the client state waits in a box in its session, with what the transport
//! keeps beside its socket (`Transport::Asleep`: a TLS connection's session,
//! a WebSocket's frame state).
//!
//! A lone PINGREQ on TCP is answered by the parker thread itself (PINGRESP written,
//! keep-alive deadline moved): the client keeps its connection alive without
//! a task ever being spawned for it. Whatever else needs the connection
//! resumes it by taking the box out of the session and spawning a connection
//! task with it:
//! - other bytes or end-of-stream on the socket: the parker thread;
//! - a delivery queued for the session: `Session::deliver`;
//! - a session takeover: `registry::attach` (the new task then sees the kick);
//! - a reload that refuses its login: `Session::refuse`;
//! - keep-alive expiry: the parker thread's scan, once a second;
//! - broker shutdown: the parker thread resumes every parked connection, and
//!   each closes as a running one does (MQTT 5: DISCONNECT 0x8B).
//!
//! Races are settled by the session lock. A connection parks only while
//! holding it (so a delivery either comes before, and the connection stays
//! awake, or after, and finds the box), and a resumer takes the box while
//! holding it (so exactly one resumer wins). The socket is added to the epoll
//! set under that lock too: an event that arrives at once waits for the box to
//! be in place.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use mio::{Events, Interest, Poll, Token, Waker};
use tokio::runtime::Handle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Transport;
use crate::client_state::ClientState;
use crate::lock::{Mutex, MutexGuard, rank};
use crate::metrics::Metrics;
use crate::session::{ParkedConnection, Session, SessionState};

/// How often the parker thread looks for parked connections whose keep-alive
/// has run out. Keep-alive is enforced to within this.
const SCAN_INTERVAL: Duration = Duration::from_secs(1);
/// The token of the waker that stops the parker thread.
const STOP: Token = Token(0);
/// With more connections than this awake at once (in tasks), connections
/// park after a [`CROWDED_DIVISOR`]th of the usual quiet time.
const CROWDED: usize = 1024;
const CROWDED_DIVISOR: u32 = 8;
/// Heap memory is handed back to the OS once at least this many connections
/// have parked since the last time...
const RELEASE_AFTER_PARKS: usize = 1000;
/// ...and fewer than this many parked in the last scan interval (the wave is
/// over: trimming in the middle of it would only hand back pages that the
/// next connections fault in again).
const RELEASE_WHEN_QUIET: usize = 100;

/// Nanoseconds from `epoch` to `at` (0 if before it; 584 years fit).
fn since_epoch(epoch: std::time::Instant, at: Instant) -> u64 {
    let nanos = at.into_std().saturating_duration_since(epoch).as_nanos();
    u64::try_from(nanos).unwrap_or(u64::MAX)
}

/// A parked connection: everything its task held, minus the task. Its
/// token in the epoll set is its socket's descriptor (plus one: 0 is the
/// stop token), unique while the socket is open, so it needs no field.
pub struct Parked<S: Transport> {
    stream: mio::net::TcpStream,
    /// What the transport keeps beside its socket (TLS: its session).
    asleep: S::Asleep,
    /// Where it is resumed. Held here, not in the broker's shared state:
    /// the parker holds the sessions that hold parked connections.
    parker: Arc<Parker>,
    client: ClientState,
    peer: SocketAddr,
    /// When the last packet arrived, in nanoseconds since the parker's
    /// epoch: 8 bytes instead of an `Instant`'s 16, which keeps the box a
    /// heap size class smaller (a 192-byte chunk, not 208).
    last_heard: u64,
}

impl<S: Transport> std::fmt::Debug for Parked<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parked")
            .field("client_id", &self.client.client_id())
            .field("peer", &self.peer)
            .finish()
    }
}

/// The thread and epoll set that hold parked connections.
pub struct Parker {
    /// Adds and removes sockets from any thread.
    registry: mio::Registry,
    stop: Waker,
    stopping: AtomicBool,
    /// Parked connections by token.
    entries: Mutex<Entries, { rank::PARKER }>,
    /// Deadlines are kept as whole seconds since this instant.
    epoch: std::time::Instant,
    /// Connections parked since the parker thread last looked.
    parks: AtomicUsize,
    /// Where resumed connection tasks are spawned.
    runtime: Handle,
    tasks: TaskTracker,
    /// Quiet time after which a connection parks; `None`: never.
    idle: Option<Duration>,
}

/// Parked connections, in slots indexed by token − 1: the socket's
/// descriptor. Descriptors are small and reused by the kernel, so the slots
/// stay as many as the most sockets open at once; there is one per idle
/// client, so a slot is kept to 16 bytes.
#[derive(Default)]
struct Entries {
    slots: Vec<Option<Entry>>,
    len: usize,
}

struct Entry {
    /// The session holding the connection's box.
    session: Arc<Session>,
    /// When its keep-alive runs out, in seconds since the parker's epoch
    /// (rounded up: keep-alive is enforced to within a second anyway).
    deadline: u32,
}

impl Entries {
    fn insert(&mut self, token: Token, entry: Entry) {
        let Some(index) = token.0.checked_sub(1) else {
            return;
        };
        if index >= self.slots.len() {
            self.slots.resize_with(index + 1, || None);
        }
        if let Some(slot) = self.slots.get_mut(index)
            && slot.replace(entry).is_none()
        {
            self.len += 1;
        }
    }

    fn get(&self, token: Token) -> Option<&Entry> {
        self.slots.get(token.0.checked_sub(1)?)?.as_ref()
    }

    fn get_mut(&mut self, token: Token) -> Option<&mut Entry> {
        self.slots.get_mut(token.0.checked_sub(1)?)?.as_mut()
    }

    fn remove(&mut self, token: Token) {
        let Some(index) = token.0.checked_sub(1) else {
            return;
        };
        if let Some(slot) = self.slots.get_mut(index)
            && slot.take().is_some()
        {
            self.len -= 1;
        }
    }

    /// Tokens of the entries whose deadline is at or before `now`.
    fn expired(&self, now: u32) -> Vec<Token> {
        let slots = self.slots.iter().enumerate();
        slots
            .filter(|(_, slot)| slot.as_ref().is_some_and(|e| e.deadline <= now))
            .map(|(index, _)| Token(index + 1))
            .collect()
    }

    fn tokens(&self) -> Vec<Token> {
        let slots = self.slots.iter().enumerate();
        slots
            .filter(|(_, slot)| slot.is_some())
            .map(|(index, _)| Token(index + 1))
            .collect()
    }
}

impl Parker {
    /// Starts the parker thread. Must be called within the tokio runtime
    /// that will run resumed connections. The thread stops at `shutdown`
    /// (resuming every parked connection so it can close) or when that
    /// runtime goes away.
    pub fn start(
        idle: Option<Duration>,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> std::io::Result<Arc<Parker>> {
        let poll = Poll::new()?;
        let parker = Arc::new(Parker {
            registry: poll.registry().try_clone()?,
            stop: Waker::new(poll.registry(), STOP)?,
            stopping: AtomicBool::new(false),
            entries: Mutex::new(Entries::default()),
            epoch: std::time::Instant::now(),
            parks: AtomicUsize::new(0),
            runtime: Handle::try_current().map_err(std::io::Error::other)?,
            tasks: tasks.clone(),
            idle,
        });
        // Shutdown waits for this token, so for the thread to have resumed
        // every parked connection.
        let running = tasks.token();
        let thread = parker.clone();
        std::thread::Builder::new()
            .name("tern-parker".into())
            .spawn(move || {
                thread.poll_loop(poll);
                drop(running);
            })?;
        // Dropped at shutdown, or with the runtime if it ends without one.
        let stopper = StopOnDrop(parker.clone());
        tasks.spawn(async move {
            let _stopper = stopper;
            shutdown.cancelled().await;
        });
        Ok(parker)
    }

    /// Quiet time after which a connection parks, if parking is on, given
    /// how many connections there are.
    ///
    /// While many connections are awake at once, as in a wave of connects
    /// (every device reconnecting after an outage), it is shorter: each awake
    /// connection holds a task and buffers, and the heap keeps the high-water
    /// mark of a wave long after its connections went quiet. Not for one
    /// that parked before and was woken (`resumed`): it has traffic, and
    /// messages to many devices, each a few times a second, would otherwise
    /// wake and park each connection for every message, which costs more
    /// than the message (epoll registrations both ways, a task).
    pub fn idle(&self, connected: usize, resumed: bool) -> Option<Duration> {
        let idle = self.idle?;
        let awake = connected.saturating_sub(self.parked_count());
        Some(if awake > CROWDED && !resumed {
            idle / CROWDED_DIVISOR
        } else {
            idle
        })
    }

    /// How many connections are parked now.
    pub fn parked_count(&self) -> usize {
        self.entries().len
    }

    fn entries(&self) -> MutexGuard<'_, Entries, { rank::PARKER }> {
        self.entries.lock()
    }

    /// Parks a connection whose task is about to end. Gives it back (still
    /// registered with the parker: resume it with [`Parker::unregister`])
    /// if it must stay awake: something was queued for it meanwhile, it no
    /// longer owns its session, or the broker is stopping.
    pub(super) fn park<S: Transport>(
        self: &Arc<Self>,
        stream: std::net::TcpStream,
        asleep: S::Asleep,
        client: ClientState,
        peer: SocketAddr,
        last_heard: Instant,
    ) -> Result<(), Box<Parked<S>>> {
        let mut parked = Box::new(Parked {
            stream: mio::net::TcpStream::from_std(stream),
            asleep,
            parker: self.clone(),
            client,
            peer,
            last_heard: since_epoch(self.epoch, last_heard),
        });
        let session = parked.client.session.clone();
        let mut st = session.lock();
        if !may_park(&st, &parked) {
            return Err(parked);
        }
        st.release_idle_traffic();
        let deadline = match parked.client.keep_alive_timeout() {
            Some(timeout) => self.seconds_ceil((last_heard + timeout).into_std()),
            None => u32::MAX,
        };
        let token = parked.token();
        let entry = Entry {
            session: session.clone(),
            deadline,
        };
        self.entries().insert(token, entry);
        // After the entry: a stop that began before it was inserted did not
        // see it, so this connection must not park.
        if self.stopping.load(Ordering::SeqCst) {
            return Err(parked);
        }
        if let Err(e) = self
            .registry
            .register(&mut parked.stream, token, Interest::READABLE)
        {
            tracing::warn!(error = %e, "cannot park connection; it stays in its task");
            return Err(parked);
        }
        st.parked = Some(parked);
        self.parks.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Takes a parked (or half-parked) connection out of the epoll set, so it
    /// can go back into a task.
    pub(super) fn unregister<S: Transport>(&self, parked: &mut Parked<S>) {
        self.entries().remove(parked.token());
        // Not registered if parking stopped half-way; nothing to undo then.
        let _ = self.registry.deregister(&mut parked.stream);
    }

    /// Spawns a connection task for a connection taken out of its session.
    pub fn resume<S: Transport>(&self, mut parked: Box<Parked<S>>) {
        self.unregister(&mut parked);
        self.tasks.spawn_on(super::resume(parked), &self.runtime);
    }

    /// The thread: waits for socket events and resumes their connections.
    fn poll_loop(&self, mut poll: Poll) {
        let mut events = Events::with_capacity(256);
        let mut last_scan = std::time::Instant::now();
        let mut unreleased = 0;
        loop {
            if let Err(e) = poll.poll(&mut events, Some(SCAN_INTERVAL))
                && e.kind() != std::io::ErrorKind::Interrupted
            {
                tracing::error!(error = %e, "parked connections: epoll failed; resuming them all");
                self.stopping.store(true, Ordering::SeqCst);
            }
            if self.stopping.load(Ordering::SeqCst) {
                let all = self.entries().tokens();
                all.into_iter().for_each(|token| self.wake(token));
                return;
            }
            for event in events.iter() {
                self.readable(event.token());
            }
            let now = std::time::Instant::now();
            if now.duration_since(last_scan) >= SCAN_INTERVAL {
                last_scan = now;
                let expired = self.entries().expired(self.seconds(now));
                expired.into_iter().for_each(|token| self.wake(token));
                let parks = self.parks.swap(0, Ordering::Relaxed);
                unreleased += parks;
                if unreleased >= RELEASE_AFTER_PARKS && parks < RELEASE_WHEN_QUIET {
                    unreleased = 0;
                    release_free_memory();
                }
            }
        }
    }

    /// Whole seconds from the parker's epoch to `at`, rounded down.
    fn seconds(&self, at: std::time::Instant) -> u32 {
        let secs = at.saturating_duration_since(self.epoch).as_secs();
        u32::try_from(secs).unwrap_or(u32::MAX - 1)
    }

    /// Whole seconds from the parker's epoch to `at`, rounded up.
    fn seconds_ceil(&self, at: std::time::Instant) -> u32 {
        let since = at.saturating_duration_since(self.epoch);
        let secs = since.as_secs() + u64::from(since.subsec_nanos() > 0);
        u32::try_from(secs).unwrap_or(u32::MAX - 1)
    }

    /// The socket parked under `token` is readable: answered here if it
    /// can be ([`ParkedConnection::answer_quietly`]), else resumed.
    fn readable(&self, token: Token) {
        self.resume_unless(token, |parked| parked.answer_quietly());
    }

    /// Moves the keep-alive deadline of the connection parked under `token`
    /// to `timeout` from `now` (called with its session locked: that lock
    /// comes before the entries').
    fn heard(&self, token: Token, now: std::time::Instant, timeout: Option<Duration>) {
        if let Some(entry) = self.entries().get_mut(token) {
            entry.deadline = timeout.map_or(u32::MAX, |t| self.seconds_ceil(now + t));
        }
    }

    /// Resumes the connection parked under `token`, if it still is.
    fn wake(&self, token: Token) {
        self.resume_unless(token, |_| false);
    }

    /// Resumes the connection parked under `token`, if it still is, unless
    /// `handled` (called with its session locked) dealt with it in place.
    fn resume_unless(
        &self,
        token: Token,
        handled: impl FnOnce(&mut Box<dyn ParkedConnection>) -> bool,
    ) {
        // The entries lock is never held while taking a session lock: park
        // takes them the other way round.
        let Some(session) = self.entries().get(token).map(|e| e.session.clone()) else {
            return;
        };
        let mut st = session.lock();
        let Some(parked) = st.parked.as_mut().filter(|p| p.token() == token.0) else {
            return;
        };
        if handled(parked) {
            return;
        }
        let parked = st.parked.take();
        drop(st);
        if let Some(parked) = parked {
            parked.resume();
        }
    }
}

/// Hands the heap's free pages back to the OS.
///
/// Each connection that parks frees its task (about a kilobyte and a half)
/// while its session and parked state stay. After thousands connected at
/// once, glibc's malloc keeps the freed pages between the live ones, and the
/// broker's resident memory stays at the high-water mark of the wave;
/// `malloc_trim` releases every whole free page. It runs on the parker
/// thread, after a wave, so it costs the runtime nothing.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own heap, under its own locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Whether the connection may park, given its session's state.
fn may_park<S: Transport>(st: &SessionState, parked: &Parked<S>) -> bool {
    // A refused connection stays awake to close.
    st.is_owner(parked.client.connection_id) && st.pending_len() == 0 && st.parked.is_none()
}

/// Stops the parker thread when dropped.
struct StopOnDrop(Arc<Parker>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stopping.store(true, Ordering::SeqCst);
        if let Err(e) = self.0.stop.wake() {
            tracing::error!(error = %e, "cannot wake the parker thread to stop it");
        }
    }
}

impl<S: Transport> ParkedConnection for Parked<S> {
    /// Spawns a connection task for this connection, taken out of its session.
    fn resume(self: Box<Self>) {
        let parker = self.parker.clone();
        parker.resume(self);
    }

    fn token(&self) -> usize {
        Parked::token(self).0
    }

    fn answer_quietly(&mut self) -> bool {
        const PINGREQ: [u8; 2] = [0xC0, 0x00];
        const PINGRESP: [u8; 2] = [0xD0, 0x00];
        // On TLS the bytes are records, which only a task reads.
        if !S::RAW {
            return false;
        }
        // Three bytes asked for: exactly two there means nothing after it.
        let mut seen = [0u8; 3];
        if !matches!(self.stream.peek(&mut seen), Ok(2)) || seen[..2] != PINGREQ {
            return false;
        }
        let mut ping = [0u8; 2];
        if !matches!(std::io::Read::read(&mut self.stream, &mut ping), Ok(2)) {
            return false;
        }
        let now = std::time::Instant::now();
        self.last_heard = since_epoch(self.parker.epoch, Instant::from_std(now));
        let metrics = &self.client.state.metrics;
        Metrics::add(&metrics.packets_received, 1);
        Metrics::add(&metrics.bytes_received, 2);
        Metrics::add(&metrics.packets_sent, 1);
        let written = std::io::Write::write(&mut self.stream, &PINGRESP).unwrap_or(0);
        Metrics::add(&metrics.bytes_sent, written as u64);
        if written < PINGRESP.len() {
            // The rest goes out with the resumed task's first write.
            self.client.out.extend_from_slice(&PINGRESP[written..]);
            return false;
        }
        let timeout = self.client.keep_alive_timeout();
        self.parker.heard(Parked::token(self), now, timeout);
        true
    }
}

/// What a resumed connection's task starts from.
pub(super) struct Resumed<S: Transport> {
    pub socket: std::net::TcpStream,
    pub asleep: S::Asleep,
    pub client: ClientState,
    pub peer: SocketAddr,
    pub last_heard: Instant,
    pub parker: Arc<Parker>,
}

impl<S: Transport> Parked<S> {
    /// Its token in the epoll set: the socket's descriptor plus one.
    fn token(&self) -> Token {
        let fd = usize::try_from(self.stream.as_raw_fd()).unwrap_or(usize::MAX - 1);
        Token(fd + 1)
    }

    /// The socket, unwrapped for tokio, and the connection's state.
    pub(super) fn into_parts(self) -> Resumed<S> {
        let socket = std::net::TcpStream::from(OwnedFd::from(self.stream));
        let last_heard = self.parker.epoch + Duration::from_nanos(self.last_heard);
        Resumed {
            socket,
            asleep: self.asleep,
            client: self.client,
            peer: self.peer,
            last_heard: Instant::from_std(last_heard),
            parker: self.parker,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn parks_sooner_while_many_connections_are_awake_unless_woken_before() {
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let idle = Duration::from_millis(800);
        let parker = Parker::start(Some(idle), shutdown.clone(), tasks.clone()).unwrap();
        assert_eq!(parker.idle(10, false), Some(idle));
        assert_eq!(parker.idle(CROWDED, false), Some(idle));
        assert_eq!(
            parker.idle(CROWDED + 1, false),
            Some(Duration::from_millis(100))
        );
        assert_eq!(parker.idle(CROWDED + 1, true), Some(idle));
        let off = Parker::start(None, shutdown.clone(), tasks.clone()).unwrap();
        assert_eq!(off.idle(CROWDED + 1, false), None);
        shutdown.cancel();
        tasks.close();
        tasks.wait().await;
    }

    /// Every parked connection is one `Parked` box. Without the socket
    /// (4 bytes in release builds; mio adds a selector id in debug builds)
    /// it must stay within 180 bytes, so that the box takes a 192-byte heap
    /// chunk.
    #[test]
    fn parked_stays_small() {
        let size = std::mem::size_of::<Parked<tokio::net::TcpStream>>();
        let socket = std::mem::size_of::<mio::net::TcpStream>();
        assert!(size - socket <= 180, "{size} - {socket}");
    }
}
