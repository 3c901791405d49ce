"""Operating Tern with the tools operators use: a real Prometheus server
(Debian package `prometheus`) scrapes `/metrics` with a bearer token, and
its HTTP API answers PromQL queries with what paho-mqtt did to the broker;
the health checks answer a plain HTTP client."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from interop_support import HTTP_TOKEN as TOKEN
from interop_support import VERSIONS, Client, free_port, need, unique

V5 = VERSIONS["v5"]
PROMETHEUS = shutil.which("prometheus")


def http_get(port: int, path: str, token: str | None = None) -> tuple[int, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_health_checks_and_a_token_guarded_metrics_page(tern_http):
    _, port = tern_http
    assert http_get(port, "/healthz") == (200, "ok\n")
    assert http_get(port, "/readyz") == (200, "ready\n")
    status, body = http_get(port, "/metrics")
    assert status == 401 and "tern_" not in body
    status, body = http_get(port, "/metrics", TOKEN)
    assert status == 200 and "# TYPE tern_messages_received_total counter" in body


class Prometheus:
    """A Prometheus server scraping one target every second, with a bearer
    token, on a free port, its data in a temporary directory."""

    def __init__(self, tmp_path, target_port: int):
        self.port = free_port()
        token_file = tmp_path / "token"
        token_file.write_text(TOKEN)
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n"
            "  - job_name: tern\n"
            "    scrape_interval: 1s\n"
            "    authorization:\n"
            f"      credentials_file: {token_file}\n"
            "    static_configs:\n"
            f"      - targets: ['127.0.0.1:{target_port}']\n"
        )
        self.log = open(tmp_path / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT)

    def query(self, promql: str) -> list:
        """The result vector of an instant query (empty while Prometheus
        starts or has no sample yet)."""
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                answer = json.load(r)
        except OSError:
            return []
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    def value_becomes(self, promql: str, want: float, timeout: float = 30.0) -> float | None:
        """Polls the query (Prometheus scrapes every second) until its one
        value is `want`; returns the last value seen."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "prometheus exited"
            result = self.query(promql)
            if result:
                last = float(result[0]["value"][1])
                if last == want:
                    return last
            time.sleep(0.2)
        return last

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def test_a_real_prometheus_scrapes_what_paho_published(tern_http, tmp_path):
    need("prometheus", "apt-get install prometheus")
    broker, port = tern_http
    prometheus = Prometheus(tmp_path, port)
    try:
        # The scrape is up: Prometheus logged in with the token.
        assert prometheus.value_becomes('up{job="tern"}', 1.0) == 1.0, (tmp_path / "prometheus.log").read_text()
        sub = Client(broker, V5, client_id=unique("prom-sub"))
        sub.connect()
        sub.subscribe("prom/#", qos=1)
        pub = Client(broker, V5, client_id=unique("prom-pub"))
        pub.connect()
        for i in range(7):
            pub.publish("prom/a", str(i).encode(), qos=1)
        for i in range(5):
            pub.publish("prom/b", str(i).encode(), qos=2)
        sub.get_n(12)
        query = 'sum(tern_messages_received_total{job="tern",qos=~"1|2"})'
        assert prometheus.value_becomes(query, 12.0) == 12.0
        assert prometheus.value_becomes('tern_messages_received_total{qos="2"}', 5.0) == 5.0
        assert prometheus.value_becomes("tern_connections", 2.0) == 2.0
        assert prometheus.value_becomes("tern_subscriptions", 1.0) == 1.0
        sub.close()
        pub.close()
        assert prometheus.value_becomes("tern_connections", 0.0) == 0.0
    finally:
        prometheus.stop()


def test_the_admin_api_holds_to_its_openapi_description_under_schemathesis(tern_http, tmp_path):
    """schemathesis (PyPI) generates requests from /api/openapi.json, valid
    and invalid, and checks every answer: no 5xx, each status and body as
    the description says, valid input accepted and invalid input refused.
    A fixed seed and pinned versions (requirements.txt) keep CI repeatable;
    TERN_INTEROP_FUZZ_EXAMPLES sets the examples per operation (default 10). A generator health check that
    gives up on topic names matching their pattern in a URL path is
    switched off (it judges the generator, not the API), and so are NUL
    characters, which MQTT strings cannot hold (the API refuses them with
    a 400, as the description says in words)."""
    need("st", "pip install schemathesis")
    broker, port = tern_http
    # Some state to list: a persistent session offline, a client online
    # with subscriptions, retained messages.
    offline = Client(broker, V5, client_id="fuzz-offline", clean=False, session_expiry=3600)
    offline.connect()
    offline.subscribe("fuzz/#", qos=1)
    offline.disconnect()
    online = Client(broker, V5, client_id="fuzz-online")
    online.connect()
    online.subscribe("$share/g/fuzz/+", qos=0)
    for i in range(3):
        online.publish(f"fuzz/{i}", f"value {i}".encode(), qos=1, retain=True)
    online.publish("$delayed/3600/fuzz/later", b"in an hour", qos=1)
    examples = os.environ.get("TERN_INTEROP_FUZZ_EXAMPLES", "10")
    run = subprocess.run(
        ["st", "run", f"http://127.0.0.1:{port}/api/openapi.json",
         "-H", f"Authorization: Bearer {TOKEN}", "--checks", "all",
         "--max-examples", examples, "--seed", "2", "--request-timeout", "10",
         "--suppress-health-check", "filter_too_much", "--generation-allow-x00", "false"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-6000:]
    assert "passed" in out and "failed" not in out.split("Test cases:")[-1], out[-3000:]
    online.close()
