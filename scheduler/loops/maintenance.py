"""The scheduler's periodic work, one pass per tick, on every replica:

1. write what this replica holds in memory (heartbeats, editor proxy activity, sync progress:
   the write-behind buffers), take the hosts other replicas registered or lost, and stamp this
   replica's presence and how far it has flushed, all in one transaction
   (:mod:`scheduler.replicas`); then take or renew the ``maintenance`` lease.

Then, on the one replica holding the lease:

2. declare hosts past their heartbeat TTL lost, their notebooks ERROR (``HostService.mark_lost``),
   counting silence only up to what every live replica has flushed;
3. stop notebooks RUNNING longer than ``max_runtime_s`` (``restart_on_timeout`` ones are to be
   restarted: ``desired`` :data:`scheduler.lifecycle.RESTARTED`), and those idle for their idle
   timeout (:mod:`scheduler.idle`; never restarted), counting activity up to what every live
   replica has flushed;
4. start again notebooks to be restarted that have settled (STOPPED, or ERROR from a lost host)
   by queueing them (:meth:`Admission.restart`); one that FAILED to stop is not restarted
   (:mod:`scheduler.lifecycle` says why);
5. end drains whose host has emptied (``HostService.end_drains``);
6. place what the queue can place (:meth:`Admission.dispatch`);
7. retention: forget expired request nonces (:mod:`scheduler.replay`) and long-dead replicas.

Steps 2-7 each run in a transaction of their own: a job that fails is logged and rolled back
alone, and the later jobs still run. Within a job, each notebook is handled in its own savepoint
(:func:`scheduler.loops.base.one_item`): one bad row is logged and skipped, not the whole job.
:meth:`wake` makes the next tick happen now (a report freed capacity, a quota was raised), on
every replica: the others hear it through the database's announcements (channel
:data:`CHANNEL`), so the lease holder places queued notebooks at once whichever replica the
report reached. Otherwise it runs every ``loop_interval_s``. Tests call :meth:`tick`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from common.config import SchedulerConfig
from common.states import NotebookState
from scheduler.admission import Admission
from scheduler.board import AssignmentBoard
from scheduler.db import Database, Tx, WriteBehind
from scheduler.hosts import HostService
from scheduler.idle import stop_idle
from scheduler.lifecycle import RESTARTED, RESTARTS_FROM, stop_by_scheduler
from scheduler.loops.base import Loop, one_item
from scheduler.replay import forget_expired
from scheduler.replicas import MAINTENANCE, Replica

log = logging.getLogger(__name__)

S = NotebookState

#: Where a wake is announced to the other replicas.
CHANNEL = "nbfleet_maintenance"

_RESTARTS_FROM = tuple(sorted(RESTARTS_FROM))
_RESTARTS_FROM_MARKS = ", ".join("?" for _ in _RESTARTS_FROM)


def _days(seconds: float) -> str:
    days = seconds / 86400
    if days >= 1 and float(days).is_integer():
        return f"{days:.0f} day{'s' if days != 1 else ''}"
    return f"{seconds / 3600:.4g} hours"


class Maintenance(Loop):
    name = "maintenance"

    def __init__(
        self,
        db: Database,
        config: SchedulerConfig,
        board: AssignmentBoard,
        clock: Callable[[], float],
        hosts: HostService,
        admission: Admission,
        replica: Replica,
        buffers: tuple[WriteBehind, ...] = (),
    ) -> None:
        super().__init__(config.loop_interval_s)
        self.db = db
        self.config = config
        self.board = board
        self.clock = clock
        self.hosts = hosts
        self.admission = admission
        self.replica = replica
        #: Write-behind buffers besides the heartbeats (proxy activity, sync progress).
        self.buffers = buffers
        self._announcing: set[asyncio.Task[None]] = set()

    def wake(self) -> None:
        """Tick now, here and on every other replica (the lease holder is one of them)."""
        super().wake()
        if self.db.shared:
            task = asyncio.get_running_loop().create_task(self._announce())
            self._announcing.add(task)
            task.add_done_callback(self._announcing.discard)

    def announced(self, _payload: str) -> None:
        """Another replica woke its loop (or announcements may have been missed)."""
        super().wake()

    async def _announce(self) -> None:
        try:
            await self.db.notify(CHANNEL, self.replica.id)
        except Exception as exc:  # the holder still ticks within loop_interval_s
            log.warning("could not tell the other replicas to tick now (%s)", exc)

    async def tick(self) -> None:
        if await self.flush():
            await self.run_jobs()

    async def flush(self) -> bool:
        """Step 1; True if this replica holds the maintenance lease."""
        started = self.clock()
        async with self.db.transaction() as tx:
            await self.hosts.flush(tx)
            for buffer in self.buffers:
                await buffer.flush(tx)
            await self.hosts.refresh(tx)
            await self.replica.stamp(tx, started)
            return await self.replica.hold(tx, MAINTENANCE)

    async def run_jobs(self) -> None:
        """Steps 2-7."""
        now = self.clock()
        jobs: tuple[tuple[str, Callable[[Tx, float], Awaitable[None]]], ...] = (
            ("lost-hosts", self._lost_hosts),
            ("runtime-limit", self._runtime_limit),
            ("idle", self._idle),
            ("restarts", self._restarts),
            ("end-drains", self._end_drains),
            ("queue", self._dispatch),
            ("retention", self._retention),
        )
        for name, job in jobs:
            try:
                async with self.db.transaction() as tx:
                    await job(tx, now)
            except Exception:
                log.exception(
                    "job=%s failed and was rolled back; the next tick runs it again", name
                )

    async def _lost_hosts(self, tx: Tx, now: float) -> None:
        through = await self.replica.flushed_through(tx, now)
        await self.hosts.mark_lost(tx, now=now, flushed_through=through)

    async def _runtime_limit(self, tx: Tx, now: float) -> None:
        limit = self.config.max_runtime_s
        rows = await tx.all(
            "SELECT * FROM notebooks WHERE state = 'RUNNING' AND running_since <= ?",
            (now - limit,),
        )
        for row in rows:
            async with one_item(tx, f"notebook={row['id']}", "stop at the runtime limit"):
                await stop_by_scheduler(
                    tx,
                    row,
                    f"runtime limit of {_days(limit)} reached",
                    again="it will start again (restart-on-timeout)",
                    now=now,
                    board=self.board,
                )
                log.info("notebook=%s stopped at the runtime limit", row["id"])

    async def _idle(self, tx: Tx, now: float) -> None:
        through = await self.replica.flushed_through(tx, now)
        await stop_idle(tx, now=now, through=through, config=self.config, board=self.board)

    async def _restarts(self, tx: Tx, now: float) -> None:
        rows = await tx.all(
            # The literal lets SQLite use the partial index notebooks_restarts.
            f"SELECT * FROM notebooks WHERE desired = '{RESTARTED}' "
            f"AND state IN ({_RESTARTS_FROM_MARKS})",
            _RESTARTS_FROM,
        )
        for row in rows:
            why = "host lost" if row["state"] == S.ERROR else "restart-on-timeout"
            async with one_item(tx, f"notebook={row['id']}", "restart"):
                await self.admission.restart(tx, row, now=now, why=why)

    async def _end_drains(self, tx: Tx, now: float) -> None:
        await self.hosts.end_drains(tx, now=now)

    async def _dispatch(self, tx: Tx, now: float) -> None:
        placed = await self.admission.dispatch(tx, now=now)
        if placed:
            log.info("queue: placed %d notebooks", placed)

    async def _retention(self, tx: Tx, now: float) -> None:
        await forget_expired(tx, now)
        await self.replica.forget_dead(tx, now)
