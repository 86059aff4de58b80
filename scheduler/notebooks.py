"""The user-facing notebook service: create, list, get, start, stop, delete.

Every method is scoped to one project: a notebook of another project does not exist (404).
Each request is one transaction; a rejected request (400, 404, 409, 503) stores nothing. State
changes go through :func:`scheduler.lifecycle.change_state`.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import uuid
from collections.abc import Awaitable, Callable, Iterable

from common import wire
from common.config import SchedulerConfig
from common.errors import ApiError, conflict, invalid, not_found
from common.states import STARTABLE, STOPPABLE, NotebookState
from scheduler import placement, quota
from scheduler.access import editor_path
from scheduler.board import AssignmentBoard
from scheduler.datastores import check_volumes, save_volumes, stored_volumes
from scheduler.db import Database, Row, Tx
from scheduler.lifecycle import bump_assignments, change_state, record_history
from scheduler.queue import (
    Dispatcher,
    kind_of,
    queue_info,
    queue_infos,
    resources_of,
    served,
    waiting_kinds,
)
from scheduler.snapshots import ProgressBoard, latest_snapshot, retained_snapshot
from scheduler.ssh_keys import checked_keys, encode_keys, key_infos, ssh_address

log = logging.getLogger(__name__)

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
        #: Set by the app: the heartbeat TTL, which grows with the fleet.
        self.ttl_s: Callable[[], float] = lambda: (
            config.heartbeat_interval_s * config.heartbeat_misses
        )
        #: Set by the app: writes heartbeats held in memory, so placement sees them.
        self.flush_heartbeats: Callable[[Tx], Awaitable[int]] | None = None
        #: Set by the app: editor proxy activity not written yet, ``(notebook, host) →
        #: (last_activity_at, proxied_bytes)``, so views never lag a flush.
        self.pending_activity: Callable[[str, str | None], tuple[float, int] | None] = (
            lambda notebook, host: None
        )
        self.dispatcher = Dispatcher(config, board, lambda: self.ttl_s())

    def _with_progress(self, nb: wire.Notebook) -> wire.Notebook:
        """What is held in memory: sync progress, and proxy activity not written yet."""
        nb.progress = self.progress.get(nb.id, nb.generation, nb.state)
        activity = self.pending_activity(nb.id, nb.host)
        if activity is not None:
            at, carried = activity
            nb.last_activity_at = max(nb.last_activity_at or 0.0, at)
            nb.proxied_bytes = carried
        return nb

    async def _place_or_queue(
        self, tx: Tx, row: Row, *, now: float, reason_suffix: str = "", **changes: object
    ) -> None:
        """Move ``row`` (just created as QUEUED, or settled) to STARTING on a host with room,
        or to QUEUED when there is none or notebooks of its kind already wait."""
        res = resources_of(row)
        chosen = await self._find_room(tx, res, row["id"], last_host=row["last_host_id"])
        if chosen is not None:
            await placement.reserve(tx, chosen, row["id"])
            await change_state(
                tx,
                row,
                S.STARTING,
                f"placed on {chosen.host}{reason_suffix}",
                now=now,
                board=self.board,
                host_id=chosen.host,
                **changes,
            )
            await served(tx, row["project"], now)
        elif S(row["state"]) != S.QUEUED:
            await change_state(
                tx,
                row,
                S.QUEUED,
                f"waiting for {res.describe()}{reason_suffix}",
                now=now,
                board=self.board,
                **changes,
            )

    async def _find_room(
        self, tx: Tx, res: placement.Resources, notebook_id: str, *, last_host: str | None
    ) -> placement.Placement | None:
        """Where ``res`` can go now, unless notebooks of its kind already wait (it then
        queues behind them) or no host has room."""
        if self.flush_heartbeats is not None:
            await self.flush_heartbeats(tx)
        if kind_of(res) in await waiting_kinds(tx, besides=notebook_id):
            return None
        return await placement.find_host(
            tx,
            res,
            now=self.clock(),
            fresh_within_s=self.ttl_s(),
            last_host=last_host,
            strategy=self.config.placement,
            disk_floor=placement.DiskFloor.of(self.config),
        )

    async def _admit(self, tx: Tx, project: str, res: placement.Resources) -> None:
        """403 over quota; 503 when no host could ever hold the request."""
        await quota.check(tx, project, res, self.config.quota)
        why = await placement.never_fits(tx, res)
        if why is not None:
            raise ApiError(
                "no_capacity",
                f"{why}; a notebook of {res.describe()} could never be placed",
                requested=res.gpu or res.cpu,
                unit="GPU" if res.gpu else "CPU",
            )

    # ------------------------------------------------------------ queries

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
            return [self._with_progress(view) for view in views]

    async def get(
        self, project: str, notebook_id: str, selector: dict[str, str] | None = None
    ) -> wire.Notebook:
        async with self.db.read() as tx:
            row = await _load(tx, project, notebook_id, selector)
            return self._with_progress(await self._view(tx, row, with_history=True))

    async def history(
        self, project: str, notebook_id: str, selector: dict[str, str] | None = None
    ) -> list[wire.StateChange]:
        async with self.db.read() as tx:
            await _load(tx, project, notebook_id, selector)
            return await _history(tx, notebook_id)

    async def log_source(
        self, project: str, notebook_id: str, selector: dict[str, str] | None = None
    ) -> tuple[str, str]:
        """``(host_id, agent_url)`` of the host that runs the notebook or, once it is stopped,
        of the host it last ran on (whose agent keeps its last output)."""
        async with self.db.read() as tx:
            row = await _load(tx, project, notebook_id, selector)
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
            row = await _load(tx, project, notebook_id, selector)
            _require(row, frozenset({S.RUNNING}), "commands run only in a RUNNING notebook")
            host = await tx.one("SELECT agent_url FROM hosts WHERE id = ?", (row["host_id"],))
            assert host is not None  # a RUNNING notebook holds its host
            return row["host_id"], host["agent_url"]

    # ------------------------------------------------------------ commands

    async def create(
        self,
        project: str,
        request: wire.NotebookCreate,
        *,
        fork: wire.RestoreSource | None = None,
        selector: dict[str, str] | None = None,
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
        resources = placement.resources_for(request.gpu, request.cpu, self.config, request.flavor)
        labels = dict(request.labels)
        for key, value in (selector or {}).items():
            if labels.setdefault(key, value) != value:
                raise ApiError(
                    "forbidden",
                    f"this token reaches only notebooks labelled {key}={value}; "
                    f"the request sets {key}={labels[key]}",
                    label=key,
                )
        ssh_keys = checked_keys(request.ssh_public_keys, "$.ssh_public_keys")
        name = request.name or default_name(request.framework, request.editor)
        notebook_id = str(uuid.uuid4())
        now = self.clock()
        suffix = (
            f"; workspace from backup {fork.snapshot} of {fork.notebook}"
            if fork is not None
            else ""
        )
        async with self.db.transaction() as tx:
            await check_volumes(tx, project, request.volumes)
            await self._admit(tx, project, resources)
            # Placed at once when there is room (its history starts with STARTING), else
            # stored as QUEUED; decided before the insert so the row is written once.
            chosen = await self._find_room(tx, resources, notebook_id, last_host=None)
            if chosen is not None:
                state, reason = S.STARTING, f"placed on {chosen.host}{suffix}"
            else:
                state, reason = S.QUEUED, f"waiting for {resources.describe()}{suffix}"
            host = chosen.host if chosen is not None else None
            await tx.run(
                "INSERT INTO notebooks (id, project, name, framework, editor, image, command, "
                "editor_port, url_path, user, gpu, cpu, memory_mb, labels, envvars, state, "
                "state_reason, state_at, desired, host_id, last_host_id, generation, "
                "initialized, access_token, created_at, flavor, gpu_model, disk_gb, "
                "restart_on_timeout, queued_at, unsecure_http, ssh_public_keys) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'running', ?, "
                "?, 1, 0, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                    json.dumps(labels),
                    json.dumps(request.envvars),
                    state.value,
                    reason,
                    now,
                    host,
                    host,
                    secrets.token_hex(24),
                    now,
                    resources.flavor,
                    resources.gpu_model,
                    resources.disk_gb,
                    int(request.restart_on_timeout),
                    now if chosen is None else None,
                    int(request.unsecure_http),
                    encode_keys(ssh_keys),
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
            if chosen is not None:
                await placement.reserve(tx, chosen, notebook_id)
                await bump_assignments(tx, self.board, {chosen.host})
                await served(tx, project, now)
            await record_history(tx, notebook_id, state, reason, at=now, generation=1)
            row = await _load(tx, project, notebook_id)
            return await self._view(tx, row, fresh=True)

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
            source = await _load(tx, project, notebook_id, selector)
            await retained_snapshot(tx, notebook_id, request.backup)
        overrides = request.gpu is not None or request.cpu is not None
        flavor = source["flavor"]
        if flavor is not None and not overrides:
            spec = self.config.flavors.get(flavor)
            unit_cpu = spec.cpu if spec is not None else 1
            gpu, cpu = (source["gpu"], None) if source["gpu"] else (None, source["cpu"] // unit_cpu)
        elif overrides:
            gpu, cpu = request.gpu, request.cpu
        else:
            gpu, cpu = source["gpu"], source["cpu"]
        create = wire.NotebookCreate(
            framework=source["framework"],
            editor=source["editor"],
            gpu=gpu,
            cpu=cpu,
            flavor=flavor,
            restart_on_timeout=bool(source["restart_on_timeout"]),
            # Same workspace, same audience: a fork of a public notebook is public too.
            unsecure_http=bool(source["unsecure_http"]),
            name=request.name,
            labels=json.loads(source["labels"]) if request.labels is None else request.labels,
            envvars=json.loads(source["envvars"]),
            # Same data attached; aliases are checked again, as for any new notebook.
            volumes=stored_volumes(source),
            # Keys are a grant to people, not part of the workspace: only those given again.
            ssh_public_keys=request.ssh_public_keys,
        )
        return await self.create(
            project,
            create,
            fork=wire.RestoreSource(notebook=notebook_id, snapshot=request.backup),
            selector=selector,
        )

    async def backups_of(
        self, project: str, notebook_id: str, selector: dict[str, str] | None = None
    ) -> None:
        """Raise 404 unless the notebook exists in ``project`` (backups are scoped like it)."""
        async with self.db.read() as tx:
            await _load(tx, project, notebook_id, selector)

    async def start(
        self, project: str, notebook_id: str, selector: dict[str, str] | None = None
    ) -> wire.Notebook:
        now = self.clock()
        async with self.db.transaction() as tx:
            row = await _load(tx, project, notebook_id, selector)
            _require(row, STARTABLE, "only a STOPPED, FAILED or ERROR notebook can be started")
            await self._admit(tx, project, resources_of(row))
            row = await self._refresh_editor(tx, row)
            await self._place_or_queue(
                tx,
                row,
                now=now,
                desired="running",
                generation=row["generation"] + 1,
                restart_pending=0,
            )
            return await self._view(tx, await _load(tx, project, notebook_id))

    async def set_ssh_keys(
        self,
        project: str,
        notebook_id: str,
        request: wire.SshKeysUpdate,
        selector: dict[str, str] | None = None,
    ) -> wire.Notebook:
        """Replace the notebook's SSH keys; 409 unless it is settled (STOPPED, FAILED, ERROR),
        so a running notebook keeps the keys it was started with and no agent holds stale
        ones. A settled notebook is assigned to no host: nothing to tell an agent."""
        keys = checked_keys(request.keys, "$.keys")
        async with self.db.transaction() as tx:
            row = await _load(tx, project, notebook_id, selector)
            _require(row, STARTABLE, "SSH keys are changeable on a stopped notebook only")
            await tx.run(
                "UPDATE notebooks SET ssh_public_keys = ? WHERE id = ?",
                (encode_keys(keys), notebook_id),
            )
            view = await self._view(tx, await _load(tx, project, notebook_id))
        log.info(
            "notebook=%s project=%s SSH keys replaced: %s",
            notebook_id,
            project,
            ", ".join(k.fingerprint for k in view.ssh_keys) or "none",
        )
        return view

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
        await tx.run(
            "UPDATE notebooks SET command = ?, editor_port = ?, url_path = ? WHERE id = ?",
            (command, editor.port, editor.url_path, row["id"]),
        )
        fresh = await tx.one("SELECT * FROM notebooks WHERE id = ?", (row["id"],))
        assert fresh is not None
        return fresh

    async def restart(self, tx: Tx, row: Row, *, now: float, why: str) -> None:
        """Start again a notebook the scheduler stopped (runtime limit, drain, lost host): no
        quota refusal, it waits in the queue like any other until quota and room allow."""
        await change_state(
            tx,
            row,
            S.QUEUED,
            f"restarting ({why}); waiting for {resources_of(row).describe()}",
            now=now,
            board=self.board,
            desired="running",
            generation=row["generation"] + 1,
            restart_pending=0,
        )

    async def stop(
        self, project: str, notebook_id: str, selector: dict[str, str] | None = None
    ) -> wire.Notebook:
        now = self.clock()
        async with self.db.transaction() as tx:
            row = await _load(tx, project, notebook_id, selector)
            _require(row, STOPPABLE, "only a QUEUED, STARTING or RUNNING notebook can be stopped")
            # A queued notebook holds nothing on any host: it is stopped at once.
            queued = S(row["state"]) == S.QUEUED
            await change_state(
                tx,
                row,
                S.STOPPED if queued else S.STOPPING,
                "stopped while queued" if queued else "stop requested",
                now=now,
                board=self.board,
                desired="stopped",
                restart_pending=0,
            )
            return await self._view(tx, await _load(tx, project, notebook_id))

    async def delete(
        self, project: str, notebook_id: str, selector: dict[str, str] | None = None
    ) -> wire.Notebook:
        now = self.clock()
        async with self.db.transaction() as tx:
            row = await _load(tx, project, notebook_id, selector)
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
                restart_pending=0,
            )
            if row["host_id"] is None and row["last_host_id"] is None:
                # Never ran on a host: nothing is stored anywhere, so nothing to wait for.
                await change_state(
                    tx,
                    await _load(tx, project, notebook_id),
                    S.DELETED,
                    "deleted (it never ran, so no host held anything)",
                    now=now,
                    board=self.board,
                )
            return await self._view(tx, await _load(tx, project, notebook_id))

    async def _view(
        self, tx: Tx, row: Row, *, with_history: bool = False, fresh: bool = False
    ) -> wire.Notebook:
        view = await _view(tx, row, with_history=with_history, fresh=fresh)
        if view.state == S.QUEUED:
            view.queue = await queue_info(tx, row)
        return view


def _require(row: Row, allowed: frozenset[NotebookState], requirement: str) -> None:
    """409 naming the current state (also in ``detail.state``) unless it is ``allowed``."""
    state = S(row["state"])
    if state not in allowed:
        raise conflict(f"notebook {row['id']} is {state}; {requirement}", state=state.value)


# ---------------------------------------------------------------- row → wire


async def _load(
    tx: Tx, project: str, notebook_id: str, selector: dict[str, str] | None = None
) -> Row:
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


async def _view(
    tx: Tx, row: Row, *, with_history: bool = False, fresh: bool = False
) -> wire.Notebook:
    """``fresh``: the notebook was created in this transaction, so it has neither usage nor
    snapshots to look up."""
    gpus = await tx.all(
        "SELECT uuid, model, idx FROM gpus WHERE notebook_id = ? ORDER BY idx", (row["id"],)
    )
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
        workspace_used_bytes=row["workspace_used_bytes"],
        workspace_used_at=row["workspace_used_at"],
        ssh_keys=key_infos(row),
        ssh=await ssh_address(tx, row),
    )
