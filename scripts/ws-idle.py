#!/usr/bin/env python3
"""Opens N idle MQTT 3.1.1 connections over WebSocket and holds them.

A load for scripts/bench-compare.sh's ws-idle scenario, independent of Tern:
asyncio over raw sockets, the HTTP upgrade and masked binary frames written
here, CONNECT from scripts/mqtt_wire.py. Prints "open N" once all have their
CONNACK, then holds them (keep-alive 60 s, a PINGREQ frame every 50 s) until
it is killed or --hold seconds pass.

    scripts/ws-idle.py --port 18840 --connections 4000 --hold 30
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os

from mqtt_wire import connect_packet

PINGREQ = bytes([0xC0, 0x00])


def frame(payload: bytes) -> bytes:
    """A client's binary frame: masked, as RFC 6455 requires."""
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x82, 0x80 | n]) if n < 126 else bytes([0x82, 0x80 | 126]) + n.to_bytes(2, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def open_one(port: int, path: str, index: int) -> asyncio.StreamWriter:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Protocol: mqtt\r\n\r\n".encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        raise SystemExit(f"upgrade refused: {head[:60]!r}")
    writer.write(frame(connect_packet(f"ws-idle-{index}", keep_alive=60)))
    first = await reader.readexactly(2)  # the CONNACK's frame header
    await reader.readexactly(first[1] & 0x7F)
    asyncio.get_running_loop().create_task(keep(reader, writer))
    return writer


async def keep(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Reads (and drops) what comes; pings before the keep-alive runs out."""
    async def ping() -> None:
        while True:
            await asyncio.sleep(50)
            writer.write(frame(PINGREQ))
    pinger = asyncio.get_running_loop().create_task(ping())
    while await reader.read(1024):
        pass
    pinger.cancel()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/mqtt")
    parser.add_argument("--connections", type=int, default=4000)
    parser.add_argument("--hold", type=float, default=3600)
    parser.add_argument("--at-once", type=int, default=100, help="upgrades in progress at once")
    args = parser.parse_args()
    gate = asyncio.Semaphore(args.at_once)

    async def gated(index: int) -> asyncio.StreamWriter:
        async with gate:
            return await open_one(args.port, args.path, index)

    writers = await asyncio.gather(*(gated(i) for i in range(args.connections)))
    print(f"open {len(writers)}", flush=True)
    await asyncio.sleep(args.hold)


if __name__ == "__main__":
    asyncio.run(main())
