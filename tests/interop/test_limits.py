"""Resource limits seen by paho-mqtt: an MQTT 5 client over `max_connections`
gets CONNACK 0x97 Quota exceeded, and a slot frees when a client leaves.
Tern only (the limit is set in Tern's configuration file)."""

from __future__ import annotations

import os
import time

import paho.mqtt.client as mqtt
import pytest

from interop_support import DEFAULT_BROKER, TIMEOUT, Client, broker_with_config

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
