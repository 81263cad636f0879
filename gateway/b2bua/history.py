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

from gateway.b2bua.call import Call, EndKind
from gateway.b2bua.decisions import CallObserverBase
from gateway.stores.ports import Cdr, CdrStore, StoreUnavailableError
from gateway.tasks import WriteBehind, stop_task

__all__ = ["PURGE_INTERVAL_S", "CallHistory", "cdr_of", "final_sip_code"]

#: how often rows past the retention are purged (and once at start)
PURGE_INTERVAL_S = 3600.0

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
        a_call_id=call.a.call_id,
        b_call_id=call.b.call_id if call.b is not None else None,
        sip_code=final_sip_code(call),
    )


def final_sip_code(call: Call) -> int | None:
    """The final SIP status of the call's setup: 200 when answered, the status the caller
    got when it failed or was refused, 487 when the caller cancelled (RFC 3261 section
    9.2); None when no final response was sent (the caller never answered our 2xx...)."""
    if call.answered_at is not None:
        return 200
    outcome = call.outcome
    if outcome is not None and outcome.status is not None:
        return outcome.status
    if outcome is not None and outcome.kind is EndKind.CANCELLED:
        return 487
    return int(call.result) if call.result.isdigit() else None


class CallHistory(CallObserverBase):
    """Writes a CDR for every ordinary call that ends."""

    def __init__(
        self,
        store: CdrStore,
        loop_clock: Callable[[], float],
        wall_clock: Callable[[], float] = time.time,
        *,
        retention_s: float = 0.0,
    ):
        self.store = store
        self.loop_clock = loop_clock
        self.wall_clock = wall_clock
        #: rows of calls that ended longer ago are purged (0: kept for ever)
        self.retention_s = retention_s
        self._rows: WriteBehind[Cdr] = WriteBehind(
            "cdr-writer",
            self._add,
            _write_failed,
            write_batch=self._add_batch,
            transient=StoreUnavailableError,
        )
        self._purger: asyncio.Task[None] | None = None
        self.written = 0
        self.purged = 0

    def start(self, group: asyncio.TaskGroup | None = None) -> None:
        """Start the ordered writer (in ``group`` when given), and the purge when a
        retention is set."""
        self._rows.start(group)
        if self.retention_s > 0:
            self._purger = asyncio.create_task(
                self._purge_every(PURGE_INTERVAL_S), name="cdr-purge"
            )

    async def close(self) -> None:
        """Write what is queued, then stop the writer (and the purge)."""
        await stop_task(self._purger)
        await self._rows.close()

    async def purge(self) -> int:
        """Delete the rows older than the retention now; how many went."""
        removed = await self.store.purge(self.wall_clock() - self.retention_s)
        self.purged += removed
        if removed:
            log.info("cdrs_purged", rows=removed, retention_days=self.retention_s / 86400)
        return removed

    async def _purge_every(self, interval_s: float) -> None:
        while True:
            try:
                await self.purge()
            except Exception:  # a side task: the calls go on, the next purge may work
                log.exception("cdr_purge_failed")
            await asyncio.sleep(interval_s)

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

    async def _add_batch(self, rows: list[Cdr]) -> None:
        await self.store.add(*rows)
        self.written += len(rows)


def _write_failed(row: Cdr) -> None:
    log.exception("cdr_write_failed", call_id=row.call_id)
