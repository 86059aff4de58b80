"""Debian's HAProxy in front of two scheduler replicas, with ``deploy/haproxy.cfg`` as shipped.

Real parts only: a fresh PostgreSQL database migrated with ``nbfleet-scheduler migrate``, two
``nbfleet-scheduler run`` processes on it, a real ``haproxy`` running the documented file (the
test's addresses come in through the environment variables the file reads), the real CLI as
a process, plain HTTP, and the agent's own protocol client. Everything goes through the load
balancer, except reads that check what each replica sees on its own port.

Which replica answered is told by the replica itself: each one's catalog describes its
framework by the replica's name, so a ``GET /v1/catalog`` through the load balancer names it.

On failure, every replica's log, HAProxy's log and its ``show stat`` are printed. Missing
HAProxy or PostgreSQL fails the test, saying what to install or set.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import msgspec
import pytest
from aiohttp import web

from agent.client import SchedulerClient, SchedulerUnavailable
from common import wire
from common.errors import ApiError
from common.forwarding import WS_HEARTBEAT_S
from common.states import NotebookState
from scheduler.agent_client import EXEC_GRACE_S
from scheduler.agents import MAX_WAIT_S
from tests.e2e.cluster import wait_for
from tests.support.load_balancer import HAPROXY_CFG, ROUTERS, Stack, haproxy_binary
from tests.support.postgres import PostgresDatabases

pytestmark = pytest.mark.integration

REPLICAS = {"replica-1", "replica-2"}


@pytest.fixture
def stack(tmp_path: Path, postgres_databases: PostgresDatabases) -> Iterator[Stack]:
    haproxy_binary()  # fails at once, before anything starts, when HAProxy is missing
    database_url = postgres_databases.empty()
    running = Stack(tmp_path, database_url)
    try:
        running.start()
    except BaseException:
        print(running.dump())
        running.stop()
        postgres_databases.drop(database_url)
        raise
    try:
        yield running
    finally:
        running.stop()
        postgres_databases.drop(database_url)


@contextlib.contextmanager
def logs_on_failure(stack: Stack) -> Iterator[None]:
    try:
        yield
    except BaseException:
        print(stack.dump())
        raise


#: HAProxy's time units, in seconds; a bare number is milliseconds.
UNITS = {"us": 1e-6, "ms": 1e-3, "": 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400}


def seconds(value: str) -> float:
    """An HAProxy time (``65s``, ``1h``, ``500ms``) in seconds."""
    number, unit = re.fullmatch(r"(\d+)(us|ms|s|m|h|d|)", value).groups()
    return int(number) * UNITS[unit]


def test_the_shipped_config_is_valid_and_outlasts_the_schedulers_long_requests() -> None:
    """``haproxy -c`` accepts the file with its own defaults (no variable set), and its
    timeouts are longer than what the scheduler may take by design, so a change there that
    the file does not follow fails here, not in production."""
    done = subprocess.run(
        [haproxy_binary(), "-c", "-f", str(HAPROXY_CFG)],
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    text = HAPROXY_CFG.read_text()

    def timeout(name: str) -> float:
        [value] = re.findall(rf"^\s+timeout {name} (\S+)$", text, re.MULTILINE)
        return seconds(value)

    def set_timeout(path: str) -> float:
        [value] = re.findall(rf"set-timeout server (\S+) if .*{re.escape(path)}", text)
        return seconds(value)

    fields = msgspec.inspect.type_info(wire.ExecRequest).fields
    exec_limit = next(f.type.le for f in fields if f.name == "timeout_s")
    assert timeout("server") > MAX_WAIT_S + 15  # the assignments long-poll, with room
    assert timeout("client") >= timeout("server")
    assert set_timeout("/exec$") >= exec_limit + EXEC_GRACE_S
    assert set_timeout("/logs$") >= 3600  # a followed log may be quiet for long
    assert set_timeout("path_beg /notebooks/") >= timeout("server")
    # aiohttp's client (the agent's) closes a connection idle for 15 s: it closes first.
    assert timeout("http-keep-alive") > 15
    # The scheduler pings a silent WebSocket client after WS_HEARTBEAT_S and waits half that.
    assert timeout("tunnel") > 1.5 * WS_HEARTBEAT_S


def test_replicas_behind_haproxy_share_state_and_survive_a_kill(stack: Stack) -> None:
    with logs_on_failure(stack):
        # Requests through the one address reach both replicas.
        answered = Counter(stack.answered_by() for _ in range(10))
        for _ in range(4):
            shown = stack.cli("catalog", "-o", "json")
            assert shown.returncode == 0, shown.stderr
            answered[json.loads(shown.stdout)["frameworks"][0]["description"]] += 1
        assert set(answered) == REPLICAS, answered

        # What is written through the load balancer, each replica reads on its own port.
        for args in (
            ["admin", "project", "create", "shared"],
            ["admin", "project", "quota", "shared", "--gpus", "7", "--cpus", "21"],
        ):
            done = stack.cli(*args, admin=True)
            assert done.returncode == 0, done.stderr
        created = stack.cli(
            "admin", "token", "create", "--project", "shared", "-o", "json", admin=True
        )
        assert created.returncode == 0, created.stderr
        shared_token = json.loads(created.stdout)["token"]
        for replica in stack.replicas:
            quota = stack.cli(
                "admin", "project", "quota", "shared", "-o", "json", url=replica.url, admin=True
            )
            assert quota.returncode == 0, f"{replica.name}: {quota.stderr}"
            assert json.loads(quota.stdout)["quota"]["gpus"] == 7, replica.name
            mine = stack.cli("quota", "-o", "json", url=replica.url, token=shared_token)
            assert mine.returncode == 0, f"{replica.name}: {mine.stderr}"
            assert json.loads(mine.stdout)["name"] == "shared", replica.name

        # kill -9 one replica: no request through the load balancer fails, before HAProxy
        # notices (the refused connection is retried on the other replica) or after.
        victim, survivor = stack.replicas
        server = stack.lb.names[0]  # the victim's server line in deploy/haproxy.cfg
        before = stack.lb.servers()["BACKEND"]
        victim.kill()
        failures: list[str] = []
        answered.clear()
        rounds = 0

        def probe_round() -> None:
            """Plain HTTP and CLI calls through the load balancer; whatever goes wrong is
            recorded, never raised (wait_for would take an exception for "not yet")."""
            nonlocal rounds
            rounds += 1
            for _ in range(6):
                for path, token in (("/health", ""), ("/v1/catalog", stack.token)):
                    try:
                        status, body = stack.get(path, token=token)
                    except OSError as exc:
                        failures.append(f"round {rounds}: GET {path}: {exc!r}")
                        continue
                    if status != 200:
                        failures.append(f"round {rounds}: GET {path}: {status} {body[:200]!r}")
                    elif path == "/v1/catalog":
                        answered[json.loads(body)["frameworks"][0]["description"]] += 1
            for args, admin in (
                (["admin", "project", "list", "-o", "json"], True),
                (["admin", "project", "create", f"after-kill-{rounds}"], True),
                (["quota", "-o", "json"], False),
            ):
                done = stack.cli(*args, admin=admin)
                if done.returncode != 0:
                    failures.append(f"round {rounds}: nbfleet {' '.join(args)}: {done.stderr}")

        def victim_down() -> bool:
            probe_round()
            return stack.lb.servers()[server]["status"].startswith("DOWN")

        wait_for("HAProxy to mark the killed replica DOWN", victim_down, 30, interval_s=0)
        probe_round()
        assert failures == []
        assert set(answered) == {survivor.name}, answered
        # Some of those requests went to the dead replica first and were redispatched.
        after = stack.lb.servers()["BACKEND"]
        assert int(after["wredis"]) > int(before["wredis"]), (before, after)

        # Back, it takes traffic again, and nothing fails meanwhile.
        victim.start()
        answered.clear()

        def victim_answers() -> bool:
            probe_round()
            return victim.name in answered

        wait_for(f"{victim.name} to answer through the load balancer again", victim_answers, 30)
        assert failures == []
        assert stack.lb.servers()[server]["status"] == "UP"
        listed = stack.cli("admin", "project", "list", "-o", "json", admin=True)
        assert listed.returncode == 0, listed.stderr
        names = {p["name"] for p in json.loads(listed.stdout)}
        assert {f"after-kill-{n}" for n in range(1, rounds + 1)} <= names


async def until_known(call: Callable[[], Awaitable[object]], within_s: float = 15) -> None:
    """``call()`` again while it is refused as unauthenticated: a replica learns of a host
    added meanwhile when that host first signs, then reloads its secrets (seconds)."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            await call()
            return
        except ApiError as exc:
            if exc.code != "unauthenticated" or time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.5)


class EditorStandIn:
    """The agent's side of ``/notebooks/{id}/...``, where the scheduler forwards a running
    notebook's requests: an HTTP request is answered with what arrived (path, Host, the
    forwarding headers); a WebSocket echoes each text message back."""

    def __init__(self) -> None:
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/notebooks/{id}/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            async for message in ws:
                if message.type == aiohttp.WSMsgType.TEXT:
                    await ws.send_str(f"echo {message.data}")
            return ws
        return web.json_response(
            {
                "path": request.path,
                "host": request.host,
                "x_forwarded_for": request.headers.get("X-Forwarded-For"),
                "x_forwarded_proto": request.headers.get("X-Forwarded-Proto"),
                "forwarded": request.headers.get("Forwarded"),
            }
        )


async def test_agents_long_polls_and_editor_websockets_pass_through_haproxy(
    stack: Stack,
) -> None:
    """An agent that knows only the load balancer's URL registers, heartbeats, long-polls and
    reports through it (signed requests arrive intact); its notebook's stable URL works
    through it for HTTP and WebSockets; a long-poll held for the scheduler's longest wait is
    answered, not cut by the proxy."""
    host_id = "lb-host"
    editor = EditorStandIn()
    client: SchedulerClient | None = None
    beating: asyncio.Task | None = None
    poll: asyncio.Task | None = None
    with logs_on_failure(stack):
        try:
            added = await asyncio.to_thread(stack.replicas[0].command, "add-host", host_id)
            secret = added.strip().splitlines()[-1].encode()
            await editor.start()
            client = SchedulerClient(stack.lb.url, host_id, secret)
            registration = wire.AgentRegister(
                cpus=4, memory_mb=8192, gpus=[], agent_url=editor.url, version="test"
            )
            await until_known(lambda: client.register(registration))
            # Each replica has loaded the new host's secret before the test goes on (the
            # agent would retry meanwhile); checked at each one's own port.
            for replica in stack.replicas:
                direct = SchedulerClient(replica.url, host_id, secret)
                try:
                    await until_known(lambda c=direct: c.heartbeat(wire.Heartbeat()))
                finally:
                    await direct.close()
            notebooks: list[str] = []
            heartbeat_errors: list[str] = []

            async def heartbeats() -> None:
                """As an agent's loop: every failure is kept, and the loop goes on."""
                while True:
                    try:
                        await client.heartbeat(wire.Heartbeat(containers=notebooks))
                    except (ApiError, SchedulerUnavailable) as exc:
                        heartbeat_errors.append(repr(exc))
                    await asyncio.sleep(0.5)

            beating = asyncio.create_task(heartbeats())
            run = await asyncio.to_thread(
                stack.cli, "notebook", "run", "tiny", "httpd", "--cpu", "1", "-o", "json"
            )
            assert run.returncode == 0, run.stderr
            notebook = json.loads(run.stdout)
            assert (notebook["state"], notebook["host"]) == ("STARTING", host_id)
            notebook_id = notebook["id"]
            notebooks.append(notebook_id)

            assigned = await client.assignments(None, 0)
            [assignment] = assigned.items
            assert assignment.notebook == notebook_id
            reply = await client.transitions(
                wire.TransitionBatch(
                    items=[
                        wire.Transition(
                            notebook=notebook_id,
                            generation=assignment.generation,
                            state=NotebookState.RUNNING,
                            reason="editor answers",
                            at=time.time(),
                        )
                    ]
                )
            )
            assert [r.outcome for r in reply.items] == ["applied"], reply
            current = await client.assignments(None, 0)

            # Nothing changes for this host from here on: the scheduler holds this one for
            # its longest wait while the rest runs.
            polled_at = time.monotonic()
            poll = asyncio.create_task(client.assignments(current.version, MAX_WAIT_S))

            shown = await asyncio.to_thread(stack.cli, "notebook", "get", notebook_id, "-o", "json")
            assert shown.returncode == 0, shown.stderr
            shown_notebook = json.loads(shown.stdout)
            assert shown_notebook["state"] == "RUNNING"
            # The URL names the address the user reached (Host kept, scheme from HAProxy).
            assert shown_notebook["url"] == f"{stack.lb.url}/notebooks/{notebook_id}/"

            async with aiohttp.ClientSession() as session:
                forged = {
                    "X-Forwarded-For": "203.0.113.9",
                    "X-Forwarded-Proto": "https",
                    "Forwarded": "for=203.0.113.9;proto=https;host=elsewhere.example",
                }
                url = f"{stack.lb.url}/notebooks/{notebook_id}/api/status?x=1"
                async with session.get(url, headers=forged) as resp:
                    assert resp.status == 200, await resp.text()
                    seen = await resp.json()
                assert seen == {
                    "path": f"/notebooks/{notebook_id}/api/status",
                    "host": f"127.0.0.1:{stack.lb.port}",
                    # HAProxy's client, then the scheduler's peer (HAProxy); the forged
                    # headers are gone.
                    "x_forwarded_for": "127.0.0.1, 127.0.0.1",
                    "x_forwarded_proto": "http",
                    "forwarded": None,
                }

                ws_url = f"ws://127.0.0.1:{stack.lb.port}/notebooks/{notebook_id}/api/kernels/k"
                async with session.ws_connect(ws_url) as ws:
                    for n in range(3):
                        await ws.send_str(f"message {n}")
                        echoed = await asyncio.wait_for(ws.receive(), 10)
                        assert (echoed.type, echoed.data) == (
                            aiohttp.WSMsgType.TEXT,
                            f"echo message {n}",
                        )

            answered = await asyncio.wait_for(poll, MAX_WAIT_S + 30)
            waited = time.monotonic() - polled_at
            assert heartbeat_errors == []
            assert answered.version == current.version, answered
            assert waited >= MAX_WAIT_S - 1, f"the long-poll came back after {waited:.1f}s"

            # The stable URL went to the routers, not the replicas...
            assert int(stack.lb.servers(ROUTERS)["BACKEND"]["stot"]) > 0
            # ...so it outlives every replica: the notebook's editor still answers through
            # the load balancer, from what its router remembers.
            beating.cancel()
            for replica in stack.replicas:
                replica.kill()
            async with aiohttp.ClientSession() as session:
                url = f"{stack.lb.url}/notebooks/{notebook_id}/api/status?x=2"
                async with session.get(url) as resp:
                    assert resp.status == 200, await resp.text()
                    assert (await resp.json())["path"] == f"/notebooks/{notebook_id}/api/status"
                ws_url = f"ws://127.0.0.1:{stack.lb.port}/notebooks/{notebook_id}/api/kernels/k"
                async with session.ws_connect(ws_url) as ws:
                    await ws.send_str("no replica")
                    echoed = await asyncio.wait_for(ws.receive(), 10)
                    assert echoed.data == "echo no replica"
        finally:
            for task in (beating, poll):
                if task is not None:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
            if client is not None:
                await client.close()
            await editor.close()
