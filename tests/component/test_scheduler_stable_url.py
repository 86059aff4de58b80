"""A notebook's stable URL, ``{scheduler}/notebooks/{id}/``: forwarded (HTTP and WebSocket) to
the agent that runs it now, against stand-in agents on loopback that echo what reached them;
or answered with the notebook's state; and the URL the API shows for it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer

from tests.component.conftest import Harness, Tokens

AGENT_A = "http://gpu-a.example:8471"


@dataclass
class Answer:
    status: int
    location: str | None
    text: str
    headers: dict[str, str]


async def visit(harness: Harness, path: str, method: str = "GET", **headers: str) -> Answer:
    """A client's request, without following redirects and without any API token."""
    assert harness.client is not None
    async with harness.client.request(method, path, allow_redirects=False, headers=headers) as resp:
        return Answer(
            resp.status, resp.headers.get("Location"), await resp.text(), dict(resp.headers)
        )


class StandInAgent:
    """An agent's proxy, reduced to what forwarding must preserve: HTTP answers echo method,
    raw path, headers and body as JSON (status from ``?status=``); ``.../channels`` is a
    WebSocket that echoes frames, offers the ``v1.kernel.websocket.jupyter.org`` subprotocol
    and closes with 4001 on the text ``bye``."""

    def __init__(self, name: str) -> None:
        self.name = name
        app = web.Application()
        app.router.add_route("*", "/notebooks/{tail:.*}", self.handle)
        self.server = TestServer(app, host="127.0.0.1")

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path.endswith("/channels") and request.headers.get("Upgrade"):
            ws = web.WebSocketResponse(protocols=["v1.kernel.websocket.jupyter.org"])
            await ws.prepare(request)
            async for msg in ws:
                if msg.type == WSMsgType.TEXT and msg.data == "bye":
                    await ws.close(code=4001, message=b"kernel gone")
                elif msg.type == WSMsgType.TEXT:
                    await ws.send_str(f"{self.name}:{msg.data}")
                elif msg.type == WSMsgType.BINARY:
                    await ws.send_bytes(msg.data[::-1])
            return ws
        if request.path.endswith("/stream"):
            # A chunked body written in pieces with pauses, as editors stream (kernel
            # outputs, terminals, event streams).
            stream = web.StreamResponse(headers={"Content-Type": "text/plain"})
            stream.enable_chunked_encoding()
            await stream.prepare(request)
            for piece in (b"one ", b"two ", b"three"):
                await stream.write(piece)
                await asyncio.sleep(0.2)
            await stream.write_eof()
            return stream
        if request.query.get("status") == "401":
            return web.Response(status=401, text="Token needed", headers={"X-From": self.name})
        body = await request.read()
        echo = {
            "agent": self.name,
            "method": request.method,
            "raw_path": request.raw_path,
            "headers": {k: v for k, v in request.headers.items()},
            "body": body.decode(errors="replace"),
        }
        response = web.json_response(echo, headers={"Set-Cookie": "x=1; Path=/notebooks/"})
        return response


@pytest.fixture
async def agents() -> AsyncIterator[dict[str, StandInAgent]]:
    found = {name: StandInAgent(name) for name in ("a", "b")}
    for agent in found.values():
        await agent.server.start_server()
    yield found
    for agent in found.values():
        await agent.server.close()


async def running(
    harness: Harness, project: Tokens, agents: dict[str, StandInAgent] | None = None
) -> str:
    url = agents["a"].url if agents else AGENT_A
    await harness.agent("a").register(gpus=1, agent_url=url)
    nb = (await project.run()).json
    assert nb["host"] == "a"
    await harness.agent("a").report(nb["id"], "RUNNING", url="http://gpu-a.example:40001/")
    return nb["id"]


async def echo(harness: Harness, path: str, method: str = "GET", **kw) -> tuple[int, dict]:
    assert harness.client is not None
    async with harness.client.request(method, path, allow_redirects=False, **kw) as resp:
        return resp.status, {**json.loads(await resp.text()), "reply": dict(resp.headers)}


async def test_a_running_notebooks_url_is_forwarded_to_its_agent_as_sent(
    harness: Harness, project: Tokens, agents: dict[str, StandInAgent]
) -> None:
    nb = await running(harness, project, agents)
    path = f"/notebooks/{nb}/lab/tree/a%20b.ipynb?token=nbf_x&reset=1"
    status, seen = await echo(
        harness,
        path,
        headers={
            "Authorization": "token nbf_secret",
            "Cookie": "nbfleet_token=nbf_c; _xsrf=1",
            "Connection": "keep-alive, X-Hop",
            "X-Hop": "dropped",
            "Keep-Alive": "timeout=5",
        },
    )
    assert status == 200 and seen["agent"] == "a" and seen["method"] == "GET"
    # Path (its encoding as sent) and query, ?token= included: the agent checks it.
    assert seen["raw_path"] == path
    sent = seen["headers"]
    assert sent["Authorization"] == "token nbf_secret"
    assert sent["Cookie"] == "nbfleet_token=nbf_c; _xsrf=1"
    assert "X-Hop" not in sent and "Keep-Alive" not in sent
    assert sent["Host"] == harness.client.make_url("/").host + f":{harness.client.port}"
    assert sent["X-Forwarded-For"] == "127.0.0.1"
    # What the agent answers comes back, its cookies included.
    assert seen["reply"]["Set-Cookie"] == "x=1; Path=/notebooks/"

    posted, seen = await echo(harness, f"/notebooks/{nb}/api/contents/x", "PUT", data=b"x" * 70_000)
    assert posted == 200 and seen["method"] == "PUT" and seen["body"] == "x" * 70_000

    refused = await visit(harness, f"/notebooks/{nb}/api/status?status=401")
    assert (refused.status, refused.text) == (401, "Token needed")
    assert refused.headers["X-From"] == "a"

    bare = await visit(harness, f"/notebooks/{nb}?token=nbf_x")
    assert (bare.status, bare.location) == (307, f"/notebooks/{nb}/?token=nbf_x")


async def test_websockets_are_bridged_with_subprotocol_frames_and_close_code(
    harness: Harness, project: Tokens, agents: dict[str, StandInAgent]
) -> None:
    nb = await running(harness, project, agents)
    assert harness.client is not None
    async with harness.client.ws_connect(
        f"/notebooks/{nb}/api/kernels/k1/channels?token=nbf_x",
        protocols=["v1.kernel.websocket.jupyter.org"],
    ) as ws:
        assert ws.protocol == "v1.kernel.websocket.jupyter.org"
        await ws.send_str("21*2")
        assert (await ws.receive_str(timeout=10)) == "a:21*2"
        await ws.send_bytes(b"\x01\x02\x03")
        assert (await ws.receive_bytes(timeout=10)) == b"\x03\x02\x01"
        await ws.send_str("bye")
        closing = await ws.receive(timeout=10)
        assert closing.type == WSMsgType.CLOSE and closing.data == 4001
        assert closing.extra == "kernel gone"


async def test_the_url_follows_the_notebook_to_another_host(
    harness: Harness, project: Tokens, agents: dict[str, StandInAgent]
) -> None:
    nb = await running(harness, project, agents)
    url = (await project.get(nb))["url"]
    await project.action(nb, "stop")
    await harness.agent("a").report(nb, "STOPPED")
    await harness.agent("b").register(gpus=1, agent_url=agents["b"].url + "/")
    cordoned = await harness.call("POST", "/v1/admin/hosts/a/cordon", token=harness.admin_token)
    assert cordoned.status == 200
    started = await project.action(nb, "start")
    assert started.json["host"] == "b"
    await harness.agent("b").report(nb, "RUNNING", generation=2)

    assert (await project.get(nb))["url"] == url  # same URL, another host
    status, seen = await echo(harness, f"/notebooks/{nb}/lab")
    assert status == 200 and seen["agent"] == "b" and seen["raw_path"] == f"/notebooks/{nb}/lab"


async def test_an_agent_that_does_not_answer_is_a_502_saying_so(
    harness: Harness, project: Tokens
) -> None:
    await harness.agent("a").register(gpus=1, agent_url="http://127.0.0.1:9")  # nothing there
    nb = (await project.run()).json["id"]
    await harness.agent("a").report(nb, "RUNNING", url="http://127.0.0.1:9/")
    answer = await visit(harness, f"/notebooks/{nb}/lab")
    assert answer.status == 502 and answer.headers["Retry-After"] == "5"
    assert f"notebook {nb}: its host did not answer" in answer.text


async def test_a_notebook_that_is_not_running_says_its_state_and_what_to_do(
    harness: Harness, project: Tokens
) -> None:
    nb = await running(harness, project)
    await project.action(nb, "stop")
    stopping = await visit(harness, f"/notebooks/{nb}/lab")
    assert stopping.status == 409 and stopping.location is None
    assert "STOPPING" in stopping.text and "once STOPPED" in stopping.text

    await harness.agent("a").report(nb, "STOPPED")
    stopped = await visit(harness, f"/notebooks/{nb}/lab?token=nbf_x")
    assert stopped.status == 409
    assert stopped.headers["Content-Type"].startswith("text/plain")
    assert f"notebook {nb} is not running: it is STOPPED" in stopped.text
    assert f"nbfleet notebook start {nb}" in stopped.text

    await project.action(nb, "start")  # placed again on a: STARTING
    starting = await visit(harness, f"/notebooks/{nb}/")
    assert (starting.status, starting.headers["Retry-After"]) == (503, "5")
    assert f"notebook {nb} is STARTING" in starting.text

    await harness.agent("a").report(nb, "FAILED", generation=2)
    failed = await visit(harness, f"/notebooks/{nb}/")
    assert failed.status == 409 and "it is FAILED; start it with" in failed.text


async def test_queued_unknown_and_deleted_notebooks(harness: Harness, project: Tokens) -> None:
    await harness.agent("a").register(gpus=1, agent_url=AGENT_A)
    await project.run(gpu=1)
    queued = (await project.run(gpu=1)).json
    assert queued["state"] == "QUEUED"
    answer = await visit(harness, f"/notebooks/{queued['id']}/")
    assert answer.status == 503 and "is QUEUED" in answer.text

    unknown = await visit(harness, "/notebooks/no-such-notebook/lab")
    assert (unknown.status, unknown.text) == (404, "notebook no-such-notebook does not exist\n")

    await project.action(queued["id"], "delete")  # it never ran: DELETED at once
    deleted = await visit(harness, f"/notebooks/{queued['id']}/")
    assert deleted.status == 404 and "does not exist" in deleted.text


async def test_the_api_shows_the_stable_url_only_while_running(
    harness: Harness, project: Tokens
) -> None:
    await harness.agent("a").register(gpus=1, agent_url=AGENT_A)
    nb = (await project.run()).json
    assert nb["url"] is None  # STARTING
    await harness.agent("a").report(nb["id"], "RUNNING", url="http://gpu-a.example:40001/lab")
    expected = str(harness.client.make_url(f"/notebooks/{nb['id']}/"))
    assert (await project.get(nb["id"]))["url"] == expected
    listed = await harness.call("GET", "/v1/notebooks", token=project.read)
    assert [n["url"] for n in listed.json["items"]] == [expected]

    # Behind a reverse proxy, the address people use is the one it reports.
    for headers in (
        {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "notebooks.example.org"},
        {"Forwarded": 'for=10.0.0.1;proto=https;host="notebooks.example.org"'},
    ):
        shown = await harness.call(
            "GET", f"/v1/notebooks/{nb['id']}", token=project.read, headers=headers
        )
        assert shown.json["url"] == f"https://notebooks.example.org/notebooks/{nb['id']}/"

    stopped = await project.action(nb["id"], "stop")
    assert stopped.json["url"] is None


async def test_a_configured_public_url_is_what_notebook_urls_start_with(
    harness: Harness, project: Tokens
) -> None:
    await harness.agent("a").register(gpus=1, agent_url=AGENT_A)
    nb = (await project.run()).json
    await harness.agent("a").report(nb["id"], "RUNNING", url="http://gpu-a.example:40001/lab")
    harness.config.public_url = "https://notebooks.example.com/"
    shown = await harness.call(
        "GET",
        f"/v1/notebooks/{nb['id']}",
        token=project.read,
        headers={"X-Forwarded-Host": "somewhere.else"},
    )
    assert shown.json["url"] == f"https://notebooks.example.com/notebooks/{nb['id']}/"


async def test_a_chunked_body_streams_through_as_it_is_written(
    harness: Harness, project: Tokens, agents: dict[str, StandInAgent]
) -> None:
    nb = await running(harness, project, agents)
    assert harness.client is not None
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.05)
            ticks += 1

    clock = asyncio.ensure_future(ticker())
    try:
        async with harness.client.get(f"/notebooks/{nb}/stream") as resp:
            body = await asyncio.wait_for(resp.read(), 10)
    finally:
        clock.cancel()
    assert (resp.status, body) == (200, b"one two three")
    # The event loop kept running while the pieces came.
    assert ticks >= 5
