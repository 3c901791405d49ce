//! A server TLS connection on rustls's unbuffered API: the handshake, then
//! a byte stream of MQTT (or HTTP, or WebSocket) over it.
//!
//! Why not tokio-rustls: its session (`ServerConnection`) keeps a 4 KiB
//! buffer of received records for as long as the connection lives, and an
//! idle TLS connection then costs more than the rest of its client's state
//! put together. Here the buffers are this type's own, allocated while bytes
//! pass and freed when the connection parks; what stays is rustls's session
//! (keys, sequence numbers), about 3 KB.
//!
//! rustls is driven as its unbuffered API asks: [`UnbufferedServerConnection::process_tls_records`]
//! over the records read so far, each state it returns handled before the
//! next call; decrypted bytes are kept for the reader, records to send are
//! kept for the socket. Whatever waits to be sent goes out before a read
//! waits for the peer (handshake messages, alerts, key updates) and before a
//! write reports its bytes written.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use rustls::ServerConfig;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::wire::{Incoming, Outgoing};
use crate::connection::Transport;

/// Room reserved before a socket read while the peer sends little (the
/// handshake, an idle client's packets): thousands of connections that
/// connect at once each hold this while they shake hands.
const READ_QUIET: usize = 1024;
/// ...and while the last read filled its room: a whole record (16 KiB of
/// data plus its header and tag) fits.
const READ_BUSY: usize = 16 * 1024 + 256;
/// Bytes a record adds to its data (header, content type, tag, TLS 1.2's
/// explicit nonce): a first guess at the room an encryption needs.
const RECORD_OVERHEAD: usize = 64;
/// The most data one record carries.
const RECORD_DATA: usize = 16 * 1024;
/// How long a failed handshake waits for the client to close after the
/// alert (see [`TlsConn::linger`]).
const LINGER: std::time::Duration = std::time::Duration::from_millis(500);

/// A server-side TLS stream whose writes return only once their bytes are on
/// the socket: the connection task writes when it has packets and never
/// flushes, so a write reported done must not leave bytes behind.
pub struct TlsConn {
    /// `None` while parked (see the [`Transport`] impl).
    socket: Option<TcpStream>,
    tls: Box<UnbufferedServerConnection>,
    /// Records read from the socket and not yet processed: at most part of
    /// one, between reads.
    incoming: Incoming,
    /// Decrypted data not yet read.
    plaintext: BytesMut,
    /// Records to send.
    outgoing: Outgoing,
    /// Bytes of the current write already encrypted into `outgoing`.
    accepted: usize,
    /// The peer sent close_notify, or closed its end: reads return 0 once
    /// `plaintext` is empty.
    peer_closed: bool,
    /// close_notify is queued (shutdown).
    closing: bool,
    /// rustls reported an error: it is not called again.
    failed: bool,
}

/// What [`TlsConn::process`] encrypts once rustls lets it send.
enum Send<'a> {
    Nothing,
    Data(&'a [u8]),
    CloseNotify,
}

impl TlsConn {
    /// Runs the TLS handshake on an accepted socket.
    pub async fn accept(socket: TcpStream, config: Arc<ServerConfig>) -> io::Result<TlsConn> {
        let tls = UnbufferedServerConnection::new(config).map_err(tls_error)?;
        let mut conn = TlsConn {
            socket: Some(socket),
            tls: Box::new(tls),
            incoming: Incoming::new(READ_QUIET, READ_BUSY),
            plaintext: BytesMut::new(),
            outgoing: Outgoing::default(),
            accepted: 0,
            peer_closed: false,
            closing: false,
            failed: false,
        };
        if let Err(e) = std::future::poll_fn(|cx| conn.poll_handshake(cx)).await {
            conn.linger().await;
            return Err(e);
        }
        Ok(conn)
    }

    /// After a failed handshake, once the alert is sent: closes the sending
    /// side and reads what the client still sends (a TLS 1.3 client sends
    /// its first data right after its Finished, before our verdict on its
    /// certificate arrives) until it closes, for at most [`LINGER`]. Closing
    /// with unread bytes would answer them with a reset, and a reset makes
    /// the client's kernel drop the alert unread: the client would see
    /// "connection reset" instead of why it was refused.
    async fn linger(&mut self) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Some(socket) = self.socket.as_mut() else {
            return;
        };
        let _ = tokio::time::timeout(LINGER, async {
            socket.shutdown().await?;
            let mut scrap = [0u8; 1024];
            while socket.read(&mut scrap).await? > 0 {}
            io::Result::Ok(())
        })
        .await;
    }

    /// The client's certificate chain, if it presented one.
    pub fn peer_certificates(&self) -> Option<&[rustls::pki_types::CertificateDer<'static>]> {
        self.tls.peer_certificates()
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            self.process(Send::Nothing)?;
            ready!(self.poll_send(cx))?;
            if !self.tls.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            if ready!(self.poll_receive(cx))? == 0 {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the client closed the connection during the TLS handshake",
                )));
            }
        }
    }

    /// Hands the records read so far to rustls until it waits for more:
    /// decrypted data goes to `plaintext`, records to send to `outgoing`.
    /// `send` is encrypted as soon as rustls allows sending (after the
    /// handshake, which must be over for anything but `Send::Nothing`).
    fn process(&mut self, send: Send<'_>) -> io::Result<()> {
        if self.failed {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "TLS failed earlier",
            ));
        }
        self.process_records(send).inspect_err(|_| {
            self.failed = true;
            self.send_alert();
        })
    }

    /// After an error: sends the alert rustls queued saying why, if the
    /// socket takes it now, as a courtesy before the connection closes.
    /// rustls is asked once more, for that alert only: it hands out what it
    /// has to send before it looks at records, and it must not see the bad
    /// ones twice (nor a buffer other than the one its handshake state
    /// points into).
    fn send_alert(&mut self) {
        let status = self.tls.process_tls_records(&mut self.incoming.bytes[..]);
        if let Ok(ConnectionState::EncodeTlsData(mut encode)) = status.state {
            let _ = append(
                &mut self.outgoing.bytes,
                0,
                |room| encode.encode(room),
                encode_size,
            );
        }
        if let Some(socket) = &self.socket {
            let _ = socket.try_write(self.outgoing.unsent());
        }
    }

    fn process_records(&mut self, mut send: Send<'_>) -> io::Result<()> {
        loop {
            let UnbufferedStatus { mut discard, state } =
                self.tls.process_tls_records(&mut self.incoming.bytes[..]);
            let mut waiting = false;
            match state.map_err(tls_error)? {
                ConnectionState::ReadTraffic(mut records) => {
                    while let Some(record) = records.next_record() {
                        let record = record.map_err(tls_error)?;
                        discard += record.discard;
                        self.plaintext.extend_from_slice(record.payload);
                    }
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    append(
                        &mut self.outgoing.bytes,
                        0,
                        |room| encode.encode(room),
                        encode_size,
                    )?;
                }
                // The records join `outgoing`, which goes out before
                // anything waits for the peer.
                ConnectionState::TransmitTlsData(transmit) => transmit.done(),
                ConnectionState::WriteTraffic(mut traffic) => {
                    match std::mem::replace(&mut send, Send::Nothing) {
                        Send::Nothing => {}
                        Send::Data(data) => {
                            let room = data.len()
                                + data.len().div_ceil(RECORD_DATA).max(1) * RECORD_OVERHEAD;
                            append(
                                &mut self.outgoing.bytes,
                                room,
                                |room| traffic.encrypt(data, room),
                                encrypt_size,
                            )?;
                        }
                        Send::CloseNotify => {
                            append(
                                &mut self.outgoing.bytes,
                                RECORD_OVERHEAD,
                                |room| traffic.queue_close_notify(room),
                                encrypt_size,
                            )?;
                        }
                    }
                    waiting = true;
                }
                // Edge-triggered: rustls goes on to `WriteTraffic`, as
                // this end may still send.
                ConnectionState::PeerClosed => self.peer_closed = true,
                ConnectionState::Closed => {
                    self.peer_closed = true;
                    if !matches!(send, Send::Nothing) {
                        return Err(io::ErrorKind::BrokenPipe.into());
                    }
                    waiting = true;
                }
                ConnectionState::BlockedHandshake => waiting = true,
                // Early data is never enabled; anything newer is not known.
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "TLS: an unexpected state",
                    ));
                }
            }
            self.incoming.bytes.advance(discard);
            if waiting {
                return Ok(());
            }
        }
    }

    /// Sends what `outgoing` holds.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let socket = self.socket.as_mut().ok_or_else(parked)?;
        self.outgoing.poll_send(socket, cx)
    }

    /// Reads records from the socket into `incoming`; 0 at its end.
    fn poll_receive(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let socket = self.socket.as_mut().ok_or_else(parked)?;
        self.incoming.poll_fill(socket, cx)
    }
}

/// Appends to `out` what `write` puts into the room it is given: `room`
/// bytes first, more if it says how many it needs (`needed`).
fn append<E>(
    out: &mut Vec<u8>,
    mut room: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, E>,
    needed: impl Fn(&E) -> Option<usize>,
) -> io::Result<()>
where
    E: std::fmt::Display,
{
    let start = out.len();
    loop {
        out.resize(start + room, 0);
        match write(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(e) => match needed(&e) {
                Some(size) if size > room => room = size,
                _ => {
                    out.truncate(start);
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("TLS: {e}"),
                    ));
                }
            },
        }
    }
}

fn encode_size(e: &EncodeError) -> Option<usize> {
    match e {
        EncodeError::InsufficientSize(size) => Some(size.required_size),
        _ => None,
    }
}

fn encrypt_size(e: &EncryptError) -> Option<usize> {
    match e {
        EncryptError::InsufficientSize(size) => Some(size.required_size),
        _ => None,
    }
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

fn parked() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the TLS connection is parked")
}

impl AsyncRead for TlsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.plaintext.is_empty() {
                let n = this.plaintext.len().min(buf.remaining());
                buf.put_slice(&this.plaintext[..n]);
                this.plaintext.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.peer_closed {
                return Poll::Ready(Ok(()));
            }
            // rustls's own records (a key update's answer) go out before
            // waiting for the peer; if the socket is full they wait for it
            // (woken as it drains), and the read goes on.
            if let Poll::Ready(Err(e)) = this.poll_send(cx) {
                return Poll::Ready(Err(e));
            }
            if ready!(this.poll_receive(cx))? == 0 {
                this.peer_closed = true;
            }
            this.process(Send::Nothing)?;
        }
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.accepted == 0 {
            if buf.is_empty() {
                return Poll::Ready(Ok(0));
            }
            // Earlier records first, so `outgoing` holds at most one write.
            ready!(this.poll_send(cx))?;
            this.process(Send::Data(buf))?;
            this.accepted = buf.len();
        }
        ready!(this.poll_send(cx))?;
        let n = std::mem::take(&mut this.accepted);
        Poll::Ready(Ok(n.min(buf.len())))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_send(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.closing {
            this.closing = true;
            this.process(Send::CloseNotify)?;
        }
        ready!(this.poll_send(cx))?;
        let socket = this.socket.as_mut().ok_or_else(parked)?;
        Pin::new(socket).poll_shutdown(cx)
    }
}

/// An idle TLS connection parks as a TCP one does: its socket goes to the
/// parker's epoll set, and the rest (rustls's session, a partial record)
/// waits in a box beside it, its buffers given back. The parker cannot read
/// records, so any byte resumes it (a PINGREQ too).
impl Transport for TlsConn {
    const PARKABLE: bool = true;
    const RAW: bool = false;
    type Asleep = Box<TlsConn>;

    fn sleep(mut self) -> io::Result<(std::net::TcpStream, Box<TlsConn>)> {
        if !self.plaintext.is_empty() {
            // A quiet connection has read all it was sent.
            return Err(io::Error::other(
                "a TLS connection with unread data cannot park",
            ));
        }
        let socket = self.socket.take().ok_or_else(parked)?;
        self.plaintext = BytesMut::new();
        self.incoming.release();
        self.outgoing.release();
        Ok((socket.into_std()?, Box::new(self)))
    }

    fn wake(socket: TcpStream, mut asleep: Box<TlsConn>) -> io::Result<Self> {
        asleep.socket = Some(socket);
        Ok(*asleep)
    }
}
