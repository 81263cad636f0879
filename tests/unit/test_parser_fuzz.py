"""Fuzz harness (h11 style): whatever the bytes, the parser raises SipParseError or nothing.

Random bytes, and valid messages mutated by byte flips, truncations, inserted CR/LF/NUL and
other delimiters, duplicated and dropped lines, go through ``parse_message`` and
``StreamFramer``; every accessor of a message that parsed is then read. Any exception but
:class:`SipParseError` (and its subclasses) is a bug. Bounded so the unit tier stays fast;
``GATEWAY_FUZZ_EXAMPLES=100000`` runs a longer hunt.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.sip.errors import SipParseError
from gateway.sip.headers import NameAddr
from gateway.sip.message import Message, Request, StreamFramer, make_response, parse_message

DATA = Path(__file__).parent.parent / "data"
SEEDS: list[bytes] = [
    (DATA / "sip" / "bench_invite.sip").read_bytes(),
    *(p.read_bytes() for p in sorted((DATA / "torture").glob("*.sip"))),
    (
        b"INVITE urn:service:sos.fire SIP/2.0\r\n"
        b"Via: SIP/2.0/TCP [2001:db8::1]:5060;branch=z9hG4bK-v6;rport\r\n"
        b"Via: SIP/2.0/UDP p.example.com;branch=z9hG4bK-p, SIP/2.0/UDP q;branch=z9hG4bK-q\r\n"
        b'From: "Caller, The" <tel:+1-201-555-0123;phone-context=+1>;tag=f1\r\n'
        b"To: <urn:service:sos.fire>\r\n"
        b"Call-ID: fuzz@example.com\r\n"
        b"CSeq: 1 INVITE\r\n"
        b"Max-Forwards: 70\r\n"
        b"Contact: <sip:+12015550123;phone-context=+1@[2001:db8::1];user=phone>;expires=60\r\n"
        b"Record-Route: <sip:p.example.com;lr>, <sip:q.example.com;lr>\r\n"
        b"Route: <sip:esrp.example.com;lr>\r\n"
        b"Content-Type: application/sdp\r\n"
        b"Content-Length: 4\r\n\r\nv=0\n"
    ),
]

FUZZ = settings(
    max_examples=int(os.environ.get("GATEWAY_FUZZ_EXAMPLES", "300")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

DELIMITERS = [
    b"\r",
    b"\n",
    b"\r\n",
    b"\x00",
    b" ",
    b"\t",
    b":",
    b";",
    b",",
    b"<",
    b">",
    b'"',
    b"=",
    b"@",
    b"?",
    b"[",
    b"]",
    b"\\",
    b"%",
    b"\xff",
    b"\xc3",
    b"\r\n ",
]


def touch(msg: Message, *, parsed: bool = True) -> None:
    """Read everything a transaction, dialog or call layer may read; SipParseError only."""
    for name in (
        "vias",
        "top_via",
        "from_",
        "to",
        "from_tag",
        "to_tag",
        "contacts",
        "cseq",
        "call_id",
        "max_forwards",
        "record_routes",
        "routes",
        "content_type",
    ):
        try:
            value = getattr(msg, name)
        except SipParseError:
            continue
        addrs = value if isinstance(value, list) else [value]
        for addr in addrs:
            if isinstance(addr, NameAddr):
                with contextlib.suppress(SipParseError):
                    str(addr.uri)
                str(addr)
            else:
                str(addr)
    if isinstance(msg, Request):
        with contextlib.suppress(SipParseError):
            str(msg.uri)
        response = make_response(msg, 400)
        response.to_bytes()
    if not parsed:
        msg.to_bytes()
        return
    # what parsed once parses again from its own serialisation, to the same headers
    again = parse_message(msg.to_bytes(), max_size=1 << 20)
    assert again.body == msg.body
    assert [h for h in again.headers if h[0] != "content-length"] == [
        h for h in msg.headers if h[0] != "content-length"
    ]


def parse_and_touch(data: bytes) -> None:
    try:
        msg = parse_message(data)
    except SipParseError as exc:
        if exc.partial is not None:
            assert isinstance(exc.partial, Request)
            make_response(exc.partial, exc.status, exc.reason).to_bytes()
            touch(exc.partial, parsed=False)
        return
    touch(msg)


def frame_and_parse(chunks: list[bytes]) -> None:
    framer = StreamFramer(max_size=4096)
    try:
        for chunk in chunks:
            for framed in framer.feed(chunk):
                parse_and_touch(framed)
    except SipParseError:
        pass


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(
            st.sampled_from(["flip", "insert", "truncate", "dup_line", "drop_line", "delete"])
        )
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[pos] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[pos:pos] = draw(st.sampled_from(DELIMITERS))
        elif kind == "truncate":
            del data[pos:]
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 8))]
        else:
            lines = bytes(data).split(b"\r\n")
            i = draw(st.integers(0, len(lines) - 1))
            if kind == "dup_line":
                lines.insert(i, lines[i])
            else:
                del lines[i]
            data = bytearray(b"\r\n".join(lines))
    return bytes(data)


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes(data: bytes) -> None:
    parse_and_touch(data)


@FUZZ
@given(
    st.lists(
        st.sampled_from(
            [
                b"SIP/2.0",
                b"INVITE",
                b" ",
                b"\r\n",
                b":",
                b"Via",
                b"v",
                b"From",
                b"To",
                b"Call-ID",
                b"CSeq",
                b"l",
                b"1",
                b"<sip:a@b>",
                b";tag=x",
                b",",
                b"\t",
                b"sip:x",
                b"Content-Length: 0",
                b"\r\n\r\n",
                b"\x00",
                b'"',
                b"200",
            ]
        ),
        max_size=60,
    )
)
def test_random_sip_like_tokens(parts: list[bytes]) -> None:
    parse_and_touch(b"".join(parts))


@FUZZ
@given(mutated())
def test_mutated_messages(data: bytes) -> None:
    parse_and_touch(data)


@FUZZ
@given(mutated())
def test_fast_and_careful_paths_agree(data: bytes) -> None:
    # a leading CRLF (RFC 3261 section 7.5) sends any message down the careful path
    try:
        fast = parse_message(data)
    except SipParseError:
        return
    careful = parse_message(b"\r\n" + data)
    assert careful.headers == fast.headers
    assert careful.body == fast.body
    assert careful.start_line() == fast.start_line()


@FUZZ
@given(mutated(), st.lists(st.integers(1, 600), min_size=1, max_size=8))
def test_mutated_messages_through_the_stream_framer(data: bytes, cuts: list[int]) -> None:
    chunks = []
    rest = data
    for cut in cuts:
        chunks.append(rest[:cut])
        rest = rest[cut:]
    chunks.append(rest)
    frame_and_parse(chunks)


@FUZZ
@given(st.lists(st.binary(max_size=300), max_size=6))
def test_random_bytes_through_the_stream_framer(chunks: list[bytes]) -> None:
    frame_and_parse(chunks)


@FUZZ
@given(st.sampled_from(SEEDS), st.integers(0, 2000))
def test_every_truncation(seed: bytes, cut: int) -> None:
    parse_and_touch(seed[:cut])
