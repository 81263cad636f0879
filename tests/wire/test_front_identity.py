"""Identity behind the cluster's Kamailio front (issue #12, SPEC E-13, RFC 3327).

A real Kamailio on ``deploy/kamailio/cluster.cfg`` fronts one gateway node whose dialplan
names it in ``node.fronts``. Every request reaches the node from the front's address; the
front writes the real source in ``X-Gateway-Source`` (after removing any a sender wrote)
and a Path on REGISTER. SIPp plays alice's phone (127.0.0.1), a stranger on 127.0.0.5 who
writes alice into From, the carrier (127.0.0.2) and the carrier's SBC:

1. alice registers through the front: her binding is her own address, and the 200 echoes
   the front's Path;
2. the stranger's 911 through the front, From alice: challenged (407), no DID, no events;
3. the stranger's 911 straight to the node, with ``X-Gateway-Source`` naming alice's
   address: challenged too (only a configured front's header counts);
4. alice's own 911 through the front is hers (identified by her registration, her DID);
5. the carrier's call to the support line, sent through the front (the carrier known by
   the address the front names), rings alice back through the front: her INVITE carries
   the front's Via and Record-Route, because the node sent it along her Path;
6. the PSAP's callback to alice's DID, through the front, rings her the same way.
"""

from __future__ import annotations

import re
from pathlib import Path

import jsonschema
from broker import Mosquitto
from harness import LOOPBACK, GatewayFactory, Sipp, free_port
from test_cluster_front import start_front
from test_emergency import (  # the fixtures are used by name
    DIDS,
    SCHEMA,
    carrier,  # noqa: F401
    dialplan,
    invite_to,
    open_site,
)
from test_emergency_identity import (  # the fixtures are used by name
    FORGER_HOST,
    forger,  # noqa: F401
    reservations,
)

SUPPORT_LINE = "+15555550100"


def fronted(text: str, front_port: int) -> str:
    """The dialplan with the front at ``127.0.0.1:front_port`` in ``node.fronts``."""
    node = "node: { name: gw1 }"
    assert node in text
    return text.replace(node, f"node: {{ name: gw1, fronts: ['{LOOPBACK}:{front_port}'] }}")


def assert_through_front(invite: str, via_front: str) -> None:
    """The front's Via on top and its Record-Route: the INVITE passed the front."""
    head = invite[: invite.index("\n\n")]
    vias = re.findall(r"^Via: SIP/2\.0/UDP ([^;\s]+)", head, re.M)
    assert vias[:1] == [via_front], head
    assert re.search(rf"^Record-Route: <sip:{re.escape(via_front)};lr", head, re.M), head


def test_identity_and_calls_through_the_front(
    sipp: Sipp,
    forger: Sipp,
    carrier: Sipp,
    gateway_factory: GatewayFactory,
    mosquitto: Mosquitto,
    tmp_path: Path,
) -> None:
    sbc = sipp.uas("uas_basic.xml", calls=1, timeout=90)
    front_port = free_port()
    site = open_site(
        sipp,
        gateway_factory,
        mosquitto,
        fronted(dialplan(sbc=(sbc.address,)), front_port),
        register=False,
    )
    front = start_front(tmp_path / "front", front_port, [site.gw.address])
    via_front = f"{LOOPBACK}:{front_port}"
    try:
        # 1. alice registers through the front
        registered = sipp.uac(
            "agent_register.xml",
            via_front,
            1,
            1,
            service="alice",
            local_port=site.port,
            timeout=15,
            extra=["-au", "alice", "-ap", "alice-pw", "-key", "expires", "3600"],
        )
        registered.assert_calls(1)
        trace = registered.files.messages.read_text()
        ok = trace[trace.index("SIP/2.0 200") :]
        assert re.search(rf"^Path: <sip:{re.escape(via_front)};lr", ok, re.M), ok[:1500]
        site.recorder.wait_for(lambda: site.presence()[-1:] == ["Available"], "alice Available")
        # her binding is her phone's address, not the front's (the front's is every phone's)
        assert f'"source": "udp:{LOOPBACK}:{site.port}"' in site.gw.log_text()

        # 2. a stranger behind the front writes alice into From: challenged, borrows nothing
        forger.uac(
            "uac_forged_from_407.xml",
            via_front,
            1,
            1,
            service="911",
            timeout=15,
            extra=["-key", "from_user", "alice"],
        ).assert_calls(1)
        # 3. the front's header, written by a phone straight to the node: worth nothing
        forger.uac(
            "uac_forged_source_407.xml",
            site.gw.address,
            1,
            1,
            service="911",
            timeout=15,
            extra=[
                "-key",
                "from_user",
                "alice",
                "-key",
                "forged_source",
                f"udp:{LOOPBACK}:{site.port}",
            ],
        ).assert_calls(1)
        assert site.events() == []  # no DID, no DND, no location sent, no mail
        assert "agent=" not in reservations(site)
        log = site.gw.log_text()
        assert log.count('"event": "emergency_call_challenged"') == 2, log[-3000:]
        assert f'"source": "udp:{FORGER_HOST}:' in log  # the stranger, as the front named it

        # 4. alice's own 911 through the front is hers
        sipp.uac(
            "uac_basic.xml",
            via_front,
            1,
            1,
            service="911",
            local_port=site.port,
            timeout=20,
            call_length=0.3,
        ).assert_calls(1)
        sbc.wait(timeout=20).assert_calls(1)
        assert f"P-Asserted-Identity: <sip:{DIDS[0]}@" in invite_to(sbc)
        site.recorder.wait_for(lambda: "ended" in site.names(), "the ended event")
        dialled = next(e for e in site.events() if e["event"] == "dialled")
        assert dialled["agent"] == "alice" and dialled["identified_by"] == "registration"
        for event in site.events():
            jsonschema.validate(event, SCHEMA)
        assert re.search(rf"^{re.escape(DIDS[0])}\s+agent=alice\s", reservations(site), re.M)
        site.recorder.wait_for(lambda: site.presence()[-1:] == ["Available"], "alice Available")

        # 5. the carrier calls the support line through the front: alice rings via her Path
        phone = sipp.uas("uas_basic.xml", site.port, calls=1, timeout=40)
        carrier.uac(
            "uac_queued.xml",
            via_front,
            1,
            1,
            service=SUPPORT_LINE,
            timeout=30,
            call_length=0.3,
        ).assert_calls(1)
        phone.wait(timeout=20).assert_calls(1)
        ringing = invite_to(phone)
        assert_through_front(ringing, via_front)

        # 6. the PSAP calls alice's DID back through the front (the carrier is trusted):
        # the callback rings her along her Path too, its priority kept (C-1, C-2)
        phone = sipp.uas("uas_basic.xml", site.port, calls=1, timeout=40)
        carrier.uac(
            "uac_psap_callback.xml", via_front, 1, 1, service=DIDS[0], timeout=30
        ).assert_calls(1)
        phone.wait(timeout=20).assert_calls(1)
        rung = invite_to(phone)
        assert_through_front(rung, via_front)
        assert "Priority: psap-callback" in rung
        site.recorder.wait_for(lambda: "callback_answered" in site.names(), "callback answered")
    finally:
        front.terminate()
        front.wait(timeout=10)
