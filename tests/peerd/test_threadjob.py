"""peerd.threadjob: cleanup waits for the thread, not for the task that awaited it."""

from __future__ import annotations

import asyncio
import contextlib
import threading

from peerd.threadjob import ThreadJob


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
