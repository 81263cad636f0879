"""What the emergency policy reads of the call layer's values, as Protocols.

The call layer (:mod:`gateway.b2bua`) routes emergency calls with this package, so this
package must not import it back. The B2BUA hands the emergency hooks its own values
(``NextHop``, ``LegFailure``, ``CallOutcome`` of :mod:`gateway.b2bua.call`); the hooks
only read the few facts named here, which those values satisfy structurally.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Any, Protocol

from gateway.sip.address import Address

__all__ = ["AttemptFacts", "CallFacts", "HopFacts", "OutcomeFacts"]


class HopFacts(Protocol):
    """One place the emergency leg is sent: the path's name, where, and whether it takes
    the caller's location by value (RFC 6442, SPEC E-10)."""

    @property
    def trunk(self) -> str: ...

    @property
    def address(self) -> Address: ...

    @property
    def accepts_location(self) -> bool: ...


class AttemptFacts(Protocol):
    """One failed attempt, as the ``failover`` event and ``attempts`` entries carry it."""

    def as_event(self) -> dict[str, Any]: ...


class OutcomeFacts(Protocol):
    """How a call ended: the ``result`` kind, the caller's final status, the attempts."""

    @property
    def kind(self) -> StrEnum: ...

    @property
    def status(self) -> int | None: ...

    @property
    def attempts(self) -> Sequence[AttemptFacts]: ...


class CallFacts(Protocol):
    """A call as the emergency edge observes it (``gateway.b2bua.call.Call`` fits): its
    id, the emergency facts the router put on it (if any), and how it ended."""

    @property
    def id(self) -> str: ...

    @property
    def emergency(self) -> object: ...

    @property
    def outcome(self) -> OutcomeFacts | None: ...
