"""``PUT /v1/notebooks/{id}``: changing a notebook after ``run`` (``wire.NotebookUpdate``).

What a field means for a notebook that runs decides when it applies:

* at once, whatever the state: the name, labels, SSH keys, restart-on-timeout, public access
  and the idle timeout. They are the scheduler's to enforce, or the agent's from the
  notebook's assignment, so the host running the notebook is told in the same transaction
  (its assignment version bumped, its long-poll woken): new SSH connections take the new keys,
  the proxy the new public access, and labels, which decide which scoped tokens reach the
  notebook, make the agent forget what the scheduler told it about any token;
* at the next start: environment variables, which are the container's. Changed while the
  notebook has a container (STARTING, RUNNING), they are stored and named in
  ``notebooks.pending_restart`` (``Notebook.pending_restart``) until it enters STARTING again
  (:mod:`scheduler.lifecycle` empties it);
* only while it is settled (STOPPED, FAILED, ERROR; 409 naming the state otherwise):
  resources (``gpu``, ``cpu``, ``flavor``), the framework version and volumes. They shape the
  container and where it may be placed. Volumes change only on a STOPPED notebook: a FAILED one
  may hold volume changes on its last host that its stop could not push, which a new list
  would send to other buckets.

Every value is checked as at ``run`` (400 naming the field, 403 for labels a scoped token may
not set or an idle timeout over the project's); a refused update changes nothing. Quotas apply
when the notebook starts, as for any start.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from msgspec import UNSET

from common import wire
from common.config import SchedulerConfig
from common.errors import conflict
from common.states import ON_HOST, STARTABLE, NotebookState
from scheduler import idle, placement
from scheduler.board import AssignmentBoard
from scheduler.datastores import check_volumes, encode_volumes
from scheduler.db import Database, Row
from scheduler.notebook_requests import asked_units, framework_version, labels_within
from scheduler.notebook_views import load, require_state, view
from scheduler.ssh_keys import checked_keys, encode_keys

log = logging.getLogger(__name__)

S = NotebookState

#: Fields that change only while the notebook is settled.
WHILE_STOPPED = ("gpu", "cpu", "flavor", "framework_version", "volumes")
#: States with a container that runs with the settings it was started with.
HAS_CONTAINER = frozenset({S.STARTING, S.RUNNING})


async def update(
    db: Database,
    config: SchedulerConfig,
    board: AssignmentBoard,
    clock: Callable[[], float],
    project: str,
    notebook_id: str,
    request: wire.NotebookUpdate,
    selector: dict[str, str] | None = None,
) -> wire.Notebook:
    """Apply ``request`` to the notebook in one transaction and answer it as stored."""
    asked = [f for f in request.__struct_fields__ if getattr(request, f) is not UNSET]
    keys = (
        None
        if request.ssh_public_keys is UNSET
        else checked_keys(request.ssh_public_keys, "$.ssh_public_keys")
    )
    async with db.transaction() as tx:
        row = await load(tx, project, notebook_id, selector)
        state = S(row["state"])
        if state in (S.DELETING, S.DELETED):
            raise conflict(
                f"notebook {notebook_id} is {state}; a deleted notebook cannot be changed",
                state=state.value,
            )
        stopped_only = [f for f in asked if f in WHILE_STOPPED]
        if stopped_only:
            require_state(
                row,
                STARTABLE,
                f"{', '.join(stopped_only)} can be changed on a stopped notebook only "
                f"(`nbfleet notebook stop {notebook_id}` first)",
            )
        if request.volumes is not UNSET and state != S.STOPPED:
            raise conflict(
                f"notebook {notebook_id} is {state}; volumes can be changed once it stopped "
                "cleanly (its last stop pushed them): start it, then stop it",
                state=state.value,
            )
        changes: dict[str, object] = {}
        if request.name is not UNSET:
            changes["name"] = request.name
        if request.labels is not UNSET:
            changes["labels"] = json.dumps(labels_within(request.labels, selector))
        if keys is not None:
            changes["ssh_public_keys"] = encode_keys(keys)
        if request.restart_on_timeout is not UNSET:
            changes["restart_on_timeout"] = int(request.restart_on_timeout)
        if request.unsecure_http is not UNSET:
            changes["unsecure_http"] = int(request.unsecure_http)
        if request.idle_timeout_s is not UNSET:
            if request.idle_timeout_s is not None:
                project_s = await idle.project_timeout_of(tx, project, config.quota)
                refusal = idle.asked_refusal(project, project_s, request.idle_timeout_s)
                if refusal is not None:
                    raise refusal
            changes["idle_timeout_s"] = request.idle_timeout_s
        if request.envvars is not UNSET:
            changes["envvars"] = json.dumps(request.envvars)
        changes.update(_resources(row, request, config))
        if request.framework_version is not UNSET:
            version, image = _version(row, request.framework_version, config)
            changes["framework_version"] = version
            changes["image"] = image
        if request.volumes is not UNSET:
            await check_volumes(tx, project, request.volumes)
            changes["volumes"] = encode_volumes(request.volumes)
        pending = set(json.loads(row["pending_restart"]))
        if state in HAS_CONTAINER:
            if request.envvars is not UNSET and request.envvars != json.loads(row["envvars"]):
                pending.add("envvars")
            changes["pending_restart"] = json.dumps(sorted(pending))
        if changes:
            columns = ", ".join(f"{column} = ?" for column in changes)
            await tx.run(
                f"UPDATE notebooks SET {columns}, version = version + 1 WHERE id = ?",
                (*changes.values(), notebook_id),
            )
            if state in ON_HOST and row["host_id"]:
                # The agent takes keys, public access and labels from the assignment.
                await tx.run(
                    "UPDATE hosts SET assignments_version = assignments_version + 1 WHERE id = ?",
                    (row["host_id"],),
                )
                board.wake_on_commit(tx, [row["host_id"]])
        notebook = await view(tx, await load(tx, project, notebook_id))
    log.info(
        "notebook=%s project=%s updated: %s%s",
        notebook_id,
        project,
        ", ".join(asked) or "nothing",
        f" (at its next start: {', '.join(notebook.pending_restart)})"
        if notebook.pending_restart
        else "",
    )
    return notebook


def _resources(
    row: Row, request: wire.NotebookUpdate, config: SchedulerConfig
) -> dict[str, object]:
    """The resource columns for what ``request`` asks (the rest kept as the notebook has
    them), checked as at ``run``; nothing when it asks for none."""
    if request.gpu is UNSET and request.cpu is UNSET and request.flavor is UNSET:
        return {}
    flavor = row["flavor"] if request.flavor is UNSET else request.flavor
    gpu, cpu = asked_units(row, config)
    if request.gpu is not UNSET:
        gpu, cpu = request.gpu, None
    if request.cpu is not UNSET:
        cpu = request.cpu
        if request.gpu is UNSET and not row["gpu"]:
            gpu = 0 if flavor is None else None
    resources = placement.resources_for(gpu, cpu, config, flavor)
    return {
        "gpu": resources.gpu,
        "cpu": resources.cpu,
        "memory_mb": resources.memory_mb,
        "flavor": resources.flavor,
        "gpu_model": resources.gpu_model,
        "disk_gb": resources.disk_gb,
    }


def _version(row: Row, asked: str, config: SchedulerConfig) -> tuple[str, str]:
    framework = config.catalog.frameworks.get(row["framework"])
    if framework is None:
        raise conflict(
            f"framework {row['framework']!r} of notebook {row['id']} is no longer in the "
            "catalog: it has no versions to change to"
        )
    return framework_version(row["framework"], framework, asked, "$.framework_version")
