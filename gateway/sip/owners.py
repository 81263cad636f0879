"""Owners of client transactions outside any call (SPEC O-3 keep-alives).

The transaction layer keeps an opaque ``owner`` on each transaction; the call layer finds
its calls through it. A request the node sends on its own behalf (an OPTIONS keep-alive to
a trunk gateway, a REGISTER to a registration-based trunk) has a :class:`ClientOwner`, and
the call layer hands it the outcome with the transaction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.sip.model import Response

if TYPE_CHECKING:
    from gateway.sip.transaction import ClientTransaction

__all__ = ["ClientOwner"]


class ClientOwner:
    """The owner of a client transaction that belongs to no call: it hears the responses,
    or that none came (Timer F, a transport error), and nothing else."""

    __slots__ = ()

    def on_response(self, tx: ClientTransaction, response: Response, now: float) -> None:
        """A response (provisional or final) to the request of ``tx``."""

    def on_failure(self, tx: ClientTransaction, detail: str, now: float) -> None:
        """No response: Timer F, or a transport error."""
