"""Reloading the dialplan on a running node (SPEC O-1, O-7): SIGHUP and ``gateway reload``.

Theory of operation
-------------------
On SIGHUP the node re-reads its dialplan file and validates it exactly as ``gateway run``
does. A file that does not load keeps the old dialplan, and the node says why: a
``dialplan_reload_refused`` log line with every problem (``file:line: field: message``)
and the retained MQTT topic ``<prefix>/nodes/<node>/dialplan``. A file that loads is
applied in one step between two SIP events (the loop runs one callback at a time, so no
call sees half a plan): ``apply`` hands it to the router and the emergency service. Calls
in progress keep the hops they were routed with; new calls use the new plan.

What the running node built its sockets, its registrar, presence and queues from cannot
change under it: a new file that changes one of :data:`RESTART_SECTIONS` is refused with
the sections named (restart the node to apply those).

``gateway reload`` finds the node through the pid file this module writes in the data
directory (``gateway.pid``) and sends it SIGHUP after checking the file itself, so a bad
file gives a non-zero exit status at once.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from gateway.config.dialplan import Dialplan
from gateway.config.loader import DialplanError, load_dialplan
from gateway.events.ports import Publisher
from gateway.events.schema import rfc3339

__all__ = [
    "PID_FILE",
    "RESTART_SECTIONS",
    "Reloader",
    "dialplan_suffix",
    "restart_sections",
    "write_pid_file",
]

log = structlog.get_logger("gateway.reload")

#: the running node's process id, in the data directory
PID_FILE = "gateway.pid"

#: dialplan sections the running node is built from: a reload may not change them
RESTART_SECTIONS = ("version", "node", "listen", "sip", "registrar", "agents", "queues")


def dialplan_suffix(node: str) -> str:
    """``nodes/<node>/dialplan``: the outcome of the last reload (retained)."""
    return f"nodes/{node}/dialplan"


def restart_sections(old: Dialplan, new: Dialplan) -> list[str]:
    """The sections of :data:`RESTART_SECTIONS` that differ between ``old`` and ``new``."""
    return [
        name for name in RESTART_SECTIONS if getattr(old, name, None) != getattr(new, name, None)
    ]


class Reloader:
    """Re-reads the dialplan file and applies it, or keeps the old one and says why."""

    def __init__(
        self,
        path: Path,
        current: Dialplan,
        apply: Callable[[Dialplan], None],
        publisher: Publisher,
        *,
        wall_clock: Callable[[], float] = time.time,
    ):
        self.path = path
        self.current = current
        self.apply = apply
        self.publisher = publisher
        self.wall_clock = wall_clock
        self.applied = 0
        self.refused = 0

    def reload(self) -> bool:
        """One reload (the SIGHUP handler); True when the new file was applied."""
        try:
            new = load_dialplan(self.path)
        except DialplanError as exc:
            return self._refuse([str(problem) for problem in exc.problems])
        except OSError as exc:
            return self._refuse([f"{self.path}: cannot read: {exc}"])
        changed = restart_sections(self.current, new)
        if changed:
            return self._refuse([f"{self.path}: needs a restart to change: {', '.join(changed)}"])
        try:
            self.apply(new)
        except Exception as exc:  # the old plan stays in force
            log.exception("dialplan_reload_failed")
            return self._refuse([f"{self.path}: could not be applied: {exc}"])
        self.current = new
        self.applied += 1
        log.info("dialplan_reloaded", file=str(self.path))
        self._publish("applied", [])
        return True

    def _refuse(self, problems: list[str]) -> bool:
        self.refused += 1
        log.error("dialplan_reload_refused", file=str(self.path), problems=problems)
        self._publish("refused", problems)
        return False

    def _publish(self, result: str, problems: list[str]) -> None:
        payload: dict[str, Any] = {
            "version": 1,
            "node": self.current.node.name,
            "result": result,
            "file": str(self.path),
            "problems": problems,
            "timestamp": rfc3339(datetime.fromtimestamp(self.wall_clock(), UTC)),
        }
        try:
            self.publisher.publish(dialplan_suffix(self.current.node.name), payload, retain=True)
        except Exception:
            log.exception("dialplan_reload_publish_failed")


def write_pid_file(data_dir: Path) -> Path:
    """This process's id in ``data_dir/gateway.pid`` (for ``gateway reload``)."""
    path = data_dir / PID_FILE
    path.write_text(f"{os.getpid()}\n")
    return path
