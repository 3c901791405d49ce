"""Shared helpers for the interop suite: the broker process and a paho client
wrapper with queue-based, timeout-bounded waits. Fixtures are in conftest.py.
"""

from __future__ import annotations

import os
import queue
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import trustme
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BROKER = "target/debug/tern serve --bind 127.0.0.1:{port} --data-dir {data_dir}"
HOST = "127.0.0.1"

#: Timeout for anything that is expected to happen (CONNACK, SUBACK, a message).
TIMEOUT = 5.0
#: Bounded wait used only to check that something is NOT delivered.
QUIET = 0.5
#: How long the broker may take to start accepting connections.
STARTUP_DEADLINE = 20.0

VERSIONS = {
    "v311": mqtt.MQTTv311,
    "v5": mqtt.MQTTv5,
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


#: The API token of the `tern_http` fixture's HTTP listener (conftest.py).
HTTP_TOKEN = "interop-token-0123456789abcdef"


def need(tool: str, install: str) -> None:
    """Skips without `tool`, but fails under CI, which installs it."""
    if shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin"):
        return
    message = f"{tool} is not installed ({install})"
    if os.environ.get("CI"):
        pytest.fail(f"{message}: .ci/run installs it", pytrace=False)
    pytest.skip(message)


def unique(prefix: str = "t") -> str:
    """A short unique token (client ids stay within MQTT 3.1's 23 chars)."""
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


# --------------------------------------------------------------------------
# Broker process
# --------------------------------------------------------------------------


class Broker:
    def __init__(self, template: str, log_path: Path, auth: dict | None = None):
        if "{port}" not in template:
            raise pytest.UsageError(
                f"TERN_INTEROP_BROKER must contain '{{port}}': {template!r}"
            )
        self.template = template
        self.port = free_port()
        self.host = HOST
        # A data directory of its own (a template without `{data_dir}`, such
        # as Mosquitto's, ignores it); kept across restarts of this broker.
        self.data_dir = tempfile.mkdtemp(prefix="tern-interop-")
        self.argv = shlex.split(template.format(port=self.port, data_dir=self.data_dir))
        if auth is not None:
            self._configure_auth(auth)
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self._log = None
        self.stopped = False  # set once the test or the fixture stops it on purpose

    @property
    def is_mosquitto(self) -> bool:
        return Path(self.argv[0]).name.startswith("mosquitto")

    def _configure_auth(self, auth: dict) -> None:
        """Starts the broker with a config file naming `password_file`,
        `acl_file` (paths, optional) and `allow_anonymous` (bool, optional).

        Tern: a TOML file added as `--config FILE` (the template's `--bind`
        and `--data-dir` still apply). Mosquitto: a mosquitto.conf with one
        listener on the port, run as `mosquitto -c FILE`."""
        if self.is_mosquitto:
            lines = [f"listener {self.port} {self.host}"]
            if os.geteuid() == 0:
                # Else Mosquitto drops to user `mosquitto`, who cannot read
                # the test's private temporary files.
                lines.append("user root")
            for key in ("password_file", "acl_file"):
                if auth.get(key):
                    lines.append(f"{key} {auth[key]}")
            if "allow_anonymous" in auth:
                lines.append(f"allow_anonymous {'true' if auth['allow_anonymous'] else 'false'}")
            conf = Path(self.data_dir) / "mosquitto.conf"
            conf.write_text("\n".join(lines) + "\n")
            self.argv = [self.argv[0], "-c", str(conf)]
        else:
            lines = []
            for key in ("password_file", "acl_file"):
                if auth.get(key):
                    lines.append(f'{key} = "{auth[key]}"')
            if "allow_anonymous" in auth:
                lines.append(f"allow_anonymous = {'true' if auth['allow_anonymous'] else 'false'}")
            conf = Path(self.data_dir) / "tern.toml"
            conf.write_text("\n".join(lines) + "\n")
            self.argv += ["--config", str(conf)]

    def start(self) -> None:
        exe = self.argv[0]
        if os.sep in exe and not Path(exe).is_absolute():
            candidate = REPO_ROOT / exe
            if not candidate.exists():
                pytest.fail(
                    f"broker binary {candidate} does not exist "
                    f"(build it with `cargo build --bin tern`, or set TERN_INTEROP_BROKER)",
                    pytrace=False,
                )
        self._log = open(self.log_path, "wb")
        try:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "NO_COLOR": "1"},  # plain logs in failure reports
            )
        except FileNotFoundError as e:
            pytest.fail(f"cannot start broker {self.argv!r}: {e}", pytrace=False)
        self.wait_ready()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_DEADLINE
        while True:
            code = self.proc.poll()
            if code is not None:
                pytest.fail(
                    f"broker exited with code {code} before accepting connections\n"
                    f"command: {self.argv}\n{self.log_tail()}",
                    pytrace=False,
                )
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"broker did not accept connections on {self.host}:{self.port} "
                    f"within {STARTUP_DEADLINE}s\ncommand: {self.argv}\n{self.log_tail()}",
                    pytrace=False,
                )
            time.sleep(0.02)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self, sig=signal.SIGTERM, timeout: float = 5.0) -> int | None:
        """Send `sig`; return the exit code, or None if it had to be SIGKILLed."""
        if self.proc is None:
            return None
        self.stopped = True
        if self.proc.poll() is not None:
            return self.proc.returncode
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # its own session/group
            except OSError:
                self.proc.kill()
            self.proc.wait(timeout=5)
            return None
        finally:
            if self._log:
                self._log.close()

    def cleanup(self) -> None:
        # Clean shutdown is checked by test_broker_process.py; here just don't linger.
        if self.proc is not None and self.proc.poll() is None:
            self.terminate(timeout=2.0)
        if self._log and not self._log.closed:
            self._log.close()

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no broker log)"
        tail = text.splitlines()[-lines:]
        return "broker log (tail):\n" + "\n".join(tail)


def broker_with_config(template: str, config_toml: str, tmp_path: Path) -> Broker:
    """A Tern broker (not started) from `template` plus `--config FILE`, FILE
    holding `config_toml`. The template's --bind and --data-dir still apply.
    Skips the test for a broker that is not Tern (Mosquitto's configuration
    is another language)."""
    b = Broker(template, tmp_path / "broker.log")
    if b.is_mosquitto:
        pytest.skip("needs Tern's TOML configuration")
    config = tmp_path / "tern.toml"
    config.write_text(config_toml)
    b.argv += ["--config", str(config)]
    return b


def tern_exe() -> str:
    exe = shlex.split(os.environ.get("TERN_INTEROP_BROKER", DEFAULT_BROKER))[0]
    if not Path(exe).name.startswith("tern"):
        pytest.skip(f"this test configures Tern's own options; TERN_INTEROP_BROKER runs {exe}")
    return exe


def tern(tmp_path: Path, name: str, toml: str = "", persistence: bool = False) -> Broker:
    """A `tern serve` (started) on a free port with `toml` added to its
    configuration (`$SYS` off, persistence as told); its log is NAME.log."""
    b = Broker("{port}", tmp_path / f"{name}.log")
    config = tmp_path / f"{name}.toml"
    config.write_text(
        f'bind = "{HOST}:{b.port}"\nsys_interval_secs = 0\npersistence = {str(persistence).lower()}\n{toml}'
    )
    b.argv = [tern_exe(), "serve", "--config", str(config), "--data-dir", b.data_dir]
    b.start()
    return b


# --------------------------------------------------------------------------
# paho client wrapper
# --------------------------------------------------------------------------


class Client:
    """A paho client with a background network loop and queue-based waits."""

    def __init__(
        self,
        broker: Broker,
        version: int,
        client_id: str | None = None,
        clean: bool = True,
        session_expiry: int | None = None,
        will: dict | None = None,
        keepalive: int = 30,
        username: str | None = None,
        password: str | None = None,
        transport: str = "tcp",
    ):
        self.broker = broker
        self.version = version
        self.client_id = client_id or unique("c")
        self.clean = clean
        self.session_expiry = session_expiry
        self.keepalive = keepalive
        kwargs = {}
        if version != mqtt.MQTTv5:
            kwargs["clean_session"] = clean
        self.c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=version,
            reconnect_on_failure=False,  # never silently reconnect mid-test
            transport=transport,  # "tcp" or "websockets"
            **kwargs,
        )
        if will:
            self.c.will_set(**will)
        if username is not None:
            self.c.username_pw_set(username, password)
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self._connack: queue.Queue = queue.Queue()
        self._subacks: dict[int, queue.Queue] = {}
        self._lock = threading.Lock()
        self.disconnected = threading.Event()
        self.disconnect_reason = None
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        self.c.on_subscribe = self._on_subscribe
        self.c.on_disconnect = self._on_disconnect
        self.c.on_unsubscribe = self._on_unsubscribe
        self.c.on_publish = self._on_publish
        self._pubacks: dict[int, queue.Queue] = {}
        self._unsubacks: queue.Queue = queue.Queue()
        self._loop_running = False

    # callbacks (run in paho's network thread)
    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self._connack.put((flags, reason_code, properties))

    def _on_message(self, client, userdata, msg):
        self.messages.put(msg)

    def _suback_queue(self, mid: int) -> queue.Queue:
        with self._lock:
            return self._subacks.setdefault(mid, queue.Queue())

    def _puback_queue(self, mid: int) -> queue.Queue:
        with self._lock:
            return self._pubacks.setdefault(mid, queue.Queue())

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        self._puback_queue(mid).put(reason_code)

    def _on_subscribe(self, client, userdata, mid, reason_code_list, properties):
        self._suback_queue(mid).put(reason_code_list)

    def _on_unsubscribe(self, client, userdata, mid, reason_code_list, properties):
        self._unsubacks.put(mid)

    def unsubscribed(self, mid: int) -> bool:
        """Wait for the UNSUBACK with this message id."""
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            try:
                if self._unsubacks.get(timeout=max(deadline - time.monotonic(), 0.001)) == mid:
                    return True
            except queue.Empty:
                break
        return False

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self.disconnect_reason = reason_code
        self.disconnected.set()

    # operations
    def _connect_properties(self):
        if self.version != mqtt.MQTTv5:
            return None
        props = Properties(PacketTypes.CONNECT)
        if self.session_expiry is not None:
            props.SessionExpiryInterval = self.session_expiry
        return props

    def connect(self, background: bool = True):
        """Connect and wait for CONNACK. Returns the connect flags."""
        kwargs = {}
        if self.version == mqtt.MQTTv5:
            kwargs["clean_start"] = self.clean
            kwargs["properties"] = self._connect_properties()
        self.c.connect(self.broker.host, self.broker.port, self.keepalive, **kwargs)
        if background:
            self.c.loop_start()
            self._loop_running = True
            flags, rc, props = self._get(self._connack, "CONNACK")
        else:
            deadline = time.monotonic() + TIMEOUT
            while self._connack.empty():
                if time.monotonic() > deadline:
                    raise AssertionError(f"{self.client_id}: no CONNACK within {TIMEOUT}s")
                self.c.loop(timeout=0.05)
            flags, rc, props = self._connack.get_nowait()
        assert not rc.is_failure, f"{self.client_id}: CONNACK refused: {rc}"
        return flags

    def connect_reason(self) -> int:
        """Connect and return the CONNACK reason code's value (paho reports
        3.1.1 return codes 4 and 5 as 0x86 and 0x87)."""
        kwargs = {}
        if self.version == mqtt.MQTTv5:
            kwargs["clean_start"] = self.clean
            kwargs["properties"] = self._connect_properties()
        self.c.connect(self.broker.host, self.broker.port, self.keepalive, **kwargs)
        self.c.loop_start()
        self._loop_running = True
        _, rc, _ = self._get(self._connack, "CONNACK")
        return rc.value

    def subscribe_reasons(self, topic: str, qos: int = 0) -> list[int]:
        """Subscribe and return the SUBACK codes' values, refusals included."""
        if self.version == mqtt.MQTTv5:
            rc, mid = self.c.subscribe(topic, options=mqtt.SubscribeOptions(qos=qos))
        else:
            rc, mid = self.c.subscribe(topic, qos)
        assert rc == mqtt.MQTT_ERR_SUCCESS, f"subscribe failed locally: {rc}"
        return [code.value for code in self._get(self._suback_queue(mid), f"SUBACK for {topic!r}")]

    def publish_reason(self, topic: str, payload=b"", qos: int = 1) -> int:
        """Publish at QoS 1 or 2 and return the PUBACK/PUBREC reason's value."""
        info = self.c.publish(topic, payload, qos=qos)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, f"publish failed locally: {info.rc}"
        return self._get(self._puback_queue(info.mid), f"acknowledgement of {topic!r}").value

    def _get(self, q: queue.Queue, what: str):
        try:
            return q.get(timeout=TIMEOUT)
        except queue.Empty:
            raise AssertionError(f"{self.client_id}: no {what} within {TIMEOUT}s") from None

    def subscribe(self, topic, qos: int = 0, **options):
        """Subscribe (topic may be a list of (topic, qos)) and wait for SUBACK.

        Returns the list of granted QoS values."""
        if self.version == mqtt.MQTTv5:
            if isinstance(topic, list):
                arg = [(t, mqtt.SubscribeOptions(qos=q, **options)) for t, q in topic]
                rc, mid = self.c.subscribe(arg)
            else:
                rc, mid = self.c.subscribe(topic, options=mqtt.SubscribeOptions(qos=qos, **options))
        else:
            rc, mid = self.c.subscribe(topic, qos)
        assert rc == mqtt.MQTT_ERR_SUCCESS, f"subscribe failed locally: {rc}"
        codes = self._get(self._suback_queue(mid), f"SUBACK for {topic!r}")
        for code in codes:
            assert not code.is_failure, f"{self.client_id}: subscription to {topic!r} refused: {code}"
        return [code.value for code in codes]

    def publish(self, topic: str, payload=b"", qos: int = 0, retain: bool = False, properties=None):
        """Publish and, for QoS > 0, wait until the broker acknowledged it."""
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, f"publish failed locally: {info.rc}"
        if qos > 0:
            info.wait_for_publish(timeout=TIMEOUT)
            assert info.is_published(), f"{self.client_id}: no ack for QoS {qos} publish to {topic!r}"
        return info

    def get(self, timeout: float = TIMEOUT) -> mqtt.MQTTMessage:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"{self.client_id}: expected a message, none within {timeout}s") from None

    def get_n(self, n: int, timeout: float = TIMEOUT) -> list[mqtt.MQTTMessage]:
        out = []
        deadline = time.monotonic() + timeout
        while len(out) < n:
            remaining = deadline - time.monotonic()
            try:
                out.append(self.messages.get(timeout=max(remaining, 0.001)))
            except queue.Empty:
                got = [(m.topic, m.payload) for m in out]
                raise AssertionError(
                    f"{self.client_id}: expected {n} messages within {timeout}s, got {len(out)}: {got}"
                ) from None
        return out

    def get_until(self, topic: str, timeout: float = TIMEOUT) -> list[mqtt.MQTTMessage]:
        """Collect messages up to and including the first one on `topic`."""
        out = []
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                msg = self.messages.get(timeout=max(remaining, 0.001))
            except queue.Empty:
                got = [(m.topic, m.payload) for m in out]
                raise AssertionError(
                    f"{self.client_id}: no message on {topic!r} within {timeout}s; got {got}"
                ) from None
            out.append(msg)
            if msg.topic == topic:
                return out

    def drain(self, quiet: float = QUIET) -> list[mqtt.MQTTMessage]:
        """Bounded wait: return whatever else arrives within `quiet` seconds."""
        out = []
        deadline = time.monotonic() + quiet
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return out
            try:
                out.append(self.messages.get(timeout=remaining))
            except queue.Empty:
                return out

    def disconnect(self, properties=None, reasoncode=None):
        """Clean DISCONNECT, waiting for the network loop to notice."""
        kwargs = {}
        if properties is not None:
            kwargs["properties"] = properties
        if reasoncode is not None:
            kwargs["reasoncode"] = reasoncode
        self.c.disconnect(**kwargs)
        if self._loop_running:
            assert self.disconnected.wait(TIMEOUT), f"{self.client_id}: disconnect did not complete"
            self.c.loop_stop()
            self._loop_running = False

    def abort(self):
        """Close the TCP connection abruptly, without sending DISCONNECT."""
        if self._loop_running:
            self.c.loop_stop()
            self._loop_running = False
        sock = self.c.socket()
        assert sock is not None, "client has no socket"
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()

    def close(self):
        """Best-effort cleanup at the end of a test."""
        try:
            if self._loop_running:
                self.c.disconnect()
                self.c.loop_stop()
                self._loop_running = False
        except Exception:
            pass


class MosquittoSub:
    """mosquitto_sub in the background (-d: it reports its SUBACK), its
    stdout read line by line into `output` (and `lines`, to wait on)."""

    def __init__(self, host: str, port: int, version: str, topics: list[str], *, fmt: str,
                 timeout_s: int, qos: int = 1, count: int | None = None, extra=()):
        argv = ["stdbuf", "-oL"] if shutil.which("stdbuf") else []
        argv += [
            "mosquitto_sub", "-h", host, "-p", str(port),
            "-V", version, "-q", str(qos), "-d", "-W", str(timeout_s), "-F", fmt,
        ]
        if count is not None:
            argv += ["-C", str(count)]
        for t in topics:
            argv += ["-t", t]
        argv += list(extra)
        self.argv = argv
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.output.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def next_line(self, what: str, timeout: float = TIMEOUT) -> str:
        """The next line of output; fails if none comes within `timeout` or it exits."""
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"mosquitto_sub: no {what} within {timeout}s; output: {self.output}") from None
        if line is None:
            raise AssertionError(
                f"mosquitto_sub exited before {what}; output: {self.output}, stderr: {self.stderr()}"
            )
        return line

    def wait_subscribed(self):
        """Block until mosquitto_sub's debug output reports the SUBACK."""
        while "received SUBACK" not in self.next_line("SUBACK"):
            pass

    def stderr(self) -> str:
        return self.proc.stderr.read() if self.proc.poll() is not None else ""

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)


# --------------------------------------------------------------------------
# QoS 2 counted as a receiver does, over crashes
# --------------------------------------------------------------------------


class DeliveryCount:
    """paho-mqtt as publisher and subscriber, both with persistent sessions
    (MQTT 3.1.1, clean session 0), QoS `qos` (2 unless told) with up to
    `inflight` messages in flight, each payload a number; the subscriber on
    `{prefix}/#` at `sub_at`, the publisher at `pub_at` ((host, port) each).
    The subscriber counts by payload, as an application would: paho hands a
    QoS 2 message over at PUBREL. Both reconnect by themselves while the
    test crashes things; `finish` stops publishing and reports what was
    acknowledged (PUBCOMP, PUBACK at QoS 1), delivered, lost, and delivered
    twice (which QoS 1 allows)."""

    def __init__(self, sub_at: tuple[str, int], pub_at: tuple[str, int], prefix: str,
                 inflight: int = 50, qos: int = 2):
        self.sub_at, self.pub_at, self.prefix, self.qos = sub_at, pub_at, prefix, qos
        self.lock = threading.Lock()
        self.got: dict[int, int] = {}
        self.twice: list[tuple[int, int, bool]] = []
        self.infos: list[tuple[int, mqtt.MQTTMessageInfo]] = []
        # When each was handed to paho (wall clock, to match the logs).
        self.sent_at: list[float] = []
        self.probed = threading.Event()
        self.stop = threading.Event()
        self.window = threading.Semaphore(inflight)
        self.sub = self._client(unique("eo-sub"))
        self.pub = self._client(unique("eo-pub"))
        self.pub.max_inflight_messages_set(inflight)
        self.pub.on_publish = lambda *args: self.window.release()
        self.publisher = threading.Thread(target=self._publish)

    @staticmethod
    def _client(cid: str) -> mqtt.Client:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, clean_session=False)
        c.reconnect_delay_set(min_delay=0.1, max_delay=0.5)
        return c

    def _on_message(self, client, userdata, msg) -> None:
        if msg.topic == f"{self.prefix}/probe":
            self.probed.set()
            return
        n = int(msg.payload)
        with self.lock:
            self.got[n] = self.got.get(n, 0) + 1
            if self.got[n] > 1:
                self.twice.append((n, msg.mid, msg.dup))

    def start(self) -> None:
        """Subscribes, then (QoS 0 probes until one arrives: the
        subscription is routed from the publisher's node) starts
        publishing."""
        subscribed = threading.Event()
        self.sub.on_message = self._on_message
        self.sub.on_subscribe = lambda *args: subscribed.set()
        # As paho users write it: (re)subscribe on every connect.
        self.sub.on_connect = lambda c, u, flags, rc, props: c.subscribe(f"{self.prefix}/#", qos=self.qos)
        self.sub.connect(*self.sub_at)
        self.sub.loop_start()
        assert subscribed.wait(10), "no SUBACK"
        self.pub.connect(*self.pub_at)
        self.pub.loop_start()
        deadline = time.monotonic() + 10
        while not self.probed.wait(0.1):
            self.pub.publish(f"{self.prefix}/probe", b"probe", qos=0)
            assert time.monotonic() < deadline, "probes from the publisher never reached the subscriber"
        self.publisher.start()

    def _publish(self) -> None:
        n = 0
        while not self.stop.is_set():
            if self.window.acquire(timeout=0.2):
                self.infos.append((n, self.pub.publish(f"{self.prefix}/{n % 4}", str(n), qos=self.qos)))
                self.sent_at.append(time.time())
                n += 1

    def finish(self, settle: float = 30.0) -> tuple[int, int, int, list[int], list[tuple[int, int, bool]]]:
        """Stops publishing, waits up to `settle` seconds for every message
        to complete and arrive; returns (published, acknowledged, delivered,
        lost, twice)."""
        self.stop.set()
        self.publisher.join()
        # `_published` is paho's own flag, set at PUBCOMP or PUBACK (is_published()
        # raises for messages first queued while disconnected).
        deadline = time.monotonic() + settle
        while time.monotonic() < deadline:
            acked = {n for n, info in self.infos if info._published}
            with self.lock:
                if len(acked) == len(self.infos) and acked <= set(self.got):
                    break
            time.sleep(0.1)
        time.sleep(0.5)  # a late duplicate would arrive now
        for c in (self.sub, self.pub):
            c.loop_stop()
            c.disconnect()
        acked = {n for n, info in self.infos if info._published}
        lost = sorted(acked - set(self.got))
        return len(self.infos), len(acked), len(self.got), lost, list(self.twice)

    def sent_when(self, n: int) -> str:
        """When message `n` was handed to paho (UTC, as the logs write it)."""
        at = self.sent_at[n]
        return time.strftime("%H:%M:%S", time.gmtime(at)) + f".{int(at % 1 * 1000):03d}"


# --------------------------------------------------------------------------
# Certificates
# --------------------------------------------------------------------------


class Certs:
    """A CA, a server certificate for 127.0.0.1/localhost and a client
    certificate with Common Name `device-1`, written as PEM files."""

    def __init__(self, directory: Path):
        self.dir = directory
        ca = trustme.CA()
        server = ca.issue_cert("127.0.0.1", "localhost")
        client = ca.issue_cert("device-1@example.org", common_name="device-1")
        self.ca = self._write("ca.pem", ca.cert_pem.bytes())
        self.server_cert = self._write("server.pem", b"".join(p.bytes() for p in server.cert_chain_pems))
        self.server_key = self._write("server.key", server.private_key_pem.bytes())
        self.client_cert = self._write("client.pem", b"".join(p.bytes() for p in client.cert_chain_pems))
        self.client_key = self._write("client.key", client.private_key_pem.bytes())

    def _write(self, name: str, data: bytes) -> str:
        path = self.dir / name
        path.write_bytes(data)
        return str(path)
