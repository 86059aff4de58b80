"""Notebook and host states, the tables of allowed transitions, and the one function that
validates a transition (:func:`check`).

Notebooks
=========

::

      run, or start of a STOPPED / FAILED / ERROR notebook
         │                                    │
         │ no host has room                   │ a host has room
         ▼                                    ▼
       QUEUED ────── a host has room ─────► STARTING ─── editor reachable ───► RUNNING
         │                                    │                                 │
         │ stop                               └──── stop ───► STOPPING ◄── stop ┘
         ▼                                                      │
       STOPPED ◄──────────────── workspace pushed ──────────────┘

    STARTING, RUNNING, STOPPING ─── exited ≠ 0, a sync failed ───────────► FAILED
    STARTING, RUNNING, STOPPING, DELETING ─── backend error, host lost ───► ERROR
    every state but DELETING and DELETED ─── delete ───► DELETING ───► DELETED
    QUEUED ─── delete ───► DELETED   (a queued notebook holds nothing to clean up)

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

Hosts
=====

Two small machines, because whether a host answers and what an operator wants of it change
independently: a cordoned host that is lost and registers again comes back cordoned, and an
operator may cordon a host that is down. Each has one column (``hosts.state``,
``hosts.intent``) and both change only through ``scheduler.host_states.change_host_state``.

::

    HostState: is it alive?              HostIntent: what the operator wants of it

          no heartbeat for a TTL                          cordon
      READY ─────────────────► LOST            OPEN ───────────────────► CORDONED
        ▲                       │              │ ▲ ▲                      │  │ ▲
        └────── registers ──────┘              │ │ └────── uncordon ──────┘  │ │
                                         drain │ │ uncordon            drain │ │ its last
                                               ▼ │                           │ │ notebook
                                             DRAINING ◄──────────────────────┘ │ left
                                                 └─────────────────────────────┘

* ``READY``: heard from within the heartbeat TTL. A new host registers READY and OPEN.
* ``LOST``: silent for longer than the TTL; its notebooks went to ERROR. Its heartbeats are
  answered "register", and registering makes it READY with its intent unchanged.
* ``OPEN``: takes new notebooks (when READY, fresh and with disk room: scheduler.placement).
* ``CORDONED``: takes no new notebooks; the ones on it keep running.
* ``DRAINING``: takes no new notebooks and its notebooks were told to stop; once none is left on
  it the drain is over and it stays CORDONED. Cordoning a draining host changes nothing (it is
  cordoned already); uncordon opens it from either.

Repeats are not errors here either: a READY host registering again (its agent restarted) or a
second cordon records nothing.

The API shows one state per host (``wire.Host.state``), derived from both and from what still
runs there by ``scheduler.hosts``: ``lost`` when LOST; else ``draining`` while DRAINING with
notebooks left; else ``cordoned`` when CORDONED or DRAINING; else ``ready``.
"""

from __future__ import annotations

import enum
from typing import TypeVar


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


class HostState(enum.StrEnum):
    """Whether the scheduler hears from the host (``hosts.state``)."""

    READY = "ready"
    LOST = "lost"


class HostIntent(enum.StrEnum):
    """What an operator wants of the host (``hosts.intent``)."""

    OPEN = "open"
    CORDONED = "cordoned"
    DRAINING = "draining"


#: Every allowed change of a host's liveness.
HOST_TRANSITIONS: dict[HostState, frozenset[HostState]] = {
    HostState.READY: frozenset({HostState.LOST}),
    HostState.LOST: frozenset({HostState.READY}),
}

#: Every allowed change of an operator's intent for a host: each to each (see the diagram for
#: who makes which).
HOST_INTENT_TRANSITIONS: dict[HostIntent, frozenset[HostIntent]] = {
    HostIntent.OPEN: frozenset({HostIntent.CORDONED, HostIntent.DRAINING}),
    HostIntent.CORDONED: frozenset({HostIntent.OPEN, HostIntent.DRAINING}),
    HostIntent.DRAINING: frozenset({HostIntent.OPEN, HostIntent.CORDONED}),
}

_TABLES: dict[type[enum.StrEnum], dict] = {
    NotebookState: TRANSITIONS,
    HostState: HOST_TRANSITIONS,
    HostIntent: HOST_INTENT_TRANSITIONS,
}


#: A notebook state, a host state or a host intent: both sides of a transition are of one kind.
State = TypeVar("State", NotebookState, HostState, HostIntent)


class InvalidTransition(Exception):
    def __init__(self, current: enum.StrEnum, target: enum.StrEnum) -> None:
        super().__init__(f"cannot go from {current} to {target}")
        self.current = current
        self.target = target


def check(current: State, target: State) -> bool:
    """Validate ``current → target`` with the table of their kind (notebook state, host state
    or host intent).

    Returns ``True`` when the transition must be recorded, ``False`` for an idempotent repeat
    (``current == target``), and raises :class:`InvalidTransition` otherwise.
    """
    if current == target:
        return False
    if target not in _TABLES[type(current)][current]:
        raise InvalidTransition(current, target)
    return True
