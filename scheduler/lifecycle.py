"""The one function that changes a notebook's state, and what goes with each change.

:func:`change_state` is the only code that assigns ``notebooks.state``, and :func:`restate` the
only other code that writes ``state_reason``: a grep for ``lifecycle`` finds every place a
notebook's state or reason changes. Creation too goes through :func:`change_state`: a new
notebook is inserted as a STOPPED notebook of generation 0 that never ran (no history, no host)
and started in the same transaction (:mod:`scheduler.admission`), so its history begins with
the QUEUED or STARTING that :func:`change_state` records. :func:`change_state` runs inside the
caller's write transaction and:

* validates the transition with :func:`common.states.check` (an idempotent repeat records
  nothing and returns ``False``; a forbidden one raises ``InvalidTransition``);
* stamps ``state_at`` and ``state_reason``, appends ``state_history``, bumps ``version`` with a
  ``WHERE id = ? AND version = ?`` guard;
* on QUEUED: stamps ``queued_at``;
* on RUNNING: sets ``running_since`` and ``initialized``, and opens the run's row in the usage
  ledger (what it is billed as: GPU model and count, CPUs, flavor);
* when leaving RUNNING: closes the run's usage at
  ``max(reported, billed_minutes(running_since, left_at))`` and clears ``running_since``
  (``billed_until`` moves ``left_at`` back, e.g. to a lost host's last heartbeat);
* entering or leaving STARTING/RUNNING (:data:`common.states.ACTIVE`): adds to or takes from
  the project's use (``projects.gpus_used``, ``cpus_used``, ``notebooks_active``), which the
  quota check reads; entering STARTING (a placement: only :mod:`scheduler.admission` makes
  it) also stamps ``projects.last_placed_at``, the project's turn in the queue's fair order
  (:mod:`scheduler.queue`), in the same write;
* entering STOPPED, FAILED, ERROR or DELETED: frees the GPUs and the host (``host_id = NULL``,
  ``last_host_id`` remembered) and forgets the workspace's disk use on that host;
* bumps the assignment version of the host(s) involved, recomputes their capacity counters and
  wakes their long-polls on commit.

**What the scheduler wants** of a notebook is ``notebooks.desired``: the agent's three
(``running``, ``stopped``, ``deleted``; :data:`common.wire.Desired`) plus :data:`RESTARTED`,
"stop this run, then run the notebook again". The scheduler sets it when it stops a notebook
for its own reason (runtime limit, drain: :func:`stop_by_scheduler`) or loses its host; the
notebook's host is told ``stopped`` (:func:`assigned_desired`), and once the notebook has
settled as STOPPED or ERROR the maintenance loop queues it again as a new generation. A
notebook that FAILED to stop is not started again (restarting it could restore a workspace
older than the one it failed to save): entering FAILED turns the intent into ``stopped``. A
user's start, stop or delete replaces it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from common import wire
from common.billing import billed_minutes
from common.errors import conflict
from common.states import ACTIVE, NotebookState, check
from scheduler import billing
from scheduler.board import AssignmentBoard
from scheduler.db import Row, Tx
from scheduler.placement import refresh_hosts, refresh_statement, release

S = NotebookState

#: Entering one of these gives the notebook's GPUs and host back.
RELEASING = frozenset({S.STOPPED, S.FAILED, S.ERROR, S.DELETED})

#: ``desired``: stop this run, then run the notebook again once it has settled.
RESTARTED = "restarted"
#: The settled states a notebook to be restarted is started again from.
RESTARTS_FROM = frozenset({S.STOPPED, S.ERROR})

#: Columns a caller may change together with the state.
_EXTRA_COLUMNS = frozenset({"desired", "generation", "host_id"})


async def change_state(
    tx: Tx,
    notebook: Row,
    target: NotebookState,
    reason: str,
    *,
    now: float,
    board: AssignmentBoard,
    billed_until: float | None = None,
    **changes: object,
) -> Row | None:
    """Move ``notebook`` (a row read in this transaction) to ``target``.

    Returns the notebook's row as it is now if recorded (read back by the update itself),
    ``None`` for a repeat. ``changes`` may set ``desired``, ``generation`` and ``host_id`` in
    the same update.
    """
    unknown = set(changes) - _EXTRA_COLUMNS
    if unknown:
        raise ValueError(f"change_state cannot set {sorted(unknown)}")
    current = S(notebook["state"])
    if not check(current, target):
        return None

    columns: dict[str, object] = {
        "state": target.value,
        "state_reason": reason,
        "state_at": now,
        **changes,
    }
    if target == S.QUEUED:
        columns["queued_at"] = now
    if target == S.RUNNING:
        columns["running_since"] = now
        columns["initialized"] = 1
        await billing.open_run(tx, notebook, started_at=now)
    if current == S.RUNNING:
        left_at = now if billed_until is None else max(notebook["running_since"], billed_until)
        await close_run(tx, notebook, left_at=left_at)
        columns["running_since"] = None
    host_before = notebook["host_id"] or notebook["last_host_id"]
    host_after = changes.get("host_id", notebook["host_id"])
    if target in RELEASING:
        await release(tx, notebook["id"])
        columns["host_id"] = None
        columns["workspace_used_bytes"] = None
        columns["workspace_used_at"] = None
        host_after = None
    if host_after is not None:
        columns["last_host_id"] = host_after
    if target in RELEASING and "desired" not in changes:
        desired = notebook["desired"]
        # A notebook that stopped or failed on its own is not to be started again by an agent;
        # one to be restarted is, unless it failed to stop (see the module docstring).
        if desired == "running" or (desired == RESTARTED and target not in RESTARTS_FROM):
            columns["desired"] = "stopped"

    # The project's use, the history and the notebook's row are written in one go
    # (Tx.all_with): none of them reads what another writes. So are the counters of the hosts
    # involved, for a GPU notebook: they count GPUs, written before, and the CPUs of CPU
    # notebooks, which this one is not. A CPU notebook's hosts count its new host_id: after.
    generation = changes.get("generation", notebook["generation"])
    hosts = {host_before, host_after}
    writes: list[tuple[str, Sequence[object]]] = [
        (
            "INSERT INTO state_history (notebook_id, state, reason, at, generation) "
            "VALUES (?, ?, ?, ?, ?)",
            (notebook["id"], target.value, reason, now, int(generation)),
        )
    ]
    if (current in ACTIVE) != (target in ACTIVE):
        placed_at = now if target == S.STARTING else None
        writes.append(_count_use(notebook, 1 if target in ACTIVE else -1, placed_at=placed_at))
    refresh = refresh_statement(hosts, bump=True)
    together = notebook["gpu"] > 0 and refresh is not None
    if together:
        writes.append(refresh)

    assignments = ", ".join(f"{name} = ?" for name in columns)
    updated = await tx.all_with(
        writes,
        f"UPDATE notebooks SET {assignments}, version = version + 1 WHERE id = ? AND version = ? "
        "RETURNING *",
        (*columns.values(), notebook["id"], notebook["version"]),
    )
    if len(updated) != 1:
        raise conflict(f"notebook {notebook['id']} changed concurrently; try again")
    if not together:
        await refresh_hosts(tx, hosts, bump=True)
    board.wake_on_commit(tx, (h for h in hosts if h))
    return updated[0]


async def restate(tx: Tx, notebook: Row, reason: str) -> bool:
    """Say why ``notebook`` stays in its state (a queued one waits for quota rather than room):
    the reason changes, the state and its history do not. Written only when the reason
    changes; returns whether it was."""
    if notebook["state_reason"] == reason:
        return False
    await tx.run(
        "UPDATE notebooks SET state_reason = ?, version = version + 1 WHERE id = ?",
        (reason, notebook["id"]),
    )
    return True


def assigned_desired(desired: str) -> wire.Desired:
    """What the notebook's host is told to do for a stored ``desired``: a notebook to be
    restarted is, on its host, to be stopped (it runs again later, as a new generation)."""
    return "stopped" if desired == RESTARTED else cast(wire.Desired, desired)


def _count_use(
    notebook: Row, sign: int, *, placed_at: float | None
) -> tuple[str, tuple[object, ...]]:
    """The write that keeps the project's use (:func:`scheduler.quota.use`) as ``notebook``
    enters (``+1``) or leaves (``-1``) the states that count against quota; a CPU notebook's
    CPUs count, a GPU notebook's come with its GPUs. ``placed_at``: it was placed then (the
    project's turn)."""
    gpu = notebook["gpu"]
    cpus = notebook["cpu"] if gpu == 0 else 0
    turn = ", last_placed_at = ?" if placed_at is not None else ""
    return (
        "UPDATE projects SET gpus_used = gpus_used + ?, cpus_used = cpus_used + ?, "
        f"notebooks_active = notebooks_active + ?{turn} WHERE name = ?",
        (sign * gpu, sign * cpus, sign, *([placed_at] if turn else []), notebook["project"]),
    )


async def close_run(tx: Tx, notebook: Row, *, left_at: float) -> None:
    """Bill the run that is ending: at least every commenced minute the scheduler saw."""
    since = notebook["running_since"]
    if since is None:
        return
    await add_usage(tx, notebook["id"], notebook["generation"], billed_minutes(since, left_at))


async def add_usage(tx: Tx, notebook_id: str, generation: int, minutes: int) -> None:
    """Keep the larger of the stored and the reported cumulative minutes (replays bill once)."""
    await tx.run(
        "INSERT INTO usage (notebook_id, generation, billed_minutes) VALUES (?, ?, ?) "
        "ON CONFLICT (notebook_id, generation) "
        "DO UPDATE SET billed_minutes = CASE WHEN excluded.billed_minutes > usage.billed_minutes "
        "THEN excluded.billed_minutes ELSE usage.billed_minutes END",
        (notebook_id, generation, minutes),
    )


async def stop_by_scheduler(
    tx: Tx, row: Row, why: str, *, again: str, now: float, board: AssignmentBoard
) -> None:
    """Stop a notebook for the scheduler's own reason (runtime limit, drain). One with
    ``restart_on_timeout`` is to be restarted once stopped (``desired`` :data:`RESTARTED`),
    and the reason says so (``again`` is how)."""
    restart = bool(row["restart_on_timeout"])
    await change_state(
        tx,
        row,
        S.STOPPING,
        why + (f"; {again}" if restart else ""),
        now=now,
        board=board,
        desired=RESTARTED if restart else "stopped",
    )
