"""The scheduler's periodic work, one pass per tick, in this order:

1. write the heartbeats received since the last tick (:meth:`HostService.flush`);
2. declare hosts past their heartbeat TTL lost, their notebooks ERROR (``HostService.mark_lost``);
3. stop notebooks RUNNING longer than ``max_runtime_s`` (flagging ``restart_on_timeout`` ones);
4. start again flagged notebooks that have settled (STOPPED, or ERROR from a lost host) by
   queueing them; a flagged notebook that FAILED to stop is left alone, since restarting it
   could restore a workspace older than the one it failed to save;
5. end drains whose host has emptied;
6. place what the queue can place.

Steps 2-6 are one transaction. :meth:`wake` makes the next tick happen now (a report freed
capacity, a host joined); otherwise it runs every ``loop_interval_s``. Tests call :meth:`tick`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from common.config import SchedulerConfig
from common.states import NotebookState
from scheduler.board import AssignmentBoard
from scheduler.db import Database, Tx
from scheduler.hosts import HostService
from scheduler.lifecycle import stop_by_scheduler
from scheduler.loops.base import Loop
from scheduler.notebooks import NotebookService

log = logging.getLogger(__name__)

S = NotebookState


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
        notebooks: NotebookService,
    ) -> None:
        super().__init__(config.loop_interval_s)
        self.db = db
        self.config = config
        self.board = board
        self.clock = clock
        self.hosts = hosts
        self.notebooks = notebooks

    async def tick(self) -> None:
        await self.hosts.flush()
        now = self.clock()
        async with self.db.transaction() as tx:
            await self.hosts.mark_lost(tx, now=now)
            await self._runtime_limit(tx, now)
            await self._restarts(tx, now)
            await tx.run(
                "UPDATE hosts SET draining = 0 WHERE draining = 1 AND NOT EXISTS "
                "(SELECT 1 FROM notebooks n WHERE n.host_id = hosts.id)"
            )
            placed = await self.notebooks.dispatcher.dispatch(tx, now=now)
        if placed:
            log.info("queue: placed %d notebooks", placed)

    async def _runtime_limit(self, tx: Tx, now: float) -> None:
        limit = self.config.max_runtime_s
        rows = await tx.all(
            "SELECT * FROM notebooks WHERE state = 'RUNNING' AND running_since <= ?",
            (now - limit,),
        )
        for row in rows:
            await stop_by_scheduler(
                tx,
                row,
                f"runtime limit of {_days(limit)} reached",
                again="it will start again (restart-on-timeout)",
                now=now,
                board=self.board,
            )
            log.info("notebook=%s stopped at the runtime limit", row["id"])

    async def _restarts(self, tx: Tx, now: float) -> None:
        rows = await tx.all("SELECT * FROM notebooks WHERE restart_pending = 1")
        for row in rows:
            state = S(row["state"])
            if state in (S.STOPPED, S.ERROR):
                why = "host lost" if state == S.ERROR else "restart-on-timeout"
                await self.notebooks.restart(tx, row, now=now, why=why)
            elif state not in (S.STARTING, S.RUNNING, S.STOPPING):
                await tx.run("UPDATE notebooks SET restart_pending = 0 WHERE id = ?", (row["id"],))
