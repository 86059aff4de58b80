"""The agent process: wiring, background loops and the agent's own HTTP server.

:class:`Agent` takes its external systems by injection (runtime, inventory, object store,
scheduler client, clock, editor probe); :func:`build_agent` supplies the real ones from an
:class:`AgentConfig`. Loops (each a :class:`Loop` with start/stop/tick):

* heartbeat: registers, then heartbeats at the scheduler's interval; ``known=false`` → register;
* assignments: long-polls ``/v1/agents/assignments`` and runs a reconcile tick on every answer;
* reconcile: a tick every ``reconcile_interval_s`` (exits, editor readiness, timeouts);
* report: flushes the outbox; usage: queues billed minutes every ``usage_interval_s``;
* spool: writes what the outbox holds to ``state_dir/outbox.json`` when it changed, so reports
  and minutes survive an agent restart during a scheduler outage (read back at construction).

HTTP: ``GET /health`` (open) and ``GET /v1/notebooks/{id}/logs?tail=N`` (signed by the scheduler
with this host's secret). Stopping the agent never stops notebooks: they are adopted at the next
start.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from importlib import metadata

from aiohttp import web

from agent.client import Backoff, SchedulerClient
from agent.gpus import GpuInventory, NvmlInventory
from agent.objectstore import ObjectStore, S3ObjectStore
from agent.reconcile import Probe, Reconciler, http_probe
from agent.report import Outbox
from agent.runtime import ContainerRuntime, DockerRuntime, NoSuchContainer, host_memory_mb
from agent.spool import Spool
from agent.workspace.host import HostWorkspaces
from common import wire
from common.auth import Verifier
from common.config import AgentConfig, split_hostport
from common.errors import ApiError

log = logging.getLogger(__name__)

LONG_POLL_S = 25.0
#: How soon a change to the outbox is on disk; a check of a counter when nothing changed.
SPOOL_INTERVAL_S = 0.25
OUTBOX_SPOOL = "outbox.json"
MAX_LOG_TAIL = 10000


def version() -> str:
    try:
        return metadata.version("nbfleet")
    except metadata.PackageNotFoundError:
        return "0.1.0"


class Loop:
    """Runs ``tick`` forever: after a success waits ``interval()`` seconds, after a failure a
    jittered backoff. One failing tick is logged and the loop continues."""

    def __init__(
        self,
        name: str,
        tick: Callable[[], Awaitable[None]],
        interval: Callable[[], float],
        *,
        backoff: Backoff | None = None,
    ) -> None:
        self.name = name
        self.tick = tick
        self.interval = interval
        self.backoff = backoff or Backoff()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"loop-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
                self.backoff.reset()
                delay = self.interval()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = self.backoff.next_delay()
                log.warning("loop=%s failed (%s); retrying in %.1fs", self.name, exc, delay)
            await asyncio.sleep(delay)


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        *,
        host_id: str,
        secret: bytes,
        runtime: ContainerRuntime,
        inventory: GpuInventory,
        store: ObjectStore,
        client: SchedulerClient,
        clock: Callable[[], float] = time.time,
        probe: Probe = http_probe,
    ) -> None:
        self.config = config
        self.host_id = host_id
        self.secret = secret
        self.runtime = runtime
        self.inventory = inventory
        self.store = store
        self.client = client
        self.clock = clock
        self.outbox = Outbox(client, Spool(os.path.join(config.state_dir, OUTBOX_SPOOL)))
        self.workspaces = HostWorkspaces(
            store,
            config.workspace_bucket,
            config.workspaces_dir,
            config.scratch_dir,
            concurrency=config.sync_concurrency,
            state_dir=config.state_dir,
            retention_last=config.retention_last,
            retention_daily=config.retention_daily,
        )
        self.reconciler = Reconciler(
            config, runtime, self.workspaces, self.outbox, clock=clock, probe=probe
        )
        self.verifier = Verifier(lambda host: secret if host == host_id else None)
        self.heartbeat_interval_s = 10.0
        self.registered = asyncio.Event()
        self.assignments_version: int | None = None
        self.agent_url = ""
        self._runner: web.AppRunner | None = None
        self.loops = [
            Loop("heartbeat", self.heartbeat_tick, lambda: self.heartbeat_interval_s),
            Loop("assignments", self.assignments_tick, lambda: 0.0),
            Loop("reconcile", self.reconciler.tick, lambda: config.reconcile_interval_s),
            Loop("report", self.outbox.tick, lambda: 0.5),
            Loop("usage", self.usage_tick, lambda: config.usage_interval_s),
            Loop("spool", self.outbox.save, lambda: SPOOL_INTERVAL_S),
        ]

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        for directory in (
            self.config.workspaces_dir,
            self.config.scratch_dir,
            self.config.volumes_dir,
        ):
            os.makedirs(directory, exist_ok=True)
        await self.reconciler.adopt()
        await self._start_http()
        for loop in self.loops:
            loop.start()
        log.info("host=%s agent started, serving %s", self.host_id, self.agent_url)

    async def stop(self) -> None:
        for loop in self.loops:
            await loop.stop()
        await self.reconciler.close()
        await self.reconciler.volumes.close()
        try:
            await self.outbox.tick()
        except Exception as exc:
            log.warning(
                "host=%s reports not sent at shutdown stay in the spool for the next start: %s",
                self.host_id,
                exc,
            )
        try:
            await self.outbox.save()
        except OSError as exc:
            log.error("host=%s unsent reports could not be spooled, lost: %s", self.host_id, exc)
        self.outbox.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.client.close()
        await self.store.close()
        await self.runtime.close()

    async def _start_http(self) -> None:
        host, port = split_hostport(self.config.listen)
        self._runner = web.AppRunner(self.web_app(), access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = self._runner.addresses[0][1] if self._runner.addresses else port
        self.agent_url = f"http://{self.config.public_host}:{bound}"

    # ------------------------------------------------------------ loop bodies

    async def registration(self) -> wire.AgentRegister:
        snapshot = await self.inventory.snapshot()
        return wire.AgentRegister(
            cpus=os.cpu_count() or 1,
            memory_mb=max(1, host_memory_mb()),
            gpus=snapshot.gpus,
            agent_url=self.agent_url,
            version=version(),
            nvidia_runtime=self.config.nvidia_runtime,
            gpu_note=snapshot.note,
            flavor=self.config.flavor,
            labels=dict(self.config.labels),
        )

    async def register(self) -> None:
        reply = await self.client.register(await self.registration())
        self.heartbeat_interval_s = reply.heartbeat_interval_s
        self.registered.set()
        log.info("host=%s registered with %s", self.host_id, self.config.scheduler_url)

    async def heartbeat_tick(self) -> None:
        if not self.registered.is_set():
            await self.register()
            return
        snapshot = await self.inventory.snapshot()
        reply = await self.client.heartbeat(
            wire.Heartbeat(gpus=snapshot.gpus, containers=self.reconciler.container_ids())
        )
        self.heartbeat_interval_s = reply.heartbeat_interval_s
        if not reply.known:
            log.warning(
                "host=%s scheduler does not know this host; registering again", self.host_id
            )
            self.registered.clear()
            self.assignments_version = None
            await self.register()

    async def assignments_tick(self) -> None:
        await self.registered.wait()
        result = await self.client.assignments(self.assignments_version, LONG_POLL_S)
        changed = result.version != self.assignments_version
        self.assignments_version = result.version
        self.reconciler.set_assignments(result.items)
        if changed:
            await self.reconciler.tick()

    async def usage_tick(self) -> None:
        self.outbox.record_usage(self.reconciler.running(), self.clock())

    # ------------------------------------------------------------ HTTP

    def web_app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors])
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/notebooks/{id}/logs", self._logs)
        return app

    @web.middleware
    async def _errors(self, request: web.Request, handler):
        try:
            return await handler(request)
        except ApiError as exc:
            body = wire.ErrorBody(code=exc.code, message=exc.message, detail=dict(exc.detail))
            return web.Response(
                status=exc.status, body=wire.encode(body), content_type="application/json"
            )
        except web.HTTPException:
            raise
        except Exception:
            log.exception("host=%s %s %s failed", self.host_id, request.method, request.path)
            body = wire.ErrorBody(code="internal", message="internal error")
            return web.Response(status=500, body=wire.encode(body), content_type="application/json")

    async def _health(self, request: web.Request) -> web.Response:
        body = wire.encode(wire.Health(status="ok", version=version()))
        return web.Response(body=body, content_type="application/json")

    async def _logs(self, request: web.Request) -> web.Response:
        self.verifier.verify(
            request.method, request.raw_path, request.headers, await request.read()
        )
        notebook = request.match_info["id"]
        try:
            tail = int(request.query.get("tail", "200"))
        except ValueError:
            raise ApiError("invalid_request", "tail must be an integer", field="tail")
        tail = max(1, min(MAX_LOG_TAIL, tail))
        try:
            text = await self.runtime.logs(notebook, tail)
        except NoSuchContainer:
            # Stopped or crashed: its last output was kept when the container was removed.
            kept = self.reconciler.kept_logs.read(notebook, tail)
            if kept is None:
                raise ApiError(
                    "not_found",
                    f"notebook {notebook} has no container or kept output on host {self.host_id}",
                )
            text = kept
        return web.Response(text=text, content_type="text/plain")


def build_agent(
    config: AgentConfig,
    *,
    host_id: str,
    secret: bytes,
    runtime: ContainerRuntime | None = None,
    inventory: GpuInventory | None = None,
    store: ObjectStore | None = None,
    client: SchedulerClient | None = None,
    clock: Callable[[], float] = time.time,
    probe: Probe = http_probe,
) -> Agent:
    """An :class:`Agent` with real adapters for whatever is not injected."""
    return Agent(
        config,
        host_id=host_id,
        secret=secret,
        runtime=runtime or DockerRuntime(config.docker_url, host_id=host_id),
        inventory=inventory or NvmlInventory(),
        store=store
        or S3ObjectStore(
            config.s3_endpoint,
            config.s3_region,
            config.s3_access_key,
            config.s3_secret_key,
            head_concurrency=config.sync_concurrency,
        ),
        client=client or SchedulerClient(config.scheduler_url, host_id, secret),
        clock=clock,
        probe=probe,
    )
