#!/usr/bin/env python3
"""Parallel password guessing (docs/security.md, "Attacks").

CONCURRENCY connections from 127.0.0.1 keep guessing USER's password for
SECS seconds (MQTT 3.1.1 CONNECTs, each on a new connection); meanwhile a
legitimate client logs in every 200 ms from 127.0.0.2 with a right
password. Prints how many guesses the broker checked (answered "bad user
name or password") per second, how many it refused unchecked (return code 3),
and the legitimate client's worst and median login time.

    python3 scripts/attacks/guess.py --port 1883 --user alice \
        --good bob:bobpw --concurrency 400 --secs 20
"""
import argparse
import asyncio
import collections
import socket
import time


def connect_packet(client_id, user, password):
    def s(x):
        b = x.encode()
        return len(b).to_bytes(2, "big") + b
    body = s("MQTT") + bytes([4, 0xC2]) + (60).to_bytes(2, "big") + s(client_id) + s(user) + s(password)
    out, n = bytearray([0x10]), len(body)
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            break
    return bytes(out) + body


async def login(port, source, client_id, user, password):
    sock = socket.socket()
    sock.setblocking(False)
    sock.bind((source, 0))
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        writer.write(connect_packet(client_id, user, password))
        head = await reader.readexactly(4)
        return head[3]
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    finally:
        writer.close()


async def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=1883)
    ap.add_argument("--user", default="alice", help="the user whose password is guessed")
    ap.add_argument("--good", required=True, help="USER:PASSWORD of a legitimate client")
    ap.add_argument("--concurrency", type=int, default=400)
    ap.add_argument("--secs", type=float, default=20)
    ap.add_argument("--legit-only", action="store_true",
                    help="run only the legitimate client (start the attack in another process,"
                         " so that its load does not slow this one's measurements)")
    ap.add_argument("--attack-only", action="store_true")
    a = ap.parse_args()
    good_user, _, good_password = a.good.partition(":")
    deadline = time.monotonic() + a.secs
    answers = collections.Counter()

    async def guesser(n):
        i = 0
        while time.monotonic() < deadline:
            rc = await login(a.port, "127.0.0.1", f"g{n}-{i}", a.user, f"guess{n}-{i}")
            answers[rc] += 1
            i += 1

    async def legit():
        times = []
        while time.monotonic() < deadline:
            start = time.monotonic()
            rc = await login(a.port, "127.0.0.2", "legit", good_user, good_password)
            times.append(time.monotonic() - start)
            if rc != 0:
                print(f"legitimate login refused: return code {rc}")
            await asyncio.sleep(0.2)
        return times

    tasks = [] if a.attack_only else [legit()]
    if not a.legit_only:
        tasks += [guesser(n) for n in range(a.concurrency)]
    results = await asyncio.gather(*tasks)
    if not a.legit_only:
        checked = answers[4] + answers[5]
        print(f"{a.concurrency} connections for {a.secs:.0f} s: {checked} guesses checked "
              f"({checked / a.secs:.1f}/s), {answers[3]} refused unchecked, "
              f"{answers[None]} closed without answer")
    if not a.attack_only:
        times = sorted(results[0])
        print(f"legitimate login from another address: worst {times[-1] * 1000:.0f} ms, "
              f"median {times[len(times) // 2] * 1000:.1f} ms, {len(times)} logins")


if __name__ == "__main__":
    asyncio.run(main())
