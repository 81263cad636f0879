"""Logs an operator works with (issue 11, SPEC O-3, O-6): the format follows the output
(console on a terminal, JSON otherwise, an explicit setting wins), the node on every line,
both legs' Call-IDs on a call's lines, failed digest authentication at warning with what
fail2ban needs (checked with ``fail2ban-regex`` against the shipped filter), and a budget
for the malformed-packet line."""

from __future__ import annotations

import io
import json
import re
import subprocess
from pathlib import Path
from typing import Any

from b2bua_peers import CALLER, GW1, Net, hop, outbound

from gateway.logs import LineBudget, configure_logging, get_logger
from gateway.registrar.service import log_auth_failed
from gateway.sip.address import Address
from gateway.sip.message import Request, parse_message
from testkit.processes import require_tool

FILTER = (
    Path(__file__).resolve().parents[2] / "deploy" / "fail2ban" / "filter.d" / "gateway-sip.conf"
)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def records(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines() if line.startswith("{")]


def test_auto_is_console_on_a_terminal_and_json_elsewhere_and_node_is_on_every_line() -> None:
    pipe, tty = io.StringIO(), Terminal()
    configure_logging("auto", "INFO", stream=pipe, cache_loggers=False, node="gw7")
    get_logger("t").info("hello", n=1)
    (line,) = records(pipe)
    assert line["event"] == "hello" and line["node"] == "gw7"
    configure_logging("auto", "INFO", stream=tty, cache_loggers=False, node="gw7")
    get_logger("t").info("hello", n=1)
    text = re.sub(r"\x1b\[[0-9;]*m", "", tty.getvalue())  # colours on a terminal
    assert not text.startswith("{") and "hello" in text and "node=gw7" in text
    explicit = Terminal()  # an explicit setting wins over the terminal
    configure_logging("json", "INFO", stream=explicit, cache_loggers=False)
    get_logger("t").info("hello")
    assert json.loads(explicit.getvalue())["event"] == "hello"


def test_every_line_of_a_call_carries_both_legs_call_ids() -> None:
    out = io.StringIO()
    configure_logging("json", "INFO", stream=out, cache_loggers=False)
    net = Net(outbound(hop(GW1)))
    caller, callee = net.peer(CALLER), net.peer(GW1)
    tx = caller.invite()
    (incoming,) = callee.requests("INVITE")
    callee.answer(incoming, 200)
    dialog = caller.uac_dialog(tx)
    caller.ack(tx, dialog)
    caller.request(dialog, "BYE")
    a_call_id, b_call_id = tx.request.call_id, incoming.request.call_id
    lines = {r["event"]: r for r in records(out) if r.get("call_id")}
    assert {"call_start", "b_leg_try", "call_answered", "call_hangup", "call_end"} <= set(lines)
    for event in ("b_leg_try", "call_answered", "call_hangup", "call_end"):
        assert lines[event]["a_call_id"] == a_call_id, event
        assert lines[event]["b_call_id"] == b_call_id, event
    assert lines["call_start"]["a_call_id"] == a_call_id  # before the B-leg: b is null


def _request(method: str, header: str, user: str) -> Request:
    quoted = user.replace("\\", "\\\\").replace('"', '\\"')
    message = parse_message(
        f"{method} sip:gw.example SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 203.0.113.9:5060;branch=z9hG4bK1\r\n"
        "From: <sip:alice@gw.example>;tag=1\r\nTo: <sip:alice@gw.example>\r\n"
        f"Call-ID: c1\r\nCSeq: 1 {method}\r\n"
        f'{header}: Digest username="{quoted}", realm="gw", nonce="n", uri="sip:gw",'
        ' response="00"\r\nContent-Length: 0\r\n\r\n'.encode()
    )
    assert isinstance(message, Request)
    return message


def test_the_fail2ban_filter_bans_the_source_of_failed_authentications(tmp_path: Path) -> None:
    """Real log lines through ``fail2ban-regex`` with the shipped filter: each failed
    attempt matches with its source address (IPv4 and IPv6, inside a call's context too);
    other lines, and a user name that tries to forge a source, do not."""
    out = io.StringIO()
    configure_logging("json", "INFO", stream=out, cache_loggers=False, node="gw1")
    log = get_logger("gateway.registrar")
    log.info("registered", agent="alice", contacts=1, source="udp:192.0.2.50:5060")
    for _ in range(3):
        log_auth_failed(
            _request("REGISTER", "Authorization", "alice"),
            Address("udp", "203.0.113.9", 5060),
            "authorization",
            "response does not match",
        )
    with net_call_context():
        log_auth_failed(
            _request("INVITE", "Proxy-Authorization", "bob"),
            Address("tcp", "2001:db8::7", 5070),
            "proxy-authorization",
        )
    forged = 'x", "source_ip": "198.51.100.66", "source": "'
    log_auth_failed(
        _request("REGISTER", "Authorization", forged),
        Address("udp", "192.0.2.44", 5060),
        "authorization",
    )
    lines = out.getvalue().splitlines()
    auth = [json.loads(line) for line in lines if '"auth_failed"' in line]
    assert [a["level"] for a in auth] == ["warning"] * 5
    assert [(a["source_ip"], a["user"], a["method"]) for a in auth][:4] == [
        ("203.0.113.9", "alice", "REGISTER"),
        ("203.0.113.9", "alice", "REGISTER"),
        ("203.0.113.9", "alice", "REGISTER"),
        ("2001:db8::7", "bob", "INVITE"),
    ]
    log_file = tmp_path / "gateway.log"
    log_file.write_text("\n".join(lines) + "\n")
    fail2ban = require_tool("fail2ban-regex")
    result = subprocess.run(
        [fail2ban, str(log_file), str(FILTER)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    matched = re.search(r"^Failregex: (\d+) total", result.stdout, re.M)
    assert matched is not None and matched.group(1) == "5", result.stdout
    hosts = subprocess.run(
        [fail2ban, "-o", "ip", str(log_file), str(FILTER)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    # the forged user name did not frame 198.51.100.66: its line bans its real source
    assert sorted(hosts) == sorted(["203.0.113.9"] * 3 + ["2001:db8::7", "192.0.2.44"])


def net_call_context() -> Any:
    import structlog

    return structlog.contextvars.bound_contextvars(call_id="abc", a_call_id="a@x", b_call_id=None)


def test_the_malformed_line_budget_drops_and_counts() -> None:
    budget = LineBudget(lines=3, interval_s=60.0)
    allowed = [budget.allow(t) for t in (0.0, 1.0, 2.0, 3.0, 4.0, 5.0)]
    assert allowed == [0, 0, 0, None, None, None]
    assert budget.allow(60.0) == 3  # a new window: the line says how many were not logged
    assert budget.allow(61.0) == 0


def test_a_call_with_wrong_credentials_is_logged_once_with_its_source() -> None:
    """The router path (INVITE with Proxy-Authorization that does not verify): one
    ``auth_failed`` warning; a challenge with stale=true is not a failure."""
    from gateway.b2bua.router import ContactCentreRouter
    from gateway.config.loader import load_dialplan_text
    from gateway.registrar.service import AuthRefusal

    dialplan = load_dialplan_text(
        "version: 1\nlisten: [{ transport: udp, host: 127.0.0.1 }]\n"
        "trunks: { carrier: { gateways: [{ host: 192.0.2.1 }] } }\n"
        "outbound: [{ name: all, match: '^\\d+$', trunk: carrier }]\n"
        "agents: { alice: { password: x, identity: '+15555550101' } }\n"
    )
    challenge = 'Digest realm="gw", nonce="n"'
    answers = {"fresh": challenge, "stale": challenge + ", stale=true"}
    for kind, header in answers.items():
        out = io.StringIO()
        configure_logging("json", "INFO", stream=out, cache_loggers=False)
        refusal = AuthRefusal(407, "Proxy Authentication Required", None, (("P-A", header),))
        router = ContactCentreRouter(dialplan, _always(refusal))
        request = _request("INVITE", "Proxy-Authorization", "alice")
        decision = router.route(request, "5551234", Address("udp", "203.0.113.9", 5062))
        assert getattr(decision, "status", None) == 407
        failed = [r for r in records(out) if r["event"] == "auth_failed"]
        if kind == "stale":
            assert failed == []
        else:
            (line,) = failed
            assert (line["source"], line["user"], line["method"], line["level"]) == (
                "udp:203.0.113.9:5062", "alice", "INVITE", "warning"
            )  # fmt: skip


def _always(refusal: Any) -> Any:
    """An authenticator that refuses every request with ``refusal``."""

    def authenticate(_request: Request) -> Any:
        return refusal

    return authenticate
