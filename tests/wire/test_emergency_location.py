"""Where the PSAP is sent: the best location on the emergency leg (SPEC E-10, RAY BAUM'S Act).

SIPp plays alice's phone (registered from 127.0.0.1) and the direct-offer service, which
accepts location; a Mosquitto carries the desktop's location commands and the gateway's
answers. Each test reads the PIDF-LO the service received.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import jsonschema
from broker import Mosquitto, Recorder
from harness import PROJECT_ROOT, GatewayFactory, GatewayProcess, Sipp, SippProcess, free_port
from test_emergency import (
    SCHEMA,
    Site,
    dial,
    dialplan,
    invite_to,
    open_site,
)

SCHEMAS = PROJECT_ROOT / "docs" / "schemas"
STATE_SCHEMA = SCHEMAS / "agent-location.v1.json"
ACK_SCHEMA = SCHEMAS / "location-ack.v1.json"

HOME = {
    "street": "Elm St",
    "house_number": "12",
    "city": "Shelbyville",
    "state": "IL",
    "postcode": "62565",
    "country": "US",
}


def _schema(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


def with_sites(text: str, *networks: str) -> str:
    """The emergency tests' dialplan plus one site ``hq`` on ``networks`` (Chicago)."""
    quoted = ", ".join(f"'{n}'" for n in networks)
    return text + (
        "sites:\n"
        "  hq:\n"
        f"    networks: [{quoted}]\n"
        "    location: { street: Market St, house_number: '1', city: Chicago, state: IL,"
        " country: US, floor: '7' }\n"
    )


def state(site: Site) -> list[dict[str, Any]]:
    return site.recorder.on(f"{site.prefix}/agents/alice/location")


def acks(site: Site) -> list[dict[str, Any]]:
    return site.recorder.on(f"{site.prefix}/agents/alice/location/ack")


def trying(site: Site) -> list[dict[str, Any]]:
    return [e for e in site.events() if e["event"] == "trying"]


def pidf_of(uas: SippProcess) -> str:
    invite = invite_to(uas)
    assert "application/pidf+xml" in invite and "Geolocation: <cid:" in invite
    return invite


def confirm(site: Site, payload: dict[str, Any]) -> None:
    site.recorder.publish(f"{site.prefix}/agents/alice/location/set", payload)


def start(
    gateway_factory: GatewayFactory,
    mosquitto: Mosquitto,
    text: str,
    *,
    prefix: str,
    listen: int,
    data_dir: Path,
) -> GatewayProcess:
    return gateway_factory(
        text.replace("${fallback}", "'sip:security@127.0.0.1:5999'"),
        listen_port=listen,
        env={
            "GATEWAY_MQTT_URL": mosquitto.url,
            "GATEWAY_MQTT_PREFIX": prefix,
            "GATEWAY_DATA_DIR": str(data_dir),
        },
    )


# -- (a) the desktop's location wins, and survives a restart -----------------------------------


def test_desktop_location_goes_on_the_911_and_survives_a_restart(
    sipp: Sipp, gateway_factory: GatewayFactory, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    offer_port = free_port()
    text = dialplan(offer=(f"127.0.0.1:{offer_port}",))
    prefix = f"test-{uuid.uuid4().hex[:10]}"
    listen, data_dir = free_port(), tmp_path / "shared-data"
    gw = start(gateway_factory, mosquitto, text, prefix=prefix, listen=listen, data_dir=data_dir)
    recorder = Recorder(mosquitto.port, f"{prefix}/#")
    site = Site(gw, recorder, prefix, free_port())
    try:
        sipp.uac(
            "agent_register.xml",
            gw.address,
            1,
            1,
            service="alice",
            local_port=site.port,
            timeout=10,
            extra=["-au", "alice", "-ap", "alice-pw", "-key", "expires", "3600"],
        ).assert_calls(1)
        recorder.wait_for(lambda: state(site)[-1:] != [], "alice's location state")
        assert state(site)[-1]["source"] == "static"

        # a bad command is refused with a reason, and changes nothing
        confirm(site, {"version": 1, "id": "bad", "location": {**HOME, "country": "USA"}})
        recorder.wait_for(lambda: any(a["id"] == "bad" for a in acks(site)), "the refusal")
        refusal = next(a for a in acks(site) if a["id"] == "bad")
        assert refusal["accepted"] is False and "ISO 3166" in refusal["reason"]
        jsonschema.validate(refusal, _schema(ACK_SCHEMA))

        confirm(site, {"version": 1, "id": "home", "location": HOME})
        recorder.wait_for(lambda: any(a["id"] == "home" for a in acks(site)), "the ack")
        assert next(a for a in acks(site) if a["id"] == "home")["accepted"] is True
        recorder.wait_for(lambda: state(site)[-1]["source"] == "desktop", "state: desktop")
        current = state(site)[-1]
        jsonschema.validate(current, _schema(STATE_SCHEMA))
        assert current["location"]["city"] == "Shelbyville" and current["method"] == "Manual"
        assert current["confirmed_at"] is not None and current["warning"] is None

        offer = sipp.uas("uas_basic.xml", offer_port, calls=1, timeout=30)
        dial(sipp, site, "911").assert_calls(1)
        offer.wait(timeout=20).assert_calls(1)
        invite = pidf_of(offer)
        assert "<ca:A3>Shelbyville</ca:A3>" in invite and "<ca:RD>Elm St</ca:RD>" in invite
        assert "Springfield" not in invite  # not the dialplan's address
        assert "<gp:method>Manual</gp:method>" in invite
        recorder.wait_for(lambda: trying(site) != [], "the trying event")
        assert trying(site)[-1]["location_source"] == "desktop"
        jsonschema.validate(trying(site)[-1], SCHEMA)

        # a crash right after the ack: the location was stored before it was acknowledged
        gw.kill9()
        site.gw = start(
            gateway_factory, mosquitto, text, prefix=prefix, listen=listen, data_dir=data_dir
        )
        offer = sipp.uas("uas_basic.xml", offer_port, calls=1, timeout=30)
        dial(sipp, site, "911").assert_calls(1)  # the registration survived too
        offer.wait(timeout=20).assert_calls(1)
        invite = pidf_of(offer)
        assert "<ca:A3>Shelbyville</ca:A3>" in invite and "Springfield" not in invite

        # withdrawn: the dialplan's address applies again
        confirm(site, {"version": 1, "id": "clear", "location": None})
        recorder.wait_for(lambda: any(a["id"] == "clear" for a in acks(site)), "the clear ack")
        recorder.wait_for(lambda: state(site)[-1]["source"] == "static", "state: static")
        assert state(site)[-1]["location"]["city"] == "Springfield"
    finally:
        recorder.close()


# -- (b) registered from a mapped network: the site's address ---------------------------------


def test_registered_from_a_mapped_network_the_911_carries_the_site(
    sipp: Sipp, gateway_factory: GatewayFactory, mosquitto: Mosquitto
) -> None:
    offer = sipp.uas("uas_basic.xml", calls=1, timeout=30)
    # alice's phone is 127.0.0.1; the carrier trunk (127.0.0.2) stays outside the site
    text = with_sites(dialplan(offer=(offer.address,)), "127.0.0.1/32")
    site = open_site(sipp, gateway_factory, mosquitto, text)
    site.recorder.wait_for(
        lambda: state(site)[-1:] != [] and state(site)[-1]["registered_from"] == "127.0.0.1",
        "alice's location state after REGISTER",
    )
    current = state(site)[-1]
    assert (current["source"], current["site"], current["method"]) == (
        "network_map",
        "hq",
        "Wiremap",
    )
    assert current["warning"] is None
    jsonschema.validate(current, _schema(STATE_SCHEMA))

    dial(sipp, site, "911").assert_calls(1)
    offer.wait(timeout=20).assert_calls(1)
    invite = pidf_of(offer)
    assert "<ca:A3>Chicago</ca:A3>" in invite and "<ca:FLR>7</ca:FLR>" in invite
    assert "Springfield" not in invite
    assert "<gp:method>Wiremap</gp:method>" in invite
    site.recorder.wait_for(lambda: trying(site) != [], "the trying event")
    assert trying(site)[-1]["location_source"] == "network_map"
    assert "location_unmapped_network" not in site.gw.log_text()


# -- (c) an unmapped network: the static address, and a warning --------------------------------


def test_unmapped_network_falls_back_to_static_and_warns(
    sipp: Sipp, gateway_factory: GatewayFactory, mosquitto: Mosquitto
) -> None:
    offer = sipp.uas("uas_basic.xml", calls=1, timeout=30)
    text = with_sites(dialplan(offer=(offer.address,)), "10.99.0.0/16", "127.0.0.2/32")
    site = open_site(sipp, gateway_factory, mosquitto, text)
    site.recorder.wait_for(
        lambda: state(site)[-1:] != [] and state(site)[-1]["warning"] is not None,
        "the unmapped-network warning",
    )
    current = state(site)[-1]
    assert (current["source"], current["site"]) == ("static", None)
    assert current["warning"].startswith("agent alice registered from 127.0.0.1, which no site")
    assert "Main St 100, Springfield" in current["warning"]
    assert "wrong building" in current["warning"]
    jsonschema.validate(current, _schema(STATE_SCHEMA))
    log = site.gw.log_text()
    assert "location_unmapped_network" in log and "the PSAP may be sent to the wrong" in log

    dial(sipp, site, "911").assert_calls(1)
    offer.wait(timeout=20).assert_calls(1)
    invite = pidf_of(offer)
    assert "<ca:A3>Springfield</ca:A3>" in invite and "Chicago" not in invite
    assert "<gp:method>Manual</gp:method>" in invite
    site.recorder.wait_for(lambda: trying(site) != [], "the trying event")
    assert trying(site)[-1]["location_source"] == "static"

    # the agent confirms where she is: the warning is lifted
    confirm(site, {"version": 1, "location": HOME})
    site.recorder.wait_for(lambda: state(site)[-1]["source"] == "desktop", "state: desktop")
    assert state(site)[-1]["warning"] is None
