"""JSON Web Tokens as passwords with the clients people use: paho-mqtt and
mosquitto_pub log in with an HS256 token made here (hmac, as any issuer
makes one), its `acl` claim limiting where they may publish; an expired
token and a forged one are refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import shutil
import subprocess
import time

import paho.mqtt.client as mqtt
import pytest

from interop_support import HOST, Client, tern

SECRET = "an-interop-secret-of-some-length"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token(claims: dict, secret: str = SECRET) -> str:
    head = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64url(json.dumps(claims).encode())
    sig = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64url(sig)}"


@pytest.fixture
def broker(tmp_path):
    b = tern(tmp_path, "broker", f'allow_anonymous = false\n[auth_jwt]\nsecret = "{SECRET}"\n')
    yield b
    b.cleanup()


def test_paho_logs_in_with_a_token_and_its_acl_claim(broker):
    claims = {"exp": int(time.time()) + 60, "acl": {"pub": ["sensors/${clientid}/#"], "sub": ["commands/#"]}}
    c = Client(broker, mqtt.MQTTv5, client_id="dev-1", username="dev-1", password=token(claims))
    c.connect()
    assert c.publish_reason("sensors/dev-1/temp", b"21", qos=1) < 0x80
    assert c.publish_reason("sensors/dev-2/temp", b"21", qos=1) == 0x87
    c.disconnect()
    for bad in (token({"exp": int(time.time()) - 30}), token({}, secret="another-secret-of-some-length")):
        refused = Client(broker, mqtt.MQTTv5, username="dev-1", password=bad)
        assert refused.connect_reason() == 0x86


def test_mosquitto_pub_logs_in_with_a_token(broker):
    if not shutil.which("mosquitto_pub"):
        pytest.skip("mosquitto_pub is not installed (apt-get install mosquitto-clients)")
    good = token({"exp": int(time.time()) + 60})
    run = subprocess.run(["mosquitto_pub", "-h", HOST, "-p", str(broker.port), "-u", "device", "-P", good,
                          "-t", "t", "-m", "1", "-q", "1"], capture_output=True, text=True, timeout=10)
    assert run.returncode == 0, run.stderr
    run = subprocess.run(["mosquitto_pub", "-h", HOST, "-p", str(broker.port), "-u", "device", "-P", "not-a-token",
                          "-t", "t", "-m", "1"], capture_output=True, text=True, timeout=10)
    assert run.returncode != 0
