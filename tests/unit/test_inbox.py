"""The UDP inbox's lanes, the gate's classification into them, and the intake that reads
ahead and serves them on a real event loop and a real loopback socket (SPEC O-4, E-3)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

from test_overload_gate import PHONE, invite

from gateway.b2bua.admission import Admission
from gateway.b2bua.gate import OverloadGate
from gateway.config.overload import OverloadSettings
from gateway.sip.address import Address
from gateway.transport.inbox import ADMITTED, NEW, ORDINARY, PRIORITY, Inbox
from gateway.transport.intake import SERVE_SLICE_S, UdpIntake

STRANGER = Address("udp", "203.0.113.9", 5060)


def by_prefix(data: bytes, source: Address, now: float) -> int:
    return {b"P": PRIORITY, b"A": ADMITTED}.get(data[:1], NEW)


def test_lanes_are_served_priority_first_then_admitted_then_new_each_in_arrival_order() -> None:
    inbox = Inbox(by_prefix)
    for data in (b"N1", b"A1", b"N2", b"P1", b"A2", b"P2"):
        inbox.put(data, PHONE, 0.0)
    assert len(inbox) == 6 and inbox.bytes == 12
    served = []
    while (item := inbox.pop()) is not None:
        served.append(item[0])
        assert item[2] == by_prefix(item[0], PHONE, 0.0)  # the lane goes with the datagram
    assert served == [b"P1", b"P2", b"A1", b"A2", b"N1", b"N2"]
    assert inbox.bytes == 0 and inbox.fill == 0.0
    assert inbox.served_out_of_order == 2


def test_fill_and_full_follow_the_bytes_waiting() -> None:
    inbox = Inbox(by_prefix, limit=10)
    inbox.put(b"N12", PHONE, 0.0)
    assert inbox.fill == 0.3 and not inbox.full
    inbox.put(b"N1234567", PHONE, 0.0)
    assert inbox.full and inbox.fill == 1.0
    inbox.clear()
    assert len(inbox) == 0 and inbox.bytes == 0


def _gate() -> OverloadGate:
    return OverloadGate(
        Admission(),
        lambda uri, source: str(uri).split(":")[1][:3] == "911",
        "gw",
        trusted=lambda source: source != STRANGER,
    )


def test_the_gate_classifies_emergency_invites_from_known_sources_first() -> None:
    gate = _gate()
    response = b"SIP/2.0 200 OK\r\nVia: x\r\n\r\n"
    bye = b"BYE sip:a@b SIP/2.0\r\n\r\n"
    assert gate.classify(invite("911"), PHONE, 0.0) == PRIORITY
    assert gate.classify(invite("911"), STRANGER, 0.0) == NEW  # a stranger does not jump
    assert gate.classify(invite(), PHONE, 0.0) == ORDINARY  # looked at: not to be looked again
    assert gate.classify(invite("911", to_tag=";tag=x"), PHONE, 0.0) == ADMITTED  # re-INVITE
    assert gate.classify(response, PHONE, 0.0) == ADMITTED
    assert gate.classify(bye, STRANGER, 0.0) == ADMITTED
    for method in (b"ACK", b"CANCEL", b"PRACK", b"UPDATE", b"INFO", b"NOTIFY", b"REFER"):
        assert gate.classify(method + b" sip:a@b SIP/2.0\r\n\r\n", PHONE, 0.0) == ADMITTED
    for method in (b"REGISTER", b"OPTIONS", b"SUBSCRIBE", b"MESSAGE"):
        assert gate.classify(method + b" sip:a@b SIP/2.0\r\n\r\n", PHONE, 0.0) == NEW
    assert gate.classify(b"INVITE sip:911@x SIP/2.0\r\n", PHONE, 0.0) == NEW  # unreadable
    assert gate.classify(b"garbage", PHONE, 0.0) == NEW


class Reader:
    """The endpoint's side of one UDP socket, for the intake: the socket, its errors."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.errors: list[Exception] = []

    def error_received(self, exc: Exception) -> None:
        self.errors.append(exc)


def listening() -> socket.socket:
    """A non-blocking UDP socket on loopback: the intake's listener."""
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.setblocking(False)
    return server


async def serve(
    intake: UdpIntake, waiting: list[bytes], arriving: bytes, done: Callable[[], bool]
) -> None:
    """``waiting`` already in the inbox, then ``arriving`` handed over by the loop; until
    ``done``."""
    server = listening()
    try:
        for data in waiting:
            intake.inbox.put(data, PHONE, 0.0)
        intake.on_datagram(arriving, PHONE, Reader(server))
        while not done():
            await asyncio.sleep(0.001)
    finally:
        server.close()
        intake.close()


async def test_the_intake_reads_the_kernel_queue_ahead_and_serves_the_911_invite_first() -> None:
    loop = asyncio.get_running_loop()
    handled: list[bytes] = []
    intake = UdpIntake(loop, lambda data, source, lane: handled.append(data))
    intake.inbox.classify = by_prefix
    server = listening()
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for index in range(40):
            client.sendto(b"N%d" % index, server.getsockname())
        client.sendto(b"P-911", server.getsockname())
        await asyncio.sleep(0.05)  # all of it now waits in the kernel's queue
        first, _ = server.recvfrom(100)  # what the event loop would hand over first
        intake.on_datagram(first, PHONE, Reader(server))
        await asyncio.sleep(0.01)
    finally:
        client.close()
        server.close()
        intake.close()
    # the 911 INVITE arrived last and was served first; the others in their order
    assert handled == [b"P-911", *(b"N%d" % i for i in range(40))]


async def test_the_intake_yields_to_the_loop_between_slices() -> None:
    loop = asyncio.get_running_loop()
    order: list[str] = []

    def slow(data: bytes, source: Address, lane: int) -> None:
        deadline = time.perf_counter() + SERVE_SLICE_S / 2
        while time.perf_counter() < deadline:
            pass
        order.append(data.decode())

    intake = UdpIntake(loop, slow)
    loop.call_soon(order.append, "timer")  # due at the next turn
    await serve(intake, [b"%d" % index for index in range(40)], b"40", lambda: len(order) >= 42)
    # the other callback ran after the first slice, long before the 41 datagrams were done
    assert 4 <= order.index("timer") < 30
    assert [o for o in order if o != "timer"] == [str(i) for i in range(41)]


def test_a_shedding_gate_trusts_the_inbox_lane_and_never_sheds_an_unchecked_911() -> None:
    asked: list[str] = []

    def priority(uri: object, source: Address) -> bool:
        asked.append(str(uri))
        return str(uri).startswith("sip:911")

    admission = Admission(OverloadSettings(max_calls_in_setup=1))
    admission.in_setup.add("busy")  # at the limit: new ordinary calls are shed
    gate = OverloadGate(admission, priority, "gw", trusted=lambda source: source != STRANGER)
    assert gate.screen(invite(), PHONE, 0.0, ORDINARY)  # a 503, without asking again
    assert asked == []
    assert gate.screen(invite("911"), PHONE, 0.0, PRIORITY) is None
    assert asked == []
    # a stranger's 911 is left in the ordinary lane unchecked: the gate still looks, and the
    # call layer gets it (challenged there, never refused for overload: SPEC E-3)
    lane = gate.classify(invite("911"), STRANGER, 0.0)
    assert lane == NEW and gate.screen(invite("911"), STRANGER, 0.0, lane) is None
    assert asked == ["sip:911@gw.example"]


def test_ordinary_invites_wait_in_the_new_lane() -> None:
    inbox = Inbox(lambda data, source, now: ORDINARY if data == b"O" else ADMITTED)
    inbox.put(b"O", PHONE, 0.0)
    inbox.put(b"A", PHONE, 0.0)
    assert [inbox.pop(), inbox.pop(), inbox.pop()] == [
        (b"A", PHONE, ADMITTED),
        (b"O", PHONE, ORDINARY),
        None,
    ]


async def test_the_work_a_priority_datagram_starts_runs_before_the_rest_of_the_slice() -> None:
    loop = asyncio.get_running_loop()
    order: list[str] = []

    def handle(data: bytes, source: Address, lane: int) -> None:
        order.append(data.decode())
        if data.startswith(b"P"):  # an emergency INVITE: its set-up goes on in a task
            loop.call_soon(order.append, "task")

    intake = UdpIntake(loop, handle)
    intake.inbox.classify = by_prefix
    await serve(intake, [b"N%d" % index for index in range(5)], b"P-911", lambda: len(order) >= 7)
    assert order == ["P-911", "task", "N0", "N1", "N2", "N3", "N4"]
