"""MQTT 3.1.1 packets on the wire, for the load scripts that talk to a broker
over raw sockets (scripts/bench-state.py, scripts/bench-cluster-failover.py,
scripts/attacks/connect_flood.py): independent of Tern's own codec, so what
they measure is not Tern agreeing with itself. Only the standard library."""

from __future__ import annotations

import asyncio

PINGREQ = b"\xc0\x00"


def varint(n: int) -> bytes:
    """A Remaining Length (spec 2.2.3)."""
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + varint(len(body)) + body


def string(s: str | bytes) -> bytes:
    """A length-prefixed UTF-8 string."""
    b = s.encode() if isinstance(s, str) else s
    return len(b).to_bytes(2, "big") + b


def connect_packet(client_id: str, keep_alive: int = 0, clean: bool = True) -> bytes:
    flags = 0x02 if clean else 0x00
    return packet(0x10, string("MQTT") + bytes([4, flags]) + keep_alive.to_bytes(2, "big") + string(client_id))


def publish_packet(topic: str, payload: bytes, retain: bool = False) -> bytes:
    """A QoS 0 PUBLISH."""
    return packet(0x30 | (1 if retain else 0), string(topic) + payload)


def subscribe_packet(packet_id: int, filters: list[str], qos: int = 0) -> bytes:
    """One SUBSCRIBE with every filter at `qos`."""
    return packet(0x82, packet_id.to_bytes(2, "big") + b"".join(string(f) + bytes([qos]) for f in filters))


async def read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One packet: (its first byte, its body). Raises IncompleteReadError if
    the broker closes."""
    first = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
    return first, await reader.readexactly(length) if length else b""
