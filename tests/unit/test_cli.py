"""``gateway check``: validation errors and the emergency prerequisites report (SPEC E-11)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main

EXAMPLE = Path(__file__).resolve().parents[2] / "dialplans" / "example.yaml"


def test_check_example_is_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert "OK (2 listeners, 2 trunks" in out


def test_check_reports_agents_that_cannot_place_emergency_calls(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GATEWAY_SMTP_HOST", raising=False)
    path = tmp_path / "d.yaml"
    path.write_text(
        "version: 1\n"
        "listen: [ { transport: udp, host: 127.0.0.1, port: 5060 } ]\n"
        "agents:\n"
        "  zoe: { password: z }\n"
        "  gus: { password: g, identity: '+442071234567', location: { country: FR } }\n"
    )
    assert main(["check", str(path)]) == 0  # warnings: such calls still go out (E-3)
    out = capsys.readouterr().out
    assert "agent 'zoe' has no outbound identity" in out
    assert "agent 'zoe' has no location" in out
    assert "agent 'gus' is in FR, a country without emergency dial strings" in out
    assert "urn:service:sos have no path" in out


def test_check_refuses_a_bad_file_with_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("version: 1\nlisten: [ { transport: sctp, host: 127.0.0.1 } ]\n")
    assert main(["check", str(path)]) == 1
    assert f"{path}:2: listen[0].transport" in capsys.readouterr().err


def test_check_warns_about_rules_that_meet_emergency_strings_and_exits_0(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # the example's `digits` and `catch-all` rules match 911 as dialled; `nanp` (10 digits)
    # cannot; `outside-line-service` makes 911 of 9911 (on purpose, an outside-line prefix).
    # Warnings only: the file runs, and detection comes first (SPEC E-1).
    assert main(["check", str(EXAMPLE)]) == 0
    warnings = [line for line in capsys.readouterr().out.splitlines() if ": warning: " in line]
    assert [line.split(": warning: ")[1].split(" ")[2] for line in warnings] == [
        "'outside-line-service'",
        "'digits'",
        "'catch-all'",
    ]
    lines = EXAMPLE.read_text().splitlines()
    for warning in warnings:
        line = int(warning.removeprefix(f"{EXAMPLE}:").split(":")[0])
        assert lines[line - 1].strip().startswith("- name: ")
    assert "9911 -> 911" in warnings[0]
    assert "911 (CA, PR, US)" in warnings[1]


def test_check_warns_that_9_911_becomes_an_emergency_call(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "d.yaml"
    path.write_text(
        "version: 1\n"
        "listen: [ { transport: udp, host: 127.0.0.1, port: 5060 } ]\n"
        "trunks:\n"
        "  carrier: { gateways: [ { host: 127.0.0.1, port: 5080 } ] }\n"
        "outbound:\n"
        "  - { name: outside-line, match: '^9(\\d{3,})$', rewrite: '\\1', trunk: carrier }\n"
    )
    assert main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    assert (
        f"{path}:6: warning: outbound rule 'outside-line' rewrites dialled strings into "
        "emergency dial strings: "
    ) in out
    assert "9911 -> 911" in out and "treated as emergency calls of the agent's country" in out


def test_a_closed_pipe_ends_quietly() -> None:
    """``gateway check ... | head``: the reader leaves before the gateway writes (its end of
    the pipe is closed before the child has even imported); no BrokenPipe traceback."""
    import subprocess
    import sys

    child = subprocess.Popen(
        [sys.executable, "-m", "gateway", "check", "dialplans/example.yaml"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert child.stdout is not None and child.stderr is not None
    child.stdout.close()
    stderr = child.stderr.read()
    assert child.wait(timeout=60) == 0, stderr
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr
