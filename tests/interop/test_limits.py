"""Resource limits seen by real clients: an MQTT 5 paho client over
`max_connections` gets CONNACK 0x97 Quota exceeded, and a slot frees when a
client leaves; mosquitto_pub flooding QoS 1 into queues bounded at 10
messages loses nothing to mosquitto_sub subscribers that keep reading (the
publishers are pushed back instead), and a mosquitto_sub to `#` gets every
retained message through such a queue. Tern only (the limits are set in
Tern's configuration file)."""

from __future__ import annotations

import os
import subprocess
import time

import paho.mqtt.client as mqtt
import pytest

from interop_support import DEFAULT_BROKER, TIMEOUT, Client, MosquittoSub, broker_with_config, tern

V5 = mqtt.MQTTv5


@pytest.fixture
def limited_broker(request, tmp_path):
    """A broker that accepts one client at a time."""
    template = os.environ.get("TERN_INTEROP_BROKER", DEFAULT_BROKER)
    b = broker_with_config(template, "max_connections = 1\n", tmp_path)
    request.node._interop_broker = b  # its log is shown on failure
    try:
        b.start()
        yield b
    finally:
        b.cleanup()


def connack(client: Client):
    """Connects without asserting success; returns the CONNACK reason code."""
    client.c.connect(client.broker.host, client.broker.port, client.keepalive, clean_start=True)
    client.c.loop_start()
    client._loop_running = True
    _flags, reason, _props = client._get(client._connack, "CONNACK")
    return reason


def test_max_connections_refuses_v5_with_quota_exceeded(limited_broker):
    first = Client(limited_broker, V5)
    second = Client(limited_broker, V5)
    try:
        first.connect()
        reason = connack(second)
        assert reason.is_failure
        assert reason.value == 0x97, f"CONNACK {reason} ({reason.value:#x})"
        assert str(reason) == "Quota exceeded"
        assert second.disconnected.wait(TIMEOUT), "refused client was not closed"
        # The first client is unaffected, and its slot frees when it leaves.
        assert first.c.is_connected()
        first.disconnect()
        deadline = time.monotonic() + TIMEOUT
        while True:
            third = Client(limited_broker, V5)
            reason = connack(third)
            third.close()
            if not reason.is_failure or time.monotonic() > deadline:
                break
            time.sleep(0.01)  # the broker has not seen the first one leave yet
        assert not reason.is_failure, f"slot not freed: CONNACK {reason}"
    finally:
        first.close()
        second.close()


def test_publishers_are_pushed_back_before_a_reading_subscriber_loses_anything(tmp_path):
    """Four mosquitto_pub -l at QoS 1, 50,000 lines each, as fast as they
    go, each to its own mosquitto_sub at QoS 1, through queues bounded at
    10 messages. The broker reads publishes faster than it writes
    deliveries; without push-back it dropped about half (acknowledged to
    the publishers). Each subscriber must get its 50,000, in order."""
    lines, pairs = 50_000, 4
    broker = tern(tmp_path, "pushback", "max_queued_messages = 10\n")
    subs: list[MosquittoSub] = []
    try:
        subs += [
            MosquittoSub(broker.host, broker.port, "mqttv311", [f"pb/{i}"], fmt="%p",
                         timeout_s=120, count=lines)
            for i in range(pairs)
        ]
        for sub in subs:
            sub.wait_subscribed()
        numbers = tmp_path / "numbers.txt"
        numbers.write_text("".join(f"{n}\n" for n in range(lines)))
        pubs = []
        for i in range(pairs):
            with numbers.open() as stdin:
                pubs.append(subprocess.Popen(
                    ["mosquitto_pub", "-h", broker.host, "-p", str(broker.port),
                     "-q", "1", "-t", f"pb/{i}", "-l"],
                    stdin=stdin, stderr=subprocess.PIPE, text=True))
        for pub in pubs:
            assert pub.wait(timeout=120) == 0, pub.stderr.read()
        for i, sub in enumerate(subs):
            assert sub.proc.wait(timeout=120) == 0, f"mosquitto_sub {i}: {sub.stderr()!r}"
            got = [int(line) for line in sub.output if line.isdigit()]
            assert got == list(range(lines)), (
                f"subscriber {i}: {len(got)} of {lines} messages, "
                f"first gap at {next((n for n, g in enumerate(got) if g != n), len(got))}"
            )
    finally:
        for sub in subs:
            sub.kill()
        broker.cleanup()


def test_a_new_subscriber_gets_every_retained_message_past_the_queue_limit(tmp_path):
    """paho sets 3,000 retained messages; a mosquitto_sub to `rq/#` through a
    queue bounded at 10 messages gets all 3,000 (as from Mosquitto), not the
    first 10."""
    count = 3_000
    broker = tern(tmp_path, "retained", "max_queued_messages = 10\n")
    publisher = Client(broker, V5)
    sub = None
    try:
        publisher.connect()
        for i in range(count - 1):
            publisher.publish(f"rq/{i // 100}/{i}", b"kept", qos=0, retain=True)
        # Acknowledged after the QoS 0 ones before it were handled.
        publisher.publish(f"rq/{(count - 1) // 100}/{count - 1}", b"kept", qos=1, retain=True)
        sub = MosquittoSub(broker.host, broker.port, "mqttv311", ["rq/#"], fmt="%t %r",
                           timeout_s=60, count=count)
        assert sub.proc.wait(timeout=90) == 0, f"mosquitto_sub: {sub.stderr()!r}"
        got = {line for line in sub.output if line.startswith("rq/")}
        expected = {f"rq/{i // 100}/{i} 1" for i in range(count)}
        assert got == expected, f"{len(got & expected)} of {count} retained messages"
    finally:
        publisher.close()
        if sub:
            sub.kill()
        broker.cleanup()
