"""The metrics and health endpoint (SPEC O-3): ``/metrics`` and ``/healthz``.

The call counters and the node's live levels are in a ``CollectorRegistry`` built by
``gateway.b2bua.metrics``. :class:`MetricsServer` serves them over plain HTTP/1.1 on the
loop (``asyncio``): ``GET /metrics`` in the Prometheus text format, ``GET /healthz`` 200
``serving`` or 503 with the reason (``draining``, ``stopping``); it also measures the
event loop's lag (how late a sleep wakes up), the first thing to look at when calls set
up slowly.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence

import structlog
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from gateway.tasks import stop_task

__all__ = ["MetricsServer", "labelled_levels", "level_gauge", "parse_addr"]

log = structlog.get_logger("gateway.metrics")

#: seconds between two event-loop lag probes
LAG_PROBE_S = 0.5
#: the longest request head a scraper may send
_MAX_HEAD = 8192


def parse_addr(text: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port); ValueError names what is wrong."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"metrics address {text!r}: expected host:port")
    return host.strip("[]") or "127.0.0.1", int(port)


class MetricsServer:
    """``/metrics`` and ``/healthz`` over HTTP on the loop, and the event-loop lag probe."""

    def __init__(
        self,
        registry: CollectorRegistry,
        host: str,
        port: int,
        *,
        health: Callable[[], str | None],
    ):
        self.registry = registry
        self.host = host
        self.port = port
        #: None when serving, else why not (``draining``, ``store unusable``)
        self.health = health
        self.lag = Gauge(
            "gateway_event_loop_lag_seconds",
            "How late the last event-loop probe woke up",
            registry=registry,
        )
        self._server: asyncio.Server | None = None
        self._probe: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        self._probe = asyncio.create_task(self._probe_lag(), name="event-loop-lag")
        log.info("metrics_listening", address=f"{self.host}:{self.port}")

    async def close(self) -> None:
        await stop_task(self._probe)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _probe_lag(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(LAG_PROBE_S)
            self.lag.set(max(0.0, loop.time() - before - LAG_PROBE_S))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
            status, content_type, body = self._answer(head[:_MAX_HEAD])
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            status, content_type, body = "400 Bad Request", "text/plain", b"bad request\n"
        except ConnectionError:
            writer.close()
            return
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    def _answer(self, head: bytes) -> tuple[str, str, bytes]:
        parts = head.split(b"\r\n", 1)[0].split()
        if len(parts) != 3 or parts[0] not in (b"GET", b"HEAD"):
            return "405 Method Not Allowed", "text/plain", b"GET /metrics or /healthz\n"
        path = parts[1].split(b"?", 1)[0]
        if path == b"/metrics":
            return "200 OK", CONTENT_TYPE_LATEST, generate_latest(self.registry)
        if path == b"/healthz":
            problem = self.health()
            if problem is None:
                return "200 OK", "text/plain", b"serving\n"
            return "503 Service Unavailable", "text/plain", f"{problem}\n".encode()
        return "404 Not Found", "text/plain", b"GET /metrics or /healthz\n"


def level_gauge(
    registry: CollectorRegistry, name: str, text: str, read: Callable[[], float]
) -> Gauge:
    """A gauge whose value is read at scrape time (a live level of the node)."""
    gauge = Gauge(name, text, registry=registry)
    gauge.set_function(read)
    return gauge


class _LabelledLevels(Collector):
    def __init__(
        self,
        name: str,
        text: str,
        labels: Sequence[str],
        read: Callable[[], Iterable[tuple[Sequence[str], float]]],
    ) -> None:
        self.name, self.text, self.labels, self.read = name, text, list(labels), read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(self.name, self.text, labels=self.labels)
        for values, level in self.read():
            family.add_metric(list(values), level)
        yield family


def labelled_levels(
    registry: CollectorRegistry,
    name: str,
    text: str,
    labels: Sequence[str],
    read: Callable[[], Iterable[tuple[Sequence[str], float]]],
) -> None:
    """A gauge family read at scrape time: ``read()`` gives (label values, level) pairs, so
    the series follow what exists now (a reload's trunks show, removed ones go)."""
    registry.register(_LabelledLevels(name, text, labels, read))
