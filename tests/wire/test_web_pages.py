"""The wallboard and the agent desktop in a real browser (SPEC W-1, E-8; docs/web.md).

A gateway runs with web users: its embedded Mosquitto then offers a websockets listener
and enforces the generated password file and ACL. Debian's chromium, driven by
playwright, signs in to both pages; SIPp registers alice's phone and places her 911 call
to a SIPp SBC; an MQTT recorder logged in as the wallboard user sees everything the broker
delivers. Screenshots of both pages during the call go to ``tmp_path``, or to docs/ with
``UPDATE_SCREENSHOTS=1`` (that is how docs/wallboard.png and docs/desktop.png are made).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from broker import OPEN_RECORDERS, Recorder
from harness import LOOPBACK, PROJECT_ROOT, GatewayFactory, Sipp, free_port

from gateway.web.users import hash_password

CHROMIUM = "/usr/bin/chromium"
DIDS = ("+15555550190", "+15555550191")
PASSWORDS = {"alice": "alice-web", "bob": "bob-web", "sup": "sup-web"}
ROLES = {"alice": "desktop", "bob": "desktop", "sup": "wallboard"}

DIALPLAN = """\
version: 1
node: { name: gw1 }
listen:
  - { transport: udp, host: ${listen_host}, port: ${listen_port} }
registrar: { realm: test, algorithms: [MD5] }
trunks:
  carrier-sbc:
    gateways: [ { host: 127.0.0.1, port: ${sbc_port} } ]
    trusted: true
  # nothing listens there: its keep-alives mark it down, and the wallboard says so
  carrier:
    gateways: [ { host: 127.0.0.2, port: 5999 } ]
    keepalive: { interval_s: 1, timeout_s: 0.5, down_after: 1 }
emergency:
  direct_routing:
    - { name: sbc-911, match: '^(911|933)$', trunk: carrier-sbc }
  callback: { dids: ['+15555550190', '+15555550191'], window_s: 3600 }
agents:
  alice:
    password: alice-pw
    identity: "+15555550101"
    location: { street: Main St, house_number: '100', city: Springfield, state: IL,
                postcode: '62701', country: US, floor: '2', room: '210' }
  bob:
    password: bob-pw
    identity: "+15555550102"
    location: { street: Main St, house_number: '100', city: Springfield, state: IL,
                country: US }
"""


@pytest.fixture
def browser() -> Iterator[Any]:
    """Debian's chromium under playwright (no browser is ever downloaded)."""
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium not found: install the Debian package 'chromium'", pytrace=False)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright not installed: pip install -e '.[test]'", pytrace=False)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
        )
        try:
            yield launched
        finally:
            launched.close()


def sign_in(browser: Any, web: str, page_name: str, user: str) -> Any:
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    page.goto(f"{web}/{page_name}")
    page.fill("input[name=user]", user)
    page.fill("input[name=password]", PASSWORDS[user])
    page.press("input[name=password]", "Enter")  # the keyboard, not the mouse
    page.wait_for_selector("#connection[data-live=yes]", timeout=10_000)
    return page


def retained(port: int, topic: str) -> dict[str, Any]:
    """The retained message on ``topic``, read by a fresh subscriber (the wallboard user)."""
    login = ["-u", "sup", "-P", PASSWORDS["sup"]]
    once = ["-C", "1", "-W", "5", "--retained-only"]
    out = subprocess.run(
        [_tool("mosquitto_sub"), "-h", LOOPBACK, "-p", str(port), *login, "-t", topic, *once],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert out.returncode == 0, f"no retained message on {topic}: {out.stderr}"
    payload: dict[str, Any] = json.loads(out.stdout)
    return payload


def shots_dir(tmp_path: Path) -> Path:
    return PROJECT_ROOT / "docs" if os.environ.get("UPDATE_SCREENSHOTS") == "1" else tmp_path


def test_wallboard_and_desktop_follow_a_911_call_and_the_acl_holds(
    sipp: Sipp, gateway_factory: GatewayFactory, browser: Any, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    prefix = f"test-{uuid.uuid4().hex[:10]}"
    users = tmp_path / "web-users.yaml"
    users.write_text(
        "users:\n"
        + "".join(
            f'  - {{ name: {name}, role: {ROLES[name]}, password_hash: "{hash_password(pw)}" }}\n'
            for name, pw in PASSWORDS.items()
        )
    )
    sbc = sipp.uas("uas_basic.xml", calls=1, timeout=40)
    mqtt_port, ws_port, web_port = free_port("tcp"), free_port("tcp"), free_port("tcp")
    gw = gateway_factory(
        DIALPLAN.replace("${sbc_port}", str(sbc.port)),
        env={
            "GATEWAY_MQTT_URL": "",  # the embedded broker, with access control
            "GATEWAY_MQTT_EMBEDDED_PORT": str(mqtt_port),
            "GATEWAY_MQTT_EMBEDDED_WS_PORT": str(ws_port),
            "GATEWAY_MQTT_PREFIX": prefix,
            "GATEWAY_WEB_USERS_FILE": str(users),
            "GATEWAY_WEB_ADDR": f"{LOOPBACK}:{web_port}",
        },
    )
    web = f"http://{LOOPBACK}:{web_port}"
    watcher = Recorder(mqtt_port, f"{prefix}/#", login=("sup", PASSWORDS["sup"]))
    OPEN_RECORDERS.append(watcher)
    alice_presence = f"{prefix}/agents/alice/presence"
    phone_port = free_port()
    sipp.uac(
        "agent_register.xml",
        gw.address,
        service="alice",
        local_port=phone_port,
        timeout=10,
        extra=["-au", "alice", "-ap", "alice-pw", "-key", "expires", "3600"],
    ).assert_calls(1)
    watcher.wait_for(
        lambda: [p["status"] for p in watcher.on(alice_presence)][-1:] == ["Available"],
        "alice Available",
    )

    wallboard = sign_in(browser, web, "wallboard", "sup")
    desktop = sign_in(browser, web, "desktop", "alice")
    expect(wallboard.locator("#agents tr[data-agent=alice]")).to_contain_text("Available")
    trunk_row = wallboard.locator("#trunks tr[data-trunk=carrier]")
    expect(trunk_row).to_contain_text("DOWN", timeout=10_000)  # the word, not only a colour
    expect(trunk_row).to_contain_text("udp:127.0.0.2:5999")
    expect(desktop.locator("#presence")).to_have_text("Available")

    # -- alice dials 911: the wallboard alert within a second, the desktop locked down --------
    call = sipp.start_uac(
        "uac_basic.xml", gw.address, service="911", local_port=phone_port, call_length=2
    )
    watcher.wait_for(lambda: _events(watcher, "dialled"), "the dialled event")
    dialled = _events(watcher, "dialled")[0]
    alert = wallboard.locator("#alerts article.alert[data-agent=alice]")
    expect(alert).to_be_visible(timeout=2_000)
    shown_at = int(alert.get_attribute("data-shown-at") or 0) / 1000
    published_at = datetime.fromisoformat(dialled["timestamp"].replace("Z", "+00:00"))
    lag = shown_at - published_at.timestamp()
    print(f"wallboard alert shown {lag * 1000:.0f} ms after the dialled event's timestamp")
    assert lag < 1.0
    expect(alert).to_contain_text("REAL EMERGENCY CALL")
    expect(alert).to_contain_text("911")
    expect(alert).to_contain_text(DIDS[0])
    expect(alert).to_contain_text("carrier-sbc")
    expect(alert).to_contain_text("100 Main St")
    banner = desktop.locator("#lockdown")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("End call")
    expect(desktop.locator("#controls")).to_be_hidden()  # no presence or location while locked
    wallboard.screenshot(path=str(shots_dir(tmp_path) / "wallboard.png"), full_page=True)
    desktop.screenshot(path=str(shots_dir(tmp_path) / "desktop.png"), full_page=True)

    # -- the call ends: the alert and the banner go ----------------------------------------------
    call.wait(timeout=30).assert_calls(1)
    expect(alert).to_have_count(0, timeout=10_000)
    expect(banner).to_be_hidden(timeout=10_000)
    expect(desktop.locator("#controls")).to_be_visible()

    # -- Away from the desktop reaches the retained presence topic -----------------------------
    watcher.wait_for(
        lambda: [p["status"] for p in watcher.on(alice_presence)][-1:] == ["Available"],
        "alice's presence restored after the call",
    )
    desktop.get_by_role("button", name="Away").focus()
    desktop.keyboard.press("Enter")  # keyboard use
    expect(desktop.locator("#presence")).to_have_text("Away", timeout=10_000)
    expect(desktop.get_by_role("button", name="Away")).to_have_attribute("aria-pressed", "true")
    away = retained(mqtt_port, alice_presence)
    assert (away["status"], away["reason"]) == ("Away", "desktop")

    # -- a location confirmed on the desktop goes through the location command topic --------
    form = desktop.locator("#location-form")
    for name, value in {"house_number": "12", "street": "Elm St", "city": "Springfield"}.items():
        form.locator(f"input[name={name}]").fill(value)
    form.locator("input[name=country]").fill("US")
    form.get_by_role("button", name="Confirm this location").click()
    expect(desktop.locator("#location-ack")).to_have_text("The gateway stored your location.")
    expect(desktop.locator("#location-now")).to_contain_text("12 Elm St, Springfield, US (desktop")

    # -- bob's desktop cannot set alice's presence, a wallboard cannot publish at all ----------
    alice_commands = f"{prefix}/agents/alice/presence/set"
    assert watcher.on(alice_commands) == [{"version": 1, "status": "Away"}]  # her own
    bob = sign_in(browser, web, "desktop", "bob")
    bob.evaluate(
        f"desk.client.publish('{alice_commands}', JSON.stringify({{status: 'Available'}}))"
    )
    _publish_as("sup", mqtt_port, alice_commands, '{"status": "DoNotDisturb"}')
    bob.get_by_role("button", name="Do not disturb").click()  # his own: allowed, sent last
    watcher.wait_for(lambda: watcher.on(f"{prefix}/agents/bob/presence/set"), "bob's own command")
    assert watcher.on(alice_commands) == [{"version": 1, "status": "Away"}]  # both dropped
    assert retained(mqtt_port, alice_presence)["status"] == "Away"
    expect(desktop.locator("#presence")).to_have_text("Away")


def _events(recorder: Recorder, name: str) -> list[dict[str, Any]]:
    with recorder._lock:
        return [
            m.payload
            for m in recorder.messages
            if "/emergency/" in m.topic and m.payload.get("event") == name
        ]


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: install 'mosquitto-clients'", pytrace=False)
    return found


def _publish_as(user: str, port: int, topic: str, payload: str) -> None:
    login = ["-u", user, "-P", PASSWORDS[user]]
    message = ["-t", topic, "-m", payload, "-q", "1"]
    subprocess.run(
        [_tool("mosquitto_pub"), "-h", LOOPBACK, "-p", str(port), *login, *message],
        check=True,
        timeout=10,
    )
