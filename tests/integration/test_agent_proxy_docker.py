"""The editor proxy, networks, followed logs and exec against the real dockerd, with the tiny
busybox image (its httpd is the "editor"). The agent runs whole (real Docker runtime, real
signed HTTP to a fake scheduler that answers /v1/agents/authorize)."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from agent.app import Agent, build_agent
from agent.container_config import network_labels
from agent.docker_runtime import DockerRuntime
from agent.runtime import ContainerNotRunning, NoSuchContainer
from common.config import AgentConfig
from common.states import NotebookState as S
from common.wire import Assignment
from tests.fakes.inventory import FakeInventory
from tests.fakes.objectstore import FakeObjectStore
from tests.fakes.scheduler import FakeScheduler
from tests.integration.conftest import new_notebook_id
from tests.integration.test_agent_docker import docker_inspect, spec_for, wait_until
from tests.support.images import editor_command

SECRET = b"proxy-integration-secret"
TOKEN = "nbf_integration_token"


def docker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True)


def remove_networks(host_id: str) -> None:
    listed = docker("network", "ls", "-q", "--filter", f"label=nbfleet.host={host_id}")
    for network in listed.stdout.split():
        docker("network", "rm", network)


def container_ip(notebook: str) -> str:
    networks = json.loads(docker_inspect(notebook, "{{json .NetworkSettings.Networks}}"))
    (settings,) = networks.values()
    return settings["IPAddress"]


def docker0_address() -> str:
    """An address of this host that is not loopback (Docker's default bridge gateway). Some
    dockerd starts leave the gateway out of the bridge's IPAM config: then docker0's own."""
    gateway = docker("network", "inspect", "bridge", "--format", "{{json .IPAM.Config}}")
    assert gateway.returncode == 0, gateway.stderr
    for config in json.loads(gateway.stdout) or []:
        if config.get("Gateway"):
            return config["Gateway"]
    shown = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "docker0"], capture_output=True, text=True
    )
    assert shown.returncode == 0 and " inet " in shown.stdout, shown.stderr or shown.stdout
    return shown.stdout.split(" inet ", 1)[1].split("/", 1)[0]


@dataclass
class Stack:
    agent: Agent
    scheduler: FakeScheduler
    http: aiohttp.ClientSession
    image: str

    def assign(self, *notebooks: str) -> None:
        self.scheduler.assignments = [
            Assignment(
                notebook=notebook,
                project="proj",
                generation=1,
                desired="running",
                state=S.STARTING,
                image=self.image,
                command=editor_command(8080),
                editor_port=8080,
                url_path="/",
                gpus=[],
                cpu=1,
                memory_mb=128,
                env={},
                initialized=False,
                access_token="the-editors-own-token",
            )
            for notebook in notebooks
        ]
        self.scheduler.bump()

    async def running(self, notebook: str) -> str:
        def reported() -> str | None:
            for t in self.scheduler.transitions:
                if t.notebook == notebook and t.state == S.RUNNING:
                    return f"{self.agent.agent_url}/notebooks/{notebook}/"
            return None

        async def check() -> str | None:
            return reported()

        return await wait_until(f"notebook {notebook} RUNNING", check, 60)


async def scheduler_and_agent(
    tmp_path: Path, host_id: str
) -> tuple[FakeScheduler, TestServer, Agent]:
    """A fake scheduler on a real port that knows :data:`TOKEN`, and the whole agent (not yet
    started) on the real dockerd, pointed at it."""
    scheduler = FakeScheduler({host_id: SECRET}, heartbeat_interval_s=0.2)
    scheduler.tokens[TOKEN] = "operator"
    server = TestServer(scheduler.app(), host="127.0.0.1")
    await server.start_server(shutdown_timeout=0.5)
    config = AgentConfig(
        host_id=host_id,
        scheduler_url=str(server.make_url("")).rstrip("/"),
        listen="127.0.0.1:0",
        public_host="127.0.0.1",
        workspaces_dir=str(tmp_path / "ws"),
        scratch_dir=str(tmp_path / "scratch"),
        state_dir=str(tmp_path / "state"),
        volumes_dir=str(tmp_path / "volumes"),
        reconcile_interval_s=0.2,
        usage_interval_s=5,
        start_timeout_s=60,
    )
    agent = build_agent(
        config,
        host_id=host_id,
        secret=SECRET,
        runtime=DockerRuntime(host_id=host_id),
        inventory=FakeInventory(),
        store=FakeObjectStore(),
    )
    return scheduler, server, agent


@pytest.fixture
async def stack(tmp_path: Path, tiny_image: str, host_id: str) -> AsyncIterator[Stack]:
    scheduler, server, agent = await scheduler_and_agent(tmp_path, host_id)
    await agent.start()
    # unsafe: keep cookies for an IP address, as browsers do.
    http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    try:
        yield Stack(agent, scheduler, http, tiny_image)
    finally:
        await http.close()
        scheduler.assignments = []
        await agent.stop()
        await server.close()
        remove_networks(host_id)


async def status_of(http: aiohttp.ClientSession, url: str, **headers: str) -> tuple[int, str]:
    async with http.get(url, headers=headers, allow_redirects=False) as response:
        return response.status, await response.text()


async def test_editor_is_on_loopback_and_behind_the_token(
    stack: Stack, notebook_ids: list[str]
) -> None:
    notebook = new_notebook_id(notebook_ids)
    stack.assign(notebook)
    url = await stack.running(notebook)
    workspace = Path(stack.agent.workspaces.workspace_dir(notebook))
    (workspace / "hello.txt").write_text("served through the proxy\n")
    (workspace / "hello.txt").chmod(0o644)

    # Published on loopback only.
    bindings = json.loads(docker_inspect(notebook, "{{json .NetworkSettings.Ports}}"))
    (published,) = bindings["8080/tcp"]
    assert published["HostIp"] == "127.0.0.1"
    port = int(published["HostPort"])
    with pytest.raises(aiohttp.ClientConnectionError):
        await status_of(stack.http, f"http://{docker0_address()}:{port}/hello.txt")

    # Only the proxy lets people in, and only with a token.
    assert (await status_of(stack.http, url + "hello.txt"))[0] == 401
    assert (await status_of(stack.http, url + "hello.txt", Authorization="Bearer nbf_x"))[0] == 403
    status, body = await status_of(stack.http, url + "hello.txt", Authorization=f"Bearer {TOKEN}")
    assert (status, body) == (200, "served through the proxy\n")
    # The browser way: ?token= once, then the cookie.
    async with stack.http.get(url + f"hello.txt?token={TOKEN}") as response:
        assert response.status == 200 and response.url.query_string == ""
        assert await response.text() == "served through the proxy\n"


async def test_each_notebook_has_its_own_network(stack: Stack, notebook_ids: list[str]) -> None:
    first, second = new_notebook_id(notebook_ids), new_notebook_id(notebook_ids)
    stack.assign(first, second)
    await stack.running(first)
    await stack.running(second)
    for notebook in (first, second):
        networks = json.loads(docker_inspect(notebook, "{{json .NetworkSettings.Networks}}"))
        assert list(networks) == [f"nbfleet-{notebook}"]
        labels = json.loads(
            docker(
                "network", "inspect", f"nbfleet-{notebook}", "--format", "{{json .Labels}}"
            ).stdout
        )
        assert labels == network_labels(notebook, stack.agent.host_id)

    def fetch_from(notebook: str, target: str) -> subprocess.CompletedProcess[str]:
        # busybox nc (its static wget crashes resolving names); -w bounds the connect.
        request = f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {target} 8080"
        return docker("exec", f"nbfleet-{notebook}", "sh", "-c", request)

    # Each editor answers on its own network (busybox httpd: 404 for the empty root), but the
    # other notebook cannot reach it.
    own = fetch_from(first, container_ip(first))
    assert "HTTP/1.1 404" in own.stdout, own.stderr
    reach = fetch_from(second, container_ip(first))
    assert reach.returncode != 0 and "HTTP/1.1" not in reach.stdout, reach.stdout

    # Removed with the container.
    stack.assign(second)

    async def first_is_gone() -> bool:
        return (
            docker("network", "inspect", f"nbfleet-{first}").returncode != 0
            and docker("inspect", f"nbfleet-{first}").returncode != 0
        )

    await wait_until("the first notebook's container and network removed", first_is_gone, 30)


async def test_orphan_networks_are_pruned(tiny_image: str, host_id: str) -> None:
    runtime = DockerRuntime(host_id=host_id)
    try:
        labels = [f"--label={k}={v}" for k, v in network_labels("orphan1", host_id).items()]
        created = docker("network", "create", *labels, f"nbfleet-orphan1-{host_id}")
        assert created.returncode == 0, created.stderr
        assert await runtime.prune_networks(skip={"orphan1"}) == []
        assert await runtime.prune_networks(skip=set()) == ["orphan1"]
        assert docker("network", "inspect", f"nbfleet-orphan1-{host_id}").returncode != 0
    finally:
        await runtime.close()
        remove_networks(host_id)


# ---------------------------------------------------------------- logs follow and exec


async def test_follow_logs_and_exec(
    tiny_image: str, tmp_path: Path, host_id: str, notebook_ids: list[str]
) -> None:
    notebook = new_notebook_id(notebook_ids)
    runtime = DockerRuntime(host_id=host_id)
    script = "echo first; while [ ! -e /tmp/stop ]; do sleep 0.1; done; echo last"
    try:
        await runtime.create_and_start(
            spec_for(notebook, tiny_image, tmp_path, ["sh", "-c", script], gpus=[])
        )
        stream = runtime.follow_logs(notebook, tail=10)
        assert await asyncio.wait_for(anext(stream), 10) == "first\n"

        result = await runtime.exec(notebook, ["sh", "-c", "id -u; echo oops >&2; exit 3"])
        assert result.exit_code == 3 and not result.truncated and not result.timed_out
        assert sorted(result.output.decode().split()) == ["1000", "oops"]
        as_other = await runtime.exec(notebook, ["id", "-u"], user="1234")
        assert as_other.output.decode().strip() == "1234"

        big = await runtime.exec(notebook, ["head", "-c", "3000000", "/dev/zero"], max_output=1000)
        assert (big.exit_code, len(big.output), big.truncated) == (0, 1000, True)

        slow = await runtime.exec(
            notebook, ["sh", "-c", "echo started; exec sleep 600"], timeout_s=1
        )
        assert (slow.exit_code, slow.timed_out) == (124, True)
        assert slow.output == b"started\n"
        left = await runtime.exec(notebook, ["ps", "-o", "args"])
        assert "sleep 600" not in left.output.decode(), "the timed-out command was not killed"

        await runtime.exec(notebook, ["touch", "/tmp/stop"])
        rest = [text async for text in stream]  # ends when the container stops
        assert rest == ["last\n"]

        with pytest.raises(ContainerNotRunning):
            await runtime.exec(notebook, ["true"])
        await runtime.remove(notebook)
        with pytest.raises(NoSuchContainer):
            await runtime.exec(notebook, ["true"])
        with pytest.raises(NoSuchContainer):
            await anext(runtime.follow_logs(notebook))
        assert docker("network", "inspect", f"nbfleet-{notebook}").returncode != 0
    finally:
        await runtime.close()
        remove_networks(host_id)
