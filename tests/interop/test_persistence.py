"""Persistence across broker restarts, seen by paho-mqtt and the Mosquitto clients.

The broker is stopped (SIGTERM: clean shutdown) or killed (SIGKILL: crash) and
started again on the same port and data directory. What a client was promised
must still be there: its persistent session, the messages queued for it while
it was away, and retained messages.
"""

from __future__ import annotations

import shutil
import signal
import subprocess

import paho.mqtt.client as mqtt
import pytest

from interop_support import VERSIONS, unique

V5 = mqtt.MQTTv5


@pytest.fixture(autouse=True)
def tern_only(broker):
    if broker.is_mosquitto:
        pytest.skip("persistence across restarts is Tern's (Mosquitto saves only at intervals)")


def restart(broker, sig):
    code = broker.terminate(sig, timeout=10.0)
    if sig == signal.SIGTERM:
        assert code == 0, f"broker exited with {code} on SIGTERM\n{broker.log_tail()}"
    broker.stopped = False
    broker.start()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["stopped", "killed"])
@pytest.mark.parametrize("version", list(VERSIONS), ids=list(VERSIONS))
def test_queued_messages_survive_a_restart(broker, make_client, topic_base, version, sig):
    v = VERSIONS[version]
    cid = unique("persist-sub")
    expiry = 3600 if v == V5 else None
    sub = make_client(v, client_id=cid, clean=True, session_expiry=expiry)
    sub.connect()
    sub.subscribe(f"{topic_base}/#", qos=1)
    sub.disconnect()
    # For 3.1.1 the session persists only with clean session 0 from the start.
    if v != V5:
        sub = make_client(v, client_id=cid, clean=False)
        sub.connect()
        sub.subscribe(f"{topic_base}/#", qos=1)
        sub.disconnect()
    pub = make_client(v)
    pub.connect()
    for i in range(5):
        pub.publish(f"{topic_base}/m", f"msg {i}".encode(), qos=1)  # waits for PUBACK
    pub.disconnect()

    restart(broker, sig)

    back = make_client(v, client_id=cid, clean=False, session_expiry=expiry)
    flags = back.connect()
    assert flags.session_present, "the session did not survive the restart"
    got = [m.payload for m in back.get_n(5)]
    assert got == [f"msg {i}".encode() for i in range(5)]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["stopped", "killed"])
def test_retained_message_survives_a_restart(broker, make_client, topic_base, sig):
    pub = make_client(V5)
    pub.connect()
    pub.publish(f"{topic_base}/temp", b"22.5", qos=1, retain=True)
    pub.disconnect()

    restart(broker, sig)

    late = make_client(V5)
    late.connect()
    late.subscribe(f"{topic_base}/#", qos=1)
    m = late.get()
    assert (m.topic, m.payload, m.retain) == (f"{topic_base}/temp", b"22.5", True)


def test_mosquitto_sub_gets_what_queued_while_the_broker_was_down(broker, make_client, topic_base):
    """mosquitto_sub -c (clean session off) over a crash of the broker."""
    mosquitto_sub = shutil.which("mosquitto_sub")
    if not mosquitto_sub:
        pytest.skip("mosquitto_sub not installed (apt-get install mosquitto-clients)")
    cid = unique("msub")
    base = [mosquitto_sub, "-h", broker.host, "-p", str(broker.port), "-i", cid, "-c", "-q", "1",
            "-t", f"{topic_base}/#"]
    subprocess.run(base + ["-W", "1"], capture_output=True, timeout=10)  # subscribe, then leave
    pub = make_client(mqtt.MQTTv311)
    pub.connect()
    pub.publish(f"{topic_base}/a", b"while away", qos=1)
    pub.disconnect()

    restart(broker, signal.SIGKILL)

    out = subprocess.run(base + ["-C", "1", "-W", "5"], capture_output=True, timeout=15)
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    assert out.stdout.decode().strip() == "while away"
