"""Outbound caller ID (issue 15 hole 3): the dialplan's number in From and PAI, privacy.

The phone's From, P-Asserted-Identity and P-Preferred-Identity are never what goes out:
the number is the router's choice (the rule's ``caller_id``), and ``Privacy: id`` hides it
(RFC 3323) except in a PAI toward a trusted trunk (RFC 3325).
"""

from __future__ import annotations

import pytest
from b2bua_peers import CALLER, GATEWAY, GW1, SDP, FixedRouter, Net, hop

from gateway.b2bua.decisions import Outbound
from gateway.b2bua.router import ContactCentreRouter
from gateway.config.loader import DialplanError, load_dialplan_text
from gateway.sip.message import Request
from gateway.sip.transaction import Address

AGENT_NUMBER = "+15555550201"
FORGED = "+19995550000"


def _call(net: Net, *extra: tuple[str, str]) -> Request:
    """The caller's INVITE (with ``extra`` headers); returns the B-leg INVITE."""
    caller = net.peer(CALLER)
    host = CALLER.host
    headers = [
        ("via", "Via", str(caller.via())),
        ("max-forwards", "Max-Forwards", "70"),
        ("from", "From", f'"Boss" <sip:{FORGED}@{host}>;tag={caller.tag}'),
        ("to", "To", f"<sip:5551234@{GATEWAY.host}>"),
        ("call-id", "Call-ID", caller.ids.call_id(host)),
        ("cseq", "CSeq", "1 INVITE"),
        ("contact", "Contact", f"<sip:alice@{host}:{CALLER.port}>"),
    ]
    request = Request("INVITE", f"sip:5551234@{GATEWAY.host}", headers)
    for name, value in extra:
        request.add(name, value)
    request.set_body(SDP, "application/sdp")
    caller.layer.send_request(request, GATEWAY, net.now)
    net.exchange()
    (b_invite,) = net.sent(GATEWAY, GW1, "INVITE")
    return b_invite


FORGERIES = (
    ("P-Asserted-Identity", f"<sip:{FORGED}@192.0.2.10>"),
    ("P-Preferred-Identity", f"<sip:{FORGED}@192.0.2.10>"),
)


def test_the_agents_number_goes_out_in_from_and_pai_and_forged_identities_do_not() -> None:
    net = Net(FixedRouter(Outbound([hop(GW1)], "alice", AGENT_NUMBER)))
    b_invite = _call(net, *FORGERIES)
    assert f"<sip:{AGENT_NUMBER}@" in (b_invite.get("From") or "")
    assert f"<sip:{AGENT_NUMBER}@" in (b_invite.get("P-Asserted-Identity") or "")
    assert FORGED not in b_invite.to_bytes().decode()
    assert "Boss" not in (b_invite.get("From") or "")
    assert b_invite.get("P-Preferred-Identity") is None


def test_no_number_is_anonymous_never_the_phones_from() -> None:
    net = Net(FixedRouter(Outbound([hop(GW1)], None, None)))
    b_invite = _call(net, *FORGERIES)
    assert "sip:anonymous@anonymous.invalid" in (b_invite.get("From") or "")
    assert b_invite.get("P-Asserted-Identity") is None
    assert FORGED not in b_invite.to_bytes().decode()


@pytest.mark.parametrize("trusted", [False, True])
def test_privacy_id_hides_the_number_and_only_a_trusted_trunk_gets_the_pai(trusted: bool) -> None:
    net = Net(FixedRouter(Outbound([hop(GW1, trusted=trusted)], "alice", AGENT_NUMBER)))
    b_invite = _call(net, ("Privacy", "id"))
    assert "sip:anonymous@anonymous.invalid" in (b_invite.get("From") or "")
    assert AGENT_NUMBER not in (b_invite.get("From") or "")
    pai = b_invite.get("P-Asserted-Identity")
    if trusted:
        assert pai is not None and AGENT_NUMBER in pai
        assert b_invite.get("Privacy") == "id"
    else:
        assert pai is None
        assert AGENT_NUMBER not in b_invite.to_bytes().decode()


DIALPLAN = """
version: 1
listen: [ { transport: udp, host: 192.0.2.1, port: 5060 } ]
trunks:
  carrier: { gateways: [ { host: 192.0.2.21, port: 5060 } ], trusted: true }
outbound:
  - { name: sales, match: '^7\\d+$', trunk: carrier, caller_id: 'queue:sales' }
  - { name: site, match: '^8\\d+$', trunk: carrier, caller_id: site }
  - { name: hidden, match: '^6\\d+$', trunk: carrier, caller_id: none }
  - { name: all, match: '.*', trunk: carrier }
sites:
  hq:
    networks: ['192.0.2.0/24']
    callback_number: '+15555550300'
    location: { country: US }
agents:
  alice: { password: a, identity: '+15555550201', queues: [sales] }
  bob: { password: b, queues: [sales] }
queues:
  sales: { identity: '+15555550400' }
"""


@pytest.mark.parametrize(
    ("dialled", "agent", "expected"),
    [
        ("5551234", "alice", "+15555550201"),
        ("5551234", "bob", None),  # no identity: anonymous
        ("75551234", "alice", "+15555550400"),
        ("85551234", "alice", "+15555550300"),
        ("65551234", "alice", None),
    ],
)
def test_the_rules_caller_id_chooses_the_number(
    dialled: str, agent: str, expected: str | None
) -> None:
    router = ContactCentreRouter(load_dialplan_text(DIALPLAN, "t.yaml"))
    decision = router.outbound(dialled, agent, Address("udp", "192.0.2.10", 5060))
    assert isinstance(decision, Outbound)
    assert decision.caller_id == expected
    assert all(h.trusted for h in decision.hops)


@pytest.mark.parametrize(
    ("caller_id", "message"),
    [
        ("queue:nope", "unknown queue 'nope'"),
        ("queue:support", "has no identity"),
        ("mine", "caller_id must be agent, site, none or queue:<name>"),
    ],
)
def test_a_bad_caller_id_is_a_config_error(caller_id: str, message: str) -> None:
    text = (
        "version: 1\n"
        "listen: [ { transport: udp, host: 192.0.2.1, port: 5060 } ]\n"
        "trunks: { carrier: { gateways: [ { host: 192.0.2.21, port: 5060 } ] } }\n"
        f"outbound: [ {{ name: all, match: '.*', trunk: carrier, caller_id: '{caller_id}' }} ]\n"
        "queues: { support: {} }\n"
    )
    with pytest.raises(DialplanError) as raised:
        load_dialplan_text(text, "t.yaml")
    assert message in str(raised.value)
    assert "outbound" in str(raised.value)
