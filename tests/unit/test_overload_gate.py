"""The overload gate and the admission rate control (SPEC O-4), sans-I/O.

The gate reads raw datagrams: these tests hand it bytes and read back what it would send,
parsed with the gateway's own parser to prove the stateless 503 is well formed.
"""

from __future__ import annotations

from test_b2bua_emergency import DID, _parts

from gateway.b2bua.admission import Admission, OverloadSignal, RateControl
from gateway.b2bua.call import Call, Leg, NextHop
from gateway.b2bua.gate import SHED_TAG_PREFIX, OverloadGate, scan_invite
from gateway.config.overload import OverloadSettings
from gateway.sip.message import Response, parse_message
from gateway.sip.transaction import Address
from gateway.sip.uri import parse_uri
from gateway.stores.ports import Reservation

PHONE = Address("udp", "192.0.2.10", 5062)
INVITE = (
    "INVITE sip:{user}@gw.example SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bK-1;rport\r\n"
    "v: SIP/2.0/UDP 198.51.100.1;branch=z9hG4bK-0\r\n"
    "Max-Forwards: 70\r\n"
    "f: <sip:caller@192.0.2.10>;tag=abc\r\n"
    "To: <sip:{user}@gw.example>{to_tag}\r\n"
    "i: call-{user}@192.0.2.10\r\n"
    "CSeq: 1 INVITE\r\n"
    "Content-Length: 0\r\n\r\n"
)


def invite(user: str = "5551234567", to_tag: str = "") -> bytes:
    return INVITE.format(user=user, to_tag=to_tag).encode()


def _full(settings: OverloadSettings | None = None) -> Admission:
    """An admission control that sheds: one call in set-up, and the limit is one."""
    admission = Admission(settings or OverloadSettings(max_calls_in_setup=1))
    leg = Leg("a", "x", "t", PHONE, None)  # type: ignore[arg-type]
    admission.attempt_tried(Call(id="x", a=leg, dialled="1", started_at=0.0), _hop())
    return admission


def _hop() -> NextHop:
    return NextHop("carrier", PHONE, "1", frozenset(), 5.0)


def _gate(admission: Admission, priority: set[str] | None = None) -> OverloadGate:
    wanted = priority or {"911"}
    return OverloadGate(admission, lambda uri, source: str(uri).split(":")[1][:3] in wanted, "gw")


def test_the_scan_reads_the_lines_a_response_copies_in_long_and_compact_form() -> None:
    head = scan_invite(invite())
    assert head is not None
    assert head.uri == b"sip:5551234567@gw.example"
    assert [line[:4] for line in head.vias] == [b"Via:", b"v: S"]
    assert head.from_.startswith(b"f:") and head.call_id.startswith(b"i:")
    assert not head.in_dialog
    reinvite = scan_invite(invite(to_tag=";TAG=xyz"))
    assert reinvite is not None and reinvite.in_dialog


def test_what_the_scan_cannot_read_at_a_glance_is_left_to_the_parser() -> None:
    folded = invite().replace(b"CSeq: 1 INVITE", b"CSeq: 1\r\n INVITE")
    two_tos = invite().replace(b"CSeq:", b"To: <sip:x@y>\r\nCSeq:")
    for data in (folded, two_tos, invite()[:60], b"INVITE sip:x SIP/3.0\r\n\r\n"):
        assert scan_invite(data) is None


def test_an_idle_gateway_passes_everything() -> None:
    gate = _gate(Admission())
    assert gate.screen(invite(), PHONE, 1.0) is None
    assert gate.shed == 0


def test_a_shedding_gateway_answers_a_new_ordinary_invite_503_statelessly() -> None:
    admission = _full()
    gate = _gate(admission)
    reply = gate.screen(invite(), PHONE, 1.0)
    assert reply
    response = parse_message(reply)
    assert isinstance(response, Response) and response.status == 503
    assert response.get("Retry-After") == "5"
    assert [str(via.branch) for via in response.vias] == ["z9hG4bK-1", "z9hG4bK-0"]
    assert response.from_.tag == "abc"
    assert (response.to.tag or "").startswith(SHED_TAG_PREFIX)
    assert response.call_id == "call-5551234567@192.0.2.10"
    assert (response.cseq.number, response.cseq.method) == (1, "INVITE")
    # a retransmission gets the same answer (RFC 3261 section 8.2.7: the same To tag)
    assert gate.screen(invite(), PHONE, 1.1) == reply
    assert gate.shed == 2 and admission.shed_calls == 2


def test_the_ack_of_a_shed_call_is_dropped_and_other_acks_pass() -> None:
    gate = _gate(_full())
    reply = gate.screen(invite(), PHONE, 1.0)
    assert reply
    to_line = next(line for line in reply.split(b"\r\n") if line.startswith(b"To:"))
    ack = invite().replace(b"INVITE sip", b"ACK sip").replace(b"CSeq: 1 INVITE", b"CSeq: 1 ACK")
    assert gate.screen(ack.replace(b"To: <sip:5551234567@gw.example>", to_line), PHONE, 1.0) == b""
    assert gate.screen(ack.replace(b"To: <sip:", b"To: <sip:x"), PHONE, 1.0) is None
    assert gate.acks_dropped == 1


def test_emergency_strings_re_invites_and_other_methods_pass_while_shedding() -> None:
    gate = _gate(_full())
    assert gate.screen(invite("911"), PHONE, 1.0) is None  # the router decides
    assert gate.screen(invite(to_tag=";tag=b-leg"), PHONE, 1.0) is None
    bye = invite().replace(b"INVITE sip", b"BYE sip")
    assert gate.screen(bye, PHONE, 1.0) is None
    assert gate.screen(b"SIP/2.0 200 OK\r\n\r\n", PHONE, 1.0) is None
    bad_uri = invite().replace(b"sip:5551234567@gw.example SIP", b"sip:@@ SIP")
    assert gate.screen(bad_uri, PHONE, 1.0) is None  # the parser answers 400
    assert gate.shed == 0


def test_the_router_says_which_calls_may_be_emergency_calls_or_callbacks() -> None:
    service, router, _, _ = _parts()

    def asks(uri: str, source: Address = PHONE) -> bool:
        return router.may_be_priority(parse_uri(uri), source)

    # from the agents' side: the dial string as received, or as the outside-line rule
    # makes it; nothing about identity yet (the router decides that when it routes)
    assert asks("sip:911@gw.example") and asks("sip:9911@gw.example")
    assert asks("urn:service:sos") and asks("tel:911")
    assert not asks("sip:5551234567@gw.example") and not asks("sip:95551234567@gw.example")
    # from a trunk: only a call to a live callback reservation
    carrier = Address("udp", "192.0.2.21", 5060)
    assert not asks(f"sip:{DID}@gw.example", carrier)
    service.live[DID] = Reservation(DID, "alice", 1.0e9 - 60, 1.0e9 + 3600, "c-1", False)
    assert asks(f"sip:{DID}@gw.example", carrier)
    assert not asks("sip:911@gw.example", carrier)  # a trunk does not dial 911 through us


# -- the rate control ---------------------------------------------------------------------


def _offer(control: RateControl, rate: float, start: float, seconds: float) -> int:
    """Offer ``rate`` calls/s for ``seconds``; the admitted count."""
    admitted, step = 0, 1.0 / rate
    for i in range(int(rate * seconds)):
        admitted += control.take(start + i * step)
    return admitted


def test_a_lag_over_the_target_limits_the_rate_to_nine_tenths_of_what_was_admitted() -> None:
    control = RateControl(OverloadSettings(target_loop_lag_ms=10, min_admit_rate=50))
    control.observe(0.0, 0.0)
    assert _offer(control, 1000, 0.0, 0.2) == 200  # no limit yet: all admitted
    control.observe(0.030, 0.2)  # the loop fell 30 ms behind: once is not overload
    assert control.limit is None
    assert _offer(control, 1000, 0.2, 0.2) == 200
    control.observe(0.030, 0.4)  # twice in a row is
    assert control.limit is not None and abs(control.limit - 900) < 1
    admitted = _offer(control, 2000, 0.4, 1.0)
    assert 850 <= admitted <= 960  # the limit (plus its small burst), not the offer
    control.observe(0.030, 1.4)  # still behind: cut again
    assert control.limit < 900


def test_the_rate_never_falls_below_the_floor_so_a_quiet_gateway_is_not_shed() -> None:
    control = RateControl(OverloadSettings(target_loop_lag_ms=10, min_admit_rate=50))
    control.observe(0.0, 0.0)
    _offer(control, 2, 0.0, 0.5)  # one call a second, then a long pause
    control.observe(0.200, 0.5)
    control.observe(0.200, 0.75)
    assert control.limit == 50
    assert _offer(control, 10, 0.5, 2.0) == 20  # a quiet gateway's calls all go through


def test_the_limit_grows_while_the_loop_is_calm_and_is_lifted_when_nothing_is_shed() -> None:
    settings = OverloadSettings(target_loop_lag_ms=10, min_admit_rate=50, adjust_interval_ms=100)
    control = RateControl(settings)
    control.observe(0.0, 0.0)
    _offer(control, 500, 0.0, 0.1)
    control.observe(0.050, 0.1)
    control.observe(0.050, 0.21)
    limit = control.limit
    assert limit is not None
    now = 0.1
    for _ in range(3):
        now += 0.11
        control.shed_since = 1  # still shedding: grows, stays
        control.observe(0.001, now)
    assert control.limit is not None and control.limit > limit
    for _ in range(RateControl.LIFT_AFTER):
        now += 0.11
        control.observe(0.001, now)
    assert control.limit is None


def test_a_target_of_zero_switches_the_rate_control_off() -> None:
    control = RateControl(OverloadSettings(target_loop_lag_ms=0))
    control.observe(0.0, 0.0)
    control.observe(5.0, 1.0)
    assert control.limit is None and control.take(1.0)


def test_the_gate_sheds_on_the_rate_limit_and_the_call_layer_takes_the_tokens() -> None:
    admission = Admission(OverloadSettings(target_loop_lag_ms=10, min_admit_rate=50))
    admission.observe(0.0, 0, 0.0)
    for i in range(100):
        assert not admission.shed(i / 500)  # 500 calls/s admitted, no limit
    admission.observe(1.0, 0, 0.2)  # a long stall: smoothed lag 300 ms, then more
    admission.observe(1.0, 0, 0.4)
    gate = _gate(admission)
    assert admission.rate.limit is not None
    passed = shed = 0
    for i in range(200):  # 1,000 calls/s offered for 0.2 s
        now = 0.4 + i / 1000
        reply = gate.screen(invite(str(5550000 + i)), PHONE, now)
        if reply is None:
            passed += 1
            assert not admission.shed(now)  # what the gate passed, the call layer admits
        else:
            shed += 1
    assert passed + shed == 200 and shed > 100
    assert admission.shed_calls == shed == gate.shed


# -- the read backlog ---------------------------------------------------------------------


def test_a_full_receive_queue_or_kernel_drops_shed_at_once() -> None:
    admission = Admission(OverloadSettings(max_read_backlog=0.5))
    admission.observe(0.0, 0, 0.0, backlog=0.1, drops=7)
    assert admission.over_limit() is None  # the first drop count is the baseline
    admission.observe(0.0, 0, 0.02, backlog=0.6, drops=7)
    assert admission.over_limit() is None  # once: a stall the next turns may drain
    admission.observe(0.0, 0, 0.03, backlog=0.6, drops=7)
    assert admission.over_limit() == OverloadSignal.READ_BACKLOG
    admission.observe(0.0, 0, 0.04, backlog=0.1, drops=9)  # drained, but it dropped
    assert admission.over_limit() == OverloadSignal.READ_BACKLOG
    admission.observe(0.0, 0, 0.06, backlog=0.1, drops=9)
    assert admission.over_limit() is None
    # and the rate control limits at once (no second interval): this is not a pause
    assert admission.rate.limit is None
    admission.observe(0.0, 0, 0.25, backlog=0.7, drops=9)
    assert admission.rate.limit is not None


def test_an_upstream_that_supports_rfc_7339_is_told_the_loss_in_its_via() -> None:
    admission = _full()
    admission.rate.loss = 40
    gate = OverloadGate(admission, lambda uri, source: False, "gw", wall_clock=lambda: 1700.5)
    with_oc = invite().replace(b"branch=z9hG4bK-1;rport", b"branch=z9hG4bK-1;rport;oc")
    reply = gate.screen(with_oc, PHONE, 1.0)
    assert reply
    response = parse_message(reply)
    assert isinstance(response, Response)
    top = response.vias[0]
    assert top.params["oc"] == "40" and top.params["oc-algo"] == '"loss"'
    assert top.params["oc-validity"] == "1000" and top.params["oc-seq"] == "1700.500"
    assert "oc" not in response.vias[1].params
    # an upstream that did not announce it gets a plain 503
    plain = gate.screen(invite(), PHONE, 1.0)
    assert plain and b"oc=" not in plain
