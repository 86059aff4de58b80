"""Datasync through a whole agent (agent/datasync.py behind agent/http_api.py): a signed request
to its real HTTP port streams progress and a result; one at a time per notebook; only while
RUNNING; a stop that begins during a datasync pushes after it and loses nothing; the caller
leaving does not stop it; a delete ends it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import msgspec
import pytest

from agent.app import Agent, build_agent
from agent.volumes import VolumeSync
from common import wire
from common.auth import sign
from common.states import NotebookState as S
from tests.fakes.inventory import FakeInventory
from tests.fakes.objectstore import FakeObjectStore
from tests.fakes.runtime import FakeRuntime
from tests.fakes.scheduler import FakeScheduler
from tests.unit.test_agent_app import (
    SECRET,
    agent_config,
    assignment,
    eventually,
    fake_scheduler,
    url_of,
)
from tests.unit.test_agent_datasync import BUCKET, LiveFakeStore, age, put

RW = wire.Volume(BUCKET, "lab", "/mnt/data", "set", "rw")
RO = wire.Volume(BUCKET, "lab", "/mnt/models", "models", "ro")


class GatedStore(LiveFakeStore):
    """Datasync uploads wait for ``gate`` while it is set to an unset event."""

    def __init__(self) -> None:
        super().__init__()
        self.gate: asyncio.Event | None = None
        self.order: list[str] = []

    async def put_object(self, bucket: str, key: str, data: bytes) -> str:
        if self.gate is not None:
            await self.gate.wait()
        self.order.append(f"datasync {key}")
        return await super().put_object(bucket, key, data)

    async def put_file(self, bucket, key, body, metadata) -> None:
        self.order.append(f"stop {key}")
        await super().put_file(bucket, key, body, metadata)


def volumes(*items: wire.Volume) -> list[wire.VolumeAssignment]:
    return [
        wire.VolumeAssignment(
            volume=v, endpoint="http://s3.test", region="r", access_key="A", secret_key="S"
        )
        for v in items
    ]


class Rig:
    def __init__(self, scheduler: FakeScheduler, agent: Agent, store: GatedStore) -> None:
        self.scheduler, self.agent, self.store = scheduler, agent, store

    def assign(self, **overrides) -> None:
        fields = dict(state=S.STARTING, volumes=volumes(RW, RO))
        fields.update(overrides)
        self.scheduler.assignments = [assignment(**fields)]
        self.scheduler.bump()

    def volume_dir(self, index: int = 0) -> Path:
        return Path(self.agent.volumes.volume_dir("nb1", index))

    def states(self) -> list[S]:
        return [t.state for t in self.scheduler.transitions if t.notebook == "nb1"]

    async def datasync(
        self, body: dict | bytes, *, signed: bool = True, read: bool = True
    ) -> tuple[int, list]:
        """POST the datasync to the agent as the scheduler does; ``(status, events)``."""
        path = "/v1/notebooks/nb1/datasync"
        data = body if isinstance(body, bytes) else msgspec.json.encode(body)
        headers = {"Content-Type": "application/json"}
        if signed:
            headers.update(sign(SECRET, "h1", "POST", path, data, now=time.time()))
        async with aiohttp.ClientSession() as session:
            async with session.post(self.agent.agent_url + path, data=data, headers=headers) as r:
                if r.status != 200:
                    return r.status, [await r.json()]
                if not read:
                    first = await r.content.readline()
                    return r.status, [msgspec.json.decode(first, type=wire.DatasyncEvent)]
                events = [
                    msgspec.json.decode(line, type=wire.DatasyncEvent) async for line in r.content
                ]
                return r.status, events


def ask(direction: str = "push", *items: wire.Volume, generation: int = 1) -> dict:
    return {
        "generation": generation,
        "direction": direction,
        "volumes": [msgspec.to_builtins(v) for v in (items or (RW,))],
    }


@pytest.fixture
async def rig(tmp_path: Path):
    scheduler, server = await fake_scheduler()
    store = GatedStore()
    put(store, "set/a.txt", b"alpha")
    put(store, "models/w.bin", b"weights")
    config = agent_config(tmp_path, url_of(server))
    agent = build_agent(
        config,
        host_id="h1",
        secret=SECRET,
        runtime=(runtime := FakeRuntime()),
        inventory=FakeInventory(["NVIDIA H100 80GB HBM3"]),
        store=FakeObjectStore(),
        volumes=VolumeSync(config.volumes_dir, store_factory=lambda _: store),
        probe=runtime.probe,
    )
    await agent.start()
    r = Rig(scheduler, agent, store)
    r.assign()
    await eventually("RUNNING", lambda: S.RUNNING in r.states())
    r.assign(state=S.RUNNING)
    yield r
    await agent.stop()
    await server.close()


async def test_push_streams_progress_then_the_result_and_shows_it_on_the_notebook(rig) -> None:
    (rig.volume_dir() / "b.txt").write_bytes(b"beta")
    rig.store.gate = asyncio.Event()
    running = asyncio.create_task(rig.datasync(ask("push")))
    await eventually(
        "the scheduler shown the datasync's progress",
        lambda: any(
            p.progress is not None and p.progress.detail.startswith("datasync")
            for p in rig.scheduler.progress
        ),
    )
    rig.store.gate.set()
    status, events = await running
    assert status == 200
    *progress, result = events
    assert progress and all(isinstance(e, wire.DatasyncProgress) for e in progress)
    assert progress[0].progress.phase == "volumes-push"
    assert progress[0].progress.detail == "datasync datasets@lab/set:/mnt/data"
    assert isinstance(result, wire.DatasyncResult) and result.ok, result
    assert [(v.volume, v.files, v.bytes, v.unchanged) for v in result.volumes] == [
        ("datasets@lab/set:/mnt/data:rw", 1, 4, 1)
    ]
    assert rig.store.objects[(BUCKET, "set/b.txt")][0] == b"beta"
    await eventually("the progress cleared", lambda: rig.scheduler.progress[-1].progress is None)


async def test_pull_brings_a_new_object_into_a_ro_volume(rig) -> None:
    put(rig.store, "models/v2.bin", b"weights 2")
    status, events = await rig.datasync(ask("pull", RO))
    assert status == 200 and events[-1].ok
    assert (rig.volume_dir(1) / "v2.bin").read_bytes() == b"weights 2"


async def test_refusals_name_what_is_wrong(rig) -> None:
    status, [body] = await rig.datasync(ask("push", RO))
    assert status == 400 and "read-only" in body["message"]
    status, [body] = await rig.datasync(ask("push", generation=7))
    assert status == 409 and body["detail"]["state"] == "RUNNING"
    other = wire.Volume(BUCKET, "lab", "/mnt/other", "x", "rw")
    status, [body] = await rig.datasync(ask("push", other))
    assert status == 409 and "has no volume" in body["message"]
    status, [body] = await rig.datasync(ask("push"), signed=False)
    assert status == 401
    status, [body] = await rig.datasync(b'{"generation": 1, "direction": "sideways"}')
    assert status == 400 and "direction" in body["message"]


async def test_one_at_a_time_and_a_stop_pushes_after_it_losing_nothing(rig) -> None:
    root = rig.volume_dir()
    (root / "b.txt").write_bytes(b"beta")
    age(root / "b.txt")  # not written in the last instants: trusted as read
    rig.store.gate = asyncio.Event()
    first = asyncio.create_task(rig.datasync(ask("push")))
    await eventually("the datasync uploading", lambda: rig.agent.datasyncs.runs.get("nb1"))
    await asyncio.sleep(0.1)
    status, [body] = await rig.datasync(ask("pull"))
    assert status == 409 and "already running" in body["message"]

    # The notebook writes once more, then it is stopped while the datasync still runs.
    (root / "late.txt").write_bytes(b"written last")
    rig.assign(desired="stopped", state=S.STOPPING)
    await asyncio.sleep(0.5)  # many reconcile ticks: the stop waits for the datasync
    assert S.STOPPED not in rig.states()
    assert not [o for o in rig.store.order if o.startswith("stop")]
    rig.store.gate.set()
    status, events = await first
    assert status == 200 and events[-1].ok
    await eventually("STOPPED", lambda: S.STOPPED in rig.states())
    assert rig.store.objects[(BUCKET, "set/late.txt")][0] == b"written last"
    assert rig.store.objects[(BUCKET, "set/b.txt")][0] == b"beta"
    # b.txt went up once, with the datasync; the stop moved only what came after.
    assert rig.store.order == ["datasync set/b.txt", "stop set/late.txt"]
    status, [body] = await rig.datasync(ask("push"))
    assert status == 409 and body["detail"]["state"] in ("STOPPING", "STOPPED")


async def test_the_datasync_goes_on_when_its_caller_leaves(rig) -> None:
    (rig.volume_dir() / "b.txt").write_bytes(b"beta")
    rig.store.gate = asyncio.Event()
    status, [first] = await rig.datasync(ask("push"), read=False)
    assert status == 200 and isinstance(first, wire.DatasyncProgress)
    rig.store.gate.set()
    await eventually(
        "the datasync finishing alone",
        lambda: (run := rig.agent.datasyncs.runs["nb1"]).result is not None and run.result.ok,
    )
    assert rig.store.objects[(BUCKET, "set/b.txt")][0] == b"beta"


async def test_a_delete_ends_the_datasync(rig) -> None:
    for i in range(20):
        (rig.volume_dir() / f"f{i}.txt").write_bytes(b"x")
    rig.store.gate = asyncio.Event()
    task = asyncio.create_task(rig.datasync(ask("push")))
    await eventually("the datasync uploading", lambda: rig.agent.datasyncs.runs.get("nb1"))
    rig.assign(desired="deleted", state=S.DELETING)
    await asyncio.sleep(0.2)
    rig.store.gate.set()
    status, events = await task
    assert status == 200 and not events[-1].ok
    assert "being deleted" in events[-1].error
    await eventually("DELETED", lambda: S.DELETED in rig.states())
    assert not rig.volume_dir().exists()
