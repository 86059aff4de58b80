"""Admission: the one path by which a notebook gets a host or a place in the queue, and the
placing of the queue.

Every placement runs in the caller's transaction through :class:`Admission`:

* :meth:`Admission.check_request`, for a user's create or start: 403 over quota
  (:class:`scheduler.quota.ProjectQuota`: a per-notebook limit, then the project's limits);
  503 when no registered host could ever hold the request. A refused request stores nothing.
* :meth:`Admission.start` runs a notebook's next generation: a new one (stored as a STOPPED
  notebook of generation 0 that never ran, see :mod:`scheduler.lifecycle`) or a settled one a
  user starts. STARTING on a host with room, else QUEUED; a request of a kind that already has
  notebooks waiting queues behind them.
* :meth:`Admission.restart`: a notebook the scheduler stopped (runtime limit, drain, lost host)
  goes to QUEUED with no quota refusal; it waits in the queue like any other until quota and
  room allow.
* :meth:`Admission.dispatch` (the maintenance loop) places the queue: it walks it in fair order
  (:mod:`scheduler.queue`), and

  - a notebook its project's quota does not admit right now is passed over
    (``blocked_by = quota``) and blocks nobody else;
  - the first notebook that does not fit blocks every later one of the same kind (GPU or CPU,
    same flavor): the queue head is placed first and is never overtaken by smaller requests of
    its kind, so a 4-GPU request cannot starve behind a stream of 1-GPU ones;
  - the rest are placed, each with the placement rules, and go STARTING.

Placing is the same for all: heartbeats held in memory are written first, so placement sees
every host as fresh as its last heartbeat (:class:`Heartbeats`); a host is chosen by
:func:`scheduler.placement.find_host`, its GPUs reserved, STARTING recorded with the host by
:func:`scheduler.lifecycle.change_state`, and the project's turn used
(``projects.last_placed_at``, the queue's fairness).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from common.config import SchedulerConfig
from common.errors import ApiError
from common.states import NotebookState
from scheduler import placement
from scheduler.board import AssignmentBoard
from scheduler.db import Row, Tx
from scheduler.lifecycle import change_state, restate
from scheduler.loops.base import one_item
from scheduler.queue import QUOTA_WAIT, Kind, kind_of, queued, resources_of, waiting_kinds
from scheduler.quota import ProjectQuota

S = NotebookState


class Heartbeats(Protocol):
    """The liveness placement needs (:class:`scheduler.hosts.HostService`): a host is a
    candidate while its last heartbeat is within ``ttl_s``, which grows with the fleet, and
    heartbeats received but held in memory count once :meth:`flush` has written them."""

    @property
    def ttl_s(self) -> float: ...

    async def flush(self, tx: Tx | None = None) -> int: ...


class Admission:
    def __init__(
        self,
        config: SchedulerConfig,
        board: AssignmentBoard,
        clock: Callable[[], float],
        heartbeats: Heartbeats,
    ) -> None:
        self.config = config
        self.board = board
        self.clock = clock
        self.heartbeats = heartbeats

    async def check_request(self, tx: Tx, project: str, res: placement.Resources) -> None:
        """403 over quota; 503 when no host could ever hold the request."""
        refusal = (await ProjectQuota.load(tx, project, self.config.quota)).request_refusal(res)
        if refusal is not None:
            raise refusal
        why = await placement.never_fits(tx, res)
        if why is not None:
            raise ApiError(
                "no_capacity",
                f"{why}; a notebook of {res.describe()} could never be placed",
                requested=res.gpu or res.cpu,
                unit="GPU" if res.gpu else "CPU",
            )

    async def start(self, tx: Tx, row: Row, *, now: float, reason_suffix: str = "") -> None:
        """Run the next generation of ``row`` (settled, or just created): STARTING on a host
        with room, else QUEUED (no room, or notebooks of its kind already wait)."""
        await self.heartbeats.flush(tx)
        res = resources_of(row)
        changes = {"desired": "running", "generation": row["generation"] + 1}
        chosen = None
        if kind_of(res) not in await waiting_kinds(tx, besides=row["id"]):
            chosen = await self._room(tx, res, row["last_host_id"], now=self.clock())
        if chosen is None:
            await change_state(
                tx,
                row,
                S.QUEUED,
                f"waiting for {res.describe()}{reason_suffix}",
                now=now,
                board=self.board,
                **changes,
            )
        else:
            await self._place(
                tx, row, chosen, f"placed on {chosen.host}{reason_suffix}", now=now, **changes
            )

    async def restart(self, tx: Tx, row: Row, *, now: float, why: str) -> None:
        """Start again a notebook the scheduler stopped: no quota refusal, it waits in the
        queue like any other until quota and room allow."""
        await change_state(
            tx,
            row,
            S.QUEUED,
            f"restarting ({why}); waiting for {resources_of(row).describe()}",
            now=now,
            board=self.board,
            desired="running",
            generation=row["generation"] + 1,
        )

    async def dispatch(self, tx: Tx, *, now: float) -> int:
        """Place what can be placed now, in fair order; returns how many were placed. A
        notebook whose placement fails is rolled back alone and the walk goes on."""
        order = await queued(tx)
        if not order:
            return 0
        blocked: set[Kind] = set()
        quotas: dict[str, ProjectQuota] = {}
        placed = 0
        for row in order:
            res = resources_of(row)
            kind = kind_of(res)
            if kind in blocked:
                continue
            async with one_item(tx, f"notebook={row['id']}", "placing from the queue"):
                project = row["project"]
                if project not in quotas:
                    quotas[project] = await ProjectQuota.load(tx, project, self.config.quota)
                refusal = quotas[project].refusal(res)
                if refusal is not None:
                    await restate(tx, row, f"{QUOTA_WAIT}: {refusal.message}")
                    continue
                chosen = await self._room(tx, res, row["last_host_id"], now=now)
                if chosen is None:
                    blocked.add(kind)
                    await restate(tx, row, f"waiting for {res.describe()}")
                    continue
                await self._place(
                    tx, row, chosen, f"placed on {chosen.host} from the queue", now=now
                )
                quotas[project].take(res)
                placed += 1
        return placed

    async def _room(
        self, tx: Tx, res: placement.Resources, last_host: str | None, *, now: float
    ) -> placement.Placement | None:
        return await placement.find_host(
            tx,
            res,
            now=now,
            fresh_within_s=self.heartbeats.ttl_s,
            last_host=last_host,
            strategy=self.config.placement,
            disk_floor=placement.DiskFloor.of(self.config),
        )

    async def _place(
        self,
        tx: Tx,
        row: Row,
        chosen: placement.Placement,
        reason: str,
        *,
        now: float,
        **changes: object,
    ) -> None:
        """Reserve ``chosen`` for ``row``, record STARTING there, use the project's turn."""
        await placement.reserve(tx, chosen, row["id"])
        await change_state(
            tx, row, S.STARTING, reason, now=now, board=self.board, host_id=chosen.host, **changes
        )
        await tx.run("UPDATE projects SET last_placed_at = ? WHERE name = ?", (now, row["project"]))
