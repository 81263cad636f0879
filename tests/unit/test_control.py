"""The control socket (issue 11): a real Unix socket in a temporary data directory, and the
CLI's listings and errors (``--version``, ``--json``, no node, no data directory, no
database: a message and a status, never a traceback or an empty database)."""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config.loader import load_dialplan_text
from gateway.control import SOCKET_NAME, ControlError, ControlServer, ask, trunk_rows

ROWS = [{"call": "c1", "kind": "emergency", "a_call_id": "a@x", "b_call_id": None}]


async def test_the_socket_is_0600_and_answers_each_request_in_one_json_line(
    tmp_path: Path,
) -> None:
    server = ControlServer(tmp_path, {"calls": lambda: ROWS, "presence": lambda: []})
    (tmp_path / SOCKET_NAME).write_text("stale socket of a dead node")
    await server.start()
    try:
        mode = (tmp_path / SOCKET_NAME).stat().st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
        assert await asyncio.to_thread(ask, tmp_path, "calls") == ROWS
        assert await asyncio.to_thread(ask, tmp_path, "presence") == []
        with pytest.raises(ControlError, match="unknown request 'secrets'"):
            await asyncio.to_thread(ask, tmp_path, "secrets")
        reader, writer = await asyncio.open_unix_connection(str(tmp_path / SOCKET_NAME))
        writer.write(b"not json\n")
        answer = json.loads(await reader.readline())
        writer.close()
        assert answer == {"ok": False, "error": 'expected one JSON line {"request": "<name>"}'}
    finally:
        await server.close()
    assert not (tmp_path / SOCKET_NAME).exists()
    with pytest.raises(ControlError, match="no gateway running"):
        ask(tmp_path, "calls")


def test_trunks_lists_every_gateway_probed_or_not() -> None:
    dialplan = load_dialplan_text(
        "version: 1\n"
        "listen: [{ transport: udp, host: 127.0.0.1 }]\n"
        "trunks:\n"
        "  carrier: { gateways: [{ host: 192.0.2.1 }], keepalive: {} }\n"
        "  spare: { gateways: [{ host: 192.0.2.2, transport: tcp }] }\n"
    )
    probed = {
        "udp:192.0.2.1:5060": {
            "state": "down", "for_s": 12.0, "last_detail": "no answer within 5 s",
            "probes": 7, "failures": 3,
        }
    }  # fmt: skip
    rows = trunk_rows(dialplan, probed)
    assert [(r["trunk"], r["gateway"], r["state"]) for r in rows] == [
        ("carrier", "udp:192.0.2.1:5060", "down"),
        ("spare", "tcp:192.0.2.2:5060", "not probed"),
    ]
    assert rows[0]["last"] == "no answer within 5 s" and rows[0]["failures"] == 3
    assert [r["registration"] for r in rows] == [None, None]


def test_trunks_shows_a_registration_on_the_trunks_first_gateway_only() -> None:
    dialplan = load_dialplan_text(
        "version: 1\n"
        "listen: [{ transport: udp, host: 127.0.0.1 }]\n"
        "trunks:\n"
        "  carrier:\n"
        "    gateways: [{ host: 192.0.2.1 }, { host: 192.0.2.3 }]\n"
        "    register: { expires: 600, aor_user: acme }\n"
    )
    rows = trunk_rows(dialplan, {}, {"carrier": "registered, 540 s left"})
    assert [r["registration"] for r in rows] == ["registered, 540 s left", None]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith("gateway 0.")


@pytest.mark.parametrize("command", ["calls", "registrations", "presence", "trunks"])
def test_a_listing_without_a_running_node_says_so(
    command: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GATEWAY_DATA_DIR", str(tmp_path))
    assert main([command, "--json"]) == 1
    assert capsys.readouterr().err == (
        f"gateway: no gateway running with data directory {tmp_path} (no {SOCKET_NAME})\n"
    )
    monkeypatch.setenv("GATEWAY_DATA_DIR", str(tmp_path / "nowhere"))
    assert main([command]) == 1
    assert "no data directory" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["cdr", "reservations"])
def test_store_listings_in_the_wrong_directory_create_no_database(
    command: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GATEWAY_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("GATEWAY_STORE", raising=False)
    assert main([command, "--json"]) == 1
    assert "no gateway database in" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing created


def test_bad_arguments_are_a_usage_error_not_a_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as done:
        main(["calls", "--limit", "3"])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --limit 3" in err and "Traceback" not in err
