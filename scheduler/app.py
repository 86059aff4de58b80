"""The scheduler's app factory.

``create_app(config, clock=..., agent_client=...)`` builds the aiohttp application and every
service, each given what it needs through its constructor (the admin token, the fleet's SSH
host key and the key agent secrets are sealed with are read here, created if absent); the
database is opened (and migrated), old agent secret files imported and the agents' secrets
loaded (:mod:`scheduler.agent_secrets`), the agent HTTP client started and the background loops
run inside ``cleanup_ctx``, so the test client and ``web.run_app`` share one lifecycle.
``clock`` drives every stored time, heartbeat freshness and signature checks, so tests move time
instead of sleeping.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from common.auth import Verifier, token_digest
from common.config import SchedulerConfig
from common.http_server import handler_args
from scheduler.access import ProxyActivity
from scheduler.admission import Admission
from scheduler.agent_client import AgentClient
from scheduler.agent_secrets import agent_secrets_for
from scheduler.agents import AgentService
from scheduler.api import add_routes
from scheduler.api.context import CONTEXT, Context
from scheduler.api.replies import MAX_BODY_BYTES
from scheduler.board import CHANNEL as BOARD_CHANNEL
from scheduler.board import AssignmentBoard
from scheduler.console.session import Sessions
from scheduler.console.web import SESSIONS
from scheduler.db import database_for
from scheduler.hosts import HostService
from scheduler.loops.base import Loop
from scheduler.loops.maintenance import CHANNEL as MAINTENANCE_CHANNEL
from scheduler.loops.maintenance import Maintenance
from scheduler.notebook_views import NotebookViews
from scheduler.notebooks import NotebookService
from scheduler.projects import ProjectService
from scheduler.replay import ReplayGuard
from scheduler.replicas import Replica
from scheduler.secrets import (
    ensure_admin_token,
    ensure_metrics_token,
    ensure_router_token,
    ensure_secrets_key,
    ensure_ssh_host_key,
    secrets_key_path,
)
from scheduler.snapshots import ProgressBoard, SnapshotService

log = logging.getLogger(__name__)

LOOPS = web.AppKey("nbfleet_loops", list[Loop])


def create_app(
    config: SchedulerConfig,
    *,
    clock: Callable[[], float] = time.time,
    agent_client: AgentClient | None = None,
) -> web.Application:
    db = database_for(config)
    replica = Replica(db, clock, tick_s=config.loop_interval_s)
    board = AssignmentBoard(origin=replica.id)
    # Secrets on disk, created at the first start: read once, here, so every service gets
    # them through its constructor.
    admin_digest = token_digest(ensure_admin_token(config.admin_token_file))
    router_digest = token_digest(ensure_router_token(config))
    metrics_digest = token_digest(ensure_metrics_token(config))
    ssh_host_key = ensure_ssh_host_key(
        config.ssh_host_key_file
        or os.path.join(os.path.dirname(config.admin_token_file), "ssh_host_ed25519_key")
    )
    # Agents' secrets live in the database, sealed with the key file (created if absent).
    agent_secrets = agent_secrets_for(config, db)
    progress = ProgressBoard(db)
    activity = ProxyActivity(db)
    hosts = HostService(db, config, board, clock)
    # Placement writes the heartbeats held in memory first, so it sees every host as fresh
    # as its last heartbeat.
    admission = Admission(config, board, clock, heartbeats=hosts)
    maintenance = Maintenance(
        db, config, board, clock, hosts, admission, replica, buffers=(activity, progress)
    )
    context = Context(
        config=config,
        clock=clock,
        db=db,
        board=board,
        notebooks=NotebookService(db, config, board, clock, admission),
        notebook_views=NotebookViews(
            db, progress, activity, clock=clock, quota_defaults=config.quota
        ),
        agents=AgentService(
            db,
            config,
            board,
            clock,
            hosts,
            on_capacity_freed=maintenance.wake,
            activity=activity,
            ssh_host_key=ssh_host_key,
        ),
        hosts=hosts,
        maintenance=maintenance,
        projects=ProjectService(db, clock, config.quota),
        agent_secrets=agent_secrets,
        verifier=Verifier(agent_secrets, clock=clock),
        agent_client=agent_client or AgentClient(agent_secrets, clock=clock),
        snapshots=SnapshotService(db, clock, progress),
        activity=activity,
        admin_digest=admin_digest,
        router_digest=router_digest,
        metrics_digest=metrics_digest,
        replay=ReplayGuard(db),
        replica=replica,
    )
    app = web.Application(
        client_max_size=MAX_BODY_BYTES,
        # Malformed requests: one rate-limited warning, not an ERROR traceback each.
        handler_args=handler_args("scheduler"),
    )
    app[CONTEXT] = context
    app[SESSIONS] = Sessions(ensure_secrets_key(secrets_key_path(config)))
    # Writing what heartbeats and reports brought, lost hosts, the runtime limit, restarts, the
    # queue and retention; reloading the agents' secrets.
    app[LOOPS] = [maintenance, agent_secrets]
    add_routes(app)
    app.cleanup_ctx.append(_lifecycle)
    app.on_shutdown.append(_release_long_polls)
    return app


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    context = app[CONTEXT]
    await context.db.open()
    try:
        await context.agent_secrets.import_files(context.config.agent_secrets_dir)
        # Strict: a replica given another key file refuses to start (SecretsKeyMismatch).
        await context.agent_secrets.load()
    except BaseException:
        await context.db.close()
        raise
    await context.hosts.load()
    await context.replica.join()
    # Other replicas' changes: wake this replica's long-polls and its maintenance loop.
    await context.db.listen(
        {BOARD_CHANNEL: context.board.announced, MAINTENANCE_CHANNEL: context.maintenance.announced}
    )
    await context.agent_client.start()
    for loop in app[LOOPS]:
        loop.start()
    log.info("scheduler ready: database %s", context.db.where)
    try:
        yield
    finally:
        for loop in app[LOOPS]:
            await loop.stop()
        await context.notebooks.close()
        try:
            await context.maintenance.flush()
            await context.replica.retire()
        except Exception:
            log.exception("could not write what this replica held at shutdown; it is lost")
        await context.agent_client.close()
        await context.forwarder.close()
        await context.db.close()


async def _release_long_polls(app: web.Application) -> None:
    app[CONTEXT].board.wake_all()
