"""Every example in README.md and docs/*.md, run as a reader would run it, so
the docs cannot drift from the code.

Each fenced code block is found in the Markdown and must have an entry in
CHECKS (keyed by file and first command line) saying how it is checked: run
as it is, run against a test broker (the port, and a host name such as
broker.example.org, swapped for the test broker's), loaded by `tern serve`,
or (for the few that take minutes or a toolchain) where else it is run. A
new example without a check fails `test_every_example_has_a_check`.
"""

from __future__ import annotations

import glob
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from interop_support import REPO_ROOT, free_port

TERN = REPO_ROOT / "target" / "debug" / "tern"
MOSQUITTO = shutil.which("mosquitto", path=os.environ.get("PATH", "") + ":/usr/sbin")
#: `tern sub -W` and `mosquitto_sub -W` exit with these when time runs out.
TIMED_OUT = {"tern": 5, "mosquitto_sub": 27}


def blocks():
    """(file, line, language, text) of every fenced block."""
    found = []
    for path in ["README.md", *sorted(glob.glob("docs/*.md", root_dir=REPO_ROOT))]:
        text = (REPO_ROOT / path).read_text()
        for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M):
            line = text[: m.start()].count("\n") + 1
            found.append((path, line, m.group(1), m.group(2)))
    return found


def key(path: str, text: str) -> str:
    """How CHECKS names a block: its file and first command, comment cut off."""
    lines = [l.split("  #")[0].strip() for l in text.splitlines() if not l.strip().startswith("#")]
    return f"{path}: {next((l for l in lines if l), '')}"


def commands(text: str) -> list[str]:
    """The command lines of a shell block: comments dropped, `\\` joined."""
    out, current = [], ""
    for line in text.splitlines():
        line = line.split("  #")[0].rstrip() if not line.lstrip().startswith("#") else ""
        if not line:
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        out.append(current + line)
        current = ""
    return out


# ---------------------------------------------------------------------------
# The setting examples run in: certificates made by the docs' own openssl
# recipe, a plain broker and a TLS broker (mutual TLS on a second listener).
# ---------------------------------------------------------------------------

OPENSSL_KEY = "docs/security.md: openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \\"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder with the certificates from the openssl recipe (run with
    `sh -e`, as the issue asks: it must not need bash), and the files the
    examples name (app.log, cat.jpg)."""
    if not shutil.which("openssl"):
        pytest.skip("openssl not installed")
    d = tmp_path_factory.mktemp("docs")
    recipe = next(t for p, _, _, t in blocks() if key(p, t) == OPENSSL_KEY)
    run = subprocess.run(["sh", "-e", "-c", recipe], cwd=d, capture_output=True, timeout=60)
    assert run.returncode == 0, run.stderr.decode(errors="replace")
    for name in ["ca.pem", "server.pem", "server.key", "device-1.pem", "device-1.key"]:
        assert (d / name).is_file(), name
    (d / "app.log").write_text("started\nready\n")
    (d / "cat.jpg").write_bytes(bytes(range(256)) * 4)
    return d


def start_tern(config: Path, cwd: Path, listeners: int) -> subprocess.Popen:
    """`tern serve --config CONFIG` in `cwd` (its data directory beside the
    config), once it listens on all its listeners; fails the test with its
    log if it exits instead."""
    data_dir = config.with_suffix(".data")
    shutil.rmtree(data_dir, ignore_errors=True)
    proc = subprocess.Popen([TERN, "serve", "--config", config, "--data-dir", data_dir], cwd=cwd,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "NO_COLOR": "1"})
    log: list[str] = []
    deadline = time.monotonic() + 20
    while sum("listening on" in l for l in log) < listeners:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            pytest.fail(f"tern serve refused {config}:\n{config.read_text()}\n{''.join(log)}", pytrace=False)
        log.append(line)
        assert time.monotonic() < deadline, "".join(log)
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def brokers(workdir):
    """A Tern broker with a plain listener, a TLS one and a mutual-TLS one,
    all on free ports: {"plain": port, "tls": port, "mtls": port}."""
    ports = {"plain": free_port(), "tls": free_port(), "mtls": free_port()}
    config = workdir / "brokers.toml"
    config.write_text(
        f'sys_interval_secs = 1\n'
        f'[[listeners]]\nbind = "127.0.0.1:{ports["plain"]}"\n'
        f'[[listeners]]\nbind = "127.0.0.1:{ports["tls"]}"\ntransport = "tls"\n'
        f'cert_file = "server.pem"\nkey_file = "server.key"\n'
        f'[[listeners]]\nbind = "127.0.0.1:{ports["mtls"]}"\ntransport = "tls"\n'
        f'cert_file = "server.pem"\nkey_file = "server.key"\nca_file = "ca.pem"\n'
        f'require_certificate = true\nuse_identity_as_username = true\n'
    )
    proc = start_tern(config, workdir, 3)
    yield ports
    stop(proc)


def localize(line: str, ports: dict) -> str:
    """A command as the docs write it, pointed at the test brokers: the
    example host names become localhost (the name the test certificate
    carries), and the documented ports become the test brokers'."""
    line = re.sub(r"broker\.example\.(org|com)", "localhost", line)
    line, _, redirect = line.partition(" < ")
    words = shlex.split(line)
    port = ports["mtls"] if "--cert" in words else ports["tls"] if "--cafile" in words else ports["plain"]
    if "-p" in words:
        words[words.index("-p") + 1] = str(port)
    else:
        words += ["-p", str(port)]
    if "-h" not in words:
        words += ["-h", "127.0.0.1"]
    if words[0] == "tern":
        words[0] = str(TERN)
    return shlex.join(words) + (f" < {redirect}" if redirect else "")


def run_line(line: str, cwd: Path, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", line], cwd=cwd, capture_output=True, timeout=timeout)


def check_clients(text: str, workdir: Path, ports: dict) -> None:
    """Runs every command of the block against the test brokers. A
    subscriber is given one message and a few seconds (`-C 1 -W 3` unless it
    sets its own), so it ends: it must end with success or its time-out code,
    which shows that its options parsed and it connected and subscribed."""
    for line in commands(text):
        tool = os.path.basename(shlex.split(line)[0])
        local = localize(line, ports)
        subscriber = tool == "mosquitto_sub" or line.startswith("tern sub")
        if subscriber and " -W " not in local:
            local += " -W 3"
        out = run_line(local, workdir)
        allowed = {0, TIMED_OUT["tern" if tool == "tern" else "mosquitto_sub"]} if subscriber else {0}
        assert out.returncode in allowed, (
            f"{line}\n(run as: {local})\nexit {out.returncode}\n{out.stderr.decode(errors='replace')}"
        )


def check_pub_sub_pair(sub_text: str, pub_text: str, workdir: Path, ports: dict, expect: str) -> None:
    """A subscriber example and a publisher example run together: the
    subscriber prints what the docs say it prints."""
    (sub_line,), (pub_line,) = commands(sub_text), commands(pub_text)
    # Line-buffered, or mosquitto_sub keeps its output until it exits.
    stdbuf = "stdbuf -oL " if shutil.which("stdbuf") else ""
    sub = subprocess.Popen(["sh", "-c", stdbuf + localize(sub_line, ports) + " -d -C 1 -W 10"], cwd=workdir,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # Ready once its debug output shows the SUBACK.
        deadline = time.monotonic() + 10
        while "SUBACK" not in sub.stdout.readline():
            assert time.monotonic() < deadline and sub.poll() is None, "the subscriber never subscribed"
        pub = run_line(localize(pub_line, ports), workdir)
        assert pub.returncode == 0, pub.stderr
        sub.wait(timeout=10)
        rest = sub.stdout.read()  # through the buffer readline() filled
    finally:
        sub.kill()
    assert expect in rest, rest


def check_tern_config(text: str, workdir: Path) -> None:
    """A TOML example, its files swapped for the test certificates (and an
    ACL and a password file made here) and its addresses for free ports on
    loopback, is accepted by `tern serve`: it starts and listens."""
    passwd = workdir / "passwd"
    if not passwd.exists():
        subprocess.run([TERN, "passwd", "-c", "-b", passwd, "alice", "secret"], check=True)
    (workdir / "acl").write_text(acl_example())
    files = {"pem": "server.pem", "key": "server.key"}

    def swap_path(m):
        name = os.path.basename(m.group(1))
        if "ca" in name:
            return '"ca.pem"'
        if name.endswith((".pem", ".key")):
            return f'"{files[name.rsplit(".", 1)[1]]}"'
        return '"acl"' if "acl" in name else '"passwd"'

    config = re.sub(r'"(/etc/[^"]+)"', swap_path, text)
    config = re.sub(r'bind = "[^"]+"', lambda _: f'bind = "127.0.0.1:{free_port()}"', config)
    (workdir / "example.toml").write_text(config)
    stop(start_tern(workdir / "example.toml", workdir, max(1, config.count("[[listeners]]"))))


def acl_example() -> str:
    return next(t for p, _, lang, t in blocks() if lang == "text" and key(p, t).endswith("topic read public/#"))


# ---------------------------------------------------------------------------
# The examples and their checks.
# ---------------------------------------------------------------------------

def README(first: str) -> str:
    return f"README.md: {first}"


def SECURITY(first: str) -> str:
    return f"docs/security.md: {first}"


#: Examples run by other means, and where.
ELSEWHERE = {
    README("cargo run --release -- serve"):
        ".ci/run builds the broker and runs `cargo test --workspace`",
    README("scripts/deb.sh"):
        ".ci/run runs scripts/deb-test.sh: builds the package, installs it with dpkg -i, serves "
        "through it as the tern user, purges it",
    "docs/performance.md: scripts/bench-compare.sh":
        "minutes long: its options are checked against --help (test_bench_compare_options_exist)",
    "docs/performance.md: cargo bench -p tern-codec":
        "`cargo clippy --all-targets` in .ci/run builds every bench; the files it names are checked to exist",
    README("tern bench fanout -S 64 -q 1 -d 10"):
        "run scaled down by test_bench_examples_run",
    SECURITY("tern passwd [-c] FILE USER"):
        "the synopsis of `tern passwd`: test_passwd_synopsis_matches_the_tool",
    SECURITY("topic read public/#"): "loaded by `tern serve` with each TOML example (check_tern_config)",
    SECURITY('INFO tern_broker::limits: refused: the ACL does not allow writing it client_id=alice-phone '
             'username="alice" packet="PUBLISH" topic="bob/door"'):
        "the log line crates/tern/tests/serve.rs acl_refusals_are_logged_with_client_user_and_topic checks",
    SECURITY("listener 1883 127.0.0.1"): "Mosquitto's syntax: loaded by a real Mosquitto (test_mosquitto_example_loads)",
}


def test_every_example_has_a_check():
    known = set(ELSEWHERE) | set(CLIENT_BLOCKS) | set(PAIRS) | set(PAIRS.values()) | {OPENSSL_KEY, PYTHON, MOSQUITTO_BLOCK}
    missing = [f"{p}:{line} ({lang}) {key(p, t)}" for p, line, lang, t in blocks()
               if key(p, t) not in known and lang != "toml"]
    assert not missing, "examples without a check in test_docs.py:\n" + "\n".join(missing)


PYTHON = README("import threading")


def test_readme_python_example_prints_every_time(brokers, workdir):
    """The README's paho example, run 10 times: it prints the message each
    time (it once exited before the subscriber printed, 3 runs in 30)."""
    text = next(t for p, _, _, t in blocks() if key(p, t) == PYTHON)
    script = text.replace("1883", str(brokers["plain"]))
    for _ in range(10):
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "house/room1/temp 22.5", out.stdout + out.stderr


#: Blocks of client commands, each run against the test brokers.
CLIENT_BLOCKS = [
    README("tern sub -t 'house/#' -v"),
    README("mosquitto_sub -h 127.0.0.1 -t '$SYS/#' -v"),
    SECURITY("mosquitto_sub -h broker.example.org -p 8883 --cafile ca.pem -t 'sensors/#'"),
    SECURITY("tern sub -h broker.example.org --cafile ca.pem -t 'sensors/#'"),
    SECURITY("mosquitto_sub -h 127.0.0.1 -p 8883 --cafile ca.pem -t test -v"),
    SECURITY("mosquitto_sub -h broker.example.com -t '$SYS/broker/limits/#' -v"),
]


@pytest.mark.parametrize("name", CLIENT_BLOCKS)
def test_client_examples_run(name, brokers, workdir):
    if not shutil.which("mosquitto_sub") and "mosquitto" in name:
        pytest.skip("mosquitto-clients not installed")
    text = next(t for p, _, _, t in blocks() if key(p, t) == name)
    check_clients(text, workdir, brokers)


#: A subscriber example, the publisher example that goes with it, and what
#: the subscriber prints.
PAIRS = {
    README("mosquitto_sub -h 127.0.0.1 -t 'house/#' -v"): README("mosquitto_pub -h 127.0.0.1 -t house/room1/temp -m 22.5"),
}


def test_readme_mosquitto_pair_prints_what_it_says(brokers, workdir):
    if not shutil.which("mosquitto_sub"):
        pytest.skip("mosquitto-clients not installed")
    for sub_key, pub_key in PAIRS.items():
        sub = next(t for p, _, _, t in blocks() if key(p, t) == sub_key)
        pub = next(t for p, _, _, t in blocks() if key(p, t) == pub_key)
        check_pub_sub_pair(sub, pub, workdir, brokers, "house/room1/temp 22.5")


MOSQUITTO_BLOCK = README("mosquitto_sub -t 'house/#' -v")


def test_readme_mosquitto_clients_block(brokers, workdir):
    """`mosquitto_sub -t 'house/#' -v` / `mosquitto_pub -t … -r`: the retained
    reading reaches a subscriber that comes later."""
    if not shutil.which("mosquitto_sub"):
        pytest.skip("mosquitto-clients not installed")
    text = next(t for p, _, _, t in blocks() if key(p, t) == MOSQUITTO_BLOCK)
    sub_line, pub_line = commands(text)
    assert run_line(localize(pub_line, brokers), workdir).returncode == 0
    late = run_line(localize(sub_line, brokers) + " -C 1 -W 5", workdir)
    assert late.stdout.decode().strip() == "house/room1/temp 22.5", late.stderr


@pytest.mark.parametrize("where", [f"{p}:{line}" for p, line, lang, _ in blocks() if lang == "toml"])
def test_toml_examples_are_accepted(where, workdir):
    text = next(t for p, line, _, t in blocks() if f"{p}:{line}" == where)
    check_tern_config(text, workdir)


def test_mosquitto_example_loads(workdir):
    """The Mosquitto configuration shown for migrating is one a real
    Mosquitto accepts (ports and files swapped for test ones)."""
    if not MOSQUITTO:
        pytest.skip("mosquitto not installed")
    text = next(t for p, _, _, t in blocks() if key(p, t) == SECURITY("listener 1883 127.0.0.1"))
    conf = re.sub(r"listener \d+", lambda _: f"listener {free_port()}", text)
    conf = re.sub(r"/etc/mosquitto/\S+/(\S+)", lambda m: str(workdir / m.group(1)), conf)
    if os.geteuid() == 0:
        conf += "user root\n"
    (workdir / "mosquitto.conf").write_text(conf)
    proc = subprocess.Popen([MOSQUITTO, "-c", "mosquitto.conf"], cwd=workdir, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)  # a refused configuration makes it exit at once
        assert proc.poll() is None, proc.stderr.read()
    finally:
        proc.terminate()
        proc.wait(timeout=5)


def test_bench_examples_run(brokers, workdir):
    """Each `tern bench` line of the README, shortened to one second and a
    few connections: it parses and completes."""
    text = next(t for p, _, _, t in blocks() if key(p, t).startswith(README("tern bench fanout")))
    for line in commands(text):
        short = re.sub(r"-d \d+", "-d 1", line)
        short = re.sub(r"-c \d+", "-c 50", short)
        short = re.sub(r"(tern bench \w+)", rf"\1 -p {brokers['plain']} --warmup 0 --quiet", short)
        if " -d " not in short:
            short = re.sub(r"(tern bench \w+[^&]*)", r"\1 -d 1 ", short)
        short = short.replace("tern ", f"{TERN} ")
        out = run_line(short + "; wait", workdir, timeout=60)
        assert out.returncode == 0, f"{line}\n(run as: {short})\n{out.stderr.decode(errors='replace')}"


def test_bench_compare_options_exist():
    text = next(t for p, _, _, t in blocks() if key(p, t).startswith("docs/performance.md: scripts/bench-compare.sh"))
    help_text = subprocess.run([REPO_ROOT / "scripts" / "bench-compare.sh", "--help"], capture_output=True,
                               text=True, timeout=10).stdout
    for option in set(re.findall(r"--[a-z]+", text)):
        assert option in help_text, option


def test_cargo_bench_files_exist():
    text = next(t for p, _, _, t in blocks() if key(p, t).startswith("docs/performance.md: cargo bench"))
    for path in re.findall(r"crates/\S+\.rs", text):
        assert (REPO_ROOT / path).is_file(), path


def test_passwd_synopsis_matches_the_tool(tmp_path):
    """The three forms `tern passwd` is documented with work as documented."""
    f = tmp_path / "passwd"
    assert subprocess.run([TERN, "passwd", "-c", "-b", f, "alice", "pw1"]).returncode == 0
    assert subprocess.run([TERN, "passwd", "-b", f, "bob", "pw2"]).returncode == 0
    assert subprocess.run([TERN, "passwd", "-D", f, "alice"]).returncode == 0
    assert [l.split(":")[0] for l in f.read_text().splitlines()] == ["bob"]
    # Asks twice, without echo: read from a pipe when there is no terminal.
    piped = subprocess.run([TERN, "passwd", f, "carol"], input="pw3\npw3\n", text=True, capture_output=True)
    assert piped.returncode == 0, piped.stderr
    assert "carol" in f.read_text()


# ---------------------------------------------------------------------------
# The errors a newcomer meets with the client tools: each says what to do.
# (Here because the TLS brokers and certificates above are what they need.)
# ---------------------------------------------------------------------------

def tern_tool(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([TERN, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=30)


def test_a_plain_client_on_a_tls_port_is_told_to_use_tls(brokers):
    out = tern_tool("pub", "-h", "localhost", "-p", brokers["tls"], "-t", "x", "-m", "y")
    assert out.returncode == 3, out.stderr
    assert "speaks TLS on this port" in out.stderr and "--cafile" in out.stderr, out.stderr


def test_a_tls_client_on_a_plain_port_is_told_it_is_not_tls(brokers, workdir):
    out = tern_tool("pub", "-h", "localhost", "-p", brokers["plain"], "--cafile", "ca.pem", "-t", "x", "-m", "y",
                    cwd=workdir)
    assert out.returncode == 3, out.stderr
    assert "not speak TLS" in out.stderr and "without --cafile" in out.stderr, out.stderr


def test_a_listener_wanting_a_client_certificate_says_so(brokers, workdir):
    out = tern_tool("pub", "-h", "localhost", "-p", brokers["mtls"], "--cafile", "ca.pem", "-t", "x", "-m", "y",
                    cwd=workdir)
    assert out.returncode == 3, out.stderr
    assert "--cert FILE and --key FILE" in out.stderr, out.stderr


def test_command_line_mistakes_exit_2():
    assert tern_tool("sub", "-p", "1").returncode == 2  # no -t
    assert tern_tool("sub", "-t", "a/#/b", "-p", "1").returncode == 2  # invalid filter
    assert tern_tool("pub", "--no-such-flag").returncode == 2


def test_debug_output_is_one_line_per_packet(brokers):
    out = tern_tool("pub", "-h", "127.0.0.1", "-p", brokers["plain"], "-i", "sensor-1", "-t", "house/t", "-m",
                    "22.5", "-q", "1", "-d")
    assert out.returncode == 0, out.stderr
    lines = out.stderr.splitlines()
    assert "Client sensor-1 sending PUBLISH (d0, q1, r0, m1, 'house/t', ... (4 bytes))" in lines, lines
    # 0x10: no matching subscribers (MQTT 5 says so in the PUBACK).
    assert "Client sensor-1 received PUBACK (Mid: 1, RC: 0x10)" in lines, lines
    assert not any("{" in l for l in lines), "Rust debug structs in the output"


def test_the_license_file_matches_cargo_toml():
    """Cargo.toml says Apache-2.0; LICENSE is that license's text."""
    assert 'license = "Apache-2.0"' in (REPO_ROOT / "Cargo.toml").read_text()
    text = (REPO_ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
