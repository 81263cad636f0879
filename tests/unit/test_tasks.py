"""gateway.tasks: the one write-behind loop, with an owner that drains and awaits it."""

from __future__ import annotations

import asyncio

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
