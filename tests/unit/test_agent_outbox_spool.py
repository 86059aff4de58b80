"""The outbox's spool: pending reports survive an agent restart and a scheduler outage, a torn or
corrupt spool never stops the agent, and the disk is written only when something changed."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from agent.client import SchedulerUnavailable
from agent.report import Outbox
from agent.spool import Spool
from common import wire
from common.states import NotebookState as S
from tests.fakes.scheduler import FakeSink


class CountingSpool(Spool):
    """A real spool that counts its writes."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.writes = 0

    def write_now(self, data: bytes) -> None:
        self.writes += 1
        super().write_now(data)


class StaleSink(FakeSink):
    """A scheduler that has moved on: every transition is answered ``stale``."""

    async def transitions(self, body: wire.TransitionBatch) -> wire.TransitionReply:
        self._enter()
        return wire.TransitionReply(
            items=[
                wire.TransitionResult(t.notebook, "stale", S.ERROR, "not assigned to host h1")
                for t in body.items
            ]
        )


def transition(state: S, at: float, notebook: str = "nb1") -> wire.Transition:
    return wire.Transition(notebook, 1, state, f"reason {state}", at)


def usage(minutes: int, notebook: str = "nb1", generation: int = 1) -> wire.UsageItem:
    return wire.UsageItem(notebook, generation, minutes, 1000.0 + minutes)


def snapshot_report(snap_id: str) -> wire.SnapshotReport:
    info = wire.SnapshotInfo(snap_id, 1.0, "stop", 3, 300, 100)
    return wire.SnapshotReport("nb1", 1, info, retained=[snap_id])


@pytest.fixture
def spool_path(tmp_path: Path) -> str:
    return str(tmp_path / "state" / "outbox.json")


async def test_pending_reports_are_sent_by_the_next_outbox_after_a_restart(spool_path) -> None:
    sink = FakeSink()
    outbox = Outbox(sink, Spool(spool_path))
    outbox.add_snapshot(snapshot_report("s1"))
    outbox.add_transition(transition(S.STOPPING, 1.0))
    outbox.add_transition(transition(S.STOPPED, 2.0))
    outbox.add_usage(usage(7))
    sink.down_for(1)
    with pytest.raises(SchedulerUnavailable):
        await outbox.tick()
    await outbox.save()
    outbox.close()

    after = FakeSink()
    restarted = Outbox(after, Spool(spool_path))
    assert [t.state for t in restarted.pending_transitions] == [S.STOPPING, S.STOPPED]
    await restarted.tick()
    assert [r.snapshot.id for r in after.snapshots] == ["s1"]
    assert [(t.state, t.reason) for t in after.sent] == [
        (S.STOPPING, "reason STOPPING"),
        (S.STOPPED, "reason STOPPED"),
    ]
    assert [(u.notebook, u.generation, u.billed_minutes) for u in after.usage_items] == [
        ("nb1", 1, 7)
    ]
    # Delivered: once that is on disk, a third start has nothing to send.
    await restarted.save()
    restarted.close()
    assert Outbox(FakeSink(), Spool(spool_path)).empty()


async def test_usage_queued_while_the_scheduler_is_down_is_billed_after_a_restart(
    spool_path,
) -> None:
    sink = FakeSink()
    outbox = Outbox(sink, Spool(spool_path))
    since = 1000.0
    outbox.record_usage([("nb1", 1, since)], since + 30)
    await outbox.tick()
    sink.down_for(100)
    outbox.record_usage([("nb1", 1, since)], since + 250)
    with pytest.raises(SchedulerUnavailable):
        await outbox.tick()
    await outbox.save()
    # kill -9 here: nothing else runs.

    after = FakeSink()
    restarted = Outbox(after, Spool(spool_path))
    await restarted.tick()
    assert [(u.notebook, u.generation, u.billed_minutes) for u in after.usage_items] == [
        ("nb1", 1, 5)
    ]


async def test_a_corrupt_spool_is_moved_aside_and_the_agent_starts_empty(
    spool_path, caplog
) -> None:
    os.makedirs(os.path.dirname(spool_path))
    with open(spool_path, "wb") as out:
        out.write(b'{"transitions": [{"notebook": "nb1", "gener')  # torn
    with caplog.at_level(logging.ERROR):
        outbox = Outbox(FakeSink(), Spool(spool_path))
    assert outbox.empty()
    assert "unreadable" in caplog.text
    moved = [n for n in os.listdir(os.path.dirname(spool_path)) if ".corrupt-" in n]
    assert len(moved) == 1
    # The agent carries on: the next change is spooled as usual.
    outbox.add_transition(transition(S.FAILED, 3.0))
    await outbox.save()
    assert [t.state for t in Outbox(FakeSink(), Spool(spool_path)).pending_transitions] == [
        S.FAILED
    ]


async def test_a_spool_of_the_wrong_shape_is_treated_as_corrupt(spool_path) -> None:
    os.makedirs(os.path.dirname(spool_path))
    with open(spool_path, "wb") as out:
        out.write(b'{"transitions": [{"notebook": 5}]}')
    assert Outbox(FakeSink(), Spool(spool_path)).empty()
    assert not os.path.exists(spool_path)


async def test_a_crash_between_writing_and_renaming_leaves_the_old_spool(spool_path) -> None:
    outbox = Outbox(FakeSink(), Spool(spool_path))
    outbox.add_transition(transition(S.STOPPING, 1.0))
    await outbox.save()
    spool = Spool(spool_path)
    # What a crash after (part of) the new content was written, before the rename, leaves.
    with open(spool.tmp_path, "wb") as out:
        out.write(b'{"transitions": [], "usage": [{"notebook"')
    restarted = Outbox(FakeSink(), spool)
    assert [t.state for t in restarted.pending_transitions] == [S.STOPPING]
    restarted.add_transition(transition(S.STOPPED, 2.0))
    await restarted.save()
    assert [t.state for t in Outbox(FakeSink(), Spool(spool_path)).pending_transitions] == [
        S.STOPPING,
        S.STOPPED,
    ]


async def test_a_failed_write_keeps_the_old_spool_and_is_retried(spool_path) -> None:
    spool = Spool(spool_path)
    outbox = Outbox(FakeSink(), spool)
    outbox.add_transition(transition(S.STOPPING, 1.0))
    await outbox.save()
    outbox.add_transition(transition(S.STOPPED, 2.0))
    os.mkdir(spool.tmp_path)  # the temporary file cannot be created: the write fails
    with pytest.raises(OSError):
        await outbox.save()
    assert [t.state for t in Outbox(FakeSink(), Spool(spool_path)).pending_transitions] == [
        S.STOPPING
    ]
    os.rmdir(spool.tmp_path)
    await outbox.save()  # still pending, so written now
    assert [t.state for t in Outbox(FakeSink(), Spool(spool_path)).pending_transitions] == [
        S.STOPPING,
        S.STOPPED,
    ]


async def test_the_spool_is_written_only_when_what_is_pending_changes(spool_path) -> None:
    spool = CountingSpool(spool_path)
    sink = FakeSink()
    outbox = Outbox(sink, spool)
    await outbox.save()
    assert spool.writes == 0
    since = 1000.0
    outbox.record_usage([("nb1", 1, since)], since + 10)
    await outbox.save()
    await outbox.save()
    assert spool.writes == 1
    await outbox.tick()  # acknowledged: the spool must forget it
    await outbox.save()
    assert spool.writes == 2
    # The same minute again is neither sent nor written; the next minute is.
    outbox.record_usage([("nb1", 1, since)], since + 40)
    await outbox.tick()
    await outbox.save()
    assert spool.writes == 2
    assert [u.billed_minutes for u in sink.usage_items] == [1]
    outbox.record_usage([("nb1", 1, since)], since + 70)
    await outbox.tick()
    assert [u.billed_minutes for u in sink.usage_items] == [1, 2]
    # Progress is best effort and never touches the disk.
    outbox.set_progress("nb1", 1, wire.Progress("push", 1, 2, 1, 2, 1.0))
    await outbox.save()
    assert spool.writes == 3


async def test_final_minutes_of_a_run_are_sent_after_its_last_periodic_figure(spool_path) -> None:
    sink = FakeSink()
    outbox = Outbox(sink, Spool(spool_path))
    outbox.record_usage([("nb1", 1, 1000.0)], 1100.0)
    await outbox.tick()
    outbox.add_usage(usage(2))  # the same figure as acknowledged: nothing to send
    outbox.add_usage(usage(3))  # the run ended a minute later
    outbox.record_usage([], 1200.0)  # no longer running
    await outbox.tick()
    assert [u.billed_minutes for u in sink.usage_items] == [2, 3]


async def test_stale_answers_are_dropped_not_retried(spool_path) -> None:
    sink = StaleSink()
    outbox = Outbox(sink, Spool(spool_path))
    outbox.add_transition(transition(S.FAILED, 1.0, notebook="moved-away"))
    await outbox.tick()
    assert outbox.pending_transitions == []
    await outbox.save()
    assert Outbox(FakeSink(), Spool(spool_path)).empty()
