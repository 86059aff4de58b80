"""Desired vs actual: the agent's half of the notebook lifecycle (design.md, "Lifecycle, who
does what"), as a dispatcher.

The scheduler's assignments say what it wants; Docker and the host dirs say what is. Each
:meth:`Reconciler.tick` lists the managed containers and starts one step per notebook in its
own task, guarded by a per-notebook lock and skipped while that notebook's previous step still
runs, so a slow pull or push of one notebook never delays another. A step looks at the
assignment and the container and hands off to the module that does the next thing:

* ``desired=running``: no container → create it (:mod:`agent.notebook_steps`), or, for a
  RUNNING notebook, the container was lost; a container of another generation is removed
  first; an exited one is handled as an exit; a running one is either probed until the editor
  answers (STARTING) or checkpointed when due (RUNNING, :mod:`agent.notebook_sync`); a
  STOPPING notebook (an exit 0 whose push did not finish) is pushed again;
* ``desired=stopped``: stop; ``desired=deleted``: delete;
* a managed container no assignment mentions: retired (:mod:`agent.orphans`).

Nothing is destroyed before the first assignments arrive: after an agent restart the existing
containers are adopted (a running notebook is found RUNNING again, never restarted).

What the agent knows of each run, and the one path that changes its state, is
:mod:`agent.records`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from agent.contact import Contact
from agent.kept_logs import KeptLogs
from agent.notebook_steps import NotebookSteps, Probe, http_probe
from agent.notebook_sync import NotebookSync
from agent.orphans import Orphans
from agent.records import NotebookRecord, NotebookRecords
from agent.report import Outbox
from agent.runtime import ContainerInfo, ContainerRuntime
from agent.volumes import VolumeSync
from agent.workspace.host import HostWorkspaces
from common.config import AgentConfig
from common.states import NotebookState
from common.wire import Assignment

log = logging.getLogger(__name__)

S = NotebookState


class Reconciler:
    def __init__(
        self,
        config: AgentConfig,
        runtime: ContainerRuntime,
        workspaces: HostWorkspaces,
        outbox: Outbox,
        *,
        volumes: VolumeSync,
        contact: Contact,
        clock: Callable[[], float] = time.time,
        probe: Probe = http_probe,
        kept_logs: KeptLogs | None = None,
    ) -> None:
        self.config = config
        self.runtime = runtime
        self.kept_logs = kept_logs or KeptLogs(Path(config.state_dir) / "logs")
        self.assignments: dict[str, Assignment] = {}
        #: Managed containers as last listed: notebook id → info.
        self.containers: dict[str, ContainerInfo] = {}
        self.records = NotebookRecords(outbox, clock)
        self.sync = NotebookSync(
            config,
            workspaces,
            volumes,
            outbox,
            self.records,
            contact,
            lambda notebook: self.assignments.get(notebook),
            clock,
        )
        self.steps = NotebookSteps(
            config,
            runtime,
            workspaces,
            volumes,
            self.records,
            self.sync,
            self.kept_logs,
            probe,
            clock,
        )
        self.orphans = Orphans(runtime, workspaces, self.sync, self.kept_logs, clock)
        self._synced = False
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    # ------------------------------------------------------------ inputs and outputs

    def set_assignments(self, items: list[Assignment]) -> None:
        self.assignments = {item.notebook: item for item in items}
        self._synced = True
        self.records.keep_only(set(self.assignments) | self._busy())

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
        return self.records.running()

    def container_ids(self) -> list[str]:
        return sorted(self.containers)

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
        for notebook in self.assignments:
            self._launch(notebook, self._step)
        for notebook in self.containers:
            if notebook not in self.assignments:
                self._launch(notebook, self._retire)
        self.orphans.forget_retries(
            lambda notebook: notebook not in self.containers or notebook in self.assignments
        )
        await self.orphans.prune_networks(self._busy() | set(self.containers))

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

    def _launch(self, notebook: str, work: Callable[[str], Awaitable[None]]) -> None:
        task = self._tasks.get(notebook)
        if task is not None and not task.done():
            return
        self._tasks[notebook] = asyncio.create_task(
            self._guarded(notebook, work), name=f"reconcile-{notebook}"
        )

    async def _guarded(self, notebook: str, work: Callable[[str], Awaitable[None]]) -> None:
        lock = self._locks.setdefault(notebook, asyncio.Lock())
        async with lock:
            try:
                await work(notebook)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("notebook=%s reconcile step failed; retrying next tick", notebook)

    async def _refresh_containers(self) -> None:
        self.containers = {info.notebook: info for info in await self.runtime.list_managed()}

    # ------------------------------------------------------------ which step

    async def _step(self, notebook: str) -> None:
        assignment = self.assignments.get(notebook)
        if assignment is None:
            return
        record = self.records.for_assignment(assignment)
        if record is None:
            return
        if assignment.desired == "deleted":
            await self.steps.delete(record)
        elif assignment.desired == "stopped":
            await self.steps.stop(record)
        else:
            await self._run(record, assignment)

    async def _run(self, record: NotebookRecord, assignment: Assignment) -> None:
        if record.state == S.STOPPING:  # an exit 0 whose push did not finish
            await self.sync.push_then(record, S.STOPPED, "container exited with code 0")
            return
        if record.state not in (S.STARTING, S.RUNNING):
            return  # already ended; the scheduler has not caught up yet
        info = await self.runtime.inspect(record.notebook)
        if info is not None and info.generation != record.generation:
            await self.steps.remove_other_generation(record, info)
            info = None
        if info is None:
            if record.state == S.RUNNING:
                await self.steps.container_lost(record)
                return
            info = await self.steps.create(record, assignment)
            if info is None:
                return
            # Known at once, not at the next listing: the proxy and the activity probe look
            # here for the editor's port, and the editor may answer within this step.
            self.containers[record.notebook] = info
        if not info.running:
            await self.steps.exited(record, info)
        elif record.state == S.RUNNING:
            await self.sync.checkpoint_if_due(record)
        elif record.state == S.STARTING:
            await self._until_the_editor_answers(record, assignment, info)

    async def _until_the_editor_answers(
        self, record: NotebookRecord, assignment: Assignment, info: ContainerInfo
    ) -> None:
        """Probe a STARTING notebook's editor every ``editor_probe_interval_s`` for up to one
        reconcile interval (the next tick carries on): RUNNING follows the editor's first
        answer closely. Returns early once the notebook is no longer wanted running, so a stop
        waits for one probe at most."""
        deadline = time.monotonic() + self.config.reconcile_interval_s
        while True:
            await self.steps.starting(record, assignment, info)
            current = self.assignments.get(record.notebook)
            if (
                record.state != S.STARTING
                or current is None
                or current.desired != "running"
                or current.generation != assignment.generation
                or time.monotonic() + self.config.editor_probe_interval_s > deadline
            ):
                return
            await asyncio.sleep(self.config.editor_probe_interval_s)

    async def _retire(self, notebook: str) -> None:
        if notebook in self.assignments:
            return
        await self.orphans.retire(notebook, self.containers.get(notebook))
