"""Where a message goes or came from, and the element's source of fresh identifiers.

Both sit below the transaction layer and the dialogs, which share them: :class:`Address`
(transport, host, port) with its one text form (:func:`address_text`, ``udp:192.0.2.7:5060``,
the form logs, events and registrations use), and :class:`IdGenerator` (branches, tags and
Call-IDs from an injected random source).
"""

from __future__ import annotations

import ipaddress
import os
import random
from functools import lru_cache
from typing import Any, NamedTuple

__all__ = ["BRANCH_COOKIE", "Address", "IdGenerator", "address_text", "ip_of", "is_ip_literal"]

#: RFC 3261 section 8.1.1.7: every branch this element makes starts with the magic cookie
BRANCH_COOKIE = "z9hG4bK"


class Address(NamedTuple):
    """Where a message goes or came from. ``transport`` is "udp", "tcp" or "tls"."""

    transport: str
    host: str
    port: int

    @property
    def reliable(self) -> bool:
        """True for stream transports (no retransmissions, zero wait timers)."""
        return self.transport != "udp"


def address_text(address: Address) -> str:
    """``udp:192.0.2.7:5060``: the one text form of an address (logs, events, bindings)."""
    return f"{address.transport}:{address.host}:{address.port}"


@lru_cache(maxsize=4096)
def udp_source(addr: tuple[Any, ...]) -> Address:
    """The Address of a UDP datagram's source, one object per peer (issue 10): a
    transaction keeps its source for 64*T1, and without this every datagram made its own
    Address and host string (about 120 bytes per message kept). ``addr`` is what
    ``recvfrom`` gives: (host, port), or (host, port, flowinfo, scope_id) for IPv6 (this
    module is compiled, and a compiled function checks its argument types)."""
    return Address("udp", addr[0], addr[1])


@lru_cache(maxsize=4096)
def ip_of(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address a host string spells (``192.0.2.7``, ``::1``), or None for a host name.

    Cached: the same few peers' hosts are looked at several times per message (which
    listener sends, is it in a trusted network), and parsing them cost about 8 % of the
    CPU of a call."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def is_ip_literal(host: str) -> bool:
    """Is ``host`` an IPv4 or IPv6 address rather than a name to resolve?"""
    return ip_of(host) is not None


class IdGenerator:
    """Branches, tags and Call-IDs from an injected random source.

    Without one, from the kernel's CSPRNG (``os.urandom``, as ``random.SystemRandom``) read
    4 KB at a time: one system call per ~500 ids instead of one per id (a call makes about
    eight; the calls were 3 % of the gateway's CPU under load).
    """

    _POOL_BYTES = 4096

    def __init__(self, rng: random.Random | None = None):
        self._rng = rng
        self._pool = b""
        self._at = 0

    def token(self, nbytes: int = 8) -> str:
        rng = self._rng
        if rng is not None:
            return f"{rng.getrandbits(nbytes * 8):0{nbytes * 2}x}"
        at = self._at
        end = at + nbytes
        if end > len(self._pool):
            self._pool = os.urandom(max(self._POOL_BYTES, nbytes))
            at, end = 0, nbytes
        self._at = end
        return self._pool[at:end].hex()

    def branch(self) -> str:
        return BRANCH_COOKIE + self.token(8)

    def tag(self) -> str:
        return self.token(6)

    def call_id(self, host: str) -> str:
        return f"{self.token(10)}@{host}"
