"""The one function that changes a host's state or intent.

:func:`change_host_state` is the only code that assigns ``hosts.state`` (is the host alive:
:class:`~common.states.HostState`) or ``hosts.intent`` (what an operator wants of it:
:class:`~common.states.HostIntent`) after registration; a new host's row starts READY and OPEN
(``AgentService.register``). It runs inside the caller's write transaction and:

* validates the change with :func:`common.states.check` (an idempotent repeat records nothing
  and returns ``False``; a forbidden one raises ``InvalidTransition``);
* stamps ``state_at`` and ``state_reason`` (the last change of either), guarded by the value it
  read, so a row that changed since is never overwritten;
* logs it, subject first: a host lost as a warning (nobody asked for it), the rest as info.

Who makes which change: ``HostService.mark_lost`` (→ LOST), ``AgentService.register``
(→ READY), ``HostService.cordon`` / ``drain`` / ``uncordon`` (an operator) and
``HostService.end_drains`` (DRAINING → CORDONED once the host has emptied).
"""

from __future__ import annotations

import logging

from common.errors import conflict
from common.states import HostIntent, HostState, check
from scheduler.db import Row, Tx

log = logging.getLogger(__name__)

#: What :func:`change_host_state` needs of a host's row.
HOST_STATE_COLUMNS = "id, state, intent"


async def change_host_state(
    tx: Tx, host: Row, target: HostState | HostIntent, reason: str, *, now: float
) -> bool:
    """Move ``host`` (a row read in this transaction, with :data:`HOST_STATE_COLUMNS`) to
    ``target``: its liveness for a :class:`HostState`, its intent for a :class:`HostIntent`.

    Returns ``True`` if recorded, ``False`` for a repeat.
    """
    column = "state" if isinstance(target, HostState) else "intent"
    current = type(target)(host[column])
    if not check(current, target):
        return False
    updated = await tx.run(
        f"UPDATE hosts SET {column} = ?, state_at = ?, state_reason = ? "
        f"WHERE id = ? AND {column} = ?",
        (target.value, now, reason, host["id"], current.value),
    )
    if updated != 1:
        raise conflict(f"host {host['id']} changed concurrently; try again")
    level = logging.WARNING if target == HostState.LOST else logging.INFO
    log.log(level, "host=%s %s → %s: %s", host["id"], current, target, reason)
    return True
