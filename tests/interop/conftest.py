"""Fixtures for the third-party-client interop suite.

The suite is broker-agnostic: the broker under test is started from the
command template in the environment variable ``TERN_INTEROP_BROKER`` (it must
contain ``{port}``), e.g.::

    TERN_INTEROP_BROKER='target/debug/tern serve --bind 127.0.0.1:{port} --data-dir {data_dir}'
    TERN_INTEROP_BROKER='mosquitto -p {port}'

Relative paths are resolved from the repository root. Every test gets a fresh
broker on a free loopback port, so retained messages and sessions never leak
between tests. The helpers live in interop_support.py.
"""

from __future__ import annotations

import os
import uuid

import pytest

# Plain asserts in the shared helpers report their operands, as in tests.
pytest.register_assert_rewrite("tools_support")

from interop_support import (  # noqa: E402
    DEFAULT_BROKER,
    HTTP_TOKEN,
    VERSIONS,
    Broker,
    Client,
    broker_with_config,
    free_port,
)


@pytest.fixture
def tern_http(request, tmp_path):
    """A Tern broker with an HTTP listener: (broker, http port)."""
    template = os.environ.get("TERN_INTEROP_BROKER", DEFAULT_BROKER)
    port = free_port()
    b = broker_with_config(
        template,
        f'[http]\nbind = "127.0.0.1:{port}"\ntokens = ["{HTTP_TOKEN}"]\n',
        tmp_path,
    )
    request.node._interop_broker = b
    b.start()
    try:
        yield b, port
    finally:
        b.cleanup()


@pytest.fixture
def broker(request, tmp_path):
    template = os.environ.get("TERN_INTEROP_BROKER", DEFAULT_BROKER)
    b = Broker(template, tmp_path / "broker.log")
    request.node._interop_broker = b
    try:
        b.start()
        yield b
        died = not b.stopped and not b.alive()
    finally:
        b.cleanup()
    if died:
        pytest.fail(
            f"broker process died during the test (exit code {b.proc.returncode})\n"
            f"{b.log_tail()}",
            pytrace=False,
        )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    b = getattr(item, "_interop_broker", None)
    if rep.failed and b is not None:
        rep.sections.append(("interop broker log", b.log_tail()))


@pytest.fixture
def start_broker(request, tmp_path):
    """Factory: start_broker(auth={...}) -> a started Broker with that
    authentication config (see Broker._configure_auth); stopped at teardown."""
    started: list[Broker] = []

    def factory(auth: dict) -> Broker:
        template = os.environ.get("TERN_INTEROP_BROKER", DEFAULT_BROKER)
        b = Broker(template, tmp_path / f"broker{len(started)}.log", auth=auth)
        started.append(b)
        request.node._interop_broker = b
        b.start()
        return b

    yield factory
    for b in started:
        b.cleanup()


@pytest.fixture
def make_client(broker):
    """Factory: make_client(version, **kwargs) -> Client (call .connect() on it); all are closed at teardown."""
    clients: list[Client] = []

    def factory(version, **kwargs) -> Client:
        c = Client(broker, version, **kwargs)
        clients.append(c)
        return c

    yield factory
    for c in clients:
        c.close()


@pytest.fixture(params=list(VERSIONS), ids=list(VERSIONS))
def version(request):
    """MQTT protocol version under test: 3.1.1 and 5.0."""
    return VERSIONS[request.param]


@pytest.fixture
def topic_base():
    return f"interop/{uuid.uuid4().hex[:12]}"
