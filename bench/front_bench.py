"""What reading the front's X-Gateway-Source costs per request (issue #12), one run.

Prints microseconds per call of the overload gate's ``screen`` (it runs for every datagram,
before parsing; a quiet node, so nothing is shed) on the bench INVITE:

    no fronts         the dialplan names no front (a single node): the reference
    not from a front  fronts configured, the datagram from a phone (the header is not read)
    from the front    fronts configured, the datagram from the front with its header (the
                      head is scanned for it and the origin parsed)

and, for scale, parsing the same INVITE, and ``Fronts.origin_of`` on the parsed request
(what the router and the registrar add for a request from a front).

    .venv/bin/python bench/front_bench.py [--seconds 1] [--rounds 3]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

from gateway.b2bua.admission import Admission
from gateway.b2bua.flood import SourceLimits
from gateway.b2bua.gate import OverloadGate
from gateway.config.overload import OverloadSettings
from gateway.fronts import Fronts
from gateway.sip.address import Address
from gateway.sip.message import Request, parse_message

INVITE = (Path(__file__).parent.parent / "tests" / "data" / "sip" / "bench_invite.sip").read_bytes()
FRONT = Address("udp", "192.0.2.5", 5060)
PHONE = Address("udp", "192.0.2.10", 5062)
FROM_FRONT = INVITE.replace(
    b"\r\nMax-Forwards", b"\r\nX-Gateway-Source: udp:192.0.2.10:5062\r\nMax-Forwards", 1
)


def per_call_us(work: Callable[[], object], seconds: float) -> float:
    """Microseconds per ``work()``, best of batches run for ``seconds``."""
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        for _ in range(1000):
            work()
        best = min(best, (time.perf_counter() - started) / 1000)
    return best * 1e6


def gate(fronts: Fronts | None) -> OverloadGate:
    return OverloadGate(
        Admission(OverloadSettings()),
        lambda uri, source: False,
        "bench",
        limits=SourceLimits(30.0, 60),
        trusted=lambda source: True,
        fronts=fronts,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    assert b"X-Gateway-Source" in FROM_FRONT
    fronts = Fronts(["192.0.2.5:5060"])
    plain, fronted = gate(None), gate(fronts)
    parsed = parse_message(FROM_FRONT)
    assert isinstance(parsed, Request) and fronts.origin_of(parsed, FRONT) == PHONE
    cases: dict[str, Callable[[], object]] = {
        "screen, no fronts": lambda: plain.screen(INVITE, PHONE, 1.0),
        "screen, not from a front": lambda: fronted.screen(INVITE, PHONE, 1.0),
        "screen, from the front": lambda: fronted.screen(FROM_FRONT, FRONT, 1.0),
        "origin_of, parsed, from the front": lambda: fronts.origin_of(parsed, FRONT),
        "parse_message (for scale)": lambda: parse_message(FROM_FRONT),
    }
    for round_ in range(1, args.rounds + 1):
        print(f"round {round_}")
        for name, work in cases.items():
            print(f"  {name:36s} {per_call_us(work, args.seconds):7.2f} us")


if __name__ == "__main__":
    main()
