"""The steps that start, watch, stop and delete one notebook's container (design.md,
"Lifecycle, who does what"). The dispatcher (:mod:`agent.reconcile`) picks the step; each one
does its part and sets the state it ends in through :meth:`NotebookRecords.set_state`.

* start: workspace (use host dir, else restore; marker rules), data volumes, then create and
  start ``nbfleet-<id>`` (its editor port published on ``AgentConfig.upstream_host`` only,
  loopback by default: the agent's proxy is the way in). No container within
  ``start_timeout_s`` → FAILED (with the last error met);
* STARTING: RUNNING once the editor answers HTTP on its published port; no answer within
  ``start_timeout_s`` → push → FAILED;
* exited: exit code N ≠ 0 → push → FAILED ``container exited with code N``; exit 0 → STOPPING
  → push → STOPPED. Its last output is kept (:mod:`agent.kept_logs`) before it is removed;
* container lost (RUNNING, no container): ERROR, after saving what the host still has;
* stop: stop and remove the container, then push (:meth:`NotebookSync.push_then`), STOPPED;
* delete: remove the container, the host dirs and the workspace objects, DELETED.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import aiohttp

from agent.kept_logs import KeptLogs
from agent.notebook_sync import NotebookSync
from agent.proxy_paths import editor_path, upstream_authority
from agent.records import NotebookRecord, NotebookRecords
from agent.runtime import (
    ContainerExists,
    ContainerInfo,
    ContainerLimits,
    ContainerRuntime,
    ContainerSpec,
    ImageUnavailable,
)
from agent.volumes import VolumeSync
from agent.workspace.host import HostWorkspaces, MarkerMissing
from common.config import AgentConfig
from common.states import NotebookState
from common.wire import Assignment

log = logging.getLogger(__name__)

S = NotebookState
Probe = Callable[[str], Awaitable[bool]]


async def http_probe(url: str) -> bool:
    """True when something answers HTTP below 500 at ``url`` (a login page counts)."""
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as session:
            async with session.get(url, allow_redirects=False) as response:
                return response.status < 500
    except (TimeoutError, aiohttp.ClientError, OSError):
        return False


def editor_url(assignment: Assignment, upstream_host: str, host_port: int) -> str:
    """The editor itself, where its port is published (the readiness probe)."""
    path = editor_path(assignment.base_url, assignment.url_path)
    return f"http://{upstream_authority(upstream_host, host_port)}{path}"


class NotebookSteps:
    def __init__(
        self,
        config: AgentConfig,
        runtime: ContainerRuntime,
        workspaces: HostWorkspaces,
        volumes: VolumeSync,
        records: NotebookRecords,
        sync: NotebookSync,
        kept_logs: KeptLogs,
        probe: Probe,
        clock: Callable[[], float],
    ) -> None:
        self.config = config
        self.runtime = runtime
        self.workspaces = workspaces
        self.volumes = volumes
        self.records = records
        self.sync = sync
        self.kept_logs = kept_logs
        self.probe = probe
        self.clock = clock

    def _timed_out(self, record: NotebookRecord) -> bool:
        return self.clock() - record.first_seen > self.config.start_timeout_s

    async def remove_other_generation(self, record: NotebookRecord, info: ContainerInfo) -> None:
        """The notebook's container is of another run than ``record``'s: gone before anything
        else happens."""
        log.info(
            "notebook=%s removing container of generation %d (current %d)",
            record.notebook,
            info.generation,
            record.generation,
        )
        await self.runtime.stop(record.notebook)
        await self.runtime.remove(record.notebook)

    async def create(self, record: NotebookRecord, assignment: Assignment) -> ContainerInfo | None:
        """Workspace, then container. ``None`` when this step can go no further."""
        notebook = record.notebook
        if self._timed_out(record):
            reason = f"notebook did not start within {self.config.start_timeout_s:.0f}s"
            if record.last_error:
                reason += f": {record.last_error}"
            self.records.set_state(record, S.FAILED, reason)
            return None
        source = assignment.restore_from
        if not record.phases:
            # From when this agent took the start on to when it began working on it.
            record.phases["wait"] = max(0.0, self.clock() - record.first_seen)
        timed = self.records.timed
        try:
            with timed(record, "restore"), self.sync.syncing(record) as progress:
                record.start_notes = await self.workspaces.prepare(
                    notebook,
                    assignment.initialized,
                    progress=progress,
                    source_notebook=source.notebook if source else None,
                    snapshot=source.snapshot if source else None,
                )
        except MarkerMissing as exc:
            self.records.set_state(record, S.ERROR, str(exc))
            return None
        except Exception as exc:
            record.last_error = f"workspace restore failed: {exc}"
            log.warning("notebook=%s %s; retrying next tick", notebook, record.last_error)
            return None
        with timed(record, "volumes"):
            mounts = await self.sync.pull_volumes(record, assignment)
        if mounts is None:
            return None
        spec = ContainerSpec(
            notebook=notebook,
            project=assignment.project,
            generation=record.generation,
            image=assignment.image,
            command=list(assignment.command),
            env=dict(assignment.env),
            user=assignment.user,
            gpus=list(assignment.gpus),
            cpu=assignment.cpu,
            memory_mb=assignment.memory_mb,
            editor_port=assignment.editor_port,
            workspace_dir=self.workspaces.workspace_dir(notebook),
            scratch_dir=self.workspaces.scratch(notebook),
            upstream_host=self.config.upstream_host,
            nvidia_runtime=self.config.nvidia_runtime,
            extra_mounts=mounts,
            limits=ContainerLimits.from_config(self.config),
        )
        self.sync.show(record, "container")
        try:
            with timed(record, "container"):
                info = await self.runtime.create_and_start(spec)
        except ImageUnavailable as exc:
            # What the user can do about it: the image of their version is gone from this
            # host (an upgrade retired it, or it was never built here).
            self.records.set_state(
                record,
                S.ERROR,
                f"{exc}; `nbfleet catalog` lists the versions hosts have, and "
                f"`nbfleet notebook update {notebook} --framework-version VERSION` moves the "
                "notebook to one",
            )
            return None
        except ContainerExists:
            return None  # created meanwhile; the next step inspects it
        except Exception as exc:
            record.last_error = f"container start failed: {exc}"
            log.warning("notebook=%s %s; retrying next tick", notebook, record.last_error)
            return None
        log.info("notebook=%s generation=%d container started", notebook, record.generation)
        record.container_started = self.clock()
        self.sync.show(record, "editor", assignment.editor)
        return info

    async def starting(
        self, record: NotebookRecord, assignment: Assignment, info: ContainerInfo
    ) -> None:
        """A STARTING notebook whose container runs: RUNNING once the editor answers (with
        what the restore had to say), FAILED once ``start_timeout_s`` has passed without."""
        port = info.host_port
        if port and await self.probe(editor_url(assignment, self.config.upstream_host, port)):
            reason = "; ".join(["editor answers", *record.start_notes])
            self.sync.show(record, None)
            self.records.set_state(record, S.RUNNING, reason)
            record.last_checkpoint = self.clock()
        elif self._timed_out(record):
            self.sync.show(record, None)
            await self.runtime.stop(record.notebook)
            await self.runtime.remove(record.notebook)
            await self.sync.push_then(
                record,
                S.FAILED,
                f"editor did not answer within {self.config.start_timeout_s:.0f}s",
            )

    async def exited(self, record: NotebookRecord, info: ContainerInfo) -> None:
        notebook = record.notebook
        if info.exit_code is None:
            # Created but never started (an agent crash between create and start): redo.
            await self.runtime.remove(notebook)
            return
        await self.kept_logs.keep(self.runtime, notebook)
        await self.runtime.remove(notebook)
        reason = f"container exited with code {info.exit_code}"
        if info.exit_code != 0:
            await self.sync.push_then(record, S.FAILED, reason)
        else:
            self.records.set_state(record, S.STOPPING, reason)
            await self.sync.push_then(record, S.STOPPED, reason)

    async def container_lost(self, record: NotebookRecord) -> None:
        """A RUNNING notebook whose container is gone (removed behind our back, or the host
        died and came back). A backend error, not the notebook's: save what the host still
        has; with no host dir left nothing is pushed, so the last checkpoint stays the newest
        backup and a start restores it."""
        notebook = record.notebook
        if self.workspaces.has_workspace(notebook):
            await self.sync.push_then(record, S.ERROR, "container disappeared; workspace saved")
            return
        await self.workspaces.remove_scratch(notebook)
        self.records.set_state(
            record,
            S.ERROR,
            "container and host workspace disappeared (host restarted with an empty disk?); "
            "start the notebook again to restore its last backup",
        )

    async def stop(self, record: NotebookRecord) -> None:
        if record.state in (S.STOPPED, S.FAILED, S.ERROR):
            return
        record.phases.clear()  # a start cut short is not this stop's
        with self.records.timed(record, "container"):
            await self.runtime.stop(record.notebook)
            await self.kept_logs.keep(self.runtime, record.notebook)
            await self.runtime.remove(record.notebook)
        await self.sync.push_then(record, S.STOPPED, "stopped")

    async def delete(self, record: NotebookRecord) -> None:
        if record.state == S.DELETED:
            return
        notebook = record.notebook
        await self.runtime.stop(notebook, timeout_s=2)
        await self.runtime.remove(notebook)
        await self.workspaces.remove_scratch(notebook)
        await self.workspaces.remove_workspace_dir(notebook)
        await self.volumes.remove(notebook)
        self.kept_logs.forget(notebook)
        deleted = await self.workspaces.delete_remote(notebook)
        log.info("notebook=%s deleted %d workspace objects", notebook, deleted)
        self.records.set_state(record, S.DELETED, "deleted")
