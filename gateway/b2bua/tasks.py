"""The owner of the call layer's side tasks (the callback DID reservation of SPEC E-4).

``async with CallTasks() as tasks:`` opens an :class:`asyncio.TaskGroup`; ``tasks.spawn``
(the B2BUA's ``spawn``) starts a named task in it and keeps it; leaving the block waits for
every task still running (each is bounded: a reservation waits at most 0.25 s). A task's
exception is logged and does not tear the group down.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from types import TracebackType
from typing import Any

import structlog

__all__ = ["CallTasks"]

log = structlog.get_logger("gateway.b2bua")


class CallTasks:
    """Named side tasks of the call layer, awaited on close."""

    def __init__(self) -> None:
        self._group: asyncio.TaskGroup | None = None

    async def __aenter__(self) -> CallTasks:
        group = asyncio.TaskGroup()
        await group.__aenter__()
        self._group = group
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        group, self._group = self._group, None
        if group is not None:
            await group.__aexit__(exc_type, exc, tb)

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """Start ``coro`` as the task ``name``; raises RuntimeError once closed."""
        if self._group is None:
            coro.close()
            raise RuntimeError("the call layer's tasks are closed")
        return self._group.create_task(_logged(coro, name), name=name)


async def _logged(coro: Coroutine[Any, Any, None], name: str) -> None:
    try:
        await coro
    except Exception:
        log.exception("call_task_failed", task=name)
