"""Background work with an owner: named tasks that are awaited when their owner closes.

:class:`WriteBehind` is the one write-behind loop of the gateway (presence, registrations,
call history): the hot path puts an item and goes on; one named task writes the items to
the store in order; :meth:`WriteBehind.close` waits until every item put so far is written,
then stops the task and awaits it. A failed write is logged by the owner's ``on_error`` and
the loop goes on (a store outage never reaches a call).

Tasks are created in the :class:`asyncio.TaskGroup` given to ``start`` (the gateway's, so
that a crash is not lost), or else as plain tasks whose references the owner keeps; either
way the owner awaits them on close: no fire-and-forget.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Generic, TypeVar

__all__ = ["WriteBehind", "start_task", "stop_task"]

T = TypeVar("T")


def start_task(
    coroutine: Coroutine[Any, Any, None], name: str, group: asyncio.TaskGroup | None = None
) -> asyncio.Task[None]:
    """A named task in ``group`` (or on the running loop); the caller keeps the reference."""
    if group is not None:
        return group.create_task(coroutine, name=name)
    return asyncio.create_task(coroutine, name=name)


async def stop_task(task: asyncio.Task[None] | None) -> None:
    """Cancel ``task`` and wait until it has finished (its CancelledError is expected)."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class WriteBehind(Generic[T]):
    """Items written in order by one named task; :meth:`close` drains, stops and awaits."""

    def __init__(
        self,
        name: str,
        write: Callable[[T], Awaitable[None]],
        on_error: Callable[[T], None],
    ) -> None:
        self.name = name
        self._write = write
        self._on_error = on_error
        self._queue: asyncio.Queue[T] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self, group: asyncio.TaskGroup | None = None) -> None:
        """Start the writer task (in ``group`` when given)."""
        if self._task is None:
            self._task = start_task(self._loop(), self.name, group)

    def put(self, item: T) -> None:
        """Queue ``item`` for writing; never waits."""
        self._queue.put_nowait(item)

    @property
    def pending(self) -> int:
        """Items put and not written yet."""
        return self._queue.qsize()

    async def drain(self) -> None:
        """Wait until every item put so far is written (or its failure reported)."""
        if self._task is not None:
            await self._queue.join()

    async def close(self) -> None:
        """Drain, then stop the writer and await it."""
        await self.drain()
        task, self._task = self._task, None
        await stop_task(task)

    async def _loop(self) -> None:
        while True:
            item = await self._queue.get()
            try:
                await self._write(item)
            except Exception:
                self._on_error(item)
            finally:
                self._queue.task_done()
