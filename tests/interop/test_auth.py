"""Authentication and ACL with third-party clients: a password file made by
the real `mosquitto_passwd -b`, an ACL in Mosquitto's syntax, paho-mqtt 2.x
(`username_pw_set`) for 3.1.1 and 5 with the reason codes, and
mosquitto_pub / mosquitto_sub with `-u` / `-P`.

The broker runs with a config file (see Broker._configure_auth), so the same
tests check Mosquitto itself: TERN_INTEROP_BROKER='mosquitto -p {port}'.
"""

from __future__ import annotations

import shutil
import subprocess

import paho.mqtt.client as mqtt
import pytest

from interop_support import TIMEOUT, Client, unique

pytestmark = pytest.mark.skipif(
    not (shutil.which("mosquitto_passwd") and shutil.which("mosquitto_pub") and shutil.which("mosquitto_sub")),
    reason="mosquitto_passwd / mosquitto_pub / mosquitto_sub not installed",
)

SUCCESS = 0x00
REFUSED_CREDENTIALS = 0x86  # 3.1.1 return code 4, as paho reports it
NOT_AUTHORIZED = 0x87  # 3.1.1 return code 5

# Where Mosquitto 2.0 differs from Tern (and from what MQTT suggests), so the
# suite passes against both: Mosquitto answers a wrong password with "not
# authorized" (0x87 / 5) rather than "bad user name or password" (0x86 / 4),
# and its acl_file does not check SUBSCRIBE (it only filters deliveries).


def bad_credentials(broker) -> int:
    return NOT_AUTHORIZED if broker.is_mosquitto else REFUSED_CREDENTIALS
SUBACK_FAILURE = {mqtt.MQTTv311: 0x80, mqtt.MQTTv5: 0x87}

ACL = """\
# anonymous clients
topic read public/#

user alice
topic readwrite alice/#
topic deny alice/secret

user bob
topic write alice/inbox
topic read public/#

pattern readwrite devices/%c/#
pattern read users/%u/#
"""

USERS = {"alice": "wonder land", "bob": "b0b!"}


@pytest.fixture
def auth_broker(start_broker, tmp_path):
    passwd = tmp_path / "passwd"
    first = True
    for user, password in USERS.items():
        argv = ["mosquitto_passwd"] + (["-c"] if first else []) + ["-b", str(passwd), user, password]
        subprocess.run(argv, check=True, timeout=TIMEOUT)
        first = False
    acl = tmp_path / "acl"
    acl.write_text(ACL)
    return start_broker({"password_file": passwd, "acl_file": acl, "allow_anonymous": True})


@pytest.fixture
def clients():
    made: list[Client] = []

    def factory(broker, version, user=None, password=None, **kwargs) -> Client:
        c = Client(broker, version, username=user, password=password, **kwargs)
        made.append(c)
        return c

    yield factory
    for c in made:
        c.close()


def test_passwords(auth_broker, clients, version):
    assert clients(auth_broker, version, "alice", USERS["alice"]).connect_reason() == SUCCESS
    assert clients(auth_broker, version, "bob", USERS["bob"]).connect_reason() == SUCCESS
    bad = bad_credentials(auth_broker)
    assert clients(auth_broker, version, "alice", "wrong").connect_reason() == bad
    assert clients(auth_broker, version, "nobody", "x").connect_reason() == bad


def test_anonymous_refused_without_allow(start_broker, clients, version, tmp_path):
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwd), "alice", "pw"], check=True, timeout=TIMEOUT)
    b = start_broker({"password_file": passwd, "allow_anonymous": False})
    assert clients(b, version).connect_reason() == NOT_AUTHORIZED
    assert clients(b, version, "alice", "pw").connect_reason() == SUCCESS


# (user, client id, topic, may write, may read)
MATRIX = [
    (None, None, "public/news", False, True),
    (None, None, "alice/x", False, False),
    ("alice", None, "alice/x", True, True),
    ("alice", None, "alice/secret", False, False),
    ("alice", None, "public/news", False, False),
    ("bob", None, "alice/inbox", True, False),
    ("bob", None, "public/news", False, True),
    ("bob", "dev-7", "devices/dev-7/temp", True, True),
    ("bob", "dev-7", "devices/dev-8/temp", False, False),
    ("bob", None, "users/bob/mail", False, True),
    ("bob", None, "users/alice/mail", False, False),
]


@pytest.mark.parametrize("user,client_id,topic,write,read", MATRIX)
def test_acl_matrix(auth_broker, clients, version, user, client_id, topic, write, read):
    # That a refused 3.1.1 PUBLISH is dropped, not delivered, is checked in
    # test_denied_publish_is_not_delivered_and_deny_filters.
    password = USERS.get(user) if user else None
    c = clients(auth_broker, version, user, password, client_id=client_id or unique("m"))
    assert c.connect_reason() == SUCCESS
    reason = c.publish_reason(f"{topic}", b"m", qos=1)
    if write:
        assert reason in (SUCCESS, 0x10), reason  # 0x10: no matching subscribers (MQTT 5)
    elif version == mqtt.MQTTv5:
        assert reason == NOT_AUTHORIZED
    else:
        assert reason == SUCCESS  # 3.1.1 cannot refuse a PUBLISH; it is dropped
    codes = c.subscribe_reasons(topic, qos=0)
    refused = not read and not auth_broker.is_mosquitto
    assert codes == ([SUBACK_FAILURE[version]] if refused else [SUCCESS]), codes


def test_denied_publish_is_not_delivered_and_deny_filters(auth_broker, clients, version):
    alice = clients(auth_broker, version, "alice", USERS["alice"])
    alice.connect()
    assert alice.subscribe_reasons("alice/#", qos=1) == [1]
    anon = clients(auth_broker, version)
    anon.connect()
    anon.publish_reason("alice/x", b"from anonymous", qos=1)
    bob = clients(auth_broker, version, "bob", USERS["bob"])
    bob.connect()
    bob.publish("alice/inbox", b"from bob", qos=1)
    alice.publish("alice/secret", b"denied to read", qos=1)
    alice.publish("alice/x", b"last", qos=1)
    got = alice.get_until("alice/x")
    assert [(m.topic, m.payload) for m in got] == [("alice/inbox", b"from bob"), ("alice/x", b"last")]


def _mosquitto(tool: str, broker, version: str, *args: str):
    return subprocess.run(
        [tool, "-h", broker.host, "-p", str(broker.port), "-V", version, *args],
        capture_output=True, text=True, timeout=TIMEOUT * 2,
    )


@pytest.mark.parametrize("cli_version", ["mqttv311", "mqttv5"])
def test_mosquitto_clients_with_credentials(auth_broker, cli_version):
    alice = ["-u", "alice", "-P", USERS["alice"]]
    line_buffered = ["stdbuf", "-oL"] if shutil.which("stdbuf") else []
    sub = subprocess.Popen(
        [*line_buffered, "mosquitto_sub", "-h", auth_broker.host, "-p", str(auth_broker.port), "-V", cli_version,
         *alice, "-t", "alice/#", "-C", "1", "-W", "10", "-q", "1", "-d"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    # Event-driven: publish only once mosquitto_sub reports its SUBACK.
    for line in sub.stdout:
        if "SUBACK" in line:
            break
    pub = _mosquitto("mosquitto_pub", auth_broker, cli_version, *alice, "-t", "alice/cli", "-m", "hello", "-q", "1")
    assert pub.returncode == 0, pub.stderr
    out, err = sub.communicate(timeout=TIMEOUT * 2)
    assert sub.returncode == 0, err
    assert "hello" in out.splitlines(), out
    bad = _mosquitto("mosquitto_pub", auth_broker, cli_version, "-u", "alice", "-P", "nope", "-t", "alice/x", "-m", "x")
    assert bad.returncode != 0
    assert "not authori" in bad.stderr.lower() or "bad user name or password" in bad.stderr.lower(), bad.stderr


def test_will_topic_must_be_writable(auth_broker, clients, version):
    """A will on a topic the client may not write: Tern refuses the CONNECT
    (0x87 / 5); Mosquitto 2.0 accepts it and drops the will when due."""
    watcher = clients(auth_broker, version)
    watcher.connect()
    watcher.subscribe("public/#")
    will = {"topic": "public/news", "payload": b"gone"}
    c = clients(auth_broker, version, "alice", USERS["alice"], will=will)
    if auth_broker.is_mosquitto:
        assert c.connect_reason() == SUCCESS
        c.abort()
        assert watcher.drain() == []
    else:
        assert c.connect_reason() == NOT_AUTHORIZED
    will = {"topic": "alice/status", "payload": b"gone"}
    c = clients(auth_broker, version, "alice", USERS["alice"], will=will)
    assert c.connect_reason() == SUCCESS
