"""What the agent tells the scheduler: transitions (in order), billed minutes and snapshots.

:class:`Outbox` keeps transitions in the order they happened and retries until the scheduler
answers. Every answer is an acknowledgement: ``applied`` and ``repeat`` are success, ``stale``
(an older generation, or a notebook no longer on this host, e.g. after the scheduler declared
the host lost) and ``refused`` are dropped with a log line, because sending them again would be
answered the same way; so is a 4xx for a whole request. Only an unreachable scheduler (or a
5xx) keeps a report queued.

Usage is cumulative per (notebook, generation) and the scheduler keeps the maximum, so only the
newest figure of each run is kept, a figure the scheduler already acknowledged is not sent
again, and a lost, repeated or replayed send bills nothing twice. A run that ends gets a final
figure (:meth:`Outbox.add_usage` from :meth:`agent.records.NotebookRecords.set_state`), so its
minutes up to the end are queued like any other report.

Durability: with a :class:`agent.spool.Spool`, pending transitions, usage and snapshot reports
are written to disk by :meth:`Outbox.save` (only when they changed since the last write) and
read back when the next Outbox is built, so an agent restart during a scheduler outage loses
nothing that reached the spool. A spool that cannot be decoded is moved aside with an error and
the agent starts with nothing pending: the reconciler reports again what it finds, and usage of
running notebooks is counted again from ``running_since``. Progress is best effort and only in
memory: a newer one follows, or the sync is over.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

import msgspec

from agent.spool import Spool
from common.billing import billed_minutes
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


class PendingReports(msgspec.Struct):
    """What the spool holds: every report not yet acknowledged, each list in sending order."""

    transitions: list[Transition] = []
    usage: list[UsageItem] = []
    snapshots: list[SnapshotReport] = []


_spool_decoder = msgspec.json.Decoder(PendingReports)


class Outbox:
    def __init__(self, sink: ReportSink, spool: Spool | None = None) -> None:
        self._sink = sink
        self._spool = spool
        self._transitions: list[Transition] = []
        self._usage: dict[tuple[str, int], UsageItem] = {}
        self._snapshots: list[SnapshotReport] = []
        #: Latest progress per notebook; ``None`` clears it at the scheduler. Best effort.
        self._progress: dict[str, ProgressReport] = {}
        #: Minutes the scheduler acknowledged per running (notebook, generation).
        self._acked_usage: dict[tuple[str, int], int] = {}
        #: Set when a snapshot or transition is queued: the report loop sends it at once
        #: rather than at its next interval (a RUNNING is seen as soon as it happens).
        self.pending = asyncio.Event()
        #: Counts changes to what is pending; the spool holds the state as of ``_saved``.
        self._changes = 0
        self._saved = 0
        if spool is not None:
            self._load(spool)

    # ------------------------------------------------------------ queueing

    def add_snapshot(self, report: SnapshotReport) -> None:
        """Queue a committed snapshot; sent before transitions, so a STOPPED notebook already
        shows the size of the workspace it just saved."""
        self._snapshots.append(report)
        self._changed()

    def set_progress(self, notebook: str, generation: int, progress: Progress | None) -> None:
        self._progress[notebook] = ProgressReport(notebook, generation, progress)

    def add_transition(self, transition: Transition) -> None:
        self._transitions.append(transition)
        self._changed()

    def add_usage(self, item: UsageItem) -> None:
        """Queue a run's cumulative minutes; a figure no larger than one already queued or
        acknowledged changes nothing."""
        key = (item.notebook, item.generation)
        if item.billed_minutes <= self._acked_usage.get(key, -1):
            return
        current = self._usage.get(key)
        if current is None or item.billed_minutes > current.billed_minutes:
            self._usage[key] = item
            self._changed()

    def record_usage(self, running: list[tuple[str, int, float]], now: float) -> None:
        """Queue billed minutes so far for each RUNNING ``(notebook, generation, since)``."""
        keys = set()
        for notebook, generation, running_since in running:
            keys.add((notebook, generation))
            self.add_usage(
                UsageItem(
                    notebook=notebook,
                    generation=generation,
                    billed_minutes=billed_minutes(running_since, now),
                    at=now,
                )
            )
        # A run that ended sent its final figure through add_usage; nothing more will come.
        self._acked_usage = {k: v for k, v in self._acked_usage.items() if k in keys}

    @property
    def pending_transitions(self) -> list[Transition]:
        return list(self._transitions)

    @property
    def pending_usage(self) -> list[UsageItem]:
        return list(self._usage.values())

    @property
    def pending_snapshots(self) -> list[SnapshotReport]:
        return list(self._snapshots)

    def empty(self) -> bool:
        return not (self._transitions or self._usage or self._snapshots or self._progress)

    # ------------------------------------------------------------ sending

    async def tick(self) -> None:
        """Send what is pending: snapshots, then usage (so a run's minutes are in before the
        scheduler closes the run on its end transition), then transitions. Raises when the
        scheduler could not be reached (the caller backs off); whatever was not acknowledged
        stays queued in order. Progress is sent last and never retried."""
        while self._snapshots:
            try:
                await self._sink.snapshot(self._snapshots[0])
            except ApiError as exc:
                log.error("report: scheduler refused a snapshot report, dropping: %s", exc)
            del self._snapshots[0]
            self._changed()
        if self._usage:
            sent_usage = dict(self._usage)
            try:
                await self._sink.usage(UsageBatch(items=list(sent_usage.values())))
            except ApiError as exc:
                log.error("report: scheduler refused usage, dropping: %s", exc)
            for key, item in sent_usage.items():
                self._acked_usage[key] = max(self._acked_usage.get(key, 0), item.billed_minutes)
                if self._usage.get(key) is item:
                    del self._usage[key]
            self._changed()
        while self._transitions:
            batch = self._transitions[:BATCH]
            try:
                reply = await self._sink.transitions(TransitionBatch(items=batch))
            except ApiError as exc:
                # A 4xx for the whole batch will not change on retry; keep order by dropping it.
                log.error("report: scheduler refused %d transitions, dropping: %s", len(batch), exc)
                del self._transitions[: len(batch)]
                self._changed()
                continue
            for sent, result in zip(batch, reply.items, strict=False):
                if result.outcome in ("stale", "refused"):
                    log.warning(
                        "notebook=%s generation=%d report %s answered %s, dropped: %s",
                        sent.notebook,
                        sent.generation,
                        sent.state,
                        result.outcome,
                        result.message,
                    )
            del self._transitions[: len(batch)]
            self._changed()
        progress, self._progress = self._progress, {}
        for report in progress.values():
            try:
                await self._sink.progress(report)
            except ApiError as exc:
                log.debug("notebook=%s progress report refused: %s", report.notebook, exc)

    # ------------------------------------------------------------ the spool

    def _changed(self) -> None:
        self._changes += 1
        self.pending.set()

    async def save(self) -> None:
        """Write what is pending to the spool, if it changed since the last write. Raises
        ``OSError`` when the write fails; everything stays queued in memory and the next call
        tries again."""
        if self._spool is None or self._saved == self._changes:
            return
        changes = self._changes
        pending = PendingReports(
            transitions=list(self._transitions),
            usage=list(self._usage.values()),
            snapshots=list(self._snapshots),
        )
        await self._spool.write(msgspec.json.encode(pending))
        self._saved = max(self._saved, changes)

    def close(self) -> None:
        """Wait for spool writes in flight (after a last :meth:`save`)."""
        if self._spool is not None:
            self._spool.close()

    def _load(self, spool: Spool) -> None:
        """Queue what the spool holds, ahead of anything this process reports."""
        try:
            data = spool.read()
        except OSError as exc:
            log.error(
                "report: spool %s cannot be read (%s); starting with nothing pending, the "
                "next write replaces it",
                spool.path,
                exc,
            )
            return
        if data is None:
            return
        try:
            pending = _spool_decoder.decode(data)
        except msgspec.DecodeError as exc:  # torn or corrupt (ValidationError is a subclass)
            moved = spool.quarantine()
            log.error(
                "report: spool %s is unreadable (%s); moved to %s and starting with nothing "
                "pending: the reconciler reports again what it finds and usage of running "
                "notebooks is counted again from running_since",
                spool.path,
                exc,
                moved,
            )
            return
        self._transitions = list(pending.transitions)
        self._snapshots = list(pending.snapshots)
        for item in pending.usage:
            self.add_usage(item)
        self._saved = self._changes = 0
        if not (pending.transitions or pending.usage or pending.snapshots):
            return
        log.info(
            "report: %d transitions, %d usage figures and %d snapshot reports from before the "
            "restart are queued",
            len(pending.transitions),
            len(pending.usage),
            len(pending.snapshots),
        )
