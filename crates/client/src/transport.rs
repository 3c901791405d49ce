//! The byte stream under a connection: TCP, or TLS over TCP when
//! [`ConnectOptions::tls`] is set (what `mosquitto_pub --cafile` does).
//!
//! TLS is rustls with the `ring` provider, as in the broker, so the client
//! adds no crypto library of its own. The broker's certificate is checked
//! against the given CA file and must name the host connected to.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::error::Error;
use crate::options::ConnectOptions;

/// TLS settings for a connection: [`TlsOptions::new`] with the CA file,
/// then [`TlsOptions::client_cert`] for brokers that ask for a certificate.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TlsOptions {
    /// PEM file with the certificate authorities that may sign the broker's
    /// certificate.
    pub ca_file: PathBuf,
    /// A client certificate chain and its private key (PEM files), for
    /// brokers that ask for one.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

impl TlsOptions {
    /// Trusts the certificate authorities in `ca_file` (PEM) to sign the
    /// broker's certificate, which must name the host connected to.
    ///
    /// ```
    /// use tern_client::{ConnectOptions, TlsOptions};
    ///
    /// let options = ConnectOptions::new("broker.example.org", 8883)
    ///     .tls(TlsOptions::new("ca.pem").client_cert("client.pem", "client.key"));
    /// assert!(options.tls.is_some());
    /// ```
    pub fn new(ca_file: impl Into<PathBuf>) -> Self {
        TlsOptions {
            ca_file: ca_file.into(),
            client_cert: None,
        }
    }

    /// Presents this certificate chain (PEM), with its private key (PEM).
    pub fn client_cert(
        mut self,
        cert_file: impl Into<PathBuf>,
        key_file: impl Into<PathBuf>,
    ) -> Self {
        self.client_cert = Some((cert_file.into(), key_file.into()));
        self
    }
}

/// An open byte stream to the broker: plain TCP, TLS over it, or an
/// in-process pipe to a broker in the same program
/// ([`Client::connect_stream`](crate::Client::connect_stream)).
#[derive(Debug)]
pub enum Stream {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Memory(tokio::io::DuplexStream),
}

/// Connects to the broker in `options`, with the TLS handshake if asked for.
pub(crate) async fn open(options: &ConnectOptions) -> Result<Stream, Error> {
    connect(&options.host, options.port, options.tls.as_ref()).await
}

/// Connects to `host:port`, with the TLS handshake if `tls` is given: the
/// same stream, errors and certificate checks as an MQTT connection's, for
/// the tools that speak another protocol to the broker (`tern backup` over
/// its HTTP listener).
pub async fn connect(host: &str, port: u16, tls: Option<&TlsOptions>) -> Result<Stream, Error> {
    // Read before connecting: a bad file is the user's to fix, whatever the
    // network does.
    let tls = tls.map(TlsClient::new).transpose()?;
    let addr = crate::options::address(host, port);
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|source| Error::Unreachable {
            addr: addr.clone(),
            source,
        })?;
    // Small packets (acks, pings) must not wait for Nagle's timer.
    let _ = tcp.set_nodelay(true);
    match tls {
        Some(tls) => Ok(Stream::Tls(Box::new(tls.handshake(tcp, host).await?))),
        None => Ok(Stream::Tcp(tcp)),
    }
}

/// The TLS settings read once, for any number of connections (`tern bench`
/// opens thousands).
#[derive(Clone, Debug)]
pub struct TlsClient {
    config: Arc<ClientConfig>,
}

impl TlsClient {
    /// Reads the files `tls` names; the error says which one is unusable.
    pub fn new(tls: &TlsOptions) -> Result<TlsClient, Error> {
        Ok(TlsClient {
            config: Arc::new(client_config(tls)?),
        })
    }

    /// Runs the TLS handshake over `tcp`, checking that the broker's
    /// certificate names `host`.
    pub async fn handshake(
        &self,
        tcp: TcpStream,
        host: &str,
    ) -> Result<TlsStream<TcpStream>, Error> {
        let name = ServerName::try_from(host.to_owned()).map_err(|_| {
            Error::TlsSetup(format!(
                "'{host}' is not a host name or address a TLS certificate can name"
            ))
        })?;
        let addr = match tcp.peer_addr() {
            Ok(peer) => crate::options::address(host, peer.port()),
            Err(_) => host.to_owned(),
        };
        TlsConnector::from(self.config.clone())
            .connect(name, tcp)
            .await
            .map_err(|source| Error::Tls { addr, source })
    }
}

/// The rustls configuration from the files in `tls`.
fn client_config(tls: &TlsOptions) -> Result<ClientConfig, Error> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(&tls.ca_file, "CA file")? {
        roots.add(cert).map_err(|e| {
            Error::TlsSetup(format!(
                "CA file {}: not a usable CA certificate: {e}",
                tls.ca_file.display()
            ))
        })?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Error::TlsSetup(e.to_string()))?
        .with_root_certificates(roots);
    let Some((cert_file, key_file)) = &tls.client_cert else {
        return Ok(builder.with_no_client_auth());
    };
    let chain = read_certs(cert_file, "certificate file")?;
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| {
        Error::TlsSetup(format!("cannot read key file {}: {e}", key_file.display()))
    })?;
    builder.with_client_auth_cert(chain, key).map_err(|e| {
        Error::TlsSetup(format!(
            "certificate {} and key {} do not make a usable client certificate: {e}",
            cert_file.display(),
            key_file.display()
        ))
    })
}

/// The certificates in a PEM file; at least one.
fn read_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| Error::TlsSetup(format!("cannot read {what} {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(Error::TlsSetup(format!(
            "{what} {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        )));
    }
    Ok(certs)
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Memory(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Memory(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Memory(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Memory(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
