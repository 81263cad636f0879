"""Which callback DID an agent gets (SPEC E-4): the choice, as a pure function.

The reservation store runs :func:`choose_callback_did` inside its own atomic step (the
SQLite store in one ``BEGIN IMMEDIATE`` transaction; the Redis store between ``WATCH``
and ``EXEC``, again if another node wrote in between): the emergency service passes it to
:meth:`~gateway.stores.ports.ReservationStore.reserve`, so every store applies the same
rule and none holds a copy of it.

In order of preference:

==============================================  ======================================
facts                                           the DID chosen
==============================================  ======================================
the agent holds a live DID of the pool          that one, renewed (its latest one if
                                                several)
some DIDs are free (never reserved or expired)  the free DID the agent held last; else
                                                a never-reserved one, in pool order;
                                                else the least recently reserved free
                                                one -- a number stays with its last
                                                holder as long as possible, in case
                                                the emergency service calls back late
every DID is held live by someone else          the least recently reserved one, taken
                                                over (``taken_over``: the event says so)
==============================================  ======================================

Ties go to the DID earlier in the pool.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

from gateway.stores.ports import Reservation

__all__ = ["DidChoice", "choose_callback_did"]


class DidChoice(NamedTuple):
    """The DID to reserve, and whether it was taken over from a live holder."""

    did: str
    taken_over: bool


def choose_callback_did(
    agent_id: str, pool: Sequence[str], held: Mapping[str, Reservation], now: float
) -> DidChoice:
    """The DID ``agent_id`` gets from ``pool`` (distinct DIDs, in order) at ``now``.

    ``held`` maps the pool's DIDs that have a reservation (live or expired) to it.
    Raises :class:`ValueError` for an empty pool.
    """
    if not pool:
        raise ValueError("the callback DID pool is empty")
    position = {did: index for index, did in enumerate(pool)}

    def latest(reservations: list[Reservation]) -> str:
        return max(reservations, key=lambda r: (r.reserved_at, -position[r.did])).did

    def oldest(dids: Sequence[str]) -> str:
        return min(dids, key=lambda did: (held[did].reserved_at, position[did]))

    own_live = [r for r in held.values() if r.agent_id == agent_id and r.expires_at > now]
    if own_live:
        return DidChoice(latest(own_live), False)
    free = [did for did in pool if did not in held or held[did].expires_at <= now]
    if not free:
        return DidChoice(oldest(pool), True)
    own_last = [held[did] for did in free if did in held and held[did].agent_id == agent_id]
    if own_last:
        return DidChoice(latest(own_last), False)
    never = [did for did in free if did not in held]
    if never:
        return DidChoice(never[0], False)
    return DidChoice(oldest(free), False)
