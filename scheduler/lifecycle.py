"""The one function that changes a notebook's state, and what goes with each change.

:func:`change_states` is the only code that assigns ``notebooks.state`` (:func:`change_state`
is its call for one notebook), and :func:`restate` the only other code that writes
``state_reason``: a grep for ``lifecycle`` finds every place a notebook's state or reason
changes. Creation too goes through it: a new notebook is inserted as a STOPPED notebook of
generation 0 that never ran (no history, no host) and started in the same transaction
(:mod:`scheduler.admission`), so its history begins with the QUEUED or STARTING recorded here.
Several notebooks' changes (a batch of creates) are written together, in the statements one
takes. It runs inside the caller's write transaction and, for each notebook:

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

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from common import wire
from common.billing import billed_minutes
from common.errors import conflict
from common.states import ACTIVE, NotebookState, check
from scheduler import billing, metrics
from scheduler.board import AssignmentBoard
from scheduler.db import VALUES_CHUNK, Row, Tx, padded_values
from scheduler.placement import refresh_statement, release

S = NotebookState

#: Entering one of these gives the notebook's GPUs and host back.
RELEASING = frozenset({S.STOPPED, S.FAILED, S.ERROR, S.DELETED})

#: ``desired``: stop this run, then run the notebook again once it has settled.
RESTARTED = "restarted"
#: The settled states a notebook to be restarted is started again from.
RESTARTS_FROM = frozenset({S.STOPPED, S.ERROR})

#: Columns a caller may change together with the state.
_EXTRA_COLUMNS = frozenset({"desired", "generation", "host_id"})

#: The columns a change of state may write besides the state, its reason and its time, with
#: how a ``VALUES`` list types each (:func:`scheduler.db.padded_values`). A move writes the
#: ones it changes and leaves the rest as they are (a bit of a mask says which), so a column
#: another writer keeps up to date (``workspace_used_bytes``, from heartbeats) is not
#: overwritten with what the row said when it was read.
_MOVABLE: tuple[tuple[str, str], ...] = (
    ("desired", "?"),
    ("generation", "CAST(? AS BIGINT)"),
    ("host_id", "?"),
    ("last_host_id", "?"),
    ("queued_at", "CAST(? AS DOUBLE PRECISION)"),
    ("running_since", "CAST(? AS DOUBLE PRECISION)"),
    ("initialized", "CAST(? AS BIGINT)"),
    ("workspace_used_bytes", "CAST(? AS BIGINT)"),
    ("workspace_used_at", "CAST(? AS DOUBLE PRECISION)"),
)
#: id, version, mask, state, reason, at, then the movable columns.
_FIXED = 6
_MOVE_ROW = (
    "(?, CAST(? AS BIGINT), CAST(? AS BIGINT), ?, ?, CAST(? AS DOUBLE PRECISION), "
    + ", ".join(cast_ for _, cast_ in _MOVABLE)
    + ")"
)
_MOVE_SET = ", ".join(
    [
        "state = v.column4",
        "state_reason = v.column5",
        "state_at = v.column6",
        # A new container takes every setting as stored: nothing waits for a restart.
        "pending_restart = CASE WHEN v.column4 = 'STARTING' THEN '[]' "
        "ELSE notebooks.pending_restart END",
        *(
            f"{name} = CASE WHEN (v.column3 & {1 << bit}) <> 0 "
            f"THEN v.column{_FIXED + 1 + bit} ELSE notebooks.{name} END"
            for bit, (name, _) in enumerate(_MOVABLE)
        ),
        "version = notebooks.version + 1",
    ]
)

_HISTORY_ROW = "(?, ?, ?, CAST(? AS DOUBLE PRECISION), CAST(? AS BIGINT), ?)"
_HISTORY = (
    "INSERT INTO state_history (notebook_id, state, reason, at, generation, phases) "
    "SELECT v.column1, v.column2, v.column3, v.column4, v.column5, v.column6 "
    "FROM (VALUES {values}) AS v WHERE v.column1 IS NOT NULL"
)


@dataclass(frozen=True)
class Move:
    """One notebook's change of state for :func:`change_states` (the arguments of
    :func:`change_state`)."""

    notebook: Row
    target: NotebookState
    reason: str
    billed_until: float | None = None
    changes: Mapping[str, object] = field(default_factory=dict)
    #: Seconds each step of the start or stop ending here took (the agent's account).
    phases: Mapping[str, float] = field(default_factory=dict)


async def change_state(
    tx: Tx,
    notebook: Row,
    target: NotebookState,
    reason: str,
    *,
    now: float,
    board: AssignmentBoard,
    billed_until: float | None = None,
    phases: Mapping[str, float] | None = None,
    **changes: object,
) -> Row | None:
    """Move ``notebook`` (a row read in this transaction) to ``target``.

    Returns the notebook's row as it is now if recorded (read back by the update itself),
    ``None`` for a repeat. ``changes`` may set ``desired``, ``generation`` and ``host_id`` in
    the same update; ``phases`` (what the steps ending here took) go into the history.
    """
    move = Move(notebook, target, reason, billed_until, changes, phases or {})
    [row] = await change_states(tx, [move], now=now, board=board)
    return row


async def change_states(
    tx: Tx, moves: Sequence[Move], *, now: float, board: AssignmentBoard
) -> list[Row | None]:
    """Make each of ``moves`` (of different notebooks), as :func:`change_state` does one:
    returns each notebook's row as it is now, ``None`` for a repeat. Their history, their
    projects' use, their rows and their hosts' counters are written together, in the few
    statements one move takes (a batch of placements costs little more than one)."""
    done: list[Row | None] = [None] * len(moves)
    for start in range(0, len(moves), VALUES_CHUNK):
        chunk = moves[start : start + VALUES_CHUNK]
        done[start : start + len(chunk)] = await _change_chunk(tx, chunk, now=now, board=board)
    return done


async def _change_chunk(
    tx: Tx, moves: Sequence[Move], *, now: float, board: AssignmentBoard
) -> list[Row | None]:
    history: list[tuple[object, ...]] = []
    updates: list[tuple[object, ...]] = []
    # project: [GPUs, CPUs, notebooks, placed at]
    use: dict[str, list[Any]] = {}
    hosts: set[str | None] = set()
    cpu_hosts = False
    recorded: list[bool] = []
    # (from, to, seconds in the state left) of each move, for the metrics once committed.
    timings: list[tuple[NotebookState, NotebookState, float]] = []
    for move in moves:
        notebook, target, changes = move.notebook, move.target, move.changes
        unknown = set(changes) - _EXTRA_COLUMNS
        if unknown:
            raise ValueError(f"change_state cannot set {sorted(unknown)}")
        current = S(notebook["state"])
        recorded.append(check(current, target))
        if not recorded[-1]:
            continue
        columns: dict[str, object] = dict(changes)
        if target == S.QUEUED:
            columns["queued_at"] = now
        if target == S.RUNNING:
            columns["running_since"] = now
            columns["initialized"] = 1
            await billing.open_run(tx, notebook, started_at=now)
        if current == S.RUNNING:
            billed_until = move.billed_until
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
            # A notebook that stopped or failed on its own is not to be started again by an
            # agent; one to be restarted is, unless it failed to stop (module docstring).
            if desired == "running" or (desired == RESTARTED and target not in RESTARTS_FROM):
                columns["desired"] = "stopped"

        if current == S.QUEUED:
            timings.append((current, target, now - (notebook["queued_at"] or now)))
        else:
            timings.append((current, target, now - notebook["state_at"]))
        generation = changes.get("generation", notebook["generation"])
        history.append(
            (
                notebook["id"],
                target.value,
                move.reason,
                now,
                int(generation),
                json.dumps(dict(move.phases), sort_keys=True),
            )
        )
        if (current in ACTIVE) != (target in ACTIVE):
            sign = 1 if target in ACTIVE else -1
            counts = use.setdefault(notebook["project"], [0, 0, 0, None])
            gpu = notebook["gpu"]
            counts[0] += sign * gpu
            counts[1] += sign * (notebook["cpu"] if gpu == 0 else 0)
            counts[2] += sign
            if target == S.STARTING:
                counts[3] = now
        if notebook["gpu"] == 0 and (host_before or host_after):
            cpu_hosts = True
        hosts |= {host_before, host_after}
        mask = sum(1 << bit for bit, (name, _) in enumerate(_MOVABLE) if name in columns)
        updates.append(
            (
                notebook["id"],
                notebook["version"],
                mask,
                target.value,
                move.reason,
                now,
                *(columns.get(name) for name, _ in _MOVABLE),
            )
        )
    if not updates:
        return [None] * len(moves)
    if len({u[0] for u in updates}) != len(updates):
        raise ValueError("change_states: a notebook moves at most once a call")

    # The projects' use, the history and the notebooks' rows are written in one go
    # (Tx.all_with): none of them reads what another writes. So are the counters of the hosts
    # involved when only GPU notebooks moved: they count GPUs, written before, and the CPUs
    # of CPU notebooks, which these are not. A CPU notebook's hosts count its new host_id:
    # after.
    values, params = padded_values(_HISTORY_ROW, history)
    writes: list[tuple[str, Sequence[object]]] = [(_HISTORY.replace("{values}", values), params)]
    writes += [_count_use(project, *counts) for project, counts in sorted(use.items())]
    refresh = refresh_statement(hosts, bump=True)
    together = refresh is not None and not cpu_hosts
    if together:
        assert refresh is not None
        writes.append(refresh)
    values, params = padded_values(_MOVE_ROW, updates)
    rows = await tx.all_with(
        writes,
        f"UPDATE notebooks SET {_MOVE_SET} FROM (VALUES {values}) AS v "
        "WHERE notebooks.id = v.column1 AND notebooks.version = v.column2 "
        f"RETURNING {tx.every_column('notebooks')}",
        params,
    )
    if len(rows) != len(updates):
        changed = {r["id"] for r in rows}
        lost = [u[0] for u in updates if u[0] not in changed]
        raise conflict(f"notebook {', '.join(map(str, lost))} changed concurrently; try again")
    if refresh is not None and not together:
        await tx.run(*refresh)
    board.wake_on_commit(tx, (h for h in hosts if h))
    tx.after_commit(lambda: metrics.count_moves(timings))
    by_id = {r["id"]: r for r in rows}
    return [
        by_id[m.notebook["id"]] if done else None for m, done in zip(moves, recorded, strict=True)
    ]


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
    project: str, gpus: int, cpus: int, notebooks: int, placed_at: float | None
) -> tuple[str, tuple[object, ...]]:
    """The write that keeps ``project``'s use (:func:`scheduler.quota.use`) as notebooks enter
    (positive counts) or leave the states that count against quota; a CPU notebook's CPUs
    count, a GPU notebook's come with its GPUs. ``placed_at``: one was placed then (the
    project's turn)."""
    turn = ", last_placed_at = ?" if placed_at is not None else ""
    return (
        "UPDATE projects SET gpus_used = gpus_used + ?, cpus_used = cpus_used + ?, "
        f"notebooks_active = notebooks_active + ?{turn} WHERE name = ?",
        (gpus, cpus, notebooks, *([placed_at] if turn else []), project),
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
