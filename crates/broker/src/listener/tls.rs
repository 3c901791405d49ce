//! TLS listeners: rustls (ring provider), TLS 1.2 and 1.3, optional or
//! required client certificates, certificate reload, and the client
//! certificate's Common Name as the connection's identity.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpStream;

use super::TlsConn;
use crate::config::ListenerConfig;
use crate::connection::ConnInfo;
use crate::lock::{RwLock, rank};

/// Why a TLS or wss listener's certificate, key or CA file cannot be used,
/// at start or at a reload: the listener and the problem, in one line.
#[derive(Debug, thiserror::Error)]
#[error("{listener}: {problem}")]
pub struct TlsError {
    /// "tls listener 127.0.0.1:8883", as logs name it.
    pub listener: String,
    pub problem: TlsProblem,
}

impl TlsError {
    /// The file at fault, if one is (not for settings missing altogether);
    /// for a certificate and key that do not go together, the key file.
    pub fn file(&self) -> Option<&Path> {
        match &self.problem {
            TlsProblem::Read { path, .. }
            | TlsProblem::NoCertificate { path, .. }
            | TlsProblem::NoKey { path }
            | TlsProblem::Ca { path, .. } => Some(path),
            TlsProblem::Mismatch { key_file, .. } => Some(key_file),
            TlsProblem::Missing | TlsProblem::Setup { .. } => None,
        }
    }
}

/// What is wrong with a TLS listener's files. Each message names the file
/// and its setting (`cert_file`, `key_file`, `ca_file`). The reasons from
/// rustls are kept as text: its error types are not part of this API.
#[derive(Debug, thiserror::Error)]
pub enum TlsProblem {
    /// `cert_file` or `key_file` is not set (configuration validation
    /// refuses that first; kept for a [`TlsAcceptor`] made directly).
    #[error("cert_file and key_file must be set")]
    Missing,
    /// The file cannot be read, or is not PEM.
    #[error("cannot read {setting} {}: {reason}; {FIX}", .path.display())]
    Read {
        setting: &'static str,
        path: PathBuf,
        reason: String,
    },
    /// A `cert_file` or `ca_file` without a certificate in it.
    #[error("{setting} {} holds no PEM certificate (-----BEGIN CERTIFICATE-----); {FIX}", .path.display())]
    NoCertificate {
        setting: &'static str,
        path: PathBuf,
    },
    /// A `key_file` without a private key in it.
    #[error("key_file {} holds no PEM private key (-----BEGIN PRIVATE KEY-----); {FIX}", .path.display())]
    NoKey { path: PathBuf },
    /// The CA certificates cannot verify client certificates.
    #[error("ca_file {}: {reason}; {FIX}", .path.display())]
    Ca { path: PathBuf, reason: String },
    /// The key does not go with the certificate, or rustls refuses the pair.
    #[error(
        "cert_file {} and key_file {} do not make a usable certificate: {reason}; {FIX}",
        .cert_file.display(),
        .key_file.display()
    )]
    Mismatch {
        cert_file: PathBuf,
        key_file: PathBuf,
        reason: String,
    },
    /// rustls refused the protocol versions (not expected with its own provider).
    #[error("TLS setup: {reason}")]
    Setup { reason: String },
}

/// What to do about a file rustls cannot use.
const FIX: &str = "fix that file, or point the listener at another";

/// A TLS listener's settings and its current rustls configuration, which
/// [`TlsAcceptor::reload`] swaps. Each accept reads it once: the lock is never
/// held across I/O, and open connections keep the configuration they began with.
pub struct TlsAcceptor {
    listener: ListenerConfig,
    config: RwLock<Arc<ServerConfig>, { rank::TLS_CONFIG }>,
}

impl TlsAcceptor {
    /// Loads the listener's certificate chain, key and CA files. The error
    /// names the listener, the file and what is wrong with it.
    pub fn load(listener: &ListenerConfig) -> Result<TlsAcceptor, TlsError> {
        let config = server_config(listener).map_err(|problem| TlsError {
            listener: super::describe(listener),
            problem,
        })?;
        Ok(TlsAcceptor {
            listener: listener.clone(),
            config: RwLock::new(Arc::new(config)),
        })
    }

    /// Re-reads the files. On error the current configuration stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = server_config(&self.listener).map_err(|problem| TlsError {
            listener: self.name(),
            problem,
        })?;
        *self.config.write() = Arc::new(fresh);
        Ok(())
    }

    /// "tls listener 127.0.0.1:8883", for logs and errors.
    pub fn name(&self) -> String {
        super::describe(&self.listener)
    }

    fn current(&self) -> Arc<ServerConfig> {
        self.config.read().clone()
    }

    /// Runs the TLS handshake on an accepted socket. With
    /// `use_identity_as_username`, the returned [`ConnInfo`] carries the
    /// verified client certificate's Common Name as `cert_identity`.
    pub async fn accept(
        &self,
        stream: TcpStream,
        mut info: ConnInfo,
    ) -> io::Result<(TlsConn, ConnInfo)> {
        let tls = TlsConn::accept(stream, self.current()).await?;
        if self.listener.use_identity_as_username {
            info.cert_identity = tls
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|leaf| common_name(leaf.as_ref()));
        }
        tracing::debug!(peer = %info.peer, listener = info.listener, cert_identity = ?info.cert_identity, "TLS handshake done");
        Ok((tls, info))
    }
}

/// Builds the rustls configuration from the listener's files.
fn server_config(listener: &ListenerConfig) -> Result<ServerConfig, TlsProblem> {
    let (Some(cert_file), Some(key_file)) = (&listener.cert_file, &listener.key_file) else {
        return Err(TlsProblem::Missing);
    };
    let chain = read_certs(cert_file, "cert_file")?;
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsProblem::NoKey {
            path: key_file.clone(),
        },
        e => TlsProblem::Read {
            setting: "key_file",
            path: key_file.clone(),
            reason: e.to_string(),
        },
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsProblem::Setup {
            reason: e.to_string(),
        })?;
    let builder = match &listener.ca_file {
        Some(ca_file) => {
            let verifier = client_verifier(ca_file, listener.require_certificate, provider)?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsProblem::Mismatch {
            cert_file: cert_file.clone(),
            key_file: key_file.clone(),
            reason: e.to_string(),
        })
}

/// Verifies client certificates against the CA file's certificates.
fn client_verifier(
    ca_file: &Path,
    require: bool,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsProblem> {
    let ca_problem = |reason: String| TlsProblem::Ca {
        path: ca_file.to_owned(),
        reason,
    };
    let mut roots = RootCertStore::empty();
    for cert in read_certs(ca_file, "ca_file")? {
        roots
            .add(cert)
            .map_err(|e| ca_problem(format!("invalid CA certificate: {e}")))?;
    }
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    let builder = if require {
        builder
    } else {
        builder.allow_unauthenticated()
    };
    builder.build().map_err(|e| ca_problem(e.to_string()))
}

/// The certificates in a PEM file; at least one. `setting` names it in errors.
fn read_certs(
    path: &Path,
    setting: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsProblem> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsProblem::Read {
            setting,
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsProblem::NoCertificate {
            setting,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The first Common Name (OID 2.5.4.3) in a DER certificate's subject, or
/// `None` if the certificate has none or is not well-formed DER. A small
/// reader of its own: the input may be hostile, so every length is checked
/// and nothing panics.
pub fn common_name(der: &[u8]) -> Option<String> {
    const SEQUENCE: u8 = 0x30;
    const SET: u8 = 0x31;
    const OID: u8 = 0x06;
    const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
    let (certificate, _) = Der::new(der).expect(SEQUENCE)?;
    let (tbs, _) = certificate.expect(SEQUENCE)?;
    let mut fields = tbs;
    // version [0] EXPLICIT (absent in v1 certificates)
    if fields.peek_tag() == Some(0xa0) {
        fields = fields.any()?.1;
    }
    // serialNumber, signature, issuer, validity, then subject
    for _ in 0..4 {
        fields = fields.any()?.1;
    }
    let (mut subject, _) = fields.expect(SEQUENCE)?;
    while !subject.is_empty() {
        let (mut rdn, rest) = subject.expect(SET)?;
        subject = rest;
        while !rdn.is_empty() {
            let (attribute, rest) = rdn.expect(SEQUENCE)?;
            rdn = rest;
            let (oid, value) = attribute.expect(OID)?;
            if oid.0 == COMMON_NAME {
                let (tag, value, _) = value.any_tagged()?;
                return decode_string(tag, value.0);
            }
        }
    }
    None
}

/// A DirectoryString's text.
fn decode_string(tag: u8, bytes: &[u8]) -> Option<String> {
    match tag {
        // UTF8String, PrintableString, IA5String
        0x0c | 0x13 | 0x16 => String::from_utf8(bytes.to_vec()).ok(),
        // BMPString: UTF-16BE
        0x1e if bytes.len().is_multiple_of(2) => {
            let units = bytes
                .chunks_exact(2)
                .map(|pair| u16::from_be_bytes([pair[0], pair[1]]));
            char::decode_utf16(units)
                .collect::<Result<String, _>>()
                .ok()
        }
        // TeletexString: in practice Latin-1
        0x14 => Some(bytes.iter().map(|&b| char::from(b)).collect()),
        _ => None,
    }
}

/// DER bytes still to read.
#[derive(Clone, Copy)]
struct Der<'a>(&'a [u8]);

impl<'a> Der<'a> {
    fn new(bytes: &'a [u8]) -> Der<'a> {
        Der(bytes)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn peek_tag(&self) -> Option<u8> {
        self.0.first().copied()
    }

    /// The next element (tag, contents) and what follows it.
    fn any_tagged(self) -> Option<(u8, Der<'a>, Der<'a>)> {
        let (&tag, rest) = self.0.split_first()?;
        // High tag numbers (0x1f) never occur in the fields read here.
        if tag & 0x1f == 0x1f {
            return None;
        }
        let (&first, mut rest) = rest.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            // Long form, at most 4 length bytes; 0x80 (indefinite) is not DER.
            let count = usize::from(first & 0x7f);
            if count == 0 || count > 4 || rest.len() < count {
                return None;
            }
            let (bytes, after) = rest.split_at(count);
            rest = after;
            bytes
                .iter()
                .fold(0usize, |len, &b| (len << 8) | usize::from(b))
        };
        if rest.len() < len {
            return None;
        }
        let (contents, after) = rest.split_at(len);
        Some((tag, Der(contents), Der(after)))
    }

    fn any(self) -> Option<(Der<'a>, Der<'a>)> {
        self.any_tagged()
            .map(|(_, contents, after)| (contents, after))
    }

    fn expect(self, tag: u8) -> Option<(Der<'a>, Der<'a>)> {
        let (found, contents, after) = self.any_tagged()?;
        (found == tag).then_some((contents, after))
    }
}
