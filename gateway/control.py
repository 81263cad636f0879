"""The local control socket: a running node's live state for ``gateway calls`` and friends.

Theory of operation
-------------------
``gateway run`` listens on a Unix stream socket in the data directory
(:data:`SOCKET_NAME`, mode 0600: only the node's own user may ask). A client writes one
JSON line, ``{"request": "calls"}``, and reads one JSON line back, ``{"ok": true,
"items": [...]}`` or ``{"ok": false, "error": "..."}``; the server then closes. The
requests are the names of :data:`REQUESTS`: ``registrations``, ``calls``, ``presence``,
``trunks``. Each answer is built from the node's in-memory state in one loop step (no
store read, no await), so asking never delays a call. A slow or silent client is cut off
after :data:`CLIENT_TIMEOUT_S`.

The client side (:func:`ask`) is plain blocking sockets: the CLI is a short-lived process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import structlog

from gateway.config.dialplan import Dialplan
from gateway.config.keepalive import gateway_key
from gateway.emergency.routing import DIRECT_OFFER
from gateway.health.service import TrunkHealth
from gateway.presence.service import PresenceService
from gateway.registrar.service import RegistrarService

__all__ = [
    "CLIENT_TIMEOUT_S",
    "REQUESTS",
    "SOCKET_NAME",
    "ControlError",
    "ControlServer",
    "ask",
    "live_snapshots",
    "print_rows",
    "start_control",
    "trunk_rows",
]

log = structlog.get_logger("gateway.control")

#: the socket's file name in the data directory
SOCKET_NAME = "gateway.sock"

#: what a client may ask for
REQUESTS = ("registrations", "calls", "presence", "trunks")

#: how long a client has to send its request line
CLIENT_TIMEOUT_S = 5.0

#: the longest request line read
_MAX_REQUEST = 4096

Snapshot = Callable[[], list[dict[str, Any]]]


class ControlError(Exception):
    """The control socket could not answer (no node running, or it refused the request)."""


class ControlServer:
    """Answers the control requests from ``snapshots`` (request name -> builder)."""

    def __init__(self, data_dir: Path, snapshots: Mapping[str, Snapshot]):
        self.path = data_dir / SOCKET_NAME
        self.snapshots = dict(snapshots)
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        """Listen (a stale socket file of a dead node is replaced), mode 0600."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        old_umask = os.umask(0o177)  # the socket is born 0600: no window with wider mode
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(CLIENT_TIMEOUT_S):
                line = await reader.readline()
                writer.write(json.dumps(self.answer(line[:_MAX_REQUEST])).encode() + b"\n")
                await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        except Exception:  # never into the loop: the node goes on
            log.exception("control_request_failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def answer(self, line: bytes) -> dict[str, Any]:
        """The answer to one request line (see the module docstring)."""
        try:
            request = json.loads(line)
            name = request["request"]
        except (ValueError, TypeError, KeyError):
            return {"ok": False, "error": 'expected one JSON line {"request": "<name>"}'}
        snapshot = self.snapshots.get(name) if isinstance(name, str) else None
        if snapshot is None:
            return {
                "ok": False,
                "error": f"unknown request {name!r} (known: {', '.join(REQUESTS)})",
            }
        return {"ok": True, "items": snapshot()}


def ask(data_dir: Path, request: str, timeout: float = 5.0) -> list[dict[str, Any]]:
    """The items a running node answers to ``request``; :class:`ControlError` otherwise."""
    path = data_dir / SOCKET_NAME
    if not data_dir.is_dir():
        raise ControlError(f"no data directory {data_dir} (set GATEWAY_DATA_DIR)")
    if not path.exists():
        raise ControlError(f"no gateway running with data directory {data_dir} (no {path.name})")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
            sock.sendall(json.dumps({"request": request}).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except ConnectionRefusedError:
            raise ControlError(f"no gateway running with data directory {data_dir}") from None
        except PermissionError:
            raise ControlError(f"{path}: permission denied (run as the gateway's user)") from None
        except OSError as exc:
            raise ControlError(f"{path}: {exc}") from None
    try:
        answer = json.loads(data)
    except ValueError:
        raise ControlError(f"{path}: no answer from the gateway") from None
    if not answer.get("ok"):
        raise ControlError(str(answer.get("error", "refused")))
    items = answer.get("items", [])
    return list(items) if isinstance(items, list) else []


async def start_control(data_dir: Path, snapshots: Mapping[str, Snapshot]) -> ControlServer | None:
    """The control socket, listening; None (logged) when it cannot: a side service."""
    server = ControlServer(data_dir, snapshots)
    try:
        await server.start()
    except OSError as exc:  # the calls go on without it
        log.error("control_socket_not_listening", path=str(server.path), error=str(exc))
        return None
    return server


def live_snapshots(
    registrar: RegistrarService,
    presence: PresenceService,
    trunk_health: TrunkHealth | None,
    dialplan: Callable[[], Dialplan],
    calls: Snapshot,
    wall_clock: Callable[[], float] = time.time,
    trunk_registrations: Callable[[], Mapping[str, str]] = dict,
) -> dict[str, Snapshot]:
    """The node's answers to :data:`REQUESTS`, read from its live services."""

    def registrations() -> list[dict[str, Any]]:
        now = wall_clock()
        return [
            {
                "agent": binding.agent_id,
                "contact": binding.contact_uri,
                "source": binding.source,
                # RFC 3327: the proxies calls to her go through (a cluster's front), if any
                "path": ", ".join(binding.path),
                "expires_in_s": max(0, round(binding.expires_at - now)),
                "user_agent": binding.user_agent,
            }
            for bindings in list(registrar.bindings.values())
            for binding in list(bindings.values())
            if binding.expires_at > now
        ]

    def agents() -> list[dict[str, Any]]:
        return [
            {
                "agent": agent.agent_id,
                "status": agent.effective.value,
                "chosen": agent.chosen.value,
                "registered": agent.registered,
                "calls": agent.active_calls,
                "emergency_calls": agent.emergency_calls,
            }
            for agent in list(presence.agents.values())
        ]

    def trunks() -> list[dict[str, Any]]:
        probed = {s["gateway"]: s for s in trunk_health.statuses()} if trunk_health else {}
        return trunk_rows(dialplan(), probed, trunk_registrations())

    return {"registrations": registrations, "calls": calls, "presence": agents, "trunks": trunks}


def trunk_rows(
    dialplan: Dialplan,
    probed: Mapping[str, dict[str, Any]],
    registrations: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Every trunk gateway of ``dialplan``, with its keep-alive state when it is probed and,
    on a registration-based trunk's first gateway (its registrar), the registration."""
    registrations = registrations or {}
    paths = [(name, trunk.gateways) for name, trunk in dialplan.trunks.items()]
    offer = dialplan.emergency.direct_offer
    if offer is not None:
        paths.append((DIRECT_OFFER, offer.gateways))
    rows = []
    for path, gateways in paths:
        for index, gw in enumerate(gateways):
            key = gateway_key(gw)
            status = probed.get(key)
            rows.append(
                {
                    "trunk": path,
                    "gateway": key,
                    "state": status["state"] if status else "not probed",
                    "for_s": status["for_s"] if status else None,
                    "last": status["last_detail"] if status else None,
                    "probes": status["probes"] if status else 0,
                    "failures": status["failures"] if status else 0,
                    "registration": registrations.get(path) if index == 0 else None,
                }
            )
    return rows


def print_rows(rows: list[dict[str, Any]], empty: str) -> None:
    """Rows as aligned columns (``-`` for nothing), or ``empty`` when there are none."""
    if not rows:
        print(empty)
        return
    header = list(rows[0])
    table = [header] + [
        ["-" if r.get(k) in (None, "") else str(r.get(k)) for k in header] for r in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for line in table:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())
