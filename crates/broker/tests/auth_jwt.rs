//! JSON Web Tokens as passwords over real sockets: HS256 with a secret,
//! RS256 and ES256 with a PEM public key and with a JWKS (a file, and a URL
//! served here), `exp` and `nbf`, tampered and foreign tokens, the `acl`
//! claim in both of its forms, and passwords that are no token left to the
//! password file. Keys: tests/data/jwt (made with openssl, for these tests).

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tern_broker::Config;
use tern_broker::config::AuthJwtConfig;
use tern_codec::*;

const SECRET: &str = "a-test-secret-of-some-length";

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/jwt")
        .join(name)
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A token of `claims`, signed as `alg` says (with `kid` in its header).
fn token(alg: Algorithm, kid: Option<&str>, claims: Value) -> String {
    let key = match alg {
        Algorithm::HS256 => EncodingKey::from_secret(SECRET.as_bytes()),
        Algorithm::RS256 => {
            EncodingKey::from_rsa_pem(&std::fs::read(data("rsa-private.pem")).unwrap()).unwrap()
        }
        Algorithm::ES256 => {
            EncodingKey::from_ec_pem(&std::fs::read(data("ec-private.pem")).unwrap()).unwrap()
        }
        other => panic!("{other:?}"),
    };
    let header = Header {
        kid: kid.map(str::to_owned),
        ..Header::new(alg)
    };
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

async fn broker(jwt: AuthJwtConfig) -> tern_broker::BrokerHandle {
    start_with(Config {
        auth_jwt: Some(jwt),
        allow_anonymous: Some(false),
        ..test_config()
    })
    .await
}

fn login(id: &str, password: &str) -> Connect {
    Connect {
        username: Some("device".into()),
        password: Some(Bytes::copy_from_slice(password.as_bytes())),
        ..connect_packet(ProtocolVersion::V5, id)
    }
}

async fn connack(at: SocketAddr, password: &str) -> ReasonCode {
    TestClient::connect_with(at, login("c", password))
        .await
        .1
        .reason
}

fn pem(name: &str) -> AuthJwtConfig {
    AuthJwtConfig {
        secret: None,
        public_key_file: Some(data(name)),
        ..AuthJwtConfig::with_secret(SECRET)
    }
}

#[tokio::test]
async fn hs256_tokens_are_checked_with_their_times() {
    let b = broker(AuthJwtConfig::with_secret(SECRET)).await;
    let at = b.local_addr();
    let ok = token(Algorithm::HS256, None, json!({"exp": now() + 60}));
    assert_eq!(connack(at, &ok).await, ReasonCode::Success);
    let no_exp = token(Algorithm::HS256, None, json!({"sub": "device"}));
    assert_eq!(
        connack(at, &no_exp).await,
        ReasonCode::Success,
        "exp is optional"
    );
    let expired = token(Algorithm::HS256, None, json!({"exp": now() - 10}));
    assert_eq!(
        connack(at, &expired).await,
        ReasonCode::BadUserNameOrPassword
    );
    let early = token(Algorithm::HS256, None, json!({"nbf": now() + 60}));
    assert_eq!(connack(at, &early).await, ReasonCode::BadUserNameOrPassword);
    // Tampered: the claims changed, the signature not.
    let mut parts: Vec<String> = ok.split('.').map(str::to_owned).collect();
    parts[1] = token(Algorithm::HS256, None, json!({"exp": now() + 3600}))
        .split('.')
        .nth(1)
        .unwrap()
        .into();
    assert_eq!(
        connack(at, &parts.join(".")).await,
        ReasonCode::BadUserNameOrPassword
    );
    // Another algorithm than the key's.
    let rs = token(Algorithm::RS256, None, json!({}));
    assert_eq!(connack(at, &rs).await, ReasonCode::BadUserNameOrPassword);
    // No token at all: the password file would decide; without one, with
    // tokens configured, nothing accepts it.
    assert_eq!(
        connack(at, "just-a-password").await,
        ReasonCode::BadUserNameOrPassword
    );
    b.shutdown().await;
}

#[tokio::test]
async fn rs256_and_es256_with_pem_keys() {
    for (file, alg, wrong) in [
        ("rsa-public.pem", Algorithm::RS256, Algorithm::ES256),
        ("ec-public.pem", Algorithm::ES256, Algorithm::RS256),
    ] {
        let b = broker(pem(file)).await;
        let at = b.local_addr();
        assert_eq!(
            connack(at, &token(alg, None, json!({"exp": now() + 60}))).await,
            ReasonCode::Success,
            "{alg:?}"
        );
        assert_eq!(
            connack(at, &token(wrong, None, json!({"exp": now() + 60}))).await,
            ReasonCode::BadUserNameOrPassword
        );
        b.shutdown().await;
    }
}

/// A JWKS, as a file and from a URL served here: each token's key by its kid.
#[tokio::test]
async fn jwks_from_a_file_and_from_a_url() {
    let from_file = broker(AuthJwtConfig {
        secret: None,
        jwks_file: Some(data("jwks.json")),
        ..AuthJwtConfig::with_secret(SECRET)
    })
    .await;
    let jwks = std::fs::read_to_string(data("jwks.json")).unwrap();
    let app = axum::Router::new().route("/jwks", axum::routing::get(move || async move { jwks }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let from_url = broker(AuthJwtConfig {
        secret: None,
        jwks_url: Some(url),
        ..AuthJwtConfig::with_secret(SECRET)
    })
    .await;
    for b in [&from_file, &from_url] {
        let at = b.local_addr();
        let rsa = token(Algorithm::RS256, Some("rsa-1"), json!({"exp": now() + 60}));
        let ec = token(Algorithm::ES256, Some("ec-1"), json!({"exp": now() + 60}));
        let unknown = token(Algorithm::ES256, Some("other"), json!({"exp": now() + 60}));
        let mismatched = token(Algorithm::ES256, Some("rsa-1"), json!({}));
        // The URL's keys arrive just after start: wait for the first.
        eventually_accepted(at, &rsa).await;
        assert_eq!(connack(at, &ec).await, ReasonCode::Success);
        assert_eq!(
            connack(at, &unknown).await,
            ReasonCode::BadUserNameOrPassword
        );
        assert_eq!(
            connack(at, &mismatched).await,
            ReasonCode::BadUserNameOrPassword
        );
    }
    from_file.shutdown().await;
    from_url.shutdown().await;
}

async fn eventually_accepted(at: SocketAddr, token: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while connack(at, token).await != ReasonCode::Success {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the token was never accepted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The `acl` claim, as EMQX's {"pub", "sub"} lists and as a list of rules.
#[tokio::test]
async fn the_acl_claim_is_the_clients_acl() {
    let b = broker(AuthJwtConfig::with_secret(SECRET)).await;
    let at = b.local_addr();
    let lists = json!({"pub": ["up/${clientid}/#"], "sub": ["down/#"]});
    let rules = json!([{"permission": "allow", "action": "publish", "topic": "up/${clientid}/#"},
                       {"permission": "allow", "action": "subscribe", "topic": "down/#"}]);
    for acl in [lists, rules] {
        let t = token(
            Algorithm::HS256,
            None,
            json!({"exp": now() + 60, "acl": acl}),
        );
        let (mut c, ack) = TestClient::connect_with(at, login("cam-7", &t)).await;
        assert_eq!(ack.reason, ReasonCode::Success);
        assert!(!c.puback("up/cam-7/temp", 1).await.reason.is_error());
        assert_eq!(
            c.puback("up/cam-8/temp", 2).await.reason,
            ReasonCode::NotAuthorized
        );
        assert_eq!(
            c.subscribe("down/cam-7", QoS::AtMostOnce).await,
            ReasonCode::Success
        );
        assert_eq!(
            c.subscribe("up/#", QoS::AtMostOnce).await,
            ReasonCode::NotAuthorized
        );
        c.disconnect().await;
    }
    b.shutdown().await;
}

/// A key file that is not a key stops the start, naming it.
#[tokio::test]
async fn a_bad_key_file_stops_the_start_with_its_name() {
    let err = tern_broker::Broker::start(Config {
        auth_jwt: Some(pem("jwks.json")),
        ..test_config()
    })
    .await
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("jwks.json") && err.contains("PEM"), "{err}");
}
