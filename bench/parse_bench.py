"""Parse throughput: our parser against sipmessage, same INVITE, same field access, one run.

Prints messages/s for each side and the ratio, then serialisation figures.

Field access = what a B2BUA reads from every INVITE it receives, identical on both sides:
every Via branch, From URI user and From tag, To tag, Call-ID, CSeq number and method,
Max-Forwards, Request-URI user, the Contact URIs (parsed, host read), Content-Type (as
text on both sides: sipmessage's typed accessor would parse a MediaType we do not
build) and the body. Each header is read once and the parsed object reused, as real
code does.

Serialisation: ``to_bytes()`` of a parsed INVITE, and building a 200 response to it with
``make_response`` plus its ``to_bytes()`` (sipmessage: ``bytes(message)`` of the parsed
INVITE, for scale).

    .venv/bin/python bench/parse_bench.py [--seconds 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

INVITE = (Path(__file__).parent.parent / "tests" / "data" / "sip" / "bench_invite.sip").read_bytes()


def ours() -> Callable[[bytes], object]:
    from gateway.sip.message import Request, parse_message

    def run(data: bytes) -> object:
        m = parse_message(data)
        assert isinstance(m, Request)
        from_ = m.from_
        cseq = m.cseq
        return (
            [v.branch for v in m.vias],
            from_.uri.user,
            from_.tag,
            m.to.tag,
            m.call_id,
            cseq.number,
            cseq.method,
            m.max_forwards,
            m.uri.user,
            [c.uri.host for c in m.contacts],  # type: ignore[union-attr]
            m.content_type,
            m.body,
        )

    return run


def theirs() -> Callable[[bytes], object]:
    from sipmessage import Message, Request

    def run(data: bytes) -> object:
        m = Message.parse(data)
        assert isinstance(m, Request)
        from_ = m.from_address
        cseq = m.cseq
        return (
            [v.parameters.get("branch") for v in m.via],
            from_.uri.user,
            from_.parameters.get("tag"),
            m.to_address.parameters.get("tag"),
            m.call_id,
            cseq.sequence,
            cseq.method,
            m.max_forwards,
            m.uri.user,
            [c.uri.host for c in m.contact],
            m.headers.get("Content-Type"),
            m.body,
        )

    return run


def serialisers() -> dict[str, Callable[[bytes], object]]:
    from sipmessage import Message

    from gateway.sip.message import Request, make_response, parse_message

    invite = parse_message(INVITE)
    assert isinstance(invite, Request)
    theirs_invite = Message.parse(INVITE)

    def invite_to_bytes(_: bytes) -> object:
        return invite.to_bytes()

    def build_200(_: bytes) -> object:
        return make_response(invite, 200, to_tag="as8f7d6s").to_bytes()

    def theirs_to_bytes(_: bytes) -> object:
        return bytes(theirs_invite)

    return {
        "gateway.sip INVITE to_bytes": invite_to_bytes,
        "gateway.sip make_response(200) + to_bytes": build_200,
        "sipmessage INVITE bytes()": theirs_to_bytes,
    }


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
    assert o(INVITE) == t(INVITE), (o(INVITE), t(INVITE))
    best_o = best_t = 0.0
    # interleave rounds so that machine noise hits both sides alike; keep the best of each
    for _ in range(args.rounds):
        best_o = max(best_o, measure(o, args.seconds))
        best_t = max(best_t, measure(t, args.seconds))
    print(
        f"INVITE parse + field access, {len(INVITE)} bytes, best of {args.rounds} x {args.seconds}s"
    )
    print(f"  gateway.sip : {best_o:10.0f} msg/s")
    print(f"  sipmessage  : {best_t:10.0f} msg/s")
    print(f"  ratio       : {best_o / best_t:10.1f} x")
    print("serialise")
    for name, fn in serialisers().items():
        best = max(measure(fn, args.seconds / 2) for _ in range(args.rounds))
        print(f"  {name:44s}: {best:10.0f} msg/s")


if __name__ == "__main__":
    main()
