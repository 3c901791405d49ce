"""`tern pub` and `tern sub` (the mosquitto_pub / mosquitto_sub equivalents)
run as processes against the Tern broker and against a real Mosquitto
(tests parametrized `[tern]` / `[mosquitto]`, and `[v311]` / `[v5]` where the
protocol version matters), so the client is proven on a broker we did not
write; plus mosquitto_sub receiving what tern pub sends and tern sub receiving
what mosquitto_pub sends.

Each test starts its own broker on a free loopback port. A `tern sub` is
known to be subscribed when its `-d` output shows the SUBACK; every wait has
a deadline, and every process is killed at the end of the test. Helpers and
fixtures are in tools_support.py.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import signal
import time

import pytest

from interop_support import HOST, free_port
from tools_support import (
    TERN,
    assert_clear_error,
    assert_ok,
    describe_run,
    dynsec_plugin,
    mosquitto_messages,
    run,
    unique_id,
    unique_topic,
)

# Fixtures: broker_kind, tool_version, start, tools, tools_for.
pytest_plugins = ["tools_support"]

# A payload with every byte value, NUL, CR/LF and invalid UTF-8.
BINARY = bytes(range(256)) * 3 + b"\r\n\x00\xff\xfe end"


def lines(data: bytes) -> list[str]:
    return data.decode("utf-8", "replace").splitlines()


# --------------------------------------------------------------------------
# tern pub
# --------------------------------------------------------------------------


def test_pub_message_host_port_topic(tools, tool_version):
    """-h/-p/-t/-m/-V: one message reaches a subscriber."""
    topic = unique_topic()
    sub = tools.sub("-t", topic, "-C", "1", version=tool_version)
    tools.pub("-t", topic, "-m", "hello world", version=tool_version)
    assert sub.wait() == 0, sub.describe()
    assert sub.stdout == b"hello world\n"


def test_pub_v31_without_client_id(tools):
    """-V 31 needs a client id on the wire; the tools generate one."""
    topic = unique_topic()
    sub = tools.sub("-t", topic, "-C", "1", version="31")
    tools.pub("-t", topic, "-m", "old protocol", version="31")
    assert sub.wait() == 0, sub.describe()
    assert sub.stdout == b"old protocol\n"


def test_pub_file_binary_exact_bytes(tools, tool_version, tmp_path):
    """-f sends a binary file byte for byte (checked with tern sub -N and mosquitto_sub)."""
    topic = unique_topic()
    path = tmp_path / "blob.bin"
    path.write_bytes(BINARY)
    tern_sub = tools.sub("-t", topic, "-C", "1", "-N", "-q", "1", version=tool_version)
    mosq_sub = tools.mosquitto_sub("-t", topic, "-C", "1", "-q", "1", version=tool_version)
    tools.pub("-t", topic, "-f", path, "-q", "1", version=tool_version)
    assert tern_sub.wait() == 0, tern_sub.describe()
    assert tern_sub.stdout == BINARY
    assert mosquitto_messages(mosq_sub, 1) == [BINARY.hex()]
    assert mosq_sub.wait() == 0, mosq_sub.describe()


def test_pub_unreadable_file(tools):
    cp = tools.pub("-t", unique_topic(), "-f", "/nonexistent/file.bin", check=False)
    assert_clear_error(cp, 1, "tern pub", "/nonexistent/file.bin")


def test_pub_stdin_whole(tools, tool_version):
    """-s: all of stdin, newlines included, is one message."""
    topic = unique_topic()
    data = b"line one\nline two\n\n\tlast line without newline \xc3\xa9"
    sub = tools.sub("-t", topic, "-C", "1", "-N", version=tool_version)
    tools.pub("-t", topic, "-s", input=data, version=tool_version)
    assert sub.wait() == 0, sub.describe()
    assert sub.stdout == data


def test_pub_stdin_lines_in_order(tools, tool_version):
    """-l: one message per line, in order."""
    topic = unique_topic()
    words = [f"line-{i}" for i in range(8)]
    sub = tools.sub("-t", topic, "-C", str(len(words)), "-q", "1", version=tool_version)
    tools.pub("-t", topic, "-l", "-q", "1", input=("\n".join(words) + "\n").encode(), version=tool_version)
    assert sub.wait() == 0, sub.describe()
    assert lines(sub.stdout) == words


def test_pub_null_message(tools, tool_version):
    """-n sends an empty payload; with -r it clears the retained message."""
    topic, marker = unique_topic(), unique_topic()
    sub = tools.sub("-t", topic, "-C", "1", "-F", "%l|%p|", version=tool_version)
    tools.pub("-t", topic, "-n", version=tool_version)
    assert sub.wait() == 0, sub.describe()
    assert sub.stdout == b"0||\n"

    tools.pub("-t", topic, "-m", "old", "-r", "-q", "1", version=tool_version)
    tools.pub("-t", topic, "-n", "-r", "-q", "1", version=tool_version)
    tools.pub("-t", marker, "-m", "marker", "-r", "-q", "1", version=tool_version)
    # Retained messages come per filter in SUBSCRIBE order: had `topic` still
    # held one, it would come before the marker.
    cp = tools.sub_run("-t", topic, "-t", marker, "-v", "-C", "1", "-W", "5", version=tool_version)
    assert_ok(cp)
    assert cp.stdout == f"{marker} marker\n".encode()


def test_pub_qos_levels(tools, tool_version):
    """-q 0/1/2 arrive at a QoS 2 subscription with the QoS they were sent at."""
    topic = unique_topic()
    sub = tools.sub("-t", topic, "-q", "2", "-C", "3", "-F", "%q|%p", version=tool_version)
    for qos in ("0", "1", "2"):
        tools.pub("-t", topic, "-m", f"at-{qos}", "-q", qos, version=tool_version)
    assert sub.wait() == 0, sub.describe()
    assert sorted(lines(sub.stdout)) == ["0|at-0", "1|at-1", "2|at-2"]


def test_pub_retain(tools, tool_version):
    """-r: a later subscriber gets the message with the retain flag."""
    topic = unique_topic()
    tools.pub("-t", topic, "-m", "kept", "-r", "-q", "1", version=tool_version)
    cp = tools.sub_run("-t", topic, "-q", "1", "-C", "1", "-W", "5", "-F", "%r|%q|%p", version=tool_version)
    assert_ok(cp)
    assert cp.stdout == b"1|1|kept\n"


def test_pub_client_id_credentials_keepalive(tools, tool_version):
    """-i/-u/-P/-k: the connection is accepted, and the client id is the one
    given: a second client with the same id takes the session over, which
    ends the first one with exit code 7 (connection lost)."""
    topic = unique_topic()
    cid = unique_id()
    sub = tools.sub("-t", topic, "-i", cid, version=tool_version)
    tools.pub("-t", topic, "-m", "x", "-i", cid, "-u", "someone", "-P", "secret", "-k", "7",
              version=tool_version)
    code = sub.wait()
    assert code == 7, f"expected exit code 7 after the session takeover\n{sub.describe()}"
    last = sub.stderr.splitlines()[-1]
    assert last.startswith("tern sub: connection lost") and "panick" not in sub.stderr, sub.describe()
    # Words, not a Rust debug dump such as `Server { reason: .., reason_string: Some(..) }`.
    assert not re.search(r"[{}]|Some\(|\w\(\"", last), f"not a human message: {last}"
    if tool_version == "5" and tools.broker.kind == "tern":
        # Tern sends DISCONNECT 0x8E; Mosquitto 2.0.11 just closes the socket.
        assert "taken over" in last.lower(), last
    if tools.broker.kind == "mosquitto":
        proto = "p5" if tool_version == "5" else "p2"
        log = tools.broker.log_path.read_text(errors="replace")
        assert re.search(rf"as {cid} \({proto}, c1, k7, u'someone'\)", log), log


def test_pub_will(tools, tool_version):
    """--will-*: kill -9 a tern sub started with a will; a watcher gets the
    will at the will QoS, and it is retained."""
    will_topic = unique_topic("will")
    watcher = tools.sub("-t", will_topic, "-q", "2", "-C", "1", "-F", "%q|%r|%p", version=tool_version)
    doomed = tools.sub(
        "-t", unique_topic(), "--will-topic", will_topic, "--will-payload", "gone for good",
        "--will-qos", "1", "--will-retain", version=tool_version,
    )
    doomed.kill(signal.SIGKILL)
    assert watcher.wait() == 0, watcher.describe()
    assert watcher.stdout == b"1|0|gone for good\n"
    cp = tools.sub_run("-t", will_topic, "-q", "2", "-C", "1", "-W", "5", "-F", "%q|%r|%p", version=tool_version)
    assert_ok(cp)
    assert cp.stdout == b"1|1|gone for good\n"


def test_pub_no_will_on_clean_exit(tools, tool_version):
    """A tool that exits normally sends DISCONNECT, so its will is not published."""
    will_topic, marker = unique_topic("will"), unique_topic()
    tools.pub("-t", unique_topic(), "-m", "x", "--will-topic", will_topic, "--will-payload", "w",
              "--will-retain", version=tool_version)
    tools.pub("-t", marker, "-m", "m", "-r", "-q", "1", version=tool_version)
    cp = tools.sub_run("-t", will_topic, "-t", marker, "-C", "1", "-W", "5", "-v", version=tool_version)
    assert_ok(cp)
    assert cp.stdout == f"{marker} m\n".encode()


PROPS = [
    "-D", "publish", "user-property", "site", "paris",
    "-D", "publish", "user-property", "site", "lyon",
    "-D", "publish", "message-expiry-interval", "60",
    "-D", "publish", "content-type", "text/plain",
    "-D", "publish", "response-topic", "reply/to",
    "-D", "publish", "correlation-data", "42",
    "-D", "publish", "payload-format-indicator", "1",
]


def test_pub_properties(tools):
    """-D publish ...: MQTT 5 properties arrive (tern sub --json and mosquitto_sub -F)."""
    topic = unique_topic()
    tern_sub = tools.sub("-t", topic, "-C", "1", "--json", version="5")
    mosq_sub = tools.mosquitto_sub("-t", topic, "-C", "1", version="5", fmt="MSG|%C|%R|%P|%E|%D|%F|%p")
    tools.pub("-t", topic, "-m", "22.5", *PROPS, version="5")
    assert tern_sub.wait() == 0, tern_sub.describe()
    msg = json.loads(tern_sub.stdout)
    props = msg["properties"]
    assert msg["payload"] == "22.5"
    assert props["user_properties"] == [["site", "paris"], ["site", "lyon"]]
    assert props["content_type"] == "text/plain"
    assert props["response_topic"] == "reply/to"
    assert props["correlation_data"] == "42"
    assert props["payload_format_indicator"] == 1
    assert 50 <= props["message_expiry_interval"] <= 60
    ct, rt, up, exp, corr, pfi, payload = mosquitto_messages(mosq_sub, 1)[0].split("|")
    assert (ct, rt, up, corr, pfi, payload) == ("text/plain", "reply/to", "site:paris site:lyon", "42", "1", "22.5")
    assert 50 <= int(exp) <= 60


def test_pub_properties_need_v5(tools):
    cp = tools.pub("-t", unique_topic(), "-m", "x", *PROPS[:5], version="311", check=False)
    # A command-line mistake: exit 2, as for every other (README table).
    assert_clear_error(cp, 2, "tern pub", "-V 5")


def test_pub_repeat(tools, tool_version):
    """--repeat N --repeat-delay S: N messages, S seconds apart."""
    topic = unique_topic()
    sub = tools.sub("-t", topic, "-C", "3", "-q", "1", version=tool_version)
    t0 = time.monotonic()
    tools.pub("-t", topic, "-m", "again", "-q", "1", "--repeat", "3", "--repeat-delay", "0.25",
              version=tool_version)
    elapsed = time.monotonic() - t0
    assert sub.wait() == 0, sub.describe()
    assert lines(sub.stdout) == ["again"] * 3
    assert elapsed >= 0.45, f"3 messages 0.25 s apart took only {elapsed:.2f}s"


def test_keepalive_pings(tools, tool_version):
    """-k 1: the client pings, so the broker keeps it connected past 1.5 x keep-alive."""
    topic = unique_topic()
    sub = tools.sub("-t", topic, "-k", "1", "-C", "1", version=tool_version)
    # Two PINGRESPs: it stayed connected over more than 1.5 x the keep-alive.
    sub.wait_stderr(re.compile(r"(?i)\bping_?resp"), timeout=6, count=2)
    tools.pub("-t", topic, "-m", "still here", version=tool_version)
    assert sub.wait() == 0, sub.describe()
    assert sub.stdout == b"still here\n"


@pytest.mark.parametrize("qos", ["1", "2"])
def test_pub_debug_output(tools, tool_version, qos):
    """-d prints the packets sent and received on stderr."""
    cp = tools.pub("-t", unique_topic(), "-m", "x", "-q", qos, "-d", version=tool_version)
    expected = ["connect", "conn_?ack", "publish", "disconnect"]
    expected += ["pub_?ack"] if qos == "1" else ["pub_?rec", "pub_?rel", "pub_?comp"]
    err = cp.stderr.decode("utf-8", "replace")
    for word in expected:
        assert re.search(rf"(?i)\b{word}\b", err), f"no {word} in -d output\n{describe_run(cp)}"
    assert cp.stdout == b""
    quiet = tools.pub("-t", unique_topic(), "-m", "x", "-q", qos, version=tool_version)
    assert quiet.stderr == b"", describe_run(quiet)


# --------------------------------------------------------------------------
# tern sub
# --------------------------------------------------------------------------


def test_sub_several_topics_filter_out_verbose(tools, tool_version):
    """Several -t, -T filters out, -v prints topic and payload."""
    base = unique_topic()
    sub = tools.sub("-t", f"{base}/a/#", "-t", f"{base}/b/+", "-T", f"{base}/a/secret/#",
                    "-v", "-C", "3", "-q", "1", version=tool_version)
    for topic, payload in [("a/1", "one"), ("a/secret/x", "hidden"), ("b/2", "two"),
                           ("c/3", "unsubscribed"), ("b/2/deep", "no match"), ("a", "three")]:
        tools.pub("-t", f"{base}/{topic}", "-m", payload, "-q", "1", version=tool_version)
    assert sub.wait() == 0, sub.describe()
    assert lines(sub.stdout) == [f"{base}/a/1 one", f"{base}/b/2 two", f"{base}/a three"]


def test_sub_qos_downgrade(tools, tool_version):
    """-q 1: a QoS 2 message arrives at QoS 1, a QoS 0 one at QoS 0."""
    topic = unique_topic()
    sub = tools.sub("-t", topic, "-q", "1", "-C", "2", "-F", "%q %p", version=tool_version)
    tools.pub("-t", topic, "-m", "two", "-q", "2", version=tool_version)
    tools.pub("-t", topic, "-m", "zero", "-q", "0", version=tool_version)
    assert sub.wait() == 0, sub.describe()
    assert sorted(lines(sub.stdout)) == ["0 zero", "1 two"]


def test_sub_count_stops_early(tools, tool_version):
    """-C N exits 0 after N messages even though more follow; -W alone exits 0."""
    topic = unique_topic()
    sub = tools.sub("-t", topic, "-C", "2", "-q", "1", version=tool_version)
    tools.pub("-t", topic, "-l", "-q", "1", input=b"a\nb\nc\nd\n", version=tool_version)
    assert sub.wait() == 0, sub.describe()
    assert sub.stdout == b"a\nb\n"
    t0 = time.monotonic()
    cp = tools.sub_run("-t", topic, "-W", "1", version=tool_version)
    assert_ok(cp)
    assert cp.stdout == b"" and cp.stderr == b""
    assert 0.9 <= time.monotonic() - t0 < 5


def test_sub_timeout_exit_code(tools):
    """-C 1 -W 1 with nothing published: exit 5 and one clear line."""
    t0 = time.monotonic()
    cp = tools.sub_run("-t", unique_topic(), "-C", "1", "-W", "1")
    assert_clear_error(cp, 5, "tern sub", "-W")
    assert time.monotonic() - t0 < 5


def test_sub_persistent_session(tools, tool_version):
    """-c -i: messages published while the subscriber is away arrive, in order, on return."""
    topic, cid = unique_topic(), unique_id()
    first = tools.sub("-t", topic, "-c", "-i", cid, "-q", "1", "-C", "1", version=tool_version)
    tools.pub("-t", topic, "-m", "before", "-q", "1", version=tool_version)
    assert first.wait() == 0, first.describe()
    assert first.stdout == b"before\n"
    for i in range(3):
        tools.pub("-t", topic, "-m", f"away-{i}", "-q", "1", version=tool_version)
    cp = tools.sub_run("-t", topic, "-c", "-i", cid, "-q", "1", "-C", "3", "-W", "5", version=tool_version)
    assert_ok(cp)
    assert lines(cp.stdout) == ["away-0", "away-1", "away-2"]


def test_sub_clean_session_gets_nothing_queued(tools, tool_version):
    """Without -c the session ends with the connection: nothing is queued."""
    topic, cid, marker = unique_topic(), unique_id(), unique_topic()
    first = tools.sub("-t", topic, "-i", cid, "-q", "1", "-C", "1", version=tool_version)
    tools.pub("-t", topic, "-m", "before", "-q", "1", version=tool_version)
    assert first.wait() == 0, first.describe()
    tools.pub("-t", topic, "-m", "while away", "-q", "1", version=tool_version)
    tools.pub("-t", marker, "-m", "marker", "-q", "1", "-r", version=tool_version)
    cp = tools.sub_run("-t", topic, "-t", marker, "-i", cid, "-q", "1", "-C", "1", "-W", "5", "-v",
                       version=tool_version)
    assert_ok(cp)
    assert cp.stdout == f"{marker} marker\n".encode()


def test_sub_unsubscribe_persistent(tools, tool_version):
    """-U with -c: after unsubscribing, the persistent session no longer gets the topic."""
    topic, other, cid = unique_topic(), unique_topic(), unique_id()
    first = tools.sub("-t", topic, "-t", other, "-c", "-i", cid, "-q", "1", "-C", "1", version=tool_version)
    tools.pub("-t", topic, "-m", "subscribed", "-q", "1", version=tool_version)
    assert first.wait() == 0, first.describe()
    cp = tools.sub_run("-U", topic, "-c", "-i", cid, version=tool_version)
    assert_ok(cp)
    assert cp.stdout == b""
    tools.pub("-t", topic, "-m", "after unsubscribe", "-q", "1", version=tool_version)
    tools.pub("-t", other, "-m", "still subscribed", "-q", "1", version=tool_version)
    # Had `topic` still been subscribed, its message (queued first) would come first.
    cp = tools.sub_run("-t", other, "-c", "-i", cid, "-q", "1", "-C", "1", "-W", "5", "-v",
                       version=tool_version)
    assert_ok(cp)
    assert cp.stdout == f"{other} still subscribed\n".encode()


def test_sub_no_retained(tools, tool_version):
    """-R: retained (stale) messages are not printed, live ones are."""
    topic = unique_topic()
    tools.pub("-t", topic, "-m", "stale", "-r", "-q", "1", version=tool_version)
    sub = tools.sub("-t", topic, "-R", "-C", "1", version=tool_version)
    tools.pub("-t", topic, "-m", "live", version=tool_version)
    assert sub.wait() == 0, sub.describe()
    assert sub.stdout == b"live\n"


def test_sub_retained_only(tools, tool_version):
    """--retained-only prints the retained messages and exits at the first live one."""
    base = unique_topic()
    for name in ("a", "b"):
        tools.pub("-t", f"{base}/{name}", "-m", f"retained-{name}", "-r", "-q", "1", version=tool_version)
    sub = tools.sub("-t", f"{base}/#", "--retained-only", "-v", "-q", "1", ready=False, version=tool_version)
    got = sub.wait_lines(2)
    assert sorted(got) == [f"{base}/a retained-a", f"{base}/b retained-b"]
    tools.pub("-t", f"{base}/c", "-m", "live", "-q", "1", version=tool_version)
    assert sub.wait() == 0, sub.describe()
    assert sorted(lines(sub.stdout)) == sorted(got)


def test_sub_remove_retained(tools, tool_version):
    """--remove-retained clears the retained messages it receives."""
    base, marker = unique_topic(), unique_topic()
    for name in ("a", "b"):
        tools.pub("-t", f"{base}/{name}", "-m", name, "-r", "-q", "1", version=tool_version)
    cp = tools.sub_run("-t", f"{base}/#", "--remove-retained", "-v", "-C", "2", "-W", "5",
                       version=tool_version)
    assert_ok(cp)
    assert sorted(lines(cp.stdout)) == [f"{base}/a a", f"{base}/b b"]
    tools.pub("-t", marker, "-m", "marker", "-r", "-q", "1", version=tool_version)
    cp = tools.sub_run("-t", f"{base}/#", "-t", marker, "-C", "1", "-W", "5", "-v", version=tool_version)
    assert_ok(cp)
    assert cp.stdout == f"{marker} marker\n".encode()


def test_sub_no_newline(tools):
    topic = unique_topic()
    sub = tools.sub("-t", topic, "-N", "-C", "2", "-q", "1")
    tools.pub("-t", topic, "-l", "-q", "1", input=b"ab\ncd\n")
    assert sub.wait() == 0, sub.describe()
    assert sub.stdout == b"abcd"


def test_sub_format_string(tools, tool_version):
    """-F with %t %p %q %r %l (and \\n escapes)."""
    topic = unique_topic()
    tools.pub("-t", topic, "-m", "kept", "-r", "-q", "1", version=tool_version)
    sub = tools.sub("-t", topic, "-q", "1", "-C", "2", "-F", r"[%t|%p|%q|%r|%l]\n", "-N", version=tool_version)
    tools.pub("-t", topic, "-m", "live!", "-q", "0", version=tool_version)
    assert sub.wait() == 0, sub.describe()
    assert lines(sub.stdout) == [f"[{topic}|kept|1|1|4]", f"[{topic}|live!|0|0|5]"]


def test_sub_json(tools, tool_version, tmp_path):
    """--json: topic, text payload or base64 for binary, qos, retain, properties (MQTT 5)."""
    topic = unique_topic()
    blob = tmp_path / "blob.bin"
    blob.write_bytes(BINARY)
    tools.pub("-t", topic, "-m", "retained text", "-r", "-q", "1", version=tool_version)
    sub = tools.sub("-t", topic, "-q", "2", "-C", "3", "--json", version=tool_version)
    extra = PROPS if tool_version == "5" else []
    tools.pub("-t", topic, "-m", "héllo \"quoted\"\n", "-q", "2", *extra, version=tool_version)
    tools.pub("-t", topic, "-f", blob, "-q", "1", version=tool_version)
    assert sub.wait() == 0, sub.describe()
    out = lines(sub.stdout)
    assert len(out) == 3, sub.describe()
    retained, text, binary = (json.loads(line) for line in out)

    assert retained["topic"] == topic
    assert retained["payload"] == "retained text"
    assert (retained["qos"], retained["retain"]) == (1, True)
    assert "properties" not in retained

    assert text["payload"] == "héllo \"quoted\"\n"
    assert (text["qos"], text["retain"]) == (2, False)
    if tool_version == "5":
        p = text["properties"]
        assert p["user_properties"] == [["site", "paris"], ["site", "lyon"]]
        assert (p["content_type"], p["response_topic"], p["correlation_data"]) == ("text/plain", "reply/to", "42")
        assert 50 <= p["message_expiry_interval"] <= 60
    else:
        assert "properties" not in text

    assert "payload" not in binary
    assert base64.b64decode(binary["payload_base64"]) == BINARY
    assert (binary["qos"], binary["retain"]) == (1, False)


# --------------------------------------------------------------------------
# Mosquitto's own clients <-> tern pub / tern sub, QoS 2 both ways
# --------------------------------------------------------------------------


def test_mosquitto_sub_receives_tern_pub(tools, tool_version, tmp_path):
    topic = unique_topic()
    blob = tmp_path / "blob.bin"
    blob.write_bytes(BINARY)
    mosq = tools.mosquitto_sub("-t", topic, "-q", "2", "-C", "3", version=tool_version, fmt="MSG|%q|%r|%x")
    tools.pub("-t", topic, "-m", "first", "-q", "2", version=tool_version)
    tools.pub("-t", topic, "-f", blob, "-q", "2", version=tool_version)
    tools.pub("-t", topic, "-l", "-q", "2", input=b"third\n", version=tool_version)
    got = mosquitto_messages(mosq, 3)
    assert got == [f"2|0|{b'first'.hex()}", f"2|0|{BINARY.hex()}", f"2|0|{b'third'.hex()}"]
    assert mosq.wait() == 0, mosq.describe()


def test_tern_sub_receives_mosquitto_pub(tools, tool_version, tmp_path):
    topic = unique_topic()
    blob = tmp_path / "blob.bin"
    blob.write_bytes(BINARY)
    sub = tools.sub("-t", topic, "-q", "2", "-C", "2", "-F", "%q|%r|%x", version=tool_version)
    tools.mosquitto_pub("-t", topic, "-m", "from mosquitto_pub", "-q", "2", version=tool_version)
    tools.mosquitto_pub("-t", topic, "-f", str(blob), "-q", "2", version=tool_version)
    assert sub.wait() == 0, sub.describe()
    assert lines(sub.stdout) == [f"2|0|{b'from mosquitto_pub'.hex()}", f"2|0|{BINARY.hex()}"]


# --------------------------------------------------------------------------
# Errors a person understands: exit code + one clear line on stderr
# --------------------------------------------------------------------------


@pytest.mark.parametrize("tool", ["pub", "sub"])
def test_unreachable_broker(tool):
    port = free_port()  # nothing listens there
    args = ["-t", "x", "-m", "y"] if tool == "pub" else ["-t", "x", "-C", "1", "-W", "5"]
    t0 = time.monotonic()
    cp = run([TERN, tool, "-h", HOST, "-p", port, *args])
    assert_clear_error(cp, 3, f"tern {tool}", f"{HOST}:{port}")
    assert time.monotonic() - t0 < 5


@pytest.mark.parametrize("creds", ["anonymous", "unknown-user"])
def test_connection_refused(tools_for, tool_version, creds, tmp_path):
    """Mosquitto with allow_anonymous false: exit 4 with the CONNACK reason."""
    if not shutil.which("mosquitto_passwd"):
        pytest.skip("mosquitto_passwd not installed (apt-get install mosquitto)")
    passwd = tmp_path / "passwd"
    made = run(["mosquitto_passwd", "-b", "-c", passwd, "alice", "right"])
    assert_ok(made)
    t = tools_for("mosquitto", ["allow_anonymous false", f"password_file {passwd}"])
    args = ["-t", unique_topic(), "-m", "x"]
    if creds == "unknown-user":
        args += ["-u", "alice", "-P", "wrong"]
    cp = t.pub(*args, version=tool_version, check=False)
    line = assert_clear_error(cp, 4, "tern pub")
    # Mosquitto 2.0.11 answers "not authorized" (3.1.1: 5, 5.0: 0x87) even
    # for a wrong password; other versions may say "bad user name or password".
    assert re.search(r"(?i)not authori[sz]ed|bad user ?name or password", line), describe_run(cp)
    cp = t.sub_run("-t", "x", "-C", "1", "-W", "5", *args[4:], version=tool_version)
    assert_clear_error(cp, 4, "tern sub")
    # The right password is accepted.
    assert_ok(t.pub("-t", unique_topic(), "-m", "x", "-u", "alice", "-P", "right", version=tool_version))


def test_refused_subscription_mosquitto(tools_for, tool_version, tmp_path):
    """Mosquitto's dynamic security plugin denies the subscription: SUBACK
    0x87 (MQTT 5) / 0x80 (3.1.1) -> exit 6 naming the filter. (Mosquitto
    2.0's acl_file does not refuse subscriptions; it only filters delivery.)"""
    plugin = dynsec_plugin()
    if not plugin:
        pytest.skip("mosquitto_dynamic_security.so not installed")
    conf = tmp_path / "dynsec.json"
    conf.write_text(json.dumps({
        "defaultACLAccess": {"publishClientSend": False, "publishClientReceive": True,
                             "subscribe": False, "unsubscribe": True},
        "clients": [],
        "groups": [{"groupname": "anon", "roles": [{"rolename": "reader"}]}],
        "roles": [{"rolename": "reader", "acls": [
            {"acltype": "subscribePattern", "topic": "allowed/#", "priority": 0, "allow": True},
            {"acltype": "publishClientSend", "topic": "allowed/#", "priority": 0, "allow": True},
        ]}],
        "anonymousGroup": "anon",
    }))
    t = tools_for("mosquitto", ["allow_anonymous true", f"plugin {plugin}", f"plugin_opt_config_file {conf}"])
    cp = t.sub_run("-t", "allowed/#", "-t", "denied/#", "-C", "1", "-W", "5", version=tool_version)
    assert_clear_error(cp, 6, "tern sub", "denied/#", "0x87" if tool_version == "5" else "0x80")
    # The allowed filter alone works.
    sub = t.sub("-t", "allowed/#", "-C", "1", version=tool_version)
    assert_ok(t.pub("-t", "allowed/x", "-m", "ok", "-q", "1", version=tool_version))
    assert sub.wait() == 0, sub.describe()
    if tool_version == "5":
        # A refused QoS 1 publish: PUBACK 0x87 -> exit 6.
        cp = t.pub("-t", "denied/x", "-m", "no", "-q", "1", version="5", check=False)
        assert_clear_error(cp, 6, "tern pub", "denied/x", "0x87")


def test_refused_subscription_tern(tools_for, tool_version):
    """Tern refuses a shared subscription with an empty share name: exit 6."""
    t = tools_for("tern")
    cp = t.sub_run("-t", "$share//x", "-C", "1", "-W", "5", version=tool_version)
    assert_clear_error(cp, 6, "tern sub", "$share//x")


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["sub", "-t", "x", "-c"], "--id"),  # -c needs -i
        (["pub", "-t", "x"], "--message"),  # no payload flag
        (["pub", "-t", "x", "-m", "y", "-q", "3"], "qos"),
        (["pub", "-t", "x", "-m", "y", "-V", "4"], "version"),
        (["sub", "-t", "x", "--json", "-v"], "--json"),
    ],
    ids=["sub-c-without-i", "pub-no-payload", "pub-bad-qos", "pub-bad-version", "sub-json-and-v"],
)
def test_usage_errors(argv, needle):
    """Invalid command lines: exit 2, with clap's message naming the problem."""
    cp = run([TERN, *argv])
    assert cp.returncode == 2, describe_run(cp)
    err = cp.stderr.decode("utf-8", "replace")
    assert err.startswith("error: "), describe_run(cp)
    assert needle.lower() in err.lower(), describe_run(cp)
    assert "panick" not in err, describe_run(cp)
    assert cp.stdout == b""


@pytest.mark.parametrize("tool", ["pub", "sub"])
def test_help(tool):
    cp = run([TERN, tool, "--help"])
    assert_ok(cp)
    out = cp.stdout.decode()
    assert "Examples:" in out and f"tern {tool} -t " in out
    assert "Exit codes:" in out
    for flag in (["-t", "-m", "-f", "-s", "-l", "-n", "-q", "-r", "--repeat", "-D"] if tool == "pub"
                 else ["-t", "-T", "-U", "-C", "-W", "-c", "-R", "--retained-only", "-F", "--json"]):
        assert re.search(rf"(^|\s){re.escape(flag)}\b", out), f"{flag} missing from --help"
