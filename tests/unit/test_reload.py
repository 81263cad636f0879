"""Dialplan reload (SPEC O-1): a bad file keeps the old plan and says why; a good one applies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema

from gateway.config.dialplan import Dialplan
from gateway.config.loader import load_dialplan_text
from gateway.reload import Reloader, restart_sections

SCHEMA = json.loads(
    (Path(__file__).parents[2] / "docs" / "schemas" / "node-dialplan.v1.json").read_text()
)
BASE = """version: 1
node: { name: gw1 }
listen: [ { transport: udp, host: 127.0.0.1, port: 5060 } ]
trunks:
  carrier: { gateways: [ { host: 192.0.2.21, port: 5060 } ] }
outbound:
  - { name: all, match: '^\\d+$', trunk: carrier }
"""


class Published:
    def __init__(self) -> None:
        self.messages: list[tuple[str, dict[str, Any], bool]] = []

    def publish(self, topic_suffix: str, payload: dict[str, Any], *, retain: bool) -> None:
        self.messages.append((topic_suffix, payload, retain))


def _reloader(tmp_path: Path, text: str) -> tuple[Reloader, list[Dialplan], Published]:
    path = tmp_path / "dialplan.yaml"
    path.write_text(text)
    applied: list[Dialplan] = []
    published = Published()
    current = load_dialplan_text(BASE, str(path))
    return (
        Reloader(path, current, applied.append, published, wall_clock=lambda: 0.0),
        applied,
        published,
    )


def test_a_good_file_is_applied_and_published(tmp_path: Path) -> None:
    reloader, applied, published = _reloader(tmp_path, BASE.replace("192.0.2.21", "192.0.2.22"))
    assert reloader.reload()
    assert applied[0].trunks["carrier"].gateways[0].host == "192.0.2.22"
    ((topic, payload, retain),) = published.messages
    assert (topic, payload["result"], retain) == ("nodes/gw1/dialplan", "applied", True)
    jsonschema.validate(payload, SCHEMA)


def test_a_bad_file_keeps_the_old_plan_and_names_the_line(tmp_path: Path) -> None:
    reloader, applied, published = _reloader(tmp_path, BASE.replace("'^\\d+$'", "'^(\\d+'"))
    old = reloader.current
    assert not reloader.reload()
    assert applied == [] and reloader.current is old
    ((_, payload, _),) = published.messages
    assert payload["result"] == "refused"
    jsonschema.validate(payload, SCHEMA)
    assert "dialplan.yaml:" in payload["problems"][0]


def test_a_change_the_node_was_built_from_needs_a_restart(tmp_path: Path) -> None:
    reloader, applied, published = _reloader(
        tmp_path, BASE.replace("port: 5060 } ]", "port: 5070 } ]", 1)
    )
    assert not reloader.reload()
    assert applied == []
    assert "needs a restart to change: listen" in published.messages[0][1]["problems"][0]
    assert restart_sections(reloader.current, reloader.current) == []
