"""The idle signal's measurements (issue 14): :class:`agent.activity.ActivityProbe` against
fake Jupyter Server and code-server APIs on real loopback ports, FakeInventory's GPUs and
FakeRuntime's CPU figures; the meter's rules; the signal in heartbeats through the Agent."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from agent.activity import ActivityProbe
from agent.proxy_access import ActivityMeter
from agent.proxy_paths import Editor
from agent.runtime import ContainerInfo, ContainerUsage
from common.states import NotebookState as S
from common.wire import Assignment, NotebookActivity
from tests.fakes.inventory import FakeClock, FakeInventory
from tests.fakes.runtime import FakeRuntime
from tests.unit.test_agent_app import (
    agent_config,
    agent_for,
    assignment,
    eventually,
    fake_scheduler,
    url_of,
)

TOKEN = "editor-token"


def iso(at: float) -> str:
    """A time as Jupyter Server writes it: ``2026-11-30T21:03:04.123456Z``."""
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


# ---------------------------------------------------------------- a fake editor


@dataclass
class FakeEditorApi:
    """Jupyter Server's ``api/kernels``, ``api/terminals``, ``api/status`` under ``base_url``
    and code-server's ``/healthz``, as far as the probe reads them. A request without the token,
    or a list call without ``no_track_activity``, is refused and kept in ``refused``."""

    base_url: str = "/notebooks/nb1/"
    kernels: Any = field(default_factory=list)
    terminals: Any = field(default_factory=list)
    status: Any = field(default_factory=dict)
    health: Any = field(default_factory=lambda: {"status": "expired", "lastHeartbeat": 0})
    #: Paths (under the base URL) answered 404, as a server with terminals turned off does.
    missing: set[str] = field(default_factory=set)
    #: Answers wait until the server closes (an editor that hangs).
    hang: bool = False
    #: Answer this text instead of JSON.
    garbage: str | None = None
    seen: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    #: The client's address of every request: a new one per connection.
    peers: set[tuple[str, int]] = field(default_factory=set)
    server: TestServer | None = None
    _closing: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def port(self) -> int:
        assert self.server is not None and self.server.port is not None
        return self.server.port

    def open_connections(self) -> int:
        assert self.server is not None and self.server.runner is not None
        server = self.server.runner.server
        assert server is not None
        return len(server.connections)

    async def start(self) -> FakeEditorApi:
        app = web.Application()
        base = "/" + self.base_url.strip("/") if self.base_url.strip("/") else ""
        app.router.add_get(f"{base}/api/kernels", self._listing(lambda: self.kernels))
        app.router.add_get(f"{base}/api/terminals", self._listing(lambda: self.terminals))
        app.router.add_get(f"{base}/api/status", self._answer(lambda: self.status, listing=False))
        app.router.add_get(f"{base}/healthz", self._answer(lambda: self.health, token=False))
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()
        return self

    async def close(self) -> None:
        self._closing.set()
        if self.server is not None:
            await self.server.close()

    def _listing(self, body: Callable[[], Any]) -> Callable[[web.Request], Any]:
        return self._answer(body, listing=True)

    def _answer(
        self, body: Callable[[], Any], *, listing: bool = False, token: bool = True
    ) -> Callable[[web.Request], Any]:
        async def handle(request: web.Request) -> web.StreamResponse:
            self.seen.append(request.path_qs)
            peer = request.transport.get_extra_info("peername") if request.transport else None
            self.peers.add(tuple(peer[:2]) if peer else ("?", len(self.seen)))
            if token and request.headers.get("Authorization") != f"token {TOKEN}":
                self.refused.append(f"no token: {request.path_qs}")
                return web.json_response({"message": "Forbidden"}, status=403)
            if listing and request.query.get("no_track_activity") != "1":
                # Jupyter Server would count this request as the user's activity.
                self.refused.append(f"tracked: {request.path_qs}")
                return web.json_response({"message": "tracked"}, status=400)
            if request.path.rpartition(self.base_url)[2] in self.missing:
                return web.json_response({"message": "Not Found"}, status=404)
            if self.hang:
                await self._closing.wait()
            if self.garbage is not None:
                return web.Response(text=self.garbage, content_type="application/json")
            return web.json_response(body())

        return handle


def free_port() -> int:
    """A loopback port nothing listens on (an editor that refuses connections)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- the rig


@dataclass
class Rig:
    clock: FakeClock
    meter: ActivityMeter
    inventory: FakeInventory
    runtime: FakeRuntime
    probe: ActivityProbe
    assignments: dict[str, Assignment] = field(default_factory=dict)
    editors: dict[str, Editor] = field(default_factory=dict)

    def run(self, notebook: str, port: int | None, **overrides: Any) -> Assignment:
        """``notebook`` RUNNING here, its editor published on ``port``, its container up."""
        fields: dict[str, Any] = dict(
            notebook=notebook,
            state=S.RUNNING,
            gpus=[],
            base_url=f"/notebooks/{notebook}/",
            access_token=TOKEN,
        )
        fields.update(overrides)
        item = assignment(**fields)
        self.assignments[notebook] = item
        self.editors[notebook] = Editor(
            notebook=notebook,
            state=S.RUNNING,
            port=port,
            base_url=item.base_url,
            access_token=item.access_token,
            unsecure_http=False,
        )
        self.runtime.add_existing(
            ContainerInfo(notebook=notebook, generation=1, gpus=list(item.gpus), host_port=port)
        )
        return item

    def latest(self, notebook: str) -> tuple[float, str] | None:
        seen = self.meter.get(notebook)
        return None if seen is None else (seen.last_activity_at, seen.signal)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    clock = FakeClock()
    meter = ActivityMeter(clock)
    inventory = FakeInventory(["NVIDIA H100"] * 3)
    runtime = FakeRuntime()
    made: Rig | None = None

    def editor(notebook: str) -> Editor | None:
        assert made is not None
        return made.editors.get(notebook)

    probe = ActivityProbe(
        lambda: made.assignments if made is not None else {},
        editor,
        runtime,
        inventory,
        meter,
        clock=clock,
        timeout_s=0.5,
    )
    made = Rig(clock, meter, inventory, runtime, probe)
    yield made
    await probe.close()


@pytest.fixture
async def api() -> AsyncIterator[FakeEditorApi]:
    editor = await FakeEditorApi().start()
    yield editor
    await editor.close()


async def connections_closed(api: FakeEditorApi) -> None:
    """Each request came on a connection of its own, and none stays open."""
    assert len(api.peers) == len(api.seen)
    await eventually("the probe's connections closed", lambda: api.open_connections() == 0)


# ---------------------------------------------------------------- Jupyter


async def test_a_busy_kernel_is_activity_now(rig: Rig, api: FakeEditorApi) -> None:
    now = rig.clock()
    api.kernels = [
        {"id": "k1", "execution_state": "idle", "last_activity": iso(now - 600)},
        {"id": "k2", "execution_state": "busy", "last_activity": iso(now - 300)},
    ]
    api.status = {"last_activity": iso(now - 900), "connections": 0, "kernels": 2}
    rig.run("nb1", api.port, activity_api="jupyter")
    await rig.probe.tick()
    assert rig.latest("nb1") == (now, "kernel busy")
    # With the notebook's token, under its base URL; the list calls not tracked as activity.
    assert api.refused == []
    assert sorted(api.seen) == [
        "/notebooks/nb1/api/kernels?no_track_activity=1",
        "/notebooks/nb1/api/status",
        "/notebooks/nb1/api/terminals?no_track_activity=1",
    ]
    await connections_closed(api)
    # Still busy a tick later: activity again, sent again.
    rig.meter.acknowledge(rig.meter.pending())
    rig.clock.advance(30)
    await rig.probe.tick()
    assert rig.latest("nb1") == (now + 30, "kernel busy")
    assert [a.notebook for a in rig.meter.pending()] == ["nb1"]


async def test_idle_kernels_are_activity_when_they_last_were(rig: Rig, api: FakeEditorApi) -> None:
    now = rig.clock()
    api.kernels = [
        {"id": "k1", "execution_state": "idle", "last_activity": iso(now - 600)},
        {"id": "k2", "execution_state": "idle", "last_activity": iso(now - 300)},
        # A dead kernel is no work now; when it last did something still counts.
        {"id": "k3", "execution_state": "dead", "last_activity": iso(now - 1000)},
    ]
    api.status = {"last_activity": iso(now - 900)}
    rig.run("nb1", api.port, activity_api="jupyter")
    await rig.probe.tick()
    assert rig.latest("nb1") == (now - 300, "kernel")
    assert rig.meter.pending() == [NotebookActivity("nb1", now - 300, 0, 0, signal="kernel")]
    # Seen again, unchanged, a tick later: nothing new to send.
    rig.meter.acknowledge(rig.meter.pending())
    rig.clock.advance(30)
    await rig.probe.tick()
    assert rig.meter.pending() == []
    await connections_closed(api)


async def test_a_dead_kernel_alone_is_not_activity_now(rig: Rig, api: FakeEditorApi) -> None:
    now = rig.clock()
    api.kernels = [{"id": "k1", "execution_state": "dead", "last_activity": iso(now - 1000)}]
    rig.run("nb1", api.port, activity_api="jupyter")
    await rig.probe.tick()
    assert rig.latest("nb1") == (now - 1000, "kernel")


async def test_terminals_and_the_servers_own_activity(rig: Rig, api: FakeEditorApi) -> None:
    now = rig.clock()
    api.kernels = [{"id": "k1", "execution_state": "idle", "last_activity": iso(now - 600)}]
    api.terminals = [{"name": "1", "last_activity": iso(now - 60)}]
    api.status = {"last_activity": iso(now - 900)}
    rig.run("nb1", api.port, activity_api="jupyter")
    await rig.probe.tick()
    assert rig.latest("nb1") == (now - 60, "terminal")
    # An API call from inside the container shows in /api/status only.
    api.status = {"last_activity": iso(now - 10)}
    await rig.probe.tick()
    assert rig.latest("nb1") == (now - 10, "Jupyter API")
    assert api.refused == []


async def test_a_server_without_terminals_still_tells_its_kernels(
    rig: Rig, api: FakeEditorApi
) -> None:
    api.kernels = [{"id": "k1", "execution_state": "busy"}]
    api.missing = {"api/terminals"}
    rig.run("nb1", api.port, activity_api="jupyter")
    await rig.probe.tick()
    assert rig.latest("nb1") == (rig.clock(), "kernel busy")
    assert "/notebooks/nb1/api/terminals?no_track_activity=1" in api.seen


async def test_a_time_ahead_of_the_clock_is_taken_as_now(rig: Rig, api: FakeEditorApi) -> None:
    now = rig.clock()
    api.terminals = [{"name": "1", "last_activity": iso(now + 86_400)}]
    rig.run("nb1", api.port, activity_api="jupyter")
    await rig.probe.tick()
    assert rig.latest("nb1") == (now, "terminal")


# ---------------------------------------------------------------- code-server


@pytest.fixture
async def code_server() -> AsyncIterator[FakeEditorApi]:
    editor = await FakeEditorApi(base_url="/").start()
    yield editor
    await editor.close()


async def test_code_server_alive_is_activity_now(rig: Rig, code_server: FakeEditorApi) -> None:
    now = rig.clock()
    code_server.health = {"status": "alive", "lastHeartbeat": int((now - 20) * 1000)}
    rig.run("nb1", code_server.port, activity_api="code-server", base_url="/")
    await rig.probe.tick()
    assert rig.latest("nb1") == (now, "code-server")
    assert code_server.seen == ["/healthz"]
    # Our connection must not outlive the probe: code-server beats while any is open.
    await connections_closed(code_server)


async def test_code_server_expired_is_activity_at_its_last_heartbeat(
    rig: Rig, code_server: FakeEditorApi
) -> None:
    now = rig.clock()
    code_server.health = {"status": "expired", "lastHeartbeat": int((now - 3600) * 1000)}
    rig.run("nb1", code_server.port, activity_api="code-server", base_url="/")
    await rig.probe.tick()
    assert rig.latest("nb1") == (now - 3600, "code-server")
    # Never beaten since it started: nothing.
    code_server.health = {"status": "expired", "lastHeartbeat": 0}
    rig.run("nb2", code_server.port, activity_api="code-server", base_url="/")
    await rig.probe.tick()
    assert rig.latest("nb2") is None
    await connections_closed(code_server)


# ---------------------------------------------------------------- GPUs and CPUs


async def test_a_busy_gpu_of_the_notebooks_own_is_activity_now(rig: Rig) -> None:
    gpu0, gpu1, gpu2 = rig.inventory.gpus
    gpu0.utilization_pct, gpu1.utilization_pct, gpu2.utilization_pct = 3, 87, 95
    rig.run("nb1", free_port(), gpus=[gpu0.uuid, gpu1.uuid])
    rig.run("nb2", free_port(), gpus=[gpu2.uuid], gpu_busy_pct=99.0)  # busy, not busy enough
    rig.run("nb3", free_port(), gpus=[gpu0.uuid])  # another's busy GPU is not its activity
    await rig.probe.tick()
    assert rig.latest("nb1") == (rig.clock(), "GPU 87%")
    assert rig.latest("nb2") is None and rig.latest("nb3") is None
    assert rig.inventory.snapshots == 1  # once a tick, not once a notebook


async def test_cpu_use_is_a_rate_over_the_cpus_given(rig: Rig) -> None:
    rig.run("nb1", free_port(), cpu=2)
    rig.runtime.usage_figures["nb1"] = ContainerUsage(100.0, 1 << 20)
    await rig.probe.tick()
    assert rig.latest("nb1") is None  # a first sample: no rate yet
    rig.clock.advance(10)
    rig.runtime.usage_figures["nb1"] = ContainerUsage(108.0, 1 << 20)  # 8 s of 2 CPUs x 10 s
    await rig.probe.tick()
    busy_at = rig.clock()
    assert rig.latest("nb1") == (busy_at, "CPU 40%")
    rig.clock.advance(10)
    rig.runtime.usage_figures["nb1"] = ContainerUsage(108.5, 1 << 20)  # 2.5 %: below 5
    await rig.probe.tick()
    assert rig.latest("nb1") == (busy_at, "CPU 40%")
    # Restarted: the counter went back; a new first sample.
    rig.clock.advance(10)
    rig.runtime.usage_figures["nb1"] = ContainerUsage(1.0, 1 << 20)
    await rig.probe.tick()
    assert rig.latest("nb1") == (busy_at, "CPU 40%")
    rig.clock.advance(10)
    rig.runtime.usage_figures["nb1"] = ContainerUsage(11.0, 1 << 20)
    await rig.probe.tick()
    assert rig.latest("nb1") == (rig.clock(), "CPU 50%")


async def test_a_notebook_that_left_starts_its_cpu_samples_again(rig: Rig) -> None:
    rig.run("nb1", free_port(), cpu=1)
    rig.runtime.usage_figures["nb1"] = ContainerUsage(100.0, 1 << 20)
    await rig.probe.tick()
    del rig.assignments["nb1"]
    await rig.probe.tick()
    rig.run("nb1", free_port(), cpu=1)
    rig.clock.advance(10)
    rig.runtime.usage_figures["nb1"] = ContainerUsage(110.0, 1 << 20)
    await rig.probe.tick()
    assert rig.latest("nb1") is None  # the sample before it left is forgotten


# ---------------------------------------------------------------- failures


async def test_editors_that_fail_record_nothing_and_stop_no_other(rig: Rig) -> None:
    now = rig.clock()
    slow = await FakeEditorApi(base_url="/notebooks/slow/", hang=True).start()
    garbage = await FakeEditorApi(base_url="/notebooks/garbage/", garbage="<html>oops").start()
    odd = await FakeEditorApi(base_url="/notebooks/odd/", kernels={"message": "?"}).start()
    odd.terminals, odd.status = [{"name": "1", "last_activity": "yesterday"}], ["?"]
    good = await FakeEditorApi(base_url="/notebooks/good/").start()
    good.kernels = [{"id": "k", "execution_state": "busy"}]
    try:
        rig.run("refusing", free_port(), activity_api="jupyter")
        rig.run("slow", slow.port, activity_api="jupyter")
        rig.run("garbage", garbage.port, activity_api="jupyter")
        rig.run("odd", odd.port, activity_api="jupyter")
        rig.run("good", good.port, activity_api="jupyter")
        # Its editor refuses, but its GPU is busy: that still counts.
        rig.inventory.gpus[0].utilization_pct = 50
        rig.run("gpu", free_port(), activity_api="jupyter", gpus=[rig.inventory.gpus[0].uuid])
        await rig.probe.tick()
        assert {a.notebook: a.signal for a in rig.meter.pending()} == {
            "good": "kernel busy",
            "gpu": "GPU 50%",
        }
        assert rig.latest("good") == (now, "kernel busy")
    finally:
        for api in (slow, garbage, odd, good):
            await api.close()


async def test_only_notebooks_running_here_are_probed(rig: Rig, api: FakeEditorApi) -> None:
    api.kernels = [{"id": "k", "execution_state": "busy"}]
    rig.run("nb1", api.port, activity_api="jupyter")
    # Its container stopped: no port to ask.
    rig.editors["nb1"] = Editor("nb1", S.RUNNING, None, "/notebooks/nb1/", TOKEN, False)
    await rig.probe.tick()
    rig.editors["nb1"] = Editor("nb1", S.STOPPING, api.port, "/notebooks/nb1/", TOKEN, False)
    await rig.probe.tick()
    assert api.seen == [] and rig.latest("nb1") is None


# ---------------------------------------------------------------- the meter


def test_the_meter_never_goes_back_and_sends_only_news() -> None:
    clock = FakeClock()
    now = clock()
    meter = ActivityMeter(clock)
    meter.record("nb1", signal="kernel busy")
    assert meter.pending() == [NotebookActivity("nb1", now, 0, 0, signal="kernel busy")]
    meter.acknowledge(meter.pending())
    # Older, or the same time again: neither time nor signal changes, nothing to send.
    meter.record("nb1", at=now - 60, signal="terminal")
    meter.record("nb1", at=now, signal="GPU 90%")
    assert meter.pending() == []
    assert meter.get("nb1") == NotebookActivity("nb1", now, 0, 0, signal="kernel busy")
    # Bytes carried at an older time still add, and are news.
    meter.record("nb1", at=now - 60, bytes_in=10)
    assert meter.pending() == [NotebookActivity("nb1", now, 10, 0, signal="kernel busy")]
    meter.acknowledge(meter.pending())
    # Later: the new time and what showed it.
    clock.advance(5)
    meter.record("nb1", signal="SSH")
    assert meter.pending() == [NotebookActivity("nb1", now + 5, 10, 0, signal="SSH")]


# ---------------------------------------------------------------- through the agent


async def test_heartbeats_carry_what_showed_the_activity(tmp_path: Path) -> None:
    scheduler, server = await fake_scheduler()
    jupyter = await FakeEditorApi().start()
    jupyter.kernels = [{"id": "k", "execution_state": "busy"}]
    runtime = FakeRuntime()
    runtime.ports["nb1"] = jupyter.port
    agent = agent_for(agent_config(tmp_path, url_of(server)), runtime)
    await agent.start()
    try:
        assert any(loop.name == "activity" for loop in agent.loops)
        scheduler.assignments = [
            assignment(activity_api="jupyter", base_url="/notebooks/nb1/", access_token=TOKEN)
        ]
        scheduler.bump()
        await eventually(
            "RUNNING report", lambda: any(t.state == S.RUNNING for t in scheduler.transitions)
        )
        await agent.activity_probe.tick()  # its loop runs every activity_interval_s

        def carried() -> list[NotebookActivity]:
            return [a for _, hb in scheduler.heartbeats for a in hb.activity]

        await eventually("a heartbeat carrying the activity", lambda: bool(carried()))
        assert {(a.notebook, a.signal) for a in carried()} == {("nb1", "kernel busy")}
        assert jupyter.refused == []
    finally:
        await agent.stop()
        await jupyter.close()
        await server.close()
