//! The typed errors of the public boundary, each produced through the real
//! entry point: `Broker::start` with a bad configuration, a port already
//! taken, broken certificate, password and ACL files, and a data directory
//! that cannot be used; `BrokerHandle::reload` with broken files. Each test
//! checks the variant and that the message names the file or address.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use common::*;
use tern_broker::config::{ListenerConfig, ListenerTransport};
use tern_broker::{
    AuthError, BindError, Broker, Config, ConfigError, ReloadError, StartError, StoreError,
    TlsProblem,
};

/// A directory of its own for one test's files, removed when dropped.
struct TestDir(PathBuf);

impl TestDir {
    fn new(name: &str) -> TestDir {
        let dir = std::env::temp_dir().join(format!("tern-errors-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TestDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes `name` and returns its path.
    fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Why `config` does not start, after checking that the message is one
/// line and that no `source()` repeats its reason (so a printer that
/// follows the chain, like `tern serve`'s, says it once).
async fn start_error(config: Config) -> (StartError, String) {
    let err = match Broker::start(config).await {
        Ok(broker) => {
            broker.shutdown().await;
            panic!("the broker started");
        }
        Err(err) => err,
    };
    let text = err.to_string();
    assert!(!text.contains('\n'), "one line: {text}");
    assert!(
        std::error::Error::source(&err).is_none(),
        "the reason once: {err:?}"
    );
    (err, text)
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn with_listener(listener: ListenerConfig) -> Config {
    Config {
        listeners: vec![listener],
        ..test_config()
    }
}

/// A TLS listener on a free port with these files.
fn tls_listener(cert_file: &Path, key_file: &Path) -> ListenerConfig {
    ListenerConfig {
        transport: ListenerTransport::Tls,
        cert_file: Some(cert_file.to_owned()),
        key_file: Some(key_file.to_owned()),
        ..ListenerConfig::tcp(any_port())
    }
}

/// A self-signed certificate for localhost and its key, as PEM.
fn certificate() -> (String, String) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    (certified.cert.pem(), certified.signing_key.serialize_pem())
}

#[tokio::test]
async fn an_invalid_configuration_is_a_config_error() {
    let (err, text) = start_error(Config {
        maximum_qos: 3,
        ..test_config()
    })
    .await;
    assert!(
        matches!(err, StartError::Config(ConfigError::Invalid(_))),
        "{err:?}"
    );
    assert!(text.contains("maximum_qos"), "{text}");

    // A TLS listener without its files: the listener is named.
    let listener = ListenerConfig {
        transport: ListenerTransport::Tls,
        ..ListenerConfig::tcp(any_port())
    };
    let (err, text) = start_error(with_listener(listener)).await;
    assert!(matches!(err, StartError::Config(_)), "{err:?}");
    assert!(text.contains("tls listener 127.0.0.1:0"), "{text}");
}

#[tokio::test]
async fn a_port_in_use_is_a_bind_error_naming_the_address() {
    let taken = std::net::TcpListener::bind(any_port()).unwrap();
    let addr = taken.local_addr().unwrap();
    let (err, text) = start_error(Config {
        bind: addr,
        ..test_config()
    })
    .await;
    match &err {
        StartError::Bind(BindError {
            addr: at, reason, ..
        }) => {
            assert_eq!(*at, addr);
            assert_eq!(reason.kind(), std::io::ErrorKind::AddrInUse);
        }
        other => panic!("not a bind error: {other:?}"),
    }
    assert!(
        text.starts_with(&format!("cannot listen on tcp listener {addr}: ")),
        "{text}"
    );
    assert!(text.contains("another program"), "says what to do: {text}");
}

/// How `listener` fails to start, after checking that the error is a TLS
/// error whose file is `file` and whose message names the listener and the
/// file and says what to do.
async fn tls_problem(listener: ListenerConfig, file: &Path) -> TlsProblem {
    let (err, text) = start_error(with_listener(listener)).await;
    let StartError::Tls(tls) = err else {
        panic!("not a TLS error: {err:?}");
    };
    assert_eq!(tls.file(), Some(file), "{tls:?}");
    assert!(
        text.starts_with("tls listener 127.0.0.1:0: ")
            && text.contains(&file.display().to_string())
            && text.contains("fix that file"),
        "{text}"
    );
    tls.problem
}

#[tokio::test]
async fn unusable_certificate_files_are_tls_errors_naming_the_file() {
    let dir = TestDir::new("tls");
    let (cert_pem, key_pem) = certificate();
    let cert = dir.write("server.crt", &cert_pem);
    let key = dir.write("server.key", &key_pem);

    let missing = dir.path("missing.crt");
    let problem = tls_problem(tls_listener(&missing, &key), &missing).await;
    assert!(
        matches!(
            problem,
            TlsProblem::Read {
                setting: "cert_file",
                ..
            }
        ),
        "{problem:?}"
    );

    let empty = dir.write("empty.crt", "");
    let problem = tls_problem(tls_listener(&empty, &key), &empty).await;
    assert!(
        matches!(
            problem,
            TlsProblem::NoCertificate {
                setting: "cert_file",
                ..
            }
        ),
        "{problem:?}"
    );

    let garbage = dir.write("garbage.key", "not a key");
    let problem = tls_problem(tls_listener(&cert, &garbage), &garbage).await;
    assert!(matches!(problem, TlsProblem::NoKey { .. }), "{problem:?}");

    // A key of another certificate: both files are named.
    let (_, other_key) = certificate();
    let other = dir.write("other.key", other_key);
    let problem = tls_problem(tls_listener(&cert, &other), &other).await;
    assert!(
        matches!(problem, TlsProblem::Mismatch { .. }),
        "{problem:?}"
    );
    assert!(problem.to_string().contains("server.crt"), "{problem}");

    // A CA file without certificates, for client certificates.
    let ca = dir.write("ca.crt", "no certificates here");
    let listener = ListenerConfig {
        ca_file: Some(ca.clone()),
        ..tls_listener(&cert, &key)
    };
    let problem = tls_problem(listener, &ca).await;
    assert!(
        matches!(
            problem,
            TlsProblem::NoCertificate {
                setting: "ca_file",
                ..
            }
        ),
        "{problem:?}"
    );
}

#[tokio::test]
async fn broken_authentication_files_are_auth_errors_naming_the_file() {
    let dir = TestDir::new("auth");
    let passwd = dir.path("passwd");
    let (err, text) = start_error(Config {
        password_file: Some(passwd.clone()),
        ..test_config()
    })
    .await;
    match &err {
        StartError::Auth(auth @ AuthError::PasswordFile { reason, .. }) => {
            assert_eq!(reason.kind(), std::io::ErrorKind::NotFound);
            assert_eq!(auth.path(), passwd);
        }
        other => panic!("not a password file error: {other:?}"),
    }
    assert!(
        text.starts_with(&format!("cannot read password file {}", passwd.display())),
        "{text}"
    );
    assert!(text.contains("tern passwd -c"), "says what to do: {text}");

    let acl = dir.write("acl", "topic read a/#\ntopic sometimes b\n");
    let (err, text) = start_error(Config {
        acl_file: Some(acl.clone()),
        ..test_config()
    })
    .await;
    assert!(
        matches!(&err, StartError::Auth(AuthError::AclLine { line: 2, path, .. }) if *path == acl),
        "{err:?}"
    );
    assert!(
        text.contains(&acl.display().to_string()) && text.contains("line 2"),
        "{text}"
    );
    assert!(text.contains("sometimes"), "the text at fault: {text}");

    let missing = dir.path("no-acl");
    let (err, _) = start_error(Config {
        acl_file: Some(missing),
        ..test_config()
    })
    .await;
    assert!(
        matches!(err, StartError::Auth(AuthError::AclFile { .. })),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_unusable_data_directory_is_a_store_error_naming_it() {
    let dir = TestDir::new("store");
    let persistent = |data_dir: PathBuf| Config {
        persistence: true,
        data_dir,
        ..test_config()
    };

    // Not a directory at all.
    let file = dir.write("a-file", "");
    let (err, text) = start_error(persistent(file.clone())).await;
    assert!(
        matches!(err, StartError::Store(StoreError::CreateDir { .. })),
        "{err:?}"
    );
    assert!(text.contains(&file.display().to_string()), "{text}");

    // A data file that is not one.
    let data = dir.path("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("tern.redb"), vec![0xAB; 4096]).unwrap();
    let (err, text) = start_error(persistent(data.clone())).await;
    assert!(
        matches!(err, StartError::Store(StoreError::NotADataFile { .. })),
        "{err:?}"
    );
    assert!(
        text.contains(&data.join("tern.redb").display().to_string()),
        "{text}"
    );
}

#[tokio::test]
async fn reload_returns_one_typed_error_per_file_and_keeps_the_rest() {
    let dir = TestDir::new("reload");
    let (cert_pem, key_pem) = certificate();
    let cert = dir.write("server.crt", &cert_pem);
    let key = dir.write("server.key", &key_pem);
    let passwd = dir.write("passwd", "");
    let broker = start_with(Config {
        password_file: Some(passwd.clone()),
        ..with_listener(tls_listener(&cert, &key))
    })
    .await;
    assert!(broker.reload().is_ok());

    std::fs::write(&cert, "").unwrap();
    std::fs::remove_file(&passwd).unwrap();
    let errors = broker.reload().unwrap_err();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        matches!(&errors[0], ReloadError::Tls(tls) if tls.file() == Some(cert.as_path())),
        "{errors:?}"
    );
    assert!(
        matches!(&errors[1], ReloadError::Auth(AuthError::PasswordFile { path, .. }) if *path == passwd),
        "{errors:?}"
    );
    assert!(errors[0].to_string().contains("server.crt"), "{errors:?}");
    assert!(errors[1].to_string().contains("passwd"), "{errors:?}");

    // Once fixed, both reload.
    std::fs::write(&cert, &cert_pem).unwrap();
    std::fs::write(&passwd, "").unwrap();
    assert!(broker.reload().is_ok());
    broker.shutdown().await;
}
