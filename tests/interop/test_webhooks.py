"""Webhooks to a real HTTP server started here (Python's http.server), with
the clients people use: a paho-mqtt client's connection and session, a
mosquitto_pub message on a watched topic and one on another; a server that
fails first (retried) and one that hangs (mosquitto_pub's QoS 1 messages
are acknowledged all the same)."""

from __future__ import annotations

import json
import queue
import shutil
import socket
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import paho.mqtt.client as mqtt
import pytest

from interop_support import HOST, Client, tern, unique

V5 = mqtt.MQTTv5


class Endpoint:
    """An HTTP server on a free port: answers each POST with the next of
    `answers` (then 200) and queues the JSON bodies."""

    def __init__(self, answers: list[int] = ()):
        self.events: queue.Queue = queue.Queue()
        self.answers = list(answers)
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                endpoint.events.put((self.path, self.headers["Content-Type"], json.loads(body)))
                status = endpoint.answers.pop(0) if endpoint.answers else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer((HOST, 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def next(self, timeout: float = 10.0) -> dict:
        path, content_type, event = self.events.get(timeout=timeout)
        assert path == "/hook" and content_type == "application/json"
        return event

    def until(self, event: str, clientid: str, timeout: float = 10.0) -> dict:
        """The next event of this kind and client (others of other clients
        may come between)."""
        while True:
            e = self.next(timeout)
            if e["event"] == event and e.get("clientid") == clientid:
                return e

    def close(self):
        self.server.shutdown()


def hook_toml(port: int, extra: str = "") -> str:
    return f'[[webhooks]]\nurl = "http://{HOST}:{port}/hook"\n{extra}\n'


def test_a_paho_client_and_mosquitto_pub_are_told_to_the_endpoint(tmp_path):
    if not shutil.which("mosquitto_pub"):
        pytest.skip("mosquitto_pub is not installed (apt-get install mosquitto-clients)")
    endpoint = Endpoint()
    broker = tern(tmp_path, "broker", hook_toml(endpoint.port, 'topics = ["sensors/#"]'))
    try:
        cid = unique("hooked")
        paho = Client(broker, V5, client_id=cid, session_expiry=60)
        paho.connect()
        assert endpoint.until("session.created", cid)["clientid"] == cid
        connected = endpoint.until("client.connected", cid)
        assert connected["protocol"] == "5" and connected["peer"].startswith(HOST)
        paho.subscribe("sensors/#", qos=1)

        for topic, payload in (("other/x", "not told"), ("sensors/room1/temp", "22.5")):
            subprocess.run(["mosquitto_pub", "-h", HOST, "-p", str(broker.port), "-i", "mq-pub",
                            "-t", topic, "-m", payload, "-q", "1", "-r"], check=True, timeout=10)
        published = endpoint.until("message.published", "mq-pub")
        assert (published["topic"], published["payload"], published["qos"], published["retain"]) == \
            ("sensors/room1/temp", "22.5", 1, True)
        assert paho.get().payload == b"22.5"

        paho.disconnect()
        assert endpoint.until("client.disconnected", cid)["reason"] == "normal"
        # The session outlives the connection (expiry 60 s): not ended.
        paho = Client(broker, V5, client_id=cid, clean=True)
        paho.connect()
        assert endpoint.until("session.ended", cid)["reason"] == "clean_start"
        paho.disconnect()
    finally:
        broker.cleanup()
        endpoint.close()


def test_a_failing_endpoint_gets_the_event_again(tmp_path):
    endpoint = Endpoint(answers=[500])
    broker = tern(tmp_path, "broker", hook_toml(endpoint.port, 'events = ["client.connected"]'))
    try:
        cid = unique("retry")
        c = Client(broker, V5, client_id=cid)
        c.connect()
        first, second = endpoint.next(), endpoint.next()
        assert first == second and first["clientid"] == cid
        c.disconnect()
    finally:
        broker.cleanup()
        endpoint.close()


def test_an_endpoint_that_hangs_does_not_hold_up_mosquitto_pub(tmp_path):
    if not shutil.which("mosquitto_pub"):
        pytest.skip("mosquitto_pub is not installed (apt-get install mosquitto-clients)")
    hanging = socket.create_server((HOST, 0))
    held = []
    threading.Thread(target=lambda: held.extend(iter(lambda: hanging.accept()[0], None)), daemon=True).start()
    broker = tern(tmp_path, "broker", hook_toml(hanging.getsockname()[1],
                                                'events = ["message.published"]\nqueue_size = 10\ntimeout_ms = 60000'))
    try:
        # 500 QoS 1 messages (-l: one per line), all acknowledged before it exits.
        lines = "".join(f"{i}\n" for i in range(500))
        run = subprocess.run(["mosquitto_pub", "-h", HOST, "-p", str(broker.port), "-t", "hang/t",
                              "-q", "1", "-l"], input=lines, text=True, timeout=60, capture_output=True)
        assert run.returncode == 0, run.stderr
    finally:
        broker.cleanup()
        hanging.close()
