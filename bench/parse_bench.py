"""Parse throughput: our parser against sipmessage, same INVITE, same field access, one run.

Prints messages/s for each and the ratio. Field access = what a B2BUA reads on every
INVITE: top Via branch, From tag, To tag, Call-ID, CSeq, Max-Forwards, Request-URI user.

    .venv/bin/python bench/parse_bench.py [--seconds 2]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

INVITE = (Path(__file__).parent.parent / "tests" / "data" / "sip" / "bench_invite.sip").read_bytes()


def ours() -> Callable[[bytes], object]:
    from gateway.sip.message import parse_message

    def run(data: bytes) -> object:
        m = parse_message(data)
        return (m.top_via.branch, m.from_tag, m.to_tag, m.call_id, m.cseq.number,  # type: ignore[union-attr]
                m.max_forwards, m.uri.user)  # type: ignore[union-attr]

    return run


def theirs() -> Callable[[bytes], object]:
    from sipmessage import Message

    def run(data: bytes) -> object:
        m = Message.parse(data)
        return (m.via[0].parameters.get("branch"), m.from_address.parameters.get("tag"),
                m.to_address.parameters.get("tag"), m.call_id, m.cseq.sequence,
                m.max_forwards, m.uri.user)  # type: ignore[union-attr]

    return run


def measure(fn: Callable[[bytes], object], seconds: float) -> float:
    fn(INVITE)
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(200):
            fn(INVITE)
        n += 200
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    o = ours()
    t = theirs()
    best_o = best_t = 0.0
    # interleave rounds so that machine noise hits both sides alike; keep the best of each
    for _ in range(args.rounds):
        best_o = max(best_o, measure(o, args.seconds))
        best_t = max(best_t, measure(t, args.seconds))
    print(f"INVITE parse + field access, {len(INVITE)} bytes, best of {args.rounds} x {args.seconds}s")
    print(f"  gateway.sip : {best_o:10.0f} msg/s")
    print(f"  sipmessage  : {best_t:10.0f} msg/s")
    print(f"  ratio       : {best_o / best_t:10.1f} x")


if __name__ == "__main__":
    main()
