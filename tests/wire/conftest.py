"""Fixtures for the wire-level tests; every test under tests/wire is marked ``wire``.

- ``sipp``: a ``Sipp`` factory; SIPp processes still running at teardown are stopped.
- ``gateway_factory``: starts gateways (``start_gateway``); stopped at teardown.
- ``kamailio_factory``: starts Kamailio relays (``start_kamailio``); stopped at teardown.
- ``mosquitto``: a Mosquitto broker of this test's own on a free port; stopped at teardown.
- MQTT recorders registered in ``broker.OPEN_RECORDERS`` are closed after every test.

A peer that cannot start (a tool missing, a port never bound, a gateway that does not
answer) raises ``testkit``'s ``HarnessError``; the hooks below turn it into a failed test
whose message is the cause, without a traceback through the harness.
"""

from __future__ import annotations

import string
from collections.abc import Generator, Iterator, Mapping, Sequence
from pathlib import Path

import pytest
from broker import OPEN_RECORDERS, Mosquitto
from harness import (
    LOOPBACK,
    GatewayFactory,
    GatewayProcess,
    HarnessError,
    Sipp,
    free_port,
    require_tool,
    start_gateway,
)
from kamailio import KamailioFactory, KamailioProcess, start_kamailio

_WIRE_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test collected from this directory with ``pytest.mark.wire``."""
    for item in items:
        if item.path.resolve().is_relative_to(_WIRE_DIR):
            item.add_marker(pytest.mark.wire)


def _fail_on_harness_error() -> Generator[None, None, None]:
    try:
        yield
    except HarnessError as exc:
        message = str(exc)
    else:
        return
    pytest.fail(message, pytrace=False)  # outside the except: no chained traceback


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    """Fixtures that start peers: a ``HarnessError`` fails the test with its message."""
    yield from _fail_on_harness_error()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    """The test body: a ``HarnessError`` fails the test with its message."""
    yield from _fail_on_harness_error()


@pytest.fixture
def sipp(tmp_path: Path) -> Iterator[Sipp]:
    """A SIPp factory writing its traces under ``tmp_path/sipp``."""
    factory = Sipp(tmp_path / "sipp", binary=require_tool("sipp"))
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[GatewayFactory]:
    """Start gateways: ``gateway_factory(dialplan_text, listen_port=None, ...)``.

    ``${listen_port}`` and ``${listen_host}`` in the dialplan text are replaced
    (``string.Template``) with the port the gateway must listen on - a free one unless
    given - and 127.0.0.1. Each gateway gets its own directory ``tmp_path/gateway-N``.
    """
    started: list[GatewayProcess] = []

    def factory(
        dialplan_text: str,
        *,
        listen_port: int | None = None,
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
        ready_timeout: float = 10.0,
    ) -> GatewayProcess:
        port = free_port() if listen_port is None else listen_port
        text = string.Template(dialplan_text).safe_substitute(
            listen_port=port, listen_host=LOOPBACK
        )
        gateway = start_gateway(
            text,
            tmp_path / f"gateway-{len(started) + 1}",
            listen_port=port,
            listen_host=LOOPBACK,
            ready_timeout=ready_timeout,
            env=env,
            args=args,
        )
        started.append(gateway)
        return gateway

    try:
        yield factory
    finally:
        for gateway in started:
            gateway.stop()


@pytest.fixture
def kamailio_factory(tmp_path: Path) -> Iterator[KamailioFactory]:
    """Start Kamailio relays: ``kamailio_factory(next_hop, listen_port=None)``."""
    started: list[KamailioProcess] = []

    def factory(next_hop: str, *, listen_port: int | None = None) -> KamailioProcess:
        port = free_port() if listen_port is None else listen_port
        relay = start_kamailio(tmp_path / f"kamailio-{len(started) + 1}", port, next_hop)
        started.append(relay)
        return relay

    try:
        yield factory
    finally:
        for relay in started:
            relay.stop()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A broker of this test's own (a free port, its own directory), stopped afterwards."""
    broker = Mosquitto(tmp_path / "mosquitto", free_port("tcp"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(autouse=True)
def _close_recorders() -> Iterator[None]:
    """Every MQTT recorder a test's helpers opened (OPEN_RECORDERS) is closed after it."""
    yield
    while OPEN_RECORDERS:
        OPEN_RECORDERS.pop().close()
