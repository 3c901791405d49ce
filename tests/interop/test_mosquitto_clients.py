"""Interop tests using the Eclipse Mosquitto command-line clients
(Debian package `mosquitto-clients`: mosquitto_pub / mosquitto_sub)."""

from __future__ import annotations

import shutil
import subprocess

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

import interop_support
from interop_support import TIMEOUT

pytestmark = pytest.mark.skipif(
    not (shutil.which("mosquitto_pub") and shutil.which("mosquitto_sub")),
    reason="mosquitto_pub/mosquitto_sub not installed (apt-get install mosquitto-clients)",
)

CLI_VERSIONS = {"v311": "mqttv311", "v5": "mqttv5"}
PAHO_VERSIONS = {"mqttv311": mqtt.MQTTv311, "mqttv5": mqtt.MQTTv5}
# mosquitto_sub output: one line per message, payload last.
FORMAT = "MSG|%t|%q|%r|%C|%R|%P|%p"
SUB_TIMEOUT_S = 10  # mosquitto_sub -W: give up after this many seconds


@pytest.fixture(params=list(CLI_VERSIONS.values()), ids=list(CLI_VERSIONS))
def cli_version(request):
    return request.param


class Received:
    def __init__(self, line: str):
        _, self.topic, qos, retain, self.content_type, self.response_topic, self.user_props, self.payload = (
            line.split("|", 7)
        )
        self.qos = int(qos)
        self.retain = retain == "1"


class MosquittoSub(interop_support.MosquittoSub):
    """mosquitto_sub taking `count` messages, each printed in FORMAT."""

    def __init__(self, broker, version: str, topics: list[str], count: int, qos: int = 1, extra=()):
        super().__init__(broker.host, broker.port, version, topics, fmt=FORMAT,
                         timeout_s=SUB_TIMEOUT_S, qos=qos, count=count, extra=extra)

    def finish(self) -> list[Received]:
        """Wait for mosquitto_sub to exit (after -C messages) and return the messages."""
        try:
            rc = self.proc.wait(timeout=SUB_TIMEOUT_S + 5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        # let the reader thread drain stdout
        while self.lines.get(timeout=TIMEOUT) is not None:
            pass
        msgs = [Received(line) for line in self.output if line.startswith("MSG|")]
        assert rc == 0, (
            f"mosquitto_sub exited {rc} (timeout -W {SUB_TIMEOUT_S}s?) after {len(msgs)} messages; "
            f"stderr: {self.stderr()!r}; output: {self.output}"
        )
        return msgs


@pytest.fixture
def mosquitto_sub(broker):
    subs: list[MosquittoSub] = []

    def start(*args, **kwargs) -> MosquittoSub:
        s = MosquittoSub(broker, *args, **kwargs)
        subs.append(s)
        return s

    yield start
    for s in subs:
        s.kill()


def mosquitto_pub(broker, version: str, topic: str, *args: str, stdin: str | None = None):
    argv = ["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), "-V", version, "-t", topic, *args]
    r = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=TIMEOUT * 2)
    assert r.returncode == 0, f"{argv} exited {r.returncode}: {r.stderr!r}"
    return r


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_mosquitto_pub_to_mosquitto_sub(broker, mosquitto_sub, cli_version, topic_base, qos):
    sub = mosquitto_sub(cli_version, [f"{topic_base}/cli/#"], count=3, qos=2)
    sub.wait_subscribed()
    mosquitto_pub(broker, cli_version, f"{topic_base}/cli/a", "-q", str(qos), "-m", "one")
    mosquitto_pub(broker, cli_version, f"{topic_base}/cli/b/c", "-q", str(qos), "-m", "two words")
    mosquitto_pub(broker, cli_version, f"{topic_base}/cli", "-q", str(qos), "-m", "three")
    msgs = sub.finish()
    assert [(m.topic, m.payload) for m in msgs] == [
        (f"{topic_base}/cli/a", "one"),
        (f"{topic_base}/cli/b/c", "two words"),
        (f"{topic_base}/cli", "three"),
    ]
    assert all(m.qos == qos and not m.retain for m in msgs)


def test_mosquitto_pub_lines_in_order(broker, mosquitto_sub, cli_version, topic_base):
    """mosquitto_pub -l sends one message per stdin line over one connection."""
    n = 20
    sub = mosquitto_sub(cli_version, [f"{topic_base}/lines"], count=n, qos=1)
    sub.wait_subscribed()
    lines = "".join(f"line {i}\n" for i in range(n))
    mosquitto_pub(broker, cli_version, f"{topic_base}/lines", "-q", "1", "-l", stdin=lines)
    msgs = sub.finish()
    assert [m.payload for m in msgs] == [f"line {i}" for i in range(n)]


def test_mosquitto_retained(broker, mosquitto_sub, cli_version, topic_base):
    t = f"{topic_base}/retained"
    mosquitto_pub(broker, cli_version, t, "-q", "1", "-r", "-m", "kept")
    sub = mosquitto_sub(cli_version, [t], count=1)
    msgs = sub.finish()
    assert [(m.payload, m.retain) for m in msgs] == [("kept", True)]

    # an empty retained payload (-n) clears it: a fresh subscriber sees only the new one
    mosquitto_pub(broker, cli_version, t, "-q", "1", "-r", "-n")
    mosquitto_pub(broker, cli_version, f"{t}/other", "-q", "1", "-r", "-m", "other")
    sub = mosquitto_sub(cli_version, [t, f"{t}/other"], count=1)
    msgs = sub.finish()
    assert [(m.topic, m.payload) for m in msgs] == [(f"{t}/other", "other")]


def test_mosquitto_v5_properties_to_paho(broker, make_client, topic_base):
    """mosquitto_pub -D publish ... properties reach a paho MQTT 5 subscriber."""
    t = f"{topic_base}/props"
    sub = make_client(mqtt.MQTTv5)
    sub.connect()
    sub.subscribe(t, 1)
    mosquitto_pub(
        broker, "mqttv5", t, "-q", "1", "-m", "payload",
        "-D", "publish", "user-property", "k1", "v1",
        "-D", "publish", "user-property", "k2", "v2",
        "-D", "publish", "content-type", "text/plain",
        "-D", "publish", "response-topic", f"{t}/reply",
        "-D", "publish", "correlation-data", "corr-123",
    )
    msg = sub.get()
    assert msg.payload == b"payload"
    assert msg.properties.UserProperty == [("k1", "v1"), ("k2", "v2")]
    assert msg.properties.ContentType == "text/plain"
    assert msg.properties.ResponseTopic == f"{t}/reply"
    assert msg.properties.CorrelationData == b"corr-123"


def test_paho_v5_properties_to_mosquitto_sub(broker, make_client, mosquitto_sub, topic_base):
    t = f"{topic_base}/props"
    sub = mosquitto_sub("mqttv5", [t], count=1)
    sub.wait_subscribed()
    pub = make_client(mqtt.MQTTv5)
    pub.connect()
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = [("k1", "v1")]
    props.ContentType = "application/json"
    props.ResponseTopic = f"{t}/reply"
    pub.publish(t, b'{"x":1}', qos=1, properties=props)
    (msg,) = sub.finish()
    assert msg.payload == '{"x":1}'
    assert msg.content_type == "application/json"
    assert msg.response_topic == f"{t}/reply"
    assert msg.user_props == "k1:v1"


@pytest.mark.parametrize("direction", ["cli-to-paho", "paho-to-cli"])
def test_mosquitto_clients_and_paho_interoperate(broker, make_client, mosquitto_sub, cli_version, topic_base, direction):
    t = f"{topic_base}/mixed"
    paho_version = PAHO_VERSIONS[cli_version]
    if direction == "cli-to-paho":
        sub = make_client(paho_version)
        sub.connect()
        sub.subscribe(t, 2)
        mosquitto_pub(broker, cli_version, t, "-q", "2", "-m", "from-cli")
        msg = sub.get()
        assert (msg.payload, msg.qos) == (b"from-cli", 2)
    else:
        sub = mosquitto_sub(cli_version, [t], count=1, qos=2)
        sub.wait_subscribed()
        pub = make_client(paho_version)
        pub.connect()
        pub.publish(t, b"from-paho", qos=2)
        (msg,) = sub.finish()
        assert (msg.payload, msg.qos) == ("from-paho", 2)
