"""The agent's loops and HTTP server against a fake scheduler on a real loopback port."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from agent.app import build_agent
from agent.client import Backoff, SchedulerClient, SchedulerUnavailable
from common.auth import sign
from common.config import AgentConfig
from common.states import NotebookState as S
from common.wire import Assignment, UsageBatch
from tests.fakes.inventory import FakeInventory
from tests.fakes.objectstore import FakeObjectStore
from tests.fakes.runtime import FakeRuntime
from tests.fakes.scheduler import FakeScheduler

SECRET = b"s3cret-for-h1"


async def eventually(what: str, check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
async def setup(tmp_path: Path):
    scheduler = FakeScheduler({"h1": SECRET}, heartbeat_interval_s=0.1)
    server = TestServer(scheduler.app(), host="127.0.0.1")
    await server.start_server()
    config = AgentConfig(
        host_id="h1",
        scheduler_url=str(server.make_url("")).rstrip("/"),
        listen="127.0.0.1:0",
        workspaces_dir=str(tmp_path / "ws"),
        scratch_dir=str(tmp_path / "scratch"),
        state_dir=str(tmp_path / "state"),
        volumes_dir=str(tmp_path / "volumes"),
        reconcile_interval_s=0.05,
        usage_interval_s=0.05,
        retention_last=3,
        retention_daily=2,
    )
    runtime = FakeRuntime()
    agent = build_agent(
        config,
        host_id="h1",
        secret=SECRET,
        runtime=runtime,
        inventory=FakeInventory(["NVIDIA H100 80GB HBM3"]),
        store=FakeObjectStore(),
        probe=runtime.probe,
    )
    await agent.start()
    yield scheduler, agent, runtime
    await agent.stop()
    await server.close()


def assignment(**overrides) -> Assignment:
    fields = dict(
        notebook="nb1",
        project="p",
        generation=1,
        desired="running",
        state=S.STARTING,
        image="img",
        command=["x"],
        editor_port=8888,
        url_path="/",
        gpus=["GPU-fake-0"],
        cpu=1,
        memory_mb=512,
        env={},
        initialized=False,
        access_token="t",
    )
    fields.update(overrides)
    return Assignment(**fields)


async def test_registers_runs_assignment_and_reports(setup) -> None:
    scheduler, agent, runtime = setup
    await eventually("registration", lambda: scheduler.registrations)
    host, reg = scheduler.registrations[0]
    assert host == "h1" and [g.uuid for g in reg.gpus] == ["GPU-fake-0"]
    assert reg.agent_url == agent.agent_url
    scheduler.assignments = [assignment()]
    scheduler.bump()
    await eventually(
        "RUNNING report", lambda: any(t.state == S.RUNNING for t in scheduler.transitions)
    )
    await eventually("usage report", lambda: scheduler.usage)
    assert scheduler.usage[-1].notebook == "nb1"
    await eventually(
        "heartbeat listing the container",
        lambda: any(hb.containers == ["nb1"] for _, hb in scheduler.heartbeats),
    )


async def test_workspace_settings_come_from_the_agent_config(setup) -> None:
    _, agent, _ = setup
    assert (agent.workspaces.retention_last, agent.workspaces.retention_daily) == (3, 2)
    # The local index lives in the agent's state dir, never inside a workspace.
    assert agent.workspaces.index_dir.startswith(agent.config.state_dir)


async def test_registers_again_when_forgotten(setup) -> None:
    scheduler, agent, _ = setup
    await eventually("registration", lambda: scheduler.registrations)
    scheduler.forget("h1")
    await eventually("second registration", lambda: len(scheduler.registrations) >= 2)


async def test_logs_endpoint_needs_the_schedulers_signature(setup) -> None:
    scheduler, agent, runtime = setup
    scheduler.assignments = [assignment()]
    scheduler.bump()
    await eventually("container", lambda: "nb1" in runtime.containers)
    runtime.logs_text["nb1"] = "one\ntwo\nthree\n"
    path = "/v1/notebooks/nb1/logs?tail=2"
    async with aiohttp.ClientSession() as http:
        async with http.get(agent.agent_url + "/health") as response:
            assert response.status == 200
        async with http.get(agent.agent_url + path) as response:
            assert response.status == 401
        headers = sign(b"wrong", "h1", "GET", path)
        async with http.get(agent.agent_url + path, headers=headers) as response:
            assert response.status == 401
        headers = sign(SECRET, "other-host", "GET", path)
        async with http.get(agent.agent_url + path, headers=headers) as response:
            assert response.status == 401
        headers = sign(SECRET, "h1", "GET", path)
        async with http.get(agent.agent_url + path, headers=headers) as response:
            assert response.status == 200
            assert await response.text() == "two\nthree\n"
        async with http.get(agent.agent_url + path, headers=headers) as response:
            assert response.status == 401  # replayed nonce
        missing = "/v1/notebooks/nope/logs"
        headers = sign(SECRET, "h1", "GET", missing)
        async with http.get(agent.agent_url + missing, headers=headers) as response:
            assert response.status == 404
            assert (await response.json())["code"] == "not_found"


async def test_client_raises_unavailable_when_scheduler_is_down() -> None:
    client = SchedulerClient("http://127.0.0.1:9", "h1", SECRET, timeout_s=2)
    with pytest.raises(SchedulerUnavailable):
        await client.usage(UsageBatch(items=[]))
    await client.close()


def test_backoff_is_jittered_and_capped() -> None:
    backoff = Backoff(base=1, cap=8)
    delays = [backoff.next_delay() for _ in range(10)]
    assert all(0 < d <= 8 for d in delays)
    backoff.reset()
    assert backoff.next_delay() <= 1
