//! The connection task: one per client socket, from CONNECT to close.
//!
//! It owns the socket halves, the read buffer and the [`ClientState`] state, so
//! nothing here is locked. Its life has three parts, one file each:
//! - `handshake.rs`: reads CONNECT (its bytes counted until it is accepted),
//!   admits or refuses it, attaches the session and queues CONNACK;
//! - `main_loop.rs`: one loop waits on everything at once:
//!   - bytes from the client: decoded incrementally (a partial packet waits in
//!     the read buffer, which survives a cancelled read) and dispatched to the
//!     handlers, which write their responses into `client.out`;
//!   - the session's notification that deliveries were queued: `outbound::fill`
//!     encodes them into `client.out`;
//!   - the socket becoming writable while `client.out` holds bytes: one write
//!     carries as many packets as are buffered;
//!   - keep-alive expiry and broker shutdown;
//!   - session takeover: the new connection leaves a kick in the session and
//!     wakes this one through the same notification; `outbound::fill` finds it.
//!     So does a reload of the password file that no longer admits the login
//!     (`Session::refuse`);
//! - `close.rs`: on the way out it sends an MQTT 5 DISCONNECT with the reason
//!   (if the server is the one closing), flushes, and detaches from the
//!   session, which decides about the will and the session's expiry.
//!
//! A connection quiet for a while hands its socket to the parker (`park.rs`)
//! and its task ends; a new task drives it again when it wakes. This file
//! holds what the parts share and the task's entry points: [`serve`], and
//! `drive`, `park` and `resume`.

pub mod park;

mod close;
mod handshake;
mod main_loop;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use self::close::{Close, depart, finish};
use self::handshake::handshake;
use self::main_loop::{Exit, run};
use self::park::Parker;
use crate::client_state::ClientState;
use crate::limits::ConnectBytes;
use crate::state::BrokerState;

/// Read buffer size for a connection that is mostly idle. Idle connections
/// are many, so they hold only this much between packets.
const IDLE_READ: usize = 128;
/// Time allowed to flush the last packets (DISCONNECT) before closing.
const CLOSE_FLUSH: Duration = Duration::from_secs(1);

/// The socket halves and the read buffer.
struct Io<S> {
    reader: ReadHalf<S>,
    writer: WriteHalf<S>,
    rbuf: BytesMut,
}

/// A client's byte stream. TCP, TLS and WebSocket over them can park while
/// idle (see [`park`]); a bridge's in-process pipe keeps its task.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send + Sized + 'static {
    /// Whether [`Transport::sleep`] works.
    const PARKABLE: bool;
    /// Whether the bytes on its socket are MQTT's as they are, so that the
    /// parker may answer a PINGREQ itself (not TLS's records).
    const RAW: bool;
    /// What it keeps beside its socket while parked: nothing for TCP, the
    /// session (keys, sequence numbers) for TLS, the frame state (and its
    /// transport's) for WebSocket.
    type Asleep: Send + 'static;
    /// Its socket as a std TCP stream, no longer registered with tokio, and
    /// the rest of it.
    fn sleep(self) -> std::io::Result<(std::net::TcpStream, Self::Asleep)>;
    /// Put together again around its socket, registered with tokio anew.
    fn wake(socket: TcpStream, asleep: Self::Asleep) -> std::io::Result<Self>;
}

/// A bridge's in-process pipe (`crate::bridge`).
impl Transport for tokio::io::DuplexStream {
    const PARKABLE: bool = false;
    const RAW: bool = true;
    type Asleep = ();
    fn sleep(self) -> std::io::Result<(std::net::TcpStream, ())> {
        Err(std::io::Error::other("an in-process pipe is not a socket"))
    }
    fn wake(_: TcpStream, (): ()) -> std::io::Result<Self> {
        Err(std::io::Error::other("an in-process pipe is not a socket"))
    }
}

impl Transport for TcpStream {
    const PARKABLE: bool = true;
    const RAW: bool = true;
    type Asleep = ();
    fn sleep(self) -> std::io::Result<(std::net::TcpStream, ())> {
        Ok((TcpStream::into_std(self)?, ()))
    }
    fn wake(socket: TcpStream, (): ()) -> std::io::Result<Self> {
        Ok(socket)
    }
}

/// What the listener knows about a connection before its CONNECT.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// Which listener accepted it: an index into `state.config.listeners`
    /// (which `Broker::start` fills in when the file named none).
    pub listener: usize,
    /// TLS with client certificates: the verified certificate's Common Name.
    pub cert_identity: Option<String>,
    /// Set when the transport itself counts what it buffers before CONNECT
    /// (WebSocket: tungstenite's frames); given back once CONNECT is accepted.
    pub connect_bytes: Option<Arc<ConnectBytes>>,
    /// An in-process connection from one of this broker's bridges
    /// (`crate::bridge`): admitted without login or per-address limits, for
    /// the client ids reserved to bridges, which the ACL does not restrict.
    pub internal: bool,
}

/// A connection past CONNECT: what its task owns.
struct Conn<S> {
    io: Io<S>,
    client: ClientState,
    /// Where it goes when it has been quiet for a while.
    parker: Arc<Parker>,
    peer: SocketAddr,
    /// When the last packet arrived, for keep-alive.
    last_heard: Instant,
    /// It parked before and was woken: see [`Parker::idle`].
    resumed: bool,
}

/// Serves one accepted connection until it closes (or parks).
pub async fn serve<S: Transport>(
    stream: S,
    info: ConnInfo,
    state: Arc<BrokerState>,
    parker: Arc<Parker>,
) {
    // The handshake is boxed and over before the main loop starts: inline,
    // its futures would make every idle connection's task as large as the
    // largest of them.
    if let Some(conn) = Box::pin(handshake(stream, info, state, parker)).await {
        drive(conn).await;
    }
}

/// Runs a parked connection again, in a new task.
async fn resume<S: Transport>(parked: Box<park::Parked<S>>) {
    let park::Resumed {
        socket,
        asleep,
        mut client,
        peer,
        last_heard,
        parker,
    } = parked.into_parts();
    match TcpStream::from_std(socket).and_then(|socket| S::wake(socket, asleep)) {
        Ok(stream) => {
            let (reader, writer) = tokio::io::split(stream);
            let io = Io {
                reader,
                writer,
                rbuf: BytesMut::new(),
            };
            drive(Conn {
                io,
                client,
                parker,
                peer,
                last_heard,
                resumed: true,
            })
            .await;
        }
        Err(e) => depart(&mut client, Close::Lost(Some(e)), peer),
    }
}

/// Runs the main loop until the connection closes or parks.
async fn drive<S: Transport>(mut conn: Conn<S>) {
    match run(&mut conn).await {
        Exit::Close(close) => Box::pin(finish(&mut conn, close)).await,
        Exit::Park => {
            // TLS may hold records of its own (a key update's answer) that
            // only a write or a flush sends; a parked socket is only read.
            // Should the socket be full, they go with the next write.
            let _ = tokio::time::timeout(CLOSE_FLUSH, conn.io.writer.flush()).await;
            park(conn);
        }
    }
}

/// Hands a quiet connection to the parker; this task ends.
fn park<S: Transport>(conn: Conn<S>) {
    let Conn {
        io,
        mut client,
        parker,
        peer,
        last_heard,
        ..
    } = conn;
    // Only a connection with nothing left to write parks; its output buffer's
    // allocation is not worth keeping for however long it sleeps.
    client.out = BytesMut::new();
    match io.reader.unsplit(io.writer).sleep() {
        Ok((socket, asleep)) => {
            tracing::trace!(%peer, client_id = %client.client_id(), "parking idle connection");
            if let Err(parked) = parker.park::<S>(socket, asleep, client, peer, last_heard) {
                // Something arrived meanwhile: straight back into a task.
                parker.resume(parked);
            }
        }
        // Deregistering from tokio failed, which closed the socket.
        Err(e) => depart(&mut client, Close::Lost(Some(e)), peer),
    }
}
