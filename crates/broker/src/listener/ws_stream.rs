//! MQTT bytes over a WebSocket, after the upgrade: [`WsStream`] reads the
//! client's frames and writes the broker's, itself.
//!
//! MQTT over WebSocket is a byte stream cut into binary messages anywhere, so
//! a data frame's payload is handed to the reader as it arrives, unmasked in
//! place, and never gathered into a message: nothing is buffered but part of
//! a frame header or of a control frame (at most 125 bytes of payload). Ping
//! is answered with pong, close with close; text frames are a protocol
//! error. Frame headers are read and written by tungstenite's
//! [`FrameHeader`]; tungstenite's message layer is not used after the
//! upgrade because it keeps a 4 KiB read buffer for the life of every
//! connection and cannot be asked whether it holds part of a frame, so a
//! connection on it could not park. This one holds a few dozen bytes
//! between frames and parks as its transport does.

use std::io::{self, Cursor};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Buf;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};

use super::wire::{Incoming, Outgoing};
use crate::connection::Transport;
use crate::limits::ConnectBytes;

/// Room reserved before a socket read while the peer sends little...
const READ_QUIET: usize = 512;
/// ...and while the last read filled its room.
const READ_BUSY: usize = 16 * 1024;
/// The largest control frame payload (RFC 6455, 5.5).
const CONTROL_MAX: u64 = 125;
/// The close frame sent when the broker closes: status 1000, normal closure.
const CLOSE_NORMAL: [u8; 2] = 1000u16.to_be_bytes();

/// MQTT bytes over a WebSocket: reads return the binary frames' payloads in
/// order; each write is sent as one binary frame, and reported written once
/// it is on the socket (as `TlsConn` does, and for the same reason).
pub struct WsStream<S> {
    socket: Metered<S>,
    frames: Frames,
}

/// Everything but the socket: what waits beside it while parked.
pub struct Frames {
    /// Bytes read and not yet decoded: part of a header or of a control
    /// frame, or the start of a data frame's payload.
    incoming: Incoming,
    /// The data frame whose payload is being read.
    payload: Option<Payload>,
    /// Frames to send.
    outgoing: Outgoing,
    /// Bytes of the current write framed into `outgoing`.
    accepted: usize,
    /// The peer closed (a close frame, or the end of the stream): reads
    /// return 0 once the payload read so far is given out.
    peer_closed: bool,
    /// A close frame is queued or sent: no other frame follows it.
    close_sent: bool,
}

/// A data frame's payload still to come, and its mask.
struct Payload {
    remaining: u64,
    mask: [u8; 4],
    /// Payload bytes already unmasked: where in the mask the next one is.
    offset: usize,
}

impl<S> WsStream<S> {
    /// The stream of an upgraded connection (the upgrade's bytes read, none
    /// after them: a client waits for the 101 before its first frame,
    /// RFC 6455 section 4.1).
    pub(super) fn new(socket: Metered<S>) -> WsStream<S> {
        WsStream {
            socket,
            frames: Frames {
                incoming: Incoming::new(READ_QUIET, READ_BUSY),
                payload: None,
                outgoing: Outgoing::default(),
                accepted: 0,
                peer_closed: false,
                close_sent: false,
            },
        }
    }
}

impl Frames {
    /// Decodes what `incoming` holds: payload bytes into `buf`, control
    /// frames answered into `outgoing`. Ready when `buf` got bytes or the
    /// peer closed; `None` when more must be read.
    fn decode(&mut self, buf: &mut ReadBuf<'_>) -> io::Result<Option<()>> {
        loop {
            if let Some(payload) = &mut self.payload {
                if payload.remaining == 0 {
                    self.payload = None;
                    continue;
                }
                if self.incoming.bytes.is_empty() {
                    return Ok(None);
                }
                let n = [
                    payload.remaining,
                    self.incoming.bytes.len() as u64,
                    buf.remaining() as u64,
                ]
                .into_iter()
                .min()
                .unwrap_or(0) as usize;
                let mut bytes = self.incoming.bytes.split_to(n);
                unmask(&mut bytes, payload.mask, payload.offset);
                payload.offset = (payload.offset + n) % 4;
                payload.remaining -= n as u64;
                buf.put_slice(&bytes);
                return Ok(Some(()));
            }
            if self.peer_closed {
                return Ok(Some(()));
            }
            let mut cursor = Cursor::new(&self.incoming.bytes[..]);
            let Some((header, length)) = FrameHeader::parse(&mut cursor).map_err(invalid)? else {
                return Ok(None);
            };
            let header_len = cursor.position() as usize;
            if header.rsv1 || header.rsv2 || header.rsv3 {
                return Err(protocol(
                    "a frame with reserved bits set (no extension was agreed)",
                ));
            }
            let Some(mask) = header.mask else {
                return Err(protocol("an unmasked frame from the client"));
            };
            match header.opcode {
                OpCode::Data(Data::Binary | Data::Continue) => {
                    self.incoming.bytes.advance(header_len);
                    self.payload = Some(Payload {
                        remaining: length,
                        mask,
                        offset: 0,
                    });
                }
                OpCode::Data(Data::Text) => {
                    return Err(protocol(
                        "text WebSocket message: MQTT travels in binary messages",
                    ));
                }
                OpCode::Control(control) => {
                    if !header.is_final || length > CONTROL_MAX {
                        return Err(protocol("a fragmented or oversized control frame"));
                    }
                    let whole = header_len + length as usize;
                    if self.incoming.bytes.len() < whole {
                        return Ok(None);
                    }
                    let mut frame = self.incoming.bytes.split_to(whole);
                    let mut body = frame.split_off(header_len);
                    unmask(&mut body, mask, 0);
                    self.control(control, &body)?;
                }
                OpCode::Data(Data::Reserved(_)) => {
                    return Err(protocol("a frame with a reserved opcode"));
                }
            }
        }
    }

    /// Answers a control frame.
    fn control(&mut self, control: Control, body: &[u8]) -> io::Result<()> {
        match control {
            Control::Ping => self.queue(OpCode::Control(Control::Pong), body),
            Control::Pong => {}
            Control::Close => {
                self.peer_closed = true;
                // Its status code echoed, as RFC 6455 5.5.1 asks.
                let status = body.get(..2).unwrap_or(&[]);
                self.queue(OpCode::Control(Control::Close), status);
            }
            Control::Reserved(_) => return Err(protocol("a frame with a reserved opcode")),
        }
        Ok(())
    }

    /// Appends a frame to `outgoing` (unmasked: the server's). Nothing after
    /// a close frame.
    fn queue(&mut self, opcode: OpCode, body: &[u8]) {
        if self.close_sent {
            return;
        }
        self.close_sent = opcode == OpCode::Control(Control::Close);
        let header = FrameHeader {
            opcode,
            ..FrameHeader::default()
        };
        // Writing into a Vec cannot fail.
        let _ = header.format(body.len() as u64, &mut self.outgoing.bytes);
        self.outgoing.bytes.extend_from_slice(body);
    }
}

/// Unmasks (or masks: the same) `bytes`, which start `offset` bytes into a
/// payload masked with `mask`.
fn unmask(bytes: &mut [u8], mask: [u8; 4], offset: usize) {
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte ^= mask[(offset + i) % 4];
    }
}

fn protocol(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("WebSocket: {what}"))
}

fn invalid(e: tokio_tungstenite::tungstenite::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("WebSocket: {e}"))
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsStream<S> {
    /// Sends what `outgoing` holds.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.frames.outgoing.poll_send(&mut self.socket, cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let decoded = this.frames.decode(buf);
            // Pongs and the close answer go out before waiting for more;
            // if the socket is full they wait for it, and the read goes on.
            if let Poll::Ready(Err(e)) = this.poll_send(cx) {
                return Poll::Ready(Err(e));
            }
            if decoded?.is_some() {
                return Poll::Ready(Ok(()));
            }
            if ready!(this.frames.incoming.poll_fill(&mut this.socket, cx))? == 0 {
                this.frames.peer_closed = true;
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.frames.accepted == 0 {
            if buf.is_empty() {
                return Poll::Ready(Ok(0));
            }
            if this.frames.close_sent {
                return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
            }
            // Earlier frames first, so `outgoing` holds at most one write.
            ready!(this.poll_send(cx))?;
            this.frames.queue(OpCode::Data(Data::Binary), buf);
            this.frames.accepted = buf.len();
        }
        ready!(this.poll_send(cx))?;
        let n = std::mem::take(&mut this.frames.accepted);
        Poll::Ready(Ok(n.min(buf.len())))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.socket).poll_flush(cx)
    }

    /// Sends a close frame (1000, unless one was sent already), waits for
    /// the client's (what comes before it is dropped), then closes the
    /// transport's sending side. Closing the socket before the client's
    /// close frame arrives would answer it with a reset, which clients
    /// report as an error (MQTT.js: EPIPE). The caller bounds the wait.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.frames
            .queue(OpCode::Control(Control::Close), &CLOSE_NORMAL);
        ready!(this.poll_send(cx))?;
        let mut scrap = [0u8; 256];
        while !this.frames.peer_closed {
            let mut buf = ReadBuf::new(&mut scrap);
            if ready!(Pin::new(&mut *this).poll_read(cx, &mut buf)).is_err() {
                break;
            }
        }
        Pin::new(&mut this.socket).poll_shutdown(cx)
    }
}

/// A WebSocket connection parks as its transport does (TCP, or TLS for
/// wss): its socket goes to the parker, and its frame state (between frames:
/// nothing but empty buffers, given back) waits beside it.
impl<S: Transport> Transport for WsStream<S> {
    const PARKABLE: bool = S::PARKABLE;
    const RAW: bool = false;
    type Asleep = (Box<Frames>, Arc<ConnectBytes>, S::Asleep);

    fn sleep(self) -> io::Result<(std::net::TcpStream, Self::Asleep)> {
        let WsStream { socket, mut frames } = self;
        frames.incoming.release();
        frames.outgoing.release();
        let Metered { inner, bytes } = socket;
        let (socket, asleep) = inner.sleep()?;
        Ok((socket, (Box::new(frames), bytes, asleep)))
    }

    fn wake(socket: TcpStream, (frames, bytes, asleep): Self::Asleep) -> io::Result<Self> {
        Ok(WsStream {
            socket: Metered {
                inner: S::wake(socket, asleep)?,
                bytes,
            },
            frames: *frames,
        })
    }
}

/// Counts what the transport reads before CONNECT is accepted (tungstenite
/// buffers the upgrade request; see [`ConnectBytes`]).
pub(super) struct Metered<S> {
    pub(super) inner: S,
    pub(super) bytes: Arc<ConnectBytes>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        if !self.bytes.hold(buf.filled().len() - before) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "too much sent before CONNECT was accepted",
            )));
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
