"""The broker process itself: it accepts connections and stops cleanly on signals."""

from __future__ import annotations

import signal

import paho.mqtt.client as mqtt
import pytest


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_broker_stops_cleanly_on_signal(broker, make_client, sig):
    c = make_client(mqtt.MQTTv311)
    c.connect()  # with a client connected
    code = broker.terminate(sig, timeout=5.0)
    assert code is not None, f"broker did not exit within 5s of {sig.name}\n{broker.log_tail()}"
    assert code == 0, f"broker exited with code {code} on {sig.name}\n{broker.log_tail()}"
    assert c.disconnected.wait(5), "client connection was not closed when the broker stopped"
