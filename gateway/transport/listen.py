"""Listening addresses, and which one a message to a given peer goes out from.

Sans-I/O: :class:`ListenSpec` is one listening socket's address; :class:`ListenerChoice`
picks the listener whose address a message presents (Via, Contact) to a destination:
same transport and address family first. The endpoint asks it for every Via and Contact it
writes, ten times a call for the same few peers, so each answer is kept.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from gateway.sip.address import Address, is_ip_literal

__all__ = ["ListenSpec", "ListenerChoice", "family_of"]

#: answers kept before the table starts again (spoofed sources must not grow it for ever)
_KEPT = 4096


def family_of(host: str) -> int:
    """The address family of a host literal (``::1`` is IPv6; names and IPv4 are IPv4)."""
    return socket.AF_INET6 if ":" in host else socket.AF_INET


@dataclass(frozen=True, slots=True)
class ListenSpec:
    """One listening socket: transport ("udp", "tcp" or "tls"), host literal, port."""

    transport: str
    host: str
    port: int

    @property
    def family(self) -> int:
        return family_of(self.host)

    @property
    def sent_by(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


class ListenerChoice:
    """The listener presented to each destination, from a fixed list of listeners."""

    __slots__ = ("_chosen", "listeners")

    def __init__(self, listeners: list[ListenSpec]):
        self.listeners = listeners
        self._chosen: dict[tuple[str, str], ListenSpec] = {}

    def __call__(self, destination: Address) -> ListenSpec:
        key = (destination.transport, destination.host)
        spec = self._chosen.get(key)
        if spec is None:
            if len(self._chosen) >= _KEPT:
                self._chosen.clear()
            spec = self._chosen[key] = self._choose(destination)
        return spec

    def _choose(self, destination: Address) -> ListenSpec:
        """Same transport and family; else same transport; else same family; else the
        first listener (a host name matches any family)."""
        family = family_of(destination.host) if is_ip_literal(destination.host) else None
        fallback: ListenSpec | None = None
        for spec in self.listeners:
            if spec.transport != destination.transport:
                continue
            if family is None or spec.family == family:
                return spec
            fallback = fallback or spec
        if fallback is not None:
            return fallback
        for spec in self.listeners:
            if family is None or spec.family == family:
                return spec
        return self.listeners[0]
