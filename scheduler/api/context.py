"""What handlers reach through ``request.app[CONTEXT]``: the services, built by the app
factory."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from common.auth import Verifier
from common.config import SchedulerConfig
from common.notebook_forward import NotebookForwarder
from scheduler.access import ProxyActivity
from scheduler.agent_client import AgentClient
from scheduler.agent_secrets import AgentSecrets
from scheduler.agents import AgentService
from scheduler.board import AssignmentBoard
from scheduler.db import Database
from scheduler.hosts import HostService
from scheduler.loops.maintenance import Maintenance
from scheduler.notebook_views import NotebookViews
from scheduler.notebooks import NotebookService
from scheduler.projects import ProjectService
from scheduler.replay import ReplayGuard
from scheduler.replicas import Replica
from scheduler.snapshots import SnapshotService


@dataclass
class Context:
    config: SchedulerConfig
    clock: Callable[[], float]
    db: Database
    board: AssignmentBoard
    notebooks: NotebookService
    notebook_views: NotebookViews
    agents: AgentService
    projects: ProjectService
    agent_secrets: AgentSecrets
    verifier: Verifier
    agent_client: AgentClient
    snapshots: SnapshotService
    hosts: HostService
    maintenance: Maintenance
    #: Editor proxy activity from heartbeats, not written yet.
    activity: ProxyActivity
    #: sha256 of the admin token (``admin_token_file``).
    admin_digest: str
    #: sha256 of the routers' token (``router_token_file``).
    router_digest: str
    #: sha256 of the scrape token (``metrics_token_file``).
    metrics_digest: str
    #: Signed requests' nonces, claimed for every replica.
    replay: ReplayGuard
    #: This process among the replicas on the database.
    replica: Replica
    #: The routing tier at notebooks' stable URLs.
    forwarder: NotebookForwarder = field(default_factory=NotebookForwarder)


CONTEXT = web.AppKey("nbfleet_context", Context)


def ctx(request: web.Request) -> Context:
    return request.app[CONTEXT]
