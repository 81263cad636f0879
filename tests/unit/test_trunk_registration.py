"""Outbound REGISTER to a registration-based trunk (issue 13), on a hand-moved clock.

The registrar is a fake peer with its own transaction layer (``b2bua_peers``); the
registration runs on the gateway's call-layer timer heap.
"""

from __future__ import annotations

import dataclasses
import itertools
import random

from b2bua_peers import ANSWER, CALLER, GATEWAY, GW1, GW2, Net, Peer, hop, outbound

from gateway.b2bua.registration import (
    RegistrationPlan,
    RegistrationState,
    TrunkRegistration,
    TrunkRegistrations,
)
from gateway.config.trunk_auth import TrunkCredentials, TrunkRegister
from gateway.registrar.digest import parse_authorization
from gateway.sip.message import make_response
from gateway.sip.transaction import Address, RequestReceived

CHALLENGE = 'Digest realm="carrier", nonce="n1", algorithm=SHA-256, qop="auth"'


def _plan(expires: int = 600, trunk: str = "carrier") -> RegistrationPlan:
    return RegistrationPlan(
        trunk=trunk,
        registrar=GW1,
        aor_user="acme",
        domain="carrier.test",
        settings=TrunkRegister(expires=expires, retry_min_s=2, retry_max_s=10),
        credentials=TrunkCredentials("acme", "pw", None),
    )


def _registration(net: Net, expires: int = 600) -> TrunkRegistration:
    plan = _plan(expires)
    registration = TrunkRegistration(net.b2bua.core, plan, random.Random(7))
    net.b2bua.core.now = net.now
    registration.start(net.now)
    net.exchange()
    return registration


def _answer(peer: Peer, ev: RequestReceived, status: int, *extra: tuple[str, str]) -> None:
    response = make_response(ev.request, status, to_tag="reg", extra=extra)
    peer.layer.send_response(ev.transaction, response, peer.net.now)
    peer.net.exchange()


def test_challenged_register_is_answered_then_refreshed_before_expiry() -> None:
    net = Net(outbound(hop(GW1)))
    registrar = net.peer(GW1)
    registration = _registration(net)
    (first,) = registrar.requests("REGISTER")
    assert first.request.uri_text == "sip:carrier.test:5060"
    assert first.request.get("Expires") == "600"
    _answer(registrar, first, 401, ("WWW-Authenticate", CHALLENGE))
    second = registrar.requests("REGISTER")[1].request
    assert second.call_id == first.request.call_id
    assert second.cseq.number == first.request.cseq.number + 1
    assert parse_authorization(second.get("Authorization") or "")["username"] == "acme"
    contact = f"{first.request.get('Contact')};expires=120"
    _answer(registrar, registrar.requests("REGISTER")[1], 200, ("Contact", contact))
    assert registration.state is RegistrationState.REGISTERED
    assert registration.granted == 120 and registration.registered(net.now)
    net.advance(95.0)
    assert len(registrar.requests("REGISTER")) == 2
    net.advance(2.0)  # 0.8 of 120 s: the refresh, same Call-ID, next CSeq
    refresh = registrar.requests("REGISTER")[2].request
    assert refresh.call_id == first.request.call_id and refresh.cseq.number == 3
    assert registration.state is RegistrationState.REGISTERED


def test_a_stopping_node_removes_its_binding_and_sends_nothing_more() -> None:
    net = Net(outbound(hop(GW1)))
    registrar = net.peer(GW1)
    registration = _registration(net)
    first = registrar.requests("REGISTER")[0]
    _answer(registrar, first, 200, ("Contact", f"{first.request.get('Contact')};expires=600"))
    assert registration.registered(net.now)
    assert registration.unregister(net.now) and registration.pending
    net.exchange()
    leave = registrar.requests("REGISTER")[1]
    assert leave.request.get("Expires") == "0"  # RFC 3261 section 10.2.2
    assert leave.request.get("Contact") == first.request.get("Contact")
    assert leave.request.call_id == first.request.call_id and leave.request.cseq.number == 2
    _answer(registrar, leave, 401, ("WWW-Authenticate", CHALLENGE))  # credentials, as ever
    again = registrar.requests("REGISTER")[2]
    assert again.request.get("Expires") == "0" and again.request.get("Authorization")
    _answer(registrar, again, 200)
    assert registration.state is RegistrationState.UNREGISTERED
    assert not registration.pending and not registration.registered(net.now)
    net.advance(700.0)  # no refresh, no retry
    assert len(registrar.requests("REGISTER")) == 3


def test_nothing_to_remove_sends_nothing_and_a_refused_removal_is_not_retried() -> None:
    net = Net(outbound(hop(GW1)))
    registrar = net.peer(GW1)
    registration = _registration(net)
    _answer(registrar, registrar.requests("REGISTER")[0], 403)
    assert not registration.unregister(net.now)  # refused, none in flight: nothing sent
    net.advance(60.0)
    assert len(registrar.requests("REGISTER")) == 1
    registration = _registration(net)
    ev = registrar.requests("REGISTER")[-1]
    _answer(registrar, ev, 200, ("Contact", f"{ev.request.get('Contact')};expires=600"))
    assert registration.unregister(net.now)
    net.exchange()
    _answer(registrar, registrar.requests("REGISTER")[-1], 500)
    assert not registration.pending
    count = len(registrar.requests("REGISTER"))
    net.advance(120.0)
    assert len(registrar.requests("REGISTER")) == count


def test_a_register_still_in_flight_is_overtaken_by_the_removal() -> None:
    """The node stops (or a reload drops the trunk) while the first REGISTER waits for its
    answer: the registrar may still grant it, so Expires: 0 follows at once with a higher
    CSeq; the late 200 of the first is ignored and cannot undo the removal."""
    net = Net(outbound(hop(GW1)))
    registrar = net.peer(GW1)
    registration = _registration(net)
    first = registrar.requests("REGISTER")[0]
    assert registration.unregister(net.now)
    net.exchange()
    leave = registrar.requests("REGISTER")[1]
    assert leave.request.get("Expires") == "0"
    assert leave.request.call_id == first.request.call_id and leave.request.cseq.number == 2
    _answer(registrar, first, 200, ("Contact", f"{first.request.get('Contact')};expires=600"))
    assert registration.pending and not registration.registered(net.now)
    _answer(registrar, leave, 200)
    assert registration.state is RegistrationState.UNREGISTERED and not registration.pending
    net.advance(700.0)
    assert len(registrar.requests("REGISTER")) == 2


def test_failures_back_off_doubling_up_to_the_maximum() -> None:
    net = Net(outbound(hop(GW1)))
    registrar = net.peer(GW1)
    registration = _registration(net)
    times = []
    for _ in range(5):
        ev = registrar.requests("REGISTER")[-1]
        times.append(net.now)
        _answer(registrar, ev, 503)
        assert registration.state is RegistrationState.FAILED
        before = len(registrar.requests("REGISTER"))
        while len(registrar.requests("REGISTER")) == before:
            net.advance(0.1)
    gaps = [round(b - a, 1) for a, b in itertools.pairwise(times)]
    for gap, ceiling in zip(gaps, (2, 4, 8, 10), strict=True):
        assert 0.8 * ceiling - 0.2 <= gap <= ceiling + 0.2, gaps


def test_the_operator_reads_the_state_time_left_and_last_error() -> None:
    """``gateway trunks``: registered with the time left; failed with why and the retry."""
    net = Net(outbound(hop(GW1)))
    registrar = net.peer(GW1)
    registration = _registration(net)
    assert registration.describe(net.now) == "registering"
    _answer(registrar, registrar.requests("REGISTER")[0], 403)
    assert registration.describe(net.now) == "failed (403 Forbidden), retry in 2 s"
    while len(registrar.requests("REGISTER")) == 1:
        net.advance(0.1)
    ev = registrar.requests("REGISTER")[1]
    _answer(registrar, ev, 200, ("Contact", f"{ev.request.get('Contact')};expires=600"))
    net.advance(60.0)
    assert registration.describe(net.now) == "registered, 540 s left"


def test_a_silent_registrar_is_left_for_the_next_dns_target_and_the_binding_stays_there() -> None:
    """RFC 3263: the gateway is a name with two targets (SRV); the first never answers, so
    the retry goes to the second, which grants; refreshes and the removal stay with it."""
    net = Net(outbound(hop(GW1)))
    net.drop = lambda s, d, m: d == GW1
    written = Address("udp", "registrar.carrier.test", 5060)
    plan = dataclasses.replace(_plan(), written=written)
    registration = TrunkRegistration(
        net.b2bua.core, plan, random.Random(7), lambda a: [GW1, GW2] if a == written else [a]
    )
    net.b2bua.core.now = net.now
    registration.start(net.now)
    net.exchange()
    second = net.peer(GW2)
    while not second.requests("REGISTER"):
        net.advance(0.5)  # Timer F (32 s), then the backoff
    assert registration.state is RegistrationState.REGISTERING
    ev = second.requests("REGISTER")[0]
    assert ev.request.call_id == registration.call_id  # one registration, another server
    _answer(second, ev, 200, ("Contact", f"{ev.request.get('Contact')};expires=120"))
    assert registration.registered(net.now) and registration.registrar == GW2
    net.advance(100.0)  # the refresh goes where the binding is
    assert len(second.requests("REGISTER")) == 2
    _answer(second, second.requests("REGISTER")[1], 503)  # a failed refresh: still granted
    assert registration.registrar == GW2
    assert registration.unregister(net.now)
    net.exchange()
    assert second.requests("REGISTER")[-1].request.get("Expires") == "0"


def test_a_second_challenge_is_a_failure_not_a_loop() -> None:
    net = Net(outbound(hop(GW1)))
    registrar = net.peer(GW1)
    registration = _registration(net)
    _answer(registrar, registrar.requests("REGISTER")[0], 401, ("WWW-Authenticate", CHALLENGE))
    _answer(registrar, registrar.requests("REGISTER")[1], 401, ("WWW-Authenticate", CHALLENGE))
    assert registration.state is RegistrationState.FAILED
    assert len(registrar.requests("REGISTER")) == 2


def test_423_asks_again_for_min_expires() -> None:
    net = Net(outbound(hop(GW1)))
    registrar = net.peer(GW1)
    _registration(net, expires=60)
    _answer(registrar, registrar.requests("REGISTER")[0], 423, ("Min-Expires", "900"))
    assert registrar.requests("REGISTER")[1].request.get("Expires") == "900"


def test_a_silent_registrar_fails_after_timer_f_and_is_retried() -> None:
    net = Net(outbound(hop(GW1)))
    net.drop = lambda s, d, m: s == GW1
    registration = _registration(net)
    net.advance(31.0)
    assert registration.state.value == "registering"
    net.advance(2.0)  # Timer F, 64*T1 = 32 s
    assert registration.state.value == "failed"


def test_a_call_is_not_delayed_by_a_failed_registration() -> None:
    """The trunk is tried at once (then the next path, as ever) while REGISTER fails."""
    net = Net(outbound(hop(GW1)))
    registrar = net.peer(GW1)
    registration = _registration(net)
    _answer(registrar, registrar.requests("REGISTER")[0], 403)
    assert registration.state is RegistrationState.FAILED
    caller = net.peer(CALLER)
    caller.invite()
    (invite,) = registrar.requests("INVITE")
    registrar.answer(invite, 200, ANSWER)
    assert caller.statuses() == [100, 200]
    assert net.sent(GATEWAY, GW1, "INVITE")[0].uri_text.startswith("sip:15551230000@")


# -- a reloaded dialplan (SPEC O-1) ---------------------------------------------------------


def _registered(net: Net, plans: list[RegistrationPlan]) -> TrunkRegistrations:
    """Every plan registered for 600 s (each registrar answers 200 at once)."""
    registrations = TrunkRegistrations(net.b2bua.core, plans, random.Random(7))
    net.b2bua.core.now = net.now
    registrations.start(net.now)
    net.exchange()
    for address in {plan.registrar for plan in plans}:
        for ev in net.peer(address).requests("REGISTER"):
            _answer(
                net.peer(address), ev, 200, ("Contact", f"{ev.request.get('Contact')};expires=600")
            )
    assert all(registrations.registered(net.now).values())
    return registrations


def test_a_reload_with_the_same_plans_sends_nothing() -> None:
    net = Net(outbound(hop(GW1)))
    registrations = _registered(net, [_plan()])
    assert registrations.use_plans([_plan()], net.now) == []
    net.exchange()
    assert len(net.peer(GW1).requests("REGISTER")) == 1


def test_new_credentials_re_register_the_same_binding_at_once() -> None:
    """Same registrar and AOR, a rotated password and another expiry: REGISTER now on the
    same Call-ID (the registrar updates the binding), answered with the new password."""
    net = Net(outbound(hop(GW1)))
    registrar = net.peer(GW1)
    registrations = _registered(net, [_plan()])
    first = registrar.requests("REGISTER")[0].request
    rotated = dataclasses.replace(
        _plan(expires=300), credentials=TrunkCredentials("acme", "new-pw", None)
    )
    assert registrations.use_plans([rotated], net.now) == ["carrier"]
    net.exchange()
    again = registrar.requests("REGISTER")[1]
    assert again.request.call_id == first.call_id and again.request.cseq.number == 2
    assert again.request.get("Expires") == "300"
    _answer(registrar, again, 401, ("WWW-Authenticate", CHALLENGE))
    answered = registrar.requests("REGISTER")[2].request
    digest = parse_authorization(answered.get("Authorization") or "")
    assert digest["username"] == "acme" and answered.get("Expires") == "300"
    assert registrations.by_trunk["carrier"].plan.credentials == rotated.credentials


def test_a_moved_registrar_gets_the_old_binding_removed_and_the_new_one_made() -> None:
    net = Net(outbound(hop(GW1)))
    old, new = net.peer(GW1), net.peer(GW2)
    registrations = _registered(net, [_plan()])
    moved = dataclasses.replace(_plan(), registrar=GW2)
    assert registrations.use_plans([moved], net.now) == ["carrier"]
    net.exchange()
    leave = old.requests("REGISTER")[1].request
    assert leave.get("Expires") == "0"
    assert leave.call_id == old.requests("REGISTER")[0].request.call_id
    (fresh,) = new.requests("REGISTER")
    assert fresh.request.get("Expires") == "600" and fresh.request.call_id != leave.call_id
    assert registrations.pending  # the un-REGISTER waits for its answer (a stop waits too)
    _answer(old, old.requests("REGISTER")[1], 200)
    _answer(new, fresh, 200, ("Contact", f"{fresh.request.get('Contact')};expires=600"))
    assert not registrations.pending
    assert registrations.registered(net.now) == {"carrier": True}
    net.advance(700.0)  # the removed binding is neither refreshed nor retried
    assert len(old.requests("REGISTER")) == 2


def test_a_removed_trunk_is_un_registered_and_an_added_one_registers() -> None:
    net = Net(outbound(hop(GW1)))
    registrar = net.peer(GW1)
    registrations = _registered(net, [_plan()])
    added = dataclasses.replace(_plan(trunk="backup"), aor_user="acme-backup")
    assert registrations.use_plans([added], net.now) == ["carrier", "backup"]
    net.exchange()
    leave, fresh = registrar.requests("REGISTER")[1:]
    assert leave.request.get("Expires") == "0" and "acme@" in str(leave.request.get("To"))
    assert fresh.request.get("Expires") == "600" and "acme-backup@" in str(fresh.request.get("To"))
    assert set(registrations.registered(net.now)) == {"backup"}
    registrations.stop()  # the node stops before the answers: nothing more is sent
    net.advance(700.0)
    assert len(registrar.requests("REGISTER")) == 3
