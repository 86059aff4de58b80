"""Moving a notebook's files between this host and the object store, and telling the scheduler
what moved (design.md, "Lifecycle, who does what"; "Workspace snapshots, volumes, backups").

* The end of a run: remove scratch, push the data volumes and the workspace, remove the host
  dir only after the push succeeded, then report the state the run ended in (a failed push:
  FAILED, dir kept, so the next start uses it as is).
* Checkpoints: a RUNNING notebook's workspace is snapshotted every ``checkpoint_interval_s``,
  so a host that dies loses at most that much work and a stop only moves the last delta. Not
  while out of contact with the scheduler for longer than the heartbeat TTL: it may have
  declared this host lost and started the notebook elsewhere, whose snapshots this host must
  not follow.
* Data volumes are pulled before the container starts (a failed pull ends the notebook in
  FAILED, naming the volume) and pushed after it is gone.

Every committed snapshot is reported (:meth:`NotebookSync.report_snapshot`), and each sync
reports its progress while it runs and clears it when it ends, however it ends.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from agent.contact import Contact
from agent.records import NotebookRecord, NotebookRecords
from agent.report import Outbox
from agent.volumes import VolumeSync, VolumeSyncError
from agent.workspace.engine import PushResult
from agent.workspace.host import HostWorkspaces
from agent.workspace.progress import ProgressCallback
from common.config import AgentConfig
from common.states import NotebookState
from common.wire import Assignment, Progress, SnapshotReport

log = logging.getLogger(__name__)

S = NotebookState


class NotebookSync:
    def __init__(
        self,
        config: AgentConfig,
        workspaces: HostWorkspaces,
        volumes: VolumeSync,
        outbox: Outbox,
        records: NotebookRecords,
        contact: Contact,
        assignment_of: Callable[[str], Assignment | None],
        clock: Callable[[], float],
    ) -> None:
        self.config = config
        self.workspaces = workspaces
        self.volumes = volumes
        self.outbox = outbox
        self.records = records
        self.contact = contact
        #: The notebook's assignment as the scheduler last sent it (``None`` once unassigned).
        self.assignment_of = assignment_of
        self.clock = clock

    @contextmanager
    def syncing(self, record: NotebookRecord) -> Iterator[ProgressCallback]:
        """The progress callback for one sync of ``record``; its progress is cleared at the
        scheduler when the sync ends, however it ends."""
        try:
            yield lambda progress: self.outbox.set_progress(
                record.notebook, record.generation, progress
            )
        finally:
            self.outbox.set_progress(record.notebook, record.generation, None)

    def show(self, record: NotebookRecord, phase: str | None, detail: str = "") -> None:
        """Tell whoever watches the notebook which step of its start it is in (``container``,
        ``editor``), or (``None``) that it is past them."""
        progress = None
        if phase is not None:
            progress = Progress(
                phase=phase,  # type: ignore[arg-type]
                files_done=0,
                files_total=0,
                bytes_done=0,
                bytes_total=0,
                at=self.clock(),
                detail=detail,
            )
        self.outbox.set_progress(record.notebook, record.generation, progress)

    def report_snapshot(self, notebook: str, generation: int, result: PushResult | None) -> None:
        """Tell the scheduler about the snapshot a push committed (or found unchanged: the
        report is idempotent, and it repairs a report lost with an earlier agent)."""
        if result is None:
            return
        self.outbox.add_snapshot(
            SnapshotReport(
                notebook=notebook,
                generation=generation,
                snapshot=result.snapshot,
                retained=list(result.kept),
            )
        )

    async def push_then(self, record: NotebookRecord, state: NotebookState, reason: str) -> None:
        """Remove scratch, push the workspace, drop the host dir, report ``state``. A failed
        push reports FAILED instead and keeps the host dir (the next start uses it)."""
        notebook = record.notebook
        await self.workspaces.remove_scratch(notebook)
        with self.records.timed(record, "volumes"):
            volume_failure = await self._push_volumes(record)
        try:
            with self.records.timed(record, "push"), self.syncing(record) as progress:
                result = await self.workspaces.push(notebook, progress=progress)
        except Exception as exc:
            log.warning("notebook=%s workspace push failed, keeping host dir: %s", notebook, exc)
            failure = "; ".join(filter(None, [f"workspace push failed: {exc}", volume_failure]))
            if state == S.FAILED:
                failure = f"{reason}; {failure}"
            self.records.set_state(record, S.FAILED, failure)
            return
        self.report_snapshot(record.notebook, record.generation, result)
        await self.workspaces.remove_workspace_dir(notebook)
        if volume_failure:
            failure = f"{reason}; {volume_failure}" if state == S.FAILED else volume_failure
            self.records.set_state(record, S.FAILED, failure)
            return
        self.records.set_state(record, state, reason)

    async def checkpoint_if_due(self, record: NotebookRecord) -> None:
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
        if not self.contact.in_contact():
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
            with self.syncing(record) as progress:
                result = await self.workspaces.checkpoint(record.notebook, progress=progress)
        except Exception as exc:
            log.warning(
                "notebook=%s checkpoint failed, next try in %.0fs: %s",
                record.notebook,
                interval,
                exc,
            )
            return
        if result is not None:
            record.last_saved = now
        if result is not None and not result.unchanged:
            log.info("notebook=%s checkpoint %s", record.notebook, result.snapshot.id)
        self.report_snapshot(record.notebook, record.generation, result)

    async def pull_volumes(
        self, record: NotebookRecord, assignment: Assignment
    ) -> list[tuple[str, str, bool]] | None:
        """Pull the data volumes before the container starts; their bind mounts, or ``None``
        after a failed pull ended the notebook in FAILED (reason naming the volume)."""
        if not assignment.volumes:
            return []
        try:
            with self.syncing(record) as progress:
                await self.volumes.pull(record.notebook, assignment.volumes, progress)
        except VolumeSyncError as exc:
            await self.push_then(record, S.FAILED, str(exc))
            return None
        # The editor's start timeout counts from when it can start, not from a long pull.
        record.first_seen = self.clock()
        return [tuple(m) for m in self.volumes.mounts(record.notebook, assignment.volumes)]

    async def _push_volumes(self, record: NotebookRecord) -> str:
        """Push the data volumes (the container is gone); the failure reason, or ``""``.
        Without an assignment there are no credentials: the host dirs are kept."""
        assignment = self.assignment_of(record.notebook)
        if assignment is None or not assignment.volumes:
            return ""
        try:
            with self.syncing(record) as progress:
                await self.volumes.push(record.notebook, assignment.volumes, progress)
        except VolumeSyncError as exc:
            return str(exc)
        return ""
