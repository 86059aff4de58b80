"""Reconcile decisions, driven through tick() with a FakeRuntime, FakeObjectStore and FakeClock."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.reconcile import Reconciler
from agent.report import Outbox
from agent.runtime import ContainerInfo
from agent.volumes import VolumeSync
from agent.workspace import engine
from agent.workspace import manifest as mf
from agent.workspace.host import MARKER, HostWorkspaces
from common.config import AgentConfig
from common.states import NotebookState as S
from common.wire import Assignment
from tests.fakes.inventory import FakeClock
from tests.fakes.objectstore import FakeObjectStore
from tests.fakes.runtime import FakeRuntime
from tests.fakes.scheduler import FakeContact, FakeSink

BUCKET = "nbfleet-workspaces"


async def saved_files(store: FakeObjectStore, notebook: str) -> list[str]:
    """Files in the notebook's newest workspace snapshot."""
    prefix = f"{notebook}/workspace/"
    snapshot = await engine.latest_snapshot_id(store, BUCKET, prefix)
    if snapshot is None:
        return []
    manifest, _ = await engine.load_manifest(store, BUCKET, prefix, snapshot)
    return [entry.path for entry in manifest.entries if entry.kind == "f"]


@dataclass
class Rig:
    reconciler: Reconciler
    runtime: FakeRuntime
    store: FakeObjectStore
    sink: FakeSink
    outbox: Outbox
    clock: FakeClock
    contact: FakeContact
    root: Path

    async def tick(self, times: int = 1) -> None:
        for _ in range(times):
            await self.reconciler.tick()
            await self.reconciler.idle()
        await self.outbox.tick()

    def assign(self, *items: Assignment) -> None:
        self.reconciler.set_assignments(list(items))

    def reported(self, notebook: str | None = None) -> list[tuple[str, str]]:
        return [
            (t.state.value, t.reason)
            for t in self.sink.sent
            if notebook is None or t.notebook == notebook
        ]

    def workspace(self, notebook: str) -> Path:
        return self.root / "workspaces" / notebook


def make_rig(tmp_path: Path, **config_fields) -> Rig:
    # One editor probe per tick unless a test asks for the in-step wait.
    config_fields.setdefault("reconcile_interval_s", 0)
    config = AgentConfig(
        host_id="h1",
        workspaces_dir=str(tmp_path / "workspaces"),
        scratch_dir=str(tmp_path / "scratch"),
        volumes_dir=str(tmp_path / "volumes"),
        state_dir=str(tmp_path / "state"),
        public_host="127.0.0.1",
        start_timeout_s=60,
        checkpoint_interval_s=600,
        **config_fields,
    )
    runtime = FakeRuntime()
    store = FakeObjectStore()
    sink = FakeSink()
    outbox = Outbox(sink)
    clock = FakeClock()
    contact = FakeContact()
    workspaces = HostWorkspaces(store, BUCKET, config.workspaces_dir, config.scratch_dir)
    reconciler = Reconciler(
        config,
        runtime,
        workspaces,
        outbox,
        volumes=VolumeSync(config.volumes_dir, clock=clock),
        contact=contact,
        clock=clock,
        probe=runtime.probe,
    )
    return Rig(reconciler, runtime, store, sink, outbox, clock, contact, tmp_path)


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return make_rig(tmp_path)


def assignment(notebook: str = "nb1", **overrides) -> Assignment:
    fields = dict(
        notebook=notebook,
        project="p1",
        generation=1,
        desired="running",
        state=S.STARTING,
        image="tiny:ok",
        command=["editor"],
        editor_port=8888,
        url_path="/lab",
        gpus=["GPU-1"],
        cpu=4,
        memory_mb=1024,
        env={},
        initialized=False,
        access_token="t",
    )
    fields.update(overrides)
    return Assignment(**fields)


async def test_start_reports_running_once_the_editor_answers_and_creates_marker(rig: Rig) -> None:
    rig.assign(assignment())
    await rig.tick()
    spec = rig.runtime.specs["nb1"]
    port = rig.runtime.containers["nb1"].host_port
    assert rig.reported() == [("RUNNING", "editor answers")]
    # The readiness probe opens the editor's url_path on its loopback port.
    assert rig.runtime.probed[-1] == f"http://127.0.0.1:{port}/lab"
    assert spec.user == "1000:1000" and spec.gpus == ["GPU-1"]
    assert (rig.workspace("nb1") / MARKER).exists()
    assert rig.reconciler.running() == [("nb1", 1, rig.clock.now)]


async def test_containers_get_the_limits_of_the_agent_config(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, pids_limit=128, nofile_limit=2048, shm_size_mb=256)
    rig.assign(assignment())
    await rig.tick()
    limits = rig.runtime.specs["nb1"].limits
    assert (limits.pids, limits.nofile, limits.shm_size_mb) == (128, 2048, 256)


async def test_slow_editor_stays_starting_until_it_answers(rig: Rig) -> None:
    rig.runtime.behaviours["tiny:ok"] = "slow"
    rig.runtime.answer_after = 2
    rig.assign(assignment())
    await rig.tick(2)
    assert rig.reported() == []
    await rig.tick()
    assert rig.reported() == [("RUNNING", "editor answers")]


async def test_a_step_keeps_probing_the_editor_so_running_follows_its_first_answer(
    tmp_path: Path,
) -> None:
    rig = make_rig(tmp_path, reconcile_interval_s=30, editor_probe_interval_s=0.01)
    rig.runtime.behaviours["tiny:ok"] = "slow"
    rig.runtime.answer_after = 5
    rig.assign(assignment())
    await rig.tick()
    # One tick, no waiting for the next: the step asked until the editor answered.
    assert rig.reported() == [("RUNNING", "editor answers")]
    assert len(rig.runtime.probed) == 6
    # ... and the container it made is known at once (the proxy looks there for the port).
    assert rig.reconciler.containers["nb1"].running


async def test_a_stop_ends_the_wait_for_the_editor(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, reconcile_interval_s=30, editor_probe_interval_s=0.01)
    rig.runtime.behaviours["tiny:ok"] = "never"
    rig.assign(assignment())
    waiting = asyncio.create_task(rig.tick())
    while len(rig.runtime.probed) < 3:
        await asyncio.sleep(0.01)
    rig.assign(assignment(desired="stopped", state=S.STOPPING))
    await asyncio.wait_for(waiting, 5)  # well before the 30 s the step could have waited
    probes = len(rig.runtime.probed)
    await rig.tick()
    assert rig.reported() == [("STOPPED", "stopped")]
    assert len(rig.runtime.probed) == probes


async def test_running_carries_what_each_step_of_the_start_took_and_shows_the_step(
    rig: Rig,
) -> None:
    rig.runtime.behaviours["tiny:ok"] = "slow"
    rig.runtime.answer_after = 2
    rig.assign(assignment(editor="jupyterlab"))
    await rig.tick()
    shown = [r.progress for r in rig.sink.progress_reports if r.notebook == "nb1"]
    assert [(p.phase, p.detail) for p in shown if p is not None][-1] == ("editor", "jupyterlab")
    rig.clock.advance(1.5)
    await rig.tick()
    rig.clock.advance(1.5)
    await rig.tick()
    [running] = [t for t in rig.sink.sent if t.state == S.RUNNING]
    # The fake clock stands still inside a tick: only the editor's wait shows.
    assert running.phases == {"editor": 3.0}
    assert rig.sink.progress_reports[-1].progress is None


async def test_editor_that_never_answers_fails_after_start_timeout(rig: Rig) -> None:
    rig.runtime.behaviours["tiny:ok"] = "never"
    rig.assign(assignment())
    await rig.tick()
    rig.clock.advance(59)
    await rig.tick()
    assert rig.reported() == []
    rig.clock.advance(2)
    await rig.tick()
    assert rig.reported() == [("FAILED", "editor did not answer within 60s")]
    assert "nb1" not in rig.runtime.containers
    assert await saved_files(rig.store, "nb1") == [MARKER]


async def test_exit_nonzero_pushes_then_fails(rig: Rig) -> None:
    rig.assign(assignment())
    await rig.tick()
    (rig.workspace("nb1") / "notes.txt").write_text("hello")
    rig.runtime.exit("nb1", 3)
    await rig.tick()
    assert rig.reported() == [
        ("RUNNING", "editor answers"),
        ("FAILED", "container exited with code 3"),
    ]
    assert "notes.txt" in await saved_files(rig.store, "nb1")
    assert not rig.workspace("nb1").exists()
    assert rig.reconciler.running() == []


async def test_output_of_a_crashed_container_is_kept_until_delete(rig: Rig) -> None:
    rig.assign(assignment())
    await rig.tick()
    rig.runtime.logs_text["nb1"] = "loading model\nTraceback: CUDA out of memory\n"
    rig.runtime.exit("nb1", 1)
    await rig.tick()
    assert "nb1" not in rig.runtime.containers
    assert rig.reconciler.kept_logs.read("nb1", 1) == "Traceback: CUDA out of memory\n"
    rig.assign(assignment(desired="deleted", state=S.DELETING))
    await rig.tick()
    assert rig.reconciler.kept_logs.read("nb1", 10) is None


async def test_exit_before_running(rig: Rig) -> None:
    rig.runtime.behaviours["tiny:ok"] = "exit1"
    rig.assign(assignment())
    await rig.tick(2)
    assert rig.reported() == [("FAILED", "container exited with code 1")]


async def test_exit_zero_goes_stopping_then_stopped(rig: Rig) -> None:
    rig.assign(assignment())
    await rig.tick()
    rig.runtime.exit("nb1", 0)
    await rig.tick()
    assert [state for state, _ in rig.reported()] == ["RUNNING", "STOPPING", "STOPPED"]


async def test_stop_removes_container_pushes_and_removes_host_dirs(rig: Rig) -> None:
    rig.assign(assignment())
    await rig.tick()
    (rig.workspace("nb1") / "model.py").write_text("x = 1")
    rig.assign(assignment(desired="stopped", state=S.STOPPING))
    await rig.tick()
    assert rig.reported()[-1] == ("STOPPED", "stopped")
    assert "nb1" not in rig.runtime.containers
    assert ("stop", "nb1") in rig.runtime.calls and ("remove", "nb1") in rig.runtime.calls
    assert not rig.workspace("nb1").exists()
    assert not (rig.root / "scratch" / "nb1").exists()
    assert "model.py" in await saved_files(rig.store, "nb1")


async def test_stop_with_push_failure_reports_failed_and_keeps_host_dir(rig: Rig) -> None:
    rig.assign(assignment())
    await rig.tick()
    rig.store.down_for(100)
    rig.assign(assignment(desired="stopped", state=S.STOPPING))
    await rig.tick()
    state, reason = rig.reported()[-1]
    assert state == "FAILED" and reason.startswith("workspace push failed: ")
    assert rig.workspace("nb1").exists()
    # The next start uses the kept dir as is, even while S3 is still down.
    rig.store.down_for(0)
    (rig.workspace("nb1") / "unsaved.txt").write_text("kept")
    rig.assign(assignment(generation=2, initialized=True))
    await rig.tick()
    assert rig.reported("nb1")[-1] == ("RUNNING", "editor answers")
    assert (rig.workspace("nb1") / "unsaved.txt").read_text() == "kept"


async def test_restart_restores_workspace_from_object_store(rig: Rig) -> None:
    rig.assign(assignment())
    await rig.tick()
    (rig.workspace("nb1") / "data.csv").write_text("a,b\n")
    rig.assign(assignment(desired="stopped", state=S.STOPPING))
    await rig.tick()
    assert not rig.workspace("nb1").exists()
    rig.assign(assignment(generation=2, initialized=True))
    await rig.tick()
    assert (rig.workspace("nb1") / "data.csv").read_text() == "a,b\n"
    assert rig.reported()[-1] == ("RUNNING", "editor answers")
    assert rig.sink.sent[-1].generation == 2


async def test_an_unreadable_newest_snapshot_is_skipped_and_named_in_the_history(
    rig: Rig,
) -> None:
    rig.assign(assignment())
    await rig.tick()
    (rig.workspace("nb1") / "data.csv").write_text("a,b\n")
    rig.assign(assignment(desired="stopped", state=S.STOPPING))
    await rig.tick()
    # a killed push left a truncated manifest newer than the good one
    [good_key] = rig.store.keys(BUCKET, "nb1/workspace/snapshots/")
    good_id = good_key.rsplit("/", 1)[1]
    broken = mf.new_snapshot_id(mf.snapshot_time(good_id) + 5)
    body = rig.store.objects[(BUCKET, good_key)][0]
    rig.store._store(BUCKET, f"nb1/workspace/snapshots/{broken}", body[:7], {})
    rig.assign(assignment(generation=2, initialized=True))
    await rig.tick()
    assert (rig.workspace("nb1") / "data.csv").read_text() == "a,b\n"
    state, reason = rig.reported()[-1]
    assert state == "RUNNING" and reason.startswith("editor answers; restored older snapshot")
    assert good_id in reason and broken in reason and "does not decode" in reason


async def test_initialized_workspace_without_marker_is_an_error(rig: Rig) -> None:
    rig.assign(assignment(initialized=True))
    await rig.tick()
    state, reason = rig.reported()[0]
    assert state == "ERROR"
    assert "workspace marker .workspace.initialized is missing" in reason
    assert rig.runtime.containers == {}
    assert not rig.workspace("nb1").exists()


async def test_restore_failure_retries_then_start_timeout_fails(rig: Rig) -> None:
    rig.store.down_for(1000)
    rig.assign(assignment())
    await rig.tick()
    assert rig.reported() == []
    rig.clock.advance(61)
    await rig.tick()
    state, reason = rig.reported()[0]
    assert state == "FAILED"
    assert "did not start within 60s: workspace restore failed" in reason


async def test_s3_down_briefly_only_delays_the_start(rig: Rig) -> None:
    rig.store.down_for(1)
    rig.assign(assignment())
    await rig.tick()
    assert rig.reported() == []
    await rig.tick()
    assert rig.reported() == [("RUNNING", "editor answers")]


async def test_missing_image_is_an_error(rig: Rig) -> None:
    rig.runtime.behaviours["tiny:ok"] = "missing"
    rig.assign(assignment())
    await rig.tick()
    [(state, reason)] = rig.reported()
    assert state == "ERROR" and reason.startswith("image tiny:ok is not available: not found; ")
    assert "nbfleet notebook update nb1 --framework-version VERSION" in reason


async def test_delete_removes_everything(rig: Rig) -> None:
    rig.assign(assignment())
    await rig.tick()
    rig.assign(assignment(desired="stopped", state=S.STOPPING))
    await rig.tick()
    assert rig.store.keys(BUCKET, "nb1/")
    rig.assign(assignment(desired="deleted", state=S.DELETING))
    await rig.tick()
    assert rig.reported()[-1] == ("DELETED", "deleted")
    assert rig.store.keys(BUCKET, "nb1/") == []
    assert not rig.workspace("nb1").exists()


async def test_delete_of_running_notebook(rig: Rig) -> None:
    rig.assign(assignment())
    await rig.tick()
    rig.assign(assignment(desired="deleted", state=S.DELETING))
    await rig.tick()
    assert [s for s, _ in rig.reported()] == ["RUNNING", "DELETED"]
    assert rig.runtime.containers == {}
    assert rig.store.keys(BUCKET, "nb1/") == []


async def test_slow_pull_of_one_notebook_does_not_block_another(rig: Rig) -> None:
    rig.runtime.behaviours["slow-nb"] = "hang"
    rig.assign(assignment("slow-nb"), assignment("fast-nb"))
    for _ in range(2):
        await rig.reconciler.tick()
        await _settle_except(rig, "slow-nb")
    await rig.outbox.tick()
    assert rig.reported("fast-nb") == [("RUNNING", "editor answers")]
    assert rig.reported("slow-nb") == []
    assert rig.runtime.calls.count(("create", "slow-nb")) == 1  # not started twice
    rig.runtime.release("slow-nb")
    await rig.tick(2)
    assert rig.reported("slow-nb") == [("RUNNING", "editor answers")]


async def _settle_except(rig: Rig, busy: str) -> None:
    """Wait for every step but ``busy``'s, and until ``busy`` is blocked in its create."""
    for task_name, task in list(rig.reconciler._tasks.items()):
        if task_name != busy:
            await task
    for _ in range(500):
        if ("create", busy) in rig.runtime.calls:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{busy} never reached create_and_start")


async def test_adoption_after_restart_keeps_running_container(rig: Rig) -> None:
    rig.runtime.add_existing(
        ContainerInfo(notebook="nb1", generation=1, status="running", host_port=41000)
    )
    await rig.reconciler.adopt()
    await rig.tick()  # no assignments yet: nothing may be touched
    assert rig.runtime.calls == []
    rig.assign(assignment(state=S.RUNNING, running_since=rig.clock.now - 120))
    await rig.tick()
    assert rig.runtime.calls == []
    assert rig.reported() == []
    assert rig.reconciler.running() == [("nb1", 1, rig.clock.now - 120)]
    assert rig.reconciler.container_ids() == ["nb1"]


async def test_adopted_starting_container_is_reported_running(rig: Rig) -> None:
    rig.runtime.add_existing(
        ContainerInfo(notebook="nb1", generation=1, status="running", host_port=41001)
    )
    await rig.reconciler.adopt()
    rig.assign(assignment())
    await rig.tick()
    assert rig.reported() == [("RUNNING", "editor answers")]
    assert rig.runtime.probed[-1] == "http://127.0.0.1:41001/lab"


async def test_container_of_older_generation_is_replaced(rig: Rig) -> None:
    rig.runtime.add_existing(
        ContainerInfo(notebook="nb1", generation=1, status="running", host_port=41002)
    )
    rig.assign(assignment(generation=2))
    await rig.tick()
    assert rig.runtime.containers["nb1"].generation == 2
    assert rig.runtime.calls[:3] == [("stop", "nb1"), ("remove", "nb1"), ("create", "nb1")]


async def test_orphan_container_is_stopped_and_its_workspace_saved(rig: Rig) -> None:
    rig.runtime.add_existing(
        ContainerInfo(notebook="gone", generation=4, status="running", host_port=41003)
    )
    os.makedirs(rig.workspace("gone"))
    (rig.workspace("gone") / "f.txt").write_text("x")
    await rig.reconciler.adopt()
    rig.assign()
    await rig.tick()
    assert rig.runtime.containers == {}
    assert rig.runtime.calls == [("stop", "gone"), ("remove", "gone")]
    assert await saved_files(rig.store, "gone") == ["f.txt"]
    assert not rig.workspace("gone").exists()
    assert rig.reported() == []
    # The snapshot is reported (the scheduler keeps it if this host was the notebook's last).
    assert [(r.notebook, r.generation) for r in rig.sink.snapshots] == [("gone", 4)]


async def test_host_back_after_lost_retires_what_the_scheduler_moved_away(rig: Rig) -> None:
    rig.assign(assignment("nb1"), assignment("nb2", gpus=["GPU-2"]))
    await rig.tick()
    (rig.workspace("nb1") / "results.csv").write_text("1,2\n")
    # Partitioned: the scheduler declared the host lost and moved nb1 to ERROR; when the agent
    # reconnects, nb1 is no longer in its assignments.
    rig.assign(assignment("nb2", gpus=["GPU-2"], state=S.RUNNING))
    await rig.tick()
    assert "nb1" not in rig.runtime.containers and "nb2" in rig.runtime.containers
    calls = [call for call in rig.runtime.calls if call[1] == "nb1"]
    assert calls == [("create", "nb1"), ("stop", "nb1"), ("remove", "nb1")]
    assert await saved_files(rig.store, "nb1") == [MARKER, "results.csv"]
    assert not rig.workspace("nb1").exists()
    assert not (rig.root / "scratch" / "nb1").exists()
    # Nothing reported for nb1 beyond its RUNNING, and no usage for it any more.
    assert rig.reported("nb1") == [("RUNNING", "editor answers")]
    assert [nb for nb, _, _ in rig.reconciler.running()] == ["nb2"]


async def test_orphan_push_failure_keeps_the_stopped_container_and_host_dir(rig: Rig) -> None:
    rig.runtime.add_existing(
        ContainerInfo(notebook="gone", generation=2, status="running", host_port=41004)
    )
    os.makedirs(rig.workspace("gone"))
    (rig.workspace("gone") / "unsaved.txt").write_text("precious")
    await rig.reconciler.adopt()
    rig.store.down_for(1000)
    rig.assign()
    await rig.tick()
    # Stopped, not removed: the container is the reminder that a push is owed.
    assert rig.runtime.containers["gone"].status == "exited"
    assert ("remove", "gone") not in rig.runtime.calls
    assert (rig.workspace("gone") / "unsaved.txt").read_text() == "precious"
    # Retried with backoff, not on every tick.
    attempts = sum(rig.store.calls.values())
    await rig.tick(3)
    assert sum(rig.store.calls.values()) == attempts
    rig.store.down_for(0)
    rig.clock.advance(301)
    await rig.tick()
    assert "gone" not in rig.runtime.containers
    assert await saved_files(rig.store, "gone") == ["unsaved.txt"]
    assert not rig.workspace("gone").exists()
    assert rig.reported() == []


async def test_usage_is_cumulative_commenced_minutes(rig: Rig) -> None:
    rig.assign(assignment())
    await rig.tick()
    rig.clock.advance(61)
    rig.outbox.record_usage(rig.reconciler.running(), rig.clock.now)
    rig.clock.advance(60)
    rig.outbox.record_usage(rig.reconciler.running(), rig.clock.now)
    assert [u.billed_minutes for u in rig.outbox.pending_usage] == [3]
    await rig.outbox.tick()
    assert [(u.notebook, u.generation, u.billed_minutes) for u in rig.sink.usage_items] == [
        ("nb1", 1, 3)
    ]


async def test_a_run_the_agent_ends_queues_its_final_minutes(rig: Rig) -> None:
    rig.assign(assignment())
    await rig.tick()
    rig.clock.advance(61)
    rig.outbox.record_usage(rig.reconciler.running(), rig.clock.now)
    await rig.outbox.tick()
    rig.clock.advance(100)  # 161 s of RUNNING: 3 commenced minutes
    rig.runtime.exit("nb1", 3)
    await rig.tick()
    assert rig.reported()[-1] == ("FAILED", "container exited with code 3")
    assert [(u.notebook, u.billed_minutes) for u in rig.sink.usage_items] == [
        ("nb1", 2),
        ("nb1", 3),
    ]


async def test_a_run_the_scheduler_stops_is_closed_by_the_scheduler(rig: Rig) -> None:
    rig.assign(assignment())
    await rig.tick()
    rig.clock.advance(30)
    rig.outbox.record_usage(rig.reconciler.running(), rig.clock.now)
    await rig.outbox.tick()
    rig.clock.advance(100)  # the agent learns of the stop later than it happened
    rig.assign(assignment(desired="stopped", state=S.STOPPING))
    await rig.tick()
    assert rig.reported()[-1] == ("STOPPED", "stopped")
    assert [u.billed_minutes for u in rig.sink.usage_items] == [1]


async def test_outbox_keeps_order_while_scheduler_is_down(rig: Rig) -> None:
    rig.sink.down_for(2)
    rig.assign(assignment())
    await rig.reconciler.tick()
    await rig.reconciler.idle()
    rig.runtime.exit("nb1", 0)
    await rig.reconciler.tick()
    await rig.reconciler.idle()
    for _ in range(2):
        with pytest.raises(Exception, match="down"):
            await rig.outbox.tick()
    await rig.outbox.tick()
    assert [s for s, _ in rig.reported()] == ["RUNNING", "STOPPING", "STOPPED"]
    assert rig.outbox.empty()


async def test_scheduler_stop_while_starting_is_adopted(rig: Rig) -> None:
    rig.runtime.behaviours["tiny:ok"] = "never"
    rig.assign(assignment())
    await rig.tick()
    rig.assign(assignment(desired="stopped", state=S.STOPPING))
    await rig.tick()
    assert rig.reported() == [("STOPPED", "stopped")]
    await rig.tick()
    assert rig.reported() == [("STOPPED", "stopped")]  # reported once


# ------------------------------------------------------------ snapshots, checkpoints, progress


async def test_checkpoint_while_running_is_reported_and_unchanged_adds_nothing(rig: Rig) -> None:
    rig.assign(assignment())
    await rig.tick()
    assert rig.reported() == [("RUNNING", "editor answers")]
    (rig.workspace("nb1") / "train.py").write_text("epochs = 10")
    await rig.tick()
    assert rig.sink.snapshots == []  # not due yet
    record = rig.reconciler.records.get("nb1")
    assert record is not None and record.last_saved is None
    rig.clock.advance(601)
    await rig.tick()
    first = rig.sink.snapshots[-1].snapshot
    assert first.kind == "checkpoint" and "train.py" in await saved_files(rig.store, "nb1")
    assert record.last_saved == rig.clock()  # what /metrics counts its age from
    rig.clock.advance(601)
    await rig.tick()
    # Nothing changed: no new snapshot (the report repeats the same one, harmlessly); the
    # workspace is as saved as it can be.
    assert {r.snapshot.id for r in rig.sink.snapshots} == {first.id}
    assert record.last_saved == rig.clock()
    assert rig.reported()[-1] == ("RUNNING", "editor answers")


async def test_stop_reports_the_snapshot_before_stopped(rig: Rig) -> None:
    rig.assign(assignment())
    await rig.tick()
    (rig.workspace("nb1") / "notes.md").write_text("x")
    rig.assign(assignment(desired="stopped", state=S.STOPPING))
    await rig.tick()
    report = rig.sink.snapshots[-1]
    assert report.snapshot.kind == "stop" and report.snapshot.id in report.retained
    assert rig.reported()[-1] == ("STOPPED", "stopped")


async def test_lost_container_and_disk_is_an_error_and_pushes_nothing(rig: Rig) -> None:
    rig.assign(assignment())
    await rig.tick()
    (rig.workspace("nb1") / "work.txt").write_text("precious")
    rig.clock.advance(601)
    await rig.tick()  # checkpoint
    checkpoint = rig.sink.snapshots[-1].snapshot.id
    # The host "dies": container and local disk gone.
    del rig.runtime.containers["nb1"]
    for path in sorted(rig.workspace("nb1").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    rig.workspace("nb1").rmdir()
    await rig.tick()
    state, reason = rig.reported()[-1]
    assert state == "ERROR" and "disappeared" in reason
    assert {r.snapshot.id for r in rig.sink.snapshots} == {checkpoint}
    assert await saved_files(rig.store, "nb1") == [".workspace.initialized", "work.txt"]


async def test_lost_container_with_its_disk_saves_the_workspace(rig: Rig) -> None:
    rig.assign(assignment())
    await rig.tick()
    (rig.workspace("nb1") / "late.txt").write_text("after the last checkpoint")
    del rig.runtime.containers["nb1"]
    await rig.tick()
    assert rig.reported()[-1] == ("ERROR", "container disappeared; workspace saved")
    assert "late.txt" in await saved_files(rig.store, "nb1")


async def test_restore_reports_progress_then_clears_it(rig: Rig) -> None:
    rig.assign(assignment())
    await rig.tick()
    for i in range(20):
        (rig.workspace("nb1") / f"f{i}.txt").write_text("data" * i)
    rig.assign(assignment(desired="stopped", state=S.STOPPING))
    await rig.tick()
    seen = []
    set_progress = rig.outbox.set_progress

    def spy(notebook, generation, progress):
        seen.append(None if progress is None else (progress.phase, progress.files_total))
        set_progress(notebook, generation, progress)

    rig.outbox.set_progress = spy
    rig.assign(assignment(generation=2, initialized=True))
    await rig.tick()
    assert ("restore", 21) in seen  # 20 files and the marker
    assert seen[-1] is None  # cleared once the restore is done
    assert rig.sink.progress_reports[-1].progress is None
    assert (rig.workspace("nb1") / "f19.txt").read_text() == "data" * 19


async def test_fork_restores_the_source_snapshot(rig: Rig) -> None:
    from common.wire import RestoreSource

    rig.assign(assignment("src"))
    await rig.tick()
    (rig.workspace("src") / "model.bin").write_text("weights")
    rig.assign(assignment("src", desired="stopped", state=S.STOPPING))
    await rig.tick()
    snap = rig.sink.snapshots[-1].snapshot.id
    fork = assignment("fork", initialized=True, restore_from=RestoreSource("src", snap))
    rig.assign(fork)
    await rig.tick()
    assert rig.reported("fork") == [("RUNNING", "editor answers")]
    assert (rig.workspace("fork") / "model.bin").read_text() == "weights"


async def test_orphan_of_a_notebook_saved_elsewhere_since_is_not_pushed_over_that_work(
    rig: Rig, tmp_path: Path
) -> None:
    """The host was cut off; the notebook moved and another host saved its work. Retiring the
    orphan here must not make this host's older copy the newest snapshot."""
    other = HostWorkspaces(
        rig.store,
        BUCKET,
        str(tmp_path / "other" / "ws"),
        str(tmp_path / "other" / "scratch"),
        state_dir=str(tmp_path / "other"),
    )
    await other.prepare("gone", initialized=False)
    (Path(other.workspace_dir("gone")) / "f.txt").write_text("saved on the other host")
    saved = await other.push("gone")
    assert saved is not None
    rig.runtime.add_existing(
        ContainerInfo(notebook="gone", generation=1, status="running", host_port=41005)
    )
    os.makedirs(rig.workspace("gone"))
    (rig.workspace("gone") / "f.txt").write_text("this host's stale copy")
    await rig.reconciler.adopt()
    rig.assign()
    await rig.tick()
    assert "gone" not in rig.runtime.containers  # stopped and removed
    assert [s.id for s in await other.snapshots("gone")] == [saved.snapshot.id]  # not pushed
    assert (rig.workspace("gone") / "f.txt").read_text() == "this host's stale copy"  # kept
    assert rig.sink.snapshots == []


async def test_no_checkpoint_while_out_of_contact_with_the_scheduler(rig: Rig) -> None:
    """Past the heartbeat TTL the scheduler may have started the notebook elsewhere: this host
    stops checkpointing until contact is back."""
    rig.assign(assignment())
    await rig.tick()
    (rig.workspace("nb1") / "train.py").write_text("epochs = 10")
    rig.contact.reachable = False
    rig.clock.advance(601)
    await rig.tick(2)
    assert rig.sink.snapshots == []
    rig.contact.reachable = True
    await rig.tick()
    assert [r.snapshot.kind for r in rig.sink.snapshots] == ["checkpoint"]
