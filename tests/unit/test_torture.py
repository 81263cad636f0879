"""RFC 4475 torture messages against the parser layer (``gateway.sip.message``).

Every message of ``tests/data/torture`` is loaded by name with the facts its manifest gives.

* valid (3.1.1.x): parses, every fact in the manifest matches, and a serialise/parse round
  trip keeps them;
* invalid (3.1.2.x): refused with :class:`SipParseError` (400, 505 for badvers), never any
  other exception; a request that can be answered carries ``partial`` from which
  ``make_response`` builds that answer. Where the RFC lets the element choose, the choice
  is written next to the message in ``INVALID_HANDLING``;
* semantic (3.2.x, 3.3.x, 3.4.x): the parser gives the facts the layer that answers needs.
  Which layer answers is written next to each test.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway.sip.errors import SipParseError, UnsupportedVersion
from gateway.sip.headers import NameAddr
from gateway.sip.message import Request, Response, make_response, parse_message
from gateway.sip.uri import AbsoluteUri, SipUri

TORTURE = Path(__file__).parent.parent / "data" / "torture"
MANIFEST: list[dict[str, Any]] = json.loads((TORTURE / "manifest.json").read_text())


def load(name: str) -> bytes:
    """The wire bytes of a torture message by its RFC name (``wsinv``) or file name."""
    for entry in MANIFEST:
        if entry["file"] == name or entry["file"].split("_", 1)[1] == f"{name}.sip":
            path: Path = TORTURE / entry["file"]
            return path.read_bytes()
    raise KeyError(name)


def entries(kind: str) -> list[Any]:
    return [
        pytest.param(e, id=e["file"].removesuffix(".sip")) for e in MANIFEST if e["kind"] == kind
    ]


def test_manifest_covers_the_rfc() -> None:
    kinds = {e["kind"] for e in MANIFEST}
    assert len(MANIFEST) == 49
    assert kinds == {"valid", "invalid", "semantic"}


# -- 3.1.1 valid messages ----------------------------------------------------------------------


def check_facts(msg: Request | Response, expect: dict[str, Any]) -> None:
    if expect["type"] == "request":
        assert isinstance(msg, Request)
        assert msg.method == expect["method"]
        assert msg.uri_text == expect["request_uri"]
        assert str(msg.uri) == expect["request_uri"]  # byte-exact through the URI object
        assert msg.max_forwards == expect["max_forwards"]
        if "request_uri_user" in expect:
            assert msg.uri.user == expect["request_uri_user"]
    else:
        assert isinstance(msg, Response)
        assert msg.status == expect["status_code"]
        assert msg.reason == expect["reason_phrase"]
    assert msg.call_id == expect["call_id"]
    assert msg.cseq.number == expect["cseq_number"]
    assert msg.cseq.method == expect["cseq_method"]
    assert len(msg.vias) == expect["via_count"]
    assert msg.from_tag == expect["from_tag"]
    assert msg.to_tag == expect["to_tag"]
    assert len(msg.body) == expect["content_length"]
    if "contact_count" in expect:
        assert len(msg.contacts) == expect["contact_count"]
        for contact in msg.contacts:
            assert contact.uri is not None
    if "route_count" in expect:
        assert len(msg.routes) == expect["route_count"]
    if "via_transports" in expect:
        assert [v.transport for v in msg.vias] == expect["via_transports"]
    for via in msg.vias:
        assert via.host


@pytest.mark.parametrize("entry", entries("valid"))
def test_valid_message_parses_with_the_manifest_facts(entry: dict[str, Any]) -> None:
    msg = parse_message((TORTURE / entry["file"]).read_bytes())
    check_facts(msg, entry["expect"])


@pytest.mark.parametrize("entry", entries("valid"))
def test_valid_message_survives_a_round_trip(entry: dict[str, Any]) -> None:
    msg = parse_message((TORTURE / entry["file"]).read_bytes())
    again = parse_message(msg.to_bytes())
    check_facts(again, entry["expect"])
    # Content-Length is written last, from the body
    without_length = [h for h in msg.headers if h[0] != "content-length"]
    assert again.headers[:-1] == without_length
    assert again.headers[-1] == ("content-length", "Content-Length", str(len(msg.body)))
    assert again.body == msg.body


def test_wsinv_unfolds_and_normalises_whitespace() -> None:
    msg = parse_message(load("wsinv"))
    assert msg.to.uri_text == "sip:vivekg@chair-dnrc.example.com"
    assert msg.to.bracketed is False
    assert msg.from_.display == '"J Rosenberg \\\\\\""'
    assert msg.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert msg.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    assert msg.get("subject") == ""  # "s :" with an empty value
    assert [v.branch for v in msg.vias] == ["390skdjuw", "z9hG4bK9ikj8", "z9hG4bK30239"]
    assert msg.vias[1].transport == "TCP"
    assert msg.vias[1].host == "spindle.example.com"
    (contact,) = msg.contacts
    assert contact.display == '"Quoted string \\"\\""'
    assert contact.params == {"newparam": "newvalue", "secondparam": None, "q": "0.33"}
    (route,) = msg.routes
    assert isinstance(route.uri, SipUri) and route.uri.lr
    assert route.uri.params["unknownwith"] == "value"


def test_intmeth_keeps_unusual_tokens_and_splits_user_and_password() -> None:
    msg = parse_message(load("intmeth"))
    assert isinstance(msg, Request)
    uri = msg.uri
    assert isinstance(uri, SipUri)
    assert uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert uri.host == "example.com"
    assert msg.to.display == '"BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f"'
    assert msg.from_.display == "token1~` token2'+_ token3*%!.-"
    assert msg.from_.params["fromparam''~+*_!.-%"] == '"работающий"'
    assert msg.get("extensionheader-!.%*+_`'~") == "\ufeff大停電"


def test_escapes_are_kept_and_decoded_on_request() -> None:
    msg = parse_message(load("esc01"))
    assert isinstance(msg, Request) and isinstance(msg.uri, SipUri)
    assert msg.uri.user_unescaped == "sips:user@example.com"
    assert isinstance(msg.to.uri, SipUri) and msg.to.uri.user_unescaped == "user"
    (contact,) = msg.contacts
    assert isinstance(contact.uri, SipUri)
    assert contact.uri.params == {"%6c%72": None, "n%61me": "v%61lue%25%34%31"}
    nulls = parse_message(load("escnull"))
    users = [c.uri.user_unescaped for c in nulls.contacts if isinstance(c.uri, SipUri)]
    assert users == ["\x00", "\x00\x00"]


def test_esc02_escaped_header_name_is_another_header() -> None:
    msg = parse_message(load("esc02"))
    assert [c.uri_text for c in msg.contacts] == [
        "sip:alias1@host1.example.com",
        "sip:alias3@host3.example.com",
    ]
    assert msg.get("C%6Fntact") == "<sip:alias2@host2.example.com>"
    assert msg.top_via.branch == "z9hG4bK209%fzsnel234"


def test_dblreq_trailing_octets_are_ignored() -> None:
    msg = parse_message(load("dblreq"))
    assert isinstance(msg, Request) and msg.method == "REGISTER"
    assert msg.body == b""


def test_mpart01_binary_body_is_kept_as_bytes() -> None:
    data = load("mpart01")
    msg = parse_message(data)
    assert msg.body == data[-553:]
    assert msg.content_type == "multipart/mixed;boundary=7a9cbec02ceef655"
    assert msg.to_bytes().endswith(msg.body)


# -- 3.1.2 invalid messages --------------------------------------------------------------------

#: how each invalid message is refused, and by which layer, when it is not a plain 400 with
#: ``partial`` from parse_message
INVALID_HANDLING: dict[str, str] = {
    # Responses cannot be answered: parse_message refuses them without partial, the
    # transport drops them.
    "scalarlg": "dropped",
    "bigcode": "dropped",
    # RFC 4475 3.1.2.12 lets the element ignore the Date. An emergency gateway does not
    # refuse a call over a header it never reads (the B-leg is built afresh, without it):
    # the parser accepts it and leaves Date as text.
    "baddate": "accepted",
    # Contact is parsed lazily (not a header every transaction needs): parse_message
    # accepts the request and the ``contacts`` accessor raises SipParseError (400) when the
    # registrar reads it (it answers 400 Bad Contact; gateway.sip.dialog does the same check
    # for a dialog-creating request).
    "regbadct": "contacts",
    # RFC 4475 3.1.2.18 prefers 501 for the unknown method but allows 400; the parser cannot
    # know the methods of the TU, so the CSeq mismatch gives 400.
    "mismatch02": "400",
}


@pytest.mark.parametrize("entry", entries("invalid"))
def test_invalid_message_is_refused(entry: dict[str, Any]) -> None:
    name = entry["file"].removesuffix(".sip").split("_", 1)[1]
    data = (TORTURE / entry["file"]).read_bytes()
    handling = INVALID_HANDLING.get(name, "400")
    if handling == "accepted":
        msg = parse_message(data)
        assert msg.get("date") == "Fri, 01 Jan 2010 16:00:00 EST"
        return
    if handling == "contacts":
        msg = parse_message(data)
        with pytest.raises(SipParseError) as lazy:
            msg.contacts  # noqa: B018
        assert lazy.value.status == 400
        assert isinstance(msg, Request)
        assert make_response(msg, lazy.value.status).status == 400
        return
    with pytest.raises(SipParseError) as caught:
        parse_message(data)
    exc = caught.value
    if handling == "dropped":
        assert entry["expect"]["expected_response"] is None
        assert exc.status == 400
        assert exc.partial is None
        return
    expected = 505 if name == "badvers" else 400
    assert exc.status == expected
    assert exc.status == entry["expect"]["expected_response"] or name == "mismatch02"
    assert isinstance(exc.partial, Request), "a request with a Via must be answerable"
    response = make_response(exc.partial, exc.status, exc.reason)
    assert response.status == expected
    # the answer carries what the client matches it with (RFC 3261 section 8.2.6.2), copied
    # as received even where it is what was wrong
    assert response.get_all("via") == exc.partial.get_all("via")
    assert response.get("call-id") == exc.partial.get("call-id")
    assert response.get("cseq") == exc.partial.get("cseq")
    wire = response.to_bytes()
    assert wire.startswith(f"SIP/2.0 {expected} ".encode())
    assert wire.endswith(b"\r\nContent-Length: 0\r\n\r\n")


def test_badvers_is_505_unsupported_version() -> None:
    with pytest.raises(UnsupportedVersion) as caught:
        parse_message(load("badvers"))
    assert caught.value.status == 505
    assert caught.value.reason == "Version Not Supported"


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("badinv01", "Via"),
        ("clerr", "Content-Length"),
        ("ncl", "Content-Length"),
        ("scalar02", "CSeq"),
        ("quotbal", "display name"),
        ("ltgtruri", "URI"),
        ("lwsruri", "request line"),
        ("lwsstart", "request line"),
        ("trws", "request line"),
        ("escruri", "Request-URI"),
        ("badaspec", "<>"),
        ("baddn", "display name"),
        ("mismatch01", "CSeq method"),
    ],
)
def test_invalid_request_error_names_the_fault(name: str, words: str) -> None:
    with pytest.raises(SipParseError) as caught:
        parse_message(load(name))
    assert words in caught.value.detail


def test_invalid_request_line_still_gives_an_answerable_partial() -> None:
    with pytest.raises(SipParseError) as caught:
        parse_message(load("lwsstart"))
    partial = caught.value.partial
    assert isinstance(partial, Request) and partial.method == "INVITE"
    assert partial.call_id == "lwsstart.dfknq234oi243099adsdfnawe3@example.com"


# -- 3.2 and 3.3: messages the parser accepts for another layer to judge ---------------------


def test_badbranch_parses_and_exposes_the_bare_cookie() -> None:
    # 3.2.1: the transaction layer decides (RFC 2543 matching or a stateless 400); the
    # parser must not break and shows the branch as it is.
    msg = parse_message(load("badbranch"))
    assert msg.top_via.branch == "z9hG4bK"


def test_insuf_is_400_with_an_answerable_partial() -> None:
    # 3.3.1: no Call-ID, From, To: parse_message refuses it, and the 400 can still be sent.
    with pytest.raises(SipParseError) as caught:
        parse_message(load("insuf"))
    exc = caught.value
    assert exc.status == 400
    assert "From" in exc.detail and "To" in exc.detail and "Call-ID" in exc.detail
    assert isinstance(exc.partial, Request)
    response = make_response(exc.partial, 400)
    assert response.get_all("via") == ["SIP/2.0/UDP 192.0.2.95;branch=z9hG4bKkdj.insuf"]
    assert response.get("cseq") == "193942 INVITE"


def test_unkscm_request_uri_is_an_absolute_uri() -> None:
    # 3.3.2: the TU answers 416 Unsupported URI Scheme; the parser keeps the URI opaque.
    msg = parse_message(load("unkscm"))
    assert isinstance(msg, Request)
    assert isinstance(msg.uri, AbsoluteUri)
    assert msg.uri.scheme == "nobodyknowsthisscheme"
    assert msg.uri.rest == "totallyopaquecontent"
    assert str(msg.uri) == "nobodyKnowsThisScheme:totallyopaquecontent"


def test_novelsc_soap_beep_uri_is_parsed_not_refused() -> None:
    # 3.3.3: 416 (or 404) from the TU once it sees the scheme.
    msg = parse_message(load("novelsc"))
    assert isinstance(msg, Request) and isinstance(msg.uri, AbsoluteUri)
    assert msg.uri.scheme == "soap.beep"
    assert str(msg.uri) == "soap.beep://192.0.2.103:3002"


def test_unksm2_non_sip_schemes_in_to_from_contact() -> None:
    # 3.3.4: valid syntax; a registrar answers 400 because the To AOR is not SIP.
    msg = parse_message(load("unksm2"))
    assert isinstance(msg.to.uri, AbsoluteUri) and msg.to.uri.scheme == "isbn"
    assert isinstance(msg.from_.uri, AbsoluteUri) and msg.from_.uri.scheme == "http"
    assert msg.from_tag == "3234233"
    (contact,) = msg.contacts
    assert isinstance(contact.uri, AbsoluteUri) and contact.uri.scheme == "name"


def test_bext01_exposes_the_option_tags() -> None:
    # 3.3.5: the UAS answers 420 Bad Extension listing them (a proxy checks Proxy-Require).
    msg = parse_message(load("bext01"))
    assert msg.get_all("require") == ["nothingSupportsThis", "nothingSupportsThisEither"]
    assert msg.get_all("proxy-require") == [
        "noProxiesSupportThis",
        "norDoAnyProxiesSupportThis",
    ]


def test_invut_exposes_the_unknown_body_type() -> None:
    # 3.3.6: an endpoint answers 415; the parser only frames the body.
    msg = parse_message(load("invut"))
    assert msg.content_type == "application/unknownformat"
    assert msg.body == b'<audio>\r\n <pcmu port="443"/>\r\n</audio>\r\n'


def test_regaut01_keeps_the_unknown_authorization_scheme() -> None:
    # 3.3.7: the registrar (if it authenticates) re-challenges with 401.
    msg = parse_message(load("regaut01"))
    assert msg.get("authorization") == "NoOneKnowsThisScheme opaque-data=here"


def test_multi01_repeated_single_headers_are_400() -> None:
    # 3.3.8: more than one Call-ID, To, From, Max-Forwards, CSeq.
    with pytest.raises(SipParseError) as caught:
        parse_message(load("multi01"))
    for name in ("Call-ID", "CSeq", "From", "To", "Max-Forwards"):
        assert name in caught.value.detail
    assert caught.value.partial is not None


def test_mcl01_conflicting_content_lengths_are_refused() -> None:
    # 3.3.9: framing unknowable: the datagram is refused (on TCP the framer closes, see
    # test_parser.py).
    with pytest.raises(SipParseError) as caught:
        parse_message(load("mcl01"))
    assert "Content-Length" in caught.value.detail


def test_bcast_exposes_the_broadcast_via() -> None:
    # 3.3.10: a proxy must drop it rather than forward to 255.255.255.255 (routing layer).
    msg = parse_message(load("bcast"))
    assert isinstance(msg, Response) and msg.status == 200
    assert [v.host for v in msg.vias] == ["192.0.2.198", "255.255.255.255"]


def test_zeromf_parses_with_max_forwards_zero() -> None:
    # 3.3.11: a proxy answers 483 Too Many Hops, an endpoint processes it.
    msg = parse_message(load("zeromf"))
    assert msg.max_forwards == 0


def test_cparam01_addr_spec_params_belong_to_the_header() -> None:
    # 3.3.12: without <>, ;unknownparam is a contact parameter, not a URI parameter.
    (contact,) = parse_message(load("cparam01")).contacts
    assert contact.bracketed is False
    assert contact.uri_text == "sip:+19725552222@gw1.example.net"
    assert contact.params == {"unknownparam": None}
    assert isinstance(contact.uri, SipUri) and contact.uri.params == {}


def test_cparam02_name_addr_params_belong_to_the_uri() -> None:
    # 3.3.13: inside <>, ;unknownparam is a URI parameter the binding keeps.
    (contact,) = parse_message(load("cparam02")).contacts
    assert contact.params == {}
    assert isinstance(contact.uri, SipUri) and contact.uri.params == {"unknownparam": None}
    assert str(contact.uri) == "sip:+19725552222@gw1.example.net;unknownparam"


def test_regescrt_keeps_the_escaped_route_header() -> None:
    # 3.3.14: the registrar accepts it and the binding keeps the escaped header as is.
    (contact,) = parse_message(load("regescrt")).contacts
    assert isinstance(contact.uri, SipUri)
    assert contact.uri.headers == "Route=%3Csip:sip.example.com%3E"
    assert str(contact.uri) == "sip:user@example.com?Route=%3Csip:sip.example.com%3E"


def test_sdp01_exposes_accept() -> None:
    # 3.3.15: the UAS answers 406 Not Acceptable (no acceptable body for its answer).
    msg = parse_message(load("sdp01"))
    assert msg.get_all("accept") == ["text/nobodyKnowsThis"]
    assert msg.content_type == "application/sdp"


def test_inv2543_rfc2543_request_is_accepted() -> None:
    # 3.4.1: no branch, no From tag, no Max-Forwards, no Content-Length: the body is the
    # rest of the datagram.
    msg = parse_message(load("inv2543"))
    assert isinstance(msg, Request)
    assert msg.top_via.branch is None
    assert msg.from_tag is None
    assert msg.max_forwards is None
    assert msg.body.startswith(b"v=0\r\n") and msg.body.endswith(b"RTP/AVP 0\r\n")
    (rr,) = msg.record_routes
    assert isinstance(rr.uri, SipUri) and rr.uri.params == {"maddr": "ss1.example.com"}
    # To is an addr-spec: ;user=phone is a header parameter there; From has it in <>
    assert msg.to.params == {"user": "phone"}
    assert isinstance(msg.from_.uri, SipUri) and msg.from_.uri.params == {"user": "phone"}


@pytest.mark.parametrize("entry", entries("semantic"))
def test_semantic_messages_never_raise_anything_but_parse_errors(entry: dict[str, Any]) -> None:
    data = (TORTURE / entry["file"]).read_bytes()
    try:
        msg = parse_message(data)
    except SipParseError as exc:
        assert exc.status == 400
        assert entry["expect"]["expected_response"] == 400
        return
    for name in ("vias", "contacts", "record_routes", "routes", "cseq", "from_", "to"):
        getattr(msg, name)
    for addr in [*msg.contacts, *msg.routes, *msg.record_routes, msg.from_, msg.to]:
        assert isinstance(addr, NameAddr)
        addr.uri  # noqa: B018
