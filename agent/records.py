"""What this agent knows of each run of the notebooks assigned to it, and the one path that
changes a notebook's state on this side (design.md, "Lifecycle").

Every state change goes through :meth:`NotebookRecords.set_state`: the ones this agent causes
are validated with :func:`common.states.check` and queued in the outbox; the scheduler's own
(STOPPING and DELETING set by a user) are adopted from assignments without a report
(:meth:`NotebookRecords.for_assignment`). A run this agent ends (leaving RUNNING) also queues
its final billed minutes; when the scheduler ends it, the scheduler closes the run itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from agent.report import Outbox
from common.billing import billed_minutes
from common.states import InvalidTransition, NotebookState, check
from common.wire import Assignment, Transition, UsageItem

log = logging.getLogger(__name__)

S = NotebookState


@dataclass
class NotebookRecord:
    """What this agent knows about one run (generation) of a notebook. Its ``state`` changes
    only through :meth:`NotebookRecords.set_state`."""

    notebook: str
    generation: int
    state: NotebookState
    #: When this agent first worked on this generation: the start timeout counts from here.
    first_seen: float
    running_since: float | None = None
    last_error: str = ""
    #: What the workspace restore had to say (an unreadable snapshot skipped), reported with
    #: the RUNNING transition so it lands in the notebook's history.
    start_notes: list[str] = field(default_factory=list)
    #: When the last checkpoint was tried (or the run began): the next is due an interval later.
    last_checkpoint: float | None = None
    #: A checkpoint was due but skipped while out of contact with the scheduler.
    fenced: bool = False
    #: When a checkpoint of this run last saved the workspace (``None``: none yet).
    last_saved: float | None = None
    #: Seconds each step of the start or stop under way took so far (``wait``, ``restore``,
    #: ``volumes``, ``container``, ``editor``; ``container``, ``volumes``, ``push``), sent with
    #: the transition that ends it (:meth:`NotebookRecords.set_state`), then cleared.
    phases: dict[str, float] = field(default_factory=dict)
    #: When this start's container was started: its editor phase counts from here.
    container_started: float | None = None


class NotebookRecords:
    """The records of the notebooks assigned here, by notebook id: one per notebook, for the
    newest generation this agent has worked on."""

    def __init__(self, outbox: Outbox, clock: Callable[[], float]) -> None:
        self.outbox = outbox
        self.clock = clock
        self._records: dict[str, NotebookRecord] = {}

    def get(self, notebook: str) -> NotebookRecord | None:
        return self._records.get(notebook)

    def keep_only(self, notebooks: set[str]) -> None:
        """Forget the records of every notebook not in ``notebooks``."""
        for notebook in list(self._records):
            if notebook not in notebooks:
                del self._records[notebook]

    def running(self) -> list[tuple[str, int, float]]:
        """``(notebook, generation, running_since)`` of every notebook RUNNING here."""
        return [
            (r.notebook, r.generation, r.running_since)
            for r in self._records.values()
            if r.state == S.RUNNING and r.running_since is not None
        ]

    def set_state(
        self, record: NotebookRecord, state: NotebookState, reason: str, *, report: bool = True
    ) -> None:
        """Change ``record``'s state. With ``report``, a change this agent causes: checked
        against the transition table (a repeat changes nothing, a forbidden one is logged and
        ignored), stamped, and queued in the outbox with the run's final minutes when it leaves
        RUNNING. Without, the scheduler's own state adopted as is, nothing queued."""
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
            if record.container_started is not None:
                record.phases["editor"] = max(0.0, now - record.container_started)
        phases, record.phases = record.phases, {}
        record.container_started = None
        self.outbox.add_transition(
            Transition(
                notebook=record.notebook,
                generation=record.generation,
                state=state,
                reason=reason,
                at=now,
                # Steps that took no time (no volumes to pull) say nothing.
                phases={name: round(t, 3) for name, t in phases.items() if t >= 0.0005},
            )
        )

    @contextmanager
    def timed(self, record: NotebookRecord, phase: str) -> Iterator[None]:
        """Count the time spent inside towards ``record``'s ``phase`` (added up over tries)."""
        started = self.clock()
        try:
            yield
        finally:
            spent = max(0.0, self.clock() - started)
            record.phases[phase] = record.phases.get(phase, 0.0) + spent

    def for_assignment(self, assignment: Assignment) -> NotebookRecord | None:
        """The record for the assignment's generation, created or brought in line with the
        scheduler; ``None`` for an assignment older than what this agent already runs."""
        record = self._records.get(assignment.notebook)
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
            self._records[assignment.notebook] = record
            return record
        wanted = assignment.state
        if wanted == S.DELETING and record.state != S.DELETED:
            self.set_state(record, S.DELETING, "", report=False)
        elif wanted == S.STOPPING and record.state in (S.STARTING, S.RUNNING):
            self.set_state(record, S.STOPPING, "", report=False)
        elif wanted == S.RUNNING and record.state == S.STARTING:
            # The scheduler already has our RUNNING (e.g. from before an agent restart).
            self.set_state(record, S.RUNNING, "", report=False)
            record.running_since = record.running_since or assignment.running_since
        return record
