//! Authentication and ACL through real sockets: password logins, anonymous
//! access per listener, the ACL on publish, subscribe, delivery, retained
//! messages, wills and `$SYS`, reloading, and the failed-login slow-down.

mod common;

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use tern_broker::config::ListenerConfig;
use tern_broker::password::PasswordHash;
use tern_broker::{AuthError, BrokerHandle, Config};
use tern_codec::*;

const V5: ProtocolVersion = ProtocolVersion::V5;
const V3: ProtocolVersion = ProtocolVersion::V3_1_1;

/// A directory of its own for one test's files.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tern-auth-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A `user:hash` line, with few iterations so debug builds stay fast.
fn user_line(user: &str, password: &str) -> String {
    let hash = PasswordHash::new(password, NonZeroU32::new(1000).unwrap()).unwrap();
    format!("{user}:{}\n", hash.encode())
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

async fn start_auth(edit: impl FnOnce(&mut Config)) -> BrokerHandle {
    let mut config = test_config();
    edit(&mut config);
    start_with(config).await
}

fn login(version: ProtocolVersion, id: &str, user: Option<&str>, pw: Option<&str>) -> Connect {
    let mut c = connect_packet(version, id);
    c.username = user.map(Into::into);
    c.password = pw.map(|p| bytes::Bytes::copy_from_slice(p.as_bytes()));
    c
}

async fn connack(broker: &BrokerHandle, connect: Connect) -> ReasonCode {
    TestClient::connect_with(broker.local_addr(), connect)
        .await
        .1
        .reason
}

async fn connect_as(
    broker: &BrokerHandle,
    version: ProtocolVersion,
    id: &str,
    user: Option<&str>,
) -> TestClient {
    let (client, ack) =
        TestClient::connect_with(broker.local_addr(), login(version, id, user, None)).await;
    assert_eq!(ack.reason, ReasonCode::Success, "{id} as {user:?}");
    client
}

#[tokio::test]
async fn passwords_decide_connect() {
    let dir = temp_dir("passwords");
    let file = dir.join("passwd");
    write(
        &file,
        &format!(
            "{}garbage line\n{}",
            user_line("alice", "wonder"),
            user_line("bob", "builder")
        ),
    );
    let broker = start_auth(|c| c.password_file = Some(file.clone())).await;
    for v in [V5, V3] {
        let bad = ReasonCode::BadUserNameOrPassword;
        assert_eq!(
            connack(&broker, login(v, "a", Some("alice"), Some("wonder"))).await,
            ReasonCode::Success
        );
        assert_eq!(
            connack(&broker, login(v, "b", Some("bob"), Some("builder"))).await,
            ReasonCode::Success
        );
        assert_eq!(
            connack(&broker, login(v, "c", Some("alice"), Some("builder"))).await,
            bad
        );
        assert_eq!(
            connack(&broker, login(v, "d", Some("mallory"), Some("wonder"))).await,
            bad
        );
        assert_eq!(
            connack(&broker, login(v, "e", Some("alice"), None)).await,
            bad
        );
        // A password file makes anonymous access refused unless allowed.
        assert_eq!(
            connack(&broker, login(v, "f", None, None)).await,
            ReasonCode::NotAuthorized
        );
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn mosquitto_passwd_files_are_read() {
    let dir = temp_dir("mosquitto");
    let file = dir.join("passwd");
    let run = |args: &[&str]| {
        let status = std::process::Command::new("mosquitto_passwd")
            .args(args)
            .status()
            .expect("mosquitto_passwd is installed");
        assert!(status.success());
    };
    let f = file.to_str().unwrap();
    run(&["-c", "-b", f, "seven", "pbkdf2-pw"]);
    run(&["-H", "sha512", "-b", f, "six", "sha-pw"]);
    let broker = start_auth(|c| c.password_file = Some(file.clone())).await;
    assert_eq!(
        connack(&broker, login(V5, "a", Some("seven"), Some("pbkdf2-pw"))).await,
        ReasonCode::Success
    );
    assert_eq!(
        connack(&broker, login(V5, "b", Some("six"), Some("sha-pw"))).await,
        ReasonCode::Success
    );
    assert_eq!(
        connack(&broker, login(V5, "c", Some("six"), Some("pbkdf2-pw"))).await,
        ReasonCode::BadUserNameOrPassword
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn anonymous_access_per_listener() {
    let dir = temp_dir("anonymous");
    let file = dir.join("passwd");
    write(&file, &user_line("alice", "pw"));
    let listener = |allow: Option<bool>| {
        let mut l = ListenerConfig::tcp("127.0.0.1:0".parse().unwrap());
        l.allow_anonymous = allow;
        vec![l]
    };
    let cases = [
        // (broker-wide, listener, anonymous accepted)
        (Some(false), Some(true), true),
        (Some(true), Some(false), false),
        (Some(true), None, true),
        (None, None, false),
    ];
    for (global, own, accepted) in cases {
        let broker = start_auth(|c| {
            c.password_file = Some(file.clone());
            c.allow_anonymous = global;
            c.listeners = listener(own);
        })
        .await;
        let expected = if accepted {
            ReasonCode::Success
        } else {
            ReasonCode::NotAuthorized
        };
        for v in [V5, V3] {
            assert_eq!(
                connack(&broker, login(v, "anon", None, None)).await,
                expected,
                "{global:?} {own:?}"
            );
        }
        broker.shutdown().await;
    }
    // Without a password file anonymous clients are welcome by default.
    let broker = start_auth(|_| {}).await;
    assert_eq!(
        connack(&broker, login(V5, "anon", None, None)).await,
        ReasonCode::Success
    );
    broker.shutdown().await;
}

const ACL: &str = "\
# anonymous clients
topic read public/#

user root
topic readwrite #
topic read $SYS/#

user alice
topic readwrite alice/#
topic deny alice/secret
topic read $SYS/#
topic deny $SYS/broker/uptime

user bob
topic write bob/+/out
topic read #

pattern readwrite devices/%c/#
pattern read inbox/%u
";

async fn acl_broker(name: &str, edit: impl FnOnce(&mut Config)) -> (BrokerHandle, PathBuf) {
    let dir = temp_dir(name);
    let file = dir.join("acl");
    write(&file, ACL);
    let broker = start_auth(|c| {
        c.acl_file = Some(file.clone());
        edit(c);
    })
    .await;
    (broker, file)
}

/// PUBLISH QoS 1 and return the PUBACK reason.
async fn puback(client: &mut TestClient, topic: &str) -> ReasonCode {
    client
        .send(Packet::Publish(publish_packet(
            topic,
            b"m",
            QoS::AtLeastOnce,
            7,
        )))
        .await;
    match client.recv().await {
        Packet::PubAck(a) => a.reason,
        other => panic!("expected PUBACK, got {other:?}"),
    }
}

#[tokio::test]
async fn acl_matrix() {
    let (broker, _) = acl_broker("matrix", |_| {}).await;
    // root sees everything that is routed.
    let mut watch = connect_as(&broker, V5, "watch", Some("root")).await;
    assert_eq!(
        watch.subscribe("#", QoS::AtMostOnce).await,
        ReasonCode::Success
    );
    // (user, client id, topic, may write, may read)
    let matrix: &[(Option<&str>, &str, &str, bool, bool)] = &[
        (None, "anon", "public/news", false, true),
        (None, "anon", "alice/x", false, false),
        (Some("alice"), "a1", "alice/x", true, true),
        (Some("alice"), "a1", "alice/secret", false, false),
        (Some("alice"), "a1", "public/news", false, false),
        (Some("bob"), "b1", "bob/1/out", true, true),
        (Some("bob"), "b1", "bob/1/in", false, true),
        (Some("bob"), "b1", "alice/x", false, true),
        (Some("carol"), "c1", "alice/x", false, false),
        (Some("carol"), "dev7", "devices/dev7/temp", true, true),
        (Some("carol"), "dev7", "devices/dev8/temp", false, false),
        (Some("carol"), "c1", "inbox/carol", false, true),
        (Some("carol"), "c1", "inbox/dave", false, false),
        (None, "c1", "inbox/", false, false),
    ];
    for &(user, id, topic, write, read) in matrix {
        for v in [V5, V3] {
            let mut c = connect_as(&broker, v, id, user).await;
            let reason = puback(&mut c, topic).await;
            let want = match (write, v) {
                (true, _) => ReasonCode::Success,
                (false, V5) => ReasonCode::NotAuthorized,
                // 3.1.1 cannot say no: acknowledged, then dropped.
                (false, _) => ReasonCode::Success,
            };
            assert_eq!(reason, want, "{user:?}/{id} write {topic} ({v:?})");
            if write {
                assert_eq!(watch.recv_publish().await.topic.as_str(), topic);
            }
            let sub = c.subscribe(topic, QoS::AtMostOnce).await;
            let want = match (read, v) {
                (true, _) => ReasonCode::Success,
                (false, V5) => ReasonCode::NotAuthorized,
                (false, _) => ReasonCode::UnspecifiedError,
            };
            assert_eq!(sub, want, "{user:?}/{id} read {topic} ({v:?})");
            c.disconnect().await;
        }
    }
    // Nothing refused reached the watcher; QoS 0 and 2 are dropped too.
    let mut anon = connect_as(&broker, V5, "anon", None).await;
    anon.send(Packet::Publish(publish_packet(
        "alice/x",
        b"q0",
        QoS::AtMostOnce,
        0,
    )))
    .await;
    anon.send(Packet::Publish(publish_packet(
        "alice/x",
        b"q2",
        QoS::ExactlyOnce,
        9,
    )))
    .await;
    match anon.recv().await {
        Packet::PubRec(a) => assert_eq!(a.reason, ReasonCode::NotAuthorized),
        other => panic!("expected PUBREC, got {other:?}"),
    }
    let mut anon3 = connect_as(&broker, V3, "anon3", None).await;
    anon3
        .publish("alice/x", b"q2", QoS::ExactlyOnce, false)
        .await;
    watch.expect_nothing().await;
    broker.shutdown().await;
}

#[tokio::test]
async fn deliveries_and_retained_follow_deny() {
    let (broker, _) = acl_broker("delivery", |_| {}).await;
    let mut root = connect_as(&broker, V5, "root", Some("root")).await;
    root.publish("alice/secret", b"r-secret", QoS::AtLeastOnce, true)
        .await;
    root.publish("alice/ok", b"r-ok", QoS::AtLeastOnce, true)
        .await;
    let mut alice = connect_as(&broker, V5, "a1", Some("alice")).await;
    assert_eq!(
        alice.subscribe("alice/#", QoS::AtLeastOnce).await,
        ReasonCode::GrantedQoS1
    );
    // Only the readable retained message arrives.
    let p = alice.recv_publish().await;
    assert_eq!((p.topic.as_str(), p.retain), ("alice/ok", true));
    alice.ack(&p).await;
    alice.expect_nothing().await;
    // Live messages: the denied topic is filtered per message.
    root.publish("alice/secret", b"live-secret", QoS::AtLeastOnce, false)
        .await;
    root.publish("alice/x", b"live-x", QoS::AtLeastOnce, false)
        .await;
    let p = alice.recv_publish().await;
    assert_eq!(p.topic.as_str(), "alice/x");
    alice.ack(&p).await;
    alice.expect_nothing().await;
    broker.shutdown().await;
}

/// A member of a shared group whose ACL does not let it read a message's
/// topic does not take its turn: the message goes to a member that may
/// read it. Before, alice's turns were lost: bob-worker got half.
#[tokio::test]
async fn a_shared_message_goes_to_a_member_that_may_read_it() {
    let (broker, _) = acl_broker("shared", |_| {}).await;
    let mut worker = connect_as(&broker, V5, "bob-worker", Some("bob")).await;
    let mut alice = connect_as(&broker, V5, "a1", Some("alice")).await;
    for client in [&mut worker, &mut alice] {
        // Granted to alice too: alice/task matches the filter.
        let granted = client
            .subscribe("$share/jobs/+/task", QoS::AtLeastOnce)
            .await;
        assert_eq!(granted, ReasonCode::GrantedQoS1);
    }
    let mut root = connect_as(&broker, V5, "root", Some("root")).await;
    for _ in 0..20 {
        root.publish("r/task", b"job", QoS::AtLeastOnce, false)
            .await;
    }
    for _ in 0..20 {
        let p = worker.recv_publish().await;
        assert_eq!(p.topic.as_str(), "r/task");
        worker.ack(&p).await;
    }
    // Both may read alice/task: their turns alternate as before.
    root.publish("alice/task", b"a", QoS::AtLeastOnce, false)
        .await;
    root.publish("alice/task", b"b", QoS::AtLeastOnce, false)
        .await;
    let (p, q) = (worker.recv_publish().await, alice.recv_publish().await);
    assert_ne!(p.payload, q.payload);
    worker.ack(&p).await;
    alice.ack(&q).await;
    alice.expect_nothing().await;

    // With no member that may read it, the message is dropped, and counted.
    worker.disconnect().await;
    let dropped = || broker.state().metrics.dropped_total();
    let before = dropped();
    root.publish("r/task", b"nobody", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(dropped(), before + 1);
    alice.expect_nothing().await;
    broker.shutdown().await;
}

#[tokio::test]
async fn will_must_be_writable() {
    let (broker, _) = acl_broker("will", |_| {}).await;
    let with_will = |v, topic: &str| {
        let mut c = login(v, "w", Some("alice"), None);
        c.will = Some(LastWill {
            topic: topic.into(),
            payload: bytes::Bytes::from_static(b"gone"),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: WillProperties::default(),
        });
        c
    };
    for v in [V5, V3] {
        assert_eq!(
            connack(&broker, with_will(v, "bob/1/out")).await,
            ReasonCode::NotAuthorized
        );
        assert_eq!(
            connack(&broker, with_will(v, "alice/status")).await,
            ReasonCode::Success
        );
    }
    broker.shutdown().await;
}

/// A will is checked again when it is published: after a reload takes away
/// its client's right to write the topic, neither an immediate nor a delayed
/// will goes out.
#[tokio::test]
async fn a_will_is_judged_by_the_rules_in_force_when_it_is_published() {
    let dir = temp_dir("will-reload");
    let acl = dir.join("acl");
    write(&acl, "user alice\ntopic readwrite alice/#\n");
    let broker = start_auth(|c| c.acl_file = Some(acl.clone())).await;
    let mut watcher = connect_as(&broker, V5, "watcher", Some("alice")).await;
    watcher.subscribe("alice/#", QoS::AtMostOnce).await;
    let device = |id: &str, delay: Option<u32>| {
        let mut c = login(V5, id, Some("alice"), None);
        c.clean_start = false;
        c.properties.session_expiry_interval = Some(60);
        c.will = Some(LastWill {
            topic: format!("alice/{id}/status").as_str().into(),
            payload: bytes::Bytes::from_static(b"gone"),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: WillProperties {
                will_delay_interval: delay,
                ..WillProperties::default()
            },
        });
        c
    };
    let connect = |c: Connect| TestClient::connect_with(broker.local_addr(), c);
    // While the rules allow it, the will goes out.
    let (allowed, _) = connect(device("d0", None)).await;
    allowed.drop_connection();
    assert_eq!(
        watcher.recv_publish().await.topic.as_str(),
        "alice/d0/status"
    );

    let (now, _) = connect(device("d1", None)).await;
    let (later, _) = connect(device("d2", Some(1))).await;
    write(&acl, "user alice\ntopic read alice/#\n");
    broker.state().reload_auth().unwrap();
    now.drop_connection();
    later.drop_connection();
    // Past the delayed will's second.
    if let Ok(Some(p)) = watcher.next(Duration::from_millis(1500)).await {
        panic!("a will went out although its topic is no longer writable: {p:?}");
    }
    broker.shutdown().await;
}

/// Ends the session `connect` would resume (Clean Start, then DISCONNECT),
/// so the next protocol version's round starts without it.
async fn end_session(addr: std::net::SocketAddr, mut connect: Connect) {
    connect.clean_start = true;
    let (end, _) = TestClient::connect_with(addr, connect).await;
    end.disconnect().await;
}

/// A client id whose session belongs to another user is refused (MQTT 5:
/// CONNACK 0x85, 3.1.1: return code 2): the attack of issue 15, where alice
/// connected with bob's client id, kicked him off and destroyed his session
/// and its queued messages. Neither the connected owner nor the offline
/// session is touched.
#[tokio::test]
async fn another_user_cannot_take_a_client_id_over() {
    let broker = start_auth(|_| {}).await;
    let addr = broker.local_addr();
    for version in [V5, V3] {
        let as_user = |user: Option<&str>, id: &str| {
            let mut c = persistent(version, id);
            c.username = user.map(Into::into);
            c
        };
        let (mut bob, _) =
            TestClient::connect_with(addr, as_user(Some("bob"), "bob-persist")).await;
        bob.subscribe("data/#", QoS::AtLeastOnce).await;
        for intruder in [Some("alice"), None] {
            let (_, ack) = TestClient::connect_with(addr, as_user(intruder, "bob-persist")).await;
            assert_eq!(
                ack.reason,
                ReasonCode::ClientIdentifierNotValid,
                "{version:?}: {intruder:?} took bob's client id while he was connected"
            );
        }
        let mut publisher = TestClient::connect(addr, version, "publisher").await;
        publisher
            .publish("data/1", b"while bob is on", QoS::AtLeastOnce, false)
            .await;
        let live = bob.recv_publish().await;
        assert_eq!(live.payload.as_ref(), b"while bob is on");
        bob.ack(&live).await;

        bob.disconnect().await;
        publisher
            .publish("data/2", b"queued for bob", QoS::AtLeastOnce, false)
            .await;
        let (_, ack) = TestClient::connect_with(addr, as_user(Some("alice"), "bob-persist")).await;
        assert_eq!(
            ack.reason,
            ReasonCode::ClientIdentifierNotValid,
            "{version:?}: offline"
        );

        let (mut back, ack) =
            TestClient::connect_with(addr, as_user(Some("bob"), "bob-persist")).await;
        assert!(ack.session_present, "{version:?}: bob's session survived");
        let queued = back.recv_publish().await;
        assert_eq!(queued.payload.as_ref(), b"queued for bob");
        back.ack(&queued).await;
        back.disconnect().await;
        end_session(addr, as_user(Some("bob"), "bob-persist")).await;
    }
    broker.shutdown().await;
}

/// With `client_id_takeover_by_other_users` (Mosquitto's rule) another user
/// takes the client id over, but does not resume the session: it starts
/// clean, without the messages queued for it or its subscriptions.
#[tokio::test]
async fn with_takeover_allowed_another_user_starts_clean() {
    let broker = start_auth(|c| c.client_id_takeover_by_other_users = true).await;
    let addr = broker.local_addr();
    for version in [V5, V3] {
        let as_user = |user: &str| {
            let mut c = persistent(version, "gateway");
            c.username = Some(user.into());
            c
        };
        let (mut alice, _) = TestClient::connect_with(addr, as_user("alice")).await;
        alice.subscribe("data/#", QoS::AtLeastOnce).await;
        alice.disconnect().await;
        let mut publisher = TestClient::connect(addr, version, "publisher").await;
        publisher
            .publish("data/1", b"for alice", QoS::AtLeastOnce, false)
            .await;

        let (mut mallory, ack) = TestClient::connect_with(addr, as_user("mallory")).await;
        assert_eq!(ack.reason, ReasonCode::Success);
        assert!(
            !ack.session_present,
            "{version:?}: resumed another user's session"
        );
        publisher
            .publish("data/2", b"for alice", QoS::AtLeastOnce, false)
            .await;
        mallory.expect_nothing().await;
        mallory.disconnect().await;

        // The same user resumes as before (the session is mallory's now).
        let (mut again, ack) = TestClient::connect_with(addr, as_user("mallory")).await;
        assert!(ack.session_present, "{version:?}: the owner resumes");
        again.expect_nothing().await;
        again.disconnect().await;
        end_session(addr, as_user("mallory")).await;
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn sys_topics_only_where_allowed() {
    let (broker, _) = acl_broker("sys", |c| c.sys_interval_secs = 1).await;
    let mut bob = connect_as(&broker, V5, "b1", Some("bob")).await;
    // bob reads `#`, which does not reach `$SYS`.
    assert_eq!(
        bob.subscribe("$SYS/#", QoS::AtMostOnce).await,
        ReasonCode::NotAuthorized
    );
    let mut alice = connect_as(&broker, V5, "a1", Some("alice")).await;
    assert_eq!(
        alice.subscribe("$SYS/#", QoS::AtMostOnce).await,
        ReasonCode::Success
    );
    // Everything up to the second `version`: at least one whole round of
    // `$SYS` (whatever order its topics come in), without uptime.
    let mut seen = Vec::new();
    let mut versions = 0;
    while versions < 2 {
        let p = alice.recv_publish().await;
        let topic = p.topic.to_string();
        versions += usize::from(topic == "$SYS/broker/version");
        seen.push(topic);
    }
    assert!(
        seen.iter().any(|t| t == "$SYS/broker/clients/connected"),
        "{seen:?}"
    );
    assert!(!seen.iter().any(|t| t == "$SYS/broker/uptime"), "{seen:?}");
    broker.shutdown().await;
}

#[tokio::test]
async fn reload_applies_good_files_and_keeps_old_rules_on_errors() {
    let dir = temp_dir("reload");
    let acl = dir.join("acl");
    let passwd = dir.join("passwd");
    write(&acl, "topic readwrite news/#\n");
    write(&passwd, &user_line("alice", "one"));
    let broker = start_auth(|c| {
        c.acl_file = Some(acl.clone());
        c.password_file = Some(passwd.clone());
        c.allow_anonymous = Some(true);
    })
    .await;
    let mut sub = connect_as(&broker, V5, "sub", None).await;
    assert_eq!(
        sub.subscribe("news/#", QoS::AtMostOnce).await,
        ReasonCode::Success
    );
    let mut publisher = connect_as(&broker, V5, "pub", None).await;
    assert_eq!(
        puback(&mut publisher, "news/secret").await,
        ReasonCode::Success
    );
    assert_eq!(sub.recv_publish().await.topic.as_str(), "news/secret");
    assert_eq!(
        puback(&mut publisher, "other").await,
        ReasonCode::NotAuthorized
    );

    // New rules: the existing subscription loses news/secret, `other` opens.
    write(
        &acl,
        "topic readwrite news/#\ntopic deny news/secret\ntopic readwrite other\n",
    );
    write(
        &passwd,
        &(user_line("alice", "one") + &user_line("bob", "two")),
    );
    broker.state().reload_auth().unwrap();
    assert_eq!(
        puback(&mut publisher, "other").await,
        ReasonCode::NoMatchingSubscribers
    );
    assert_eq!(
        puback(&mut publisher, "news/secret").await,
        ReasonCode::NotAuthorized
    );
    assert_eq!(
        puback(&mut publisher, "news/open").await,
        ReasonCode::Success
    );
    assert_eq!(sub.recv_publish().await.topic.as_str(), "news/open");
    assert_eq!(
        connack(&broker, login(V5, "b", Some("bob"), Some("two"))).await,
        ReasonCode::Success
    );

    // A broken ACL: the error names file and line; the rules stay.
    write(&acl, "topic readwrite #\nbogus line\n");
    let err = broker.state().reload_auth().unwrap_err();
    assert!(
        matches!(err, AuthError::AclLine { line: 2, .. }) && err.path() == acl,
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains(acl.to_str().unwrap()) && text.contains("line 2"),
        "{text}"
    );
    assert_eq!(
        puback(&mut publisher, "news/secret").await,
        ReasonCode::NotAuthorized
    );
    // A missing password file is an error too; bob still logs in.
    std::fs::remove_file(&passwd).unwrap();
    let err = broker.state().reload_auth().unwrap_err();
    assert!(matches!(err, AuthError::PasswordFile { .. }), "{err:?}");
    assert!(err.to_string().contains(passwd.to_str().unwrap()), "{err}");
    assert_eq!(
        connack(&broker, login(V5, "b", Some("bob"), Some("two"))).await,
        ReasonCode::Success
    );
    broker.shutdown().await;
}

/// Connects `id` as `user` with `password`, which must be accepted.
async fn logged_in(
    broker: &BrokerHandle,
    version: ProtocolVersion,
    id: &str,
    (user, password): (&str, &str),
) -> TestClient {
    let connect = login(version, id, Some(user), Some(password));
    let (client, ack) = TestClient::connect_with(broker.local_addr(), connect).await;
    assert_eq!(ack.reason, ReasonCode::Success, "{id} as {user}");
    client
}

/// A reload that removes a user, or changes a password, closes the
/// connections that logged in with them (MQTT 5: DISCONNECT 0x87, Not
/// authorized); one whose user's entry is unchanged stays and keeps
/// working. `parked`: the connections are parked when the reload comes
/// (else parking is off and they are awake in their tasks).
async fn a_reload_closes_logins_it_no_longer_admits(name: &str, parked: bool) {
    let dir = temp_dir(name);
    let passwd = dir.join("passwd");
    let bob = user_line("bob", "b");
    write(
        &passwd,
        &(user_line("alice", "a") + &bob + &user_line("carol", "c")),
    );
    let broker = start_auth(|c| {
        c.password_file = Some(passwd.clone());
        if !parked {
            c.park_idle_ms = 0;
        }
    })
    .await;
    let mut alice5 = logged_in(&broker, V5, "alice5", ("alice", "a")).await;
    let mut alice3 = logged_in(&broker, V3, "alice3", ("alice", "a")).await;
    let mut carol = logged_in(&broker, V5, "carol", ("carol", "c")).await;
    let mut bob_client = logged_in(&broker, V5, "bob", ("bob", "b")).await;
    assert_eq!(
        bob_client.subscribe("t/#", QoS::AtMostOnce).await,
        ReasonCode::Success
    );
    if parked {
        eventually("all four connections are parked", || {
            broker.parked_connections() == 4
        })
        .await;
    } else {
        assert_eq!(broker.parked_connections(), 0);
    }

    // alice removed, carol's password changed, bob's line kept as it was.
    write(&passwd, &(bob + &user_line("carol", "new")));
    let reloaded = broker.reload();
    assert!(reloaded.is_ok(), "{reloaded:?}");
    expect_disconnect(&mut alice5, ReasonCode::NotAuthorized).await;
    // MQTT 3.1.1 has no server DISCONNECT: the socket just closes.
    assert_eq!(alice3.expect_closed().await, None);
    expect_disconnect(&mut carol, ReasonCode::NotAuthorized).await;
    bob_client
        .publish("t/1", b"still here", QoS::AtMostOnce, false)
        .await;
    assert_eq!(&bob_client.recv_publish().await.payload[..], b"still here");
    // carol is back with her new password; alice is not let in.
    logged_in(&broker, V5, "carol", ("carol", "new")).await;
    assert_eq!(
        connack(&broker, login(V5, "alice5", Some("alice"), Some("a"))).await,
        ReasonCode::BadUserNameOrPassword
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn a_reload_closes_awake_connections_whose_login_it_no_longer_admits() {
    a_reload_closes_logins_it_no_longer_admits("refuse-awake", false).await;
}

#[tokio::test]
async fn a_reload_closes_parked_connections_whose_login_it_no_longer_admits() {
    a_reload_closes_logins_it_no_longer_admits("refuse-parked", true).await;
}

/// A connection a reload closes ends like any other the broker closes: its
/// will goes out, and its persistent session stays, for the client to
/// resume once it may log in again.
#[tokio::test]
async fn a_refused_clients_will_goes_out_and_its_session_stays() {
    let dir = temp_dir("refuse-session");
    let passwd = dir.join("passwd");
    let bob = user_line("bob", "b");
    write(&passwd, &(user_line("alice", "a") + &bob));
    let broker = start_auth(|c| c.password_file = Some(passwd.clone())).await;
    let mut watcher = logged_in(&broker, V5, "watcher", ("bob", "b")).await;
    watcher.subscribe("status/#", QoS::AtMostOnce).await;
    let mut device = login(V5, "device", Some("alice"), Some("a"));
    device.clean_start = false;
    device.properties.session_expiry_interval = Some(60);
    device.will = Some(LastWill {
        topic: "status/device".into(),
        payload: bytes::Bytes::from_static(b"gone"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: WillProperties::default(),
    });
    let (mut client, _) = TestClient::connect_with(broker.local_addr(), device.clone()).await;
    assert_eq!(
        client.subscribe("news", QoS::AtLeastOnce).await,
        ReasonCode::GrantedQoS1
    );

    write(&passwd, &bob);
    broker.state().reload_auth().unwrap();
    expect_disconnect(&mut client, ReasonCode::NotAuthorized).await;
    assert_eq!(&watcher.recv_publish().await.payload[..], b"gone");

    // Back in the file (hashed anew): the session is resumed.
    write(&passwd, &(user_line("alice", "a") + &bob));
    broker.state().reload_auth().unwrap();
    device.will = None;
    let (_, ack) = TestClient::connect_with(broker.local_addr(), device).await;
    assert_eq!(
        (ack.reason, ack.session_present),
        (ReasonCode::Success, true)
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn repeated_failures_are_slowed_down() {
    use tern_broker::testing::{FIRST_DELAY, FREE_FAILURES};
    let dir = temp_dir("slow");
    let file = dir.join("passwd");
    write(&file, &user_line("alice", "right"));
    let broker = start_auth(|c| c.password_file = Some(file.clone())).await;
    let attempt = |password: &'static str| {
        let broker = &broker;
        async move { connack(broker, login(V5, "x", Some("alice"), Some(password))).await }
    };
    let mut sent = Vec::new();
    for _ in 0..FREE_FAILURES {
        sent.push(Instant::now());
        assert_eq!(attempt("wrong").await, ReasonCode::BadUserNameOrPassword);
        assert!(
            sent.last().unwrap().elapsed() < FIRST_DELAY,
            "a free failure"
        );
    }
    // Each next check starts 250 ms after the previous one, then 500 ms...
    let third = sent[2];
    assert_eq!(attempt("wrong").await, ReasonCode::BadUserNameOrPassword);
    assert!(third.elapsed() >= FIRST_DELAY);
    assert_eq!(attempt("wrong").await, ReasonCode::BadUserNameOrPassword);
    assert!(third.elapsed() >= FIRST_DELAY * 3);
    // ...and the right password from an address it never logged in from
    // waits its turn too (1 s after that), then succeeds.
    assert_eq!(attempt("right").await, ReasonCode::Success);
    assert!(third.elapsed() >= FIRST_DELAY * 7);
    broker.shutdown().await;
}

/// Many connections from one address guessing at once: each one admitted
/// counts as a strike before its password is checked, so they get the same
/// pace as one connection guessing in turn, and those that would wait over
/// 10 s are refused at once, unchecked (0x89 Server busy). Before, every
/// one was checked at once and only its answer delayed: 400 connections
/// made 97 guesses/s. A user who logged in from the same address before,
/// and users at other addresses, are not held up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_guessing_gets_no_more_checks() {
    let dir = temp_dir("parallel");
    let file = dir.join("passwd");
    let users = ["alice", "bob", "carol"]
        .map(|u| user_line(u, "right"))
        .concat();
    write(&file, &users);
    let broker = start_auth(|c| c.password_file = Some(file.clone())).await;
    let addr = broker.local_addr();
    let here: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    let elsewhere: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let login_from = |from, user: &'static str| async move {
        let started = Instant::now();
        let client = TestClient::raw_from(addr, from, V5).await;
        let (_, ack) = client
            .handshake(login(V5, user, Some(user), Some("right")))
            .await;
        (ack.reason, started.elapsed())
    };
    assert_eq!(login_from(here, "bob").await.0, ReasonCode::Success);

    let (answers, mut answered) = tokio::sync::mpsc::unbounded_channel();
    let mut guessers = Vec::new();
    for n in 0..50 {
        let answers = answers.clone();
        guessers.push(tokio::spawn(async move {
            let guess = login(V5, &format!("guess-{n}"), Some("alice"), Some("wrong"));
            let (_, ack) = TestClient::connect_with(addr, guess).await;
            let _ = answers.send(ack.reason);
        }));
    }
    // The busy answers come at once; the checked ones one by one.
    let mut busy = 0;
    while busy < 40 {
        let reason = tokio::time::timeout(WAIT, answered.recv()).await;
        match reason.expect("answers keep coming").expect("open") {
            ReasonCode::ServerBusy => busy += 1,
            ReasonCode::BadUserNameOrPassword => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    let (bob, bob_took) = login_from(here, "bob").await;
    assert_eq!(bob, ReasonCode::Success);
    let (carol, carol_took) = login_from(elsewhere, "carol").await;
    assert_eq!(carol, ReasonCode::Success);
    assert!(bob_took < Duration::from_secs(1), "bob waited {bob_took:?}");
    assert!(
        carol_took < Duration::from_secs(1),
        "carol waited {carol_took:?}"
    );
    for guesser in guessers {
        guesser.abort();
    }
    broker.shutdown().await;
}
