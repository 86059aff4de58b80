"""Project quotas: limits, current use, and the check made in the same transaction as the
reservation (so fifty concurrent runs against a quota of 4 GPUs never put 5 in use), one way
for every placement (:class:`ProjectQuota`).

Only STARTING and RUNNING notebooks count (:data:`common.states.ACTIVE`). A GPU notebook's CPUs
come with its GPUs (the flavor's shape), so the CPU limits count CPU notebooks (``gpu = 0``)
only, as usage does. A project's limits are the scheduler config's ``[quota]`` defaults unless
an operator set its own (``quotas`` table, one nullable column per limit).
"""

from __future__ import annotations

from dataclasses import dataclass

from common import wire
from common.config import QuotaDefaults
from common.errors import ApiError, invalid
from scheduler.db import Row, Tx
from scheduler.placement import Resources

LIMITS = (
    "gpus",
    "cpus",
    "notebooks",
    "gpus_per_notebook",
    "cpus_per_notebook",
    "idle_timeout_s",
)


#: A project's use and its own limits (NULL: the default), in one row.
_LOAD = (
    "SELECT p.gpus_used, p.cpus_used, p.notebooks_active, "
    + ", ".join(f"q.{name} AS {name}" for name in LIMITS)
    + " FROM projects p LEFT JOIN quotas q ON q.project = p.name WHERE p.name = ?"
)


def _limits(row: Row | None, defaults: QuotaDefaults) -> wire.Quota:
    values = {
        name: (row[name] if row is not None and row[name] is not None else getattr(defaults, name))
        for name in LIMITS
    }
    return wire.Quota(**values)


def _use(row: Row | None) -> wire.QuotaUse:
    if row is None:
        return wire.QuotaUse(gpus=0, cpus=0, notebooks=0)
    return wire.QuotaUse(
        gpus=row["gpus_used"], cpus=row["cpus_used"], notebooks=row["notebooks_active"]
    )


async def limits(tx: Tx, project: str, defaults: QuotaDefaults) -> wire.Quota:
    return _limits(await tx.one("SELECT * FROM quotas WHERE project = ?", (project,)), defaults)


async def use(tx: Tx, project: str) -> wire.QuotaUse:
    """What ``project`` uses now: the counters :func:`scheduler.lifecycle.change_state` keeps
    as its notebooks enter and leave the states that count (one row, not a sum over them)."""
    return _use(
        await tx.one(
            "SELECT gpus_used, cpus_used, notebooks_active FROM projects WHERE name = ?",
            (project,),
        )
    )


def per_notebook_violation(project: str, quota: wire.Quota, res: Resources) -> ApiError | None:
    """A request no amount of waiting makes acceptable."""
    if res.gpu > quota.gpus_per_notebook:
        return _forbidden(
            f"project {project}: a notebook may have at most {quota.gpus_per_notebook} GPUs "
            f"(asked for {res.gpu})",
            limit="gpus_per_notebook",
            requested=res.gpu,
            quota=quota.gpus_per_notebook,
        )
    if res.gpu == 0 and res.cpu > quota.cpus_per_notebook:
        return _forbidden(
            f"project {project}: a notebook may have at most {quota.cpus_per_notebook} CPUs "
            f"(asked for {res.cpu})",
            limit="cpus_per_notebook",
            requested=res.cpu,
            quota=quota.cpus_per_notebook,
        )
    return None


def project_violation(
    project: str, quota: wire.Quota, used: wire.QuotaUse, res: Resources
) -> ApiError | None:
    """The first project limit that admitting ``res`` now would exceed, or ``None``."""
    cpus = res.cpu if res.gpu == 0 else 0
    checks = (
        ("gpus", "GPUs in use", used.gpus, res.gpu, quota.gpus),
        ("cpus", "CPUs in use (CPU notebooks)", used.cpus, cpus, quota.cpus),
        ("notebooks", "notebooks running", used.notebooks, 1, quota.notebooks),
    )
    for limit, what, current, requested, allowed in checks:
        if requested and current + requested > allowed:
            return _forbidden(
                f"project {project}: {what} {current} + {requested} requested would exceed "
                f"the quota of {allowed} (an operator can change it with "
                f"`nbfleet admin project quota {project}`)",
                limit=limit,
                used=current,
                requested=requested,
                quota=allowed,
            )
    return None


@dataclass
class ProjectQuota:
    """A project's limits and what it uses now, read once per transaction: the one way a
    placement is checked against quota, for a request (:meth:`request_refusal`) and for the
    queue (:meth:`refusal`, then :meth:`take` for each notebook placed)."""

    project: str
    limits: wire.Quota
    used: wire.QuotaUse

    @classmethod
    async def load(cls, tx: Tx, project: str, defaults: QuotaDefaults) -> ProjectQuota:
        """Limits and use in one statement (a placement's first read)."""
        row = await tx.one(_LOAD, (project,))
        return cls(project, _limits(row, defaults), _use(row))

    def refusal(self, res: Resources) -> ApiError | None:
        """The first project limit that placing ``res`` now would exceed, or ``None``."""
        return project_violation(self.project, self.limits, self.used, res)

    def request_refusal(self, res: Resources) -> ApiError | None:
        """Why a request for ``res`` is refused now (403): a per-notebook limit, which no
        waiting changes, or a project limit."""
        return per_notebook_violation(self.project, self.limits, res) or self.refusal(res)

    def take(self, res: Resources) -> None:
        """Count ``res`` as used: it was just placed in this transaction."""
        self.used = wire.QuotaUse(
            gpus=self.used.gpus + res.gpu,
            cpus=self.used.cpus + (res.cpu if res.gpu == 0 else 0),
            notebooks=self.used.notebooks + 1,
        )


async def update(tx: Tx, project: str, change: wire.QuotaUpdate) -> None:
    idle = change.idle_timeout_s
    if idle is not None and 0 < idle < wire.MIN_IDLE_TIMEOUT_S:
        raise invalid(
            f"idle_timeout_s {idle:g}: must be 0 (never) or at least "
            f"{wire.MIN_IDLE_TIMEOUT_S:g} seconds",
            field="idle_timeout_s",
        )
    values = {name: getattr(change, name) for name in LIMITS if getattr(change, name) is not None}
    await tx.run(
        "INSERT INTO quotas (project) VALUES (?) ON CONFLICT (project) DO NOTHING", (project,)
    )
    if values:
        sets = ", ".join(f"{name} = ?" for name in values)
        await tx.run(f"UPDATE quotas SET {sets} WHERE project = ?", (*values.values(), project))


def _forbidden(message: str, **detail: object) -> ApiError:
    return ApiError("forbidden", message, **detail)
