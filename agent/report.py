"""What the agent tells the scheduler: transitions (in order) and billed minutes.

:class:`Outbox` keeps transitions in the order they happened and retries until the scheduler
answers. Every outcome is an acknowledgement: ``applied`` and ``repeat`` are success, ``stale``
(an older generation) and ``refused`` are dropped with a log line, because sending them again
would be answered the same way. Usage is cumulative per (notebook, generation), so only the
newest figure of each run is kept and a lost or repeated send bills nothing twice.

The outbox is in memory: transitions not yet delivered when the agent stops are re-derived by
the reconciler after restart (it reports again what it finds), and usage is recomputed from
``running_since``.
"""

from __future__ import annotations

import logging
import math
from typing import Protocol

from common.errors import ApiError
from common.wire import (
    Ack,
    Progress,
    ProgressReport,
    SnapshotReport,
    Transition,
    TransitionBatch,
    TransitionReply,
    UsageBatch,
    UsageItem,
)

log = logging.getLogger(__name__)

BATCH = 100


class ReportSink(Protocol):
    """The part of :class:`agent.client.SchedulerClient` the outbox needs."""

    async def transitions(self, body: TransitionBatch) -> TransitionReply: ...

    async def usage(self, body: UsageBatch) -> Ack: ...

    async def snapshot(self, body: SnapshotReport) -> Ack: ...

    async def progress(self, body: ProgressReport) -> Ack: ...


def billed_minutes(running_since: float, now: float) -> int:
    """Commenced minutes of a run: 0 at its first instant, 1 for (0, 60] seconds, and so on."""
    return max(0, math.ceil((now - running_since) / 60))


class Outbox:
    def __init__(self, sink: ReportSink) -> None:
        self._sink = sink
        self._transitions: list[Transition] = []
        self._usage: dict[tuple[str, int], UsageItem] = {}
        self._snapshots: list[SnapshotReport] = []
        #: Latest progress per notebook; ``None`` clears it at the scheduler. Best effort.
        self._progress: dict[str, ProgressReport] = {}

    def add_snapshot(self, report: SnapshotReport) -> None:
        """Queue a committed snapshot; sent before transitions, so a STOPPED notebook already
        shows the size of the workspace it just saved."""
        self._snapshots.append(report)

    def set_progress(self, notebook: str, generation: int, progress: Progress | None) -> None:
        self._progress[notebook] = ProgressReport(notebook, generation, progress)

    def add_transition(self, transition: Transition) -> None:
        self._transitions.append(transition)

    def add_usage(self, item: UsageItem) -> None:
        key = (item.notebook, item.generation)
        current = self._usage.get(key)
        if current is None or item.billed_minutes >= current.billed_minutes:
            self._usage[key] = item

    def record_usage(self, running: list[tuple[str, int, float]], now: float) -> None:
        """Queue billed minutes so far for each RUNNING ``(notebook, generation, since)``."""
        for notebook, generation, running_since in running:
            self.add_usage(
                UsageItem(
                    notebook=notebook,
                    generation=generation,
                    billed_minutes=billed_minutes(running_since, now),
                    at=now,
                )
            )

    @property
    def pending_transitions(self) -> list[Transition]:
        return list(self._transitions)

    @property
    def pending_usage(self) -> list[UsageItem]:
        return list(self._usage.values())

    def empty(self) -> bool:
        return not (self._transitions or self._usage or self._snapshots or self._progress)

    async def tick(self) -> None:
        """Send what is pending. Raises when the scheduler could not be reached (the caller
        backs off); whatever was not acknowledged stays queued in order. Progress is sent
        last and never retried: a newer one will follow, or the sync is over."""
        while self._snapshots:
            try:
                await self._sink.snapshot(self._snapshots[0])
            except ApiError as exc:
                log.error("report: scheduler refused a snapshot report, dropping: %s", exc)
            del self._snapshots[0]
        while self._transitions:
            batch = self._transitions[:BATCH]
            try:
                reply = await self._sink.transitions(TransitionBatch(items=batch))
            except ApiError as exc:
                # A 4xx for the whole batch will not change on retry; keep order by dropping it.
                log.error("report: scheduler refused %d transitions, dropping: %s", len(batch), exc)
                del self._transitions[: len(batch)]
                continue
            for sent, result in zip(batch, reply.items, strict=False):
                if result.outcome in ("stale", "refused"):
                    log.warning(
                        "notebook=%s generation=%d report %s answered %s: %s",
                        sent.notebook,
                        sent.generation,
                        sent.state,
                        result.outcome,
                        result.message,
                    )
            del self._transitions[: len(batch)]
        if self._usage:
            sent_usage = dict(self._usage)
            try:
                await self._sink.usage(UsageBatch(items=list(sent_usage.values())))
            except ApiError as exc:
                log.error("report: scheduler refused usage, dropping: %s", exc)
            for key, item in sent_usage.items():
                if self._usage.get(key) is item:
                    del self._usage[key]
        progress, self._progress = self._progress, {}
        for report in progress.values():
            try:
                await self._sink.progress(report)
            except ApiError as exc:
                log.debug("notebook=%s progress report refused: %s", report.notebook, exc)
