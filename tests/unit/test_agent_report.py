"""The outbox: snapshots before transitions, progress best effort, nothing lost while down."""

import pytest

from agent.client import SchedulerUnavailable
from agent.report import Outbox
from common import wire
from common.states import NotebookState
from tests.fakes.scheduler import FakeSink


def snap(snap_id: str) -> wire.SnapshotReport:
    info = wire.SnapshotInfo(snap_id, 1.0, "stop", 3, 300, 100)
    return wire.SnapshotReport("nb1", 1, info, retained=[snap_id])


async def test_snapshot_is_sent_before_the_transition_it_belongs_to():
    sink = FakeSink()
    outbox = Outbox(sink)
    outbox.add_transition(wire.Transition("nb1", 1, NotebookState.STOPPED, "stopped", 2.0))
    outbox.add_snapshot(snap("s1"))
    order = []
    original_snapshot, original_transitions = sink.snapshot, sink.transitions

    async def snapshot(body):
        order.append("snapshot")
        return await original_snapshot(body)

    async def transitions(body):
        order.append("transition")
        return await original_transitions(body)

    sink.snapshot, sink.transitions = snapshot, transitions
    await outbox.tick()
    assert order == ["snapshot", "transition"]
    assert outbox.empty()


async def test_snapshot_reports_survive_a_scheduler_outage():
    sink = FakeSink()
    outbox = Outbox(sink)
    outbox.add_snapshot(snap("s1"))
    sink.down_for(1)
    with pytest.raises(SchedulerUnavailable):
        await outbox.tick()
    assert not outbox.empty()
    await outbox.tick()
    assert [r.snapshot.id for r in sink.snapshots] == ["s1"]


async def test_progress_keeps_only_the_latest_and_is_not_retried():
    sink = FakeSink()
    outbox = Outbox(sink)
    for done in (1, 2, 3):
        outbox.set_progress("nb1", 1, wire.Progress("restore", done, 3, done, 3, 1.0))
    await outbox.tick()
    assert [r.progress.files_done for r in sink.progress_reports] == [3]
    outbox.set_progress("nb1", 1, None)
    sink.down_for(1)
    with pytest.raises(SchedulerUnavailable):
        await outbox.tick()
    assert outbox.empty()  # dropped: the next sync will report afresh
