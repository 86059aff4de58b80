"""The queue: notebooks that quota allows but no host has room for, placed as room appears.

Order (:func:`fair_order`): projects take turns. Each project's QUEUED notebooks are numbered
1, 2, 3... by the time they were queued; the queue is ordered by that number, then by time. A
project that queued 100 notebooks and one that queued 1 a minute later alternate, so one
project's burst cannot starve another. ``position`` 1 is the next to be placed.

Placement (:func:`dispatch`, one transaction) walks the queue in that order:

* a notebook its project's quota does not admit right now is passed over (``blocked_by =
  quota``) and blocks nobody else;
* the first notebook that does not fit blocks every later one of the same kind (GPU or CPU,
  same flavor): the queue head is placed first and is never overtaken by smaller requests of
  its kind, so a 4-GPU request cannot starve behind a stream of 1-GPU ones;
* the rest are placed, each with the placement rules, and go STARTING.

A new request of a kind that already has notebooks waiting joins the queue instead of taking
the room the head waits for.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from common import wire
from common.config import SchedulerConfig
from common.states import NotebookState
from scheduler import placement, quota
from scheduler.board import AssignmentBoard
from scheduler.db import Row, Tx
from scheduler.lifecycle import change_state

S = NotebookState

Kind = tuple[bool, str | None]


def resources_of(row: Row) -> placement.Resources:
    return placement.Resources(
        gpu=row["gpu"],
        cpu=row["cpu"],
        memory_mb=row["memory_mb"],
        disk_gb=row["disk_gb"],
        flavor=row["flavor"],
        gpu_model=row["gpu_model"],
    )


def kind_of(res: placement.Resources) -> Kind:
    return (res.gpu > 0, res.flavor)


def fair_order(rows: Iterable[Row]) -> list[Row]:
    """``rows`` (QUEUED notebooks) in placement order: each project's turn, then queue time."""
    ordered = sorted(rows, key=lambda r: (r["queued_at"], r["created_at"], r["id"]))
    turn: dict[str, int] = {}
    keyed = []
    for row in ordered:
        turn[row["project"]] = turn.get(row["project"], 0) + 1
        keyed.append((turn[row["project"]], row["queued_at"], row["created_at"], row["id"], row))
    keyed.sort(key=lambda k: k[:4])
    return [k[-1] for k in keyed]


async def queued(tx: Tx) -> list[Row]:
    return fair_order(await tx.all("SELECT * FROM notebooks WHERE state = 'QUEUED'"))


async def waiting_kinds(tx: Tx, *, besides: str) -> set[Kind]:
    """Kinds of request with notebooks other than ``besides`` waiting in the queue."""
    rows = await tx.all(
        "SELECT DISTINCT gpu > 0 AS gpu, flavor FROM notebooks WHERE state = 'QUEUED' AND id != ?",
        (besides,),
    )
    return {(bool(r["gpu"]), r["flavor"]) for r in rows}


QUOTA_WAIT = "waiting for project quota"


def _info(row: Row, position: int) -> wire.QueueInfo:
    return wire.QueueInfo(
        position=position,
        waiting_for=resources_of(row).describe(),
        queued_at=row["queued_at"] or row["state_at"],
        blocked_by="quota" if row["state_reason"].startswith(QUOTA_WAIT) else "capacity",
    )


async def queue_infos(tx: Tx) -> dict[str, wire.QueueInfo]:
    """Position and cause of every QUEUED notebook, by id."""
    return {row["id"]: _info(row, i) for i, row in enumerate(await queued(tx), 1)}


async def queue_info(tx: Tx, row: Row) -> wire.QueueInfo:
    """Position and cause of one QUEUED notebook."""
    order = await queued(tx)
    position = next((i for i, r in enumerate(order, 1) if r["id"] == row["id"]), len(order))
    return _info(row, position)


class Dispatcher:
    """Places queued notebooks; :meth:`dispatch` runs inside the caller's transaction."""

    def __init__(
        self,
        config: SchedulerConfig,
        board: AssignmentBoard,
        fresh_within_s: Callable[[], float],
    ) -> None:
        self.config = config
        self.board = board
        self.fresh_within_s = fresh_within_s

    async def dispatch(self, tx: Tx, *, now: float) -> int:
        """Place what can be placed now, in fair order; returns how many were placed."""
        order = await queued(tx)
        if not order:
            return 0
        blocked: set[Kind] = set()
        limits: dict[str, wire.Quota] = {}
        used: dict[str, wire.QuotaUse] = {}
        placed = 0
        for row in order:
            res = resources_of(row)
            kind = kind_of(res)
            if kind in blocked:
                continue
            project = row["project"]
            if project not in limits:
                limits[project] = await quota.limits(tx, project, self.config.quota)
                used[project] = await quota.use(tx, project)
            refusal = quota.project_violation(project, limits[project], used[project], res)
            if refusal is not None:
                reason = f"{QUOTA_WAIT}: {refusal.message}"
                if row["state_reason"] != reason:
                    await tx.run(
                        "UPDATE notebooks SET state_reason = ?, version = version + 1 WHERE id = ?",
                        (reason, row["id"]),
                    )
                continue
            chosen = await placement.find_host(
                tx,
                res,
                now=now,
                fresh_within_s=self.fresh_within_s(),
                last_host=row["last_host_id"],
                strategy=self.config.placement,
            )
            if chosen is None:
                blocked.add(kind)
                reason = f"waiting for {res.describe()}"
                if row["state_reason"] != reason:
                    await tx.run(
                        "UPDATE notebooks SET state_reason = ?, version = version + 1 WHERE id = ?",
                        (reason, row["id"]),
                    )
                continue
            await placement.reserve(tx, chosen, row["id"])
            fresh = await tx.one("SELECT * FROM notebooks WHERE id = ?", (row["id"],))
            assert fresh is not None
            await change_state(
                tx,
                fresh,
                S.STARTING,
                f"placed on {chosen.host} from the queue",
                now=now,
                board=self.board,
                host_id=chosen.host,
            )
            u = used[project]
            used[project] = wire.QuotaUse(
                gpus=u.gpus + res.gpu,
                cpus=u.cpus + (res.cpu if res.gpu == 0 else 0),
                notebooks=u.notebooks + 1,
            )
            placed += 1
        return placed
