"""Datasync: a RUNNING notebook's volumes pushed to (or pulled from) their buckets without
stopping it (design.md, "Datasync"). The scheduler forwards ``POST
/v1/notebooks/{id}/datasync`` here, signed (:mod:`agent.http_api` checks the signature); each
volume's transfer is :mod:`agent.datasync_transfer`.

Contracts:

* One datasync per notebook at a time: a second while one runs is 409 (``conflict``) naming
  when the first began. A notebook that is not RUNNING here in the asked generation with
  ``desired=running`` is 409 naming its state; a volume not assigned to it is 409 (the
  assignment changed); pushing an ``ro`` volume is 400.
* The transfer is a task of its own: the caller going away does not stop it. It holds the
  notebook's volume lock (:meth:`agent.volumes.VolumeSync.lock`) while it runs, so the stop's
  push of the volumes (and the start's pull, and delete's removal) waits for it and then
  works from the pull record it left: nothing it did not push is lost. Taken the lock, it
  checks again that the notebook is still to run (a stop that came first pushes instead).
* Each volume is tried; one failing fails the datasync (``ok`` false, ``error`` naming the
  volume) and the others still run. A notebook being deleted ends it between two files.
* Progress goes to the scheduler's ``Notebook.progress`` (phases ``volumes-push`` /
  ``volumes-pull``, detail ``datasync <volume>``; cleared at the end) and to every caller
  streaming the run: newline-delimited ``DatasyncEvent`` JSON, progress lines (the latest one
  again every :data:`KEEPALIVE_S` while nothing moves, so proxies keep the stream open), then
  one ``DatasyncResult``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from agent.datasync_transfer import Abandoned, LiveStore, LiveTransfer
from agent.records import NotebookRecord
from agent.report import Outbox
from agent.volume_transfer import describe
from agent.volumes import VolumeSync
from common import wire
from common.errors import ApiError, conflict
from common.states import NotebookState

log = logging.getLogger(__name__)

S = NotebookState

#: A quiet stream repeats its latest progress this often.
KEEPALIVE_S = 10.0
#: Progress lines a slow reader may have waiting before newer ones replace them.
MAX_QUEUED = 64
#: Files transferred at once per volume (each up to a part in memory, twice when re-read).
MAX_CONCURRENCY = 8


@dataclass
class DatasyncRun:
    """One datasync of a notebook: its task, who is listening, and how it ended."""

    notebook: str
    generation: int
    direction: wire.DatasyncDirection
    started_at: float
    task: asyncio.Task[None] | None = None
    result: wire.DatasyncResult | None = None
    latest: wire.DatasyncProgress | None = None
    listeners: list[asyncio.Queue[wire.DatasyncProgress | wire.DatasyncResult]] = field(
        default_factory=list
    )

    def publish(self, event: wire.DatasyncProgress | wire.DatasyncResult) -> None:
        if isinstance(event, wire.DatasyncProgress):
            self.latest = event
        for queue in self.listeners:
            if isinstance(event, wire.DatasyncProgress) and queue.qsize() >= MAX_QUEUED:
                continue  # a slow reader gets the newer ones, and the result
            queue.put_nowait(event)

    def listen(self) -> asyncio.Queue[wire.DatasyncProgress | wire.DatasyncResult]:
        queue: asyncio.Queue[wire.DatasyncProgress | wire.DatasyncResult] = asyncio.Queue()
        if self.result is not None:
            queue.put_nowait(self.result)
        elif self.latest is not None:
            queue.put_nowait(self.latest)
        self.listeners.append(queue)
        return queue


class Datasyncs:
    """The datasyncs of the notebooks on this host."""

    def __init__(
        self,
        volumes: VolumeSync,
        outbox: Outbox,
        assignment_of: Callable[[str], wire.Assignment | None],
        record_of: Callable[[str], NotebookRecord | None],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.volumes = volumes
        self.outbox = outbox
        self.assignment_of = assignment_of
        self.record_of = record_of
        self.clock = clock
        self.concurrency = min(volumes.concurrency, MAX_CONCURRENCY)
        self.runs: dict[str, DatasyncRun] = {}

    # ------------------------------------------------------------ starting one

    def start(self, notebook: str, ask: wire.DatasyncStart) -> DatasyncRun:
        """Check ``ask`` against what runs here and start it (see the module docstring)."""
        current = self.runs.get(notebook)
        if current is not None and current.result is None:
            raise conflict(
                f"a datasync ({current.direction}) of notebook {notebook} is already running, "
                f"since {time.strftime('%H:%M:%S', time.gmtime(current.started_at))} UTC; wait "
                "for it to finish (`nbfleet notebook get` shows its progress)",
                started_at=current.started_at,
            )
        assignment = self._running(notebook, ask.generation)
        targets: list[tuple[int, wire.VolumeAssignment]] = []
        for volume in ask.volumes:
            index = next((i for i, a in enumerate(assignment.volumes) if a.volume == volume), None)
            if index is None:
                raise conflict(
                    f"notebook {notebook} has no volume {describe(volume)} on this host (its "
                    "assignment changed); try again",
                )
            if ask.direction == "push" and volume.permission == "ro":
                raise ApiError(
                    "invalid_request",
                    f"volume {describe(volume)} is read-only (ro): it is never pushed",
                    field="volumes",
                )
            targets.append((index, assignment.volumes[index]))
        run = DatasyncRun(notebook, ask.generation, ask.direction, self.clock())
        self.runs[notebook] = run
        run.task = asyncio.create_task(self._run(run, targets), name=f"datasync-{notebook}")
        log.info(
            "notebook=%s datasync %s of %d volume(s) started",
            notebook,
            ask.direction,
            len(targets),
        )
        return run

    def _running(self, notebook: str, generation: int) -> wire.Assignment:
        """The notebook's assignment, or 409 unless it is RUNNING here in ``generation``."""
        assignment = self.assignment_of(notebook)
        if assignment is None:
            raise ApiError("not_found", f"notebook {notebook} is not assigned to this host")
        record = self.record_of(notebook)
        state = record.state if record is not None else assignment.state
        if assignment.desired != "running" and state == S.RUNNING:
            state = S.STOPPING if assignment.desired == "stopped" else S.DELETING
        same_run = assignment.generation == generation and (
            record is None or record.generation == generation
        )
        if state != S.RUNNING or not same_run:
            raise conflict(
                f"notebook {notebook} is {state} on this host (run {assignment.generation}); "
                "datasync needs it RUNNING",
                state=state.value,
            )
        return assignment

    # ------------------------------------------------------------ the transfer

    async def _run(
        self, run: DatasyncRun, targets: list[tuple[int, wire.VolumeAssignment]]
    ) -> None:
        notebook, generation = run.notebook, run.generation
        result = wire.DatasyncResult(
            notebook=notebook, direction=run.direction, ok=True, started_at=run.started_at
        )
        errors: list[str] = []

        def progress(p: wire.Progress) -> None:
            self.outbox.set_progress(notebook, generation, p)
            run.publish(wire.DatasyncProgress(progress=p))

        try:
            async with self.volumes.lock(notebook):
                try:
                    self._running(notebook, generation)
                except ApiError as exc:
                    errors.append(f"{exc.message} (a stop pushes the volumes itself)")
                else:
                    for index, assigned in targets:
                        done, abandoned = await self._one(run, index, assigned, progress)
                        result.volumes.append(done)
                        if done.error:
                            errors.append(done.error)
                        if abandoned:
                            break
        except asyncio.CancelledError:
            errors.append("the agent stopped during the datasync")
            raise
        except Exception as exc:  # a bug: still answer the callers
            log.exception("notebook=%s datasync failed", notebook)
            errors.append(f"internal error: {exc}")
        finally:
            self.outbox.set_progress(notebook, generation, None)
            result.ok = not errors
            result.error = "; ".join(errors)
            result.finished_at = self.clock()
            run.result = result
            run.publish(result)
            log.info(
                "notebook=%s datasync %s %s: %s",
                notebook,
                run.direction,
                "done" if result.ok else "failed",
                "; ".join(
                    f"{v.volume}: {v.files} files, {v.bytes} bytes, {v.deleted} deleted, "
                    f"{v.conflicts} conflicts, {v.unstable} unstable, {v.skipped} skipped"
                    for v in result.volumes
                )
                or result.error,
            )

    async def _one(
        self,
        run: DatasyncRun,
        index: int,
        assigned: wire.VolumeAssignment,
        progress: Callable[[wire.Progress], None],
    ) -> tuple[wire.DatasyncVolume, bool]:
        """What the volume's transfer did, and whether the datasync is to end (a delete)."""
        notebook, volume = run.notebook, assigned.volume
        name = f"{describe(volume)}:{volume.permission}"
        directory = self.volumes.volume_dir(notebook, index)
        if not os.path.isdir(directory) or os.path.islink(directory):
            missing = f"volume {describe(volume)}: its host dir is missing"
            return wire.DatasyncVolume(volume=name, error=missing), False

        def keep_going() -> bool:
            current = self.assignment_of(notebook)
            return current is not None and current.desired != "deleted"

        store: LiveStore = self.volumes.store_for(assigned)  # type: ignore[assignment]
        transfer = LiveTransfer(
            notebook, index, volume, store, self.concurrency, progress, keep_going
        )
        error, abandoned = "", False
        started = time.monotonic()
        try:
            if run.direction == "push":
                await transfer.push(directory, self.volumes.record_path(notebook, index))
            else:
                await transfer.pull(
                    directory,
                    self.volumes.record_path(notebook, index),
                    self.volumes.staging_dir(notebook, index),
                )
        except Abandoned as exc:
            error, abandoned = f"stopped: {exc}", True
        except Exception as exc:
            log.warning("notebook=%s datasync of volume %s failed: %s", notebook, name, exc)
            error = f"volume {describe(volume)} {run.direction} failed: {exc}"
        out = transfer.outcome
        self.volumes.on_sync(f"datasync-{run.direction}", time.monotonic() - started, out.bytes)
        done = wire.DatasyncVolume(
            volume=name,
            files=out.files,
            bytes=out.bytes,
            deleted=out.deleted,
            unchanged=out.unchanged,
            conflicts=out.conflicts,
            unstable=out.unstable,
            skipped=out.skipped,
            details=list(out.details),
            error=error,
        )
        return done, abandoned

    async def close(self) -> None:
        """Stop every datasync (agent shutdown); what each did is in its pull records."""
        tasks = [run.task for run in self.runs.values() if run.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------ the caller's stream

    async def serve(
        self, request: web.Request, notebook: str, ask: wire.DatasyncStart
    ) -> web.StreamResponse:
        """Start the datasync and stream its events to the caller until its result; a caller
        that leaves early leaves it running."""
        run = self.start(notebook, ask)
        queue = run.listen()
        response = web.StreamResponse(
            headers={"Content-Type": "application/x-ndjson", "Cache-Control": "no-store"}
        )
        response.enable_chunked_encoding()
        try:
            await response.prepare(request)
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                except TimeoutError:
                    event = run.latest or wire.DatasyncProgress(
                        progress=_waiting(run, self.clock())
                    )
                await response.write(wire.encode(event) + b"\n")
                if isinstance(event, wire.DatasyncResult):
                    break
            await response.write_eof()
        except ConnectionError:
            log.info("notebook=%s datasync caller left; the datasync goes on", notebook)
        finally:
            with contextlib.suppress(ValueError):
                run.listeners.remove(queue)
        return response


def _waiting(run: DatasyncRun, now: float) -> wire.Progress:
    """What a datasync waiting for the volume lock (another sync of the notebook) shows."""
    return wire.Progress(
        phase="volumes-push" if run.direction == "push" else "volumes-pull",
        files_done=0,
        files_total=0,
        bytes_done=0,
        bytes_total=0,
        at=now,
        detail="datasync waiting for another sync of the notebook's volumes",
    )
