"""Notebooks as users see them: finding one a caller may reach, the row → wire view, and the
read-only queries (list, get, history, where its logs and commands go).

A notebook of another project does not exist (404); one the caller's scoped token does not
reach by its labels is forbidden (403). Each query is one read transaction. What ``get`` and
``list`` show includes what is held in memory and not written yet: sync progress
(:class:`scheduler.snapshots.ProgressBoard`) and activity (:class:`PendingActivity`), so views
never lag a flush; a RUNNING notebook's idle status (:func:`scheduler.idle.status`) is shown by
them only, since it needs the project's idle timeout and the clock.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from common import wire
from common.config import QuotaDefaults, image_tag
from common.errors import ApiError, conflict, not_found
from common.notebook_urls import editor_path
from common.states import NotebookState
from scheduler import idle
from scheduler.datastores import stored_volumes
from scheduler.db import Database, Row, Tx
from scheduler.placement import gpu_ref
from scheduler.queue import queue_info, queue_infos
from scheduler.snapshots import ProgressBoard, latest_snapshot, stored_progress
from scheduler.ssh_keys import key_infos, ssh_address

S = NotebookState


class PendingActivity(Protocol):
    """Activity received but not written yet (:class:`scheduler.access.ProxyActivity`)."""

    def pending(self, notebook_id: str, host_id: str | None) -> Unwritten | None:
        """What the notebook's host reported of it, if anything."""
        ...


class Unwritten(Protocol):
    at: float
    signal: str
    carried: int


class NotebookViews:
    """``get`` and ``list``: the notebook as stored, with what this replica holds in memory
    (sync progress, activity) and, while RUNNING, its idle status."""

    def __init__(
        self,
        db: Database,
        progress: ProgressBoard,
        activity: PendingActivity,
        *,
        clock: Callable[[], float] = time.time,
        quota_defaults: QuotaDefaults | None = None,
    ) -> None:
        self.db = db
        self.progress = progress
        self.activity = activity
        self.clock = clock
        self.quota_defaults = quota_defaults or QuotaDefaults()

    async def list(
        self,
        project: str,
        *,
        states: set[NotebookState],
        labels: dict[str, str],
        selector: dict[str, str] | None = None,
    ) -> list[wire.Notebook]:
        labels = {**labels, **(selector or {})}
        async with self.db.read() as tx:
            rows = await tx.all(
                "SELECT * FROM notebooks WHERE project = ? ORDER BY created_at, rowid", (project,)
            )
            wanted = [
                row
                for row in rows
                if (S(row["state"]) in states if states else row["state"] != S.DELETED)
                and all(json.loads(row["labels"]).get(k) == v for k, v in labels.items())
            ]
            views = [await _view(tx, row) for row in wanted]
            if any(v.state == S.QUEUED for v in views):
                infos = await queue_infos(tx)
                for view in views:
                    view.queue = infos.get(view.id) if view.state == S.QUEUED else None
            if any(v.state == S.RUNNING for v in views):
                project_s = await idle.project_timeout_of(tx, project, self.quota_defaults)
                for view, row in zip(views, wanted, strict=True):
                    self._with_idle(view, row, project_s)
            return [self._with_progress(view) for view in views]

    async def get(
        self, project: str, notebook_id: str, selector: dict[str, str] | None = None
    ) -> wire.Notebook:
        async with self.db.read() as tx:
            row = await load(tx, project, notebook_id, selector)
            notebook = await view(tx, row, with_history=True)
            if notebook.state == S.RUNNING:
                project_s = await idle.project_timeout_of(tx, project, self.quota_defaults)
                self._with_idle(notebook, row, project_s)
            return self._with_progress(notebook)

    async def history(
        self, project: str, notebook_id: str, selector: dict[str, str] | None = None
    ) -> list[wire.StateChange]:
        async with self.db.read() as tx:
            await load(tx, project, notebook_id, selector)
            return await _history(tx, notebook_id)

    async def log_source(
        self, project: str, notebook_id: str, selector: dict[str, str] | None = None
    ) -> tuple[str, str]:
        """``(host_id, agent_url)`` of the host that runs the notebook or, once it is stopped,
        of the host it last ran on (whose agent keeps its last output)."""
        async with self.db.read() as tx:
            row = await load(tx, project, notebook_id, selector)
            host_id = row["host_id"] or row["last_host_id"]
            if host_id is None:
                raise conflict(
                    f"notebook {notebook_id} is {row['state']} and has never run on a host; "
                    "it has no logs",
                    state=row["state"],
                )
            host = await tx.one("SELECT agent_url FROM hosts WHERE id = ?", (host_id,))
            assert host is not None  # foreign key
            return host_id, host["agent_url"]

    async def exec_target(
        self, project: str, notebook_id: str, selector: dict[str, str] | None = None
    ) -> tuple[str, str]:
        """``(host_id, agent_url)`` of the host running the notebook; 409 unless RUNNING."""
        async with self.db.read() as tx:
            row = await load(tx, project, notebook_id, selector)
            require_state(row, frozenset({S.RUNNING}), "commands run only in a RUNNING notebook")
            host = await tx.one("SELECT agent_url FROM hosts WHERE id = ?", (row["host_id"],))
            assert host is not None  # a RUNNING notebook holds its host
            return row["host_id"], host["agent_url"]

    async def backups_of(
        self, project: str, notebook_id: str, selector: dict[str, str] | None = None
    ) -> None:
        """Raise 404 unless the notebook exists in ``project`` (backups are scoped like it)."""
        async with self.db.read() as tx:
            await load(tx, project, notebook_id, selector)

    def _with_idle(self, nb: wire.Notebook, row: Row, project_s: float | None) -> None:
        unwritten = self.activity.pending(nb.id, nb.host)
        nb.idle = idle.status(
            row,
            project_s=project_s,
            now=self.clock(),
            pending=None if unwritten is None else (unwritten.at, unwritten.signal),
        )

    def _with_progress(self, nb: wire.Notebook) -> wire.Notebook:
        """What is held in memory: sync progress, and activity not written yet."""
        nb.progress = self.progress.get(nb.id, nb.generation, nb.state, nb.progress)
        unwritten = self.activity.pending(nb.id, nb.host)
        if unwritten is not None:
            nb.last_activity_at = max(nb.last_activity_at or 0.0, unwritten.at)
            nb.proxied_bytes = unwritten.carried
        return nb


async def load(
    tx: Tx, project: str, notebook_id: str, selector: dict[str, str] | None = None
) -> Row:
    """The notebook ``notebook_id`` of ``project``: 404 if there is none, 403 if ``selector``
    (a scoped token's labels) does not reach it."""
    row = await tx.one(
        "SELECT * FROM notebooks WHERE id = ? AND project = ?", (notebook_id, project)
    )
    if row is None:
        raise not_found("notebook", notebook_id)
    if selector:
        labels = json.loads(row["labels"])
        missing = {k: v for k, v in selector.items() if labels.get(k) != v}
        if missing:
            wanted = ", ".join(f"{k}={v}" for k, v in sorted(missing.items()))
            raise ApiError(
                "forbidden",
                f"this token reaches only notebooks labelled {wanted}; notebook {notebook_id} "
                "is not",
                selector=selector,
            )
    return row


def require_state(row: Row, allowed: frozenset[NotebookState], requirement: str) -> None:
    """409 naming the current state (also in ``detail.state``) unless it is ``allowed``."""
    state = S(row["state"])
    if state not in allowed:
        raise conflict(f"notebook {row['id']} is {state}; {requirement}", state=state.value)


async def view(
    tx: Tx,
    row: Row,
    *,
    with_history: bool = False,
    fresh: bool = False,
    gpus: Sequence[wire.GpuRef] | None = None,
) -> wire.Notebook:
    """The notebook as stored, with its place in the queue while QUEUED (what a command
    answers; ``fresh``: it was created in this transaction; ``gpus``: the GPUs it holds, when
    the caller knows them, having just reserved them)."""
    notebook = await _view(tx, row, with_history=with_history, fresh=fresh, gpus=gpus)
    if notebook.state == S.QUEUED:
        notebook.queue = await queue_info(tx, row)
    return notebook


async def _history(tx: Tx, notebook_id: str) -> list[wire.StateChange]:
    rows = await tx.all(
        "SELECT state, reason, at, generation, phases FROM state_history "
        "WHERE notebook_id = ? ORDER BY id",
        (notebook_id,),
    )
    return [
        wire.StateChange(
            state=S(r["state"]),
            reason=r["reason"],
            at=r["at"],
            generation=r["generation"],
            phases=json.loads(r["phases"] or "{}"),
        )
        for r in rows
    ]


async def _view(
    tx: Tx,
    row: Row,
    *,
    with_history: bool = False,
    fresh: bool = False,
    gpus: Sequence[wire.GpuRef] | None = None,
) -> wire.Notebook:
    """``fresh``: the notebook was created in this transaction, so it has neither usage nor
    snapshots to look up; ``gpus`` known, they are not looked up either."""
    if gpus is None:
        rows = await tx.all(
            "SELECT uuid, model, idx, utilization_pct, memory_used_mb, memory_total_mb "
            "FROM gpus WHERE notebook_id = ? ORDER BY idx",
            (row["id"],),
        )
        gpus = [gpu_ref(g) for g in rows]
    billed = (
        None
        if fresh
        else await tx.one(
            "SELECT COALESCE(SUM(billed_minutes), 0) AS minutes FROM usage WHERE notebook_id = ?",
            (row["id"],),
        )
    )
    state = S(row["state"])
    return wire.Notebook(
        id=row["id"],
        project=row["project"],
        name=row["name"],
        framework=row["framework"],
        editor=row["editor"],
        image=row["image"],
        # Notebooks made before versions run the version their image's tag names.
        framework_version=row["framework_version"] or image_tag(row["image"]),
        pending_restart=json.loads(row["pending_restart"]),
        state=state,
        state_reason=row["state_reason"],
        state_at=row["state_at"],
        gpu=row["gpu"],
        cpu=row["cpu"],
        memory_mb=row["memory_mb"],
        labels=json.loads(row["labels"]),
        envvars=json.loads(row["envvars"]),
        created_at=row["created_at"],
        generation=row["generation"],
        host=row["host_id"],
        gpus=list(gpus),
        # The stable path, made absolute by the API layer (it knows the scheduler's address);
        # the editor answers there only while RUNNING.
        url=editor_path(row["id"]) if state == S.RUNNING else None,
        running_since=row["running_since"],
        billed_minutes=billed["minutes"] if billed else 0,
        history=await _history(tx, row["id"]) if with_history else None,
        volumes=stored_volumes(row),
        workspace=None if fresh else await latest_snapshot(tx, row["id"]),
        forked_from=(
            wire.RestoreSource(notebook=row["fork_notebook"], snapshot=row["fork_snapshot"])
            if row["fork_notebook"]
            else None
        ),
        flavor=row["flavor"],
        restart_on_timeout=bool(row["restart_on_timeout"]),
        disk_gb=row["disk_gb"],
        unsecure_http=bool(row["unsecure_http"]),
        last_activity_at=row["last_activity_at"],
        proxied_bytes=row["proxied_bytes"],
        idle_timeout_s=row["idle_timeout_s"],
        workspace_used_bytes=row["workspace_used_bytes"],
        workspace_used_at=row["workspace_used_at"],
        ssh_keys=key_infos(row),
        ssh=await ssh_address(tx, row),
        # What is written; NotebookViews puts what this replica holds unwritten over it.
        progress=stored_progress(row),
    )
