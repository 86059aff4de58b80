"""The agent process: wiring, background loops and its lifecycle.

:class:`Agent` takes its external systems by injection (runtime, inventory, object store,
volume store, scheduler client, clock, editor probe); :func:`build_agent` supplies the real ones
from an :class:`AgentConfig`. Loops (each a :class:`Loop` with start/stop/tick):

* heartbeat: registers, then heartbeats at the scheduler's interval; ``known=false`` → register;
* assignments: long-polls ``/v1/agents/assignments`` and runs a reconcile tick on every answer;
* reconcile: a tick every ``reconcile_interval_s`` (exits, editor readiness, timeouts);
* report: flushes the outbox; usage: queues billed minutes every ``usage_interval_s``;
* disk: measures each running notebook's workspace disk use every ``disk_usage_interval_s``
  (:mod:`agent.disk`, in a worker thread), and looks at the host's catalog images: when they
  changed (an operator built or removed one) it registers again, so the catalog shows them;
* activity: asks each running notebook's editor what it is doing and looks at its GPU and CPU
  use every ``activity_interval_s`` (:mod:`agent.activity`), into the activity meter;
* spool: writes what the outbox holds to ``state_dir/outbox.json`` when it changed, so reports
  and minutes survive an agent restart during a scheduler outage (read back at construction).

Its HTTP server (health, logs, exec, the editor proxy) is :mod:`agent.http_api`; when the
scheduler last answered, and so whether the agent may still act for its notebooks, is
:mod:`agent.contact`.

Heartbeats carry the latest activity (proxy, SSH, the activity loop) and what showed it, of
notebooks with news since the last one; the free and total bytes of the filesystem holding
``workspaces_dir``; and workspace disk use measured since the last acknowledged heartbeat.
Stopping the agent never stops notebooks: they are adopted at the next start.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from agent.activity import ActivityProbe
from agent.client import Backoff, SchedulerClient
from agent.contact import SchedulerContact
from agent.container_config import host_memory_mb
from agent.datasync import Datasyncs
from agent.disk import WorkspaceMeter, filesystem_space
from agent.docker_runtime import DockerRuntime
from agent.gpus import GpuInventory, NvmlInventory
from agent.host_images import HostImages
from agent.http_api import AgentApi, version
from agent.metrics import SyncMeter
from agent.metrics import render as render_metrics
from agent.notebook_steps import Probe, http_probe
from agent.notebook_view import NotebookView
from agent.objectstore import ObjectStore, S3ObjectStore
from agent.proxy import EditorProxy
from agent.proxy_access import ActivityMeter, Authorizer
from agent.reconcile import Reconciler
from agent.report import Outbox
from agent.runtime import ContainerRuntime
from agent.spool import Spool
from agent.ssh import NotebookSshServer
from agent.volumes import VolumeSync
from agent.workspace.host import HostWorkspaces
from common import wire
from common.auth import read_secret
from common.config import AgentConfig, split_hostport

log = logging.getLogger(__name__)

LONG_POLL_S = 25.0
#: How soon a change to the outbox is on disk; a check of a counter when nothing changed.
SPOOL_INTERVAL_S = 0.25
OUTBOX_SPOOL = "outbox.json"


class Loop:
    """Runs ``tick`` forever: after a success waits ``interval()`` seconds, or less when
    ``wake`` is set meanwhile; after a failure a jittered backoff (``wake`` does not cut it
    short), never longer than ``retry_within()`` when given. One failing tick is logged and
    the loop continues."""

    def __init__(
        self,
        name: str,
        tick: Callable[[], Awaitable[None]],
        interval: Callable[[], float],
        *,
        backoff: Backoff | None = None,
        retry_within: Callable[[], float] | None = None,
        wake: asyncio.Event | None = None,
    ) -> None:
        self.name = name
        self.wake = wake
        self.tick = tick
        self.interval = interval
        self.backoff = backoff or Backoff()
        self.retry_within = retry_within
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
            if self.wake is not None:
                self.wake.clear()  # what comes during the tick wakes the next one
            try:
                await self.tick()
                self.backoff.reset()
                delay = self.interval()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = self.backoff.next_delay()
                if self.retry_within is not None:
                    delay = min(delay, self.retry_within())
                log.warning("loop=%s failed (%s); retrying in %.1fs", self.name, exc, delay)
                await asyncio.sleep(delay)
                continue
            if self.wake is None:
                await asyncio.sleep(delay)
                continue
            try:
                await asyncio.wait_for(self.wake.wait(), delay)
            except TimeoutError:
                pass


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
        volumes: VolumeSync,
        client: SchedulerClient,
        clock: Callable[[], float] = time.time,
        probe: Probe = http_probe,
    ) -> None:
        self.config = config
        self.host_id = host_id
        self.runtime = runtime
        self.inventory = inventory
        self.store = store
        self.volumes = volumes
        self.client = client
        self.clock = clock
        self.outbox = Outbox(client, Spool(os.path.join(config.state_dir, OUTBOX_SPOOL)))
        #: Workspace and volume syncs so far, for GET /metrics.
        self.syncs = SyncMeter()
        volumes.on_sync = self.syncs.synced
        self.workspaces = HostWorkspaces(
            store,
            config.workspace_bucket,
            config.workspaces_dir,
            config.scratch_dir,
            concurrency=config.sync_concurrency,
            state_dir=config.state_dir,
            retention_last=config.retention_last,
            retention_daily=config.retention_daily,
            on_sync=self.syncs.synced,
        )
        self.contact = SchedulerContact(clock)
        self.reconciler = Reconciler(
            config,
            runtime,
            self.workspaces,
            self.outbox,
            volumes=volumes,
            contact=self.contact,
            clock=clock,
            probe=probe,
        )
        notebooks = NotebookView(self.reconciler)
        self.datasyncs = Datasyncs(
            volumes,
            self.outbox,
            # The dispatcher replaces its assignments dict at every poll: looked up each time.
            lambda notebook: self.reconciler.assignments.get(notebook),
            self.reconciler.records.get,
            clock=clock,
        )
        self.activity = ActivityMeter(clock)
        self.authorizer = Authorizer(client.authorize, grace_s=config.authorize_grace_s)
        self.proxy = EditorProxy(
            notebooks.editor, self.authorizer, self.activity, upstream_host=config.upstream_host
        )
        self.api = AgentApi(
            host_id,
            secret,
            runtime,
            self.reconciler.kept_logs,
            notebooks,
            self.proxy,
            metrics=self.metrics,
            metrics_token=metrics_token(config),
            datasyncs=self.datasyncs,
        )
        self.ssh: NotebookSshServer | None = None
        if config.ssh_listen:
            ssh_host, ssh_port = split_hostport(config.ssh_listen)
            self.ssh = NotebookSshServer(
                ssh_host,
                ssh_port,
                config.ssh_host_key_file or os.path.join(config.state_dir, "ssh_host_ed25519_key"),
                notebooks.ssh_target,
                docker_url=config.docker_url,
                on_activity=lambda notebook: self.activity.record(notebook, signal="SSH"),
            )
        self.activity_probe = ActivityProbe(
            lambda: self.reconciler.assignments,
            notebooks.editor,
            runtime,
            inventory,
            self.activity,
            upstream_host=config.upstream_host,
            clock=clock,
        )
        self.workspace_meter = WorkspaceMeter(clock)
        self.registered = asyncio.Event()
        self.images = HostImages(runtime, host_id)
        self.assignments_version: int | None = None
        self.agent_url = ""
        self._runner: web.AppRunner | None = None
        self._warm_up: asyncio.Task[None] | None = None
        self.loops = [
            # A failed heartbeat is tried again within an interval, never after the backoff's
            # 30 s: a scheduler back from an outage gives hosts one TTL (a few intervals) to
            # be heard before it declares them lost and their notebooks ERROR. An interval is
            # the rate the scheduler asked the fleet for anyway.
            Loop(
                "heartbeat",
                self.heartbeat_tick,
                lambda: self.contact.heartbeat_interval_s,
                retry_within=lambda: self.contact.heartbeat_interval_s,
            ),
            Loop("assignments", self.assignments_tick, lambda: 0.0),
            Loop("reconcile", self.reconciler.tick, lambda: config.reconcile_interval_s),
            Loop("report", self.outbox.tick, lambda: 0.5, wake=self.outbox.pending),
            Loop("usage", self.usage_tick, lambda: config.usage_interval_s),
            Loop("spool", self.outbox.save, lambda: SPOOL_INTERVAL_S),
            Loop("disk", self.disk_tick, lambda: config.disk_usage_interval_s),
            Loop("activity", self.activity_probe.tick, lambda: config.activity_interval_s),
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
        self._warm_up = asyncio.create_task(self.workspaces.warm_up(), name="warm-up-store")
        log.info("host=%s agent started, serving %s", self.host_id, self.agent_url)

    async def stop(self) -> None:
        if self._warm_up is not None:
            self._warm_up.cancel()
            await asyncio.gather(self._warm_up, return_exceptions=True)
        self.workspace_meter.close()
        for loop in self.loops:
            await loop.stop()
        await self.reconciler.close()
        await self.datasyncs.close()
        await self.volumes.close()
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
        await self.activity_probe.close()
        await self.client.close()
        await self.store.close()
        await self.runtime.close()

    async def _start_http(self) -> None:
        host, port = split_hostport(self.config.listen)
        self._runner = web.AppRunner(self.api.web_app(), access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = self._runner.addresses[0][1] if self._runner.addresses else port
        self.agent_url = f"http://{self.config.public_host}:{bound}"

    # ------------------------------------------------------------ loop bodies

    async def metrics(self) -> tuple[bytes, str]:
        """``GET /metrics``: what the GPUs do now (NVML, read for the scrape) and what the
        notebooks on the host hold."""
        assignments = dict(self.reconciler.assignments)
        notebooks = sorted(assignments)
        found = await asyncio.gather(*(self.runtime.usage(n) for n in notebooks))
        usage = {n: u for n, u in zip(notebooks, found, strict=True) if u is not None}
        now = self.clock()
        saved_ago = {
            notebook: now - (record.last_saved or since)
            for notebook, _, since in self.reconciler.records.running()
            if (record := self.reconciler.records.get(notebook)) is not None
        }
        return render_metrics(
            await self.inventory.snapshot(),
            assignments,
            self.workspace_meter,
            usage,
            saved_ago=saved_ago,
            syncs=self.syncs,
        )

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
            images=await self.images.current(),
        )

    def ssh_address(self) -> str:
        """``host:port`` where users reach this agent's SSH server; "" when it has none."""
        if self.ssh is None or not self.ssh.port:
            return ""
        host = self.config.ssh_public_host or self.config.public_host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"  # an IPv6 address
        return f"{host}:{self.ssh.port}"

    async def register(self) -> None:
        registration = await self.registration()
        reply = await self.client.register(registration)
        self.images.registered = registration.images
        self.contact.registered(reply)
        if self.ssh is not None and reply.ssh_host_key and not self.config.ssh_host_key_file:
            # The fleet's host key: a notebook keeps the same one whichever host runs it.
            self.ssh.use_host_key(reply.ssh_host_key)
        self.registered.set()
        log.info("host=%s registered with %s", self.host_id, self.client.scheduler_url)

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
        self.contact.heartbeat_answered(reply)
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
        before = self.reconciler.assignments
        for item in result.items:
            previous = before.get(item.notebook)
            if previous is not None and previous.labels != item.labels:
                # Labels scope tokens: cached answers about this notebook no longer hold.
                log.info("notebook=%s labels changed; its tokens are checked again", item.notebook)
                self.authorizer.forget(item.notebook)
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
        """Measure the workspace disk use of the notebooks RUNNING here; register again when
        the host's catalog images changed."""
        if self.registered.is_set():
            if await self.images.changed():
                log.info("host=%s catalog images changed; registering again", self.host_id)
                await self.register()
        dirs = {
            notebook: self.workspaces.workspace_dir(notebook)
            for notebook, _, _ in self.reconciler.running()
        }
        await self.workspace_meter.measure(dirs)


def metrics_token(config: AgentConfig) -> str:
    """The token ``/metrics`` asks for (``metrics_token_file``); "" when none is configured."""
    if not config.metrics_token_file:
        return ""
    return read_secret(config.metrics_token_file).decode()


def build_agent(
    config: AgentConfig,
    *,
    host_id: str,
    secret: bytes,
    runtime: ContainerRuntime | None = None,
    inventory: GpuInventory | None = None,
    store: ObjectStore | None = None,
    volumes: VolumeSync | None = None,
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
        volumes=volumes
        or VolumeSync(config.volumes_dir, concurrency=config.sync_concurrency, clock=clock),
        client=client or SchedulerClient(config.scheduler_url, host_id, secret),
        clock=clock,
        probe=probe,
    )
