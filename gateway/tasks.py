"""Background work with an owner: named tasks that are awaited when their owner closes.

:class:`WriteBehind` is the one write-behind loop of the gateway (presence, registrations,
call history): the hot path puts an item and goes on; one named task writes the items to
the store in order; :meth:`WriteBehind.close` waits until every item put so far is written,
then stops the task and awaits it. A failed write is logged by the owner's ``on_error`` and
the loop goes on (a store outage never reaches a call), except a failure of a kind the
owner calls ``transient`` (the store's lock held elsewhere, a full disk: the write may land
later): that write is tried again, in order, with a backoff from 0.5 s doubling to 30 s
(``store_write_retrying``, then ``store_write_recovered``), so that a registration or a
presence survives a restart after a passing failure; once ``close`` has begun it gets one
last try. With ``write_batch`` the task takes
every item waiting (up to ``batch_size``) in one write, e.g. one store transaction for the
call records of a busy second instead of one thread hand-off and commit per call; a batch
that fails is written again item by item, so one bad item loses only itself.

Tasks are created in the :class:`asyncio.TaskGroup` given to ``start`` (the gateway's, so
that a crash is not lost), or else as plain tasks whose references the owner keeps; either
way the owner awaits them on close: no fire-and-forget.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Generic, TypeVar

import structlog

from gateway.backoff import jittered_backoff

__all__ = [
    "RETRY_FIRST_S",
    "RETRY_MAX_S",
    "WriteBehind",
    "retry_delay",
    "start_task",
    "stop_task",
]

#: a transiently failed write is tried again after this, doubling up to RETRY_MAX_S
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 30.0


def retry_delay(failures: int) -> float:
    """Seconds before trying a store write again after ``failures`` failures in a row: the
    gateway's one backoff, without jitter (one writer per store: nothing to spread)."""
    return jittered_backoff(failures - 1, 1.0, base=RETRY_FIRST_S, cap=RETRY_MAX_S)


T = TypeVar("T")

log = structlog.get_logger("gateway.tasks")


def start_task(
    coroutine: Coroutine[Any, Any, None], name: str, group: asyncio.TaskGroup | None = None
) -> asyncio.Task[None]:
    """A named task in ``group`` (or on the running loop); the caller keeps the reference."""
    if group is not None:
        return group.create_task(coroutine, name=name)
    return asyncio.create_task(coroutine, name=name)


#: how long a cancelled task may take to finish before it is cancelled again
CANCEL_AGAIN_S = 1.0


async def stop_task(task: asyncio.Task[None] | None) -> None:
    """Cancel ``task`` and wait until it has finished (its CancelledError is expected).

    On Python 3.11 a cancel can be lost: ``asyncio.wait_for``, and libraries that time a
    read out, may return a result that completed as the cancel came. A loop that lost it
    runs on and its owner's close would wait for ever, so the cancel is repeated every
    :data:`CANCEL_AGAIN_S` seconds until the task ends (``task_cancel_repeated`` logged).
    """
    if task is None:
        return
    task.cancel()
    while not task.done():
        await asyncio.wait({task}, timeout=CANCEL_AGAIN_S)
        if not task.done():
            log.warning("task_cancel_repeated", task=task.get_name())
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
        *,
        write_batch: Callable[[list[T]], Awaitable[None]] | None = None,
        batch_size: int = 200,
        transient: type[Exception] | tuple[type[Exception], ...] = (),
    ) -> None:
        self.name = name
        self._write = write
        self._on_error = on_error
        self._write_batch = write_batch
        self._batch_size = batch_size
        self._transient = transient
        self._failures = 0
        self._closing = asyncio.Event()
        #: closing, a last try failed: what is left is counted, not tried (each try may
        #: wait the store's busy timeout, and a stop must not take minutes)
        self._given_up = False
        self._lost = 0
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
        """Drain (a write that keeps failing gets one last try), then stop the writer and
        await it."""
        self._closing.set()
        await self.drain()
        task, self._task = self._task, None
        await stop_task(task)
        if self._lost:
            log.error("store_writes_lost", writer=self.name, items=self._lost)

    async def _loop(self) -> None:
        while True:
            item = await self._queue.get()
            if self._write_batch is None:
                try:
                    await self._one(item)
                finally:
                    self._queue.task_done()
                continue
            items = [item]
            while len(items) < self._batch_size and not self._queue.empty():
                items.append(self._queue.get_nowait())
            try:
                await self._batch(items)
            finally:
                for _ in items:
                    self._queue.task_done()

    async def _one(self, item: T) -> None:
        if self._given_up:  # closing, and the store failed its last try: no wait per item
            self._lost += 1
            return
        while True:
            try:
                await self._write(item)
            except self._transient as exc:
                if await self._retry_after(exc, 1):
                    continue
                self._on_error(item)
            except Exception:
                self._on_error(item)
            else:
                self._recovered()
            return

    async def _batch(self, items: list[T]) -> None:
        assert self._write_batch is not None
        if self._given_up:  # closing, and the store failed its last try
            self._lost += len(items)
            return
        while len(items) > 1:
            try:
                await self._write_batch(items)
            except self._transient as exc:
                if await self._retry_after(exc, len(items)):
                    continue
                self._lost += len(items)  # closing, and its last try failed
                return
            except Exception:
                break  # written again one by one below: only the bad item is lost
            else:
                self._recovered()
                return
        for item in items:
            await self._one(item)

    async def _retry_after(self, error: Exception, items: int) -> bool:
        """Wait the backoff before trying a transiently failed write again; False once
        closing (the write just tried was its last try)."""
        if self._closing.is_set():
            self._given_up = True
            return False
        self._failures += 1
        delay = retry_delay(self._failures)
        log.error(
            "store_write_retrying",
            writer=self.name,
            error=repr(error),
            items=items,
            queued=self._queue.qsize(),
            retry_in_s=delay,
        )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._closing.wait()
        return True

    def _recovered(self) -> None:
        if self._failures:
            log.warning("store_write_recovered", writer=self.name, after_failures=self._failures)
            self._failures = 0
