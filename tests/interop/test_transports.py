"""Listeners other than plain TCP, with real clients: TLS (mosquitto_pub and
mosquitto_sub with --cafile, paho-mqtt), TLS with client certificates
(paho-mqtt), and WebSocket (paho-mqtt, and MQTT.js run by node). Also Tern's
own tools over TLS, against Tern and against a real Mosquitto.

Each test starts `tern serve --config FILE` with a generated configuration
and certificates made by trustme. These options are Tern's, so the module is
skipped when TERN_INTEROP_BROKER names another broker.
"""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import paho.mqtt.client as mqtt
import pytest
import trustme
from paho.mqtt.enums import CallbackAPIVersion

from interop_support import HOST, REPO_ROOT, TIMEOUT, Broker, Certs, Client, free_port, tern_exe, unique
from tools_support import SUBACK_RE, TERN, Proc, assert_ok, describe_run, run

NODE_DIR = Path(__file__).resolve().parent / "node"


class TransportBroker(Broker):
    """`tern serve --config` with the given listeners, each on a free port.

    `listeners` are dicts of listener keys without `bind`; `self.ports[i]`
    is the port of listener i (`self.port` is the first, which wait_ready
    polls with a TCP connect)."""

    def __init__(self, tmp_path: Path, listeners: list[dict], settings: dict | None = None):
        super().__init__("{port}", tmp_path / "broker.log")
        self.ports = [self.port] + [free_port() for _ in listeners[1:]]
        top = {"persistence": "false", "sys_interval_secs": "0", **(settings or {})}
        lines = [f"{key} = {value}" for key, value in top.items()]
        for port, listener in zip(self.ports, listeners):
            lines += ["", "[[listeners]]", f'bind = "{HOST}:{port}"']
            for key, value in listener.items():
                rendered = str(value).lower() if isinstance(value, bool) else f'"{value}"'
                lines.append(f"{key} = {rendered}")
        config = tmp_path / "tern.toml"
        config.write_text("\n".join(lines) + "\n")
        self.argv = [tern_exe(), "serve", "--config", str(config), "--data-dir", self.data_dir]

    def endpoint(self, index: int) -> SimpleNamespace:
        """What interop_support.Client needs of a broker, for listener `index`."""
        return SimpleNamespace(host=HOST, port=self.ports[index])


@pytest.fixture
def certs(tmp_path) -> Certs:
    return Certs(tmp_path)


@pytest.fixture
def start_broker(request, tmp_path):
    """start_broker(listeners) -> a running TransportBroker, stopped at teardown."""
    started: list[TransportBroker] = []

    def start(listeners: list[dict], settings: dict | None = None) -> TransportBroker:
        b = TransportBroker(tmp_path, listeners, settings)
        request.node._interop_broker = b  # its log is shown when the test fails
        started.append(b)
        b.start()
        return b

    yield start
    for b in started:
        b.cleanup()


def tls_listener(certs: Certs, **extra) -> dict:
    return {"transport": "tls", "cert_file": certs.server_cert, "key_file": certs.server_key, **extra}


def paho_round_trip(sub: Client, pub: Client) -> None:
    topic = f"interop/{unique('tr')}"
    sub.subscribe(topic, qos=1)
    pub.publish(topic, b"across the listener", qos=1)
    msg = sub.get()
    assert (msg.topic, msg.payload) == (topic, b"across the listener")


# --------------------------------------------------------------------------
# TLS
# --------------------------------------------------------------------------


@pytest.mark.skipif(
    not (shutil.which("mosquitto_pub") and shutil.which("mosquitto_sub")),
    reason="mosquitto_pub/mosquitto_sub not installed (apt-get install mosquitto-clients)",
)
def test_mosquitto_clients_over_tls(start_broker, certs):
    broker = start_broker([tls_listener(certs)])
    topic = f"interop/{unique('tls')}"
    common = ["-h", HOST, "-p", str(broker.port), "--cafile", certs.ca, "-V", "mqttv5", "-q", "1"]
    argv = ["stdbuf", "-oL"] if shutil.which("stdbuf") else []
    sub = subprocess.Popen(
        argv + ["mosquitto_sub", *common, "-t", topic, "-C", "1", "-W", "10", "-d"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
    )
    try:
        output = []
        for line in sub.stdout:  # ends when mosquitto_sub exits (-W bounds it)
            output.append(line)
            if "received SUBACK" in line:
                break
        else:
            pytest.fail(f"mosquitto_sub got no SUBACK over TLS: {output} {sub.stderr.read()}")
        pub = subprocess.run(
            ["mosquitto_pub", *common, "-t", topic, "-m", "hello over tls"],
            capture_output=True, text=True, timeout=TIMEOUT * 2,
        )
        assert pub.returncode == 0, pub.stderr
        rest, err = sub.communicate(timeout=TIMEOUT * 2)
        assert sub.returncode == 0, f"mosquitto_sub exited {sub.returncode}: {err}"
        assert "hello over tls" in rest.splitlines(), rest
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait()


@pytest.mark.parametrize("version", [mqtt.MQTTv311, mqtt.MQTTv5], ids=["v311", "v5"])
def test_paho_over_tls(start_broker, certs, version):
    broker = start_broker([tls_listener(certs)])
    clients = [Client(broker.endpoint(0), version) for _ in range(2)]
    try:
        for c in clients:
            c.c.tls_set(ca_certs=certs.ca)
            c.connect()
        paho_round_trip(*clients)
    finally:
        for c in clients:
            c.close()


def test_paho_over_tls_while_connections_park(start_broker, certs):
    """Idle TLS connections park after 20 ms: paho's pings, a delivery and a
    publish each wake one with its TLS session intact, again and again."""
    broker = start_broker([tls_listener(certs)], {"park_idle_ms": 20, "sys_interval_secs": 1})
    # The subscriber pings each second: each PINGREQ wakes its parked connection.
    sub = Client(broker.endpoint(0), mqtt.MQTTv5, keepalive=1)
    pub, watcher = (Client(broker.endpoint(0), mqtt.MQTTv5) for _ in range(2))
    try:
        for c in (sub, pub, watcher):
            c.c.tls_set(ca_certs=certs.ca)
        for c in (sub, pub, watcher):
            c.connect()
        watcher.subscribe("$SYS/broker/clients/parked", qos=0)
        # All three parked at once: $SYS is published by the broker, and its
        # delivery wakes the watcher only after it was counted.
        deadline = TIMEOUT * 3
        while True:
            msg = watcher.get(timeout=deadline)
            if msg.payload == b"3":
                break
        topic = f"interop/{unique('park')}"
        sub.subscribe(topic, qos=1)
        for i in range(5):
            time.sleep(1.2)  # parked again, with a ping or two in between
            pub.publish(topic, f"after a sleep {i}".encode(), qos=1)
            msg = sub.get()
            assert msg.payload == f"after a sleep {i}".encode()
    finally:
        for c in (sub, pub, watcher):
            c.close()


def paho_tls_outcome(broker, certs: Certs, with_cert: bool) -> str:
    """Connects paho over TLS, with or without the client certificate, and
    reports what happened first: "connack", "refused: ..." (the TLS
    handshake failed) or "closed" (the broker closed before CONNACK)."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=unique("mtls"), protocol=mqtt.MQTTv5)
    if with_cert:
        c.tls_set(ca_certs=certs.ca, certfile=certs.client_cert, keyfile=certs.client_key)
    else:
        c.tls_set(ca_certs=certs.ca)
    outcome: queue.Queue[str] = queue.Queue()
    c.on_connect = lambda *args: outcome.put("connack")
    c.on_disconnect = lambda *args: outcome.put("closed")
    try:
        c.connect(HOST, broker.port)
    except OSError as e:  # ssl.SSLError is an OSError
        return f"refused: {e}"
    c.loop_start()
    try:
        return outcome.get(timeout=TIMEOUT)
    finally:
        c.disconnect()
        c.loop_stop()


def test_paho_mtls_accepts_client_certificate_and_refuses_none(start_broker, certs):
    broker = start_broker([
        tls_listener(certs, ca_file=certs.ca, require_certificate=True, use_identity_as_username=True)
    ])
    assert paho_tls_outcome(broker, certs, with_cert=True) == "connack"
    outcome = paho_tls_outcome(broker, certs, with_cert=False)
    assert outcome != "connack", "a client without certificate was accepted"


def test_paho_mtls_optional_accepts_both(start_broker, certs):
    broker = start_broker([tls_listener(certs, ca_file=certs.ca)])
    assert paho_tls_outcome(broker, certs, with_cert=True) == "connack"
    assert paho_tls_outcome(broker, certs, with_cert=False) == "connack"


# --------------------------------------------------------------------------
# tern pub / tern sub over TLS, against Tern and against Mosquitto
# --------------------------------------------------------------------------


def mosquitto_tls_broker(request, tmp_path: Path, certs: Certs, require_certificate: bool) -> Broker:
    """A real Mosquitto with one TLS listener signed by `certs`' CA."""
    exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if exe is None:
        pytest.skip("mosquitto not installed (apt-get install mosquitto)")
    b = Broker(exe + " {port}", tmp_path / "mosquitto.log")
    lines = [
        f"listener {b.port} {HOST}",
        f"cafile {certs.ca}",
        f"certfile {certs.server_cert}",
        f"keyfile {certs.server_key}",
        f"require_certificate {'true' if require_certificate else 'false'}",
        "allow_anonymous true",
    ]
    if os.geteuid() == 0:
        lines.append("user root")  # else it cannot read the test's files
    conf = tmp_path / "mosquitto.conf"
    conf.write_text("\n".join(lines) + "\n")
    b.argv = [exe, "-c", str(conf)]
    request.node._interop_broker = b
    b.start()
    request.addfinalizer(b.cleanup)
    return b


def tern_tools_round_trip(port: int, tls: list[str]) -> None:
    """tern sub and tern pub, both with the TLS flags `tls`: one QoS 1 message."""
    topic = f"interop/{unique('tls-tools')}"
    conn = ["-h", HOST, "-p", port, *tls]
    sub = Proc([TERN, "sub", *conn, "-t", topic, "-q", "1", "-C", "1", "-W", "10", "-d"], name="tern sub")
    try:
        sub.wait_stderr(SUBACK_RE)
        assert_ok(run([TERN, "pub", *conn, "-t", topic, "-q", "1", "-m", "hello over tls"]))
        assert sub.wait() == 0, sub.describe()
        assert sub.stdout_lines() == ["hello over tls"], sub.describe()
    finally:
        sub.cleanup()


@pytest.mark.parametrize("broker_kind", ["tern", "mosquitto"])
def test_tern_tools_over_tls(request, tmp_path, start_broker, certs, broker_kind):
    if broker_kind == "tern":
        port = start_broker([tls_listener(certs)]).port
    else:
        port = mosquitto_tls_broker(request, tmp_path, certs, require_certificate=False).port
    tern_tools_round_trip(port, ["--cafile", certs.ca])


@pytest.mark.parametrize("broker_kind", ["tern", "mosquitto"])
def test_tern_tools_with_a_client_certificate(request, tmp_path, start_broker, certs, broker_kind):
    if broker_kind == "tern":
        port = start_broker([tls_listener(certs, ca_file=certs.ca, require_certificate=True)]).port
    else:
        port = mosquitto_tls_broker(request, tmp_path, certs, require_certificate=True).port
    tern_tools_round_trip(port, ["--cafile", certs.ca, "--cert", certs.client_cert, "--key", certs.client_key])
    # Without the certificate the broker refuses it: a failure, not a hang.
    cp = run([TERN, "pub", "-h", HOST, "-p", port, "--cafile", certs.ca, "-t", "t", "-m", "x"])
    assert cp.returncode not in (0, None), describe_run(cp)


def test_tern_tools_refuse_a_broker_signed_by_another_ca(start_broker, certs, tmp_path):
    broker = start_broker([tls_listener(certs)])
    other = tmp_path / "other-ca.pem"
    other.write_bytes(trustme.CA().cert_pem.bytes())
    cp = run([TERN, "pub", "-h", HOST, "-p", broker.port, "--cafile", other, "-t", "t", "-m", "x"])
    assert cp.returncode == 3, describe_run(cp)
    assert b"TLS handshake" in cp.stderr and b"--cafile" in cp.stderr, describe_run(cp)


# --------------------------------------------------------------------------
# WebSocket
# --------------------------------------------------------------------------


def ws_client(endpoint, version: int, path: str = "/mqtt", ca: str | None = None) -> Client:
    c = Client(endpoint, version, transport="websockets")
    c.c.ws_set_options(path=path)
    if ca:
        c.c.tls_set(ca_certs=ca)
    return c


@pytest.mark.parametrize("version", [mqtt.MQTTv311, mqtt.MQTTv5], ids=["v311", "v5"])
def test_paho_websockets_next_to_tcp(start_broker, version):
    broker = start_broker([{"transport": "ws"}, {"transport": "tcp"}])
    ws = ws_client(broker.endpoint(0), version)
    tcp = Client(broker.endpoint(1), version)
    try:
        ws.connect()
        tcp.connect()
        paho_round_trip(ws, tcp)
        paho_round_trip(tcp, ws)
    finally:
        ws.close()
        tcp.close()


def test_paho_websockets_over_tls(start_broker, certs):
    broker = start_broker([tls_listener(certs, transport="wss", ws_path="/ws")])
    clients = [ws_client(broker.endpoint(0), mqtt.MQTTv5, path="/ws", ca=certs.ca) for _ in range(2)]
    try:
        for c in clients:
            c.connect()
        paho_round_trip(*clients)
    finally:
        for c in clients:
            c.close()


def test_mqttjs_over_websockets(start_broker):
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (CI installs it: apt-get install nodejs npm)")
    if not (NODE_DIR / "node_modules" / "mqtt").exists():
        pytest.fail(f"MQTT.js is not installed: run `npm ci --prefix {NODE_DIR.relative_to(REPO_ROOT)}`")
    broker = start_broker([{"transport": "ws"}])
    for protocol_version in ("4", "5"):
        run = subprocess.run(
            [node, str(NODE_DIR / "ws_roundtrip.js"), f"ws://{HOST}:{broker.port}/mqtt", protocol_version],
            capture_output=True, text=True, timeout=30,
        )
        assert run.returncode == 0, f"MQTT.js (MQTT {protocol_version}): {run.stdout}{run.stderr}"
