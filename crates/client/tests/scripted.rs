//! Behaviour the real broker never shows on its own, against a scripted
//! fake broker speaking packets through `tern-codec`: re-sending in-flight
//! messages with DUP on a resumed session, duplicate incoming QoS 2,
//! topic aliases, keep-alive timeout, malformed input.

mod common;

use std::num::NonZeroU16;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::{QUIET, WAIT, next_event, next_message, no_event, stream_ends};
use tern_client::{
    Client, ConnectOptions, DisconnectReason, Error, Event, Message, ProtocolVersion, QoS,
    ReasonCode, Reconnect,
};
use tern_codec::{ConnAck, ConnAckProperties, Packet, PubAck, Publish, PublishProperties, decode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One accepted connection of the fake broker.
struct Peer {
    stream: TcpStream,
    buf: BytesMut,
    version: ProtocolVersion,
}

impl Peer {
    /// Accepts a connection, reads CONNECT and answers CONNACK.
    async fn accept(
        listener: &TcpListener,
        session_present: bool,
        props: ConnAckProperties,
    ) -> Peer {
        let (stream, _) = tokio::time::timeout(WAIT, listener.accept())
            .await
            .expect("client connects")
            .unwrap();
        let mut peer = Peer {
            stream,
            buf: BytesMut::new(),
            version: ProtocolVersion::V5,
        };
        match peer.recv().await {
            Packet::Connect(c) => peer.version = c.protocol,
            other => panic!("expected CONNECT, got {other:?}"),
        }
        peer.send(Packet::ConnAck(ConnAck {
            session_present,
            reason: ReasonCode::Success,
            properties: props,
        }))
        .await;
        peer
    }

    async fn send(&mut self, packet: Packet) {
        let mut out = BytesMut::new();
        packet.encode(self.version, &mut out).unwrap();
        self.stream.write_all(&out).await.unwrap();
    }

    /// The next packet, or `None` if the client closed the connection.
    async fn next(&mut self, wait: Duration) -> Option<Packet> {
        tokio::time::timeout(wait, async {
            loop {
                if let Some(p) = decode(&mut self.buf, self.version, usize::MAX).unwrap() {
                    return Some(p);
                }
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("packet or close within the deadline")
    }

    async fn recv(&mut self) -> Packet {
        self.next(WAIT).await.expect("a packet, not a close")
    }
}

fn pid(n: u16) -> NonZeroU16 {
    NonZeroU16::new(n).unwrap()
}

async fn listener() -> (TcpListener, ConnectOptions) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    (listener, ConnectOptions::new("127.0.0.1", port))
}

fn incoming(topic: &str, qos: QoS, id: Option<u16>, dup: bool) -> Publish {
    Publish {
        dup,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id: id.map(pid),
        payload: Bytes::from_static(b"m"),
        properties: PublishProperties::default(),
    }
}

#[tokio::test]
async fn resumed_session_resends_in_flight_in_order_with_dup() {
    let (listener, options) = listener().await;
    let options = options
        .clean_start(false)
        .session_expiry(60)
        .client_id("resend")
        .reconnect(Reconnect::new(
            Duration::from_millis(10),
            Duration::from_millis(50),
        ));
    let connecting = tokio::spawn(Client::connect(options));
    let mut peer = Peer::accept(&listener, false, ConnAckProperties::default()).await;
    let (client, mut events, _) = connecting.await.unwrap().unwrap();

    let publish = |topic: &'static str, qos| {
        let client = client.clone();
        tokio::spawn(async move { client.publish(Message::new(topic, "x", qos)).await })
    };
    let first = publish("one", QoS::AtLeastOnce);
    let Packet::Publish(p1) = peer.recv().await else {
        panic!()
    };
    let second = publish("two", QoS::ExactlyOnce);
    let Packet::Publish(p2) = peer.recv().await else {
        panic!()
    };
    assert!(!p1.dup && !p2.dup);
    assert_ne!(p1.packet_id, p2.packet_id);
    let id2 = p2.packet_id.unwrap();
    peer.send(Packet::PubRec(PubAck::new(id2))).await;
    assert_eq!(peer.recv().await, Packet::PubRel(PubAck::new(id2)));
    let third = publish("three", QoS::ExactlyOnce);
    let Packet::Publish(p3) = peer.recv().await else {
        panic!()
    };
    drop(peer);

    match next_event(&mut events).await {
        Event::Disconnected {
            reason: DisconnectReason::ConnectionLost(_),
        } => {}
        other => panic!("expected Disconnected, got {other:?}"),
    }
    let mut peer = Peer::accept(&listener, true, ConnAckProperties::default()).await;
    match next_event(&mut events).await {
        Event::Reconnected { session_present } => assert!(session_present),
        other => panic!("expected Reconnected, got {other:?}"),
    }
    // In the original order: PUBLISH DUP, PUBREL, PUBLISH DUP.
    assert_eq!(
        peer.recv().await,
        Packet::Publish(Publish {
            dup: true,
            ..p1.clone()
        })
    );
    assert_eq!(peer.recv().await, Packet::PubRel(PubAck::new(id2)));
    assert_eq!(
        peer.recv().await,
        Packet::Publish(Publish {
            dup: true,
            ..p3.clone()
        })
    );
    assert!(!first.is_finished() && !second.is_finished() && !third.is_finished());

    peer.send(Packet::PubAck(PubAck::new(p1.packet_id.unwrap())))
        .await;
    peer.send(Packet::PubComp(PubAck::new(id2))).await;
    let id3 = p3.packet_id.unwrap();
    peer.send(Packet::PubRec(PubAck {
        reason: ReasonCode::NoMatchingSubscribers,
        ..PubAck::new(id3)
    }))
    .await;
    assert_eq!(peer.recv().await, Packet::PubRel(PubAck::new(id3)));
    peer.send(Packet::PubComp(PubAck::new(id3))).await;
    assert_eq!(first.await.unwrap().unwrap(), ReasonCode::Success);
    assert_eq!(second.await.unwrap().unwrap(), ReasonCode::Success);
    assert_eq!(
        third.await.unwrap().unwrap(),
        ReasonCode::NoMatchingSubscribers
    );
}

#[tokio::test]
async fn failed_pubrec_ends_the_flow_with_its_reason() {
    let (listener, options) = listener().await;
    let connecting = tokio::spawn(Client::connect(options));
    let mut peer = Peer::accept(&listener, false, ConnAckProperties::default()).await;
    let (client, _events, _) = connecting.await.unwrap().unwrap();
    let publishing = tokio::spawn(async move {
        client
            .publish(Message::new("t", "x", QoS::ExactlyOnce))
            .await
    });
    let Packet::Publish(p) = peer.recv().await else {
        panic!()
    };
    peer.send(Packet::PubRec(PubAck {
        reason: ReasonCode::NotAuthorized,
        ..PubAck::new(p.packet_id.unwrap())
    }))
    .await;
    assert_eq!(
        publishing.await.unwrap().unwrap(),
        ReasonCode::NotAuthorized
    );
    // No PUBREL follows a failed PUBREC.
    assert!(tokio::time::timeout(QUIET, peer.next(WAIT)).await.is_err());
}

#[tokio::test]
async fn duplicate_incoming_qos2_is_delivered_once() {
    let (listener, options) = listener().await;
    let connecting = tokio::spawn(Client::connect(options));
    let mut peer = Peer::accept(&listener, false, ConnAckProperties::default()).await;
    let (_client, mut events, _) = connecting.await.unwrap().unwrap();

    peer.send(Packet::Publish(incoming(
        "q2",
        QoS::ExactlyOnce,
        Some(5),
        false,
    )))
    .await;
    assert_eq!(peer.recv().await, Packet::PubRec(PubAck::new(pid(5))));
    peer.send(Packet::Publish(incoming(
        "q2",
        QoS::ExactlyOnce,
        Some(5),
        true,
    )))
    .await;
    assert_eq!(peer.recv().await, Packet::PubRec(PubAck::new(pid(5))));
    peer.send(Packet::PubRel(PubAck::new(pid(5)))).await;
    assert_eq!(peer.recv().await, Packet::PubComp(PubAck::new(pid(5))));
    assert_eq!(next_message(&mut events).await.topic, "q2");
    no_event(&mut events).await;
    // The id is free again: a new message with it is delivered.
    peer.send(Packet::Publish(incoming(
        "q2b",
        QoS::ExactlyOnce,
        Some(5),
        false,
    )))
    .await;
    assert_eq!(peer.recv().await, Packet::PubRec(PubAck::new(pid(5))));
    assert_eq!(next_message(&mut events).await.topic, "q2b");
    // QoS 1 is acknowledged with PUBACK.
    peer.send(Packet::Publish(incoming(
        "q1",
        QoS::AtLeastOnce,
        Some(6),
        false,
    )))
    .await;
    assert_eq!(peer.recv().await, Packet::PubAck(PubAck::new(pid(6))));
    assert_eq!(next_message(&mut events).await.topic, "q1");
}

#[tokio::test]
async fn topic_aliases_are_resolved_and_policed() {
    let (listener, options) = listener().await;
    let options = options.topic_alias_maximum(2);
    let connecting = tokio::spawn(Client::connect(options));
    let mut peer = Peer::accept(&listener, false, ConnAckProperties::default()).await;
    let (_client, mut events, _) = connecting.await.unwrap().unwrap();
    let aliased = |topic: &str, alias: u16| {
        let mut p = incoming(topic, QoS::AtMostOnce, None, false);
        p.properties.topic_alias = Some(alias);
        Packet::Publish(p)
    };
    peer.send(aliased("a/b", 1)).await;
    peer.send(aliased("", 1)).await;
    peer.send(aliased("c", 1)).await;
    peer.send(aliased("", 1)).await;
    for topic in ["a/b", "a/b", "c", "c"] {
        let m = next_message(&mut events).await;
        assert_eq!(m.topic, topic);
        assert_eq!(m.properties.topic_alias, None);
    }
    peer.send(aliased("x", 3)).await;
    match peer.recv().await {
        Packet::Disconnect(d) => assert_eq!(d.reason, ReasonCode::TopicAliasInvalid),
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    match next_event(&mut events).await {
        Event::Disconnected {
            reason: DisconnectReason::ConnectionLost(msg),
        } => assert!(msg.contains("topic alias 3"), "{msg}"),
        other => panic!("expected Disconnected, got {other:?}"),
    }
    stream_ends(&mut events).await;
}

#[tokio::test]
async fn garbage_from_the_broker_closes_cleanly() {
    for bytes in [
        &[0x00u8, 0x00][..],
        &[0x30, 0xff, 0xff, 0xff, 0xff],
        &[0x62, 0x02, 0x00, 0x00],
    ] {
        let (listener, options) = listener().await;
        let connecting = tokio::spawn(Client::connect(options));
        let mut peer = Peer::accept(&listener, false, ConnAckProperties::default()).await;
        let (client, mut events, _) = connecting.await.unwrap().unwrap();
        peer.stream.write_all(bytes).await.unwrap();
        match peer.recv().await {
            Packet::Disconnect(d) => assert!(d.reason.is_error(), "{d:?}"),
            other => panic!("expected DISCONNECT, got {other:?}"),
        }
        match next_event(&mut events).await {
            Event::Disconnected {
                reason: DisconnectReason::ConnectionLost(msg),
            } => assert!(msg.starts_with("protocol error from the broker"), "{msg}"),
            other => panic!("expected Disconnected, got {other:?}"),
        }
        stream_ends(&mut events).await;
        assert!(matches!(
            client
                .publish(Message::new("t", "x", QoS::AtMostOnce))
                .await,
            Err(Error::Closed(DisconnectReason::ConnectionLost(_)))
        ));
    }
}

#[tokio::test]
async fn unanswered_ping_is_a_keep_alive_timeout() {
    let (listener, options) = listener().await;
    let options = options.keep_alive(Duration::from_secs(1));
    let connecting = tokio::spawn(Client::connect(options));
    let mut peer = Peer::accept(&listener, false, ConnAckProperties::default()).await;
    let (_client, mut events, _) = connecting.await.unwrap().unwrap();
    // The first PINGREQ is answered, the second is not.
    assert_eq!(peer.recv().await, Packet::PingReq);
    peer.send(Packet::PingResp).await;
    assert_eq!(peer.recv().await, Packet::PingReq);
    match next_event(&mut events).await {
        Event::Disconnected {
            reason: DisconnectReason::KeepAliveTimeout,
        } => {}
        other => panic!("expected KeepAliveTimeout, got {other:?}"),
    }
    stream_ends(&mut events).await;
}

#[tokio::test]
async fn server_keep_alive_and_limits_from_connack_apply() {
    let (listener, options) = listener().await;
    let connecting = tokio::spawn(Client::connect(options));
    let props = ConnAckProperties {
        server_keep_alive: Some(1),
        maximum_packet_size: Some(100),
        retain_available: Some(false),
        ..Default::default()
    };
    let mut peer = Peer::accept(&listener, false, props).await;
    let (client, _events, _) = connecting.await.unwrap().unwrap();
    match client
        .publish(Message::new("t", "x", QoS::AtMostOnce).retain(true))
        .await
    {
        Err(Error::Invalid(msg)) => assert!(msg.contains("retained"), "{msg}"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert!(matches!(
        client
            .publish(Message::new("t", vec![0u8; 200], QoS::AtMostOnce))
            .await,
        Err(Error::Invalid(_))
    ));
    // Keep-alive 60 s asked, the broker said 1 s: a PINGREQ comes soon.
    let start = tokio::time::Instant::now();
    assert_eq!(peer.recv().await, Packet::PingReq);
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn mqtt311_refusal_of_an_mqtt5_connect_is_understood() {
    let (listener, options) = listener().await;
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 256];
        let _ = stream.read(&mut buf).await;
        // A 3.1.1-only broker: CONNACK return code 1 in 3.1.1 form.
        stream.write_all(&[0x20, 0x02, 0x00, 0x01]).await.unwrap();
    });
    match Client::connect(options).await {
        Err(Error::Refused(ReasonCode::UnsupportedProtocolVersion)) => {}
        other => panic!("expected Refused(UnsupportedProtocolVersion), got {other:?}"),
    }
    server.await.unwrap();
}
