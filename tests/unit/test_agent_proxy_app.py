"""The agent's own HTTP server with the editor proxy mounted: a fake scheduler answering
``/v1/agents/authorize`` over real signed HTTP, FakeRuntime publishing the notebook's editor on a
real loopback test server, activity in heartbeats, followed logs and exec."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from agent.app import Agent
from agent.runtime import ExecOutput
from common import wire
from common.auth import sign
from common.states import NotebookState as S
from tests.fakes.runtime import FakeRuntime
from tests.fakes.scheduler import FakeScheduler
from tests.unit.test_agent_app import (
    SECRET,
    agent_config,
    agent_for,
    assignment,
    eventually,
    fake_scheduler,
    url_of,
)

TOKEN = "nbf_project_token"


@dataclass
class Rig:
    scheduler: FakeScheduler
    agent: Agent
    runtime: FakeRuntime
    editor_requests: list[web.Request]
    http: aiohttp.ClientSession

    @property
    def url(self) -> str:
        return self.agent.agent_url

    async def run(self, **overrides) -> None:
        self.scheduler.assignments = [assignment(**overrides)]
        self.scheduler.bump()
        await eventually(
            "RUNNING report",
            lambda: any(t.state == S.RUNNING for t in self.scheduler.transitions),
        )

    def signed(self, method: str, path: str, body: bytes = b"") -> dict[str, str]:
        return sign(SECRET, "h1", method, path, body)


async def editor_server(seen: list[web.Request]) -> TestServer:
    async def anything(request: web.Request) -> web.Response:
        seen.append(request)
        return web.Response(text=f"editor saw {request.raw_path}")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", anything)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    scheduler, scheduler_server = await fake_scheduler()
    scheduler.tokens[TOKEN] = "read"
    seen: list[web.Request] = []
    editor = await editor_server(seen)
    runtime = FakeRuntime()
    runtime.ports["nb1"] = editor.port
    config = agent_config(tmp_path, url_of(scheduler_server))
    agent = agent_for(config, runtime)
    await agent.start()
    http = aiohttp.ClientSession()
    try:
        yield Rig(scheduler, agent, runtime, seen, http)
    finally:
        await http.close()
        await agent.stop()
        await editor.close()
        await scheduler_server.close()


async def test_proxy_asks_the_scheduler_and_reports_activity(rig: Rig) -> None:
    await rig.run(url_path="/lab?token=t", base_url="/")
    assert any(t.state == S.RUNNING for t in rig.scheduler.transitions)
    # The notebook's URL at the proxy: the editor's url_path, without the editor's own token.
    url = f"{rig.url}/notebooks/nb1/lab"
    assert rig.runtime.specs["nb1"].upstream_host == "127.0.0.1"

    async with rig.http.get(url) as response:
        assert response.status == 401
    async with rig.http.get(url, headers={"Authorization": f"Bearer {TOKEN}"}) as response:
        assert response.status == 200
        assert await response.text() == "editor saw /lab"
    assert rig.editor_requests[-1].headers["Authorization"] == "token t"
    # Asked once, signed as this host.
    assert rig.scheduler.authorizations == [
        ("h1", wire.AuthorizeRequest(notebook="nb1", token=TOKEN))
    ]
    async with rig.http.get(url, headers={"Authorization": "Bearer nbf_deleted"}) as response:
        assert response.status == 403
        assert "unknown or deleted token" in await response.text()

    await eventually(
        "activity in a heartbeat",
        lambda: any(hb.activity for _, hb in rig.scheduler.heartbeats),
    )
    reported = next(hb.activity for _, hb in rig.scheduler.heartbeats if hb.activity)
    assert [a.notebook for a in reported] == ["nb1"] and reported[0].bytes_out > 0
    # No new traffic: the next heartbeats carry none.
    count = len(rig.scheduler.heartbeats)
    await eventually("two more heartbeats", lambda: len(rig.scheduler.heartbeats) >= count + 2)
    assert all(not hb.activity for _, hb in rig.scheduler.heartbeats[count:])


async def test_a_notebook_of_another_host_is_404(rig: Rig) -> None:
    await rig.run()
    async with rig.http.get(
        f"{rig.url}/notebooks/elsewhere/", headers={"Authorization": f"Bearer {TOKEN}"}
    ) as response:
        assert response.status == 404
    assert rig.scheduler.authorizations == []


async def test_editor_under_its_base_url(rig: Rig) -> None:
    await rig.run(url_path="/lab?token=t", base_url="/notebooks/nb1/")
    assert any(t.state == S.RUNNING for t in rig.scheduler.transitions)
    url = f"{rig.url}/notebooks/nb1/lab"
    async with rig.http.get(url, headers={"Authorization": f"Bearer {TOKEN}"}) as response:
        assert await response.text() == "editor saw /notebooks/nb1/lab"


# ---------------------------------------------------------------- logs follow


async def test_followed_logs_stream_until_the_container_stops(rig: Rig) -> None:
    await rig.run()
    rig.runtime.logs_text["nb1"] = "before\n"
    path = "/v1/notebooks/nb1/logs?follow=1&tail=10"
    async with rig.http.get(rig.url + path, headers=rig.signed("GET", path)) as response:
        assert response.status == 200
        assert response.headers["Transfer-Encoding"] == "chunked"
        assert await asyncio.wait_for(response.content.readline(), 5) == b"before\n"
        rig.runtime.append_log("nb1", "during\n")
        assert await asyncio.wait_for(response.content.readline(), 5) == b"during\n"
        rig.runtime.exit("nb1", 0)
        assert await asyncio.wait_for(response.content.read(), 5) == b""


async def test_followed_logs_end_when_the_caller_leaves(rig: Rig) -> None:
    await rig.run()
    path = "/v1/notebooks/nb1/logs?follow=1"
    response = await rig.http.get(rig.url + path, headers=rig.signed("GET", path))
    assert (await asyncio.wait_for(response.content.readline(), 5)).startswith(b"log of nb1")
    assert rig.runtime._log_feeds["nb1"]
    response.close()
    await eventually("the agent to stop following", lambda: not rig.runtime._log_feeds.get("nb1"))


async def test_followed_logs_need_the_signature_and_fall_back_to_kept_output(rig: Rig) -> None:
    await rig.run()
    path = "/v1/notebooks/nb1/logs?follow=1"
    async with rig.http.get(rig.url + path) as response:
        assert response.status == 401
    path = "/v1/notebooks/gone/logs?follow=1"
    async with rig.http.get(rig.url + path, headers=rig.signed("GET", path)) as response:
        assert response.status == 404


# ---------------------------------------------------------------- exec


async def post_exec(rig: Rig, notebook: str, body: wire.ExecRequest | bytes) -> tuple[int, dict]:
    path = f"/v1/notebooks/{notebook}/exec"
    data = body if isinstance(body, bytes) else wire.encode(body)
    headers = {**rig.signed("POST", path, data), "Content-Type": "application/json"}
    async with rig.http.post(rig.url + path, data=data, headers=headers) as response:
        return response.status, await response.json()


async def test_exec_runs_as_the_notebooks_user(rig: Rig) -> None:
    await rig.run(user="1000:100")
    status, reply = await post_exec(rig, "nb1", wire.ExecRequest(command=["echo", "hi"]))
    assert status == 200
    assert reply == {"exit_code": 0, "output": "echo hi\n", "truncated": False}
    assert rig.runtime.exec_calls == [("nb1", ["echo", "hi"], "1000:100")]

    rig.runtime.exec_output["nb1"] = ExecOutput(3, b"x" * 10, truncated=True)
    status, reply = await post_exec(rig, "nb1", wire.ExecRequest(command=["big"]))
    assert reply == {"exit_code": 3, "output": "x" * 10, "truncated": True}


async def test_exec_timeout_is_124_with_a_note(rig: Rig) -> None:
    await rig.run()
    status, reply = await post_exec(
        rig, "nb1", wire.ExecRequest(command=["sleep", "30"], timeout_s=0.1)
    )
    assert status == 200 and reply["exit_code"] == 124
    assert "timed out after 0.1s" in reply["output"]


async def test_exec_errors(rig: Rig) -> None:
    await rig.run()
    status, reply = await post_exec(rig, "nope", wire.ExecRequest(command=["true"]))
    assert (status, reply["code"]) == (404, "not_found")
    status, reply = await post_exec(rig, "nb1", b'{"command": []}')
    assert (status, reply["code"]) == (400, "invalid_request")
    assert "command" in reply["message"]
    # The reconciler would act on the exit (and remove the container, making it a 404): stop
    # it, so this checks what exec answers for a container that is there but not running.
    reconcile = next(loop for loop in rig.agent.loops if loop.name == "reconcile")
    await reconcile.stop()
    await rig.agent.reconciler.idle()
    rig.runtime.containers["nb1"].status = "exited"
    status, reply = await post_exec(rig, "nb1", wire.ExecRequest(command=["true"]))
    assert (status, reply["code"]) == (409, "conflict")
    path = "/v1/notebooks/nb1/exec"
    async with rig.http.post(rig.url + path, data=b'{"command": ["true"]}') as response:
        assert response.status == 401
