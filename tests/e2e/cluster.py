"""A real nbfleet cluster on loopback for end-to-end tests.

The scheduler and each agent run as separate processes (``python -m scheduler.main`` /
``python -m agent.main``) with their own config files, talking signed HTTP; the agents drive the
real ``dockerd`` and a real SeaweedFS S3 server, and each sees its own set of fake GPUs through a
fake ``libnvidia-ml.so.1`` loaded by nvidia-ml-py. The CLI is called as a process too.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.processes import nbfleet, scheduler_command, stop

REPO = Path(__file__).resolve().parents[2]
#: The tiny framework's versions (scripts/build-images builds both; they differ in
#: /etc/nbfleet-release). A ``run`` without a version gets the newest, ``TINY_IMAGE``.
TINY_IMAGES = {"1": "nbfleet/tiny:1", "2": "nbfleet/tiny:2"}
TINY_IMAGE = TINY_IMAGES["2"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, probe, timeout_s: float = 60.0, interval_s: float = 0.25):
    """Poll ``probe`` until it returns something truthy; fail saying what was awaited."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except Exception as exc:  # the thing may not be up yet
            last = exc
        else:
            if last:
                return last
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}; last: {last!r}")


def scheduler_toml(root: Path, port: int, **settings: str | float) -> str:
    """A scheduler's config: its files in ``root``, the tiny framework in its catalog.
    ``settings``: top-level settings added, or replacing those set here; tables a caller
    needs go after the text returned (it ends with the catalog's)."""
    top = {
        "listen": f"127.0.0.1:{port}",
        "database": f"{root}/scheduler.db",
        "admin_token_file": f"{root}/admin.token",
        "agent_secrets_dir": f"{root}/agents",
        "heartbeat_interval_s": 2.0,
        **settings,
    }
    # Strings and numbers: their JSON is valid TOML.
    lines = "".join(f"{key} = {json.dumps(value)}\n" for key, value in top.items())
    return (
        "\n"
        + lines
        + f"""
[catalog.frameworks.tiny]
editors = ["httpd", "crash"]
description = "busybox, for tests"
[catalog.frameworks.tiny.versions."1"]
image = "{TINY_IMAGES["1"]}"
[catalog.frameworks.tiny.versions."2"]
image = "{TINY_IMAGES["2"]}"

[catalog.editors.httpd]
port = 8080
command = ["busybox", "httpd", "-f", "-p", "{{port}}", "-h", "/workspace"]
url_path = "/"

[catalog.editors.crash]
port = 8080
command = ["sh", "-c", "echo failing on purpose >&2; exit 3"]
url_path = "/"
"""
    )


@dataclass
class Router:
    """``nbfleet-router run`` on a port of its own, asking ``scheduler_url`` with the
    scheduler's router token (the file the scheduler created)."""

    root: Path
    scheduler_url: str
    token_file: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.root / "router.log"

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "router.toml"
        config.write_text(
            f'listen = "127.0.0.1:{self.port}"\n'
            f'scheduler_url = "{self.scheduler_url}"\n'
            f'token_file = "{self.token_file}"\n'
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "router.main", "run", "--config", str(config)],
            cwd=REPO,
            stdout=open(self.log, "ab"),
            stderr=subprocess.STDOUT,
        )
        wait_for(f"router {self.url}/health", lambda: Cluster._health(self.url), 30)

    def stop(self) -> None:
        stop(self.proc)


@dataclass
class Agent:
    host_id: str
    gpus: list[tuple[str, str, int]]
    root: Path
    config: Path
    port: int
    env: dict[str, str]
    proc: subprocess.Popen | None = None

    @property
    def log(self) -> Path:
        return self.root / "agent.log"

    @property
    def workspaces(self) -> Path:
        return self.root / "workspaces"

    @property
    def gpu_state(self) -> Path:
        """What its fake GPUs report now (``tests.support.nvml.write_gpu_state``)."""
        return self.root / "gpu-state"


@dataclass
class Cluster:
    root: Path
    s3_endpoint: str
    nvml_dir: Path
    bucket: str = "nbfleet-e2e"
    port: int = field(default_factory=free_port)
    run_id: str = field(default_factory=lambda: secrets.token_hex(3))
    scheduler: subprocess.Popen | None = None
    agents: dict[str, Agent] = field(default_factory=dict)
    routers: list[Router] = field(default_factory=list)
    admin_token: str = ""
    token: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def scheduler_config(self) -> Path:
        return self.root / "scheduler.toml"

    @property
    def scheduler_log(self) -> Path:
        return self.root / "scheduler.log"

    # ------------------------------------------------------------------ processes

    def start_scheduler(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.scheduler_config.write_text(scheduler_toml(self.root, self.port))
        log = open(self.scheduler_log, "ab")
        self.scheduler = subprocess.Popen(
            [sys.executable, "-m", "scheduler.main", "run", "--config", str(self.scheduler_config)],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_for("scheduler /health", lambda: self._health(self.url), 30)
        self.admin_token = self._scheduler_cmd("admin-token").strip()

    def _scheduler_cmd(self, *args: str) -> str:
        return scheduler_command(self.scheduler_config, *args)

    def host(self, name: str) -> str:
        """The host id of the agent added as ``name`` (ids carry this cluster's run id, so two
        test clusters sharing one dockerd never take each other's containers for orphans)."""
        return f"{name}-{self.run_id}"

    def agent(self, name: str) -> Agent:
        return self.agents[self.host(name)]

    def add_agent(self, name: str, gpus: list[tuple[str, str, int]], *, nvml: bool = True) -> Agent:
        """Start an agent process; ``nvml=False`` gives it no ``libnvidia-ml.so.1`` at all, as on
        a host without the NVIDIA driver."""
        host_id = self.host(name)
        root = self.root / host_id
        root.mkdir(parents=True, exist_ok=True)
        secret = self._scheduler_cmd("add-host", host_id).strip().splitlines()[-1]
        (root / "secret").write_text(secret + "\n")
        port = free_port()
        config = root / "agent.toml"
        config.write_text(f"""
host_id = "{host_id}"
scheduler_url = "{self.url}"
secret_file = "{root}/secret"
listen = "127.0.0.1:{port}"
public_host = "127.0.0.1"
workspaces_dir = "{root}/workspaces"
scratch_dir = "{root}/scratch"
volumes_dir = "{root}/volumes"
state_dir = "{root}/state"
s3_endpoint = "{self.s3_endpoint}"
s3_access_key = "e2e"
s3_secret_key = "e2e-secret"
workspace_bucket = "{self.bucket}"
start_timeout_s = 60
reconcile_interval_s = 0.5
usage_interval_s = 5
checkpoint_interval_s = 3
activity_interval_s = 1
""")
        env = dict(os.environ)
        if nvml:
            env["LD_LIBRARY_PATH"] = f"{self.nvml_dir}:{env.get('LD_LIBRARY_PATH', '')}"
            env["NBFLEET_FAKE_GPUS"] = ";".join(f"{u}:{m}:{mem}" for u, m, mem in gpus)
            env["NBFLEET_FAKE_GPU_STATE"] = str(root / "gpu-state")
        agent = Agent(host_id, gpus, root, config, port, env)
        self.agents[host_id] = agent
        self.start_agent(host_id)
        return agent

    def start_agent(self, host_id: str) -> None:
        agent = self.agents[host_id]
        log = open(agent.log, "ab")
        agent.proc = subprocess.Popen(
            [sys.executable, "-m", "agent.main", "run", "--config", str(agent.config)],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=agent.env,
        )
        wait_for(f"agent {host_id} /health", lambda: self._health(f"http://127.0.0.1:{agent.port}"))
        wait_for(f"agent {host_id} registered with its GPUs", lambda: self._registered(agent))

    def kill_scheduler(self) -> None:
        """kill -9 the scheduler (every replica of this one-replica cluster) and wait until
        its port refuses; ``start_scheduler`` brings it back on the same port and state."""
        assert self.scheduler is not None
        self.scheduler.send_signal(signal.SIGKILL)
        self.scheduler.wait(10)

        def refused() -> bool:
            try:
                self._health(self.url)
            except OSError:
                return True
            return False

        wait_for("scheduler port to refuse", refused, 10)

    def start_router(self) -> Router:
        """An ``nbfleet-router`` in front of this cluster's scheduler (stopped by ``stop``)."""
        router = Router(self.root / "router", self.url, self.root / "router.token")
        router.start()
        self.routers.append(router)
        return router

    def kill_agent(self, host_id: str) -> None:
        """kill -9: no chance to clean up, as when the daemon crashes."""
        proc = self.agents[host_id].proc
        assert proc is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    @contextlib.contextmanager
    def running(self, project: str, agents: dict[str, list[tuple[str, str, int]]]):
        """Start the scheduler, create ``project`` with an operator token, start ``agents``
        (name → GPUs); on exit stop them all and remove this cluster's containers (only its
        own: another test run may share the dockerd). A failed start prints the logs."""
        try:
            self.start_scheduler()
            self.cli("admin", "project", "create", project, token=self.admin_token)
            self.token = self.project_token(project)
            for name, gpus in agents.items():
                self.add_agent(name, gpus)
        except BaseException:
            print(self.dump())
            self.stop()
            raise
        try:
            yield self
        finally:
            self.stop()
            for host_id in self.agents:
                subprocess.run(
                    f"docker ps -aq --filter label=nbfleet.host={host_id} | xargs -r docker rm -f",
                    shell=True,
                    capture_output=True,
                )

    def stop(self) -> None:
        for router in self.routers:
            router.stop()
        for agent in self.agents.values():
            stop(agent.proc)
        stop(self.scheduler)

    @staticmethod
    def _health(base: str) -> bool:
        with urllib.request.urlopen(base + "/health", timeout=2) as resp:
            return resp.status == 200

    def _registered(self, agent: Agent) -> bool:
        hosts = self.api("GET", "/v1/admin/hosts", token=self.admin_token)["items"]
        for host in hosts:
            if host["id"] == agent.host_id:
                return sorted(g["uuid"] for g in host["gpus"]) == sorted(
                    u for u, _, _ in agent.gpus
                )
        return False

    # ------------------------------------------------------------------ API and CLI

    def api(self, method: str, path: str, body: dict | None = None, token: str | None = None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {token or self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    def cli(self, *args: str, token: str | None = None, check: bool = True):
        result = nbfleet(self.url, token or self.token, *args, timeout_s=120)
        if check and result.returncode != 0:
            raise AssertionError(
                f"nbfleet {' '.join(args)} exited {result.returncode}\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}"
            )
        return result

    def project_token(self, project: str, role: str = "operator") -> str:
        created = self.cli(
            "admin",
            "token",
            "create",
            "--project",
            project,
            "--role",
            role,
            "-o",
            "json",
            token=self.admin_token,
        )
        return json.loads(created.stdout)["token"]

    def cli_json(self, *args: str):
        return json.loads(self.cli(*args, "-o", "json").stdout)

    def notebook(self, nb_id: str) -> dict:
        return self.api("GET", f"/v1/notebooks/{nb_id}")

    def wait_state(self, nb_id: str, state: str, timeout_s: float = 90.0) -> dict:
        seen: list[str] = []

        def probe():
            nb = self.notebook(nb_id)
            if not seen or seen[-1] != nb["state"]:
                seen.append(nb["state"])
            return nb if nb["state"] == state else None

        try:
            return wait_for(f"notebook {nb_id} to be {state}", probe, timeout_s)
        except AssertionError as exc:
            nb = self.notebook(nb_id)
            raise AssertionError(
                f"{exc}\nstates seen: {seen}\nnow: {nb['state']} ({nb['state_reason']})"
            ) from None

    # ------------------------------------------------------------------ diagnostics

    def dump(self) -> str:
        parts = []
        for name, path in (
            [("scheduler", self.scheduler_log)]
            + [(f"agent {a.host_id}", a.log) for a in self.agents.values()]
            + [(f"router {r.url}", r.log) for r in self.routers]
        ):
            if path.exists():
                lines = path.read_text(errors="replace").splitlines()[-80:]
                parts.append(
                    f"----- {name} log (last {len(lines)} lines) -----\n" + "\n".join(lines)
                )
        containers = subprocess.run(
            [
                "docker",
                "ps",
                "-a",
                "--filter",
                "label=nbfleet.managed=1",
                "--format",
                "{{.Names}} {{.Status}}",
            ],
            capture_output=True,
            text=True,
        ).stdout
        parts.append("----- nbfleet containers -----\n" + containers)
        for line in containers.splitlines():
            name = line.split()[0]
            logs = subprocess.run(
                ["docker", "logs", "--tail", "30", name], capture_output=True, text=True
            )
            parts.append(f"----- docker logs {name} -----\n{logs.stdout}{logs.stderr}")
        return "\n".join(parts)


def docker(*args: str) -> str:
    result = subprocess.run(["docker", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed: {result.stderr}")
    return result.stdout


def container_exec(nb_id: str, script: str) -> str:
    return docker("exec", f"nbfleet-{nb_id}", "sh", "-c", script)
