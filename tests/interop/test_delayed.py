"""Delayed publish with the clients people use: paho-mqtt and mosquitto_pub
publish to `$delayed/1/TOPIC`; a paho subscriber to TOPIC gets the message
a second later, not before, and never under the `$delayed` name."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest

from interop_support import unique

PUBLISHERS = ["paho", "mosquitto_pub"]


@pytest.mark.parametrize("publisher", PUBLISHERS)
def test_a_delayed_message_arrives_after_its_delay(broker, make_client, version, publisher):
    if publisher == "mosquitto_pub" and not shutil.which("mosquitto_pub"):
        pytest.skip("mosquitto_pub is not installed (apt-get install mosquitto-clients)")
    topic = f"{unique('delayed')}/lights"
    sub = make_client(version)
    sub.connect()
    sub.subscribe(f"{topic.split('/')[0]}/#", qos=1)
    sent = time.monotonic()
    if publisher == "paho":
        pub = make_client(version)
        pub.connect()
        pub.publish(f"$delayed/1/{topic}", b"on", qos=1)
    else:
        out = subprocess.run(
            ["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), "-q", "1",
             "-t", f"$delayed/1/{topic}", "-m", "on"],
            capture_output=True, text=True, timeout=10,
        )
        assert out.returncode == 0, out.stderr
    message = sub.get(timeout=5)
    waited = time.monotonic() - sent
    assert (message.topic, message.payload) == (topic, b"on")
    assert waited >= 0.9, f"published after {waited:.2f} s, before its delay"
    with pytest.raises(AssertionError):
        sub.get(timeout=0.5)  # once only
