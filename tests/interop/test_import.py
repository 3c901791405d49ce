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
    tern = subprocess.Popen([TERN, "serve", "--config", config], stderr=subprocess.PIPE, text=True)
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


def test_a_bridge_is_not_carried_over_and_the_exit_code_says_so(tmp_path):
    require_tern_binary()
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        f"listener {port} {HOST}\n"
        "allow_anonymous true\n"
        "\n"
        "connection cloud\n"
        "address broker.example.com:1883\n"
        "topic sensors/# out 1 local/ remote/\n"
    )
    out = tmp_path / "tern.toml"
    imported = run(TERN, "import", conf, "-o", out)
    assert imported.returncode == 3, imported.stderr
    assert "IMPORTANT" in imported.stderr and "connection cloud" in imported.stderr, imported.stderr
    toml = out.read_text()
    assert "# IMPORTANT" in toml and "topic sensors/# out 1 local/ remote/" in toml, toml
    assert "allow_anonymous = true" in toml
    # What could be carried over was: it serves.
    with tern_serving(out, port):
        pass


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
