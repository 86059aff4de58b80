"""The reconciler end to end on this host: real dockerd, real S3, real HTTP probe."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

from agent.docker_runtime import DockerRuntime
from agent.objectstore import S3ObjectStore
from agent.reconcile import Reconciler
from agent.report import Outbox
from agent.volumes import VolumeSync
from agent.workspace.host import HostWorkspaces
from common.config import AgentConfig
from common.states import NotebookState as S
from common.wire import Assignment
from tests.fakes.scheduler import FakeContact, FakeSink
from tests.integration.conftest import new_notebook_id
from tests.support.images import editor_command
from tests.support.s3server import S3Server


def assignment(notebook: str, image: str, **overrides) -> Assignment:
    fields = dict(
        notebook=notebook,
        project="proj",
        generation=1,
        desired="running",
        state=S.STARTING,
        image=image,
        command=editor_command(8080),
        editor_port=8080,
        url_path="/index.html",
        gpus=[],
        cpu=1,
        memory_mb=128,
        env={},
        initialized=False,
        access_token="tok",
    )
    fields.update(overrides)
    return Assignment(**fields)


async def drive(reconciler: Reconciler, outbox: Outbox, sink: FakeSink, state: S, what: str):
    """Tick until ``state`` is reported (real processes: poll with a deadline)."""
    for _ in range(200):
        await reconciler.tick()
        await reconciler.idle()
        await outbox.tick()
        if any(t.state == state for t in sink.sent):
            return [t for t in sink.sent if t.state == state][-1]
        await asyncio.sleep(0.1)
    raise AssertionError(f"no {state} while waiting for {what}; reported: {sink.sent}")


async def test_run_stop_restart_delete(
    tiny_image: str, s3: S3Server, tmp_path: Path, host_id: str, notebook_ids: list[str]
) -> None:
    notebook = new_notebook_id(notebook_ids)
    config = AgentConfig(
        host_id=host_id,
        workspaces_dir=str(tmp_path / "ws"),
        scratch_dir=str(tmp_path / "scratch"),
        state_dir=str(tmp_path / "state"),
        volumes_dir=str(tmp_path / "volumes"),
        workspace_bucket=f"it-{host_id}",
        start_timeout_s=60,
    )
    runtime = DockerRuntime(host_id=host_id)
    store = S3ObjectStore(s3.endpoint, access_key=s3.access_key, secret_key=s3.secret_key)
    sink = FakeSink()
    outbox = Outbox(sink)
    workspaces = HostWorkspaces(
        store, config.workspace_bucket, config.workspaces_dir, config.scratch_dir
    )
    reconciler = Reconciler(
        config,
        runtime,
        workspaces,
        outbox,
        volumes=VolumeSync(config.volumes_dir),
        contact=FakeContact(),
    )
    try:
        reconciler.set_assignments([assignment(notebook, tiny_image)])
        await drive(reconciler, outbox, sink, S.RUNNING, "the first start")
        # The editor writes into /workspace as uid 1000.
        write = subprocess.run(
            ["docker", "exec", f"nbfleet-{notebook}", "sh", "-c", "echo saved > notes.txt"],
            capture_output=True,
            text=True,
        )
        assert write.returncode == 0, write.stderr

        reconciler.set_assignments(
            [assignment(notebook, tiny_image, desired="stopped", state=S.STOPPING)]
        )
        await drive(reconciler, outbox, sink, S.STOPPED, "the stop")
        assert await runtime.inspect(notebook) is None
        assert not (tmp_path / "ws" / notebook).exists()
        snapshots = await workspaces.snapshots(notebook)
        assert [s.files for s in snapshots] == [2]  # the marker and notes.txt

        sink.sent.clear()
        reconciler.set_assignments(
            [assignment(notebook, tiny_image, generation=2, initialized=True)]
        )
        await drive(reconciler, outbox, sink, S.RUNNING, "the restart")
        read = subprocess.run(
            ["docker", "exec", f"nbfleet-{notebook}", "cat", "notes.txt"],
            capture_output=True,
            text=True,
        )
        assert read.stdout == "saved\n"

        # The editor dies with an error: push, then FAILED with the exit code.
        subprocess.run(
            ["docker", "exec", f"nbfleet-{notebook}", "sh", "-c", "echo after > more.txt; kill 1"],
            capture_output=True,
        )
        failed = await drive(reconciler, outbox, sink, S.FAILED, "the exit")
        assert failed.reason.startswith("container exited with code ")
        snapshots = await workspaces.snapshots(notebook)
        assert snapshots[-1].files == 3, "more.txt was pushed"

        reconciler.set_assignments(
            [assignment(notebook, tiny_image, generation=2, desired="deleted", state=S.DELETING)]
        )
        await drive(reconciler, outbox, sink, S.DELETED, "the delete")
        assert await store.list(config.workspace_bucket, f"{notebook}/") == []
    finally:
        await reconciler.close()
        await runtime.close()
        await store.close()
