//! A TCP relay between a client and the real broker, which a test can
//! pause (hold what the broker sends) and cut (close every connection
//! through it, as a network failure would). It puts the client in states
//! the broker alone never shows on loopback: an acknowledgement that is
//! late, a connection lost with publishes in flight.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

pub struct Relay {
    port: u16,
    /// True while bytes from the broker are held back.
    held: watch::Sender<bool>,
    /// One task per relayed connection; aborting one closes both sockets.
    connections: Arc<Mutex<JoinSet<()>>>,
    accept: JoinHandle<()>,
}

impl Relay {
    /// Listens on a free loopback port; each connection to it is relayed to
    /// `broker`.
    pub async fn start(broker: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (held, holding) = watch::channel(false);
        let connections = Arc::new(Mutex::new(JoinSet::new()));
        let accept = tokio::spawn({
            let connections = connections.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let holding = holding.clone();
                    connections.lock().unwrap().spawn(async move {
                        if let Ok(broker) = TcpStream::connect(broker).await {
                            pipe(client, broker, holding).await;
                        }
                    });
                }
            }
        });
        Relay {
            port,
            held,
            connections,
            accept,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Holds back everything the broker sends from now on (acknowledgements,
    /// messages, PINGRESP); what the client sends still goes through.
    pub fn hold(&self) {
        self.held.send_replace(true);
    }

    /// Delivers what was held back, and everything after it.
    pub fn release(&self) {
        self.held.send_replace(false);
    }

    /// Closes every connection through the relay (the client reads EOF, the
    /// broker too); new ones are relayed as before.
    pub fn cut(&self) {
        self.connections.lock().unwrap().abort_all();
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// Copies bytes both ways until either side closes.
async fn pipe(client: TcpStream, broker: TcpStream, mut holding: watch::Receiver<bool>) {
    let _ = client.set_nodelay(true);
    let _ = broker.set_nodelay(true);
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_broker, mut to_broker) = broker.into_split();
    let upstream = tokio::io::copy(&mut from_client, &mut to_broker);
    let downstream = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = from_broker.read(&mut buf).await?;
            if n == 0 {
                return Ok::<(), std::io::Error>(());
            }
            // While held, what the broker sent waits here.
            if holding.wait_for(|held| !held).await.is_err() {
                return Ok(());
            }
            to_client.write_all(&buf[..n]).await?;
        }
    };
    tokio::select! {
        _ = upstream => {}
        _ = downstream => {}
    }
}
