"""Notebook states and the one table of allowed transitions.

::

                 run / start
      ┌──────────────────────────────────────────────┐
      │                                              │
      ▼          editor reachable                    │
   STARTING ─────────────────────► RUNNING           │
      │  │                           │  │            │
      │  │ stop                 stop │  │ exited     │
      │  └──────────► STOPPING ◄─────┘  │ / host     │
      │                 │   │           │   lost     │
      │                 │   └─► FAILED ◄┘            │
      │  exit≠0 /       ▼        ERROR ──────────────┤
      └─ backend ──► STOPPED ─────────────────────────┘
         error           │
                         ▼   (from any settled state)
                      DELETING ──► DELETED

* ``QUEUED``: quota allows it but no host has room (or its project is at a limit); it waits
  in the fair queue, holding nothing. Stop leaves the queue (→ STOPPED), delete removes it.
* ``STARTING``: resources are allocated; workspace and volumes are being pulled and the
  container started. Counts against quota.
* ``RUNNING``: the editor answers. Counts against quota and is billed per commenced minute.
* ``STOPPING``: compute is being freed and the workspace pushed. Billing has ended.
* ``STOPPED``: restartable with the same id and URL; the workspace lives in object storage.
* ``FAILED``: the notebook's own process exited non-zero, or a sync failed.
* ``ERROR``: a backend error (host lost, workspace marker missing, image missing).
* ``DELETING`` / ``DELETED``: the notebook and its workspace are being / have been removed.

Idempotent repeats: reporting the state a notebook is already in is not an error inside the
system (an agent that retries a report, a second stop while ``STOPPING``); :func:`check` returns
``False`` for them so the caller records nothing. The public API still answers 409 to a user who
stops a notebook that is not running, because for a person that request is a mistake worth
naming.
"""

from __future__ import annotations

import enum


class NotebookState(enum.StrEnum):
    QUEUED = "QUEUED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"
    FAILED = "FAILED"
    ERROR = "ERROR"
    DELETING = "DELETING"
    DELETED = "DELETED"


S = NotebookState

#: Every allowed change of state. A transition not listed here is refused.
TRANSITIONS: dict[NotebookState, frozenset[NotebookState]] = {
    S.QUEUED: frozenset({S.STARTING, S.STOPPED, S.DELETING, S.DELETED}),
    S.STARTING: frozenset({S.RUNNING, S.STOPPING, S.FAILED, S.ERROR, S.DELETING}),
    S.RUNNING: frozenset({S.STOPPING, S.FAILED, S.ERROR, S.DELETING}),
    S.STOPPING: frozenset({S.STOPPED, S.FAILED, S.ERROR, S.DELETING}),
    S.STOPPED: frozenset({S.QUEUED, S.STARTING, S.DELETING}),
    S.FAILED: frozenset({S.QUEUED, S.STARTING, S.DELETING}),
    S.ERROR: frozenset({S.QUEUED, S.STARTING, S.DELETING}),
    S.DELETING: frozenset({S.DELETED, S.ERROR}),
    S.DELETED: frozenset(),
}

#: States whose notebooks hold compute (GPUs, CPUs) on a host and count against quota.
ACTIVE = frozenset({S.STARTING, S.RUNNING})
#: States in which a host still has work to do for the notebook (container or workspace).
ON_HOST = frozenset({S.STARTING, S.RUNNING, S.STOPPING, S.DELETING})
#: States from which a user may start the notebook again.
STARTABLE = frozenset({S.STOPPED, S.FAILED, S.ERROR})
#: States from which a user may stop the notebook (a QUEUED one just leaves the queue).
STOPPABLE = frozenset({S.QUEUED, S.STARTING, S.RUNNING})
#: Settled states: nothing is in flight, nothing is billed.
SETTLED = frozenset({S.STOPPED, S.FAILED, S.ERROR, S.DELETED})


class InvalidTransition(Exception):
    def __init__(self, current: NotebookState, target: NotebookState) -> None:
        super().__init__(f"cannot go from {current} to {target}")
        self.current = current
        self.target = target


def check(current: NotebookState, target: NotebookState) -> bool:
    """Validate ``current → target``.

    Returns ``True`` when the transition must be recorded, ``False`` for an idempotent repeat
    (``current == target``), and raises :class:`InvalidTransition` otherwise.
    """
    if current == target:
        return False
    if target not in TRANSITIONS[current]:
        raise InvalidTransition(current, target)
    return True
