#!/usr/bin/env python3
"""Memory of a Tern cluster with many persistent sessions and subscriptions
(issue #18 item 4; docs/cluster.md, "Scale: sessions and subscriptions").

Starts a cluster with scripts/cluster.sh (3 nats-server with JetStream R3, 3
Tern nodes, HAProxy) in its own run directory under /tmp on non-default
ports, then:

  1. baseline: the RSS of each nats-server and each tern node (VmRSS of
     /proc/PID/status, pids from the run directory), and NATS's own figures
     (/varz mem, /subsz num_subscriptions, /jsz consumers, the session
     directory's size);
  2. opens N persistent sessions (default 10,000; MQTT 5 Clean Start with a
     Session Expiry Interval, or MQTT 3.1.1 clean session 0), round robin
     over the three nodes' own MQTT ports, at a bounded rate; measures;
  3. makes each session subscribe to F distinct filters in one SUBSCRIBE
     (default 10, so 100,000 distinct filters in all), a device-fleet mix:
     fleet/site-N/device-M/cmd, fleet/+/device-M/# and fleet/site-N/+/temp;
     measures;
  4. checks that the cluster still routes: publishes one message per probe
     from a node other than the subscriber's, to a topic that exactly one
     filter matches, and checks that exactly the right session gets it;
  5. disconnects every client (the sessions stay) and measures;
  6. prints the tables: RSS per process at each step, bytes per session and
     per subscription for NATS and for Tern, NATS's figures; then, as a last
     check (not measured), reconnects a few sessions to find them present
     with a message queued while they were away.

Then it stops the cluster (also on error, Ctrl-C, SIGTERM or --max-seconds)
and removes its run directory unless --keep.

Needs: python3, paho-mqtt 2.x, nats-server 2.11+, haproxy, a built tern
(cargo build --release --bin tern). Opens one socket per session in this
process: the soft open-files limit is raised to the hard one, which must be
above N + a few hundred.

Usage: scripts/cluster-scale.py [--sessions 10000] [--filters 10] [--json FILE]
(see --help). A run with the defaults takes a few minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

REPO_ROOT = Path(__file__).resolve().parents[1]
CLUSTER_SH = REPO_ROOT / "scripts" / "cluster.sh"
HOST = "127.0.0.1"
NODES = ("node1", "node2", "node3")
NATS = ("nats1", "nats2", "nats3")
STEPS = ("baseline", "sessions", "subscribed", "disconnected")
STEP_TITLES = {
    "baseline": "baseline",
    "sessions": "+ sessions",
    "subscribed": "+ subscriptions",
    "disconnected": "clients gone",
}


class Abort(Exception):
    """Stops the run: a signal or the time limit."""


def say(*args) -> None:
    print(*args, flush=True)


# ---------------------------------------------------------------- the cluster


class Cluster:
    """A cluster of scripts/cluster.sh in a run directory of its own."""

    nats = NATS
    nodes = NODES

    def __init__(self, run_dir: Path, port_base: int, tern_bin: str | None):
        self.run_dir = run_dir
        self.tern_bin = tern_bin or str(REPO_ROOT / "target" / "release" / "tern")
        self.env = dict(os.environ)
        self.env["TERN_CLUSTER_DIR"] = str(run_dir)
        self.env["TERN_CLUSTER_WAIT"] = "60"
        if tern_bin:
            self.env["TERN_BIN"] = tern_bin
        b = port_base
        self.ports = {"TERN_CLUSTER_PORT": b}
        for i in (1, 2, 3):
            self.ports[f"TERN_CLUSTER_NODE{i}_PORT"] = b + i
            self.ports[f"TERN_CLUSTER_NODE{i}_WS_PORT"] = b + 10 + i
            self.ports[f"TERN_CLUSTER_NATS{i}_PORT"] = b + 20 + i
            self.ports[f"TERN_CLUSTER_NATS{i}_ROUTE_PORT"] = b + 30 + i
            self.ports[f"TERN_CLUSTER_NATS{i}_HTTP_PORT"] = b + 40 + i
        self.env.update({k: str(v) for k, v in self.ports.items()})
        self.started = False

    def node_port(self, i: int) -> int:
        return self.ports[f"TERN_CLUSTER_NODE{i + 1}_PORT"]

    def http_port(self, i: int) -> int:
        return self.ports[f"TERN_CLUSTER_NATS{i + 1}_HTTP_PORT"]

    def sh(self, cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", str(CLUSTER_SH), cmd],
            env=self.env,
            check=check,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def up(self) -> None:
        self.started = True
        r = self.sh("up", check=False)
        if r.returncode != 0:
            raise RuntimeError(f"scripts/cluster.sh up failed:\n{r.stdout}")

    def down(self) -> None:
        r = self.sh("down", check=False)
        if r.returncode != 0:
            say(f"scripts/cluster.sh down exited {r.returncode}:\n{r.stdout}")

    def pid(self, name: str) -> int:
        return int((self.run_dir / name / f"{name}.pid").read_text().strip())

    def rss(self, name: str) -> tuple[int, int]:
        """(VmRSS, VmHWM) of process `name`, in bytes."""
        pid = self.pid(name)
        rss = hwm = 0
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1]) * 1024
        return rss, hwm

    def disk(self, name: str) -> int:
        """Bytes allocated on disk for process `name`'s data (a node's data
        directory, a NATS server's JetStream store), as du counts them."""
        total = 0
        sub = "data" if name.startswith("node") else "store"
        for root, _dirs, files in os.walk(self.run_dir / name / sub):
            for f in files:
                try:
                    total += os.lstat(os.path.join(root, f)).st_blocks * 512
                except OSError:
                    pass
        return total

    def monitor(self, i: int, path: str) -> dict:
        url = f"http://{HOST}:{self.http_port(i)}{path}"
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.load(r)

    def log_lines(self, name: str, *needles: str) -> list[str]:
        try:
            text = (self.run_dir / name / f"{name}.log").read_text(errors="replace")
        except OSError:
            return []
        return [l for l in text.splitlines() if any(n in l for n in needles)]


class Standalone(Cluster):
    """--standalone: one `tern serve` without [cluster], no NATS: the same
    load on a single node, to tell what the cluster adds per session and per
    subscription."""

    nats = ()
    nodes = ("node1",)

    def node_port(self, i: int) -> int:
        return self.ports["TERN_CLUSTER_NODE1_PORT"]

    def up(self) -> None:
        self.started = True
        folder = self.run_dir / "node1"
        folder.mkdir(parents=True, exist_ok=True)
        port = self.node_port(0)
        with open(folder / "node1.log", "w") as log:
            self.proc = subprocess.Popen(
                [self.tern_bin, "serve", "--bind", f"{HOST}:{port}", "--data-dir", str(folder / "data")],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "NO_COLOR": "1"},
            )
        (folder / "node1.pid").write_text(f"{self.proc.pid}\n")
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection((HOST, port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"tern serve did not listen on {port}: see {folder / 'node1.log'}")
                time.sleep(0.1)

    def down(self) -> None:
        proc = getattr(self, "proc", None)
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def nats_figures(cluster: Cluster) -> list[dict]:
    """NATS's own figures on each server."""
    out = []
    for i in range(len(cluster.nats)):
        varz = cluster.monitor(i, "/varz")
        subsz = cluster.monitor(i, "/subsz")
        jsz = cluster.monitor(i, "/jsz?accounts=true&streams=true&consumers=true")
        consumers = []
        kv_keys = None
        for acc in jsz.get("account_details") or []:
            for st in acc.get("stream_detail") or []:
                if st.get("name") == "KV_tern-sessions":
                    kv_keys = (st.get("state") or {}).get("messages")
                for c in st.get("consumer_detail") or []:
                    consumers.append(f"{st.get('name')}/{c.get('name')}")
        out.append(
            {
                "mem": varz.get("mem"),
                "subscriptions": subsz.get("num_subscriptions"),
                "varz_subscriptions": varz.get("subscriptions"),
                "jsz_consumers": jsz.get("consumers"),
                "consumer_detail": sorted(consumers),
                "streams": jsz.get("streams"),
                "session_keys": kv_keys,
            }
        )
    return out


def settle(cluster: Cluster, what: str, max_secs: float = 30.0) -> None:
    """Waits until every process's RSS and every server's subscription count
    stop moving (3 samples a second apart within 0.5 % / 64 KiB), or
    max_secs."""
    names = cluster.nats + cluster.nodes
    history: list[tuple] = []
    deadline = time.monotonic() + max_secs
    while True:
        sample = tuple(cluster.rss(n)[0] for n in names) + tuple(
            f["subscriptions"] for f in nats_figures(cluster)
        )
        history.append(sample)
        if len(history) >= 3:
            last = history[-3:]
            steady = all(
                max(s[k] for s in last) - min(s[k] for s in last)
                <= (max(64 * 1024, 0.005 * max(s[k] for s in last)) if k < len(names) else 0)
                for k in range(len(sample))
            )
            if steady:
                return
        if time.monotonic() > deadline:
            say(f"  ({what}: figures still moving after {max_secs:.0f} s; measuring anyway)")
            return
        time.sleep(1.0)


def measure(cluster: Cluster, step: str, results: dict) -> None:
    names = cluster.nats + cluster.nodes
    rss = {n: cluster.rss(n) for n in names}
    figs = nats_figures(cluster)
    results["steps"][step] = {
        "rss": {n: v[0] for n, v in rss.items()},
        "hwm": {n: v[1] for n, v in rss.items()},
        "disk": {n: cluster.disk(n) for n in names},
        "nats": figs,
        "at": round(time.monotonic() - results["t0"], 1),
    }
    mb = lambda b: f"{b / 2**20:.1f}"  # noqa: E731
    say(
        f"[{step}] RSS MiB: "
        + " ".join(f"{n}={mb(rss[n][0])}" for n in names)
        + (
            " | NATS subscriptions: "
            + "/".join(str(f["subscriptions"]) for f in figs)
            + " | consumers: "
            + "/".join(str(f["jsz_consumers"]) for f in figs)
            + " | session keys: "
            + str(max((f["session_keys"] or 0) for f in figs))
            if figs
            else ""
        )
    )


# ---------------------------------------------------------------- the clients


def filters_of(session: int, per: int) -> list[str]:
    """The distinct filters of session `session`: of every 10 slots, 6 exact
    command topics, 2 fleet/+/device-M/# and 2 fleet/site-N/+/temp. Every slot
    has its own global number g, so every filter is distinct, and each probe
    topic of probe_topic() matches exactly one filter of the whole run."""
    out = []
    for k in range(per):
        g = session * per + k
        out.append(filter_of(g, k))
    return out


def filter_of(g: int, k: int) -> str:
    kind = k % 10
    if kind < 6:
        return f"fleet/site-{g // 100}/device-{g}/cmd"
    if kind < 8:
        return f"fleet/+/device-{g}/#"
    return f"fleet/site-{g}/+/temp"


def probe_topic(g: int, k: int) -> str:
    kind = k % 10
    if kind < 6:
        return f"fleet/site-{g // 100}/device-{g}/cmd"
    if kind < 8:
        return f"fleet/site-probe/device-{g}/status/fw"
    return f"fleet/site-{g}/device-probe/temp"


class FleetClient(mqtt.Client):
    """paho's Client, connecting without bind(): paho binds every socket to
    ("", 0) before connecting, and the kernel's search for a free port in
    bind() slows down as thousands are taken (30 of 53 s for 10,000
    connections here); connect() alone picks a port per destination."""

    def _create_socket_connection(self):
        return socket.create_connection((self._host, self._port), timeout=self._connect_timeout)


class Conn:
    """One MQTT client, driven by Fleet's event loop."""

    __slots__ = (
        "index",
        "node",
        "client",
        "events",
        "connack",
        "session_present",
        "suback",
        "granted_bad",
        "received",
        "closed",
    )

    def __init__(self, index: int, node: int):
        self.index = index
        self.node = node
        self.client: mqtt.Client | None = None
        self.events = 0
        self.connack: int | None = None  # reason code value
        self.session_present = False
        self.suback = False
        self.granted_bad = 0
        self.received: list[str] = []
        self.closed = False


class Fleet:
    """Many paho clients on one epoll loop in this thread (loop_read,
    loop_write, loop_misc), one socket each."""

    def __init__(self, args, cluster: Cluster):
        self.args = args
        self.cluster = cluster
        self.sel = selectors.DefaultSelector()
        self.v5 = args.protocol == "5"
        self.last_misc = time.monotonic()
        self.live: set[Conn] = set()
        self.lost_unexpectedly = 0

    # -- plumbing

    def _watch(self, c: Conn) -> None:
        sock = c.client.socket() if c.client else None
        if sock is None:
            return
        want = selectors.EVENT_READ | (selectors.EVENT_WRITE if c.client.want_write() else 0)
        if c.events == 0:
            self.sel.register(sock, want, c)
        elif c.events != want:
            self.sel.modify(sock, want, c)
        c.events = want

    def _on_socket_close(self, client, c: Conn, sock) -> None:
        if c.events:
            try:
                self.sel.unregister(sock)
            except (KeyError, ValueError):
                pass
            c.events = 0
        c.closed = True
        self.live.discard(c)

    def _on_connect(self, client, c: Conn, flags, reason_code, properties) -> None:
        c.connack = reason_code.value if hasattr(reason_code, "value") else int(reason_code)
        c.session_present = bool(flags.session_present)

    def _on_subscribe(self, client, c: Conn, mid, reason_codes, properties) -> None:
        c.suback = True
        c.granted_bad += sum(1 for rc in reason_codes if (rc.value if hasattr(rc, "value") else rc) >= 0x80)

    def _on_message(self, client, c: Conn, msg) -> None:
        c.received.append(msg.topic)

    def _on_disconnect(self, client, c: Conn, flags, reason_code, properties) -> None:
        if not getattr(client, "_scale_leaving", False):
            self.lost_unexpectedly += 1
            say(f"  ! session {c.index} on node{c.node + 1} lost its connection ({reason_code})")

    def pump(self, timeout: float) -> None:
        for key, mask in self.sel.select(timeout):
            c: Conn = key.data
            cl = c.client
            if mask & selectors.EVENT_READ:
                cl.loop_read(100)
            if mask & selectors.EVENT_WRITE and cl.socket() is not None:
                cl.loop_write()
            if cl.socket() is not None:
                self._watch(c)
        now = time.monotonic()
        if now - self.last_misc >= 5.0:
            self.last_misc = now
            for c in list(self.live):
                c.client.loop_misc()

    def pump_until(self, cond, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                return False
            self.pump(0.05)
        return True

    # -- actions

    def connect(self, c: Conn, clean: bool, client_id: str | None = None, persistent: bool = True) -> None:
        cid = client_id if client_id is not None else f"scale-{c.index:05d}"
        if self.v5:
            cl = FleetClient(CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5, userdata=c)
        else:
            cl = FleetClient(
                CallbackAPIVersion.VERSION2,
                client_id=cid,
                protocol=mqtt.MQTTv311,
                clean_session=clean or not persistent,
                userdata=c,
            )
        cl.on_connect = self._on_connect
        cl.on_subscribe = self._on_subscribe
        cl.on_message = self._on_message
        cl.on_disconnect = self._on_disconnect
        cl.on_socket_close = self._on_socket_close
        cl.max_inflight_messages_set(0)
        c.client = cl
        c.connack = None
        c.events = 0
        c.closed = False
        kwargs = {}
        if self.v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.args.session_expiry if persistent else 0
            kwargs = {"clean_start": clean, "properties": props}
        cl.connect(HOST, self.cluster.node_port(c.node), keepalive=self.args.keepalive, **kwargs)
        self.live.add(c)
        self._watch(c)

    def subscribe(self, c: Conn, filters: list[str]) -> None:
        if self.v5:
            c.client.subscribe([(f, SubscribeOptions(qos=1)) for f in filters])
        else:
            c.client.subscribe([(f, 1) for f in filters])
        self._watch(c)

    def publish(self, c: Conn, topic: str, payload: bytes) -> None:
        c.client.publish(topic, payload, qos=1)
        self._watch(c)

    def leave(self, c: Conn) -> None:
        if c.client is not None and c.client.socket() is not None:
            c.client._scale_leaving = True
            c.client.disconnect()
            if c.client.socket() is not None:
                self._watch(c)

    def close_all(self) -> None:
        for c in list(self.live):
            try:
                c.client._scale_leaving = True
                sock = c.client.socket()
                if sock is not None:
                    self._on_socket_close(c.client, c, sock)
                    sock.close()
            except Exception:
                pass
        self.live.clear()


def paced(fleet: Fleet, what: str, conns: list[Conn], start, done, rate: float, window: int, timeout: float) -> float:
    """Starts `start(c)` for every conn at most `rate` per second and with at
    most `window` not yet `done(c)`; prints a line every 1,000 done; returns
    the seconds taken. Raises if not all are done within `timeout`."""
    t0 = time.monotonic()
    n = len(conns)
    started = 0
    pending: list[Conn] = []
    finished = 0
    next_report = 1000
    while finished < n:
        now = time.monotonic()
        if now - t0 > timeout:
            raise RuntimeError(f"{what}: only {finished} of {n} done after {timeout:.0f} s")
        # start as many as the rate and the window allow
        allowed = int((now - t0) * rate) + 1 if rate > 0 else n
        while started < n and started < allowed and len(pending) < window:
            c = conns[started]
            start(c)
            pending.append(c)
            started += 1
        fleet.pump(0.005 if started < n else 0.05)
        still = []
        for c in pending:
            state = done(c)
            if state is None:
                still.append(c)
            elif state is False:
                raise RuntimeError(
                    f"{what}: failed for session {c.index} on node{c.node + 1} "
                    f"(CONNACK reason {c.connack}, SUBACK refusals {c.granted_bad}, closed {c.closed})"
                )
            else:
                finished += 1
        pending = still
        if finished >= next_report or finished == n:
            el = time.monotonic() - t0
            say(f"  {what}: {finished:>6}/{n}  {el:6.1f} s  {finished / max(el, 1e-9):6.0f}/s  in flight {len(pending)}")
            while next_report <= finished:
                next_report += 1000
    return time.monotonic() - t0


# ---------------------------------------------------------------- the report


def derive(results: dict) -> dict:
    s = results["steps"]
    n_sess = results["sessions"]
    n_filt = results["filters"]
    per_node = results["sessions_per_node"]
    nats, nodes = results["nats_names"], results["node_names"]
    d = {}

    def delta(a, b, name):
        return s[b]["rss"][name] - s[a]["rss"][name]

    nats_subs = lambda step: [f["subscriptions"] for f in s[step]["nats"]]  # noqa: E731
    d["nats_sub_delta"] = [b - a for a, b in zip(nats_subs("sessions"), nats_subs("subscribed"))]
    rows = []
    for label, a, b, count_all, count_node in (
        ("per session (connected, no subscription)", "baseline", "sessions", n_sess, per_node),
        ("per subscription (distinct filter)", "sessions", "subscribed", n_filt, [p * results["filters_per_session"] for p in per_node]),
        ("per session offline, with its subscriptions", "baseline", "disconnected", n_sess, per_node),
    ):
        nats_each = [delta(a, b, n) for n in nats]
        tern_each = [delta(a, b, n) for n in nodes]
        rows.append(
            {
                "what": label,
                "nats_sum": sum(nats_each) / count_all,
                # every NATS server holds every node's interest (routes) and
                # every session key (R3): per server, divide by the total
                "nats_per_server": [x / count_all for x in nats_each],
                "tern_sum": sum(tern_each) / count_all,
                "tern_per_node": [x / cn for x, cn in zip(tern_each, count_node)],
            }
        )
    d["rows"] = rows
    d["nats_per_nats_sub"] = [
        (delta("sessions", "subscribed", n) / ds if ds else None) for n, ds in zip(nats, d["nats_sub_delta"])
    ]
    return d


def report(results: dict) -> str:
    s = results["steps"]
    complete = all(st in s for st in STEPS)
    d = derive(results) if complete else None
    nats, nodes = results["nats_names"], results["node_names"]
    mib = lambda b: f"{b / 2**20:.1f}"  # noqa: E731
    out = []
    out.append(
        f"Run: {results['sessions']:,} persistent sessions (MQTT {results['protocol']}), "
        f"{results['filters']:,} distinct filters ({results['filters_per_session']} per session), "
        + (
            f"nodes {'/'.join(str(x) for x in results.get('sessions_per_node', []))} sessions, "
            f"tern {results.get('tern_version', '?')}, {results.get('nats_version', '?')}."
            if nats
            else f"one tern {results.get('tern_version', '?')} node without [cluster] (--standalone)."
        )
    )
    out.append("")
    out.append("RSS (VmRSS) in MiB at each step:")
    out.append("")
    steps = [st for st in STEPS if st in s]
    out.append("| process | " + " | ".join(STEP_TITLES[st] for st in steps) + " | peak (VmHWM) |")
    out.append("|---|" + "---:|" * (len(steps) + 1))
    for n in nats + nodes:
        out.append(
            f"| {n} | "
            + " | ".join(mib(s[st]["rss"][n]) for st in steps)
            + f" | {mib(max(s[st]['hwm'][n] for st in steps))} |"
        )
    for label, group in ((f"NATS, {len(nats)} servers", nats), (f"Tern, {len(nodes)} nodes", nodes)):
        if len(group) < 2:
            continue
        out.append(f"| **{label}** | " + " | ".join(mib(sum(s[st]["rss"][n] for n in group)) for st in steps) + " | |")
    out.append("")
    out.append("On disk in MiB (du of each node's data directory and each NATS server's JetStream store):")
    out.append("")
    out.append("| process | " + " | ".join(STEP_TITLES[st] for st in steps) + " |")
    out.append("|---|" + "---:|" * len(steps))
    for label, group in (("NATS, each server", nats), ("Tern, each node", nodes)):
        if not group:
            continue
        out.append(
            f"| {label} | "
            + " | ".join(" / ".join(mib(s[st]["disk"][n]) for n in group) for st in steps)
            + " |"
        )
    out.append("")
    if nats:
        out.append("NATS's own figures (nats1 / nats2 / nats3):")
        out.append("")
        out.append("| figure | " + " | ".join(STEP_TITLES[st] for st in steps) + " |")
        out.append("|---|" + "---:|" * len(steps))
    for label, key, fmt in () if not nats else (
        ("/varz mem (MiB)", "mem", mib),
        ("/subsz num_subscriptions", "subscriptions", str),
        ("/jsz consumers", "jsz_consumers", str),
        ("session directory keys (KV_tern-sessions messages)", "session_keys", str),
    ):
        out.append(
            f"| {label} | "
            + " | ".join(" / ".join(fmt(f[key]) if f[key] is not None else "-" for f in s[st]["nats"]) for st in steps)
            + " |"
        )
    if nats:
        out.append("")
    if complete and not nats:
        out.append("Derived, in bytes (RSS difference between two steps divided by the count):")
        out.append("")
        out.append("| per | Tern, one node |")
        out.append("|---|---:|")
        for r in d["rows"]:
            out.append(f"| {r['what']} | {r['tern_sum']:,.0f} |")
        out.append("")
    if complete and nats:
        out.append("Derived, in bytes (RSS difference between two steps divided by the count):")
        out.append("")
        out.append("| per | NATS, 3 servers | NATS per server (1 / 2 / 3) | Tern, 3 nodes | Tern per node (1 / 2 / 3) |")
        out.append("|---|---:|---:|---:|---:|")
        for r in d["rows"]:
            out.append(
                f"| {r['what']} | {r['nats_sum']:,.0f} | "
                + " / ".join(f"{x:,.0f}" for x in r["nats_per_server"])
                + f" | {r['tern_sum']:,.0f} | "
                + " / ".join(f"{x:,.0f}" for x in r["tern_per_node"])
                + " |"
            )
        out.append("")
        out.append(
            "NATS subscriptions added by the subscribe step (per server): "
            + " / ".join(f"{x:,}" for x in d["nats_sub_delta"])
            + "; bytes per NATS subscription: "
            + " / ".join(f"{x:,.0f}" if x is not None else "-" for x in d["nats_per_nats_sub"])
            + "."
        )
    cons = sorted({c for st in steps for f in s[st]["nats"] for c in f["consumer_detail"]})
    if nats:
        out.append(f"JetStream consumers seen at any step (stream/consumer): {', '.join(cons) or 'none'}.")
    t = results.get("timings", {})
    if t:
        out.append(
            "Timings: "
            + ", ".join(f"{k} {v:.1f} s" for k, v in t.items())
            + f"; whole run {results.get('total_secs', 0):.0f} s."
        )
    for line in results.get("checks", []):
        out.append(f"Check: {line}")
    return "\n".join(out)


# ---------------------------------------------------------------- the run


def run(args, cluster: Cluster, results: dict) -> None:
    n = args.sessions
    per = args.filters
    fleet = Fleet(args, cluster)
    results["fleet"] = fleet  # for cleanup; removed before JSON
    timings = results["timings"]
    checks = results["checks"]

    say(f"starting the cluster in {cluster.run_dir} (ports {args.port_base}-{args.port_base + 43}) ...")
    t = time.monotonic()
    cluster.up()
    timings["cluster up"] = time.monotonic() - t
    ver = subprocess.run([cluster.tern_bin, "--version"],
                         capture_output=True, text=True)
    results["tern_version"] = (ver.stdout.strip() or "?").split()[-1]
    if cluster.nats:
        results["nats_version"] = "nats-server " + str(cluster.monitor(0, "/varz").get("version"))
    k = len(cluster.nodes)

    say("step 1: baseline")
    settle(cluster, "baseline", 20)
    measure(cluster, "baseline", results)

    conns = [Conn(i, i % k) for i in range(n)]
    results["sessions_per_node"] = [sum(1 for c in conns if c.node == j) for j in range(k)]

    def connack_state(c: Conn):
        if c.connack is None:
            if c.closed:
                return False
            return None
        return c.connack == 0

    say(f"step 2: {n:,} persistent sessions, round robin over {k} node(s) (ports "
        f"{', '.join(str(cluster.node_port(j)) for j in range(k))}), at most {args.rate:.0f}/s, "
        f"{args.window} in flight")
    timings["connect"] = paced(
        fleet, "connected", conns, lambda c: fleet.connect(c, clean=True), connack_state,
        args.rate, args.window, args.step_timeout,
    )
    settle(cluster, "sessions")
    measure(cluster, "sessions", results)

    say(f"step 3: {n * per:,} distinct filters, {per} per session in one SUBSCRIBE each")

    def suback_state(c: Conn):
        if c.suback:
            return c.granted_bad == 0
        if c.closed:
            return False
        return None

    timings["subscribe"] = paced(
        fleet, "subscribed sessions", conns, lambda c: fleet.subscribe(c, filters_of(c.index, per)), suback_state,
        args.sub_rate, args.window, args.step_timeout,
    )
    say("  waiting for the figures to settle (NATS interest reaching every server) ...")
    settle(cluster, "subscribed", 60)
    measure(cluster, "subscribed", results)

    say("step 4: probes, each published on another node than its subscriber's")
    rng = random.Random(18)
    pubs = [Conn(-1 - j, j) for j in range(k)]
    for p in pubs:
        fleet.connect(p, clean=True, client_id=f"scale-probe-pub-{p.node + 1}", persistent=False)
    if not fleet.pump_until(lambda: all(p.connack is not None for p in pubs), 10):
        raise RuntimeError("the probe publishers were not answered")
    if any(p.connack != 0 for p in pubs):
        raise RuntimeError(f"a probe publisher was refused: {[p.connack for p in pubs]}")
    probes = []  # (topic, the one session it must reach, kind, its filter)
    for kind, slots in (("exact", range(0, 6)), ("+/#", range(6, 8)), ("+/temp", range(8, 10))):
        slots = [x for x in slots if x < per]
        if not slots:
            continue
        for node in range(k):
            c = rng.choice([c for c in conns if c.node == node])
            slot = rng.choice(slots)
            g = c.index * per + slot
            probes.append((probe_topic(g, slot), c, kind, filter_of(g, slot)))
    for c in conns:
        c.received.clear()
    for i, (topic, c, kind, flt) in enumerate(probes):
        pub = pubs[(c.node + 1 + i % 2) % k]
        fleet.publish(pub, topic, f"probe {i}".encode())
    ok = fleet.pump_until(lambda: all(topic in c.received for topic, c, _, _ in probes), 10)
    fleet.pump_until(lambda: False, 1.0)  # anything extra arrives
    got = {c.index: list(c.received) for c in conns if c.received}
    wrong = 0
    for i, (topic, c, kind, flt) in enumerate(probes):
        receivers = [idx for idx, topics in got.items() if topic in topics]
        good = receivers == [c.index] and got[c.index].count(topic) == 1
        wrong += not good
        say(f"  {topic!r} (filter {flt!r}, session {c.index} on node{c.node + 1}, published on "
            f"node{pubs[(c.node + 1 + i % 2) % k].node + 1}): received by {receivers or 'nobody'} "
            f"{'ok' if good else 'WRONG'}")
    checks.append(
        f"{len(probes)} probes published on "
        + ("another node than their subscriber's: " if k > 1 else "the node: ")
        + f"{len(probes) - wrong} reached exactly their one session"
        + ("" if ok else " (some not within 10 s)")
    )
    if wrong:
        raise RuntimeError(f"{wrong} of {len(probes)} probes went wrong")
    for p in pubs:
        fleet.leave(p)
    fleet.pump_until(lambda: all(p.closed for p in pubs), 5)

    say("step 5: every client disconnects (DISCONNECT; the sessions stay)")
    t = time.monotonic()
    for i, c in enumerate(conns):
        fleet.leave(c)
        if i % 200 == 199:
            fleet.pump(0)
    if not fleet.pump_until(lambda: not fleet.live, 60):
        raise RuntimeError(f"{len(fleet.live)} clients still connected 60 s after DISCONNECT")
    timings["disconnect"] = time.monotonic() - t
    settle(cluster, "disconnected", 60)
    measure(cluster, "disconnected", results)
    if fleet.lost_unexpectedly:
        checks.append(f"{fleet.lost_unexpectedly} connections were lost before the script closed them")

    # Not measured: the sessions are still there, and queue for their clients.
    sample = [rng.choice([c for c in conns if c.node == j]) for j in range(k) for _ in range(args.check_sessions)]
    sample = list({c.index: c for c in sample}.values())
    say(f"check: {len(sample)} sessions come back (Session Present) with a message queued while away")
    pubs = [Conn(-10 - j, j) for j in range(k)]
    for p in pubs:
        fleet.connect(p, clean=True, client_id=f"scale-queue-pub-{p.node + 1}", persistent=False)
    fleet.pump_until(lambda: all(p.connack is not None for p in pubs), 10)
    for c in sample:
        c.received.clear()
        fleet.publish(pubs[(c.node + 1) % k], probe_topic(c.index * per, 0), b"queued")
    fleet.pump_until(lambda: False, 1.0)
    for c in sample:
        fleet.connect(c, clean=False)
    fleet.pump_until(lambda: all(c.connack is not None or c.closed for c in sample), 15)
    want = probe_topic
    fleet.pump_until(lambda: all(want(c.index * per, 0) in c.received for c in sample), 10)
    present = sum(1 for c in sample if c.connack == 0 and c.session_present)
    queued = sum(1 for c in sample if want(c.index * per, 0) in c.received)
    checks.append(
        f"after the measurement, {present} of {len(sample)} sampled sessions reconnected with Session Present, "
        f"{queued} of {len(sample)} got the QoS 1 message published "
        + ("on another node " if k > 1 else "")
        + "while they were away"
    )
    say(f"  {checks[-1]}")
    for c in sample + pubs:
        fleet.leave(c)
    fleet.pump_until(lambda: not fleet.live, 10)


def main() -> int:
    ap = argparse.ArgumentParser(
        description="Memory of NATS and Tern with many persistent sessions and subscriptions "
        "(docs/cluster.md, 'Scale: sessions and subscriptions').",
    )
    ap.add_argument("--sessions", type=int, default=10_000, help="persistent sessions (default 10000)")
    ap.add_argument("--filters", type=int, default=10, help="distinct filters per session (default 10)")
    ap.add_argument("--protocol", choices=("5", "311"), default="5", help="MQTT version (default 5)")
    ap.add_argument("--session-expiry", type=int, default=86400, help="MQTT 5 Session Expiry Interval (default 86400)")
    ap.add_argument("--keepalive", type=int, default=600, help="clients' keep-alive in seconds (default 600)")
    ap.add_argument("--rate", type=float, default=300, help="new connections per second (default 300)")
    ap.add_argument("--sub-rate", type=float, default=300, help="SUBSCRIBE packets per second (default 300)")
    ap.add_argument("--window", type=int, default=100, help="connects or subscribes in flight at most (default 100)")
    ap.add_argument("--step-timeout", type=float, default=300, help="longest a connect or subscribe step may take (default 300 s)")
    ap.add_argument("--check-sessions", type=int, default=5, help="sessions per node reconnected at the end (default 5)")
    ap.add_argument("--port-base", type=int, default=27880, help="ports BASE..BASE+43 (default 27880)")
    ap.add_argument("--run-dir", help="run directory (default: a new one under /tmp)")
    ap.add_argument("--tern-bin", help="tern binary (default: scripts/cluster.sh's choice, target/release/tern first)")
    ap.add_argument(
        "--standalone",
        action="store_true",
        help="instead of the cluster, one tern serve without [cluster] (no NATS) with the same load: "
        "what a single node costs, for comparison (--sessions 3334 is one cluster node's share)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the run directory (logs, data) afterwards")
    ap.add_argument("--json", help="also write the figures to this file as JSON")
    ap.add_argument("--max-seconds", type=int, default=1800, help="stop everything after this long (default 1800)")
    args = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.sessions + 500
    if hard != resource.RLIM_INFINITY and hard < need:
        say(f"cluster-scale: {args.sessions} sessions need {need} open files, the hard limit is {hard}")
        return 2
    if soft != resource.RLIM_INFINITY and soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else need, hard))

    made_dir = args.run_dir is None
    run_dir = Path(args.run_dir or tempfile.mkdtemp(prefix="tern-scale-", dir="/tmp")).resolve()
    cluster = (Standalone if args.standalone else Cluster)(run_dir, args.port_base, args.tern_bin)
    results: dict = {
        "sessions": args.sessions,
        "filters": args.sessions * args.filters,
        "filters_per_session": args.filters,
        "protocol": "5" if args.protocol == "5" else "3.1.1",
        "nats_names": list(cluster.nats),
        "node_names": list(cluster.nodes),
        "steps": {},
        "timings": {},
        "checks": [],
        "t0": time.monotonic(),
    }

    def stop(signum, frame):
        raise Abort(f"stopped by signal {signal.Signals(signum).name}")

    def too_long(signum, frame):
        raise Abort(f"stopped after --max-seconds {args.max_seconds}")

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGALRM, too_long)
    signal.alarm(args.max_seconds)
    status = 0
    try:
        run(args, cluster, results)
    except (Abort, Exception) as e:  # noqa: BLE001 - report, clean up, exit 1
        status = 1
        say(f"cluster-scale: {type(e).__name__}: {e}")
        for name in cluster.nodes + cluster.nats:
            for line in cluster.log_lines(name, "ERROR", "WARN", "panicked")[-5:]:
                say(f"  {name}: {line}")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        fleet = results.pop("fleet", None)
        if fleet is not None:
            fleet.close_all()
        if cluster.started:
            say("stopping the cluster ...")
            warn = [f"{n}: {l}" for n in cluster.nodes for l in cluster.log_lines(n, "WARN", "ERROR", "panicked")]
            if warn:
                results["checks"].append(f"{len(warn)} WARN/ERROR lines in the nodes' logs, first: {warn[0]}")
            cluster.down()
        results["total_secs"] = time.monotonic() - results.pop("t0")
        if made_dir and not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
        elif cluster.started:
            say(f"run directory kept: {run_dir}")
    if results["steps"]:
        say("")
        say(report(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
