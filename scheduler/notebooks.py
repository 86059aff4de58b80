"""The user-facing notebook service: create, list, get, start, stop, delete.

Every method is scoped to one project: a notebook of another project does not exist (404).
Each request is one transaction; a rejected request (400, 404, 409, 503) stores nothing. State
changes go through :func:`scheduler.lifecycle.change_state`.
"""

from __future__ import annotations

import json
import re
import secrets
import uuid
from collections.abc import Callable, Iterable

from common import wire
from common.config import SchedulerConfig
from common.errors import conflict, invalid, not_found
from common.states import STARTABLE, STOPPABLE, NotebookState
from scheduler import placement
from scheduler.board import AssignmentBoard
from scheduler.datastores import check_volumes, save_volumes, stored_volumes
from scheduler.db import Database, Row, Tx
from scheduler.lifecycle import bump_assignments, change_state, record_history
from scheduler.snapshots import ProgressBoard, latest_snapshot, retained_snapshot

S = NotebookState


def default_name(framework: str, editor: str) -> str:
    """``<framework>-<editor>-<4 hex>``, squeezed into the ``Name`` pattern."""
    stem = re.sub(r"[^a-z0-9-]+", "-", f"{framework}-{editor}".lower()).strip("-")[:56]
    stem = re.sub(r"-{2,}", "-", stem).strip("-") or "notebook"
    return f"{stem}-{secrets.token_hex(2)}"


def parse_label_selector(selector: str) -> tuple[str, str]:
    """``k=v`` from a ``label`` query parameter; anything else is a 400 naming ``label``."""
    key, sep, value = selector.partition("=")
    key_ok = re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?", key)
    value_ok = re.fullmatch(r"([A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)?", value)
    if not sep or not key_ok or not value_ok:
        raise invalid(
            f"invalid query parameter `label`: {selector!r} is not a key=value selector",
            field="label",
        )
    return key, value


def parse_states(values: Iterable[str]) -> set[NotebookState]:
    states = set()
    for value in values:
        try:
            states.add(S(value.upper()))
        except ValueError:
            known = ", ".join(s.value for s in S)
            raise invalid(
                f"invalid query parameter `state`: {value!r} is not one of {known}",
                field="state",
            )
    return states


class NotebookService:
    def __init__(
        self,
        db: Database,
        config: SchedulerConfig,
        board: AssignmentBoard,
        clock: Callable[[], float],
        progress: ProgressBoard | None = None,
    ) -> None:
        self.db = db
        self.config = config
        self.board = board
        self.clock = clock
        self.progress = progress or ProgressBoard()

    def _with_progress(self, nb: wire.Notebook) -> wire.Notebook:
        nb.progress = self.progress.get(nb.id, nb.generation, nb.state)
        return nb

    @property
    def fresh_within_s(self) -> float:
        return self.config.heartbeat_interval_s * self.config.heartbeat_misses

    # ------------------------------------------------------------ queries

    async def list(
        self, project: str, *, states: set[NotebookState], labels: dict[str, str]
    ) -> list[wire.Notebook]:
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
            return [self._with_progress(await _view(tx, row)) for row in wanted]

    async def get(self, project: str, notebook_id: str) -> wire.Notebook:
        async with self.db.read() as tx:
            row = await _load(tx, project, notebook_id)
            return self._with_progress(await _view(tx, row, with_history=True))

    async def history(self, project: str, notebook_id: str) -> list[wire.StateChange]:
        async with self.db.read() as tx:
            await _load(tx, project, notebook_id)
            return await _history(tx, notebook_id)

    async def log_source(self, project: str, notebook_id: str) -> tuple[str, str]:
        """``(host_id, agent_url)`` of the host that runs the notebook or, once it is stopped,
        of the host it last ran on (whose agent keeps its last output)."""
        async with self.db.read() as tx:
            row = await _load(tx, project, notebook_id)
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

    # ------------------------------------------------------------ commands

    async def create(
        self,
        project: str,
        request: wire.NotebookCreate,
        *,
        fork: wire.RestoreSource | None = None,
    ) -> wire.Notebook:
        """Place and store a new notebook. With ``fork``, its workspace starts from that
        snapshot of another notebook (checked by the caller, in :meth:`fork`)."""
        catalog = self.config.catalog
        framework = catalog.frameworks.get(request.framework)
        if framework is None:
            raise invalid(
                f"invalid request: unknown framework {request.framework!r} "
                f"(known: {', '.join(sorted(catalog.frameworks)) or 'none'}) - at `$.framework`",
                field="$.framework",
            )
        editor = catalog.editors.get(request.editor)
        if editor is None:
            raise invalid(
                f"invalid request: unknown editor {request.editor!r} "
                f"(known: {', '.join(sorted(catalog.editors)) or 'none'}) - at `$.editor`",
                field="$.editor",
            )
        if request.editor not in framework.editors:
            raise invalid(
                f"invalid request: framework {request.framework!r} does not offer editor "
                f"{request.editor!r} (it offers: {', '.join(framework.editors)}) - at `$.editor`",
                field="$.editor",
            )
        resources = placement.resources_for(request.gpu, request.cpu, self.config)
        name = request.name or default_name(request.framework, request.editor)
        notebook_id = str(uuid.uuid4())
        now = self.clock()
        async with self.db.transaction() as tx:
            await check_volumes(tx, project, request.volumes)
            hosts = await placement.load_capacity(tx, now=now, fresh_within_s=self.fresh_within_s)
            chosen = placement.place(hosts, resources)
            reason = f"placed on {chosen.host}"
            if fork is not None:
                reason += f"; workspace from backup {fork.snapshot} of {fork.notebook}"
            await tx.run(
                "INSERT INTO notebooks (id, project, name, framework, editor, image, command, "
                "editor_port, url_path, user, gpu, cpu, memory_mb, labels, envvars, state, "
                "state_reason, state_at, desired, host_id, last_host_id, generation, "
                "initialized, access_token, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'running', ?, ?, "
                "1, 0, ?, ?)",
                (
                    notebook_id,
                    project,
                    name,
                    request.framework,
                    request.editor,
                    framework.image,
                    json.dumps(editor.command),
                    editor.port,
                    editor.url_path,
                    framework.user,
                    resources.gpu,
                    resources.cpu,
                    resources.memory_mb,
                    json.dumps(request.labels),
                    json.dumps(request.envvars),
                    S.STARTING.value,
                    reason,
                    now,
                    chosen.host,
                    chosen.host,
                    secrets.token_hex(24),
                    now,
                ),
            )
            if fork is not None:
                # The snapshot carries the source's .workspace.initialized: a fork is a
                # restart of that workspace, so the marker rules apply from its first start.
                await tx.run(
                    "UPDATE notebooks SET fork_notebook = ?, fork_snapshot = ?, initialized = 1 "
                    "WHERE id = ?",
                    (fork.notebook, fork.snapshot, notebook_id),
                )
            await save_volumes(tx, notebook_id, request.volumes)
            await placement.reserve(tx, chosen, notebook_id)
            await record_history(tx, notebook_id, S.STARTING, reason, at=now, generation=1)
            await bump_assignments(tx, self.board, {chosen.host})
            row = await _load(tx, project, notebook_id)
            return await _view(tx, row)

    async def fork(
        self, project: str, notebook_id: str, request: wire.NotebookFork
    ) -> wire.Notebook:
        """A new notebook like ``notebook_id`` (framework, editor, resources, labels, env,
        volumes) whose workspace starts from one of its retained snapshots."""
        async with self.db.read() as tx:
            source = await _load(tx, project, notebook_id)
            await retained_snapshot(tx, notebook_id, request.backup)
        overrides = request.gpu is not None or request.cpu is not None
        create = wire.NotebookCreate(
            framework=source["framework"],
            editor=source["editor"],
            gpu=request.gpu if overrides else source["gpu"],
            cpu=request.cpu if overrides else source["cpu"],
            name=request.name,
            labels=json.loads(source["labels"]) if request.labels is None else request.labels,
            envvars=json.loads(source["envvars"]),
            # Same data attached; aliases are checked again, as for any new notebook.
            volumes=stored_volumes(source),
        )
        return await self.create(
            project, create, fork=wire.RestoreSource(notebook=notebook_id, snapshot=request.backup)
        )

    async def backups_of(self, project: str, notebook_id: str) -> None:
        """Raise 404 unless the notebook exists in ``project`` (backups are scoped like it)."""
        async with self.db.read() as tx:
            await _load(tx, project, notebook_id)

    async def start(self, project: str, notebook_id: str) -> wire.Notebook:
        now = self.clock()
        async with self.db.transaction() as tx:
            row = await _load(tx, project, notebook_id)
            _require(row, STARTABLE, "only a STOPPED, FAILED or ERROR notebook can be started")
            resources = placement.Resources(row["gpu"], row["cpu"], row["memory_mb"])
            hosts = await placement.load_capacity(tx, now=now, fresh_within_s=self.fresh_within_s)
            chosen = placement.place(hosts, resources, last_host=row["last_host_id"])
            await placement.reserve(tx, chosen, notebook_id)
            await change_state(
                tx,
                row,
                S.STARTING,
                f"placed on {chosen.host}",
                now=now,
                board=self.board,
                desired="running",
                generation=row["generation"] + 1,
                host_id=chosen.host,
            )
            return await _view(tx, await _load(tx, project, notebook_id))

    async def stop(self, project: str, notebook_id: str) -> wire.Notebook:
        now = self.clock()
        async with self.db.transaction() as tx:
            row = await _load(tx, project, notebook_id)
            _require(row, STOPPABLE, "only a STARTING or RUNNING notebook can be stopped")
            await change_state(
                tx, row, S.STOPPING, "stop requested", now=now, board=self.board, desired="stopped"
            )
            return await _view(tx, await _load(tx, project, notebook_id))

    async def delete(self, project: str, notebook_id: str) -> wire.Notebook:
        now = self.clock()
        async with self.db.transaction() as tx:
            row = await _load(tx, project, notebook_id)
            state = S(row["state"])
            if state in (S.DELETING, S.DELETED):
                raise conflict(f"notebook {notebook_id} is already {state}", state=state.value)
            await change_state(
                tx,
                row,
                S.DELETING,
                "delete requested",
                now=now,
                board=self.board,
                desired="deleted",
            )
            return await _view(tx, await _load(tx, project, notebook_id))


def _require(row: Row, allowed: frozenset[NotebookState], requirement: str) -> None:
    """409 naming the current state (also in ``detail.state``) unless it is ``allowed``."""
    state = S(row["state"])
    if state not in allowed:
        raise conflict(f"notebook {row['id']} is {state}; {requirement}", state=state.value)


# ---------------------------------------------------------------- row → wire


async def _load(tx: Tx, project: str, notebook_id: str) -> Row:
    row = await tx.one(
        "SELECT * FROM notebooks WHERE id = ? AND project = ?", (notebook_id, project)
    )
    if row is None:
        raise not_found("notebook", notebook_id)
    return row


async def _history(tx: Tx, notebook_id: str) -> list[wire.StateChange]:
    rows = await tx.all(
        "SELECT state, reason, at, generation FROM state_history WHERE notebook_id = ? ORDER BY id",
        (notebook_id,),
    )
    return [
        wire.StateChange(
            state=S(r["state"]), reason=r["reason"], at=r["at"], generation=r["generation"]
        )
        for r in rows
    ]


async def _view(tx: Tx, row: Row, *, with_history: bool = False) -> wire.Notebook:
    gpus = await tx.all(
        "SELECT uuid, model, idx FROM gpus WHERE notebook_id = ? ORDER BY idx", (row["id"],)
    )
    billed = await tx.one(
        "SELECT COALESCE(SUM(billed_minutes), 0) AS minutes FROM usage WHERE notebook_id = ?",
        (row["id"],),
    )
    state = S(row["state"])
    return wire.Notebook(
        id=row["id"],
        project=row["project"],
        name=row["name"],
        framework=row["framework"],
        editor=row["editor"],
        image=row["image"],
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
        gpus=[wire.GpuRef(uuid=g["uuid"], model=g["model"], index=g["idx"]) for g in gpus],
        url=row["url"] if state == S.RUNNING else None,
        running_since=row["running_since"],
        billed_minutes=billed["minutes"] if billed else 0,
        history=await _history(tx, row["id"]) if with_history else None,
        volumes=stored_volumes(row),
        workspace=await latest_snapshot(tx, row["id"]),
        forked_from=(
            wire.RestoreSource(notebook=row["fork_notebook"], snapshot=row["fork_snapshot"])
            if row["fork_notebook"]
            else None
        ),
    )
