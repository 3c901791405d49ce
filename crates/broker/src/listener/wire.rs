//! The buffers of a transport that frames the MQTT byte stream itself (TLS
//! records, WebSocket frames): bytes read and not yet decoded, and bytes
//! encoded and not yet sent. Both are sized for idle connections, the many:
//! reads take a little at a time until one fills its room, and both give
//! their memory back when the connection parks.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};

/// Bytes read from the socket and not yet decoded.
pub(super) struct Incoming {
    pub(super) bytes: BytesMut,
    /// Room reserved for a read while the peer sends little, and while the
    /// last read filled its room.
    quiet: usize,
    busy: usize,
    /// The last read filled its room: read more at a time.
    filled: bool,
}

impl Incoming {
    pub(super) fn new(quiet: usize, busy: usize) -> Incoming {
        Incoming {
            bytes: BytesMut::new(),
            quiet,
            busy,
            filled: false,
        }
    }

    /// Reads what the socket has; 0 at its end.
    pub(super) fn poll_fill<R: AsyncRead + Unpin>(
        &mut self,
        socket: &mut R,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        let room = if self.filled { self.busy } else { self.quiet };
        if self.bytes.capacity() - self.bytes.len() < room / 2 {
            self.bytes.reserve(room);
        }
        let spare = self.bytes.capacity() - self.bytes.len();
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(socket),
            cx,
            &mut self.bytes
        ))?;
        self.filled = n == spare;
        Poll::Ready(Ok(n))
    }

    /// Gives the buffer back if it holds nothing (before parking).
    pub(super) fn release(&mut self) {
        if self.bytes.is_empty() {
            self.bytes = BytesMut::new();
        }
    }
}

/// Bytes to send; the first `sent` already went out.
#[derive(Default)]
pub(super) struct Outgoing {
    pub(super) bytes: Vec<u8>,
    sent: usize,
}

impl Outgoing {
    /// Sends them all.
    pub(super) fn poll_send<W: AsyncWrite + Unpin>(
        &mut self,
        socket: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while self.sent < self.bytes.len() {
            let rest = &self.bytes[self.sent..];
            let n = ready!(Pin::new(&mut *socket).poll_write(cx, rest))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.bytes.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// What is still to send.
    pub(super) fn unsent(&self) -> &[u8] {
        &self.bytes[self.sent..]
    }

    /// Gives the buffer back if it holds nothing (before parking).
    pub(super) fn release(&mut self) {
        if self.unsent().is_empty() {
            *self = Outgoing::default();
        }
    }
}
