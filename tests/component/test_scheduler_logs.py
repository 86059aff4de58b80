"""Logs are proxied to the notebook's agent with a signed request."""

from __future__ import annotations

from aiohttp import web
from aiohttp.test_utils import TestServer

from common.auth import Verifier
from common.errors import ApiError
from tests.component.conftest import Harness, Tokens, make_config


async def fake_agent(harness: Harness, host_id: str, seen: list[str]) -> TestServer:
    """An agent's HTTP side on a real port, checking signatures like the real one."""
    secret = harness.agent(host_id).secret
    verifier = Verifier(lambda h: secret if h == host_id else None, clock=harness.clock)

    async def logs(request: web.Request) -> web.Response:
        try:
            verifier.verify(request.method, request.raw_path, request.headers, b"")
        except ApiError as exc:
            return web.Response(status=401, text=str(exc))
        seen.append(request.raw_path)
        return web.Response(text=f"line 1\nline 2 of {request.match_info['id']}\n")

    app = web.Application()
    app.router.add_get("/v1/notebooks/{id}/logs", logs)
    server = TestServer(app)
    await server.start_server()
    return server


async def test_logs_are_fetched_from_the_agent(harness: Harness, project: Tokens) -> None:
    seen: list[str] = []
    server = await fake_agent(harness, "h1", seen)
    try:
        await harness.agent("h1").register(gpus=1, agent_url=str(server.make_url("/")))
        nb = (await project.run()).json
        reply = await harness.call(
            "GET", f"/v1/notebooks/{nb['id']}/logs?tail=50", token=project.read
        )
        assert reply.status == 200, reply.text
        assert reply.content_type == "text/plain"
        assert reply.text == f"line 1\nline 2 of {nb['id']}\n"
        assert seen == [f"/v1/notebooks/{nb['id']}/logs?tail=50"]

        bad = await harness.call("GET", f"/v1/notebooks/{nb['id']}/logs?tail=x", token=project.read)
        assert bad.status == 400 and "`tail`" in bad.json["message"]
    finally:
        await server.close()


async def test_unreachable_agent_is_502(harness: Harness, project: Tokens) -> None:
    server = await fake_agent(harness, "h1", [])
    url = str(server.make_url("/"))
    await server.close()  # nothing listens there any more
    await harness.agent("h1").register(gpus=1, agent_url=url)
    nb = (await project.run()).json
    reply = await harness.call("GET", f"/v1/notebooks/{nb['id']}/logs", token=project.read)
    assert (reply.status, reply.code) == (502, "upstream_unavailable")


async def test_logs_of_a_failed_notebook_come_from_its_last_host(
    harness: Harness, project: Tokens
) -> None:
    """A FAILED notebook has no host any more, but the agent it ran on kept its last output:
    that is what a user needs to see why it failed."""
    seen: list[str] = []
    server = await fake_agent(harness, "h1", seen)
    try:
        await harness.agent("h1").register(gpus=1, agent_url=str(server.make_url("/")))
        nb = (await project.run()).json
        await harness.agent("h1").report(nb["id"], "FAILED")
        shown = await harness.call("GET", f"/v1/notebooks/{nb['id']}", token=project.read)
        assert shown.json["state"] == "FAILED" and shown.json["host"] is None
        reply = await harness.call("GET", f"/v1/notebooks/{nb['id']}/logs", token=project.read)
        assert reply.status == 200, reply.text
        assert nb["id"] in reply.text
        assert seen == [f"/v1/notebooks/{nb['id']}/logs"]
    finally:
        await server.close()


class BrokenAgentClient:
    """An injected agent client with a bug: the scheduler must answer 500 without internals."""

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def logs(self, *args: object) -> str:
        raise RuntimeError("secret internal detail")


async def test_unexpected_error_is_500_without_internals(tmp_path, clock, caplog) -> None:
    h = Harness(
        config=make_config(tmp_path), clock=clock, app_kwargs={"agent_client": BrokenAgentClient()}
    )
    await h.start()
    try:
        project = await h.project("alpha")
        await h.agent("h1").register(gpus=1)
        nb = (await project.run()).json
        reply = await h.call("GET", f"/v1/notebooks/{nb['id']}/logs", token=project.read)
        assert (reply.status, reply.code) == (500, "internal")
        assert "secret internal detail" not in reply.text
        assert "secret internal detail" in caplog.text  # logged with its context
    finally:
        await h.close()
