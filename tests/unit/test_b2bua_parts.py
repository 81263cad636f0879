"""The call layer's small parts alone: the timer heap and the call state table."""

from __future__ import annotations

from gateway.b2bua.call import CALL_TRANSITIONS, Call, CallInput, CallState, Leg
from gateway.b2bua.timers import TimerHeap
from gateway.sip.message import Request
from gateway.sip.transaction import Address


def test_timers_fire_in_deadline_order_and_a_cancelled_one_never() -> None:
    heap = TimerHeap()
    fired: list[tuple[str, float]] = []
    heap.at(3.0, lambda now: fired.append(("c", now)))
    cancelled = heap.at(1.0, lambda now: fired.append(("x", now)))
    heap.at(2.0, lambda now: fired.append(("b", now)))
    cancelled.cancel()
    assert heap.get_timer() == 2.0 and heap.live == 2
    heap.handle_timer(2.5)
    assert fired == [("b", 2.5)] and heap.get_timer() == 3.0
    heap.handle_timer(10.0)
    assert fired == [("b", 2.5), ("c", 10.0)]
    assert heap.get_timer() is None and heap.live == 0


def test_cancelled_timers_are_compacted_away() -> None:
    heap = TimerHeap()
    for n in range(5000):
        heap.at(100.0 + n, lambda now: None).cancel()
    assert heap.live == 0 and len(heap._heap) <= 1024 + 1


def _call() -> Call:
    invite = Request("INVITE", "sip:1@192.0.2.1", [])
    return Call("c1", Leg("a", "cid", "tag", Address("udp", "192.0.2.10", 5060), invite), "1", 0.0)


def test_the_call_moves_by_its_table_and_absorbs_what_a_state_does_not_take() -> None:
    call = _call()
    assert call.step(CallInput.PROGRESS) is CallState.ROUTING  # absorbed
    assert call.step(CallInput.PLACE) is CallState.TRYING
    assert call.step(CallInput.PROGRESS) is CallState.EARLY
    assert call.step(CallInput.PLACE) is CallState.TRYING  # failover after ringing
    assert call.step(CallInput.ANSWER) is CallState.CONFIRMED
    assert call.step(CallInput.PLACE) is CallState.CONFIRMED  # absorbed
    assert call.step(CallInput.END) is CallState.ENDED and call.ended
    assert CALL_TRANSITIONS[CallState.ENDED] == {}
