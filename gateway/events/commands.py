"""The desktops' commands over MQTT, decoded and checked before any service sees them.

A command is a small JSON object (at most :data:`MAX_COMMAND_BYTES`); anything else is
refused with a reason the receiver logs or answers with (SPEC E-10), never an exception.
"""

from __future__ import annotations

import json
from typing import Any, Final

from gateway.events.schema import AGENT_SETTABLE_STATUSES, check_note

__all__ = ["MAX_COMMAND_BYTES", "decode_command_object", "decode_presence_command"]

MAX_COMMAND_BYTES: Final = 4096


def decode_presence_command(raw: object) -> dict[str, Any] | str:
    """The checked command (see ``presence-set.v1.json``), or why it was refused."""
    payload = decode_command_object(raw)
    if isinstance(payload, str):
        return payload
    version = payload.get("version", 1)
    if version != 1 or isinstance(version, bool):
        return f"unsupported version {version!r}"
    status = payload.get("status")
    if status not in AGENT_SETTABLE_STATUSES:
        return (
            f"status {status!r} cannot be set by an agent "
            f"(allowed: {', '.join(AGENT_SETTABLE_STATUSES)})"
        )
    try:
        check_note(payload.get("reason"), "reason")  # the desktop's own words, bounded
    except ValueError as exc:
        return str(exc)
    return payload


def decode_command_object(raw: object) -> dict[str, Any] | str:
    """A command payload as a JSON object, or why it is not one."""
    if not isinstance(raw, bytes | bytearray):
        return "payload is not bytes"
    if len(raw) > MAX_COMMAND_BYTES:
        return f"payload larger than {MAX_COMMAND_BYTES} bytes"
    try:
        payload = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        return f"payload is not JSON: {exc}"
    if not isinstance(payload, dict):
        return "payload is not a JSON object"
    return payload
