"""The worker threads of the snapshot engine, and running its jobs together.

``executor()`` is one pool for hashing, compression and file I/O, sized to the CPUs (BLAKE3,
zstd and file reads release the GIL); ``cpu_slots()`` is how many CPU-bound jobs may run at
once; ``run_all(jobs)`` runs coroutines together and cancels the rest on the first failure.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Iterable
from concurrent.futures import ThreadPoolExecutor

_pool: ThreadPoolExecutor | None = None


def executor() -> ThreadPoolExecutor:
    """The worker threads for hashing, compression and file I/O, sized to the CPUs."""
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(
            max_workers=max(2, (os.cpu_count() or 2) + 2), thread_name_prefix="snapshot"
        )
    return _pool


def cpu_slots() -> int:
    return max(1, os.cpu_count() or 1)


async def run_all(jobs: Iterable[Awaitable[None]]) -> None:
    """Run ``jobs`` together; on the first failure cancel the rest and raise it."""
    tasks = [asyncio.ensure_future(job) for job in jobs]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
