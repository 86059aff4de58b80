"""A background loop: ``tick()`` does one pass; ``start``/``stop`` run it on a schedule, and
``wake()`` brings the next pass forward.

Tests call ``tick()`` directly instead of waiting. A failing tick is logged and retried after a
jittered, growing delay; a good tick resets the delay to ``interval_s``. Inside a tick, a job
that walks many rows in one transaction handles each in :func:`one_item`, so one bad row is
logged and skipped instead of rolling back the others.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from scheduler.db import Tx

log = logging.getLogger(__name__)


class Loop:
    name = "loop"

    def __init__(self, interval_s: float, *, max_backoff_s: float = 60.0) -> None:
        self.interval_s = interval_s
        self.max_backoff_s = max_backoff_s
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Run the next tick now instead of after the interval."""
        self._wake.set()

    async def tick(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _run(self) -> None:
        delay = self.interval_s
        while True:
            try:
                await self.tick()
                delay = self.interval_s
            except Exception:
                delay = min(self.max_backoff_s, max(delay, self.interval_s) * 2)
                log.exception("%s tick failed; retrying in about %.0fs", self.name, delay)
            try:
                await asyncio.wait_for(self._wake.wait(), delay * random.uniform(0.8, 1.2))
            except TimeoutError:
                pass
            self._wake.clear()


@asynccontextmanager
async def one_item(tx: Tx, subject: str, doing: str) -> AsyncIterator[None]:
    """One item of a job's transaction, inside a savepoint: if it raises, its own writes are
    rolled back, the error is logged (``subject`` first, e.g. ``notebook=…``) and the job goes
    on with the next item; the next tick tries this one again. Wake-ups the item asked for on
    commit still happen: a needless wake costs an agent one more poll."""
    await tx.run("SAVEPOINT one_item")
    try:
        yield
    except Exception:
        await tx.run("ROLLBACK TO one_item")
        await tx.run("RELEASE one_item")
        log.exception(
            "%s %s failed; its changes were rolled back, the next tick retries", subject, doing
        )
    else:
        await tx.run("RELEASE one_item")
