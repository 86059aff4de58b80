"""Browser access to notebook editors: where a notebook's URL leads, who may open it, and the
traffic the agents' editor proxies report.

**The URL scheme** and the editor's base URL are :mod:`common.notebook_urls`; a request for a
notebook's URL is forwarded by :mod:`common.notebook_forward` to the agent that runs it, and a
notebook that is not RUNNING answers with its state and what to do (:mod:`scheduler.api.editor`).

**Authorization** (``POST /v1/agents/authorize``, asked by an agent per request it has not
seen the token of): a project token (never the admin token) of the notebook's project, whose
label selector the notebook's labels satisfy, asked by the host the notebook runs on. Both
roles may open the editor.

**Activity** arrives with heartbeats and is held in memory (:class:`ProxyActivity`), written
in one transaction per flush, like heartbeats themselves, so a heartbeat costs no write.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from common import wire
from common.states import NotebookState
from scheduler.db import Database, Tx, WriteBehind, run_values
from scheduler.projects import Principal, selector_text

log = logging.getLogger(__name__)

S = NotebookState

# ---------------------------------------------------------------- where the URL leads


@dataclass(frozen=True)
class EditorLocation:
    """What ``/notebooks/{id}/...`` finds: the notebook's state, and the agent to send the
    browser to while it is RUNNING."""

    state: NotebookState | None
    agent_url: str | None = None


async def locate(db: Database, notebook_id: str) -> EditorLocation:
    """One keyed read, no transaction: this runs for every request to a notebook's stable URL
    (the scheduler forwards each one)."""
    row = await db.query_one(
        "SELECT n.state, h.agent_url FROM notebooks n LEFT JOIN hosts h ON h.id = n.host_id "
        "WHERE n.id = ?",
        (notebook_id,),
    )
    if row is None:
        return EditorLocation(None)
    state = S(row["state"])
    return EditorLocation(state, row["agent_url"] if state == S.RUNNING else None)


# ---------------------------------------------------------------- who may open it


async def authorize(
    db: Database, host_id: str, notebook_id: str, principal: Principal | None
) -> wire.AuthorizeReply:
    """May ``principal`` (``None``: unknown or deleted token) open ``notebook_id``'s editor
    through ``host_id``'s proxy? Reasons are written for the person who sees the 403 page."""
    row = await db.query_one(
        "SELECT project, labels, host_id FROM notebooks WHERE id = ?", (notebook_id,)
    )
    if row is None:
        return _deny(f"notebook {notebook_id} does not exist")
    if row["host_id"] != host_id:
        # The notebook moved (or stopped) since the agent looked: it must not serve it.
        return _deny(f"notebook {notebook_id} does not run on host {host_id}")
    if principal is None:
        return _deny("unknown or deleted token")
    if principal.project != row["project"]:
        return _deny("token of another project")
    if not principal.reaches(json.loads(row["labels"])):
        return _deny(f"token limited to {selector_text(principal.selector)}")
    return wire.AuthorizeReply(allowed=True, role=principal.role)


def _deny(reason: str) -> wire.AuthorizeReply:
    return wire.AuthorizeReply(allowed=False, reason=reason)


def admin_token_refused() -> wire.AuthorizeReply:
    return _deny(
        "the admin token does not open notebooks; use a project token (nbfleet token create)"
    )


# ---------------------------------------------------------------- what traffic it had


@dataclass(frozen=True)
class PendingActivity:
    """One notebook's latest activity as its host reported it (:class:`ProxyActivity`)."""

    host: str
    #: When, and what showed it (``wire.NotebookActivity.signal``).
    at: float
    signal: str
    #: Bytes the editor proxy carried both ways, cumulative.
    carried: int


class ProxyActivity(WriteBehind):
    """The latest activity per notebook (the idle signal: editor proxy, SSH, the editor's own
    API, GPU and CPU use) and the bytes its proxy carried, from heartbeats, until written.

    :meth:`record` does no database work (it runs inside the heartbeat handler);
    :meth:`flush` writes everything pending in one transaction, only for notebooks the
    reporting host still holds. Views read :meth:`pending` so they never lag a flush.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self._pending: dict[str, PendingActivity] = {}

    def record(self, host_id: str, items: list[wire.NotebookActivity]) -> None:
        for item in items:
            at, signal = item.last_activity_at, item.signal
            held = self._pending.get(item.notebook)
            if held is not None and held.host == host_id and held.at > at:
                at, signal = held.at, held.signal  # never back, as written (see _write)
            self._pending[item.notebook] = PendingActivity(
                host_id, at, signal, item.bytes_in + item.bytes_out
            )

    def pending(self, notebook_id: str, host_id: str | None) -> PendingActivity | None:
        """What ``host_id`` reported of the notebook and is not written yet."""
        found = self._pending.get(notebook_id)
        if found is None or found.host != host_id:
            return None
        return found

    async def _write(self, tx: Tx, pending: dict[str, PendingActivity]) -> None:
        # The last activity never goes back (a late heartbeat), nor does its signal; the byte
        # count is the agent's latest cumulative figure, as the contract says.
        await run_values(
            tx,
            "UPDATE notebooks SET activity_signal = CASE WHEN COALESCE(last_activity_at, 0) > "
            "v.column1 THEN activity_signal ELSE v.column5 END, "
            "last_activity_at = CASE WHEN COALESCE(last_activity_at, 0) > "
            "v.column1 THEN COALESCE(last_activity_at, 0) ELSE v.column1 END, "
            "proxied_bytes = v.column2 FROM (VALUES {values}) AS v "
            "WHERE notebooks.id = v.column3 AND notebooks.host_id = v.column4",
            "(CAST(? AS DOUBLE PRECISION), CAST(? AS BIGINT), ?, ?, ?)",
            ((p.at, p.carried, notebook, p.host, p.signal) for notebook, p in pending.items()),
        )
