"""The agent's loops and HTTP server against a fake scheduler on a real loopback port."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from agent.app import Agent, Loop, build_agent
from agent.client import Backoff, SchedulerClient, SchedulerUnavailable
from agent.runtime import host_image
from common.auth import sign
from common.config import AgentConfig
from common.states import NotebookState as S
from common.wire import Assignment, UsageBatch
from tests.fakes.inventory import FakeClock, FakeInventory
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


def agent_config(tmp_path: Path, scheduler_url: str) -> AgentConfig:
    return AgentConfig(
        host_id="h1",
        scheduler_url=scheduler_url,
        listen="127.0.0.1:0",
        workspaces_dir=str(tmp_path / "ws"),
        scratch_dir=str(tmp_path / "scratch"),
        state_dir=str(tmp_path / "state"),
        volumes_dir=str(tmp_path / "volumes"),
        reconcile_interval_s=0.05,
        usage_interval_s=0.05,
        retention_last=3,
        retention_daily=2,
        flavor="h100-1-gpu",
        labels={"rack": "r7", "zone": "eu-1"},
    )


def agent_for(config: AgentConfig, runtime: FakeRuntime, clock=time.time) -> Agent:
    return build_agent(
        config,
        host_id="h1",
        secret=SECRET,
        runtime=runtime,
        inventory=FakeInventory(["NVIDIA H100 80GB HBM3"]),
        store=FakeObjectStore(),
        probe=runtime.probe,
        clock=clock,
    )


async def fake_scheduler(heartbeat_interval_s: float = 0.1) -> tuple[FakeScheduler, TestServer]:
    scheduler = FakeScheduler({"h1": SECRET}, heartbeat_interval_s=heartbeat_interval_s)
    server = TestServer(scheduler.app(), host="127.0.0.1")
    # Closed under a live agent in some tests: do not wait out its long-poll.
    await server.start_server(shutdown_timeout=0.5)
    return scheduler, server


def url_of(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


@pytest.fixture
async def setup(tmp_path: Path):
    scheduler, server = await fake_scheduler()
    runtime = FakeRuntime()
    agent = agent_for(agent_config(tmp_path, url_of(server)), runtime)
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
    assert reg.flavor == "h100-1-gpu" and reg.labels == {"rack": "r7", "zone": "eu-1"}
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


async def test_heartbeats_carry_disk_space_and_workspace_disk_use(setup) -> None:
    scheduler, agent, runtime = setup
    await eventually("a heartbeat", lambda: scheduler.heartbeats)
    disk = scheduler.heartbeats[-1][1].disk
    assert disk is not None and 0 < disk.free_bytes <= disk.total_bytes
    scheduler.assignments = [assignment()]
    scheduler.bump()
    await eventually(
        "RUNNING report", lambda: any(t.state == S.RUNNING for t in scheduler.transitions)
    )
    (Path(agent.config.workspaces_dir) / "nb1" / "data").write_bytes(b"x" * 100_000)
    await agent.disk_tick()  # its loop runs every disk_usage_interval_s (a minute)
    measured = agent.workspace_meter.get("nb1")
    assert measured is not None and measured.used_bytes >= 100_000

    def carried() -> bool:
        return any(measured in hb.workspaces for _, hb in scheduler.heartbeats)

    await eventually("a heartbeat carrying the workspace disk use", carried)
    # Acknowledged: later heartbeats carry it no more, until it is measured again.
    sent = len(scheduler.heartbeats)
    await eventually("two more heartbeats", lambda: len(scheduler.heartbeats) >= sent + 2)
    assert scheduler.heartbeats[-1][1].workspaces == []


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


async def test_heartbeat_interval_is_the_one_the_scheduler_gives(tmp_path: Path) -> None:
    scheduler, server = await fake_scheduler(heartbeat_interval_s=7.5)
    agent = agent_for(agent_config(tmp_path, url_of(server)), FakeRuntime())
    heartbeat = next(loop for loop in agent.loops if loop.name == "heartbeat")
    try:
        await agent.heartbeat_tick()  # registers
        assert agent.registered.is_set() and heartbeat.interval() == 7.5
        # The fleet grew: the scheduler asks for fewer heartbeats.
        scheduler.heartbeat_interval_s = 40.0
        await agent.heartbeat_tick()
        assert len(scheduler.heartbeats) == 1 and heartbeat.interval() == 40.0
        # Forgotten: the reply's interval still applies, and the agent registers again.
        scheduler.forget("h1")
        scheduler.heartbeat_interval_s = 12.0
        await agent.heartbeat_tick()
        assert len(scheduler.registrations) == 2 and heartbeat.interval() == 12.0
    finally:
        await agent.client.close()
        agent.outbox.close()
        await server.close()


async def test_reports_made_while_the_scheduler_is_down_are_sent_after_an_agent_restart(
    tmp_path: Path,
) -> None:
    scheduler, server = await fake_scheduler()
    runtime = FakeRuntime()
    clock = FakeClock()
    agent = agent_for(agent_config(tmp_path, url_of(server)), runtime, clock)
    await agent.start()
    try:
        scheduler.assignments = [assignment()]
        scheduler.bump()
        await eventually(
            "RUNNING report", lambda: any(t.state == S.RUNNING for t in scheduler.transitions)
        )
        await eventually("usage report", lambda: scheduler.usage)
        await server.close()  # the scheduler goes away
        clock.advance(150)  # 3 commenced minutes, none of them acknowledged beyond the first
        runtime.exit("nb1", 3)
        spool = tmp_path / "state" / "outbox.json"
        # On disk while the agent runs, as a kill -9 would find it (not only at a clean stop).
        await eventually(
            "FAILED in the spool",
            lambda: spool.exists() and b'"FAILED"' in spool.read_bytes(),
        )
    finally:
        await agent.stop()

    # A new scheduler process (new port, same database in real life) and a new agent process.
    assert max(u.billed_minutes for u in scheduler.usage) <= 1
    scheduler, server = await fake_scheduler()
    restarted = agent_for(agent_config(tmp_path, url_of(server)), runtime, clock)
    await restarted.start()
    try:
        await eventually(
            "FAILED delivered", lambda: any(t.state == S.FAILED for t in scheduler.transitions)
        )
        failed = next(t for t in scheduler.transitions if t.state == S.FAILED)
        assert (failed.notebook, failed.reason) == ("nb1", "container exited with code 3")
        await eventually("final usage delivered", lambda: scheduler.usage)
        assert [(u.notebook, u.generation, u.billed_minutes) for u in scheduler.usage] == [
            ("nb1", 1, 3)
        ]
    finally:
        await restarted.stop()
        await server.close()


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


async def test_a_loop_retries_within_its_bound_however_long_the_backoff() -> None:
    attempts: list[float] = []

    async def failing() -> None:
        attempts.append(time.monotonic())
        raise RuntimeError("the scheduler is down")

    # A backoff of up to 100 s after the first failure; the bound is 0.05 s.
    loop = Loop(
        "heartbeat",
        failing,
        lambda: 1.0,
        backoff=Backoff(base=100, cap=100),
        retry_within=lambda: 0.05,
    )
    loop.start()
    try:
        await eventually("five attempts", lambda: len(attempts) >= 5, timeout_s=5)
    finally:
        await loop.stop()


async def test_a_woken_loop_runs_at_once_but_a_failing_one_keeps_its_backoff() -> None:
    ticks: list[float] = []
    failing = False

    async def tick() -> None:
        ticks.append(time.monotonic())
        if failing:
            raise RuntimeError("the scheduler is down")

    wake = asyncio.Event()
    loop = Loop("report", tick, lambda: 60.0, backoff=Backoff(base=60, cap=60), wake=wake)
    loop.start()
    try:
        await eventually("the first tick", lambda: len(ticks) == 1, timeout_s=5)
        wake.set()  # a transition was queued: sent now, not in 60 s
        await eventually("a woken tick", lambda: len(ticks) == 2, timeout_s=5)
        failing = True
        wake.set()
        await eventually("a failing tick", lambda: len(ticks) == 3, timeout_s=5)
        wake.set()  # a failure's backoff is not cut short by more reports
        await asyncio.sleep(0.2)
        assert len(ticks) == 3
    finally:
        await loop.stop()


async def test_an_agent_retries_a_failed_heartbeat_within_one_heartbeat_interval(
    tmp_path: Path,
) -> None:
    """A scheduler back from an outage waits one TTL (a few intervals) for each host before it
    declares it lost: the heartbeat must be tried again within an interval, whatever the
    backoff says."""
    agent = agent_for(agent_config(tmp_path, "http://127.0.0.1:9"), FakeRuntime())
    try:
        [heartbeat] = [loop for loop in agent.loops if loop.name == "heartbeat"]
        agent.contact.heartbeat_interval_s = 7.0
        assert heartbeat.retry_within is not None and heartbeat.retry_within() == 7.0
    finally:
        await agent.client.close()


async def test_registers_the_hosts_catalog_images_and_again_when_they_change(
    tmp_path: Path,
) -> None:
    scheduler, server = await fake_scheduler()
    runtime = FakeRuntime()
    pytorch = host_image(
        ["nbfleet/pytorch:2.13"],
        {
            "org.nbfleet.framework": "pytorch",
            "org.nbfleet.framework.version": "2.13",
            "org.nbfleet.contents.python": "3.11.2",
            "org.nbfleet.contents.torch": "2.13.0+cpu",
            "maintainer": "not a content label",
        },
    )
    assert (pytorch.framework, pytorch.version, pytorch.contents) == (
        "pytorch",
        "2.13",
        {"python": "3.11.2", "torch": "2.13.0+cpu"},
    )
    runtime.images = [pytorch]
    agent = agent_for(agent_config(tmp_path, url_of(server)), runtime)
    try:
        await agent.heartbeat_tick()  # registers
        [(_, first)] = scheduler.registrations
        assert first.images == [pytorch]
        await agent.disk_tick()  # nothing changed: no registration
        assert len(scheduler.registrations) == 1

        # The operator builds another image: the next look registers it.
        tf = host_image(["nbfleet/tensorflow:2.21"], {"org.nbfleet.framework": "tensorflow"})
        runtime.images = [pytorch, tf]
        await agent.disk_tick()
        assert [reg.images for _, reg in scheduler.registrations] == [[pytorch], [pytorch, tf]]

        # Docker not answering is no reason to tell the scheduler the images are gone.
        async def broken() -> list:
            raise OSError("docker.sock: connection refused")

        runtime.framework_images = broken  # type: ignore[method-assign]
        await agent.disk_tick()
        scheduler.forget("h1")
        await agent.heartbeat_tick()  # forgotten: registers again, with the last list
        assert scheduler.registrations[-1][1].images == [pytorch, tf]
    finally:
        await agent.client.close()
        agent.outbox.close()
        await server.close()


async def test_new_labels_in_an_assignment_make_the_proxy_ask_about_tokens_again(
    tmp_path: Path,
) -> None:
    scheduler, server = await fake_scheduler()
    scheduler.tokens = {"nbf_t": "operator"}
    agent = agent_for(agent_config(tmp_path, url_of(server)), FakeRuntime())
    try:
        await agent.heartbeat_tick()  # registers
        scheduler.assignments = [assignment(state=S.RUNNING, labels={"team": "cv"})]
        scheduler.bump()
        await agent.assignments_tick()
        for _ in range(2):
            assert (await agent.authorizer.check("nb1", "nbf_t")).allowed
        assert len(scheduler.authorizations) == 1  # the second was cached
        # Another assignment change (not the labels) keeps what was cached.
        scheduler.assignments = [assignment(state=S.RUNNING, labels={"team": "cv"}, cpu=2)]
        scheduler.bump()
        await agent.assignments_tick()
        await agent.authorizer.check("nb1", "nbf_t")
        assert len(scheduler.authorizations) == 1
        scheduler.assignments = [assignment(state=S.RUNNING, labels={"team": "nlp"}, cpu=2)]
        scheduler.bump()
        await agent.assignments_tick()
        await agent.authorizer.check("nb1", "nbf_t")
        assert len(scheduler.authorizations) == 2
    finally:
        await agent.stop()
        await server.close()
