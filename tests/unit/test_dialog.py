"""RFC 3261 section 12 dialogs (gateway.sip.dialog) and next-hop resolution (gateway.sip.routing).

Messages are wire captures under tests/data/sip/dialog_*.sip (LF line ends on disk, sent as
CRLF), or small inline variants of them.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.sip.dialog import (
    Dialog,
    DialogError,
    DialogId,
    creates_dialog,
    is_target_refresh,
)
from gateway.sip.errors import SipParseError
from gateway.sip.headers import NameAddr, Via
from gateway.sip.message import Request, Response, make_response, parse_message
from gateway.sip.routing import UnroutableUri, resolve_next_hop
from gateway.sip.transaction import Address, IdGenerator
from gateway.sip.uri import SipUri, parse_uri

DATA = Path(__file__).resolve().parent.parent / "data" / "sip"

IDS = IdGenerator(random.Random(3261))


def wire(text: str) -> Request | Response:
    """Parse a message written with LF line ends as it would arrive (CRLF)."""
    return parse_message(text.replace("\r\n", "\n").replace("\n", "\r\n").encode())


def load(name: str, *replace: tuple[str, str]) -> Request | Response:
    """A capture from tests/data/sip, optionally edited (``(old, new)`` pairs)."""
    text = (DATA / f"{name}.sip").read_text()
    for old, new in replace:
        assert old in text, old
        text = text.replace(old, new)
    return wire(text)


def request(name: str, *replace: tuple[str, str]) -> Request:
    msg = load(name, *replace)
    assert isinstance(msg, Request)
    return msg


def response(name: str, *replace: tuple[str, str]) -> Response:
    msg = load(name, *replace)
    assert isinstance(msg, Response)
    return msg


def routes(msg: Request) -> list[str]:
    return [str(r) for r in msg.routes]


def reparsed(msg: Request) -> Request:
    """Send ``msg`` the way the transaction layer does (Via on top) and parse it back."""
    msg.push_via(Via("UDP", "192.0.2.10", 5060, {"branch": IDS.branch()}))
    back = parse_message(msg.to_bytes())
    assert isinstance(back, Request)
    return back


KAMAILIO_OUT = "<sip:198.51.100.1;transport=tcp;r2=on;lr;ftag=9fxced76sl>"
KAMAILIO_IN = "<sip:192.0.2.1;r2=on;lr;ftag=9fxced76sl>"
SBC = "<sip:203.0.113.5:5070;lr>"


# -- UAC dialogs (section 12.1.2) ----------------------------------------------------------


def test_uac_early_dialog_from_180_reverses_two_proxies_record_route() -> None:
    invite = request("dialog_uac_invite")
    d = Dialog.as_uac(invite, response("dialog_uac_180"))
    assert d.state == "early"
    assert d.role == "uac"
    assert d.id == DialogId("3848276298220188511@gw.example.com", "9fxced76sl", "8321234356")
    # Kamailio's double Record-Route and the SBC's, in reverse: nearest proxy first.
    assert [str(r) for r in d.route_set] == [KAMAILIO_IN, KAMAILIO_OUT, SBC]
    assert d.remote_target == "sip:bob@203.0.113.77:5062;transport=tcp"
    assert d.local_cseq == 314159
    assert d.remote_cseq is None
    assert str(d.local_uri) == '"Agent 42" <sip:agent42@gw.example.com>'
    assert str(d.remote_uri) == "Bob <sip:bob@biloxi.example.com>"
    assert d.local_contact == "sip:gw@192.0.2.10:5060"
    assert d.secure is False


def test_uac_confirmed_dialog_from_200_without_record_route() -> None:
    d = Dialog.as_uac(request("dialog_uac_invite"), response("dialog_uac_200_no_rr"))
    assert d.state == "confirmed"
    assert d.route_set == []
    assert d.remote_target == "sip:bob@192.0.2.4"
    assert d.remote_tag == "a6c85cf"


def test_uac_contact_header_params_are_not_part_of_the_target() -> None:
    d = Dialog.as_uac(request("dialog_uac_invite"), response("dialog_uac_200"))
    assert d.remote_target == "sip:bob@203.0.113.78:5062;transport=tcp"


def test_uac_secure_for_sips_request_uri() -> None:
    invite = request(
        "dialog_uac_invite",
        ("INVITE sip:bob@biloxi.example.com SIP", "INVITE sips:bob@biloxi.example.com SIP"),
    )
    assert Dialog.as_uac(invite, response("dialog_uac_200")).secure is True


@pytest.mark.parametrize(
    ("status_line", "to_tag"),
    [("100 Trying", ""), ("180 Ringing", ""), ("486 Busy Here", ";tag=x1")],
)
def test_responses_that_create_no_dialog(status_line: str, to_tag: str) -> None:
    resp = response(
        "dialog_uac_180",
        ("180 Ringing", status_line),
        (";tag=8321234356", to_tag),
    )
    assert not creates_dialog(resp)
    with pytest.raises(ValueError):
        Dialog.as_uac(request("dialog_uac_invite"), resp)


def test_2xx_without_to_tag_is_the_null_tag() -> None:
    resp = response("dialog_uac_200_no_rr", (";tag=a6c85cf", ""))
    assert creates_dialog(resp)
    d = Dialog.as_uac(request("dialog_uac_invite"), resp)
    assert d.remote_tag == ""
    assert d.create_request("BYE", IDS).get("To") == "Bob <sip:bob@biloxi.example.com>"


def test_uac_refuses_a_response_to_another_request() -> None:
    resp = response("dialog_uac_200", ("CSeq: 314159 INVITE", "CSeq: 314160 INVITE"))
    with pytest.raises(ValueError):
        Dialog.as_uac(request("dialog_uac_invite"), resp)


# -- UAS dialogs (section 12.1.1) ----------------------------------------------------------


def test_uas_dialog_keeps_record_route_in_order() -> None:
    invite = request("dialog_uas_invite")
    d = Dialog.as_uas(invite, "gw1tag", "<sip:gw@192.0.2.10:5060>")
    assert d.state == "early"
    assert d.role == "uas"
    assert d.id == DialogId("8f7e6d5c4b3a@carrier.example.net", "gw1tag", "c4r7x")
    assert [str(r) for r in d.route_set] == [
        "<sip:192.0.2.1;r2=on;lr;ftag=c4r7x>",
        "<sip:198.51.100.1;transport=tcp;r2=on;lr;ftag=c4r7x>",
        SBC,
    ]
    assert d.remote_target == "sip:+15557654321@203.0.113.80:5060;transport=tcp"
    assert d.remote_cseq == 101
    assert str(d.local_uri) == '"Queue" <sip:+15551230042@gw.example.com;user=phone>'
    assert str(d.remote_uri) == "<sip:+15557654321@carrier.example.net;user=phone>"
    assert d.next_hop == parse_uri("sip:192.0.2.1;r2=on;lr;ftag=c4r7x")


def test_uas_first_request_uses_initial_cseq() -> None:
    invite = request("dialog_uas_invite")
    d = Dialog.as_uas(invite, "gw1tag", "sip:gw@192.0.2.10")
    bye = d.create_request("BYE", IDS)
    assert str(bye.cseq) == "1 BYE"
    assert bye.get("From") == '"Queue" <sip:+15551230042@gw.example.com;user=phone>;tag=gw1tag'
    assert bye.get("To") == "<sip:+15557654321@carrier.example.net;user=phone>;tag=c4r7x"
    d2 = Dialog.as_uas(invite, "gw1tag", "sip:gw@192.0.2.10", initial_cseq=7000)
    assert d2.create_request("INFO", IDS).cseq.number == 7000
    with pytest.raises(ValueError):
        Dialog.as_uas(invite, "gw1tag", "sip:gw@192.0.2.10", initial_cseq=0)


def test_uas_without_record_route_and_rfc2543_from_without_tag() -> None:
    invite = request(
        "dialog_uas_invite",
        (
            "Record-Route: <sip:192.0.2.1;r2=on;lr;ftag=c4r7x>,"
            "<sip:198.51.100.1;transport=tcp;r2=on;lr;ftag=c4r7x>\n",
            "",
        ),
        ("Record-Route: <sip:203.0.113.5:5070;lr>\n", ""),
        (";tag=c4r7x", ""),
    )
    d = Dialog.as_uas(invite, "gw1tag", "sip:gw@192.0.2.10")
    assert d.route_set == []
    assert d.remote_tag == ""
    bye = d.create_request("BYE", IDS)
    assert bye.uri_text == "sip:+15557654321@203.0.113.80:5060;transport=tcp"
    assert not bye.has("Route")
    assert bye.get("To") == "<sip:+15557654321@carrier.example.net;user=phone>"


def test_uas_invite_without_contact_is_a_400() -> None:
    invite = request(
        "dialog_uas_invite", ("Contact: <sip:+15557654321@203.0.113.80:5060;transport=tcp>\n", "")
    )
    with pytest.raises(SipParseError) as err:
        Dialog.as_uas(invite, "gw1tag", "sip:gw@192.0.2.10")
    assert err.value.status == 400


def test_uas_fallback_target_stands_in_for_a_missing_or_broken_contact_or_route_set() -> None:
    """An emergency call is placed anyway (SPEC E-3): the INVITE's source as the target,
    with no route set when the Record-Route is broken; without a fallback, 400."""
    source = "sip:203.0.113.80:5060;transport=tcp"
    contact = "Contact: <sip:+15557654321@203.0.113.80:5060;transport=tcp>\n"
    broken = {
        "no Contact": request("dialog_uas_invite", (contact, "")),
        "bad Contact": request("dialog_uas_invite", (contact, "Contact: <garbage\n")),
        "bad Record-Route": request(
            "dialog_uas_invite", ("Record-Route: <sip:203.0.113.5:5070;lr>", "Record-Route: <x")
        ),
    }
    for name, invite in broken.items():
        with pytest.raises(SipParseError):
            Dialog.as_uas(invite, "gw1tag", "sip:gw@192.0.2.10")
        d = Dialog.as_uas(invite, "gw1tag", "sip:gw@192.0.2.10", fallback_target=source)
        assert (d.remote_target, d.route_set) == (source, []), name
        bye = d.create_request("BYE", IDS)
        assert bye.uri_text == source and not bye.has("Route"), name
    whole = Dialog.as_uas(request("dialog_uas_invite"), "t", "sip:gw@h", fallback_target=source)
    assert whole.remote_target == "sip:+15557654321@203.0.113.80:5060;transport=tcp"
    assert len(whole.route_set) == 3


def test_uas_confirm_with_our_2xx() -> None:
    invite = request("dialog_uas_invite")
    d = Dialog.as_uas(invite, "gw1tag", "sip:gw@192.0.2.10")
    d.confirm(make_response(invite, 200, to_tag="gw1tag"))
    assert d.state == "confirmed"
    assert d.remote_tag == "c4r7x"
    with pytest.raises(ValueError):
        d.confirm(make_response(invite, 200, to_tag="not-ours"))


# -- identity ------------------------------------------------------------------------------


def test_matches_requests_and_responses_from_the_right_side() -> None:
    invite = request("dialog_uas_invite")
    d = Dialog.as_uas(invite, "gw1tag", "sip:gw@192.0.2.10")
    bye_in = wire(
        "BYE sip:gw@192.0.2.10 SIP/2.0\n"
        "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKkam2\n"
        "From: <sip:+15557654321@carrier.example.net>;tag=c4r7x\n"
        "To: <sip:+15551230042@gw.example.com>;tag=gw1tag\n"
        "Call-ID: 8f7e6d5c4b3a@carrier.example.net\n"
        "CSeq: 102 BYE\n"
        "Content-Length: 0\n\n"
    )
    assert d.matches(bye_in)
    assert DialogId.of_received(bye_in) == d.id
    # our own request seen as received: the tags are on the wrong side
    assert not d.matches(d.create_request("BYE", IDS))
    # a response to our request: From tag ours, To tag theirs
    ours = d.create_request("INFO", IDS)
    ours.push_via(Via("UDP", "192.0.2.10", 5060, {"branch": IDS.branch()}))
    assert d.matches(make_response(ours, 200))
    other_call = wire(bye_in.to_bytes().decode().replace("8f7e6d5c4b3a@carrier", "other@carrier"))
    assert not d.matches(other_call)


# -- requests within the dialog (section 12.2.1.1) -----------------------------------------


def test_bye_through_loose_routers() -> None:
    d = Dialog.as_uac(request("dialog_uac_invite"), response("dialog_uac_200"))
    bye = d.create_request("BYE", IDS)
    assert bye.method == "BYE"
    assert bye.uri_text == "sip:bob@203.0.113.78:5062;transport=tcp"
    assert routes(bye) == [KAMAILIO_IN, KAMAILIO_OUT, SBC]
    assert str(bye.cseq) == "314160 BYE"
    assert bye.get("To") == "Bob <sip:bob@biloxi.example.com>;tag=8321234356"
    assert bye.get("From") == '"Agent 42" <sip:agent42@gw.example.com>;tag=9fxced76sl'
    assert bye.call_id == "3848276298220188511@gw.example.com"
    assert bye.max_forwards == 70
    assert not bye.has("Via")  # the transaction layer adds it
    assert not bye.has("Contact")
    assert d.next_hop == parse_uri("sip:192.0.2.1;r2=on;lr;ftag=9fxced76sl")
    assert d.next_hop_uri == d.next_hop
    assert resolve_next_hop(d.next_hop) == Address("udp", "192.0.2.1", 5060)
    assert d.local_cseq == 314160


def test_request_goes_on_the_wire_with_via_first() -> None:
    d = Dialog.as_uac(request("dialog_uac_invite"), response("dialog_uac_200"))
    update = d.create_request("UPDATE", IDS, body=b"v=0\r\n", content_type="application/sdp")
    back = reparsed(update)
    assert back.headers[0][0] == "via"
    assert routes(back) == [KAMAILIO_IN, KAMAILIO_OUT, SBC]
    assert back.body == b"v=0\r\n"
    assert back.content_type == "application/sdp"
    assert back.get("Contact") == "<sip:gw@192.0.2.10:5060>"


def test_rfc3261_12_2_1_1_strict_router_example() -> None:
    d = Dialog.as_uac(request("dialog_uac_invite"), response("dialog_strict_200"))
    assert [str(r) for r in d.route_set] == [
        "<sip:proxy1>",
        "<sip:proxy2>",
        "<sip:proxy3;lr>",
        "<sip:proxy4>",
    ]
    bye = d.create_request("BYE", IDS)
    assert bye.uri_text == "sip:proxy1"
    assert routes(bye) == ["<sip:proxy2>", "<sip:proxy3;lr>", "<sip:proxy4>", "<sip:user@remoteua>"]
    # with a strict router first, the Request-URI is the next hop (section 8.1.2)
    assert d.next_hop == parse_uri("sip:proxy1")
    assert resolve_next_hop(d.next_hop) == Address("udp", "proxy1", 5060)


def test_strict_router_uri_loses_what_a_request_uri_may_not_carry() -> None:
    d = Dialog.as_uac(request("dialog_uac_invite"), response("dialog_uac_200"))
    d.route_set = [
        NameAddr.parse("<sip:strict.example.com;maddr=10.0.0.1;method=INVITE?Subject=x>"),
        NameAddr.parse("<sip:[2001:db8::1]:5070;transport=tcp>"),
    ]
    req = d.create_request("OPTIONS", IDS)
    assert req.uri_text == "sip:strict.example.com;maddr=10.0.0.1"
    assert routes(req) == [
        "<sip:[2001:db8::1]:5070;transport=tcp>",
        "<sip:bob@203.0.113.78:5062;transport=tcp>",
    ]
    assert resolve_next_hop(d.next_hop) == Address("udp", "10.0.0.1", 5060)


def test_contact_only_on_target_refresh_methods_and_refer() -> None:
    d = Dialog.as_uac(request("dialog_uac_invite"), response("dialog_uac_200"))
    d.local_contact = "<sip:gw@192.0.2.10:5060;transport=tcp>"
    for method in ("INVITE", "UPDATE", "REFER"):
        assert d.create_request(method, IDS).get("Contact") == d.local_contact
    for method in ("BYE", "INFO", "OPTIONS", "MESSAGE"):
        assert not d.create_request(method, IDS).has("Contact")
    assert is_target_refresh("invite")
    assert is_target_refresh("UPDATE")
    assert not is_target_refresh("BYE")


def test_cseq_increments_and_extra_headers() -> None:
    d = Dialog.as_uac(request("dialog_uac_invite"), response("dialog_uac_200"))
    numbers = [d.create_request("INFO", IDS).cseq.number for _ in range(3)]
    assert numbers == [314160, 314161, 314162]
    info = d.create_request(
        "INFO", IDS, extra_headers=[("Info-Package", "dtmf"), ("Content-Disposition", "info")]
    )
    assert info.get("Info-Package") == "dtmf"
    assert info.get("Content-Disposition") == "info"


@pytest.mark.parametrize("method", ["ACK", "CANCEL", "ack"])
def test_ack_and_cancel_are_not_built_by_create_request(method: str) -> None:
    d = Dialog.as_uac(request("dialog_uac_invite"), response("dialog_uac_200"))
    with pytest.raises(ValueError):
        d.create_request(method, IDS)
    assert d.local_cseq == 314159


def test_no_requests_on_a_terminated_dialog() -> None:
    d = Dialog.as_uac(request("dialog_uac_invite"), response("dialog_uac_200"))
    d.terminate()
    assert d.state == "terminated"
    with pytest.raises(ValueError):
        d.create_request("BYE", IDS)


# -- ACK for a 2xx (section 13.2.2.4) ------------------------------------------------------


def test_ack_for_2xx_follows_route_set() -> None:
    invite = request("dialog_uac_invite")
    ok = response("dialog_uac_200")
    d = Dialog.as_uac(invite, ok)
    ack = d.create_ack(invite, ok, IDS)
    assert ack.method == "ACK"
    assert ack.uri_text == "sip:bob@203.0.113.78:5062;transport=tcp"
    assert routes(ack) == [KAMAILIO_IN, KAMAILIO_OUT, SBC]
    assert str(ack.cseq) == "314159 ACK"
    assert ack.to_tag == "8321234356"
    assert ack.from_tag == "9fxced76sl"
    assert ack.body == b""
    assert not ack.has("Content-Type")
    assert not ack.has("Contact")
    assert not ack.has("Via")
    assert ack.get("Proxy-Authorization") == invite.get("Proxy-Authorization")
    assert d.local_cseq == 314159  # an ACK takes no new CSeq
    assert reparsed(ack).cseq.method == "ACK"


def test_ack_may_carry_the_answer() -> None:
    invite = request("dialog_uac_invite")
    ok = response("dialog_uac_200")
    d = Dialog.as_uac(invite, ok)
    ack = d.create_ack(invite, ok, IDS, body=b"v=0\r\n", content_type="application/sdp")
    assert ack.body == b"v=0\r\n"
    assert ack.content_type == "application/sdp"


def test_ack_for_a_2xx_from_another_fork_uses_that_forks_route() -> None:
    invite = request("dialog_uac_invite")
    d = Dialog.as_uac(invite, response("dialog_uac_180"))
    fork_ok = response(
        "dialog_uac_200",
        (";tag=8321234356", ";tag=fork2"),
        ("Record-Route: <sip:203.0.113.5:5070;lr>", "Record-Route: <sip:203.0.113.6;lr>"),
        ("Contact: <sip:bob@203.0.113.78:5062;transport=tcp>", "Contact: <sip:bob@203.0.113.99>"),
    )
    ack = d.create_ack(invite, fork_ok, IDS)
    assert ack.to_tag == "fork2"
    assert ack.uri_text == "sip:bob@203.0.113.99"
    assert routes(ack) == [KAMAILIO_IN, KAMAILIO_OUT, "<sip:203.0.113.6;lr>"]
    assert d.remote_tag == "8321234356"  # the early dialog itself is untouched


def test_ack_refuses_non_2xx_and_foreign_responses() -> None:
    invite = request("dialog_uac_invite")
    d = Dialog.as_uac(invite, response("dialog_uac_200"))
    with pytest.raises(ValueError):
        d.create_ack(invite, response("dialog_uac_180"), IDS)
    with pytest.raises(ValueError):
        d.create_ack(invite, response("dialog_uac_200", ("CSeq: 314159", "CSeq: 314158")), IDS)


# -- confirm and terminate -----------------------------------------------------------------


def test_confirm_takes_route_set_and_target_from_the_2xx() -> None:
    invite = request("dialog_uac_invite")
    d = Dialog.as_uac(invite, response("dialog_uac_180", (SBC, "<sip:203.0.113.9;lr>")))
    assert str(d.route_set[-1]) == "<sip:203.0.113.9;lr>"
    d.confirm(response("dialog_uac_200"))
    assert d.state == "confirmed"
    assert [str(r) for r in d.route_set] == [KAMAILIO_IN, KAMAILIO_OUT, SBC]
    assert d.remote_target == "sip:bob@203.0.113.78:5062;transport=tcp"
    d.confirm(response("dialog_uac_200"))  # a retransmitted 2xx changes nothing
    assert d.state == "confirmed"
    with pytest.raises(ValueError):
        d.confirm(response("dialog_uac_200", (";tag=8321234356", ";tag=late-fork")))


def test_confirm_with_a_2xx_from_another_fork_adopts_it() -> None:
    d = Dialog.as_uac(request("dialog_uac_invite"), response("dialog_uac_180"))
    d.confirm(response("dialog_uac_200_no_rr"))
    assert d.remote_tag == "a6c85cf"
    assert d.route_set == []
    assert d.remote_target == "sip:bob@192.0.2.4"


def test_confirm_refuses_non_2xx_and_terminated() -> None:
    d = Dialog.as_uac(request("dialog_uac_invite"), response("dialog_uac_180"))
    with pytest.raises(ValueError):
        d.confirm(response("dialog_uac_180"))
    d.terminate()
    d.terminate()
    with pytest.raises(ValueError):
        d.confirm(response("dialog_uac_200"))


# -- received requests: CSeq order (section 12.2.2) ----------------------------------------


def peer_request(method: str, cseq: int, *, contact: str | None = None) -> Request:
    """A request from the carrier side of the dialog_uas_invite dialog."""
    contact_line = f"Contact: {contact}\n" if contact else ""
    msg = wire(
        f"{method} sip:gw@192.0.2.10 SIP/2.0\n"
        "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK" + IDS.token() + "\n"
        "Max-Forwards: 69\n"
        "From: <sip:+15557654321@carrier.example.net;user=phone>;tag=c4r7x\n"
        "To: <sip:+15551230042@gw.example.com;user=phone>;tag=gw1tag\n"
        "Call-ID: 8f7e6d5c4b3a@carrier.example.net\n"
        f"CSeq: {cseq} {method}\n" + contact_line + "Content-Length: 0\n\n"
    )
    assert isinstance(msg, Request)
    return msg


def uas_dialog() -> Dialog:
    d = Dialog.as_uas(request("dialog_uas_invite"), "gw1tag", "sip:gw@192.0.2.10")
    d.state = "confirmed"
    return d


def test_cseq_in_order_is_recorded() -> None:
    d = uas_dialog()
    d.check_request(peer_request("INFO", 102))
    assert d.remote_cseq == 102
    d.check_request(peer_request("BYE", 110))  # gaps are allowed
    assert d.remote_cseq == 110


@pytest.mark.parametrize("cseq", [100, 101])
def test_cseq_lower_or_equal_is_a_500(cseq: int) -> None:
    d = uas_dialog()
    with pytest.raises(DialogError) as err:
        d.check_request(peer_request("BYE", cseq))
    assert err.value.status == 500
    assert err.value.reason == "Server Internal Error"
    assert err.value.detail == "CSeq out of order"
    assert d.remote_cseq == 101


def test_ack_and_cancel_reuse_the_cseq() -> None:
    d = uas_dialog()
    d.check_request(peer_request("ACK", 101))
    d.check_request(peer_request("CANCEL", 101))
    assert d.remote_cseq == 101


def test_first_request_from_the_callee_sets_remote_cseq() -> None:
    d = Dialog.as_uac(request("dialog_uac_invite"), response("dialog_uac_200_no_rr"))
    bye = wire(
        "BYE sip:gw@192.0.2.10:5060 SIP/2.0\n"
        "Via: SIP/2.0/UDP 192.0.2.4;branch=z9hG4bKnashds7\n"
        "From: Bob <sip:bob@biloxi.example.com>;tag=a6c85cf\n"
        'To: "Agent 42" <sip:agent42@gw.example.com>;tag=9fxced76sl\n'
        "Call-ID: 3848276298220188511@gw.example.com\n"
        "CSeq: 5 BYE\n"
        "Content-Length: 0\n\n"
    )
    assert isinstance(bye, Request)
    d.check_request(bye)
    assert d.remote_cseq == 5  # lower than our own sequence: the two are independent


def test_request_of_another_dialog_or_a_terminated_one_is_a_481() -> None:
    d = uas_dialog()
    stray = peer_request("BYE", 200)
    stray.set("To", "<sip:+15551230042@gw.example.com>;tag=someone-else")
    with pytest.raises(DialogError) as err:
        d.check_request(stray)
    assert err.value.status == 481
    d.terminate()
    with pytest.raises(DialogError) as err:
        d.check_request(peer_request("BYE", 200))
    assert err.value.status == 481


@given(st.lists(st.integers(min_value=1, max_value=2**31 - 1), min_size=1, max_size=20))
def test_cseq_accepted_exactly_when_above_every_earlier_one(numbers: list[int]) -> None:
    d = uas_dialog()
    highest = 101
    for n in numbers:
        req = peer_request("INFO", n)
        if n > highest:
            d.check_request(req)
            highest = n
        else:
            with pytest.raises(DialogError):
                d.check_request(req)
        assert d.remote_cseq == highest


# -- target refresh (sections 12.2.1.2, 12.2.2) --------------------------------------------


def test_reinvite_from_peer_refreshes_target() -> None:
    d = uas_dialog()
    reinvite = peer_request("INVITE", 102, contact="<sip:+15557654321@203.0.113.81:5060>")
    d.check_request(reinvite)
    assert d.update_target(reinvite) is True
    assert d.remote_target == "sip:+15557654321@203.0.113.81:5060"
    assert d.create_request("BYE", IDS).uri_text == "sip:+15557654321@203.0.113.81:5060"
    assert d.update_target(reinvite) is False  # same Contact again


def test_non_refresh_requests_and_contactless_ones_leave_the_target() -> None:
    d = uas_dialog()
    before = d.remote_target
    info = peer_request("INFO", 102, contact="<sip:elsewhere@203.0.113.1>")
    assert d.update_target(info) is False
    assert d.update_target(peer_request("UPDATE", 103)) is False
    assert d.remote_target == before


def test_2xx_to_our_update_refreshes_target_but_not_a_1xx() -> None:
    d = Dialog.as_uac(request("dialog_uac_invite"), response("dialog_uac_200"))
    update = d.create_request("UPDATE", IDS)
    update.push_via(Via("UDP", "192.0.2.10", 5060, {"branch": IDS.branch()}))
    ringing = make_response(update, 183)
    ringing.add("Contact", "<sip:bob@203.0.113.50>")
    assert d.update_target(ringing) is False
    ok = make_response(update, 200)
    ok.add("Contact", "<sip:bob@[2001:db8::77]:5062;transport=tcp>")
    assert d.update_target(ok) is True
    assert d.remote_target == "sip:bob@[2001:db8::77]:5062;transport=tcp"
    ok_bye = make_response(d.create_request("BYE", IDS), 200)
    ok_bye.add("Contact", "<sip:bob@203.0.113.51>")
    assert d.update_target(ok_bye) is False


def test_update_target_ignores_other_dialogs_and_rejects_a_bad_contact() -> None:
    d = uas_dialog()
    other = peer_request("UPDATE", 102, contact="<sip:x@203.0.113.1>")
    other.set("Call-ID", "unrelated@example.net")
    assert d.update_target(other) is False
    bad = peer_request("UPDATE", 102, contact="<sip:x@[2001:db8::1>")
    with pytest.raises(SipParseError):
        d.update_target(bad)


# -- tel:, urn: and IPv6 -------------------------------------------------------------------


def test_urn_request_uri_dialog_and_tel_style_contact_kept_byte_exact() -> None:
    invite = request("dialog_sos_invite")
    d = Dialog.as_uac(invite, response("dialog_sos_200"))
    assert d.secure is False
    assert d.remote_uri.uri_text == "urn:service:sos"
    assert d.remote_target == "sip:911;phone-context=+1@psap.example.net;user=phone"
    bye = d.create_request("BYE", IDS)
    assert bye.uri_text == "sip:911;phone-context=+1@psap.example.net;user=phone"
    assert bye.get("To") == "<urn:service:sos>;tag=psap1"
    assert routes(bye) == ["<sip:esrp.example.net;lr>"]
    assert reparsed(bye).uri_text == bye.uri_text
    # the user part holds ';': the host is still found
    target = parse_uri(d.remote_target)
    assert isinstance(target, SipUri)
    assert target.user == "911;phone-context=+1"
    assert resolve_next_hop(target) == Address("udp", "psap.example.net", 5060)


def test_2xx_without_contact_keeps_the_urn_request_uri_as_target() -> None:
    invite = request("dialog_sos_invite")
    ok = response(
        "dialog_sos_200",
        ("Contact: <sip:911;phone-context=+1@psap.example.net;user=phone>\n", ""),
    )
    d = Dialog.as_uac(invite, ok)
    assert d.remote_target == "urn:service:sos"
    bye = d.create_request("BYE", IDS)
    assert bye.uri_text == "urn:service:sos"
    assert routes(bye) == ["<sip:esrp.example.net;lr>"]
    assert resolve_next_hop(d.next_hop) == Address("udp", "esrp.example.net", 5060)
    d.route_set = []
    with pytest.raises(UnroutableUri) as err:
        resolve_next_hop(d.next_hop)
    assert err.value.status == 416


def test_tel_target_behind_a_strict_router() -> None:
    d = Dialog.as_uac(request("dialog_uac_invite"), response("dialog_strict_200"))
    d.remote_target = "tel:+1-555-123-0042;phone-context=example.com"
    req = d.create_request("INFO", IDS)
    assert req.uri_text == "sip:proxy1"
    assert routes(req)[-1] == "<tel:+1-555-123-0042;phone-context=example.com>"


def test_ipv6_route_and_target() -> None:
    invite = request("dialog_uac_invite")
    ok = response(
        "dialog_uac_200_no_rr",
        ("Contact: <sip:bob@192.0.2.4>", "Contact: <sip:bob@[2001:db8::77]:5062;transport=tcp>"),
        ("CSeq: 314159 INVITE", "Record-Route: <sip:[2001:db8::1];lr>\nCSeq: 314159 INVITE"),
    )
    d = Dialog.as_uac(invite, ok)
    bye = d.create_request("BYE", IDS)
    assert bye.uri_text == "sip:bob@[2001:db8::77]:5062;transport=tcp"
    assert routes(bye) == ["<sip:[2001:db8::1];lr>"]
    assert resolve_next_hop(d.next_hop) == Address("udp", "2001:db8::1", 5060)
    assert resolve_next_hop(bye.uri) == Address("tcp", "2001:db8::77", 5062)
    assert reparsed(bye).uri_text == bye.uri_text


# -- resolve_next_hop ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "default", "expected"),
    [
        ("sip:192.0.2.1", "udp", Address("udp", "192.0.2.1", 5060)),
        ("sip:192.0.2.1:5080;transport=TCP", "udp", Address("tcp", "192.0.2.1", 5080)),
        ("sip:192.0.2.1", "tcp", Address("tcp", "192.0.2.1", 5060)),
        ("sip:192.0.2.1", "tls", Address("tls", "192.0.2.1", 5061)),
        ("sip:gw.example.com;transport=tls", "udp", Address("tls", "gw.example.com", 5061)),
        ("sips:gw.example.com", "udp", Address("tls", "gw.example.com", 5061)),
        ("sips:gw.example.com;transport=tcp", "udp", Address("tls", "gw.example.com", 5061)),
        ("sips:[2001:db8::5]:6000", "udp", Address("tls", "2001:db8::5", 6000)),
        ("sip:alice@[2001:db8::5]", "udp", Address("udp", "2001:db8::5", 5060)),
        (
            "sip:proxy.example.com;maddr=[2001:db8::9];lr",
            "udp",
            Address("udp", "2001:db8::9", 5060),
        ),
        ("sip:kamailio.example.com;lr", "udp", Address("udp", "kamailio.example.com", 5060)),
    ],
)
def test_resolve_next_hop(uri: str, default: str, expected: Address) -> None:
    assert resolve_next_hop(uri, default_transport=default) == expected
    assert resolve_next_hop(parse_uri(uri), default_transport=default) == expected


def test_resolve_next_hop_from_a_route_value() -> None:
    route = NameAddr.parse(KAMAILIO_OUT)
    assert resolve_next_hop(route) == Address("tcp", "198.51.100.1", 5060)


@pytest.mark.parametrize("uri", ["tel:+15551230042", "urn:service:sos.fire", "mailto:a@b.c"])
def test_non_sip_uris_are_unroutable(uri: str) -> None:
    with pytest.raises(UnroutableUri) as err:
        resolve_next_hop(uri)
    assert err.value.status == 416
    assert isinstance(err.value, ValueError)


# -- route construction, whatever the route set --------------------------------------------

_route_uris = st.builds(
    lambda host, lr: f"sip:{host}.example.net" + (";lr" if lr else ""),
    st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True),
    st.booleans(),
)


@given(st.lists(_route_uris, max_size=6))
def test_request_uri_and_route_always_spell_the_whole_path(route_uris: list[str]) -> None:
    d = Dialog.as_uac(request("dialog_uac_invite"), response("dialog_uac_200_no_rr"))
    d.route_set = [NameAddr.parse(f"<{u}>") for u in route_uris]
    req = d.create_request("INFO", IDS)
    route_values = [r.uri_text for r in req.routes]
    path = [*route_uris, d.remote_target]
    if route_uris and ";lr" not in route_uris[0]:
        assert [req.uri_text, *route_values] == path  # strict: the R-URI is the first hop
    else:
        assert [*route_values, req.uri_text] == path  # loose: the R-URI is the target
    assert str(d.next_hop) == path[0]
