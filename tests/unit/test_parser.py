"""Parser, serialiser and message model: the cases a SIP gateway meets beyond RFC 4475."""

from __future__ import annotations

import pickle

import pytest

from gateway.sip.errors import MessageTooLarge, SipParseError
from gateway.sip.headers import CSeq, NameAddr, Via, canonical_name, split_list
from gateway.sip.message import (
    REASON_PHRASES,
    Request,
    Response,
    StreamFramer,
    make_response,
    parse_message,
)
from gateway.sip.uri import AbsoluteUri, SipUri, TelUri, parse_uri

SDP = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"


def message(
    *headers: str,
    start: str = "INVITE sip:bob@example.com SIP/2.0",
    body: bytes = b"",
    length: int | None = None,
) -> bytes:
    """A request with the usual headers, ``headers`` replacing the defaults by name."""
    defaults = {
        "via": "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-1",
        "from": "From: Alice <sip:alice@example.com>;tag=a1",
        "to": "To: Bob <sip:bob@example.com>",
        "call-id": "Call-ID: c1@192.0.2.1",
        "cseq": "CSeq: 1 INVITE",
        "max-forwards": "Max-Forwards: 70",
    }
    lines = [start]
    given = {h.partition(":")[0].strip().lower() for h in headers}
    lines += [v for k, v in defaults.items() if k not in given]
    lines += headers
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def request(*headers: str, **kw: object) -> Request:
    msg = parse_message(message(*headers, **kw))  # type: ignore[arg-type]
    assert isinstance(msg, Request)
    return msg


# -- header names and line structure -----------------------------------------------------------


def test_compact_forms_expand_to_full_names() -> None:
    data = (
        b"OPTIONS sip:bob@example.com SIP/2.0\r\n"
        b"v: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK-c\r\n"
        b"f: <sip:alice@example.com>;tag=1\r\n"
        b"t: <sip:bob@example.com>\r\n"
        b"i: compact@host\r\n"
        b"CSeq: 7 OPTIONS\r\n"
        b"m: <sip:alice@192.0.2.1>\r\n"
        b"k: timer\r\n"
        b"s: hello\r\n"
        b"c: text/plain\r\n"
        b"L: 2\r\n\r\nhi"
    )
    msg = parse_message(data)
    assert msg.call_id == "compact@host"
    assert msg.top_via.branch == "z9hG4bK-c"
    assert msg.from_tag == "1"
    assert msg.get("supported") == msg.get("k") == "timer"
    assert msg.get("Subject") == "hello"
    assert msg.content_type == "text/plain"
    assert msg.body == b"hi"
    assert [h[0] for h in msg.headers][:4] == ["via", "from", "to", "call-id"]
    assert msg.headers[0][1] == "v"  # the name as written is kept for forwarding


def test_header_names_are_case_insensitive_and_may_have_space_before_colon() -> None:
    msg = request("cALL-iD  : spaced@host", "X-Custom-Thing:  value  ")
    assert msg.call_id == "spaced@host"
    assert msg.get("x-custom-thing") == "value"
    assert msg.get("X-CUSTOM-THING") == "value"


def test_folded_lines_are_joined_with_one_space() -> None:
    msg = request("Subject: first part", "  second part", "\tthird")
    assert msg.get("subject") == "first part second part third"


def test_folded_hot_header_still_parses() -> None:
    msg = request("Via: SIP/2.0/UDP 192.0.2.1:5060", " ;branch=z9hG4bK-fold ;rport")
    assert msg.top_via.branch == "z9hG4bK-fold"
    assert msg.top_via.params == {"branch": "z9hG4bK-fold", "rport": None}


def test_bad_header_name_is_400_with_partial() -> None:
    with pytest.raises(SipParseError) as caught:
        parse_message(message("Bad Name: x"))
    assert isinstance(caught.value.partial, Request)
    assert make_response(caught.value.partial, 400).status == 400


def test_line_without_colon_is_400() -> None:
    with pytest.raises(SipParseError):
        parse_message(message("NoColonHere"))


def test_bare_lf_line_ends_are_tolerated() -> None:
    data = message().replace(b"\r\n", b"\n")
    msg = parse_message(data)
    assert msg.call_id == "c1@192.0.2.1"


def test_bare_lf_message_body_may_hold_crlfs() -> None:
    head = message(length=len(SDP)).replace(b"\r\n", b"\n")
    msg = parse_message(head + SDP)
    assert msg.body == SDP


def test_bare_cr_inside_a_header_is_refused() -> None:
    with pytest.raises(SipParseError):
        parse_message(message("Subject: a\rVia: SIP/2.0/UDP evil;branch=z9hG4bKx"))


def test_leading_crlfs_are_ignored() -> None:
    assert parse_message(b"\r\n\r\n" + message()).call_id == "c1@192.0.2.1"


def test_message_too_large_is_513() -> None:
    with pytest.raises(MessageTooLarge) as caught:
        parse_message(message(), max_size=100)
    assert caught.value.status == 513


def test_empty_and_garbage_input_are_parse_errors() -> None:
    for data in (b"", b"\r\n", b"garbage", b"\x00\xff\xfe", b"SIP/2.0\r\n\r\n"):
        with pytest.raises(SipParseError):
            parse_message(data)


# -- comma lists ---------------------------------------------------------------------------


def test_via_comma_list_counts_each_via() -> None:
    msg = request(
        "Via: SIP/2.0/UDP a.example.com;branch=z9hG4bK-a, SIP/2.0/TCP b.example.com:5070"
        ";branch=z9hG4bK-b",
        "Via: SIP/2.0/TLS c.example.com;branch=z9hG4bK-c",
    )
    assert [v.branch for v in msg.vias] == ["z9hG4bK-a", "z9hG4bK-b", "z9hG4bK-c"]
    assert msg.vias[1].port == 5070
    assert msg.top_via.host == "a.example.com"


def test_contact_list_respects_quotes_and_brackets() -> None:
    msg = request('Contact: "Doe, John" <sip:doe,john@example.com>, <sip:other@example.com>;q=0.5')
    uris = [c.uri_text for c in msg.contacts]
    assert uris == ["sip:doe,john@example.com", "sip:other@example.com"]
    assert isinstance(msg.contacts[0].uri, SipUri) and msg.contacts[0].uri.user == "doe,john"
    assert msg.contacts[0].display == '"Doe, John"'
    assert msg.contacts[1].params == {"q": "0.5"}


def test_contact_star_gives_no_contacts() -> None:
    assert request("Contact: *").contacts == []


def test_route_and_record_route_lists() -> None:
    msg = request(
        "Record-Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>",
        "Route: <sip:p3.example.com;lr>",
        "Route: <sip:p4.example.com;lr>",
    )
    assert [r.uri_text for r in msg.record_routes] == [
        "sip:p1.example.com;lr",
        "sip:p2.example.com;lr",
    ]
    assert [r.uri.host for r in msg.routes if isinstance(r.uri, SipUri)] == [
        "p3.example.com",
        "p4.example.com",
    ]


def test_split_list() -> None:
    assert split_list("a, b ,c") == ["a", "b", "c"]
    assert split_list('"x, y" <sip:a>, <sip:b,c>') == ['"x, y" <sip:a>', "<sip:b,c>"]
    assert split_list("") == []
    assert split_list(" , ,") == []


# -- name-addr and addr-spec -----------------------------------------------------------------


def test_addr_spec_params_are_header_params() -> None:
    addr = NameAddr.parse("sip:alice@example.com;tag=xyz;user=phone")
    assert addr.bracketed is False
    assert addr.uri_text == "sip:alice@example.com"
    assert addr.params == {"tag": "xyz", "user": "phone"}
    assert isinstance(addr.uri, SipUri) and addr.uri.params == {}


def test_name_addr_params_inside_brackets_belong_to_the_uri() -> None:
    addr = NameAddr.parse('"Alice" <sip:alice@example.com;user=phone>;tag=xyz')
    assert addr.display == '"Alice"'
    assert addr.params == {"tag": "xyz"}
    assert isinstance(addr.uri, SipUri) and addr.uri.params == {"user": "phone"}


@pytest.mark.parametrize(
    "value",
    [
        "<sip:a@example.com>",
        "Alice <sip:a@example.com>",
        "Alice Smith<sip:a@example.com>",
        '"Smith, Alice" <sip:a@example.com>',
        '"quote \\" inside" <sip:a@example.com>',
        "Jürgen Müller <sip:j@example.com>",
        "  <sip:a@example.com>  ;  tag = x ",
        "sip:a@example.com",
        "<tel:+15551234567>",
        "<urn:service:sos>",
        '<sip:a@example.com>;+sip.instance="<urn:uuid:1234>"',
    ],
)
def test_name_addr_forms_parse(value: str) -> None:
    addr = NameAddr.parse(value)
    assert addr.uri is not None
    again = NameAddr.parse(str(addr))
    assert again.uri_text == addr.uri_text
    assert again.params == addr.params


@pytest.mark.parametrize(
    "value",
    [
        "Smith, Alice <sip:a@example.com>",  # unquoted comma in display name
        "alice@home <sip:a@example.com>",
        '"unterminated <sip:a@example.com>',
        "< sip:a@example.com >",  # whitespace inside <>
        "<sip:a@example.com",  # no >
        "sip:a@example.com?subject=x",  # '?' needs <>
        "<sip:a@example.com>;;tag=1",  # empty parameter
        "<sip:a@example.com> junk",
        '"display only"',
        "",
    ],
)
def test_bad_name_addr_is_400(value: str) -> None:
    with pytest.raises(SipParseError):
        NameAddr.parse(value)


def test_with_tag_and_with_uri() -> None:
    addr = NameAddr.parse("Bob <sip:bob@example.com>")
    tagged = addr.with_tag("t9")
    assert tagged.tag == "t9" and addr.tag is None
    assert str(tagged) == "Bob <sip:bob@example.com>;tag=t9"
    moved = tagged.with_uri("sip:bob@192.0.2.7")
    assert str(moved) == "Bob <sip:bob@192.0.2.7>;tag=t9"
    assert isinstance(moved.uri, SipUri) and moved.uri.host == "192.0.2.7"


def test_changed_uri_text_is_reparsed() -> None:
    addr = NameAddr.parse("<sip:a@one.example.com>")
    addr.uri_text = "sip:a@two.example.com"
    assert isinstance(addr.uri, SipUri) and addr.uri.host == "two.example.com"


# -- URIs --------------------------------------------------------------------------------------


def test_ipv6_hosts_in_uris() -> None:
    uri = parse_uri("sip:alice@[2001:db8::1]:5061;transport=tcp")
    assert isinstance(uri, SipUri)
    assert uri.host == "[2001:db8::1]"
    assert uri.host_unbracketed == "2001:db8::1"
    assert uri.port == 5061
    assert uri.transport == "tcp"
    assert str(uri) == "sip:alice@[2001:db8::1]:5061;transport=tcp"
    bare = parse_uri("sips:[::1]")
    assert isinstance(bare, SipUri) and bare.host == "[::1]" and bare.port is None


def test_ipv6_via() -> None:
    via = Via.parse("SIP/2.0/UDP [2001:db8::9]:5060;branch=z9hG4bK-6;received=2001:db8::10;rport")
    assert via.host == "[2001:db8::9]"
    assert via.host_unbracketed == "2001:db8::9"
    assert via.port == 5060
    assert via.params == {"branch": "z9hG4bK-6", "received": "2001:db8::10", "rport": None}
    msg = request("Via: SIP/2.0/TCP [2001:db8::9];branch=z9hG4bK-7")
    assert msg.top_via.host == "[2001:db8::9]" and msg.top_via.port is None


@pytest.mark.parametrize(
    "text",
    [
        "tel:+1-201-555-0123",
        "tel:7042;phone-context=example.com",
        "tel:863-1234;phone-context=+1-914-555",
        "tel:911;phone-context=+1;ext=22",
    ],
)
def test_tel_uri_is_byte_exact(text: str) -> None:
    uri = parse_uri(text)
    assert isinstance(uri, TelUri)
    assert str(uri) == text
    assert uri.number == text[4:].split(";")[0]


def test_tel_phone_context_survives_parse_and_serialise() -> None:
    ruri = "tel:911;phone-context=+1"
    to = "<tel:7042;phone-context=example.com>"
    data = message(f"To: {to}", start=f"INVITE {ruri} SIP/2.0")
    msg = parse_message(data)
    assert isinstance(msg, Request) and isinstance(msg.uri, TelUri)
    assert msg.uri.params == {"phone-context": "+1"}
    assert isinstance(msg.to.uri, TelUri) and msg.to.uri.params["phone-context"] == "example.com"
    wire = msg.to_bytes()
    assert f"INVITE {ruri} SIP/2.0\r\n".encode() in wire
    assert f"To: {to}\r\n".encode() in wire
    again = parse_message(wire)
    assert isinstance(again, Request) and str(again.uri) == ruri


def test_urn_service_sos_in_request_uri_and_to() -> None:
    data = message("To: <urn:service:sos.fire>", start="INVITE urn:service:sos.fire SIP/2.0")
    msg = parse_message(data)
    assert isinstance(msg, Request)
    for uri in (msg.uri, msg.to.uri):
        assert isinstance(uri, AbsoluteUri)
        assert uri.scheme == "urn"
        assert uri.urn_nid == "service"
        assert uri.urn_nss == "sos.fire"
        assert str(uri) == "urn:service:sos.fire"
    assert b"INVITE urn:service:sos.fire SIP/2.0\r\n" in msg.to_bytes()
    assert b"To: <urn:service:sos.fire>\r\n" in msg.to_bytes()


@pytest.mark.parametrize("kind", ["phone", "dialstring"])
def test_user_phone_and_dialstring_params(kind: str) -> None:
    text = f"sip:+15551234567;phone-context=+1@gw.example.com;user={kind}"
    uri = parse_uri(text)
    assert isinstance(uri, SipUri)
    assert uri.user == "+15551234567;phone-context=+1"
    assert uri.host == "gw.example.com"
    assert uri.params == {"user": kind}
    assert str(uri) == text
    msg = request(start=f"INVITE {text} SIP/2.0")
    assert isinstance(msg.uri, SipUri) and msg.uri.params["user"] == kind


def test_uri_escapes_and_case() -> None:
    uri = parse_uri("SIP:Alice%20Smith@Example.COM;Transport=TCP")
    assert isinstance(uri, SipUri)
    assert uri.scheme == "sip"
    assert uri.user == "Alice%20Smith" and uri.user_unescaped == "Alice Smith"
    assert uri.params == {"transport": "TCP"} and uri.transport == "tcp"
    assert str(uri) == "SIP:Alice%20Smith@Example.COM;Transport=TCP"


@pytest.mark.parametrize(
    "text",
    [
        "sip:",
        "sip:@example.com",
        "sip:a@",
        "sip:a@b@c",
        "sip:a@example.com:99999",
        "sip:a@example.com:port",
        "sip:a@[2001:db8::1",
        "sip:a b@example.com",
        "sip:a@example.com;;lr",
        "<sip:a@example.com>",
        "tel:",
        "nocolon",
        "1abc:x",
        "urn:",
    ],
)
def test_bad_uris_are_400(text: str) -> None:
    with pytest.raises(SipParseError):
        parse_uri(text)


def test_parsed_values_equal_hand_built_ones() -> None:
    # parsed values (built by the fast paths, possibly compiled by mypyc) must be
    # indistinguishable from ones built by the public constructors, and stay immutable
    text = "sip:alice@example.com:5060;transport=tcp"
    uri = parse_uri(text)
    built = SipUri("sip", "alice", "example.com", 5060, None, {"transport": "tcp"}, "", text)
    assert type(uri) is SipUri and uri == built
    assert uri != SipUri("sip", "alice", "example.com", 5060, None, {}, "", text)
    assert pickle.loads(pickle.dumps(uri)) == uri
    assert uri.with_user("bob").user == "bob"
    with pytest.raises(AttributeError):
        uri.host = "elsewhere"  # type: ignore[misc]
    with pytest.raises(TypeError):
        hash(uri)  # params is a dict
    cseq = CSeq.parse("5 BYE")
    with pytest.raises(AttributeError):
        cseq.number = 6  # type: ignore[misc]
    via = Via.parse("SIP/2.0/UDP h:5060;branch=z9hG4bK-1")
    assert via == Via("UDP", "h", 5060, {"branch": "z9hG4bK-1"}) and via != Via("UDP", "h")
    assert pickle.loads(pickle.dumps(via)) == via
    addr = NameAddr.parse('"A" <sip:a@h>;tag=1')
    assert addr == NameAddr("sip:a@h", '"A"', {"tag": "1"}) and addr.uri == parse_uri("sip:a@h")
    assert addr == NameAddr("sip:a@h", '"A"', {"tag": "1"})  # the cached URI does not count
    assert type(cseq) is CSeq and cseq == CSeq(5, "BYE") and hash(cseq) == hash(CSeq(5, "BYE"))
    tel_text = "tel:+15551234567;phone-context=+1"
    assert parse_uri(tel_text) == TelUri("+15551234567", {"phone-context": "+1"}, tel_text)
    assert parse_uri("urn:service:sos") == AbsoluteUri("urn", "service:sos", "urn:service:sos")


def test_uri_copies_are_rebuilt() -> None:
    uri = parse_uri("sip:alice@example.com:5060;transport=udp")
    assert isinstance(uri, SipUri)
    assert str(uri.with_user("bob")) == "sip:bob@example.com:5060;transport=udp"
    assert str(uri.with_host("192.0.2.4", None)) == "sip:alice@192.0.2.4;transport=udp"
    assert str(uri.with_params(lr=None)) == "sip:alice@example.com:5060;transport=udp;lr"
    with pytest.raises(AttributeError):
        uri.user = "mallory"  # type: ignore[misc]


# -- typed headers ---------------------------------------------------------------------------


def test_via_whitespace_and_case() -> None:
    via = Via.parse("sip / 2.0 / udp  host.example.com : 5070 ; branch = z9hG4bK-w ; RPort")
    assert (via.transport, via.host, via.port) == ("UDP", "host.example.com", 5070)
    assert via.params == {"branch": "z9hG4bK-w", "rport": None}
    assert str(via) == "SIP/2.0/UDP host.example.com:5070;branch=z9hG4bK-w;rport"


@pytest.mark.parametrize(
    "value",
    ["SIP/3.0/UDP h", "SIP/2.0/UDP", "SIP/2.0 h", "SIP/2.0/UDP h:70000", "SIP/2.0/UDP h;;", "x"],
)
def test_bad_vias_are_400(value: str) -> None:
    with pytest.raises(SipParseError):
        Via.parse(value)


def test_cseq_limits() -> None:
    assert CSeq.parse("4294967295 INVITE").number == 4294967295
    assert CSeq.parse(" 0009\tACK ").number == 9
    for bad in ("4294967296 INVITE", "1", "x INVITE", "1 INVITE extra", "1 IN VITE", "-1 BYE"):
        with pytest.raises(SipParseError):
            CSeq.parse(bad)


@pytest.mark.parametrize("value", ["256", "-1", "x", "", "\u00b2", "1 2"])
def test_bad_max_forwards_is_400_where_it_is_read(value: str) -> None:
    # read where it is used, not at parse time: the call layer places an emergency INVITE
    # with a garbled Max-Forwards anyway (SPEC E-3) and refuses an ordinary one with 400
    msg = parse_message(message(f"Max-Forwards: {value}"))
    with pytest.raises(SipParseError) as caught:
        msg.max_forwards  # noqa: B018
    assert caught.value.status == 400


def test_max_forwards_leading_zeros_and_absence() -> None:
    assert request("Max-Forwards: 0070").max_forwards == 70
    data = message().replace(b"Max-Forwards: 70\r\n", b"")
    msg = parse_message(data)
    assert msg.max_forwards is None


def test_canonical_names() -> None:
    assert canonical_name("call-id") == "Call-ID"
    assert canonical_name("www-authenticate") == "WWW-Authenticate"
    assert canonical_name("x-my-header") == "X-My-Header"


# -- Content-Length framing on datagrams -------------------------------------------------------


def test_datagram_longer_than_content_length_is_cut() -> None:
    msg = request("Content-Type: application/sdp", body=SDP + b"garbage", length=len(SDP))
    assert msg.body == SDP


def test_datagram_shorter_than_content_length_is_refused() -> None:
    with pytest.raises(SipParseError) as caught:
        parse_message(message(body=SDP, length=len(SDP) + 1))
    assert "Content-Length" in caught.value.detail
    assert caught.value.partial is not None


def test_datagram_without_content_length_takes_the_rest() -> None:
    assert request(body=SDP).body == SDP


@pytest.mark.parametrize("value", ["-1", "abc", "1e3", "\u0661", "99999999999", ""])
def test_bad_content_length_is_400(value: str) -> None:
    with pytest.raises(SipParseError):
        parse_message(message(f"Content-Length: {value}", body=b"x" * 10))


def test_equal_repeated_content_length_is_tolerated() -> None:
    msg = request("Content-Length: 2", "l: 2", body=b"hi")
    assert msg.body == b"hi"


# -- serialisation -----------------------------------------------------------------------------


def test_round_trip_keeps_headers_and_fixes_content_length() -> None:
    data = message("Content-Type: application/sdp", "l: 3", body=SDP + b"tail")
    msg = parse_message(data)
    assert msg.body == SDP[:3]
    wire = msg.to_bytes()
    assert wire.count(b"Content-Length") == 1 and b"\r\nl:" not in wire
    assert wire.endswith(b"\r\nContent-Length: 3\r\n\r\n" + SDP[:3])
    again = parse_message(wire)
    assert again.headers[:-1] == [h for h in msg.headers if h[0] != "content-length"]


def test_content_length_follows_the_body() -> None:
    msg = request()
    msg.set_body(SDP, "application/sdp")
    wire = msg.to_bytes()
    assert wire.endswith(f"\r\nContent-Length: {len(SDP)}\r\n\r\n".encode() + SDP)
    assert parse_message(wire).body == SDP
    msg.set_body(b"", None)
    assert msg.content_type is None
    assert msg.to_bytes().endswith(b"Content-Length: 0\r\n\r\n")


def test_non_ascii_survives_serialisation() -> None:
    data = message('From: "Jürgen" <sip:j@example.com>;tag=1', "Subject: SUBJECT")
    msg = parse_message(data.replace(b"SUBJECT", b"caf\xc3\xa9 \xff"))
    assert msg.from_.display == '"Jürgen"'
    wire = msg.to_bytes()
    assert "Jürgen".encode() in wire
    assert b"caf\xc3\xa9 \xff" in wire  # an invalid byte passes through unchanged


def test_header_editing_and_cache_invalidation() -> None:
    msg = request()
    assert msg.from_tag == "a1"
    msg.set("From", "<sip:carol@example.com>;tag=c3")
    assert msg.from_tag == "c3"
    msg.add("X-Trace", "1")
    msg.add("X-Trace", "0", first=True)
    assert msg.get_all("x-trace") == ["0", "1"]
    msg.remove("x-trace")
    assert not msg.has("X-Trace")
    msg.set_list("Route", ["<sip:p1;lr>", "<sip:p2;lr>"])
    assert [r.uri_text for r in msg.routes] == ["sip:p1;lr", "sip:p2;lr"]
    msg.headers.append(("subject", "Subject", "late"))
    msg.headers_changed()
    assert msg.get("subject") == "late"
    msg.headers = [h for h in msg.headers if h[0] != "subject"]
    assert msg.get("subject") is None


def test_via_editing() -> None:
    msg = request("Via: SIP/2.0/UDP a;branch=z9hG4bK-a, SIP/2.0/UDP b;branch=z9hG4bK-b")
    top = msg.top_via
    fixed = Via(top.transport, top.host, top.port, {**top.params, "received": "192.0.2.9"})
    msg.set_top_via(fixed)
    assert msg.get("via") == (
        "SIP/2.0/UDP a;branch=z9hG4bK-a;received=192.0.2.9, SIP/2.0/UDP b;branch=z9hG4bK-b"
    )
    assert [v.host for v in msg.vias] == ["a", "b"]
    msg.push_via(Via("TCP", "gw.example.com", 5060, {"branch": "z9hG4bK-gw"}))
    assert msg.top_via.host == "gw.example.com"
    assert [v.branch for v in msg.vias] == ["z9hG4bK-gw", "z9hG4bK-a", "z9hG4bK-b"]
    assert msg.pop_via().host == "gw.example.com"
    assert msg.pop_via().host == "a"
    assert [v.host for v in msg.vias] == ["b"]
    msg.set_vias([Via("UDP", "c", None, {"branch": "z9hG4bK-c"})])
    assert msg.get_all("via") == ["SIP/2.0/UDP c;branch=z9hG4bK-c"]


def test_built_request_gets_via_first() -> None:
    req = Request("OPTIONS", "sip:bob@example.com", [("to", "To", "<sip:bob@example.com>")])
    req.push_via(Via("UDP", "192.0.2.1", 5060, {"branch": "z9hG4bK-x"}))
    assert req.headers[0][0] == "via"
    assert req.to_bytes().startswith(
        b"OPTIONS sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-x"
    )


# -- make_response -----------------------------------------------------------------------------


def rr_request() -> Request:
    return request(
        "Record-Route: <sip:p1.example.com;lr>",
        "Record-Route: <sip:p2.example.com;lr>",
        "Contact: <sip:alice@192.0.2.1>",
        "Via: SIP/2.0/UDP p1.example.com;branch=z9hG4bK-p1",
        "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-1",
    )


def test_make_response_copies_the_matching_headers() -> None:
    req = rr_request()
    resp = make_response(req, 486)
    assert resp.reason == REASON_PHRASES[486] == "Busy Here"
    assert [h[0] for h in resp.headers] == ["from", "to", "call-id", "cseq", "via", "via"]
    assert resp.get_all("via") == req.get_all("via")
    assert resp.record_routes == []  # not on a failure
    assert parse_message(resp.to_bytes()).call_id == req.call_id


def test_to_tag_is_never_added_to_100() -> None:
    req = rr_request()
    assert make_response(req, 100, to_tag="t1").to_tag is None
    assert make_response(req, 180, to_tag="t1").to_tag == "t1"
    assert make_response(req, 200, to_tag="t1").to_tag == "t1"


def test_existing_to_tag_is_kept() -> None:
    req = request("To: Bob <sip:bob@example.com>;tag=old")
    assert make_response(req, 200, to_tag="new").to_tag == "old"


def test_record_route_is_copied_on_1xx_and_2xx() -> None:
    req = rr_request()
    for status in (180, 183, 200, 202):
        resp = make_response(req, status, to_tag="t")
        assert [r.uri_text for r in resp.record_routes] == [
            "sip:p1.example.com;lr",
            "sip:p2.example.com;lr",
        ]
    assert make_response(req, 100).record_routes == []  # 100 Trying creates no dialog
    assert make_response(req, 404).record_routes == []


def test_make_response_extra_headers_and_body() -> None:
    resp = make_response(
        rr_request(),
        200,
        "Fine",
        to_tag="t",
        extra=[("Contact", "<sip:gw>")],
        body=SDP,
        content_type="application/sdp",
    )
    assert isinstance(resp, Response) and resp.reason == "Fine"
    assert resp.get("contact") == "<sip:gw>"
    again = parse_message(resp.to_bytes())
    assert isinstance(again, Response) and again.status == 200
    assert again.body == SDP and again.content_type == "application/sdp"


# -- StreamFramer ------------------------------------------------------------------------------


def test_framer_reassembles_a_message_split_byte_by_byte() -> None:
    data = message(body=SDP, length=len(SDP))
    framer = StreamFramer()
    out: list[bytes] = []
    for i in range(len(data)):
        out += framer.feed(data[i : i + 1])
    assert out == [data]
    assert framer.pending == 0
    assert parse_message(out[0]).body == SDP


def test_framer_two_messages_in_one_chunk_and_keepalives() -> None:
    one = message(body=b"abc", length=3)
    two = message("Call-ID: second@host", length=0)
    framer = StreamFramer()
    assert framer.feed(b"\r\n\r\n" + one + b"\r\n" + two + b"\r\n\r\n") == [one, two]
    assert framer.feed(b"\r\n") == []
    assert framer.pending == 0


def test_framer_waits_for_the_body() -> None:
    data = message(body=SDP, length=len(SDP))
    framer = StreamFramer()
    assert framer.feed(data[:-5]) == []
    assert framer.pending == len(data) - 5
    assert framer.feed(data[-5:]) == [data]


def test_framer_compact_and_spaced_content_length() -> None:
    data = message("l :  4", body=b"body")
    assert StreamFramer().feed(data) == [data]


def test_framer_refuses_missing_content_length() -> None:
    with pytest.raises(SipParseError) as caught:
        StreamFramer().feed(message())
    assert "Content-Length" in caught.value.detail


@pytest.mark.parametrize("lengths", [("5", "13"), ("-1",), ("x",)])
def test_framer_refuses_unusable_content_length(lengths: tuple[str, ...]) -> None:
    data = message(*(f"Content-Length: {n}" for n in lengths))
    with pytest.raises(SipParseError):
        StreamFramer().feed(data)


def test_framer_refuses_oversize() -> None:
    with pytest.raises(MessageTooLarge):
        StreamFramer(max_size=200).feed(message(length=500))
    framer = StreamFramer(max_size=200)
    with pytest.raises(MessageTooLarge):
        framer.feed(b"INVITE sip:x SIP/2.0\r\nSubject: " + b"y" * 300)
