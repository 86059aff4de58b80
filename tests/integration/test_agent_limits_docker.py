"""Container limits against the real dockerd: inside a running notebook container the PID limit
holds, /dev/shm has the size asked for and ``ulimit -n`` is the configured one."""

from __future__ import annotations

import subprocess
from pathlib import Path

from agent.docker_runtime import DockerRuntime
from agent.notebook_steps import http_probe
from agent.runtime import ContainerLimits
from tests.integration.conftest import new_notebook_id
from tests.integration.test_agent_docker import docker_inspect, spec_for, wait_until

MIB = 1024 * 1024


def in_container(notebook: str, script: str) -> subprocess.CompletedProcess[str]:
    """``script`` run by sh inside the notebook's container, as its user."""
    return subprocess.run(
        ["docker", "exec", f"nbfleet-{notebook}", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
    )


async def start(runtime: DockerRuntime, spec) -> None:
    info = await runtime.create_and_start(spec)
    url = f"http://127.0.0.1:{info.host_port}/"
    await wait_until("the httpd editor to answer", lambda: http_probe(url))


async def test_pid_limit_shm_size_and_open_files_hold_inside_the_container(
    tiny_image: str, tmp_path: Path, host_id: str, notebook_ids: list[str]
) -> None:
    notebook = new_notebook_id(notebook_ids)
    runtime = DockerRuntime(host_id=host_id)
    # A nofile below any dockerd's own limit, so it applies wherever the test runs; 300 MB
    # of memory gives 150 MB of /dev/shm (half of it).
    limits = ContainerLimits(pids=40, nofile=4096, shm_fraction=0.5)
    try:
        await start(runtime, spec_for(notebook, tiny_image, tmp_path, memory_mb=300, limits=limits))
        assert docker_inspect(notebook, "{{.HostConfig.PidsLimit}}") == "40"

        # cgroup v2 shows the container's own pids.max at the root; v1 under pids/.
        pids_max = in_container(
            notebook, "cat /sys/fs/cgroup/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids/pids.max"
        )
        assert pids_max.stdout.strip() == "40", pids_max.stderr

        shm = in_container(notebook, "df -k /dev/shm | tail -1")
        assert shm.returncode == 0, shm.stderr
        assert int(shm.stdout.split()[1]) * 1024 == 150 * MIB, shm.stdout

        nofile = in_container(notebook, "ulimit -n; ulimit -Hn")
        assert nofile.stdout.split() == ["4096", "4096"], nofile
        assert not runtime.nofile_refused

        # Last, since nothing else can start in the container for a few seconds after: forking
        # past the limit fails (the shell gives up there); with the init, the editor and this
        # shell already counted, fewer than 40 more processes start.
        bomb = in_container(
            notebook,
            "i=0; while [ $i -lt 60 ]; do sleep 3 & i=$((i+1)); echo started=$i; done 2>&1",
        )
        assert "can't fork" in bomb.stdout + bomb.stderr, bomb
        started = [line for line in bomb.stdout.splitlines() if line.startswith("started=")]
        assert 30 <= int(started[-1].removeprefix("started=")) < 40, bomb
    finally:
        await runtime.close()


async def test_a_fixed_shm_size_and_a_nofile_dockerd_may_refuse(
    tiny_image: str, tmp_path: Path, host_id: str, notebook_ids: list[str]
) -> None:
    """The highest nofile Linux allows (fs.nr_open's default): a root dockerd raises it; one
    that may not (no CAP_SYS_RESOURCE, as in some sandboxes) fails the start, and the
    runtime then starts the container with dockerd's own limit instead."""
    first, second = new_notebook_id(notebook_ids), new_notebook_id(notebook_ids)
    runtime = DockerRuntime(host_id=host_id)
    limits = ContainerLimits(nofile=1 << 20, shm_size_mb=96)
    try:
        await start(runtime, spec_for(first, tiny_image, tmp_path, limits=limits))
        shm = in_container(first, "df -k /dev/shm | tail -1")
        assert int(shm.stdout.split()[1]) * 1024 == 96 * MIB, shm.stdout
        soft = int(in_container(first, "ulimit -n").stdout)
        if runtime.nofile_refused:
            assert soft < 1 << 20
            assert docker_inspect(first, "{{json .HostConfig.Ulimits}}") in ("null", "[]")
        else:
            assert soft == 1 << 20
        # Later containers go straight to what works.
        await start(runtime, spec_for(second, tiny_image, tmp_path, limits=limits))
        assert int(in_container(second, "ulimit -n").stdout) == soft
    finally:
        await runtime.close()
