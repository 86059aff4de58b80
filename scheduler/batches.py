"""Requests that arrive together, served together: :class:`Batcher`.

Writers are serialized (:mod:`scheduler.db`), so under load the requests of one kind (a
notebook's create) queue for the write lock one behind the other, each paying its own
statements. A :class:`Batcher` lets the ones that arrive while a batch is being written wait
and go in the next batch, in one transaction whose statements serve all of them (one quota
read, one insert, one write of every change of state): the cost per request falls as the load
rises, and a request that finds nobody ahead of it goes at once, as before.

A batch's outcome is per request: one refused (a 400, 403 or 503) is refused alone and the
others go on. If the batch as a whole fails (a broken constraint, a conflict, a failed
commit: nothing of it is stored), each of its requests is run again alone, so one request's
trouble never becomes another's error.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    """Run ``run`` over the requests :meth:`submit` receives, at most ``most`` at a time.
    ``run`` gets a batch and returns one outcome per request, in order: its result or the
    exception to raise to its submitter; an exception out of ``run`` fails the whole batch
    (then each request is run again alone)."""

    def __init__(
        self,
        run: Callable[[list[T]], Awaitable[Sequence[R | Exception]]],
        *,
        most: int,
        what: str,
    ) -> None:
        self._run = run
        self._most = most
        self._what = what
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._worker: asyncio.Task[None] | None = None

    async def submit(self, request: T) -> R:
        """``request``'s outcome, once the batch it went in has been written."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((request, future))
        if self._worker is None:
            self._worker = asyncio.create_task(self._work(), name=f"batches of {self._what}")
        return await future

    async def close(self) -> None:
        """Stop: what waits is cancelled (at shutdown, after the server stopped taking
        requests)."""
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)

    async def _work(self) -> None:
        batch: list[tuple[T, asyncio.Future[R]]] = []
        try:
            while self._waiting:
                batch = self._waiting[: self._most]
                del self._waiting[: self._most]
                # A submitter that gave up before its batch began has nothing done for it.
                batch = [(request, future) for request, future in batch if not future.done()]
                if batch:
                    await self._settle(batch)
                batch = []
        except BaseException:
            for _, future in [*batch, *self._waiting]:
                future.cancel()
            self._waiting.clear()
            raise
        finally:
            self._worker = None

    async def _settle(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            outcomes = await self._run([request for request, _ in batch])
        except Exception as exc:
            if len(batch) == 1:
                _resolve(batch[0][1], exc)
                return
            log.info(
                "a batch of %d %s failed as a whole (%s); running each alone",
                len(batch),
                self._what,
                exc,
            )
            for one in batch:
                await self._settle([one])
            return
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            _resolve(future, outcome)


def _resolve(future: asyncio.Future[R], outcome: R | Exception) -> None:
    if future.done():  # its submitter gave up meanwhile
        return
    if isinstance(outcome, Exception):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
