"""The SIP fronts of a cluster and the real source of a request that came through one
(issue #12, SPEC E-13).

Theory of operation
-------------------
Behind a Kamailio front (``deploy/kamailio/cluster.cfg``) every request reaches a node from
the front's address: every phone, trunk and stranger shares it. The front removes any
``X-Gateway-Source`` header a sender wrote and adds its own, ``<proto>:<ip>:<port>``, the
address the request really came from. :class:`Fronts` is the one place that turns the
transport source of a request into the source that identity, trust and flood limits key on
(its *origin*):

=====================================  ===============================================
transport source                       origin
=====================================  ===============================================
a configured front, exactly one valid  the header's address (``udp:192.0.2.7:5060``)
``X-Gateway-Source``
a configured front, no header, or a    the front itself; an INVITE or REGISTER without
malformed one, or several              a usable header is logged (rate-limited). The
                                       front's own address identifies nobody: no
                                       registration, trunk or trusted network (see
                                       :meth:`Fronts.is_front`)
anyone else                            the transport source; the header is ignored
=====================================  ===============================================

Responses and in-dialog requests still go back by Via and the route set, to the front:
only trust decisions use the origin. The overload gate reads the header from the raw
bytes (:meth:`Fronts.origin_of_bytes`, only for datagrams from a front), the router and the
registrar from the parsed request (:meth:`Fronts.origin_of`); both end in
:meth:`Fronts.origin`.

A front is written ``ip`` (any port: a TCP front connects from ephemeral ports) or
``ip:port`` / ``[ipv6]:port`` (a UDP front sends from its listening port; a phone on the
same host but another port is not the front).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from typing import Final

import structlog

from gateway.logs import LineBudget
from gateway.sip.address import Address, address_text, ip_of
from gateway.sip.message import Request

__all__ = ["SOURCE_HEADER", "Fronts", "parse_front", "parse_source"]

log = structlog.get_logger("gateway.fronts")

SOURCE_HEADER: Final = "X-Gateway-Source"
"""The header a front writes with the real source of a request (and removes from senders)."""

_TRANSPORTS: Final = frozenset({"udp", "tcp", "tls", "sctp", "ws", "wss"})
"""What Kamailio's ``$pr`` can say: a phone on WebSocket behind the front is identified by
its flow like any other (the node never sends to it directly: its Path leads there)."""
_HEADER_LINE: Final = re.compile(rb"\r\nx-gateway-source[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)


def parse_front(text: str) -> tuple[str, int | None]:
    """A front as written in the dialplan: ``(ip, port)``, port None for any port.

    Raises ValueError with a message naming the value (the dialplan loader shows it)."""
    value = text.strip()
    host, port_text = value, ""
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"front {text!r} is not an IP address or ip:port")
        port_text = rest[1:] if rest else ""
        if rest and not port_text:
            raise ValueError(f"front {text!r} has an empty port")
    elif value.count(":") == 1:
        host, _, port_text = value.partition(":")
        if not port_text:
            raise ValueError(f"front {text!r} has an empty port")
    ip = ip_of(host)
    if ip is None:
        raise ValueError(
            f"front {text!r} must be an IP address, optionally with :port "
            "(a host name is not resolved: requests are matched by their source address)"
        )
    port: int | None = None
    if port_text:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise ValueError(f"front {text!r}: port must be 1..65535")
        port = int(port_text)
    return ip.compressed, port


@lru_cache(maxsize=4096)
def parse_source(value: str) -> Address | None:
    """The address in an ``X-Gateway-Source`` value (``udp:192.0.2.7:5060``, IPv6 with or
    without brackets), or None when it is not one. Cached: every request of one phone
    carries the same value."""
    transport, _, rest = value.strip().partition(":")
    host, _, port_text = rest.rpartition(":")
    transport = transport.lower()
    if transport not in _TRANSPORTS or not port_text.isdigit() or len(port_text) > 5:
        return None
    ip = ip_of(host.removeprefix("[").removesuffix("]"))
    port = int(port_text)
    if ip is None or not 1 <= port <= 65535:
        return None
    return Address(transport, ip.compressed, port)


class Fronts:
    """The configured fronts (``node.fronts``), and the origin of each request."""

    __slots__ = ("_any_port", "_budget", "_clock", "_exact", "entries")

    def __init__(
        self, entries: Iterable[str] = (), *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        #: the fronts as written in the dialplan
        self.entries = tuple(entries)
        any_port: set[str] = set()
        exact: set[tuple[str, int]] = set()
        for entry in self.entries:
            host, port = parse_front(entry)
            if port is None:
                any_port.add(host)
            else:
                exact.add((host, port))
        self._any_port = frozenset(any_port)
        self._exact = frozenset(exact)
        self._clock = clock
        self._budget = LineBudget(lines=10, interval_s=60.0)

    def __bool__(self) -> bool:
        return bool(self._any_port or self._exact)

    def is_front(self, source: Address) -> bool:
        """Did ``source`` (a transport source, or an origin) come from a configured front?

        An origin that is still a front's address (no usable header) identifies nobody."""
        if not self._exact and not self._any_port:
            return False
        # a socket's address is in the compressed form the entries were normalised to
        host = source.host
        return host in self._any_port or (host, source.port) in self._exact

    def origin(
        self, source: Address, values: Sequence[str], *, method: str = "", quiet: bool = False
    ) -> Address:
        """The origin of a request from ``source`` carrying these ``X-Gateway-Source``
        ``values``: the header's address when ``source`` is a front and it wrote exactly
        one valid value, the front itself when not (an INVITE or REGISTER ``method`` then
        logs why, at most 10 lines a minute; ``quiet``: never), else ``source``."""
        if not self.is_front(source):
            return source
        if len(values) == 1:
            found = parse_source(values[0])
            if found is not None:
                return found
            problem = "invalid"
        else:
            problem = "missing" if not values else "repeated"
        if not quiet and (problem != "missing" or method in ("INVITE", "REGISTER")):
            dropped = self._budget.allow(self._clock())
            if dropped is not None:
                log.warning(
                    "front_source_unusable",
                    front=address_text(source),
                    method=method or None,
                    problem=problem,
                    value=values[0][:80] if values else None,
                    dropped=dropped,
                    detail=f"{SOURCE_HEADER} {problem}: treated as a request of the front "
                    "itself, which identifies no agent, trunk or trusted network",
                )
        return source

    def origin_of(self, request: Request, source: Address) -> Address:
        """:meth:`origin` of a parsed request (the router, the registrar)."""
        if not self.is_front(source):
            return source
        return self.origin(source, request.get_all(SOURCE_HEADER), method=request.method)

    def origin_of_bytes(self, data: bytes, source: Address) -> Address:
        """:meth:`origin` of a request not parsed yet (the overload gate): the header lines
        are found in the head of ``data``, nothing else is read. Quiet: the parsed request
        logs, once, if it matters."""
        if not self.is_front(source):
            return source
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return source
        values = [
            match.group(1).decode("utf-8", "replace").strip()
            for match in _HEADER_LINE.finditer(data, 0, end)
        ]
        return self.origin(source, values, quiet=True)
