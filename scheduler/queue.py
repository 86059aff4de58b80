"""The queue: notebooks that quota allows but no host has room for, in the order they are
placed as room appears, and where each one stands. Placing them is admission's
(:meth:`scheduler.admission.Admission.dispatch`); this module only reads.

Order (:func:`fair_order`): projects take turns. The project served least recently (its last
placement is the oldest, or it never had one) goes first, then the next, round after round;
within a project, first queued, first placed. A project that queued 100 notebooks cannot
starve one that queued a single notebook later: that one is next as soon as room appears.
``position`` 1 is the next to be placed.

A notebook waits for room (``blocked_by = capacity``) or, when its project's quota does not
admit it right now, for quota (``blocked_by = quota``, its reason starting with
:data:`QUOTA_WAIT`). A new request of a kind (GPU or CPU, same flavor: :func:`kind_of`) that
already has notebooks waiting joins the queue instead of taking the room the head waits for
(:func:`none_waiting`, a condition of the placement's own statement).
"""

from __future__ import annotations

from collections.abc import Iterable

from common import wire
from scheduler import placement
from scheduler.db import Row, Tx

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


def none_waiting(res: placement.Resources, *, besides: str) -> tuple[str, list[object]]:
    """A condition on the choice of a host (:func:`scheduler.placement.find_host`): that no
    notebook but ``besides`` waits in the queue for ``res``'s kind. Asked in the statement
    that picks the host, so a new request of a kind with notebooks waiting finds no room."""
    gpu = "gpu > 0" if res.gpu > 0 else "gpu = 0"
    flavor = "flavor = ?" if res.flavor is not None else "flavor IS NULL"
    return (
        "NOT EXISTS (SELECT 1 FROM notebooks WHERE state = 'QUEUED' AND id != ? "
        f"AND {gpu} AND {flavor})",
        [besides] if res.flavor is None else [besides, res.flavor],
    )


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
