"""Open editors through a control-plane outage: the whole agent with its editor proxy on a real
port, a fake scheduler answering ``/v1/agents/authorize`` over real signed HTTP on a real port
(stopped, and started again on the same port), and a stand-in editor on a real loopback port
(HTTP and WebSocket). Only the authorizer's clock is a fake, so windows of minutes take none."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import msgspec
import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer

from agent.app import Agent
from agent.proxy_access import ALLOWED_TTL_S, Authorizer
from common.states import NotebookState as S
from tests.fakes.inventory import FakeClock
from tests.fakes.runtime import FakeRuntime
from tests.fakes.scheduler import FakeScheduler
from tests.unit.test_agent_app import SECRET, agent_config, agent_for, assignment, eventually

TOKEN = "nbf_verified_token"
SECOND = "nbf_second_token"
NEVER_SEEN = "nbf_never_seen"


@dataclass
class AuthorizeSwitch:
    """Makes the fake scheduler's authorize endpoint answer ``status`` (5xx: a replica with
    its database down; 4xx: the agent itself refused) instead of its verdict; 0: the verdict."""

    status: int = 0

    @web.middleware
    async def middleware(self, request: web.Request, handler) -> web.StreamResponse:
        if request.path == "/v1/agents/authorize" and self.status:
            if self.status >= 500:
                return web.Response(status=self.status, text="database unavailable")
            return web.json_response(
                {"code": "forbidden", "message": "host not allowed"}, status=self.status
            )
        return await handler(request)


async def serve(scheduler: FakeScheduler, switch: AuthorizeSwitch, port: int = 0) -> TestServer:
    app = scheduler.app()
    app.middlewares.append(switch.middleware)
    server = TestServer(app, host="127.0.0.1", port=port)
    # Closed under a live agent: do not wait out its long-poll.
    await server.start_server(shutdown_timeout=0.5)
    return server


async def editor_server() -> TestServer:
    async def anything(request: web.Request) -> web.Response:
        body = await request.read()
        return web.Response(text=f"editor saw {request.method} {request.raw_path} {len(body)}")

    async def websocket(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str("hello from the editor")
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await ws.send_str("echo:" + msg.data)
        return ws

    app = web.Application()
    app.router.add_get("/api/kernels/k1/channels", websocket)
    app.router.add_route("*", "/{tail:.*}", anything)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


@dataclass
class Rig:
    scheduler: FakeScheduler
    switch: AuthorizeSwitch
    server: TestServer
    agent: Agent
    clock: FakeClock
    http: aiohttp.ClientSession
    #: The scheduler's port, the same after a restart (the agent knows only that address).
    port: int

    @property
    def editor_url(self) -> str:
        return f"{self.agent.agent_url}/notebooks/nb1/"

    async def stop_scheduler(self) -> None:
        await self.server.close()

    async def start_scheduler(self) -> None:
        self.server = await serve(self.scheduler, self.switch, self.port)

    async def get(self, path: str, token: str) -> tuple[int, str]:
        headers = {"Authorization": f"Bearer {token}"}
        async with self.http.get(self.editor_url + path, headers=headers) as response:
            return response.status, await response.text()

    async def save(self, path: str, token: str, data: bytes) -> tuple[int, str]:
        headers = {"Authorization": f"token {token}"}
        async with self.http.put(self.editor_url + path, data=data, headers=headers) as response:
            return response.status, await response.text()

    async def kernel_socket(self, token: str) -> aiohttp.ClientWebSocketResponse:
        ws = await self.http.ws_connect(
            self.editor_url + "api/kernels/k1/channels", headers={"Authorization": f"token {token}"}
        )
        assert (await ws.receive_str(timeout=5)) == "hello from the editor"
        return ws


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    scheduler = FakeScheduler({"h1": SECRET}, heartbeat_interval_s=0.1)
    scheduler.tokens.update({TOKEN: "read", SECOND: "operator"})
    switch = AuthorizeSwitch()
    server = await serve(scheduler, switch)
    editor = await editor_server()
    runtime = FakeRuntime()
    runtime.ports["nb1"] = editor.port
    config = agent_config(tmp_path, str(server.make_url("")).rstrip("/"))
    agent = agent_for(config, runtime)
    # The authorizer the agent builds (test_the_agent_takes_the_grace_from_its_config), on a
    # clock the test moves.
    clock = FakeClock(now=5000.0)
    agent.proxy.authorizer = Authorizer(
        agent.client.authorize, clock=clock, grace_s=config.authorize_grace_s
    )
    await agent.start()
    http = aiohttp.ClientSession()
    assert server.port is not None
    rig = Rig(scheduler, switch, server, agent, clock, http, server.port)
    try:
        scheduler.assignments = [assignment()]
        scheduler.bump()
        await eventually(
            "RUNNING report", lambda: any(t.state == S.RUNNING for t in scheduler.transitions)
        )
        yield rig
    finally:
        await http.close()
        await agent.stop()
        await editor.close()
        await rig.server.close()


def test_the_agent_takes_the_grace_from_its_config(tmp_path: Path) -> None:
    config = msgspec.structs.replace(
        agent_config(tmp_path, "http://127.0.0.1:1"), authorize_grace_s=120.0
    )
    assert agent_for(config, FakeRuntime()).proxy.authorizer.grace.window_s == 120.0


async def test_open_editors_keep_working_while_the_scheduler_is_down(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent.proxy_access")
    verified_at = rig.clock()
    assert await rig.get("lab", TOKEN) == (200, "editor saw GET /lab 0")
    kernel = await rig.kernel_socket(TOKEN)

    await rig.stop_scheduler()
    rig.clock.advance(ALLOWED_TTL_S + 1)  # the cached answer ran out: the proxy has to ask
    assert await rig.get("api/contents/a.ipynb", TOKEN) == (
        200,
        "editor saw GET /api/contents/a.ipynb 0",
    )
    assert await rig.save("api/contents/a.ipynb", TOKEN, b"x" * 5000) == (
        200,
        "editor saw PUT /api/contents/a.ipynb 5000",
    )
    second_kernel = await rig.kernel_socket(TOKEN)  # a new WebSocket, during the outage
    await second_kernel.send_str("run cell")
    assert await second_kernel.receive_str(timeout=5) == "echo:run cell"
    await second_kernel.close()
    await kernel.send_str("still there")  # the one opened before the outage
    assert await kernel.receive_str(timeout=5) == "echo:still there"
    await kernel.close()
    # Nothing vouches for a token this proxy never saw allowed.
    status, text = await rig.get("lab", NEVER_SEEN)
    assert status == 503 and "cannot be reached" in text
    (started,) = [
        r.getMessage() for r in caplog.records if "admitting this token" in r.getMessage()
    ]
    assert started.startswith("notebook=nb1 token=sha256:") and "at the latest" in started

    # Past the window, counted from the scheduler's last confirmation: 503.
    rig.clock.now = verified_at + rig.agent.config.authorize_grace_s
    assert (await rig.get("lab", TOKEN))[0] == 503
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await rig.kernel_socket(TOKEN)
    assert refused.value.status == 503
    assert any("grace of this token ended" in r.getMessage() for r in caplog.records)


async def test_a_token_revoked_during_the_outage_is_refused_within_the_cache_time(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent.proxy_access")
    assert (await rig.get("lab", TOKEN))[0] == 200
    assert (await rig.get("lab", SECOND))[0] == 200
    await rig.stop_scheduler()
    rig.clock.advance(ALLOWED_TTL_S + 1)
    assert (await rig.get("lab", TOKEN))[0] == 200
    assert (await rig.get("lab", SECOND))[0] == 200

    rig.scheduler.tokens.pop(TOKEN)  # deleted while the scheduler was down
    await rig.start_scheduler()
    asked = len(rig.scheduler.authorizations)
    # At most the cache time later the scheduler is asked again and its verdict holds.
    rig.clock.advance(ALLOWED_TTL_S)
    status, text = await rig.get("lab", TOKEN)
    assert status == 403 and "unknown or deleted token" in text
    assert (await rig.get("lab", SECOND))[0] == 200
    assert (await rig.get("lab", NEVER_SEEN))[0] == 403
    assert len(rig.scheduler.authorizations) == asked + 3
    assert any(
        r.getMessage().startswith("notebook=nb1 the scheduler answers again;")
        for r in caplog.records
    )
    # The revoked token is out of the grace too: the next outage does not admit it.
    await rig.stop_scheduler()
    rig.clock.advance(ALLOWED_TTL_S + 1)
    assert (await rig.get("lab", TOKEN))[0] == 503
    assert (await rig.get("lab", SECOND))[0] == 200


async def test_a_5xx_from_the_scheduler_is_an_outage_and_a_4xx_is_not(rig: Rig) -> None:
    assert (await rig.get("lab", TOKEN))[0] == 200
    rig.switch.status = 503  # a replica whose database is down
    rig.clock.advance(ALLOWED_TTL_S + 1)
    assert (await rig.get("lab", TOKEN))[0] == 200
    assert (await rig.get("lab", NEVER_SEEN))[0] == 503
    rig.switch.status = 403  # the scheduler refuses this agent: no grace
    rig.clock.advance(ALLOWED_TTL_S + 1)
    status, text = await rig.get("lab", TOKEN)
    assert status == 503 and "could not check your token" in text
    rig.switch.status = 0
    assert (await rig.get("lab", TOKEN))[0] == 200
