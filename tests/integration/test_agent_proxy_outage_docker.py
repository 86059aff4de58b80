"""An editor in a real container keeps answering through the agent's proxy while the scheduler
is down: real dockerd (the tiny image's busybox httpd is the editor), the whole agent, and a fake
scheduler on a real port that is stopped and started again on the same port. Only the
authorizer's clock is a fake, so the cache time and the grace window take no wall-clock time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from agent.app import build_agent
from agent.docker_runtime import DockerRuntime
from agent.proxy_access import ALLOWED_TTL_S, Authorizer
from common.config import AgentConfig
from tests.fakes.inventory import FakeClock, FakeInventory
from tests.fakes.objectstore import FakeObjectStore
from tests.fakes.scheduler import FakeScheduler
from tests.integration.conftest import new_notebook_id
from tests.integration.test_agent_proxy_docker import (
    SECRET,
    TOKEN,
    Stack,
    remove_networks,
    status_of,
)


@dataclass
class Outage:
    stack: Stack
    clock: FakeClock
    server: TestServer
    port: int

    async def stop_scheduler(self) -> None:
        await self.server.close()

    async def start_scheduler(self) -> None:
        self.server = TestServer(self.stack.scheduler.app(), host="127.0.0.1", port=self.port)
        await self.server.start_server(shutdown_timeout=0.5)


@pytest.fixture
async def outage(tmp_path: Path, tiny_image: str, host_id: str) -> AsyncIterator[Outage]:
    scheduler = FakeScheduler({host_id: SECRET}, heartbeat_interval_s=0.2)
    scheduler.tokens[TOKEN] = "operator"
    server = TestServer(scheduler.app(), host="127.0.0.1")
    await server.start_server(shutdown_timeout=0.5)
    assert server.port is not None
    config = AgentConfig(
        host_id=host_id,
        scheduler_url=str(server.make_url("")).rstrip("/"),
        listen="127.0.0.1:0",
        public_host="127.0.0.1",
        workspaces_dir=str(tmp_path / "ws"),
        scratch_dir=str(tmp_path / "scratch"),
        state_dir=str(tmp_path / "state"),
        volumes_dir=str(tmp_path / "volumes"),
        reconcile_interval_s=0.2,
        usage_interval_s=5,
        start_timeout_s=60,
    )
    agent = build_agent(
        config,
        host_id=host_id,
        secret=SECRET,
        runtime=DockerRuntime(host_id=host_id),
        inventory=FakeInventory(),
        store=FakeObjectStore(),
    )
    # The authorizer the agent builds, on a clock the test moves.
    clock = FakeClock(now=5000.0)
    agent.proxy.authorizer = Authorizer(
        agent.client.authorize, clock=clock, grace_s=config.authorize_grace_s
    )
    await agent.start()
    http = aiohttp.ClientSession()
    state = Outage(Stack(agent, scheduler, http, tiny_image), clock, server, server.port)
    try:
        yield state
    finally:
        await http.close()
        scheduler.assignments = []
        await agent.stop()
        await state.server.close()
        remove_networks(host_id)


async def test_an_editor_in_a_container_is_served_through_a_scheduler_outage(
    outage: Outage, notebook_ids: list[str]
) -> None:
    stack = outage.stack
    notebook = new_notebook_id(notebook_ids)
    stack.assign(notebook)
    url = await stack.running(notebook)
    workspace = Path(stack.agent.workspaces.workspace_dir(notebook))
    (workspace / "hello.txt").write_text("served through the outage\n")
    (workspace / "hello.txt").chmod(0o644)
    served = (200, "served through the outage\n")
    assert await status_of(stack.http, url + "hello.txt", Authorization=f"Bearer {TOKEN}") == served

    await outage.stop_scheduler()
    outage.clock.advance(ALLOWED_TTL_S + 1)
    assert await status_of(stack.http, url + "hello.txt", Authorization=f"Bearer {TOKEN}") == served
    status, _ = await status_of(stack.http, url + "hello.txt", Authorization="Bearer nbf_unseen")
    assert status == 503

    # Back, with the token deleted meanwhile: refused within the cache time.
    stack.scheduler.tokens.pop(TOKEN)
    await outage.start_scheduler()
    outage.clock.advance(ALLOWED_TTL_S)
    status, text = await status_of(stack.http, url + "hello.txt", Authorization=f"Bearer {TOKEN}")
    assert status == 403 and "unknown or deleted token" in text

    # Allowed again, then down again: admitted until the window, counted from the scheduler's
    # last confirmation, is over; 503 from then on.
    stack.scheduler.tokens[TOKEN] = "operator"
    outage.clock.advance(ALLOWED_TTL_S)
    assert await status_of(stack.http, url + "hello.txt", Authorization=f"Bearer {TOKEN}") == served
    reconfirmed_at = outage.clock()
    await outage.stop_scheduler()
    outage.clock.now = reconfirmed_at + stack.agent.config.authorize_grace_s - 1
    assert await status_of(stack.http, url + "hello.txt", Authorization=f"Bearer {TOKEN}") == served
    outage.clock.now = reconfirmed_at + stack.agent.config.authorize_grace_s
    status, _ = await status_of(stack.http, url + "hello.txt", Authorization=f"Bearer {TOKEN}")
    assert status == 503
