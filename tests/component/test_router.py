"""``nbfleet-router`` (router.app, router.routes) between a client and the agents, with a real
scheduler app behind a switch that can make it answer as a load balancer with no replica does
(HAProxy's 503 page), and a stand-in agent proxy on a real port.

While a scheduler answers, the router sends each notebook's URL where the scheduler says, and a
notebook that is not running gets the scheduler's own answer. While none answers, a notebook the
router served within ``outage_grace_s`` keeps working (HTTP and WebSocket); one it never served,
and any past the window, gets 503 saying why. A wrong router token is an operator's problem,
shown as such.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from router.app import create_app
from router.routes import Routes
from scheduler.secrets import ensure_router_token
from tests.component.conftest import Agent, Harness, Tokens
from tests.support.unanswering import PAGES

GRACE_S = 900.0


class RouterClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Switch:
    """The scheduler's address as the router knows it: a real server that passes requests on
    to the scheduler app, or answers as a load balancer with no replica does."""

    harness: Harness
    up: bool = True
    server: TestServer | None = None
    lookups: int = 0

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.server = TestServer(app)
        await self.server.start_server()
        return str(self.server.make_url("")).rstrip("/")

    async def _handle(self, request: web.Request) -> web.Response:
        if request.path.startswith("/v1/router/"):
            self.lookups += 1
        if not self.up:
            return web.Response(status=503, body=PAGES[503], content_type="text/html")
        assert self.harness.client is not None
        reply = await self.harness.client.request(
            request.method, request.path_qs, headers=request.headers, data=await request.read()
        )
        body = await reply.read()
        return web.Response(
            status=reply.status, body=body, content_type=reply.content_type or "text/plain"
        )


@dataclass
class StandInAgent:
    """The agent's proxy: records what reaches it; echoes WebSocket messages."""

    seen: list[tuple[str, str]] = field(default_factory=list)
    server: TestServer | None = None

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.server = TestServer(app)
        await self.server.start_server()
        return str(self.server.make_url("")).rstrip("/")

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.path_qs, request.headers.get("Authorization", "")))
        if request.headers.get("Upgrade", "").lower() == "websocket":
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            async for message in ws:
                await ws.send_str("echo " + message.data)
            return ws
        return web.Response(text=f"agent saw {request.path_qs}")


@dataclass
class Rig:
    harness: Harness
    project: Tokens
    host: Agent
    switch: Switch
    agent: StandInAgent
    clock: RouterClock
    client: TestClient

    async def running(self) -> str:
        notebook = (await self.project.run(gpu=1)).json["id"]
        await self.host.report(notebook, "RUNNING")
        return notebook

    async def get(self, path: str) -> tuple[int, str]:
        reply = await self.client.get(path, headers={"Authorization": "Bearer t0k"})
        return reply.status, await reply.text()


@pytest.fixture
async def rig(harness: Harness, project: Tokens) -> AsyncIterator[Rig]:
    agent = StandInAgent()
    agent_url = await agent.start()
    host = harness.agent("h1")
    await host.register(gpus=2, agent_url=agent_url)
    switch = Switch(harness)
    scheduler_url = await switch.start()
    clock = RouterClock()
    routes = Routes(
        scheduler_url,
        ensure_router_token(harness.config),
        lookup_ttl_s=1.0,
        outage_grace_s=GRACE_S,
        clock=clock,
    )
    client = TestClient(TestServer(create_app(routes)))
    await client.start_server()
    try:
        yield Rig(harness, project, host, switch, agent, clock, client)
    finally:
        await client.close()
        assert switch.server is not None and agent.server is not None
        await switch.server.close()
        await agent.server.close()


async def test_a_running_notebook_is_forwarded_to_its_agent_as_sent(rig: Rig) -> None:
    notebook = await rig.running()
    status, text = await rig.get(f"/notebooks/{notebook}/api/contents?type=file")
    assert (status, text) == (200, f"agent saw /notebooks/{notebook}/api/contents?type=file")
    assert rig.agent.seen[-1] == (f"/notebooks/{notebook}/api/contents?type=file", "Bearer t0k")
    bare = await rig.client.get(f"/notebooks/{notebook}?token=x", allow_redirects=False)
    assert (bare.status, bare.headers["Location"]) == (307, f"/notebooks/{notebook}/?token=x")

    async with rig.client.ws_connect(f"/notebooks/{notebook}/api/kernels/k/channels") as ws:
        await ws.send_str("hello")
        assert (await ws.receive()).data == "echo hello"


async def test_lookups_are_remembered_for_the_ttl_and_moves_followed_after_it(rig: Rig) -> None:
    notebook = await rig.running()
    for _ in range(5):
        assert (await rig.get(f"/notebooks/{notebook}/lab"))[0] == 200
    assert rig.switch.lookups == 1
    await rig.project.action(notebook, "stop")
    rig.clock.now += 1.5
    status, text = await rig.get(f"/notebooks/{notebook}/lab")
    # The scheduler's own answer for a notebook that is not running.
    assert status == 409 and "is not running" in text and "STOPPING" in text
    assert rig.switch.lookups == 2


async def test_open_editors_outlive_the_scheduler_within_the_grace(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    served = await rig.running()
    never_opened = await rig.running()
    assert (await rig.get(f"/notebooks/{served}/lab"))[0] == 200

    rig.switch.up = False
    rig.clock.now += 60
    with caplog.at_level(logging.WARNING, logger="router.routes"):
        status, text = await rig.get(f"/notebooks/{served}/api/contents/a.ipynb")
        assert (status, text) == (200, f"agent saw /notebooks/{served}/api/contents/a.ipynb")
        async with rig.client.ws_connect(f"/notebooks/{served}/api/kernels/k/channels") as ws:
            await ws.send_str("still here")
            assert (await ws.receive()).data == "echo still here"
        status, text = await rig.get(f"/notebooks/{never_opened}/lab")
    assert status == 503 and "no scheduler answers" in text, text
    logged = caplog.text
    assert "no scheduler answers" in logged
    assert f"notebook={served} served at its last known host" in logged

    rig.clock.now += GRACE_S
    status, text = await rig.get(f"/notebooks/{served}/lab")
    assert status == 503 and f"last {GRACE_S:.0f}s" in text

    # Back: locations are asked again, and followed.
    rig.switch.up = True
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="router.routes"):
        assert (await rig.get(f"/notebooks/{served}/lab"))[0] == 200
    assert "a scheduler answers again" in caplog.text


async def test_a_wrong_router_token_is_shown_as_the_operators_problem(
    harness: Harness, project: Tokens
) -> None:
    switch = Switch(harness)
    routes = Routes(await switch.start(), "nbr_wrong")
    client = TestClient(TestServer(create_app(routes)))
    await client.start_server()
    try:
        reply = await client.get("/notebooks/nb1/lab")
        assert reply.status == 502
        assert "refused this router's lookup" in await reply.text()
    finally:
        await client.close()
        assert switch.server is not None
        await switch.server.close()


async def test_the_router_endpoint_takes_the_router_token_only(
    harness: Harness, project: Tokens
) -> None:
    for token in (harness.admin_token, project.operator, None):
        reply = await harness.call("GET", "/v1/router/notebooks/nb1", token=token)
        assert (reply.status, reply.code) == (401, "unauthenticated"), reply.text
    router = ensure_router_token(harness.config)
    reply = await harness.call("GET", "/v1/router/notebooks/nb1", token=router)
    assert reply.status == 200 and reply.json == {
        "notebook": "nb1",
        "state": None,
        "agent_url": None,
    }
