"""The agent process: wiring, background loops and the agent's own HTTP server.

:class:`Agent` takes its external systems by injection (runtime, inventory, object store,
scheduler client, clock, editor probe); :func:`build_agent` supplies the real ones from an
:class:`AgentConfig`. Loops (each a :class:`Loop` with start/stop/tick):

* heartbeat: registers, then heartbeats at the scheduler's interval; ``known=false`` → register;
* assignments: long-polls ``/v1/agents/assignments`` and runs a reconcile tick on every answer;
* reconcile: a tick every ``reconcile_interval_s`` (exits, editor readiness, timeouts);
* report: flushes the outbox; usage: queues billed minutes every ``usage_interval_s``;
* disk: measures each running notebook's workspace disk use every ``disk_usage_interval_s``
  (:mod:`agent.disk`, in a worker thread);
* spool: writes what the outbox holds to ``state_dir/outbox.json`` when it changed, so reports
  and minutes survive an agent restart during a scheduler outage (read back at construction).

HTTP, on ``listen``:

* ``GET /health`` (open);
* ``GET /v1/notebooks/{id}/logs?tail=N[&follow=1]`` (signed by the scheduler with this host's
  secret): the container's output as text; with ``follow=1`` chunked, then what it writes next,
  until the container stops or the caller goes away. A removed container's kept output is
  answered (never followed);
* ``POST /v1/notebooks/{id}/exec`` (signed; ``ExecRequest`` → ``ExecResult``): a command run
  in the notebook's container as its user, stdout and stderr combined, capped at 1 MiB; past
  its timeout it is killed and answered with exit code 124 and a note. 404 without a
  container, 409 when the container is not running, 415 for a body not declared JSON;
* ``/notebooks/{id}/...``: the editor proxy (:mod:`agent.proxy`), HTTP and WebSocket.

Heartbeats carry the proxy's activity of notebooks with traffic since the last one, the free
and total bytes of the filesystem holding ``workspaces_dir``, and workspace disk use measured
since the last acknowledged heartbeat.
Stopping the agent never stops notebooks: they are adopted at the next start.
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
from agent.disk import WorkspaceMeter, filesystem_space
from agent.gpus import GpuInventory, NvmlInventory
from agent.objectstore import ObjectStore, S3ObjectStore
from agent.proxy import EditorProxy
from agent.proxy_access import ActivityMeter, Authorizer
from agent.reconcile import Probe, Reconciler, http_probe
from agent.report import Outbox
from agent.runtime import (
    ContainerNotRunning,
    ContainerRuntime,
    DockerRuntime,
    NoSuchContainer,
    host_memory_mb,
)
from agent.spool import Spool
from agent.ssh import NotebookSshServer, SshTarget
from agent.workspace.host import HostWorkspaces
from common import wire
from common.auth import Verifier
from common.config import AgentConfig, split_hostport
from common.errors import ApiError
from common.http_server import decode_json, handler_args

log = logging.getLogger(__name__)

#: The scheduler's default heartbeat_misses: silent this many intervals, a host is lost.
HEARTBEAT_MISSES = 3

LONG_POLL_S = 25.0
#: How soon a change to the outbox is on disk; a check of a counter when nothing changed.
SPOOL_INTERVAL_S = 0.25
OUTBOX_SPOOL = "outbox.json"
MAX_LOG_TAIL = 10000
MAX_EXEC_OUTPUT = 1 << 20
#: How often a followed log checks that its caller is still there (a quiet container writes
#: nothing that would tell).
FOLLOW_CHECK_S = 0.5


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
        self.activity = ActivityMeter(clock)
        self.proxy = EditorProxy(
            self.reconciler.editor, Authorizer(client.authorize), self.activity
        )
        self.ssh: NotebookSshServer | None = None
        if config.ssh_listen:
            ssh_host, ssh_port = split_hostport(config.ssh_listen)
            self.ssh = NotebookSshServer(
                ssh_host,
                ssh_port,
                config.ssh_host_key_file or os.path.join(config.state_dir, "ssh_host_ed25519_key"),
                self.ssh_target,
                docker_url=config.docker_url,
                on_activity=lambda notebook: self.activity.record(notebook),
            )
        self.workspace_meter = WorkspaceMeter(clock)
        self.heartbeat_interval_s = 10.0
        #: When the scheduler last answered a heartbeat or a register (agent clock).
        self.last_contact = clock()
        self.reconciler.in_contact = self.in_contact
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
            Loop("disk", self.disk_tick, lambda: config.disk_usage_interval_s),
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
        if self.ssh is not None:
            await self.ssh.start()
        for loop in self.loops:
            loop.start()
        log.info("host=%s agent started, serving %s", self.host_id, self.agent_url)

    async def stop(self) -> None:
        self.workspace_meter.close()
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
        if self.ssh is not None:
            await self.ssh.close()
        await self.proxy.close()
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
        # RUNNING reports the notebook's URL at this proxy (the scheduler shows users its own
        # stable URL, which redirects here).
        self.reconciler.proxy_url = self.agent_url

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
            ssh_address=self.ssh_address(),
        )

    def ssh_address(self) -> str:
        """``host:port`` where users reach this agent's SSH server; "" when it has none."""
        if self.ssh is None or not self.ssh.port:
            return ""
        host = self.config.ssh_public_host or self.config.public_host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"  # an IPv6 address
        return f"{host}:{self.ssh.port}"

    def ssh_target(self, notebook: str) -> SshTarget | None:
        """A notebook SSH may enter: running here, in its container, with keys."""
        assignment = self.reconciler.assignments.get(notebook)
        editor = self.reconciler.editor(notebook)
        if assignment is None or editor is None or editor.port is None:
            return None
        keys = tuple(assignment.ssh_public_keys)
        if not keys:
            return None
        return SshTarget(notebook, keys, assignment.user)

    async def register(self) -> None:
        reply = await self.client.register(await self.registration())
        self.heartbeat_interval_s = reply.heartbeat_interval_s
        if self.ssh is not None and reply.ssh_host_key and not self.config.ssh_host_key_file:
            # The fleet's host key: a notebook keeps the same one whichever host runs it.
            self.ssh.use_host_key(reply.ssh_host_key)
        self.last_contact = self.reconciler.clock()
        self.registered.set()
        log.info("host=%s registered with %s", self.host_id, self.config.scheduler_url)

    def in_contact(self) -> bool:
        """Whether the scheduler has heard from us within the heartbeat TTL. Past it, the
        scheduler may have declared this host lost and started its notebooks elsewhere."""
        ttl = self.heartbeat_interval_s * HEARTBEAT_MISSES
        return self.reconciler.clock() - self.last_contact <= ttl

    async def heartbeat_tick(self) -> None:
        if not self.registered.is_set():
            await self.register()
            return
        snapshot = await self.inventory.snapshot()
        activity = self.activity.pending()
        workspaces = self.workspace_meter.pending()
        reply = await self.client.heartbeat(
            wire.Heartbeat(
                gpus=snapshot.gpus,
                containers=self.reconciler.container_ids(),
                activity=activity,
                disk=await self.disk_space(),
                workspaces=workspaces,
            )
        )
        self.heartbeat_interval_s = reply.heartbeat_interval_s
        self.last_contact = self.reconciler.clock()
        if reply.known:
            self.activity.acknowledge(activity)
            self.activity.prune(set(self.reconciler.assignments))
            self.workspace_meter.acknowledge(workspaces)
        else:
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

    async def disk_space(self) -> wire.DiskSpace | None:
        """The workspace filesystem's space; in a thread, since a hung filesystem would
        otherwise stop the event loop. ``None`` (not reported) when it cannot be read."""
        try:
            return await asyncio.to_thread(filesystem_space, self.config.workspaces_dir)
        except OSError as exc:
            log.warning(
                "host=%s free space of %s not read (%s); heartbeats go without it until it can be",
                self.host_id,
                self.config.workspaces_dir,
                exc,
            )
            return None

    async def disk_tick(self) -> None:
        """Measure the workspace disk use of the notebooks RUNNING here."""
        dirs = {
            notebook: self.workspaces.workspace_dir(notebook)
            for notebook, _, _ in self.reconciler.running()
        }
        await self.workspace_meter.measure(dirs)

    # ------------------------------------------------------------ HTTP

    def web_app(self) -> web.Application:
        app = web.Application(
            middlewares=[self._errors],
            # Malformed requests: one rate-limited warning, not an ERROR traceback each.
            handler_args=handler_args(f"host={self.host_id} agent"),
        )
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/notebooks/{id}/logs", self._logs)
        app.router.add_post("/v1/notebooks/{id}/exec", self._exec)
        self.proxy.add_routes(app)
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
        if request.query.get("follow", "") in ("1", "true"):
            followed = await self._follow_logs(request, notebook, tail)
            if followed is not None:
                return followed
        try:
            text = await self.runtime.logs(notebook, tail)
        except NoSuchContainer:
            text = self._kept_logs(notebook, tail)
        return web.Response(text=text, content_type="text/plain")

    def _kept_logs(self, notebook: str, tail: int) -> str:
        """Stopped or crashed: its last output was kept when the container was removed."""
        kept = self.reconciler.kept_logs.read(notebook, tail)
        if kept is None:
            raise ApiError(
                "not_found",
                f"notebook {notebook} has no container or kept output on host {self.host_id}",
            )
        return kept

    async def _follow_logs(
        self, request: web.Request, notebook: str, tail: int
    ) -> web.StreamResponse | None:
        """Stream the output until the container stops or the caller leaves; ``None`` when
        there is no container (the caller answers with the kept output instead)."""
        if await self.runtime.inspect(notebook) is None:
            return None
        response = web.StreamResponse(
            headers={"Content-Type": "text/plain; charset=utf-8", "Cache-Control": "no-store"}
        )
        response.enable_chunked_encoding()
        await response.prepare(request)
        stream = self.runtime.follow_logs(notebook, tail)

        async def pump() -> None:
            async for text in stream:
                if text:
                    await response.write(text.encode())

        async def caller_gone() -> None:
            while request.transport is not None and not request.transport.is_closing():
                await asyncio.sleep(FOLLOW_CHECK_S)

        pumping = asyncio.create_task(pump())
        watching = asyncio.create_task(caller_gone())
        try:
            await asyncio.wait({pumping, watching}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (pumping, watching):
                task.cancel()
            await asyncio.gather(pumping, watching, return_exceptions=True)
            await stream.aclose()
        if pumping.done() and not pumping.cancelled() and pumping.exception() is None:
            await response.write_eof()  # the container stopped: a complete answer
        elif request.transport is not None:
            request.transport.close()  # caller gone, or the log stream broke: cut it short
        return response

    async def _exec(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.verifier.verify(request.method, request.raw_path, request.headers, body)
        notebook = request.match_info["id"]
        ask = decode_json(request, body, wire.ExecRequest)
        assignment = self.reconciler.assignments.get(notebook)
        try:
            result = await self.runtime.exec(
                notebook,
                list(ask.command),
                user=assignment.user if assignment is not None else "",
                timeout_s=ask.timeout_s,
                max_output=MAX_EXEC_OUTPUT,
            )
        except NoSuchContainer:
            raise ApiError(
                "not_found", f"notebook {notebook} has no container on host {self.host_id}"
            )
        except ContainerNotRunning:
            raise ApiError(
                "conflict", f"notebook {notebook}'s container on host {self.host_id} is not running"
            )
        output = result.output.decode(errors="replace")
        if result.timed_out:
            output += f"\n[nbfleet: timed out after {ask.timeout_s:g}s; the command was killed]\n"
        log.info(
            "notebook=%s exec %r exited %d%s",
            notebook,
            ask.command[0],
            result.exit_code,
            " (timed out)" if result.timed_out else "",
        )
        reply = wire.ExecResult(
            exit_code=124 if result.timed_out else result.exit_code,
            output=output,
            truncated=result.truncated,
        )
        return web.Response(body=wire.encode(reply), content_type="application/json")


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
