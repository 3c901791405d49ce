#!/usr/bin/env python3
"""Big state, Tern against Mosquitto side by side (issue #21 item 4).

Two parts, each run on Mosquitto and then on Tern, one broker at a time, on
loopback. The load is this script's own MQTT 3.1.1 client (asyncio, raw
sockets, nothing of Tern's), plus mosquitto_sub as the `#` subscriber that
counts what it receives; the broker's CPU (utime+stime of /proc/PID/stat) and
memory (VmRSS, once the broker is idle) are read around each step.

Retained messages (--retained N, default 1,000,000), persistence on in both
(Tern's store; Mosquitto's `persistence true`, written at shutdown):
  1. four connections set N retained messages at QoS 0 on N topics
     `state/site-S/device-D` with 64-byte payloads, each ending with a
     PINGREQ whose PINGRESP says the broker handled what came before: the
     rate they were set at, and RSS per retained message;
  2. `tern bench p2p -n 16 -q 1 -w 100` on other topics while they exist;
  3. mosquitto_sub to `#` (QoS 0): the time until it has all N, or until
     the last it got if none came for 5 s (a broker may drop what its
     subscriber's queue limit, 1,000 messages, does not hold), and how many;
  4. SIGTERM (the time and CPU to stop: Mosquitto writes its database then), start
     again: the time until a client that connects and subscribes to the last
     topic set gets its retained message, the RSS, and `#` again, which must
     get as many as before.

Subscriptions (--clients C, default 19,000; --filters F per client, default
53: 1,007,000 in all), persistence off in both, clean sessions:
  1. C connections; each sends one SUBSCRIBE with F filters, a device-fleet
     mix: its own exact command topics `fleet/site-S/device-D/cmd/K`, its own
     wildcards `fleet/+/device-D/K/#`, and per-site ones
     `fleet/site-S/+/tempK` that many clients share. Subscribes per second
     (first SUBSCRIBE written to last SUBACK read) and RSS per subscription;
  2. routing cost: one connection publishes M (--publishes, default 200,000)
     QoS 0 messages to topics that share the filters' levels but match none
     of them, before any subscription exists and again with all of them
     (broker CPU per message: it must not grow with the number of
     subscriptions that do not match), and M to topics each matched by
     exactly one client's exact and wildcard filters, whose deliveries are
     counted.

The table goes to stdout and target/bench-state/results.md, the commands run
to target/bench-state/commands.txt. Needs python3 (3.9+), mosquitto and
mosquitto_sub (installed with apt-get as root if missing), cargo. Raises its
open-files limit to the hard limit, which must be above C + a few hundred.

Usage: scripts/bench-state.py [--retained N] [--clients C] [--filters F]
       [--publishes M] [--only retained|subscriptions]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from mqtt_wire import PINGREQ, connect_packet, publish_packet, read_packet, subscribe_packet

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "target" / "bench-state"
TERN = ROOT / "target" / "release" / "tern"
PORT = 18851
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAYLOAD = b"p" * 64


def say(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def log_command(argv: list[str]) -> None:
    say("+ " + " ".join(argv))
    with open(OUT / "commands.txt", "a") as f:
        f.write(" ".join(argv) + "\n")


# --- connections ------------------------------------------------------------


class Conn:
    """One connection; `publishes` counts the PUBLISH packets it received
    (read by `run`, in a task of its own); `pong` is set at each PINGRESP."""

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer
        self.publishes = 0
        self.suback_seen = asyncio.Event()
        self.pong = asyncio.Event()
        self.task: asyncio.Task | None = None

    @classmethod
    async def open(cls, client_id: str) -> "Conn":
        reader, writer = await asyncio.open_connection("127.0.0.1", PORT, limit=1 << 20)
        writer.write(connect_packet(client_id))
        kind, body = await read_packet(reader)
        if kind != 0x20 or len(body) < 2 or body[1] != 0:
            raise RuntimeError(f"{client_id}: CONNACK refused or missing ({kind}, {body!r})")
        conn = cls(reader, writer)
        conn.task = asyncio.create_task(conn.run())
        return conn

    async def run(self) -> None:
        try:
            while True:
                first, _ = await read_packet(self.reader)
                kind = first >> 4
                if kind == 3:
                    self.publishes += 1
                elif kind == 9:
                    self.suback_seen.set()
                elif kind == 13:
                    self.pong.set()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass

    async def ping(self) -> None:
        """Waits until the broker handled everything written before."""
        self.pong.clear()
        self.writer.write(PINGREQ)
        await self.writer.drain()
        await asyncio.wait_for(self.pong.wait(), 600)

    async def write_all(self, packets, chunk: int = 5000) -> None:
        batch = []
        for p in packets:
            batch.append(p)
            if len(batch) == chunk:
                self.writer.write(b"".join(batch))
                await self.writer.drain()
                batch = []
        self.writer.write(b"".join(batch))
        await self.writer.drain()

    def close(self) -> None:
        if self.task:
            self.task.cancel()
        self.writer.close()


async def open_many(prefix: str, count: int, parallel: int = 200) -> list[Conn]:
    conns: list[Conn | None] = [None] * count
    next_index = 0

    async def opener():
        nonlocal next_index
        while next_index < count:
            i = next_index
            next_index += 1
            conns[i] = await Conn.open(f"{prefix}-{i}")

    await asyncio.gather(*(opener() for _ in range(parallel)))
    return conns  # type: ignore[return-value]


# --- brokers ----------------------------------------------------------------


def port_open() -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", PORT)) == 0


class Broker:
    """Mosquitto or Tern on PORT, with or without persistence; its data
    directory survives `stop` so that `start` again restores it."""

    def __init__(self, name: str, persistence: bool, tag: str):
        self.name, self.persistence, self.tag = name, persistence, tag
        self.dir = OUT / "data" / f"{tag}-{name}"
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        if name == "mosquitto":
            conf = self.dir / "mosquitto.conf"
            lines = [
                f"listener {PORT} 127.0.0.1", "allow_anonymous true", "max_connections -1",
                "max_inflight_messages 100", "max_queued_messages 1000", "max_queued_bytes 67108864",
                "sys_interval 0", "log_dest stderr", "log_type error", "log_type warning",
                "connection_messages false",
                f"persistence {'true' if persistence else 'false'}",
                f"persistence_location {self.dir}/",
            ]
            if os.getuid() == 0:
                lines.append("user root")
            conf.write_text("\n".join(lines) + "\n")
            self.argv = [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(conf)]
        else:
            conf = self.dir / "tern.toml"
            conf.write_text(
                f'bind = "127.0.0.1:{PORT}"\nmax_inflight_messages = 100\nmax_queued_messages = 1000\n'
                f"max_queued_bytes = 67108864\nsys_interval_secs = 0\n"
                f"persistence = {'true' if persistence else 'false'}\n"
            )
            self.argv = [str(TERN), "serve", "--config", str(conf), "--data-dir", str(self.dir / "data")]

    def start(self, probe=None) -> float:
        """Starts it; returns the seconds until it accepted a connection, or
        until `probe` (a coroutine function, tried again while it raises
        OSError or IncompleteReadError) returned."""
        if port_open():
            raise SystemExit(f"port {PORT} is already in use: stop what listens there")
        self.starts += 1
        log = open(OUT / "logs" / f"{self.tag}-{self.name}-{self.starts}.log", "w")
        log_command(self.argv)
        began = time.monotonic()
        self.proc = subprocess.Popen(self.argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} exited while starting; see {log.name}")
            try:
                if probe is not None:
                    asyncio.run(asyncio.wait_for(probe(), 600))
                    break
                if port_open():
                    break
            except (OSError, asyncio.IncompleteReadError):
                pass
            time.sleep(0.01)
        return time.monotonic() - began

    def stop(self) -> tuple[float, float]:
        """SIGTERM; returns the seconds until it exited, and the CPU seconds
        it spent meanwhile (Mosquitto writes its database then)."""
        assert self.proc
        cpu_before = self.cpu_s()
        began = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        _, status, usage = os.wait4(self.proc.pid, 0)
        took = time.monotonic() - began
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        return took, usage.ru_utime + usage.ru_stime - cpu_before

    def cpu_s(self) -> float:
        assert self.proc
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def rss_kb(self) -> int:
        assert self.proc
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def settled_rss_kb(self) -> int:
        """RSS once the broker is idle (under 20 ms of CPU in a second: a
        store may still be writing what it was sent) and its RSS stopped
        changing by more than 1 % in that second; at most 60 s."""
        last_rss, last_cpu = self.rss_kb(), self.cpu_s()
        for _ in range(60):
            time.sleep(1)
            rss, cpu = self.rss_kb(), self.cpu_s()
            if cpu - last_cpu < 0.02 and abs(rss - last_rss) <= last_rss // 100:
                return rss
            last_rss, last_cpu = rss, cpu
        return last_rss


# --- retained messages --------------------------------------------------------


def retained_topic(i: int) -> str:
    return f"state/site-{i // 1000}/device-{i % 1000}"


async def set_retained(n: int, connections: int = 4) -> float:
    """Sets n retained messages over `connections`; returns the seconds taken."""
    conns = [await Conn.open(f"retainer-{c}") for c in range(connections)]
    began = time.monotonic()

    async def one(c: int, conn: Conn):
        await conn.write_all(publish_packet(retained_topic(i), PAYLOAD, True) for i in range(c, n, connections))
        await conn.ping()

    await asyncio.gather(*(one(c, conn) for c, conn in enumerate(conns)))
    took = time.monotonic() - began
    for conn in conns:
        conn.close()
    return took


async def retained_one(topic: str) -> None:
    """Connects, subscribes to `topic` and returns once its retained message
    came: the broker serves its retained messages."""
    conn = await Conn.open("probe")
    conn.writer.write(subscribe_packet(1, [topic]))
    while not conn.publishes:
        if conn.task and conn.task.done():
            raise asyncio.IncompleteReadError(b"", None)
        await asyncio.sleep(0.002)
    conn.close()


def subscribe_all(n: int, quiet_s: float = 5.0) -> tuple[float, int]:
    """mosquitto_sub to `#` until it has n messages, or none came for
    `quiet_s` (a broker may drop what its queue limit does not hold):
    (seconds until the last one it got, how many it got)."""
    argv = ["mosquitto_sub", "-p", str(PORT), "-t", "#", "-q", "0", "-C", str(n), "-F", "%t"]
    log_command(argv + ["| wc -l"])
    began = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    seen = {"count": 0, "last": began}

    def count():
        assert proc.stdout
        for block in iter(lambda: proc.stdout.read1(1 << 16), b""):
            seen["count"] += block.count(b"\n")
            seen["last"] = time.monotonic()

    reader = threading.Thread(target=count, daemon=True)
    reader.start()
    while reader.is_alive() and time.monotonic() - seen["last"] < quiet_s:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    reader.join(5)
    return seen["last"] - began, seen["count"]


def tern_bench_p2p(tag: str, broker: str) -> float | None:
    """`tern bench p2p -n 16 -q 1 -w 100` for 5 s: delivered msg/s."""
    argv = [str(TERN), "bench", "p2p", "-p", str(PORT), "-n", "16", "-q", "1", "-w", "100",
            "-d", "5", "--warmup", "1", "--drain", "2", "-t", "bench/%i", "--json", "--quiet"]
    log_command(argv)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    (OUT / "runs" / f"{tag}-{broker}-p2p.json").write_text(out.stdout)
    try:
        return json.loads(out.stdout)["delivered_per_sec"]
    except (ValueError, KeyError):
        say(f"tern bench failed: {out.stderr[-500:]}")
        return None


def retained_part(broker_name: str, n: int) -> dict:
    say(f"\n=== retained: {n:,} on {broker_name}")
    b = Broker(broker_name, persistence=True, tag="retained")
    r: dict = {}
    b.start()
    empty = b.settled_rss_kb()
    c0 = b.cpu_s()
    r["set_s"] = asyncio.run(set_retained(n))
    r["rss_kb"] = b.settled_rss_kb()
    # With what a store wrote after the last one was handled.
    r["set_cpu_s"] = b.cpu_s() - c0
    r["bytes_per_retained"] = (r["rss_kb"] - empty) * 1024 / n
    r["p2p_rate"] = tern_bench_p2p("retained", broker_name)
    r["all_s"], r["all_got"] = subscribe_all(n)
    r["stop_s"], r["stop_cpu_s"] = b.stop()
    r["restart_s"] = b.start(lambda: retained_one(retained_topic(n - 1)))
    r["restart_rss_kb"] = b.settled_rss_kb()
    r["again_s"], r["again_got"] = subscribe_all(n)
    b.stop()
    r["set_rate"] = n / r["set_s"]
    r["set_cpu_us"] = r["set_cpu_s"] * 1e6 / n
    r["kept_cpu_us"] = (r["set_cpu_s"] + r["stop_cpu_s"]) * 1e6 / n
    r["all_rate"] = r["all_got"] / r["all_s"]
    r["again_rate"] = r["again_got"] / r["again_s"]
    r["rss_mib"] = r["rss_kb"] / 1024
    r["restart_rss_mib"] = r["restart_rss_kb"] / 1024
    shutil.rmtree(b.dir, ignore_errors=True)
    say(json.dumps(r))
    return r


# --- subscriptions ------------------------------------------------------------


def filters_of(c: int, per_client: int) -> list[str]:
    """Client c's filters: its own exact command topics and wildcards, and its
    site's shared ones (200 sites)."""
    site = c % 200
    out = []
    for k in range(per_client):
        kind = k % 3
        if kind == 0:
            out.append(f"fleet/site-{site}/device-{c}/cmd/{k}")
        elif kind == 1:
            out.append(f"fleet/+/device-{c}/{k}/#")
        else:
            out.append(f"fleet/site-{site}/+/temp{k}")
    return out


def unmatched_topic(i: int) -> str:
    """Same levels as the filters, matched by none: no such device, and a
    last level no filter has."""
    return f"fleet/site-{i % 200}/device-x{i}/status"


def matched_topic(c: int) -> str:
    """Matched by client c's exact filter cmd/0 and by no other filter of any
    client (its wildcards need a 4th level of /1, /4, ...)."""
    return f"fleet/site-{c % 200}/device-{c}/cmd/0"


async def route(count: int, topic_of) -> None:
    conn = await Conn.open("router")
    await conn.write_all(publish_packet(topic_of(i), PAYLOAD, False) for i in range(count))
    await conn.ping()
    conn.close()


def routing_cpu_us(b: Broker, count: int, topic_of) -> float:
    c0 = b.cpu_s()
    asyncio.run(route(count, topic_of))
    return (b.cpu_s() - c0) * 1e6 / count


async def deliveries_settled(conns: list[Conn], expected: int) -> int:
    """The PUBLISHes `conns` received, once there are `expected` or none came
    for 2 s."""
    last, quiet_since = -1, time.monotonic()
    while True:
        got = sum(conn.publishes for conn in conns)
        if got >= expected or time.monotonic() - quiet_since > 2:
            return got
        if got != last:
            last, quiet_since = got, time.monotonic()
        await asyncio.sleep(0.05)


async def subscriptions_load(b: Broker, clients: int, per_client: int, publishes: int, r: dict) -> None:
    conns = await open_many("device", clients)
    r["connected_rss_kb"] = b.settled_rss_kb()
    packets = [subscribe_packet(1, filters_of(c, per_client)) for c in range(clients)]
    c0 = b.cpu_s()
    began = time.monotonic()
    for conn, p in zip(conns, packets):
        conn.writer.write(p)
    await asyncio.gather(*(conn.writer.drain() for conn in conns))
    await asyncio.wait_for(asyncio.gather(*(conn.suback_seen.wait() for conn in conns)), 600)
    took = time.monotonic() - began
    r["subscriptions"] = clients * per_client
    r["subscribe_rate"] = r["subscriptions"] / took
    r["subscribe_cpu_us"] = (b.cpu_s() - c0) * 1e6 / r["subscriptions"]
    r["rss_kb"] = b.settled_rss_kb()
    r["rss_mib"] = r["rss_kb"] / 1024
    r["bytes_per_subscription"] = (r["rss_kb"] - r["connected_rss_kb"]) * 1024 / r["subscriptions"]
    # Routing with every subscription in place (the connections stay open).
    c0 = b.cpu_s()
    await route(publishes, unmatched_topic)
    r["route_unmatched_full_us"] = (b.cpu_s() - c0) * 1e6 / publishes
    c0 = b.cpu_s()
    await route(publishes, lambda i: matched_topic(i % clients))
    r["delivered"] = await deliveries_settled(conns, publishes)
    r["route_matched_us"] = (b.cpu_s() - c0) * 1e6 / publishes
    for conn in conns:
        conn.close()


def subscriptions_part(broker_name: str, clients: int, per_client: int, publishes: int) -> dict:
    say(f"\n=== subscriptions: {clients:,} clients × {per_client} on {broker_name}")
    b = Broker(broker_name, persistence=False, tag="subscriptions")
    r: dict = {}
    b.start()
    r["route_unmatched_empty_us"] = routing_cpu_us(b, publishes, unmatched_topic)
    asyncio.run(subscriptions_load(b, clients, per_client, publishes, r))
    b.stop()
    shutil.rmtree(b.dir, ignore_errors=True)
    say(json.dumps(r))
    return r


# --- the table ----------------------------------------------------------------


def table(results: dict, args) -> str:
    lines = [f"Big state, Tern vs Mosquitto — scripts/bench-state.py, {time.strftime('%Y-%m-%d %H:%M')}", ""]
    p = lines.append

    def row(label, key, fmt, better="lower"):
        m, t = results[part].get("mosquitto", {}).get(key), results[part].get("tern", {}).get(key)
        ratio = f"**{t / m:.2f}×**" if m and t is not None else "–"
        show = lambda v: "–" if v is None else fmt(v)  # noqa: E731
        p(f"| {label} | {show(m)} | {show(t)} | {ratio} ({better} is better) |")

    secs = lambda v: f"{v:.2f} s"  # noqa: E731
    part = "retained"
    if part in results:
        n = args.retained
        p(f"**{n:,} retained messages** (64-byte payloads, topics `state/site-S/device-D`; persistence on)")
        p("")
        p("| figure | mosquitto | tern | tern/mosquitto |")
        p("|---|---:|---:|---:|")
        row("retained messages set per second (4 connections, QoS 0)", "set_rate", lambda v: f"{v:,.0f}", "higher")
        row("broker CPU per retained message set (until idle: its store's writes too)", "set_cpu_us",
            lambda v: f"{v:.2f} µs")
        row("the same plus the CPU of stopping (Mosquitto writes them then)", "kept_cpu_us",
            lambda v: f"{v:.2f} µs")
        row("RSS with them", "rss_mib", lambda v: f"{v:.1f} MiB")
        row("memory per retained message (RSS growth / N)", "bytes_per_retained", lambda v: f"{v:.0f} B")
        row("p2p 16 pairs QoS 1 -w 100 meanwhile (tern bench, 5 s)", "p2p_rate", lambda v: f"{v:,.0f} msg/s", "higher")
        row("a `#` subscriber (mosquitto_sub) has all it gets", "all_s", secs, "lower for as many")
        row("retained messages it got", "all_got", lambda v: f"{v:,}", "higher")
        row("… per second", "all_rate", lambda v: f"{v:,.0f}", "higher")
        row("stop (SIGTERM until exit)", "stop_s", secs)
        row("restart: start until a new subscriber gets a retained message", "restart_s", secs)
        row("RSS after the restart", "restart_rss_mib", lambda v: f"{v:.1f} MiB")
        row("the same after the restart", "again_s", secs, "lower for as many")
        row("retained messages it got", "again_got", lambda v: f"{v:,}", "higher")
        row("… per second", "again_rate", lambda v: f"{v:,.0f}", "higher")
        p("")
    part = "subscriptions"
    if part in results:
        p(f"**{args.clients * args.filters:,} subscriptions over {args.clients:,} clients** "
          f"({args.filters} filters each in one SUBSCRIBE: exact `fleet/site-S/device-D/cmd/K`, "
          "`fleet/+/device-D/K/#`, shared `fleet/site-S/+/tempK`; persistence off)")
        p("")
        p("| figure | mosquitto | tern | tern/mosquitto |")
        p("|---|---:|---:|---:|")
        row("subscriptions per second (all SUBSCRIBEs written at once)", "subscribe_rate",
            lambda v: f"{v:,.0f}", "higher")
        row("broker CPU per subscription", "subscribe_cpu_us", lambda v: f"{v:.2f} µs")
        row("RSS with them", "rss_mib", lambda v: f"{v:.1f} MiB")
        row("memory per subscription (RSS growth / subscriptions)", "bytes_per_subscription", lambda v: f"{v:.0f} B")
        row("routing CPU per message matching nothing, no subscriptions", "route_unmatched_empty_us",
            lambda v: f"{v:.2f} µs")
        row("the same with every subscription", "route_unmatched_full_us", lambda v: f"{v:.2f} µs")
        row("routing CPU per message matched by one client (delivered)", "route_matched_us",
            lambda v: f"{v:.2f} µs")
        got = "; ".join(f"{b}: {r['delivered']:,}" for b, r in results[part].items())
        p("")
        p(f"Messages {args.publishes:,} published to topics each matched by one client; delivered: {got}. "
          "Routing CPU is the broker's CPU while one connection published them all, "
          "divided by their number.")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--retained", type=int, default=1_000_000)
    ap.add_argument("--clients", type=int, default=19_000)
    ap.add_argument("--filters", type=int, default=53)
    ap.add_argument("--publishes", type=int, default=200_000)
    ap.add_argument("--only", choices=["retained", "subscriptions"])
    args = ap.parse_args()

    shutil.rmtree(OUT, ignore_errors=True)
    for d in ("logs", "runs", "data"):
        (OUT / d).mkdir(parents=True)
    (OUT / "commands.txt").write_text("")
    if not (shutil.which("mosquitto") or os.path.exists("/usr/sbin/mosquitto")) or not shutil.which("mosquitto_sub"):
        say("Mosquitto not found: installing the Debian packages mosquitto and mosquitto-clients")
        sudo = [] if os.getuid() == 0 else ["sudo"]
        subprocess.run(sudo + ["apt-get", "update", "-qq"], check=True)
        subprocess.run(sudo + ["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-qq",
                               "mosquitto", "mosquitto-clients"], check=True)
    argv = ["cargo", "build", "--release", "--bin", "tern"]
    log_command(argv)
    subprocess.run(argv, cwd=ROOT, check=True)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard != resource.RLIM_INFINITY and hard < args.clients + 300:
        raise SystemExit(f"open-files limit {hard} is below --clients {args.clients} + 300: lower --clients")

    results: dict = {}
    began = time.monotonic()
    for part in ("retained", "subscriptions"):
        if args.only and args.only != part:
            continue
        results[part] = {}
        for broker in ("mosquitto", "tern"):
            if part == "retained":
                results[part][broker] = retained_part(broker, args.retained)
            else:
                results[part][broker] = subscriptions_part(broker, args.clients, args.filters, args.publishes)
    (OUT / "results.json").write_text(json.dumps(results, indent=1))
    text = table(results, args) + f"\nThe script took {time.monotonic() - began:.0f} s.\n"
    (OUT / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
