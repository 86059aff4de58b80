"""The agent's SSH server against a real dockerd, a real notebook container (nbfleet/conda) and
Debian's OpenSSH client: exec and a PTY, scp and rsync both ways, ``-L`` to a port inside the
container; wrong keys, another notebook's key and a notebook that is not running are refused;
nothing outside the container is reachable."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import pytest

from agent.docker_runtime import DockerRuntime
from agent.runtime import ContainerSpec
from agent.ssh import NotebookSshServer, SshTarget
from tests.integration.conftest import new_notebook_id, workdirs

IMAGE = "nbfleet/conda:py3.11"
EDITOR_PORT = 8888


def client_tools() -> None:
    missing = [tool for tool in ("ssh", "scp", "rsync", "ssh-keygen") if shutil.which(tool) is None]
    if missing:
        pytest.fail(
            f"SSH tests need Debian's openssh-client and rsync (missing: {missing}); "
            "scripts/test installs them",
            pytrace=False,
        )
    probe = subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True)
    if probe.returncode != 0:
        pytest.fail(f"SSH tests need {IMAGE} (scripts/build-images)", pytrace=False)


async def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    """A client process, off the event loop (the SSH server under test runs on it)."""
    kwargs.setdefault("capture_output", True)
    return await asyncio.to_thread(subprocess.run, argv, text=True, timeout=60, **kwargs)


def keypair(directory: Path, name: str) -> tuple[Path, str]:
    key = directory / name
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)], check=True
    )
    return key, (directory / f"{name}.pub").read_text().strip()


@dataclass
class Rig:
    port: int
    notebook: str
    other: str
    key: Path
    other_key: Path
    stranger_key: Path
    workspace: Path
    running: set[str]
    server: NotebookSshServer

    def ssh_options(self, key: Path | None = None, quiet: bool = True) -> list[str]:
        return [
            "-i",
            str(key or self.key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR" if quiet else "LogLevel=INFO",
            "-o",
            "ConnectTimeout=10",
        ]

    async def ssh(
        self, *command: str, key: Path | None = None, user: str | None = None, tty: bool = False
    ) -> subprocess.CompletedProcess[str]:
        argv = ["ssh", "-p", str(self.port), *self.ssh_options(key)]
        if tty:
            argv.append("-tt")
        argv += [f"{user or self.notebook}@127.0.0.1", *command]
        return await run(argv, stdin=subprocess.DEVNULL)


@pytest.fixture
async def rig(tmp_path: Path, notebook_ids: list[str]) -> AsyncIterator[Rig]:
    client_tools()
    runtime = DockerRuntime()
    notebook, other = new_notebook_id(notebook_ids), new_notebook_id(notebook_ids)
    workspace, scratch = workdirs(tmp_path, notebook)
    os.makedirs(workspace)
    os.makedirs(scratch)
    spec = ContainerSpec(
        notebook=notebook,
        project="proj",
        generation=1,
        image=IMAGE,
        # An editor stand-in on the port the catalog's JupyterLab uses.
        command=["python3", "-m", "http.server", str(EDITOR_PORT), "--directory", "/workspace"],
        env={},
        user="1000:1000",
        gpus=[],
        cpu=1,
        memory_mb=512,
        editor_port=EDITOR_PORT,
        workspace_dir=str(workspace),
        scratch_dir=str(scratch),
    )
    keys = tmp_path / "keys"
    keys.mkdir()
    key, public = keypair(keys, "mine")
    other_key, other_public = keypair(keys, "other")
    stranger_key, _ = keypair(keys, "stranger")
    targets = {
        notebook: SshTarget(notebook, (public,), "1000:1000"),
        other: SshTarget(other, (other_public,), "1000:1000"),
    }
    running = {notebook, other}
    server = NotebookSshServer(
        "127.0.0.1",
        0,
        str(tmp_path / "state" / "ssh_host_ed25519_key"),
        lambda nb: targets.get(nb) if nb in running else None,
    )
    await runtime.create_and_start(spec)
    await server.start()
    try:
        yield Rig(
            server.port,
            notebook,
            other,
            key,
            other_key,
            stranger_key,
            Path(workspace),
            running,
            server,
        )
    finally:
        await server.close()
        await runtime.remove(notebook)
        await runtime.close()


async def test_exec_runs_in_the_container_as_the_notebooks_user(rig: Rig) -> None:
    done = await rig.ssh("id -u; pwd; hostname")
    assert done.returncode == 0, done.stderr
    uid, cwd, hostname = done.stdout.split()
    assert (uid, cwd) == ("1000", "/workspace")
    assert hostname != socket.gethostname()
    assert (await rig.ssh("exit 3")).returncode == 3
    # stdin reaches the command and its end is seen
    piped = await run(
        ["ssh", "-p", str(rig.port), *rig.ssh_options(), f"{rig.notebook}@127.0.0.1", "wc -c"],
        input="twelve bytes",
    )
    assert piped.stdout.strip() == "12", piped.stderr


async def test_an_interactive_pty_session(rig: Rig) -> None:
    done = await rig.ssh("tty; echo TERM=$TERM", tty=True)
    assert done.returncode == 0, done.stderr
    assert "/dev/pts/" in done.stdout and "TERM=" in done.stdout


async def test_scp_and_rsync_both_ways(rig: Rig, tmp_path: Path) -> None:
    local = tmp_path / "local"
    local.mkdir()
    (local / "data.bin").write_bytes(os.urandom(300_000))
    target = f"{rig.notebook}@127.0.0.1"
    options = rig.ssh_options()
    up = await run(
        ["scp", "-P", str(rig.port), *options, str(local / "data.bin"), f"{target}:up.bin"]
    )
    assert up.returncode == 0, up.stderr
    assert (rig.workspace / "up.bin").read_bytes() == (local / "data.bin").read_bytes()
    down = await run(
        ["scp", "-P", str(rig.port), *options, f"{target}:up.bin", str(local / "back.bin")]
    )
    assert down.returncode == 0, down.stderr
    assert (local / "back.bin").read_bytes() == (local / "data.bin").read_bytes()

    tree = local / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "a.txt").write_text("a")
    (tree / "b.txt").write_text("b" * 10_000)
    shell = " ".join(["ssh", "-p", str(rig.port), *options])
    pushed = await run(["rsync", "-a", "-e", shell, f"{tree}/", f"{target}:synced/"])
    assert pushed.returncode == 0, pushed.stderr
    assert (rig.workspace / "synced" / "sub" / "a.txt").read_text() == "a"
    pulled = await run(["rsync", "-a", "-e", shell, f"{target}:synced/", f"{local / 'pulled'}/"])
    assert pulled.returncode == 0, pulled.stderr
    assert (local / "pulled" / "b.txt").read_text() == "b" * 10_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def forwarding(rig: Rig) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    local = free_port()
    tunnel = subprocess.Popen(
        [
            "ssh",
            "-p",
            str(rig.port),
            *rig.ssh_options(),
            "-N",
            "-o",
            "ExitOnForwardFailure=yes",
            "-L",
            f"127.0.0.1:{local}:localhost:{EDITOR_PORT}",
            f"{rig.notebook}@127.0.0.1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    yield local, tunnel
    tunnel.terminate()
    tunnel.wait(10)


async def test_local_forwarding_reaches_the_editor_inside_the_container(
    rig: Rig, forwarding: tuple[int, subprocess.Popen[str]]
) -> None:
    local, tunnel = forwarding
    (rig.workspace / "hello.txt").write_text("from inside")

    def fetch() -> tuple[str | None, OSError | None]:
        last = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{local}/hello.txt", timeout=5) as r:
                    return r.read().decode(), None
            except OSError as exc:
                last = exc
                time.sleep(0.3)
        return None, last

    body, last = await asyncio.to_thread(fetch)
    assert body == "from inside", f"no answer through ssh -L: {last}; ssh said {tunnel.stderr}"


async def test_forwarding_anywhere_but_the_containers_loopback_is_refused(rig: Rig) -> None:
    local = free_port()
    tunnel = subprocess.Popen(
        [
            "ssh",
            "-p",
            str(rig.port),
            *rig.ssh_options(quiet=False),
            "-N",
            "-L",
            f"127.0.0.1:{local}:10.0.0.1:22",
            f"{rig.notebook}@127.0.0.1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def connect_and_read() -> bytes:
        deadline = time.monotonic() + 20
        while True:
            try:
                conn = socket.create_connection(("127.0.0.1", local), timeout=5)
                break
            except OSError:
                assert time.monotonic() < deadline, "ssh -L never listened"
                time.sleep(0.2)
        with conn:
            conn.settimeout(10)
            return conn.recv(1)

    try:
        # the channel is refused: ssh closes the local connection
        assert await asyncio.to_thread(connect_and_read) == b""
    finally:
        tunnel.terminate()
        try:
            _, stderr = await asyncio.to_thread(tunnel.communicate, timeout=10)
        except subprocess.TimeoutExpired:
            # Seen once on a loaded machine: ssh -N outlived SIGTERM by 10 s. Its exit is not
            # what this test is about; what it printed is.
            tunnel.kill()
            _, stderr = await asyncio.to_thread(tunnel.communicate, timeout=10)
    assert "administratively prohibited" in stderr and "inside the notebook" in stderr


async def test_wrong_key_other_notebooks_key_and_stopped_notebook_are_refused(rig: Rig) -> None:
    assert (await rig.ssh("true")).returncode == 0
    stranger = await rig.ssh("true", key=rig.stranger_key)
    assert stranger.returncode == 255 and "Permission denied" in stranger.stderr
    # a key of another notebook opens that one only
    crossed = await rig.ssh("true", key=rig.other_key)
    assert crossed.returncode == 255 and "Permission denied" in crossed.stderr
    # unknown notebook names are refused the same way
    assert (await rig.ssh("true", user="no-such-notebook")).returncode == 255
    rig.running.discard(rig.notebook)
    stopped = await rig.ssh("true")
    assert stopped.returncode == 255 and "Permission denied" in stopped.stderr


async def test_the_hosts_files_are_not_reachable(rig: Rig, tmp_path: Path) -> None:
    marker = tmp_path / "host-only.txt"
    marker.write_text("host secret")
    done = await rig.ssh(f"cat {marker}; cat /etc/nbfleet/agent.secret; ls {tmp_path}")
    assert "host secret" not in done.stdout
    assert done.returncode != 0


async def test_the_fleets_host_key_replaces_the_local_one_for_new_connections(
    rig: Rig, tmp_path: Path
) -> None:
    def scan() -> str:
        done = subprocess.run(
            ["ssh-keyscan", "-t", "ed25519", "-p", str(rig.port), "127.0.0.1"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return done.stdout

    before = await asyncio.to_thread(scan)
    fleet = asyncssh.generate_private_key("ssh-ed25519")
    rig.server.use_host_key(fleet.export_private_key().decode())
    after = await asyncio.to_thread(scan)
    fleet_public = fleet.export_public_key().decode().split()[1]
    assert fleet_public in after and fleet_public not in before
    assert (await rig.ssh("true")).returncode == 0
