"""gateway.tasks: the one write-behind loop, with an owner that drains and awaits it."""

from __future__ import annotations

import asyncio

import pytest
import structlog

from gateway import tasks
from gateway.tasks import WriteBehind, start_task, stop_task


class Sink:
    def __init__(self) -> None:
        self.written: list[int] = []
        self.failed: list[int] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def write(self, item: int) -> None:
        await self.gate.wait()
        if item < 0:
            raise OSError("disk full")
        self.written.append(item)


async def test_items_are_written_in_order_and_close_drains_them() -> None:
    sink = Sink()
    writer = WriteBehind("test-writer", sink.write, sink.failed.append)
    writer.start()
    sink.gate.clear()  # a slow store: everything queues up
    for item in range(5):
        writer.put(item)
    assert sink.written == [] and writer.pending == 5
    sink.gate.set()
    await writer.close()
    assert sink.written == [0, 1, 2, 3, 4]
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "test-writer"]


async def test_a_failed_write_is_reported_and_the_loop_goes_on() -> None:
    sink = Sink()
    writer = WriteBehind("test-writer", sink.write, sink.failed.append)
    writer.start()
    for item in (1, -2, 3):
        writer.put(item)
    await writer.close()
    assert (sink.written, sink.failed) == ([1, 3], [-2])


class BatchSink(Sink):
    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[int]] = []

    async def write_batch(self, items: list[int]) -> None:
        await self.gate.wait()
        if any(item < 0 for item in items):
            raise OSError("constraint failed")
        self.batches.append(items)
        self.written.extend(items)


async def test_a_batch_writer_takes_what_waits_in_one_write() -> None:
    sink = BatchSink()
    writer = WriteBehind(
        "test-writer", sink.write, sink.failed.append, write_batch=sink.write_batch, batch_size=3
    )
    writer.start()
    sink.gate.clear()
    writer.put(0)
    await asyncio.sleep(0)  # the writer takes 0 and waits on the store
    for item in range(1, 6):
        writer.put(item)
    sink.gate.set()
    await writer.close()
    # a lone item goes through write (no batch of one); then at most batch_size at a time
    assert sink.written == [0, 1, 2, 3, 4, 5]
    assert sink.batches == [[1, 2, 3], [4, 5]]


async def test_a_failed_batch_is_written_item_by_item_and_loses_only_the_bad_one() -> None:
    sink = BatchSink()
    writer = WriteBehind(
        "test-writer", sink.write, sink.failed.append, write_batch=sink.write_batch
    )
    sink.gate.clear()
    writer.start()
    for item in (1, -2, 3):
        writer.put(item)
    sink.gate.set()
    await writer.close()
    assert (sink.written, sink.failed, sink.batches) == ([1, 3], [-2], [])


class Locked(Exception):
    """A store's passing failure (the owner names it ``transient``)."""


class FlakySink(BatchSink):
    """Fails with Locked while ``locked`` is set, in order, counting the tries."""

    def __init__(self) -> None:
        super().__init__()
        self.locked = True
        self.tries = 0

    async def write(self, item: int) -> None:
        self.tries += 1
        if self.locked:
            raise Locked("database is locked")
        await super().write(item)

    async def write_batch(self, items: list[int]) -> None:
        self.tries += 1
        if self.locked:
            raise Locked("database is locked")
        await super().write_batch(items)


@pytest.mark.parametrize("batched", [False, True])
async def test_a_transient_failure_is_tried_again_in_order_until_it_lands(
    monkeypatch: pytest.MonkeyPatch, batched: bool
) -> None:
    monkeypatch.setattr(tasks, "RETRY_FIRST_S", 0.01)
    sink = FlakySink()
    batch = {"write_batch": sink.write_batch} if batched else {}
    writer = WriteBehind("test-writer", sink.write, sink.failed.append, transient=Locked, **batch)  # type: ignore[arg-type]
    writer.start()
    for item in (1, 2, 3):
        writer.put(item)
    while sink.tries < 4:  # 0.01, 0.02, 0.04 s apart
        await asyncio.sleep(0.01)
    assert sink.written == [] and sink.failed == []
    sink.locked = False
    await writer.drain()
    assert sink.written == [1, 2, 3] and sink.failed == []
    # a failure that is not transient is reported at once and loses only its item
    writer.put(-4)
    writer.put(5)
    await writer.close()
    assert (sink.written, sink.failed) == ([1, 2, 3, 5], [-4])


async def test_closing_gives_a_failing_write_one_last_try_then_reports_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tasks, "RETRY_FIRST_S", 60.0)  # close must not wait for the backoff
    sink = FlakySink()
    writer = WriteBehind("test-writer", sink.write, sink.failed.append, transient=Locked)
    writer.start()
    for item in (1, 2, 3):
        writer.put(item)
    while sink.tries < 1:
        await asyncio.sleep(0.001)
    with structlog.testing.capture_logs() as logs:
        async with asyncio.timeout(5):
            await writer.close()
    # the first item's last try failed: the others are not tried (each try may wait the
    # store's busy timeout), they are counted as lost
    assert (sink.tries, sink.written, sink.failed) == (2, [], [1])
    assert [e["items"] for e in logs if e["event"] == "store_writes_lost"] == [2]


async def test_a_batch_writer_closing_on_a_failing_store_tries_once_and_counts_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tasks, "RETRY_FIRST_S", 60.0)
    sink = FlakySink()
    writer = WriteBehind(
        "test-writer",
        sink.write,
        sink.failed.append,
        write_batch=sink.write_batch,
        batch_size=2,
        transient=Locked,
    )
    writer.start()
    sink.gate.clear()
    for item in range(1, 6):
        writer.put(item)
    sink.gate.set()
    while sink.tries < 1:
        await asyncio.sleep(0.001)
    with structlog.testing.capture_logs() as logs:
        async with asyncio.timeout(5):
            await writer.close()
    # the first batch (1, 2), then its last try at close; the other batches are not tried
    assert (sink.tries, sink.written, sink.failed) == (2, [], [])
    assert [e["items"] for e in logs if e["event"] == "store_writes_lost"] == [5]


async def test_the_writer_runs_named_in_the_given_task_group() -> None:
    sink = Sink()
    async with asyncio.TaskGroup() as group:
        writer = WriteBehind("cdr-writer", sink.write, sink.failed.append)
        writer.start(group)
        names = {t.get_name() for t in asyncio.all_tasks()}
        writer.put(7)
        await writer.close()  # the group's exit then has nothing left to wait for
    assert "cdr-writer" in names and sink.written == [7]


async def test_stop_task_awaits_what_it_cancels() -> None:
    finished = asyncio.Event()

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            finished.set()

    task = start_task(forever(), "loop")
    await asyncio.sleep(0)
    await stop_task(task)
    assert task.done() and finished.is_set()
    await stop_task(None)


async def test_stop_task_cancels_again_a_loop_that_lost_its_cancel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Python 3.11's ``wait_for`` returns a result that completed as the cancel came: the
    loop below loses its first cancel that way and runs on; stop_task cancels it again."""
    monkeypatch.setattr(tasks, "CANCEL_AGAIN_S", 0.05)
    ready = asyncio.Event()
    rounds = 0

    async def loop() -> None:
        nonlocal rounds
        while True:
            rounds += 1
            ready.set()
            ready.clear()
            await asyncio.wait_for(ready.wait(), 10.0)

    task = asyncio.create_task(loop())
    await asyncio.sleep(0)  # the loop waits on the event
    ready.set()  # its wait completes ...
    await asyncio.wait_for(tasks.stop_task(task), 5.0)  # ... as the first cancel comes
    assert task.cancelled() and rounds >= 2
