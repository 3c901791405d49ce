"""Persistence across broker restarts, seen by paho-mqtt and the Mosquitto clients.

The broker is stopped (SIGTERM: clean shutdown) or killed (SIGKILL: crash) and
started again on the same port and data directory. What a client was promised
must still be there: its persistent session, the messages queued for it while
it was away, and retained messages.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import time

import paho.mqtt.client as mqtt
import pytest

from interop_support import REPO_ROOT, VERSIONS, DeliveryCount, unique

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


def test_qos2_is_exactly_once_at_paho_over_crashes(broker):
    """paho-mqtt as publisher and subscriber, both with persistent sessions
    (MQTT 3.1.1, clean session 0), QoS 2 with 50 messages in flight, the
    broker SIGKILLed at random and restarted at once. The subscriber counts
    by payload, as an application would: paho hands a QoS 2 message over at
    PUBREL. Every message paho reports published (PUBCOMP) arrives, and none
    twice. TERN_INTEROP_CRASH_KILLS sets the number of kills (default 6)."""
    kills = int(os.environ.get("TERN_INTEROP_CRASH_KILLS", "6"))
    rng = random.Random()
    at = (broker.host, broker.port)
    run = DeliveryCount(at, at, unique("crash"))
    run.start()
    try:
        for _ in range(kills):
            time.sleep(rng.uniform(0.3, 1.2))
            restart(broker, signal.SIGKILL)
        time.sleep(1.0)
    finally:
        published, acked, delivered, lost, twice = run.finish()
    print(f"{kills} kills: published {published}, acknowledged {acked}, "
          f"delivered {delivered}, lost {len(lost)}, delivered twice {len(twice)}")
    assert acked == published, f"{published - acked} messages never completed"
    assert not lost, f"{len(lost)} acknowledged messages never delivered, first {lost[:20]}"
    assert not twice, f"QoS 2 messages delivered twice (number, packet id, DUP): {twice[:20]}"


def test_a_damaged_data_file_is_salvaged(broker, make_client, topic_base):
    """A data file with a damaged page: `tern serve` refuses it and names
    `tern store salvage`; salvage writes a new data directory and reports
    what it copied; the broker started on it serves exactly that to paho: the
    persistent session with its queued messages (each the one published), and
    the retained messages."""
    cid = unique("salvage-sub")
    sub = make_client(V5, client_id=cid, clean=True, session_expiry=3600)
    sub.connect()
    sub.subscribe(f"{topic_base}/q/#", qos=1)
    sub.disconnect()
    pub = make_client(V5)
    pub.connect()
    payload = {}
    for i in range(300):
        payload[f"{topic_base}/q/{i}"] = f"queued {i} ".encode() * 40
        pub.publish(f"{topic_base}/q/{i}", payload[f"{topic_base}/q/{i}"], qos=1)
    for i in range(100):
        payload[f"{topic_base}/r/{i}"] = f"retained {i}".encode()
        pub.publish(f"{topic_base}/r/{i}", payload[f"{topic_base}/r/{i}"], qos=1, retain=True)
    pub.disconnect()
    assert broker.terminate(signal.SIGTERM, timeout=10.0) == 0

    # One page (4 KiB) of garbage a third of the way into the file.
    data_file = os.path.join(broker.data_dir, "tern.redb")
    with open(data_file, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(size // 3 // 4096 * 4096)
        f.write(bytes((i * 7 + 3) % 256 for i in range(4096)))

    refused = subprocess.run(broker.argv, capture_output=True, timeout=30, cwd=REPO_ROOT)
    assert refused.returncode != 0, "the broker started on a damaged data file"
    assert b"tern store salvage" in refused.stderr, refused.stderr.decode(errors="replace")

    tern = REPO_ROOT / broker.argv[0]
    salvaged = subprocess.run([str(tern), "store", "salvage", broker.data_dir],
                              capture_output=True, timeout=60)
    report = salvaged.stdout.decode()
    assert salvaged.returncode == 3, f"{salvaged.returncode}\n{report}{salvaged.stderr.decode()}"
    counts = {name: int(copied) for name, copied in
              re.findall(r"^  (\w[\w ]*?\w)\s+(\d+) of \d+ copied", report, re.M)}
    assert counts["sessions"] == 1, report
    queued, retained = counts["queued deliveries"], counts["retained messages"]
    assert queued + retained > 0, report
    print(f"salvaged {queued} of 300 queued, {retained} of 100 retained")

    new_dir = broker.data_dir + ".salvaged"
    broker.argv = [new_dir if a == broker.data_dir else a for a in broker.argv]
    broker.stopped = False
    broker.start()
    back = make_client(V5, client_id=cid, clean=False, session_expiry=3600)
    assert back.connect().session_present
    got = back.get_n(queued) + back.drain()
    assert len(got) == queued, report
    assert all(m.payload == payload[m.topic] for m in got)
    late = make_client(V5)
    late.connect()
    late.subscribe(f"{topic_base}/r/#", qos=1)
    kept = late.get_n(retained) + late.drain()
    assert len(kept) == retained, report
    assert all(m.retain and m.payload == payload[m.topic] for m in kept)
