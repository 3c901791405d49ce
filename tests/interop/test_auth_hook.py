"""The authentication hook with a real HTTP server started here (Python's
http.server) and the clients people use: paho-mqtt and mosquitto_pub log in
through it; the server allows with topic rules, denies, answers garbage,
fails and hangs (each refused within the timeout: fail-closed)."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import paho.mqtt.client as mqtt
import pytest

from interop_support import HOST, Client, tern

V5 = mqtt.MQTTv5


class Hook:
    """Answers by username: alice/right allowed to publish sensors/# only,
    garbage (not JSON), broken (500), hang (no answer), anyone else denied."""

    def __init__(self):
        self.asked: list[dict] = []

        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                login = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                hook.asked.append(login)
                user = login.get("username")
                if user == "alice" and login.get("password") == "right":
                    body = json.dumps({"result": "allow", "acl": [
                        {"permission": "allow", "action": "publish", "topic": "sensors/#"}]}).encode()
                    status = 200
                elif user == "garbage":
                    status, body = 200, b"<html>it works</html>"
                elif user == "broken":
                    status, body = 500, b""
                elif user == "hang":
                    time.sleep(10)
                    status, body = 200, b""
                else:
                    status, body = 200, json.dumps({"result": "deny"}).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer((HOST, 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def hooked(tmp_path):
    hook = Hook()
    broker = tern(tmp_path, "broker",
                  f'allow_anonymous = false\n[auth_hook]\nurl = "http://{HOST}:{hook.port}/auth"\ntimeout_ms = 500\n')
    yield hook, broker
    broker.cleanup()
    hook.server.shutdown()


def test_paho_logs_in_through_the_hook_and_gets_its_rules(hooked):
    hook, broker = hooked
    alice = Client(broker, V5, username="alice", password="right")
    alice.connect()
    assert hook.asked[-1]["clientid"] == alice.client_id and hook.asked[-1]["protocol"] == "5"
    assert alice.publish_reason("sensors/t", b"1", qos=1) < 0x80
    assert alice.publish_reason("other/t", b"1", qos=1) == 0x87  # Not authorized
    alice.disconnect()
    wrong = Client(broker, V5, username="alice", password="wrong")
    assert wrong.connect_reason() == 0x86  # Bad user name or password


@pytest.mark.parametrize("user", ["garbage", "broken", "hang"])
def test_a_hook_that_fails_refuses_mosquitto_pub(hooked, user):
    if not shutil.which("mosquitto_pub"):
        pytest.skip("mosquitto_pub is not installed (apt-get install mosquitto-clients)")
    _, broker = hooked
    started = time.monotonic()
    run = subprocess.run(["mosquitto_pub", "-h", HOST, "-p", str(broker.port), "-V", "mqttv5",
                          "-u", user, "-P", "x", "-t", "sensors/t", "-m", "1"],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode != 0
    assert "Server unavailable" in run.stderr or "unavailable" in run.stderr.lower(), run.stderr
    assert time.monotonic() - started < 5, "the timeout (500 ms) did not hold"
