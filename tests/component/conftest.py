"""A scheduler app on a temporary SQLite file or a fresh PostgreSQL database, driven through
aiohttp's test client.

``harness`` gives a running scheduler with a fake clock, the admin token, helpers to create
projects and tokens, and :class:`Agent` objects that sign their requests like a real agent.
Every test that uses ``harness`` or ``clock`` (the scheduler's tests) runs twice, as
``[sqlite]`` and ``[postgresql]``: :func:`make_config` puts in the config the database the
autouse fixture ``scheduler_database`` made for the test (a SQLite file in ``tmp_path``, or a
database of its own on the cluster ``NBFLEET_TEST_POSTGRES_URL`` names, copied from one
migrated once per session), so tests that build their own harness get it too. A test marked
``postgresql_only`` (what only replicas sharing PostgreSQL do) runs as ``[postgresql]`` alone.
``agent_server`` is a real agent process (FakeRuntime, a fake scheduler) serving its own HTTP
API on a loopback port, for what both servers must do alike.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp.test_utils import TestClient, TestServer

from agent.app import Agent as AgentProcess
from common.auth import sign
from common.config import SchedulerConfig
from scheduler.agent_secrets import add_host
from scheduler.api.context import CONTEXT
from scheduler.app import LOOPS, create_app
from scheduler.replicas import BOOKKEEPING
from scheduler.secrets import ensure_admin_token
from tests.fakes.runtime import FakeRuntime
from tests.support.postgres import (  # postgres_databases: a fixture, shared by every tier
    PostgresDatabases,
    committed_rows,
    committed_snapshot,
    postgres_databases,  # noqa: F401
    run_sync,
)
from tests.unit.test_agent_app import agent_config, agent_for, fake_scheduler, url_of

START = 1_700_000_000.0

CATALOG = {
    "frameworks": {
        "conda": {"image": "nbfleet/conda:test", "editors": ["jupyterlab", "vscode"]},
        "pytorch": {"image": "nbfleet/pytorch:test", "editors": ["jupyterlab"], "user": "1000:100"},
    },
    "editors": {
        "jupyterlab": {
            "port": 8888,
            "command": [
                "jupyter-lab",
                "--ServerApp.token={token}",
                "--port={port}",
                "--ServerApp.base_url={base_url}",
            ],
            "url_path": "/lab?token={token}",
            "activity_api": "jupyter",
        },
        "vscode": {
            "port": 8080,
            "command": ["code-server", "--bind-addr=0.0.0.0:{port}"],
            "activity_api": "code-server",
        },
    },
}


class FakeClock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Reply:
    status: int
    text: str
    content_type: str

    @property
    def json(self) -> Any:
        return json.loads(self.text)

    @property
    def code(self) -> str:
        return self.json["code"]


#: The current test's PostgreSQL database (unset: SQLite), set by ``scheduler_database``. An
#: environment variable, not a global: pytest loads this file under a module name of its own,
#: and tests import it again as ``tests.component.conftest``.
DATABASE_URL_ENV = "NBFLEET_TEST_SCHEDULER_DATABASE_URL"


def make_config(tmp_path: Path, **overrides: Any) -> SchedulerConfig:
    raw = {
        "database": str(tmp_path / "scheduler.db"),
        "database_url": os.environ.get(DATABASE_URL_ENV, ""),
        "admin_token_file": str(tmp_path / "admin.token"),
        "agent_secrets_dir": str(tmp_path / "agents"),
        "heartbeat_interval_s": 10.0,
        "heartbeat_misses": 3,
        # Generous quotas: the quota tests set their own.
        "quota": {"gpus": 64, "cpus": 256, "notebooks": 64, "cpus_per_notebook": 128},
        "catalog": CATALOG,
        **overrides,
    }
    return msgspec.convert(raw, SchedulerConfig)


@dataclass
class Harness:
    config: SchedulerConfig
    clock: FakeClock
    client: TestClient | None = None
    admin_token: str = ""
    #: Extra keyword arguments for ``create_app`` (injected fakes).
    app_kwargs: dict[str, Any] = field(default_factory=dict)
    _agents: dict[str, Agent] = field(default_factory=dict)

    async def start(self) -> None:
        app = create_app(self.config, clock=self.clock, **self.app_kwargs)
        # No background loops: tests drive them with tick(), on the fake clock.
        app[LOOPS] = []
        self.client = TestClient(TestServer(app))
        await self.client.start_server()
        self.admin_token = ensure_admin_token(self.config.admin_token_file)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
            self.client = None

    async def restart(self) -> None:
        """A new app process on the same database file."""
        await self.close()
        await self.start()

    @property
    def app(self) -> Any:
        assert self.client is not None
        return self.client.server.app

    async def tick(self) -> None:
        """One pass of the scheduler's maintenance loop (heartbeats, lost hosts, runtime
        limit, restarts, queue) at the fake clock's time."""
        await self.app[CONTEXT].maintenance.tick()

    async def call(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        body: Any = None,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        assert self.client is not None
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        if body is not None:
            data = json.dumps(body).encode()
            sent.setdefault("Content-Type", "application/json")
        async with self.client.request(method, path, data=data, headers=sent) as resp:
            return Reply(resp.status, await resp.text(), resp.content_type)

    async def project(self, name: str = "alpha") -> Tokens:
        """Create project ``name`` with an operator and a read token."""
        created = await self.call(
            "POST", "/v1/admin/projects", token=self.admin_token, body={"name": name}
        )
        assert created.status == 201, created.text
        tokens = {}
        for role in ("operator", "read"):
            reply = await self.call(
                "POST",
                "/v1/admin/tokens",
                token=self.admin_token,
                body={"project": name, "role": role},
            )
            assert reply.status == 201, reply.text
            tokens[role] = reply.json["token"]
        return Tokens(self, name, tokens["operator"], tokens["read"])

    @property
    def database(self) -> str:
        """The scheduler's database: a PostgreSQL URL or a SQLite file."""
        return self.config.database_url or self.config.database

    def committed(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Rows of ``sql`` as committed (read through a connection of its own)."""
        return committed_rows(self.database, sql, params)

    def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every stored row (read through a second connection: committed data only), but the
        replicas' bookkeeping: a refused request's nonce is still used up, which is the point."""
        rows = committed_snapshot(self.database)
        return {table: found for table, found in rows.items() if table not in BOOKKEEPING}

    def agent(self, host_id: str) -> Agent:
        if host_id not in self._agents:
            # add-host's own code, on connections of its own; the running app learns it at
            # once instead of at its next reload (tests run no background loops).
            secret = run_sync(add_host(self.config, host_id))
            if self.client is not None:
                self.app[CONTEXT].agent_secrets.remember(host_id, secret)
            self._agents[host_id] = Agent(self, host_id, secret.encode())
        return self._agents[host_id]


@dataclass
class Tokens:
    harness: Harness
    name: str
    operator: str
    read: str

    async def run(self, expect: int | None = 201, **fields: Any) -> Reply:
        body = {"framework": "conda", "editor": "jupyterlab", **fields}
        reply = await self.harness.call("POST", "/v1/notebooks", token=self.operator, body=body)
        assert expect is None or reply.status == expect, reply.text
        return reply

    async def get(self, notebook_id: str) -> dict[str, Any]:
        reply = await self.harness.call("GET", f"/v1/notebooks/{notebook_id}", token=self.read)
        assert reply.status == 200, reply.text
        return reply.json

    async def action(self, notebook_id: str, action: str, token: str | None = None) -> Reply:
        if action == "delete":
            return await self.harness.call(
                "DELETE", f"/v1/notebooks/{notebook_id}", token=token or self.operator
            )
        return await self.harness.call(
            "POST", f"/v1/notebooks/{notebook_id}/{action}", token=token or self.operator
        )


@dataclass
class Agent:
    harness: Harness
    host_id: str
    secret: bytes

    async def call(
        self, method: str, path_qs: str, body: Any = None, *, now: float | None = None
    ) -> Reply:
        data = b"" if body is None else json.dumps(body).encode()
        headers = sign(
            self.secret,
            self.host_id,
            method,
            path_qs,
            data,
            now=self.harness.clock() if now is None else now,
        )
        if data:
            headers["Content-Type"] = "application/json"
        return await self.harness.call(method, path_qs, data=data or None, headers=headers)

    async def register(
        self, gpus: int = 2, cpus: int = 32, *, prefix: str | None = None, **extra: Any
    ) -> Reply:
        prefix = prefix or self.host_id
        body = {
            "cpus": cpus,
            "memory_mb": 256_000,
            "gpus": [
                {"uuid": f"GPU-{prefix}-{i}", "index": i, "model": "A100", "memory_total_mb": 81920}
                for i in range(gpus)
            ],
            "agent_url": extra.pop("agent_url", "http://127.0.0.1:9"),
            "version": "test",
            **extra,
        }
        reply = await self.call("POST", "/v1/agents/register", body)
        assert reply.status == 200, reply.text
        return reply

    async def heartbeat(self, **body: Any) -> Reply:
        return await self.call("POST", "/v1/agents/heartbeat", body)

    async def assignments(self, since: int | None = None, wait: float = 0) -> dict[str, Any]:
        path = f"/v1/agents/assignments?wait={wait:g}"
        if since is not None:
            path += f"&since={since}"
        reply = await self.call("GET", path)
        assert reply.status == 200, reply.text
        return reply.json

    async def report(
        self,
        notebook: str,
        state: str,
        *,
        generation: int = 1,
        reason: str = "agent says so",
        url: str | None = None,
    ) -> dict[str, Any]:
        item = {
            "notebook": notebook,
            "generation": generation,
            "state": state,
            "reason": reason,
            "at": self.harness.clock(),
        }
        if url is not None:
            item["url"] = url
        reply = await self.call("POST", "/v1/agents/transitions", {"items": [item]})
        assert reply.status == 200, reply.text
        return reply.json["items"][0]

    async def usage(self, notebook: str, minutes: int, generation: int = 1) -> Reply:
        item = {
            "notebook": notebook,
            "generation": generation,
            "billed_minutes": minutes,
            "at": self.harness.clock(),
        }
        return await self.call("POST", "/v1/agents/usage", {"items": [item]})


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if {"harness", "clock"} & set(metafunc.fixturenames):
        # Replicas share state through PostgreSQL only; one SQLite process has nothing to share.
        only = metafunc.definition.get_closest_marker("postgresql_only")
        metafunc.parametrize(
            "database_backend", ["postgresql"] if only else ["sqlite", "postgresql"]
        )


@pytest.fixture
def database_backend() -> str:
    """Tests that run no scheduler (parametrized otherwise: pytest_generate_tests)."""
    return "sqlite"


@pytest.fixture(autouse=True)
def scheduler_database(
    request: pytest.FixtureRequest, database_backend: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """A PostgreSQL database of the test's own for ``[postgresql]``; SQLite needs nothing
    (``make_config`` names a file in ``tmp_path``)."""
    if database_backend == "sqlite":
        monkeypatch.delenv(DATABASE_URL_ENV, raising=False)
        yield
        return
    databases: PostgresDatabases = request.getfixturevalue("postgres_databases")
    url = databases.fresh()
    monkeypatch.setenv(DATABASE_URL_ENV, url)
    try:
        yield
    finally:
        databases.drop(url)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@contextlib.asynccontextmanager
async def started(config: SchedulerConfig, clock: FakeClock) -> AsyncIterator[Harness]:
    """A running :class:`Harness` on ``config``, closed on the way out."""
    h = Harness(config=config, clock=clock)
    await h.start()
    try:
        yield h
    finally:
        await h.close()


def with_frameworks(tmp_path: Path, **frameworks: dict[str, Any]) -> SchedulerConfig:
    """The tests' config with ``frameworks`` added to (or replacing ones of) the catalog."""
    catalog = {**CATALOG, "frameworks": {**CATALOG["frameworks"], **frameworks}}
    return make_config(tmp_path, catalog=catalog)


@pytest.fixture
async def harness(tmp_path: Path, clock: FakeClock):
    async with started(make_config(tmp_path), clock) as h:
        yield h


@pytest.fixture
async def project(harness: Harness) -> Tokens:
    return await harness.project("alpha")


@pytest.fixture
async def host(harness: Harness) -> Agent:
    """A registered host ``h1`` with 2 GPUs and 32 CPUs."""
    agent = harness.agent("h1")
    await agent.register(gpus=2)
    return agent


@pytest.fixture
async def agent_server(tmp_path: Path) -> AsyncIterator[AgentProcess]:
    """Agent ``h1`` (secret ``tests.unit.test_agent_app.SECRET``) serving ``agent_url``."""
    _, scheduler = await fake_scheduler()
    agent = agent_for(agent_config(tmp_path, url_of(scheduler)), FakeRuntime())
    await agent.start()
    try:
        yield agent
    finally:
        await agent.stop()
        await scheduler.close()
