//! HTTPS: an axum [`axum::serve::Listener`] that hands over connections once
//! their TLS handshake is done. Handshakes run in tasks of their own, each
//! bounded in time, so a client that stalls its handshake holds up no one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::connection::ConnInfo;
use crate::listener::{TlsAcceptor, TlsConn};

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes finished but not yet taken by axum.
const READY: usize = 64;

/// Accepts TCP connections and yields them once TLS is up.
pub struct Listener {
    ready: mpsc::Receiver<(TlsConn, SocketAddr)>,
    addr: SocketAddr,
}

impl Listener {
    /// Starts accepting on `socket`; the accept loop ends when this
    /// listener is dropped.
    pub fn new(socket: TcpListener, acceptor: Arc<TlsAcceptor>) -> Listener {
        let addr = socket
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let (tx, ready) = mpsc::channel(READY);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = tokio::select! {
                    accepted = socket.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(e) => {
                            tracing::debug!(error = %e, "HTTP accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                    () = tx.closed() => return,
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let info = ConnInfo {
                        peer,
                        listener: 0,
                        cert_identity: None,
                        connect_bytes: None,
                        internal: false,
                    };
                    let shake = acceptor.accept(stream, info);
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, shake).await {
                        Ok(Ok((tls, _))) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "HTTPS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "HTTPS handshake timed out"),
                    }
                });
            }
        });
        Listener { ready, addr }
    }
}

impl axum::serve::Listener for Listener {
    type Io = TlsConn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(ready) => ready,
            // The accept loop only ends once this listener is gone.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}
