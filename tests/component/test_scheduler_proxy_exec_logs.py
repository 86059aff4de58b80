"""``logs?follow=1`` streamed from the agent as it comes, and ``exec`` run through the agent;
both signed, against a fake agent on a real port that checks signatures like the real one."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from common import wire
from common.auth import Verifier
from common.errors import ApiError
from common.http_server import check_json_content_type
from tests.component.conftest import Harness, Tokens


@dataclass
class FakeAgent:
    """The agent's signed HTTP side: followed logs fed from ``lines`` (``None`` ends the
    stream, ``"BREAK"`` drops the connection mid-stream), and exec answered from ``exec_replies``
    by the command's first word."""

    harness: Harness
    host_id: str
    lines: asyncio.Queue = field(default_factory=asyncio.Queue)
    seen: list[tuple[str, str, bytes]] = field(default_factory=list)
    follower_gone: asyncio.Event = field(default_factory=asyncio.Event)
    exec_replies: dict[str, tuple[int, object]] = field(default_factory=dict)
    server: TestServer | None = None

    async def start(self) -> str:
        secret = self.harness.agent(self.host_id).secret
        verifier = Verifier(
            lambda h: secret if h == self.host_id else None, clock=self.harness.clock
        )

        async def checked(request: web.Request) -> bytes:
            body = await request.read()
            try:
                verifier.verify(request.method, request.raw_path, request.headers, body)
            except ApiError as exc:
                raise web.HTTPUnauthorized(text=str(exc))
            self.seen.append((request.method, request.raw_path, body))
            return body

        async def logs(request: web.Request) -> web.StreamResponse:
            await checked(request)
            if request.query.get("follow") != "1":
                return web.Response(text="all of it\n")
            response = web.StreamResponse()
            response.enable_chunked_encoding()
            await response.prepare(request)
            await response.write(b"earlier output\n")
            ended = False
            try:
                while True:
                    line = await self.lines.get()
                    if line is None:
                        break
                    if line == "BREAK":
                        assert request.transport is not None
                        request.transport.close()
                        return response
                    await response.write(line.encode())
                ended = True
            finally:
                # Cancelled or failing to write: the scheduler let go of the stream.
                if not ended:
                    self.follower_gone.set()
            await response.write_eof()
            return response

        async def run(request: web.Request) -> web.Response:
            body = await checked(request)
            try:  # as the real agent does: a body not declared JSON is a 415
                check_json_content_type(request.headers.get("Content-Type"))
            except ApiError as exc:
                raise web.HTTPUnsupportedMediaType(text=str(exc))
            asked = wire.decode(body, wire.ExecRequest)
            status, answer = self.exec_replies.get(
                asked.command[0],
                (200, wire.ExecResult(exit_code=0, output=" ".join(asked.command) + "\n")),
            )
            if isinstance(answer, bytes):
                return web.Response(status=status, body=answer)
            return web.Response(
                status=status, body=wire.encode(answer), content_type="application/json"
            )

        app = web.Application()
        app.router.add_get("/v1/notebooks/{id}/logs", logs)
        app.router.add_post("/v1/notebooks/{id}/exec", run)
        self.server = TestServer(app)
        await self.server.start_server()
        return str(self.server.make_url("/"))


@pytest.fixture
async def agent(harness: Harness) -> AsyncIterator[FakeAgent]:
    fake = FakeAgent(harness, "h1")
    url = await fake.start()
    await harness.agent("h1").register(gpus=1, agent_url=url)
    try:
        yield fake
    finally:
        assert fake.server is not None
        await fake.server.close()


async def running(harness: Harness, project: Tokens) -> str:
    nb = (await project.run()).json
    await harness.agent("h1").report(nb["id"], "RUNNING")
    return nb["id"]


# ---------------------------------------------------------------- logs --follow


async def test_followed_logs_arrive_as_the_agent_sends_them(
    harness: Harness, project: Tokens, agent: FakeAgent
) -> None:
    nb = await running(harness, project)
    assert harness.client is not None
    async with harness.client.get(
        f"/v1/notebooks/{nb}/logs?follow=1&tail=20",
        headers={"Authorization": f"Bearer {project.read}"},
    ) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        assert resp.headers["Transfer-Encoding"] == "chunked"
        assert await resp.content.readany() == b"earlier output\n"
        # Each piece is relayed before the next exists.
        for line in ("kernel started\n", "cell ran\n"):
            await agent.lines.put(line)
            assert await asyncio.wait_for(resp.content.readany(), 5) == line.encode()
        await agent.lines.put(None)  # the container stopped: the agent ends the stream
        assert await asyncio.wait_for(resp.content.read(), 5) == b""
    [(method, path, _)] = agent.seen
    assert (method, path) == ("GET", f"/v1/notebooks/{nb}/logs?follow=1&tail=20")


async def test_a_follower_that_leaves_ends_the_agents_stream(
    harness: Harness, project: Tokens, agent: FakeAgent
) -> None:
    nb = await running(harness, project)
    assert harness.client is not None
    async with harness.client.get(
        f"/v1/notebooks/{nb}/logs?follow=1",
        headers={"Authorization": f"Bearer {project.read}"},
    ) as resp:
        assert await resp.content.readany() == b"earlier output\n"
        resp.close()  # the user pressed Ctrl-C
    # The scheduler notices at its next write and lets go of the agent's stream.
    deadline = time.monotonic() + 5
    while not agent.follower_gone.is_set():
        assert time.monotonic() < deadline, "the agent's stream was never closed"
        await agent.lines.put("more\n")
        await asyncio.sleep(0.05)


async def test_a_stream_that_breaks_off_says_so_in_the_text(
    harness: Harness, project: Tokens, agent: FakeAgent
) -> None:
    nb = await running(harness, project)
    await agent.lines.put("last words\n")
    await agent.lines.put("BREAK")
    reply = await harness.call("GET", f"/v1/notebooks/{nb}/logs?follow=1", token=project.read)
    assert reply.status == 200
    assert reply.text.startswith("earlier output\nlast words\n")
    assert "[nbfleet: the log stream from host h1 broke off" in reply.text


async def test_follow_errors_before_streaming_are_json(
    harness: Harness, project: Tokens, agent: FakeAgent
) -> None:
    nb = await running(harness, project)
    bad = await harness.call("GET", f"/v1/notebooks/{nb}/logs?follow=yes", token=project.read)
    assert bad.status == 400 and "`follow`" in bad.json["message"]
    assert agent.seen == []
    assert agent.server is not None
    await agent.server.close()  # the agent is gone
    gone = await harness.call("GET", f"/v1/notebooks/{nb}/logs?follow=1", token=project.read)
    assert (gone.status, gone.code) == (502, "upstream_unavailable")
    plain = await harness.call("GET", f"/v1/notebooks/{nb}/logs", token=project.read)
    assert plain.status == 502


# ---------------------------------------------------------------- exec


async def test_exec_runs_through_the_agent_signed(
    harness: Harness, project: Tokens, agent: FakeAgent
) -> None:
    nb = await running(harness, project)
    body = {"command": ["python", "-c", "print(21*2)"], "timeout_s": 5}
    reply = await harness.call(
        "POST", f"/v1/notebooks/{nb}/exec", token=project.operator, body=body
    )
    assert reply.status == 200, reply.text
    assert reply.json == {"exit_code": 0, "output": "python -c print(21*2)\n", "truncated": False}
    [(method, path, sent)] = agent.seen
    assert (method, path) == ("POST", f"/v1/notebooks/{nb}/exec")
    assert wire.decode(sent, wire.ExecRequest) == wire.ExecRequest(
        command=["python", "-c", "print(21*2)"], timeout_s=5
    )

    agent.exec_replies["false"] = (200, wire.ExecResult(exit_code=1, output=""))
    failed = await harness.call(
        "POST", f"/v1/notebooks/{nb}/exec", token=project.operator, body={"command": ["false"]}
    )
    assert failed.status == 200 and failed.json["exit_code"] == 1


async def test_exec_needs_a_running_notebook_and_a_valid_command(
    harness: Harness, project: Tokens, agent: FakeAgent
) -> None:
    nb = (await project.run()).json  # STARTING
    path = f"/v1/notebooks/{nb['id']}/exec"
    starting = await harness.call("POST", path, token=project.operator, body={"command": ["id"]})
    assert (starting.status, starting.code) == (409, "conflict")
    assert "is STARTING; commands run only in a RUNNING notebook" in starting.json["message"]
    assert starting.json["detail"]["state"] == "STARTING"
    empty = await harness.call("POST", path, token=project.operator, body={"command": []})
    assert empty.status == 400 and "$.command" in empty.json["message"]
    long = await harness.call(
        "POST", path, token=project.operator, body={"command": ["id"], "timeout_s": 7200}
    )
    assert long.status == 400 and "$.timeout_s" in long.json["message"]
    other = await harness.project("beta")
    theirs = await harness.call("POST", path, token=other.operator, body={"command": ["id"]})
    assert theirs.status == 404
    assert agent.seen == []


async def test_exec_passes_on_what_the_agent_says_about_the_notebook(
    harness: Harness, project: Tokens, agent: FakeAgent
) -> None:
    nb = await running(harness, project)
    path = f"/v1/notebooks/{nb}/exec"
    gone = wire.ErrorBody(code="conflict", message=f"notebook {nb} has no running container")
    agent.exec_replies["gone"] = (409, gone)
    agent.exec_replies["crash"] = (500, b"Traceback (most recent call last): ...")
    agent.exec_replies["odd"] = (200, b"not json")
    reply = await harness.call("POST", path, token=project.operator, body={"command": ["gone"]})
    assert (reply.status, reply.json["message"]) == (409, gone.message)
    for word in ("crash", "odd"):
        reply = await harness.call("POST", path, token=project.operator, body={"command": [word]})
        assert (reply.status, reply.code) == (502, "upstream_unavailable"), word
        assert "host h1" in reply.json["message"]
    assert agent.server is not None
    await agent.server.close()
    reply = await harness.call("POST", path, token=project.operator, body={"command": ["id"]})
    assert (reply.status, reply.code) == (502, "upstream_unavailable")
