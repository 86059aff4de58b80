"""Desired vs actual: the agent's half of the notebook lifecycle (design.md, "Lifecycle").

The scheduler's assignments say what it wants; Docker and the host dirs say what is. Each
:meth:`Reconciler.tick` starts one step per notebook in its own task, guarded by a per-notebook
lock and skipped while that notebook's previous step still runs, so a slow pull or push of one
notebook never delays another. A step looks at the container and does the next thing:

* ``desired=running``: workspace (use host dir, else restore; marker rules), create and start
  ``nbfleet-<id>`` (its editor port published on loopback only: the agent's proxy is the way
  in), report RUNNING once the editor answers HTTP there, with the notebook's URL (through the
  proxy when :attr:`Reconciler.proxy_url` is set, else the loopback one); an exit code N ≠ 0
  → push → FAILED ``container exited with code N``; exit 0 → STOPPING → push → STOPPED; no
  answer within ``start_timeout_s`` → FAILED. A container of another generation is removed first.
* ``desired=stopped``: stop and remove the container, remove scratch, push the workspace, remove
  the host dir only after the push succeeded, STOPPED (a failed push: FAILED, dir kept).
* ``desired=deleted``: remove the container, the host dirs and the workspace objects, DELETED.

Nothing is destroyed before the first assignments arrive: after an agent restart the existing
containers are adopted (a running notebook is found RUNNING again, never restarted). A managed
container no assignment mentions (the scheduler gave up on it, e.g. it declared this host lost
and moved the notebook to ERROR or elsewhere) is stopped, its workspace pushed, and only then
removed with its host dir; while the push fails the stopped container and the host dir stay, and
the push is retried with backoff (across agent restarts too, since the container is the
reminder). Nothing is reported for it: the scheduler has settled that notebook.

Every state change goes through :meth:`Reconciler._set_state`: the ones this agent causes are
validated with :func:`common.states.check` and queued in the outbox; the scheduler's own
(STOPPING and DELETING set by a user) are adopted from assignments without a report. A run this
agent ends (leaving RUNNING) also queues its final billed minutes; when the scheduler ends it,
the scheduler closes the run itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from agent.client import Backoff
from agent.kept_logs import KeptLogs
from agent.proxy_paths import UPSTREAM_HOST, Editor, editor_path, public_url
from agent.report import Outbox, billed_minutes
from agent.runtime import (
    ContainerExists,
    ContainerInfo,
    ContainerLimits,
    ContainerRuntime,
    ContainerSpec,
    ImageUnavailable,
)
from agent.volumes import VolumeSync, VolumeSyncError
from agent.workspace.engine import PushResult
from agent.workspace.host import HostWorkspaces, MarkerMissing
from agent.workspace.progress import ProgressCallback
from common.config import AgentConfig
from common.states import InvalidTransition, NotebookState, check
from common.wire import Assignment, SnapshotReport, Transition, UsageItem

log = logging.getLogger(__name__)

S = NotebookState
Probe = Callable[[str], Awaitable[bool]]

#: Retries of an orphan's failed push: jittered, from seconds up to five minutes apart.
ORPHAN_RETRY_BASE_S = 5.0
ORPHAN_RETRY_CAP_S = 300.0
#: How often networks left behind by a crash are looked for.
NETWORK_PRUNE_INTERVAL_S = 300.0


async def http_probe(url: str) -> bool:
    """True when something answers HTTP below 500 at ``url`` (a login page counts)."""
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as session:
            async with session.get(url, allow_redirects=False) as response:
                return response.status < 500
    except (TimeoutError, aiohttp.ClientError, OSError):
        return False


@dataclass
class NotebookRecord:
    """What this agent knows about one run (generation) of a notebook."""

    notebook: str
    generation: int
    state: NotebookState
    #: When this agent first worked on this generation: the start timeout counts from here.
    first_seen: float
    running_since: float | None = None
    url: str | None = None
    last_error: str = ""
    #: What the workspace restore had to say (an unreadable snapshot skipped), reported with
    #: the RUNNING transition so it lands in the notebook's history.
    start_notes: list[str] = field(default_factory=list)
    #: When the last checkpoint was tried (or the run began): the next is due an interval later.
    last_checkpoint: float | None = None
    #: A checkpoint was due but skipped while out of contact with the scheduler.
    fenced: bool = False


class Reconciler:
    def __init__(
        self,
        config: AgentConfig,
        runtime: ContainerRuntime,
        workspaces: HostWorkspaces,
        outbox: Outbox,
        *,
        clock: Callable[[], float] = time.time,
        probe: Probe = http_probe,
        kept_logs: KeptLogs | None = None,
        volumes: VolumeSync | None = None,
    ) -> None:
        self.volumes = volumes or VolumeSync(
            config.volumes_dir, concurrency=config.sync_concurrency, clock=clock
        )
        self.config = config
        self.kept_logs = kept_logs or KeptLogs(Path(config.state_dir) / "logs")
        self.runtime = runtime
        self.workspaces = workspaces
        self.outbox = outbox
        self.clock = clock
        #: Set by the agent: False once the scheduler may have declared this host lost.
        self.in_contact: Callable[[], bool] = lambda: True
        self.probe = probe
        self.assignments: dict[str, Assignment] = {}
        self.records: dict[str, NotebookRecord] = {}
        #: Managed containers as last listed: notebook id → info.
        self.containers: dict[str, ContainerInfo] = {}
        self._synced = False
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        #: Orphans whose push failed: their backoff and when to try again.
        self._orphan_retry: dict[str, tuple[Backoff, float]] = {}
        #: The agent's public base URL, once notebooks are reported at its proxy's URLs.
        self.proxy_url: str | None = None
        self._networks_pruned_at: float | None = None

    # ------------------------------------------------------------ inputs and outputs

    def set_assignments(self, items: list[Assignment]) -> None:
        self.assignments = {item.notebook: item for item in items}
        self._synced = True
        for notebook in list(self.records):
            if notebook not in self.assignments and notebook not in self._busy():
                del self.records[notebook]

    async def adopt(self) -> None:
        """Learn the containers that already exist (agent restart). Touches nothing."""
        await self._refresh_containers()
        for info in self.containers.values():
            log.info(
                "notebook=%s generation=%d adopting container (status %s)",
                info.notebook,
                info.generation,
                info.status,
            )

    def running(self) -> list[tuple[str, int, float]]:
        """``(notebook, generation, running_since)`` of every notebook RUNNING here."""
        return [
            (r.notebook, r.generation, r.running_since)
            for r in self.records.values()
            if r.state == S.RUNNING and r.running_since is not None
        ]

    def container_ids(self) -> list[str]:
        return sorted(self.containers)

    def editor(self, notebook: str) -> Editor | None:
        """What the proxy may know of ``notebook``: ``None`` unless it is assigned here."""
        assignment = self.assignments.get(notebook)
        if assignment is None:
            return None
        record = self.records.get(notebook)
        state = record.state if record is not None else assignment.state
        info = self.containers.get(notebook)
        running_here = (
            assignment.desired == "running"
            and info is not None
            and info.running
            and (record is None or info.generation == record.generation)
        )
        return Editor(
            notebook=notebook,
            state=state,
            port=info.host_port if running_here and info is not None else None,
            base_url=assignment.base_url,
            access_token=assignment.access_token,
            unsecure_http=assignment.unsecure_http,
        )

    def notebook_url(self, assignment: Assignment, host_port: int) -> str:
        """The URL reported with RUNNING."""
        if self.proxy_url:
            return public_url(
                self.proxy_url, assignment.notebook, assignment.base_url, assignment.url_path
            )
        return self._editor_url(assignment, host_port)

    def _editor_url(self, assignment: Assignment, host_port: int) -> str:
        """The editor itself, on loopback (the readiness probe)."""
        path = editor_path(assignment.base_url, assignment.url_path)
        return f"http://{UPSTREAM_HOST}:{host_port}{path}"

    # ------------------------------------------------------------ the loop body

    async def tick(self) -> None:
        """Start one step for every notebook that needs one and is not already busy. Returns
        without waiting for the steps; :meth:`idle` waits for them."""
        try:
            await self._refresh_containers()
        except Exception:
            log.exception("reconcile: listing containers failed; retrying next tick")
            return
        if not self._synced:
            return
        for notebook, assignment in self.assignments.items():
            self._launch(notebook, self._step, assignment.notebook)
        for notebook in self.containers:
            if notebook not in self.assignments:
                self._launch(notebook, self._retire_orphan, notebook)
        for notebook in list(self._orphan_retry):
            if notebook not in self.containers or notebook in self.assignments:
                del self._orphan_retry[notebook]
        await self._prune_networks()

    async def _prune_networks(self) -> None:
        now = self.clock()
        last = self._networks_pruned_at
        if last is not None and now - last < NETWORK_PRUNE_INTERVAL_S:
            return
        self._networks_pruned_at = now
        try:
            await self.runtime.prune_networks(self._busy() | set(self.containers))
        except Exception as exc:
            log.warning("reconcile: pruning orphan networks failed, retried later: %s", exc)

    async def idle(self) -> None:
        """Wait until every step started so far has finished (tests, shutdown)."""
        while busy := [task for task in self._tasks.values() if not task.done()]:
            await asyncio.gather(*busy, return_exceptions=True)

    async def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    def _busy(self) -> set[str]:
        return {notebook for notebook, task in self._tasks.items() if not task.done()}

    def _launch(self, notebook: str, work: Callable[[str], Awaitable[None]], arg: str) -> None:
        task = self._tasks.get(notebook)
        if task is not None and not task.done():
            return
        self._tasks[notebook] = asyncio.create_task(
            self._guarded(notebook, work, arg), name=f"reconcile-{notebook}"
        )

    async def _guarded(self, notebook: str, work: Callable[[str], Awaitable[None]], arg: str):
        lock = self._locks.setdefault(notebook, asyncio.Lock())
        async with lock:
            try:
                await work(arg)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("notebook=%s reconcile step failed; retrying next tick", notebook)

    async def _refresh_containers(self) -> None:
        self.containers = {info.notebook: info for info in await self.runtime.list_managed()}

    # ------------------------------------------------------------ state: the one path

    def _set_state(
        self,
        record: NotebookRecord,
        state: NotebookState,
        reason: str,
        *,
        report: bool = True,
        url: str | None = None,
    ) -> None:
        if not report:
            if record.state != state:
                log.info(
                    "notebook=%s scheduler set %s (was %s)", record.notebook, state, record.state
                )
                record.state = state
            return
        try:
            if not check(record.state, state):
                return
        except InvalidTransition as exc:
            log.error("notebook=%s not reporting %s: %s", record.notebook, state, exc)
            return
        now = self.clock()
        log.info(
            "notebook=%s generation=%d %s: %s", record.notebook, record.generation, state, reason
        )
        if record.state == S.RUNNING and record.running_since is not None:
            # The run ends here: its minutes up to now, queued (and spooled) with the report.
            self.outbox.add_usage(
                UsageItem(
                    notebook=record.notebook,
                    generation=record.generation,
                    billed_minutes=billed_minutes(record.running_since, now),
                    at=now,
                )
            )
        record.state = state
        if state == S.RUNNING:
            record.running_since = now
            record.url = url
        self.outbox.add_transition(
            Transition(
                notebook=record.notebook,
                generation=record.generation,
                state=state,
                reason=reason,
                at=now,
                url=url,
            )
        )

    def _record(self, assignment: Assignment) -> NotebookRecord | None:
        """The record for the assignment's generation, created or brought in line with the
        scheduler; ``None`` for an assignment older than what this agent already runs."""
        record = self.records.get(assignment.notebook)
        if record is not None and record.generation > assignment.generation:
            return None
        if record is None or record.generation < assignment.generation:
            record = NotebookRecord(
                notebook=assignment.notebook,
                generation=assignment.generation,
                state=assignment.state,
                first_seen=self.clock(),
                running_since=assignment.running_since,
            )
            self.records[assignment.notebook] = record
            return record
        wanted = assignment.state
        if wanted == S.DELETING and record.state != S.DELETED:
            self._set_state(record, S.DELETING, "", report=False)
        elif wanted == S.STOPPING and record.state in (S.STARTING, S.RUNNING):
            self._set_state(record, S.STOPPING, "", report=False)
        elif wanted == S.RUNNING and record.state == S.STARTING:
            # The scheduler already has our RUNNING (e.g. from before an agent restart).
            self._set_state(record, S.RUNNING, "", report=False)
            record.running_since = record.running_since or assignment.running_since
        return record

    # ------------------------------------------------------------ steps

    async def _step(self, notebook: str) -> None:
        assignment = self.assignments.get(notebook)
        if assignment is None:
            return
        record = self._record(assignment)
        if record is None:
            return
        if assignment.desired == "deleted":
            await self._delete(record)
        elif assignment.desired == "stopped":
            await self._stop(record)
        else:
            await self._run(record, assignment)

    async def _run(self, record: NotebookRecord, assignment: Assignment) -> None:
        if record.state == S.STOPPING:  # an exit 0 whose push did not finish
            await self._push_then(record, S.STOPPED, "container exited with code 0")
            return
        if record.state not in (S.STARTING, S.RUNNING):
            return  # already ended; the scheduler has not caught up yet
        notebook = record.notebook
        info = await self.runtime.inspect(notebook)
        if info is not None and info.generation != record.generation:
            log.info(
                "notebook=%s removing container of generation %d (current %d)",
                notebook,
                info.generation,
                record.generation,
            )
            await self.runtime.stop(notebook)
            await self.runtime.remove(notebook)
            info = None
        if info is None:
            if record.state == S.RUNNING:
                await self._container_lost(record)
                return
            info = await self._create(record, assignment)
            if info is None:
                return
        if not info.running:
            await self._exited(record, info)
            return
        if record.state == S.RUNNING:
            await self._checkpoint_if_due(record)
            return
        if record.state == S.STARTING:
            port = info.host_port
            if port and await self.probe(self._editor_url(assignment, port)):
                url = self.notebook_url(assignment, port)
                reason = "; ".join(["editor answers", *record.start_notes])
                self._set_state(record, S.RUNNING, reason, url=url)
                record.last_checkpoint = self.clock()
            elif self._timed_out(record):
                await self.runtime.stop(notebook)
                await self.runtime.remove(notebook)
                await self._push_then(
                    record,
                    S.FAILED,
                    f"editor did not answer within {self.config.start_timeout_s:.0f}s",
                )

    def _timed_out(self, record: NotebookRecord) -> bool:
        return self.clock() - record.first_seen > self.config.start_timeout_s

    async def _create(self, record: NotebookRecord, assignment: Assignment) -> ContainerInfo | None:
        """Workspace, then container. ``None`` when this step can go no further."""
        notebook = record.notebook
        if self._timed_out(record):
            reason = f"notebook did not start within {self.config.start_timeout_s:.0f}s"
            if record.last_error:
                reason += f": {record.last_error}"
            self._set_state(record, S.FAILED, reason)
            return None
        source = assignment.restore_from
        try:
            with self._syncing(record) as progress:
                record.start_notes = await self.workspaces.prepare(
                    notebook,
                    assignment.initialized,
                    progress=progress,
                    source_notebook=source.notebook if source else None,
                    snapshot=source.snapshot if source else None,
                )
        except MarkerMissing as exc:
            self._set_state(record, S.ERROR, str(exc))
            return None
        except Exception as exc:
            record.last_error = f"workspace restore failed: {exc}"
            log.warning("notebook=%s %s; retrying next tick", notebook, record.last_error)
            return None
        mounts = await self._pull_volumes(record, assignment)
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
            public_host=UPSTREAM_HOST,
            nvidia_runtime=self.config.nvidia_runtime,
            extra_mounts=mounts,
            limits=ContainerLimits.from_config(self.config),
        )
        try:
            info = await self.runtime.create_and_start(spec)
        except ImageUnavailable as exc:
            self._set_state(record, S.ERROR, str(exc))
            return None
        except ContainerExists:
            return None  # created meanwhile; the next step inspects it
        except Exception as exc:
            record.last_error = f"container start failed: {exc}"
            log.warning("notebook=%s %s; retrying next tick", notebook, record.last_error)
            return None
        log.info("notebook=%s generation=%d container started", notebook, record.generation)
        return info

    async def _exited(self, record: NotebookRecord, info: ContainerInfo) -> None:
        notebook = record.notebook
        if info.exit_code is None:
            # Created but never started (an agent crash between create and start): redo.
            await self.runtime.remove(notebook)
            return
        await self.kept_logs.keep(self.runtime, notebook)
        await self.runtime.remove(notebook)
        reason = f"container exited with code {info.exit_code}"
        if info.exit_code != 0:
            await self._push_then(record, S.FAILED, reason)
        else:
            self._set_state(record, S.STOPPING, reason)
            await self._push_then(record, S.STOPPED, reason)

    async def _push_then(self, record: NotebookRecord, state: NotebookState, reason: str) -> None:
        """Remove scratch, push the workspace, drop the host dir, report ``state``. A failed
        push reports FAILED instead and keeps the host dir (the next start uses it)."""
        notebook = record.notebook
        await self.workspaces.remove_scratch(notebook)
        volume_failure = await self._push_volumes(record)
        try:
            with self._syncing(record) as progress:
                result = await self.workspaces.push(notebook, progress=progress)
        except Exception as exc:
            log.warning("notebook=%s workspace push failed, keeping host dir: %s", notebook, exc)
            failure = "; ".join(filter(None, [f"workspace push failed: {exc}", volume_failure]))
            if state == S.FAILED:
                failure = f"{reason}; {failure}"
            self._set_state(record, S.FAILED, failure)
            return
        self._report_snapshot(record, result)
        await self.workspaces.remove_workspace_dir(notebook)
        if volume_failure:
            failure = f"{reason}; {volume_failure}" if state == S.FAILED else volume_failure
            self._set_state(record, S.FAILED, failure)
            return
        self._set_state(record, state, reason)

    def _report_snapshot(self, record: NotebookRecord, result: PushResult | None) -> None:
        """Tell the scheduler about the snapshot a push committed (or found unchanged: the
        report is idempotent, and it repairs a report lost with an earlier agent)."""
        if result is None:
            return
        self.outbox.add_snapshot(
            SnapshotReport(
                notebook=record.notebook,
                generation=record.generation,
                snapshot=result.snapshot,
                retained=list(result.kept),
            )
        )

    async def _container_lost(self, record: NotebookRecord) -> None:
        """A RUNNING notebook whose container is gone (removed behind our back, or the host
        died and came back). A backend error, not the notebook's: save what the host still
        has; with no host dir left nothing is pushed, so the last checkpoint stays the newest
        backup and a start restores it."""
        notebook = record.notebook
        if self.workspaces.has_workspace(notebook):
            await self._push_then(record, S.ERROR, "container disappeared; workspace saved")
            return
        await self.workspaces.remove_scratch(notebook)
        self._set_state(
            record,
            S.ERROR,
            "container and host workspace disappeared (host restarted with an empty disk?); "
            "start the notebook again to restore its last backup",
        )

    async def _checkpoint_if_due(self, record: NotebookRecord) -> None:
        """Snapshot a RUNNING notebook's workspace every ``checkpoint_interval_s``, so a host
        that dies loses at most that much work and a stop only moves the last delta."""
        interval = self.config.checkpoint_interval_s
        if interval <= 0:
            return
        now = self.clock()
        if record.last_checkpoint is None:
            record.last_checkpoint = now
            return
        if now - record.last_checkpoint < interval:
            return
        if not self.in_contact():
            # Cut off from the scheduler for longer than the TTL: the notebook may already run
            # on another host, whose snapshots this one must not follow. Checkpoint again as
            # soon as contact is back (and the notebook is still ours).
            if not record.fenced:
                log.warning(
                    "notebook=%s no checkpoint: out of contact with the scheduler for longer "
                    "than the heartbeat TTL",
                    record.notebook,
                )
            record.fenced = True
            return
        record.fenced = False
        record.last_checkpoint = now
        try:
            with self._syncing(record) as progress:
                result = await self.workspaces.checkpoint(record.notebook, progress=progress)
        except Exception as exc:
            log.warning(
                "notebook=%s checkpoint failed, next try in %.0fs: %s",
                record.notebook,
                interval,
                exc,
            )
            return
        if result is not None and not result.unchanged:
            log.info("notebook=%s checkpoint %s", record.notebook, result.snapshot.id)
        self._report_snapshot(record, result)

    # ------------------------------------------------------------ data volumes

    @contextmanager
    def _syncing(self, record: NotebookRecord) -> Iterator[ProgressCallback]:
        """The progress callback for one sync of ``record``; its progress is cleared at the
        scheduler when the sync ends, however it ends."""
        try:
            yield lambda progress: self.outbox.set_progress(
                record.notebook, record.generation, progress
            )
        finally:
            self.outbox.set_progress(record.notebook, record.generation, None)

    async def _pull_volumes(
        self, record: NotebookRecord, assignment: Assignment
    ) -> list[tuple[str, str, bool]] | None:
        """Pull the data volumes before the container starts; their bind mounts, or ``None``
        after a failed pull ended the notebook in FAILED (reason naming the volume)."""
        if not assignment.volumes:
            return []
        try:
            with self._syncing(record) as progress:
                await self.volumes.pull(record.notebook, assignment.volumes, progress)
        except VolumeSyncError as exc:
            await self._push_then(record, S.FAILED, str(exc))
            return None
        # The editor's start timeout counts from when it can start, not from a long pull.
        record.first_seen = self.clock()
        return [tuple(m) for m in self.volumes.mounts(record.notebook, assignment.volumes)]

    async def _push_volumes(self, record: NotebookRecord) -> str:
        """Push the data volumes (the container is gone); the failure reason, or ``""``.
        Without an assignment there are no credentials: the host dirs are kept."""
        assignment = self.assignments.get(record.notebook)
        if assignment is None or not assignment.volumes:
            return ""
        try:
            with self._syncing(record) as progress:
                await self.volumes.push(record.notebook, assignment.volumes, progress)
        except VolumeSyncError as exc:
            return str(exc)
        return ""

    async def _stop(self, record: NotebookRecord) -> None:
        if record.state in (S.STOPPED, S.FAILED, S.ERROR):
            return
        await self.runtime.stop(record.notebook)
        await self.kept_logs.keep(self.runtime, record.notebook)
        await self.runtime.remove(record.notebook)
        await self._push_then(record, S.STOPPED, "stopped")

    async def _delete(self, record: NotebookRecord) -> None:
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
        self._set_state(record, S.DELETED, "deleted")

    async def _retire_orphan(self, notebook: str) -> None:
        """A managed container no assignment wants: stop it, push its workspace, then remove
        the container and the host dir. A failed push keeps both (the stopped container is
        what brings us back here) and is retried after a jittered backoff."""
        if notebook in self.assignments:
            return
        now = self.clock()
        retry = self._orphan_retry.get(notebook)
        if retry is not None and now < retry[1]:
            return
        info = self.containers.get(notebook)
        if retry is None:
            log.warning(
                "notebook=%s container is not assigned to this host; stopping it, saving its "
                "workspace, then removing it",
                notebook,
            )
        await self.runtime.stop(notebook)
        await self.workspaces.remove_scratch(notebook)
        try:
            newer = await self.workspaces.written_elsewhere(notebook)
            if newer is not None:
                # Pushing now would make this host's older copy the one the next start
                # restores, over the work done elsewhere. Keep it on disk for an operator.
                log.warning(
                    "notebook=%s another host saved snapshot %s since this host last synced; "
                    "not pushing this host's copy over it. It stays in %s",
                    notebook,
                    newer,
                    self.workspaces.workspace_dir(notebook),
                )
                self._orphan_retry.pop(notebook, None)
                await self.kept_logs.keep(self.runtime, notebook)
                await self.runtime.remove(notebook)
                return
            result = await self.workspaces.push(notebook)
        except Exception as exc:
            backoff = (
                retry[0] if retry is not None else Backoff(ORPHAN_RETRY_BASE_S, ORPHAN_RETRY_CAP_S)
            )
            delay = backoff.next_delay()
            self._orphan_retry[notebook] = (backoff, now + delay)
            log.warning(
                "notebook=%s orphan workspace push failed, keeping the stopped container and "
                "the host dir; next try in %.0fs: %s",
                notebook,
                delay,
                exc,
            )
            return
        self._orphan_retry.pop(notebook, None)
        if result is not None and info is not None and info.generation >= 1:
            # Recorded only if the scheduler still counts this host as the notebook's last.
            self.outbox.add_snapshot(
                SnapshotReport(
                    notebook=notebook,
                    generation=info.generation,
                    snapshot=result.snapshot,
                    retained=list(result.kept),
                )
            )
        await self.kept_logs.keep(self.runtime, notebook)
        await self.runtime.remove(notebook)
        await self.workspaces.remove_workspace_dir(notebook)
        log.info("notebook=%s orphan container removed, workspace saved", notebook)
