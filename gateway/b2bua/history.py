"""Call history (SPEC R-5): one CDR row per ordinary call, written off the call's path.

The row is built when the call ends and queued to a single writer task, so a slow disk never
delays SIP handling; rows are written in the order calls ended. Emergency calls and
callbacks never produce a row (SPEC E-9): a call marked ``private`` is skipped here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

from gateway.b2bua.call import Call
from gateway.b2bua.decisions import CallObserverBase
from gateway.stores.ports import Cdr, CdrStore
from gateway.tasks import WriteBehind

__all__ = ["CallHistory", "cdr_of"]

log = structlog.get_logger("gateway.history")


def cdr_of(call: Call, wall_offset: float) -> Cdr:
    """The CDR of an ended call; ``wall_offset`` turns the loop clock into unix time."""
    started = call.started_at + wall_offset
    answered = call.answered_at + wall_offset if call.answered_at is not None else None
    ended = (call.ended_at if call.ended_at is not None else call.started_at) + wall_offset
    invite = call.a.invite
    caller = "anonymous"
    if invite is not None:
        try:
            uri = invite.from_.uri
            caller = getattr(uri, "user", None) or str(uri)
        except Exception:
            caller = "anonymous"
    route = call.attempts[-1] if call.attempts else None
    return Cdr(
        call_id=call.id,
        direction="inbound" if call.direction == "inbound" else "outbound",
        caller=caller,
        callee=call.dialled,
        queue=call.history_queue,
        agent=call.agent,
        route=route,
        started_at=started,
        answered_at=answered,
        ended_at=ended,
        result=call.result,
    )


class CallHistory(CallObserverBase):
    """Writes a CDR for every ordinary call that ends."""

    def __init__(
        self,
        store: CdrStore,
        loop_clock: Callable[[], float],
        wall_clock: Callable[[], float] = time.time,
    ):
        self.store = store
        self.loop_clock = loop_clock
        self.wall_clock = wall_clock
        self._rows: WriteBehind[Cdr] = WriteBehind("cdr-writer", self._add, _write_failed)
        self.written = 0

    def start(self, group: asyncio.TaskGroup | None = None) -> None:
        """Start the ordered writer (in ``group`` when given)."""
        self._rows.start(group)

    async def close(self) -> None:
        """Write what is queued, then stop the writer."""
        await self._rows.close()

    def call_started(self, call: Call) -> None:
        pass

    def call_ended(self, call: Call) -> None:
        if call.private:
            return  # SPEC E-9: emergency calls and callbacks stay out of the history
        offset = self.wall_clock() - self.loop_clock()
        self._rows.put(cdr_of(call, offset))

    async def _add(self, row: Cdr) -> None:
        await self.store.add(row)
        self.written += 1


def _write_failed(row: Cdr) -> None:
    log.exception("cdr_write_failed", call_id=row.call_id)
