"""``AgentConfig.upstream_host``: where editor ports are published and the agent connects to
them. Loopback by default; another address (an agent in a network namespace of its own) moves
the container's port binding, the readiness probe and the editor proxy together."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import msgspec
from aiohttp import web
from aiohttp.test_utils import TestServer

from agent.container_config import container_config
from agent.proxy_paths import Editor, rewrite_location, upstream_authority
from agent.runtime import ContainerSpec
from common.config import AgentConfig, load
from common.states import NotebookState as S
from tests.fakes.runtime import FakeRuntime
from tests.unit.test_agent_app import (
    agent_config,
    agent_for,
    assignment,
    eventually,
    fake_scheduler,
    url_of,
)

TOKEN = "nbf_project_token"
#: Another loopback address, standing in for the host namespace's address on a test bridge.
OTHER = "127.0.0.2"


def test_loopback_unless_configured() -> None:
    assert AgentConfig().upstream_host == "127.0.0.1"
    config = load(
        AgentConfig,
        None,
        env_prefix="NBFLEET_AGENT_",
        environ={"NBFLEET_AGENT_UPSTREAM_HOST": "10.231.0.1"},
    )
    assert config.upstream_host == "10.231.0.1"


def test_the_port_is_published_on_the_specs_address_only() -> None:
    spec = ContainerSpec(
        notebook="nb1",
        project="p",
        generation=1,
        image="i",
        command=["c"],
        env={},
        user="1000:1000",
        gpus=[],
        cpu=1,
        memory_mb=0,
        editor_port=8080,
        workspace_dir="/w",
        scratch_dir="/s",
        upstream_host="10.231.0.1",
    )
    body = container_config(spec, cpus=4, memory_mb=4096)
    assert body["HostConfig"]["PortBindings"] == {
        "8080/tcp": [{"HostIp": "10.231.0.1", "HostPort": ""}]
    }


def test_an_ipv6_upstream_is_bracketed() -> None:
    assert upstream_authority("127.0.0.1", 8080) == "127.0.0.1:8080"
    assert upstream_authority("fd00::1", 8080) == "[fd00::1]:8080"


def test_a_redirect_to_the_upstream_address_stays_under_the_prefix() -> None:
    editor = Editor("n", S.RUNNING, 9, "/", "", False)
    assert rewrite_location("http://10.0.0.1:9/x", editor, "h", "10.0.0.1") == "/notebooks/n/x"
    # The default upstream is loopback; another address's redirect is somewhere else.
    assert rewrite_location("http://10.0.0.1:9/x", editor, "h") == "http://10.0.0.1:9/x"


async def test_container_probe_and_proxy_use_the_configured_address(tmp_path: Path) -> None:
    scheduler, scheduler_server = await fake_scheduler()
    scheduler.tokens[TOKEN] = "read"
    seen: list[str] = []

    async def anything(request: web.Request) -> web.Response:
        seen.append(request.raw_path)
        return web.Response(text="editor")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", anything)
    # Only on OTHER: an agent connecting to 127.0.0.1 would find nothing there.
    editor = TestServer(app, host=OTHER)
    await editor.start_server()
    runtime = FakeRuntime()
    runtime.ports["nb1"] = editor.port
    config = msgspec.structs.replace(
        agent_config(tmp_path, url_of(scheduler_server)), upstream_host=OTHER
    )
    agent = agent_for(config, runtime)
    await agent.start()
    try:
        scheduler.assignments = [assignment(base_url="/", url_path="/lab")]
        scheduler.bump()
        await eventually(
            "RUNNING report", lambda: any(t.state == S.RUNNING for t in scheduler.transitions)
        )
        assert runtime.specs["nb1"].upstream_host == OTHER
        assert f"http://{OTHER}:{editor.port}/lab" in runtime.probed
        async with aiohttp.ClientSession() as http:
            async with http.get(
                f"{agent.agent_url}/notebooks/nb1/lab", headers={"Authorization": f"Bearer {TOKEN}"}
            ) as response:
                assert (response.status, await response.text()) == (200, "editor")
        assert seen == ["/lab"]
    finally:
        await agent.stop()
        await editor.close()
        await scheduler_server.close()
