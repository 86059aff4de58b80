"""``POST /v1/notebooks/{id}/datasync`` through the scheduler: who may, when, which volumes,
and the stream relayed from the agent. The agent side is the real ``agent.datasync.Datasyncs``
(over real volume dirs and an in-memory store) behind a signed HTTP server on a real port,
fed the assignment the scheduler itself hands out."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from agent.datasync import Datasyncs
from agent.report import Outbox
from agent.volumes import VolumeSync
from common import wire
from common.auth import Verifier
from common.errors import ApiError
from common.states import NotebookState as S
from tests.component.conftest import Harness, Tokens
from tests.fakes.scheduler import FakeSink
from tests.unit.test_agent_datasync import put
from tests.unit.test_agent_datasync_runs import GatedStore

RW = {"container": "datasets", "alias": "lab", "prefix": "set", "mount_path": "/mnt/data",
      "permission": "rw"}  # fmt: skip
RO = {"container": "datasets", "alias": "lab", "prefix": "models", "mount_path": "/mnt/models",
      "permission": "ro"}  # fmt: skip
OTHER = {"container": "archive", "alias": "cold", "prefix": "", "mount_path": "/mnt/cold",
         "permission": "rwd"}  # fmt: skip


@dataclass
class DatasyncAgent:
    """The agent's datasync endpoint: its signature checked as the real agent does, then the
    real :class:`Datasyncs` over what the scheduler assigned. ``break_stream``: the next
    stream is cut after its first line (an agent that dies mid-datasync)."""

    harness: Harness
    root: Path
    host_id: str = "h1"
    store: GatedStore = field(default_factory=GatedStore)
    assignments: dict[str, wire.Assignment] = field(default_factory=dict)
    asked: list[wire.DatasyncStart] = field(default_factory=list)
    break_stream: bool = False
    server: TestServer | None = None

    def __post_init__(self) -> None:
        self.volumes = VolumeSync(str(self.root / "volumes"), store_factory=lambda _: self.store)
        self.datasyncs = Datasyncs(
            self.volumes, Outbox(FakeSink()), self.assignments.get, lambda _: None
        )

    async def start(self) -> str:
        secret = self.harness.agent(self.host_id).secret
        verifier = Verifier(
            lambda h: secret if h == self.host_id else None, clock=self.harness.clock
        )

        async def handle(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            try:
                verifier.verify(request.method, request.raw_path, request.headers, body)
                ask = wire.decode(body, wire.DatasyncStart)
                self.asked.append(ask)
                if self.break_stream:
                    response = web.StreamResponse()
                    response.enable_chunked_encoding()
                    await response.prepare(request)
                    await response.write(b'{"event":"progress","progress":{"phase":"volumes-')
                    assert request.transport is not None
                    request.transport.close()
                    return response
                return await self.datasyncs.serve(request, request.match_info["id"], ask)
            except ApiError as exc:
                return web.Response(
                    status=exc.status,
                    body=wire.encode(wire.ErrorBody(exc.code, exc.message, dict(exc.detail))),
                    content_type="application/json",
                )

        app = web.Application()
        app.router.add_post("/v1/notebooks/{id}/datasync", handle)
        self.server = TestServer(app)
        await self.server.start_server()
        return str(self.server.make_url("/"))

    async def running(self, notebook: str) -> None:
        """Take the scheduler's assignment of ``notebook`` and pull its volumes, as a start
        does; then the scheduler hears RUNNING."""
        host = self.harness.agent(self.host_id)
        items = (await host.assignments())["items"]
        assigned = msgspec.convert(
            next(i for i in items if i["notebook"] == notebook), wire.Assignment
        )
        await self.volumes.pull(notebook, assigned.volumes)
        await host.report(notebook, "RUNNING")
        self.assignments[notebook] = msgspec.structs.replace(assigned, state=S.RUNNING)


@pytest.fixture
async def agent(harness: Harness, project: Tokens, tmp_path: Path) -> AsyncIterator[DatasyncAgent]:
    fake = DatasyncAgent(harness, tmp_path)
    put(fake.store, "set/a.txt", b"alpha")
    put(fake.store, "models/w.bin", b"weights")
    url = await fake.start()
    await harness.agent("h1").register(gpus=4, agent_url=url)
    for alias in ("lab", "cold"):
        created = await harness.call(
            "POST",
            "/v1/datastores",
            token=project.operator,
            body={
                "alias": alias,
                "endpoint": "http://s3.test",
                "access_key": "A",
                "secret_key": "S",
            },  # fmt: skip
        )
        assert created.status == 201, created.text
    try:
        yield fake
    finally:
        assert fake.server is not None
        await fake.server.close()
        await fake.datasyncs.close()


async def stream(harness: Harness, notebook: str, token: str, body: dict) -> tuple[int, list]:
    """The reply: ``(status, [events])``, or ``(status, [error body])``."""
    assert harness.client is not None
    async with harness.client.post(
        f"/v1/notebooks/{notebook}/datasync",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    ) as resp:
        text = await resp.text()
        if resp.status != 200:
            return resp.status, [json.loads(text)]
        assert resp.headers["Content-Type"].startswith("application/x-ndjson")
        return resp.status, [
            msgspec.json.decode(line, type=wire.DatasyncEvent) for line in text.splitlines() if line
        ]


async def running_notebook(project: Tokens, agent: DatasyncAgent, *volumes: dict) -> str:
    nb = (await project.run(volumes=list(volumes))).json["id"]
    await agent.running(nb)
    return nb


async def test_push_relays_progress_and_result_and_names_the_ro_volume_left_out(
    harness: Harness, project: Tokens, agent: DatasyncAgent
) -> None:
    nb = await running_notebook(project, agent, RW, RO)
    (Path(agent.volumes.volume_dir(nb, 0)) / "b.txt").write_bytes(b"beta")
    status, events = await stream(harness, nb, project.operator, {})
    assert status == 200
    *progress, result = events
    assert progress and progress[0].progress.phase == "volumes-push"
    assert result.ok and result.notebook == nb and result.direction == "push"
    assert [(v.volume, v.files) for v in result.volumes] == [
        ("datasets@lab/set:/mnt/data:rw", 1),
        ("datasets@lab/models:/mnt/models:ro", 0),
    ]
    assert result.volumes[1].details == ["read-only (ro): never pushed"]
    # The agent was asked for the rw volume of this run only.
    [asked] = agent.asked
    assert asked.generation == 1 and [v.mount_path for v in asked.volumes] == ["/mnt/data"]
    assert agent.store.objects[("datasets", "set/b.txt")][0] == b"beta"


async def test_pull_by_mount_path_or_alias(
    harness: Harness, project: Tokens, agent: DatasyncAgent
) -> None:
    nb = await running_notebook(project, agent, RW, RO, OTHER)
    put(agent.store, "models/v2.bin", b"weights 2")
    status, events = await stream(
        harness, nb, project.operator, {"volume": "/mnt/models/", "direction": "pull"}
    )
    assert status == 200 and events[-1].ok, events[-1]
    assert (Path(agent.volumes.volume_dir(nb, 1)) / "v2.bin").read_bytes() == b"weights 2"
    status, events = await stream(
        harness, nb, project.operator, {"volume": "lab", "direction": "pull"}
    )
    assert status == 200 and [v.volume for v in events[-1].volumes] == [
        "datasets@lab/set:/mnt/data:rw",
        "datasets@lab/models:/mnt/models:ro",
    ]
    status, events = await stream(harness, nb, project.operator, {"volume": "archive@cold"})
    assert status == 200 and [v.volume for v in events[-1].volumes] == [
        "archive@cold:/mnt/cold:rwd"
    ]


async def test_refusals_name_the_state_the_field_or_the_role(
    harness: Harness, project: Tokens, agent: DatasyncAgent
) -> None:
    nb = await running_notebook(project, agent, RW, RO)

    status, [body] = await stream(harness, nb, project.read, {})
    assert status == 403 and body["code"] == "forbidden" and "operator" in body["message"]

    status, [body] = await stream(harness, nb, project.operator, {"volume": "nope"})
    assert status == 400 and body["detail"]["field"] == "$.volume"
    assert "nope" in body["message"] and "datasets@lab/set:/mnt/data:rw" in body["message"]

    status, [body] = await stream(harness, nb, project.operator, {"volume": "/mnt/models"})
    assert status == 400 and body["detail"]["field"] == "$.volume"
    assert "ro volumes are never pushed" in body["message"]

    status, [body] = await stream(harness, nb, project.operator, {"direction": "sideways"})
    assert status == 400 and "direction" in body["message"]

    bare = await running_notebook(project, agent)
    status, [body] = await stream(harness, bare, project.operator, {})
    assert status == 400 and "has no volumes" in body["message"]

    only_ro = await running_notebook(project, agent, RO)
    status, [body] = await stream(harness, only_ro, project.operator, {})
    assert status == 400 and "no rw or rwd volume to push" in body["message"]

    other = await harness.project("beta")
    status, [body] = await stream(harness, nb, other.operator, {})
    assert status == 404

    stopped = await project.action(nb, "stop")
    assert stopped.status == 202
    status, [body] = await stream(harness, nb, project.operator, {})
    assert status == 409 and body["detail"]["state"] == "STOPPING"
    assert "RUNNING" in body["message"]
    assert len(agent.asked) == 0  # nothing refused ever reached the agent


async def test_a_second_datasync_while_one_runs_is_409(
    harness: Harness, project: Tokens, agent: DatasyncAgent
) -> None:
    nb = await running_notebook(project, agent, RW)
    (Path(agent.volumes.volume_dir(nb, 0)) / "b.txt").write_bytes(b"beta")
    agent.store.gate = asyncio.Event()
    first = asyncio.create_task(stream(harness, nb, project.operator, {}))
    while nb not in agent.datasyncs.runs:
        await asyncio.sleep(0.01)
    status, [body] = await stream(harness, nb, project.operator, {"direction": "pull"})
    assert status == 409 and "already running" in body["message"]
    agent.store.gate.set()
    status, events = await first
    assert status == 200 and events[-1].ok


async def test_a_stream_the_agent_breaks_off_ends_with_a_result_saying_so(
    harness: Harness, project: Tokens, agent: DatasyncAgent
) -> None:
    nb = await running_notebook(project, agent, RW)
    agent.break_stream = True
    status, events = await stream(harness, nb, project.operator, {})
    assert status == 200
    [result] = events
    assert not result.ok and "broke off" in result.error and "notebook get" in result.error
