"""scheduler.batches.Batcher: who goes in which batch, and what each submitter gets."""

from __future__ import annotations

import asyncio

import pytest

from scheduler.batches import Batcher


class Recorder:
    """A batch runner that records its batches and can be held open."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.hold = asyncio.Event()
        self.hold.set()
        self.fail_whole: set[int] = set()

    async def __call__(self, batch: list[int]) -> list[int | Exception]:
        self.batches.append(list(batch))
        await self.hold.wait()
        if len(batch) > 1 and self.fail_whole & set(batch):
            raise RuntimeError("the batch failed")
        return [ValueError(f"refused {n}") if n < 0 else n * 10 for n in batch]


async def _until(condition, what: str) -> None:
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError(what)


async def test_a_lone_request_goes_at_once() -> None:
    run = Recorder()
    batcher = Batcher(run, most=8, what="tests")
    assert await batcher.submit(1) == 10
    assert run.batches == [[1]]


async def test_requests_that_arrive_during_a_batch_go_together_in_the_next() -> None:
    run = Recorder()
    run.hold.clear()
    batcher: Batcher[int, int] = Batcher(run, most=3, what="tests")
    first = asyncio.create_task(batcher.submit(1))
    await _until(lambda: run.batches, "the first batch began")
    later = [asyncio.create_task(batcher.submit(n)) for n in range(2, 7)]
    await _until(lambda: len(batcher._waiting) == 5, "five waiting")
    run.hold.set()
    assert await first == 10
    assert await asyncio.gather(*later) == [20, 30, 40, 50, 60]
    # At most three a batch, in the order they came.
    assert run.batches == [[1], [2, 3, 4], [5, 6]]


async def test_a_refused_request_is_refused_alone() -> None:
    run = Recorder()
    run.hold.clear()
    batcher: Batcher[int, int] = Batcher(run, most=8, what="tests")
    first = asyncio.create_task(batcher.submit(1))
    await _until(lambda: run.batches, "the first batch began")
    later = [asyncio.create_task(batcher.submit(n)) for n in (2, -3, 4)]
    await _until(lambda: len(batcher._waiting) == 3, "three waiting")
    run.hold.set()
    results = await asyncio.gather(first, *later, return_exceptions=True)
    assert results[:2] == [10, 20] and results[3] == 40
    assert isinstance(results[2], ValueError) and str(results[2]) == "refused -3"
    assert run.batches == [[1], [2, -3, 4]]


async def test_a_batch_that_fails_as_a_whole_runs_each_alone() -> None:
    run = Recorder()
    run.hold.clear()
    run.fail_whole = {3}
    batcher: Batcher[int, int] = Batcher(run, most=8, what="tests")
    first = asyncio.create_task(batcher.submit(1))
    await _until(lambda: run.batches, "the first batch began")
    later = [asyncio.create_task(batcher.submit(n)) for n in (2, 3, 4)]
    await _until(lambda: len(batcher._waiting) == 3, "three waiting")
    run.hold.set()
    assert await asyncio.gather(first, *later) == [10, 20, 30, 40]
    assert run.batches == [[1], [2, 3, 4], [2], [3], [4]]


async def test_a_lone_request_that_fails_gets_the_exception() -> None:
    async def broken(batch: list[int]) -> list[int]:
        raise RuntimeError("no database")

    batcher: Batcher[int, int] = Batcher(broken, most=8, what="tests")
    with pytest.raises(RuntimeError, match="no database"):
        await batcher.submit(1)


async def test_a_submitter_that_gave_up_before_its_batch_is_left_out() -> None:
    run = Recorder()
    run.hold.clear()
    batcher: Batcher[int, int] = Batcher(run, most=8, what="tests")
    first = asyncio.create_task(batcher.submit(1))
    await _until(lambda: run.batches, "the first batch began")
    gone = asyncio.create_task(batcher.submit(2))
    kept = asyncio.create_task(batcher.submit(3))
    await _until(lambda: len(batcher._waiting) == 2, "two waiting")
    gone.cancel()
    run.hold.set()
    assert await first == 10 and await kept == 30
    assert run.batches == [[1], [3]]


async def test_close_cancels_what_waits() -> None:
    run = Recorder()
    run.hold.clear()
    batcher: Batcher[int, int] = Batcher(run, most=8, what="tests")
    first = asyncio.create_task(batcher.submit(1))
    await _until(lambda: run.batches, "the first batch began")
    waiting = asyncio.create_task(batcher.submit(2))
    await _until(lambda: len(batcher._waiting) == 1, "one waiting")
    await batcher.close()
    for task in (first, waiting):
        with pytest.raises(asyncio.CancelledError):
            await task
    # A new request after close starts a new worker.
    run.hold.set()
    assert await batcher.submit(5) == 50
