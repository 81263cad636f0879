"""The real source of a request through a cluster's front, and Path (issue #12, SPEC E-13,
RFC 3327), sans-I/O.

``gateway/fronts.py`` decides the origin of a request; the router, the overload gate and
the registrar take it from there. Each test also tries to break it: the header sent by a
phone straight to a node, a front that forgot it, a malformed or repeated one.
"""

from __future__ import annotations

import dataclasses

import pytest
from b2bua_peers import CALLER, GATEWAY, SDP, Net, hop, outbound
from structlog.testing import capture_logs
from test_b2bua_emergency import DIALPLAN, _parts
from test_overload_gate import _full, invite
from test_registrar import ALICE, Clock, Phone, make_registrar

from gateway.b2bua.decisions import Emergency, Queued, RouteRefusal
from gateway.b2bua.flood import SourceLimits
from gateway.b2bua.gate import OverloadGate
from gateway.b2bua.queues import binding_address
from gateway.b2bua.router import ContactCentreRouter
from gateway.config.loader import DialplanError, load_dialplan_text
from gateway.emergency.service import EmergencyCall
from gateway.fronts import Fronts, parse_front, parse_source
from gateway.sip.message import Request, parse_message
from gateway.sip.transaction import Address
from gateway.stores.ports import Binding
from gateway.transport.inbox import NEW, PRIORITY

FRONT = Address("udp", "192.0.2.5", 5060)
STRANGER = Address("udp", "198.51.100.9", 5070)
TRUNK = Address("udp", "192.0.2.21", 5060)
PATH = "<sip:192.0.2.5:5060;lr;received=sip:192.0.2.10:5060>"


def request(source_headers: tuple[str, ...] = (), uri: str = "sip:911@gw") -> Request:
    lines = [
        f"INVITE {uri} SIP/2.0",
        "Via: SIP/2.0/UDP 192.0.2.5:5060;branch=z9hG4bK-f1",
        "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-1",
        "From: <sip:alice@192.0.2.10>;tag=a",
        f"To: <{uri}>",
        "Call-ID: front-1",
        "CSeq: 1 INVITE",
        "Contact: <sip:alice@192.0.2.10>",
        *source_headers,
        "Content-Length: 0",
        "",
        "",
    ]
    message = parse_message("\r\n".join(lines).encode())
    assert isinstance(message, Request)
    return message


def router(fronts: Fronts | None = None) -> ContactCentreRouter:
    """The emergency test router (alice registered from CALLER), with ``fronts``; its
    registrar lookup would also say alice for the front's own address, which must not
    count."""
    _, base, _, _ = _parts()
    assert base.agent_at is not None
    at = base.agent_at
    return ContactCentreRouter(
        DIALPLAN,
        None,
        base.emergency,
        base.contacts,
        lambda source: "alice" if source == FRONT else at(source),
        fronts=fronts or Fronts([f"{FRONT.host}:{FRONT.port}"]),
    )


# -- the dialplan setting ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("192.0.2.5", ("192.0.2.5", None)),
        ("192.0.2.5:5060", ("192.0.2.5", 5060)),
        ("2001:db8::5", ("2001:db8::5", None)),
        ("[2001:DB8::5]:5062", ("2001:db8::5", 5062)),
    ],
)
def test_a_front_is_an_address_with_or_without_a_port(
    text: str, expected: tuple[str, int | None]
) -> None:
    assert parse_front(text) == expected


@pytest.mark.parametrize("text", ["front.example.com", "192.0.2.5:0", "192.0.2.5:", "[::1", "x:1"])
def test_a_front_that_is_no_address_is_refused_with_file_line_and_field(text: str) -> None:
    with pytest.raises(ValueError):
        parse_front(text)
    dialplan = (
        "version: 1\n"
        "node:\n"
        "  name: gw1\n"
        f"  fronts: ['192.0.2.5:5060', '{text}']\n"
        "listen: [ { transport: udp, host: 127.0.0.1, port: 5060 } ]\n"
    )
    with pytest.raises(DialplanError) as caught:
        load_dialplan_text(dialplan, "front.yaml")
    message = str(caught.value)
    assert "front.yaml:4: node.fronts[1]: front " in message, message


# -- the origin ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("udp:192.0.2.10:5060", Address("udp", "192.0.2.10", 5060)),
        ("TCP:192.0.2.10:40000", Address("tcp", "192.0.2.10", 40000)),
        ("udp:2001:db8::10:5060", Address("udp", "2001:db8::10", 5060)),
        ("tls:[2001:db8::10]:5061", Address("tls", "2001:db8::10", 5061)),
        ("udp:192.0.2.10", None),
        ("udp:192.0.2.10:99999", None),
        ("wss:192.0.2.10:443", Address("wss", "192.0.2.10", 443)),
        ("smoke:192.0.2.10:5060", None),
        ("udp:phone.example.com:5060", None),
        ("", None),
    ],
)
def test_the_header_names_an_address_or_nothing(value: str, expected: Address | None) -> None:
    assert parse_source(value) == expected


def test_only_a_front_is_believed_and_only_with_one_valid_header() -> None:
    fronts = Fronts(["192.0.2.5:5060", "192.0.2.6"])
    named = ("X-Gateway-Source: udp:192.0.2.10:5060",)
    assert fronts.origin_of(request(named), FRONT) == CALLER
    # a front written without a port matches every port of its address (TCP fronts)
    assert fronts.origin_of(request(named), Address("tcp", "192.0.2.6", 43211)) == CALLER
    # the same address on another port is a phone on the front's host, not the front
    other_port = Address("udp", "192.0.2.5", 5062)
    assert fronts.origin_of(request(named), other_port) == other_port
    # a phone that writes the header itself gains nothing
    assert fronts.origin_of(request(named), STRANGER) == STRANGER
    # a front without a usable header: the front itself
    for headers in [(), ("X-Gateway-Source: bogus",), (*named, "X-Gateway-Source: udp:1.2.3.4:5")]:
        assert fronts.origin_of(request(headers), FRONT) == FRONT
    assert not Fronts() and not Fronts().is_front(FRONT)


def test_the_raw_head_and_the_parsed_request_give_the_same_origin() -> None:
    fronts = Fronts(["192.0.2.5:5060"])
    cases = [
        (),
        ("X-Gateway-Source: udp:192.0.2.10:5060",),
        ("x-gateway-source:udp:192.0.2.10:5060",),
        ("X-Gateway-Source: udp:192.0.2.10:5060", "X-Gateway-Source: udp:192.0.2.11:5060"),
        ("X-Gateway-Source: nonsense",),
    ]
    for headers in cases:
        parsed = request(headers)
        raw = parsed.to_bytes()
        for source in (FRONT, STRANGER):
            assert fronts.origin_of_bytes(raw, source) == fronts.origin_of(parsed, source)
    # a header-like line in the body is not a header
    body = b"X-Gateway-Source: udp:192.0.2.10:5060\r\n"
    raw = request().to_bytes().replace(b"Content-Length: 0", b"Content-Length: %d" % len(body))
    assert fronts.origin_of_bytes(raw + body, FRONT) == FRONT


def test_a_front_without_a_usable_header_is_logged_at_most_ten_times_a_minute() -> None:
    now = [0.0]
    fronts = Fronts(["192.0.2.5:5060"], clock=lambda: now[0])
    options = request(uri="sip:gw").to_bytes().replace(b"INVITE", b"OPTIONS")
    with capture_logs() as logs:
        fronts.origin_of(parse_message(options), FRONT)  # type: ignore[arg-type]
        assert logs == []  # the front's own OPTIONS probes carry no header: not news
        for _ in range(15):
            fronts.origin_of(request(), FRONT)
        fronts.origin_of_bytes(request(("X-Gateway-Source: x",)).to_bytes(), FRONT)  # quiet
        assert len(logs) == 10
        now[0] = 61.0
        fronts.origin_of(request(("X-Gateway-Source: x",)), FRONT)
    assert [line["problem"] for line in logs] == ["missing"] * 10 + ["invalid"]
    assert logs[-1]["dropped"] == 5 and logs[-1]["front"] == "udp:192.0.2.5:5060"


# -- the router: identity, trunks, trust ---------------------------------------------------------


def test_behind_the_front_the_caller_is_who_the_front_names() -> None:
    route = router()
    as_alice = route.route(request(("X-Gateway-Source: udp:192.0.2.10:5060",)), "911", FRONT)
    assert isinstance(as_alice, Emergency) and isinstance(as_alice.call, EmergencyCall)
    assert as_alice.call.agent == "alice"
    # a stranger behind the front with alice's From: not alice
    stranger = route.route(request(("X-Gateway-Source: udp:198.51.100.9:5070",)), "911", FRONT)
    assert isinstance(stranger, Emergency) and isinstance(stranger.call, EmergencyCall)
    assert stranger.call.agent is None and stranger.call.source == "udp:198.51.100.9:5070"
    # the front's own address identifies nobody, even where a registration came from it
    itself = route.route(request(), "911", FRONT)
    assert isinstance(itself, Emergency) and isinstance(itself.call, EmergencyCall)
    assert itself.call.agent is None
    # alice's address written by a phone straight to the node: not alice either
    direct = route.route(request(("X-Gateway-Source: udp:192.0.2.10:5060",)), "911", STRANGER)
    assert isinstance(direct, Emergency) and isinstance(direct.call, EmergencyCall)
    assert direct.call.agent is None


def test_a_trunk_behind_the_front_is_known_by_the_address_the_front_names() -> None:
    route = router()
    line = "sip:+15555550100@gw"
    queued = route.route(
        request(("X-Gateway-Source: udp:192.0.2.21:5060",), line), "+15555550100", FRONT
    )
    assert queued == Queued("support", 0, "carrier")
    not_a_trunk = route.route(request(uri=line), "+15555550100", FRONT)
    assert isinstance(not_a_trunk, RouteRefusal)
    # a front that happens to sit in a trunk's inbound_from is still no trunk
    as_front = router(Fronts(["192.0.2.21:5060"]))
    assert as_front.trunk_of(TRUNK) is None
    assert route.trunk_of(TRUNK) == "carrier"
    assert route.trusted_source(FRONT)  # never rate-limited: it carries every phone
    assert route.trusted_source(CALLER) and not route.trusted_source(STRANGER)
    assert route.may_be_priority(request(uri=line).uri, FRONT) is False


def test_the_gates_limits_and_trust_cache_key_on_the_source_behind_the_front() -> None:
    route = router()
    asked: list[Address] = []

    def trusted(source: Address) -> bool:
        asked.append(source)
        return route.trusted_source(source)

    gate = OverloadGate(
        _full(),
        lambda uri, source: False,
        "gw",
        limits=SourceLimits(rate=0.001, burst=2),
        trusted=trusted,
        fronts=route.fronts,
    )

    def through_front(name: str, user: str) -> bytes:
        data = invite(user)
        return data.replace(b"Max-Forwards", f"X-Gateway-Source: {name}\r\nMax-Forwards".encode())

    stranger = through_front("udp:198.51.100.9:5070", "5551234567")
    results = [gate.screen(stranger, FRONT, 1.0) for _ in range(3)]
    assert results[2] == b""  # the stranger's third request: over its own limit, dropped
    assert results[0] not in (None, b"")  # shed (503) before that, being ordinary
    alice = through_front("udp:192.0.2.10:5060", "5551234567")
    for _ in range(5):  # alice through the same front: trusted, never dropped as a flood
        assert gate.screen(alice, FRONT, 1.0) != b""
    for _ in range(5):  # nor is the front's own traffic (in-dialog requests, probes)
        assert gate.screen(invite("5551234567", ";tag=x"), FRONT, 1.0) is None
    assert asked == [STRANGER, CALLER, FRONT]  # one verdict per real source, cached


def test_the_inbox_lane_of_a_911_through_the_front_follows_the_source_it_names() -> None:
    route = router()
    gate = OverloadGate(
        _full(),
        lambda uri, source: "911" in str(uri),
        "gw",
        trusted=route.trusted_source,
        fronts=route.fronts,
    )

    def through_front(name: str) -> bytes:
        data = invite("911")
        return data.replace(b"Max-Forwards", f"X-Gateway-Source: {name}\r\nMax-Forwards".encode())

    assert gate.classify(through_front("udp:192.0.2.10:5060"), FRONT, 1.0) == PRIORITY  # alice
    # a stranger behind the front does not jump the queue (the gate still lets it through)
    assert gate.classify(through_front("udp:198.51.100.9:5070"), FRONT, 1.0) == NEW


# -- Path (RFC 3327) -----------------------------------------------------------------------------


def test_a_register_through_a_front_stores_and_echoes_its_path() -> None:
    phone = Phone(make_registrar(), Clock(), path_allowed=True)
    second = "<sip:edge.example.net;lr>"
    outcome = phone.send(ALICE, extra=(f"Path: {PATH}", f"Path: {second}"))
    assert outcome.response.status == 200 and not outcome.path_ignored
    [binding] = outcome.added
    assert binding.path == (PATH, second)
    assert outcome.response.get_all("path") == [PATH, second]  # RFC 3327 section 5.3
    direct = Phone(make_registrar(), Clock(), path_allowed=True).send(ALICE)
    assert direct.added[0].path == () and direct.response.get_all("path") == []


def test_a_path_a_phone_wrote_itself_is_not_a_route_set_for_its_calls() -> None:
    # alice's own credentials, straight to the node (not through a front): a Path here would
    # send every call to her, emergency callbacks too, through a host she chose
    outcome = Phone(make_registrar(), Clock()).send(
        ALICE, extra=("Path: <sip:evil.example.net;lr>",)
    )
    assert outcome.response.status == 200 and outcome.path_ignored
    assert outcome.added[0].path == () and outcome.response.get_all("path") == []
    # and a Path that no request could follow is no reason to refuse her registration
    bad = Phone(make_registrar(), Clock()).send(ALICE, extra=("Path: not a uri",))
    assert bad.response.status == 200 and bad.added[0].path == ()


@pytest.mark.parametrize("value", ["<tel:+15555550100>", "<sip:@>", "not a uri"])
def test_a_path_no_request_could_follow_is_400(value: str) -> None:
    phone = Phone(make_registrar(), Clock(), path_allowed=True)
    outcome = phone.send(ALICE, extra=(f"Path: {value}",))
    assert outcome.response.status == 400 and outcome.added == []


def test_requests_to_a_contact_registered_through_a_front_go_to_its_paths_first_hop() -> None:
    through_front = Binding("alice", "sip:alice@192.0.2.10:5060", 2e9, "c", 1,
                            "udp:192.0.2.10:5060", "UA", path=(PATH,))  # fmt: skip
    assert binding_address(through_front) == FRONT
    direct = Binding("alice", "sip:alice@192.0.2.10:5060", 2e9, "c", 1, "udp:192.0.2.10:5060", "UA")
    assert binding_address(direct) == CALLER
    # a Redis record read back from JSON has a list; one written before Path has none
    assert Binding(**{**dataclasses.asdict(direct), "path": [PATH]}).path == (PATH,)


def test_the_b_leg_invite_carries_the_path_as_its_route_set_and_goes_to_its_first_hop() -> None:
    net = Net(outbound(hop(FRONT, request_uri="sip:alice@192.0.2.10:5060", route=(PATH,))))
    caller = net.peer(CALLER)
    tx = caller.invite("15551230000", SDP)
    net.exchange()
    [sent] = net.sent(GATEWAY, FRONT, "INVITE")
    assert str(sent.uri) == "sip:alice@192.0.2.10:5060"  # her contact, reached via the front
    assert sent.get_all("route") == [PATH]
    front = net.peer(FRONT)
    [arrived] = front.requests("INVITE")
    front.answer(arrived, 180)
    caller.cancel(tx)
    net.exchange()
    [cancel] = net.sent(GATEWAY, FRONT, "CANCEL")  # RFC 3261 section 9.1: the same Route
    assert cancel.get_all("route") == [PATH]
