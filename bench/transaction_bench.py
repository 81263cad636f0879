"""Transaction-layer throughput: the transaction work of one B2BUA call, end to end.

Per call, on one :class:`TransactionLayer` (UDP, fake clock, 1000 new calls per virtual
second): A-leg INVITE in (parse + receive, 100 Trying out), B-leg INVITE out, B-leg
100/180/200 in (parse + receive), 180/200 out on the A leg, ACK out on the B leg, ACK in on
the A leg, BYE in + 200 out, BYE out + 200 in, and every timer (2xx retransmission stop,
Timers J/K/L/M) fired as the virtual clock moves. Peer messages are pre-serialised bytes,
so the figure is parse + transaction layer + make_response + serialise (the garbage
collector runs, the pre-built inputs are frozen out of it).

    .venv/bin/python bench/transaction_bench.py [--calls 20000]
"""

from __future__ import annotations

import argparse
import gc
import random
import time

from gateway.sip.message import Request, make_response, parse_message
from gateway.sip.transaction import (
    Address,
    IdGenerator,
    RequestReceived,
    TimerConfig,
    TransactionLayer,
)

A_PEER = Address("udp", "192.0.2.10", 5060)
B_PEER = Address("udp", "203.0.113.7", 5060)

A_INVITE = (
    "INVITE sip:911@gw.example.net SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK{n}a;rport\r\n"
    "Max-Forwards: 70\r\n"
    "From: <sip:caller@pbx.example.org>;tag=a{n}\r\n"
    "To: <sip:911@gw.example.net>\r\n"
    "Call-ID: a{n}@pbx\r\n"
    "CSeq: 1 INVITE\r\n"
    "Contact: <sip:caller@192.0.2.10>\r\n"
    "Content-Type: application/sdp\r\n"
    "Content-Length: 28\r\n\r\n"
    "v=0\r\ns=-\r\nc=IN IP4 0.0.0.0\r\n"
)
A_ACK = (
    "ACK sip:gw@198.51.100.1 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK{n}ack;rport\r\n"
    "Max-Forwards: 70\r\n"
    "From: <sip:caller@pbx.example.org>;tag=a{n}\r\n"
    "To: <sip:911@gw.example.net>;tag=gw{n}\r\n"
    "Call-ID: a{n}@pbx\r\n"
    "CSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
)
A_BYE = (
    "BYE sip:gw@198.51.100.1 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK{n}bye;rport\r\n"
    "Max-Forwards: 70\r\n"
    "From: <sip:caller@pbx.example.org>;tag=a{n}\r\n"
    "To: <sip:911@gw.example.net>;tag=gw{n}\r\n"
    "Call-ID: a{n}@pbx\r\n"
    "CSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
)


def b_request(method: str, n: int, cseq: int, to_tag: str = "") -> Request:
    request = parse_message(
        (
            f"{method} sip:911@203.0.113.7 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 198.51.100.1:5060;branch=z9hG4bK{n}{method[0]}b;rport\r\n"
            "Max-Forwards: 69\r\n"
            f"From: <sip:caller@198.51.100.1>;tag=gwb{n}\r\n"
            f"To: <sip:911@203.0.113.7>{to_tag}\r\n"
            f"Call-ID: b{n}@gw\r\n"
            f"CSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
        ).encode()
    )
    assert isinstance(request, Request)
    return request


def b_response(request: Request, status: int) -> bytes:
    """The callee's answer as bytes (built outside the timed loop)."""
    return make_response(request, status, to_tag="callee").to_bytes()


def run(calls: int) -> float:
    layer = TransactionLayer(TimerConfig(), IdGenerator(random.Random(1)))
    # pre-build the peers' bytes so that only our side is timed
    a_invites = [A_INVITE.format(n=n).encode() for n in range(calls)]
    a_acks = [A_ACK.format(n=n).encode() for n in range(calls)]
    a_byes = [A_BYE.format(n=n).encode() for n in range(calls)]
    b_invites = [b_request("INVITE", n, 1) for n in range(calls)]
    b_byes = [b_request("BYE", n, 2, ";tag=callee") for n in range(calls)]
    b_acks = [b_request("ACK", n, 1, ";tag=callee") for n in range(calls)]
    b_resp = [
        [b_response(b_invites[n], s) for s in (100, 180, 200)] + [b_response(b_byes[n], 200)]
        for n in range(calls)
    ]
    sent = 0
    gc.collect()
    gc.freeze()  # the pre-built inputs are not part of the load
    start = time.perf_counter()
    for n in range(calls):
        now = n / 1000.0
        layer.receive(parse_message(a_invites[n]), A_PEER, now)
        invite_in = layer.next_event()
        assert isinstance(invite_in, RequestReceived)
        a_tx = invite_in.transaction
        b_tx = layer.send_request(b_invites[n], B_PEER, now)
        r100, r180, r200, rbye = b_resp[n]
        layer.receive(parse_message(r100), B_PEER, now)
        layer.receive(parse_message(r180), B_PEER, now)
        layer.send_response(a_tx, make_response(a_tx.request, 180, to_tag=f"gw{n}"), now)
        layer.receive(parse_message(r200), B_PEER, now)
        layer.send_ack(b_tx, b_acks[n], B_PEER, now)
        layer.send_response(a_tx, make_response(a_tx.request, 200, to_tag=f"gw{n}"), now)
        layer.receive(parse_message(a_acks[n]), A_PEER, now)
        while layer.next_event() is not None:
            pass
        layer.receive(parse_message(a_byes[n]), A_PEER, now)
        bye_in = layer.next_event()
        assert isinstance(bye_in, RequestReceived)
        layer.send_response(bye_in.transaction, make_response(bye_in.request, 200), now)
        layer.send_request(b_byes[n], B_PEER, now)
        layer.receive(parse_message(rbye), B_PEER, now)
        while layer.next_event() is not None:
            pass
        while layer.next_outgoing() is not None:
            sent += 1
        layer.handle_timer(now)
    layer.handle_timer(1e9)
    elapsed = time.perf_counter() - start
    gc.unfreeze()
    assert layer.client_count == 0 and layer.server_count == 0, "leak"
    return calls / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    best = max(run(args.calls) for _ in range(args.rounds))
    print(f"transaction layer: {best:,.0f} calls/s (best of {args.rounds}, {args.calls} calls)")


if __name__ == "__main__":
    main()
