"""The usage ledger and the usage report.

**Compute.** One ``usage`` row per run (notebook, generation), opened when the run reaches
RUNNING with what it is billed as (GPU model and count, CPUs, flavor, labels, project). Each
commenced minute of RUNNING is billed whole. Agents report the cumulative minutes of a run;
the row keeps the largest value it has seen, so a replayed or duplicated report can never bill
twice (a report's id is its ``(notebook, generation)``), and the scheduler closes a run with at
least the minutes it saw itself. GPU notebooks are billed in GPU-minutes per model (minutes ×
GPUs); CPU notebooks in CPU-minutes (minutes × CPUs).

**Storage.** A notebook's workspace size over time is the stored size of its newest snapshot,
from that snapshot until the next one (or until the notebook is deleted). GB-hours are
integrated over the asked period, GB = 10^9 bytes. The first ``free_storage_gb`` of each
notebook are free for ``free_storage_days`` from its creation; ``billable_storage_gb_hours`` is
the rest.

**Periods.** Minute *k* of a run covers ``[start + 60k, start + 60(k+1))`` and belongs to a period
when it begins in it, so adjacent periods add up to the whole run, with no minute counted twice.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from common import wire
from common.billing import billed_minutes
from common.config import SchedulerConfig
from common.errors import invalid
from scheduler.db import Row, Tx

GROUPS = ("project", "notebook", "flavor", "label")
NO_FLAVOR = "(no flavor)"
NO_LABEL = "(no label)"
GB = 1e9


async def open_run(tx: Tx, notebook: Row, *, started_at: float) -> None:
    """Record what the run starting now is billed as (called on the move to RUNNING)."""
    gpu = await tx.one(
        "SELECT model FROM gpus WHERE notebook_id = ? ORDER BY idx LIMIT 1", (notebook["id"],)
    )
    model = gpu["model"] if gpu is not None else notebook["gpu_model"]
    await tx.run(
        "INSERT INTO usage (notebook_id, generation, billed_minutes, project, started_at, "
        "gpu_model, gpus, cpus, flavor, labels) VALUES (?, ?, 0, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (notebook_id, generation) DO UPDATE SET project = excluded.project, "
        "started_at = excluded.started_at, gpu_model = excluded.gpu_model, "
        "gpus = excluded.gpus, cpus = excluded.cpus, flavor = excluded.flavor, "
        "labels = excluded.labels",
        (
            notebook["id"],
            notebook["generation"],
            notebook["project"],
            started_at,
            model if notebook["gpu"] > 0 else "",
            notebook["gpu"],
            notebook["cpu"],
            notebook["flavor"],
            notebook["labels"],
        ),
    )


def minutes_within(started: float, billed: int, start: float, end: float) -> int:
    """How many of a run's ``billed`` minutes begin inside ``[start, end)``."""
    if billed <= 0 or end <= start:
        return 0
    first = max(0, math.ceil((start - started) / 60))
    last = min(billed, math.ceil((end - started) / 60))
    return max(0, last - first)


def storage_gb_hours(
    sizes: list[tuple[float, int]],
    *,
    created_at: float,
    until: float,
    start: float,
    end: float,
    free_gb: float,
    free_days: float,
) -> tuple[float, float]:
    """``(total, billable)`` GB-hours of a workspace whose stored size became ``bytes`` at
    each ``(time, bytes)`` of ``sizes`` (sorted), held until ``until``, within ``[start,
    end)``."""
    free_until = created_at + free_days * 86400
    total = billable = 0.0
    for i, (at, size) in enumerate(sizes):
        seg_end = sizes[i + 1][0] if i + 1 < len(sizes) else until
        lo, hi = max(at, start), min(seg_end, end)
        if hi <= lo or size <= 0:
            continue
        gb = size / GB
        total += gb * (hi - lo) / 3600
        # The free part of this segment: the overlap with the free window.
        free_lo, free_hi = lo, min(hi, free_until)
        free_s = max(0.0, free_hi - free_lo)
        billable += max(0.0, gb - free_gb) * free_s / 3600 + gb * ((hi - lo) - free_s) / 3600
    return total, billable


@dataclass
class _Acc:
    notebooks: set[str] = field(default_factory=set)
    minutes: int = 0
    gpu_minutes: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    cpu_minutes: int = 0
    storage: float = 0.0
    billable: float = 0.0

    def row(self, group: str) -> wire.UsageRow:
        return wire.UsageRow(
            group=group,
            notebooks=len(self.notebooks),
            minutes=self.minutes,
            gpu_minutes=dict(sorted(self.gpu_minutes.items())),
            cpu_minutes=self.cpu_minutes,
            storage_gb_hours=round(self.storage, 6),
            billable_storage_gb_hours=round(self.billable, 6),
        )


def check_group(group_by: str, label_key: str | None, *, admin: bool) -> None:
    allowed = GROUPS if admin else tuple(g for g in GROUPS if g != "project")
    if group_by not in allowed:
        raise invalid(
            f"invalid query parameter `group_by`: {group_by!r} is not one of {', '.join(allowed)}",
            field="group_by",
        )
    if group_by == "label" and not label_key:
        raise invalid(
            "invalid query parameter `label_key`: group_by=label needs the label key to group "
            "by (e.g. label_key=team)",
            field="label_key",
        )


def _group(
    group_by: str,
    label_key: str | None,
    *,
    project: str,
    notebook: str,
    flavor: str | None,
    labels: str,
) -> str:
    if group_by == "project":
        return project
    if group_by == "notebook":
        return notebook
    if group_by == "flavor":
        return flavor or NO_FLAVOR
    value = json.loads(labels or "{}").get(label_key or "")
    return f"{label_key}={value}" if value is not None else NO_LABEL


async def report(
    tx: Tx,
    config: SchedulerConfig,
    *,
    projects: Iterable[str] | None,
    start: float,
    end: float,
    now: float,
    group_by: str,
    label_key: str | None = None,
) -> wire.UsageReport:
    """Usage of ``projects`` (all when ``None``) in ``[start, end)``, grouped."""
    where, params = "TRUE", []
    if projects is not None:
        names = sorted(set(projects))
        where = f"n.project IN ({', '.join('?' for _ in names)})"
        params = names
    accs: dict[str, _Acc] = defaultdict(_Acc)
    total = _Acc()
    runs = await tx.all(
        "SELECT u.*, n.project AS n_project, n.flavor AS n_flavor, n.labels AS n_labels, "
        "n.running_since, n.generation AS n_generation, n.gpu AS n_gpu, n.cpu AS n_cpu, "
        "n.state_at AS n_state_at "
        f"FROM usage u JOIN notebooks n ON n.id = u.notebook_id WHERE {where}",
        params,
    )
    for run in runs:
        billed = run["billed_minutes"]
        started = run["started_at"]
        if started is None:  # a run recorded before the ledger had start times
            started = run["n_state_at"] - billed * 60
        if run["running_since"] is not None and run["n_generation"] == run["generation"]:
            billed = max(billed, billed_minutes(run["running_since"], now))
        minutes = minutes_within(started, billed, start, end)
        if not minutes:
            continue
        key = _group(
            group_by,
            label_key,
            project=run["project"] or run["n_project"],
            notebook=run["notebook_id"],
            flavor=run["flavor"] if run["project"] else run["n_flavor"],
            labels=run["labels"] if run["project"] else run["n_labels"],
        )
        gpus = run["gpus"] if run["project"] else run["n_gpu"]
        cpus = run["cpus"] if run["project"] else run["n_cpu"]
        for acc in (accs[key], total):
            acc.notebooks.add(run["notebook_id"])
            acc.minutes += minutes
            if gpus > 0:
                acc.gpu_minutes[run["gpu_model"] or "GPU"] += minutes * gpus
            else:
                acc.cpu_minutes += minutes * cpus
    notebooks = await tx.all(
        "SELECT n.id, n.project, n.flavor, n.labels, n.created_at, n.state, n.state_at "
        f"FROM notebooks n WHERE {where} AND n.created_at < ? AND EXISTS "
        "(SELECT 1 FROM snapshots s WHERE s.notebook_id = n.id)",
        (*params, end),
    )
    for nb in notebooks:
        snaps = await tx.all(
            "SELECT created_at, stored_bytes FROM snapshots WHERE notebook_id = ? "
            "ORDER BY created_at, id",
            (nb["id"],),
        )
        until = nb["state_at"] if nb["state"] == "DELETED" else now
        used, billable = storage_gb_hours(
            [(s["created_at"], s["stored_bytes"]) for s in snaps],
            created_at=nb["created_at"],
            until=until,
            start=start,
            end=end,
            free_gb=config.free_storage_gb,
            free_days=config.free_storage_days,
        )
        if used <= 0:
            continue
        key = _group(
            group_by,
            label_key,
            project=nb["project"],
            notebook=nb["id"],
            flavor=nb["flavor"],
            labels=nb["labels"],
        )
        for acc in (accs[key], total):
            acc.notebooks.add(nb["id"])
            acc.storage += used
            acc.billable += billable
    return wire.UsageReport(
        start=start,
        end=end,
        group_by=group_by,
        items=[accs[k].row(k) for k in sorted(accs)],
        total=total.row("TOTAL"),
    )
