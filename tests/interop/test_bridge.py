"""Bridges with a real Mosquitto (the Debian package) on the other end, in
both directions: Tern bridging to Mosquitto (plain and over TLS with a
client certificate), and Mosquitto's own bridge into Tern (which speaks
Mosquitto's bridge flag). Then kill -9 under QoS 1 load: of the local Tern
(remote Mosquitto) and of the remote broker (a persistent Tern); paho-mqtt
counts, as a receiver does, that no acknowledged message is lost.

Tern to Tern, failover, prefixes and the restart with queued messages are
in crates/broker/tests/bridge.rs."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import paho.mqtt.client as mqtt
import pytest

from interop_support import (
    HOST, Broker, Certs, Client, DeliveryCount, free_port, need, tern, unique,
)

V311, V5 = mqtt.MQTTv311, mqtt.MQTTv5


def mosquitto(tmp_path: Path, name: str, lines: list[str] = ()) -> Broker:
    """A real Mosquitto (started) listening on a free port, anonymous
    clients allowed, with `lines` added to its mosquitto.conf."""
    need("mosquitto", "apt-get install mosquitto")
    b = Broker("{port}", tmp_path / f"{name}.log")
    conf = [f"listener {b.port} {HOST}", "allow_anonymous true"]
    if os.geteuid() == 0:
        conf.append("user root")  # else it cannot read the test's files
    conf_path = tmp_path / f"{name}.conf"
    conf_path.write_text("\n".join(conf + list(lines)) + "\n")
    b.argv = ["mosquitto", "-c", str(conf_path)]
    b.start()
    return b


def at(b: Broker) -> SimpleNamespace:
    return SimpleNamespace(host=HOST, port=b.port)


def connected(b: Broker, version=V5, **kwargs) -> Client:
    c = Client(at(b), version, **kwargs)
    c.connect()
    return c


def bridge_toml(name: str, remote: Broker, rules: list[tuple[str, str, int]], extra: str = "") -> str:
    lines = ["[[bridges]]", f'name = "{name}"', f'addresses = ["{HOST}:{remote.port}"]',
             "reconnect_min_ms = 100", "reconnect_max_ms = 500", extra]
    for pattern, direction, qos in rules:
        lines += ["[[bridges.topics]]", f'pattern = "{pattern}"', f'direction = "{direction}"', f"qos = {qos}"]
    return "\n".join(lines) + "\n"


def wait_state(b: Broker, name: str, value: bytes) -> None:
    """Waits until `$SYS/broker/connection/NAME/state` on `b` says `value`."""
    watcher = connected(b)
    watcher.subscribe(f"$SYS/broker/connection/{name}/state", qos=0)
    deadline = time.monotonic() + 15
    while True:
        m = watcher.get(timeout=max(0.1, deadline - time.monotonic()))
        if m.payload == value:
            break
    watcher.disconnect()


def wait_link(local: Broker, remote: Broker) -> None:
    """Waits until QoS 0 probes on sensors/probe cross from `local` to
    `remote`: the bridge is up and subscribed."""
    watcher = connected(remote)
    watcher.subscribe("sensors/probe", qos=0)
    prober = connected(local)
    deadline = time.monotonic() + 15
    while not watcher.drain(quiet=0.1):
        assert time.monotonic() < deadline, "the bridge never forwarded a probe"
        prober.publish("sensors/probe", b"probe", qos=0)
    watcher.disconnect()
    prober.disconnect()


def exchange(local: Broker, remote: Broker, version) -> None:
    """sensors/# goes out from `local` to `remote`, commands/# comes in,
    chat/# goes both ways; each message arrives once, on its side only."""
    wait_link(local, remote)
    at_remote = connected(remote, version)
    at_remote.subscribe("#", qos=1)
    at_local = connected(local, version)
    at_local.subscribe("#", qos=1)
    local_pub = connected(local, version)
    remote_pub = connected(remote, version)

    local_pub.publish("sensors/room1/temp", b"22.5", qos=1)
    remote_pub.publish("commands/room1/heat", b"on", qos=1)
    local_pub.publish("chat/from-local", b"a", qos=1)
    remote_pub.publish("chat/from-remote", b"b", qos=1)
    remote_pub.publish("private/remote", b"stays", qos=1)

    def seen(c: Client, n: int) -> list[tuple[str, bytes]]:
        got = []
        while len(got) < n:
            got += [(m.topic, m.payload) for m in c.get_n(1) if m.topic != "sensors/probe"]
        # A loop would bring chat messages back again.
        again = [m.topic for m in c.drain() if m.topic != "sensors/probe"]
        assert again == [], f"arrived again (a bridge loop?): {again}"
        return sorted(got)

    assert seen(at_remote, 5) == [
        ("chat/from-local", b"a"), ("chat/from-remote", b"b"), ("commands/room1/heat", b"on"),
        ("private/remote", b"stays"), ("sensors/room1/temp", b"22.5"),
    ]
    assert seen(at_local, 4) == [
        ("chat/from-local", b"a"), ("chat/from-remote", b"b"), ("commands/room1/heat", b"on"),
        ("sensors/room1/temp", b"22.5"),
    ]
    for c in (at_remote, at_local, local_pub, remote_pub):
        c.disconnect()


RULES = [("sensors/#", "out", 1), ("commands/#", "in", 1), ("chat/#", "both", 1)]


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_tern_bridges_to_mosquitto_both_ways(tmp_path, protocol):
    remote = mosquitto(tmp_path, "remote")
    local = tern(tmp_path, "local", bridge_toml("cloud", remote, RULES, f'protocol = "{protocol}"'))
    try:
        wait_state(local, "cloud", b"1")
        exchange(local, remote, V311 if protocol == "3.1.1" else V5)
        # Mosquitto gone: the state topic says so.
        remote.terminate()
        wait_state(local, "cloud", b"0")
    finally:
        local.cleanup()
        remote.cleanup()


def test_mosquittos_bridge_into_tern_both_ways(tmp_path):
    """Mosquitto's bridge connects with its bridge flag (protocol level
    0x84, try_private on by default): Tern must accept it and not send its
    messages back, or chat/# would loop between the two."""
    remote = tern(tmp_path, "remote")
    local = mosquitto(tmp_path, "local", [
        "connection to-tern",
        f"address {HOST}:{remote.port}",
        "topic sensors/# out 1",
        "topic commands/# in 1",
        "topic chat/# both 1",
        "restart_timeout 1",
    ])
    try:
        exchange(local, remote, V311)
    finally:
        local.cleanup()
        remote.cleanup()


def test_tern_bridges_to_mosquitto_over_tls_with_a_client_certificate(tmp_path):
    certs = Certs(tmp_path)
    remote = mosquitto(tmp_path, "remote", [
        f"listener {(tls_port := free_port())} {HOST}",
        f"cafile {certs.ca}", f"certfile {certs.server_cert}", f"keyfile {certs.server_key}",
        "require_certificate true",
    ])
    tls_remote = SimpleNamespace(port=tls_port)
    extra = f'ca_file = "{certs.ca}"\ncert_file = "{certs.client_cert}"\nkey_file = "{certs.client_key}"'
    local = tern(tmp_path, "local", bridge_toml("secure", tls_remote, RULES, extra))
    try:
        wait_state(local, "secure", b"1")
        exchange(local, remote, V5)
    finally:
        local.cleanup()
        remote.cleanup()


def kill_and_restart(b: Broker) -> None:
    b.terminate(signal.SIGKILL)
    b.stopped = False
    b.start()


@pytest.mark.parametrize("killed", ["local", "remote"])
def test_no_acknowledged_message_is_lost_when_a_broker_is_killed(tmp_path, killed):
    """paho publishes QoS 1 to Tern, which bridges to the remote broker,
    where a persistent paho subscriber counts; one of the two is killed -9
    twice under load. The remote is Mosquitto when the local Tern is killed,
    and a persistent Tern when the remote is (what Mosquitto acknowledged
    it keeps only in memory until its next autosave)."""
    # The backlog the bridge brings after each restart may reach the remote
    # before its subscriber is back: its queue must hold it (the remote's
    # own bound, 1000 by default, would drop and count the rest).
    if killed == "local":
        remote = mosquitto(tmp_path, "remote", ["max_queued_messages 100000"])
    else:
        remote = tern(tmp_path, "remote", "max_queued_messages = 100000\n", persistence=True)
    prefix = unique("load")
    local = tern(tmp_path, "local", bridge_toml("up", remote, [(f"{prefix}/#", "out", 1)]), persistence=True)
    victim = local if killed == "local" else remote
    count = DeliveryCount(sub_at=(HOST, remote.port), pub_at=(HOST, local.port), prefix=prefix, qos=1)
    try:
        count.start()
        for _ in range(2):
            time.sleep(1.5)
            kill_and_restart(victim)
        time.sleep(1.5)
        published, acked, delivered, lost, twice = count.finish(settle=30)
        assert acked > 500, f"only {acked} acknowledged: the load did not run\n{local.log_tail()}"
        assert lost == [], (f"{len(lost)} of {acked} acknowledged messages lost, first {lost[:10]} "
                            f"(sent {count.sent_when(lost[0])}, last {count.sent_when(lost[-1])})\n"
                            f"{remote.log_tail()}\nlocal {local.log_tail()}")
        print(f"{killed} killed twice: {published} published, {acked} acknowledged, {delivered} delivered, "
              f"{len(twice)} twice (QoS 1 allows)")
    finally:
        local.cleanup()
        remote.cleanup()
