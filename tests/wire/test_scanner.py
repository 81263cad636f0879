"""A SIP scanner finds no extension (SPEC O-6; issue 13), with sipvicious itself.

``sipvicious_svwar`` learns the answer to an extension that cannot exist, then reports every
extension whose answer differs. The gateway answers an agent's name and a stranger's name
alike (a challenge), with REGISTER and with INVITE, so svwar reports nothing. The per-source
limit is switched off here so that svwar sees every answer: the enumeration defence must
not depend on the flood defence.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from broker import Mosquitto
from harness import GatewayFactory, Sipp
from test_emergency import (  # the fixtures are used by name
    carrier,  # noqa: F401
    dialplan,
    open_site,
)

NAMES = ["alice", "bob", "carol", "dave", "100", "101", "1000", "admin", "support", "operator"]
NO_LIMIT = "overload: { per_source_rate: 0 }\n"


def _svwar() -> str:
    found = shutil.which("sipvicious_svwar", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail("sipvicious_svwar is missing: pip install sipvicious (in the test extras)")
    return found


@pytest.mark.parametrize("method", ["REGISTER", "INVITE"])
def test_svwar_finds_no_extension(
    method: str,
    sipp: Sipp,
    carrier: Sipp,
    gateway_factory: GatewayFactory,
    mosquitto: Mosquitto,
    tmp_path: Path,
) -> None:
    site = open_site(sipp, gateway_factory, mosquitto, dialplan() + NO_LIMIT, register=False)
    assert "alice" in dialplan()  # the dictionary holds a real agent's name
    words = tmp_path / "names.txt"
    words.write_text("\n".join(NAMES) + "\n")
    host, _, port = site.gw.address.rpartition(":")
    run = subprocess.run(
        [_svwar(), "-d", str(words), "-m", method, "-p", port, "-b", "127.0.0.9", host],
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = run.stdout + run.stderr
    assert "Traceback" not in output, output
    # svwar's own verdict: an unknown extension is challenged like a real one, so there is
    # nothing to tell apart; it prints a table row per extension it would have found
    assert "authentication request for an unknown extension" in output, output
    for name in NAMES:
        assert f"| {name} " not in output, output
    assert "found nothing" in output.lower(), output
