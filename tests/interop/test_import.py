"""Moving from Mosquitto: `tern import` on configurations written as
Mosquitto's documentation shows them (and accepted by a real Mosquitto),
with a password file made by Mosquitto's own mosquitto_passwd; the tern.toml
it writes starts `tern serve`, which serves mosquitto_pub and mosquitto_sub
as the Mosquitto did."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
import tomllib
from pathlib import Path

import pytest

from interop_support import free_port, need
from tools_support import MOSQUITTO, TERN, require_tern_binary

HOST = "127.0.0.1"


def wait_port(port: int, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 10
    while True:
        assert proc.poll() is None, f"{what} exited: {proc.stderr.read() if proc.stderr else ''}"
        with socket.socket() as s:
            if s.connect_ex((HOST, port)) == 0:
                return
        assert time.monotonic() < deadline, f"{what} does not listen on {port}"
        time.sleep(0.05)


def run(*argv, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=30, **kwargs)


@contextlib.contextmanager
def tern_serving(config: Path, *ports: int):
    """`tern serve --config CONFIG`, listening on `ports`, until the block ends."""
    # In the config's folder: its default data_dir is relative to where it runs.
    tern = subprocess.Popen([TERN, "serve", "--config", config], cwd=config.parent,
                            stderr=subprocess.PIPE, text=True)
    try:
        for port in ports:
            wait_port(port, tern, "tern serve")
        yield tern
    finally:
        tern.terminate()
        tern.wait(timeout=10)


def mosquitto_accepts(conf: Path, port: int) -> None:
    """A real Mosquitto starts on `conf` and listens on `port`."""
    proc = subprocess.Popen([MOSQUITTO, "-c", conf], cwd=conf.parent, stderr=subprocess.PIPE, text=True)
    try:
        wait_port(port, proc, "mosquitto")
    finally:
        proc.terminate()
        proc.wait(timeout=5)


def test_a_mosquitto_setup_with_users_acl_and_websockets_moves_to_tern(tmp_path):
    require_tern_binary()
    need("mosquitto", "apt-get install mosquitto")
    need("mosquitto_passwd", "apt-get install mosquitto")
    need("mosquitto_pub", "apt-get install mosquitto-clients")
    port, ws_port = free_port(), free_port()
    # Mosquitto's tools make the files, as an operator did.
    assert run("mosquitto_passwd", "-c", "-b", tmp_path / "passwd", "alice", "s3cret").returncode == 0
    (tmp_path / "acl").write_text("user alice\ntopic readwrite house/#\n")
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "websockets.conf").write_text(f"listener {ws_port} {HOST}\nprotocol websockets\n")
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        "# As in mosquitto.conf(5): a listener, no anonymous clients, users and an ACL.\n"
        "per_listener_settings false\n"
        f"listener {port} {HOST}\n"
        "allow_anonymous false\n"
        "password_file passwd\n"
        "acl_file acl\n"
        "persistence true\n"
        "persistence_location data/\n"
        "autosave_interval 1800\n"
        "log_dest stderr\n"
        "include_dir conf.d\n"
        + ("user root\n" if os.geteuid() == 0 else "")
    )
    (tmp_path / "data").mkdir()
    mosquitto_accepts(conf, port)

    out = tmp_path / "tern.toml"
    imported = run(TERN, "import", conf, "-o", out)
    assert imported.returncode == 0, imported.stderr
    toml = out.read_text()
    assert "autosave_interval 1800" in toml, "what is not carried over is kept as a comment"
    assert 'transport = "ws"' in toml, toml

    with tern_serving(out, port, ws_port):
        login = ["-h", HOST, "-p", str(port), "-u", "alice", "-P", "s3cret"]
        pub = run("mosquitto_pub", *login, "-t", "house/room1/temp", "-m", "22.5", "-q", "1", "-r")
        assert pub.returncode == 0, pub.stderr
        sub = run("mosquitto_sub", *login, "-t", "house/#", "-C", "1", "-W", "10")
        assert (sub.returncode, sub.stdout.strip()) == (0, "22.5"), sub.stderr
        # Anonymous clients stay out, as they did.
        anonymous = run("mosquitto_pub", "-h", HOST, "-p", str(port), "-t", "house/x", "-m", "1")
        assert anonymous.returncode != 0, "an anonymous client got in"
        assert (tmp_path / "data" / "tern.redb").exists(), "the data went to persistence_location"


def test_a_bridge_is_carried_over_and_forwards_to_the_mosquitto_it_named(tmp_path):
    """An edge Mosquitto's configuration with a `connection` section (as
    mosquitto.conf(5) writes one), accepted by a real Mosquitto, imports to
    a [[bridges]] entry; `tern serve` on it forwards to the remote Mosquitto
    under the remote prefix, and brings the `in` topic back."""
    require_tern_binary()
    need("mosquitto_sub", "apt-get install mosquitto-clients")
    remote_port, port = free_port(), free_port()
    remote_conf = tmp_path / "remote.conf"
    remote_conf.write_text(f"listener {remote_port} {HOST}\nallow_anonymous true\n")
    remote = subprocess.Popen([MOSQUITTO, "-c", remote_conf], stderr=subprocess.PIPE, text=True)
    try:
        wait_port(remote_port, remote, "the remote mosquitto")
        conf = tmp_path / "mosquitto.conf"
        conf.write_text(
            f"listener {port} {HOST}\n"
            "allow_anonymous true\n"
            "\n"
            "connection cloud\n"
            f"address {HOST}:{remote_port}\n"
            'topic sensors/# out 1 "" site/17/\n'
            "topic commands/# in 1\n"
            "restart_timeout 1\n"
        )
        mosquitto_accepts(conf, port)
        out = tmp_path / "tern.toml"
        imported = run(TERN, "import", conf, "-o", out)
        assert imported.returncode == 0, imported.stderr
        assert "[[bridges]]" in out.read_text()
        with tern_serving(out, port):
            at_remote = subprocess.Popen(
                ["mosquitto_sub", "-h", HOST, "-p", str(remote_port), "-t", "site/17/sensors/#",
                 "-C", "1", "-W", "20", "-v"], stdout=subprocess.PIPE, text=True)
            at_edge = subprocess.Popen(
                ["mosquitto_sub", "-h", HOST, "-p", str(port), "-t", "commands/#",
                 "-C", "1", "-W", "20", "-v"], stdout=subprocess.PIPE, text=True)
            # Published until each arrives: the bridge connects within its
            # restart timeout, and both subscribers must be in place.
            deadline = time.monotonic() + 20
            while at_remote.poll() is None or at_edge.poll() is None:
                assert time.monotonic() < deadline, "the bridge did not forward both ways"
                run("mosquitto_pub", "-h", HOST, "-p", str(port), "-t", "sensors/boiler", "-m", "71", "-q", "1")
                run("mosquitto_pub", "-h", HOST, "-p", str(remote_port), "-t", "commands/boiler", "-m", "off", "-q", "1")
                time.sleep(0.3)
            assert at_remote.stdout.read().strip() == "site/17/sensors/boiler 71"
            assert at_edge.stdout.read().strip() == "commands/boiler off"
    finally:
        remote.terminate()
        remote.wait(timeout=5)


def test_the_security_guide_s_mosquitto_example_imports_as_the_guide_translates_it(tmp_path):
    """docs/security.md shows a Mosquitto configuration and its tern.toml:
    `tern import` writes those listeners, and nothing is left behind."""
    require_tern_binary()
    text = (Path(__file__).resolve().parents[2] / "docs" / "security.md").read_text()
    start = text.index("listener 1883 127.0.0.1")
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(text[start:text.index("```", start)])
    guide_start = text.index("```toml", start) + len("```toml")
    guide = tomllib.loads(text[guide_start:text.index("```", guide_start)])
    imported = run(TERN, "import", conf)
    assert imported.returncode == 0, imported.stderr
    assert "Not carried over" not in imported.stdout, imported.stdout
    got = tomllib.loads(imported.stdout)
    # The WebSocket path is said explicitly; Mosquitto 2 refuses anonymous
    # clients once listeners are configured, and so does the import.
    for listener in got["listeners"]:
        if listener.get("ws_path") == "/mqtt":
            del listener["ws_path"]
        if listener["transport"] == "tcp":
            del listener["transport"]
    assert got["listeners"] == guide["listeners"]
    assert got["allow_anonymous"] is False
