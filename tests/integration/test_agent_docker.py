"""DockerRuntime against the real dockerd with the tiny busybox image."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest

from agent.docker_runtime import DockerRuntime
from agent.notebook_steps import http_probe
from agent.runtime import (
    ContainerExists,
    ContainerSpec,
    ImageUnavailable,
    NoSuchContainer,
)
from tests.integration.conftest import new_notebook_id, workdirs
from tests.support.images import editor_command


def spec_for(
    notebook: str, image: str, tmp_path: Path, command: list[str] | None = None, **extra
) -> ContainerSpec:
    workspace, scratch = workdirs(tmp_path, notebook)
    os.makedirs(workspace, exist_ok=True)
    os.makedirs(scratch, exist_ok=True)
    fields = dict(
        notebook=notebook,
        project="proj",
        generation=3,
        image=image,
        command=command or editor_command(8080),
        env={"NBFLEET_TOKEN": "tok"},
        user="1000:1000",
        gpus=["GPU-aaa", "GPU-bbb"],
        cpu=1,
        memory_mb=256,
        editor_port=8080,
        workspace_dir=workspace,
        scratch_dir=scratch,
        upstream_host="127.0.0.1",
    )
    fields.update(extra)
    return ContainerSpec(**fields)


def docker_inspect(notebook: str, template: str) -> str:
    result = subprocess.run(
        ["docker", "inspect", "--format", template, f"nbfleet-{notebook}"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


async def wait_until(what: str, check, timeout_s: float = 20.0):
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        value = await check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.1)


async def test_create_inspect_adopt_stop_remove(
    tiny_image: str, tmp_path: Path, host_id: str, notebook_ids: list[str]
) -> None:
    notebook = new_notebook_id(notebook_ids)
    runtime = DockerRuntime(host_id=host_id)
    try:
        spec = spec_for(notebook, tiny_image, tmp_path)
        (Path(spec.workspace_dir) / "index.html").write_text("hello from the workspace")
        info = await runtime.create_and_start(spec)
        assert info.running and info.generation == 3 and info.project == "proj"
        assert info.gpus == ["GPU-aaa", "GPU-bbb"]
        assert info.host_port is not None
        url = f"http://127.0.0.1:{info.host_port}/"
        await wait_until("the httpd editor to answer", lambda: http_probe(url))

        # The port is published on loopback only.
        bindings = docker_inspect(notebook, "{{json .NetworkSettings.Ports}}")
        assert f'"HostIp":"127.0.0.1","HostPort":"{info.host_port}"' in bindings
        assert "0.0.0.0" not in bindings
        # Hardening and environment.
        assert docker_inspect(notebook, "{{.Config.User}}") == "1000:1000"
        assert docker_inspect(notebook, "{{json .HostConfig.CapDrop}}") == '["ALL"]'
        assert "no-new-privileges" in docker_inspect(notebook, "{{json .HostConfig.SecurityOpt}}")
        env = docker_inspect(notebook, "{{json .Config.Env}}")
        assert '"NVIDIA_VISIBLE_DEVICES=GPU-aaa,GPU-bbb"' in env and '"HOME=/workspace"' in env
        assert docker_inspect(notebook, "{{json .HostConfig.DeviceRequests}}") == "null"
        assert docker_inspect(notebook, "{{.Config.WorkingDir}}") == "/workspace"
        assert docker_inspect(notebook, "{{.HostConfig.NanoCpus}}") == "1000000000"
        assert os.stat(spec.workspace_dir).st_uid == 1000
        assert docker_inspect(notebook, '{{index .Config.Labels "nbfleet.host"}}') == host_id
        whoami = subprocess.run(
            ["docker", "exec", f"nbfleet-{notebook}", "sh", "-c", "id -u; touch /tmp/x /data/y"],
            capture_output=True,
            text=True,
        )
        assert whoami.returncode == 0 and whoami.stdout.strip() == "1000", whoami.stderr

        with pytest.raises(ContainerExists):
            await runtime.create_and_start(spec)

        # A new runtime (an agent restart) adopts it by its labels.
        restarted = DockerRuntime(host_id=host_id)
        adopted = await restarted.list_managed()
        await restarted.close()
        assert [(a.notebook, a.generation, a.running, a.host_port) for a in adopted] == [
            (notebook, 3, True, info.host_port)
        ]
        other_host = DockerRuntime(host_id=host_id + "-other")
        assert await other_host.list_managed() == []
        await other_host.close()

        await runtime.stop(notebook, timeout_s=2)
        await runtime.stop(notebook, timeout_s=2)  # idempotent
        stopped = await runtime.inspect(notebook)
        assert stopped is not None and not stopped.running and stopped.exit_code is not None
        await runtime.remove(notebook)
        await runtime.remove(notebook)  # 404 is success
        await runtime.stop(notebook)  # stopping a missing container is success too
        assert await runtime.inspect(notebook) is None
        with pytest.raises(NoSuchContainer):
            await runtime.logs(notebook)
    finally:
        await runtime.close()


async def test_exit_code_and_logs(
    tiny_image: str, tmp_path: Path, host_id: str, notebook_ids: list[str]
) -> None:
    notebook = new_notebook_id(notebook_ids)
    runtime = DockerRuntime(host_id=host_id)
    try:
        # Docker orders stdout against stderr only by arrival: the pause keeps them apart.
        script = "for i in 1 2 3 4; do echo line$i; done; sleep 0.5; echo oops >&2; exit 3"
        command = ["sh", "-c", script]
        await runtime.create_and_start(spec_for(notebook, tiny_image, tmp_path, command, gpus=[]))

        async def exited():
            info = await runtime.inspect(notebook)
            return info if info is not None and not info.running else None

        info = await wait_until("the container to exit", exited)
        assert info.exit_code == 3 and info.status == "exited"
        assert docker_inspect(notebook, "{{json .Config.Env}}").count("NVIDIA_VISIBLE_DEVICES=void")

        async def last_two():
            # dockerd copies output to the log asynchronously: an exited container's last
            # line may land a moment after the exit.
            logs = await runtime.logs(notebook, tail=2)
            return logs if "oops" in logs else None

        logs = await wait_until("the stderr line in the logs", last_two, 10)
        assert logs.splitlines() == ["line4", "oops"]
        await runtime.remove(notebook)
    finally:
        await runtime.close()


async def test_usage_says_what_a_running_container_spent(
    tiny_image: str, tmp_path: Path, host_id: str, notebook_ids: list[str]
) -> None:
    """Docker's stats of the container's cgroup: CPU time grows while it works, memory it
    holds (8 MiB kept in a tmpfs file, which the kernel cannot drop) counts in the working
    set; a stopped or missing container has none."""
    notebook = new_notebook_id(notebook_ids)
    runtime = DockerRuntime(host_id=host_id)
    try:
        script = (
            "head -c 8388608 /dev/zero > /dev/shm/held; "
            "end=$(( $(date +%s) + 2 )); while [ $(date +%s) -lt $end ]; do :; done; sleep 60"
        )
        command = ["sh", "-c", script]
        await runtime.create_and_start(spec_for(notebook, tiny_image, tmp_path, command, gpus=[]))

        async def worked():
            usage = await runtime.usage(notebook)
            return usage if usage is not None and usage.cpu_seconds >= 1.0 else None

        usage = await wait_until("a second of CPU time", worked)
        assert usage.memory_working_set_bytes >= 8 << 20
        assert usage.memory_working_set_bytes < 256 << 20  # its limit
        await runtime.stop(notebook, timeout_s=1)
        assert await runtime.usage(notebook) is None
        await runtime.remove(notebook)
        assert await runtime.usage(notebook) is None
    finally:
        await runtime.close()


async def test_device_request_only_with_nvidia_runtime(tmp_path: Path) -> None:
    from agent.container_config import container_config

    spec = spec_for("x", "img", tmp_path, gpus=["GPU-1"], nvidia_runtime=True, cpu=999)
    config = container_config(spec, cpus=8, memory_mb=100)
    assert config["HostConfig"]["DeviceRequests"] == [
        {"Driver": "nvidia", "DeviceIDs": ["GPU-1"], "Capabilities": [["gpu"]]}
    ]
    assert config["HostConfig"]["NanoCpus"] == 8 * 10**9  # clamped to the host
    assert config["HostConfig"]["Memory"] == 100 * 1024 * 1024
    with pytest.raises(ValueError, match="root"):
        container_config(spec_for("x", "img", tmp_path, user="0:0"))


async def test_unavailable_image(tmp_path: Path, host_id: str, notebook_ids: list[str]) -> None:
    notebook = new_notebook_id(notebook_ids)
    runtime = DockerRuntime(host_id=host_id)
    try:
        with pytest.raises(ImageUnavailable, match="127.0.0.1:9/nbfleet/missing:1"):
            await runtime.create_and_start(
                spec_for(notebook, "127.0.0.1:9/nbfleet/missing:1", tmp_path)
            )
    finally:
        await runtime.close()
