"""Helpers for test_tern_tools.py: `tern pub` / `tern sub` run as processes
against the Tern broker and against a real Mosquitto.

Brokers are started with interop_support.Broker (free loopback port, polled
until it accepts connections). Background processes (tern sub,
mosquitto_sub) have their stdout and stderr read by threads, and every wait
has a deadline; a subscriber is known to be ready when its debug output
(`-d`) shows the SUBACK, never after a sleep.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from interop_support import HOST, REPO_ROOT, Broker

#: The binary under test (relative to the repository root, like the broker).
TERN = REPO_ROOT / "target" / "debug" / "tern"
TERN_BROKER = "target/debug/tern serve --bind 127.0.0.1:{port} --data-dir {data_dir}"
#: mosquitto lives in /usr/sbin, which is not always on PATH.
MOSQUITTO = shutil.which("mosquitto", path=os.environ.get("PATH", "") + ":/usr/sbin:/usr/local/sbin")
MOSQUITTO_SUB = shutil.which("mosquitto_sub")
MOSQUITTO_PUB = shutil.which("mosquitto_pub")
STDBUF = shutil.which("stdbuf")

BROKER_KINDS = ["tern", "mosquitto"]
#: tern's -V values for the versions where the flag groups differ.
TOOL_VERSIONS = {"v311": "311", "v5": "5"}
MOSQ_CLI_VERSION = {"311": "mqttv311", "5": "mqttv5", "31": "mqttv31"}

#: Deadline for anything that is expected to happen.
TIMEOUT = 10.0
#: Bounded wait used only to check that a process does NOT exit / print.
QUIET = 0.5

#: `tern sub` is given this -W so that it can never outlive a failed test.
SUB_BACKSTOP_S = 15

_ANSI = re.compile(rb"\x1b\[[0-9;]*[A-Za-z]")
#: A SUBACK (any spelling: SUBACK, SubAck, sub_ack) in debug output.
SUBACK_RE = re.compile(r"sub_?ack", re.IGNORECASE)


def unique_topic(prefix: str = "tools") -> str:
    return f"{prefix}/{uuid.uuid4().hex[:12]}"


def unique_id(prefix: str = "tt") -> str:
    """Client ids stay within MQTT 3.1's 23 characters."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def tool_env() -> dict[str, str]:
    """The environment a person would have: no RUST_LOG, no RUST_BACKTRACE."""
    env = {k: v for k, v in os.environ.items() if k not in ("RUST_LOG", "RUST_BACKTRACE")}
    env["NO_COLOR"] = "1"
    return env


def strip_ansi(data: bytes) -> bytes:
    return _ANSI.sub(b"", data)


# --------------------------------------------------------------------------
# Brokers
# --------------------------------------------------------------------------


def require_tern_binary() -> None:
    if not TERN.exists():
        pytest.fail(
            f"{TERN} does not exist (build it with `cargo build --bin tern`)", pytrace=False
        )


def require_mosquitto() -> None:
    if not MOSQUITTO:
        pytest.skip("mosquitto not installed (apt-get install mosquitto)")


def start_broker(kind: str, tmp_path: Path, config: list[str] | None = None) -> Broker:
    """Start a broker of `kind` ("tern" or "mosquitto") on a free loopback port.

    For mosquitto, `config` lines are written to a config file that also gets
    `listener PORT 127.0.0.1`. The caller stops it with .cleanup()."""
    require_tern_binary()
    log = tmp_path / f"{kind}-broker.log"
    if kind == "tern":
        assert config is None, "the Tern broker is started without a config here"
        b = Broker(TERN_BROKER, log)
    elif kind == "mosquitto":
        require_mosquitto()
        if config is None:
            b = Broker(f"{MOSQUITTO} -p {{port}}", log)
        else:
            # The port is picked by Broker(); the config file name carries it
            # so that the template still contains {port}.
            b = Broker(f"{MOSQUITTO} -c {tmp_path}/mosquitto-{{port}}.conf", log)
            lines = [f"listener {b.port} {HOST}", *config]
            if hasattr(os, "geteuid") and os.geteuid() == 0:
                # Run as root, mosquitto switches to the `mosquitto` user,
                # which cannot read files in pytest's private tmp dir.
                lines.append("user root")
            (tmp_path / f"mosquitto-{b.port}.conf").write_text("\n".join(lines) + "\n")
    else:
        raise ValueError(kind)
    b.kind = kind
    b.start()
    return b


def dynsec_plugin() -> str | None:
    """Path of Mosquitto's dynamic security plugin, if installed."""
    for pattern in (
        "/usr/lib/*/mosquitto_dynamic_security.so",
        "/usr/lib/mosquitto_dynamic_security.so",
        "/usr/local/lib/mosquitto_dynamic_security.so",
        "/usr/lib/mosquitto/mosquitto_dynamic_security.so",
    ):
        found = glob.glob(pattern)
        if found:
            return found[0]
    return None


# --------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------


class Proc:
    """A background process with stdout (raw bytes) and stderr (lines)
    collected by threads; every wait has a deadline."""

    def __init__(self, argv: list[str], name: str | None = None, stdin=subprocess.DEVNULL):
        self.argv = [str(a) for a in argv]
        self.name = name or Path(self.argv[0]).name
        self.proc = subprocess.Popen(
            self.argv,
            cwd=REPO_ROOT,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=tool_env(),
        )
        self._cond = threading.Condition()
        self._stdout = bytearray()
        self._stderr: list[str] = []
        self._stdout_done = False
        self._stderr_done = False
        self._threads = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for t in self._threads:
            t.start()

    # reader threads
    def _read_stdout(self):
        fd = self.proc.stdout.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            with self._cond:
                if not chunk:
                    self._stdout_done = True
                    self._cond.notify_all()
                    return
                self._stdout += chunk
                self._cond.notify_all()

    def _read_stderr(self):
        for raw in self.proc.stderr:
            line = strip_ansi(raw).decode("utf-8", "replace").rstrip("\n")
            with self._cond:
                self._stderr.append(line)
                self._cond.notify_all()
        with self._cond:
            self._stderr_done = True
            self._cond.notify_all()

    # accessors
    @property
    def stdout(self) -> bytes:
        with self._cond:
            return bytes(self._stdout)

    @property
    def stderr(self) -> str:
        with self._cond:
            return "\n".join(self._stderr)

    def stdout_lines(self) -> list[str]:
        return self.stdout.decode("utf-8", "replace").splitlines()

    def describe(self) -> str:
        rc = self.proc.poll()
        return (
            f"{self.name} {self.argv[1:]} (exit code {rc})\n"
            f"--- stdout ---\n{self.stdout!r}\n--- stderr ---\n{self.stderr}"
        )

    # waits
    def _wait_for(self, predicate, timeout: float, what: str, done_attr: str):
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                result = predicate()
                if result:
                    return result
                if getattr(self, done_attr):
                    raise AssertionError(f"{self.name} ended its output before {what}\n{self._describe_locked()}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"{self.name}: no {what} within {timeout}s\n{self._describe_locked()}")
                self._cond.wait(remaining)

    def _describe_locked(self) -> str:
        return (
            f"{self.name} {self.argv[1:]} (exit code {self.proc.poll()})\n"
            f"--- stdout ---\n{bytes(self._stdout)!r}\n--- stderr ---\n" + "\n".join(self._stderr)
        )

    def wait_stderr(self, pattern: re.Pattern | str, timeout: float = TIMEOUT, count: int = 1) -> str:
        """Wait until `count` stderr lines match; returns the last of them."""
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern

        def found():
            matching = [line for line in self._stderr if rx.search(line)]
            return matching[count - 1] if len(matching) >= count else None

        return self._wait_for(found, timeout, f"{count} stderr line(s) matching {rx.pattern!r}", "_stderr_done")

    def wait_stdout_bytes(self, n: int, timeout: float = TIMEOUT) -> bytes:
        """Wait until at least n bytes arrived on stdout."""
        return self._wait_for(
            lambda: bytes(self._stdout) if len(self._stdout) >= n else None,
            timeout, f"{n} bytes on stdout", "_stdout_done",
        )

    def wait_lines(self, n: int, timeout: float = TIMEOUT, prefix: str | None = None) -> list[str]:
        """Wait until n complete stdout lines (optionally only those starting with prefix)."""

        def ready():
            text = bytes(self._stdout).decode("utf-8", "replace")
            lines = text.split("\n")[:-1]  # only complete lines
            if prefix is not None:
                lines = [line for line in lines if line.startswith(prefix)]
            return lines if len(lines) >= n else None

        return self._wait_for(ready, timeout, f"{n} stdout lines", "_stdout_done")

    def wait(self, timeout: float = TIMEOUT) -> int:
        """Wait for the process to exit (and its output to be read); returns the exit code."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.name} did not exit within {timeout}s\n{self.describe()}") from None
        for t in self._threads:
            t.join(timeout=5)
        return self.proc.returncode

    def assert_running(self, quiet: float = QUIET) -> None:
        """Bounded wait: the process must still be running after `quiet` seconds."""
        try:
            self.proc.wait(timeout=quiet)
        except subprocess.TimeoutExpired:
            return
        raise AssertionError(f"{self.name} exited unexpectedly\n{self.describe()}")

    def kill(self, sig=signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(sig)
            except OSError:
                pass
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.kill(signal.SIGTERM)
        for t in self._threads:
            t.join(timeout=2)
        for f in (self.proc.stdout, self.proc.stderr, self.proc.stdin):
            if f:
                try:
                    f.close()
                except OSError:
                    pass


def run(argv: list, input: bytes | None = None, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    """Run to completion with a deadline; output as bytes, stderr without ANSI codes."""
    if Path(str(argv[0])) == TERN:
        require_tern_binary()
    argv = [str(a) for a in argv]
    try:
        cp = subprocess.run(
            argv,
            cwd=REPO_ROOT,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            env=tool_env(),
        )
    except subprocess.TimeoutExpired as e:
        raise AssertionError(
            f"{Path(argv[0]).name} {argv[1:]} did not finish within {timeout}s\n"
            f"stdout: {e.stdout!r}\nstderr: {e.stderr!r}"
        ) from None
    cp.stderr = strip_ansi(cp.stderr)
    return cp


def describe_run(cp: subprocess.CompletedProcess) -> str:
    return (
        f"{Path(cp.args[0]).name} {cp.args[1:]} -> exit code {cp.returncode}\n"
        f"--- stdout ---\n{cp.stdout!r}\n--- stderr ---\n{cp.stderr.decode('utf-8', 'replace')}"
    )


def assert_ok(cp: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert cp.returncode == 0, describe_run(cp)
    return cp


def assert_clear_error(cp: subprocess.CompletedProcess, code: int, tool: str, *needles: str) -> str:
    """Exit code `code`, and stderr is one line `tool: ...` containing every
    needle (case-insensitive), with no panic or backtrace. Returns the line."""
    assert cp.returncode == code, f"expected exit code {code}\n{describe_run(cp)}"
    text = cp.stderr.decode("utf-8", "replace")
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, f"stderr should be exactly one line\n{describe_run(cp)}"
    line = lines[0]
    lowered = line.lower()
    assert "panick" not in lowered and "backtrace" not in lowered, describe_run(cp)
    assert line.startswith(f"{tool}: "), f"stderr should start with '{tool}: '\n{describe_run(cp)}"
    for needle in needles:
        assert needle.lower() in lowered, f"stderr should mention {needle!r}\n{describe_run(cp)}"
    return line


# --------------------------------------------------------------------------
# The tools
# --------------------------------------------------------------------------


class Tools:
    """Runs tern pub / tern sub / mosquitto_pub / mosquitto_sub against one
    broker; background processes are cleaned up by .cleanup()."""

    def __init__(self, broker: Broker):
        self.broker = broker
        self.procs: list[Proc] = []

    def conn(self, version: str | None = None) -> list[str]:
        args = ["-h", self.broker.host, "-p", str(self.broker.port)]
        if version is not None:
            args += ["-V", version]
        return args

    # tern
    def pub(self, *args, version: str | None = None, input: bytes | None = None,
            check: bool = True, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
        cp = run([TERN, "pub", *self.conn(version), *args], input=input, timeout=timeout)
        return assert_ok(cp) if check else cp

    def sub_run(self, *args, version: str | None = None, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
        """tern sub to completion (give it -C/-W or --retained-only)."""
        return run([TERN, "sub", *self.conn(version), *args], timeout=timeout)

    def sub(self, *args, version: str | None = None, ready: bool = True,
            backstop: bool = True) -> Proc:
        """tern sub in the background; with ready=True it runs with -d and
        this returns once its SUBACK shows in the debug output."""
        argv = [TERN, "sub", *self.conn(version), *args]
        if ready and "-d" not in args:
            argv.append("-d")
        if backstop and "-W" not in args:
            argv += ["-W", str(SUB_BACKSTOP_S)]
        p = Proc(argv, name="tern sub")
        self.procs.append(p)
        if ready:
            p.wait_stderr(SUBACK_RE)
        return p

    # mosquitto clients
    def mosquitto_sub(self, *args, version: str = "5", fmt: str = "MSG|%x") -> Proc:
        """mosquitto_sub in the background, ready once it printed the SUBACK.
        Each message is one stdout line `fmt` (default: MSG|hex payload)."""
        if not MOSQUITTO_SUB:
            pytest.skip("mosquitto_sub not installed (apt-get install mosquitto-clients)")
        argv = [STDBUF, "-oL"] if STDBUF else []
        argv += [
            MOSQUITTO_SUB, *self.conn(MOSQ_CLI_VERSION[version]), "-d",
            "-W", str(SUB_BACKSTOP_S), "-F", fmt, *args,
        ]
        p = Proc(argv, name="mosquitto_sub")
        self.procs.append(p)
        # mosquitto_sub -d prints its debug lines on stdout.
        p._wait_for(lambda: b"received SUBACK" in p._stdout, TIMEOUT, "SUBACK", "_stdout_done")
        return p

    def mosquitto_pub(self, *args, version: str = "5", input: bytes | None = None) -> subprocess.CompletedProcess:
        if not MOSQUITTO_PUB:
            pytest.skip("mosquitto_pub not installed (apt-get install mosquitto-clients)")
        return assert_ok(run([MOSQUITTO_PUB, *self.conn(MOSQ_CLI_VERSION[version]), *args], input=input))

    def cleanup(self) -> None:
        for p in self.procs:
            p.cleanup()


def mosquitto_messages(p: Proc, n: int, prefix: str = "MSG|", timeout: float = TIMEOUT) -> list[str]:
    """The first n formatted message lines of a mosquitto_sub (prefix removed)."""
    lines = p.wait_lines(n, timeout=timeout, prefix=prefix)
    return [line[len(prefix):] for line in lines[:n]]


# --------------------------------------------------------------------------
# Fixtures (imported by test_tern_tools.py)
# --------------------------------------------------------------------------


@pytest.fixture(params=BROKER_KINDS)
def broker_kind(request):
    if request.param == "mosquitto":
        require_mosquitto()
    return request.param


@pytest.fixture(params=list(TOOL_VERSIONS), ids=list(TOOL_VERSIONS))
def tool_version(request):
    """The -V value for tern pub/sub: "311" or "5"."""
    return TOOL_VERSIONS[request.param]


@pytest.fixture
def start(request, tmp_path):
    """Factory: start(kind, config=None) -> Broker, stopped at teardown. The
    last one started is shown under "interop broker log" on failure."""
    brokers: list[Broker] = []

    def factory(kind: str, config: list[str] | None = None) -> Broker:
        sub = tmp_path / f"b{len(brokers)}"
        sub.mkdir()
        b = start_broker(kind, sub, config)
        brokers.append(b)
        request.node._interop_broker = b
        return b

    yield factory
    died = [b for b in brokers if not b.stopped and not b.alive()]
    for b in brokers:
        b.cleanup()
    if died:
        b = died[0]
        pytest.fail(
            f"broker process died during the test (exit code {b.proc.returncode})\n{b.log_tail()}",
            pytrace=False,
        )


@pytest.fixture
def tools(broker_kind, start):
    """Tools against a fresh broker of the parametrized kind."""
    t = Tools(start(broker_kind))
    try:
        yield t
    finally:
        t.cleanup()


@pytest.fixture
def tools_for(start):
    """Factory: tools_for(kind, config=None) -> Tools on a fresh broker."""
    made: list[Tools] = []

    def factory(kind: str, config: list[str] | None = None) -> Tools:
        t = Tools(start(kind, config))
        made.append(t)
        return t

    try:
        yield factory
    finally:
        for t in made:
            t.cleanup()
