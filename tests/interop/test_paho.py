"""Interop tests driven by the paho-mqtt (2.x) Python client.

Every parametrized test runs for MQTT 3.1.1 (`v311`) and MQTT 5.0 (`v5`).
Synchronisation is done with queues/events and timeouts; the only plain
waits are short bounded ones (`drain`) that check something is NOT delivered.
"""

from __future__ import annotations

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from interop_support import unique

V5 = mqtt.MQTTv5


def topics(msgs):
    return sorted(m.topic for m in msgs)


def payloads(msgs):
    return [m.payload for m in msgs]


def sub_and_pub(make_client, version, topic, qos):
    """A client subscribed to `topic` at `qos`, then a publisher; both connected."""
    sub = make_client(version)
    sub.connect()
    sub.subscribe(topic, qos)
    pub = make_client(version)
    pub.connect()
    return sub, pub


def session_kwargs(version, client_id):
    """A persistent session: clean_session=0 (3.1.1) / clean_start=0 + expiry (5.0)."""
    kw = {"client_id": client_id, "clean": False}
    if version == V5:
        kw["session_expiry"] = 300
    return kw


# --------------------------------------------------------------------------
# Basic delivery and QoS
# --------------------------------------------------------------------------


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_basic_publish_subscribe(make_client, version, topic_base, qos):
    sub = make_client(version)
    sub.connect()
    assert sub.subscribe(f"{topic_base}/basic", qos) == [qos]
    pub = make_client(version)
    pub.connect()
    pub.publish(f"{topic_base}/basic", b"hello \x00\xff bytes", qos=qos)
    msg = sub.get()
    assert msg.topic == f"{topic_base}/basic"
    assert msg.payload == b"hello \x00\xff bytes"
    assert msg.qos == qos
    assert not msg.retain


def test_payload_sizes(make_client, version, topic_base):
    """Payloads across the Remaining Length boundaries (1/2/3-byte lengths) pass intact."""
    t = f"{topic_base}/size"
    sub, pub = sub_and_pub(make_client, version, t, 1)
    sizes = [0, 1, 100, 127, 128, 16_000, 16_384, 200_000]
    for n in sizes:
        pub.publish(t, bytes(i % 251 for i in range(n)), qos=1)
    msgs = sub.get_n(len(sizes))
    assert [len(m.payload) for m in msgs] == sizes
    for n, m in zip(sizes, msgs):
        assert m.payload == bytes(i % 251 for i in range(n))


def test_unsubscribe_stops_delivery(make_client, version, topic_base):
    sub = make_client(version)
    sub.connect()
    sub.subscribe(f"{topic_base}/a", 1)
    sub.subscribe(f"{topic_base}/b", 1)
    rc, mid = sub.c.unsubscribe(f"{topic_base}/a")
    assert rc == mqtt.MQTT_ERR_SUCCESS
    assert sub.unsubscribed(mid), "no UNSUBACK"
    pub = make_client(version)
    pub.connect()
    pub.publish(f"{topic_base}/a", b"after-unsubscribe", qos=1)
    pub.publish(f"{topic_base}/b", b"still-subscribed", qos=1)
    got = sub.get_until(f"{topic_base}/b") + sub.drain()
    assert payloads(got) == [b"still-subscribed"]


def test_mqtt31_basic_publish_subscribe(make_client, topic_base):
    """MQTT 3.1 (protocol name MQIsdp) clients can publish and subscribe."""
    sub, pub = sub_and_pub(make_client, mqtt.MQTTv31, f"{topic_base}/v31", 1)
    pub.publish(f"{topic_base}/v31", b"old protocol", qos=1)
    msg = sub.get()
    assert (msg.topic, msg.payload, msg.qos) == (f"{topic_base}/v31", b"old protocol", 1)


@pytest.mark.parametrize(
    "sub_qos,pub_qos",
    [(0, 2), (1, 2), (2, 0), (0, 1)],
    ids=["sub0-pub2", "sub1-pub2", "sub2-pub0", "sub0-pub1"],
)
def test_qos_is_downgraded_to_subscription_qos(make_client, version, topic_base, sub_qos, pub_qos):
    sub, pub = sub_and_pub(make_client, version, f"{topic_base}/dg", sub_qos)
    pub.publish(f"{topic_base}/dg", b"x", qos=pub_qos)
    msg = sub.get()
    assert msg.qos == min(sub_qos, pub_qos)


def test_qos2_exactly_once_in_order(make_client, version, topic_base):
    topic = f"{topic_base}/qos2"
    sub = make_client(version)
    sub.connect()
    assert sub.subscribe(topic, 2) == [2]
    pub = make_client(version)
    pub.connect()
    n = 25
    infos = [pub.c.publish(topic, f"msg-{i}".encode(), qos=2) for i in range(n)]
    for info in infos:
        info.wait_for_publish(timeout=5)
        assert info.is_published(), "publisher did not complete the QoS 2 flow (PUBCOMP)"
    msgs = sub.get_n(n)
    assert payloads(msgs) == [f"msg-{i}".encode() for i in range(n)]
    assert all(m.qos == 2 for m in msgs)
    extra = sub.drain()
    assert extra == [], f"duplicates delivered: {payloads(extra)}"


def test_cross_version_delivery(make_client, topic_base):
    """3.1.1 <-> 5.0 clients interoperate through the broker."""
    t = f"{topic_base}/x"
    sub311 = make_client(mqtt.MQTTv311)
    sub311.connect()
    sub311.subscribe(t, 1)
    sub5 = make_client(V5)
    sub5.connect()
    sub5.subscribe(t, 1)

    pub5 = make_client(V5)
    pub5.connect()
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = [("from", "v5")]
    props.ContentType = "text/plain"
    pub5.publish(t, b"from-v5", qos=1, properties=props)
    pub311 = make_client(mqtt.MQTTv311)
    pub311.connect()
    pub311.publish(t, b"from-v311", qos=1)

    for sub in (sub311, sub5):
        got = sub.get_n(2)
        assert sorted(payloads(got)) == [b"from-v311", b"from-v5"]
    by_payload = {m.payload: m for m in got}  # the v5 subscriber's messages
    assert by_payload[b"from-v5"].properties.UserProperty == [("from", "v5")]
    assert not hasattr(by_payload[b"from-v311"].properties, "UserProperty")


# --------------------------------------------------------------------------
# Wildcards
# --------------------------------------------------------------------------


# (filter, matching topics, topics that must not match, a matching marker
# published last), with `{b}` standing for the test's topic base.
WILDCARD_CASES = [
    pytest.param(
        "{b}/+/temp",
        ["{b}/kitchen/temp", "{b}/hall/temp", "{b}//temp"],
        [
            "{b}/kitchen/hum",
            "{b}/kitchen/temp/x",
            "{b}/a/b/temp",
            "{b}/temp",
            "{b}x/kitchen/temp",
        ],
        "{b}/zz-marker/temp",
        id="single_level",
    ),
    pytest.param(
        "{b}/sport/#",
        # "sport/#" also matches the parent level "sport" itself.
        ["{b}/sport", "{b}/sport/tennis", "{b}/sport/tennis/player1/score", "{b}/sport/"],
        ["{b}/sports", "{b}/other/sport", "{b}", "{b}/sportx/tennis"],
        "{b}/sport/zz-marker",
        id="multi_level",
    ),
    pytest.param(
        "{b}/+/status/#",
        ["{b}/dev1/status", "{b}/dev2/status/online", "{b}/dev3/status/a/b"],
        ["{b}/status", "{b}/dev1/x/status", "{b}/dev1/statusx"],
        "{b}/zz/status/marker",
        id="mixed",
    ),
]


@pytest.mark.parametrize("filter_, matching, not_matching, marker", WILDCARD_CASES)
def test_wildcard_filter(make_client, version, topic_base, filter_, matching, not_matching, marker):
    def at_base(t):
        return t.format(b=topic_base)

    matching = [at_base(t) for t in matching]
    not_matching = [at_base(t) for t in not_matching]
    marker = at_base(marker)
    sub, pub = sub_and_pub(make_client, version, at_base(filter_), 1)
    for t in not_matching + matching:
        pub.publish(t, t.encode(), qos=1)
    pub.publish(marker, b"end", qos=1)
    got = sub.get_until(marker) + sub.drain()
    assert topics(got) == sorted(matching + [marker])


def test_wildcards_do_not_match_sys_topics(make_client, version, topic_base):
    """`#` and a leading `+` must not match topics beginning with `$` (e.g. $SYS)."""
    token = topic_base.split("/")[-1]
    hash_sub = make_client(version)
    hash_sub.connect()
    hash_sub.subscribe("#", 1)
    plus_sub = make_client(version)
    plus_sub.connect()
    plus_sub.subscribe(f"+/{token}/#", 1)

    # A broker may refuse or silently drop client publishes to $SYS; either
    # way nothing starting with '$' may reach the wildcard subscribers.
    sys_pub = make_client(version)
    sys_pub.connect()
    for t in (f"$SYS/{token}/status", f"$interop/{token}/status"):
        info = sys_pub.c.publish(t, b"sys", qos=1)
        try:
            info.wait_for_publish(timeout=2)
        except (RuntimeError, ValueError):
            pass

    pub = make_client(version)
    pub.connect()
    marker = f"{topic_base}/marker"
    pub.publish(marker, b"end", qos=1)
    for sub in (hash_sub, plus_sub):
        got = sub.get_until(marker) + sub.drain()
        leaked = [m.topic for m in got if m.topic.startswith("$")]
        assert leaked == [], f"wildcard subscription received $-topics: {leaked}"


# --------------------------------------------------------------------------
# Retained messages
# --------------------------------------------------------------------------


def test_retained_late_subscriber(make_client, version, topic_base):
    t = f"{topic_base}/state"
    pub = make_client(version)
    pub.connect()
    pub.publish(t, b"first", qos=1, retain=True)
    pub.publish(t, b"latest", qos=1, retain=True)  # replaces the first

    late = make_client(version)
    late.connect()
    late.subscribe(t, 1)
    msg = late.get()
    assert (msg.topic, msg.payload, msg.retain) == (t, b"latest", True)

    wild = make_client(version)
    wild.connect()
    wild.subscribe(f"{topic_base}/#", 0)
    msg = wild.get()
    assert (msg.topic, msg.payload, msg.retain) == (t, b"latest", True)

    assert late.drain() == [] and wild.drain(0.1) == []


def test_retained_flag_clear_for_live_subscription(make_client, version, topic_base):
    """A retained publish forwarded to an existing subscription has RETAIN=0."""
    t = f"{topic_base}/live"
    sub, pub = sub_and_pub(make_client, version, t, 1)
    pub.publish(t, b"r", qos=1, retain=True)
    msg = sub.get()
    assert msg.payload == b"r"
    assert msg.retain is False


def test_empty_retained_payload_clears(make_client, version, topic_base):
    gone, kept = f"{topic_base}/gone", f"{topic_base}/kept"
    pub = make_client(version)
    pub.connect()
    pub.publish(gone, b"to-be-cleared", qos=1, retain=True)
    pub.publish(kept, b"still-here", qos=1, retain=True)
    pub.publish(gone, b"", qos=1, retain=True)  # clears the retained message

    late = make_client(version)
    late.connect()
    late.subscribe(gone, 1)
    late.subscribe(kept, 1)
    # Retained messages for `gone` would have been sent before those of the
    # later subscription to `kept`.
    msg = late.get()
    assert (msg.topic, msg.payload, msg.retain) == (kept, b"still-here", True)
    extra = late.drain()
    assert extra == [], f"unexpected: {[(m.topic, m.payload) for m in extra]}"


# --------------------------------------------------------------------------
# Persistent sessions
# --------------------------------------------------------------------------


def test_persistent_session_queues_while_offline(make_client, version, topic_base):
    t = f"{topic_base}/queue"
    cid = unique("ps")
    sub = make_client(version, **session_kwargs(version, cid))
    sub.connect()
    assert sub.subscribe(t, 1) == [1]
    sub.disconnect()

    pub = make_client(version)
    pub.connect()
    n = 10
    for i in range(n):
        pub.publish(t, f"offline-{i}".encode(), qos=1)

    back = make_client(version, **session_kwargs(version, cid))
    flags = back.connect()
    assert flags.session_present, "reconnect with the same client id should resume the session"
    msgs = back.get_n(n)
    assert payloads(msgs) == [f"offline-{i}".encode() for i in range(n)]
    assert all(m.qos == 1 and m.topic == t for m in msgs)

    # The subscription survived: live messages keep flowing without resubscribing.
    pub.publish(t, b"live", qos=1)
    assert back.get().payload == b"live"
    assert back.drain() == []


def miss_a_message(make_client, version, t, **session):
    """Subscribes to `t` in a session, disconnects, then has another client
    publish to `t` while away; returns that publisher."""
    sub = make_client(version, **session)
    sub.connect()
    sub.subscribe(t, 1)
    sub.disconnect()

    pub = make_client(version)
    pub.connect()
    pub.publish(t, b"while-away", qos=1)
    return pub


def test_clean_session_discards_state(make_client, version, topic_base):
    t = f"{topic_base}/discard"
    cid = unique("cs")
    pub = miss_a_message(make_client, version, t, **session_kwargs(version, cid))

    fresh = make_client(version, client_id=cid, clean=True)
    flags = fresh.connect()
    assert not flags.session_present
    pub.publish(t, b"after-clean", qos=1)
    got = fresh.drain()
    assert got == [], f"clean session got stale state: {payloads(got)}"


def test_v5_session_expiry_zero_ends_session(make_client, topic_base):
    """MQTT 5: clean_start=0 with Session Expiry Interval 0 -> session ends on disconnect."""
    t = f"{topic_base}/noexp"
    cid = unique("se")
    miss_a_message(make_client, V5, t, client_id=cid, clean=False, session_expiry=0)

    back = make_client(V5, client_id=cid, clean=False, session_expiry=0)
    flags = back.connect()
    assert not flags.session_present
    assert back.drain() == []


def test_session_takeover(make_client, version, topic_base):
    """A second connection with the same client id takes over the session."""
    t = f"{topic_base}/takeover"
    cid = unique("to")
    first = make_client(version, **session_kwargs(version, cid))
    first.connect()
    first.subscribe(t, 1)

    second = make_client(version, **session_kwargs(version, cid))
    flags = second.connect()
    assert first.disconnected.wait(5), "the old connection was not closed on takeover"
    assert flags.session_present

    pub = make_client(version)
    pub.connect()
    pub.publish(t, b"to-new-owner", qos=1)
    assert second.get().payload == b"to-new-owner"


# --------------------------------------------------------------------------
# Last will
# --------------------------------------------------------------------------


def test_will_delivered_on_abrupt_close(make_client, version, topic_base):
    t = f"{topic_base}/will"
    watcher = make_client(version)
    watcher.connect()
    watcher.subscribe(t, 1)

    dying = make_client(version, will={"topic": t, "payload": b"gone", "qos": 1, "retain": True})
    dying.connect(background=False)
    dying.abort()  # TCP close without DISCONNECT

    msg = watcher.get()
    assert (msg.topic, msg.payload) == (t, b"gone")
    assert msg.qos == 1

    # The will was retained, so a late subscriber sees it too.
    late = make_client(version)
    late.connect()
    late.subscribe(t, 1)
    msg = late.get()
    assert (msg.payload, msg.retain) == (b"gone", True)


def test_will_not_delivered_on_clean_disconnect(make_client, version, topic_base):
    t = f"{topic_base}/will"
    watcher = make_client(version)
    watcher.connect()
    watcher.subscribe(t, 1)

    polite = make_client(version, will={"topic": t, "payload": b"gone", "qos": 1})
    polite.connect()
    polite.disconnect()

    got = watcher.drain(1.0)
    assert got == [], f"will delivered after a clean DISCONNECT: {payloads(got)}"


def test_v5_disconnect_with_will_message(make_client, topic_base):
    """MQTT 5: DISCONNECT with reason 0x04 asks the server to publish the will."""
    t = f"{topic_base}/will"
    watcher = make_client(V5)
    watcher.connect()
    watcher.subscribe(t, 1)

    props = Properties(PacketTypes.WILLMESSAGE)
    props.UserProperty = [("reason", "test")]
    props.ContentType = "text/plain"
    c = make_client(V5, will={"topic": t, "payload": b"bye", "qos": 1, "properties": props})
    c.connect()
    c.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message"))

    msg = watcher.get()
    assert msg.payload == b"bye"
    assert msg.properties.UserProperty == [("reason", "test")]
    assert msg.properties.ContentType == "text/plain"


# --------------------------------------------------------------------------
# MQTT 5 properties
# --------------------------------------------------------------------------


def v5_publish_props(topic_base):
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = [
        ("k1", "v1"),
        ("k2", "v2"),
        ("k1", "v1-again"),  # duplicate keys are allowed and order must be kept
        ("ünïcødé", "välüe ✓"),
        ("empty", ""),
    ]
    props.ContentType = "application/json; charset=utf-8"
    props.ResponseTopic = f"{topic_base}/reply"
    props.CorrelationData = b"\x00\x01corr-\xff\xfe"
    props.PayloadFormatIndicator = 1
    return props


def assert_props_forwarded(received, sent):
    assert received.UserProperty == sent.UserProperty
    assert received.ContentType == sent.ContentType
    assert received.ResponseTopic == sent.ResponseTopic
    assert received.CorrelationData == sent.CorrelationData
    assert received.PayloadFormatIndicator == sent.PayloadFormatIndicator


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_v5_properties_forwarded_unchanged(make_client, topic_base, qos):
    t = f"{topic_base}/props"
    sub, pub = sub_and_pub(make_client, V5, t, qos)
    sent = v5_publish_props(topic_base)
    pub.publish(t, b'{"temp": 21.5}', qos=qos, properties=sent)
    msg = sub.get()
    assert msg.payload == b'{"temp": 21.5}'
    assert_props_forwarded(msg.properties, sent)


def test_v5_properties_kept_on_retained_message(make_client, topic_base):
    t = f"{topic_base}/props-retained"
    pub = make_client(V5)
    pub.connect()
    sent = v5_publish_props(topic_base)
    pub.publish(t, b"retained-with-props", qos=1, retain=True, properties=sent)
    late = make_client(V5)
    late.connect()
    late.subscribe(t, 1)
    msg = late.get()
    assert (msg.payload, msg.retain) == (b"retained-with-props", True)
    assert_props_forwarded(msg.properties, sent)


def test_v5_request_response(make_client, topic_base):
    """Request/response with Response Topic + Correlation Data round-trips."""
    req_topic = f"{topic_base}/service/request"
    responder = make_client(V5)
    responder.connect()
    responder.subscribe(req_topic, 1)
    requester = make_client(V5)
    requester.connect()
    reply_topic = f"{topic_base}/client/{requester.client_id}/reply"
    requester.subscribe(reply_topic, 1)

    for i in range(3):
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = reply_topic
        props.CorrelationData = f"req-{i}".encode()
        requester.publish(req_topic, f"ping {i}".encode(), qos=1, properties=props)

        req = responder.get()
        assert req.properties.ResponseTopic == reply_topic
        rprops = Properties(PacketTypes.PUBLISH)
        rprops.CorrelationData = req.properties.CorrelationData
        responder.publish(req.properties.ResponseTopic, req.payload.replace(b"ping", b"pong"), qos=1, properties=rprops)

        reply = requester.get()
        assert reply.payload == f"pong {i}".encode()
        assert reply.properties.CorrelationData == f"req-{i}".encode()


def test_v5_no_local(make_client, topic_base):
    t = f"{topic_base}/nolocal"
    c = make_client(V5)
    c.connect()
    c.subscribe(t, 1, noLocal=True)
    other = make_client(V5)
    other.connect()
    c.publish(t, b"own", qos=1)
    other.publish(t, b"other", qos=1)
    msg = c.get()
    assert msg.payload == b"other"
    assert c.drain() == []
