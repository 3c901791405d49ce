"""Failover driver: N MQTT 3.1.1 clients with persistent sessions (clean
session 0, one QoS 1 subscription each) through HAProxy; SIGKILL one Tern
node; every client whose connection drops reconnects by itself through
HAProxy (at once, then backing off 50 ms, 100 ms ... 1 s with jitter) and
subscribes again when its session is not present. Measures the time from
the kill until every dropped client is connected (and subscribed) again,
and when HAProxy marked the node DOWN. Prints one JSON object."""

import argparse
import asyncio
import csv
import json
import os
import random
import signal
import socket
import time
import urllib.request

from mqtt_wire import connect_packet, publish_packet, read_packet, subscribe_packet


class Client:
    def __init__(self, i, front, run):
        self.i = i
        self.cid = f"{run.prefix}-{i}"
        self.topic = f"{run.prefix}/{i}"
        self.front = front
        self.run = run
        self.connected = asyncio.Event()
        self.dropped_at = None      # first drop after the kill (monotonic)
        self.back_at = None         # CONNACK again
        self.resubscribed_at = None
        self.connack_latency = None  # the successful reconnect: TCP connect to CONNACK
        self.suback_latency = None   # its SUBSCRIBE to SUBACK
        self.attempts = 0
        self.session_present_after = None
        self.received = 0
        self.drops = 0
        self.writer = None

    async def session(self, first):
        host, port = self.front
        started = time.monotonic()
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        writer.write(connect_packet(self.cid, self.run.keepalive, clean=False))
        kind, body = await asyncio.wait_for(read_packet(reader), 10)
        if kind != 0x20 or len(body) < 2 or body[1] != 0:
            writer.close()
            raise ConnectionError(f"CONNACK {kind:#x} {body.hex()}")
        present = bool(body[0] & 1)
        now = time.monotonic()
        if self.dropped_at is not None and self.back_at is None:
            self.back_at = now
            self.session_present_after = present
            self.connack_latency = now - started
        if (first or not present) and self.run.subscribe != "none":
            topic = self.topic if self.run.subscribe == "own" else f"{self.run.prefix}/all"
            writer.write(subscribe_packet(1, [topic], qos=1))
            while True:
                kind, body = await asyncio.wait_for(read_packet(reader), 10)
                if kind == 0x90:
                    if body[2:3] not in (b"\x00", b"\x01"):
                        raise ConnectionError(f"SUBACK {body.hex()}")
                    break
        if self.dropped_at is not None and self.resubscribed_at is None:
            self.resubscribed_at = time.monotonic()
            self.suback_latency = self.resubscribed_at - self.back_at
        self.writer = writer
        self.connected.set()
        return reader, writer

    async def serve(self, reader, writer):
        try:
            while True:
                kind, body = await read_packet(reader)
                if kind & 0xF0 == 0x30:
                    self.received += 1
                    qos = (kind >> 1) & 3
                    if qos:
                        tlen = int.from_bytes(body[:2], "big")
                        pid = body[2 + tlen:4 + tlen]
                        writer.write(b"\x40\x02" + pid)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            writer.close()
        self.connected.clear()
        self.writer = None

    async def life(self, permits):
        async with permits:
            while True:
                try:
                    self.attempts += 1
                    reader, writer = await self.session(True)
                    break
                except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError) as e:
                    self.run.errors_setup[type(e).__name__] = self.run.errors_setup.get(type(e).__name__, 0) + 1
                    await asyncio.sleep(0.2)
        self.attempts = 0
        while not self.run.stopping:
            await self.serve(reader, writer)
            if self.run.stopping:
                return
            self.drops += 1
            if self.run.killed_at is None:
                self.run.drops_before_kill += 1
            elif self.dropped_at is None:
                self.dropped_at = time.monotonic()
            delay = 0.05
            while not self.run.stopping:
                try:
                    self.attempts += 1
                    reader, writer = await self.session(False)
                    break
                except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError) as e:
                    name = type(e).__name__
                    self.run.errors_reconnect[name] = self.run.errors_reconnect.get(name, 0) + 1
                    await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                    delay = min(delay * 2, 1.0)


def haproxy_pool(sock_path, backend):
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(1)
        s.connect(sock_path)
        s.sendall(b"show stat\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    lines = data.decode(errors="replace").splitlines()
    lines[0] = lines[0][2:]
    out = {}
    for row in csv.DictReader(l for l in lines if l.strip()):
        if row["pxname"] == backend and row["svname"] not in ("FRONTEND", "BACKEND"):
            out[row["svname"]] = (row["status"], int(row["scur"] or 0))
    return out


def rss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None


def nats_subs(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/varz", timeout=2) as r:
            return json.load(r).get("subscriptions")
    except OSError:
        return None


class Run:
    pass


def readings(args):
    r = {"rss_kb": {name: rss_kb(pid) for name, pid in args.pids.items()}}
    r["nats_subscriptions"] = {f"nats{k + 1}": nats_subs(p) for k, p in enumerate(args.nats_http)}
    return r


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fronts", help="host:port,host:port (HAProxy frontends; client i uses front i mod count)")
    ap.add_argument("--stats", default="", help="HAProxy stats sockets, comma separated")
    ap.add_argument("--pool", help="only print the states of the backend's servers in this stats socket")
    ap.add_argument("--backend", default="tern_nodes")
    ap.add_argument("--clients", type=int, default=10000)
    ap.add_argument("--kill", help="name=pid of the node to SIGKILL; without it: connect, read memory, leave")
    ap.add_argument("--pids", default="", help="name=pid,... whose RSS is read")
    ap.add_argument("--nats-http", default="", help="NATS monitoring ports, comma separated")
    ap.add_argument("--concurrency", type=int, default=200)
    ap.add_argument("--keepalive", type=int, default=120)
    ap.add_argument("--settle", type=float, default=3)
    ap.add_argument("--timeout", type=float, default=60)
    ap.add_argument("--prefix", default="fo")
    ap.add_argument("--subscribe", choices=["own", "same", "none"], default="own",
                    help="each client subscribes to its own topic PREFIX/i (default), all to PREFIX/all, or none")
    args = ap.parse_args()
    if args.pool:
        print(" ".join(st for st, _ in haproxy_pool(args.pool, args.backend).values()))
        return
    args.pids = dict(kv.split("=") for kv in args.pids.split(",") if kv)
    args.nats_http = [int(p) for p in args.nats_http.split(",") if p]
    fronts = [(h, int(p)) for h, p in (f.rsplit(":", 1) for f in args.fronts.split(","))]
    stats = [s for s in args.stats.split(",") if s]

    run = Run()
    run.prefix, run.keepalive, run.subscribe = args.prefix, args.keepalive, args.subscribe
    run.stopping = False
    run.killed_at = None
    run.drops_before_kill = 0
    run.errors_setup, run.errors_reconnect = {}, {}
    result = {"clients": args.clients, "fronts": [f"{h}:{p}" for h, p in fronts]}
    result["before_connect"] = readings(args)

    clients = [Client(i, fronts[i % len(fronts)], run) for i in range(args.clients)]
    permits = asyncio.Semaphore(args.concurrency)
    t0 = time.monotonic()
    tasks = [asyncio.create_task(c.life(permits)) for c in clients]
    while sum(c.connected.is_set() for c in clients) < args.clients:
        if time.monotonic() - t0 > 180:
            break
        await asyncio.sleep(0.1)
    result["connect_s"] = round(time.monotonic() - t0, 2)
    result["connected"] = sum(c.connected.is_set() for c in clients)
    result["setup_errors"] = run.errors_setup
    await asyncio.sleep(args.settle)
    result["after_connect"] = readings(args)
    if not args.kill:
        await stop(run, clients, tasks)
        print(json.dumps(result, indent=1))
        return
    kill_name, kill_pid = args.kill.split("=")
    kill_pid = int(kill_pid)
    result["killed"] = kill_name
    pools = {s: haproxy_pool(s, args.backend) for s in stats}
    result["pool_before_kill"] = {
        os.path.basename(os.path.dirname(s)) + ":" + os.path.basename(s): {n: v[1] for n, v in p.items()} for s, p in pools.items()
    }
    on_victim = sum(p.get(kill_name, ("", 0))[1] for p in pools.values())
    result["connections_on_killed_node"] = on_victim

    # The kill, and HAProxy's view of it.
    run.killed_at = time.monotonic()
    os.kill(kill_pid, signal.SIGKILL)
    down_at = {}
    deadline = run.killed_at + args.timeout
    done_at = None
    tick = 0
    while time.monotonic() < deadline:
        now = time.monotonic()
        tick += 1
        for s in stats:
            if s not in down_at:
                try:
                    st = haproxy_pool(s, args.backend).get(kill_name, ("?", 0))[0]
                except OSError:
                    st = "?"
                if st.startswith("DOWN"):
                    down_at[s] = now
        if tick % 5:
            await asyncio.sleep(0.02)
            continue
        dropped = [c for c in clients if c.dropped_at is not None]
        if dropped and all(c.resubscribed_at is not None for c in dropped) and len(down_at) == len(stats):
            # no drop for a while: done
            last = max(c.dropped_at for c in dropped)
            if now - last > 2:
                done_at = now
                break
        await asyncio.sleep(0.02)
    k = run.killed_at
    dropped = [c for c in clients if c.dropped_at is not None]
    back = sorted(c.back_at - k for c in dropped if c.back_at is not None)
    resub = sorted(c.resubscribed_at - k for c in dropped if c.resubscribed_at is not None)
    seen = sorted(c.dropped_at - k for c in dropped)

    def pct(xs, p):
        return round(xs[min(len(xs) - 1, int(p * len(xs)))], 3) if xs else None

    result.update({
        "haproxy_down_s": {os.path.basename(os.path.dirname(s)): round(t - k, 3) for s, t in down_at.items()},
        "dropped": len(dropped),
        "drops_before_kill": run.drops_before_kill,
        "drop_seen_s": {"p50": pct(seen, 0.5), "max": pct(seen, 1.0)},
        "reconnected": len(back),
        "resubscribed": len(resub),
        "reconnect_s": {"p50": pct(back, 0.5), "p90": pct(back, 0.9), "p99": pct(back, 0.99), "max": pct(back, 1.0)},
        "resubscribed_s": {"p50": pct(resub, 0.5), "p99": pct(resub, 0.99), "max": pct(resub, 1.0)},
        "reconnect_connack_latency_s": {"p50": pct(sorted(c.connack_latency for c in dropped if c.connack_latency is not None), 0.5),
                                        "max": pct(sorted(c.connack_latency for c in dropped if c.connack_latency is not None), 1.0)},
        "resubscribe_suback_latency_s": {"p50": pct(sorted(c.suback_latency for c in dropped if c.suback_latency is not None), 0.5),
                                         "max": pct(sorted(c.suback_latency for c in dropped if c.suback_latency is not None), 1.0)},
        "back_after_2s": sum(1 for x in resub if x > 2),
        "all_back_s": pct(resub, 1.0) if len(resub) == len(dropped) and dropped else None,
        "attempts": {"total": sum(c.attempts for c in dropped), "max": max((c.attempts for c in dropped), default=0)},
        "reconnect_errors": run.errors_reconnect,
        "session_present_after": sum(1 for c in dropped if c.session_present_after),
        "timed_out": done_at is None,
        "connected_now": sum(c.connected.is_set() for c in clients),
    })
    result["after_failover"] = readings(args)

    # Every client, moved or not, gets one message published through HAProxy.
    try:
        reader, writer = await asyncio.open_connection(*fronts[0])
        writer.write(connect_packet(f"{args.prefix}-check", 60))
        await read_packet(reader)
        for c in clients:
            writer.write(publish_packet(c.topic, b"x"))
        writer.write(b"\xe0\x00")
        await writer.drain()
        t = time.monotonic()
        while time.monotonic() - t < 5 and sum(1 for c in clients if c.received) < args.clients:
            await asyncio.sleep(0.1)
        writer.close()
    except OSError as e:
        result["check_error"] = str(e)
    result["check_received"] = sum(1 for c in clients if c.received)
    result["check_received_moved"] = sum(1 for c in dropped if c.received)

    await stop(run, clients, tasks)
    print(json.dumps(result, indent=1))


async def stop(run, clients, tasks):
    run.stopping = True
    for c in clients:
        if c.writer:
            try:
                c.writer.write(b"\xe0\x00")
                c.writer.close()
            except Exception:
                pass
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


if __name__ == "__main__":
    asyncio.run(main())
