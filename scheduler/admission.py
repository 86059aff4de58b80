"""Admission: the one path by which a notebook gets a host or a place in the queue, and the
placing of the queue.

Every placement runs in the caller's transaction through :class:`Admission`:

* :meth:`Admission.start` runs a notebook's next generation: a new one (stored as a STOPPED
  notebook of generation 0 that never ran, see :mod:`scheduler.lifecycle`) or a settled one a
  user starts. 403 over quota (:class:`scheduler.quota.ProjectQuota`: a per-notebook limit,
  then the project's limits); STARTING on a host with room, else QUEUED; a request of a kind
  that already has notebooks waiting queues behind them; 503 when no registered host could
  ever hold it (asked only when it would queue: a request that fits now obviously could). A
  refused request stores nothing. :meth:`Admission.start_many` starts several at once (the
  creates that arrived together, :class:`scheduler.notebooks.NotebookService`), each as if
  alone, in order.
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
:func:`scheduler.placement.find_host`, its GPUs reserved, and STARTING recorded with the host
by :func:`scheduler.lifecycle.change_states`, which also uses the project's turn
(``projects.last_placed_at``, the queue's fairness).

A placement is on the hot path of every create (scripts/bench-scheduler): on PostgreSQL each
statement is a round trip inside the writers' serialized section, so statements are combined
where one can answer: quota limits and use are one read per project for a whole batch; the
choice of a host, the nobody-waits-for-this-kind check and the GPU reservation are one update
(``find_host(..., reserve_for=...)``), which says what it reserved (:class:`Started`); every
change of state of a batch is one write (:func:`scheduler.lifecycle.change_states`), and the
notebooks' new rows come back from it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from common import wire
from common.config import SchedulerConfig
from common.errors import ApiError
from common.states import NotebookState
from scheduler import placement
from scheduler.board import AssignmentBoard
from scheduler.db import Row, Tx
from scheduler.lifecycle import Move, change_state, change_states, restate
from scheduler.loops.base import one_item
from scheduler.queue import QUOTA_WAIT, Kind, kind_of, none_waiting, queued, resources_of
from scheduler.quota import ProjectQuota

S = NotebookState


@dataclass(frozen=True)
class Started:
    """What :meth:`Admission.start` made of a notebook: its row as it now is, and the GPUs it
    reserved (none while QUEUED), so the reply needs no second look."""

    row: Row
    gpus: tuple[wire.GpuRef, ...] = ()


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

    async def start(self, tx: Tx, row: Row, *, now: float, reason_suffix: str = "") -> Started:
        """Run the next generation of ``row`` (settled, or just created): 403 over quota;
        STARTING on a host with room, else QUEUED (no room, or notebooks of its kind already
        wait); 503 when no registered host could ever hold it."""
        [outcome] = await self.start_many(tx, [(row, reason_suffix)], now=now)
        if isinstance(outcome, ApiError):
            raise outcome
        return outcome

    async def start_many(
        self, tx: Tx, requests: Sequence[tuple[Row, str]], *, now: float
    ) -> list[Started | ApiError]:
        """:meth:`start` for each ``(row, reason_suffix)`` of ``requests`` (different
        notebooks), in order, as if one after another: each is checked against its project's
        quota with the ones before it placed, and once one queues, the later ones of its kind
        queue behind it. A refused one (its :class:`ApiError` in its place) has stored
        nothing. One quota read per project and one write of every change of state
        (:func:`scheduler.lifecycle.change_states`) serve them all."""
        await self.heartbeats.flush(tx)
        quotas: dict[str, ProjectQuota] = {}
        queueing: set[Kind] = set()
        outcomes: list[Started | ApiError] = []
        moves: list[tuple[int, Move, tuple[wire.GpuRef, ...]]] = []
        for row, suffix in requests:
            res = resources_of(row)
            project = row["project"]
            if project not in quotas:
                quotas[project] = await ProjectQuota.load(tx, project, self.config.quota)
            refusal = quotas[project].request_refusal(res)
            if refusal is not None:
                outcomes.append(refusal)
                continue
            changes = {"desired": "running", "generation": row["generation"] + 1}
            kind = kind_of(res)
            chosen = (
                None
                if kind in queueing
                else await self._room(
                    tx, res, row, now=self.clock(), also=none_waiting(res, besides=row["id"])
                )
            )
            if chosen is None:
                why = await placement.never_fits(tx, res)
                if why is not None:
                    outcomes.append(
                        ApiError(
                            "no_capacity",
                            f"{why}; a notebook of {res.describe()} could never be placed",
                            requested=res.gpu or res.cpu,
                            unit="GPU" if res.gpu else "CPU",
                        )
                    )
                    continue
                # Queued (in this call's write below): the later ones of its kind wait behind.
                queueing.add(kind)
                reason = f"waiting for {res.describe()}{suffix}"
                move = Move(row, S.QUEUED, reason, changes=changes)
                moves.append((len(outcomes), move, ()))
            else:
                quotas[project].take(res)
                reason = f"placed on {chosen.host}{suffix}"
                move = Move(row, S.STARTING, reason, changes={**changes, "host_id": chosen.host})
                moves.append((len(outcomes), move, chosen.reserved))
            outcomes.append(Started(row))  # replaced below by the row as written
        rows = await change_states(tx, [m for _, m, _ in moves], now=now, board=self.board)
        for (index, _, gpus), written in zip(moves, rows, strict=True):
            assert written is not None  # from a settled state: never a repeat
            outcomes[index] = Started(written, gpus)
        return outcomes

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
                chosen = await self._room(tx, res, row, now=now)
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
        self,
        tx: Tx,
        res: placement.Resources,
        row: Row,
        *,
        now: float,
        also: tuple[str, list[object]] | None = None,
    ) -> placement.Placement | None:
        """A host with room for ``row`` (its GPUs reserved for it), or ``None``."""
        return await placement.find_host(
            tx,
            res,
            now=now,
            fresh_within_s=self.heartbeats.ttl_s,
            last_host=row["last_host_id"],
            strategy=self.config.placement,
            disk_floor=placement.DiskFloor.of(self.config),
            also=also,
            reserve_for=row["id"],
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
    ) -> Row:
        """Record STARTING on ``chosen`` (its GPUs reserved for ``row`` by :meth:`_room`),
        which uses the project's turn; returns the notebook's row as it now is."""
        placed = await change_state(
            tx, row, S.STARTING, reason, now=now, board=self.board, host_id=chosen.host, **changes
        )
        assert placed is not None  # a startable notebook or a queued one: never a repeat
        return placed
