"""The user's notebook commands: create, fork, start, stop, delete, update, replace SSH
keys.

Every method is scoped to one project: a notebook of another project does not exist (404).
Each request is one transaction; a rejected request (400, 403, 404, 409, 503) stores nothing.
Placing a notebook is admission's (:class:`scheduler.admission.Admission`), and every change
of state goes through :func:`scheduler.lifecycle.change_state`, a new notebook's first one
too. Each command answers the notebook as stored (:func:`scheduler.notebook_views.view`);
the read-only queries are :class:`scheduler.notebook_views.NotebookViews`.
"""

from __future__ import annotations

import json
import logging
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from common import wire
from common.config import SchedulerConfig
from common.errors import ApiError, conflict
from common.states import STARTABLE, STOPPABLE, NotebookState
from scheduler import idle, notebook_update, placement
from scheduler.admission import Admission
from scheduler.batches import Batcher
from scheduler.board import AssignmentBoard
from scheduler.datastores import check_mount_paths, check_volumes, encode_volumes
from scheduler.db import Database, Row, Tx
from scheduler.lifecycle import change_state
from scheduler.notebook_requests import (
    catalog_entries,
    default_name,
    fork_request,
    labels_within,
)
from scheduler.notebook_views import load, require_state, view
from scheduler.snapshots import retained_snapshot
from scheduler.ssh_keys import checked_keys, encode_keys

log = logging.getLogger(__name__)

S = NotebookState

#: Creates stored and placed in one transaction, at most (:class:`scheduler.batches.Batcher`).
CREATE_BATCH = 32

_INSERT = (
    "INSERT INTO notebooks (id, project, name, framework, editor, image, command, editor_port, "
    'url_path, "user", gpu, cpu, memory_mb, labels, envvars, state, state_reason, state_at, '
    "desired, generation, initialized, access_token, created_at, flavor, gpu_model, disk_gb, "
    "restart_on_timeout, unsecure_http, ssh_public_keys, fork_notebook, fork_snapshot, volumes, "
    "idle_timeout_s, framework_version) "
    "VALUES "
)
_INSERT_ROW = (
    "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'STOPPED', 'created', ?, 'stopped', 0, ?, ?, "
    "?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


@dataclass(frozen=True)
class _NewNotebook:
    """A checked create waiting for its batch: its project, its row's values (``_INSERT``'s
    placeholders, its id first), its volumes and what its first state's reason adds."""

    project: str
    values: tuple[object, ...]
    volumes: list[wire.Volume]
    suffix: str


class NotebookService:
    def __init__(
        self,
        db: Database,
        config: SchedulerConfig,
        board: AssignmentBoard,
        clock: Callable[[], float],
        admission: Admission,
    ) -> None:
        self.db = db
        self.config = config
        self.board = board
        self.clock = clock
        self.admission = admission
        self._creates = Batcher(self._create_batch, most=CREATE_BATCH, what="creates")

    async def close(self) -> None:
        await self._creates.close()

    async def create(
        self,
        project: str,
        request: wire.NotebookCreate,
        *,
        fork: wire.RestoreSource | None = None,
        selector: dict[str, str] | None = None,
    ) -> wire.Notebook:
        """Place and store a new notebook. With ``fork``, its workspace starts from that
        snapshot of another notebook (checked by the caller, in :meth:`fork`).

        The request is checked here; it is stored and placed with the creates that arrive
        with it (:meth:`_create_batch`), each as if alone."""
        choice = catalog_entries(request, self.config)
        resources = placement.resources_for(request.gpu, request.cpu, self.config, request.flavor)
        labels = labels_within(request.labels, selector)
        ssh_keys = checked_keys(request.ssh_public_keys, "$.ssh_public_keys")
        check_mount_paths(request.volumes)
        name = request.name or default_name(request.framework, request.editor)
        if request.idle_timeout_s is not None and fork is None:
            # A fork keeps its source's, whatever the project's is now: the shorter applies.
            async with self.db.read() as tx:
                project_s = await idle.project_timeout_of(tx, project, self.config.quota)
            refusal = idle.asked_refusal(project, project_s, request.idle_timeout_s)
            if refusal is not None:
                raise refusal
        notebook_id = str(uuid.uuid4())
        now = self.clock()
        # Stored as a STOPPED notebook of generation 0 that never ran (no history, no host),
        # then started like any stopped notebook: its history begins with STARTING when it is
        # placed at once, else with QUEUED.
        values = (
            notebook_id,
            project,
            name,
            request.framework,
            request.editor,
            choice.image,
            json.dumps(choice.editor.command),
            choice.editor.port,
            choice.editor.url_path,
            choice.framework.user,
            resources.gpu,
            resources.cpu,
            resources.memory_mb,
            json.dumps(labels),
            json.dumps(request.envvars),
            now,
            # The snapshot carries the source's .workspace.initialized: a fork is a restart of
            # that workspace, so the marker rules apply from its first start.
            int(fork is not None),
            secrets.token_hex(24),
            now,
            resources.flavor,
            resources.gpu_model,
            resources.disk_gb,
            int(request.restart_on_timeout),
            int(request.unsecure_http),
            encode_keys(ssh_keys),
            fork.notebook if fork is not None else None,
            fork.snapshot if fork is not None else None,
            encode_volumes(request.volumes),
            request.idle_timeout_s,
            choice.version,
        )
        suffix = (
            f"; workspace from backup {fork.snapshot} of {fork.notebook}"
            if fork is not None
            else ""
        )
        return await self._creates.submit(_NewNotebook(project, values, request.volumes, suffix))

    async def _create_batch(self, batch: list[_NewNotebook]) -> list[wire.Notebook | Exception]:
        """Store and place the notebooks of ``batch`` in one transaction: their volumes'
        datastores checked, one insert, :meth:`Admission.start_many`; the ones it refuses are
        taken out again before the commit, so a refused request stores nothing."""
        outcomes: list[wire.Notebook | Exception | None] = [None] * len(batch)
        async with self.db.transaction() as tx:
            valid: list[int] = []
            for i, new in enumerate(batch):
                try:
                    await check_volumes(tx, new.project, new.volumes)
                except ApiError as refusal:
                    outcomes[i] = refusal
                else:
                    valid.append(i)
            if valid:
                rows = await tx.all(
                    _INSERT + ", ".join([_INSERT_ROW] * len(valid)) + " RETURNING *",
                    [value for i in valid for value in batch[i].values],
                )
                by_id = {row["id"]: row for row in rows}
                started = await self.admission.start_many(
                    tx,
                    [(by_id[batch[i].values[0]], batch[i].suffix) for i in valid],
                    now=self.clock(),
                )
                refused: list[object] = []
                for i, outcome in zip(valid, started, strict=True):
                    if isinstance(outcome, ApiError):
                        outcomes[i] = outcome
                        refused.append(batch[i].values[0])
                    else:
                        outcomes[i] = await view(tx, outcome.row, fresh=True, gpus=outcome.gpus)
                if refused:
                    marks = ", ".join("?" for _ in refused)
                    await tx.run(f"DELETE FROM notebooks WHERE id IN ({marks})", refused)
        return [outcome for outcome in outcomes if outcome is not None]

    async def fork(
        self,
        project: str,
        notebook_id: str,
        request: wire.NotebookFork,
        selector: dict[str, str] | None = None,
    ) -> wire.Notebook:
        """A new notebook like ``notebook_id`` (framework, editor, resources, labels, env,
        volumes) whose workspace starts from one of its retained snapshots."""
        async with self.db.read() as tx:
            source = await load(tx, project, notebook_id, selector)
            await retained_snapshot(tx, notebook_id, request.backup)
        return await self.create(
            project,
            fork_request(source, request, self.config),
            fork=wire.RestoreSource(notebook=notebook_id, snapshot=request.backup),
            selector=selector,
        )

    async def start(
        self, project: str, notebook_id: str, selector: dict[str, str] | None = None
    ) -> wire.Notebook:
        now = self.clock()
        async with self.db.transaction() as tx:
            row = await load(tx, project, notebook_id, selector)
            require_state(row, STARTABLE, "only a STOPPED, FAILED or ERROR notebook can be started")
            row = await self._refresh_editor(tx, row)
            started = await self.admission.start(tx, row, now=now)
            return await view(tx, started.row, gpus=started.gpus)

    async def update(
        self,
        project: str,
        notebook_id: str,
        request: wire.NotebookUpdate,
        selector: dict[str, str] | None = None,
    ) -> wire.Notebook:
        """Change the notebook (:mod:`scheduler.notebook_update`: what applies at once, what
        at its next start, what only while it is stopped)."""
        return await notebook_update.update(
            self.db, self.config, self.board, self.clock, project, notebook_id, request, selector
        )

    async def set_ssh_keys(
        self,
        project: str,
        notebook_id: str,
        request: wire.SshKeysUpdate,
        selector: dict[str, str] | None = None,
    ) -> wire.Notebook:
        """Replace the notebook's SSH keys, at once: the agent running it lets in the new
        keys from its next connection (open sessions go on)."""
        checked_keys(request.keys, "$.keys")  # a bad key is named as this body has it
        notebook = await self.update(
            project, notebook_id, wire.NotebookUpdate(ssh_public_keys=list(request.keys)), selector
        )
        log.info(
            "notebook=%s project=%s SSH keys replaced: %s",
            notebook_id,
            project,
            ", ".join(k.fingerprint for k in notebook.ssh_keys) or "none",
        )
        return notebook

    async def _refresh_editor(self, tx: Tx, row: Row) -> Row:
        """Take the catalog's current command, port and path for the notebook's editor, so a
        fix an operator makes to an editor reaches notebooks at their next start (e.g. the
        base URL the editor proxy needs). The image stays the one the notebook was created
        with: a start never changes the software under a user's work."""
        editor = self.config.catalog.editors.get(row["editor"])
        if editor is None:
            return row
        command = json.dumps(editor.command)
        if (command, editor.port, editor.url_path) == (
            row["command"],
            row["editor_port"],
            row["url_path"],
        ):
            return row
        [fresh] = await tx.all(
            "UPDATE notebooks SET command = ?, editor_port = ?, url_path = ? WHERE id = ? "
            "RETURNING *",
            (command, editor.port, editor.url_path, row["id"]),
        )
        return fresh

    async def stop(
        self, project: str, notebook_id: str, selector: dict[str, str] | None = None
    ) -> wire.Notebook:
        now = self.clock()
        async with self.db.transaction() as tx:
            row = await load(tx, project, notebook_id, selector)
            require_state(
                row, STOPPABLE, "only a QUEUED, STARTING or RUNNING notebook can be stopped"
            )
            # A queued notebook holds nothing on any host: it is stopped at once.
            queued = S(row["state"]) == S.QUEUED
            stopped = await change_state(
                tx,
                row,
                S.STOPPED if queued else S.STOPPING,
                "stopped while queued" if queued else "stop requested",
                now=now,
                board=self.board,
                desired="stopped",
            )
            return await view(tx, stopped or await load(tx, project, notebook_id))

    async def delete(
        self, project: str, notebook_id: str, selector: dict[str, str] | None = None
    ) -> wire.Notebook:
        now = self.clock()
        async with self.db.transaction() as tx:
            row = await load(tx, project, notebook_id, selector)
            state = S(row["state"])
            if state in (S.DELETING, S.DELETED):
                raise conflict(f"notebook {notebook_id} is already {state}", state=state.value)
            deleting = await change_state(
                tx,
                row,
                S.DELETING,
                "delete requested",
                now=now,
                board=self.board,
                desired="deleted",
            ) or await load(tx, project, notebook_id)
            if row["host_id"] is None and row["last_host_id"] is None:
                # Never ran on a host: nothing is stored anywhere, so nothing to wait for.
                deleted = await change_state(
                    tx,
                    deleting,
                    S.DELETED,
                    "deleted (it never ran, so no host held anything)",
                    now=now,
                    board=self.board,
                )
                return await view(tx, deleted or await load(tx, project, notebook_id))
            return await view(tx, deleting)
