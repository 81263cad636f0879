"""The MQTT contract end to end (SPEC M-1, E-8, R-4): a real gateway, Mosquitto and SIPp.

The lock-down topic (``<prefix>/agents/<agent>/lockdown``) goes active when the agent's
emergency call starts and inactive when it ends, retained; presence reasons are the
documented kinds and a desktop's own words come back as ``note``. Site helpers come from
``test_emergency`` (alice registered on a gateway publishing to a Mosquitto started here).
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
from broker import OPEN_RECORDERS, Mosquitto, Recorder
from harness import PROJECT_ROOT, GatewayFactory, Sipp
from test_emergency import dial, dialplan, open_site

SCHEMAS = PROJECT_ROOT / "docs" / "schemas"
LOCKDOWN = json.loads((SCHEMAS / "lockdown.v1.json").read_text())
PRESENCE = json.loads((SCHEMAS / "presence.v1.json").read_text())


def test_lockdown_goes_active_on_911_and_inactive_after_it_with_the_desktop_note_kept(
    sipp: Sipp, gateway_factory: GatewayFactory, mosquitto: Mosquitto
) -> None:
    sbc = sipp.uas("uas_basic.xml", calls=1, timeout=30)
    site = open_site(sipp, gateway_factory, mosquitto, dialplan(sbc=(sbc.address,)))
    recorder, prefix = site.recorder, site.prefix
    lockdown_topic = f"{prefix}/agents/alice/lockdown"
    presence_topic = f"{prefix}/agents/alice/presence"

    def lockdowns() -> list[dict[str, Any]]:
        return recorder.on(lockdown_topic)

    # start-up: no emergency call, so alice's phone is not locked down (retained)
    recorder.wait_for(lambda: bool(lockdowns()), "the start-up lock-down state")
    assert lockdowns()[0] == {**lockdowns()[0], "active": False, "call": None}

    # the desktop sets Away with its own words: reason "desktop", the words as note
    recorder.publish(f"{presence_topic}/set", {"version": 1, "status": "Away", "reason": "lunch"})
    recorder.wait_for(lambda: site.presence()[-1:] == ["Away"], "alice Away")
    away = recorder.on(presence_topic)[-1]
    jsonschema.validate(away, PRESENCE)
    assert (away["reason"], away["note"]) == ("desktop", "lunch")

    dial(sipp, site, "911", call_length=0.5).assert_calls(1)
    sbc.wait(timeout=20).assert_calls(1)
    recorder.wait_for(lambda: len(lockdowns()) >= 3, "the lock-down to be lifted")
    with recorder._lock:
        order = [
            ("lockdown", m.payload["active"]) if m.topic == lockdown_topic else m.payload["event"]
            for m in recorder.messages
            if m.topic == lockdown_topic or "/emergency/" in m.topic
        ]
    # active before the call is answered, lifted after it, once each (E-8)
    lifted_at = len(order) - 1 - order[::-1].index(("lockdown", False))
    assert order.count(("lockdown", True)) == 1
    assert order.index(("lockdown", True)) < order.index("answered")
    assert order.index("answered") < lifted_at < order.index("ended")
    _startup, active, lifted = lockdowns()
    for payload in (active, lifted):
        jsonschema.validate(payload, LOCKDOWN)
    call = site.events()[0]["call"]
    assert active["active"] is True and active["call"] == call
    assert (active["reason"], active["allowed_actions"], active["test"]) == (
        "emergency_call",
        ["end_call"],
        False,
    )
    assert lifted == {**lifted, "active": False, "call": call}
    assert "allowed_actions" not in lifted

    # presence reasons are the documented kinds; the status chosen before comes back (E-5)
    recorder.wait_for(lambda: site.presence()[-1] == "Away", "presence restored")
    reasons = [p["reason"] for p in recorder.on(presence_topic)]
    assert reasons[-3:] == ["desktop", "emergency_call", "emergency_ended"]

    # a desktop connecting now gets the retained, lifted lock-down at once
    late = Recorder(mosquitto.port, lockdown_topic)
    OPEN_RECORDERS.append(late)
    late.wait_for(lambda: bool(late.messages), "the retained lock-down")
    assert late.messages[0].retain and late.messages[0].payload == lifted
