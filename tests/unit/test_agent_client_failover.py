"""The agent's signed client with several scheduler URLs: it moves to the next URL when one
gives no answer, sticks to the one that answered, signs each attempt anew, and takes the API's
own errors as answers. Real sockets on loopback: the fake scheduler and failures as they
happen (refused, a load balancer's 502/503/504 page, a replica that never answers)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from agent.client import SchedulerClient, SchedulerUnavailable
from common import wire
from common.errors import ApiError
from tests.fakes.scheduler import FakeScheduler
from tests.support.unanswering import Silent, refused_url

SECRET = b"s" * 32

REGISTER = wire.AgentRegister(
    cpus=4, memory_mb=1024, gpus=[], agent_url="http://127.0.0.1:1", version="test"
)
HEARTBEAT = wire.Heartbeat(gpus=[], containers=[])


async def serve(app: web.Application) -> TestServer:
    server = TestServer(app, host="127.0.0.1")
    # Closed under a live long-poll in one test: do not wait it out.
    await server.start_server(shutdown_timeout=0.5)
    return server


def url_of(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


@pytest.fixture
async def live() -> AsyncIterator[tuple[FakeScheduler, str]]:
    scheduler = FakeScheduler({"h1": SECRET})
    server = await serve(scheduler.app())
    yield scheduler, url_of(server)
    await server.close()


@pytest.mark.parametrize("dead", ["refused", "proxy 503", "proxy 502", "proxy 504", "silent"])
async def test_a_url_without_answer_is_passed_over_and_the_one_that_answers_sticks(
    live, proxies, dead: str
) -> None:
    scheduler, live_url = live
    proxy = proxies(int(dead[-3:])) if dead.startswith("proxy") else None
    silent = Silent() if dead == "silent" else None
    dead_url = proxy.url if proxy else silent.url if silent else refused_url()
    client = SchedulerClient([dead_url, live_url], "h1", SECRET, timeout_s=0.5)
    try:
        assert client.scheduler_url == dead_url
        reply = await client.register(REGISTER)
        assert reply.host == "h1" and len(scheduler.registrations) == 1
        assert client.scheduler_url == live_url
        for _ in range(3):
            assert (await client.heartbeat(HEARTBEAT)).known
        assert len(scheduler.heartbeats) == 3
        if proxy is not None:
            assert proxy.hits == 1  # only the first request went there
    finally:
        await client.close()
        if silent is not None:
            silent.close()


async def test_the_live_url_first_never_tries_the_others(live, proxies) -> None:
    scheduler, live_url = live
    proxy = proxies(503)
    client = SchedulerClient(f"{live_url},{proxy.url}", "h1", SECRET, timeout_s=0.5)
    try:
        await client.register(REGISTER)
        await client.heartbeat(HEARTBEAT)
        assert proxy.hits == 0 and len(scheduler.heartbeats) == 1
    finally:
        await client.close()


def canned(status: int, body: dict) -> web.Application:
    """An API replica answering every request with ``status`` and ``body``."""

    async def answer(request: web.Request) -> web.Response:
        return web.json_response(body, status=status)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    return app


@pytest.mark.parametrize(
    "status, code, raised",
    [
        (401, "unauthenticated", ApiError),
        (409, "conflict", ApiError),
        (500, "internal", SchedulerUnavailable),
        (503, "no_capacity", SchedulerUnavailable),
        (502, "upstream_unavailable", SchedulerUnavailable),
    ],
)
async def test_an_api_answer_is_not_failed_over_even_an_error(live, status, code, raised) -> None:
    scheduler, live_url = live
    first = await serve(canned(status, {"code": code, "message": "said the API"}))
    client = SchedulerClient([url_of(first), live_url], "h1", SECRET, timeout_s=0.5)
    try:
        with pytest.raises(raised):
            await client.register(REGISTER)
        assert scheduler.registrations == []
        assert client.scheduler_url == url_of(first)
    finally:
        await client.close()
        await first.close()


async def test_each_attempt_is_signed_anew_so_a_shared_replay_cache_lets_it_through(
    live,
) -> None:
    """A replica that checks the request (remembering its nonce in the cache replicas share)
    and dies before answering: the attempt at the next replica must carry a nonce of its own,
    or it would be refused as a replay."""
    scheduler, live_url = live

    async def checked_then_gone(request: web.Request) -> web.Response:
        scheduler.verifier.verify(
            request.method, request.raw_path, request.headers, await request.read()
        )
        assert request.transport is not None
        request.transport.close()
        await asyncio.sleep(5)
        raise AssertionError("unreachable: the connection is gone")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", checked_then_gone)
    dying = await serve(app)
    client = SchedulerClient([url_of(dying), live_url], "h1", SECRET, timeout_s=2)
    try:
        assert (await client.register(REGISTER)).host == "h1"
        assert len(scheduler.registrations) == 1
    finally:
        await client.close()
        await dying.close()


async def test_the_long_poll_moves_to_the_next_url_when_its_replica_goes_away() -> None:
    first, second = FakeScheduler({"h1": SECRET}), FakeScheduler({"h1": SECRET})
    first_server, second_server = await serve(first.app()), await serve(second.app())
    client = SchedulerClient(
        [url_of(first_server), url_of(second_server)], "h1", SECRET, timeout_s=2
    )
    try:
        assert (await client.assignments(None, 10)).version == first.version
        poll = asyncio.create_task(client.assignments(first.version, 10))
        await asyncio.sleep(0.2)
        assert not poll.done()  # waiting at the first replica
        second.bump()  # the second knows of a change
        await first_server.close()
        result = await asyncio.wait_for(poll, 5)
        assert result.version == second.version
        assert client.scheduler_url == url_of(second_server)
    finally:
        await client.close()
        await second_server.close()


async def test_no_answer_anywhere_names_every_url(proxies) -> None:
    refused, proxy = refused_url(), proxies(503)
    client = SchedulerClient([refused, proxy.url], "h1", SECRET, timeout_s=0.5)
    try:
        with pytest.raises(SchedulerUnavailable) as raised:
            await client.usage(wire.UsageBatch(items=[]))
        message = str(raised.value)
        assert message.startswith("POST /v1/agents/usage: no answer from ")
        assert f"{refused} (" in message
        assert f"{proxy.url} (HTTP 503 Service Unavailable)" in message
        assert client.scheduler_url == refused  # nothing answered: nothing moves
        # The next request tries them again, from the same one.
        with pytest.raises(SchedulerUnavailable):
            await client.usage(wire.UsageBatch(items=[]))
        assert proxy.hits == 2
    finally:
        await client.close()


async def test_a_switch_is_logged_once_subject_first(live, caplog) -> None:
    scheduler, live_url = live
    refused = refused_url()
    client = SchedulerClient([refused, live_url], "h1", SECRET, timeout_s=0.5)
    try:
        with caplog.at_level(logging.WARNING, logger="agent.client"):
            await client.register(REGISTER)
            await client.heartbeat(HEARTBEAT)
            await client.heartbeat(HEARTBEAT)
        [line] = [r.getMessage() for r in caplog.records if r.name == "agent.client"]
        assert line.startswith(f"host=h1 switched to scheduler {live_url}: no answer from ")
        assert refused in line
    finally:
        await client.close()


async def test_concurrent_requests_switch_once_and_never_back(live, proxies, caplog) -> None:
    scheduler, live_url = live
    proxy = proxies(503)
    client = SchedulerClient([proxy.url, live_url], "h1", SECRET, timeout_s=0.5)
    try:
        with caplog.at_level(logging.WARNING, logger="agent.client"):
            await asyncio.gather(*(client.heartbeat(HEARTBEAT) for _ in range(10)))
        assert client.scheduler_url == live_url
        assert len(scheduler.heartbeats) == 10
        switches = [r for r in caplog.records if "switched" in r.getMessage()]
        assert len(switches) == 1
        hits = proxy.hits
        await client.heartbeat(HEARTBEAT)
        assert proxy.hits == hits
    finally:
        await client.close()


def test_a_bad_url_is_refused_when_the_client_is_built() -> None:
    with pytest.raises(ValueError, match="scheduler_url: 'scheduler:8470' is not an http"):
        SchedulerClient("scheduler:8470", "h1", SECRET)


def test_proxy_pages_are_not_api_bodies() -> None:
    from tests.support.unanswering import PAGES

    for page in PAGES.values():
        with pytest.raises(json.JSONDecodeError):
            json.loads(page)
