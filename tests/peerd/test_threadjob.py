"""peerd.threadjob: cleanup waits for the thread, not for the task that awaited it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from typing import Any

from peerd.threadjob import SERVING, SERVING_THREADS, DiskWork, ThreadJob


async def test_result_is_awaited_from_the_thread() -> None:
    async with asyncio.timeout(5):
        assert await ThreadJob(sum, [1, 2, 3]) == 6


async def test_cleanup_waits_for_the_thread_after_the_awaiting_task_is_cancelled() -> None:
    gate = threading.Event()
    cleaned = threading.Event()
    job = ThreadJob(gate.wait, 5)

    async def await_it() -> None:
        await job

    async with asyncio.timeout(5):
        task = asyncio.create_task(await_it())
        await asyncio.sleep(0.05)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert job.future.done()  # the asyncio side says done...
        job.when_finished(cleaned.set)
        assert not cleaned.is_set()  # ...but the thread is still at work: no cleanup yet
        gate.set()
        assert await asyncio.to_thread(cleaned.wait, 5)


async def test_wait_blocks_until_the_thread_is_done() -> None:
    gate = threading.Event()
    job = ThreadJob(gate.wait, 5)
    threading.Timer(0.1, gate.set).start()
    job.wait()
    assert gate.is_set()


async def test_a_descriptor_is_closed_only_once_the_step_using_it_is_done(tmp_path: Any) -> None:
    gate = threading.Event()
    disk = DiskWork()
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)

    def slow_write() -> None:
        gate.wait(5)
        os.write(fd, b"still mine")

    async with asyncio.timeout(5):
        task = asyncio.create_task(disk.run(slow_write))
        await asyncio.sleep(0.05)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        disk.close_when_idle(fd)
        os.fstat(fd)  # not closed yet: the write is still to come
        gate.set()
        await asyncio.to_thread(_wait_closed, fd)
    assert (tmp_path / "f").read_bytes() == b"still mine"


def _wait_closed(fd: int) -> None:
    for _ in range(500):
        try:
            os.fstat(fd)
        except OSError:
            return
        threading.Event().wait(0.01)
    raise AssertionError("the descriptor was never closed")


async def test_what_a_cancelled_step_opened_is_released(tmp_path: Any) -> None:
    gate = threading.Event()
    released: list[int] = []
    done = threading.Event()
    disk = DiskWork()

    def release(value: int) -> None:
        released.append(value)
        done.set()

    def slow_open() -> int:
        gate.wait(5)
        return 42

    async with asyncio.timeout(5):
        task = asyncio.create_task(disk.run(slow_open, unwanted=release))
        await asyncio.sleep(0.05)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert released == []  # the open has not happened yet
        gate.set()
        assert await asyncio.to_thread(done.wait, 5)
    assert released == [42]


async def test_local_disk_work_runs_while_every_serving_thread_is_busy() -> None:
    gate = threading.Event()
    busy = [ThreadJob(gate.wait, 10, pool=SERVING) for _ in range(SERVING_THREADS * 2)]
    try:
        async with asyncio.timeout(5):
            assert await DiskWork().run(sum, [1, 2]) == 3
        assert not any(job.done() for job in busy)
    finally:
        gate.set()
