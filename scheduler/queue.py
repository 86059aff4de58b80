"""The queue: notebooks that quota allows but no host has room for, placed as room appears.

Order (:func:`fair_order`): projects take turns. The project served least recently (its last
placement is the oldest, or it never had one) goes first, then the next, round after round;
within a project, first queued, first placed. A project that queued 100 notebooks cannot
starve one that queued a single notebook later: that one is next as soon as room appears.
``position`` 1 is the next to be placed.

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


def fair_order(rows: Iterable[Row], last_placed: dict[str, float | None]) -> list[Row]:
    """``rows`` (QUEUED notebooks) in placement order; ``last_placed`` is when each project
    last had a notebook placed (``None``: never)."""
    by_project: dict[str, list[Row]] = {}
    for row in sorted(rows, key=lambda r: (r["queued_at"], r["created_at"], r["id"])):
        by_project.setdefault(row["project"], []).append(row)
    projects = sorted(
        by_project,
        key=lambda p: (
            last_placed.get(p) is not None,
            last_placed.get(p) or 0.0,
            by_project[p][0]["queued_at"],
            p,
        ),
    )
    order: list[Row] = []
    for turn in range(max((len(v) for v in by_project.values()), default=0)):
        order.extend(by_project[p][turn] for p in projects if turn < len(by_project[p]))
    return order


async def queued(tx: Tx) -> list[Row]:
    rows = await tx.all("SELECT * FROM notebooks WHERE state = 'QUEUED'")
    if not rows:
        return []
    served = await tx.all(
        "SELECT name, last_placed_at FROM projects WHERE name IN "
        "(SELECT DISTINCT project FROM notebooks WHERE state = 'QUEUED')"
    )
    return fair_order(rows, {r["name"]: r["last_placed_at"] for r in served})


async def served(tx: Tx, project: str, now: float) -> None:
    """Record that ``project`` just had a notebook placed (its turn is used)."""
    await tx.run("UPDATE projects SET last_placed_at = ? WHERE name = ?", (now, project))


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
                await _waiting(tx, row, f"{QUOTA_WAIT}: {refusal.message}")
                continue
            chosen = await placement.find_host(
                tx,
                res,
                now=now,
                fresh_within_s=self.fresh_within_s(),
                last_host=row["last_host_id"],
                strategy=self.config.placement,
                disk_floor=placement.DiskFloor.of(self.config),
            )
            if chosen is None:
                blocked.add(kind)
                await _waiting(tx, row, f"waiting for {res.describe()}")
                continue
            await placement.reserve(tx, chosen, row["id"])
            await change_state(
                tx,
                row,
                S.STARTING,
                f"placed on {chosen.host} from the queue",
                now=now,
                board=self.board,
                host_id=chosen.host,
            )
            await served(tx, project, now)
            u = used[project]
            used[project] = wire.QuotaUse(
                gpus=u.gpus + res.gpu,
                cpus=u.cpus + (res.cpu if res.gpu == 0 else 0),
                notebooks=u.notebooks + 1,
            )
            placed += 1
        return placed


async def _waiting(tx: Tx, row: Row, reason: str) -> None:
    """Say why a queued notebook still waits (written only when the reason changes)."""
    if row["state_reason"] != reason:
        await tx.run(
            "UPDATE notebooks SET state_reason = ?, version = version + 1 WHERE id = ?",
            (reason, row["id"]),
        )
