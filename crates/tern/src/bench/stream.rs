//! A benchmark connection's byte stream: TCP, or TLS over it (`--cafile`).
//!
//! The workers drive thousands of sockets with readiness and non-blocking
//! reads and writes (`ready`, `try_read_buf`, `try_write`), not with futures
//! per operation. For TLS the same calls go through rustls's own buffers:
//! a read decrypts what the socket has, a write encrypts and sends what the
//! socket takes. Encrypted bytes the socket did not take wait in rustls, and
//! [`Stream::ready`] asks for writability until they are gone; decrypted
//! bytes not yet read make the stream readable at once.

use std::io::{self, BufRead, Read, Write};

use bytes::BytesMut;
use rustls::ClientConnection;
use tokio::io::{Interest, Ready};
use tokio::net::TcpStream;

/// A benchmark connection's socket, and its TLS session if it has one.
#[derive(Debug)]
pub struct Stream {
    tcp: TcpStream,
    /// The TLS session, when the broker is reached over TLS.
    tls: Option<Box<ClientConnection>>,
}

impl Stream {
    pub fn tcp(tcp: TcpStream) -> Stream {
        Stream { tcp, tls: None }
    }

    pub fn tls(tcp: TcpStream, tls: ClientConnection) -> Stream {
        Stream {
            tcp,
            tls: Some(Box::new(tls)),
        }
    }

    /// Waits until a `try_` call for `interest` may make progress. Sends
    /// encrypted bytes left over from earlier writes on the way.
    pub async fn ready(&mut self, interest: Interest) -> io::Result<Ready> {
        loop {
            let Some(tls) = self.tls.as_deref_mut() else {
                return self.tcp.ready(interest).await;
            };
            if interest.is_readable() && has_plaintext(tls) {
                return Ok(Ready::READABLE);
            }
            let interest = if tls.wants_write() {
                interest | Interest::WRITABLE
            } else {
                interest
            };
            let ready = self.tcp.ready(interest).await?;
            if ready.is_writable() {
                self.send_records()?;
            }
            let wanted = (ready.is_readable() && interest.is_readable())
                || (ready.is_writable() && interest.is_writable() && !self.pending());
            if wanted || ready.is_read_closed() || ready.is_write_closed() {
                return Ok(ready);
            }
        }
    }

    /// Reads what is there into `buf`'s spare room (at least 1 byte of it);
    /// `Ok(0)` at end of stream, `WouldBlock` if nothing came.
    pub fn try_read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        let Some(tls) = self.tls.as_deref_mut() else {
            return self.tcp.try_read_buf(buf);
        };
        let start = buf.len();
        buf.resize(buf.capacity().max(start + 1), 0);
        let read = read_plaintext(tls, &self.tcp, &mut buf[start..]);
        buf.truncate(start + *read.as_ref().unwrap_or(&0));
        read
    }

    /// Writes as much of `buf` as the socket (TLS: rustls) takes now.
    pub fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.tls.is_none() {
            return self.tcp.try_write(buf);
        }
        self.send_records()?;
        let Some(tls) = self.tls.as_deref_mut().filter(|t| !t.wants_write()) else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        let n = tls.writer().write(buf)?;
        self.send_records()?;
        Ok(n)
    }

    /// Reads into `buf`, waiting for bytes; `Ok(0)` at end of stream.
    pub async fn read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        loop {
            match self.try_read_buf(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.ready(Interest::READABLE).await?;
                }
                read => return read,
            }
        }
    }

    /// Writes all of `buf`, and with TLS every record of it, to the socket.
    pub async fn write_all(&mut self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() || self.pending() {
            match self.try_write(buf) {
                Ok(n) => buf = &buf[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if !buf.is_empty() || self.pending() {
                self.ready(Interest::WRITABLE).await?;
            }
        }
        Ok(())
    }

    /// Whether encrypted bytes wait for the socket.
    fn pending(&self) -> bool {
        self.tls.as_deref().is_some_and(|tls| tls.wants_write())
    }

    /// Sends encrypted bytes waiting in rustls, as many as the socket takes.
    fn send_records(&mut self) -> io::Result<()> {
        let Some(tls) = self.tls.as_deref_mut() else {
            return Ok(());
        };
        while tls.wants_write() {
            match tls.write_tls(&mut Socket(&self.tcp)) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Whether a read would return at once: decrypted bytes wait, or the
/// session has ended.
fn has_plaintext(tls: &mut ClientConnection) -> bool {
    !matches!(tls.reader().fill_buf(), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

/// Decrypted bytes into `buf`, reading records from the socket as needed.
fn read_plaintext(
    tls: &mut ClientConnection,
    tcp: &TcpStream,
    buf: &mut [u8],
) -> io::Result<usize> {
    loop {
        match tls.reader().read(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            // A close without close_notify is the end of the stream here,
            // as on TCP.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
            read => return read,
        }
        if tls.read_tls(&mut Socket(tcp))? == 0 {
            return Ok(0);
        }
        tls.process_new_packets()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    }
}

/// The socket as std's `Read` and `Write`, without blocking (`WouldBlock`).
struct Socket<'a>(&'a TcpStream);

impl Read for Socket<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl Write for Socket<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
