"""SPEC E-4: the callback-DID choice, as the pure function every store runs."""

from __future__ import annotations

import pytest

from gateway.emergency.reservations import DidChoice, choose_callback_did
from gateway.stores.ports import Reservation

POOL = ("+15550000001", "+15550000002", "+15550000003")
TTL = 3600.0


def held(*rows: tuple[str, str, float]) -> dict[str, Reservation]:
    """Reservations ``(did, agent, reserved_at)``, each live for TTL seconds."""
    return {did: Reservation(did, agent, at, at + TTL, "c", False) for did, agent, at in rows}


def test_a_fresh_pool_gives_the_first_did() -> None:
    assert choose_callback_did("alice", POOL, {}, 0.0) == DidChoice(POOL[0], False)


def test_the_agents_live_did_is_renewed() -> None:
    rows = held((POOL[0], "bob", 0.0), (POOL[1], "alice", 1.0))
    assert choose_callback_did("alice", POOL, rows, 2.0) == DidChoice(POOL[1], False)


def test_of_two_live_dids_the_latest_is_renewed() -> None:
    rows = held((POOL[0], "alice", 5.0), (POOL[2], "alice", 7.0))
    assert choose_callback_did("alice", POOL, rows, 8.0).did == POOL[2]


def test_a_free_did_the_agent_held_last_comes_back_to_her() -> None:
    rows = held((POOL[0], "bob", 0.0), (POOL[1], "alice", 1.0))
    later = 1.0 + TTL + 1  # both expired
    assert choose_callback_did("alice", POOL, rows, later) == DidChoice(POOL[1], False)


def test_never_reserved_dids_come_before_expired_ones_of_others() -> None:
    rows = held((POOL[0], "bob", 0.0))
    assert choose_callback_did("carol", POOL, rows, TTL + 1).did == POOL[1]


def test_among_expired_dids_the_least_recently_reserved_goes_first() -> None:
    rows = held((POOL[0], "bob", 3.0), (POOL[1], "dave", 1.0), (POOL[2], "erin", 2.0))
    assert choose_callback_did("carol", POOL, rows, 10 * TTL) == DidChoice(POOL[1], False)


def test_an_exhausted_pool_takes_over_the_least_recently_reserved() -> None:
    rows = held((POOL[0], "bob", 3.0), (POOL[1], "dave", 1.0), (POOL[2], "erin", 2.0))
    assert choose_callback_did("carol", POOL, rows, 4.0) == DidChoice(POOL[1], True)


def test_ties_go_to_the_did_earlier_in_the_pool() -> None:
    rows = held((POOL[0], "bob", 1.0), (POOL[1], "dave", 1.0), (POOL[2], "erin", 1.0))
    assert choose_callback_did("carol", POOL, rows, 2.0) == DidChoice(POOL[0], True)


def test_an_expiry_exactly_now_is_free() -> None:
    rows = held((POOL[0], "bob", 0.0))
    assert choose_callback_did("bob", POOL[:1], rows, TTL) == DidChoice(POOL[0], False)
    assert choose_callback_did("carol", POOL[:1], rows, TTL) == DidChoice(POOL[0], False)
    assert choose_callback_did("carol", POOL[:1], rows, TTL - 1) == DidChoice(POOL[0], True)


def test_an_empty_pool_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        choose_callback_did("alice", (), {}, 0.0)
