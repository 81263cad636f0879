"""Kamailio for the benchmarks: the cluster front (``deploy/kamailio/cluster.cfg``) or the
plain tm relay (``deploy/kamailio/kamailio-relay.cfg.tmpl``), as a process tree.

Theory of operation
    ``start_front`` writes a dispatcher list naming the destinations (gateway nodes, or a
    SIPp uas for the "Kamailio alone" reference) and runs ``cluster.cfg`` with the same
    ``-A`` defines as ``deploy/cluster/run-local.sh``; ``start_relay`` renders the relay
    template towards one next hop. Both check the configuration with ``kamailio -c``
    first, run ``kamailio -DD -E`` in the foreground with every file in the work directory
    (so it runs as root without touching /var/run) and wait until it answers an OPTIONS
    to itself. Kamailio forks its workers from the process we start: ``cpu_ticks`` adds
    the CPU time of that process and of its children, read from /proc, so a bench can
    say how much of the machine the proxy used. Failures raise ``HarnessError`` with the
    log's tail (the wire tests have their pytest flavour in tests/wire/kamailio.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from testkit.processes import (
    LOOPBACK,
    PROJECT_ROOT,
    Child,
    HarnessError,
    cpu_ticks,
    require_tool,
    sip_options,
)

__all__ = ["CLUSTER_CONFIG", "RELAY_TEMPLATE", "Kamailio", "start_front", "start_relay"]

CLUSTER_CONFIG = PROJECT_ROOT / "deploy" / "kamailio" / "cluster.cfg"
RELAY_TEMPLATE = PROJECT_ROOT / "deploy" / "kamailio" / "kamailio-relay.cfg.tmpl"


def child_pids(parent: int) -> list[int]:
    """The processes whose parent is ``parent`` (a scan of /proc)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stat:
                text = stat.read().decode(errors="replace")
        except OSError:
            continue
        # the fields after the command name, which may hold spaces and parentheses
        fields = text[text.rfind(")") + 2 :].split()
        if len(fields) > 1 and fields[1] == str(parent):
            found.append(int(entry.name))
    return found


@dataclass
class Kamailio:
    """A running Kamailio: the main process (a ``Child``) and the workers it forked."""

    child: Child
    port: int
    workdir: Path
    log_path: Path
    config: Path

    @property
    def address(self) -> str:
        """``host:port`` of its UDP listener, as a SIPp target."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def running(self) -> bool:
        """True while the main process runs."""
        return self.child.running

    def cpu_ticks(self) -> int | None:
        """User + system clock ticks of the main process and its workers so far."""
        total = cpu_ticks(self.child.pid)
        if total is None:
            return None
        for pid in child_pids(self.child.pid):
            total += cpu_ticks(pid) or 0
        return total

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines Kamailio logged."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> int:
        """SIGTERM (the main process stops its workers), then SIGKILL."""
        return self.child.stop(soft=signal.SIGTERM, grace=5.0)


def _run(
    workdir: Path,
    port: int,
    config: Path,
    defines: Sequence[str],
    *,
    shm_mb: int,
    ready_timeout: float,
) -> Kamailio:
    binary = require_tool("kamailio")
    workdir.mkdir(parents=True, exist_ok=True)
    check = subprocess.run(
        [binary, "-c", "-f", str(config), *defines],
        cwd=workdir, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    if check.returncode != 0:
        raise HarnessError(f"kamailio -c refused {config}:\n{check.stdout}{check.stderr}")
    log_path = workdir / "kamailio.log"
    command = [
        binary, "-DD", "-E", "-f", str(config), *defines,
        "-w", str(workdir), "-Y", str(workdir), "-P", str(workdir / "kamailio.pid"),
        "-m", str(shm_mb), "-M", "8",
    ]  # fmt: skip
    kamailio = Kamailio(Child(command, workdir, log_path), port, workdir, log_path, config)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        answer = sip_options(LOOPBACK, port, timeout=0.2)
        if answer is not None and answer.startswith("SIP/2.0 200"):
            return kamailio
        if not kamailio.running:
            break
        time.sleep(0.05)
    kamailio.stop()
    raise HarnessError(
        f"kamailio ({config.name}) did not answer OPTIONS on udp {LOOPBACK}:{port}:\n"
        + kamailio.log_tail()
    )


def start_front(
    workdir: Path,
    port: int,
    destinations: Sequence[str],
    *,
    probe: bool = True,
    shm_mb: int = 256,
    ready_timeout: float = 10.0,
    settings: Mapping[str, str] | None = None,
) -> Kamailio:
    """``cluster.cfg`` on udp/tcp 127.0.0.1:``port`` before ``destinations`` (``host:port``,
    dispatcher set 1). ``probe=False`` turns the OPTIONS probes off (DS_PING_INTERVAL=0),
    for destinations that do not answer them (a SIPp uas). ``settings``: more of its
    defines (``-A NAME=VALUE``), e.g. ``TRUSTED_NETS``, ``PIKE_DENSITY``."""
    dispatcher = workdir / "dispatcher.list"
    workdir.mkdir(parents=True, exist_ok=True)
    dispatcher.write_text(
        "# setid destination flags priority attrs\n"
        + "".join(f"1 sip:{destination} 0 0\n" for destination in destinations)
    )
    defines = ["-A", f"FRONT_PORT={port}", "-A", f'DISPATCHER_LIST="{dispatcher}"']
    if not probe:
        defines += ["-A", "DS_PING_INTERVAL=0"]
    for name, value in (settings or {}).items():
        defines += ["-A", f"{name}={value}"]
    return _run(workdir, port, CLUSTER_CONFIG, defines, shm_mb=shm_mb, ready_timeout=ready_timeout)


def start_relay(
    workdir: Path, port: int, next_hop: str, *, shm_mb: int = 256, ready_timeout: float = 10.0
) -> Kamailio:
    """The tm relay of ``kamailio-relay.cfg.tmpl`` on udp 127.0.0.1:``port``: initial
    requests record-routed and relayed statefully to ``next_hop`` (``host:port``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "kamailio-relay.cfg"
    config.write_text(
        RELAY_TEMPLATE.read_text().format(listen_host=LOOPBACK, listen_port=port, next_hop=next_hop)
    )
    return _run(workdir, port, config, [], shm_mb=shm_mb, ready_timeout=ready_timeout)
