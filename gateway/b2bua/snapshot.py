"""The calls in progress as plain rows, for the control socket (``gateway calls``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from gateway.b2bua.call import Call

__all__ = ["call_rows"]


def call_kind(call: Call) -> str:
    """``ordinary``, ``emergency`` or ``callback``."""
    if call.emergency is None:
        return "ordinary"
    return "callback" if call.emergency.callback else "emergency"


def call_rows(calls: Iterable[Call], now: float) -> list[dict[str, Any]]:
    """One row per call: both legs' Call-IDs (to match a carrier's trace), where it went."""
    rows = []
    for call in calls:
        hop = call.current_hop
        rows.append(
            {
                "call": call.id,
                "kind": call_kind(call),
                "state": call.state.value,
                "direction": call.direction,
                "agent": call.agent,
                "dialled": call.dialled,
                "a_call_id": call.a.call_id,
                "b_call_id": call.b.call_id if call.b is not None else None,
                "route": hop.trunk if hop is not None else None,
                "gateway": hop.gateway if hop is not None else None,
                "duration_s": round(max(0.0, now - call.started_at), 1),
                "answered": call.answered_at is not None,
            }
        )
    return rows
