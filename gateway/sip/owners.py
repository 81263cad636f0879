"""Owners of client transactions outside any call (SPEC O-3 keep-alives).

The transaction layer keeps an opaque ``owner`` on each transaction; the call layer finds
its calls through it. A request the node sends on its own behalf (an OPTIONS keep-alive to
a trunk gateway) has a :class:`ClientOwner`, and the call layer hands it the outcome.
"""

from __future__ import annotations

from gateway.sip.model import Response

__all__ = ["ClientOwner"]


class ClientOwner:
    """The owner of a client transaction that belongs to no call: it hears the responses,
    or that none came (Timer F, a transport error), and nothing else."""

    __slots__ = ()

    def on_response(self, response: Response, now: float) -> None:
        """A response (provisional or final) to the request."""

    def on_failure(self, detail: str, now: float) -> None:
        """No response: Timer F, or a transport error."""
