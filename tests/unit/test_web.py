"""The web pages' logins, ACL and answers (SPEC W-1), without a browser or a broker."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
from pathlib import Path

import pytest

from gateway.config.settings import Settings
from gateway.web import broker_access, web_users
from gateway.web.pages import WebPages
from gateway.web.server import WebServer
from gateway.web.users import (
    Role,
    WebUser,
    WebUsersError,
    acl_text,
    hash_password,
    load_users,
    verify_password,
)

#: written by ``mosquitto_passwd -c -b file alice secret`` (mosquitto 2.0.11)
MOSQUITTO_HASH = (
    "$7$101$9yPKtgvhn6++Iqw+$R0odJx+nhWkz+N8kNseC+fjIMZa6eX3C2CniMyaylfr/uz9eZ5+H3vBSh+7leiBu"
    "jM7mC8+Ham8tTTVor4OSWw=="
)
USERS = (
    WebUser("alice", Role.DESKTOP, MOSQUITTO_HASH),
    WebUser("sup", Role.WALLBOARD, hash_password("board")),
)


def test_mosquitto_hashes_verify_both_ways() -> None:
    assert verify_password("secret", MOSQUITTO_HASH)
    assert not verify_password("Secret", MOSQUITTO_HASH)
    made = hash_password("pw")
    assert made.startswith("$7$101$") and verify_password("pw", made)
    assert made != hash_password("pw")  # salted
    for broken in ("", "$6$abc$def", "$7$x$a$b", "$7$101$!!$??", "$7$0$AAAA$AAAA"):
        assert not verify_password("pw", broken)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "users.yaml"
    path.write_text(text)
    return path


def test_users_file_is_validated_with_the_entry_and_field(tmp_path: Path) -> None:
    good = f'users:\n  - {{ name: alice, role: desktop, password_hash: "{MOSQUITTO_HASH}" }}\n'
    assert load_users(write(tmp_path, good), ["alice"]) == (USERS[0],)
    cases = {
        "users: []\n": "expected 'users:'",
        "users:\n  - { name: alice, role: admin, password_hash: x }\n": "users.0.role",
        "users:\n  - { name: alice, role: desktop, password_hash: pw }\n": "0.password_hash",
        f'users:\n  - {{ name: carol, role: desktop, password_hash: "{MOSQUITTO_HASH}" }}\n': (
            "not an agent of the dialplan"
        ),
        f'users:\n  - {{ name: alice, role: wallboard, password_hash: "{MOSQUITTO_HASH}" }}\n': (
            "also an agent's name"
        ),
        f'users:\n  - {{ name: gateway, role: wallboard, password_hash: "{MOSQUITTO_HASH}" }}\n': (
            "the gateway's own broker login"
        ),
        f'users:\n  - {{ name: "a/b", role: wallboard, password_hash: "{MOSQUITTO_HASH}" }}\n': (
            "users.0.name"
        ),
        good + good.removeprefix("users:\n"): "listed twice",
        "users:\n  - { name: alice, role: desktop, password_hash: x, extra: 1 }\n": "'extra'",
    }
    for text, expected in cases.items():
        with pytest.raises(WebUsersError, match=expected) as caught:
            load_users(write(tmp_path, text), ["alice"])
        assert str(tmp_path / "users.yaml") in str(caught.value)


def test_an_unusable_users_file_costs_only_the_pages(tmp_path: Path) -> None:
    settings = Settings(web_users_file=write(tmp_path, "users: nope\n"))
    assert web_users(settings, ["alice"]) is None
    assert web_users(Settings(), ["alice"]) is None  # no file: no pages


def test_acl_desktop_writes_only_its_own_commands_wallboard_only_reads() -> None:
    lines = acl_text(USERS, "/acme/gw/").splitlines()
    alice = lines[lines.index("user alice") + 1 : lines.index("user sup") - 1]
    assert sorted(alice) == [
        "topic read acme/gw/agents/alice/#",
        "topic read acme/gw/nodes/+/status",
        "topic write acme/gw/agents/alice/location/set",
        "topic write acme/gw/agents/alice/presence/set",
    ]
    assert lines[lines.index("user sup") + 1 :] == ["topic read acme/gw/#"]
    assert lines[1:3] == ["user gateway", "topic readwrite acme/gw/#"]


def test_broker_access_logs_the_gateway_in_with_a_fresh_password() -> None:
    first, second = broker_access(USERS, "p"), broker_access(USERS, "p")
    assert first.password != second.password
    gateway_line = first.password_file.splitlines()[0]
    assert gateway_line.startswith("gateway:")
    assert verify_password(first.password, gateway_line.removeprefix("gateway:"))
    assert f"alice:{MOSQUITTO_HASH}" in first.password_file.splitlines()


def pages() -> WebPages:
    return WebPages(USERS, prefix="acme/gw", mqtt_ws_url="ws://127.0.0.1:1885")


def login(body: object) -> tuple[int, dict[str, object]]:
    reply = pages().answer("POST", "/login", json.dumps(body).encode())
    return reply.status, json.loads(reply.body)


def test_login_tells_the_page_its_role_agent_and_broker() -> None:
    assert login({"user": "alice", "password": "secret"}) == (
        200,
        {
            "user": "alice",
            "role": "desktop",
            "agent": "alice",
            "prefix": "acme/gw",
            "mqtt_url": "ws://127.0.0.1:1885",
        },
    )
    status, board = login({"user": "sup", "password": "board"})
    assert (status, board["role"], board["agent"]) == (200, "wallboard", None)
    assert login({"user": "alice", "password": "board"})[0] == 401
    assert login({"user": "nobody", "password": "secret"})[0] == 401
    assert login({"user": "alice"})[0] == 400
    assert pages().answer("POST", "/login", b"{").status == 400
    assert pages().answer("GET", "/login", b"").status == 405


def test_pages_and_files_are_served_and_nothing_else() -> None:
    web = pages()
    for target, kind in [
        ("/", "text/html"),
        ("/wallboard", "text/html"),
        ("/desktop?x=1", "text/html"),
        ("/static/style.css", "text/css"),
        ("/static/mqtt.js", "text/javascript"),
    ]:
        reply = web.answer("GET", target, b"")
        assert (reply.status, reply.content_type.split(";")[0]) == (200, kind), target
        assert "connect-src 'self' ws://127.0.0.1:1885" in reply.headers["Content-Security-Policy"]
    for target in ("/static/../users.py", "/static/", "/users.py", "/static/nope.js"):
        assert web.answer("GET", target, b"").status == 404, target
    assert web.answer("DELETE", "/wallboard", b"").status == 405


async def test_the_server_answers_over_http() -> None:
    server = WebServer(pages(), "127.0.0.1", 0)
    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        body = json.dumps({"user": "sup", "password": "board"}).encode()
        writer.write(
            b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
    finally:
        await server.close()
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert b"X-Content-Type-Options: nosniff" in head
    assert json.loads(payload)["role"] == "wallboard"


def test_gateway_check_reports_the_users_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.cli import main

    example = Path(__file__).resolve().parents[2] / "dialplans" / "example.yaml"
    users = write(
        tmp_path,
        f'users:\n  - {{ name: carol, role: desktop, password_hash: "{MOSQUITTO_HASH}" }}\n',
    )
    monkeypatch.setenv("GATEWAY_WEB_USERS_FILE", str(users))
    assert main(["check", str(example)]) == 1
    assert "desktop user 'carol' is not an agent of the dialplan" in capsys.readouterr().err
    users.write_text(users.read_text().replace("carol", "alice"))
    assert main(["check", str(example)]) == 0
    assert f"{users}: OK (1 wallboard and desktop logins)" in capsys.readouterr().out


def test_embedded_mosquitto_config_with_access_control(tmp_path: Path) -> None:
    from gateway.events.embedded import EmbeddedBroker

    access = broker_access(USERS, "p")
    broker = EmbeddedBroker(0, websockets_port=0, access=access)
    broker.port = 1884
    lines = broker._mosquitto_conf(tmp_path).splitlines()
    me = pwd.getpwuid(os.geteuid()).pw_name  # no switch of user (see embedded.py)
    assert lines[:2] == [f"user {me}", "listener 1884 127.0.0.1"]
    assert lines[2:4] == [f"listener {broker.websockets_port} 127.0.0.1", "protocol websockets"]
    assert broker.websockets_port not in (None, 1884)
    assert "allow_anonymous false" in lines and "allow_anonymous true" not in lines
    assert f"password_file {tmp_path / 'passwords'}" in lines
    assert (tmp_path / "acl").read_text() == access.acl_file
    assert (tmp_path / "passwords").stat().st_mode & 0o077 == 0  # private
    assert broker.access_enforced
    plain = EmbeddedBroker(0)
    plain.port = 1884
    assert plain._mosquitto_conf(tmp_path).splitlines() == [
        f"user {me}",
        "listener 1884 127.0.0.1",
        "allow_anonymous true",
        "persistence false",
    ]
    assert plain.websockets_port is None and not plain.access_enforced


def test_web_settings_are_checked() -> None:
    assert Settings().web_addr == "127.0.0.1:8088"  # loopback by default
    with pytest.raises(ValueError, match="ws:// or wss://"):
        Settings(web_mqtt_url="http://broker:9001")
    with pytest.raises(ValueError, match="host:port"):
        Settings(web_addr="8088")
    assert Settings(web_mqtt_url=" wss://b:9001 ").web_mqtt_url == "wss://b:9001"
