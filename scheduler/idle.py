"""Idle notebooks stop themselves: the scheduler's half of the idle signal.

Agents measure (:mod:`agent.activity`, :mod:`agent.proxy_access`): each heartbeat carries,
for the notebooks whose activity moved, when they were last active and what showed it
(editor traffic, SSH, a busy kernel, a terminal, code-server's heartbeat, GPU or CPU use
above the ``[idle]`` thresholds). :class:`scheduler.access.ProxyActivity` writes that to
``notebooks.last_activity_at`` and ``activity_signal``; the last activity never goes back.

The scheduler decides, on the replica holding the maintenance lease (:func:`stop_idle`):

* The timeout that applies to a notebook is the shorter of its project's (the ``quotas`` row,
  else ``[quota] idle_timeout_s``; 0 means never) and the one its user asked for at ``run``
  (never longer than the project's: :func:`asked_refusal`). It is read at every decision, so an
  operator who sets or shortens a project's timeout reaches its running notebooks too.
* A notebook is idle since the later of its last activity and the start of its current run.
  It is stopped once it has been idle for its timeout *before the time every live replica has
  flushed what it received* (:meth:`scheduler.replicas.Replica.flushed_through`), so activity
  still held in another replica's buffer always counts.
* The stop is the normal one (STOPPING: the workspace is saved, billing ends) with a reason
  naming what was idle ("idle for 60 min: no editor traffic, kernels and terminals idle, GPU
  below 5%"), kept in the state history. It is not restarted, ``restart_on_timeout`` or not:
  that flag is for the runtime limit and lost hosts, where the work was not finished.
"""

from __future__ import annotations

import json
import logging

from common import wire
from common.config import QuotaDefaults, SchedulerConfig
from common.durations import human
from common.errors import ApiError
from common.states import NotebookState
from scheduler.board import AssignmentBoard
from scheduler.db import Row, Tx
from scheduler.lifecycle import change_state
from scheduler.loops.base import one_item

log = logging.getLogger(__name__)

#: The project's timeout (its own, else the default: 0 is never) beside the notebook's.
_PROJECT_TIMEOUT = "COALESCE(q.idle_timeout_s, CAST(? AS DOUBLE PRECISION))"

#: RUNNING notebooks idle past the timeout that applies to them (the parameters: the default
#: four times, then the time through which activity is known twice).
_DUE = (
    "SELECT * FROM (SELECT n.*, CASE "
    f"WHEN n.idle_timeout_s IS NULL THEN {_PROJECT_TIMEOUT} "
    f"WHEN {_PROJECT_TIMEOUT} > 0 AND {_PROJECT_TIMEOUT} < n.idle_timeout_s "
    f"THEN {_PROJECT_TIMEOUT} ELSE n.idle_timeout_s END AS idle_limit_s "
    "FROM notebooks n LEFT JOIN quotas q ON q.project = n.project "
    "WHERE n.state = 'RUNNING') c "
    "WHERE c.idle_limit_s > 0 AND COALESCE(c.last_activity_at, 0) + c.idle_limit_s <= ? "
    "AND c.running_since + c.idle_limit_s <= ?"
)


def project_timeout(stored: float | None, defaults: QuotaDefaults) -> float | None:
    """A project's idle timeout from its ``quotas`` column (``None``: the default); ``None``
    when its notebooks are never stopped for being idle."""
    seconds = defaults.idle_timeout_s if stored is None else stored
    return seconds if seconds > 0 else None


def applying(project_s: float | None, asked_s: float | None) -> float | None:
    """The timeout that applies: the shorter of the project's and the notebook's own."""
    given = [s for s in (project_s, asked_s) if s is not None]
    return min(given) if given else None


async def project_timeout_of(tx: Tx, project: str, defaults: QuotaDefaults) -> float | None:
    row = await tx.one("SELECT idle_timeout_s FROM quotas WHERE project = ?", (project,))
    return project_timeout(row["idle_timeout_s"] if row is not None else None, defaults)


def asked_refusal(project: str, project_s: float | None, asked_s: float | None) -> ApiError | None:
    """403 when a notebook asks for a longer idle timeout than its project allows."""
    if asked_s is None or project_s is None or asked_s <= project_s:
        return None
    return ApiError(
        "forbidden",
        f"project {project} stops notebooks idle for {human(project_s)}; a notebook may ask "
        f"for a shorter idle timeout, not a longer one (asked for {human(asked_s)})",
        limit="idle_timeout_s",
        requested=asked_s,
        quota=project_s,
    )


def status(
    row: Row,
    *,
    project_s: float | None,
    now: float,
    pending: tuple[float, str] | None = None,
) -> wire.IdleStatus | None:
    """A RUNNING notebook's idle signal as :func:`stop_idle` sees it (``pending``: activity
    this replica received and has not written yet); ``None`` in any other state."""
    since = row["running_since"]
    if row["state"] != NotebookState.RUNNING or since is None:
        return None
    at, signal = row["last_activity_at"], row["activity_signal"]
    if pending is not None and (at is None or pending[0] > at):
        at, signal = pending
    if at is None or at < since:
        at, signal = since, "started"
    return wire.IdleStatus(
        last_active_at=at,
        signal=signal or "editor traffic",
        idle_s=max(0.0, now - at),
        timeout_s=applying(project_s, row["idle_timeout_s"]),
    )


def what_was_idle(row: Row, config: SchedulerConfig) -> str:
    """Every signal that showed nothing, for the reason of an idle stop."""
    traffic = "editor or SSH" if json.loads(row["ssh_public_keys"] or "[]") else "editor"
    parts = [f"no {traffic} traffic"]
    editor = config.catalog.editors.get(row["editor"])
    api = editor.activity_api if editor is not None else ""
    if api == "jupyter":
        parts.append("kernels and terminals idle")
    elif api == "code-server":
        parts.append("code-server idle")
    if row["gpu"]:
        parts.append(f"GPU below {config.idle.gpu_busy_pct:g}%")
    else:
        parts.append(f"CPU below {config.idle.cpu_busy_pct:g}%")
    return ", ".join(parts)


async def stop_idle(
    tx: Tx,
    *,
    now: float,
    through: float,
    config: SchedulerConfig,
    board: AssignmentBoard,
) -> int:
    """Stop every RUNNING notebook idle for its timeout before ``through`` (see the module
    docstring); how many were stopped."""
    default = config.quota.idle_timeout_s
    rows = await tx.all(_DUE, (default,) * 4 + (through, through))
    for row in rows:
        limit = row["idle_limit_s"]
        why = f"idle for {human(limit)}: {what_was_idle(row, config)}"
        if row["restart_on_timeout"]:
            why += "; not restarted (restart-on-timeout is for the runtime limit)"
        async with one_item(tx, f"notebook={row['id']}", "stop when idle"):
            await change_state(
                tx, row, NotebookState.STOPPING, why, now=now, board=board, desired="stopped"
            )
            log.info("notebook=%s stopped: %s", row["id"], why)
    return len(rows)
