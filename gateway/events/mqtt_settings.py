"""Where the MQTT broker is and how hard to try: the publisher's settings, validated."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple
from urllib.parse import unquote, urlsplit

__all__ = ["BrokerAddress", "MqttSettings", "parse_broker_url"]


class BrokerAddress(NamedTuple):
    """Where the broker is, parsed from ``mqtt://`` / ``mqtts://`` URLs."""

    host: str
    port: int
    username: str | None
    password: str | None
    tls: bool


def parse_broker_url(url: str) -> BrokerAddress:
    """Parse ``mqtt://[user:pass@]host[:port]`` or ``mqtts://...`` (default ports 1883/8883).

    User and password may be percent-encoded. Raises :class:`ValueError` when the URL is
    not usable.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("mqtt", "mqtts"):
        raise ValueError(f"MQTT broker URL must start with mqtt:// or mqtts://, not {url!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"MQTT broker URL takes no path, query or fragment: {url!r}")
    if not parts.hostname:
        raise ValueError(f"MQTT broker URL has no host: {url!r}")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"MQTT broker URL has a bad port: {url!r}") from exc
    tls = scheme == "mqtts"
    return BrokerAddress(
        host=parts.hostname,
        port=port if port is not None else (8883 if tls else 1883),
        username=unquote(parts.username) if parts.username is not None else None,
        password=unquote(parts.password) if parts.password is not None else None,
        tls=tls,
    )


@dataclass(frozen=True, slots=True)
class MqttSettings:
    """How to reach the broker and how hard to try. Validated on construction."""

    url: str
    """``mqtt://[user:pass@]host:port`` or ``mqtts://...`` (TLS)."""
    ca_file: Path | None = None
    """CA bundle for ``mqtts``; the system trust store when ``None``."""
    keepalive: int = 30
    """MQTT keepalive in seconds; the broker fires the last will after 1.5 times this."""
    buffer_size: int = 10_000
    """Events kept while the broker is unreachable; beyond that the oldest are dropped."""
    reconnect_base: float = 0.5
    """First reconnect delay ceiling in seconds (doubles per failed attempt)."""
    reconnect_max: float = 30.0
    """Largest reconnect delay ceiling in seconds."""
    operation_timeout: float = 10.0
    """Seconds to wait for a CONNACK, SUBACK or PUBACK before treating the link as dead."""
    shutdown_timeout: float = 5.0
    """Seconds allowed on exit to drain the buffer and publish ``offline``."""
    in_flight: int = 200
    """Events published concurrently (pipelined) before waiting for their PUBACKs."""
    command_group: str | None = None
    """A cluster's nodes take the desktops' commands as one shared subscription
    (``$share/<group>/...``): the broker hands each command to one node, which applies
    and publishes it once; the others learn it from the shared store (issue #12)."""
    broker: BrokerAddress = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "broker", parse_broker_url(self.url))
        if self.buffer_size < 1:
            raise ValueError("buffer_size must be at least 1")
        if not 1 <= self.in_flight <= 1000:
            raise ValueError("in_flight must be between 1 and 1000")
        if self.keepalive < 1:
            raise ValueError("keepalive must be at least 1 second")
        if self.command_group is not None and (
            not self.command_group or any(ch in "/+#" for ch in self.command_group)
        ):
            raise ValueError(f"command_group {self.command_group!r} is not a topic level")
        if self.ca_file is not None and not self.broker.tls:
            raise ValueError("ca_file is only used with an mqtts:// URL")

    def tls_context(self) -> ssl.SSLContext | None:
        """A verifying client TLS context for ``mqtts``, else ``None``."""
        if not self.broker.tls:
            return None
        cafile = str(self.ca_file) if self.ca_file is not None else None
        return ssl.create_default_context(cafile=cafile)
