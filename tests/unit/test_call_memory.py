"""A finished call frees its objects at once, and the idle trim runs only when idle (issue 10).

Under the paced GC (gateway/gcpolicy.py) a reference cycle waits for the 10-minute full
collection, and a call's transactions linger 64*T1 after it: so a call that ended must be
gone by reference counting alone, while its transactions still wait out their timers, and
those transactions must no longer hold the call's messages.
"""

from __future__ import annotations

import asyncio
import gc

import pytest
from b2bua_peers import ANSWER, CALLER, GW1, SDP, Net, hop, outbound

from gateway.b2bua.call import Call, Leg, RelayedRequest
from gateway.gcpolicy import IdleTrim, MemoryTrimmer
from gateway.sip.dialog import Dialog
from gateway.sip.transaction import ClientTransaction, MessageReleased, ServerTransaction


def _call_objects() -> list[object]:
    return [o for o in gc.get_objects() if isinstance(o, Call | Leg | Dialog | RelayedRequest)]


def _place_and_end_calls(net: Net, calls: int, *, callee_hangs_up: bool = False) -> None:
    caller, callee = net.peer(CALLER), net.peer(GW1)
    for _ in range(calls):
        tx = caller.invite(body=SDP)
        incoming = callee.requests("INVITE")[-1]
        sent = callee.answer(incoming, 200, ANSWER)
        a_dialog = caller.uac_dialog(tx)
        caller.ack(tx, a_dialog)
        if callee_hangs_up:
            callee.request(callee.uas_dialog(incoming, sent), "BYE")
            callee.answer(caller.requests("BYE")[-1], 200)
        else:
            caller.request(a_dialog, "BYE")
            callee.answer(callee.requests("BYE")[-1], 200)
        net.advance(0.6)  # the 2xx retransmission timers stop with the ACK


@pytest.mark.parametrize("callee_hangs_up", [False, True])
def test_a_finished_call_is_freed_by_reference_counting_while_its_transactions_linger(
    callee_hangs_up: bool,
) -> None:
    net = Net(outbound(hop(GW1)))
    gc.collect()
    gc.disable()
    try:
        _place_and_end_calls(net, 3, callee_hangs_up=callee_hangs_up)
        assert net.b2bua.calls == {}
        # the INVITE and BYE transactions wait out Timers L, M, J (32 s): still there
        assert net.layer.server_count >= 3 and net.layer.client_count >= 3
        left = _call_objects()
        assert left == [], f"objects of ended calls outlived them: {left[:5]}"
    finally:
        gc.enable()


def test_the_lingering_transactions_of_ended_calls_hold_no_message() -> None:
    net = Net(outbound(hop(GW1)))
    _place_and_end_calls(net, 2)
    lingering: list[ServerTransaction | ClientTransaction] = [
        *net.layer._servers.values(),
        *net.layer._clients.values(),
    ]
    assert len(lingering) == 8  # per call: INVITE and BYE, each on both legs
    for tx in lingering:
        assert tx.last_response is None
        with pytest.raises(MessageReleased):
            _ = tx.request
    net.advance(40.0)
    assert net.layer.server_count == 0 and net.layer.client_count == 0


# -- the idle trim ------------------------------------------------------------------------


def _quiet_seconds(decide: IdleTrim, start: int, end: int, received: int, live: int) -> list[int]:
    """Observe one quiet second at a time; the seconds at which it said trim."""
    return [s for s in range(start, end) if decide.observe(float(s), received, live)]


def test_no_trim_while_traffic_flows_even_when_much_was_freed() -> None:
    decide = IdleTrim(min_drop=1000, quiet_rate=20.0, settle=3.0, min_interval=10.0)
    assert not decide.observe(0.0, 0, 0)
    assert not decide.observe(1.0, 500, 20_000)  # a load: 500 messages/s
    # the work ends, but 500 messages a second still arrive: never trim under traffic
    for second in range(2, 60):
        assert not decide.observe(float(second), 500 * second, 0)


def test_a_trim_once_the_load_s_transactions_have_ended_and_the_node_is_quiet() -> None:
    decide = IdleTrim(min_drop=1000, quiet_rate=20.0, settle=3.0, min_interval=10.0)
    for second in range(0, 20):  # a load: the live work grows
        decide.observe(float(second), 400 * second, 1000 * second)
    # the load ends: its finished transactions end over the next 32 s, no trim meanwhile
    received = 400 * 19
    for second in range(20, 52):
        live = 19_000 - 600 * (second - 20)
        assert not decide.observe(float(second), received, live), second
    # everything ended and stays so: one trim after `settle` seconds, then none
    assert _quiet_seconds(decide, 52, 120, received, 0) == [55]


def test_no_trim_when_too_little_was_freed() -> None:
    decide = IdleTrim(min_drop=1000, quiet_rate=20.0, settle=3.0, min_interval=10.0)
    decide.observe(0.0, 0, 0)
    decide.observe(1.0, 10, 900)  # a small burst
    assert _quiet_seconds(decide, 2, 60, 10, 0) == []


def test_held_calls_that_stay_up_are_not_a_reason_to_trim_but_their_end_is() -> None:
    decide = IdleTrim(min_drop=1000, quiet_rate=20.0, settle=3.0, min_interval=10.0)
    decide.observe(0.0, 0, 0)
    decide.observe(20.0, 10_000, 30_000)  # 10,000 calls set up, with their transactions
    # the transactions end, the calls stay: a trim once that has settled
    assert _quiet_seconds(decide, 60, 120, 10_000, 10_000) == [63]
    # the calls end (BYEs), then their transactions: one more trim
    decide.observe(120.0, 30_000, 30_000)
    assert _quiet_seconds(decide, 121, 200, 30_000, 0) == [124]


def test_two_loads_in_a_row_trim_at_most_once_per_min_interval() -> None:
    decide = IdleTrim(min_drop=10, quiet_rate=20.0, settle=1.0, min_interval=10.0)
    decide.observe(0.0, 0, 100)
    assert _quiet_seconds(decide, 1, 5, 1, 0) == [2]
    decide.observe(5.0, 1000, 100)
    assert _quiet_seconds(decide, 6, 20, 1000, 0) == [12]


async def test_the_trimmer_calls_trim_on_the_loop_only_when_idle() -> None:
    trims: list[int] = []
    received = [0]
    live = [5000]

    def trim() -> int:
        trims.append(received[0])
        return 1

    trimmer = MemoryTrimmer(
        asyncio.get_running_loop(),
        trim,
        lambda: received[0],
        lambda: live[0],
        IdleTrim(min_drop=1000, quiet_rate=20.0, settle=0.02, min_interval=0.0),
        interval=0.01,
    )
    trimmer.start()
    try:
        for step in range(30):  # busy: messages keep coming, the work goes half-way
            received[0] += 100
            live[0] = 5000 if step < 10 else 0
            await asyncio.sleep(0.01)
        assert trims == []
        await asyncio.sleep(0.1)  # quiet now
        assert len(trims) == 1 and trimmer.trims == 1
    finally:
        trimmer.close()


def test_a_live_call_goes_on_after_the_tables_are_compacted() -> None:
    net = Net(outbound(hop(GW1)))
    _place_and_end_calls(net, 50)
    caller, callee = net.peer(CALLER), net.peer(GW1)
    tx = caller.invite(body=SDP)
    callee.answer(callee.requests("INVITE")[-1], 200, ANSWER)
    a_dialog = caller.uac_dialog(tx)
    caller.ack(tx, a_dialog)
    net.advance(40.0)  # the ended calls' transactions go; the live call stays
    net.layer.compact()
    net.b2bua.core.compact()
    (call,) = net.b2bua.calls.values()
    caller.request(a_dialog, "BYE")
    callee.answer(callee.requests("BYE")[-1], 200)
    assert caller.final("BYE").status == 200
    assert call.ended and net.b2bua.calls == {} and net.b2bua.legs == {}


def test_a_late_answer_to_a_finished_transaction_is_dropped_not_raised() -> None:
    net = Net(outbound(hop(GW1)))
    caller, callee = net.peer(CALLER), net.peer(GW1)
    tx = caller.invite(body=SDP)
    callee.answer(callee.requests("INVITE")[-1], 200, ANSWER)
    caller.ack(tx, caller.uac_dialog(tx))
    (call,) = net.b2bua.calls.values()
    a_tx = call.a.server_tx
    assert a_tx is not None and a_tx.state == "accepted"
    sent = len(net.wire)
    # e.g. a timer of the call layer that fires after the answer: nothing to send
    assert net.b2bua.core.respond(a_tx, 503) is None
    net.exchange()
    assert len(net.wire) == sent
