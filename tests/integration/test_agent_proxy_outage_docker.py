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

from agent.proxy_access import ALLOWED_TTL_S, Authorizer
from tests.fakes.inventory import FakeClock
from tests.integration.conftest import new_notebook_id
from tests.integration.test_agent_proxy_docker import (
    TOKEN,
    Stack,
    remove_networks,
    scheduler_and_agent,
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
    scheduler, server, agent = await scheduler_and_agent(tmp_path, host_id)
    assert server.port is not None
    # The authorizer the agent builds, on a clock the test moves.
    clock = FakeClock(now=5000.0)
    agent.proxy.authorizer = Authorizer(
        agent.client.authorize, clock=clock, grace_s=agent.config.authorize_grace_s
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
